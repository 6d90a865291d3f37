//! PostgreSQL v3 framing and the few message bodies the gateway reads or writes.
//!
//! Every message after start-up is `tag:u8, length:i32 (including itself), body`; start-up
//! packets have no tag. Framing is strict: a length below the minimum (4 for a tagged message,
//! 8 for a start-up packet) or above the configured maximum is a [`FrameError`], which ends
//! that session only. Bodies are parsed lazily and only for the
//! messages the gateway acts on; everything else is relayed byte for byte.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Start-up request codes (the "protocol version" field of untagged packets).
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
pub const PROTOCOL_V3: i32 = 196_608;

/// The shortest start-up packet: a length word and a request code (SSLRequest is exactly this).
pub const MIN_STARTUP_LEN: i64 = 8;
/// The longest start-up packet PostgreSQL accepts (`MAX_STARTUP_PACKET_LENGTH`); the gateway
/// accepts no more, whatever `max_message_bytes` says.
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    #[error("message length {0} is below the minimum of 4 (the length word itself)")]
    TooShort(i64),
    /// A start-up packet (untagged) must hold its length word and a 4-byte request code.
    #[error(
        "start-up packet length {0} is below the minimum of {min} (the length word and a \
         4-byte request code)",
        min = MIN_STARTUP_LEN
    )]
    StartupTooShort(i64),
    #[error("message length {len} exceeds the maximum of {max} bytes")]
    TooLong { len: i64, max: usize },
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("malformed {what} message: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
    #[error("unsupported start-up request {0}")]
    UnknownStartup(i32),
}

/// One tagged message: its tag and the body after the length word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

impl Message {
    /// The message as it travels on the wire.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.tag);
        out.put_i32(self.body.len() as i32 + 4);
        out.put_slice(&self.body);
    }
}

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        key: i32,
    },
    /// Protocol 3.x start-up parameters, in the client's order.
    Params(Vec<(String, String)>),
}

/// Reads the untagged start-up packet. EOF before any byte gives `Ok(None)`.
pub async fn read_startup(
    reader: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Option<Startup>, FrameError> {
    let mut len_buf = [0u8; 4];
    match reader.read(&mut len_buf[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(_) => return Err(FrameError::Truncated),
    }
    reader
        .read_exact(&mut len_buf[1..])
        .await
        .map_err(|_| FrameError::Truncated)?;
    let len = i64::from(i32::from_be_bytes(len_buf));
    if len < MIN_STARTUP_LEN {
        return Err(FrameError::StartupTooShort(len));
    }
    let limit = max.min(MAX_STARTUP_LEN);
    if len as u64 > limit as u64 {
        return Err(FrameError::TooLong { len, max: limit });
    }
    let mut body = vec![0u8; len as usize - 4];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|_| FrameError::Truncated)?;
    parse_startup(&body).map(Some)
}

pub fn parse_startup(body: &[u8]) -> Result<Startup, FrameError> {
    let mut b = body;
    if b.len() < 4 {
        return Err(FrameError::Truncated);
    }
    let code = b.get_i32();
    match code {
        SSL_REQUEST => Ok(Startup::SslRequest),
        GSSENC_REQUEST => Ok(Startup::GssEncRequest),
        CANCEL_REQUEST => {
            if b.len() < 8 {
                return Err(FrameError::Malformed {
                    what: "CancelRequest",
                    why: "too short",
                });
            }
            Ok(Startup::Cancel {
                pid: b.get_i32(),
                key: b.get_i32(),
            })
        }
        v if v >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let name = read_cstr(&mut b, "StartupMessage")?;
                if name.is_empty() {
                    break;
                }
                let value = read_cstr(&mut b, "StartupMessage")?;
                params.push((name, value));
            }
            Ok(Startup::Params(params))
        }
        other => Err(FrameError::UnknownStartup(other)),
    }
}

pub fn encode_startup(params: &[(String, String)], out: &mut BytesMut) {
    let mut body = BytesMut::new();
    body.put_i32(PROTOCOL_V3);
    for (k, v) in params {
        put_cstr(&mut body, k);
        put_cstr(&mut body, v);
    }
    body.put_u8(0);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
}

pub fn encode_untagged_code(code: i32, out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(code);
}

pub fn encode_cancel(pid: i32, key: i32, out: &mut BytesMut) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(key);
}

/// Splits complete tagged messages off the front of `buf`, enforcing `max` on each.
/// Returns `Ok(None)` when more bytes are needed.
pub fn split_message(buf: &mut BytesMut, max: usize) -> Result<Option<Message>, FrameError> {
    match frame_len(buf, max)? {
        None => Ok(None),
        Some(total) => {
            let mut frame = buf.split_to(total);
            let tag = frame.get_u8();
            frame.advance(4);
            Ok(Some(Message {
                tag,
                body: frame.freeze(),
            }))
        }
    }
}

/// The total size (tag + length + body) of the message at the front of `buf`, if complete.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i64::from(i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]));
    if len < 4 {
        return Err(FrameError::TooShort(len));
    }
    if len as u64 > max as u64 {
        return Err(FrameError::TooLong { len, max });
    }
    let total = len as usize + 1;
    Ok((buf.len() >= total).then_some(total))
}

/// The whole size of the message `buf` starts with, once its header is in (validated by
/// [`frame_len`] before).
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(1..5)?;
    let len = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    usize::try_from(len).ok().map(|l| l + 1)
}

/// Reads one whole tagged message (used during start-up, where traffic is small).
pub async fn read_message(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    max: usize,
) -> Result<Message, FrameError> {
    loop {
        if let Some(m) = split_message(buf, max)? {
            return Ok(m);
        }
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(FrameError::Truncated),
            Ok(_) => {}
        }
    }
}

fn read_cstr(b: &mut &[u8], what: &'static str) -> Result<String, FrameError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(FrameError::Malformed {
            what,
            why: "string without terminator",
        })?;
    // Strictly UTF-8: the session's client_encoding is pinned to UTF8 (see `reading`), so
    // anything else is text the server would refuse, or read differently than a lossy
    // decoding here would (two names differing only in invalid bytes must never collide).
    let s = std::str::from_utf8(&b[..end])
        .map_err(|_| FrameError::Malformed {
            what,
            why: "text is not valid UTF-8 (the session's client_encoding is UTF8)",
        })?
        .to_owned();
    b.advance(end + 1);
    Ok(s)
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Body readers for the client messages the gateway acts on.
pub mod frontend {
    use super::*;

    /// 'Q': the query string.
    pub fn query(body: &[u8]) -> Result<String, FrameError> {
        read_cstr(&mut &body[..], "Query")
    }

    /// 'P': statement name, query string, number of parameter types declared.
    pub fn parse(body: &[u8]) -> Result<(String, String, usize), FrameError> {
        let mut b = body;
        let name = read_cstr(&mut b, "Parse")?;
        let query = read_cstr(&mut b, "Parse")?;
        if b.len() < 2 {
            return Err(FrameError::Malformed {
                what: "Parse",
                why: "missing parameter count",
            });
        }
        Ok((name, query, b.get_i16().max(0) as usize))
    }

    /// 'B': portal name, statement name, number of parameter values.
    pub fn bind(body: &[u8]) -> Result<(String, String, usize), FrameError> {
        let mut b = body;
        let portal = read_cstr(&mut b, "Bind")?;
        let statement = read_cstr(&mut b, "Bind")?;
        let malformed = FrameError::Malformed {
            what: "Bind",
            why: "truncated",
        };
        if b.len() < 2 {
            return Err(malformed);
        }
        let formats = b.get_i16().max(0) as usize;
        if b.len() < formats * 2 + 2 {
            return Err(malformed);
        }
        b.advance(formats * 2);
        Ok((portal, statement, b.get_i16().max(0) as usize))
    }

    /// 'E': portal name.
    pub fn execute(body: &[u8]) -> Result<String, FrameError> {
        read_cstr(&mut &body[..], "Execute")
    }

    /// 'C' (Close): 'S' or 'P', and the name.
    pub fn close(body: &[u8]) -> Result<(u8, String), FrameError> {
        let mut b = body;
        if b.is_empty() {
            return Err(FrameError::Malformed {
                what: "Close",
                why: "empty",
            });
        }
        let which = b.get_u8();
        Ok((which, read_cstr(&mut b, "Close")?))
    }

    /// 'F': the function's object id.
    pub fn function_call(body: &[u8]) -> Result<u32, FrameError> {
        if body.len() < 4 {
            return Err(FrameError::Malformed {
                what: "FunctionCall",
                why: "too short",
            });
        }
        Ok(u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
    }

    /// 'p': a password (or SASL) response, as raw bytes.
    pub fn password(body: &[u8]) -> Result<String, FrameError> {
        read_cstr(&mut &body[..], "PasswordMessage")
    }

    /// 'D' (Describe): 'S' (statement) or 'P' (portal), and the name.
    pub fn describe(body: &[u8]) -> Result<(u8, String), FrameError> {
        let mut b = body;
        if b.is_empty() {
            return Err(FrameError::Malformed {
                what: "Describe",
                why: "empty",
            });
        }
        let kind = b.get_u8();
        Ok((kind, read_cstr(&mut b, "Describe")?))
    }

    /// 'B': the result-column format codes (0 text, 1 binary), after the parameter values.
    pub fn bind_result_formats(body: &[u8]) -> Result<Vec<i16>, FrameError> {
        let malformed = FrameError::Malformed {
            what: "Bind",
            why: "truncated",
        };
        let mut b = body;
        read_cstr(&mut b, "Bind")?;
        read_cstr(&mut b, "Bind")?;
        let take_i16 = |b: &mut &[u8]| {
            if b.len() < 2 {
                return Err(malformed.clone());
            }
            Ok(b.get_i16())
        };
        let formats = take_i16(&mut b)?.max(0) as usize;
        if b.len() < formats * 2 {
            return Err(malformed);
        }
        b.advance(formats * 2);
        let params = take_i16(&mut b)?.max(0);
        for _ in 0..params {
            if b.len() < 4 {
                return Err(malformed);
            }
            let len = b.get_i32();
            if len > 0 {
                let len = len as usize;
                if b.len() < len {
                    return Err(malformed);
                }
                b.advance(len);
            }
        }
        let results = take_i16(&mut b)?.max(0) as usize;
        if b.len() < results * 2 {
            return Err(malformed);
        }
        Ok((0..results).map(|_| b.get_i16()).collect())
    }
}

/// Body readers and builders for server messages.
pub mod backend {
    use super::*;

    /// 'C': the command tag.
    pub fn command_complete(body: &[u8]) -> String {
        read_cstr(&mut &body[..], "CommandComplete").unwrap_or_default()
    }

    /// 'E' / 'N' fields: (SQLSTATE, message).
    pub fn error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
        let mut b = body;
        let (mut code, mut message) = (None, None);
        while let Some((&field, rest)) = b.split_first() {
            if field == 0 {
                break;
            }
            b = rest;
            let Ok(value) = read_cstr(&mut b, "ErrorResponse") else {
                break;
            };
            match field {
                b'C' => code = Some(value),
                b'M' => message = Some(value),
                _ => {}
            }
        }
        (code, message)
    }

    /// 'R': the authentication request code and the rest of the body.
    pub fn auth_request(body: &[u8]) -> Result<(i32, &[u8]), FrameError> {
        if body.len() < 4 {
            return Err(FrameError::Malformed {
                what: "Authentication",
                why: "too short",
            });
        }
        Ok((
            i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            &body[4..],
        ))
    }

    /// 'K': (pid, secret key).
    pub fn backend_key(body: &[u8]) -> Result<(i32, i32), FrameError> {
        if body.len() < 8 {
            return Err(FrameError::Malformed {
                what: "BackendKeyData",
                why: "too short",
            });
        }
        Ok((
            i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        ))
    }

    pub fn message(tag: u8, build: impl FnOnce(&mut BytesMut)) -> Message {
        let mut body = BytesMut::new();
        build(&mut body);
        Message {
            tag,
            body: body.freeze(),
        }
    }

    /// An ErrorResponse ('E') or NoticeResponse ('N') with the usual fields.
    pub fn error(tag: u8, severity: &str, sqlstate: &str, text: &str) -> Message {
        message(tag, |b| {
            for (field, value) in [
                (b'S', severity),
                (b'V', severity),
                (b'C', sqlstate),
                (b'M', text),
            ] {
                b.put_u8(field);
                put_cstr(b, value);
            }
            b.put_u8(0);
        })
    }

    pub fn auth_ok() -> Message {
        message(b'R', |b| b.put_i32(0))
    }

    pub fn auth_cleartext() -> Message {
        message(b'R', |b| b.put_i32(3))
    }

    pub fn backend_key_data(pid: i32, key: i32) -> Message {
        message(b'K', |b| {
            b.put_i32(pid);
            b.put_i32(key);
        })
    }

    /// 'R' AuthenticationSASL with the mechanisms in `list` (each NUL-terminated, then NUL).
    pub fn auth_sasl(mechanisms: &[&str]) -> Message {
        message(b'R', |b| {
            b.put_i32(10);
            for m in mechanisms {
                put_cstr(b, m);
            }
            b.put_u8(0);
        })
    }

    /// Mechanisms offered in an AuthenticationSASL body (after the code).
    pub fn sasl_mechanisms(rest: &[u8]) -> Vec<String> {
        rest.split(|&c| c == 0)
            .filter(|m| !m.is_empty())
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect()
    }

    /// One field of a RowDescription.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Field {
        pub name: String,
        /// The source table's OID, 0 when the value is computed.
        pub table: u32,
        /// The source column's attribute number within that table.
        pub attnum: i16,
        pub type_oid: u32,
        /// 0 text, 1 binary (always 0 in the answer to a Describe of a statement).
        pub format: i16,
    }

    /// 'T': the fields of a result.
    pub fn row_description(body: &[u8]) -> Result<Vec<Field>, FrameError> {
        let malformed = FrameError::Malformed {
            what: "RowDescription",
            why: "truncated",
        };
        let mut b = body;
        if b.len() < 2 {
            return Err(malformed);
        }
        let n = b.get_i16().max(0) as usize;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            let name = read_cstr(&mut b, "RowDescription")?;
            if b.len() < 18 {
                return Err(malformed);
            }
            let table = b.get_u32();
            let attnum = b.get_i16();
            let type_oid = b.get_u32();
            b.advance(2 + 4); // type size, type modifier
            let format = b.get_i16();
            fields.push(Field {
                name,
                table,
                attnum,
                type_oid,
                format,
            });
        }
        Ok(fields)
    }

    /// 'D': the values of a row (`None` is NULL), as slices of `body`.
    pub fn data_row(
        body: &[u8],
        out: &mut Vec<Option<std::ops::Range<usize>>>,
    ) -> Result<(), FrameError> {
        let malformed = FrameError::Malformed {
            what: "DataRow",
            why: "value lengths do not add up",
        };
        out.clear();
        let Some(count) = body.get(..2) else {
            return Err(malformed);
        };
        let count = i16::from_be_bytes([count[0], count[1]]).max(0) as usize;
        let mut at = 2;
        for _ in 0..count {
            let len = body
                .get(at..at + 4)
                .map(|l| i32::from_be_bytes([l[0], l[1], l[2], l[3]]))
                .ok_or(malformed.clone())?;
            at += 4;
            if len < 0 {
                out.push(None);
                continue;
            }
            let end = at + len as usize;
            if end > body.len() {
                return Err(malformed);
            }
            out.push(Some(at..end));
            at = end;
        }
        if at != body.len() {
            return Err(malformed);
        }
        Ok(())
    }

    /// 'H' (CopyOutResponse): the overall format, 0 text or 1 binary.
    pub fn copy_out_format(body: &[u8]) -> i8 {
        body.first().map(|b| *b as i8).unwrap_or(0)
    }

    /// 'E'/'N': every field as (code, text), in order.
    pub fn notice_fields(body: &[u8]) -> Vec<(u8, String)> {
        let mut b = body;
        let mut fields = Vec::new();
        while let Some((&code, rest)) = b.split_first() {
            if code == 0 {
                break;
            }
            b = rest;
            match read_cstr(&mut b, "ErrorResponse") {
                Ok(text) => fields.push((code, text)),
                Err(_) => break,
            }
        }
        fields
    }

    /// 'A' (NotificationResponse): the notifying backend's pid, the channel and the payload,
    /// as raw bytes (the channel must reach the client exactly as the server sent it).
    pub fn notification(body: &[u8]) -> Result<(i32, &[u8], &[u8]), FrameError> {
        let bad = |why| FrameError::Malformed {
            what: "NotificationResponse",
            why,
        };
        let (pid, rest) = body.split_first_chunk::<4>().ok_or(bad("too short"))?;
        let mut parts = rest.splitn(3, |&b| b == 0);
        let (Some(channel), Some(payload), Some(b"")) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected two terminated strings"));
        };
        Ok((i32::from_be_bytes(*pid), channel, payload))
    }

    /// An 'A' message.
    pub fn notification_message(pid: i32, channel: &[u8], payload: &[u8]) -> Message {
        message(b'A', |b| {
            b.put_i32(pid);
            b.put_slice(channel);
            b.put_u8(0);
            b.put_slice(payload);
            b.put_u8(0);
        })
    }

    /// An 'E'/'N' message from fields.
    pub fn notice_from_fields(tag: u8, fields: &[(u8, String)]) -> Message {
        message(tag, |b| {
            for (code, text) in fields {
                b.put_u8(*code);
                put_cstr(b, text);
            }
            b.put_u8(0);
        })
    }
}

#[cfg(test)]
mod tests;
