use super::*;

#[test]
fn the_greeting_round_trips() {
    let g = Greeting {
        version: "5.7.99-interceptor".to_owned(),
        connection_id: 7,
        salt: b"abcdefghijklmnopqrst".to_vec(),
        capabilities: caps::FOLLOWED | caps::SSL,
        collation: GATEWAY_COLLATION,
        status: 2,
        plugin: NATIVE_PASSWORD.to_owned(),
    };
    assert_eq!(Greeting::parse(&g.encode()).unwrap(), g);
    // Truncated greetings are errors, never panics.
    let bytes = g.encode();
    for n in 0..bytes.len() - 1 {
        let _ = Greeting::parse(&bytes[..n]);
    }
}

#[test]
fn the_response_round_trips_and_ssl_requests_are_recognised() {
    let r = Response {
        capabilities: caps::FOLLOWED | caps::CONNECT_WITH_DB,
        max_packet: 1 << 24,
        collation: 45,
        user: "app".to_owned(),
        auth: vec![1, 2, 3],
        database: Some("appdb".to_owned()),
        plugin: Some(NATIVE_PASSWORD.to_owned()),
    };
    let body = r.encode();
    assert_eq!(Response::parse(&body).unwrap(), r);
    assert!(!Response::is_ssl_request(&body));
    let ssl = Response {
        capabilities: r.capabilities | caps::SSL,
        ..r.clone()
    };
    assert!(Response::is_ssl_request(&ssl.encode_ssl_request()));
    for n in 0..body.len() {
        let _ = Response::parse(&body[..n]);
    }
}

#[test]
fn scrambles_match_known_answers() {
    // mysql_native_password: the server stores SHA1(SHA1(pw)); the scramble XOR'd with
    // SHA1(salt + stored) must give back SHA1(pw), whose SHA1 is the stored hash.
    let salt = b"01234567890123456789";
    let s = native_scramble(b"secret", salt);
    let sha1 = |d: &[u8]| digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &[d]);
    let stored = sha1(&sha1(b"secret"));
    let stage1 = xor(
        &s,
        &digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &[salt, &stored]),
    );
    assert_eq!(sha1(&stage1), stored);
    assert!(native_scramble(b"", salt).is_empty());
    assert_eq!(caching_sha2_scramble(b"secret", salt).len(), 32);
}

#[test]
fn only_charsets_read_exactly_are_accepted_in_the_handshake() {
    assert_eq!(readable_collation(45), Some("utf8mb4"));
    assert_eq!(readable_collation(8), Some("latin1"));
    assert_eq!(readable_collation(33), Some("utf8mb3"));
    assert_eq!(readable_collation(28), None); // gbk_chinese_ci
    assert_eq!(readable_collation(13), None); // sjis_japanese_ci
    assert_eq!(readable_collation(1), None); // big5_chinese_ci
    assert_eq!(readable_collation(63), None); // binary
}
