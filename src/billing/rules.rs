//! The exclusion rules, evaluated in SQL over a set of a run's items: when the run selects its
//! debtors, and again inside each claim transaction right before the debit (with the profiles
//! locked, so two claims cannot both pass the cool-down for one IBAN). Caps are applied by the
//! caller, in item order, because each admitted debit uses up some of them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    config::Settings,
    db::{DbError, Tx},
    gateway::{Debit, sepa_text},
};

/// What a debit carries about its debtor.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct DebtorFields {
    iban: Option<String>,
    bic: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    name: Option<String>,
    sepa_name: Option<String>,
    email: Option<String>,
    mandate_id: Option<String>,
    reference: Option<String>,
}

/// The columns of [`DebtorFields`] on `debtors d`.
pub const DEBTOR_COLUMNS: &str = "d.iban, d.bic, d.first_name, d.last_name, d.name, d.sepa_name, d.email, d.mandate_id, d.reference";

impl DebtorFields {
    /// The debit of `amount` under `transaction_id` for this debtor.
    pub fn debit(
        &self,
        settings: &Settings,
        transaction_id: String,
        amount_minor: i64,
        currency: &str,
    ) -> Debit {
        let iban = self.iban.clone().unwrap_or_default();
        let full = self
            .sepa_name
            .clone()
            .or_else(|| self.name.clone())
            .unwrap_or_default();
        let (first, last) = match (&self.first_name, &self.last_name) {
            (Some(f), Some(l)) if !l.trim().is_empty() => (f.clone(), l.clone()),
            _ => split_name(&full),
        };
        let reference = self.reference.clone().unwrap_or_default();
        Debit {
            transaction_id,
            amount_minor,
            currency: currency.to_string(),
            country: iban.chars().take(2).collect(),
            iban,
            bic: self.bic.clone().filter(|b| !b.trim().is_empty()),
            first_name: sepa_text(&first, 35),
            last_name: sepa_text(&last, 35),
            email: self.email.clone().filter(|e| !e.trim().is_empty()),
            mandate_reference: self.mandate_id.clone().filter(|m| !m.trim().is_empty()),
            usage: sepa_text(
                &settings.gateway.usage.replace("{reference}", &reference),
                140,
            ),
        }
    }
}

/// One item with everything the rules and the debit need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    /// Item number in the run.
    pub item_no: i32,
    /// Debtor line.
    pub debtor_id: Option<i64>,
    /// Profile.
    pub profile_id: Option<i64>,
    /// The row's model.
    pub model: Option<String>,
    /// Amount to debit, minor units.
    pub amount_minor: i64,
    /// Currency.
    pub currency: String,
    #[sqlx(flatten)]
    debtor: DebtorFields,
    valid: Option<bool>,
    active: Option<bool>,
    profile_model: Option<String>,
    not_due: Option<bool>,
    /// The profile's lifetime total so far.
    pub lifetime_charged_minor: Option<i64>,
    chargeback: Option<bool>,
    bl_iban: Option<bool>,
    bl_name: Option<bool>,
    bl_email: Option<bool>,
    bl_bic: Option<bool>,
    line_live: Option<bool>,
    cooling: Option<bool>,
    vop_result: Option<String>,
    bav_result: Option<String>,
    /// The collection this debit would be for.
    pub cycle: String,
    /// Earlier (failed) attempts for the same profile and cycle.
    pub tries: i64,
    /// The profile's next bill.
    pub next_bill_at: Option<DateTime<Utc>>,
}

// `OFFSET 0` keeps each item, each EXISTS and the VOP lookup a per-row index probe. Without it
// the planner may read every item of the run, or hash every matching row of a table, at every
// claim: chosen when its statistics are older than the run (tables grown by the run's own
// rows), it made claims read all live attempts (150 ms a claim at 40,000 attempts, growing
// with the table) and all the run's items.
const SELECT: &str = "\
SELECT i.item_no, i.debtor_id, i.profile_id, i.model, i.amount_minor, i.currency, \
  d.iban, d.bic, d.first_name, d.last_name, d.name, d.sepa_name, d.email, d.mandate_id, d.reference, d.valid, \
  p.active, p.billing_model AS profile_model, (p.next_bill_at > now()) AS not_due, p.lifetime_charged_minor, p.next_bill_at, \
  (p.chargebacked_at IS NOT NULL OR EXISTS (SELECT 1 FROM billing_attempts a WHERE a.profile_id = p.id AND a.status = 'chargebacked' OFFSET 0)) AS chargeback, \
  EXISTS (SELECT 1 FROM blacklist b WHERE b.kind = 'iban' AND b.iban_hash = p.iban_hash OFFSET 0) AS bl_iban, \
  EXISTS (SELECT 1 FROM blacklist b WHERE b.kind = 'name' AND ((b.match = 'exact' AND b.value = lower(btrim(d.name))) \
          OR (b.match = 'prefix' AND starts_with(lower(btrim(d.name)), b.value)))) AS bl_name, \
  EXISTS (SELECT 1 FROM blacklist b WHERE b.kind = 'email' AND ((b.match = 'exact' AND b.value = lower(btrim(d.email))) \
          OR (b.match = 'prefix' AND starts_with(lower(btrim(d.email)), b.value)))) AS bl_email, \
  EXISTS (SELECT 1 FROM blacklist b WHERE b.kind = 'bic' AND ((b.match = 'exact' AND b.value = upper(btrim(d.bic))) \
          OR (b.match = 'prefix' AND starts_with(upper(btrim(d.bic)), b.value)))) AS bl_bic, \
  EXISTS (SELECT 1 FROM billing_attempts a WHERE a.debtor_id = i.debtor_id AND a.model = 'legacy' \
          AND a.status IN ('submitted', 'unknown', 'pending', 'pending_async', 'approved') OFFSET 0) AS line_live, \
  EXISTS (SELECT 1 FROM billing_attempts a WHERE a.profile_id = p.id \
          AND a.status IN ('submitted', 'unknown', 'pending', 'pending_async', 'approved') \
          AND a.created_at > now() - $3::interval OFFSET 0) AS cooling, \
  v.vop_result, v.bav_result, c.cycle, \
  (SELECT count(*) FROM billing_attempts a WHERE a.profile_id = p.id AND a.cycle = c.cycle) AS tries \
FROM unnest($2::int4[]) AS n(item_no) \
CROSS JOIN LATERAL (SELECT * FROM billing_items b WHERE b.run_id = $1 AND b.item_no = n.item_no OFFSET 0) i \
LEFT JOIN debtors d ON d.id = i.debtor_id \
LEFT JOIN debtor_profiles p ON p.id = i.profile_id \
LEFT JOIN LATERAL (SELECT vop_result, bav_result FROM vop_results v WHERE v.debtor_id = i.debtor_id OFFSET 0) v ON true \
CROSS JOIN LATERAL (SELECT CASE WHEN i.model = 'legacy' THEN 'l' || i.debtor_id \
    ELSE 'd' || extract(epoch FROM date_trunc('second', coalesce(p.next_bill_at, p.created_at, now())))::bigint END AS cycle) c \
ORDER BY i.item_no";

/// Loads the items with what the rules need. Turns JIT off for the rest of the transaction.
pub async fn load(
    tx: &mut Tx,
    settings: &Settings,
    run_id: Uuid,
    items: &[i32],
) -> Result<Vec<Candidate>, DbError> {
    let cooldown = chrono::Duration::from_std(settings.billing.cooldown)
        .unwrap_or_else(|_| chrono::Duration::days(30));
    // Index probes only: compiling them (JIT, chosen by cost estimates that can be far off
    // while a run's rows are new) took a second per claim of 50.
    tx.execute_raw("SET LOCAL jit = off").await?;
    tx.fetch_all(
        sqlx::query_as::<_, Candidate>(SELECT)
            .bind(run_id)
            .bind(items)
            .bind(cooldown),
    )
    .await
}

impl Candidate {
    /// The first rule that excludes this item (caps aside), with a detail for people.
    pub fn exclusion(
        &self,
        settings: &Settings,
        account_currency: &str,
        skip_chargeback_check: bool,
        dry_run: bool,
    ) -> Option<(&'static str, String)> {
        let yes = |b: Option<bool>| b == Some(true);
        if self.debtor_id.is_none() || self.debtor.iban.is_none() {
            return Some(("debtor_missing", "the debtor line no longer exists".into()));
        }
        if !yes(self.valid) {
            return Some(("invalid", "the debtor did not pass validation".into()));
        }
        if self.currency != account_currency {
            return Some((
                "currency_mismatch",
                format!("{} debtor, {account_currency} account", self.currency),
            ));
        }
        let model = self.model.as_deref().unwrap_or("legacy");
        match self.profile_model.as_deref() {
            Some(profile_model) => {
                if let Some(r) = super::models::conflict(profile_model, model) {
                    return Some((r, format!("profile is {profile_model}, row is {model}")));
                }
                if !yes(self.active) {
                    return Some(("profile_inactive", "the profile is deactivated".into()));
                }
            }
            // A dry run does not create profiles: a new IBAN's would be fresh.
            None if dry_run => {}
            None => return Some(("no_profile", "the debtor has no profile".into())),
        }
        if yes(self.bl_iban) {
            return Some(("blacklisted_iban", "the IBAN is blacklisted".into()));
        }
        if yes(self.bl_name) {
            return Some(("blacklisted_name", "the name is blacklisted".into()));
        }
        if yes(self.bl_email) {
            return Some(("blacklisted_email", "the e-mail is blacklisted".into()));
        }
        if yes(self.bl_bic) {
            return Some(("blacklisted_bic", "the BIC is blacklisted".into()));
        }
        if yes(self.chargeback) && !skip_chargeback_check {
            return Some(("chargeback_history", "the IBAN had a chargeback".into()));
        }
        if let Some(v) = &self.vop_result
            && settings.billing.vop_exclude.contains(v)
        {
            return Some(("vop_excluded", format!("name check: {v}")));
        }
        if let Some(b) = &self.bav_result
            && settings.billing.bav_exclude.contains(b)
        {
            return Some(("vop_excluded", format!("account check: {b}")));
        }
        if model == super::models::LEGACY && yes(self.line_live) {
            return Some((
                "already_collected",
                "this debtor line was already debited".into(),
            ));
        }
        if yes(self.cooling) {
            return Some((
                "cooldown",
                format!(
                    "the IBAN was debited less than {} ago",
                    humantime::format_duration(settings.billing.cooldown)
                ),
            ));
        }
        if model != super::models::LEGACY && yes(self.not_due) {
            return Some((
                "not_due",
                format!(
                    "next bill at {}",
                    self.next_bill_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                ),
            ));
        }
        if let Some(cap) = settings
            .billing
            .models
            .get(model)
            .and_then(|m| m.lifetime_cap_minor)
            && self.lifetime_charged_minor.unwrap_or(0) + self.amount_minor > cap
        {
            return Some((
                "lifetime_cap",
                format!(
                    "would bring the profile to {} (cap {})",
                    crate::money::format_minor(
                        self.lifetime_charged_minor.unwrap_or(0) + self.amount_minor
                    ),
                    crate::money::format_minor(cap)
                ),
            ));
        }
        None
    }

    /// The deterministic transaction id of this collection: the profile, the cycle (debtor line
    /// or due date) and the number of earlier failed tries of that cycle. A retry of the same
    /// debit reuses its attempt row and so its id; only a new debit after a final failure gets
    /// the next number.
    pub fn transaction_id(&self) -> String {
        format!(
            "fw-p{}-{}-{}",
            self.profile_id.unwrap_or(0),
            self.cycle,
            self.tries + 1
        )
    }

    /// The debit as it is sent.
    pub fn debit(&self, settings: &Settings) -> Debit {
        self.debtor.debit(
            settings,
            self.transaction_id(),
            self.amount_minor,
            &self.currency,
        )
    }
}

/// "Erika Mustermann" → ("Erika", "Mustermann"); one word is a last name.
fn split_name(full: &str) -> (String, String) {
    match full.trim().rsplit_once(' ') {
        Some((f, l)) => (f.trim().to_string(), l.to_string()),
        None => (String::new(), full.trim().to_string()),
    }
}
