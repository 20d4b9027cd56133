//! From a staged row's text to typed debtor values, or a reject naming field, column and why.
//!
//! Only what cannot be stored is rejected here (no IBAN, no name, an amount or date that is
//! not one, a value too long, a NUL character). Whether an IBAN's checksum holds or a BIC
//! fits is the validation stage's business: such rows are imported and judged there.

use chrono::NaiveDate;

use super::{ColumnMap, Field, mask_iban, staged::RowProblem};

/// Typed values of one importable row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Debtor {
    /// File row.
    pub row_no: u32,
    /// Trimmed reference ('' when none).
    pub reference: String,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Full name (given from `name`, or first + last).
    pub name: String,
    /// E-mail.
    pub email: Option<String>,
    /// Upper case, no spaces.
    pub iban: String,
    /// Upper case, no spaces.
    pub bic: Option<String>,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO code, upper case.
    pub currency: String,
    /// Mandate reference.
    pub mandate_id: Option<String>,
    /// Signature date.
    pub mandate_date: Option<NaiveDate>,
    /// Country code, upper case.
    pub country: Option<String>,
    /// Remittance text.
    pub usage: Option<String>,
}

/// What conversion needs to know beyond the row.
pub struct Rules<'a> {
    /// Column headers, for messages.
    pub columns: &'a ColumnMap,
    /// Longest cell in bytes.
    pub max_field_bytes: usize,
    /// Currency when the row has none.
    pub default_currency: &'a str,
}

/// Longest value kept in a reject record.
const SHOWN_VALUE: usize = 100;

impl Rules<'_> {
    fn problem(&self, field: Field, reason: String, value: &str) -> RowProblem {
        let shown: String = if field == Field::Iban {
            mask_iban(value)
        } else {
            value.chars().take(SHOWN_VALUE).collect()
        };
        RowProblem {
            field: Some(field),
            column: self.columns.header_of(field).map(str::to_string),
            reason,
            value: (!shown.is_empty()).then_some(shown),
        }
    }

    /// Converts one row's field values ([`Field::ALL`] order), or says why it cannot be
    /// stored.
    pub fn convert(&self, row_no: u32, values: &[&str; 14]) -> Result<Debtor, RowProblem> {
        for f in Field::ALL {
            let v = &values[f.index()];
            if v.len() > self.max_field_bytes {
                return Err(self.problem(
                    f,
                    crate::uploads::too_long(f, v.len(), self.max_field_bytes),
                    v,
                ));
            }
            if v.contains('\0') {
                return Err(self.problem(
                    f,
                    format!("the {} contains a NUL character", f.as_str()),
                    &v.replace('\0', "?"),
                ));
            }
        }
        let get = |f: Field| values[f.index()].trim();
        let opt = |f: Field| {
            let v = get(f);
            (!v.is_empty()).then(|| v.to_string())
        };
        let compact = |f: Field| -> String {
            get(f)
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .flat_map(char::to_uppercase)
                .collect()
        };

        let iban = crate::iban::normalize(get(Field::Iban));
        if iban.is_empty() {
            return Err(self.problem(Field::Iban, "the IBAN is empty".into(), ""));
        }
        if iban.len() > 34 || !iban.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(self.problem(
                Field::Iban,
                "the IBAN has characters other than letters and digits, or more than 34 of them"
                    .into(),
                get(Field::Iban),
            ));
        }

        let (mut first_name, mut last_name) = (opt(Field::FirstName), opt(Field::LastName));
        if !self.columns.has(Field::FirstName)
            && !self.columns.has(Field::LastName)
            && let Some(full) = opt(Field::Name)
        {
            (first_name, last_name) = split_full_name(&full);
        }
        let name = match opt(Field::Name) {
            Some(n) => n,
            None => [first_name.as_deref(), last_name.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        };
        if name.is_empty()
            || (self.columns.has(Field::LastName)
                && !self.columns.has(Field::Name)
                && last_name.is_none())
        {
            let field = if self.columns.has(Field::Name) {
                Field::Name
            } else {
                Field::LastName
            };
            return Err(self.problem(field, "the name is empty".into(), ""));
        }

        let amount_minor = if self.columns.has(Field::Amount) {
            let raw = get(Field::Amount);
            parse_amount(raw).map_err(|why| self.problem(Field::Amount, why, raw))?
        } else {
            let raw = get(Field::AmountMinor);
            parse_minor(raw).map_err(|why| self.problem(Field::AmountMinor, why, raw))?
        };

        let currency = match opt(Field::Currency) {
            Some(c) => c.to_uppercase(),
            None => self.default_currency.to_uppercase(),
        };
        let mandate_date = match opt(Field::MandateDate) {
            None => None,
            Some(raw) => {
                Some(parse_date(&raw).map_err(|why| self.problem(Field::MandateDate, why, &raw))?)
            }
        };
        let bic = Some(compact(Field::Bic)).filter(|b| !b.is_empty());
        Ok(Debtor {
            row_no,
            reference: get(Field::Reference).to_string(),
            first_name,
            last_name,
            name,
            email: opt(Field::Email),
            iban,
            bic,
            amount_minor,
            currency,
            mandate_id: opt(Field::MandateId),
            mandate_date,
            country: opt(Field::Country).map(|c| c.to_uppercase()),
            usage: opt(Field::Usage),
        })
    }
}

/// A full name in one column, split as documented in docs/uploads.md: "Last, First" when it
/// holds a comma; otherwise the last word is the family name and the words before it the given
/// names ("Anna Maria Schmidt" → "Anna Maria" / "Schmidt"); a single word is the family name.
pub fn split_full_name(full: &str) -> (Option<String>, Option<String>) {
    let some = |s: &str| {
        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        (!s.is_empty()).then_some(s)
    };
    if let Some((last, first)) = full.split_once(',') {
        return (some(first), some(last));
    }
    let words: Vec<&str> = full.split_whitespace().collect();
    match words.split_last() {
        None => (None, None),
        Some((last, [])) => (None, some(last)),
        Some((last, first)) => (some(&first.join(" ")), some(last)),
    }
}

/// An amount in major units, written the European or the English way, to minor units:
/// `19.99`, `19,99`, `1.234,56`, `1,234.56`, `1 234,56`, `€ 12.50`, `-3.00`, `12`.
/// Refused: more than two decimals, and a lone separator followed by exactly three digits
/// (`1.000` is a thousand in Germany and one in England).
pub fn parse_amount(raw: &str) -> Result<i64, String> {
    let shown = raw.trim();
    if shown.is_empty() {
        return Err("the amount is empty".into());
    }
    let bad =
        || format!("the amount \"{shown}\" is not a number (write it like 1234.56 or 1.234,56)");
    let mut s: String = shown
        .trim_start_matches(['€', '$', '£'])
        .trim_end_matches(['€', '$', '£'])
        .trim()
        .to_string();
    for code in ["EUR", "eur"] {
        s = s
            .trim_start_matches(code)
            .trim_end_matches(code)
            .trim()
            .to_string();
    }
    let negative = s.starts_with('-') || s.ends_with('-');
    let s: String = s
        .trim_matches(['-', '+'])
        .chars()
        .filter(|c| !matches!(c, ' ' | '\u{a0}' | '\u{202f}' | '\''))
        .collect();
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
    {
        return Err(bad());
    }
    let dots = s.matches('.').count();
    let commas = s.matches(',').count();
    // Which separator is the decimal one, if any.
    let decimal: Option<char> = match (dots, commas) {
        (0, 0) => None,
        (_, 0) | (0, _) => {
            let sep = if dots > 0 { '.' } else { ',' };
            let count = dots + commas;
            let after = s.rsplit(sep).next().unwrap_or("").len();
            if count > 1 {
                None // repeated: thousands groups
            } else if after == 3 {
                return Err(format!(
                    "the amount \"{shown}\" is ambiguous (three digits after \"{sep}\" may be a thousands group): write {}.00, or use two decimals",
                    s.replace(sep, "")
                ));
            } else {
                Some(sep)
            }
        }
        _ => {
            let last_dot = s.rfind('.').unwrap_or(0);
            let last_comma = s.rfind(',').unwrap_or(0);
            Some(if last_dot > last_comma { '.' } else { ',' })
        }
    };
    let (int_part, frac_part) = match decimal {
        Some(d) => {
            let (i, f) = s.rsplit_once(d).unwrap_or((&s, ""));
            (i.to_string(), f.to_string())
        }
        None => (s.clone(), String::new()),
    };
    // What is left of the integer part may only hold thousands groups of three digits.
    let groups: Vec<&str> = int_part.split(['.', ',']).collect();
    if groups.len() > 1 && (groups[1..].iter().any(|g| g.len() != 3) || groups[0].is_empty()) {
        return Err(bad());
    }
    let digits: String = groups.concat();
    if frac_part.len() > 2 {
        return Err(format!("the amount \"{shown}\" has more than two decimals"));
    }
    if !frac_part.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let int: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| bad())?
    };
    let frac: i64 = format!("{frac_part:0<2}").parse().map_err(|_| bad())?;
    let minor = int
        .checked_mul(100)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(|| format!("the amount \"{shown}\" is too large"))?;
    Ok(if negative { -minor } else { minor })
}

/// An amount already in minor units ("1999").
pub fn parse_minor(raw: &str) -> Result<i64, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("the amount is empty".into());
    }
    s.parse::<i64>()
        .map_err(|_| format!("the amount in cents \"{s}\" is not a whole number"))
}

/// A date: `2024-03-15`, `15.03.2024`, `15/03/2024`, `2024/03/15`, or an ISO date-time.
///
/// A year must be written with four digits, or with two: a two-digit year `YY` follows
/// chrono's `%y` pivot: 70–99 → 1970–1999, 00–69 → 2000–2069, so
/// `15.03.24` is 2024-03-15. A year of one, three or more than four digits is refused
/// (chrono's `%Y` would read `15.03.24` as the year 0024).
pub fn parse_date(raw: &str) -> Result<NaiveDate, String> {
    let s = raw.trim();
    let s = s.split(['T', ' ']).next().unwrap_or(s);
    let parts: Vec<&str> = s.split(['.', '/', '-']).collect();
    let year_digits = match parts.as_slice() {
        [y, _, _] if y.len() == 4 => Some(4),
        [_, _, y] => Some(y.len()),
        _ => None,
    };
    let formats: &[&str] = match year_digits {
        Some(4) => &["%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%Y/%m/%d", "%d-%m-%Y"],
        Some(2) => &["%d.%m.%y", "%d/%m/%y", "%d-%m-%y"],
        _ => &[],
    };
    for fmt in formats {
        if let Ok(d) = NaiveDate::parse_from_str(s, fmt) {
            return Ok(d);
        }
    }
    Err(format!(
        "\"{}\" is not a date (write it as YYYY-MM-DD or DD.MM.YYYY; a two-digit year YY means 19YY for 70-99, else 20YY)",
        raw.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_name_splits_into_given_and_family_names() {
        let s = |a: &str, b: &str| (Some(a.to_string()), Some(b.to_string()));
        assert_eq!(split_full_name("Anna Schmidt"), s("Anna", "Schmidt"));
        assert_eq!(
            split_full_name("  Anna   Maria Schmidt "),
            s("Anna Maria", "Schmidt")
        );
        assert_eq!(split_full_name("Schmidt, Anna"), s("Anna", "Schmidt"));
        assert_eq!(
            split_full_name("Madonna"),
            (None, Some("Madonna".to_string()))
        );
        assert_eq!(split_full_name(""), (None, None));
    }

    #[test]
    fn two_digit_years_follow_the_documented_pivot_and_odd_years_are_refused() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(parse_date("15.03.24"), Ok(d(2024, 3, 15)));
        assert_eq!(parse_date("15/03/69"), Ok(d(2069, 3, 15)));
        assert_eq!(parse_date("15-03-70"), Ok(d(1970, 3, 15)));
        assert_eq!(parse_date("15.03.2024"), Ok(d(2024, 3, 15)));
        assert_eq!(parse_date("2024-03-15"), Ok(d(2024, 3, 15)));
        assert_eq!(parse_date("2024-03-15T10:00:00"), Ok(d(2024, 3, 15)));
        for bad in ["15.03.024", "15.03.4", "15.03.20245", "2024-3"] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_in_european_and_english_notation_become_exact_minor_units() {
        for (raw, want) in [
            ("19.99", 1999),
            ("19,99", 1999),
            ("1.234,56", 123_456),
            ("1,234.56", 123_456),
            ("1 234,56", 123_456),
            ("1'234.50", 123_450),
            ("1.234.567", 123_456_700),
            ("€ 12.50", 1250),
            ("12.50 EUR", 1250),
            ("12", 1200),
            ("12.5", 1250),
            ("0,07", 7),
            ("-3.00", -300),
            ("3.00-", -300),
            ("12.", 1200),
        ] {
            assert_eq!(parse_amount(raw), Ok(want), "{raw}");
        }
    }

    #[test]
    fn amounts_that_are_not_exact_or_not_numbers_are_refused_with_the_reason() {
        assert!(parse_amount("1.000").unwrap_err().contains("ambiguous"));
        assert!(parse_amount("19.999").unwrap_err().contains("ambiguous"));
        assert!(
            parse_amount("19.9999")
                .unwrap_err()
                .contains("more than two decimals")
        );
        assert!(parse_amount("abc").unwrap_err().contains("not a number"));
        assert!(parse_amount("1.2.3,4,5").is_err());
        assert!(parse_amount("12,34,56").is_err());
        assert!(parse_amount("").unwrap_err().contains("empty"));
        assert!(
            parse_amount("99999999999999999999")
                .unwrap_err()
                .contains("too large")
                || parse_amount("99999999999999999999").is_err()
        );
    }

    #[test]
    fn dates_in_the_usual_european_forms_parse() {
        let d = NaiveDate::from_ymd_opt(2024, 3, 15).unwrap();
        for raw in [
            "2024-03-15",
            "15.03.2024",
            "15/03/2024",
            "2024/03/15",
            "2024-03-15T00:00:00",
        ] {
            assert_eq!(parse_date(raw), Ok(d), "{raw}");
        }
        assert!(parse_date("32.13.2024").unwrap_err().contains("not a date"));
    }
}
