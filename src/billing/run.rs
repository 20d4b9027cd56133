//! Billing runs: creation, selection of the debtors into items (every one kept, excluded ones
//! with their reason), operator controls, completion and totals.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{BillingError, models, rules};
use crate::{
    context::AppContext,
    db::{Db, DbError, Tx},
    queue::fence::Fence,
};

/// What starts a run.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The upload billed (none: the due recurring profiles of `account`).
    pub upload_id: Option<Uuid>,
    /// The account debits go through.
    pub account: String,
    /// The run's model.
    pub model: String,
    /// `api`, `cli` or `recurring`.
    pub source: &'static str,
    /// Report only.
    pub dry_run: bool,
    /// Bill IBANs with a past chargeback too.
    pub skip_chargeback_check: bool,
    /// Most the run may commit, minor units.
    pub cap_minor: Option<i64>,
    /// The recurring tick that made it.
    pub recurring_tick: Option<i64>,
}

/// A run's row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    /// Id.
    pub id: Uuid,
    /// Upload.
    pub upload_id: Option<Uuid>,
    /// Account.
    pub account: String,
    /// Model.
    pub model: String,
    /// Source.
    pub source: String,
    /// Dry run.
    pub dry_run: bool,
    /// Status.
    pub status: String,
    /// Why paused.
    pub pause_reason: Option<String>,
    /// Who paused it.
    pub paused_by: Option<String>,
    /// Chargeback rule skipped.
    pub skip_chargeback_check: bool,
    /// Cap.
    pub cap_minor: Option<i64>,
    /// Committed so far.
    pub committed_minor: i64,
    /// Items.
    pub items_total: i32,
    /// Totals when it ended.
    pub totals: Option<serde_json::Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

const RUN_COLUMNS: &str = "id, upload_id, account, model, source, dry_run, status, pause_reason, paused_by, \
    skip_chargeback_check, cap_minor, committed_minor, items_total, totals, created_at, finished_at";

/// Creates the run `id` unless it exists (idempotent), after checking the account, the model
/// and the upload.
pub async fn create(app: &AppContext, id: Uuid, r: &NewRun) -> Result<(), BillingError> {
    if app.accounts.get(&r.account).is_none() {
        return Err(BillingError::Refused(format!(
            "no gateway account `{}` (configured: {})",
            r.account,
            app.accounts.names().join(", ")
        )));
    }
    if r.source != "recurring" && !app.settings.billing.models.contains_key(&r.model) {
        return Err(BillingError::Refused(format!(
            "no billing model `{}` (configured: {})",
            r.model,
            app.settings
                .billing
                .models
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(cap) = r.cap_minor
        && cap <= 0
    {
        return Err(BillingError::Refused("cap_minor must be above zero".into()));
    }
    super::accounts::sync(&app.db, &app.settings.gateway).await?;
    let mut tx = app.db.begin().await?;
    if let Some(upload) = r.upload_id {
        let st: Option<(String, Option<DateTime<Utc>>)> = tx
            .fetch_optional(
                sqlx::query_as("SELECT status, validated_at FROM uploads WHERE id = $1")
                    .bind(upload),
            )
            .await?;
        match st {
            None => return Err(BillingError::Refused(format!("no upload {upload}"))),
            Some((s, v)) if s != "completed" || v.is_none() => {
                return Err(BillingError::Refused(format!(
                    "upload {upload} is not imported and validated yet (status {s})"
                )));
            }
            Some(_) => {}
        }
    }
    tx.execute(
        sqlx::query(
            "INSERT INTO billing_runs (id, upload_id, account, model, source, dry_run, skip_chargeback_check, cap_minor, recurring_tick) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(r.upload_id)
        .bind(&r.account)
        .bind(&r.model)
        .bind(r.source)
        .bind(r.dry_run)
        .bind(r.skip_chargeback_check)
        .bind(r.cap_minor)
        .bind(r.recurring_tick),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A run by id.
pub async fn get(db: &Db, id: Uuid) -> Result<Option<RunRow>, BillingError> {
    let mut tx = db.begin().await?;
    let r = tx
        .fetch_optional(
            sqlx::query_as::<_, RunRow>(&format!(
                "SELECT {RUN_COLUMNS} FROM billing_runs WHERE id = $1"
            ))
            .bind(id),
        )
        .await?;
    tx.commit().await?;
    Ok(r)
}

/// Recent runs, newest first.
pub async fn list(db: &Db, limit: i64) -> Result<Vec<RunRow>, BillingError> {
    let mut tx = db.begin().await?;
    let r = tx
        .fetch_all(
            sqlx::query_as::<_, RunRow>(&format!(
                "SELECT {RUN_COLUMNS} FROM billing_runs ORDER BY created_at DESC LIMIT $1"
            ))
            .bind(limit),
        )
        .await?;
    tx.commit().await?;
    Ok(r)
}

const SELECT_CHUNK: i64 = 5000;
/// Runs of at least this many items refresh `billing_items`' statistics before billing.
const ANALYZE_FROM: i32 = 1000;

struct Line {
    debtor_id: i64,
    iban: String,
    amount: i64,
    currency: String,
}

/// Turns the run's debtors into items, in chunks that each commit (a retry resumes after the
/// last one), then evaluates the rules once over all of them. Profiles are created for new
/// IBANs (not by a dry run). Ends with the run `running` (or `completed`, for a dry run).
pub async fn select(app: &AppContext, fence: &Fence, id: Uuid) -> Result<RunRow, BillingError> {
    let hasher = app.iban.clone().ok_or_else(|| {
        BillingError::Refused("privacy.iban_key is not set: profiles are keyed by it".into())
    })?;
    let run = get(&app.db, id).await?.ok_or(BillingError::NoRun(id))?;
    if run.status != "pending" {
        return Ok(run);
    }
    // Dry runs keep new profiles in memory only.
    let mut simulated: HashMap<[u8; 32], (String, i64)> = HashMap::new();
    let mut items: i32;
    loop {
        let mut tx = app.db.begin().await?;
        let (last_debtor, last_item): (Option<i64>, Option<i32>) = tx
            .fetch_one(
                sqlx::query_as(
                    "SELECT max(debtor_id), max(item_no) FROM billing_items WHERE run_id = $1",
                )
                .bind(id),
            )
            .await?;
        items = last_item.unwrap_or(0);
        let lines: Vec<Line> = match run.upload_id {
            Some(upload) => tx
                .fetch_all(
                    sqlx::query_as::<_, (i64, String, i64, String)>(
                        "SELECT id, iban, amount_minor, currency FROM debtors WHERE upload_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    )
                    .bind(upload)
                    .bind(last_debtor.unwrap_or(0))
                    .bind(SELECT_CHUNK),
                )
                .await?,
            None => tx
                .fetch_all(
                    sqlx::query_as::<_, (i64, String, i64, String)>(
                        "SELECT d.id, d.iban, p.billing_amount_minor, p.currency FROM debtor_profiles p \
                         JOIN debtors d ON d.id = p.last_debtor_id \
                         WHERE p.active AND p.billing_model <> 'legacy' AND p.account = $1 AND p.next_bill_at <= now() \
                         AND d.id > $2 ORDER BY d.id LIMIT $3",
                    )
                    .bind(&run.account)
                    .bind(last_debtor.unwrap_or(0))
                    .bind(SELECT_CHUNK),
                )
                .await?,
        }
        .into_iter()
        .map(|(debtor_id, iban, amount, currency)| Line {
            debtor_id,
            iban,
            amount,
            currency,
        })
        .collect();
        if lines.is_empty() {
            tx.commit().await?;
            break;
        }
        let hashes: Vec<[u8; 32]> = lines.iter().map(|l| hasher.hash(&l.iban)).collect();
        let row_models: Vec<String> = lines
            .iter()
            .map(|l| {
                if run.upload_id.is_none() {
                    // Recurring: the profile's own model (checked below like any other).
                    String::new()
                } else {
                    models::model_for(&run.model, l.amount, &app.settings.billing.models)
                }
            })
            .collect();
        let mut profiles = load_profiles(&mut tx, &hashes).await?;
        // New IBANs get a profile with the first row's model and amount.
        let (mut hs, mut ms, mut am, mut cu, mut de) = (vec![], vec![], vec![], vec![], vec![]);
        let mut seen = std::collections::HashSet::new();
        for ((l, h), m) in lines.iter().zip(&hashes).zip(&row_models) {
            if !profiles.contains_key(h) && !simulated.contains_key(h) && seen.insert(*h) {
                if run.dry_run {
                    simulated.insert(*h, (m.clone(), l.amount));
                } else {
                    hs.push(h.to_vec());
                    ms.push(m.clone());
                    am.push(l.amount);
                    cu.push(l.currency.clone());
                    de.push(l.debtor_id);
                }
            }
        }
        if !hs.is_empty() {
            tx.execute(
                sqlx::query(
                    "INSERT INTO debtor_profiles (iban_hash, billing_model, billing_amount_minor, currency, account, last_debtor_id) \
                     SELECT h, m, a, c, $6, d FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::text[], $5::bigint[]) AS t(h, m, a, c, d) \
                     ON CONFLICT (iban_hash) DO NOTHING",
                )
                .bind(&hs)
                .bind(&ms)
                .bind(&am)
                .bind(&cu)
                .bind(&de)
                .bind(&run.account),
            )
            .await?;
            profiles = load_profiles(&mut tx, &hashes).await?;
        }
        let mut item_no = last_item.unwrap_or(0);
        let (
            mut nos,
            mut dids,
            mut pids,
            mut mods,
            mut amts,
            mut curs,
            mut states,
            mut reasons,
            mut details,
        ) = (
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        );
        let mut latest: HashMap<i64, i64> = HashMap::new();
        for ((l, h), m) in lines.iter().zip(&hashes).zip(row_models) {
            item_no += 1;
            let (pid, pmodel, pamount) = match profiles.get(h) {
                Some(p) => (Some(p.0), p.1.clone(), p.2),
                None => {
                    let s = simulated.get(h).cloned().unwrap_or_default();
                    (None, s.0, s.1)
                }
            };
            let model = if m.is_empty() { pmodel.clone() } else { m };
            let conflict = models::conflict(&pmodel, &model);
            // Recurring models bill the profile's amount; legacy bills the line's.
            let amount = if model == models::LEGACY {
                l.amount
            } else {
                pamount
            };
            if let (Some(p), None) = (pid, conflict) {
                latest.insert(p, l.debtor_id);
            }
            nos.push(item_no);
            dids.push(l.debtor_id);
            pids.push(pid);
            mods.push(model.clone());
            amts.push(amount);
            curs.push(l.currency.clone());
            match conflict {
                Some(r) => {
                    states.push("excluded");
                    reasons.push(Some(r));
                    details.push(Some(format!("profile is {pmodel}, row is {model}")));
                }
                None => {
                    states.push("queued");
                    reasons.push(None);
                    details.push(None);
                }
            }
        }
        tx.execute(
            sqlx::query(
                "INSERT INTO billing_items (run_id, item_no, debtor_id, profile_id, model, amount_minor, currency, state, reason, detail, decided_at) \
                 SELECT $1, n, d, p, m, a, c, s, r, x, CASE WHEN s = 'excluded' THEN now() END \
                 FROM unnest($2::int4[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[]) \
                 AS t(n, d, p, m, a, c, s, r, x)",
            )
            .bind(id)
            .bind(&nos)
            .bind(&dids)
            .bind(&pids)
            .bind(&mods)
            .bind(&amts)
            .bind(&curs)
            .bind(&states)
            .bind(&reasons)
            .bind(&details),
        )
        .await?;
        if !run.dry_run && run.upload_id.is_some() && !latest.is_empty() {
            // Recurring cycles bill the latest debtor line of a profile.
            let (p, d): (Vec<i64>, Vec<i64>) = latest.into_iter().unzip();
            tx.execute(
                sqlx::query(
                    "UPDATE debtor_profiles pr SET last_debtor_id = greatest(pr.last_debtor_id, t.d), updated_at = now() \
                     FROM unnest($1::bigint[], $2::bigint[]) AS t(p, d) WHERE pr.id = t.p",
                )
                .bind(&p)
                .bind(&d),
            )
            .await?;
        }
        fence.check(&mut tx).await?;
        tx.commit().await?;
    }
    if items >= ANALYZE_FROM {
        // The planner's statistics predate this run's items: it would take the run for a
        // handful of rows and have every claim read all of them by `run_id` alone (measured:
        // 50 items claimed by reading 50,000, 120-200 ms a claim, until autovacuum next
        // analysed the table, halving a 100,000-debit run's rate for half a minute).
        if let Err(e) = analyze_items(app).await {
            // Slower claims, not wrong ones: the run goes on.
            tracing::warn!(run_id = %id, error = %e, "billing: could not refresh billing_items statistics");
        }
    }
    evaluate_all(app, fence, &run).await?;
    let mut tx = app.db.begin().await?;
    let status = if run.dry_run { "completed" } else { "running" };
    tx.execute(
        sqlx::query(
            "UPDATE billing_runs SET status = $2, started_at = now(), updated_at = now(), \
             items_total = (SELECT count(*) FROM billing_items WHERE run_id = $1), \
             finished_at = CASE WHEN $2 = 'completed' THEN now() END WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(status),
    )
    .await?;
    if run.dry_run {
        write_totals(&mut tx, id).await?;
    }
    fence.check(&mut tx).await?;
    tx.commit().await?;
    get(&app.db, id).await?.ok_or(BillingError::NoRun(id))
}

async fn analyze_items(app: &AppContext) -> Result<(), DbError> {
    let mut tx = app.db.begin().await?;
    // Never wait long behind an anti-wraparound vacuum (an ordinary autovacuum yields).
    tx.execute_raw("SET LOCAL lock_timeout = '2s'").await?;
    tx.execute_raw("ANALYZE billing_items").await?;
    tx.commit().await
}

async fn load_profiles(
    tx: &mut Tx,
    hashes: &[[u8; 32]],
) -> Result<HashMap<[u8; 32], (i64, String, i64)>, BillingError> {
    let hs: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
    let rows: Vec<(i64, Vec<u8>, String, i64)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT id, iban_hash, billing_model, billing_amount_minor FROM debtor_profiles WHERE iban_hash = ANY($1)",
            )
            .bind(&hs),
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, h, m, a)| Some((<[u8; 32]>::try_from(h.as_slice()).ok()?, (id, m, a))))
        .collect())
}

/// The selection-time pass of the rules over every queued item: excluded ones are stored
/// with their reason; for a dry run, the rest (within the caps) become `would_bill`.
async fn evaluate_all(app: &AppContext, fence: &Fence, run: &RunRow) -> Result<(), BillingError> {
    let account_currency = app
        .accounts
        .get(&run.account)
        .map(|a| a.settings.currency.clone())
        .unwrap_or_default();
    let mut after = 0i32;
    // A dry run's caps, used up as its debtors would be (real runs apply them in each claim).
    let mut caps: Option<super::debit::Caps> = None;
    loop {
        let mut tx = app.db.begin().await?;
        let nos: Vec<i32> = tx
            .fetch_all(
                sqlx::query_as::<_, (i32,)>(
                    "SELECT item_no FROM billing_items WHERE run_id = $1 AND state = 'queued' AND item_no > $2 ORDER BY item_no LIMIT $3",
                )
                .bind(run.id)
                .bind(after)
                .bind(SELECT_CHUNK),
            )
            .await?
            .into_iter()
            .map(|(n,)| n)
            .collect();
        let Some(&last) = nos.last() else {
            tx.commit().await?;
            return Ok(());
        };
        after = last;
        if run.dry_run && caps.is_none() {
            let (month_cap, month_used) = super::debit::month_state(&mut tx, &run.account).await?;
            caps = Some(super::debit::Caps {
                run_cap: run.cap_minor,
                run_used: 0,
                month_cap,
                month_used,
            });
        }
        let cands = rules::load(&mut tx, &app.settings, run.id, &nos).await?;
        let mut decided: Vec<(i32, &'static str, Option<String>, Option<String>)> = Vec::new();
        for c in &cands {
            match c.exclusion(
                &app.settings,
                &account_currency,
                run.skip_chargeback_check,
                run.dry_run,
            ) {
                Some((r, d)) => decided.push((c.item_no, "excluded", Some(r.to_string()), Some(d))),
                None if run.dry_run => match caps.as_mut().map(|k| k.admit(c.amount_minor)) {
                    Some(Err((r, d))) => {
                        decided.push((c.item_no, "excluded", Some(r.into()), Some(d)))
                    }
                    _ => decided.push((c.item_no, "would_bill", None, None)),
                },
                None => {}
            }
        }
        super::debit::decide(&mut tx, run.id, &decided).await?;
        fence.check(&mut tx).await?;
        tx.commit().await?;
    }
}

/// Counts and amounts by outcome and by exclusion reason.
pub async fn totals(tx: &mut Tx, id: Uuid) -> Result<serde_json::Value, BillingError> {
    let (v,): (serde_json::Value,) = tx
        .fetch_one(
            sqlx::query_as(
                "SELECT jsonb_build_object( \
                   'items', (SELECT count(*) FROM billing_items WHERE run_id = $1), \
                   'by_state', coalesce((SELECT jsonb_object_agg(state, jsonb_build_object('count', n, 'amount_minor', a)) \
                        FROM (SELECT state, count(*) n, sum(amount_minor) a FROM billing_items WHERE run_id = $1 GROUP BY state) s), '{}'), \
                   'excluded_by_reason', coalesce((SELECT jsonb_object_agg(reason, jsonb_build_object('count', n, 'amount_minor', a)) \
                        FROM (SELECT reason, count(*) n, sum(amount_minor) a FROM billing_items WHERE run_id = $1 AND state = 'excluded' GROUP BY reason) r), '{}'), \
                   'attempts_by_status', coalesce((SELECT jsonb_object_agg(status, jsonb_build_object('count', n, 'amount_minor', a)) \
                        FROM (SELECT status, count(*) n, sum(amount_minor) a FROM billing_attempts WHERE run_id = $1 GROUP BY status) t), '{}'))",
            )
            .bind(id),
        )
        .await?;
    Ok(v)
}

async fn write_totals(tx: &mut Tx, id: Uuid) -> Result<(), BillingError> {
    let t = totals(tx, id).await?;
    tx.execute(
        sqlx::query("UPDATE billing_runs SET totals = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(t),
    )
    .await?;
    Ok(())
}

/// Completes a running run when no item is queued and no debit is still unresolved
/// (`submitted`/`unknown`). Returns whether it is (now or already) over.
pub async fn complete_if_done(
    app: &AppContext,
    fence: &Fence,
    id: Uuid,
) -> Result<bool, BillingError> {
    let mut tx = app.db.begin().await?;
    let (status,): (String,) = tx
        .fetch_one(
            sqlx::query_as("SELECT status FROM billing_runs WHERE id = $1 FOR UPDATE").bind(id),
        )
        .await?;
    if matches!(status.as_str(), "completed" | "cancelled") {
        tx.commit().await?;
        return Ok(true);
    }
    let (open,): (bool,) = tx
        .fetch_one(
            sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM billing_items WHERE run_id = $1 AND state = 'queued') \
                 OR EXISTS (SELECT 1 FROM billing_attempts WHERE run_id = $1 AND status IN ('submitted', 'unknown'))",
            )
            .bind(id),
        )
        .await?;
    if open || status != "running" {
        tx.commit().await?;
        return Ok(false);
    }
    tx.execute(
        sqlx::query(
            "UPDATE billing_runs SET status = 'completed', finished_at = now(), updated_at = now() WHERE id = $1",
        )
        .bind(id),
    )
    .await?;
    write_totals(&mut tx, id).await?;
    fence.check(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(run_id = %id, "billing run completed");
    Ok(true)
}

/// Operator controls. `pause` holds claims (debits in flight finish); `resume` lets them go
/// on; `cancel` is final: every item not yet claimed is excluded as `cancelled`.
pub async fn control(db: &Db, id: Uuid, action: &str) -> Result<RunRow, BillingError> {
    let mut tx = db.begin().await?;
    let Some((status,)): Option<(String,)> = tx
        .fetch_optional(
            sqlx::query_as("SELECT status FROM billing_runs WHERE id = $1 FOR UPDATE").bind(id),
        )
        .await?
    else {
        return Err(BillingError::NoRun(id));
    };
    let refuse = |what: &str| {
        Err(BillingError::Refused(format!(
            "run {id} is {status}: cannot {what} it"
        )))
    };
    match action {
        "pause" => {
            if !matches!(status.as_str(), "running" | "pending" | "paused") {
                return refuse("pause");
            }
            tx.execute(
                sqlx::query(
                    "UPDATE billing_runs SET status = 'paused', paused_by = 'ops', pause_reason = 'paused by an operator', updated_at = now() WHERE id = $1",
                )
                .bind(id),
            )
            .await?;
        }
        "resume" => {
            if status != "paused" {
                return refuse("resume");
            }
            tx.execute(
                sqlx::query(
                    "UPDATE billing_runs SET status = CASE WHEN started_at IS NULL THEN 'pending' ELSE 'running' END, \
                     paused_by = NULL, pause_reason = NULL, updated_at = now() WHERE id = $1",
                )
                .bind(id),
            )
            .await?;
        }
        "cancel" => {
            if matches!(status.as_str(), "completed" | "cancelled") {
                return refuse("cancel");
            }
            tx.execute(
                sqlx::query(
                    "UPDATE billing_items SET state = 'excluded', reason = 'cancelled', detail = 'the run was cancelled', decided_at = now() \
                     WHERE run_id = $1 AND state = 'queued'",
                )
                .bind(id),
            )
            .await?;
            tx.execute(
                sqlx::query(
                    "UPDATE billing_runs SET status = 'cancelled', finished_at = now(), updated_at = now() WHERE id = $1",
                )
                .bind(id),
            )
            .await?;
            write_totals(&mut tx, id).await?;
        }
        other => return Err(BillingError::Refused(format!("unknown action `{other}`"))),
    }
    tx.commit().await?;
    get(db, id).await?.ok_or(BillingError::NoRun(id))
}

/// Runs not over whose record has not moved for `stale_after` (their jobs may be gone from
/// Redis): the sweeper re-drives them.
pub async fn stale(
    db: &Db,
    stale_after: std::time::Duration,
    limit: i64,
) -> Result<Vec<RunRow>, BillingError> {
    let mut tx = db.begin().await?;
    let rows = tx
        .fetch_all(
            sqlx::query_as::<_, RunRow>(&format!(
                "SELECT {RUN_COLUMNS} FROM billing_runs r \
                 WHERE (status IN ('pending', 'running') OR (status = 'paused' AND paused_by = 'breaker')) \
                 AND greatest(updated_at, (SELECT at FROM billing_run_progress p WHERE p.run_id = r.id)) \
                     < now() - $1::interval \
                 ORDER BY updated_at LIMIT $2"
            ))
            .bind(chrono::Duration::from_std(stale_after).unwrap_or_else(|_| chrono::Duration::minutes(5)))
            .bind(limit),
        )
        .await?;
    tx.commit().await?;
    Ok(rows)
}
