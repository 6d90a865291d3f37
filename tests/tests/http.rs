//! The HTTP(S) gateway against a real upstream (Python's `http.server` on loopback) and real
//! clients under `interceptor exec` (curl, `requests`, `httpx` with HTTP/2): each request is
//! judged, journaled and, when held, approved before the upstream sees it; the credential
//! header is the gateway's, never the agent's.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use interceptor_tests::*;

const SECRET: &str = "Bearer s3cret-upstream-token-4242";
const AGENT_FAKE: &str = "Bearer agent-made-this-up";

/// The upstream: answers every method with JSON (method, path, the headers it got, minus the
/// `authorization` value; under `/customers/` a record with an email and a card number;
/// `/events` an event stream holding them; `/blob` bytes it calls `application/octet-stream`)
/// and appends each request it received, in full, to a JSON-lines log.
const UPSTREAM: &str = r#"
import json, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
EMAIL, CARD = "ada.lovelace@example.com", "4111 1111 1111 1111"
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_any(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        with open(log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "headers": headers, "body_len": len(body)}) + "\n")
        shown = {k: v for k, v in headers.items() if k != "authorization"}
        out = json.dumps({"method": self.command, "path": self.path, "headers": shown,
                          "authorized": "authorization" in headers}).encode()
        kind = "application/json"
        if self.path.startswith("/customers/"):
            out = json.dumps({"id": 1, "name": "Ada Lovelace", "email": EMAIL,
                              "card": CARD, "accept_encoding": headers.get("accept-encoding")}).encode()
        elif self.path == "/events":
            kind = "text/event-stream"
            out = ("event: customer\ndata: " + json.dumps({"email": EMAIL}) + "\n\n"
                   ": keep-alive\n\ndata: card " + CARD + "\n\n").encode()
        elif self.path == "/blob":
            kind = "application/octet-stream"
            out = b"\x00\x01" + EMAIL.encode()
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any
    def log_message(self, *a):
        pass
ThreadingHTTPServer.allow_reuse_address = True
s = ThreadingHTTPServer((host, port), H)
print("ready", flush=True)
s.serve_forever()
"#;

/// Where the upstream listens; agents dial [`DIALED`] on the same port.
const UPSTREAM_HOST: &str = "127.0.0.3";
const DIALED: &str = "127.0.0.4";

struct Upstream {
    _process: Spawned,
    port: u16,
    log: PathBuf,
}

impl Upstream {
    fn start(dir: &std::path::Path) -> Upstream {
        Upstream::start_with(dir, PYTHON, UPSTREAM)
    }

    /// `script` run by `python` with the host, port and log as its arguments.
    fn start_with(dir: &std::path::Path, python: &str, script: &str) -> Upstream {
        let port = free_port();
        let log = dir.join("upstream.jsonl");
        fs::write(&log, "").expect("upstream log");
        let mut cmd = std::process::Command::new(python);
        cmd.args(["-c", script, UPSTREAM_HOST, &port.to_string()])
            .arg(&log)
            .current_dir("/");
        Upstream {
            _process: spawn_ready(cmd, "upstream"),
            port,
            log,
        }
    }

    /// Every request the upstream received.
    fn received(&self) -> Vec<Value> {
        json_lines(&self.log)
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{DIALED}:{}{path}", self.port)
    }
}

/// A config with one target of `protocol` for the upstream, the default policy plus a deny
/// rule for `/admin/*` (review timeout 60 s), the credential header from a file, and the
/// approvals socket in the test's directory.
fn config(upstream: &Upstream, cfg: TempConfig, protocol: &str, extra: &str) -> TempConfig {
    let default =
        fs::read_to_string(workspace_root().join("policies/default.toml")).expect("default policy");
    let policy = cfg.dir().join("policy.toml");
    fs::write(
        &policy,
        format!(
            "{}\n[[rule]]\nname = \"no-admin\"\ndecision = \"deny\"\n\
             message = \"admin paths are off limits\"\n[rule.match]\npaths = [\"/admin/*\"]\n",
            default.replace("review_timeout_secs = 300", "review_timeout_secs = 60")
        ),
    )
    .expect("policy");
    let secret = write_secret(&cfg, "token", &format!("{SECRET}\n"));
    cfg.write(&format!(
        "{journal}\n[state]\ndir = \"{state}\"\n\n[approvals]\nsocket = \"{socket}\"\n\n\
         [[target]]\nname = \"api\"\nprotocol = \"{protocol}\"\n\
         intercept = [\"{DIALED}:{port}\"]\nupstream = \"{UPSTREAM_HOST}:{port}\"\n\
         policy = \"{policy}\"\n{extra}\n\
         [target.credentials]\nheader = \"Authorization\"\nvalue_file = \"{secret}\"\n",
        journal = cfg.journal_section(),
        state = state_dir(&cfg).display(),
        socket = cfg.dir().join("control.sock").display(),
        port = upstream.port,
        policy = policy.display(),
        secret = secret.display(),
    ));
    cfg
}

fn setup(protocol: &str, extra: &str) -> (TempConfig, Upstream) {
    let cfg = TempConfig::new("");
    let upstream = Upstream::start(cfg.dir());
    let cfg = config(&upstream, cfg, protocol, extra);
    (cfg, upstream)
}

/// Every `http_request` event of the journal, in order.
fn http_events(cfg: &TempConfig) -> Vec<Value> {
    journal_events(cfg, "http_request")
}

fn curl(args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "curl".to_owned(),
        "-sS".to_owned(),
        "--max-time".to_owned(),
        "90".to_owned(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

#[test]
fn a_get_is_relayed_with_the_injected_token_that_the_agent_never_sees() {
    require_root!();
    let (cfg, upstream) = setup("http", "");
    let url = upstream.url("http", "/v1/items?limit=2");
    // From a file: on curl's command line it would be in the session's identity (cmdline).
    let header = cfg.dir().join("agent-header");
    fs::write(&header, format!("Authorization: {AGENT_FAKE}\n")).expect("header file");
    fs::set_permissions(&header, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let out = run_exec(
        &cfg,
        Some("nobody"),
        &curl(&["-v", "-H", &format!("@{}", header.display()), &url]),
    );
    assert!(out.success(), "{}", out.describe());
    let answer: Value = serde_json::from_str(&out.stdout).expect("the upstream's JSON");
    assert_eq!(answer["method"], json!("GET"));
    assert_eq!(answer["path"], json!("/v1/items?limit=2"));
    assert_eq!(answer["authorized"], json!(true));
    let got = upstream.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["headers"]["authorization"],
        json!(SECRET),
        "injected"
    );
    let host = format!("{DIALED}:{}", upstream.port);
    assert_eq!(got[0]["headers"]["host"], json!(host));
    // The agent saw neither the secret (curl -v prints every header both ways) nor did the
    // journal keep it, or the agent's own value.
    assert!(
        !out.stdout.contains("s3cret") && !out.stderr.contains("s3cret"),
        "{}",
        out.describe()
    );
    let journal = journal_bytes(&cfg);
    assert!(
        !bytes_contain(&journal, b"s3cret-upstream-token"),
        "the secret is in the journal"
    );
    assert!(
        !bytes_contain(&journal, b"agent-made-this-up"),
        "the agent's header is in the journal"
    );
    let events = http_events(&cfg);
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(
        e["statement"],
        json!(format!("GET http://{host}/v1/items?limit=2")),
        "{}",
        pretty(e)
    );
    assert_eq!(e["decision"], json!("allow"), "{}", pretty(e));
    assert_eq!(e["result"]["status"], json!(200), "{}", pretty(e));
    assert!(
        e["result"]["bytes"].as_u64().unwrap_or(0) > 0,
        "{}",
        pretty(e)
    );
}

/// One kept-alive connection (httpx): a request, then, once the test has rotated the secret
/// and said so with a file, a pause longer than the gateway keeps a secret it read, and a
/// second request on the same connection.
const ROTATION_CLIENT: &str = r#"
import os, sys, time, httpx
url, go = sys.argv[1], sys.argv[2]
with httpx.Client(timeout=90) as c:
    c.get(url).raise_for_status()
    deadline = time.time() + 60
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    c.get(url).raise_for_status()
print("done", flush=True)
"#;

#[test]
fn a_rotated_secret_is_used_on_a_kept_alive_connection() {
    require_root!();
    let (cfg, upstream) = setup("http", "");
    let go = cfg.dir().join("rotated");
    let argv = python_argv_with(
        &venv_python().display().to_string(),
        ROTATION_CLIENT,
        &[upstream.url("http", "/v1/items"), go.display().to_string()],
    );
    let agent = Spawned::spawn(exec_cmd(&cfg, Some("nobody"), &argv), "agent", false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while upstream.received().is_empty() {
        assert!(Instant::now() < deadline, "the first request never came");
        std::thread::sleep(Duration::from_millis(50));
    }
    write_secret(&cfg, "token", "Bearer rotated-token\n");
    fs::write(&go, "").expect("go file");
    let out = agent.wait(Duration::from_secs(90));
    assert!(out.success(), "{}", out.describe());
    let got = upstream.received();
    let seen: Vec<&Value> = got.iter().map(|r| &r["headers"]["authorization"]).collect();
    assert_eq!(
        seen,
        [&json!(SECRET), &json!("Bearer rotated-token")],
        "the second request of the connection carries the rotated secret"
    );
}

#[test]
fn a_policy_deny_is_a_403_problem_and_the_connection_stays_usable() {
    require_root!();
    let (cfg, upstream) = setup("http", "");
    let denied = upstream.url("http", "/admin/users");
    let allowed = upstream.url("http", "/v1/items");
    // One curl, two URLs: the second reuses the first's connection.
    let out = run_exec(
        &cfg,
        Some("nobody"),
        &curl(&[
            "-w",
            "\n%{http_code} %{num_connects} %{content_type}\n",
            &denied,
            &allowed,
        ]),
    );
    assert!(out.success(), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    let problem: Value = serde_json::from_str(lines[0]).expect("problem JSON");
    assert_eq!(problem["status"], json!(403), "{problem}");
    assert_eq!(problem["rule"], json!("no-admin"), "{problem}");
    assert!(problem["event"].as_i64().is_some(), "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("no-admin"),
        "{problem}"
    );
    assert_eq!(lines[1], "403 1 application/problem+json", "{}", out.stdout);
    assert_eq!(
        lines.get(3).copied(),
        Some("200 0 application/json"),
        "the same connection: {}",
        out.stdout
    );
    let got = upstream.received();
    assert_eq!(got.len(), 1, "only the allowed request went up: {got:?}");
    assert_eq!(got[0]["path"], json!("/v1/items"));
}

#[test]
fn a_held_delete_runs_once_when_approved() {
    require_root!();
    let (cfg, upstream) = setup("http", "");
    let url = upstream.url("http", "/api/customers/1");
    let agent = Spawned::spawn(
        exec_cmd(
            &cfg,
            Some("nobody"),
            &curl(&["-X", "DELETE", "-w", "\n%{http_code}\n", &url]),
        ),
        "agent",
        false,
    );
    let held = first_pending(&cfg, Duration::from_secs(30));
    let host = format!("{DIALED}:{}", upstream.port);
    assert_eq!(
        held["statement"],
        json!(format!("DELETE http://{host}/api/customers/1")),
        "{}",
        pretty(&held)
    );
    assert_eq!(held["rule"], json!("http-writes-need-review"));
    assert!(upstream.received().is_empty(), "nothing went up while held");
    let id = held["id"].as_str().expect("id");
    assert!(approvals_cli(&cfg, &["approve", id]).success());
    let out = agent.wait(Duration::from_secs(60));
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.trim_end().ends_with("200"), "{}", out.describe());
    let got = upstream.received();
    assert_eq!(got.len(), 1, "exactly once: {got:?}");
    assert_eq!(got[0]["method"], json!("DELETE"));
}

#[test]
fn a_held_request_denied_never_reaches_the_upstream_and_gets_403_json() {
    require_root!();
    let (cfg, upstream) = setup("http", "");
    const CLIENT: &str = r#"
import json, sys, requests
r = requests.post(sys.argv[1], json={"name": "x"}, timeout=90)
print(json.dumps({"status": r.status_code, "type": r.headers.get("content-type"), "body": r.json()}))
"#;
    let argv = python_argv_with(
        &venv_python().display().to_string(),
        CLIENT,
        &[upstream.url("http", "/api/customers")],
    );
    let agent = Spawned::spawn(exec_cmd(&cfg, Some("nobody"), &argv), "agent", false);
    let held = first_pending(&cfg, Duration::from_secs(30));
    let id = held["id"].as_str().expect("id");
    assert!(approvals_cli(&cfg, &["deny", id, "--reason", "not today"]).success());
    let out = agent.wait(Duration::from_secs(60));
    assert!(out.success(), "{}", out.describe());
    let line: Value = serde_json::from_str(out.stdout.trim()).expect("client JSON");
    assert_eq!(line["status"], json!(403), "{line}");
    assert_eq!(line["type"], json!("application/problem+json"), "{line}");
    assert_eq!(line["body"]["approval"], json!(id), "{line}");
    assert!(
        line["body"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not today"),
        "{line}"
    );
    assert!(
        upstream.received().is_empty(),
        "a denied request never went up"
    );
}

#[test]
fn oversized_and_malformed_requests_end_only_their_connection() {
    require_root!();
    let (cfg, upstream) = setup("http", "max_message_bytes = 100000");
    // Python under exec, speaking raw HTTP/1.1 on three connections at once.
    const CLIENT: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
def conn():
    s = socket.create_connection((host, port), timeout=10)
    return s
def read_answer(s):
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data, True
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip())
                if len(body) >= length:
                    # Closed after the answer?
                    s.settimeout(1)
                    try:
                        more = s.recv(1)
                        return data, more == b""
                    except socket.timeout:
                        return data, False
    except (ConnectionResetError, socket.timeout):
        return data, True
get = f"GET /v1/ok HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
keep = conn()
keep.sendall(get)
first, closed = read_answer(keep)
print("keep1", first.split(b"\r\n")[0].decode(), closed)
big = conn()
big.sendall(f"POST /v1/upload HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 200000\r\n\r\n".encode())
try:
    big.sendall(b"x" * 200000)
except OSError:
    pass
answer, closed = read_answer(big)
print("big", answer.split(b"\r\n")[0].decode(), closed)
bad = conn()
bad.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
answer, closed = read_answer(bad)
print("bad", answer.split(b"\r\n")[0].decode(), closed)
keep.sendall(get)
again, closed = read_answer(keep)
print("keep2", again.split(b"\r\n")[0].decode(), closed)
"#;
    let out = run_exec(
        &cfg,
        Some("nobody"),
        &python(CLIENT, &[DIALED.to_owned(), upstream.port.to_string()]),
    );
    assert!(out.success(), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("keep1 HTTP/1.1 200 OK False"),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("big HTTP/1.1 413") && l.ends_with("True")),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.starts_with("bad HTTP/1.1 400") && l.ends_with("True")),
        "{}",
        out.stdout
    );
    assert_eq!(
        lines.get(3).copied(),
        Some("keep2 HTTP/1.1 200 OK False"),
        "{}",
        out.stdout
    );
    let got = upstream.received();
    assert!(got.iter().all(|r| r["path"] == json!("/v1/ok")), "{got:?}");
    assert_eq!(got.len(), 2, "{got:?}");
}

#[test]
fn ambiguous_paths_and_websockets_are_refused() {
    require_root!();
    let (cfg, upstream) = setup("http", "");
    let encoded = upstream.url("http", "/files/a%2F..%2Fadmin");
    let plain = upstream.url("http", "/v1/items");
    let out = run_exec(
        &cfg,
        Some("nobody"),
        &curl(&[
            "--path-as-is",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            &encoded,
            "--next",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Connection: Upgrade",
            &plain,
        ]),
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout, "400\n403\n", "{}", out.describe());
    assert!(upstream.received().is_empty());
}

/// The local CA as `interceptor ca pem` prints it, in a file the agent can read.
fn ca_file(cfg: &TempConfig) -> PathBuf {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.args(["ca", "pem"]);
    let out = run_command(cmd, Duration::from_secs(30));
    assert!(out.success(), "{}", out.describe());
    let path = cfg.dir().join("local-ca.pem");
    fs::write(&path, &out.stdout).expect("ca file");
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    path
}

#[test]
fn https_verifies_against_the_local_ca_and_speaks_http2() {
    require_root!();
    let (cfg, upstream) = setup("https", "[target.tls]\nmode = \"disable\"\n");
    let ca = ca_file(&cfg);
    let url = upstream.url("https", "/v1/items");
    let out = run_exec(
        &cfg,
        Some("nobody"),
        &curl(&[
            "--cacert",
            &ca.display().to_string(),
            "--http2",
            "-w",
            "\n%{http_version} %{http_code}\n",
            &url,
        ]),
    );
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.ends_with("\n2 200\n"), "{}", out.describe());
    // httpx over HTTP/2, verifying against the same CA.
    const CLIENT: &str = r#"
import json, sys, httpx
with httpx.Client(http2=True, verify=sys.argv[2], timeout=90) as c:
    a = c.get(sys.argv[1])
    b = c.get(sys.argv[1] + "?again=1")
print(json.dumps({"version": a.http_version, "status": [a.status_code, b.status_code], "body": a.json()}))
"#;
    let argv = python_argv_with(
        &venv_python().display().to_string(),
        CLIENT,
        &[url.clone(), ca.display().to_string()],
    );
    let out = run_exec(&cfg, Some("nobody"), &argv);
    assert!(out.success(), "{}", out.describe());
    let line: Value = serde_json::from_str(out.stdout.trim()).expect("client JSON");
    assert_eq!(line["version"], json!("HTTP/2"), "{line}");
    assert_eq!(line["status"], json!([200, 200]), "{line}");
    assert_eq!(line["body"]["authorized"], json!(true), "{line}");
    // Without the CA, verification fails.
    let out = run_exec(&cfg, Some("nobody"), &curl(&[&url]));
    assert!(!out.success(), "{}", out.describe());
    let got = upstream.received();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter()
            .all(|r| r["headers"]["authorization"] == json!(SECRET)),
        "{got:?}"
    );
    let events = http_events(&cfg);
    let host = format!("{DIALED}:{}", upstream.port);
    assert!(
        events
            .iter()
            .any(|e| e["statement"] == json!(format!("GET https://{host}/v1/items"))),
        "{events:#?}"
    );
}

#[test]
fn responses_are_masked_with_their_length_fixed_and_unreadable_ones_refused() {
    require_root!();
    let (cfg, upstream) = setup("http", "");
    const CLIENT: &str = r#"
import json, sys, requests
base = sys.argv[1]
r = requests.get(base + "/customers/1", timeout=60)
e = requests.get(base + "/events", timeout=60)
b = requests.get(base + "/blob", timeout=60)
print(json.dumps({"status": [r.status_code, e.status_code, b.status_code],
                  "length": r.headers.get("content-length"), "raw": len(r.content),
                  "customer": r.json(), "events": e.text, "blob": b.json()}))
"#;
    let argv = python_argv_with(
        &venv_python().display().to_string(),
        CLIENT,
        &[upstream.url("http", "")],
    );
    let out = run_exec(&cfg, Some("nobody"), &argv);
    assert!(out.success(), "{}", out.describe());
    let line: Value = serde_json::from_str(out.stdout.trim()).expect("client JSON");
    assert_eq!(line["status"], json!([200, 200, 502]), "{line}");
    assert_eq!(line["length"], json!(line["raw"].to_string()), "{line}");
    let customer = &line["customer"];
    assert_eq!(customer["name"], json!("Ada Lovelace"), "{line}");
    assert_eq!(customer["accept_encoding"], json!("identity"), "{line}");
    let shown = line.to_string();
    assert!(!shown.contains("ada.lovelace@example.com"), "{line}");
    assert!(!shown.contains("4111 1111 1111 1111"), "{line}");
    assert!(
        line["events"]
            .as_str()
            .unwrap_or_default()
            .contains("event: customer"),
        "{line}"
    );
    assert_eq!(
        line["blob"]["type"],
        json!("urn:interceptor:problem:unmaskable-response"),
        "{line}"
    );
    let events = http_events(&cfg);
    let result_of = |path: &str| {
        events
            .iter()
            .find(|e| e["statement"].as_str().is_some_and(|s| s.ends_with(path)))
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        result_of("/customers/1").contains("detector:email"),
        "{events:#?}"
    );
    assert!(result_of("/blob").contains("502"), "{events:#?}");
}

/// A WebSocket echo server (the `websockets` package), logging each handshake request it
/// receives before answering it.
const WS_UPSTREAM: &str = r#"
import asyncio, json, sys
from websockets.asyncio.server import serve
host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def seen(connection, request):
    with open(log, "a") as f:
        f.write(json.dumps({"method": "GET", "path": request.path,
                            "authorized": "authorization" in request.headers}) + "\n")
async def echo(ws):
    async for message in ws:
        await ws.send(message)
async def main():
    async with serve(echo, host, port, process_request=seen):
        print("ready", flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

/// A WebSocket client: a text and a binary message echoed, or the status it was refused with.
const WS_CLIENT: &str = r#"
import os, sys
from websockets.sync.client import connect
from websockets.exceptions import InvalidStatus
try:
    with connect(sys.argv[1], open_timeout=30) as ws:
        ws.send("hello through the gate")
        print("text", ws.recv(timeout=30))
        ws.send(os.urandom(10240))  # incompressible (permessage-deflate)
        print("binary", len(ws.recv(timeout=30)))
except InvalidStatus as e:
    print("status", e.response.status_code)
"#;

#[test]
fn a_websocket_is_refused_by_default_and_relayed_as_a_stream_when_a_rule_allows_it() {
    require_root!();
    let cfg = TempConfig::new("");
    let python = venv_python().display().to_string();
    let upstream = Upstream::start_with(cfg.dir(), &python, WS_UPSTREAM);
    let cfg = config(&upstream, cfg, "http", "");
    let url = format!("ws://{DIALED}:{}/events", upstream.port);
    let client = || python_argv_with(&python, WS_CLIENT, std::slice::from_ref(&url));

    // The shipped policy allows GET, but not a GET that becomes a WebSocket.
    let out = run_exec(&cfg, Some("nobody"), &client());
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout, "status 403\n", "{}", out.describe());
    assert!(upstream.received().is_empty(), "the upstream saw it");
    let events = http_events(&cfg);
    let host = format!("{DIALED}:{}", upstream.port);
    let text = format!("GET http://{host}/events [upgrade websocket]");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(
        events[0]["statement"],
        json!(text),
        "{}",
        pretty(&events[0])
    );
    assert_eq!(
        events[0]["decision"],
        json!("deny"),
        "{}",
        pretty(&events[0])
    );

    // A rule naming the upgrade, in a policy without masking (frames are not masked, so an
    // upgrade under masking is refused): the stream is relayed both ways, with the credential.
    let policy = cfg.dir().join("policy.toml");
    let mut rules = String::from(
        "[[rule]]\nname = \"connections\"\ndecision = \"allow\"\n[rule.match]\nkinds = [\"connect\"]\n",
    );
    rules.push_str(
        "\n[[rule]]\nname = \"events-websocket\"\ndecision = \"allow\"\n[rule.match]\n\
         methods = [\"GET\"]\npaths = [\"/events\"]\nupgrades = [\"websocket\"]\n",
    );
    fs::write(&policy, rules).expect("policy");
    let out = run_exec(&cfg, Some("nobody"), &client());
    assert!(out.success(), "{}", out.describe());
    assert_eq!(
        out.stdout,
        "text hello through the gate\nbinary 10240\n",
        "{}",
        out.describe()
    );
    let got = upstream.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["authorized"], json!(true), "{got:?}");
    let events = http_events(&cfg);
    assert_eq!(events.len(), 2, "{events:#?}");
    let e = &events[1];
    assert_eq!(e["statement"], json!(text), "{}", pretty(e));
    assert_eq!(e["decision"], json!("allow"), "{}", pretty(e));
    assert_eq!(e["rule"], json!("events-websocket"), "{}", pretty(e));
    assert_eq!(e["result"]["status"], json!(101), "{}", pretty(e));
    // Frames add a few bytes each way to the 10 KiB and the text.
    let tag = e["result"]["tag"].as_str().unwrap_or_default().to_owned();
    let counts: Vec<u64> = tag
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(tag.starts_with("websocket: "), "{}", pretty(e));
    assert!(
        counts.len() == 2 && counts.iter().all(|&n| n > 10240),
        "{}",
        pretty(e)
    );
    assert_eq!(e["result"]["bytes"], json!(counts[1]), "{}", pretty(e));
}
