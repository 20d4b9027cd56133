//! Webhook ingress and the transaction lifecycle: deliveries verified, stored, then
//! acknowledged; processed through a gateway reconcile into the one state machine; a
//! chargeback's reason code applied by the one policy.

use std::time::Duration;

use finworker::webhooks::genesis::sign;
use serde_json::json;

use crate::{
    billing::{
        GATEWAY_PASSWORD, attempts, billing, exclusions, iban, sandbox_knobs, start_run,
        validated_upload, wait_run,
    },
    helpers::{app::TestApp, eventually, spawn_app_with},
    verification::sandbox,
};

fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter().copied())
        .finish()
}

async fn post(app: &TestApp, account: &str, ctype: &str, body: String) -> (u16, String) {
    let r = app
        .http
        .post(app.url(&format!("/api/webhooks/emp/{account}")))
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

const FORM: &str = "application/x-www-form-urlencoded";

#[derive(Debug, sqlx::FromRow)]
struct Row {
    unique_id: Option<String>,
    verdict: String,
    state: String,
    reason: Option<String>,
    repeats: i32,
    signature: Option<String>,
    body_bytes: i32,
    stored: i32,
}

async fn deliveries(app: &TestApp) -> Vec<Row> {
    let mut c = app.db.connect().await;
    sqlx::query_as(
        "SELECT unique_id, verdict, state, reason, repeats, signature, body_bytes, length(body) AS stored \
         FROM webhook_deliveries ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
}

#[tokio::test]
async fn deliveries_are_verified_stored_then_acknowledged_and_repeats_processed_once() {
    let sb = sandbox(sandbox_knobs()).await;
    let mut app = spawn_app_with(|s| billing(s, &sb)).await;
    // Each hash length, for transactions of nobody's.
    for (n, alg) in ["sha1", "sha256", "sha512"].iter().enumerate() {
        let uid = format!("u-{alg}");
        let sig = sign(&uid, GATEWAY_PASSWORD, alg);
        let (st, body) = post(
            &app,
            "main",
            FORM,
            form(&[
                ("unique_id", &uid),
                ("transaction_id", &format!("x-{n}")),
                ("status", "approved"),
                ("signature", &sig),
            ]),
        )
        .await;
        assert_eq!(st, 200, "{alg}: {body}");
        assert!(
            body.contains(&format!(
                "<notification_echo>\n  <unique_id>{uid}</unique_id>"
            )),
            "{body}"
        );
    }
    // A repeat (fields in another order) is acknowledged the same and counted, not stored
    // again.
    let sig = sign("u-sha256", GATEWAY_PASSWORD, "sha256");
    let (st, body) = post(
        &app,
        "main",
        FORM,
        form(&[
            ("status", "approved"),
            ("signature", &sig),
            ("transaction_id", "x-1"),
            ("unique_id", "u-sha256"),
        ]),
    )
    .await;
    assert_eq!(st, 200);
    assert!(body.contains("<unique_id>u-sha256</unique_id>"));
    // Forged, unknown account, wrong content type, no unique_id, oversized.
    let forged = sign("u-forged", "not-the-password", "sha256");
    let (st, _) = post(
        &app,
        "main",
        FORM,
        form(&[
            ("unique_id", "u-forged"),
            ("status", "approved"),
            ("signature", &forged),
        ]),
    )
    .await;
    assert_eq!(st, 401, "a forged signature is refused");
    let (st, _) = post(
        &app,
        "nobody",
        FORM,
        form(&[
            ("unique_id", "u-x"),
            ("status", "approved"),
            ("signature", &sig),
        ]),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = post(
        &app,
        "main",
        "application/json",
        "{\"unique_id\":\"u\"}".into(),
    )
    .await;
    assert_eq!(st, 415);
    let (st, _) = post(&app, "main", FORM, form(&[("status", "approved")])).await;
    assert_eq!(st, 400);
    let big = "a".repeat(70_000);
    let (st, _) = post(
        &app,
        "main",
        FORM,
        form(&[("unique_id", "u-big"), ("pad", &big)]),
    )
    .await;
    assert_eq!(st, 413);

    let rows = deliveries(&app).await;
    assert_eq!(
        rows.len(),
        8,
        "every delivery stored, the repeat on its first: {rows:?}"
    );
    let accepted: Vec<&Row> = rows.iter().filter(|r| r.verdict == "accepted").collect();
    assert_eq!(accepted.len(), 3);
    assert_eq!(
        accepted
            .iter()
            .map(|r| r.signature.clone().unwrap())
            .collect::<Vec<_>>(),
        ["sha1", "sha256", "sha512"]
    );
    assert_eq!(accepted[1].repeats, 1, "the repeat is counted on the first");
    let forged_row = rows
        .iter()
        .find(|r| r.unique_id.as_deref() == Some("u-forged"))
        .unwrap();
    assert_eq!(
        (forged_row.verdict.as_str(), forged_row.state.as_str()),
        ("rejected", "ignored")
    );
    assert!(
        forged_row
            .reason
            .as_deref()
            .unwrap()
            .contains("does not match")
    );
    let big_row = rows
        .iter()
        .find(|r| {
            r.reason
                .as_deref()
                .is_some_and(|x| x.contains("over the limit"))
        })
        .unwrap();
    assert!(
        big_row.body_bytes > 65_536 && big_row.stored == 65_536,
        "{big_row:?}"
    );
    // Accepted deliveries naming no transaction of ours are processed into `unmatched`.
    eventually(
        Duration::from_secs(20),
        "accepted deliveries processed",
        || async {
            let rows = deliveries(&app).await;
            rows.iter()
                .filter(|r| r.verdict == "accepted")
                .all(|r| r.state == "unmatched")
                .then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_chargeback_after_an_approval_is_processed_and_its_reason_code_blacklists_the_iban() {
    let sb = sandbox(sandbox_knobs()).await;
    let mut app = spawn_app_with(|s| billing(s, &sb)).await;
    let rows = vec![
        ("C1".to_string(), iban(501), 1900),
        ("C2".to_string(), iban(502), 2900),
    ];
    let upload = validated_upload(&app, &rows).await;
    let run = start_run(&app, upload, "main", "legacy").await;
    assert_eq!(
        wait_run(&app, run, Duration::from_secs(60)).await.status,
        "completed"
    );
    let got = attempts(&app, run).await;
    assert_eq!(got["C1"], ["approved"]);
    let mut c = app.db.connect().await;
    let (tx1, tx2): (String, String) = sqlx::query_as(
        "SELECT max(a.transaction_id) FILTER (WHERE d.reference = 'C1'), \
                max(a.transaction_id) FILTER (WHERE d.reference = 'C2') \
         FROM billing_attempts a JOIN debtors d ON d.id = a.debtor_id WHERE a.run_id = $1",
    )
    .bind(run)
    .fetch_one(&mut c)
    .await
    .unwrap();
    let hook = app.url("/api/webhooks/emp/main");
    let raise = |body: serde_json::Value| {
        let url = format!("http://{}/_sandbox/genesis/events", sb.addr);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    };
    // The gateway tells of a chargeback (AC04: account closed) of C1, and of a retrieval
    // request and a chargeback with AM04 (insufficient funds: retry) of C2.
    raise(json!({"transaction_id": tx1, "event": "chargeback", "reason_code": "AC04", "url": hook, "signature": "sha512"})).await;
    raise(json!({"transaction_id": tx2, "event": "retrieval_request", "reason_code": "MD01", "url": hook})).await;
    raise(json!({"transaction_id": tx2, "event": "chargeback", "reason_code": "AM04", "url": hook, "signature": "sha1"})).await;
    // The three notifications are processed in any order: C2's retrieval request may be
    // processed first and already find it chargebacked at the gateway, or last. Wait for the
    // chargeback rows and the retrieval request too, not only the statuses.
    eventually(
        Duration::from_secs(30),
        "chargebacks and the retrieval request applied",
        || async {
            let got = attempts(&app, run).await;
            let mut c = app.db.connect().await;
            let (n, r): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM chargebacks), (SELECT count(*) FROM retrieval_requests)",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
            (got["C1"] == ["chargebacked"] && got["C2"] == ["chargebacked"] && n == 2 && r >= 1)
                .then_some(())
        },
    )
    .await;
    let cbs: Vec<(String, Option<String>, bool, bool)> = sqlx::query_as(
        "SELECT d.reference, c.reason_code, c.blacklisted, c.deactivated FROM chargebacks c \
         JOIN billing_attempts a ON a.id = c.attempt_id JOIN debtors d ON d.id = a.debtor_id ORDER BY d.reference",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        cbs,
        [
            ("C1".into(), Some("AC04".into()), true, true),
            ("C2".into(), Some("AM04".into()), false, false)
        ]
    );
    let (retrievals,): (i64,) = sqlx::query_as("SELECT count(*) FROM retrieval_requests")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(
        retrievals, 1,
        "a retrieval request is stored, not only logged"
    );
    let active: Vec<(bool,)> = sqlx::query_as(
        "SELECT p.active FROM debtor_profiles p JOIN billing_attempts a ON a.profile_id = p.id \
         JOIN debtors d ON d.id = a.debtor_id WHERE a.run_id = $1 ORDER BY d.reference",
    )
    .bind(run)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        active,
        [(false,), (true,)],
        "AC04 deactivates, AM04 does not"
    );
    // The history: the send's approval, then the webhook's chargeback, per attempt.
    let events: Vec<(String, String, String, String, bool)> = sqlx::query_as(
        "SELECT d.reference, e.source, e.event, e.to_status, e.applied FROM transaction_events e \
         JOIN billing_attempts a ON a.id = e.attempt_id JOIN debtors d ON d.id = a.debtor_id \
         WHERE d.reference = 'C1' ORDER BY e.id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            (
                "C1".into(),
                "send".into(),
                "status".into(),
                "approved".into(),
                true
            ),
            (
                "C1".into(),
                "webhook".into(),
                "status".into(),
                "chargebacked".into(),
                true
            ),
            (
                "C1".into(),
                "webhook".into(),
                "chargeback".into(),
                "chargebacked".into(),
                true
            ),
        ]
    );
    // Every notification was acknowledged by the echo, first time.
    let sent = sb.sandbox.notifications();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(
        sent.iter().all(|s| s.acknowledged && s.attempt == 1),
        "{sent:?}"
    );
    // A late "approved" for C1 is processed, never applied over the chargeback.
    let uid: String = sqlx::query_scalar(
        "SELECT a.unique_id FROM billing_attempts a WHERE a.transaction_id = $1",
    )
    .bind(&tx1)
    .fetch_one(&mut c)
    .await
    .unwrap();
    let sig = sign(&uid, GATEWAY_PASSWORD, "sha256");
    let (st, _) = post(
        &app,
        "main",
        FORM,
        form(&[
            ("unique_id", &uid),
            ("transaction_id", &tx1),
            ("status", "approved"),
            ("signature", &sig),
        ]),
    )
    .await;
    assert_eq!(st, 200);
    eventually(
        Duration::from_secs(20),
        "late approval processed",
        || async {
            let mut c = app.db.connect().await;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_deliveries WHERE state = 'processed'",
            )
            .fetch_one(&mut c)
            .await
            .unwrap();
            (n == 4).then_some(())
        },
    )
    .await;
    assert_eq!(attempts(&app, run).await["C1"], ["chargebacked"]);
    // The blacklisted IBAN is skipped by a later run.
    let again = validated_upload(
        &app,
        &[
            ("D1".to_string(), iban(501), 1950),
            ("D2".to_string(), iban(502), 2950),
        ],
    )
    .await;
    let run2 = start_run(&app, again, "main", "legacy").await;
    assert_eq!(
        wait_run(&app, run2, Duration::from_secs(60)).await.status,
        "completed"
    );
    let ex = exclusions(&app, run2).await;
    // Excluded twice over (its profile is inactive too; that rule is checked first).
    assert_eq!(
        ex.get("D1").map(String::as_str),
        Some("profile_inactive"),
        "{ex:?}"
    );
    let mut c = app.db.connect().await;
    let bl: Vec<(String, String)> =
        sqlx::query_as("SELECT reason, source FROM blacklist WHERE kind = 'iban' ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(
        bl,
        [("chargeback AC04".into(), "chargeback".into())],
        "only AC04 blacklists"
    );
    app.stop().await;
}
