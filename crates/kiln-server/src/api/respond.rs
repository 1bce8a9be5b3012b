//! Errors in each API's own shape: OpenAI's `{"error": {"message", "type", "param", "code"}}`
//! ([`OpenAiError`]) and A1111's ([`A1111Error`]); `Retry-After` on a 429.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;

/// An [`ApiError`] in OpenAI's shape (also the jobs routes' and the operations routes').
pub struct OpenAiError(pub ApiError);

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = json!({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}});
        with_retry_after((e.status, Json(body)).into_response(), &e)
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError(e)
    }
}

/// An [`ApiError`] in A1111's shape (`modules/api/api.py` `api_middleware`'s handler):
/// `{"error": TYPE, "detail": MESSAGE, "body": "", "errors": MESSAGE}`.
pub struct A1111Error(pub ApiError);

impl IntoResponse for A1111Error {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = json!({"error": e.kind, "detail": e.message, "body": "", "errors": e.message});
        with_retry_after((e.status, Json(body)).into_response(), &e)
    }
}

impl From<ApiError> for A1111Error {
    fn from(e: ApiError) -> Self {
        A1111Error(e)
    }
}

/// An error in the shape of the API `path` belongs to.
pub fn error_for_path(path: &str, e: ApiError) -> Response {
    if path.starts_with("/sdapi/") { A1111Error(e).into_response() } else { OpenAiError(e).into_response() }
}

/// `Retry-After` on a 429.
pub fn with_retry_after(mut response: Response, e: &ApiError) -> Response {
    if let Some(secs) = e.retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}
