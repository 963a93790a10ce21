//! The smallest end-to-end check: one request through the real binary, both protocols.
//! The cluster is `protocol: auto`: HTTP/1.1 to the origin unless it is known to speak h2
//! (DESIGN §11), so an h2c client's request reaches it as HTTP/1.1, a gRPC one as h2.

use trellis_testkit::config::{self, ClusterProtocol};
use trellis_testkit::*;

#[tokio::test]
async fn forwards_http1_and_h2c() {
    let origin = Origin::echo("a").await;
    let listen = listen_addr();
    let _proxy = Proxy::start(&config::simple(listen, origin.addr, ClusterProtocol::Auto).yaml());
    let mut c = Client::h1(listen).await;
    let got = c.get("/hello?x=1").await;
    assert_eq!(got.status, 200);
    let j = got.json();
    assert_eq!(j["path"], "/hello?x=1");
    assert_eq!(j["version"], "HTTP/1.1");
    let mut c = Client::h2(listen).await;
    let got = c.get("/h2").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["version"], "HTTP/1.1");
    let grpc = http::Request::post("/pkg.Svc/Call").header("content-type", "application/grpc").body(full("")).unwrap();
    assert_eq!(c.fetch(grpc).await.json()["version"], "HTTP/2.0");
}
