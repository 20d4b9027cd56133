//! Payment gateways: one trait ([`Gateway`]) and one module per gateway ([`genesis`] today).
//! A second gateway is a new module plus one match arm in [`connect`].
//!
//! What callers rely on, whatever the gateway:
//! - A debit call has three outcomes: an answer (any status), [`CallError::Refused`] (the
//!   gateway says it did not process the request) and [`CallError::Unknown`] (no answer we
//!   can trust: timeout, reset, 5xx, an unreadable body). `Unknown` is never a failure: the
//!   debit may exist at the gateway, and only a reconcile of its `transaction_id` says.
//! - Nothing here retries. Retrying a debit is the caller's explicit policy (reconcile first).
//! - Amounts are integer minor units end to end.

pub mod genesis;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::config::{GatewayAccountSettings, GatewaySettings};

/// One direct debit, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Debit {
    /// Our idempotency key (deterministic per collection; ≤ 255 characters).
    pub transaction_id: String,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// Normalised IBAN.
    pub iban: String,
    /// BIC, when known.
    pub bic: Option<String>,
    /// First name in the SEPA character set, cut to the scheme's size.
    pub first_name: String,
    /// Last name, likewise.
    pub last_name: String,
    /// Billing country (the IBAN's).
    pub country: String,
    /// E-mail, when known.
    pub email: Option<String>,
    /// Mandate reference, when known.
    pub mandate_reference: Option<String>,
    /// Text for the debtor's statement.
    pub usage: String,
}

impl Debit {
    /// SHA-256 of the debit's content: a resend must carry the same debit.
    pub fn request_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }
}

/// A gateway's answer about one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Answer {
    /// The gateway's status word, as sent (`approved`, `declined`, `pending_async`…).
    pub status: String,
    /// The gateway's id of the transaction.
    pub unique_id: Option<String>,
    /// Our id, echoed.
    pub transaction_id: Option<String>,
    /// Numeric error code.
    pub code: Option<i32>,
    /// Customer-safe text.
    pub message: Option<String>,
    /// Developer-facing reason.
    pub technical_message: Option<String>,
    /// Amount, minor units, as the gateway has it.
    pub amount_minor: Option<i64>,
    /// Currency, when the answer names it.
    #[serde(default)]
    pub currency: Option<String>,
    /// `sdd_sale`, `void` … when the answer names it.
    #[serde(default)]
    pub transaction_type: Option<String>,
    /// When the gateway dated the transaction, as it wrote it.
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// One page of a by-date listing (pages start at 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// This page's number.
    pub page: u32,
    /// How many pages the listing has (0 when empty).
    pub pages_count: u32,
    /// Records in the whole listing.
    pub total_count: u64,
    /// This page's records.
    pub items: Vec<T>,
}

/// What a returns sweep lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnKind {
    /// Chargebacks (SDD returns).
    Chargebacks,
    /// Retrieval requests (the debtor's bank asks for the mandate).
    RetrievalRequests,
}

impl ReturnKind {
    /// As in `ledger_syncs.kind` and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chargebacks => "chargebacks",
            Self::RetrievalRequests => "retrieval_requests",
        }
    }
}

/// A chargeback or retrieval request as a notification or a by-date listing gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnRecord {
    /// The debit's gateway id.
    pub original_unique_id: Option<String>,
    /// The record's own gateway id (a SEPA return may carry the debit's).
    pub unique_id: Option<String>,
    /// Our id of the debit, when given.
    pub transaction_id: Option<String>,
    /// Acquirer reference number.
    pub arn: Option<String>,
    /// `1st chargeback`, `2nd chargeback` … (chargebacks).
    pub r#type: Option<String>,
    /// Reason code (AC04, AM04 …).
    pub reason_code: Option<String>,
    /// Its text.
    pub reason_description: Option<String>,
    /// Minor units.
    pub amount_minor: Option<i64>,
    /// Currency.
    pub currency: Option<String>,
    /// When the bank posted it.
    pub post_date: Option<chrono::NaiveDate>,
    /// When it was imported into the gateway.
    pub import_date: Option<chrono::NaiveDate>,
}

/// Why a gateway call gave no answer to record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The request may or may not have been processed (timeout, connection dropped, 5xx,
    /// an unreadable answer): reconcile, never assume.
    #[error("no reliable answer: {0}")]
    Unknown(String),
    /// The gateway refused the request before processing it (4xx such as bad credentials):
    /// nothing happened at the gateway.
    #[error("refused by the gateway: {0}")]
    Refused(String),
}

/// How a reconcile names its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKey<'a> {
    /// Our `transaction_id` (works for a debit whose answer never arrived).
    TransactionId(&'a str),
    /// The gateway's `unique_id` (what notifications carry).
    UniqueId(&'a str),
}

/// What a reconcile found.
// One per gateway call, moved once: boxing the answer would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The gateway knows the transaction; its current state.
    Found(Answer),
    /// The gateway has no record of it.
    NotFound,
}

/// One gateway account's API.
pub trait Gateway: Send + Sync + std::fmt::Debug {
    /// Gateway module name (`genesis`).
    fn name(&self) -> &'static str;
    /// Submits a direct debit.
    fn sale<'a>(&'a self, debit: &'a Debit) -> BoxFuture<'a, Result<Answer, CallError>>;
    /// The current state of a transaction, found by our id or the gateway's.
    fn reconcile<'a>(&'a self, key: TxKey<'a>) -> BoxFuture<'a, Result<Lookup, CallError>>;
    /// Voids an approved or pending debit (`unique_id` is the gateway's id of it); the void
    /// transaction is `void_transaction_id`.
    fn void<'a>(
        &'a self,
        void_transaction_id: &'a str,
        unique_id: &'a str,
    ) -> BoxFuture<'a, Result<Answer, CallError>>;
    /// One page of the transactions dated within `from..=to` (reconcile by date).
    fn transactions_by_date(
        &self,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
        page: u32,
        per_page: u32,
    ) -> BoxFuture<'_, Result<Page<Answer>, CallError>>;
    /// One page of the chargebacks or retrieval requests imported on `import_date`.
    fn returns_by_date(
        &self,
        kind: ReturnKind,
        import_date: chrono::NaiveDate,
        page: u32,
        per_page: u32,
    ) -> BoxFuture<'_, Result<Page<ReturnRecord>, CallError>>;
}

/// How an answer's status maps onto an attempt's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// A status finworker stores as is (`approved`, `declined`, `pending`, `pending_async`,
    /// `error`, `voided`, `chargebacked`, `refunded`).
    Known(&'static str),
    /// Nothing final can be concluded: the attempt is `unknown` and reconciled.
    Unknown,
}

/// Maps a gateway answer onto an attempt status. Error answers whose code says the gateway
/// itself or a bank behind it failed (system, maintenance, communication, remote timeout) or
/// that it saw a doublet are not final: the debit may exist, so they are `unknown`. Any status
/// word we do not know is `unknown` too (payments.md §1.5).
pub fn settle(a: &Answer) -> Settled {
    match a.status.as_str() {
        "approved" => Settled::Known("approved"),
        "declined" | "unsuccessful" => Settled::Known("declined"),
        "pending" | "in_progress" | "pending_hold" | "pending_review" => Settled::Known("pending"),
        "pending_async" => Settled::Known("pending_async"),
        "voided" => Settled::Known("voided"),
        "chargebacked" | "second_chargebacked" => Settled::Known("chargebacked"),
        "refunded" => Settled::Known("refunded"),
        "error" => match a.code {
            Some(100..=250) | Some(450) | Some(530) | Some(900..=999) | None => Settled::Unknown,
            Some(_) => Settled::Known("error"),
        },
        _ => Settled::Unknown,
    }
}

/// The API client of a configured account.
pub fn connect(
    name: &str,
    account: &GatewayAccountSettings,
    settings: &GatewaySettings,
) -> anyhow::Result<Arc<dyn Gateway>> {
    match account.gateway.as_str() {
        "genesis" => Ok(Arc::new(genesis::GenesisClient::new(
            name, account, settings,
        )?)),
        other => anyhow::bail!("gateway.accounts.{name}.gateway: unknown gateway `{other}`"),
    }
}

/// `name` in the SEPA character set (validation's transliteration), cut to `max` characters.
pub fn sepa_text(name: &str, max: usize) -> String {
    crate::validation::transliterate(name)
        .chars()
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str, code: Option<i32>) -> Answer {
        Answer {
            status: status.into(),
            code,
            ..Answer::default()
        }
    }

    #[test]
    fn only_answers_that_say_what_happened_are_final() {
        assert_eq!(
            settle(&answer("approved", None)),
            Settled::Known("approved")
        );
        assert_eq!(
            settle(&answer("declined", Some(500))),
            Settled::Known("declined")
        );
        assert_eq!(
            settle(&answer("pending_async", None)),
            Settled::Known("pending_async")
        );
        // Our request was wrong: nothing was debited.
        assert_eq!(settle(&answer("error", Some(330))), Settled::Known("error"));
        // The gateway or a bank failed, or saw a doublet: the debit may exist.
        for code in [Some(100), Some(240), Some(450), Some(950), None] {
            assert_eq!(settle(&answer("error", code)), Settled::Unknown, "{code:?}");
        }
        assert_eq!(settle(&answer("something_new", None)), Settled::Unknown);
    }

    #[test]
    fn names_are_cut_in_the_sepa_character_set() {
        assert_eq!(sepa_text("Jörg Weiß", 35), "Jorg Weiss");
        assert_eq!(sepa_text(&"a".repeat(50), 35).len(), 35);
    }
}
