//! The command line: the daemon and its operations commands, in one binary. The grammar is
//! in `args.rs`; what the commands of each area do, in their own modules.

mod args;
mod billing;
mod job_ops;
mod lifecycle;
mod reports;

pub use args::*;

use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::{
    bench,
    config::Settings,
    context::EnqueueOptions,
    db, demo, jobs, schema, shutdown,
    startup::{self, App, Roles},
    telemetry, uploads,
};

/// Parses the command line and runs it.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    execute(cli).await
}

pub(super) async fn load() -> anyhow::Result<Settings> {
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
                let n = uploads::key_filter::catch_up(&db, i64::MAX).await?;
                if n > 0 {
                    println!("{n} completed uploads added to the linking filter");
                }
            }
            Ok(())
        }
        Command::Uploads(UploadsCommand::FilterKeys) => {
            let ctx = startup::build_context(load().await?).await?;
            let n = uploads::key_filter::catch_up(&ctx.db, i64::MAX).await?;
            println!("{n} completed uploads added to the linking filter");
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
            job_ops::jobs_command(&ctx, cmd).await
        }
        Command::Queues { action } => {
            let ctx = startup::build_context(load().await?).await?;
            job_ops::queues_command(&ctx, action).await
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
        Command::Bench(BenchCommand::Scale(args)) => {
            let settings = load().await?;
            bench::scale(settings, args).await
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
        Command::Uploads(UploadsCommand::List { limit }) => {
            let ctx = startup::build_context(load().await?).await?;
            for u in crate::ops::uploads(&ctx, limit).await? {
                let r = &u.record;
                println!(
                    "{}  {:<10} {:>5.1}%  {} rows: {} imported, {} duplicate, {} rejected; {} valid, {} invalid  {}  {}",
                    r.id,
                    r.status,
                    u.progress.percent,
                    r.rows_seen,
                    r.rows_imported,
                    r.rows_duplicate,
                    r.rows_rejected,
                    r.rows_valid,
                    r.rows_invalid,
                    r.created_at.format("%Y-%m-%d %H:%M"),
                    r.file_name
                );
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
        Command::Sandbox(SandboxArgs {
            event: Some(event), ..
        }) => sandbox_event(event).await,
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
                genesis_duplicates: a.genesis_duplicates,
                genesis_password: a.genesis_password,
                ..crate::sandbox::Knobs::default()
            };
            let (addr, _sandbox, handle) = crate::sandbox::serve(&a.bind, knobs, token).await?;
            println!(
                "sandbox provider listening on http://{addr} (knobs: /_sandbox/config, calls: /_sandbox/calls, gateway ledger: /_sandbox/ledger)"
            );
            handle.await?;
            Ok(())
        }
        Command::Reports(cmd) => reports::reports_command(cmd).await,
        Command::Reconcile { run } => lifecycle::reconcile(run).await,
        Command::Ledger(cmd) => lifecycle::ledger_command(cmd).await,
        Command::Webhooks(cmd) => lifecycle::webhooks_command(cmd).await,
        Command::Guards => {
            let ctx = startup::build_context(load().await?).await?;
            println!(
                "{:<12} {:<16} {:<8} {:<10} {:>10}  hold",
                "provider", "account", "calls", "breaker", "rate"
            );
            for g in crate::ops::guards(&ctx).await? {
                println!(
                    "{:<12} {:<16} {:<8} {:<10} {:>6} r/s  {}",
                    g.provider,
                    g.account,
                    g.kind,
                    match g.open_for_seconds {
                        Some(s) => format!("{} {s:.0}s", g.breaker),
                        None => g.breaker.to_string(),
                    },
                    g.rate_limit,
                    g.hold_reason.unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Prune => {
            let ctx = startup::build_context(load().await?).await?;
            let p = crate::retention::run(&ctx).await?;
            println!(
                "pruned: {} job_runs, {} report files, {} staged objects of {} uploads, \
                 {} webhook deliveries deleted, {} stripped of their body (kept for their references)",
                p.job_runs,
                p.reports,
                p.staged_objects,
                p.staged_uploads,
                p.deliveries_deleted,
                p.deliveries_stripped
            );
            Ok(())
        }
        Command::Accounts(cmd) => billing::accounts_command(cmd).await,
        Command::Billing(cmd) => billing::billing_command(cmd).await,
        Command::Blacklist(cmd) => billing::blacklist_command(cmd).await,
        Command::Schemas { dir } => {
            for f in schema::write(&jobs::registry(), &dir)? {
                println!("{}", dir.join(f).display());
            }
            Ok(())
        }
    }
}

/// `finworker sandbox chargeback|retrieval|status …`: posts to the sandbox's control endpoint.
async fn sandbox_event(event: args::SandboxEvent) -> anyhow::Result<()> {
    let (name, a) = match event {
        args::SandboxEvent::Chargeback(a) => ("chargeback", a),
        args::SandboxEvent::Retrieval(a) => ("retrieval_request", a),
        args::SandboxEvent::Status(a) => ("status", a),
    };
    if name == "status" && a.status.is_none() {
        anyhow::bail!("a status event needs --status (e.g. --status chargebacked)");
    }
    let mut body = serde_json::json!({
        "event": name,
        "reason_code": a.reason,
        "status": a.status,
        "notify": !a.silent,
    });
    let key = if a.unique_id {
        "unique_id"
    } else {
        "transaction_id"
    };
    body[key] = serde_json::json!(a.transaction_id);
    let url = format!(
        "{}/_sandbox/genesis/events",
        a.sandbox.trim_end_matches('/')
    );
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("is the sandbox running at {}?", a.sandbox))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("the sandbox answered {status}: {text}");
    }
    println!("{name} raised: {text}");
    Ok(())
}
