//! The IBAN as a domain value: its normal form, its masked form for logs and reports, and the
//! keyed hash every lookup by IBAN goes through (an index or a blacklist never needs the
//! IBAN itself, and a leaked hash cannot be reversed by trying the ~10^10 IBANs of a bank).

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Upper case, without spaces, dashes or a leading "IBAN" label: the form compared, hashed
/// and stored.
pub fn normalize(raw: &str) -> String {
    let s: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect();
    match s.strip_prefix("IBAN") {
        // "IBAN DE89…" as some exports print it; an IBAN itself never starts with "IBAN"
        // (no country code "IB").
        Some(rest) if rest.len() >= 15 => rest.to_string(),
        _ => s,
    }
}

/// `DE89370400440532013000` → `DE89**************3000`: country, check digits and the last
/// four characters stay; the rest is starred.
pub fn mask(iban: &str) -> String {
    let chars: Vec<char> = iban.chars().filter(|c| !c.is_whitespace()).collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < 4 || i >= chars.len() - 4 {
                *c
            } else {
                '*'
            }
        })
        .collect()
}

/// Keyed hashing of normalised IBANs (`privacy.iban_key`).
#[derive(Clone)]
pub struct IbanHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for IbanHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IbanHasher([redacted])")
    }
}

impl IbanHasher {
    /// A hasher keyed with the secret.
    pub fn new(key: &SecretString) -> Self {
        Self {
            // HMAC takes a key of any length.
            mac: Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length")),
        }
    }

    /// HMAC-SHA256 of the normalised IBAN.
    pub fn hash(&self, normalized: &str) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(normalized.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// The indexed lookup key: the hash's first 8 bytes as a bigint. Two IBANs may share one
    /// (about once in 10^9 pairs of a 10M-row table), so a lookup compares the IBAN too.
    pub fn key(&self, normalized: &str) -> i64 {
        let h = self.hash(normalized);
        i64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_form_drops_spacing_case_and_label() {
        assert_eq!(
            normalize(" de89 3704-0044 0532 0130 00 "),
            "DE89370400440532013000"
        );
        assert_eq!(
            normalize("IBAN DE89 3704 0044 0532 0130 00"),
            "DE89370400440532013000"
        );
        assert_eq!(mask("DE89370400440532013000"), "DE89**************3000");
    }

    #[test]
    fn keys_depend_on_the_secret() {
        let a = IbanHasher::new(&SecretString::from("k1-0123456789abcdef0123456789abcdef"));
        let b = IbanHasher::new(&SecretString::from("k2-0123456789abcdef0123456789abcdef"));
        let iban = "DE89370400440532013000";
        assert_eq!(a.key(iban), a.key(iban));
        assert_ne!(a.key(iban), b.key(iban));
        assert_ne!(a.key(iban), a.key("DE02120300000000202051"));
    }
}
