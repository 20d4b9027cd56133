//! `GET /api/uploads/{id}`: an upload's status, progress and totals, for API nodes polling.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::HeaderMap,
};
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use super::{enqueue::authorize, error::ApiError};
use crate::{context::AppContext, uploads};

/// Query string.
#[derive(Debug, Deserialize)]
pub struct ShowQuery {
    /// How many rejected rows to include (default 0, at most 1000).
    #[serde(default)]
    pub rejects: i64,
}

/// 200 with the record, its progress and (on request) its first rejected rows; 404 when
/// the id is unknown (an `upload` job not yet started has no record).
pub async fn show(
    State(ctx): State<AppContext>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&ctx, &headers)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::BadRequest {
        field: Some("id".into()),
        message: format!("`{id}` is not an upload id (a UUID)"),
    })?;
    let rec = uploads::get(&ctx.db, id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .ok_or_else(|| ApiError::NotFound(format!("no upload {id}")))?;
    let mut v =
        serde_json::to_value(rec.view(Utc::now())).map_err(|e| ApiError::Internal(e.into()))?;
    let checks = uploads::verification(&ctx.db, id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    v["verification"] = serde_json::to_value(checks).map_err(|e| ApiError::Internal(e.into()))?;
    let report_id = crate::jobs::vop_report::upload_report_id(id, crate::reports::Format::Xlsx);
    if let Some(r) = crate::reports::get(&ctx.db, report_id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
    {
        v["vop_report"] = serde_json::json!({ "id": r.id, "status": r.status });
    }
    if q.rejects > 0 {
        let list = uploads::rejects(&ctx.db, id, q.rejects.min(1000))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        v["rejects"] = serde_json::to_value(list).map_err(|e| ApiError::Internal(e.into()))?;
    }
    Ok(Json(v))
}
