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
    config::{Config, JournalSync},
    journal::JournalError,
};

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

fn ok(name: &'static str, detail: String) -> Check {
    check(name, Ok(detail), "")
}

fn fail(name: &'static str, detail: String, fix: &'static str) -> Check {
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
        check("ebpf", ebpf, "check `dmesg` and the kernel's BPF support (CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF)"),
        check("unix", unix, crate::capture::unix::FIX_UNAVAILABLE),
    ]
    .into_iter()
    .chain(journal(config))
    .collect()
}

/// Prints the report; returns whether everything needed passed. A missing Unix-socket
/// capture is only a warning, unless `capture.unix.required` makes `exec` and `run` refuse
/// to start without it.
pub fn report(config: &Config) -> bool {
    let mut healthy = true;
    for c in run_checks(config) {
        let essential = match c.name {
            "unix" => config.capture.unix.required,
            _ => true,
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JournalConfig;

    fn config(path: &Path) -> Config {
        Config {
            journal: JournalConfig {
                path: path.to_owned(),
                ..JournalConfig::default()
            },
            ..Config::default()
        }
    }

    fn outcome(checks: &[Check]) -> Vec<(&'static str, bool, &'static str)> {
        checks.iter().map(|c| (c.name, c.ok, c.fix)).collect()
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
