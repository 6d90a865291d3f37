use std::path::Path;

use serde_json::json;

use crate::policy::{file, Policy, PolicyError, Subject, DEFAULT_POLICY};

fn compile(text: &str) -> Result<Policy, PolicyError> {
    Policy::compile(vec![file::parse(text, Path::new("t.toml"))?])
}

fn agent() -> Subject {
    Subject {
        uid: 1000,
        user: Some("agent".to_owned()),
        ..Subject::default()
    }
}

/// The `[[mask]]` examples the default policy carries commented out, uncommented: every
/// `# [[mask]]` and the TOML lines that follow it.
fn commented_masks(policy: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in policy.lines() {
        let toml = line
            .strip_prefix("# ")
            .filter(|l| *l == "[[mask]]" || (inside && (l.starts_with('[') || l.contains(" = "))));
        inside = toml.is_some();
        if let Some(toml) = toml {
            out.push_str(toml);
            out.push('\n');
        }
    }
    out
}

const FIELDS: &str = r#"
[[mask]]
name = "cards"
json_paths = ["$..card"]
strategy = "partial"
[mask.match]
protocols = ["http"]

[[mask]]
name = "kube"
kubernetes_secrets = true
[mask.match]
protocols = ["kubernetes"]
users = ["agent"]
"#;

#[test]
fn field_masks_apply_by_protocol_and_identity() {
    let p = compile(FIELDS).expect("compiles");
    let secret = || json!({"kind": "Secret", "data": {"k": "aGk="}, "card": "4111 1111 1111 1111"});
    let kube = p
        .masking(&agent(), Some("cluster"), "kubernetes", None, 0)
        .expect("kubernetes is masked");
    let mut doc = secret();
    let counts = kube.mask_json(&mut doc);
    assert_eq!(doc["data"]["k"], "W1JFREFDVEVEXQ=="); // base64 of [REDACTED]
    assert_eq!(doc["card"], "4111 1111 1111 1111");
    assert_eq!(counts, [("rule:kube".to_owned(), 1)].into());

    let http = p
        .masking(&agent(), Some("api"), "http", None, 0)
        .expect("http is masked");
    let mut doc = secret();
    http.mask_json(&mut doc);
    assert_eq!(doc["card"], "**** **** **** 1111");
    assert_eq!(doc["data"]["k"], "aGk=");

    // Neither applies to PostgreSQL, nor the Kubernetes mask to another user.
    assert!(p
        .masking(&agent(), Some("appdb"), "postgres", None, 0)
        .is_none());
    let other = Subject {
        user: Some("ci".to_owned()),
        ..agent()
    };
    assert!(p
        .masking(&other, Some("cluster"), "kubernetes", None, 0)
        .is_none());
}

#[test]
fn an_invalid_json_path_is_a_load_error_naming_the_mask_and_the_path() {
    let err = compile("[[mask]]\nname = \"api\"\njson_paths = [\"$.ok\", \"$..[\"]\n")
        .expect_err("an invalid path");
    let PolicyError::Invalid { rule, message, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(rule, "mask api");
    assert!(message.contains("\"$..[\""), "{message}");
    // A field mask needs no columns or detectors; an empty one is still refused.
    assert!(compile("[[mask]]\nname = \"k\"\nkubernetes_secrets = true\n").is_ok());
    let err = compile("[[mask]]\nname = \"k\"\nkubernetes_secrets = false\n").unwrap_err();
    assert!(err.to_string().contains("json_paths"), "{err}");
}

#[test]
fn the_default_policy_field_examples_load_and_leave_postgresql_alone() {
    let examples = commented_masks(DEFAULT_POLICY);
    assert!(examples.contains("json_paths"), "{examples}");
    let with = compile(&format!("{DEFAULT_POLICY}\n{examples}")).expect("examples compile");
    let without = Policy::embedded_default().expect("default");

    // Secrets are masked by the default policy itself, not by an example.
    let mut doc = json!({"kind": "Secret", "data": {"password": "aHVudGVyMg=="}});
    without
        .masking(&agent(), None, "kubernetes", None, 0)
        .expect("masked")
        .mask_json(&mut doc);
    assert_eq!(doc["data"]["password"], "W1JFREFDVEVEXQ==");

    // PostgreSQL gets the same masking with or without the examples.
    let pg = |p: &Policy| {
        format!(
            "{:?}",
            p.masking(&agent(), Some("appdb"), "postgres", None, 0)
        )
    };
    assert_eq!(pg(&with), pg(&without));
}
