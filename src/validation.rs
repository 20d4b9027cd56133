//! Structural SEPA checks of one debtor. Pure functions: no I/O, microseconds per debtor.
//! Shared: the import validates with them, the `validation` job re-checks debtors stored
//! unchecked, and verification compares names through [`transliterate`].
//!
//! Every finding has a stable code (the API of this module: reports and clients match on
//! it), the field it concerns, a message for people and, where one exists, a suggestion.
//! Codes and rules are listed in `docs/validation.md`.

use chrono::NaiveDate;

use crate::{config::ValidationSettings, uploads::mask_iban};

/// SEPA countries and their IBAN lengths (ISO 13616 registry).
pub const SEPA_IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AL", 28),
    ("AT", 20),
    ("BE", 16),
    ("BG", 22),
    ("CH", 21),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("EE", 20),
    ("ES", 24),
    ("FI", 18),
    ("FR", 27),
    ("GB", 22),
    ("GI", 23),
    ("GR", 27),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IS", 26),
    ("IT", 27),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MT", 31),
    ("NL", 18),
    ("NO", 15),
    ("PL", 28),
    ("PT", 25),
    ("RO", 24),
    ("RS", 22),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("VA", 22),
];

/// BIC countries allowed for an IBAN country besides its own (territories that use the
/// parent's IBANs).
const BIC_COUNTRY_ALIASES: &[(&str, &[&str])] = &[
    (
        "FR",
        &[
            "GF", "GP", "MQ", "RE", "YT", "BL", "MF", "PM", "NC", "PF", "WF",
        ],
    ),
    ("GB", &["JE", "GG", "IM"]),
    ("FI", &["AX"]),
];

/// Longest debtor name in a pain.008 message.
pub const MAX_NAME: usize = 70;
/// Longest mandate reference (UMR).
pub const MAX_MANDATE: usize = 35;

/// What validation reads of a debtor (columns of `debtors`).
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct DebtorData {
    /// Debtor name as imported.
    pub name: String,
    /// Email, when the file had one.
    pub email: Option<String>,
    /// IBAN, normalised (no spaces, upper case).
    pub iban: String,
    /// BIC, when given.
    pub bic: Option<String>,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Mandate reference.
    pub mandate_id: Option<String>,
    /// Mandate signature date.
    pub mandate_date: Option<NaiveDate>,
    /// Country code of the debtor's address, when given.
    pub country: Option<String>,
}

/// What validation reads of a debtor, borrowed (checking a row allocates nothing for it).
#[derive(Debug, Clone, Copy)]
pub struct DebtorView<'a> {
    /// Debtor name as imported.
    pub name: &'a str,
    /// Email, when the file had one.
    pub email: Option<&'a str>,
    /// IBAN, normalised (no spaces, upper case).
    pub iban: &'a str,
    /// BIC, when given.
    pub bic: Option<&'a str>,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: &'a str,
    /// Mandate reference.
    pub mandate_id: Option<&'a str>,
    /// Mandate signature date.
    pub mandate_date: Option<NaiveDate>,
    /// Country code of the debtor's address, when given.
    pub country: Option<&'a str>,
}

impl DebtorData {
    /// Borrowed, for [`check_view`].
    pub fn view(&self) -> DebtorView<'_> {
        DebtorView {
            name: &self.name,
            email: self.email.as_deref(),
            iban: &self.iban,
            bic: self.bic.as_deref(),
            amount_minor: self.amount_minor,
            currency: &self.currency,
            mandate_id: self.mandate_id.as_deref(),
            mandate_date: self.mandate_date,
            country: self.country.as_deref(),
        }
    }
}

impl<'a> From<&'a crate::uploads::convert::Debtor> for DebtorView<'a> {
    fn from(d: &'a crate::uploads::convert::Debtor) -> Self {
        DebtorView {
            name: &d.name,
            email: d.email.as_deref(),
            iban: &d.iban,
            bic: d.bic.as_deref(),
            amount_minor: d.amount_minor,
            currency: &d.currency,
            mandate_id: d.mandate_id.as_deref(),
            mandate_date: d.mandate_date,
            country: d.country.as_deref(),
        }
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The debtor cannot be collected as it stands.
    Error,
    /// Collectable; worth a look (e.g. a name that will be transliterated).
    Warning,
}

impl Severity {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Stable code, e.g. `IBAN_CHECKSUM`.
    pub code: &'static str,
    /// Field concerned.
    pub field: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// For people; IBANs masked.
    pub message: String,
    /// A corrected value, when one can be proposed.
    pub suggestion: Option<String>,
}

/// The verdict on one debtor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// No error-severity finding.
    pub valid: bool,
    /// The name in the SEPA character set (transliterated when needed).
    pub sepa_name: Option<String>,
    /// Findings, errors and warnings.
    pub issues: Vec<Issue>,
}

impl Verdict {
    /// The findings as stored in `debtors.issues`: a JSON array of {code, field, severity,
    /// message, suggestion}, or `None` when there are none. The transliteration warning is
    /// not stored: `sepa_name` carries it, and the `debtor_findings` view words it like
    /// [`check`] does.
    pub fn issues_json(&self) -> Option<String> {
        let list: Vec<serde_json::Value> = self
            .issues
            .iter()
            .filter(|i| i.code != TRANSLITERATED)
            .map(|i| {
                serde_json::json!({
                    "code": i.code,
                    "field": i.field,
                    "severity": i.severity.as_str(),
                    "message": i.message,
                    "suggestion": i.suggestion,
                })
            })
            .collect();
        if list.is_empty() {
            return None;
        }
        serde_json::to_string(&list).ok()
    }

    /// The SEPA name as stored: only when it differs from the name as imported.
    pub fn sepa_name_if_changed<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.sepa_name.as_deref().filter(|s| *s != name)
    }
}

/// The warning for a name sent transliterated.
pub const TRANSLITERATED: &str = "NAME_TRANSLITERATED";

fn err(code: &'static str, field: &'static str, message: String) -> Issue {
    Issue {
        code,
        field,
        severity: Severity::Error,
        message,
        suggestion: None,
    }
}

/// Checks one debtor. `today` is passed in so tests (and runs spanning midnight) agree.
pub fn check(d: &DebtorData, rules: &ValidationSettings, today: NaiveDate) -> Verdict {
    check_view(d.view(), rules, today)
}

/// [`check`] on a borrowed debtor.
pub fn check_view(d: DebtorView<'_>, rules: &ValidationSettings, today: NaiveDate) -> Verdict {
    let mut issues = Vec::new();
    let iban_country = check_iban(d.iban, &mut issues);
    check_bic(d.bic, iban_country, &mut issues);
    let sepa_name = check_name(d.name, &mut issues);
    check_amount(d.amount_minor, d.currency, rules, &mut issues);
    check_mandate(&d, rules, today, &mut issues);
    if let Some(email) = d.email.filter(|e| !e.is_empty())
        && !email_address::EmailAddress::is_valid(email)
    {
        issues.push(err(
            "EMAIL_INVALID",
            "email",
            format!("'{email}' is not an email address"),
        ));
    }
    if let Some(c) = d.country.filter(|c| !c.is_empty())
        && !is_iso_country(c)
    {
        issues.push(err(
            "COUNTRY_INVALID",
            "country",
            format!("'{c}' is not an ISO 3166 two-letter country code"),
        ));
    }
    Verdict {
        valid: !issues.iter().any(|i| i.severity == Severity::Error),
        sepa_name,
        issues,
    }
}

/// Returns the IBAN's country when the IBAN is valid.
fn check_iban<'a>(iban: &'a str, issues: &mut Vec<Issue>) -> Option<&'a str> {
    // Masked only for a message: most IBANs are fine.
    let masked = || mask_iban(iban);
    if iban.len() < 5
        || !iban
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        || !iban.as_bytes()[..2].iter().all(u8::is_ascii_uppercase)
        || !iban.as_bytes()[2..4].iter().all(u8::is_ascii_digit)
    {
        issues.push(err(
            "IBAN_FORMAT",
            "iban",
            format!(
                "IBAN {masked} is not two letters, two check digits and an account number (A-Z, 0-9)",
                masked = masked()
            ),
        ));
        return None;
    }
    let country = &iban[..2];
    let Some(&(_, len)) = SEPA_IBAN_LENGTHS.iter().find(|(c, _)| *c == country) else {
        issues.push(err(
            "IBAN_COUNTRY",
            "iban",
            format!(
                "IBAN {masked}: {country} is not a SEPA country",
                masked = masked()
            ),
        ));
        return None;
    };
    if iban.len() != len {
        issues.push(err(
            "IBAN_LENGTH",
            "iban",
            format!(
                "IBAN {masked}: {country} IBANs have {len} characters, this one has {}",
                iban.len(),
                masked = masked()
            ),
        ));
        return None;
    }
    match iban.parse::<iban::Iban>() {
        Ok(_) => Some(country),
        Err(iban::ParseIbanError::InvalidBaseIban {
            source: iban::ParseBaseIbanError::InvalidChecksum,
        }) => {
            issues.push(err(
                "IBAN_CHECKSUM",
                "iban",
                format!(
                    "IBAN {masked}: the check digits do not match (mod 97), a typo is likely",
                    masked = masked()
                ),
            ));
            None
        }
        Err(_) => {
            issues.push(err(
                "IBAN_FORMAT",
                "iban",
                format!(
                    "IBAN {masked}: the account part does not follow {country}'s format",
                    masked = masked()
                ),
            ));
            None
        }
    }
}

fn check_bic(bic: Option<&str>, iban_country: Option<&str>, issues: &mut Vec<Issue>) {
    let Some(bic) = bic.filter(|b| !b.is_empty()) else {
        return; // IBAN-only is allowed in SEPA
    };
    let b = bic.as_bytes();
    let shape = (b.len() == 8 || b.len() == 11)
        && b[..6].iter().all(u8::is_ascii_uppercase)
        && b[6..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if !shape {
        issues.push(err(
            "BIC_FORMAT",
            "bic",
            format!(
                "BIC '{bic}' is not 8 or 11 characters: bank (4 letters), country (2 letters), location (2) and branch (3, optional)"
            ),
        ));
        return;
    }
    let bic_country = &bic[4..6];
    if let Some(ic) = iban_country {
        let aliases = BIC_COUNTRY_ALIASES
            .iter()
            .find(|(c, _)| *c == ic)
            .map(|(_, a)| *a)
            .unwrap_or(&[]);
        if bic_country != ic && !aliases.contains(&bic_country) {
            issues.push(err(
                "BIC_COUNTRY_MISMATCH",
                "bic",
                format!("BIC '{bic}' is in {bic_country} but the IBAN is in {ic}"),
            ));
        }
    }
}

/// The EPC basic Latin set for names, usage and references.
pub fn is_sepa_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " /-?:().,'+".contains(c)
}

/// The name in the SEPA character set: letters transliterated (é → e, ß → ss), other
/// characters outside the set dropped, spaces collapsed.
pub fn transliterate(name: &str) -> String {
    let ascii = deunicode::deunicode(name);
    let kept: String = ascii
        .chars()
        .map(|c| if is_sepa_char(c) { c } else { ' ' })
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_name(name: &str, issues: &mut Vec<Issue>) -> Option<String> {
    let name = name.trim();
    if name.is_empty() {
        issues.push(err("NAME_MISSING", "name", "the debtor has no name".into()));
        return None;
    }
    let sepa = if name.chars().all(is_sepa_char) {
        name.to_string()
    } else {
        let t = transliterate(name);
        if !t.chars().any(|c| c.is_ascii_alphabetic()) {
            issues.push(err(
                "NAME_CHARSET",
                "name",
                format!("name '{name}' has no letters the SEPA character set can carry"),
            ));
            return None;
        }
        issues.push(Issue {
            code: TRANSLITERATED,
            field: "name",
            severity: Severity::Warning,
            message: format!(
                "name '{name}' has characters outside the SEPA set; it will be sent as '{t}'"
            ),
            suggestion: Some(t.clone()),
        });
        t
    };
    if sepa.chars().count() > MAX_NAME {
        issues.push(err(
            "NAME_TOO_LONG",
            "name",
            format!(
                "name has {} characters; SEPA allows {MAX_NAME}",
                sepa.chars().count()
            ),
        ));
    }
    Some(sepa)
}

fn check_amount(minor: i64, currency: &str, rules: &ValidationSettings, issues: &mut Vec<Issue>) {
    if minor <= 0 {
        issues.push(err(
            "AMOUNT_NOT_POSITIVE",
            "amount",
            format!(
                "amount {} must be above zero",
                crate::money::format_minor(minor)
            ),
        ));
    } else if minor > rules.max_amount_minor {
        issues.push(err(
            "AMOUNT_TOO_HIGH",
            "amount",
            format!(
                "amount {} is above the ceiling of {}",
                crate::money::format_minor(minor),
                crate::money::format_minor(rules.max_amount_minor)
            ),
        ));
    }
    if !rules.currencies.iter().any(|c| c == currency) {
        issues.push(err(
            "CURRENCY_NOT_ALLOWED",
            "currency",
            format!(
                "currency {currency} is not collected (allowed: {})",
                rules.currencies.join(", ")
            ),
        ));
    }
}

fn check_mandate(
    d: &DebtorView<'_>,
    rules: &ValidationSettings,
    today: NaiveDate,
    issues: &mut Vec<Issue>,
) {
    match d.mandate_id.filter(|m| !m.is_empty()) {
        None if rules.require_mandate => issues.push(err(
            "MANDATE_MISSING",
            "mandate_id",
            "no mandate reference: a direct debit needs one".into(),
        )),
        None => {}
        Some(m) => {
            if m.chars().count() > MAX_MANDATE {
                issues.push(err(
                    "MANDATE_TOO_LONG",
                    "mandate_id",
                    format!(
                        "mandate reference '{m}' has {} characters; SEPA allows {MAX_MANDATE}",
                        m.chars().count()
                    ),
                ));
            }
            if let Some(bad) = m
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || " :?/+(),.-".contains(*c)))
            {
                issues.push(err(
                    "MANDATE_CHARSET",
                    "mandate_id",
                    format!(
                        "mandate reference '{m}' contains '{bad}'; allowed are A-Z a-z 0-9 : ? / + ( ) , . - and space"
                    ),
                ));
            }
            if m.starts_with("//") {
                issues.push(err(
                    "MANDATE_DOUBLE_SLASH",
                    "mandate_id",
                    format!("mandate reference '{m}' must not start with //"),
                ));
            }
        }
    }
    match d.mandate_date {
        None if rules.require_mandate => issues.push(err(
            "MANDATE_DATE_MISSING",
            "mandate_date",
            "no mandate signature date".into(),
        )),
        Some(date) if date > today => issues.push(err(
            "MANDATE_DATE_FUTURE",
            "mandate_date",
            format!("mandate signature date {date} is in the future"),
        )),
        Some(date) if date < SEPA_DD_START => issues.push(err(
            "MANDATE_DATE_BEFORE_SEPA",
            "mandate_date",
            format!(
                "mandate signature date {date} is before {SEPA_DD_START}, when SEPA direct debits began: \
                 no SEPA mandate can be that old (a mistyped year?)"
            ),
        )),
        _ => {}
    }
}

/// SEPA Direct Debit (Core) started on 2009-11-01: no valid mandate is signed earlier.
pub const SEPA_DD_START: NaiveDate = match NaiveDate::from_ymd_opt(2009, 11, 1) {
    Some(d) => d,
    None => panic!("a valid date"),
};

fn is_iso_country(c: &str) -> bool {
    // Binary search over the sorted list, three bytes a code ("AD AE ..."): this runs for
    // every debtor with a country.
    let (codes, c) = (ISO_3166.as_bytes(), c.as_bytes());
    let (mut lo, mut hi) = (0, codes.len().div_ceil(3));
    while lo < hi {
        let mid = (lo + hi) / 2;
        match codes[mid * 3..mid * 3 + 2].cmp(c) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// ISO 3166-1 alpha-2 codes (officially assigned).
const ISO_3166: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_are_found_by_binary_search_over_a_sorted_list() {
        let codes: Vec<&str> = ISO_3166.split(' ').collect();
        assert!(
            codes.windows(2).all(|w| w[0] < w[1]),
            "ISO_3166 must stay sorted"
        );
        assert!(codes.iter().all(|c| c.len() == 2 && is_iso_country(c)));
        for bad in ["", "D", "DEU", "XX", "de", "AA", "ZZ", "ZX"] {
            assert!(!is_iso_country(bad), "{bad}");
        }
    }
    use crate::testdata::iban_with_check;

    fn rules() -> ValidationSettings {
        ValidationSettings {
            max_amount_minor: 1_000_000,
            currencies: vec!["EUR".into()],
            require_mandate: true,
        }
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    fn good() -> DebtorData {
        DebtorData {
            name: "Anna Schmidt".into(),
            email: Some("anna@example.com".into()),
            iban: "DE89370400440532013000".into(),
            bic: Some("COBADEFFXXX".into()),
            amount_minor: 1999,
            currency: "EUR".into(),
            mandate_id: Some("MNDT-2024/001".into()),
            mandate_date: NaiveDate::from_ymd_opt(2024, 1, 15),
            country: Some("DE".into()),
        }
    }

    fn codes(d: &DebtorData) -> Vec<&'static str> {
        check(d, &rules(), today())
            .issues
            .iter()
            .map(|i| i.code)
            .collect()
    }

    #[test]
    fn a_clean_debtor_is_valid_with_no_findings() {
        let v = check(&good(), &rules(), today());
        assert!(v.valid);
        assert!(v.issues.is_empty(), "{:?}", v.issues);
        assert_eq!(v.sepa_name.as_deref(), Some("Anna Schmidt"));
    }

    #[test]
    fn ibans_of_twelve_countries_pass_and_a_typo_in_each_fails_the_checksum() {
        // Published example IBANs (registry / national bank examples).
        let valid = [
            "DE89370400440532013000",
            "FR1420041010050500013M02606",
            "ES9121000418450200051332",
            "IT60X0542811101000000123456",
            "NL91ABNA0417164300",
            "AT611904300234573201",
            "BE68539007547034",
            "PT50000201231234567890154",
            "FI2112345600000785",
            "IE29AIBK93115212345678",
            "LU280019400644750000",
            "SK3112000000198742637541",
            "PL61109010140000071219812874",
            "GB29NWBK60161331926819",
        ];
        for iban in valid {
            let d = DebtorData {
                iban: iban.into(),
                bic: None,
                ..good()
            };
            assert_eq!(codes(&d), Vec::<&str>::new(), "{iban}");
            // Swap two adjacent digits of the account part: mod 97 catches it.
            let mut b: Vec<char> = iban.chars().collect();
            let n = b.len();
            let (i, j) = (n - 2, n - 3);
            if b[i] == b[j] {
                b[i] = if b[i] == '1' { '2' } else { '1' };
            } else {
                b.swap(i, j);
            }
            let typo = DebtorData {
                iban: b.into_iter().collect(),
                bic: None,
                ..good()
            };
            assert_eq!(codes(&typo), vec!["IBAN_CHECKSUM"], "{iban}");
        }
    }

    #[test]
    fn iban_shape_country_and_length_errors_are_told_apart() {
        let with = |iban: &str| DebtorData {
            iban: iban.into(),
            bic: None,
            ..good()
        };
        assert_eq!(codes(&with("DE8937040044053201300")), vec!["IBAN_LENGTH"]);
        assert_eq!(codes(&with("US12345678901234567")), vec!["IBAN_COUNTRY"]);
        assert_eq!(codes(&with("de89370400440532013000")), vec!["IBAN_FORMAT"]);
        assert_eq!(codes(&with("DE89-370400440532013000")), vec!["IBAN_FORMAT"]);
        assert_eq!(codes(&with("")), vec!["IBAN_FORMAT"]);
        // Messages never hold the whole IBAN.
        let v = check(&with("DE8937040044053201300"), &rules(), today());
        assert!(v.issues[0].message.contains("DE89*************1300"));
        // A generated IBAN with computed check digits passes.
        assert!(codes(&with(&iban_with_check("DE", "370400440532013000"))).is_empty());
    }

    #[test]
    fn bic_format_and_country_agreement() {
        let with = |bic: &str| DebtorData {
            bic: Some(bic.into()),
            ..good()
        };
        assert!(codes(&with("COBADEFF")).is_empty());
        assert_eq!(codes(&with("COBADEF")), vec!["BIC_FORMAT"]);
        assert_eq!(codes(&with("COB1DEFFXXX")), vec!["BIC_FORMAT"]);
        assert_eq!(codes(&with("BNPAFRPPXXX")), vec!["BIC_COUNTRY_MISMATCH"]);
        // French IBAN, bank in Réunion: allowed.
        let re = DebtorData {
            iban: "FR1420041010050500013M02606".into(),
            bic: Some("BNPARERXXXX".into()),
            ..good()
        };
        assert!(codes(&re).is_empty());
        // No BIC at all is fine (IBAN-only).
        assert!(
            codes(&DebtorData {
                bic: None,
                ..good()
            })
            .is_empty()
        );
    }

    #[test]
    fn names_outside_the_sepa_set_are_transliterated_with_a_warning() {
        let with = |name: &str| DebtorData {
            name: name.into(),
            ..good()
        };
        let v = check(&with("Jörg Weiß"), &rules(), today());
        assert!(v.valid);
        assert_eq!(v.sepa_name.as_deref(), Some("Jorg Weiss"));
        assert_eq!(v.issues[0].code, "NAME_TRANSLITERATED");
        assert_eq!(v.issues[0].severity, Severity::Warning);
        assert_eq!(v.issues[0].suggestion.as_deref(), Some("Jorg Weiss"));
        assert_eq!(
            transliterate("Dupont \"Le Grand\" & Søn"),
            "Dupont Le Grand Son"
        );
        assert_eq!(codes(&with("O'Brien-Smith (Jr.)")), Vec::<&str>::new());
        assert_eq!(codes(&with("   ")), vec!["NAME_MISSING"]);
        assert_eq!(codes(&with("&&& ###")), vec!["NAME_CHARSET"]);
        assert_eq!(codes(&with(&"A".repeat(71))), vec!["NAME_TOO_LONG"]);
        assert!(codes(&with(&"A".repeat(70))).is_empty());
    }

    #[test]
    fn amounts_and_currency() {
        let with = |amount_minor: i64, currency: &str| DebtorData {
            amount_minor,
            currency: currency.into(),
            ..good()
        };
        assert!(codes(&with(1, "EUR")).is_empty());
        assert!(codes(&with(1_000_000, "EUR")).is_empty());
        assert_eq!(codes(&with(0, "EUR")), vec!["AMOUNT_NOT_POSITIVE"]);
        assert_eq!(codes(&with(-5, "EUR")), vec!["AMOUNT_NOT_POSITIVE"]);
        assert_eq!(codes(&with(1_000_001, "EUR")), vec!["AMOUNT_TOO_HIGH"]);
        assert_eq!(codes(&with(100, "USD")), vec!["CURRENCY_NOT_ALLOWED"]);
        let v = check(&with(1_000_001, "EUR"), &rules(), today());
        assert!(v.issues[0].message.contains("10000.01"), "{:?}", v.issues);
    }

    #[test]
    fn mandate_reference_and_signature_date() {
        let with = |m: Option<&str>, date: Option<NaiveDate>| DebtorData {
            mandate_id: m.map(str::to_string),
            mandate_date: date,
            ..good()
        };
        let past = NaiveDate::from_ymd_opt(2020, 2, 29);
        assert!(codes(&with(Some("A-1:2?3/4+(5),6.7 8"), past)).is_empty());
        assert_eq!(
            codes(&with(Some(&"M".repeat(36)), past)),
            vec!["MANDATE_TOO_LONG"]
        );
        assert!(codes(&with(Some(&"M".repeat(35)), past)).is_empty());
        assert_eq!(codes(&with(Some("M_1"), past)), vec!["MANDATE_CHARSET"]);
        assert_eq!(
            codes(&with(Some("//M1"), past)),
            vec!["MANDATE_DOUBLE_SLASH"]
        );
        assert_eq!(codes(&with(None, past)), vec!["MANDATE_MISSING"]);
        assert_eq!(codes(&with(Some("M1"), None)), vec!["MANDATE_DATE_MISSING"]);
        assert!(codes(&with(Some("M1"), Some(today()))).is_empty());
        assert_eq!(
            codes(&with(Some("M1"), NaiveDate::from_ymd_opt(24, 3, 15))),
            vec!["MANDATE_DATE_BEFORE_SEPA"],
            "the year 0024 of a misread 15.03.24"
        );
        assert_eq!(
            codes(&with(Some("M1"), NaiveDate::from_ymd_opt(2009, 10, 31))),
            vec!["MANDATE_DATE_BEFORE_SEPA"]
        );
        assert!(codes(&with(Some("M1"), NaiveDate::from_ymd_opt(2009, 11, 1))).is_empty());
        assert_eq!(
            codes(&with(Some("M1"), today().succ_opt())),
            vec!["MANDATE_DATE_FUTURE"]
        );
        let lax = ValidationSettings {
            require_mandate: false,
            ..rules()
        };
        assert!(check(&with(None, None), &lax, today()).valid);
    }

    #[test]
    fn email_and_country_when_present() {
        let with = |email: Option<&str>, country: Option<&str>| DebtorData {
            email: email.map(str::to_string),
            country: country.map(str::to_string),
            ..good()
        };
        assert!(codes(&with(None, None)).is_empty());
        assert!(codes(&with(Some("a.b+c@example.co.uk"), Some("RE"))).is_empty());
        assert_eq!(codes(&with(Some("anna@"), None)), vec!["EMAIL_INVALID"]);
        assert_eq!(
            codes(&with(Some("anna example.com"), None)),
            vec!["EMAIL_INVALID"]
        );
        assert_eq!(codes(&with(None, Some("XX"))), vec!["COUNTRY_INVALID"]);
        assert_eq!(codes(&with(None, Some("de"))), vec!["COUNTRY_INVALID"]);
    }

    #[test]
    fn every_finding_of_an_invalid_debtor_is_reported_not_just_the_first() {
        let d = DebtorData {
            name: String::new(),
            iban: "DE00370400440532013000".into(),
            amount_minor: 0,
            currency: "GBP".into(),
            mandate_id: None,
            ..good()
        };
        let v = check(&d, &rules(), today());
        assert!(!v.valid);
        let c: Vec<_> = v.issues.iter().map(|i| i.code).collect();
        assert_eq!(
            c,
            vec![
                "IBAN_CHECKSUM",
                "NAME_MISSING",
                "AMOUNT_NOT_POSITIVE",
                "CURRENCY_NOT_ALLOWED",
                "MANDATE_MISSING"
            ]
        );
    }
}
