//! Ops' view: the Prometheus alert rules and the Grafana dashboard in `config/` are valid, their
//! rules behave as their unit tests say, and every metric they use is one finworker exports.

use std::{collections::BTreeSet, path::Path, process::Command};

use crate::helpers::spawn_app_with;

fn config(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(p)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .expect("promtool (Debian package prometheus; scripts/setup.sh --with-s3 installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// `finworker_…` names used in a text (PromQL in YAML or JSON).
fn used_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("finworker_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn alert_rules_pass_promtool_and_every_metric_in_rules_and_dashboard_is_exported() {
    let check = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(config("prometheus/alerts.yml")));
    assert!(check.contains("SUCCESS"), "{check}");
    let test = run(Command::new("promtool")
        .current_dir(config("prometheus"))
        .arg("test")
        .arg("rules")
        .arg("alerts_test.yml"));
    assert!(test.contains("SUCCESS"), "{test}");

    let dashboard = std::fs::read_to_string(config("grafana/finworker.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(d["panels"].as_array().unwrap().len() >= 10);
    let rules = std::fs::read_to_string(config("prometheus/alerts.yml")).unwrap();
    let mut used = used_metrics(&rules);
    used.extend(used_metrics(&dashboard));
    used.retain(|m| m != "finworker_"); // not a metric: the word in prose

    // With a gateway account: the per-account series exist from the start.
    let sb = crate::verification::sandbox(crate::billing::sandbox_knobs()).await;
    let mut app = spawn_app_with(|s| crate::billing::billing(s, &sb)).await;
    let text = app.metrics_text().await;
    // Exported series names: a family's own name, and what its type adds.
    let mut exported = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut p = line.split_whitespace().skip(2);
        let (Some(name), Some(kind)) = (p.next(), p.next()) else {
            continue;
        };
        exported.insert(name.to_string());
        match kind {
            "counter" => {
                exported.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{s}"));
                }
            }
            _ => {}
        }
    }
    let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "used by the rules or the dashboard but not exported: {missing:?}\nexported: {exported:?}"
    );
    assert!(used.len() >= 15, "{used:?}");
    app.stop().await;
}
