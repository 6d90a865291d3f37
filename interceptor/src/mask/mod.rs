//! Masking: sensitive values never reach the agent, or the journal, in the clear.
//!
//! Why this exists: an agent that reads a customers table must not carry emails, card numbers
//! or secrets into its prompt, its logs, or a model provider. Values are rewritten on the wire,
//! before the agent sees them, by two mechanisms that complement each other:
//!
//! - **column rules** (`customers.email`, `ssn`, `*.card_*`): the whole value of a column that
//!   comes from a named table column, whatever it holds;
//! - **content detectors** ([`detect`]): validated patterns (Luhn for cards, mod-97 for IBANs,
//!   …) found anywhere in any value. They are what defeats `concat(ssn)`, `row_to_json(t)` or
//!   `array_agg(email)`, which hide the source column from column rules.
//!
//! This module knows nothing of wire protocols: a protocol describes a result's columns
//! ([`ResultColumn`]) and hands values to a [`ResultMasker`], which answers keep, replace or
//! NULL (see [`crate::command::Masker`]). What is masked is counted per rule and detector;
//! the counts are journaled, the values never are.

pub mod detect;
mod json;
mod stream;

use std::{
    borrow::Cow,
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::command::{
    BodyMasking, MaskReport, Masker, ResultColumn, Rewrite, StreamMask, ValueKind,
};
use detect::{Detector, Found, Scanner};
pub use json::{FieldRule, MaskedJsonText};
pub use stream::{StreamMasker, STREAM_HOLD_LIMIT};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaskError {
    #[error("masking hash key {path}: {source}")]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("masking hash key {0} is shorter than 32 bytes")]
    ShortKey(PathBuf),
}

/// How a masked value (or the masked part of a value) is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// `[REDACTED:email]` (detectors) or `[REDACTED]` (column rules).
    #[default]
    Redact,
    /// Keeps the last 4 letters or digits and the punctuation: `****-****-****-1111`.
    Partial,
    /// `hash:` and 16 hex digits of a keyed HMAC-SHA-256: equal values stay equal (joinable),
    /// and without the key nobody can test guesses against them.
    Hash,
    /// The whole value becomes SQL NULL.
    Null,
}

/// The key of the `hash` strategy. It lives in a file (never in a policy): an operator can
/// share it between hosts so that hashes join across them.
pub struct HashKey(ring::hmac::Key);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

impl HashKey {
    pub fn from_bytes(bytes: &[u8]) -> HashKey {
        HashKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    /// Reads the key, creating a random one (mode 0600) when the file does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<HashKey, MaskError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let err = |source| MaskError::Key {
            path: path.to_owned(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= 32 => return Ok(HashKey::from_bytes(&bytes)),
            Ok(_) => return Err(MaskError::ShortKey(path.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| err(std::io::Error::other("no randomness")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        file.write_all(&bytes).map_err(err)?;
        Ok(HashKey::from_bytes(&bytes))
    }

    fn token(&self, value: &[u8]) -> Vec<u8> {
        let tag = ring::hmac::sign(&self.0, value);
        let mut out = b"hash:".to_vec();
        for b in &tag.as_ref()[..8] {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        out
    }
}

/// Masks whole values of the columns its patterns name.
#[derive(Debug)]
pub struct ColumnRule {
    pub name: String,
    pub strategy: Strategy,
    /// Against `schema.table.column`, `table.column` and `column` of a resolved source.
    full: GlobSet,
    /// The last part of each pattern, against a column name when the source is unknown:
    /// wider than `full`, so not knowing the source masks more, never less.
    by_name: GlobSet,
    /// True when some pattern names a table, so sources are worth resolving.
    pub qualified: bool,
}

impl ColumnRule {
    pub fn new(name: &str, patterns: &[String], strategy: Strategy) -> Result<ColumnRule, String> {
        let build = |list: &mut dyn Iterator<Item = &str>| -> Result<GlobSet, String> {
            let mut set = GlobSetBuilder::new();
            for p in list {
                set.add(
                    GlobBuilder::new(p)
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| format!("column pattern {p:?}: {e}"))?,
                );
            }
            set.build().map_err(|e| e.to_string())
        };
        let full = build(&mut patterns.iter().map(String::as_str))?;
        let by_name = build(
            &mut patterns
                .iter()
                .map(|p| p.rsplit('.').next().unwrap_or(p.as_str())),
        )?;
        Ok(ColumnRule {
            name: name.to_owned(),
            strategy,
            full,
            by_name,
            qualified: patterns.iter().any(|p| p.contains('.')),
        })
    }

    pub fn matches(&self, column: &ResultColumn) -> bool {
        match &column.source {
            Some(source) => {
                let mut parts = source.splitn(3, '.');
                let (a, b, c) = (parts.next(), parts.next(), parts.next());
                let candidates: [Option<String>; 3] = match (a, b, c) {
                    (Some(_), Some(t), Some(c)) => [
                        Some(source.clone()),
                        Some(format!("{t}.{c}")),
                        Some(c.to_owned()),
                    ],
                    _ => [Some(source.clone()), None, None],
                };
                candidates.iter().flatten().any(|c| self.full.is_match(c))
            }
            None => self.by_name.is_match(&column.name),
        }
    }

    /// Whether a column reference written in SQL (`ssn`, `t.ssn`, `t.*`) may be one this rule
    /// masks, judged by its last part (aliases hide the real table).
    pub fn may_name(&self, reference: &str) -> bool {
        let last = reference.rsplit('.').next().unwrap_or(reference);
        last == "*" || self.by_name.is_match(last)
    }
}

/// A detector switched on, with what to do with its matches.
#[derive(Debug, Clone)]
pub struct DetectorRule {
    pub detector: Detector,
    pub strategy: Strategy,
    /// The mask rule that switched it on.
    pub rule: String,
}

/// The masking in force for one session: the rules of its policy that apply to its identity
/// and target.
#[derive(Debug)]
pub struct Masking {
    columns: Vec<Arc<ColumnRule>>,
    /// Field rules for JSON documents (JSON paths, Kubernetes Secrets), in priority order.
    fields: Vec<Arc<FieldRule>>,
    strategies: BTreeMap<Detector, Strategy>,
    scanner: Option<Arc<Scanner>>,
    /// `None` when no key could be read: `hash` then redacts (never a hash anyone could
    /// reproduce with a known key, and never the clear value).
    key: Option<Arc<HashKey>>,
    /// Rows of each result kept in the journal (after masking); 0 keeps none.
    sample_rows: usize,
}

/// Counter names, allocated once per rule or detector.
fn rule_counter(rule: &str) -> String {
    format!("rule:{rule}")
}

fn detector_counter(d: Detector) -> &'static str {
    match d {
        Detector::CreditCard => "detector:credit_card",
        Detector::Iban => "detector:iban",
        Detector::Ssn => "detector:ssn",
        Detector::Email => "detector:email",
        Detector::Phone => "detector:phone",
        Detector::Ipv4 => "detector:ipv4",
        Detector::Ipv6 => "detector:ipv6",
        Detector::AwsAccessKey => "detector:aws_access_key",
        Detector::GithubToken => "detector:github_token",
        Detector::SlackToken => "detector:slack_token",
        Detector::Jwt => "detector:jwt",
        Detector::PrivateKey => "detector:private_key",
        Detector::StripeKey => "detector:stripe_key",
    }
}

impl Masking {
    /// `detectors` in priority order: the first rule naming a detector sets its strategy.
    /// `scanner` must be built from the same detectors (callers cache it; it is costly).
    pub fn new(
        columns: Vec<Arc<ColumnRule>>,
        detectors: &[DetectorRule],
        scanner: Option<Arc<Scanner>>,
        key: Option<Arc<HashKey>>,
        sample_rows: usize,
    ) -> Masking {
        let mut strategies = BTreeMap::new();
        for d in detectors {
            strategies.entry(d.detector).or_insert(d.strategy);
        }
        Masking {
            columns,
            fields: Vec::new(),
            strategies,
            scanner: scanner.filter(|s| !s.is_empty()),
            key,
            sample_rows,
        }
    }

    /// Adds the field rules that select values in JSON documents (see [`Masking::mask_json`]),
    /// in priority order. Column rules never apply to JSON documents: they name SQL columns.
    pub fn with_fields(mut self, fields: Vec<Arc<FieldRule>>) -> Masking {
        self.fields = fields;
        self
    }

    /// True when nothing is masked and nothing sampled: protocols can skip the work.
    pub fn is_inert(&self) -> bool {
        self.columns.is_empty()
            && self.fields.is_empty()
            && self.scanner.is_none()
            && self.sample_rows == 0
    }

    /// True when a JSON document or a text could be masked: some field rule or detector is
    /// in force (column rules name SQL columns and never apply to documents).
    pub fn masks_documents(&self) -> bool {
        !self.fields.is_empty() || self.scanner.is_some()
    }

    /// True when some column rule names a table, so sources are worth resolving.
    pub fn wants_sources(&self) -> bool {
        self.columns.iter().any(|c| c.qualified)
    }

    pub fn masker(self: &Arc<Self>, columns: Vec<ResultColumn>) -> ResultMasker {
        let plans = columns
            .iter()
            .map(|c| ColumnPlan {
                kind: c.kind,
                rule: self.columns.iter().position(|r| r.matches(c)),
            })
            .collect();
        ResultMasker {
            masking: self.clone(),
            plans,
            counts: BTreeMap::new(),
            found: Vec::new(),
            sample: (self.sample_rows > 0).then(Vec::new),
            row: Vec::new(),
        }
    }

    /// Masks what detectors find in a text that is not a value (a statement for the journal,
    /// an error message): spans are replaced (a `null` strategy redacts instead). Returns the
    /// counts too.
    pub fn mask_text<'t>(&self, text: &'t str) -> (Cow<'t, str>, BTreeMap<String, u64>) {
        match self.mask_bytes(text.as_bytes()) {
            (Cow::Borrowed(_), counts) => (Cow::Borrowed(text), counts),
            // Replacements are ASCII and spans end on match boundaries, so this stays UTF-8;
            // a lossy conversion covers any detector that ended inside a character.
            (Cow::Owned(out), counts) => (
                Cow::Owned(String::from_utf8_lossy(&out).into_owned()),
                counts,
            ),
        }
    }

    /// [`Masking::mask_text`] on bytes that need not be UTF-8: what a byte stream masked
    /// whole, at once, would be (the reference a [`StreamMasker`]'s chunked output is held to).
    pub fn mask_bytes<'t>(&self, text: &'t [u8]) -> (Cow<'t, [u8]>, BTreeMap<String, u64>) {
        let mut counts = BTreeMap::new();
        let Some(scanner) = &self.scanner else {
            return (Cow::Borrowed(text), counts);
        };
        let mut found = Vec::new();
        scanner.find(text, &mut found);
        if found.is_empty() {
            return (Cow::Borrowed(text), counts);
        }
        let out = self.replace_spans(text, &found, &mut counts);
        (Cow::Owned(out), counts)
    }

    /// `text` with each match in `found` replaced (a `null` strategy redacts: a text has no
    /// NULL), each counted under its detector.
    fn replace_spans(
        &self,
        text: &[u8],
        found: &[Found],
        counts: &mut BTreeMap<String, u64>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            let Some(span) = text.get(f.range.clone()) else {
                continue;
            };
            out.extend_from_slice(text.get(at..f.range.start).unwrap_or_default());
            let strategy = match self.strategy(f.detector) {
                Strategy::Null => Strategy::Redact,
                s => s,
            };
            out.extend_from_slice(&self.replacement(strategy, span, Some(f.detector)));
            *counts
                .entry(detector_counter(f.detector).to_owned())
                .or_default() += 1;
            at = f.range.end;
        }
        out.extend_from_slice(text.get(at..).unwrap_or_default());
        out
    }

    fn strategy(&self, d: Detector) -> Strategy {
        self.strategies.get(&d).copied().unwrap_or_default()
    }

    /// The text that replaces `value` under `strategy` (never called for `Null`).
    fn replacement(&self, strategy: Strategy, value: &[u8], detector: Option<Detector>) -> Vec<u8> {
        match strategy {
            Strategy::Redact | Strategy::Null => match detector {
                Some(d) => format!("[REDACTED:{}]", d.name()).into_bytes(),
                None => b"[REDACTED]".to_vec(),
            },
            Strategy::Partial => partial(value),
            Strategy::Hash => match &self.key {
                Some(key) => key.token(value),
                None => self.replacement(Strategy::Redact, value, detector),
            },
        }
    }
}

/// Keeps the last 4 ASCII letters or digits (only when at least 8 would be hidden otherwise
/// the value is short enough to guess) and the punctuation; everything else becomes `*`.
fn partial(value: &[u8]) -> Vec<u8> {
    let maskable = |b: &u8| !(b.is_ascii_punctuation() || b.is_ascii_whitespace());
    let total = value.iter().filter(|b| maskable(b)).count();
    let keep = if total >= 8 { 4 } else { 0 };
    let mut seen = 0;
    value
        .iter()
        .map(|b| {
            if !maskable(b) {
                return *b;
            }
            seen += 1;
            if seen > total - keep && b.is_ascii_alphanumeric() {
                *b
            } else {
                b'*'
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct ColumnPlan {
    kind: ValueKind,
    /// Index of the column rule that masks the whole column.
    rule: Option<usize>,
}

/// Masks the values of one result set. Holds its own counters, so sessions never contend.
pub struct ResultMasker {
    masking: Arc<Masking>,
    plans: Vec<ColumnPlan>,
    counts: BTreeMap<String, u64>,
    found: Vec<Found>,
    sample: Option<Vec<Vec<Option<String>>>>,
    row: Vec<Option<String>>,
}

impl ResultMasker {
    fn count(&mut self, key: Cow<'_, str>) {
        match self.counts.get_mut(key.as_ref()) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(key.into_owned(), 1);
            }
        }
    }

    fn sampling(&self) -> bool {
        self.sample
            .as_ref()
            .is_some_and(|s| s.len() < self.masking.sample_rows)
    }

    fn record(&mut self, kind: ValueKind, value: Option<&[u8]>) {
        if !self.sampling() {
            return;
        }
        let shown = value.map(|v| match (kind, std::str::from_utf8(v)) {
            (ValueKind::Opaque, Ok(s)) if s.chars().all(|c| !c.is_control()) => s.to_owned(),
            (ValueKind::Opaque, _) => format!("<{} bytes>", v.len()),
            (ValueKind::JsonWithHeader, _) => {
                String::from_utf8_lossy(v.get(1..).unwrap_or_default()).into_owned()
            }
            _ => String::from_utf8_lossy(v).into_owned(),
        });
        self.row.push(shown);
    }

    fn mask(&mut self, plan: ColumnPlan, value: &[u8]) -> Rewrite {
        // The common case first, without touching anything shared: no column rule, no JSON
        // keys to look at, and the detectors find nothing.
        let json_keys = matches!(plan.kind, ValueKind::Json | ValueKind::JsonWithHeader)
            && !self.masking.columns.is_empty();
        let plain = plan.rule.is_none() && !json_keys;
        if plain {
            let Some(scanner) = &self.masking.scanner else {
                return Rewrite::Keep;
            };
            self.found.clear();
            scanner.find(value, &mut self.found);
            if self.found.is_empty() {
                return Rewrite::Keep;
            }
        }
        let masking = self.masking.clone();
        if let Some(i) = plan.rule {
            let rule = &masking.columns[i];
            self.count(Cow::Owned(rule_counter(&rule.name)));
            if rule.strategy == Strategy::Null {
                return Rewrite::Null;
            }
            return match plan.kind {
                ValueKind::Text => {
                    Rewrite::Replace(masking.replacement(rule.strategy, value, None))
                }
                ValueKind::Json | ValueKind::JsonWithHeader => {
                    let body = if plan.kind == ValueKind::JsonWithHeader {
                        value.get(1..).unwrap_or_default()
                    } else {
                        value
                    };
                    let mut out = Vec::new();
                    if plan.kind == ValueKind::JsonWithHeader {
                        out.push(value.first().copied().unwrap_or(1));
                    }
                    // A JSON string, escaped: `partial` keeps the value's punctuation and
                    // white space, quotes, backslashes and newlines included.
                    let replacement = masking.replacement(rule.strategy, body, None);
                    let text = String::from_utf8_lossy(&replacement).into_owned();
                    out.extend_from_slice(serde_json::Value::String(text).to_string().as_bytes());
                    Rewrite::Replace(out)
                }
                ValueKind::Opaque => Rewrite::Null,
            };
        }
        // JSON built from whole rows (`row_to_json(t)`, `json_agg(t)`) carries columns under
        // their names: column rules apply to the keys.
        let keyed = match plan.kind {
            ValueKind::Json | ValueKind::JsonWithHeader if !masking.columns.is_empty() => {
                self.mask_json_keys(plan.kind, value)
            }
            _ => None,
        };
        let value: &[u8] = keyed.as_deref().unwrap_or(value);
        let Some(scanner) = &masking.scanner else {
            return keyed.map_or(Rewrite::Keep, Rewrite::Replace);
        };
        if !plain {
            self.found.clear();
            scanner.find(value, &mut self.found);
        }
        if self.found.is_empty() {
            return keyed.map_or(Rewrite::Keep, Rewrite::Replace);
        }
        let found = std::mem::take(&mut self.found);
        for f in &found {
            self.count(Cow::Borrowed(detector_counter(f.detector)));
        }
        let whole_null = plan.kind == ValueKind::Opaque
            || found
                .iter()
                .any(|f| masking.strategy(f.detector) == Strategy::Null);
        let rewrite = if whole_null {
            Rewrite::Null
        } else {
            let spliced = splice(&masking, plan.kind, value, &found);
            if valid_json(plan.kind, &spliced) {
                Rewrite::Replace(spliced)
            } else {
                // A match that does not end inside its JSON string (a private key block runs
                // to the end of the value) or a `partial` that breaks an escape: the client's
                // parser would choke on the document, so it gets NULL (fail closed).
                Rewrite::Null
            }
        };
        self.found = found;
        rewrite
    }
}

impl ResultMasker {
    /// Masks the values of object keys that column rules name; `None` when none matched (or
    /// the value is not JSON this can parse).
    fn mask_json_keys(&mut self, kind: ValueKind, value: &[u8]) -> Option<Vec<u8>> {
        let (header, body) = match kind {
            ValueKind::JsonWithHeader => (value.first().copied(), value.get(1..)?),
            _ => (None, value),
        };
        let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        let masking = self.masking.clone();
        let mut hits = Vec::new();
        mask_keys(&masking, &mut doc, &mut hits);
        if hits.is_empty() {
            return None;
        }
        for i in hits {
            self.count(Cow::Owned(rule_counter(&masking.columns[i].name)));
        }
        let mut out: Vec<u8> = header.into_iter().collect();
        serde_json::to_writer(&mut out, &doc).ok()?;
        Some(out)
    }
}

fn mask_keys(masking: &Masking, doc: &mut serde_json::Value, hits: &mut Vec<usize>) {
    use serde_json::Value;
    match doc {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let rule = masking
                    .columns
                    .iter()
                    .position(|r| r.may_name(key) && key != "*");
                match rule {
                    Some(i) if !v.is_null() => {
                        hits.push(i);
                        let strategy = masking.columns[i].strategy;
                        *v = match strategy {
                            Strategy::Null => Value::Null,
                            _ => {
                                let text = match &*v {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                };
                                let masked = masking.replacement(strategy, text.as_bytes(), None);
                                Value::String(String::from_utf8_lossy(&masked).into_owned())
                            }
                        };
                    }
                    _ => mask_keys(masking, v, hits),
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                mask_keys(masking, v, hits);
            }
        }
        _ => {}
    }
}

/// False when `value` should be JSON of this kind and is not (true for other kinds).
fn valid_json(kind: ValueKind, value: &[u8]) -> bool {
    let body = match kind {
        ValueKind::Json => value,
        ValueKind::JsonWithHeader => value.get(1..).unwrap_or_default(),
        ValueKind::Text | ValueKind::Opaque => return true,
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Replaces each match in `value`. In JSON, a match outside a string (a number) is replaced
/// by a string, so the document stays valid for the client's JSON parser.
fn splice(masking: &Masking, kind: ValueKind, value: &[u8], found: &[Found]) -> Vec<u8> {
    let json = matches!(kind, ValueKind::Json | ValueKind::JsonWithHeader);
    let mut out = Vec::with_capacity(value.len() + 16);
    let mut at = 0;
    // JSON string state, advanced from `scan` up to each match's start.
    let (mut scan, mut in_string, mut escaped) = (
        if kind == ValueKind::JsonWithHeader {
            1
        } else {
            0
        },
        false,
        false,
    );
    for f in found {
        let (Some(span), Some(before)) = (value.get(f.range.clone()), value.get(at..f.range.start))
        else {
            continue;
        };
        out.extend_from_slice(before);
        let strategy = masking.strategy(f.detector);
        let replacement = masking.replacement(strategy, span, Some(f.detector));
        if json {
            for &b in value.get(scan..f.range.start).unwrap_or_default() {
                match (in_string, escaped, b) {
                    (true, true, _) => escaped = false,
                    (true, false, b'\\') => escaped = true,
                    (true, false, b'"') => in_string = false,
                    (false, _, b'"') => in_string = true,
                    _ => {}
                }
            }
            scan = f.range.start;
        }
        if json && !in_string {
            out.push(b'"');
            out.extend_from_slice(&replacement);
            out.push(b'"');
        } else {
            out.extend_from_slice(&replacement);
        }
        at = f.range.end;
    }
    out.extend_from_slice(value.get(at..).unwrap_or_default());
    out
}

impl Masker for ResultMasker {
    fn value(&mut self, column: usize, value: Option<&[u8]>) -> Rewrite {
        // A column the protocol could not describe: opaque, and if any rule masks whole
        // columns, masked whole (it might be one of them).
        let plan = self.plans.get(column).copied().unwrap_or(ColumnPlan {
            kind: ValueKind::Opaque,
            rule: None,
        });
        let rewrite = match value {
            None => Rewrite::Keep,
            Some(_) if column >= self.plans.len() && !self.masking.columns.is_empty() => {
                self.count(Cow::Borrowed("undescribed_column"));
                Rewrite::Null
            }
            Some(v) => self.mask(plan, v),
        };
        if self.sampling() {
            match &rewrite {
                Rewrite::Keep => self.record(plan.kind, value),
                Rewrite::Replace(v) => {
                    let v = v.clone();
                    self.record(plan.kind, Some(&v))
                }
                Rewrite::Null => self.record(plan.kind, None),
            }
        }
        rewrite
    }

    fn end_row(&mut self) {
        if let Some(sample) = &mut self.sample {
            if sample.len() < self.masking.sample_rows {
                sample.push(std::mem::take(&mut self.row));
            }
        }
    }

    fn report(&mut self) -> MaskReport {
        MaskReport {
            counts: std::mem::take(&mut self.counts),
            sample: self.sample.as_mut().map(std::mem::take),
        }
    }
}

#[cfg(test)]
mod tests;

/// HTTP and MCP bodies: JSON documents through [`Masking::mask_json`], text through a
/// [`StreamMasker`] (which shares the session's masking, hence the `Arc`).
impl BodyMasking for Arc<Masking> {
    fn mask_json(&self, doc: &mut serde_json::Value) -> BTreeMap<String, u64> {
        Masking::mask_json(self, doc)
    }

    fn mask_json_text(&self, text: &[u8]) -> Option<MaskedJsonText> {
        Masking::mask_json_text(self, text)
    }

    fn stream(&self) -> Box<dyn StreamMask> {
        Box::new(StreamMasker::new(self.clone()))
    }
}
