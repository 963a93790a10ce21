//! Protocol detection on a transparent connection, from its first bytes (peeked, so they
//! stay in the socket): the h2 preface, an HTTP/1.x request line, or anything else, which is
//! carried as opaque TCP. A client that sends nothing (a server-first protocol: SMTP, MySQL,
//! …) is opaque once the timeout passes, so its server's greeting gets through.

use crate::detect::Protocol;
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes looked at: a request line longer than this that still looks like HTTP is HTTP.
const PEEK: usize = 1024;
/// Longest method name taken for HTTP.
const MAX_METHOD: usize = 24;

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Http(Protocol),
    Opaque,
}

/// Peeks until the protocol is known, or `timeout` passes (opaque). A client that closes
/// without sending is opaque too: its half-close is passed on.
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> io::Result<Sniffed> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; PEEK];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Sniffed::Opaque),
        };
        if n == 0 {
            return Ok(Sniffed::Opaque);
        }
        if let Some(s) = classify(&buf[..n]) {
            return Ok(s);
        }
        // A request line cut between segments (rare): wait for the rest.
        if Instant::now() >= deadline {
            return Ok(Sniffed::Opaque);
        }
        tokio::time::sleep(pause.min(deadline - Instant::now())).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Decides from the first bytes, or `None` when they could still become either.
pub fn classify(b: &[u8]) -> Option<Sniffed> {
    if b.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(b) {
        return None;
    }
    if b.starts_with(H2_PREFACE) {
        return Some(Sniffed::Http(Protocol::Http2));
    }
    // METHOD SP request-target SP HTTP/1.x CRLF
    let method = b.iter().take_while(|c| is_tchar(**c)).count();
    match b.get(method) {
        None if method <= MAX_METHOD => return None,
        Some(b' ') if (1..=MAX_METHOD).contains(&method) => {}
        _ => return Some(Sniffed::Opaque),
    }
    let rest = &b[method + 1..];
    let target = rest.iter().take_while(|c| c.is_ascii_graphic()).count();
    match rest.get(target) {
        // Still in the target: a long one is HTTP as far as can be seen.
        None if b.len() >= PEEK => return Some(Sniffed::Http(Protocol::Http1)),
        None => return None,
        Some(b' ') if target > 0 => {}
        _ => return Some(Sniffed::Opaque),
    }
    let version = &rest[target + 1..];
    const V: &[u8] = b"HTTP/1.";
    let n = version.len().min(V.len());
    if version[..n] != V[..n] {
        return Some(Sniffed::Opaque);
    }
    match version.get(V.len()) {
        None => None,
        Some(d) if !d.is_ascii_digit() => Some(Sniffed::Opaque),
        Some(_) => match version.get(V.len() + 1) {
            None => None,
            Some(b'\r' | b'\n') => Some(Sniffed::Http(Protocol::Http1)),
            Some(_) => Some(Sniffed::Opaque),
        },
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    const H1: Option<Sniffed> = Some(Sniffed::Http(Protocol::Http1));
    const H2: Option<Sniffed> = Some(Sniffed::Http(Protocol::Http2));
    const OPAQUE: Option<Sniffed> = Some(Sniffed::Opaque);

    #[test]
    fn http_is_told_from_other_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), H1);
        assert_eq!(classify(b"POST /api?x=1 HTTP/1.0\r\n"), H1);
        assert_eq!(classify(H2_PREFACE), H2);
        // Prefixes of either: wait.
        for partial in [&b"G"[..], b"GET", b"GET /", b"GET /a HTT", b"GET /a HTTP/1.", b"GET /a HTTP/1.1", b"PRI * HT"]
        {
            assert_eq!(classify(partial), None, "{}", String::from_utf8_lossy(partial));
        }
        // Not HTTP: opaque at once.
        for other in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"EHLO mail.example.com\r\n",
            b"ping\n",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.x\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        ] {
            assert_eq!(classify(other), OPAQUE, "{}", String::from_utf8_lossy(other));
        }
        // A request line too long to see the end of is taken as HTTP.
        let mut long = b"GET /".to_vec();
        long.resize(PEEK, b'a');
        assert_eq!(classify(&long), H1);
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = l.accept().await.expect("accept");
        let started = std::time::Instant::now();
        assert_eq!(sniff(&server, Duration::from_millis(100)).await.expect("sniff"), Sniffed::Opaque);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
