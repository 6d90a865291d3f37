//! Masking JSON documents: HTTP and MCP bodies, MCP tool arguments and results, Kubernetes
//! objects.
//!
//! Why this exists: the protocols after PostgreSQL carry their data as JSON, where a value is
//! named by where it sits (`$.data.password`), not by a table column. [`FieldRule`]s select
//! values by JSON path (RFC 9535, `serde_json_path`) or as the data of Kubernetes Secrets; the
//! content detectors ([`super::detect`]) then look at every other string, number and object
//! key. The document is masked in place as a `serde_json::Value`, so it stays valid JSON
//! whatever a replacement holds (no splicing into JSON text as the row masker must do).
//!
//! What it does not do: read or write bytes (the protocol parses the body and serializes it
//! again; a body that is not JSON is a text for [`Masking::mask_text`]), or decide which body
//! is JSON. Column rules (`columns`) never apply here: they name SQL columns.
//!
//! Decisions:
//! - **A selected object or array is masked leaf by leaf**: every string and number under it
//!   is replaced, keys and structure stay (a client still finds its fields). Booleans and
//!   nulls stay: they carry a bit, not a secret. Its keys are still seen by the detectors, and
//!   one holding a match is renamed as anywhere else (a Secret's `data` keyed by an email
//!   address must not show it).
//! - **The widest selection wins**: when two selections overlap, the one that holds the other
//!   masks it all (so no value is masked twice, and `hash` stays the hash of the clear value);
//!   between rules selecting the same value, the first in priority order.
//! - **Numbers are matched by their decimal text**, as the PostgreSQL path does, and a
//!   masked number becomes a string (a replacement is not a number).
//! - **Secret `data` values stay base64**: Kubernetes clients decode them, and a replacement
//!   that is not base64 would make them reject the whole response. The clear value is decoded,
//!   masked and encoded again, so an agent reading the Secret sees `[REDACTED]`.

use std::collections::{BTreeMap, HashSet};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use super::{detect::Found, detector_counter, rule_counter, Masking, Strategy};

/// The annotation in which `kubectl apply` keeps the last applied object, a Secret's data
/// included, as JSON text.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A `[[mask]]` entry's field selectors: the values it masks in JSON documents.
#[derive(Debug)]
pub struct FieldRule {
    pub name: String,
    pub strategy: Strategy,
    paths: Vec<JsonPath>,
    kubernetes_secrets: bool,
}

impl FieldRule {
    /// `json_paths` are RFC 9535 JSON paths; an invalid one is an error naming it.
    pub fn new(
        name: &str,
        json_paths: &[String],
        kubernetes_secrets: bool,
        strategy: Strategy,
    ) -> Result<FieldRule, String> {
        let paths = json_paths
            .iter()
            .map(|p| JsonPath::parse(p).map_err(|e| format!("JSON path {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(FieldRule {
            name: name.to_owned(),
            strategy,
            paths,
            kubernetes_secrets,
        })
    }
}

/// How a selected value is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Treatment {
    /// Every string and number leaf under it.
    Leaves,
    /// Every string leaf is base64 (a Secret's `data`): decoded, masked, encoded again.
    Base64Leaves,
    /// The last-applied annotation of a Secret: a Secret again, as JSON text.
    LastApplied,
}

/// A value a field rule selected, by JSON pointer (RFC 6901).
#[derive(Debug)]
struct Selection {
    pointer: String,
    rule: usize,
    treatment: Treatment,
}

impl Masking {
    /// Masks a JSON document in place: field rules on the values they select, then the
    /// detectors on every other string, number and object key. Returns the counts per rule
    /// (`rule:NAME`) and detector (`detector:NAME`), one per value masked.
    pub fn mask_json(&self, doc: &mut Value) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        let selections = self.select(doc);
        for s in &selections {
            let Some(rule) = self.fields.get(s.rule) else {
                continue;
            };
            if let Some(value) = doc.pointer_mut(&s.pointer) {
                let counter = rule_counter(&rule.name);
                let n = self.mask_selected(value, rule.strategy, s.treatment, &mut counts);
                if n > 0 {
                    *counts.entry(counter).or_default() += n;
                }
            }
        }
        if self.scanner.is_some() {
            let skip: HashSet<&str> = selections.iter().map(|s| s.pointer.as_str()).collect();
            let mut found = Vec::new();
            self.detect_in(doc, &mut String::new(), &skip, &mut found, &mut counts);
        }
        counts
    }

    /// Masks a JSON text in one pass, without building a document: every string and number
    /// the detectors match is replaced where it stands, and every other byte is kept (key order,
    /// spacing, number spellings, a key given twice). The result reads as [`Masking::mask_json`]
    /// would have masked the same document.
    ///
    /// `None` when this reading cannot decide alone, and the caller masks the parsed document
    /// instead: field rules apply (they select by path), an object key holds a match (keys are
    /// renamed, which needs the object's other keys), a key is `jsonrpc` (JSON-RPC results hold
    /// documents as text, which the caller masks as documents), or the text is not JSON.
    /// Otherwise the masked text (`None` inside when nothing was masked: the input stands) and
    /// the counts per detector.
    ///
    /// Why: a document round trip (parse to a `Value`, mask, serialize) cost six times the
    /// detectors themselves on large HTTP answers (docs/performance.md).
    pub fn mask_json_text(&self, text: &[u8]) -> Option<MaskedJsonText> {
        if !self.fields.is_empty() {
            return None;
        }
        // Valid JSON first, so the scan below only has to tell strings and numbers apart from
        // the rest; and valid UTF-8, which serde's skipping parse does not check.
        std::str::from_utf8(text).ok()?;
        serde_json::from_slice::<serde::de::IgnoredAny>(text).ok()?;
        let mut counts = BTreeMap::new();
        let Some(scanner) = &self.scanner else {
            return Some((None, counts));
        };
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut found = Vec::new();
        let mut i = 0;
        while let Some(&byte) = text.get(i) {
            let (end, leaf) = match byte {
                b'"' => {
                    let end = string_end(text, i)?;
                    let raw = text.get(i + 1..end - 1)?;
                    let value: std::borrow::Cow<'_, [u8]> = if memchr::memchr(b'\\', raw).is_none()
                    {
                        raw.into()
                    } else {
                        serde_json::from_slice::<String>(text.get(i..end)?)
                            .ok()?
                            .into_bytes()
                            .into()
                    };
                    let is_key = text
                        .get(end..)
                        .and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()))
                        == Some(&b':');
                    if is_key {
                        found.clear();
                        scanner.find(&value, &mut found);
                        if !found.is_empty() || *value == *b"jsonrpc" {
                            return None;
                        }
                        (end, None)
                    } else {
                        (end, self.detect_leaf(&value, &mut found, &mut counts))
                    }
                }
                b'-' | b'0'..=b'9' => {
                    let len = text[i..]
                        .iter()
                        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                        .unwrap_or(text.len() - i);
                    let end = i + len;
                    (
                        end,
                        self.detect_leaf(text.get(i..end)?, &mut found, &mut counts),
                    )
                }
                _ => (i + 1, None),
            };
            if let Some(masked) = leaf {
                let buf = out.get_or_insert_with(|| Vec::with_capacity(text.len() + 64));
                buf.extend_from_slice(text.get(copied..i)?);
                serde_json::to_writer(&mut *buf, &masked).ok()?;
                copied = end;
            }
            i = end;
        }
        if let Some(buf) = &mut out {
            buf.extend_from_slice(text.get(copied..)?);
        }
        Some((out, counts))
    }

    /// What the field rules select, without overlaps (the widest selection wins, then the
    /// first rule).
    fn select(&self, doc: &Value) -> Vec<Selection> {
        let mut all = Vec::new();
        for (i, rule) in self.fields.iter().enumerate() {
            for path in &rule.paths {
                all.extend(path.query_located(doc).locations().map(|loc| Selection {
                    pointer: loc.to_json_pointer(),
                    rule: i,
                    treatment: Treatment::Leaves,
                }));
            }
            if rule.kubernetes_secrets {
                find_secrets(doc, &mut String::new(), i, &mut all);
            }
        }
        // Sorted segment by segment, a pointer's descendants follow it directly, so comparing
        // with the last one kept is enough to drop what a wider selection already covers.
        all.sort_by(|a, b| {
            a.pointer
                .split('/')
                .cmp(b.pointer.split('/'))
                .then(a.rule.cmp(&b.rule))
        });
        let mut kept: Vec<Selection> = Vec::with_capacity(all.len());
        for s in all {
            if kept.last().is_some_and(|k| covers(&k.pointer, &s.pointer)) {
                continue;
            }
            kept.push(s);
        }
        kept
    }

    /// Rewrites a selected value; returns how many leaves were masked. Detector counts (keys
    /// and the rest of a last-applied Secret) go to `counts`.
    fn mask_selected(
        &self,
        value: &mut Value,
        strategy: Strategy,
        treatment: Treatment,
        counts: &mut BTreeMap<String, u64>,
    ) -> u64 {
        match (treatment, &*value) {
            (Treatment::LastApplied, Value::String(text)) => {
                // The annotation holds the Secret as JSON text: masked as a Secret, so its
                // keys stay readable, then the detectors look at the rest of it, as they do
                // at the rest of the document. Text that is not a JSON object is replaced
                // whole.
                match serde_json::from_str::<Value>(text) {
                    Ok(mut applied @ Value::Object(_)) => {
                        let n = self.mask_secret(&mut applied, strategy);
                        if self.scanner.is_some() {
                            let skip = HashSet::from(["/data", "/stringData"]);
                            let mut found = Vec::new();
                            let mut pointer = String::new();
                            self.detect_in(&mut applied, &mut pointer, &skip, &mut found, counts);
                        }
                        *value = Value::String(applied.to_string());
                        n
                    }
                    _ => {
                        *value = Value::String("[REDACTED]".to_owned());
                        1
                    }
                }
            }
            (Treatment::LastApplied, _) => self.mask_leaves(value, strategy, false),
            (Treatment::Base64Leaves, _) => self.mask_leaves(value, strategy, true),
            (Treatment::Leaves, _) => self.mask_leaves(value, strategy, false),
        }
    }

    /// Masks the `data` (base64) and `stringData` values of one Secret object.
    fn mask_secret(&self, secret: &mut Value, strategy: Strategy) -> u64 {
        let mut n = 0;
        if let Some(data) = secret.get_mut("data") {
            n += self.mask_leaves(data, strategy, true);
        }
        if let Some(data) = secret.get_mut("stringData") {
            n += self.mask_leaves(data, strategy, false);
        }
        n
    }

    fn mask_leaves(&self, value: &mut Value, strategy: Strategy, base64: bool) -> u64 {
        match value {
            Value::String(text) => {
                *value = if base64 {
                    self.masked_base64(strategy, text)
                } else {
                    self.masked_leaf(strategy, text.as_bytes(), None)
                };
                1
            }
            Value::Number(number) => {
                *value = self.masked_leaf(strategy, number.to_string().as_bytes(), None);
                1
            }
            Value::Array(items) => items
                .iter_mut()
                .map(|v| self.mask_leaves(v, strategy, base64))
                .sum(),
            Value::Object(map) => map
                .values_mut()
                .map(|v| self.mask_leaves(v, strategy, base64))
                .sum(),
            Value::Bool(_) | Value::Null => 0,
        }
    }

    /// A whole leaf under `strategy`: JSON null, or a string.
    fn masked_leaf(
        &self,
        strategy: Strategy,
        clear: &[u8],
        detector: Option<super::Detector>,
    ) -> Value {
        match strategy {
            Strategy::Null => Value::Null,
            s => Value::String(
                String::from_utf8_lossy(&self.replacement(s, clear, detector)).into_owned(),
            ),
        }
    }

    /// A base64 leaf: the decoded value masked, encoded again (text that is not base64 is
    /// masked as it is, and encoded too, so the result is always base64).
    fn masked_base64(&self, strategy: Strategy, text: &str) -> Value {
        if strategy == Strategy::Null {
            return Value::Null;
        }
        let decoded = BASE64.decode(text.as_bytes());
        let clear = decoded.as_deref().unwrap_or(text.as_bytes());
        Value::String(BASE64.encode(self.replacement(strategy, clear, None)))
    }

    /// The detectors over every string, number and key not under a selection (`skip`), and
    /// over the keys under one (a selection masks values; its keys are data too).
    /// `pointer` is the JSON pointer of `value`.
    fn detect_in(
        &self,
        value: &mut Value,
        pointer: &mut String,
        skip: &HashSet<&str>,
        found: &mut Vec<Found>,
        counts: &mut BTreeMap<String, u64>,
    ) {
        if skip.contains(pointer.as_str()) {
            self.detect_keys_under(value, found, counts);
            return;
        }
        match value {
            Value::String(text) => {
                if let Some(masked) = self.detect_leaf(text.as_bytes(), found, counts) {
                    *value = masked;
                }
            }
            Value::Number(number) => {
                if let Some(masked) = self.detect_leaf(number.to_string().as_bytes(), found, counts)
                {
                    *value = masked;
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&i.to_string());
                    self.detect_in(item, pointer, skip, found, counts);
                    pointer.truncate(len);
                }
            }
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    let len = pointer.len();
                    push_segment(pointer, key);
                    self.detect_in(item, pointer, skip, found, counts);
                    pointer.truncate(len);
                }
                self.detect_keys(map, found, counts);
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    /// The replacement of a string or number's text when detectors find something in it.
    fn detect_leaf(
        &self,
        text: &[u8],
        found: &mut Vec<Found>,
        counts: &mut BTreeMap<String, u64>,
    ) -> Option<Value> {
        let scanner = self.scanner.as_ref()?;
        found.clear();
        scanner.find(text, found);
        if found.is_empty() {
            return None;
        }
        // A `null` strategy nulls the whole value, as it does for a column value.
        if found
            .iter()
            .any(|f| self.strategy(f.detector) == Strategy::Null)
        {
            for f in found.iter() {
                *counts
                    .entry(detector_counter(f.detector).to_owned())
                    .or_default() += 1;
            }
            return Some(Value::Null);
        }
        let out = self.replace_spans(text, found, counts);
        Some(Value::String(String::from_utf8_lossy(&out).into_owned()))
    }

    /// The detectors over the keys of every object in `value` (its own included), not its
    /// strings or numbers: for what a field rule selected and masked.
    fn detect_keys_under(
        &self,
        value: &mut Value,
        found: &mut Vec<Found>,
        counts: &mut BTreeMap<String, u64>,
    ) {
        match value {
            Value::Array(items) => {
                for item in items {
                    self.detect_keys_under(item, found, counts);
                }
            }
            Value::Object(map) => {
                for item in map.values_mut() {
                    self.detect_keys_under(item, found, counts);
                }
                self.detect_keys(map, found, counts);
            }
            Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }

    /// Object keys are data too (maps keyed by email, by card): a key with a match is
    /// renamed to its masked text, with `#2`, `#3`… when that name is taken.
    fn detect_keys(
        &self,
        map: &mut Map<String, Value>,
        found: &mut Vec<Found>,
        counts: &mut BTreeMap<String, u64>,
    ) {
        let Some(scanner) = &self.scanner else {
            return;
        };
        let hit = |key: &str, found: &mut Vec<Found>| {
            found.clear();
            scanner.find(key.as_bytes(), found);
            !found.is_empty()
        };
        if !map.keys().any(|k| hit(k, found)) {
            return;
        }
        let old = std::mem::take(map);
        let mut renamed = Vec::new();
        for (key, value) in old {
            if hit(&key, found) {
                let masked = self.replace_spans(key.as_bytes(), found, counts);
                renamed.push((String::from_utf8_lossy(&masked).into_owned(), value));
            } else {
                map.insert(key, value);
            }
        }
        for (key, value) in renamed {
            let mut name = key.clone();
            let mut n = 1;
            while map.contains_key(&name) {
                n += 1;
                name = format!("{key}#{n}");
            }
            map.insert(name, value);
        }
    }
}

/// What [`Masking::mask_json_text`] made of a text: the masked text (`None` when nothing was
/// masked), and the counts per detector.
pub type MaskedJsonText = (Option<Vec<u8>>, BTreeMap<String, u64>);

/// The index just past the closing quote of the string that opens at `start`, in a text
/// already known to be JSON.
fn string_end(text: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', text.get(i..)?)?;
        if text.get(i) == Some(&b'"') {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// True when `pointer` is `ancestor` or lies under it.
fn covers(ancestor: &str, pointer: &str) -> bool {
    pointer
        .strip_prefix(ancestor)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Appends `/key` to a JSON pointer, escaped as RFC 6901 says (`~` → `~0`, `/` → `~1`).
fn push_segment(pointer: &mut String, key: &str) {
    pointer.push('/');
    for c in key.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// Finds every Kubernetes Secret in a response, in each shape the API server sends one: an
/// object of kind `Secret` anywhere (alone, in a `List`, as a watch event's `object`), and
/// the items of a `SecretList` (which carry no kind of their own).
fn find_secrets(value: &Value, pointer: &mut String, rule: usize, out: &mut Vec<Selection>) {
    match value {
        Value::Object(map) => {
            match map.get("kind").and_then(Value::as_str) {
                Some("Secret") => return select_secret(map, pointer, rule, out),
                Some("SecretList") => {
                    if let Some(Value::Array(items)) = map.get("items") {
                        for (i, item) in items.iter().enumerate() {
                            if let Value::Object(secret) = item {
                                let len = pointer.len();
                                pointer.push_str(&format!("/items/{i}"));
                                select_secret(secret, pointer, rule, out);
                                pointer.truncate(len);
                            }
                        }
                    }
                    return;
                }
                _ => {}
            }
            for (key, item) in map {
                let len = pointer.len();
                push_segment(pointer, key);
                find_secrets(item, pointer, rule, out);
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                find_secrets(item, pointer, rule, out);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

fn select_secret(
    secret: &Map<String, Value>,
    pointer: &str,
    rule: usize,
    out: &mut Vec<Selection>,
) {
    let mut select = |path: &str, treatment| {
        out.push(Selection {
            pointer: format!("{pointer}{path}"),
            rule,
            treatment,
        })
    };
    if secret.contains_key("data") {
        select("/data", Treatment::Base64Leaves);
    }
    if secret.contains_key("stringData") {
        select("/stringData", Treatment::Leaves);
    }
    let annotated = secret
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .is_some_and(|a| a.get(LAST_APPLIED).is_some());
    if annotated {
        let mut path = "/metadata/annotations".to_owned();
        push_segment(&mut path, LAST_APPLIED);
        select(&path, Treatment::LastApplied);
    }
}

#[cfg(test)]
mod tests;
