//! Billing end to end: upload → validated debtors → billing run → debits at the sandbox
//! gateway over real HTTP (Genesis XML), with the sandbox's ledger as the witness of what was
//! debited.

use std::{collections::BTreeMap, time::Duration};

use finworker::{
    billing::run,
    config::{GatewayAccountSettings, Settings},
    jobs::billing::{self as billing_job, Billing, RequestedBy},
    sandbox::{Knobs, genesis::Ledger},
    testdata::iban_with_check,
};
use secrecy::SecretString;
use uuid::Uuid;

use crate::{
    helpers::{app::TestApp, eventually, spawn_app_with},
    uploads::ingest,
    verification::{SandboxServer, sandbox},
};

pub const GATEWAY_PASSWORD: &str = "gw-password-0123456789";

/// A Genesis account on the sandbox.
pub fn account(sb: &SandboxServer, token: &str) -> GatewayAccountSettings {
    GatewayAccountSettings {
        gateway: "genesis".into(),
        endpoint: format!("http://{}", sb.addr),
        terminal_token: token.into(),
        username: format!("user-{token}"),
        password: Some(SecretString::from(GATEWAY_PASSWORD)),
        currency: "EUR".into(),
        rate_limit: 500,
        breaker_min_success_rate: 0.5,
        breaker_min_requests: 5,
        breaker_window: Duration::from_secs(1),
        breaker_open_for: Duration::from_secs(1),
        breaker_open_max: Duration::from_secs(2),
        monthly_cap_minor: None,
        enabled: true,
    }
}

/// Billing against `sb` with quick timings: answers within 1 s, unknown debits reconciled
/// at once and sent again 1 s after their deadline.
pub fn billing(s: &mut Settings, sb: &SandboxServer) {
    s.gateway
        .accounts
        .insert("main".into(), account(sb, "t-main"));
    s.gateway.request_timeout = Duration::from_millis(1500);
    s.gateway.connect_timeout = Duration::from_millis(500);
    s.gateway.resend_after = Duration::from_secs(1);
    s.gateway.reconcile_interval = Duration::from_millis(300);
    s.gateway.reconcile_max_interval = Duration::from_secs(2);
    s.billing.claim_size = 10;
    s.billing.batch_jobs = 2;
    s.billing.slice = Duration::from_secs(5);
    s.billing.recurring = false;
}

pub fn sandbox_knobs() -> Knobs {
    Knobs {
        genesis_password: Some(GATEWAY_PASSWORD.into()),
        genesis_async_ms: 500,
        genesis_hang_ms: 4000,
        ..Knobs::default()
    }
}

/// A German IBAN made unique by `serial`.
pub fn iban(serial: u32) -> String {
    iban_with_check("DE", &format!("370400440{serial:09}"))
}

/// A debtor file: (reference, IBAN, amount in minor units), names and mandates filled in.
pub fn debtors_csv(rows: &[(String, String, i64)]) -> Vec<u8> {
    let mut out = String::from("reference;name;iban;amount_minor;mandate_id;mandate_date;email\n");
    for (r, iban, amount) in rows {
        out.push_str(&format!(
            "{r};Erika Muster{r};{iban};{amount};M-{r};2024-01-15;{r}@example.com\n"
        ));
    }
    out.into_bytes()
}

pub async fn validated_upload(app: &TestApp, rows: &[(String, String, i64)]) -> Uuid {
    let rec = ingest(app, "debtors.csv", &debtors_csv(rows)).await;
    assert_eq!(rec.status, "completed", "{rec:?}");
    eventually(Duration::from_secs(60), "upload validated", || async {
        finworker::uploads::get(&app.ctx.db, rec.id)
            .await
            .unwrap()
            .filter(|r| r.validated_at.is_some())
            .map(|_| ())
    })
    .await;
    rec.id
}

pub async fn start_run(app: &TestApp, upload: Uuid, account: &str, model: &str) -> Uuid {
    billing_job::enqueue(
        &app.ctx,
        Billing {
            upload_id: upload,
            account: account.into(),
            model: model.into(),
            dry_run: false,
            skip_chargeback_check: false,
            cap_minor: None,
            run_id: None,
            requested_by: RequestedBy::Cli,
        },
    )
    .await
    .unwrap()
}

pub async fn wait_run(app: &TestApp, id: Uuid, limit: Duration) -> run::RunRow {
    eventually(limit, "billing run over", || async {
        run::get(&app.ctx.db, id)
            .await
            .unwrap()
            .filter(|r| matches!(r.status.as_str(), "completed" | "cancelled"))
    })
    .await
}

pub async fn ledger(sb: &SandboxServer) -> Ledger {
    sb.sandbox.ledger()
}

/// reference → attempt statuses, in order.
pub async fn attempts(app: &TestApp, run: Uuid) -> BTreeMap<String, Vec<String>> {
    let mut c = app.db.connect().await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT d.reference, a.status FROM billing_attempts a JOIN debtors d ON d.id = a.debtor_id \
         WHERE a.run_id = $1 ORDER BY a.id",
    )
    .bind(run)
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (r, s) in rows {
        m.entry(r).or_default().push(s);
    }
    m
}

/// reference → exclusion reason of a run's excluded items.
pub async fn exclusions(app: &TestApp, run: Uuid) -> BTreeMap<String, String> {
    let mut c = app.db.connect().await;
    sqlx::query_as(
        "SELECT d.reference, i.reason FROM billing_items i JOIN debtors d ON d.id = i.debtor_id \
         WHERE i.run_id = $1 AND i.state = 'excluded'",
    )
    .bind(run)
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test]
async fn each_gateway_outcome_is_recorded_and_nothing_is_debited_twice() {
    let sb = sandbox(sandbox_knobs()).await;
    let app = spawn_app_with(|s| billing(s, &sb)).await;
    // The amount's last two digits choose the sandbox's outcome (docs/sandbox.md).
    let rows: Vec<(String, String, i64)> = (0..9u32)
        .map(|k| (format!("R{k}"), iban(k), 1900 + i64::from(k)))
        .collect();
    let upload = validated_upload(&app, &rows).await;
    let run = start_run(&app, upload, "main", "legacy").await;
    let r = wait_run(&app, run, Duration::from_secs(60)).await;
    assert_eq!(r.status, "completed");
    let got = attempts(&app, run).await;
    let one = |r: &str| got.get(r).cloned().unwrap_or_default();
    assert_eq!(one("R0"), ["approved"]);
    assert_eq!(one("R1"), ["declined"]);
    assert_eq!(one("R2"), ["declined"]);
    assert!(
        matches!(one("R3")[0].as_str(), "pending_async" | "approved"),
        "{got:?}"
    );
    assert_eq!(
        one("R4"),
        ["error"],
        "a refused request is final: nothing was debited"
    );
    // Accepted, then a timeout / a dropped connection / a 500: unknown at first, then the
    // reconcile finds the debit; it is never sent again.
    for r in ["R5", "R6", "R7"] {
        assert_eq!(one(r), ["approved"], "{r}: {got:?}");
    }
    let mut c = app.db.connect().await;
    let sends: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT d.reference, a.sends, a.unique_id FROM billing_attempts a JOIN debtors d ON d.id = a.debtor_id \
         WHERE a.run_id = $1 ORDER BY d.reference",
    )
    .bind(run)
    .fetch_all(&mut c)
    .await
    .unwrap();
    for (r, n, uid) in &sends {
        assert_eq!(*n, 1, "{r} was sent {n} times");
        if r != "R4" {
            assert!(uid.is_some(), "{r} has the gateway's id");
        }
    }
    let calls = sb.sandbox.calls();
    assert_eq!(
        calls.count("/process/t-main/"),
        9,
        "one sdd_sale per debtor"
    );
    // Sandbox ledger: one debit per accepted debtor.
    let l = ledger(&sb).await;
    let per = l.per_iban();
    for k in [0u32, 3, 5, 6, 7] {
        assert_eq!(per.get(&iban(k)), Some(&1), "debtor {k}: {per:?}");
    }
    for k in [1u32, 2, 4] {
        assert_eq!(per.get(&iban(k)), None, "debtor {k} was not debited");
    }
    // The async debit settles: a reconcile sees it approved.
    eventually(Duration::from_secs(20), "async debit settled", || async {
        let mut c = app.db.connect().await;
        let s: String = sqlx::query_scalar(
            "SELECT a.status FROM billing_attempts a JOIN debtors d ON d.id = a.debtor_id WHERE d.reference = 'R3'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        (s == "approved").then_some(())
    })
    .await;
    // Profiles: lifetime totals count each approved debit once.
    let lifetime: i64 =
        sqlx::query_scalar("SELECT sum(lifetime_charged_minor)::bigint FROM debtor_profiles")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(lifetime, 1900 + 1903 + 1905 + 1906 + 1907);
    // Totals by outcome and by exclusion reason are on the run.
    let totals = r.totals.expect("totals written at completion");
    assert_eq!(totals["items"], 9, "{totals}");
    assert_eq!(totals["by_state"]["attempted"]["count"], 9, "{totals}");
    assert!(
        totals["attempts_by_status"]["approved"]["count"]
            .as_i64()
            .unwrap()
            >= 4,
        "{totals}"
    );
    assert_eq!(
        totals["attempts_by_status"]["error"]["amount_minor"], 1904,
        "{totals}"
    );

    // The same upload billed again: every debtor debited or pending is excluded, with its
    // reason; only the declined and refused ones are tried again (a new debit each).
    let again = start_run(&app, upload, "main", "legacy").await;
    wait_run(&app, again, Duration::from_secs(60)).await;
    let ex = exclusions(&app, again).await;
    for r in ["R0", "R3", "R5", "R6", "R7"] {
        assert_eq!(
            ex.get(r).map(String::as_str),
            Some("already_collected"),
            "{r}: {ex:?}"
        );
    }
    let per = ledger(&sb).await.per_iban();
    for k in [0u32, 3, 5, 6, 7] {
        assert_eq!(
            per.get(&iban(k)),
            Some(&1),
            "debtor {k} debited once: {per:?}"
        );
    }
    let retried: Vec<String> = sqlx::query_scalar(
        "SELECT transaction_id FROM billing_attempts a JOIN debtors d ON d.id = a.debtor_id \
         WHERE d.reference = 'R1' ORDER BY a.id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(retried.len(), 2);
    assert!(
        retried[0].ends_with("-1") && retried[1].ends_with("-2"),
        "{retried:?}"
    );
}
