//! The five kinds of resource the control plane stores, and one stored resource as a value
//! that knows its kind: parsing from the REST/manifest JSON, the canonical JSON it is kept
//! and served as, and its place in a [`Bootstrap`] for validation.

use std::fmt;
use std::str::FromStr;

use trellis_api::discovery::ResourceType;
use trellis_api::parse::{ParseError, parse};
use trellis_api::{Bootstrap, Cluster, Listener, Policy, Route, Telemetry};

/// A kind of stored resource. Ordered so that a resource comes after those it references
/// (policies and clusters, then routes, then listeners): the order `ctl apply` writes in.
/// Telemetry references nothing and nothing references it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Policy,
    Cluster,
    Route,
    Listener,
    Telemetry,
}

impl Kind {
    /// Every kind, referenced ones first.
    pub const ALL: [Kind; 5] = [Kind::Policy, Kind::Cluster, Kind::Route, Kind::Listener, Kind::Telemetry];

    /// The plural, as in REST paths and config sections: `clusters`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Cluster => "clusters",
            Kind::Route => "routes",
            Kind::Listener => "listeners",
            Kind::Policy => "policies",
            Kind::Telemetry => "telemetry",
        }
    }

    /// The manifest `kind:` value: `Cluster`.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Cluster => "Cluster",
            Kind::Route => "Route",
            Kind::Listener => "Listener",
            Kind::Policy => "Policy",
            Kind::Telemetry => "Telemetry",
        }
    }

    /// The singular in lower case, as `ctl` prints it: `cluster/web`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Route => "route",
            Kind::Listener => "listener",
            Kind::Policy => "policy",
            Kind::Telemetry => "telemetry",
        }
    }

    /// The discovery protocol's type for this kind.
    pub fn resource_type(self) -> ResourceType {
        match self {
            Kind::Cluster => ResourceType::Cluster,
            Kind::Route => ResourceType::Route,
            Kind::Listener => ResourceType::Listener,
            Kind::Policy => ResourceType::Policy,
            Kind::Telemetry => ResourceType::Telemetry,
        }
    }

    /// Position in [`Kind::ALL`], for per-kind arrays.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}

/// A kind name nobody knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind \"{0}\" (use clusters, routes, listeners, policies or telemetry)")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Accepts the plural, the singular and the manifest title, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| lower == k.plural() || lower == k.singular())
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// One resource of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Cluster(Cluster),
    Route(Route),
    Listener(Listener),
    Policy(Policy),
    Telemetry(Telemetry),
}

impl Resource {
    /// Parses `text` (JSON or YAML) as a resource of `kind`; errors name the field path
    /// inside the resource (`endpoints[0].address`).
    pub fn parse(kind: Kind, text: &str) -> Result<Resource, ParseError> {
        Ok(match kind {
            Kind::Cluster => Resource::Cluster(parse(text)?),
            Kind::Route => Resource::Route(parse(text)?),
            Kind::Listener => Resource::Listener(parse(text)?),
            Kind::Policy => Resource::Policy(parse(text)?),
            Kind::Telemetry => Resource::Telemetry(parse(text)?),
        })
    }

    /// Parses a JSON value as a resource of `kind` (see [`Resource::parse`]).
    pub fn from_value(kind: Kind, value: &serde_json::Value) -> Result<Resource, ParseError> {
        Self::parse(kind, &value.to_string())
    }

    /// This resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Cluster(_) => Kind::Cluster,
            Resource::Route(_) => Kind::Route,
            Resource::Listener(_) => Kind::Listener,
            Resource::Policy(_) => Kind::Policy,
            Resource::Telemetry(_) => Kind::Telemetry,
        }
    }

    /// This resource's name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Cluster(r) => &r.name,
            Resource::Route(r) => &r.name,
            Resource::Listener(r) => &r.name,
            Resource::Policy(r) => &r.name,
            Resource::Telemetry(r) => &r.name,
        }
    }

    /// The canonical JSON value: every default filled in, fields in schema order. Two
    /// resources that mean the same thing have the same canonical JSON.
    pub fn to_value(&self) -> serde_json::Value {
        // Serializing these plain data types cannot fail (no maps with non-string keys).
        let value = match self {
            Resource::Cluster(r) => serde_json::to_value(r),
            Resource::Route(r) => serde_json::to_value(r),
            Resource::Listener(r) => serde_json::to_value(r),
            Resource::Policy(r) => serde_json::to_value(r),
            Resource::Telemetry(r) => serde_json::to_value(r),
        };
        value.unwrap_or(serde_json::Value::Null)
    }

    /// Adds a clone of this resource to `b`'s section for its kind.
    pub(crate) fn add_to(&self, b: &mut Bootstrap) {
        match self {
            Resource::Cluster(r) => b.clusters.push(r.clone()),
            Resource::Route(r) => b.routes.push(r.clone()),
            Resource::Listener(r) => b.listeners.push(r.clone()),
            Resource::Policy(r) => b.policies.push(r.clone()),
            Resource::Telemetry(r) => b.telemetry.push(r.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_in_every_spelling() {
        for k in Kind::ALL {
            assert_eq!(k.plural().parse::<Kind>(), Ok(k));
            assert_eq!(k.singular().parse::<Kind>(), Ok(k));
            assert_eq!(k.title().parse::<Kind>(), Ok(k));
        }
        assert!("gateways".parse::<Kind>().is_err());
    }

    #[test]
    fn canonical_json_fills_defaults() {
        let a = Resource::parse(Kind::Cluster, r#"{"name":"c","endpoints":[{"address":"127.0.0.1:1"}]}"#).unwrap();
        let b = Resource::parse(
            Kind::Cluster,
            "name: c\nlb: peak_ewma\nendpoints: [{address: \"127.0.0.1:1\", weight: 1}]\n",
        )
        .unwrap();
        assert_eq!(a.to_value(), b.to_value());
        assert_eq!(Resource::from_value(Kind::Cluster, &a.to_value()).unwrap(), a);
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = Resource::parse(Kind::Route, r#"{"name":"r","backends":[{"clustr":"c"}]}"#).unwrap_err();
        assert!(err.to_string().starts_with("backends[0].clustr"), "{err}");
    }
}
