//! Issuing workload certificates (X.509-SVIDs) from a [`Ca`]: new key pairs
//! ([`Ca::issue`]) or signed CSRs ([`Ca::sign_csr`]), and making CSRs ([`new_csr`]).
//!
//! Every leaf has exactly one URI SAN (its SPIFFE ID), optional DNS/IP SANs,
//! basicConstraints CA:FALSE, keyUsage digitalSignature, extendedKeyUsage
//! serverAuth + clientAuth, a random 128-bit serial and an authority key identifier.
//! Its not-before is a minute in the past (clock skew) and it never outlives the CA.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, string::Ia5String,
};
use time::OffsetDateTime;

use crate::ca::{BACKDATE, Ca, truncate_secs};
use crate::crypto::random_serial;
use crate::error::{CertError, Result};
use crate::pem::{Access, ensure_dir, write_file};
use crate::spiffe::SpiffeId;

/// Longest common name X.509 allows (RFC 5280 ub-common-name); longer IDs get no CN.
const MAX_CN_LEN: usize = 64;

/// A freshly issued workload certificate and its private key.
#[derive(Clone)]
pub struct Issued {
    /// The identity in the certificate's URI SAN.
    pub spiffe_id: SpiffeId,
    /// The leaf certificate followed by the CA certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM. Secret.
    pub key_pem: String,
    /// When the leaf expires (whole seconds, as in the certificate).
    pub not_after: SystemTime,
}

/// The paths [`Issued::write`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedFiles {
    /// `PREFIX.pem`: leaf then chain.
    pub cert: PathBuf,
    /// `PREFIX.key`: the private key, mode 0600.
    pub key: PathBuf,
}

impl Issued {
    /// Writes `PREFIX.pem` (leaf then chain) and `PREFIX.key` (created with mode 0600), each
    /// atomically, creating `PREFIX`'s directory if needed. `PREFIX` is used as is:
    /// `certs/checkout` gives `certs/checkout.pem`, `certs/a.b` gives `certs/a.b.pem`.
    pub fn write(&self, prefix: impl AsRef<Path>) -> Result<IssuedFiles> {
        let files =
            IssuedFiles { cert: with_suffix(prefix.as_ref(), ".pem"), key: with_suffix(prefix.as_ref(), ".key") };
        if let Some(dir) = files.cert.parent() {
            ensure_dir(dir, false)?;
        }
        // Key first: a watcher that reloads on the cert change then finds the matching key.
        write_file(&files.key, self.key_pem.as_bytes(), Access::Private)?;
        write_file(&files.cert, self.cert_pem.as_bytes(), Access::Public)?;
        Ok(files)
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A certificate made from a CSR: the proxy keeps its key, so there is none here.
#[derive(Clone, Debug)]
pub struct SignedCsr {
    /// The identity from the CSR's URI SAN, now in the certificate.
    pub spiffe_id: SpiffeId,
    /// The leaf certificate followed by the CA certificate, PEM.
    pub cert_pem: String,
    /// When the leaf expires (whole seconds).
    pub not_after: SystemTime,
}

/// A new key pair and a CSR asking for `id`, for a proxy that keeps its key to itself.
#[derive(Clone)]
pub struct Csr {
    /// The identity requested.
    pub spiffe_id: SpiffeId,
    /// The PKCS#10 request, PEM (`CERTIFICATE REQUEST`).
    pub csr_pem: String,
    /// The private key, PKCS#8 PEM. Secret: it never leaves the proxy.
    pub key_pem: String,
}

impl std::fmt::Debug for Csr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csr").field("spiffe_id", &self.spiffe_id).finish_non_exhaustive()
    }
}

/// Makes an ECDSA P-256 key pair and a CSR whose only SAN is the URI `id`.
pub fn new_csr(id: &SpiffeId) -> Result<Csr> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_for(id);
    params.subject_alt_names = vec![uri_san(id)?];
    let csr = params.serialize_request(&key)?;
    Ok(Csr { spiffe_id: id.clone(), csr_pem: csr.pem()?, key_pem: key.serialize_pem() })
}

/// The SPIFFE ID a CSR asks for, after checking its signature; lets a control plane
/// authorize the request before [`Ca::sign_csr`].
pub fn csr_spiffe_id(csr_pem: &str) -> Result<SpiffeId> {
    parse_csr(csr_pem).map(|(_, id)| id)
}

fn parse_csr(csr_pem: &str) -> Result<(CertificateSigningRequestParams, SpiffeId)> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CertError::Csr(e.to_string()))?;
    let uris: Vec<&str> = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(uri) => Some(uri.as_str()),
            _ => None,
        })
        .collect();
    let id = match uris.as_slice() {
        [] => {
            return Err(CertError::Csr(
                "no URI SAN: the CSR must name its SPIFFE ID as a URI subject alternative name".into(),
            ));
        }
        [one] => SpiffeId::parse(one).map_err(|e| CertError::Csr(format!("URI SAN: {e}")))?,
        many => {
            return Err(CertError::Csr(format!("{} URI SANs: exactly one SPIFFE ID is allowed", many.len())));
        }
    };
    Ok((csr, id))
}

impl Ca {
    /// Issues a leaf for `id` with a new ECDSA P-256 key, valid from a minute ago for `ttl`
    /// (cut short at the CA's own expiry). `dns_names` may hold DNS names (`*.` wildcards
    /// allowed) and IP addresses; both become SANs beside the SPIFFE URI.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration, dns_names: &[String]) -> Result<Issued> {
        let (not_before, not_after) = self.window(ttl)?;
        self.issue_between(id, not_before, not_after, dns_names)
    }

    /// Issues a leaf with an explicit validity window, which may lie wholly in the past or
    /// the future (for tests of expired or not-yet-valid certificates). Not clamped to the CA.
    pub fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
        dns_names: &[String],
    ) -> Result<Issued> {
        if not_after <= not_before {
            return Err(CertError::Validity("not-after must be later than not-before".into()));
        }
        self.issue_between(id, truncate_secs(not_before.into()), truncate_secs(not_after.into()), dns_names)
    }

    /// Signs a PEM CSR: the certificate gets the CSR's public key and its one URI SAN
    /// (a SPIFFE ID), and nothing else the CSR asks for (no DNS SANs, no CA rights); validity
    /// as in [`Ca::issue`]. Rejects a CSR whose signature is bad, or with no URI SAN, several,
    /// or one that is not a valid SPIFFE ID.
    pub fn sign_csr(&self, csr_pem: &str, ttl: Duration) -> Result<SignedCsr> {
        let (csr, id) = parse_csr(csr_pem)?;
        let (not_before, not_after) = self.window(ttl)?;
        let params = leaf_params(&id, not_before, not_after, &[])?;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(SignedCsr { spiffe_id: id, cert_pem: self.chain_pem(cert.der()), not_after: not_after.into() })
    }

    /// `[now - 1 min, now + ttl]`, clamped to the CA's expiry.
    fn window(&self, ttl: Duration) -> Result<(OffsetDateTime, OffsetDateTime)> {
        if ttl.is_zero() {
            return Err(CertError::Validity("ttl must be more than zero".into()));
        }
        let now = truncate_secs(OffsetDateTime::now_utc());
        if self.not_after <= now {
            return Err(CertError::Validity(format!(
                "the CA certificate expired at {}",
                crate::inspect::format_unix_time(self.not_after.unix_timestamp())
            )));
        }
        let not_after = time::Duration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .map_or(self.not_after, |t| t.min(self.not_after));
        Ok((now - BACKDATE, not_after))
    }

    fn issue_between(
        &self,
        id: &SpiffeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        dns_names: &[String],
    ) -> Result<Issued> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = leaf_params(id, not_before, not_after, dns_names)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            spiffe_id: id.clone(),
            cert_pem: self.chain_pem(cert.der()),
            key_pem: key.serialize_pem(),
            not_after: not_after.into(),
        })
    }

    fn chain_pem(&self, leaf_der: &[u8]) -> String {
        let mut pem = crate::pem::encode_cert_pem(leaf_der);
        pem.push_str(&self.cert_pem);
        pem
    }
}

fn subject_for(id: &SpiffeId) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Trellis");
    if id.as_str().len() <= MAX_CN_LEN {
        dn.push(DnType::CommonName, id.as_str());
    }
    dn
}

fn uri_san(id: &SpiffeId) -> Result<SanType> {
    // A validated SPIFFE ID is ASCII, so this cannot fail in practice.
    Ok(SanType::URI(ia5(id.as_str())?))
}

fn ia5(s: &str) -> Result<Ia5String> {
    Ok(Ia5String::try_from(s)?)
}

fn leaf_params(
    id: &SpiffeId,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    dns_names: &[String],
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_for(id);
    params.subject_alt_names = vec![uri_san(id)?];
    for name in dns_names {
        let san = extra_san(name)?;
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

/// A DNS name (`*.` wildcard allowed as the whole first label) or an IP address SAN.
fn extra_san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = |reason: &'static str| CertError::InvalidDnsName { name: name.to_owned(), reason };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.len() > 253 {
        return Err(bad("longer than 253 bytes"));
    }
    for (i, label) in trimmed.split('.').enumerate() {
        if label == "*" && i == 0 && trimmed.len() > 1 {
            continue;
        }
        if label.is_empty() {
            return Err(bad("has an empty label"));
        }
        if label.len() > 63 {
            return Err(bad("has a label longer than 63 bytes"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad("labels may hold only a-z A-Z 0-9 - _ (and a leading \"*.\" wildcard)"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with '-'"));
        }
    }
    Ok(SanType::DnsName(ia5(trimmed)?))
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(prefix.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::{inspect, inspect_chain, leaf_spiffe_id, load_certs, load_key};

    const HOUR: Duration = Duration::from_secs(3600);

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("valid id")
    }

    fn unix_now() -> i64 {
        i64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs()).expect("fits")
    }

    fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
        crate::certs_from_pem(pem.as_bytes()).expect("pem")
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).expect("add root");
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// rustls/webpki's verdict on a chain used as a client certificate at `now`.
    fn verify_as_client(ca: &Ca, chain: &[CertificateDer<'static>], now: UnixTime) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().expect("verifier");
        verifier.verify_client_cert(&chain[0], &chain[1..], now).map(|_| ())
    }

    /// rustls/webpki's verdict on a chain used as a server certificate for `name`.
    fn verify_as_server(ca: &Ca, chain: &[CertificateDer<'static>], name: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider()).build().expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn init_issue_inspect_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        Ca::init(&ca_dir, false).expect("init");
        let ca = Ca::load(&ca_dir).expect("load");
        let spiffe = id("spiffe://trellis.local/ns/default/sa/checkout");
        let dns = vec![
            "checkout.default.svc".to_owned(),
            "127.0.0.1".to_owned(),
            "checkout.default.svc".to_owned(), // duplicates are dropped
        ];
        let before = unix_now();
        let issued = ca.issue(&spiffe, 24 * HOUR, &dns).expect("issue");
        let files = issued.write(dir.path().join("out/checkout")).expect("write");
        assert_eq!(files.cert, dir.path().join("out/checkout.pem"));
        assert_eq!(files.key, dir.path().join("out/checkout.key"));

        // The chain file: leaf then the CA.
        let chain = load_certs(&files.cert).expect("load certs");
        assert_eq!(chain.len(), 2);
        assert_eq!(&chain[1], ca.cert_der());
        load_key(&files.key).expect("load key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // What inspect sees.
        let pem = std::fs::read(&files.cert).expect("read");
        let info = inspect(&pem).expect("inspect");
        assert_eq!(info.spiffe_id.as_ref(), Some(&spiffe));
        assert_eq!(info.uris, [spiffe.as_str()]);
        assert_eq!(info.dns_names, ["checkout.default.svc"]);
        assert_eq!(info.ip_addresses, [IpAddr::from([127, 0, 0, 1])]);
        assert!(info.issuer.contains("CN=Trellis Root CA"), "{}", info.issuer);
        assert!(info.subject.contains(spiffe.as_str()), "{}", info.subject);
        assert!(!info.is_ca);
        assert!((before - 61..=before - 59).contains(&info.not_before), "{info:?}");
        let expect_after = before + 24 * 3600;
        assert!((expect_after..=expect_after + 5).contains(&info.not_after), "{info:?}");
        assert_eq!(SystemTime::UNIX_EPOCH + Duration::from_secs(info.not_after as u64), issued.not_after);
        assert_eq!(info.sha256.len(), 64);
        assert_eq!(info.sha256, crate::crypto::hex(&crate::crypto::sha256(&chain[0])));
        let text = info.to_string();
        assert!(text.contains("spiffe id:   spiffe://trellis.local/ns/default/sa/checkout"), "{text}");
        assert!(text.contains("valid, expires in 23h 59m") || text.contains("valid, expires in 1d 0h"), "{text}");
        let all = inspect_chain(&pem).expect("chain");
        assert_eq!(all.len(), 2);
        assert!(all[1].is_ca);
        assert_eq!(crate::inspect_file(&files.cert).expect("file"), all);

        // The proxy's view of a peer.
        assert_eq!(leaf_spiffe_id(&chain[0]), Some(spiffe.clone()));
        assert_eq!(leaf_spiffe_id(&chain[1]), None, "the CA has no SPIFFE ID");

        // Extensions, read independently of our own inspect code.
        let (_, leaf) = X509Certificate::from_der(&chain[0]).expect("parse");
        let (_, root) = X509Certificate::from_der(&chain[1]).expect("parse");
        leaf.verify_signature(Some(root.public_key())).expect("signed by the CA");
        let eku = leaf.extended_key_usage().expect("eku").expect("has eku").value;
        assert!(eku.server_auth && eku.client_auth);
        let ku = leaf.key_usage().expect("ku").expect("has ku").value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let bc = leaf.basic_constraints().expect("bc").expect("has bc").value;
        assert!(!bc.ca);

        // And rustls accepts it in both roles.
        verify_as_client(&ca, &chain, UnixTime::now()).expect("client cert accepted");
        verify_as_server(&ca, &chain, "checkout.default.svc").expect("server cert accepted");
        verify_as_server(&ca, &chain, "127.0.0.1").expect("IP SAN accepted");
        assert!(verify_as_server(&ca, &chain, "other.svc").is_err());
        // A different CA does not accept it.
        let other = Ca::generate().expect("other CA");
        assert!(verify_as_client(&other, &chain, UnixTime::now()).is_err());
    }

    #[test]
    fn every_leaf_gets_a_fresh_key_and_serial() {
        let ca = Ca::generate().expect("ca");
        let spiffe = id("spiffe://td/a");
        let a = ca.issue(&spiffe, HOUR, &[]).expect("a");
        let b = ca.issue(&spiffe, HOUR, &[]).expect("b");
        assert_ne!(a.key_pem, b.key_pem);
        let (ia, ib) = (inspect(a.cert_pem.as_bytes()).expect("a"), inspect(b.cert_pem.as_bytes()).expect("b"));
        assert_ne!(ia.serial, ib.serial);
        assert!(!format!("{a:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn long_ids_have_no_cn_but_keep_the_san() {
        let ca = Ca::generate().expect("ca");
        let long = id(&format!("spiffe://trellis.local/ns/default/sa/{}", "x".repeat(80)));
        let issued = ca.issue(&long, HOUR, &[]).expect("issue");
        let info = inspect(issued.cert_pem.as_bytes()).expect("inspect");
        assert_eq!(info.subject, "O=Trellis");
        assert_eq!(info.spiffe_id, Some(long));
    }

    #[test]
    fn expired_and_future_certificates() {
        let ca = Ca::generate().expect("ca");
        let spiffe = id("spiffe://trellis.local/ns/default/sa/old");
        let now = SystemTime::now();
        let expired = ca.issue_with_validity(&spiffe, now - 2 * HOUR, now - HOUR, &[]).expect("issue expired");
        let info = inspect(expired.cert_pem.as_bytes()).expect("inspect");
        assert!(info.not_after < unix_now());
        assert!(!info.is_valid_at(unix_now()));
        assert!(info.to_string().contains("EXPIRED 1h 0m ago"), "{info}");
        let chain = certs(&expired.cert_pem);
        let err = verify_as_client(&ca, &chain, UnixTime::now()).expect_err("expired");
        assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
        // Still valid inside its window.
        let then = UnixTime::since_unix_epoch(Duration::from_secs((unix_now() - 5400) as u64));
        verify_as_client(&ca, &chain, then).expect("valid then");

        let future = ca.issue_with_validity(&spiffe, now + HOUR, now + 2 * HOUR, &[]).expect("issue future");
        let info = inspect(future.cert_pem.as_bytes()).expect("inspect");
        assert!(info.to_string().contains("NOT YET VALID"), "{info}");
        assert!(verify_as_client(&ca, &certs(&future.cert_pem), UnixTime::now()).is_err());

        let err = ca.issue_with_validity(&spiffe, now, now, &[]).expect_err("empty window");
        assert!(matches!(err, CertError::Validity(_)), "{err}");
        let err = ca.issue(&spiffe, Duration::ZERO, &[]).expect_err("zero ttl");
        assert!(matches!(err, CertError::Validity(_)), "{err}");
    }

    #[test]
    fn leaves_never_outlive_the_ca() {
        let ca = Ca::generate().expect("ca");
        let spiffe = id("spiffe://td/a");
        let issued = ca.issue(&spiffe, Duration::from_secs(100 * 365 * 24 * 3600), &[]).expect("issue");
        assert_eq!(issued.not_after, ca.not_after());
        let issued = ca.issue(&spiffe, Duration::MAX, &[]).expect("issue max");
        assert_eq!(issued.not_after, ca.not_after());
    }

    #[test]
    fn expired_ca_cannot_issue() {
        // A CA whose own certificate has run out: made by hand, since Ca::generate won't.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(2);
        params.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
        let cert = params.self_signed(&key).expect("self-signed");
        let ca = Ca::from_pem(&cert.pem(), &key.serialize_pem()).expect("from_pem");
        let err = ca.issue(&id("spiffe://td/a"), HOUR, &[]).expect_err("expired CA");
        assert!(err.to_string().contains("CA certificate expired"), "{err}");
    }

    #[test]
    fn bad_dns_names_are_rejected() {
        let ca = Ca::generate().expect("ca");
        let spiffe = id("spiffe://td/a");
        for bad in ["", "a..b", "-a.b", "a b", "*", "a.*.b", "é.com", &"a".repeat(64)] {
            let err = ca.issue(&spiffe, HOUR, &[bad.to_owned()]).expect_err(bad);
            assert!(matches!(err, CertError::InvalidDnsName { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        for good in ["*.mesh.local", "localhost", "a-b.c_d.example.", "::1"] {
            ca.issue(&spiffe, HOUR, &[good.to_owned()]).expect(good);
        }
    }

    #[test]
    fn write_keeps_dots_in_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate().expect("ca");
        let issued = ca.issue(&id("spiffe://td/a"), HOUR, &[]).expect("issue");
        let files = issued.write(dir.path().join("svc.v2")).expect("write");
        assert_eq!(files.cert, dir.path().join("svc.v2.pem"));
        assert_eq!(files.key, dir.path().join("svc.v2.key"));
        assert!(files.cert.is_file() && files.key.is_file());
    }

    #[test]
    fn csr_signing_keeps_key_and_spiffe_id() {
        let ca = Ca::generate().expect("ca");
        let spiffe = id("spiffe://trellis.local/ns/agents/sa/planner");
        let csr = new_csr(&spiffe).expect("csr");
        assert!(csr.csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert_eq!(csr_spiffe_id(&csr.csr_pem).expect("id"), spiffe);

        let signed = ca.sign_csr(&csr.csr_pem, HOUR).expect("sign");
        assert_eq!(signed.spiffe_id, spiffe);
        let chain = certs(&signed.cert_pem);
        assert_eq!(chain.len(), 2);
        assert_eq!(leaf_spiffe_id(&chain[0]), Some(spiffe));
        // The certificate carries the CSR's public key, i.e. the proxy's own key.
        let key = KeyPair::from_pem(&csr.key_pem).expect("key");
        let (_, leaf) = X509Certificate::from_der(&chain[0]).expect("parse");
        assert_eq!(leaf.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
        verify_as_client(&ca, &chain, UnixTime::now()).expect("accepted");
        let info = inspect(signed.cert_pem.as_bytes()).expect("inspect");
        assert!(info.dns_names.is_empty());
        assert!(!info.is_ca);
    }

    /// A signed CSR with whatever SANs and CA flag a (possibly hostile) proxy asks for.
    fn csr_with(sans: Vec<SanType>, is_ca: IsCa) -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.is_ca = is_ca;
        params.serialize_request(&key).expect("csr").pem().expect("pem")
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(Ia5String::try_from(s).expect("ia5"))
    }

    #[test]
    fn csr_rejections() {
        let ca = Ca::generate().expect("ca");
        let cases = [
            (csr_with(vec![SanType::DnsName(Ia5String::try_from("a.b").expect("ia5"))], IsCa::NoCa), "no URI SAN"),
            (csr_with(vec![], IsCa::NoCa), "no URI SAN"),
            (csr_with(vec![uri("https://evil.example/x")], IsCa::NoCa), "must start with spiffe://"),
            (csr_with(vec![uri("spiffe://Trellis/x")], IsCa::NoCa), "lowercase"),
            (csr_with(vec![uri("spiffe://td/a"), uri("spiffe://td/b")], IsCa::NoCa), "2 URI SANs"),
            ("garbage".to_owned(), "Could not parse"),
        ];
        for (pem, expect) in cases {
            let err = ca.sign_csr(&pem, HOUR).expect_err(expect);
            assert!(matches!(err, CertError::Csr(_)), "{err}");
            assert!(err.to_string().contains(expect), "{err} lacks {expect:?}");
            assert!(csr_spiffe_id(&pem).is_err());
        }
    }

    #[test]
    fn csr_cannot_ask_for_ca_rights_or_dns_names() {
        let ca = Ca::generate().expect("ca");
        let pem = csr_with(
            vec![uri("spiffe://td/sneaky"), SanType::DnsName(Ia5String::try_from("bank.example").expect("ia5"))],
            IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
        );
        let signed = ca.sign_csr(&pem, HOUR).expect("sign");
        let info = inspect(signed.cert_pem.as_bytes()).expect("inspect");
        assert!(!info.is_ca);
        assert!(info.dns_names.is_empty());
        assert_eq!(info.spiffe_id, Some(id("spiffe://td/sneaky")));
    }

    #[test]
    fn tampered_csr_is_rejected() {
        use rustls_pki_types::pem::PemObject;
        let csr = new_csr(&id("spiffe://td/a")).expect("csr");
        let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes()).expect("der");
        let a = der.as_ref();
        // Change the requested SAN ("a" -> "c") without fixing the signature.
        let pos = a.windows(12).position(|w| w == b"spiffe://td/").expect("san") + 12;
        let mut bad = a.to_vec();
        bad[pos] = b'c';
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}-----END CERTIFICATE REQUEST-----\n",
            crate::pem::encode_cert_pem(&bad)
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        let err = Ca::generate().expect("ca").sign_csr(&pem, HOUR).expect_err("tampered");
        assert!(err.to_string().contains("Invalid CSR signature"), "{err}");
    }
}
