//! The smallest end-to-end check: one request through the real binary, both protocols.

mod common;
use common::*;

#[tokio::test]
async fn forwards_http1_and_h2c() {
    let origin = Origin::echo("a").await;
    let listen = listen_addr();
    let _proxy = Proxy::start(&simple_config(listen, origin.addr, "auto"));
    let mut c = Client::h1(listen).await;
    let got = c.get("/hello?x=1").await;
    assert_eq!(got.status, 200);
    let j = got.json();
    assert_eq!(j["path"], "/hello?x=1");
    assert_eq!(j["version"], "HTTP/1.1");
    let mut c = Client::h2(listen).await;
    let got = c.get("/h2").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["version"], "HTTP/2.0");
}
