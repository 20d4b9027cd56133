//! One debit's life: claimed (attempt committed before any call), sent outside any
//! transaction through the account's guards, its outcome recorded in a new fenced
//! transaction; an attempt without a trusted outcome is reconciled by its transaction_id and
//! sent again (same id) only when the gateway has no record of it and the last send's
//! deadline is `gateway.resend_after` in the past.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use uuid::Uuid;

use super::{BillingError, accounts::Account, rules, state};
use crate::{
    context::AppContext,
    db::Tx,
    gateway::{self, Answer, CallError, Debit, Lookup, Settled},
    queue::fence::Fence,
};

/// A claimed debit, ready to send.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The attempt.
    pub attempt_id: i64,
    /// What to send.
    pub debit: Debit,
    /// When it was claimed: it is sent within `gateway.request_timeout` of this or released.
    pub claimed: Instant,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claimed {
    /// Debits to send (possibly none when every claimed item was excluded).
    Debits(Vec<Claim>),
    /// No item is queued any more.
    Empty,
    /// The run is not running (paused, cancelled, completed): `status`.
    Halted(String),
}

/// How the last send or reconcile went, for the caller's bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Recorded this status.
    Recorded(&'static str),
    /// No call was made (breaker open, rate limiter unreachable, draining): released.
    NotSent,
}

/// Records items' fates: `(item_no, state, reason, detail)`.
pub async fn decide(
    tx: &mut Tx,
    run: Uuid,
    decided: &[(i32, &'static str, Option<String>, Option<String>)],
) -> Result<(), BillingError> {
    if decided.is_empty() {
        return Ok(());
    }
    let nos: Vec<i32> = decided.iter().map(|d| d.0).collect();
    let states: Vec<&str> = decided.iter().map(|d| d.1).collect();
    let reasons: Vec<Option<&str>> = decided.iter().map(|d| d.2.as_deref()).collect();
    let details: Vec<Option<&str>> = decided.iter().map(|d| d.3.as_deref()).collect();
    tx.execute(
        sqlx::query(
            "UPDATE billing_items i SET state = t.s, reason = t.r, detail = t.x, decided_at = now() \
             FROM unnest($2::int4[], $3::text[], $4::text[], $5::text[]) AS t(n, s, r, x) \
             WHERE i.run_id = $1 AND i.item_no = t.n",
        )
        .bind(run)
        .bind(&nos)
        .bind(&states)
        .bind(&reasons)
        .bind(&details),
    )
    .await?;
    Ok(())
}

/// The account's monthly cap and, when it has one, what this month has committed (the
/// month's row is locked until the transaction ends, so claims of a capped account take turns;
/// an uncapped account keeps no running total and its claims never wait for each other).
pub async fn month_state(tx: &mut Tx, account: &str) -> Result<(Option<i64>, i64), BillingError> {
    let (cap,): (Option<i64>,) = tx
        .fetch_one(
            sqlx::query_as("SELECT monthly_cap_minor FROM gateway_accounts WHERE name = $1")
                .bind(account),
        )
        .await?;
    if cap.is_none() {
        return Ok((None, 0));
    }
    // First claim of the month (or of a newly set cap): start from what is already live.
    tx.execute(
        sqlx::query(
            "INSERT INTO account_month_totals (account, month, committed_minor) \
             SELECT $1, date_trunc('month', now() AT TIME ZONE 'UTC')::date, coalesce(sum(amount_minor), 0) \
             FROM billing_attempts WHERE account = $1 \
             AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' \
             AND status IN ('submitted', 'unknown', 'pending', 'pending_async', 'approved') \
             ON CONFLICT DO NOTHING",
        )
        .bind(account),
    )
    .await?;
    let (used,): (i64,) = tx
        .fetch_one(
            sqlx::query_as(
                "SELECT committed_minor FROM account_month_totals \
                 WHERE account = $1 AND month = date_trunc('month', now() AT TIME ZONE 'UTC')::date FOR UPDATE",
            )
            .bind(account),
        )
        .await?;
    Ok((cap, used))
}

/// The run's and the account's caps, used up item by item in item order (by a claim, or by a
/// dry run's selection).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// The run's cap.
    pub run_cap: Option<i64>,
    /// What the run has committed.
    pub run_used: i64,
    /// The account's monthly cap.
    pub month_cap: Option<i64>,
    /// What the account's month has committed.
    pub month_used: i64,
}

impl Caps {
    /// Takes `amount` from both caps, or says which one it would overrun.
    pub fn admit(&mut self, amount: i64) -> Result<(), (&'static str, String)> {
        if self.run_cap.is_some_and(|cap| self.run_used + amount > cap) {
            return Err(("run_cap", "the run's cap is reached".into()));
        }
        if let Some(cap) = self.month_cap
            && self.month_used + amount > cap
        {
            return Err((
                "account_monthly_cap",
                format!(
                    "the account's monthly cap of {} is reached",
                    crate::money::format_minor(cap)
                ),
            ));
        }
        self.run_used += amount;
        self.month_used += amount;
        Ok(())
    }
}

/// Claims up to `billing.claim_size` queued items of a running run: re-checks every rule with
/// the profiles locked, applies the run's and the account's caps, and commits one attempt per
/// admitted debtor (status `submitted`, deterministic transaction_id) before anything is sent.
pub async fn claim(app: &AppContext, fence: &Fence, run_id: Uuid) -> Result<Claimed, BillingError> {
    let s = &app.settings;
    let mut tx = app.db.begin().await?;
    // The run's cap never changes. A capped run's claims take turns on its row (its running
    // total); the others only share-lock it, so a cancel waits for claims under way and is
    // seen by every later one, and claims of one run never wait for each other.
    let Some((capped,)): Option<(bool,)> = tx
        .fetch_optional(
            sqlx::query_as("SELECT cap_minor IS NOT NULL FROM billing_runs WHERE id = $1")
                .bind(run_id),
        )
        .await?
    else {
        return Err(BillingError::NoRun(run_id));
    };
    let lock = if capped { "FOR UPDATE" } else { "FOR SHARE" };
    type RunState = (String, String, bool, Option<i64>, i64);
    let (status, account, skip_cb, cap, committed): RunState = tx
        .fetch_one(
            sqlx::query_as(&format!(
                "SELECT status, account, skip_chargeback_check, cap_minor, committed_minor \
                 FROM billing_runs WHERE id = $1 {lock}"
            ))
            .bind(run_id),
        )
        .await?;
    if status != "running" {
        tx.commit().await?;
        return Ok(Claimed::Halted(status));
    }
    let nos: Vec<i32> = tx
        .fetch_all(
            sqlx::query_as::<_, (i32,)>(
                "SELECT item_no FROM billing_items WHERE run_id = $1 AND state = 'queued' \
                 ORDER BY item_no LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(run_id)
            .bind(i64::from(s.billing.claim_size)),
        )
        .await?
        .into_iter()
        .map(|(n,)| n)
        .collect();
    if nos.is_empty() {
        tx.commit().await?;
        return Ok(Claimed::Empty);
    }
    // The profiles are locked in id order (no deadlock between claims): the cool-down and
    // one-live-debit checks below cannot race another claim of the same IBAN.
    tx.execute(
        sqlx::query(
            "SELECT 1 FROM debtor_profiles WHERE id IN \
             (SELECT profile_id FROM billing_items WHERE run_id = $1 AND item_no = ANY($2)) ORDER BY id FOR UPDATE",
        )
        .bind(run_id)
        .bind(&nos),
    )
    .await?;
    let (enabled, currency, hold): (bool, String, Option<String>) = tx
        .fetch_one(
            sqlx::query_as(
                "SELECT enabled, currency, hold_reason FROM gateway_accounts WHERE name = $1",
            )
            .bind(&account),
        )
        .await?;
    if let Some(hold) = hold {
        tx.execute(
            sqlx::query(
                "UPDATE billing_runs SET status = 'paused', paused_by = 'chargeback_guard', \
                 pause_reason = $2, updated_at = now() WHERE id = $1",
            )
            .bind(run_id)
            .bind(format!("the gateway account is held: {hold}")),
        )
        .await?;
        tracing::error!(run_id = %run_id, account = %account, hold = %hold, "billing run paused: its gateway account is held by the chargeback-rate guard");
        fence.check(&mut tx).await?;
        tx.commit().await?;
        return Ok(Claimed::Halted("paused".into()));
    }
    if !enabled {
        tx.execute(
            sqlx::query(
                "UPDATE billing_runs SET status = 'paused', paused_by = 'ops', \
                 pause_reason = 'the gateway account is disabled', updated_at = now() WHERE id = $1",
            )
            .bind(run_id),
        )
        .await?;
        tracing::error!(run_id = %run_id, account = %account, "billing run paused: its gateway account is disabled");
        fence.check(&mut tx).await?;
        tx.commit().await?;
        return Ok(Claimed::Halted("paused".into()));
    }
    let (month_cap, month_used) = month_state(&mut tx, &account).await?;
    let cands = rules::load(&mut tx, s, run_id, &nos).await?;
    let mut decided = Vec::new();
    let mut admitted: Vec<(&rules::Candidate, Debit)> = Vec::new();
    let mut caps = Caps {
        run_cap: cap,
        run_used: committed,
        month_cap,
        month_used,
    };
    for c in &cands {
        if let Some((r, d)) = c.exclusion(s, &currency, skip_cb, false) {
            decided.push((c.item_no, "excluded", Some(r.to_string()), Some(d)));
        } else if let Err((r, d)) = caps.admit(c.amount_minor) {
            decided.push((c.item_no, "excluded", Some(r.into()), Some(d)));
        } else {
            admitted.push((c, c.debit(s)));
        }
    }
    let window =
        chrono::Duration::from_std(s.gateway.request_timeout * 2 + s.gateway.connect_timeout)
            .unwrap_or_else(|_| chrono::Duration::minutes(2));
    let mut claims = Vec::new();
    if !admitted.is_empty() {
        let items: Vec<i32> = admitted.iter().map(|(c, _)| c.item_no).collect();
        let debtors: Vec<Option<i64>> = admitted.iter().map(|(c, _)| c.debtor_id).collect();
        let profiles: Vec<Option<i64>> = admitted.iter().map(|(c, _)| c.profile_id).collect();
        let models: Vec<String> = admitted
            .iter()
            .map(|(c, _)| c.model.clone().unwrap_or_default())
            .collect();
        let cycles: Vec<&str> = admitted.iter().map(|(c, _)| c.cycle.as_str()).collect();
        let amounts: Vec<i64> = admitted.iter().map(|(c, _)| c.amount_minor).collect();
        let txids: Vec<&str> = admitted
            .iter()
            .map(|(_, d)| d.transaction_id.as_str())
            .collect();
        let hashes: Vec<String> = admitted.iter().map(|(_, d)| d.request_hash()).collect();
        // ON CONFLICT DO NOTHING covers the partial unique index: a debtor whose slot is
        // taken after all is excluded below, never debited twice.
        let rows: Vec<(i64, i32)> = tx
            .fetch_all(
                sqlx::query_as(
                    "INSERT INTO billing_attempts (run_id, item_no, debtor_id, profile_id, account, model, cycle, amount_minor, \
                     currency, transaction_id, status, request_hash, sent_at, send_deadline, next_reconcile_at) \
                     SELECT $1, t.n, t.d, t.p, $2, t.m, t.c, t.a, $3, t.x, 'submitted', t.h, now(), now() + $4::interval, now() + $4::interval \
                     FROM unnest($5::int4[], $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[]) \
                     AS t(n, d, p, m, c, a, x, h) ON CONFLICT DO NOTHING RETURNING id, item_no",
                )
                .bind(run_id)
                .bind(&account)
                .bind(&currency)
                .bind(window)
                .bind(&items)
                .bind(&debtors)
                .bind(&profiles)
                .bind(&models)
                .bind(&cycles)
                .bind(&amounts)
                .bind(&txids)
                .bind(&hashes),
            )
            .await?;
        let by_item: std::collections::HashMap<i32, i64> =
            rows.into_iter().map(|(id, n)| (n, id)).collect();
        let now = Instant::now();
        let mut added = 0i64;
        for (c, d) in admitted {
            match by_item.get(&c.item_no) {
                Some(&id) => {
                    added += c.amount_minor;
                    claims.push(Claim {
                        attempt_id: id,
                        debit: d,
                        claimed: now,
                    });
                }
                None => decided.push((
                    c.item_no,
                    "excluded",
                    Some("in_flight".into()),
                    Some("another debit of this profile and cycle exists".into()),
                )),
            }
        }
        let (nos, ids): (Vec<i32>, Vec<i64>) = claims
            .iter()
            .filter_map(|c| {
                by_item
                    .iter()
                    .find(|(_, id)| **id == c.attempt_id)
                    .map(|(n, id)| (*n, *id))
            })
            .unzip();
        tx.execute(
            sqlx::query(
                "UPDATE billing_items i SET state = 'attempted', attempt_id = t.id, decided_at = now() \
                 FROM unnest($2::int4[], $3::bigint[]) AS t(n, id) WHERE i.run_id = $1 AND i.item_no = t.n",
            )
            .bind(run_id)
            .bind(&nos)
            .bind(&ids),
        )
        .await?;
        tx.execute(
            sqlx::query(
                "UPDATE billing_runs SET committed_minor = committed_minor + $2 \
                 WHERE id = $1 AND cap_minor IS NOT NULL",
            )
            .bind(run_id)
            .bind(added),
        )
        .await?;
        tx.execute(
            sqlx::query(
                "UPDATE account_month_totals SET committed_minor = committed_minor + $2 \
                 WHERE account = $1 AND month = date_trunc('month', now() AT TIME ZONE 'UTC')::date",
            )
            .bind(&account)
            .bind(added),
        )
        .await?;
    }
    decide(&mut tx, run_id, &decided).await?;
    fence.check(&mut tx).await?;
    crate::faults::point("claim_before_commit");
    tx.commit().await?;
    if !claims.is_empty() {
        crate::faults::point("claim_after_commit");
    }
    Ok(Claimed::Debits(claims))
}

/// What one call produced.
#[derive(Debug)]
pub enum Sent {
    /// The gateway answered.
    Answer(Answer),
    /// No trusted answer.
    Failed(CallError),
    /// No call was made.
    NotSent(String),
}

/// Sends one claimed debit through the account's breaker and rate limit. Never retries.
/// `stop` (a pause, a cancel, a drain) withdraws it while it waits for the rate limit; once
/// the call is made it is never abandoned.
pub async fn send(
    account: &Account,
    claim: &Claim,
    window: Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Sent {
    if claim.claimed.elapsed() > window {
        return Sent::NotSent(format!(
            "not sent within its send window (queued {:?} after the claim)",
            claim.claimed.elapsed()
        ));
    }
    let Some(permit) = account.breaker.permit_shared().await else {
        return Sent::NotSent(format!("the {} circuit breaker is open", account.name));
    };
    let acquired = tokio::select! {
        biased;
        () = stop.cancelled() => {
            permit.abandon();
            return Sent::NotSent("stopped before sending (the run was paused, cancelled or drained)".into());
        }
        r = account.limiter.acquire() => r,
    };
    if let Err(e) = acquired {
        permit.abandon();
        return Sent::NotSent(format!("rate limiter unreachable: {e}"));
    }
    if claim.claimed.elapsed() > window || stop.is_cancelled() {
        permit.abandon();
        return Sent::NotSent(format!(
            "not sent within its send window (waited {:?} since the claim)",
            claim.claimed.elapsed()
        ));
    }
    let call = account.gateway.sale(&claim.debit);
    let call = async {
        // Let the request reach the gateway, then (in crash tests) die with it in flight.
        tokio::pin!(call);
        tokio::select! {
            r = &mut call => r,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                crate::faults::point("send_started");
                call.await
            }
        }
    };
    let outcome = call.await;
    crate::faults::point("answer_received");
    match outcome {
        Ok(a) => {
            if gateway::settle(&a) == Settled::Unknown {
                permit.failure();
            } else {
                permit.success();
            }
            Sent::Answer(a)
        }
        Err(e) => {
            permit.failure();
            Sent::Failed(e)
        }
    }
}

/// Records sends' outcomes in one fenced transaction; unsent debits are released (their
/// attempt removed, their item queued again: no call was made, and the next claim makes the
/// identical attempt).
pub async fn record(
    app: &AppContext,
    fence: &Fence,
    results: &[(i64, Sent)],
) -> Result<Vec<Outcome>, BillingError> {
    let mut tx = app.db.begin().await?;
    let mut out = Vec::with_capacity(results.len());
    let mut changes = Vec::with_capacity(results.len());
    for (id, sent) in results {
        let (to, answer, note) = match sent {
            Sent::Answer(a) => {
                let to = match gateway::settle(a) {
                    Settled::Known(s) => s,
                    Settled::Unknown => "unknown",
                };
                (to, Some(a), None)
            }
            Sent::Failed(CallError::Unknown(reason)) => ("unknown", None, Some(reason.as_str())),
            Sent::Failed(CallError::Refused(reason)) => ("error", None, Some(reason.as_str())),
            Sent::NotSent(_) => {
                unsend(&mut tx, *id).await?;
                out.push(Outcome::NotSent);
                continue;
            }
        };
        changes.push(state::Change {
            id: *id,
            to,
            answer,
            note,
            reason_code: None,
        });
        out.push(Outcome::Recorded(to));
    }
    let applied = state::apply_many(
        &mut tx,
        &app.settings,
        state::Origin::of("send"),
        &["submitted"],
        &changes,
    )
    .await?;
    fence.check(&mut tx).await?;
    tx.commit().await?;
    state::observe(&app.metrics, state::Origin::of("send"), &changes, &applied);
    crate::faults::point("outcome_recorded");
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct Released {
    run_id: Option<Uuid>,
    item_no: Option<i32>,
    account: String,
    created_at: DateTime<Utc>,
    amount_minor: i64,
}

async fn unsend(tx: &mut Tx, id: i64) -> Result<(), BillingError> {
    let row: Option<Released> = tx
        .fetch_optional(
            sqlx::query_as(
                "DELETE FROM billing_attempts WHERE id = $1 AND status = 'submitted' AND sends = 1 \
                 RETURNING run_id, item_no, account, created_at, amount_minor",
            )
            .bind(id),
        )
        .await?;
    if let Some(r) = row {
        if let (Some(run), Some(item)) = (r.run_id, r.item_no) {
            tx.execute(
                sqlx::query(
                    "UPDATE billing_items SET state = 'queued', attempt_id = NULL, decided_at = NULL \
                     WHERE run_id = $1 AND item_no = $2",
                )
                .bind(run)
                .bind(item),
            )
            .await?;
        }
        state::release(tx, r.run_id, &r.account, r.created_at, r.amount_minor).await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Due {
    id: i64,
    transaction_id: String,
    status: String,
    account: String,
    send_deadline: DateTime<Utc>,
    sends: i32,
    reconcile_count: i32,
}

/// Reconciles up to `limit` attempts whose reconcile is due (of one run, or any). Returns how
/// many were looked at.
pub async fn reconcile_due(
    app: &AppContext,
    fence: &Fence,
    run: Option<Uuid>,
    limit: i64,
) -> Result<usize, BillingError> {
    let g = &app.settings.gateway;
    let mut tx = app.db.begin().await?;
    let due: Vec<Due> = tx
        .fetch_all(
            sqlx::query_as::<_, Due>(
                "SELECT id, transaction_id, status, account, send_deadline, sends, reconcile_count FROM billing_attempts \
                 WHERE status IN ('submitted', 'unknown', 'pending', 'pending_async') AND next_reconcile_at <= now() \
                 AND ($1::uuid IS NULL OR run_id = $1) ORDER BY next_reconcile_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(run)
            .bind(limit),
        )
        .await?;
    for d in &due {
        let step = g
            .reconcile_interval
            .saturating_mul(
                2u32.saturating_pow(u32::try_from(d.reconcile_count.clamp(0, 20)).unwrap_or(20)),
            )
            .min(g.reconcile_max_interval);
        tx.execute(
            sqlx::query(
                "UPDATE billing_attempts SET reconcile_count = reconcile_count + 1, last_reconciled_at = now(), \
                 next_reconcile_at = now() + $2::interval WHERE id = $1",
            )
            .bind(d.id)
            .bind(chrono::Duration::from_std(step).unwrap_or_else(|_| chrono::Duration::minutes(1))),
        )
        .await?;
    }
    fence.check(&mut tx).await?;
    tx.commit().await?;
    // Reconciles run concurrently (each under the account's rate limit and breaker).
    let n = due.len();
    let results: Vec<Result<(), BillingError>> = futures::stream::iter(due)
        .map(|d| async move { reconcile_one(app, fence, &d).await })
        .buffer_unordered(app.settings.billing.in_flight)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(n)
}

async fn reconcile_one(app: &AppContext, fence: &Fence, d: &Due) -> Result<(), BillingError> {
    let g = &app.settings.gateway;
    let Some(account) = app.accounts.get(&d.account) else {
        tracing::error!(attempt_id = d.id, account = %d.account, "cannot reconcile: the account is no longer configured");
        return Ok(());
    };
    let lookup = match account
        .reconcile(gateway::TxKey::TransactionId(&d.transaction_id))
        .await
    {
        Ok(l) => Ok(l),
        // No call was made: try again at the next pass.
        Err(super::accounts::Guarded::BreakerOpen | super::accounts::Guarded::Limiter(_)) => {
            return Ok(());
        }
        Err(super::accounts::Guarded::Call(e)) => Err(e),
    };
    match lookup {
        Ok(Lookup::Found(a)) => {
            if let Settled::Known(to) = gateway::settle(&a) {
                let mut tx = app.db.begin().await?;
                let change = state::Change {
                    id: d.id,
                    to,
                    answer: Some(&a),
                    note: None,
                    reason_code: None,
                };
                let origin = state::Origin::of("reconcile");
                let applied =
                    state::apply_many(&mut tx, &app.settings, origin, state::OPEN, &[change])
                        .await?;
                fence.check(&mut tx).await?;
                tx.commit().await?;
                state::observe(&app.metrics, origin, &[change], &applied);
                tracing::info!(attempt_id = d.id, from = %d.status, to, "debit reconciled");
            }
        }
        Ok(Lookup::NotFound) if matches!(d.status.as_str(), "submitted" | "unknown") => {
            let resend_at = d.send_deadline
                + chrono::Duration::from_std(g.resend_after)
                    .unwrap_or_else(|_| chrono::Duration::minutes(15));
            if Utc::now() >= resend_at {
                resend(app, fence, &account, d).await?;
            } else {
                let mut tx = app.db.begin().await?;
                tx.execute(
                    sqlx::query(
                        "UPDATE billing_attempts SET next_reconcile_at = $2 WHERE id = $1 AND status IN ('submitted', 'unknown')",
                    )
                    .bind(d.id)
                    .bind(resend_at),
                )
                .await?;
                fence.check(&mut tx).await?;
                tx.commit().await?;
            }
        }
        Ok(Lookup::NotFound) => {
            tracing::error!(attempt_id = d.id, status = %d.status, "the gateway has no record of a debit it answered: left for a person");
        }
        Err(e) => {
            tracing::warn!(attempt_id = d.id, error = %e, "reconcile failed; tried again later")
        }
    }
    Ok(())
}

/// Sends a debit the gateway has no record of again, with the same transaction_id and the
/// same content. The new send is committed first (status `submitted`, a new deadline).
async fn resend(
    app: &AppContext,
    fence: &Fence,
    account: &Account,
    d: &Due,
) -> Result<(), BillingError> {
    let g = &app.settings.gateway;
    let mut tx = app.db.begin().await?;
    let fields: Option<(rules::DebtorFields, i64, String, String)> =
        load_debit_fields(&mut tx, d.id).await?;
    let Some((fields, amount, currency, hash)) = fields else {
        tx.commit().await?;
        return Ok(());
    };
    let debit = fields.debit(&app.settings, d.transaction_id.clone(), amount, &currency);
    if debit.request_hash() != hash {
        tracing::error!(
            attempt_id = d.id,
            "not resent: the debit would differ from the one first sent; left for a person"
        );
        tx.commit().await?;
        return Ok(());
    }
    let window = chrono::Duration::from_std(g.request_timeout * 2 + g.connect_timeout)
        .unwrap_or_else(|_| chrono::Duration::minutes(2));
    let bumped = tx
        .execute(
            sqlx::query(
                "UPDATE billing_attempts SET status = 'submitted', sends = sends + 1, sent_at = now(), \
                 send_deadline = now() + $3::interval, next_reconcile_at = now() + $3::interval, updated_at = now() \
                 WHERE id = $1 AND status IN ('submitted', 'unknown') AND sends = $2",
            )
            .bind(d.id)
            .bind(d.sends)
            .bind(window),
        )
        .await?;
    fence.check(&mut tx).await?;
    tx.commit().await?;
    if bumped == 0 {
        return Ok(());
    }
    tracing::warn!(
        attempt_id = d.id,
        sends = d.sends + 1,
        "the gateway has no record of this debit: sending it again under the same transaction_id"
    );
    let claim = Claim {
        attempt_id: d.id,
        debit,
        claimed: Instant::now(),
    };
    let never = tokio_util::sync::CancellationToken::new();
    let sent = send(account, &claim, g.request_timeout * 2, &never).await;
    let sent = match sent {
        // Already committed as a send: if no call could be made, it stays `submitted` and is
        // reconciled again (never released: a row with sends > 1 is kept).
        Sent::NotSent(r) => Sent::Failed(CallError::Unknown(format!("not sent: {r}"))),
        other => other,
    };
    record(app, fence, &[(d.id, sent)]).await?;
    Ok(())
}

async fn load_debit_fields(
    tx: &mut Tx,
    attempt_id: i64,
) -> Result<Option<(rules::DebtorFields, i64, String, String)>, BillingError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        fields: rules::DebtorFields,
        amount_minor: i64,
        currency: String,
        request_hash: String,
    }
    let r: Option<Row> = tx
        .fetch_optional(
            sqlx::query_as::<_, Row>(&format!(
                "SELECT {}, a.amount_minor, a.currency, a.request_hash FROM billing_attempts a \
                 JOIN debtors d ON d.id = a.debtor_id WHERE a.id = $1",
                rules::DEBTOR_COLUMNS
            ))
            .bind(attempt_id),
        )
        .await?;
    Ok(r.map(|r| (r.fields, r.amount_minor, r.currency, r.request_hash)))
}
