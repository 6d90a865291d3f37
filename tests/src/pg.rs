//! A real PostgreSQL server per test, and the Python clients that talk to it.
//!
//! [`PgServer::start`] runs `initdb` into a fresh temp dir (owned by the `postgres` OS user,
//! since initdb refuses root), listens on 127.0.0.1 only at a free port plus a unix socket in
//! the temp dir, and creates the database and roles every PostgreSQL test relies on:
//!
//! | role | auth over TCP (127.0.0.1) | password |
//! |---|---|---|
//! | `scram_user` | `scram-sha-256` (stored as SCRAM) | [`SCRAM_PASSWORD`] |
//! | `md5_user` | `md5` (stored as MD5) | [`MD5_PASSWORD`] |
//! | `agent`, everyone else | `trust` | none |
//!
//! Database `appdb`, where every role may create tables in `public`. The same rules apply to
//! `hostssl` connections when the server runs with TLS ([`PgServer::start_with_tls`]): a test CA
//! and a server certificate for `127.0.0.1` and `localhost`, made with the `openssl` CLI, plus an
//! unrelated "wrong" CA for negative tests.
//!
//! Dropping the guard stops the server (`pg_ctl stop -m immediate`, then SIGKILL if needed) and
//! removes the directory, also when the test panicked (the server log is echoed then).

use std::{
    fs,
    os::unix::fs::{chown, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::{Pid, User},
};

use crate::{
    free_port, interceptor_cmd, python_argv_with, run_command, workspace_root, Output, TempConfig,
    Value,
};

/// Password of the role `scram_user` (stored as SCRAM-SHA-256, `scram-sha-256` in pg_hba).
pub const SCRAM_PASSWORD: &str = "scram-Secret-7c1e9b4d20";
/// Password of the role `md5_user` (stored as MD5, `md5` in pg_hba).
pub const MD5_PASSWORD: &str = "md5-Secret-3f8a2e61b7";
/// The database every test uses.
pub const PG_DB: &str = "appdb";
/// A role that authenticates with `trust`.
pub const PG_TRUST_USER: &str = "agent";

/// How long initdb / start-up / one psql call may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// The PostgreSQL server binaries: `$PG_BIN`, else /usr/lib/postgresql/15/bin, else the newest
/// /usr/lib/postgresql/*/bin that has `initdb`.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let preferred = PathBuf::from("/usr/lib/postgresql/15/bin");
    if preferred.join("initdb").is_file() {
        return preferred;
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/15/bin/initdb); \
             run scripts/bootstrap.sh (apt package `postgresql`) or set PG_BIN"
        )
    })
}

/// `<pg_bin_dir>/psql` (world-executable, so it also works under `exec --user`).
pub fn psql_bin() -> PathBuf {
    pg_bin_dir().join("psql")
}

/// The project venv's interpreter (`<workspace>/.venv/bin/python`, built by bootstrap.sh on
/// /usr/bin/python3 with psycopg[binary], asyncpg and sqlalchemy).
pub fn venv_python() -> PathBuf {
    let p = match std::env::var_os("INTERCEPTOR_VENV").filter(|p| !p.is_empty()) {
        Some(v) => PathBuf::from(v).join("bin/python"),
        None => workspace_root().join(".venv/bin/python"),
    };
    assert!(
        p.exists(),
        "python venv not found at {} — run scripts/bootstrap.sh",
        p.display()
    );
    p
}

/// `[venv python, -c, PY_PRELUDE + PG_PY_PRELUDE + code, args…]`.
pub fn venv_python_argv(code: &str, args: &[String]) -> Vec<String> {
    python_argv_with(
        &venv_python().display().to_string(),
        &format!("{PG_PY_PRELUDE}\n{code}"),
        args,
    )
}

/// Runs a venv Python client directly (no interceptor) to completion.
pub fn run_venv_python(code: &str, args: &[String], timeout: Duration) -> Output {
    let argv = venv_python_argv(code, args);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).current_dir("/");
    run_command(cmd, timeout)
}

/// Runs a venv Python client under `interceptor exec` to completion.
pub fn run_venv_python_exec(
    cfg: &TempConfig,
    user: Option<&str>,
    code: &str,
    args: &[String],
    timeout: Duration,
) -> Output {
    crate::run_exec_timeout(cfg, user, &venv_python_argv(code, args), timeout)
}

/// Helpers for the PostgreSQL clients (after [`crate::PY_PRELUDE`]).
///
/// - `ARGS`: `json.loads(sys.argv[1])` when the first argument is a JSON object, else `{}`.
/// - `conninfo(**kw)`: a libpq conninfo string from keywords (values quoted).
/// - `err_info(e)`: {type, message, sqlstate} of an exception, for reports.
pub const PG_PY_PRELUDE: &str = r#"
ARGS = {}
if len(sys.argv) > 1 and sys.argv[1].startswith("{"):
    ARGS = json.loads(sys.argv[1])
def conninfo(**kw):
    def q(v):
        v = str(v).replace("\\", "\\\\").replace("'", "\\'")
        return "'" + v + "'"
    return " ".join("%s=%s" % (k, q(v)) for k, v in kw.items() if v is not None)
def err_info(e):
    return {"type": type(e).__name__, "message": str(e),
            "sqlstate": getattr(e, "sqlstate", None)}
"#;

/// TLS material of a server started with [`PgServer::start_with_tls`].
#[derive(Debug, Clone)]
pub struct PgTls {
    /// The CA that signed the server certificate (PEM, world-readable).
    pub ca: PathBuf,
    /// An unrelated CA (PEM, world-readable) that did not sign anything the server presents.
    pub wrong_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A running PostgreSQL server owned by a test. Stopped and removed on drop.
pub struct PgServer {
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    port: u16,
    bin: PathBuf,
    tls: Option<PgTls>,
    log: PathBuf,
    started: bool,
}

impl PgServer {
    /// A plain (no TLS) server.
    pub fn start() -> PgServer {
        Self::start_inner(false)
    }

    /// A server with `ssl = on`: certificate for CN/SAN 127.0.0.1 and localhost, signed by a
    /// fresh test CA ([`PgServer::ca_path`]).
    pub fn start_with_tls() -> PgServer {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> PgServer {
        let bin = pg_bin_dir();
        let postgres = User::from_name("postgres")
            .ok()
            .flatten()
            .expect("OS user `postgres` (from the postgresql package) is missing");
        let (uid, gid) = (postgres.uid.as_raw(), postgres.gid.as_raw());

        let dir = tempfile::Builder::new()
            .prefix("interceptor-pg-")
            .tempdir()
            .expect("create postgres temp dir");
        let root = dir.path().to_path_buf();
        chown(&root, Some(uid), Some(gid)).expect("chown postgres temp dir");
        // 0755: clients (any user) read the CA certificates under tls/.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod pg dir");
        let data = root.join("data");
        let log = root.join("postgres.log");

        let mut server = PgServer {
            dir: Some(dir),
            data: data.clone(),
            port: 0,
            bin: bin.clone(),
            tls: None,
            log: log.clone(),
            started: false,
        };

        // initdb as postgres.
        let mut cmd = as_postgres(&root, &bin.join("initdb"));
        cmd.arg("-D").arg(&data).args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        let out = run_command(cmd, INITDB_TIMEOUT);
        assert!(out.success(), "initdb failed\n{}", out.describe());

        if tls {
            server.tls = Some(make_tls(&root.join("tls"), uid, gid));
        }

        // Settings (port goes on the command line, so a start-up retry can pick another).
        let mut conf = format!(
            "\n# interceptor tests\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 16MB\n\
             max_connections = 60\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n\
             log_min_messages = warning\n\
             log_connections = off\n",
            root.display()
        );
        let mut hba = String::from(
            "# interceptor tests: written by the harness\n\
             local all all trust\n\
             host all scram_user 127.0.0.1/32 scram-sha-256\n\
             host all md5_user 127.0.0.1/32 md5\n\
             host all all 127.0.0.1/32 trust\n",
        );
        if let Some(t) = &server.tls {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                t.server_cert.display(),
                t.server_key.display()
            ));
            hba.push_str(
                "hostssl all scram_user 127.0.0.1/32 scram-sha-256\n\
                 hostssl all md5_user 127.0.0.1/32 md5\n\
                 hostssl all all 127.0.0.1/32 trust\n",
            );
        } else {
            conf.push_str("ssl = off\n");
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        fs::write(&conf_path, text).expect("write postgresql.conf");
        fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        for f in ["postgresql.conf", "pg_hba.conf"] {
            chown(data.join(f), Some(uid), Some(gid)).expect("chown conf");
        }

        // Start, retrying with another port if the free one was taken meanwhile.
        let mut last = None;
        for _attempt in 0..3 {
            let port = free_port();
            let mut cmd = as_postgres(&root, &bin.join("pg_ctl"));
            cmd.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "45", "-o"])
                .arg(format!("-p {port}"))
                .arg("start");
            let out = run_command(cmd, START_TIMEOUT);
            if out.success() {
                server.port = port;
                server.started = true;
                last = None;
                break;
            }
            // Make sure a half-started server is gone before retrying.
            server.started = true;
            server.stop_server();
            server.started = false;
            last = Some(format!(
                "{}\n--- postgres.log ---\n{}",
                out.describe(),
                fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        if let Some(err) = last {
            panic!("pg_ctl start failed 3 times\n{err}");
        }
        server.wait_ready();
        server.setup_roles();
        server
    }

    /// Polls `pg_isready` (TCP) and a superuser `SELECT 1` until both work, within 30 s.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut cmd = Command::new(self.bin.join("pg_isready"));
            cmd.current_dir("/").args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "2",
            ]);
            let ready = run_command(cmd, Duration::from_secs(10)).success()
                && self.try_psql_db("postgres", "SELECT 1").success();
            if ready {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "postgres on port {} not ready within 30 s\n--- postgres.log ---\n{}",
                    self.port,
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn setup_roles(&self) {
        let sq = |s: &str| s.replace('\'', "''");
        self.psql("CREATE DATABASE appdb");
        // Each -c runs on its own, so SET applies to the CREATE ROLE after it in one session.
        let out = self.try_psql_multi(
            "postgres",
            &[
                "SET password_encryption = 'scram-sha-256'".to_owned(),
                format!(
                    "CREATE ROLE scram_user LOGIN PASSWORD '{}'",
                    sq(SCRAM_PASSWORD)
                ),
                "SET password_encryption = 'md5'".to_owned(),
                format!("CREATE ROLE md5_user LOGIN PASSWORD '{}'", sq(MD5_PASSWORD)),
                "CREATE ROLE agent LOGIN".to_owned(),
                "GRANT ALL ON DATABASE appdb TO PUBLIC".to_owned(),
            ],
        );
        assert!(out.success(), "creating roles failed\n{}", out.describe());
        // PostgreSQL 15 no longer lets PUBLIC create in schema public: the tests need it.
        self.psql_db("appdb", "GRANT ALL ON SCHEMA public TO PUBLIC");
        let kinds = self.psql(
            "SELECT rolname || ':' || left(rolpassword, 13) FROM pg_authid \
             WHERE rolname IN ('scram_user', 'md5_user') ORDER BY rolname",
        );
        assert!(
            kinds.contains("md5_user:md5") && kinds.contains("scram_user:SCRAM-SHA-256"),
            "password storage is not as intended: {kinds}"
        );
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:<port>"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The temp dir (also the unix socket directory).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("pg dir").path()
    }

    /// TLS material, if started with TLS.
    pub fn tls(&self) -> Option<&PgTls> {
        self.tls.as_ref()
    }

    /// The CA that signed the server certificate. Panics if the server runs without TLS.
    pub fn ca_path(&self) -> &Path {
        &self.tls.as_ref().expect("server started without TLS").ca
    }

    /// A CA unrelated to the server's certificate. Panics if the server runs without TLS.
    pub fn wrong_ca_path(&self) -> &Path {
        &self
            .tls
            .as_ref()
            .expect("server started without TLS")
            .wrong_ca
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn psql_cmd(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.current_dir("/");
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGSSLMODE",
            "PGSERVICE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        cmd.arg("-X")
            .arg("-q")
            .arg("-A")
            .arg("-t")
            .args(["-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db]);
        cmd
    }

    fn try_psql_multi(&self, db: &str, sqls: &[String]) -> Output {
        let mut cmd = self.psql_cmd(db);
        for s in sqls {
            cmd.arg("-c").arg(s);
        }
        run_command(cmd, PSQL_TIMEOUT)
    }

    /// Runs `sql` as superuser `postgres` over the unix socket in database `db`.
    pub fn try_psql_db(&self, db: &str, sql: &str) -> Output {
        self.try_psql_multi(db, &[sql.to_owned()])
    }

    /// Runs `sql` as superuser in `db`; returns stdout (unaligned, tuples only) trimmed.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let out = self.try_psql_db(db, sql);
        assert!(
            out.success(),
            "psql failed\n{}\n--- postgres.log (tail) ---\n{}",
            out.describe(),
            tail(&self.log_text(), 40)
        );
        out.stdout.trim().to_owned()
    }

    /// Runs `sql` as superuser in database `postgres`, directly (not through the interceptor).
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// `pg_ctl stop -m immediate`, then SIGKILL the postmaster if it is still there.
    fn stop_server(&mut self) {
        if !self.started {
            return;
        }
        self.started = false;
        let pid = fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        let root = match &self.dir {
            Some(d) => d.path().to_path_buf(),
            None => return,
        };
        let mut cmd = as_postgres(&root, &self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"]);
        let out = run_command(cmd, Duration::from_secs(20));
        if let Some(pid) = pid.filter(|p| *p > 1) {
            let pid = Pid::from_raw(pid);
            let deadline = Instant::now() + Duration::from_secs(5);
            while process_alive(pid) && Instant::now() < deadline {
                if !out.success() {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                thread::sleep(Duration::from_millis(50));
            }
            if process_alive(pid) {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
    }
}

/// The process exists and is not a zombie (the postmaster is not our child, so if nobody
/// reaps it, it stays a zombie after exiting).
fn process_alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 3, after the parenthesised comm (which may itself contain spaces or parens).
    match stat.rfind(')') {
        Some(i) => !matches!(
            stat[i + 1..].split_whitespace().next(),
            Some("Z") | Some("X")
        ),
        None => false,
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- postgres.log (port {}) tail ---\n{}",
                self.port,
                tail(&self.log_text(), 60)
            );
        }
        self.stop_server();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("cleanup: rm -rf {}: {e}", path.display());
            }
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `runuser -u postgres -- BIN` with cwd `cwd` (initdb and the server refuse to run as root).
fn as_postgres(cwd: &Path, bin: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.current_dir(cwd).args(["-u", "postgres", "--"]).arg(bin);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Test certificates (openssl CLI)
// ---------------------------------------------------------------------------------------------

/// Path of the `openssl` CLI; panics with a hint when it is missing.
pub fn openssl_bin() -> PathBuf {
    for p in ["/usr/bin/openssl", "/bin/openssl", "/usr/local/bin/openssl"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("the `openssl` CLI is missing; run scripts/bootstrap.sh (apt package `openssl`)");
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new(openssl_bin());
    cmd.current_dir(dir).args(args);
    let out = run_command(cmd, OPENSSL_TIMEOUT);
    assert!(out.success(), "openssl failed\n{}", out.describe());
}

/// A self-signed CA `<dir>/<stem>.pem` with key `<dir>/<stem>.key` (P-256, 7 days).
pub fn make_test_ca(dir: &Path, stem: &str, common_name: &str) -> PathBuf {
    fs::create_dir_all(dir).expect("mkdir tls dir");
    let cnf = dir.join(format!("{stem}.cnf"));
    fs::write(
        &cnf,
        format!(
            "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
             [dn]\nCN = {common_name}\nO = interceptor tests\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
        ),
    )
    .expect("write ca cnf");
    let key = format!("{stem}.key");
    let pem = format!("{stem}.pem");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-sha256",
            "-days",
            "7",
            "-config",
            &format!("{stem}.cnf"),
            "-keyout",
            &key,
            "-out",
            &pem,
        ],
    );
    fs::set_permissions(dir.join(&key), fs::Permissions::from_mode(0o600)).expect("chmod ca key");
    fs::set_permissions(dir.join(&pem), fs::Permissions::from_mode(0o644)).expect("chmod ca pem");
    dir.join(pem)
}

/// A leaf certificate `<dir>/<stem>.pem` + key for `sans` (e.g. `["IP:127.0.0.1",
/// "DNS:localhost"]`), CN `cn`, signed by the CA made with [`make_test_ca`] under `ca_stem`.
pub fn make_server_cert(dir: &Path, ca_stem: &str, stem: &str, cn: &str, sans: &[&str]) {
    fs::write(
        dir.join(format!("{stem}.cnf")),
        format!("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n"),
    )
    .expect("write leaf cnf");
    fs::write(
        dir.join(format!("{stem}.ext")),
        format!(
            "basicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n\
             subjectAltName = {}\n",
            sans.join(",")
        ),
    )
    .expect("write leaf ext");
    let serial = format!(
        "0x{:x}{:08x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-config",
            &format!("{stem}.cnf"),
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "7",
            "-in",
            &format!("{stem}.csr"),
            "-CA",
            &format!("{ca_stem}.pem"),
            "-CAkey",
            &format!("{ca_stem}.key"),
            "-set_serial",
            &serial,
            "-extfile",
            &format!("{stem}.ext"),
            "-out",
            &format!("{stem}.pem"),
        ],
    );
    fs::set_permissions(
        dir.join(format!("{stem}.pem")),
        fs::Permissions::from_mode(0o644),
    )
    .expect("chmod leaf pem");
}

fn make_tls(dir: &Path, pg_uid: u32, pg_gid: u32) -> PgTls {
    fs::create_dir_all(dir).expect("mkdir tls");
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod tls dir");
    let ca = make_test_ca(dir, "ca", "interceptor test CA");
    let wrong_ca = make_test_ca(dir, "wrong-ca", "interceptor wrong CA");
    make_server_cert(
        dir,
        "ca",
        "server",
        "127.0.0.1",
        &["IP:127.0.0.1", "DNS:localhost"],
    );
    let server_key = dir.join("server.key");
    let server_cert = dir.join("server.pem");
    // PostgreSQL insists on a key owned by the server user with mode 0600.
    chown(&server_key, Some(pg_uid), Some(pg_gid)).expect("chown server key");
    fs::set_permissions(&server_key, fs::Permissions::from_mode(0o600)).expect("chmod key");
    PgTls {
        ca,
        wrong_ca,
        server_cert,
        server_key,
    }
}

// ---------------------------------------------------------------------------------------------
// interceptor configs for PostgreSQL targets, and `sessions show`
// ---------------------------------------------------------------------------------------------

/// The address the agent dials for `pg`: `127.0.0.2:<pg port>` (nothing listens there; only
/// the interceptor's capture makes it reachable).
pub fn pg_dial_host() -> &'static str {
    "127.0.0.2"
}

/// The interceptor's state dir in a test config: `<cfg dir>/state` (the local CA lands in
/// `<state>/ca.pem`). Not created by the harness: the interceptor creates it.
pub fn state_dir(cfg: &TempConfig) -> PathBuf {
    cfg.dir().join("state")
}

/// A config with `[journal]`, `[state]` and one `[[target]]` named `appdb`, protocol
/// `postgres`, intercepting `127.0.0.2:<pg port>` and relaying to `127.0.0.1:<pg port>`.
/// `target_extra` is appended inside the target: more keys first, then sub-tables such as
/// `[target.credentials]`.
pub fn pg_config(pg: &PgServer, target_extra: &str) -> TempConfig {
    let cfg = TempConfig::new("");
    cfg.write(&pg_config_text(&cfg, pg.port(), target_extra));
    cfg
}

/// The text [`pg_config`] writes, for a server on `port`.
/// The protocol tests judge nothing: unless `target_extra` names a policy, the target uses the
/// shipped journal-only policy (allow and record everything).
pub fn pg_config_text(cfg: &TempConfig, port: u16, target_extra: &str) -> String {
    let policy = if target_extra.contains("policy =") {
        String::new()
    } else {
        format!(
            "policy = \"{}\"\n",
            workspace_root()
                .join("policies/examples/journal-only.toml")
                .display()
        )
    };
    format!(
        "{journal}\n[state]\ndir = \"{state}\"\n\n[[target]]\nname = \"appdb\"\n\
         protocol = \"postgres\"\nintercept = [\"{dial}:{port}\"]\n\
         upstream = \"127.0.0.1:{port}\"\n{policy}{target_extra}\n",
        journal = cfg.journal_section(),
        state = state_dir(cfg).display(),
        dial = pg_dial_host(),
    )
}

/// The JSON argument of the gateway's Python clients: `host` (the dialed address,
/// [`pg_dial_host`]), `port` (the server's), `psql` (its path), plus the keys of `extra`.
pub fn client_args(pg: &PgServer, extra: Value) -> Vec<String> {
    let mut args = serde_json::json!({
        "host": pg_dial_host(),
        "port": pg.port(),
        "psql": psql_bin().display().to_string(),
    });
    if let (Some(args), Some(extra)) = (args.as_object_mut(), extra.as_object()) {
        args.extend(extra.clone());
    }
    vec![args.to_string()]
}

/// `psql` as an agent: user `agent` on `appdb` at the dialed address, stopping at the first
/// error, running each of `statements`.
pub fn psql_agent_argv(pg: &PgServer, statements: &[&str]) -> Vec<String> {
    let mut argv = vec![
        psql_bin().display().to_string(),
        format!(
            "host={} port={} dbname=appdb user=agent sslmode=disable",
            pg_dial_host(),
            pg.port()
        ),
        "-v".to_owned(),
        "ON_ERROR_STOP=1".to_owned(),
    ];
    for s in statements {
        argv.push("-c".to_owned());
        argv.push((*s).to_owned());
    }
    argv
}

/// Writes `contents` to `<cfg dir>/<name>` with mode 0600 (a password file); returns its path.
pub fn write_secret(cfg: &TempConfig, name: &str, contents: &str) -> PathBuf {
    let p = cfg.dir().join(name);
    fs::write(&p, contents).expect("write secret");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod secret");
    p
}

/// `interceptor --config CFG sessions show ID --json`, parsed as a JSON object.
pub fn try_session_show(cfg: &TempConfig, id: i64) -> Result<Value, Output> {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(["sessions", "show", &id.to_string(), "--json"]);
    let out = run_command(cmd, Duration::from_secs(30));
    if !out.success() {
        return Err(out);
    }
    match serde_json::from_str::<Value>(out.stdout.trim()) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(out),
    }
}

/// [`try_session_show`], panicking on failure.
pub fn session_show(cfg: &TempConfig, id: i64) -> Value {
    try_session_show(cfg, id)
        .unwrap_or_else(|out| panic!("sessions show {id} --json failed\n{}", out.describe()))
}

/// The raw stdout of `sessions show ID --json` (for grepping secrets).
pub fn session_show_raw(cfg: &TempConfig, id: i64) -> String {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(["sessions", "show", &id.to_string(), "--json"]);
    let out = run_command(cmd, Duration::from_secs(30));
    assert!(out.success(), "sessions show failed\n{}", out.describe());
    out.stdout
}

/// Events of a `sessions show` object with `kind == kind`, in journal order.
pub fn events_of_kind(show: &Value, kind: &str) -> Vec<Value> {
    show["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"].as_str() == Some(kind))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Events of `kind` in `sessions` (rows of `sessions list --json`), session by session.
pub fn events_in(cfg: &TempConfig, sessions: &[Value], kind: &str) -> Vec<Value> {
    sessions
        .iter()
        .flat_map(|s| events_of_kind(&session_show(cfg, s["id"].as_i64().expect("id")), kind))
        .collect()
}

/// Events of `kind` in every session of the journal, session by session.
pub fn journal_events(cfg: &TempConfig, kind: &str) -> Vec<Value> {
    events_in(cfg, &crate::sessions(cfg), kind)
}

/// Every byte of the journal (the db file and its -wal/-shm companions), for secret greps.
pub fn journal_bytes(cfg: &TempConfig) -> Vec<u8> {
    let name = cfg
        .journal
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut all = Vec::new();
    if let Some(dir) = cfg.journal.parent() {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&name) {
                    if let Ok(b) = fs::read(e.path()) {
                        all.extend_from_slice(&b);
                    }
                }
            }
        }
    }
    all
}

/// True when `needle` occurs in `haystack`.
pub fn bytes_contain(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
