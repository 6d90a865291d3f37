//! A Unix socket that root and the members of one group may connect to.
//!
//! Why this exists: the control socket (approvers) and the metrics socket (journal readers)
//! are both files whose mode is the access control, and they must be made the same careful
//! way: a stale file from a killed run replaced, owner root, mode 0660 with the group, or 0600
//! (root alone) when the group does not exist, so that a missing group never opens the socket
//! to everyone.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use tokio::net::UnixListener;

/// Creates the socket at `path` (and its directory; a stale socket there is replaced), owned
/// by root with `group`, mode 0660; 0600 without the group.
pub fn bind(path: &Path, group: &str) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    let gid = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid);
    // Without the group only root may connect.
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), gid)
        .map_err(std::io::Error::from)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}
