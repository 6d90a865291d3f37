//! A real systemd to test the service under: a Debian 12 rootfs (debootstrap, cached) booted
//! with `systemd-nspawn -b`, driven with `nsenter`.
//!
//! Why: systemd cannot be PID 1 on the test machines, but it boots in a container, and the
//! service's promises (notify readiness, the unit's sandbox, fail closed on stop, packaging)
//! only mean something under the real thing. The container shares the host's network, so
//! loopback servers the harness starts are reachable from inside; it gets CAP_BPF,
//! CAP_PERFMON and CAP_NET_ADMIN and the bpf() system call, as the recipe says.
//!
//! Each container boots an ephemeral copy of the cached rootfs (`--ephemeral`), removed by
//! nspawn when it stops; [`Container`]'s Drop stops it (SIGTERM to nspawn, then SIGKILL).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{run_command, unique_name, workspace_root, Output, Spawned};

/// Where the debootstrapped rootfs is kept between runs (about 260 MB). The name changes with
/// what [`INCLUDE`] installs, so a cache made with fewer packages is never taken for this one.
const ROOTFS_CACHE: &str = "/var/cache/interceptor-tests/rootfs-bookworm-psql";

/// Packages beyond minbase: systemd to boot, and psql for an agent that speaks PostgreSQL.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,libpam-systemd,postgresql-client-15";

/// The cached rootfs, made on first use (about a minute). Concurrent first uses are
/// serialised with a lock file; a half-made tree is never renamed into place.
pub fn rootfs() -> PathBuf {
    let cache = PathBuf::from(ROOTFS_CACHE);
    if cache.join("usr/lib/systemd/systemd").exists() {
        return cache;
    }
    let parent = cache.parent().expect("cache has a parent");
    std::fs::create_dir_all(parent).expect("create the rootfs cache directory");
    let script = format!(
        "set -e; exec 9>{lock}; flock 9; [ -e {cache}/usr/lib/systemd/systemd ] && exit 0; \
         rm -rf {cache}.tmp; debootstrap --variant=minbase \
         --include={INCLUDE} bookworm {cache}.tmp {mirror}; \
         rm -rf {cache}; mv {cache}.tmp {cache}",
        lock = parent.join("rootfs.lock").display(),
        cache = cache.display(),
        mirror = debian_mirror(),
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let out = run_command(cmd, Duration::from_secs(900));
    assert!(out.success(), "debootstrap failed\n{}", out.describe());
    cache
}

/// The Debian mirror the host's apt uses (the only registry these machines reach).
fn debian_mirror() -> String {
    let sources = [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ];
    sources
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| {
                    let l = l.trim();
                    l.strip_prefix("URIs:")
                        .or_else(|| {
                            l.strip_prefix("deb ")
                                .and_then(|r| r.split_whitespace().next())
                        })
                        .map(|u| u.split_whitespace().next().unwrap_or("").to_owned())
                })
                .collect::<Vec<_>>()
        })
        .find(|u| u.ends_with("/debian"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// A booted container. Stopped and removed on drop.
pub struct Container {
    nspawn: Option<Spawned>,
    /// The container's PID 1, as the host sees it.
    pub init: u32,
    pub name: String,
}

impl Container {
    /// Boots an ephemeral copy of [`rootfs`] with `binds` (host dir, container dir) read-only.
    pub fn boot(binds: &[(&Path, &str)]) -> Container {
        let rootfs = rootfs();
        let name = unique_name("itest");
        let mut nspawn = format!(
            "exec systemd-nspawn -D {} --ephemeral --boot --register=no --keep-unit \
             --machine={name} --capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN \
             --system-call-filter='bpf perf_event_open'",
            rootfs.display()
        );
        for (host, inside) in binds {
            nspawn.push_str(&format!(" --bind-ro={}:{inside}", host.display()));
        }
        // nspawn wants a terminal for the container's console: `script` gives it one.
        let mut cmd = Command::new("script");
        cmd.args(["-qfec", &nspawn, "/dev/null"])
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .current_dir(workspace_root());
        let nspawn = Spawned::spawn(cmd, "", false);
        let mut container = Container {
            nspawn: Some(nspawn),
            init: 0,
            name,
        };
        container.init = container.wait_for_init(Duration::from_secs(60));
        container.wait_until_booted(Duration::from_secs(90));
        container
    }

    /// The container's systemd: the descendant of `script` that is PID 1 of its own PID
    /// namespace. Searched at any depth, because how many processes sit between `script` and
    /// nspawn depends on the shell `script` runs (bash execs a lone command, others fork).
    fn wait_for_init(&self, timeout: Duration) -> u32 {
        let script = self.nspawn.as_ref().expect("running").pid();
        let deadline = Instant::now() + timeout;
        loop {
            let init = descendants(script)
                .into_iter()
                .find(|pid| is_namespace_init(*pid) && comm(*pid).as_deref() == Some("systemd"));
            if let Some(pid) = init {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not start\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_until_booted(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.sh("systemctl is-system-running 2>/dev/null || true");
            let state = state.stdout.trim();
            if state == "running" || state == "degraded" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd did not finish booting ({state})\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `sh -c script` inside the container (all its namespaces), as root.
    pub fn sh(&self, script: &str) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init.to_string(), "-a", "sh", "-c", script]);
        run_command(cmd, Duration::from_secs(120))
    }

    /// Like [`Container::sh`], asserting success.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.success(), "in the container: {}", out.describe());
        out.stdout
    }

    /// What the container printed on its console so far.
    pub fn console(&self) -> String {
        self.nspawn
            .as_ref()
            .map(|s| s.stdout_so_far())
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(nspawn) = self.nspawn.take() {
            // SIGTERM to nspawn (a descendant of `script`, which we started) shuts the
            // container down; the Spawned's own drop kills what is left.
            let outermost_nspawn = descendants(nspawn.pid())
                .into_iter()
                .find(|pid| comm(*pid).as_deref() == Some("systemd-nspawn"));
            if let Some(pid) = outermost_nspawn {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = nspawn.wait(Duration::from_secs(30));
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Every descendant of `pid`, parents before children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for child in children(p) {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

/// Whether `pid` is PID 1 of a PID namespace nested below ours (`NSpid: <ours> … 1`).
fn is_namespace_init(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        })
        .unwrap_or(false)
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

/// `make deb-package` for the newer of the release and debug builds; returns the .deb's path.
pub fn build_package(timeout: Duration) -> PathBuf {
    let root = workspace_root();
    // A release binary left from before a change would package old code (`make test` builds
    // both, release first).
    let modified = |profile: &str| {
        std::fs::metadata(root.join("target").join(profile).join("interceptor"))
            .and_then(|m| m.modified())
            .ok()
    };
    let profile = match (modified("release"), modified("debug")) {
        (Some(release), Some(debug)) if release >= debug => "release",
        (Some(_), None) => "release",
        _ => "dev",
    };
    let mut cmd = Command::new("make");
    cmd.current_dir(&root)
        .arg("--no-print-directory")
        .arg("deb-package")
        .arg(format!("DEB_PROFILE={profile}"));
    let out = run_command(cmd, timeout);
    assert!(out.success(), "make deb-package: {}", out.describe());
    // cargo-deb prints the package's path as its last line.
    let deb = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .unwrap_or_else(|| panic!("no .deb path in the output: {}", out.describe()));
    assert!(deb.is_file(), "{} missing", deb.display());
    deb
}
