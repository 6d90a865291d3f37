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
        CommandResult, Decision, EventId, Family, HookError, Hooks, Masker, ResultColumn, Rewrite,
        ValueKind,
    },
    mask::{
        detect::{Detector, Found, Scanner},
        ColumnRule, DetectorRule, FieldRule, HashKey, Masking, Strategy, StreamMasker,
        STREAM_HOLD_LIMIT,
    },
    policy::{
        self, asked::Asked, file, sql, DecisionKind, Engine, Policies, Policy, Request, Subject,
    },
    protocol::http::{body, mcp, request},
    protocol::kubernetes::{exec as kube_exec, request as kube, spdy as kube_spdy},
    protocol::mysql::{
        auth as my_auth, codec as my_codec, handshake as my_handshake, relay as my_relay,
        results as my_results, threads as my_threads,
    },
    protocol::postgres::{
        codec::{self, backend, frontend, Message, Startup},
        names, numbers, reading, relay, results,
    },
    protocol::ssh::{known_hosts as ssh_known_hosts, sftp as ssh_sftp},
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
    ("masking_json", masking_json),
    ("masking_stream", masking_stream),
    ("commands", commands),
    ("http_mcp", http_mcp),
    ("http_body", http_body),
    ("http_request", http_request),
    ("mysql", mysql),
    ("sftp", sftp),
    ("kube_request", kube_request),
    ("kube_spdy", kube_spdy),
    ("known_hosts", known_hosts),
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
        policy::tooling::explain_text(&Asked::Sql(String::new()), &verdict);
    }
    // Every kind of command, through the same rules.
    for (family, text) in [
        (Family::Connect, "127.0.0.1:443"),
        (Family::Connect, "[::1]:5432"),
        (Family::Http, "DELETE https://127.0.0.2/v1/items/7?force=1"),
        (Family::Mcp, r#"tools/call delete_customer {"id":1}"#),
        (Family::Kubernetes, "delete pods/web-1 -n default"),
        (Family::Kubernetes, "get /healthz"),
        (Family::Ssh, "sudo rm -rf /srv | tee x > y"),
        (Family::Ssh, "@forward 127.0.0.1:5432"),
        (Family::Login, "reporting database appdb"),
    ] {
        if let Ok(asked) = Asked::parse(family, text) {
            let verdict =
                policy.evaluate_operation(&subject, Some("web"), "tcp", &asked.operation());
            policy::tooling::explain_text(&asked, &verdict);
        }
    }
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

/// Every detector and the field rules of a JSON body and a Kubernetes response, with one
/// strategy each.
fn json_maskings() -> &'static [Arc<Masking>] {
    static MASKINGS: OnceLock<Vec<Arc<Masking>>> = OnceLock::new();
    MASKINGS.get_or_init(|| detector_maskings(true))
}

/// Every detector, no field rules, one strategy each: what [`Masking::mask_json_text`] masks
/// alone.
fn text_maskings() -> &'static [Arc<Masking>] {
    static MASKINGS: OnceLock<Vec<Arc<Masking>>> = OnceLock::new();
    MASKINGS.get_or_init(|| detector_maskings(false))
}

/// One masking per strategy: every detector, and with `fields` the field rules.
fn detector_maskings(fields: bool) -> Vec<Arc<Masking>> {
    let key = Arc::new(HashKey::from_bytes(&[7; 32]));
    STRATEGIES
        .iter()
        .map(|&strategy| {
            let paths = ["$..card", "$.data.*", "$.items[*].spec.env[*].value"].map(str::to_owned);
            let rules = if fields {
                vec![
                    Arc::new(
                        FieldRule::new("paths", &paths, false, strategy).expect("valid paths"),
                    ),
                    Arc::new(FieldRule::new("secrets", &[], true, strategy).expect("no paths")),
                ]
            } else {
                Vec::new()
            };
            Arc::new(
                Masking::new(
                    Vec::new(),
                    &every_detector(strategy, "detectors"),
                    Some(scanner().clone()),
                    Some(key.clone()),
                    0,
                )
                .with_fields(rules),
            )
        })
        .collect()
}

/// A JSON document through field rules (JSON paths, Kubernetes Secrets) and every detector.
/// The first byte picks the strategy (bits 0–1); the rest is the document (not JSON: nothing
/// to do).
///
/// Asserts that the masked document serializes to valid JSON, and that with `redact` no value
/// a detector finds in the document's text is left in the masked text (checked for values
/// that occur once, ASCII without brackets or quotes and not across a JSON escape, so that no
/// replacement, neighbour or escape can spell them again).
pub fn masking_json(data: &[u8]) {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let strategy = STRATEGIES[usize::from(choice & 3)];
    let before = doc.to_string();
    let counts = json_maskings()[usize::from(choice & 3)].mask_json(&mut doc);
    assert!(counts
        .keys()
        .all(|k| k.starts_with("rule:") || k.starts_with("detector:")));
    let after = doc.to_string();
    assert!(
        serde_json::from_str::<serde::de::IgnoredAny>(&after).is_ok(),
        "{after}"
    );
    if strategy == Strategy::Redact {
        let found = values_in_json_text(before.as_bytes());
        assert_masked(before.as_bytes(), &found, after.as_bytes());
    }
    masking_json_text(strategy, body);
}

/// The one-pass text masker on the same JSON text: when it decides alone, its output is JSON,
/// and with `redact` no value a detector finds in the text is left in it (the same check as
/// for documents, on the text as the server wrote it, which the output keeps around masks).
fn masking_json_text(strategy: Strategy, body: &[u8]) {
    let Some(i) = STRATEGIES.iter().position(|s| *s == strategy) else {
        return;
    };
    let Some(masking) = text_maskings().get(i) else {
        return;
    };
    let Some((out, _counts)) = masking.mask_json_text(body) else {
        return;
    };
    let out = out.unwrap_or_else(|| body.to_vec());
    assert!(
        serde_json::from_slice::<serde::de::IgnoredAny>(&out).is_ok(),
        "{}",
        bstr(&out)
    );
    if strategy == Strategy::Redact {
        assert_masked(body, &values_in_json_text(body), &out);
    }
}

/// What the detectors find in a JSON text that lies inside one value: a match that takes in a
/// quote or part of an escape (`\f::` read as `f::`) is not in any value, only the JSON text
/// spells it.
fn values_in_json_text(text: &[u8]) -> Vec<Found> {
    let mut found = Vec::new();
    scanner().find(text, &mut found);
    let escaped = json_escapes(text);
    found.retain(|f| {
        text.get(f.range.clone()).is_some_and(|span| {
            !span.contains(&b'"')
                && !escaped
                    .get(f.range.clone())
                    .is_some_and(|e| e.contains(&true))
        })
    });
    found
}

/// Which bytes of JSON text belong to an escape sequence (`\\n`, `\\u00e9`).
fn json_escapes(text: &[u8]) -> Vec<bool> {
    let mut escaped = vec![false; text.len()];
    let mut i = 0;
    while i < text.len() {
        if text.get(i) == Some(&b'\\') {
            let len = if text.get(i + 1) == Some(&b'u') { 6 } else { 2 };
            let end = (i + len).min(text.len());
            escaped
                .get_mut(i..end)
                .into_iter()
                .flatten()
                .for_each(|e| *e = true);
            i = end;
        } else {
            i += 1;
        }
    }
    escaped
}

/// A byte stream through [`StreamMasker`] in chunks. The first byte picks the strategy (bits
/// 0–1), the second where the chunk sizes start in their cycle (1, 7, 64, 4096 and 65536
/// bytes); the rest is the stream.
///
/// Asserts that no more than [`STREAM_HOLD_LIMIT`] bytes are ever held and none after a
/// flush. In streams without private keys or lines longer than the hold limit (which are
/// swallowed across lines, or cut), chunking makes no difference: the output and the counts
/// are those of masking the whole stream at once ([`Masking::mask_bytes`], which no detector
/// match crosses a line in); and with `redact`, no value a detector finds in the stream is
/// left in the output (checked for values that occur once in it, ASCII without brackets).
/// A value the detectors do not see in the whole stream (a card inside a longer run of
/// digits) is not the stream masker's to find.
pub fn masking_stream(data: &[u8]) {
    let [choice, seed, stream @ ..] = data else {
        return;
    };
    let strategy = STRATEGIES[usize::from(choice & 3)];
    let masking = &json_maskings()[usize::from(choice & 3)];
    let mut masker = StreamMasker::new(masking.clone());
    let sizes = [1, 7, 64, 4096, 65536];
    let mut out = Vec::new();
    let (mut rest, mut turn) = (stream, usize::from(*seed));
    while !rest.is_empty() {
        let size = sizes[turn % sizes.len()].min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        out.extend(masker.push(chunk));
        assert!(masker.held() <= STREAM_HOLD_LIMIT, "{} held", masker.held());
        rest = tail;
        turn += 1;
    }
    out.extend(masker.flush());
    assert_eq!(masker.held(), 0);
    let counts = masker.take_counts();
    let keys = memchr::memmem::find(stream, b"PRIVATE KEY").is_some();
    if keys
        || stream
            .split(|&b| b == b'\n')
            .any(|l| l.len() > STREAM_HOLD_LIMIT)
    {
        return;
    }
    let (whole, whole_counts) = masking.mask_bytes(stream);
    assert!(
        out == *whole,
        "chunked output {:?} is not the whole stream masked {:?}",
        bstr(&out),
        bstr(&whole)
    );
    assert_eq!(counts, whole_counts);
    if strategy == Strategy::Redact {
        let mut found = Vec::new();
        scanner().find(stream, &mut found);
        assert_masked(stream, &found, &out);
    }
}

/// A POST body read as MCP (size limit [`MAX_MESSAGE`]). Asserts that a partly forwarded
/// batch is a JSON array of exactly the kept messages, that every refusal is a JSON-RPC
/// message answering its request's id, and that learning tools from any JSON is bounded.
pub fn http_mcp(data: &[u8]) {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) {
        let registry = mcp::ToolRegistry::default();
        registry.learn(&doc, true);
        assert!(registry.len() <= mcp::MAX_TOOLS);
    }
    let Ok(mcp::Reading::Mcp(body)) = mcp::read_body(data, MAX_MESSAGE) else {
        return;
    };
    let n = body.messages.len();
    let allowed: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
    match body.forward(&allowed) {
        mcp::Forward::Part(part) => {
            let kept = serde_json::from_slice::<Vec<serde_json::Value>>(&part)
                .expect("a part of a batch is a JSON array");
            assert_eq!(kept.len(), allowed.iter().filter(|a| **a).count());
        }
        mcp::Forward::All => assert!(n == 1),
        mcp::Forward::Nothing => assert!(n == 0),
    }
    let why = mcp::Refusal {
        message: "no".to_owned(),
        rule: Some("r".to_owned()),
        event: Some(1),
    };
    for m in &body.messages {
        if let (Some(answer), mcp::Message::Request { call, .. }) = (mcp::refusal(m, &why), m) {
            assert_eq!(answer.get("id"), call.request_id.as_ref());
        }
    }
}

/// A request head read by [`request::describe`], the one reading that is both judged and
/// forwarded. The input is `METHOD TARGET` on its first line and `name: value` headers on the
/// next ones; the first byte's low bit picks the agent's scheme (http, https). Asserts the
/// gate's promise: the request as the gateway forwards it (HTTP/1.1 origin form, its `Host`)
/// reads back as exactly what policy judged, and so does the HTTP/2 absolute form.
pub fn http_request(data: &[u8]) {
    let Some((&choice, head)) = data.split_first() else {
        return;
    };
    let scheme = if choice & 1 == 0 { "http" } else { "https" };
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut words = first.splitn(2, |&b| b == b' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return;
    };
    let mut builder = hyper::Request::builder().method(method).uri(target);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let Ok(judged) = request::describe(&parts, scheme) else {
        return;
    };
    let host = hyper::header::HeaderValue::from_str(&judged.request.host)
        .expect("a judged host is a valid Host header");
    let forwarded = [
        hyper::Request::builder()
            .method(judged.method.clone())
            .uri(judged.path_and_query.as_str())
            .header(hyper::header::HOST, host)
            .body(()),
        hyper::Request::builder()
            .method(judged.method.clone())
            .uri(format!(
                "https://{}{}",
                judged.request.host, judged.path_and_query
            ))
            .body(()),
    ];
    for (form, built) in ["origin", "absolute"].into_iter().zip(forwarded) {
        if form == "absolute" && judged.path_and_query == "*" {
            continue; // `OPTIONS *` has no absolute form
        }
        let (parts, ()) = built
            .unwrap_or_else(|e| panic!("the {form} form of {judged:?} cannot be built: {e}"))
            .into_parts();
        let mut again = request::describe(&parts, scheme)
            .unwrap_or_else(|e| panic!("the {form} form of {judged:?} is refused: {e}"));
        if form == "absolute" {
            // The upstream's HTTP/2 leg is TLS: the scheme in the URI is the upstream's.
            again.request.scheme.clone_from(&judged.request.scheme);
        }
        assert_eq!(again, judged, "the {form} form reads another way");
    }
}

/// A response body through [`body::ResponseMasker`]. The first byte picks the content type
/// (bits 0–1: JSON, event stream, text, JSON-RPC JSON) and the chunk size (bits 2–7); the
/// rest is the body. Asserts that an event stream or JSON body masked in chunks comes out
/// exactly as masked whole, and that no value a detector found in the input and whole-body
/// masking removed is in the chunked output (values that occur once, ASCII without
/// brackets, quotes or backslashes).
pub fn http_body(data: &[u8]) {
    let Some((&choice, input)) = data.split_first() else {
        return;
    };
    let ct = [
        "application/json",
        "text/event-stream",
        "text/plain",
        "application/json",
    ][usize::from(choice & 3)];
    let size = usize::from(choice >> 2) + 1;
    let run = |size: usize| -> Option<Vec<u8>> {
        let masking: Arc<dyn crate::command::BodyMasking> = Arc::new(json_maskings()[0].clone());
        let limits = body::Limits {
            max_json: 64 * 1024,
        };
        let mut m = body::ResponseMasker::new(Some(masking), None, Some(ct), None, limits).ok()?;
        let mut out = Vec::new();
        for chunk in input.chunks(size.max(1)) {
            out.extend(m.push(chunk).ok()?);
        }
        out.extend(m.finish().ok()?);
        m.take_counts();
        Some(out)
    };
    let (Some(whole), Some(chunked)) = (run(input.len()), run(size)) else {
        return;
    };
    if ct != "text/plain" {
        assert_eq!(bstr(&whole), bstr(&chunked), "chunks of {size}");
    }
    let mut found = Vec::new();
    scanner().find(input, &mut found);
    for f in &found {
        let span = &input[f.range.clone()];
        let checkable = span.iter().all(|b| b.is_ascii() && !b"[]\"\\".contains(b))
            && occurrences(input, span) == 1
            && memchr::memmem::find(&whole, span).is_none();
        if checkable && input.len() <= STREAM_HOLD_LIMIT {
            assert!(
                memchr::memmem::find(&chunked, span).is_none(),
                "{:?} is still in {:?}",
                bstr(span),
                bstr(&chunked)
            );
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

// ---------------------------------------------------------------------------------------------
// MySQL, both directions
// ---------------------------------------------------------------------------------------------

/// The masking the default policy gives an agent at a MySQL target.
fn mysql_hooks() -> &'static MaskingHooks {
    static HOOKS: OnceLock<MaskingHooks> = OnceLock::new();
    HOOKS.get_or_init(|| {
        let masking = default_policy()
            .masking(&agent(), Some("appdb"), "mysql", None, 2)
            .expect("the default policy masks");
        MaskingHooks(Arc::new(masking))
    })
}

/// Bytes as the MySQL gateway reads them from either side: packets framed with the size
/// limit (each framing back to its bytes); the first read as the client's handshake answer
/// and as the server's greeting; every packet read as a completion (OK, ERR, EOF), an auth switch, a
/// `COM_CHANGE_USER`, a `KILL` statement and a column definition, and its data (after the
/// first byte) as a server's login challenge: the RSA public key `caching_sha2_password` sends
/// and the nonce `client_ed25519` signs; and, once columns are known, as a text row and a binary row of them, masked
/// by the default policy's masking (a masked text row holds as many values as it did).
pub fn mysql(data: &[u8]) {
    let mut reader = data;
    let mut packets = Vec::new();
    while let Ok(Some(p)) = my_codec::read_packet(&mut reader, MAX_MESSAGE)
        .now_or_never()
        .expect("reading from memory never waits")
    {
        packets.push(p);
    }
    for p in &packets {
        let mut out = Vec::new();
        my_codec::put_packet(&mut out, p.seq, &p.body);
        let again = my_codec::read_packet(&mut &out[..], MAX_MESSAGE)
            .now_or_never()
            .expect("reading from memory never waits");
        assert!(matches!(again, Ok(Some(ref q)) if q == p), "{p:?}");
    }
    // Read, never re-encoded: the gateway sends only greetings and answers of its own making
    // (an agent's or server's odd one, once read, says nothing of what the gateway sends).
    if let Some(first) = packets.first() {
        let _ = my_handshake::Response::parse(&first.body);
        let _ = my_handshake::Greeting::parse(&first.body);
        let _ = my_handshake::Response::is_ssl_request(&first.body);
    }
    let hooks = mysql_hooks();
    let mut columns = Vec::new();
    for p in &packets {
        let body = &p.body[..];
        let _ = my_codec::parse_ok(body);
        let _ = my_codec::parse_err(body);
        let _ = my_codec::parse_eof(body);
        let _ = my_handshake::parse_auth_switch(body);
        let _ = my_relay::ChangeUser::parse(body);
        if let Some(data) = body.get(1..) {
            // What the server sends during a login: a PEM key, a nonce. Only a key that parses
            // is encrypted to, and only a 32-byte nonce is signed.
            let _ = my_auth::rsa_encrypted_password(data, b"fuzz-password", &[7u8; 20]);
            assert_eq!(
                my_auth::ed25519_signature(b"fuzz-password", data).is_ok(),
                data.len() == 32,
                "{data:?}"
            );
        }
        if let Some(text) = body.get(1..).and_then(|t| std::str::from_utf8(t).ok()) {
            if let Some((scope, id)) = my_threads::parse_kill(text) {
                // A cancel names one id, and the gateway's statement names the same one.
                assert!(my_threads::kill_statement(scope, id).ends_with(&id.to_string()));
            }
        }
        if let Ok(def) = my_results::ColumnDef::parse(body) {
            columns.push(def);
            continue;
        }
        if columns.is_empty() {
            continue;
        }
        let described = columns.iter().map(my_results::ColumnDef::column).collect();
        let Some(mut masker) = hooks.masker(described) else {
            continue;
        };
        if let Ok(Some(row)) = my_results::mask_text_row(masker.as_mut(), body, columns.len()) {
            assert_eq!(text_values(&row), text_values(body), "{body:?} -> {row:?}");
        }
        let _ = my_results::mask_binary_row(masker.as_mut(), body, &columns);
    }
}

/// How many values a text row holds (`None` when it does not read as one).
fn text_values(row: &[u8]) -> Option<usize> {
    let mut r = my_codec::Reader::new(row, "text row");
    let mut n = 0;
    while !r.is_empty() {
        r.nullable_bytes().ok()?;
        n += 1;
    }
    Some(n)
}

// ---------------------------------------------------------------------------------------------
// SSH, the sftp subsystem
// ---------------------------------------------------------------------------------------------

/// The agent's sftp stream as the SSH gateway reads it: framed into packets with the size
/// limit, each classified (passed, judged with its words, or refused as unreadable) with the
/// server's handles mirrored. A judged
/// packet's words start with `sftp`, and its refusal is a packet that frames whole.
pub fn sftp(data: &[u8]) {
    let mut framer = ssh_sftp::Framer::default();
    framer.push(data);
    // One stream stands for both directions here: every packet is also read as a server's
    // answer, so handles get mirrored and later `fsetstat`s name their files.
    let mut handles = ssh_sftp::Handles::default();
    while let Ok(Some(packet)) = framer.next_packet() {
        handles.answered(&packet);
        match ssh_sftp::classify(&packet, &handles) {
            ssh_sftp::Verdict::Pass => handles.forwarded(&packet, None),
            ssh_sftp::Verdict::Judge { id, words } => {
                handles.forwarded(&packet, Some(&words));
                assert_eq!(words.first().map(String::as_str), Some("sftp"), "{words:?}");
                let _ = ssh_sftp::request(&words).canonical();
                let refusal = ssh_sftp::refusal(id, "refused").expect("a status encodes");
                let mut again = ssh_sftp::Framer::default();
                again.push(&refusal);
                assert_eq!(again.next_packet().ok().flatten(), Some(refusal));
            }
            ssh_sftp::Verdict::Unreadable { id, .. } => {
                assert!(ssh_sftp::refusal(id, "unreadable").is_ok());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes, the request line
// ---------------------------------------------------------------------------------------------

/// A Kubernetes API request as the gateway reads it: the method, the path and the query, one a
/// line (the path as `http::request` hands it over: decoded and normalised, so it starts with
/// `/`). Whatever the input, the reading ends (a request or a 400), and a resource request's
/// group, version, resource, subresource and namespace are single path segments, so a rule
/// about namespace `a` can never be read into `a/../b`; its canonical text and rule name exist.
pub fn kube_request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let (Some(method), Some(path)) = (lines.next(), lines.next()) else {
        return;
    };
    if !path.starts_with('/') {
        return;
    }
    let query = lines.next();
    let Ok(request) = kube::read(method, path, query) else {
        return;
    };
    assert_eq!(kube::read(method, path, query).ok(), Some(request.clone()));
    if request.resource.is_some() {
        let segments = [
            Some(request.api_group.as_str()),
            Some(request.api_version.as_str()),
            request.resource.as_deref(),
            request.subresource.as_deref(),
            request.namespace.as_deref(),
        ];
        for segment in segments.into_iter().flatten() {
            assert!(!segment.contains('/'), "{request:?}");
        }
    }
    let _ = request.canonical();
    let _ = request.resource_name();
}

// ---------------------------------------------------------------------------------------------
// SSH, the target's known_hosts
// ---------------------------------------------------------------------------------------------

/// A public key the `known_hosts` target checks (an ed25519 key made for these tests).
const KNOWN_KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINsHl0iXo9hTSQBD5xWuUAzpctnSCCr2XQLQlWyP6pGJ";

/// A `known_hosts` file as the SSH gateway reads it: the first line is the server's name, the
/// rest the file. Reading never panics and fails only on an `@revoked` line it cannot read.
/// Whatever the file holds, adding a line that revokes a key makes that key revoked for the
/// name; and adding a plain line naming the server literally (a name with no pattern
/// characters) makes the key trusted, unless the file already revoked it.
pub fn known_hosts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (name, file) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(parsed) = ssh_known_hosts::KnownHosts::parse(file) else {
        return;
    };
    let key = russh::keys::parse_public_key_base64(KNOWN_KEY).expect("a valid key");
    let before = parsed.check_key(name, &key);
    let _ = parsed.has_authority_for(name);
    let revoked = format!("{file}\n@revoked * ssh-ed25519 {KNOWN_KEY}\n");
    let with_revocation = ssh_known_hosts::KnownHosts::parse(&revoked).expect("still reads");
    assert!(
        matches!(
            with_revocation.check_key(name, &key),
            ssh_known_hosts::Verdict::Revoked { .. }
        ),
        "{name:?}"
    );
    let literal =
        !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || ",*?!#@|".contains(c));
    if literal {
        let listed = format!("{file}\n{name} ssh-ed25519 {KNOWN_KEY}\n");
        let with_line = ssh_known_hosts::KnownHosts::parse(&listed).expect("still reads");
        let verdict = with_line.check_key(name, &key);
        match before {
            ssh_known_hosts::Verdict::Revoked { .. } => assert_eq!(verdict, before),
            _ => assert!(
                matches!(verdict, ssh_known_hosts::Verdict::Trusted { .. }),
                "{name:?}: {verdict:?}"
            ),
        }
    }
}

#[cfg(test)]
mod tests;

/// Command notations and shell command lines: the first byte picks the kind (connect, sql,
/// http, mcp, kubernetes, ssh), the rest is the text. Reading never panics, and an HTTP request
/// or MCP call reads back the same from its own canonical text (what approvers and the journal
/// see names the same command).
pub fn commands(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    crate::command::shell::parse(&text);
    let family = Family::ALL[usize::from(pick) % Family::ALL.len()];
    let Ok(asked) = Asked::parse(family, &text) else {
        return;
    };
    let op = asked.operation();
    let canonical = op.canonical();
    op.action();
    op.objects();
    op.detail();
    if matches!(family, Family::Http | Family::Mcp) {
        let again = Asked::parse(family, &canonical)
            .unwrap_or_else(|e| panic!("{canonical:?} does not read back: {e}"));
        assert_eq!(again.operation().canonical(), canonical);
    }
}

/// A SPDY exec or port-forward stream (`protocol::kubernetes::spdy`), both directions.
///
/// Input: the first byte picks exec (even) or port-forward (odd); then pieces, each a kind
/// byte and a 16-bit length: 0 the agent's raw bytes, 1 the API server's raw bytes, 2 a
/// SYN_STREAM whose (uncompressed) header block is the piece, after a 4-byte stream id,
/// compressed here as a client would (so the fuzzer reaches streams that open), 3 an idle
/// flush. Properties: nothing panics; what passes to the server is exactly the agent's bytes
/// up to where they were read (never altered); what the agent is sent is whole frames; after
/// a refusal in one direction nothing more is fed that way.
pub fn kube_spdy(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    static HOOKS: OnceLock<MaskingHooks> = OnceLock::new();
    let hooks = HOOKS.get_or_init(|| MaskingHooks::detecting(Strategy::Redact));
    let recorder = kube_exec::Recorder {
        hooks,
        event: EventId(1),
        started: std::time::Instant::now(),
        masking: Some(Arc::new(hooks.0.clone()) as Arc<dyn crate::command::BodyMasking>),
        channels: if first % 2 == 0 {
            kube_exec::Channels::Terminal
        } else {
            kube_exec::Channels::PortForward
        },
    };
    let mut probe = kube_spdy::Probe::new(&recorder);
    let mut compressor = kube_spdy::Probe::<MaskingHooks>::compressor();
    let (mut agent_fed, mut agent_passed) = (Vec::new(), Vec::new());
    let (mut agent_ok, mut upstream_ok) = (true, true);
    while rest.len() >= 3 {
        let kind = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let piece = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let agent_bytes = match kind % 4 {
            0 => Some(piece.to_vec()),
            2 if piece.len() >= 4 => {
                let mut compressed = Vec::with_capacity(piece.len() + 64);
                if compressor
                    .compress_vec(&piece[4..], &mut compressed, flate2::FlushCompress::Sync)
                    .is_err()
                {
                    return;
                }
                let mut payload = piece[..4].to_vec();
                payload.extend([0, 0, 0, 0, 0, 0]);
                payload.extend(compressed);
                let Ok(len) = u32::try_from(payload.len()) else {
                    return;
                };
                let mut frame = vec![0x80, 0x03, 0x00, 0x01, 0x00];
                frame.extend(&len.to_be_bytes()[1..]);
                frame.extend(payload);
                Some(frame)
            }
            1 if upstream_ok => {
                match probe.upstream_sent(piece) {
                    Ok(out) => assert!(kube_spdy::Probe::<MaskingHooks>::whole_frames(&out)),
                    Err(_) => upstream_ok = false,
                }
                None
            }
            3 => {
                let out = probe.flush();
                assert!(kube_spdy::Probe::<MaskingHooks>::whole_frames(&out));
                None
            }
            _ => None,
        };
        if let (Some(bytes), true) = (agent_bytes, agent_ok) {
            agent_fed.extend_from_slice(&bytes);
            match probe.agent_sent(&bytes) {
                Ok(pass) => {
                    agent_passed.extend_from_slice(&pass);
                    assert!(agent_fed.starts_with(&agent_passed));
                    assert!(kube_spdy::Probe::<MaskingHooks>::whole_frames(
                        &agent_passed
                    ));
                }
                Err(_) => agent_ok = false,
            }
        }
    }
}
