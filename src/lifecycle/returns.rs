//! Chargebacks and retrieval requests, whichever path found them (a notification or a by-date
//! sweep): one row each in `chargebacks` / `retrieval_requests` (a repeat only fills in what
//! was missing, such as a reason code), one event in the attempt's history, and the one
//! reason-code policy ([`ReasonEffect`]) applied once.

use serde_json::json;

use crate::{
    billing::{BillingError, state::ReasonEffect},
    context::AppContext,
    db::Tx,
    gateway::ReturnRecord,
};

/// The attempt a return belongs to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRef {
    /// Its id.
    pub id: i64,
    /// Its account.
    pub account: String,
    /// Its status now.
    pub status: String,
    /// The gateway's id of it.
    pub unique_id: Option<String>,
    /// Ours.
    pub transaction_id: String,
}

/// Where a return was learnt.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// webhook | chargeback_sweep | retrieval_sweep.
    pub name: &'static str,
    /// The delivery, for a webhook.
    pub delivery_id: Option<i64>,
}

/// What storing a return did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new row.
    New,
    /// Known already; its reason code was missing and is now filled in.
    Backfilled,
    /// Known already; nothing new.
    Known,
}

/// Finds the attempt of a return: by the debit's gateway id, the record's own (a SEPA return
/// may carry the debit's), or our transaction_id.
pub async fn find_attempt(
    tx: &mut Tx,
    unique_ids: &[String],
    transaction_id: Option<&str>,
) -> Result<Option<AttemptRef>, BillingError> {
    Ok(tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT id, account, status, unique_id, transaction_id FROM billing_attempts \
                 WHERE unique_id = ANY($1) OR transaction_id = $2 ORDER BY id LIMIT 1",
            )
            .bind(unique_ids)
            .bind(transaction_id.unwrap_or("")),
        )
        .await?)
}

/// The debit's gateway id: ours when we have it, else the one the record names.
fn original_unique_id(a: &AttemptRef, r: &ReturnRecord) -> String {
    a.unique_id
        .clone()
        .or_else(|| r.original_unique_id.clone())
        .or_else(|| r.unique_id.clone())
        .unwrap_or_default()
}

/// Stores a chargeback of attempt `a` (the status change itself goes through the state
/// machine, by the caller). A repeat fills in a missing reason code and is otherwise known.
pub async fn chargeback(
    app: &AppContext,
    tx: &mut Tx,
    a: &AttemptRef,
    r: &ReturnRecord,
    src: Source,
) -> Result<Recorded, BillingError> {
    let effect = ReasonEffect::of(&app.settings, r.reason_code.as_deref());
    let original = original_unique_id(a, r);
    let kind = r.r#type.clone().unwrap_or_else(|| "chargeback".into());
    // A notification names no type ("chargeback"); a by-date record does ("1st chargeback"):
    // the same return either way. A "2nd chargeback" is another one.
    let before: Option<(i64, Option<String>)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT id, reason_code FROM chargebacks WHERE original_unique_id = $1 \
                   AND (type = $2 OR type = 'chargeback' OR $2 = 'chargeback') \
                 ORDER BY (type = $2) DESC, id LIMIT 1 FOR UPDATE",
            )
            .bind(&original)
            .bind(&kind),
        )
        .await?;
    let recorded = match &before {
        None => Recorded::New,
        Some((_, None)) if r.reason_code.is_some() => Recorded::Backfilled,
        Some(_) => Recorded::Known,
    };
    match before {
        None => {
            tx.execute(
                sqlx::query(
                    "INSERT INTO chargebacks (attempt_id, account, original_unique_id, arn, type, reason_code, \
                        reason_description, amount_minor, currency, post_date, import_date, source, delivery_id, \
                        blacklisted, deactivated, raw) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                )
                .bind(a.id)
                .bind(&a.account)
                .bind(&original)
                .bind(&r.arn)
                .bind(&kind)
                .bind(&r.reason_code)
                .bind(&r.reason_description)
                .bind(r.amount_minor)
                .bind(&r.currency)
                .bind(r.post_date)
                .bind(r.import_date)
                .bind(src.name)
                .bind(src.delivery_id)
                .bind(effect == ReasonEffect::Blacklist)
                .bind(effect != ReasonEffect::Retry)
                .bind(json!(r)),
            )
            .await?;
        }
        Some((id, _)) => {
            tx.execute(
                sqlx::query(
                    "UPDATE chargebacks SET type = CASE WHEN type = 'chargeback' THEN $2 ELSE type END, \
                        reason_code = coalesce(reason_code, $3), \
                        reason_description = coalesce(reason_description, $4), \
                        post_date = coalesce(post_date, $5), import_date = coalesce(import_date, $6), \
                        arn = coalesce(arn, $7), amount_minor = coalesce(amount_minor, $8), \
                        blacklisted = blacklisted OR (reason_code IS NULL AND $9), \
                        deactivated = deactivated OR (reason_code IS NULL AND $10), updated_at = now() \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(&kind)
                .bind(&r.reason_code)
                .bind(&r.reason_description)
                .bind(r.post_date)
                .bind(r.import_date)
                .bind(&r.arn)
                .bind(r.amount_minor)
                .bind(effect == ReasonEffect::Blacklist)
                .bind(effect != ReasonEffect::Retry),
            )
            .await?;
        }
    }
    if recorded == Recorded::Known {
        return Ok(recorded);
    }
    if recorded == Recorded::Backfilled {
        // The code arrived after the status change (which deactivated the profile without
        // one): the policy is applied now, once.
        crate::billing::state::apply_reason(tx, &app.settings, a.id, r.reason_code.as_deref())
            .await?;
    }
    if effect == ReasonEffect::Retry {
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
    if recorded == Recorded::New {
        app.metrics
            .chargebacks
            .get_or_create(&crate::metrics::ChargebackLabels {
                account: a.account.clone(),
                effect: effect.label().into(),
            })
            .inc();
        tracing::warn!(attempt_id = a.id, account = %a.account, source = src.name, reason_code = r.reason_code.as_deref().unwrap_or("-"), effect = effect.label(), "chargeback recorded");
    }
    event(tx, a, "chargeback", src, r.reason_code.as_deref()).await?;
    Ok(recorded)
}

/// Stores a retrieval request of attempt `a` (a repeat fills in what was missing).
pub async fn retrieval(
    tx: &mut Tx,
    a: &AttemptRef,
    r: &ReturnRecord,
    src: Source,
) -> Result<Recorded, BillingError> {
    let original = original_unique_id(a, r);
    let before: Option<(Option<String>,)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT reason_code FROM retrieval_requests WHERE original_unique_id = $1 FOR UPDATE",
            )
            .bind(&original),
        )
        .await?;
    let recorded = match &before {
        None => Recorded::New,
        Some((None,)) if r.reason_code.is_some() => Recorded::Backfilled,
        Some(_) => Recorded::Known,
    };
    tx.execute(
        sqlx::query(
            "INSERT INTO retrieval_requests (attempt_id, account, original_unique_id, arn, reason_code, \
                reason_description, amount_minor, currency, post_date, import_date, source, delivery_id, raw) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (original_unique_id) DO UPDATE SET \
                reason_code = coalesce(retrieval_requests.reason_code, EXCLUDED.reason_code), \
                reason_description = coalesce(retrieval_requests.reason_description, EXCLUDED.reason_description), \
                post_date = coalesce(retrieval_requests.post_date, EXCLUDED.post_date), \
                import_date = coalesce(retrieval_requests.import_date, EXCLUDED.import_date)",
        )
        .bind(a.id)
        .bind(&a.account)
        .bind(&original)
        .bind(&r.arn)
        .bind(&r.reason_code)
        .bind(&r.reason_description)
        .bind(r.amount_minor)
        .bind(&r.currency)
        .bind(r.post_date)
        .bind(r.import_date)
        .bind(src.name)
        .bind(src.delivery_id)
        .bind(json!(r)),
    )
    .await?;
    if recorded == Recorded::New {
        tracing::warn!(attempt_id = a.id, account = %a.account, source = src.name, "retrieval request recorded: the debtor's bank asks for the mandate");
    }
    if recorded != Recorded::Known {
        event(tx, a, "retrieval_request", src, r.reason_code.as_deref()).await?;
    }
    Ok(recorded)
}

/// A chargeback or retrieval request in the attempt's history (beside any status change).
async fn event(
    tx: &mut Tx,
    a: &AttemptRef,
    event: &str,
    src: Source,
    reason_code: Option<&str>,
) -> Result<(), BillingError> {
    tx.execute(
        sqlx::query(
            "INSERT INTO transaction_events (attempt_id, event, source, from_status, to_status, applied, reason_code, delivery_id) \
             SELECT id, $2, $3, status, status, true, $4, $5 FROM billing_attempts WHERE id = $1",
        )
        .bind(a.id)
        .bind(event)
        .bind(src.name)
        .bind(reason_code)
        .bind(src.delivery_id),
    )
    .await?;
    Ok(())
}
