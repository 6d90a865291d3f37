use std::{io::Write as _, sync::Arc};

use hyper::http::{header, HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::*;
use crate::{
    mask::{
        detect::{Detector, Scanner},
        DetectorRule, FieldRule, Masking, Strategy,
    },
    protocol::http::mcp::{ListWatch, ToolRegistry},
};

const EMAIL: &str = "ada@example.com";

/// Every detector (redact) and a field rule for `$..password`.
fn masking() -> Arc<dyn BodyMasking> {
    let rules: Vec<DetectorRule> = Detector::ALL
        .iter()
        .map(|d| DetectorRule {
            detector: *d,
            strategy: Strategy::Redact,
            rule: "all".to_owned(),
        })
        .collect();
    let fields = vec![Arc::new(
        FieldRule::new(
            "passwords",
            &["$..password".to_owned()],
            false,
            Strategy::Redact,
        )
        .expect("a valid path"),
    )];
    let m = Masking::new(
        Vec::new(),
        &rules,
        Some(Arc::new(Scanner::new(&Detector::ALL))),
        None,
        0,
    )
    .with_fields(fields);
    Arc::new(Arc::new(m))
}

fn masker(ct: &str, encoding: Option<&str>) -> ResponseMasker {
    ResponseMasker::new(Some(masking()), None, Some(ct), encoding, Limits::default())
        .expect("a readable body")
}

/// The body through `m` in chunks of `size` bytes (0: whole).
fn run(mut m: ResponseMasker, body: &[u8], size: usize) -> (Vec<u8>, BTreeMap<String, u64>) {
    let mut out = Vec::new();
    let size = if size == 0 { body.len().max(1) } else { size };
    for chunk in body.chunks(size) {
        out.extend(m.push(chunk).expect("masked"));
    }
    out.extend(m.finish().expect("masked"));
    (out, m.take_counts())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn content_types_decide_how_a_body_is_masked() {
    for (ct, kind) in [
        (Some("application/json; charset=utf-8"), Kind::Json),
        (Some("application/problem+json"), Kind::Json),
        (Some("Text/Event-Stream"), Kind::EventStream),
        (Some("text/plain"), Kind::Text),
        (Some("application/xml"), Kind::Text),
        (Some("image/svg+xml"), Kind::Text),
        (None, Kind::Text),
        (Some("image/png"), Kind::Media),
        (Some("application/octet-stream"), Kind::Other),
        (Some("application/pdf"), Kind::Other),
    ] {
        assert_eq!(kind_of(ct), kind, "{ct:?}");
    }
    let refused = ResponseMasker::new(
        Some(masking()),
        None,
        Some("application/zip"),
        None,
        Limits::default(),
    );
    assert!(matches!(refused, Err(BodyError::Unreadable(_))));
    // Without masking, anything passes.
    let mut free =
        ResponseMasker::new(None, None, Some("application/zip"), None, Limits::default())
            .expect("nothing to mask");
    assert_eq!(free.framing(), Framing::Unchanged);
    assert_eq!(free.push(b"PK\x03\x04").ok(), Some(b"PK\x03\x04".to_vec()));
    // Media passes unmasked, with its headers.
    let png = masker("image/png", Some("gzip"));
    assert_eq!(png.framing(), Framing::Unchanged);
    assert_eq!(run(png, EMAIL.as_bytes(), 3).0, EMAIL.as_bytes());
}

#[test]
fn json_is_masked_whole_with_field_rules_and_detectors() {
    let body = json!({"user": {"email": EMAIL, "password": "hunter2"}, "n": 1});
    let m = masker("application/json", None);
    assert_eq!(m.framing(), Framing::Known);
    let (out, counts) = run(m, body.to_string().as_bytes(), 5);
    let doc: Value = serde_json::from_slice(&out).expect("still JSON");
    assert_eq!(doc["user"]["email"], json!("[REDACTED:email]"));
    assert_eq!(doc["user"]["password"], json!("[REDACTED]"));
    assert_eq!(counts.get("detector:email"), Some(&1));
    assert_eq!(counts.get("rule:passwords"), Some(&1));
}

#[test]
fn json_with_nothing_to_mask_keeps_its_bytes_and_ambiguous_json_is_rewritten() {
    let body = br#"{ "id" : 100000000000000000000000, "ok": true }"#;
    let (out, counts) = run(masker("application/json", None), body, 0);
    assert_eq!(out, body);
    assert!(counts.is_empty());
    // A key given twice: the client must read exactly what was masked.
    let body = format!(r#"{{"email":"{EMAIL}","email":"x"}}"#);
    let (out, _) = run(masker("application/json", None), body.as_bytes(), 0);
    assert_eq!(text(&out), r#"{"email":"x"}"#);
    // Not JSON after all: masked as text.
    let body = format!("oops {EMAIL}");
    let (out, _) = run(masker("application/json", None), body.as_bytes(), 0);
    assert_eq!(text(&out), "oops [REDACTED:email]");
}

#[test]
fn json_over_the_bound_fails_closed() {
    let limits = Limits { max_json: 64 };
    let mut m = ResponseMasker::new(
        Some(masking()),
        None,
        Some("application/json"),
        None,
        limits,
    )
    .expect("readable");
    assert_eq!(m.push(&[b' '; 60]).ok(), Some(Vec::new()));
    assert_eq!(m.push(&[b' '; 10]), Err(BodyError::TooLarge { max: 64 }));
}

#[test]
fn tool_results_holding_json_are_masked_inside() {
    let inner = json!({"customer": {"email": EMAIL, "password": "p"}}).to_string();
    let body = json!({"jsonrpc": "2.0", "id": 3, "result": {
        "content": [{"type": "text", "text": inner}, {"type": "text", "text": format!("mail {EMAIL}")}],
        "isError": false}});
    let (out, counts) = run(
        masker("application/json", None),
        body.to_string().as_bytes(),
        0,
    );
    let doc: Value = serde_json::from_slice(&out).expect("JSON");
    let first: Value =
        serde_json::from_str(doc["result"]["content"][0]["text"].as_str().unwrap_or(""))
            .expect("still JSON inside");
    assert_eq!(
        first["customer"]["password"],
        json!("[REDACTED]"),
        "field rules apply inside"
    );
    assert_eq!(first["customer"]["email"], json!("[REDACTED:email]"));
    assert_eq!(
        doc["result"]["content"][1]["text"],
        json!("mail [REDACTED:email]")
    );
    assert_eq!(counts.get("detector:email"), Some(&2));
}

fn event_stream() -> String {
    let call = json!({"jsonrpc": "2.0", "id": 2, "result": {"content": [
        {"type": "text", "text": json!({"email": EMAIL}).to_string()}]}});
    format!(
        "\u{feff}: keep-alive {EMAIL}\r\nid: 7\r\nevent: message\r\ndata: {call}\r\n\r\n\
         data: first line {EMAIL}\rdata:second\n\ndata\n\nretry: 10\nretry: x\nunknown: 1\n\n\
         id: 8\n\n: bye\ndata: never dispatched"
    )
}

#[test]
fn event_streams_are_masked_event_by_event() {
    let m = masker("text/event-stream", None);
    assert_eq!(m.framing(), Framing::Streamed);
    let (out, counts) = run(m, event_stream().as_bytes(), 0);
    let out = text(&out);
    assert!(!out.contains(EMAIL), "{out}");
    let expected_data = r#"{"id":2,"jsonrpc":"2.0","result":{"content":[{"text":"{\"email\":\"[REDACTED:email]\"}","type":"text"}]}}"#;
    assert_eq!(
        out,
        format!(
            ": keep-alive [REDACTED:email]\nid: 7\nevent: message\ndata: {expected_data}\n\n\
             data: first line [REDACTED:email]\ndata: second\n\ndata: \n\nretry: 10\n\n\
             id: 8\n\n: bye\n"
        )
    );
    assert_eq!(counts.get("detector:email"), Some(&3));
}

#[test]
fn an_event_stream_split_at_every_byte_gives_the_same_output() {
    let stream = event_stream();
    let whole = run(masker("text/event-stream", None), stream.as_bytes(), 0);
    for size in 1..=stream.len() {
        assert_eq!(
            run(masker("text/event-stream", None), stream.as_bytes(), size),
            whole,
            "chunks of {size}"
        );
    }
    // And cut at every single position in two.
    for cut in 0..=stream.len() {
        let mut m = masker("text/event-stream", None);
        let (a, b) = stream.as_bytes().split_at(cut);
        let mut out = m.push(a).expect("masked");
        out.extend(m.push(b).expect("masked"));
        out.extend(m.finish().expect("masked"));
        assert_eq!(out, whole.0, "cut at {cut}");
    }
}

#[test]
fn an_event_over_the_bound_fails_closed() {
    let limits = Limits { max_json: 32 };
    let mut m = ResponseMasker::new(
        Some(masking()),
        None,
        Some("text/event-stream"),
        None,
        limits,
    )
    .expect("readable");
    assert_eq!(
        m.push(b"data: short\n\n").ok(),
        Some(b"data: short\n\n".to_vec())
    );
    let long = format!("data: {}\n", "x".repeat(20));
    assert!(m.push(long.as_bytes()).is_ok());
    assert_eq!(
        m.push(long.as_bytes()),
        Err(BodyError::TooLarge { max: 32 })
    );
}

#[test]
fn text_streams_get_detectors() {
    let body = format!("line one {EMAIL}\nline two\n{EMAIL}");
    let (out, counts) = run(masker("text/plain", None), body.as_bytes(), 3);
    assert_eq!(
        text(&out),
        "line one [REDACTED:email]\nline two\n[REDACTED:email]"
    );
    assert_eq!(counts.get("detector:email"), Some(&2));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("in memory");
    e.finish().expect("in memory")
}

#[test]
fn compressed_bodies_are_decoded_or_refused() {
    let body = json!({"email": EMAIL}).to_string();
    let expected = json!({"email": "[REDACTED:email]"}).to_string();
    let (out, _) = run(
        masker("application/json", Some("gzip")),
        &gzip(body.as_bytes()),
        7,
    );
    assert_eq!(text(&out), expected);

    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body.as_bytes()).expect("in memory");
    let zlib = z.finish().expect("in memory");
    let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    r.write_all(body.as_bytes()).expect("in memory");
    let raw = r.finish().expect("in memory");
    for deflated in [zlib, raw] {
        for size in [1, 2, 5, 0] {
            let (out, _) = run(masker("application/json", Some("deflate")), &deflated, size);
            assert_eq!(text(&out), expected);
        }
    }
    let bad = ResponseMasker::new(
        Some(masking()),
        None,
        Some("text/plain"),
        Some("br"),
        Limits::default(),
    );
    assert!(matches!(bad, Err(BodyError::Encoding(_))));
    let mut broken = masker("text/plain", Some("gzip"));
    let corrupt = broken
        .push(b"not gzip at all")
        .and_then(|_| broken.finish());
    assert!(matches!(corrupt, Err(BodyError::Decompress(_))));
    let mut truncated = masker("application/json", Some("gzip"));
    let whole = gzip(body.as_bytes());
    let cut = truncated
        .push(&whole[..whole.len() / 2])
        .and_then(|_| truncated.finish());
    assert!(cut.is_err(), "a truncated stream is not passed on");
}

#[test]
fn headers_are_fixed_up() {
    let mut request = HeaderMap::new();
    request.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip, br"),
    );
    request.insert(header::RANGE, HeaderValue::from_static("bytes=0-9"));
    request_headers(&mut request);
    assert_eq!(
        request.get(header::ACCEPT_ENCODING),
        Some(&HeaderValue::from_static("identity"))
    );
    assert!(request.get(header::RANGE).is_none());

    let response = || {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(99));
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        h
    };
    let mut h = response();
    let json = masker("application/json", Some("gzip"));
    response_headers(&mut h, &json);
    assert!(h.get(header::CONTENT_LENGTH).is_none() && h.get(header::CONTENT_ENCODING).is_none());
    set_length(&mut h, 12);
    assert_eq!(h.get(header::CONTENT_LENGTH), Some(&HeaderValue::from(12)));
    let mut h = response();
    response_headers(&mut h, &masker("image/png", Some("gzip")));
    assert_eq!(h, response(), "media passes as it came");
}

#[test]
fn tool_annotations_are_learned_from_json_and_from_events() {
    let listing = json!({"jsonrpc": "2.0", "id": 4, "result": {"tools": [
        {"name": "search", "annotations": {"readOnlyHint": true}}]}});
    // From JSON, with masking and without.
    for masking in [Some(masking()), None] {
        let registry = Arc::new(ToolRegistry::default());
        let watch = ListWatch::new(registry.clone(), vec![(json!(4), true)]);
        let m = ResponseMasker::new(
            masking,
            Some(watch),
            Some("application/json"),
            None,
            Limits::default(),
        )
        .expect("readable");
        let (out, _) = run(m, listing.to_string().as_bytes(), 3);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).ok(),
            Some(listing.clone())
        );
        assert_eq!(registry.annotations("search").read_only, Some(true));
    }
    // From an event stream, with masking and without; split anywhere.
    let stream = format!("event: message\ndata: {listing}\n\n");
    for masking in [Some(masking()), None] {
        for size in [1, 2, 7, 0] {
            let registry = Arc::new(ToolRegistry::default());
            let watch = ListWatch::new(registry.clone(), vec![(json!(4), true)]);
            let m = ResponseMasker::new(
                masking.clone(),
                Some(watch),
                Some("text/event-stream"),
                None,
                Limits::default(),
            )
            .expect("readable");
            let unmasked = m.framing() == Framing::Unchanged;
            let (out, _) = run(m, stream.as_bytes(), size);
            if unmasked {
                assert_eq!(out, stream.as_bytes());
            }
            assert_eq!(
                registry.annotations("search").read_only,
                Some(true),
                "{size}"
            );
        }
    }
}

#[test]
fn json_lines_are_masked_line_by_line_as_they_stream() {
    let events = format!(
        "{}\n{}\n",
        json!({"type": "ADDED", "object": {"password": "p1", "note": EMAIL}}),
        json!({"type": "MODIFIED", "object": {"password": "p2"}})
    );
    let mut m = masker(JSON_LINES, None);
    assert_eq!(m.framing(), Framing::Streamed);
    // The first line is given out as soon as it ends, before the second arrives.
    let cut = events.find('\n').expect("two lines") + 1;
    let first = text(&m.push(&events.as_bytes()[..cut]).expect("masked"));
    assert!(first.ends_with('\n') && !first.contains("p1"), "{first}");
    assert!(!first.contains(EMAIL), "{first}");
    let (all, counts) = run(masker(JSON_LINES, None), events.as_bytes(), 7);
    let all = text(&all);
    assert_eq!(all.lines().count(), 2, "{all}");
    assert!(!all.contains("p2"), "{all}");
    assert_eq!(counts.get("rule:passwords"), Some(&2), "{counts:?}");
    // A line over the bound fails closed.
    let limits = Limits { max_json: 16 };
    let mut m = ResponseMasker::new(Some(masking()), None, Some(JSON_LINES), None, limits)
        .expect("readable");
    assert!(m.push(&[b' '; 40]).is_err());
}
