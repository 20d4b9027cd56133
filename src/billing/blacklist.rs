//! The blacklist: who is never debited. IBANs are stored as their keyed hash only; names and
//! e-mails lower-cased, BICs upper-cased, each exact or as a prefix. Billing reads it in every
//! claim, so an entry added while a run is underway stops the debits not yet claimed.

use chrono::{DateTime, Utc};

use super::BillingError;
use crate::{context::AppContext, db::Db};

/// What to list.
#[derive(Debug, Clone)]
pub enum Entry {
    /// An IBAN (any spacing or case).
    Iban(String),
    /// A debtor name.
    Name(String),
    /// An e-mail address.
    Email(String),
    /// A BIC.
    Bic(String),
}

/// Adds an entry; false when it was listed already.
pub async fn add(
    app: &AppContext,
    e: &Entry,
    prefix: bool,
    reason: &str,
    source: &str,
) -> Result<bool, BillingError> {
    let (kind, hash, value) = match e {
        Entry::Iban(i) => {
            if prefix {
                return Err(BillingError::Refused(
                    "IBANs are listed by keyed hash, so only exact IBANs can be listed".into(),
                ));
            }
            let h = app.iban.as_ref().ok_or_else(|| {
                BillingError::Refused(
                    "privacy.iban_key is not set: IBANs are listed by their keyed hash".into(),
                )
            })?;
            (
                "iban",
                Some(h.hash(&crate::iban::normalize(i)).to_vec()),
                None,
            )
        }
        Entry::Name(n) => ("name", None, Some(n.trim().to_lowercase())),
        Entry::Email(m) => ("email", None, Some(m.trim().to_lowercase())),
        Entry::Bic(b) => ("bic", None, Some(b.trim().to_uppercase())),
    };
    if value.as_deref() == Some("") {
        return Err(BillingError::Refused(
            "an empty value would match everyone".into(),
        ));
    }
    let mut tx = app.db.begin().await?;
    let n = tx
        .execute(
            sqlx::query(
                "INSERT INTO blacklist (kind, iban_hash, value, match, reason, source) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(kind)
            .bind(hash)
            .bind(value)
            .bind(if prefix { "prefix" } else { "exact" })
            .bind(reason)
            .bind(source),
        )
        .await?;
    tx.commit().await?;
    Ok(n > 0)
}

/// A listed entry as shown to people.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Listed {
    /// iban, name, email, bic.
    pub kind: String,
    /// exact or prefix.
    pub r#match: String,
    /// The value, or the IBAN's hash (hex, shortened).
    pub shown: String,
    /// Why.
    pub reason: String,
    /// Who.
    pub source: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Every entry, newest first.
pub async fn list(db: &Db) -> Result<Vec<Listed>, BillingError> {
    let mut tx = db.begin().await?;
    let rows = tx
        .fetch_all(sqlx::query_as::<_, Listed>(
            "SELECT kind, match, coalesce(value, 'hmac:' || left(encode(iban_hash, 'hex'), 16)) AS shown, reason, source, created_at \
             FROM blacklist ORDER BY created_at DESC",
        ))
        .await?;
    tx.commit().await?;
    Ok(rows)
}
