//! The PostgreSQL gateway (`protocol = "postgres"`): real clients (psql, psycopg 3, asyncpg,
//! SQLAlchemy) run under `interceptor exec` and dial `127.0.0.2:<port>`, where nothing listens;
//! the target relays to the real server on `127.0.0.1:<port>` ([`PgServer`]). Each test checks
//! what the client got and what the journal (`sessions list` / `sessions show`) recorded.
//!
//! Contract assumed here (see the config keys in `pg_config` and the issue):
//! - `sessions show ID --json` → `{"session": {...as in list...}, "events": [{seq, ts, kind,
//!   statement, decision, rule, result}, …]}`; kind "statement" for each simple Query and each
//!   Parse; `result` = `{tag, rows, duration_ms, sqlstate, error}` once known.
//! - With `[target.credentials]` the client's own user/password are ignored and the real
//!   password never reaches the journal, the CLI output or the agent's environment.

use std::{fs, os::unix::fs::PermissionsExt, time::Duration};

use interceptor_tests::*;

/// Bound for one client run under exec.
const RUN: Duration = Duration::from_secs(90);

/// Common Python helpers of the gateway clients: `dsn(**overrides)` for psycopg (agent, appdb,
/// sslmode=disable, at ARGS host/port).
const GW_PRELUDE: &str = r#"
import time, threading
H, P = ARGS["host"], int(ARGS["port"])
def dsn(**kw):
    base = dict(host=H, port=P, dbname="appdb", user="agent", sslmode="disable",
                connect_timeout=10)
    base.update(kw)
    return conninfo(**base)
"#;

/// Runs a venv Python client (GW_PRELUDE + code) under exec.
fn run_client(cfg: &TempConfig, code: &str, args: &[String]) -> Output {
    run_venv_python_exec(cfg, None, &format!("{GW_PRELUDE}\n{code}"), args, RUN)
}

/// Asserts the exec run succeeded and returns the client's JSON report.
fn client_ok(out: &Output) -> Value {
    assert!(
        out.success(),
        "client under exec failed\n{}",
        out.describe()
    );
    let r = out.json();
    assert!(
        r["run_id"].as_str().is_some_and(|s| !s.is_empty()),
        "INTERCEPTOR_RUN_ID not set: {}",
        pretty(&r)
    );
    r
}

/// The run's sessions once all are finished (bounded wait), asserting at least one exists.
fn finished_sessions(cfg: &TempConfig, run_id: &str) -> Vec<Value> {
    let rows = wait_sessions(cfg, Some(run_id), Duration::from_secs(15), |rows| {
        !rows.is_empty() && rows.iter().all(session_finished)
    });
    assert!(
        !rows.is_empty() && rows.iter().all(session_finished),
        "sessions of run {run_id} not all finished\n{}",
        pretty_rows(&rows)
    );
    rows
}

/// The run's sessions on target `appdb`, each checked for protocol and target.
fn appdb_sessions(cfg: &TempConfig, run_id: &str) -> Vec<Value> {
    let rows: Vec<Value> = finished_sessions(cfg, run_id)
        .into_iter()
        .filter(|s| s["target"] == json!("appdb"))
        .collect();
    assert!(
        !rows.is_empty(),
        "no session on target appdb for run {run_id}\n{}",
        pretty_rows(&sessions(cfg))
    );
    for s in &rows {
        assert_eq!(s["protocol"], json!("postgres"), "{}", pretty(s));
        assert!(
            s["original_dst"]
                .as_str()
                .is_some_and(|d| d.starts_with("127.0.0.2:")),
            "{}",
            pretty(s)
        );
    }
    rows
}

fn session_id(s: &Value) -> i64 {
    s["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("session id: {}", pretty(s)))
}

/// Statement events of every appdb session of the run, in session then journal order.
fn all_statements(cfg: &TempConfig, run_id: &str) -> Vec<Value> {
    appdb_sessions(cfg, run_id)
        .iter()
        .flat_map(|s| events_of_kind(&session_show(cfg, session_id(s)), "statement"))
        .collect()
}

fn statement_text(e: &Value) -> String {
    e["statement"].as_str().unwrap_or_default().to_owned()
}

/// Every statement in `wanted` (by substring) occurs among `events`, in that order.
fn assert_statements_in_order(events: &[Value], wanted: &[&str]) {
    let mut from = 0;
    for w in wanted {
        match events[from..]
            .iter()
            .position(|e| statement_text(e).contains(w))
        {
            Some(i) => from += i + 1,
            None => panic!(
                "statement containing {w:?} not journaled (in order)\n{}",
                pretty_rows(events)
            ),
        }
    }
}

/// The session has an outcome other than "closed", or an event of kind auth / error.
fn assert_failure_recorded(cfg: &TempConfig, run_id: &str, what: &str) {
    let rows = finished_sessions(cfg, run_id);
    let appdb: Vec<&Value> = rows
        .iter()
        .filter(|s| s["target"] == json!("appdb"))
        .collect();
    assert!(
        !appdb.is_empty(),
        "{what}: no appdb session journaled\n{}",
        pretty_rows(&rows)
    );
    let recorded = appdb.iter().any(|s| {
        s["outcome"] != json!("closed") || {
            let show = session_show(cfg, session_id(s));
            !events_of_kind(&show, "auth").is_empty() || !events_of_kind(&show, "error").is_empty()
        }
    });
    assert!(
        recorded,
        "{what}: journal shows no failure (outcome closed, no auth/error event)\n{}\n{}",
        pretty_rows(&rows),
        appdb
            .iter()
            .map(|s| pretty(&session_show(cfg, session_id(s))))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 1. psql
// ---------------------------------------------------------------------------------------------

#[test]
fn psql_simple_queries() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    let conn = format!(
        "host=127.0.0.2 port={} dbname=appdb user=agent sslmode=disable connect_timeout=10",
        pg.port()
    );
    let psql = psql_bin().display().to_string();
    let argv = [
        psql.as_str(),
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        &conn,
        "-c",
        "SELECT 1",
        "-c",
        "SELECT 'inter' || 'ceptor'",
        "-c",
        "CREATE TABLE p (i int, t text)",
        "-c",
        "INSERT INTO p SELECT g, 'row' || g FROM generate_series(1, 500) g",
        "-c",
        "SELECT count(*), sum(i) FROM p",
        "-c",
        "SELECT current_user, inet_server_port()",
    ];
    let out = run_exec_timeout(&cfg, None, &argv, RUN);
    assert!(out.success(), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "1",
            "interceptor",
            "500|125250",
            &format!("agent|{}", pg.port())
        ],
        "{}",
        out.describe()
    );
    // The server really has the table (the queries went upstream, not somewhere else).
    assert_eq!(pg.psql_db("appdb", "SELECT count(*) FROM p"), "500");

    let rows = sessions(&cfg);
    let run_id = rows
        .iter()
        .find_map(|s| s["run_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no session journaled\n{}", pretty_rows(&rows)));
    let appdb = appdb_sessions(&cfg, &run_id);
    assert_eq!(appdb.len(), 1, "{}", pretty_rows(&appdb));
    assert_eq!(
        appdb[0]["outcome"],
        json!("closed"),
        "{}",
        pretty(&appdb[0])
    );
    assert_eq!(
        appdb[0]["upstream"],
        json!(pg.addr()),
        "{}",
        pretty(&appdb[0])
    );
    let stmts = events_of_kind(&session_show(&cfg, session_id(&appdb[0])), "statement");
    assert_statements_in_order(
        &stmts,
        &[
            "SELECT 1",
            "SELECT 'inter' || 'ceptor'",
            "CREATE TABLE p",
            "INSERT INTO p",
            "SELECT count(*), sum(i) FROM p",
        ],
    );
}

/// argv[1]: JSON {host, port, psql, rows}. Writes a ~10 MB COPY text file, `\copy` it in, then
/// `\copy` the table back out ordered by id; reports the md5 of both files.
const COPY_CLIENT: &str = r#"
import hashlib, random, shutil, subprocess, tempfile
rows = int(ARGS["rows"])
d = tempfile.mkdtemp(prefix="pgcopy-")
try:
    src, back = os.path.join(d, "in.tsv"), os.path.join(d, "out.tsv")
    rnd = random.Random(20261128)
    with open(src, "w") as f:
        for i in range(1, rows + 1):
            f.write("%d\t%s\n" % (i, rnd.randbytes(60).hex()))
    conn = "host=%s port=%d dbname=appdb user=agent sslmode=disable connect_timeout=10" % (H, P)
    def psql(*cmds):
        argv = [ARGS["psql"], "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", conn]
        for c in cmds:
            argv += ["-c", c]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise SystemExit("psql failed: %r\n%s\n%s" % (cmds, r.stdout, r.stderr))
        return r.stdout
    psql("CREATE TABLE big (id int PRIMARY KEY, payload text NOT NULL)")
    t0 = time.monotonic()
    psql("\\copy big FROM '%s'" % src)
    t1 = time.monotonic()
    psql("\\copy (SELECT id, payload FROM big ORDER BY id) TO '%s'" % back)
    t2 = time.monotonic()
    count = psql("SELECT count(*) FROM big").strip()
    md5 = lambda p: hashlib.md5(open(p, "rb").read()).hexdigest()
    report(size_in=os.path.getsize(src), size_out=os.path.getsize(back),
           md5_in=md5(src), md5_out=md5(back), count=int(count),
           copy_in_s=t1 - t0, copy_out_s=t2 - t1)
finally:
    shutil.rmtree(d, ignore_errors=True)
"#;

#[test]
fn psql_copy_in_and_out_10mb() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    let rows = 80_000; // 80k × ~127 bytes ≈ 10 MB
    let out = run_client(&cfg, COPY_CLIENT, &client_args(&pg, json!({"rows": rows})));
    let r = client_ok(&out);
    assert!(
        r["size_in"].as_u64().unwrap_or(0) >= 10_000_000,
        "{}",
        pretty(&r)
    );
    assert_eq!(r["count"], json!(rows), "{}", pretty(&r));
    assert_eq!(r["size_out"], r["size_in"], "{}", pretty(&r));
    assert_eq!(
        r["md5_out"],
        r["md5_in"],
        "exported data differs: {}",
        pretty(&r)
    );
    assert_eq!(
        pg.psql_db("appdb", "SELECT count(*) FROM big"),
        rows.to_string()
    );
    let run_id = r["run_id"].as_str().unwrap();
    let appdb = appdb_sessions(&cfg, run_id);
    // psql runs: CREATE, copy in, copy out, count.
    assert_eq!(appdb.len(), 4, "{}", pretty_rows(&appdb));
    for s in &appdb {
        assert_eq!(s["outcome"], json!("closed"), "{}", pretty(s));
    }
    let up: u64 = appdb.iter().filter_map(|s| s["bytes_up"].as_u64()).sum();
    let down: u64 = appdb.iter().filter_map(|s| s["bytes_down"].as_u64()).sum();
    assert!(up >= 10_000_000, "bytes_up {up} < 10 MB copied in");
    assert!(down >= 10_000_000, "bytes_down {down} < 10 MB copied out");
}

// ---------------------------------------------------------------------------------------------
// 2. psycopg 3
// ---------------------------------------------------------------------------------------------

const PSYCOPG_CLIENT: &str = r#"
import psycopg
res = {}
with psycopg.connect(dsn(), autocommit=True) as conn:
    # Extended protocol with parameters, text and binary.
    res["params"] = list(conn.execute("SELECT %s::int + %s::int, %s::text, %s::numeric",
                                      (2, 3, "x'y\"z", "1.25")).fetchone())
    res["params"][2] = str(res["params"][2])
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT %s::int8 * 2, %s::bytea", (21, b"\x00\xffab"))
        a, b = cur.fetchone()
        res["binary"] = [a, bytes(b).hex()]
    # Prepared statements, executed several times.
    res["prepared"] = [conn.execute("SELECT %s::int * 10", (i,), prepare=True).fetchone()[0]
                       for i in range(8)]
    res["server_prepared"] = conn.execute(
        "SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    # Pipeline mode.
    conn.execute("CREATE TABLE pl (i int, t text)")
    with conn.pipeline():
        for i in range(50):
            conn.execute("INSERT INTO pl VALUES (%s, %s)", (i, "v%d" % i))
        cur = conn.execute("SELECT count(*), sum(i) FROM pl")
        cur2 = conn.execute("SELECT t FROM pl WHERE i = %s", (49,))
    res["pipeline"] = list(cur.fetchone())
    res["pipeline_t"] = cur2.fetchone()[0]
    # A 100k-row result.
    with conn.cursor() as cur:
        cur.execute("SELECT g, 'r' || g FROM generate_series(1, 100000) g")
        rows = cur.fetchall()
    res["big_count"] = len(rows)
    res["big_sum"] = sum(r[0] for r in rows)
    res["big_text_ok"] = all(t == "r%d" % g for g, t in rows)
    res["big_ordered"] = [r[0] for r in rows[:3]] + [rows[-1][0]]
report(**res)
"#;

#[test]
fn psycopg_extended_prepared_pipeline_and_large_result() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    let out = run_client(&cfg, PSYCOPG_CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(r["params"], json!([5, "x'y\"z", "1.25"]), "{}", pretty(&r));
    assert_eq!(r["binary"], json!([42, "00ff6162"]), "{}", pretty(&r));
    assert_eq!(
        r["prepared"],
        json!([0, 10, 20, 30, 40, 50, 60, 70]),
        "{}",
        pretty(&r)
    );
    assert!(
        r["server_prepared"].as_i64().unwrap_or(0) >= 1,
        "prepare=True left no named statement on the server: {}",
        pretty(&r)
    );
    assert_eq!(r["pipeline"], json!([50, 1225]), "{}", pretty(&r));
    assert_eq!(r["pipeline_t"], json!("v49"), "{}", pretty(&r));
    assert_eq!(r["big_count"], json!(100_000), "{}", pretty(&r));
    assert_eq!(r["big_sum"], json!(5_000_050_000u64), "{}", pretty(&r));
    assert_eq!(r["big_text_ok"], json!(true), "{}", pretty(&r));
    assert_eq!(
        r["big_ordered"],
        json!([1, 2, 3, 100_000]),
        "{}",
        pretty(&r)
    );

    let run_id = r["run_id"].as_str().unwrap();
    let appdb = appdb_sessions(&cfg, run_id);
    assert_eq!(appdb.len(), 1, "{}", pretty_rows(&appdb));
    assert_eq!(
        appdb[0]["outcome"],
        json!("closed"),
        "{}",
        pretty(&appdb[0])
    );
    let stmts = all_statements(&cfg, run_id);
    assert_statements_in_order(
        &stmts,
        &[
            "SELECT $1::int + $2::int",
            "* 10",
            "CREATE TABLE pl",
            "INSERT INTO pl",
            "generate_series(1, 100000)",
        ],
    );
    let gs = stmts
        .iter()
        .find(|e| statement_text(e).contains("generate_series(1, 100000)"))
        .unwrap();
    assert_eq!(gs["result"]["rows"], json!(100_000), "{}", pretty(gs));
    assert_eq!(
        gs["result"]["tag"],
        json!("SELECT 100000"),
        "{}",
        pretty(gs)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. asyncpg
// ---------------------------------------------------------------------------------------------

const ASYNCPG_CLIENT: &str = r#"
import asyncio, datetime
import asyncpg
UTC = datetime.timezone.utc
async def main():
    conn = await asyncpg.connect(host=H, port=P, user="agent", database="appdb",
                                 ssl=False, timeout=10)
    try:
        stmt = await conn.prepare(
            "SELECT $1::int8 AS a, $2::float8 AS b, $3::timestamptz AS c, $4::bytea[] AS d, "
            "$1::int8 / 2 AS e", name="interceptor_named_stmt")
        cases = [
            (9223372036854775807, 1.5, datetime.datetime(2024, 2, 29, 23, 59, 59, 123456, UTC),
             [b"", b"\x00\xff", b"abc"]),
            (-9223372036854775808, -1e308, datetime.datetime(1999, 12, 31, 0, 0, tzinfo=UTC),
             [b"\x00" * 1000]),
            (0, 0.1, datetime.datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC), []),
        ]
        mismatches = []
        for a, b, c, d in cases:
            row = await stmt.fetchrow(a, b, c, d)
            got = (row["a"], row["b"], row["c"], list(row["d"]), row["e"])
            half = abs(a) // 2 if a >= 0 else -(abs(a) // 2)  # int8 division truncates
            want = (a, b, c, d, half)
            if got != want:
                mismatches.append({"got": repr(got), "want": repr(want)})
        names = [r["name"] for r in await conn.fetch("SELECT name FROM pg_prepared_statements")]
        rows = await conn.fetch(
            "SELECT i::int8 AS i, (i * 1.5)::float8 AS f, "
            "'2024-01-01T00:00:00Z'::timestamptz + i * interval '1 second' AS t, "
            "ARRAY[int8send(i::int8), ''::bytea] AS arr "
            "FROM generate_series(1, 2000) i ORDER BY i")
        base = datetime.datetime(2024, 1, 1, tzinfo=UTC)
        bad_rows = [r["i"] for r in rows
                    if r["f"] != r["i"] * 1.5
                    or r["t"] != base + datetime.timedelta(seconds=r["i"])
                    or list(r["arr"]) != [r["i"].to_bytes(8, "big", signed=True), b""]]
        many = await conn.fetchval("SELECT count(*) FROM generate_series(1, 10)")
        return {"mismatches": mismatches, "named": "interceptor_named_stmt" in names,
                "rows": len(rows), "bad_rows": bad_rows[:10], "many": many}
    finally:
        await conn.close()
report(**asyncio.run(asyncio.wait_for(main(), 60)))
"#;

#[test]
fn asyncpg_named_statements_and_binary_results() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    let out = run_client(&cfg, ASYNCPG_CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(r["mismatches"], json!([]), "{}", pretty(&r));
    assert_eq!(
        r["named"],
        json!(true),
        "named statement missing: {}",
        pretty(&r)
    );
    assert_eq!(r["rows"], json!(2000), "{}", pretty(&r));
    assert_eq!(r["bad_rows"], json!([]), "{}", pretty(&r));
    assert_eq!(r["many"], json!(10), "{}", pretty(&r));
    let run_id = r["run_id"].as_str().unwrap();
    let appdb = appdb_sessions(&cfg, run_id);
    assert_eq!(
        appdb[0]["outcome"],
        json!("closed"),
        "{}",
        pretty(&appdb[0])
    );
    assert_statements_in_order(
        &all_statements(&cfg, run_id),
        &["$4::bytea[]", "pg_prepared_statements", "int8send"],
    );
}

// ---------------------------------------------------------------------------------------------
// 4. SQLAlchemy
// ---------------------------------------------------------------------------------------------

const SQLALCHEMY_CLIENT: &str = r#"
from sqlalchemy import create_engine, select, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, Session
class Base(DeclarativeBase):
    pass
class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    qty: Mapped[int]
engine = create_engine("postgresql+psycopg://agent@%s:%d/appdb?sslmode=disable" % (H, P),
                       connect_args={"connect_timeout": 10})
Base.metadata.create_all(engine)
with Session(engine) as s:
    s.add_all([Item(name="item-%d" % i, qty=i * 3) for i in range(1, 21)])
    s.commit()
with Session(engine) as s:
    names = [i.name for i in s.scalars(select(Item).where(Item.qty > 30).order_by(Item.id))]
    total = s.scalar(select(func.sum(Item.qty)))
    it = s.get(Item, 5)
    it.qty = 1000
    s.commit()
    updated = s.get(Item, 5).qty  # reloaded after the commit
engine.dispose()
report(names=names, total=total, updated=updated)
"#;

#[test]
fn sqlalchemy_orm_session() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    let out = run_client(&cfg, SQLALCHEMY_CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    let want: Vec<String> = (11..=20).map(|i| format!("item-{i}")).collect();
    assert_eq!(r["names"], json!(want), "{}", pretty(&r));
    assert_eq!(r["total"], json!(630), "{}", pretty(&r));
    assert_eq!(r["updated"], json!(1000), "{}", pretty(&r));
    assert_eq!(
        pg.psql_db("appdb", "SELECT count(*), max(qty) FROM items"),
        "20|1000"
    );
    let run_id = r["run_id"].as_str().unwrap();
    for s in appdb_sessions(&cfg, run_id) {
        assert_eq!(s["outcome"], json!("closed"), "{}", pretty(&s));
    }
    assert_statements_in_order(
        &all_statements(&cfg, run_id),
        &["CREATE TABLE items", "INSERT INTO items", "FROM items"],
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Credentials injected by the gateway; client auth passing through
// ---------------------------------------------------------------------------------------------

/// Connects with a bogus user/password; reports current_user, or the error, and the whole
/// environment of the agent.
const CRED_CLIENT: &str = r#"
import psycopg
res = {"env": dict(os.environ)}
try:
    with psycopg.connect(dsn(user="whatever", password="nonsense"), autocommit=True) as conn:
        res["user"] = conn.execute("SELECT current_user").fetchone()[0]
        res["db"] = conn.execute("SELECT current_database()").fetchone()[0]
        res["one"] = conn.execute("SELECT %s::int", (1,)).fetchone()[0]
        res["ok"] = True
except Exception as e:
    res["ok"] = False
    res["error"] = err_info(e)
report(**res)
"#;

/// The secret occurs nowhere the agent or an operator can read it from the gateway.
fn assert_secret_not_leaked(cfg: &TempConfig, out: &Output, secret: &str) {
    assert!(
        !out.stdout.contains(secret) && !out.stderr.contains(secret),
        "the real password leaked to the exec's output or the agent's environment\n{}",
        out.describe()
    );
    assert!(
        !bytes_contain(&journal_bytes(cfg), secret.as_bytes()),
        "the real password is in the journal files"
    );
    for s in sessions(cfg) {
        assert!(!s.to_string().contains(secret), "sessions list leaks it");
        let raw = session_show_raw(cfg, session_id(&s));
        assert!(!raw.contains(secret), "sessions show leaks it:\n{raw}");
    }
}

fn credentials_case(user: &str, password: &str) {
    let pg = PgServer::start();
    let cfg = TempConfig::new("");
    let secret = write_secret(&cfg, "secret", password);
    cfg.write(&pg_config_text(
        &cfg,
        pg.port(),
        &format!(
            "[target.credentials]\nuser = \"{user}\"\npassword_file = \"{}\"\n",
            secret.display()
        ),
    ));
    let out = run_client(&cfg, CRED_CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(r["ok"], json!(true), "{}", pretty(&r));
    assert_eq!(r["user"], json!(user), "{}", pretty(&r));
    assert_eq!(r["db"], json!("appdb"), "{}", pretty(&r));
    assert_eq!(r["one"], json!(1), "{}", pretty(&r));
    let run_id = r["run_id"].as_str().unwrap();
    let appdb = appdb_sessions(&cfg, run_id);
    assert_eq!(
        appdb[0]["outcome"],
        json!("closed"),
        "{}",
        pretty(&appdb[0])
    );
    assert_secret_not_leaked(&cfg, &out, password);
}

#[test]
fn credentials_scram_injected_and_never_leaked() {
    require_root!();
    credentials_case("scram_user", SCRAM_PASSWORD);
}

#[test]
fn credentials_md5_injected_and_never_leaked() {
    require_root!();
    credentials_case("md5_user", MD5_PASSWORD);
}

/// `password_env`: the gateway reads the variable from its own environment, and the agent
/// (started by the same exec) must not inherit it.
#[test]
fn credentials_from_env_are_not_passed_to_the_agent() {
    require_root!();
    let pg = PgServer::start();
    let cfg = TempConfig::new("");
    cfg.write(&pg_config_text(
        &cfg,
        pg.port(),
        "[target.credentials]\nuser = \"scram_user\"\npassword_env = \"INTERCEPTOR_TEST_PG_SECRET\"\ndatabase = \"appdb\"\n",
    ));
    let argv = venv_python_argv(
        &format!("{GW_PRELUDE}\n{CRED_CLIENT}"),
        &client_args(&pg, json!({})),
    );
    let mut cmd = exec_cmd(&cfg, None, &argv);
    cmd.env("INTERCEPTOR_TEST_PG_SECRET", SCRAM_PASSWORD);
    let out = run_command(cmd, RUN);
    let r = client_ok(&out);
    assert_eq!(r["ok"], json!(true), "{}", pretty(&r));
    assert_eq!(r["user"], json!("scram_user"), "{}", pretty(&r));
    assert!(
        r["env"].get("INTERCEPTOR_TEST_PG_SECRET").is_none(),
        "the agent inherited the credential variable: {}",
        pretty(&r["env"])
    );
    assert_secret_not_leaked(&cfg, &out, SCRAM_PASSWORD);
}

#[test]
fn credentials_wrong_password_fails_auth_and_is_journaled() {
    require_root!();
    let pg = PgServer::start();
    for (user, label) in [("scram_user", "scram"), ("md5_user", "md5")] {
        let wrong = format!("wrong-{label}-Pw-0a9b8c7d");
        let cfg = TempConfig::new("");
        let secret = write_secret(&cfg, "secret", &wrong);
        cfg.write(&pg_config_text(
            &cfg,
            pg.port(),
            &format!(
                "[target.credentials]\nuser = \"{user}\"\npassword_file = \"{}\"\n",
                secret.display()
            ),
        ));
        let out = run_client(&cfg, CRED_CLIENT, &client_args(&pg, json!({})));
        let r = client_ok(&out);
        assert_eq!(r["ok"], json!(false), "{label}: {}", pretty(&r));
        assert_eq!(
            r["error"]["type"],
            json!("OperationalError"),
            "{label}: {}",
            pretty(&r)
        );
        let msg = r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            msg.contains("authentication"),
            "{label}: error should mention authentication failure: {}",
            pretty(&r)
        );
        assert_failure_recorded(&cfg, r["run_id"].as_str().unwrap(), label);
        assert_secret_not_leaked(&cfg, &out, &wrong);
    }
}

/// Without `[target.credentials]` the client's own password auth (SCRAM and MD5) reaches the
/// server: right passwords work, wrong ones fail with the server's message.
const PASSTHROUGH_CLIENT: &str = r#"
import psycopg
res = {}
for name, user, pw in [("scram", "scram_user", ARGS["scram_pw"]), ("md5", "md5_user", ARGS["md5_pw"]),
                       ("scram_wrong", "scram_user", "bad-password"),
                       ("md5_wrong", "md5_user", "bad-password")]:
    try:
        with psycopg.connect(dsn(user=user, password=pw)) as conn:
            res[name] = {"ok": True, "user": conn.execute("SELECT current_user").fetchone()[0]}
    except Exception as e:
        res[name] = {"ok": False, "error": err_info(e)}
report(**res)
"#;

#[test]
fn client_password_auth_passes_through_without_credentials() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    let out = run_client(
        &cfg,
        PASSTHROUGH_CLIENT,
        &client_args(
            &pg,
            json!({"scram_pw": SCRAM_PASSWORD, "md5_pw": MD5_PASSWORD}),
        ),
    );
    let r = client_ok(&out);
    assert_eq!(
        r["scram"],
        json!({"ok": true, "user": "scram_user"}),
        "{}",
        pretty(&r)
    );
    assert_eq!(
        r["md5"],
        json!({"ok": true, "user": "md5_user"}),
        "{}",
        pretty(&r)
    );
    for name in ["scram_wrong", "md5_wrong"] {
        assert_eq!(r[name]["ok"], json!(false), "{}", pretty(&r));
        assert!(
            r[name]["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("password authentication failed"),
            "{name}: {}",
            pretty(&r)
        );
    }
    // The client's passwords never land in the journal.
    let journal = journal_bytes(&cfg);
    assert!(!bytes_contain(&journal, SCRAM_PASSWORD.as_bytes()));
    assert!(!bytes_contain(&journal, MD5_PASSWORD.as_bytes()));
}

// ---------------------------------------------------------------------------------------------
// 6. TLS to the upstream
// ---------------------------------------------------------------------------------------------

const SSL_CLIENT: &str = r#"
import psycopg
res = {}
try:
    kw = {}
    if ARGS.get("user"):
        kw = {"user": ARGS["user"], "password": ARGS.get("password")}
    with psycopg.connect(dsn(**kw), autocommit=True) as conn:
        res["upstream_ssl"] = conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
        res["one"] = conn.execute("SELECT 1").fetchone()[0]
        res["ok"] = True
except Exception as e:
    res["ok"] = False
    res["error"] = err_info(e)
report(**res)
"#;

#[test]
fn upstream_tls_verify_full_with_test_ca() {
    require_root!();
    let pg = PgServer::start_with_tls();
    let cfg = pg_config(
        &pg,
        &format!(
            "[target.tls]\nmode = \"verify-full\"\nca_file = \"{}\"\n",
            pg.ca_path().display()
        ),
    );
    let out = run_client(&cfg, SSL_CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(r["ok"], json!(true), "{}", pretty(&r));
    assert_eq!(
        r["upstream_ssl"],
        json!(true),
        "upstream not TLS: {}",
        pretty(&r)
    );
    let run_id = r["run_id"].as_str().unwrap();
    assert_eq!(appdb_sessions(&cfg, run_id)[0]["outcome"], json!("closed"));

    // SCRAM passing through over a TLS upstream (the server also offers SCRAM-SHA-256-PLUS).
    let out = run_client(
        &cfg,
        SSL_CLIENT,
        &client_args(
            &pg,
            json!({"user": "scram_user", "password": SCRAM_PASSWORD}),
        ),
    );
    let r = client_ok(&out);
    assert_eq!(r["ok"], json!(true), "{}", pretty(&r));
    assert_eq!(r["upstream_ssl"], json!(true), "{}", pretty(&r));
}

#[test]
fn upstream_tls_with_credentials() {
    require_root!();
    let pg = PgServer::start_with_tls();
    let cfg = TempConfig::new("");
    let secret = write_secret(&cfg, "secret", SCRAM_PASSWORD);
    cfg.write(&pg_config_text(
        &cfg,
        pg.port(),
        &format!(
            "[target.credentials]\nuser = \"scram_user\"\npassword_file = \"{}\"\n\
             [target.tls]\nmode = \"verify-full\"\nca_file = \"{}\"\nserver_name = \"localhost\"\n",
            secret.display(),
            pg.ca_path().display()
        ),
    ));
    let out = run_client(
        &cfg,
        SSL_CLIENT,
        &client_args(&pg, json!({"user": "x", "password": "y"})),
    );
    let r = client_ok(&out);
    assert_eq!(r["ok"], json!(true), "{}", pretty(&r));
    assert_eq!(r["upstream_ssl"], json!(true), "{}", pretty(&r));
    assert_secret_not_leaked(&cfg, &out, SCRAM_PASSWORD);
}

#[test]
fn upstream_tls_wrong_ca_is_refused_and_journaled() {
    require_root!();
    let pg = PgServer::start_with_tls();
    let cfg = pg_config(
        &pg,
        &format!(
            "[target.tls]\nmode = \"verify-full\"\nca_file = \"{}\"\n",
            pg.wrong_ca_path().display()
        ),
    );
    let out = run_client(&cfg, SSL_CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(
        r["ok"],
        json!(false),
        "connected through an unverifiable upstream: {}",
        pretty(&r)
    );
    let msg = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        ["certificate", "tls", "ssl"]
            .iter()
            .any(|w| msg.contains(w)),
        "error should mention the certificate / TLS: {}",
        pretty(&r)
    );
    assert_failure_recorded(&cfg, r["run_id"].as_str().unwrap(), "wrong CA");
}

// ---------------------------------------------------------------------------------------------
// 7. TLS between the agent and the gateway (local CA)
// ---------------------------------------------------------------------------------------------

const LOCAL_TLS_CLIENT: &str = r#"
import psycopg
res = {}
try:
    kw = {"sslmode": ARGS["sslmode"]}
    if ARGS.get("sslrootcert"):
        kw["sslrootcert"] = ARGS["sslrootcert"]
    with psycopg.connect(dsn(**kw), autocommit=True) as conn:
        res["ssl_in_use"] = bool(conn.pgconn.ssl_in_use)
        res["one"] = conn.execute("SELECT %s::int", (1,)).fetchone()[0]
        res["ok"] = True
except Exception as e:
    res["ok"] = False
    res["error"] = err_info(e)
report(**res)
"#;

#[test]
fn local_tls_require_and_verify_full_with_local_ca() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");

    let out = run_client(
        &cfg,
        LOCAL_TLS_CLIENT,
        &client_args(&pg, json!({"sslmode": "require"})),
    );
    let r = client_ok(&out);
    assert_eq!(r["ok"], json!(true), "{}", pretty(&r));
    assert_eq!(r["ssl_in_use"], json!(true), "{}", pretty(&r));
    assert_eq!(r["one"], json!(1));

    let ca = state_dir(&cfg).join("ca.pem");
    let ca_pem = fs::read_to_string(&ca)
        .unwrap_or_else(|e| panic!("local CA {} not created: {e}", ca.display()));
    assert!(
        ca_pem.contains("BEGIN CERTIFICATE"),
        "not a PEM certificate"
    );
    assert!(
        !ca_pem.contains("PRIVATE KEY"),
        "{} holds a private key: it is handed to agents",
        ca.display()
    );
    // `interceptor ca pem` prints the same certificate, for operators to hand out.
    let printed = run_command(
        {
            let mut c = interceptor_cmd(Some(&cfg));
            c.args(["ca", "pem"]);
            c
        },
        Duration::from_secs(30),
    );
    assert!(printed.success(), "{}", printed.describe());
    assert_eq!(printed.stdout, ca_pem);
    // A world-readable copy, in case the agent runs as $SUDO_USER and cannot read <state>.
    let copy = cfg.dir().join("local-ca.pem");
    fs::write(&copy, &ca_pem).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();

    let out = run_client(
        &cfg,
        LOCAL_TLS_CLIENT,
        &client_args(
            &pg,
            json!({"sslmode": "verify-full", "sslrootcert": copy.display().to_string()}),
        ),
    );
    let r = client_ok(&out);
    assert_eq!(
        r["ok"],
        json!(true),
        "verify-full against <state>/ca.pem for host 127.0.0.2: {}",
        pretty(&r)
    );
    assert_eq!(r["ssl_in_use"], json!(true), "{}", pretty(&r));
    // The local CA persists across runs.
    assert_eq!(
        fs::read_to_string(&ca).unwrap(),
        ca_pem,
        "the local CA changed between runs"
    );

    // And a CA the gateway did not use is refused by the client.
    let out = run_client(
        &cfg,
        LOCAL_TLS_CLIENT,
        &client_args(
            &pg,
            json!({"sslmode": "verify-full", "sslrootcert": wrong_ca_file(&cfg)}),
        ),
    );
    let r = client_ok(&out);
    assert_eq!(r["ok"], json!(false), "{}", pretty(&r));
}

/// An unrelated CA, readable by any user, in the config's temp dir.
fn wrong_ca_file(cfg: &TempConfig) -> String {
    let dir = cfg.dir().join("wrong-ca");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    make_test_ca(&dir, "ca", "unrelated CA")
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// 8. Cancel
// ---------------------------------------------------------------------------------------------

const CANCEL_CLIENT: &str = r#"
import psycopg
res = {}
conn = psycopg.connect(dsn(), autocommit=True)
t0 = time.monotonic()
def run():
    try:
        conn.execute("SELECT pg_sleep(30)")
        res["outcome"] = "finished"
    except psycopg.errors.QueryCanceled as e:
        res["outcome"] = "canceled"
        res["error"] = err_info(e)
    except Exception as e:
        res["outcome"] = "error"
        res["error"] = err_info(e)
    res["ended"] = time.monotonic()
th = threading.Thread(target=run, daemon=True)
th.start()
time.sleep(1)
tc = time.monotonic()
conn.cancel()
th.join(timeout=20)
res["since_cancel"] = res.get("ended", time.monotonic()) - tc
res["total"] = res.get("ended", time.monotonic()) - t0
try:
    res["after"] = conn.execute("SELECT 42").fetchone()[0]
except Exception as e:
    res["after_error"] = err_info(e)
res.pop("ended", None)
report(**res)
conn.close()
"#;

#[test]
fn cancel_request_interrupts_a_running_query() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    let out = run_client(&cfg, CANCEL_CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(r["outcome"], json!("canceled"), "{}", pretty(&r));
    assert_eq!(r["error"]["sqlstate"], json!("57014"), "{}", pretty(&r));
    let total = r["total"].as_f64().unwrap_or(f64::MAX);
    assert!(
        total < 10.0,
        "query ended {total:.1}s after start (cancel after 1 s): {}",
        pretty(&r)
    );
    assert!(
        r["since_cancel"].as_f64().unwrap_or(f64::MAX) < 5.0,
        "cancel took too long: {}",
        pretty(&r)
    );
    assert_eq!(
        r["after"],
        json!(42),
        "connection unusable after cancel: {}",
        pretty(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Statement journal
// ---------------------------------------------------------------------------------------------

const PARAM_SECRET: &str = "zz-param-4f1d9c7e2b-value";

const JOURNAL_CLIENT: &str = r#"
import psycopg
res = {}
with psycopg.connect(dsn(), autocommit=True) as conn:
    res["one"] = conn.execute("SELECT 1").fetchone()[0]
    conn.execute("INSERT INTO j (v) VALUES (%s)", (ARGS["secret"],))
    try:
        conn.execute("SELECT * FROM no_such_table")
        res["missing"] = "no error"
    except psycopg.errors.UndefinedTable as e:
        res["missing"] = e.sqlstate
report(**res)
"#;

#[test]
fn statements_and_results_are_journaled_without_parameter_values() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db("appdb", "CREATE TABLE j (v text); GRANT ALL ON j TO PUBLIC");
    let cfg = pg_config(&pg, "");
    let out = run_client(
        &cfg,
        JOURNAL_CLIENT,
        &client_args(&pg, json!({"secret": PARAM_SECRET})),
    );
    let r = client_ok(&out);
    assert_eq!(r["one"], json!(1), "{}", pretty(&r));
    assert_eq!(r["missing"], json!("42P01"), "{}", pretty(&r));
    assert_eq!(pg.psql_db("appdb", "SELECT v FROM j"), PARAM_SECRET);

    let run_id = r["run_id"].as_str().unwrap();
    let appdb = appdb_sessions(&cfg, run_id);
    assert_eq!(appdb.len(), 1, "{}", pretty_rows(&appdb));
    let id = session_id(&appdb[0]);

    // Results may be recorded just after the statement: poll (bounded) until all three have one.
    let find = |events: &[Value], pred: &dyn Fn(&str) -> bool| -> Option<(usize, Value)> {
        events
            .iter()
            .enumerate()
            .find(|(_, e)| pred(statement_text(e).trim()))
            .map(|(i, e)| (i, e.clone()))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (show, stmts) = loop {
        let show = session_show(&cfg, id);
        let stmts = events_of_kind(&show, "statement");
        let done = [
            find(&stmts, &|s| s == "SELECT 1"),
            find(&stmts, &|s| s.starts_with("INSERT INTO j")),
            find(&stmts, &|s| s.contains("no_such_table")),
        ]
        .iter()
        .all(|f| f.as_ref().is_some_and(|(_, e)| e["result"].is_object()));
        if done || std::time::Instant::now() >= deadline {
            break (show, stmts);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let ctx = pretty(&show);
    assert_eq!(show["session"]["id"], json!(id), "{ctx}");
    assert_eq!(show["session"]["target"], json!("appdb"), "{ctx}");
    assert_eq!(show["session"]["protocol"], json!("postgres"), "{ctx}");

    // Events are in order (seq increasing).
    let seqs: Vec<i64> = show["events"]
        .as_array()
        .unwrap_or_else(|| panic!("events is not an array\n{ctx}"))
        .iter()
        .map(|e| e["seq"].as_i64().unwrap_or_else(|| panic!("seq\n{ctx}")))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events not in seq order\n{ctx}"
    );

    let (i1, sel) = find(&stmts, &|s| s == "SELECT 1").unwrap_or_else(|| panic!("{ctx}"));
    let (i2, ins) =
        find(&stmts, &|s| s.starts_with("INSERT INTO j")).unwrap_or_else(|| panic!("{ctx}"));
    let (i3, bad) =
        find(&stmts, &|s| s.contains("no_such_table")).unwrap_or_else(|| panic!("{ctx}"));
    assert!(i1 < i2 && i2 < i3, "statement order\n{ctx}");
    for e in [&sel, &ins, &bad] {
        assert_eq!(e["decision"], json!("allow"), "{}", pretty(e));
        // The protocol tests run under the shipped journal-only policy.
        assert_eq!(e["rule"], json!("journal-only"), "{}", pretty(e));
        assert!(
            e["ts"].as_str().is_some_and(|t| !t.is_empty()),
            "{}",
            pretty(e)
        );
        assert!(e["result"].is_object(), "no result: {}", pretty(e));
        assert!(
            e["result"]["duration_ms"]
                .as_f64()
                .is_some_and(|d| d >= 0.0),
            "duration_ms: {}",
            pretty(e)
        );
    }
    assert_eq!(sel["result"]["tag"], json!("SELECT 1"), "{}", pretty(&sel));
    assert_eq!(sel["result"]["rows"], json!(1), "{}", pretty(&sel));
    assert!(sel["result"]["sqlstate"].is_null(), "{}", pretty(&sel));
    assert!(sel["result"]["error"].is_null(), "{}", pretty(&sel));
    assert_eq!(
        ins["result"]["tag"],
        json!("INSERT 0 1"),
        "{}",
        pretty(&ins)
    );
    assert_eq!(ins["result"]["rows"], json!(1), "{}", pretty(&ins));
    assert_eq!(
        bad["result"]["sqlstate"],
        json!("42P01"),
        "{}",
        pretty(&bad)
    );
    assert!(
        bad["result"]["error"]
            .as_str()
            .is_some_and(|m| m.contains("no_such_table")),
        "{}",
        pretty(&bad)
    );

    // The parameter value went to the server but is nowhere in the journal.
    assert!(
        !bytes_contain(&journal_bytes(&cfg), PARAM_SECRET.as_bytes()),
        "a bound parameter value is stored in the journal"
    );
    assert!(!session_show_raw(&cfg, id).contains(PARAM_SECRET));
}

// ---------------------------------------------------------------------------------------------
// 10. Malformed input
// ---------------------------------------------------------------------------------------------

const MALFORMED_CLIENT: &str = r#"
import struct, psycopg
def startup(user):
    body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0appdb\0\0"
    return struct.pack("!I", len(body) + 4) + body
def drain(s, limit=10.0):
    """Reads until EOF/reset or `limit` seconds; returns what happened."""
    data = b""
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return {"closed": False, "n": len(data), "first": data[:1].decode("latin1")}
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return {"closed": True, "reset": True, "n": len(data),
                    "first": data[:1].decode("latin1")}
        if not chunk:
            return {"closed": True, "n": len(data), "first": data[:1].decode("latin1")}
        data += chunk
def read_until_ready(s, limit=10.0):
    """After a startup: reads backend messages until ReadyForQuery; returns the types seen."""
    buf = b""
    types = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        while len(buf) >= 5:
            t = buf[:1]
            n = struct.unpack("!I", buf[1:5])[0]
            if len(buf) < 1 + n:
                break
            types.append(t.decode("latin1"))
            buf = buf[1 + n:]
            if t == b"Z":
                return types
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
    raise SystemExit("no ReadyForQuery after startup: %r" % types)
def conn():
    s = socket.create_connection((H, P), timeout=10)
    return s
def safe_send(s, b):
    try:
        s.sendall(b)
        return True
    except OSError:
        return False
res = {}
t0 = time.monotonic()
# (a) startup length 2 (< 4)
s = conn(); safe_send(s, b"\x00\x00\x00\x02"); res["short_len"] = drain(s); s.close()
# (b) startup claiming 2^31-1 bytes
s = conn(); safe_send(s, struct.pack("!II", 2**31 - 1, 196608) + b"user\0"); res["huge_len"] = drain(s); s.close()
# (c) unknown message type after a good startup
s = conn(); safe_send(s, startup("agent")); res["handshake"] = read_until_ready(s)
safe_send(s, b"\x01" + struct.pack("!I", 8) + b"abcd"); res["unknown_type"] = drain(s); s.close()
# (d) truncated startup, then half-close
s = conn(); safe_send(s, struct.pack("!I", 8) + b"\x00\x03"); s.shutdown(socket.SHUT_WR)
res["truncated"] = drain(s); s.close()
res["elapsed"] = time.monotonic() - t0
# The gateway still serves.
with psycopg.connect(dsn(), autocommit=True) as c:
    res["after"] = c.execute("SELECT 'still serving'").fetchone()[0]
report(**res)
"#;

#[test]
fn malformed_input_closes_the_connection_and_gateway_keeps_serving() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    let out = run_client(&cfg, MALFORMED_CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(
        r["handshake"].as_array().and_then(|a| a.last()),
        Some(&json!("Z")),
        "{}",
        pretty(&r)
    );
    for case in ["short_len", "huge_len", "unknown_type", "truncated"] {
        let c = &r[case];
        assert_eq!(
            c["closed"],
            json!(true),
            "{case}: connection not closed within 10 s: {}",
            pretty(&r)
        );
        // Before closing, the gateway may send an ErrorResponse, and nothing else.
        let first = c["first"].as_str().unwrap_or_default();
        assert!(
            first.is_empty() || first == "E",
            "{case}: unexpected reply before close: {}",
            pretty(&r)
        );
    }
    assert_eq!(r["after"], json!("still serving"), "{}", pretty(&r));
    let run_id = r["run_id"].as_str().unwrap();
    let rows = finished_sessions(&cfg, run_id);
    assert!(
        rows.iter().any(|s| s["outcome"] == json!("closed")),
        "{}",
        pretty_rows(&rows)
    );
}

/// `max_message_bytes`: a message larger than the limit ends that connection (possibly with an
/// ErrorResponse); small messages and other connections keep working.
const OVERSIZED_CLIENT: &str = r#"
import psycopg
res = {}
try:
    with psycopg.connect(dsn(), autocommit=True) as c:
        res["small"] = c.execute("SELECT 1").fetchone()[0]
        c.execute("SELECT length(%s)", ("x" * 300000,)).fetchone()
        res["big"] = "accepted"
except Exception as e:
    res["big"] = "refused"
    res["error"] = err_info(e)
with psycopg.connect(dsn(), autocommit=True) as c:
    res["after"] = c.execute("SELECT 2").fetchone()[0]
report(**res)
"#;

#[test]
fn oversized_message_is_refused() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "max_message_bytes = 65536\n");
    let out = run_client(&cfg, OVERSIZED_CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(r["small"], json!(1), "{}", pretty(&r));
    assert_eq!(r["big"], json!("refused"), "{}", pretty(&r));
    assert_eq!(r["after"], json!(2), "{}", pretty(&r));
}

// ---------------------------------------------------------------------------------------------
// 11. Bad configs
// ---------------------------------------------------------------------------------------------

/// `exec` with this config must refuse to start: non-zero exit, the command never runs, and
/// stderr names the config file, the offending key (one of `keys`, the key or its table, by
/// name or as `file:LINE:` of the line that sets it, the config module's `file:line:column`
/// style), every entry of `needles`, and (if `reasons` is not empty) one of `reasons`.
fn assert_refused(cfg: &TempConfig, keys: &[&str], needles: &[&str], reasons: &[&str]) {
    let marker = "COMMAND-RAN-7f3e";
    let out = run_exec_timeout(
        cfg,
        None,
        &["/bin/sh", "-c", &format!("echo {marker}")],
        Duration::from_secs(30),
    );
    let text = fs::read_to_string(&cfg.path).unwrap_or_default();
    let ctx = format!("config:\n{text}\n{}", out.describe());
    assert!(!out.timed_out, "{ctx}");
    assert!(!out.status.success(), "accepted a bad config\n{ctx}");
    assert!(!out.stdout.contains(marker), "the command ran\n{ctx}");
    let stderr = out.stderr.to_lowercase();
    let file = cfg.path.display().to_string();
    assert!(
        out.stderr.contains(&file),
        "stderr should name the config file\n{ctx}"
    );
    let key_lines: Vec<String> = keys
        .iter()
        .filter_map(|key| {
            text.lines()
                .position(|l| {
                    let l = l.trim_start();
                    l.strip_prefix(key)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
                .map(|i| format!("{file}:{}:", i + 1))
        })
        .collect();
    assert!(
        keys.iter().any(|k| stderr.contains(&k.to_lowercase()))
            || key_lines.iter().any(|kl| out.stderr.contains(kl)),
        "stderr should name the key, one of {keys:?} (or its line, {key_lines:?})\n{ctx}"
    );
    for n in needles {
        assert!(
            stderr.contains(&n.to_lowercase()),
            "stderr should mention {n:?}\n{ctx}"
        );
    }
    if !reasons.is_empty() {
        assert!(
            reasons.iter().any(|r| stderr.contains(&r.to_lowercase())),
            "stderr should give a reason (one of {reasons:?})\n{ctx}"
        );
    }
}

/// `[journal]` plus one target named appdb with `body` (no `[state]`: none of the bad
/// configs need it, so each is refused for its own reason only).
fn target_text(cfg: &TempConfig, body: &str) -> String {
    format!(
        "{}\n[[target]]\nname = \"appdb\"\n{body}\n",
        cfg.journal_section()
    )
}

#[test]
fn bad_configs_are_refused_at_startup() {
    require_root!();
    // Unknown protocol.
    let cfg = TempConfig::new("");
    cfg.write(&target_text(
        &cfg,
        "protocol = \"mysqlx\"\nintercept = [\"127.0.0.2:5432\"]\nupstream = \"127.0.0.1:5432\"",
    ));
    assert_refused(&cfg, &["protocol"], &["mysqlx"], &[]);

    // password_file that does not exist.
    let cfg = TempConfig::new("");
    let missing = cfg.dir().join("no-such-secret");
    cfg.write(&target_text(
        &cfg,
        &format!(
            "protocol = \"postgres\"\nintercept = [\"127.0.0.2:5432\"]\nupstream = \"127.0.0.1:5432\"\n\
             [target.credentials]\nuser = \"scram_user\"\npassword_file = \"{}\"",
            missing.display()
        ),
    ));
    assert_refused(
        &cfg,
        &["password_file", "credentials"],
        &[&missing.display().to_string()],
        &[
            "no such file",
            "not found",
            "does not exist",
            "missing",
            "cannot read",
            "can't read",
            "could not read",
            "unreadable",
        ],
    );

    // intercept entry that is not an address.
    let cfg = TempConfig::new("");
    cfg.write(&target_text(
        &cfg,
        "protocol = \"postgres\"\nintercept = [\"not-an-address\"]\nupstream = \"127.0.0.1:5432\"",
    ));
    assert_refused(&cfg, &["intercept"], &["not-an-address"], &[]);
}

/// `[target.local_auth] mode = "password"`: with credentials injected upstream, the client must
/// still present the gateway's own local password; the wrong one is refused before anything
/// reaches the server.
#[test]
fn local_password_auth_guards_injected_credentials() {
    require_root!();
    let pg = PgServer::start();
    let cfg = TempConfig::new("");
    let secret = write_secret(&cfg, "secret", SCRAM_PASSWORD);
    let local = write_secret(&cfg, "local", "local-gate-pw");
    cfg.write(&pg_config_text(
        &cfg,
        pg.port(),
        &format!(
            "[target.credentials]\nuser = \"scram_user\"\npassword_file = \"{}\"\n[target.local_auth]\nmode = \"password\"\npassword_file = \"{}\"\n",
            secret.display(),
            local.display()
        ),
    ));
    const CLIENT: &str = r#"
import psycopg
res = {}
for name, pw in [("right", "local-gate-pw"), ("wrong", "nope")]:
    try:
        with psycopg.connect(dsn(user="whatever", password=pw), autocommit=True) as conn:
            res[name] = {"ok": True, "user": conn.execute("SELECT current_user").fetchone()[0]}
    except Exception as e:
        res[name] = {"ok": False, "error": err_info(e)}
report(**res)
"#;
    let out = run_client(&cfg, CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(
        r["right"],
        json!({"ok": true, "user": "scram_user"}),
        "{}",
        pretty(&r)
    );
    assert_eq!(r["wrong"]["ok"], json!(false), "{}", pretty(&r));
    assert!(
        r["wrong"]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("password authentication failed"),
        "{}",
        pretty(&r)
    );
    assert_secret_not_leaked(&cfg, &out, SCRAM_PASSWORD);
}

/// An unreachable upstream is reported to the client in its protocol, not as a bare close.
#[test]
fn unreachable_upstream_is_reported_as_an_error_response() {
    require_root!();
    let pg = PgServer::start();
    let cfg = TempConfig::new("");
    let dead_port = free_port();
    // Dial the real port's alias, but send the gateway to a port where nothing listens.
    let text = pg_config_text(&cfg, pg.port(), "").replace(
        &format!("upstream = \"127.0.0.1:{}\"", pg.port()),
        &format!("upstream = \"127.0.0.1:{dead_port}\""),
    );
    assert!(text.contains(&dead_port.to_string()), "{text}");
    cfg.write(&text);
    const CLIENT: &str = r#"
import psycopg
try:
    psycopg.connect(dsn(user="agent")).close()
    report(ok=True)
except Exception as e:
    report(ok=False, error=err_info(e))
"#;
    let out = run_client(&cfg, CLIENT, &client_args(&pg, json!({})));
    let r = out.json();
    assert_eq!(r["ok"], json!(false), "{}", pretty(&r));
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("unavailable"), "{}", pretty(&r));
}

/// The server process dies mid-statement (SIGKILL to its backend): the client is told, the
/// statement's journal entry says it got no answer, and the session is not a normal close.
#[test]
fn an_upstream_crash_mid_statement_is_recorded() {
    require_root!();
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    const CLIENT: &str = r#"
import psycopg, os, signal
conn = psycopg.connect(dsn(), autocommit=True)
pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
def kill_later():
    time.sleep(1)
    os.kill(pid, signal.SIGKILL)
threading.Thread(target=kill_later).start()
try:
    conn.execute("SELECT pg_sleep(30)")
    report(outcome="finished")
except psycopg.Error as e:
    report(outcome="error", error=err_info(e))
"#;
    let out = run_client(&cfg, CLIENT, &client_args(&pg, json!({})));
    let r = client_ok(&out);
    assert_eq!(r["outcome"], json!("error"), "{}", pretty(&r));
    let run_id = r["run_id"].as_str().expect("run id");
    let sessions = finished_sessions(&cfg, run_id);
    let session = sessions
        .iter()
        .find(|s| s["target"] == json!("appdb"))
        .unwrap_or_else(|| panic!("{}", pretty_rows(&sessions)));
    assert_eq!(session["outcome"], json!("error"), "{}", pretty(session));
    let show = session_show(&cfg, session_id(session));
    let sleep = show["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| statement_text(e).contains("pg_sleep"))
        .unwrap_or_else(|| panic!("{}", pretty(&show)));
    assert_eq!(
        sleep["result"]["sqlstate"],
        json!("08006"),
        "{}",
        pretty(sleep)
    );
    assert!(
        sleep["result"]["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("no answer: the"),
        "{}",
        pretty(sleep)
    );
}
