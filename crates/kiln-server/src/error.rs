//! [`ApiError`]: why a request was refused or a job failed, with its HTTP status; each API
//! writes it in its own shape (OpenAI's `{"error": {…}}`, A1111's `{"error", "detail", …}`).

use axum::http::StatusCode;
use kiln_pipeline::PipelineError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `rate_limit_error`, `server_error`, `cancelled`.
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, where there is one.
    pub param: Option<String>,
    /// A short machine-readable code (`queue_full`, `invalid_size`, `unknown_model`, …).
    pub code: Option<&'static str>,
    /// Seconds a client should wait before retrying (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into(), param: None, code: None, retry_after: None }
    }

    /// 400: the request names a bad value; `param` is the field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param.to_string()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    /// 400 with no single field at fault (an unreadable body).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn with_code(self, code: &'static str) -> Self {
        ApiError { code: Some(code), ..self }
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "a valid API key is required: send `Authorization: Bearer KEY`").with_code("invalid_api_key")
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", what)
    }

    pub fn queue_full(capacity: usize, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", format!("the queue is full ({capacity} requests waiting); retry in {retry_after} s"))
                .with_code("queue_full")
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).with_code("unavailable")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The job was cancelled (`DELETE /v1/jobs/{id}`, `/sdapi/v1/interrupt`, a client gone).
    pub fn cancelled(id: &str) -> Self {
        // 409: the request was valid but did not run to its end (there is no better standard code)
        Self::new(StatusCode::CONFLICT, "cancelled", format!("job {id} was cancelled")).with_code("cancelled")
    }

    pub fn is_cancelled(&self) -> bool {
        self.kind == "cancelled"
    }

    /// A pipeline error: the request's fault (400) or the server's (500).
    pub fn from_pipeline(e: &PipelineError, id: &str) -> Self {
        match e {
            PipelineError::Cancelled(_) => Self::cancelled(id),
            PipelineError::Input { what, .. } => Self::invalid(what, e.to_string()),
            PipelineError::Unsupported(_)
            | PipelineError::TooLarge { .. }
            | PipelineError::Image(_)
            | PipelineError::Scheduler(_)
            | PipelineError::Tokenizer(_)
            | PipelineError::Lora(_)
            | PipelineError::Embedding(_) => Self::bad_request(e.to_string()),
            _ => Self::internal(e.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}
