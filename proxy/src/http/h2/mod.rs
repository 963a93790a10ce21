//! HTTP/2 on the `h2` crate: what the upstream client (`upstream::h2`) shares with other
//! HTTP/2 code: the headers HTTP/2 forbids and `content-length` (`headers`), a received
//! body and a body piped to a stream under flow control (`body`).

pub mod body;
pub mod headers;
