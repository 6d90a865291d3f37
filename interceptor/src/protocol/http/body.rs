//! Masking of HTTP response bodies, incrementally: JSON documents, server-sent events, text.
//!
//! Why this exists: an agent reads REST answers, MCP tool results and model outputs over HTTP,
//! and sensitive values in them must be masked before it sees them, without buffering long
//! streams (an MCP server's event stream may stay open for hours). What a body is decides how:
//!
//! | Content type | How | Length |
//! |---|---|---|
//! | `application/json`, `*/*+json` | buffered up to [`Limits::max_json`], masked whole (`mask_json`); larger fails closed | known at the end: `Content-Length` is set |
//! | `text/event-stream` | parsed event by event (WHATWG), the `data` of each masked as JSON when it is JSON, else as text, and re-emitted | chunked |
//! | `text/*`, XML, JavaScript, forms, `image/svg+xml`, no content type | line by line through a stream masker (detectors) | chunked |
//! | `image/*`, `audio/*`, `video/*`, `font/*` | passed through unmasked: pixels and samples are not read (docs/security.md) | unchanged |
//! | anything else (`application/octet-stream`, PDF, archives, protobuf…) | refused: the gateway cannot read it, so under masking it fails closed | |
//!
//! Inside JSON-RPC answers (MCP), a tool result's `content[].text` (and a resource's
//! `contents[].text`) that itself holds a JSON object or array is masked as a JSON document
//! (field rules apply inside it), then the whole message is masked, so detectors see every
//! other text. The same parse lets [`ListWatch`] learn tool annotations from `tools/list`
//! answers, with or without masking.
//!
//! Compression: requests under masking ask for `identity` ([`request_headers`]); a server that
//! compresses anyway is decoded here (gzip, deflate in its zlib or raw form). Other codings
//! (`br`, `zstd`, several in a row) fail closed. The errors ([`BodyError`]) are for the relay
//! to end the response with a 502 (before its head when it can, else by cutting the stream):
//! never pass the body on unmasked.

use std::{collections::BTreeMap, io::Write as _, sync::Arc};

use hyper::http::{header, HeaderMap, HeaderValue};
use serde_json::Value;

use super::mcp::{self, ListWatch};
use crate::command::{BodyMasking, StreamMask};

/// The content type of a stream of JSON documents, one a line (a Kubernetes watch): what the
/// relay names when it knows a body is one, whatever its own header says.
pub const JSON_LINES: &str = "application/json;stream=watch";

/// How large a JSON body (or one event's data) may grow while it is buffered for masking.
pub const MAX_JSON: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest JSON body, or event of an event stream, buffered for masking.
    pub max_json: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_json: MAX_JSON }
    }
}

/// Why a response cannot be passed on masked. The relay answers 502 (or cuts the stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the response body is {0}, which the gateway cannot read to mask it")]
    Unreadable(String),
    #[error("the response's content encoding {0:?} is not one the gateway can decode")]
    Encoding(String),
    #[error("the response body could not be decompressed: {0}")]
    Decompress(String),
    #[error(
        "a JSON body or event grew past {max} bytes, more than the gateway buffers to mask it"
    )]
    TooLarge { max: usize },
}

/// What a body is, for masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Json,
    /// JSON documents one a line (`;stream=watch`): each masked whole as its line ends.
    JsonLines,
    EventStream,
    Text,
    /// Images, audio, video, fonts: passed through.
    Media,
    /// Anything else: refused under masking.
    Other,
}

/// The kind of a body from its `Content-Type` (none: text).
pub fn kind_of(content_type: Option<&str>) -> Kind {
    let Some(ct) = content_type else {
        return Kind::Text;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (top, sub) = essence.split_once('/').unwrap_or((essence.as_str(), ""));
    let watch_stream = ct
        .split(';')
        .skip(1)
        .any(|p| p.trim().eq_ignore_ascii_case("stream=watch"));
    match (top, sub) {
        ("application", "json") if watch_stream => Kind::JsonLines,
        ("application", "json") => Kind::Json,
        (_, s) if s.ends_with("+json") => Kind::Json,
        ("text", "event-stream") => Kind::EventStream,
        ("text", _) => Kind::Text,
        ("image", "svg+xml") => Kind::Text,
        ("image" | "audio" | "video" | "font", _) => Kind::Media,
        (
            "application",
            "xml"
            | "javascript"
            | "ecmascript"
            | "x-www-form-urlencoded"
            | "x-ndjson"
            | "jsonl"
            | "yaml"
            | "x-yaml"
            | "graphql"
            | "sql",
        ) => Kind::Text,
        (_, s) if s.ends_with("+xml") => Kind::Text,
        _ => Kind::Other,
    }
}

/// How the relay frames the masked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The body passes as it came: its headers stand.
    Unchanged,
    /// The whole masked body comes out of [`ResponseMasker::finish`]: its length is known
    /// then, and goes in `Content-Length` ([`set_length`]).
    Known,
    /// The masked body streams: no `Content-Length` (chunked, or HTTP/2 frames).
    Streamed,
}

/// Edits a request's headers when its response will be masked: asks for no compression, and
/// for the whole body (a range of a JSON document cannot be masked; a range of text could
/// cut a value in two).
pub fn request_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers.remove(header::RANGE);
    headers.remove(header::IF_RANGE);
}

/// Edits a response's headers for the masked body: drops the encoding once decoded, the
/// length unless it stands, and what describes the original bytes (digests, a strong ETag).
pub fn response_headers(headers: &mut HeaderMap, masker: &ResponseMasker) {
    if masker.framing() == Framing::Unchanged {
        return;
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::ETAG);
    for name in ["content-md5", "digest", "content-digest", "repr-digest"] {
        headers.remove(name);
    }
}

/// Sets `Content-Length` to the masked body's length ([`Framing::Known`]).
pub fn set_length(headers: &mut HeaderMap, length: usize) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

/// Masks one response body, chunk by chunk.
pub struct ResponseMasker {
    masking: Option<Arc<dyn BodyMasking>>,
    watch: Option<ListWatch>,
    kind: Kind,
    decoder: Option<Decoder>,
    limits: Limits,
    /// JSON: what was received so far (`None` once given up, when only watching).
    buffer: Option<Vec<u8>>,
    events: Option<Events>,
    /// JSON lines: the line received so far.
    lines: Option<Vec<u8>>,
    text: Option<Box<dyn StreamMask>>,
    counts: BTreeMap<String, u64>,
}

impl ResponseMasker {
    /// `masking`: the session's body masking (`None`: nothing to mask, and the body passes as
    /// it came, only watched). `watch`: the `tools/list` requests this body answers.
    pub fn new(
        masking: Option<Arc<dyn BodyMasking>>,
        watch: Option<ListWatch>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        limits: Limits,
    ) -> Result<ResponseMasker, BodyError> {
        let kind = kind_of(content_type);
        let masks = masking.is_some();
        if masks && kind == Kind::Other {
            let what = content_type.unwrap_or("without a content type").to_owned();
            return Err(BodyError::Unreadable(what));
        }
        // Only watching: a compressed answer is not read (its tools stay unknown).
        let reads = (masks && kind != Kind::Media)
            || (!masks && content_encoding_is_identity(content_encoding));
        let decoder = match (reads, masks) {
            (true, true) => Decoder::of(content_encoding)?,
            _ => None,
        };
        let watching = watch.is_some() && reads;
        Ok(ResponseMasker {
            text: (masks && kind == Kind::Text)
                .then(|| masking.as_ref().map(|m| m.stream()))
                .flatten(),
            buffer: (kind == Kind::Json && (masks || watching)).then(Vec::new),
            events: (kind == Kind::EventStream && (masks || watching)).then(Events::default),
            lines: (kind == Kind::JsonLines && masks).then(Vec::new),
            masking: masking.filter(|_| kind != Kind::Media),
            watch: watch.filter(|_| watching),
            kind,
            decoder,
            limits,
            counts: BTreeMap::new(),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// How the relay frames what comes out.
    pub fn framing(&self) -> Framing {
        match (&self.masking, self.kind) {
            (None, _) | (_, Kind::Media) => Framing::Unchanged,
            (Some(_), Kind::Json) => Framing::Known,
            (Some(_), _) => Framing::Streamed,
        }
    }

    /// Takes a chunk of the body as received; returns what can be sent now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, BodyError> {
        if self.masking.is_none() {
            self.observe(chunk)?;
            return Ok(chunk.to_vec());
        }
        let decoded = match &mut self.decoder {
            Some(d) => d.push(chunk)?,
            None => chunk.to_vec(),
        };
        self.absorb(&decoded)
    }

    /// The body ended: returns the rest of the masked body (for JSON, all of it).
    pub fn finish(&mut self) -> Result<Vec<u8>, BodyError> {
        if self.masking.is_none() {
            if let (Some(buffer), Some(watch)) = (self.buffer.take(), &self.watch) {
                if let Ok(doc) = serde_json::from_slice::<Value>(&buffer) {
                    watch.observe(&doc);
                }
            }
            return Ok(Vec::new());
        }
        let mut out = match self.decoder.take() {
            Some(d) => {
                let rest = d.finish()?;
                self.absorb(&rest)?
            }
            None => Vec::new(),
        };
        if let Some(buffer) = self.buffer.take() {
            out.extend(self.json(buffer));
        }
        if let Some(rest) = self.lines.take() {
            if !rest.iter().all(u8::is_ascii_whitespace) {
                out.extend(self.json(rest));
            }
        }
        if let Some(text) = &mut self.text {
            out.extend(text.flush());
            add(&mut self.counts, text.take_counts());
        }
        Ok(out)
    }

    /// What was masked so far, per rule and detector (never the values); taken.
    pub fn take_counts(&mut self) -> BTreeMap<String, u64> {
        if let Some(text) = &mut self.text {
            add(&mut self.counts, text.take_counts());
        }
        std::mem::take(&mut self.counts)
    }

    /// Only watching: parse what passes, for `tools/list` answers.
    fn observe(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        if let Some(buffer) = &mut self.buffer {
            if buffer.len() + chunk.len() > self.limits.max_json {
                self.buffer = None;
            } else {
                buffer.extend_from_slice(chunk);
            }
        }
        if let Some(events) = &mut self.events {
            let mut sink = Sink {
                masking: None,
                watch: self.watch.as_ref(),
                counts: &mut self.counts,
            };
            if events.push(chunk, &mut sink, self.limits.max_json).is_err() {
                // Too large an event to watch: stop watching (its tools stay unknown).
                self.events = None;
            }
        }
        Ok(())
    }

    /// Decoded bytes under masking.
    fn absorb(&mut self, bytes: &[u8]) -> Result<Vec<u8>, BodyError> {
        if let Some(buffer) = &mut self.buffer {
            if buffer.len() + bytes.len() > self.limits.max_json {
                return Err(BodyError::TooLarge {
                    max: self.limits.max_json,
                });
            }
            buffer.extend_from_slice(bytes);
            return Ok(Vec::new());
        }
        if let Some(mut line) = self.lines.take() {
            line.extend_from_slice(bytes);
            let mut out = Vec::new();
            let mut start = 0;
            while let Some(end) = memchr::memchr(b'\n', &line[start..]) {
                let whole = line[start..start + end].to_vec();
                start += end + 1;
                if !whole.iter().all(u8::is_ascii_whitespace) {
                    out.extend(self.json(whole));
                }
                out.push(b'\n');
            }
            let rest = line.split_off(start);
            if rest.len() > self.limits.max_json {
                return Err(BodyError::TooLarge {
                    max: self.limits.max_json,
                });
            }
            self.lines = Some(rest);
            return Ok(out);
        }
        if let Some(events) = &mut self.events {
            let mut sink = Sink {
                masking: self.masking.as_deref(),
                watch: self.watch.as_ref(),
                counts: &mut self.counts,
            };
            return events.push(bytes, &mut sink, self.limits.max_json);
        }
        if let Some(text) = &mut self.text {
            return Ok(text.push(bytes));
        }
        Ok(bytes.to_vec())
    }

    /// A whole JSON body, masked. Kept byte for byte when nothing was masked and its reading
    /// is unambiguous (no key twice); else re-serialized, so the client reads exactly what
    /// was masked. A body that is not JSON is masked as text.
    fn json(&mut self, buffer: Vec<u8>) -> Vec<u8> {
        // A plain JSON answer (no tool list to learn from) is masked in one pass over its
        // text, kept byte for byte around what is masked; the masker says when it cannot.
        if self.watch.is_none() {
            if let Some(masking) = self.masking.as_deref() {
                if let Some((masked, counts)) = masking.mask_json_text(&buffer) {
                    add(&mut self.counts, counts);
                    return masked.unwrap_or(buffer);
                }
            }
        }
        let mut sink = Sink {
            masking: self.masking.as_deref(),
            watch: self.watch.as_ref(),
            counts: &mut self.counts,
        };
        let (mut doc, strict) = match mcp::parse_strict(&buffer) {
            Ok(doc) => (doc, true),
            Err(_) => match serde_json::from_slice::<Value>(&buffer) {
                Ok(doc) => (doc, false),
                Err(_) => return sink.text(&String::from_utf8_lossy(&buffer)).into_bytes(),
            },
        };
        if sink.document(&mut doc) || !strict {
            doc.to_string().into_bytes()
        } else {
            buffer
        }
    }
}

fn content_encoding_is_identity(encoding: Option<&str>) -> bool {
    encoding.is_none_or(|e| e.trim().is_empty() || e.trim().eq_ignore_ascii_case("identity"))
}

fn add(counts: &mut BTreeMap<String, u64>, more: BTreeMap<String, u64>) {
    for (k, n) in more {
        *counts.entry(k).or_default() += n;
    }
}

/// Where parsed documents go: learned from, then masked.
struct Sink<'a> {
    masking: Option<&'a dyn BodyMasking>,
    watch: Option<&'a ListWatch>,
    counts: &'a mut BTreeMap<String, u64>,
}

impl Sink<'_> {
    /// Learns from and masks one JSON document; true when something was masked.
    fn document(&mut self, doc: &mut Value) -> bool {
        if let Some(watch) = self.watch {
            watch.observe(doc);
        }
        let Some(masking) = self.masking else {
            return false;
        };
        let mut masked = false;
        let messages: Vec<&mut Value> = match &mut *doc {
            Value::Array(items) => items.iter_mut().collect(),
            other => vec![other],
        };
        for message in messages {
            if message.get("jsonrpc").is_none() {
                continue;
            }
            for key in ["content", "contents"] {
                let Some(items) = message
                    .get_mut("result")
                    .and_then(|r| r.get_mut(key))
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for item in items {
                    let Some(Value::String(text)) = item.get_mut("text") else {
                        continue;
                    };
                    let Ok(mut inner) = serde_json::from_str::<Value>(text) else {
                        continue;
                    };
                    if !(inner.is_object() || inner.is_array()) {
                        continue;
                    }
                    let found = masking.mask_json(&mut inner);
                    if !found.is_empty() {
                        masked = true;
                        add(self.counts, found);
                        *text = inner.to_string();
                    }
                }
            }
        }
        let found = masking.mask_json(doc);
        masked |= !found.is_empty();
        add(self.counts, found);
        masked
    }

    /// Masks a text that is not JSON (detectors; field rules rooted at `$`).
    fn text(&mut self, text: &str) -> String {
        let Some(masking) = self.masking else {
            return text.to_owned();
        };
        let mut value = Value::String(text.to_owned());
        add(self.counts, masking.mask_json(&mut value));
        match value {
            Value::String(s) => s,
            other => other.to_string(),
        }
    }
}

/// A server-sent event stream, parsed as the WHATWG HTML standard reads it (lines end with
/// CRLF, LF or CR; a leading BOM is dropped; `data` lines join with LF; `event`, `id` without
/// NUL, `retry` of digits; comments start with `:`; other fields are ignored), and re-emitted
/// with LF line ends: one `data:` line per line of the (masked) data. An event the stream
/// ends in the middle of is not dispatched by clients, and not sent here either.
#[derive(Debug, Default)]
struct Events {
    /// The BOM check is done (the first bytes were seen).
    started: bool,
    head: Vec<u8>,
    line: Vec<u8>,
    /// The last byte seen was CR: a LF right after it ends nothing more.
    after_cr: bool,
    data: String,
    event: Option<String>,
    id: Option<String>,
    retry: Option<String>,
}

impl Events {
    fn push(
        &mut self,
        bytes: &[u8],
        sink: &mut Sink<'_>,
        max: usize,
    ) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        if self.started {
            self.lines(bytes, sink, max, &mut out)?;
            return Ok(out);
        }
        self.head.extend_from_slice(bytes);
        if self.head.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.head) {
            return Ok(out);
        }
        self.started = true;
        let head = std::mem::take(&mut self.head);
        let body = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&head);
        self.lines(body, sink, max, &mut out)?;
        Ok(out)
    }

    fn lines(
        &mut self,
        mut bytes: &[u8],
        sink: &mut Sink<'_>,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), BodyError> {
        while !bytes.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if let Some(after) = bytes.strip_prefix(b"\n") {
                    bytes = after;
                    continue;
                }
            }
            match memchr::memchr2(b'\r', b'\n', bytes) {
                Some(end) => {
                    let (line, after) = bytes.split_at(end);
                    self.line.extend_from_slice(line);
                    self.after_cr = after.first() == Some(&b'\r');
                    bytes = after.get(1..).unwrap_or_default();
                    let line = std::mem::take(&mut self.line);
                    self.field(&String::from_utf8_lossy(&line), sink, out);
                }
                None => {
                    self.line.extend_from_slice(bytes);
                    bytes = &[];
                }
            }
            if self.line.len() + self.data.len() > max {
                return Err(BodyError::TooLarge { max });
            }
        }
        Ok(())
    }

    fn field(&mut self, line: &str, sink: &mut Sink<'_>, out: &mut Vec<u8>) {
        if line.is_empty() {
            return self.dispatch(sink, out);
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(b':');
            out.extend_from_slice(sink.text(comment).replace(['\r', '\n'], " ").as_bytes());
            out.push(b'\n');
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match name {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = Some(value.to_owned());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, sink: &mut Sink<'_>, out: &mut Vec<u8>) {
        let data = std::mem::take(&mut self.data);
        let (event, id, retry) = (self.event.take(), self.id.take(), self.retry.take());
        if data.is_empty() && event.is_none() && id.is_none() && retry.is_none() {
            return;
        }
        for (name, value) in [("id", id), ("event", event), ("retry", retry)] {
            if let Some(value) = value {
                out.extend_from_slice(format!("{name}: {value}\n").as_bytes());
            }
        }
        if let Some(data) = data.strip_suffix('\n') {
            let masked = match serde_json::from_str::<Value>(data) {
                Ok(mut doc) => {
                    sink.document(&mut doc);
                    doc.to_string()
                }
                Err(_) => sink.text(data),
            };
            for line in masked.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        out.push(b'\n');
    }
}

/// A body's content coding, undone.
enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    Raw(flate2::write::DeflateDecoder<Vec<u8>>),
    /// `deflate` before its first two bytes: zlib-wrapped (as RFC 9110 says) or raw (as some
    /// servers send it)?
    Deflate(Vec<u8>),
}

impl Decoder {
    fn of(encoding: Option<&str>) -> Result<Option<Decoder>, BodyError> {
        let Some(encoding) = encoding.map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        match encoding.to_ascii_lowercase().as_str() {
            "identity" => Ok(None),
            "gzip" | "x-gzip" => Ok(Some(Decoder::Gzip(flate2::write::GzDecoder::new(
                Vec::new(),
            )))),
            "deflate" => Ok(Some(Decoder::Deflate(Vec::new()))),
            _ => Err(BodyError::Encoding(encoding.to_owned())),
        }
    }

    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, BodyError> {
        let err = |e: std::io::Error| BodyError::Decompress(e.to_string());
        if let Decoder::Deflate(head) = self {
            head.extend_from_slice(chunk);
            let [a, b, ..] = head[..] else {
                return Ok(Vec::new());
            };
            let zlib = a & 0x0f == 8 && (u16::from(a) << 8 | u16::from(b)) % 31 == 0;
            let head = std::mem::take(head);
            *self = if zlib {
                Decoder::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))
            } else {
                Decoder::Raw(flate2::write::DeflateDecoder::new(Vec::new()))
            };
            return self.push(&head);
        }
        match self {
            Decoder::Gzip(d) => {
                d.write_all(chunk).map_err(err)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Zlib(d) => {
                d.write_all(chunk).map_err(err)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Raw(d) => {
                d.write_all(chunk).map_err(err)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Deflate(_) => Ok(Vec::new()),
        }
    }

    fn finish(self) -> Result<Vec<u8>, BodyError> {
        let err = |e: std::io::Error| BodyError::Decompress(e.to_string());
        match self {
            Decoder::Gzip(d) => d.finish().map_err(err),
            Decoder::Zlib(d) => d.finish().map_err(err),
            Decoder::Raw(d) => d.finish().map_err(err),
            Decoder::Deflate(head) if head.is_empty() => Ok(Vec::new()),
            Decoder::Deflate(_) => Err(BodyError::Decompress("a truncated deflate stream".into())),
        }
    }
}

#[cfg(test)]
mod tests;
