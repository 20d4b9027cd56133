//! `jobs/`: the producer contract, generated from the Rust payload types. A test fails when
//! the committed files drift from the code; `finworker schemas` rewrites them.

use std::path::Path;

use crate::queue::registry::Registry;

/// `(file name, contents)` of every contract file.
pub fn render(registry: &Registry) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in registry.entries() {
        let schema = serde_json::to_string_pretty(&e.schema()).unwrap_or_default();
        let example = serde_json::to_string_pretty(&e.example()).unwrap_or_default();
        out.push((format!("{}.schema.json", e.name), schema + "\n"));
        out.push((format!("{}.example.json", e.name), example + "\n"));
    }
    out
}

/// Writes the files into `dir`.
pub fn write(registry: &Registry, dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, contents) in render(registry) {
        std::fs::write(dir.join(&name), contents)?;
        written.push(name);
    }
    Ok(written)
}

/// Names of files in `dir` that are missing or differ from the code.
pub fn drift(registry: &Registry, dir: &Path) -> Vec<String> {
    render(registry)
        .into_iter()
        .filter(|(name, contents)| {
            std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(contents)
        })
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs;

    fn dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs")
    }

    #[test]
    fn committed_job_schemas_match_the_payload_types() {
        let drift = drift(&jobs::registry(), &dir());
        assert!(
            drift.is_empty(),
            "run `finworker schemas` and commit: {drift:?} differ"
        );
    }

    #[test]
    fn every_committed_example_is_a_valid_payload() {
        let registry = jobs::registry();
        for e in registry.entries() {
            let text = std::fs::read(dir().join(format!("{}.example.json", e.name))).unwrap();
            e.validate(&text)
                .unwrap_or_else(|err| panic!("{}: {err}", e.name));
        }
    }

    #[test]
    fn a_payload_error_names_the_field() {
        let registry = jobs::registry();
        let e = registry.get("test_job").unwrap();
        let err = e
            .validate(br#"{"label": "x", "sleep_ms": "slow"}"#)
            .unwrap_err();
        assert_eq!(err.field, "sleep_ms");
        let err = e.validate(br#"{"sleep_ms": 1}"#).unwrap_err();
        assert!(err.message.contains("label"), "{err:?}");
        let err = e.validate(br#"{"label": "x", "colour": 1}"#).unwrap_err();
        assert!(err.message.contains("colour"), "{err:?}");
    }
}
