//! Journal append cost ("a journal you can trust": sustained append with group commit of at
//! least 50,000 events/s at `synchronous = NORMAL`, hash chain included).
//!
//! Everything goes through the public async API, on a current-thread tokio runtime as in
//! `exec`, with 64 tasks appending at once, so the figures include the group commit, the
//! SHA-256 chain and the hand-offs between callers:
//!
//! - `journal/append/single`: each task records one command event per call
//!   (`Journal::event`), the worst case for grouping.
//! - `journal/append/batch-8`: each task records pipelines of 8 commands (`Journal::events`).
//! - `journal/append/command+result`: what a statement really costs: its event, waited for
//!   (record before forward), then its result queued (`Journal::record_result`, which also
//!   appends a chained `result` event). Counted as two events.
//!
//! Before that, outside criterion, the latency that recording adds to one statement before it
//! may be forwarded: p50/p99 of `Journal::events` for one command, alone and while 63 other
//! tasks write as fast as they can, at `sync = "normal"` and `sync = "full"` (printed with
//! eprintln; skipped under `--test`, which only checks the benchmark runs, and with
//! `INTERCEPTOR_BENCH_QUICK=1`, the smoke run of `make bench`).
//!
//! Each workload also prints its rate of durable appends: until every call had returned (each
//! event in the segment log, what record-before-forward waits for), without waiting for the
//! SQLite index, which the criterion figure includes.
//!
//! Run with `cargo bench -p interceptor-bench --bench journal` (about a minute).

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use interceptor::journal::{Event, Journal, JournalConfig, JournalSync};

/// Concurrent callers, as many sessions each sending statements.
const TASKS: u64 = 64;

/// A command event shaped like the PostgreSQL gateway's: a ~100-character statement, its
/// decision and rule, and the same detail fields.
fn command(n: u64) -> Event {
    Event {
        session_id: None,
        kind: "statement",
        statement: Some(format!(
            "SELECT c.id, c.name, c.email FROM customers c WHERE c.id = {n} AND c.region = 'north'"
        )),
        decision: Some("allow".to_owned()),
        rule: Some("reads".to_owned()),
        detail: serde_json::json!({
            "command": "query", "params": 0, "name": null, "classes": ["read"],
            "reason": null, "parse_error": null, "masked": null,
        }),
    }
}

fn result() -> serde_json::Value {
    serde_json::json!({"tag": "SELECT 1", "rows": 1, "duration_ms": 0.21, "sqlstate": null, "error": null})
}

#[derive(Clone, Copy)]
enum Workload {
    Single,
    Batch8,
    CommandAndResult,
}

impl Workload {
    fn events_per_call(self) -> u64 {
        match self {
            Workload::Single => 1,
            Workload::Batch8 => 8,
            Workload::CommandAndResult => 2,
        }
    }
}

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

    fn journal(&self) -> PathBuf {
        self.0.join("journal.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path, sync: JournalSync) -> Journal {
    Journal::open_with(&JournalConfig {
        path: path.to_owned(),
        sync,
        ..JournalConfig::default()
    })
    .expect("open the journal")
}

/// `calls` calls per task, 64 tasks at once; returns when everything is committed and indexed,
/// with the time it took until every call had returned (every event durable in the segment
/// log, the index possibly still behind).
async fn append(journal: &Journal, calls: u64, workload: Workload) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            for call in 0..calls {
                let n = task * calls + call;
                match workload {
                    Workload::Single => {
                        journal.event(command(n)).await.expect("append");
                    }
                    Workload::Batch8 => {
                        let batch = (0..8).map(|i| command(n * 8 + i)).collect();
                        journal.events(batch).await.expect("append");
                    }
                    Workload::CommandAndResult => {
                        let ids = journal.events(vec![command(n)]).await.expect("append");
                        journal.record_result(None, ids[0], result());
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("join");
    }
    let durable = started.elapsed();
    journal.flush().await.expect("flush");
    durable
}

/// p50 and p99 of recording one command while `others` tasks keep appending.
fn latency(runtime: &tokio::runtime::Runtime, sync: JournalSync, others: u64, samples: usize) {
    let dir = TempDir::new("latency");
    let journal = open(&dir.journal(), sync);
    let mut times = runtime.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for task in 0..others {
            let (journal, stop) = (journal.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut n = task << 32;
                while !stop.load(Ordering::Relaxed) {
                    journal.event(command(n)).await.expect("append");
                    n += 1;
                }
            }));
        }
        // Let the writers reach their pace first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut times = Vec::with_capacity(samples);
        for n in 0..samples as u64 {
            let started = Instant::now();
            let ids = journal.events(vec![command(n)]).await.expect("append");
            times.push(started.elapsed());
            journal.record_result(None, ids[0], result());
        }
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.expect("join");
        }
        times
    });
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    eprintln!(
        "journal/latency/{}/{others}-other-writers: one command recorded before forward: \
         p50 {:.1} µs, p99 {:.1} µs ({samples} samples)",
        match sync {
            JournalSync::Normal => "normal",
            JournalSync::Full => "full",
        },
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
    );
}

fn journal(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let quick = std::env::var_os("INTERCEPTOR_BENCH_QUICK").is_some_and(|v| v == "1");
    if !quick && !std::env::args().any(|arg| arg == "--test") {
        for sync in [JournalSync::Normal, JournalSync::Full] {
            latency(&runtime, sync, 0, 2_000);
            latency(&runtime, sync, TASKS - 1, 5_000);
        }
    }

    let mut group = c.benchmark_group("journal/append");
    group.sampling_mode(SamplingMode::Flat);
    for (name, workload) in [
        ("single", Workload::Single),
        ("batch-8", Workload::Batch8),
        ("command+result", Workload::CommandAndResult),
    ] {
        // A fresh file per workload: the figures include a growing table, not a warm cache only.
        let dir = TempDir::new(name);
        let journal = open(&dir.journal(), JournalSync::Normal);
        group.throughput(Throughput::Elements(TASKS * workload.events_per_call()));
        let (mut events, mut wall, mut cpu, mut durable) = (0u64, 0f64, 0f64, 0f64);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (started, cpu_started) = (Instant::now(), process_cpu_seconds());
                durable += runtime
                    .block_on(append(&journal, iters, workload))
                    .as_secs_f64();
                let elapsed = started.elapsed();
                events += iters * TASKS * workload.events_per_call();
                wall += elapsed.as_secs_f64();
                cpu += process_cpu_seconds() - cpu_started;
                elapsed
            })
        });
        if events == 0 {
            continue; // filtered out
        }
        // CPU time too: on a shared machine the wall clock also counts other processes.
        // And the write path alone: until every call had returned, each event durable in the
        // segment log (the index catches up in the background; `wall` waits for it too).
        eprintln!(
            "journal/append/{name}: {events} events: {:.0} events/s wall, {:.0} events per \
             second of process CPU time, {:.0} events/s durable (index not waited for)",
            events as f64 / wall,
            events as f64 / cpu,
            events as f64 / durable
        );
    }
    group.finish();
}

/// CPU time of the whole process (the committing task and the checkpoint thread), in seconds.
fn process_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the call only writes to it.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

criterion_group! {
    name = benches;
    // Bounded: three workloads of ~6 s each, after the ~10 s latency passes.
    config = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    targets = journal
}
criterion_main!(benches);
