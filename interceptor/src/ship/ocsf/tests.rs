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
fn http_records_survive_sparse_details_and_name_their_class_for_syslog() {
    // No `http` object (an older writer): the method comes from the neutral `action`.
    let e = JournalEvent {
        seq: 50,
        at: "2026-03-01T10:00:03Z".to_owned(),
        kind: "http_request".to_owned(),
        statement: Some("PATCH http://[::1]:8443/v1/items/7".to_owned()),
        decision: Some("review".to_owned()),
        detail: json!({ "protocol": "http", "action": "PATCH" }),
        session: Some(session("http")),
        ..JournalEvent::default()
    };
    let (r, summary) = record(JOURNAL, &e);
    assert_eq!(
        (r["class_uid"].clone(), r["activity_id"].clone()),
        (json!(4002), json!(9))
    );
    assert_eq!(r["http_request"]["http_method"], "PATCH");
    assert_eq!(r["disposition_id"], 14);
    assert_eq!(summary.msgid(), "HTTPActivity");
    // An IPv6 host keeps its port apart; an unknown method is Other.
    let e = JournalEvent {
        detail: json!({ "http": { "method": "PROPFIND", "scheme": "https",
                                  "host": "[::1]:8443", "path": "/dav" } }),
        ..e
    };
    let (r, _) = record(JOURNAL, &e);
    assert_eq!(r["activity_id"], 99);
    assert_eq!(
        r["http_request"]["url"],
        json!({ "url_string": "https://[::1]:8443/dav", "scheme": "https",
                "hostname": "::1", "port": 8443, "path": "/dav" })
    );
    for (kind, protocol, msgid) in [
        ("kube_request", "kubernetes", "APIActivity"),
        ("mcp_call", "http", "APIActivity"),
        ("ssh_channel", "ssh", "SSHActivity"),
    ] {
        let e = JournalEvent {
            kind: kind.to_owned(),
            session: Some(session(protocol)),
            ..JournalEvent::default()
        };
        assert_eq!(record(JOURNAL, &e).1.msgid(), msgid, "{kind}");
    }
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

// ---------------------------------------------------------------------------------------------
// Golden files: one per class, from events written into a real journal
// ---------------------------------------------------------------------------------------------

/// A command event as the gateway writes it.
fn command_event(
    session: i64,
    kind: &'static str,
    text: &str,
    decision: &str,
    rule: &str,
    detail: Value,
) -> crate::journal::Event {
    crate::journal::Event {
        session_id: Some(session),
        kind,
        statement: Some(text.to_owned()),
        decision: Some(decision.to_owned()),
        rule: Some(rule.to_owned()),
        detail,
    }
}

/// Opens a session of `protocol` to `dst` (the agent, its process and its address are the
/// same for all), writes the events `events` makes for it in one commit, then the results
/// (by index into those events). Returns the session's id and the events' ids.
async fn write_session(
    journal: &crate::journal::Journal,
    protocol: &str,
    dst: &str,
    target: Option<&str>,
    events: impl FnOnce(i64) -> Vec<crate::journal::Event>,
    results: &[(usize, Value)],
) -> (i64, Vec<i64>) {
    use crate::{capture::identity::Identity, journal::NewSession};
    // The agent of the unit tests above.
    let agent = session(protocol);
    let number = |n: i64| u32::try_from(n).expect("a test id");
    let decision = (protocol == "tcp").then(|| "allow".to_owned());
    let session = journal
        .open_session(NewSession {
            run_id: agent.run_id,
            identity: Identity {
                pid: number(agent.pid),
                uid: number(agent.uid),
                gid: number(agent.gid),
                user: agent.user,
                comm: agent.comm,
                exe: agent.exe,
                cmdline: agent.cmdline,
                ..Identity::default()
            },
            client_addr: agent.client_addr,
            original_dst: dst.to_owned(),
            target: target.map(str::to_owned),
            protocol: protocol.to_owned(),
            upstream: None,
            rule: decision.as_ref().map(|_| "egress".to_owned()),
            decision,
        })
        .await
        .expect("session");
    let events = events(session);
    let ids = if events.is_empty() {
        Vec::new()
    } else {
        journal.events(events).await.expect("events")
    };
    for (index, result) in results {
        journal.record_result(Some(session), ids[*index], result.clone());
    }
    (session, ids)
}

/// A fresh journal with one session per protocol, each with commands shaped as the gateway
/// writes them (the neutral keys and the protocol's object in `detail`), results, approvals
/// and a terminal stream. Returns the journal's directory and each session's id by name.
async fn journal_of_every_protocol() -> (tempfile::TempDir, Vec<(&'static str, i64)>) {
    use crate::journal::{Event, Journal, Outcome};
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(&dir.path().join("journal.db")).expect("journal");
    let command = command_event;
    let mut sessions = Vec::new();

    // PostgreSQL: a read, a denied delete, an update held (then approved below), one written
    // before the neutral keys existed.
    let (pg, ids) = write_session(
        &journal,
        "postgres",
        "127.0.0.2:5432",
        Some("appdb"),
        |pg| {
            vec![
                command(pg, "statement", "SELECT * FROM customers", "allow", "reads",
                    json!({"protocol": "postgres", "action": "read", "objects": ["customers"],
                           "command": "statement", "params": 0, "classes": ["read"]})),
                command(pg, "statement", "DELETE FROM customers", "deny", "no-deletes",
                    json!({"protocol": "postgres", "action": "delete,read", "objects": ["customers"],
                           "command": "statement", "params": 0, "classes": ["delete", "read"],
                           "reason": "deletes are not allowed for agents"})),
                command(pg, "execute", "UPDATE acct SET bal = $1", "review", "writes-need-review",
                    json!({"command": "execute", "params": 1, "classes": ["update"]})),
            ]
        },
        &[(0, json!({"tag": "SELECT 2", "rows": 2, "duration_ms": 0.6, "sample": [["a***"]]}))],
    )
    .await;
    sessions.push(("postgres", pg));
    let held = |kind: &'static str, decision: &str, detail: Value| Event {
        statement: Some("UPDATE acct SET bal = $1".to_owned()),
        decision: Some(decision.to_owned()),
        ..Event::note(Some(pg), kind, detail)
    };
    journal
        .events(vec![
            held("approval", "review", json!({"id": "apr-1", "status": "pending", "event": ids[2]})),
            held("approval_decision", "allow",
                json!({"id": "apr-1", "status": "approved", "approver": "root", "approver_uid": 0, "scope": "once"})),
        ])
        .await
        .expect("approval");
    journal.record_result(
        Some(pg),
        ids[2],
        json!({"tag": "UPDATE 1", "rows": 1, "duration_ms": 2.0}),
    );

    // HTTP: a read, a denied delete, a post that failed upstream.
    let http_detail = |method: &str, path: &str, query: Option<&str>| {
        json!({"protocol": "http", "action": method, "objects": [format!("127.0.0.3:8080{path}")],
               "http": {"method": method, "scheme": "http", "host": "127.0.0.3:8080",
                        "path": path, "query": query}})
    };
    let (http, _) = write_session(
        &journal,
        "http",
        "127.0.0.3:8080",
        Some("items-api"),
        |http| {
            vec![
                command(
                    http,
                    "http_request",
                    "GET http://127.0.0.3:8080/v1/items?limit=10",
                    "allow",
                    "http-reads",
                    http_detail("GET", "/v1/items", Some("limit=10")),
                ),
                command(
                    http,
                    "http_request",
                    "DELETE http://127.0.0.3:8080/v1/items/7",
                    "deny",
                    "http-no-deletes",
                    http_detail("DELETE", "/v1/items/7", None),
                ),
                command(
                    http,
                    "http_request",
                    "POST http://127.0.0.3:8080/v1/items",
                    "allow",
                    "http-writes",
                    http_detail("POST", "/v1/items", None),
                ),
            ]
        },
        &[
            (0, json!({"status": 200, "duration_ms": 4.2})),
            (
                2,
                json!({"status": 500, "duration_ms": 9.0, "error": "upstream error"}),
            ),
        ],
    )
    .await;
    sessions.push(("http", http));

    // MCP, over HTTP: a denied tool call, an allowed one, a resource read.
    let mcp_detail = |method: &str, objects: Value, tool: Option<&str>, args: Value, id: i64| {
        json!({"protocol": "mcp", "action": method, "objects": objects,
               "mcp": {"method": method, "tool": tool, "arguments": args, "request_id": id}})
    };
    let (mcp, _) = write_session(
        &journal,
        "http",
        "127.0.0.4:8000",
        Some("crm-mcp"),
        |mcp| {
            vec![
                command(
                    mcp,
                    "mcp_call",
                    "tools/call delete_customer {\"id\":1}",
                    "deny",
                    "mcp-no-deletes",
                    mcp_detail(
                        "tools/call",
                        json!(["delete_customer"]),
                        Some("delete_customer"),
                        json!({"id": 1}),
                        3,
                    ),
                ),
                command(
                    mcp,
                    "mcp_call",
                    "tools/call lookup_customer {\"email\":\"a***\"}",
                    "allow",
                    "mcp-tools",
                    mcp_detail(
                        "tools/call",
                        json!(["lookup_customer"]),
                        Some("lookup_customer"),
                        json!({"email": "a***"}),
                        4,
                    ),
                ),
                command(
                    mcp,
                    "mcp_call",
                    "resources/read crm://customers/1",
                    "allow",
                    "mcp-reads",
                    mcp_detail(
                        "resources/read",
                        json!(["crm://customers/1"]),
                        None,
                        Value::Null,
                        5,
                    ),
                ),
            ]
        },
        &[(1, json!({"status": 200, "duration_ms": 31.0}))],
    )
    .await;
    sessions.push(("mcp", mcp));

    // Kubernetes: a list, a denied delete, a scale the API server refused.
    let kube_detail =
        |verb: &str, group: &str, resource: &str, sub: Option<&str>, name: Option<&str>| {
            let gvr = format!(
                "{group}/v1/{resource}{}",
                sub.map(|s| format!("/{s}")).unwrap_or_default()
            );
            let mut objects = vec![gvr];
            objects.extend(name.map(|n| format!("default/{n}")));
            json!({"protocol": "kubernetes", "action": verb, "objects": objects,
               "kube": {"verb": verb, "api_group": group, "api_version": "v1", "resource": resource,
                        "subresource": sub, "namespace": "default", "name": name}})
        };
    let (kube, _) = write_session(
        &journal,
        "kubernetes",
        "127.0.0.5:6443",
        Some("cluster"),
        |kube| {
            vec![
                command(
                    kube,
                    "kube_request",
                    "list pods -n default",
                    "allow",
                    "kube-reads",
                    kube_detail("list", "", "pods", None, None),
                ),
                command(
                    kube,
                    "kube_request",
                    "delete pods/web-1 -n default",
                    "deny",
                    "kube-no-deletes",
                    kube_detail("delete", "", "pods", None, Some("web-1")),
                ),
                command(
                    kube,
                    "kube_request",
                    "patch deployments.apps/web/scale -n default",
                    "allow",
                    "kube-scale",
                    kube_detail("patch", "apps", "deployments", Some("scale"), Some("web")),
                ),
            ]
        },
        &[
            (0, json!({"status": 200, "duration_ms": 12.0})),
            (
                2,
                json!({"status": 403, "duration_ms": 5.0, "error": "forbidden"}),
            ),
        ],
    )
    .await;
    sessions.push(("kubernetes", kube));

    // SSH: a denied exec, an allowed one with its output (and a keystroke) and exit status.
    let ssh_detail = |command: &str, programs: &[&str]| {
        json!({"protocol": "ssh", "action": "exec", "objects": programs,
               "ssh": {"channel": "exec", "command": command, "programs": programs,
                       "subsystem": null, "forward": null}})
    };
    let (ssh, ids) = write_session(
        &journal,
        "ssh",
        "127.0.0.6:22",
        Some("buildhost"),
        |ssh| {
            vec![
                command(
                    ssh,
                    "ssh_channel",
                    "rm -rf /srv",
                    "deny",
                    "ssh-no-rm",
                    ssh_detail("rm -rf /srv", &["rm"]),
                ),
                command(
                    ssh,
                    "ssh_channel",
                    "ls /srv | wc -l",
                    "allow",
                    "ssh-reads",
                    ssh_detail("ls /srv | wc -l", &["ls", "wc"]),
                ),
            ]
        },
        &[],
    )
    .await;
    sessions.push(("ssh", ssh));
    let chunk = |stream: &str, offset_ms: u64, data: &str| {
        Event::note(
            Some(ssh),
            "terminal",
            json!({"channel_event": ids[1], "stream": stream, "offset_ms": offset_ms, "data": data}),
        )
    };
    journal
        .events(vec![chunk("output", 35, "3\r\n"), chunk("input", 40, "q")])
        .await
        .expect("terminal");
    journal.record_result(Some(ssh), ids[1], json!({"status": 0, "duration_ms": 41.0}));

    // Plain TCP: a connection allowed by policy, and its close.
    let (tcp, _) = write_session(&journal, "tcp", "127.0.0.7:7", None, |_| Vec::new(), &[]).await;
    sessions.push(("tcp", tcp));
    for (_, id) in &sessions {
        journal
            .close_session(*id, 10, 32, Outcome::Closed, None)
            .await
            .expect("close");
    }
    journal.flush().await.expect("flush");
    (dir, sessions)
}

/// Compares `records` with the golden file `name`, or writes it when `UPDATE_GOLDEN` is set.
fn golden(name: &str, records: &[Value]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/ship/ocsf/golden")
        .join(name);
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(records).expect("records are JSON")
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("golden folder");
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to write it",
            path.display()
        )
    });
    assert!(
        expected == text,
        "{} differs (UPDATE_GOLDEN=1 rewrites it after review); got:\n{text}",
        path.display()
    );
}

#[tokio::test]
async fn each_protocol_maps_to_its_class_as_in_the_golden_files() {
    let (dir, sessions) = journal_of_every_protocol().await;
    let conn = rusqlite::Connection::open(dir.path().join("journal.db")).expect("open");
    let mut events = crate::ship::source::events_after(&conn, 0, 10_000).expect("events");
    // The writer stamps the commit time: fixed times (one second a seq) make the files stable.
    for e in &mut events {
        e.at = format!("2026-03-01T10:{:02}:{:02}.000Z", e.seq / 60, e.seq % 60);
        if let Some(s) = e.session.as_mut() {
            s.started_at = "2026-03-01T10:00:00.000Z".to_owned();
        }
    }
    let records: Vec<(i64, Value)> = events
        .iter()
        .map(|e| {
            let (mut r, summary) = record(JOURNAL, e);
            assert_eq!(r["class_uid"], summary.class_uid, "{r}");
            // The product version changes with every release, not with the mapping.
            r["metadata"]["product"]["version"] = json!("(version)");
            (e.session.as_ref().map_or(0, |s| s.id), r)
        })
        .collect();
    let of = |name: &str, class: i64| -> Vec<Value> {
        let session = sessions
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, id)| *id)
            .expect("session");
        records
            .iter()
            .filter(|(s, r)| *s == session && r["class_uid"] == class)
            .map(|(_, r)| r.clone())
            .collect()
    };
    let files = [
        ("6005-datastore-postgres.json", of("postgres", 6005)),
        ("4002-http.json", of("http", 4002)),
        ("6003-api-mcp.json", of("mcp", 6003)),
        ("6003-api-kubernetes.json", of("kubernetes", 6003)),
        ("4007-ssh.json", of("ssh", 4007)),
        ("4001-network-tcp.json", of("tcp", 4001)),
    ];
    for (name, records) in &files {
        assert!(!records.is_empty(), "no records for {name}");
    }
    let [pg, http, mcp, kube, ssh, tcp] = files.each_ref().map(|(_, r)| r);

    // What the files show, said once here too.
    // SQL: unchanged from before, including an event written without the neutral keys.
    assert_eq!(pg[0]["activity_name"], "Query");
    assert_eq!(
        pg[0]["query_info"]["query_string"],
        "SELECT * FROM customers"
    );
    assert!(pg.iter().all(|r| r["unmapped"].get("text").is_none()));
    assert!(
        !pg.iter().any(|r| r.to_string().contains("a***")),
        "samples are not shipped"
    );
    // HTTP: activity by method; the request's URL; the response code on the result.
    let method = |r: &Value| r["http_request"]["http_method"].clone();
    assert_eq!(
        http.iter()
            .map(|r| (r["activity_id"].clone(), method(r)))
            .collect::<Vec<_>>(),
        vec![
            (json!(3), json!("GET")),
            (json!(2), json!("DELETE")),
            (json!(6), json!("POST")),
            (json!(3), json!("GET")),
            (json!(6), json!("POST")),
        ]
    );
    assert_eq!(
        http[0]["http_request"]["url"]["url_string"],
        "http://127.0.0.3:8080/v1/items?limit=10"
    );
    assert_eq!(http[0]["http_request"]["url"]["port"], 8080);
    assert_eq!(http[1]["disposition_id"], 2);
    assert_eq!(http[3]["http_response"]["code"], 200);
    assert_eq!(
        (http[4]["status_id"].clone(), http[4]["status_code"].clone()),
        (json!(2), json!("500"))
    );
    assert_eq!(
        http[0]["unmapped"]["text"],
        "GET http://127.0.0.3:8080/v1/items?limit=10"
    );
    // MCP: API activity; the tool as a resource; the JSON-RPC id as the request's.
    assert_eq!(mcp[0]["activity_id"], 99);
    assert_eq!(mcp[0]["api"]["operation"], "tools/call");
    assert_eq!(mcp[0]["api"]["service"]["name"], "crm-mcp");
    assert_eq!(mcp[0]["api"]["request"]["uid"], "3");
    assert_eq!(
        mcp[0]["resources"],
        json!([{"type": "tool", "name": "delete_customer"}])
    );
    assert_eq!(mcp[2]["activity_name"], "Read");
    assert_eq!(mcp[3]["api"]["response"]["code"], 200);
    // Kubernetes: Read / Delete / Update by verb; the resource with its namespace.
    assert_eq!(
        kube.iter()
            .take(3)
            .map(|r| r["activity_name"].clone())
            .collect::<Vec<_>>(),
        vec![json!("Read"), json!("Delete"), json!("Update")]
    );
    assert_eq!(
        kube[1]["resources"],
        json!([{"type": "pods", "name": "web-1", "namespace": "default"}])
    );
    assert_eq!(kube[2]["resources"][0]["type"], "deployments.apps/scale");
    assert_eq!(kube[2]["api"]["version"], "apps/v1");
    assert!(kube.iter().all(|r| r.get("connection_info").is_none()));
    // SSH: a denied exec is refused; the terminal is traffic, its text not shipped; the
    // exit status closes the channel.
    assert_eq!(
        (
            ssh[0]["activity_name"].clone(),
            ssh[0]["disposition_id"].clone()
        ),
        (json!("Refuse"), json!(2))
    );
    assert_eq!(ssh[1]["activity_name"], "Open");
    assert_eq!(ssh[1]["unmapped"]["text"], "ls /srv | wc -l");
    assert_eq!(ssh[2]["activity_name"], "Traffic");
    assert_eq!(
        ssh[2]["traffic"],
        json!({"bytes_out": 0, "bytes_in": 3, "bytes": 3})
    );
    assert!(ssh[2]["unmapped"]["detail"].get("data").is_none());
    assert_eq!(ssh[3]["traffic"]["bytes_out"], 1);
    assert_eq!(
        (ssh[4]["activity_name"].clone(), ssh[4]["status_id"].clone()),
        (json!("Close"), json!(1))
    );
    // TCP: as before.
    assert_eq!(
        tcp.iter()
            .map(|r| r["activity_name"].clone())
            .collect::<Vec<_>>(),
        vec![json!("Open"), json!("Open"), json!("Close")]
    );

    for (name, records) in &files {
        golden(name, records);
    }
}
