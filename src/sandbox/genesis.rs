//! The Genesis gateway simulator: `sdd_sale`, `void`, single reconcile, reconcile by date
//! (paged), chargebacks and retrieval requests by import date (paged), over the same XML and
//! Basic auth as the real gateway, with deterministic outcomes chosen by the amount's last two
//! digits (see `docs/sandbox.md`), and a ledger of every debit it accepted
//! (`GET /_sandbox/ledger`) so tests count debits per debtor.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{Gate, Sandbox};

/// One transaction the simulated gateway holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Our id, as sent.
    pub transaction_id: String,
    /// The simulator's id.
    pub unique_id: String,
    /// `sdd_sale` or `void`.
    pub transaction_type: String,
    /// IBAN as sent (sandbox data only).
    pub iban: String,
    /// Minor units.
    pub amount_minor: i64,
    /// Currency.
    pub currency: String,
    /// Terminal token of the call.
    pub terminal: String,
    /// Status now.
    pub status: String,
    /// Milliseconds since the sandbox started.
    pub at_ms: u64,
    /// Where the gateway posts this transaction's notifications, as the request gave it.
    #[serde(default)]
    pub notification_url: Option<String>,
    /// The merchant login (Basic auth user) that made it: by-date returns are per login.
    #[serde(default)]
    pub username: String,
    /// When it was taken.
    #[serde(default = "Utc::now")]
    pub created_at: DateTime<Utc>,
    /// When its status last changed (reconcile by date lists a transaction on both days).
    #[serde(default = "Utc::now")]
    pub changed_at: DateTime<Utc>,
    #[serde(skip)]
    settle: Option<(Instant, &'static str)>,
}

/// A chargeback or retrieval request the simulated gateway holds (listed by import date).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReturnEntry {
    /// `chargeback` or `retrieval_request`.
    pub kind: String,
    /// Its own id.
    pub unique_id: String,
    /// The debit's id.
    pub original_unique_id: String,
    /// The debit's transaction_id.
    pub transaction_id: String,
    /// `1st chargeback` …
    pub r#type: String,
    /// Reason code.
    pub reason_code: Option<String>,
    /// Minor units.
    pub amount_minor: i64,
    /// Currency.
    pub currency: String,
    /// Posted by the bank.
    pub post_date: NaiveDate,
    /// Imported into the gateway.
    pub import_date: NaiveDate,
    /// The debit's merchant login.
    pub username: String,
}

/// `GET /_sandbox/ledger`: every debit the gateway accepted (a declined or refused request
/// is not a debit), in arrival order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ledger {
    /// The debits.
    pub debits: Vec<Entry>,
}

impl Ledger {
    /// Debits per IBAN.
    pub fn per_iban(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for d in &self.debits {
            *m.entry(d.iban.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// The simulator's books.
#[derive(Debug, Default)]
pub struct Book {
    entries: Vec<Entry>,
    returns: Vec<ReturnEntry>,
    // B-trees, not hash maps: a hash map rehashes every key at once when it grows, and with the
    // book's lock held that froze intake (64 ms at 114,688 debits), whose pent-up requests the
    // call log then counted as a burst the client never sent.
    by_tx: BTreeMap<String, usize>,
    by_unique: BTreeMap<String, usize>,
    seq: AtomicU64,
}

/// Distinguishes this sandbox's ids from an earlier run's: a gateway never gives two
/// transactions one `unique_id`, also across restarts of the simulator.
fn instance() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id())
    })
}

/// The `unique_id` of the `n`th transaction: 32 characters, unique per run.
fn sandbox_id(n: u64) -> String {
    format!("sbx{:013x}{n:016x}", instance() & 0x000f_ffff_ffff_ffff)
}

impl Book {
    fn settle(&mut self, i: usize) -> &Entry {
        let e = &mut self.entries[i];
        if let Some((at, to)) = e.settle
            && Instant::now() >= at
        {
            e.status = to.to_string();
            e.settle = None;
            e.changed_at = Utc::now();
        }
        &self.entries[i]
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RequestXml {
    transaction_type: Option<String>,
    transaction_id: Option<String>,
    unique_id: Option<String>,
    reference_id: Option<String>,
    amount: Option<String>,
    currency: Option<String>,
    iban: Option<String>,
    notification_url: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    import_date: Option<String>,
    page: Option<u32>,
    records_per_page: Option<u32>,
    per_page: Option<u32>,
}

/// What an amount asks the simulator to do (its last two digits in minor units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Approved at once.
    Approved,
    /// Declined, code 500, insufficient funds (AM04).
    DeclinedFunds,
    /// Declined by risk, code 696, IBAN blacklisted.
    DeclinedRisk,
    /// `pending_async`, approved `genesis_async_ms` later (seen by reconcile).
    AsyncApproved,
    /// Error code 330, nothing debited.
    Error,
    /// Accepted (debited), then no answer for `genesis_hang_ms`.
    AcceptedTimeout,
    /// Accepted, then the connection drops mid-answer.
    AcceptedDrop,
    /// Accepted, then HTTP 500.
    Accepted5xx,
    /// `pending_async`, declined later.
    AsyncDeclined,
}

impl Outcome {
    /// The outcome an amount asks for.
    pub fn of(amount_minor: i64) -> Self {
        match amount_minor.rem_euclid(100) {
            1 => Self::DeclinedFunds,
            2 => Self::DeclinedRisk,
            3 => Self::AsyncApproved,
            4 => Self::Error,
            5 => Self::AcceptedTimeout,
            6 => Self::AcceptedDrop,
            7 => Self::Accepted5xx,
            8 => Self::AsyncDeclined,
            _ => Self::Approved,
        }
    }
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/process/{token}/", post(process))
        .route("/process/{token}", post(process))
        .route("/reconcile/{token}/", post(reconcile))
        .route("/reconcile/{token}", post(reconcile))
        .route("/reconcile/by_date/{token}/", post(reconcile_by_date))
        .route("/reconcile/by_date/{token}", post(reconcile_by_date))
        .route("/chargebacks/by_date", post(chargebacks_by_date))
        .route("/chargebacks/by_date/", post(chargebacks_by_date))
        .route(
            "/retrieval_requests/by_date",
            post(retrieval_requests_by_date),
        )
        .route(
            "/retrieval_requests/by_date/",
            post(retrieval_requests_by_date),
        )
        .route("/_sandbox/genesis/transactions", post(inject))
        .route("/_sandbox/ledger", get(ledger).delete(clear_ledger))
        .route("/_sandbox/genesis/events", post(super::notify::raise))
        .route("/_sandbox/notifications", get(super::notify::list))
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn answer(e: &Entry, code: Option<i32>, message: Option<&str>) -> String {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<payment_response><transaction_type>{}</transaction_type>\
         <status>{}</status><unique_id>{}</unique_id><transaction_id>{}</transaction_id>\
         <amount>{}</amount><currency>{}</currency><timestamp>{}</timestamp><mode>test</mode>",
        esc(&e.transaction_type),
        esc(&e.status),
        esc(&e.unique_id),
        esc(&e.transaction_id),
        e.amount_minor,
        esc(&e.currency),
        e.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
    );
    if let Some(c) = code {
        s.push_str(&format!("<code>{c}</code>"));
    }
    if let Some(m) = message {
        s.push_str(&format!(
            "<message>{}</message><technical_message>{}</technical_message>",
            esc(m),
            esc(m)
        ));
    }
    s.push_str("</payment_response>");
    s
}

fn error_answer(code: i32, message: &str, transaction_id: Option<&str>) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<payment_response><status>error</status>{}<code>{code}</code>\
         <message>{}</message><technical_message>{}</technical_message></payment_response>",
        transaction_id
            .map(|t| format!("<transaction_id>{}</transaction_id>", esc(t)))
            .unwrap_or_default(),
        esc(message),
        esc(message)
    )
}

/// Basic auth present, and right when `genesis_password` is set.
fn authorised(s: &Sandbox, headers: &HeaderMap) -> bool {
    login(s, headers).is_some()
}

/// The Basic-auth user, when the credentials are acceptable.
fn login(s: &Sandbox, headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (user, pw) = raw.split_once(':').unwrap_or((raw.as_str(), ""));
    match s.knobs().genesis_password {
        Some(p) if pw != p => None,
        _ => Some(user.to_string()),
    }
}

fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"Genesis\"")],
        "401 Unauthorized",
    )
        .into_response()
}

async fn process(
    State(s): State<Sandbox>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/process/{token}/");
    let Some(username) = login(&s, &headers) else {
        s.served(&path, 401, None);
        return unauthorised();
    };
    let Ok(req) = quick_xml::de::from_str::<RequestXml>(&String::from_utf8_lossy(&body)) else {
        s.served(&path, 200, None);
        return xml(
            StatusCode::OK,
            error_answer(350, "XML could not be parsed", None),
        );
    };
    if let Gate::Fail(r) = s.gate(&path, None, req.iban.as_deref()).await {
        return r;
    }
    let k = s.knobs();
    let Some(tx_id) = req
        .transaction_id
        .clone()
        .filter(|t| !t.is_empty() && t.len() <= 255)
    else {
        s.served(&path, 200, req.iban.as_deref());
        return xml(
            StatusCode::OK,
            error_answer(320, "transaction_id is missing", None),
        );
    };
    let kind = req.transaction_type.clone().unwrap_or_default();
    if kind == "void" {
        return void(&s, &path, &tx_id, req.reference_id.as_deref(), &token);
    }
    if kind != "sdd_sale" {
        s.served(&path, 200, None);
        return xml(
            StatusCode::OK,
            error_answer(310, "invalid transaction type", Some(&tx_id)),
        );
    }
    let (Some(amount), Some(iban)) = (
        req.amount
            .as_deref()
            .and_then(|a| a.trim().parse::<i64>().ok())
            .filter(|a| *a > 0),
        req.iban.clone().filter(|i| i.len() >= 15),
    ) else {
        s.served(&path, 200, req.iban.as_deref());
        return xml(
            StatusCode::OK,
            error_answer(
                330,
                "amount or iban missing or in the wrong format",
                Some(&tx_id),
            ),
        );
    };
    let outcome = Outcome::of(amount);
    let entry = {
        let mut book = s.genesis();
        if let Some(&i) = book.by_tx.get(&tx_id)
            && k.genesis_duplicates != "accept"
        {
            let first = book.entries[i].unique_id.clone();
            drop(book);
            s.served(&path, 200, Some(&iban));
            return xml(
                StatusCode::OK,
                error_answer(
                    450,
                    &format!("transaction doublet detected, transaction blocked (first: {first})"),
                    Some(&tx_id),
                ),
            );
        }
        if outcome == Outcome::Error {
            drop(book);
            s.served(&path, 200, Some(&iban));
            return xml(
                StatusCode::OK,
                error_answer(
                    330,
                    "argument in wrong format (sandbox outcome 04)",
                    Some(&tx_id),
                ),
            );
        }
        let n = book.seq.fetch_add(1, Ordering::SeqCst);
        let later = Instant::now() + Duration::from_millis(k.genesis_async_ms);
        let (status, settle) = match outcome {
            Outcome::DeclinedFunds | Outcome::DeclinedRisk => ("declined", None),
            Outcome::AsyncApproved => ("pending_async", Some((later, "approved"))),
            Outcome::AsyncDeclined => ("pending_async", Some((later, "declined"))),
            _ => ("approved", None),
        };
        let e = Entry {
            transaction_id: tx_id.clone(),
            unique_id: sandbox_id(n),
            transaction_type: "sdd_sale".into(),
            iban: iban.clone(),
            amount_minor: amount,
            currency: req.currency.clone().unwrap_or_else(|| "EUR".into()),
            terminal: token.clone(),
            status: status.into(),
            at_ms: s.elapsed_ms(),
            notification_url: req.notification_url.clone().filter(|u| !u.is_empty()),
            username,
            created_at: Utc::now(),
            changed_at: Utc::now(),
            settle,
        };
        if let (Some((_, to)), Some(url)) = (settle, e.notification_url.clone()) {
            // The asynchronous outcome is notified when it settles.
            let fields = super::notify::fields(&e, to);
            let s2 = s.clone();
            let after = Duration::from_millis(k.genesis_async_ms);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                super::notify::spawn(s2, url, fields, "sha256".into());
            });
        }
        let i = book.entries.len();
        book.by_tx.insert(tx_id.clone(), i);
        book.by_unique.insert(e.unique_id.clone(), i);
        book.entries.push(e.clone());
        e
    };
    match outcome {
        Outcome::DeclinedFunds => {
            s.served(&path, 200, Some(&iban));
            xml(
                StatusCode::OK,
                answer(&entry, Some(500), Some("insufficient funds (AM04)")),
            )
        }
        Outcome::DeclinedRisk => {
            s.served(&path, 200, Some(&iban));
            xml(
                StatusCode::OK,
                answer(&entry, Some(696), Some("IBAN blacklisted")),
            )
        }
        Outcome::AcceptedTimeout => {
            s.served(&path, 504, Some(&iban));
            tokio::time::sleep(Duration::from_millis(k.genesis_hang_ms)).await;
            xml(StatusCode::OK, answer(&entry, None, None))
        }
        Outcome::AcceptedDrop => {
            s.served(&path, 0, Some(&iban));
            // Headers go out, then the body fails: the client sees the connection cut mid-answer.
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("sandbox: connection dropped"))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/xml")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Outcome::Accepted5xx => {
            s.served(&path, 500, Some(&iban));
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
        _ => {
            s.served(&path, 200, Some(&iban));
            xml(StatusCode::OK, answer(&entry, None, None))
        }
    }
}

fn void(s: &Sandbox, path: &str, tx_id: &str, reference: Option<&str>, token: &str) -> Response {
    let mut book = s.genesis();
    let Some(&i) = reference.and_then(|r| book.by_unique.get(r)) else {
        drop(book);
        s.served(path, 200, None);
        return xml(
            StatusCode::OK,
            error_answer(410, "reference transaction not found", Some(tx_id)),
        );
    };
    let status = book.settle(i).status.clone();
    if !(status == "approved" || status == "pending_async") {
        drop(book);
        s.served(path, 200, None);
        return xml(
            StatusCode::OK,
            error_answer(
                400,
                &format!("workflow error: cannot void a {status} transaction"),
                Some(tx_id),
            ),
        );
    }
    book.entries[i].status = "voided".into();
    book.entries[i].settle = None;
    book.entries[i].changed_at = Utc::now();
    let n = book.seq.fetch_add(1, Ordering::SeqCst);
    let orig = book.entries[i].clone();
    drop(book);
    s.served(path, 200, Some(&orig.iban));
    let e = Entry {
        transaction_id: tx_id.to_string(),
        unique_id: sandbox_id(n),
        transaction_type: "void".into(),
        status: "approved".into(),
        terminal: token.to_string(),
        created_at: Utc::now(),
        changed_at: Utc::now(),
        ..orig
    };
    xml(StatusCode::OK, answer(&e, None, None))
}

async fn reconcile(
    State(s): State<Sandbox>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/reconcile/{token}/");
    if !authorised(&s, &headers) {
        s.served(&path, 401, None);
        return unauthorised();
    }
    let req =
        quick_xml::de::from_str::<RequestXml>(&String::from_utf8_lossy(&body)).unwrap_or_default();
    if let Gate::Fail(r) = s.gate(&path, None, None).await {
        return r;
    }
    let found = {
        let mut book = s.genesis();
        let i = req
            .transaction_id
            .as_deref()
            .and_then(|t| book.by_tx.get(t).copied())
            .or_else(|| {
                req.unique_id
                    .as_deref()
                    .and_then(|u| book.by_unique.get(u).copied())
            });
        i.map(|i| book.settle(i).clone())
    };
    s.served(&path, 200, None);
    match found {
        Some(e) => xml(StatusCode::OK, answer(&e, None, None)),
        None => xml(
            StatusCode::OK,
            error_answer(460, "transaction not found", req.transaction_id.as_deref()),
        ),
    }
}

/// A page of `items` (pages from 1) as `<root page per_page total_count pages_count>`.
fn page_xml(root: &str, items: &[String], page: u32, per_page: u32) -> String {
    let per = per_page.max(1) as usize;
    let total = items.len();
    let pages = total.div_ceil(per);
    let start = (page.max(1) as usize - 1).saturating_mul(per);
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root} page=\"{page}\" per_page=\"{per}\" total_count=\"{total}\" pages_count=\"{pages}\">"
    );
    for i in items.iter().skip(start).take(per) {
        out.push_str(i);
    }
    out.push_str(&format!("</{root}>"));
    out
}

/// `POST /reconcile/by_date/<token>/`: the terminal's transactions taken or changed within
/// `start_date..=end_date` (UTC), oldest first, `records_per_page` (1–999, default 100).
async fn reconcile_by_date(
    State(s): State<Sandbox>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/reconcile/by_date/{token}/");
    if !authorised(&s, &headers) {
        s.served(&path, 401, None);
        return unauthorised();
    }
    if let Gate::Fail(r) = s.gate(&path, None, None).await {
        return r;
    }
    s.served(&path, 200, None);
    let req =
        quick_xml::de::from_str::<RequestXml>(&String::from_utf8_lossy(&body)).unwrap_or_default();
    let Some(from) = crate::gateway::genesis::parse_date(req.start_date.as_deref()) else {
        return xml(
            StatusCode::OK,
            error_answer(340, "start_date has an invalid format", None),
        );
    };
    let to = crate::gateway::genesis::parse_date(req.end_date.as_deref())
        .unwrap_or_else(|| Utc::now().date_naive());
    let per_page = req.records_per_page.unwrap_or(100);
    if !(1..=999).contains(&per_page) {
        return xml(
            StatusCode::OK,
            error_answer(340, "records_per_page must be 1-999", None),
        );
    }
    let items: Vec<String> = {
        let mut book = s.genesis();
        let n = book.entries.len();
        (0..n)
            .filter_map(|i| {
                let e = book.settle(i);
                let within = |d: DateTime<Utc>| (from..=to).contains(&d.date_naive());
                (e.terminal == token && (within(e.created_at) || within(e.changed_at))).then(|| {
                    answer(e, None, None)
                        .replace("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", "")
                })
            })
            .collect()
    };
    xml(
        StatusCode::OK,
        page_xml("payment_responses", &items, req.page.unwrap_or(1), per_page),
    )
}

async fn chargebacks_by_date(
    State(s): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    returns_by_date(s, headers, body, "chargeback").await
}

async fn retrieval_requests_by_date(
    State(s): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    returns_by_date(s, headers, body, "retrieval_request").await
}

/// Chargebacks / retrieval requests of the caller's login imported on `import_date` (or
/// posted within `start_date..=end_date`), `per_page` default 100.
async fn returns_by_date(s: Sandbox, headers: HeaderMap, body: Bytes, kind: &str) -> Response {
    let path = format!("/{kind}s/by_date");
    let Some(user) = login(&s, &headers) else {
        s.served(&path, 401, None);
        return unauthorised();
    };
    if let Gate::Fail(r) = s.gate(&path, None, None).await {
        return r;
    }
    s.served(&path, 200, None);
    let req =
        quick_xml::de::from_str::<RequestXml>(&String::from_utf8_lossy(&body)).unwrap_or_default();
    let import = crate::gateway::genesis::parse_date(req.import_date.as_deref());
    let range = crate::gateway::genesis::parse_date(req.start_date.as_deref()).map(|f| {
        (
            f,
            crate::gateway::genesis::parse_date(req.end_date.as_deref()).unwrap_or(f),
        )
    });
    if import.is_some() == range.is_some() {
        return xml(
            StatusCode::OK,
            error_answer(
                340,
                "give import_date or start_date/end_date, not both",
                None,
            ),
        );
    }
    let items: Vec<String> = s
        .genesis()
        .returns
        .iter()
        .filter(|r| r.kind == kind && r.username == user)
        .filter(|r| match (import, range) {
            (Some(d), _) => r.import_date == d,
            (None, Some((f, t))) => (f..=t).contains(&r.post_date),
            _ => false,
        })
        .map(|r| {
            format!(
                "<{kind}_response><type>{}</type><unique_id>{}</unique_id><arn>{}</arn>\
                 <post_date>{}</post_date><import_date>{}</import_date>{}\
                 <amount>{}</amount><currency>{}</currency><transaction_type>sdd_sale</transaction_type>\
                 <original_transaction_unique_id>{}</original_transaction_unique_id></{kind}_response>",
                esc(&r.r#type),
                esc(&r.unique_id),
                esc(&format!("arn{}", r.unique_id)),
                r.post_date,
                r.import_date,
                r.reason_code
                    .as_deref()
                    .map(|c| format!(
                        "<reason_code>{}</reason_code><reason_description>sandbox {kind}</reason_description>",
                        esc(c)
                    ))
                    .unwrap_or_default(),
                r.amount_minor,
                esc(&r.currency),
                esc(&r.original_unique_id),
            )
        })
        .collect();
    xml(
        StatusCode::OK,
        page_xml(
            &format!("{kind}_responses"),
            &items,
            req.page.unwrap_or(1),
            req.per_page.unwrap_or(100),
        ),
    )
}

/// `POST /_sandbox/genesis/transactions`: a transaction someone else made through a terminal
/// (the ledger sync must report it as missing locally).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    /// Its transaction_id.
    pub transaction_id: String,
    /// Terminal token.
    pub terminal: String,
    /// Merchant login.
    #[serde(default)]
    pub username: String,
    /// Minor units.
    pub amount_minor: i64,
    /// Status (default approved).
    #[serde(default)]
    pub status: Option<String>,
    /// IBAN (sandbox data).
    #[serde(default)]
    pub iban: Option<String>,
}

async fn inject(State(s): State<Sandbox>, Json(r): Json<InjectRequest>) -> Json<Entry> {
    let mut book = s.genesis();
    let n = book.seq.fetch_add(1, Ordering::SeqCst);
    let e = Entry {
        transaction_id: r.transaction_id.clone(),
        unique_id: sandbox_id(n),
        transaction_type: "sdd_sale".into(),
        iban: r.iban.unwrap_or_default(),
        amount_minor: r.amount_minor,
        currency: "EUR".into(),
        terminal: r.terminal,
        status: r.status.unwrap_or_else(|| "approved".into()),
        at_ms: s.elapsed_ms(),
        notification_url: None,
        username: r.username,
        created_at: Utc::now(),
        changed_at: Utc::now(),
        settle: None,
    };
    let i = book.entries.len();
    book.by_tx.insert(e.transaction_id.clone(), i);
    book.by_unique.insert(e.unique_id.clone(), i);
    book.entries.push(e.clone());
    Json(e)
}

async fn ledger(State(s): State<Sandbox>) -> Json<Ledger> {
    Json(s.ledger())
}

async fn clear_ledger(State(s): State<Sandbox>) -> StatusCode {
    let mut book = s.genesis();
    // The gateway forgets its transactions, never reuses an id.
    let seq = book.seq.load(Ordering::SeqCst);
    *book = Book::default();
    book.seq.store(seq, Ordering::SeqCst);
    drop(book);
    StatusCode::NO_CONTENT
}

impl Sandbox {
    /// Applies a raised event to the transaction it names (a chargeback of an approved debit
    /// makes it `chargebacked`) and returns the transaction as it now is.
    pub(super) fn genesis_event(&self, r: &super::notify::EventRequest) -> Option<Entry> {
        let mut book = self.genesis();
        let i = r
            .transaction_id
            .as_deref()
            .and_then(|t| book.by_tx.get(t).copied())
            .or_else(|| {
                r.unique_id
                    .as_deref()
                    .and_then(|u| book.by_unique.get(u).copied())
            })?;
        book.settle(i);
        let today = Utc::now().date_naive();
        let e = &mut book.entries[i];
        match r.event.as_str() {
            "chargeback" if e.status == "approved" => {
                e.status = "chargebacked".into();
                e.changed_at = Utc::now();
            }
            "status" => {
                if let Some(to) = &r.status {
                    e.status = to.clone();
                    e.settle = None;
                    e.changed_at = Utc::now();
                }
            }
            _ => {}
        }
        let e = e.clone();
        if matches!(r.event.as_str(), "chargeback" | "retrieval_request") {
            let n = book.seq.fetch_add(1, Ordering::SeqCst);
            let import_date = r.import_date.unwrap_or(today);
            book.returns.push(ReturnEntry {
                kind: r.event.clone(),
                unique_id: sandbox_id(n),
                original_unique_id: e.unique_id.clone(),
                transaction_id: e.transaction_id.clone(),
                r#type: if r.event == "chargeback" {
                    "1st chargeback".into()
                } else {
                    "retrieval request".into()
                },
                reason_code: r.reason_code.clone(),
                amount_minor: e.amount_minor,
                currency: e.currency.clone(),
                post_date: import_date.pred_opt().unwrap_or(import_date),
                import_date,
                username: e.username.clone(),
            });
        }
        Some(e)
    }

    fn genesis(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0.genesis.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every debit accepted so far (settled to their current status).
    pub fn ledger(&self) -> Ledger {
        let mut book = self.genesis();
        let n = book.entries.len();
        let debits = (0..n)
            .map(|i| book.settle(i).clone())
            .filter(|e| e.transaction_type == "sdd_sale" && e.status != "declined")
            .collect();
        Ledger { debits }
    }
}
