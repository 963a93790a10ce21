//! Trellis data plane: everything between a client's bytes and an upstream's.
//!
//! A request's path, module by module (ARCHITECTURE.md draws it):
//! `listener` (accept on a worker; `tls` first on mesh and edge listeners) → `detect`
//! (HTTP/1.1 or the h2 preface) → `http::server` (Trellis' own in-task HTTP/1.1 server in
//! `http::h1`, or the HTTP/2 server on the `h2` crate in `http::h2`), or `h3` (HTTP/3 on
//! a listener's UDP port) → `http::forward` (authorize, route, pick a backend) →
//! `http::attempts` (tries, retries, hedges) → `upstream` (balancer, pooled connection,
//! HTTP/1.1 or HTTP/2 exchange) → back through `http::body` (streamed, with idle/deadline
//! timers) to the client. `tcp` forwards opaque connections. Failures become responses in
//! one place, `http::respond`. The config every request reads is one immutable
//! `config::Snapshot` swapped atomically by `reload` (from the file) or `discovery` (from
//! the control plane); `admin` serves health, metrics and the config dump.

pub mod access_log;
pub mod admin;
pub mod authz;
pub mod config;
pub mod detect;
pub mod discovery;
pub mod h3;
pub mod http;
pub mod intercept;
pub mod listener;
pub mod mcp;
pub mod reload;
pub mod resilience;
pub mod run;
pub mod stats_report;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod worker_id;

pub use run::{Options, RunError, run};
