//! The product's story with a real AutoGen agent (`demo/agent.py`, the agent of `make demo`):
//! an `AssistantAgent` driven offline by `ReplayChatCompletionClient` calls a psycopg tool
//! three times under `interceptor exec`, as an unprivileged user, with no password of its own.
//! The shipped default policy masks the SELECT's personal data, holds the UPDATE until root
//! (another uid) approves it through the CLI, and denies the DROP TABLE. The journal must say
//! who, which run, what was decided and by whom; the agent and the journal must never see the
//! backend credential or the clear values.
//!
//! A second test runs `scripts/demo.sh` itself, so `make demo` cannot rot unnoticed.

use std::time::{Duration, Instant};

use interceptor_tests::*;

/// Clear values from demo/seed.sql that the default policy masks.
const CLEAR: &[&str] = &[
    "ada.lovelace@example.com",
    "alan.turing@example.com",
    "grace.hopper@example.com",
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
];

fn seed(pg: &PgServer) {
    let sql = std::fs::read_to_string(workspace_root().join("demo/seed.sql")).expect("seed.sql");
    // Owned by the gateway's upstream role, so a forwarded DROP TABLE would succeed: only the
    // policy stands in its way.
    pg.psql_db(
        PG_DB,
        &format!("{sql}\nALTER TABLE customers OWNER TO scram_user;"),
    );
}

fn config(pg: &PgServer) -> TempConfig {
    let cfg = TempConfig::new("");
    let secret = write_secret(&cfg, "secret", SCRAM_PASSWORD);
    let text = pg_config_text(
        &cfg,
        pg.port(),
        &format!(
            "policy = \"{}\"\n[target.credentials]\nuser = \"scram_user\"\npassword_file = \"{}\"\n",
            workspace_root().join("policies/default.toml").display(),
            secret.display()
        ),
    );
    cfg.write(&format!(
        "{text}\n[approvals]\nsocket = \"{}\"\n",
        cfg.dir().join("control.sock").display()
    ));
    cfg
}

fn approvals(cfg: &TempConfig, args: &[&str]) -> Output {
    let mut cmd = interceptor_cmd(Some(cfg));
    cmd.arg("approvals").args(args);
    run_command(cmd, Duration::from_secs(30))
}

/// The first pending request, once it appears (the agent's UPDATE).
fn wait_pending(cfg: &TempConfig, agent: &mut Spawned) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = approvals(cfg, &["list", "--json"]);
        let list: Option<Value> = serde_json::from_str(&out.stdout).ok();
        if let Some(first) = list.and_then(|v| v.as_array().and_then(|a| a.first().cloned())) {
            return first;
        }
        assert!(
            agent.try_status().is_none(),
            "the agent exited before its UPDATE was held\nstdout: {}\nstderr: {}",
            agent.stdout_so_far(),
            agent.stderr_so_far()
        );
        assert!(
            Instant::now() < deadline,
            "no approval request appeared: {}\nagent stderr: {}",
            out.describe(),
            agent.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tier(pg: &PgServer, id: u32) -> String {
    pg.psql_db(
        PG_DB,
        &format!("SELECT tier FROM customers WHERE id = {id}"),
    )
    .trim()
    .to_owned()
}

#[test]
fn an_autogen_agent_gets_a_masked_read_an_approved_write_and_a_denied_drop() {
    require_root!();
    let pg = PgServer::start();
    seed(&pg);
    let cfg = config(&pg);

    let dsn = format!(
        "host={} port={} dbname={PG_DB} user=agent sslmode=disable",
        pg_dial_host(),
        pg.port()
    );
    let argv = [
        venv_python().display().to_string(),
        workspace_root().join("demo/agent.py").display().to_string(),
        "--dsn".to_owned(),
        dsn,
        "--json".to_owned(),
    ];
    let mut agent = Spawned::spawn(exec_cmd(&cfg, Some("nobody"), &argv), "agent", false);

    // The UPDATE is held: requested by the agent's uid, and nothing has run yet.
    let request = wait_pending(&cfg, &mut agent);
    assert_eq!(request["uid"], json!(65534), "{}", pretty(&request));
    assert_eq!(
        request["rule"],
        json!("writes-need-review"),
        "{}",
        pretty(&request)
    );
    assert_eq!(
        request["statement"],
        json!("UPDATE customers SET tier = 'gold' WHERE id = 2"),
        "{}",
        pretty(&request)
    );
    assert_eq!(tier(&pg, 2), "standard", "a held statement has not run");
    let id = request["id"].as_str().expect("request id").to_owned();
    let run_id = request["run_id"].as_str().expect("run id").to_owned();

    let out = approvals(&cfg, &["approve", &id, "--reason", "support ticket"]);
    assert!(out.success(), "{}", out.describe());
    let done = agent.wait(Duration::from_secs(90));
    assert!(done.success(), "{}", done.describe());

    // What the agent received, call by call.
    let report = done.json();
    let calls = report["calls"].as_array().expect("calls").clone();
    assert_eq!(calls.len(), 3, "{}", pretty(&report));
    let result = |i: usize| calls[i]["result"].as_str().unwrap_or_default().to_owned();

    let select = result(0);
    assert!(!select.starts_with("ERROR"), "{select}");
    for name in ["Ada Lovelace", "Alan Turing", "Grace Hopper"] {
        assert!(select.contains(name), "names are not masked: {select}");
    }
    // card_number by column rule (partial: last four), emails by detector (partial).
    for tail in ["************1111", "************4444", "***********0005"] {
        assert!(select.contains(tail), "{tail} missing from {select}");
    }
    assert!(select.contains("@******e.com"), "{select}");

    let update = result(1);
    assert!(update.starts_with("UPDATE 1\n"), "{update}");
    assert!(
        update.contains(&format!("held for approval {id}")),
        "the agent was told why it waited: {update}"
    );
    assert_eq!(tier(&pg, 2), "gold", "the approved UPDATE ran");

    let drop = result(2);
    assert!(drop.starts_with("ERROR 42501"), "{drop}");
    assert!(drop.contains("rule no-schema-changes"), "{drop}");
    assert_eq!(
        pg.psql_db(PG_DB, "SELECT count(*) FROM customers").trim(),
        "4",
        "the table survived"
    );

    // The journal: one session for this run, with who, what and the decisions.
    let list = sessions_for_run(&cfg, &run_id);
    assert_eq!(list.len(), 1, "{}", pretty_rows(&list));
    let s = &list[0];
    assert_eq!(s["uid"], json!(65534), "{}", pretty(s));
    assert_eq!(s["user"], json!("nobody"), "{}", pretty(s));
    assert_eq!(s["target"], json!("appdb"), "{}", pretty(s));
    assert!(
        s["exe"].as_str().unwrap_or_default().contains("python"),
        "{}",
        pretty(s)
    );
    let show = session_show(&cfg, s["id"].as_i64().expect("session id"));
    let statements = events_of_kind(&show, "statement");
    let decided: Vec<(String, String)> = statements
        .iter()
        .map(|e| {
            (
                e["decision"].as_str().unwrap_or_default().to_owned(),
                e["rule"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        decided,
        [
            ("allow".to_owned(), "reads".to_owned()),
            ("review".to_owned(), "writes-need-review".to_owned()),
            ("deny".to_owned(), "no-schema-changes".to_owned()),
        ],
        "{}",
        pretty(&show)
    );
    let decisions = events_of_kind(&show, "approval_decision");
    assert_eq!(decisions.len(), 1, "{}", pretty(&show));
    let detail = &decisions[0]["detail"];
    assert_eq!(detail["status"], json!("approved"), "{}", pretty(detail));
    assert_eq!(detail["approver_uid"], json!(0), "{}", pretty(detail));
    assert_eq!(
        detail["reason"],
        json!("support ticket"),
        "{}",
        pretty(detail)
    );

    // Masking is recorded as counts; neither the clear values nor the password are anywhere
    // the agent or an auditor can read.
    let shown = show.to_string();
    assert!(shown.contains("identity-columns"), "{}", pretty(&show));
    let journal = journal_bytes(&cfg);
    let agent_output = format!("{}{}", done.stdout, done.stderr);
    for clear in CLEAR.iter().chain([&SCRAM_PASSWORD]) {
        assert!(!agent_output.contains(clear), "the agent saw {clear}");
        assert!(
            !bytes_contain(&journal, clear.as_bytes()),
            "the journal holds {clear}"
        );
    }
}

#[test]
fn make_demo_shows_the_outcomes_sql_and_mcp_and_cleans_up() {
    require_root!();
    let before = leftover_demo_dirs();
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(workspace_root().join("scripts/demo.sh"))
        .env("INTERCEPTOR_BIN", interceptor_bin())
        .current_dir("/");
    let out = run_command(cmd, Duration::from_secs(180));
    assert!(out.success(), "{}", out.describe());
    for line in [
        "ok    SELECT allowed, emails and card numbers masked",
        "ok    UPDATE held, then approved by the operator",
        "ok    DROP TABLE denied",
        "approved apr-",
        "ok    get_customer (read-only) ran, email and card number masked",
        "ok    delete_customer held, denied: an error result for the agent",
        "ok    delete_customer never ran on the server",
        "denied apr-",
        " events intact (seq 1..",
    ] {
        assert!(
            out.stdout.contains(line),
            "{line:?} missing\n{}",
            out.describe()
        );
    }
    assert_eq!(
        leftover_demo_dirs(),
        before,
        "the demo left its directory behind"
    );
}

fn leftover_demo_dirs() -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir("/tmp")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("interceptor-demo."))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}
