//! The command line: the daemon and its operations commands, in one binary.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    bench,
    config::Settings,
    context::{AppContext, EnqueueOptions},
    db, demo, jobs, schema, shutdown,
    startup::{self, App, Roles},
    telemetry, uploads,
};

/// finworker: background jobs for SEPA direct-debit collection.
#[derive(Debug, Parser)]
#[command(name = "finworker", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: workers and the HTTP receiver.
    Run(RunArgs),
    /// Apply database migrations (direct connection, not PgBouncer).
    Migrate,
    /// Enqueue one job: `finworker enqueue noop '{}'` or `... noop @payload.json`.
    Enqueue(EnqueueArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect and repair jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Depth of every queue: waiting, scheduled, in flight, failed, oldest waiting.
    Queues,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the demo pipeline end to end and print what happened.
    Demo(demo::DemoArgs),
    /// Store a local debtor file, enqueue its upload job and follow it to the end.
    Upload(UploadArgs),
    /// Inspect uploads.
    #[command(subcommand)]
    Uploads(UploadsCommand),
    /// Generate test data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Serve the sandbox provider (simulated VOP/BAV API) until Ctrl-C.
    Sandbox(SandboxArgs),
    /// Reports: create, show, and print signed download links.
    #[command(subcommand)]
    Reports(ReportsCommand),
    /// Internal: read a spreadsheet from stdin under memory and CPU limits and write its rows
    /// as JSON lines (the upload job runs it; see src/jobs/upload/isolated.rs).
    #[command(hide = true)]
    SheetReader(crate::jobs::upload::isolated::ReaderArgs),
    /// Regenerate the producer contract in jobs/ from the payload types.
    Schemas {
        /// Folder to write into.
        #[arg(long, default_value = "jobs")]
        dir: PathBuf,
    },
}

/// `run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Do not serve HTTP.
    #[arg(long)]
    pub no_http: bool,
    /// Do not run workers (HTTP only).
    #[arg(long)]
    pub no_workers: bool,
    /// Only these queues (comma-separated job types).
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<String>,
}

/// `enqueue` arguments.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job type.
    pub job_type: String,
    /// JSON payload, or @path to a file holding it.
    pub payload: String,
    /// Idempotency key: a repeat within the retention window returns the first job's id.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Run no earlier than this from now (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
}

/// `upload` arguments.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The CSV / XLSX / XLS / ODS file.
    pub file: PathBuf,
    /// File name to record (defaults to the file's own).
    #[arg(long)]
    pub name: Option<String>,
    /// Sheet of a workbook (defaults to the first).
    #[arg(long)]
    pub sheet: Option<String>,
    /// Import the file even if an earlier upload had exactly the same content (refused
    /// otherwise, naming that upload).
    #[arg(long)]
    pub allow_same_file: bool,
    /// Print the upload id and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the final record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `uploads` subcommands.
#[derive(Debug, Subcommand)]
pub enum UploadsCommand {
    /// Status, progress (chunks, rows/s, ETA), totals and the first rejected rows.
    Show {
        /// Upload id.
        id: uuid::Uuid,
        /// Rejected rows to list.
        #[arg(long, default_value_t = 20)]
        rejects: i64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `sandbox` flags: the starting knobs (PUT /_sandbox/config changes them later).
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9300")]
    pub bind: String,
    /// Added to every answer.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share of calls failing (0..1), spread evenly.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// How injected failures look: 503 or timeout.
    #[arg(long, default_value = "503")]
    pub error_mode: String,
    /// Requests/s accepted from all clients together (0 = unlimited); more get 429.
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u32,
    /// Bearer key required from clients.
    #[arg(long, env = "FINWORKER_SANDBOX_API_KEY")]
    pub api_key: Option<String>,
}

/// `reports` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportsCommand {
    /// Enqueue a VOP report of an upload (or a date range), wait for it, print its link.
    Create {
        /// The upload.
        #[arg(long)]
        upload: Option<uuid::Uuid>,
        /// First check date (YYYY-MM-DD).
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// Last check date (inclusive).
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        /// csv or xlsx.
        #[arg(long, default_value = "xlsx")]
        format: String,
    },
    /// A report's status.
    Show {
        /// Report id.
        id: uuid::Uuid,
    },
    /// Print a signed download link (valid for reports.link_ttl, or --ttl).
    Link {
        /// Report id.
        id: uuid::Uuid,
        /// How long the link works.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
}

/// `gen` subcommands.
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// A debtor file (CSV or XLSX) with duplicates and malformed rows; prints its summary.
    Debtors(crate::testdata::DebtorArgs),
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets redacted) and warnings.
    Check,
}

/// `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Everything known about one job: its state in Redis, its runs, its dead-letter entry.
    Show {
        /// Job id.
        id: String,
    },
    /// List dead-lettered jobs.
    Failed {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Put dead-lettered jobs back in their queue with fresh attempts.
    Retry {
        /// Job id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead job of --queue.
        #[arg(long, requires = "queue")]
        all: bool,
        /// Queue for --all.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Delete dead-lettered jobs.
    Purge {
        /// Purge the dead-letter store (the only store purged; required for clarity).
        #[arg(long, required = true)]
        failed: bool,
        /// Only jobs that failed longer ago than this (e.g. 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

/// `bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Enqueue and process no-op jobs through the real Redis; prints rates beside redis-benchmark.
    Queue(bench::QueueBenchArgs),
    /// Read every cell of an XLSX with calamine alone (the reference for upload figures).
    XlsxRead {
        /// The workbook.
        file: PathBuf,
    },
}

/// Parses the command line and runs it.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    execute(cli).await
}

async fn load() -> anyhow::Result<Settings> {
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    Ok(settings)
}

/// Runs a parsed command.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let settings = load().await?;
            let token = CancellationToken::new();
            shutdown::on_signals(token.clone());
            let roles = Roles {
                workers: !args.no_workers,
                http: !args.no_http,
                queues: args.queues,
            };
            if !roles.workers && !roles.http {
                bail!("--no-http and --no-workers together leave nothing to run");
            }
            App::build(settings, roles).await?.run(token).await
        }
        Command::Migrate => {
            let settings = load().await?;
            db::migrate(&settings.database, settings.database_password())
                .await
                .context("applying migrations over database.direct_url")?;
            println!("migrations applied");
            if let Some(key) = settings.privacy.iban_key.as_ref() {
                let db = db::Db::connect_lazy(&settings.database, settings.database_password())?;
                let n =
                    uploads::backfill_iban_keys(&db, &crate::iban::IbanHasher::new(key)).await?;
                if n > 0 {
                    println!("{n} stored debtors given their IBAN lookup key");
                }
            }
            Ok(())
        }
        Command::Enqueue(args) => {
            let ctx = startup::build_context(load().await?).await?;
            let body = match args.payload.strip_prefix('@') {
                Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
                None => args.payload.into_bytes(),
            };
            let opts = EnqueueOptions {
                idempotency_key: args.idempotency_key,
                delay: args.delay.unwrap_or_default(),
                max_attempts: None,
            };
            let pushed = ctx.enqueue_json(&args.job_type, &body, opts).await?;
            if pushed.duplicate {
                println!(
                    "{} (duplicate: the idempotency key was already used)",
                    pushed.id
                );
            } else {
                println!("{}", pushed.id);
            }
            Ok(())
        }
        Command::Config(ConfigCommand::Check) => {
            let settings = Settings::load()?;
            startup::check_against_registry(&settings, &jobs::registry())?;
            print!("{}", settings.to_redacted_toml());
            for w in settings.warnings() {
                eprintln!("warning: {w}");
            }
            // The Redis the daemon would use: is it fit to hold money jobs?
            let redis = tokio::time::timeout(
                Duration::from_secs(3),
                crate::queue::engine::Engine::connect(&settings.redis),
            )
            .await;
            match redis {
                Ok(Ok(engine)) => match engine.durability_warnings().await {
                    Ok(ws) => {
                        for w in ws {
                            eprintln!("WARNING: {w}");
                        }
                    }
                    Err(e) => eprintln!("warning: could not read redis persistence settings: {e}"),
                },
                _ => eprintln!(
                    "warning: redis at redis.url is not reachable; its persistence was not checked"
                ),
            }
            Ok(())
        }
        Command::Jobs(cmd) => {
            let ctx = startup::build_context(load().await?).await?;
            jobs_command(&ctx, cmd).await
        }
        Command::Queues => {
            let ctx = startup::build_context(load().await?).await?;
            queues_command(&ctx).await
        }
        Command::Bench(BenchCommand::XlsxRead { file }) => bench::xlsx_read(&file),
        Command::SheetReader(args) => {
            let settings = Settings::load()?;
            let aliases = crate::uploads::ColumnAliases::new(&settings.upload.columns);
            crate::jobs::upload::isolated::child_main(args, &aliases)
        }
        Command::Bench(BenchCommand::Queue(args)) => {
            let settings = load().await?;
            bench::queue(settings, args).await
        }
        Command::Demo(args) => {
            let settings = load().await?;
            demo::run(settings, args).await
        }
        Command::Upload(args) => {
            let ctx = startup::build_context(load().await?).await?;
            let id = uploads::submit(
                &ctx,
                &args.file,
                args.name.as_deref(),
                args.sheet.as_deref(),
                args.allow_same_file,
            )
            .await?;
            if args.no_wait {
                println!("{id}");
                return Ok(());
            }
            eprintln!(
                "upload {id} enqueued; waiting for workers (Ctrl-C stops waiting, not the upload)"
            );
            let rec = uploads::watch(&ctx, id, Duration::from_millis(200)).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rec.clone().view(Utc::now()))?
                );
            } else {
                print!("{}", uploads::describe(&rec, Utc::now()));
            }
            if rec.status == "failed" {
                bail!("upload {id} failed: {}", rec.error.unwrap_or_default());
            }
            Ok(())
        }
        Command::Uploads(UploadsCommand::Show { id, rejects, json }) => {
            let ctx = startup::build_context(load().await?).await?;
            let rec = uploads::get(&ctx.db, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no upload {id}"))?;
            let list = uploads::rejects(&ctx.db, id, rejects).await?;
            let checks = uploads::verification(&ctx.db, id).await?;
            if json {
                let mut v = serde_json::to_value(rec.view(Utc::now()))?;
                v["rejects"] = serde_json::to_value(&list)?;
                v["verification"] = serde_json::to_value(&checks)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", uploads::describe(&rec, Utc::now()));
                if checks.checked > 0 {
                    print!("{}", checks.describe());
                }
                if checks.checked > 0 {
                    print!("{}", checks.describe());
                }
                if !list.is_empty() {
                    println!("rejected rows (first {}):", list.len());
                    for r in list {
                        println!(
                            "  row {:>7}  {:<20} {}{}",
                            r.row_no,
                            r.column_name.as_deref().unwrap_or("(row)"),
                            r.reason,
                            r.value.map(|v| format!("  [{v}]")).unwrap_or_default()
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Gen(GenCommand::Debtors(args)) => {
            let summary = crate::testdata::debtors(&args)?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
        Command::Sandbox(a) => {
            load().await?; // for logging only: the sandbox reads no finworker settings
            let token = CancellationToken::new();
            shutdown::on_signals(token.clone());
            let knobs = crate::sandbox::Knobs {
                latency_ms: u64::try_from(a.latency.as_millis()).unwrap_or(u64::MAX),
                error_rate: a.error_rate,
                error_mode: a.error_mode,
                outage_until_ms: None,
                rate_limit: a.rate_limit,
                api_key: a.api_key,
            };
            let (addr, _sandbox, handle) = crate::sandbox::serve(&a.bind, knobs, token).await?;
            println!(
                "sandbox provider listening on http://{addr} (knobs: /_sandbox/config, calls: /_sandbox/calls)"
            );
            handle.await?;
            Ok(())
        }
        Command::Reports(cmd) => reports_command(cmd).await,
        Command::Schemas { dir } => {
            for f in schema::write(&jobs::registry(), &dir)? {
                println!("{}", dir.join(f).display());
            }
            Ok(())
        }
    }
}

async fn jobs_command(ctx: &AppContext, cmd: JobsCommand) -> anyhow::Result<()> {
    use crate::queue::{dead_letter, engine::NewJob};
    match cmd {
        JobsCommand::Show { id } => {
            let redis = ctx.queue.job(&id).await?;
            let mut tx = ctx.db.begin().await?;
            let runs: Vec<RunRow> = tx
                .fetch_all(
                    sqlx::query_as(
                        "SELECT attempt, job_type, worker, status, error, started_at, finished_at, duration_ms \
                         FROM job_runs WHERE job_id = $1 ORDER BY attempt",
                    )
                    .bind(&id),
                )
                .await?;
            let dead: Option<dead_letter::DeadJob> = tx
                .fetch_optional(
                    sqlx::query_as(
                        "SELECT job_id, job_type, payload, attempts, last_error, enqueued_at, failed_at \
                         FROM dead_jobs WHERE job_id = $1",
                    )
                    .bind(&id),
                )
                .await?;
            tx.commit().await?;
            if redis.is_none() && runs.is_empty() && dead.is_none() {
                bail!("no job {id} in redis, job_runs or dead_jobs");
            }
            println!("job {id}");
            match &redis {
                Some(fields) => {
                    println!("  in redis (waiting, scheduled or running):");
                    for (k, v) in fields {
                        println!("    {k}: {v}");
                    }
                }
                None => println!("  not in redis (finished, dead, or never enqueued here)"),
            }
            if let Some(d) = &dead {
                println!("  DEAD since {}: {}", d.failed_at, d.last_error);
                println!("    payload: {}", d.payload);
            }
            println!("  runs:");
            for r in &runs {
                println!(
                    "    #{} {:<11} {} worker={} started={} duration={}{}",
                    r.attempt,
                    r.status,
                    r.job_type,
                    r.worker,
                    r.started_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    r.duration_ms.map_or("-".into(), |d| format!("{d}ms")),
                    r.error
                        .as_deref()
                        .map_or(String::new(), |e| format!(" error={e}")),
                );
            }
            Ok(())
        }
        JobsCommand::Failed { queue, limit } => {
            let mut tx = ctx.db.begin().await?;
            let dead = dead_letter::list(&mut tx, queue.as_deref(), limit).await?;
            tx.commit().await?;
            if dead.is_empty() {
                println!("no dead jobs");
            }
            for d in dead {
                println!(
                    "{}  {:<14} attempts={} failed_at={}  {}",
                    d.job_id,
                    d.job_type,
                    d.attempts,
                    d.failed_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    d.last_error
                );
            }
            Ok(())
        }
        JobsCommand::Retry { id, all, queue } => {
            let ids: Vec<String> = if all {
                let mut tx = ctx.db.begin().await?;
                let d = dead_letter::list(&mut tx, queue.as_deref(), i64::MAX).await?;
                tx.commit().await?;
                d.into_iter().map(|d| d.job_id).collect()
            } else {
                id.into_iter().collect()
            };
            let mut retried = 0;
            for id in ids {
                // Take it out of dead_jobs and push it in one transaction: if the push fails,
                // the row stays; the push itself ignores an id that is already queued.
                let mut tx = ctx.db.begin().await?;
                let Some(d) = dead_letter::take(&mut tx, &id).await? else {
                    bail!("no dead job {id}");
                };
                let job = NewJob {
                    id: d
                        .job_id
                        .parse()
                        .with_context(|| format!("job id {} is not a uuid", d.job_id))?,
                    job_type: d.job_type.clone(),
                    payload: d.payload.clone(),
                    delay: Duration::ZERO,
                    idempotency_key: None,
                    max_attempts: None,
                    prior_attempts: d.attempts.max(0) as u32,
                    redrive: false,
                };
                ctx.queue
                    .push(&[job], ctx.settings.worker.idempotency_ttl)
                    .await?;
                tx.commit().await?;
                println!("{id} re-queued on {}", d.job_type);
                retried += 1;
            }
            println!("{retried} job(s) re-queued");
            Ok(())
        }
        JobsCommand::Purge {
            failed: _,
            older_than,
            queue,
            yes,
        } => {
            if !yes {
                bail!("purge deletes dead jobs for good; add --yes to confirm");
            }
            let before = older_than
                .map(|d| chrono::Duration::from_std(d).map(|d| Utc::now() - d))
                .transpose()?;
            let mut tx = ctx.db.begin().await?;
            let n = dead_letter::purge(&mut tx, queue.as_deref(), before).await?;
            tx.commit().await?;
            println!("{n} dead job(s) purged");
            Ok(())
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct RunRow {
    attempt: i32,
    job_type: String,
    worker: String,
    status: String,
    error: Option<String>,
    started_at: chrono::DateTime<Utc>,
    #[allow(dead_code)]
    finished_at: Option<chrono::DateTime<Utc>>,
    duration_ms: Option<i64>,
}

async fn queues_command(ctx: &AppContext) -> anyhow::Result<()> {
    let mut tx = ctx.db.begin().await?;
    let dead = crate::queue::dead_letter::counts(&mut tx).await?;
    tx.commit().await?;
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>16}",
        "queue", "waiting", "scheduled", "in_flight", "failed", "oldest_waiting"
    );
    for name in ctx.registry.names() {
        let s = ctx.queue.stats(name).await?;
        let failed = dead.iter().find(|(q, _)| q == name).map_or(0, |(_, n)| *n);
        let oldest = s.oldest_waiting_ms.map_or("-".to_string(), |ms| {
            humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
        });
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>10} {:>16}",
            name, s.waiting, s.scheduled, s.in_flight, failed, oldest
        );
    }
    let workers = ctx.queue.workers().await?;
    println!("{} live worker process(es)", workers.len());
    for (w, _) in workers {
        println!("  {w}");
    }
    Ok(())
}

async fn reports_command(cmd: ReportsCommand) -> anyhow::Result<()> {
    let ctx = startup::build_context(load().await?).await?;
    match cmd {
        ReportsCommand::Create {
            upload,
            from,
            to,
            format,
        } => {
            let Some(format) = crate::reports::Format::parse(&format) else {
                anyhow::bail!("--format {format}: use csv or xlsx");
            };
            if upload.is_none() && from.is_none() && to.is_none() {
                anyhow::bail!("give --upload or --from/--to");
            }
            let id = jobs::vop_report::enqueue(
                &ctx,
                jobs::VopReport {
                    report_id: None,
                    upload_id: upload,
                    from,
                    to,
                    format,
                },
            )
            .await?;
            eprintln!("report {id} enqueued; waiting for workers");
            loop {
                match crate::reports::get(&ctx.db, id).await? {
                    Some(r) if r.status == "ready" => break,
                    Some(r) if r.status == "failed" => {
                        anyhow::bail!("report {id} failed: {}", r.error.unwrap_or_default())
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            println!("{}", report_link(&ctx, id, None)?);
        }
        ReportsCommand::Show { id } => {
            let r = crate::reports::get(&ctx.db, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no report {id}"))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        ReportsCommand::Link { id, ttl } => {
            let r = crate::reports::get(&ctx.db, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no report {id}"))?;
            if r.status != "ready" {
                eprintln!(
                    "note: report {id} is {}; the link works once it is ready",
                    r.status
                );
            }
            println!("{}", report_link(&ctx, id, ttl)?);
        }
    }
    Ok(())
}

/// A signed link to a report, valid for `ttl` (default `reports.link_ttl`).
pub fn report_link(
    ctx: &crate::context::AppContext,
    id: uuid::Uuid,
    ttl: Option<Duration>,
) -> anyhow::Result<String> {
    crate::reports::signed_link(&ctx.settings.reports, id, ttl)
        .map(|(url, _)| url)
        .ok_or_else(|| {
            anyhow::anyhow!("reports.link_secret is not set (FINWORKER__REPORTS__LINK_SECRET)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
