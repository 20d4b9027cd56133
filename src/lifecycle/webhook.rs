//! Processing a stored webhook delivery. The body is a hint: the gateway is asked for the
//! transaction's current state (under the account's rate limit and breaker), and that state
//! goes through the one state machine. Chargebacks and retrieval requests are stored in their
//! own tables. The delivery is marked processed in the same transaction as its effects, on
//! the condition that it still was queued: two processors of one delivery apply it once.

use chrono::NaiveDate;
use serde_json::json;

use crate::{
    billing::{
        BillingError,
        accounts::Guarded,
        state::{self, Change, Origin, ReasonEffect},
    },
    context::AppContext,
    db::Tx,
    gateway::{self, Lookup, Settled, TxKey},
    queue::fence::Fence,
    webhooks::genesis::Notification,
};

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Applied (or already processed by someone else).
    Done,
    /// No attempt of ours has this transaction (stored as unmatched with the reason).
    Unmatched(String),
    /// Cannot be processed (stored as failed with the reason).
    Failed(String),
    /// Try again later (gateway unreachable, breaker open).
    Later(String),
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    account: String,
    body: Vec<u8>,
    attempts: i32,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    id: i64,
    account: String,
    status: String,
    unique_id: Option<String>,
    transaction_id: String,
}

/// Every status an attempt can have: a webhook may find it in any, the table decides.
const ANY: &[&str] = &[
    "submitted",
    "unknown",
    "pending",
    "pending_async",
    "approved",
    "declined",
    "error",
    "voided",
    "chargebacked",
    "refunded",
];

/// Processes one delivery (if still queued).
pub async fn process(
    app: &AppContext,
    fence: &Fence,
    delivery_id: i64,
) -> Result<Processed, BillingError> {
    let mut tx = app.db.begin().await?;
    let row: Option<DeliveryRow> = tx
        .fetch_optional(
            sqlx::query_as(
                "UPDATE webhook_deliveries SET attempts = attempts + 1 \
                 WHERE id = $1 AND state = 'queued' RETURNING account, body, attempts",
            )
            .bind(delivery_id),
        )
        .await?;
    tx.commit().await?;
    let Some(d) = row else {
        return Ok(Processed::Done);
    };
    let outcome = work(app, fence, delivery_id, &d).await?;
    match &outcome {
        Processed::Done => {}
        Processed::Unmatched(why) => finish(app, delivery_id, "unmatched", why).await?,
        Processed::Failed(why) => finish(app, delivery_id, "failed", why).await?,
        Processed::Later(why) if d.attempts >= app.settings.webhooks.max_attempts => {
            let why = format!("gave up after {} attempts: {why}", d.attempts);
            tracing::error!(delivery_id, reason = %why, "webhook delivery failed; replay it once the cause is fixed");
            finish(app, delivery_id, "failed", &why).await?;
            return Ok(Processed::Failed(why));
        }
        Processed::Later(why) => {
            let mut tx = app.db.begin().await?;
            tx.execute(
                sqlx::query("UPDATE webhook_deliveries SET error = $2 WHERE id = $1")
                    .bind(delivery_id)
                    .bind(why),
            )
            .await?;
            tx.commit().await?;
        }
    }
    Ok(outcome)
}

async fn finish(
    app: &AppContext,
    delivery_id: i64,
    state: &str,
    why: &str,
) -> Result<(), BillingError> {
    let mut tx = app.db.begin().await?;
    tx.execute(
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $2, error = $3, processed_at = now() \
             WHERE id = $1 AND state = 'queued'",
        )
        .bind(delivery_id)
        .bind(state)
        .bind(why),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn work(
    app: &AppContext,
    fence: &Fence,
    delivery_id: i64,
    d: &DeliveryRow,
) -> Result<Processed, BillingError> {
    let Some(n) = Notification::parse(&d.body) else {
        return Ok(Processed::Failed("the stored body no longer parses".into()));
    };
    let kind = n.kind().unwrap_or_default();
    // A chargeback or retrieval request may name the debit by its own unique_id or by the
    // original transaction's.
    let mut ids: Vec<String> = [
        "original_transaction_unique_id",
        "reference_transaction_unique_id",
        "unique_id",
    ]
    .iter()
    .filter_map(|k| n.get(k).map(str::to_string))
    .collect();
    ids.dedup();
    let tx_id = n.get("transaction_id").unwrap_or("").to_string();
    let mut tx = app.db.begin().await?;
    let attempt: Option<AttemptRow> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT id, account, status, unique_id, transaction_id FROM billing_attempts \
                 WHERE unique_id = ANY($1) OR transaction_id = $2 ORDER BY id LIMIT 1",
            )
            .bind(&ids)
            .bind(&tx_id),
        )
        .await?;
    tx.commit().await?;
    let Some(a) = attempt else {
        let why = format!(
            "no attempt of ours has unique_id {} or transaction_id {tx_id:?}",
            ids.join("/")
        );
        tracing::warn!(delivery_id, reason = %why, "webhook delivery for a transaction we do not know");
        return Ok(Processed::Unmatched(why));
    };
    if a.account != d.account {
        return Ok(Processed::Failed(format!(
            "delivered for account `{}` but the transaction is account `{}`'s",
            d.account, a.account
        )));
    }
    let Some(account) = app.accounts.get(&a.account) else {
        return Ok(Processed::Later(format!(
            "gateway account `{}` is not configured in this process",
            a.account
        )));
    };
    // The body is a hint: the gateway says what the transaction is now.
    let key = match &a.unique_id {
        Some(u) => TxKey::UniqueId(u),
        None => TxKey::TransactionId(&a.transaction_id),
    };
    let now = match account.reconcile(key).await {
        Ok(Lookup::Found(answer)) => answer,
        Ok(Lookup::NotFound) => {
            return Ok(Processed::Later(format!(
                "the gateway has no record of transaction {}",
                a.transaction_id
            )));
        }
        Err(e @ (Guarded::BreakerOpen | Guarded::Limiter(_))) => {
            return Ok(Processed::Later(e.to_string()));
        }
        Err(Guarded::Call(e)) => return Ok(Processed::Later(e.to_string())),
    };
    let Settled::Known(to) = gateway::settle(&now) else {
        return Ok(Processed::Later(format!(
            "the gateway's answer settles nothing yet (status {})",
            now.status
        )));
    };
    // Only a chargeback's own code decides the chargeback policy (a retrieval request's code
    // says nothing about the debtor's account).
    let is_chargeback = kind.contains("chargeback");
    let reason_code = reason_code(&n)
        .map(str::to_ascii_uppercase)
        .filter(|_| is_chargeback);
    let mut tx = app.db.begin().await?;
    let claimed = tx
        .execute(
            sqlx::query(
                "UPDATE webhook_deliveries SET state = 'processed', processed_at = now(), error = NULL \
                 WHERE id = $1 AND state = 'queued'",
            )
            .bind(delivery_id),
        )
        .await?;
    if claimed == 0 {
        // Someone else processed it meanwhile.
        return Ok(Processed::Done);
    }
    let origin = Origin {
        source: "webhook",
        delivery_id: Some(delivery_id),
    };
    let change = Change {
        id: a.id,
        to,
        answer: Some(&now),
        note: None,
        reason_code: reason_code.as_deref(),
    };
    let applied = state::apply_many(&mut tx, &app.settings, origin, ANY, &[change]).await?;
    if is_chargeback {
        chargeback(app, &mut tx, &a, &n, delivery_id, reason_code.as_deref()).await?;
    } else if kind.contains("retrieval") {
        retrieval(&mut tx, &a, &n, delivery_id).await?;
    }
    fence.check(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(delivery_id, attempt_id = a.id, from = %a.status, to, kind = %kind, applied = ?applied.first(), "webhook delivery processed");
    Ok(Processed::Done)
}

/// A chargeback's or retrieval request's reason code and its text, as Genesis names them in
/// notifications (`rc_*`) or in by-date records (`reason_*`).
fn reason_code(n: &Notification) -> Option<&str> {
    n.get("rc_code").or_else(|| n.get("reason_code"))
}

fn reason_description(n: &Notification) -> Option<&str> {
    n.get("rc_description")
        .or_else(|| n.get("reason_description"))
}

/// The debit's gateway id: ours when we have it, else the one the notification names.
fn original_unique_id(a: &AttemptRow, n: &Notification) -> String {
    a.unique_id
        .clone()
        .or_else(|| n.unique_id().map(str::to_string))
        .unwrap_or_default()
}

fn amount_minor(n: &Notification) -> Option<i64> {
    n.get("amount").and_then(|v| v.parse::<i64>().ok())
}

fn date(n: &Notification, key: &str) -> Option<NaiveDate> {
    n.get(key)
        .and_then(|v| NaiveDate::parse_from_str(v.get(..10).unwrap_or(v), "%Y-%m-%d").ok())
}

fn raw(n: &Notification) -> serde_json::Value {
    let m: serde_json::Map<String, serde_json::Value> = n
        .fields
        .iter()
        .filter(|(k, _)| k != "signature")
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    serde_json::Value::Object(m)
}

async fn chargeback(
    app: &AppContext,
    tx: &mut Tx,
    a: &AttemptRow,
    n: &Notification,
    delivery_id: i64,
    reason_code: Option<&str>,
) -> Result<(), BillingError> {
    let effect = ReasonEffect::of(&app.settings, reason_code);
    let original = original_unique_id(a, n);
    let inserted = tx
        .execute(
            sqlx::query(
                "INSERT INTO chargebacks (attempt_id, account, original_unique_id, arn, type, reason_code, \
                    reason_description, amount_minor, currency, post_date, import_date, source, delivery_id, \
                    blacklisted, deactivated, raw) \
                 VALUES ($1, $2, $3, $4, coalesce($5, 'chargeback'), $6, $7, $8, $9, $10, $11, 'webhook', $12, $13, $14, $15) \
                 ON CONFLICT (original_unique_id, type) DO UPDATE SET \
                    reason_code = coalesce(chargebacks.reason_code, EXCLUDED.reason_code), \
                    reason_description = coalesce(chargebacks.reason_description, EXCLUDED.reason_description), \
                    updated_at = now()",
            )
            .bind(a.id)
            .bind(&a.account)
            .bind(&original)
            .bind(n.get("arn"))
            .bind(n.get("chargeback_type").or_else(|| n.get("type")))
            .bind(reason_code)
            .bind(reason_description(n))
            .bind(amount_minor(n))
            .bind(n.get("currency"))
            .bind(date(n, "post_date"))
            .bind(date(n, "import_date"))
            .bind(delivery_id)
            .bind(effect == ReasonEffect::Blacklist)
            .bind(effect != ReasonEffect::Retry)
            .bind(raw(n)),
        )
        .await?;
    if inserted > 0 && effect == ReasonEffect::Retry {
        // A status change seen before this chargeback (without its code) deactivated the
        // profile; a retry code says it may be billed again, unless another chargeback of it
        // says otherwise.
        tx.execute(
            sqlx::query(
                "UPDATE debtor_profiles p SET active = true, deactivated_reason = NULL, updated_at = now() \
                 FROM billing_attempts a WHERE a.id = $1 AND p.id = a.profile_id \
                   AND NOT p.active AND p.deactivated_reason = 'chargeback' \
                   AND NOT EXISTS (SELECT 1 FROM chargebacks c JOIN billing_attempts b ON b.id = c.attempt_id \
                                   WHERE b.profile_id = p.id AND c.deactivated)",
            )
            .bind(a.id),
        )
        .await?;
    }
    if inserted > 0 {
        app.metrics
            .chargebacks
            .get_or_create(&crate::metrics::ChargebackLabels {
                account: a.account.clone(),
                effect: effect.label().into(),
            })
            .inc();
        tracing::warn!(attempt_id = a.id, account = %a.account, reason_code = reason_code.unwrap_or("-"), effect = effect.label(), "chargeback recorded");
    }
    event(tx, a, "chargeback", delivery_id, reason_code).await
}

async fn retrieval(
    tx: &mut Tx,
    a: &AttemptRow,
    n: &Notification,
    delivery_id: i64,
) -> Result<(), BillingError> {
    let original = original_unique_id(a, n);
    tx.execute(
        sqlx::query(
            "INSERT INTO retrieval_requests (attempt_id, account, original_unique_id, arn, reason_code, \
                reason_description, amount_minor, currency, post_date, import_date, source, delivery_id, raw) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'webhook', $11, $12) \
             ON CONFLICT (original_unique_id) DO NOTHING",
        )
        .bind(a.id)
        .bind(&a.account)
        .bind(&original)
        .bind(n.get("arn"))
        .bind(reason_code(n))
        .bind(reason_description(n))
        .bind(amount_minor(n))
        .bind(n.get("currency"))
        .bind(date(n, "post_date"))
        .bind(date(n, "import_date"))
        .bind(delivery_id)
        .bind(raw(n)),
    )
    .await?;
    tracing::warn!(attempt_id = a.id, account = %a.account, "retrieval request recorded: the debtor's bank asks for the mandate");
    event(tx, a, "retrieval_request", delivery_id, reason_code(n)).await
}

/// A chargeback or retrieval request in the attempt's history (beside any status change).
async fn event(
    tx: &mut Tx,
    a: &AttemptRow,
    event: &str,
    delivery_id: i64,
    reason_code: Option<&str>,
) -> Result<(), BillingError> {
    tx.execute(
        sqlx::query(
            "INSERT INTO transaction_events (attempt_id, event, source, from_status, to_status, applied, reason_code, delivery_id) \
             SELECT id, $2, 'webhook', status, status, true, $3, $4 FROM billing_attempts WHERE id = $1",
        )
        .bind(a.id)
        .bind(event)
        .bind(reason_code)
        .bind(delivery_id),
    )
    .await?;
    Ok(())
}
