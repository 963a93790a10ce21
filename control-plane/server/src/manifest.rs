//! Manifests for `trellis ctl`: multi-document YAML where each document is one resource
//! with `kind: Cluster | Route | Listener | Policy | Telemetry` beside its fields (DESIGN §6), and the
//! same form back out for `ctl get`.

use serde::Serialize;
use serde_json::Value;

use crate::stored::{Kind, Resource};

/// One resource read from a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// 1-based position in the file.
    pub index: usize,
    pub resource: Resource,
}

/// Why a manifest cannot be used; messages name the document.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("not valid YAML: {0}")]
    Syntax(String),
    #[error("document {index}: {reason}")]
    Document { index: usize, reason: String },
}

/// Reads every document (empty ones are skipped), parsing each with the resource schema.
/// Two documents may not define the same resource.
pub fn parse(text: &str) -> Result<Vec<Document>, ManifestError> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Syntax(e.to_string()))?;
    let mut docs: Vec<Document> = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let index = i + 1;
        let fail = |reason: String| ManifestError::Document { index, reason };
        let mut object = match value {
            Value::Null => continue,
            Value::Object(o) => o,
            _ => return Err(fail("a document must be a mapping with `kind:` and the resource's fields".into())),
        };
        let kind = match object.remove("kind") {
            Some(Value::String(k)) => k.parse::<Kind>().map_err(|e| fail(format!("kind: {e}")))?,
            Some(_) => return Err(fail("kind: must be Cluster, Route, Listener, Policy or Telemetry".into())),
            None => return Err(fail("kind: missing (Cluster, Route, Listener, Policy or Telemetry)".into())),
        };
        let name = object.get("name").and_then(Value::as_str).map(str::to_string);
        let resource = Resource::from_value(kind, &Value::Object(object)).map_err(|e| {
            let what = name.as_ref().map_or_else(|| kind.title().to_string(), |n| format!("{} {n}", kind.title()));
            fail(format!("{what}: {e}"))
        })?;
        if let Some(other) = docs.iter().find(|d| d.resource.kind() == kind && d.resource.name() == resource.name()) {
            return Err(fail(format!(
                "{}/{} is also defined by document {}",
                kind.singular(),
                resource.name(),
                other.index
            )));
        }
        docs.push(Document { index, resource });
    }
    Ok(docs)
}

/// The resource with `kind:` first, for output that `ctl apply` reads back.
#[derive(Serialize)]
struct WithKind<'a, T: Serialize> {
    kind: &'static str,
    #[serde(flatten)]
    resource: &'a T,
}

/// A resource as a manifest document.
pub struct Tagged<'a>(pub &'a Resource);

impl Serialize for Tagged<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = self.0.kind().title();
        match self.0 {
            Resource::Cluster(resource) => WithKind { kind, resource }.serialize(s),
            Resource::Route(resource) => WithKind { kind, resource }.serialize(s),
            Resource::Listener(resource) => WithKind { kind, resource }.serialize(s),
            Resource::Policy(resource) => WithKind { kind, resource }.serialize(s),
            Resource::Telemetry(resource) => WithKind { kind, resource }.serialize(s),
        }
    }
}

/// Resources as multi-document YAML, each with its `kind:`.
pub fn to_yaml(resources: &[Resource]) -> Result<String, String> {
    let mut out = String::new();
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(&Tagged(r)).map_err(|e| e.to_string())?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
kind: Cluster
name: web
endpoints: [{address: \"127.0.0.1:8080\"}]
---
kind: Route
name: all
backends: [{cluster: web}]
---
";

    #[test]
    fn reads_every_document() {
        let docs = parse(FILE).unwrap();
        let names: Vec<(usize, Kind, &str)> =
            docs.iter().map(|d| (d.index, d.resource.kind(), d.resource.name())).collect();
        assert_eq!(names, vec![(1, Kind::Cluster, "web"), (2, Kind::Route, "all")]);
    }

    #[test]
    fn a_bad_field_is_named_with_its_document() {
        let bad = FILE.replace("backends: [{cluster: web}]", "backends: [{cluster: web, wieght: 2}]");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.starts_with("document 2: Route all: backends[0].wieght: unknown field"), "{err}");
    }

    #[test]
    fn kind_is_required_and_known() {
        let err = parse("name: x\n").unwrap_err().to_string();
        assert_eq!(err, "document 1: kind: missing (Cluster, Route, Listener, Policy or Telemetry)");
        let err = parse("kind: Gateway\nname: x\n").unwrap_err().to_string();
        assert!(err.starts_with("document 1: kind: unknown kind \"Gateway\""), "{err}");
    }

    #[test]
    fn duplicates_are_refused() {
        let twice = format!("{FILE}kind: Cluster\nname: web\nendpoints: []\n");
        let err = parse(&twice).unwrap_err().to_string();
        assert_eq!(err, "document 3: cluster/web is also defined by document 1");
    }

    #[test]
    fn yaml_output_reads_back() {
        let docs = parse(FILE).unwrap();
        let resources: Vec<Resource> = docs.into_iter().map(|d| d.resource).collect();
        let yaml = to_yaml(&resources).unwrap();
        assert!(yaml.starts_with("kind: Cluster\n"), "{yaml}");
        let again: Vec<Resource> = parse(&yaml).unwrap().into_iter().map(|d| d.resource).collect();
        assert_eq!(again, resources);
    }
}
