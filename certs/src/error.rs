//! The one error type of this crate. Every message names the file, directory or identity
//! it is about, so a CLI can print it as is.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout `trellis-certs`.
pub type Result<T, E = CertError> = std::result::Result<T, E>;

/// Everything that can go wrong while making, loading, signing or inspecting certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A string is not a valid SPIFFE ID.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The rejected input (cut to a readable length).
        id: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A DNS name or IP address for a certificate's SAN is not acceptable.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidDnsName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A file could not be read.
    #[error("cannot read {}: {err}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error (already part of the message, so not a `source()`).
        err: io::Error,
    },

    /// A file or directory could not be written.
    #[error("cannot write {}: {err}", .path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error (already part of the message, so not a `source()`).
        err: io::Error,
    },

    /// `Ca::init` found an existing CA and was not told to overwrite it.
    #[error(
        "a CA already exists at {} (refusing to overwrite it: every certificate it issued would stop being trusted; pass --force to replace it)",
        .path.display()
    )]
    CaExists {
        /// The existing `ca.pem` or `ca.key`.
        path: PathBuf,
    },

    /// `Ca::load` found no CA file in the directory.
    #[error("no CA in {}: {} does not exist (create one with `trellis certs init --dir {}`)",
        .dir.display(), .path.display(), .dir.display())]
    CaMissing {
        /// The CA directory.
        dir: PathBuf,
        /// The missing file (`ca.pem` or `ca.key`).
        path: PathBuf,
    },

    /// The CA private key does not belong to the CA certificate.
    #[error("CA key {} does not match CA certificate {}", .key.display(), .cert.display())]
    CaKeyMismatch {
        /// The certificate file (or a description of the in-memory source).
        cert: PathBuf,
        /// The key file (or a description of the in-memory source).
        key: PathBuf,
    },

    /// A certificate that should be a CA is not one.
    #[error("{}: certificate is not a CA (basicConstraints CA:TRUE missing)", .path.display())]
    NotACa {
        /// Where the certificate came from.
        path: PathBuf,
    },

    /// A PEM source held no certificate.
    #[error("{}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") found", .path.display())]
    NoCertificate {
        /// Where the PEM came from.
        path: PathBuf,
    },

    /// A PEM source held no private key.
    #[error("{}: no PEM private key found (expected PKCS#8, SEC1 or PKCS#1)", .path.display())]
    NoPrivateKey {
        /// Where the PEM came from.
        path: PathBuf,
    },

    /// PEM text is malformed.
    #[error("{}: invalid PEM: {reason}", .path.display())]
    Pem {
        /// Where the PEM came from.
        path: PathBuf,
        /// What the PEM decoder reported.
        reason: String,
    },

    /// A certificate's DER could not be parsed.
    #[error("{}: invalid certificate: {reason}", .path.display())]
    BadCertificate {
        /// Where the certificate came from.
        path: PathBuf,
        /// What the X.509 parser reported.
        reason: String,
    },

    /// A private key could not be used.
    #[error("{}: unusable private key: {reason}", .path.display())]
    BadKey {
        /// Where the key came from.
        path: PathBuf,
        /// What the key parser reported.
        reason: String,
    },

    /// A certificate signing request was rejected.
    #[error("invalid CSR: {0}")]
    Csr(String),

    /// A requested validity period is not possible.
    #[error("invalid validity: {0}")]
    Validity(String),

    /// Key generation, signing or encoding failed inside rcgen.
    #[error("certificate generation failed: {0}")]
    Generate(rcgen::Error),

    /// The system random generator failed.
    #[error("system random number generator failed")]
    Random,
}

// Not `#[from]`: that would also make it the `source()`, and printers that walk the chain
// (anyhow's `{:#}`) would show the rcgen message twice.
impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Generate(e)
    }
}
