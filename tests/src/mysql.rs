//! A real MariaDB server shared by a test binary, and the configs that put the gateway in
//! front of it.
//!
//! [`server`] starts it once per test process: `mariadb-install-db` into a fresh temp dir,
//! then `mariadbd` (no option files read) listening on 127.0.0.1 at a free port plus a Unix
//! socket in that dir. Database `appdb` and the account `app`@`%` with password
//! [`APP_PASSWORD`] and every privilege (so refusals are the gateway's, never the server's)
//! are created over the socket as the OS root (`unix_socket` authentication).
//!
//! The server also speaks TLS, with a throwaway CA made in the same dir
//! ([`MyServer::ca_path`]; [`MyServer::wrong_ca_path`] is an unrelated one), and has two more
//! accounts whose use proves something about the gateway's login: [`TLS_USER`] (`REQUIRE
//! SSL`: a login without TLS is refused by the server) and [`ED25519_USER`] (`IDENTIFIED VIA
//! ed25519`: only a `client_ed25519` answer gets in). Plain connections keep working for
//! every other account.
//!
//! The server is started under a small shell that waits for the test process to end, then
//! stops the server and removes the directory: statics are never dropped, so this is how the
//! shared server is cleaned up, also when a test panicked.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{free_port, run_command, workspace_root, Output, TempConfig};

/// The upstream account's password (what `[target.credentials]` injects).
pub const APP_PASSWORD: &str = "mysql-Secret-5b9d2c71e4";
/// The upstream account.
pub const APP_USER: &str = "app";
/// The database every test uses.
pub const MY_DB: &str = "appdb";
/// An account the server accepts only over TLS (`REQUIRE SSL`), password [`TLS_PASSWORD`].
pub const TLS_USER: &str = "app_tls";
pub const TLS_PASSWORD: &str = "mysql-Tls-Secret-8e31a0c2";
/// An account of MariaDB's `ed25519` plugin, password [`ED25519_PASSWORD`].
pub const ED25519_USER: &str = "app_ed";
pub const ED25519_PASSWORD: &str = "mysql-Ed-Secret-27c4f9d1";

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The running shared server.
pub struct MyServer {
    dir: PathBuf,
    port: u16,
    /// The shell that stops the server once this process ends (it outlives us; never waited).
    _reaper: std::process::Child,
}

/// The shared server, started on first use.
pub fn server() -> &'static MyServer {
    static SERVER: OnceLock<MyServer> = OnceLock::new();
    SERVER.get_or_init(MyServer::start)
}

impl MyServer {
    fn start() -> MyServer {
        assert!(
            crate::has_program("mariadbd") || Path::new("/usr/sbin/mariadbd").exists(),
            "mariadbd not found: run scripts/bootstrap.sh (apt package mariadb-server)"
        );
        let dir = tempfile::Builder::new()
            .prefix("interceptor-mysql-")
            .tempdir()
            .expect("mysql temp dir")
            .keep();
        let data = dir.join("data");
        let mut install = Command::new("mariadb-install-db");
        install.args([
            "--no-defaults",
            &format!("--datadir={}", data.display()),
            "--user=root",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ]);
        let out = run_command(install, START_TIMEOUT);
        assert!(
            out.success(),
            "mariadb-install-db failed\n{}",
            out.describe()
        );
        let port = free_port();
        let socket = dir.join("mysqld.sock");
        // The server's certificate names 127.0.0.1 (what the gateway dials) and localhost.
        let tls = dir.join("tls");
        crate::pg::make_test_ca(&tls, "ca", "interceptor MySQL test CA");
        crate::pg::make_test_ca(&tls, "wrong-ca", "interceptor MySQL wrong CA");
        crate::pg::make_server_cert(
            &tls,
            "ca",
            "server",
            "127.0.0.1",
            &["IP:127.0.0.1", "DNS:localhost"],
        );
        let server = format!(
            "/usr/sbin/mariadbd --no-defaults --datadir={data} --socket={socket} --port={port} \
             --bind-address=127.0.0.1 --user=root --pid-file={dir}/mysqld.pid \
             --log-error={dir}/error.log --skip-log-bin --innodb-buffer-pool-size=16M \
             --secure-file-priv={dir}/files --local-infile=1 --max-allowed-packet=64M \
             --ssl-ca={tls}/ca.pem --ssl-cert={tls}/server.pem --ssl-key={tls}/server.key",
            data = data.display(),
            socket = socket.display(),
            dir = dir.display(),
            tls = tls.display(),
        );
        std::fs::create_dir_all(dir.join("files")).expect("secure-file-priv dir");
        // The reaper: starts the server, waits for this test process to end, stops it.
        let script = format!(
            "{server} & m=$!; while kill -0 {me} 2>/dev/null; do sleep 0.5; done; \
             kill $m; wait $m; rm -rf {dir}",
            me = std::process::id(),
            dir = dir.display(),
        );
        let reaper = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        let me = MyServer {
            dir,
            port,
            _reaper: reaper,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if me.try_root("SELECT 1").success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start\n{}",
                std::fs::read_to_string(me.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        me.root(&format!(
            "CREATE DATABASE {MY_DB}; \
             CREATE USER '{APP_USER}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{APP_PASSWORD}'); \
             GRANT ALL ON *.* TO '{APP_USER}'@'%' WITH GRANT OPTION; \
             CREATE USER '{TLS_USER}'@'%' IDENTIFIED BY '{TLS_PASSWORD}' REQUIRE SSL; \
             GRANT ALL ON {MY_DB}.* TO '{TLS_USER}'@'%'; \
             INSTALL SONAME 'auth_ed25519'; \
             CREATE USER '{ED25519_USER}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{ED25519_PASSWORD}'); \
             GRANT ALL ON {MY_DB}.* TO '{ED25519_USER}'@'%';"
        ));
        assert!(
            me.root("SHOW VARIABLES LIKE 'have_ssl'").contains("YES"),
            "the test server did not enable TLS\n{}",
            std::fs::read_to_string(me.dir.join("error.log")).unwrap_or_default()
        );
        me
    }

    /// The CA that signed the server's certificate (for `[target.tls] ca_file`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// A CA that signed nothing the server uses.
    pub fn wrong_ca_path(&self) -> PathBuf {
        self.dir.join("tls/wrong-ca.pem")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where `SELECT … INTO OUTFILE` may write (`secure_file_priv`).
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }

    /// Runs SQL as the server's root over its socket (never through the gateway).
    pub fn try_root(&self, sql: &str) -> Output {
        let mut cmd = Command::new("mariadb");
        cmd.args([
            "--no-defaults",
            "-S",
            &self.dir.join("mysqld.sock").display().to_string(),
            "-u",
            "root",
            "-N",
            "-B",
            "-e",
            sql,
        ]);
        run_command(cmd, Duration::from_secs(30))
    }

    /// [`MyServer::try_root`], panicking on failure; returns stdout.
    pub fn root(&self, sql: &str) -> String {
        let out = self.try_root(sql);
        assert!(out.success(), "{sql}\n{}", out.describe());
        out.stdout
    }
}

/// The address agents dial for the server: `127.0.0.2:<port>` (only capture makes it
/// reachable).
pub fn my_dial_host() -> &'static str {
    "127.0.0.2"
}

/// A config with one `[[target]]` named `appdb`, protocol `mysql`, intercepting
/// `127.0.0.2:<port>` and relaying to the server with the `app` credentials from a 0600 file.
/// `policy` is the policy's text (written next to the config); `None` means the shipped
/// journal-only policy. `extra` is appended after the target (more tables), with `{dir}`
/// replaced by the config's directory.
pub fn my_config(server: &MyServer, policy: Option<&str>, extra: &str) -> TempConfig {
    my_config_as(server, APP_USER, APP_PASSWORD, policy, extra)
}

/// [`my_config`] logging in upstream as `user` with `password`. `extra` may hold the target's
/// own tables (`[target.tls]`): it follows the credentials directly.
pub fn my_config_as(
    server: &MyServer,
    user: &str,
    password: &str,
    policy: Option<&str>,
    extra: &str,
) -> TempConfig {
    let cfg = TempConfig::new("");
    let secret = crate::pg::write_secret(&cfg, "mysql-password", password);
    let policy = match policy {
        Some(text) => {
            let path = cfg.dir().join("policy.toml");
            std::fs::write(&path, text).expect("write policy");
            path
        }
        None => workspace_root().join("policies/examples/journal-only.toml"),
    };
    let extra = extra.replace("{dir}", &cfg.dir().display().to_string());
    cfg.write(&format!(
        "{journal}\n[state]\ndir = \"{state}\"\n\n[[target]]\nname = \"appdb\"\n\
         protocol = \"mysql\"\nintercept = [\"{dial}:{port}\"]\n\
         upstream = \"127.0.0.1:{port}\"\npolicy = \"{policy}\"\n\
         [target.credentials]\nuser = \"{user}\"\npassword_file = \"{secret}\"\n\n{extra}\n",
        journal = cfg.journal_section(),
        state = crate::pg::state_dir(&cfg).display(),
        dial = my_dial_host(),
        port = server.port(),
        policy = policy.display(),
        secret = secret.display(),
    ));
    cfg
}
