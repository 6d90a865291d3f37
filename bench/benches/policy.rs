//! Policy verdict cost (issue 4 goals): a statement seen before (its analysis is cached), a
//! new ~200-character statement (parsed and analysed with sqlparser), and the same statement
//! with new literals (the shape cache, keyed by PostgreSQL's scanner), all judged by the shipped default policy. Run with `cargo bench -p interceptor-bench --bench policy`.

use std::{collections::HashMap, hint::black_box, sync::Arc};

use criterion::{criterion_group, criterion_main, Criterion};
use interceptor::policy::{Engine, Policies, Policy, Request, Subject};

fn engine() -> Engine {
    Engine::new(Policies {
        by_target: HashMap::new(),
        fallback: Arc::new(Policy::embedded_default().expect("the default policy compiles")),
    })
}

fn subject() -> Subject {
    Subject {
        uid: 1000,
        user: Some("agent".to_owned()),
        groups: vec!["1000".to_owned(), "agents".to_owned()],
        exe: Some("/usr/bin/python3.11".to_owned()),
        unit: Some("agent.service".to_owned()),
        cgroup: Some("/interceptor/run-1".to_owned()),
        run_id: Some("run-1".to_owned()),
    }
}

fn verdicts(c: &mut Criterion) {
    let engine = engine();
    let who = subject();
    let cached = "SELECT c.id, c.name, c.email FROM customers c WHERE c.id = $1";
    engine.evaluate(
        &who,
        Some("appdb"),
        "postgres",
        Request::Sql { text: cached },
    );
    c.bench_function("verdict/cached", |b| {
        b.iter(|| {
            engine.evaluate(
                black_box(&who),
                Some("appdb"),
                "postgres",
                Request::Sql {
                    text: black_box(cached),
                },
            )
        })
    });

    // A distinct text every time, ~200 characters. An alias that changes with `n` makes each
    // one a new token stream, so neither cache (by text, by shape) can answer:
    // sqlparser and the analysis run every time.
    let mut n = 0u64;
    c.bench_function("verdict/new-200-char-statement", |b| {
        b.iter(|| {
            n += 1;
            let sql = format!(
                "SELECT c.id, c.name, o{n}.total FROM customers c JOIN orders o{n} ON o{n}.customer_id = c.id \
                 WHERE c.region = 'north' AND o{n}.total > 10 AND o{n}.created_at > now() - interval '30 days' \
                 ORDER BY o{n}.total DESC LIMIT 50"
            );
            engine.evaluate(black_box(&who), Some("appdb"), "postgres", Request::Sql { text: &sql })
        })
    });

    // The same statement with a new literal every time, as clients that inline their
    // parameters send it: answered by the shape cache after one pass of PostgreSQL's scanner.
    let mut n = 0u64;
    c.bench_function("verdict/new-literals-same-shape", |b| {
        b.iter(|| {
            n += 1;
            let sql = format!(
                "SELECT c.id, c.name, o.total FROM customers c JOIN orders o ON o.customer_id = c.id \
                 WHERE c.region = 'north' AND o.total > {n} AND o.created_at > now() - interval '30 days' \
                 ORDER BY o.total DESC LIMIT 50"
            );
            engine.evaluate(black_box(&who), Some("appdb"), "postgres", Request::Sql { text: &sql })
        })
    });
}

/// What a text with new literals pays for on a shape-cache hit (PostgreSQL's scanner, the
/// key), beside the fingerprint the approval key takes (libpg_query parses the text).
fn readings(c: &mut Criterion) {
    use interceptor::policy::pg_grammar;
    let mut n = 0u64;
    let text = |n: u64| {
        format!(
            "SELECT c.id, c.name, o.total FROM customers c JOIN orders o ON o.customer_id = c.id \
             WHERE c.region = 'north' AND o.total > {n} AND o.created_at > now() - interval '30 days' \
             ORDER BY o.total DESC LIMIT 50"
        )
    };
    c.bench_function("reading/pg-shape-key", |b| {
        b.iter(|| {
            n += 1;
            pg_grammar::shape_key(black_box(&text(n)))
        })
    });
    c.bench_function("reading/pg-fingerprint", |b| {
        b.iter(|| {
            n += 1;
            pg_grammar::fingerprint(black_box(&text(n)))
        })
    });
}

criterion_group! {
    name = benches;
    // Bounded: a few seconds per benchmark.
    config = Criterion::default()
        .measurement_time(std::time::Duration::from_secs(3))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = verdicts, readings
}
criterion_main!(benches);
