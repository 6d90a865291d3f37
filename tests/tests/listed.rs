//! `[capture] mode = "listed"` and targets: only configured destinations go through the proxy,
//! and a target's `upstream` decides where the gateway really connects.

use std::time::Duration;

use interceptor_tests::*;

/// argv: host, port. Connects once, echoes 100 bytes, reports.
const CLIENT: &str = r#"
host, port = sys.argv[1], int(sys.argv[2])
r = echo_once(socket.AF_INET, (host, port), payload(100, port))
report(**r)
"#;

#[test]
fn listed_mode_captures_only_listed_destinations_and_routes_targets_upstream() {
    require_root!();
    // The agent dials 127.0.0.4:P; the target sends it to the real server on 127.0.0.2.
    let real = EchoServer::start("127.0.0.2");
    let dialed_port = free_port();
    let unlisted = EchoServer::start("127.0.0.3");
    let cfg = TempConfig::new("");
    cfg.write(&format!(
        "{}\n[capture]\nmode = \"listed\"\n\n[[target]]\nname = \"echo\"\nintercept = [\"127.0.0.4:{dialed_port}\"]\nupstream = \"{}\"\n",
        cfg.journal_section(),
        real.addr()
    ));
    let code = format!(
        "{CLIENT}\nr2 = echo_once(socket.AF_INET, ('127.0.0.3', {}), payload(50, 1))\nprint(json.dumps(r2))\n",
        unlisted.port()
    );
    let out = run_python_exec(
        &cfg,
        None,
        &code,
        &["127.0.0.4".to_owned(), dialed_port.to_string()],
        EXEC_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 2, "{}", out.describe());
    let (listed, direct) = (&lines[0], &lines[1]);
    assert_eq!(listed["echoed"], json!(true), "{}", pretty(listed));
    assert_eq!(
        listed["peer"],
        json!(["127.0.0.4", dialed_port]),
        "getpeername shows what was dialed: {}",
        pretty(listed)
    );
    assert_eq!(
        real.accepted(),
        1,
        "the target's upstream got the connection"
    );
    assert_eq!(direct["echoed"], json!(true), "{}", pretty(direct));
    // The unlisted destination was reached directly: its server saw the client's own socket.
    assert_eq!(unlisted.accepted(), 1);
    assert_eq!(
        unlisted.peers()[0].port() as u64,
        direct["local"][1].as_u64().expect("local port"),
        "an unlisted destination must not go through the proxy"
    );

    let run_id = listed["run_id"].as_str().expect("run id");
    let rows = wait_sessions(&cfg, Some(run_id), Duration::from_secs(10), |rows| {
        !rows.is_empty() && rows.iter().all(session_finished)
    });
    assert_eq!(
        rows.len(),
        1,
        "only the listed destination is journaled\n{}",
        pretty_rows(&rows)
    );
    let s = &rows[0];
    assert_eq!(s["target"], json!("echo"), "{}", pretty(s));
    assert_eq!(
        s["original_dst"],
        json!(format!("127.0.0.4:{dialed_port}")),
        "{}",
        pretty(s)
    );
    assert_eq!(
        s["upstream"],
        json!(real.addr().to_string()),
        "{}",
        pretty(s)
    );
    assert_eq!(s["bytes_up"], json!(100), "{}", pretty(s));
}
