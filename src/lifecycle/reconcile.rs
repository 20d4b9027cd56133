//! Reconciliation of open attempts (`pending`, `pending_async`, `submitted`, `unknown`): each
//! is looked up by its transaction_id when its own backoff says so (`billing::debit`), an
//! unknown one the gateway has no record of goes back to billing's "send again with the same
//! id" path, and attempts past their hard age are flagged for a person — SEPA pending is
//! normal for days, so nothing is ever failed or guessed here.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    billing::{BillingError, debit, state},
    context::AppContext,
    metrics::StatusLabels,
    queue::fence::Fence,
};

/// Attempts one pass looks at per round.
const ROUND: i64 = 500;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Attempts looked up at the gateway.
    pub looked_up: usize,
    /// Attempts newly flagged past their hard age.
    pub flagged: usize,
    /// Open attempts left, by status.
    pub open: Vec<(String, i64)>,
}

/// Reconciles every due attempt (of one run, or all), for at most `budget`, then flags the
/// attempts past their hard age and refreshes the gauges.
pub async fn pass(
    app: &AppContext,
    fence: &Fence,
    run: Option<Uuid>,
    budget: Duration,
) -> Result<Pass, BillingError> {
    let t0 = Instant::now();
    let mut out = Pass::default();
    loop {
        let n = debit::reconcile_due(app, fence, run, ROUND).await?;
        out.looked_up += n;
        if n < ROUND as usize || t0.elapsed() > budget {
            break;
        }
    }
    out.flagged = flag_hard_age(app).await?;
    out.open = gauges(app).await?;
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct Flagged {
    id: i64,
    account: String,
    status: String,
    transaction_id: String,
    created_at: DateTime<Utc>,
}

/// Flags (once) open attempts older than their hard age, with an error log each.
pub async fn flag_hard_age(app: &AppContext) -> Result<usize, BillingError> {
    let l = &app.settings.lifecycle;
    let interval = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let mut tx = app.db.begin().await?;
    let rows: Vec<Flagged> = tx
        .fetch_all(
            sqlx::query_as(
                "UPDATE billing_attempts SET flagged_at = now() WHERE flagged_at IS NULL AND ( \
                   (status IN ('submitted', 'unknown') AND created_at < now() - $1::interval) OR \
                   (status IN ('pending', 'pending_async') AND created_at < now() - $2::interval)) \
                 RETURNING id, account, status, transaction_id, created_at",
            )
            .bind(interval(l.unknown_hard_age))
            .bind(interval(l.pending_hard_age)),
        )
        .await?;
    tx.commit().await?;
    for r in &rows {
        tracing::error!(
            attempt_id = r.id,
            account = %r.account,
            status = %r.status,
            transaction_id = %r.transaction_id,
            created_at = %r.created_at,
            "attempt past its hard age with no final outcome: left for a person (it is still reconciled; nothing is guessed)"
        );
    }
    Ok(rows.len())
}

/// Sets the open-attempt gauges; returns the open counts by status.
async fn gauges(app: &AppContext) -> Result<Vec<(String, i64)>, BillingError> {
    let mut tx = app.db.begin().await?;
    let rows: Vec<(String, i64, i64, f64)> = tx
        .fetch_all(sqlx::query_as(
            "SELECT status, count(*), count(*) FILTER (WHERE flagged_at IS NOT NULL), \
                    coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 \
             FROM billing_attempts WHERE status IN ('submitted', 'unknown', 'pending', 'pending_async') \
             GROUP BY status",
        ))
        .await?;
    tx.commit().await?;
    let m = &app.metrics;
    for st in state::OPEN {
        let (n, flagged, age) = rows
            .iter()
            .find(|r| r.0 == *st)
            .map(|r| (r.1, r.2, r.3))
            .unwrap_or((0, 0, 0.0));
        let l = StatusLabels {
            status: st.to_string(),
        };
        m.open_attempts.get_or_create(&l).set(n);
        m.attempts_past_hard_age.get_or_create(&l).set(flagged);
        m.oldest_open_attempt_seconds
            .get_or_create(&l)
            .set(age as i64);
    }
    Ok(rows.into_iter().map(|r| (r.0, r.1)).collect())
}
