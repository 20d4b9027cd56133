//! Simulated VOP (name check) and BAV (account check) API, shaped after the EPC
//! Verification of Payee scheme. Answers are a pure function of the request:
//!
//! - VOP, by the IBAN's last two digits `nn`: 00–69 `MTCH`; 70–84 `CMTC` with the holder
//!   name `"<first initial>. <last word>"`; 85–94 `NMTC`; 95–99 `NOAP`.
//! - BAV, by the two digits before those, `mm`: 00–89 `VALID`; 90–94 `CLOSED`; 95–97
//!   `NO_DIRECT_DEBIT`; 98–99 `NOT_POSSIBLE`.
//! - A missing IBAN or name is a 400 (a request error: not retried by finworker).

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Deserialize;

use super::{Gate, Sandbox};

/// The routes of this API.
pub fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/vop/v1/payee-verifications", post(payee))
        .route("/bav/v1/account-verifications", post(account))
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    iban: String,
    #[serde(default)]
    name: Option<String>,
}

fn digits(iban: &str, from_end: usize) -> Option<u32> {
    let b = iban.as_bytes();
    if b.len() < from_end + 2 {
        return None;
    }
    let s = &iban[b.len() - from_end - 2..b.len() - from_end];
    s.parse().ok()
}

/// VOP outcome and matched name for a request (the documented rule).
pub fn payee_outcome(iban: &str, name: &str) -> (&'static str, Option<String>) {
    match digits(iban, 0) {
        Some(0..=69) => ("MTCH", None),
        Some(70..=84) => {
            let words: Vec<&str> = name.split_whitespace().collect();
            let holder = match (words.first(), words.last()) {
                (Some(f), Some(l)) if words.len() > 1 => {
                    format!("{}. {l}", f.chars().next().unwrap_or('X'))
                }
                _ => name.to_uppercase(),
            };
            ("CMTC", Some(holder))
        }
        Some(85..=94) => ("NMTC", None),
        _ => ("NOAP", None),
    }
}

/// BAV outcome for an IBAN (the documented rule).
pub fn account_outcome(iban: &str) -> &'static str {
    match digits(iban, 2) {
        Some(0..=89) => "VALID",
        Some(90..=94) => "CLOSED",
        Some(95..=97) => "NO_DIRECT_DEBIT",
        _ => "NOT_POSSIBLE",
    }
}

fn bad(s: &Sandbox, path: &str, iban: &str, msg: &str) -> Response {
    s.served(path, 400, Some(iban));
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

fn auth(h: &HeaderMap) -> Option<&str> {
    h.get("authorization").and_then(|v| v.to_str().ok())
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn payee(State(s): State<Sandbox>, h: HeaderMap, Json(b): Json<Body>) -> Response {
    const PATH: &str = "/vop/v1/payee-verifications";
    if let Gate::Fail(r) = s.gate(PATH, auth(&h), Some(&b.iban)).await {
        return r;
    }
    let name = b.name.unwrap_or_default();
    if b.iban.len() < 5 || name.trim().is_empty() {
        return bad(&s, PATH, &b.iban, "iban and name are required");
    }
    let (result, matched) = payee_outcome(&b.iban, &name);
    s.served(PATH, 200, Some(&b.iban));
    Json(serde_json::json!({
        "verificationId": format!("vop_{}", uuid::Uuid::now_v7().simple()),
        "result": result,
        "matchedName": matched,
        "timestamp": timestamp(),
    }))
    .into_response()
}

async fn account(State(s): State<Sandbox>, h: HeaderMap, Json(b): Json<Body>) -> Response {
    const PATH: &str = "/bav/v1/account-verifications";
    if let Gate::Fail(r) = s.gate(PATH, auth(&h), Some(&b.iban)).await {
        return r;
    }
    if b.iban.len() < 5 {
        return bad(&s, PATH, &b.iban, "iban is required");
    }
    s.served(PATH, 200, Some(&b.iban));
    Json(serde_json::json!({
        "verificationId": format!("bav_{}", uuid::Uuid::now_v7().simple()),
        "result": account_outcome(&b.iban),
        "timestamp": timestamp(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_documented_digits() {
        assert_eq!(payee_outcome("DE89370400440532013000", "A B").0, "MTCH");
        assert_eq!(
            payee_outcome("DE89370400440532013075", "Anna Maria Schmidt"),
            ("CMTC", Some("A. Schmidt".to_string()))
        );
        assert_eq!(payee_outcome("DE89370400440532013090", "A").0, "NMTC");
        assert_eq!(payee_outcome("DE89370400440532013099", "A").0, "NOAP");
        assert_eq!(account_outcome("DE89370400440532010000"), "VALID");
        assert_eq!(account_outcome("DE89370400440532019200"), "CLOSED");
        assert_eq!(account_outcome("DE89370400440532019600"), "NO_DIRECT_DEBIT");
        assert_eq!(account_outcome("DE89370400440532019900"), "NOT_POSSIBLE");
    }
}
