//! Trellis data plane: everything between a client's bytes and an upstream's.
//!
//! A request's path, module by module:
//! `listener` (accept on a worker) → `detect` (HTTP/1.1 or h2 preface) → `http::server`
//! (hyper connection) → `http::forward` (route, pick backend and endpoint, forward) →
//! `upstream` (pooled connection to the endpoint) → back through `http::body` (streamed,
//! with idle/deadline timers) to the client. Failures become responses in one place,
//! `http::respond`. The config every request reads is one immutable `config::Snapshot`
//! swapped atomically by `reload`; `admin` serves health, metrics and the config dump.

pub mod access_log;
pub mod admin;
pub mod authz;
pub mod config;
pub mod detect;
pub mod discovery;
pub mod http;
pub mod intercept;
pub mod listener;
pub mod reload;
pub mod resilience;
pub mod run;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod worker;

pub use run::{Options, RunError, run};
