//! `interceptor exec`: a command's outbound TCP is redirected through the proxy, relayed intact,
//! and journaled with the client's identity and original destination.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use interceptor_tests::*;

/// argv: family ("4"/"6"), host, port, payload length. Connects once, echoes, reports.
const ECHO_CLIENT: &str = r#"
family = socket.AF_INET if sys.argv[1] == "4" else socket.AF_INET6
host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = echo_once(family, (host, port), payload(n, port))
report(**r)
"#;

const PAYLOAD_LEN: usize = 3000;

/// Parses the client's `[ip, port]` JSON into a SocketAddr, v4-mapped IPv6 shown as IPv4.
fn sockaddr(v: &Value) -> SocketAddr {
    let ip: IpAddr = v[0].as_str().expect("ip string").parse().expect("ip");
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    SocketAddr::new(ip, v[1].as_u64().expect("port") as u16)
}

/// Runs ECHO_CLIENT under exec and returns the client's report (after asserting it worked).
fn run_client(cfg: &TempConfig, user: Option<&str>, family: &str, host: &str, port: u16) -> Value {
    let out = run_python_exec(
        cfg,
        user,
        ECHO_CLIENT,
        &[
            family.to_owned(),
            host.to_owned(),
            port.to_string(),
            PAYLOAD_LEN.to_string(),
        ],
        EXEC_TIMEOUT,
    );
    assert!(
        out.success(),
        "client under exec failed\n{}",
        out.describe()
    );
    let r = out.json();
    assert_eq!(
        r["echoed"],
        json!(true),
        "payload not echoed intact: {}",
        pretty(&r)
    );
    assert_eq!(r["got_len"], json!(PAYLOAD_LEN), "{}", pretty(&r));
    let run_id = r["run_id"].as_str().unwrap_or_default();
    assert!(
        !run_id.is_empty(),
        "INTERCEPTOR_RUN_ID not set in the command's environment: {}",
        pretty(&r)
    );
    r
}

/// Waits for the run's sessions to be finished and asserts there is exactly one; returns it.
fn single_session(cfg: &TempConfig, client: &Value) -> Value {
    let run_id = client["run_id"].as_str().unwrap();
    let rows = wait_sessions(cfg, Some(run_id), Duration::from_secs(10), |rows| {
        !rows.is_empty() && rows.iter().all(session_finished)
    });
    assert_eq!(
        rows.len(),
        1,
        "expected exactly one session for run {run_id}\n{}",
        pretty_rows(&rows)
    );
    rows.into_iter().next().unwrap()
}

/// The journal row matches the client: identity, destination, byte counts, outcome.
fn check_session(s: &Value, client: &Value, original_dst: &str, uid: u32, user: &str) {
    let ctx = format!("session: {}\nclient: {}", pretty(s), pretty(client));
    assert_eq!(s["pid"], client["pid"], "pid is the client's own\n{ctx}");
    assert_eq!(s["uid"], json!(uid), "uid\n{ctx}");
    assert_eq!(client["uid"], json!(uid), "client ran as uid {uid}\n{ctx}");
    assert_eq!(s["user"], json!(user), "user name\n{ctx}");
    assert!(
        s["exe"].as_str().unwrap_or_default().contains("python"),
        "exe names python\n{ctx}"
    );
    assert!(
        s["comm"].as_str().unwrap_or_default().contains("python"),
        "comm names python\n{ctx}"
    );
    assert_eq!(
        s["run_id"], client["run_id"],
        "run_id = INTERCEPTOR_RUN_ID\n{ctx}"
    );
    assert_eq!(
        s["original_dst"],
        json!(original_dst),
        "original_dst\n{ctx}"
    );
    assert_eq!(s["protocol"], json!("tcp"), "protocol\n{ctx}");
    assert_eq!(s["bytes_up"], json!(PAYLOAD_LEN), "bytes_up\n{ctx}");
    assert_eq!(s["bytes_down"], json!(PAYLOAD_LEN), "bytes_down\n{ctx}");
    assert_eq!(s["outcome"], json!("closed"), "outcome\n{ctx}");
    assert!(
        s["started_at"].as_str().is_some_and(|t| !t.is_empty()),
        "started_at\n{ctx}"
    );
    assert!(s["ended_at"].is_string(), "ended_at\n{ctx}");
    let local_port = client["local"][1].as_u64().unwrap();
    assert!(
        s["client_addr"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!(":{local_port}"))),
        "client_addr is the client socket's local address (port {local_port})\n{ctx}"
    );
}

/// The echo server got exactly one connection, and it came from the proxy, not from the
/// client's own socket.
fn check_echo_saw_proxy(echo: &EchoServer, client: &Value) {
    assert_eq!(
        echo.accepted(),
        1,
        "echo server connections: {:?}",
        echo.peers()
    );
    let client_local = sockaddr(&client["local"]);
    let peer = echo.peers()[0];
    assert_ne!(
        sockaddr(&json!([peer.ip().to_string(), peer.port()])),
        client_local,
        "echo server's peer is the client's own socket: the connection was not relayed"
    );
}

#[test]
fn ipv4_connect_is_redirected_relayed_and_journaled() {
    require_root!();
    let echo = EchoServer::start("127.0.0.2");
    let cfg = TempConfig::new("");
    let client = run_client(&cfg, None, "4", "127.0.0.2", echo.port());
    // getpeername() on the redirected socket still names what was dialed.
    assert_eq!(
        client["peer"],
        json!(["127.0.0.2", echo.port()]),
        "{}",
        pretty(&client)
    );
    check_echo_saw_proxy(&echo, &client);

    let s = single_session(&cfg, &client);
    let (uid, user) = default_exec_user();
    check_session(
        &s,
        &client,
        &format!("127.0.0.2:{}", echo.port()),
        uid,
        &user,
    );
}

#[test]
fn exec_as_other_user_is_journaled_with_that_identity() {
    require_root!();
    let echo = EchoServer::start("127.0.0.2");
    let cfg = TempConfig::new("");
    let client = run_client(&cfg, Some("nobody"), "4", "127.0.0.2", echo.port());
    assert_eq!(client["uid"], json!(65534), "command did not run as nobody");
    assert_eq!(
        client["peer"],
        json!(["127.0.0.2", echo.port()]),
        "{}",
        pretty(&client)
    );
    check_echo_saw_proxy(&echo, &client);

    let s = single_session(&cfg, &client);
    check_session(
        &s,
        &client,
        &format!("127.0.0.2:{}", echo.port()),
        65534,
        "nobody",
    );
}

#[test]
fn ipv6_loopback_connect_is_captured() {
    require_root!();
    let echo = EchoServer::start("::1");
    let cfg = TempConfig::new("");
    let client = run_client(&cfg, None, "6", "::1", echo.port());
    assert_eq!(
        client["peer"],
        json!(["::1", echo.port()]),
        "{}",
        pretty(&client)
    );
    check_echo_saw_proxy(&echo, &client);

    let s = single_session(&cfg, &client);
    let (uid, user) = default_exec_user();
    check_session(&s, &client, &format!("[::1]:{}", echo.port()), uid, &user);
}

#[test]
fn v4_mapped_ipv6_connect_is_captured_and_shown_as_ipv4() {
    require_root!();
    let echo = EchoServer::start("127.0.0.3");
    let cfg = TempConfig::new("");
    let client = run_client(&cfg, None, "6", "::ffff:127.0.0.3", echo.port());
    assert_eq!(
        client["peer"],
        json!(["::ffff:127.0.0.3", echo.port()]),
        "{}",
        pretty(&client)
    );
    check_echo_saw_proxy(&echo, &client);

    let s = single_session(&cfg, &client);
    let (uid, user) = default_exec_user();
    check_session(
        &s,
        &client,
        &format!("127.0.0.3:{}", echo.port()),
        uid,
        &user,
    );
}

/// While a captured command is running, a process outside its cgroup (this test) reaches the
/// server directly and is not journaled; the captured connection yields exactly one session
/// (the proxy's own upstream connection is not captured again: no loop).
#[test]
fn outside_process_is_not_redirected_and_proxy_does_not_loop() {
    require_root!();
    let echo = EchoServer::start("127.0.0.2");
    let cfg = TempConfig::new("");
    // The client reports, then holds the capture open until we write a line to its stdin.
    let code = format!("{ECHO_CLIENT}\nsys.stdin.readline()\n");
    let argv = python(
        &code,
        &[
            "4".into(),
            "127.0.0.2".into(),
            echo.port().to_string(),
            PAYLOAD_LEN.to_string(),
        ],
    );
    let mut proc = Spawned::spawn(exec_cmd(&cfg, None, &argv), "exec", true);
    let client = proc.wait_json_line(EXEC_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "captured client reported nothing\n--- stdout ---\n{}\n--- stderr ---\n{}",
            proc.stdout_so_far(),
            proc.stderr_so_far()
        )
    });
    assert_eq!(client["echoed"], json!(true), "{}", pretty(&client));
    assert!(
        client["run_id"].as_str().is_some_and(|r| !r.is_empty()),
        "INTERCEPTOR_RUN_ID not set: {}",
        pretty(&client)
    );
    assert_eq!(echo.accepted(), 1);

    // Now, with capture attached, connect from outside the cgroup.
    let mut direct = TcpStream::connect(echo.addr()).expect("direct connect to echo server");
    direct
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let direct_local = direct.local_addr().unwrap();
    direct.write_all(b"outside").unwrap();
    let mut buf = [0u8; 7];
    direct.read_exact(&mut buf).expect("direct echo");
    assert_eq!(&buf, b"outside");
    drop(direct);
    assert_eq!(echo.accepted(), 2, "{:?}", echo.peers());
    assert_eq!(
        echo.peers()[1],
        direct_local,
        "the outside connection reached the server from a different address: it was redirected"
    );

    proc.stdin().write_all(b"go\n").unwrap();
    let out = proc.wait(EXEC_TIMEOUT);
    assert!(out.success(), "{}", out.describe());

    // Exactly one session in the whole journal: the captured one. Neither the outside
    // connection nor the proxy's upstream connection was journaled.
    let run_id = client["run_id"].as_str().unwrap();
    let _ = wait_sessions(&cfg, Some(run_id), Duration::from_secs(10), |rows| {
        !rows.is_empty() && rows.iter().all(session_finished)
    });
    std::thread::sleep(Duration::from_millis(500));
    let all = sessions(&cfg);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one session\n{}",
        pretty_rows(&all)
    );
    assert_eq!(all[0]["pid"], client["pid"], "{}", pretty_rows(&all));
    assert_eq!(
        all[0]["original_dst"],
        json!(format!("127.0.0.2:{}", echo.port()))
    );
    // And the server saw the captured connection from the proxy, not the client's socket.
    let client_local = sockaddr(&client["local"]);
    assert_ne!(echo.peers()[0], client_local);
    assert_eq!(
        echo.accepted(),
        2,
        "no extra connections: {:?}",
        echo.peers()
    );
}

/// argv[1]: JSON list of actions, each `{"kind": "pg", "path", "sql"}` (connect to a
/// PostgreSQL Unix socket as role `agent`, database appdb, run `sql`) or `{"kind": "echo",
/// "path"}` (connect, send, read it back). Reports each outcome: "ok", or "errno N".
const UNIX_CLIENT: &str = r#"
import struct
def pg_run(path, sql):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    try:
        s.connect(path)
        params = b"user\0agent\0database\0appdb\0\0"
        body = struct.pack("!I", 196608) + params
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        def until_ready():
            while True:
                kind = recv_exact(s, 1)
                n = struct.unpack("!I", recv_exact(s, 4))[0]
                payload = recv_exact(s, n - 4)
                if kind == b"E":
                    raise RuntimeError(payload.decode(errors="replace"))
                if kind == b"Z" or kind == b"":
                    return
        until_ready()
        q = sql.encode() + b"\0"
        s.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)
        until_ready()
    finally:
        s.close()
def echo(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    try:
        s.connect(path)
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
    finally:
        s.close()
results = []
for action in json.loads(sys.argv[1]):
    try:
        if action["kind"] == "pg":
            pg_run(action["path"], action["sql"])
        else:
            echo(action["path"])
        results.append("ok")
    except OSError as e:
        results.append("errno %d" % e.errno)
report(results=results)
"#;

fn pg_action(path: &std::path::Path, sql: &str) -> Value {
    json!({"kind": "pg", "path": path.display().to_string(), "sql": sql})
}

fn echo_action(path: &std::path::Path) -> Value {
    json!({"kind": "echo", "path": path.display().to_string()})
}

/// Runs UNIX_CLIENT under `exec --user nobody` (an unprivileged agent) and returns its report.
fn run_unix_client_captured(cfg: &TempConfig, actions: &[Value]) -> Value {
    let out = run_python_exec(
        cfg,
        Some("nobody"),
        UNIX_CLIENT,
        &[Value::from(actions.to_vec()).to_string()],
        EXEC_TIMEOUT,
    );
    assert!(
        out.success(),
        "unix client under exec failed\n{}",
        out.describe()
    );
    out.json()
}

/// The refused sessions the run journaled, by destination.
fn refused_unix_sessions(cfg: &TempConfig, run_id: &str, expected: usize) -> Vec<Value> {
    let rows = wait_sessions(cfg, Some(run_id), Duration::from_secs(10), |rows| {
        rows.len() >= expected && rows.iter().all(session_finished)
    });
    assert_eq!(rows.len(), expected, "{}", pretty_rows(&rows));
    for s in &rows {
        assert_eq!(s["protocol"], json!("unix"), "{}", pretty(s));
        assert_eq!(s["outcome"], json!("refused"), "{}", pretty(s));
        assert_eq!(s["uid"], json!(65534), "{}", pretty(s));
    }
    rows
}

/// The bypass of finding 10: an agent that talks to PostgreSQL's Unix socket directly
/// (`local ... trust`) never meets the gateway. Under capture the connect fails with EPERM, the
/// INSERT it carried never happens, and the attempt is journaled; a Unix socket that is not
/// on the deny list still works.
#[test]
fn unix_socket_of_a_database_is_refused_and_others_still_work() {
    require_root!();
    require_unix_hook!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE unix_probe (v text); GRANT INSERT, SELECT ON unix_probe TO PUBLIC",
    );
    let pg_socket = pg.dir().join(format!(".s.PGSQL.{}", pg.port()));
    assert!(pg_socket.exists(), "no socket at {}", pg_socket.display());
    let helper = UnixEchoServer::start("agent-helper.sock");

    // The client itself works: outside capture it reaches the database over the socket.
    let out = run_python(
        UNIX_CLIENT,
        &[json!([pg_action(
            &pg_socket,
            "INSERT INTO unix_probe VALUES ('control')"
        )])
        .to_string()],
        EXEC_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.json()["results"], json!(["ok"]), "{}", out.describe());

    let cfg = TempConfig::new("");
    let client = run_unix_client_captured(
        &cfg,
        &[
            pg_action(&pg_socket, "INSERT INTO unix_probe VALUES ('bypass')"),
            echo_action(helper.path()),
        ],
    );
    assert_eq!(
        client["results"],
        json!(["errno 1", "ok"]),
        "the database socket must be refused (EPERM), the helper socket allowed\n{}",
        pretty(&client)
    );
    assert_eq!(helper.accepted(), 1);
    assert_eq!(
        pg.psql_db(
            "appdb",
            "SELECT string_agg(v, ',' ORDER BY v) FROM unix_probe"
        ),
        "control",
        "the captured agent's INSERT reached the database"
    );

    let run_id = client["run_id"].as_str().expect("run id");
    let rows = refused_unix_sessions(&cfg, run_id, 1);
    assert_eq!(
        rows[0]["original_dst"],
        json!(format!("unix:{}", pg_socket.display())),
        "{}",
        pretty(&rows[0])
    );
    assert_eq!(rows[0]["pid"], client["pid"], "{}", pretty(&rows[0]));
}

/// `default = "deny"` turns the list into an allowlist: only the allowed socket works, and a
/// symlink to the database socket (which a file-name list cannot see through) is refused too.
/// An extra `deny` entry refuses a socket the built-in list does not know.
#[test]
fn unix_allowlist_refuses_everything_else_including_links() {
    require_root!();
    require_unix_hook!();
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE unix_probe (v text); GRANT INSERT ON unix_probe TO PUBLIC",
    );
    let pg_socket = pg.dir().join(format!(".s.PGSQL.{}", pg.port()));
    let allowed = UnixEchoServer::start("allowed.sock");
    let other = UnixEchoServer::start("other.sock");
    let link = allowed.dir().join("innocent-name");
    std::os::unix::fs::symlink(&pg_socket, &link).expect("symlink");

    let cfg = TempConfig::new(&format!(
        "[capture.unix]\ndefault = \"deny\"\nallow = [\"{}\"]\n",
        allowed.path().display()
    ));
    let client = run_unix_client_captured(
        &cfg,
        &[
            echo_action(allowed.path()),
            echo_action(other.path()),
            pg_action(&link, "INSERT INTO unix_probe VALUES ('via-link')"),
        ],
    );
    assert_eq!(
        client["results"],
        json!(["ok", "errno 1", "errno 1"]),
        "{}",
        pretty(&client)
    );
    assert_eq!((allowed.accepted(), other.accepted()), (1, 0));
    assert_eq!(pg.psql_db("appdb", "SELECT count(*) FROM unix_probe"), "0");
    let run_id = client["run_id"].as_str().expect("run id");
    let mut dsts: Vec<String> = refused_unix_sessions(&cfg, run_id, 2)
        .iter()
        .map(|s| s["original_dst"].as_str().unwrap_or_default().to_owned())
        .collect();
    dsts.sort();
    let mut want = vec![
        format!("unix:{}", link.display()),
        format!("unix:{}", other.path().display()),
    ];
    want.sort();
    assert_eq!(dsts, want);

    // A `deny` entry on top of the default list.
    let cfg = TempConfig::new(&format!(
        "[capture.unix]\ndeny = [\"{}\"]\n",
        other.path().display()
    ));
    let client = run_unix_client_captured(
        &cfg,
        &[echo_action(allowed.path()), echo_action(other.path())],
    );
    assert_eq!(
        client["results"],
        json!(["ok", "errno 1"]),
        "{}",
        pretty(&client)
    );
}
