//! Command-level policy against a real PostgreSQL: refusals reach the client as 42501, leave
//! the data untouched, keep the session usable, and are journaled with their rule. A broken
//! policy is refused at start-up, and a broken reload keeps the policy in force.

use std::{process::Command, time::Duration};

use interceptor_tests::*;

/// The shipped default policy, explicitly (the protocol tests use journal-only).
fn default_policy_line() -> String {
    format!(
        "policy = \"{}\"\n",
        workspace_root().join("policies/default.toml").display()
    )
}

const CLIENT: &str = r#"
H, P = ARGS["host"], int(ARGS["port"])
def dsn():
    return conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)
import asyncio, asyncpg, psycopg
from psycopg import errors
res = {}
with psycopg.connect(dsn(), autocommit=True) as conn:
    try:
        conn.execute("DROP TABLE keep")
        res["drop"] = "ran"
    except errors.InsufficientPrivilege as e:
        res["drop"] = {"sqlstate": e.sqlstate, "message": str(e)}
    res["select_after"] = conn.execute("SELECT count(*) FROM keep").fetchone()[0]
    # With a parameter: Parse, Bind, Describe, Execute and Sync in one batch; the Bind and
    # Execute the server skips after the refused Parse must not overwrite its 42501.
    try:
        conn.execute("SELECT pg_read_file(%s)", ("/etc/hostname",))
        res["param"] = "ran"
    except errors.InsufficientPrivilege as e:
        res["param"] = e.sqlstate
    try:
        conn.execute("SELECT 1; DELETE FROM keep; DROP TABLE keep")
        res["multi"] = "ran"
    except errors.InsufficientPrivilege as e:
        res["multi"] = {"sqlstate": e.sqlstate}
    res["count_after_multi"] = conn.execute("SELECT count(*) FROM keep").fetchone()[0]
    with conn.transaction():
        try:
            with conn.transaction():
                conn.execute("TRUNCATE keep")
        except errors.InsufficientPrivilege as e:
            res["in_tx"] = e.sqlstate
    res["after_tx"] = conn.execute("SELECT 1").fetchone()[0]
    # SQL-level PREPARE/EXECUTE: the verdict of the prepared statement travels to EXECUTE.
    conn.execute("PREPARE counter AS SELECT count(*) FROM keep")
    res["sql_execute"] = conn.execute("EXECUTE counter").fetchone()[0]
    try:
        conn.execute("EXECUTE never_prepared")
        res["unknown_execute"] = "ran"
    except errors.InsufficientPrivilege as e:
        res["unknown_execute"] = e.sqlstate

async def prepared():
    c = await asyncpg.connect(host=H, port=P, user="agent", database="appdb")
    try:
        await c.prepare("DROP TABLE keep")
        out = "prepared"
    except asyncpg.exceptions.InsufficientPrivilegeError as e:
        out = e.sqlstate
    out2 = await c.fetchval("SELECT 41 + 1")
    await c.close()
    return out, out2
res["asyncpg_prepare"], res["asyncpg_after"] = asyncio.run(prepared())
report(**res)
"#;

#[test]
fn refused_statements_reach_the_client_as_42501_and_change_nothing() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE keep (a int); INSERT INTO keep VALUES (1), (2); GRANT ALL ON keep TO agent",
    );
    let cfg = TempConfig::new("");
    cfg.write(&pg_config_text(&cfg, pg.port(), &default_policy_line()));
    let args = json!({"host": pg_dial_host(), "port": pg.port()}).to_string();
    let out = run_venv_python_exec(&cfg, None, CLIENT, &[args], Duration::from_secs(90));
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    assert_eq!(r["drop"]["sqlstate"], json!("42501"), "{}", pretty(&r));
    let message = r["drop"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no-schema-changes"),
        "names the rule: {message}"
    );
    assert!(
        message.contains("journal event"),
        "names the event: {message}"
    );
    assert_eq!(
        r["select_after"],
        json!(2),
        "the session stays usable: {}",
        pretty(&r)
    );
    assert_eq!(r["multi"]["sqlstate"], json!("42501"), "{}", pretty(&r));
    assert_eq!(
        r["count_after_multi"],
        json!(2),
        "none of a refused message runs: {}",
        pretty(&r)
    );
    assert_eq!(r["in_tx"], json!("42501"), "{}", pretty(&r));
    assert_eq!(r["after_tx"], json!(1), "{}", pretty(&r));
    assert_eq!(
        r["asyncpg_prepare"],
        json!("42501"),
        "refused at prepare: {}",
        pretty(&r)
    );
    assert_eq!(r["asyncpg_after"], json!(42), "{}", pretty(&r));
    // The table is intact on the server.
    assert_eq!(pg.psql_db("appdb", "SELECT count(*) FROM keep").trim(), "2");

    // The journal has each refusal with its rule, and the allowed reads.
    let run_id = r["run_id"].as_str().expect("run id");
    let sessions = sessions_for_run(&cfg, run_id);
    let mut denied = Vec::new();
    let mut allowed = 0;
    for s in &sessions {
        let show = session_show(&cfg, s["id"].as_i64().expect("id"));
        for e in show["events"].as_array().into_iter().flatten() {
            match e["decision"].as_str() {
                Some("deny") => denied.push(e.clone()),
                Some("allow") if e["kind"] == json!("statement") => allowed += 1,
                _ => {}
            }
        }
    }
    assert!(allowed >= 3, "allowed statements are journaled too");
    let drop = denied
        .iter()
        .find(|e| e["statement"] == json!("DROP TABLE keep"))
        .unwrap_or_else(|| panic!("the refused DROP is journaled: {denied:#?}"));
    assert_eq!(drop["rule"], json!("no-schema-changes"));
    assert_eq!(drop["result"]["sqlstate"], json!("42501"));
    assert_eq!(r["param"], json!("42501"), "{}", pretty(&r));
    let param = denied
        .iter()
        .find(|e| e["statement"] == json!("SELECT pg_read_file($1)"))
        .unwrap_or_else(|| panic!("the refused pg_read_file is journaled: {denied:#?}"));
    assert_eq!(
        param["result"]["sqlstate"],
        json!("42501"),
        "a refusal stays a refusal when the batch's later messages are skipped: {param:#?}"
    );
    assert!(
        denied.iter().any(|e| e["statement"]
            .as_str()
            .unwrap_or_default()
            .contains("DELETE FROM keep")),
        "the multi-statement refusal is journaled: {denied:#?}"
    );
}

fn policy_cmd(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("policy").args(args);
    run_command(cmd, Duration::from_secs(30))
}

#[test]
fn policy_tooling_checks_explains_and_tests() {
    let cfg = TempConfig::new("");
    let broken = cfg.dir().join("broken.toml");
    std::fs::write(
        &broken,
        "[[rule]]\nname = \"x\"\ndecision = \"allow\"\n[rule.match]\nclases = [\"read\"]\n",
    )
    .expect("write");
    let out = policy_cmd(&cfg, &["check", broken.to_str().expect("path")]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("{}:5:", broken.display())),
        "file:line:col in {}",
        out.describe()
    );
    let default = workspace_root().join("policies/default.toml");
    let out = policy_cmd(&cfg, &["check", default.to_str().expect("path")]);
    assert!(out.success(), "{}", out.describe());

    let out = policy_cmd(
        &cfg,
        &[
            "explain",
            "--user",
            "root",
            "--sql",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        ],
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("decision: review"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("delete"), "{}", out.describe());

    let cases = workspace_root().join("policies/tests/default-cases.toml");
    let out = policy_cmd(&cfg, &["test", cases.to_str().expect("path")]);
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains(" 0 failed"), "{}", out.describe());

    let wrong = cfg.dir().join("wrong-cases.toml");
    std::fs::write(
        &wrong,
        format!(
            "policy = \"{}\"\n[[case]]\nsql = \"DROP TABLE t\"\nexpect = \"allow\"\n",
            default.display()
        ),
    )
    .expect("write");
    let out = policy_cmd(&cfg, &["test", wrong.to_str().expect("path")]);
    assert!(
        !out.success(),
        "a wrong expectation fails: {}",
        out.describe()
    );
    assert!(out.stdout.contains("FAIL"), "{}", out.describe());
}

#[test]
fn a_broken_policy_stops_exec_at_start_up() {
    require_root!();
    let cfg = TempConfig::new("");
    let broken = cfg.dir().join("broken.toml");
    std::fs::write(
        &broken,
        "[[rule]]\nname = \"x\"\ndecision = \"sometimes\"\n",
    )
    .expect("write");
    cfg.write(&format!(
        "{}\n[policy]\npath = \"{}\"\n",
        cfg.journal_section(),
        broken.display()
    ));
    let out = run_exec(&cfg, None, &["/bin/true"]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("{}:3:", broken.display())),
        "{}",
        out.describe()
    );
}

/// A policy with a `reads` rule, and one without it (SELECT refused).
const ALLOW_READS: &str = "[[rule]]\nname = \"reads\"\ndecision = \"allow\"\n[rule.match]\nclasses = [\"read\"]\n[[rule]]\nname = \"egress\"\ndecision = \"allow\"\n[rule.match]\nkinds = [\"connect\"]\n";
const NO_READS: &str =
    "[[rule]]\nname = \"egress\"\ndecision = \"allow\"\n[rule.match]\nkinds = [\"connect\"]\n";
const BROKEN: &str = "[[rule]]\nname = \"reads\"\ndecision = \"yes\"\n";

/// A service daemon capturing one cgroup, with the target's policy in a file the test edits
/// (starting as [`ALLOW_READS`]), and its own control socket (the default one may belong to
/// another test's daemon).
struct ReloadFixture {
    pg: PgServer,
    cgroup: CgroupDir,
    cfg: TempConfig,
    _pins: PinDir,
    policy: std::path::PathBuf,
    daemon: Option<Daemon>,
}

impl ReloadFixture {
    fn start() -> ReloadFixture {
        let pg = PgServer::start();
        let cgroup = CgroupDir::new(&unique_name("interceptor-test"));
        let cfg = TempConfig::new("");
        let pins = PinDir::new(&cfg.path);
        let policy = cfg.dir().join("policy.toml");
        std::fs::write(&policy, ALLOW_READS).expect("write");
        let port = free_port();
        let text = pg_config_text(
            &cfg,
            pg.port(),
            &format!("policy = \"{}\"\n", policy.display()),
        );
        cfg.write(&format!(
            "{text}\n[proxy]\nport = {port}\n\n[approvals]\nsocket = \"{}\"\n\n[capture]\nmode = \"all\"\ncgroups = [\"{}\"]\npin_dir = \"{}\"\n",
            cfg.dir().join("control.sock").display(),
            cgroup.relative(),
            pins.path.display()
        ));
        let daemon = Some(Daemon::start(&cfg));
        ReloadFixture {
            pg,
            cgroup,
            cfg,
            _pins: pins,
            policy,
            daemon,
        }
    }

    fn write_policy(&self, text: &str) {
        std::fs::write(&self.policy, text).expect("write");
    }

    /// `psql -tAc SQL` from inside the captured cgroup.
    fn psql(&self, sql: &str) -> Output {
        let argv = [
            psql_bin().display().to_string(),
            format!(
                "host={} port={} dbname=appdb user=agent sslmode=disable",
                pg_dial_host(),
                self.pg.port()
            ),
            "-tAc".to_owned(),
            sql.to_owned(),
        ];
        run_in_cgroup(&self.cgroup, &argv, Duration::from_secs(30))
    }

    /// SELECT is refused by the gateway (the policy in force has no reads rule).
    fn assert_select_refused(&self, when: &str) {
        let out = self.psql("SELECT 1");
        assert!(
            out.stderr.contains("interceptor"),
            "{when}: {}",
            out.describe()
        );
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }
}

/// SIGHUP reloads policies in service mode; a broken file keeps the policy in force.
#[test]
fn sighup_reloads_policies_and_a_broken_file_keeps_the_old_one() {
    require_root!();
    let f = ReloadFixture::start();
    let reload = |daemon: &Daemon| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(f.psql("SELECT 1").stdout.trim(), "1");

    // A policy without the reads rule: reloaded, SELECT is now refused.
    f.write_policy(NO_READS);
    reload(f.daemon());
    f.assert_select_refused("after reload");

    // A broken file: the reload fails, the last good policy (no reads) stays in force.
    f.write_policy(BROKEN);
    reload(f.daemon());
    f.assert_select_refused("broken reload kept");
    assert!(
        f.daemon().log().contains("policy reload failed"),
        "{}",
        f.daemon().log()
    );

    // Fixed again: reads are back.
    f.write_policy(ALLOW_READS);
    reload(f.daemon());
    assert_eq!(f.psql("SELECT 1").stdout.trim(), "1");
}

/// `interceptor reload` reloads the service's policies over its control socket and says so;
/// a broken file is refused with its error (exit 1) and the policy in force stays; a caller
/// other than root is refused (3); with the daemon gone it exits 5.
#[test]
fn reload_command_reports_the_outcome_and_a_broken_file_keeps_the_old_policy() {
    require_root!();
    let mut f = ReloadFixture::start();
    let reload = |f: &ReloadFixture| {
        let mut cmd = interceptor_cmd(Some(&f.cfg));
        cmd.arg("reload");
        run_command(cmd, Duration::from_secs(30))
    };
    assert_eq!(f.psql("SELECT 1").stdout.trim(), "1");

    // Without the reads rule: the reload answers with what is in force, SELECT is refused.
    f.write_policy(NO_READS);
    let out = reload(&f);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("policies reloaded") && out.stdout.contains("appdb: 1 rules"),
        "{}",
        out.describe()
    );
    f.assert_select_refused("after reload");

    // A broken file: exit 1 with the file's error; the last good policy (no reads) stays.
    f.write_policy(BROKEN);
    let out = reload(&f);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("previous policies stay in force")
            && out.stderr.contains(&f.policy.display().to_string()),
        "{}",
        out.describe()
    );
    f.assert_select_refused("broken reload kept");

    // Fixed again: reads are back.
    f.write_policy(ALLOW_READS);
    assert_eq!(reload(&f).code(), Some(0));
    assert_eq!(f.psql("SELECT 1").stdout.trim(), "1");

    // Not root: refused (3), not served.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(interceptor_bin())
        .arg("--config")
        .arg(&f.cfg.path)
        .arg("reload")
        .current_dir("/");
    let out = run_command(cmd, Duration::from_secs(30));
    assert_eq!(out.code(), Some(3), "{}", out.describe());

    // No daemon: 5.
    drop(f.daemon.take());
    let out = reload(&f);
    assert_eq!(out.code(), Some(5), "{}", out.describe());
}
