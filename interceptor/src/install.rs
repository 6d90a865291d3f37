//! `interceptor install` and `interceptor uninstall`: the service as a systemd unit.
//!
//! Why this exists: the gate only holds on an agent host if the daemon starts at boot, is
//! restarted when it dies, and runs with no more privilege than capture needs. Installing writes
//! the hardened unit (`packaging/interceptor.service`) and the drop-in that holds
//! `autogen.slice` until the capture is ready (`packaging/autogen.slice.conf`), the directories
//! with their modes, a commented default config (`packaging/config.toml`, never overwriting an
//! edited one) and the binary, creates the `interceptor` user and the approvers' group, then
//! enables and starts the unit. Every step is idempotent, so re-running `install` is also how a
//! binary is upgraded. With `--root DIR` only files are written below DIR: no users, no
//! systemctl (images, tests). The Debian package
//! (`make deb`) ships the same files, with sysusers.d/tmpfiles.d entries for the accounts and
//! directories (`packaging/interceptor.{sysusers,tmpfiles}`).
//! See `docs/operations.md`.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{capture::CaptureError, journal::SERVICE_USER};

/// The unit, as installed.
pub const UNIT: &str = include_str!("../packaging/interceptor.service");

/// The unit's file name.
pub const UNIT_NAME: &str = "interceptor.service";

/// The drop-in that makes `autogen.slice` wait for the capture and fail without it.
pub const SLICE_DROP_IN: &str = include_str!("../packaging/autogen.slice.conf");

/// Paths below the root (`/` unless `--root`).
pub const UNIT_PATH: &str = "etc/systemd/system/interceptor.service";
pub const SLICE_DROP_IN_PATH: &str = "etc/systemd/system/autogen.slice.d/interceptor.conf";
pub const CONFIG_DIR: &str = "etc/interceptor";
pub const CONFIG_PATH: &str = "etc/interceptor/config.toml";
pub const STATE_DIR: &str = "var/lib/interceptor";
pub const LOG_DIR: &str = "var/log/interceptor";
/// Where the unit's `ExecStart=` expects the binary.
pub const BIN_PATH: &str = "usr/local/bin/interceptor";

/// Members may approve held commands (`[approvals] group`).
pub const APPROVERS_GROUP: &str = "interceptor-approvers";

/// The config written when none exists: valid as is (it loads with [`crate::config::Config`]),
/// equal to the embedded defaults plus the service's capture of `autogen.slice`.
pub const DEFAULT_CONFIG: &str = include_str!("../packaging/config.toml");

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("{0} needs root (or --root DIR to only write the files below DIR)")]
    NotRoot(&'static str),
    #[error("detaching the capture: {0}")]
    Detach(#[from] CaptureError),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Write below this directory only: no users, no systemctl.
    pub root: Option<PathBuf>,
    /// Don't enable and start the unit.
    pub no_start: bool,
    /// The binary to install at `/usr/local/bin/interceptor` (default: this executable).
    pub binary: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct UninstallOptions {
    pub root: Option<PathBuf>,
    /// Also remove the config, the state (journal, CA), the logs and the binary.
    pub purge: bool,
    /// The service's pin directory (`[capture] pin_dir`), detached when not under `--root`.
    pub pin_dir: Option<PathBuf>,
}

/// What was done, and what the operator still has to do, one line each.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub done: Vec<String>,
    pub todo: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.done {
            writeln!(f, "{line}")?;
        }
        if !self.todo.is_empty() {
            writeln!(f, "still to do:")?;
            for line in &self.todo {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

fn under(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

/// True when systemctl exists and systemd is the running init (so it can be asked anything).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir() && which("systemctl").is_some()
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn command(program: &str, args: &[&str]) -> Result<(), InstallError> {
    let shown = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| InstallError::Command {
            command: shown.clone(),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(InstallError::Command {
            command: shown,
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Writes `text` to `path` through a temporary file and a rename, with `mode`. Returns whether
/// the content changed.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, InstallError> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        set_mode(path, mode)?;
        return Ok(false);
    }
    let tmp = path.with_extension("interceptor-new");
    {
        let mut f = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("writing", &tmp))?;
    }
    set_mode(&tmp, mode)?;
    fs::rename(&tmp, path).map_err(io("replacing", path))?;
    Ok(true)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), InstallError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

fn make_dir(path: &Path, mode: u32, group: Option<nix::unistd::Gid>) -> Result<(), InstallError> {
    fs::create_dir_all(path).map_err(io("creating", path))?;
    set_mode(path, mode)?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| InstallError::Io {
            action: "chown",
            path: path.to_owned(),
            source: e.into(),
        })?;
    }
    Ok(())
}

fn ensure_accounts(report: &mut Report) -> Result<(), InstallError> {
    use nix::unistd::{Group, User};
    if Group::from_name(APPROVERS_GROUP).ok().flatten().is_none() {
        command("groupadd", &["--system", APPROVERS_GROUP])?;
        report.done.push(format!("created group {APPROVERS_GROUP}"));
    }
    if User::from_name(SERVICE_USER).ok().flatten().is_none() {
        let group_exists = Group::from_name(SERVICE_USER).ok().flatten().is_some();
        let mut args = vec![
            "--system",
            "--no-create-home",
            "--home-dir",
            "/var/lib/interceptor",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "interceptor gate",
        ];
        if group_exists {
            args.extend(["--gid", SERVICE_USER]);
        } else {
            args.push("--user-group");
        }
        args.push(SERVICE_USER);
        command("useradd", &args)?;
        report
            .done
            .push(format!("created system user {SERVICE_USER}"));
    }
    Ok(())
}

/// Installs (or re-installs) the service. See the module documentation.
pub fn install(options: &InstallOptions) -> Result<Report, InstallError> {
    let mut report = Report::default();
    let system = options.root.is_none();
    if system && !nix::unistd::geteuid().is_root() {
        return Err(InstallError::NotRoot("install"));
    }
    let root = options.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let group = if system {
        ensure_accounts(&mut report)?;
        nix::unistd::Group::from_name(SERVICE_USER)
            .ok()
            .flatten()
            .map(|g| g.gid)
    } else {
        None
    };

    make_dir(&under(&root, CONFIG_DIR), 0o755, None)?;
    make_dir(&under(&root, STATE_DIR), 0o750, group)?;
    make_dir(&under(&root, LOG_DIR), 0o750, group)?;
    report.done.push(format!(
        "directories: /{CONFIG_DIR} (0755), /{STATE_DIR} (0750), /{LOG_DIR} (0750)"
    ));

    let config = under(&root, CONFIG_PATH);
    if config.exists() {
        report
            .done
            .push(format!("kept the existing config {}", config.display()));
    } else {
        write_file(&config, DEFAULT_CONFIG.as_bytes(), 0o644)?;
        report
            .done
            .push(format!("wrote the default config {}", config.display()));
    }

    let binary = match &options.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(io("locating", Path::new("/proc/self/exe")))?,
    };
    let bin = under(&root, BIN_PATH);
    let same = fs::canonicalize(&bin)
        .ok()
        .zip(fs::canonicalize(&binary).ok())
        .is_some_and(|(a, b)| a == b);
    if !same {
        if let Some(dir) = bin.parent() {
            fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let bytes = fs::read(&binary).map_err(io("reading", &binary))?;
        if write_file(&bin, &bytes, 0o755)? {
            report.done.push(format!("installed {}", bin.display()));
        }
    }

    for (path, text) in [(UNIT_PATH, UNIT), (SLICE_DROP_IN_PATH, SLICE_DROP_IN)] {
        let path = under(&root, path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let changed = write_file(&path, text.as_bytes(), 0o644)?;
        report.done.push(format!(
            "{} {}",
            if changed { "wrote" } else { "unchanged:" },
            path.display()
        ));
    }

    let start_cmds = [
        "systemctl daemon-reload".to_owned(),
        format!("systemctl enable --now {UNIT_NAME}"),
    ];
    if !system {
        report.todo.extend(start_cmds);
    } else if !systemd_running() {
        report.todo.push("systemd is not running here: start `interceptor run` from the init system in use, or on a systemd host:".to_owned());
        report.todo.extend(start_cmds);
    } else {
        command("systemctl", &["daemon-reload"])?;
        if options.no_start {
            report.done.push("systemctl daemon-reload".to_owned());
            report.todo.push(start_cmds[1].clone());
        } else {
            command("systemctl", &["enable", "--now", UNIT_NAME])?;
            report.done.push(format!(
                "enabled and started {UNIT_NAME} (after an upgrade: systemctl restart {UNIT_NAME})"
            ));
        }
    }
    Ok(report)
}

fn remove_file(path: &Path, report: &mut Report) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Ok(()) => {
            report.done.push(format!("removed {}", path.display()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", path)(e)),
    }
}

fn remove_dir(path: &Path, report: &mut Report) -> Result<(), InstallError> {
    match fs::remove_dir_all(path) {
        Ok(()) => {
            report.done.push(format!("removed {}", path.display()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", path)(e)),
    }
}

/// Stops and removes the service. The config and state stay unless `purge`.
pub fn uninstall(options: &UninstallOptions) -> Result<Report, InstallError> {
    let mut report = Report::default();
    let system = options.root.is_none();
    if system && !nix::unistd::geteuid().is_root() {
        return Err(InstallError::NotRoot("uninstall"));
    }
    let root = options.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let unit = under(&root, UNIT_PATH);
    let reload = system && systemd_running();
    if reload && unit.exists() {
        // Already stopped or disabled is fine: the goal is "not running".
        match command("systemctl", &["disable", "--now", UNIT_NAME]) {
            Ok(()) => report
                .done
                .push(format!("stopped and disabled {UNIT_NAME}")),
            Err(e) => report
                .todo
                .push(format!("check {UNIT_NAME} is stopped: {e}")),
        }
    }
    if system {
        if let Some(pin_dir) = &options.pin_dir {
            // The pins outlive the daemon on purpose; without a daemon they only refuse.
            if crate::service::detach(pin_dir)? {
                report
                    .done
                    .push(format!("detached the capture ({})", pin_dir.display()));
            }
        }
    }
    remove_file(&unit, &mut report)?;
    let drop_in = under(&root, SLICE_DROP_IN_PATH);
    remove_file(&drop_in, &mut report)?;
    if let Some(dir) = drop_in.parent() {
        // Only if empty: the operator's own drop-ins for the slice stay.
        let _ = fs::remove_dir(dir);
    }
    if reload {
        command("systemctl", &["daemon-reload"])?;
    }
    if options.purge {
        for dir in [CONFIG_DIR, STATE_DIR, LOG_DIR] {
            remove_dir(&under(&root, dir), &mut report)?;
        }
        remove_file(&under(&root, BIN_PATH), &mut report)?;
        if system {
            report.todo.push(format!(
                "the user {SERVICE_USER} and group {APPROVERS_GROUP} are kept: \
                 `userdel {SERVICE_USER}; groupdel {APPROVERS_GROUP}` to remove them"
            ));
        }
    } else {
        report.done.push(format!(
            "kept /{CONFIG_DIR}, /{STATE_DIR} and /{LOG_DIR} (--purge removes them)"
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn default_config_loads() {
        let config =
            crate::config::Config::parse(DEFAULT_CONFIG, Path::new("config.toml")).unwrap();
        assert_eq!(config.capture.cgroups, ["autogen.slice"]);
        let targets = config.targets().unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(
            config.approvals.socket,
            Path::new("/run/interceptor/control.sock")
        );
    }

    #[test]
    fn unit_matches_the_config_defaults() {
        for line in [
            "Type=notify",
            "WatchdogSec=30",
            "ProtectSystem=strict",
            "StateDirectory=interceptor",
            // The control socket's directory: /run/interceptor.
            "RuntimeDirectory=interceptor",
            "NoNewPrivileges=yes",
            "ReadWritePaths=/sys/fs/bpf /sys/fs/cgroup",
            "ExecStart=/usr/local/bin/interceptor --config /etc/interceptor/config.toml run",
            // Reloads through the control socket: no procps, and a broken policy fails it.
            "ExecReload=/usr/local/bin/interceptor --config /etc/interceptor/config.toml reload",
        ] {
            assert!(UNIT.lines().any(|l| l == line), "unit lacks {line}");
        }
        assert!(UNIT.contains(&format!("/{BIN_PATH} ")));
        assert!(UNIT.contains(&format!("/{CONFIG_PATH} ")));
    }

    /// The package creates accounts and directories with sysusers.d and tmpfiles.d, `install`
    /// with useradd and mkdir: both must describe the same ones.
    #[test]
    fn package_accounts_and_directories_match_install() {
        let sysusers = include_str!("../packaging/interceptor.sysusers");
        let entries: Vec<Vec<&str>> = sysusers
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(entries
            .iter()
            .any(|e| e[..2] == ["u", SERVICE_USER] && e.contains(&"/var/lib/interceptor")));
        assert!(entries.iter().any(|e| e[..2] == ["g", APPROVERS_GROUP]));
        let tmpfiles = include_str!("../packaging/interceptor.tmpfiles");
        for dir in [STATE_DIR, LOG_DIR] {
            let line = format!("d /{dir}");
            let entry = tmpfiles
                .lines()
                .find(|l| l.starts_with(&format!("{line} ")))
                .unwrap_or_else(|| panic!("tmpfiles lacks {line}"));
            let fields: Vec<&str> = entry.split_whitespace().collect();
            assert_eq!(fields[2..5], ["0750", "root", SERVICE_USER], "{entry}");
        }
        // The slice's drop-in asserts the pin install's default pin_dir holds.
        let pinned = crate::config::Config::parse(DEFAULT_CONFIG, Path::new("config.toml"))
            .unwrap()
            .capture
            .pin_dir
            .join("maps")
            .join(interceptor_common::maps::CONFIG);
        assert!(SLICE_DROP_IN
            .lines()
            .any(|l| l == format!("AssertPathExists={}", pinned.display())));
        assert!(UNIT.lines().any(|l| l == "Before=autogen.slice"));
    }

    #[test]
    fn install_under_root_is_idempotent_and_uninstall_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let fake_bin = dir.path().join("fake-interceptor");
        fs::write(&fake_bin, b"#!/bin/sh\n").unwrap();
        let root = dir.path().join("root");
        let options = InstallOptions {
            root: Some(root.clone()),
            no_start: false,
            binary: Some(fake_bin),
        };
        let report = install(&options).unwrap();
        assert!(!report.todo.is_empty(), "prints what to run instead");
        assert_eq!(fs::read_to_string(root.join(UNIT_PATH)).unwrap(), UNIT);
        assert_eq!(
            fs::read_to_string(root.join(SLICE_DROP_IN_PATH)).unwrap(),
            SLICE_DROP_IN
        );
        assert_eq!(mode(&root.join(UNIT_PATH)), 0o644);
        assert_eq!(mode(&root.join(CONFIG_DIR)), 0o755);
        assert_eq!(mode(&root.join(STATE_DIR)), 0o750);
        assert_eq!(mode(&root.join(LOG_DIR)), 0o750);
        assert_eq!(mode(&root.join(BIN_PATH)), 0o755);

        let edited = format!("{DEFAULT_CONFIG}\n[proxy]\nport = 15002\n");
        fs::write(root.join(CONFIG_PATH), &edited).unwrap();
        install(&options).unwrap();
        assert_eq!(fs::read_to_string(root.join(CONFIG_PATH)).unwrap(), edited);

        let mut un = UninstallOptions {
            root: Some(root.clone()),
            purge: false,
            pin_dir: None,
        };
        uninstall(&un).unwrap();
        assert!(!root.join(UNIT_PATH).exists());
        assert!(!root.join(SLICE_DROP_IN_PATH).exists());
        assert!(root.join(CONFIG_PATH).exists());
        assert!(root.join(STATE_DIR).is_dir());
        un.purge = true;
        uninstall(&un).unwrap();
        assert!(!root.join(CONFIG_DIR).exists());
        assert!(!root.join(STATE_DIR).exists());
        assert!(!root.join(BIN_PATH).exists());
        // Nothing left to do is not an error.
        uninstall(&un).unwrap();
    }
}
