//! Response encoding, as hyper's server does it: the status line, the headers as given plus
//! `date` (cached per second) and the framing (`content-length` from the body's exact size,
//! else chunked; no body for HEAD, 1xx, 204 and 304), chunks, and the last chunk with the
//! trailers the client asked for.

use crate::http::wire;
use http::header;
use http::{StatusCode, response};

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body bytes at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// What the body looks like before the first frame: nothing (`None`), or a body of this
/// exact size if known.
pub type BodyHint = Option<Option<u64>>;

/// Appends the response head to `out`. `close` (the connection ends after this response)
/// becomes true if the response says `connection: close`, and adds that header when set
/// and absent.
pub fn head(out: &mut Vec<u8>, parts: &response::Parts, body: BodyHint, req_head: bool, close: &mut bool) -> Framing {
    let status = parts.status;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodyless_status =
        status.is_informational() || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let mut framing = None;
    let (mut wrote_date, mut wrote_close) = (false, false);
    for (name, value) in parts.headers.iter() {
        match *name {
            header::CONTENT_LENGTH => {
                if framing.is_some() {
                    continue;
                }
                match body {
                    Some(Some(n)) => framing = Some(Framing::Length(n)),
                    Some(None) => match std::str::from_utf8(value.as_bytes()).ok().and_then(|v| v.parse().ok()) {
                        Some(n) => framing = Some(Framing::Length(n)),
                        None => continue,
                    },
                    // No body: the header stays only on a HEAD response.
                    None if req_head => framing = Some(Framing::Length(0)),
                    None => continue,
                }
            }
            // Framing is ours to decide.
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION if wire::has_token(value.as_bytes(), b"close") => {
                *close = true;
                wrote_close = true;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        wire::header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = match framing {
        Some(f) => f,
        None => match body {
            Some(None) if req_head || bodyless_status => Framing::None,
            Some(None) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            None | Some(Some(0)) => {
                if !req_head && !bodyless_status {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::None
            }
            Some(Some(n)) => {
                if !bodyless_status {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(wire::decimal(n, &mut [0; 20]));
                    out.extend_from_slice(b"\r\n");
                }
                Framing::Length(n)
            }
        },
    };
    if *close && !wrote_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if req_head || bodyless_status { Framing::None } else { framing }
}

/// Appends the current `date` value.
fn date(out: &mut Vec<u8>) {
    crate::http::date::with(|v| out.extend_from_slice(v.as_bytes()));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::{HeaderValue, Response};

    fn encode(resp: Response<()>, body: BodyHint, req_head: bool, close: bool) -> (String, Framing, bool) {
        let (parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        let mut close = close;
        let f = head(&mut out, &parts, body, req_head, &mut close);
        (String::from_utf8(out).unwrap(), f, close)
    }

    fn without_date(s: &str) -> String {
        s.lines().filter(|l| !l.starts_with("date: ")).map(|l| format!("{l}\r\n")).collect()
    }

    #[test]
    fn known_length_and_date() {
        let resp = Response::builder().header("x-a", "1").body(()).unwrap();
        let (text, f, close) = encode(resp, Some(Some(2)), false, false);
        assert_eq!(f, Framing::Length(2));
        assert!(!close);
        assert_eq!(without_date(&text), "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n");
        let date = text.lines().find_map(|l| l.strip_prefix("date: ")).unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }

    #[test]
    fn unknown_length_is_chunked_and_close_is_added() {
        let resp = Response::builder().status(404).body(()).unwrap();
        let (text, f, close) = encode(resp, Some(None), false, true);
        assert_eq!(f, Framing::Chunked);
        assert!(close);
        assert_eq!(
            without_date(&text),
            "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn connection_close_in_the_response_closes() {
        let resp = Response::builder().status(431).header("connection", "close").body(()).unwrap();
        let (text, f, close) = encode(resp, Some(Some(3)), false, false);
        assert!(close);
        assert_eq!(f, Framing::Length(3));
        assert_eq!(text.matches("connection: close").count(), 1, "{text}");
    }

    #[test]
    fn head_keeps_content_length_and_has_no_body() {
        let resp = Response::builder().header("content-length", "42").body(()).unwrap();
        let (text, f, _) = encode(resp, None, true, false);
        assert_eq!(f, Framing::None);
        assert!(text.contains("content-length: 42\r\n"), "{text}");
        let resp = Response::builder().body(()).unwrap();
        let (text, f, _) = encode(resp, Some(None), true, false);
        assert_eq!(f, Framing::None);
        assert!(!text.contains("transfer-encoding") && !text.contains("content-length"), "{text}");
    }

    #[test]
    fn no_body_statuses() {
        for status in [204, 304] {
            let resp = Response::builder().status(status).body(()).unwrap();
            let (text, f, _) = encode(resp, Some(Some(5)), false, false);
            assert_eq!(f, Framing::None, "{status}");
            assert!(!text.contains("content-length") && !text.contains("transfer-encoding"), "{text}");
        }
        // An empty 200 says so.
        let (text, f, _) = encode(Response::new(()), None, false, false);
        assert_eq!(f, Framing::None);
        assert!(text.contains("content-length: 0\r\n"), "{text}");
        let mut resp = Response::new(());
        resp.headers_mut().insert("content-length", HeaderValue::from_static("0"));
        let (text, _, _) = encode(resp, None, false, false);
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
    }
}
