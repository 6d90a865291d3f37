use std::sync::Arc;

use super::*;
use crate::command::{Masker, ResultColumn, Rewrite, ValueKind};

fn masking(
    columns: &[(&str, &[&str], Strategy)],
    detectors: &[(Detector, Strategy)],
) -> Arc<Masking> {
    let columns = columns
        .iter()
        .map(|(name, patterns, strategy)| {
            let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
            Arc::new(ColumnRule::new(name, &patterns, *strategy).unwrap())
        })
        .collect();
    Arc::new(detecting(columns, detectors))
}

/// A masking with these column rules and detectors, a fixed hash key and 2 sampled rows;
/// the JSON and stream tests build theirs with it too.
pub(super) fn detecting(
    columns: Vec<Arc<ColumnRule>>,
    detectors: &[(Detector, Strategy)],
) -> Masking {
    let rules: Vec<DetectorRule> = detectors
        .iter()
        .map(|(d, s)| DetectorRule {
            detector: *d,
            strategy: *s,
            rule: "test".to_owned(),
        })
        .collect();
    let set: Vec<Detector> = detectors.iter().map(|(d, _)| *d).collect();
    Masking::new(
        columns,
        &rules,
        Some(Arc::new(Scanner::new(&set))),
        Some(Arc::new(HashKey::from_bytes(&[7u8; 32]))),
        2,
    )
}

fn column(name: &str, source: Option<&str>, kind: ValueKind) -> ResultColumn {
    ResultColumn {
        name: name.to_owned(),
        source: source.map(str::to_owned),
        unresolved: false,
        kind,
    }
}

fn replaced(r: Rewrite) -> String {
    match r {
        Rewrite::Replace(v) => String::from_utf8(v).unwrap(),
        other => panic!("expected a replacement, got {other:?}"),
    }
}

#[test]
fn column_rules_match_sources_and_fall_back_to_names() {
    let rule = ColumnRule::new(
        "r",
        &["customers.email".into(), "*.ssn".into()],
        Strategy::Redact,
    )
    .unwrap();
    let src = |s: &str| column("x", Some(s), ValueKind::Text);
    assert!(rule.matches(&src("public.customers.email")));
    assert!(rule.matches(&src("public.customers.ssn")));
    assert!(!rule.matches(&src("public.orders.email")));
    // Unknown source: the name decides, by each pattern's last part (wider, never narrower).
    assert!(rule.matches(&column("email", None, ValueKind::Text)));
    assert!(rule.matches(&column("SSN", None, ValueKind::Text)));
    assert!(!rule.matches(&column("concat", None, ValueKind::Text)));
    assert!(rule.may_name("t.ssn") && rule.may_name("t.*") && !rule.may_name("t.name"));
}

#[test]
fn strategies_rewrite_whole_columns() {
    let m = masking(
        &[
            ("emails", &["email"], Strategy::Partial),
            ("ssns", &["ssn"], Strategy::Hash),
            ("notes", &["notes"], Strategy::Null),
            ("cards", &["card"], Strategy::Redact),
        ],
        &[],
    );
    let mut masker = m.masker(vec![
        column("email", None, ValueKind::Text),
        column("ssn", None, ValueKind::Text),
        column("notes", None, ValueKind::Text),
        column("card", None, ValueKind::Json),
        column("ssn", None, ValueKind::Opaque),
    ]);
    assert_eq!(
        replaced(masker.value(0, Some(b"alice@example.com"))),
        "*****@******e.com"
    );
    let h1 = replaced(masker.value(1, Some(b"123-45-6789")));
    assert!(h1.starts_with("hash:") && h1.len() == 21, "{h1}");
    assert_eq!(masker.value(2, Some(b"anything")), Rewrite::Null);
    assert_eq!(replaced(masker.value(3, Some(b"4111"))), "\"[REDACTED]\"");
    // A binary number cannot hold a replacement: NULL.
    assert_eq!(masker.value(4, Some(&[0, 0, 0, 1])), Rewrite::Null);
    // NULL stays NULL, uncounted.
    assert_eq!(masker.value(0, None), Rewrite::Keep);
    masker.end_row();
    // Hashing is deterministic for equal inputs and differs for different ones.
    assert_eq!(replaced(masker.value(1, Some(b"123-45-6789"))), h1);
    assert_ne!(replaced(masker.value(1, Some(b"123-45-6780"))), h1);
    let report = masker.report();
    assert_eq!(report.counts.get("rule:ssns"), Some(&4));
    assert_eq!(report.counts.get("rule:emails"), Some(&1));
}

#[test]
fn detectors_rewrite_spans_and_keep_json_valid() {
    let m = masking(
        &[],
        &[
            (Detector::Email, Strategy::Redact),
            (Detector::CreditCard, Strategy::Partial),
        ],
    );
    let mut masker = m.masker(vec![
        column("note", None, ValueKind::Text),
        column("doc", None, ValueKind::Json),
        column("n", None, ValueKind::Opaque),
        column("b", None, ValueKind::JsonWithHeader),
    ]);
    assert_eq!(
        replaced(masker.value(0, Some(b"mail alice@example.com now"))),
        "mail [REDACTED:email] now"
    );
    // Inside a string: replaced in place; a bare number becomes a string.
    let doc = replaced(masker.value(
        1,
        Some(br#"{"e":"alice@example.com","card":4111111111111111}"#),
    ));
    assert_eq!(doc, r#"{"e":"[REDACTED:email]","card":"************1111"}"#);
    assert!(serde_json::from_str::<serde_json::Value>(&doc).is_ok());
    // Escaped quotes do not confuse the string tracking.
    let doc = replaced(masker.value(1, Some(br#"["a\"b", 4111111111111111]"#)));
    assert!(
        serde_json::from_str::<serde_json::Value>(&doc).is_ok(),
        "{doc}"
    );
    assert_eq!(masker.value(2, Some(b"4111111111111111")), Rewrite::Null);
    let mut jsonb = vec![1u8];
    jsonb.extend_from_slice(br#"{"c": 4111111111111111}"#);
    let out = masker.value(3, Some(&jsonb));
    let Rewrite::Replace(out) = out else {
        panic!("{out:?}")
    };
    assert_eq!(out[0], 1);
    assert!(serde_json::from_slice::<serde_json::Value>(&out[1..]).is_ok());
    // Nothing found: kept as is.
    assert_eq!(masker.value(0, Some(b"4111111111111112")), Rewrite::Keep);
    let report = masker.report();
    assert_eq!(report.counts.get("detector:email"), Some(&2));
    assert_eq!(report.counts.get("detector:credit_card"), Some(&4));
}

#[test]
fn masked_json_stays_json_or_becomes_null() {
    // Found by the masking fuzz target: `partial` keeps punctuation and white space, which a
    // whole JSON value masked by a column rule must carry escaped.
    let m = masking(
        &[("r", &["doc"], Strategy::Partial)],
        &[(Detector::PrivateKey, Strategy::Redact)],
    );
    let mut masker = m.masker(vec![
        column("doc", None, ValueKind::Json),
        column("other", None, ValueKind::Json),
        column("b", None, ValueKind::JsonWithHeader),
    ]);
    for value in [&b"73\n"[..], br#"{"a": "x\"y"}"#, b"\"tab\\there\""] {
        let doc = replaced(masker.value(0, Some(value)));
        assert!(
            serde_json::from_str::<serde_json::Value>(&doc).is_ok(),
            "{doc}"
        );
    }
    // A key block without its END line runs to the end of the value, past the string that
    // held it: the document would not parse, so it is not sent.
    let key = br#"{"k":"-----BEGIN PRIVATE KEY-----\nMIIE","n":1}"#;
    assert_eq!(masker.value(1, Some(key)), Rewrite::Null);
    let mut jsonb = vec![1u8];
    jsonb.extend_from_slice(key);
    assert_eq!(masker.value(2, Some(&jsonb)), Rewrite::Null);
    // With its END line, the block is replaced inside the string.
    let whole = br#"{"k":"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----","n":1}"#;
    assert_eq!(
        replaced(masker.value(1, Some(whole))),
        r#"{"k":"[REDACTED:private_key]","n":1}"#
    );
}

#[test]
fn undescribed_columns_are_nulled_under_column_rules() {
    let m = masking(&[("r", &["ssn"], Strategy::Redact)], &[]);
    let mut masker = m.masker(Vec::new());
    assert_eq!(masker.value(0, Some(b"harmless")), Rewrite::Null);
    let m = masking(&[], &[(Detector::Email, Strategy::Redact)]);
    let mut masker = m.masker(Vec::new());
    assert_eq!(masker.value(0, Some(b"harmless")), Rewrite::Keep);
    assert_eq!(masker.value(0, Some(b"a@example.com")), Rewrite::Null);
}

#[test]
fn samples_hold_masked_values_only() {
    let m = masking(&[], &[(Detector::Email, Strategy::Redact)]);
    let mut masker = m.masker(vec![column("e", None, ValueKind::Text)]);
    for _ in 0..5 {
        masker.value(0, Some(b"bob@example.com"));
        masker.end_row();
    }
    let report = masker.report();
    let sample = report.sample.unwrap();
    assert_eq!(sample.len(), 2);
    assert_eq!(sample[0], vec![Some("[REDACTED:email]".to_owned())]);
}

#[test]
fn journal_texts_are_masked_but_never_nulled() {
    let m = masking(&[], &[(Detector::Email, Strategy::Null)]);
    let (text, counts) =
        m.mask_text("UPDATE customers SET email = 'carol@example.com' WHERE id = 1");
    assert_eq!(
        text,
        "UPDATE customers SET email = '[REDACTED:email]' WHERE id = 1"
    );
    assert_eq!(counts.get("detector:email"), Some(&1));
    let (text, counts) = m.mask_text("SELECT 1");
    assert!(matches!(text, Cow::Borrowed(_)) && counts.is_empty());
}

#[test]
fn partial_hides_short_values_entirely() {
    assert_eq!(partial(b"1234"), b"****");
    assert_eq!(partial(b"4111-1111-1111-1111"), b"****-****-****-1111");
    assert_eq!(
        partial("José Pérez 12345678".as_bytes()).len(),
        "José Pérez 12345678".len()
    );
}

#[test]
fn hash_keys_are_created_private_and_reused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/mask.key");
    let a = HashKey::load_or_create(&path).unwrap().token(b"x");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(HashKey::load_or_create(&path).unwrap().token(b"x"), a);
    std::fs::write(&path, b"short").unwrap();
    assert!(matches!(
        HashKey::load_or_create(&path),
        Err(MaskError::ShortKey(_))
    ));
}

#[test]
fn column_rules_apply_to_json_keys() {
    let m = masking(&[("notes", &["customers.notes"], Strategy::Redact)], &[]);
    let mut masker = m.masker(vec![column("row_to_json", None, ValueKind::Json)]);
    let out = replaced(masker.value(
        0,
        Some(br#"[{"id":1,"notes":"code ZK-7781","x":{"notes":5}},{"notes":null}]"#),
    ));
    assert_eq!(
        out,
        r#"[{"id":1,"notes":"[REDACTED]","x":{"notes":"[REDACTED]"}},{"notes":null}]"#
    );
    assert_eq!(masker.value(0, Some(br#"{"id":1}"#)), Rewrite::Keep);
    assert_eq!(masker.report().counts.get("rule:notes"), Some(&2));
}

#[test]
fn without_a_key_hash_redacts_for_column_rules_and_detectors() {
    let columns = vec![Arc::new(
        ColumnRule::new("ssn", &["ssn".to_owned()], Strategy::Hash).unwrap(),
    )];
    let rules = [DetectorRule {
        detector: Detector::Email,
        strategy: Strategy::Hash,
        rule: "test".to_owned(),
    }];
    let m = Arc::new(Masking::new(
        columns,
        &rules,
        Some(Arc::new(Scanner::new(&[Detector::Email]))),
        None,
        0,
    ));
    let mut masker = m.masker(vec![
        column("ssn", None, ValueKind::Text),
        column("note", None, ValueKind::Text),
    ]);
    assert_eq!(
        replaced(masker.value(0, Some(b"123-45-6789"))),
        "[REDACTED]"
    );
    assert_eq!(
        replaced(masker.value(1, Some(b"a@example.com"))),
        "[REDACTED:email]"
    );
}

#[test]
fn a_rejected_candidate_does_not_hide_a_value_it_overlaps() {
    // 13 digits that fail the card checksum, then an email that starts with them: the card
    // shape is tried first and rejected; the email must still be found.
    let masking = detecting(
        Vec::new(),
        &[
            (Detector::CreditCard, Strategy::Redact),
            (Detector::Email, Strategy::Redact),
        ],
    );
    for text in [
        "1234567890123@example.com",
        "reach 1234567890123@example.com today",
        "1234567890123@example.com, 4111 1111 1111 1111",
    ] {
        let (masked, _) = masking.mask_text(text);
        assert!(!masked.contains("@example.com"), "{text:?} -> {masked:?}");
    }
}
