//! Service-account JWTs for workload-identity tests: signing keys made here ("the
//! cluster's"), their JWKS, and tokens shaped like the kubelet's projected ones.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::time::{SystemTime, UNIX_EPOCH};

/// The audience the control plane requires of a workload's token.
pub const AUDIENCE: &str = "trellis";

/// A signing key of "the cluster", with its public JWK.
pub struct Signer {
    pub key: EncodingKey,
    pub alg: Algorithm,
    pub kid: String,
    pub jwk: Jwk,
}

impl Signer {
    pub fn new(pem: &str, alg: Algorithm, kid: &str) -> Signer {
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        Signer { key, alg, kid: kid.into(), jwk }
    }

    /// A P-256 key made by our certs crate.
    pub fn ec(kid: &str) -> Signer {
        let id = trellis_certs::SpiffeId::parse("spiffe://trellis.local/ns/x/sa/y").unwrap();
        Signer::new(&trellis_certs::new_csr(&id).unwrap().key_pem, Algorithm::ES256, kid)
    }

    /// A 2048-bit RSA key made by openssl.
    pub fn rsa(kid: &str) -> Signer {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .expect("openssl (apt: openssl) makes the RSA key");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Signer::new(&String::from_utf8(out.stdout).unwrap(), Algorithm::RS256, kid)
    }

    /// A service-account token like the kubelet's projected one.
    pub fn token(&self, ns: &str, sa: &str, aud: &str, exp_in: i64) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let claims = serde_json::json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "aud": [aud],
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + exp_in,
            "kubernetes.io": { "namespace": ns, "serviceaccount": { "name": sa, "uid": "6b1d2f0c" } },
        });
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// The JWKS (public keys) of `signers`, as the API server's `/openid/v1/jwks` serves it.
pub fn jwks(signers: &[&Signer]) -> String {
    serde_json::to_string(&JwkSet { keys: signers.iter().map(|s| s.jwk.clone()).collect() }).unwrap()
}
