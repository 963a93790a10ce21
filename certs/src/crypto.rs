//! The two primitives this crate needs beyond rcgen: SHA-256 (fingerprints) and secure random
//! bytes (serial numbers), both taken from rustls's `ring` provider (the mesh's only one).

use rustls::crypto::ring as provider;

use crate::error::{CertError, Result};

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    // TLS13_AES_128_GCM_SHA256 is always a TLS 1.3 suite whose hash is SHA-256.
    let suite =
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13().expect("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite");
    suite.common.hash_provider.hash(data).as_ref().to_vec()
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A fresh random certificate serial number: 16 bytes (128 bits, 127 of them random),
/// positive, as RFC 5280 asks (unique per CA, at most 20 octets).
pub(crate) fn random_serial() -> Result<rcgen::SerialNumber> {
    let mut buf = [0u8; 16];
    provider::default_provider().secure_random.fill(&mut buf).map_err(|_| CertError::Random)?;
    buf[0] &= 0x7f;
    // Never zero, and never with a leading zero octet that DER would have to strip.
    buf[0] |= 0x40;
    Ok(rcgen::SerialNumber::from_slice(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn serials_differ() {
        let a = random_serial().expect("rng").to_bytes();
        let b = random_serial().expect("rng").to_bytes();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
    }
}
