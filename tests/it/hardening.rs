//! The runtime under what production throws at it: frozen workers (fencing), foreign
//! writers' bad fields, snoozes, failure hooks, outages, producers overreaching.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use serde_json::json;

use crate::helpers::{
    app::TOKEN,
    eventually,
    process::{Daemon, cli_ok},
    spawn_api_only, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn a_worker_frozen_past_its_lease_commits_nothing_and_the_job_completes_once() {
    let app = spawn_api_only().await;
    let args = ["run", "--no-http", "--queues", "test_job"];
    let mut first = Daemon::start(&app.settings, &args);
    // Wait until the first daemon is registered, so it is the one that takes the job.
    eventually(
        Duration::from_secs(15),
        "the first daemon to register",
        || async { (app.ctx.queue.workers().await.unwrap().len() == 1).then_some(()) },
    )
    .await;
    let id = app
        .enqueue(
            "test_job",
            json!({"label": "frozen", "sleep_ms": 3000, "effect": true}),
        )
        .await;
    eventually(Duration::from_secs(15), "attempt 1 to start", || async {
        let n = app
            .scalar(&format!(
                "SELECT count(*) FROM job_runs WHERE job_id = '{id}' AND status = 'running'"
            ))
            .await;
        (n == 1).then_some(())
    })
    .await;
    let second = Daemon::start(&app.settings, &args);

    // Freeze the owner well past its lease (3 x 500 ms) and past the end of its sleep: on
    // SIGCONT its job wakes up wanting to commit at once.
    kill(first.pid(), Signal::SIGSTOP).unwrap();
    eventually(
        Duration::from_secs(20),
        "the peer to take the job over",
        || async {
            let n = app
                .scalar(&format!(
                    "SELECT count(*) FROM job_runs WHERE job_id = '{id}' AND attempt = 2"
                ))
                .await;
            (n == 1).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill(first.pid(), Signal::SIGCONT).unwrap();

    let runs = app.finished_runs(&id, Duration::from_secs(30)).await;
    // Give the woken owner time to do whatever it still would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let effects: Vec<(i32,)> =
        sqlx::query_as("SELECT attempt FROM test_job_effects WHERE job_id = $1 AND attempt > 0")
            .bind(&id)
            .fetch_all(&mut app.db.connect().await)
            .await
            .unwrap();
    assert_eq!(
        effects,
        vec![(2,)],
        "only the owner's attempt committed: {runs:?}"
    );
    let all = app.runs(&id).await;
    assert_eq!(all.len(), 2, "both attempts stay visible: {all:?}");
    // Attempt 1 was either stopped by its woken lease keeper (interrupted) or reached its
    // commit first and was refused by the fence (stale).
    assert!(
        all[0].attempt == 1 && ["interrupted", "stale"].contains(&all[0].status.as_str()),
        "{all:?}"
    );
    assert_eq!((all[1].attempt, all[1].status.as_str()), (2, "succeeded"));
    assert_ne!(all[0].worker, all[1].worker);
    // The frozen process noticed, stopped its job and registered again; it keeps working.
    eventually(
        Duration::from_secs(10),
        "the woken daemon to log its lost lease",
        || async { first.log_text().contains("lease lost").then_some(()) },
    )
    .await;
    let later = app.enqueue("test_job", json!({"label": "after"})).await;
    assert_eq!(
        app.finished_runs(&later, Duration::from_secs(15))
            .await
            .last()
            .unwrap()
            .status,
        "succeeded"
    );
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the woken daemon is still running"
    );
    drop(second);
}

#[tokio::test]
async fn a_revoked_attempt_cannot_commit_and_a_revocation_waits_for_a_commit_under_way() {
    use finworker::queue::fence::{self, Fence, FenceError};
    let app = spawn_api_only().await;
    let db = &app.ctx.db;

    // Attempt 1 holds its token in an open transaction; a recovery revoking it must wait.
    let mut holder = db.begin().await.unwrap();
    Fence::new("job-a", 1).check(&mut holder).await.unwrap();
    let db2 = db.clone();
    let revoker = tokio::spawn(async move {
        let mut tx = db2.begin().await.unwrap();
        fence::revoke(&mut tx, &[Fence::new("job-a", 1)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !revoker.is_finished(),
        "the revocation waits for the holder's commit"
    );
    holder.commit().await.unwrap();
    revoker.await.unwrap();

    // Now attempt 1 is refused; attempt 2 may commit; attempt 1 stays refused after it.
    let mut tx = db.begin().await.unwrap();
    let refused = Fence::new("job-a", 1).check(&mut tx).await;
    assert!(
        matches!(refused, Err(FenceError::Stale { attempt: 1, .. })),
        "{refused:?}"
    );
    drop(tx);
    let mut tx = db.begin().await.unwrap();
    Fence::new("job-a", 2).check(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    // A later attempt having committed, an earlier one never commits again.
    let mut tx = db.begin().await.unwrap();
    assert!(Fence::new("job-b", 3).check(&mut tx).await.is_ok());
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(Fence::new("job-b", 2).check(&mut tx).await.is_err());
}

#[tokio::test]
async fn jobs_written_by_a_php_client_with_bad_fields_are_dead_lettered_alone() {
    let app = spawn_app().await;
    let p = app.ctx.queue.prefix().to_string();
    let mut c = app.ctx.queue.connection();
    // As phpredis would write them following jobs/README.md, but with enqueued_at from
    // microtime(true) * 1000 (a float), and one payload that is not UTF-8.
    let mut bad = Vec::new();
    let mut good = Vec::new();
    for i in 0..7 {
        let id = uuid::Uuid::now_v7().to_string();
        let enqueued_at = if i % 3 == 0 {
            bad.push(id.clone());
            "1764489600123.4568".to_string()
        } else {
            good.push(id.clone());
            "1764489600123".to_string()
        };
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(
                format!("{p}:job:{id}"),
                &[
                    ("type", "noop"),
                    ("payload", "{}"),
                    ("attempt", "0"),
                    ("failures", "0"),
                    ("orphans", "0"),
                    ("enqueued_at", enqueued_at.as_str()),
                ],
            )
            .rpush(format!("{p}:q:noop:ready"), &id)
            .sadd(format!("{p}:queues"), "noop")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let latin1 = uuid::Uuid::now_v7().to_string();
    let _: () = redis::pipe()
        .atomic()
        .hset_multiple(
            format!("{p}:job:{latin1}"),
            &[
                ("type", b"noop".to_vec()),
                ("payload", b"{\"name\":\"M\xfcller\"}".to_vec()),
                ("attempt", b"0".to_vec()),
                ("failures", b"0".to_vec()),
                ("orphans", b"0".to_vec()),
                ("enqueued_at", b"1764489600123".to_vec()),
            ],
        )
        .rpush(format!("{p}:q:noop:ready"), &latin1)
        .query_async(&mut c)
        .await
        .unwrap();
    let over_http = app.enqueue("noop", json!({})).await;

    for id in good.iter().chain(std::iter::once(&over_http)) {
        let runs = app.finished_runs(id, Duration::from_secs(10)).await;
        assert_eq!(runs.last().unwrap().status, "succeeded", "{id}");
    }
    for id in &bad {
        let runs = app.finished_runs(id, Duration::from_secs(10)).await;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, "dead");
        let (_, error) = app.dead_error(id).await.unwrap();
        assert!(
            error.contains("field `enqueued_at` must be an integer")
                && error.contains("1764489600123.4568"),
            "{error}"
        );
    }
    let (_, error) = app.dead_error(&latin1).await.unwrap();
    assert!(error.contains("payload is not UTF-8 text"), "{error}");
    let (in_flight,): (u64,) = (app.ctx.queue.stats("noop").await.unwrap().in_flight,);
    assert_eq!(in_flight, 0, "nothing stays in flight");
}

#[tokio::test]
async fn a_snoozed_job_spends_no_attempt() {
    let app = spawn_app().await;
    // max_attempts is 3 for test_job: five snoozes would have spent them all.
    let id = app
        .enqueue("test_job", json!({"label": "snoozy", "snooze_times": 5}))
        .await;
    let runs = app.finished_runs(&id, Duration::from_secs(20)).await;
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        statuses,
        vec![
            "snoozed",
            "snoozed",
            "snoozed",
            "snoozed",
            "snoozed",
            "succeeded"
        ]
    );
    assert!(app.dead_error(&id).await.is_none());
}

#[tokio::test]
async fn panics_timeouts_and_permanent_failures_run_the_failure_hook_once() {
    let app = spawn_app_with(|s| {
        s.queues.get_mut("test_job").unwrap().timeout = Some(Duration::from_millis(300));
    })
    .await;
    let panics = app
        .enqueue("test_job", json!({"label": "p", "panic": true}))
        .await;
    let slow = app
        .enqueue("test_job", json!({"label": "t", "sleep_ms": 5000}))
        .await;
    let refuses = app
        .enqueue("test_job", json!({"label": "r", "permanent": true}))
        .await;
    let fine = app.enqueue("test_job", json!({"label": "ok"})).await;
    // A job whose workers died under it max_orphans times: poison.
    let poison = uuid::Uuid::now_v7().to_string();
    let p = app.ctx.queue.prefix().to_string();
    let orphans = app.settings.worker.max_orphans.to_string();
    let _: () = redis::pipe()
        .atomic()
        .hset_multiple(
            format!("{p}:job:{poison}"),
            &[
                ("type", "test_job"),
                ("payload", r#"{"label":"poison"}"#),
                ("attempt", "0"),
                ("failures", "0"),
                ("orphans", orphans.as_str()),
                ("enqueued_at", "1764489600123"),
            ],
        )
        .rpush(format!("{p}:q:test_job:ready"), &poison)
        .query_async(&mut app.ctx.queue.connection())
        .await
        .unwrap();
    for (id, attempts, what) in [
        (&panics, 3, "panicked"),
        (&slow, 3, "timed out"),
        (&refuses, 1, "refuses permanently"),
        (&poison, 1, "poison"),
    ] {
        let runs = app.finished_runs(id, Duration::from_secs(30)).await;
        assert_eq!(runs.len(), attempts, "{what}: {runs:?}");
        let hook: Vec<(String,)> =
            sqlx::query_as("SELECT label FROM test_job_effects WHERE job_id = $1 AND attempt = 0")
                .bind(id)
                .fetch_all(&mut app.db.connect().await)
                .await
                .unwrap();
        assert_eq!(hook.len(), 1, "{what}: the hook ran once");
        assert!(
            hook[0].0.starts_with("failure hook: ") && hook[0].0.contains(what),
            "{hook:?}"
        );
    }
    app.finished_runs(&fine, Duration::from_secs(10)).await;
    let n = app
        .scalar(&format!(
            "SELECT count(*) FROM test_job_effects WHERE job_id = '{fine}'"
        ))
        .await;
    assert_eq!(n, 0, "no hook for a job that succeeded");
}

#[tokio::test]
async fn producers_enqueue_only_producer_types_in_their_own_key_namespace() {
    let app = spawn_app().await;
    let upload = uuid::Uuid::now_v7();

    // Internal types are refused, whatever the payload.
    let r = app
        .post_job("validation", &json!({"upload_id": upload}), None)
        .await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("internal"));
    let r = app
        .post_job(
            "vop",
            &json!({"upload_id": upload, "chunk_no": 0, "deferrals": 99}),
            None,
        )
        .await;
    assert_eq!(r.status(), 403);
    // Internal fields of a producer type are refused by name.
    let r = app
        .post_job(
            "upload",
            &json!({"object_key": "a.csv", "deferrals": 3}),
            None,
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("deferrals"));

    // A producer's key cannot pre-claim the key finworker uses for a stage.
    let r = app
        .post_job("noop", &json!({}), Some(&format!("validation:{upload}")))
        .await;
    assert_eq!(r.status(), 202);
    let internal = app
        .ctx
        .enqueue(
            &<finworker::jobs::Noop as finworker::queue::job::Job>::example(),
            finworker::context::EnqueueOptions {
                idempotency_key: Some(format!("validation:{upload}")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!internal.duplicate, "the internal key is still free");

    // The same key with another payload: 422 naming the first job, nothing enqueued.
    let first = app
        .post_job("test_job", &json!({"label": "a"}), Some("order-77"))
        .await;
    assert_eq!(first.status(), 202);
    let first_id = first.json::<serde_json::Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let again = app
        .post_job("test_job", &json!({"label": "a"}), Some("order-77"))
        .await;
    assert_eq!(again.status(), 200, "same payload: a duplicate");
    let other = app
        .post_job("test_job", &json!({"label": "b"}), Some("order-77"))
        .await;
    assert_eq!(other.status(), 422);
    let body = other.text().await.unwrap();
    assert!(body.contains(&first_id), "{body}");
    let _ = TOKEN;
}

#[tokio::test]
async fn the_cli_enqueue_obeys_the_producer_rules_too() {
    let app = spawn_api_only().await;
    let out = crate::helpers::process::command(
        &app.settings,
        &[
            "enqueue",
            "upload_chunk",
            &json!({"upload_id": uuid::Uuid::now_v7(), "chunk_no": 0}).to_string(),
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("internal"));
    let id = cli_ok(&app.settings, &["enqueue", "noop", "{}"]);
    assert_eq!(id.trim().len(), 36);
}

#[tokio::test]
async fn a_lost_redis_namespace_makes_workers_stop_their_jobs_and_register_again() {
    let app = spawn_app().await;
    let id = app
        .enqueue(
            "test_job",
            json!({"label": "flushed", "sleep_ms": 2000, "effect": true}),
        )
        .await;
    eventually(Duration::from_secs(10), "the job to start", || async {
        (app.ctx.queue.stats("test_job").await.unwrap().in_flight == 1).then_some(())
    })
    .await;
    // What FLUSHALL does to this namespace (other tests share the server).
    app.ctx.queue.delete_namespace().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the runtime to register again",
        || async { (app.ctx.queue.workers().await.unwrap().len() == 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = app
        .scalar(&format!(
            "SELECT count(*) FROM test_job_effects WHERE job_id = '{id}'"
        ))
        .await;
    assert_eq!(
        n, 0,
        "the job whose lease vanished was stopped before its commit"
    );
    let later = app.enqueue("noop", json!({})).await;
    app.finished_runs(&later, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_postgres_outage_longer_than_the_retry_budget_dead_letters_nothing_and_the_upload_completes()
 {
    use crate::helpers::{chaos::Chaos, process::command};
    let db = crate::helpers::db::TestDb::create().await;
    let prefix = format!("fwt:{}", uuid::Uuid::new_v4().simple());
    let mut settings = crate::helpers::app::test_settings(&db, &prefix);
    // Every connection to PgBouncer goes through a proxy we can cut.
    let pgbouncer: std::net::SocketAddr = "127.0.0.1:6432".parse().unwrap();
    let chaos = Chaos::start(pgbouncer).await;
    settings.database.url = settings
        .database
        .url
        .replace("127.0.0.1:6432", &chaos.addr.to_string());
    assert!(
        settings.database.url.contains(&chaos.addr.to_string()),
        "{}",
        settings.database.url
    );
    settings.database.acquire_timeout = Duration::from_secs(1);
    settings.upload.chunk_rows = 500;
    // A retry budget of well under a second: without snoozing, the outage spends it.
    for q in ["upload", "upload_chunk", "validation", "validation_chunk"] {
        let o = settings.queues.entry(q.into()).or_default();
        o.max_attempts = Some(2);
        o.backoff_base = Some(Duration::from_millis(100));
        o.backoff_max = Some(Duration::from_millis(200));
    }
    let app =
        crate::helpers::app::start(db, settings.clone(), finworker::startup::Roles::default())
            .await;
    let dir = tempfile::tempdir().unwrap();
    let (bytes, summary) = crate::uploads::generate(crate::uploads::gen_args(
        &dir,
        20_000,
        finworker::testdata::GenFormat::Csv,
        7,
    ));
    let path = dir.path().join("outage.csv");
    std::fs::write(&path, &bytes).unwrap();

    // The waiting CLI, as finance staff would run it (its database also behind the proxy).
    let cli = command(&settings, &["upload", path.to_str().unwrap(), "--json"])
        .env("FINWORKER__DATABASE__ACQUIRE_TIMEOUT", "1s")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id: uuid::Uuid = eventually(
        Duration::from_secs(30),
        "the upload to start importing",
        || async {
            let mut c = app.db.connect().await;
            let row: Option<(uuid::Uuid, i32)> =
                sqlx::query_as("SELECT id, chunks_done FROM uploads LIMIT 1")
                    .fetch_optional(&mut c)
                    .await
                    .unwrap();
            row.filter(|(_, done)| *done >= 1).map(|(id, _)| id)
        },
    )
    .await;

    chaos.break_networking();
    tokio::time::sleep(Duration::from_secs(12)).await;
    chaos.restore();

    let status = tokio::task::spawn_blocking(move || {
        let out = cli.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    let (status, stdout, stderr) = tokio::time::timeout(Duration::from_secs(120), status)
        .await
        .expect("the CLI returns once the upload ends")
        .unwrap();
    assert!(status.success(), "the CLI rode out the outage: {stderr}");
    let rec: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(rec["status"], "completed", "{stdout}");
    let rec = finworker::uploads::get(&app.ctx.db, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, "completed");
    assert_eq!(rec.rows_imported as u64, summary.unique);
    assert_eq!(rec.rows_duplicate as u64, summary.duplicates);
    assert_eq!(rec.rows_rejected as u64, summary.malformed);
    let dead = app.scalar("SELECT count(*) FROM dead_jobs").await;
    assert_eq!(dead, 0, "nothing was dead-lettered");
    let snoozed = app
        .scalar("SELECT count(*) FROM job_runs WHERE status = 'snoozed'")
        .await;
    assert!(snoozed >= 1, "the outage was snoozed through");
    // Validation follows.
    eventually(Duration::from_secs(60), "validation", || async {
        finworker::uploads::get(&app.ctx.db, id)
            .await
            .unwrap()
            .filter(|r| r.validated_at.is_some())
    })
    .await;
}
