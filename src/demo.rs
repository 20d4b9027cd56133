//! `finworker demo`: the whole pipeline on a database of its own (`finworker_demo`, made
//! afresh each run) against the in-process sandbox provider — jobs over the HTTP API and in
//! bulk, upload, validation, VOP/BAV, the VOP report, a billing run, gateway notifications, a
//! chargeback and a retrieval request, reconciliation and ledger sync — with progress bars and
//! a final summary table; then it keeps serving the dashboard until Ctrl-C (which drains).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{QueueOverrides, Settings},
    db,
    queue::engine::NewJob,
    startup::{App, Roles},
};

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// No-op jobs pushed in bulk.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Rows of the generated debtor file uploaded, validated and verified at the end.
    #[arg(long, default_value_t = 5_000)]
    pub debtors: u64,
    /// Requests/s to the sandbox VOP/BAV provider (it answers after 20 ms).
    #[arg(long, default_value_t = 1_000)]
    pub vop_rate: u32,
    /// Where the daemon listens (dashboard, API, webhooks); a busy port falls back to a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// The demo's database, dropped and made afresh on the same server at every run.
    #[arg(long, default_value = "finworker_demo")]
    pub database: String,
    /// Stop after the summary instead of serving the dashboard until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Write the daemon's metrics (Prometheus text) to this file after the summary.
    #[arg(long)]
    pub metrics_out: Option<std::path::PathBuf>,
}

/// One line of the final summary: stage, what came out, seconds.
type Row = (&'static str, String, f64);

/// The demo's database: `name` on the server of the configured one (pooled and direct URLs).
fn own_database(settings: &mut Settings, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "--database {name}: use letters, digits and _"
    );
    for url in [
        &mut settings.database.url,
        &mut settings.database.direct_url,
    ] {
        let mut u = reqwest::Url::parse(url).with_context(|| format!("database url {url}"))?;
        u.set_path(&format!("/{name}"));
        *url = u.to_string();
    }
    Ok(())
}

/// Drops and creates `name` through a direct connection to the configured database.
async fn fresh_database(settings: &Settings, name: &str) -> anyhow::Result<()> {
    use sqlx::Executor;
    let mut c = db::connect_direct(&settings.database.direct_url, settings.database_password())
        .await
        .context("connecting to Postgres; is it up? (scripts/setup.sh)")?;
    c.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    c.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    Ok(())
}

/// The address to listen on: `bind` when it is free, else a free port on loopback. Known
/// before the daemon starts, because the gateway needs the notification URL.
fn listen_addr(bind: &str) -> anyhow::Result<std::net::SocketAddr> {
    match std::net::TcpListener::bind(bind) {
        Ok(l) => Ok(l.local_addr()?),
        Err(e) => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let a = l.local_addr()?;
            println!("   ({bind} is not free: {e}; using {a})");
            Ok(a)
        }
    }
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("   {msg:<24} [{bar:36}] {pos}/{len}  {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

/// Runs the demo.
pub async fn run(mut settings: Settings, args: DemoArgs) -> anyhow::Result<()> {
    let demo_started = Instant::now();
    let mut summary: Vec<Row> = Vec::new(); // the final table
    println!(
        "1. a fresh database `{}` for the demo, migrated (direct connection)",
        args.database
    );
    fresh_database(&settings, &args.database).await?;
    own_database(&mut settings, &args.database)?;
    db::migrate(&settings.database, settings.database_password())
        .await
        .context("migrating; is Postgres up? (scripts/setup.sh)")?;
    // An isolated namespace and a free port, so the demo never touches a running daemon.
    settings.redis.prefix = format!(
        "{}:demo:{}",
        settings.redis.prefix,
        uuid::Uuid::new_v4().simple()
    );
    let listen = listen_addr(&args.bind)?;
    settings.http.bind = listen.to_string();
    settings.reports.public_url = format!("http://{listen}");
    settings.worker.allow_test_jobs = true;
    let token = uuid::Uuid::new_v4().simple().to_string();
    settings.http.api_token = Some(SecretString::from(token.clone()));
    let ops_token = format!("demo-ops-{}", uuid::Uuid::new_v4().simple());
    settings.http.ops_token = Some(SecretString::from(ops_token.clone()));
    // The gateway notifies the receiver of this daemon.
    settings.gateway.notification_url = format!("http://{listen}/api/webhooks/emp/{{account}}");
    settings.queues.insert(
        "test_job".into(),
        QueueOverrides {
            max_attempts: Some(3),
            backoff_base: Some(Duration::from_millis(200)),
            backoff_max: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    );
    // The sandbox provider, in-process on a free port: VOP/BAV answers after 20 ms.
    let sandbox_stop = CancellationToken::new();
    let (sandbox_addr, sandbox, _sandbox_task) = crate::sandbox::serve(
        "127.0.0.1:0",
        crate::sandbox::Knobs {
            latency_ms: 20,
            genesis_hang_ms: 4000,
            genesis_password: Some("demo-gateway-password".into()),
            ..Default::default()
        },
        sandbox_stop.clone(),
    )
    .await?;
    settings.vop.enabled = true;
    settings.vop.base_url = format!("http://{sandbox_addr}");
    settings.vop.rate_limit = args.vop_rate;
    settings.reports.after_vop = true;
    // A Genesis merchant account on the sandbox gateway, for the billing step.
    settings.gateway.accounts.insert(
        "demo".into(),
        crate::config::GatewayAccountSettings {
            gateway: "genesis".into(),
            endpoint: format!("http://{sandbox_addr}"),
            terminal_token: "demo-terminal".into(),
            username: "demo".into(),
            password: Some(SecretString::from("demo-gateway-password")),
            currency: "EUR".into(),
            rate_limit: 200,
            breaker_min_success_rate: 0.5,
            breaker_min_requests: 20,
            breaker_window: Duration::from_secs(10),
            breaker_open_for: Duration::from_secs(2),
            breaker_open_max: Duration::from_secs(10),
            monthly_cap_minor: None,
            enabled: true,
        },
    );
    settings.gateway.request_timeout = Duration::from_secs(2);
    // Debits left unknown by the sandbox's timeouts are looked up again soon, not in minutes.
    settings.gateway.resend_after = Duration::from_secs(3);
    settings.gateway.reconcile_interval = Duration::from_secs(1);
    settings.billing.recurring = false;
    // The demo runs reconciliation, ledger sync and the sweeps itself, once, in order.
    settings.lifecycle.reconcile_schedule.clear();
    settings.lifecycle.ledger_sync_schedule.clear();
    settings.lifecycle.sweep_schedule.clear();
    settings.lifecycle.bic_blacklist_schedule.clear();
    settings.retention.schedule.clear();
    let ephemeral_secret = settings.reports.link_secret.is_none();
    if ephemeral_secret {
        settings.reports.link_secret = Some(SecretString::from(
            uuid::Uuid::new_v4().simple().to_string(),
        ));
    }
    if settings.privacy.iban_key.is_none() {
        // A fixed development key: demo runs against one database keep comparable lookup
        // keys. Production sets its own secret (FINWORKER__PRIVACY__IBAN_KEY).
        println!(
            "   (IBAN lookups keyed with the demo's development key: set FINWORKER__PRIVACY__IBAN_KEY in production)"
        );
        settings.privacy.iban_key = Some(SecretString::from(
            "finworker-demo-development-iban-key-not-secret",
        ));
    }
    let app = App::build(settings, Roles::default()).await?;
    let ctx = app.ctx.clone();
    let addr = app.http_addr().context("http address")?;
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(app.run(shutdown.clone()));
    println!("2. daemon started: workers + http on http://{addr}");

    let client = HttpClient {
        addr,
        token,
        http: reqwest::Client::new(),
    };
    let mut ids = Vec::new();
    println!("3. enqueueing over HTTP (POST /api/jobs/{{job_type}}):");
    for (job_type, body, what) in [
        (
            "test_job",
            json!({"label": "flaky", "fail_times": 2}),
            "fails twice, then succeeds",
        ),
        (
            "test_job",
            json!({"label": "refused", "permanent": true}),
            "fails permanently -> dead letter",
        ),
        (
            "test_job",
            json!({"label": "slow", "sleep_ms": 1500}),
            "runs 1.5 s",
        ),
        (
            "test_job",
            json!({"label": "boom", "panic": true}),
            "panics every time -> dead letter after 3",
        ),
        ("noop", json!({"note": "hello"}), "does nothing"),
    ] {
        let (status, v) = client.post(job_type, &body, None).await?;
        println!(
            "   {status} {job_type:<8} {:<52} job_id={}",
            what,
            v["job_id"].as_str().unwrap_or("?")
        );
        ids.push(v["job_id"].as_str().unwrap_or_default().to_string());
    }
    let (s1, v1) = client.post("noop", &json!({}), Some("demo-key-1")).await?;
    let (s2, v2) = client.post("noop", &json!({}), Some("demo-key-1")).await?;
    println!(
        "   {s1} then {s2} for the same Idempotency-Key: duplicate={} same id={}",
        v2["duplicate"],
        v1["job_id"] == v2["job_id"]
    );
    ids.push(v1["job_id"].as_str().unwrap_or_default().to_string());
    let (s3, v3) = client.post("test_job", &json!({"label": 7}), None).await?;
    println!("   {s3} for a bad payload: {}", v3["error"]);

    println!("4. pushing {} noop jobs in bulk", args.jobs);
    let bulk: Vec<NewJob> = (0..args.jobs).map(|_| NewJob::new("noop", "{}")).collect();
    let t0 = Instant::now();
    ctx.queue
        .push(&bulk, ctx.settings.worker.idempotency_ttl)
        .await?;
    ids.extend(bulk.iter().map(|j| j.id.to_string()));
    println!("   pushed in {:.2}s", t0.elapsed().as_secs_f64());

    println!("5. waiting for every job to finish (job_runs in Postgres)...");
    let deadline = Instant::now() + Duration::from_secs(300);
    let finished = loop {
        let mut tx = ctx.db.begin().await?;
        let n: i64 = tx
            .scalar(
                sqlx::query_scalar(
                    "SELECT count(DISTINCT job_id) FROM job_runs WHERE job_id = ANY($1) AND status IN ('succeeded', 'dead')",
                )
                .bind(&ids),
            )
            .await?;
        tx.commit().await?;
        if n as usize >= ids.len() {
            break n;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "demo jobs did not finish in 5 minutes ({n} of {})",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let elapsed = t0.elapsed();
    println!(
        "   {finished} jobs finished in {:.2}s",
        elapsed.as_secs_f64()
    );

    println!("6. what happened (from job_runs):");
    let mut tx = ctx.db.begin().await?;
    let rows: Vec<(String, String, i64, Option<f64>)> = tx
        .fetch_all(sqlx::query_as(
            "SELECT job_type, status, count(*), avg(duration_ms)::float8 FROM job_runs WHERE job_id = ANY($1) \
             GROUP BY 1, 2 ORDER BY 1, 2",
        ).bind(&ids))
        .await?;
    for (t, s, n, avg) in rows {
        println!(
            "   {t:<9} {s:<10} {n:>7} attempts   avg {:.1} ms",
            avg.unwrap_or(0.0)
        );
    }
    let dead: Vec<(String, String)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT job_id, last_error FROM dead_jobs WHERE job_id = ANY($1) ORDER BY job_id",
            )
            .bind(&ids),
        )
        .await?;
    tx.commit().await?;
    let dead_n = dead.len();
    println!(
        "7. dead-letter store ({} jobs; `finworker jobs failed`, `finworker jobs retry <id>`):",
        dead.len()
    );
    for (id, e) in dead {
        println!("   {id}  {e}");
    }
    summary.push((
        "jobs",
        format!("{finished} finished, {dead_n} dead-lettered (HTTP and bulk)"),
        elapsed.as_secs_f64(),
    ));
    println!("8. inspect one job: finworker jobs show {}", ids[0]);

    // The ingestion pipeline: a generated debtor file (10% duplicates, 2% malformed rows).
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("demo-debtors.csv");
    let gen_args = crate::testdata::DebtorArgs {
        rows: args.debtors,
        format: crate::testdata::GenFormat::Csv,
        // A fresh seed per run: a second demo would otherwise find only duplicates of the first.
        seed: (chrono::Utc::now().timestamp_millis() % 1_000_000) as u64,
        out: file.clone(),
        delimiter: ';',
        encoding: crate::testdata::GenEncoding::Utf8,
        bom: false,
        crlf: false,
        duplicates: 10.0,
        malformed: 2.0,
        invalid: 1.0,
        no_short_rows: false,
    };
    let generated = crate::testdata::debtors(&gen_args)?;
    println!(
        "9. uploading a generated debtor file ({} rows: {} unique of which {} should fail validation, {} duplicates, {} malformed)",
        generated.rows,
        generated.unique,
        generated.invalid,
        generated.duplicates,
        generated.malformed
    );
    let t0 = Instant::now();
    let upload_id = crate::uploads::submit(&ctx, &file, None, None, false).await?;
    let rec = crate::uploads::watch(&ctx, upload_id, Duration::from_millis(200)).await?;
    summary.push((
        "upload",
        format!(
            "{} rows: {} imported, {} duplicates, {} rejected with a reason",
            rec.rows_seen, rec.rows_imported, rec.rows_duplicate, rec.rows_rejected
        ),
        t0.elapsed().as_secs_f64(),
    ));
    for line in crate::uploads::describe(&rec, chrono::Utc::now()).lines() {
        println!("   {line}");
    }
    for r in crate::uploads::rejects(&ctx.db, upload_id, 3).await? {
        println!(
            "   rejected row {} ({}): {}",
            r.row_no,
            r.column_name.as_deref().unwrap_or("row"),
            r.reason
        );
    }
    println!("   details: finworker uploads show {upload_id}");

    println!(
        "10. validation, then VOP/BAV checks against the sandbox provider (http://{sandbox_addr}, {} req/s)",
        args.vop_rate
    );
    let t0 = Instant::now();
    let total = u64::try_from(rec.chunks_total.unwrap_or(0)).unwrap_or(0);
    let (validating, verifying) = (
        bar(total, "validation (chunks)"),
        bar(total, "VOP/BAV (chunks)"),
    );
    let mut validated_in = None;
    let rec = loop {
        let r = crate::uploads::get(&ctx.db, upload_id)
            .await?
            .context("upload vanished")?;
        validating.set_position(u64::try_from(r.chunks_validated).unwrap_or(0));
        verifying.set_position(u64::try_from(r.chunks_verified).unwrap_or(0));
        if r.validated_at.is_some() && validated_in.is_none() {
            validated_in = Some(t0.elapsed());
            validating.finish();
        }
        if r.verified_at.is_some() || r.status == "failed" {
            verifying.finish();
            break r;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "validation and verification did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let verified_in = t0.elapsed();
    println!(
        "   validated: {} valid, {} invalid; verified in {:.1}s ({} provider calls)",
        rec.rows_valid,
        rec.rows_invalid,
        verified_in.as_secs_f64(),
        sandbox.calls().calls.len()
    );
    summary.push((
        "validation",
        format!("{} valid, {} invalid", rec.rows_valid, rec.rows_invalid),
        validated_in.unwrap_or(verified_in).as_secs_f64(),
    ));
    let verification = crate::uploads::verification(&ctx.db, upload_id).await?;
    let mut c = ctx.db.begin().await?;
    let codes: Vec<(String, String, i64)> = c
        .fetch_all(
            sqlx::query_as(
                "SELECT code, severity, count(*) FROM debtor_findings \
             WHERE upload_id = $1 GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5",
            )
            .bind(upload_id),
        )
        .await?;
    c.commit().await?;
    for (code, severity, n) in codes {
        println!("   {n:>6} {severity} {code}");
    }
    let described = verification.describe();
    for line in described.lines() {
        println!("   {line}");
    }
    summary.push((
        "VOP/BAV",
        described
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        verified_in.as_secs_f64(),
    ));

    let report_id =
        crate::jobs::vop_report::upload_report_id(upload_id, crate::reports::Format::Xlsx);
    let report = loop {
        match crate::reports::get(&ctx.db, report_id).await? {
            Some(r) if r.status != "pending" => break r,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    anyhow::ensure!(
        report.status == "ready",
        "report failed: {}",
        report.error.unwrap_or_default()
    );
    let (link, _) = crate::reports::signed_link(&ctx.settings.reports, report_id, None)
        .context("link secret")?;
    let local = link.replacen(
        ctx.settings.reports.public_url.trim_end_matches('/'),
        &format!("http://{addr}"),
        1,
    );
    // Download it through the signed link, as finance staff would.
    let bytes = client.get(&local).await?;
    let saved = std::path::Path::new("var").join(format!("demo-vop-report-{upload_id}.xlsx"));
    std::fs::create_dir_all("var")?;
    std::fs::write(&saved, &bytes)?;
    println!(
        "11. VOP compliance report: {} rows, downloaded through its signed link ({} bytes) to {}",
        report.rows.unwrap_or(0),
        bytes.len(),
        saved.display()
    );
    println!("   link: {link}");
    summary.push((
        "VOP report",
        format!(
            "{} rows, XLSX behind a signed link",
            report.rows.unwrap_or(0)
        ),
        0.0,
    ));
    if ephemeral_secret {
        println!(
            "   (signed with a one-off secret: set FINWORKER__REPORTS__LINK_SECRET for links that outlive the demo; \
             then `finworker reports link {report_id}` prints a fresh one)"
        );
    } else {
        println!("   served by `finworker run`; a fresh link: finworker reports link {report_id}");
    }

    println!(
        "12. billing: every debtor of the upload, through the sandbox Genesis gateway (account `demo`)"
    );
    let run_id = crate::jobs::billing::enqueue(
        &ctx,
        crate::jobs::Billing {
            upload_id,
            account: "demo".into(),
            model: "legacy".into(),
            dry_run: false,
            skip_chargeback_check: false,
            cap_minor: None,
            run_id: None,
            requested_by: crate::jobs::billing::RequestedBy::Cli,
        },
    )
    .await?;
    let started = std::time::Instant::now();
    let billing = bar(0, "billing (debtors decided)");
    loop {
        let r = crate::billing::run::get(&ctx.db, run_id).await?;
        if let Some(r) = &r {
            let mut tx = ctx.db.begin().await?;
            let (items, queued): (i64, i64) = tx
                .fetch_one(
                    sqlx::query_as(
                        "SELECT count(*), count(*) FILTER (WHERE state = 'queued') FROM billing_items WHERE run_id = $1",
                    )
                    .bind(run_id),
                )
                .await?;
            tx.commit().await?;
            billing.set_length(u64::try_from(items).unwrap_or(0));
            billing.set_position(u64::try_from(items - queued).unwrap_or(0));
            if matches!(r.status.as_str(), "completed" | "cancelled") {
                billing.finish();
                break;
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "billing run {run_id} did not finish within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut tx = ctx.db.begin().await?;
    let totals = crate::billing::run::totals(&mut tx, run_id).await?;
    tx.commit().await?;
    println!(
        "   run {run_id} completed in {:.1}s: {} debtors",
        started.elapsed().as_secs_f64(),
        totals["items"]
    );
    for (title, key) in [
        ("debits by status", "attempts_by_status"),
        ("excluded by reason", "excluded_by_reason"),
    ] {
        if let Some(m) = totals[key].as_object() {
            println!("   {title}:");
            for (k, v) in m {
                println!(
                    "     {k:<22} {:>6}  {:>12} EUR",
                    v["count"],
                    crate::money::format_minor(v["amount_minor"].as_i64().unwrap_or(0))
                );
            }
        }
    }
    println!(
        "   the sandbox gateway's ledger holds {} debits (one per debited debtor); details: finworker billing show {run_id}",
        sandbox.ledger().debits.len()
    );
    let (approved, approved_minor) = count_amount(&totals, "approved");
    summary.push((
        "billing",
        format!(
            "{} debtors: {approved} approved ({} EUR), {} declined or error, {} excluded with a reason; {} debits on the gateway's ledger",
            totals["items"],
            crate::money::format_minor(approved_minor),
            count_amount(&totals, "declined").0 + count_amount(&totals, "error").0,
            totals["by_state"]["excluded"]["count"].as_i64().unwrap_or(0),
            sandbox.ledger().debits.len()
        ),
        started.elapsed().as_secs_f64(),
    ));

    lifecycle_tour(&ctx, &sandbox_addr, run_id, &mut summary).await?;

    println!(
        "\nsummary ({:.0}s in all):",
        demo_started.elapsed().as_secs_f64()
    );
    println!("   {:<12} {:>7}  result", "stage", "seconds");
    for (stage, what, secs) in &summary {
        println!("   {stage:<12} {secs:>7.1}  {what}");
    }
    if let Some(path) = &args.metrics_out {
        std::fs::write(path, ctx.metrics.render())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let dashboard = format!("http://{addr}/dashboard");
    if args.exit {
        shutdown.cancel();
        daemon.await??;
        sandbox_stop.cancel();
        ctx.queue.delete_namespace().await?;
        println!(
            "done: daemon drained and stopped (the database `{}` stays for a look).",
            args.database
        );
        return Ok(());
    }
    println!("\nthe daemon keeps running: open {dashboard} and sign in with the ops token");
    println!("   {ops_token}");
    println!(
        "   (the CLI on the demo's data: FINWORKER__DATABASE__URL={} finworker billing show {run_id}; Ctrl-C here drains and stops)",
        ctx.settings.database.url
    );
    crate::shutdown::on_signals(shutdown.clone());
    shutdown.cancelled().await;
    daemon.await??;
    sandbox_stop.cancel();
    ctx.queue.delete_namespace().await?;
    println!("done: daemon drained and stopped.");
    Ok(())
}

fn count_amount(totals: &serde_json::Value, status: &str) -> (i64, i64) {
    let v = &totals["attempts_by_status"][status];
    (
        v["count"].as_i64().unwrap_or(0),
        v["amount_minor"].as_i64().unwrap_or(0),
    )
}

/// After the billing run: the gateway's notifications, a chargeback and a retrieval request
/// raised at the sandbox, then reconciliation and ledger sync, as ops would run them.
async fn lifecycle_tour(
    ctx: &crate::context::AppContext,
    sandbox_addr: &std::net::SocketAddr,
    run_id: uuid::Uuid,
    summary: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let count = |sql: &'static str| async move {
        let mut tx = ctx.db.begin().await?;
        let n: i64 = tx.scalar(sqlx::query_scalar(sql).bind(run_id)).await?;
        tx.commit().await?;
        anyhow::Ok(n)
    };
    println!(
        "13. the gateway's notifications: debits settling later (pending_async) are reported to http://…/api/webhooks/emp/demo"
    );
    let t0 = Instant::now();
    let waiting = bar(0, "async debits settled");
    let open_async =
        "SELECT count(*) FROM billing_attempts WHERE run_id = $1 AND status = 'pending_async'";
    let all_async = "SELECT count(*) FROM billing_attempts a WHERE run_id = $1 AND EXISTS \
         (SELECT 1 FROM transaction_events e WHERE e.attempt_id = a.id AND e.to_status = 'pending_async')";
    loop {
        let (open, all) = (count(open_async).await?, count(all_async).await?);
        waiting.set_length(u64::try_from(all).unwrap_or(0));
        waiting.set_position(u64::try_from(all - open).unwrap_or(0));
        if open == 0 {
            waiting.finish();
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "{open} debits still pending_async after 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deliveries = count("SELECT count(*) FROM webhook_deliveries WHERE verdict = 'accepted' AND $1::uuid IS NOT NULL").await?;
    summary.push((
        "webhooks",
        format!("{deliveries} notifications verified, stored, acknowledged and applied"),
        t0.elapsed().as_secs_f64(),
    ));

    println!("14. a chargeback (MD06) and a retrieval request raised at the sandbox gateway");
    let t0 = Instant::now();
    let mut tx = ctx.db.begin().await?;
    let picked: Vec<(String,)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT transaction_id FROM billing_attempts WHERE run_id = $1 AND status = 'approved' ORDER BY id LIMIT 2",
            )
            .bind(run_id),
        )
        .await?;
    tx.commit().await?;
    anyhow::ensure!(
        picked.len() == 2,
        "fewer than two approved debits to return"
    );
    let http = reqwest::Client::new();
    for ((tx_id,), event) in picked.iter().zip(["chargeback", "retrieval_request"]) {
        let r = http
            .post(format!("http://{sandbox_addr}/_sandbox/genesis/events"))
            .json(&json!({"transaction_id": tx_id, "event": event, "reason_code": "MD06"}))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "sandbox event refused: {}",
            r.status()
        );
    }
    loop {
        let cb = count("SELECT count(*) FROM chargebacks c JOIN billing_attempts a ON a.id = c.attempt_id WHERE a.run_id = $1").await?;
        let rr = count("SELECT count(*) FROM retrieval_requests r JOIN billing_attempts a ON a.id = r.attempt_id WHERE a.run_id = $1").await?;
        if cb >= 1 && rr >= 1 {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "the chargeback was not applied within a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "   {} chargebacked; its reason code's policy applied (docs/lifecycle.md); the retrieval request stored",
        picked[0].0
    );
    summary.push((
        "returns",
        "1 chargeback applied (attempt chargebacked, profile deactivated), 1 retrieval request stored".into(),
        t0.elapsed().as_secs_f64(),
    ));

    println!("15. reconciliation: every open attempt of the run looked up at the gateway");
    let t0 = Instant::now();
    let fence = crate::queue::fence::Fence::new(format!("demo:{}", uuid::Uuid::now_v7()), 1);
    let mut looked = 0;
    loop {
        let p =
            crate::lifecycle::reconcile::pass(ctx, &fence, Some(run_id), Duration::from_secs(60))
                .await?;
        looked += p.looked_up;
        let open = count(
            "SELECT count(*) FROM billing_attempts WHERE run_id = $1 AND status IN ('submitted', 'unknown', 'pending', 'pending_async')",
        )
        .await?;
        if open == 0 || t0.elapsed() > Duration::from_secs(60) {
            println!("   {looked} lookups; {open} attempts still open");
            summary.push((
                "reconcile",
                format!("{looked} lookups at the gateway; {open} attempts still open"),
                t0.elapsed().as_secs_f64(),
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    println!("16. ledger sync: the gateway's records of today against ours");
    let t0 = Instant::now();
    let today = chrono::Utc::now().date_naive();
    let r = crate::lifecycle::ledger::sync(
        ctx,
        &fence,
        uuid::Uuid::now_v7(),
        "demo",
        today,
        today,
        "demo",
        crate::reports::Format::Csv,
    )
    .await?;
    let differences = r.corrected + r.repaired + r.refused + r.missing_locally + r.missing_remotely;
    println!(
        "   {} records, {} matched, {} corrected, {} repaired, {} missing locally, {} missing remotely",
        r.seen, r.matched, r.corrected, r.repaired, r.missing_locally, r.missing_remotely
    );
    summary.push((
        "ledger sync",
        format!(
            "{} gateway records, {} matched, {differences} differences",
            r.seen, r.matched
        ),
        t0.elapsed().as_secs_f64(),
    ));
    Ok(())
}

struct HttpClient {
    addr: std::net::SocketAddr,
    token: String,
    http: reqwest::Client,
}

impl HttpClient {
    /// `POST /api/jobs/{job_type}` with the bearer token: (status, JSON body).
    async fn post(
        &self,
        job_type: &str,
        body: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut req = self
            .http
            .post(format!("http://{}/api/jobs/{job_type}", self.addr))
            .bearer_auth(&self.token)
            .json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or_default()))
    }

    /// GET of a full URL (the signed report link): the body, or an error naming the status.
    async fn get(&self, url: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self.http.get(url).send().await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "download refused: {}",
            resp.status()
        );
        Ok(resp.bytes().await?.to_vec())
    }
}
