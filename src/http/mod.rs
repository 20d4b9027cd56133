//! The HTTP receiver: health, readiness, metrics and the enqueue API. Later features mount
//! their routes (webhooks, progress, report downloads) in [`router`].

mod enqueue;
mod error;
mod health;
mod metrics;
pub mod ops;
mod reports;
mod uploads;

use axum::{
    Router,
    routing::{get, post},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::{
    catch_panic::CatchPanicLayer, limit::RequestBodyLimitLayer, timeout::TimeoutLayer,
    trace::TraceLayer,
};

pub use error::ApiError;

use crate::context::AppContext;

/// All routes with their layers: body limit (413), request timeout (408), panic → 500, a
/// global concurrency limit (excess requests wait), one access-log line per request.
pub fn router(ctx: AppContext) -> Router {
    let http = &ctx.settings.http;
    let limit = tower::limit::GlobalConcurrencyLimitLayer::new(http.max_concurrent_requests);
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/api/jobs/{job_type}", post(enqueue::enqueue))
        .route("/api/uploads/{id}", get(uploads::show))
        .route("/api/reports/{id}", get(reports::show))
        .route("/reports/{id}/download", get(reports::download))
        .route(
            "/api/webhooks/emp/{account}",
            post(crate::webhooks::emp)
                .layer(axum::Extension(crate::webhooks::Ingress::start(&ctx))),
        )
        .merge(ops::router(&ctx))
        .merge(crate::dashboard::router(&ctx))
        .fallback(error::not_found)
        .layer(RequestBodyLimitLayer::new(http.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            http.request_timeout,
        ))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(access_log))
        .layer(limit)
        .with_state(ctx)
}

/// One line per request at info: method, path (never the query: signed links carry their
/// signature there), status, duration.
async fn access_log(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        target: "finworker::access",
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        duration_ms = t0.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// Serves until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    ctx: AppContext,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(ctx).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}
