//! Content-detector cost (masking goal: ≥ 300 MB/s per core with every detector on).
//!
//! The input is a deterministic synthetic stream of column values from a customers/orders
//! database: names and addresses (some non-ASCII), free-text notes, timestamps, order ids,
//! amounts, UUIDs, status words, and ~7% of values carrying something sensitive (valid cards,
//! SSNs, IBANs, emails, phones, IPs, AWS keys, JWTs, now and then a PEM key). Values are 5–200
//! bytes, as rows of a result set are.
//!
//! Criterion measures `Scanner::find` over a 16 MB stream; before that, one pass over a 100 MB
//! stream prints its own MB/s, so the figure for the size named in the goal is recorded too
//! (skipped under `--test`, which only checks the benchmark runs, and with
//! `INTERCEPTOR_BENCH_QUICK=1`, the smoke run of `make bench`, which also scans a 200 kB stream).
//!
//! Run with `cargo bench -p interceptor-bench --bench masking`.

use std::{hint::black_box, time::Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use interceptor::mask::{
    detect::{Detector, Found, Scanner},
    DetectorRule, Masking, Strategy,
};

/// Values stored back to back, so building 100 MB does not cost a million allocations.
struct Stream {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Stream {
    fn values(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.bytes[start..end])
    }
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    fn text_from(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| char::from(alphabet[self.below(alphabet.len())]))
            .collect()
    }
}

const FIRST: &[&str] = &[
    "Alice", "Bob", "José", "Zoë", "Jürgen", "Mei", "Olusegun", "Anaïs", "Priya", "Lars",
];
const LAST: &[&str] = &[
    "García", "Müller", "Smith", "Okafor", "Nakamura", "Dubois", "Weiß", "O'Brien", "Kowalski",
];
const STREETS: &[&str] = &[
    "Bahnhofstrasse",
    "Main Street",
    "Rue de Rivoli",
    "Calle Mayor",
    "Königsallee",
    "Elm Avenue",
];
const CITIES: &[&str] = &[
    "8001 Zürich",
    "80331 München",
    "75001 Paris",
    "Springfield, IL 62701",
    "28013 Madrid",
    "São Paulo",
];
const STATUS: &[&str] = &[
    "pending",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
    "on_hold",
    "active",
];
const NOTE_WORDS: &[&str] = &[
    "customer",
    "asked",
    "for",
    "a",
    "refund",
    "after",
    "the",
    "parcel",
    "arrived",
    "late;",
    "délai",
    "de",
    "livraison",
    "Lieferung",
    "beschädigt",
    "called",
    "twice",
    "re:",
    "order",
    "#4411",
    "(see",
    "ticket",
    "HD-2291)",
    "VIP",
    "—",
    "prefers",
    "email",
    "contact",
    "2026-11-28",
    "at",
    "10:42",
];

fn luhn_card(rng: &mut Rng, prefix: &str, len: usize) -> String {
    let mut digits = format!("{prefix}{}", rng.digits(len - 1 - prefix.len()));
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            // The check digit goes last, so the digit just before it is doubled.
            if i % 2 == 0 {
                (d * 2) % 10 + (d * 2) / 10
            } else {
                d
            }
        })
        .sum();
    digits.push(char::from(b'0' + ((10 - sum % 10) % 10) as u8));
    digits
}

fn note(rng: &mut Rng, max: usize) -> String {
    let mut text = String::new();
    let target = 30 + rng.below(max.saturating_sub(30).max(1));
    while text.len() < target {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(rng.pick(NOTE_WORDS));
    }
    text
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const PEM: &str = "-----BEGIN RSA PRIVATE KEY-----\n\
MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n\
KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n\
-----END RSA PRIVATE KEY-----";

fn sensitive(rng: &mut Rng) -> String {
    match rng.below(24) {
        0..=3 => {
            let card = luhn_card(rng, "4", 16);
            match rng.below(3) {
                0 => card,
                1 => format!(
                    "{} {} {} {}",
                    &card[0..4],
                    &card[4..8],
                    &card[8..12],
                    &card[12..]
                ),
                _ => format!("card on file: {}", card),
            }
        }
        4..=6 => format!(
            "{}{}@example.com",
            rng.pick(FIRST).to_ascii_lowercase(),
            rng.digits(2)
        ),
        7 => format!("contact me at {}@example.org please", rng.pick(LAST)),
        8..=9 => format!(
            "{}-{}-{}",
            100 + rng.below(500),
            10 + rng.below(89),
            rng.digits(4)
        ),
        10..=11 => format!("+1 555 {} {}", rng.digits(3), rng.digits(4)),
        12 => format!("({}) 555-{}", 200 + rng.below(700), rng.digits(4)),
        13..=14 => format!(
            "127.{}.{}.{}",
            rng.below(256),
            rng.below(256),
            1 + rng.below(254)
        ),
        15 => format!("::ffff:127.0.{}.{}", rng.below(256), rng.below(256)),
        // Loopback in its long form (the network rule: no other address is written anywhere).
        16 => "0:0:0:0:0:0:0:1".to_owned(),
        17 => format!(
            "AKIA{}",
            rng.text_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        ),
        18..=19 => format!(
            "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}",
            rng.text_from(B64URL, 40),
            rng.text_from(B64URL, 43)
        ),
        20 => "DE89370400440532013000".to_owned(),
        21 => format!("ghp_{}", rng.text_from(&B64URL[..62], 36)),
        22 => format!("sk_live_{}", rng.text_from(&B64URL[..62], 24)),
        _ => {
            if rng.below(20) == 0 {
                PEM.to_owned()
            } else {
                format!(
                    "xoxb-{}-{}",
                    rng.digits(12),
                    rng.text_from(&B64URL[..62], 24)
                )
            }
        }
    }
}

fn ordinary(rng: &mut Rng) -> String {
    match rng.below(20) {
        0..=1 => format!("{} {}", rng.pick(FIRST), rng.pick(LAST)),
        2..=3 => format!(
            "{} {}, {}",
            1 + rng.below(300),
            rng.pick(STREETS),
            rng.pick(CITIES)
        ),
        4..=5 => note(rng, 200),
        6..=7 => format!(
            "2026-{:02}-{:02} {:02}:{:02}:{:02}",
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60)
        ),
        8 => format!(
            "2026-11-28T10:42:{:02}.{}+00:00",
            rng.below(60),
            rng.digits(6)
        ),
        9..=10 => format!("ORD-2026-{}", rng.digits(6)),
        11..=12 => format!("{}.{}", 1 + rng.below(9999), rng.digits(2)),
        13 => format!(
            "{}-{}-4{}-a{}-{}",
            rng.text_from(b"0123456789abcdef", 8),
            rng.text_from(b"0123456789abcdef", 4),
            rng.text_from(b"0123456789abcdef", 3),
            rng.text_from(b"0123456789abcdef", 3),
            rng.text_from(b"0123456789abcdef", 12)
        ),
        14..=15 => rng.pick(STATUS).to_owned(),
        16 => {
            let len = 1 + rng.below(9);
            rng.digits(len)
        }
        17 => format!(
            "{{\"sku\":\"SKU-{}\",\"qty\":{}}}",
            rng.digits(5),
            1 + rng.below(9)
        ),
        18 => "true".to_owned(),
        _ => format!(
            "{} v1.{}.{}",
            rng.pick(STATUS),
            rng.below(20),
            rng.below(20)
        ),
    }
}

/// At least `size` bytes of values, 5–200 bytes each, ~7% sensitive.
fn stream(size: usize) -> Stream {
    let mut rng = Rng(0x5eed_0fda_7a00);
    let mut bytes = Vec::with_capacity(size + 256);
    let mut ends = Vec::with_capacity(size / 40);
    while bytes.len() < size {
        let mut value = if rng.below(100) < 7 {
            sensitive(&mut rng)
        } else {
            ordinary(&mut rng)
        };
        while value.len() < 5 {
            value.push(' ');
        }
        let mut cut = value.len().min(200);
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        bytes.extend_from_slice(&value.as_bytes()[..cut]);
        ends.push(bytes.len());
    }
    Stream { bytes, ends }
}

fn scan_all(scanner: &Scanner, stream: &Stream, out: &mut Vec<Found>) -> usize {
    let mut found = 0;
    for value in stream.values() {
        out.clear();
        scanner.find(black_box(value), out);
        found += out.len();
    }
    found
}

fn masking(c: &mut Criterion) {
    let scanner = Scanner::new(&Detector::ALL);
    let mut out = Vec::new();

    let smoke_test = std::env::args().any(|arg| arg == "--test");
    let quick = std::env::var_os("INTERCEPTOR_BENCH_QUICK").is_some_and(|v| v == "1");
    if !smoke_test && !quick {
        let big = stream(100_000_000);
        let (started, cpu_started) = (Instant::now(), thread_cpu_seconds());
        let found = scan_all(&scanner, &big, &mut out);
        let (wall, cpu) = (
            started.elapsed().as_secs_f64(),
            thread_cpu_seconds() - cpu_started,
        );
        let megabytes = big.bytes.len() as f64 / 1e6;
        // CPU time too: on a shared machine the wall clock also counts other processes.
        eprintln!(
            "masking/find/all-detectors/100MB: {megabytes:.1} MB, {} values, {found} matches: \
             {:.0} MB/s wall ({wall:.3} s), {:.0} MB/s of thread CPU time ({cpu:.3} s)",
            big.ends.len(),
            megabytes / wall,
            megabytes / cpu,
        );
    }

    let sample = stream(match (smoke_test, quick) {
        (_, true) => 200_000,
        (true, false) => 1_000_000,
        (false, false) => 16_000_000,
    });
    let mut group = c.benchmark_group("masking");
    group.throughput(Throughput::Bytes(sample.bytes.len() as u64));
    group.bench_function("find/all-detectors/16MB", |b| {
        b.iter(|| scan_all(&scanner, &sample, &mut out))
    });
    group.finish();
    json(
        c,
        if smoke_test || quick {
            200_000
        } else {
            7_000_000
        },
    );
}

/// A JSON answer of customer records (`make bench`'s HTTP section serves the same shape: an
/// email in every record, a valid card in every fourth), masked by the shipped default
/// policy's detectors: in one pass over the text, and as a parsed document (parse, mask,
/// serialize), which is what a body goes through when the text pass defers.
fn json(c: &mut Criterion, bytes: usize) {
    let mut text = String::from("[");
    let mut i = 1u64;
    while text.len() < bytes {
        if i > 1 {
            text.push(',');
        }
        let card = if i.is_multiple_of(4) {
            "4111 1111 1111 1111"
        } else {
            "n/a"
        };
        text.push_str(&format!(
            r#"{{"id":{i},"name":"Customer {i}","email":"user{i}@example.com","card":"{card}","note":"{:032x}","address":"{} Main Street","score":{}}}"#,
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            i % 300 + 1,
            (i * 7) % 1000
        ));
        i += 1;
    }
    text.push(']');
    let detectors = [
        (Detector::CreditCard, Strategy::Partial),
        (Detector::Iban, Strategy::Partial),
        (Detector::Ssn, Strategy::Partial),
        (Detector::Email, Strategy::Partial),
        (Detector::Phone, Strategy::Partial),
    ];
    let rules: Vec<DetectorRule> = detectors
        .iter()
        .map(|&(detector, strategy)| DetectorRule {
            detector,
            strategy,
            rule: "personal-data".to_owned(),
        })
        .collect();
    let set: Vec<Detector> = detectors.iter().map(|d| d.0).collect();
    let masking = Masking::new(
        Vec::new(),
        &rules,
        Some(std::sync::Arc::new(Scanner::new(&set))),
        None,
        0,
    );
    let mut group = c.benchmark_group("masking");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(10);
    group.bench_function("json/text-pass/7MB", |b| {
        b.iter(|| black_box(masking.mask_json_text(text.as_bytes())))
    });
    group.bench_function("json/document/7MB", |b| {
        b.iter(|| {
            let mut doc: serde_json::Value =
                serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            let counts = masking.mask_json(&mut doc);
            black_box((doc.to_string(), counts))
        })
    });
    group.finish();
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the call only writes to it.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

criterion_group! {
    name = benches;
    // Bounded: one iteration is ~50 ms, so ten samples fit in a few seconds.
    config = Criterion::default()
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(5))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = masking
}
criterion_main!(benches);
