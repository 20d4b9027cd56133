//! The ops API: its OpenAPI document against the routes, its token, and its operations
//! doing what the CLI does (retry a dead job, pause a queue, pause and resume a run).

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Value, json};

use crate::{
    billing::{
        attempt_count, iban, sandbox_knobs, slow_billing, start_run, validated_upload, wait_run,
    },
    helpers::{
        app::{OPS_TOKEN, TOKEN, TestApp},
        eventually, spawn_app, spawn_app_with,
    },
    verification::sandbox,
};

async fn ops(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = match method {
        "GET" => app.http.get(app.url(path)),
        _ => app.http.post(app.url(path)),
    }
    .bearer_auth(OPS_TOKEN);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn doc() -> Value {
    serde_json::from_str(finworker::http::ops::OPENAPI).unwrap()
}

/// Resolves `$ref` and merges `allOf` into one object schema.
fn resolve<'a>(doc: &'a Value, s: &'a Value) -> Value {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return resolve(doc, &doc["components"]["schemas"][name]);
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        let mut required = Vec::new();
        for part in all {
            let p = resolve(doc, part);
            required.extend(p["required"].as_array().cloned().unwrap_or_default());
        }
        return json!({ "type": "object", "required": required });
    }
    s.clone()
}

/// Checks `v` against the schema's type and required properties (one level, items too).
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) {
    let s = resolve(doc, schema);
    match s["type"].as_str() {
        Some("array") => {
            let items = v
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array: {v}"));
            for (i, item) in items.iter().enumerate() {
                conforms(doc, &s["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("object") => {
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object: {v}"));
            for r in s["required"].as_array().into_iter().flatten() {
                let key = r.as_str().unwrap();
                assert!(obj.contains_key(key), "{at}: no `{key}` in {v}");
            }
            for (k, p) in s["properties"].as_object().into_iter().flatten() {
                if let Some(sub) = obj.get(k)
                    && !sub.is_null()
                    && (p.get("$ref").is_some() || p["type"] == "array")
                {
                    conforms(doc, p, sub, &format!("{at}.{k}"));
                }
            }
        }
        _ => {}
    }
}

#[test]
fn the_openapi_document_describes_exactly_the_routes_the_server_has() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let mut served: BTreeSet<(String, String)> = finworker::http::ops::routes()
        .into_iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    served.insert(("GET".into(), "/api/openapi.json".into()));
    assert_eq!(
        documented, served,
        "routes and /api/openapi.json differ (documented vs served)"
    );
    // Every reference resolves, and every path parameter is declared.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"").skip(1) {
        let target = r.split('"').next().unwrap();
        let mut node = &doc;
        for part in target.trim_start_matches("#/").split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "dangling $ref {target}");
    }
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (m, op) in ops.as_object().unwrap() {
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(['{', '}']);
                assert!(
                    op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["name"] == name && p["in"] == "path"),
                    "{m} {path}: path parameter {name} not declared"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_documented_read_answers_in_its_documented_shape_and_only_to_the_ops_token() {
    let app = spawn_app().await;
    // Something in each list: a dead job and a finished one.
    let dead = app
        .enqueue("test_job", json!({"label": "dead", "permanent": true}))
        .await;
    app.finished_runs(&dead, Duration::from_secs(20)).await;
    eventually(Duration::from_secs(10), "dead job stored", || async {
        app.dead_error(&dead).await
    })
    .await;

    let served = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "the document needs no token");
    let doc: Value = served.json().await.unwrap();
    assert_eq!(doc, self::doc());

    for (path, ops_) in doc["paths"].as_object().unwrap() {
        let Some(op) = ops_.get("get") else { continue };
        if path == "/api/openapi.json" {
            continue;
        }
        let concrete = path.replace("{id}", &dead);
        // No token, or the producers' token: 401, in the error shape.
        for token in [None, Some(TOKEN)] {
            let mut req = app.http.get(app.url(&concrete));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "GET {concrete} with {token:?}");
            let body: Value = resp.json().await.unwrap();
            conforms(
                &doc,
                &json!({"$ref": "#/components/schemas/Error"}),
                &body,
                path,
            );
        }
        let (status, body) = ops(&app, "GET", &concrete, None).await;
        if path != "/api/ops/jobs/{id}" && path.contains("{id}") {
            // No run, upload or report in this test (the billing and CLI tests read them):
            // an unknown id is 404, in the error shape.
            assert_eq!(status, 404, "GET {concrete}: {body}");
            assert!(op["responses"]["404"].is_object());
            conforms(
                &doc,
                &json!({"$ref": "#/components/schemas/Error"}),
                &body,
                path,
            );
            continue;
        }
        assert_eq!(status, 200, "GET {concrete}: {body}");
        let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
        conforms(&doc, schema, &body, &concrete);
    }
    let (_, queues) = ops(&app, "GET", "/api/ops/queues", None).await;
    let test_queue = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "test_job")
        .unwrap();
    assert_eq!(test_queue["failed"], 1, "{test_queue}");
    assert!(test_queue["finished_last_hour"].as_i64().unwrap() >= 1);
    let (_, failed) = ops(&app, "GET", "/api/ops/jobs/failed", None).await;
    assert_eq!(failed[0]["job_id"], dead.as_str(), "{failed}");
    // An unknown route under /api/ops is 404 only after the token is checked… and with it.
    let (status, _) = ops(&app, "GET", "/api/ops/nothing-here", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_dead_job_is_retried_and_a_queue_paused_over_the_ops_api() {
    let app = spawn_app().await;
    // Fails its three attempts, then dead; the retry is attempt four, which succeeds.
    let id = app
        .enqueue("test_job", json!({"label": "flaky", "fail_times": 3}))
        .await;
    eventually(Duration::from_secs(30), "job dead", || async {
        app.dead_error(&id).await
    })
    .await;
    let (status, body) = ops(&app, "POST", &format!("/api/ops/jobs/{id}/retry"), None).await;
    assert_eq!(
        (status, &body["queue"]),
        (200, &json!("test_job")),
        "{body}"
    );
    let runs = eventually(Duration::from_secs(20), "retried job succeeded", || async {
        let runs = app.runs(&id).await;
        runs.iter().any(|r| r.status == "succeeded").then_some(runs)
    })
    .await;
    assert_eq!(runs.last().unwrap().attempt, 4);
    let (status, _) = ops(&app, "POST", &format!("/api/ops/jobs/{id}/retry"), None).await;
    assert_eq!(status, 404, "a job no longer dead cannot be retried again");

    let (status, body) = ops(
        &app,
        "POST",
        "/api/ops/queues/noop/pause",
        Some(json!({"reason": "deploy"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    let held = app.enqueue("noop", json!({"note": "held"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(app.runs(&held).await.is_empty(), "a paused queue ran a job");
    let (_, queues) = ops(&app, "GET", "/api/ops/queues", None).await;
    let noop = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "noop")
        .unwrap();
    assert_eq!(noop["paused"]["paused_by"], "api", "{noop}");
    assert_eq!(noop["paused"]["reason"], "deploy");
    assert_eq!(noop["waiting"], 1);
    let (status, body) = ops(&app, "POST", "/api/ops/queues/noop/resume", None).await;
    assert_eq!((status, &body["changed"]), (200, &json!(true)));
    app.finished_runs(&held, Duration::from_secs(20)).await;
    let (status, body) = ops(&app, "POST", "/api/ops/queues/nosuch/pause", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nosuch")
    );
}

#[tokio::test]
async fn a_billing_run_is_paused_and_resumed_over_the_ops_api_with_every_debtor_debited_once() {
    let sb = sandbox(sandbox_knobs()).await;
    // Five debits a second: the run is still going when it is paused.
    let app = spawn_app_with(|s| slow_billing(s, &sb)).await;
    let rows: Vec<_> = (0..30)
        .map(|i| (format!("R{i}"), iban(7000 + i), 1000 + 100 * i64::from(i)))
        .collect();
    let upload = validated_upload(&app, &rows).await;
    let run = start_run(&app, upload, "main", "legacy").await;
    eventually(Duration::from_secs(20), "first debits", || async {
        (attempt_count(&app, run).await > 0).then_some(())
    })
    .await;
    let (status, body) = ops(&app, "POST", &format!("/api/ops/runs/{run}/pause"), None).await;
    assert_eq!((status, &body["status"]), (200, &json!("paused")), "{body}");
    // Calls already made finish, debits waiting for the rate limit are withdrawn (within the
    // batch's 500 ms status check); then nothing moves.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = attempt_count(&app, run).await;
    let debited = sb.sandbox.ledger().debits.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sb.sandbox.ledger().debits.len(),
        debited,
        "a paused run went on debiting"
    );
    assert!(
        attempt_count(&app, run).await <= held,
        "a paused run went on claiming"
    );
    assert!(debited < 30, "the run finished before it could be paused");
    let (_, shown) = ops(&app, "GET", &format!("/api/ops/runs/{run}"), None).await;
    assert_eq!(shown["paused_by"], "ops", "{shown}");
    assert!(shown["now"].is_object(), "{shown}");

    let (status, body) = ops(&app, "POST", &format!("/api/ops/runs/{run}/resume"), None).await;
    assert_eq!(status, 200, "{body}");
    let done = wait_run(&app, run, Duration::from_secs(60)).await;
    assert_eq!(done.status, "completed");
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(DISTINCT debtor_id) FROM billing_attempts WHERE run_id = '{run}'"
        ))
        .await,
        30
    );
    let ledger = sb.sandbox.ledger();
    assert_eq!(ledger.debits.len(), 30, "one debit per debtor");
    assert!(ledger.per_iban().values().all(|n| *n == 1));
    let (status, body) = ops(&app, "POST", &format!("/api/ops/runs/{run}/pause"), None).await;
    assert_eq!(status, 422, "a completed run cannot be paused: {body}");
    let (status, _) = ops(&app, "POST", "/api/ops/runs/not-a-uuid/pause", None).await;
    assert_eq!(status, 400);
}
