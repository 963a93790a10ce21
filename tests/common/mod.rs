//! The test kit (`trellis-testkit`, in `testkit/`) as the test files that still say
//! `mod common; use common::*;` see it, plus the helpers of the files being migrated by
//! other branches (h3, mcp, observe, ws), which move into the kit when those files do.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

mod h3;
mod mcp;
mod observe;
mod ws;
pub use h3::*;
pub use mcp::*;
pub use observe::*;
pub use trellis_testkit::*;
pub use ws::*;

// What h3, mcp, observe and ws take from here (`use super::*`).
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `config::simple` as hand-written YAML text, for the files here that edit it with
/// `str::replace` (a typed config makes that unnecessary); goes when they move to the kit.
pub fn simple_config(listen: SocketAddr, origin: SocketAddr, proto: &str) -> String {
    format!(
        r#"admin: {{ address: "{{admin}}" }}
drain_timeout: 5s
listeners:
  - name: in
    address: "{listen}"
    routes: [all]
routes:
  - name: all
    match: {{ path_prefix: / }}
    backends: [{{ cluster: origin }}]
clusters:
  - name: origin
    protocol: {proto}
    endpoints: [{{ address: "{origin}" }}]
"#
    )
}
