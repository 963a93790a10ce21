//! The Trellis root CA: an ECDSA P-256 key and a self-signed certificate
//! (CN "Trellis Root CA 1a2b3c4d", the suffix unique per CA), kept as `DIR/ca.pem` and
//! `DIR/ca.key` (mode 0600).
//!
//! Issuing leaves from a [`Ca`] lives in [`crate::issue`].

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::crypto::{hex, random_serial};
use crate::error::{CertError, Result};
use crate::pem::{Access, encode_cert_pem, ensure_dir, parse_certs, read_file, write_file};

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// Common name of a root CA certificate, before its unique suffix. Each root's name is
/// unique so that a certificate from another Trellis CA has no candidate issuer in a trust
/// bundle (`unknown_issuer`), instead of one whose signature fails, and so that old and new
/// roots can be told apart during a rotation.
pub const CA_COMMON_NAME: &str = "Trellis Root CA";
/// How long a new root CA is valid: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far in the past a new certificate's not-before is set, to absorb clock skew.
pub(crate) const BACKDATE: Duration = Duration::from_secs(60);

/// A root CA that can issue workload certificates ([`Ca::issue`], [`Ca::sign_csr`]).
///
/// `Debug` never shows the private key.
pub struct Ca {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) cert_der: CertificateDer<'static>,
    pub(crate) cert_pem: String,
    pub(crate) not_after: OffsetDateTime,
}

impl Ca {
    /// Makes a new root CA in memory (nothing is written). See [`Ca::init`] for the files.
    pub fn generate() -> Result<Ca> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let serial = random_serial()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trellis");
        dn.push(DnType::CommonName, format!("{CA_COMMON_NAME} {}", hex(&serial.as_ref()[..4])));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial);
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();
        Ok(Ca {
            cert_pem: encode_cert_pem(&cert_der),
            cert_der,
            not_after: truncate_secs(params.not_after),
            issuer: Issuer::new(params, key),
        })
    }

    /// Makes a new root CA and writes `DIR/ca.pem` and `DIR/ca.key` (created with mode 0600;
    /// a new `DIR` is created with mode 0700).
    ///
    /// Refuses with [`CertError::CaExists`] when either file exists, unless `force`.
    pub fn init(dir: impl AsRef<Path>, force: bool) -> Result<Ca> {
        let dir = dir.as_ref();
        if !force {
            for path in [Self::cert_path(dir), Self::key_path(dir)] {
                if path.exists() {
                    return Err(CertError::CaExists { path });
                }
            }
        }
        let ca = Self::generate()?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// Writes this CA to `DIR/ca.key` (0600) and `DIR/ca.pem`, replacing existing files
    /// atomically. [`Ca::init`] is the careful front door; this one does not check.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        ensure_dir(dir, true)?;
        write_file(&Self::key_path(dir), self.key_pem().as_bytes(), Access::Private)?;
        write_file(&Self::cert_path(dir), self.cert_pem.as_bytes(), Access::Public)
    }

    /// Reads the CA back from `DIR/ca.pem` and `DIR/ca.key`.
    ///
    /// Errors: [`CertError::CaMissing`] when a file (or `DIR`) does not exist,
    /// [`CertError::Read`] when one cannot be read, [`CertError::CaKeyMismatch`] when the key is
    /// not the certificate's, [`CertError::NotACa`] when the certificate is not a CA.
    pub fn load(dir: impl AsRef<Path>) -> Result<Ca> {
        let dir = dir.as_ref();
        let cert_path = Self::cert_path(dir);
        let key_path = Self::key_path(dir);
        let read = |path: &Path| {
            read_file(path).map_err(|e| match e {
                CertError::Read { err, .. } if err.kind() == ErrorKind::NotFound => {
                    CertError::CaMissing { dir: dir.to_path_buf(), path: path.to_path_buf() }
                }
                other => other,
            })
        };
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        Self::from_parts(&cert_pem, &key_pem, &cert_path, &key_path)
    }

    /// Builds a CA from PEM text held elsewhere (e.g. a control plane's store).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        Self::from_parts(
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            Path::new("<CA certificate PEM>"),
            Path::new("<CA key PEM>"),
        )
    }

    fn from_parts(cert_pem: &[u8], key_pem: &[u8], cert_src: &Path, key_src: &Path) -> Result<Ca> {
        let cert_der = parse_certs(cert_pem, cert_src)?.swap_remove(0);
        let bad_cert = |reason: String| CertError::BadCertificate { path: cert_src.to_path_buf(), reason };
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| bad_cert(e.to_string()))?;
        if !x509.is_ca() {
            return Err(CertError::NotACa { path: cert_src.to_path_buf() });
        }
        let not_after = OffsetDateTime::from_unix_timestamp(x509.validity().not_after.timestamp())
            .map_err(|e| bad_cert(format!("not-after out of range: {e}")))?;

        let bad_key = |reason: String| CertError::BadKey { path: key_src.to_path_buf(), reason };
        let key_text = std::str::from_utf8(key_pem).map_err(|_| bad_key("not UTF-8 text".into()))?;
        let key = KeyPair::from_pem(key_text).map_err(|e| bad_key(e.to_string()))?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(CertError::CaKeyMismatch { cert: cert_src.to_path_buf(), key: key_src.to_path_buf() });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(Ca { cert_pem: encode_cert_pem(&cert_der), cert_der, not_after, issuer })
    }

    /// `DIR/ca.pem`.
    pub fn cert_path(dir: impl AsRef<Path>) -> PathBuf {
        dir.as_ref().join(CA_CERT_FILE)
    }

    /// `DIR/ca.key`.
    pub fn key_path(dir: impl AsRef<Path>) -> PathBuf {
        dir.as_ref().join(CA_KEY_FILE)
    }

    /// The CA certificate as PEM (what proxies use as their trust bundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key as PKCS#8 PEM. Secret: store it only with mode 0600 or equivalent.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// When the CA certificate expires; issued leaves never outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after.into()
    }

    /// The CA certificate's common name, e.g. `Trellis Root CA 1a2b3c4d`.
    pub fn common_name(&self) -> String {
        x509_parser::parse_x509_certificate(&self.cert_der)
            .ok()
            .and_then(|(_, c)| c.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok().map(str::to_owned)))
            .unwrap_or_else(|| CA_COMMON_NAME.to_owned())
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("issuer", &self.issuer).field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

/// Drops sub-second precision: X.509 times have whole seconds.
pub(crate) fn truncate_secs(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("nested/ca");
        let ca = Ca::init(&ca_dir, false).expect("init");
        let loaded = Ca::load(&ca_dir).expect("load");
        assert_eq!(ca.cert_der(), loaded.cert_der());
        assert_eq!(ca.cert_pem(), loaded.cert_pem());
        assert_eq!(ca.not_after(), loaded.not_after());
        assert_eq!(std::fs::read_to_string(Ca::cert_path(&ca_dir)).expect("read"), ca.cert_pem());
        let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse");
        assert!(x509.is_ca());
        let subject = x509.subject().to_string();
        assert_eq!(subject, format!("O=Trellis, CN={}", ca.common_name()));
        assert!(subject.starts_with(&format!("O=Trellis, CN={CA_COMMON_NAME} ")), "{subject}");
        let other = Ca::generate().expect("another CA");
        let (_, other) = x509_parser::parse_x509_certificate(other.cert_der()).expect("parse");
        assert_ne!(other.subject().to_string(), subject, "every root's name is its own");
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: PathBuf| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode(Ca::key_path(&ca_dir)), 0o600);
            assert_eq!(mode(ca_dir.clone()), 0o700);
        }
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Ca::init(dir.path(), false).expect("init");
        let err = Ca::init(dir.path(), false).expect_err("exists");
        assert!(matches!(err, CertError::CaExists { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        // Untouched after the refusal.
        assert_eq!(Ca::load(dir.path()).expect("load").cert_der(), first.cert_der());
        let second = Ca::init(dir.path(), true).expect("forced");
        assert_ne!(second.cert_der(), first.cert_der());
        assert_eq!(Ca::load(dir.path()).expect("load").cert_der(), second.cert_der());
    }

    #[test]
    fn missing_ca_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-dir");
        let err = Ca::load(&missing).expect_err("missing");
        assert!(matches!(err, CertError::CaMissing { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("no-such-dir/ca.pem"), "{msg}");
        assert!(msg.contains("trellis certs init"), "{msg}");

        // Only the key is missing.
        let ca = Ca::generate().expect("generate");
        std::fs::write(Ca::cert_path(dir.path()), ca.cert_pem()).expect("write");
        let err = Ca::load(dir.path()).expect_err("no key");
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn mismatched_or_bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Ca::generate().expect("a");
        let b = Ca::generate().expect("b");
        std::fs::write(Ca::cert_path(dir.path()), a.cert_pem()).expect("write");
        std::fs::write(Ca::key_path(dir.path()), b.key_pem()).expect("write");
        let err = Ca::load(dir.path()).expect_err("mismatch");
        assert!(matches!(err, CertError::CaKeyMismatch { .. }), "{err}");

        std::fs::write(Ca::key_path(dir.path()), "garbage").expect("write");
        let err = Ca::load(dir.path()).expect_err("bad key");
        assert!(matches!(err, CertError::BadKey { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");

        std::fs::write(Ca::cert_path(dir.path()), "garbage").expect("write");
        let err = Ca::load(dir.path()).expect_err("bad cert");
        assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn leaf_is_not_accepted_as_ca() {
        let ca = Ca::generate().expect("ca");
        let id = crate::SpiffeId::parse("spiffe://td/a").expect("id");
        let leaf = ca.issue(&id, Duration::from_secs(60), &[]).expect("issue");
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).expect_err("not a CA");
        assert!(matches!(err, CertError::NotACa { .. }), "{err}");
    }

    #[test]
    fn from_pem_round_trip() {
        let ca = Ca::generate().expect("ca");
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).expect("from_pem");
        assert_eq!(again.cert_der(), ca.cert_der());
    }
}
