//! Debtor fields and the header-alias table that maps a file's column headers onto them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A debtor field a file column can map to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The creditor's own reference of the debtor (customer number); part of the dedup key.
    Reference,
    /// Given name.
    FirstName,
    /// Family name.
    LastName,
    /// Full name (account holder).
    Name,
    /// E-mail address.
    Email,
    /// IBAN; part of the dedup key.
    Iban,
    /// BIC.
    Bic,
    /// Amount in major units as written ("19.99", "1.234,56").
    Amount,
    /// Amount in minor units ("1999").
    AmountMinor,
    /// ISO 4217 currency.
    Currency,
    /// Mandate reference.
    MandateId,
    /// Mandate signature date.
    MandateDate,
    /// Country code.
    Country,
    /// Remittance text.
    Usage,
}

impl Field {
    /// Every field, in the staged-chunk column order (never reorder: staged files use it).
    pub const ALL: [Field; 14] = [
        Field::Reference,
        Field::FirstName,
        Field::LastName,
        Field::Name,
        Field::Email,
        Field::Iban,
        Field::Bic,
        Field::Amount,
        Field::AmountMinor,
        Field::Currency,
        Field::MandateId,
        Field::MandateDate,
        Field::Country,
        Field::Usage,
    ];

    /// Position in [`Field::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The snake_case name used in config and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Reference => "reference",
            Field::FirstName => "first_name",
            Field::LastName => "last_name",
            Field::Name => "name",
            Field::Email => "email",
            Field::Iban => "iban",
            Field::Bic => "bic",
            Field::Amount => "amount",
            Field::AmountMinor => "amount_minor",
            Field::Currency => "currency",
            Field::MandateId => "mandate_id",
            Field::MandateDate => "mandate_date",
            Field::Country => "country",
            Field::Usage => "usage",
        }
    }

    /// How a spreadsheet cell of this field is turned into text.
    pub fn kind(self) -> FieldKind {
        match self {
            Field::Amount | Field::AmountMinor => FieldKind::Amount,
            Field::MandateDate => FieldKind::Date,
            _ => FieldKind::Text,
        }
    }
}

/// Cell interpretation of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Kept as text; a number is written out in full (no exponent), since IBANs and
    /// references are often typed into numeric cells.
    Text,
    /// An exact decimal.
    Amount,
    /// A calendar date (Excel serial numbers accepted).
    Date,
}

/// `"Account IBAN"` → `"account_iban"`: lower case; spaces, dashes, dots and slashes become one
/// underscore; surrounding quotes, BOMs and whitespace go.
pub fn normalize_header(h: &str) -> String {
    let mut out = String::with_capacity(h.len());
    let mut pending_sep = false;
    for c in h
        .trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}' || c == '"' || c == '\'')
        .chars()
    {
        if c.is_whitespace() || matches!(c, '_' | '-' | '.' | '/') {
            pending_sep = !out.is_empty();
        } else {
            if pending_sep {
                out.push('_');
                pending_sep = false;
            }
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The alias table, normalised for lookup.
#[derive(Debug, Clone)]
pub struct ColumnAliases {
    by_alias: BTreeMap<String, Field>,
    table: BTreeMap<Field, Vec<String>>,
}

/// Which file column feeds which field, found from the header row.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ColumnMap {
    /// (field, column index, header as written in the file).
    pub columns: Vec<(Field, usize, String)>,
    /// Headers that match no field, as written.
    pub ignored: Vec<String>,
}

impl ColumnMap {
    /// The file's header for a field, if mapped.
    pub fn header_of(&self, f: Field) -> Option<&str> {
        self.columns
            .iter()
            .find(|(g, _, _)| *g == f)
            .map(|(_, _, h)| h.as_str())
    }

    /// Whether a field is mapped.
    pub fn has(&self, f: Field) -> bool {
        self.header_of(f).is_some()
    }
}

impl ColumnAliases {
    /// Checks a configured table: every field listed, no alias claimed twice.
    pub fn check(table: &BTreeMap<Field, Vec<String>>) -> Result<(), (String, String)> {
        let mut seen: BTreeMap<String, Field> = BTreeMap::new();
        for (field, aliases) in table {
            if aliases.is_empty() {
                return Err((
                    format!("upload.columns.{}", field.as_str()),
                    "needs at least one alias".into(),
                ));
            }
            for a in aliases {
                let n = normalize_header(a);
                if let Some(other) = seen.insert(n.clone(), *field)
                    && other != *field
                {
                    return Err((
                        format!("upload.columns.{}", field.as_str()),
                        format!("alias `{a}` is also listed under {}", other.as_str()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Builds the lookup from a checked table.
    pub fn new(table: &BTreeMap<Field, Vec<String>>) -> Self {
        let by_alias = table
            .iter()
            .flat_map(|(f, aliases)| aliases.iter().map(|a| (normalize_header(a), *f)))
            .collect();
        Self {
            by_alias,
            table: table.clone(),
        }
    }

    /// The field a header names, if any.
    pub fn field_of(&self, header: &str) -> Option<Field> {
        self.by_alias.get(&normalize_header(header)).copied()
    }

    /// How many headers of a row are known aliases (used to sniff the delimiter).
    pub fn score<'a>(&self, headers: impl IntoIterator<Item = &'a str>) -> usize {
        headers
            .into_iter()
            .filter(|h| self.field_of(h).is_some())
            .count()
    }

    /// Maps a header row. Fails naming each missing required field and the headers that
    /// would have been accepted for it, or a field claimed by two columns.
    pub fn map(&self, headers: &[String]) -> Result<ColumnMap, String> {
        let mut map = ColumnMap::default();
        for (i, h) in headers.iter().enumerate() {
            if h.trim().is_empty() {
                continue;
            }
            match self.field_of(h) {
                Some(f) => {
                    if let Some(first) = map.header_of(f) {
                        return Err(format!(
                            "columns \"{first}\" and \"{h}\" both hold the {}; keep one of them",
                            f.as_str()
                        ));
                    }
                    map.columns.push((f, i, h.trim().to_string()));
                }
                None => map.ignored.push(h.trim().to_string()),
            }
        }
        let mut missing = Vec::new();
        let accepted = |f: Field| self.table.get(&f).map(|v| v.join(", ")).unwrap_or_default();
        if !map.has(Field::Iban) {
            missing.push(format!(
                "iban (accepted headers: {})",
                accepted(Field::Iban)
            ));
        }
        if !map.has(Field::Amount) && !map.has(Field::AmountMinor) {
            missing.push(format!(
                "amount (accepted headers: {}; or in cents: {})",
                accepted(Field::Amount),
                accepted(Field::AmountMinor)
            ));
        }
        if !map.has(Field::Name) && !map.has(Field::LastName) {
            missing.push(format!(
                "name (accepted headers: {}; or last_name: {})",
                accepted(Field::Name),
                accepted(Field::LastName)
            ));
        }
        if !missing.is_empty() {
            let found: Vec<&str> = headers
                .iter()
                .map(|h| h.trim())
                .filter(|h| !h.is_empty())
                .collect();
            return Err(format!(
                "missing required column{}: {}. The header row has: {}",
                if missing.len() > 1 { "s" } else { "" },
                missing.join("; "),
                if found.is_empty() {
                    "no column names".to_string()
                } else {
                    found.join(", ")
                }
            ));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn aliases() -> ColumnAliases {
        let s = Settings::load_from(std::path::Path::new("config"), &[]).unwrap();
        ColumnAliases::new(&s.upload.columns)
    }

    #[test]
    fn headers_match_whatever_their_case_spacing_and_punctuation() {
        let a = aliases();
        for h in [
            "IBAN",
            "iban",
            "Iban",
            " Account IBAN ",
            "account-iban",
            "\u{feff}IBAN",
        ] {
            assert_eq!(a.field_of(h), Some(Field::Iban), "{h}");
        }
        assert_eq!(a.field_of("Betrag"), Some(Field::Amount));
        assert_eq!(a.field_of("Währung"), Some(Field::Currency));
        assert_eq!(a.field_of("E-Mail"), Some(Field::Email));
        assert_eq!(a.field_of("colour"), None);
    }

    #[test]
    fn a_missing_required_column_is_named_with_its_accepted_headers() {
        let headers: Vec<String> = ["Name", "Betrag", "Reference"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = aliases().map(&headers).unwrap_err();
        assert!(
            err.starts_with("missing required column: iban (accepted headers: iban, account_iban"),
            "{err}"
        );
        assert!(
            err.contains("The header row has: Name, Betrag, Reference"),
            "{err}"
        );
    }

    #[test]
    fn a_field_claimed_by_two_columns_is_refused() {
        let headers: Vec<String> = ["IBAN", "Name", "Amount", "Betrag"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = aliases().map(&headers).unwrap_err();
        assert!(err.contains("\"Amount\" and \"Betrag\""), "{err}");
    }

    #[test]
    fn unknown_headers_are_listed_as_ignored() {
        let headers: Vec<String> = ["IBAN", "Nachname", "amount_cents", "Notes", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = aliases().map(&headers).unwrap();
        assert_eq!(m.ignored, vec!["Notes".to_string()]);
        assert_eq!(m.header_of(Field::LastName), Some("Nachname"));
        assert!(m.has(Field::AmountMinor));
    }

    #[test]
    fn an_alias_listed_under_two_fields_is_a_config_error() {
        let mut t = BTreeMap::new();
        t.insert(Field::Name, vec!["holder".to_string()]);
        t.insert(Field::LastName, vec!["Holder".to_string()]);
        assert!(ColumnAliases::check(&t).is_err());
    }

    #[test]
    fn field_indexes_follow_the_staged_column_order() {
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }
}
