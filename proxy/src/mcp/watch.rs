//! `mcp.errors_are_failures` (DESIGN §13): an MCP answer's body, streamed on untouched
//! while its first JSON-RPC response is looked at; an error (or a tool result with
//! `isError: true`) counts as a failure of the endpoint for outlier detection (like a 5xx),
//! anything else as the success its status says. JSON answers are read as they pass (at most
//! [`MAX_SCANNED`] bytes kept); SSE answers event by event, each forwarded as it comes.

use crate::http::body::BodyError;
use crate::resilience::outlier::Outcome;
use crate::upstream::response::ResponseBody;
use crate::upstream::{Cluster, Endpoint};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Most bytes of an answer (JSON) or of one SSE event kept to be read; past it the answer
/// counts by its status.
pub const MAX_SCANNED: usize = 1 << 20;

/// An answer body under watch.
#[derive(Debug)]
pub struct Watched {
    inner: ResponseBody,
    scan: Scan,
    /// Set until the outcome is recorded.
    target: Option<(Arc<Cluster>, Arc<Endpoint>)>,
    status: u16,
}

impl Watched {
    pub fn new(inner: ResponseBody, sse: bool, status: u16, cluster: Arc<Cluster>, ep: Arc<Endpoint>) -> Self {
        Self { inner, scan: Scan::new(sse), target: Some((cluster, ep)), status }
    }

    fn settle(&mut self, failed: bool) {
        if let Some((cluster, ep)) = self.target.take() {
            let code = if failed { 500 } else { self.status };
            if failed {
                tracing::debug!(cluster = %cluster.name, endpoint = %ep.addr, "mcp: a JSON-RPC error counts as a failure");
            }
            cluster.record(&ep, Outcome::Status { code, grpc: None });
        }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if this.target.is_some() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref()
                        && let Some(failed) = this.scan.feed(data)
                    {
                        this.settle(failed);
                    }
                }
                None => {
                    let failed = this.scan.finish();
                    this.settle(failed);
                }
                // Cut off: how it would have ended is unknown; the cut is not the endpoint's
                // answer, so nothing is recorded.
                Some(Err(_)) => this.target = None,
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The reading of an answer, to its first JSON-RPC response.
#[derive(Debug)]
struct Scan {
    sse: bool,
    buf: Vec<u8>,
    /// Gave up (too large): the answer counts by its status.
    over: bool,
}

impl Scan {
    fn new(sse: bool) -> Self {
        Self { sse, buf: Vec::new(), over: false }
    }

    /// Reads more of the answer: `Some(failed)` once it is decided.
    fn feed(&mut self, data: &[u8]) -> Option<bool> {
        if self.over {
            return None;
        }
        if self.buf.len() + data.len() > MAX_SCANNED {
            self.over = true;
            self.buf = Vec::new();
            return Some(false);
        }
        self.buf.extend_from_slice(data);
        if !self.sse {
            return None;
        }
        while let Some((end, sep)) = event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end + sep).collect();
            if let Some(failed) = sse_event(&event[..end]) {
                self.buf = Vec::new();
                return Some(failed);
            }
        }
        None
    }

    /// The answer ended: whether it was an error.
    fn finish(&mut self) -> bool {
        let buf = std::mem::take(&mut self.buf);
        if self.over {
            return false;
        }
        if self.sse {
            return sse_event(&buf).unwrap_or(false);
        }
        serde_json::from_slice::<Value>(&buf).is_ok_and(|v| match v {
            Value::Array(msgs) => msgs.iter().any(is_error),
            v => is_error(&v),
        })
    }
}

/// Where the first SSE event of `buf` ends, and the length of the blank line that ends it.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
        i += 1;
    }
    None
}

/// An SSE event's JSON-RPC response: `Some(is an error)`; `None` for anything else
/// (notifications, comments, requests of the server).
fn sse_event(event: &[u8]) -> Option<bool> {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(d) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
        }
    }
    let v: Value = serde_json::from_slice(&data).ok()?;
    let response = v.get("id").is_some() && (v.get("result").is_some() || v.get("error").is_some());
    response.then(|| is_error(&v))
}

/// A JSON-RPC error, or a tool result that says it failed.
fn is_error(v: &Value) -> bool {
    v.get("error").is_some() || v.get("result").and_then(|r| r.get("isError")).and_then(Value::as_bool) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_are_read_whole() {
        let json = |body: &str| {
            let mut s = Scan::new(false);
            assert_eq!(s.feed(body.as_bytes()), None);
            s.finish()
        };
        assert!(json(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"x"}}"#));
        assert!(json(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}"#));
        assert!(!json(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}"#));
        assert!(json(r#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"error":{}}]"#));
        assert!(!json("not json"));
    }

    #[test]
    fn sse_answers_decide_on_their_first_response_event() {
        let mut s = Scan::new(true);
        let progress =
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n";
        assert_eq!(s.feed(progress.as_bytes()), None);
        // An event split across frames, with CRLF line ends.
        assert_eq!(s.feed(b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,"), None);
        assert_eq!(s.feed(b"\"result\":{\"isError\":true}}\r\n\r\n"), Some(true));
        let mut ok = Scan::new(true);
        assert_eq!(ok.feed(b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n"), Some(false));
        // A stream that ends without a response counts as its status.
        assert!(!Scan::new(true).finish());
        let mut big = Scan::new(true);
        assert_eq!(big.feed(&vec![b'x'; MAX_SCANNED + 1]), Some(false));
    }
}
