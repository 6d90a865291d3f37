//! Admission control (`[limits]`) with real components: agents under `interceptor exec`, a
//! real PostgreSQL 15 behind the gateway ([`PgServer`], `max_connections = 60`), and the
//! journal read back with `sessions list` / `sessions show`.
//!
//! - Idle sockets that never finish their start-up hold no upstream slot, do not keep another
//!   agent out, and are closed by the start-up timeout.
//! - A uid at its limit is refused with SQLSTATE 53300 (and journaled), while another uid gets
//!   in, and a cancel request from the refused uid still reaches the server.
//! - The idle timeout closes a silent session, but not one whose statement runs long, nor one
//!   whose statement is held for approval.
//! - Values that would make the gate refuse everything are config errors with file:line:col,
//!   and an open-file limit too small for `max_sessions` stops `exec` before it starts.
//!
//! Every client is bounded in count and time, and talks to loopback only.

use std::time::Duration;

use interceptor_tests::*;

/// Bound for one exec run.
const RUN: Duration = Duration::from_secs(120);

/// uid of `nobody`, the agent that misbehaves.
const NOBODY: u32 = 65534;

/// `pg_config` plus a `[limits]` table (after the target, as its own table).
fn limits_config(pg: &PgServer, target_extra: &str, limits: &str) -> TempConfig {
    let cfg = TempConfig::new("");
    let text = pg_config_text(&cfg, pg.port(), target_extra);
    cfg.write(&format!("{text}\n[limits]\n{limits}"));
    cfg
}

/// The run's sessions once `n` of them are finished (bounded wait).
fn finished(cfg: &TempConfig, run_id: &str, n: usize) -> Vec<Value> {
    let rows = wait_sessions(cfg, Some(run_id), Duration::from_secs(30), |rows| {
        rows.len() >= n && rows.iter().all(session_finished)
    });
    assert!(
        rows.len() >= n && rows.iter().all(session_finished),
        "expected {n} finished sessions in run {run_id}, got {}\n{}",
        rows.len(),
        pretty_rows(&rows[..rows.len().min(20)])
    );
    rows
}

fn of_uid(rows: &[Value], uid: u32) -> Vec<&Value> {
    rows.iter().filter(|s| s["uid"] == json!(uid)).collect()
}

// ---------------------------------------------------------------------------------------------
// (a) idle sockets
// ---------------------------------------------------------------------------------------------

/// Forks an agent (uid nobody) that opens `count` connections to the target and says nothing,
/// then, while they are open, runs psql as root (another uid, the other agent) asking the real
/// server how many client backends it has. Then waits (bounded) for the gateway to close every
/// idle socket, noting how (EOF or reset) and when.
const IDLE_SOCKETS: &str = r#"
import resource, select, subprocess, time
A = json.loads(sys.argv[1])
host, port, count = A["host"], int(A["port"]), int(A["count"])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    try:
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        socks = [socket.create_connection((host, port), timeout=10) for _ in range(count)]
        opened = time.monotonic()
        os.write(w, (json.dumps({"opened": len(socks), "uid": os.getuid()}) + "\n").encode())
        poller = select.poll()
        by_fd = {}
        for s in socks:
            s.setblocking(False)
            by_fd[s.fileno()] = s
            poller.register(s.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        eof = reset = spoke = 0
        closes = []
        while by_fd and time.monotonic() < opened + 40:
            for fd, _ in poller.poll(500):
                s = by_fd.pop(fd, None)
                if s is None:
                    continue
                poller.unregister(fd)
                try:
                    if s.recv(64) == b"":
                        eof += 1
                    else:
                        spoke += 1
                except ConnectionResetError:
                    reset += 1
                closes.append(time.monotonic())
                s.close()
        os.write(w, (json.dumps({"eof": eof, "reset": reset, "spoke": spoke,
                                 "still_open": len(by_fd), "opened_at": opened,
                                 "closes": closes}) + "\n").encode())
    finally:
        os._exit(0)
os.close(w)
child = os.fdopen(r)
opened = json.loads(child.readline())
t0 = time.monotonic()
env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"}
q = subprocess.run([A["psql"], "-X", "-At", "-h", host, "-p", str(port), "-U", "agent",
                    "-d", "appdb", "-c",
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"],
                   capture_output=True, text=True, timeout=30, env=env)
psql_done = time.monotonic()
closed = json.loads(child.readline())
os.waitpid(pid, 0)
closes = closed.pop("closes")
at = closed.pop("opened_at")
closed.update(first_close=min(closes, default=None) and min(closes) - at,
              last_close=max(closes, default=None) and max(closes) - at,
              # Idle sockets still open when psql had its answer (monotonic: one clock for both).
              open_during_psql=sum(1 for c in closes if c > psql_done) + closed["still_open"])
report(opened=opened, psql_rc=q.returncode, psql_out=q.stdout.strip(),
       psql_err=q.stderr.strip(), psql_secs=psql_done - t0, closed=closed)
"#;

/// (a) One agent opens 1,000 connections to the PostgreSQL target and says nothing. Before,
/// each dialed the server at once: 60 of them filled its slots and everyone else was turned
/// away. Now none is dialed before its start-up, another agent's psql works meanwhile, and the
/// start-up timeout (2 s) closes every one, journaled with outcome `timeout`.
#[test]
fn a_thousand_idle_sockets_hold_no_upstream_slot_and_are_closed_by_the_startup_timeout() {
    require_root!();
    const COUNT: usize = 1000;
    let pg = PgServer::start();
    // Room for all of them, so that the start-up timeout, not a limit, is what closes them.
    let cfg = limits_config(
        &pg,
        "",
        "startup_timeout_secs = 2\nmax_sessions_per_uid = 2000\nmax_sessions_per_run = 2000\n",
    );
    let out = run_exec_timeout(
        &cfg,
        Some("root"),
        &python(IDLE_SOCKETS, &client_args(&pg, json!({ "count": COUNT }))),
        RUN,
    );
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    assert_eq!(r["opened"]["opened"], json!(COUNT), "{}", pretty(&r));
    assert_eq!(r["opened"]["uid"], json!(NOBODY), "{}", pretty(&r));

    // The other agent got in, and the server had one client backend: its own. Had the idle
    // sockets dialed, the server's 60 slots would have been gone.
    assert_eq!(r["psql_rc"], json!(0), "psql failed: {}", pretty(&r));
    assert_eq!(
        r["psql_out"],
        json!("1"),
        "client backends on the server while {COUNT} sockets sat idle: {}",
        pretty(&r)
    );
    // That proves something only if the idle sockets were there meanwhile: more of them than
    // the server has slots (all of them, unless this host is very slow).
    let closed = &r["closed"];
    assert!(
        closed["open_during_psql"].as_u64().unwrap_or(0) > 60,
        "psql ran while the idle sockets were open: {}",
        pretty(&r)
    );
    let first_close = closed["first_close"].as_f64().expect("closed at all");

    // Every idle socket was closed by the gateway (EOF or reset), none early, none spoken to.
    let eof = closed["eof"].as_u64().unwrap_or(0);
    let reset = closed["reset"].as_u64().unwrap_or(0);
    assert_eq!(eof + reset, COUNT as u64, "{}", pretty(&r));
    assert_eq!(closed["spoke"], json!(0), "{}", pretty(&r));
    assert_eq!(closed["still_open"], json!(0), "{}", pretty(&r));
    assert!(
        first_close >= 1.5,
        "closed before the 2 s start-up timeout: {}",
        pretty(&r)
    );
    let last_close = closed["last_close"].as_f64().expect("last_close");
    assert!(last_close < 20.0, "closed late: {}", pretty(&r));

    // Journaled, each with the timeout outcome and nothing relayed; psql's session closed.
    let run_id = r["run_id"].as_str().expect("run_id");
    let rows = finished(&cfg, run_id, COUNT + 1);
    let idle = of_uid(&rows, NOBODY);
    assert_eq!(idle.len(), COUNT, "idle sessions journaled");
    for s in &idle {
        assert_eq!(s["outcome"], json!("timeout"), "{}", pretty(s));
        assert_eq!(
            s["detail"],
            json!("start-up not completed within 2 s ([limits] startup_timeout_secs)"),
            "{}",
            pretty(s)
        );
        assert_eq!(s["target"], json!("appdb"), "{}", pretty(s));
        assert_eq!((&s["bytes_up"], &s["bytes_down"]), (&json!(0), &json!(0)));
    }
    let other = of_uid(&rows, 0);
    assert_eq!(
        other.len(),
        1,
        "{}",
        pretty_rows(&rows[..3.min(rows.len())])
    );
    assert_eq!(other[0]["outcome"], json!("closed"), "{}", pretty(other[0]));
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"),
        "0",
        "nothing left on the server"
    );
}

/// Sends a StartupMessage, then never answers the password request; reads until the gateway
/// closes, and reports the messages it got and when.
const OWES_PASSWORD: &str = r#"
import struct, time
A = json.loads(sys.argv[1])
s = socket.create_connection((A["host"], int(A["port"])), timeout=30)
body = struct.pack("!i", 196608) + b"user\0agent\0database\0appdb\0\0"
s.sendall(struct.pack("!i", len(body) + 4) + body)
started = time.monotonic()
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
elapsed = time.monotonic() - started
messages, at = [], 0
while at + 5 <= len(data):
    tag, n = chr(data[at]), struct.unpack("!i", data[at + 1:at + 5])[0]
    payload, at = data[at + 5:at + 1 + n], at + 1 + n
    if tag == "R":
        messages.append({"tag": tag, "code": struct.unpack("!i", payload[:4])[0]})
    elif tag == "E":
        fields = {chr(f[0]): f[1:].decode() for f in payload.split(b"\0") if f}
        messages.append({"tag": tag, "sqlstate": fields.get("C"), "message": fields.get("M")})
    else:
        messages.append({"tag": tag})
report(messages=messages, elapsed=elapsed)
"#;

/// (a) A client that sent its start-up packet but never the `local_auth` password it was asked
/// for is told why when the start-up timeout closes it (the protocol lets the server speak
/// there), and nothing reached the server.
#[test]
fn a_client_owing_its_local_password_is_told_why_when_the_startup_timeout_closes_it() {
    require_root!();
    let pg = PgServer::start();
    let cfg = TempConfig::new("");
    let secret = write_secret(&cfg, "secret", SCRAM_PASSWORD);
    let local = write_secret(&cfg, "local", "local-gate-pw");
    let target = format!(
        "[target.credentials]\nuser = \"scram_user\"\npassword_file = \"{}\"\n\
         [target.local_auth]\nmode = \"password\"\npassword_file = \"{}\"\n",
        secret.display(),
        local.display()
    );
    let text = pg_config_text(&cfg, pg.port(), &target);
    cfg.write(&format!("{text}\n[limits]\nstartup_timeout_secs = 2\n"));
    let out = run_python_exec(&cfg, None, OWES_PASSWORD, &client_args(&pg, json!({})), RUN);
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    assert_eq!(
        r["messages"],
        json!([
            { "tag": "R", "code": 3 },
            {
                "tag": "E",
                "sqlstate": "57014",
                "message": "interceptor: canceling authentication due to timeout: start-up not \
                            completed within 2 s ([limits] startup_timeout_secs)",
            },
        ]),
        "asked for a password, then told why: {}",
        pretty(&r)
    );
    let elapsed = r["elapsed"].as_f64().expect("elapsed");
    assert!((1.5..10.0).contains(&elapsed), "{}", pretty(&r));

    let rows = finished(&cfg, r["run_id"].as_str().expect("run_id"), 1);
    assert_eq!(rows.len(), 1, "{}", pretty_rows(&rows));
    let s = &rows[0];
    assert_eq!(s["outcome"], json!("timeout"), "{}", pretty(s));
    assert_eq!(
        s["bytes_up"],
        json!(0),
        "nothing reached the server: {}",
        pretty(s)
    );
    let auth = events_of_kind(&session_show(&cfg, s["id"].as_i64().expect("id")), "auth");
    assert_eq!(auth.len(), 1, "{}", pretty_rows(&auth));
}

// ---------------------------------------------------------------------------------------------
// (b) per-uid limit
// ---------------------------------------------------------------------------------------------

/// Python helpers of the asyncpg clients (asyncpg reports the SQLSTATE of a refused start-up):
/// `attempt(tls)` connects to the target at ARGS host/port as `agent` and reports how it
/// went; `unverified_tls()` is TLS with the gateway's local CA, unchecked (a context of its
/// own, so asyncpg does not look for client certificates in a HOME the agent cannot read).
const ASYNCPG: &str = r#"
import asyncio, ssl
import asyncpg
def unverified_tls():
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    return tls
def attempt(tls):
    async def connect():
        try:
            c = await asyncpg.connect(host=ARGS["host"], port=int(ARGS["port"]), user="agent",
                                      database="appdb", ssl=tls, timeout=10)
            await c.close()
            return {"ok": True}
        except Exception as e:
            return {"type": type(e).__name__, "sqlstate": getattr(e, "sqlstate", None),
                    "message": str(e)}
    return asyncio.run(connect())
"#;

/// A child as nobody holds LIMIT psycopg sessions, then tries one more (asyncpg, which reports
/// the SQLSTATE of a refused start-up; then psycopg, over TLS) and cancels a running statement
/// from one of its held sessions. The parent (root, another uid) connects while the child is
/// at its limit.
const PER_UID: &str = r#"
import threading, time
import psycopg
H, P, LIMIT = ARGS["host"], int(ARGS["port"]), int(ARGS["limit"])
def dsn(**kw):
    base = dict(host=H, port=P, dbname="appdb", user="agent", sslmode="disable",
                connect_timeout=10)
    base.update(kw)
    return conninfo(**base)
to_parent, from_child = os.pipe()
to_child, from_parent = os.pipe()
pid = os.fork()
if pid == 0:
    out = {}
    try:
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        held = [psycopg.connect(dsn(), autocommit=True) for _ in range(LIMIT)]
        for c in held:
            c.execute("SELECT 1")
        out["held"] = len(held)
        out["over"] = attempt(False)
        out["over_tls"] = attempt(unverified_tls())
        try:
            psycopg.connect(dsn()).close()
            out["over_psycopg"] = {"ok": True}
        except Exception as e:
            out["over_psycopg"] = err_info(e)
        # At its limit, the agent can still cancel its own statement.
        busy = held[0]
        threading.Timer(1.0, busy.cancel).start()
        started = time.monotonic()
        try:
            busy.execute("SELECT pg_sleep(30)")
            out["cancel"] = {"ok": "not cancelled"}
        except Exception as e:
            out["cancel"] = err_info(e)
        out["cancel_secs"] = time.monotonic() - started
        os.write(from_child, (json.dumps(out) + "\n").encode())
        os.read(to_child, 1)  # hold the sessions until the other agent is done
        for c in held:
            c.close()
    except Exception as e:
        os.write(from_child, (json.dumps({"child_error": err_info(e)}) + "\n").encode())
    finally:
        os._exit(0)
child = json.loads(os.fdopen(to_parent).readline())
try:
    with psycopg.connect(dsn(), autocommit=True) as c:
        other = {"ok": c.execute("SELECT 'in'").fetchone()[0]}
except Exception as e:
    other = err_info(e)
os.write(from_parent, b"x")
os.waitpid(pid, 0)
report(child=child, other=other)
"#;

/// (b) With `max_sessions_per_uid = 5`, the sixth concurrent session of one uid is refused
/// with SQLSTATE 53300 naming the limit, seen by real clients (plaintext and TLS) and
/// journaled as refused, while another uid still gets in. A cancel request from the refused
/// uid is still forwarded.
#[test]
fn a_uid_at_its_limit_is_refused_with_53300_while_another_uid_gets_in() {
    require_root!();
    const LIMIT: usize = 5;
    let pg = PgServer::start();
    let cfg = limits_config(&pg, "", &format!("max_sessions_per_uid = {LIMIT}\n"));
    let out = run_venv_python_exec(
        &cfg,
        Some("root"),
        &format!("{ASYNCPG}\n{PER_UID}"),
        &client_args(&pg, json!({ "limit": LIMIT })),
        RUN,
    );
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    let child = &r["child"];
    assert_eq!(child["held"], json!(LIMIT), "{}", pretty(&r));
    let message = format!(
        "interceptor: too many sessions for uid {NOBODY}: [limits] max_sessions_per_uid is {LIMIT}"
    );
    for attempt in ["over", "over_tls"] {
        let e = &child[attempt];
        assert_eq!(e["sqlstate"], json!("53300"), "{attempt}: {}", pretty(&r));
        assert_eq!(
            e["type"],
            json!("TooManyConnectionsError"),
            "{}",
            pretty(&r)
        );
        assert_eq!(e["message"], json!(message), "{attempt}: {}", pretty(&r));
    }
    assert!(
        child["over_psycopg"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&message)),
        "psycopg shows the reason: {}",
        pretty(&r)
    );
    assert_eq!(
        child["cancel"]["sqlstate"],
        json!("57014"),
        "{}",
        pretty(&r)
    );
    assert!(
        child["cancel_secs"].as_f64().unwrap_or(99.0) < 15.0,
        "{}",
        pretty(&r)
    );
    assert_eq!(r["other"], json!({ "ok": "in" }), "{}", pretty(&r));

    // Journaled: LIMIT sessions served, three refused with the reason, the cancel request
    // served (a session of its own), and root's session.
    let run_id = r["run_id"].as_str().expect("run_id");
    let rows = finished(&cfg, run_id, LIMIT + 3 + 1 + 1);
    let nobody = of_uid(&rows, NOBODY);
    let refused: Vec<_> = nobody
        .iter()
        .filter(|s| s["outcome"] == json!("refused"))
        .collect();
    assert_eq!(refused.len(), 3, "{}", pretty_rows(&rows));
    for s in &refused {
        assert_eq!(
            s["detail"],
            json!(message.trim_start_matches("interceptor: ")),
            "{}",
            pretty(s)
        );
        assert_eq!(
            s["bytes_up"],
            json!(0),
            "nothing went upstream: {}",
            pretty(s)
        );
    }
    let closed = nobody
        .iter()
        .filter(|s| s["outcome"] == json!("closed"))
        .count();
    assert_eq!(
        closed,
        LIMIT + 1,
        "held sessions and the cancel: {}",
        pretty_rows(&rows)
    );
    let cancels: Vec<Value> = nobody
        .iter()
        .flat_map(|s| events_of_kind(&session_show(&cfg, s["id"].as_i64().expect("id")), "cancel"))
        .collect();
    assert_eq!(cancels.len(), 1, "{}", pretty_rows(&cancels));
    let root = of_uid(&rows, 0);
    assert_eq!(root.len(), 1, "{}", pretty_rows(&rows));
    assert_eq!(root[0]["outcome"], json!("closed"), "{}", pretty(root[0]));
}

/// A client refused by the connection policy is told why after its start-up packet, over TLS
/// when it asked for TLS, like a client over a limit; it counts against no limit.
#[test]
fn a_connection_refused_by_policy_is_told_why_over_tls() {
    require_root!();
    let pg = PgServer::start();
    let cfg = TempConfig::new("");
    let policy = cfg.dir().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"nobody-stays-out\"\ndecision = \"deny\"\n\
         message = \"nobody may not reach appdb\"\n[rule.match]\nkinds = [\"connect\"]\n\
         users = [\"65534\"]\n\n[[rule]]\nname = \"the-rest\"\ndecision = \"allow\"\n",
    )
    .expect("write policy");
    let text = pg_config_text(
        &cfg,
        pg.port(),
        &format!("policy = \"{}\"\n", policy.display()),
    );
    cfg.write(&format!("{text}\n[limits]\nmax_sessions_per_uid = 1\n"));
    let client = format!(
        "{ASYNCPG}\nreport(first=attempt(unverified_tls()), second=attempt(unverified_tls()))"
    );
    let out = run_venv_python_exec(
        &cfg,
        Some("nobody"),
        &client,
        &client_args(&pg, json!({})),
        RUN,
    );
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    // Twice: policy refusals hold no place, so a limit of 1 never comes into it.
    for attempt in ["first", "second"] {
        assert_eq!(
            r[attempt],
            json!({
                "type": "ClientCannotConnectError",
                "sqlstate": "08001",
                "message": "interceptor: target \"appdb\" is unavailable: nobody may not reach appdb",
            }),
            "{attempt}: {}",
            pretty(&r)
        );
    }
    let rows = finished(&cfg, r["run_id"].as_str().expect("run_id"), 2);
    for s in &rows {
        assert_eq!(s["outcome"], json!("refused"), "{}", pretty(s));
        assert_eq!(
            s["detail"],
            json!("nobody may not reach appdb"),
            "{}",
            pretty(s)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (c) idle timeout
// ---------------------------------------------------------------------------------------------

/// Session `idle` authenticates, then says nothing for 5 s and tries again; session `busy`
/// runs a 4 s statement (no byte either way meanwhile) and stays.
const IDLE: &str = r#"
import threading, time
import psycopg
H, P = ARGS["host"], int(ARGS["port"])
def dsn():
    return conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable",
                    connect_timeout=10, application_name=threading.current_thread().name)
out = {}
def idle():
    c = psycopg.connect(dsn(), autocommit=True)
    c.execute("SELECT 1")
    time.sleep(5)
    try:
        c.execute("SELECT 2")
        out["idle"] = {"ok": True}
    except Exception as e:
        out["idle"] = err_info(e)
def busy():
    with psycopg.connect(dsn(), autocommit=True) as c:
        c.execute("SELECT pg_sleep(4)")
        out["busy"] = {"ok": c.execute("SELECT 'still here'").fetchone()[0]}
threads = [threading.Thread(target=f, name=f.__name__) for f in (idle, busy)]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
report(**out)
"#;

/// (c) With `idle_timeout_secs = 2`, an authenticated session that says nothing is closed,
/// told so as PostgreSQL says it (57P05), and journaled with outcome `timeout`; a session whose
/// statement runs longer than that is busy, not idle.
#[test]
fn the_idle_timeout_closes_a_silent_session_but_not_a_long_statement() {
    require_root!();
    let pg = PgServer::start();
    let cfg = limits_config(&pg, "", "idle_timeout_secs = 2\n");
    let out = run_venv_python_exec(&cfg, None, IDLE, &client_args(&pg, json!({})), RUN);
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    assert_eq!(
        r["idle"],
        json!({
            "type": "IdleSessionTimeout",
            "sqlstate": "57P05",
            "message": "interceptor: terminating connection due to idle-session timeout: no \
                        traffic for 2 s ([limits] idle_timeout_secs)",
        }),
        "the idle session was closed, and told why: {}",
        pretty(&r)
    );
    assert_eq!(r["busy"], json!({ "ok": "still here" }), "{}", pretty(&r));

    let run_id = r["run_id"].as_str().expect("run_id");
    let rows = finished(&cfg, run_id, 2);
    let timeouts: Vec<_> = rows
        .iter()
        .filter(|s| s["outcome"] == json!("timeout"))
        .collect();
    assert_eq!(timeouts.len(), 1, "{}", pretty_rows(&rows));
    assert_eq!(
        timeouts[0]["detail"],
        json!("idle: no traffic for 2 s ([limits] idle_timeout_secs)"),
        "{}",
        pretty(timeouts[0])
    );
    let statements = events_of_kind(
        &session_show(&cfg, timeouts[0]["id"].as_i64().expect("id")),
        "statement",
    );
    assert_eq!(
        statements.len(),
        1,
        "only SELECT 1 ran on the idle session: {}",
        pretty_rows(&statements)
    );
    assert_eq!(
        rows.iter()
            .filter(|s| s["outcome"] == json!("closed"))
            .count(),
        1,
        "{}",
        pretty_rows(&rows)
    );
}

/// (c) A statement held for approval longer than the idle timeout is not idle: approved after
/// twice the timeout, it runs and the session ends normally.
#[test]
fn a_statement_held_for_approval_is_not_idle() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE acct (id int, bal int); INSERT INTO acct VALUES (1, 100); \
         GRANT ALL ON acct TO PUBLIC",
    );
    let cfg = TempConfig::new("");
    let policy = format!(
        "policy = \"{}\"\n",
        workspace_root().join("policies/default.toml").display()
    );
    let text = pg_config_text(&cfg, pg.port(), &policy);
    cfg.write(&format!(
        "{text}\n[approvals]\nsocket = \"{}\"\n\n[limits]\nidle_timeout_secs = 2\n",
        cfg.dir().join("control.sock").display()
    ));
    let argv = psql_agent_argv(&pg, &["UPDATE acct SET bal = bal + 1 WHERE id = 1"]);
    let agent = Spawned::spawn(exec_cmd(&cfg, Some("nobody"), &argv), "agent", false);
    let approvals = |args: &[&str]| {
        let mut cmd = interceptor_cmd(Some(&cfg));
        cmd.arg("approvals").args(args);
        run_command(cmd, Duration::from_secs(30))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let id = loop {
        let out = approvals(&["list", "--json"]);
        let listed: Option<Value> = serde_json::from_str(&out.stdout).ok();
        if let Some(id) = listed
            .as_ref()
            .and_then(|v| v.get(0))
            .and_then(|r| r["id"].as_str())
        {
            break id.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing held: {}",
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Twice the idle timeout, with no byte either way.
    std::thread::sleep(Duration::from_secs(4));
    let out = approvals(&["approve", &id, "--reason", "fine"]);
    assert!(out.success(), "{}", out.describe());
    let done = agent.wait(Duration::from_secs(30));
    assert!(done.success(), "{}", done.describe());
    assert_eq!(
        pg.psql_db("appdb", "SELECT bal FROM acct WHERE id = 1"),
        "101"
    );
    let rows = wait_sessions(&cfg, None, Duration::from_secs(15), |rows| {
        !rows.is_empty() && rows.iter().all(session_finished)
    });
    assert_eq!(rows.len(), 1, "{}", pretty_rows(&rows));
    assert_eq!(rows[0]["outcome"], json!("closed"), "{}", pretty(&rows[0]));
}

// ---------------------------------------------------------------------------------------------
// (d) configuration
// ---------------------------------------------------------------------------------------------

/// (d) Zero limits and timeouts, and `max_message_bytes = 0`, are refused by `config check`
/// and by `exec` with the file, line and column of the value; nothing starts.
#[test]
fn zero_limits_and_a_zero_message_size_are_config_errors_with_their_position() {
    require_root!();
    let cases = [
        (
            "[limits]\nmax_sessions = 0\n",
            ":2:16: max_sessions = 0 is out of range: give 1 to 1000000",
        ),
        (
            "[limits]\nmax_sessions_per_uid = 0\n",
            ":2:24: max_sessions_per_uid = 0 is out of range",
        ),
        (
            "[limits]\nstartup_timeout_secs = 0\n",
            ":2:24: startup_timeout_secs = 0 is out of range: give 1 to 600",
        ),
        (
            "[limits]\nidle_timeout_secs = 0\n",
            ":2:21: idle_timeout_secs = 0 is out of range",
        ),
        (
            "[[target]]\nname = \"db\"\nprotocol = \"postgres\"\nintercept = [\"*:5432\"]\n\
             max_message_bytes = 0\n",
            ":5:21: max_message_bytes = 0 is out of range: give at least 10000",
        ),
        (
            "[[target]]\nname = \"db\"\nmax_message_bytes = 100\n",
            ":3:21: max_message_bytes = 100 is out of range: give at least 10000",
        ),
    ];
    for (text, expected) in cases {
        let cfg = TempConfig::raw(&format!("[journal]\npath = \"{{journal}}\"\n{text}"));
        let shifted = {
            // Two lines of [journal] come first.
            let (line, rest) = expected[1..].split_once(':').expect("line");
            format!(":{}:{rest}", line.parse::<usize>().expect("line") + 2)
        };
        let wanted = format!("{}{shifted}", cfg.path.display());
        let mut check = interceptor_cmd(Some(&cfg));
        check.args(["config", "check"]);
        let out = run_command(check, Duration::from_secs(30));
        assert_eq!(out.code(), Some(2), "config check: {}", out.describe());
        assert!(
            out.stderr.contains(&wanted),
            "wanted {wanted:?}\n{}",
            out.describe()
        );

        let out = run_exec_timeout(&cfg, None, &["/bin/true"], Duration::from_secs(30));
        assert_eq!(out.code(), Some(125), "exec: {}", out.describe());
        assert!(
            out.stderr.contains(&wanted),
            "wanted {wanted:?}\n{}",
            out.describe()
        );
        assert!(!cfg.journal.exists(), "nothing started: {}", out.describe());
    }
}

/// (d) An open-file limit that cannot hold an explicit `max_sessions` (two descriptors each,
/// plus 512) stops `exec` naming both numbers; the default limit is lowered instead, with a
/// warning.
#[test]
fn exec_refuses_a_max_sessions_the_open_file_limit_cannot_hold() {
    require_root!();
    let under_limit = |cfg: &TempConfig| {
        // `ulimit -n` sets the soft and the hard limit, so the gateway cannot raise it.
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.current_dir("/")
            .arg("-c")
            .arg(r#"ulimit -n 1024 && exec "$@""#)
            .arg("sh")
            .arg(interceptor_bin())
            .arg("--config")
            .arg(&cfg.path)
            .args(["exec", "--", "/bin/true"]);
        run_command(cmd, Duration::from_secs(60))
    };
    let cfg = TempConfig::new("[limits]\nmax_sessions = 1000\n");
    let out = under_limit(&cfg);
    assert_eq!(out.code(), Some(125), "{}", out.describe());
    assert!(
        out.stderr.contains(
            "the open-file limit (RLIMIT_NOFILE) is 1024, but [limits] max_sessions = 1000 \
             needs 2512 descriptors (2 per session + 512)"
        ) && out.stderr.contains("lower max_sessions to 256 or less"),
        "{}",
        out.describe()
    );
    assert!(!cfg.journal.exists(), "nothing started: {}", out.describe());

    let cfg = TempConfig::new("");
    let out = under_limit(&cfg);
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stderr
            .contains("the open-file limit holds only 256 sessions"),
        "warned: {}",
        out.describe()
    );
}
