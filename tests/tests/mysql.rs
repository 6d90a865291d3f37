//! The MySQL/MariaDB gateway (`protocol = "mysql"`) against a real MariaDB ([`server`]):
//! PyMySQL, mysql-connector-python (prepared cursors) and the `mariadb` CLI run under
//! `interceptor exec` and dial `127.0.0.2:<port>`, where nothing listens; the target relays to
//! the server on `127.0.0.1:<port>` and logs in there as `app` with the password from
//! `[target.credentials]`, whatever the agent sent.

use std::time::{Duration, Instant};

use interceptor_tests::{mysql::*, *};

const RUN: Duration = Duration::from_secs(90);

/// Python helpers: `connect(**kw)` (PyMySQL, user agent, any password, autocommit) and
/// `run(cur, sql)` → {ok, rows} or {ok: false, code, message}.
const MY_PRELUDE: &str = r#"
import pymysql
H, P = ARGS["host"], int(ARGS["port"])
def connect(**kw):
    base = dict(host=H, port=P, user="agent", password="anything", database="appdb",
                connect_timeout=10, autocommit=True)
    base.update(kw)
    return pymysql.connect(**base)
def rows_of(cur):
    return [[None if v is None else str(v) for v in r] for r in cur.fetchall()] if cur.description else None
def run(cur, sql, args=None):
    try:
        cur.execute(sql, args)
        return {"ok": True, "rows": rows_of(cur)}
    except Exception as e:
        code = e.args[0] if e.args and isinstance(e.args[0], int) else getattr(e, "errno", None)
        return {"ok": False, "code": code, "message": str(e)}
"#;

fn args(server: &MyServer) -> Vec<String> {
    vec![json!({ "host": my_dial_host(), "port": server.port() }).to_string()]
}

/// Runs a PyMySQL/mysql-connector client under exec; returns its JSON report.
fn client(cfg: &TempConfig, server: &MyServer, code: &str) -> Value {
    let out = run_venv_python_exec(
        cfg,
        None,
        &format!("{MY_PRELUDE}\n{code}"),
        &args(server),
        RUN,
    );
    assert!(
        out.success(),
        "client under exec failed\n{}",
        out.describe()
    );
    out.json()
}

/// A config for `server` with the shipped default policy (reads allowed, writes reviewed,
/// DDL/DCL/file access denied) and an approvals socket in the test's dir.
fn default_config(server: &MyServer) -> TempConfig {
    default_config_reviewing_for(server, 300)
}

/// [`default_config`] with the policy's review timeouts set to `secs`.
fn default_config_reviewing_for(server: &MyServer, secs: u64) -> TempConfig {
    let text = std::fs::read_to_string(workspace_root().join("policies/default.toml"))
        .expect("default policy")
        .replace(
            "review_timeout_secs = 300",
            &format!("review_timeout_secs = {secs}"),
        );
    my_config(
        server,
        Some(&text),
        "[approvals]\nsocket = \"{dir}/control.sock\"\n",
    )
}

/// The `mariadb` CLI as an agent (user `agent`, no password) running `sql` on appdb.
fn cli_argv(server: &MyServer, sql: &str) -> Vec<String> {
    [
        "mariadb",
        "--no-defaults",
        "--protocol=tcp",
        "-h",
        my_dial_host(),
        "-P",
        &server.port().to_string(),
        "-u",
        "agent",
        "-N",
        "-B",
        "-e",
        sql,
        "appdb",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The run's sessions once finished.
fn finished(cfg: &TempConfig) -> Vec<Value> {
    wait_sessions(cfg, None, Duration::from_secs(15), |rows| {
        !rows.is_empty() && rows.iter().all(session_finished)
    })
}

fn statements(cfg: &TempConfig) -> Vec<Value> {
    events_in(cfg, &finished(cfg), "statement")
}

fn assert_refused(r: &Value, what: &str, rule: &str) {
    assert_eq!(r["ok"], json!(false), "{what}: {}", pretty(r));
    assert_eq!(r["code"], json!(1227), "{what}: {}", pretty(r));
    let message = r["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(rule),
        "{what}: rule {rule} named: {message}"
    );
}

#[test]
fn a_select_runs_with_the_injected_login_whatever_the_agent_sends() {
    require_root!();
    let server = server();
    let cfg = my_config(server, None, "");
    let r = client(
        &cfg,
        server,
        r#"
out = {}
for name, kw in [("any", {}), ("none", {"password": ""}), ("other_user", {"user": "root", "password": "x"})]:
    c = connect(**kw)
    cur = c.cursor()
    out[name] = run(cur, "SELECT CURRENT_USER(), 1 + 1")
    c.close()
report(**out)
"#,
    );
    for name in ["any", "none", "other_user"] {
        assert_eq!(
            r[name]["rows"],
            json!([["app@%", "2"]]),
            "{name}: {}",
            pretty(&r)
        );
    }
    let cli = run_exec_timeout(&cfg, None, &cli_argv(server, "SELECT 40 + 2"), RUN);
    assert!(cli.success(), "{}", cli.describe());
    assert_eq!(cli.stdout.trim(), "42", "{}", cli.describe());
    let sessions = finished(&cfg);
    assert!(
        sessions.iter().all(|s| s["protocol"] == json!("mysql")),
        "{}",
        pretty_rows(&sessions)
    );
    let texts: Vec<String> = statements(&cfg)
        .iter()
        .map(|e| e["statement"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("SELECT CURRENT_USER()")),
        "{texts:?}"
    );
    assert!(
        !bytes_contain(&journal_bytes(&cfg), APP_PASSWORD.as_bytes()),
        "the upstream password is in the journal"
    );
}

#[test]
fn refusals_are_1227_and_leave_the_connection_usable_and_nothing_done() {
    require_root!();
    let server = server();
    server.root(
        "CREATE TABLE IF NOT EXISTS appdb.keep_me (id INT); INSERT INTO appdb.keep_me VALUES (1)",
    );
    let cfg = default_config(server);
    let outfile = server.files_dir().join("out.txt");
    let infile = cfg.dir().join("in.csv");
    std::fs::write(&infile, "7\n").expect("infile");
    let code = format!(
        r#"
import pymysql.constants.CLIENT as CF
c = connect(client_flag=CF.MULTI_STATEMENTS, local_infile=True)
cur = c.cursor()
out = {{}}
out["drop"] = run(cur, "DROP TABLE keep_me")
out["after_drop"] = run(cur, "SELECT COUNT(*) FROM keep_me")
out["outfile"] = run(cur, "SELECT * FROM keep_me INTO OUTFILE '{outfile}'")
out["load_local"] = run(cur, "LOAD DATA LOCAL INFILE '{infile}' INTO TABLE keep_me")
out["names"] = run(cur, "SET NAMES gbk")
out["sql_mode"] = run(cur, "SET sql_mode = 'NO_BACKSLASH_ESCAPES'")
out["create_user"] = run(cur, "CREATE USER evil IDENTIFIED BY 'x'")
out["grant"] = run(cur, "GRANT ALL ON *.* TO agent")
out["smuggle"] = run(cur, "SELECT 1; DROP TABLE keep_me")
out["comment"] = run(cur, "SELECT 1 /*!99999 , (SELECT 2) */")
out["last"] = run(cur, "SELECT id FROM keep_me")
report(**out)
"#,
        outfile = outfile.display(),
        infile = infile.display(),
    );
    let r = client(&cfg, server, &code);
    assert_refused(&r["drop"], "DROP TABLE", "no-schema-changes");
    assert!(
        r["drop"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("journal event")),
        "{}",
        pretty(&r)
    );
    assert_eq!(r["after_drop"]["rows"], json!([["1"]]), "{}", pretty(&r));
    assert_refused(&r["outfile"], "INTO OUTFILE", "unanalysable");
    assert_refused(&r["load_local"], "LOAD DATA LOCAL", "unanalysable");
    assert_refused(&r["names"], "SET NAMES gbk", "gate:pinned-setting");
    assert_refused(&r["sql_mode"], "SET sql_mode", "gate:pinned-setting");
    assert_refused(&r["create_user"], "CREATE USER", "no-privilege-changes");
    assert_refused(&r["grant"], "GRANT", "no-privilege-changes");
    assert_refused(&r["smuggle"], "multi-statement", "no-schema-changes");
    assert_refused(
        &r["comment"],
        "executable comment",
        "gate:parser-disagreement",
    );
    assert_eq!(r["last"]["rows"], json!([["1"]]), "{}", pretty(&r));
    assert!(!outfile.exists(), "INTO OUTFILE wrote a file");
    assert_eq!(
        server.root("SELECT COUNT(*) FROM appdb.keep_me").trim(),
        "1"
    );
    assert_eq!(
        server
            .root("SELECT COUNT(*) FROM mysql.user WHERE user = 'evil'")
            .trim(),
        "0"
    );
}

fn approvals(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("approvals").args(args);
    run_command(cmd, Duration::from_secs(30))
}

/// Waits for one pending request and returns its id.
fn pending_id(cfg: &TempConfig) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = approvals(cfg, &["list", "--json"]);
        let list: Option<Vec<Value>> = serde_json::from_str::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned());
        if let Some(first) = list.and_then(|l| l.into_iter().next()) {
            return first["id"].as_str().expect("id").to_owned();
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
fn a_held_insert_waits_denied_leaves_no_row_and_approved_runs_once() {
    require_root!();
    let server = server();
    server.root("CREATE TABLE IF NOT EXISTS appdb.held (v INT)");
    let cfg = default_config(server);
    let count = |v: u32| {
        server
            .root(&format!("SELECT COUNT(*) FROM appdb.held WHERE v = {v}"))
            .trim()
            .to_owned()
    };
    // Denied: the agent (another uid than the approver) gets 1227, and nothing ran.
    let argv = cli_argv(server, "INSERT INTO held (v) VALUES (1)");
    let agent = Spawned::spawn(exec_cmd(&cfg, Some("nobody"), &argv), "agent", false);
    let id = pending_id(&cfg);
    assert_eq!(count(1), "0", "held: nothing ran yet");
    let out = approvals(&cfg, &["deny", &id, "--reason", "no"]);
    assert!(out.success(), "{}", out.describe());
    let done = agent.wait(Duration::from_secs(30));
    assert!(!done.success(), "{}", done.describe());
    assert!(done.stderr.contains("1227"), "{}", done.describe());
    assert_eq!(count(1), "0");
    // Approved: it runs exactly once.
    let argv = cli_argv(server, "INSERT INTO held (v) VALUES (2)");
    let agent = Spawned::spawn(exec_cmd(&cfg, Some("nobody"), &argv), "agent", false);
    let id = pending_id(&cfg);
    let out = approvals(&cfg, &["approve", &id]);
    assert!(out.success(), "{}", out.describe());
    let done = agent.wait(Duration::from_secs(30));
    assert!(done.success(), "{}", done.describe());
    assert_eq!(count(2), "1", "the insert ran exactly once");
}

#[test]
fn an_email_column_is_masked_in_text_rows() {
    require_root!();
    let server = server();
    server.root(
        "CREATE TABLE IF NOT EXISTS appdb.customers (id INT, email VARCHAR(100), note TEXT); \
         DELETE FROM appdb.customers; \
         INSERT INTO appdb.customers VALUES (1, 'alice@example.com', 'call bob@example.org'), (2, NULL, NULL)",
    );
    let policy = String::from(
        "[[rule]]\nname = \"all\"\ndecision = \"allow\"\n\n\
         [[mask]]\nname = \"email-column\"\ncolumns = [\"customers.email\"]\nstrategy = \"redact\"\n\n\
         [[mask]]\nname = \"pii\"\ndetectors = [\"email\"]\nstrategy = \"redact\"\n",
    );
    let cfg = my_config(server, Some(&policy), "");
    let r = client(
        &cfg,
        server,
        r#"
import mysql.connector
c = connect()
cur = c.cursor()
out = {"rows": run(cur, "SELECT id, email, note FROM customers ORDER BY id")}
m = mysql.connector.connect(host=H, port=P, user="agent", password="x", database="appdb",
                            use_pure=True, autocommit=True, connection_timeout=10)
pc = m.cursor(prepared=True)
pc.execute("SELECT id, email, note FROM customers WHERE id > %s ORDER BY id", (0,))
out["binary"] = [[None if v is None else (v.decode() if isinstance(v, (bytes, bytearray)) else str(v)) for v in r] for r in pc.fetchall()]
report(**out)
"#,
    );
    let binary = r["binary"].to_string();
    assert!(!binary.contains("alice@example.com"), "{}", pretty(&r));
    assert!(!binary.contains("bob@example.org"), "{}", pretty(&r));
    assert_eq!(r["binary"][0][0], json!("1"), "{}", pretty(&r));
    assert_eq!(r["binary"][1], json!(["2", null, null]), "{}", pretty(&r));
    let rows = &r["rows"]["rows"];
    let text = rows.to_string();
    assert!(!text.contains("alice@example.com"), "{}", pretty(&r));
    assert!(!text.contains("bob@example.org"), "{}", pretty(&r));
    assert_eq!(rows[0][0], json!("1"), "{}", pretty(&r));
    assert_eq!(
        rows[1],
        json!(["2", null, null]),
        "NULLs stay NULL: {}",
        pretty(&r)
    );
}

#[test]
fn prepared_statements_through_mysql_connector_are_judged() {
    require_root!();
    let server = server();
    server.root(
        "CREATE TABLE IF NOT EXISTS appdb.prep (id INT); DELETE FROM appdb.prep; \
         INSERT INTO appdb.prep VALUES (1), (2)",
    );
    let cfg = default_config(server);
    let r = client(
        &cfg,
        server,
        r#"
import mysql.connector
c = mysql.connector.connect(host=H, port=P, user="agent", password="x", database="appdb",
                            use_pure=True, autocommit=True, connection_timeout=10)
cur = c.cursor(prepared=True)
out = {}
try:
    cur.execute("SELECT id FROM prep WHERE id > %s ORDER BY id", (0,))
    out["select"] = {"ok": True, "rows": [[str(v) for v in r] for r in cur.fetchall()]}
    cur.execute("SELECT id FROM prep WHERE id > %s ORDER BY id", (1,))
    out["again"] = {"ok": True, "rows": [[str(v) for v in r] for r in cur.fetchall()]}
except Exception as e:
    out["select"] = {"ok": False, "message": str(e)}
try:
    cur.execute("DROP TABLE prep")
    out["drop"] = {"ok": True}
except Exception as e:
    out["drop"] = {"ok": False, "code": getattr(e, "errno", None), "message": str(e)}
try:
    c.cmd_stmt_execute(424242)
    out["desync"] = {"ok": True}
except Exception as e:
    out["desync"] = {"ok": False, "code": getattr(e, "errno", None), "message": str(e)}
out["after"] = [list(r) for r in (lambda k: (k.execute("SELECT 7"), k.fetchall())[1])(c.cursor())]
report(**out)
"#,
    );
    assert_eq!(r["select"]["rows"], json!([["1"], ["2"]]), "{}", pretty(&r));
    assert_eq!(r["again"]["rows"], json!([["2"]]), "{}", pretty(&r));
    assert_refused(&r["drop"], "prepared DROP", "no-schema-changes");
    assert_eq!(
        r["desync"]["code"],
        json!(1243),
        "unknown id: {}",
        pretty(&r)
    );
    assert_eq!(r["after"], json!([[7]]), "still usable: {}", pretty(&r));
    assert_eq!(server.root("SELECT COUNT(*) FROM appdb.prep").trim(), "2");
    let kinds: Vec<Value> = statements(&cfg)
        .iter()
        .map(|e| e["detail"]["command"].clone())
        .collect();
    assert!(kinds.contains(&json!("prepare")), "{kinds:?}");
}

#[test]
fn sqlalchemy_reads_under_the_default_policy_and_a_refusal_leaves_the_engine_usable() {
    require_root!();
    let server = server();
    server.root(
        "CREATE TABLE IF NOT EXISTS appdb.sa_items (id INT, name VARCHAR(20)); \
         DELETE FROM appdb.sa_items; INSERT INTO appdb.sa_items VALUES (1, 'one'), (2, 'two')",
    );
    let cfg = default_config(server);
    // SQLAlchemy's MySQL dialect asks the server about itself on its first connection
    // (version, sql_mode, lower_case_table_names, isolation level): those must pass too.
    let r = client(
        &cfg,
        server,
        r#"
import sqlalchemy as sa
e = sa.create_engine(f"mysql+pymysql://agent:anything@{H}:{P}/appdb", pool_size=1, max_overflow=0)
out = {}
with e.connect() as c:
    out["rows"] = [[str(v) for v in r] for r in c.execute(sa.text("SELECT id, name FROM sa_items ORDER BY id"))]
    try:
        c.execute(sa.text("DROP TABLE sa_items"))
        out["drop"] = {"ok": True}
    except sa.exc.DBAPIError as ex:
        out["drop"] = {"ok": False, "code": ex.orig.args[0], "message": str(ex.orig)}
    c.rollback()
    out["bound"] = [[str(v) for v in r] for r in c.execute(sa.text("SELECT id FROM sa_items WHERE id > :n"), {"n": 1})]
items = sa.Table("sa_items", sa.MetaData(), autoload_with=e)
with e.connect() as c:
    out["reflected"] = sorted(col.name for col in items.columns)
    out["core"] = [[str(v) for v in r] for r in c.execute(sa.select(items.c.name).where(items.c.id == 2))]
report(**out)
"#,
    );
    assert_eq!(
        r["rows"],
        json!([["1", "one"], ["2", "two"]]),
        "{}",
        pretty(&r)
    );
    assert_refused(
        &r["drop"],
        "DROP TABLE through SQLAlchemy",
        "no-schema-changes",
    );
    assert_eq!(r["bound"], json!([["2"]]), "{}", pretty(&r));
    assert_eq!(r["reflected"], json!(["id", "name"]), "{}", pretty(&r));
    assert_eq!(r["core"], json!([["two"]]), "{}", pretty(&r));
    assert_eq!(
        server.root("SELECT COUNT(*) FROM appdb.sa_items").trim(),
        "2"
    );
}

#[test]
fn bad_packets_end_only_their_own_session() {
    require_root!();
    let server = server();
    let cfg = default_config(server);
    // Three broken clients beside a working PyMySQL connection: a handshake answer cut short,
    // a packet header that promises more than the gateway takes and then stops, and a
    // command packet out of sequence after a good login. Each must be ended (an ERR packet or
    // a close, never a hang); the good connection and a new one keep working.
    let r = client(
        &cfg,
        server,
        r#"
import socket
good = connect()
gc = good.cursor()
out = {"before": run(gc, "SELECT 1")}
def ended(sock):
    sock.settimeout(15)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return {"closed": True, "data": data.hex()}
            data += chunk
    except socket.timeout:
        return {"closed": False, "data": data.hex()}
    except OSError as e:
        return {"closed": True, "data": data.hex(), "error": str(e)}
s = socket.create_connection((H, P), timeout=10)
s.recv(65536)
s.sendall(b"\x05\x00\x00\x01" + b"\xff\xff\xff\xff\x00")
out["short_handshake"] = ended(s)
s = socket.create_connection((H, P), timeout=10)
s.recv(65536)
s.sendall(b"\xff\xff\xff\x01" + b"\x00" * 100)
s.shutdown(socket.SHUT_WR)
out["huge_header"] = ended(s)
raw = connect()
sock = raw._sock
sock.sendall(b"\x09\x00\x00\x07" + b"\x03SELECT 9")
out["out_of_sequence"] = ended(sock)
out["after"] = run(gc, "SELECT 2")
fresh = connect()
out["fresh"] = run(fresh.cursor(), "SELECT 3")
fresh.close()
good.close()
report(**out)
"#,
    );
    for bad in ["short_handshake", "huge_header", "out_of_sequence"] {
        assert_eq!(r[bad]["closed"], json!(true), "{bad}: {}", pretty(&r));
        let data = r[bad]["data"].as_str().unwrap_or_default();
        // Nothing, or one ERR packet (its payload starts with 0xff) before the close.
        assert!(
            data.is_empty() || data.get(8..10) == Some("ff"),
            "{bad}: {}",
            pretty(&r)
        );
    }
    assert_eq!(r["before"]["rows"], json!([["1"]]), "{}", pretty(&r));
    assert_eq!(r["after"]["rows"], json!([["2"]]), "{}", pretty(&r));
    assert_eq!(r["fresh"]["rows"], json!([["3"]]), "{}", pretty(&r));
    let outcomes: Vec<String> = finished(&cfg)
        .iter()
        .map(|s| s["outcome"].as_str().unwrap_or_default().to_owned())
        .collect();
    // The three broken sessions end in error; the two that quit cleanly are closed.
    let mut outcomes = outcomes;
    outcomes.sort();
    assert_eq!(
        outcomes,
        ["closed", "closed", "error", "error", "error"],
        "{outcomes:?}"
    );
}

#[test]
fn a_held_statement_nobody_answers_is_refused_at_its_timeout_and_the_connection_stays_usable() {
    require_root!();
    let server = server();
    server
        .root("CREATE TABLE IF NOT EXISTS appdb.unanswered (v INT); DELETE FROM appdb.unanswered");
    // The shipped default policy with its review timeouts shortened to 2 s.
    let cfg = default_config_reviewing_for(server, 2);
    let r = client(
        &cfg,
        server,
        r#"
c = connect()
cur = c.cursor()
out = {"insert": run(cur, "INSERT INTO unanswered (v) VALUES (1)")}
out["after"] = run(cur, "SELECT 40 + 2")
c.close()
report(**out)
"#,
    );
    assert_eq!(r["insert"]["ok"], json!(false), "{}", pretty(&r));
    assert_eq!(r["insert"]["code"], json!(1227), "{}", pretty(&r));
    assert_eq!(r["after"]["rows"], json!([["42"]]), "{}", pretty(&r));
    assert_eq!(
        server.root("SELECT COUNT(*) FROM appdb.unanswered").trim(),
        "0",
        "nothing ran"
    );
    // The journal says why: the review expired.
    let decisions = events_in(&cfg, &finished(&cfg), "approval_decision");
    assert!(
        decisions
            .iter()
            .any(|d| d["detail"]["status"] == json!("expired")),
        "{}",
        pretty_rows(&decisions)
    );
}
