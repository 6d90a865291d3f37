use super::*;

#[tokio::test]
async fn packets_round_trip_and_limits_hold() {
    let mut out = Vec::new();
    put_packet(&mut out, 3, b"hello");
    let mut io = std::io::Cursor::new(out);
    let p = read_packet(&mut io, 100).await.unwrap().unwrap();
    assert_eq!(
        p,
        Packet {
            seq: 3,
            body: b"hello".to_vec()
        }
    );
    assert!(read_packet(&mut io, 100).await.unwrap().is_none());

    let mut out = Vec::new();
    put_packet(&mut out, 0, &[0u8; 50]);
    let err = read_packet(&mut std::io::Cursor::new(out), 10)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ReadError::Frame(FrameError::TooLarge { size: 50, max: 10 })
    ));
}

#[tokio::test]
async fn a_payload_of_16_mib_or_more_is_split_and_joined_with_consecutive_ids() {
    for len in [
        MAX_PAYLOAD - 1,
        MAX_PAYLOAD,
        MAX_PAYLOAD + 5,
        2 * MAX_PAYLOAD,
    ] {
        let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        put_packet(&mut out, 7, &body);
        let packet = Packet { seq: 7, body };
        assert_eq!(out.len(), len + 4 * packet.parts(), "{len}");
        let mut io = std::io::Cursor::new(out);
        let read = read_packet(&mut io, usize::MAX).await.unwrap().unwrap();
        assert_eq!(read, packet, "{len}");
        assert_eq!(read.next_seq(), 7 + packet.parts() as u8, "{len}");
        assert!(read_packet(&mut io, usize::MAX).await.unwrap().is_none());
    }
    // The limit holds for the whole payload, not each packet.
    let mut out = Vec::new();
    put_packet(&mut out, 0, &vec![1u8; MAX_PAYLOAD + 10]);
    let err = read_packet(&mut std::io::Cursor::new(out.clone()), MAX_PAYLOAD + 5)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ReadError::Frame(FrameError::TooLarge { size, .. }) if size == MAX_PAYLOAD + 10
    ));
    // A continuation out of sequence is refused.
    out[MAX_PAYLOAD + 4 + 3] = 9;
    let err = read_packet(&mut std::io::Cursor::new(out), usize::MAX)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ReadError::Frame(FrameError::Malformed { .. })
    ));
}

#[test]
fn err_and_ok_packets_are_built_and_read() {
    let body = err_body(1227, "42000", "interceptor: no");
    let e = parse_err(&body).unwrap();
    assert_eq!(
        (e.code, e.sqlstate.as_str(), e.message.as_str()),
        (1227, "42000", "interceptor: no")
    );
    let ok = parse_ok(&ok_body(2)).unwrap();
    assert_eq!(ok.status, 2);
    assert_eq!(ok.affected_rows, 0);
}

#[test]
fn length_encoded_values_round_trip_and_truncation_is_an_error() {
    for n in [
        0u64,
        250,
        251,
        65535,
        65536,
        0xFF_FFFF,
        0x100_0000,
        u64::MAX,
    ] {
        let mut out = Vec::new();
        put_lenenc(&mut out, n);
        assert_eq!(Reader::new(&out, "t").lenenc().unwrap(), n);
        assert!(Reader::new(&out[..out.len() - 1], "t").lenenc().is_err() || out.len() == 1);
    }
    let mut r = Reader::new(&[0xFB, 2, b'h', b'i', 5, b'x'], "row");
    assert_eq!(r.nullable_bytes().unwrap(), None);
    assert_eq!(r.nullable_bytes().unwrap(), Some(&b"hi"[..]));
    assert!(r.nullable_bytes().is_err());
    assert!(Reader::new(b"abc", "s").nul_bytes().is_err());
}
