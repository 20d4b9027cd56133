//! The BIC auto-blacklist (the replaced system's rule as the default): over the window, a
//! BIC whose debits were charged back too often is blacklisted (source `auto`, with the
//! figures as its stats snapshot), so no later run debits its accounts. Every BIC with enough
//! debits to be judged gets a `bic_decisions` row, blacklisted or not.

use serde::Serialize;

use crate::{billing::BillingError, config::BicRule, context::AppContext};

/// One BIC's figures and the decision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    /// The BIC (upper case).
    pub bic: String,
    /// Debits in the window.
    pub transactions: i64,
    /// Of which charged back (excluded codes left out).
    pub chargebacks: i64,
    /// chargebacks / transactions.
    pub rate: f64,
    /// The rule says blacklist.
    pub blacklisted: bool,
    /// Newly added to the blacklist by this run.
    pub added: bool,
}

/// Whether `rule` blacklists a BIC with these figures.
pub fn decide(rule: &BicRule, transactions: i64, chargebacks: i64) -> bool {
    if transactions <= 0 {
        return false;
    }
    let rate = chargebacks as f64 / transactions as f64;
    rule.thresholds
        .iter()
        .any(|t| transactions >= i64::from(t.min_transactions) && rate > t.over_rate)
}

/// Applies the rule to every BIC with debits in the window.
pub async fn run(app: &AppContext) -> Result<Vec<Decision>, BillingError> {
    let rule = &app.settings.lifecycle.bic_rule;
    let min = rule
        .thresholds
        .iter()
        .map(|t| i64::from(t.min_transactions))
        .min()
        .unwrap_or(1);
    let excluded: Vec<String> = rule
        .excluded_codes
        .iter()
        .map(|c| c.trim().to_ascii_uppercase())
        .collect();
    let mut tx = app.db.begin().await?;
    let rows: Vec<(String, i64, i64)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT upper(btrim(d.bic)) AS bic, count(*), \
                   count(*) FILTER (WHERE EXISTS (SELECT 1 FROM chargebacks c WHERE c.attempt_id = a.id \
                     AND NOT (upper(coalesce(c.reason_code, '')) = ANY($2)))) \
                 FROM billing_attempts a JOIN debtors d ON d.id = a.debtor_id \
                 WHERE a.created_at > now() - make_interval(days => $1) \
                   AND a.status IN ('pending', 'pending_async', 'approved', 'chargebacked', 'refunded') \
                   AND coalesce(btrim(d.bic), '') <> '' \
                 GROUP BY 1 HAVING count(*) >= $3 ORDER BY 1",
            )
            .bind(i32::try_from(rule.window_days).unwrap_or(30))
            .bind(&excluded)
            .bind(min),
        )
        .await?;
    let mut out = Vec::new();
    for (bic, transactions, chargebacks) in rows {
        let blacklisted = decide(rule, transactions, chargebacks);
        let rate = chargebacks as f64 / transactions as f64;
        let snapshot = serde_json::json!({
            "window_days": rule.window_days,
            "transactions": transactions,
            "chargebacks": chargebacks,
            "rate": rate,
            "excluded_codes": excluded,
        });
        tx.execute(
            sqlx::query(
                "INSERT INTO bic_decisions (bic, window_days, transactions, chargebacks, blacklisted) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&bic)
            .bind(i32::try_from(rule.window_days).unwrap_or(30))
            .bind(i32::try_from(transactions).unwrap_or(i32::MAX))
            .bind(i32::try_from(chargebacks).unwrap_or(i32::MAX))
            .bind(blacklisted),
        )
        .await?;
        let mut added = false;
        if blacklisted {
            added = tx
                .execute(
                    sqlx::query(
                        "INSERT INTO blacklist (kind, value, match, reason, source, stats_snapshot) \
                         VALUES ('bic', $1, 'exact', $2, 'auto', $3) \
                         ON CONFLICT (kind, value, match) WHERE kind <> 'iban' DO NOTHING",
                    )
                    .bind(&bic)
                    .bind(format!(
                        "auto: {chargebacks} chargebacks in {transactions} debits ({:.1}%) over {} days",
                        rate * 100.0,
                        rule.window_days
                    ))
                    .bind(&snapshot),
                )
                .await?
                > 0;
            if added {
                tracing::warn!(bic = %bic, transactions, chargebacks, rate, "BIC blacklisted by the auto rule");
            }
        }
        out.push(Decision {
            bic,
            transactions,
            chargebacks,
            rate,
            blacklisted,
            added,
        });
    }
    tx.commit().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BicThreshold;

    fn rule() -> BicRule {
        BicRule {
            window_days: 30,
            excluded_codes: vec!["XT33".into(), "XT73".into()],
            thresholds: vec![
                BicThreshold {
                    min_transactions: 51,
                    over_rate: 0.5,
                },
                BicThreshold {
                    min_transactions: 10,
                    over_rate: 0.8,
                },
            ],
        }
    }

    #[test]
    fn the_replaced_systems_rule_at_its_edges() {
        let r = rule();
        // > 50 debits and > 50 %.
        assert!(decide(&r, 51, 26));
        assert!(!decide(&r, 51, 25), "exactly 49% is not over half");
        assert!(
            !decide(&r, 50, 26),
            "50 debits is not more than 50 (and 52% < 80%)"
        );
        assert!(!decide(&r, 100, 50), "exactly 50% is not more than half");
        // ≥ 10 debits and > 80 %.
        assert!(decide(&r, 10, 9));
        assert!(!decide(&r, 10, 8), "exactly 80% is not more than 80%");
        assert!(!decide(&r, 9, 9), "too few debits to judge");
        assert!(!decide(&r, 0, 0));
    }
}
