//! The ops API, `/api/ops/…`: what `finworker queues|jobs|billing|uploads|reports|webhooks`
//! do, over HTTP, behind its own bearer token (`http.ops_token`; the producers' token is
//! refused). Every route is declared once in [`routes`]: the router is built from that table
//! and the test compares it with the OpenAPI document served at `/api/openapi.json`.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::HeaderMap,
    routing::{MethodRouter, get, post},
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{enqueue::check_bearer, error::ApiError};
use crate::{
    context::AppContext,
    ops::{self, OpsError},
};

/// The OpenAPI document of the ops API (also served at `/api/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::NotFound(m) => Self::NotFound(m),
            OpsError::Refused(m) => Self::Unprocessable(m),
            OpsError::Internal(e) => Self::Internal(e),
        }
    }
}

type Answer = Result<Json<Value>, ApiError>;

fn answer<T: serde::Serialize>(v: T) -> Answer {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| ApiError::Internal(e.into()))
}

/// Checks the ops token in constant time.
pub fn authorize_ops(ctx: &AppContext, headers: &HeaderMap) -> Result<(), ApiError> {
    check_bearer(headers, ctx.settings.http.ops_token.as_ref())
}

async fn require_ops(
    State(ctx): State<AppContext>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    authorize_ops(&ctx, req.headers())?;
    Ok(next.run(req).await)
}

/// Every ops route: (method, path, handler). The single source of the router and of the
/// route list the OpenAPI test checks.
pub fn routes() -> Vec<(&'static str, &'static str, MethodRouter<AppContext>)> {
    vec![
        ("GET", "/api/ops/queues", get(queues)),
        ("GET", "/api/ops/queues/throughput", get(throughput)),
        ("POST", "/api/ops/queues/{queue}/pause", post(pause_queue)),
        ("POST", "/api/ops/queues/{queue}/resume", post(resume_queue)),
        ("GET", "/api/ops/jobs", get(jobs)),
        ("GET", "/api/ops/jobs/failed", get(failed_jobs)),
        ("GET", "/api/ops/jobs/{id}", get(job)),
        ("POST", "/api/ops/jobs/{id}/retry", post(retry_job)),
        ("GET", "/api/ops/runs", get(runs)),
        ("GET", "/api/ops/runs/{id}", get(run)),
        ("POST", "/api/ops/runs/{id}/pause", post(pause_run)),
        ("POST", "/api/ops/runs/{id}/resume", post(resume_run)),
        ("POST", "/api/ops/runs/{id}/cancel", post(cancel_run)),
        ("GET", "/api/ops/uploads", get(uploads)),
        ("GET", "/api/ops/uploads/{id}", get(upload)),
        ("GET", "/api/ops/reports", get(reports)),
        ("GET", "/api/ops/reports/{id}", get(report)),
        ("GET", "/api/ops/guards", get(guards)),
        (
            "POST",
            "/api/ops/accounts/{name}/release",
            post(release_account),
        ),
        ("GET", "/api/ops/webhooks", get(webhooks)),
        ("GET", "/api/ops/webhooks/counts", get(webhook_counts)),
        ("POST", "/api/ops/webhooks/replay", post(replay_webhooks)),
    ]
}

/// The ops routes behind the ops token, plus the unauthenticated OpenAPI document.
pub fn router(ctx: &AppContext) -> Router<AppContext> {
    let ops = routes()
        .into_iter()
        .fold(Router::new(), |r, (_, path, h)| r.route(path, h))
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            require_ops,
        ));
    ops.route("/api/openapi.json", get(openapi))
}

async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    queue: Option<String>,
    limit: Option<i64>,
    #[serde(default)]
    failures: bool,
}

async fn queues(State(ctx): State<AppContext>) -> Answer {
    answer(ops::queues(&ctx).await?)
}

#[derive(Debug, Deserialize)]
struct MinutesQuery {
    minutes: Option<i32>,
}

async fn throughput(State(ctx): State<AppContext>, Query(q): Query<MinutesQuery>) -> Answer {
    let series = ops::throughput(&ctx, q.minutes.unwrap_or(60)).await?;
    answer(
        series
            .into_iter()
            .map(|(queue, per_minute)| json!({ "queue": queue, "per_minute": per_minute }))
            .collect::<Vec<_>>(),
    )
}

#[derive(Debug, Default, Deserialize)]
struct PauseBody {
    reason: Option<String>,
}

/// An optional JSON body: none (or empty) is the default.
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        field: None,
        message: format!("body is not the expected JSON: {e}"),
    })
}

async fn pause_queue(
    State(ctx): State<AppContext>,
    Path(queue): Path<String>,
    body: axum::body::Bytes,
) -> Answer {
    let b: PauseBody = optional_body(&body)?;
    let changed = ops::pause_queue(&ctx, &queue, "api", b.reason.as_deref()).await?;
    answer(json!({ "queue": queue, "paused": true, "changed": changed }))
}

async fn resume_queue(State(ctx): State<AppContext>, Path(queue): Path<String>) -> Answer {
    let changed = ops::resume_queue(&ctx, &queue).await?;
    answer(json!({ "queue": queue, "paused": false, "changed": changed }))
}

async fn jobs(State(ctx): State<AppContext>, Query(q): Query<ListQuery>) -> Answer {
    answer(ops::recent_jobs(&ctx, q.queue.as_deref(), q.failures, q.limit.unwrap_or(100)).await?)
}

async fn failed_jobs(State(ctx): State<AppContext>, Query(q): Query<ListQuery>) -> Answer {
    answer(
        ops::failed_jobs(
            &ctx,
            q.queue.as_deref(),
            q.limit.unwrap_or(100).clamp(1, 10_000),
        )
        .await?,
    )
}

async fn job(State(ctx): State<AppContext>, Path(id): Path<String>) -> Answer {
    answer(ops::job(&ctx, &id).await?)
}

async fn retry_job(State(ctx): State<AppContext>, Path(id): Path<String>) -> Answer {
    let queue = ops::retry_job(&ctx, &id).await?;
    answer(json!({ "job_id": id, "queue": queue, "requeued": true }))
}

fn uuid_of(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::BadRequest {
        field: Some("id".into()),
        message: format!("`{s}` is not an id (a UUID)"),
    })
}

async fn runs(State(ctx): State<AppContext>, Query(q): Query<ListQuery>) -> Answer {
    answer(ops::runs(&ctx, q.limit.unwrap_or(50)).await?)
}

async fn run(State(ctx): State<AppContext>, Path(id): Path<String>) -> Answer {
    answer(ops::run_show(&ctx, uuid_of(&id)?).await?)
}

async fn control(ctx: &AppContext, id: &str, action: &str) -> Answer {
    answer(ops::run_control(ctx, uuid_of(id)?, action).await?)
}

async fn pause_run(State(ctx): State<AppContext>, Path(id): Path<String>) -> Answer {
    control(&ctx, &id, "pause").await
}

async fn resume_run(State(ctx): State<AppContext>, Path(id): Path<String>) -> Answer {
    control(&ctx, &id, "resume").await
}

async fn cancel_run(State(ctx): State<AppContext>, Path(id): Path<String>) -> Answer {
    control(&ctx, &id, "cancel").await
}

async fn uploads(State(ctx): State<AppContext>, Query(q): Query<ListQuery>) -> Answer {
    answer(ops::uploads(&ctx, q.limit.unwrap_or(50)).await?)
}

async fn upload(State(ctx): State<AppContext>, Path(id): Path<String>) -> Answer {
    answer(ops::upload(&ctx, uuid_of(&id)?).await?)
}

async fn report(State(ctx): State<AppContext>, Path(id): Path<String>) -> Answer {
    answer(ops::report(&ctx, uuid_of(&id)?).await?)
}

async fn reports(State(ctx): State<AppContext>, Query(q): Query<ListQuery>) -> Answer {
    answer(ops::reports(&ctx, q.limit.unwrap_or(50)).await?)
}

async fn guards(State(ctx): State<AppContext>) -> Answer {
    answer(ops::guards(&ctx).await?)
}

async fn release_account(State(ctx): State<AppContext>, Path(name): Path<String>) -> Answer {
    let released = ops::release_account(&ctx, &name).await?;
    answer(json!({ "account": name, "released": released }))
}

#[derive(Debug, Deserialize)]
struct DeliveryQuery {
    status: Option<String>,
    since: Option<DateTime<Utc>>,
    limit: Option<i64>,
    hours: Option<i32>,
}

async fn webhooks(State(ctx): State<AppContext>, Query(q): Query<DeliveryQuery>) -> Answer {
    let rows = crate::webhooks::replay::list(
        &ctx,
        q.status.as_deref(),
        q.since,
        q.limit.unwrap_or(100).clamp(1, 10_000),
    )
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    answer(rows)
}

async fn webhook_counts(State(ctx): State<AppContext>, Query(q): Query<DeliveryQuery>) -> Answer {
    answer(ops::delivery_counts(&ctx, q.hours.unwrap_or(24)).await?)
}

#[derive(Debug, Deserialize)]
struct ReplayBody {
    ids: Vec<i64>,
}

async fn replay_webhooks(State(ctx): State<AppContext>, body: axum::body::Bytes) -> Answer {
    let b: ReplayBody = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
        field: Some("ids".into()),
        message: format!("expected {{\"ids\": [delivery ids]}}: {e}"),
    })?;
    if b.ids.is_empty() || b.ids.len() > 10_000 {
        return Err(ApiError::BadRequest {
            field: Some("ids".into()),
            message: "give 1 to 10000 delivery ids".into(),
        });
    }
    let done = crate::webhooks::replay::replay(&ctx, &b.ids).await?;
    answer(
        done.into_iter()
            .map(|(id, r)| json!({ "id": id, "result": r }))
            .collect::<Vec<_>>(),
    )
}
