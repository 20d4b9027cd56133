//! Billing under crashes, freezes and a Redis that forgets: the daemon is a real child
//! process, killed (SIGKILL) at each step of a debit, frozen (SIGSTOP) past its lease, or its
//! Redis namespace flushed mid-run. The sandbox gateway accepts a repeated transaction_id as a
//! second debit (the worst case), so its ledger shows any double debit.

use std::{
    collections::BTreeSet,
    os::unix::process::ExitStatusExt,
    time::{Duration, Instant},
};

use finworker::{config::Settings, sandbox::Knobs, startup::Roles};
use uuid::Uuid;

use crate::{
    billing::{account, billing, debtors_csv, iban, sandbox_knobs, start_run, wait_run},
    helpers::{
        app::{TestApp, spawn_app_roles},
        eventually,
        process::Daemon,
    },
    verification::{SandboxServer, sandbox},
};

fn worst_case_knobs(latency_ms: u64) -> Knobs {
    Knobs {
        genesis_duplicates: "accept".into(),
        latency_ms,
        ..sandbox_knobs()
    }
}

fn crash_settings(s: &mut Settings, sb: &SandboxServer) {
    billing(s, sb);
    s.gateway.accounts.insert("main".into(), {
        let mut a = account(sb, "t-main");
        a.rate_limit = 1000;
        a
    });
    s.billing.claim_size = 25;
    s.billing.in_flight = 16;
    s.billing.batch_jobs = 4;
    s.sweeper.enabled = true;
    s.sweeper.interval = Duration::from_secs(1);
    s.sweeper.stale_after = Duration::from_secs(4);
}

async fn workers_only(sb: &SandboxServer) -> TestApp {
    spawn_app_roles(
        Roles {
            workers: false,
            ..Roles::default()
        },
        |s| crash_settings(s, sb),
    )
    .await
}

/// `n` debtors from `base`: every tenth has no mandate (invalid: never debited).
type Rows = Vec<(String, String, i64)>;

fn rows(base: u32, n: u32) -> (Rows, Vec<String>, Vec<String>) {
    let all: Vec<(String, String, i64)> = (0..n)
        .map(|k| (format!("D{}", base + k), iban(base + k), 1000))
        .collect();
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (k, r) in all.iter().enumerate() {
        if k % 10 == 9 {
            bad.push(r.1.clone())
        } else {
            ok.push(r.1.clone())
        }
    }
    (all, ok, bad)
}

fn csv_with_invalid(all: &[(String, String, i64)]) -> Vec<u8> {
    let text = String::from_utf8(debtors_csv(all)).unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if i > 0 && (i - 1) % 10 == 9 {
            // Drop the mandate reference and date: the debtor is invalid.
            let mut cells: Vec<&str> = line.split(';').collect();
            cells[4] = "";
            cells[5] = "";
            out.push_str(&cells.join(";"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// Imports and validates a file with a short-lived clean daemon.
async fn import(app: &TestApp, bytes: &[u8]) -> Uuid {
    let importer = Daemon::start(&app.settings, &["run", "--no-http"]);
    let id = crate::uploads::submit(app, "debtors.csv", bytes).await;
    crate::billing::wait_validated(app, id).await;
    drop(importer);
    id
}

fn assert_exactly_once(sb: &SandboxServer, ok: &[String], bad: &[String], what: &str) {
    let per = sb.sandbox.ledger().per_iban();
    let doubled: Vec<_> = per.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "{what}: debited twice: {doubled:?}");
    let missing: Vec<_> = ok.iter().filter(|i| !per.contains_key(*i)).collect();
    assert!(
        missing.is_empty(),
        "{what}: never debited: {} of {}",
        missing.len(),
        ok.len()
    );
    assert!(
        bad.iter().all(|i| !per.contains_key(i)),
        "{what}: an ineligible debtor was debited"
    );
}

#[tokio::test]
async fn crash_matrix_sigkill_at_each_step_of_a_debit_leaves_exactly_one_debit_per_eligible_debtor()
{
    // 30 ms per call: a kill at `send_started` finds requests in flight.
    let sb = sandbox(worst_case_knobs(30)).await;
    let app = workers_only(&sb).await;
    let points = [
        ("claim_before_commit", 3),
        ("claim_after_commit", 5),
        ("send_started", 200),
        ("answer_received", 300),
        ("outcome_recorded", 20),
    ];
    // CRASH_POINTS=a,b runs only those points (for debugging one of them).
    let only = std::env::var("CRASH_POINTS").ok();
    for (i, (point, n)) in points.iter().enumerate() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|p| p == *point))
        {
            continue;
        }
        let base = 100_000 * (u32::try_from(i).unwrap() + 1);
        let (all, ok, bad) = rows(base, 2000);
        let upload = import(&app, &csv_with_invalid(&all)).await;
        let crash = format!("{point}:{n}");
        let mut doomed = Daemon::start_in(
            &app.settings,
            &["run", "--no-http"],
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
            &[("FINWORKER_CRASH_AT", crash.as_str())],
        );
        let run = start_run(&app, upload, "main", "legacy").await;
        // Polled without blocking: the sandbox gateway runs on this test's runtime.
        let status = eventually(Duration::from_secs(60), "the daemon to die", || {
            let st = doomed.child.try_wait().unwrap();
            async move { st }
        })
        .await;
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: the daemon killed itself at the point"
        );
        let started = Instant::now();
        let a = Daemon::start(&app.settings, &["run", "--no-http"]);
        let _b = Daemon::start(&app.settings, &["run", "--no-http"]);
        let r = wait_run(&app, run, Duration::from_secs(240)).await;
        if std::env::var("CRASH_LOG").is_ok() {
            eprintln!("{}", a.log_text());
        }
        assert_eq!(r.status, "completed", "{point}");
        assert_exactly_once(&sb, &ok, &bad, point);
        let mut c = app.db.connect().await;
        let (approved, excluded): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM billing_attempts WHERE run_id = $1 AND status = 'approved'), \
                    (SELECT count(*) FROM billing_items WHERE run_id = $1 AND state = 'excluded' AND reason = 'invalid')",
        )
        .bind(run)
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(
            (approved, excluded),
            (1800, 200),
            "{point}: every debit recorded"
        );
        eprintln!("crash at {point}: recovered in {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn two_worker_processes_share_one_run_and_debit_each_debtor_once() {
    let sb = sandbox(worst_case_knobs(20)).await;
    let app = workers_only(&sb).await;
    let (all, ok, bad) = rows(900_000, 600);
    let upload = import(&app, &csv_with_invalid(&all)).await;
    sb.sandbox.clear_calls();
    // Two batch jobs per process at most, four per run: both processes work the run.
    let two = [("FINWORKER__QUEUES__BILLING_BATCH__CONCURRENCY", "2")];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let a = Daemon::start_in(&app.settings, &["run", "--no-http"], dir, &two);
    let b = Daemon::start_in(&app.settings, &["run", "--no-http"], dir, &two);
    // Both processes up before the run starts, so both take batch jobs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let run = start_run(&app, upload, "main", "legacy").await;
    let r = wait_run(&app, run, Duration::from_secs(60)).await;
    assert_eq!(r.status, "completed");
    assert_exactly_once(&sb, &ok, &bad, "two processes");
    let clients: BTreeSet<String> = sb
        .sandbox
        .calls()
        .calls
        .iter()
        .filter(|c| c.path.starts_with("/process/"))
        .filter_map(|c| c.client.clone())
        .collect();
    let pids: BTreeSet<String> = [a.pid(), b.pid()]
        .iter()
        .map(|p| format!("pid/{p}"))
        .collect();
    for p in &pids {
        assert!(
            clients.iter().any(|c| c.contains(p.as_str())),
            "{p} made debits: {clients:?}"
        );
    }
}

#[tokio::test]
async fn a_worker_frozen_past_its_lease_during_calls_cannot_record_and_nothing_is_doubled() {
    let sb = sandbox(worst_case_knobs(1200)).await;
    let app = workers_only(&sb).await;
    let (all, ok, bad) = rows(950_000, 40);
    let upload = import(&app, &csv_with_invalid(&all)).await;
    let frozen = Daemon::start(&app.settings, &["run", "--no-http"]);
    let run = start_run(&app, upload, "main", "legacy").await;
    // Calls in flight (the sandbox answers after 1.2 s): freeze the process.
    eventually(Duration::from_secs(30), "debits in flight", || async {
        (sb.sandbox.calls().count("/process/") > 0 || {
            let mut c = app.db.connect().await;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM billing_attempts WHERE status = 'submitted'",
            )
            .fetch_one(&mut c)
            .await
            .unwrap();
            n > 0
        })
        .then_some(())
    })
    .await;
    nix::sys::signal::kill(frozen.pid(), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let _rescuer = Daemon::start(&app.settings, &["run", "--no-http"]);
    // Past its lease (3 heartbeats of 500 ms): its jobs run elsewhere; then it wakes up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    nix::sys::signal::kill(frozen.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    let r = wait_run(&app, run, Duration::from_secs(90)).await;
    assert_eq!(r.status, "completed");
    assert_exactly_once(&sb, &ok, &bad, "frozen worker");
    let log = frozen.log_text();
    drop(frozen);
    assert!(
        log.contains("lost its lease") || log.contains("stale") || log.contains("taken over"),
        "the frozen worker's writes were refused: {log}"
    );
}

#[tokio::test]
async fn flushall_mid_run_the_run_still_completes_exactly_once() {
    let sb = sandbox(worst_case_knobs(10)).await;
    let app = crate::helpers::spawn_app_with(|s| {
        crash_settings(s, &sb);
        s.gateway.accounts.get_mut("main").unwrap().rate_limit = 100;
    })
    .await;
    let (all, ok, bad) = rows(970_000, 400);
    let upload = crate::billing::validated(&app, &csv_with_invalid(&all)).await;
    let run = start_run(&app, upload, "main", "legacy").await;
    eventually(Duration::from_secs(20), "debits under way", || async {
        (sb.sandbox.calls().count("/process/") >= 50).then_some(())
    })
    .await;
    app.ctx.queue.delete_namespace().await.unwrap(); // FLUSHALL, for this test's keys only
    let r = wait_run(&app, run, Duration::from_secs(120)).await;
    assert_eq!(r.status, "completed");
    assert_exactly_once(&sb, &ok, &bad, "flushall");
}

#[tokio::test]
async fn recurring_billing_with_two_processes_bills_a_due_profile_once_per_cycle() {
    let sb = sandbox(worst_case_knobs(5)).await;
    let app = spawn_app_roles(
        Roles {
            workers: false,
            ..Roles::default()
        },
        |s| {
            crash_settings(s, &sb);
            s.billing.recurring = true;
            s.billing.recurring_interval = Duration::from_secs(1);
        },
    )
    .await;
    // Six debtors at 2.99 EUR: flywheel profiles, billed once by an upload run.
    let (all, _, _) = rows(990_000, 6);
    let all: Rows = all.into_iter().map(|(r, i, _)| (r, i, 299)).collect();
    let upload = import(&app, &debtors_csv(&all)).await;
    let a = Daemon::start(&app.settings, &["run", "--no-http"]);
    let b = Daemon::start(&app.settings, &["run", "--no-http"]);
    let first = start_run(&app, upload, "main", "flywheel").await;
    wait_run(&app, first, Duration::from_secs(60)).await;
    assert_eq!(sb.sandbox.ledger().debits.len(), 6);
    // Ninety days pass for four of them: their next cycle is due.
    let mut c = app.db.connect().await;
    sqlx::query("UPDATE billing_attempts SET created_at = now() - interval '91 days'")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE debtor_profiles SET next_bill_at = now() - interval '1 minute' \
         WHERE id IN (SELECT id FROM debtor_profiles ORDER BY id LIMIT 4)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "a recurring run completed",
        || async {
            let mut c = app.db.connect().await;
            let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM billing_runs WHERE source = 'recurring' AND status = 'completed'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
            (n >= 1).then_some(())
        },
    )
    .await;
    // A few more ticks: nothing is due any more, so nothing more is billed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let per = sb.sandbox.ledger().per_iban();
    let mut counts: Vec<usize> = per.values().copied().collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 1, 2, 2, 2, 2], "{per:?}");
    let (runs, next_ok): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM billing_runs WHERE source = 'recurring'), \
         (SELECT bool_and(next_bill_at > now() + interval '89 days') FROM debtor_profiles)",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(
        runs, 1,
        "one recurring run, whatever the number of processes"
    );
    assert!(next_ok, "every profile's next cycle is 90 days out");
    drop((a, b));
}

#[tokio::test]
async fn gateway_credentials_never_reach_logs_or_config_check() {
    let sb = sandbox(worst_case_knobs(0)).await;
    let app = workers_only(&sb).await;
    let out = crate::helpers::process::cli_ok(&app.settings, &["config", "check"]);
    assert!(out.contains("[gateway.accounts.main]"), "{out}");
    assert!(!out.contains(crate::billing::GATEWAY_PASSWORD), "{out}");
    let listed = crate::helpers::process::cli_ok(&app.settings, &["accounts", "list"]);
    assert!(
        listed.contains("FINWORKER__GATEWAY__ACCOUNTS__MAIN__PASSWORD"),
        "{listed}"
    );
    assert!(
        !listed.contains(crate::billing::GATEWAY_PASSWORD),
        "{listed}"
    );
    let (all, ok, bad) = rows(995_000, 20);
    let upload = import(&app, &csv_with_invalid(&all)).await;
    let d = Daemon::start_in(
        &app.settings,
        &["run", "--no-http"],
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &[(
            "RUST_LOG",
            "debug,sqlx=warn,hyper=info,reqwest=info,h2=info",
        )],
    );
    let run = start_run(&app, upload, "main", "legacy").await;
    wait_run(&app, run, Duration::from_secs(60)).await;
    assert_exactly_once(&sb, &ok, &bad, "secrets");
    let log = d.log_text();
    assert!(
        log.contains("billing run completed"),
        "the log is the daemon's"
    );
    assert!(!log.contains(crate::billing::GATEWAY_PASSWORD));
    assert!(
        !log.contains("t-main/"),
        "the terminal token (part of the URL) is not logged"
    );
    for i in &ok {
        assert!(!log.contains(i.as_str()), "a whole IBAN in the log");
    }
    let mut c = app.db.connect().await;
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM gateway_accounts WHERE breaker::text LIKE '%' || $1 || '%' OR password_env LIKE '%' || $1 || '%'",
    )
    .bind(crate::billing::GATEWAY_PASSWORD)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(stored, 0, "no password in the database");
}
