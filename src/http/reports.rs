//! Reports over HTTP.
//!
//! - `GET /api/reports/{id}` (bearer token): for API nodes, the report's status and, once
//!   ready, a fresh signed `download_url` to hand to finance staff.
//! - `GET /reports/{id}/download?expires=…&signature=…`: finance staff download a report
//!   with a signed, expiring link (`finworker reports link <id>` prints one too). No bearer
//!   token: the signature is the authorisation. Expired or altered links get 403.

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use futures::TryStreamExt;
use serde::Deserialize;
use uuid::Uuid;

use super::{enqueue::authorize, error::ApiError};
use crate::{context::AppContext, reports};

/// Query string of a signed link.
#[derive(Debug, Deserialize)]
pub struct LinkQuery {
    /// Unix seconds.
    pub expires: Option<i64>,
    /// Hex HMAC-SHA256.
    pub signature: Option<String>,
}

/// Streams the report file, or 403 / 404 / 409 / 503.
pub async fn download(
    State(ctx): State<AppContext>,
    Path(id): Path<String>,
    Query(q): Query<LinkQuery>,
) -> Result<Response, ApiError> {
    let Some(secret) = ctx.settings.reports.link_secret.as_ref() else {
        return Err(ApiError::Unavailable(
            "report downloads are not configured (reports.link_secret)".into(),
        ));
    };
    let refused = || ApiError::Forbidden("this download link is not valid".into());
    let id = Uuid::parse_str(&id).map_err(|_| refused())?;
    let (Some(expires), Some(sig)) = (q.expires, q.signature) else {
        return Err(refused());
    };
    reports::verify(secret, id, expires, &sig, Utc::now())
        .map_err(|e| ApiError::Forbidden(e.to_string()))?;
    let rec = reports::get(&ctx.db, id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .ok_or_else(|| ApiError::NotFound(format!("no report {id}")))?;
    if rec.status == "expired" {
        return Ok((
            StatusCode::GONE,
            format!("report {id} was deleted by retention (retention.reports); request it again"),
        )
            .into_response());
    }
    let (Some(key), Some(name), "ready") = (rec.object_key, rec.file_name, rec.status.as_str())
    else {
        return Ok((
            StatusCode::CONFLICT,
            format!("report {id} is {}; try again when it is ready", rec.status),
        )
            .into_response());
    };
    let obj = ctx
        .storage
        .get_stream(&key)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let format = reports::Format::parse(&rec.format).unwrap_or_default();
    let body = Body::from_stream(obj.stream.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CONTENT_LENGTH, obj.size.to_string()),
            (header::CACHE_CONTROL, "private, no-store".to_string()),
        ],
        body,
    )
        .into_response())
}

/// 200 with the `reports` row plus `download_url` (signed, valid for `reports.link_ttl`)
/// when ready; 404 when unknown.
pub async fn show(
    State(ctx): State<AppContext>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    authorize(&ctx, &headers)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::BadRequest {
        field: Some("id".into()),
        message: format!("`{id}` is not a report id (a UUID)"),
    })?;
    let rec = reports::get(&ctx.db, id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .ok_or_else(|| ApiError::NotFound(format!("no report {id}")))?;
    let ready = rec.status == "ready";
    let mut v = serde_json::to_value(&rec).map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(obj) = v.as_object_mut() {
        obj.remove("object_key"); // storage layout is ours, not the API's
    }
    if ready && let Some((url, expires)) = reports::signed_link(&ctx.settings.reports, id, None) {
        v["download_url"] = url.into();
        v["download_expires_at"] = expires.to_rfc3339().into();
    }
    Ok(axum::Json(v))
}
