//! `interceptor doctor`: can this host run the gate, and if not, what to do about it.
//!
//! Each check prints one line, `ok` or `FAIL`, and for a failure the fix. The exit status is
//! non-zero when anything the daemon needs is missing, so provisioning scripts can gate on it.

use std::path::Path;

use crate::{capture::cgroup::cgroup2_mount, config::Config};

pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: &'static str,
}

fn check(name: &'static str, result: Result<String, String>, fix: &'static str) -> Check {
    match result {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
            fix,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
            fix,
        },
    }
}

fn kernel() -> Result<String, String> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .map_err(|e| e.to_string())?;
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    // bpf_link for cgroup programs (5.7) and cgroup.kill (5.14).
    if (major, minor) >= (5, 14) {
        Ok(release)
    } else {
        Err(format!("{release} is older than 5.14"))
    }
}

fn btf() -> Result<String, String> {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    if path.exists() {
        Ok(path.display().to_string())
    } else {
        Err("no /sys/kernel/btf/vmlinux".to_owned())
    }
}

fn cgroup_v2() -> Result<String, String> {
    cgroup2_mount()
        .map(|p| format!("mounted at {}", p.display()))
        .map_err(|e| e.to_string())
}

fn bpffs(config: &Config) -> Result<String, String> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| e.to_string())?;
    let mount = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "bpf").then(|| f[1].to_owned())
    });
    match mount {
        Some(m) => Ok(format!(
            "mounted at {m}; pins go to {}",
            config.capture.pin_dir.display()
        )),
        None => Err("not mounted (the service mounts it at /sys/fs/bpf when it starts)".to_owned()),
    }
}

fn privileges() -> Result<String, String> {
    if nix::unistd::geteuid().is_root() {
        Ok("running as root".to_owned())
    } else {
        Err("not root: loading eBPF and creating cgroups need root".to_owned())
    }
}

fn programs_load() -> Result<String, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("skipped: needs root".to_owned());
    }
    crate::capture::programs::Programs::load(None)
        .map(|_| "the embedded programs pass the verifier".to_owned())
        .map_err(|e| e.to_string())
}

fn journal(config: &Config) -> Result<String, String> {
    let path = &config.journal.path;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    let writable = nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).is_ok();
    if writable {
        Ok(path.display().to_string())
    } else {
        Err(format!("{} is not writable", existing.display()))
    }
}

pub fn run_checks(config: &Config) -> Vec<Check> {
    vec![
        check("kernel", kernel(), "upgrade to Linux 5.14 or newer"),
        check("btf", btf(), "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        check(
            "cgroup v2",
            cgroup_v2(),
            "mount it: mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd.unified_cgroup_hierarchy=1)",
        ),
        check("bpffs", bpffs(config), "mount -t bpf bpf /sys/fs/bpf"),
        check("privileges", privileges(), "run as root (sudo), or as the interceptor service"),
        check("ebpf", programs_load(), "check `dmesg` and the kernel's BPF support (CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF)"),
        check("journal", journal(config), "create the directory or set [journal] path"),
    ]
}

/// Prints the report; returns whether everything needed passed. A missing bpffs is only a
/// warning because the service mounts it itself.
pub fn report(config: &Config) -> bool {
    let mut healthy = true;
    for c in run_checks(config) {
        let essential = c.name != "bpffs";
        let status = match (c.ok, essential) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        println!("{status} {:<11} {}", c.name, c.detail);
        if !c.ok {
            println!("     {:<11} fix: {}", "", c.fix);
            healthy &= !essential;
        }
    }
    healthy
}
