//! The deployment files stay true to the code.

use std::path::Path;

use finworker::config::Settings;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `FINWORKER__…` variables the compose file sets, with stand-in values for interpolations.
fn compose_vars(compose: &str) -> Vec<(String, String)> {
    compose
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (k, v) = l.split_once(':')?;
            k.starts_with("FINWORKER__").then(|| {
                // ${VAR:-default} stands for its default; ${VAR:?…} for a secret: any value long
                // enough for a signing key will do. YAML quotes ("true") are not the value.
                let v = v.trim().trim_matches('"');
                let v = match v.strip_prefix("${") {
                    Some(rest) => match rest.split_once(":-") {
                        Some((_, d)) => d.trim_end_matches('}').to_string(),
                        // Distinct per variable: two tokens that must differ do.
                        None => format!("{:x<40}", rest.split(':').next().unwrap_or_default()),
                    },
                    None => v.to_string(),
                };
                (k.to_string(), v)
            })
        })
        .collect()
}

#[test]
fn every_environment_variable_the_compose_file_sets_is_a_real_config_key() {
    let compose = std::fs::read_to_string(root().join("docker-compose.worker.yml")).unwrap();
    let vars = compose_vars(&compose);
    assert!(vars.len() >= 20, "found {vars:?}");
    // All together make a valid configuration (accounts need several keys at once)…
    let all = Settings::load_from(&root().join("config"), &vars)
        .unwrap_or_else(|e| panic!("the compose file's environment: {e}"));
    // …and each one names a key that exists: a misspelt one would be silently ignored.
    let tree = serde_json::to_value(&all).unwrap();
    for (k, _) in &vars {
        let mut node = &tree;
        for part in k.trim_start_matches("FINWORKER__").split("__") {
            node = node
                .get(part.to_lowercase())
                .unwrap_or_else(|| panic!("{k}: no such configuration key"));
        }
    }
    assert!(all.http.ops_token.is_some() && all.redis.password.is_some());
    assert_eq!(all.gateway.accounts["main"].currency, "EUR");
    assert!(
        all.worker.drain_timeout < std::time::Duration::from_secs(60),
        "below stop_grace_period"
    );
    assert!(compose.contains("stop_grace_period: 60s"));
}

#[test]
fn the_compose_file_pins_its_images_checks_health_and_runs_redis_without_eviction() {
    let compose = std::fs::read_to_string(root().join("docker-compose.worker.yml")).unwrap();
    let images: Vec<&str> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert!(images.len() >= 8, "{images:?}");
    for i in &images {
        let (_, tag) = i.rsplit_once(':').unwrap_or_else(|| panic!("{i}: no tag"));
        assert!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{i}: pin a version"
        );
    }
    // Services (two-space indent) and which of them have a health check.
    let mut services = Vec::new();
    let mut in_services = false;
    let mut current: Option<(String, String)> = None;
    for line in compose.lines() {
        if line == "services:" {
            in_services = true;
            continue;
        }
        if in_services && !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            in_services = false;
        }
        if !in_services {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
            && !name.starts_with('#')
        {
            if let Some(c) = current.take() {
                services.push(c);
            }
            current = Some((name.to_string(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    services.extend(current);
    let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "worker",
        "redis",
        "postgres",
        "pgbouncer",
        "minio",
        "sandbox",
        "migrate",
    ] {
        assert!(names.contains(&wanted), "no service {wanted}: {names:?}");
    }
    for (name, body) in &services {
        let one_shot = body.contains("restart: \"no\"");
        assert!(
            one_shot || body.contains("healthcheck:"),
            "service {name} has no health check"
        );
    }
    let redis = &services.iter().find(|(n, _)| n == "redis").unwrap().1;
    for flag in [
        "--appendonly yes",
        "--maxmemory-policy noeviction",
        "--requirepass",
    ] {
        assert!(redis.contains(flag), "redis without {flag}");
    }
    let postgres = &services.iter().find(|(n, _)| n == "postgres").unwrap().1;
    assert!(postgres.contains("POSTGRES_USER: postgres"));
    let init = std::fs::read_to_string(root().join("config/postgres/init-app-role.sh")).unwrap();
    assert!(init.contains("NOSUPERUSER") && init.contains("OWNER finworker"));
    assert!(
        compose.contains("postgres://finworker@"),
        "finworker logs in as its own role"
    );
}

#[test]
fn the_env_example_lists_exactly_the_variables_the_compose_file_reads() {
    let compose = std::fs::read_to_string(root().join("docker-compose.worker.yml")).unwrap();
    let example = std::fs::read_to_string(root().join(".env.example")).unwrap();
    let uncommented: String = compose
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut read: Vec<String> = uncommented
        .split("${")
        .skip(1)
        .map(|r| {
            r.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    read.sort();
    read.dedup();
    let mut listed: Vec<String> = example
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(read, listed, "compose reads vs .env.example lists");
}

#[test]
fn the_dockerfile_runs_the_binary_as_pid_1_and_not_as_root() {
    let d = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(d.contains("ENTRYPOINT [\"/usr/local/bin/finworker\"]"));
    assert!(d.contains("USER finworker"));
    assert!(d.contains("COPY migrations") && d.contains("COPY config"));
}
