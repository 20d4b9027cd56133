//! The dashboard's HTML (maud escapes every value: payloads and errors are shown as text).

use maud::{DOCTYPE, Markup, html};

use super::{DepthHistory, charts};
use crate::{billing::run::RunRow, context::AppContext, money::format_minor, ops};

/// Everything one page shows, read before rendering.
pub struct Data {
    overview: ops::Overview,
    throughput: Vec<(String, Vec<i64>)>,
    depth: Vec<(String, Vec<i64>)>,
    dead: Vec<crate::queue::dead_letter::DeadJob>,
    recent: Vec<ops::JobRun>,
    uploads: Vec<crate::uploads::UploadView>,
    runs: Vec<(RunRow, serde_json::Value)>,
    guards: Vec<ops::GuardView>,
    deliveries: Vec<ops::DeliveryCount>,
    reports: Vec<ops::ReportView>,
}

impl Data {
    /// Reads the page's data; the depth chart is what the sampler recorded.
    pub async fn load(ctx: &AppContext, history: &DepthHistory) -> Result<Self, ops::OpsError> {
        let overview = ops::queues(ctx).await?;
        let depth = overview
            .queues
            .iter()
            .map(|q| (q.name.clone(), history.series(&q.name)))
            .collect();
        let mut runs = Vec::new();
        for r in ops::runs(ctx, 10).await? {
            // Counted now, also for a finished run: its debits go on settling (async
            // approvals, chargebacks) after it completes.
            let totals = ops::run_totals(ctx, r.id).await?;
            runs.push((r, totals));
        }
        Ok(Self {
            throughput: ops::throughput(ctx, 60).await?,
            depth,
            dead: ops::failed_jobs(ctx, None, 50).await?,
            recent: ops::recent_jobs(ctx, None, true, 20).await?,
            uploads: ops::uploads(ctx, 10).await?,
            runs,
            guards: ops::guards(ctx).await?,
            deliveries: ops::delivery_counts(ctx, 24).await?,
            reports: ops::reports(ctx, 15).await?,
            overview,
        })
    }
}

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2329;background:#f5f6f8}
header{background:#1d2329;color:#fff;padding:.6rem 1.2rem;display:flex;justify-content:space-between;align-items:center}
header h1{font-size:1.1rem;margin:0} header form{margin:0}
main{padding:1rem 1.2rem;display:grid;gap:1rem}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.8rem 1rem;overflow-x:auto}
h2{font-size:1rem;margin:.1rem 0 .6rem}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eef0f2;vertical-align:middle}
th{font-weight:600;color:#57606a;font-size:.85rem} td.n{text-align:right;font-variant-numeric:tabular-nums}
.chart rect{fill:#3b82f6} .chart .axis{stroke:#c9ced6}
.progress{position:relative;background:#eef0f2;border-radius:4px;height:1.2rem;min-width:12rem}
.progress .fill{background:#22c55e;height:100%;border-radius:4px}
.progress span{position:absolute;left:.4rem;top:0;font-size:.8rem}
.badge{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:.8rem;background:#eef0f2}
.bad{background:#fde2e1;color:#8c1d18} .good{background:#dcfce7;color:#14532d} .warn{background:#fef3c7;color:#713f12}
.flash{padding:.5rem .8rem;border-radius:4px} .flash.ok{background:#dcfce7} .flash.err{background:#fde2e1}
button{font:inherit;padding:.1rem .6rem;cursor:pointer} form.inline{display:inline;margin:0}
code{font-size:.85rem;word-break:break-all} .muted{color:#6b7280}
"#;

fn shell(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="10"; }
                title { (title) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

/// The sign-in form.
pub fn login(configured: bool, wrong: bool) -> Markup {
    shell(
        "finworker — sign in",
        false,
        html! {
            header { h1 { "finworker" } }
            main {
                section {
                    h2 { "Sign in" }
                    @if !configured {
                        p class="flash err" { "The dashboard is off: set FINWORKER__HTTP__OPS_TOKEN and restart." }
                    } @else {
                        @if wrong { p class="flash err" id="login-error" { "That is not the ops token." } }
                        form method="post" action="/dashboard/login" {
                            label { "Ops token " input type="password" name="token" id="token" autocomplete="current-password" required; }
                            " " button type="submit" id="sign-in" { "Sign in" }
                        }
                    }
                }
            }
        },
    )
}

/// Shown when Postgres or Redis cannot be read.
pub fn unavailable() -> Markup {
    shell(
        "finworker — unavailable",
        true,
        html! { main { section { h2 { "Unavailable" } p { "Postgres or Redis cannot be read right now; this page retries every 10 s. The log has the cause." } } } },
    )
}

fn button(action: &str, label: &str, id: &str) -> Markup {
    html! {
        form class="inline" method="post" action=(action) {
            button type="submit" id=(id) { (label) }
        }
    }
}

fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn status_badge(s: &str) -> Markup {
    let class = match s {
        "completed" | "succeeded" | "ready" | "closed" | "processed" | "accepted" => "badge good",
        "failed" | "dead" | "cancelled" | "open" | "rejected" | "malformed" => "badge bad",
        "paused" | "half_open" | "interrupted" | "pending" | "unmatched" => "badge warn",
        _ => "badge",
    };
    html! { span class=(class) { (s) } }
}

fn amount(totals: &serde_json::Value, group: &str, key: &str) -> (i64, i64) {
    let v = &totals[group][key];
    (
        v["count"].as_i64().unwrap_or(0),
        v["amount_minor"].as_i64().unwrap_or(0),
    )
}

/// The dashboard.
pub fn dashboard(d: &Data, ok: Option<&str>, err: Option<&str>) -> Markup {
    shell(
        "finworker — dashboard",
        true,
        html! {
            header {
                h1 { "finworker" }
                span class="muted" { (d.overview.workers.len()) " worker process(es) live" }
                form method="post" action="/dashboard/logout" { button type="submit" { "Sign out" } }
            }
            main {
                @if let Some(m) = ok { p class="flash ok" id="flash" { (m) } }
                @if let Some(m) = err { p class="flash err" id="flash" { (m) } }
                (queues(d))
                (failed(d))
                (uploads(d))
                (runs(d))
                (guards(d))
                (deliveries(d))
                (reports(d))
            }
        },
    )
}

fn queues(d: &Data) -> Markup {
    html! {
        section id="queues" {
            h2 { "Queues" }
            table {
                thead { tr {
                    th { "queue" } th { "waiting" } th { "scheduled" } th { "running" } th { "failed" }
                    th { "done 1 min" } th { "done 1 h" } th { "oldest waiting" }
                    th { "throughput, last 60 min" } th { "depth, last hour" } th {}
                } }
                tbody {
                    @for q in &d.overview.queues {
                        tr id={"queue-" (q.name)} {
                            td { code { (q.name) } @if let Some(p) = &q.paused { " " span class="badge warn" title=(p.reason.clone().unwrap_or_default()) { "paused by " (p.paused_by) } } }
                            td class="n" { (q.waiting) } td class="n" { (q.scheduled) } td class="n" { (q.running) }
                            td class="n" { @if q.failed > 0 { span class="badge bad" { (q.failed) } } @else { "0" } }
                            td class="n" { (q.finished_last_minute) } td class="n" { (q.finished_last_hour) }
                            td class="n" { (q.oldest_waiting_seconds.map_or("-".to_string(), |s| humantime::format_duration(std::time::Duration::from_secs(s as u64)).to_string())) }
                            td { @if let Some((_, s)) = d.throughput.iter().find(|(n, _)| *n == q.name) { (charts::bars(s, 180, 28, "jobs finished per minute")) } }
                            td { @if let Some((_, s)) = d.depth.iter().find(|(n, _)| *n == q.name) { (charts::bars(s, 120, 28, "jobs queued")) } }
                            td {
                                @if q.paused.is_some() {
                                    (button(&format!("/dashboard/queues/{}/resume", q.name), "Resume", &format!("resume-queue-{}", q.name)))
                                } @else {
                                    (button(&format!("/dashboard/queues/{}/pause", q.name), "Pause", &format!("pause-queue-{}", q.name)))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn failed(d: &Data) -> Markup {
    html! {
        section id="failed" {
            h2 { "Failed jobs (dead letter)" }
            @if d.dead.is_empty() { p class="muted" { "None." } }
            @else {
                table {
                    thead { tr { th { "job" } th { "queue" } th { "attempts" } th { "failed at" } th { "last error" } th {} } }
                    tbody {
                        @for j in &d.dead {
                            tr id={"dead-" (j.job_id)} {
                                td { code { (j.job_id) } } td { (j.job_type) } td class="n" { (j.attempts) }
                                td { (when(j.failed_at)) } td { (j.last_error) }
                                td { (button(&format!("/dashboard/jobs/{}/retry", j.job_id), "Retry", &format!("retry-{}", j.job_id))) }
                            }
                        }
                    }
                }
            }
            h2 { "Recent failed attempts" }
            @if d.recent.is_empty() { p class="muted" { "None." } }
            @else {
                table {
                    thead { tr { th { "job" } th { "type" } th { "attempt" } th { "status" } th { "started" } th { "error" } } }
                    tbody {
                        @for r in &d.recent {
                            tr { td { code { (r.job_id) } } td { (r.job_type) } td class="n" { (r.attempt) } td { (status_badge(&r.status)) }
                                 td { (when(r.started_at)) } td { (r.error.clone().unwrap_or_default()) } }
                        }
                    }
                }
            }
        }
    }
}

fn uploads(d: &Data) -> Markup {
    html! {
        section id="uploads" {
            h2 { "Uploads" }
            @if d.uploads.is_empty() { p class="muted" { "None yet." } }
            @else {
                table {
                    thead { tr { th { "file" } th { "status" } th { "import" } th { "validation" } th { "VOP/BAV" } th { "rows" } th { "created" } } }
                    tbody {
                        @for u in &d.uploads {
                            @let r = &u.record;
                            @let total = i64::from(r.chunks_total.unwrap_or(0));
                            tr id={"upload-" (r.id)} {
                                td { (r.file_name) br; code class="muted" { (r.id) } }
                                td { (status_badge(&r.status)) @if let Some(e) = &r.error { br; span class="muted" { (e) } } }
                                td { (charts::progress(i64::from(r.chunks_done), u.progress.chunks_total.unwrap_or(0), "import")) }
                                td { (charts::progress(i64::from(r.chunks_validated), total, "validation")) }
                                td { (charts::progress(i64::from(r.chunks_verified), total, "verification")) }
                                td class="n" { (r.rows_imported) " imported, " (r.rows_duplicate) " dup, " (r.rows_rejected) " rejected" br;
                                    (r.rows_valid) " valid, " (r.rows_invalid) " invalid" }
                                td { (when(r.created_at)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn runs(d: &Data) -> Markup {
    html! {
        section id="runs" {
            h2 { "Billing runs" }
            @if d.runs.is_empty() { p class="muted" { "None yet." } }
            @else {
                table {
                    thead { tr { th { "run" } th { "account / model" } th { "status" } th { "progress" } th { "approved" } th { "pending" } th { "declined / error" } th { "excluded" } th {} } }
                    tbody {
                        @for (r, t) in &d.runs {
                            @let items = t["items"].as_i64().unwrap_or(i64::from(r.items_total));
                            @let queued = amount(t, "by_state", "queued").0;
                            @let (ap_n, ap_a) = amount(t, "attempts_by_status", "approved");
                            @let pending = ["submitted", "unknown", "pending", "pending_async"].iter().map(|s| amount(t, "attempts_by_status", s)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                            @let failed = ["declined", "error"].iter().map(|s| amount(t, "attempts_by_status", s)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                            @let (ex_n, ex_a) = amount(t, "by_state", "excluded");
                            tr id={"run-" (r.id)} {
                                td { code { (r.id) } @if r.dry_run { " " span class="badge" { "dry run" } } }
                                td { (r.account) " / " (r.model) }
                                td { span id={"run-status-" (r.id)} { (status_badge(&r.status)) } @if let Some(p) = &r.pause_reason { br; span class="muted" { (p) } } }
                                td { (charts::progress(items - queued, items, "debtors decided")) }
                                td class="n" { (ap_n) br; (format_minor(ap_a)) }
                                td class="n" { (pending.0) br; (format_minor(pending.1)) }
                                td class="n" { (failed.0) br; (format_minor(failed.1)) }
                                td class="n" { (ex_n) br; (format_minor(ex_a)) }
                                td {
                                    @match r.status.as_str() {
                                        "running" | "pending" => {
                                            (button(&format!("/dashboard/runs/{}/pause", r.id), "Pause", &format!("pause-run-{}", r.id)))
                                            " " (button(&format!("/dashboard/runs/{}/cancel", r.id), "Cancel", &format!("cancel-run-{}", r.id)))
                                        }
                                        "paused" => {
                                            (button(&format!("/dashboard/runs/{}/resume", r.id), "Resume", &format!("resume-run-{}", r.id)))
                                            " " (button(&format!("/dashboard/runs/{}/cancel", r.id), "Cancel", &format!("cancel-run-{}", r.id)))
                                        }
                                        _ => {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn guards(d: &Data) -> Markup {
    html! {
        section id="guards" {
            h2 { "Providers: breakers and rate limits" }
            table {
                thead { tr { th { "provider" } th { "account" } th { "calls" } th { "breaker" } th { "rate limit" } th { "hold" } } }
                tbody {
                    @for g in &d.guards {
                        tr id={"guard-" (g.account)} {
                            td { (g.provider) } td { (g.account) } td { (g.kind) }
                            td { (status_badge(g.breaker)) @if let Some(s) = g.open_for_seconds { " " span class="muted" { (format!("{s:.0} s left")) } } }
                            td class="n" { (g.rate_limit) " req/s" }
                            td { @if let Some(h) = &g.hold_reason {
                                span class="badge bad" { "held" } " " (h) " "
                                (button(&format!("/dashboard/accounts/{}/release", g.account), "Release", &format!("release-{}", g.account)))
                            } }
                        }
                    }
                }
            }
        }
    }
}

fn deliveries(d: &Data) -> Markup {
    html! {
        section id="webhooks" {
            h2 { "Webhook deliveries, last 24 h" }
            @if d.deliveries.is_empty() { p class="muted" { "None." } }
            @else {
                table {
                    thead { tr { th { "verdict" } th { "state" } th { "deliveries" } } }
                    tbody { @for c in &d.deliveries { tr { td { (status_badge(&c.verdict)) } td { (status_badge(&c.state)) } td class="n" { (c.count) } } } }
                }
            }
        }
    }
}

fn reports(d: &Data) -> Markup {
    html! {
        section id="reports" {
            h2 { "Reports" }
            @if d.reports.is_empty() { p class="muted" { "None yet." } }
            @else {
                table {
                    thead { tr { th { "report" } th { "format" } th { "status" } th { "rows" } th { "created" } th {} } }
                    tbody {
                        @for r in &d.reports {
                            tr { td { (r.report.kind) br; code class="muted" { (r.report.id) } } td { (r.report.format) } td { (status_badge(&r.report.status)) }
                                 td class="n" { (r.report.rows.map_or("-".into(), |n| n.to_string())) } td { (when(r.report.created_at)) }
                                 td { @if let Some(u) = &r.download_url { a href=(u) { "Download" } } } }
                        }
                    }
                }
            }
        }
    }
}
