//! Money is integer minor units everywhere; this turns it into text for people.

/// `12345` → `"123.45"`, `-5` → `"-0.05"` (two decimals: EUR and every SEPA currency).
pub fn format_minor(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::format_minor;

    #[test]
    fn two_decimals_with_sign() {
        assert_eq!(format_minor(12345), "123.45");
        assert_eq!(format_minor(5), "0.05");
        assert_eq!(format_minor(-5), "-0.05");
        assert_eq!(format_minor(0), "0.00");
        assert_eq!(format_minor(i64::MIN), "-92233720368547758.08");
    }
}
