//! The gateway's answers to the server's authentication plugins that need more than a hash:
//! MariaDB's `client_ed25519` and the RSA key exchange of `caching_sha2_password`.
//!
//! Why this exists: the gateway logs in upstream with the target's credentials, so it must
//! answer whatever plugin the account is created with. The password scrambles that are only
//! hashes live in [`super::handshake`] (the gateway needs them on the agent's leg too); the
//! signatures and encryptions here are used only toward the server, by [`super::startup`].
//! Nothing here does I/O, and no error carries the password or anything derived from it.

use ed25519_dalek::{
    hazmat::{raw_sign, ExpandedSecretKey},
    VerifyingKey,
};
use rsa::{pkcs1::DecodeRsaPublicKey as _, pkcs8::DecodePublicKey as _, Oaep, PublicKey};
use sha2::{Digest as _, Sha512};

/// MariaDB's Ed25519 authentication plugin, as the client names it.
pub const ED25519: &str = "client_ed25519";

/// The length of `client_ed25519`'s challenge (MariaDB's `NONCE_BYTES`).
const ED25519_NONCE: usize = 32;

/// How many bytes of the scramble `caching_sha2_password` XORs the password with
/// (`SCRAMBLE_LENGTH`).
const SCRAMBLE_LENGTH: usize = 20;

/// Why the gateway cannot answer a plugin's challenge. The session ends; no variant carries
/// the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The server's challenge is not what the plugin defines.
    #[error("{plugin}: the server's challenge is {got} bytes, not {expected}")]
    Challenge {
        plugin: &'static str,
        expected: usize,
        got: usize,
    },
    /// The public key the server sent cannot be read as an RSA key.
    #[error("caching_sha2_password: the server's public key is unusable: {0}")]
    PublicKey(String),
    /// The configured key file (`server_public_key_file`) cannot be read.
    #[error("{path}: {error}")]
    KeyFile { path: String, error: String },
    /// The password (with its NUL) does not fit one OAEP block of the server's key.
    #[error("caching_sha2_password: RSA encryption failed: {0}")]
    Encrypt(String),
}

/// `client_ed25519`: the Ed25519 signature of the server's 32-byte nonce.
///
/// MariaDB does not derive the key from a 32-byte seed as RFC 8032 does: the SHA-512 of the
/// password bytes *is* the expanded secret key (clamped scalar, then the nonce prefix), and
/// the server stores the matching public key (`authentication_string`, base64). So the
/// hazmat API is the one that fits; the signature itself is standard Ed25519 over the nonce.
pub fn ed25519_signature(password: &[u8], nonce: &[u8]) -> Result<[u8; 64], AuthError> {
    if nonce.len() != ED25519_NONCE {
        return Err(AuthError::Challenge {
            plugin: ED25519,
            expected: ED25519_NONCE,
            got: nonce.len(),
        });
    }
    let key = ed25519_key(password);
    let public = VerifyingKey::from(&key);
    Ok(raw_sign::<Sha512>(&key, nonce, &public).to_bytes())
}

/// The public key MariaDB stores for `password` (`IDENTIFIED VIA ed25519 USING
/// PASSWORD(...)`), as bytes. Used by tests and to explain a failed login.
pub fn ed25519_public_key(password: &[u8]) -> [u8; 32] {
    VerifyingKey::from(&ed25519_key(password)).to_bytes()
}

/// The expanded secret key: SHA-512 of the password, as MariaDB's `crypto_sign` takes it.
/// `ExpandedSecretKey` wipes itself when dropped.
fn ed25519_key(password: &[u8]) -> ExpandedSecretKey {
    let mut expanded = [0u8; 64];
    expanded.copy_from_slice(&Sha512::digest(password));
    let key = ExpandedSecretKey::from_bytes(&expanded);
    expanded.fill(0);
    key
}

/// `caching_sha2_password` full authentication without TLS: the password and a NUL, XORed
/// with the first 20 bytes of the scramble (repeating), encrypted to the server's RSA public
/// key with OAEP (SHA-1, MGF1 with SHA-1), as MySQL's own clients send it.
///
/// `pem` is the key as the server sent it (`BEGIN PUBLIC KEY`, or PKCS#1's `BEGIN RSA PUBLIC
/// KEY`). Whoever sits on the path can hand the gateway a key of their own here: the caller
/// decides when this exchange is acceptable.
pub fn rsa_encrypted_password(
    pem: &[u8],
    password: &[u8],
    scramble: &[u8],
) -> Result<Vec<u8>, AuthError> {
    let key = rsa_public_key(pem)?;
    let scramble = scramble.get(..SCRAMBLE_LENGTH).unwrap_or(scramble);
    if scramble.is_empty() {
        return Err(AuthError::Challenge {
            plugin: super::handshake::CACHING_SHA2,
            expected: SCRAMBLE_LENGTH,
            got: 0,
        });
    }
    let mut clear = Vec::with_capacity(password.len() + 1);
    clear.extend_from_slice(password);
    clear.push(0);
    for (i, b) in clear.iter_mut().enumerate() {
        *b ^= scramble[i % scramble.len()];
    }
    let sealed = key.encrypt(&mut rand::rng(), Oaep::<sha1::Sha1>::new(), &clear);
    clear.fill(0);
    // The crate's errors name sizes and causes, never the message.
    sealed.map_err(|e| AuthError::Encrypt(e.to_string()))
}

/// Reads a configured server key (`[target.credentials] server_public_key_file`) and checks
/// that it is an RSA public key; returns its PEM text. `config` checks it at start-up, and
/// each login reads it again, as it reads the password.
pub fn read_public_key(path: &std::path::Path) -> Result<Vec<u8>, AuthError> {
    let pem = std::fs::read(path).map_err(|e| AuthError::KeyFile {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    rsa_public_key(&pem).map_err(|e| AuthError::KeyFile {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    Ok(pem)
}

/// Reads the server's PEM public key (SubjectPublicKeyInfo, or PKCS#1).
fn rsa_public_key(pem: &[u8]) -> Result<PublicKey, AuthError> {
    let text = std::str::from_utf8(pem)
        .map_err(|_| AuthError::PublicKey("not text".to_owned()))?
        .trim_matches(|c: char| c == '\0' || c.is_whitespace());
    PublicKey::from_public_key_pem(text).or_else(|spki| {
        PublicKey::from_pkcs1_pem(text).map_err(|pkcs1| {
            AuthError::PublicKey(format!("not a PEM public key ({spki}; {pkcs1})"))
        })
    })
}

#[cfg(test)]
mod tests;
