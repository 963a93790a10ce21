//! W3C trace context (`traceparent`, https://www.w3.org/TR/trace-context/): reading the
//! incoming one and writing the one sent upstream.

use http::HeaderValue;

/// What a valid `traceparent` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>` (a later version may append fields). All-zero ids
/// and malformed values are `None`: the request then starts a new trace.
pub fn parse(v: &HeaderValue) -> Option<Parent> {
    let b = v.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = hex(&b[0..2])? as u8;
    // Version ff is invalid; version 00 is exactly 55 bytes; later ones continue with '-'.
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = hex(&b[3..35])?;
    let span_id = hex(&b[36..52])? as u64;
    let flags = hex(&b[53..55])? as u8;
    (trace_id != 0 && span_id != 0).then_some(Parent { trace_id, span_id, sampled: flags & 1 == 1 })
}

/// Lower-case hex only (the spec's), up to 32 digits.
fn hex(s: &[u8]) -> Option<u128> {
    s.iter().try_fold(0u128, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(d))
    })
}

/// `00-<trace>-<span>-<flags>`.
/// Made by hand, not with `format!`: every request that is not sampled gets one, and the
/// formatting machinery cost ~900 instructions of the ~1,300 tracing added per request.
pub fn format(trace_id: u128, span_id: u64, sampled: bool) -> HeaderValue {
    crate::http::headers::unique_value(write(trace_id, span_id, sampled).to_vec())
}

/// [`format`]'s text, unallocated.
pub fn write(trace_id: u128, span_id: u64, sampled: bool) -> [u8; 55] {
    use crate::http::headers::hex_into;
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    hex_into(&mut out[3..35], trace_id);
    hex_into(&mut out[36..52], u128::from(span_id));
    out[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_formats_and_refuses_the_invalid() {
        let v = format(0xabc, 0x12, true);
        assert_eq!(v.to_str().ok(), Some("00-00000000000000000000000000000abc-0000000000000012-01"));
        assert_eq!(parse(&v), Some(Parent { trace_id: 0xabc, span_id: 0x12, sampled: true }));
        assert!(!parse(&format(1, 2, false)).expect("valid").sampled);
        let bad = |s: &'static str| parse(&HeaderValue::from_static(s));
        assert_eq!(bad("00-00000000000000000000000000000000-0000000000000012-01"), None, "zero trace id");
        assert_eq!(bad("00-00000000000000000000000000000abc-0000000000000000-01"), None, "zero span id");
        assert_eq!(bad("00-00000000000000000000000000000ABC-0000000000000012-01"), None, "upper case");
        assert_eq!(bad("ff-00000000000000000000000000000abc-0000000000000012-01"), None, "version ff");
        assert_eq!(bad("00-00000000000000000000000000000abc-0000000000000012-01-x"), None, "00 with more");
        assert!(bad("01-00000000000000000000000000000abc-0000000000000012-01-later").is_some(), "a later version");
        assert_eq!(bad("garbage"), None);
    }
}
