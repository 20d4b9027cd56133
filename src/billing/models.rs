//! Billing models: which model a row gets, and whether its IBAN's profile allows it.

use std::collections::BTreeMap;

use crate::config::ModelSettings;

/// The model of the one-off collection per debtor line.
pub const LEGACY: &str = "legacy";

fn in_band(m: &ModelSettings, amount: i64) -> bool {
    m.min_minor.is_none_or(|lo| amount >= lo) && m.max_minor.is_none_or(|hi| amount <= hi)
}

/// The model a row of a run under `run_model` gets: the run's model when the amount is in
/// its band, else another recurring model whose band holds it, else legacy (as the replaced
/// system: a flywheel run bills a 49.99 row under recovery, a 500.00 row as legacy).
pub fn model_for(run_model: &str, amount: i64, models: &BTreeMap<String, ModelSettings>) -> String {
    if run_model == LEGACY {
        return LEGACY.into();
    }
    if let Some(m) = models.get(run_model)
        && in_band(m, amount)
    {
        return run_model.into();
    }
    models
        .iter()
        .find(|(name, m)| {
            name.as_str() != LEGACY && name.as_str() != run_model && in_band(m, amount)
        })
        .map(|(name, _)| name.clone())
        .unwrap_or_else(|| LEGACY.into())
}

/// Why a row's model is refused by its IBAN's existing profile, if it is.
pub fn conflict(profile_model: &str, row_model: &str) -> Option<&'static str> {
    if profile_model == row_model {
        None
    } else if profile_model == LEGACY {
        Some("existing_legacy_iban")
    } else {
        Some("billing_model_conflict")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> BTreeMap<String, ModelSettings> {
        let s = crate::config::Settings::load_from(std::path::Path::new("config"), &[]).unwrap();
        s.billing.models
    }

    #[test]
    fn rows_get_their_runs_model_when_in_band_else_the_other_else_legacy() {
        let m = models();
        assert_eq!(model_for("flywheel", 299, &m), "flywheel");
        assert_eq!(model_for("flywheel", 4999, &m), "recovery");
        assert_eq!(model_for("flywheel", 50000, &m), "legacy");
        assert_eq!(model_for("recovery", 299, &m), "flywheel");
        assert_eq!(model_for("recovery", 9999, &m), "recovery");
        assert_eq!(model_for("legacy", 299, &m), "legacy");
        assert_eq!(model_for("flywheel", 198, &m), "legacy");
        assert_eq!(model_for("flywheel", 495, &m), "flywheel");
    }

    #[test]
    fn a_profiles_model_never_changes_silently() {
        assert_eq!(conflict("legacy", "legacy"), None);
        assert_eq!(conflict("legacy", "flywheel"), Some("existing_legacy_iban"));
        assert_eq!(
            conflict("flywheel", "recovery"),
            Some("billing_model_conflict")
        );
        assert_eq!(
            conflict("recovery", "legacy"),
            Some("billing_model_conflict")
        );
    }
}
