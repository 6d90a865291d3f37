//! `make bench` cannot rot unnoticed: its smoke run (`BENCH_SMOKE=1 scripts/bench.sh`, which is
//! what `make bench-smoke` runs) goes through every section (capture, PostgreSQL, bulk, HTTP,
//! SSH, MySQL, memory, criterion benches) with tiny counts, the binaries under test and debug builds of the benches,
//! and must write a summary table with every goal's row, each with a numeric figure.
//!
//! It writes to a copy of docs/performance.md in a temp dir: the real one is left untouched, and
//! the run leaves no work directory behind. The figures of a smoke run mean nothing; only their
//! presence is checked.

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use interceptor_tests::*;

/// A phrase of each summary row, in the order of the table.
const GOAL_ROWS: &[&str] = &[
    "pgbench -S, 8 clients, interceptor, allow-all vs direct",
    "pgbench -S, 8 clients, interceptor, default policy vs direct",
    "pgbench TPC-B-like, 8 clients, interceptor, allow-all vs direct",
    "pgbench TPC-B-like, 8 clients, interceptor, default policy vs direct",
    "default policy vs allow-all",
    "2 worker threads vs 1",
    "connect() overhead of the eBPF hooks",
    "connections per second through the interceptor",
    "bulk relay",
    "SELECT through the interceptor (allow-all",
    "SELECT through the interceptor (default policy",
    "COPY TO STDOUT through the interceptor (allow-all",
    "COPY TO STDOUT through the interceptor (default policy",
    "HTTP requests/s, 8 keep-alive connections, small JSON, interceptor allow-all",
    "HTTP requests/s, 8 keep-alive connections, small JSON, interceptor default policy",
    "JSON body through the interceptor (default policy",
    "JSON-lines stream through the interceptor (default policy",
    "(SFTP read) through the gateway vs direct",
    "SSH exec round-trips/s, a new connection each",
    "SSH exec round-trips/s, channels of one connection",
    "policy verdict, statement seen before",
    "policy verdict, new",
    "masking engine",
    "journal appends",
    "journal appends durable",
    "gateway RSS, idle",
    "gateway RSS with",
    "per idle TCP session",
    "per idle PostgreSQL session",
];

/// "+1.5% (…)", "0.42× (…)", "12,345 events/s": a number first.
fn starts_with_number(figure: &str) -> bool {
    let digits = figure.trim_start_matches(['+', '-']);
    digits.starts_with(|c: char| c.is_ascii_digit())
        && digits
            .split_whitespace()
            .next()
            .map(|n| n.trim_end_matches(['×', 'x', '%']).replace(',', ""))
            .is_some_and(|n| n.parse::<f64>().is_ok())
}

#[test]
fn bench_smoke_writes_every_goal_row_with_a_figure() {
    require_root!();
    let real_doc = workspace_root().join("docs/performance.md");
    let before = std::fs::read_to_string(&real_doc).expect("docs/performance.md");
    let dir = tempfile::tempdir().expect("temp dir");
    // The run's work directory goes here too; the postgres user must be able to enter it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let doc = dir.path().join("performance.md");

    let mut cmd = Command::new("bash");
    cmd.arg(workspace_root().join("scripts/bench.sh"))
        .env("BENCH_SMOKE", "1")
        .env("BENCH_DOC", &doc)
        .env("BENCH_TMP", dir.path())
        .env("INTERCEPTOR_BIN", interceptor_bin())
        .current_dir("/");
    // No LOADGEN: the script builds it (a no-op when fresh), so a stale one beside the binary
    // under test, without the newest workloads, is never used.
    // Compiling the criterion benches (dev profile) is most of it; the run itself is ~1 min.
    let out = run_command(cmd, Duration::from_secs(900));
    assert!(out.success(), "{}", out.describe());

    let text = std::fs::read_to_string(&doc).expect("the smoke run's performance.md");
    let begin = text
        .find("<!-- bench-summary:begin")
        .unwrap_or_else(|| panic!("no summary block in\n{text}"));
    let end = text[begin..]
        .find("<!-- bench-summary:end -->")
        .map(|at| begin + at)
        .expect("the summary block ends");
    let summary = &text[begin..end];
    for needle in [
        "- Machine: ",
        "- Date: ",
        "- Command: `BENCH_SMOKE=1 scripts/bench.sh`",
    ] {
        assert!(summary.contains(needle), "{needle:?} missing in\n{summary}");
    }
    let rows: Vec<Vec<&str>> = summary
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| measurement"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), GOAL_ROWS.len(), "summary rows:\n{summary}");
    for (row, phrase) in rows.iter().zip(GOAL_ROWS) {
        let [measurement, figure, goal, met] = row[..] else {
            panic!("a summary row has {} cells: {row:?}", row.len());
        };
        assert!(
            measurement.contains(phrase),
            "{phrase:?} expected, got {row:?}"
        );
        assert!(starts_with_number(figure), "no figure in {row:?}");
        let allowed: &[&str] = if goal.starts_with("none") {
            &["—"]
        } else {
            &["met", "**not met**"]
        };
        assert!(allowed.contains(&met), "met/not met expected in {row:?}");
    }

    assert_eq!(
        std::fs::read_to_string(&real_doc).expect("docs/performance.md"),
        before,
        "the smoke run rewrote docs/performance.md"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read the temp dir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name != "performance.md")
        .collect();
    assert!(left.is_empty(), "the run left {left:?} behind");
}
