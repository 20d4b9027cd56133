//! The deployment files stay true to the code.

use std::path::Path;

use finworker::config::Settings;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_environment_variable_the_compose_file_sets_is_a_real_config_key() {
    let compose = std::fs::read_to_string(root().join("docker-compose.worker.yml")).unwrap();
    let vars: Vec<(String, String)> = compose
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (k, v) = l.split_once(':')?;
            k.starts_with("FINWORKER__").then(|| {
                // ${VAR...} interpolations stand for secrets: any value long enough for a
                // signing key will do.
                // YAML quotes ("true") are not part of the value.
                let v = v.trim().trim_matches('"');
                let v = if v.starts_with("${") {
                    "x".repeat(32)
                } else {
                    v.to_string()
                };
                (k.to_string(), v)
            })
        })
        .collect();
    assert!(vars.len() >= 6, "found {vars:?}");
    for (k, v) in &vars {
        let env = vec![(k.clone(), v.clone())];
        Settings::load_from(&root().join("config"), &env)
            .unwrap_or_else(|e| panic!("{k}={v}: {e}"));
    }
    let all = Settings::load_from(&root().join("config"), &vars).unwrap();
    assert!(
        all.worker.drain_timeout < std::time::Duration::from_secs(60),
        "below stop_grace_period"
    );
    assert!(compose.contains("stop_grace_period: 60s"));
}

#[test]
fn the_dockerfile_runs_the_binary_as_pid_1_and_not_as_root() {
    let d = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(d.contains("ENTRYPOINT [\"/usr/local/bin/finworker\"]"));
    assert!(d.contains("USER finworker"));
    assert!(d.contains("COPY migrations") && d.contains("COPY config"));
}
