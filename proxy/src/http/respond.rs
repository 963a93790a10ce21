//! The one place where a failure becomes a response: status, `x-trellis-error`, and a short
//! plain-text body naming the cause.

use crate::http::body::ProxyBody;
use crate::upstream::UpstreamError;
use http::{HeaderValue, Response, StatusCode, header};
use std::sync::Arc;
use thiserror::Error;

/// Header naming the proxy's reason for an error response.
pub const ERROR_HEADER: &str = "x-trellis-error";

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
    #[error("not authorized")]
    Forbidden,
    #[error("the request header block is over the listener's max_header_bytes")]
    HeadersTooLarge,
    #[error("the request came in TLS early data (0-RTT) and its method is not safe; retry after the handshake")]
    TooEarly,
}

impl ForwardError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoEndpoint(_) | Self::ListenerGone | Self::Upstream(UpstreamError::Overloaded(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::FaultAbort(code) => StatusCode::from_u16(*code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
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
            Self::RateLimited(_) => "rate limited",
            Self::FaultAbort(_) => "fault injected",
            Self::ClientBody(_) => "bad request body",
            Self::Forbidden => "forbidden",
            Self::HeadersTooLarge => "header block too large",
            Self::TooEarly => "too early",
            Self::Timeout | Self::TryTimeout => "upstream timeout",
            Self::IdleTimeout => "upstream idle timeout",
            Self::ListenerGone => "listener draining",
        }
    }
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
