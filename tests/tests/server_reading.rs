//! The gate judges what the server runs (issue 14): one regression test per way the
//! gateway's picture of a session was made to differ from the server's, each run by an
//! unprivileged agent under `interceptor exec` against a real PostgreSQL, and each asserting on
//! effects (rows in the database, bytes the client received), not on log lines.
//!
//! Most clients here speak the wire protocol themselves (a few lines of Python over a socket),
//! because the attacks are message sequences no driver sends on purpose: a refused re-Parse, a
//! Parse the server rejects, a protocol-level Bind of a SQL-level PREPARE, an Execute of a SQL
//! cursor.

use std::time::{Duration, Instant};

use interceptor_tests::*;

const RUN: Duration = Duration::from_secs(120);
/// The unprivileged user the agents run as; approvals are given by root.
const AGENT: &str = "nobody";

/// A raw PostgreSQL v3 client: enough to send any message sequence and read the answers.
const RAW: &str = r#"
import struct
def msg(t, body): return t + struct.pack("!i", len(body) + 4) + body
def cstr(x): return (x.encode() if isinstance(x, str) else x) + b"\0"
def Q(sql): return msg(b"Q", cstr(sql))
def P(name, sql): return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", 0))
def B(portal, stmt, fmt=0):
    return msg(b"B", cstr(portal) + cstr(stmt) + struct.pack("!hh", 0, 0) + struct.pack("!hh", 1, fmt))
def E(portal, n=0): return msg(b"E", cstr(portal) + struct.pack("!i", n))
def D(kind, name): return msg(b"D", kind + cstr(name))
S = msg(b"S", b"")
class Raw:
    def __init__(self, host, port, **params):
        self.sock = socket.create_connection((host, port), timeout=60)
        p = {"user": "agent", "database": "appdb"}
        p.update(params)
        body = struct.pack("!i", 196608) + b"".join(cstr(k) + cstr(v) for k, v in p.items()) + b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        self.buf = b""
        self.received = b""
        self.startup = self.until_ready()
    def read(self):
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!i", self.buf[1:5])[0]:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError("closed")
            self.buf += d
            self.received += d
        n = struct.unpack("!i", self.buf[1:5])[0]
        t, body = self.buf[0:1], self.buf[5:1 + n]
        self.buf = self.buf[1 + n:]
        return t, body
    def until_ready(self):
        out = []
        while True:
            try:
                t, body = self.read()
            except (EOFError, OSError):
                out.append((b"X", b""))
                return out
            out.append((t, body))
            if t == b"Z":
                return out
    def run(self, *msgs):
        self.sock.sendall(b"".join(msgs))
        return summary(self.until_ready())
def fields(body):
    f = {}
    for part in body.split(b"\0"):
        if part:
            f[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return f
def summary(msgs):
    out = []
    for t, body in msgs:
        if t == b"E":
            f = fields(body)
            out.append("E:" + f.get("C", "") + ":" + f.get("M", ""))
        elif t == b"C":
            out.append("C:" + body.rstrip(b"\0").decode())
        elif t == b"D":
            out.append("D")
        elif t in (b"1", b"2", b"3"):
            out.append(t.decode())
        elif t == b"X":
            out.append("closed")
    return out
def codes(s): return [x.split(":")[1] for x in s if x.startswith("E:")]
"#;

fn setup(pg: &PgServer) {
    pg.psql_db(
        "appdb",
        "CREATE TABLE victims (id int PRIMARY KEY, n int, email text);\n\
         INSERT INTO victims VALUES (1, 0, 'alice@example.com'), (2, 0, 'bob@example.org'), \
           (3, 0, 'carol@example.net');\n\
         CREATE SEQUENCE tickets;\n\
         CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS \
           $$ BEGIN DELETE FROM victims; RETURN 0; END $$;\n\
         CREATE FUNCTION answer() RETURNS int LANGUAGE sql STABLE AS $$ SELECT 42 $$;\n\
         CREATE FUNCTION flip() RETURNS int LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); RETURN 1; END $$;\n\
         GRANT ALL ON victims, tickets TO PUBLIC;\n\
         GRANT EXECUTE ON FUNCTION purge(), answer(), flip() TO PUBLIC;",
    );
}

fn victims(pg: &PgServer) -> String {
    pg.psql_db(
        "appdb",
        "SELECT coalesce(string_agg(id || '=' || n, ',' ORDER BY id), '') FROM victims",
    )
    .trim()
    .to_owned()
}

/// A config whose target uses `policy` (a path), with approvals on a socket of the test's
/// own and `extra` added to the target.
fn config(pg: &PgServer, policy: &std::path::Path, extra: &str) -> TempConfig {
    config_in(TempConfig::new(""), pg, policy, extra)
}

/// [`config`], written into `cfg` (whose directory may already hold the policy or secrets).
fn config_in(cfg: TempConfig, pg: &PgServer, policy: &std::path::Path, extra: &str) -> TempConfig {
    let text = pg_config_text(
        &cfg,
        pg.port(),
        &format!("policy = \"{}\"\n{extra}", policy.display()),
    );
    cfg.write(&format!(
        "{text}\n[approvals]\nsocket = \"{}\"\n",
        cfg.dir().join("control.sock").display()
    ));
    cfg
}

/// The shipped default policy with a short review timeout (an unanswered hold denies).
fn default_policy(cfg_dir: &std::path::Path, timeout_secs: u64) -> std::path::PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("policies/default.toml"))
        .expect("default policy");
    let changed = text.replace(
        "review_timeout_secs = 300",
        &format!("review_timeout_secs = {timeout_secs}"),
    );
    assert_ne!(changed, text);
    let path = cfg_dir.join("default-short.toml");
    std::fs::write(&path, changed).expect("write policy");
    path
}

/// A config on the shipped default policy (60 s review timeout).
fn reviewed(pg: &PgServer) -> TempConfig {
    let cfg = TempConfig::new("");
    let policy = default_policy(cfg.dir(), 60);
    config_in(cfg, pg, &policy, "")
}

/// Runs a client whose holds are answered by `decide` (see [`answer_holds`]); returns the
/// statements held and the client's report.
fn run_with_holds(
    cfg: &TempConfig,
    body: &str,
    args: &[String],
    decide: impl FnMut(&str) -> Option<&'static str>,
) -> (Vec<String>, Value) {
    let mut agent = spawn_agent(cfg, body, args);
    let seen = answer_holds(cfg, &mut agent, decide);
    let out = agent.wait(RUN);
    assert!(out.success(), "{}", out.describe());
    (seen, out.json())
}

fn allow_all() -> std::path::PathBuf {
    workspace_root().join("policies/examples/journal-only.toml")
}

fn client_args(pg: &PgServer, host: &str) -> Vec<String> {
    vec![json!({ "host": host, "port": pg.port() }).to_string()]
}

fn code(body: &str) -> String {
    format!("{PG_PY_PRELUDE}\n{RAW}\n{body}")
}

/// Runs a client to completion under exec as the unprivileged agent.
fn run_agent(cfg: &TempConfig, body: &str, args: &[String]) -> Value {
    let out = run_exec_timeout(cfg, Some(AGENT), &venv_python_argv(&code(body), args), RUN);
    assert!(out.success(), "agent failed\n{}", out.describe());
    out.json()
}

/// A client under exec in the background (it will wait for approvals).
fn spawn_agent(cfg: &TempConfig, body: &str, args: &[String]) -> Spawned {
    Spawned::spawn(
        exec_cmd(cfg, Some(AGENT), &venv_python_argv(&code(body), args)),
        "agent",
        false,
    )
}

fn approvals(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("approvals").args(args);
    run_command(cmd, Duration::from_secs(30))
}

/// Answers every hold the agent raises, in order, with `decide(statement)`: `Some(scope)`
/// approves, `None` denies. Returns the statements seen, once the agent has exited.
fn answer_holds(
    cfg: &TempConfig,
    agent: &mut Spawned,
    mut decide: impl FnMut(&str) -> Option<&'static str>,
) -> Vec<String> {
    let deadline = Instant::now() + RUN;
    let mut seen = Vec::new();
    while agent.try_status().is_none() {
        assert!(Instant::now() < deadline, "the agent did not finish");
        let out = approvals(cfg, &["list", "--json"]);
        let list: Vec<Value> = serde_json::from_str::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        for r in list {
            let id = r["id"].as_str().expect("id").to_owned();
            let statement = r["statement"].as_str().unwrap_or_default().to_owned();
            let out = match decide(&statement) {
                Some(scope) => approvals(cfg, &["approve", &id, "--scope", scope]),
                None => approvals(cfg, &["deny", &id, "--reason", "test"]),
            };
            assert!(out.success(), "{}", out.describe());
            seen.push(statement);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Findings 1 and 2: settings that change how the server reads text

const SETTINGS_CLIENT: &str = r#"
import psycopg
HOST, PORT = ARGS["host"], int(ARGS["port"])
def dsn(**kw):
    base = dict(host=HOST, port=PORT, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)
    base.update(kw)
    return conninfo(**base)
refused = {}
c = psycopg.connect(dsn(), autocommit=True)
for sql in ["SET standard_conforming_strings = off",
            "RESET standard_conforming_strings",
            "SET client_encoding = 'SJIS'",
            "SET NAMES 'GBK'",
            "select set_config('standard_conforming_strings', 'off', false)",
            "select set_config('client_' || 'encoding', 'BIG5', false)",
            "SET U&\"client\\005fencoding\" = 'BIG5'",
            "SET backslash_quote = on"]:
    try:
        c.execute(sql)
        refused[sql] = None
    except Exception as e:
        refused[sql] = getattr(e, "sqlstate", None)
c.execute("BEGIN")
try:
    c.execute("SET LOCAL standard_conforming_strings = off")
    refused["SET LOCAL"] = None
except Exception as e:
    refused["SET LOCAL"] = getattr(e, "sqlstate", None)
c.execute("ROLLBACK")
state = [c.execute("SHOW standard_conforming_strings").fetchone()[0],
         c.execute("SHOW client_encoding").fetchone()[0]]
# With standard strings (pinned), this is one SELECT of two string literals.
smuggle = c.execute("select 'x\\', ' ; delete from victims; drop table victims; --'").fetchall()
c.close()
startups = {}
for kw in [dict(client_encoding="SJIS"), dict(options="-c standard_conforming_strings=off"),
           dict(options="--client-encoding=BIG5")]:
    try:
        psycopg.connect(dsn(**kw)).close()
        startups[str(kw)] = "connected"
    except Exception as e:
        startups[str(kw)] = str(e)
# Bytes that are SJIS (0x95 0x5C is one character there), not UTF-8: the session ends.
raw = Raw(HOST, PORT)
raw.sock.sendall(msg(b"Q", b"select '\x95\\' ; delete from victims; --'\0"))
sjis = summary(raw.until_ready())
sjis_received = raw.received.decode("utf-8", "replace")
# A function the agent did not write flips a pinned setting: the session is closed at once.
raw = Raw(HOST, PORT)
flip = raw.run(Q("select flip()"))
try:
    after_flip = raw.run(Q("select 'a\\' ; delete from victims; --'"))
except (EOFError, OSError) as e:
    after_flip = ["closed"]
report(refused=refused, state=state, smuggle=len(smuggle), startups=startups, sjis=sjis,
       sjis_received=sjis_received, flip=flip, after_flip=after_flip)
"#;

#[test]
fn settings_that_change_how_text_is_read_are_pinned() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    // An administrator's role default does not change what the gateway's sessions read.
    pg.psql("ALTER ROLE agent SET standard_conforming_strings = off");
    // Everything is allowed by policy: the gate refuses on its own.
    let cfg = config(&pg, &allow_all(), "");
    let r = run_agent(&cfg, SETTINGS_CLIENT, &client_args(&pg, pg_dial_host()));
    for (sql, code) in r["refused"].as_object().expect("refused") {
        assert_eq!(
            code,
            &json!("42501"),
            "{sql} was not refused: {}",
            pretty(&r)
        );
    }
    assert_eq!(r["state"], json!(["on", "UTF8"]), "{}", pretty(&r));
    assert_eq!(r["smuggle"], json!(1), "{}", pretty(&r));
    for (kw, outcome) in r["startups"].as_object().expect("startups") {
        let outcome = outcome.as_str().unwrap_or_default();
        assert!(
            outcome.contains("interceptor") && outcome != "connected",
            "{kw}: {outcome}"
        );
    }
    let sjis = r["sjis"].to_string();
    assert!(
        sjis.contains("08P01") || sjis.contains("closed"),
        "{}",
        pretty(&r)
    );
    assert!(
        r["sjis_received"]
            .as_str()
            .unwrap_or_default()
            .contains("UTF-8"),
        "{}",
        pretty(&r)
    );
    // flip() ran (the policy allows it) and the server reported the change: the gateway
    // ended the session before it could misread another statement.
    assert!(r["flip"].to_string().contains("0A000"), "{}", pretty(&r));
    assert_eq!(r["after_flip"], json!(["closed"]), "{}", pretty(&r));
    assert_eq!(victims(&pg), "1=0,2=0,3=0");
}

// Code the server runs can flip a pinned setting, and the server says so only at ReadyForQuery,
// after it may have parsed text pipelined behind it.
const PIPELINE_CLIENT: &str = r#"
HOST, PORT = ARGS["host"], int(ARGS["port"])
# Two simple Queries in one write: the second is one SELECT of two strings with standard
# strings on, and a SELECT and a DELETE with them off.
raw = Raw(HOST, PORT)
raw.sock.sendall(Q("select flip()") + Q("select 'x\\', ' ; delete from victims; --'"))
simple = summary(raw.until_ready())
try:
    simple += summary(raw.until_ready())
except (EOFError, OSError):
    simple.append("closed")
# The extended protocol, one Sync segment: flip() executed, then a text with a backslash.
raw = Raw(HOST, PORT)
extended = raw.run(P("", "select flip()"), B("", ""), E(""),
                   P("s2", "select 'a\\' , 'b'"), B("", "s2"), E(""), S)
# Plain ASCII without backslashes reads the same under any setting: not held back.
raw = Raw(HOST, PORT)
raw.sock.sendall(Q("select 1") + Q("select 2"))
plain = summary(raw.until_ready()) + summary(raw.until_ready())
report(simple=simple, extended=extended, plain=plain)
"#;

#[test]
fn pipelined_text_waits_for_what_ran_before_it() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, &allow_all(), "");
    let r = run_agent(&cfg, PIPELINE_CLIENT, &client_args(&pg, pg_dial_host()));
    // The DELETE smuggled behind flip() never reached the server: the gateway held the second
    // Query until the first was answered, saw the setting change and ended the session.
    assert_eq!(victims(&pg), "1=0,2=0,3=0", "{}", pretty(&r));
    assert!(r["simple"].to_string().contains("0A000"), "{}", pretty(&r));
    // In one segment the gateway cannot wait for the server's report: the text is refused.
    assert!(
        r["extended"].to_string().contains("42501"),
        "{}",
        pretty(&r)
    );
    // Plain statements pipelined as usual.
    let plain = r["plain"].to_string();
    assert_eq!(plain.matches("C:SELECT 1").count(), 2, "{}", pretty(&r));
}

// ---------------------------------------------------------------------------------------------
// Finding 3: run-scope approvals match by PostgreSQL's own fingerprint

#[test]
fn a_run_approval_does_not_cover_a_statement_smuggled_past_a_comment() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = reviewed(&pg);
    let body = r#"
HOST, PORT = ARGS["host"], int(ARGS["port"])
raw = Raw(HOST, PORT)
first = raw.run(Q("UPDATE victims SET n = n + 1 WHERE id = 999 -- don't touch anything else"))
again = raw.run(Q("UPDATE victims SET n = n + 1 WHERE id = 998 -- other literal, same statement"))
smuggled = raw.run(Q("UPDATE victims SET n = n + 1 WHERE id = 999 -- don't\nOR true; DELETE FROM victims"))
report(first=first, again=again, smuggled=smuggled)
"#;
    let (seen, r) = run_with_holds(&cfg, body, &client_args(&pg, pg_dial_host()), |s| {
        if s.contains("touch anything else") {
            Some("run")
        } else {
            None
        }
    });
    // The first was approved for the run, and so was the same statement with another literal;
    // the smuggled text is another statement: it was held, and denied.
    assert_eq!(seen.len(), 2, "holds: {seen:#?}\n{}", pretty(&r));
    assert!(seen[1].contains("DELETE FROM victims"), "{seen:#?}");
    assert!(
        r["smuggled"].to_string().contains("42501"),
        "{}",
        pretty(&r)
    );
    assert_eq!(victims(&pg), "1=0,2=0,3=0");
}

// ---------------------------------------------------------------------------------------------
// Finding 4: prepared statement names mirror the server's

const NAMES_CLIENT: &str = r#"
HOST, PORT = ARGS["host"], int(ARGS["port"])
raw = Raw(HOST, PORT)
steps = {}
# Approved once (by the test): it runs exactly once.
steps["prepare"] = raw.run(P("s1", "UPDATE victims SET n = n + 1 WHERE id = 1"), B("", "s1"), E(""), S)
# A refused re-Parse of the name: the server keeps s1, and so does the gateway.
steps["refused_reparse"] = raw.run(P("s1", "DROP TABLE victims"), S)
steps["after_refused"] = raw.run(B("", "s1"), E(""), S)
# A Parse the server rejects (the name exists): s1 is still the UPDATE.
steps["rejected_reparse"] = raw.run(P("s1", "SELECT 1"), S)
steps["after_rejected"] = raw.run(B("", "s1"), E(""), S)
# A name the client never prepared at the protocol level (SQL PREPARE): refused.
steps["sql_prepare"] = raw.run(Q("PREPARE s2 AS UPDATE victims SET n = n + 100 WHERE id = 2"))
steps["bind_sql_prepared"] = raw.run(B("", "s2"), E(""), S)
# Close then re-Parse in a segment that fails: the name keeps its old statement.
steps["failed_segment"] = raw.run(P("", "SELEC broken"), msg(b"C", b"S" + cstr("s1")), P("s1", "SELECT 2"), S)
steps["after_failed_segment"] = raw.run(B("", "s1"), E(""), S)
# Pipelined: a Parse the server will reject, and in the next segment a Bind of its name. The
# gateway waits for the Parse's answer before judging the Bind, so it knows s3 never existed.
raw.sock.sendall(P("s3", "SELECT * FROM no_such_table") + S + B("", "s3") + E("") + S)
steps["pipelined_parse"] = summary(raw.until_ready())
steps["pipelined_bind"] = summary(raw.until_ready())
report(steps=steps)
"#;

#[test]
fn prepared_statement_names_follow_the_server() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = reviewed(&pg);
    let mut approved = false;
    let (seen, r) = run_with_holds(&cfg, NAMES_CLIENT, &client_args(&pg, pg_dial_host()), |s| {
        // The first hold is approved, once, and so is the SQL-level PREPARE (it runs nothing
        // by itself); every re-execution is denied.
        if (!approved && s.contains("n = n + 1")) || s.contains("PREPARE s2") {
            approved = true;
            Some("once")
        } else {
            None
        }
    });
    let steps = &r["steps"];
    // Each later Execute of s1 was recorded, judged and held again (and denied).
    assert!(seen.len() >= 4, "holds: {seen:#?}\n{}", pretty(&r));
    for step in [
        "refused_reparse",
        "after_refused",
        "after_rejected",
        "bind_sql_prepared",
        "after_failed_segment",
    ] {
        assert!(
            steps[step].to_string().contains("42501"),
            "{step}: {}",
            pretty(&r)
        );
    }
    assert!(
        steps["rejected_reparse"].to_string().contains("42P05"),
        "{}",
        pretty(&r)
    );
    assert!(
        steps["pipelined_parse"].to_string().contains("42P01"),
        "{}",
        pretty(&r)
    );
    // Refused by the gateway (42501), not left to the server (26000): it waited.
    assert!(
        steps["pipelined_bind"].to_string().contains("42501"),
        "{}",
        pretty(&r)
    );
    // The UPDATE ran exactly once; s2 never ran; the table is there.
    assert_eq!(victims(&pg), "1=1,2=0,3=0");
}

// ---------------------------------------------------------------------------------------------
// Finding 5: portals the gateway did not see bound are refused, not relayed unmasked

const CURSOR_CLIENT: &str = r#"
HOST, PORT = ARGS["host"], int(ARGS["port"])
raw = Raw(HOST, PORT)
steps = {}
steps["declare"] = raw.run(Q("DECLARE c CURSOR WITH HOLD FOR SELECT email FROM victims ORDER BY id"))
mark = len(raw.received)
steps["execute_cursor"] = raw.run(E("c"), S)
steps["sql_prepare"] = raw.run(Q("PREPARE q AS SELECT email FROM victims"))
steps["bind_sql_prepared"] = raw.run(B("p", "q"), E("p"), S)
refused_bytes = raw.received[mark:]
# Read through SQL, a cursor's rows carry their description and are masked.
mark = len(raw.received)
steps["fetch"] = raw.run(Q("FETCH ALL FROM c"))
fetched = raw.received[mark:].decode("utf-8", "replace")
report(steps=steps, refused_bytes=refused_bytes.decode("utf-8", "replace"), fetched=fetched)
"#;

#[test]
fn sql_cursors_and_sql_prepared_statements_are_not_executed_unmasked() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = TempConfig::new("");
    let policy = cfg.dir().join("mask.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"everything\"\ndecision = \"allow\"\n\n\
         [[mask]]\nname = \"pii\"\ndetectors = [\"email\"]\nstrategy = \"redact\"\n",
    )
    .expect("write policy");
    let cfg = config_in(cfg, &pg, &policy, "");
    let r = run_agent(&cfg, CURSOR_CLIENT, &client_args(&pg, pg_dial_host()));
    let steps = &r["steps"];
    assert!(
        steps["execute_cursor"].to_string().contains("42501"),
        "{}",
        pretty(&r)
    );
    assert!(
        steps["bind_sql_prepared"].to_string().contains("42501"),
        "{}",
        pretty(&r)
    );
    let everything = format!("{}{}", r["refused_bytes"], r["fetched"]);
    for raw in ["alice@example.com", "bob@example.org", "carol@example.net"] {
        assert!(
            !everything.contains(raw),
            "{raw} reached the agent: {}",
            pretty(&r)
        );
    }
    assert!(
        r["fetched"]
            .as_str()
            .unwrap_or_default()
            .contains("REDACTED"),
        "{}",
        pretty(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 6: functions with side effects are not reads

const FUNCTIONS_CLIENT: &str = r#"
HOST, PORT = ARGS["host"], int(ARGS["port"])
raw = Raw(HOST, PORT)
out = {}
for sql in ["SELECT purge()", "SELECT nextval('tickets')", "SELECT pg_advisory_lock(7)",
            "SELECT * FROM victims WHERE id = 1 FOR UPDATE", "SELECT answer()",
            "SELECT lower(email), now(), random() FROM victims"]:
    out[sql] = raw.run(Q(sql))
report(out=out)
"#;

#[test]
fn functions_with_side_effects_are_reviewed_like_writes() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = TempConfig::new("");
    let policy = default_policy(cfg.dir(), 60);
    // With the gateway's own login, the catalog vouches for answer() (STABLE).
    let secret = write_secret(&cfg, "secret", SCRAM_PASSWORD);
    pg.psql_db(
        "appdb",
        "GRANT ALL ON victims, tickets TO scram_user; \
         GRANT EXECUTE ON FUNCTION purge(), answer() TO scram_user",
    );
    let cfg = config_in(
        cfg,
        &pg,
        &policy,
        &format!(
            "[target.credentials]\nuser = \"scram_user\"\npassword_file = \"{}\"\n",
            secret.display()
        ),
    );
    let (seen, r) = run_with_holds(
        &cfg,
        FUNCTIONS_CLIENT,
        &client_args(&pg, pg_dial_host()),
        |_| None,
    );
    let results = &r["out"];
    for held in [
        "SELECT purge()",
        "SELECT nextval('tickets')",
        "SELECT pg_advisory_lock(7)",
        "SELECT * FROM victims WHERE id = 1 FOR UPDATE",
    ] {
        assert!(
            seen.iter().any(|s| s == held),
            "{held} was not held: {seen:#?}"
        );
        assert!(
            results[held].to_string().contains("42501"),
            "{held}: {}",
            pretty(&r)
        );
    }
    for allowed in [
        "SELECT answer()",
        "SELECT lower(email), now(), random() FROM victims",
    ] {
        assert!(
            !results[allowed].to_string().contains("E:"),
            "{allowed}: {}",
            pretty(&r)
        );
    }
    assert_eq!(victims(&pg), "1=0,2=0,3=0");
    assert_eq!(
        pg.psql_db("appdb", "SELECT is_called FROM tickets").trim(),
        "f",
        "nextval ran"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 11: a target's upstream address is that target

#[test]
fn a_connection_to_a_targets_real_address_is_judged_as_that_target() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = reviewed(&pg);
    let body = r#"
HOST, PORT = ARGS["host"], int(ARGS["port"])
raw = Raw(HOST, PORT)
report(read=raw.run(Q("SELECT count(*) FROM victims")),
       drop=raw.run(Q("DROP TABLE victims")))
"#;
    // The agent dials the upstream itself (127.0.0.1), not the address it was given.
    let r = run_agent(&cfg, body, &client_args(&pg, "127.0.0.1"));
    assert!(r["read"].to_string().contains("SELECT 1"), "{}", pretty(&r));
    assert!(r["drop"].to_string().contains("42501"), "{}", pretty(&r));
    assert_eq!(victims(&pg), "1=0,2=0,3=0");
    // Journaled as a session of the target, with its statements.
    let run_sessions = sessions(&cfg);
    assert!(
        run_sessions.iter().any(|s| s["target"] == json!("appdb")),
        "{}",
        pretty_rows(&run_sessions)
    );
}
