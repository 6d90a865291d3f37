use super::*;

const JOURNAL: &str = "5b0c2a8e-0000-4000-8000-000000000001";

fn session(protocol: &str) -> SessionFacts {
    SessionFacts {
        id: 7,
        run_id: Some("run-0123456789abcdef".to_owned()),
        pid: 4242,
        uid: 1000,
        gid: 1000,
        user: Some("agent".to_owned()),
        comm: "python3".to_owned(),
        exe: Some("/usr/bin/python3.11".to_owned()),
        cmdline: Some("python3 agent.py".to_owned()),
        cgroup_path: Some("/interceptor/run-0123456789abcdef".to_owned()),
        unit: None,
        identity_stale: false,
        client_addr: "127.0.0.1:40000".to_owned(),
        original_dst: "127.0.0.2:5432".to_owned(),
        target: Some("appdb".to_owned()),
        protocol: protocol.to_owned(),
        upstream: Some("127.0.0.1:5432".to_owned()),
        started_at: "2026-03-01T10:00:00.000Z".to_owned(),
    }
}

fn command(
    seq: i64,
    kind: &str,
    statement: &str,
    decision: &str,
    classes: &[&str],
) -> JournalEvent {
    JournalEvent {
        seq,
        at: "2026-03-01T10:00:01.250Z".to_owned(),
        kind: kind.to_owned(),
        statement: Some(statement.to_owned()),
        decision: Some(decision.to_owned()),
        rule: Some("reads".to_owned()),
        detail: json!({ "command": "statement", "params": 0, "classes": classes }),
        session: Some(session("postgres")),
        command: None,
    }
}

#[test]
fn an_allowed_statement_is_datastore_activity_with_who_where_and_what() {
    let (r, summary) = record(
        JOURNAL,
        &command(12, "statement", "SELECT 1", "allow", &["read"]),
    );
    assert_eq!(r["class_uid"], 6005);
    assert_eq!(r["category_uid"], 6);
    assert_eq!(r["activity_id"], 4);
    assert_eq!(r["type_uid"], 600504);
    assert_eq!(r["action_id"], 1);
    assert_eq!(r["disposition_id"], 1);
    assert_eq!(r["severity_id"], 1);
    assert_eq!(r["time"], 1_772_359_201_250i64);
    assert_eq!(r["query_info"]["query_string"], "SELECT 1");
    assert_eq!(r["policy"]["name"], "reads");
    assert_eq!(r["metadata"]["uid"], format!("{JOURNAL}:12"));
    assert_eq!(r["metadata"]["sequence"], 12);
    assert_eq!(r["metadata"]["correlation_uid"], "run-0123456789abcdef");
    assert_eq!(r["metadata"]["product"]["name"], "interceptor");
    assert_eq!(r["metadata"]["product"]["vendor_name"], "interceptor");
    assert_eq!(
        r["actor"]["user"],
        json!({ "name": "agent", "uid": "1000" })
    );
    assert_eq!(r["actor"]["process"]["pid"], 4242);
    assert_eq!(r["actor"]["process"]["file"]["path"], "/usr/bin/python3.11");
    assert_eq!(r["actor"]["process"]["cmd_line"], "python3 agent.py");
    assert_eq!(
        r["dst_endpoint"],
        json!({ "ip": "127.0.0.2", "port": 5432 })
    );
    assert_eq!(
        r["src_endpoint"],
        json!({ "ip": "127.0.0.1", "port": 40000 })
    );
    assert_eq!(r["database"]["name"], "appdb");
    assert_eq!(r["unmapped"]["upstream"], "127.0.0.1:5432");
    assert_eq!(summary.class_uid, 6005);
    assert_eq!(summary.msgid(), "DatastoreActivity");
}

#[test]
fn a_denied_delete_is_blocked_and_names_its_activity() {
    let (r, summary) = record(
        JOURNAL,
        &command(
            13,
            "statement",
            "DELETE FROM t",
            "deny",
            &["delete", "read"],
        ),
    );
    assert_eq!(r["activity_id"], 7);
    assert_eq!(r["activity_name"], "Delete");
    assert_eq!(
        (r["action_id"].clone(), r["disposition_id"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(r["severity_id"], 3);
    assert_eq!(summary.severity_id, 3);
    let (r, _) = record(
        JOURNAL,
        &command(14, "statement", "UPDATE t SET a=1", "review", &["update"]),
    );
    assert_eq!(r["activity_id"], 2);
    assert_eq!(r["disposition_id"], 14);
    let (r, _) = record(
        JOURNAL,
        &command(
            15,
            "execute",
            "INSERT INTO t VALUES ($1)",
            "allow",
            &["insert"],
        ),
    );
    assert_eq!(r["activity_id"], 5);
}

#[test]
fn approval_decisions_are_approved_or_blocked_with_the_approver() {
    let mut e = command(20, "approval_decision", "UPDATE t SET a = 1", "allow", &[]);
    e.detail = json!({ "id": "apr-1", "status": "approved", "approver": "alice", "approver_uid": 1001, "scope": "once" });
    let (r, _) = record(JOURNAL, &e);
    assert_eq!(r["action_id"], 1);
    assert_eq!(r["disposition_id"], 8);
    assert_eq!(r["disposition"], "Approved");
    assert_eq!(r["unmapped"]["detail"]["approver"], "alice");
    assert!(r["message"].as_str().unwrap_or_default().contains("alice"));

    e.decision = Some("deny".to_owned());
    e.detail = json!({ "id": "apr-1", "status": "expired" });
    let (r, _) = record(JOURNAL, &e);
    assert_eq!(
        (r["action_id"].clone(), r["disposition_id"].clone()),
        (json!(2), json!(2))
    );

    let mut held = command(19, "approval", "UPDATE t SET a = 1", "review", &[]);
    held.detail = json!({ "id": "apr-1", "status": "pending", "event": 18 });
    let (r, _) = record(JOURNAL, &held);
    assert_eq!(r["disposition_id"], 14);
}

#[test]
fn connections_are_network_activity_open_or_refused() {
    let mut e = JournalEvent {
        seq: 1,
        at: "2026-03-01T10:00:00.010Z".to_owned(),
        kind: "connect".to_owned(),
        decision: Some("allow".to_owned()),
        rule: Some("any".to_owned()),
        detail: json!({ "destination": "127.0.0.2:7" }),
        session: Some(SessionFacts {
            original_dst: "127.0.0.2:7".to_owned(),
            target: None,
            ..session("tcp")
        }),
        ..JournalEvent::default()
    };
    let (r, summary) = record(JOURNAL, &e);
    assert_eq!(r["class_uid"], 4001);
    assert_eq!(r["category_uid"], 4);
    assert_eq!(r["activity_id"], 1);
    assert_eq!(r["action_id"], 1);
    assert_eq!(r["dst_endpoint"]["port"], 7);
    assert_eq!(r["connection_info"]["protocol_name"], "tcp");
    assert!(r.get("database").is_none());
    assert_eq!(summary.msgid(), "NetworkActivity");

    e.decision = Some("deny".to_owned());
    let (r, _) = record(JOURNAL, &e);
    assert_eq!(r["activity_id"], 5);
    assert_eq!(r["disposition_id"], 2);

    // The chained identity record carries its decision in the detail.
    e.kind = "session_open".to_owned();
    e.decision = None;
    e.rule = None;
    e.detail = json!({ "pid": 4242, "decision": "allow", "rule": "tcp-any" });
    let (r, _) = record(JOURNAL, &e);
    assert_eq!(r["activity_id"], 1);
    assert_eq!(r["action_id"], 1);
    assert_eq!(r["policy"]["name"], "tcp-any");
}

#[test]
fn a_session_close_carries_bytes_and_a_stable_duration() {
    let e = JournalEvent {
        seq: 9,
        at: "2026-03-01T10:00:02.500Z".to_owned(),
        kind: "session_close".to_owned(),
        detail: json!({ "outcome": "closed", "bytes_up": 10, "bytes_down": 32 }),
        session: Some(session("tcp")),
        ..JournalEvent::default()
    };
    let (r, _) = record(JOURNAL, &e);
    assert_eq!(r["class_uid"], 4001);
    assert_eq!(r["activity_id"], 2);
    assert_eq!(
        r["traffic"],
        json!({ "bytes_out": 10, "bytes_in": 32, "bytes": 42 })
    );
    assert_eq!(r["duration"], 2500);
}

#[test]
fn a_result_reports_duration_and_status_for_its_command() {
    let mut e = JournalEvent {
        seq: 31,
        at: "2026-03-01T10:00:01.300Z".to_owned(),
        kind: "result".to_owned(),
        detail: json!({ "event": 30, "result": { "tag": "SELECT 2", "rows": 2, "duration_ms": 1.6,
                        "sample": [["secret"]] } }),
        session: Some(session("postgres")),
        command: Some(CommandFacts {
            seq: 30,
            kind: "statement".to_owned(),
            statement: Some("SELECT * FROM t".to_owned()),
            detail: json!({ "classes": ["read"] }),
        }),
        ..JournalEvent::default()
    };
    let (r, _) = record(JOURNAL, &e);
    assert_eq!(r["class_uid"], 6005);
    assert_eq!(r["activity_id"], 4);
    assert_eq!(r["status_id"], 1);
    assert_eq!(r["duration"], 2);
    assert_eq!(r["query_info"]["query_string"], "SELECT * FROM t");
    assert_eq!(r["unmapped"]["command_uid"], format!("{JOURNAL}:30"));
    assert!(
        !r.to_string().contains("secret"),
        "result samples are not shipped: {r}"
    );

    e.detail = json!({ "event": 30, "result": { "rows": 0, "duration_ms": 0.2, "sqlstate": "42P01",
                       "error": "relation \"t\" does not exist" } });
    let (r, _) = record(JOURNAL, &e);
    assert_eq!(r["status_id"], 2);
    assert_eq!(r["status_code"], "42P01");
}

#[test]
fn unknown_kinds_still_become_records() {
    let e = JournalEvent {
        seq: 40,
        at: "2026-03-01T10:00:03Z".to_owned(),
        kind: "something_new".to_owned(),
        detail: json!({ "x": 1 }),
        ..JournalEvent::default()
    };
    let (r, _) = record(JOURNAL, &e);
    assert_eq!(r["class_uid"], 6005);
    assert_eq!(r["activity_id"], 99);
    assert_eq!(r["activity_name"], "something_new");
    assert_eq!(r["unmapped"]["detail"], json!({ "x": 1 }));
    assert_eq!(r["metadata"]["sequence"], 40);
    assert!(r.get("actor").is_none());

    let error = JournalEvent {
        kind: "error".to_owned(),
        detail: json!({ "phase": "catalog", "error": "boom" }),
        ..e
    };
    let (r, _) = record(JOURNAL, &error);
    assert_eq!(r["status_id"], 2);
    assert_eq!(r["status_detail"], "boom");
    assert_eq!(r["severity_id"], 3);
}

#[test]
fn records_are_a_pure_function_of_the_event() {
    let e = command(12, "statement", "SELECT 1", "allow", &["read"]);
    assert_eq!(
        record(JOURNAL, &e).0.to_string(),
        record(JOURNAL, &e.clone()).0.to_string()
    );
}

#[test]
fn journal_times_parse_to_epoch_milliseconds() {
    assert_eq!(epoch_ms("1970-01-01T00:00:01.5Z"), Some(1500));
    assert_eq!(
        epoch_ms("2026-03-01T10:00:01.250Z"),
        Some(1_772_359_201_250)
    );
    assert_eq!(epoch_ms("yesterday"), None);
}
