//! MCP over streamable HTTP through the gateway, with real components on loopback: a tool
//! server built with the official Python SDK (`demo/mcp_server.py`: FastMCP, stateless,
//! answering in server-sent events) and, under `interceptor exec`, the SDK's own client and an
//! AutoGen agent with `McpWorkbench` (`demo/mcp_agent.py`, the MCP step of `make demo`). Each JSON-RPC call is judged on
//! its own with the default policy: listings and read-only tools (as the server annotates
//! them) run, and their results reach the agent masked; a destructive tool is held, runs
//! exactly once when approved and never when denied (the agent then reads an error result).

use std::{
    fs,
    net::TcpStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use interceptor_tests::*;

/// The agent: the SDK's client lists the tools, calls one, and prints what it got.
const CLIENT: &str = r#"
import asyncio, json, sys
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
url, tool, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
async def main():
    async with streamablehttp_client(url, timeout=120, sse_read_timeout=300,
                                     terminate_on_close=False) as (r, w, _):
        async with ClientSession(r, w) as s:
            await s.initialize()
            listed = await s.list_tools()
            res = await s.call_tool(tool, args)
            print(json.dumps({"tools": sorted(t.name for t in listed.tools),
                              "isError": res.isError,
                              "text": [c.text for c in res.content if c.type == "text"]}),
                  flush=True)
asyncio.run(main())
"#;

const SERVER_HOST: &str = "127.0.0.5";
const DIALED: &str = "127.0.0.6";
const EMAIL: &str = "ada.lovelace@example.com";
const CARD: &str = "4111 1111 1111 1111";

struct Server {
    _process: Spawned,
    port: u16,
    runs: PathBuf,
}

impl Server {
    /// A stateless server unless `stateful` (then it assigns session ids).
    fn start(dir: &std::path::Path, stateful: bool) -> Server {
        let port = free_port();
        let runs = dir.join("runs.jsonl");
        fs::write(&runs, "").expect("runs file");
        let mut cmd = std::process::Command::new(venv_python());
        cmd.arg(workspace_root().join("demo/mcp_server.py"))
            .args([SERVER_HOST, &port.to_string()])
            .arg(&runs)
            .args(stateful.then_some("stateful"))
            .current_dir("/");
        let mut process = Spawned::spawn(cmd, "mcp-server", false);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((SERVER_HOST, port)).is_err() {
            assert!(
                Instant::now() < deadline && process.try_status().is_none(),
                "the MCP server did not start: {}",
                process.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Server {
            _process: process,
            port,
            runs,
        }
    }

    /// How many times `delete_customer` ran.
    fn deletions(&self) -> usize {
        fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn url(&self) -> String {
        format!("http://{DIALED}:{}/mcp", self.port)
    }
}

/// The default policy (review timeout 60 s), one `http` target for the server, approvals in
/// the test's directory.
fn setup() -> (TempConfig, Server) {
    setup_with_review_timeout(60)
}

/// [`setup`], with the default policy's reviews timing out after `secs`.
fn setup_with_review_timeout(secs: u64) -> (TempConfig, Server) {
    setup_server(secs, false)
}

/// The default policy with reviews timing out after `secs`, and a server that is stateful or
/// not.
fn setup_server(secs: u64, stateful: bool) -> (TempConfig, Server) {
    let cfg = TempConfig::new("");
    let server = Server::start(cfg.dir(), stateful);
    let default =
        fs::read_to_string(workspace_root().join("policies/default.toml")).expect("default policy");
    let policy = cfg.dir().join("policy.toml");
    fs::write(
        &policy,
        default.replace(
            "review_timeout_secs = 300",
            &format!("review_timeout_secs = {secs}"),
        ),
    )
    .expect("policy");
    cfg.write(&format!(
        "{journal}\n[state]\ndir = \"{state}\"\n\n[approvals]\nsocket = \"{socket}\"\n\n\
         [[target]]\nname = \"crm\"\nprotocol = \"http\"\n\
         intercept = [\"{DIALED}:{port}\"]\nupstream = \"{SERVER_HOST}:{port}\"\n\
         policy = \"{policy}\"\n",
        journal = cfg.journal_section(),
        state = state_dir(&cfg).display(),
        socket = cfg.dir().join("control.sock").display(),
        port = server.port,
        policy = policy.display(),
    ));
    (cfg, server)
}

fn client(cfg: &TempConfig, server: &Server, tool: &str, args: &str) -> Spawned {
    let argv = python_argv_with(
        &venv_python().display().to_string(),
        CLIENT,
        &[server.url(), tool.to_owned(), args.to_owned()],
    );
    Spawned::spawn(exec_cmd(cfg, Some("nobody"), &argv), "agent", false)
}

fn answer(agent: Spawned) -> Value {
    let out = agent.wait(Duration::from_secs(120));
    assert!(out.success(), "{}", out.describe());
    let line = out.stdout.lines().last().unwrap_or_default().to_owned();
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("client JSON: {}", out.describe()))
}

/// Every event of `kind`, across sessions, once the sessions have ended.
fn events(cfg: &TempConfig, kind: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = sessions(cfg);
        if all.iter().all(session_finished) || Instant::now() > deadline {
            return events_in(cfg, &all, kind);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn texts(answer: &Value) -> String {
    answer["text"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[test]
fn a_read_only_tool_runs_and_its_result_reaches_the_agent_masked() {
    require_root!();
    let (cfg, server) = setup();
    let got = answer(client(&cfg, &server, "get_customer", r#"{"id": 7}"#));
    assert_eq!(
        got["tools"],
        json!(["delete_customer", "get_customer"]),
        "{got}"
    );
    assert_eq!(got["isError"], json!(false), "{got}");
    let text = texts(&got);
    assert!(
        text.contains("Ada Lovelace"),
        "the record came through: {text}"
    );
    assert!(!text.contains(EMAIL), "the email is masked: {text}");
    assert!(!text.contains(CARD), "the card number is masked: {text}");
    let calls = events(&cfg, "mcp_call");
    let statements: Vec<&str> = calls
        .iter()
        .filter_map(|e| e["statement"].as_str())
        .collect();
    assert!(
        statements.contains(&"tools/list"),
        "tools/list journaled: {}",
        pretty_rows(&calls)
    );
    let call = calls
        .iter()
        .find(|e| {
            e["statement"]
                .as_str()
                .is_some_and(|s| s.starts_with("tools/call get_customer"))
        })
        .unwrap_or_else(|| panic!("the tool call is journaled: {}", pretty_rows(&calls)));
    assert_eq!(
        call["rule"],
        json!("mcp-read-only-tools"),
        "{}",
        pretty(call)
    );
    assert!(
        call.to_string().contains("get_customer") && call.to_string().contains("masked"),
        "the event names the tool and what was masked: {}",
        pretty(call)
    );
    let raw = calls.iter().map(Value::to_string).collect::<String>();
    assert!(!raw.contains(EMAIL), "no unmasked value in the journal");
    assert!(
        events(&cfg, "http_request").is_empty(),
        "an MCP POST is journaled as its calls, not twice"
    );
}

#[test]
fn a_destructive_tool_is_held_and_never_runs_when_denied() {
    require_root!();
    let (cfg, server) = setup();
    let agent = client(&cfg, &server, "delete_customer", r#"{"id": 1}"#);
    let held = first_pending(&cfg, Duration::from_secs(60));
    assert_eq!(
        held["statement"],
        json!(r#"tools/call delete_customer {"id":1}"#),
        "{}",
        pretty(&held)
    );
    assert_eq!(held["rule"], json!("mcp-tool-calls"), "{}", pretty(&held));
    assert_eq!(server.deletions(), 0, "nothing ran while held");
    let id = held["id"].as_str().expect("id");
    assert!(approvals_cli(&cfg, &["deny", id, "--reason", "not today"]).success());
    let got = answer(agent);
    assert_eq!(got["isError"], json!(true), "{got}");
    assert!(texts(&got).contains("not today"), "{got}");
    assert_eq!(server.deletions(), 0, "a denied tool call never ran");
}

#[test]
fn a_held_tool_call_nobody_decides_times_out_and_never_runs() {
    require_root!();
    let (cfg, server) = setup_with_review_timeout(2);
    let started = Instant::now();
    let agent = client(&cfg, &server, "delete_customer", r#"{"id": 3}"#);
    let held = first_pending(&cfg, Duration::from_secs(60));
    assert_eq!(held["rule"], json!("mcp-tool-calls"), "{}", pretty(&held));
    let got = answer(agent);
    assert_eq!(got["isError"], json!(true), "{got}");
    assert!(texts(&got).contains("timed out"), "{got}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "answered only once the review timed out"
    );
    assert_eq!(
        server.deletions(),
        0,
        "a tool call nobody approved never ran"
    );
    let calls = events(&cfg, "mcp_call");
    assert!(
        calls
            .iter()
            .any(|e| e["decision"] == json!("review") && e["rule"] == json!("mcp-tool-calls")),
        "the held call is journaled: {calls:#?}"
    );
}

#[test]
fn a_destructive_tool_approved_runs_exactly_once() {
    require_root!();
    let (cfg, server) = setup();
    let agent = client(&cfg, &server, "delete_customer", r#"{"id": 2}"#);
    let held = first_pending(&cfg, Duration::from_secs(60));
    let id = held["id"].as_str().expect("id");
    assert!(approvals_cli(&cfg, &["approve", id]).success());
    let got = answer(agent);
    assert_eq!(got["isError"], json!(false), "{got}");
    assert!(texts(&got).contains("deleted customer 2"), "{got}");
    assert_eq!(server.deletions(), 1, "approved once: ran once");
}

/// A stateful session as the SDK runs it by default: the server assigns a session id at
/// `initialize`, and the client ends the session with an HTTP `DELETE` carrying it.
const STATEFUL_CLIENT: &str = r#"
import asyncio, json, sys
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
url = sys.argv[1]
async def main():
    async with streamablehttp_client(url, timeout=120, sse_read_timeout=300) as (r, w, session_id):
        async with ClientSession(r, w) as s:
            await s.initialize()
            await s.list_tools()  # so the gateway knows get_customer is read-only
            res = await s.call_tool("get_customer", {"id": 5})
            print(json.dumps({"session": session_id(), "isError": res.isError}), flush=True)
asyncio.run(main())
"#;

/// curl printing only the HTTP status of its answer.
const CURL_STATUS_ONLY: &[&str] = &["-sS", "-o", "/dev/null", "-w", "%{http_code}"];

#[test]
fn a_stateful_session_ends_without_a_hold_and_a_made_up_session_id_is_held() {
    require_root!();
    let (cfg, server) = setup_server(60, true);
    let argv = python_argv_with(
        &venv_python().display().to_string(),
        STATEFUL_CLIENT,
        &[server.url()],
    );
    let got = answer(Spawned::spawn(
        exec_cmd(&cfg, Some("nobody"), &argv),
        "agent",
        false,
    ));
    assert_eq!(got["isError"], json!(false), "{got}");
    let session = got["session"]
        .as_str()
        .expect("the server assigned a session id");

    // The session's DELETE reached the server: asked directly, it no longer knows the id.
    let direct = format!("http://{SERVER_HOST}:{}/mcp", server.port);
    let ping = r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#;
    let status = std::process::Command::new("curl")
        .args(CURL_STATUS_ONLY)
        .args(["--max-time", "30"])
        .args(["-H", "content-type: application/json"])
        .args(["-H", "accept: application/json, text/event-stream"])
        .args(["-H", &format!("mcp-session-id: {session}")])
        .args(["--data-binary", ping, &direct])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "404",
        "the server ended the session"
    );
    let ends: Vec<Value> = events(&cfg, "mcp_call")
        .into_iter()
        .filter(|e| e["statement"] == json!("session/terminate"))
        .collect();
    assert!(
        ends.len() == 1
            && ends[0]["decision"] == json!("allow")
            && ends[0]["rule"] == json!("mcp-session"),
        "the session's end is journaled as MCP's, allowed: {ends:#?}"
    );

    // The same DELETE with an id the server never assigned is an HTTP DELETE: held, and
    // refused when denied.
    let curl = Spawned::spawn(
        exec_cmd(
            &cfg,
            Some("nobody"),
            &[
                &["curl"],
                CURL_STATUS_ONLY,
                &["--max-time", "60", "-X", "DELETE"],
            ]
            .concat()
            .into_iter()
            .chain(["-H", "mcp-session-id: made-up", &server.url()])
            .collect::<Vec<_>>(),
        ),
        "agent",
        false,
    );
    let held = first_pending(&cfg, Duration::from_secs(60));
    assert_eq!(
        held["statement"],
        json!(format!("DELETE {}", server.url())),
        "{}",
        pretty(&held)
    );
    let id = held["id"].as_str().expect("id");
    assert!(approvals_cli(
        &cfg,
        &["deny", id, "--reason", "not a session of the server"]
    )
    .success());
    let out = curl.wait(Duration::from_secs(60));
    assert_eq!(out.stdout, "403", "{}", out.describe());
}

#[test]
fn a_json_rpc_body_that_reads_two_ways_is_refused() {
    require_root!();
    let (cfg, server) = setup();
    // The tool named twice: the gateway would judge one, the server might run the other.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","name":"delete_customer","arguments":{"id":3}}}"#;
    let out = run_exec(
        &cfg,
        Some("nobody"),
        &[
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-w",
            "\n%{http_code}\n",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "--data-binary",
            body,
            &server.url(),
        ],
    );
    assert!(out.success(), "{}", out.describe());
    let mut lines = out.stdout.lines();
    let answer: Value = serde_json::from_str(lines.next().unwrap_or_default())
        .unwrap_or_else(|_| panic!("JSON-RPC error: {}", out.describe()));
    assert_eq!(lines.next(), Some("400"), "{}", out.describe());
    assert_eq!(answer["error"]["code"], json!(-32001), "{answer}");
    assert_eq!(server.deletions(), 0);
}

#[test]
fn an_autogen_agent_with_mcp_workbench_reads_masked_and_is_held_on_delete() {
    require_root!();
    let (cfg, server) = setup();
    let argv = vec![
        venv_python().display().to_string(),
        workspace_root()
            .join("demo/mcp_agent.py")
            .display()
            .to_string(),
        server.url(),
        "--json".to_owned(),
    ];
    let agent = Spawned::spawn(exec_cmd(&cfg, Some("nobody"), &argv), "agent", false);
    let held = first_pending(&cfg, Duration::from_secs(90));
    assert_eq!(
        held["statement"],
        json!(r#"tools/call delete_customer {"id":1}"#),
        "{}",
        pretty(&held)
    );
    let id = held["id"].as_str().expect("id");
    assert!(approvals_cli(&cfg, &["deny", id, "--reason", "keep the customer"]).success());
    let got = answer(agent);
    let calls = got["calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 2, "{got}");
    assert_eq!(calls[0]["tool"], json!("get_customer"), "{got}");
    assert_eq!(calls[0]["is_error"], json!(false), "{got}");
    let read = calls[0]["result"].as_str().unwrap_or_default();
    assert!(read.contains("Ada Lovelace"), "{got}");
    assert!(
        !read.contains(EMAIL) && !read.contains(CARD),
        "masked: {got}"
    );
    assert_eq!(calls[1]["tool"], json!("delete_customer"), "{got}");
    assert_eq!(calls[1]["is_error"], json!(true), "{got}");
    assert!(
        calls[1]["result"]
            .as_str()
            .unwrap_or_default()
            .contains("keep the customer"),
        "{got}"
    );
    assert_eq!(server.deletions(), 0, "the denied tool never ran");
}
