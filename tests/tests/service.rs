//! `interceptor run` (service mode): captures every connection of a configured cgroup (the
//! default capture mode) through pinned programs;
//! while the daemon is down the cgroup's connects are refused (fail closed, never direct);
//! a restarted daemon adopts the pins and capture works again.

use std::{process::Command, time::Duration};

use interceptor_tests::*;

/// argv: host, port. Reports status "ok" (+ echo result), "refused" or "error".
const SERVICE_CLIENT: &str = r#"
host, port = sys.argv[1], int(sys.argv[2])
try:
    r = echo_once(socket.AF_INET, (host, port), payload(1500, port), timeout=10)
    report(status="ok", **r)
except ConnectionRefusedError:
    report(status="refused")
except Exception as e:
    report(status="error", error=repr(e))
"#;

const PAYLOAD_LEN: u64 = 1500;

fn client_in_cgroup(cg: &CgroupDir, echo: &EchoServer) -> Value {
    let out = run_python_in_cgroup(
        cg,
        SERVICE_CLIENT,
        &["127.0.0.2".into(), echo.port().to_string()],
        Duration::from_secs(40),
    );
    assert!(out.success(), "{}", out.describe());
    out.json()
}

/// The journal gets a finished session for the client's pid with the right destination/bytes.
fn assert_journaled(cfg: &TempConfig, client: &Value, echo: &EchoServer) {
    let pid = client["pid"].clone();
    let rows = wait_sessions(cfg, None, Duration::from_secs(15), |rows| {
        rows.iter().any(|s| s["pid"] == pid && session_finished(s))
    });
    let mine: Vec<&Value> = rows.iter().filter(|s| s["pid"] == pid).collect();
    assert_eq!(
        mine.len(),
        1,
        "one session for client pid {pid}\n{}",
        pretty_rows(&rows)
    );
    let s = mine[0];
    assert_eq!(
        s["original_dst"],
        json!(format!("127.0.0.2:{}", echo.port())),
        "{}",
        pretty(s)
    );
    assert_eq!(s["bytes_up"], json!(PAYLOAD_LEN), "{}", pretty(s));
    assert_eq!(s["bytes_down"], json!(PAYLOAD_LEN), "{}", pretty(s));
    assert_eq!(s["outcome"], json!("closed"), "{}", pretty(s));
    assert_eq!(s["uid"], client["uid"], "{}", pretty(s));
}

#[test]
fn service_captures_cgroup_fails_closed_while_down_and_adopts_pins_on_restart() {
    require_root!();
    // Declaration order = reverse drop order: daemon killed first, then detach + rm pins,
    // then the cgroup's processes killed and the cgroup removed.
    let cgroup = CgroupDir::new(&unique_name("interceptor-test"));
    let cfg = TempConfig::new("");
    let pins = PinDir::new(&cfg.path);
    write_service_config(&cfg, &cgroup, &pins);
    let echo = EchoServer::start("127.0.0.2");

    // 1. Daemon up: a process in the cgroup is captured and journaled.
    let daemon = Daemon::start(&cfg);
    assert!(
        pins.path.exists(),
        "pin_dir {} not created",
        pins.path.display()
    );
    let c1 = client_in_cgroup(&cgroup, &echo);
    assert_eq!(c1["status"], json!("ok"), "{}", pretty(&c1));
    assert_eq!(c1["echoed"], json!(true), "{}", pretty(&c1));
    assert_eq!(
        c1["peer"],
        json!(["127.0.0.2", echo.port()]),
        "{}",
        pretty(&c1)
    );
    assert_eq!(echo.accepted(), 1);
    assert_ne!(
        echo.peers()[0].port() as u64,
        c1["local"][1].as_u64().unwrap(),
        "echo server saw the client's own socket: not relayed"
    );
    assert_journaled(&cfg, &c1, &echo);

    // 2. Daemon crashes: capture stays pinned, connects are refused, nothing goes direct.
    let log = daemon.kill();
    assert!(pins.path.exists(), "pins must outlive the daemon\n{log}");
    let c2 = client_in_cgroup(&cgroup, &echo);
    assert_eq!(
        c2["status"],
        json!("refused"),
        "connect from the captured cgroup while the daemon is down: {}",
        pretty(&c2)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        echo.accepted(),
        1,
        "the echo server got a connection while the daemon was down (sent direct): {:?}",
        echo.peers()
    );

    // 3. Restart with the same config: adopts the pins, capture works again.
    let daemon = Daemon::start(&cfg);
    let c3 = client_in_cgroup(&cgroup, &echo);
    assert_eq!(c3["status"], json!("ok"), "after restart: {}", pretty(&c3));
    assert_eq!(c3["echoed"], json!(true), "{}", pretty(&c3));
    assert_eq!(echo.accepted(), 2);
    assert_journaled(&cfg, &c3, &echo);
    assert!(daemon.log().contains("capture ready"));
    drop(daemon);

    // 4. detach removes the capture: the cgroup's connects then go direct (not refused).
    let out = run_command(
        {
            let mut c = interceptor_cmd(Some(&cfg));
            c.arg("detach");
            c
        },
        Duration::from_secs(30),
    );
    assert!(out.success(), "detach failed\n{}", out.describe());
    let c4 = client_in_cgroup(&cgroup, &echo);
    assert_eq!(c4["status"], json!("ok"), "after detach: {}", pretty(&c4));
    assert_eq!(echo.accepted(), 3);
    assert_eq!(
        echo.peers()[2].port() as u64,
        c4["local"][1].as_u64().unwrap(),
        "after detach the connection should go direct"
    );
}

/// A connection that reaches the proxy without passing through the capture hooks (here: a
/// process outside the cgroup dialing the listener directly) has no record: it is closed
/// without being relayed and journaled as an anomaly.
#[test]
fn connection_without_capture_record_is_closed_and_journaled_as_anomaly() {
    require_root!();
    let cgroup = CgroupDir::new(&unique_name("interceptor-test"));
    let cfg = TempConfig::new("");
    let pins = PinDir::new(&cfg.path);
    let port = free_port();
    cfg.write(&format!(
        // No `mode`: the service captures every connection by default, so a destination no
        // target or `intercept` names is relayed and journaled too.
        "{}\n[proxy]\nport = {port}\n\n[capture]\ncgroups = [\"{}\"]\npin_dir = \"{}\"\n",
        cfg.journal_section(),
        cgroup.relative(),
        pins.path.display()
    ));
    let _daemon = Daemon::start(&cfg);

    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = stream.write_all(b"hello?");
    let mut buf = [0u8; 16];
    // EOF or a reset: either way nothing comes back and the proxy hung up.
    let n = stream.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n, 0,
        "the proxy answered a connection it could not attribute"
    );

    let rows = wait_sessions(&cfg, None, Duration::from_secs(15), |rows| {
        rows.iter().any(|s| s["outcome"] == json!("anomaly"))
    });
    let anomaly = rows
        .iter()
        .find(|s| s["outcome"] == json!("anomaly"))
        .expect("anomaly session");
    assert_eq!(anomaly["bytes_up"], json!(0), "{}", pretty(anomaly));
    assert_eq!(
        anomaly["original_dst"],
        json!("unknown"),
        "{}",
        pretty(anomaly)
    );
    assert_eq!(
        anomaly["client_addr"],
        json!(stream.local_addr().expect("local").to_string()),
        "{}",
        pretty(anomaly)
    );
}

/// `interceptor --config CFG run` in a private mount namespace, after `prepare` (shell).
fn run_unshared(cfg: &TempConfig, prepare: &str) -> Output {
    let script = format!(
        "{prepare}; exec {bin} --config {cfg} run",
        bin = interceptor_bin().display(),
        cfg = cfg.path.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    run_command(cmd, Duration::from_secs(30))
}

/// The service refuses to start where its pins would die with it: a bpf filesystem that only
/// its own mount namespace has (as a unit with ProtectSystem= gets when the host has none
/// mounted) would be unmounted on stop, and captured agents would then connect direct.
#[test]
fn run_refuses_pins_that_would_not_outlive_it() {
    require_root!();
    let cgroup = CgroupDir::new(&unique_name("interceptor-test"));
    let cfg = TempConfig::new("");
    let private = tempfile::tempdir().expect("tempdir");
    let write = |pin_dir: &std::path::Path| {
        cfg.write(&format!(
            "{}\n[proxy]\nport = {}\n\n[capture]\ncgroups = [\"{}\"]\npin_dir = \"{}\"\n",
            cfg.journal_section(),
            free_port(),
            cgroup.relative(),
            pin_dir.display()
        ))
    };
    // A bpffs of the namespace's own, as a sandboxed unit would mount.
    let pin_dir = private.path().join("pins");
    write(&pin_dir);
    let out = run_unshared(
        &cfg,
        &format!("mount -t bpf bpf {} || exit 99", private.path().display()),
    );
    assert!(!out.success(), "run started\n{}", out.describe());
    assert!(
        out.describe()
            .contains("only in this process's mount namespace"),
        "{}",
        out.describe()
    );
    // Nothing was pinned or attached: the cgroup's connects are not steered anywhere.
    assert!(!pin_dir.exists(), "{}", out.describe());

    // No bpf filesystem at all inside such a namespace: it does not mount its own.
    let pin_dir = std::path::Path::new("/sys/fs/bpf").join(unique_name("interceptor-test"));
    write(&pin_dir);
    let out = run_unshared(&cfg, "umount -l /sys/fs/bpf 2>/dev/null");
    assert!(!out.success(), "run started\n{}", out.describe());
    assert!(
        out.describe().contains("mount namespace of its own"),
        "{}",
        out.describe()
    );
    assert!(!pin_dir.exists(), "{}", out.describe());
}

/// A captured cgroup that is removed (systemd does that when the unit or slice stops) is
/// created again at once and captured; one replaced by a new directory of the same name is
/// captured again as soon as the daemon sees it. Agents started there are never direct.
#[test]
fn a_removed_or_replaced_cgroup_is_captured_again() {
    require_root!();
    let cgroup = CgroupDir::new(&unique_name("interceptor-recapture"));
    let cfg = TempConfig::new("");
    let pins = PinDir::new(&cfg.path);
    write_service_config(&cfg, &cgroup, &pins);
    let echo = EchoServer::start("127.0.0.2");
    let daemon = Daemon::start(&cfg);
    let id = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(p).map(|m| m.ino()).ok()
    };
    let first = id(cgroup.path()).expect("cgroup");

    // 1. Removed: the daemon creates it again, captured.
    std::fs::remove_dir(cgroup.path()).expect("rmdir the captured cgroup");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while id(cgroup.path()).is_none_or(|i| i == first) {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed cgroup was not created again\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give the attach (right after the mkdir) a moment to be pinned.
    std::thread::sleep(Duration::from_millis(300));
    let c1 = client_in_cgroup(&cgroup, &echo);
    assert_eq!(c1["status"], json!("ok"), "{}", pretty(&c1));
    assert_ne!(
        echo.peers()[0].port() as u64,
        c1["local"][1].as_u64().unwrap_or(0),
        "the recreated cgroup's connection went direct"
    );
    assert_journaled(&cfg, &c1, &echo);

    // 2. Replaced by someone faster than the daemon (rmdir and mkdir at once): captured again.
    let second = id(cgroup.path()).expect("cgroup");
    std::fs::remove_dir(cgroup.path()).expect("rmdir");
    let _ = std::fs::create_dir(cgroup.path());
    std::thread::sleep(Duration::from_millis(500));
    assert_ne!(id(cgroup.path()), Some(second));
    let c2 = client_in_cgroup(&cgroup, &echo);
    assert_eq!(c2["status"], json!("ok"), "{}", pretty(&c2));
    assert_ne!(
        echo.peers()[1].port() as u64,
        c2["local"][1].as_u64().unwrap_or(0),
        "the replaced cgroup's connection went direct"
    );
    assert_journaled(&cfg, &c2, &echo);
    drop(daemon);
}
