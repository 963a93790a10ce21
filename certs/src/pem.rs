//! PEM files: loading certificates and keys as rustls-pki-types values, and writing
//! certificate/key files atomically (private keys created with mode 0600).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{CertError, Result};

/// Reads every certificate from a PEM file (a leaf and its chain, or a trust bundle), in order.
///
/// Errors name the file: unreadable, malformed PEM, or no `CERTIFICATE` section at all.
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    parse_certs(&read_file(path)?, path)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) from a PEM file.
pub fn load_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>> {
    let path = path.as_ref();
    parse_key(&read_file(path)?, path)
}

/// Like [`load_certs`], for PEM already in memory (e.g. a trust bundle from the control plane).
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(pem, Path::new("<PEM input>"))
}

/// Like [`load_key`], for PEM already in memory.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    parse_key(pem, Path::new("<PEM input>"))
}

pub(crate) fn parse_certs(pem: &[u8], origin: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e, origin))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate { path: origin.to_path_buf() });
    }
    Ok(certs)
}

pub(crate) fn parse_key(pem: &[u8], origin: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => CertError::NoPrivateKey { path: origin.to_path_buf() },
        other => pem_error(other, origin),
    })
}

fn pem_error(e: pem::Error, origin: &Path) -> CertError {
    CertError::Pem { path: origin.to_path_buf(), reason: e.to_string() }
}

/// Encodes one DER certificate as a PEM `CERTIFICATE` block (64-column lines, trailing `\n`).
pub fn encode_cert_pem(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.chunks(64) {
        // The alphabet is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Reads a whole file, mapping the error to one that names it.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|err| CertError::Read { path: path.to_path_buf(), err })
}

/// Who may read a file written by [`write_atomically`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// 0644: certificates.
    Public,
    /// 0600, set when the file is created: private keys.
    Private,
}

/// [`write_atomically`], with an error that names the file.
pub(crate) fn write_file(path: &Path, contents: &[u8], access: Access) -> Result<()> {
    write_atomically(path, contents, access).map_err(|err| CertError::Write { path: path.to_path_buf(), err })
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, created
/// with the final permissions (never wider and narrowed later), synced, then renamed over
/// `path`. Readers (e.g. a proxy watching its cert files) never see a half-written file.
pub fn write_atomically(path: &Path, contents: &[u8], access: Access) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));

    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(match access {
            Access::Public => 0o644,
            Access::Private => 0o600,
        });
    }
    #[cfg(not(unix))]
    let _ = access;

    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and parents) if missing; a new directory gets mode 0700 when `private`.
pub(crate) fn ensure_dir(dir: &Path, private: bool) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(if private { 0o700 } else { 0o755 });
    }
    #[cfg(not(unix))]
    let _ = private;
    b.create(dir).map_err(|err| CertError::Write { path: dir.to_path_buf(), err })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_named() {
        let err = load_certs("/nonexistent/trellis/x.pem").expect_err("missing");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot read /nonexistent/trellis/x.pem:"), "{msg}");
        let err = load_key("/nonexistent/trellis/x.key").expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/trellis/x.key"));
    }

    #[test]
    fn empty_or_garbage_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("empty.pem");
        fs::write(&p, b"not pem at all\n").expect("write");
        let err = load_certs(&p).expect_err("no certs");
        assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"));
        let err = load_key(&p).expect_err("no key");
        assert!(matches!(err, CertError::NoPrivateKey { .. }), "{err}");

        fs::write(&p, b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").expect("write");
        let err = load_certs(&p).expect_err("bad base64");
        assert!(matches!(err, CertError::Pem { .. }), "{err}");
    }

    #[test]
    fn pem_encoding_round_trips() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 100, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = encode_cert_pem(&der);
            assert!(pem.lines().all(|l| l.len() <= 64));
            if len > 0 {
                let back = certs_from_pem(pem.as_bytes()).expect("parse");
                assert_eq!(back.len(), 1);
                assert_eq!(back[0].as_ref(), der.as_slice(), "len {len}");
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn private_write_is_0600_even_over_a_wider_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.key");
        fs::write(&p, b"old").expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_file(&p, b"new", Access::Private).expect("write");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&p).expect("read"), b"new");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
