//! kill -9 at any moment loses no acknowledged record: the service is killed in the middle of
//! a load of short captured connections, each of which is journaled before the gateway
//! connects upstream (record before forward). Every connection the client got its echo back on
//! must have its session in the journal once the service has been started again (opening the
//! journal indexes whatever its log holds), and the journal must verify.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use interceptor_tests::*;

/// argv: host, port. Eight threads open short connections until one fails, printing the local
/// port of each connection that was echoed.
const CLIENT: &str = r#"
import threading
host, port = sys.argv[1], int(sys.argv[2])
lock = threading.Lock()
def worker(n):
    i = 0
    while True:
        i += 1
        try:
            s = socket.create_connection((host, port), timeout=5)
            local = s.getsockname()[1]
            data = b"%d-%d" % (n, i)
            s.sendall(data)
            if recv_exact(s, len(data)) != data:
                return
            s.close()
        except Exception:
            return
        with lock:
            print(local, flush=True)
threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
for t in threads: t.start()
for t in threads: t.join()
"#;

#[test]
fn kill_9_under_load_loses_no_acknowledged_record() {
    require_root!();
    let cgroup = CgroupDir::new(&unique_name("interceptor-crash"));
    let cfg = TempConfig::new("");
    let pins = PinDir::new(&cfg.path);
    write_service_config(&cfg, &cgroup, &pins);
    let echo = EchoServer::start("127.0.0.2");

    let daemon = Daemon::start(&cfg);
    let client = Spawned::spawn(
        in_cgroup(
            &cgroup,
            &python(CLIENT, &["127.0.0.2".into(), echo.port().to_string()]),
        ),
        "client",
        false,
    );
    // Kill it in full flight: once a few hundred connections went through.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.stdout_so_far().lines().count() < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = daemon.kill();
    let status = client.wait(Duration::from_secs(30));
    let acked: Vec<u16> = status
        .stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(
        acked.len() >= 300,
        "the load did not get going\n{}\n--- daemon ---\n{log}",
        status.describe()
    );

    // Started again: the journal is opened, and what its log holds is indexed.
    let daemon = Daemon::start(&cfg);
    let rows = sessions(&cfg);
    drop(daemon);
    let journaled: HashSet<u16> = rows
        .iter()
        .filter_map(|s| s["client_addr"].as_str())
        .filter_map(|a| a.rsplit(':').next()?.parse().ok())
        .collect();
    let lost: Vec<u16> = acked
        .iter()
        .copied()
        .filter(|p| !journaled.contains(p))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} echoed connections have no session in the journal: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    let mut verify = interceptor_cmd(Some(&cfg));
    verify.args(["journal", "verify"]);
    let out = run_command(verify, Duration::from_secs(60));
    assert!(out.success(), "{}", out.describe());
}
