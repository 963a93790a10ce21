//! Protocol sniffing on a fresh connection: an HTTP/2 client with prior knowledge opens
//! with the 24-byte preface; anything else is treated as HTTP/1.x. Bytes that start like
//! the preface (`PRI * HTTP/2.0`) but do not finish it are HTTP/2 too, so they get
//! HTTP/2's answer to a bad preface (GOAWAY) rather than an HTTP/1.1 400. Peeking leaves
//! the bytes in the socket for the HTTP server to read.

use std::io;
use std::task::Poll;
use std::time::Duration;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The request line HTTP/2's preface starts with: no HTTP/1.x request looks like it.
const H2_PRI: &[u8] = H2_PREFACE.split_at(14).0;

/// What the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Peeks until the protocol is known. `Ok(None)` when the client closed or sent nothing
/// before `timeout`. Its state is most of what a connection that has sent nothing costs,
/// so it holds one timer and polls the socket directly (no peek future, whose wait-list
/// entry would sit beside it).
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> io::Result<Option<Protocol>> {
    let mut deadline = std::pin::pin!(tokio::time::sleep(timeout));
    loop {
        let mut buf = [0u8; 24];
        let peeked = std::future::poll_fn(|cx| {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(0));
            }
            stream.poll_peek(cx, &mut ReadBuf::new(&mut buf))
        })
        .await?;
        if peeked == 0 {
            return Ok(None);
        }
        match classify(&buf[..peeked]) {
            Some(p) => return Ok(Some(p)),
            // A prefix of the preface: wait for more bytes (rare: clients send it whole;
            // boxed, so the usual state holds one timer).
            None if !deadline.is_elapsed() => Box::pin(tokio::time::sleep(Duration::from_millis(1))).await,
            None => return Ok(None),
        }
    }
}

/// Decides from the first bytes, or `None` if they are a strict prefix of the h2 preface's
/// request line.
pub fn classify(first: &[u8]) -> Option<Protocol> {
    if first.starts_with(H2_PRI) {
        Some(Protocol::Http2)
    } else if H2_PRI.starts_with(first) {
        None
    } else {
        Some(Protocol::Http1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"POST"), Some(Protocol::Http1));
        // Not the preface, but HTTP/2's to refuse.
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n\r\n"), Some(Protocol::Http1));
    }
}
