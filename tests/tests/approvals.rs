//! Approval holds against a real PostgreSQL: a statement the policy sends to review waits for a
//! human on the control socket. The agent runs as a non-root user; the approver is root.

use std::time::{Duration, Instant};

use interceptor_tests::*;

/// A config whose target uses the shipped default policy (writes go to review), with the
/// control sockets in the test's own directory. `review_timeout` replaces the policy's.
fn config(pg: &PgServer, review_timeout: Option<u64>) -> TempConfig {
    let cfg = TempConfig::new("");
    let default = workspace_root().join("policies/default.toml");
    let path = match review_timeout {
        None => default,
        Some(secs) => {
            let text = std::fs::read_to_string(&default).expect("default policy");
            let path = cfg.dir().join("policy.toml");
            let changed = text.replace(
                "review_timeout_secs = 300",
                &format!("review_timeout_secs = {secs}"),
            );
            assert_ne!(changed, text, "the default policy sets a review timeout");
            std::fs::write(&path, changed).expect("write policy");
            path
        }
    };
    let policy = format!("policy = \"{}\"\n", path.display());
    let text = pg_config_text(&cfg, pg.port(), &policy);
    cfg.write(&format!(
        "{text}\n[approvals]\nsocket = \"{}\"\n",
        cfg.dir().join("control.sock").display()
    ));
    cfg
}

fn setup(pg: &PgServer) {
    pg.psql_db(
        "appdb",
        "CREATE TABLE acct (id int, bal int); INSERT INTO acct VALUES (1, 100); GRANT ALL ON acct TO PUBLIC",
    );
}

fn balance(pg: &PgServer) -> String {
    pg.psql_db("appdb", "SELECT bal FROM acct WHERE id = 1")
        .trim()
        .to_owned()
}

/// psql under exec as `user`, running each of `statements`, in the background.
fn agent(cfg: &TempConfig, pg: &PgServer, user: &str, statements: &[&str]) -> Spawned {
    let argv = psql_agent_argv(pg, statements);
    Spawned::spawn(exec_cmd(cfg, Some(user), &argv), "agent", false)
}

fn approvals(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("approvals").args(args);
    run_command(cmd, Duration::from_secs(30))
}

/// Waits for `n` pending requests and returns them.
fn pending(cfg: &TempConfig, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = approvals(cfg, &["list", "--json"]);
        let parsed: Option<Value> = serde_json::from_str(&out.stdout).ok();
        if let Some(list) = parsed.and_then(|v| v.as_array().cloned()) {
            if list.len() >= n {
                return list;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no pending approval appeared: {}",
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn decisions(cfg: &TempConfig) -> Vec<Value> {
    sessions(cfg)
        .iter()
        .flat_map(|s| {
            session_show(cfg, s["id"].as_i64().expect("id"))["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|e| e["kind"] == json!("approval_decision"))
        .collect()
}

#[test]
fn a_held_update_runs_once_when_approved_by_another_uid() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, None);
    let agent = agent(
        &cfg,
        &pg,
        "nobody",
        &["UPDATE acct SET bal = bal + 1 WHERE id = 1"],
    );
    let list = pending(&cfg, 1);
    let r = &list[0];
    assert_eq!(r["status"], json!("pending"), "{}", pretty(r));
    assert_eq!(r["uid"], json!(65534), "{}", pretty(r));
    assert_eq!(r["rule"], json!("writes-need-review"), "{}", pretty(r));
    assert!(r["statement"]
        .as_str()
        .unwrap_or_default()
        .contains("UPDATE acct"));
    assert_eq!(balance(&pg), "100", "held: nothing ran yet");

    let id = r["id"].as_str().expect("id");
    let out = approvals(&cfg, &["approve", id, "--reason", "looks right"]);
    assert!(out.success(), "{}", out.describe());
    let done = agent.wait(Duration::from_secs(30));
    assert!(done.success(), "{}", done.describe());
    assert!(
        done.stderr.contains("held for approval"),
        "the client saw the notice: {}",
        done.describe()
    );
    assert_eq!(balance(&pg), "101", "the update ran exactly once");
    let d = decisions(&cfg);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0]["detail"]["status"], json!("approved"));
    assert_eq!(d[0]["detail"]["approver_uid"], json!(0));
    assert_eq!(d[0]["detail"]["reason"], json!("looks right"));
}

#[test]
fn a_denied_hold_gets_42501_with_the_approver_and_reason() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, None);
    let agent = agent(&cfg, &pg, "nobody", &["UPDATE acct SET bal = 0"]);
    let id = pending(&cfg, 1)[0]["id"].as_str().expect("id").to_owned();
    let out = approvals(&cfg, &["deny", &id, "--reason", "not today"]);
    assert!(out.success(), "{}", out.describe());
    let done = agent.wait(Duration::from_secs(30));
    assert!(!done.success(), "{}", done.describe());
    assert!(
        done.stderr.contains("denied by root: not today"),
        "{}",
        done.describe()
    );
    assert_eq!(balance(&pg), "100");
    assert_eq!(decisions(&cfg)[0]["detail"]["status"], json!("denied"));
}

#[test]
fn an_unanswered_hold_times_out_and_nothing_runs() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, Some(2));
    let started = Instant::now();
    let done =
        agent(&cfg, &pg, "nobody", &["UPDATE acct SET bal = 0"]).wait(Duration::from_secs(30));
    assert!(!done.success(), "{}", done.describe());
    assert!(done.stderr.contains("timed out"), "{}", done.describe());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(balance(&pg), "100");
    assert_eq!(decisions(&cfg)[0]["detail"]["status"], json!("expired"));
}

#[test]
fn the_requesting_uid_cannot_approve_its_own_request() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, Some(4));
    // The agent runs as root, like the approver: root cannot approve its own request.
    let agent = agent(&cfg, &pg, "root", &["UPDATE acct SET bal = 0"]);
    let id = pending(&cfg, 1)[0]["id"].as_str().expect("id").to_owned();
    let out = approvals(&cfg, &["approve", &id]);
    assert!(!out.success(), "{}", out.describe());
    assert!(out.stderr.contains("cannot approve"), "{}", out.describe());
    let done = agent.wait(Duration::from_secs(30));
    assert!(!done.success(), "{}", done.describe());
    assert_eq!(balance(&pg), "100");
}

#[test]
fn a_run_scoped_approval_covers_the_same_statement_with_other_literals() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, None);
    let agent = agent(
        &cfg,
        &pg,
        "nobody",
        &[
            "UPDATE acct SET bal = bal + 1 WHERE id = 1",
            "UPDATE acct SET bal = bal + 5 WHERE id = 1",
        ],
    );
    let id = pending(&cfg, 1)[0]["id"].as_str().expect("id").to_owned();
    let out = approvals(&cfg, &["approve", &id, "--scope", "run"]);
    assert!(out.success(), "{}", out.describe());
    // The second statement differs only in a literal: not held again in this run.
    let done = agent.wait(Duration::from_secs(30));
    assert!(done.success(), "{}", done.describe());
    assert_eq!(balance(&pg), "106");
    // A new run is asked again.
    let again = agent_once_more(&cfg, &pg);
    let list = pending(&cfg, 1);
    assert_eq!(list.len(), 1, "a new run is held again");
    let id = list[0]["id"].as_str().expect("id").to_owned();
    assert!(approvals(&cfg, &["deny", &id, "--reason", "enough"]).success());
    assert!(!again.wait(Duration::from_secs(30)).success());
    assert_eq!(balance(&pg), "106");
}

fn agent_once_more(cfg: &TempConfig, pg: &PgServer) -> Spawned {
    agent(
        cfg,
        pg,
        "nobody",
        &["UPDATE acct SET bal = bal + 7 WHERE id = 1"],
    )
}

/// Service mode: the daemon dies while a request is pending. The client's connection goes with
/// it, and the restarted daemon marks the request expired: it can never run later.
#[test]
fn a_request_pending_when_the_service_dies_is_expired_on_restart() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cgroup = CgroupDir::new(&unique_name("interceptor-test"));
    let cfg = config(&pg, None);
    let pins = PinDir::new(&cfg.path);
    let port = free_port();
    let text = std::fs::read_to_string(&cfg.path).expect("config");
    cfg.write(&format!(
        "{text}\n[proxy]\nport = {port}\n\n[capture]\nmode = \"all\"\ncgroups = [\"{}\"]\npin_dir = \"{}\"\n",
        cgroup.relative(),
        pins.path.display()
    ));
    let daemon = Daemon::start(&cfg);
    let cmd = in_cgroup(
        &cgroup,
        &[
            psql_bin().display().to_string(),
            format!(
                "host={} port={} dbname=appdb user=agent sslmode=disable",
                pg_dial_host(),
                pg.port()
            ),
            "-c".to_owned(),
            "UPDATE acct SET bal = 0".to_owned(),
        ],
    );
    let agent = Spawned::spawn(cmd, "agent in cgroup", false);
    let id = pending(&cfg, 1)[0]["id"].as_str().expect("id").to_owned();
    daemon.kill();
    let gone = agent.wait(Duration::from_secs(30));
    assert!(
        !gone.success(),
        "the held client loses its connection: {}",
        gone.describe()
    );

    let restarted = Daemon::start(&cfg);
    let d = decisions(&cfg);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0]["detail"]["id"], json!(id));
    assert_eq!(d[0]["detail"]["status"], json!("expired"));
    // The restarted daemon has nothing pending, and approving the old id does nothing.
    assert!(!approvals(&cfg, &["approve", &id]).success());
    drop(restarted);
    assert_eq!(balance(&pg), "100", "the held statement never ran");
}

/// 20 held statements at once, approved one by one in a shuffled order: each approval releases
/// its own statement and no other.
#[test]
fn twenty_concurrent_holds_release_only_their_own_statement() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE many (id int PRIMARY KEY, v int); \
         INSERT INTO many SELECT g, 0 FROM generate_series(1, 20) g; GRANT ALL ON many TO PUBLIC",
    );
    let cfg = config(&pg, None);
    const CLIENT: &str = r#"
import psycopg, threading
H, P = ARGS["host"], int(ARGS["port"])
results = {}
def one(i):
    try:
        with psycopg.connect(conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable"), autocommit=True) as c:
            c.execute(f"UPDATE many SET v = v + 1 WHERE id = {i}")
            results[i] = "ok"
    except Exception as e:
        results[i] = repr(e)
threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 21)]
for t in threads: t.start()
for t in threads: t.join(120)
report(results=results)
"#;
    let args = json!({"host": pg_dial_host(), "port": pg.port()}).to_string();
    let agent = Spawned::spawn(
        exec_cmd(&cfg, Some("nobody"), &venv_python_argv(CLIENT, &[args])),
        "20 held clients",
        false,
    );
    let list = pending(&cfg, 20);
    assert_eq!(list.len(), 20);
    let mut by_row: Vec<(i64, String)> = list
        .iter()
        .map(|r| {
            let statement = r["statement"].as_str().expect("statement");
            let row: i64 = statement
                .rsplit("id = ")
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("row in {statement}"));
            (row, r["id"].as_str().expect("id").to_owned())
        })
        .collect();
    // A fixed shuffle: deterministic, and not the order they arrived in.
    by_row.sort_by_key(|(row, _)| (row * 7919) % 23);
    let mut released = std::collections::BTreeSet::new();
    for (row, id) in &by_row {
        assert!(approvals(&cfg, &["approve", id]).success());
        released.insert(*row);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let changed: std::collections::BTreeSet<i64> = pg
                .psql_db("appdb", "SELECT id FROM many WHERE v = 1 ORDER BY id")
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if changed == released {
                break;
            }
            assert!(
                changed.is_subset(&released),
                "a row changed before its approval: changed {changed:?}, approved {released:?}"
            );
            assert!(
                Instant::now() < deadline,
                "row {row} not released by its approval"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let done = agent.wait(Duration::from_secs(60));
    assert!(done.success(), "{}", done.describe());
    assert_eq!(
        pg.psql_db("appdb", "SELECT sum(v) FROM many").trim(),
        "20",
        "each update ran exactly once"
    );
}

/// A tiny HTTP receiver for webhook tests: records each POST body, answers 200.
struct Receiver {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(64) {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0u8; length.min(1 << 20)];
                let _ = reader.read_exact(&mut body);
                sink.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&body).into_owned());
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Receiver { port, bodies }
    }
}

fn with_webhook(cfg: &TempConfig, url: &str, format: &str) {
    let text = std::fs::read_to_string(&cfg.path).expect("config");
    let text = text.replace(
        "[approvals]\n",
        &format!("[approvals]\nwebhook = \"{url}\"\nwebhook_format = \"{format}\"\n"),
    );
    cfg.write(&text);
}

#[test]
fn the_webhook_receives_each_request_and_a_dead_receiver_loses_nothing() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);

    // A live receiver gets the request (Slack-compatible text here).
    let receiver = Receiver::start();
    let cfg = config(&pg, None);
    with_webhook(
        &cfg,
        &format!("http://127.0.0.1:{}/hook", receiver.port),
        "slack",
    );
    let agent1 = agent(&cfg, &pg, "nobody", &["UPDATE acct SET bal = bal + 1"]);
    let id = pending(&cfg, 1)[0]["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.bodies.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline, "the webhook never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
    let body: Value =
        serde_json::from_str(&receiver.bodies.lock().expect("lock")[0]).expect("json body");
    let text = body["text"].as_str().unwrap_or_default();
    assert!(text.contains(&id) && text.contains("UPDATE acct"), "{body}");
    assert!(approvals(&cfg, &["approve", &id]).success());
    assert!(agent1.wait(Duration::from_secs(30)).success());

    // No receiver: the request still works through the CLI, and the failure is journaled.
    let cfg = config(&pg, None);
    with_webhook(
        &cfg,
        &format!("http://127.0.0.1:{}/hook", free_port()),
        "json",
    );
    let agent2 = agent(&cfg, &pg, "nobody", &["UPDATE acct SET bal = bal + 1"]);
    let id = pending(&cfg, 1)[0]["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = sessions(&cfg).iter().any(|s| {
            session_show(&cfg, s["id"].as_i64().expect("id"))["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    e["kind"] == json!("notification_failed") && e["detail"]["id"] == json!(id)
                })
        });
        if failed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed notification was not journaled"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(approvals(&cfg, &["approve", &id]).success());
    assert!(agent2.wait(Duration::from_secs(30)).success());
    assert_eq!(balance(&pg), "102");
}

/// `approvals watch` without a terminal streams one JSON object per new request.
#[test]
fn watch_streams_new_requests_as_json_lines_without_a_terminal() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, None);
    let mut watch_cmd = interceptor_cmd(Some(&cfg));
    watch_cmd.args(["approvals", "watch"]);
    let mut watch = Spawned::spawn(watch_cmd, "approvals watch", false);
    let agent = agent(&cfg, &pg, "nobody", &["UPDATE acct SET bal = bal + 1"]);
    let line = watch
        .wait_json_line(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no JSON line from watch: {}", watch.stdout_so_far()));
    assert_eq!(line["status"], json!("pending"), "{}", pretty(&line));
    assert_eq!(line["uid"], json!(65534), "{}", pretty(&line));
    let id = line["id"].as_str().expect("id").to_owned();
    assert!(approvals(&cfg, &["approve", &id]).success());
    assert!(agent.wait(Duration::from_secs(30)).success());
    assert_eq!(balance(&pg), "101");
}

/// `approvals watch` on a terminal (tmux): shows the request and takes "a" to approve.
#[test]
fn watch_prompts_on_a_terminal_and_approves() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, None);
    let session = unique_name("interceptor-watch");
    let command = format!(
        "{} --config {} approvals watch",
        interceptor_bin().display(),
        cfg.path.display()
    );
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux")
    };
    struct KillSession(String);
    impl Drop for KillSession {
        fn drop(&mut self) {
            let _ = std::process::Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .output();
        }
    }
    assert!(tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "200",
        "-y",
        "50",
        &command
    ])
    .status
    .success());
    let _guard = KillSession(session.clone());
    let agent = agent(&cfg, &pg, "nobody", &["UPDATE acct SET bal = bal + 1"]);
    let id = pending(&cfg, 1)[0]["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
            .into_owned();
        if screen.contains(&id) && screen.contains("[a]pprove") {
            assert!(screen.contains("UPDATE"), "{screen}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watch never showed {id}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(tmux(&["send-keys", "-t", &session, "a", "Enter"])
        .status
        .success());
    let done = agent.wait(Duration::from_secs(30));
    assert!(done.success(), "{}", done.describe());
    assert_eq!(balance(&pg), "101");
}

/// A uid outside the approvers group cannot use the control socket.
#[test]
fn a_uid_outside_the_approvers_group_cannot_use_the_socket() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, Some(5));
    let agent = agent(&cfg, &pg, "nobody", &["UPDATE acct SET bal = 0"]);
    let id = pending(&cfg, 1)[0]["id"].as_str().expect("id").to_owned();
    // A copy of the binary that uid 65534 can run wherever the build lives.
    let bin = cfg.dir().join("interceptor");
    std::fs::copy(interceptor_bin(), &bin).expect("copy binary");
    let socket = cfg.dir().join(
        std::fs::read_dir(cfg.dir())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("exec-") && n.ends_with(".sock"))
            .expect("the run's control socket"),
    );
    let as_nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.current_dir("/")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("--config")
            .arg(&cfg.path)
            .args(["approvals", "--socket"])
            .arg(&socket)
            .args(args);
        run_command(cmd, Duration::from_secs(30))
    };
    // The socket's mode keeps uid 65534 out before the daemon's own check: exit 3, and the
    // message says which group to join. `watch` says the same at once, rather than watching
    // a socket it can never read.
    for out in [as_nobody(&["approve", &id]), as_nobody(&["watch"])] {
        assert_eq!(out.code(), Some(3), "{}", out.describe());
        assert!(
            out.stderr.contains(&format!(
                "permission denied on {}: join the `",
                socket.display()
            )) && out.stderr.contains("` group to decide approvals"),
            "{}",
            out.describe()
        );
    }
    let done = agent.wait(Duration::from_secs(30));
    assert!(
        !done.success(),
        "still held, then timed out: {}",
        done.describe()
    );
    assert_eq!(balance(&pg), "100");
}

/// An approval dies with its run: when the command ends while a statement is held, the request
/// is expired (and journaled), and it can no longer be approved.
#[test]
fn a_held_statement_expires_when_its_run_ends() {
    require_root!();
    let pg = PgServer::start();
    setup(&pg);
    let cfg = config(&pg, None);
    let agent = agent(&cfg, &pg, "nobody", &["UPDATE acct SET bal = 0"]);
    let request = pending(&cfg, 1).remove(0);
    let pid = request["pid"].as_i64().expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the agent");
    let done = agent.wait(Duration::from_secs(30));
    assert!(!done.success(), "{}", done.describe());
    let d = decisions(&cfg);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0]["detail"]["id"], request["id"]);
    assert_eq!(d[0]["detail"]["status"], json!("expired"));
    assert_eq!(balance(&pg), "100");
}
