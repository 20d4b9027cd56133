//! `finworker demo`: migrates, starts the daemon in-process, enqueues a batch of jobs over
//! the HTTP API and in bulk, waits for them and prints what happened, from Postgres.

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
}

/// Runs the demo.
pub async fn run(mut settings: Settings, args: DemoArgs) -> anyhow::Result<()> {
    println!("1. migrating the database (direct connection)");
    db::migrate(&settings.database, settings.database_password())
        .await
        .context("migrating; is Postgres up? (scripts/setup.sh)")?;
    // An isolated namespace and a free port, so the demo never touches a running daemon.
    settings.redis.prefix = format!(
        "{}:demo:{}",
        settings.redis.prefix,
        uuid::Uuid::new_v4().simple()
    );
    settings.http.bind = "127.0.0.1:0".into();
    settings.worker.allow_test_jobs = true;
    let token = uuid::Uuid::new_v4().simple().to_string();
    settings.http.api_token = Some(SecretString::from(token.clone()));
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
    settings.billing.recurring = false;
    // Each demo starts a new sandbox gateway: the open debits of earlier demos (kept in the
    // database) are not its own, and reconciling them against it would send them again.
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
    println!(
        "7. dead-letter store ({} jobs; `finworker jobs failed`, `finworker jobs retry <id>`):",
        dead.len()
    );
    for (id, e) in dead {
        println!("   {id}  {e}");
    }
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
    let summary = crate::testdata::debtors(&gen_args)?;
    println!(
        "9. uploading a generated debtor file ({} rows: {} unique of which {} should fail validation, {} duplicates, {} malformed)",
        summary.rows, summary.unique, summary.invalid, summary.duplicates, summary.malformed
    );
    let upload_id = crate::uploads::submit(&ctx, &file, None, None, false).await?;
    let rec = crate::uploads::watch(&ctx, upload_id, Duration::from_millis(200)).await?;
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
    let rec = loop {
        let r = crate::uploads::get(&ctx.db, upload_id)
            .await?
            .context("upload vanished")?;
        if r.verified_at.is_some() || r.status == "failed" {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "   validated: {} valid, {} invalid; verified in {:.1}s ({} provider calls)",
        rec.rows_valid,
        rec.rows_invalid,
        t0.elapsed().as_secs_f64(),
        sandbox.calls().calls.len()
    );
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
    for line in crate::uploads::verification(&ctx.db, upload_id)
        .await?
        .describe()
        .lines()
    {
        println!("   {line}");
    }

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
    loop {
        match crate::billing::run::get(&ctx.db, run_id).await? {
            Some(r) if matches!(r.status.as_str(), "completed" | "cancelled") => break,
            _ if started.elapsed() > Duration::from_secs(300) => {
                anyhow::bail!("billing run {run_id} did not finish within 5 minutes")
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
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

    shutdown.cancel();
    daemon.await??;
    sandbox_stop.cancel();
    ctx.queue.delete_namespace().await?;
    println!("done: daemon drained and stopped.");
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
