//! Routing a Unix socket through the gateway (`unix:/path` in a target's `intercept`): a
//! captured agent that talks to PostgreSQL over its socket directory (`psql -h DIR`) meets the
//! same gate as over TCP: statements judged by the default policy, results masked, the session
//! journaled with the socket path as its destination. The gateway's listener for the route
//! serves only captured processes, and a captured process can reach it only through the route.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use interceptor_tests::*;

/// The server's socket file for `pg` (`<dir>/.s.PGSQL.<port>`).
fn pg_socket(pg: &PgServer) -> PathBuf {
    pg.dir().join(format!(".s.PGSQL.{}", pg.port()))
}

/// A config routing `pg`'s socket to its TCP address as target `appdb`, under the shipped
/// default policy, with the runtime directory (control sockets, route listeners) in the
/// test's own directory.
fn route_config(pg: &PgServer) -> TempConfig {
    let cfg = TempConfig::new("");
    cfg.write(&format!(
        "{journal}\n[state]\ndir = \"{state}\"\n\n[approvals]\nsocket = \"{control}\"\n\n\
         [[target]]\nname = \"appdb\"\nprotocol = \"postgres\"\n\
         intercept = [\"unix:{socket}\"]\nupstream = \"127.0.0.1:{port}\"\npolicy = \"{policy}\"\n",
        journal = cfg.journal_section(),
        state = state_dir(&cfg).display(),
        control = cfg.dir().join("control.sock").display(),
        socket = pg_socket(pg).display(),
        port = pg.port(),
        policy = workspace_root().join("policies/default.toml").display(),
    ));
    cfg
}

/// A server seeded with one customer (the email the default policy masks), and a config that
/// routes its socket.
fn seeded_route() -> (PgServer, TempConfig) {
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE customers (id int, email text); \
         INSERT INTO customers VALUES (1, 'alice@example.com'); \
         GRANT ALL ON customers TO PUBLIC",
    );
    let cfg = route_config(&pg);
    (pg, cfg)
}

/// psql as an unprivileged agent under `exec`, over the socket directory: a read (its email
/// masked) and a DROP TABLE (denied by the default policy). Both travel through the gateway,
/// and the session is journaled with the socket's path.
#[test]
fn a_routed_database_socket_is_judged_masked_and_journaled() {
    require_root!();
    require_unix_hook!();
    let (pg, cfg) = seeded_route();

    let psql = psql_bin().display().to_string();
    let dir = pg.dir().display().to_string();
    let port = pg.port().to_string();
    let out = run_exec(
        &cfg,
        Some("nobody"),
        &[
            psql.as_str(),
            "-X",
            "-At",
            "-h",
            &dir,
            "-p",
            &port,
            "-U",
            "agent",
            "-d",
            "appdb",
            "-c",
            "SELECT email FROM customers",
            "-c",
            "DROP TABLE customers",
        ],
    );
    let seen = out.stdout.trim();
    assert!(
        !seen.is_empty() && !seen.contains("alice@example.com"),
        "the email came back unmasked or not at all\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("no-schema-changes"),
        "the DROP was not refused by the policy\n{}",
        out.describe()
    );
    assert_eq!(
        pg.psql_db("appdb", "SELECT email FROM customers"),
        "alice@example.com",
        "the table must survive the agent's DROP"
    );

    let rows = wait_sessions(&cfg, None, Duration::from_secs(10), |rows| {
        !rows.is_empty() && rows.iter().all(session_finished)
    });
    assert_eq!(rows.len(), 1, "{}", pretty_rows(&rows));
    let s = &rows[0];
    assert_eq!(
        s["original_dst"],
        json!(format!("unix:{}", pg_socket(&pg).display())),
        "{}",
        pretty(s)
    );
    assert_eq!(s["target"], json!("appdb"), "{}", pretty(s));
    assert_eq!(s["protocol"], json!("postgres"), "{}", pretty(s));
    assert_eq!(s["uid"], json!(65534), "{}", pretty(s));
    assert_eq!(s["client_addr"], json!("unix"), "{}", pretty(s));
    assert!(
        s["exe"].as_str().unwrap_or_default().ends_with("psql"),
        "the session is attributed to psql\n{}",
        pretty(s)
    );
    assert_eq!(s["outcome"], json!("closed"), "{}", pretty(s));
    let show = session_show(&cfg, s["id"].as_i64().expect("session id"));
    let decided: Vec<(String, String)> = events_of_kind(&show, "statement")
        .iter()
        .map(|e| {
            (
                e["statement"].as_str().unwrap_or_default().to_owned(),
                e["decision"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        decided.contains(&("SELECT email FROM customers".to_owned(), "allow".to_owned()))
            && decided.contains(&("DROP TABLE customers".to_owned(), "deny".to_owned())),
        "{decided:?}"
    );
}

/// argv: the listener path, the routed socket path. Reports readiness, waits for a line on
/// stdin, then tries the listener directly and a datagram to the routed path, and reports the
/// errnos ("ok" if something went through).
const AGENT: &str = r#"
listener, routed = sys.argv[1], sys.argv[2]
report(ready=True)
sys.stdin.readline()
def attempt(kind, path):
    s = socket.socket(socket.AF_UNIX, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.connect(path)
        else:
            s.sendto(b"x", path)
        return "ok"
    except OSError as e:
        return "errno %d" % e.errno
    finally:
        s.close()
report(direct=attempt(socket.SOCK_STREAM, listener), datagram=attempt(socket.SOCK_DGRAM, routed))
"#;

/// A startup packet for user `agent`, database appdb, then a simple query.
fn startup_and_insert() -> Vec<u8> {
    let params = b"user\0agent\0database\0appdb\0\0";
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(params);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    let query = b"INSERT INTO customers VALUES (2, 'outside@example.com')\0";
    out.push(b'Q');
    out.extend_from_slice(&((query.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(query);
    out
}

/// The listener for a route is a file anyone on the host can connect to: a process outside
/// the capture that does is refused (closed unanswered, journaled as an anomaly) and its
/// statement never reaches the database. A captured process that names the listener instead
/// of the routed path is refused by the kernel, and so is a datagram to the routed path.
#[test]
fn the_route_listener_serves_only_captured_processes_through_the_route() {
    require_root!();
    require_unix_hook!();
    let (pg, cfg) = seeded_route();

    // The agent learns its run id from the environment, so it is given the runtime directory
    // and builds the listener's path itself: `<runtime>/routes/<run id>/0.sock`.
    let code = format!(
        "sys.argv[1] = os.path.join({dir:?}, 'routes', os.environ['INTERCEPTOR_RUN_ID'], '0.sock')\n{AGENT}",
        dir = cfg.dir().display().to_string(),
    );
    let argv = python(
        &code,
        &["listener".to_owned(), pg_socket(&pg).display().to_string()],
    );
    let mut agent = Spawned::spawn(exec_cmd(&cfg, Some("nobody"), &argv), "agent", true);
    let ready = agent
        .wait_json_line(EXEC_TIMEOUT)
        .unwrap_or_else(|| panic!("agent not ready\n{}", agent.stderr_so_far()));
    let run_id = ready["run_id"].as_str().expect("run id").to_owned();
    let listener = cfg.dir().join("routes").join(&run_id).join("0.sock");
    assert!(listener.exists(), "no listener at {}", listener.display());

    // This test process is outside the capture (and root): it reaches the file, and is refused.
    let mut outside = UnixStream::connect(&listener).expect("connect to the listener");
    outside
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = outside.write_all(&startup_and_insert());
    let mut answer = Vec::new();
    let _ = outside.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "the gateway answered an uncaptured process: {:?}",
        String::from_utf8_lossy(&answer)
    );

    agent.stdin().write_all(b"go\n").expect("write to agent");
    let report = agent
        .wait_json_line(EXEC_TIMEOUT)
        .unwrap_or_else(|| panic!("agent did not report\n{}", agent.stderr_so_far()));
    assert_eq!(report["direct"], json!("errno 1"), "{}", pretty(&report));
    assert_eq!(report["datagram"], json!("errno 1"), "{}", pretty(&report));
    let out = agent.wait(EXEC_TIMEOUT);
    assert!(out.success(), "{}", out.describe());

    assert_eq!(
        pg.psql_db("appdb", "SELECT count(*) FROM customers"),
        "1",
        "the outside process's INSERT reached the database"
    );
    let rows = wait_sessions(&cfg, None, Duration::from_secs(10), |rows| {
        rows.len() >= 3 && rows.iter().all(session_finished)
    });
    let routed = format!("unix:{}", pg_socket(&pg).display());
    let anomaly = rows
        .iter()
        .find(|s| s["outcome"] == json!("anomaly"))
        .unwrap_or_else(|| panic!("no anomaly journaled\n{}", pretty_rows(&rows)));
    assert_eq!(
        anomaly["original_dst"],
        json!(routed),
        "{}",
        pretty(anomaly)
    );
    assert_eq!(
        anomaly["pid"],
        json!(std::process::id()),
        "{}",
        pretty(anomaly)
    );
    let mut refused: Vec<String> = rows
        .iter()
        .filter(|s| s["outcome"] == json!("refused") && s["protocol"] == json!("unix"))
        .map(|s| s["original_dst"].as_str().unwrap_or_default().to_owned())
        .collect();
    refused.sort();
    let mut want = vec![format!("unix:{}", listener.display()), routed];
    want.sort();
    assert_eq!(refused, want, "{}", pretty_rows(&rows));
    assert_eq!(rows.len(), 3, "{}", pretty_rows(&rows));
}
