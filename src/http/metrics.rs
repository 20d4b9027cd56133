//! `/metrics`: Prometheus text. Queue depths (all processes) are read from Redis and the
//! dead-letter sizes from Postgres at scrape time; counters are this process's.

use axum::{
    extract::State,
    http::{HeaderMap, header},
    response::IntoResponse,
};

use super::ApiError;
use crate::{
    context::AppContext,
    metrics::{DepthLabels, QueueLabels},
    queue::dead_letter,
};

/// Renders every series, for the bearer of `http.metrics_token`.
pub async fn metrics(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let Some(expected) = &ctx.settings.http.metrics_token else {
        return Err(ApiError::Forbidden(
            "metrics are off: set http.metrics_token (FINWORKER__HTTP__METRICS_TOKEN)".into(),
        ));
    };
    super::enqueue::check_bearer(&headers, Some(expected))?;
    // At most one refresh per `metrics_refresh`; concurrent scrapes wait for it instead of
    // each taking connections.
    {
        let mut last = ctx.metrics.gauges_refreshed.lock().await;
        if last.is_none_or(|t| t.elapsed() >= ctx.settings.http.metrics_refresh) {
            refresh_gauges(&ctx).await;
            ctx.metrics.gauge_refreshes.inc();
            *last = Some(std::time::Instant::now());
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.render(),
    ))
}

async fn refresh_gauges(ctx: &AppContext) {
    let m = &ctx.metrics;
    for name in ctx.registry.names() {
        if let Ok(s) = ctx.queue.stats(name).await {
            for (state, v) in [
                ("waiting", s.waiting),
                ("scheduled", s.scheduled),
                ("in_flight", s.in_flight),
            ] {
                m.queue_depth
                    .get_or_create(&DepthLabels {
                        queue: name.into(),
                        state: state.into(),
                    })
                    .set(v as i64);
            }
            m.oldest_waiting_seconds
                .get_or_create(&QueueLabels { queue: name.into() })
                .set(s.oldest_waiting_ms.map_or(0, |ms| (ms / 1000) as i64));
        }
    }
    let counts = async {
        let mut tx = ctx.db.begin().await?;
        let c = dead_letter::counts(&mut tx).await?;
        tx.commit().await?;
        Ok::<_, crate::db::DbError>(c)
    };
    if let Ok(counts) = counts.await {
        for name in ctx.registry.names() {
            let n = counts
                .iter()
                .find(|(q, _)| q == name)
                .map_or(0, |(_, n)| *n);
            m.dead_letter_size
                .get_or_create(&QueueLabels { queue: name.into() })
                .set(n);
        }
    }
}
