//! Reading certificates back: [`inspect`] for people (`trellis certs inspect`) and
//! [`leaf_spiffe_id`] for the proxy's TLS code (a peer's identity from its DER leaf).

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::crypto::{hex, sha256};
use crate::error::{CertError, Result};
use crate::pem::{parse_certs, read_file};
use crate::spiffe::SpiffeId;

/// What a certificate says, in plain values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `O=Trellis, CN=spiffe://…`.
    pub subject: String,
    /// Issuer distinguished name, e.g. `O=Trellis, CN=Trellis Root CA`.
    pub issuer: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// The SPIFFE ID, when the certificate has exactly one URI SAN and it is a valid one.
    pub spiffe_id: Option<SpiffeId>,
    /// Every URI SAN as written (normally just the SPIFFE ID).
    pub uris: Vec<String>,
    /// DNS-name SANs.
    pub dns_names: Vec<String>,
    /// IP-address SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// Whether basicConstraints says CA:TRUE.
    pub is_ca: bool,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER certificate, lowercase hex (64 characters).
    pub sha256: String,
}

impl CertInfo {
    /// Whether the certificate is within its validity at Unix time `unix_secs`.
    pub fn is_valid_at(&self, unix_secs: i64) -> bool {
        self.not_before <= unix_secs && unix_secs <= self.not_after
    }
}

/// Reads the first certificate of PEM text (e.g. the leaf of a `PREFIX.pem`).
pub fn inspect(pem: &[u8]) -> Result<CertInfo> {
    let origin = Path::new("<PEM input>");
    let certs = parse_certs(pem, origin)?;
    info_from_der(&certs[0], origin)
}

/// Reads every certificate of PEM text, in order (leaf first for a chain file).
pub fn inspect_chain(pem: &[u8]) -> Result<Vec<CertInfo>> {
    let origin = Path::new("<PEM input>");
    parse_certs(pem, origin)?.iter().map(|der| info_from_der(der, origin)).collect()
}

/// Reads every certificate of a PEM file; errors name the file.
pub fn inspect_file(path: impl AsRef<Path>) -> Result<Vec<CertInfo>> {
    let path = path.as_ref();
    parse_certs(&read_file(path)?, path)?.iter().map(|der| info_from_der(der, path)).collect()
}

/// Reads one DER certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo> {
    info_from_der(der, Path::new("<DER input>"))
}

fn info_from_der(der: &[u8], origin: &Path) -> Result<CertInfo> {
    let x509 = parse_der(der).map_err(|reason| CertError::BadCertificate { path: origin.to_path_buf(), reason })?;
    let mut info = CertInfo {
        subject: x509.subject().to_string(),
        issuer: x509.issuer().to_string(),
        serial: x509.raw_serial_as_string(),
        spiffe_id: None,
        uris: Vec::new(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        is_ca: x509.is_ca(),
        not_before: x509.validity().not_before.timestamp(),
        not_after: x509.validity().not_after.timestamp(),
        sha256: hex(&sha256(der)),
    };
    for name in san_names(&x509) {
        match name {
            GeneralName::URI(uri) => info.uris.push((*uri).to_owned()),
            GeneralName::DNSName(dns) => info.dns_names.push((*dns).to_owned()),
            GeneralName::IPAddress(octets) => {
                if let Some(ip) = ip_from_octets(octets) {
                    info.ip_addresses.push(ip);
                }
            }
            _ => {}
        }
    }
    info.spiffe_id = single_spiffe_id(info.uris.iter().map(String::as_str));
    Ok(info)
}

/// The SPIFFE ID of a DER certificate (e.g. a TLS peer's leaf), or `None` when it cannot be
/// parsed or does not have exactly one URI SAN holding a valid SPIFFE ID (an X.509-SVID has
/// exactly one). It does not verify the chain or the validity dates: that is the TLS
/// verifier's job, done before this.
pub fn leaf_spiffe_id(der: &[u8]) -> Option<SpiffeId> {
    let x509 = parse_der(der).ok()?;
    single_spiffe_id(san_names(&x509).iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    }))
}

fn parse_der(der: &[u8]) -> std::result::Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((rest, _)) if !rest.is_empty() => Err(format!("{} trailing bytes after the certificate", rest.len())),
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(e.to_string()),
    }
}

fn san_names<'a>(x509: &'a X509Certificate<'_>) -> Vec<&'a GeneralName<'a>> {
    match x509.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().collect(),
        _ => Vec::new(),
    }
}

fn single_spiffe_id<'a>(mut uris: impl Iterator<Item = &'a str>) -> Option<SpiffeId> {
    let first = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    SpiffeId::parse(first).ok()
}

fn ip_from_octets(octets: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(octets) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(octets).ok().map(IpAddr::from)
}

/// Formats Unix seconds as RFC 3339 UTC, e.g. `2025-06-01T12:00:00Z` (how `CertInfo`
/// shows times).
pub fn format_unix_time(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("@{secs}"),
    }
}

/// A rough human span: `3d 4h`, `5h 12m`, `42m`, `17s`.
fn format_span(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = unix_now();
        let list = |v: &[String]| {
            if v.is_empty() { "-".to_owned() } else { v.join(", ") }
        };
        writeln!(f, "subject:     {}", self.subject)?;
        match (&self.spiffe_id, self.uris.as_slice()) {
            (Some(id), _) => writeln!(f, "spiffe id:   {id}")?,
            (None, []) => writeln!(f, "spiffe id:   -")?,
            (None, uris) => writeln!(f, "spiffe id:   - (URI SANs that are not one SPIFFE ID: {})", uris.join(", "))?,
        }
        writeln!(f, "dns names:   {}", list(&self.dns_names))?;
        if !self.ip_addresses.is_empty() {
            let ips: Vec<String> = self.ip_addresses.iter().map(IpAddr::to_string).collect();
            writeln!(f, "ip addrs:    {}", ips.join(", "))?;
        }
        writeln!(f, "issuer:      {}", self.issuer)?;
        writeln!(f, "serial:      {}", self.serial)?;
        writeln!(f, "is ca:       {}", if self.is_ca { "yes" } else { "no" })?;
        writeln!(f, "not before:  {}", format_unix_time(self.not_before))?;
        let status = if now > self.not_after {
            format!("EXPIRED {} ago", format_span(now.abs_diff(self.not_after)))
        } else if now < self.not_before {
            format!("NOT YET VALID, starts in {}", format_span(now.abs_diff(self.not_before)))
        } else {
            format!("valid, expires in {}", format_span(now.abs_diff(self.not_after)))
        };
        writeln!(f, "not after:   {} ({status})", format_unix_time(self.not_after))?;
        write!(f, "sha256:      {}", self.sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(format_unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_time(1_748_779_200), "2025-06-01T12:00:00Z");
        assert_eq!(format_span(17), "17s");
        assert_eq!(format_span(42 * 60 + 5), "42m");
        assert_eq!(format_span(5 * 3600 + 12 * 60), "5h 12m");
        assert_eq!(format_span(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
    }

    #[test]
    fn garbage_der_is_an_error_not_a_panic() {
        assert!(inspect_der(b"\x30\x03\x02\x01").is_err());
        assert!(leaf_spiffe_id(b"").is_none());
        assert!(leaf_spiffe_id(b"not a certificate").is_none());
    }

    #[test]
    fn ip_octets() {
        assert_eq!(ip_from_octets(&[127, 0, 0, 1]), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(ip_from_octets(&[0; 16]), Some(IpAddr::from([0u8; 16])));
        assert_eq!(ip_from_octets(&[1, 2, 3]), None);
    }
}
