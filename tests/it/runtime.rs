use std::time::{Duration, Instant};

use finworker::{context::EnqueueOptions, queue::engine::NewJob, startup::Roles};
use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{
    app::{start, test_settings},
    db::TestDb,
    process::Daemon,
    spawn_app,
};

#[tokio::test]
async fn a_poison_payload_written_into_redis_is_dead_lettered_and_its_neighbours_complete() {
    let app = spawn_app().await;
    let before = app.enqueue("noop", json!({})).await;
    // A foreign producer writing the documented keys with a broken payload.
    let poison = uuid::Uuid::now_v7().to_string();
    let p = app.ctx.queue.prefix().to_string();
    let mut c = app.ctx.queue.connection();
    let _: () = c
        .hset_multiple(
            format!("{p}:job:{poison}"),
            &[
                ("type", "noop"),
                ("payload", "{not json"),
                ("attempt", "0"),
                ("failures", "0"),
                ("orphans", "0"),
                ("enqueued_at", "0"),
            ],
        )
        .await
        .unwrap();
    let _: () = c.rpush(format!("{p}:q:noop:ready"), &poison).await.unwrap();
    let after = app.enqueue("noop", json!({})).await;

    let runs = app.finished_runs(&poison, Duration::from_secs(10)).await;

    assert_eq!(runs.len(), 1, "not retried");
    assert_eq!(runs[0].status, "dead");
    let (_, error) = app.dead_error(&poison).await.unwrap();
    assert!(error.contains("payload does not decode as noop"), "{error}");
    for id in [before, after] {
        assert_eq!(
            app.finished_runs(&id, Duration::from_secs(10)).await[0].status,
            "succeeded"
        );
    }
    // The worker is still alive and taking jobs.
    let later = app.enqueue("noop", json!({})).await;
    assert_eq!(
        app.finished_runs(&later, Duration::from_secs(10)).await[0].status,
        "succeeded"
    );
}

#[tokio::test]
async fn an_id_pushed_without_its_data_is_dead_lettered_not_fatal() {
    let app = spawn_app().await;
    let ghost = uuid::Uuid::now_v7().to_string();
    let mut c = app.ctx.queue.connection();
    let _: () = c
        .rpush(format!("{}:q:noop:ready", app.ctx.queue.prefix()), &ghost)
        .await
        .unwrap();
    let next = app.enqueue("noop", json!({})).await;

    let runs = app.finished_runs(&ghost, Duration::from_secs(10)).await;

    assert_eq!(runs[0].status, "dead");
    assert!(
        app.dead_error(&ghost)
            .await
            .unwrap()
            .1
            .contains("job data missing")
    );
    assert_eq!(
        app.finished_runs(&next, Duration::from_secs(10)).await[0].status,
        "succeeded"
    );
}

#[tokio::test]
async fn a_backlog_of_100_000_jobs_pushed_before_any_worker_starts_drains_completely() {
    let db = TestDb::create().await;
    let prefix = format!("fwt:{}", uuid::Uuid::new_v4().simple());
    let mut settings = test_settings(&db, &prefix);
    settings
        .queues
        .entry("noop".into())
        .or_default()
        .concurrency = Some(100);
    // Producer side only: push everything first, half of it as already-due delayed jobs
    // (the state apalis-redis jams on past ~8,000 entries).
    let producer = finworker::startup::build_context(settings.clone())
        .await
        .unwrap();
    let jobs: Vec<NewJob> = (0..100_000)
        .map(|i| NewJob {
            id: uuid::Uuid::now_v7(),
            job_type: "noop".into(),
            payload: "{}".into(),
            delay: if i % 2 == 0 {
                Duration::from_millis(1)
            } else {
                Duration::ZERO
            },
            idempotency_key: None,
            max_attempts: None,
            prior_attempts: 0,
            redrive: false,
        })
        .collect();
    producer
        .queue
        .push(&jobs, Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let st = producer.queue.stats("noop").await.unwrap();
    assert_eq!((st.waiting, st.scheduled), (50_000, 50_000));

    let app = start(
        db,
        settings,
        Roles {
            http: false,
            ..Roles::default()
        },
    )
    .await;

    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let done = loop {
        let n = app
            .scalar("SELECT count(*) FROM job_runs WHERE status = 'succeeded'")
            .await;
        if n >= 100_000 {
            break n;
        }
        if std::time::Instant::now() > deadline {
            let mut c = app.db.connect().await;
            let by: Vec<(String, i64)> =
                sqlx::query_as("SELECT status, count(*) FROM job_runs GROUP BY 1 ORDER BY 1")
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
            let st = app.ctx.queue.stats("noop").await.unwrap();
            panic!("stuck at {n} succeeded; job_runs by status {by:?}; queue {st:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done, 100_000);
    assert_eq!(
        app.scalar("SELECT count(*) FROM job_runs").await,
        100_000,
        "each ran once"
    );
    let st = app.ctx.queue.stats("noop").await.unwrap();
    assert_eq!((st.waiting, st.scheduled, st.in_flight), (0, 0, 0));
}

#[tokio::test]
async fn a_delayed_job_waits_for_its_time() {
    let app = spawn_app().await;
    let t0 = chrono::Utc::now();

    let pushed = app
        .ctx
        .enqueue_json(
            "noop",
            b"{}",
            EnqueueOptions {
                delay: Duration::from_millis(1500),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    assert_eq!(app.ctx.queue.stats("noop").await.unwrap().scheduled, 1);
    let runs = app
        .finished_runs(&pushed.id.to_string(), Duration::from_secs(10))
        .await;
    let waited = runs[0].started_at - t0;
    assert!(waited.num_milliseconds() >= 1500, "{waited}");
    assert!(waited.num_milliseconds() < 3000, "{waited}");
}

#[tokio::test]
async fn an_idle_worker_picks_up_a_new_job_within_a_second() {
    let app = spawn_app().await;
    tokio::time::sleep(Duration::from_millis(700)).await; // let the queues go idle

    let t0 = Instant::now();
    let id = app.enqueue("noop", json!({})).await;
    app.finished_runs(&id, Duration::from_secs(5)).await;

    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn cron_with_two_worker_processes_runs_once_per_tick() {
    let db = TestDb::create().await;
    let prefix = format!("fwt:{}", uuid::Uuid::new_v4().simple());
    let settings = test_settings(&db, &prefix);
    let dir = std::env::temp_dir().join(format!("fw-cron-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config/crontest.toml"),
        "[[cron]]\nname = \"every_second\"\nschedule = \"* * * * * *\"\njob_type = \"noop\"\npayload = { note = \"tick\" }\n",
    )
    .unwrap();
    let env = [("FINWORKER_ENV", "crontest")];

    let t0 = Instant::now();
    let mut a = Daemon::start_in(&settings, &["run", "--no-http"], &dir, &env);
    let mut b = Daemon::start_in(&settings, &["run", "--no-http"], &dir, &env);
    tokio::time::sleep(Duration::from_secs(6)).await;
    a.sigterm();
    b.sigterm();
    assert!(
        a.wait_timeout(Duration::from_secs(15)).success(),
        "{}",
        a.log_text()
    );
    assert!(
        b.wait_timeout(Duration::from_secs(15)).success(),
        "{}",
        b.log_text()
    );
    let secs = t0.elapsed().as_secs() as i64;

    let mut c = db.connect().await;
    let (runs, jobs, workers): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT job_id), count(DISTINCT split_part(worker, ':', 2)) FROM job_runs WHERE job_type = 'noop'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(runs, jobs, "no job ran twice");
    // Both processes fire every tick; with one job per tick there are about `secs` jobs, not 2x.
    assert!(
        runs >= secs - 3 && runs <= secs + 1,
        "{runs} jobs in {secs} s"
    );
    assert!(workers >= 1);
    let ticked = |d: &Daemon| d.log_text().contains("cron tick");
    assert!(ticked(&a) || ticked(&b));
    std::fs::remove_dir_all(dir).unwrap();
    crate::helpers::app::delete_namespace(prefix);
}

#[tokio::test]
async fn a_queue_never_runs_more_jobs_at_once_than_its_configured_concurrency() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.queues.get_mut("test_job").unwrap().concurrency = Some(2);
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            app.enqueue(
                "test_job",
                json!({"label": format!("c{i}"), "sleep_ms": 400}),
            )
            .await,
        );
    }
    for id in &ids {
        app.finished_runs(id, Duration::from_secs(20)).await;
    }

    let mut c = app.db.connect().await;
    let spans: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT started_at, finished_at FROM job_runs WHERE job_type = 'test_job'")
            .fetch_all(&mut c)
            .await
            .unwrap();
    let max_overlap = spans
        .iter()
        .map(|(s, _)| spans.iter().filter(|(s2, f2)| s2 <= s && s < f2).count())
        .max()
        .unwrap();
    assert_eq!(spans.len(), 6);
    assert_eq!(max_overlap, 2, "two at a time: {spans:?}");
}

#[tokio::test]
async fn a_re_drive_leaves_a_live_job_alone_and_replaces_one_redis_lost_in_part() {
    let app = spawn_app().await;
    let q = &app.ctx.queue;
    let job = |id: uuid::Uuid| NewJob {
        id,
        job_type: "noop".into(),
        payload: "{}".into(),
        delay: Duration::from_secs(3600), // waits in the schedule: nothing runs it meanwhile
        idempotency_key: Some("orphan-test".into()),
        max_attempts: None,
        prior_attempts: 0,
        redrive: true,
    };
    let ttl = Duration::from_secs(60);
    let first = q.push(&[job(uuid::Uuid::now_v7())], ttl).await.unwrap()[0].clone();
    assert!(!first.duplicate);
    let again = q.push(&[job(uuid::Uuid::now_v7())], ttl).await.unwrap()[0].clone();
    assert_eq!(
        (again.id, again.duplicate),
        (first.id, true),
        "a live job is left alone"
    );

    // A partial loss (an eviction, a namespace delete racing a push): the job's hash survives,
    // its place in the queue does not. Before, the re-drive took the hash for a live job and
    // the pipeline waited for it for ever.
    let mut c = q.connection();
    let removed: i64 = c
        .zrem(format!("{}:q:noop:sched", q.prefix()), first.id.to_string())
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let redriven = q.push(&[job(uuid::Uuid::now_v7())], ttl).await.unwrap()[0].clone();
    assert!(
        !redriven.duplicate && redriven.id != first.id,
        "{redriven:?}"
    );
    let orphan: bool = c
        .exists(format!("{}:job:{}", q.prefix(), first.id))
        .await
        .unwrap();
    assert!(!orphan, "the orphaned hash is removed");
    let st = q.stats("noop").await.unwrap();
    assert_eq!(st.scheduled, 1, "exactly the new job waits");
}
