//! Encoding a request for an upstream: the head in one buffer, the body's framing chosen as
//! hyper's client chose it, body frames turned into wire pieces, and the queue of pieces
//! written with as few (vectored) writes as the socket takes.

use super::Error;
use crate::http::wire;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, header, request};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// No body is sent.
    None,
    /// `content-length`: bytes still to send.
    Length(u64),
    Chunked,
}

impl Framing {
    /// Wire pieces for one data frame.
    pub fn data(&mut self, q: &mut Queue, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match self {
            Self::None => Ok(()),
            Self::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(Error::RequestLength);
                }
                *left -= n;
                q.push(data);
                Ok(())
            }
            Self::Chunked => {
                let mut size = Vec::with_capacity(18);
                wire::chunk_size_line(&mut size, data.len());
                q.push(Bytes::from(size));
                q.push(data);
                q.push(Bytes::from_static(b"\r\n"));
                Ok(())
            }
        }
    }

    /// Wire pieces for the body's end (trailers are sent only with chunked framing).
    pub fn end(&mut self, q: &mut Queue, trailers: Option<&HeaderMap>) -> Result<(), Error> {
        match self {
            Self::None => Ok(()),
            Self::Length(0) => Ok(()),
            Self::Length(_) => Err(Error::RequestLength),
            Self::Chunked => {
                match trailers {
                    Some(t) if !t.is_empty() => {
                        let mut out = Vec::with_capacity(64);
                        wire::last_chunk(&mut out, Some(t));
                        q.push(Bytes::from(out));
                    }
                    _ => q.push(Bytes::from_static(b"0\r\n\r\n")),
                }
                *self = Self::None;
                Ok(())
            }
        }
    }
}

/// Encodes the request line and headers, adding `content-length` or
/// `transfer-encoding: chunked` as the body needs, the way hyper's client did: an empty body
/// gets nothing added; a `content-length` already there is kept; a body of known size gets
/// one; a body of unknown size is chunked, except for GET, HEAD and CONNECT, which are sent
/// without one.
pub fn head(parts: &request::Parts, empty: bool, exact: Option<u64>) -> (Vec<u8>, Framing) {
    let h = &parts.headers;
    let framing = if empty {
        Framing::None
    } else if let Some(n) = h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse().ok()) {
        Framing::Length(n)
    } else if let Some(n) = exact {
        Framing::Length(n)
    } else if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) {
        Framing::None
    } else {
        Framing::Chunked
    };
    // An absolute-form target (rare) is formatted first so the head's size is known.
    let absolute;
    let target = match parts.uri.path_and_query() {
        Some(pq) if parts.uri.scheme().is_none() => pq.as_str().as_bytes(),
        _ => {
            absolute = parts.uri.to_string();
            absolute.as_bytes()
        }
    };
    let mut digits = [0; 20];
    let added: Option<(&[u8], &[u8])> = match framing {
        Framing::Length(n) if !h.contains_key(header::CONTENT_LENGTH) => {
            Some((b"content-length", wire::decimal(n, &mut digits)))
        }
        Framing::Chunked => Some((b"transfer-encoding", b"chunked")),
        _ => None,
    };
    let sent = |k: &header::HeaderName| k != header::TRANSFER_ENCODING;
    let line = |k: &[u8], v: &[u8]| k.len() + v.len() + 4;
    // Sized exactly: a `Bytes` made from a full vector needs no second allocation.
    let size = parts.method.as_str().len()
        + 1
        + target.len()
        + 11
        + h.iter().filter(|(k, _)| sent(k)).map(|(k, v)| line(k.as_str().as_bytes(), v.as_bytes())).sum::<usize>()
        + added.map_or(0, |(k, v)| line(k, v))
        + 2;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in h.iter().filter(|(k, _)| sent(k)) {
        wire::header_line(&mut out, k.as_str().as_bytes(), v.as_bytes());
    }
    if let Some((k, v)) = added {
        wire::header_line(&mut out, k, v);
    }
    out.extend_from_slice(b"\r\n");
    debug_assert_eq!(out.len(), size);
    (out, framing)
}

const QUEUE: usize = 8;

/// Wire pieces waiting to be written (empty slots cost nothing to copy or drop).
#[derive(Debug, Clone, Default)]
pub struct Queue {
    parts: [Option<Bytes>; QUEUE],
    start: usize,
    end: usize,
}

impl Queue {
    /// Adds a piece (merged into the last one when the queue is full).
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if self.end == QUEUE {
            let last = self.parts[QUEUE - 1].take().unwrap_or_default();
            let mut merged = BytesMut::with_capacity(last.len() + b.len());
            merged.extend_from_slice(&last);
            merged.extend_from_slice(&b);
            self.parts[QUEUE - 1] = Some(merged.freeze());
            return;
        }
        self.parts[self.end] = Some(b);
        self.end += 1;
    }

    /// Adds `other`'s pieces.
    pub fn append(&mut self, other: Queue) {
        for p in other.parts.into_iter().skip(other.start).take(other.end - other.start).flatten() {
            self.push(p);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Writes every queued piece, dropping each once written.
    pub fn poll_write<W: AsyncWrite + Unpin>(&mut self, w: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sent = 0;
        let polled = self.poll_write_from(w, cx, &mut sent);
        self.advance(sent);
        if let Poll::Ready(Ok(())) = polled {
            self.start = 0;
            self.end = 0;
        }
        polled
    }

    /// Writes the queued pieces from byte `sent` on, counting what is written in `sent`, and
    /// leaves the queue as it is (a request kept for a second try is written this way).
    pub fn poll_write_from<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        cx: &mut Context<'_>,
        sent: &mut usize,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut slices = [IoSlice::new(&[]); QUEUE];
            let mut n = 0;
            let mut skip = *sent;
            for p in self.parts[self.start..self.end].iter().flatten() {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                slices[n] = IoSlice::new(&p[skip..]);
                skip = 0;
                n += 1;
            }
            if n == 0 {
                return Pin::new(&mut *w).poll_flush(cx);
            }
            let written = if n > 1 && w.is_write_vectored() {
                ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n]))?
            } else {
                ready!(Pin::new(&mut *w).poll_write(cx, &slices[0]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += written;
        }
    }

    fn advance(&mut self, mut n: usize) {
        while self.start < self.end {
            let p = self.parts[self.start].get_or_insert_default();
            let k = n.min(p.len());
            p.advance(k);
            n -= k;
            if !p.is_empty() {
                break;
            }
            self.parts[self.start] = None;
            self.start += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn enc(req: Request<()>, empty: bool, exact: Option<u64>) -> (String, Framing) {
        let (parts, ()) = req.into_parts();
        let (h, f) = head(&parts, empty, exact);
        (String::from_utf8(h).unwrap(), f)
    }

    #[test]
    fn framing_like_hyper() {
        let get = || Request::get("/a?b").header("host", "h").body(()).unwrap();
        assert_eq!(enc(get(), true, Some(0)), ("GET /a?b HTTP/1.1\r\nhost: h\r\n\r\n".into(), Framing::None));
        assert_eq!(enc(get(), false, None).1, Framing::None);
        let post = || Request::post("/p").body(()).unwrap();
        assert_eq!(
            enc(post(), false, Some(3)),
            ("POST /p HTTP/1.1\r\ncontent-length: 3\r\n\r\n".into(), Framing::Length(3))
        );
        assert_eq!(
            enc(post(), false, None),
            ("POST /p HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".into(), Framing::Chunked)
        );
        let with_len = Request::post("/p").header("content-length", "5").body(()).unwrap();
        assert_eq!(
            enc(with_len, false, None),
            ("POST /p HTTP/1.1\r\ncontent-length: 5\r\n\r\n".into(), Framing::Length(5))
        );
        let empty_post = Request::post("/p").header("content-length", "0").body(()).unwrap();
        assert_eq!(enc(empty_post, true, Some(0)).0, "POST /p HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn chunks_and_trailers() {
        let mut q = Queue::default();
        let mut f = Framing::Chunked;
        f.data(&mut q, Bytes::from_static(b"0123456789abcdef0")).unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        f.end(&mut q, Some(&t)).unwrap();
        let all: Vec<u8> = q.parts[q.start..q.end].iter().flatten().flat_map(|b| b.to_vec()).collect();
        assert_eq!(all, b"11\r\n0123456789abcdef0\r\n0\r\nx-sum: 1\r\n\r\n");
        let mut f = Framing::Length(2);
        assert!(f.data(&mut q, Bytes::from_static(b"abc")).is_err());
        let mut f = Framing::Length(2);
        f.data(&mut q, Bytes::from_static(b"a")).unwrap();
        assert!(f.end(&mut q, None).is_err());
    }

    /// Takes at most 3 bytes a write, and is not ready every other time.
    #[derive(Default)]
    struct Trickle {
        got: Vec<u8>,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(3);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn kept_queue_is_written_whole_again_after_partial_writes() {
        let mut q = Queue::default();
        for p in ["GET / HTTP/1.1\r\n", "a", "", "host: h\r\n\r\n"] {
            q.push(Bytes::from_static(p.as_bytes()));
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..2 {
            let (mut w, mut sent) = (Trickle::default(), 0);
            while q.poll_write_from(&mut w, &mut cx, &mut sent).is_pending() {}
            assert_eq!(w.got, b"GET / HTTP/1.1\r\nahost: h\r\n\r\n");
            assert_eq!(sent, w.got.len());
        }
        // The consuming write empties the queue.
        let mut w = Trickle::default();
        while q.poll_write(&mut w, &mut cx).is_pending() {}
        assert_eq!(w.got, b"GET / HTTP/1.1\r\nahost: h\r\n\r\n");
        assert!(q.is_empty());
    }

    #[test]
    fn full_queue_merges() {
        let mut q = Queue::default();
        for i in 0..QUEUE + 3 {
            q.push(Bytes::from(vec![b'a' + i as u8]));
        }
        let all: Vec<u8> = q.parts[q.start..q.end].iter().flatten().flat_map(|b| b.to_vec()).collect();
        assert_eq!(all, b"abcdefghijk");
        q.advance(9);
        assert_eq!(q.parts[q.start].as_deref(), Some(&b"jk"[..]));
    }
}
