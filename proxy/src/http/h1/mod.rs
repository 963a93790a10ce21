//! HTTP/1.x: the one codec both directions use, and the in-task downstream server.
//!
//! The codec owns all HTTP/1 framing, for requests and responses alike: heads parsed
//! with `httparse` (`head`), how a body is delimited and the one `Content-Length` parser
//! (`framing`), the chunked coding with its strict grammar (`chunked`), body decoding
//! and encoding (`body`), writing heads (`encode`), and an error that carries the side
//! at fault (`error`): what the server reads is the client's, what the client
//! (`upstream::h1`) reads is the upstream's, so only upstream faults reach outlier
//! detection, retries and 5xx statuses.
//!
//! The server (`conn`) serves every HTTP/1.0 and HTTP/1.1 request in its connection's
//! task: the request body is read off the connection as it is forwarded (`incoming`),
//! with no task or channel per request; a head the codec refuses gets its 4xx and the
//! connection closes.

pub mod body;
pub mod chunked;
mod conn;
pub mod encode;
#[cfg(test)]
mod encode_tests;
pub mod error;
pub mod framing;
pub mod head;
mod incoming;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use conn::serve;
pub use error::{Error, Kind};
pub use framing::{Framing, content_length};
pub use incoming::Incoming;

/// The most field lines in a head, either direction (more: 431 for a request, a bad
/// response for a response), as hyper allows.
pub const MAX_HEADERS: usize = 100;

/// The longest request target accepted (beyond it: 414), as hyper.
pub const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
