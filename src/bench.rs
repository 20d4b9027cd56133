//! `finworker bench queue`: no-op jobs through the real Redis, one worker process. Prints
//! enqueue and processing rates with and without the `job_runs` audit, Redis commands per
//! job, and `redis-benchmark` from the same run as the ceiling.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{QueueOverrides, Settings},
    db,
    metrics::Metrics,
    queue::{engine::NewJob, runtime},
    startup,
};

/// Flags of `bench queue`.
#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Jobs per run.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Worker concurrency of the noop queue.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Skip the redis-benchmark ceiling.
    #[arg(long)]
    pub no_redis_benchmark: bool,
}

/// (script calls = round trips of the runtime, all commands including those run inside scripts)
async fn redis_counts(ctx: &crate::context::AppContext) -> anyhow::Result<(u64, u64)> {
    let mut c = ctx.queue.connection();
    let stats: String = redis::cmd("INFO").arg("stats").query_async(&mut c).await?;
    let total = stats
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO stats without total_commands_processed")?;
    let cmds: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await?;
    let calls = |name: &str| -> u64 {
        cmds.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok((calls("evalsha") + calls("eval"), total))
}

/// Runs the benchmark and prints its figures.
pub async fn queue(mut settings: Settings, args: QueueBenchArgs) -> anyhow::Result<()> {
    db::migrate(&settings.database, settings.database_password()).await?;
    let base_prefix = settings.redis.prefix.clone();
    settings.queues.insert(
        "noop".into(),
        QueueOverrides {
            concurrency: Some(args.concurrency),
            ..Default::default()
        },
    );
    println!(
        "bench queue: {} noop jobs, concurrency {}, fetch batch {}, one worker process, {} cores",
        args.jobs,
        args.concurrency,
        settings.worker.fetch_batch,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (audit, settle_batch) in [(false, 4096), (true, 4096), (true, 1)] {
        let mut s = settings.clone();
        s.worker.audit = audit;
        s.worker.settle_batch = settle_batch;
        // Unbatched settling runs at fsync speed: a smaller sample tells the same story.
        let n = if settle_batch == 1 {
            args.jobs.min(10_000)
        } else {
            args.jobs
        };
        s.redis.prefix = format!("{base_prefix}:bench:{}", uuid::Uuid::new_v4().simple());
        let ctx = startup::build_context(s).await?;
        let jobs: Vec<NewJob> = (0..n).map(|_| NewJob::new("noop", "{}")).collect();
        let t0 = Instant::now();
        ctx.queue
            .push(&jobs, ctx.settings.worker.idempotency_ttl)
            .await?;
        let enqueue = t0.elapsed();
        drop(jobs);

        let before = redis_counts(&ctx).await?;
        let token = CancellationToken::new();
        let t1 = Instant::now();
        let worker = tokio::spawn(runtime::run(
            ctx.clone(),
            vec!["noop".into()],
            token.clone(),
        ));
        let labels = Metrics::job("noop");
        let deadline = Instant::now() + Duration::from_secs(600);
        // Poll the in-process counter (no Redis traffic that would skew the round-trip
        // count), then wait for the last outcomes to be settled.
        loop {
            let done = ctx.metrics.succeeded.get_or_create(&labels).get() as usize;
            if done >= n {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "bench did not finish in 10 minutes ({done} done)"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        while ctx.queue.stats("noop").await?.in_flight > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let process = t1.elapsed();
        let after = redis_counts(&ctx).await?;
        token.cancel();
        worker.await??;
        ctx.queue.delete_namespace().await?;
        println!(
            "  {:>6} jobs  audit {:<3} settle batch {:<4}  enqueue {:>9.0} jobs/s ({:.2}s)   process {:>8.0} jobs/s ({:.2}s)   redis round trips/job {:.4} (commands run inside scripts/job {:.2})",
            n,
            if audit { "on" } else { "off" },
            settle_batch,
            n as f64 / enqueue.as_secs_f64(),
            enqueue.as_secs_f64(),
            n as f64 / process.as_secs_f64(),
            process.as_secs_f64(),
            (after.0 - before.0) as f64 / n as f64,
            (after.1 - before.1) as f64 / n as f64,
        );
    }
    if !args.no_redis_benchmark {
        let url = url_host_port(&settings.redis.url);
        println!(
            "ceiling: redis-benchmark -q -t lpush,rpop -n 100000 -h {} -p {}",
            url.0, url.1
        );
        let out = std::process::Command::new("redis-benchmark")
            .args([
                "-q",
                "-t",
                "lpush,rpop",
                "-n",
                "100000",
                "-h",
                &url.0,
                "-p",
                &url.1,
            ])
            .output();
        match out {
            Ok(o) => {
                for line in String::from_utf8_lossy(&o.stdout)
                    .split(['\r', '\n'])
                    .filter(|l| l.contains("requests per second"))
                {
                    println!("  {}", line.trim());
                }
            }
            Err(e) => println!("  redis-benchmark not run: {e}"),
        }
    }
    Ok(())
}

fn url_host_port(url: &str) -> (String, String) {
    let rest = url.trim_start_matches("redis://");
    let hostport = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379");
    let mut it = hostport.splitn(2, ':');
    let host = it.next().unwrap_or("127.0.0.1").to_string();
    let port = it.next().unwrap_or("6379").to_string();
    (host, port)
}

/// `bench xlsx-read`: calamine alone reading every cell of the first sheet, streamed, as the
/// reference for the XLSX upload figure.
pub fn xlsx_read(path: &std::path::Path) -> anyhow::Result<()> {
    use calamine::{Reader, Xlsx, open_workbook};
    let t0 = std::time::Instant::now();
    let mut wb: Xlsx<_> = open_workbook(path)?;
    let name = wb
        .sheet_names()
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no sheets"))?;
    let mut cells = wb.worksheet_cells_reader(&name)?;
    let (mut rows, mut last, mut n) = (0u64, u32::MAX, 0u64);
    while let Some(c) = cells.next_cell()? {
        n += 1;
        if c.get_position().0 != last {
            last = c.get_position().0;
            rows += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let data_rows = rows.saturating_sub(1);
    println!(
        "{:<34} {:>9} rows in {:>6.2} s = {:>8.0} rows/s ({n} cells)",
        "bare calamine read (xlsx)",
        data_rows,
        secs,
        data_rows as f64 / secs
    );
    Ok(())
}

/// Flags of `bench scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleBenchArgs {
    /// Jobs per measurement.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Worker process counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub processes: Vec<usize>,
    /// `noop` (the queue alone) or `effect` (each job commits one fenced row to Postgres
    /// through PgBouncer, as real jobs do).
    #[arg(long, default_value = "noop")]
    pub job: String,
    /// Jobs each process runs at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
}

/// Redis's CPU seconds (user + sys) and Postgres's commits in the bench database, now.
async fn server_load(ctx: &crate::context::AppContext) -> anyhow::Result<(f64, i64)> {
    let mut c = ctx.queue.connection();
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut c).await?;
    let cpu = info
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
        .sum();
    let mut tx = ctx.db.begin().await?;
    let commits: i64 = tx
        .scalar(sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        ))
        .await?;
    tx.commit().await?;
    Ok((cpu, commits))
}

/// `bench scale`: the same jobs run by 1, 2, 4… `finworker run` processes sharing one Redis
/// and one Postgres through PgBouncer; prints jobs/s with Redis's CPU and Postgres's commits
/// per second beside them (where the next limit is).
pub async fn scale(mut settings: Settings, args: ScaleBenchArgs) -> anyhow::Result<()> {
    db::migrate(&settings.database, settings.database_password()).await?;
    let (job_type, payload) = match args.job.as_str() {
        "noop" => ("noop", "{}".to_string()),
        "effect" => ("test_job", r#"{"label":"bench","effect":true}"#.to_string()),
        other => anyhow::bail!("--job {other}: use noop or effect"),
    };
    settings.worker.allow_test_jobs = true;
    let base_prefix = settings.redis.prefix.clone();
    let exe = std::env::current_exe()?;
    println!(
        "bench scale: {} `{}` jobs per measurement, {} per process at once, {} cores, one Redis, one Postgres through PgBouncer",
        args.jobs,
        args.job,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>9} {:>10} {:>9} {:>16} {:>18}",
        "processes", "jobs/s", "seconds", "redis cpu (cores)", "postgres commits/s"
    );
    for &k in &args.processes {
        let mut s = settings.clone();
        s.redis.prefix = format!("{base_prefix}:scale:{}", uuid::Uuid::new_v4().simple());
        let ctx = startup::build_context(s.clone()).await?;
        let jobs: Vec<NewJob> = (0..args.jobs)
            .map(|_| NewJob::new(job_type, &payload))
            .collect();
        ctx.queue
            .push(&jobs, ctx.settings.worker.idempotency_ttl)
            .await?;
        drop(jobs);
        let (cpu0, commits0) = server_load(&ctx).await?;
        let t0 = Instant::now();
        let mut children = Vec::new();
        for _ in 0..k {
            children.push(
                tokio::process::Command::new(&exe)
                    .args(["run", "--no-http", "--queues", job_type])
                    .env("FINWORKER__REDIS__PREFIX", &s.redis.prefix)
                    .env("FINWORKER__WORKER__ALLOW_TEST_JOBS", "true")
                    .env("FINWORKER__LOG__LEVEL", "error")
                    .env(
                        format!(
                            "FINWORKER__QUEUES__{}__CONCURRENCY",
                            job_type.to_uppercase()
                        ),
                        args.concurrency.to_string(),
                    )
                    // The built-in schedules would add their own jobs to the measurement.
                    .env("FINWORKER__SWEEPER__ENABLED", "false")
                    .env("FINWORKER__RETENTION__SCHEDULE", "")
                    .env("FINWORKER__BILLING__RECURRING", "false")
                    .stdout(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()?,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let st = ctx.queue.stats(job_type).await?;
            if st.waiting + st.scheduled + st.in_flight == 0 {
                break;
            }
            for c in &mut children {
                if let Some(status) = c.try_wait()? {
                    anyhow::bail!("a worker process exited ({status}) before the jobs were done");
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "not done in 15 minutes: {st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let (cpu1, commits1) = server_load(&ctx).await?;
        for c in &mut children {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for c in &mut children {
            let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
        }
        ctx.queue.delete_namespace().await?;
        println!(
            "{k:>9} {:>10.0} {secs:>9.1} {:>17.2} {:>18.0}",
            args.jobs as f64 / secs,
            (cpu1 - cpu0) / secs,
            (commits1 - commits0) as f64 / secs
        );
    }
    Ok(())
}
