//! The RSA exchange of `caching_sha2_password` against an in-test fake server. MariaDB has
//! no `caching_sha2_password` server plugin, so the end-to-end tests cannot reach this path:
//! the fake plays MySQL's side of the packets (key request, key, encrypted password) with a
//! key of its own and decrypts what the gateway sent.

use rsa::{pkcs8::EncodePublicKey as _, Oaep, PrivateKey};

use super::*;

const PASSWORD: &[u8] = b"mysql8-Secret-longer-than-the-scramble";
const SCRAMBLE: &[u8] = b"AbCdEfGhIjKlMnOpQrSt\0";

/// Runs the gateway's side over a pipe while `server` plays the other end.
async fn exchange<F, Fut>(pinned: Option<&[u8]>, server: F) -> Result<(), MyError>
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (mut gateway, fake) = tokio::io::duplex(1 << 16);
    let fake = tokio::spawn(server(fake));
    let result = rsa_full_auth(&mut gateway, 3, 1 << 20, PASSWORD, SCRAMBLE, pinned).await;
    drop(gateway);
    fake.await.unwrap();
    result
}

#[tokio::test]
async fn the_password_reaches_the_server_encrypted_to_its_key_xor_the_scramble() {
    let key = PrivateKey::new(&mut rand::rng(), 1024).unwrap();
    let pem = key
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    exchange(None, move |mut fake| async move {
        let request = read_packet(&mut fake, 1 << 20).await.unwrap().unwrap();
        assert_eq!((request.seq, request.body.as_slice()), (3, &[0x02][..]));
        let mut body = vec![0x01];
        body.extend_from_slice(pem.as_bytes());
        write_packet(&mut fake, 4, &body).await.unwrap();
        let sealed = read_packet(&mut fake, 1 << 20).await.unwrap().unwrap();
        tx.send((sealed.seq, sealed.body)).unwrap();
    })
    .await
    .unwrap();
    let (seq, sealed) = rx.await.unwrap();
    assert_eq!(seq, 5);
    assert!(
        !bytes_contain(&sealed, PASSWORD),
        "the password went in clear"
    );
    let mut expected = PASSWORD.to_vec();
    expected.push(0);
    assert_eq!(unseal(&key, &sealed), expected);
}

/// Decrypts `sealed` with `key` and undoes the XOR with the scramble.
fn unseal(key: &PrivateKey, sealed: &[u8]) -> Vec<u8> {
    let mut clear = key.decrypt(Oaep::<sha1::Sha1>::new(), sealed).unwrap();
    for (i, b) in clear.iter_mut().enumerate() {
        *b ^= SCRAMBLE[i % 20];
    }
    clear
}

#[tokio::test]
async fn with_a_pinned_key_the_password_goes_to_it_without_asking_the_server() {
    let pinned = PrivateKey::new(&mut rand::rng(), 1024).unwrap();
    let pem = pinned
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    exchange(Some(pem.as_bytes()), move |mut fake| async move {
        // The first packet is already the password: no key request a path could answer.
        let sealed = read_packet(&mut fake, 1 << 20).await.unwrap().unwrap();
        tx.send((sealed.seq, sealed.body)).unwrap();
    })
    .await
    .unwrap();
    let (seq, sealed) = rx.await.unwrap();
    assert_eq!(seq, 3);
    let mut expected = PASSWORD.to_vec();
    expected.push(0);
    assert_eq!(unseal(&pinned, &sealed), expected);
}

#[tokio::test]
async fn a_server_that_sends_no_key_ends_the_login_and_gets_no_password() {
    // An ERR in place of the key.
    let e = exchange(None, |mut fake| async move {
        read_packet(&mut fake, 1 << 20).await.unwrap().unwrap();
        let err = codec::err_body(1045, "28000", "Access denied");
        write_packet(&mut fake, 4, &err).await.unwrap();
        assert!(read_packet(&mut fake, 1 << 20).await.unwrap().is_none());
    })
    .await
    .unwrap_err();
    assert!(matches!(e, MyError::UpstreamAuth(_)), "{e}");
    // A packet that is not a key.
    let e = exchange(None, |mut fake| async move {
        read_packet(&mut fake, 1 << 20).await.unwrap().unwrap();
        write_packet(&mut fake, 4, b"\x00\x00\x00\x02\x00\x00\x00")
            .await
            .unwrap();
        assert!(read_packet(&mut fake, 1 << 20).await.unwrap().is_none());
    })
    .await
    .unwrap_err();
    assert!(matches!(e, MyError::Server(_)), "{e}");
    // A key packet that holds no key.
    let e = exchange(None, |mut fake| async move {
        read_packet(&mut fake, 1 << 20).await.unwrap().unwrap();
        write_packet(
            &mut fake,
            4,
            b"\x01-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .await
        .unwrap();
        assert!(read_packet(&mut fake, 1 << 20).await.unwrap().is_none());
    })
    .await
    .unwrap_err();
    assert!(matches!(e, MyError::UpstreamPlugin(_)), "{e}");
    assert!(!e.to_string().contains("mysql8-Secret"), "{e}");
}

fn bytes_contain(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn every_plugin_answer_is_what_its_server_side_checks() {
    let salt20 = b"01234567890123456789";
    assert_eq!(
        scramble(handshake::NATIVE_PASSWORD, b"pw", salt20, false).unwrap(),
        handshake::native_scramble(b"pw", salt20)
    );
    // client_ed25519 answers 64 bytes to a 32-byte nonce, ending in 0 or not.
    let mut nonce = [9u8; 32];
    nonce[31] = 0;
    assert_eq!(
        scramble(auth::ED25519, b"pw", &nonce, false).unwrap().len(),
        64
    );
    // …and refuses anything else rather than guess.
    assert!(matches!(
        scramble(auth::ED25519, b"pw", salt20, false),
        Err(MyError::UpstreamPlugin(_))
    ));
    // The clear password goes only over TLS; unknown plugins are refused.
    assert!(scramble(handshake::CLEAR_PASSWORD, b"pw", salt20, false).is_err());
    assert_eq!(
        scramble(handshake::CLEAR_PASSWORD, b"pw", salt20, true).unwrap(),
        b"pw\0"
    );
    assert!(matches!(
        scramble("dialog", b"pw", salt20, true),
        Err(MyError::Unsupported(_))
    ));
}
