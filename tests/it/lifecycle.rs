//! The transaction lifecycle after the send: reconciliation of open attempts, ledger sync by
//! date, the chargeback and retrieval sweeps, the BIC rule and the chargeback-rate guard,
//! replay of stored deliveries, and a webhook arriving while Postgres is down. The sandbox
//! gateway is the other side throughout (real HTTP, Genesis XML).

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::{Connection, Executor};
use uuid::Uuid;

use crate::{
    billing::{
        attempts, billing, iban, sandbox_knobs, start_run, validated, validated_upload, wait_run,
    },
    helpers::{app::TestApp, eventually, spawn_app_with},
    verification::{SandboxServer, sandbox},
};

async fn cli(app: &TestApp, args: &[&str]) -> String {
    crate::helpers::process::cli_async(&app.settings, args).await
}

/// Raises an event at the sandbox gateway (`POST /_sandbox/genesis/events`).
async fn raise(sb: &SandboxServer, body: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/_sandbox/genesis/events", sb.addr))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// reference → (attempt id, transaction_id).
async fn ids(app: &TestApp, reference: &str) -> (i64, String) {
    let mut c = app.db.connect().await;
    sqlx::query_as(
        "SELECT a.id, a.transaction_id FROM billing_attempts a JOIN debtors d ON d.id = a.debtor_id \
         WHERE d.reference = $1 ORDER BY a.id LIMIT 1",
    )
    .bind(reference)
    .fetch_one(&mut c)
    .await
    .unwrap()
}

async fn status_of(app: &TestApp, attempt: i64) -> String {
    let mut c = app.db.connect().await;
    sqlx::query_scalar("SELECT status FROM billing_attempts WHERE id = $1")
        .bind(attempt)
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// Test set-up only: makes an attempt look as if its answer never arrived (`unknown`, no
/// gateway id), which the code itself never does to a settled attempt.
async fn lose_answer(app: &TestApp, attempt: i64) {
    let mut c = app.db.connect().await;
    sqlx::query(
        "UPDATE billing_attempts SET status = 'unknown', unique_id = NULL, answered_at = NULL, \
         next_reconcile_at = now(), send_deadline = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(attempt)
    .execute(&mut c)
    .await
    .unwrap();
}

/// Fetches a report through a signed link (as a CLI command prints it, on its last line).
pub async fn get_report(app: &TestApp, link: &str) -> reqwest::Response {
    let path = link.split_once("/reports/").unwrap().1.trim();
    app.http
        .get(app.url(&format!("/reports/{path}")))
        .send()
        .await
        .unwrap()
}

/// Downloads a report through the signed link a CLI command printed.
async fn download(app: &TestApp, link: String) -> String {
    let r = get_report(app, &link).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn one_debtor_run(app: &TestApp, rows: &[(&str, u32, i64)]) -> Uuid {
    let rows: Vec<(String, String, i64)> = rows
        .iter()
        .map(|(r, i, a)| (r.to_string(), iban(*i), *a))
        .collect();
    let upload = validated_upload(app, &rows).await;
    let run = start_run(app, upload, "main", "legacy").await;
    assert_eq!(
        wait_run(app, run, Duration::from_secs(60)).await.status,
        "completed"
    );
    run
}

#[tokio::test]
async fn reconciliation_settles_unknown_attempts_both_ways_and_flags_those_past_their_hard_age() {
    let sb = sandbox(sandbox_knobs()).await;
    let mut app = spawn_app_with(|s| {
        billing(s, &sb);
        s.lifecycle.pending_hard_age = Duration::from_secs(3600);
    })
    .await;
    // B is debited first; then the gateway forgets everything (its books are cleared), so B
    // is a debit the gateway has no record of.
    one_debtor_run(&app, &[("RB", 801, 2100)]).await;
    let cleared = reqwest::Client::new()
        .delete(format!("http://{}/_sandbox/ledger", sb.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    // A is approved and the gateway keeps it; P stays pending_async (it settles in an hour).
    let mut k = sandbox_knobs();
    k.genesis_async_ms = 3_600_000;
    sb.sandbox.set_knobs(k);
    one_debtor_run(&app, &[("RA", 802, 2200), ("RP", 803, 2303)]).await;
    let (a, _) = ids(&app, "RA").await;
    let (b, b_tx) = ids(&app, "RB").await;
    let (p, _) = ids(&app, "RP").await;
    assert_eq!(status_of(&app, p).await, "pending_async");
    lose_answer(&app, a).await;
    lose_answer(&app, b).await;
    {
        let mut c = app.db.connect().await;
        sqlx::query(
            "UPDATE billing_attempts SET created_at = now() - interval '2 hours' WHERE id = $1",
        )
        .bind(p)
        .execute(&mut c)
        .await
        .unwrap();
    }
    let job = app.enqueue("reconciliation", json!({})).await;
    let runs = app.finished_runs(&job, Duration::from_secs(30)).await;
    assert_eq!(runs.last().unwrap().status, "succeeded", "{runs:?}");
    // A: the gateway has it, so it is approved again, found by its transaction_id.
    assert_eq!(status_of(&app, a).await, "approved");
    let mut c = app.db.connect().await;
    let uid: Option<String> =
        sqlx::query_scalar("SELECT unique_id FROM billing_attempts WHERE id = $1")
            .bind(a)
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert!(uid.is_some(), "the gateway's id is filled in");
    // B: the gateway has no record: sent again under the same transaction_id, and approved.
    assert_eq!(status_of(&app, b).await, "approved");
    let sends: i32 = sqlx::query_scalar("SELECT sends FROM billing_attempts WHERE id = $1")
        .bind(b)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(sends, 2);
    let ledger = sb.sandbox.ledger();
    assert_eq!(
        ledger
            .debits
            .iter()
            .filter(|d| d.transaction_id == b_tx)
            .count(),
        1,
        "one debit of B at the gateway, under its first transaction_id"
    );
    // P: still pending (never failed, never guessed), flagged for a person.
    assert_eq!(status_of(&app, p).await, "pending_async");
    let flagged: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM billing_attempts WHERE flagged_at IS NOT NULL ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(flagged, [p]);
    let sources: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT attempt_id, source, to_status FROM transaction_events WHERE attempt_id IN ($1, $2) \
         AND source = 'reconcile' ORDER BY id",
    )
    .bind(a)
    .bind(b)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(
        sources.contains(&(a, "reconcile".into(), "approved".into())),
        "{sources:?}"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("finworker_attempts_past_hard_age{status=\"pending_async\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn ledger_sync_corrects_a_status_mismatch_repairs_an_unknown_and_reports_what_is_missing_both_ways()
 {
    let sb = sandbox(sandbox_knobs()).await;
    // Two records a page: the five are read in three pages.
    let mut app = spawn_app_with(|s| {
        billing(s, &sb);
        s.lifecycle.sync_page_size = 2;
    })
    .await;
    one_debtor_run(
        &app,
        &[
            ("LX", 901, 2000),
            ("LY", 902, 2100),
            ("LZ", 903, 2200),
            ("LM", 904, 2300),
        ],
    )
    .await;
    let (x, x_tx) = ids(&app, "LX").await;
    let (y, _) = ids(&app, "LY").await;
    let (z, z_tx) = ids(&app, "LZ").await;
    // X is charged back at the gateway, silently (no notification): a status mismatch.
    raise(
        &sb,
        json!({"transaction_id": x_tx, "event": "status", "status": "chargebacked", "notify": false}),
    )
    .await;
    // Y's answer was lost: unknown, no gateway id.
    lose_answer(&app, y).await;
    // Z: ours, but under an id the gateway does not know (and its real one is not ours).
    {
        let mut c = app.db.connect().await;
        sqlx::query(
            "UPDATE billing_attempts SET transaction_id = 'fw-ghost', unique_id = NULL, \
             sent_at = now() - interval '10 minutes' WHERE id = $1",
        )
        .bind(z)
        .execute(&mut c)
        .await
        .unwrap();
    }
    // Someone else's debit through our terminal.
    let r = reqwest::Client::new()
        .post(format!("http://{}/_sandbox/genesis/transactions", sb.addr))
        .json(&json!({"transaction_id": "other-1", "terminal": "t-main", "username": "user-t-main", "amount_minor": 777}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let today = Utc::now().date_naive();
    let from = today.pred_opt().unwrap();
    let sync = |n: u32| {
        let app = &app;
        async move {
            let job = app
                .enqueue(
                    "emp_refresh",
                    json!({"account": "main", "from": from, "to": today, "format": "csv"}),
                )
                .await;
            let runs = app.finished_runs(&job, Duration::from_secs(30)).await;
            assert_eq!(
                runs.last().unwrap().status,
                "succeeded",
                "sync {n}: {runs:?}"
            );
            let mut c = app.db.connect().await;
            let row: (Uuid, String, i32, i32, i32, i32, i32, i32, i32, Option<Uuid>) = sqlx::query_as(
                "SELECT id, status, seen, matched, corrected, repaired, refused, missing_locally, missing_remotely, report_id \
                 FROM ledger_syncs ORDER BY created_at DESC LIMIT 1",
            )
            .fetch_one(&mut c)
            .await
            .unwrap();
            row
        }
    };
    let (sync_id, st, seen, matched, corrected, repaired, refused, missing_l, missing_r, report) =
        sync(1).await;
    assert_eq!(st, "completed");
    let pages: i32 = {
        let mut c = app.db.connect().await;
        sqlx::query_scalar("SELECT pages FROM ledger_syncs WHERE id = $1")
            .bind(sync_id)
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    assert_eq!(pages, 3);
    assert_eq!(seen, 5, "four debits of ours and one of someone else's");
    assert_eq!(
        (matched, corrected, repaired, refused),
        (1, 1, 1, 0),
        "M agrees, X corrected, Y repaired"
    );
    assert_eq!(
        (missing_l, missing_r),
        (2, 1),
        "other-1 and Z's real id missing locally; fw-ghost missing remotely"
    );
    assert_eq!(status_of(&app, x).await, "chargebacked");
    assert_eq!(status_of(&app, y).await, "approved");
    let mut c = app.db.connect().await;
    let items: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT kind, transaction_id FROM ledger_sync_items WHERE sync_id = $1 ORDER BY kind, transaction_id",
    )
    .bind(sync_id)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        items,
        [
            ("corrected".to_string(), Some(x_tx.clone())),
            ("missing_locally".to_string(), Some(z_tx.clone())),
            ("missing_locally".to_string(), Some("other-1".to_string())),
            ("missing_remotely".to_string(), Some("fw-ghost".to_string())),
            ("repaired".to_string(), Some(ids(&app, "LY").await.1)),
        ]
    );
    let ev: (String, String) = sqlx::query_as(
        "SELECT source, to_status FROM transaction_events WHERE attempt_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(x)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(ev, ("ledger_sync".into(), "chargebacked".into()));
    // The report: summary and every difference, behind a signed link.
    let report = report.expect("a report");
    let (url, _) = finworker::reports::signed_link(&app.settings.reports, report, None).unwrap();
    let path = url.split_once("/reports/").unwrap().1;
    let csv = app
        .http
        .get(app.url(&format!("/reports/{path}")))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    let csv = csv.text().await.unwrap();
    assert!(csv.contains("Missing locally,2"), "{csv}");
    assert!(csv.contains("missing_remotely"), "{csv}");
    assert!(csv.contains("other-1"), "{csv}");
    // A second sync of the same window finds only what is still different.
    let (_, _, seen2, matched2, corrected2, repaired2, _, missing_l2, missing_r2, _) =
        sync(2).await;
    assert_eq!(
        (
            seen2, matched2, corrected2, repaired2, missing_l2, missing_r2
        ),
        (5, 3, 0, 0, 2, 1)
    );
    app.stop().await;
}

/// A debtor file with one BIC for every row.
fn csv_with_bic(rows: &[(String, u32, i64)], bic: &str) -> Vec<u8> {
    let mut out =
        String::from("reference;name;iban;bic;amount_minor;mandate_id;mandate_date;email\n");
    for (r, i, amount) in rows {
        out.push_str(&format!(
            "{r};Erika Muster{r};{};{bic};{amount};M-{r};2024-01-15;{r}@example.com\n",
            iban(*i)
        ));
    }
    out.into_bytes()
}

#[tokio::test]
async fn the_sweeps_record_and_backfill_returns_then_the_bic_rule_and_the_chargeback_guard_act() {
    let sb = sandbox(sandbox_knobs()).await;
    let mut app = spawn_app_with(|s| {
        billing(s, &sb);
        s.lifecycle.chargeback_guard.min_transactions = 10;
        s.lifecycle.chargeback_guard.hold_at_rate = 0.5;
    })
    .await;
    let rows: Vec<(String, u32, i64)> = (1..=10)
        .map(|i| (format!("S{i:02}"), 1000 + i, 1000 + 100 * i64::from(i)))
        .collect();
    let upload = validated(&app, &csv_with_bic(&rows, "COBADEFFXXX")).await;
    let run = start_run(&app, upload, "main", "legacy").await;
    assert_eq!(
        wait_run(&app, run, Duration::from_secs(60)).await.status,
        "completed"
    );
    let hook = app.url("/api/webhooks/emp/main");
    let tx = |r: &str| {
        let app = &app;
        let r = r.to_string();
        async move { ids(app, &r).await }
    };
    // S01: the notification comes without the reason code; the sweep's record has it.
    let (s01, s01_tx) = tx("S01").await;
    raise(&sb, json!({"transaction_id": s01_tx, "event": "chargeback", "reason_code": "AC04", "url": hook, "notify_code": false})).await;
    eventually(Duration::from_secs(20), "S01 chargebacked", || async {
        (status_of(&app, s01).await == "chargebacked").then_some(())
    })
    .await;
    // S02–S08 charged back silently (MD06: deactivate only), S09 with a technical code
    // (XT33: left out of the BIC statistics); a retrieval request for S02. One through the
    // command line.
    for i in 2..=9 {
        let (_, t) = tx(&format!("S{i:02}")).await;
        let code = if i == 9 { "XT33" } else { "MD06" };
        if i == 3 {
            let out = cli(
                &app,
                &[
                    "sandbox",
                    "chargeback",
                    &t,
                    "--reason",
                    code,
                    "--silent",
                    "--sandbox",
                    &format!("http://{}", sb.addr),
                ],
            )
            .await;
            assert!(out.contains("chargeback raised"), "{out}");
            continue;
        }
        raise(&sb, json!({"transaction_id": t, "event": "chargeback", "reason_code": code, "notify": false})).await;
    }
    let (_, s02_tx) = tx("S02").await;
    raise(&sb, json!({"transaction_id": s02_tx, "event": "retrieval_request", "reason_code": "MS02", "notify": false})).await;
    let sweep = || {
        let app = &app;
        async move {
            let job = app
                .enqueue("chargeback_sweep", json!({"account": "main"}))
                .await;
            let runs = app.finished_runs(&job, Duration::from_secs(30)).await;
            assert_eq!(runs.last().unwrap().status, "succeeded", "{runs:?}");
        }
    };
    sweep().await;
    let mut c = app.db.connect().await;
    let got = attempts(&app, run).await;
    for i in 1..=9 {
        assert_eq!(got[&format!("S{i:02}")], ["chargebacked"], "{got:?}");
    }
    assert_eq!(got["S10"], ["approved"]);
    let cbs: Vec<(String, Option<String>, String, bool)> = sqlx::query_as(
        "SELECT d.reference, c.reason_code, c.type, c.blacklisted FROM chargebacks c \
         JOIN billing_attempts a ON a.id = c.attempt_id JOIN debtors d ON d.id = a.debtor_id ORDER BY d.reference",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        cbs.len(),
        9,
        "one row per chargeback, the notified one included: {cbs:?}"
    );
    assert_eq!(
        cbs[0],
        (
            "S01".into(),
            Some("AC04".into()),
            "1st chargeback".into(),
            true
        ),
        "S01's code back-filled by the sweep and its policy applied"
    );
    assert!(cbs[1..].iter().all(|c| !c.3));
    let bl: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM blacklist WHERE kind = 'iban' AND reason = 'chargeback AC04'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(bl, 1, "S01's IBAN blacklisted once the code was known");
    let rr: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT reason_code, source FROM retrieval_requests")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(rr, [(Some("MS02".into()), "retrieval_sweep".into())]);
    let sources: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT source FROM transaction_events WHERE event = 'status' AND to_status = 'chargebacked' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(sources, ["chargeback_sweep", "webhook"]);
    // A second sweep finds nothing new.
    sweep().await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM chargebacks")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 9);
    let last: (i32, i32, i32) = sqlx::query_as(
        "SELECT corrected, repaired, matched FROM ledger_syncs WHERE kind = 'chargebacks' ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(
        last,
        (0, 0, 9),
        "nothing new, nothing back-filled, nine known"
    );
    // The guard: 9 chargebacks in 10 debits is over its 50 %: the account is held.
    let held: Option<String> =
        sqlx::query_scalar("SELECT hold_reason FROM gateway_accounts WHERE name = 'main'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert!(
        held.as_deref()
            .is_some_and(|h| h.contains("9 chargebacks / 10 debits")),
        "{held:?}"
    );
    // The BIC rule: 8 counted chargebacks in 10 debits is exactly 80 %: not over it.
    let job = app.enqueue("bic_blacklist", json!({})).await;
    app.finished_runs(&job, Duration::from_secs(20)).await;
    let bic: Option<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT source, stats_snapshot FROM blacklist WHERE kind = 'bic' AND value = 'COBADEFFXXX'",
    )
    .fetch_optional(&mut c)
    .await
    .unwrap();
    assert!(bic.is_none(), "{bic:?}");
    // One more chargeback (S10): 9 in 10, over 80 %: blacklisted, with its figures.
    let (_, s10_tx) = tx("S10").await;
    raise(&sb, json!({"transaction_id": s10_tx, "event": "chargeback", "reason_code": "AC01", "notify": false})).await;
    sweep().await;
    let job = app.enqueue("bic_blacklist", json!({})).await;
    app.finished_runs(&job, Duration::from_secs(20)).await;
    let (source, snap): (String, serde_json::Value) = sqlx::query_as(
        "SELECT source, stats_snapshot FROM blacklist WHERE kind = 'bic' AND value = 'COBADEFFXXX'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(source, "auto");
    assert_eq!(
        (snap["transactions"].as_i64(), snap["chargebacks"].as_i64()),
        (Some(10), Some(9))
    );
    let decisions: Vec<(i32, bool)> = sqlx::query_as(
        "SELECT chargebacks, blacklisted FROM bic_decisions WHERE bic = 'COBADEFFXXX' ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(decisions, [(8, false), (9, true)]);
    // A run on the held account pauses at its first claim; released, it completes.
    let other = validated(
        &app,
        &csv_with_bic(&[("H1".to_string(), 1101, 1500)], "DEUTDEFFXXX"),
    )
    .await;
    let run2 = start_run(&app, other, "main", "legacy").await;
    let paused = eventually(
        Duration::from_secs(30),
        "run paused by the guard",
        || async {
            finworker::billing::run::get(&app.ctx.db, run2)
                .await
                .unwrap()
                .filter(|r| r.status == "paused")
        },
    )
    .await;
    assert_eq!(paused.paused_by.as_deref(), Some("chargeback_guard"));
    assert!(
        sb.sandbox.ledger().debits.len() == 10,
        "nothing debited while held"
    );
    let out = cli(&app, &["accounts", "release", "main"]).await;
    assert!(out.contains(&format!("resumed run {run2}")), "{out}");
    assert_eq!(
        wait_run(&app, run2, Duration::from_secs(60)).await.status,
        "completed"
    );
    assert_eq!(attempts(&app, run2).await["H1"], ["approved"]);
    app.stop().await;
}

#[tokio::test]
async fn a_failed_delivery_is_replayed_after_the_fix_and_its_effects_apply_once() {
    let sb = sandbox(sandbox_knobs()).await;
    let mut app = spawn_app_with(|s| {
        billing(s, &sb);
        s.webhooks.max_attempts = 1;
    })
    .await;
    one_debtor_run(&app, &[("W1", 1201, 1800)]).await;
    let (w1, w1_tx) = ids(&app, "W1").await;
    // The gateway's reconcile is down when the chargeback arrives: the delivery is stored and
    // acknowledged, its processing fails and (max_attempts = 1) it is left failed.
    let mut k = sandbox_knobs();
    k.outage_until_ms = Some(u64::try_from(Utc::now().timestamp_millis()).unwrap() + 600_000);
    sb.sandbox.set_knobs(k);
    raise(&sb, json!({"transaction_id": w1_tx, "event": "chargeback", "reason_code": "AC06", "url": app.url("/api/webhooks/emp/main")})).await;
    let mut c = app.db.connect().await;
    let id: i64 = eventually(Duration::from_secs(30), "delivery failed", || async {
        let mut c = app.db.connect().await;
        sqlx::query_scalar::<_, i64>("SELECT id FROM webhook_deliveries WHERE state = 'failed'")
            .fetch_optional(&mut c)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(status_of(&app, w1).await, "approved");
    let listed = cli(&app, &["webhooks", "list", "--status", "failed"]).await;
    assert!(
        listed.contains(&id.to_string()) && listed.contains("gave up"),
        "{listed}"
    );
    // The fix: the gateway is back (and the account's breaker, opened by the outage, has
    // had its open time). Replay.
    sb.sandbox.set_knobs(sandbox_knobs());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = cli(&app, &["webhooks", "replay", &id.to_string()]).await;
    assert!(out.contains("queued"), "{out}");
    eventually(
        Duration::from_secs(30),
        "replayed delivery applied",
        || async { (status_of(&app, w1).await == "chargebacked").then_some(()) },
    )
    .await;
    let counts = || {
        let app = &app;
        async move {
            let mut c = app.db.connect().await;
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT (SELECT count(*) FROM chargebacks), (SELECT count(*) FROM transaction_events WHERE attempt_id = $1), \
                 (SELECT lifetime_charged_minor FROM debtor_profiles p JOIN billing_attempts a ON a.profile_id = p.id WHERE a.id = $1)",
            )
            .bind(w1)
            .fetch_one(&mut c)
            .await
            .unwrap()
        }
    };
    let first = counts().await;
    assert_eq!(first.0, 1);
    assert_eq!(
        first.2, 0,
        "the chargeback took the amount back from the lifetime total"
    );
    // Replaying it again (it is processed now) changes nothing twice.
    let out = cli(&app, &["webhooks", "replay", &id.to_string()]).await;
    assert!(out.contains("queued"), "{out}");
    eventually(Duration::from_secs(30), "processed again", || async {
        let mut c = app.db.connect().await;
        let st: String = sqlx::query_scalar("SELECT state FROM webhook_deliveries WHERE id = $1")
            .bind(id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        (st == "processed").then_some(())
    })
    .await;
    assert_eq!(
        counts().await,
        first,
        "no second chargeback, event or total change"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM blacklist WHERE kind = 'iban'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1, "AC06 blacklists the IBAN, once");
    app.stop().await;
}

#[tokio::test]
async fn postgres_unavailable_is_answered_503_and_the_gateways_retry_later_succeeds_with_nothing_lost()
 {
    let mut k = sandbox_knobs();
    k.notify_retry_scale = 0.5;
    let sb = sandbox(k.clone()).await;
    let mut app = spawn_app_with(|s| {
        billing(s, &sb);
        s.webhooks.store_timeout = Duration::from_secs(2);
    })
    .await;
    one_debtor_run(&app, &[("P1", 1301, 1700)]).await;
    let (p1, p1_tx) = ids(&app, "P1").await;
    // The test database refuses connections and its sessions end: Postgres is unavailable
    // to the receiver (behind PgBouncer).
    let db = app.db.name.clone();
    let mut admin = finworker::db::connect_direct(
        &format!("{}/finworker", crate::helpers::db::DIRECT),
        Some(crate::helpers::db::PASSWORD),
    )
    .await
    .unwrap();
    admin
        .execute(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false").as_str())
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&mut admin)
        .await
        .unwrap();
    raise(&sb, json!({"transaction_id": p1_tx, "event": "chargeback", "reason_code": "AM04", "url": app.url("/api/webhooks/emp/main")})).await;
    // The first deliveries are refused with 503 (the gateway will send again).
    eventually(Duration::from_secs(20), "a 503 answer", || async {
        sb.sandbox
            .notifications()
            .iter()
            .any(|n| n.status == 503 && !n.acknowledged)
            .then_some(())
    })
    .await;
    admin
        .execute(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    // A later retry is stored, acknowledged and processed.
    eventually(
        Duration::from_secs(60),
        "acknowledged on a retry",
        || async {
            sb.sandbox
                .notifications()
                .iter()
                .any(|n| n.acknowledged)
                .then_some(())
        },
    )
    .await;
    let sent = sb.sandbox.notifications();
    assert!(
        sent.iter().filter(|n| n.acknowledged).count() == 1,
        "{sent:?}"
    );
    assert!(sent.last().unwrap().attempt > 1, "{sent:?}");
    eventually(Duration::from_secs(30), "chargeback applied", || async {
        (status_of(&app, p1).await == "chargebacked").then_some(())
    })
    .await;
    let mut c = app.db.connect().await;
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT verdict, state FROM webhook_deliveries ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(
        stored,
        [("accepted".into(), "processed".into())],
        "stored once: the refused attempts left nothing behind"
    );
    app.stop().await;
}

#[tokio::test]
async fn finance_downloads_list_a_runs_attempts_and_the_periods_returns_with_ibans_masked() {
    let sb = sandbox(sandbox_knobs()).await;
    let mut app = spawn_app_with(|s| billing(s, &sb)).await;
    // F2's amount ends in 01: declined (insufficient funds).
    let run = one_debtor_run(&app, &[("F1", 1401, 2500), ("F2", 1402, 2601)]).await;
    let (_, f1_tx) = ids(&app, "F1").await;
    raise(&sb, json!({"transaction_id": f1_tx, "event": "chargeback", "reason_code": "AC04", "notify": false})).await;
    let job = app
        .enqueue("chargeback_sweep", json!({"account": "main"}))
        .await;
    app.finished_runs(&job, Duration::from_secs(30)).await;

    let download = |link: String| download(&app, link);
    let out = cli(
        &app,
        &[
            "reports",
            "billing",
            "--run",
            &run.to_string(),
            "--format",
            "csv",
        ],
    )
    .await;
    let csv = download(out).await;
    assert!(csv.contains("Attempts,2"), "{csv}");
    assert!(
        csv.contains("attempt_id,debtor_reference,name,iban,amount"),
        "{csv}"
    );
    let f1 = csv.lines().find(|l| l.contains(",F1,")).unwrap();
    let f2 = csv.lines().find(|l| l.contains(",F2,")).unwrap();
    assert!(f1.contains(",25.00,EUR,chargebacked,"), "{f1}");
    assert!(f2.contains(",26.01,EUR,declined,"), "{f2}");
    assert!(
        !csv.contains(&iban(1401)) && !csv.contains(&iban(1402)),
        "IBANs masked: {csv}"
    );
    let masked = finworker::uploads::mask_iban(&iban(1401));
    assert!(f1.contains(&masked), "{f1} / {masked}");

    let today = Utc::now().date_naive().to_string();
    let out = cli(
        &app,
        &[
            "reports", "returns", "--from", &today, "--to", &today, "--format", "csv",
        ],
    )
    .await;
    let csv = download(out).await;
    assert!(csv.contains("Chargebacks,1 (25.00)"), "{csv}");
    let row = csv.lines().find(|l| l.starts_with("chargeback,")).unwrap();
    assert!(
        row.contains(",F1,") && row.contains(",AC04,") && row.contains("IBAN blacklisted"),
        "{row}"
    );
    assert!(!csv.contains(&iban(1401)));
    app.stop().await;
}

#[tokio::test]
async fn the_clean_debtors_export_lists_each_quiet_never_returned_unblacklisted_iban_once() {
    let sb = sandbox(sandbox_knobs()).await;
    let mut app = spawn_app_with(|s| billing(s, &sb)).await;
    // C5's amount ends in 01: its first debit is declined.
    one_debtor_run(
        &app,
        &[
            ("C1", 1501, 2500),
            ("C2", 1502, 2600),
            ("C3", 1503, 2700),
            ("C4", 1504, 2800),
            ("C5", 1505, 2901),
        ],
    )
    .await;
    // C2 is charged back (found by the sweep); C4's e-mail is blacklisted; every debit but
    // C3's is moved 60 days back (test set-up: the quiet period has passed for them).
    let (_, c2_tx) = ids(&app, "C2").await;
    raise(&sb, json!({"transaction_id": c2_tx, "event": "chargeback", "reason_code": "MD06", "notify": false})).await;
    let job = app
        .enqueue("chargeback_sweep", json!({"account": "main"}))
        .await;
    app.finished_runs(&job, Duration::from_secs(30)).await;
    let mut c = app.db.connect().await;
    sqlx::query(
        "INSERT INTO blacklist (kind, value, reason, source) \
         SELECT 'email', lower(email), 'fraud', 'ops' FROM debtors WHERE reference = 'C4'",
    )
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE billing_attempts a SET created_at = a.created_at - interval '60 days' \
         FROM debtors d WHERE d.id = a.debtor_id AND d.reference <> 'C3'",
    )
    .execute(&mut c)
    .await
    .unwrap();

    let download = |link: String| download(&app, link);
    let csv = download(cli(&app, &["reports", "clean-debtors", "--format", "csv"]).await).await;
    for line in [
        "IBANs debited,5",
        "First debit not approved,1",
        "Charged back or refunded,1",
        "Debited in the last 30 days,1",
        "Blacklisted,1",
        "Listed,1 (limit 100000)",
        "IBANs,masked",
    ] {
        assert!(csv.contains(line), "{line} / {csv}");
    }
    assert!(
        csv.contains("first_name,last_name,iban,bic,email,amount"),
        "{csv}"
    );
    let listed: Vec<_> = csv.lines().filter(|l| l.contains("@example.com")).collect();
    assert_eq!(listed.len(), 1, "{csv}");
    assert!(
        listed[0].contains("C1@example.com") && listed[0].contains(",25.00,EUR,main,"),
        "{}",
        listed[0]
    );
    assert!(listed[0].contains(&finworker::uploads::mask_iban(&iban(1501))));
    assert!(!csv.contains(&iban(1501)), "masked by default");

    let csv = download(
        cli(
            &app,
            &[
                "reports",
                "clean-debtors",
                "--format",
                "csv",
                "--full-iban",
                "--quiet-days",
                "90",
            ],
        )
        .await,
    )
    .await;
    // Counted under the first rule that takes each out: C1, C3, C4 are recent now.
    assert!(csv.contains("Debited in the last 90 days,3"), "{csv}");
    assert!(csv.contains("Listed,0"), "{csv}");
    let csv = download(
        cli(
            &app,
            &["reports", "clean-debtors", "--format", "csv", "--full-iban"],
        )
        .await,
    )
    .await;
    assert!(csv.contains(&iban(1501)), "whole IBAN when asked: {csv}");
    let csv = download(
        cli(
            &app,
            &["reports", "clean-debtors", "--format", "csv", "--strict"],
        )
        .await,
    )
    .await;
    assert!(
        csv.contains("Fewer than two approved (strict),1") && csv.contains("Listed,0"),
        "{csv}"
    );
    app.stop().await;
}
