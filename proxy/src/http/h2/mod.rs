//! HTTP/2 on the `h2` crate, both ways: the downstream server (`server`: one connection's
//! streams served concurrently inside the connection's own task) and what it shares with
//! the upstream client (`upstream::h2`): the headers HTTP/2 forbids and `content-length`
//! (`headers`), a received body and a body piped to a stream under flow control (`body`),
//! and a stream as a byte stream for extended CONNECT tunnels (`tunnel`).

pub mod body;
pub mod headers;
pub mod server;
pub mod tunnel;
