//! The per-account chargeback-rate guard: when an account's chargebacks over the window reach
//! `lifecycle.chargeback_guard.hold_at_rate` of its debits (with enough debits for the rate to
//! mean something), the account is held: its billing runs pause at their next claim and no new
//! run debits through it, until ops release it. Checked after every new chargeback and by the
//! daily sweep; the figures go to the log, the account row and the metrics.

use serde::Serialize;

use crate::{billing::BillingError, context::AppContext, metrics::AccountLabels};

/// An account's chargeback figures over the guard's window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figures {
    /// Days looked back.
    pub window_days: u32,
    /// Debits that reached the gateway and were not refused (pending, approved, chargebacked…).
    pub debits: i64,
    /// Chargebacks recorded in the window.
    pub chargebacks: i64,
    /// chargebacks / debits.
    pub rate: f64,
}

/// Reads the figures of `account`.
pub async fn figures(app: &AppContext, account: &str) -> Result<Figures, BillingError> {
    let g = &app.settings.lifecycle.chargeback_guard;
    let mut tx = app.db.begin().await?;
    let (debits, chargebacks): (i64, i64) = tx
        .fetch_one(
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM billing_attempts WHERE account = $1 \
                   AND created_at > now() - make_interval(days => $2) \
                   AND status IN ('pending', 'pending_async', 'approved', 'chargebacked', 'refunded')), \
                 (SELECT count(*) FROM chargebacks WHERE account = $1 \
                   AND created_at > now() - make_interval(days => $2))",
            )
            .bind(account)
            .bind(i32::try_from(g.window_days).unwrap_or(30)),
        )
        .await?;
    tx.commit().await?;
    let rate = if debits > 0 {
        chargebacks as f64 / debits as f64
    } else {
        0.0
    };
    Ok(Figures {
        window_days: g.window_days,
        debits,
        chargebacks,
        rate,
    })
}

/// Checks `account` and holds it when its rate reached the threshold. Returns whether the
/// account is held now.
pub async fn check(app: &AppContext, account: &str) -> Result<bool, BillingError> {
    let g = &app.settings.lifecycle.chargeback_guard;
    let f = figures(app, account).await?;
    let labels = AccountLabels {
        account: account.to_string(),
    };
    app.metrics
        .chargeback_rate
        .get_or_create(&labels)
        .set(f.rate);
    let over = g.hold_at_rate > 0.0
        && f.debits >= i64::from(g.min_transactions)
        && f.rate >= g.hold_at_rate;
    let mut tx = app.db.begin().await?;
    let held: Option<(Option<String>,)> = tx
        .fetch_optional(
            sqlx::query_as("SELECT hold_reason FROM gateway_accounts WHERE name = $1")
                .bind(account),
        )
        .await?;
    let already = held.as_ref().is_some_and(|(r,)| r.is_some());
    if over && !already {
        let reason = format!(
            "chargeback rate {:.2}% over {} days ({} chargebacks / {} debits) reached the guard's {:.2}%",
            f.rate * 100.0,
            f.window_days,
            f.chargebacks,
            f.debits,
            g.hold_at_rate * 100.0
        );
        tx.execute(
            sqlx::query(
                "UPDATE gateway_accounts SET hold_reason = $2, hold_at = now(), hold_figures = $3 \
                 WHERE name = $1 AND hold_reason IS NULL",
            )
            .bind(account)
            .bind(&reason)
            .bind(serde_json::to_value(&f).unwrap_or_default()),
        )
        .await?;
        tracing::error!(
            account,
            rate = f.rate,
            chargebacks = f.chargebacks,
            debits = f.debits,
            window_days = f.window_days,
            hold_at_rate = g.hold_at_rate,
            "account held by the chargeback-rate guard: its billing runs pause until ops release it (finworker accounts release {account})"
        );
    }
    tx.commit().await?;
    let now_held = already || over;
    app.metrics
        .account_held
        .get_or_create(&labels)
        .set(i64::from(now_held));
    Ok(now_held)
}

/// Releases a held account (ops). Returns whether it was held.
pub async fn release(app: &AppContext, account: &str) -> Result<bool, BillingError> {
    let mut tx = app.db.begin().await?;
    let n = tx
        .execute(
            sqlx::query(
                "UPDATE gateway_accounts SET hold_reason = NULL, hold_at = NULL, hold_figures = NULL \
                 WHERE name = $1 AND hold_reason IS NOT NULL",
            )
            .bind(account),
        )
        .await?;
    tx.commit().await?;
    app.metrics
        .account_held
        .get_or_create(&AccountLabels {
            account: account.to_string(),
        })
        .set(0);
    if n > 0 {
        tracing::warn!(
            account,
            "account released from the chargeback-rate guard by an operator"
        );
    }
    Ok(n > 0)
}
