//! The one place where a failure becomes a response: status, `x-trellis-error`, and a short
//! plain-text body naming the cause (for a gRPC request, a gRPC error instead: HTTP 200,
//! trailers-only, `grpc-status` mapped from the status as DESIGN §11 says, `grpc-message`); and whose fault each failure is (`side`): the
//! client's are 4xx, the upstream's 502/504 (and only they count against an endpoint),
//! the proxy's own 503 (or the configured fault status). docs/errors.md lists them.

use crate::http::body::ProxyBody;
use crate::http::fault::Side;
use crate::upstream::UpstreamError;
use http::{HeaderValue, Response, StatusCode, header};
use std::sync::Arc;
use thiserror::Error;

/// Header naming the proxy's reason for an error response. A `HeaderName`, not a `&str`:
/// a map looked up or filled by a `&str` parses the name each time (~110 instructions).
pub const ERROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-trellis-error");

/// Why a request could not be forwarded.
#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("cluster {0} has no healthy endpoint")]
    NoEndpoint(Arc<str>),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("no response within the route's timeout")]
    Timeout,
    #[error("no response within the retry policy's per_try_timeout")]
    TryTimeout,
    #[error("upstream sent no response within the route's idle_timeout")]
    IdleTimeout,
    #[error("this listener was removed and is draining")]
    ListenerGone,
    #[error("over the route's rate limit; retry in {0:?}")]
    RateLimited(std::time::Duration),
    #[error("fault injection aborted this request")]
    FaultAbort(u16),
    #[error("reading the request body failed: {0}")]
    ClientBody(crate::http::body::ClientBodyError),
    /// The route's or a try's timer ran out while the client was still sending the body.
    #[error("the client sent the request body too slowly")]
    BodyTimeout,
    #[error("not authorized")]
    Forbidden,
    #[error("the request header block is over the listener's max_header_bytes")]
    HeadersTooLarge,
    #[error("the request came in TLS early data (0-RTT) and its method is not safe; retry after the handshake")]
    TooEarly,
    /// An HTTP/1 request head the codec refuses (malformed, ambiguous framing, too large,
    /// not whole in time).
    #[error("{0}")]
    Request(crate::http::h1::Error),
    /// No usable `Host`: two of them, none in an HTTP/1.1 request, an invalid one, or one
    /// that disagrees with HTTP/2's `:authority`.
    #[error("{0}")]
    Host(&'static str),
    /// `x-trellis-hops` reached the listener's `max_hops`: agents calling each other in a
    /// loop (DESIGN §13).
    #[error("the request passed {0} proxies (the listener's max_hops); agents call each other in a loop")]
    LoopDetected(u32),
    #[error("invalid x-trellis-hops")]
    BadHops,
    /// A CONNECT this listener does not carry (no `connect: true`, or not over HTTP/1.1).
    #[error("{0}")]
    ConnectRefused(&'static str),
    /// A CONNECT to a port not in the listener's `connect_ports`.
    #[error("CONNECT to port {0} is not allowed on this listener (connect_ports)")]
    ConnectPort(u16),
}

impl ForwardError {
    /// Whose fault this is.
    pub fn side(&self) -> Side {
        match self {
            Self::NoRoute
            | Self::RateLimited(_)
            | Self::ClientBody(_)
            | Self::BodyTimeout
            | Self::Forbidden
            | Self::HeadersTooLarge
            | Self::Request(_)
            | Self::Host(_)
            | Self::LoopDetected(_)
            | Self::BadHops
            | Self::ConnectRefused(_)
            | Self::ConnectPort(_)
            | Self::TooEarly => Side::Client,
            Self::Upstream(e) => e.side(),
            Self::Timeout | Self::TryTimeout | Self::IdleTimeout => Side::Upstream,
            Self::NoEndpoint(_) | Self::ListenerGone | Self::FaultAbort(_) => Side::Proxy,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoEndpoint(_) | Self::ListenerGone | Self::Upstream(UpstreamError::Overloaded(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Upstream(UpstreamError::ClientBody(_)) => StatusCode::BAD_REQUEST,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::FaultAbort(code) => StatusCode::from_u16(*code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            Self::ClientBody(_) | Self::Host(_) | Self::BadHops => StatusCode::BAD_REQUEST,
            Self::LoopDetected(_) => StatusCode::LOOP_DETECTED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Request(e) => e.status(),
            Self::Forbidden | Self::ConnectPort(_) => StatusCode::FORBIDDEN,
            Self::ConnectRefused(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TooEarly => StatusCode::TOO_EARLY,
            Self::Timeout | Self::TryTimeout | Self::IdleTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The short reason in `x-trellis-error`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute => "no route",
            Self::NoEndpoint(_) => "no healthy endpoint",
            Self::Upstream(UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout(_)) => {
                "upstream connect failure"
            }
            Self::Upstream(UpstreamError::Handshake(_) | UpstreamError::Reset(_)) => "upstream reset",
            Self::Upstream(UpstreamError::Overloaded(_)) => "overloaded",
            Self::Upstream(UpstreamError::Identity(_)) => "upstream identity mismatch",
            Self::Upstream(UpstreamError::Tls { .. }) => "upstream tls failure",
            Self::Upstream(UpstreamError::Unsendable(_)) => "request not sendable upstream",
            Self::Upstream(UpstreamError::Protocol(_)) => "upstream protocol error",
            Self::Upstream(UpstreamError::ClientBody(_)) => "bad request body",
            Self::RateLimited(_) => "rate limited",
            Self::FaultAbort(_) => "fault injected",
            Self::ClientBody(_) => "bad request body",
            Self::BodyTimeout => "request body timeout",
            Self::Request(e) => e.reason(),
            Self::Host(_) => "bad host",
            Self::LoopDetected(_) => "loop detected",
            Self::BadHops => "bad hops",
            Self::Forbidden => "forbidden",
            Self::ConnectRefused(_) => "connect not allowed",
            Self::ConnectPort(_) => "connect port not allowed",
            Self::HeadersTooLarge => "header block too large",
            Self::TooEarly => "too early",
            Self::Timeout | Self::TryTimeout => "upstream timeout",
            Self::IdleTimeout => "upstream idle timeout",
            Self::ListenerGone => "listener draining",
        }
    }
}

/// Renders `err` for the client, as a gRPC error if the request is a gRPC call.
pub fn error_response_for(err: &ForwardError, grpc: bool) -> Response<ProxyBody> {
    if grpc { grpc_error_response(err) } else { error_response(err) }
}

/// The gRPC status for an error the proxy answers with `status` (DESIGN §11; the statuses
/// it does not name as gRPC's HTTP mapping has them).
pub fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        502 | 503 | 425 => 14,       // UNAVAILABLE
        504 | 408 => 4,              // DEADLINE_EXCEEDED
        403 => 7,                    // PERMISSION_DENIED
        429 => 8,                    // RESOURCE_EXHAUSTED
        404 | 405 | 501 => 12,       // UNIMPLEMENTED
        401 => 16,                   // UNAUTHENTICATED
        400 | 413 | 414 | 431 => 13, // INTERNAL
        _ => 2,                      // UNKNOWN
    }
}

/// `err` as a gRPC error: HTTP 200 with no body (a trailers-only response, RFC-less but as
/// gRPC over HTTP/2 defines it), `grpc-status`, `grpc-message` (the reason and the detail,
/// percent-encoded) and `x-trellis-error`.
pub fn grpc_error_response(err: &ForwardError) -> Response<ProxyBody> {
    let reason = err.reason();
    let mut resp = Response::new(ProxyBody::Full(None));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(u16::from(grpc_status(err.status()))));
    let message = percent_encode(&format!("{reason}: {err}"));
    if let Ok(v) = HeaderValue::try_from(message) {
        h.insert("grpc-message", v);
    }
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    if let ForwardError::RateLimited(wait) = err {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Renders `err` for the client.
pub fn error_response(err: &ForwardError) -> Response<ProxyBody> {
    let reason = err.reason();
    let body = format!("{reason}: {err}\n");
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let ForwardError::RateLimited(wait) = err {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::{Error as H1Error, Kind};

    #[test]
    fn grpc_errors_are_trailers_only_with_the_mapped_status() {
        let cases = [
            (ForwardError::Timeout, "4"),
            (ForwardError::NoEndpoint("c".into()), "14"),
            (ForwardError::Forbidden, "7"),
            (ForwardError::RateLimited(std::time::Duration::from_secs(1)), "8"),
            (ForwardError::NoRoute, "12"),
        ];
        for (err, code) in cases {
            let resp = grpc_error_response(&err);
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(http_body::Body::is_end_stream(resp.body()), "no body: trailers-only");
            let h = resp.headers();
            assert_eq!(h["grpc-status"], code, "{err:?}");
            assert_eq!(h["content-type"], "application/grpc");
            assert_eq!(h[&ERROR_HEADER], err.reason());
            assert!(h["grpc-message"].to_str().unwrap_or("").starts_with(err.reason()));
        }
        assert_eq!(percent_encode("a 100% é"), "a 100%25 %C3%A9");
    }

    /// Every client fault is a 4xx, every upstream fault a 502/504, the proxy's own a 503
    /// (docs/errors.md is this table).
    #[test]
    fn sides_statuses_and_reasons() {
        let io = || std::io::Error::other("x");
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let body = || crate::http::body::ClientBodyError::H1(H1Error::client(Kind::Truncated));
        let cases: Vec<(ForwardError, Side, u16, &str)> = vec![
            (ForwardError::NoRoute, Side::Client, 404, "no route"),
            (ForwardError::Forbidden, Side::Client, 403, "forbidden"),
            (ForwardError::ConnectRefused("x"), Side::Client, 405, "connect not allowed"),
            (ForwardError::ConnectPort(22), Side::Client, 403, "connect port not allowed"),
            (ForwardError::RateLimited(std::time::Duration::from_secs(1)), Side::Client, 429, "rate limited"),
            (ForwardError::HeadersTooLarge, Side::Client, 431, "header block too large"),
            (ForwardError::Host("two"), Side::Client, 400, "bad host"),
            (ForwardError::LoopDetected(16), Side::Client, 508, "loop detected"),
            (ForwardError::BadHops, Side::Client, 400, "bad hops"),
            (ForwardError::ClientBody(body()), Side::Client, 400, "bad request body"),
            (ForwardError::Upstream(UpstreamError::ClientBody(body())), Side::Client, 400, "bad request body"),
            (ForwardError::BodyTimeout, Side::Client, 408, "request body timeout"),
            (ForwardError::Request(H1Error::client(Kind::Invalid("x"))), Side::Client, 400, "bad request"),
            (ForwardError::Request(H1Error::client(Kind::Timeout)), Side::Client, 408, "request timeout"),
            (ForwardError::Request(H1Error::client(Kind::UriTooLong)), Side::Client, 414, "uri too long"),
            (ForwardError::Request(H1Error::client(Kind::TooManyHeaders)), Side::Client, 431, "header block too large"),
            (
                ForwardError::Request(H1Error::client(Kind::Unsupported("x"))),
                Side::Client,
                501,
                "unsupported transfer coding",
            ),
            (
                ForwardError::Upstream(UpstreamError::Connect { addr, source: io() }),
                Side::Upstream,
                502,
                "upstream connect failure",
            ),
            (ForwardError::Upstream(UpstreamError::Reset(Box::new(io()))), Side::Upstream, 502, "upstream reset"),
            (
                ForwardError::Upstream(UpstreamError::Protocol(H1Error::upstream(Kind::Invalid("x")).into())),
                Side::Upstream,
                502,
                "upstream protocol error",
            ),
            (ForwardError::Timeout, Side::Upstream, 504, "upstream timeout"),
            (ForwardError::IdleTimeout, Side::Upstream, 504, "upstream idle timeout"),
            (ForwardError::NoEndpoint("c".into()), Side::Proxy, 503, "no healthy endpoint"),
            (ForwardError::ListenerGone, Side::Proxy, 503, "listener draining"),
            (
                ForwardError::Upstream(UpstreamError::Overloaded(crate::resilience::breaker::Threshold::MaxRequests)),
                Side::Proxy,
                503,
                "overloaded",
            ),
        ];
        for (err, side, status, reason) in cases {
            assert_eq!((err.side(), err.status().as_u16(), err.reason()), (side, status, reason), "{err:?}");
            let resp = error_response(&err);
            assert_eq!(resp.headers()[&ERROR_HEADER], reason);
        }
    }
}
