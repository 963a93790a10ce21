//! The one place REST errors become responses: a status and a JSON body
//! `{"error": "...", "field": "..."}` (`field` only when one field is to blame).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use trellis_api::ValidationError;

use crate::store::WriteError;

/// An error answer.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Further problems beyond the first, when a write has several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError { status, error: error.into(), field: None, more: Vec::new() }
    }

    pub fn bad_request(error: impl Into<String>, field: Option<&str>) -> ApiError {
        ApiError { field: field.map(str::to_string), ..ApiError::new(StatusCode::BAD_REQUEST, error) }
    }

    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error)
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }

    fn from_problems(status: StatusCode, prefix: &str, errs: Vec<ValidationError>) -> ApiError {
        let mut errs = errs.into_iter();
        let Some(first) = errs.next() else { return ApiError::new(status, format!("{prefix}invalid")) };
        ApiError {
            status,
            error: format!("{prefix}{first}"),
            field: Some(first.field),
            more: errs.map(|e| e.to_string()).collect(),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        match e {
            WriteError::Invalid(errs) => ApiError::from_problems(StatusCode::BAD_REQUEST, "", errs),
            WriteError::Referenced(errs) => ApiError::from_problems(StatusCode::CONFLICT, "still referenced: ", errs),
            WriteError::Precondition { current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                match current {
                    Some(v) => format!("If-Match does not match the current version \"{v}\""),
                    None => "If-Match given, but there is no such resource".into(),
                },
            ),
            WriteError::NotFound => ApiError::not_found("no such resource"),
            WriteError::Storage(e) => ApiError::internal(e),
            WriteError::Unavailable(reason) => {
                tracing::warn!(%reason, "write refused");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason)
            }
            WriteError::Contended(reason) => ApiError::new(StatusCode::CONFLICT, reason),
            WriteError::TooLarge(reason) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, reason),
            WriteError::Refused(reason) => ApiError::internal(reason),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(&self)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
