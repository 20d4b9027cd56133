//! The webhook receiver: `POST /api/webhooks/emp/{account}` (Genesis notifications).
//!
//! Verify, store, then acknowledge: every delivery is committed to `webhook_deliveries` (group
//! commit, [`store`]) before any answer, and an accepted one is then processed by the
//! `emp_webhook` job, which asks the gateway for the authoritative state. The answers:
//!
//! | delivery                                   | stored as            | answer |
//! |--------------------------------------------|----------------------|--------|
//! | valid signature, first time                | accepted, queued     | 200 `notification_echo` |
//! | valid signature, a repeat                  | counted on the first | 200 `notification_echo` (processed once) |
//! | wrong or missing signature                 | rejected             | 401 |
//! | unknown account                            | rejected             | 404 |
//! | not form-urlencoded text, no `unique_id`   | malformed            | 400 / 415 |
//! | body over `webhooks.max_body_bytes`        | malformed (cut)      | 413 |
//! | Postgres unavailable                       | –                    | 503 (the gateway sends it again) |
//!
//! No per-IP throttle: the gateway's bursts come from few addresses.

pub mod genesis;
pub mod replay;
pub mod store;

use std::{net::SocketAddr, time::Duration};

use axum::{
    Extension,
    body::Bytes,
    extract::{ConnectInfo, Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;

pub use store::{Delivery, DeliveryStore, Stored};

use crate::{context::AppContext, queue::engine::NewJob};

/// What the receiver needs besides the application: the group-commit writer and the feed of
/// new deliveries to the `emp_webhook` job.
#[derive(Debug, Clone)]
pub struct Ingress {
    store: DeliveryStore,
}

impl Ingress {
    /// Starts the writers and the enqueuer. They stop when the last clone is dropped.
    pub fn start(app: &AppContext) -> Self {
        let (new, rx) = mpsc::unbounded_channel();
        let store = DeliveryStore::start(app.db.clone(), &app.settings.webhooks, new);
        tokio::spawn(enqueue_new(app.clone(), rx));
        Self { store }
    }
}

/// Delivery ids a job carries at most.
const IDS_PER_JOB: usize = 100;

/// Pushes new deliveries to the `emp_webhook` queue, many ids per job. A push that fails is
/// only logged: the delivery is queued in Postgres, and the sweeper hands it out again.
async fn enqueue_new(app: AppContext, mut rx: mpsc::UnboundedReceiver<i64>) {
    while let Some(first) = rx.recv().await {
        let mut ids = vec![first];
        while ids.len() < IDS_PER_JOB {
            match rx.try_recv() {
                Ok(id) => ids.push(id),
                Err(_) => break,
            }
        }
        if let Err(e) = push_jobs(&app, &ids).await {
            tracing::warn!(error = %e, deliveries = ids.len(), "webhook deliveries stored but not queued; the sweeper will queue them");
        }
    }
}

/// Enqueues `emp_webhook` jobs for these deliveries.
pub async fn push_jobs(app: &AppContext, ids: &[i64]) -> anyhow::Result<()> {
    let jobs = ids
        .chunks(IDS_PER_JOB)
        .map(|c| {
            let p = crate::jobs::emp_webhook::EmpWebhook {
                delivery_ids: c.to_vec(),
            };
            Ok(NewJob::new(
                <crate::jobs::emp_webhook::EmpWebhook as crate::queue::job::Job>::NAME,
                serde_json::to_string(&p)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    app.queue
        .push(&jobs, app.settings.worker.idempotency_ttl)
        .await?;
    Ok(())
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

fn refusal(status: StatusCode, reason: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <status>{}</status>\n  <message>{}</message>\n</error>\n",
        status.as_u16(),
        quick_xml::escape::escape(reason)
    );
    let mut r = xml(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    }
    r
}

fn headers_json(h: &HeaderMap) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in h {
        // Credentials never reach the table.
        if k == header::AUTHORIZATION || k == header::COOKIE {
            continue;
        }
        m.insert(
            k.as_str().to_string(),
            serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    serde_json::Value::Object(m)
}

/// `POST /api/webhooks/emp/{account}`.
pub async fn emp(
    State(app): State<AppContext>,
    Extension(ingress): Extension<Ingress>,
    Path(account): Path<String>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let remote_addr = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let headers = parts.headers;
    let limit = app.settings.webhooks.max_body_bytes;
    // The global body limit (http.max_body_bytes) bounds what is read; ours is smaller, so an
    // oversized delivery can still be stored, cut.
    let body: Bytes = match axum::body::to_bytes(body, app.settings.http.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body over the receiver's limit",
            );
        }
    };
    let mut d = Delivery {
        provider: "emp",
        account: account.clone(),
        remote_addr,
        headers: headers_json(&headers),
        body: body[..body.len().min(limit)].to_vec(),
        body_bytes: i32::try_from(body.len()).unwrap_or(i32::MAX),
        unique_id: None,
        transaction_id: None,
        kind: None,
        payload_hash: None,
        signature: None,
        verdict: "malformed",
        reason: None,
    };
    let (status, reason) = judge(&app, &headers, &body, limit, &mut d);
    let unique_id = d.unique_id.clone();
    match ingress.store.store(d).await {
        Ok(stored) => {
            delivery_metric(&app, verdict_label(status, stored));
            match (status, unique_id) {
                (StatusCode::OK, Some(u)) => xml(StatusCode::OK, genesis::echo(&u)),
                _ => {
                    tracing::warn!(account = %account, status = status.as_u16(), reason = %reason, "webhook delivery refused (stored)");
                    refusal(status, &reason)
                }
            }
        }
        Err(e) => {
            delivery_metric(&app, "unavailable");
            tracing::error!(account = %account, error = %e, "webhook delivery not stored: answered 503");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the delivery could not be stored; send it again",
            )
        }
    }
}

fn delivery_metric(app: &AppContext, verdict: &str) {
    app.metrics
        .webhook_deliveries
        .get_or_create(&crate::metrics::DeliveryLabels {
            provider: "emp".into(),
            verdict: verdict.into(),
        })
        .inc();
}

fn verdict_label(status: StatusCode, stored: Stored) -> &'static str {
    match (status, stored) {
        (StatusCode::OK, Stored::Repeat(_)) => "repeat",
        (StatusCode::OK, _) => "accepted",
        (StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND, _) => "rejected",
        _ => "malformed",
    }
}

/// Decides what the delivery is; fills in what was read of it.
fn judge(
    app: &AppContext,
    headers: &HeaderMap,
    body: &[u8],
    limit: usize,
    d: &mut Delivery,
) -> (StatusCode, String) {
    // The reason goes both into the stored row and into the answer.
    fn refuse(d: &mut Delivery, status: StatusCode, reason: String) -> (StatusCode, String) {
        d.reason = Some(reason.clone());
        (status, reason)
    }
    if body.len() > limit {
        let r = format!("body of {} bytes, over the limit of {limit}", body.len());
        return refuse(d, StatusCode::PAYLOAD_TOO_LARGE, r);
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form {
        let r = "Content-Type must be application/x-www-form-urlencoded".to_string();
        return refuse(d, StatusCode::UNSUPPORTED_MEDIA_TYPE, r);
    }
    let Some(n) = genesis::Notification::parse(body) else {
        let r = "the body is not form-urlencoded UTF-8 text".to_string();
        return refuse(d, StatusCode::BAD_REQUEST, r);
    };
    d.unique_id = n.unique_id().map(str::to_string);
    d.transaction_id = n.get("transaction_id").map(str::to_string);
    d.kind = n.kind();
    if d.unique_id.is_none() {
        return refuse(d, StatusCode::BAD_REQUEST, "no unique_id field".into());
    }
    d.payload_hash = Some(n.payload_hash());
    d.verdict = "rejected";
    let Some(acct) = app.accounts.get(&d.account) else {
        let r = format!("no gateway account `{}`", d.account);
        return refuse(d, StatusCode::NOT_FOUND, r);
    };
    // An empty password would let anyone sign: refuse rather than check against it.
    let Some(password) = acct
        .settings
        .password
        .as_ref()
        .map(|p| p.expose_secret())
        .filter(|p| !p.is_empty())
    else {
        let r = "the account has no API password to check signatures with".to_string();
        return refuse(d, StatusCode::UNAUTHORIZED, r);
    };
    match n.verify(password) {
        Ok(alg) => {
            d.signature = Some(alg);
            d.verdict = "accepted";
            (StatusCode::OK, String::new())
        }
        Err(e) => refuse(d, StatusCode::UNAUTHORIZED, e.to_string()),
    }
}

/// How long a delivery may wait in `queued` before the sweeper queues it again.
pub const REQUEUE_AFTER: Duration = Duration::from_secs(60);
