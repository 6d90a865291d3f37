//! `interceptor doctor`: can this host run the gate, and if not, what to do about it.
//!
//! Each check prints one line, `ok` or `FAIL`, and for a failure the fix. The exit status is
//! non-zero when anything the daemon needs is missing, so provisioning scripts can gate on it.
//!
//! The journal checks open the configured journal as the daemon would (migrating it if it is
//! older), take its write lock and roll a write back, and verify its hash chain: a journal
//! that cannot be written means every command is refused, so it is reported here with the
//! cause, and a broken chain means someone changed the record.

use std::path::Path;

use crate::{
    capture::cgroup::cgroup2_mount,
    config::Config,
    journal::{JournalError, JournalSync},
};

pub mod config_check;

/// One line of a report (`doctor`, `config check`); `--json` prints these as they are.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// A failed essential check is a FAIL (non-zero exit); a failed other one a warning.
    pub essential: bool,
    pub detail: String,
    /// What to do about a failure ("" when there is nothing to do).
    pub fix: &'static str,
}

impl Check {
    /// A warning: reported with its fix, but not a failure.
    pub fn warn(name: impl Into<String>, detail: String, fix: &'static str) -> Check {
        Check {
            essential: false,
            ..fail(name, detail, fix)
        }
    }

    /// A failed essential check.
    pub fn is_failure(&self) -> bool {
        !self.ok && self.essential
    }
}

pub fn check(name: impl Into<String>, result: Result<String, String>, fix: &'static str) -> Check {
    let (ok, detail) = match result {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    Check {
        name: name.into(),
        ok,
        essential: true,
        detail,
        fix,
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

/// Where the service's pins will live. The installed unit runs in a mount namespace of its
/// own (ProtectSystem=strict), so a bpffs it mounted itself would die with it: the host must
/// have one (see `service::pin_dir_placement`).
fn bpffs(config: &Config) -> Result<String, String> {
    let pin_dir = &config.capture.pin_dir;
    match crate::service::pin_dir_placement(pin_dir)? {
        Some(m) => Ok(format!(
            "pins go to {} on the host's bpf filesystem at {}",
            pin_dir.display(),
            m.display()
        )),
        None => Err(format!(
            "no bpf filesystem holds {}: the service runs in a mount namespace of its own and \
             cannot mount one the host keeps, so `run` would refuse to start",
            pin_dir.display()
        )),
    }
}

/// Where an installed unit lives: `install`'s and the package's.
const UNIT_FILES: [&str; 2] = [
    "/etc/systemd/system/interceptor.service",
    "/usr/lib/systemd/system/interceptor.service",
];
/// What the service needs in its bounding set (see the unit's comments for why). Not
/// CAP_SYS_ADMIN: every kernel doctor accepts (5.14+) has CAP_BPF (5.8).
const UNIT_CAPABILITIES: [&str; 3] = ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"];

/// The capability bounding set a unit's text leaves, as systemd reads
/// `CapabilityBoundingSet=` lines in order: a list adds, `~list` removes, an empty value resets
/// to everything. `None`: no restriction.
fn bounding_set(units: &[String]) -> Option<std::collections::BTreeSet<String>> {
    let mut set: Option<std::collections::BTreeSet<String>> = None;
    for line in units.iter().flat_map(|u| u.lines()) {
        let Some(value) = line.trim().strip_prefix("CapabilityBoundingSet=") else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            set = None;
        } else if let Some(removed) = value.strip_prefix('~') {
            let mut all: std::collections::BTreeSet<String> = set
                .take()
                .unwrap_or_else(|| UNIT_CAPABILITIES.iter().map(|c| c.to_string()).collect());
            for c in removed.split_whitespace() {
                all.remove(c);
            }
            set = Some(all);
        } else {
            set.get_or_insert_with(Default::default)
                .extend(value.split_whitespace().map(str::to_owned));
        }
    }
    set
}

/// The capabilities the installed unit (and its drop-ins) give the service, which a root
/// shell has regardless: doctor run from a shell would otherwise vouch for a unit that cannot
/// load a single program.
fn unit_capabilities() -> Result<String, String> {
    let Some(unit) = UNIT_FILES.iter().map(Path::new).find(|p| p.exists()) else {
        return Ok("no installed unit (checked this shell only)".to_owned());
    };
    let mut texts =
        vec![std::fs::read_to_string(unit).map_err(|e| format!("{}: {e}", unit.display()))?];
    let drop_ins = Path::new("/etc/systemd/system/interceptor.service.d");
    if let Ok(entries) = std::fs::read_dir(drop_ins) {
        let mut confs: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        confs.sort();
        texts.extend(confs.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    missing_capabilities(&texts, unit)
}

fn missing_capabilities(texts: &[String], unit: &Path) -> Result<String, String> {
    let Some(set) = bounding_set(texts) else {
        return Ok(format!(
            "{}: no CapabilityBoundingSet= (all capabilities)",
            unit.display()
        ));
    };
    let missing: Vec<&str> = UNIT_CAPABILITIES
        .iter()
        .copied()
        .filter(|c| !set.contains(*c))
        .collect();
    if missing.is_empty() {
        Ok(format!(
            "{} keeps {}",
            unit.display(),
            UNIT_CAPABILITIES.join(" ")
        ))
    } else {
        Err(format!(
            "{}: CapabilityBoundingSet= lacks {}",
            unit.display(),
            missing.join(" ")
        ))
    }
}

fn privileges() -> Result<String, String> {
    if nix::unistd::geteuid().is_root() {
        Ok("running as root".to_owned())
    } else {
        Err("not root: loading eBPF and creating cgroups need root".to_owned())
    }
}

/// The TCP programs (`ebpf`), and separately the Unix-socket ones (`unix`), which only kernels
/// 6.7+ can have: their absence is reported, but only fails doctor when the config requires
/// them (`capture.unix.required`).
fn programs_load() -> (Result<String, String>, Result<String, String>) {
    if !nix::unistd::geteuid().is_root() {
        let unix = crate::capture::unix::probe()
            .map(|()| "the kernel has the Unix-socket hooks (loading them needs root)".to_owned())
            .map_err(|e| e.to_string());
        return (Err("skipped: needs root".to_owned()), unix);
    }
    match crate::capture::programs::Programs::load(None) {
        Ok(programs) => (
            Ok("the embedded programs pass the verifier".to_owned()),
            programs
                .unix_status()
                .map(|()| {
                    "connect() and sendmsg() to denied Unix sockets are refused (Linux 6.7+ hooks loaded)"
                        .to_owned()
                })
                .map_err(|e| e.to_string()),
        ),
        Err(e) => (
            Err(e.to_string()),
            Err("not checked: the TCP programs did not load".to_owned()),
        ),
    }
}

const FIX_JOURNAL_DIR: &str = "create the directory or set [journal] path";
const FIX_JOURNAL_FULL: &str = "free space on that filesystem or move [journal] path: while the \
    journal cannot be written, every command is refused";
const FIX_JOURNAL_READ_ONLY: &str = "make the journal and its -wal/-shm files writable by root: \
    check `lsattr` (chattr -i), their permissions and a read-only mount";
const FIX_JOURNAL_IO: &str = "the journal's files could not be written: check `dmesg`, free \
    space, and `lsattr` (chattr -i) on the journal and its -wal/-shm files";
const FIX_JOURNAL_LOCKED: &str = "another process holds the journal's write lock: find it with \
    `fuser -v` on the journal file (a sqlite3 shell left in a transaction?) and end it";
const FIX_JOURNAL_CORRUPT: &str = "move the journal and its -wal/-shm files aside (keep them as \
    evidence); the gateway then starts a new one (docs/journal.md)";
const FIX_JOURNAL_NEWER: &str = "this journal was written by a newer interceptor: upgrade this one";
const FIX_CHAIN: &str = "run `interceptor journal verify` for every finding and keep a copy of \
    the file as evidence; a chain cannot be repaired: start a new journal for a clean one \
    (docs/journal.md)";

/// Below this much free space the journal is about to fail: report it before it does.
const JOURNAL_MIN_FREE: u64 = 1 << 20;

pub fn ok(name: impl Into<String>, detail: String) -> Check {
    check(name, Ok(detail), "")
}

pub fn fail(name: impl Into<String>, detail: String, fix: &'static str) -> Check {
    check(name, Err(detail), fix)
}

/// The fix for a journal that failed to open or to take a write, by SQLite's error code.
fn journal_fix(error: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode as C;
    match error.sqlite_error_code() {
        Some(C::ReadOnly | C::PermissionDenied | C::CannotOpen) => FIX_JOURNAL_READ_ONLY,
        Some(C::DatabaseBusy | C::DatabaseLocked) => FIX_JOURNAL_LOCKED,
        Some(C::DatabaseCorrupt | C::NotADatabase) => FIX_JOURNAL_CORRUPT,
        Some(C::DiskFull) => FIX_JOURNAL_FULL,
        _ => FIX_JOURNAL_IO,
    }
}

// `fsblkcnt_t` and `c_ulong` are not 64 bits everywhere.
#[allow(clippy::useless_conversion)]
fn free_space(dir: &Path) -> Result<u64, String> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// Takes the write lock and writes a row, then rolls back: what every commit will need.
fn probe_write(conn: &rusqlite::Connection) -> Result<(), rusqlite::Error> {
    if conn.is_readonly(rusqlite::DatabaseName::Main)? {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("the journal file opens read-only".to_owned()),
        ));
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT OR REPLACE INTO journal_meta (key, value) VALUES ('doctor_probe', ?1)",
        [crate::journal::now_rfc3339()],
    )?;
    tx.rollback()
}

/// The journal as the daemon will use it: room on its filesystem; it opens and migrates; it
/// takes the write lock and a write (`journal`); and its hash chain verifies (`chain`).
fn journal(config: &Config) -> Vec<Check> {
    let path = &config.journal.path;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    match free_space(existing) {
        Ok(free) if free < JOURNAL_MIN_FREE => {
            return vec![fail(
                "journal",
                format!(
                    "{}: only {free} bytes free on its filesystem ({})",
                    path.display(),
                    existing.display()
                ),
                FIX_JOURNAL_FULL,
            )]
        }
        Ok(_) => {}
        Err(e) => return vec![fail("journal", e, FIX_JOURNAL_DIR)],
    }
    if !path.exists() {
        return vec![
            if nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).is_ok() {
                ok(
                    "journal",
                    format!(
                        "{} (not created yet; {} is writable)",
                        path.display(),
                        existing.display()
                    ),
                )
            } else {
                fail(
                    "journal",
                    format!("{} is not writable", existing.display()),
                    FIX_JOURNAL_DIR,
                )
            },
        ];
    }
    let conn = match crate::journal::open_connection_with(path, config.journal.sync) {
        Ok(conn) => conn,
        Err(e) => {
            let fix = match &e {
                JournalError::Open { source, .. } => journal_fix(source),
                JournalError::Query(source) => journal_fix(source),
                JournalError::TooNew { .. } => FIX_JOURNAL_NEWER,
                JournalError::Directory { .. } => FIX_JOURNAL_DIR,
                _ => FIX_JOURNAL_IO,
            };
            return vec![fail("journal", e.to_string(), fix)];
        }
    };
    if let Err(e) = probe_write(&conn) {
        return vec![fail(
            "journal",
            format!("{}: cannot write: {e}", path.display()),
            journal_fix(&e),
        )];
    }
    let sync = match config.journal.sync {
        JournalSync::Normal => "normal",
        JournalSync::Full => "full",
    };
    let journal = ok(
        "journal",
        format!("{} (writable, sync = {sync})", path.display()),
    );
    let chain = match crate::journal::verify::verify_connection(&conn) {
        Ok(report) if report.ok => ok(
            "chain",
            format!(
                "{} events intact{}",
                report.events,
                report
                    .last_seq
                    .map(|s| format!(", last seq {s}"))
                    .unwrap_or_default()
            ),
        ),
        Ok(report) => fail(
            "chain",
            format!(
                "{} problem(s); the first: {}",
                report.findings.len(),
                report
                    .findings
                    .first()
                    .map(|f| f.to_string())
                    .unwrap_or_default()
            ),
            FIX_CHAIN,
        ),
        Err(e) => fail("chain", e.to_string(), FIX_JOURNAL_CORRUPT),
    };
    vec![journal, chain]
}

pub fn run_checks(config: &Config) -> Vec<Check> {
    let (ebpf, unix) = programs_load();
    let mut unix = check("unix", unix, crate::capture::unix::FIX_UNAVAILABLE);
    // A missing Unix-socket capture only fails when `exec` and `run` refuse to start without it.
    unix.essential = config.capture.unix.required;
    vec![
        check("kernel", kernel(), "upgrade to Linux 5.14 or newer"),
        check("btf", btf(), "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        check(
            "cgroup v2",
            cgroup_v2(),
            "mount it: mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd.unified_cgroup_hierarchy=1)",
        ),
        check("bpffs", bpffs(config), "mount -t bpf bpf /sys/fs/bpf on the host (systemd: sys-fs-bpf.mount; or /etc/fstab)"),
        check("privileges", privileges(), "run as root (sudo), or as the interceptor service"),
        check("unit caps", unit_capabilities(), "add the missing capabilities to CapabilityBoundingSet= (`systemctl edit interceptor`), or re-run `interceptor install`"),
        check("ebpf", ebpf, "check `dmesg` and the kernel's BPF support (CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF)"),
        unix,
    ]
    .into_iter()
    // A policy or secret file the config names that is missing would stop the service.
    .chain(config_check::files(config))
    .chain(journal(config))
    .collect()
}

/// Prints one line per check (and the fix under each problem); returns whether no essential
/// check failed.
pub fn print(checks: &[Check]) -> bool {
    for c in checks {
        let status = match (c.ok, c.essential) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        println!("{status} {:<11} {}", c.name, c.detail);
        if !c.ok && !c.fix.is_empty() {
            println!("     {:<11} fix: {}", "", c.fix);
        }
    }
    !checks.iter().any(Check::is_failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalConfig;

    fn config(path: &Path) -> Config {
        Config {
            journal: JournalConfig {
                path: path.to_owned(),
                ..JournalConfig::default()
            },
            ..Config::default()
        }
    }

    fn outcome(checks: &[Check]) -> Vec<(&str, bool, &'static str)> {
        checks
            .iter()
            .map(|c| (c.name.as_str(), c.ok, c.fix))
            .collect()
    }

    #[test]
    fn unit_capabilities_follow_systemds_reading_of_the_bounding_set() {
        let unit = Path::new("/u");
        let shipped = [crate::install::UNIT.to_owned()];
        assert!(missing_capabilities(&shipped, unit).is_ok());
        let dropped = [
            crate::install::UNIT.to_owned(),
            "[Service]\nCapabilityBoundingSet=~CAP_BPF CAP_PERFMON\n".to_owned(),
        ];
        let e = missing_capabilities(&dropped, unit).expect_err("lacks");
        assert!(e.contains("lacks CAP_BPF CAP_PERFMON"), "{e}");
        let reset = [
            "CapabilityBoundingSet=CAP_CHOWN\n".to_owned(),
            "CapabilityBoundingSet=\n".to_owned(),
        ];
        assert!(missing_capabilities(&reset, unit).is_ok());
    }

    #[tokio::test]
    async fn journal_checks_name_the_problem_and_its_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.db");
        let checks = journal(&config(&path));
        assert_eq!(outcome(&checks), [("journal", true, "")]);
        assert!(
            checks[0].detail.contains("not created yet"),
            "{}",
            checks[0].detail
        );

        let writer = crate::journal::Journal::open(&path).expect("open");
        writer
            .event(crate::journal::Event::note(
                None,
                "note",
                serde_json::json!({}),
            ))
            .await
            .expect("event");
        writer.flush().await.expect("flush");
        let checks = journal(&config(&path));
        assert_eq!(
            outcome(&checks),
            [("journal", true, ""), ("chain", true, "")]
        );
        assert!(
            checks[1].detail.contains("1 events intact"),
            "{}",
            checks[1].detail
        );

        rusqlite::Connection::open(&path)
            .expect("side")
            .execute("UPDATE events SET kind = 'other'", [])
            .expect("tamper");
        let checks = journal(&config(&path));
        assert_eq!(
            outcome(&checks),
            [("journal", true, ""), ("chain", false, FIX_CHAIN)]
        );
        assert!(
            checks[1].detail.contains("seq 1 (other): content edited"),
            "{}",
            checks[1].detail
        );
        drop(writer);

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x5a; 8192]).expect("garbage");
        let checks = journal(&config(&garbage));
        assert_eq!(outcome(&checks), [("journal", false, FIX_JOURNAL_CORRUPT)]);
    }
}
