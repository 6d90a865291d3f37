use std::{collections::HashMap, time::Duration};

use serde_json::json;

use super::{
    color_allowed, one_line,
    replay::{self, format_offset, plan, Frame, Pace, Streams},
    sessions::{self, entries},
    truncate, Cell, Column, Paint, Table, Term,
};
use crate::journal::reader::{neutral, CommandCounts, EventRow, SessionRow};

const COLOR: Term = Term {
    color: true,
    width: None,
};

fn session() -> SessionRow {
    SessionRow {
        id: 7,
        run_id: Some("run-0123456789abcdef".into()),
        pid: 4242,
        uid: 1000,
        user: Some("alice".into()),
        comm: "python3".into(),
        exe: Some("/usr/bin/python3.11".into()),
        cmdline: Some("python3 agent.py".into()),
        cgroup_path: None,
        unit: None,
        identity_stale: false,
        client_addr: "127.0.0.1:50000".into(),
        original_dst: "127.0.0.2:5432".into(),
        target: Some("appdb".into()),
        protocol: "postgres".into(),
        upstream: Some("127.0.0.1:5433".into()),
        bytes_up: 100,
        bytes_down: 200,
        started_at: "2026-11-28T09:00:00.000Z".into(),
        ended_at: Some("2026-11-28T09:00:30.000Z".into()),
        outcome: Some("closed".into()),
        detail: None,
    }
}

fn event(seq: i64, ts: &str, kind: &str) -> EventRow {
    EventRow {
        seq,
        ts: ts.into(),
        kind: kind.into(),
        statement: None,
        decision: None,
        rule: None,
        result: None,
        detail: json!(null),
        neutral: None,
    }
}

/// A SQL statement written before the neutral keys existed (no `protocol`, `action`,
/// `objects`, `classes`): what the reader gives for it.
fn command(seq: i64, ts: &str, sql: &str, decision: &str, rule: &str) -> EventRow {
    let detail = json!({"command": "statement", "params": 0});
    EventRow {
        statement: Some(sql.into()),
        decision: Some(decision.into()),
        rule: Some(rule.into()),
        neutral: neutral("statement", &detail, "postgres"),
        detail,
        ..event(seq, ts, "statement")
    }
}

/// A session with a masked read, a denied DROP, a held and approved UPDATE, and the kinds
/// another version may add (`result`, `session_open`) or that this one does not know.
fn events() -> Vec<EventRow> {
    let mut read = command(
        10,
        "2026-11-28T09:00:01.000Z",
        "SELECT email FROM contacts",
        "allow",
        "reads",
    );
    read.result = Some(json!({
        "tag": "SELECT 2", "rows": 2, "duration_ms": 0.61, "sqlstate": null, "error": null,
        "masked": {"detector:email": 2},
        "sample": [["a***@example.com"], [null]],
    }));
    let mut drop = command(
        11,
        "2026-11-28T09:00:03.000Z",
        "DROP TABLE contacts",
        "deny",
        "no-schema-changes",
    );
    drop.detail["reason"] = json!("schema changes are not allowed for agents");
    let mut update = command(
        12,
        "2026-11-28T09:00:04.000Z",
        "UPDATE acct SET bal = 0",
        "review",
        "writes-need-review",
    );
    update.detail["reason"] = json!("data changes need a human's approval");
    let held = EventRow {
        detail: json!({"id": "apr-1", "status": "pending", "event": 12}),
        statement: update.statement.clone(),
        decision: Some("review".into()),
        ..event(13, "2026-11-28T09:00:04.000Z", "approval")
    };
    let decided = EventRow {
        detail: json!({"id": "apr-1", "status": "approved", "approver": "root", "approver_uid": 0,
                       "scope": "run", "reason": "looks right", "at": "2026-11-28T09:00:20.000Z"}),
        decision: Some("allow".into()),
        ..event(14, "2026-11-28T09:00:20.000Z", "approval_decision")
    };
    // The update's result only as a chained `result` event (its column is empty).
    let chained = EventRow {
        detail: json!({"event": 12, "result": {"tag": "UPDATE 1", "rows": 1, "duration_ms": 2.0}}),
        ..event(15, "2026-11-28T09:00:20.001Z", "result")
    };
    let opened = EventRow {
        detail: json!({"pid": 4242}),
        ..event(9, "2026-11-28T09:00:00.500Z", "session_open")
    };
    let future = EventRow {
        detail: json!({"what": "a kind from the future", "n": 3, "gone": null}),
        ..event(16, "2026-11-28T09:00:25.000Z", "telepathy")
    };
    let closed = EventRow {
        detail: json!({"outcome": "closed", "bytes_up": 100, "bytes_down": 200, "detail": null}),
        ..event(17, "2026-11-28T09:00:30.000Z", "session_close")
    };
    vec![
        opened, read, drop, update, held, decided, chained, future, closed,
    ]
}

// ---------------------------------------------------------------------------------------------
// Text primitives
// ---------------------------------------------------------------------------------------------

#[test]
fn truncation_marks_the_cut_at_either_end() {
    assert_eq!(truncate("abcdef", 6, false), "abcdef");
    assert_eq!(truncate("abcdef", 4, false), "abc…");
    assert_eq!(truncate("/usr/bin/python3", 8, true), "…python3");
    assert_eq!(
        truncate("ééééé", 3, false),
        "éé…",
        "counts chars, not bytes"
    );
    assert_eq!(truncate("abc", 0, false), "");
}

#[test]
fn journal_text_cannot_drive_the_terminal() {
    // An escape sequence and a bidi override in a statement are shown, not obeyed.
    let shown = one_line("SELECT 1 \x1b[2J\u{202e}-- x");
    assert!(
        !shown.contains('\x1b') && !shown.contains('\u{202e}'),
        "{shown}"
    );
    assert_eq!(shown, "SELECT 1 \\x1b[2J\\u{202e}-- x");
    // Line breaks and their indentation become one space; tabs become spaces.
    assert_eq!(
        one_line("SELECT a,\n       b\r\nFROM t\twhere"),
        "SELECT a, b FROM t where"
    );
}

#[test]
fn colors_only_for_a_terminal_without_no_color() {
    use std::ffi::OsStr;
    assert!(color_allowed(true, None));
    assert!(
        color_allowed(true, Some(OsStr::new(""))),
        "an empty NO_COLOR is unset"
    );
    assert!(!color_allowed(true, Some(OsStr::new("1"))));
    assert!(!color_allowed(false, None));
    assert_eq!(Term::PLAIN.paint(Paint::Red, "deny"), "deny");
    assert_eq!(COLOR.paint(Paint::Red, "deny"), "\x1b[31mdeny\x1b[0m");
    assert_eq!(Paint::decision("allow"), Paint::Green);
    assert_eq!(Paint::decision("deny"), Paint::Red);
    assert_eq!(Paint::decision("review"), Paint::Yellow);
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

fn table() -> Table {
    let mut t = Table::new(vec![
        Column::new("ID"),
        Column::new("NAME").max(8),
        Column::new("PATH").max(10).keep_end(),
        Column::new("DECISION"),
    ]);
    t.push(vec![
        "1".into(),
        "short".into(),
        "/bin/sh".into(),
        Cell::new("allow").paint(Paint::Green),
    ]);
    t.push(vec![
        "22".into(),
        "a-much-longer-name".into(),
        "/usr/lib/postgresql/15/bin/psql".into(),
        Cell::new("deny").paint(Paint::Red),
    ]);
    t
}

#[test]
fn columns_are_aligned_and_long_cells_cut() {
    let text = table().render(&Term::PLAIN);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            "ID  NAME      PATH        DECISION",
            "1   short     /bin/sh     allow",
            "22  a-much-…  …/bin/psql  deny",
        ]
    );
}

#[test]
fn colors_do_not_change_alignment_and_plain_has_no_escapes() {
    let plain = table().render(&Term::PLAIN);
    assert!(!plain.contains('\x1b'), "{plain}");
    let colored = table().render(&COLOR);
    assert!(colored.contains("\x1b[32mallow\x1b[0m"), "{colored}");
    assert!(
        colored.contains("\x1b[1mID\x1b[0m"),
        "bold header: {colored}"
    );
    // Without the escapes, the colored table is the plain one.
    let stripped = strip_ansi(&colored);
    assert_eq!(stripped, plain);
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_narrow_terminal_shrinks_the_shrinkable_columns_fairly() {
    let mut t = Table::new(vec![
        Column::new("ID"),
        Column::new("A").shrink(4),
        Column::new("B").shrink(4),
    ]);
    t.push(vec![
        "1".into(),
        "x".repeat(20).into(),
        "y".repeat(10).into(),
    ]);
    let term = Term {
        color: false,
        width: Some(24),
    };
    // 1 + 2 + 20 + 2 + 10 = 35 > 24: the widest gives way first, until they share the loss.
    assert_eq!(t.widths(&term), vec![2, 9, 9]);
    for line in t.render(&term).lines() {
        assert!(line.chars().count() <= 24, "{line:?}");
    }
    // A terminal too narrow for the minimums keeps the minimums.
    let tiny = Term {
        color: false,
        width: Some(5),
    };
    assert_eq!(t.widths(&tiny), vec![2, 4, 4]);
    // Not a terminal: nothing shrinks.
    assert_eq!(t.widths(&Term::PLAIN), vec![2, 20, 10]);
}

#[test]
fn notes_start_under_the_last_column() {
    let mut t = Table::new(vec![Column::new("SEQ"), Column::new("WHAT")]);
    t.push(vec!["#1".into(), "SELECT 1".into()]);
    t.note(Cell::new("=> SELECT 1"));
    assert_eq!(
        t.render(&Term::PLAIN),
        "SEQ  WHAT\n#1   SELECT 1\n     => SELECT 1\n"
    );
}

// ---------------------------------------------------------------------------------------------
// sessions list / show
// ---------------------------------------------------------------------------------------------

#[test]
fn the_sessions_table_summarises_decisions() {
    let mut tcp = session();
    tcp.id = 8;
    tcp.protocol = "tcp".into();
    tcp.target = None;
    let counts = HashMap::from([(
        7,
        CommandCounts {
            commands: 3,
            allow: 1,
            deny: 1,
            review: 1,
        },
    )]);
    let text = sessions::sessions_table(&[session(), tcp], &counts, &Term::PLAIN);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("ID  STARTED"), "{text}");
    assert!(lines[1].contains("3 (1 deny, 1 review)"), "{text}");
    assert!(lines[2].contains(" - "), "no commands: {text}");
    // Every column starts at the same position on every line.
    let header_starts: Vec<usize> = ["STARTED", "RUN", "USER", "PID", "EXE", "OUTCOME"]
        .iter()
        .map(|h| lines[0].find(h).expect("header"))
        .collect();
    for line in &lines[1..] {
        for &start in &header_starts {
            assert_eq!(&line[start - 2..start], "  ", "{text}");
            assert_ne!(&line[start..=start], " ", "{text}");
        }
    }
    assert_eq!(
        sessions::sessions_table(&[], &counts, &Term::PLAIN),
        "ID  STARTED  RUN  USER  PID  EXE  DESTINATION  TARGET  PROTO  COMMANDS  UP  DOWN  OUTCOME\n(no sessions)\n"
    );
    let colored = sessions::sessions_table(&[session()], &counts, &COLOR);
    assert!(
        colored.contains("\x1b[31m3 (1 deny, 1 review)\x1b[0m"),
        "{colored}"
    );
}

#[test]
fn the_timeline_shows_decisions_rules_approvals_masking_and_results() {
    let events = events();
    let counts = CommandCounts {
        commands: 3,
        allow: 1,
        deny: 1,
        review: 1,
    };
    let text = sessions::timeline(&session(), &events, Some(&counts), &Term::PLAIN);
    assert!(!text.contains('\x1b'));
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
    };
    assert!(text.starts_with("session 7  run run-0123456789abcdef  alice (pid 4242, uid 1000)  /usr/bin/python3.11\n"), "{text}");
    assert!(
        text.contains("2026-11-28T09:00:00.000Z .. 2026-11-28T09:00:30.000Z (30.00 s)"),
        "{text}"
    );
    assert!(
        text.contains("commands: 3 (1 allow, 1 deny, 1 review)"),
        "{text}"
    );
    let read = line("SELECT email FROM contacts");
    assert!(read.starts_with("#10  09:00:01.000  statement"), "{read}");
    assert!(
        read.contains(" allow ") && read.contains(" reads "),
        "{read}"
    );
    assert!(line("=> SELECT 2").contains("(2 rows, 0.6 ms)"));
    line("masked: detector:email 2");
    let drop = line("DROP TABLE contacts");
    assert!(
        drop.contains("deny") && drop.contains("no-schema-changes"),
        "{drop}"
    );
    line("reason: schema changes are not allowed for agents");
    line("held for approval apr-1 (#12)");
    let approved = line("approved apr-1 (#12) by root (uid 0), scope run");
    assert!(
        approved.starts_with("#14  09:00:20.000  approval_decision  allow"),
        "{approved}"
    );
    line("reason: looks right");
    // The chained result is shown with its command, and the `result` event is not a line.
    line("=> UPDATE 1 (1 row, 2.0 ms)");
    assert!(!text.contains("#15"), "{text}");
    // New and unknown kinds are shown compactly and generically.
    // Compact: the header already has what session_open snapshots.
    assert!(line("session_open").ends_with("  session opened"), "{text}");
    line("session closed: closed, up 100 B, down 200 B");
    let future = line("telepathy");
    assert!(
        future.ends_with("n=3 what=\"a kind from the future\""),
        "{future}"
    );
    // Aligned: every row's WHAT starts at the header's WHAT.
    let what = line("SEQ").find("WHAT").expect("WHAT");
    for needle in [
        "SELECT email",
        "DROP TABLE",
        "held for approval",
        "=> SELECT 2",
    ] {
        assert_eq!(line(needle).find(needle), Some(what), "{needle}: {text}");
    }
}

#[test]
fn approval_outcomes_read_as_sentences() {
    let decision = |detail: serde_json::Value| {
        let e = EventRow {
            detail,
            ..event(1, "2026-11-28T09:00:00.000Z", "approval_decision")
        };
        let events = [e];
        let entries = entries(&events);
        let cell = entries[0].what();
        (cell.text, cell.paint)
    };
    assert_eq!(
        decision(
            json!({"id": "apr-9", "status": "denied", "approver": "bob", "approver_uid": 1001, "reason": "no"})
        ),
        ("denied apr-9 by bob (uid 1001)".to_owned(), Paint::Red)
    );
    assert_eq!(
        decision(json!({"id": "apr-9", "status": "expired", "approver": null})).0,
        "apr-9 expired: nobody decided, nothing ran"
    );
    // `by` is accepted where `approver` is absent.
    assert_eq!(
        decision(json!({"id": "apr-9", "status": "approved", "by": "carol", "scope": "once"})),
        (
            "approved apr-9 by carol, scope once".to_owned(),
            Paint::Green
        )
    );
}

#[test]
fn errors_are_red_and_rows_are_counted() {
    let e = sessions::result_summary(
        &json!({"sqlstate": "42501", "error": "permission denied", "duration_ms": 0.26, "rows": 0}),
        Some("postgres"),
    );
    assert_eq!(e.text, "=> ERROR 42501 permission denied (0.3 ms)");
    assert_eq!(e.paint, Paint::Red);
    let ok = sessions::result_summary(
        &json!({"tag": "SELECT 1", "rows": 1, "duration_ms": 1500.0}),
        Some("postgres"),
    );
    assert_eq!(
        (ok.text.as_str(), ok.paint),
        ("=> SELECT 1 (1 row, 1.50 s)", Paint::Plain)
    );
}

// ---------------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------------

fn waits(steps: &[replay::Step<'_>]) -> Vec<Duration> {
    steps.iter().map(|s| s.wait).collect()
}

#[test]
fn replay_keeps_journal_order_and_scales_the_gaps() {
    let events = events();
    let real = Pace::new(1.0, 60.0).expect("pace");
    let steps = plan(&session(), &events, &real, Streams::default());
    // Journal order, `result` events folded away; the session_close event is the end.
    let seqs: Vec<Option<i64>> = steps
        .iter()
        .map(|s| match &s.frame {
            Frame::Event { entry, .. } => Some(entry.event.seq),
            Frame::Terminal { seq, .. } => Some(*seq),
            Frame::Finished { entry } => Some(entry.event.seq),
            Frame::End | Frame::Window { .. } => None,
        })
        .collect();
    assert_eq!(
        seqs,
        vec![
            Some(9),
            Some(10),
            Some(11),
            Some(12),
            Some(13),
            Some(14),
            Some(16),
            Some(17)
        ]
    );
    let ms = Duration::from_millis;
    // Gaps from the session's start (09:00:00.000), then event to event, then to the end.
    assert_eq!(
        waits(&steps),
        vec![
            ms(500),
            ms(500),
            ms(2000),
            ms(1000),
            ms(0),
            ms(16000),
            ms(5000),
            ms(5000)
        ]
    );
    assert_eq!(steps[5].offset, ms(20_000));

    let fast = plan(
        &session(),
        &events,
        &Pace::new(4.0, 60.0).expect("pace"),
        Streams::default(),
    );
    assert_eq!(
        waits(&fast),
        vec![
            ms(125),
            ms(125),
            ms(500),
            ms(250),
            ms(0),
            ms(4000),
            ms(1250),
            ms(1250)
        ]
    );
    assert_eq!(fast[5].offset, ms(20_000), "offsets stay in session time");

    let capped = plan(
        &session(),
        &events,
        &Pace::new(1.0, 1.5).expect("pace"),
        Streams::default(),
    );
    assert_eq!(
        waits(&capped),
        vec![
            ms(500),
            ms(500),
            ms(1500),
            ms(1000),
            ms(0),
            ms(1500),
            ms(1500),
            ms(1500)
        ]
    );

    let none = plan(
        &session(),
        &events,
        &Pace::new(0.0, 10.0).expect("pace"),
        Streams::default(),
    );
    assert!(waits(&none).iter().all(Duration::is_zero));
}

#[test]
fn replay_survives_odd_timestamps() {
    let events = vec![
        command(1, "2026-11-28T09:00:02.000Z", "SELECT 1", "allow", "reads"),
        // Committed in the same group but stamped a millisecond earlier: no negative gap.
        command(2, "2026-11-28T09:00:01.999Z", "SELECT 2", "allow", "reads"),
        command(3, "not a time", "SELECT 3", "allow", "reads"),
        command(4, "2026-11-28T09:00:03.000Z", "SELECT 4", "allow", "reads"),
    ];
    let steps = plan(
        &session(),
        &events,
        &Pace::new(1.0, 60.0).expect("pace"),
        Streams::default(),
    );
    let ms = Duration::from_millis;
    assert_eq!(
        waits(&steps),
        vec![ms(2000), ms(0), ms(0), ms(1000), ms(27000)]
    );
    // No session_close event: the session row's end closes the replay.
    assert!(matches!(steps.last().map(|s| &s.frame), Some(Frame::End)));
    let end = replay::render_step(&session(), &steps[4], &Term::PLAIN);
    assert_eq!(
        end,
        "[+30.000s] session ended: closed, up 100 B, down 200 B\n"
    );
}

#[test]
fn replay_prints_statements_decisions_and_what_the_agent_received() {
    let events = events();
    let mut out = Vec::new();
    let mut slept = Vec::new();
    replay::play(
        &session(),
        &events,
        None,
        &Pace::new(2.0, 3.0).expect("pace"),
        Streams::default(),
        &Term::PLAIN,
        &mut out,
        &mut |d| slept.push(d),
    )
    .expect("play");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(!text.contains('\x1b'));
    let ms = Duration::from_millis;
    assert_eq!(
        slept,
        vec![
            ms(250),
            ms(250),
            ms(1000),
            ms(500),
            ms(3000),
            ms(2500),
            ms(2500)
        ]
    );
    let position = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
    };
    let order = [
        "replaying 8 events at 2x, pauses capped at 3s",
        "[+1.000s] #10 statement allow (reads)\n  > SELECT email FROM contacts\n",
        "  => SELECT 2 (2 rows, 0.6 ms)\n  masked: detector:email 2\n  | a***@example.com\n  | NULL\n",
        "[+3.000s] #11 statement deny (no-schema-changes)\n  > DROP TABLE contacts\n  reason: schema changes",
        "  > UPDATE acct SET bal = 0\n  reason: data changes need a human's approval\n  (held: waiting for an approver)\n",
        "[+20.000s] #14 approval_decision allow  approved apr-1 (#12) by root (uid 0), scope run\n  reason: looks right\n  result of #12:\n  => UPDATE 1 (1 row, 2.0 ms)\n",
        "[+30.000s] #17 session_close  session closed: closed, up 100 B, down 200 B\n",
    ];
    let positions: Vec<usize> = order.iter().map(|n| position(n)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order:\n{text}"
    );
}

#[test]
fn replay_pace_is_validated() {
    assert!(Pace::new(-1.0, 5.0).is_err());
    assert!(Pace::new(f64::NAN, 5.0).is_err());
    assert!(Pace::new(1.0, -1.0).is_err());
    assert!(Pace::new(1.0, f64::INFINITY).is_err());
    // A tiny speed is "as slow as allowed", not an overflow.
    assert_eq!(
        Pace::new(1e-300, 2.0)
            .expect("pace")
            .wait_for(Duration::from_secs(1)),
        Duration::from_secs(2)
    );
}

#[test]
fn offsets_read_naturally() {
    assert_eq!(format_offset(Duration::from_millis(25)), "+0.025s");
    assert_eq!(format_offset(Duration::from_millis(187_250)), "+3m07.250s");
    assert_eq!(
        format_offset(Duration::from_millis(3_723_000)),
        "+1h02m03.000s"
    );
}

// ---------------------------------------------------------------------------------------------
// Every protocol, and terminal sessions
// ---------------------------------------------------------------------------------------------

/// A command of any protocol as the reader gives it: the neutral keys in its detail, read back.
fn neutral_command(
    seq: i64,
    ts: &str,
    kind: &str,
    text: &str,
    decision: &str,
    detail: serde_json::Value,
) -> EventRow {
    EventRow {
        statement: Some(text.into()),
        decision: Some(decision.into()),
        rule: Some(format!("{kind}-rule")),
        neutral: neutral(kind, &detail, "postgres"),
        detail,
        ..event(seq, ts, kind)
    }
}

fn one_of_each() -> Vec<EventRow> {
    let mut sql = neutral_command(
        1,
        "2026-11-28T09:00:01.000Z",
        "statement",
        "SELECT * FROM customers",
        "allow",
        json!({"protocol": "postgres", "action": "read", "objects": ["customers"],
               "command": "statement", "classes": ["read"]}),
    );
    sql.rule = Some("reads".into());
    sql.result = Some(json!({"tag": "SELECT 3", "rows": 3, "duration_ms": 1.0}));
    let mut http = neutral_command(
        2,
        "2026-11-28T09:00:02.000Z",
        "http_request",
        "DELETE http://127.0.0.1:8080/v1/items/7",
        "allow",
        json!({"protocol": "http", "action": "DELETE", "objects": ["127.0.0.1:8080/v1/items/7"],
               "http": {"method": "DELETE", "scheme": "http", "host": "127.0.0.1:8080",
                        "path": "/v1/items/7", "query": null}}),
    );
    http.result = Some(json!({"status": 404, "duration_ms": 3.0}));
    let mcp = neutral_command(
        3,
        "2026-11-28T09:00:03.000Z",
        "mcp_call",
        "tools/call delete_customer {\"id\":1}",
        "deny",
        json!({"protocol": "mcp", "action": "tools/call", "objects": ["delete_customer"],
               "reason": "tools that delete need a human",
               "mcp": {"method": "tools/call", "tool": "delete_customer",
                       "arguments": {"id": 1}, "request_id": 4}}),
    );
    let mut kube = neutral_command(
        4,
        "2026-11-28T09:00:04.000Z",
        "kube_request",
        "delete pods/web-1 -n default",
        "allow",
        json!({"protocol": "kubernetes", "action": "delete", "objects": ["/v1/pods", "default/web-1"],
               "kube": {"verb": "delete", "api_group": "", "api_version": "v1", "resource": "pods",
                        "subresource": null, "namespace": "default", "name": "web-1"}}),
    );
    kube.result = Some(json!({"status": 200, "duration_ms": 12.0}));
    let mut ssh = neutral_command(
        5,
        "2026-11-28T09:00:05.000Z",
        "ssh_channel",
        "rm -rf /srv",
        "allow",
        json!({"protocol": "ssh", "action": "exec", "objects": ["rm"],
               "ssh": {"channel": "exec", "command": "rm -rf /srv", "programs": ["rm"]}}),
    );
    ssh.result = Some(json!({"status": 1, "duration_ms": 40.0}));
    let chunk = |seq: i64, stream: &str, offset_ms: u64, data: &str| EventRow {
        detail: json!({"channel_event": 5, "stream": stream, "offset_ms": offset_ms, "data": data}),
        // Chunks are committed in groups: their own times say little.
        ..event(seq, "2026-11-28T09:00:09.000Z", "terminal")
    };
    vec![
        sql,
        http,
        mcp,
        kube,
        ssh,
        chunk(6, "output", 100, "rm: cannot remove\r\n"),
        chunk(7, "input", 1500, "yes-please\n"),
        chunk(8, "output", 2100, "'/srv': \x1b]52;c;cHduZWQ=\x07denied"),
    ]
}

#[test]
fn every_protocol_reads_as_action_objects_and_text() {
    let mut s = session();
    s.protocol = "ssh".into();
    let text = sessions::timeline(&s, &one_of_each(), None, &Term::PLAIN);
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
            .to_owned()
    };
    let header = line("SEQ");
    let column = |name: &str| header.find(name).expect("column");
    let (action, objects, what) = (column("ACTION"), column("OBJECTS"), column("WHAT"));
    // Action, objects and canonical text in their columns, for every protocol.
    for (text_of_command, verb, object) in [
        ("SELECT * FROM customers", "read", "customers"),
        (
            "DELETE http://127.0.0.1:8080/v1/items/7",
            "DELETE",
            "127.0.0.1:8080/v1/items/7",
        ),
        (
            "tools/call delete_customer",
            "tools/call",
            "delete_customer",
        ),
        (
            "delete pods/web-1 -n default",
            "delete",
            "/v1/pods default/web-1",
        ),
        ("rm -rf /srv", "exec", "rm"),
    ] {
        let l = line(text_of_command);
        assert_eq!(l.find(text_of_command), Some(what), "{l}\n{text}");
        assert_eq!(l[action..].find(verb), Some(0), "{l}\n{text}");
        assert_eq!(l[objects..].find(object), Some(0), "{l}\n{text}");
    }
    // Results: SQL as before, HTTP statuses, SSH exit statuses.
    line("=> SELECT 3 (3 rows, 1.0 ms)");
    line("=> status 404 (3.0 ms)");
    line("=> status 200 (12.0 ms)");
    line("=> exit 1 (40.0 ms)");
    line("reason: tools that delete need a human");
    // The terminal is summarised under its channel, not dumped.
    let summary = line("terminal: 2 output chunks");
    assert_eq!(
        summary.trim(),
        "terminal: 2 output chunks, 49 B; 1 input chunk, 11 B; replay with `interceptor sessions replay 7`"
    );
    assert!(!text.contains("cannot remove"), "{text}");
    assert!(!text.contains("#6") && !text.contains("#8"), "{text}");

    // In color, failures are red.
    let colored = sessions::timeline(&s, &one_of_each(), None, &COLOR);
    assert!(
        colored.contains("\x1b[31m=> status 404 (3.0 ms)\x1b[0m"),
        "{colored}"
    );
    assert!(
        colored.contains("\x1b[31m=> exit 1 (40.0 ms)\x1b[0m"),
        "{colored}"
    );
    assert!(!colored.contains("\x1b[31m=> status 200"), "{colored}");
}

#[test]
fn old_events_without_the_neutral_keys_still_render() {
    // Written before the keys: the action comes from `classes`, objects are unknown.
    let detail = json!({"command": "statement", "params": 0, "classes": ["delete", "read"]});
    let old = EventRow {
        statement: Some("DELETE FROM t".into()),
        decision: Some("deny".into()),
        rule: Some("no-deletes".into()),
        neutral: neutral("statement", &detail, "postgres"),
        detail,
        ..event(1, "2026-11-28T09:00:01.000Z", "statement")
    };
    let n = old.neutral.clone().expect("a statement is a command");
    assert_eq!(
        (n.protocol.as_str(), n.action.as_str(), n.objects.len()),
        ("postgres", "delete,read", 0)
    );
    let text = sessions::timeline(&session(), &[old], None, &Term::PLAIN);
    let l = text
        .lines()
        .find(|l| l.contains("DELETE FROM t"))
        .expect("line");
    assert!(l.contains(" no-deletes  delete,read  "), "{l}\n{text}");
    // No classes at all: an empty action, still a line.
    let bare = neutral("execute", &json!({}), "mysql").expect("command");
    assert_eq!(
        (bare.protocol.as_str(), bare.action.as_str()),
        ("mysql", "")
    );
    assert_eq!(neutral("session_open", &json!({}), "postgres"), None);
    assert_eq!(
        neutral("connect", &json!({}), "tcp").map(|n| n.action),
        Some("connect".to_owned())
    );
}

fn terminal_session() -> SessionRow {
    SessionRow {
        protocol: "ssh".into(),
        ended_at: Some("2026-11-28T09:00:10.000Z".into()),
        ..session()
    }
}

#[test]
fn replay_plays_the_terminal_at_its_recorded_pace() {
    let events = one_of_each();
    let s = terminal_session();
    let ms = Duration::from_millis;
    let terminal_waits = |pace: Pace, streams: Streams| -> Vec<(i64, Duration)> {
        plan(&s, &events, &pace, streams)
            .iter()
            .filter_map(|step| match &step.frame {
                Frame::Terminal { seq, .. } => Some((*seq, step.wait)),
                _ => None,
            })
            .collect()
    };
    // Each chunk at its channel's time (09:00:05) plus its offset, not its commit time
    // (09:00:09); input left out, so the second output chunk waits from the first.
    assert_eq!(
        terminal_waits(Pace::new(1.0, 60.0).expect("pace"), Streams::default()),
        vec![(6, ms(100)), (8, ms(2000))]
    );
    assert_eq!(
        terminal_waits(Pace::new(4.0, 60.0).expect("pace"), Streams::default()),
        vec![(6, ms(25)), (8, ms(500))]
    );
    assert_eq!(
        terminal_waits(
            Pace::new(1.0, 60.0).expect("pace"),
            Streams {
                input: true,
                raw: false
            }
        ),
        vec![(6, ms(100)), (7, ms(1400)), (8, ms(600))]
    );
    // No waiting at all with speed 0.
    assert!(
        terminal_waits(Pace::new(0.0, 60.0).expect("pace"), Streams::default())
            .iter()
            .all(|(_, w)| w.is_zero())
    );
    let offsets: Vec<Duration> = plan(
        &s,
        &events,
        &Pace::new(1.0, 60.0).expect("pace"),
        Streams::default(),
    )
    .iter()
    .filter(|step| matches!(step.frame, Frame::Terminal { .. }))
    .map(|step| step.offset)
    .collect();
    assert_eq!(offsets, vec![ms(5100), ms(7100)]);
}

fn played(events: &[EventRow], streams: Streams, term: &Term) -> (String, Vec<Duration>) {
    let mut out = Vec::new();
    let mut slept = Vec::new();
    replay::play(
        &terminal_session(),
        events,
        None,
        &Pace::new(1.0, 60.0).expect("pace"),
        streams,
        term,
        &mut out,
        &mut |d| slept.push(d),
    )
    .expect("play");
    (String::from_utf8(out).expect("utf-8"), slept)
}

#[test]
fn replay_writes_the_output_stream_safely_and_input_only_on_request() {
    let events = one_of_each();
    let (text, slept) = played(&events, Streams::default(), &Term::PLAIN);
    assert!(
        text.contains("replaying 5 events and 2 terminal chunks at 1x"),
        "{text}"
    );
    // The channel, then its output as it came (line ends normalised), then, on a line of its
    // own since the output stopped mid-line, the exit status where the agent got it.
    let channel = "#5 ssh_channel allow (ssh_channel-rule)\n  > rm -rf /srv\nrm: cannot remove\n";
    let stream = "'/srv': \\x1b]52;c;cHduZWQ=\\x07denied\n[+7.100s] #5 ssh_channel finished\n  => exit 1 (40.0 ms)\n[+10.000s] session ended";
    let (a, b) = (
        text.find(channel).unwrap_or_else(|| panic!("{text}")),
        text.find(stream).unwrap_or_else(|| panic!("{text}")),
    );
    assert!(a < b, "{text}");
    // What the agent typed is not shown, and the clipboard-writing sequence is not obeyed.
    assert!(!text.contains("yes-please"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
    assert_eq!(slept.iter().sum::<Duration>(), Duration::from_secs(10));

    let (with_input, _) = played(
        &events,
        Streams {
            input: true,
            raw: false,
        },
        &COLOR,
    );
    assert!(
        with_input.contains("rm: cannot remove\n\x1b[36myes-please\n\x1b[0m'/srv'"),
        "{with_input:?}"
    );
    let (raw, _) = played(
        &events,
        Streams {
            input: false,
            raw: true,
        },
        &Term::PLAIN,
    );
    assert!(
        raw.contains("rm: cannot remove\r\n'/srv': \x1b]52;c;cHduZWQ=\x07denied\n"),
        "{raw:?}"
    );
}

#[test]
fn replay_shows_the_recorded_window_size_at_its_time() {
    let mut events = one_of_each();
    // After the first output chunk: the agent's terminal was resized 1.0 s into the channel.
    events.insert(
        6,
        EventRow {
            detail: json!({"channel_event": 5, "stream": "window", "offset_ms": 1000,
                           "cols": 120, "rows": 40}),
            ..event(9, "2026-11-28T09:00:09.000Z", "terminal")
        },
    );
    // Not a chunk of text: readers that count or play text skip it.
    assert!(sessions::terminal_chunk(&events[6]).is_none());
    let s = terminal_session();
    let steps = plan(
        &s,
        &events,
        &Pace::new(1.0, 60.0).expect("pace"),
        Streams::default(),
    );
    let window = steps
        .iter()
        .find(|step| matches!(step.frame, Frame::Window { .. }))
        .expect("a window step");
    assert!(matches!(
        window.frame,
        Frame::Window {
            cols: 120,
            rows: 40
        }
    ));
    assert_eq!(window.offset, Duration::from_millis(6000));
    assert_eq!(window.wait, Duration::from_millis(900));
    let text = replay::render_step(&s, window, &Term::PLAIN);
    assert_eq!(text, "[+6.000s] window 120x40\n");
    // The channel's summary names the last size.
    let ssh = entries(&events)
        .into_iter()
        .find(|e| e.event.seq == 5)
        .expect("the ssh channel");
    let totals = ssh.terminal.expect("terminal totals");
    assert_eq!(totals.window, Some((120, 40)));
    assert!(
        totals.describe().ends_with("; window 120x40"),
        "{}",
        totals.describe()
    );
}
