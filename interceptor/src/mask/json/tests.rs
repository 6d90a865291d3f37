use std::{collections::BTreeMap, sync::Arc};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use serde_json::{json, Value};

use crate::mask::{detect::Detector, FieldRule, HashKey, Masking, Strategy};

/// Field rules `(name, json paths, kubernetes secrets, strategy)` and detectors.
fn masking(
    fields: &[(&str, &[&str], bool, Strategy)],
    detectors: &[(Detector, Strategy)],
) -> Masking {
    let fields = fields
        .iter()
        .map(|(name, paths, secrets, strategy)| {
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            Arc::new(FieldRule::new(name, &paths, *secrets, *strategy).unwrap())
        })
        .collect();
    crate::mask::tests::detecting(Vec::new(), detectors).with_fields(fields)
}

fn secrets(strategy: Strategy) -> Masking {
    masking(&[("k8s-secrets", &[], true, strategy)], &[])
}

/// Masks `doc`, checks it is still valid JSON text, returns it with the counts.
fn masked(m: &Masking, mut doc: Value) -> (Value, BTreeMap<String, u64>) {
    let counts = m.mask_json(&mut doc);
    let text = doc.to_string();
    let again: Value = serde_json::from_str(&text).expect("masked JSON stays valid");
    (again, counts)
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

fn b64(s: &str) -> String {
    BASE64.encode(s)
}

#[test]
fn json_paths_select_children_descendants_and_array_elements() {
    let m = masking(
        &[
            ("data", &["$.data.*"], false, Strategy::Redact),
            ("cards", &["$..card"], false, Strategy::Redact),
            (
                "env",
                &["$.items[*].spec.env[*].value"],
                false,
                Strategy::Redact,
            ),
        ],
        &[],
    );
    let doc = json!({
        "data": {"user": "alice", "pin": 1234, "ok": true},
        "order": {"card": "x", "lines": [{"card": "y"}, {"sku": "z"}]},
        "items": [
            {"spec": {"env": [{"name": "TOKEN", "value": "t1"}, {"name": "MODE", "value": "m"}]}},
            {"spec": {"env": [{"name": "KEY", "value": "t2"}]}}
        ],
        "card_count": 2
    });
    let (out, n) = masked(&m, doc);
    assert_eq!(
        out,
        json!({
            // Keys stay; strings and numbers are replaced; a boolean carries no secret.
            "data": {"user": "[REDACTED]", "pin": "[REDACTED]", "ok": true},
            "order": {"card": "[REDACTED]", "lines": [{"card": "[REDACTED]"}, {"sku": "z"}]},
            "items": [
                {"spec": {"env": [{"name": "TOKEN", "value": "[REDACTED]"}, {"name": "MODE", "value": "[REDACTED]"}]}},
                {"spec": {"env": [{"name": "KEY", "value": "[REDACTED]"}]}}
            ],
            "card_count": 2
        })
    );
    assert_eq!(
        n,
        counts(&[("rule:cards", 2), ("rule:data", 2), ("rule:env", 3)])
    );
}

#[test]
fn a_selected_object_or_array_is_masked_leaf_by_leaf() {
    let m = masking(
        &[("r", &["$.profile", "$.tags"], false, Strategy::Partial)],
        &[],
    );
    let (out, n) = masked(
        &m,
        json!({"profile": {"phone": "+1 415 555 0100", "nested": [12345678901_u64, null]}, "tags": ["ab", "secret-value-99"], "id": 7}),
    );
    assert_eq!(
        out,
        json!({"profile": {"phone": "+* *** *** 0100", "nested": ["*******8901", null]}, "tags": ["**", "******-***ue-99"], "id": 7})
    );
    assert_eq!(n, counts(&[("rule:r", 4)]));
}

#[test]
fn the_widest_selection_wins_and_masks_once() {
    // `$..*` selects `a` and everything under it: only `a` is masked, by the first rule
    // that selects it; the hash is the hash of the clear value, never of a replacement.
    let m = masking(
        &[
            ("inner", &["$.a.b"], false, Strategy::Redact),
            ("outer", &["$.a"], false, Strategy::Hash),
            ("all", &["$..*"], false, Strategy::Null),
        ],
        &[],
    );
    let (out, n) = masked(&m, json!({"a": {"b": "v"}}));
    let (alone, _) = masked(
        &masking(&[("h", &["$.b"], false, Strategy::Hash)], &[]),
        json!({"b": "v"}),
    );
    assert_eq!(out["a"]["b"], alone["b"]);
    assert!(out["a"]["b"].as_str().unwrap().starts_with("hash:"));
    assert_eq!(n, counts(&[("rule:outer", 1)]));
}

#[test]
fn the_root_and_escaped_keys_can_be_selected() {
    let m = masking(&[("r", &["$['a/b']['c~d']"], false, Strategy::Redact)], &[]);
    let (out, _) = masked(&m, json!({"a/b": {"c~d": "v", "e": "w"}}));
    assert_eq!(out, json!({"a/b": {"c~d": "[REDACTED]", "e": "w"}}));
    let m = masking(&[("r", &["$"], false, Strategy::Null)], &[]);
    assert_eq!(masked(&m, json!(["x", 1])).0, json!([null, null]));
}

#[test]
fn invalid_json_paths_are_errors_naming_the_path() {
    let err =
        FieldRule::new("m", &["$.ok".into(), "$[".into()], false, Strategy::Redact).unwrap_err();
    assert!(err.contains("\"$[\""), "{err}");
    // Filter functions are not built in: a path using one does not load.
    assert!(FieldRule::new(
        "m",
        &["$[?match(@.a, 'x')]".into()],
        false,
        Strategy::Redact
    )
    .is_err());
}

#[test]
fn hash_is_joinable_across_documents_and_with_columns() {
    let m = masking(&[("ssn", &["$..ssn"], false, Strategy::Hash)], &[]);
    let (a, _) = masked(&m, json!({"ssn": "123-45-6789"}));
    let (b, _) = masked(
        &m,
        json!({"people": [{"ssn": "123-45-6789"}, {"ssn": "987-65-4320"}]}),
    );
    assert_eq!(a["ssn"], b["people"][0]["ssn"]);
    assert_ne!(b["people"][0]["ssn"], b["people"][1]["ssn"]);
    // The same token as a hashed SQL column of that value: joins work across protocols.
    let key = HashKey::from_bytes(&[7u8; 32]);
    assert_eq!(
        a["ssn"].as_str().unwrap().as_bytes(),
        key.token(b"123-45-6789")
    );
    // A number is hashed by its decimal text, as a numeric column is.
    let (n, _) = masked(&m, json!({"ssn": 123456789}));
    assert_eq!(
        n["ssn"].as_str().unwrap().as_bytes(),
        key.token(b"123456789")
    );
}

#[test]
fn detectors_find_values_in_strings_numbers_arrays_and_keys() {
    let m = masking(
        &[],
        &[
            (Detector::CreditCard, Strategy::Redact),
            (Detector::Email, Strategy::Redact),
        ],
    );
    let doc = json!({
        "a": {"b": {"note": "paid with 4111 1111 1111 1111 today"}},
        "cc": ["ops@example.com", "nobody"],
        "n": 4111111111111111_u64,
        "bob@example.com": {"plan": "pro"},
        "[REDACTED:email]": 1,
        "id": 4111111111111112_u64
    });
    let (out, n) = masked(&m, doc);
    assert_eq!(
        out,
        json!({
            "a": {"b": {"note": "paid with [REDACTED:credit_card] today"}},
            "cc": ["[REDACTED:email]", "nobody"],
            // A number with a match becomes a string: a replacement is not a number.
            "n": "[REDACTED:credit_card]",
            // A key is data too; a masked name already taken gets a suffix.
            "[REDACTED:email]#2": {"plan": "pro"},
            "[REDACTED:email]": 1,
            // Not a valid card (Luhn): kept, as a number.
            "id": 4111111111111112_u64
        })
    );
    assert_eq!(
        n,
        counts(&[("detector:credit_card", 2), ("detector:email", 2)])
    );
}

#[test]
fn detectors_skip_what_field_rules_masked_and_null_nulls_the_value() {
    let m = masking(
        &[("cards", &["$..card"], false, Strategy::Partial)],
        &[
            (Detector::CreditCard, Strategy::Redact),
            (Detector::Email, Strategy::Null),
        ],
    );
    let (out, n) = masked(
        &m,
        json!({"card": "4111 1111 1111 1111", "note": "mail ops@example.com", "x": "4111111111111111"}),
    );
    assert_eq!(
        out,
        json!({"card": "**** **** **** 1111", "note": null, "x": "[REDACTED:credit_card]"})
    );
    assert_eq!(
        n,
        counts(&[
            ("detector:credit_card", 1),
            ("detector:email", 1),
            ("rule:cards", 1)
        ])
    );
}

fn secret(name: &str, user: &str, password: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "Opaque",
        "data": {"username": b64(user), "password": b64(password)}
    })
}

/// The clear values of a masked Secret's `data`, decoded.
fn decoded(secret: &Value) -> BTreeMap<String, String> {
    secret["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let bytes = BASE64.decode(v.as_str().unwrap()).expect("still base64");
            (k.clone(), String::from_utf8(bytes).unwrap())
        })
        .collect()
}

#[test]
fn a_secret_keeps_its_keys_and_its_data_stays_base64() {
    let mut doc = secret("db", "admin", "hunter2-hunter2");
    doc["stringData"] = json!({"token": "plain-token-value"});
    let (out, n) = masked(&secrets(Strategy::Redact), doc);
    assert_eq!(
        decoded(&out),
        [("password", "[REDACTED]"), ("username", "[REDACTED]")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into()
    );
    assert_eq!(out["stringData"], json!({"token": "[REDACTED]"}));
    assert_eq!(out["metadata"]["name"], "db");
    assert_eq!(n, counts(&[("rule:k8s-secrets", 3)]));
    // `partial` works on the decoded value; `null` leaves nulls.
    let (out, _) = masked(
        &secrets(Strategy::Partial),
        secret("db", "a", "hunter2-hunter2"),
    );
    assert_eq!(decoded(&out)["password"], "*******-***ter2");
    let (out, _) = masked(&secrets(Strategy::Null), secret("db", "a", "b"));
    assert_eq!(out["data"], json!({"username": null, "password": null}));
}

#[test]
fn secrets_are_found_in_lists_watch_events_and_lists_of_any_kind() {
    let m = secrets(Strategy::Redact);
    // A SecretList's items carry no kind of their own.
    let mut list = json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": [
        secret("a", "u1", "p1"), secret("b", "u2", "p2")
    ]});
    for item in list["items"].as_array_mut().unwrap() {
        item.as_object_mut().unwrap().remove("kind");
    }
    let (out, n) = masked(&m, list);
    for item in out["items"].as_array().unwrap() {
        assert!(decoded(item).values().all(|v| v == "[REDACTED]"));
    }
    assert_eq!(n, counts(&[("rule:k8s-secrets", 4)]));

    let event = json!({"type": "ADDED", "object": secret("a", "u", "p")});
    let (out, _) = masked(&m, event);
    assert!(decoded(&out["object"]).values().all(|v| v == "[REDACTED]"));

    // `kubectl get all,secrets -o json`: a List mixing kinds; a ConfigMap's data stays.
    let mixed = json!({"kind": "List", "items": [
        {"kind": "ConfigMap", "data": {"mode": "fast"}}, secret("c", "u", "p")
    ]});
    let (out, _) = masked(&m, mixed);
    assert_eq!(out["items"][0]["data"], json!({"mode": "fast"}));
    assert!(decoded(&out["items"][1])
        .values()
        .all(|v| v == "[REDACTED]"));
}

#[test]
fn the_last_applied_annotation_of_a_secret_is_masked_as_a_secret() {
    const LAST: &str = "kubectl.kubernetes.io/last-applied-configuration";
    let applied = secret("db", "admin", "hunter2");
    let mut doc = secret("db", "admin", "hunter2");
    doc["metadata"]["annotations"] = json!({LAST: applied.to_string(), "team": "payments"});
    let (out, n) = masked(&secrets(Strategy::Redact), doc);
    let annotation = out["metadata"]["annotations"][LAST].as_str().unwrap();
    assert!(!annotation.contains(&b64("hunter2")), "{annotation}");
    let inner: Value = serde_json::from_str(annotation).expect("still a JSON object");
    assert!(decoded(&inner).values().all(|v| v == "[REDACTED]"));
    assert_eq!(out["metadata"]["annotations"]["team"], "payments");
    assert_eq!(n, counts(&[("rule:k8s-secrets", 4)]));
    // Text that is not a JSON object is replaced whole (fail closed).
    let mut doc = secret("db", "a", "b");
    doc["metadata"]["annotations"] = json!({LAST: "{not json"});
    let (out, _) = masked(&secrets(Strategy::Redact), doc);
    assert_eq!(out["metadata"]["annotations"][LAST], "[REDACTED]");
}

#[test]
fn without_field_rules_or_detectors_a_document_is_unchanged() {
    let m = Masking::new(Vec::new(), &[], None, None, 0);
    let doc = json!({"kind": "Secret", "data": {"a": b64("x")}, "card": "4111111111111111"});
    let (out, n) = masked(&m, doc.clone());
    assert_eq!(out, doc);
    assert!(n.is_empty());
}

#[test]
fn keys_under_a_selection_are_seen_by_the_detectors() {
    const LAST: &str = "kubectl.kubernetes.io/last-applied-configuration";
    let m = masking(
        &[
            ("k8s-secrets", &[], true, Strategy::Redact),
            ("data", &["$.config"], false, Strategy::Redact),
        ],
        &[(Detector::Email, Strategy::Redact)],
    );
    // A SecretList's item (no kind of its own) keyed by an email address.
    let mut item = secret("a", "u", "p");
    item["data"] = json!({"alice@example.com": b64("pw"), "token": b64("t")});
    item.as_object_mut().unwrap().remove("kind");
    let mut applied = secret("a", "u", "p");
    applied["data"] = json!({"bob@example.com": b64("pw")});
    applied["metadata"]["labels"] = json!({"owner": "carol@example.com"});
    item["metadata"]["annotations"] = json!({LAST: applied.to_string()});
    let doc = json!({
        "kind": "SecretList",
        "items": [item],
        "config": {"nested": {"dave@example.com": "x"}, "list": [{"erin@example.com": 1}]}
    });
    let (out, n) = masked(&m, doc);
    let text = out.to_string();
    for who in ["alice", "bob", "carol", "dave", "erin"] {
        assert!(!text.contains(who), "{who} is left in {text}");
    }
    // Renamed as elsewhere; values masked by the rule, still base64.
    assert_eq!(
        decoded(&out["items"][0]),
        [("[REDACTED:email]", "[REDACTED]"), ("token", "[REDACTED]")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into()
    );
    assert_eq!(
        out["config"],
        json!({"nested": {"[REDACTED:email]": "[REDACTED]"}, "list": [{"[REDACTED:email]": "[REDACTED]"}]})
    );
    let annotation = out["items"][0]["metadata"]["annotations"][LAST]
        .as_str()
        .unwrap();
    let inner: Value = serde_json::from_str(annotation).expect("still a JSON object");
    assert_eq!(inner["metadata"]["labels"]["owner"], "[REDACTED:email]");
    assert!(decoded(&inner).contains_key("[REDACTED:email]"));
    assert_eq!(
        n,
        counts(&[
            ("detector:email", 5),
            ("rule:data", 2),
            ("rule:k8s-secrets", 3)
        ])
    );
}

/// The one-pass text masker reads as the document masker: the same values masked the same way,
/// counted the same, and every byte outside them kept.
#[test]
fn text_masking_matches_document_masking_and_keeps_the_rest() {
    let m = masking(
        &[],
        &[
            (Detector::Email, Strategy::Partial),
            (Detector::CreditCard, Strategy::Redact),
            (Detector::Ssn, Strategy::Null),
        ],
    );
    let texts = [
        // Key order, spacing and number spellings are the server's.
        r#"{"z": "ada@example.com",  "a": [1.50, -2e3, {"card": "4111 1111 1111 1111"}], "ok": true, "n": null}"#,
        // Escapes: the detectors see the decoded value, the replacement is valid JSON.
        r#"["ada\u0040example.com", "quote \" then grace@example.org", "tab\there"]"#,
        // A card as a number, an SSN whose strategy nulls the value, nothing to mask.
        r#"{"n": 4111111111111111, "s": "123-45-6789", "plain": "hello"}"#,
        r#""just a string with bob@example.net in it""#,
        r#"42"#,
        // A key given twice keeps both (the document masker would keep one).
        r#"{"a": "x@example.com", "a": "y"}"#,
    ];
    for text in texts {
        let (out, counts) = m.mask_json_text(text.as_bytes()).expect("decides alone");
        let out = out.unwrap_or_else(|| text.as_bytes().to_vec());
        let got: Value = serde_json::from_slice(&out).expect("stays JSON");
        let doc: Value = serde_json::from_str(text).expect("JSON");
        let (want, want_counts) = masked(&m, doc);
        // The document masker keeps the last of a key given twice; the text keeps (and
        // masks) both. Elsewhere they agree (numbers compare by value: 1.50 and -2e3 stay as
        // written in the text).
        if !text.contains(r#""a": "y""#) {
            assert_eq!(got, want, "{text}");
            assert_eq!(counts, want_counts, "{text}");
        }
        assert!(
            !String::from_utf8_lossy(&out).contains("@example.com\""),
            "{text}"
        );
    }
    // Untouched bytes stay as they were.
    let text = r#"{"z":  "ada@example.com", "a" : [1.50, -2e3]}"#;
    let (out, _) = m.mask_json_text(text.as_bytes()).expect("decides alone");
    let out = String::from_utf8(out.expect("masked")).expect("utf-8");
    assert!(out.starts_with(r#"{"z":  ""#), "{out}");
    assert!(out.ends_with(r#"", "a" : [1.50, -2e3]}"#), "{out}");
    // Nothing to mask: the input stands.
    let (out, counts) = m
        .mask_json_text(br#"{"a": [1, 2]}"#)
        .expect("decides alone");
    assert!(out.is_none() && counts.is_empty());
}

/// Where the text masker cannot decide alone, it says so and the document is masked instead.
#[test]
fn text_masking_defers_to_the_document_masker() {
    let m = masking(&[], &[(Detector::Email, Strategy::Partial)]);
    for text in [
        // A key holding a match is renamed, which needs the object's other keys.
        r#"{"ada@example.com": 1}"#,
        // JSON-RPC, however its key is spelled: results hold documents as text.
        r#"{"jsonrpc": "2.0", "result": {}}"#,
        r#"{"json\u0072pc": "2.0"}"#,
        // Not JSON, or not UTF-8.
        r#"{"a": "#,
        "{\"a\": \"\u{0}\"}",
    ] {
        assert!(m.mask_json_text(text.as_bytes()).is_none(), "{text}");
    }
    assert!(m.mask_json_text(b"[\"\xff\"]").is_none());
    // Field rules select by path: always the document masker.
    let fields = masking(&[("cards", &["$..card"], false, Strategy::Redact)], &[]);
    assert!(fields.mask_json_text(br#"{"card": "x"}"#).is_none());
}
