//! The mutation of one pod template: what `trellis inject` and the webhook both do.
//!
//! A template (`metadata` + `spec`) gets, in front of its init containers, `trellis-init`
//! (`trellis proxy-init`, the iptables redirect, with NET_ADMIN and NET_RAW only) and
//! `trellis-proxy`, a native sidecar (`restartPolicy: Always`) running as UID 2102 that
//! builds its bootstrap from the pod at start ([`crate::sidecar`]); the volumes they mount
//! (memory-backed working directory, the projected service-account token with audience
//! `trellis` and the trust bundle); and the trust bundle as an annotation, which the
//! projected volume turns into a file. Whatever an earlier injection added is removed
//! first, so injecting twice equals injecting once.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::sidecar::env as sidecar_env;
use crate::{
    ADMIN_PORT, ANNOTATION_INBOUND_TLS, ANNOTATION_INJECT, ANNOTATION_SKIP_INBOUND_PORTS,
    ANNOTATION_SKIP_OUTBOUND_PORTS, ANNOTATION_SKIP_SUBNETS, ANNOTATION_TRUST_BUNDLE, INBOUND_PORT, OUTBOUND_PORT,
    PROXY_UID, SYSTEM_NAMESPACE, TOKEN_AUDIENCE,
};

/// The init container that installs the redirect.
pub const INIT_CONTAINER: &str = "trellis-init";
/// The proxy's container (a native sidecar among the init containers).
pub const PROXY_CONTAINER: &str = "trellis-proxy";
/// The proxy's working directory: bootstrap, key and certificate (memory-backed).
pub const RUN_VOLUME: &str = "trellis-run";
pub const RUN_DIR: &str = "/var/run/trellis";
/// The projected service-account token and the trust bundle.
pub const CREDENTIALS_VOLUME: &str = "trellis-credentials";
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/trellis.dev";
/// Room for iptables' lock file while the root filesystem is read-only.
pub const XTABLES_VOLUME: &str = "trellis-xtables";
/// Every volume an injection adds.
const VOLUMES: [&str; 3] = [RUN_VOLUME, CREDENTIALS_VOLUME, XTABLES_VOLUME];
/// Lifetime asked for the projected token; the kubelet renews it at 80%.
const TOKEN_SECONDS: u64 = 3600;

/// What an injection needs to know beyond the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The image of the proxy and of `trellis-init` (the `trellis` binary and iptables).
    pub image: String,
    pub image_pull_policy: String,
    /// The control plane's host name (its Service), e.g.
    /// `trellis-control-plane.trellis-system.svc`.
    pub control_plane: String,
    /// The mesh's trust bundle, PEM.
    pub trust_bundle: String,
    pub proxy_resources: Resources,
}

/// CPU and memory for the proxy container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: "1".into(),
            memory_limit: "256Mi".into(),
        }
    }
}

impl Settings {
    /// Defaults for a control plane installed in `namespace` (`trellis install`).
    pub fn new(trust_bundle: String, namespace: &str) -> Settings {
        Settings {
            image: crate::default_image(),
            image_pull_policy: "IfNotPresent".into(),
            control_plane: format!("trellis-control-plane.{namespace}.svc"),
            trust_bundle,
            proxy_resources: Resources::default(),
        }
    }
}

/// What happened to a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The proxy is in; warnings are for the user (e.g. probes that mTLS will break).
    Injected { warnings: Vec<String> },
    /// Left as it was, and why.
    Skipped(Skip),
}

/// Why a template was left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `trellis.dev/inject: disabled` on the pod or its workload.
    OptedOut,
    /// A host-network pod: a redirect there would capture the node's traffic.
    HostNetwork,
    /// The control plane's own namespace (or Kubernetes' own).
    ReservedNamespace(String),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::OptedOut => write!(f, "{ANNOTATION_INJECT}: disabled"),
            Skip::HostNetwork => f.write_str("hostNetwork: true (the redirect would capture the node's traffic)"),
            Skip::ReservedNamespace(ns) => write!(f, "namespace {ns} is never injected"),
        }
    }
}

/// A template that cannot be injected; `field` is the path under the template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct InjectError {
    pub field: String,
    pub reason: String,
}

fn error(field: impl Into<String>, reason: impl Into<String>) -> InjectError {
    InjectError { field: field.into(), reason: reason.into() }
}

/// Namespaces no pod of which is ever injected.
pub fn reserved_namespace(namespace: &str) -> bool {
    matches!(namespace, SYSTEM_NAMESPACE | "kube-system" | "kube-public" | "kube-node-lease")
}

/// The per-pod choices read from annotations.
#[derive(Debug, Default)]
struct Choices {
    skip_inbound: Vec<u16>,
    skip_outbound: Vec<u16>,
    skip_subnets: Vec<String>,
    permissive: bool,
}

fn annotation<'a>(annotations: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, InjectError> {
    match annotations.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(_) => Err(error(format!("metadata.annotations[{key}]"), "must be a string")),
    }
}

fn ports(annotations: &Map<String, Value>, key: &str) -> Result<Vec<u16>, InjectError> {
    let Some(list) = annotation(annotations, key)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(p) if p > 0 => out.push(p),
            _ => {
                return Err(error(
                    format!("metadata.annotations[{key}]"),
                    format!("\"{item}\" is not a port (1-65535); write ports separated by commas"),
                ));
            }
        }
    }
    Ok(out)
}

fn subnets(annotations: &Map<String, Value>) -> Result<Vec<String>, InjectError> {
    let key = ANNOTATION_SKIP_SUBNETS;
    let Some(list) = annotation(annotations, key)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let valid = item.split_once('/').is_some_and(|(ip, len)| match (ip.parse::<IpAddr>(), len.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(l)) => l <= 32,
            (Ok(IpAddr::V6(_)), Ok(l)) => l <= 128,
            _ => false,
        });
        if !valid {
            return Err(error(
                format!("metadata.annotations[{key}]"),
                format!("\"{item}\" is not a subnet in CIDR form (e.g. 10.0.0.0/8)"),
            ));
        }
        out.push(item.to_owned());
    }
    Ok(out)
}

fn choices(annotations: &Map<String, Value>) -> Result<Choices, InjectError> {
    let permissive = match annotation(annotations, ANNOTATION_INBOUND_TLS)? {
        None | Some("mesh") => false,
        Some("permissive") => true,
        Some(other) => {
            return Err(error(
                format!("metadata.annotations[{ANNOTATION_INBOUND_TLS}]"),
                format!("\"{other}\": must be mesh or permissive"),
            ));
        }
    };
    Ok(Choices {
        skip_inbound: ports(annotations, ANNOTATION_SKIP_INBOUND_PORTS)?,
        skip_outbound: ports(annotations, ANNOTATION_SKIP_OUTBOUND_PORTS)?,
        skip_subnets: subnets(annotations)?,
        permissive,
    })
}

/// Whether `annotations` opt out; an unknown value is an error, not a silent choice.
fn opted_out(annotations: Option<&Map<String, Value>>) -> Result<bool, InjectError> {
    let Some(annotations) = annotations else { return Ok(false) };
    match annotation(annotations, ANNOTATION_INJECT)? {
        None | Some("enabled") => Ok(false),
        Some("disabled") => Ok(true),
        Some(other) => Err(error(
            format!("metadata.annotations[{ANNOTATION_INJECT}]"),
            format!("\"{other}\": must be enabled or disabled"),
        )),
    }
}

/// Injects the proxy into `template` (an object with `metadata` and `spec`: a Pod, or a
/// workload's pod template). `owner` holds the workload's own annotations, whose opt-out
/// counts too. `namespace` is the pod's when known (the webhook knows it; a file may not).
pub fn inject(
    template: &mut Value,
    owner: Option<&Map<String, Value>>,
    namespace: Option<&str>,
    settings: &Settings,
) -> Result<Outcome, InjectError> {
    let object = template.as_object_mut().ok_or_else(|| error("", "must be a mapping"))?;
    if let Some(ns) = namespace.filter(|ns| reserved_namespace(ns)) {
        return Ok(Outcome::Skipped(Skip::ReservedNamespace(ns.to_owned())));
    }
    let annotations = match object.get("metadata").and_then(|m| m.get("annotations")) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a.clone(),
        Some(_) => return Err(error("metadata.annotations", "must be a mapping")),
    };
    if opted_out(owner)? || opted_out(Some(&annotations))? {
        return Ok(Outcome::Skipped(Skip::OptedOut));
    }
    let choices = choices(&annotations)?;
    let spec = object.get_mut("spec").and_then(Value::as_object_mut).ok_or_else(|| error("spec", "missing"))?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    if !spec.get("containers").is_some_and(Value::is_array) {
        return Err(error("spec.containers", "missing: a pod needs at least one container"));
    }
    let warnings = if choices.permissive { Vec::new() } else { probe_warnings(spec, &choices.skip_inbound) };

    let mut init = remove_ours(spec, "initContainers", &[INIT_CONTAINER, PROXY_CONTAINER])?;
    init.insert(0, proxy_container(settings, &choices));
    init.insert(0, init_container(settings, &choices));
    spec.insert("initContainers".into(), Value::Array(init));
    let mut volumes = remove_ours(spec, "volumes", &VOLUMES)?;
    volumes.extend(self::volumes());
    spec.insert("volumes".into(), Value::Array(volumes));

    let metadata = object.entry("metadata").or_insert_with(|| json!({}));
    let metadata = metadata.as_object_mut().ok_or_else(|| error("metadata", "must be a mapping"))?;
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if annotations.is_null() {
        *annotations = json!({});
    }
    if let Some(a) = annotations.as_object_mut() {
        a.insert(ANNOTATION_TRUST_BUNDLE.into(), Value::String(settings.trust_bundle.clone()));
    }
    Ok(Outcome::Injected { warnings })
}

/// Takes `spec[field]` (a list) without the entries named in `ours`.
fn remove_ours(spec: &mut Map<String, Value>, field: &str, ours: &[&str]) -> Result<Vec<Value>, InjectError> {
    let list = match spec.remove(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(error(format!("spec.{field}"), "must be a list")),
    };
    Ok(list
        .into_iter()
        .filter(|item| !item.get("name").and_then(Value::as_str).is_some_and(|n| ours.contains(&n)))
        .collect())
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// `trellis proxy-init` with the flags of DESIGN §9. The admin port is always skipped
/// inbound: the kubelet's probes of the proxy must not be redirected into it.
pub fn proxy_init_args(choices_inbound: &[u16], outbound: &[u16], subnets: &[String]) -> Vec<String> {
    let mut inbound = vec![ADMIN_PORT];
    inbound.extend(choices_inbound.iter().filter(|p| **p != ADMIN_PORT));
    let mut args: Vec<String> = vec![
        "proxy-init".into(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--skip-inbound-ports".into(),
        join(&inbound),
    ];
    if !outbound.is_empty() {
        args.extend(["--skip-outbound-ports".into(), join(outbound)]);
    }
    if !subnets.is_empty() {
        args.extend(["--skip-subnets".into(), join(subnets)]);
    }
    args
}

fn init_container(settings: &Settings, choices: &Choices) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["trellis"],
        "args": proxy_init_args(&choices.skip_inbound, &choices.skip_outbound, &choices.skip_subnets),
        "resources": {
            "requests": { "cpu": "10m", "memory": "16Mi" },
            "limits": { "cpu": "100m", "memory": "64Mi" },
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
        },
        "volumeMounts": [{ "name": XTABLES_VOLUME, "mountPath": "/run" }],
    })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } })
}

fn proxy_container(settings: &Settings, choices: &Choices) -> Value {
    let cp = &settings.control_plane;
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": { "path": path, "port": ADMIN_PORT },
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    let r = &settings.proxy_resources;
    json!({
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["trellis"],
        "args": ["proxy", "--sidecar", "--config", format!("{RUN_DIR}/proxy.yaml")],
        "env": [
            field_env(sidecar_env::POD_NAME, "metadata.name"),
            field_env(sidecar_env::POD_NAMESPACE, "metadata.namespace"),
            field_env(sidecar_env::POD_SERVICE_ACCOUNT, "spec.serviceAccountName"),
            field_env(sidecar_env::POD_IP, "status.podIP"),
            { "name": sidecar_env::CONTROL_PLANE_API, "value": format!("https://{cp}:{}", crate::CONTROL_PLANE_API_PORT) },
            { "name": sidecar_env::CONTROL_PLANE_DISCOVERY, "value": format!("https://{cp}:{}", crate::CONTROL_PLANE_XDS_PORT) },
            { "name": sidecar_env::INBOUND_TLS, "value": if choices.permissive { "permissive" } else { "mesh" } },
        ],
        "ports": [
            { "name": "trellis-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP" },
            { "name": "trellis-admin", "containerPort": ADMIN_PORT, "protocol": "TCP" },
        ],
        // The app starts once the proxy has its identity and first config.
        "startupProbe": probe("/ready", 1, 120),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "resources": {
            "requests": { "cpu": r.cpu_request, "memory": r.memory_request },
            "limits": { "cpu": r.cpu_limit, "memory": r.memory_limit },
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": [
            { "name": RUN_VOLUME, "mountPath": RUN_DIR },
            { "name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": true },
        ],
    })
}

fn volumes() -> [Value; 3] {
    [
        json!({ "name": RUN_VOLUME, "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } }),
        json!({
            "name": CREDENTIALS_VOLUME,
            "projected": {
                "sources": [
                    { "serviceAccountToken": { "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "token" } },
                    { "downwardAPI": { "items": [{
                        "path": "ca.pem",
                        "fieldRef": { "fieldPath": format!("metadata.annotations['{ANNOTATION_TRUST_BUNDLE}']") },
                    }] } },
                ],
            },
        }),
        json!({ "name": XTABLES_VOLUME, "emptyDir": { "medium": "Memory", "sizeLimit": "1Mi" } }),
    ]
}

/// Probes of the app that go through the inbound listener: in `mesh` mode the kubelet's
/// plaintext probe fails there.
fn probe_warnings(spec: &Map<String, Value>, skipped: &[u16]) -> Vec<String> {
    let mut warnings = Vec::new();
    let containers = spec.get("containers").and_then(Value::as_array).into_iter().flatten();
    for container in containers {
        let name = container.get("name").and_then(Value::as_str).unwrap_or("?");
        for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(probe) = container.get(kind) else { continue };
            let port = ["httpGet", "tcpSocket", "grpc"].iter().find_map(|h| probe.get(*h)?.get("port"));
            let Some(port) = port else { continue };
            let number = match port {
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Value::String(named) => container
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some(named))
                    .and_then(|p| p.get("containerPort")?.as_u64())
                    .and_then(|n| u16::try_from(n).ok()),
                _ => None,
            };
            if number.is_some_and(|n| skipped.contains(&n)) {
                continue;
            }
            let shown = number.map_or_else(|| port.to_string(), |n| n.to_string());
            warnings.push(format!(
                "container {name}: the kubelet's plaintext {kind} on port {shown} is refused by the proxy's mTLS-only inbound listener; \
                 annotate the pod {ANNOTATION_INBOUND_TLS}: permissive, or {ANNOTATION_SKIP_INBOUND_PORTS}: \"{shown}\" if that port serves only probes"
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::new("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(), SYSTEM_NAMESPACE)
    }

    fn pod() -> Value {
        json!({
            "metadata": { "labels": { "app": "web" } },
            "spec": {
                "serviceAccountName": "web",
                "initContainers": [{ "name": "migrate", "image": "busybox" }],
                "containers": [{ "name": "web", "image": "nginx", "ports": [{ "name": "http", "containerPort": 8080 }],
                                 "readinessProbe": { "httpGet": { "path": "/", "port": "http" } } }],
                "volumes": [{ "name": "data", "emptyDir": {} }],
            },
        })
    }

    #[test]
    fn the_proxy_goes_first_as_a_native_sidecar_and_twice_is_once() {
        let mut once = pod();
        let outcome = inject(&mut once, None, None, &settings()).unwrap();
        let Outcome::Injected { warnings } = outcome else { panic!("{outcome:?}") };
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("port 8080"), "{warnings:?}");
        let init: Vec<&str> =
            once["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(init, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
        assert_eq!(once["spec"]["initContainers"][1]["restartPolicy"], "Always");
        assert_eq!(once["spec"]["initContainers"][1]["securityContext"]["runAsUser"], PROXY_UID);
        assert_eq!(
            once["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        assert_eq!(once["spec"]["volumes"].as_array().unwrap().len(), 4);
        let mut twice = once.clone();
        inject(&mut twice, None, None, &settings()).unwrap();
        assert_eq!(twice, once);
    }

    #[test]
    fn skip_annotations_reach_proxy_init_and_bad_ones_are_named() {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({
            ANNOTATION_SKIP_INBOUND_PORTS: "8080, 9000",
            ANNOTATION_SKIP_OUTBOUND_PORTS: "5432",
            ANNOTATION_SKIP_SUBNETS: "10.96.0.0/12,fd00::/8",
        });
        let outcome = inject(&mut p, None, None, &settings()).unwrap();
        assert_eq!(outcome, Outcome::Injected { warnings: vec![] }, "the probe's port is skipped");
        let args = &p["spec"]["initContainers"][0]["args"];
        assert_eq!(
            args,
            &json!([
                "proxy-init",
                "--inbound-port",
                "4143",
                "--outbound-port",
                "4140",
                "--proxy-uid",
                "2102",
                "--skip-inbound-ports",
                "9901,8080,9000",
                "--skip-outbound-ports",
                "5432",
                "--skip-subnets",
                "10.96.0.0/12,fd00::/8"
            ])
        );
        p["metadata"]["annotations"][ANNOTATION_SKIP_OUTBOUND_PORTS] = json!("5432,http");
        let e = inject(&mut p, None, None, &settings()).unwrap_err();
        assert_eq!(e.field, "metadata.annotations[trellis.dev/skip-outbound-ports]");
        assert!(e.reason.contains("\"http\" is not a port"), "{e}");
    }

    #[test]
    fn opt_outs_host_network_and_reserved_namespaces_are_left_alone() {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({ ANNOTATION_INJECT: "disabled" });
        let before = p.clone();
        assert_eq!(inject(&mut p, None, None, &settings()).unwrap(), Outcome::Skipped(Skip::OptedOut));
        assert_eq!(p, before);

        let mut p = pod();
        let owner = json!({ ANNOTATION_INJECT: "disabled" });
        assert_eq!(inject(&mut p, owner.as_object(), None, &settings()).unwrap(), Outcome::Skipped(Skip::OptedOut));

        let mut p = pod();
        p["spec"]["hostNetwork"] = json!(true);
        assert_eq!(inject(&mut p, None, None, &settings()).unwrap(), Outcome::Skipped(Skip::HostNetwork));

        let mut p = pod();
        assert_eq!(
            inject(&mut p, None, Some("kube-system"), &settings()).unwrap(),
            Outcome::Skipped(Skip::ReservedNamespace("kube-system".into()))
        );

        let mut p = pod();
        p["metadata"]["annotations"] = json!({ ANNOTATION_INJECT: "maybe" });
        assert!(inject(&mut p, None, None, &settings()).unwrap_err().reason.contains("enabled or disabled"));
    }
}
