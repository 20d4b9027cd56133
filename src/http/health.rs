//! Liveness and readiness.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::context::AppContext;

/// Liveness: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: Redis and Postgres (through PgBouncer) answer within 2 s; else 503 naming
/// which does not — by name only: hosts and driver errors go to the log, not to whoever
/// can reach this unauthenticated route.
pub async fn readyz(State(ctx): State<AppContext>) -> (StatusCode, Json<Value>) {
    let limit = Duration::from_secs(2);
    let (redis, pg) = tokio::join!(
        tokio::time::timeout(limit, ctx.queue.ping()),
        tokio::time::timeout(limit, ctx.db.ping()),
    );
    let show = |what: &str, r: Result<Result<(), String>, _>| match r {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(dependency = what, error = %e, "readiness check failed");
            "unreachable"
        }
        Err(_) => {
            tracing::warn!(dependency = what, "readiness check: no answer within 2s");
            "unreachable"
        }
    };
    let redis = show("redis", redis.map(|r| r.map_err(|e| e.to_string())));
    let postgres = show("postgres", pg.map(|r| r.map_err(|e| e.to_string())));
    let ok = redis == "ok" && postgres == "ok";
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "checks": { "redis": redis, "postgres": postgres },
    });
    (status, Json(body))
}
