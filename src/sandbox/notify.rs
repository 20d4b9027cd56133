//! The simulated gateway's notifications: signed form posts to a transaction's
//! `notification_url`, sent again until acknowledged with a `notification_echo` naming the
//! transaction's `unique_id`, on [`RETRY_SCHEDULE`] (scaled by the `notify_retry_scale` knob
//! for tests). Every delivery attempt is logged (`GET /_sandbox/notifications`).
//!
//! Raised by the control endpoint `POST /_sandbox/genesis/events` (chargeback, retrieval
//! request, status change) and by `pending_async` debits when they settle.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};

use super::Sandbox;

/// Waits between the attempts of one notification: 1 s, 2 s, 5 s, 10 s, 30 s, 1 min, 5 min,
/// then given up (times `notify_retry_scale`).
pub const RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(0),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// One attempt at delivering a notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    /// The transaction's gateway id.
    pub unique_id: String,
    /// status or event sent.
    pub kind: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// HTTP status answered (0: no answer).
    pub status: u16,
    /// The answer carried the right `notification_echo`.
    pub acknowledged: bool,
}

/// `POST /_sandbox/genesis/events`: something happens to a transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// Our id of the transaction (or `unique_id`).
    #[serde(default)]
    pub transaction_id: Option<String>,
    /// The gateway's id of the transaction.
    #[serde(default)]
    pub unique_id: Option<String>,
    /// `chargeback`, `retrieval_request`, or `status` (a plain status notification).
    pub event: String,
    /// Reason code (chargebacks, retrieval requests).
    #[serde(default)]
    pub reason_code: Option<String>,
    /// Where to send it (default: the debit's `notification_url`).
    #[serde(default)]
    pub url: Option<String>,
    /// sha1 | sha256 | sha512 (default sha256).
    #[serde(default)]
    pub signature: Option<String>,
    /// Send a notification (default); false: the gateway's books change silently, to be found
    /// by reconcile, ledger sync or the by-date sweeps.
    #[serde(default)]
    pub notify: Option<bool>,
    /// `status` event: the transaction's new status (an injected mismatch).
    #[serde(default)]
    pub status: Option<String>,
    /// Chargebacks and retrieval requests: the import date listed by date (default today).
    #[serde(default)]
    pub import_date: Option<chrono::NaiveDate>,
    /// The notification carries the reason code (default); false: only the by-date record
    /// does (a code to be back-filled by the sweep).
    #[serde(default)]
    pub notify_code: Option<bool>,
}

/// `GET /_sandbox/notifications`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Notifications {
    /// Every attempt, in order.
    pub sent: Vec<Sent>,
}

pub(super) async fn raise(
    State(s): State<Sandbox>,
    Json(r): Json<EventRequest>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let Some(entry) = s.genesis_event(&r) else {
        return Err((StatusCode::NOT_FOUND, "no such transaction".into()));
    };
    if r.notify == Some(false) {
        return Ok(Json(
            serde_json::json!({ "unique_id": entry.unique_id, "status": entry.status, "notified": false }),
        ));
    }
    let url = r.url.clone().or(entry.notification_url.clone()).ok_or((
        StatusCode::UNPROCESSABLE_ENTITY,
        "the debit had no notification_url and none was given".to_string(),
    ))?;
    let mut fields = fields(&entry, &entry.status);
    if r.event != "status" {
        fields.push(("event", r.event.clone()));
    }
    if let Some(c) = r
        .reason_code
        .as_ref()
        .filter(|_| r.notify_code != Some(false))
    {
        fields.push(("rc_code", c.clone()));
        fields.push(("rc_description", format!("sandbox {}", r.event)));
    }
    let alg = r.signature.clone().unwrap_or_else(|| "sha256".into());
    spawn(s.clone(), url, fields, alg);
    Ok(Json(
        serde_json::json!({ "unique_id": entry.unique_id, "status": entry.status }),
    ))
}

/// The fields of a transaction's notification, with `status` as its status.
pub(super) fn fields(e: &super::genesis::Entry, status: &str) -> Vec<(&'static str, String)> {
    vec![
        ("transaction_id", e.transaction_id.clone()),
        ("unique_id", e.unique_id.clone()),
        ("transaction_type", e.transaction_type.clone()),
        ("terminal_token", e.terminal.clone()),
        ("status", status.to_string()),
        ("amount", e.amount_minor.to_string()),
        ("currency", e.currency.clone()),
    ]
}

pub(super) async fn list(State(s): State<Sandbox>) -> Json<Notifications> {
    Json(Notifications {
        sent: s.notifications(),
    })
}

/// Sends one notification in the background, again until acknowledged.
pub(super) fn spawn(s: Sandbox, url: String, fields: Vec<(&'static str, String)>, alg: String) {
    tokio::spawn(async move {
        let k = s.knobs();
        let password = k.genesis_password.clone().unwrap_or_default();
        let unique_id = fields
            .iter()
            .find(|(k, _)| *k == "unique_id")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let kind = fields
            .iter()
            .find(|(k, _)| *k == "event")
            .or_else(|| fields.iter().find(|(k, _)| *k == "status"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut form = fields.clone();
        form.push((
            "signature",
            crate::webhooks::genesis::sign(&unique_id, &password, &alg),
        ));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let client = reqwest::Client::new();
        let echo = format!("<unique_id>{unique_id}</unique_id>");
        for (n, wait) in RETRY_SCHEDULE.iter().enumerate() {
            tokio::time::sleep(wait.mul_f64(k.notify_retry_scale)).await;
            let r = client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let (status, acknowledged) = match r {
                Ok(resp) => {
                    let st = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    (st, st == 200 && text.contains(&echo))
                }
                Err(_) => (0, false),
            };
            s.log_notification(Sent {
                unique_id: unique_id.clone(),
                kind: kind.clone(),
                attempt: u32::try_from(n + 1).unwrap_or(u32::MAX),
                status,
                acknowledged,
            });
            if acknowledged {
                return;
            }
        }
    });
}
