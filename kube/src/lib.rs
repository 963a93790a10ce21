//! Trellis on Kubernetes (DESIGN §10).
//!
//! - [`documents`]: multi-document YAML in and out, errors naming the document and line.
//! - [`pod`]: the one mutation of a pod template (native sidecar, `trellis-init`, volumes,
//!   annotations), shared by the CLI and the webhook.
//! - [`inject`]: `trellis inject`: finds every pod template in a file and applies [`pod`].
//! - [`admission`]: AdmissionReview v1 in, decision and JSONPatch out.
//! - [`webhook`]: `trellis injector`, the HTTPS server around [`admission`].
//! - [`install`]: the manifests `trellis install` prints (and `deploy/` keeps).
//! - [`sidecar`]: the bootstrap an injected proxy builds from its pod at start
//!   (`trellis proxy --sidecar`).

pub mod admission;
pub mod documents;
pub mod inject;
pub mod install;
pub mod pod;
pub mod sidecar;
pub mod webhook;

pub use pod::Settings;

/// The annotation prefix Trellis owns.
pub const ANNOTATION_PREFIX: &str = "trellis.dev/";
/// `disabled` keeps a pod (or a namespace, as a label) out of the mesh.
pub const ANNOTATION_INJECT: &str = "trellis.dev/inject";
/// Ports whose inbound traffic goes straight to the app, comma-separated.
pub const ANNOTATION_SKIP_INBOUND_PORTS: &str = "trellis.dev/skip-inbound-ports";
/// Destination ports the app reaches directly, not through the proxy, comma-separated.
pub const ANNOTATION_SKIP_OUTBOUND_PORTS: &str = "trellis.dev/skip-outbound-ports";
/// Destination subnets (CIDR) the app reaches directly, comma-separated.
pub const ANNOTATION_SKIP_SUBNETS: &str = "trellis.dev/skip-subnets";
/// `mesh` (default: mTLS only) or `permissive` (plaintext accepted too) on the inbound side.
pub const ANNOTATION_INBOUND_TLS: &str = "trellis.dev/inbound-tls";
/// The mesh's trust bundle (PEM), projected into the proxy as a file.
pub const ANNOTATION_TRUST_BUNDLE: &str = "trellis.dev/trust-bundle";

/// The control plane's namespace: never injected, and no workload certificates there.
pub const SYSTEM_NAMESPACE: &str = "trellis-system";
/// The audience of the service-account token a proxy presents to the control plane.
pub const TOKEN_AUDIENCE: &str = "trellis";

/// The proxy's user: iptables lets its own traffic through, so it cannot loop (DESIGN §9).
pub const PROXY_UID: u32 = 2102;
/// Sidecar inbound listener (mTLS from other proxies).
pub const INBOUND_PORT: u16 = 4143;
/// Sidecar outbound listener (the app's traffic, redirected).
pub const OUTBOUND_PORT: u16 = 4140;
/// The proxy's admin port (`/ready`, `/live`, `/metrics`), reached by the kubelet's probes.
pub const ADMIN_PORT: u16 = 9901;
/// The control plane's REST API port (certificates) and discovery port.
pub const CONTROL_PLANE_API_PORT: u16 = 7070;
pub const CONTROL_PLANE_XDS_PORT: u16 = 7071;
/// The injector's HTTPS port.
pub const INJECTOR_PORT: u16 = 8444;

/// The image everything runs from, at this build's version.
pub fn default_image() -> String {
    format!("ghcr.io/trellis-mesh/trellis:{}", env!("CARGO_PKG_VERSION"))
}
