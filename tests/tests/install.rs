//! `interceptor install --root DIR` / `uninstall --root DIR`: the files, their modes, a default
//! config that loads, idempotence, and a unit systemd accepts. `--root` never touches users or
//! systemctl, so these tests need no root and change nothing on the host.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use interceptor_tests::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn interceptor(args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(None);
    cmd.args(args);
    run_command(cmd, TIMEOUT)
}

fn install(root: &Path) -> Output {
    let out = interceptor(&["install", "--root", root.to_str().unwrap()]);
    assert!(out.success(), "{}", out.describe());
    out
}

fn uninstall(root: &Path, purge: bool) -> Output {
    let mut args = vec!["uninstall", "--root", root.to_str().unwrap()];
    if purge {
        args.push("--purge");
    }
    let out = interceptor(&args);
    assert!(out.success(), "{}", out.describe());
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

struct Paths {
    unit: PathBuf,
    config: PathBuf,
    config_dir: PathBuf,
    state: PathBuf,
    logs: PathBuf,
    bin: PathBuf,
}

fn paths(root: &Path) -> Paths {
    Paths {
        unit: root.join("etc/systemd/system/interceptor.service"),
        config: root.join("etc/interceptor/config.toml"),
        config_dir: root.join("etc/interceptor"),
        state: root.join("var/lib/interceptor"),
        logs: root.join("var/log/interceptor"),
        bin: root.join("usr/local/bin/interceptor"),
    }
}

/// `policy check` parses the whole config (targets, intercepts) and the policies it names,
/// without needing root, BPF or a journal.
fn config_loads(config: &Path) -> Output {
    let mut cmd = interceptor_cmd(None);
    cmd.arg("--config").arg(config).args(["policy", "check"]);
    run_command(cmd, TIMEOUT)
}

#[test]
fn install_writes_unit_config_and_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let out = install(root);
    // No systemctl under --root: it says what to run instead.
    assert!(
        out.stdout
            .contains("systemctl enable --now interceptor.service"),
        "{}",
        out.describe()
    );
    let p = paths(root);
    let unit = fs::read_to_string(&p.unit).unwrap();
    assert_eq!(
        unit,
        fs::read_to_string(workspace_root().join("interceptor/packaging/interceptor.service"))
            .unwrap()
    );
    assert_eq!(mode(&p.unit), 0o644);
    assert_eq!(mode(&p.config), 0o644);
    assert_eq!(mode(&p.config_dir), 0o755);
    assert_eq!(mode(&p.state), 0o750);
    assert_eq!(mode(&p.logs), 0o750);
    assert_eq!(mode(&p.bin), 0o755);
    assert!(unit.contains(
        "ExecStart=/usr/local/bin/interceptor --config /etc/interceptor/config.toml run"
    ));

    let check = config_loads(&p.config);
    assert!(check.success(), "{}", check.describe());

    // The same command does reject a broken config: the check above means something.
    let broken = root.join("broken.toml");
    fs::write(&broken, "[capture]\ncgroupz = []\n").unwrap();
    let check = config_loads(&broken);
    assert!(!check.success(), "{}", check.describe());
}

#[test]
fn install_is_idempotent_and_keeps_an_edited_config() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    install(root);
    let p = paths(root);
    let edited = format!(
        "{}\n[proxy]\nport = 15077\n",
        fs::read_to_string(&p.config).unwrap()
    );
    fs::write(&p.config, &edited).unwrap();
    let unit_before = fs::read_to_string(&p.unit).unwrap();
    // Someone loosened a mode: re-installing puts it back.
    fs::set_permissions(&p.state, fs::Permissions::from_mode(0o777)).unwrap();

    let out = install(root);
    assert!(
        out.stdout.contains("kept the existing config"),
        "{}",
        out.describe()
    );
    assert_eq!(fs::read_to_string(&p.config).unwrap(), edited);
    assert_eq!(fs::read_to_string(&p.unit).unwrap(), unit_before);
    assert_eq!(mode(&p.state), 0o750);
    let check = config_loads(&p.config);
    assert!(check.success(), "{}", check.describe());
}

#[test]
fn uninstall_keeps_state_unless_purged() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    install(root);
    let p = paths(root);
    fs::write(p.state.join("journal.db"), b"not really").unwrap();

    uninstall(root, false);
    assert!(!p.unit.exists());
    assert!(p.config.is_file());
    assert!(p.state.join("journal.db").is_file());
    assert!(p.logs.is_dir());

    // Uninstalling again is not an error.
    uninstall(root, false);

    uninstall(root, true);
    assert!(!p.config_dir.exists());
    assert!(!p.state.exists());
    assert!(!p.logs.exists());
    assert!(!p.bin.exists());
}

/// systemd accepts the unit: no unknown keys, no unparsable values. Skipped silently where
/// systemd-analyze is not installed.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        return;
    };
    if !version.status.success() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    install(&root);
    let p = paths(&root);
    // Verify checks that ExecStart= is executable: point it at the binary just installed.
    let unit = fs::read_to_string(&p.unit)
        .unwrap()
        .replace("/usr/local/bin/interceptor", p.bin.to_str().unwrap());
    let file = tmp.path().join("interceptor.service");
    fs::write(&file, unit).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    // Documentation=man:interceptor(8) comes with the Debian package, not with `install`
    // (tests/tests/package.rs verifies the packaged unit with its man page).
    cmd.arg("verify").arg("--man=no").arg(&file);
    let out = run_command(cmd, TIMEOUT);
    let problems: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.contains(".target not found"))
        .filter(|l| {
            l.contains("interceptor.service:")
                || l.contains("Unknown")
                || l.contains("Failed to parse")
                || l.contains("Invalid")
        })
        .collect();
    assert!(problems.is_empty(), "{}", out.describe());
    // Hosts without a systemd unit tree (containers) cannot load the default dependencies;
    // that is the environment, not the unit.
    if !out.stderr.contains(".target not found") {
        assert!(out.success(), "{}", out.describe());
    }
}
