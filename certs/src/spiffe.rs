//! SPIFFE IDs: `spiffe://<trust-domain>/<path>`, validated as the SPIFFE ID spec asks.
//!
//! Rules enforced by [`SpiffeId::parse`]:
//! - the scheme is exactly `spiffe://` (lowercase);
//! - the trust domain is non-empty and made of `a-z 0-9 . - _` (no uppercase, port or userinfo);
//! - there is a path of one or more `/segment`s; a segment is non-empty, made of
//!   `a-z A-Z 0-9 . - _`, and is neither `.` nor `..` (so no trailing `/` either);
//! - no query (`?`) or fragment (`#`), no percent-encoding;
//! - at most [`SpiffeId::MAX_LEN`] bytes in all.
//!
//! Trellis workload IDs are `spiffe://<td>/ns/<namespace>/sa/<service-account>`
//! ([`SpiffeId::workload`]).

use std::fmt;
use std::str::FromStr;

use crate::error::{CertError, Result};

/// The trust domain Trellis uses when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "trellis.local";

const SCHEME: &str = "spiffe://";

/// A validated SPIFFE ID, e.g. `spiffe://trellis.local/ns/default/sa/checkout`.
///
/// Comparison, ordering and hashing are on the full ID string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    id: String,
    /// Byte index in `id` where the path (its leading `/`) starts.
    path_start: usize,
}

impl SpiffeId {
    /// The longest SPIFFE ID accepted, in bytes (the SPIFFE spec's URI limit).
    pub const MAX_LEN: usize = 2048;

    /// Parses and validates a SPIFFE ID.
    ///
    /// Errors read like `invalid SPIFFE ID "x": must start with spiffe://`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: &str| invalid(s, reason);
        if s.is_empty() {
            return Err(bad("is empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(bad(&format!("is {} bytes long, the limit is {}", s.len(), Self::MAX_LEN)));
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(bad("must start with spiffe://"));
        };
        if s.contains('?') {
            return Err(bad("must not contain a query ('?')"));
        }
        if s.contains('#') {
            return Err(bad("must not contain a fragment ('#')"));
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(td).map_err(|r| bad(&r))?;
        if path.is_empty() {
            return Err(bad("has no path: a workload ID is spiffe://<trust-domain>/<path>"));
        }
        check_path(path).map_err(|r| bad(&r))?;
        Ok(Self { id: s.to_owned(), path_start: SCHEME.len() + td.len() })
    }

    /// Builds `spiffe://<trust_domain><path>`; `path` must start with `/`.
    pub fn new(trust_domain: &str, path: &str) -> Result<Self> {
        Self::parse(&format!("{SCHEME}{trust_domain}{path}"))
    }

    /// Builds the Trellis workload ID `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    ///
    /// `namespace` and `service_account` must each be one path segment (no `/`).
    pub fn workload(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self> {
        let id = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        for (what, value) in [("namespace", namespace), ("service account", service_account)] {
            if value.contains('/') {
                return Err(invalid(&id, &format!("{what} {value:?} contains '/'")));
            }
        }
        Self::parse(&id)
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain, e.g. `trellis.local`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path including its leading `/`, e.g. `/ns/default/sa/checkout`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The path's segments, e.g. `["ns", "default", "sa", "checkout"]`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path()[1..].split('/')
    }

    /// The namespace of a `/ns/<namespace>/sa/<service-account>` ID, else `None`.
    pub fn namespace(&self) -> Option<&str> {
        self.ns_sa().map(|(ns, _)| ns)
    }

    /// The service account of a `/ns/<namespace>/sa/<service-account>` ID, else `None`.
    pub fn service_account(&self) -> Option<&str> {
        self.ns_sa().map(|(_, sa)| sa)
    }

    fn ns_sa(&self) -> Option<(&str, &str)> {
        let mut it = self.segments();
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// Consumes the ID, returning its string.
    pub fn into_string(self) -> String {
        self.id
    }
}

fn invalid(id: &str, reason: &str) -> CertError {
    // Keep error messages readable even for absurdly long inputs.
    const SHOW: usize = 200;
    let shown = if id.len() > SHOW {
        let mut end = SHOW;
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &id[..end])
    } else {
        id.to_owned()
    };
    CertError::InvalidSpiffeId { id: shown, reason: reason.to_owned() }
}

fn check_trust_domain(td: &str) -> std::result::Result<(), String> {
    if td.is_empty() {
        return Err("trust domain is empty".into());
    }
    if let Some(c) = td.chars().find(|c| !is_td_char(*c)) {
        let hint = if c.is_ascii_uppercase() {
            " (trust domains are lowercase)"
        } else if c == ':' {
            " (no port allowed)"
        } else if c == '@' {
            " (no userinfo allowed)"
        } else {
            ""
        };
        return Err(format!("trust domain {td:?} contains {c:?}; allowed: a-z 0-9 . - _{hint}"));
    }
    Ok(())
}

fn check_path(path: &str) -> std::result::Result<(), String> {
    // `path` starts with '/'; splitting the rest yields the segments.
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(format!("path {path:?} has an empty segment (no '//' or trailing '/')"));
        }
        if seg == "." || seg == ".." {
            return Err(format!("path {path:?} has a {seg:?} segment"));
        }
        if let Some(c) = seg.chars().find(|c| !is_path_char(*c)) {
            return Err(format!("path segment {seg:?} contains {c:?}; allowed: a-z A-Z 0-9 . - _"));
        }
    }
    Ok(())
}

fn is_td_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = CertError;

    fn try_from(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = CertError;

    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> String {
        match SpiffeId::parse(s) {
            Err(CertError::InvalidSpiffeId { reason, .. }) => reason,
            Err(other) => panic!("unexpected error kind for {s:?}: {other}"),
            Ok(id) => panic!("{s:?} was accepted as {id}"),
        }
    }

    #[test]
    fn parses_workload_id() {
        let id = SpiffeId::parse("spiffe://trellis.local/ns/default/sa/checkout").expect("valid");
        assert_eq!(id.trust_domain(), "trellis.local");
        assert_eq!(id.path(), "/ns/default/sa/checkout");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("checkout"));
        assert_eq!(id.to_string(), "spiffe://trellis.local/ns/default/sa/checkout");
        assert_eq!(id.segments().collect::<Vec<_>>(), ["ns", "default", "sa", "checkout"]);
    }

    #[test]
    fn helpers_build_ids() {
        let id = SpiffeId::workload(DEFAULT_TRUST_DOMAIN, "agents", "planner-1").expect("valid");
        assert_eq!(id.as_str(), "spiffe://trellis.local/ns/agents/sa/planner-1");
        let id = SpiffeId::new("example.org", "/web/Front_End.v2").expect("valid");
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.namespace(), None);
        assert_eq!(id.service_account(), None);
        assert!(SpiffeId::workload("trellis.local", "", "x").is_err());
        assert!(SpiffeId::workload("trellis.local", "a/b", "x").is_err());
        assert!(SpiffeId::new("td", "no-slash").is_err());
    }

    #[test]
    fn error_message_names_the_id() {
        let err = SpiffeId::parse("x").expect_err("must fail");
        assert_eq!(err.to_string(), "invalid SPIFFE ID \"x\": must start with spiffe://");
    }

    #[test]
    fn rejects_bad_ids() {
        for (input, expect) in [
            ("", "empty"),
            ("http://trellis.local/a", "must start with spiffe://"),
            ("SPIFFE://trellis.local/a", "must start with spiffe://"),
            ("spiffe://", "trust domain is empty"),
            ("spiffe:///a", "trust domain is empty"),
            ("spiffe://Trellis.local/a", "lowercase"),
            ("spiffe://trellis.local:443/a", "no port"),
            ("spiffe://user@trellis.local/a", "no userinfo"),
            ("spiffe://trellis.local", "has no path"),
            ("spiffe://trellis.local/", "empty segment"),
            ("spiffe://trellis.local/a/", "empty segment"),
            ("spiffe://trellis.local/a//b", "empty segment"),
            ("spiffe://trellis.local/a/./b", "\".\" segment"),
            ("spiffe://trellis.local/a/../b", "\"..\" segment"),
            ("spiffe://trellis.local/a?b=c", "query"),
            ("spiffe://trellis.local/a#frag", "fragment"),
            ("spiffe://trellis.local/a%20b", "contains '%'"),
            ("spiffe://trellis.local/a b", "contains ' '"),
            ("spiffe://trellis.local/ns/*", "contains '*'"),
            ("spiffe://trellis.local/é", "contains 'é'"),
        ] {
            let r = reason(input);
            assert!(r.contains(expect), "{input:?}: reason {r:?} lacks {expect:?}");
        }
    }

    #[test]
    fn length_limit() {
        let prefix = "spiffe://td/";
        let ok = format!("{prefix}{}", "a".repeat(SpiffeId::MAX_LEN - prefix.len()));
        assert_eq!(ok.len(), SpiffeId::MAX_LEN);
        assert!(SpiffeId::parse(&ok).is_ok());
        let long = format!("{ok}a");
        assert!(reason(&long).contains("limit is 2048"));
        // The message does not echo kilobytes of input.
        let msg = SpiffeId::parse(&long).expect_err("too long").to_string();
        assert!(msg.len() < 400, "{msg}");
    }

    #[test]
    fn conversions() {
        let id: SpiffeId = "spiffe://td/x".parse().expect("valid");
        let same = SpiffeId::try_from(String::from("spiffe://td/x")).expect("valid");
        assert_eq!(id, same);
        assert_eq!(String::from(id.clone()), "spiffe://td/x");
        assert_eq!(id.as_ref(), "spiffe://td/x");
    }
}
