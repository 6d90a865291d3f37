//! The daemon's diagnostics reach log collectors with their fields intact: JSON lines when
//! asked, and native journald entries when stderr is the journal (how systemd runs the unit).

use std::{
    io::Read as _,
    os::unix::{
        fs::MetadataExt as _,
        net::{UnixDatagram, UnixStream},
    },
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use interceptor_tests::*;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

#[test]
fn json_lines_carry_the_structured_fields() {
    require_root!();
    let cfg = TempConfig::new("");
    let mut cmd = exec_cmd(&cfg, None, &["/bin/true"]);
    cmd.env("RUST_LOG", "info")
        .env("INTERCEPTOR_LOG_FORMAT", "json");
    let out = run_command(cmd, Duration::from_secs(60));
    assert!(out.success(), "{}", out.describe());
    let lines: Vec<Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let attached = lines
        .iter()
        .find(|v| v["fields"]["message"] == json!("capture attached; starting command"))
        .unwrap_or_else(|| panic!("no capture line in {}", out.describe()));
    assert_eq!(attached["level"], json!("INFO"), "{}", pretty(attached));
    assert!(
        attached["fields"]["run_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("run-"),
        "{}",
        pretty(attached)
    );
}

/// systemd hands the unit a stderr stream and names it in `JOURNAL_STREAM`; the daemon then
/// writes native entries to the journal socket. Where no journald runs (this machine kind), the
/// test listens on the socket path itself and removes it afterwards.
#[test]
fn under_systemd_entries_go_to_journald_with_fields() {
    require_root!();
    if Path::new(JOURNAL_SOCKET).exists() {
        with_real_journald();
    } else {
        with_listening_socket();
    }
}

fn journal_stream_env(stderr: &UnixStream) -> String {
    let meta = std::fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(stderr)
    ))
    .expect("stat the stream");
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Runs `exec -- /bin/true` with stderr on a socket named by `JOURNAL_STREAM`; returns what
/// reached that stream (nothing is expected: entries go to the journal socket instead).
fn run_as_if_under_systemd(cfg: &TempConfig) -> String {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let stream = journal_stream_env(&theirs);
    let mut cmd = exec_cmd(cfg, None, &["/bin/true"]);
    cmd.env("RUST_LOG", "info")
        .env_remove("INTERCEPTOR_LOG_FORMAT")
        .env("JOURNAL_STREAM", stream)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::os::fd::OwnedFd::from(theirs)));
    let mut child = cmd.spawn().expect("spawn interceptor exec");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("interceptor exec did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(cmd);
    let mut text = String::new();
    ours.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut ours = ours;
    let _ = ours.read_to_string(&mut text);
    assert!(status.success(), "exec failed: {status}; stderr: {text}");
    text
}

fn with_listening_socket() {
    struct Cleanup(Vec<std::path::PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
            }
        }
    }
    // Remember which directories we create, deepest first, so only they are removed.
    let mut created = Vec::new();
    for dir in ["/run/systemd", "/run/systemd/journal"] {
        if !Path::new(dir).exists() {
            std::fs::create_dir(dir).expect("create journal dir");
            created.insert(0, dir.into());
        }
    }
    let listener = UnixDatagram::bind(JOURNAL_SOCKET).expect("bind the journal socket");
    created.insert(0, JOURNAL_SOCKET.into());
    let _cleanup = Cleanup(created);
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");

    let cfg = TempConfig::new("");
    let stderr = run_as_if_under_systemd(&cfg);
    assert!(
        !stderr.contains("capture attached"),
        "entries went to stderr instead of the journal: {stderr}"
    );
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = listener.recv(&mut buf) {
        entries.push(parse_entry(&buf[..n]));
    }
    let entry = entries
        .iter()
        .find(|e| {
            e.get("MESSAGE").map(String::as_str) == Some("capture attached; starting command")
        })
        .unwrap_or_else(|| panic!("no capture entry among {entries:#?}"));
    let field = |k: &str| entry.get(k).cloned().unwrap_or_default();
    assert_eq!(field("SYSLOG_IDENTIFIER"), "interceptor", "{entry:#?}");
    assert_eq!(
        field("PRIORITY"),
        "6",
        "info is syslog informational: {entry:#?}"
    );
    assert!(
        field("INTERCEPTOR_RUN_ID").starts_with("run-"),
        "the run id is its own field: {entry:#?}"
    );
}

/// One datagram of journald's native protocol: `KEY=value\n`, or, for values that may hold a
/// newline, `KEY\n` + the value's length (u64 little-endian) + the value + `\n`.
fn parse_entry(mut b: &[u8]) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    while !b.is_empty() {
        let Some(nl) = b.iter().position(|&c| c == b'\n') else {
            panic!(
                "unterminated journal field: {:?}",
                String::from_utf8_lossy(b)
            );
        };
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            out.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            b = &b[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &b[nl + 1..];
            assert!(rest.len() >= 8, "truncated journal field {key}");
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            assert!(rest.len() > 8 + len, "truncated journal field {key}");
            out.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            b = &rest[8 + len + 1..];
        }
    }
    out
}

fn with_real_journald() {
    let cfg = TempConfig::new("");
    let stderr = run_as_if_under_systemd(&cfg);
    assert!(!stderr.contains("capture attached"), "{stderr}");
    let out = run_command(
        {
            let mut c = std::process::Command::new("journalctl");
            c.args([
                "-t",
                "interceptor",
                "--since",
                "-2min",
                "-o",
                "json",
                "--no-pager",
            ]);
            c
        },
        Duration::from_secs(30),
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("capture attached") && l.contains("INTERCEPTOR_RUN_ID")),
        "{}",
        out.describe()
    );
}
