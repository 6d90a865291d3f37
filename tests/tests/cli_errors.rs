//! CLI contract: clear errors and exit codes.

use std::{process::Command, time::Duration};

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

#[test]
fn not_root_is_refused() {
    require_root!();
    let cfg = TempConfig::new("");
    // A copy in the world-readable temp dir, so uid 65534 can run it wherever the build lives.
    let bin = cfg.dir().join("interceptor");
    std::fs::copy(interceptor_bin(), &bin).expect("copy binary");
    let mut cmd = Command::new("setpriv");
    cmd.current_dir("/")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("--config")
        .arg(&cfg.path)
        .args(["exec", "--", "true"]);
    let out = run_command(cmd, T);
    assert_failed_with(&out, "root");
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
