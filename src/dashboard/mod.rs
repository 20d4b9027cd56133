//! The dashboard at `/dashboard`: one server-rendered page (no script, no separate service)
//! over what [`crate::ops`] reads, with the buttons ops need — retry a dead job, pause or
//! resume a queue, pause, resume or cancel a billing run, release a held account.
//!
//! - Sign-in: the ops token (`http.ops_token`) typed once into a form sets an HttpOnly,
//!   `SameSite=Strict` cookie holding an HMAC of the token (not the token): rotating the token
//!   signs everyone out. `Authorization: Bearer <ops token>` works too (for curl).
//! - Buttons are plain form posts answered with a redirect back to the page (post/redirect/
//!   get). The strict cookie and an `Origin` check keep other sites from pressing them.
//! - The page reloads itself every 10 s; queue depth is sampled every 15 s by a task that
//!   lives as long as the router, for the depth chart.

mod charts;
mod page;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use axum::{
    Form, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::{context::AppContext, ops};

const COOKIE: &str = "finworker_dashboard";
/// Depth samples kept: an hour at one per 15 s.
const SAMPLES: usize = 240;
const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// Jobs queued (waiting, scheduled and running) per queue at one moment.
type Sample = (DateTime<Utc>, Vec<(String, u64)>);

/// Queue depths over time, per process, for the depth chart.
#[derive(Debug, Default)]
pub struct DepthHistory {
    samples: Mutex<VecDeque<Sample>>,
}

impl DepthHistory {
    fn record(&self, overview: &ops::Overview) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == SAMPLES {
            s.pop_front();
        }
        s.push_back((
            Utc::now(),
            overview
                .queues
                .iter()
                .map(|q| (q.name.clone(), q.waiting + q.scheduled + q.running))
                .collect(),
        ));
    }

    fn series(&self, queue: &str) -> Vec<i64> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.iter()
            .map(|(_, qs)| {
                qs.iter()
                    .find(|(q, _)| q == queue)
                    .map_or(0, |(_, n)| *n as i64)
            })
            .collect()
    }
}

/// Samples queue depth until the router (the last strong reference) is dropped.
fn start_sampler(ctx: &AppContext, history: &Arc<DepthHistory>) {
    let (ctx, weak): (AppContext, Weak<DepthHistory>) = (ctx.clone(), Arc::downgrade(history));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SAMPLE_EVERY).await;
            let Some(h) = weak.upgrade() else { break };
            if let Ok(o) = ops::queues(&ctx).await {
                h.record(&o);
            }
        }
    });
}

#[derive(Clone)]
struct Dash {
    ctx: AppContext,
    history: Arc<DepthHistory>,
}

/// The dashboard's routes.
pub fn router(ctx: &AppContext) -> Router<AppContext> {
    let history = Arc::new(DepthHistory::default());
    start_sampler(ctx, &history);
    let dash = Dash {
        ctx: ctx.clone(),
        history,
    };
    Router::new()
        .route("/dashboard", get(show))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/jobs/{id}/retry", post(retry_job))
        .route("/dashboard/queues/{queue}/{action}", post(queue_action))
        .route("/dashboard/runs/{id}/{action}", post(run_action))
        .route("/dashboard/accounts/{name}/release", post(release))
        .with_state(dash)
}

/// The cookie value: an HMAC of the token, so the cookie is not the token.
fn session_value(token: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(b"finworker dashboard session v1");
    hex::encode(mac.finalize().into_bytes())
}

fn cookie_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Signed in: the session cookie, or the ops token as a bearer token.
fn signed_in(ctx: &AppContext, headers: &HeaderMap) -> bool {
    let Some(token) = ctx.settings.http.ops_token.as_ref() else {
        return false;
    };
    if crate::http::ops::authorize_ops(ctx, headers).is_ok() {
        return true;
    }
    cookie_of(headers, COOKIE).is_some_and(|c| {
        bool::from(
            c.as_bytes()
                .ct_eq(session_value(token.expose_secret()).as_bytes()),
        )
    })
}

/// A button press must come from this page: same-site cookie, and an `Origin` (sent by
/// browsers on form posts) naming this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    origin_host.is_some() && origin_host == host
}

fn refuse_post(d: &Dash, headers: &HeaderMap) -> Option<Response> {
    if !signed_in(&d.ctx, headers) {
        return Some(Redirect::to("/dashboard").into_response());
    }
    if !same_origin(headers) {
        return Some((StatusCode::FORBIDDEN, "cross-site request refused").into_response());
    }
    None
}

#[derive(Debug, Deserialize)]
struct Flash {
    ok: Option<String>,
    err: Option<String>,
}

fn back(result: Result<String, String>) -> Response {
    let q = match result {
        Ok(m) => format!("ok={}", urlencode(&m)),
        Err(m) => format!("err={}", urlencode(&m)),
    };
    Redirect::to(&format!("/dashboard?{q}")).into_response()
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    r.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
}

async fn show(State(d): State<Dash>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    if !signed_in(&d.ctx, &headers) {
        let configured = d.ctx.settings.http.ops_token.is_some();
        return no_store(Html(page::login(configured, false).into_string()).into_response());
    }
    match page::Data::load(&d.ctx, &d.history).await {
        Ok(data) => no_store(
            Html(page::dashboard(&data, flash.ok.as_deref(), flash.err.as_deref()).into_string())
                .into_response(),
        ),
        Err(e) => {
            tracing::error!(error.chain = ?e, "dashboard could not be read");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Html(page::unavailable().into_string()),
            )
                .into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(d): State<Dash>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    let Some(token) = d.ctx.settings.http.ops_token.as_ref() else {
        return no_store(Html(page::login(false, false).into_string()).into_response());
    };
    if !bool::from(f.token.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
        tracing::warn!("dashboard sign-in with a wrong token");
        return no_store(
            (
                StatusCode::UNAUTHORIZED,
                Html(page::login(true, true).into_string()),
            )
                .into_response(),
        );
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=43200",
        session_value(token.expose_secret())
    );
    let mut r = Redirect::to("/dashboard").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout() -> Response {
    let mut r = Redirect::to("/dashboard").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "finworker_dashboard=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

async fn retry_job(State(d): State<Dash>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refuse_post(&d, &headers) {
        return r;
    }
    back(
        ops::retry_job(&d.ctx, &id)
            .await
            .map(|q| format!("job {id} re-queued on {q}"))
            .map_err(|e| e.to_string()),
    )
}

async fn queue_action(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((queue, action)): Path<(String, String)>,
) -> Response {
    if let Some(r) = refuse_post(&d, &headers) {
        return r;
    }
    let done = match action.as_str() {
        "pause" => ops::pause_queue(&d.ctx, &queue, "dashboard", None)
            .await
            .map(|_| format!("queue {queue} paused")),
        "resume" => ops::resume_queue(&d.ctx, &queue)
            .await
            .map(|_| format!("queue {queue} resumed")),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    back(done.map_err(|e| e.to_string()))
}

async fn run_action(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    if let Some(r) = refuse_post(&d, &headers) {
        return r;
    }
    if !matches!(action.as_str(), "pause" | "resume" | "cancel") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Ok(run) = uuid::Uuid::parse_str(&id) else {
        return back(Err(format!("`{id}` is not a run id")));
    };
    back(
        ops::run_control(&d.ctx, run, &action)
            .await
            .map(|r| format!("run {run}: {}", r.status))
            .map_err(|e| e.to_string()),
    )
}

async fn release(State(d): State<Dash>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Some(r) = refuse_post(&d, &headers) {
        return r;
    }
    back(
        ops::release_account(&d.ctx, &name)
            .await
            .map(|released| {
                if released {
                    format!("account {name} released")
                } else {
                    format!("account {name} was not held")
                }
            })
            .map_err(|e| e.to_string()),
    )
}
