//! The attempt state machine: which status may follow which, and what a change does to the
//! profile, the run and the account's month, applied in the caller's transaction exactly once
//! (the status update is conditional on the status it changes from).
//!
//! | from \ to                 | pending(_async) | approved | declined, error | voided | chargebacked, refunded |
//! |---------------------------|-----------------|----------|-----------------|--------|------------------------|
//! | submitted, unknown        | yes             | yes      | yes             | yes    | yes                    |
//! | pending, pending_async    | yes             | yes      | yes             | yes    | yes                    |
//! | approved                  | –               | –        | –               | yes    | yes                    |
//! | declined, error, voided, chargebacked, refunded | – | – | –               | –      | –                      |
//!
//! `submitted`/`unknown` → `unknown` is also allowed (a send or reconcile that learnt nothing).
//! A transition not in the table is refused and logged, never applied: a late `approved` never
//! overwrites `chargebacked`.

use chrono::{DateTime, Months, Utc};

use crate::{
    config::{BillingSettings, Settings},
    db::{DbError, Tx},
    gateway::Answer,
};

/// Statuses that hold the (profile, cycle) slot: a debit that happened or may have.
pub const LIVE: &[&str] = &[
    "submitted",
    "unknown",
    "pending",
    "pending_async",
    "approved",
];

/// Statuses whose outcome is not known yet (reconciled).
pub const OPEN: &[&str] = &["submitted", "unknown", "pending", "pending_async"];

/// May `from` become `to`?
pub fn allowed(from: &str, to: &str) -> bool {
    match from {
        "submitted" | "unknown" => to != "submitted",
        "pending" | "pending_async" => !matches!(to, "submitted" | "unknown"),
        "approved" => matches!(to, "voided" | "chargebacked" | "refunded"),
        _ => false,
    }
}

/// The next bill of a recurring profile after a debit at `at`.
pub fn next_bill(
    model: &str,
    billing: &BillingSettings,
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let m = billing.models.get(model)?;
    if let Some(months) = m.cycle_months {
        return at.checked_add_months(Months::new(months));
    }
    m.cycle_days
        .map(|d| at + chrono::Duration::days(i64::from(d)))
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    status: String,
    profile_id: i64,
    amount_minor: i64,
    model: String,
    run_id: Option<uuid::Uuid>,
    account: String,
    created_at: DateTime<Utc>,
}

/// What the change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The attempt moved from `from` to the new status.
    Changed {
        /// Previous status.
        from: String,
    },
    /// It already had that status (a repeated answer): nothing to do.
    Same,
    /// The change is not in the table; nothing was written.
    Refused {
        /// Current status.
        current: String,
    },
    /// No such attempt, or its status is not one of those the caller expected.
    Missed,
}

/// Moves attempt `id` to `to` with what the gateway said, when its current status is one of
/// `expect` and the table allows it, and applies the side effects in `tx`:
/// - into `pending`/`pending_async`/`approved` from `submitted`/`unknown`: the profile's
///   `last_billed_at` and, for recurring models, `next_bill_at`;
/// - into `approved`: lifetime total and `last_success_at`;
/// - out of a live status into `declined`/`error`/`voided`: the run's and the account's
///   committed amounts are released; out of `approved` the lifetime total is taken back;
/// - into `chargebacked`: the profile is deactivated.
pub async fn apply(
    tx: &mut Tx,
    settings: &Settings,
    id: i64,
    expect: &[&str],
    to: &str,
    answer: Option<&Answer>,
    note: Option<&str>,
) -> Result<Applied, DbError> {
    let row: Option<AttemptRow> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT status, profile_id, amount_minor, model, run_id, account, created_at \
                 FROM billing_attempts WHERE id = $1 FOR UPDATE",
            )
            .bind(id),
        )
        .await?;
    let Some(AttemptRow {
        status: from,
        profile_id,
        amount_minor: amount,
        model,
        run_id,
        account,
        created_at,
    }) = row
    else {
        return Ok(Applied::Missed);
    };
    if !expect.contains(&from.as_str()) {
        return Ok(Applied::Missed);
    }
    if from == to {
        if let Some(a) = answer {
            // Same status, maybe a gateway id learnt now.
            tx.execute(
                sqlx::query(
                    "UPDATE billing_attempts SET unique_id = coalesce(unique_id, $2), updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(&a.unique_id),
            )
            .await?;
        }
        return Ok(Applied::Same);
    }
    if !allowed(&from, to) {
        tracing::warn!(attempt_id = id, from = %from, to, "refused an impossible attempt status change");
        return Ok(Applied::Refused { current: from });
    }
    let (code, message, technical) = match answer {
        Some(a) => (a.code, a.message.clone(), a.technical_message.clone()),
        None => (None, note.map(str::to_string), None),
    };
    let billing = &settings.billing;
    let pending = matches!(to, "pending" | "pending_async");
    tx.execute(
        sqlx::query(
            "UPDATE billing_attempts SET status = $2, unique_id = coalesce($3, unique_id), \
             gateway_code = coalesce($4, gateway_code), message = coalesce($5, message), \
             technical_message = coalesce($6, technical_message), \
             answered_at = CASE WHEN $7 THEN now() ELSE answered_at END, \
             next_reconcile_at = CASE WHEN $8 THEN now() + $9::interval WHEN $2 = 'unknown' THEN now() ELSE NULL END, \
             updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(to)
        .bind(answer.and_then(|a| a.unique_id.clone()))
        .bind(code)
        .bind(message)
        .bind(technical)
        .bind(answer.is_some())
        .bind(pending)
        .bind(
            chrono::Duration::from_std(settings.gateway.reconcile_interval)
                .unwrap_or_else(|_| chrono::Duration::minutes(1)),
        ),
    )
    .await?;
    let was_live = LIVE.contains(&from.as_str());
    let now = Utc::now();
    if matches!(from.as_str(), "submitted" | "unknown") && (pending || to == "approved") {
        let next = next_bill(&model, billing, created_at.max(now));
        tx.execute(
            sqlx::query(
                "UPDATE debtor_profiles SET last_billed_at = now(), \
                 next_bill_at = CASE WHEN billing_model = 'legacy' THEN next_bill_at ELSE $2 END, updated_at = now() \
                 WHERE id = $1",
            )
            .bind(profile_id)
            .bind(next),
        )
        .await?;
    }
    if to == "approved" {
        tx.execute(
            sqlx::query(
                "UPDATE debtor_profiles SET lifetime_charged_minor = lifetime_charged_minor + $2, \
                 last_success_at = now(), updated_at = now() WHERE id = $1",
            )
            .bind(profile_id)
            .bind(amount),
        )
        .await?;
    }
    if from == "approved" && matches!(to, "voided" | "refunded" | "chargebacked") {
        tx.execute(
            sqlx::query(
                "UPDATE debtor_profiles SET lifetime_charged_minor = lifetime_charged_minor - $2, updated_at = now() WHERE id = $1",
            )
            .bind(profile_id)
            .bind(amount),
        )
        .await?;
    }
    if was_live && matches!(to, "declined" | "error" | "voided") {
        release(tx, run_id, &account, created_at, amount).await?;
    }
    if to == "chargebacked" {
        tx.execute(
            sqlx::query(
                "UPDATE debtor_profiles SET active = false, deactivated_reason = 'chargeback', \
                 chargebacked_at = coalesce(chargebacked_at, now()), updated_at = now() WHERE id = $1",
            )
            .bind(profile_id),
        )
        .await?;
    }
    Ok(Applied::Changed { from })
}

/// Gives back what a debit had committed on its run and its account's month (kept for capped
/// runs and accounts only).
pub async fn release(
    tx: &mut Tx,
    run_id: Option<uuid::Uuid>,
    account: &str,
    created_at: DateTime<Utc>,
    amount: i64,
) -> Result<(), DbError> {
    if let Some(run) = run_id {
        tx.execute(
            sqlx::query(
                "UPDATE billing_runs SET committed_minor = committed_minor - $2 WHERE id = $1 AND cap_minor IS NOT NULL",
            )
            .bind(run)
            .bind(amount),
        )
        .await?;
    }
    tx.execute(
        sqlx::query(
            "UPDATE account_month_totals SET committed_minor = committed_minor - $3 \
             WHERE account = $1 AND month = date_trunc('month', $2 AT TIME ZONE 'UTC')::date",
        )
        .bind(account)
        .bind(created_at)
        .bind(amount),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_never_regress() {
        assert!(allowed("submitted", "approved"));
        assert!(allowed("unknown", "declined"));
        assert!(allowed("pending_async", "approved"));
        assert!(allowed("approved", "chargebacked"));
        assert!(
            !allowed("chargebacked", "approved"),
            "a late approval never overwrites a chargeback"
        );
        assert!(!allowed("declined", "approved"));
        assert!(!allowed("approved", "pending"));
        assert!(!allowed("approved", "unknown"));
        assert!(!allowed("pending", "unknown"));
    }
}
