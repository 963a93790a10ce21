//! The Trellis test kit: what every end-to-end test in `tests/` starts and talks to.
//!
//! - [`process`]: the real `trellis` binary as a child (spawn, wait on a condition, log in
//!   the panic message, kill on drop) and the running [`Proxy`].
//! - [`control_plane`]: the real `trellis control-plane` process; [`fake_cp`]: a scripted
//!   discovery server for what the real one never sends.
//! - [`config`]: typed configs built from the real `trellis-api` resources.
//! - [`http_io`]: in-process origins and clients; [`raw`]: raw HTTP/1 and HTTP/2 sockets.
//! - [`identity`], [`mesh`]: certificates from our `certs` crate, TLS clients and origins,
//!   sidecar configs; [`workload`]: service-account tokens.
//! - [`sidecars`]: a sidecar pair under the real control plane.
//! - [`tools`]: outside programs (python packages, websocat, chromium) and whether they are
//!   here; [`h3`], [`ws`], [`mcp`], [`browser`]: the HTTP/3 client, WebSocket peers, MCP
//!   server and client, and headless Chromium built on them.
//! - [`ports`], [`observe`], [`lifecycle`], [`resilience`], [`etcd`], [`netns`].
//! - [`otlp`]: a real OTLP collector (HTTP and gRPC, plaintext or TLS) for tracing tests.
//!
//! Everything is re-exported at the root (`use trellis_testkit::*`), except the modules of
//! generic names (`config`, `raw`, `mesh`, `fake_cp`, `otlp`) that tests import by path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod config;
pub mod control_plane;
pub mod etcd;
pub mod fake_cp;
pub mod h3;
pub mod http_io;
pub mod identity;
pub mod lifecycle;
pub mod mcp;
pub mod mesh;
pub mod netns;
pub mod observe;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod raw;
pub mod resilience;
pub mod sidecars;
pub mod tools;
pub mod workload;
pub mod ws;

pub use browser::*;
pub use config::Yaml;
pub use control_plane::*;
pub use etcd::*;
pub use fake_cp::FakeControlPlane;
pub use h3::*;
pub use http_io::*;
pub use identity::*;
pub use lifecycle::*;
pub use mcp::*;
pub use netns::*;
pub use observe::*;
pub use ports::*;
pub use process::*;
pub use resilience::*;
pub use sidecars::*;
pub use tools::*;
pub use workload::*;
pub use ws::*;

// What the modules share (`use super::*`).
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
