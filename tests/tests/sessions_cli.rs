//! Reading the journal from the command line: `sessions list` (filters, the table),
//! `sessions show` (the timeline) and `sessions replay`, on sessions made by real clients under
//! `interceptor exec` against a real PostgreSQL, with the shipped default policy (reads
//! allowed, DDL denied, writes held for review, emails masked).
//!
//! The output is captured, so it is not a terminal: the tests check it is plain (no escape
//! sequences) and aligned; one check runs `sessions list` under `script` to get a terminal and
//! see colors, and `NO_COLOR` turn them off. The JSON contract (`--json`) is the harness's
//! (`sessions`, `session_show`), unchanged.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use interceptor_tests::*;

const RUN: Duration = Duration::from_secs(90);

/// The contacts table's emails, which the default policy's `personal-data` rule masks.
const EMAILS: [&str; 2] = ["alice.doe@example.com", "bob.roe@example.com"];
/// An email that only ever appears as a literal in a statement.
const LITERAL: &str = "carol.poe@example.com";

/// The default policy, samples of 3 rows per result, control sockets in the test's directory.
fn config(pg: &PgServer) -> TempConfig {
    let cfg = TempConfig::new("");
    let policy = format!(
        "policy = \"{}\"\n",
        workspace_root().join("policies/default.toml").display()
    );
    let text = pg_config_text(&cfg, pg.port(), &policy).replacen(
        "[state]",
        "result_sample_rows = 3\n\n[state]",
        1,
    );
    cfg.write(&format!(
        "{text}\n[approvals]\nsocket = \"{}\"\n",
        cfg.dir().join("control.sock").display()
    ));
    cfg
}

/// `psql -f FILE` (no ON_ERROR_STOP: a denied statement does not end the session) as argv for
/// exec. The statements go through a file, not `-c`, so they are not on the command line the
/// journal records with the session (which is not masked). psql sends each statement with
/// its `;`, so that is how the journal shows them.
fn psql_argv(cfg: &TempConfig, pg: &PgServer, name: &str, statements: &[&str]) -> Vec<String> {
    let file = cfg.dir().join(format!("{name}.sql"));
    let sql: String = statements.iter().map(|s| format!("{s};\n")).collect();
    std::fs::write(&file, sql).expect("write the SQL file");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod the SQL file");
    vec![
        psql_bin().display().to_string(),
        "-X".to_owned(),
        "-A".to_owned(),
        "-t".to_owned(),
        "-f".to_owned(),
        file.display().to_string(),
        format!(
            "host={} port={} dbname=appdb user=agent sslmode=disable connect_timeout=10",
            pg_dial_host(),
            pg.port()
        ),
    ]
}

/// `interceptor --config CFG ARGS…`, to completion.
fn cli(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(args);
    run_command(cmd, Duration::from_secs(30))
}

fn cli_ok(cfg: &TempConfig, args: &[&str]) -> String {
    let out = cli(cfg, args);
    assert!(out.success(), "{}", out.describe());
    out.stdout
}

/// Ids from `sessions list --json ARGS…`.
fn listed(cfg: &TempConfig, args: &[&str]) -> Vec<i64> {
    let mut all = vec!["sessions", "list", "--json"];
    all.extend_from_slice(args);
    let text = cli_ok(cfg, &all);
    let rows: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("sessions list --json: {e}\n{text}"));
    rows.as_array()
        .unwrap_or_else(|| panic!("not an array: {text}"))
        .iter()
        .map(|s| s["id"].as_i64().unwrap_or_else(|| panic!("id: {s}")))
        .collect()
}

/// Runs `argv` under exec (as `user`) and returns the one new, finished session it made.
fn new_session(cfg: &TempConfig, user: Option<&str>, argv: &[String]) -> (Value, Output) {
    // No journal yet before the first run.
    let before: Vec<i64> = try_sessions(cfg, None)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["id"].as_i64())
        .collect();
    let out = run_exec_timeout(cfg, user, argv, RUN);
    let rows = wait_sessions(cfg, None, Duration::from_secs(15), |rows| {
        rows.iter().all(session_finished) && rows.len() > before.len()
    });
    let new: Vec<Value> = rows
        .into_iter()
        .filter(|s| !s["id"].as_i64().is_some_and(|id| before.contains(&id)))
        .collect();
    assert_eq!(
        new.len(),
        1,
        "one new session\n{}\n{}",
        pretty_rows(&new),
        out.describe()
    );
    assert!(session_finished(&new[0]), "{}", pretty(&new[0]));
    (new[0].clone(), out)
}

fn id(s: &Value) -> i64 {
    s["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("id: {}", pretty(s)))
}

fn text(s: &Value, key: &str) -> String {
    s[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key}: {}", pretty(s)))
        .to_owned()
}

/// The line of `output` containing `needle`.
fn line_with<'a>(output: &'a str, needle: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{output}"))
}

/// Each needle appears in `output`, in this order.
fn assert_in_order(output: &str, needles: &[&str]) {
    let mut from = 0;
    for n in needles {
        match output[from..].find(n) {
            Some(i) => from += i + n.len(),
            None => panic!("{n:?} missing or out of order in\n{output}"),
        }
    }
}

/// Every column of a table starts at the same character on every line: two spaces before
/// it, something (not a space) at it.
fn assert_aligned(table: &str) {
    let lines: Vec<Vec<char>> = table.lines().map(|l| l.chars().collect()).collect();
    let header = &lines[0];
    let starts: Vec<usize> = (1..header.len())
        .filter(|&i| header[i] != ' ' && header[i - 1] == ' ')
        .collect();
    assert!(starts.len() >= 10, "header: {table}");
    for line in &lines[1..] {
        for &s in &starts {
            assert!(
                line.len() > s && line[s - 1] == ' ' && line[s - 2] == ' ' && line[s] != ' ',
                "column at {s} misaligned in {:?}\n{table}",
                line.iter().collect::<String>()
            );
        }
    }
}

#[test]
fn list_filters_the_table_the_timeline_and_the_replay() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        &format!(
            "CREATE TABLE contacts (id int, email text);
             INSERT INTO contacts VALUES (1, '{}'), (2, '{}');
             GRANT ALL ON contacts TO PUBLIC",
            EMAILS[0], EMAILS[1]
        ),
    );
    let cfg = config(&pg);
    let echo = EchoServer::start("127.0.0.3");

    // A: reads (one of them masked), a DROP the policy denies, a literal email.
    let select = "SELECT id, email FROM contacts ORDER BY id";
    let literal = format!("SELECT '{LITERAL}' AS literal");
    let (a, out_a) = new_session(
        &cfg,
        None,
        &psql_argv(
            &cfg,
            &pg,
            "a",
            &[
                select,
                "DROP TABLE contacts",
                &literal,
                "SELECT count(*) FROM contacts",
            ],
        ),
    );
    assert!(
        out_a.stderr.contains("42501") || out_a.stderr.contains("not allowed"),
        "{}",
        out_a.describe()
    );
    for raw in EMAILS.iter().chain([&LITERAL]) {
        assert!(
            !out_a.stdout.contains(raw),
            "the agent saw {raw}\n{}",
            out_a.describe()
        );
    }
    assert_eq!(
        pg.psql_db("appdb", "SELECT count(*) FROM contacts"),
        "2",
        "DROP was refused"
    );
    // B: another user, reads only.
    let (b, out_b) = new_session(
        &cfg,
        Some("nobody"),
        &psql_argv(&cfg, &pg, "b", &["SELECT 1"]),
    );
    assert!(out_b.success(), "{}", out_b.describe());
    // C: plain TCP, no target, no commands.
    let (c, out_c) = new_session(
        &cfg,
        None,
        &python(
            "r = echo_once(socket.AF_INET, (sys.argv[1], int(sys.argv[2])), b'hello')\nreport(**r)",
            &["127.0.0.3".to_owned(), echo.port().to_string()],
        ),
    );
    assert!(out_c.success(), "{}", out_c.describe());
    let (a_id, b_id, c_id) = (id(&a), id(&b), id(&c));
    assert_eq!(b["uid"], json!(65534), "{}", pretty(&b));
    assert_eq!(c["target"], Value::Null, "{}", pretty(&c));

    // --- list filters (JSON) ------------------------------------------------------------------
    assert_eq!(listed(&cfg, &[]), vec![a_id, b_id, c_id]);
    assert_eq!(listed(&cfg, &["--target", "appdb"]), vec![a_id, b_id]);
    assert_eq!(listed(&cfg, &["--user", "nobody"]), vec![b_id]);
    assert_eq!(listed(&cfg, &["--user", "65534"]), vec![b_id]);
    assert_eq!(listed(&cfg, &["--run", &text(&a, "run_id")]), vec![a_id]);
    assert_eq!(listed(&cfg, &["--decision", "deny"]), vec![a_id]);
    assert_eq!(listed(&cfg, &["--decision", "review"]), Vec::<i64>::new());
    let allowed = listed(&cfg, &["--decision", "allow"]);
    assert!(
        allowed.contains(&a_id) && allowed.contains(&b_id),
        "{allowed:?}"
    );
    assert_eq!(
        listed(&cfg, &["--since", &text(&b, "started_at")]),
        vec![b_id, c_id]
    );
    assert_eq!(
        listed(&cfg, &["--until", &text(&a, "started_at")]),
        vec![a_id]
    );
    assert_eq!(
        listed(
            &cfg,
            &[
                "--since",
                &text(&a, "started_at"),
                "--until",
                &text(&b, "started_at"),
                "--target",
                "appdb"
            ]
        ),
        vec![a_id, b_id]
    );
    // A day prefix and a duration ago cover all three; a later day none.
    let day = text(&a, "started_at")[..10].to_owned();
    assert_eq!(listed(&cfg, &["--since", &day, "--until", &day]).len(), 3);
    assert_eq!(listed(&cfg, &["--since", "1h"]).len(), 3);
    assert_eq!(listed(&cfg, &["--since", "2999-01-01"]), Vec::<i64>::new());
    let bad = cli(&cfg, &["sessions", "list", "--since", "last tuesday"]);
    assert!(
        !bad.success() && bad.stderr.contains("not a time"),
        "{}",
        bad.describe()
    );
    let bad = cli(&cfg, &["sessions", "list", "--decision", "maybe"]);
    assert!(!bad.success(), "{}", bad.describe());

    // --- the table ----------------------------------------------------------------------------
    let table = cli_ok(&cfg, &["sessions", "list"]);
    assert!(
        !table.contains('\x1b'),
        "escape sequences in captured output:\n{table}"
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("ID  STARTED"), "{table}");
    assert_aligned(&table);
    assert!(
        line_with(&table, &text(&a, "started_at")).contains("4 (1 deny)"),
        "{table}"
    );
    assert!(line_with(&table, "127.0.0.3:").contains(" tcp "), "{table}");
    let filtered = cli_ok(&cfg, &["sessions", "list", "--decision", "deny"]);
    assert_eq!(filtered.lines().count(), 2, "{filtered}");
    // On a terminal (script gives it one), decisions are colored, unless NO_COLOR says not to.
    let on_tty = |no_color: Option<&str>| {
        let line = format!(
            "{} --config {} sessions list --decision deny",
            interceptor_bin().display(),
            cfg.path.display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"]).env("COLUMNS", "250");
        match no_color {
            Some(v) => cmd.env("NO_COLOR", v),
            None => cmd.env_remove("NO_COLOR"),
        };
        let out = run_command(cmd, Duration::from_secs(30));
        assert!(out.success(), "{}", out.describe());
        out.stdout
    };
    let colored = on_tty(None);
    assert!(colored.contains("\x1b[31m4 (1 deny)\x1b[0m"), "{colored:?}");
    let no_color = on_tty(Some("1"));
    assert!(
        !no_color.contains('\x1b') && no_color.contains("4 (1 deny)"),
        "{no_color:?}"
    );

    // --- show: the timeline -------------------------------------------------------------------
    let show = cli_ok(&cfg, &["sessions", "show", &a_id.to_string()]);
    assert!(!show.contains('\x1b'), "{show}");
    for raw in EMAILS.iter().chain([&LITERAL]) {
        assert!(!show.contains(raw), "show prints {raw}:\n{show}");
    }
    assert!(
        show.starts_with(&format!("session {a_id}  run {}", text(&a, "run_id"))),
        "{show}"
    );
    assert!(show.contains("commands: 4 (3 allow, 1 deny)"), "{show}");
    let read = line_with(&show, select);
    assert!(
        read.contains(" statement ") && read.contains(" allow ") && read.contains(" reads "),
        "{read}"
    );
    let drop = line_with(&show, "DROP TABLE contacts");
    assert!(
        drop.contains(" deny ") && drop.contains(" no-schema-changes "),
        "{drop}"
    );
    assert_in_order(
        &show,
        &[
            select,
            "=> SELECT 2 (2 rows,",
            "masked: detector:email 2",
            "DROP TABLE contacts",
            "reason: schema changes are not allowed for agents",
            "SELECT '",
            "masked in the statement: detector:email 1",
            "masked: detector:email 1",
            "SELECT count(*) FROM contacts",
            "=> SELECT 1 (1 row,",
        ],
    );
    // Statements, notes and the header's WHAT all start in one column.
    let what = line_with(&show, "SEQ").find("WHAT").expect("WHAT");
    for needle in [
        select,
        "DROP TABLE contacts",
        "masked: detector:email 2",
        "=> SELECT 2",
    ] {
        assert_eq!(
            line_with(&show, needle).find(needle),
            Some(what),
            "{needle}\n{show}"
        );
    }
    // The JSON contract is unchanged: {session, events}, events with the known fields.
    let doc = session_show(&cfg, a_id);
    assert_eq!(doc["session"]["id"], json!(a_id));
    let statements = events_of_kind(&doc, "statement");
    assert_eq!(statements.len(), 4, "{}", pretty(&doc));
    for key in [
        "seq",
        "ts",
        "kind",
        "statement",
        "decision",
        "rule",
        "result",
        "detail",
    ] {
        assert!(
            statements[0].get(key).is_some(),
            "no {key}: {}",
            pretty(&statements[0])
        );
    }
    let sample = &statements[0]["result"]["sample"];
    assert_eq!(
        sample.as_array().map(Vec::len),
        Some(2),
        "{}",
        pretty(&statements[0])
    );

    // --- replay -------------------------------------------------------------------------------
    let started = Instant::now();
    let replay = cli_ok(
        &cfg,
        &["sessions", "replay", &a_id.to_string(), "--speed", "0"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "--speed 0 waited"
    );
    assert!(!replay.contains('\x1b'), "{replay}");
    for raw in EMAILS.iter().chain([&LITERAL]) {
        assert!(!replay.contains(raw), "replay prints {raw}:\n{replay}");
    }
    // The sample rows as the agent received them (masked), from the journal's own sample.
    let masked_email = sample[0][1].as_str().expect("sample email").to_owned();
    assert_in_order(
        &replay,
        &[
            "replaying",
            "without pauses",
            &format!("statement allow (reads)\n  > {select};\n"),
            "=> SELECT 2 (2 rows,",
            "masked: detector:email 2",
            &format!("  | 1  {masked_email}"),
            "statement deny (no-schema-changes)\n  > DROP TABLE contacts;\n",
            "reason: schema changes are not allowed for agents",
            "> SELECT '",
            "> SELECT count(*) FROM contacts",
            "  | 2\n",
            // The end: a session_close event, or (older journals) the session row.
            "closed, up ",
        ],
    );
    let bad = cli(
        &cfg,
        &["sessions", "replay", &a_id.to_string(), "--speed", "-1"],
    );
    assert!(
        !bad.success() && bad.stderr.contains("--speed"),
        "{}",
        bad.describe()
    );
    let bad = cli(&cfg, &["sessions", "replay", "999999"]);
    assert!(
        !bad.success() && bad.stderr.contains("no session 999999"),
        "{}",
        bad.describe()
    );
    // Paced and capped: every pause at most 50 ms, so the whole replay stays short.
    let started = Instant::now();
    cli_ok(
        &cfg,
        &[
            "sessions",
            "replay",
            &a_id.to_string(),
            "--speed",
            "1",
            "--max-wait",
            "0.05",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Waits for one pending approval and returns its id.
fn pending_approval(cfg: &TempConfig) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(cfg, &["approvals", "list", "--json"]);
        let list: Option<Vec<Value>> = serde_json::from_str::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned());
        if let Some(id) =
            list.and_then(|l| l.first().and_then(|r| r["id"].as_str().map(str::to_owned)))
        {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "no pending approval: {}",
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_approved_hold_shows_who_when_and_scope() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE acct (id int, bal int); INSERT INTO acct VALUES (1, 100); GRANT ALL ON acct TO PUBLIC",
    );
    let cfg = config(&pg);
    let update = "UPDATE acct SET bal = bal + 1 WHERE id = 1";
    // The agent runs as nobody, so root may approve.
    let agent = Spawned::spawn(
        exec_cmd(
            &cfg,
            Some("nobody"),
            &psql_argv(&cfg, &pg, "update", &[update]),
        ),
        "agent",
        false,
    );
    let approval = pending_approval(&cfg);
    let out = cli(
        &cfg,
        &[
            "approvals",
            "approve",
            &approval,
            "--scope",
            "run",
            "--reason",
            "looks right",
        ],
    );
    assert!(out.success(), "{}", out.describe());
    let done = agent.wait(Duration::from_secs(60));
    assert!(done.success(), "{}", done.describe());
    assert_eq!(pg.psql_db("appdb", "SELECT bal FROM acct"), "101");

    let rows = wait_sessions(&cfg, None, Duration::from_secs(15), |rows| {
        !rows.is_empty() && rows.iter().all(session_finished)
    });
    assert_eq!(rows.len(), 1, "{}", pretty_rows(&rows));
    let sid = id(&rows[0]);
    assert_eq!(listed(&cfg, &["--decision", "review"]), vec![sid]);
    // The approver's allow counts as a decision too.
    assert_eq!(listed(&cfg, &["--decision", "allow"]), vec![sid]);
    assert_eq!(listed(&cfg, &["--decision", "deny"]), Vec::<i64>::new());

    let show = cli_ok(&cfg, &["sessions", "show", &sid.to_string()]);
    let held = line_with(&show, update);
    assert!(
        held.contains(" review ") && held.contains(" writes-need-review "),
        "{held}"
    );
    let seq = held.split_whitespace().next().expect("seq").to_owned();
    assert!(seq.starts_with('#'), "{held}");
    line_with(&show, &format!("held for approval {approval} ({seq})"));
    let decided = line_with(
        &show,
        &format!("approved {approval} ({seq}) by root (uid 0), scope run"),
    );
    assert!(
        decided.contains(" approval_decision ") && decided.contains(" allow "),
        "{decided}"
    );
    // When: the decision's own time, after the hold's.
    let time = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    assert!(time(decided) >= time(held), "{show}");
    assert_in_order(
        &show,
        &[
            update,
            "reason: data changes need a human's approval",
            "=> UPDATE 1 (1 row,",
            "approved",
            "reason: looks right",
        ],
    );

    let replay = cli_ok(
        &cfg,
        &["sessions", "replay", &sid.to_string(), "--speed", "0"],
    );
    assert_in_order(
        &replay,
        &[
            &format!("> {update};\n"),
            "(held: waiting for an approver)",
            &format!("approved {approval} ({seq}) by root (uid 0), scope run"),
            "reason: looks right",
            &format!("result of {seq}:"),
            "=> UPDATE 1 (1 row,",
        ],
    );
}
