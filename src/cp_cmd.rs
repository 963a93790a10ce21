//! `trellis control-plane`: runs the control plane (REST API, store, discovery, CA) until
//! SIGTERM or SIGINT. All the work is in `trellis-control-plane`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use trellis_control_plane::workload::JwksSource;
use trellis_control_plane::{DEFAULT_API_ADDR, DEFAULT_XDS_ADDR, Options, StoreOptions};

/// Run the control plane.
#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// Directory for the embedded store (DIR/trellis.redb) and the mesh CA (DIR/ca, made on
    /// first start; with etcd, a copy of the CA the replicas share); created if missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Keep resources in etcd instead of DIR/trellis.redb, so that several control-plane
    /// replicas share them: etcd://HOST:PORT[,HOST:PORT…] (etcd 3.x). Sidecar registrations
    /// and the CA live there too. See docs/high-availability.md.
    #[arg(long, value_name = "etcd://HOST:PORT[,…]", value_parser = parse_store)]
    pub store: Option<EtcdMembers>,
    /// Key prefix in etcd; replicas with the same prefix share one mesh.
    #[arg(long, value_name = "PATH", default_value = trellis_control_plane::etcd::keys::DEFAULT_PREFIX, value_parser = parse_prefix)]
    pub etcd_prefix: String,
    /// Talk TLS to etcd, checking its members' certificates against this CA (PEM) and the
    /// host or IP in --store.
    #[arg(long, value_name = "FILE", requires = "store")]
    pub etcd_ca_file: Option<PathBuf>,
    /// With --etcd-ca-file: the certificate (PEM) to present to etcd (`--client-cert-auth`).
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca_file", "etcd_key_file"])]
    pub etcd_cert_file: Option<PathBuf>,
    /// The key of --etcd-cert-file (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// With etcd: how long a replica's sidecar registrations outlive it if it dies (the TTL
    /// of its etcd lease, whole seconds, at least 1s; etcd raises it to its own minimum), e.g.
    /// 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_ttl)]
    pub registration_ttl: Duration,
    /// Address of the REST API (`trellis ctl`, /openapi.json).
    #[arg(long, value_name = "IP:PORT", default_value = DEFAULT_API_ADDR)]
    pub api_addr: SocketAddr,
    /// Address of the discovery server (gRPC) proxies stream from.
    #[arg(long, value_name = "IP:PORT", default_value = DEFAULT_XDS_ADDR)]
    pub xds_addr: SocketAddr,
    /// File holding a bearer token that every client and proxy must send. Without it,
    /// anyone who can reach the ports may change the mesh: keep them on loopback.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How long a sidecar's endpoint stays registered after its discovery stream ends,
    /// e.g. 10s, 500ms, 1m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub endpoint_grace: Duration,
    /// Serve discovery over mTLS only: the control plane presents
    /// spiffe://trellis.local/ns/trellis-system/sa/control-plane from its own CA (DIR/ca),
    /// proxies must present certificates from that CA (`trellis certs issue --dir DIR/ca`)
    /// and may only register as the service their identity's service account names.
    #[arg(long)]
    pub xds_tls: bool,
    /// Serve the REST API over TLS: the control plane presents
    /// spiffe://trellis.local/ns/trellis-system/sa/control-plane from its own CA (DIR/ca);
    /// clients verify that ID against DIR/ca/ca.pem (`trellis ctl --ca-file`, a proxy's
    /// `identity.issuer` with an https:// server) and still send the bearer token.
    #[arg(long)]
    pub api_tls: bool,
    /// How often proxies report their request counters for the mesh page (/ui), e.g. 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub report_interval: Duration,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// Workload identity: certificates only for the service account a pod's JWT names.
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// The cluster's service-account signing keys (JWKS, e.g. from
    /// `kubectl get --raw /openid/v1/jwks`), re-read when the file changes. Then
    /// POST /v1/certificates needs the pod's service-account token (audience trellis) and
    /// signs only spiffe://trellis.local/ns/NS/sa/SA of its subject; discovery over mTLS
    /// needs no bearer token.
    #[arg(long, value_name = "FILE", conflicts_with = "workload_jwks_url")]
    pub workload_jwks: Option<PathBuf>,
    /// The same keys fetched over HTTPS (in a cluster:
    /// https://kubernetes.default.svc/openid/v1/jwks), again every 5 minutes and when a
    /// token names an unknown key.
    #[arg(long, value_name = "URL")]
    pub workload_jwks_url: Option<String>,
    /// CA bundle that verifies --workload-jwks-url.
    #[arg(long, value_name = "FILE", default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")]
    pub workload_jwks_ca: PathBuf,
    /// Bearer token sent to --workload-jwks-url (re-read at every fetch); the default is
    /// used only when it exists.
    #[arg(long, value_name = "FILE", default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token")]
    pub workload_jwks_token_file: PathBuf,
}

impl WorkloadArgs {
    fn source(self) -> Option<JwksSource> {
        if let Some(file) = self.workload_jwks {
            return Some(JwksSource::File(file));
        }
        let url = self.workload_jwks_url?;
        let token_file = Some(self.workload_jwks_token_file).filter(|p| p.exists());
        Some(JwksSource::Url { url, ca_file: self.workload_jwks_ca, token_file })
    }
}

/// Serves until SIGTERM or SIGINT, then stops gracefully.
pub fn run(args: ControlPlaneArgs) -> Result<()> {
    let tls = args.etcd_ca_file.map(|ca_file| trellis_control_plane::etcd::Tls {
        ca_file,
        client: args.etcd_cert_file.zip(args.etcd_key_file),
    });
    let store = match args.store {
        None => StoreOptions::Embedded,
        Some(EtcdMembers(members)) => StoreOptions::Etcd { members, prefix: args.etcd_prefix.clone(), tls },
    };
    let opts = Options {
        data_dir: args.data_dir,
        store,
        registration_ttl: args.registration_ttl,
        api_addr: args.api_addr,
        xds_addr: args.xds_addr,
        token_file: args.token_file,
        endpoint_grace: args.endpoint_grace,
        xds_tls: args.xds_tls,
        api_tls: args.api_tls,
        workload_jwks: args.workload.source(),
        report_interval: args.report_interval,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("trellis-cp")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Install the handlers before serving so an early SIGTERM is not fatal.
        let signal = shutdown_signal()?;
        trellis_control_plane::serve(opts, signal).await?;
        tracing::info!("control plane stopped");
        Ok(())
    })
}

/// Completes on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

/// The etcd members of `--store`.
#[derive(Clone, Debug)]
pub struct EtcdMembers(Vec<String>);

fn parse_store(s: &str) -> Result<EtcdMembers, String> {
    trellis_control_plane::etcd::parse_members(s).map(EtcdMembers).map_err(|e| e.to_string())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    trellis_control_plane::etcd::keys::Keys::new(s).map(|_| s.to_string())
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_duration(s)?;
    if ttl < Duration::from_secs(1) {
        return Err("must be at least 1s (an etcd lease TTL is whole seconds)".into());
    }
    Ok(ttl)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<trellis_api::Duration>().map(trellis_api::Duration::get)
}
