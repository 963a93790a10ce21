//! HTTP/1.1 wire pieces shared by the in-task server (`http::h1`) and the in-task upstream
//! client (`upstream::h1`): header lines, decimal and chunk-size numbers, the last chunk
//! with its trailers, and the comma-separated tokens of a header value.

use http::header::{self, HeaderMap, HeaderName};

/// Appends `name: value\r\n`.
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written into `buf` (no allocation).
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends the size line of a chunk of `len` bytes (its data and CRLF follow).
pub fn chunk_size_line(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk with `trailers`, leaving out fields that may not be trailers
/// (RFC 9110 §6.5.1), as hyper does.
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if valid_trailer(name) {
            header_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn valid_trailer(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

/// The non-empty, trimmed tokens of a comma-separated header value.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chunks_and_trailers() {
        let mut out = Vec::new();
        chunk_size_line(&mut out, 0x1a2);
        chunk_size_line(&mut out, 5);
        assert_eq!(out, b"1a2\r\n5\r\n");
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t.insert("content-length", http::HeaderValue::from_static("9"));
        let mut out = Vec::new();
        last_chunk(&mut out, Some(&t));
        assert_eq!(out, b"0\r\ngrpc-status: 0\r\n\r\n");
        out.clear();
        last_chunk(&mut out, None);
        assert_eq!(out, b"0\r\n\r\n");
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(decimal(18_446_744_073_709_551_615, &mut [0; 20]), b"18446744073709551615");
    }

    #[test]
    fn header_tokens() {
        assert_eq!(tokens(b" keep-alive ,, Close").collect::<Vec<_>>(), [&b"keep-alive"[..], b"Close"]);
        assert!(has_token(b"keep-alive, close", b"CLOSE"));
        assert!(!has_token(b"closed", b"close"));
    }
}
