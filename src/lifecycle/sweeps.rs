//! Daily sweeps of chargebacks and retrieval requests by import date, per account: every
//! record is matched to its attempt (by the debit's `unique_id`, the record's own, or our
//! `transaction_id`) and stored through the same code as a notification's — a chargeback
//! also moves the attempt to `chargebacked` through the state machine (source
//! `chargeback_sweep`), and a reason code missing so far is back-filled and its policy
//! applied. Records with no attempt of ours are listed in the sweep's items, never dropped.

use chrono::NaiveDate;
use uuid::Uuid;

use crate::{
    billing::{
        BillingError,
        state::{self, Change, Origin},
    },
    context::AppContext,
    gateway::{ReturnKind, ReturnRecord},
    lifecycle::{
        ledger::{self, Counts, Item, SyncError, SyncRow},
        returns::{self, Recorded, Source},
    },
    queue::fence::Fence,
};

/// Records asked per page.
const PER_PAGE: u32 = 100;

/// Sweeps `kind` of `account` for every import date in `from..=to` into sync `id`.
pub async fn sweep(
    app: &AppContext,
    fence: &Fence,
    id: Uuid,
    account: &str,
    kind: ReturnKind,
    (from, to): (NaiveDate, NaiveDate),
    requested_by: &str,
) -> Result<SyncRow, SyncError> {
    let row = ledger::open(app, id, kind.as_str(), account, from, to, requested_by).await?;
    if row.status == "completed" {
        return Ok(row);
    }
    let Some(acct) = app.accounts.get(account) else {
        let why = format!("gateway account `{account}` is not configured in this process");
        return Ok(ledger::close(app, &row, Some(&why)).await?);
    };
    let mut day = from;
    while day <= to {
        let mut page = 1;
        loop {
            let p = acct
                .guarded(|g| g.returns_by_date(kind, day, page, PER_PAGE))
                .await?;
            let mut items = Vec::new();
            let mut c = Counts {
                pages: 1,
                seen: i32::try_from(p.items.len()).unwrap_or(i32::MAX),
                ..Counts::default()
            };
            for r in &p.items {
                let (item, recorded) = one(app, fence, kind, r).await?;
                match recorded {
                    Some(Recorded::New) => c.corrected += 1,
                    Some(Recorded::Backfilled) => c.repaired += 1,
                    Some(Recorded::Known) => c.matched += 1,
                    None => c.missing_locally += 1,
                }
                items.extend(item);
            }
            let mut tx = app.db.begin().await?;
            ledger::add(app, &mut tx, &row, &items, c).await?;
            fence.check(&mut tx).await.map_err(BillingError::from)?;
            tx.commit().await.map_err(BillingError::from)?;
            if page >= p.pages_count {
                break;
            }
            page += 1;
        }
        day = day.succ_opt().unwrap_or(day);
        if day == NaiveDate::MAX {
            break;
        }
    }
    let done = ledger::close(app, &row, None).await?;
    tracing::info!(sync_id = %id, account, kind = kind.as_str(), %from, %to, seen = done.seen, new = done.corrected, backfilled = done.repaired, known = done.matched, unmatched = done.missing_locally, "sweep completed");
    Ok(done)
}

/// Stores one record (its own transaction). `None`: no attempt of ours.
async fn one(
    app: &AppContext,
    fence: &Fence,
    kind: ReturnKind,
    r: &ReturnRecord,
) -> Result<(Option<Item>, Option<Recorded>), BillingError> {
    let ids: Vec<String> = [&r.original_unique_id, &r.unique_id]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut tx = app.db.begin().await?;
    let Some(a) = returns::find_attempt(&mut tx, &ids, r.transaction_id.as_deref()).await? else {
        tx.commit().await?;
        tracing::warn!(
            kind = kind.as_str(),
            original_unique_id = r.original_unique_id.as_deref().unwrap_or("-"),
            "sweep: a record for a transaction we have no attempt of"
        );
        return Ok((
            Some(Item {
                kind: "unmatched",
                unique_id: r.original_unique_id.clone().or_else(|| r.unique_id.clone()),
                transaction_id: r.transaction_id.clone(),
                amount_minor: r.amount_minor,
                currency: r.currency.clone(),
                reason_code: r.reason_code.clone(),
                ..Item::default()
            }),
            None,
        ));
    };
    let recorded = match kind {
        ReturnKind::Chargebacks => {
            let src = Source {
                name: "chargeback_sweep",
                delivery_id: None,
            };
            let change = Change {
                id: a.id,
                to: "chargebacked",
                answer: None,
                note: Some("chargeback found by the daily sweep"),
                reason_code: r.reason_code.as_deref(),
            };
            // approved → chargebacked (or already chargebacked: the same; anything else is
            // stored as refused in the history).
            let applied = state::apply_many(
                &mut tx,
                &app.settings,
                Origin::of("chargeback_sweep"),
                state::ANY,
                &[change],
            )
            .await?;
            // Counted before the commit: a failed commit retries the record, which then
            // finds nothing to change.
            state::observe(
                &app.metrics,
                Origin::of("chargeback_sweep"),
                &[change],
                &applied,
            );
            returns::chargeback(app, &mut tx, &a, r, src).await?
        }
        ReturnKind::RetrievalRequests => {
            let src = Source {
                name: "retrieval_sweep",
                delivery_id: None,
            };
            returns::retrieval(&mut tx, &a, r, src).await?
        }
    };
    fence.check(&mut tx).await?;
    tx.commit().await?;
    let item = match recorded {
        Recorded::Known => None,
        Recorded::New | Recorded::Backfilled => Some(Item {
            kind: if recorded == Recorded::New {
                "recorded"
            } else {
                "backfilled"
            },
            attempt_id: Some(a.id),
            unique_id: a.unique_id.clone(),
            transaction_id: Some(a.transaction_id.clone()),
            local_status: Some(a.status.clone()),
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            reason_code: r.reason_code.clone(),
            ..Item::default()
        }),
    };
    Ok((item, Some(recorded)))
}
