//! A journal you can trust: real sessions through `interceptor exec` against the harness
//! PostgreSQL, then `interceptor journal verify` on what they left.
//!
//! - An untouched journal verifies, and its hashes are reproducible from the documented format
//!   by an independent implementation (Python's hashlib and json).
//! - An UPDATE, a DELETE or a reordering done with the `sqlite3` shell makes verify fail (exit 1)
//!   and name the row.
//! - `kill -9` of the daemon mid-session: every statement the client got a result for is in
//!   the journal, and the chain still verifies.
//! - A journal that cannot be written (its files made immutable) refuses the next statement,
//!   which never reaches the server, and `interceptor doctor` says why.
//! - `journal prune` deletes the old part and the rest still verifies.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use interceptor_tests::*;

/// Bound for one client run under exec.
const RUN: Duration = Duration::from_secs(90);

/// The `sqlite3` shell tampers with journals here as an intruder would (bootstrap.sh installs
/// it). Without it the tampering tests prove nothing, so under CI its absence fails them.
fn sqlite3_available() -> bool {
    let found = Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let msg =
            "the sqlite3 shell is missing: run scripts/bootstrap.sh (apt-get install sqlite3)";
        if in_ci() {
            panic!("CI=true: {msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// Runs `sql` on the journal file with the sqlite3 shell; returns its stdout, trimmed.
fn sqlite3(db: &Path, sql: &str) -> String {
    let mut cmd = Command::new("sqlite3");
    cmd.arg(db).arg(sql);
    let out = run_command(cmd, Duration::from_secs(30));
    assert!(out.success(), "sqlite3 failed\n{}", out.describe());
    out.stdout.trim().to_owned()
}

/// `interceptor --config CFG journal ARGS…`.
fn journal(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("journal").args(args);
    run_command(cmd, Duration::from_secs(60))
}

/// `journal verify --json`, parsed, with its exit code.
fn verify_json(cfg: &TempConfig) -> (Option<i32>, Value) {
    let out = journal(cfg, &["verify", "--json"]);
    let report = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e})\n{}", out.describe()));
    (out.code(), report)
}

/// `journal verify` must pass.
fn assert_intact(cfg: &TempConfig) -> Value {
    let out = journal(cfg, &["verify"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.starts_with("ok: journal "), "{}", out.describe());
    let (code, report) = verify_json(cfg);
    assert_eq!(code, Some(0), "{}", pretty(&report));
    assert_eq!(report["ok"], json!(true), "{}", pretty(&report));
    assert_eq!(report["findings"], json!([]), "{}", pretty(&report));
    report
}

/// A psql run under exec: several statements of different kinds, each with its result.
fn psql_session(pg: &PgServer, cfg: &TempConfig, table: &str) {
    let conn = format!(
        "host={} port={} dbname=appdb user=agent sslmode=disable connect_timeout=10",
        pg_dial_host(),
        pg.port()
    );
    let psql = psql_bin().display().to_string();
    let create = format!("CREATE TABLE {table} (i int, t text)");
    let insert = format!("INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 50) g");
    let update = format!("UPDATE {table} SET t = 'é\"quoted\"' WHERE i = 7");
    let count = format!("SELECT count(*) FROM {table}");
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
        &create,
        "-c",
        &insert,
        "-c",
        &update,
        "-c",
        &count,
        "-c",
        "SELECT 'inter' || 'ceptor'",
    ];
    let out = run_exec_timeout(cfg, None, &argv, RUN);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["50", "interceptor"],
        "{}",
        out.describe()
    );
}

/// Ids of the journal's events of `kind`, in order.
fn event_ids(db: &Path, kind: &str) -> Vec<i64> {
    sqlite3(
        db,
        &format!("SELECT id FROM events WHERE kind = '{kind}' ORDER BY id"),
    )
    .lines()
    .map(|l| l.trim().parse().expect("an id"))
    .collect()
}

/// A config whose journal is a copy of `cfg`'s (made with `VACUUM INTO`, so ids and the
/// sequence survive), to tamper with.
fn copy_of(cfg: &TempConfig) -> TempConfig {
    let copy = TempConfig::new("");
    let _ = std::fs::remove_file(&copy.journal);
    sqlite3(
        &cfg.journal,
        &format!("VACUUM INTO '{}'", copy.journal.display()),
    );
    copy
}

/// Recomputes the chain with Python's sqlite3, json and hashlib, as docs/journal.md describes;
/// prints {checked, head}.
const RECOMPUTE: &str = r#"
import hashlib, sqlite3
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
prev, n = "0" * 64, 0
for row in db.execute("SELECT id, session_id, at, kind, statement, decision, rule, detail,"
                      " prev_hash, hash FROM events ORDER BY id"):
    canonical = json.dumps(list(row[:8]), separators=(",", ":"), ensure_ascii=False)
    computed = hashlib.sha256((prev + canonical).encode("utf-8")).hexdigest()
    if row[8] != prev or row[9] != computed:
        raise SystemExit("seq %d: stored %s/%s, computed %s/%s" % (row[0], row[8], row[9], prev, computed))
    prev, n = computed, n + 1
report(checked=n, head=prev)
"#;

#[test]
fn an_untouched_journal_verifies_and_its_hashes_are_reproducible() {
    require_root!();
    let pg = PgServer::start();
    let cfg = TempConfig::new("");
    // The stricter fsync policy, so that path runs for real too.
    cfg.write(&pg_config_text(&cfg, pg.port(), "").replace(
        &cfg.journal_section(),
        &format!("{}sync = \"full\"\n", cfg.journal_section()),
    ));
    psql_session(&pg, &cfg, "untouched");
    let report = assert_intact(&cfg);
    assert!(
        report["events"].as_u64().unwrap_or(0) >= 10,
        "{}",
        pretty(&report)
    );
    assert!(
        report["journal_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{}",
        pretty(&report)
    );

    // Results and the session's open and close are chained events too.
    let rows = sessions(&cfg);
    let appdb = rows
        .iter()
        .find(|s| s["target"] == json!("appdb"))
        .unwrap_or_else(|| panic!("no appdb session\n{}", pretty_rows(&rows)));
    let show = session_show(&cfg, appdb["id"].as_i64().expect("session id"));
    for kind in ["session_open", "statement", "result", "session_close"] {
        assert!(
            !events_of_kind(&show, kind).is_empty(),
            "no {kind} event\n{}",
            pretty(&show)
        );
    }
    assert_eq!(
        events_of_kind(&show, "result").len(),
        events_of_kind(&show, "statement").len(),
        "{}",
        pretty(&show)
    );

    let out = run_python(
        RECOMPUTE,
        &[cfg.journal.display().to_string()],
        Duration::from_secs(30),
    );
    assert!(out.success(), "{}", out.describe());
    let python = out.json();
    assert_eq!(python["checked"], report["events"], "{}", pretty(&python));
    assert_eq!(python["head"], report["last_hash"], "{}", pretty(&python));
}

#[test]
fn verify_names_the_row_after_an_update_a_delete_or_a_reorder() {
    require_root!();
    if !sqlite3_available() {
        return;
    }
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "");
    psql_session(&pg, &cfg, "tampered");
    assert_intact(&cfg);
    let statements = event_ids(&cfg.journal, "statement");
    assert!(statements.len() >= 4, "{statements:?}");
    let (first, second, third) = (statements[0], statements[1], statements[2]);

    let cases: [(&str, String, i64, &str); 5] = [
        (
            "an edited statement",
            format!("UPDATE events SET statement = 'SELECT 1' WHERE id = {second}"),
            second,
            "(statement): content edited",
        ),
        (
            "a deleted event",
            format!("DELETE FROM events WHERE id = {second}"),
            second + 1,
            &format!("deleted: event {second} is missing"),
        ),
        (
            "two events swapped",
            format!(
                "UPDATE events SET id = -1 WHERE id = {first};
                 UPDATE events SET id = {first} WHERE id = {third};
                 UPDATE events SET id = {third} WHERE id = -1;"
            ),
            first,
            "(statement): reordered",
        ),
        (
            "a result rewritten",
            format!(
                "UPDATE events SET result = '{{\"tag\":\"UPDATE 0\",\"rows\":0}}' WHERE id = {third}"
            ),
            third,
            "(statement): result changed",
        ),
        (
            "a session's user changed",
            "UPDATE sessions SET user = 'someone-else'".to_owned(),
            -1,
            "session changed: differs from its session_open event (user:",
        ),
    ];
    for (what, sql, seq, expected) in &cases {
        let copy = copy_of(&cfg);
        assert_intact(&copy);
        sqlite3(&copy.journal, sql);
        let out = journal(&copy, &["verify"]);
        assert_eq!(out.code(), Some(1), "{what}\n{}", out.describe());
        let first_line = out.stdout.lines().next().unwrap_or_default();
        let at = if *seq > 0 {
            format!("BROKEN seq {seq} ")
        } else {
            "BROKEN session ".to_owned()
        };
        assert!(
            first_line.starts_with(&at) && first_line.contains(expected),
            "{what}: expected {at}…{expected}\n{}",
            out.describe()
        );
        let (code, report) = verify_json(&copy);
        assert_eq!(code, Some(1), "{what}: {}", pretty(&report));
        assert_eq!(report["ok"], json!(false), "{what}: {}", pretty(&report));
        if *seq > 0 {
            assert_eq!(
                report["findings"][0]["seq"],
                json!(seq),
                "{what}: {}",
                pretty(&report)
            );
        }
    }
}

/// Inserts 0, 1, 2, … one statement at a time, printing each number once the server has
/// acknowledged it, until its connection breaks.
const LOOPING_CLIENT: &str = r#"
import psycopg
conn = psycopg.connect(conninfo(host=ARGS["host"], port=int(ARGS["port"]), dbname="appdb",
                                user="agent", sslmode="disable", connect_timeout=10),
                       autocommit=True)
i = 0
try:
    while True:
        conn.execute("INSERT INTO crash VALUES (%d)" % i)
        print(i, flush=True)
        i += 1
except Exception as e:
    report(stopped=err_info(e))
"#;

#[test]
fn a_daemon_killed_mid_session_loses_nothing_it_acknowledged() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE crash (a int); GRANT ALL ON crash TO agent",
    );
    let cfg = pg_config(&pg, "");
    let args = json!({"host": pg_dial_host(), "port": pg.port()}).to_string();
    let argv = venv_python_argv(LOOPING_CLIENT, &[args]);
    let mut run = Spawned::spawn(exec_cmd(&cfg, None, &argv), "exec", false);
    assert!(
        run.wait_line(false, RUN, |l| l.trim() == "200").is_some(),
        "the client never got to 200 statements\n{}\n{}",
        run.stdout_so_far(),
        run.stderr_so_far()
    );
    // Only the daemon: the client keeps running until its connection breaks.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the daemon");
    let out = run.wait(Duration::from_secs(30));
    let acknowledged: Vec<i64> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(acknowledged.len() >= 200, "{}", out.describe());

    // The run's cgroup outlived its daemon: remove it (and anything left in it).
    for s in sessions(&cfg) {
        if let Some(run_id) = s["run_id"].as_str() {
            cleanup_cgroup(&cgroup2_root().join("interceptor").join(run_id));
        }
    }

    let journaled: std::collections::HashSet<String> = sqlite3(
        &cfg.journal,
        "SELECT statement FROM events WHERE kind = 'statement'",
    )
    .lines()
    .map(str::to_owned)
    .collect();
    for i in &acknowledged {
        let sql = format!("INSERT INTO crash VALUES ({i})");
        assert!(
            journaled.contains(&sql),
            "acknowledged but not journaled: {sql} ({} journaled)",
            journaled.len()
        );
    }
    // Nothing reached the server unrecorded either.
    for a in pg.psql_db("appdb", "SELECT a FROM crash").lines() {
        let sql = format!("INSERT INTO crash VALUES ({})", a.trim());
        assert!(journaled.contains(&sql), "ran but not journaled: {sql}");
    }
    assert_intact(&cfg);
}

/// Makes files immutable (`chattr +i`) and reverts it on drop, so a failing test never leaves
/// files that nothing can delete.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: Vec<PathBuf>) -> Immutable {
        let mut cmd = Command::new("chattr");
        cmd.arg("+i").args(&files);
        let out = run_command(cmd, Duration::from_secs(10));
        assert!(out.success(), "chattr +i\n{}", out.describe());
        Immutable(files)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let mut cmd = Command::new("chattr");
        cmd.arg("-i").args(&self.0);
        let _ = run_command(cmd, Duration::from_secs(10));
    }
}

/// Connects, runs one statement, then waits for a line on stdin (the test breaks the journal
/// meanwhile) and tries another; reports both, then waits for stdin to close.
const WAITING_CLIENT: &str = r#"
import psycopg
conn = psycopg.connect(conninfo(host=ARGS["host"], port=int(ARGS["port"]), dbname="appdb",
                                user="agent", sslmode="disable", connect_timeout=10),
                       autocommit=True)
report(before=conn.execute("SELECT 1").fetchone()[0])
sys.stdin.readline()
try:
    conn.execute("INSERT INTO marker VALUES (1)")
    report(after="ran")
except psycopg.Error as e:
    report(after=err_info(e))
sys.stdin.read()
"#;

#[test]
fn an_unwritable_journal_refuses_the_next_statement_and_doctor_says_why() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE marker (a int); GRANT ALL ON marker TO agent",
    );
    let cfg = pg_config(&pg, "");
    let args = json!({"host": pg_dial_host(), "port": pg.port()}).to_string();
    let argv = venv_python_argv(WAITING_CLIENT, &[args]);
    let mut run = Spawned::spawn(exec_cmd(&cfg, None, &argv), "exec", true);
    let before = run
        .wait_json_line(RUN)
        .unwrap_or_else(|| panic!("no first report\n{}", run.stderr_so_far()));
    assert_eq!(before["before"], json!(1), "{}", pretty(&before));

    // The journal's log, the database and its WAL can no longer be written (as on a failing
    // or read-only disk).
    let mut files: Vec<PathBuf> = ["", "-wal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", cfg.journal.display())))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(files.len(), 2, "journal and WAL expected: {files:?}");
    let segments = PathBuf::from(format!("{}.segments", cfg.journal.display()));
    let logs: Vec<PathBuf> = std::fs::read_dir(&segments)
        .expect("the journal's segment log")
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    assert!(!logs.is_empty(), "no segment in {}", segments.display());
    files.extend(logs);
    let immutable = Immutable::set(files);
    writeln!(run.stdin(), "go").expect("signal the client");
    let after = run
        .wait_json_line(RUN)
        .unwrap_or_else(|| panic!("no second report\n{}", run.stderr_so_far()));
    assert_eq!(
        after["after"]["sqlstate"],
        json!("58000"),
        "not run unrecorded: {}",
        pretty(&after)
    );
    assert!(
        after["after"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("journal"),
        "{}",
        pretty(&after)
    );
    assert_eq!(
        pg.psql_db("appdb", "SELECT count(*) FROM marker"),
        "0",
        "the refused statement reached the server"
    );

    // The operator sees why: in the daemon's log, and from doctor.
    let mut doctor = interceptor_cmd(Some(&cfg));
    doctor.arg("doctor");
    let report = run_command(doctor, Duration::from_secs(60));
    assert!(!report.success(), "{}", report.describe());
    let line = report
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL journal"))
        .unwrap_or_else(|| panic!("no failed journal check\n{}", report.describe()));
    assert!(
        line.contains(&cfg.journal.display().to_string()),
        "{}",
        report.describe()
    );
    assert!(report.stdout.contains("chattr -i"), "{}", report.describe());

    drop(immutable);
    run.close_stdin();
    let out = run.wait(RUN);
    assert!(
        out.stderr.contains("journal write failed"),
        "the cause is not in the daemon's log\n{}",
        out.describe()
    );
}

#[test]
fn prune_keeps_the_rest_verifiable() {
    require_root!();
    if !sqlite3_available() {
        return;
    }
    let pg = PgServer::start();
    let cfg = TempConfig::new("");
    // 0 days: everything recorded before the prune may go.
    cfg.write(&pg_config_text(&cfg, pg.port(), "").replace(
        &cfg.journal_section(),
        &format!("{}retention_days = 0\n", cfg.journal_section()),
    ));
    psql_session(&pg, &cfg, "old");
    let per_run = sessions(&cfg).len();
    let before = assert_intact(&cfg);
    let old_last = before["last_seq"].as_i64().expect("last seq");
    std::thread::sleep(Duration::from_millis(20));

    let out = journal(&cfg, &["prune"]);
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout
            .starts_with(&format!("pruned {old_last} events (seq <= {old_last})")),
        "{}",
        out.describe()
    );
    assert!(
        sessions(&cfg).is_empty(),
        "{}",
        pretty_rows(&sessions(&cfg))
    );
    let pruned = assert_intact(&cfg);
    assert_eq!(pruned["checkpoint"]["last_seq"], json!(old_last));

    psql_session(&pg, &cfg, "new");
    let after = assert_intact(&cfg);
    assert_eq!(after["checkpoint"]["last_seq"], json!(old_last));
    assert_eq!(
        after["first_seq"],
        json!(old_last + 1),
        "{}",
        pretty(&after)
    );
    assert_eq!(sessions(&cfg).len(), per_run, "the new run's sessions stay");

    // What remains is still guarded: its first event cannot go unnoticed.
    sqlite3(
        &cfg.journal,
        &format!("DELETE FROM events WHERE id = {}", old_last + 1),
    );
    let (code, report) = verify_json(&cfg);
    assert_eq!(code, Some(1), "{}", pretty(&report));
    assert_eq!(report["findings"][0]["problem"], json!("deleted"));

    // Without a retention setting, prune refuses rather than guessing.
    let bare = TempConfig::new("");
    let out = journal(&bare, &["prune"]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(out.stderr.contains("retention_days"), "{}", out.describe());
}
