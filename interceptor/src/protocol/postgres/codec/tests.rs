use super::*;

fn frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    Message {
        tag,
        body: Bytes::copy_from_slice(body),
    }
    .encode(&mut b);
    b
}

#[test]
fn messages_round_trip_and_split_at_boundaries() {
    let mut buf = frame(b'Q', b"SELECT 1\0");
    buf.extend_from_slice(&frame(b'S', b""));
    buf.extend_from_slice(&[b'X', 0, 0]); // an incomplete third message
    let q = split_message(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(q.tag, b'Q');
    assert_eq!(frontend::query(&q.body).unwrap(), "SELECT 1");
    let s = split_message(&mut buf, 1024).unwrap().unwrap();
    assert_eq!((s.tag, s.body.len()), (b'S', 0));
    assert_eq!(split_message(&mut buf, 1024).unwrap(), None);
}

#[test]
fn framing_rejects_bad_lengths() {
    let mut short = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
    assert_eq!(
        split_message(&mut short, 1024),
        Err(FrameError::TooShort(3))
    );
    let mut long = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        split_message(&mut long, 1024),
        Err(FrameError::TooLong { .. })
    ));
    let mut negative = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
    assert_eq!(
        split_message(&mut negative, 1024),
        Err(FrameError::TooShort(-1))
    );
}

#[test]
fn startup_packets_parse() {
    let mut out = BytesMut::new();
    encode_startup(
        &[
            ("user".into(), "agent".into()),
            ("database".into(), "appdb".into()),
        ],
        &mut out,
    );
    let body = &out[4..];
    assert_eq!(
        parse_startup(body).unwrap(),
        Startup::Params(vec![
            ("user".into(), "agent".into()),
            ("database".into(), "appdb".into())
        ])
    );
    let mut cancel = BytesMut::new();
    encode_cancel(7, 9, &mut cancel);
    assert_eq!(
        parse_startup(&cancel[4..]).unwrap(),
        Startup::Cancel { pid: 7, key: 9 }
    );
    assert_eq!(parse_startup(&[0, 0]), Err(FrameError::Truncated));
    assert!(matches!(
        parse_startup(&[0, 3, 0, 0, b'u', b's']),
        Err(FrameError::Malformed { .. })
    ));
    assert_eq!(
        parse_startup(&[0, 9, 0, 0]),
        Err(FrameError::UnknownStartup(589_824))
    );
}

#[tokio::test]
async fn startup_reader_rejects_short_long_and_truncated_packets() {
    let read = |bytes: Vec<u8>| async move {
        let mut r = &bytes[..];
        read_startup(&mut r, 1 << 20).await
    };
    assert_eq!(read(vec![]).await, Ok(None));
    assert_eq!(
        read(vec![0, 0, 0, 2]).await,
        Err(FrameError::StartupTooShort(2))
    );
    // Length 5 passes the tagged-message minimum but cannot hold a request code: the message
    // states the start-up rule, not the tagged one.
    let five = read(vec![0, 0, 0, 5, 0]).await.unwrap_err();
    assert_eq!(five, FrameError::StartupTooShort(5));
    assert_eq!(
        five.to_string(),
        "start-up packet length 5 is below the minimum of 8 (the length word and a 4-byte \
         request code)"
    );
    assert!(matches!(
        read(vec![0x7f, 0xff, 0xff, 0xff]).await,
        Err(FrameError::TooLong { .. })
    ));
    assert_eq!(
        read(vec![0, 0, 0, 16, 0, 3]).await,
        Err(FrameError::Truncated)
    );
    let mut ssl = BytesMut::new();
    encode_untagged_code(SSL_REQUEST, &mut ssl);
    assert_eq!(read(ssl.to_vec()).await, Ok(Some(Startup::SslRequest)));
}

#[test]
fn extended_protocol_bodies_parse() {
    let mut parse_body = BytesMut::new();
    put_cstr(&mut parse_body, "s1");
    put_cstr(&mut parse_body, "SELECT $1");
    parse_body.put_i16(1);
    parse_body.put_i32(23);
    assert_eq!(
        frontend::parse(&parse_body).unwrap(),
        ("s1".into(), "SELECT $1".into(), 1)
    );

    let mut bind = BytesMut::new();
    put_cstr(&mut bind, "");
    put_cstr(&mut bind, "s1");
    bind.put_i16(1);
    bind.put_i16(0);
    bind.put_i16(2);
    assert_eq!(frontend::bind(&bind).unwrap(), ("".into(), "s1".into(), 2));
    assert!(frontend::bind(&bind[..5]).is_err());
    assert!(frontend::parse(b"s1\0SELECT").is_err());
}

#[test]
fn error_fields_are_read_and_built() {
    let e = backend::error(b'E', "ERROR", "42P01", "relation does not exist");
    assert_eq!(
        backend::error_fields(&e.body),
        (
            Some("42P01".to_owned()),
            Some("relation does not exist".to_owned())
        )
    );
    assert_eq!(backend::error_fields(b"Cx"), (None, None));
}
