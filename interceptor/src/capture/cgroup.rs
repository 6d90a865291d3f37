//! cgroup v2 directories: find the mount, create a run's cgroup, move a process in, and tear
//! it down (killing what is left) when the run ends.
//!
//! The mount point differs between hosts (`/sys/fs/cgroup` under systemd, elsewhere e.g.
//! `/sys/fs/cgroup/unified`), so it is always read from /proc/mounts.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::CaptureError;

/// The first cgroup2 mount listed in `mounts` (the text of /proc/mounts).
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
pub(crate) fn unescape_mount_path(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn cgroup2_mount() -> Result<PathBuf, CaptureError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(|source| CaptureError::Cgroup {
        path: "/proc/mounts".into(),
        source,
    })?;
    cgroup2_mount_in(&mounts).ok_or(CaptureError::NoCgroup2)
}

/// A cgroup directory. The one that `exec` creates is owned: dropping it kills any process
/// left inside and removes the directory, so a failed run never leaves a cgroup behind.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    owned: bool,
}

impl Cgroup {
    /// Creates `path` (and its parents). Fails if it already exists, so two runs never share.
    pub fn create_owned(path: PathBuf) -> Result<Cgroup, CaptureError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| CaptureError::Cgroup {
                path: parent.to_owned(),
                source,
            })?;
        }
        fs::create_dir(&path).map_err(|source| CaptureError::Cgroup {
            path: path.clone(),
            source,
        })?;
        Ok(Cgroup { path, owned: true })
    }

    /// Opens (creating if needed) a cgroup that outlives this process, for service mode.
    pub fn ensure(path: PathBuf) -> Result<Cgroup, CaptureError> {
        fs::create_dir_all(&path).map_err(|source| CaptureError::Cgroup {
            path: path.clone(),
            source,
        })?;
        Ok(Cgroup { path, owned: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A directory fd, which is what BPF_PROG_ATTACH / bpf_link_create take.
    pub fn open(&self) -> Result<fs::File, CaptureError> {
        fs::File::open(&self.path).map_err(|source| CaptureError::Cgroup {
            path: self.path.clone(),
            source,
        })
    }

    /// The kernel's id for this cgroup (the inode number of its directory), as
    /// `bpf_get_current_cgroup_id()` reports it.
    pub fn id(&self) -> Result<u64, CaptureError> {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(|source| CaptureError::Cgroup {
                path: self.path.clone(),
                source,
            })
    }

    /// `cgroup.procs` opened for writing, to be used in a child between fork and exec
    /// (writing "0" moves the writer itself).
    pub fn procs_file(&self) -> Result<fs::File, CaptureError> {
        let path = self.path.join("cgroup.procs");
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| CaptureError::Cgroup { path, source })
    }

    pub fn add_pid(&self, pid: u32) -> Result<(), CaptureError> {
        let mut file = self.procs_file()?;
        file.write_all(pid.to_string().as_bytes())
            .map_err(|source| CaptureError::Cgroup {
                path: self.path.join("cgroup.procs"),
                source,
            })
    }

    pub fn pids(&self) -> io::Result<Vec<i32>> {
        Ok(fs::read_to_string(self.path.join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Kills every process in the cgroup and waits (bounded) until it is empty.
    pub fn kill_all(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // cgroup.kill (Linux 5.14+) kills the whole subtree atomically, including processes
            // forked while we iterate; fall back to signalling each pid on older kernels.
            let killed = fs::write(self.path.join("cgroup.kill"), "1").is_ok();
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if !killed {
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("processes still in {}", self.path.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills what is left and removes the directory (and empty child cgroups).
    pub fn remove(&self) -> io::Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        self.kill_all()?;
        remove_tree(&self.path)
    }
}

fn remove_tree(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    // A just-emptied cgroup can report EBUSY for a moment while the kernel reaps its tasks.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(path) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => return other,
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = self.remove() {
                tracing::warn!(cgroup = %self.path.display(), error = %e, "could not remove run cgroup");
            }
        }
    }
}

/// The cgroup path (relative to the cgroup2 mount) of `pid`, from /proc/PID/cgroup ("0::/path").
pub fn cgroup_of_pid(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The systemd unit a cgroup path belongs to: its innermost `.service` or `.scope` component.
pub fn unit_of_cgroup(path: &str) -> Option<String> {
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

/// The cgroup of a systemd unit, from `systemctl show -p ControlGroup`.
pub fn cgroup_of_unit(unit: &str) -> Result<String, CaptureError> {
    let out = std::process::Command::new("systemctl")
        .args(["show", "-p", "ControlGroup", "--value", unit])
        .output()
        .map_err(|e| CaptureError::Unit {
            unit: unit.to_owned(),
            message: format!("running systemctl: {e}"),
        })?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || path.is_empty() {
        return Err(CaptureError::Unit {
            unit: unit.to_owned(),
            message: "systemd reports no cgroup for it (is it loaded?)".to_owned(),
        });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_wherever_it_is_mounted() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount_in("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
        assert_eq!(
            cgroup2_mount_in("none /mnt/my\\040cg cgroup2 rw 0 0"),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn unit_comes_from_the_innermost_service_or_scope() {
        assert_eq!(
            unit_of_cgroup("/system.slice/agent.service"),
            Some("agent.service".to_owned())
        );
        assert_eq!(
            unit_of_cgroup("/user.slice/user-1000.slice/session-3.scope"),
            Some("session-3.scope".to_owned())
        );
        assert_eq!(unit_of_cgroup("/interceptor/run-1"), None);
    }
}
