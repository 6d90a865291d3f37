//! The gateway's listeners for routed Unix sockets.
//!
//! Why this exists: a target may list `unix:/path` in its `intercept` (a local database's
//! socket). The kernel rewrites a captured `connect()` to that path into one to a listener of
//! the gateway's own (`capture::unix`), and the session then runs exactly as a TCP one to that
//! target (`gateway::session::run_unix`), journaled with the routed path as its destination.
//!
//! One listener per routed path, not per target: the kernel keeps no record of a Unix connect,
//! so the listener it was sent to is how the gateway knows which path the agent dialed.
//!
//! Where: `<runtime dir>/routes/<run>/<n>.sock`, the runtime directory being the control
//! socket's (`/run/interceptor`), `<run>` the run id for `exec` (runs never share a listener)
//! or `service`. The directory is 0755 and the sockets 0666, because the kernel resolves the
//! rewritten path with the agent's own credentials, and agents run as any user. So anyone on
//! the host can reach a listener; what keeps it for captured processes is attribution: the
//! peer's cgroup must be a captured one (`capture::peer`), or the connection is refused and
//! journaled as an anomaly. The program also denies the listener paths to captured processes
//! that name them directly, so a listener is only ever reached through its route.
//!
//! What it does not do: decide, relay or record; the session does.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::net::UnixListener;

use crate::target::Target;

/// One routed socket path and where the gateway listens for it.
#[derive(Debug)]
pub struct UnixRoute {
    /// The target's name.
    pub target: String,
    /// The path the agent connects to, as configured: the journaled destination.
    pub routed: String,
    /// The gateway's listener, where the kernel sends those connects.
    pub listener: PathBuf,
}

/// A bound listener and its route.
pub struct RouteListener {
    pub route: Arc<UnixRoute>,
    pub listener: UnixListener,
}

/// The directory of one gateway's route listeners; removed (with the listeners' files) when
/// dropped, so a stopped gateway leaves no file a routed connect could find: it fails with
/// ENOENT, never reaches anything else.
#[derive(Debug)]
pub struct RouteDir {
    path: PathBuf,
}

impl RouteDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RouteDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the Unix route listeners");
            }
        }
    }
}

/// Binds a listener for every `unix:` path of every target under `<runtime_dir>/routes/<run>`.
/// No routes, no directory.
pub fn bind(
    runtime_dir: &Path,
    run: &str,
    targets: &[Target],
) -> std::io::Result<(Option<RouteDir>, Vec<RouteListener>)> {
    let routes: Vec<(&Target, &String)> = targets
        .iter()
        .flat_map(|t| t.unix_routes.iter().map(move |p| (t, p)))
        .collect();
    if routes.is_empty() {
        return Ok((None, Vec::new()));
    }
    let routes_dir = runtime_dir.join("routes");
    let dir = RouteDir {
        path: routes_dir.join(run),
    };
    // A previous gateway of the same name (a restarted service) may have left its files.
    match std::fs::remove_dir_all(dir.path()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(at(dir.path(), e)),
        _ => {}
    }
    std::fs::create_dir_all(dir.path()).map_err(|e| at(dir.path(), e))?;
    for d in [&routes_dir, dir.path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| at(d, e))?;
    }
    warn_unless_searchable(runtime_dir);
    let mut listeners = Vec::with_capacity(routes.len());
    for (n, (target, routed)) in routes.into_iter().enumerate() {
        let path = dir.path().join(format!("{n}.sock"));
        let listener = UnixListener::bind(&path).map_err(|e| at(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| at(&path, e))?;
        tracing::info!(target = %target.name, routed = %routed, listener = %path.display(), "routing a Unix socket through the gateway");
        listeners.push(RouteListener {
            route: Arc::new(UnixRoute {
                target: target.name.clone(),
                routed: routed.clone(),
                listener: path,
            }),
            listener,
        });
    }
    Ok((Some(dir), listeners))
}

fn at(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The kernel resolves a rewritten path with the caller's credentials: an agent that cannot
/// search every directory above the listener gets EACCES instead of its session. That is
/// closed, not open, but it is a misconfiguration worth naming.
fn warn_unless_searchable(dir: &Path) {
    for ancestor in dir.ancestors() {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 == 0 {
            tracing::warn!(
                dir = %ancestor.display(),
                "agents cannot search this directory: routed Unix sockets will fail with EACCES (make it 0755 or 0711)"
            );
            return;
        }
    }
}
