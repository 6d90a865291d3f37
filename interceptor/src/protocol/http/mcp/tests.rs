use std::sync::Arc;

use serde_json::{json, Value};

use super::*;

const MAX: usize = 64 * 1024;

fn mcp(body: &str) -> Body {
    match read_body(body.as_bytes(), MAX) {
        Ok(Reading::Mcp(b)) => b,
        other => panic!("{body}: {other:?}"),
    }
}

fn err(body: &str) -> McpError {
    read_body(body.as_bytes(), MAX).expect_err(body)
}

#[test]
fn a_tool_call_names_its_tool_arguments_and_id() {
    let b = mcp(
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_customer","arguments":{"id":1}}}"#,
    );
    assert!(!b.batch);
    let Message::Request { call, .. } = &b.messages[0] else {
        panic!("a request");
    };
    assert_eq!(call.method, "tools/call");
    assert_eq!(call.tool.as_deref(), Some("delete_customer"));
    assert_eq!(call.arguments, Some(json!({"id": 1})));
    assert_eq!(call.request_id, Some(json!(7)));
    assert_eq!(call.canonical(), r#"tools/call delete_customer {"id":1}"#);
}

#[test]
fn resources_notifications_and_responses_are_read() {
    let b = mcp(r#"[
        {"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///srv/x"}},
        {"jsonrpc":"2.0","method":"notifications/initialized"},
        {"jsonrpc":"2.0","id":5,"result":{"content":{"type":"text","text":"hi"}}},
        {"jsonrpc":"2.0","id":6,"error":{"code":-1,"message":"no"}},
        {"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"p2"}},
        {"jsonrpc":"2.0","id":2,"method":"tools/list"}
    ]"#);
    assert!(b.batch);
    assert_eq!(b.messages.len(), 6);
    assert_eq!(b.calls().count(), 4);
    assert!(
        matches!(&b.messages[0], Message::Request { call, .. } if call.uri.as_deref() == Some("file:///srv/x"))
    );
    assert!(
        matches!(&b.messages[1], Message::Notification { call } if call.method == "notifications/initialized" && call.request_id.is_none())
    );
    assert_eq!(
        b.messages[2],
        Message::Response {
            id: json!(5),
            error: false
        }
    );
    assert!(matches!(
        b.messages[3],
        Message::Response { error: true, .. }
    ));
    assert_eq!(b.tool_lists(), vec![(json!(1), false), (json!(2), true)]);
}

#[test]
fn json_that_is_not_json_rpc_is_not_mcp() {
    for body in [
        r#"{"query":"x"}"#,
        r#"[{"a":1},{"b":2}]"#,
        "[]",
        "42",
        r#""text""#,
        "null",
    ] {
        assert_eq!(
            read_body(body.as_bytes(), MAX),
            Ok(Reading::NotMcp),
            "{body}"
        );
    }
}

#[test]
fn malformed_invalid_and_ambiguous_bodies_are_refused() {
    for body in [
        "{",
        "not json",
        r#"{"jsonrpc":"2.0","method":"x"} trailing"#,
        "\u{feff}{}",
    ] {
        assert!(matches!(err(body), McpError::Malformed(_)), "{body}");
    }
    for body in [
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"method":"tools/call","id":1,"params":{"name":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":""}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["x"]}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[1]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#,
        r#"[{"jsonrpc":"2.0","method":"ping","id":1},{"x":1}]"#,
    ] {
        assert!(matches!(err(body), McpError::Invalid(_)), "{body}");
    }
    for body in [
        // serde_json would judge `read_file`; a server keeping the first key runs `delete`.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete","name":"read_file"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1,"a":2}}}"#,
        r#"{"jsonrpc":"2.0","method":"ping","method":"tools/call","id":1}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
    ] {
        assert!(matches!(err(body), McpError::Ambiguous(_)), "{body}");
    }
    let big = format!(
        r#"{{"jsonrpc":"2.0","method":"ping","pad":"{}"}}"#,
        "x".repeat(MAX)
    );
    assert!(matches!(err(&big), McpError::TooLarge { .. }));
}

#[test]
fn deep_nesting_is_malformed_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(read_body(deep.as_bytes(), usize::MAX).is_err());
}

#[test]
fn a_partly_refused_batch_forwards_the_allowed_messages_as_sent() {
    let text = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"n":100000000000000000000000}}}, {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"b"}},{"jsonrpc":"2.0","method":"notifications/x"}]"#;
    let b = mcp(text);
    assert_eq!(b.forward(&[true, true, true]), Forward::All);
    assert_eq!(b.forward(&[false, false, false]), Forward::Nothing);
    let Forward::Part(part) = b.forward(&[true, false, true]) else {
        panic!("a part");
    };
    assert_eq!(
        String::from_utf8_lossy(&part),
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"n":100000000000000000000000}}},{"jsonrpc":"2.0","method":"notifications/x"}]"#
    );
}

#[test]
fn refusals_echo_the_id_and_name_the_rule_and_event() {
    let b = mcp(
        r#"[{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"drop"}},{"jsonrpc":"2.0","id":9,"method":"prompts/get","params":{"name":"p"}},{"jsonrpc":"2.0","method":"notifications/cancelled"}]"#,
    );
    let why = Refusal {
        message: "tool calls need a human's approval".to_owned(),
        rule: Some("mcp-tool-calls".to_owned()),
        event: Some(42),
    };
    let answers: Vec<Value> = b.messages.iter().filter_map(|m| refusal(m, &why)).collect();
    assert_eq!(answers.len(), 2, "a notification gets no answer");
    assert_eq!(answers[0]["id"], json!("c1"));
    assert_eq!(answers[0]["result"]["isError"], json!(true));
    let text = answers[0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains("mcp-tool-calls") && text.contains("journal event 42"),
        "{text}"
    );
    assert_eq!(answers[1]["id"], json!(9));
    assert_eq!(answers[1]["error"]["code"], json!(REFUSED_CODE));
    assert_eq!(
        answers[1]["error"]["data"],
        json!({"rule": "mcp-tool-calls", "event": 42})
    );
    let body = answer_body(answers.clone(), true).unwrap_or_default();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).ok(),
        Some(Value::Array(answers.clone()))
    );
    let one = answer_body(vec![answers[1].clone()], false).unwrap_or_default();
    assert_eq!(
        serde_json::from_slice::<Value>(&one).ok(),
        Some(answers[1].clone())
    );
    assert_eq!(answer_body(Vec::new(), true), None);
}

fn listing() -> Value {
    json!({"tools": [
        {"name": "search", "inputSchema": {}, "annotations": {"readOnlyHint": true, "openWorldHint": false}},
        {"name": "delete_customer", "annotations": {"destructiveHint": true, "readOnlyHint": "yes"}},
        {"name": "plain"},
        {"title": "no name"}
    ]})
}

#[test]
fn annotations_are_learned_from_listings_and_replaced_by_the_next() {
    let r = ToolRegistry::default();
    assert_eq!(r.learn(&listing(), true), 3);
    assert_eq!(r.annotations("search").read_only, Some(true));
    assert_eq!(r.annotations("search").open_world, Some(false));
    let d = r.annotations("delete_customer");
    assert_eq!(
        (d.read_only, d.destructive),
        (None, Some(true)),
        "a non-boolean hint is unknown"
    );
    assert!(r.annotations("plain").is_unknown());
    assert!(r.annotations("never_listed").is_unknown());
    // A later page adds; a new first page replaces.
    r.learn(
        &json!({"tools": [{"name": "more", "annotations": {"readOnlyHint": true}}]}),
        false,
    );
    assert_eq!(r.len(), 4);
    r.learn(&json!({"tools": [{"name": "search"}]}), true);
    assert_eq!(r.len(), 1);
    assert!(r.annotations("search").is_unknown(), "read-only no more");

    let mut b = mcp(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search","arguments":{}}}"#,
    );
    r.learn(&listing(), true);
    b.annotate(&r);
    assert_eq!(
        b.calls().next().map(|c| c.annotations.read_only),
        Some(Some(true))
    );
}

#[test]
fn the_registry_is_bounded() {
    let r = ToolRegistry::default();
    let tools: Vec<Value> = (0..MAX_TOOLS + 10)
        .map(|i| json!({"name": format!("t{i}"), "annotations": {"readOnlyHint": true}}))
        .chain([json!({"name": "x".repeat(MAX_TOOL_NAME + 1)})])
        .collect();
    r.learn(&json!({ "tools": tools }), true);
    assert_eq!(r.len(), MAX_TOOLS);
    assert!(r.annotations(&format!("t{}", MAX_TOOLS + 5)).is_unknown());

    let all = Registries::default();
    let first = all.of("127.0.0.1:8000");
    first.learn(&listing(), true);
    assert!(Arc::ptr_eq(&first, &all.of("127.0.0.1:8000")));
    for i in 0..MAX_UPSTREAMS {
        all.of(&format!("127.0.0.2:{i}"));
    }
    assert!(
        all.of("127.0.0.1:8000").is_empty(),
        "the oldest upstream was dropped"
    );
}

#[test]
fn a_watch_learns_only_the_answers_to_listings_and_forgets_on_list_changed() {
    let r = Arc::new(ToolRegistry::default());
    let watch = ListWatch::new(r.clone(), vec![(json!(2), true)]);
    watch.observe(&json!({"jsonrpc": "2.0", "id": 1, "result": listing()}));
    assert!(r.is_empty(), "id 1 was not a listing");
    watch.observe(&json!([{"jsonrpc": "2.0", "id": 2, "result": listing()}]));
    assert_eq!(r.len(), 3);
    watch.observe(&json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
    assert!(r.is_empty());
}

#[test]
fn session_ids_are_the_servers_bounded_and_forgotten_once_ended() {
    let registry = ToolRegistry::default();
    assert!(!registry.knows_session("s-0"), "nothing assigned yet");
    for i in 0..MAX_SESSIONS + 1 {
        registry.learn_session(&format!("s-{i}"));
    }
    registry.learn_session("s-1"); // an id confirmed again is kept once
    assert!(
        !registry.knows_session("s-0"),
        "the oldest goes past the bound"
    );
    assert!(registry.knows_session("s-1") && registry.knows_session(&format!("s-{MAX_SESSIONS}")));
    registry.learn_session(&"x".repeat(MAX_SESSION_ID + 1));
    assert!(
        !registry.knows_session(&"x".repeat(MAX_SESSION_ID + 1)),
        "too long to keep"
    );
    registry.forget_session("s-1");
    assert!(
        !registry.knows_session("s-1"),
        "an ended session's DELETE is plain HTTP again"
    );
}
