//! Finance downloads besides the VOP report: a billing run's attempts, and the chargebacks and
//! retrieval requests of a period. Same writers (CSV/XLSX, formula-safe), same signed links;
//! IBANs masked.

use chrono::{NaiveDate, Utc};
use uuid::Uuid;

use super::Summary;
use crate::{
    db::{Db, DbError},
    money::format_minor,
    uploads::mask_iban,
};

/// Columns of the billing-run report.
pub const BILLING_COLUMNS: [&str; 13] = [
    "attempt_id",
    "debtor_reference",
    "name",
    "iban",
    "amount",
    "currency",
    "status",
    "transaction_id",
    "gateway_unique_id",
    "gateway_code",
    "message",
    "reason_code",
    "sent_at",
];

type BillingRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    chrono::DateTime<Utc>,
);

/// Every attempt of run `run_id`, in attempt order, and the summary (counts and amounts by
/// status).
pub async fn billing_run(db: &Db, run_id: Uuid) -> Result<(Summary, Vec<Vec<String>>), DbError> {
    let mut tx = db.begin().await?;
    let run: Option<(String, String, String)> = tx
        .fetch_optional(
            sqlx::query_as("SELECT account, model, status FROM billing_runs WHERE id = $1")
                .bind(run_id),
        )
        .await?;
    let rows: Vec<BillingRow> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT a.id, d.reference, d.first_name, d.last_name, d.iban, a.amount_minor, a.currency, a.status, \
                 a.transaction_id, a.unique_id, a.gateway_code, a.message, a.reason_code, a.sent_at \
                 FROM billing_attempts a LEFT JOIN debtors d ON d.id = a.debtor_id WHERE a.run_id = $1 ORDER BY a.id",
            )
            .bind(run_id),
        )
        .await?;
    tx.commit().await?;
    let mut by_status: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    let cells = rows
        .into_iter()
        .map(|r| {
            let e = by_status.entry(r.7.clone()).or_default();
            e.0 += 1;
            e.1 += r.5;
            let name = [r.2.as_deref(), r.3.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                r.0.to_string(),
                r.1.unwrap_or_default(),
                name,
                r.4.as_deref().map(mask_iban).unwrap_or_default(),
                format_minor(r.5),
                r.6,
                r.7,
                r.8,
                r.9.unwrap_or_default(),
                r.10.map(|c| c.to_string()).unwrap_or_default(),
                r.11.unwrap_or_default(),
                r.12.unwrap_or_default(),
                r.13.to_rfc3339(),
            ]
        })
        .collect::<Vec<_>>();
    let mut lines = vec![
        ("Report".to_string(), "billing run".to_string()),
        ("Run".to_string(), run_id.to_string()),
    ];
    if let Some((account, model, status)) = run {
        lines.push(("Account".into(), account));
        lines.push(("Model".into(), model));
        lines.push(("Run status".into(), status));
    }
    lines.push(("Attempts".into(), cells.len().to_string()));
    for (status, (n, amount)) in by_status {
        lines.push((
            status.to_string(),
            format!("{n} attempts, {}", format_minor(amount)),
        ));
    }
    lines.push(("Generated".into(), Utc::now().to_rfc3339()));
    Ok((Summary { lines }, cells))
}

/// Columns of the chargebacks and retrieval-requests report.
pub const RETURNS_COLUMNS: [&str; 13] = [
    "kind",
    "type",
    "account",
    "debtor_reference",
    "iban",
    "transaction_id",
    "gateway_unique_id",
    "reason_code",
    "reason_description",
    "amount",
    "currency",
    "post_date",
    "effect",
];

type ReturnRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<NaiveDate>,
    String,
);

/// Chargebacks and retrieval requests recorded within `from..=to` (UTC), of one account or
/// all, and the summary.
pub async fn returns(
    db: &Db,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
) -> Result<(Summary, Vec<Vec<String>>), DbError> {
    let mut tx = db.begin().await?;
    let rows: Vec<ReturnRow> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT 'chargeback', c.type, c.account, d.reference, d.iban, a.transaction_id, c.original_unique_id, \
                   c.reason_code, c.reason_description, c.amount_minor, c.currency, c.post_date, \
                   CASE WHEN c.blacklisted THEN 'IBAN blacklisted, profile deactivated' \
                        WHEN c.deactivated THEN 'profile deactivated' ELSE 'may be billed again' END \
                 FROM chargebacks c LEFT JOIN billing_attempts a ON a.id = c.attempt_id LEFT JOIN debtors d ON d.id = a.debtor_id \
                 WHERE c.created_at >= $1::date AND c.created_at < $2::date + 1 AND ($3::text IS NULL OR c.account = $3) \
                 UNION ALL \
                 SELECT 'retrieval_request', 'retrieval request', r.account, d.reference, d.iban, a.transaction_id, \
                   r.original_unique_id, r.reason_code, r.reason_description, r.amount_minor, r.currency, r.post_date, \
                   'mandate requested' \
                 FROM retrieval_requests r LEFT JOIN billing_attempts a ON a.id = r.attempt_id LEFT JOIN debtors d ON d.id = a.debtor_id \
                 WHERE r.created_at >= $1::date AND r.created_at < $2::date + 1 AND ($3::text IS NULL OR r.account = $3) \
                 ORDER BY 1, 3, 7",
            )
            .bind(from)
            .bind(to)
            .bind(account),
        )
        .await?;
    tx.commit().await?;
    let (mut cb, mut rr, mut cb_amount) = (0, 0, 0i64);
    let cells = rows
        .into_iter()
        .map(|r| {
            if r.0 == "chargeback" {
                cb += 1;
                cb_amount += r.9.unwrap_or(0);
            } else {
                rr += 1;
            }
            vec![
                r.0,
                r.1,
                r.2,
                r.3.unwrap_or_default(),
                r.4.as_deref().map(mask_iban).unwrap_or_default(),
                r.5.unwrap_or_default(),
                r.6,
                r.7.unwrap_or_default(),
                r.8.unwrap_or_default(),
                r.9.map(format_minor).unwrap_or_default(),
                r.10.unwrap_or_default(),
                r.11.map(|d| d.to_string()).unwrap_or_default(),
                r.12,
            ]
        })
        .collect::<Vec<_>>();
    let lines = vec![
        (
            "Report".to_string(),
            "chargebacks and retrieval requests".to_string(),
        ),
        ("From".into(), from.to_string()),
        ("To".into(), to.to_string()),
        ("Account".into(), account.unwrap_or("all").to_string()),
        (
            "Chargebacks".into(),
            format!("{cb} ({})", format_minor(cb_amount)),
        ),
        ("Retrieval requests".into(), rr.to_string()),
        ("Generated".into(), Utc::now().to_rfc3339()),
    ];
    Ok((Summary { lines }, cells))
}

/// Columns of the clean-debtors export.
pub const CLEAN_COLUMNS: [&str; 10] = [
    "first_name",
    "last_name",
    "iban",
    "bic",
    "email",
    "amount",
    "currency",
    "account",
    "first_debit_at",
    "approved_debits",
];

/// What the clean-debtors export selects.
#[derive(Debug, Clone)]
pub struct CleanOptions {
    /// No attempt of the debtor within this many days.
    pub quiet_days: u32,
    /// At most this many debtors (oldest first debit first).
    pub limit: i64,
    /// Only debtors with at least two approved debits.
    pub strict: bool,
    /// Only debtors first debited through this account.
    pub account: Option<String>,
    /// Whole IBANs (for billing them elsewhere) instead of masked ones.
    pub full_iban: bool,
}

type CleanRow = (
    Option<String>,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    String,
    String,
    chrono::DateTime<Utc>,
    i64,
);

/// Debtors whose first debit was approved, with no chargeback or refund ever, quiet for `quiet_days`,
/// on no blacklist (IBAN, name, e-mail, BIC) — one row per IBAN (a debtor profile), so an IBAN
/// that appears in several uploads is listed once. The summary counts what each rule took out.
pub async fn clean_debtors(
    db: &Db,
    o: &CleanOptions,
) -> Result<(Summary, Vec<Vec<String>>), DbError> {
    // One CTE for both queries: each profile's first attempt, and the rules as flags.
    const JUDGED: &str = "WITH firsts AS ( \
          SELECT DISTINCT ON (a.profile_id) a.profile_id, a.debtor_id, a.amount_minor, a.currency, a.account, a.status, a.created_at \
          FROM billing_attempts a ORDER BY a.profile_id, a.created_at, a.id), \
        judged AS ( \
          SELECT f.*, f.status IN ('approved', 'chargebacked', 'refunded') AS first_ok, d.first_name, d.last_name, d.name, d.iban, d.bic, d.email, \
            (p.chargebacked_at IS NOT NULL \
              OR EXISTS (SELECT 1 FROM billing_attempts a WHERE a.profile_id = p.id AND a.status IN ('chargebacked', 'refunded')) \
              OR EXISTS (SELECT 1 FROM chargebacks c JOIN billing_attempts a ON a.id = c.attempt_id WHERE a.profile_id = p.id)) AS chargeback, \
            EXISTS (SELECT 1 FROM billing_attempts a WHERE a.profile_id = p.id AND a.created_at > now() - make_interval(days => $1)) AS recent, \
            (EXISTS (SELECT 1 FROM blacklist b WHERE b.kind = 'iban' AND b.iban_hash = p.iban_hash) \
              OR EXISTS (SELECT 1 FROM blacklist b WHERE b.kind = 'name' AND ((b.match = 'exact' AND b.value = lower(btrim(d.name))) \
                   OR (b.match = 'prefix' AND starts_with(lower(btrim(d.name)), b.value)))) \
              OR EXISTS (SELECT 1 FROM blacklist b WHERE b.kind = 'email' AND ((b.match = 'exact' AND b.value = lower(btrim(d.email))) \
                   OR (b.match = 'prefix' AND starts_with(lower(btrim(d.email)), b.value)))) \
              OR EXISTS (SELECT 1 FROM blacklist b WHERE b.kind = 'bic' AND ((b.match = 'exact' AND b.value = upper(btrim(d.bic))) \
                   OR (b.match = 'prefix' AND starts_with(upper(btrim(d.bic)), b.value))))) AS blacklisted, \
            (SELECT count(*) FROM billing_attempts a WHERE a.profile_id = p.id AND a.status = 'approved') AS approved \
          FROM firsts f JOIN debtor_profiles p ON p.id = f.profile_id JOIN debtors d ON d.id = f.debtor_id \
          WHERE ($2::text IS NULL OR f.account = $2)) ";
    let mut tx = db.begin().await?;
    let counts: (i64, i64, i64, i64, i64, i64) = tx
        .fetch_one(
            sqlx::query_as(&format!(
                "{JUDGED} SELECT count(*), \
                   count(*) FILTER (WHERE NOT first_ok), \
                   count(*) FILTER (WHERE first_ok AND chargeback), \
                   count(*) FILTER (WHERE first_ok AND NOT chargeback AND recent), \
                   count(*) FILTER (WHERE first_ok AND NOT chargeback AND NOT recent AND blacklisted), \
                   count(*) FILTER (WHERE first_ok AND NOT chargeback AND NOT recent AND NOT blacklisted AND $3 AND approved < 2) \
                 FROM judged"
            ))
            .bind(o.quiet_days as i32)
            .bind(o.account.as_deref())
            .bind(o.strict),
        )
        .await?;
    let rows: Vec<CleanRow> = tx
        .fetch_all(
            sqlx::query_as(&format!(
                "{JUDGED} SELECT first_name, last_name, name, iban, bic, email, amount_minor, currency, account, created_at, approved \
                 FROM judged WHERE first_ok AND NOT chargeback AND NOT recent AND NOT blacklisted \
                   AND (NOT $3 OR approved >= 2) \
                 ORDER BY created_at, profile_id LIMIT $4"
            ))
            .bind(o.quiet_days as i32)
            .bind(o.account.as_deref())
            .bind(o.strict)
            .bind(o.limit.max(0)),
        )
        .await?;
    tx.commit().await?;
    let cells = rows
        .into_iter()
        .map(|r| {
            // A debtor line with only a full name: it goes in last_name, first_name empty.
            let (first, last) = match (r.0, r.1) {
                (None, None) => (String::new(), r.2),
                (f, l) => (f.unwrap_or_default(), l.unwrap_or_default()),
            };
            vec![
                first,
                last,
                if o.full_iban { r.3 } else { mask_iban(&r.3) },
                r.4.unwrap_or_default(),
                r.5.unwrap_or_default(),
                format_minor(r.6),
                r.7,
                r.8,
                r.9.to_rfc3339(),
                r.10.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    let (all, not_approved, chargeback, recent, blacklisted, not_strict) = counts;
    let lines = vec![
        ("Report".to_string(), "clean debtors".to_string()),
        (
            "Rule".into(),
            format!(
                "first debit approved, never charged back or refunded, no debit in the last {} days, on no blacklist{}; one row per IBAN; each IBAN below is counted under the first rule that takes it out",
                o.quiet_days,
                if o.strict {
                    ", at least two approved debits"
                } else {
                    ""
                }
            ),
        ),
        (
            "Account".into(),
            o.account.clone().unwrap_or_else(|| "all".into()),
        ),
        ("IBANs debited".into(), all.to_string()),
        ("First debit not approved".into(), not_approved.to_string()),
        ("Charged back or refunded".into(), chargeback.to_string()),
        (
            format!("Debited in the last {} days", o.quiet_days),
            recent.to_string(),
        ),
        ("Blacklisted".into(), blacklisted.to_string()),
        (
            "Fewer than two approved (strict)".into(),
            not_strict.to_string(),
        ),
        (
            "Listed".into(),
            format!("{} (limit {})", cells.len(), o.limit),
        ),
        (
            "IBANs".into(),
            if o.full_iban { "whole" } else { "masked" }.into(),
        ),
        ("Generated".into(), Utc::now().to_rfc3339()),
    ];
    Ok((Summary { lines }, cells))
}
