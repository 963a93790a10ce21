//! `trellis inject`: every pod template of a multi-document file gets the proxy
//! ([`crate::pod::inject`]); every other document passes through with the same meaning.

use serde_json::{Map, Value};

use crate::documents::{self, YamlError};
use crate::pod::{self, Outcome, Settings};

/// Why a file cannot be injected; messages name the document (and line).
#[derive(Debug, thiserror::Error)]
pub enum InjectFileError {
    #[error("{0}")]
    Yaml(#[from] YamlError),
    #[error("document {index} (line {line}), {kind} {name}: {field}{reason}")]
    Template { index: usize, line: usize, kind: String, name: String, field: String, reason: String },
    #[error("cannot write YAML: {0}")]
    Output(String),
}

/// What happened to one workload, for the report on stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub index: usize,
    /// `Deployment/web`.
    pub workload: String,
    pub outcome: Outcome,
}

/// The injected file and what was done.
#[derive(Debug)]
pub struct Injected {
    pub yaml: String,
    pub reports: Vec<Report>,
}

/// Where a kind keeps its pod template (its `metadata` + `spec`), if it has one.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Injects every pod template in `text`.
pub fn inject_file(text: &str, settings: &Settings) -> Result<Injected, InjectFileError> {
    let docs = documents::parse(text)?;
    let mut reports = Vec::new();
    let mut out = Vec::new();
    for doc in docs {
        let Some(mut value) = doc.value else { continue };
        inject_object(&mut value, doc.index, doc.line, settings, &mut reports)?;
        out.push(value);
    }
    let yaml = documents::to_yaml(&out).map_err(|e| InjectFileError::Output(e.to_string()))?;
    Ok(Injected { yaml, reports })
}

/// One object: a workload, a `List` of objects, or anything else (left as it is).
fn inject_object(
    value: &mut Value,
    index: usize,
    line: usize,
    settings: &Settings,
    reports: &mut Vec<Report>,
) -> Result<(), InjectFileError> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some_and(Value::is_array) {
        if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_object(item, index, line, settings, reports)?;
            }
        }
        return Ok(());
    }
    // Only the core and workload API groups hold these kinds.
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let core = matches!(api_version, "v1" | "apps/v1" | "batch/v1");
    let Some(path) = template_path(&kind).filter(|_| core) else { return Ok(()) };
    let metadata = value.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("(unnamed)").to_owned();
    let namespace = metadata.and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_owned);
    let owner: Option<Map<String, Value>> = if path.is_empty() {
        None
    } else {
        metadata.and_then(|m| m.get("annotations")).and_then(Value::as_object).cloned()
    };
    let fail = |field: String, reason: String| InjectFileError::Template {
        index,
        line,
        kind: kind.clone(),
        name: name.clone(),
        field,
        reason,
    };
    let prefix: String = path.iter().map(|p| format!("{p}.")).collect();
    let mut template = &mut *value;
    for (depth, step) in path.iter().enumerate() {
        template = template
            .get_mut(*step)
            .filter(|v| v.is_object())
            .ok_or_else(|| fail(path[..=depth].join("."), ": missing".into()))?;
    }
    let outcome = pod::inject(template, owner.as_ref(), namespace.as_deref(), settings).map_err(|e| {
        let field = format!("{prefix}{}", e.field).trim_end_matches('.').to_owned();
        fail(field, format!(": {}", e.reason))
    })?;
    reports.push(Report { index, workload: format!("{kind}/{name}"), outcome });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "\
# the app
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
spec: {template: {spec: {containers: []}}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, annotations: {trellis.dev/inject: disabled}}
spec:
  schedule: '@daily'
  jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: j, image: busybox}]}}}}
";

    fn settings() -> Settings {
        Settings::new("PEM".into(), crate::SYSTEM_NAMESPACE)
    }

    #[test]
    fn workloads_are_injected_and_the_rest_passes_through() {
        let out = inject_file(APP, &settings()).unwrap();
        let workloads: Vec<(&str, bool)> =
            out.reports.iter().map(|r| (r.workload.as_str(), matches!(r.outcome, Outcome::Injected { .. }))).collect();
        assert_eq!(workloads, [("Deployment/web", true), ("CronJob/nightly", false)]);
        let docs: Vec<Value> = documents::parse(&out.yaml).unwrap().into_iter().filter_map(|d| d.value).collect();
        let originals: Vec<Value> = documents::parse(APP).unwrap().into_iter().filter_map(|d| d.value).collect();
        assert_eq!(docs.len(), 4);
        assert_ne!(docs[0], originals[0]);
        assert_eq!(docs[1..], originals[1..], "service, unknown kind and opted-out cron job unchanged");
        let again = inject_file(&out.yaml, &settings()).unwrap();
        assert_eq!(again.yaml, out.yaml, "injecting twice equals injecting once");
    }

    #[test]
    fn a_broken_template_names_the_document_and_field() {
        let bad = APP.replace(
            "containers: [{name: web, image: nginx}]",
            "containers: [{name: web, image: nginx}]\n      volumes: {}",
        );
        let e = inject_file(&bad, &settings()).unwrap_err().to_string();
        assert_eq!(e, "document 1 (line 1), Deployment web: spec.template.spec.volumes: must be a list");
        let bad = APP.replace("  template:\n", "  tmpl:\n");
        let e = inject_file(&bad, &settings()).unwrap_err().to_string();
        assert_eq!(e, "document 1 (line 1), Deployment web: spec.template: missing");
    }

    #[test]
    fn lists_are_walked() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: [{name: a, image: b}]}\n";
        let out = inject_file(list, &settings()).unwrap();
        assert_eq!(out.reports.len(), 1);
        assert!(out.yaml.contains("trellis-proxy"), "{}", out.yaml);
    }
}
