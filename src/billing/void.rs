//! Voiding a debit (`finworker billing void <transaction_id>`): only through the gateway, never
//! locally; only after asking the gateway what the debit is now; only within
//! `billing.void_window`; and under one deterministic void id.
//!
//! The replaced system voided with a fresh random id and without re-checking, so a retried
//! chunk voided again, and its resync marked stuck debits `voided` locally with no gateway
//! call. Here a repeated command (after a void whose answer was lost, say) first learns from
//! the gateway that the debit is already voided and records that, sending nothing.

use chrono::{DateTime, Utc};

use super::{BillingError, accounts::Guarded, state};
use crate::{
    context::AppContext,
    gateway::{self, Lookup, Settled, TxKey},
};

/// What a void request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Voided {
    /// The gateway voided the debit (now, or earlier: the re-check found it voided).
    Voided {
        /// The void's own transaction id (`void-<transaction_id>`).
        void_id: String,
        /// False when the re-check found it voided already and nothing was sent.
        sent: bool,
    },
    /// Nothing to void: the gateway has the debit in this final status (recorded).
    NotVoidable(String),
    /// The gateway has no record of the debit: nothing was taken, reconciliation resolves it.
    NotAtGateway,
    /// Older than `billing.void_window`: nothing was asked or sent.
    TooOld(DateTime<Utc>),
    /// The gateway refused the void (its code and message).
    Refused(String),
    /// The void was sent but its outcome is unknown: run the command again (it re-checks
    /// before sending anything).
    Unknown(String),
    /// The gateway could not be asked (outage, open breaker, an answer saying nothing final):
    /// nothing was sent; try again later.
    NotAsked(String),
}

#[derive(sqlx::FromRow)]
struct Target {
    id: i64,
    account: String,
    status: String,
    unique_id: Option<String>,
    created_at: DateTime<Utc>,
}

/// The void transaction's id: deterministic, so the gateway can tell a repeat, and within the
/// gateway's 255 characters.
pub fn void_id(transaction_id: &str) -> String {
    let id = format!("void-{transaction_id}");
    if id.len() <= 255 {
        return id;
    }
    use sha2::Digest;
    format!(
        "void-{}",
        hex::encode(sha2::Sha256::digest(transaction_id.as_bytes()))
    )
}

/// Voids the debit `transaction_id`, as documented at the top of this module.
pub async fn void(app: &AppContext, transaction_id: &str) -> Result<Voided, BillingError> {
    let mut c = app.db.begin().await?;
    let t: Option<Target> = c
        .fetch_optional(
            sqlx::query_as(
                "SELECT id, account, status, unique_id, created_at FROM billing_attempts WHERE transaction_id = $1",
            )
            .bind(transaction_id),
        )
        .await?;
    c.commit().await?;
    let t = t.ok_or_else(|| {
        BillingError::Refused(format!("no debit has the transaction id {transaction_id}"))
    })?;
    let window = chrono::Duration::from_std(app.settings.billing.void_window)
        .unwrap_or_else(|_| chrono::Duration::hours(24));
    if Utc::now() - t.created_at > window {
        return Ok(Voided::TooOld(t.created_at));
    }
    let account = app.accounts.get(&t.account).ok_or_else(|| {
        BillingError::Refused(format!(
            "the debit's gateway account {} is not configured",
            t.account
        ))
    })?;
    // First the gateway's word on the debit, recorded like any reconcile.
    let found = match account
        .reconcile(TxKey::TransactionId(transaction_id))
        .await
    {
        Ok(Lookup::Found(a)) => a,
        Ok(Lookup::NotFound) => return Ok(Voided::NotAtGateway),
        Err(e) => return Ok(Voided::NotAsked(e.to_string())),
    };
    let now = match gateway::settle(&found) {
        Settled::Known(s) => s,
        Settled::Unknown => {
            return Ok(Voided::NotAsked(format!(
                "its answer says nothing final ({})",
                found.status
            )));
        }
    };
    if now != t.status {
        record(app, t.id, now, &found, "void: the re-check before voiding").await?;
    }
    let void_id = void_id(transaction_id);
    if now == "voided" {
        return Ok(Voided::Voided {
            void_id,
            sent: false,
        });
    }
    if !matches!(now, "approved" | "pending" | "pending_async") {
        return Ok(Voided::NotVoidable(now.to_string()));
    }
    let Some(unique_id) = found.unique_id.clone().or(t.unique_id) else {
        return Err(BillingError::Refused(format!(
            "the gateway named no unique_id for {transaction_id}; nothing was voided"
        )));
    };
    let answer = match account.guarded(|g| g.void(&void_id, &unique_id)).await {
        Ok(a) => a,
        Err(Guarded::Call(e)) => return Ok(Voided::Unknown(e.to_string())),
        // No call was made.
        Err(e) => return Ok(Voided::NotAsked(e.to_string())),
    };
    match gateway::settle(&answer) {
        Settled::Known("approved") => {
            record(
                app,
                t.id,
                "voided",
                &answer,
                &format!("voided by {void_id}"),
            )
            .await?;
            tracing::info!(attempt_id = t.id, %void_id, "debit voided");
            Ok(Voided::Voided {
                void_id,
                sent: true,
            })
        }
        Settled::Known(_) => Ok(Voided::Refused(format!(
            "{} {}",
            answer.code.map(|c| c.to_string()).unwrap_or_default(),
            answer
                .technical_message
                .or(answer.message)
                .unwrap_or_else(|| answer.status.clone())
        ))),
        Settled::Unknown => Ok(Voided::Unknown(answer.status)),
    }
}

/// Moves the attempt to `to` through the state machine (which refuses what it must).
async fn record(
    app: &AppContext,
    id: i64,
    to: &str,
    answer: &gateway::Answer,
    note: &str,
) -> Result<(), BillingError> {
    let origin = state::Origin::of("ops");
    let change = state::Change {
        id,
        to,
        answer: Some(answer),
        note: Some(note),
        reason_code: None,
    };
    let mut tx = app.db.begin().await?;
    let applied = state::apply_many(&mut tx, &app.settings, origin, state::ANY, &[change]).await?;
    tx.commit().await?;
    state::observe(&app.metrics, origin, &[change], &applied);
    Ok(())
}
