//! HTTP: serving downstream connections (`server`, `h1`, `h2`), choosing a route
//! (`router`, `route`), forwarding (`forward`, `headers`), the upstream HTTP version
//! (`version`), streaming bodies (`body`), whose fault a failure is (`fault`) and turning
//! failures into responses (`respond`), the `date` header (`date`), a stock of reusable
//! header maps (`header_maps`) and of read/write buffers with the read that holds none
//! while it waits (`io_bufs`). `h1` is also the HTTP/1 codec the upstream client uses, and
//! `h2` holds what the HTTP/2 server and client share.

pub mod attempts;
pub mod body;
pub mod date;
pub mod fault;
pub mod forward;
pub mod h1;
pub mod h2;
pub mod header_maps;
pub mod headers;
pub mod io_bufs;
pub mod path;
pub mod recycle;
pub mod respond;
pub mod route;
pub mod router;
pub mod server;
pub mod upgrade;
pub mod version;
