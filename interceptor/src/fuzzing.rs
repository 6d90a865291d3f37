//! The bodies of the fuzz targets: every decoder the gateway runs on bytes it does not control,
//! fed arbitrary input, with the properties each must keep.
//!
//! Why this lives in the library: the targets in `interceptor/fuzz/` (cargo-fuzz, nightly) and
//! the replay of their regression inputs and seed corpora (`fuzzing/tests.rs`, an ordinary
//! stable `cargo test`) call the same functions, so a crash the fuzzer found stays fixed
//! without nightly. Compiled only for tests and with the `fuzzing` feature (which the fuzz
//! crate turns on): nothing here reaches the shipped binary.
//!
//! Each function takes any bytes and must return normally: a panic (an `assert!` below, an
//! index out of bounds, an arithmetic overflow with the fuzz build's debug assertions) is a
//! finding. See docs/architecture.md, "Fuzzing".

use std::{
    borrow::Cow,
    collections::HashMap,
    path::Path,
    sync::{Arc, OnceLock},
};

use bytes::BytesMut;
use futures_util::FutureExt as _;

use crate::{
    command::{
        CommandResult, Decision, EventId, HookError, Hooks, Masker, ResultColumn, Rewrite,
        ValueKind,
    },
    mask::{
        detect::{Detector, Found, Scanner},
        ColumnRule, DetectorRule, HashKey, Masking, Strategy,
    },
    policy::{self, file, sql, DecisionKind, Engine, Policies, Policy, Request, Subject},
    protocol::postgres::{
        codec::{self, backend, frontend, Message, Startup},
        names, numbers, reading, relay, results,
    },
};

/// The body of a fuzz target: any bytes in, a panic when a property fails.
pub type Target = fn(&[u8]);

/// The targets by name: `interceptor/fuzz/fuzz_targets/<name>.rs` calls the function, and
/// `interceptor/fuzz/{corpus,regressions}/<name>/` hold its inputs.
pub const TARGETS: &[(&str, Target)] = &[
    ("postgres_client", postgres_client),
    ("postgres_server", postgres_server),
    ("sql_policy", sql_policy),
    ("policy_file", policy_file),
    ("masking", masking),
];

/// The message size limit the PostgreSQL targets run with: small, so that inputs the fuzzer
/// can afford (see `-max_len` in scripts/fuzz.sh) reach the "too long" paths too.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// Hooks that mask with a fixed [`Masking`] and decide nothing: what the PostgreSQL result
/// path needs from a session's hooks. Also used by `protocol::postgres::results`' tests.
pub struct MaskingHooks(pub Arc<Masking>);

impl MaskingHooks {
    /// Every detector, with `strategy`, and no column rule.
    pub fn detecting(strategy: Strategy) -> MaskingHooks {
        let rules = every_detector(strategy, "all");
        let scanner = Scanner::new(&Detector::ALL);
        MaskingHooks(Arc::new(Masking::new(
            Vec::new(),
            &rules,
            Some(Arc::new(scanner)),
            None,
            0,
        )))
    }
}

/// Every detector switched on with `strategy`, by the mask rule `rule`.
fn every_detector(strategy: Strategy, rule: &str) -> Vec<DetectorRule> {
    Detector::ALL
        .iter()
        .map(|d| DetectorRule {
            detector: *d,
            strategy,
            rule: rule.to_owned(),
        })
        .collect()
}

impl Hooks for MaskingHooks {
    async fn request(&self, _: &crate::command::Command<'_>) -> Result<Decision, HookError> {
        Err(HookError("MaskingHooks decide nothing".to_owned()))
    }

    async fn wait_for_approval(&self, _: &str) -> crate::command::Verdict {
        crate::command::Verdict::Deny {
            message: "MaskingHooks decide nothing".to_owned(),
        }
    }

    fn result(&self, _: EventId, _: &CommandResult) {}

    fn masker(&self, columns: Vec<ResultColumn>) -> Option<Box<dyn Masker>> {
        Some(Box::new(self.0.masker(columns)))
    }

    fn mask_text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.0.mask_text(text).0
    }

    fn note(&self, _: &'static str, _: serde_json::Value) {}
}

/// The caller every policy target asks for: an ordinary agent user.
fn agent() -> Subject {
    Subject {
        uid: 1000,
        user: Some("agent".to_owned()),
        groups: vec!["agents".to_owned()],
        exe: Some("/usr/bin/python3".to_owned()),
        unit: Some("agent.service".to_owned()),
        cgroup: Some("/autogen.slice/agent.service".to_owned()),
        run_id: Some("run-1".to_owned()),
    }
}

/// The shipped default policy (`policies/default.toml`).
fn default_policy() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY
        .get_or_init(|| Arc::new(Policy::embedded_default().expect("the default policy compiles")))
        .clone()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL, client to gateway
// ---------------------------------------------------------------------------------------------

/// A client's bytes as the gateway reads them: start-up packets (SSLRequest and GSSENCRequest
/// answered "no", CancelRequest, StartupMessage, whose parameters are then pinned), then
/// tagged messages, each framed with the size limit and its body read by the parser the relay
/// uses for that tag.
pub fn postgres_client(data: &[u8]) {
    let mut reader = data;
    loop {
        let startup = codec::read_startup(&mut reader, MAX_MESSAGE)
            .now_or_never()
            .expect("reading from memory never waits");
        match startup {
            Ok(Some(Startup::SslRequest | Startup::GssEncRequest)) => continue,
            Ok(Some(Startup::Params(params))) => {
                startup_params(params);
                break;
            }
            Ok(Some(Startup::Cancel { .. })) | Ok(None) | Err(_) => return,
        }
    }
    messages(reader, client_message);
}

/// Checks that start-up parameters survive encoding, and that pinning leaves exactly the
/// pinned settings in place.
fn startup_params(mut params: Vec<(String, String)>) {
    let mut encoded = BytesMut::new();
    codec::encode_startup(&params, &mut encoded);
    let again = codec::read_startup(&mut &encoded[..], usize::MAX)
        .now_or_never()
        .expect("reading from memory never waits");
    assert_eq!(again, Ok(Some(Startup::Params(params.clone()))));

    if reading::pin_startup(&mut params).is_err() {
        return;
    }
    for (pinned, value) in reading::PINNED {
        let set: Vec<&String> = params
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(pinned))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(set, [value], "{pinned} after pinning: {params:?}");
    }
}

fn client_message(m: &Message) {
    let body = &m.body[..];
    match m.tag {
        b'Q' => {
            if let Ok(text) = frontend::query(body) {
                reading::depends_on_settings(&text);
            }
        }
        b'P' => {
            let _ = frontend::parse(body);
        }
        b'B' => {
            let header = frontend::bind(body);
            // Result formats come after everything `bind` reads.
            if frontend::bind_result_formats(body).is_ok() {
                assert!(header.is_ok(), "{header:?}");
            }
        }
        b'E' => {
            let _ = frontend::execute(body);
        }
        b'C' => {
            let _ = frontend::close(body);
        }
        b'D' => {
            let _ = frontend::describe(body);
        }
        b'F' => {
            let _ = frontend::function_call(body);
        }
        b'p' => {
            let _ = frontend::password(body);
        }
        _ => {}
    }
}

/// Splits `rest` into tagged messages as both readers of the gateway do (the relay's
/// [`relay::frames`] over a buffer, start-up's [`codec::split_message`]), checks that they
/// agree and that each message encodes back to its bytes, and hands each to `each`.
fn messages(rest: &[u8], mut each: impl FnMut(&Message)) {
    let framed = relay::frames(rest, MAX_MESSAGE);
    let mut buf = BytesMut::from(rest);
    let mut split = Vec::new();
    let error = loop {
        match codec::split_message(&mut buf, MAX_MESSAGE) {
            Ok(Some(m)) => split.push(m),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    match (&framed, &error) {
        (Ok((frames, consumed)), None) => {
            assert_eq!(*consumed, rest.len() - buf.len());
            assert_eq!(frames.len(), split.len());
            for ((tag, range), m) in frames.iter().zip(&split) {
                assert_eq!((*tag, &rest[range.clone()]), (m.tag, &m.body[..]));
            }
        }
        (Err(a), Some(b)) => assert_eq!(a, b),
        _ => panic!("the relay and start-up frame differently: {framed:?} / {error:?}"),
    }
    // The size the relays reserve memory for (`protocol::buffers`) is the size the framing
    // reads: for every whole message, and for the partial one left at the end.
    if let Ok((frames, consumed)) = &framed {
        for (_, range) in frames {
            let start = range.start - 5;
            assert_eq!(
                codec::announced_len(&rest[start..]),
                Some(range.end - start)
            );
        }
        let tail = &rest[*consumed..];
        if tail.len() >= 5 && codec::frame_len(tail, MAX_MESSAGE) == Ok(None) {
            assert!(
                codec::announced_len(tail).is_some_and(|n| n > tail.len() && n <= MAX_MESSAGE + 1)
            );
        }
    }
    for m in &split {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        assert_eq!(
            codec::split_message(&mut out, MAX_MESSAGE),
            Ok(Some(m.clone()))
        );
        assert!(out.is_empty());
        each(m);
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL, server to gateway
// ---------------------------------------------------------------------------------------------

/// Type and format pairs whose values [`numbers::decimal`] decodes (every [`numbers::Wire`]).
const NUMBER_COLUMNS: &[(u32, i16)] = &[
    (21, 1),
    (23, 1),
    (20, 1),
    (700, 1),
    (701, 1),
    (1700, 1),
    (1005, 1),
    (1007, 1),
    (1016, 1),
    (1021, 1),
    (1022, 1),
    (1231, 1),
    (701, 0),
];

/// The masking the default policy gives an agent: column rules and every detector.
fn server_hooks() -> &'static MaskingHooks {
    static HOOKS: OnceLock<MaskingHooks> = OnceLock::new();
    HOOKS.get_or_init(|| {
        let masking = default_policy()
            .masking(&agent(), Some("appdb"), "postgres", None, 2)
            .expect("the default policy masks");
        MaskingHooks(Arc::new(masking))
    })
}

/// A server's bytes after start-up as the gateway reads them: authentication requests (SCRAM
/// driven with the server's messages), key data, parameter status checks, notices masked,
/// RowDescriptions turned into maskers, every DataRow masked by the last one, COPY data and
/// notifications masked.
pub fn postgres_server(data: &[u8]) {
    let hooks = server_hooks();
    let mut state = ServerState {
        masker: results::masker(hooks, &[], None, None),
        scratch: results::RowScratch::default(),
        binary_copy: false,
        scram: None,
    };
    messages(data, |m| state.message(hooks, m));
    if let Some(masker) = state.masker.as_mut() {
        masker.report();
    }
}

struct ServerState {
    masker: Option<Box<dyn Masker>>,
    scratch: results::RowScratch,
    binary_copy: bool,
    scram: Option<postgres_protocol::authentication::sasl::ScramSha256>,
}

impl ServerState {
    fn message(&mut self, hooks: &MaskingHooks, m: &Message) {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let body = &m.body[..];
        match m.tag {
            b'R' => match backend::auth_request(body) {
                Ok((10, rest)) => {
                    backend::sasl_mechanisms(rest);
                    self.scram = Some(ScramSha256::new(b"secret", ChannelBinding::unsupported()));
                }
                Ok((11, rest)) => {
                    if let Some(s) = self.scram.as_mut() {
                        if s.update(rest).is_err() {
                            self.scram = None;
                        }
                    }
                }
                Ok((12, rest)) => {
                    if let Some(mut s) = self.scram.take() {
                        let _ = s.finish(rest);
                    }
                }
                _ => {}
            },
            b'K' => {
                let _ = backend::backend_key(body);
            }
            b'S' => {
                let _ = reading::check_status(body);
            }
            b'C' => {
                backend::command_complete(body);
            }
            b'E' | b'N' => {
                backend::error_fields(body);
                let fields = backend::notice_fields(body);
                if let Some(out) = results::mask_notice(hooks, m.tag, body) {
                    let masked = reframed(&out, m.tag);
                    let codes = |f: &[(u8, String)]| f.iter().map(|(c, _)| *c).collect::<Vec<_>>();
                    assert_eq!(codes(&backend::notice_fields(&masked)), codes(&fields));
                }
            }
            b'A' => {
                if let Ok(Some(out)) = results::mask_notification(hooks, body) {
                    let masked = reframed(&out, b'A');
                    let (pid, channel, _) = backend::notification(body).expect("it was masked");
                    let (pid2, channel2, _) =
                        backend::notification(&masked).expect("a masked notification parses");
                    assert_eq!((pid, channel), (pid2, channel2));
                }
            }
            b'T' => {
                if let Ok(fields) = backend::row_description(body) {
                    results::columns(&fields, None, None);
                    self.masker = results::masker(hooks, &fields, None, None);
                }
            }
            b'D' => self.data_row(body),
            b'H' => self.binary_copy = backend::copy_out_format(body) == 1,
            b'd' => {
                if let Some(masker) = self.masker.as_mut() {
                    if let Ok(Some(out)) =
                        results::mask_copy_data(hooks, masker.as_mut(), body, self.binary_copy)
                    {
                        reframed(&out, b'd');
                    }
                }
            }
            _ => {}
        }
    }

    /// Masks the row, checks the rewritten row keeps the shape and NULLs of the original, and
    /// decodes each value as every kind of number the detectors are shown.
    fn data_row(&mut self, body: &[u8]) {
        let mut values = Vec::new();
        let parsed = backend::data_row(body, &mut values);
        if let Some(masker) = self.masker.as_mut() {
            let mut out = BytesMut::new();
            let masked = results::mask_data_row(masker.as_mut(), body, &mut self.scratch, &mut out);
            assert_eq!(masked.is_ok(), parsed.is_ok());
            if let Ok(true) = masked {
                let row = reframed(&out, b'D');
                let mut after = Vec::new();
                backend::data_row(&row, &mut after).expect("a masked row parses");
                assert_eq!(after.len(), values.len());
                for (before, after) in values.iter().zip(&after) {
                    if before.is_none() {
                        assert!(after.is_none(), "a NULL became a value");
                    }
                }
            }
        }
        let mut text = Vec::new();
        for value in values.iter().flatten() {
            let value = &body[value.clone()];
            for (oid, format) in NUMBER_COLUMNS {
                let wire = numbers::wire(*oid, *format).expect("a number column");
                text.clear();
                if numbers::decimal(wire, value, &mut text).is_ok() {
                    // Implied zeros are capped: the text stays a small multiple of the bytes.
                    assert!(
                        text.len() <= 16 * value.len() + 128,
                        "{} bytes of {wire:?} became {} bytes of text",
                        value.len(),
                        text.len()
                    );
                }
            }
        }
    }
}

/// The body of `out`, which must be exactly one well-framed `tag` message.
fn reframed(out: &[u8], tag: u8) -> bytes::Bytes {
    let mut buf = BytesMut::from(out);
    let m = codec::split_message(&mut buf, usize::MAX)
        .expect("a rewritten message frames")
        .expect("a rewritten message is complete");
    assert!(buf.is_empty(), "a rewritten message has trailing bytes");
    assert_eq!(m.tag, tag);
    m.body
}

// ---------------------------------------------------------------------------------------------
// SQL analysis and policy
// ---------------------------------------------------------------------------------------------

/// SQL texts through the path every statement takes (`Engine::evaluate` with the shipped
/// default policy, its analysis caches included), and the other readers of SQL text. The
/// input holds one text or several separated by NUL bytes (which no Query or Parse can
/// carry), judged in order by one engine: an input shows how earlier texts fill its caches.
///
/// Asserts that the gateway fails closed: a text with any part it could not analyse (a parse
/// error, an `Unknown` statement, a refusal by PostgreSQL's own grammar) is never allowed; and
/// that the caches never change a decision (the verdict equals the one on a fresh analysis).
pub fn sql_policy(data: &[u8]) {
    let engine = Engine::new(Policies {
        by_target: HashMap::new(),
        fallback: default_policy(),
    });
    for text in data.split(|&b| b == 0) {
        if let Ok(text) = std::str::from_utf8(text) {
            judge_sql(&engine, text);
        }
    }
}

fn judge_sql(engine: &Engine, text: &str) {
    let subject = agent();
    let fresh = sql::analyze(text);
    let direct = default_policy().evaluate_parsed(&subject, Some("appdb"), "postgres", &fresh);
    let cached = engine.evaluate(&subject, Some("appdb"), "postgres", Request::Sql { text });
    assert_eq!(
        (cached.decision, &cached.rule),
        (direct.decision, &direct.rule),
        "the cached analysis decides differently from a fresh one: {text:?}"
    );
    let unanalysed = fresh.error.is_some() || fresh.has_unknown() || fresh.refusal.is_some();
    if unanalysed || cached.parse_error.is_some() {
        assert_ne!(
            cached.decision,
            DecisionKind::Allow,
            "allowed what could not be analysed: {text:?}: {fresh:?}"
        );
    }
    for s in &cached.statements {
        if s.analysis.classes.contains(&sql::StatementClass::Unknown) {
            assert_ne!(s.decision, DecisionKind::Allow, "{text:?}");
        }
    }
    policy::pg_grammar::fingerprint(text);
    names::sql_forget(text);
}

/// Texts every compiled policy is asked about, and whether the gate itself refuses them.
fn probes() -> &'static [(sql::Parsed, bool)] {
    static PROBES: OnceLock<Vec<(sql::Parsed, bool)>> = OnceLock::new();
    PROBES.get_or_init(|| {
        [
            "SELECT name, email FROM customers WHERE id = 1",
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
            "DROP TABLE customers",
            "SELECT pg_read_file('/etc/passwd')",
            "COPY t TO PROGRAM 'id'",
            "SELECT upper(ssn) FROM customers",
            "this is not sql",
            "SET client_encoding = 'SJIS'",
        ]
        .iter()
        .map(|text| {
            let parsed = sql::analyze(text);
            let refused = parsed.refusal.is_some();
            (parsed, refused)
        })
        .collect()
    })
}

/// A policy file from arbitrary text: parsed and compiled, or refused with an error; a
/// compiled policy then judges a few statements and a connection and builds its masking.
/// Asserts that no policy allows what the gate itself refuses (a pinned setting).
pub fn policy_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let policy = match file::parse(text, path).and_then(|s| Policy::compile(vec![s])) {
        Ok(policy) => policy,
        Err(e) => {
            e.to_string();
            return;
        }
    };
    let subject = agent();
    for (parsed, refused) in probes() {
        let verdict = policy.evaluate_parsed(&subject, Some("appdb"), "postgres", parsed);
        if *refused {
            assert_eq!(verdict.decision, DecisionKind::Deny);
        }
        policy::tooling::explain_text(&verdict);
    }
    policy.evaluate_connection(&subject, Some("web"), "tcp", "127.0.0.1:443");
    policy.evaluate_connection(&subject, None, "tcp", "[::1]:5432");
    if let Some(masking) = policy.masking(&subject, Some("appdb"), "postgres", None, 1) {
        let masking = Arc::new(masking);
        masking.mask_text("card 4111 1111 1111 1111, mail alice@example.com");
        let columns = vec![ResultColumn {
            name: "ssn".to_owned(),
            source: Some("public.customers.ssn".to_owned()),
            unresolved: false,
            kind: ValueKind::Json,
        }];
        masking
            .masker(columns)
            .value(0, Some(br#"{"ssn":"123-45-6789","n":4111111111111111}"#));
    }
}

// ---------------------------------------------------------------------------------------------
// Masking
// ---------------------------------------------------------------------------------------------

const STRATEGIES: [Strategy; 4] = [
    Strategy::Redact,
    Strategy::Partial,
    Strategy::Hash,
    Strategy::Null,
];

/// Every detector, compiled once (it takes milliseconds).
fn scanner() -> &'static Arc<Scanner> {
    static SCANNER: OnceLock<Arc<Scanner>> = OnceLock::new();
    SCANNER.get_or_init(|| Arc::new(Scanner::new(&Detector::ALL)))
}

/// Every detector and a few column rules, all with one strategy.
fn maskings() -> &'static [Arc<Masking>] {
    static MASKINGS: OnceLock<Vec<Arc<Masking>>> = OnceLock::new();
    MASKINGS.get_or_init(|| {
        let scanner = scanner();
        let key = Arc::new(HashKey::from_bytes(&[7; 32]));
        STRATEGIES
            .iter()
            .map(|&strategy| {
                let patterns = ["customers.email".to_owned(), "*secret*".to_owned()];
                let columns = vec![Arc::new(
                    ColumnRule::new("columns", &patterns, strategy).expect("valid patterns"),
                )];
                Arc::new(Masking::new(
                    columns,
                    &every_detector(strategy, "detectors"),
                    Some(scanner.clone()),
                    Some(key.clone()),
                    1,
                ))
            })
            .collect()
    })
}

/// The detectors over arbitrary bytes, then the masking of a text and of a result value. The
/// first byte picks the strategy (bits 0–1) and the value's kind (bits 2–3); the rest is the
/// value.
///
/// Asserts that matches are in bounds, ordered and disjoint; that with `redact` no value a
/// detector found is left in the masked text or value (checked for values that occur once,
/// ASCII without brackets, so that no replacement or neighbour can spell them again); and
/// that a valid JSON value stays valid JSON.
pub fn masking(data: &[u8]) {
    let Some((&choice, value)) = data.split_first() else {
        return;
    };
    let strategy = STRATEGIES[usize::from(choice & 3)];
    let masking = &maskings()[usize::from(choice & 3)];
    let kind = [
        ValueKind::Text,
        ValueKind::Json,
        ValueKind::JsonWithHeader,
        ValueKind::Opaque,
    ][usize::from((choice >> 2) & 3)];

    let mut found = Vec::new();
    scanner().find(value, &mut found);
    let mut end = 0;
    for f in &found {
        assert!(
            end <= f.range.start && f.range.start < f.range.end && f.range.end <= value.len(),
            "{found:?} in {} bytes",
            value.len()
        );
        end = f.range.end;
    }

    if let Ok(text) = std::str::from_utf8(value) {
        let (masked, counts) = masking.mask_text(text);
        assert_eq!(counts.values().sum::<u64>(), found.len() as u64);
        if found.is_empty() {
            assert!(matches!(masked, Cow::Borrowed(_)));
        }
        if strategy == Strategy::Redact {
            assert_masked(value, &found, masked.as_bytes());
        }
    }

    for (name, source) in [("note", None), ("email", Some("public.customers.email"))] {
        let column = ResultColumn {
            name: name.to_owned(),
            source: source.map(str::to_owned),
            unresolved: false,
            kind,
        };
        let mut masker = masking.masker(vec![column]);
        let rewrite = masker.value(0, Some(value));
        masker.end_row();
        masker.report();
        let Rewrite::Replace(out) = rewrite else {
            continue;
        };
        if strategy == Strategy::Redact && kind == ValueKind::Text && source.is_none() {
            assert_masked(value, &found, &out);
        }
        let json = |v: &[u8]| serde_json::from_slice::<serde::de::IgnoredAny>(v).is_ok();
        match kind {
            ValueKind::Json if json(value) => assert!(json(&out), "{:?}", bstr(&out)),
            ValueKind::JsonWithHeader if value.len() > 1 && json(&value[1..]) => {
                assert_eq!(out.first(), value.first());
                assert!(json(&out[1..]), "{:?}", bstr(&out));
            }
            _ => {}
        }
    }
}

/// No found value that can be checked cheaply is still in `masked`.
fn assert_masked(value: &[u8], found: &[Found], masked: &[u8]) {
    for f in found {
        let span = &value[f.range.clone()];
        let checkable = span.iter().all(|b| b.is_ascii() && !b"[]".contains(b))
            && occurrences(value, span) == 1;
        if checkable {
            assert!(
                memchr::memmem::find(masked, span).is_none(),
                "{:?} ({:?}) is still in {:?}",
                bstr(span),
                f.detector,
                bstr(masked)
            );
        }
    }
}

/// How often `needle` occurs in `haystack`, overlaps included.
fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    let mut n = 0;
    let mut at = 0;
    while let Some(i) = haystack
        .get(at..)
        .and_then(|h| memchr::memmem::find(h, needle))
    {
        n += 1;
        at += i + 1;
    }
    n
}

fn bstr(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

#[cfg(test)]
mod tests;
