//! CLI contract: clear errors and exit codes.

use std::{os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use interceptor_tests::*;

const T: Duration = Duration::from_secs(30);

fn assert_failed_with(out: &Output, needle: &str) {
    assert!(!out.timed_out, "{}", out.describe());
    assert!(
        !out.status.success(),
        "expected a non-zero exit\n{}",
        out.describe()
    );
    assert!(
        out.stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr should mention {needle:?}\n{}",
        out.describe()
    );
}

#[test]
fn exit_status_is_the_commands() {
    require_root!();
    let cfg = TempConfig::new("");
    let out = run_exec(&cfg, None, &["sh", "-c", "exit 7"]);
    assert_eq!(out.code(), Some(7), "{}", out.describe());
    let out = run_exec(&cfg, None, &["true"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}

/// `interceptor --config CFG ARGS…` as uid/gid 65534 with no supplementary groups, as an
/// operator outside every group would run it.
fn run_as_nobody(cfg: &TempConfig, args: &[&str]) -> Output {
    // A copy in the world-readable temp dir, so uid 65534 can run it wherever the build lives.
    let bin = cfg.dir().join("interceptor");
    if !bin.exists() {
        std::fs::copy(interceptor_bin(), &bin).expect("copy binary");
    }
    let mut cmd = Command::new("setpriv");
    cmd.current_dir("/")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("--config")
        .arg(&cfg.path)
        .args(args);
    run_command(cmd, T)
}

/// `interceptor --config CFG ARGS…` as root.
fn run_cli(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(args);
    run_command(cmd, T)
}

fn assert_exit(out: &Output, code: i32, needle: &str) {
    assert_failed_with(out, needle);
    assert_eq!(out.code(), Some(code), "exit status\n{}", out.describe());
}

#[test]
fn not_root_is_refused() {
    require_root!();
    let cfg = TempConfig::new("");
    let out = run_as_nobody(&cfg, &["exec", "--", "true"]);
    // exec's own failure: 125, so it cannot be mistaken for the command's status.
    assert_exit(&out, 125, "root");
}

#[test]
fn exec_of_a_missing_command_exits_127() {
    require_root!();
    let cfg = TempConfig::new("");
    let out = run_exec(&cfg, None, &["/nonexistent/no-such-command"]);
    assert_exit(&out, 127, "no-such-command");
    let out = run_exec(&cfg, None, &["no-such-command-on-path-xyz"]);
    assert_exit(&out, 127, "no-such-command-on-path-xyz");
}

#[test]
fn exec_of_a_file_that_is_not_executable_exits_126() {
    require_root!();
    let cfg = TempConfig::new("");
    // The config file itself: it exists, mode 0644.
    let out = run_exec(&cfg, None, &[&cfg.path]);
    assert_exit(&out, 126, "permission denied");
}

#[test]
fn a_config_error_exits_2() {
    require_root!();
    let cfg = TempConfig::raw("[journal]\npath = \"{journal}\"\nbogus = = 1\n");
    let out = run_cli(&cfg, &["sessions", "list"]);
    assert_exit(&out, 2, &format!("{}:3:", cfg.path.display()));
}

#[test]
fn a_session_that_does_not_exist_exits_4() {
    require_root!();
    let cfg = TempConfig::new("");
    // No journal at all, then a journal without that session: both are "not found".
    let out = run_cli(&cfg, &["sessions", "show", "42"]);
    assert_exit(&out, 4, "no journal");
    let out = run_exec(&cfg, None, &["true"]);
    assert!(out.success(), "{}", out.describe());
    let out = run_cli(&cfg, &["sessions", "show", "42"]);
    assert_exit(&out, 4, "no session 42");
}

#[test]
fn a_journal_that_fails_verification_exits_1() {
    require_root!();
    let cfg = TempConfig::new("");
    // One relayed connection leaves a session with its events.
    let echo = EchoServer::start("127.0.0.1");
    let out = run_exec(
        &cfg,
        None,
        &[
            "bash",
            "-c",
            &format!("echo hi >/dev/tcp/127.0.0.1/{}", echo.port()),
        ],
    );
    assert!(out.success(), "{}", out.describe());
    let out = run_cli(&cfg, &["journal", "verify"]);
    assert!(out.success(), "untouched journal\n{}", out.describe());
    let mut sqlite = Command::new("sqlite3");
    sqlite
        .arg(&cfg.journal)
        .arg("UPDATE events SET detail = 'edited' WHERE id = (SELECT max(id) FROM events)");
    let tampered = run_command(sqlite, T);
    assert!(tampered.success(), "sqlite3\n{}", tampered.describe());
    let out = run_cli(&cfg, &["journal", "verify"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
}

/// A config whose `[approvals] socket` is `control.sock` in its own directory (plus `extra`
/// keys of that table), and that path.
fn config_with_socket(extra: &str) -> (TempConfig, std::path::PathBuf) {
    let cfg = TempConfig::new("");
    let socket = cfg.dir().join("control.sock");
    cfg.write(&format!(
        "{}\n[approvals]\nsocket = \"{}\"\n{extra}",
        cfg.journal_section(),
        socket.display()
    ));
    (cfg, socket)
}

#[test]
fn a_stale_control_socket_says_the_daemon_is_not_running_and_exits_5() {
    require_root!();
    let (cfg, socket) = config_with_socket("");
    // A socket file nobody listens on, as a killed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let out = run_cli(&cfg, &["approvals", "list"]);
    assert_exit(
        &out,
        5,
        &format!(
            "the interceptor daemon is not running (stale socket at {})",
            socket.display()
        ),
    );
    assert!(
        !out.stdout.contains("no pending approvals"),
        "a list nobody answered is not empty\n{}",
        out.describe()
    );
    // No socket at all: the same code.
    std::fs::remove_file(&socket).expect("rm socket");
    let out = run_cli(&cfg, &["approvals", "list"]);
    assert_exit(&out, 5, "the interceptor daemon is not running");
}

#[test]
fn a_live_socket_answers_and_a_stale_run_socket_beside_it_is_ignored() {
    require_root!();
    let (cfg, _) = config_with_socket("");
    let stale = cfg.dir().join("exec-killed-run.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    // A real gateway's socket: an exec run holding a command open.
    let mut run = Spawned::spawn(exec_cmd(&cfg, None, &["sleep", "30"]), "exec", false);
    let deadline = std::time::Instant::now() + T;
    let live = loop {
        let found = std::fs::read_dir(cfg.dir())
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p != &stale && p.extension().is_some_and(|x| x == "sock"));
        if let Some(p) = found {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no run socket");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = run_cli(&cfg, &["approvals", "list"]);
    run.kill_group();
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("(no pending approvals)"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr
            .contains(&format!("stale socket at {}", stale.display())),
        "the stale socket is named\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains(&live.display().to_string()),
        "{}",
        out.describe()
    );
}

#[test]
fn permission_denied_on_the_control_socket_names_the_group_and_exits_3() {
    require_root!();
    let (cfg, socket) = config_with_socket("group = \"approvers-of-this-test\"\n");
    // Listening, with the mode the daemon gives it (0660, root's group here).
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).expect("chmod");
    let out = run_as_nobody(&cfg, &["approvals", "list"]);
    assert_exit(
        &out,
        3,
        &format!(
            "permission denied on {}: join the `approvers-of-this-test` group to decide approvals",
            socket.display()
        ),
    );
}

/// A socket in a directory the caller may not search (the runtime directory is 0750) is not
/// "no daemon": `approvals`, `status` and `reload` say which group to join, and exit 3.
#[test]
fn a_socket_in_a_directory_the_caller_cannot_search_names_the_group() {
    require_root!();
    let cfg = TempConfig::new("");
    let dir = cfg.dir().join("run");
    std::fs::create_dir(&dir).expect("mkdir");
    let socket = dir.join("control.sock");
    cfg.write(&format!(
        "{}\n[approvals]\nsocket = \"{}\"\ngroup = \"approvers-of-this-test\"\n",
        cfg.journal_section(),
        socket.display()
    ));
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let needle = format!(
        "permission denied on {}: join the `approvers-of-this-test` group",
        socket.display()
    );
    assert_exit(&run_as_nobody(&cfg, &["approvals", "list"]), 3, &needle);
    let status = run_as_nobody(&cfg, &["status"]);
    assert_eq!(status.code(), Some(3), "{}", status.describe());
    assert!(status.stdout.contains(&needle), "{}", status.describe());
}

#[test]
fn a_journal_the_caller_may_not_read_names_the_group_and_exits_3() {
    require_root!();
    let cfg = TempConfig::new("");
    let out = run_exec(&cfg, None, &["true"]);
    assert!(out.success(), "{}", out.describe());
    // As installed: a directory only root and the service's group may enter.
    let private = cfg.dir().join("state");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let journal = private.join("journal.db");
    std::fs::rename(&cfg.journal, &journal).expect("move journal");
    cfg.write(&format!("[journal]\npath = \"{}\"\n", journal.display()));
    for args in [&["sessions", "list"][..], &["journal", "verify"]] {
        let out = run_as_nobody(&cfg, args);
        assert_exit(
            &out,
            3,
            &format!(
                "permission denied on {}: join the `interceptor` group",
                journal.display()
            ),
        );
        assert!(
            !out.stderr.contains("nothing recorded yet"),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn missing_cgroup_v2_is_reported() {
    require_root!();
    let cfg = TempConfig::new("");
    let mounts: Vec<String> = cgroup2_mounts()
        .iter()
        .map(|m| m.display().to_string())
        .collect();
    // A private mount namespace (never propagated to the host) without the cgroup2 mounts.
    let mut cmd = Command::new("unshare");
    cmd.current_dir("/")
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(
            r#"bin="$1"; cfg="$2"; shift 2
for m in "$@"; do umount -l "$m" || exit 99; done
exec "$bin" --config "$cfg" exec -- true"#,
        )
        .arg("sh")
        .arg(interceptor_bin())
        .arg(&cfg.path)
        .args(&mounts);
    let out = run_command(cmd, T);
    assert_ne!(
        out.code(),
        Some(99),
        "could not unmount cgroup2 in a private namespace\n{}",
        out.describe()
    );
    assert_failed_with(&out, "cgroup v2");
    // The host's cgroup2 mounts are untouched.
    assert_eq!(cgroup2_mounts().len(), mounts.len());
}

#[test]
fn unknown_user_is_reported() {
    require_root!();
    let cfg = TempConfig::new("");
    let out = run_exec(&cfg, Some("no-such-user-xyz"), &["true"]);
    assert_failed_with(&out, "unknown user");
}

#[test]
fn malformed_config_reports_path_line_column() {
    require_root!();
    let cfg = TempConfig::raw("[journal]\npath = \"{journal}\"\nbogus = = 1\n");
    let out = run_exec(&cfg, None, &["true"]);
    assert_failed_with(&out, &format!("{}:3:", cfg.path.display()));
}

#[test]
fn unknown_config_key_is_an_error_with_its_line() {
    require_root!();
    let cfg = TempConfig::raw("[journal]\npath = \"{journal}\"\n\n[proxy]\ncolour = \"red\"\n");
    let marker = cfg.dir().join("ran");
    let out = run_exec(
        &cfg,
        None,
        &[std::ffi::OsStr::new("touch"), marker.as_os_str()],
    );
    assert_failed_with(&out, &format!("{}:5:", cfg.path.display()));
    assert_failed_with(&out, "colour");
    assert!(!marker.exists(), "the command ran despite the config error");
}

#[test]
fn doctor_passes_on_this_host() {
    require_root!();
    let mut cmd = interceptor_cmd(None);
    cmd.arg("doctor");
    let out = run_command(cmd, T);
    assert!(
        out.success(),
        "doctor should pass where these tests run\n{}",
        out.describe()
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!text.trim().is_empty(), "doctor printed nothing");
}

/// `config check`: a good config passes line by line; a missing password file fails (1); a
/// world-readable one warns; a policy that does not compile is a config error (2).
#[test]
fn config_check_reports_each_file_and_exits_by_kind() {
    let cfg = TempConfig::new("");
    let secret = cfg.dir().join("pw");
    std::fs::write(&secret, "s3cret").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let policy = cfg.dir().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"reads\"\ndecision = \"allow\"\n[rule.match]\nclasses = [\"read\"]\n",
    )
    .expect("write");
    let write = |password_file: &std::path::Path| {
        cfg.write(&format!(
            "{}\n[[target]]\nname = \"db\"\nprotocol = \"postgres\"\nintercept = [\"127.0.0.1:5432\"]\n\
             upstream = \"127.0.0.1:5432\"\npolicy = \"{}\"\n[target.credentials]\nuser = \"app\"\n\
             password_file = \"{}\"\n",
            cfg.journal_section(),
            policy.display(),
            password_file.display()
        ))
    };
    write(&secret);
    let out = run_cli(&cfg, &["config", "check"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    for line in ["ok   targets", "ok   policy db ", "ok   secret db "] {
        assert!(out.stdout.contains(line), "{line:?}\n{}", out.describe());
    }

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run_cli(&cfg, &["config", "check"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.contains("warn secret db "), "{}", out.describe());

    write(&cfg.dir().join("missing"));
    let out = run_cli(&cfg, &["config", "check", "--json"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let checks: Value = serde_json::from_str(&out.stdout).expect("a JSON array");
    let failed: Vec<&Value> = checks
        .as_array()
        .expect("array")
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{}", out.describe());
    assert_eq!(failed[0]["name"], "secret db");

    write(&secret);
    std::fs::write(&policy, "[[rule]]\nname = \"reads\"\ndecision = \"yes\"\n").expect("write");
    let out = run_cli(&cfg, &["config", "check"]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(out.stdout.contains("FAIL policy db "), "{}", out.describe());
}

/// `doctor --json` is an array of checks, each with its name, outcome, weight, detail and fix,
/// and it fails on a missing policy file the config names.
#[test]
fn doctor_json_is_machine_readable_and_fails_on_a_missing_policy() {
    let cfg = TempConfig::new(&format!(
        "[policy]\npath = \"{}\"\n",
        std::env::temp_dir()
            .join("interceptor-no-such-policy.toml")
            .display()
    ));
    let out = run_cli(&cfg, &["doctor", "--json"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let checks: Value = serde_json::from_str(&out.stdout).expect("a JSON array");
    let checks = checks.as_array().expect("array");
    for c in checks {
        for key in ["name", "ok", "essential", "detail", "fix"] {
            assert!(c.get(key).is_some(), "{key} missing in {c}");
        }
    }
    let policy = checks
        .iter()
        .find(|c| c["name"] == "policy")
        .expect("policy check");
    assert_eq!(policy["ok"], false, "{policy}");
    assert_eq!(policy["essential"], true, "{policy}");
    assert!(
        checks.iter().any(|c| c["name"] == "unit caps"),
        "{}",
        out.describe()
    );
}

/// Root without the eBPF capabilities (a unit whose CapabilityBoundingSet lacks them): the
/// error says which capabilities are missing instead of a bare "failed to create map".
#[test]
fn missing_bpf_capabilities_are_named() {
    require_root!();
    let cfg = TempConfig::new("");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", "-bpf,-perfmon,-sys_admin", "--"])
        .arg(interceptor_bin())
        .arg("--config")
        .arg(&cfg.path)
        .args(["exec", "--", "true"]);
    let out = run_command(cmd, T);
    assert_failed_with(&out, "CAP_BPF");
    assert_eq!(out.code(), Some(125), "{}", out.describe());
}
