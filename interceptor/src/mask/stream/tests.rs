use std::sync::Arc;

use super::{StreamMasker, KEEP, KEY_LIMIT, STREAM_HOLD_LIMIT};
use crate::mask::{detect::Detector, Masking, Strategy};

fn masking(strategy: Strategy) -> Arc<Masking> {
    let every: Vec<(Detector, Strategy)> = Detector::ALL.iter().map(|d| (*d, strategy)).collect();
    Arc::new(crate::mask::tests::detecting(Vec::new(), &every))
}

fn masker(strategy: Strategy) -> StreamMasker {
    StreamMasker::new(masking(strategy))
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

#[test]
fn a_value_split_across_chunks_is_masked_whole() {
    let mut m = masker(Strategy::Redact);
    assert_eq!(m.push(b"paid with 4111 11"), b"");
    assert_eq!(m.held(), 17);
    assert_eq!(
        text(m.push(b"11 1111 1111 ok\nnext")),
        "paid with [REDACTED:credit_card] ok\n"
    );
    assert_eq!(text(m.flush()), "next");
    assert_eq!(
        m.take_counts(),
        [("detector:credit_card".to_owned(), 1)].into()
    );
    assert!(m.take_counts().is_empty());
}

#[test]
fn byte_by_byte_gives_what_whole_lines_give() {
    let input = "user alice@example.com\r\nkey AKIAIOSFODNN7EXAMPLE and 123-45-6789\r\n$ ";
    let mut whole = masker(Strategy::Partial);
    let mut expected = whole.push(input.as_bytes());
    expected.extend(whole.flush());
    let mut split = masker(Strategy::Partial);
    let mut out = Vec::new();
    for b in input.as_bytes() {
        out.extend(split.push(&[*b]));
    }
    out.extend(split.flush());
    assert_eq!(text(out), text(expected.clone()));
    assert!(!text(expected).contains("alice@example.com"));
}

#[test]
fn complete_lines_go_at_once_and_a_prompt_waits_for_flush() {
    let mut m = masker(Strategy::Redact);
    assert_eq!(text(m.push(b"total 0\nroot@host:~# ")), "total 0\n");
    assert_eq!(m.held(), "root@host:~# ".len());
    assert_eq!(text(m.flush()), "root@host:~# ");
    assert_eq!(m.held(), 0);
    assert_eq!(m.flush(), b"");
}

#[test]
fn a_long_line_is_sent_past_the_hold_limit_without_cutting_a_value() {
    let mut m = masker(Strategy::Redact);
    // The card straddles where the cut would fall: it is sent masked, whole.
    let len = STREAM_HOLD_LIMIT + 100;
    let card = b"4111111111111111";
    let mut line = vec![b'a'; len];
    let at = len - KEEP - 8;
    line[at - 1] = b' ';
    line[at..at + card.len()].copy_from_slice(card);
    line[at + card.len()] = b' ';
    let out = m.push(&line);
    assert!(!out.is_empty());
    assert!(m.held() < KEEP);
    let sent = text(out);
    assert!(sent.ends_with("[REDACTED:credit_card]"), "{sent}");
    // What is held is never more than the limit, however long the line.
    for _ in 0..10 {
        m.push(&[b'b'; 1000]);
        assert!(m.held() <= STREAM_HOLD_LIMIT);
    }
}

#[test]
fn a_private_key_printed_in_pieces_is_swallowed_to_its_end_line() {
    let mut m = masker(Strategy::Redact);
    let mut out = m.push(b"$ cat id_rsa\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1\n");
    out.extend(m.push(b"bodyline2secret\nbodyline3"));
    out.extend(m.flush());
    out.extend(m.push(b"secret\n-----END RSA PRIVATE KEY-----\n$ "));
    out.extend(m.flush());
    let out = text(out);
    assert!(!out.contains("MIIE") && !out.contains("bodyline"), "{out}");
    assert_eq!(out, "$ cat id_rsa\n[REDACTED:private_key]\n$ ");
}

#[test]
fn an_unterminated_key_does_not_silence_the_stream_for_ever() {
    let mut m = masker(Strategy::Redact);
    m.push(b"-----BEGIN PRIVATE KEY-----\n");
    let line = [b'A'; 1023]
        .iter()
        .chain(b"\n")
        .copied()
        .collect::<Vec<u8>>();
    let mut swallowed = 0;
    while swallowed < KEY_LIMIT {
        assert_eq!(m.push(&line), b"");
        swallowed += line.len();
    }
    assert_eq!(text(m.push(b"after\n")), "after\n");
}

#[test]
fn bytes_that_are_not_utf8_pass_and_values_around_them_are_masked() {
    let mut m = masker(Strategy::Redact);
    let out = m.push(b"\xff\xfe ops@example.com \x1b[0m\n");
    assert_eq!(out, b"\xff\xfe [REDACTED:email] \x1b[0m\n");
}

/// A fuzz finding: a card alone on one line, the same digits inside a longer run (a 5-digit
/// group) on another. The run is not a card for the detectors, in the whole text or in any
/// chunking; the card is masked in every chunking. Chunking changes nothing.
#[test]
fn chunking_gives_what_masking_the_whole_stream_gives() {
    let input: &[u8] = b"$ env\r\n4111-1111-1111-11111-1111-1111-1111\r\n\
        card 4111-1111-1111-1111\r\nx4111111111111111x\r\nssn 123-45-6789 at 127.0.0.1\r\n$ ";
    let masking = masking(Strategy::Redact);
    let (whole, whole_counts) = masking.mask_bytes(input);
    let whole = text(whole.into_owned());
    assert_eq!(
        whole,
        "$ env\r\n4111-1111-1111-11111-1111-1111-1111\r\ncard [REDACTED:credit_card]\r\n\
         x[REDACTED:credit_card]x\r\nssn [REDACTED:ssn] at [REDACTED:ipv4]\r\n$ "
    );
    for size in [1, 2, 3, 5, 7, 16, 64, input.len()] {
        let mut m = StreamMasker::new(masking.clone());
        let mut out = Vec::new();
        for chunk in input.chunks(size) {
            out.extend(m.push(chunk));
        }
        out.extend(m.flush());
        assert_eq!(text(out), whole, "chunks of {size}");
        assert_eq!(m.take_counts(), whole_counts, "chunks of {size}");
    }
}
