//! The hooks with commands of every kind, against a real journal: what is recorded, what is
//! held, and what a run-scoped approval extends to.

use std::{path::Path, sync::Arc, time::Duration};

use super::*;
use crate::{
    approval::{Approver, Scope},
    command::{
        CommandKind, CommandLine, HttpRequest, KubeRequest, McpCall, SshChannel, SshRequest,
    },
    journal::reader::{open_read_only, session_events},
    policy::{file, Policies, Policy},
};

const POLICY: &str = r#"
[[rule]]
name = "reads"
decision = "allow"
[rule.match]
methods = ["GET"]

[[rule]]
name = "deletes"
decision = "review"
[rule.match]
methods = ["DELETE"]

[[rule]]
name = "tools"
decision = "review"
[rule.match]
tools = ["*"]

[[rule]]
name = "kube"
decision = "deny"
message = "no deletes"
[rule.match]
verbs = ["delete"]

[[rule]]
name = "ls"
decision = "allow"
[rule.match]
programs = ["ls"]

[[mask]]
name = "mail"
detectors = ["email"]
strategy = "redact"

[[mask]]
name = "passwords"
json_paths = ["$..password"]
strategy = "redact"
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    hooks: SessionHooks,
    approvals: Arc<Approvals>,
    session: i64,
}

async fn fixture(protocol: &'static str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let journal = Journal::open(&path).expect("journal");
    let session = journal
        .open_session(crate::journal::NewSession {
            run_id: Some("run-1".to_owned()),
            identity: crate::capture::identity::Identity {
                pid: 42,
                uid: 1000,
                gid: 1000,
                user: Some("agent".to_owned()),
                comm: "python3".to_owned(),
                ..Default::default()
            },
            client_addr: "127.0.0.1:40000".to_owned(),
            original_dst: "127.0.0.2:443".to_owned(),
            target: Some("api".to_owned()),
            protocol: protocol.to_owned(),
            upstream: None,
            decision: None,
            rule: None,
        })
        .await
        .expect("session");
    let policy = Policy::compile(vec![
        file::parse(POLICY, Path::new("test.toml")).expect("parse")
    ])
    .expect("compile");
    let engine = Arc::new(Engine::new(Policies {
        by_target: Default::default(),
        fallback: Arc::new(policy),
    }));
    let subject = Subject {
        uid: 1000,
        user: Some("agent".to_owned()),
        run_id: Some("run-1".to_owned()),
        ..Subject::default()
    };
    let masking = engine.masking(&subject, Some("api"), protocol, None, 0);
    let approvals = Arc::new(Approvals::new(journal.clone(), None));
    let hooks = SessionHooks::new(
        journal,
        engine,
        approvals.clone(),
        Duration::from_secs(5),
        Arc::new(Default::default()),
        SessionInfo {
            session_id: session,
            subject,
            pid: 42,
            target: Some("api".to_owned()),
            protocol,
            masking,
        },
    );
    Fixture {
        _dir: dir,
        path,
        hooks,
        approvals,
        session,
    }
}

fn command<'a>(kind: CommandKind, text: &'a str, operation: Operation<'a>) -> Command<'a> {
    Command {
        kind,
        text,
        params: 0,
        name: None,
        operation,
    }
}

fn http(method: &str, path: &str) -> HttpRequest {
    HttpRequest {
        method: method.to_owned(),
        scheme: "https".to_owned(),
        host: "127.0.0.2".to_owned(),
        path: path.to_owned(),
        query: None,
        upgrade: None,
    }
}

#[tokio::test]
async fn commands_of_every_kind_are_judged_and_journaled_in_the_neutral_shape() {
    let f = fixture("https").await;
    let get = http("GET", "/v1/items");
    let get_text = Operation::Http(&get).canonical();
    let kube = KubeRequest {
        verb: "delete".to_owned(),
        api_group: String::new(),
        api_version: "v1".to_owned(),
        resource: Some("pods".to_owned()),
        subresource: None,
        namespace: Some("default".to_owned()),
        name: Some("web-1".to_owned()),
        path: None,
        ..KubeRequest::default()
    };
    let kube_text = Operation::Kubernetes(&kube).canonical();
    let ssh = SshRequest {
        channel: SshChannel::Exec,
        command: Some("ls /home/alice@example.com".to_owned()),
        line: Some(CommandLine {
            programs: vec!["ls".to_owned()],
            ..CommandLine::default()
        }),
        subsystem: None,
        forward: None,
    };
    let ssh_text = Operation::Ssh(&ssh).canonical();
    let decisions = f
        .hooks
        .request_all(&[
            command(CommandKind::HttpRequest, &get_text, Operation::Http(&get)),
            command(
                CommandKind::KubeRequest,
                &kube_text,
                Operation::Kubernetes(&kube),
            ),
            command(CommandKind::SshChannel, &ssh_text, Operation::Ssh(&ssh)),
        ])
        .await
        .expect("recorded");
    assert_eq!(decisions[0].verdict, Verdict::Allow);
    assert!(
        matches!(&decisions[1].verdict, Verdict::Deny { message } if message.contains("no deletes"))
    );
    assert_eq!(decisions[2].verdict, Verdict::Allow);

    let conn = open_read_only(&f.path).expect("reader");
    let events = session_events(&conn, f.session).expect("events");
    let by_kind = |kind: &str| {
        events
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("a {kind} event in {events:#?}"))
    };
    let e = by_kind("http_request");
    assert_eq!(
        e.statement.as_deref(),
        Some("GET https://127.0.0.2/v1/items")
    );
    assert_eq!(e.decision.as_deref(), Some("allow"));
    assert_eq!(e.detail["protocol"], "https");
    assert_eq!(e.detail["action"], "GET");
    assert_eq!(
        e.detail["objects"],
        serde_json::json!(["127.0.0.2/v1/items"])
    );
    assert_eq!(e.detail["http"]["path"], "/v1/items");
    let e = by_kind("kube_request");
    assert_eq!(
        (e.decision.as_deref(), e.rule.as_deref()),
        (Some("deny"), Some("kube"))
    );
    assert_eq!(e.detail["kube"]["namespace"], "default");
    assert_eq!(e.detail["reason"], "no deletes");
    // Values in command lines are masked before they reach the journal, everywhere.
    let e = by_kind("ssh_channel");
    let text = e.statement.as_deref().unwrap_or_default();
    assert!(!text.contains("alice@example.com"), "{text}");
    assert!(
        !e.detail.to_string().contains("alice@example.com"),
        "{}",
        e.detail
    );
    assert_eq!(e.detail["ssh"]["programs"], serde_json::json!(["ls"]));
}

#[tokio::test]
async fn held_commands_of_any_kind_wait_for_a_human_and_run_approvals_cover_the_same_text() {
    let f = fixture("https").await;
    let call = McpCall {
        method: "tools/call".to_owned(),
        tool: Some("delete_customer".to_owned()),
        uri: None,
        arguments: Some(
            serde_json::json!({"id": 1, "notify": "bob@example.com", "auth": {"password": "hunter2"}}),
        ),
        request_id: Some(serde_json::json!(3)),
        annotations: Default::default(),
    };
    let text = Operation::Mcp(&call).canonical();
    let decision = f
        .hooks
        .request(&command(CommandKind::McpCall, &text, Operation::Mcp(&call)))
        .await
        .expect("recorded");
    let Verdict::Hold { id, notice } = decision.verdict else {
        panic!("held: {decision:?}");
    };
    assert!(notice.contains("command held for approval"), "{notice}");
    let pending = f.approvals.list();
    assert_eq!(pending.len(), 1);
    assert!(
        !pending[0].statement.contains("bob@example.com"),
        "approvers see the masked text: {}",
        pending[0].statement
    );
    assert!(pending[0]
        .statement
        .starts_with("tools/call delete_customer"));
    let approver = Approver {
        uid: 0,
        name: "root".to_owned(),
    };
    f.approvals
        .approve(&id, &approver, Scope::Run, None)
        .expect("approve");
    assert_eq!(f.hooks.wait_for_approval(&id).await, Verdict::Allow);

    // The same call again in this run: allowed without a human. Another call is held.
    let again = f
        .hooks
        .request(&command(CommandKind::McpCall, &text, Operation::Mcp(&call)))
        .await
        .expect("recorded");
    assert_eq!(again.verdict, Verdict::Allow);
    let other = McpCall {
        arguments: Some(serde_json::json!({"id": 2})),
        ..call.clone()
    };
    let other_text = Operation::Mcp(&other).canonical();
    let held = f
        .hooks
        .request(&command(
            CommandKind::McpCall,
            &other_text,
            Operation::Mcp(&other),
        ))
        .await
        .expect("recorded");
    let Verdict::Hold { id: other_id, .. } = held.verdict else {
        panic!("held: {held:?}");
    };
    // Its client goes away while it waits: the session is not left waiting for ever.
    {
        let mut wait = std::pin::pin!(f.hooks.wait_for_approval(&other_id));
        assert!(futures_util::FutureExt::now_or_never(wait.as_mut()).is_none());
        assert!(f.hooks.awaiting_approval());
    }
    assert!(
        !f.hooks.awaiting_approval(),
        "a dropped wait is no longer counted"
    );

    let conn = open_read_only(&f.path).expect("reader");
    let events = session_events(&conn, f.session).expect("events");
    let call_event = events
        .iter()
        .find(|e| e.kind == "mcp_call")
        .expect("an mcp_call event");
    assert_eq!(call_event.detail["protocol"], "mcp");
    assert_eq!(call_event.detail["mcp"]["tool"], "delete_customer");
    assert_eq!(call_event.detail["mcp"]["arguments"]["id"], 1);
    assert!(!call_event.detail.to_string().contains("bob@example.com"));
    assert!(!call_event.detail.to_string().contains("hunter2"));
    let text = call_event.statement.as_deref().unwrap_or_default();
    assert!(
        !text.contains("hunter2") && !text.contains("bob@example.com"),
        "{text}"
    );
    assert!(
        call_event.detail["masked"]["rule:passwords"].as_u64() >= Some(1),
        "{}",
        call_event.detail
    );
}
