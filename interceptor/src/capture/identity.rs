//! Who is behind a connection: the kernel's connect-time record, completed from /proc.
//!
//! The kernel record (pid, uid, gid, cgroup id, comm) is authoritative: it was taken inside the
//! caller's own connect(). /proc adds what policy and auditors want to read (exe, cmdline, user
//! name, cgroup path, systemd unit). Because pids are reused, /proc details are only trusted if
//! the process started before the connection was made; otherwise they are dropped and the
//! identity is marked `stale` rather than attributing the connection to an unrelated process.

use std::{collections::HashMap, fs, sync::Mutex, time::Duration};

use interceptor_common::ConnRecord;
use serde::Serialize;

use super::cgroup::{cgroup_of_pid, unit_of_cgroup};

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    pub unit: Option<String>,
    /// Process start, in nanoseconds since boot (CLOCK_BOOTTIME), when /proc still had it.
    pub start_boot_ns: Option<u64>,
    /// The pid was gone or reused by the time we looked: /proc details are absent.
    pub stale: bool,
}

/// What /proc says about one process incarnation (pid + start time), which cannot change
/// except for the cmdline; agents open many connections, so this is read once per process.
#[derive(Debug, Clone, Default)]
struct ProcDetails {
    exe: Option<String>,
    cmdline: Option<String>,
    cgroup_path: Option<String>,
    unit: Option<String>,
}

/// Remembers /proc details per process incarnation and user names per uid. Bounded: it is
/// simply emptied when full, which only costs a re-read.
#[derive(Debug, Default)]
pub struct IdentityCache {
    processes: Mutex<HashMap<(u32, u64), ProcDetails>>,
    users: Mutex<HashMap<u32, Option<String>>>,
    groups: Mutex<HashMap<(u32, u32), Vec<String>>>,
}

const CACHE_LIMIT: usize = 4096;

fn cached<K: std::hash::Hash + Eq, V: Clone>(
    map: &Mutex<HashMap<K, V>>,
    key: K,
    load: impl FnOnce() -> V,
) -> V {
    if let Some(v) = map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return v.clone();
    }
    let value = load();
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= CACHE_LIMIT {
        map.clear();
    }
    map.insert(key, value.clone());
    value
}

impl IdentityCache {
    /// Builds the identity for a connect-time record, reading /proc for the details.
    pub fn identify(&self, record: &ConnRecord) -> Identity {
        let comm_len = record.comm.iter().position(|&b| b == 0).unwrap_or(16);
        let mut identity = Identity {
            pid: record.tgid,
            uid: record.uid,
            gid: record.gid,
            user: cached(&self.users, record.uid, || user_name(record.uid)),
            comm: String::from_utf8_lossy(&record.comm[..comm_len]).into_owned(),
            cgroup_id: record.cgroup_id,
            ..Identity::default()
        };
        match process_start_boot_ns(record.tgid) {
            // A process that started after the connect() cannot be the one that connected.
            Some(start) if start <= record.boot_ns => {
                let pid = record.tgid;
                let details = cached(&self.processes, (pid, start), || read_details(pid));
                identity.start_boot_ns = Some(start);
                identity.exe = details.exe;
                identity.cmdline = details.cmdline;
                identity.cgroup_path = details.cgroup_path;
                identity.unit = details.unit;
            }
            _ => identity.stale = true,
        }
        identity
    }
}

impl IdentityCache {
    /// The groups of a caller, by name and by number: its primary group and, when the uid has
    /// an account, the account's supplementary groups.
    pub fn groups(&self, uid: u32, gid: u32, user: Option<&str>) -> Vec<String> {
        cached(&self.groups, (uid, gid), || {
            let mut gids = vec![gid];
            if let Some(c) = user.and_then(|u| std::ffi::CString::new(u).ok()) {
                if let Ok(list) = nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid)) {
                    gids.extend(list.into_iter().map(|g| g.as_raw()));
                }
            }
            gids.sort_unstable();
            gids.dedup();
            let mut names = Vec::new();
            for g in gids {
                names.push(g.to_string());
                if let Ok(Some(group)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(g))
                {
                    names.push(group.name);
                }
            }
            names
        })
    }
}

fn read_details(pid: u32) -> ProcDetails {
    let cgroup_path = cgroup_of_pid(pid);
    ProcDetails {
        exe: fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.display().to_string()),
        cmdline: fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .map(|raw| redact_secrets(&cmdline_text(&raw))),
        unit: cgroup_path.as_deref().and_then(unit_of_cgroup),
        cgroup_path,
    }
}

pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// NUL-separated argv as one line; arguments with spaces are quoted.
fn cmdline_text(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let arg = String::from_utf8_lossy(a);
            if arg.contains(char::is_whitespace) {
                format!("{arg:?}")
            } else {
                arg.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Agents put credentials on their command lines (`password=…` in a DSN, a URL with
/// `user:pass@`, `--token …`). The journal must never hold them, so values that follow a
/// secret-looking key, and URL passwords, are replaced before the command line is recorded.
pub fn redact_secrets(cmdline: &str) -> String {
    static KEYED: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(?i)((?:pass(?:word|wd|phrase)?|pwd|[_-]pw|secret|token|api[_-]?key|credentials?|auth)\w*\\?"?\s*(?:=|:|\s)\s*\\?"?)([^\s"'\\,;&}]+)"#,
        )
        .expect("static regex")
    });
    static URL_PASSWORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(://[^/\s:@]*:)([^@\s/]+)(@)").expect("static regex")
    });
    let text = URL_PASSWORD.replace_all(cmdline, "${1}[redacted]${3}");
    KEYED.replace_all(&text, "${1}[redacted]").into_owned()
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot), in nanoseconds.
fn process_start_boot_ns(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat).map(|ticks| ticks_to_ns(ticks, clock_ticks_per_second()))
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // comm (field 2) may contain spaces and parentheses: fields after it follow the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts at field 3; field 22 is the 20th from there.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    let per_tick = Duration::from_secs(1).as_nanos() as u64 / hz.max(1);
    ticks.saturating_mul(per_tick)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_process_names() {
        let stat = "1234 (evil) name (x)) S 1 1234 1234 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(98765));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn cmdline_is_readable() {
        assert_eq!(
            cmdline_text(b"python3\0agent.py\0--name\0my agent\0"),
            "python3 agent.py --name \"my agent\""
        );
    }

    #[test]
    fn secrets_on_command_lines_are_redacted() {
        for (raw, secret) in [
            ("psql host=db password=hunter2 user=app", "hunter2"),
            ("psql postgresql://app:hunter2@127.0.0.2/db", "hunter2"),
            ("agent --api-key sk_live_abc --verbose", "sk_live_abc"),
            ("tool --token=ghp_xyz", "ghp_xyz"),
            (r#"python -c x {"scram_pw": "s3cr3t", "n": 1}"#, "s3cr3t"),
            (r#"python -c "{\"scram_pw\": \"s3cr3t\"}""#, "s3cr3t"),
            ("env PGPASSWORD=topsecret psql", "topsecret"),
        ] {
            let clean = redact_secrets(raw);
            assert!(!clean.contains(secret), "{raw} -> {clean}");
            assert!(clean.contains("[redacted]"), "{raw} -> {clean}");
        }
        assert_eq!(
            redact_secrets("python agent.py --name x"),
            "python agent.py --name x"
        );
    }

    #[test]
    fn own_process_is_not_stale() {
        let pid = std::process::id();
        let start = process_start_boot_ns(pid).expect("own start time");
        let record = ConnRecord {
            tgid: pid,
            boot_ns: start + 1,
            comm: *b"test\0\0\0\0\0\0\0\0\0\0\0\0",
            ..ConnRecord::default()
        };
        let identity = IdentityCache::default().identify(&record);
        assert!(!identity.stale);
        assert!(identity.exe.is_some());
        assert_eq!(identity.comm, "test");
    }

    #[test]
    fn a_process_younger_than_the_connection_is_not_trusted() {
        let pid = std::process::id();
        let record = ConnRecord {
            tgid: pid,
            boot_ns: 1,
            ..ConnRecord::default()
        };
        let identity = IdentityCache::default().identify(&record);
        assert!(identity.stale);
        assert_eq!(identity.exe, None);
    }
}
