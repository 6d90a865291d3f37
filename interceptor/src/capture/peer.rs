//! Who is at the other end of a routed Unix socket, and whether the gate captured them.
//!
//! Why this exists: a TCP connection reaches the gateway with the kernel's connect-time record
//! (`CONN_BY_CLIENT`), which is what makes it attributable. A routed Unix connect has no such
//! record: the kernel only rewrote its address (`capture::unix`). What it does have is the
//! peer's credentials, taken by the kernel at `connect()` (`SO_PEERCRED`), and a pidfd for that
//! very process (`SO_PEERPIDFD`, Linux 6.5). The listener is a file any local process can reach,
//! so the credentials alone prove nothing: the peer must be in one of the cgroups this gateway
//! captures, or the connection is refused.
//!
//! Pids are reused. The pidfd pins the process that connected: its cgroup is read from /proc by
//! pid, and only trusted if the pidfd still names a live process afterwards (a live process
//! keeps its pid, so /proc described that process and no other).
//!
//! What it does not do: judge or journal anything; the session does (`gateway::session`). The
//! record it returns goes through [`super::identity::IdentityCache::identify`] like a TCP one.

use std::{
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use interceptor_common::{ConnRecord, AF_UNIX};

use super::cgroup::cgroup_of_pid;

/// The cgroups a gateway captures, as /proc/PID/cgroup names them (relative to the cgroup2
/// mount, e.g. `/interceptor/run-…` or `/autogen.slice`). Their descendants are captured too:
/// the programs are attached there and inherited below.
#[derive(Debug, Clone, Default)]
pub struct CapturedCgroups {
    pub mount: PathBuf,
    pub paths: Vec<String>,
}

impl CapturedCgroups {
    pub fn contains(&self, cgroup: &str) -> bool {
        self.paths.iter().any(|c| {
            let c = c.trim_end_matches('/');
            cgroup == c || cgroup.strip_prefix(c).is_some_and(|r| r.starts_with('/'))
        })
    }
}

/// Why a routed connection is not attributed to a captured process. Each refuses it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The kernel would not say who the peer is.
    #[error("cannot read the peer's credentials: {0}")]
    Credentials(std::io::Error),
    /// The peer is not in a captured cgroup: it reached the listener without the gate's route.
    #[error("pid {pid} (uid {uid}) is not in a captured cgroup (its cgroup: {})", cgroup.as_deref().unwrap_or("unknown"))]
    NotCaptured {
        pid: u32,
        uid: u32,
        gid: u32,
        cgroup: Option<String>,
    },
    /// The peer exited before it could be checked: its pid may already name another process.
    #[error("pid {pid} (uid {uid}) exited before it could be attributed")]
    Gone { pid: u32, uid: u32, gid: u32 },
}

impl PeerError {
    /// The peer's pid, uid and gid, when the kernel told them.
    pub fn credentials(&self) -> Option<(u32, u32, u32)> {
        match *self {
            PeerError::Credentials(_) => None,
            PeerError::NotCaptured { pid, uid, gid, .. } | PeerError::Gone { pid, uid, gid } => {
                Some((pid, uid, gid))
            }
        }
    }
}

/// The connect-time record of the captured process behind `socket` (an accepted Unix stream),
/// or why there is none.
pub fn attribute(
    socket: BorrowedFd<'_>,
    captured: &CapturedCgroups,
) -> Result<ConnRecord, PeerError> {
    let cred = nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| PeerError::Credentials(e.into()))?;
    let (pid, uid, gid) = (
        u32::try_from(cred.pid()).unwrap_or(0),
        cred.uid(),
        cred.gid(),
    );
    if pid == 0 {
        // No process (a socketpair made outside any task): nothing to attribute.
        return Err(PeerError::Credentials(std::io::Error::other(
            "the peer has no pid",
        )));
    }
    let pidfd = peer_pidfd(socket).map_err(PeerError::Credentials)?;
    // Any time after the connect: `identify` trusts /proc only for a process started before it.
    let boot_ns = boot_time_ns();
    let cgroup = cgroup_of_pid(pid);
    let cgroup_id = cgroup
        .as_deref()
        .filter(|c| captured.contains(c))
        .and_then(|c| cgroup_id(captured, c));
    let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !alive(pidfd.as_fd()) {
        return Err(PeerError::Gone { pid, uid, gid });
    }
    let Some(cgroup_id) = cgroup_id else {
        return Err(PeerError::NotCaptured {
            pid,
            uid,
            gid,
            cgroup,
        });
    };
    let mut record = ConnRecord {
        cgroup_id,
        boot_ns,
        family: AF_UNIX,
        tgid: pid,
        uid,
        gid,
        ..ConnRecord::default()
    };
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
    let n = comm.len().min(record.comm.len() - 1);
    record.comm[..n].copy_from_slice(&comm[..n]);
    Ok(record)
}

/// The cgroup's id as `bpf_get_current_cgroup_id()` reports it (its directory's inode), so
/// the service's per-cgroup run ids are the same for TCP and Unix sessions.
fn cgroup_id(captured: &CapturedCgroups, cgroup: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let path = captured.mount.join(cgroup.trim_start_matches('/'));
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// `SO_PEERPIDFD`: a pidfd for the process that connected (Linux 6.5+; the Unix hooks that make
/// routing possible came in 6.7).
fn peer_pidfd(socket: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` and `len` are valid for writes of the sizes given; the socket is borrowed
    // for the duration of the call.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(std::io::Error::other("SO_PEERPIDFD returned no descriptor"));
    }
    // SAFETY: the kernel handed us a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the pidfd's process is still running (`pidfd_send_signal` with signal 0 checks
/// without signalling; ESRCH once it has exited, even before it is reaped).
fn alive(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: a raw syscall on a descriptor we borrow, with a null siginfo, as documented.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    ret == 0
}

/// CLOCK_BOOTTIME in nanoseconds, the clock of `bpf_ktime_get_boot_ns()` and process start times.
/// If the clock cannot be read, 0: no process started before it, so `identify` keeps no /proc
/// details (the identity is marked stale rather than misattributed).
fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for the write.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_cgroups_include_descendants_only() {
        let captured = CapturedCgroups {
            mount: PathBuf::from("/sys/fs/cgroup"),
            paths: vec!["/interceptor/run-1".to_owned()],
        };
        assert!(captured.contains("/interceptor/run-1"));
        assert!(captured.contains("/interceptor/run-1/child"));
        assert!(!captured.contains("/interceptor/run-10"));
        assert!(!captured.contains("/interceptor"));
        assert!(!CapturedCgroups::default().contains("/"));
    }

    #[test]
    fn a_process_outside_the_captured_cgroups_is_refused_with_its_credentials() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let captured = CapturedCgroups {
            mount: PathBuf::from("/sys/fs/cgroup"),
            paths: vec!["/no-such-cgroup-for-this-test".to_owned()],
        };
        let err = attribute(a.as_fd(), &captured).expect_err("not captured");
        let (pid, uid, _) = err.credentials().expect("credentials");
        assert_eq!(pid, std::process::id());
        assert_eq!(uid, nix::unistd::getuid().as_raw());
        assert!(matches!(err, PeerError::NotCaptured { .. }), "{err}");
    }

    #[test]
    fn this_process_in_its_own_cgroup_is_attributed() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let Some(own) = cgroup_of_pid(std::process::id()) else {
            return; // no cgroup v2 here: nothing to test against
        };
        let Some(mount) = super::super::cgroup::cgroup2_mount().ok() else {
            return;
        };
        let captured = CapturedCgroups {
            mount,
            paths: vec![own],
        };
        let record = attribute(a.as_fd(), &captured).expect("attributed");
        assert_eq!(record.tgid, std::process::id());
        assert_eq!(record.family, AF_UNIX);
        assert_ne!(record.cgroup_id, 0);
    }
}
