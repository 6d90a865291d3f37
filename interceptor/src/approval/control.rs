//! The control socket: how approvers reach the gateway.
//!
//! A Unix socket, mode 0660, owned by root and the approvers group (when it exists). The peer's
//! uid comes from SO_PEERCRED, never from the request: only root and members of the approvers
//! group are served, and nobody may decide their own request. One JSON request per connection,
//! one JSON answer.
//!
//! The service also takes `reload` here (`interceptor reload`, the unit's `ExecReload=`): it
//! re-reads the policy files through the same code as SIGHUP, and answers with the outcome,
//! which a signal cannot. Reloading is root's only: it changes what every agent may do, while
//! approvers decide one held command at a time.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{Approvals, Approver, Request, Scope};

/// Requests on the socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    List,
    Show {
        id: String,
    },
    Approve {
        id: String,
        #[serde(default)]
        scope: Scope,
        reason: Option<String>,
    },
    Deny {
        id: String,
        reason: String,
    },
    /// Re-read every policy file (root only); all load or none.
    Reload,
    /// What the daemon is doing (`interceptor status`).
    Status,
}

/// Answers on the socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Requests(Vec<Request>),
    Request(Box<Request>),
    /// The reload took: what is in force now.
    Reloaded(String),
    /// The daemon's status, as `status::DaemonStatus` serializes it. Carried as JSON so this
    /// transport does not depend on what the daemon reports.
    Status(serde_json::Value),
    Error(String),
}

/// Re-reads the policies of the daemon behind the socket: `Ok` says what is in force now,
/// `Err` why nothing changed.
pub type Reload = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Reports what the daemon is doing, as JSON (`interceptor status`).
pub type Status = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What a control socket serves: the holds, and, for the service, a policy reload and its
/// status (an `exec` run has neither: its policies live as long as its command, and its
/// status is its command's).
#[derive(Clone)]
pub struct Daemon {
    pub approvals: Arc<Approvals>,
    pub reload: Option<Reload>,
    pub status: Option<Status>,
}

/// Largest request accepted (a request is an id and a reason).
const MAX_CALL: usize = 16 * 1024;

/// Serves the socket until the task is dropped.
pub async fn serve(listener: UnixListener, daemon: Daemon, group: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let daemon = daemon.clone();
        let group = group.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &daemon, &group).await {
                tracing::debug!(error = %e, "control connection failed");
            }
        });
    }
}

fn authorized(uid: u32, group: &str) -> Option<Approver> {
    let name = crate::capture::identity::user_name(uid).unwrap_or_else(|| uid.to_string());
    if uid == 0 {
        return Some(Approver { uid, name });
    }
    let group = nix::unistd::Group::from_name(group).ok().flatten()?;
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()?;
    let member = user.gid == group.gid || group.mem.iter().any(|m| m == &user.name);
    member.then_some(Approver { uid, name })
}

async fn handle(stream: UnixStream, daemon: &Daemon, group: &str) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_CALL as u64);
    reader.read_line(&mut line).await?;
    let answer = match authorized(uid, group) {
        None => Answer::Error(format!(
            "uid {uid} is not an approver (root or group {group})"
        )),
        Some(approver) => match serde_json::from_str::<Call>(&line) {
            Err(e) => Answer::Error(format!("bad request: {e}")),
            Ok(call) => answer(daemon, &approver, call).await,
        },
    };
    let mut text =
        serde_json::to_string(&answer).unwrap_or_else(|_| "{\"error\":\"encoding\"}".to_owned());
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Prefix of the refusals that mean "not yours to do": the CLI exits 3 on them.
pub const NOT_PERMITTED: &str = "permission denied:";

/// A reload, for root only. Reading and compiling the files blocks, so it runs off the
/// runtime's workers.
async fn reload(daemon: &Daemon, uid: u32) -> Answer {
    if uid != 0 {
        return Answer::Error(format!(
            "{NOT_PERMITTED} uid {uid} may not reload the policies (root only)"
        ));
    }
    let Some(reload) = daemon.reload.clone() else {
        return Answer::Error("this run has no policies to reload (only the service does)".into());
    };
    match tokio::task::spawn_blocking(move || reload()).await {
        Ok(Ok(done)) => Answer::Reloaded(done),
        Ok(Err(e)) => Answer::Error(e),
        Err(e) => Answer::Error(format!("policy reload failed: {e}")),
    }
}

async fn answer(daemon: &Daemon, approver: &Approver, call: Call) -> Answer {
    let approvals = &daemon.approvals;
    let result = match call {
        Call::Reload => return reload(daemon, approver.uid).await,
        Call::Status => {
            return match &daemon.status {
                Some(status) => Answer::Status(status()),
                None => Answer::Error("this run reports no status (only the service does)".into()),
            }
        }
        Call::List => return Answer::Requests(approvals.list()),
        Call::Show { id } => {
            return approvals
                .list()
                .into_iter()
                .find(|r| r.id == id)
                .map_or_else(
                    || Answer::Error(format!("no pending approval {id}")),
                    |r| Answer::Request(Box::new(r)),
                )
        }
        Call::Approve { id, scope, reason } => approvals.approve(&id, approver, scope, reason),
        Call::Deny { id, reason } => approvals.deny(&id, approver, reason),
    };
    match result {
        Ok(r) => Answer::Request(Box::new(r)),
        Err(e) => Answer::Error(e.to_string()),
    }
}

/// Binds the socket and serves it in a task; the guard removes the socket when dropped. A
/// socket that cannot be bound is logged: held commands then time out (and are refused).
pub fn start(path: &Path, group: &str, daemon: Daemon) -> Option<Served> {
    match crate::group_socket::bind(path, group) {
        Ok(listener) => {
            let task = tokio::spawn(serve(listener, daemon, group.to_owned()));
            Some(Served {
                path: path.to_owned(),
                task,
            })
        }
        Err(e) => {
            tracing::error!(socket = %path.display(), error = %e, "no control socket: held commands cannot be approved");
            None
        }
    }
}

/// A served control socket.
pub struct Served {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why the CLI got no answer from a control socket. The first three are told apart because an
/// operator acts differently on each: start the daemon, ignore a leftover file, join a group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No socket at all where the daemon and `exec` runs put theirs.
    #[error("the interceptor daemon is not running (no control socket at {0}; start `interceptor run` or an `exec`)")]
    NotRunning(PathBuf),
    /// A socket file nobody listens on (ECONNREFUSED): left by a run that was killed.
    #[error("the interceptor daemon is not running (stale socket at {0})")]
    Stale(PathBuf),
    /// The socket is mode 0660 with the approvers group: the caller is not in it.
    #[error("permission denied on {path}: join the `{group}` group to decide approvals")]
    PermissionDenied { path: PathBuf, group: String },
    /// The daemon answered, but knows no pending request with this id.
    #[error("{0}")]
    UnknownRequest(String),
    /// The daemon refused the call (self-approval, a reason missing, a broken policy file).
    #[error("{0}")]
    Refused(String),
    /// The daemon refused the caller: not an approver, or not root for a reload.
    #[error("{0}")]
    NotPermitted(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ControlError {
    /// A socket that answers nothing because nobody listens: skipped when others answer.
    pub fn is_stale(&self) -> bool {
        matches!(self, ControlError::Stale(_) | ControlError::NotRunning(_))
    }

    /// Classifies an error of [`call`] on `path`; `group` is the configured approvers group.
    pub fn from_io(path: &Path, group: &str, source: std::io::Error) -> ControlError {
        let path = path.to_owned();
        match source.kind() {
            std::io::ErrorKind::ConnectionRefused => ControlError::Stale(path),
            // Gone between the scan and the connect: the run ended.
            std::io::ErrorKind::NotFound => ControlError::NotRunning(path),
            std::io::ErrorKind::PermissionDenied => ControlError::PermissionDenied {
                path,
                group: group.to_owned(),
            },
            _ => ControlError::Io { path, source },
        }
    }

    /// Classifies an `Answer::Error` text. The wire format carries only the text (old and new
    /// binaries talk to each other across an upgrade), and unknown ids are the one refusal
    /// the CLI treats apart, by the prefix [`ApprovalError::Unknown`](super::ApprovalError)
    /// writes.
    pub fn from_answer(text: String) -> ControlError {
        if text.starts_with("no pending approval") {
            ControlError::UnknownRequest(text)
        } else if text.starts_with(NOT_PERMITTED) || text.contains("is not an approver") {
            ControlError::NotPermitted(text)
        } else {
            ControlError::Refused(text)
        }
    }
}

/// Client side, for the CLI: sends one call and reads the answer.
pub async fn call(path: &Path, call: &Call) -> std::io::Result<Answer> {
    let mut stream = UnixStream::connect(path).await?;
    let mut text = serde_json::to_string(call).map_err(std::io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(16 << 20)
        .read_line(&mut line)
        .await?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// Whether nobody listens on the socket at `path` (ECONNREFUSED). The probe is non-blocking,
/// so a live daemon with a full backlog (EAGAIN) counts as alive rather than stalling.
fn is_stale(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    use std::os::fd::AsRawFd as _;
    matches!(
        connect(fd.as_raw_fd(), &addr),
        Err(nix::errno::Errno::ECONNREFUSED)
    )
}

/// Removes the sockets of `exec` runs beside `configured` that nobody listens on: a run killed
/// with SIGKILL leaves its socket behind, and `approvals` would meet it on every call. The
/// service calls this at start; its own socket is replaced by [`bind`]. Returns what it removed.
pub fn remove_stale(configured: &Path) -> Vec<PathBuf> {
    sockets(configured)
        .into_iter()
        .filter(|p| p != configured && is_stale(p) && std::fs::remove_file(p).is_ok())
        .collect()
}

/// The sockets an approver may mean: the configured one and every `exec` run's.
pub fn sockets(configured: &Path) -> Vec<PathBuf> {
    let mut found = vec![configured.to_owned()];
    if let Some(dir) = configured.parent() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut runs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("exec-") && n.ends_with(".sock"))
                })
                .collect();
            runs.sort();
            found.extend(runs);
        }
    }
    found.into_iter().filter(|p| may_exist(p)).collect()
}

/// Whether there may be a socket at `path`: there is, or the caller may not look (a directory
/// it cannot search). The second case is kept so that connecting says "permission denied"
/// and names the group, instead of "not running".
pub fn may_exist(path: &Path) -> bool {
    !matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed run's socket is removed; a live run's and the service's own path are kept.
    #[test]
    fn only_sockets_nobody_listens_on_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let configured = dir.path().join("control.sock");
        let dead = dir.path().join("exec-dead.sock");
        let live = dir.path().join("exec-live.sock");
        drop(std::os::unix::net::UnixListener::bind(&configured).expect("bind"));
        drop(std::os::unix::net::UnixListener::bind(&dead).expect("bind"));
        let _listening = std::os::unix::net::UnixListener::bind(&live).expect("bind");
        assert_eq!(remove_stale(&configured), vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.exists() && configured.exists());
    }
}
