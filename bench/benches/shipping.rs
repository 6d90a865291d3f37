//! Shipping throughput (goal: a file sink ships at least 20,000 events/s).
//!
//! A temporary journal is filled through the public `Journal` API with sessions of command
//! events and their results (chained `result` events included), shaped like the PostgreSQL
//! gateway's. Each measured iteration ships the whole journal to a fresh file sink (a new sink
//! name, so its cursor starts at 0) with `interceptor::ship::ship_pending`: read after the
//! cursor in batches, OCSF mapping, NDJSON write, `fdatasync`, cursor commit, rotation at
//! 100 MiB. The events/s figure is printed after criterion's own.
//!
//! Run with `cargo bench -p interceptor-bench --bench shipping` (about 30 s).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use interceptor::{
    capture::identity::Identity,
    journal::{Event, Journal, NewSession},
    ship::{
        config::{FileSink, DEFAULT_BATCH, DEFAULT_KEEP, DEFAULT_MAX_BYTES},
        ship_pending, SinkConfig, SinkKind,
    },
};

/// Sessions × commands per session; each command also gets a `result` event.
const SESSIONS: u64 = 50;
const COMMANDS: u64 = 200;

/// A directory under the system temp dir, removed on drop (the bench crate has no tempfile).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("interceptor-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the bench directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn session(n: u64) -> NewSession {
    NewSession {
        run_id: Some("run-bench".to_owned()),
        identity: Identity {
            pid: 1000 + n as u32,
            uid: 1000,
            gid: 1000,
            user: Some("agent".to_owned()),
            comm: "python3".to_owned(),
            exe: Some("/usr/bin/python3.11".to_owned()),
            cmdline: Some("python3 agent.py --task report".to_owned()),
            ..Identity::default()
        },
        client_addr: format!("127.0.0.1:{}", 40000 + n),
        original_dst: "127.0.0.2:5432".to_owned(),
        target: Some("appdb".to_owned()),
        protocol: "postgres".to_owned(),
        upstream: Some("127.0.0.1:5432".to_owned()),
        decision: Some("allow".to_owned()),
        rule: Some("postgres".to_owned()),
    }
}

fn command(session: i64, n: u64) -> Event {
    Event {
        session_id: Some(session),
        kind: "statement",
        statement: Some(format!(
            "SELECT c.id, c.name, c.email FROM customers c WHERE c.id = {n} AND c.region = 'north'"
        )),
        decision: Some(if n % 10 == 9 { "deny" } else { "allow" }.to_owned()),
        rule: Some("reads".to_owned()),
        detail: serde_json::json!({
            "command": "query", "params": 0, "name": null, "classes": ["read"],
            "reason": null, "parse_error": null, "masked": null,
        }),
    }
}

async fn fill(journal: &Journal) {
    for s in 0..SESSIONS {
        let id = journal.open_session(session(s)).await.expect("session");
        for chunk in 0..COMMANDS / 8 {
            let events = (0..8).map(|i| command(id, chunk * 8 + i)).collect();
            for event in journal.events(events).await.expect("append") {
                journal.record_result(
                    Some(id),
                    event,
                    serde_json::json!({"tag": "SELECT 1", "rows": 1, "duration_ms": 0.21,
                                       "sqlstate": null, "error": null}),
                );
            }
        }
    }
    journal.flush().await.expect("flush");
}

fn events_in(path: &std::path::Path) -> u64 {
    let mut out = Vec::new();
    interceptor::ship::export(path, 0, &mut out).expect("export");
    out.iter().filter(|b| **b == b'\n').count() as u64
}

fn shipping(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = TempDir::new("shipping");
    let path = dir.0.join("journal.db");
    let journal = Journal::open(&path).expect("open the journal");
    runtime.block_on(fill(&journal));
    let total = events_in(&path);

    let mut group = c.benchmark_group("ship");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(total));
    let (mut shipped, mut wall, mut round) = (0u64, 0f64, 0u64);
    group.bench_function("file", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let out = dir.0.join(format!("out-{round}"));
                let sink = SinkConfig {
                    name: format!("bench-{round}"),
                    kind: SinkKind::File(FileSink {
                        path: out.join("events.ndjson"),
                        max_bytes: DEFAULT_MAX_BYTES,
                        keep: DEFAULT_KEEP,
                    }),
                    batch_size: DEFAULT_BATCH,
                };
                let started = Instant::now();
                let n = ship_pending(&path, &sink).expect("ship");
                elapsed += started.elapsed();
                assert_eq!(n, total, "every event shipped");
                shipped += n;
                let _ = std::fs::remove_dir_all(&out);
            }
            wall += elapsed.as_secs_f64();
            elapsed
        })
    });
    group.finish();
    eprintln!(
        "ship/file: {total} events per round ({SESSIONS} sessions, {COMMANDS} commands with \
         results each): {shipped} events in {wall:.2} s = {:.0} events/s",
        shipped as f64 / wall
    );
}

criterion_group!(benches, shipping);
criterion_main!(benches);
