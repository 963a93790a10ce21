//! The admission side of injection: an AdmissionReview (`admission.k8s.io/v1`) in, the
//! same review out with a `response` that echoes the request's `uid`, allows the pod and,
//! when the proxy goes in, carries the mutation as a base64 JSONPatch (RFC 6902).
//! Opt-outs, other kinds and other operations are allowed without a patch; a pod whose
//! annotations are wrong is refused with a message naming the annotation.

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::pod::{self, Outcome, Settings};

const API_VERSION: &str = "admission.k8s.io/v1";

/// A body that is not an AdmissionReview v1 (answered 400).
#[derive(Debug, thiserror::Error)]
#[error("not an AdmissionReview ({API_VERSION}): {0}")]
pub struct ReviewError(String);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// The answer to one review, before it is wrapped.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Allowed as it is (why, for the log).
    Unchanged(String),
    /// Allowed with this patch (JSON Patch operations) and these warnings.
    Patched { patch: Value, warnings: Vec<String> },
    /// Refused (400) with this message.
    Refused(String),
}

/// Reads a review and decides. `Err` only when the body is not an AdmissionReview.
pub fn decide(body: &[u8], settings: &Settings) -> Result<(String, Verdict), ReviewError> {
    let review: Review = serde_json::from_slice(body).map_err(|e| ReviewError(e.to_string()))?;
    if review.api_version != API_VERSION || review.kind != "AdmissionReview" {
        return Err(ReviewError(format!("got apiVersion {:?}, kind {:?}", review.api_version, review.kind)));
    }
    let request = review.request.ok_or_else(|| ReviewError("no `request`".into()))?;
    if request.uid.is_empty() {
        return Err(ReviewError("request.uid is empty".into()));
    }
    let verdict =
        verdict(request.kind, request.operation.as_deref(), request.namespace.as_deref(), request.object, settings);
    Ok((request.uid, verdict))
}

fn verdict(
    kind: GroupVersionKind,
    operation: Option<&str>,
    namespace: Option<&str>,
    object: Option<Value>,
    settings: &Settings,
) -> Verdict {
    if !kind.group.is_empty() || kind.kind != "Pod" {
        let group = if kind.group.is_empty() { String::new() } else { format!("{}/", kind.group) };
        return Verdict::Unchanged(format!("{group}{} is not a pod", kind.kind));
    }
    if operation.is_some_and(|op| op != "CREATE") {
        return Verdict::Unchanged(format!("operation {} (only CREATE is injected)", operation.unwrap_or_default()));
    }
    let Some(original) = object.filter(Value::is_object) else {
        return Verdict::Unchanged("no pod in the request".into());
    };
    let name = ["name", "generateName"]
        .iter()
        .find_map(|k| original.get("metadata")?.get(*k)?.as_str())
        .unwrap_or("(unnamed)")
        .to_owned();
    let namespace = namespace.or_else(|| original.get("metadata")?.get("namespace")?.as_str()).map(str::to_owned);
    let mut pod = original.clone();
    match pod::inject(&mut pod, None, namespace.as_deref(), settings) {
        Ok(Outcome::Skipped(why)) => Verdict::Unchanged(format!("pod {name}: {why}")),
        Ok(Outcome::Injected { warnings }) => {
            let patch = json_patch::diff(&original, &pod);
            if patch.0.is_empty() {
                return Verdict::Unchanged(format!("pod {name}: already injected"));
            }
            match serde_json::to_value(patch) {
                Ok(patch) => Verdict::Patched { patch, warnings },
                Err(e) => Verdict::Refused(format!("pod {name}: cannot encode the patch: {e}")),
            }
        }
        Err(e) => Verdict::Refused(format!("pod {name}: trellis injection: {e}")),
    }
}

/// The AdmissionReview answer for `uid`.
pub fn response(uid: &str, verdict: &Verdict) -> Value {
    let body = match verdict {
        Verdict::Unchanged(_) => json!({ "uid": uid, "allowed": true }),
        Verdict::Patched { patch, warnings } => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            let mut r = json!({ "uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": encoded });
            if !warnings.is_empty() {
                r["warnings"] = json!(warnings);
            }
            r
        }
        Verdict::Refused(message) => {
            json!({ "uid": uid, "allowed": false, "status": { "code": 400, "message": message } })
        }
    };
    json!({ "apiVersion": API_VERSION, "kind": "AdmissionReview", "response": body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::new("PEM".into(), crate::SYSTEM_NAMESPACE)
    }

    fn review(kind: &str, namespace: &str, object: Value) -> Vec<u8> {
        json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": { "group": "", "version": "v1", "kind": kind },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": namespace,
                "operation": "CREATE",
                "object": object,
            },
        })
        .to_string()
        .into_bytes()
    }

    fn pod() -> Value {
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "generateName": "web-" },
                "spec": { "containers": [{ "name": "web", "image": "nginx" }] } })
    }

    #[test]
    fn a_pod_gets_a_patch_that_makes_the_injected_pod() {
        let (uid, verdict) = decide(&review("Pod", "shop", pod()), &settings()).unwrap();
        assert_eq!(uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        let Verdict::Patched { patch, .. } = &verdict else { panic!("{verdict:?}") };
        let ops: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
        let mut patched = pod();
        json_patch::patch(&mut patched, &ops).unwrap();
        let mut expected = pod();
        pod::inject(&mut expected, None, Some("shop"), &settings()).unwrap();
        assert_eq!(patched, expected);
        // Already injected: allowed, no patch.
        let (_, again) = decide(&review("Pod", "shop", patched), &settings()).unwrap();
        assert!(matches!(again, Verdict::Unchanged(ref why) if why.contains("already injected")), "{again:?}");
        let answer = response(&uid, &verdict);
        assert_eq!(answer["response"]["uid"], uid);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn other_kinds_reserved_namespaces_and_garbage() {
        let (_, v) = decide(&review("ConfigMap", "shop", json!({})), &settings()).unwrap();
        assert_eq!(v, Verdict::Unchanged("ConfigMap is not a pod".into()));
        let (_, v) = decide(&review("Pod", "trellis-system", pod()), &settings()).unwrap();
        assert!(matches!(v, Verdict::Unchanged(ref why) if why.contains("never injected")), "{v:?}");
        let e = decide(b"{\"apiVersion\": \"v1\", \"kind\": \"Pod\"}", &settings()).unwrap_err();
        assert!(e.to_string().contains("apiVersion \"v1\""), "{e}");
        assert!(decide(b"not json", &settings()).is_err());
        let mut bad = pod();
        bad["metadata"]["annotations"] = json!({ "trellis.dev/skip-inbound-ports": "x" });
        let (_, v) = decide(&review("Pod", "shop", bad), &settings()).unwrap();
        assert!(matches!(v, Verdict::Refused(ref m) if m.contains("skip-inbound-ports")), "{v:?}");
    }
}
