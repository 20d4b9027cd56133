//! Genesis notifications: form fields, the signature and the `notification_echo`.
//!
//! The signature is `hex(HASH(unique_id + api_password))`, the hash chosen by the length of
//! what was sent (40 hex: SHA-1, 64: SHA-256, 128: SHA-512), compared in constant time.

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// A notification's fields, keys and values trimmed, in the order received.
#[derive(Debug, Clone, Default)]
pub struct Notification {
    /// Every field.
    pub fields: Vec<(String, String)>,
}

impl Notification {
    /// Parses a form-urlencoded body. `None` when the body is not UTF-8 text or holds no
    /// field at all.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(text.as_bytes())
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        (!fields.is_empty()).then_some(Self { fields })
    }

    /// The first non-empty value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The transaction's gateway id (`wpf_unique_id` for hosted-page notifications).
    pub fn unique_id(&self) -> Option<&str> {
        self.get("unique_id").or_else(|| self.get("wpf_unique_id"))
    }

    /// What happened: the event when there is one (`chargeback`, `retrieval_request`…), else
    /// the status (`notification_status` in some integrations).
    pub fn kind(&self) -> Option<String> {
        self.get("event")
            .or_else(|| self.get("status"))
            .or_else(|| self.get("notification_status"))
            .map(str::to_ascii_lowercase)
    }

    /// SHA-256 of the fields sorted, without the signature: a redelivery of the same
    /// notification has the same hash whatever the field order.
    pub fn payload_hash(&self) -> Vec<u8> {
        let mut f: Vec<&(String, String)> = self
            .fields
            .iter()
            .filter(|(k, _)| k != "signature")
            .collect();
        f.sort();
        let mut h = Sha256::new();
        for (k, v) in f {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        h.finalize().to_vec()
    }

    /// Checks the signature against the account's API password. `Ok(algorithm)` when it
    /// verifies.
    pub fn verify(&self, password: &str) -> Result<&'static str, SignatureError> {
        let unique_id = self.unique_id().ok_or(SignatureError::MissingUniqueId)?;
        let sent = self
            .get("signature")
            .ok_or(SignatureError::Missing)?
            .to_ascii_lowercase();
        let (algorithm, expected) = match sent.len() {
            40 => (
                "sha1",
                hex::encode(Sha1::digest(format!("{unique_id}{password}"))),
            ),
            64 => (
                "sha256",
                hex::encode(Sha256::digest(format!("{unique_id}{password}"))),
            ),
            128 => (
                "sha512",
                hex::encode(Sha512::digest(format!("{unique_id}{password}"))),
            ),
            n => return Err(SignatureError::Length(n)),
        };
        if bool::from(expected.as_bytes().ct_eq(sent.as_bytes())) {
            Ok(algorithm)
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `signature` field.
    #[error("no signature field")]
    Missing,
    /// No `unique_id` to check it against.
    #[error("no unique_id field")]
    MissingUniqueId,
    /// Not 40, 64 or 128 hex characters.
    #[error("a signature of {0} characters (SHA-1, SHA-256 and SHA-512 give 40, 64 and 128)")]
    Length(usize),
    /// Does not match the account's password.
    #[error("the signature does not match the account's API password")]
    Mismatch,
}

/// Signs a notification as Genesis does (the sandbox sends with it; tests forge with it).
pub fn sign(unique_id: &str, password: &str, algorithm: &str) -> String {
    let input = format!("{unique_id}{password}");
    match algorithm {
        "sha1" => hex::encode(Sha1::digest(input)),
        "sha512" => hex::encode(Sha512::digest(input)),
        _ => hex::encode(Sha256::digest(input)),
    }
}

/// The acknowledgement Genesis expects: without it, it sends the notification again.
pub fn echo(unique_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<notification_echo>\n  <unique_id>{}</unique_id>\n</notification_echo>\n",
        quick_xml::escape::escape(unique_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(sig: &str) -> Notification {
        Notification::parse(
            format!("unique_id=abc123&transaction_id=fw-1&status=approved&signature={sig}")
                .as_bytes(),
        )
        .expect("parses")
    }

    #[test]
    fn each_hash_length_verifies_and_a_wrong_password_does_not() {
        for alg in ["sha1", "sha256", "sha512"] {
            let n = note(&sign("abc123", "secret", alg));
            assert_eq!(n.verify("secret"), Ok(alg));
            assert_eq!(n.verify("other"), Err(SignatureError::Mismatch));
        }
        let upper = note(&sign("abc123", "secret", "sha256").to_uppercase());
        assert_eq!(upper.verify("secret"), Ok("sha256"));
        assert_eq!(
            note("abcd").verify("secret"),
            Err(SignatureError::Length(4))
        );
    }

    #[test]
    fn the_payload_hash_ignores_field_order_and_the_signature() {
        let a = Notification::parse(b"unique_id=u&status=approved&signature=aa").unwrap();
        let b = Notification::parse(b"status=approved&signature=bb&unique_id=u").unwrap();
        let c = Notification::parse(b"status=chargebacked&unique_id=u").unwrap();
        assert_eq!(a.payload_hash(), b.payload_hash());
        assert_ne!(a.payload_hash(), c.payload_hash());
    }

    #[test]
    fn the_kind_is_the_event_else_the_status() {
        let n = Notification::parse(b"unique_id=u&status=chargebacked&event=Chargeback").unwrap();
        assert_eq!(n.kind().as_deref(), Some("chargeback"));
        let n = Notification::parse(b"unique_id=u&status=approved").unwrap();
        assert_eq!(n.kind().as_deref(), Some("approved"));
        assert!(Notification::parse(b"\xff\xfe").is_none());
    }

    #[test]
    fn the_echo_escapes_the_unique_id() {
        assert!(echo("a<b").contains("<unique_id>a&lt;b</unique_id>"));
    }
}
