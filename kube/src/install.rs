//! `trellis install`: the manifests of a mesh on Kubernetes, in the order `kubectl apply`
//! needs them: the namespace, service accounts and RBAC, the control plane (PVC for its
//! redb store, Deployment, Service), the injector (Deployment, Service) and the mutating
//! webhook that sends it every new pod outside the system namespaces.
//!
//! Secrets are referenced by name (`trellis-ca`: the mesh CA; `trellis-injector-tls`: the
//! webhook's serving certificate; `trellis-admin-token`: the REST API's bearer token). With
//! [`Secrets`] they are printed too and the webhook's `caBundle` filled in; without, the
//! output is the same on every run (it is what `deploy/` keeps).

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use trellis_certs::{Ca, DEFAULT_TRUST_DOMAIN, SpiffeId};

use crate::{ANNOTATION_INJECT, CONTROL_PLANE_API_PORT, CONTROL_PLANE_XDS_PORT, INJECTOR_PORT};

pub const CONTROL_PLANE: &str = "trellis-control-plane";
pub const INJECTOR: &str = "trellis-injector";
pub const CA_SECRET: &str = "trellis-ca";
pub const INJECTOR_TLS_SECRET: &str = "trellis-injector-tls";
pub const ADMIN_TOKEN_SECRET: &str = "trellis-admin-token";
/// Where the cluster publishes the keys that sign service-account tokens.
pub const CLUSTER_JWKS_URL: &str = "https://kubernetes.default.svc/openid/v1/jwks";
/// The users the control plane and injector run as (and their volumes' group).
const CONTROL_PLANE_UID: u32 = 2103;
const INJECTOR_UID: u32 = 2104;
/// Validity of the injector's serving certificate made by `--ca-dir`.
const INJECTOR_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// What to install.
#[derive(Clone, Debug)]
pub struct Install {
    pub namespace: String,
    pub image: String,
    pub image_pull_policy: String,
    /// Print the secrets too (else they must exist under their names).
    pub secrets: Option<Secrets>,
}

/// Secret material to print with the manifests.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// The mesh CA: its Secret, the webhook's certificate issued from it, `caBundle`.
    pub ca: Option<(String, String)>,
    /// The REST API's bearer token.
    pub admin_token: Option<String>,
}

/// Why the manifests cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Certs(#[from] trellis_certs::CertError),
    #[error("--namespace {0:?}: must be a DNS label (lowercase letters, digits and '-', at most 63)")]
    Namespace(String),
    #[error("cannot write YAML: {0}")]
    Output(String),
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Install {
    pub fn new(namespace: impl Into<String>) -> Install {
        Install {
            namespace: namespace.into(),
            image: crate::default_image(),
            image_pull_policy: "IfNotPresent".into(),
            secrets: None,
        }
    }

    /// The manifests as multi-document YAML.
    pub fn to_yaml(&self) -> Result<String, InstallError> {
        let docs = self.manifests()?;
        let body = crate::documents::to_yaml(&docs).map_err(|e| InstallError::Output(e.to_string()))?;
        Ok(format!(
            "# Trellis {} on Kubernetes (>= 1.29): `trellis install` prints this; docs/kubernetes.md explains it.\n{body}",
            env!("CARGO_PKG_VERSION")
        ))
    }

    /// The manifests, in apply order.
    pub fn manifests(&self) -> Result<Vec<Value>, InstallError> {
        if !dns_label(&self.namespace) {
            return Err(InstallError::Namespace(self.namespace.clone()));
        }
        let ns = self.namespace.as_str();
        let mut docs = vec![
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": ns, "labels": { ANNOTATION_INJECT: "disabled" } },
            }),
            service_account(ns, CONTROL_PLANE),
            service_account(ns, INJECTOR),
            // Reading the cluster's service-account signing keys (`--workload-jwks-url`).
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": { "name": format!("{CONTROL_PLANE}-{ns}-jwks"), "labels": labels(CONTROL_PLANE) },
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:service-account-issuer-discovery",
                },
                "subjects": [{ "kind": "ServiceAccount", "name": CONTROL_PLANE, "namespace": ns }],
            }),
        ];
        let mut ca_bundle = None;
        if let Some(secrets) = &self.secrets {
            if let Some((cert, key)) = &secrets.ca {
                docs.extend(self.ca_secrets(cert, key)?);
                ca_bundle = Some(base64::engine::general_purpose::STANDARD.encode(cert));
            }
            if let Some(token) = &secrets.admin_token {
                docs.push(secret(ns, ADMIN_TOKEN_SECRET, "Opaque", json!({ "token": token })));
            }
        }
        docs.extend([
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": { "name": format!("{CONTROL_PLANE}-data"), "namespace": ns, "labels": labels(CONTROL_PLANE) },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
            }),
            self.control_plane(),
            service(ns, CONTROL_PLANE, json!([
                { "name": "api", "port": CONTROL_PLANE_API_PORT, "targetPort": "api", "protocol": "TCP" },
                { "name": "grpc-discovery", "port": CONTROL_PLANE_XDS_PORT, "targetPort": "discovery", "protocol": "TCP" },
            ])),
            self.injector(),
            service(ns, INJECTOR, json!([
                { "name": "https", "port": 443, "targetPort": "https", "protocol": "TCP" },
            ])),
            webhook_configuration(ns, ca_bundle),
        ]);
        Ok(docs)
    }

    fn ca_secrets(&self, cert: &str, key: &str) -> Result<[Value; 2], InstallError> {
        let ns = &self.namespace;
        let ca = Ca::from_pem(cert, key)?;
        let id = SpiffeId::workload(DEFAULT_TRUST_DOMAIN, ns, INJECTOR)?;
        let names = vec![format!("{INJECTOR}.{ns}.svc"), format!("{INJECTOR}.{ns}.svc.cluster.local")];
        let issued = ca.issue(&id, INJECTOR_CERT_TTL, &names)?;
        Ok([
            secret(ns, CA_SECRET, "Opaque", json!({ "ca.pem": cert, "ca.key": key })),
            secret(
                ns,
                INJECTOR_TLS_SECRET,
                "kubernetes.io/tls",
                json!({ "tls.crt": issued.cert_pem, "tls.key": issued.key_pem }),
            ),
        ])
    }

    fn container(&self, name: &str, args: Vec<String>) -> Value {
        json!({
            "name": name,
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            "command": ["trellis"],
            "args": args,
        })
    }

    fn control_plane(&self) -> Value {
        let ns = &self.namespace;
        let mut c = self.container(
            "control-plane",
            [
                "control-plane",
                "--data-dir=/var/lib/trellis",
                &format!("--api-addr=0.0.0.0:{CONTROL_PLANE_API_PORT}"),
                &format!("--xds-addr=0.0.0.0:{CONTROL_PLANE_XDS_PORT}"),
                "--api-tls",
                "--xds-tls",
                "--token-file=/etc/trellis/admin/token",
                &format!("--workload-jwks-url={CLUSTER_JWKS_URL}"),
            ]
            .map(str::to_owned)
            .to_vec(),
        );
        merge(
            &mut c,
            serving(json!([
                { "name": "api", "containerPort": CONTROL_PLANE_API_PORT, "protocol": "TCP" },
                { "name": "discovery", "containerPort": CONTROL_PLANE_XDS_PORT, "protocol": "TCP" },
            ])),
        );
        merge(
            &mut c,
            json!({
                "resources": {
                    "requests": { "cpu": "100m", "memory": "128Mi" },
                    "limits": { "cpu": "2", "memory": "1Gi" },
                },
                "volumeMounts": [
                    { "name": "data", "mountPath": "/var/lib/trellis" },
                    { "name": "ca", "mountPath": "/var/lib/trellis/ca", "readOnly": true },
                    { "name": "admin-token", "mountPath": "/etc/trellis/admin", "readOnly": true },
                ],
            }),
        );
        deployment(
            ns,
            CONTROL_PLANE,
            CONTROL_PLANE_UID,
            c,
            json!([
                { "name": "data", "persistentVolumeClaim": { "claimName": format!("{CONTROL_PLANE}-data") } },
                { "name": "ca", "secret": { "secretName": CA_SECRET, "defaultMode": 0o440 } },
                { "name": "admin-token", "secret": { "secretName": ADMIN_TOKEN_SECRET, "defaultMode": 0o440 } },
            ]),
            // One writer of the redb store at a time.
            json!({ "type": "Recreate" }),
        )
    }

    fn injector(&self) -> Value {
        let ns = &self.namespace;
        let mut c = self.container(
            "injector",
            vec![
                "injector".into(),
                format!("--addr=0.0.0.0:{INJECTOR_PORT}"),
                "--tls-cert=/etc/trellis/tls/tls.crt".into(),
                "--tls-key=/etc/trellis/tls/tls.key".into(),
                "--trust-bundle=/etc/trellis/trust/ca.pem".into(),
                format!("--image={}", self.image),
                format!("--image-pull-policy={}", self.image_pull_policy),
                format!("--control-plane={CONTROL_PLANE}.{ns}.svc"),
            ],
        );
        merge(&mut c, serving(json!([{ "name": "https", "containerPort": INJECTOR_PORT, "protocol": "TCP" }])));
        merge(
            &mut c,
            json!({
                "resources": {
                    "requests": { "cpu": "50m", "memory": "32Mi" },
                    "limits": { "cpu": "500m", "memory": "128Mi" },
                },
                "volumeMounts": [
                    { "name": "tls", "mountPath": "/etc/trellis/tls", "readOnly": true },
                    { "name": "trust", "mountPath": "/etc/trellis/trust", "readOnly": true },
                ],
            }),
        );
        deployment(
            ns,
            INJECTOR,
            INJECTOR_UID,
            c,
            json!([
                { "name": "tls", "secret": { "secretName": INJECTOR_TLS_SECRET, "defaultMode": 0o440 } },
                // Only the CA's certificate: the injector never sees its key.
                { "name": "trust", "secret": { "secretName": CA_SECRET, "defaultMode": 0o440,
                                                "items": [{ "key": "ca.pem", "path": "ca.pem" }] } },
            ]),
            json!({ "type": "RollingUpdate" }),
        )
    }
}

/// Adds `extra`'s fields to `into` (both objects).
fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// Ports, and probes of `GET /healthz` over HTTPS on the first one, under `restricted()`.
fn serving(ports: Value) -> Value {
    let port = ports[0]["name"].clone();
    let probe = |period: u32| json!({ "httpGet": { "path": "/healthz", "port": port, "scheme": "HTTPS" }, "periodSeconds": period });
    json!({
        "ports": ports,
        "readinessProbe": probe(5),
        "livenessProbe": probe(10),
        "securityContext": restricted(),
    })
}

fn labels(component: &str) -> Value {
    json!({ "app.kubernetes.io/name": component, "app.kubernetes.io/part-of": "trellis" })
}

fn restricted() -> Value {
    json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

fn service_account(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": { "name": name, "namespace": ns, "labels": labels(name) },
    })
}

fn secret(ns: &str, name: &str, kind: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": kind,
        "metadata": { "name": name, "namespace": ns, "labels": labels("trellis") },
        "stringData": data,
    })
}

fn service(ns: &str, name: &str, ports: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": ns, "labels": labels(name) },
        "spec": { "selector": { "app.kubernetes.io/name": name }, "ports": ports },
    })
}

fn deployment(ns: &str, name: &str, uid: u32, container: Value, volumes: Value, strategy: Value) -> Value {
    // Only the control plane talks to the API server (for the cluster's JWKS).
    let api_token = name == CONTROL_PLANE;
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": ns, "labels": labels(name) },
        "spec": {
            "replicas": 1,
            "strategy": strategy,
            "selector": { "matchLabels": { "app.kubernetes.io/name": name } },
            "template": {
                "metadata": { "labels": labels(name) },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": api_token,
                    "securityContext": {
                        "runAsUser": uid,
                        "runAsGroup": uid,
                        "fsGroup": uid,
                        "runAsNonRoot": true,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    })
}

fn webhook_configuration(ns: &str, ca_bundle: Option<String>) -> Value {
    let mut client = json!({ "service": { "name": INJECTOR, "namespace": ns, "path": "/inject", "port": 443 } });
    if let Some(bundle) = ca_bundle {
        client["caBundle"] = json!(bundle);
    }
    let mut excluded = vec![ns.to_owned()];
    excluded.extend(["trellis-system", "kube-system", "kube-public", "kube-node-lease"].map(str::to_owned));
    excluded.dedup();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": INJECTOR, "labels": labels(INJECTOR) },
        "webhooks": [{
            "name": "inject.trellis.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            // A pod made while the injector is down runs without the proxy rather than
            // not at all; re-create it to inject it.
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
            "clientConfig": client,
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": {
                "matchExpressions": [
                    { "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded },
                    { "key": ANNOTATION_INJECT, "operator": "NotIn", "values": ["disabled"] },
                ],
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_excludes_the_install_namespace() {
        let docs = Install::new("mesh").manifests().unwrap();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ServiceAccount",
                "ClusterRoleBinding",
                "PersistentVolumeClaim",
                "Deployment",
                "Service",
                "Deployment",
                "Service",
                "MutatingWebhookConfiguration"
            ]
        );
        let excluded = &docs[9]["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"];
        assert_eq!(excluded[0], "mesh");
        assert!(excluded.as_array().unwrap().contains(&json!("trellis-system")));
        assert!(docs[9]["webhooks"][0]["clientConfig"].get("caBundle").is_none());
        assert!(Install::new("Bad_NS").manifests().is_err());
    }

    #[test]
    fn with_a_ca_the_secrets_and_ca_bundle_are_printed() {
        let ca = Ca::generate().unwrap();
        let mut install = Install::new(crate::SYSTEM_NAMESPACE);
        install.secrets =
            Some(Secrets { ca: Some((ca.cert_pem().into(), ca.key_pem())), admin_token: Some("t".into()) });
        let docs = install.manifests().unwrap();
        let secrets: Vec<&str> =
            docs.iter().filter(|d| d["kind"] == "Secret").map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(secrets, [CA_SECRET, INJECTOR_TLS_SECRET, ADMIN_TOKEN_SECRET]);
        let webhook = docs.last().unwrap();
        assert!(webhook["webhooks"][0]["clientConfig"]["caBundle"].is_string());
        let tls = &docs.iter().find(|d| d["metadata"]["name"] == INJECTOR_TLS_SECRET).unwrap()["stringData"]["tls.crt"];
        let info = trellis_certs::inspect(tls.as_str().unwrap().as_bytes()).unwrap();
        assert_eq!(info.spiffe_id.unwrap().as_str(), "spiffe://trellis.local/ns/trellis-system/sa/trellis-injector");
    }
}
