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

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};

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

/// Every status an attempt can have: a webhook, ledger sync or sweep may find it in any, the
/// table decides.
pub const ANY: &[&str] = &[
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

/// One status change asked of [`apply_many`].
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The attempt.
    pub id: i64,
    /// The status it should get.
    pub to: &'a str,
    /// What the gateway said, when it said something.
    pub answer: Option<&'a Answer>,
    /// Why, when the gateway said nothing (kept as the attempt's message).
    pub note: Option<&'a str>,
    /// A chargeback's or return's reason code (AC04, AM04…): decides, by the one policy in
    /// `lifecycle`, whether the IBAN is blacklisted and the profile deactivated.
    pub reason_code: Option<&'a str>,
}

/// Where a change comes from, for the `transaction_events` history.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// send | webhook | reconcile | ledger_sync | chargeback_sweep | ops.
    pub source: &'static str,
    /// The webhook delivery that caused it.
    pub delivery_id: Option<i64>,
}

impl Origin {
    /// A change with no delivery behind it.
    pub const fn of(source: &'static str) -> Self {
        Self {
            source,
            delivery_id: None,
        }
    }
}

/// What a chargeback's reason code does (`lifecycle.blacklist_codes`, `retry_codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonEffect {
    /// The IBAN is blacklisted and the profile deactivated.
    Blacklist,
    /// Neither: a later cycle may collect (insufficient funds).
    Retry,
    /// The profile is deactivated; the IBAN is not blacklisted.
    Deactivate,
}

impl ReasonEffect {
    /// The policy's decision for `code` (none or unknown: deactivate).
    pub fn of(settings: &Settings, code: Option<&str>) -> Self {
        let code = code.map(|c| c.trim().to_ascii_uppercase());
        let has = |list: &[String]| {
            code.as_deref()
                .is_some_and(|c| list.iter().any(|l| l.eq_ignore_ascii_case(c)))
        };
        if has(&settings.lifecycle.blacklist_codes) {
            Self::Blacklist
        } else if has(&settings.lifecycle.retry_codes) {
            Self::Retry
        } else {
            Self::Deactivate
        }
    }

    /// As in metrics and the chargebacks table.
    pub fn label(self) -> &'static str {
        match self {
            Self::Blacklist => "blacklisted",
            Self::Retry => "retry",
            Self::Deactivate => "deactivated",
        }
    }
}

/// Applies the reason-code policy to the profile of attempt `id` when the code arrives after
/// the status change (a sweep back-filling a chargeback's code): blacklist and deactivate,
/// or deactivate. A retry code changes nothing here (see `lifecycle::returns`).
pub async fn apply_reason(
    tx: &mut Tx,
    settings: &Settings,
    id: i64,
    code: Option<&str>,
) -> Result<(), DbError> {
    let effect = ReasonEffect::of(settings, code);
    if effect == ReasonEffect::Retry {
        return Ok(());
    }
    tx.execute(
        sqlx::query(
            "UPDATE debtor_profiles p SET active = false, deactivated_reason = 'chargeback', \
             chargebacked_at = coalesce(p.chargebacked_at, now()), updated_at = now() \
             FROM billing_attempts a WHERE a.id = $1 AND p.id = a.profile_id",
        )
        .bind(id),
    )
    .await?;
    if effect == ReasonEffect::Blacklist {
        tx.execute(
            sqlx::query(
                "INSERT INTO blacklist (kind, iban_hash, reason, source) \
                 SELECT 'iban', p.iban_hash, 'chargeback ' || $2, 'chargeback' \
                 FROM billing_attempts a JOIN debtor_profiles p ON p.id = a.profile_id WHERE a.id = $1 \
                 ON CONFLICT (iban_hash) WHERE kind = 'iban' DO NOTHING",
            )
            .bind(id)
            .bind(code.unwrap_or_default().trim().to_ascii_uppercase()),
        )
        .await?;
    }
    Ok(())
}

/// Counts what [`apply_many`] did in `finworker_transaction_events{source, to}` (`to` is
/// `refused` for a change the table refused). Call it after the transaction committed.
pub fn observe(
    metrics: &crate::metrics::Metrics,
    origin: Origin,
    changes: &[Change<'_>],
    applied: &[Applied],
) {
    for (c, a) in changes.iter().zip(applied) {
        let to = match a {
            Applied::Changed { .. } => c.to,
            Applied::Refused { .. } => "refused",
            Applied::Same | Applied::Missed => continue,
        };
        metrics
            .transaction_events
            .get_or_create(&crate::metrics::EventLabels {
                source: origin.source.to_string(),
                to: to.to_string(),
            })
            .inc();
    }
}

/// Moves attempt `id` to `to`: [`apply_many`] for one change.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    tx: &mut Tx,
    settings: &Settings,
    origin: Origin,
    id: i64,
    expect: &[&str],
    to: &str,
    answer: Option<&Answer>,
    note: Option<&str>,
) -> Result<Applied, DbError> {
    let change = Change {
        id,
        to,
        answer,
        note,
        reason_code: None,
    };
    let mut r = apply_many(tx, settings, origin, expect, &[change]).await?;
    Ok(r.pop().unwrap_or(Applied::Missed))
}

/// Moves each attempt to its `to` with what the gateway said, when its current status is one
/// of `expect` and the table allows it, and applies the side effects in `tx`:
/// - into `pending`/`pending_async`/`approved` from `submitted`/`unknown`: the profile's
///   `last_billed_at` and, for recurring models, `next_bill_at`;
/// - into `approved`: lifetime total and `last_success_at`;
/// - out of a live status into `declined`/`error`/`voided`: the run's and the account's
///   committed amounts are released; out of `approved` the lifetime total is taken back;
/// - into `chargebacked`: the reason-code policy ([`ReasonEffect`]): the profile deactivated
///   and the IBAN blacklisted, or only deactivated, or neither.
///
/// Every change, and every refused one, is appended to `transaction_events` with `origin`.
///
/// Set-based: a handful of statements whatever the number of changes (a billing run records
/// its outcomes in groups; one statement per outcome and side effect made the database, not
/// the rate limit, the bound). Attempts and then profiles are locked in id order. Returns what
/// happened to each change, in order.
pub async fn apply_many(
    tx: &mut Tx,
    settings: &Settings,
    origin: Origin,
    expect: &[&str],
    changes: &[Change<'_>],
) -> Result<Vec<Applied>, DbError> {
    // An attempt named twice: the second change must see the first's result, so it goes in a
    // later group.
    let mut out = Vec::with_capacity(changes.len());
    let mut start = 0;
    while start < changes.len() {
        let mut seen = std::collections::HashSet::new();
        let mut end = start;
        while end < changes.len() && seen.insert(changes[end].id) {
            end += 1;
        }
        out.extend(apply_group(tx, settings, origin, expect, &changes[start..end]).await?);
        start = end;
    }
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    id: i64,
    status: String,
    profile_id: i64,
    amount_minor: i64,
    model: String,
    run_id: Option<uuid::Uuid>,
    account: String,
    created_at: DateTime<Utc>,
}

/// What a group of changes does to one profile.
#[derive(Default)]
struct ProfileDelta {
    billed: bool,
    next: Option<DateTime<Utc>>,
    lifetime: i64,
    success: bool,
    deactivate: bool,
    blacklist: Option<String>,
}

async fn apply_group(
    tx: &mut Tx,
    settings: &Settings,
    origin: Origin,
    expect: &[&str],
    changes: &[Change<'_>],
) -> Result<Vec<Applied>, DbError> {
    let ids: Vec<i64> = changes.iter().map(|c| c.id).collect();
    let rows: Vec<AttemptRow> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT id, status, profile_id, amount_minor, model, run_id, account, created_at                  FROM billing_attempts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .bind(&ids),
        )
        .await?;
    let rows: HashMap<i64, AttemptRow> = rows.into_iter().map(|r| (r.id, r)).collect();
    let now = Utc::now();
    let mut out = Vec::with_capacity(changes.len());
    let mut same: (Vec<i64>, Vec<Option<String>>) = Default::default();
    let mut upd = AttemptUpdates::default();
    let mut profiles: BTreeMap<i64, ProfileDelta> = BTreeMap::new();
    let mut run_release: HashMap<uuid::Uuid, i64> = HashMap::new();
    let mut month_release: HashMap<(String, NaiveDate), i64> = HashMap::new();
    let mut events = Events::default();
    for c in changes {
        let Some(row) = rows.get(&c.id) else {
            out.push(Applied::Missed);
            continue;
        };
        let from = row.status.as_str();
        if !expect.contains(&from) {
            out.push(Applied::Missed);
            continue;
        }
        if from == c.to {
            if let Some(a) = c.answer {
                // Same status, maybe a gateway id learnt now.
                same.0.push(c.id);
                same.1.push(a.unique_id.clone());
            }
            out.push(Applied::Same);
            continue;
        }
        if !allowed(from, c.to) {
            tracing::warn!(attempt_id = c.id, from = %from, to = c.to, source = origin.source, "refused an impossible attempt status change");
            events.push(c, from, false);
            out.push(Applied::Refused {
                current: from.to_string(),
            });
            continue;
        }
        upd.push(c);
        events.push(c, from, true);
        let pending = matches!(c.to, "pending" | "pending_async");
        if matches!(from, "submitted" | "unknown") && (pending || c.to == "approved") {
            let p = profiles.entry(row.profile_id).or_default();
            p.billed = true;
            p.next = next_bill(&row.model, &settings.billing, row.created_at.max(now));
        }
        if c.to == "approved" {
            let p = profiles.entry(row.profile_id).or_default();
            p.lifetime += row.amount_minor;
            p.success = true;
        }
        if from == "approved" && matches!(c.to, "voided" | "refunded" | "chargebacked") {
            profiles.entry(row.profile_id).or_default().lifetime -= row.amount_minor;
        }
        if LIVE.contains(&from) && matches!(c.to, "declined" | "error" | "voided") {
            if let Some(run) = row.run_id {
                *run_release.entry(run).or_default() += row.amount_minor;
            }
            *month_release
                .entry((row.account.clone(), month_of(row.created_at)))
                .or_default() += row.amount_minor;
        }
        if c.to == "chargebacked" {
            let p = profiles.entry(row.profile_id).or_default();
            match ReasonEffect::of(settings, c.reason_code) {
                ReasonEffect::Blacklist => {
                    p.deactivate = true;
                    p.blacklist = Some(c.reason_code.unwrap_or_default().to_ascii_uppercase());
                }
                ReasonEffect::Deactivate => p.deactivate = true,
                ReasonEffect::Retry => {}
            }
        }
        out.push(Applied::Changed {
            from: from.to_string(),
        });
    }
    if !same.0.is_empty() {
        tx.execute(
            sqlx::query(
                "UPDATE billing_attempts a SET unique_id = coalesce(a.unique_id, v.unique_id), updated_at = now()                  FROM unnest($1::bigint[], $2::text[]) AS v(id, unique_id) WHERE a.id = v.id",
            )
            .bind(&same.0)
            .bind(&same.1),
        )
        .await?;
    }
    if !upd.id.is_empty() {
        tx.execute(
            sqlx::query(
                "UPDATE billing_attempts a SET status = v.status, unique_id = coalesce(v.unique_id, a.unique_id),                  gateway_code = coalesce(v.code, a.gateway_code), message = coalesce(v.message, a.message),                  technical_message = coalesce(v.technical, a.technical_message),                  answered_at = CASE WHEN v.answered THEN now() ELSE a.answered_at END,                  next_reconcile_at = CASE WHEN v.status IN ('pending', 'pending_async') THEN now() + $8::interval                                           WHEN v.status = 'unknown' THEN now() ELSE NULL END,                  updated_at = now()                  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[], $7::bool[])                       AS v(id, status, unique_id, code, message, technical, answered)                  WHERE a.id = v.id",
            )
            .bind(&upd.id)
            .bind(&upd.status)
            .bind(&upd.unique_id)
            .bind(&upd.code)
            .bind(&upd.message)
            .bind(&upd.technical)
            .bind(&upd.answered)
            .bind(
                chrono::Duration::from_std(settings.gateway.reconcile_interval)
                    .unwrap_or_else(|_| chrono::Duration::minutes(1)),
            )
            .bind(&upd.reason_code),
        )
        .await?;
    }
    if !profiles.is_empty() {
        let ids: Vec<i64> = profiles.keys().copied().collect();
        // Profiles in id order, as claims lock them: two transactions never wait on each other
        // in a cycle.
        tx.execute(
            sqlx::query("SELECT 1 FROM debtor_profiles WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(&ids),
        )
        .await?;
        let d: Vec<&ProfileDelta> = profiles.values().collect();
        tx.execute(
            sqlx::query(
                "UPDATE debtor_profiles p SET                  last_billed_at = CASE WHEN v.billed THEN now() ELSE p.last_billed_at END,                  next_bill_at = CASE WHEN v.billed AND p.billing_model <> 'legacy' THEN v.next ELSE p.next_bill_at END,                  lifetime_charged_minor = p.lifetime_charged_minor + v.lifetime,                  last_success_at = CASE WHEN v.success THEN now() ELSE p.last_success_at END,                  active = CASE WHEN v.chargeback THEN false ELSE p.active END,                  deactivated_reason = CASE WHEN v.chargeback THEN 'chargeback' ELSE p.deactivated_reason END,                  chargebacked_at = CASE WHEN v.chargeback THEN coalesce(p.chargebacked_at, now()) ELSE p.chargebacked_at END,                  updated_at = now()                  FROM unnest($1::bigint[], $2::bool[], $3::timestamptz[], $4::bigint[], $5::bool[], $6::bool[])                       AS v(id, billed, next, lifetime, success, chargeback)                  WHERE p.id = v.id",
            )
            .bind(&ids)
            .bind(d.iter().map(|p| p.billed).collect::<Vec<_>>())
            .bind(d.iter().map(|p| p.next).collect::<Vec<_>>())
            .bind(d.iter().map(|p| p.lifetime).collect::<Vec<_>>())
            .bind(d.iter().map(|p| p.success).collect::<Vec<_>>())
            .bind(d.iter().map(|p| p.deactivate).collect::<Vec<_>>()),
        )
        .await?;
        let (ids, codes): (Vec<i64>, Vec<String>) = profiles
            .iter()
            .filter_map(|(id, p)| p.blacklist.clone().map(|c| (*id, c)))
            .unzip();
        if !ids.is_empty() {
            // By the profile's keyed IBAN hash: the IBAN itself is not stored with profiles.
            tx.execute(
                sqlx::query(
                    "INSERT INTO blacklist (kind, iban_hash, reason, source) \
                     SELECT 'iban', p.iban_hash, 'chargeback ' || v.code, 'chargeback' \
                     FROM unnest($1::bigint[], $2::text[]) AS v(id, code) JOIN debtor_profiles p ON p.id = v.id \
                     ON CONFLICT (iban_hash) WHERE kind = 'iban' DO NOTHING",
                )
                .bind(ids)
                .bind(codes),
            )
            .await?;
        }
    }
    if !run_release.is_empty() {
        let (runs, amounts): (Vec<uuid::Uuid>, Vec<i64>) = run_release.into_iter().unzip();
        tx.execute(
            sqlx::query(
                "UPDATE billing_runs r SET committed_minor = r.committed_minor - v.amount                  FROM unnest($1::uuid[], $2::bigint[]) AS v(id, amount)                  WHERE r.id = v.id AND r.cap_minor IS NOT NULL",
            )
            .bind(runs)
            .bind(amounts),
        )
        .await?;
    }
    if !month_release.is_empty() {
        let mut accounts = Vec::new();
        let mut months = Vec::new();
        let mut amounts = Vec::new();
        for ((a, m), v) in month_release {
            accounts.push(a);
            months.push(m);
            amounts.push(v);
        }
        tx.execute(
            sqlx::query(
                "UPDATE account_month_totals t SET committed_minor = t.committed_minor - v.amount                  FROM unnest($1::text[], $2::date[], $3::bigint[]) AS v(account, month, amount)                  WHERE t.account = v.account AND t.month = v.month",
            )
            .bind(accounts)
            .bind(months)
            .bind(amounts),
        )
        .await?;
    }
    events.insert(tx, origin).await?;
    Ok(out)
}

/// The `transaction_events` rows of a group.
#[derive(Default)]
struct Events {
    attempt: Vec<i64>,
    from: Vec<String>,
    to: Vec<String>,
    applied: Vec<bool>,
    code: Vec<Option<String>>,
    note: Vec<Option<String>>,
}

impl Events {
    fn push(&mut self, c: &Change<'_>, from: &str, applied: bool) {
        self.attempt.push(c.id);
        self.from.push(from.to_string());
        self.to.push(c.to.to_string());
        self.applied.push(applied);
        self.code.push(c.reason_code.map(str::to_string));
        self.note.push(
            c.note
                .map(str::to_string)
                .or_else(|| c.answer.and_then(|a| a.message.clone())),
        );
    }

    async fn insert(self, tx: &mut Tx, origin: Origin) -> Result<(), DbError> {
        if self.attempt.is_empty() {
            return Ok(());
        }
        tx.execute(
            sqlx::query(
                "INSERT INTO transaction_events (attempt_id, source, from_status, to_status, applied, reason_code, delivery_id, note) \
                 SELECT v.attempt, $1, v.from_status, v.to_status, v.applied, v.code, $2, v.note \
                 FROM unnest($3::bigint[], $4::text[], $5::text[], $6::bool[], $7::text[], $8::text[]) \
                      AS v(attempt, from_status, to_status, applied, code, note)",
            )
            .bind(origin.source)
            .bind(origin.delivery_id)
            .bind(&self.attempt)
            .bind(&self.from)
            .bind(&self.to)
            .bind(&self.applied)
            .bind(&self.code)
            .bind(&self.note),
        )
        .await?;
        Ok(())
    }
}

/// The columns of a group's attempt updates.
#[derive(Default)]
struct AttemptUpdates {
    id: Vec<i64>,
    status: Vec<String>,
    unique_id: Vec<Option<String>>,
    code: Vec<Option<i32>>,
    message: Vec<Option<String>>,
    technical: Vec<Option<String>>,
    answered: Vec<bool>,
    reason_code: Vec<Option<String>>,
}

impl AttemptUpdates {
    fn push(&mut self, c: &Change<'_>) {
        self.id.push(c.id);
        self.status.push(c.to.to_string());
        match c.answer {
            Some(a) => {
                self.unique_id.push(a.unique_id.clone());
                self.code.push(a.code);
                self.message.push(a.message.clone());
                self.technical.push(a.technical_message.clone());
            }
            None => {
                self.unique_id.push(None);
                self.code.push(None);
                self.message.push(c.note.map(str::to_string));
                self.technical.push(None);
            }
        }
        self.answered.push(c.answer.is_some());
        self.reason_code.push(c.reason_code.map(str::to_string));
    }
}

/// The first day of `at`'s month (UTC): the key of an account's month totals.
fn month_of(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
        .with_day(1)
        .unwrap_or_else(|| at.date_naive())
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

    /// The whole table, every status against every status, as documented above and in
    /// docs/lifecycle.md (rows: from; columns: to, in [`ANY`]'s order; `=`: the same status,
    /// nothing to do).
    #[test]
    fn the_state_machine_table_every_event_against_every_state() {
        //                      sub unk pen pas app dec err voi chb ref
        let table: [(&str, [char; 10]); 10] = [
            (
                "submitted",
                ['=', 'y', 'y', 'y', 'y', 'y', 'y', 'y', 'y', 'y'],
            ),
            (
                "unknown",
                ['-', '=', 'y', 'y', 'y', 'y', 'y', 'y', 'y', 'y'],
            ),
            (
                "pending",
                ['-', '-', '=', 'y', 'y', 'y', 'y', 'y', 'y', 'y'],
            ),
            (
                "pending_async",
                ['-', '-', 'y', '=', 'y', 'y', 'y', 'y', 'y', 'y'],
            ),
            (
                "approved",
                ['-', '-', '-', '-', '=', '-', '-', 'y', 'y', 'y'],
            ),
            (
                "declined",
                ['-', '-', '-', '-', '-', '=', '-', '-', '-', '-'],
            ),
            ("error", ['-', '-', '-', '-', '-', '-', '=', '-', '-', '-']),
            ("voided", ['-', '-', '-', '-', '-', '-', '-', '=', '-', '-']),
            (
                "chargebacked",
                ['-', '-', '-', '-', '-', '-', '-', '-', '=', '-'],
            ),
            (
                "refunded",
                ['-', '-', '-', '-', '-', '-', '-', '-', '-', '='],
            ),
        ];
        for (i, (from, row)) in table.iter().enumerate() {
            assert_eq!(*from, ANY[i]);
            for (j, to) in ANY.iter().enumerate() {
                if row[j] == '=' {
                    continue; // a repeat: [`apply_many`] reports `Same` and writes nothing
                }
                assert_eq!(
                    allowed(from, to),
                    row[j] == 'y',
                    "{from} -> {to} should be {}",
                    if row[j] == 'y' { "allowed" } else { "refused" }
                );
            }
        }
        // Terminal statuses accept nothing; live ones are exactly those that hold the slot.
        for t in ["declined", "error", "voided", "chargebacked", "refunded"] {
            assert!(ANY.iter().all(|to| !allowed(t, to)), "{t} is final");
            assert!(!LIVE.contains(&t));
        }
        for o in OPEN {
            assert!(LIVE.contains(o) && allowed(o, "approved"));
        }
    }
}
