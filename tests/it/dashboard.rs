//! The dashboard in a real browser: headless Chromium driven through chromedriver
//! (Debian's `chromium` and `chromium-driver`, installed by `scripts/setup.sh --with-s3`).

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::{
    billing::{
        attempt_count, iban, sandbox_knobs, slow_billing, start_run, validated_upload, wait_run,
    },
    helpers::{app::OPS_TOKEN, eventually, spawn_app_with},
    verification::sandbox,
};

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole process group: chromedriver and the Chromium processes it started (a
        // failed test never closes its session, and Chromium would outlive the driver).
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver (Debian package chromium-driver; scripts/setup.sh --with-s3 installs it)",
        );
    let driver = Driver { child, port };
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,2000"],
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    let client = eventually(Duration::from_secs(20), "chromedriver session", || {
        let (caps, url) = (caps.clone(), url.clone());
        async move {
            ClientBuilder::rustls()
                .ok()?
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await;
    (driver, client)
}

/// The text of the element `css`, waiting (up to 10 s) for it: a click's navigation may
/// still be under way.
async fn text_of(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Presses the button `id` and waits for the page it leads to.
async fn press(c: &Client, id: &str) {
    let before = c.find(Locator::Css("html")).await.unwrap();
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The old page's root goes stale once the new one has loaded.
    eventually(Duration::from_secs(10), "the next page", || async {
        before.tag_name().await.is_err().then_some(())
    })
    .await;
}

#[tokio::test]
async fn ops_sign_in_see_a_failed_job_retry_it_and_pause_a_billing_run_in_a_real_browser() {
    let sb = sandbox(sandbox_knobs()).await;
    // Five debits a second: the run is still going when it is paused.
    let app = spawn_app_with(|s| slow_billing(s, &sb)).await;
    // A job that fails its three attempts (dead), and would succeed on a fourth.
    let job = app
        .enqueue(
            "test_job",
            json!({"label": "flaky-in-browser", "fail_times": 3}),
        )
        .await;
    eventually(Duration::from_secs(30), "job dead", || async {
        app.dead_error(&job).await
    })
    .await;
    let rows: Vec<_> = (0..40)
        .map(|i| (format!("B{i}"), iban(8000 + i), 2000 + 100 * i64::from(i)))
        .collect();
    let upload = validated_upload(&app, &rows).await;

    let (_driver, c) = browser().await;
    let page = app.url("/dashboard");

    // Not signed in: the sign-in form, no data. A wrong token is refused.
    c.goto(&page).await.unwrap();
    assert!(c.find(Locator::Id("token")).await.is_ok());
    assert!(c.find(Locator::Id("queues")).await.is_err());
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    press(&c, "sign-in").await;
    assert!(
        text_of(&c, "#login-error")
            .await
            .contains("not the ops token")
    );
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(OPS_TOKEN)
        .await
        .unwrap();
    press(&c, "sign-in").await;

    // The failed job is listed with its error; the test_job queue counts it.
    let row = text_of(&c, &format!("#dead-{job}")).await;
    assert!(row.contains("test_job") && row.contains("3"), "{row}");
    let queue_row = text_of(&c, "#queue-test_job").await;
    assert!(queue_row.contains('1'), "{queue_row}");
    assert!(
        c.find(Locator::Css("#queue-test_job svg.chart"))
            .await
            .is_ok()
    );

    // Retry: the flash says so, the job runs a fourth time and succeeds.
    press(&c, &format!("retry-{job}")).await;
    assert!(
        text_of(&c, "#flash")
            .await
            .contains("re-queued on test_job"),
        "{}",
        c.source().await.unwrap()
    );
    let runs = eventually(Duration::from_secs(20), "retried job succeeded", || async {
        let runs = app.runs(&job).await;
        runs.iter().any(|r| r.status == "succeeded").then_some(runs)
    })
    .await;
    assert_eq!(runs.last().unwrap().attempt, 4);
    c.goto(&page).await.unwrap();
    assert!(
        c.find(Locator::Id(&format!("dead-{job}"))).await.is_err(),
        "a retried job is no longer listed as failed"
    );

    // The run shows progress; Pause stops it, and the page says so.
    let run = start_run(&app, upload, "main", "legacy").await;
    eventually(Duration::from_secs(20), "run running", || async {
        (attempt_count(&app, run).await > 0).then_some(())
    })
    .await;
    c.goto(&page).await.unwrap();
    assert!(
        c.find(Locator::Css(&format!("#run-{run} .progress")))
            .await
            .is_ok()
    );
    press(&c, &format!("pause-run-{run}")).await;
    assert!(text_of(&c, "#flash").await.contains("paused"));
    assert_eq!(text_of(&c, &format!("#run-status-{run}")).await, "paused");
    assert!(
        c.find(Locator::Id(&format!("resume-run-{run}")))
            .await
            .is_ok()
    );
    let status = app
        .scalar(&format!(
            "SELECT count(*) FROM billing_runs WHERE id = '{run}' AND status = 'paused' AND paused_by = 'ops'"
        ))
        .await;
    assert_eq!(status, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = attempt_count(&app, run).await;
    assert!(held < 40, "the run finished before the browser paused it");
    let debited = sb.sandbox.ledger().debits.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sb.sandbox.ledger().debits.len(),
        debited,
        "the gateway got debits after the pause"
    );
    // Debits claimed ahead and not sent are released (their attempt rows go): none is added.
    assert!(
        attempt_count(&app, run).await <= held,
        "a paused run went on claiming"
    );

    // Resume from the page: the run completes, every debtor debited once.
    press(&c, &format!("resume-run-{run}")).await;
    let done = wait_run(&app, run, Duration::from_secs(60)).await;
    assert_eq!(done.status, "completed");
    assert_eq!(sb.sandbox.ledger().debits.len(), 40);
    c.goto(&page).await.unwrap();
    let row = text_of(&c, &format!("#run-{run}")).await;
    assert!(row.contains("completed") && row.contains("100%"), "{row}");
    c.close().await.unwrap();
}

#[tokio::test]
async fn the_dashboard_refuses_buttons_from_other_sites_and_requests_without_a_session() {
    let app = spawn_app_with(|_| {}).await;
    let job = app
        .enqueue("test_job", json!({"label": "dead", "permanent": true}))
        .await;
    eventually(Duration::from_secs(20), "job dead", || async {
        app.dead_error(&job).await
    })
    .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // No session: the button redirects to the sign-in page and does nothing.
    let r = no_redirects
        .post(app.url(&format!("/dashboard/jobs/{job}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(app.dead_error(&job).await.is_some());
    // Signed in (bearer), but posted from another origin: refused.
    let r = no_redirects
        .post(app.url(&format!("/dashboard/jobs/{job}/retry")))
        .bearer_auth(OPS_TOKEN)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(app.dead_error(&job).await.is_some());
    // The producers' token does not open the dashboard.
    let page = app
        .http
        .get(app.url("/dashboard"))
        .bearer_auth(crate::helpers::app::TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Sign in") && !page.contains("Failed jobs"));
    // The session cookie is not the token.
    let r = no_redirects
        .post(app.url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={OPS_TOKEN}"))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains(OPS_TOKEN));
    let session = cookie.split(';').next().unwrap().to_string();
    let page = app
        .http
        .get(app.url("/dashboard"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Failed jobs") && page.contains(&job));
    // With the session and from this origin, the button works.
    let r = no_redirects
        .post(app.url(&format!("/dashboard/jobs/{job}/retry")))
        .header("cookie", &session)
        .header("origin", app.url(""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert!(back.contains("ok=") && back.contains("re-queued"), "{back}");
    // It runs again (and, failing permanently, goes back to the dead letters: the retry is the
    // second attempt, not the absence of a dead entry).
    eventually(Duration::from_secs(20), "the retried attempt", || async {
        (app.runs(&job).await.len() >= 2).then_some(())
    })
    .await;
}
