//! Fail closed when the journal cannot be written: a statement that cannot be recorded is not
//! run (SQLSTATE 58000 and the session ends), and the gateway recovers once space is back.

use std::{process::Command, time::Duration};

use interceptor_tests::*;

/// A small tmpfs for the journal, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mount tmpfs");
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

const CLIENT: &str = r#"
import psycopg, os
H, P, FILL = ARGS["host"], int(ARGS["port"]), ARGS["fill"]
def dsn():
    return conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)
res = {}
conn = psycopg.connect(dsn(), autocommit=True)
res["before"] = conn.execute("SELECT 1").fetchone()[0]
# Fill the journal's filesystem. Unbuffered: a buffered file's close would flush what the
# full disk refused again, and raise outside the loop.
fd = os.open(FILL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    while True:
        os.write(fd, b"x" * 65536)
except OSError:
    pass
finally:
    os.close(fd)
try:
    # Larger than the whole filesystem once journaled (statement_max_bytes is raised below):
    # a small record could still fit in WAL frames SQLite reuses after a checkpoint.
    conn.execute("INSERT INTO marker SELECT 1 WHERE length('" + "z" * 2_000_000 + "') > 0")
    res["full"] = "ran"
except psycopg.Error as e:
    res["full"] = {"sqlstate": e.sqlstate, "message": str(e)}
os.remove(FILL)
with psycopg.connect(dsn(), autocommit=True) as again:
    res["after"] = again.execute("SELECT 2").fetchone()[0]
report(**res)
"#;

#[test]
fn statements_are_refused_while_the_journal_cannot_be_written() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE marker (a int); GRANT ALL ON marker TO agent",
    );
    let disk = SmallDisk::new("1m");
    let cfg = TempConfig::new("");
    let journal = disk.dir.path().join("journal.db");
    let text = pg_config_text(&cfg, pg.port(), "").replace(
        &cfg.journal_section(),
        &format!(
            "[journal]\npath = \"{}\"\nstatement_max_bytes = 4194304\n",
            journal.display()
        ),
    );
    assert!(text.contains(&journal.display().to_string()), "{text}");
    cfg.write(&text);
    let fill = disk.dir.path().join("filler");
    let args =
        json!({"host": pg_dial_host(), "port": pg.port(), "fill": fill.display().to_string()});
    let out = run_venv_python_exec(
        &cfg,
        None,
        CLIENT,
        &[args.to_string()],
        Duration::from_secs(90),
    );
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    assert_eq!(r["before"], json!(1), "{}", pretty(&r));
    assert_eq!(
        r["full"]["sqlstate"],
        json!("58000"),
        "not run unrecorded: {}",
        pretty(&r)
    );
    assert!(
        r["full"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("journal"),
        "{}",
        pretty(&r)
    );
    assert_eq!(r["after"], json!(2), "the gateway recovers: {}", pretty(&r));
    // The refused statement never reached the server.
    assert_eq!(
        pg.psql_db("appdb", "SELECT count(*) FROM marker").trim(),
        "0"
    );
    // Every session has its outcome once the journal could be written again, the one whose
    // close was due while the disk was full included.
    let run_id = r["run_id"].as_str().expect("run id");
    let rows = wait_sessions(&cfg, Some(run_id), Duration::from_secs(15), |rows| {
        rows.len() >= 2 && rows.iter().all(session_finished)
    });
    assert!(
        rows.iter().all(session_finished),
        "a session without an outcome: {}",
        pretty_rows(&rows)
    );
    assert!(
        rows.iter().any(|s| s["outcome"] == json!("error")
            && s["detail"]
                .as_str()
                .unwrap_or("")
                .contains("recording failed")),
        "the refused session says why it ended: {}",
        pretty_rows(&rows)
    );
}
