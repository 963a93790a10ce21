//! HTTP: serving downstream connections (`server`, `h1`, `h2`), choosing a route
//! (`router`, `route`), forwarding (`forward`, `headers`), the upstream HTTP version
//! (`version`), streaming bodies (`body`),
//! turning failures into responses (`respond`), the `date` header (`date`), and what both
//! in-task HTTP/1.1 codecs share: the wire pieces (`wire`), a stock of reusable header
//! maps (`header_maps`) and of read/write buffers with the read that holds none while it
//! waits (`io_bufs`). `h2` also holds what the HTTP/2 server and client share.

pub mod attempts;
pub mod body;
pub mod date;
pub mod forward;
pub mod h1;
pub mod h2;
pub mod header_maps;
pub mod headers;
pub mod io_bufs;
pub mod path;
pub mod respond;
pub mod route;
pub mod router;
pub mod server;
pub mod stock;
pub mod version;
pub mod wire;
