//! The connection phase's packets: the server's greeting (HandshakeV10), the client's answer
//! (HandshakeResponse41, or the short SSLRequest before TLS), and the password scrambles.
//!
//! Why this exists: the gateway plays both roles. Toward the agent it is the server (its own
//! greeting, salt and capabilities); toward the real server it is the client (the target's
//! credentials, scrambled with the server's salt). Both need the same packet layouts and the
//! same capability rules, kept here apart from the flow in [`super::startup`].

use super::codec::{put_lenenc_bytes, FrameError, Reader};

/// Capability flags (`CLIENT_*`).
pub mod caps {
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const ODBC: u32 = 1 << 6;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_DATA: u32 = 1 << 21;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;

    /// What the gateway can follow on both legs. Left out on purpose: COMPRESS (the relay
    /// reads plain packets), LOCAL_FILES (`LOAD DATA LOCAL` lets the server ask the client
    /// for any file), SESSION_TRACK and DEPRECATE_EOF (result sets always end with EOF
    /// packets, on both legs alike), CONNECT_ATTRS (the agent's attributes are not relayed),
    /// and SSL, which each leg negotiates for itself.
    pub const FOLLOWED: u32 = LONG_PASSWORD
        | FOUND_ROWS
        | LONG_FLAG
        | CONNECT_WITH_DB
        | NO_SCHEMA
        | ODBC
        | IGNORE_SPACE
        | PROTOCOL_41
        | INTERACTIVE
        | TRANSACTIONS
        | SECURE_CONNECTION
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | PLUGIN_AUTH
        | PLUGIN_AUTH_LENENC_DATA;
}

pub const NATIVE_PASSWORD: &str = "mysql_native_password";
pub const CACHING_SHA2: &str = "caching_sha2_password";
pub const CLEAR_PASSWORD: &str = "mysql_clear_password";

/// The collation the gateway announces: utf8mb4_general_ci.
pub const GATEWAY_COLLATION: u8 = 45;

/// The charset of a handshake collation id, for the charsets the gateway reads exactly
/// (`policy::mysql::READABLE_CHARSETS`); `None` for every other one.
pub fn readable_collation(id: u8) -> Option<&'static str> {
    match id {
        5 | 8 | 15 | 31 | 47 | 48 | 49 | 94 => Some("latin1"),
        11 | 65 => Some("ascii"),
        33 | 83 | 192..=215 | 223 => Some("utf8mb3"),
        45 | 46 | 224..=247 | 255 => Some("utf8mb4"),
        _ => None,
    }
}

/// The server's greeting (HandshakeV10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub version: String,
    pub connection_id: u32,
    /// The 20-byte salt (both parts, without the trailing NUL).
    pub salt: Vec<u8>,
    pub capabilities: u32,
    pub collation: u8,
    pub status: u16,
    pub plugin: String,
}

impl Greeting {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96);
        b.push(10);
        b.extend_from_slice(self.version.as_bytes());
        b.push(0);
        b.extend_from_slice(&self.connection_id.to_le_bytes());
        let (first, second) = self.salt.split_at(self.salt.len().min(8));
        b.extend_from_slice(first);
        b.push(0);
        b.extend_from_slice(&(self.capabilities as u16).to_le_bytes());
        b.push(self.collation);
        b.extend_from_slice(&self.status.to_le_bytes());
        b.extend_from_slice(&((self.capabilities >> 16) as u16).to_le_bytes());
        b.push((self.salt.len() + 1) as u8);
        b.extend_from_slice(&[0u8; 10]);
        b.extend_from_slice(second);
        b.push(0);
        b.extend_from_slice(self.plugin.as_bytes());
        b.push(0);
        b
    }

    pub fn parse(body: &[u8]) -> Result<Greeting, FrameError> {
        let mut r = Reader::new(body, "server greeting");
        if r.u8()? != 10 {
            return Err(FrameError::Malformed {
                what: "server greeting",
                why: "not protocol version 10",
            });
        }
        let version = String::from_utf8_lossy(r.nul_bytes()?).into_owned();
        let connection_id = r.u32()?;
        let mut salt = r.take(8)?.to_vec();
        r.u8()?;
        let low = r.u16()?;
        let collation = r.u8()?;
        let status = r.u16()?;
        let high = r.u16()?;
        let capabilities = u32::from(low) | u32::from(high) << 16;
        let salt_len = r.u8()?;
        r.take(10)?;
        if capabilities & caps::SECURE_CONNECTION != 0 {
            let n = usize::from(salt_len).saturating_sub(9).max(12);
            salt.extend_from_slice(r.take(n)?);
            // The second part is NUL-terminated.
            if r.u8()? != 0 {
                return Err(FrameError::Malformed {
                    what: "server greeting",
                    why: "salt not terminated",
                });
            }
        }
        let plugin = if capabilities & caps::PLUGIN_AUTH != 0 && !r.is_empty() {
            let rest = r.rest();
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        } else {
            NATIVE_PASSWORD.to_owned()
        };
        Ok(Greeting {
            version,
            connection_id,
            salt,
            capabilities,
            collation,
            status,
            plugin,
        })
    }
}

/// The client's answer to the greeting (HandshakeResponse41), or its SSLRequest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub capabilities: u32,
    pub max_packet: u32,
    pub collation: u8,
    pub user: String,
    pub auth: Vec<u8>,
    pub database: Option<String>,
    pub plugin: Option<String>,
}

impl Response {
    /// True for the 32-byte SSLRequest that precedes the TLS handshake.
    pub fn is_ssl_request(body: &[u8]) -> bool {
        body.len() == 32
            && u32::from_le_bytes([body[0], body[1], body[2], body[3]]) & caps::SSL != 0
    }

    pub fn parse(body: &[u8]) -> Result<Response, FrameError> {
        let mut r = Reader::new(body, "handshake response");
        let capabilities = r.u32()?;
        if capabilities & caps::PROTOCOL_41 == 0 {
            return Err(FrameError::Malformed {
                what: "handshake response",
                why: "the client does not speak protocol 4.1",
            });
        }
        let max_packet = r.u32()?;
        let collation = r.u8()?;
        r.take(23)?;
        let user = String::from_utf8_lossy(r.nul_bytes()?).into_owned();
        let auth = if capabilities & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
            r.lenenc_bytes()?.to_vec()
        } else if capabilities & caps::SECURE_CONNECTION != 0 {
            let n = usize::from(r.u8()?);
            r.take(n)?.to_vec()
        } else {
            r.nul_bytes()?.to_vec()
        };
        let database = if capabilities & caps::CONNECT_WITH_DB != 0 && !r.is_empty() {
            Some(String::from_utf8_lossy(r.nul_bytes()?).into_owned())
        } else {
            None
        };
        let plugin = if capabilities & caps::PLUGIN_AUTH != 0 && !r.is_empty() {
            Some(String::from_utf8_lossy(r.nul_bytes()?).into_owned())
        } else {
            None
        };
        // Connection attributes, if any, are not relayed.
        Ok(Response {
            capabilities,
            max_packet,
            collation,
            user,
            auth,
            database: database.filter(|d| !d.is_empty()),
            plugin,
        })
    }

    /// The SSLRequest with these capabilities (which include SSL).
    pub fn encode_ssl_request(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&self.capabilities.to_le_bytes());
        b.extend_from_slice(&self.max_packet.to_le_bytes());
        b.push(self.collation);
        b.extend_from_slice(&[0u8; 23]);
        b
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.encode_ssl_request();
        b.extend_from_slice(self.user.as_bytes());
        b.push(0);
        put_lenenc_bytes(&mut b, &self.auth);
        if let Some(db) = &self.database {
            b.extend_from_slice(db.as_bytes());
            b.push(0);
        }
        if let Some(plugin) = &self.plugin {
            b.extend_from_slice(plugin.as_bytes());
            b.push(0);
        }
        b
    }
}

/// An AuthSwitchRequest: the plugin to use and its data (the salt).
pub fn auth_switch_body(plugin: &str, salt: &[u8]) -> Vec<u8> {
    let mut b = vec![0xFE];
    b.extend_from_slice(plugin.as_bytes());
    b.push(0);
    b.extend_from_slice(salt);
    b.push(0);
    b
}

/// Reads an AuthSwitchRequest: the plugin and its data, exactly as sent. The data's length
/// is the plugin's business: `mysql_native_password` sends its 20-byte salt and a NUL (the
/// scrambles read the first 20 bytes), `client_ed25519` a 32-byte nonce whose last byte may
/// well be 0, so no trailing NUL is dropped here.
pub fn parse_auth_switch(body: &[u8]) -> Result<(String, Vec<u8>), FrameError> {
    let mut r = Reader::new(body, "auth switch request");
    r.u8()?;
    let plugin = String::from_utf8_lossy(r.nul_bytes()?).into_owned();
    Ok((plugin, r.rest().to_vec()))
}

fn digest(algorithm: &'static ring::digest::Algorithm, parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(algorithm);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().to_vec()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// `mysql_native_password`: SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw))); empty for no password.
pub fn native_scramble(password: &[u8], salt: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let sha1 = &ring::digest::SHA1_FOR_LEGACY_USE_ONLY;
    let stage1 = digest(sha1, &[password]);
    let stage2 = digest(sha1, &[&stage1]);
    let salt = salt.get(..20).unwrap_or(salt);
    xor(&stage1, &digest(sha1, &[salt, &stage2]))
}

/// `caching_sha2_password` (fast path): SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + salt).
pub fn caching_sha2_scramble(password: &[u8], salt: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let sha256 = &ring::digest::SHA256;
    let stage1 = digest(sha256, &[password]);
    let stage2 = digest(sha256, &[&stage1]);
    let salt = salt.get(..20).unwrap_or(salt);
    xor(&stage1, &digest(sha256, &[&stage2, salt]))
}

/// A fresh 20-byte salt of printable bytes (some clients treat the salt as a C string).
pub fn new_salt() -> Result<Vec<u8>, ring::error::Unspecified> {
    use ring::rand::SecureRandom as _;
    let mut salt = [0u8; 20];
    ring::rand::SystemRandom::new().fill(&mut salt)?;
    Ok(salt.iter().map(|b| 0x21 + b % 94).collect())
}

#[cfg(test)]
mod tests;
