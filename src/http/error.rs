//! One error type for every HTTP answer that is not a success; it owns the status mapping
//! and the uniform JSON body `{"error": {"code", "message", "field"?}}`.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::context::EnqueueError;

/// An HTTP error answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 401: missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 404: no such route or job type.
    #[error("{0}")]
    NotFound(String),
    /// 403: not allowed in this deployment.
    #[error("{0}")]
    Forbidden(String),
    /// 400: bad request, optionally naming the field.
    #[error("{message}")]
    BadRequest {
        /// Offending field (JSON path), if known.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// 422: well-formed but contradicts what the server already holds.
    #[error("{0}")]
    Unprocessable(String),
    /// 503: try again later.
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged with its chain; the client sees no detail.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<EnqueueError> for ApiError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::UnknownJobType(_) => Self::NotFound(e.to_string()),
            EnqueueError::TestJobsDisabled(_) | EnqueueError::Internal(_) => {
                Self::Forbidden(e.to_string())
            }
            EnqueueError::KeyReused { .. } => Self::Unprocessable(e.to_string()),
            EnqueueError::Payload(p) => Self::BadRequest {
                field: Some(p.field),
                message: p.message,
            },
            EnqueueError::BadIdempotencyKey => Self::BadRequest {
                field: Some("Idempotency-Key".into()),
                message: e.to_string(),
            },
            EnqueueError::QueueFull { .. } => Self::Unavailable(e.to_string()),
            EnqueueError::Queue(q) => {
                // The producer should retry (with the same Idempotency-Key): say so with 503.
                tracing::warn!(error = %q, "enqueue failed: redis unavailable");
                Self::Unavailable("the job queue is unavailable; retry later".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "conflict"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(e) => {
                tracing::error!(error.chain = ?e, "internal error answering a request");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let message = match &self {
            Self::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let mut body = json!({ "error": { "code": code, "message": message } });
        if let Self::BadRequest { field: Some(f), .. } = &self {
            body["error"]["field"] = json!(f);
        }
        let mut resp = (status, Json(body)).into_response();
        match self {
            Self::Unauthorized => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        resp
    }
}

/// Fallback for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// A handler panicked: answer 500 in the uniform shape (the panic is logged by the hook).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}
