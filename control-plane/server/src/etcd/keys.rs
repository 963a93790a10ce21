//! What the control plane keeps where in etcd, under one prefix (`--etcd-prefix`, default
//! `/trellis`):
//!
//! ```text
//! PREFIX/resources/KIND/NAME          a resource's canonical JSON (KIND: clusters, routes, …)
//! PREFIX/meta/write                   rewritten by every REST write: its mod revision orders them
//! PREFIX/registrations/SERVICE/ADDR   a registered sidecar endpoint, under its replica's lease
//! PREFIX/ca/cert, PREFIX/ca/key       the mesh CA (PEM), written once
//! ```
//!
//! A resource's version is its key's mod revision, so versions (and ETags) are the same on
//! every replica.

use crate::stored::Kind;

/// The default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/trellis";

const RESOURCES: &str = "resources/";
const REGISTRATIONS: &str = "registrations/";
const MARKER: &str = "meta/write";

/// One key of ours, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Resource(Kind, String),
    /// The write marker.
    Marker,
    /// `(service, address)`.
    Registration(String, String),
    /// Ours but nothing the watch follows (the CA), or unknown.
    Other,
}

/// The key layout under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    /// With its trailing `/`.
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`: an absolute path without spaces (`/trellis`; a trailing `/` is
    /// optional).
    pub fn new(prefix: &str) -> Result<Keys, String> {
        let trimmed = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || trimmed.is_empty() {
            return Err(format!("\"{prefix}\" is not an absolute path such as /trellis"));
        }
        if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("\"{prefix}\" holds spaces or control characters"));
        }
        Ok(Keys { prefix: format!("{trimmed}/") })
    }

    /// The prefix, with its trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `[start, end)` of every key under the prefix.
    pub fn all(&self) -> (Vec<u8>, Vec<u8>) {
        let start = self.prefix.as_bytes().to_vec();
        let end = prefix_end(&start);
        (start, end)
    }

    pub fn resource(&self, kind: Kind, name: &str) -> Vec<u8> {
        format!("{}{RESOURCES}{}/{name}", self.prefix, kind.plural()).into_bytes()
    }

    pub fn marker(&self) -> Vec<u8> {
        format!("{}{MARKER}", self.prefix).into_bytes()
    }

    pub fn registration(&self, service: &str, address: &str) -> Vec<u8> {
        format!("{}{REGISTRATIONS}{service}/{address}", self.prefix).into_bytes()
    }

    pub fn ca_cert(&self) -> Vec<u8> {
        format!("{}ca/cert", self.prefix).into_bytes()
    }

    pub fn ca_key(&self) -> Vec<u8> {
        format!("{}ca/key", self.prefix).into_bytes()
    }

    /// What `key` is. A registration splits at its last `/` (an address holds none).
    pub fn parse(&self, key: &[u8]) -> Key {
        let Some(rest) = std::str::from_utf8(key).ok().and_then(|k| k.strip_prefix(self.prefix.as_str())) else {
            return Key::Other;
        };
        if rest == MARKER {
            return Key::Marker;
        }
        if let Some(r) = rest.strip_prefix(RESOURCES) {
            let Some((kind, name)) = r.split_once('/') else { return Key::Other };
            return match Kind::ALL.into_iter().find(|k| k.plural() == kind) {
                Some(kind) if !name.is_empty() => Key::Resource(kind, name.to_string()),
                _ => Key::Other,
            };
        }
        if let Some(r) = rest.strip_prefix(REGISTRATIONS)
            && let Some((service, address)) = r.rsplit_once('/')
            && !service.is_empty()
            && !address.is_empty()
        {
            return Key::Registration(service.to_string(), address.to_string());
        }
        Key::Other
    }
}

/// The end of the range of every key starting with `prefix`: the prefix with its last byte
/// that is not 0xff increased (etcd's own rule).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: every key from `prefix` on.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let keys = Keys::new("/trellis/").unwrap();
        assert_eq!(keys.prefix(), "/trellis/");
        assert_eq!(keys.resource(Kind::Cluster, "web"), b"/trellis/resources/clusters/web");
        assert_eq!(keys.parse(&keys.resource(Kind::Route, "a/b")), Key::Resource(Kind::Route, "a/b".into()));
        assert_eq!(keys.parse(&keys.marker()), Key::Marker);
        let reg = keys.registration("pay/v2", "10.0.0.1:4143");
        assert_eq!(keys.parse(&reg), Key::Registration("pay/v2".into(), "10.0.0.1:4143".into()));
        assert_eq!(keys.parse(&keys.ca_key()), Key::Other);
        assert_eq!(keys.parse(b"/trellis/resources/gateways/x"), Key::Other);
        assert_eq!(keys.parse(b"/trellis/resources/clusters/"), Key::Other);
        assert_eq!(keys.parse(b"/other/resources/clusters/web"), Key::Other);
        assert_eq!(keys.all(), (b"/trellis/".to_vec(), b"/trellis0".to_vec()));
    }

    #[test]
    fn prefixes_are_absolute_paths() {
        assert_eq!(Keys::new("/a/b").unwrap().prefix(), "/a/b/");
        for bad in ["", "/", "trellis", "/a b"] {
            assert!(Keys::new(bad).is_err(), "{bad}");
        }
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), [0]);
    }
}
