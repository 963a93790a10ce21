//! The codec's framing, table-driven, both directions: every request a client may send and
//! every response an upstream may send that RFC 9112 §6 and the request-smuggling
//! literature single out (CL.TE, TE.CL, TE.TE, duplicate, signed and list lengths,
//! obs-fold, bare CR and LF, chunk-size overflow, extensions, trailers, HTTP/1.0 with
//! Transfer-Encoding, interim responses, absolute-form targets), with what the codec makes
//! of each: the head refused with a status, or the body and what follows it. The
//! encoders are tested in `encode_tests`, property tests are in `proptests`.
#![allow(clippy::unwrap_used)]

use super::body::Decoder;
use super::chunked::Decoded;
use super::framing::{self, Framing};
use super::head;
use crate::http::fault::Side;
use bytes::BytesMut;
use http::{HeaderMap, Method, StatusCode, Version};

/// What reading one message off a connection came to.
#[derive(Debug, PartialEq)]
pub(super) enum Read {
    /// The head was refused: the status a client gets (requests) or 502 (responses).
    Refused(u16),
    /// The head was read; then the body.
    Message {
        framing: Framing,
        body: Vec<u8>,
        trailers: Vec<(String, String)>,
        /// The body ended cleanly (else: the error, or the input ran out).
        end: End,
        /// The connection may go on after the message.
        persistent: bool,
        /// What the input holds after the message.
        rest: Vec<u8>,
    },
    /// The head is not whole.
    Partial,
}

#[derive(Debug, PartialEq)]
pub(super) enum End {
    Clean,
    Error,
    /// The input ran out before the body's end.
    More,
}

/// A body read: data, trailers, how it ended, what followed it.
type BodyRead = (Vec<u8>, Vec<(String, String)>, End, Vec<u8>);

fn body_of(mut buf: BytesMut, framing: Framing, side: Side, eof: bool) -> BodyRead {
    let mut dec = Decoder::new(framing, side);
    let (mut body, mut trailers) = (Vec::new(), Vec::new());
    let end = loop {
        match dec.decode(&mut buf) {
            Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
            Ok(Decoded::Trailers(t)) => {
                trailers = t.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned())).collect();
                break End::Clean;
            }
            Ok(Decoded::End) => break End::Clean,
            Ok(Decoded::NeedMore) if eof => break if dec.eof().is_ok() { End::Clean } else { End::Error },
            Ok(Decoded::NeedMore) => break End::More,
            Err(e) => {
                assert_eq!(e.side(), side, "{e}");
                break End::Error;
            }
        }
    };
    // What follows a body that failed or did not end means nothing.
    let rest = if end == End::Clean { buf.to_vec() } else { Vec::new() };
    (body, trailers, end, rest)
}

/// The server's reading of `input` (a client's bytes).
pub(super) fn read_request(input: &[u8]) -> Read {
    let mut buf = BytesMut::from(input);
    let head = match head::request::<()>(&mut buf, &mut Vec::new()) {
        Ok(Some(h)) => h,
        Ok(None) => return Read::Partial,
        Err(e) => {
            assert_eq!(e.side(), Side::Client);
            return Read::Refused(e.status().as_u16());
        }
    };
    let (body, trailers, end, rest) = body_of(buf, head.framing, Side::Client, false);
    Read::Message { framing: head.framing, body, trailers, end, persistent: !head.close, rest }
}

/// The client's reading of `input` (an upstream's bytes) as the answer to a `method`
/// request: interim responses skipped, a 101 refused; the input's end is the connection's.
pub(super) fn read_response(input: &[u8], method: &Method) -> Read {
    let mut buf = BytesMut::from(input);
    let head = loop {
        match head::response(&mut buf, head::Requested::new(method)) {
            Ok(Some(h)) if h.status == StatusCode::SWITCHING_PROTOCOLS => return Read::Refused(502),
            Ok(Some(h)) if h.status.is_informational() => continue,
            Ok(Some(h)) => break h,
            Ok(None) => return Read::Partial,
            Err(e) => {
                assert_eq!(e.side(), Side::Upstream);
                return Read::Refused(502);
            }
        }
    };
    let (body, trailers, end, rest) = body_of(buf, head.framing, Side::Upstream, true);
    Read::Message { framing: head.framing, body, trailers, end, persistent: head.keep_alive, rest }
}

fn message(framing: Framing, body: &str, end: End, persistent: bool, rest: &str) -> Read {
    Read::Message { framing, body: body.into(), trailers: vec![], end, persistent, rest: rest.into() }
}

fn ok(framing: Framing, body: &str) -> Read {
    message(framing, body, End::Clean, true, "")
}

fn body_error(framing: Framing, body: &str) -> Read {
    message(framing, body, End::Error, true, "")
}

const POST: &str = "POST /u HTTP/1.1\r\nHost: a\r\n";

#[test]
fn requests() {
    use Framing::*;
    let cases: Vec<(&str, String, Read)> = vec![
        ("no body", "GET / HTTP/1.1\r\nHost: a\r\n\r\n".into(), ok(None, "")),
        ("content-length", format!("{POST}Content-Length: 5\r\n\r\nhello"), ok(Length(5), "hello")),
        ("content-length 0", format!("{POST}Content-Length: 0\r\n\r\n"), ok(None, "")),
        ("leading zeros", format!("{POST}Content-Length: 005\r\n\r\nhello"), ok(Length(5), "hello")),
        ("chunked", format!("{POST}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), ok(Chunked, "hello")),
        ("chunked, case", format!("{POST}transfer-encoding: Chunked\r\n\r\n0\r\n\r\n"), ok(Chunked, "")),
        ("chunked, tab", format!("{POST}Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"), ok(Chunked, "")),
        (
            "hex sizes",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n00\r\n\r\n"),
            ok(Chunked, "0123456789"),
        ),
        (
            "size then BWS",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5 \t\r\nhello\r\n0\r\n\r\n"),
            ok(Chunked, "hello"),
        ),
        (
            "extensions",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5 ; a ; b = c;q=\"x \\\" y\"\r\nhello\r\n0;z\r\n\r\n"),
            ok(Chunked, "hello"),
        ),
        (
            "trailers",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\nContent-Length: 9\r\n\r\n"),
            Read::Message {
                framing: Chunked,
                body: b"hello".to_vec(),
                // A framing field may not be a trailer: dropped.
                trailers: vec![("x-sum".into(), "1".into())],
                end: End::Clean,
                persistent: true,
                rest: vec![],
            },
        ),
        (
            "trailers ended by bare LF",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n0\r\nx-a: 1\n\n"),
            Read::Message {
                framing: Chunked,
                body: vec![],
                trailers: vec![("x-a".into(), "1".into())],
                end: End::Clean,
                persistent: true,
                rest: vec![],
            },
        ),
        ("no trailers, bare LF", format!("{POST}Transfer-Encoding: chunked\r\n\r\n0\r\n\n"), ok(Chunked, "")),
        // Issue #14, item 1: malformed chunked bodies are the client's error.
        (
            "20-digit size",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n00000000000000000005\r\nhello\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "17-digit size",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "largest size",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab"),
            message(Chunked, "ab", End::More, true, ""),
        ),
        (
            "size then junk",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5 junk\r\nhello\r\n0\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "bare CR in extension",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5;e\rx\r\nhello\r\n0\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "bare LF in extension",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5;e\nhello\r\n0\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "unclosed quote",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5;e=\"x\r\nhello\r\n0\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "extension without name",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5;=x\r\nhello\r\n0\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "size line ended by LF",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "data not ended by CRLF",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
            body_error(Chunked, "hello"),
        ),
        (
            "data ended by LF",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n"),
            body_error(Chunked, "hello"),
        ),
        ("no size", format!("{POST}Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n"), body_error(Chunked, "")),
        (
            "signed size",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "0x size",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "obs-fold trailer",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n0\r\nx: a\r\n b\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "aborted upload",
            format!("{POST}Content-Length: 100\r\n\r\n0123456789"),
            message(Length(100), "0123456789", End::More, true, ""),
        ),
        // Smuggling: what follows a body is the next request, never part of it.
        (
            "body then next request",
            format!("{POST}Content-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\n\r\n"),
            message(Length(5), "hello", End::Clean, true, "GET /next HTTP/1.1\r\n\r\n"),
        ),
        (
            "chunked then next request",
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n"),
            message(Chunked, "", End::Clean, true, "GET /next HTTP/1.1\r\n\r\n"),
        ),
        (
            "CL.TE",
            format!("{POST}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
            Read::Refused(400),
        ),
        (
            "TE.CL",
            format!("{POST}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
            Read::Refused(400),
        ),
        (
            "TE.TE: second value",
            format!("{POST}Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n"),
            Read::Refused(400),
        ),
        ("TE.TE: xchunked", format!("{POST}Transfer-Encoding: xchunked\r\n\r\n"), Read::Refused(400)),
        ("TE.TE: chunked twice", format!("{POST}Transfer-Encoding: chunked, chunked\r\n\r\n"), Read::Refused(400)),
        ("TE.TE: parameter", format!("{POST}Transfer-Encoding: chunked;x=1\r\n\r\n"), Read::Refused(400)),
        ("TE.TE: empty", format!("{POST}Transfer-Encoding: \r\n\r\n"), Read::Refused(400)),
        ("TE.TE: identity", format!("{POST}Transfer-Encoding: identity\r\n\r\n"), Read::Refused(400)),
        ("TE.TE: space before colon", format!("{POST}Transfer-Encoding : chunked\r\n\r\n"), Read::Refused(400)),
        ("TE.TE: vertical tab", format!("{POST}Transfer-Encoding: \x0bchunked\r\n\r\n"), Read::Refused(400)),
        ("TE.TE: obs-fold", format!("{POST}Transfer-Encoding:\r\n chunked\r\n\r\n"), Read::Refused(400)),
        (
            "TE.TE: folded first line",
            "POST /u HTTP/1.1\r\n Transfer-Encoding: chunked\r\n\r\n".into(),
            Read::Refused(400),
        ),
        ("TE.TE: NUL", format!("{POST}Transfer-Encoding: chunked\0\r\n\r\n"), Read::Refused(400)),
        ("gzip, chunked", format!("{POST}Transfer-Encoding: gzip, chunked\r\n\r\n"), Read::Refused(501)),
        (
            "gzip then chunked fields",
            format!("{POST}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Read::Refused(501),
        ),
        ("HTTP/1.0 + TE", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), Read::Refused(400)),
        (
            "HTTP/1.0 + TE + CL",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n".into(),
            Read::Refused(400),
        ),
        (
            "duplicate CL, same",
            format!("{POST}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            ok(Length(5), "hello"),
        ),
        ("list CL, same", format!("{POST}Content-Length: 5, 5\r\n\r\nhello"), ok(Length(5), "hello")),
        (
            "duplicate CL, different",
            format!("{POST}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            Read::Refused(400),
        ),
        ("list CL, different", format!("{POST}Content-Length: 5, 6\r\n\r\nhello!"), Read::Refused(400)),
        ("list CL, empty member", format!("{POST}Content-Length: 5,\r\n\r\nhello"), Read::Refused(400)),
        ("signed CL", format!("{POST}Content-Length: +5\r\n\r\nhello"), Read::Refused(400)),
        ("negative CL", format!("{POST}Content-Length: -1\r\n\r\n"), Read::Refused(400)),
        ("hex CL", format!("{POST}Content-Length: 0x5\r\n\r\nhello"), Read::Refused(400)),
        ("CL with space inside", format!("{POST}Content-Length: 5 5\r\n\r\nhello"), Read::Refused(400)),
        ("empty CL", format!("{POST}Content-Length: \r\n\r\n"), Read::Refused(400)),
        ("overflowing CL", format!("{POST}Content-Length: 99999999999999999999\r\n\r\n"), Read::Refused(400)),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n".into(), Read::Refused(400)),
        ("bare CR in request line", "GET / HTTP/1.1\rHost: a\r\n\r\n".into(), Read::Refused(400)),
        ("bare CR in value", "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n".into(), Read::Refused(400)),
        ("bare LF line ends", "GET / HTTP/1.1\nHost: a\n\n".into(), ok(None, "")),
        ("space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".into(), Read::Refused(400)),
        ("HTTP/0.9", "GET /\r\n\r\n".into(), Read::Refused(400)),
        ("HTTP/9.9", "GET / HTTP/9.9\r\n\r\n".into(), Read::Refused(400)),
        ("HTTP/2.0 line", "GET / HTTP/2.0\r\n\r\n".into(), Read::Refused(400)),
        ("absolute-form, other Host", "GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n".into(), ok(None, "")),
        ("absolute-form, no Host", "GET http://b.test/x HTTP/1.1\r\n\r\n".into(), ok(None, "")),
        ("two Host fields", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n".into(), Read::Refused(400)),
        ("two Host fields, same", "GET / HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n\r\n".into(), Read::Refused(400)),
        ("no Host", "GET / HTTP/1.1\r\n\r\n".into(), Read::Refused(400)),
        ("empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n".into(), ok(None, "")),
        ("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a.test\r\n\r\n".into(), Read::Refused(400)),
        ("Host with a path", "GET / HTTP/1.1\r\nHost: a.test/x\r\n\r\n".into(), Read::Refused(400)),
        ("Host with a bad port", "GET / HTTP/1.1\r\nHost: a.test:99999\r\n\r\n".into(), Read::Refused(400)),
        ("IPv6 Host", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n".into(), ok(None, "")),
        ("authority-form GET", "GET a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n".into(), Read::Refused(400)),
        ("CONNECT origin-form", "CONNECT /x HTTP/1.1\r\nHost: a.test\r\n\r\n".into(), Read::Refused(400)),
        ("CONNECT", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n".into(), ok(None, "")),
        ("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".into(), ok(None, "")),
        ("GET *", "GET * HTTP/1.1\r\nHost: a\r\n\r\n".into(), Read::Refused(400)),
        ("HTTP/1.0 closes", "GET / HTTP/1.0\r\n\r\n".into(), message(None, "", End::Clean, false, "")),
        ("HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".into(), ok(None, "")),
        (
            "Connection: close",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x, Close\r\n\r\n".into(),
            message(None, "", End::Clean, false, ""),
        ),
        ("URI too long", format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(super::MAX_URI_LEN)), Read::Refused(414)),
        (
            "too many fields",
            format!("GET / HTTP/1.1\r\n{}\r\n", "x: y\r\n".repeat(super::MAX_HEADERS + 1)),
            Read::Refused(431),
        ),
        ("partial head", "GET / HTTP/1.1\r\nHost: a\r\n".into(), Read::Partial),
    ];
    for (name, input, want) in cases {
        assert_eq!(read_request(input.as_bytes()), want, "{name}: {input:?}");
    }
}

const OK: &str = "HTTP/1.1 200 OK\r\n";

#[test]
fn responses() {
    use Framing::*;
    let get = Method::GET;
    let cases: Vec<(&str, Method, String, Read)> = vec![
        (
            "content-length",
            get.clone(),
            format!("{OK}Content-Length: 2\r\n\r\nokNEXT"),
            message(Length(2), "ok", End::Clean, true, "NEXT"),
        ),
        (
            "chunked",
            get.clone(),
            format!("{OK}Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            ok(Chunked, "ok"),
        ),
        // Issue #14, item 3: both framings: chunked wins, the connection is not reused.
        (
            "CL + chunked",
            get.clone(),
            format!("{OK}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            message(Chunked, "hello", End::Clean, false, ""),
        ),
        (
            "chunked + CL",
            get.clone(),
            format!("{OK}Transfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            message(Chunked, "hello", End::Clean, false, ""),
        ),
        // Issue #14, item 4: a trailer section ended by a bare LF ends the body at once.
        (
            "trailers ended by bare LF",
            get.clone(),
            format!("{OK}Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 9\n\n"),
            Read::Message {
                framing: Chunked,
                body: b"ok".to_vec(),
                trailers: vec![("x-sum".into(), "9".into())],
                end: End::Clean,
                persistent: true,
                rest: vec![],
            },
        ),
        (
            "1xx before the answer",
            get.clone(),
            format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n{OK}Content-Length: 2\r\n\r\nok"
            ),
            ok(Length(2), "ok"),
        ),
        ("101", get.clone(), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".into(), Read::Refused(502)),
        (
            "gzip only: read to close",
            get.clone(),
            format!("{OK}Transfer-Encoding: gzip\r\n\r\nzzz"),
            message(Close, "zzz", End::Clean, false, ""),
        ),
        (
            // RFC 9110 §5.6.1: an empty list element is ignored, so the list still ends in
            // chunked (hyper reads only the last line and would read to the close).
            "gzip, chunked, then an empty TE line",
            get.clone(),
            format!("{OK}Transfer-Encoding: gzip, chunked\r\nTransfer-Encoding: \r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            ok(Chunked, "abc"),
        ),
        (
            "no length: read to close",
            get.clone(),
            format!("{OK}\r\nall of it"),
            message(Close, "all of it", End::Clean, false, ""),
        ),
        ("chunked twice", get.clone(), format!("{OK}Transfer-Encoding: chunked, chunked\r\n\r\n"), Read::Refused(502)),
        (
            "HTTP/1.0 + TE",
            get.clone(),
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            Read::Refused(502),
        ),
        (
            "HTTP/1.0",
            get.clone(),
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx".into(),
            message(Length(1), "x", End::Clean, false, ""),
        ),
        (
            "HTTP/1.0 keep-alive",
            get.clone(),
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx".into(),
            ok(Length(1), "x"),
        ),
        (
            "Connection: close",
            get.clone(),
            format!("{OK}Connection: close\r\nContent-Length: 1\r\n\r\nx"),
            message(Length(1), "x", End::Clean, false, ""),
        ),
        ("HEAD", Method::HEAD, format!("{OK}Content-Length: 5\r\n\r\n"), ok(None, "")),
        ("204", get.clone(), "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".into(), ok(None, "")),
        ("304", get.clone(), "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n".into(), ok(None, "")),
        ("CONNECT 200", Method::CONNECT, format!("{OK}\r\ntunnel"), message(None, "", End::Clean, false, "tunnel")),
        (
            "duplicate CL, same",
            get.clone(),
            format!("{OK}Content-Length: 2\r\nContent-Length: 2\r\n\r\nok"),
            ok(Length(2), "ok"),
        ),
        ("list CL, same", get.clone(), format!("{OK}Content-Length: 2, 2\r\n\r\nok"), ok(Length(2), "ok")),
        (
            "duplicate CL, different",
            get.clone(),
            format!("{OK}Content-Length: 2\r\nContent-Length: 3\r\n\r\nok!"),
            Read::Refused(502),
        ),
        ("signed CL", get.clone(), format!("{OK}Content-Length: +2\r\n\r\nok"), Read::Refused(502)),
        ("obs-fold", get.clone(), format!("{OK}X-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n"), Read::Refused(502)),
        ("space before colon", get.clone(), format!("{OK}Content-Length : 2\r\n\r\nok"), Read::Refused(502)),
        ("bad status", get.clone(), "HTTP/1.1 2000 OK\r\n\r\n".into(), Read::Refused(502)),
        ("status under 100", get.clone(), "HTTP/1.1 099 X\r\n\r\n".into(), Read::Refused(502)),
        ("not HTTP", get.clone(), "HTTX/1.1 200 OK\r\n\r\n".into(), Read::Refused(502)),
        ("cut body", get.clone(), format!("{OK}Content-Length: 5\r\n\r\nhel"), body_error(Length(5), "hel")),
        (
            "cut chunked body",
            get.clone(),
            format!("{OK}Transfer-Encoding: chunked\r\n\r\n5\r\nhel"),
            body_error(Chunked, "hel"),
        ),
        (
            "bad chunk",
            get.clone(),
            format!("{OK}Transfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n"),
            body_error(Chunked, ""),
        ),
        (
            "too many fields",
            get.clone(),
            format!("{OK}{}\r\n", "x: y\r\n".repeat(super::MAX_HEADERS + 1)),
            Read::Refused(502),
        ),
        ("partial", get.clone(), format!("{OK}Content-Length: 2\r\n"), Read::Partial),
    ];
    for (name, method, input, want) in cases {
        assert_eq!(read_response(input.as_bytes(), &method), want, "{name}: {input:?}");
    }
}

#[test]
fn repeated_lengths_go_on_once() {
    let mut buf =
        BytesMut::from(&b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 5, 5\r\n\r\nhello"[..]);
    let h = head::request::<()>(&mut buf, &mut Vec::new()).unwrap().unwrap();
    assert_eq!(h.req.headers().get_all("content-length").iter().collect::<Vec<_>>(), ["5"]);
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"[..]);
    let h = head::response(&mut buf, head::Requested::new(&Method::GET)).unwrap().unwrap();
    assert_eq!(h.headers.get_all("content-length").iter().collect::<Vec<_>>(), ["2"]);
}

#[test]
fn response_drops_content_length_under_chunked() {
    let input = format!("{OK}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    let h = head::response(&mut BytesMut::from(input.as_bytes()), head::Requested::new(&Method::GET)).unwrap().unwrap();
    assert!(h.headers.get("content-length").is_none(), "{:?}", h.headers);
    assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
}

#[test]
fn response_head_too_large() {
    let mut big = String::from(OK);
    while big.len() <= head::MAX_RESPONSE_HEAD {
        big.push_str(&format!("x-filler: {}\r\n", "0".repeat(1000)));
    }
    assert_eq!(read_response(big.as_bytes(), &Method::GET), Read::Refused(502));
    // A head cut anywhere is incomplete, not an error.
    let full = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n";
    for cut in 0..full.len() {
        assert_eq!(read_response(&full[..cut], &Method::GET), Read::Partial, "{cut}");
    }
}

#[test]
fn request_head_fields() {
    let mut buf = BytesMut::from(
        &b"HEAD http://api.test:8080/x HTTP/1.1\r\nHost: h\r\nX-Two: 1\r\nx-two: 2\r\nTE: trailers\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz"[..],
    );
    let h = head::request::<()>(&mut buf, &mut Vec::new()).unwrap().unwrap();
    assert_eq!(h.req.method(), Method::HEAD);
    assert_eq!(h.req.uri().host(), Some("api.test"));
    assert_eq!(h.req.uri().port_u16(), Some(8080));
    assert_eq!(h.req.version(), Version::HTTP_11);
    assert_eq!(h.req.headers().get_all("x-two").iter().collect::<Vec<_>>(), ["1", "2"]);
    assert!(h.trailers && h.expect_continue && !h.close);
    assert_eq!(h.framing, Framing::Length(1));
    assert_eq!(&buf[..], b"z");
    // Pipelined heads come off one at a time.
    let mut buf = BytesMut::from(&b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HT"[..]);
    assert_eq!(head::request::<()>(&mut buf, &mut Vec::new()).unwrap().unwrap().req.uri().path(), "/1");
    assert_eq!(head::request::<()>(&mut buf, &mut Vec::new()).unwrap().unwrap().req.uri().path(), "/2");
    assert!(head::request::<()>(&mut buf, &mut Vec::new()).unwrap().is_none());
    assert_eq!(&buf[..], b"GET /3 HT");
    // Exactly the most fields allowed.
    let ok = format!("GET / HTTP/1.1\r\nHost: h\r\n{}\r\n", "x: y\r\n".repeat(super::MAX_HEADERS - 1));
    let h = head::request::<()>(&mut BytesMut::from(ok.as_bytes()), &mut Vec::new()).unwrap().unwrap();
    assert_eq!(h.req.headers().len(), super::MAX_HEADERS);
}

#[test]
fn content_length_parser() {
    for (v, want) in [
        ("0", Some(0)),
        ("18446744073709551615", None),
        ("9999999999999999999", Some(9_999_999_999_999_999_999)),
        ("7, 7 ,7", Some(7)),
        ("7,8", None),
        ("", None),
        (" ", None),
        ("1_0", None),
        ("١", None),
    ] {
        assert_eq!(framing::parse_length(v.as_bytes()), want, "{v:?}");
    }
    let mut h = HeaderMap::new();
    assert_eq!(framing::content_length(&h), Ok(None));
    h.append("content-length", "5".parse().unwrap());
    h.append("content-length", "5, 5".parse().unwrap());
    assert_eq!(framing::content_length(&h), Ok(Some(5)));
    h.append("content-length", "6".parse().unwrap());
    assert_eq!(framing::content_length(&h), Err(framing::BadLength));
}

/// Feeds a chunked body in pieces cut at `cuts`; the data, trailers, and whether it ended.
fn chunked_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<HeaderMap>, bool) {
    let mut d = super::chunked::Decoder::default();
    let (mut buf, mut data, mut from) = (BytesMut::new(), Vec::new(), 0);
    for to in cuts.iter().copied().chain([input.len()]) {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            match d.decode(&mut buf, Side::Upstream).unwrap() {
                Decoded::Data(b) => data.extend_from_slice(&b),
                Decoded::Trailers(t) => return (data, Some(t), true),
                Decoded::End => return (data, None, true),
                Decoded::NeedMore => break,
            }
        }
    }
    (data, None, false)
}

#[test]
fn chunked_split_at_every_two_points() {
    const BODY: &[u8] = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-sum: 42\nx-b: c\r\n\r\n";
    for i in 0..=BODY.len() {
        for j in i..=BODY.len() {
            let (data, trailers, done) = chunked_in_pieces(BODY, &[i, j]);
            assert_eq!(data, b"hello 0123456789", "cut at {i},{j}");
            let t = trailers.unwrap();
            assert_eq!((&t["x-sum"], &t["x-b"]), (&"42".parse::<http::HeaderValue>().unwrap(), &"c".parse().unwrap()));
            assert!(done);
        }
    }
    for cut in [1, 4, 8, 12, BODY.len() - 1] {
        assert!(!chunked_in_pieces(&BODY[..cut], &[]).2, "{cut}");
    }
}

#[test]
fn trailer_scan_is_linear() {
    // One byte at a time through a large trailer section: each read scans only what is new.
    let mut d = super::chunked::Decoder::default();
    let mut buf = BytesMut::from(&b"0\r\n"[..]);
    let line = "x-pad: ".to_owned() + &"p".repeat(700) + "\r\n";
    let section = line.repeat(60) + "\r\n";
    let started = std::time::Instant::now();
    let mut end = None;
    for &b in section.as_bytes() {
        buf.extend_from_slice(&[b]);
        match d.decode(&mut buf, Side::Upstream).unwrap() {
            Decoded::NeedMore => {}
            other => end = Some(other),
        }
    }
    assert!(matches!(end, Some(Decoded::Trailers(ref t)) if t.get_all("x-pad").iter().count() == 60));
    // Not a timing assertion on the hot path: a quadratic scan of 40 KB a byte at a time
    // is ~800 M byte compares (seconds in a debug build), a linear one ~40 K.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn chunked_limits() {
    let mut d = super::chunked::Decoder::default();
    let mut long = BytesMut::from(&vec![b'1'; super::chunked::MAX_LINE + 10][..]);
    assert!(d.decode(&mut long, Side::Client).is_err());
    let mut d = super::chunked::Decoder::default();
    let mut huge = BytesMut::from(&b"0\r\n"[..]);
    huge.extend_from_slice(&vec![b'x'; super::chunked::MAX_TRAILERS + 10]);
    let e = d.decode(&mut huge, Side::Client).unwrap_err();
    assert_eq!(e.side(), Side::Client);
}
