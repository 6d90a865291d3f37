//! Shipping journal events (`[[sink]]`): real clients under `interceptor exec` produce the
//! events (psycopg against the harness PostgreSQL, a plain TCP echo client), and each sink's
//! receiver is real or wire-exact: a separate rsyslogd with its own config for syslog, a small
//! HTTP/1.1 server here for Splunk HEC, and the files themselves for the file sink. Every test
//! compares what arrived with `interceptor journal export --format ocsf`, by `metadata.uid`
//! and content, and checks `ship status`.
//!
//! Loopback only; every receiver is stopped on drop, even when an assertion fails.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use interceptor_tests::*;

const RUN: Duration = Duration::from_secs(90);

/// A psycopg client: reads, a refused DROP (default policy), parameters (extended protocol),
/// text with a newline and non-ASCII, then an optional plain-TCP echo round trip.
const CLIENT: &str = r#"
import time, psycopg
from psycopg import errors
H, P = ARGS["host"], int(ARGS["port"])
n, pause = int(ARGS.get("n", 5)), float(ARGS.get("pause", 0))
dsn = conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)
res = {"denied": 0}
with psycopg.connect(dsn, autocommit=True) as conn:
    for i in range(n):
        conn.execute("SELECT %s::int + 1", (i,)).fetchone()
        conn.execute("SELECT count(*) FROM keep").fetchone()
        if pause:
            time.sleep(pause)
    conn.execute("SELECT 'é\nline two' AS text").fetchone()
    try:
        conn.execute("DROP TABLE keep")
    except errors.InsufficientPrivilege:
        res["denied"] += 1
if ARGS.get("echo"):
    h, p = ARGS["echo"].rsplit(":", 1)
    res["echo"] = echo_once(socket.AF_INET, (h, int(p)), payload(1000, 7))
report(**res)
"#;

fn default_policy_line() -> String {
    format!(
        "policy = \"{}\"\n",
        workspace_root().join("policies/default.toml").display()
    )
}

/// A PostgreSQL config (default policy) followed by `sinks`.
fn config_with_sinks(cfg: &TempConfig, pg: &PgServer, sinks: &str) -> String {
    format!(
        "{}\n{sinks}\n",
        pg_config_text(cfg, pg.port(), &default_policy_line())
    )
}

fn start_pg() -> PgServer {
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE keep (a int); INSERT INTO keep VALUES (1), (2); GRANT ALL ON keep TO agent",
    );
    pg
}

fn run_client(cfg: &TempConfig, pg: &PgServer, extra: Value) -> Value {
    let mut args = json!({ "host": pg_dial_host(), "port": pg.port() });
    if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            a.insert(k.clone(), v.clone());
        }
    }
    let out = run_venv_python_exec(cfg, None, CLIENT, &[args.to_string()], RUN);
    assert!(
        out.success(),
        "client under exec failed\n{}",
        out.describe()
    );
    let report = out.json();
    assert_eq!(report["denied"], 1, "{}", out.describe());
    report
}

/// `journal export --format ocsf`: the lines, in order.
fn export(cfg: &TempConfig) -> Vec<String> {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(["journal", "export", "--format", "ocsf"]);
    let out = run_command(cmd, Duration::from_secs(60));
    assert!(out.success(), "journal export failed\n{}", out.describe());
    out.stdout.lines().map(str::to_owned).collect()
}

fn uid_of(record: &Value) -> String {
    record["metadata"]["uid"]
        .as_str()
        .unwrap_or_else(|| panic!("record without metadata.uid: {record}"))
        .to_owned()
}

/// Export lines by uid, checking the export itself: valid JSON, unique uids, increasing
/// sequence numbers.
fn export_by_uid(lines: &[String]) -> BTreeMap<String, String> {
    let mut by_uid = BTreeMap::new();
    let mut last = 0;
    for line in lines {
        let r: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("export line is not JSON ({e}): {line}"));
        let seq = r["metadata"]["sequence"].as_i64().unwrap_or_default();
        assert!(seq > last, "sequence numbers increase: {seq} after {last}");
        last = seq;
        assert!(
            by_uid.insert(uid_of(&r), line.clone()).is_none(),
            "duplicate uid in the export: {line}"
        );
    }
    by_uid
}

/// `ship status --json`, by sink name.
fn ship_status(cfg: &TempConfig) -> HashMap<String, Value> {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(["ship", "status", "--json"]);
    let out = run_command(cmd, Duration::from_secs(30));
    assert!(out.success(), "ship status failed\n{}", out.describe());
    let rows: Vec<Value> = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("ship status --json ({e})\n{}", out.describe()));
    rows.into_iter()
        .map(|r| (r["name"].as_str().unwrap_or_default().to_owned(), r))
        .collect()
}

/// Polls `check` until it returns true or `timeout` passes.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn assert_shape(by_uid: &BTreeMap<String, String>, pg: &PgServer) {
    let records: Vec<Value> = by_uid
        .values()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    let datastore: Vec<&Value> = records.iter().filter(|r| r["class_uid"] == 6005).collect();
    let select = datastore
        .iter()
        .find(|r| {
            r["query_info"]["query_string"]
                .as_str()
                .is_some_and(|q| q.contains("count(*) FROM keep"))
        })
        .unwrap_or_else(|| panic!("no Datastore record for the SELECT: {records:?}"));
    assert_eq!(select["action_id"], 1, "{select}");
    assert_eq!(select["disposition_id"], 1, "{select}");
    assert_eq!(select["database"]["name"], "appdb", "{select}");
    assert_eq!(select["dst_endpoint"]["port"], pg.port(), "{select}");
    assert_eq!(select["metadata"]["product"]["name"], "interceptor");
    assert!(select["actor"]["process"]["pid"].as_i64().unwrap_or(0) > 0);
    assert!(select["metadata"]["correlation_uid"]
        .as_str()
        .is_some_and(|r| r.starts_with("run-")));
    let drop = datastore
        .iter()
        .find(|r| r["query_info"]["query_string"] == "DROP TABLE keep")
        .unwrap_or_else(|| panic!("no record for the DROP: {records:?}"));
    assert_eq!(drop["action_id"], 2, "{drop}");
    assert_eq!(drop["disposition_id"], 2, "{drop}");
    assert!(drop["policy"]["name"].is_string(), "{drop}");
    assert!(
        records.iter().any(|r| r["class_uid"] == 4001),
        "the session's connection is Network Activity"
    );
}

// ---------------------------------------------------------------------------------------------
// rsyslog
// ---------------------------------------------------------------------------------------------

/// A private rsyslogd: TCP input on a free loopback port, every message's MSG part written
/// to `out`, nothing else loaded (no system logging). Killed on drop.
struct Rsyslog {
    proc: Option<Spawned>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Rsyslog {
    fn start() -> Rsyslog {
        let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(bin) = bin else {
            panic!("rsyslogd not found: install the Debian package rsyslog (scripts/bootstrap.sh does)");
        };
        let dir = tempfile::Builder::new()
            .prefix("interceptor-rsyslog-")
            .tempdir()
            .expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let d = dir.path().display();
        // maxMessageSize: the default 8k would truncate long statements.
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="1m")
module(load="imtcp")
template(name="msgonly" type="string" string="%msg%\n")
ruleset(name="ship") {{
  action(type="omfile" file="{d}/out.log" template="msgonly")
}}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="ship")
"#
        );
        let conf_path = dir.path().join("rsyslog.conf");
        fs::write(&conf_path, conf).expect("write rsyslog.conf");
        let mut cmd = Command::new(bin);
        cmd.arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .current_dir(dir.path());
        let mut rs = Rsyslog {
            proc: Some(Spawned::spawn(cmd, "rsyslogd", false)),
            dir,
            port,
        };
        let up = wait_until(Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            let log = rs
                .proc
                .take()
                .map(|p| p.wait(Duration::from_secs(1)).describe());
            panic!(
                "rsyslogd did not listen on {port}\n{}",
                log.unwrap_or_default()
            );
        }
        rs
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }

    fn lines(&self) -> Vec<String> {
        fs::read_to_string(self.out())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        // Spawned's own drop kills the process group and reaps it.
        self.proc.take();
    }
}

#[test]
fn rsyslog_receives_every_event_exactly_as_exported() {
    require_root!();
    let pg = start_pg();
    let rsyslog = Rsyslog::start();
    let echo = EchoServer::start("127.0.0.3");
    let cfg = TempConfig::new("");
    cfg.write(&config_with_sinks(
        &cfg,
        &pg,
        &format!(
            "[[sink]]\nname = \"siem\"\ntype = \"syslog\"\naddress = \"127.0.0.1:{}\"\nfacility = \"local3\"\n",
            rsyslog.port
        ),
    ));
    run_client(
        &cfg,
        &pg,
        json!({ "n": 4, "echo": echo.addr().to_string() }),
    );

    let exported = export(&cfg);
    let by_uid = export_by_uid(&exported);
    assert!(by_uid.len() > 10, "{exported:#?}");
    assert_shape(&by_uid, &pg);
    let arrived = wait_until(Duration::from_secs(20), || {
        rsyslog.lines().len() >= by_uid.len()
    });
    let lines = rsyslog.lines();
    assert!(
        arrived,
        "rsyslog got {} of {} records\n{}",
        lines.len(),
        by_uid.len(),
        lines.join("\n")
    );
    let mut seen = BTreeMap::new();
    for line in &lines {
        let r: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("rsyslog line is not JSON ({e}): {line}"));
        let uid = uid_of(&r);
        let expected = by_uid
            .get(&uid)
            .unwrap_or_else(|| panic!("rsyslog got a record the export lacks: {line}"));
        assert_eq!(line, expected, "the same bytes as the export, for {uid}");
        *seen.entry(uid).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        by_uid.keys().collect::<Vec<_>>(),
        "every exported record arrived"
    );
    let network = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["class_uid"] == 4001 && r["dst_endpoint"]["port"] == echo.port())
        .count();
    assert!(
        network >= 1,
        "the plain TCP session arrived as Network Activity"
    );

    let status = ship_status(&cfg);
    let siem = &status["siem"];
    assert_eq!(siem["type"], "syslog");
    assert_eq!(siem["lag"], 0, "{siem}");
    assert_eq!(siem["cursor"], siem["last_seq"], "{siem}");
    assert_eq!(siem["last_error"], Value::Null, "{siem}");
}

// ---------------------------------------------------------------------------------------------
// Splunk HEC
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct HecState {
    /// Every `event` object received, in arrival order (duplicates included).
    events: Vec<Value>,
    requests: usize,
    /// Anything about a request that a real HEC would refuse.
    violations: Vec<String>,
}

/// A minimal HEC endpoint: checks the path, the token and the body's shape and answers 200.
/// The `outage_at`-th request is read (its events count as received) but never answered:
/// the connection is dropped and the listener closed for `outage`, then re-opened on the same
/// port, as if the collector restarted mid-stream.
struct HecReceiver {
    port: u16,
    state: Arc<Mutex<HecState>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl HecReceiver {
    fn start(token: &str, outage_at: usize, outage: Duration) -> HecReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind HEC receiver");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(HecState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let go_down = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicUsize::new(0));
        let (state2, stop2, token) = (state.clone(), stop.clone(), token.to_owned());
        let acceptor = thread::spawn(move || {
            let mut listener = Some(listener);
            while !stop2.load(Ordering::SeqCst) {
                if go_down.swap(false, Ordering::SeqCst) {
                    drop(listener.take());
                    thread::sleep(outage);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while listener.is_none() && Instant::now() < deadline {
                        listener = TcpListener::bind(("127.0.0.1", port)).ok();
                        if listener.is_none() {
                            thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                let Some(l) = listener.as_ref() else {
                    state2
                        .lock()
                        .unwrap()
                        .violations
                        .push(format!("could not re-bind port {port}"));
                    return;
                };
                let _ = l.set_nonblocking(true);
                match l.accept() {
                    Ok((stream, _)) => {
                        let (state, token) = (state2.clone(), token.clone());
                        let (counter, go_down) = (counter.clone(), go_down.clone());
                        thread::spawn(move || {
                            serve_hec(stream, &state, &token, &counter, outage_at, &go_down)
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        HecReceiver {
            port,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn uids(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .map(uid_of)
            .collect()
    }
}

impl Drop for HecReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// One keep-alive connection: requests until the client closes it.
fn serve_hec(
    stream: TcpStream,
    state: &Mutex<HecState>,
    token: &str,
    counter: &AtomicUsize,
    outage_at: usize,
    go_down: &AtomicBool,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut s = state.lock().unwrap();
            s.requests += 1;
            if request_line.trim_end() != "POST /services/collector/event HTTP/1.1" {
                s.violations.push(format!("request line {request_line:?}"));
            }
            if headers.get("authorization").map(String::as_str) != Some(&format!("Splunk {token}"))
            {
                s.violations
                    .push(format!("authorization {:?}", headers.get("authorization")));
            }
            if length == 0 {
                s.violations.push("no content-length".to_owned());
            }
            let text = String::from_utf8_lossy(&body);
            for object in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
                match object {
                    Ok(o) => {
                        let shaped = o["event"].is_object()
                            && o["time"].is_number()
                            && o["sourcetype"] == "ocsf"
                            && o["source"] == "interceptor";
                        if !shaped {
                            s.violations.push(format!("HEC object shape: {o}"));
                        }
                        s.events.push(o["event"].clone());
                    }
                    Err(e) => s.violations.push(format!("body is not JSON objects: {e}")),
                }
            }
        }
        if n == outage_at {
            // Received, never acknowledged: the sender must send these again.
            let _ = reader.get_ref().shutdown(Shutdown::Both);
            go_down.store(true, Ordering::SeqCst);
            return;
        }
        let reply = "{\"text\":\"Success\",\"code\":0}";
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if reader.get_mut().write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn hec_gets_every_event_across_a_collector_restart_and_duplicates_keep_their_uid() {
    require_root!();
    let pg = start_pg();
    let token = "hec-Token-5f2c9a1e";
    let receiver = HecReceiver::start(token, 2, Duration::from_millis(1500));
    let cfg = TempConfig::new("");
    let token_file = write_secret(&cfg, "hec.token", &format!("{token}\n"));
    cfg.write(&config_with_sinks(
        &cfg,
        &pg,
        &format!(
            "[[sink]]\nname = \"splunk\"\ntype = \"splunk_hec\"\nurl = \"http://127.0.0.1:{}\"\ntoken_file = \"{}\"\nbatch_size = 5\n",
            receiver.port,
            token_file.display()
        ),
    ));
    // Statements keep coming for a few seconds, before, during and after the outage.
    run_client(&cfg, &pg, json!({ "n": 25, "pause": 0.12 }));
    // A later run resumes from the cursor whatever the first one left (it adds no events).
    let out = run_exec(&cfg, None, &["/bin/true"]);
    assert!(out.success(), "{}", out.describe());

    let by_uid = export_by_uid(&export(&cfg));
    assert_shape(&by_uid, &pg);
    let all_arrived = wait_until(Duration::from_secs(20), || {
        let got: std::collections::BTreeSet<String> = receiver.uids().into_iter().collect();
        by_uid.keys().all(|u| got.contains(u))
    });
    let state = receiver.state.lock().unwrap();
    assert!(state.violations.is_empty(), "{:#?}", state.violations);
    let got: std::collections::BTreeSet<String> = state.events.iter().map(uid_of).collect();
    let missing: Vec<&String> = by_uid.keys().filter(|u| !got.contains(*u)).collect();
    assert!(all_arrived, "missing {missing:?}");
    assert!(
        state.requests > 2,
        "the outage happened mid-stream ({} requests)",
        state.requests
    );
    // The unanswered request's events came again: the same records, the same uids.
    let mut copies: HashMap<String, usize> = HashMap::new();
    for e in &state.events {
        let uid = uid_of(e);
        let expected: Value = serde_json::from_str(&by_uid[&uid]).expect("export json");
        assert_eq!(e, &expected, "a delivery of {uid} differs from the export");
        *copies.entry(uid).or_default() += 1;
    }
    assert!(
        copies.values().any(|n| *n > 1),
        "the unacknowledged batch was re-delivered"
    );
    drop(state);

    let status = ship_status(&cfg);
    assert_eq!(status["splunk"]["lag"], 0, "{}", status["splunk"]);
    // The token is a secret: not in the journal, the export or the status.
    assert!(!bytes_contain(&journal_bytes(&cfg), token.as_bytes()));
    assert!(!serde_json::to_string(&status["splunk"])
        .unwrap_or_default()
        .contains(token));
}

// ---------------------------------------------------------------------------------------------
// File
// ---------------------------------------------------------------------------------------------

/// The live file and its rotations, oldest first.
fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let mut numbered: Vec<(u32, PathBuf)> = fs::read_dir(path.parent().expect("dir"))
        .expect("read dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let base = path.file_name()?.to_string_lossy().into_owned();
            let n: u32 = name.strip_prefix(&format!("{base}."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    files.push(path.to_owned());
    files
}

#[test]
fn file_sink_rotation_keeps_every_event_exactly_once() {
    require_root!();
    let pg = start_pg();
    let echo = EchoServer::start("127.0.0.3");
    let cfg = TempConfig::new("");
    let out = cfg.dir().join("ship/events.ndjson");
    let sink = format!(
        "[[sink]]\nname = \"local\"\ntype = \"file\"\npath = \"{}\"\nmax_bytes = 8192\nkeep = 1000\n",
        out.display()
    );
    cfg.write(&config_with_sinks(&cfg, &pg, &sink));
    run_client(
        &cfg,
        &pg,
        json!({ "n": 20, "echo": echo.addr().to_string() }),
    );

    let exported = export(&cfg);
    let by_uid = export_by_uid(&exported);
    assert_shape(&by_uid, &pg);
    let files = rotated_files(&out);
    assert!(files.len() > 3, "rotated several times: {files:?}");
    let mut lines = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).expect("read sink file");
        assert!(
            text.len() <= 8192,
            "{} is {} bytes",
            f.display(),
            text.len()
        );
        assert!(text.is_empty() || text.ends_with('\n'), "whole lines only");
        lines.extend(text.lines().map(str::to_owned));
    }
    assert_eq!(
        lines, exported,
        "every event exactly once, in order, across the files"
    );
    let tcp = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["class_uid"] == 4001 && r["dst_endpoint"]["port"] == echo.port())
        .collect::<Vec<_>>();
    assert!(
        tcp.iter().any(|r| r["action_id"] == 1),
        "the echo connection was allowed: {tcp:#?}"
    );

    // A sink added later starts from the beginning: its lag is the whole journal.
    cfg.write(&config_with_sinks(
        &cfg,
        &pg,
        &format!(
            "{sink}\n[[sink]]\nname = \"late\"\ntype = \"file\"\npath = \"{}\"\n",
            cfg.dir().join("late.ndjson").display()
        ),
    ));
    let status = ship_status(&cfg);
    let last = exported
        .last()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .map(|r| r["metadata"]["sequence"].clone())
        .expect("last record");
    assert_eq!(status["local"]["cursor"], last, "{}", status["local"]);
    assert_eq!(status["local"]["lag"], 0);
    assert_eq!(status["late"]["cursor"], 0);
    assert_eq!(status["late"]["lag"], last);
    let mut cmd = interceptor_cmd(Some(&cfg));
    cmd.args(["ship", "status"]);
    let table = run_command(cmd, Duration::from_secs(30));
    assert!(table.success(), "{}", table.describe());
    assert!(
        table.stdout.contains("local") && table.stdout.contains("late"),
        "{}",
        table.stdout
    );
}

#[test]
fn a_broken_sink_config_stops_exec_before_the_command_runs() {
    require_root!();
    let cfg = TempConfig::new(
        "[[sink]]\nname = \"splunk\"\ntype = \"splunk_hec\"\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"/nonexistent/hec.token\"\n",
    );
    let marker = cfg.dir().join("ran");
    let out = run_exec(
        &cfg,
        None,
        &["/bin/sh", "-c", &format!("touch {}", marker.display())],
    );
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("sink \"splunk\"") && out.stderr.contains("/nonexistent/hec.token"),
        "{}",
        out.describe()
    );
    assert!(!marker.exists(), "the command must not run");
}

#[test]
fn the_service_ships_while_it_runs() {
    require_root!();
    // Declaration order = reverse drop order: daemon first, then pins, then the cgroup.
    let cgroup = CgroupDir::new(&unique_name("interceptor-ship"));
    let cfg = TempConfig::new("");
    let pins = PinDir::new(&cfg.path);
    let out = cfg.dir().join("events.ndjson");
    cfg.write(&format!(
        "{}\n[proxy]\nport = {}\n\n[capture]\nmode = \"all\"\ncgroups = [\"{}\"]\npin_dir = \"{}\"\n\n\
         [[sink]]\nname = \"local\"\ntype = \"file\"\npath = \"{}\"\n",
        cfg.journal_section(),
        free_port(),
        cgroup.relative(),
        pins.path.display(),
        out.display()
    ));
    let echo = EchoServer::start("127.0.0.2");
    let daemon = Daemon::start(&cfg);
    let client = run_python_in_cgroup(
        &cgroup,
        "report(**echo_once(socket.AF_INET, (sys.argv[1], int(sys.argv[2])), payload(500, 1)))",
        &["127.0.0.2".into(), echo.port().to_string()],
        Duration::from_secs(40),
    );
    assert!(client.success(), "{}", client.describe());

    // The daemon keeps running: what reaches the file is shipped by its running sink.
    let mut lines = Vec::new();
    let caught_up = wait_until(Duration::from_secs(15), || {
        lines = fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let exported = export(&cfg);
        !exported.is_empty()
            && lines == exported
            && exported.iter().any(|l| l.contains("\"session_close\""))
    });
    assert!(
        caught_up,
        "the file never matched the export\n{}\n--- daemon ---\n{}",
        lines.join("\n"),
        daemon.log()
    );
    let records: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let closed = records
        .iter()
        .find(|r| r["metadata"]["event_code"] == "session_close")
        .expect("a close record");
    assert_eq!(closed["class_uid"], 4001);
    assert_eq!(closed["traffic"]["bytes_out"], 500, "{closed}");
    assert!(closed["metadata"]["correlation_uid"]
        .as_str()
        .is_some_and(|r| r.starts_with("cg-")));
    assert_eq!(ship_status(&cfg)["local"]["lag"], 0);
    drop(daemon);
}
