//! Re-processing stored deliveries (`finworker webhooks replay`, after a fix) and handing
//! out again deliveries left `queued` whose job Redis lost (the sweeper). Processing is
//! idempotent — the state machine applies a status once, a chargeback or retrieval request is
//! stored once — so a replay of a delivery that was processed changes nothing twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::{context::AppContext, db::DbError};

/// A stored delivery, as listed.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Listed {
    /// Id.
    pub id: i64,
    /// Provider (`emp`).
    pub provider: String,
    /// Account named in the URL.
    pub account: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// accepted | rejected | malformed.
    pub verdict: String,
    /// queued | processed | unmatched | failed | ignored.
    pub state: String,
    /// Status or event.
    pub kind: Option<String>,
    /// The transaction's gateway id.
    pub unique_id: Option<String>,
    /// Why refused, or why processing failed.
    pub reason: Option<String>,
    /// Processing error.
    pub error: Option<String>,
    /// Repeats counted on it.
    pub repeats: i32,
    /// Processing attempts.
    pub attempts: i32,
}

/// Deliveries whose verdict or state is `status` (any when none), received since `since`,
/// oldest first, at most `limit`.
pub async fn list(
    app: &AppContext,
    status: Option<&str>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Listed>, DbError> {
    let mut tx = app.db.begin().await?;
    let rows = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT id, provider, account, received_at, verdict, state, kind, unique_id, reason, error, repeats, attempts \
                 FROM webhook_deliveries WHERE ($1::text IS NULL OR state = $1 OR verdict = $1) \
                   AND ($2::timestamptz IS NULL OR received_at >= $2) ORDER BY id LIMIT $3",
            )
            .bind(status)
            .bind(since)
            .bind(limit),
        )
        .await?;
    tx.commit().await?;
    Ok(rows)
}

/// What a replay did with one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Replayed {
    /// Queued for processing again.
    Queued,
    /// It was rejected, its signature verifies now (the password was fixed): accepted and
    /// queued.
    Accepted,
    /// It was rejected and still does not verify.
    StillRejected(String),
    /// It verifies now, but the same notification was accepted already (that one counts).
    Duplicate(i64),
    /// Malformed deliveries are never processed.
    NotReplayable(String),
    /// No such delivery.
    Missing,
}

#[derive(sqlx::FromRow)]
struct Row {
    account: String,
    verdict: String,
    body: Vec<u8>,
    unique_id: Option<String>,
    kind: Option<String>,
    payload_hash: Option<Vec<u8>>,
}

/// Replays these deliveries: each is queued again (its state reset), then processed by the
/// `emp_webhook` job with the same idempotency as the first time.
pub async fn replay(app: &AppContext, ids: &[i64]) -> anyhow::Result<Vec<(i64, Replayed)>> {
    let mut out = Vec::new();
    let mut queued = Vec::new();
    for &id in ids {
        let r = one(app, id).await?;
        if matches!(r, Replayed::Queued | Replayed::Accepted) {
            queued.push(id);
        }
        out.push((id, r));
    }
    if !queued.is_empty() {
        super::push_jobs(app, &queued).await?;
        tracing::info!(deliveries = queued.len(), "webhook deliveries replayed");
    }
    Ok(out)
}

async fn one(app: &AppContext, id: i64) -> anyhow::Result<Replayed> {
    let mut tx = app.db.begin().await?;
    let row: Option<Row> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT account, verdict, body, unique_id, kind, payload_hash FROM webhook_deliveries WHERE id = $1 FOR UPDATE",
            )
            .bind(id),
        )
        .await?;
    let Some(d) = row else {
        tx.commit().await?;
        return Ok(Replayed::Missing);
    };
    let outcome = match d.verdict.as_str() {
        "accepted" => {
            tx.execute(
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = 'queued', attempts = 0, error = NULL, processed_at = NULL \
                     WHERE id = $1",
                )
                .bind(id),
            )
            .await?;
            Replayed::Queued
        }
        "rejected" => {
            let password = app
                .accounts
                .get(&d.account)
                .and_then(|a| a.settings.password.clone())
                .map(|p| p.expose_secret().to_string())
                .filter(|p| !p.is_empty());
            let verified = match (&password, super::genesis::Notification::parse(&d.body)) {
                (None, _) => Err(format!(
                    "account `{}` is not configured here or has no API password",
                    d.account
                )),
                (_, None) => Err("the body does not parse".to_string()),
                (Some(p), Some(n)) => n.verify(p).map_err(|e| e.to_string()),
            };
            match verified {
                Err(why) => Replayed::StillRejected(why),
                Ok(alg) => {
                    let first: Option<(i64,)> = tx
                        .fetch_optional(
                            sqlx::query_as(
                                "SELECT id FROM webhook_deliveries WHERE verdict = 'accepted' AND provider = 'emp' \
                                 AND account = $1 AND unique_id IS NOT DISTINCT FROM $2 AND kind IS NOT DISTINCT FROM $3 \
                                 AND payload_hash IS NOT DISTINCT FROM $4",
                            )
                            .bind(&d.account)
                            .bind(&d.unique_id)
                            .bind(&d.kind)
                            .bind(&d.payload_hash),
                        )
                        .await?;
                    match first {
                        Some((first,)) => Replayed::Duplicate(first),
                        None => {
                            tx.execute(
                                sqlx::query(
                                    "UPDATE webhook_deliveries SET verdict = 'accepted', state = 'queued', signature = $2, \
                                     reason = NULL, attempts = 0, error = NULL WHERE id = $1",
                                )
                                .bind(id)
                                .bind(alg),
                            )
                            .await?;
                            Replayed::Accepted
                        }
                    }
                }
            }
        }
        other => Replayed::NotReplayable(format!("a {other} delivery is never processed")),
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Queues again deliveries left `queued` for longer than `after` (their job was lost).
/// Returns how many.
pub async fn requeue_stale(app: &AppContext, after: Duration, limit: i64) -> anyhow::Result<usize> {
    let mut tx = app.db.begin().await?;
    let ids: Vec<(i64,)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT id FROM webhook_deliveries WHERE state = 'queued' AND received_at < now() - $1::interval \
                 AND (last_queued_at IS NULL OR last_queued_at < now() - $1::interval) ORDER BY received_at LIMIT $2",
            )
            .bind(chrono::Duration::from_std(after)?)
            .bind(limit),
        )
        .await?;
    let ids: Vec<i64> = ids.into_iter().map(|(i,)| i).collect();
    if !ids.is_empty() {
        tx.execute(
            sqlx::query("UPDATE webhook_deliveries SET last_queued_at = now() WHERE id = ANY($1)")
                .bind(&ids),
        )
        .await?;
    }
    tx.commit().await?;
    if !ids.is_empty() {
        super::push_jobs(app, &ids).await?;
        tracing::info!(
            deliveries = ids.len(),
            "sweeper queued webhook deliveries whose job was lost"
        );
    }
    Ok(ids.len())
}
