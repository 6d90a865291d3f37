//! The PostgreSQL harness itself ([`PgServer`]), checked with direct connections (no
//! interceptor): roles and their auth methods, the Python clients in the venv, and TLS with the
//! test CA. If these fail, the gateway tests in `postgres.rs` cannot mean anything.

use std::{process::Command, time::Duration};

use interceptor_tests::*;

const T: Duration = Duration::from_secs(60);

/// argv[1]: JSON {port, host?, sslmode?, sslrootcert?}. Connects as several roles with psycopg
/// (and asyncpg), reports what each got.
const DIRECT_CLIENT: &str = r#"
import asyncio
import psycopg, asyncpg, sqlalchemy
res = {"sqlalchemy": sqlalchemy.__version__}
host = ARGS.get("host", "127.0.0.1")
def attempt(name, **kw):
    try:
        with psycopg.connect(conninfo(host=host, port=ARGS["port"], dbname="appdb",
                                      sslmode=ARGS.get("sslmode", "disable"),
                                      sslrootcert=ARGS.get("sslrootcert"),
                                      connect_timeout=10, **kw)) as conn:
            one = conn.execute("SELECT 1").fetchone()[0]
            ssl = conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
            user = conn.execute("SELECT current_user").fetchone()[0]
            res[name] = {"ok": one == 1, "ssl": ssl, "user": user}
    except Exception as e:
        res[name] = {"ok": False, "error": err_info(e)}
attempt("scram", user="scram_user", password=ARGS["scram_pw"])
attempt("scram_wrong", user="scram_user", password="not-the-password")
attempt("md5", user="md5_user", password=ARGS["md5_pw"])
attempt("md5_wrong", user="md5_user", password="not-the-password")
attempt("agent", user="agent")
async def apg():
    ssl = False if ARGS.get("sslmode", "disable") == "disable" else None
    kw = {} if ssl is None else {"ssl": ssl}
    if ssl is None:
        import ssl as ssl_mod
        ctx = ssl_mod.create_default_context(cafile=ARGS["sslrootcert"])
        kw = {"ssl": ctx}
    conn = await asyncpg.connect(host=host, port=ARGS["port"], user="scram_user",
                                 password=ARGS["scram_pw"], database="appdb", timeout=10, **kw)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
try:
    res["asyncpg"] = {"ok": asyncio.run(apg()) == 1}
except Exception as e:
    res["asyncpg"] = {"ok": False, "error": err_info(e)}
report(**res)
"#;

fn direct_args(pg: &PgServer, extra: Value) -> Vec<String> {
    let mut a = json!({
        "port": pg.port(),
        "scram_pw": SCRAM_PASSWORD,
        "md5_pw": MD5_PASSWORD,
    });
    if let (Some(a), Some(e)) = (a.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            a.insert(k.clone(), v.clone());
        }
    }
    vec![a.to_string()]
}

fn assert_ok(r: &Value, name: &str, ssl: bool) {
    assert_eq!(r[name]["ok"], json!(true), "{name}: {}", pretty(r));
    assert_eq!(r[name]["ssl"], json!(ssl), "{name} ssl: {}", pretty(r));
}

fn assert_auth_failed(r: &Value, name: &str) {
    assert_eq!(r[name]["ok"], json!(false), "{name}: {}", pretty(r));
    let msg = r[name]["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        msg.contains("password authentication failed"),
        "{name}: expected a password authentication failure: {}",
        pretty(r)
    );
}

fn psql_tcp(conninfo: &str, sql: &str) -> Output {
    let mut cmd = Command::new(psql_bin());
    cmd.current_dir("/")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(conninfo)
        .arg("-c")
        .arg(sql);
    run_command(cmd, T)
}

#[test]
fn plain_server_roles_and_clients() {
    require_root!();
    let pg = PgServer::start();
    assert_eq!(pg.psql("SELECT 1"), "1");
    assert_eq!(
        pg.psql("SELECT datname FROM pg_database WHERE datname = 'appdb'"),
        "appdb"
    );
    assert_eq!(pg.psql("SHOW listen_addresses"), "127.0.0.1");
    assert_eq!(pg.psql("SHOW ssl"), "off");
    assert!(pg.tls().is_none());

    // psql over TCP as the trust role.
    let out = psql_tcp(
        &format!(
            "host=127.0.0.1 port={} dbname=appdb user=agent sslmode=disable",
            pg.port()
        ),
        "SELECT 1",
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "1");

    let out = run_venv_python(DIRECT_CLIENT, &direct_args(&pg, json!({})), T);
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    for name in ["scram", "md5", "agent"] {
        assert_ok(&r, name, false);
    }
    assert_eq!(r["scram"]["user"], json!("scram_user"));
    assert_eq!(r["md5"]["user"], json!("md5_user"));
    assert_auth_failed(&r, "scram_wrong");
    assert_auth_failed(&r, "md5_wrong");
    assert_eq!(r["asyncpg"]["ok"], json!(true), "{}", pretty(&r));

    // The agent role can create tables in appdb (PUBLIC may create in schema public).
    let out = psql_tcp(
        &format!(
            "host=127.0.0.1 port={} dbname=appdb user=agent sslmode=disable",
            pg.port()
        ),
        "CREATE TABLE t (i int); INSERT INTO t VALUES (42); SELECT i FROM t",
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "42");
}

/// `exec --user nobody` runs clients as uid 65534: the venv must work for that user.
#[test]
fn venv_is_usable_by_nobody() {
    require_root!();
    let mut cmd = Command::new("setpriv");
    cmd.current_dir("/")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(venv_python())
        .args([
            "-c",
            "import psycopg, asyncpg, sqlalchemy; print(psycopg.__version__)",
        ]);
    let out = run_command(cmd, T);
    assert!(out.success(), "{}", out.describe());
}

#[test]
fn tls_server_verify_full_with_test_ca() {
    require_root!();
    let pg = PgServer::start_with_tls();
    assert_eq!(pg.psql("SHOW ssl"), "on");
    let ca = pg.ca_path().display().to_string();
    let wrong = pg.wrong_ca_path().display().to_string();

    // verify-full by IP (SAN IP:127.0.0.1).
    let out = run_venv_python(
        DIRECT_CLIENT,
        &direct_args(
            &pg,
            json!({"sslmode": "verify-full", "sslrootcert": ca, "host": "127.0.0.1"}),
        ),
        T,
    );
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    for name in ["scram", "md5", "agent"] {
        assert_ok(&r, name, true);
    }
    assert_auth_failed(&r, "scram_wrong");
    assert_eq!(r["asyncpg"]["ok"], json!(true), "{}", pretty(&r));

    // verify-full by name (SAN DNS:localhost); "localhost" may resolve to ::1 first, where
    // nothing listens, so pin hostaddr.
    let out = psql_tcp(
        &format!(
            "host=localhost hostaddr=127.0.0.1 port={} dbname=appdb user=agent \
             sslmode=verify-full sslrootcert={ca}",
            pg.port()
        ),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "t");

    // The wrong CA is refused.
    let out = psql_tcp(
        &format!(
            "host=127.0.0.1 port={} dbname=appdb user=agent sslmode=verify-full \
             sslrootcert={wrong}",
            pg.port()
        ),
        "SELECT 1",
    );
    assert!(!out.success(), "wrong CA accepted\n{}", out.describe());
    assert!(
        out.stderr
            .to_lowercase()
            .contains("certificate verify failed"),
        "{}",
        out.describe()
    );

    // Plain connections still work next to TLS.
    let out = psql_tcp(
        &format!(
            "host=127.0.0.1 port={} dbname=appdb user=agent sslmode=disable",
            pg.port()
        ),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "f");
}

/// The guard really stops the server and removes its directory.
#[test]
fn drop_stops_server_and_removes_dir() {
    require_root!();
    let pg = PgServer::start();
    let dir = pg.dir().to_path_buf();
    let port = pg.port();
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something still listens on 127.0.0.1:{port}"
    );
}
