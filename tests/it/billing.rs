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

/// [`billing`] at five debits a second, one batch, two in flight: a run still going seconds
/// later, for tests that pause it.
pub fn slow_billing(s: &mut Settings, sb: &SandboxServer) {
    billing(s, sb);
    if let Some(a) = s.gateway.accounts.get_mut("main") {
        a.rate_limit = 5;
    }
    s.billing.claim_size = 2;
    s.billing.in_flight = 2;
    s.billing.batch_jobs = 1;
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
    validated(app, &debtors_csv(rows)).await
}

/// A dry run of `upload` through the account `main`, as an API node would ask for it.
fn dry_run(upload: Uuid, cap_minor: Option<i64>) -> Billing {
    Billing {
        upload_id: upload,
        account: "main".into(),
        model: "legacy".into(),
        dry_run: true,
        skip_chargeback_check: false,
        cap_minor,
        run_id: None,
        requested_by: RequestedBy::Api,
    }
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

/// Attempt rows of a run now.
pub async fn attempt_count(app: &TestApp, run: Uuid) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM billing_attempts WHERE run_id = '{run}'"
    ))
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

    // Reconcile by the gateway's id works too (webhooks carry it), and an unknown id is
    // reported as not found, not as an error.
    let uid = sends
        .iter()
        .find(|(r, _, _)| r == "R0")
        .and_then(|(_, _, u)| u.clone())
        .unwrap();
    let acct = app.ctx.accounts.get("main").unwrap();
    let by_uid = acct
        .gateway
        .reconcile(finworker::gateway::TxKey::UniqueId(&uid))
        .await
        .unwrap();
    assert!(
        matches!(&by_uid, finworker::gateway::Lookup::Found(a) if a.status == "approved"),
        "{by_uid:?}"
    );
    let missing = acct
        .gateway
        .reconcile(finworker::gateway::TxKey::TransactionId("fw-nope"))
        .await
        .unwrap();
    assert_eq!(missing, finworker::gateway::Lookup::NotFound);

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

/// A debtor file with full control of each row: (reference, name, IBAN, BIC, amount, mandate,
/// e-mail).
fn rich_csv(rows: &[(&str, &str, String, &str, i64, &str, &str)]) -> Vec<u8> {
    let mut out =
        String::from("reference;name;iban;bic;amount_minor;mandate_id;mandate_date;email\n");
    for (r, name, iban, bic, amount, mandate, email) in rows {
        let date = if mandate.is_empty() { "" } else { "2024-01-15" };
        out.push_str(&format!(
            "{r};{name};{iban};{bic};{amount};{mandate};{date};{email}\n"
        ));
    }
    out.into_bytes()
}

/// Ingests a file with the test app's own workers and waits until it is validated.
pub async fn validated(app: &TestApp, bytes: &[u8]) -> Uuid {
    let rec = ingest(app, "debtors.csv", bytes).await;
    assert_eq!(rec.status, "completed", "{rec:?}");
    wait_validated(app, rec.id).await;
    rec.id
}

/// Waits until an upload (imported by whichever workers) is validated.
pub async fn wait_validated(app: &TestApp, id: Uuid) {
    eventually(Duration::from_secs(60), "upload validated", || async {
        finworker::uploads::get(&app.ctx.db, id)
            .await
            .unwrap()
            .filter(|r| r.validated_at.is_some())
            .map(|_| ())
    })
    .await;
}

async fn attempt_id(app: &TestApp, reference: &str) -> i64 {
    let mut c = app.db.connect().await;
    sqlx::query_scalar(
        "SELECT a.id FROM billing_attempts a JOIN debtors d ON d.id = a.debtor_id WHERE d.reference = $1 ORDER BY a.id LIMIT 1",
    )
    .bind(reference)
    .fetch_one(&mut c)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_exclusion_rule_is_checked_and_every_excluded_debtor_stored_with_its_reason() {
    use finworker::billing::blacklist::{self, Entry};
    let sb = sandbox(sandbox_knobs()).await;
    let app = spawn_app_with(|s| billing(s, &sb)).await;
    // First run: X1 and X2 are debited.
    let first = validated(
        &app,
        &rich_csv(&[
            (
                "X1",
                "Xaver Eins",
                iban(101),
                "",
                1500,
                "M-X1",
                "x1@example.com",
            ),
            (
                "X2",
                "Xaver Zwei",
                iban(102),
                "",
                1500,
                "M-X2",
                "x2@example.com",
            ),
        ]),
    )
    .await;
    let run1 = start_run(&app, first, "main", "legacy").await;
    wait_run(&app, run1, Duration::from_secs(30)).await;
    // X2's debit comes back as a chargeback.
    let x2 = attempt_id(&app, "X2").await;
    let mut tx = app.ctx.db.begin().await.unwrap();
    finworker::billing::state::apply(
        &mut tx,
        &app.ctx.settings,
        finworker::billing::state::Origin::of("ops"),
        x2,
        &["approved"],
        "chargebacked",
        None,
        Some("AC04"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // The blacklist, before the second run.
    for (e, prefix) in [
        (
            Entry::Iban(format!(" {} ", iban(110).to_lowercase())),
            false,
        ),
        (Entry::Name("ERIKA blacklisted".into()), false),
        (Entry::Email("Bl@Example.com".into()), false),
        (Entry::Bic("NOBA".into()), true),
    ] {
        assert!(
            blacklist::add(&app.ctx, &e, prefix, "fraud", "test")
                .await
                .unwrap()
        );
    }
    let second = validated(
        &app,
        &rich_csv(&[
            (
                "OK",
                "Olga Okay",
                iban(120),
                "",
                1500,
                "M-OK",
                "ok@example.com",
            ),
            (
                "INVALID",
                "Ina Valid",
                iban(121),
                "",
                1500,
                "",
                "inv@example.com",
            ),
            (
                "BL_IBAN",
                "Bert Iban",
                iban(110),
                "",
                1500,
                "M-3",
                "b1@example.com",
            ),
            (
                "BL_NAME",
                "Erika Blacklisted",
                iban(111),
                "",
                1500,
                "M-4",
                "b2@example.com",
            ),
            (
                "BL_EMAIL",
                "Emil Mail",
                iban(112),
                "",
                1500,
                "M-5",
                "bl@example.com",
            ),
            (
                "BL_BIC",
                "Bic Bank",
                iban(113),
                "NOBADEFFXXX",
                1500,
                "M-6",
                "b4@example.com",
            ),
            (
                "COOL",
                "Xaver Eins",
                iban(101),
                "",
                1600,
                "M-7",
                "x1@example.com",
            ),
            (
                "CB",
                "Xaver Zwei",
                iban(102),
                "",
                1600,
                "M-8",
                "x2@example.com",
            ),
            (
                "NOMATCH",
                "Nora Nomatch",
                iban(114),
                "",
                1500,
                "M-9",
                "nm@example.com",
            ),
            (
                "CLOSED",
                "Carl Closed",
                iban(115),
                "",
                1500,
                "M-10",
                "cc@example.com",
            ),
        ]),
    )
    .await;
    // VOP/BAV results (the policy excludes no_match and closed accounts by default).
    let mut c = app.db.connect().await;
    for (r, vop, bav) in [
        ("NOMATCH", "no_match", "valid"),
        ("CLOSED", "match", "closed"),
        ("OK", "close_match", "valid"),
    ] {
        sqlx::query(
            "INSERT INTO vop_results (debtor_id, upload_id, provider, vop_result, bav_result, checked_at) \
             SELECT id, upload_id, 'epc', $2, $3, now() FROM debtors WHERE upload_id = $1 AND reference = $4",
        )
        .bind(second)
        .bind(vop)
        .bind(bav)
        .bind(r)
        .execute(&mut c)
        .await
        .unwrap();
    }
    let run2 = start_run(&app, second, "main", "legacy").await;
    let r = wait_run(&app, run2, Duration::from_secs(30)).await;
    let ex = exclusions(&app, run2).await;
    let want: BTreeMap<String, String> = [
        ("INVALID", "invalid"),
        ("BL_IBAN", "blacklisted_iban"),
        ("BL_NAME", "blacklisted_name"),
        ("BL_EMAIL", "blacklisted_email"),
        ("BL_BIC", "blacklisted_bic"),
        ("COOL", "cooldown"),
        ("CB", "profile_inactive"),
        ("NOMATCH", "vop_excluded"),
        ("CLOSED", "vop_excluded"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(ex, want);
    assert_eq!(
        attempts(&app, run2).await.keys().collect::<Vec<_>>(),
        ["OK"]
    );
    let totals = r.totals.unwrap();
    assert_eq!(
        totals["excluded_by_reason"]["vop_excluded"]["count"], 2,
        "{totals}"
    );
    assert_eq!(totals["by_state"]["excluded"]["count"], 9, "{totals}");
    // The ledger: X1, X2 and OK only.
    let per = ledger(&sb).await.per_iban();
    assert_eq!(per.len(), 3, "{per:?}");
    assert_eq!(per.get(&iban(120)), Some(&1));
    // With the chargeback check skipped, CB's profile is still deactivated by the chargeback:
    // a chargeback's profile is never billed again by this model.
    let mut c = app.db.connect().await;
    let active: bool = sqlx::query_scalar(
        "SELECT p.active FROM debtor_profiles p JOIN billing_attempts a ON a.profile_id = p.id WHERE a.id = $1",
    )
    .bind(x2)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(!active, "a chargeback deactivates the profile");
}

#[tokio::test]
async fn a_profile_keeps_its_billing_model_and_conflicting_rows_are_skipped_with_a_reason() {
    let sb = sandbox(sandbox_knobs()).await;
    let app = spawn_app_with(|s| billing(s, &sb)).await;
    // L: a legacy profile; F: a flywheel profile (2.99 EUR).
    let first = validated(
        &app,
        &rich_csv(&[
            ("L", "Lea Legacy", iban(201), "", 15000, "M-L", ""),
            ("F", "Fritz Flywheel", iban(202), "", 299, "M-F", ""),
        ]),
    )
    .await;
    let r1 = start_run(&app, first, "main", "flywheel").await;
    wait_run(&app, r1, Duration::from_secs(30)).await;
    let mut c = app.db.connect().await;
    let models: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT billing_model, billing_amount_minor, coalesce(next_bill_at > now() + interval '89 days', false) FROM debtor_profiles ORDER BY billing_model",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        models,
        [
            ("flywheel".to_string(), 299, true),
            ("legacy".to_string(), 15000, false)
        ],
        "a 150.00 row of a flywheel run is legacy; the flywheel profile is due again in 90 days"
    );
    // Next file: L's IBAN in the flywheel band, F's IBAN in the recovery band.
    let second = validated(
        &app,
        &rich_csv(&[
            ("L2", "Lea Legacy", iban(201), "", 299, "M-L2", ""),
            ("F2", "Fritz Flywheel", iban(202), "", 4999, "M-F2", ""),
        ]),
    )
    .await;
    let r2 = start_run(&app, second, "main", "flywheel").await;
    wait_run(&app, r2, Duration::from_secs(30)).await;
    let ex = exclusions(&app, r2).await;
    assert_eq!(
        ex.get("L2").map(String::as_str),
        Some("existing_legacy_iban"),
        "{ex:?}"
    );
    assert_eq!(
        ex.get("F2").map(String::as_str),
        Some("billing_model_conflict"),
        "{ex:?}"
    );
    let unchanged: Vec<String> =
        sqlx::query_scalar("SELECT billing_model FROM debtor_profiles ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(
        unchanged,
        ["legacy", "flywheel"],
        "a profile's model never changes silently"
    );
}

#[tokio::test]
async fn a_debtor_blacklisted_while_the_run_is_underway_is_not_debited() {
    use finworker::billing::blacklist::{self, Entry};
    let sb = sandbox(Knobs {
        latency_ms: 100,
        ..sandbox_knobs()
    })
    .await;
    let app = spawn_app_with(|s| {
        billing(s, &sb);
        s.billing.claim_size = 2;
        s.billing.in_flight = 1;
        s.billing.batch_jobs = 1;
    })
    .await;
    let rows: Vec<(String, String, i64)> = (0..12u32)
        .map(|k| (format!("M{k:02}"), iban(300 + k), 1000))
        .collect();
    let upload = validated_upload(&app, &rows).await;
    let run = start_run(&app, upload, "main", "legacy").await;
    eventually(Duration::from_secs(20), "first debit made", || async {
        (sb.sandbox.calls().count("/process/") >= 1).then_some(())
    })
    .await;
    assert!(
        blacklist::add(
            &app.ctx,
            &Entry::Iban(iban(311)),
            false,
            "reported stolen",
            "test"
        )
        .await
        .unwrap()
    );
    let r = wait_run(&app, run, Duration::from_secs(30)).await;
    assert_eq!(r.status, "completed");
    let ex = exclusions(&app, run).await;
    assert_eq!(
        ex.get("M11").map(String::as_str),
        Some("blacklisted_iban"),
        "{ex:?}"
    );
    assert_eq!(ex.len(), 1, "{ex:?}");
    let per = ledger(&sb).await.per_iban();
    assert_eq!(per.get(&iban(311)), None);
    assert_eq!(per.len(), 11);
}

#[tokio::test]
async fn two_runs_on_two_accounts_with_overlapping_debtors_debit_each_debtor_once() {
    let sb = sandbox(Knobs {
        latency_ms: 20,
        ..sandbox_knobs()
    })
    .await;
    let app = spawn_app_with(|s| {
        billing(s, &sb);
        s.gateway
            .accounts
            .insert("second".into(), account(&sb, "t-second"));
        s.billing.claim_size = 3;
    })
    .await;
    // 30 IBANs; the two files share 10 (different references, different amounts).
    let a: Vec<(String, String, i64)> = (0..20u32)
        .map(|k| (format!("A{k}"), iban(400 + k), 1000))
        .collect();
    let b: Vec<(String, String, i64)> = (10..30u32)
        .map(|k| (format!("B{k}"), iban(400 + k), 1100))
        .collect();
    let ua = validated_upload(&app, &a).await;
    let ub = validated_upload(&app, &b).await;
    let (ra, rb) = tokio::join!(
        start_run(&app, ua, "main", "legacy"),
        start_run(&app, ub, "second", "legacy")
    );
    wait_run(&app, ra, Duration::from_secs(60)).await;
    wait_run(&app, rb, Duration::from_secs(60)).await;
    let l = ledger(&sb).await;
    let per = l.per_iban();
    assert_eq!(per.len(), 30, "every IBAN debited: {per:?}");
    assert!(per.values().all(|n| *n == 1), "one debit per IBAN: {per:?}");
    let terminals: std::collections::BTreeSet<&str> =
        l.debits.iter().map(|d| d.terminal.as_str()).collect();
    assert_eq!(terminals.len(), 2, "both accounts billed");
    // Each shared IBAN was excluded by exactly one of the runs, with a reason.
    let (ea, eb) = (exclusions(&app, ra).await, exclusions(&app, rb).await);
    assert_eq!(ea.len() + eb.len(), 10, "{ea:?} {eb:?}");
    assert!(
        ea.values()
            .chain(eb.values())
            .all(|r| r == "cooldown" || r == "in_flight"),
        "{ea:?} {eb:?}"
    );
}

#[tokio::test]
async fn a_dry_run_reports_what_it_would_bill_and_debits_nothing() {
    let sb = sandbox(sandbox_knobs()).await;
    let app = spawn_app_with(|s| billing(s, &sb)).await;
    let upload = validated(
        &app,
        &rich_csv(&[
            ("D1", "Dora Dry", iban(501), "", 1500, "M-1", ""),
            ("D2", "Dirk Dry", iban(502), "", 1500, "", ""),
            ("D3", "Dana Dry", iban(503), "", 2500, "M-3", ""),
        ]),
    )
    .await;
    let id = billing_job::enqueue(&app.ctx, dry_run(upload, Some(3000)))
        .await
        .unwrap();
    let r = wait_run(&app, id, Duration::from_secs(30)).await;
    assert_eq!((r.status.as_str(), r.dry_run), ("completed", true));
    let t = r.totals.unwrap();
    assert_eq!(t["by_state"]["would_bill"]["count"], 1, "{t}");
    assert_eq!(t["excluded_by_reason"]["invalid"]["count"], 1, "{t}");
    assert_eq!(t["excluded_by_reason"]["run_cap"]["count"], 1, "{t}");
    assert!(ledger(&sb).await.debits.is_empty());
    let mut c = app.db.connect().await;
    let (attempts, profiles): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM billing_attempts), (SELECT count(*) FROM debtor_profiles)",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(
        (attempts, profiles),
        (0, 0),
        "a dry run writes no attempt and no profile"
    );
}

#[tokio::test]
async fn a_large_run_refreshes_the_planner_statistics_of_its_items_before_billing() {
    // Without fresh statistics the planner took a new run for a handful of rows and every claim
    // read all of the run's items (docs/billing.md, "Benchmark").
    let sb = sandbox(sandbox_knobs()).await;
    let app = spawn_app_with(|s| billing(s, &sb)).await;
    let rows: Vec<(String, String, i64)> = (0..1000)
        .map(|i| (format!("S{i}"), iban(7000 + i), 1999))
        .collect();
    let upload = validated_upload(&app, &rows).await;
    let mut c = app.db.connect().await;
    let analyzed = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'billing_items'",
        )
        .fetch_one(&mut app.db.connect().await)
        .await
        .unwrap();
        n
    };
    assert_eq!(analyzed().await, 0);
    let id = billing_job::enqueue(&app.ctx, dry_run(upload, None))
        .await
        .unwrap();
    let r = wait_run(&app, id, Duration::from_secs(60)).await;
    assert_eq!(r.totals.unwrap()["by_state"]["would_bill"]["count"], 1000);
    assert_eq!(
        analyzed().await,
        1,
        "one ANALYZE, by the run, before its rules ran"
    );
    let (n_distinct,): (Option<f32>,) = sqlx::query_as(
        "SELECT n_distinct FROM pg_stats WHERE tablename = 'billing_items' AND attname = 'run_id'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(n_distinct.is_some(), "the run's rows are in the statistics");
}

#[tokio::test]
async fn the_monthly_cap_of_an_account_stops_the_run_at_the_cap() {
    let sb = sandbox(sandbox_knobs()).await;
    let app = spawn_app_with(|s| {
        billing(s, &sb);
        s.gateway
            .accounts
            .get_mut("main")
            .unwrap()
            .monthly_cap_minor = Some(3500);
    })
    .await;
    let rows: Vec<(String, String, i64)> = (0..6u32)
        .map(|k| (format!("C{k}"), iban(600 + k), 1000))
        .collect();
    let upload = validated_upload(&app, &rows).await;
    let run = start_run(&app, upload, "main", "legacy").await;
    let r = wait_run(&app, run, Duration::from_secs(30)).await;
    let t = r.totals.unwrap();
    assert_eq!(t["attempts_by_status"]["approved"]["count"], 3, "{t}");
    assert_eq!(
        t["excluded_by_reason"]["account_monthly_cap"]["count"], 3,
        "{t}"
    );
    assert_eq!(ledger(&sb).await.debits.len(), 3);
    let accounts = finworker::billing::accounts::list(&app.ctx.db)
        .await
        .unwrap();
    assert_eq!(accounts[0].month_committed_minor, 3000);
    assert_eq!(accounts[0].monthly_cap_minor, Some(3500));
}

#[tokio::test]
async fn an_open_breaker_pauses_the_run_which_resumes_by_itself_with_no_debit_lost_or_doubled() {
    let sb = sandbox(Knobs {
        latency_ms: 20,
        ..sandbox_knobs()
    })
    .await;
    let app = spawn_app_with(|s| {
        billing(s, &sb);
        s.billing.claim_size = 4;
        s.billing.in_flight = 4;
        s.gateway.accounts.get_mut("main").unwrap().rate_limit = 40;
    })
    .await;
    // 120 debtors at 40 debits/s: the breaker opens while most are still queued.
    let rows: Vec<(String, String, i64)> = (0..120u32)
        .map(|k| (format!("B{k:03}"), iban(700 + k), 1000))
        .collect();
    let upload = validated_upload(&app, &rows).await;
    // A 3-second outage from the start: every call gets 503.
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    sb.sandbox.set_knobs(Knobs {
        outage_until_ms: Some(now_ms + 3000),
        ..sb.sandbox.knobs()
    });
    let run = start_run(&app, upload, "main", "legacy").await;
    eventually(
        Duration::from_secs(20),
        "run paused by the breaker",
        || async {
            run::get(&app.ctx.db, run)
                .await
                .unwrap()
                .filter(|r| r.status == "paused" && r.paused_by.as_deref() == Some("breaker"))
        },
    )
    .await;
    let r = wait_run(&app, run, Duration::from_secs(60)).await;
    assert_eq!(r.status, "completed");
    let per = ledger(&sb).await.per_iban();
    assert_eq!(per.len(), 120, "every debtor debited: {:?}", r.totals);
    assert!(per.values().all(|n| *n == 1), "{per:?}");
    let got = attempts(&app, run).await;
    assert_eq!(got.len(), 120);
    assert!(got.values().all(|s| s == &["approved"]), "{got:?}");
    let pauses = app
        .counter("finworker_billing_run_pauses_total")
        .unwrap_or(0);
    assert!(pauses >= 1, "{}", app.ctx.metrics.render());
    // Debits sent during the outage were unknown, found missing by a reconcile and sent again
    // under their own transaction_id: exactly one accepted sdd_sale per debtor.
    let calls = sb.sandbox.calls();
    let accepted = calls
        .calls
        .iter()
        .filter(|c| c.path.starts_with("/process/") && c.status == 200)
        .count();
    assert_eq!(accepted, 120);
}

/// An attempt's status and its profile's lifetime total.
async fn void_state(app: &TestApp, transaction_id: &str) -> (String, i64) {
    sqlx::query_as(
        "SELECT a.status, p.lifetime_charged_minor FROM billing_attempts a \
         JOIN debtor_profiles p ON p.id = a.profile_id WHERE a.transaction_id = $1",
    )
    .bind(transaction_id)
    .fetch_one(&mut app.db.connect().await)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_debit_is_voided_only_at_the_gateway_after_asking_it_and_never_twice() {
    let sb = sandbox(sandbox_knobs()).await;
    let app = spawn_app_with(|s| billing(s, &sb)).await;
    // Amounts ending in 01 are declined by the sandbox, the others approved.
    let rows: Vec<(String, String, i64)> = [
        ("V1", 801, 1999),
        ("V2", 802, 2999),
        ("V3", 803, 3999),
        ("V4", 804, 1501),
    ]
    .iter()
    .map(|(r, i, a)| (r.to_string(), iban(*i), *a))
    .collect();
    let upload = validated_upload(&app, &rows).await;
    let run = start_run(&app, upload, "main", "legacy").await;
    assert_eq!(
        wait_run(&app, run, Duration::from_secs(60)).await.status,
        "completed"
    );
    let mut c = app.db.connect().await;
    let ids: BTreeMap<String, (String, String, Option<String>)> = sqlx::query_as::<_, (String, String, String, Option<String>)>(
        "SELECT d.reference, a.transaction_id, a.status, a.unique_id FROM billing_attempts a JOIN debtors d ON d.id = a.debtor_id WHERE a.run_id = $1",
    )
    .bind(run)
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|(r, t, s, u)| (r, (t, s, u)))
    .collect();
    assert_eq!(ids["V4"].1, "declined");
    let at_gateway = |t: &str| {
        sb.sandbox
            .ledger()
            .debits
            .iter()
            .find(|d| d.transaction_id == t && d.transaction_type == "sdd_sale")
            .map(|d| d.status.clone())
    };
    let sends = || sb.sandbox.calls().count("/process/");

    // 1. An approved debit: asked about, then voided at the gateway under one void id; the
    //    attempt follows the state machine (the profile's lifetime total is taken back).
    let (t1, ..) = ids["V1"].clone();
    assert_eq!(void_state(&app, &t1).await, ("approved".into(), 1999));
    let before = sends();
    let (ok, out, err) =
        crate::helpers::process::cli_result_async(&app.settings, &["billing", "void", &t1]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("voided at the gateway (void void-{t1})")),
        "{out}"
    );
    assert_eq!(sends(), before + 1, "one void sent");
    assert_eq!(at_gateway(&t1).as_deref(), Some("voided"));
    assert_eq!(void_state(&app, &t1).await, ("voided".into(), 0));

    // 2. The same command again: the gateway says voided already, nothing is sent.
    let before = sends();
    let (ok, out, err) =
        crate::helpers::process::cli_result_async(&app.settings, &["billing", "void", &t1]).await;
    assert!(ok, "{err}");
    assert!(out.contains("already voided at the gateway"), "{out}");
    assert_eq!(sends(), before, "no second void");

    // 3. Voided at the gateway behind our back (its answer lost, say): the re-check records it
    //    and sends nothing.
    let (t2, _, u2) = ids["V2"].clone();
    let gw = app.ctx.accounts.get("main").unwrap().gateway.clone();
    let a = gw
        .void(&format!("void-{t2}"), u2.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(a.status, "approved");
    let before = sends();
    let (ok, out, _) =
        crate::helpers::process::cli_result_async(&app.settings, &["billing", "void", &t2]).await;
    assert!(ok && out.contains("already voided"), "{out}");
    assert_eq!(sends(), before);
    assert_eq!(void_state(&app, &t2).await.0, "voided");

    // 4. A declined debit has nothing to void; no void is sent.
    let before = sends();
    let (ok, _, err) = crate::helpers::process::cli_result_async(
        &app.settings,
        &["billing", "void", &ids["V4"].0],
    )
    .await;
    assert!(
        !ok && err.contains("is declined at the gateway: there is nothing to void"),
        "{err}"
    );
    assert_eq!(sends(), before);

    // 5. Past billing.void_window: refused before the gateway is even asked.
    let (t3, ..) = ids["V3"].clone();
    sqlx::query("UPDATE billing_attempts SET created_at = now() - interval '2 days' WHERE transaction_id = $1")
        .bind(&t3)
        .execute(&mut c)
        .await
        .unwrap();
    let calls = sb.sandbox.calls().calls.len();
    let (ok, _, err) =
        crate::helpers::process::cli_result_async(&app.settings, &["billing", "void", &t3]).await;
    assert!(
        !ok && err.contains("longer ago than billing.void_window"),
        "{err}"
    );
    assert_eq!(sb.sandbox.calls().calls.len(), calls, "no call at all");
    assert_eq!(at_gateway(&t3).as_deref(), Some("approved"));
    assert_eq!(void_state(&app, &t3).await.0, "approved");

    // 6. The gateway down: nothing is voided, nothing recorded, and the command says to try
    //    again (V3 is back inside the window).
    sqlx::query("UPDATE billing_attempts SET created_at = now() WHERE transaction_id = $1")
        .bind(&t3)
        .execute(&mut c)
        .await
        .unwrap();
    let mut k = sb.sandbox.knobs();
    k.outage_until_ms =
        Some(u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap() + 600_000);
    sb.sandbox.set_knobs(k.clone());
    let before = sends();
    let (ok, _, err) =
        crate::helpers::process::cli_result_async(&app.settings, &["billing", "void", &t3]).await;
    assert!(
        !ok && err.contains("nothing was voided: try again later"),
        "{err}"
    );
    assert_eq!(sends(), before);
    assert_eq!(void_state(&app, &t3).await.0, "approved");
    k.outage_until_ms = None;
    sb.sandbox.set_knobs(k);
    let (ok, out, err) =
        crate::helpers::process::cli_result_async(&app.settings, &["billing", "void", &t3]).await;
    assert!(ok && out.contains("voided at the gateway"), "{out} {err}");
    assert_eq!(at_gateway(&t3).as_deref(), Some("voided"));

    // 7. An id no debit has.
    let (ok, _, err) = crate::helpers::process::cli_result_async(
        &app.settings,
        &["billing", "void", "no-such-debit"],
    )
    .await;
    assert!(
        !ok && err.contains("no debit has the transaction id no-such-debit"),
        "{err}"
    );
}
