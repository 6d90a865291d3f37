//! Shared harness for the interceptor integration tests (modeled after aya's
//! `test/integration-test`): every test drives the real `interceptor` binary as a black box,
//! as root, against servers on loopback only.
//!
//! Rules the helpers enforce or make easy:
//! - Only loopback addresses (127.0.0.0/8, ::1). 127.0.0.2, 127.0.0.3 … play remote hosts.
//! - Everything a test creates (temp dirs, processes, cgroups, bpffs pins) is owned by a guard
//!   whose `Drop` cleans it up, so a failing assertion leaves nothing behind.
//! - Every spawned process runs in its own process group and under a timeout.
//! - `require_root!()`: without root (or cgroup v2) a test prints a skip note and returns, but
//!   with `CI=true` it fails instead: CI must never report a green run that tested nothing.
//!
//! Run: `cargo test -p interceptor-tests -- --test-threads=1` (as root).

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::{Pid, User},
};
pub use serde_json::{json, Value};

pub mod mysql;
pub mod nspawn;
pub mod pg;
pub mod sshd;
pub use pg::*;

/// System python: readable and executable by unprivileged users (`--user nobody`).
pub const PYTHON: &str = "/usr/bin/python3";

/// Default bound for one `interceptor exec` run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the service daemon may take to log `capture ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Environment checks
// ---------------------------------------------------------------------------------------------

/// Whether `name` is an executable on PATH.
pub fn has_program(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// True when running under CI (`CI=true`), where missing privileges are failures, not skips.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .ok()
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("true") | Some("1") | Some("yes")
    )
}

/// Checks that this process can run the eBPF tests: effective uid 0 and a cgroup v2 mount.
/// Returns `false` (after printing a skip note) when it can't; panics instead under `CI=true`.
pub fn require_root() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (effective uid 0)".to_owned());
    }
    if cgroup2_mounts().is_empty() {
        missing.push("a mounted cgroup v2 hierarchy".to_owned());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "this test needs {}; run `sudo -E cargo test -p interceptor-tests -- --test-threads=1`",
        missing.join(" and ")
    );
    if in_ci() {
        panic!("CI=true: {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// `require_root!();` at the top of a test: returns early (skip) when not root, fails under CI.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::require_root() {
            return;
        }
    };
}

/// Checks that the kernel has the Unix-socket hooks (`BPF_CGROUP_UNIX_CONNECT`, Linux 6.7+) and
/// that the binary under test loads them, as `interceptor doctor` reports. Call after
/// [`require_root`]. Returns `false` (after a skip note) when they are missing; panics under
/// `CI=true`, where a test that could not test its subject must fail.
pub fn require_unix_hook() -> bool {
    let out = run_command(
        {
            let mut cmd = interceptor_cmd(None);
            cmd.args(["--config", "/dev/null", "doctor"]);
            cmd
        },
        Duration::from_secs(60),
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("unix"))
        .unwrap_or_default()
        .to_owned();
    if line.starts_with("ok") {
        return true;
    }
    let msg = format!(
        "this test needs Unix-socket capture (Linux 6.7+); `interceptor doctor` says: {}",
        if line.is_empty() {
            out.describe()
        } else {
            line
        }
    );
    if in_ci() {
        panic!("CI=true: {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// `require_unix_hook!();` after `require_root!();`: returns early (skip) without the
/// Unix-socket hooks, fails under CI.
#[macro_export]
macro_rules! require_unix_hook {
    () => {
        if !$crate::require_unix_hook() {
            return;
        }
    };
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// The binary under test: `$INTERCEPTOR_BIN`, else `<workspace>/target/debug/interceptor`.
pub fn interceptor_bin() -> PathBuf {
    let path = match std::env::var_os("INTERCEPTOR_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/debug/interceptor"),
    };
    assert!(
        path.is_file(),
        "interceptor binary not found at {} — build it first (`cargo build -p interceptor`) \
         or point INTERCEPTOR_BIN at it",
        path.display()
    );
    path
}

/// Mount points of every cgroup2 filesystem, in /proc/mounts order.
pub fn cgroup2_mounts() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .collect()
}

/// The cgroup v2 mount point (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> PathBuf {
    cgroup2_mounts()
        .into_iter()
        .next()
        .expect("no cgroup2 filesystem in /proc/mounts")
}

fn unescape_mount_path(s: &str) -> String {
    // /proc/mounts escapes space, tab, newline and backslash as \ooo.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The user `exec` runs the command as when `--user` is not given: `$SUDO_USER`, else the caller.
/// Returns (uid, name).
pub fn default_exec_user() -> (u32, String) {
    if let Ok(name) = std::env::var("SUDO_USER") {
        if !name.is_empty() {
            if let Ok(Some(user)) = User::from_name(&name) {
                return (user.uid.as_raw(), user.name);
            }
        }
    }
    let uid = nix::unistd::getuid();
    let name = User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    (uid.as_raw(), name)
}

/// A unique-per-process-and-call suffix for names (cgroups, pin dirs).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A TCP port free on both 127.0.0.1 and [::1] (for the service proxy's `[proxy] port`).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = v4.local_addr().unwrap().port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and [::1]");
}

// ---------------------------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------------------------

/// A temp directory holding `config.toml` and the journal path it names. Removed on drop.
/// The directory is world-readable so unprivileged runs (`setpriv`, `--user`) can read the config.
pub struct TempConfig {
    dir: tempfile::TempDir,
    pub path: PathBuf,
    pub journal: PathBuf,
}

impl TempConfig {
    /// `[journal] path = "<dir>/journal.db"` followed by `extra` (more TOML tables).
    pub fn new(extra: &str) -> Self {
        let cfg = Self::empty();
        let text = format!("{}\n{extra}", cfg.journal_section());
        cfg.write(&text);
        cfg
    }

    /// A config whose text is exactly `text` (for malformed-config tests). `{journal}` in the
    /// text is replaced by the journal path.
    pub fn raw(text: &str) -> Self {
        let cfg = Self::empty();
        cfg.write(&text.replace("{journal}", &cfg.journal.display().to_string()));
        cfg
    }

    fn empty() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("interceptor-test-")
            .tempdir()
            .expect("create temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        let path = dir.path().join("config.toml");
        let journal = dir.path().join("journal.db");
        TempConfig { dir, path, journal }
    }

    /// The `[journal]` table naming this config's journal.
    pub fn journal_section(&self) -> String {
        format!("[journal]\npath = \"{}\"\n", self.journal.display())
    }

    /// Replaces the config file's text.
    pub fn write(&self, text: &str) {
        fs::write(&self.path, text).expect("write config");
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o644)).expect("chmod config");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// What a finished process left: exit status and everything it printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The process did not exit within its timeout and was SIGKILLed.
    pub timed_out: bool,
    pub command: String,
}

impl Output {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// A multi-line description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            if self.timed_out {
                " (TIMED OUT, killed)"
            } else {
                ""
            },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// The last stdout line that parses as a JSON object (what the Python clients `report`).
    pub fn json(&self) -> Value {
        self.try_json()
            .unwrap_or_else(|| panic!("no JSON object line on stdout\n{}", self.describe()))
    }

    pub fn try_json(&self) -> Option<Value> {
        self.stdout
            .lines()
            .rev()
            .filter(|l| l.trim_start().starts_with('{'))
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
    }
}

/// A spawned process in its own process group, with stdout and stderr captured line by line.
/// Dropping it SIGKILLs the whole process group (if still running) and reaps it.
pub struct Spawned {
    child: Child,
    reaped: Option<ExitStatus>,
    pub command: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    stdout_lines: mpsc::Receiver<String>,
    stderr_lines: mpsc::Receiver<String>,
    readers: Vec<JoinHandle<()>>,
    /// Label for echoing output when a test panics (e.g. "daemon").
    label: String,
}

fn describe_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(char::is_whitespace) || a.is_empty() {
            let short: String = a.chars().take(60).collect();
            format!("{short:?}{}", if a.chars().count() > 60 { "…" } else { "" })
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

fn spawn_reader<R: Read + Send + 'static>(
    stream: R,
    buf: Arc<Mutex<String>>,
    tx: mpsc::Sender<String>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    buf.lock().unwrap().push_str(&text);
                    let _ = tx.send(text.trim_end_matches('\n').to_owned());
                }
            }
        }
    })
}

impl Spawned {
    /// Spawns `cmd` (stdin null unless `with_stdin`) in a new process group.
    pub fn spawn(mut cmd: Command, label: &str, with_stdin: bool) -> Spawned {
        let command = describe_command(&cmd);
        cmd.stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out_tx, stdout_lines) = mpsc::channel();
        let (err_tx, stderr_lines) = mpsc::channel();
        let readers = vec![
            spawn_reader(child.stdout.take().unwrap(), stdout.clone(), out_tx),
            spawn_reader(child.stderr.take().unwrap(), stderr.clone(), err_tx),
        ];
        Spawned {
            child,
            reaped: None,
            command,
            stdout,
            stderr,
            stdout_lines,
            stderr_lines,
            readers,
            label: label.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("spawned without stdin")
    }

    /// Closes our end of the child's stdin.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    pub fn stdout_so_far(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Exit status if it has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped = Some(st);
            }
        }
        self.reaped
    }

    /// Waits for a stdout (or stderr) line satisfying `pred`. Returns it, or `None` on timeout or
    /// when the process exits first.
    pub fn wait_line(
        &mut self,
        on_stderr: bool,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let rx = if on_stderr {
                &self.stderr_lines
            } else {
                &self.stdout_lines
            };
            match rx.recv_timeout((deadline - now).min(Duration::from_millis(100))) {
                Ok(line) if pred(&line) => return Some(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.try_status().is_some() {
                        // Drain what the readers still have, then give up.
                        let rx = if on_stderr {
                            &self.stderr_lines
                        } else {
                            &self.stdout_lines
                        };
                        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
                            if pred(&line) {
                                return Some(line);
                            }
                        }
                        return None;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Stream closed: process is exiting.
                    let _ = self.wait_exit(Duration::from_secs(5));
                    return None;
                }
            }
        }
    }

    /// The next stdout line that parses as a JSON object, within `timeout`.
    pub fn wait_json_line(&mut self, timeout: Duration) -> Option<Value> {
        self.wait_line(false, timeout, |l| {
            l.trim_start().starts_with('{') && serde_json::from_str::<Value>(l).is_ok()
        })
        .map(|l| serde_json::from_str(&l).unwrap())
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the process group (only while the leader is unreaped, so the pgid is ours).
    pub fn kill_group(&mut self) {
        if self.try_status().is_none() {
            let pgid = Pid::from_raw(self.child.id() as i32);
            let _ = kill(Pid::from_raw(-pgid.as_raw()), Signal::SIGKILL);
            let _ = kill(pgid, Signal::SIGKILL);
            if let Ok(st) = self.child.wait() {
                self.reaped = Some(st);
            }
        }
    }

    /// Sends `sig` to the process itself (not the group).
    pub fn signal(&mut self, sig: Signal) {
        if self.try_status().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
        }
    }

    /// Waits up to `timeout` for exit (SIGKILLing the group past it) and returns the output.
    pub fn wait(mut self, timeout: Duration) -> Output {
        self.close_stdin();
        let timed_out = self.wait_exit(timeout).is_none();
        if timed_out {
            self.kill_group();
        }
        let status = self.reaped.expect("reaped");
        // Readers end at EOF; a leaked grandchild could hold the pipes, so don't wait forever.
        let deadline = Instant::now() + Duration::from_secs(5);
        for handle in std::mem::take(&mut self.readers) {
            while !handle.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
        Output {
            status,
            stdout: self.stdout_so_far(),
            stderr: self.stderr_so_far(),
            timed_out,
            command: self.command.clone(),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill_group();
        if thread::panicking() && !self.label.is_empty() {
            eprintln!(
                "--- {} ({}) stderr ---\n{}\n--- {} stdout ---\n{}",
                self.label,
                self.command,
                self.stderr_so_far().trim_end(),
                self.label,
                self.stdout_so_far().trim_end()
            );
        }
    }
}

/// Runs `cmd` to completion (own process group, stdin null) with a timeout.
pub fn run_command(cmd: Command, timeout: Duration) -> Output {
    Spawned::spawn(cmd, "", false).wait(timeout)
}

/// `interceptor [--config CFG]` as a Command (cwd `/`, so unprivileged children can stat it).
pub fn interceptor_cmd(cfg: Option<&TempConfig>) -> Command {
    let mut cmd = Command::new(interceptor_bin());
    cmd.current_dir("/");
    if let Some(cfg) = cfg {
        cmd.arg("--config").arg(&cfg.path);
    }
    cmd
}

/// `interceptor --config CFG exec [--user USER] -- ARGS…` as a Command.
pub fn exec_cmd<S: AsRef<std::ffi::OsStr>>(
    cfg: &TempConfig,
    user: Option<&str>,
    args: &[S],
) -> Command {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("exec");
    if let Some(user) = user {
        cmd.arg("--user").arg(user);
    }
    cmd.arg("--");
    cmd.args(args);
    cmd
}

/// Runs `interceptor exec` to completion within [`EXEC_TIMEOUT`].
pub fn run_exec<S: AsRef<std::ffi::OsStr>>(
    cfg: &TempConfig,
    user: Option<&str>,
    args: &[S],
) -> Output {
    run_exec_timeout(cfg, user, args, EXEC_TIMEOUT)
}

pub fn run_exec_timeout<S: AsRef<std::ffi::OsStr>>(
    cfg: &TempConfig,
    user: Option<&str>,
    args: &[S],
    timeout: Duration,
) -> Output {
    run_command(exec_cmd(cfg, user, args), timeout)
}

// ---------------------------------------------------------------------------------------------
// Python clients
// ---------------------------------------------------------------------------------------------

/// Helpers prepended to every Python client. Parameters reach the client as `sys.argv[1:]`.
///
/// - `payload(n, seed)`: deterministic pseudo-random bytes.
/// - `echo_once(family, addr, data)`: connect, send, read back exactly `len(data)` bytes, close;
///   returns {peer, local, echoed, got_len}.
/// - `report(**kw)`: prints one JSON line with kw plus pid, uid, run_id (INTERCEPTOR_RUN_ID), exe.
pub const PY_PRELUDE: &str = r#"
import json, os, socket, sys, random
def payload(n, seed):
    return random.Random(seed).randbytes(n)
def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(65536, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)
def echo_once(family, addr, data, timeout=20):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(addr)
        peer = s.getpeername()
        local = s.getsockname()
        s.sendall(data)
        got = recv_exact(s, len(data))
    finally:
        s.close()
    return {"peer": [peer[0], peer[1]], "local": [local[0], local[1]],
            "echoed": got == data, "got_len": len(got)}
def report(**kw):
    kw.update(pid=os.getpid(), uid=os.getuid(),
              run_id=os.environ.get("INTERCEPTOR_RUN_ID"),
              exe=os.path.realpath(sys.executable))
    print(json.dumps(kw), flush=True)
"#;

/// `["/usr/bin/python3", "-c", PRELUDE + code, args…]`.
pub fn python(code: &str, args: &[String]) -> Vec<String> {
    python_argv_with(PYTHON, code, args)
}

/// `[interpreter, "-c", PRELUDE + code, args…]` (e.g. the venv's python, see [`venv_python`]).
pub fn python_argv_with(interpreter: &str, code: &str, args: &[String]) -> Vec<String> {
    let mut v = vec![
        interpreter.to_owned(),
        "-c".to_owned(),
        format!("{PY_PRELUDE}\n{code}"),
    ];
    v.extend(args.iter().cloned());
    v
}

/// Runs a Python client directly (outside any capture) to completion.
pub fn run_python(code: &str, args: &[String], timeout: Duration) -> Output {
    let argv = python(code, args);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).current_dir("/");
    run_command(cmd, timeout)
}

/// Runs a Python client under `interceptor exec` to completion.
pub fn run_python_exec(
    cfg: &TempConfig,
    user: Option<&str>,
    code: &str,
    args: &[String],
    timeout: Duration,
) -> Output {
    run_exec_timeout(cfg, user, &python(code, args), timeout)
}

/// Runs a Python client moved into `cgroup` first (`echo $$ > cgroup.procs && exec python3 …`).
pub fn run_python_in_cgroup(
    cgroup: &CgroupDir,
    code: &str,
    args: &[String],
    timeout: Duration,
) -> Output {
    run_in_cgroup(cgroup, &python(code, args), timeout)
}

/// Runs `argv` as a process that first moves itself into `cgroup` (as a service's agent would
/// be), to completion.
pub fn run_in_cgroup<S: AsRef<std::ffi::OsStr>>(
    cgroup: &CgroupDir,
    argv: &[S],
    timeout: Duration,
) -> Output {
    run_command(in_cgroup(cgroup, argv), timeout)
}

/// A command that first moves itself into `cgroup`, then execs `argv` (to run, or spawn in
/// the background).
pub fn in_cgroup<S: AsRef<std::ffi::OsStr>>(cgroup: &CgroupDir, argv: &[S]) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.current_dir("/")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(cgroup.path())
        .args(argv);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Journal
// ---------------------------------------------------------------------------------------------

/// `interceptor --config CFG sessions list --json [--run RUN]`, parsed. Panics on failure.
pub fn try_sessions(cfg: &TempConfig, run: Option<&str>) -> Result<Vec<Value>, Output> {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(["sessions", "list", "--json"]);
    if let Some(run) = run {
        cmd.args(["--run", run]);
    }
    let out = run_command(cmd, Duration::from_secs(30));
    if !out.success() {
        return Err(out);
    }
    match serde_json::from_str::<Value>(out.stdout.trim()) {
        Ok(Value::Array(rows)) => Ok(rows),
        _ => Err(out),
    }
}

/// All sessions in the journal.
pub fn sessions(cfg: &TempConfig) -> Vec<Value> {
    try_sessions(cfg, None)
        .unwrap_or_else(|out| panic!("sessions list --json failed\n{}", out.describe()))
}

/// Sessions of one exec run (`--run RUN`; also filtered here by the `run_id` field).
pub fn sessions_for_run(cfg: &TempConfig, run_id: &str) -> Vec<Value> {
    try_sessions(cfg, Some(run_id))
        .unwrap_or_else(|out| panic!("sessions list --json --run failed\n{}", out.describe()))
        .into_iter()
        .filter(|s| s["run_id"].as_str() == Some(run_id))
        .collect()
}

/// Polls the journal until `pred(rows)` holds or `timeout` passes; returns the last rows read
/// (the caller asserts on them, so a timeout shows up as a precise assertion failure).
pub fn wait_sessions(
    cfg: &TempConfig,
    run: Option<&str>,
    timeout: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        match try_sessions(cfg, run) {
            Ok(rows) => {
                let rows: Vec<Value> = rows
                    .into_iter()
                    .filter(|s| run.is_none() || s["run_id"].as_str() == run)
                    .collect();
                if pred(&rows) || Instant::now() >= deadline {
                    return rows;
                }
            }
            Err(out) => {
                if Instant::now() >= deadline {
                    panic!("sessions list --json failed\n{}", out.describe());
                }
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// True when a session row is finished (has an outcome and an end time).
pub fn session_finished(s: &Value) -> bool {
    s["outcome"].is_string() && s["ended_at"].is_string()
}

/// `"127.0.0.2:7000"` / `"[::1]:7000"` for an (ip, port).
pub fn addr_str(ip: &str, port: u16) -> String {
    let ip: IpAddr = ip.parse().expect("ip");
    SocketAddr::new(ip, port).to_string()
}

/// Pretty JSON for assertion messages.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Pretty JSON of a list of rows.
pub fn pretty_rows(rows: &[Value]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Echo server
// ---------------------------------------------------------------------------------------------

struct EchoInner {
    stop: AtomicBool,
    accepted: AtomicUsize,
    peers: Mutex<Vec<SocketAddr>>,
    streams: Mutex<Vec<TcpStream>>,
}

/// A TCP echo server on a loopback address (port chosen by the kernel), one thread per
/// connection. Records every accepted connection's peer address. Stopped on drop.
pub struct EchoServer {
    addr: SocketAddr,
    inner: Arc<EchoInner>,
    acceptor: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// `ip` must be loopback: "127.0.0.2", "127.0.0.3", "::1", …
    pub fn start(ip: &str) -> EchoServer {
        let ip: IpAddr = ip.parse().expect("echo server ip");
        assert!(
            ip.is_loopback(),
            "tests only use loopback addresses, not {ip}"
        );
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("bind echo server on {ip}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(EchoInner {
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            peers: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
        });
        let inner2 = inner.clone();
        let acceptor = thread::spawn(move || {
            while !inner2.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        inner2.accepted.fetch_add(1, Ordering::SeqCst);
                        inner2.peers.lock().unwrap().push(peer);
                        let _ = stream.set_nonblocking(false);
                        if let Ok(clone) = stream.try_clone() {
                            inner2.streams.lock().unwrap().push(clone);
                        }
                        thread::spawn(move || echo_connection(stream));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        EchoServer {
            addr,
            inner,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Peer addresses of accepted connections, in accept order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.inner.peers.lock().unwrap().clone()
    }
}

fn echo_connection(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        for s in self.inner.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A Unix-socket echo server in its own world-searchable temp dir (socket mode 0777, so
/// unprivileged agents can connect), one thread per connection. Stopped and removed on drop.
pub struct UnixEchoServer {
    dir: tempfile::TempDir,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl UnixEchoServer {
    /// Listens at `<new temp dir>/<name>`.
    pub fn start(name: &str) -> UnixEchoServer {
        let dir = tempfile::Builder::new()
            .prefix("interceptor-unix-")
            .tempdir()
            .expect("unix echo temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let path = dir.path().join(name);
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).expect("chmod socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let acceptor = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        accepted2.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.set_nonblocking(false);
                        thread::spawn(move || {
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = stream.read(&mut buf) {
                                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        UnixEchoServer {
            dir,
            path,
            stop,
            accepted,
            acceptor: Some(acceptor),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's (world-searchable) directory, for more sockets or links beside it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for UnixEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Service daemon
// ---------------------------------------------------------------------------------------------

/// `interceptor --config CFG run`, started and waited on until it logs `capture ready`.
/// Dropping it SIGKILLs it (like a crash: pins stay; use [`PinDir`] to detach).
pub struct Daemon {
    proc: Spawned,
}

impl Daemon {
    pub fn start(cfg: &TempConfig) -> Daemon {
        let mut cmd = interceptor_cmd(Some(cfg));
        cmd.arg("run");
        let mut proc = Spawned::spawn(cmd, "daemon", false);
        let ready = proc.wait_line(true, READY_TIMEOUT, |l| l.contains("capture ready"));
        if ready.is_none() {
            let status = proc.try_status();
            proc.kill_group();
            panic!(
                "daemon did not log \"capture ready\" within {:?} (exit status: {:?})\n\
                 --- daemon stderr ---\n{}\n--- daemon stdout ---\n{}",
                READY_TIMEOUT,
                status,
                proc.stderr_so_far().trim_end(),
                proc.stdout_so_far().trim_end()
            );
        }
        Daemon { proc }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Exit status if the daemon died.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.proc.try_status()
    }

    /// SIGKILL (simulates a crash) and reap.
    pub fn kill(mut self) -> String {
        self.proc.kill_group();
        self.proc.stderr_so_far()
    }

    pub fn log(&self) -> String {
        self.proc.stderr_so_far()
    }
}

// ---------------------------------------------------------------------------------------------
// bpffs pins of the service
// ---------------------------------------------------------------------------------------------

/// A service config capturing `cgroup` with pins in `pins`. No `mode`: the service captures
/// every connection by default, so a destination no target or `intercept` names is relayed and
/// journaled too.
pub fn write_service_config(cfg: &TempConfig, cgroup: &CgroupDir, pins: &PinDir) {
    cfg.write(&format!(
        "{}\n[proxy]\nport = {}\n\n[capture]\ncgroups = [\"{}\"]\npin_dir = \"{}\"\n",
        cfg.journal_section(),
        free_port(),
        cgroup.relative(),
        pins.path.display()
    ));
}

/// The service's `pin_dir`. On drop: `interceptor --config CFG detach`, then `rm -rf pin_dir`.
pub struct PinDir {
    pub path: PathBuf,
    config: PathBuf,
}

impl PinDir {
    /// A fresh, not yet existing path under /sys/fs/bpf.
    pub fn new(cfg_path: &Path) -> PinDir {
        let path = PathBuf::from("/sys/fs/bpf").join(unique_name("interceptor-test"));
        let _ = fs::remove_dir_all(&path);
        PinDir {
            path,
            config: cfg_path.to_owned(),
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.config.exists() {
            let mut cmd = Command::new(
                std::env::var_os("INTERCEPTOR_BIN")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| workspace_root().join("target/debug/interceptor")),
            );
            cmd.current_dir("/")
                .arg("--config")
                .arg(&self.config)
                .arg("detach");
            let out = run_command(cmd, Duration::from_secs(30));
            if !out.success() {
                eprintln!(
                    "cleanup: detach failed (falling back to rm -rf)\n{}",
                    out.describe()
                );
            }
        }
        if self.path.exists() {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                eprintln!("cleanup: rm -rf {}: {e}", self.path.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cgroups
// ---------------------------------------------------------------------------------------------

/// A cgroup v2 directory made by a test. On drop its processes (and descendants') are killed
/// and the directories removed, deepest first.
pub struct CgroupDir {
    path: PathBuf,
    relative: String,
}

impl CgroupDir {
    /// `<cgroup2 mount>/<name>`; `name` is what `[capture] cgroups` lists.
    pub fn new(name: &str) -> CgroupDir {
        let root = cgroup2_root();
        let path = root.join(name);
        if path.exists() {
            cleanup_cgroup(&path);
        }
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("mkdir cgroup {}: {e}", path.display()));
        CgroupDir {
            path,
            relative: name.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path relative to the cgroup2 mount (for `[capture] cgroups`).
    pub fn relative(&self) -> &str {
        &self.relative
    }

    /// PIDs currently in this cgroup (not descendants).
    pub fn procs(&self) -> Vec<i32> {
        read_procs(&self.path)
    }
}

fn read_procs(cg: &Path) -> Vec<i32> {
    fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn subdirs(cg: &Path) -> Vec<PathBuf> {
    fs::read_dir(cg)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_cgroup_procs(cg: &Path) {
    for child in subdirs(cg) {
        kill_cgroup_procs(&child);
    }
    // cgroup.kill (5.14+) kills the whole subtree; fall back to per-pid SIGKILL.
    let _ = fs::write(cg.join("cgroup.kill"), "1");
    for pid in read_procs(cg) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn remove_cgroup_tree(cg: &Path) -> std::io::Result<()> {
    for child in subdirs(cg) {
        remove_cgroup_tree(&child)?;
    }
    fs::remove_dir(cg)
}

/// Kills everything in `cg` (recursively) and removes it, retrying for a few seconds.
pub fn cleanup_cgroup(cg: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        kill_cgroup_procs(cg);
        match remove_cgroup_tree(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                if Instant::now() >= deadline {
                    eprintln!("cleanup: cannot remove cgroup {}: {e}", cg.display());
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        cleanup_cgroup(&self.path);
    }
}

/// `interceptor --config CFG approvals ARGS…`.
/// Starts a stand-in server (an upstream for a test) and waits up to 20 s for it to print a
/// line holding `ready`.
pub fn spawn_ready(cmd: Command, label: &str) -> Spawned {
    let mut process = Spawned::spawn(cmd, label, false);
    assert!(
        process
            .wait_line(false, Duration::from_secs(20), |l| l.contains("ready"))
            .is_some(),
        "{label} did not start: {}",
        process.stderr_so_far()
    );
    process
}

/// The JSON lines a stand-in server logged (what reached it); unreadable lines are skipped.
pub fn json_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn approvals_cli(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("approvals").args(args);
    run_command(cmd, Duration::from_secs(30))
}

/// Waits (up to `timeout`) for a held command and returns the first one `approvals list
/// --json` shows.
pub fn first_pending(cfg: &TempConfig, timeout: Duration) -> Value {
    pending_where(cfg, timeout, |_| true)
}

/// The first held request `pick` accepts, waiting up to `timeout` for one.
pub fn pending_where(
    cfg: &TempConfig,
    timeout: Duration,
    mut pick: impl FnMut(&Value) -> bool,
) -> Value {
    eventually(timeout, "nothing held", || {
        let out = approvals_cli(cfg, &["list", "--json"]);
        let parsed: Option<Value> = serde_json::from_str(&out.stdout).ok();
        parsed
            .and_then(|v| v.as_array()?.iter().find(|a| pick(a)).cloned())
            .ok_or_else(|| out.describe())
    })
}

/// What `probe` finds, asking every 200 ms for up to `within`; then fails with `what` and
/// what the last probe saw instead (its `Err`).
pub fn eventually<T>(
    within: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(found) => return found,
            Err(seen) if Instant::now() >= deadline => panic!("{what}: {seen}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
