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

/// A policy that allows everything and redacts e-mail addresses wherever they appear.
const ALLOW_ALL_REDACTING_EMAILS: &str = "[[rule]]\nname = \"all\"\ndecision = \"allow\"\n\n\
     [[mask]]\nname = \"pii\"\ndetectors = [\"email\"]\nstrategy = \"redact\"\n";

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
    // Shipped as OCSF, a MySQL statement is Datastore Activity (6005) on a relational
    // database of type mysql, with its text as the query; the logins are 6005 too.
    let ocsf = ocsf_records(&cfg);
    let select = ocsf
        .iter()
        .find(|r| {
            r["query_info"]["query_string"]
                .as_str()
                .is_some_and(|q| q.contains("SELECT CURRENT_USER()"))
        })
        .unwrap_or_else(|| panic!("no OCSF record of the statement\n{}", pretty_rows(&ocsf)));
    assert_eq!(select["class_uid"], json!(6005), "{}", pretty(select));
    assert_eq!(
        select["database"],
        json!({ "name": "appdb", "type": "mysql", "type_id": 1 }),
        "{}",
        pretty(select)
    );
    // The gateway's logins (`auth` notes) are Datastore Connect records.
    let logins: Vec<&Value> = ocsf
        .iter()
        .filter(|r| r["activity_name"] == json!("Connect"))
        .collect();
    assert!(
        !logins.is_empty(),
        "no login record\n{}",
        pretty_rows(&ocsf)
    );
    for login in logins {
        assert_eq!(login["class_uid"], json!(6005), "{}", pretty(login));
        assert_eq!(login["type_uid"], json!(600503), "{}", pretty(login));
    }
}

/// `interceptor journal export --format ocsf`, one record per line.
fn ocsf_records(cfg: &TempConfig) -> Vec<Value> {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(["journal", "export", "--format", "ocsf"]);
    let out = run_command(cmd, Duration::from_secs(60));
    assert!(out.success(), "journal export failed\n{}", out.describe());
    assert!(
        !out.stdout.contains(APP_PASSWORD),
        "the upstream password is in the OCSF export"
    );
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("an OCSF record is JSON"))
        .collect()
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

/// Server error messages quote values (`Duplicate entry '<value>' for key …`): the agent gets
/// them masked by content, with the server's code, and the journal keeps no raw value.
#[test]
fn server_error_messages_are_masked_by_content() {
    require_root!();
    let server = server();
    server.root(
        "CREATE TABLE IF NOT EXISTS appdb.unique_emails (email VARCHAR(100) PRIMARY KEY); \
         DELETE FROM appdb.unique_emails; \
         INSERT INTO appdb.unique_emails VALUES ('dora@example.com')",
    );
    let cfg = my_config(server, Some(ALLOW_ALL_REDACTING_EMAILS), "");
    let r = client(
        &cfg,
        server,
        r#"
c = connect()
cur = c.cursor()
report(dup=run(cur, "INSERT INTO unique_emails VALUES ('dora@example.com')"),
       after=run(cur, "SELECT 3"))
"#,
    );
    assert_eq!(
        r["dup"]["code"],
        json!(1062),
        "the server's code: {}",
        pretty(&r)
    );
    let message = r["dup"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Duplicate entry"), "{}", pretty(&r));
    assert!(!message.contains("dora@example.com"), "masked: {message}");
    assert_eq!(r["after"]["rows"], json!([["3"]]), "{}", pretty(&r));
    let results = statements(&cfg);
    let errors: Vec<String> = results
        .iter()
        .filter_map(|e| e["result"]["error"].as_str().map(str::to_owned))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("Duplicate entry")),
        "the error is journaled: {errors:?}"
    );
    assert!(
        errors.iter().all(|e| !e.contains("dora@example.com")),
        "journaled masked: {errors:?}"
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

/// A read-only cursor (`COM_STMT_EXECUTE` with `CURSOR_TYPE_READ_ONLY`, then `COM_STMT_FETCH`),
/// driven through mysql-connector's own protocol calls: the rows arrive in fetches, masked;
/// each fetch is journaled as an execution; a fetch the gateway did not see a cursor for is
/// refused.
#[test]
fn a_read_only_cursor_is_fetched_in_parts_masked_and_each_fetch_journaled() {
    require_root!();
    let server = server();
    server.root(
        "CREATE TABLE IF NOT EXISTS appdb.cursor_rows (id INT, email VARCHAR(100)); \
         DELETE FROM appdb.cursor_rows; \
         INSERT INTO appdb.cursor_rows VALUES (1, 'ann@example.com'), (2, 'bo@example.net'), \
         (3, 'cy@example.org')",
    );
    let cfg = my_config(server, Some(ALLOW_ALL_REDACTING_EMAILS), "");
    let r = client(
        &cfg,
        server,
        r#"
import mysql.connector
c = mysql.connector.connect(host=H, port=P, user="agent", password="x", database="appdb",
                            use_pure=True, autocommit=True, connection_timeout=10)
def text(v):
    return None if v is None else (v.decode() if isinstance(v, (bytes, bytearray)) else str(v))
st = c.cmd_stmt_prepare(b"SELECT id, email FROM cursor_rows WHERE id > ? ORDER BY id")
sid = st["statement_id"]
count, cols, eof = c.cmd_stmt_execute(sid, data=(0,), parameters=st["parameters"], flags=1)
out = {"cursor": bool(eof["status_flag"] & 0x40), "fetches": []}
c.unread_result = False
for _ in range(3):
    c.cmd_stmt_fetch(sid, 2)
    rows, end = c.get_rows(binary=True, columns=cols)
    out["fetches"].append([[text(v) for v in r] for r in rows])
    if end and end.get("status_flag", 0) & 0x80:
        break
try:
    c.cmd_stmt_fetch(sid, 2)
    c.get_rows(binary=True, columns=cols)
    out["after_end"] = {"ok": True}
except Exception as e:
    out["after_end"] = {"ok": False, "code": getattr(e, "errno", None), "message": str(e)}
try:
    c.cmd_stmt_fetch(sid + 1000, 1)
    c.get_rows(binary=True, columns=cols)
    out["unknown"] = {"ok": True}
except Exception as e:
    out["unknown"] = {"ok": False, "code": getattr(e, "errno", None), "message": str(e)}
c.unread_result = False
k = c.cursor()
k.execute("SELECT 7")
out["after"] = [list(r) for r in k.fetchall()]
report(**out)
"#,
    );
    assert_eq!(
        r["cursor"],
        json!(true),
        "the server opened a cursor: {}",
        pretty(&r)
    );
    let fetched: Vec<Value> = r["fetches"]
        .as_array()
        .map(|f| {
            f.iter()
                .flat_map(|b| b.as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        fetched.len(),
        3,
        "every row, in fetches of two: {}",
        pretty(&r)
    );
    assert_eq!(
        r["fetches"][0].as_array().map(Vec::len),
        Some(2),
        "{}",
        pretty(&r)
    );
    let ids: Vec<Value> = fetched.iter().map(|row| row[0].clone()).collect();
    assert_eq!(
        ids,
        vec![json!("1"), json!("2"), json!("3")],
        "{}",
        pretty(&r)
    );
    let all = r["fetches"].to_string();
    for email in ["ann@example.com", "bo@example.net", "cy@example.org"] {
        assert!(!all.contains(email), "{email} masked: {}", pretty(&r));
    }
    assert_eq!(
        r["after_end"]["code"],
        json!(1421),
        "no open cursor: {}",
        pretty(&r)
    );
    assert_eq!(
        r["unknown"]["code"],
        json!(1243),
        "unknown id: {}",
        pretty(&r)
    );
    assert_eq!(r["after"], json!([[7]]), "still usable: {}", pretty(&r));
    let executions = events_in(&cfg, &finished(&cfg), "execute");
    let tags: Vec<String> = executions
        .iter()
        .filter_map(|e| e["result"]["tag"].as_str().map(str::to_owned))
        .collect();
    assert!(
        tags.iter().filter(|t| t.starts_with("FETCH")).count() >= 2,
        "each fetch is an execution in the journal: {tags:?}"
    );
}

/// Cancelling as MySQL clients do (`KILL QUERY <connection id>` on a second connection, what
/// the `mariadb` CLI sends on Ctrl-C): the id in the gateway's greeting names the agent's own
/// session, and the gateway kills that session's statement on the server. A `KILL` of any
/// other id (here the server's real thread id, which `CONNECTION_ID()` shows) is a statement
/// like any other, refused by the default policy.
#[test]
fn kill_query_of_the_greeting_id_cancels_the_agents_own_statement() {
    require_root!();
    let server = server();
    let cfg = default_config(server);
    let r = client(
        &cfg,
        server,
        r#"
import threading, time
a = connect(read_timeout=60)
b = connect()
out = {"ids": [a.thread_id(), b.thread_id()]}
ka = a.cursor()
real = run(ka, "SELECT CONNECTION_ID()")["rows"][0][0]
result = {}
def slow():
    t = time.monotonic()
    result["sleep"] = run(ka, "SELECT SLEEP(30)")
    result["seconds"] = time.monotonic() - t
th = threading.Thread(target=slow)
th.start()
time.sleep(1.5)
kb = b.cursor()
out["kill"] = run(kb, "KILL QUERY %d" % a.thread_id())
th.join(40)
out.update(result)
out["after"] = run(ka, "SELECT 5")
out["kill_real"] = run(kb, "KILL QUERY %s" % real)
report(**out)
"#,
    );
    let ids = r["ids"].as_array().cloned().unwrap_or_default();
    assert!(
        ids[0] != ids[1],
        "each session has its own id: {}",
        pretty(&r)
    );
    assert_eq!(r["kill"]["ok"], json!(true), "{}", pretty(&r));
    let seconds = r["seconds"].as_f64().unwrap_or(99.0);
    assert!(
        seconds < 20.0,
        "SLEEP(30) was cut short by the KILL ({seconds} s): {}",
        pretty(&r)
    );
    assert_eq!(r["after"]["rows"], json!([["5"]]), "{}", pretty(&r));
    assert_refused(
        &r["kill_real"],
        "KILL of a server thread id",
        "unanalysable",
    );
    let cancels = events_in(&cfg, &finished(&cfg), "cancel");
    assert!(
        cancels.iter().any(|e| e["detail"]["ok"] == json!(true)),
        "the cancel is in the journal: {cancels:?}"
    );
}

/// `COM_CHANGE_USER` (what connection pools send to reset a session) is a `login` command:
/// refused by the shipped default, with the connection still usable; allowed by a rule about
/// logins, it resets the session and switches database, while the server login stays the
/// target's account whatever user the agent named.
#[test]
fn change_user_is_refused_by_default_and_under_a_login_rule_resets_the_session() {
    require_root!();
    let server = server();
    server.root("CREATE DATABASE IF NOT EXISTS appdb_other");
    let code = r#"
import mysql.connector
c = mysql.connector.connect(host=H, port=P, user="agent", password="x", database="appdb",
                            use_pure=True, autocommit=True, connection_timeout=10)
def q(sql):
    k = c.cursor()
    k.execute(sql)
    return [[None if v is None else str(v) for v in r] for r in k.fetchall()]
out = {"before": q("SET @x = 5") or q("SELECT @x, DATABASE()")}
sid = c.cmd_stmt_prepare(b"SELECT 8")["statement_id"]
try:
    c.cmd_change_user(username="reporting", password="whatever", database="appdb_other")
    out["change"] = {"ok": True}
except Exception as e:
    out["change"] = {"ok": False, "code": getattr(e, "errno", None), "message": str(e)}
out["after"] = q("SELECT @x, DATABASE(), CURRENT_USER()")
try:
    c.cmd_stmt_execute(sid)
    out["prepared"] = {"ok": True}
except Exception as e:
    out["prepared"] = {"ok": False, "code": getattr(e, "errno", None), "message": str(e)}
report(**out)
"#;
    let refusing = default_config(server);
    let r = client(&refusing, server, code);
    assert_refused(
        &r["change"],
        "COM_CHANGE_USER by default",
        "no matching rule",
    );
    assert_eq!(
        r["after"],
        json!([["5", "appdb", "app@%"]]),
        "nothing changed, still usable: {}",
        pretty(&r)
    );
    assert_eq!(
        r["prepared"]["ok"],
        json!(true),
        "statements kept: {}",
        pretty(&r)
    );
    let text = std::fs::read_to_string(workspace_root().join("policies/default.toml"))
        .expect("default policy")
        + "\n[[rule]]\nname = \"pool-resets\"\ndecision = \"allow\"\n[rule.match]\nkinds = [\"login\"]\n";
    let allowing = my_config(server, Some(&text), "");
    let r = client(&allowing, server, code);
    assert_eq!(r["before"], json!([["5", "appdb"]]), "{}", pretty(&r));
    assert_eq!(r["change"]["ok"], json!(true), "{}", pretty(&r));
    assert_eq!(
        r["after"],
        json!([[null, "appdb_other", "app@%"]]),
        "the session was reset into the database asked for, as the target's account: {}",
        pretty(&r)
    );
    assert_eq!(
        r["prepared"]["code"],
        json!(1243),
        "the reset dropped the server's prepared statements, and the gateway's mirror with them: {}",
        pretty(&r)
    );
    let logins = events_in(&allowing, &finished(&allowing), "login");
    assert!(
        logins.iter().any(|e| e["statement"]
            .as_str()
            .is_some_and(|t| t.contains("change user reporting database appdb_other"))),
        "journaled as a login: {logins:?}"
    );
}

/// Payloads of 16 MiB or more, which MySQL splits over several packets, both ways: a 20 MB
/// statement reaches the server whole, and a 20 MB value comes back whole with the e-mail
/// addresses in its row masked (the masked row takes other packet boundaries than the server's,
/// so the gateway renumbers what it sends); the connection stays usable.
#[test]
fn payloads_of_16_mib_or_more_pass_both_ways_and_are_masked() {
    require_root!();
    let server = server();
    let cfg = my_config(server, Some(ALLOW_ALL_REDACTING_EMAILS), "");
    let r = client(
        &cfg,
        server,
        r#"
c = connect(max_allowed_packet=64 * 1024 * 1024, read_timeout=60)
cur = c.cursor()
N = 20 * 1000 * 1000
out = {"sent": run(cur, "SELECT LENGTH('" + "s" * N + "')")}
cur.execute("SELECT CONCAT(REPEAT('a', %d), ' x@example.com z'), 'y@example.org', 3" % N)
big, small, three = cur.fetchone()
out["big_len"] = len(big)
out["big_head"] = big[:3]
out["big_tail"] = big[-20:]
out["small"] = small
out["three"] = three
out["after"] = run(cur, "SELECT 4")
report(**out)
"#,
    );
    assert_eq!(r["sent"]["rows"], json!([["20000000"]]), "{}", r["sent"]);
    assert_eq!(r["big_head"], json!("aaa"));
    let tail = r["big_tail"].as_str().unwrap_or_default();
    assert!(
        !tail.contains("x@example.com") && tail.ends_with(" z"),
        "masked: {tail}"
    );
    assert!(
        r["big_len"].as_u64().unwrap_or(0) > 20_000_000,
        "whole: {}",
        r["big_len"]
    );
    assert_ne!(r["small"], json!("y@example.org"), "masked");
    assert_eq!(r["three"], json!(3));
    assert_eq!(r["after"]["rows"], json!([["4"]]));
}

/// `[target.local_auth] mode = "password"`: agents must present the gateway's local password
/// (checked as `mysql_native_password`; a client that answers for another plugin is switched to
/// it), while the server login stays the target's. A wrong password is refused with 1045 before
/// anything is dialed or journaled as a statement.
#[test]
fn local_auth_checks_the_agents_password_before_the_injected_login() {
    require_root!();
    let server = server();
    let cfg = my_config(
        server,
        None,
        "[target.local_auth]\nmode = \"password\"\npassword_file = \"{dir}/local-password\"\n",
    );
    write_secret(&cfg, "local-password", "local-Pass-7c2e");
    let r = client(
        &cfg,
        server,
        r#"
import mysql.connector
out = {}
for name, pw in [("right", "local-Pass-7c2e"), ("wrong", "guess")]:
    try:
        c = connect(password=pw)
        out[name] = run(c.cursor(), "SELECT CURRENT_USER()")
    except Exception as e:
        out[name] = {"ok": False, "code": e.args[0] if e.args else None, "message": str(e)}
try:
    m = mysql.connector.connect(host=H, port=P, user="agent", password="local-Pass-7c2e",
                                database="appdb", use_pure=True, connection_timeout=10)
    k = m.cursor()
    k.execute("SELECT 6")
    out["connector"] = [list(x) for x in k.fetchall()]
except Exception as e:
    out["connector"] = str(e)
report(**out)
"#,
    );
    assert_eq!(r["right"]["rows"], json!([["app@%"]]), "{}", pretty(&r));
    assert_eq!(r["wrong"]["code"], json!(1045), "{}", pretty(&r));
    assert_eq!(
        r["connector"],
        json!([[6]]),
        "switched to the checked plugin: {}",
        pretty(&r)
    );
    let texts: Vec<String> = statements(&cfg)
        .iter()
        .filter_map(|e| e["statement"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        texts.iter().filter(|t| t.contains("CURRENT_USER")).count(),
        1,
        "only the accepted session ran its statement: {texts:?}"
    );
}

/// A parameter sent in pieces (`COM_STMT_SEND_LONG_DATA`, what mysql-connector does for a
/// file-like parameter) reaches the server for a statement the gateway saw prepared, and the
/// row holds exactly what the agent sent.
#[test]
fn long_data_for_a_prepared_statement_reaches_the_server() {
    require_root!();
    let server = server();
    server.root(
        "CREATE TABLE IF NOT EXISTS appdb.long_data (id INT, body LONGBLOB); \
         DELETE FROM appdb.long_data",
    );
    let cfg = my_config(server, Some(ALLOW_ALL_REDACTING_EMAILS), "");
    let r = client(
        &cfg,
        server,
        r#"
import io, mysql.connector
m = mysql.connector.connect(host=H, port=P, user="agent", password="x", database="appdb",
                            use_pure=True, autocommit=True, connection_timeout=10)
pc = m.cursor(prepared=True)
pc.execute("INSERT INTO long_data VALUES (?, ?)", (1, io.BytesIO(b"0123456789" * 30000)))
report(rows=pc.rowcount)
"#,
    );
    assert_eq!(r["rows"], json!(1), "{}", pretty(&r));
    assert_eq!(
        server
            .root("SELECT LENGTH(body), MD5(body) = MD5(REPEAT('0123456789', 30000)) FROM appdb.long_data")
            .trim(),
        "300000\t1"
    );
}

/// Large payloads take room from the gateway's shared memory budget before they are read
/// (`[proxy] buffer_budget_bytes`; a payload split over packets reserves the target's limit):
/// while one 20 MB statement is held for review, a second one cannot be read and is refused
/// after `buffer_wait_secs`, small statements never wait, and once the held one is over its
/// room is given back (a third is read and judged).
#[test]
fn large_payloads_wait_for_the_memory_budget_and_give_it_back() {
    require_root!();
    let server = server();
    let policy = "[[rule]]\nname = \"connect\"\ndecision = \"allow\"\n[rule.match]\nkinds = [\"connect\"]\n\n\
                  [[rule]]\nname = \"reads\"\ndecision = \"allow\"\n[rule.match]\nkinds = [\"sql\"]\n\
                  classes = [\"read\", \"set_reset\", \"transaction\"]\ndangerous = false\n\n\
                  [[rule]]\nname = \"big-needs-review\"\ndecision = \"review\"\n\
                  review_timeout_secs = 4\n[rule.match]\nclasses = [\"unknown\"]\n";
    let cfg = my_config(
        server,
        Some(policy),
        "[approvals]\nsocket = \"{dir}/control.sock\"\n\n\
         [proxy]\nbuffer_budget_bytes = 67117056\nbuffer_wait_secs = 1\n",
    );
    let r = client(
        &cfg,
        server,
        r#"
import threading, time
N = 20 * 1000 * 1000
BIG = dict(max_allowed_packet=64 * 1024 * 1024, read_timeout=60)
out = {}
def held():
    a = connect(**BIG)
    out["held"] = run(a.cursor(), "SELECT LENGTH('" + "h" * N + "')")
th = threading.Thread(target=held)
th.start()
time.sleep(2)
t = time.monotonic()
try:
    b = connect(**BIG)
    out["second"] = run(b.cursor(), "SELECT LENGTH('" + "b" * N + "')")
except Exception as e:
    out["second"] = {"ok": False, "message": str(e)}
out["second_s"] = time.monotonic() - t
out["small"] = run(connect().cursor(), "SELECT 1")
th.join(30)
c = connect(**BIG)
out["after"] = run(c.cursor(), "SELECT LENGTH('" + "c" * N + "')")
report(**out)
"#,
    );
    assert_eq!(r["second"]["ok"], json!(false), "no room: {}", pretty(&r));
    assert_ne!(
        r["second"]["code"],
        json!(1227),
        "refused for memory before it was read, never judged or held: {}",
        pretty(&r)
    );
    assert!(
        r["second_s"].as_f64().unwrap_or(99.0) < 15.0,
        "refused after the budget's wait, not hung: {}",
        r["second_s"]
    );
    assert_eq!(r["small"]["rows"], json!([["1"]]), "small ones never wait");
    assert_eq!(
        r["held"]["code"],
        json!(1227),
        "the held one timed out: {}",
        r["held"]
    );
    // Read whole and judged (held again, then timed out), not refused for memory.
    assert_eq!(r["after"]["code"], json!(1227), "{}", r["after"]);
    assert!(
        r["after"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("timed out")),
        "the room was given back: {}",
        r["after"]
    );
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

// ---------------------------------------------------------------------------------------------
// Logging in: TLS on each leg, the plugins the gateway answers upstream
// ---------------------------------------------------------------------------------------------

/// `[target.tls]` for the upstream leg.
fn upstream_tls(mode: &str, ca: &std::path::Path) -> String {
    format!(
        "[target.tls]\nmode = \"{mode}\"\nca_file = \"{}\"\n",
        ca.display()
    )
}

/// A copy of `pem` in the config's dir that any user (the agent) can read.
fn readable_copy(cfg: &TempConfig, pem: &std::path::Path, name: &str) -> String {
    let path = cfg.dir().join(name);
    std::fs::copy(pem, &path).expect("copy pem");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod pem");
    path.display().to_string()
}

/// The gateway's local CA, as `interceptor ca pem` prints it, in a file the agent can read.
fn local_ca_file(cfg: &TempConfig) -> String {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(["ca", "pem"]);
    let out = run_command(cmd, Duration::from_secs(30));
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("BEGIN CERTIFICATE"),
        "{}",
        out.describe()
    );
    let path = cfg.dir().join("local-ca.pem");
    std::fs::write(&path, &out.stdout).expect("local ca file");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod local ca");
    path.display().to_string()
}

/// PyMySQL connecting with `kw` (a Python dict literal) and running `SELECT CURRENT_USER()`
/// and the server's view of the upstream leg's TLS; a failed connection is reported, not
/// raised.
fn login_report(kw: &str) -> String {
    format!(
        r#"
out = {{}}
try:
    c = connect(**{kw})
    cur = c.cursor()
    out["user"] = run(cur, "SELECT CURRENT_USER()")
    out["server_tls"] = run(cur, "SHOW SESSION STATUS LIKE 'Ssl_version'")
    c.close()
    out["connected"] = True
except Exception as e:
    out["connected"] = False
    out["code"] = e.args[0] if e.args and isinstance(e.args[0], int) else None
    out["message"] = str(e)
report(**out)
"#
    )
}

/// No statement of any session reached the journal (nothing was forwarded).
fn assert_no_statement(cfg: &TempConfig, what: &str) {
    let sessions = finished(cfg);
    let statements = events_in(cfg, &sessions, "statement");
    assert!(
        statements.is_empty(),
        "{what}: statements journaled: {}",
        pretty_rows(&statements)
    );
    assert!(
        sessions.iter().all(|s| s["outcome"] == json!("error")),
        "{what}: {}",
        pretty_rows(&sessions)
    );
}

#[test]
fn upstream_verify_full_tls_logs_in_an_account_the_server_admits_only_over_tls() {
    require_root!();
    let server = server();
    let cfg = my_config_as(
        server,
        TLS_USER,
        TLS_PASSWORD,
        None,
        &upstream_tls("verify-full", &server.ca_path()),
    );
    let r = client(&cfg, server, &login_report("{}"));
    assert_eq!(r["connected"], json!(true), "{}", pretty(&r));
    assert_eq!(r["user"]["rows"], json!([["app_tls@%"]]), "{}", pretty(&r));
    // The server's own view of the gateway's connection: TLS.
    let version = r["server_tls"]["rows"][0][1].as_str().unwrap_or_default();
    assert!(version.starts_with("TLSv1."), "{}", pretty(&r));
    assert!(
        !bytes_contain(&journal_bytes(&cfg), TLS_PASSWORD.as_bytes()),
        "the upstream password is in the journal"
    );

    // The control: the same account without TLS upstream is refused by the server, so the
    // login above could only have been over TLS. The agent hears why, in its protocol.
    let plain = my_config_as(
        server,
        TLS_USER,
        TLS_PASSWORD,
        None,
        "[target.tls]\nmode = \"disable\"\n",
    );
    let r = client(&plain, server, &login_report("{}"));
    assert_eq!(r["connected"], json!(false), "{}", pretty(&r));
    assert_eq!(r["code"], json!(1045), "{}", pretty(&r));
    let message = r["message"].as_str().unwrap_or_default();
    assert!(message.contains("Access denied"), "{}", pretty(&r));
    assert!(!message.contains(TLS_PASSWORD), "{}", pretty(&r));
    assert_no_statement(&plain, "REQUIRE SSL over a plain upstream");

    // And an account without REQUIRE SSL over the same plain upstream logs in (the server
    // offers TLS to everyone, so `disable` is what keeps the plain path tested).
    let plain = my_config(server, None, "[target.tls]\nmode = \"disable\"\n");
    let r = client(&plain, server, &login_report("{}"));
    assert_eq!(r["user"]["rows"], json!([["app@%"]]), "{}", pretty(&r));
    assert_eq!(r["server_tls"]["rows"][0][1], json!(""), "{}", pretty(&r));
}

#[test]
fn upstream_tls_against_the_wrong_ca_refuses_the_session_before_any_statement() {
    require_root!();
    let server = server();
    let cfg = my_config(
        server,
        None,
        &upstream_tls("verify-full", &server.wrong_ca_path()),
    );
    let r = client(&cfg, server, &login_report("{}"));
    assert_eq!(
        r["connected"],
        json!(false),
        "logged in through an unverified upstream: {}",
        pretty(&r)
    );
    assert_eq!(r["code"], json!(1045), "{}", pretty(&r));
    let message = r["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        message.contains("tls") && message.contains("certificate"),
        "the agent is told it is the server's certificate: {}",
        pretty(&r)
    );
    assert!(!message.contains(APP_PASSWORD), "{}", pretty(&r));
    assert_no_statement(&cfg, "wrong CA");
    let auth = events_in(&cfg, &finished(&cfg), "auth");
    assert!(
        auth.iter().any(|e| e["detail"]["ok"] == json!(false)),
        "the failed login is journaled: {}",
        pretty_rows(&auth)
    );
}

#[test]
fn the_agent_leg_is_tls_verified_against_the_local_ca() {
    require_root!();
    let server = server();
    let cfg = my_config(server, None, "");
    let ca = local_ca_file(&cfg);
    let wrong = readable_copy(&cfg, &server.wrong_ca_path(), "wrong-ca.pem");
    // PyMySQL with certificate and host name checks (the host is 127.0.0.2, what the agent
    // dialed). The effect asserted is on the client's own socket: an SSLSocket whose peer
    // certificate chains to the local CA (getpeercert() is empty unless it was verified).
    let code = format!(
        r#"
import ssl
out = {{}}
c = connect(ssl_ca={ca:?}, ssl_verify_cert=True, ssl_verify_identity=True)
out["tls_socket"] = isinstance(c._sock, ssl.SSLSocket)
out["tls_version"] = c._sock.version()
peer = c._sock.getpeercert()
out["peer_ip"] = [v for k, v in peer.get("subjectAltName", ()) if k == "IP Address"]
out["select"] = run(c.cursor(), "SELECT 40 + 2")
c.close()
try:
    connect(ssl_ca={wrong:?}, ssl_verify_cert=True, ssl_verify_identity=True)
    out["wrong_ca"] = {{"ok": True}}
except Exception as e:
    out["wrong_ca"] = {{"ok": False, "message": str(e)}}
report(**out)
"#
    );
    let r = client(&cfg, server, &code);
    assert_eq!(r["tls_socket"], json!(true), "{}", pretty(&r));
    assert!(
        r["tls_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{}",
        pretty(&r)
    );
    assert_eq!(r["peer_ip"], json!([my_dial_host()]), "{}", pretty(&r));
    assert_eq!(r["select"]["rows"], json!([["42"]]), "{}", pretty(&r));
    assert_eq!(r["wrong_ca"]["ok"], json!(false), "{}", pretty(&r));
    assert!(
        r["wrong_ca"]["message"]
            .as_str()
            .is_some_and(|m| m.to_lowercase().contains("certificate")),
        "{}",
        pretty(&r)
    );
    // The mariadb CLI verifying the gateway's certificate too, and refusing the wrong CA.
    let tls_cli = |ca: &str| {
        let mut argv = cli_argv(server, "SELECT 40 + 2");
        argv.splice(
            2..2,
            [
                "--ssl".to_owned(),
                "--ssl-verify-server-cert".to_owned(),
                format!("--ssl-ca={ca}"),
            ],
        );
        run_exec_timeout(&cfg, None, &argv, RUN)
    };
    let cli = tls_cli(&ca);
    assert!(cli.success(), "{}", cli.describe());
    assert_eq!(cli.stdout.trim(), "42", "{}", cli.describe());
    let cli = tls_cli(&wrong);
    assert!(!cli.success(), "{}", cli.describe());
}

#[test]
fn an_ed25519_account_logs_in_upstream_and_serves_the_agent() {
    require_root!();
    let server = server();
    // Plain upstream: the password never crosses it, only a signature of the server's nonce.
    let cfg = my_config_as(
        server,
        ED25519_USER,
        ED25519_PASSWORD,
        None,
        "[target.tls]\nmode = \"disable\"\n",
    );
    let r = client(&cfg, server, &login_report("{}"));
    assert_eq!(r["connected"], json!(true), "{}", pretty(&r));
    assert_eq!(r["user"]["rows"], json!([["app_ed@%"]]), "{}", pretty(&r));
    assert_eq!(
        r["server_tls"]["rows"][0][1],
        json!(""),
        "the upstream leg was meant to be plain: {}",
        pretty(&r)
    );
    let cli = run_exec_timeout(&cfg, None, &cli_argv(server, "SELECT CURRENT_USER()"), RUN);
    assert!(cli.success(), "{}", cli.describe());
    assert_eq!(cli.stdout.trim(), "app_ed@%", "{}", cli.describe());
    assert!(
        !bytes_contain(&journal_bytes(&cfg), ED25519_PASSWORD.as_bytes()),
        "the upstream password is in the journal"
    );
    // A wrong password is the server's refusal, told to the agent.
    let wrong = my_config_as(
        server,
        ED25519_USER,
        "not-the-password",
        None,
        "[target.tls]\nmode = \"disable\"\n",
    );
    let r = client(&wrong, server, &login_report("{}"));
    assert_eq!(r["connected"], json!(false), "{}", pretty(&r));
    assert_eq!(r["code"], json!(1045), "{}", pretty(&r));
    assert_no_statement(&wrong, "ed25519 with a wrong password");
}

#[test]
fn an_account_whose_plugin_the_gateway_cannot_answer_is_refused_with_its_name() {
    require_root!();
    let server = server();
    // PAM accounts make the server switch the client to `dialog`, which asks questions the
    // gateway has no answers for: the login must end, told to the agent, before anything
    // of the agent's reaches the server.
    server.root(
        "INSTALL PLUGIN IF NOT EXISTS pam SONAME 'auth_pam'; \
         CREATE USER IF NOT EXISTS 'app_pam'@'%' IDENTIFIED VIA pam; \
         GRANT ALL ON appdb.* TO 'app_pam'@'%'",
    );
    let cfg = my_config_as(
        server,
        "app_pam",
        "pam-Secret-61b0",
        None,
        &upstream_tls("verify-full", &server.ca_path()),
    );
    let r = client(&cfg, server, &login_report("{}"));
    assert_eq!(r["connected"], json!(false), "{}", pretty(&r));
    assert_eq!(r["code"], json!(1045), "{}", pretty(&r));
    let message = r["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("authentication plugin dialog"),
        "{}",
        pretty(&r)
    );
    assert!(!message.contains("pam-Secret-61b0"), "{}", pretty(&r));
    assert_no_statement(&cfg, "dialog");
}
