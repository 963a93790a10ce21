//! A minimal Pingora 0.9 reverse proxy for same-run comparisons with Trellis
//! (`benches/pingora.sh`): HTTP/1.1 and h2c from clients, HTTP/1.1 to one origin, every
//! request forwarded there.
//!
//! Usage: pingora-ref LISTEN ORIGIN THREADS

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::prelude::*;

/// Forwards every request to the origin `.0` (host:port).
struct ToOrigin(String);

#[async_trait]
impl ProxyHttp for ToOrigin {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, origin, threads] = args.as_slice() else {
        eprintln!("usage: pingora-ref LISTEN ORIGIN THREADS");
        std::process::exit(2);
    };
    let Ok(threads) = threads.parse::<usize>() else {
        eprintln!("pingora-ref: THREADS must be a number, got {threads:?}");
        std::process::exit(2);
    };
    // Pingora takes its worker count from a config file.
    let conf = std::env::temp_dir().join(format!("pingora-ref-{}.yaml", std::process::id()));
    if let Err(e) = std::fs::write(&conf, format!("---\nversion: 1\nthreads: {threads}\n")) {
        eprintln!("pingora-ref: cannot write {}: {e}", conf.display());
        std::process::exit(1);
    }
    let opt = Opt { daemon: false, conf: Some(conf.to_string_lossy().into_owned()), ..Opt::default() };
    let mut server = match Server::new(Some(opt)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pingora-ref: {e}");
            std::process::exit(1);
        }
    };
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, ToOrigin(origin.clone()));
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    if let Some(app) = service.app_logic_mut() {
        app.server_options = Some(options);
    }
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
