//! A real OpenSSH server for the SSH tests: `/usr/sbin/sshd -D -e -f CONFIG` as root on a
//! 127.0.0.x port, with a config, host key and authorized_keys of the test's own (Debian's
//! openssh-server, installed by scripts/bootstrap.sh; its system service stays disabled).

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{run_command, Spawned};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Generates an unencrypted OpenSSH key pair at `path` (`path.pub` beside it): `kind` is
/// `ed25519`, `ecdsa` or `rsa`.
pub fn ssh_keygen(path: &Path, kind: &str) -> PathBuf {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", "interceptor-test", "-f"])
        .arg(path);
    let out = run_command(cmd, TIMEOUT);
    assert!(out.success(), "ssh-keygen: {}", out.describe());
    path.to_owned()
}

/// The public half of a key made by [`ssh_keygen`], as one line (`ssh-ed25519 AAAA… comment`).
pub fn public_key_line(private: &Path) -> String {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    fs::read_to_string(PathBuf::from(name))
        .expect("public key")
        .trim()
        .to_owned()
}

/// A port free on `host` right now.
pub fn port_on(host: &str) -> u16 {
    TcpListener::bind((host, 0))
        .expect("bind a loopback port")
        .local_addr()
        .expect("local address")
        .port()
}

/// What the server presents and whom it lets in.
pub struct SshdKeys<'a> {
    pub host_key: &'a Path,
    /// A host certificate for `host_key`, if it has one.
    pub host_cert: Option<&'a Path>,
    /// The public keys allowed to log in as root (an authorized_keys file).
    pub authorized_keys: &'a Path,
}

/// A running sshd; killed (by its pid) when dropped.
pub struct Sshd {
    _server: Spawned,
    pub host: String,
    pub port: u16,
}

impl Sshd {
    /// Starts sshd on `host` (a free port), its config in `dir`, and waits until it listens.
    pub fn start(dir: &Path, host: &str, keys: &SshdKeys<'_>) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "this test needs OpenSSH's sshd (Debian: openssh-server; scripts/bootstrap.sh installs it)"
        );
        // The privilege separation directory sshd insists on.
        fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let port = port_on(host);
        let cert = keys
            .host_cert
            .map(|c| format!("HostCertificate {}\n", c.display()))
            .unwrap_or_default();
        let config = dir.join(format!("sshd_config-{port}"));
        fs::write(
            &config,
            format!(
                "ListenAddress {host}:{port}\nHostKey {key}\n{cert}\
                 AuthorizedKeysFile {authorized}\n\
                 PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 Subsystem sftp internal-sftp\nAllowTcpForwarding yes\n",
                key = keys.host_key.display(),
                authorized = keys.authorized_keys.display(),
            ),
        )
        .expect("sshd_config");
        let mut cmd = Command::new(sshd);
        cmd.arg("-D").arg("-e").arg("-f").arg(&config);
        let mut server = Spawned::spawn(cmd, "sshd", false);
        server
            .wait_line(true, TIMEOUT, |l| l.contains("Server listening"))
            .unwrap_or_else(|| panic!("sshd did not start: {}", server.stderr_so_far()));
        Sshd {
            _server: server,
            host: host.to_owned(),
            port,
        }
    }
}
