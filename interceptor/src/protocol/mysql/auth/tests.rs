use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier as _};
use rsa::{pkcs1::EncodeRsaPublicKey as _, pkcs8::EncodePublicKey as _, PrivateKey};

use super::*;

/// What MariaDB 10.11 stored for `CREATE USER e1 IDENTIFIED VIA ed25519 USING
/// PASSWORD('ed25519-Secret-3f1a')` (`mysql.global_priv`, `$.authentication_string`): the
/// base64 public key, obtained once from a real server.
const MARIADB_PASSWORD: &str = "ed25519-Secret-3f1a";
const MARIADB_PUBLIC_KEY: &str = "Z6pWwyUsc0fjJGEYBWmakAKWbUYYPEmQBKoUtHxggcc";

#[test]
fn the_ed25519_key_is_the_one_mariadb_stores_for_the_password() {
    let stored = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(MARIADB_PUBLIC_KEY)
        .unwrap();
    assert_eq!(
        ed25519_public_key(MARIADB_PASSWORD.as_bytes()).as_slice(),
        stored
    );
}

#[test]
fn the_ed25519_answer_verifies_under_the_stored_key_and_only_for_its_nonce() {
    let stored: [u8; 32] = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(MARIADB_PUBLIC_KEY)
        .unwrap()
        .try_into()
        .unwrap();
    let server_key = VerifyingKey::from_bytes(&stored).unwrap();
    let nonce = [7u8; 32];
    let sig = ed25519_signature(MARIADB_PASSWORD.as_bytes(), &nonce).unwrap();
    let sig = Signature::from_bytes(&sig);
    assert!(server_key.verify_strict(&nonce, &sig).is_ok());
    assert!(server_key.verify(&[8u8; 32], &sig).is_err());
    // Another password's signature does not verify.
    let other = ed25519_signature(b"not-the-password", &nonce).unwrap();
    assert!(server_key
        .verify(&nonce, &Signature::from_bytes(&other))
        .is_err());
}

#[test]
fn an_ed25519_challenge_of_another_length_is_refused() {
    for n in [0, 20, 21, 31, 33] {
        let e = ed25519_signature(b"pw", &vec![1u8; n]).unwrap_err();
        assert!(matches!(e, AuthError::Challenge { got, .. } if got == n));
    }
}

/// A small key: generating one takes long in debug builds, and OAEP with SHA-1 fits
/// 1024 - 2 * 160 - 16 bits of message, plenty for these passwords.
fn test_key() -> PrivateKey {
    PrivateKey::new(&mut rand::rng(), 1024).unwrap()
}

fn unseal(key: &PrivateKey, sealed: &[u8], scramble: &[u8]) -> Vec<u8> {
    let mut clear = key.decrypt(Oaep::<sha1::Sha1>::new(), sealed).unwrap();
    for (i, b) in clear.iter_mut().enumerate() {
        *b ^= scramble[i % 20];
    }
    clear
}

#[test]
fn the_rsa_answer_is_the_password_xor_the_scramble_under_oaep_sha1() {
    let key = test_key();
    let public = key.to_public_key();
    let scramble = b"0123456789abcdefghij\0"; // as the greeting's salt, with a NUL after
    let password = b"a password longer than the twenty-byte scramble";
    let spki = public
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    // As the server sends it: PEM text, possibly NUL-terminated.
    let mut sent = spki.into_bytes();
    sent.push(0);
    let sealed = rsa_encrypted_password(&sent, password, scramble).unwrap();
    assert_eq!(sealed.len(), 128);
    let mut expected = password.to_vec();
    expected.push(0);
    assert_eq!(unseal(&key, &sealed, scramble), expected);
    // PKCS#1 PEM is read too.
    let pkcs1 = public.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let sealed = rsa_encrypted_password(pkcs1.as_bytes(), password, scramble).unwrap();
    assert_eq!(unseal(&key, &sealed, scramble), expected);
}

#[test]
fn an_unreadable_or_too_small_key_is_refused_without_naming_the_password() {
    let password = b"never-in-an-error-4d2e";
    let e =
        rsa_encrypted_password(b"-----BEGIN PUBLIC KEY-----\nnope\n", password, b"s").unwrap_err();
    assert!(matches!(e, AuthError::PublicKey(_)), "{e}");
    assert!(!e.to_string().contains("never-in-an-error"));
    let e = rsa_encrypted_password(&[0xff, 0xfe], password, b"s").unwrap_err();
    assert!(matches!(e, AuthError::PublicKey(_)), "{e}");
    // A password too long for one block of the key is an error, not a truncation.
    let key = test_key().to_public_key();
    let pem = key.to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let long = vec![b'x'; 200];
    let e = rsa_encrypted_password(pem.as_bytes(), &long, b"01234567890123456789").unwrap_err();
    assert!(matches!(e, AuthError::Encrypt(_)), "{e}");
    assert!(!e.to_string().contains("xxxx"));
}
