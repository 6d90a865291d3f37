//! Trust for the gateway's TLS and SSH identities, with real clients: OpenSSH's `ssh` against a
//! real `sshd` presenting the gateway's host key and certificate, paramiko, and the bundle
//! `exec --trust-tls` hands a command, used by Python's `ssl` against `openssl s_server`.
//!
//! sshd runs as root on a 127.0.0.x port with a throw-away config; `ssh` authenticates with a
//! key made for the test, so a success means host verification passed, and a failure names
//! which step failed.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use interceptor_tests::{sshd::port_on, *};

const SSH_HOST: &str = "127.0.0.5";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A config whose state directory (keys, CAs) and runtime directory (control socket, trust
/// files) are inside its temp dir.
fn trust_config() -> TempConfig {
    let cfg = TempConfig::new("");
    let dir = cfg.dir().display().to_string();
    cfg.write(&format!(
        "{}\n[state]\ndir = \"{dir}/state\"\n\n[approvals]\nsocket = \"{dir}/run/control.sock\"\n",
        cfg.journal_section()
    ));
    cfg
}

fn cli(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(args);
    let out = run_command(cmd, TIMEOUT);
    assert!(out.success(), "interceptor {args:?}: {}", out.describe());
    out
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// A real OpenSSH server presenting the gateway's host key and host certificate, and a client
/// key it accepts (for root, who runs the tests).
struct Sshd {
    _server: sshd::Sshd,
    port: u16,
    client_key: PathBuf,
}

impl Sshd {
    fn start(cfg: &TempConfig) -> Sshd {
        // Creates the CA, the host key and its certificate.
        cli(cfg, &["ca", "known-hosts"]);
        let state = cfg.dir().join("state");
        let dir = cfg.dir();
        let client_key = sshd::ssh_keygen(&dir.join("client_key"), "ed25519");
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )
        .unwrap();
        let server = sshd::Sshd::start(
            dir,
            SSH_HOST,
            &sshd::SshdKeys {
                host_key: &state.join("ssh_host_ed25519_key"),
                host_cert: Some(&state.join("ssh_host_ed25519_key-cert.pub")),
                authorized_keys: &dir.join("authorized_keys"),
            },
        );
        Sshd {
            port: server.port,
            _server: server,
            client_key,
        }
    }

    /// `ssh` to the server with strict host checking, no prompts, and only `known_hosts`.
    fn ssh_args(&self, known_hosts: Option<&Path>) -> Vec<String> {
        let mut args = vec![
            "ssh".to_owned(),
            "-F".to_owned(),
            "/dev/null".to_owned(),
            "-i".to_owned(),
            self.client_key.display().to_string(),
            "-p".to_owned(),
            self.port.to_string(),
            "-o".to_owned(),
            "BatchMode=yes".to_owned(),
            "-o".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "-o".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
            "-o".to_owned(),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
        ];
        if let Some(file) = known_hosts {
            args.extend([
                "-o".to_owned(),
                format!("UserKnownHostsFile={}", file.display()),
            ]);
        }
        args.extend([format!("root@{SSH_HOST}"), "echo host-verified".to_owned()]);
        args
    }
}

fn run_argv(argv: &[String]) -> Output {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    run_command(cmd, TIMEOUT)
}

#[test]
fn openssh_trusts_the_gateway_host_certificate_through_the_cert_authority_line() {
    require_root!();
    let cfg = trust_config();
    let sshd = Sshd::start(&cfg);
    let lines = cli(&cfg, &["ca", "known-hosts", "--openssh"]).stdout;
    assert!(
        lines.starts_with("@cert-authority * ssh-ed25519 AAAA")
            && lines.trim_end().ends_with(" interceptor-ssh-ca"),
        "{lines}"
    );
    let known_hosts = write(&cfg.dir().join("known_hosts"), &lines);

    let out = run_argv(&sshd.ssh_args(Some(&known_hosts)));
    assert!(out.success(), "ssh with the CA line: {}", out.describe());
    assert_eq!(out.stdout.trim(), "host-verified");

    // Without the line, the same client refuses the host before authenticating.
    let empty = write(&cfg.dir().join("empty_known_hosts"), "");
    let out = run_argv(&sshd.ssh_args(Some(&empty)));
    assert!(!out.success(), "ssh without the CA line must fail");
    assert!(
        out.stderr.contains("Host key verification failed"),
        "{}",
        out.describe()
    );
}

#[test]
fn paramiko_with_reject_policy_accepts_the_plain_host_key_line() {
    require_root!();
    let cfg = trust_config();
    let sshd = Sshd::start(&cfg);
    // paramiko matches names exactly ([host]:port off port 22), so the pattern names the
    // server; and it cannot load a file with an @cert-authority line, hence --plain.
    let pattern = format!("[{SSH_HOST}]:{}", sshd.port);
    let lines = cli(
        &cfg,
        &["ca", "known-hosts", "--plain", "--pattern", &pattern],
    )
    .stdout;
    assert_eq!(lines.lines().count(), 1, "{lines}");
    let known_hosts = write(&cfg.dir().join("known_hosts"), &lines);
    let code = r#"
import paramiko
args = json.loads(sys.argv[1])
client = paramiko.SSHClient()
client.load_host_keys(args["known_hosts"])
client.set_missing_host_key_policy(paramiko.RejectPolicy())
def run():
    client.connect(args["host"], port=args["port"], username="root",
                   key_filename=args["key"], look_for_keys=False, allow_agent=False, timeout=20)
    _, out, _ = client.exec_command("echo host-verified")
    return out.read().decode().strip()
try:
    report(ok=True, out=run())
except Exception as e:
    report(ok=False, error=f"{type(e).__name__}: {e}")
"#;
    let run = |known_hosts: &Path| {
        let args = json!({
            "known_hosts": known_hosts.display().to_string(),
            "host": SSH_HOST,
            "port": sshd.port,
            "key": sshd.client_key.display().to_string(),
        })
        .to_string();
        let argv = python_argv_with(&venv_python().display().to_string(), code, &[args]);
        let out = run_argv(&argv);
        assert!(out.success(), "{}", out.describe());
        out.json()
    };
    let accepted = run(&known_hosts);
    assert_eq!(accepted["ok"], true, "{accepted}");
    assert_eq!(accepted["out"], "host-verified");

    // The host key of another gateway (another state directory): RejectPolicy refuses.
    let other = trust_config();
    let other_lines = cli(
        &other,
        &["ca", "known-hosts", "--plain", "--pattern", &pattern],
    )
    .stdout;
    let refused = run(&write(&cfg.dir().join("other"), &other_lines));
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("BadHostKeyException"),
        "{refused}"
    );
}

#[test]
fn exec_trust_ssh_makes_ssh_verify_the_gateway_host_key_and_cleans_up() {
    require_root!();
    let cfg = trust_config();
    let sshd = Sshd::start(&cfg);
    // Inside the run: where ssh looks, what the file says, and a real login through the
    // wrapper (ssh as the command would call it, with no UserKnownHostsFile of its own).
    let ssh = sshd.ssh_args(None)[1..].join(" ");
    let script = format!(
        "set -e\n\
         echo \"KH=$INTERCEPTOR_KNOWN_HOSTS\"\n\
         echo \"GIT=$GIT_SSH_COMMAND\"\n\
         ssh -G {SSH_HOST} | grep '^userknownhostsfile '\n\
         cat \"$INTERCEPTOR_KNOWN_HOSTS\"\n\
         ssh {ssh}\n"
    );
    let mut cmd = interceptor_cmd(Some(&cfg));
    cmd.args(["exec", "--trust-ssh", "--", "sh", "-c", &script]);
    let out = run_command(cmd, EXEC_TIMEOUT);
    assert!(out.success(), "{}", out.describe());
    let stdout = &out.stdout;
    let known_hosts = stdout
        .lines()
        .find_map(|l| l.strip_prefix("KH="))
        .expect("INTERCEPTOR_KNOWN_HOSTS is set");
    assert!(!known_hosts.is_empty(), "{stdout}");
    let ssh_files = stdout
        .lines()
        .find(|l| l.starts_with("userknownhostsfile "))
        .expect("ssh -G output");
    assert!(
        ssh_files.contains(known_hosts),
        "ssh uses the run's file: {ssh_files}"
    );
    let git = stdout.lines().find_map(|l| l.strip_prefix("GIT=")).unwrap();
    assert!(
        git.ends_with("/bin/ssh'"),
        "GIT_SSH_COMMAND names the wrapper: {git}"
    );
    let expected = cli(&cfg, &["ca", "known-hosts"]).stdout;
    assert!(
        stdout.contains(&expected),
        "the file holds `ca known-hosts`: {stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("host-verified"), "{stdout}");
    assert!(
        !Path::new(known_hosts).exists(),
        "the run's trust files are removed when it ends"
    );
}

#[test]
fn exec_trust_tls_bundle_lets_the_command_verify_a_server_the_local_ca_signed() {
    require_root!();
    let cfg = trust_config();
    let dir = cfg.dir();
    let state = dir.join("state");
    let ca_pem = cli(&cfg, &["ca", "pem"]).stdout;
    // A leaf for 127.0.0.1 signed with the local CA's key (ca.key beside ca.pem), as the
    // gateway's own are.
    make_server_cert(&state, "ca", "leaf", "127.0.0.1", &["IP:127.0.0.1"]);
    let (leaf, leaf_key) = (state.join("leaf.pem"), state.join("leaf.key"));
    let port = port_on("127.0.0.1");
    let mut server_cmd = Command::new("openssl");
    server_cmd.args(["s_server", "-quiet", "-www", "-accept"]);
    server_cmd.arg(format!("127.0.0.1:{port}"));
    server_cmd.args(["-cert", path(&leaf), "-key", path(&leaf_key)]);
    let _server = Spawned::spawn(server_cmd, "s_server", false);
    wait_for_port("127.0.0.1", port);

    let code = r#"
import ssl
args = json.loads(sys.argv[1])
env = {v: os.environ.get(v) for v in args["vars"]}
bundle = open(os.environ["SSL_CERT_FILE"]).read()
ctx = ssl.create_default_context()
try:
    with socket.create_connection(("127.0.0.1", args["port"]), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            verified = tls.version()
except ssl.SSLError as e:
    verified = f"failed: {e}"
report(env=env, verified=verified, bundle=bundle)
"#;
    let vars = [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
    ];
    let args = json!({"port": port, "vars": vars}).to_string();
    // As nobody: the run's bundle is readable by the command's own user.
    let argv = python(code, &[args]);
    let mut cmd = interceptor_cmd(Some(&cfg));
    cmd.args(["exec", "--trust-tls", "--user", "nobody", "--"])
        .args(&argv);
    let out = run_command(cmd, EXEC_TIMEOUT);
    assert!(out.success(), "{}", out.describe());
    let report = out.json();
    assert_eq!(report["uid"], 65534, "{report}");
    let bundle_path = report["env"]["SSL_CERT_FILE"]
        .as_str()
        .expect("SSL_CERT_FILE set");
    for var in vars {
        assert_eq!(report["env"][var], bundle_path, "{var}: {report}");
    }
    assert!(
        report["verified"].as_str().unwrap_or("").starts_with("TLS"),
        "the command's TLS client verified the server: {report}"
    );
    let bundle = report["bundle"].as_str().unwrap();
    assert!(bundle.ends_with(&ca_pem), "the local CA is in the bundle");
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
        .expect("Debian's CA bundle (ca-certificates)");
    // Compared as base64 bodies: the bundle is re-encoded, without the file's comments.
    let bodies = |text: &str| -> Vec<String> {
        text.split("-----BEGIN CERTIFICATE-----")
            .skip(1)
            .filter_map(|c| c.split("-----END CERTIFICATE-----").next())
            .map(|b| b.split_whitespace().collect())
            .collect()
    };
    let in_bundle = bodies(bundle);
    let missing = bodies(&system)
        .into_iter()
        .filter(|c| !in_bundle.contains(c))
        .count();
    assert_eq!(
        missing, 0,
        "every system CA is kept, so the command's other TLS connections still verify"
    );
    assert!(
        !Path::new(bundle_path).exists(),
        "removed when the run ends"
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn wait_for_port(host: &str, port: u16) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::net::TcpStream::connect((host, port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {host}:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
