//! The HTTP/1 codec's error: what went wrong (`Kind`) and on which side (`Side`), decided
//! where it is found: a request head or body the server reads is the client's, a
//! response head or body the client reads is the upstream's, and each connection's own
//! I/O belongs to its peer.

use crate::http::fault::Side;
use http::StatusCode;
use thiserror::Error;

/// A framing, parsing or I/O failure of one HTTP/1 message, with the side at fault.
#[derive(Debug, Error)]
#[error("{kind}")]
pub struct Error {
    side: Side,
    kind: Kind,
}

/// What went wrong.
#[derive(Debug, Error)]
pub enum Kind {
    #[error("connection failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("connection closed before a message")]
    Closed,
    #[error("connection closed before the end of the body")]
    Truncated,
    #[error("head over {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {} header fields", super::MAX_HEADERS)]
    TooManyHeaders,
    #[error("request target over {} bytes", super::MAX_URI_LEN)]
    UriTooLong,
    #[error("malformed head: {0}")]
    Parse(httparse::Error),
    /// A head that parses but frames its message ambiguously or not at all, or an invalid
    /// field the codec must understand.
    #[error("{0}")]
    Invalid(&'static str),
    /// A transfer coding other than chunked (RFC 9112 §6.1: 501).
    #[error("transfer coding not implemented: {0}")]
    Unsupported(&'static str),
    /// Two `Host` fields, none in an HTTP/1.1 request, or an invalid one (RFC 9112 §3.2).
    #[error("{0}")]
    Host(&'static str),
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    /// A body that is not the length its head announced.
    #[error("body length differs from its content-length")]
    Length,
    #[error("no whole request head within the header timeout")]
    Timeout,
}

impl Error {
    pub fn new(side: Side, kind: Kind) -> Self {
        Self { side, kind }
    }

    pub fn client(kind: Kind) -> Self {
        Self::new(Side::Client, kind)
    }

    pub fn upstream(kind: Kind) -> Self {
        Self::new(Side::Upstream, kind)
    }

    /// Who is at fault.
    pub fn side(&self) -> Side {
        self.side
    }

    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The status a client gets for a request it got wrong this way.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::HeadTooLarge(_) | Kind::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::UriTooLong => StatusCode::URI_TOO_LONG,
            Kind::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            Kind::Timeout => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The short reason in `x-trellis-error` for a request refused this way.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            Kind::HeadTooLarge(_) | Kind::TooManyHeaders => "header block too large",
            Kind::UriTooLong => "uri too long",
            Kind::Unsupported(_) => "unsupported transfer coding",
            Kind::Timeout => "request timeout",
            Kind::Host(_) => "bad host",
            _ => "bad request",
        }
    }
}
