//! 200 concurrent captured connections, each relaying a distinct 64 KiB payload, on the default
//! one-thread gateway and on two worker threads. Bounded: the client gives up after 90 s and
//! the exec run is killed after 150 s.

use std::{collections::HashSet, time::Duration};

use interceptor_tests::*;

const CONNECTIONS: usize = 200;
const SIZE: usize = 64 * 1024;

/// argv: host, port, connections, size. All connections are opened first (so they are
/// concurrently open), then every one sends its payload and reads it back.
const LOAD_CLIENT: &str = r#"
import asyncio
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
async def main():
    connected = 0
    all_connected = asyncio.Event()
    async def one(i):
        nonlocal connected
        data = payload(size, 1000 + i)
        r, w = await asyncio.open_connection(host, port)
        peer = w.get_extra_info("peername")
        connected += 1
        if connected == count:
            all_connected.set()
        await all_connected.wait()
        w.write(data)
        got, _ = await asyncio.gather(r.readexactly(size), w.drain())
        w.close()
        await w.wait_closed()
        return got == data, [peer[0], peer[1]]
    results = await asyncio.wait_for(
        asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True), 90)
    ok = sum(1 for x in results if not isinstance(x, BaseException) and x[0])
    errors = [repr(x) for x in results if isinstance(x, BaseException)][:5]
    peers = sorted({tuple(x[1]) for x in results if not isinstance(x, BaseException)})
    report(ok=ok, errors=errors, peers=[list(p) for p in peers])
asyncio.run(main())
"#;

#[test]
fn two_hundred_concurrent_64k_connections_are_relayed_and_journaled() {
    require_root!();
    relayed_and_journaled("");
}

/// The same on a gateway whose sessions run on two worker threads (`[proxy] worker_threads`):
/// sessions move between threads, and each is still relayed whole and journaled once.
#[test]
fn two_worker_threads_relay_and_journal_every_connection() {
    require_root!();
    relayed_and_journaled("[proxy]\nworker_threads = 2\n");
}

/// [`CONNECTIONS`] payloads echoed intact through a gateway configured with `extra`, and one
/// finished session journaled for each, with its bytes.
fn relayed_and_journaled(extra: &str) {
    let echo = EchoServer::start("127.0.0.2");
    let cfg = TempConfig::new(extra);
    let out = run_python_exec(
        &cfg,
        None,
        LOAD_CLIENT,
        &[
            "127.0.0.2".into(),
            echo.port().to_string(),
            CONNECTIONS.to_string(),
            SIZE.to_string(),
        ],
        Duration::from_secs(150),
    );
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    assert_eq!(r["ok"], json!(CONNECTIONS), "echoed intact: {}", pretty(&r));
    assert_eq!(
        r["peers"],
        json!([["127.0.0.2", echo.port()]]),
        "{}",
        pretty(&r)
    );
    assert_eq!(echo.accepted(), CONNECTIONS, "echo server connections");

    let run_id = r["run_id"].as_str().expect("run_id");
    let rows = wait_sessions(&cfg, Some(run_id), Duration::from_secs(20), |rows| {
        rows.len() >= CONNECTIONS && rows.iter().all(session_finished)
    });
    assert_eq!(
        rows.len(),
        CONNECTIONS,
        "sessions journaled for run {run_id}"
    );
    let dst = format!("127.0.0.2:{}", echo.port());
    for s in &rows {
        assert_eq!(s["pid"], r["pid"], "{}", pretty(s));
        assert_eq!(s["original_dst"], json!(dst), "{}", pretty(s));
        assert_eq!(s["bytes_up"], json!(SIZE), "{}", pretty(s));
        assert_eq!(s["bytes_down"], json!(SIZE), "{}", pretty(s));
        assert_eq!(s["outcome"], json!("closed"), "{}", pretty(s));
    }
    let clients: HashSet<&str> = rows
        .iter()
        .filter_map(|s| s["client_addr"].as_str())
        .collect();
    assert_eq!(clients.len(), CONNECTIONS, "one session per client socket");
    let ids: HashSet<i64> = rows.iter().filter_map(|s| s["id"].as_i64()).collect();
    assert_eq!(ids.len(), CONNECTIONS, "distinct session ids");
}
