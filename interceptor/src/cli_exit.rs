//! Exit codes of the `interceptor` binary: the one place where an error becomes a number.
//!
//! Scripts and systemd units branch on these, so they are a contract (README "Exit codes",
//! docs/operations.md): 1 a check failed (or another runtime failure), 2 usage or config, 3
//! permission, 4 not found, 5 the daemon cannot be reached. `exec` is different: its status
//! is the command's own, so its own failures use the codes `env` and `docker run` use, which
//! commands rarely return themselves: 125 exec failed, 126 the command cannot be executed, 127
//! it was not found.
//!
//! The library reports failures as typed (thiserror) enums and knows nothing of exit codes;
//! the classification is made here, at the boundary, by downcasting the causes of the
//! `anyhow::Error` that reached `main`. Wrapped errors marked `#[error(transparent)]` forward
//! `source()` past themselves, so they are unwrapped by hand rather than found in the chain.
//! This module belongs to the binary only (`mod cli_exit` in main.rs), like anyhow itself.

use std::{io, process::ExitCode};

use interceptor::{
    approval::control::ControlError,
    config::ConfigError,
    exec::ExecError,
    install::InstallError,
    journal::{reader::BadTime, JournalError},
    policy::PolicyError,
    ship::ShipError,
    view::replay::BadPace,
};

/// What went wrong, as far as the exit status tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// A check ran and found a problem (`journal verify`, `policy test`, `doctor`), or a
    /// runtime failure no other code describes.
    Failed = 1,
    /// Bad arguments or a bad configuration or policy: fix the invocation, not the host.
    Usage = 2,
    /// The caller may not do this (not root, not in the group that owns a socket or file).
    Permission = 3,
    /// What was named does not exist (a session, an approval, a file, the journal).
    NotFound = 4,
    /// No daemon answers on the control socket (none running, or a stale socket).
    Unreachable = 5,
    /// `exec` itself failed before or around the command (capture, config, privileges).
    ExecFailed = 125,
    /// `exec`: the command exists but cannot be executed.
    NotExecutable = 126,
    /// `exec`: the command was not found.
    CommandNotFound = 127,
}

impl From<ExitKind> for ExitCode {
    fn from(kind: ExitKind) -> ExitCode {
        ExitCode::from(kind as u8)
    }
}

/// An error raised by the CLI itself (a bad flag value, a missing id), with its kind chosen
/// where it is raised.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: ExitKind,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Failure {
            kind: ExitKind::Usage,
            message: message.into(),
        }
        .into()
    }

    pub fn not_found(message: impl Into<String>) -> anyhow::Error {
        Failure {
            kind: ExitKind::NotFound,
            message: message.into(),
        }
        .into()
    }
}

/// The exit kind for an error that reached `main`. `exec` is true when the subcommand was
/// `exec`: then anything but "cannot execute" and "not found" of the command is exec's own
/// failure (125), since 1 to 5 could be the command's own status.
pub fn classify(error: &anyhow::Error, exec: bool) -> ExitKind {
    if exec {
        return error
            .downcast_ref::<ExecError>()
            .and_then(command_status)
            .unwrap_or(ExitKind::ExecFailed);
    }
    error.chain().find_map(typed).unwrap_or(ExitKind::Failed)
}

/// 126 or 127 when the command itself could not be started. Only EACCES and ENOEXEC mean
/// "not executable": an EPERM comes from exec's own set-up in the child (setuid, joining the
/// cgroup), which is exec's failure, not the command's.
fn command_status(error: &ExecError) -> Option<ExitKind> {
    let ExecError::Spawn { source, .. } = error else {
        return None;
    };
    match source.raw_os_error() {
        Some(libc::ENOENT) => Some(ExitKind::CommandNotFound),
        Some(libc::EACCES | libc::ENOEXEC) => Some(ExitKind::NotExecutable),
        _ => None,
    }
}

/// The kind of one cause, if it is a type this binary knows.
fn typed(cause: &(dyn std::error::Error + 'static)) -> Option<ExitKind> {
    if let Some(f) = cause.downcast_ref::<Failure>() {
        return Some(f.kind);
    }
    if let Some(e) = cause.downcast_ref::<ControlError>() {
        return Some(control(e));
    }
    if let Some(e) = cause.downcast_ref::<JournalError>() {
        return Some(journal(e));
    }
    if let Some(e) = cause.downcast_ref::<ConfigError>() {
        return Some(match e {
            ConfigError::Read { source, .. } => config_file(source),
            _ => ExitKind::Usage,
        });
    }
    if let Some(e) = cause.downcast_ref::<PolicyError>() {
        return Some(match e {
            PolicyError::Read { source, .. } => config_file(source),
            _ => ExitKind::Usage,
        });
    }
    if let Some(e) = cause.downcast_ref::<ExecError>() {
        return Some(match e {
            ExecError::NotRoot(_) => ExitKind::Permission,
            ExecError::UnknownUser(_)
            | ExecError::NoCommand
            | ExecError::Config(_)
            | ExecError::Descriptors(_) => ExitKind::Usage,
            ExecError::Journal(j) => journal(j),
            ExecError::Ship(s) => ship(s),
            _ => ExitKind::Failed,
        });
    }
    if let Some(e) = cause.downcast_ref::<ShipError>() {
        return Some(ship(e));
    }
    if let Some(e) = cause.downcast_ref::<InstallError>() {
        return Some(match e {
            InstallError::NotRoot(_) => ExitKind::Permission,
            InstallError::Io { source, .. } => io_kind(source).unwrap_or(ExitKind::Failed),
            _ => ExitKind::Failed,
        });
    }
    if cause.is::<BadTime>() || cause.is::<BadPace>() {
        return Some(ExitKind::Usage);
    }
    cause.downcast_ref::<io::Error>().and_then(io_kind)
}

fn control(error: &ControlError) -> ExitKind {
    match error {
        ControlError::NotRunning(_) | ControlError::Stale(_) => ExitKind::Unreachable,
        ControlError::PermissionDenied { .. } | ControlError::NotPermitted(_) => {
            ExitKind::Permission
        }
        ControlError::UnknownRequest(_) => ExitKind::NotFound,
        _ => ExitKind::Failed,
    }
}

fn journal(error: &JournalError) -> ExitKind {
    match error {
        JournalError::Missing(_) => ExitKind::NotFound,
        JournalError::PermissionDenied { .. } => ExitKind::Permission,
        JournalError::Directory { source, .. } => io_kind(source).unwrap_or(ExitKind::Failed),
        _ => ExitKind::Failed,
    }
}

fn ship(error: &ShipError) -> ExitKind {
    match error {
        ShipError::Config(_) => ExitKind::Usage,
        ShipError::Journal(j) => journal(j),
        _ => ExitKind::Failed,
    }
}

/// A config, policy or cases file that cannot be read: a missing one is a wrong path in the
/// invocation or the config (2, not 4), an unreadable one a matter of permission.
fn config_file(error: &io::Error) -> ExitKind {
    match error.kind() {
        io::ErrorKind::PermissionDenied => ExitKind::Permission,
        _ => ExitKind::Usage,
    }
}

/// Permission and absence, wherever an I/O error says so; other I/O errors are not classified.
fn io_kind(error: &io::Error) -> Option<ExitKind> {
    match error.kind() {
        io::ErrorKind::PermissionDenied => Some(ExitKind::Permission),
        io::ErrorKind::NotFound => Some(ExitKind::NotFound),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn_error(errno: i32) -> anyhow::Error {
        ExecError::Spawn {
            command: "x".to_owned(),
            source: io::Error::from_raw_os_error(errno),
        }
        .into()
    }

    #[test]
    fn exec_reserves_125_to_127_for_its_own_failures() {
        assert_eq!(
            classify(&spawn_error(libc::ENOENT), true),
            ExitKind::CommandNotFound
        );
        assert_eq!(
            classify(&spawn_error(libc::EACCES), true),
            ExitKind::NotExecutable
        );
        // setuid in the child refused: exec's set-up, not the command.
        assert_eq!(
            classify(&spawn_error(libc::EPERM), true),
            ExitKind::ExecFailed
        );
        let not_root: anyhow::Error = ExecError::NotRoot("exec").into();
        assert_eq!(classify(&not_root, true), ExitKind::ExecFailed);
        assert_eq!(classify(&not_root, false), ExitKind::Permission);
    }

    #[test]
    fn context_does_not_hide_the_typed_cause() {
        let e = anyhow::Error::from(JournalError::Missing("/j".into())).context("reading");
        assert_eq!(classify(&e, false), ExitKind::NotFound);
        let e = anyhow::Error::from(ExecError::Journal(JournalError::PermissionDenied {
            path: "/j".into(),
        }));
        assert_eq!(classify(&e, false), ExitKind::Permission);
    }

    #[test]
    fn unknown_errors_are_plain_failures_not_usage() {
        assert_eq!(
            classify(&anyhow::anyhow!("something broke"), false),
            ExitKind::Failed
        );
        assert_eq!(
            classify(&Failure::usage("--scope must be once or run"), false),
            ExitKind::Usage
        );
    }
}
