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
