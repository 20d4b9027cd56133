//! Processing a stored webhook delivery. The body is a hint: the gateway is asked for the
//! transaction's current state (under the account's rate limit and breaker), and that state
//! goes through the one state machine. Chargebacks and retrieval requests are stored in their
//! own tables. The delivery is marked processed in the same transaction as its effects, on
//! the condition that it still was queued: two processors of one delivery apply it once.

use chrono::NaiveDate;

use crate::{
    billing::{
        BillingError,
        accounts::Guarded,
        state::{self, Change, Origin},
    },
    context::AppContext,
    gateway::{self, Lookup, ReturnRecord, Settled, TxKey},
    lifecycle::returns::{self, Recorded},
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
    let attempt = returns::find_attempt(&mut tx, &ids, Some(&tx_id)).await?;
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
    let reason_code = reason_code_of(&n)
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
    let applied = state::apply_many(&mut tx, &app.settings, origin, state::ANY, &[change]).await?;
    let src = returns::Source {
        name: "webhook",
        delivery_id: Some(delivery_id),
    };
    let mut new_chargeback = false;
    if is_chargeback {
        let r = return_record(&n, reason_code.as_deref());
        new_chargeback = returns::chargeback(app, &mut tx, &a, &r, src).await? == Recorded::New;
    } else if kind.contains("retrieval") {
        let r = return_record(&n, reason_code_of(&n));
        returns::retrieval(&mut tx, &a, &r, src).await?;
    }
    fence.check(&mut tx).await?;
    tx.commit().await?;
    state::observe(&app.metrics, origin, &[change], &applied);
    if new_chargeback {
        super::guard::check(app, &a.account).await?;
    }
    tracing::info!(delivery_id, attempt_id = a.id, from = %a.status, to, kind = %kind, applied = ?applied.first(), "webhook delivery processed");
    Ok(Processed::Done)
}

/// A chargeback's or retrieval request's reason code, as Genesis names it in notifications
/// (`rc_code`) or in by-date records (`reason_code`).
fn reason_code_of(n: &Notification) -> Option<&str> {
    n.get("rc_code").or_else(|| n.get("reason_code"))
}

fn date(n: &Notification, key: &str) -> Option<NaiveDate> {
    crate::gateway::genesis::parse_date(n.get(key))
}

/// The return a chargeback or retrieval-request notification describes.
fn return_record(n: &Notification, reason_code: Option<&str>) -> ReturnRecord {
    let s = |k: &str| n.get(k).map(str::to_string);
    ReturnRecord {
        original_unique_id: s("original_transaction_unique_id")
            .or_else(|| s("reference_transaction_unique_id")),
        unique_id: s("unique_id"),
        transaction_id: s("transaction_id"),
        arn: s("arn"),
        r#type: s("chargeback_type").or_else(|| s("type")),
        reason_code: reason_code.map(str::to_string),
        reason_description: s("rc_description").or_else(|| s("reason_description")),
        amount_minor: n.get("amount").and_then(|v| v.parse::<i64>().ok()),
        currency: s("currency"),
        post_date: date(n, "post_date"),
        import_date: date(n, "import_date"),
    }
}
