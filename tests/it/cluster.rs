//! The queue on a real three-primary Redis Cluster (127.0.0.1:7001-7003, started by
//! `scripts/setup.sh --with-s3`): every key of the namespace in one slot, the Lua scripts
//! unchanged, jobs, retries, dead letters, delays, pauses and the shared rate limiter working.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{eventually, spawn_app_with};

const NODES: [u16; 3] = [7001, 7002, 7003];

async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Keys matching `pattern` on each node.
async fn keys_per_node(pattern: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for p in NODES {
        let mut c = node(p).await;
        let keys: Vec<String> = c.keys(pattern).await.unwrap();
        out.push(keys);
    }
    out
}

#[tokio::test]
async fn the_queue_runs_on_a_three_primary_redis_cluster_with_every_key_in_one_slot() {
    let mut c = node(7001).await;
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(info.contains("cluster_state:ok"), "{info}");
    let app = spawn_app_with(|s| {
        s.redis.cluster = true;
        s.redis.url = NODES
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
    })
    .await;
    let prefix = app.ctx.queue.prefix().to_string();
    assert!(
        prefix.starts_with('{') && prefix.ends_with('}'),
        "the namespace is a hash tag: {prefix}"
    );

    // Work of every kind: bulk, a retry, a dead letter, a delayed job.
    let bulk: Vec<_> = (0..300)
        .map(|_| finworker::queue::engine::NewJob::new("noop", "{}"))
        .collect();
    app.ctx
        .queue
        .push(&bulk, Duration::from_secs(60))
        .await
        .unwrap();
    let retried = app
        .enqueue("test_job", json!({"label": "retry", "fail_times": 1}))
        .await;
    let dead = app
        .enqueue("test_job", json!({"label": "dead", "permanent": true}))
        .await;
    let mut delayed = finworker::queue::engine::NewJob::new("noop", "{}");
    delayed.delay = Duration::from_millis(800);
    let delayed_id = delayed.id.to_string();
    app.ctx
        .queue
        .push(&[delayed], Duration::from_secs(60))
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "every job settled", || async {
        let n = app
            .scalar(
                "SELECT count(DISTINCT job_id) FROM job_runs WHERE status IN ('succeeded', 'dead')",
            )
            .await;
        (n >= 303).then_some(())
    })
    .await;
    let runs = app.runs(&retried).await;
    assert_eq!(
        runs.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        ["failed", "succeeded"]
    );
    assert!(app.dead_error(&dead).await.is_some());
    assert_eq!(
        app.runs(&delayed_id).await.last().unwrap().status,
        "succeeded"
    );

    // A paused queue holds its jobs: they wait in Redis, all on one node, in one slot.
    crate::helpers::process::cli_async(&app.settings, &["queues", "pause", "noop"]).await;
    let held: Vec<_> = (0..5)
        .map(|_| finworker::queue::engine::NewJob::new("noop", "{}"))
        .collect();
    app.ctx
        .queue
        .push(&held, Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = app.ctx.queue.stats("noop").await.unwrap();
    assert_eq!(stats.waiting, 5, "{stats:?}");
    let per_node = keys_per_node(&format!("{prefix}:*")).await;
    let holding: Vec<_> = per_node.iter().filter(|k| !k.is_empty()).collect();
    assert_eq!(holding.len(), 1, "keys on more than one node: {per_node:?}");
    let keys = holding[0];
    assert!(keys.len() >= 7, "{keys:?}"); // queues, jobs, workers, paused, idempotency…
    let mut slots = std::collections::BTreeSet::new();
    let mut c = node(7001).await;
    for k in keys {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
        slots.insert(slot);
    }
    assert_eq!(slots.len(), 1, "one slot for the namespace: {slots:?}");
    crate::helpers::process::cli_async(&app.settings, &["queues", "resume", "noop"]).await;
    for j in &held {
        app.finished_runs(&j.id.to_string(), Duration::from_secs(20))
            .await;
    }

    // The shared rate limiter (its own Lua script) runs there too.
    let limiter = finworker::guard::limiter::SharedLimiter::new(
        &app.ctx.queue,
        &finworker::guard::GuardKey::single("cluster_test"),
        1000,
    );
    for _ in 0..5 {
        limiter.acquire().await.unwrap();
    }
    let limiter_keys = keys_per_node(&format!("{prefix}:ratelimit*")).await;
    assert_eq!(
        limiter_keys.iter().filter(|k| !k.is_empty()).count(),
        1,
        "{limiter_keys:?}"
    );

    // Cleaning up the namespace finds its keys on the node that holds them.
    app.ctx.queue.delete_namespace().await.unwrap();
    assert!(
        keys_per_node(&format!("{prefix}:*"))
            .await
            .iter()
            .all(|k| k.is_empty()),
        "namespace deleted"
    );
}
