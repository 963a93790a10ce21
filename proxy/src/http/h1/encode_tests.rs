//! The codec's encoders: response heads (HTTP/1.1 and 1.0, with and without a body),
//! request heads, and the body encoder.

#![allow(clippy::unwrap_used)]

use super::body::Encoder;
use super::encode::{self, Answering, BodyHint};
use super::framing::Framing;
use crate::http::fault::Side;
use http::{HeaderMap, Request, Response, Version};

fn response(resp: Response<()>, body: BodyHint, to: Answering, close: bool) -> (String, Framing, bool) {
    let (parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    let mut close = close;
    let f = encode::response_head(&mut out, &parts, body, to, &mut close);
    let text = String::from_utf8(out).unwrap();
    let without_date = text.lines().filter(|l| !l.starts_with("date: ")).map(|l| format!("{l}\r\n")).collect();
    (without_date, f, close)
}

const V11: Answering = Answering { version: Version::HTTP_11, head: false };

#[test]
fn response_heads() {
    let resp = || Response::builder().header("x-a", "1");
    let (text, f, close) = response(resp().body(()).unwrap(), Some(Some(2)), V11, false);
    assert_eq!(
        (text.as_str(), f, close),
        ("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n", Framing::Length(2), false)
    );
    // Unknown length: chunked; `close` adds the field.
    let (text, f, close) = response(Response::builder().status(404).body(()).unwrap(), Some(None), V11, true);
    assert_eq!(
        (text.as_str(), f, close),
        ("HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n", Framing::Chunked, true)
    );
    // The response's own `connection: close` closes, once.
    let r = Response::builder().status(431).header("connection", "close").body(()).unwrap();
    let (text, _, close) = response(r, Some(Some(3)), V11, false);
    assert!(close && text.matches("connection: close").count() == 1, "{text}");
    // Framing fields in the map are never copied: the body decides (issue #14, item 3).
    let r = resp().header("content-length", "3").header("transfer-encoding", "chunked").body(()).unwrap();
    let (text, f, _) = response(r, Some(None), V11, false);
    assert_eq!(
        (text.as_str(), f),
        ("HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n", Framing::Chunked)
    );
    // Empty: says so.
    let (text, f, _) = response(Response::new(()), None, V11, false);
    assert_eq!((text.as_str(), f), ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Framing::None));
}

#[test]
fn response_heads_without_body() {
    let head = Answering { version: Version::HTTP_11, head: true };
    let r = Response::builder().header("content-length", "42").body(()).unwrap();
    let (text, f, _) = response(r, None, head, false);
    assert_eq!((text.as_str(), f), ("HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n", Framing::None));
    let (text, f, _) = response(Response::new(()), Some(None), head, false);
    assert_eq!((text.as_str(), f), ("HTTP/1.1 200 OK\r\n\r\n", Framing::None));
    for status in [204, 304, 101] {
        let r = Response::builder().status(status).header("content-length", "5").body(()).unwrap();
        let (text, f, _) = response(r, Some(Some(5)), V11, false);
        assert_eq!(f, Framing::None, "{status}");
        assert_eq!(text.contains("content-length"), status == 304, "{status}: {text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
    }
}

#[test]
fn response_heads_for_http10() {
    let v10 = Answering { version: Version::HTTP_10, head: false };
    let (text, f, close) = response(Response::new(()), Some(Some(2)), v10, false);
    assert_eq!(
        (text.as_str(), f, close),
        ("HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n", Framing::Length(2), false)
    );
    // No chunked coding in HTTP/1.0: the close ends the body.
    let (text, f, close) = response(Response::new(()), Some(None), v10, false);
    assert_eq!((text.as_str(), f, close), ("HTTP/1.0 200 OK\r\nconnection: close\r\n\r\n", Framing::Close, true));
}

fn request(req: Request<()>, empty: bool, exact: Option<u64>) -> (String, Framing) {
    let (parts, ()) = req.into_parts();
    let (h, f) = encode::request_head(&parts, &(), empty, exact);
    (String::from_utf8(h).unwrap(), f)
}

#[test]
fn request_heads_frame_as_hyper_did() {
    let get = || Request::get("/a?b").header("host", "h").body(()).unwrap();
    assert_eq!(request(get(), true, Some(0)), ("GET /a?b HTTP/1.1\r\nhost: h\r\n\r\n".into(), Framing::None));
    assert_eq!(request(get(), false, None).1, Framing::None);
    let post = || Request::post("/p").body(()).unwrap();
    assert_eq!(
        request(post(), false, Some(3)),
        ("POST /p HTTP/1.1\r\ncontent-length: 3\r\n\r\n".into(), Framing::Length(3))
    );
    assert_eq!(
        request(post(), false, None),
        ("POST /p HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".into(), Framing::Chunked)
    );
    // The request's own framing fields are not copied: the body decides.
    let r = Request::post("/p").header("content-length", "5").header("content-length", "5").body(()).unwrap();
    assert_eq!(
        request(r, false, Some(5)),
        ("POST /p HTTP/1.1\r\ncontent-length: 5\r\n\r\n".into(), Framing::Length(5))
    );
    let r = Request::post("/p").header("content-length", "0").body(()).unwrap();
    assert_eq!(request(r, true, Some(0)).0, "POST /p HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(request(post(), true, Some(0)).0, "POST /p HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    let r = Request::delete("/p").header("content-length", "0").body(()).unwrap();
    assert_eq!(request(r, true, Some(0)).0, "DELETE /p HTTP/1.1\r\n\r\n");
    let r = Request::get("http://h.test/x").body(()).unwrap();
    assert_eq!(request(r, true, None).0, "GET http://h.test/x HTTP/1.1\r\n\r\n");
}

#[test]
fn body_encoder() {
    let mut out = Vec::new();
    let mut e = Encoder::new(Framing::Chunked, Side::Client);
    assert_eq!(e.data(0x11, &mut out).unwrap(), b"\r\n");
    assert_eq!(out, b"11\r\n");
    out.clear();
    let mut t = HeaderMap::new();
    t.insert("x-sum", "1".parse().unwrap());
    t.insert("content-length", "9".parse().unwrap());
    e.end(Some(&t), &mut out).unwrap();
    assert_eq!(out, b"0\r\nx-sum: 1\r\n\r\n");
    assert!(e.is_ended());
    let mut e = Encoder::new(Framing::Length(2), Side::Client);
    let err = e.data(3, &mut out).unwrap_err();
    assert_eq!(err.side(), Side::Client);
    let mut e = Encoder::new(Framing::Length(2), Side::Upstream);
    e.data(1, &mut out).unwrap();
    assert_eq!(e.end(None, &mut out).unwrap_err().side(), Side::Upstream);
    assert_eq!(encode::decimal(18_446_744_073_709_551_615, &mut [0; 20]), b"18446744073709551615");
}
