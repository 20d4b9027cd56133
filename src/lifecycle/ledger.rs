//! Ledger sync by date (`emp_refresh`): pages through the gateway's transactions of one
//! account over a date window and compares each with our attempts, matched by `unique_id`
//! **or** `transaction_id` (so a debit whose answer never arrived is found and settled).
//! Status differences go through the one state machine (source `ledger_sync`); transactions
//! the gateway has and we do not, and debits we sent that the gateway does not list, are
//! recorded one row each in `ledger_sync_items` — never silently. The summary is in
//! `ledger_syncs`, and a CSV/XLSX report is downloadable through a signed link.

use std::collections::{HashMap, HashSet};

use chrono::{NaiveDate, Utc};
use uuid::Uuid;

use crate::{
    billing::{
        BillingError,
        accounts::Guarded,
        state::{self, Applied, Change, Origin},
    },
    context::AppContext,
    db::Tx,
    gateway::{self, Answer, Settled},
    metrics::SyncLabels,
    queue::fence::Fence,
    reports::{self, Format, Summary},
};

/// A `ledger_syncs` row.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct SyncRow {
    /// Id.
    pub id: Uuid,
    /// ledger | chargebacks | retrieval_requests.
    pub kind: String,
    /// Gateway account.
    pub account: String,
    /// First day.
    pub from_date: NaiveDate,
    /// Last day (inclusive).
    pub to_date: NaiveDate,
    /// running | completed | failed.
    pub status: String,
    /// schedule | cli | api.
    pub requested_by: String,
    /// Pages read.
    pub pages: i32,
    /// Records read.
    pub seen: i32,
    /// Records that agree with ours (sweeps: already known).
    pub matched: i32,
    /// Status corrections applied (sweeps: new records).
    pub corrected: i32,
    /// Unknown attempts settled (sweeps: reason codes back-filled).
    pub repaired: i32,
    /// Differences the state machine would not apply.
    pub refused: i32,
    /// Gateway records with no attempt of ours.
    pub missing_locally: i32,
    /// Our debits the gateway did not list.
    pub missing_remotely: i32,
    /// Why it failed.
    pub error: Option<String>,
    /// Its report.
    pub report_id: Option<Uuid>,
    /// Started.
    pub created_at: chrono::DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<chrono::DateTime<Utc>>,
}

/// One difference, as stored and reported.
#[derive(Debug, Clone, Default)]
pub struct Item {
    /// corrected | repaired | refused | missing_locally | missing_remotely | recorded |
    /// backfilled | unmatched.
    pub kind: &'static str,
    /// Our attempt.
    pub attempt_id: Option<i64>,
    /// Gateway id.
    pub unique_id: Option<String>,
    /// Our id.
    pub transaction_id: Option<String>,
    /// Our status before.
    pub local_status: Option<String>,
    /// The gateway's.
    pub remote_status: Option<String>,
    /// Minor units.
    pub amount_minor: Option<i64>,
    /// Currency.
    pub currency: Option<String>,
    /// Reason code (sweeps).
    pub reason_code: Option<String>,
}

/// Counters of one page, added to the row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Pages.
    pub pages: i32,
    /// Records.
    pub seen: i32,
    /// Agreeing.
    pub matched: i32,
    /// Corrected / recorded.
    pub corrected: i32,
    /// Repaired / backfilled.
    pub repaired: i32,
    /// Refused.
    pub refused: i32,
    /// Missing locally / unmatched.
    pub missing_locally: i32,
    /// Missing remotely.
    pub missing_remotely: i32,
}

/// Creates the sync row (a repeat of a finished one returns it; an unfinished one starts over:
/// its items are written again, and the changes it applied are already applied).
pub async fn open(
    app: &AppContext,
    id: Uuid,
    kind: &str,
    account: &str,
    from: NaiveDate,
    to: NaiveDate,
    requested_by: &str,
) -> Result<SyncRow, BillingError> {
    let mut tx = app.db.begin().await?;
    tx.execute(
        sqlx::query(
            "INSERT INTO ledger_syncs (id, kind, account, from_date, to_date, status, requested_by) \
             VALUES ($1, $2, $3, $4, $5, 'running', $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(kind)
        .bind(account)
        .bind(from)
        .bind(to)
        .bind(requested_by),
    )
    .await?;
    let row: SyncRow = tx
        .fetch_one(sqlx::query_as("SELECT * FROM ledger_syncs WHERE id = $1").bind(id))
        .await?;
    if row.status != "completed" {
        tx.execute(sqlx::query("DELETE FROM ledger_sync_items WHERE sync_id = $1").bind(id))
            .await?;
        tx.execute(
            sqlx::query(
                "UPDATE ledger_syncs SET status = 'running', pages = 0, seen = 0, matched = 0, corrected = 0, \
                 repaired = 0, refused = 0, missing_locally = 0, missing_remotely = 0, error = NULL WHERE id = $1",
            )
            .bind(id),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(row)
}

/// Adds a page's items and counts to the sync, in the caller's transaction.
pub async fn add(
    app: &AppContext,
    tx: &mut Tx,
    sync: &SyncRow,
    items: &[Item],
    c: Counts,
) -> Result<(), BillingError> {
    if !items.is_empty() {
        let next: (i32,) = tx
            .fetch_one(
                sqlx::query_as(
                    "SELECT coalesce(max(item_no), 0) FROM ledger_sync_items WHERE sync_id = $1",
                )
                .bind(sync.id),
            )
            .await?;
        let mut nos = Vec::new();
        let mut kinds = Vec::new();
        let mut attempts = Vec::new();
        let mut uids = Vec::new();
        let mut txids = Vec::new();
        let mut locals = Vec::new();
        let mut remotes = Vec::new();
        let mut amounts = Vec::new();
        let mut currencies = Vec::new();
        let mut codes = Vec::new();
        for (i, it) in items.iter().enumerate() {
            nos.push(next.0 + 1 + i32::try_from(i).unwrap_or(i32::MAX - next.0 - 1));
            kinds.push(it.kind);
            attempts.push(it.attempt_id);
            uids.push(it.unique_id.clone());
            txids.push(it.transaction_id.clone());
            locals.push(it.local_status.clone());
            remotes.push(it.remote_status.clone());
            amounts.push(it.amount_minor);
            currencies.push(it.currency.clone());
            codes.push(it.reason_code.clone());
            app.metrics
                .sync_differences
                .get_or_create(&SyncLabels {
                    account: sync.account.clone(),
                    kind: it.kind.to_string(),
                })
                .inc();
        }
        tx.execute(
            sqlx::query(
                "INSERT INTO ledger_sync_items (sync_id, item_no, kind, attempt_id, unique_id, transaction_id, \
                    local_status, remote_status, amount_minor, currency, reason_code, at) \
                 SELECT $1, * , now() FROM unnest($2::int4[], $3::text[], $4::int8[], $5::text[], $6::text[], \
                    $7::text[], $8::text[], $9::int8[], $10::text[], $11::text[])",
            )
            .bind(sync.id)
            .bind(nos)
            .bind(kinds)
            .bind(attempts)
            .bind(uids)
            .bind(txids)
            .bind(locals)
            .bind(remotes)
            .bind(amounts)
            .bind(currencies)
            .bind(codes),
        )
        .await?;
    }
    tx.execute(
        sqlx::query(
            "UPDATE ledger_syncs SET pages = pages + $2, seen = seen + $3, matched = matched + $4, \
             corrected = corrected + $5, repaired = repaired + $6, refused = refused + $7, \
             missing_locally = missing_locally + $8, missing_remotely = missing_remotely + $9 WHERE id = $1",
        )
        .bind(sync.id)
        .bind(c.pages)
        .bind(c.seen)
        .bind(c.matched)
        .bind(c.corrected)
        .bind(c.repaired)
        .bind(c.refused)
        .bind(c.missing_locally)
        .bind(c.missing_remotely),
    )
    .await?;
    Ok(())
}

/// Marks the sync finished (and moves the account's checkpoint when the window continues it).
pub async fn close(
    app: &AppContext,
    sync: &SyncRow,
    error: Option<&str>,
) -> Result<SyncRow, BillingError> {
    let mut tx = app.db.begin().await?;
    let row: SyncRow = tx
        .fetch_one(
            sqlx::query_as(
                "UPDATE ledger_syncs SET status = CASE WHEN $2::text IS NULL THEN 'completed' ELSE 'failed' END, \
                 error = $2, finished_at = now() WHERE id = $1 RETURNING *",
            )
            .bind(sync.id)
            .bind(error),
        )
        .await?;
    if error.is_none() {
        tx.execute(
            sqlx::query(
                "INSERT INTO sync_checkpoints (account, kind, last_date) VALUES ($1, $2, $3) \
                 ON CONFLICT (account, kind) DO UPDATE SET last_date = EXCLUDED.last_date, updated_at = now() \
                 WHERE sync_checkpoints.last_date < EXCLUDED.last_date \
                   AND $4 <= sync_checkpoints.last_date + 1",
            )
            .bind(&sync.account)
            .bind(&sync.kind)
            .bind(sync.to_date)
            .bind(sync.from_date),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(row)
}

/// The window a scheduled sync of `kind` covers for `account`: from its checkpoint less the
/// overlap (first time: `sync_first_days` back) to today.
pub async fn window(
    app: &AppContext,
    account: &str,
    kind: &str,
) -> Result<(NaiveDate, NaiveDate), BillingError> {
    let l = &app.settings.lifecycle;
    let today = Utc::now().date_naive();
    let mut tx = app.db.begin().await?;
    let last: Option<(NaiveDate,)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT last_date FROM sync_checkpoints WHERE account = $1 AND kind = $2",
            )
            .bind(account)
            .bind(kind),
        )
        .await?;
    tx.commit().await?;
    let first = today - chrono::Duration::days(i64::from(l.sync_first_days));
    let from = match last {
        Some((d,)) => (d - chrono::Duration::days(i64::from(l.sync_overlap_days))).max(first),
        None => first,
    };
    Ok((from.min(today), today))
}

/// The window of a sync job: `from..=to` as asked (`to` defaults to today), else the
/// scheduled window from the account's checkpoint ([`window`]).
pub async fn window_or(
    app: &AppContext,
    account: &str,
    kind: &str,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<(NaiveDate, NaiveDate), BillingError> {
    match from {
        Some(f) => Ok((f, to.unwrap_or_else(|| Utc::now().date_naive()))),
        None => window(app, account, kind).await,
    }
}

#[derive(sqlx::FromRow)]
struct Local {
    id: i64,
    status: String,
    unique_id: Option<String>,
    transaction_id: String,
}

/// Why a sync could not finish (the job retries).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The gateway could not be asked (breaker open, limiter, gateway error).
    #[error("the gateway could not be asked: {0}")]
    Gateway(#[from] Guarded),
    /// Anything else.
    #[error(transparent)]
    Billing(#[from] BillingError),
}

impl From<crate::db::DbError> for SyncError {
    fn from(e: crate::db::DbError) -> Self {
        Self::Billing(e.into())
    }
}

impl From<sqlx::Error> for SyncError {
    fn from(e: sqlx::Error) -> Self {
        Self::Billing(e.into())
    }
}

/// Syncs `account`'s ledger over `from..=to` into sync `id`. Returns the finished row.
#[allow(clippy::too_many_arguments)]
pub async fn sync(
    app: &AppContext,
    fence: &Fence,
    id: Uuid,
    account: &str,
    from: NaiveDate,
    to: NaiveDate,
    requested_by: &str,
    format: Format,
) -> Result<SyncRow, SyncError> {
    let row = open(app, id, "ledger", account, from, to, requested_by).await?;
    if row.status == "completed" {
        return Ok(row);
    }
    let Some(acct) = app.accounts.get(account) else {
        let why = format!("gateway account `{account}` is not configured in this process");
        return Ok(close(app, &row, Some(&why)).await?);
    };
    let per_page = app.settings.lifecycle.sync_page_size;
    let mut seen: HashSet<i64> = HashSet::new();
    let mut page = 1;
    loop {
        let p = acct
            .guarded(|g| g.transactions_by_date(from, to, page, per_page))
            .await?;
        let mut tx = app.db.begin().await?;
        let (items, counts) = compare(app, &mut tx, account, &p.items, &mut seen).await?;
        add(app, &mut tx, &row, &items, Counts { pages: 1, ..counts }).await?;
        fence.check(&mut tx).await.map_err(BillingError::from)?;
        tx.commit().await.map_err(BillingError::from)?;
        if page >= p.pages_count {
            break;
        }
        page += 1;
    }
    // Our debits in the window that the gateway did not list (a refused send never reached
    // it; one sent in the last minutes may still be on its way).
    let mut tx = app.db.begin().await?;
    let seen: Vec<i64> = seen.into_iter().collect();
    let missing: Vec<(i64, String, Option<String>, String, i64, String)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT id, status, unique_id, transaction_id, amount_minor, currency FROM billing_attempts \
                 WHERE account = $1 AND sent_at >= $2::date AND sent_at < $3::date + 1 \
                   AND sent_at < now() - interval '5 minutes' AND id <> ALL($4) \
                   AND NOT (status = 'error' AND unique_id IS NULL) ORDER BY id",
            )
            .bind(account)
            .bind(from)
            .bind(to)
            .bind(&seen),
        )
        .await?;
    let items: Vec<Item> = missing
        .into_iter()
        .map(|(id, status, uid, txid, amount, currency)| Item {
            kind: "missing_remotely",
            attempt_id: Some(id),
            unique_id: uid,
            transaction_id: Some(txid),
            local_status: Some(status),
            amount_minor: Some(amount),
            currency: Some(currency),
            ..Item::default()
        })
        .collect();
    let n = i32::try_from(items.len()).unwrap_or(i32::MAX);
    if n > 0 {
        tracing::warn!(account, missing_remotely = n, %from, %to, "ledger sync: debits of ours the gateway does not list");
    }
    add(
        app,
        &mut tx,
        &row,
        &items,
        Counts {
            missing_remotely: n,
            ..Counts::default()
        },
    )
    .await?;
    fence.check(&mut tx).await.map_err(BillingError::from)?;
    tx.commit().await?;
    let done = close(app, &row, None).await?;
    tracing::info!(sync_id = %id, account, %from, %to, seen = done.seen, matched = done.matched, corrected = done.corrected, repaired = done.repaired, refused = done.refused, missing_locally = done.missing_locally, missing_remotely = done.missing_remotely, "ledger sync completed");
    report(app, &done, format).await.map_err(|e| {
        BillingError::Refused(format!("the ledger-sync report could not be written: {e}"))
    })?;
    Ok(done)
}

/// Compares one page with our attempts and applies the corrections in `tx`.
async fn compare(
    app: &AppContext,
    tx: &mut Tx,
    account: &str,
    records: &[Answer],
    seen: &mut HashSet<i64>,
) -> Result<(Vec<Item>, Counts), BillingError> {
    // Voids and other kinds are the gateway's own follow-ups of a debit, not debits.
    let records: Vec<&Answer> = records
        .iter()
        .filter(|r| {
            r.transaction_type
                .as_deref()
                .is_none_or(|t| t == "sdd_sale")
        })
        .collect();
    let uids: Vec<String> = records.iter().filter_map(|r| r.unique_id.clone()).collect();
    let txids: Vec<String> = records
        .iter()
        .filter_map(|r| r.transaction_id.clone())
        .collect();
    let locals: Vec<Local> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT id, status, unique_id, transaction_id FROM billing_attempts \
                 WHERE account = $1 AND (unique_id = ANY($2) OR transaction_id = ANY($3))",
            )
            .bind(account)
            .bind(&uids)
            .bind(&txids),
        )
        .await?;
    let by_uid: HashMap<&str, &Local> = locals
        .iter()
        .filter_map(|l| l.unique_id.as_deref().map(|u| (u, l)))
        .collect();
    let by_tx: HashMap<&str, &Local> = locals
        .iter()
        .map(|l| (l.transaction_id.as_str(), l))
        .collect();
    let mut c = Counts {
        seen: i32::try_from(records.len()).unwrap_or(i32::MAX),
        ..Counts::default()
    };
    let mut items = Vec::new();
    let mut changes: Vec<(Change<'_>, &Local, &Answer)> = Vec::new();
    for r in &records {
        let local = r
            .unique_id
            .as_deref()
            .and_then(|u| by_uid.get(u))
            .or_else(|| r.transaction_id.as_deref().and_then(|t| by_tx.get(t)));
        let Some(l) = local else {
            c.missing_locally += 1;
            tracing::warn!(account, unique_id = r.unique_id.as_deref().unwrap_or("-"), transaction_id = r.transaction_id.as_deref().unwrap_or("-"), status = %r.status, "ledger sync: a gateway transaction we have no attempt of");
            items.push(Item {
                kind: "missing_locally",
                unique_id: r.unique_id.clone(),
                transaction_id: r.transaction_id.clone(),
                remote_status: Some(r.status.clone()),
                amount_minor: r.amount_minor,
                currency: r.currency.clone(),
                ..Item::default()
            });
            continue;
        };
        seen.insert(l.id);
        match gateway::settle(r) {
            Settled::Known(to) if to != l.status || l.unique_id.is_none() => {
                changes.push((
                    Change {
                        id: l.id,
                        to,
                        answer: Some(r),
                        note: None,
                        reason_code: None,
                    },
                    l,
                    r,
                ));
            }
            _ => c.matched += 1,
        }
    }
    let list: Vec<Change<'_>> = changes.iter().map(|(ch, _, _)| *ch).collect();
    let applied = state::apply_many(
        tx,
        &app.settings,
        Origin::of("ledger_sync"),
        state::ANY,
        &list,
    )
    .await?;
    state::observe(&app.metrics, Origin::of("ledger_sync"), &list, &applied);
    for ((ch, l, r), a) in changes.iter().zip(applied.iter().cloned()) {
        let kind = match a {
            Applied::Changed { ref from } if state::OPEN.contains(&from.as_str()) => {
                c.repaired += 1;
                "repaired"
            }
            Applied::Changed { .. } => {
                c.corrected += 1;
                "corrected"
            }
            Applied::Refused { .. } => {
                c.refused += 1;
                "refused"
            }
            Applied::Same | Applied::Missed => {
                c.matched += 1;
                continue;
            }
        };
        items.push(Item {
            kind,
            attempt_id: Some(ch.id),
            unique_id: r.unique_id.clone(),
            transaction_id: Some(l.transaction_id.clone()),
            local_status: Some(l.status.clone()),
            remote_status: Some(r.status.clone()),
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            reason_code: None,
        });
    }
    Ok((items, c))
}

/// Columns of the ledger-sync report.
pub const REPORT_COLUMNS: [&str; 10] = [
    "item",
    "difference",
    "attempt_id",
    "unique_id",
    "transaction_id",
    "our_status",
    "gateway_status",
    "amount",
    "currency",
    "reason_code",
];

/// Writes the sync's report (summary and every difference) and links it to the sync.
pub async fn report(app: &AppContext, sync: &SyncRow, format: Format) -> anyhow::Result<Uuid> {
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("ledger_sync:{}:{}", sync.id, format.as_str()).as_bytes(),
    );
    type R = (
        i32,
        String,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let mut tx = app.db.begin().await?;
    let rows: Vec<R> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT item_no, kind, attempt_id, unique_id, transaction_id, local_status, remote_status, \
                 amount_minor, currency, reason_code FROM ledger_sync_items WHERE sync_id = $1 ORDER BY item_no",
            )
            .bind(sync.id),
        )
        .await?;
    tx.commit().await?;
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            let o = |v: Option<String>| v.unwrap_or_default();
            vec![
                r.0.to_string(),
                r.1,
                r.2.map(|v| v.to_string()).unwrap_or_default(),
                o(r.3),
                o(r.4),
                o(r.5),
                o(r.6),
                r.7.map(crate::money::format_minor).unwrap_or_default(),
                o(r.8),
                o(r.9),
            ]
        })
        .collect();
    let line = |k: &str, v: String| (k.to_string(), v);
    let summary = Summary {
        lines: vec![
            line("Report", format!("{} sync", sync.kind)),
            line("Sync", sync.id.to_string()),
            line("Account", sync.account.clone()),
            line("From", sync.from_date.to_string()),
            line("To", sync.to_date.to_string()),
            line("Pages read", sync.pages.to_string()),
            line("Gateway records", sync.seen.to_string()),
            line("Matched", sync.matched.to_string()),
            line("Corrected", sync.corrected.to_string()),
            line("Repaired (unknown settled)", sync.repaired.to_string()),
            line("Refused by the state machine", sync.refused.to_string()),
            line("Missing locally", sync.missing_locally.to_string()),
            line("Missing remotely", sync.missing_remotely.to_string()),
            line("Generated", Utc::now().to_rfc3339()),
        ],
    };
    let meta = reports::Meta {
        id,
        kind: "ledger_sync",
        format,
        name: format!(
            "{}-sync-{}-{}-{}",
            sync.kind.replace('_', "-"),
            sync.account,
            sync.from_date,
            sync.to_date
        ),
        date_from: Some(sync.from_date),
        date_to: Some(sync.to_date),
    };
    reports::publish(app, meta, summary, &REPORT_COLUMNS, cells).await?;
    let mut tx = app.db.begin().await?;
    tx.execute(
        sqlx::query("UPDATE ledger_syncs SET report_id = $2 WHERE id = $1")
            .bind(sync.id)
            .bind(id),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Syncs of every kind, newest first.
pub async fn list(app: &AppContext, limit: i64) -> Result<Vec<SyncRow>, BillingError> {
    let mut tx = app.db.begin().await?;
    let rows = tx
        .fetch_all(
            sqlx::query_as("SELECT * FROM ledger_syncs ORDER BY created_at DESC LIMIT $1")
                .bind(limit),
        )
        .await?;
    tx.commit().await?;
    Ok(rows)
}
