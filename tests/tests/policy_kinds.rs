//! One policy language for every kind of command, through the binary: `policy explain` and
//! `policy test` take SQL, connections, HTTP requests, MCP calls, Kubernetes requests and SSH
//! command lines, and a key given to the wrong kind is refused with its position.

use std::time::Duration;

use interceptor_tests::*;

fn policy_cmd(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("policy").args(args);
    run_command(cmd, Duration::from_secs(30))
}

fn explain_json(cfg: &TempConfig, flag: &str, text: &str) -> serde_json::Value {
    let out = policy_cmd(cfg, &["explain", "--user", "root", flag, text, "--json"]);
    assert!(out.success(), "{}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

#[test]
fn explain_judges_every_kind_of_command_with_the_default_policy() {
    let cfg = TempConfig::new("");
    for (flag, text, decision, kind, action, objects) in [
        ("--sql", "DELETE FROM t", "review", "sql", None, vec![]),
        (
            "--connect",
            "127.0.0.1:6379",
            "allow",
            "connect",
            Some("connect"),
            vec!["127.0.0.1:6379"],
        ),
        (
            "--http",
            "DELETE https://127.0.0.2:8443/v1/items/7",
            "review",
            "http",
            Some("DELETE"),
            vec!["127.0.0.2:8443/v1/items/7"],
        ),
        (
            "--mcp",
            r#"tools/call delete_customer {"id":1}"#,
            "review",
            "mcp",
            Some("tools/call"),
            vec!["delete_customer"],
        ),
        (
            "--kube",
            "delete pods/web-1 -n default",
            "review",
            "kubernetes",
            Some("delete"),
            vec!["/v1/pods", "default/web-1"],
        ),
        (
            "--kube",
            "create clusterrolebindings/x",
            "deny",
            "kubernetes",
            Some("create"),
            vec!["/v1/clusterrolebindings", "/x"],
        ),
        (
            "--ssh",
            "rm -rf /srv",
            "deny",
            "ssh",
            Some("exec"),
            vec!["rm"],
        ),
        (
            "--ssh",
            "ls /srv | grep x",
            "allow",
            "ssh",
            Some("exec"),
            vec!["ls", "grep"],
        ),
        ("--ssh", "echo `id`", "deny", "ssh", Some("exec"), vec![]),
    ] {
        let v = explain_json(&cfg, flag, text);
        assert_eq!(v["decision"], decision, "{flag} {text}: {v:#}");
        assert_eq!(v["kind"], kind, "{flag} {text}: {v:#}");
        if let Some(action) = action {
            assert_eq!(v["action"], action, "{flag} {text}: {v:#}");
            assert_eq!(
                v["objects"],
                serde_json::json!(objects),
                "{flag} {text}: {v:#}"
            );
        }
    }

    // The text form names the command, its kind, action and objects.
    let out = policy_cmd(
        &cfg,
        &[
            "explain",
            "--user",
            "root",
            "--kube",
            "exec pods/web-1 -n default -- sh -c ls",
        ],
    );
    assert!(out.success(), "{}", out.describe());
    for expected in [
        "decision: review",
        "rule:     kube-exec-needs-review",
        "command:  exec pods/web-1 -n default -- sh -c ls",
        "kind:    kubernetes",
        "objects: /v1/pods/exec, default/web-1",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected}: {}",
            out.describe()
        );
    }

    // A notation that does not read is a usage error, not a decision.
    let out = policy_cmd(&cfg, &["explain", "--http", "DELETE /no-host"]);
    assert!(!out.success(), "{}", out.describe());
    assert!(out.stderr.contains("has no scheme"), "{}", out.describe());
    let out = policy_cmd(&cfg, &["explain", "--sql", "SELECT 1", "--ssh", "ls"]);
    assert!(!out.success(), "one command at a time: {}", out.describe());
}

#[test]
fn policy_test_runs_cases_of_every_kind_and_check_places_wrong_kind_keys() {
    let cfg = TempConfig::new("");
    let cases = workspace_root().join("policies/tests/default-kinds.toml");
    let out = policy_cmd(&cfg, &["test", cases.to_str().expect("path")]);
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains(" 0 failed"), "{}", out.describe());

    let wrong = cfg.dir().join("wrong.toml");
    std::fs::write(
        &wrong,
        format!(
            "policy = \"{}\"\n[[case]]\nssh = \"rm -rf /srv\"\nexpect = \"allow\"\n",
            workspace_root().join("policies/default.toml").display()
        ),
    )
    .expect("write");
    let out = policy_cmd(&cfg, &["test", wrong.to_str().expect("path")]);
    assert!(!out.success(), "{}", out.describe());
    assert!(out.stdout.contains("FAIL"), "{}", out.describe());

    let broken = cfg.dir().join("broken.toml");
    std::fs::write(
        &broken,
        "[[rule]]\nname = \"x\"\ndecision = \"deny\"\n\n[rule.match]\nkinds = [\"sql\"]\nverbs = [\"delete\"]\n",
    )
    .expect("write");
    let out = policy_cmd(&cfg, &["check", broken.to_str().expect("path")]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("{}:5:", broken.display()))
            && out.stderr.contains("verbs is for kubernetes commands"),
        "file:line:col and the reason: {}",
        out.describe()
    );
}
