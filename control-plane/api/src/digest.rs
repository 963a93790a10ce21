//! The digest of a resource body a proxy holds, for resuming a discovery stream
//! (`HeldResource.digest`): FNV-1a, 64-bit. Stable across builds and platforms, so a proxy
//! and any control plane agree on it; not a defence against someone crafting bodies (who
//! can write resources controls the mesh anyway).

/// FNV-1a 64 of `body`.
pub fn digest(body: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    body.bytes().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(digest(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(digest("foobar"), 0x8594_4171_f739_67e8);
    }
}
