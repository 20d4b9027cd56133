//! `POST /api/jobs/{job_type}`: how API nodes enqueue. Bearer token (constant-time
//! compare), payload validated against the job type, optional `Idempotency-Key`.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::context::{AppContext, EnqueueOptions};

/// Checks the producers' bearer token (`http.api_token`) in constant time.
pub fn authorize(ctx: &AppContext, headers: &HeaderMap) -> Result<(), ApiError> {
    check_bearer(headers, ctx.settings.http.api_token.as_ref())
}

/// Checks `Authorization: Bearer <expected>` in constant time; no configured token refuses all.
pub fn check_bearer(headers: &HeaderMap, expected: Option<&SecretString>) -> Result<(), ApiError> {
    let expected = expected.ok_or(ApiError::Unauthorized)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// 202 `{job_id, job_type, duplicate: false}` for a new job; 200 with `duplicate: true` and
/// the first job's id when the Idempotency-Key was seen within the retention window.
pub async fn enqueue(
    State(ctx): State<AppContext>,
    Path(job_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&ctx, &headers)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest {
                    field: Some("Idempotency-Key".into()),
                    message: "idempotency key must be printable ASCII".into(),
                })?
                .to_string(),
        ),
    };
    let opts = EnqueueOptions {
        idempotency_key,
        ..Default::default()
    };
    let pushed = ctx.enqueue_json(&job_type, &body, opts).await?;
    let status = if pushed.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(json!({ "job_id": pushed.id, "job_type": job_type, "duplicate": pushed.duplicate })),
    ))
}
