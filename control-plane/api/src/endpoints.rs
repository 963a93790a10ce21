//! ENDPOINTS resources of the discovery protocol: one endpoint of one cluster per resource,
//! so that a change to one endpoint of a large cluster travels as one small resource.
//!
//! A resource is named `CLUSTER/ADDRESS` and its body is a [`Body`]. Cluster names may hold
//! any character, `/` included, but an endpoint address never does (validation refuses it,
//! see [`crate::validate`]), so the name splits unambiguously at its *last* `/`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::Endpoint;

/// Between the cluster name and the address in an ENDPOINTS resource name.
pub const SEPARATOR: char = '/';

/// The name of the ENDPOINTS resource for `address` in `cluster`.
pub fn name(cluster: &str, address: &str) -> String {
    format!("{cluster}{SEPARATOR}{address}")
}

/// Why an ENDPOINTS resource name or body does not hold together.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("not CLUSTER/ADDRESS")]
    Shape,
    #[error("the name's address \"{name}\" differs from the body's \"{body}\"")]
    Mismatch { name: String, body: String },
}

/// `CLUSTER/ADDRESS` → `(CLUSTER, ADDRESS)`; both parts non-empty.
pub fn split_name(name: &str) -> Result<(&str, &str), NameError> {
    match name.rsplit_once(SEPARATOR) {
        Some((cluster, address)) if !cluster.is_empty() && !address.is_empty() => Ok((cluster, address)),
        _ => Err(NameError::Shape),
    }
}

/// The body of an ENDPOINTS resource: the endpoint (the same fields as in a cluster's
/// `endpoints` list) and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Registered by a sidecar's discovery stream (`node.inbound_address`) rather than
    /// written in the cluster resource. Registered endpoints also join a cluster of the
    /// same name from the proxy's static file; written ones belong to the control plane's
    /// cluster only (a static cluster wins a name clash whole).
    #[serde(default, skip_serializing_if = "is_false")]
    pub registered: bool,
    /// The SPIFFE ID the endpoint presents: a registered sidecar's verified identity (its
    /// discovery stream's client certificate), or a written endpoint's `identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

fn one() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Body {
    /// The body for an endpoint written in a cluster resource.
    pub fn written(e: &Endpoint) -> Body {
        Body {
            address: e.address.clone(),
            weight: e.weight,
            zone: e.zone.clone(),
            registered: false,
            identity: e.identity.clone(),
        }
    }

    /// The endpoint, as it goes into the cluster's `endpoints` list.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.address.clone(),
            weight: self.weight,
            zone: self.zone.clone(),
            identity: self.identity.clone(),
        }
    }

    /// Checks that this body belongs under `name`; returns the cluster name.
    pub fn cluster_of<'n>(&self, name: &'n str) -> Result<&'n str, NameError> {
        let (cluster, address) = split_name(name)?;
        if address != self.address {
            return Err(NameError::Mismatch { name: address.to_string(), body: self.address.clone() });
        }
        Ok(cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_at_the_last_separator() {
        assert_eq!(split_name(&name("web", "10.0.0.1:80")), Ok(("web", "10.0.0.1:80")));
        // A cluster name may hold `/`; an address may not.
        assert_eq!(split_name(&name("team/web", "[::1]:80")), Ok(("team/web", "[::1]:80")));
        assert_eq!(split_name("web"), Err(NameError::Shape));
        assert_eq!(split_name("/10.0.0.1:80"), Err(NameError::Shape));
        assert_eq!(split_name("web/"), Err(NameError::Shape));
    }

    #[test]
    fn bodies_round_trip_and_check_their_name() {
        let b: Body = crate::parse::parse(r#"{"address":"10.0.0.1:80"}"#).unwrap();
        assert_eq!((b.weight, b.registered), (1, false));
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"address":"10.0.0.1:80","weight":1}"#);
        assert_eq!(b.cluster_of("web/10.0.0.1:80"), Ok("web"));
        assert!(matches!(b.cluster_of("web/10.0.0.2:80"), Err(NameError::Mismatch { .. })));
        assert!(crate::parse::parse::<Body>(r#"{"address":"10.0.0.1:80","wieght":2}"#).is_err());
        // A registered sidecar's identity travels with it into the cluster's endpoint.
        let sidecar = r#"{"address":"10.0.0.1:4143","weight":1,"registered":true,"identity":"spiffe://td/ns/a/sa/b"}"#;
        let b: Body = crate::parse::parse(sidecar).unwrap();
        assert_eq!(serde_json::to_string(&b).unwrap(), sidecar);
        assert_eq!(b.endpoint().identity.as_deref(), Some("spiffe://td/ns/a/sa/b"));
        assert_eq!(Body::written(&b.endpoint()).identity, b.identity);
    }
}
