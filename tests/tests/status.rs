//! `interceptor status` and the metrics endpoint, against the service (`interceptor run`) with
//! a real PostgreSQL, psql agents in a captured cgroup, a syslog sink nobody listens on, and a
//! Python HTTP client scraping the endpoint.

use std::{process::Command, time::Duration};

use interceptor_tests::*;

/// argv: url. Reports the HTTP status and body (errors as their status).
const SCRAPE: &str = r#"
import urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], method=sys.argv[2])
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        report(status=r.status, content_type=r.headers.get("Content-Type"), body=r.read().decode())
except urllib.error.HTTPError as e:
    report(status=e.code, body="")
"#;

fn scrape(port: u16, path: &str, method: &str) -> Value {
    let out = run_python(
        SCRAPE,
        &[format!("http://127.0.0.1:{port}{path}"), method.to_owned()],
        Duration::from_secs(30),
    );
    assert!(out.success(), "{}", out.describe());
    out.json()
}

/// The value of the one sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The whole of stdout as JSON (`--json` prints it pretty, over several lines).
fn whole_json(out: &Output) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", out.describe()))
}

fn status(cfg: &TempConfig, json: bool) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("status");
    if json {
        cmd.arg("--json");
    }
    run_command(cmd, Duration::from_secs(60))
}

/// psql in `cgroup`, as the service's agents are; `-c` per statement.
fn psql_in_cgroup(cgroup: &CgroupDir, pg: &PgServer, statements: &[&str]) -> Command {
    in_cgroup(cgroup, &psql_agent_argv(pg, statements))
}

#[test]
fn status_and_metrics_report_sessions_decisions_holds_journal_and_sinks() {
    require_root!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE acct (id int, bal int); INSERT INTO acct VALUES (1, 100); GRANT ALL ON acct TO PUBLIC",
    );
    // Declaration order = reverse drop order: the daemon goes first, then the pins, then the
    // cgroup's processes.
    let cgroup = CgroupDir::new(&unique_name("interceptor-status"));
    let cfg = TempConfig::new("");
    let pins = PinDir::new(&cfg.path);
    let (proxy, metrics, dead_syslog) = (free_port(), free_port(), free_port());
    let policy = format!(
        "policy = \"{}\"\n",
        workspace_root().join("policies/default.toml").display()
    );
    cfg.write(&format!(
        "{}\n[proxy]\nport = {proxy}\n\n[capture]\ncgroups = [\"{}\"]\npin_dir = \"{}\"\n\n\
         [approvals]\nsocket = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n\
         [[sink]]\nname = \"siem\"\ntype = \"syslog\"\naddress = \"127.0.0.1:{dead_syslog}\"\n",
        pg_config_text(&cfg, pg.port(), &policy),
        cgroup.relative(),
        pins.path.display(),
        cfg.dir().join("control.sock").display(),
    ));
    let echo = EchoServer::start("127.0.0.3");
    let daemon = Daemon::start(&cfg);

    // A read (allowed), a DROP (denied by a rule), a connection to no target (plain TCP), and
    // an UPDATE held for review in the background.
    let read = run_command(
        psql_in_cgroup(&cgroup, &pg, &["SELECT bal FROM acct"]),
        Duration::from_secs(30),
    );
    assert!(read.success(), "{}", read.describe());
    assert_eq!(read.stdout.lines().nth(2).map(str::trim), Some("100"));
    let dropped = run_command(
        psql_in_cgroup(&cgroup, &pg, &["DROP TABLE acct"]),
        Duration::from_secs(30),
    );
    assert!(
        !dropped.success(),
        "DROP should be denied\n{}",
        dropped.describe()
    );
    let tcp = run_python_in_cgroup(
        &cgroup,
        "report(**echo_once(socket.AF_INET, (sys.argv[1], int(sys.argv[2])), b'ping'))",
        &["127.0.0.3".into(), echo.port().to_string()],
        Duration::from_secs(30),
    );
    assert!(tcp.success(), "{}", tcp.describe());
    let held = Spawned::spawn(
        psql_in_cgroup(&cgroup, &pg, &["UPDATE acct SET bal = 0 WHERE id = 1"]),
        "held agent",
        false,
    );

    // status --json: everything, once the hold is registered.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let report = loop {
        let out = status(&cfg, true);
        assert_eq!(out.code(), Some(0), "{}", out.describe());
        let report = whole_json(&out);
        if report["daemon"]["running"]["approvals"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
        {
            break report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the held UPDATE never showed: {}",
            pretty(&report)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let d = &report["daemon"]["running"];
    assert_eq!(d["pid"], json!(daemon.pid()), "{}", pretty(&report));
    assert_eq!(d["capture_mode"], json!("all"));
    assert_eq!(
        d["limits"],
        json!({
            "startup_timeout_secs": 10,
            "idle_timeout_secs": 3600,
            "max_sessions": 4096,
            "max_sessions_per_uid": 512,
            "max_sessions_per_run": 256,
        }),
        "{}",
        pretty(d)
    );
    assert_eq!(d["cgroups"], json!([format!("/{}", cgroup.relative())]));
    let sessions = d["sessions"].as_array().expect("sessions");
    let appdb = sessions
        .iter()
        .find(|s| s["target"] == json!("appdb"))
        .unwrap_or_else(|| panic!("no appdb sessions: {}", pretty(d)));
    assert_eq!(appdb["protocol"], json!("postgres"));
    assert_eq!(appdb["total"], json!(3), "{}", pretty(d));
    assert_eq!(
        appdb["open"],
        json!(1),
        "the held session is open: {}",
        pretty(d)
    );
    assert!(
        sessions.iter().any(|s| s["target"] == json!("")
            && s["protocol"] == json!("tcp")
            && s["total"] == json!(1)),
        "{}",
        pretty(d)
    );
    let decided = |rule: &str, decision: &str| {
        d["decisions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["rule"] == json!(rule) && x["decision"] == json!(decision))
            .map(|x| x["count"].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    assert_eq!(decided("no-schema-changes", "deny"), 1, "{}", pretty(d));
    assert_eq!(decided("writes-need-review", "review"), 1, "{}", pretty(d));
    assert!(decided("reads", "allow") >= 1, "{}", pretty(d));
    let pending = &d["approvals"][0];
    assert_eq!(pending["target"], json!("appdb"));
    assert_eq!(pending["rule"], json!("writes-need-review"));
    assert!(pending["waiting_seconds"].as_f64().is_some());
    assert!(
        d["journal_commit"]["count"].as_u64().unwrap_or(0) >= 4,
        "{}",
        pretty(d)
    );
    assert_eq!(report["capture"]["pinned"], json!(true));
    assert_eq!(report["capture"]["cgroups"], json!(1));
    assert_eq!(
        report["journal"]["verified"],
        json!(true),
        "{}",
        pretty(&report)
    );
    let head = report["journal"]["head"]["seq"].as_i64().unwrap_or(0);
    assert!(head > 0, "{}", pretty(&report));
    let siem = &report["sinks"][0];
    assert_eq!(siem["name"], json!("siem"));
    assert!(
        siem["lag"].as_i64().unwrap_or(0) > 0,
        "nothing delivered to a dead sink: {}",
        pretty(&report)
    );

    // The table is still there, and the held UPDATE has not run: the effects match.
    assert_eq!(pg.psql_db("appdb", "SELECT bal FROM acct").trim(), "100");

    // The text report says the same for a person.
    let text = status(&cfg, false);
    assert_eq!(text.code(), Some(0), "{}", text.describe());
    for needle in [
        "daemon:    running",
        "limits:    4096 sessions, 512 per uid, 256 per run; start-up 10 s, idle 3600 s",
        "approvals: 1 pending",
        "verify:    ok",
        "sink:      siem",
    ] {
        assert!(
            text.stdout.contains(needle),
            "{needle:?} missing\n{}",
            text.stdout
        );
    }

    // The metrics endpoint, scraped by a real HTTP client.
    let m = scrape(metrics, "/metrics", "GET");
    assert_eq!(m["status"], json!(200), "{}", pretty(&m));
    assert!(m["content_type"]
        .as_str()
        .unwrap_or("")
        .starts_with("text/plain; version=0.0.4"));
    let body = m["body"].as_str().unwrap_or("");
    let at =
        |series: &str| sample(body, series).unwrap_or_else(|| panic!("no sample {series}\n{body}"));
    assert_eq!(
        at("interceptor_sessions_total{target=\"appdb\",protocol=\"postgres\"}"),
        3.0
    );
    assert_eq!(
        at("interceptor_sessions_open{target=\"appdb\",protocol=\"postgres\"}"),
        1.0
    );
    assert_eq!(
        at("interceptor_session_limit{limit=\"max_sessions_per_uid\"}"),
        512.0
    );
    assert_eq!(
        at("interceptor_sessions_total{target=\"\",protocol=\"tcp\"}"),
        1.0
    );
    assert_eq!(
        at("interceptor_decisions_total{target=\"appdb\",rule=\"no-schema-changes\",decision=\"deny\"}"),
        1.0
    );
    assert_eq!(at("interceptor_approvals_pending"), 1.0);
    assert!(at("interceptor_journal_commit_seconds_count") >= 4.0);
    assert!(at("interceptor_journal_commit_seconds_bucket{le=\"+Inf\"}") >= 4.0);
    assert!(at("interceptor_sink_lag_events{sink=\"siem\"}") > 0.0);
    assert!(at("interceptor_journal_head_seq") >= head as f64);
    assert!(
        body.contains("interceptor_approval_wait_seconds{id=\""),
        "{body}"
    );
    assert_eq!(scrape(metrics, "/other", "GET")["status"], json!(404));
    assert_eq!(scrape(metrics, "/metrics", "POST")["status"], json!(405));

    // Daemon down: status still reports the pins (which now refuse), and exits 5.
    drop(held);
    let log = daemon.kill();
    let down = status(&cfg, false);
    assert_eq!(down.code(), Some(5), "{}\n{log}", down.describe());
    assert!(
        down.stdout.contains("captured connections are REFUSED"),
        "{}",
        down.stdout
    );
    let down = status(&cfg, true);
    assert_eq!(down.code(), Some(5), "{}", down.describe());
    let down = whole_json(&down);
    assert!(
        down["daemon"]["not_running"].is_string(),
        "{}",
        pretty(&down)
    );
    assert_eq!(down["capture"]["pinned"], json!(true));
}
