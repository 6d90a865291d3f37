//! Keeps the service's cgroups captured when they are removed and created again.
//!
//! Why this exists: programs are attached to a cgroup, and a cgroup is a directory the kernel
//! frees when it is removed. systemd removes a unit's cgroup when the unit stops, and a
//! slice's when the slice stops (`systemctl stop autogen.slice`); the next start makes a new
//! directory under the same name, with no programs on it. Without this, an agent started
//! there would connect direct, unjudged and unrecorded: the gate would fail open.
//!
//! So the daemon watches the parent directory of every captured cgroup (inotify, and a poll
//! as a backstop). A captured cgroup that disappears is created again at once, empty, and
//! captured from the pinned programs (`programs::attach_from_pins`): systemd starting the
//! unit or slice later finds the directory there and uses it, already captured. One that was
//! replaced before the daemon could act is captured as soon as it is seen, and journaled.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use super::{
    cgroup::Cgroup,
    programs::{attach_from_pins, link_dir},
    CaptureError,
};

/// How often every cgroup is checked when no event arrives (events can be missed: a watch on a
/// parent that itself was recreated).
const POLL: Duration = Duration::from_secs(2);

/// A captured cgroup and the id its programs are attached to.
#[derive(Debug, Clone)]
pub struct Watched {
    pub path: PathBuf,
    pub attached: u64,
}

/// What one check did to a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recaptured {
    pub path: PathBuf,
    pub previous: u64,
    pub id: u64,
    /// The directory was gone, and the daemon created it.
    pub created: bool,
}

/// Checks each cgroup once: creates a missing one, and captures one whose id changed.
/// Returns what it did; errors are per cgroup (the others are still checked).
pub fn check(pin_dir: &Path, watched: &mut [Watched]) -> Vec<Result<Recaptured, CaptureError>> {
    let mut done = Vec::new();
    for w in watched.iter_mut() {
        let created = !w.path.exists();
        let cgroup = match Cgroup::ensure(w.path.clone()) {
            Ok(c) => c,
            Err(e) => {
                done.push(Err(e));
                continue;
            }
        };
        let id = match cgroup.id() {
            Ok(id) => id,
            Err(e) => {
                done.push(Err(e));
                continue;
            }
        };
        if id == w.attached {
            continue;
        }
        let result = attach_from_pins(pin_dir, &cgroup).map(|()| {
            // The old cgroup is gone, and its links with it: its pins are just names now.
            let _ = std::fs::remove_dir_all(link_dir(pin_dir, w.attached));
            let previous = std::mem::replace(&mut w.attached, id);
            Recaptured {
                path: w.path.clone(),
                previous,
                id,
                created,
            }
        });
        done.push(result);
    }
    done
}

/// An inotify instance watching the parents of the captured cgroups for directories created or
/// removed in them.
fn watch_parents(watched: &[Watched]) -> Option<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ONLYDIR;
    let mut any = false;
    for w in watched {
        if let Some(parent) = w.path.parent() {
            any |= inotify.add_watch(parent, flags).is_ok();
        }
    }
    any.then_some(inotify)
}

/// Watches until the task is dropped, calling `report` for every re-capture (and failure).
pub async fn keep_captured(
    pin_dir: PathBuf,
    mut watched: Vec<Watched>,
    report: impl Fn(Result<Recaptured, CaptureError>),
) {
    let events = watch_parents(&watched).and_then(|i| {
        // SAFETY: the inotify fd is owned by the `InotifyFd` the `AsyncFd` owns: it stays open,
        // and is the same fd, for as long as the `AsyncFd` lives.
        unsafe { AsyncFd::register(InotifyFd(i)) }.ok()
    });
    if events.is_none() {
        tracing::warn!(
            "cannot watch the captured cgroups' parents; checking every {POLL:?} instead"
        );
    }
    loop {
        for outcome in check(&pin_dir, &mut watched) {
            report(outcome);
        }
        match &events {
            Some(fd) => {
                tokio::select! {
                    ready = fd.readable() => match ready {
                        Ok(mut guard) => {
                            // Drain: which entry changed does not matter, every one is checked.
                            let _ = guard.get_inner().0.read_events();
                            guard.clear_ready();
                        }
                        Err(_) => tokio::time::sleep(POLL).await,
                    },
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}

/// `AsyncFd` wants an `AsRawFd` owner.
struct InotifyFd(Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}
