//! MySQL packets: framing (with a size limit) and the fields the gateway reads or builds.
//!
//! Why this exists: every phase of a MySQL session is packets of `3-byte length, 1-byte
//! sequence id, payload`, whose payloads use a handful of encodings (little-endian integers,
//! length-encoded integers and strings, NUL-terminated strings). They are read here once,
//! bounds-checked, so that no other module indexes into untrusted bytes.
//!
//! A payload of 16 MiB − 1 or more is split by MySQL into several packets (each full one
//! followed by the next, with the next sequence id; a payload that is an exact multiple ends
//! with an empty packet). [`read_packet`] joins them into one payload, bounded as a whole by
//! the target's limit, and [`put_packet`] splits a payload the same way. A rewritten payload
//! (masking) may then take another number of packets than it came in: the relay numbers the
//! packets it sends the agent itself.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::protocol::buffers::{BudgetError, Inflight};

/// The largest payload of one packet; a payload this long continues in the next packet.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// Error codes and SQLSTATEs the gateway sends.
pub const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;
pub const ER_OUT_OF_RESOURCES: u16 = 1041;
pub const ER_ACCESS_DENIED: u16 = 1045;
pub const ER_UNKNOWN_COM: u16 = 1047;
pub const ER_UNKNOWN_STMT_HANDLER: u16 = 1243;
pub const ER_HANDSHAKE: u16 = 1043;
pub const ER_CON_COUNT: u16 = 1040;
pub const ER_BAD_HOST: u16 = 1130;
pub const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
pub const ER_NET_PACKETS_OUT_OF_ORDER: u16 = 1156;
pub const ER_STMT_HAS_NO_OPEN_CURSOR: u16 = 1421;

/// Server status flags the relay follows.
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

/// A framing or field error: which side sent it is the caller's to say.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("packet of {size} bytes exceeds the limit of {max} ([target] max_message_bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("malformed {what}: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
}

/// One packet: its sequence id and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub seq: u8,
    pub body: Vec<u8>,
}

impl Packet {
    /// The first byte of the payload (0 for an empty one).
    pub fn tag(&self) -> u8 {
        self.body.first().copied().unwrap_or(0)
    }

    pub fn is_ok(&self) -> bool {
        self.tag() == 0x00
    }

    pub fn is_err(&self) -> bool {
        self.tag() == 0xFF
    }

    /// An EOF packet (never a row: rows starting with 0xFE are at least 9 bytes long).
    pub fn is_eof(&self) -> bool {
        self.tag() == 0xFE && self.body.len() < 9
    }

    /// How many packets this payload takes on the wire.
    pub fn parts(&self) -> usize {
        self.body.len() / MAX_PAYLOAD + 1
    }

    /// The sequence id that follows this payload's last packet.
    pub fn next_seq(&self) -> u8 {
        // Sequence ids wrap at 256 (a 4 GiB payload would wrap them more than once).
        self.seq.wrapping_add((self.parts() % 256) as u8)
    }
}

/// Why reading a packet failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The gateway's memory for large messages had no room for this payload in time.
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

/// Reads one payload, joining the packets it was split into; `max` bounds the whole payload.
/// `Ok(None)`: the peer closed the connection between payloads.
pub async fn read_packet(
    io: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Option<Packet>, ReadError> {
    read_reserved(io, max, None).await
}

/// [`read_packet`], reserving a large payload's room from the shared budget before its body
/// is read (the caller releases it once the payload is consumed). A payload split over
/// several packets announces no total, so it reserves `max`, the most it can take.
pub async fn read_reserved(
    io: &mut (impl AsyncRead + Unpin),
    max: usize,
    mut inflight: Option<&mut Inflight<'_>>,
) -> Result<Option<Packet>, ReadError> {
    let mut header = [0u8; 4];
    match io.read(&mut header[..1]).await? {
        0 => return Ok(None),
        _ => io.read_exact(&mut header[1..]).await?,
    };
    let seq = header[3];
    let mut expected = seq;
    let mut body = Vec::new();
    loop {
        let size =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        if header[3] != expected {
            return Err(FrameError::Malformed {
                what: "packet",
                why: "a continuation packet does not carry the next sequence id",
            }
            .into());
        }
        let total = body.len().saturating_add(size);
        if total > max {
            return Err(FrameError::TooLarge { size: total, max }.into());
        }
        if let Some(inflight) = inflight.as_deref_mut() {
            let announced = if size == MAX_PAYLOAD { max } else { total };
            inflight.reserve(announced).await?;
        }
        let start = body.len();
        body.resize(total, 0);
        io.read_exact(&mut body[start..]).await?;
        if size < MAX_PAYLOAD {
            return Ok(Some(Packet { seq, body }));
        }
        expected = expected.wrapping_add(1);
        io.read_exact(&mut header).await?;
    }
}

/// Appends a payload to `out` as the packets MySQL splits it into, numbered from `seq`.
pub fn put_packet(out: &mut Vec<u8>, seq: u8, body: &[u8]) {
    let mut seq = seq;
    for chunk in chunks(body) {
        out.extend_from_slice(&header(chunk.len(), seq));
        out.extend_from_slice(chunk);
        seq = seq.wrapping_add(1);
    }
}

/// The packets' payloads of `body`: full ones of [`MAX_PAYLOAD`] bytes, then a shorter last
/// one (empty when `body` is an exact multiple).
pub fn chunks(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let full = body.len() / MAX_PAYLOAD;
    (0..=full).map(move |i| {
        let start = i * MAX_PAYLOAD;
        &body[start..(start + MAX_PAYLOAD).min(body.len())]
    })
}

/// The 4-byte header of a packet with a payload of `len` (≤ [`MAX_PAYLOAD`]) bytes.
pub fn header(len: usize, seq: u8) -> [u8; 4] {
    [len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]
}

/// Writes one packet and flushes.
pub async fn write_packet(
    io: &mut (impl AsyncWrite + Unpin),
    seq: u8,
    body: &[u8],
) -> std::io::Result<usize> {
    let mut out = Vec::with_capacity(body.len() + 4);
    put_packet(&mut out, seq, body);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(out.len())
}

/// An ERR packet payload (protocol 4.1: with SQLSTATE).
pub fn err_body(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(9 + message.len());
    b.push(0xFF);
    b.extend_from_slice(&code.to_le_bytes());
    b.push(b'#');
    let state = sqlstate.as_bytes();
    b.extend((0..5).map(|i| state.get(i).copied().unwrap_or(b'0')));
    b.extend_from_slice(message.as_bytes());
    b
}

/// An OK packet payload with no rows affected.
pub fn ok_body(status: u16) -> Vec<u8> {
    let mut b = vec![0x00, 0x00, 0x00];
    b.extend_from_slice(&status.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b
}

/// What an ERR packet says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: u16,
    pub sqlstate: String,
    pub message: String,
}

/// Reads an ERR payload (with or without SQLSTATE).
pub fn parse_err(body: &[u8]) -> Result<ServerError, FrameError> {
    let mut r = Reader::new(body, "ERR packet");
    r.u8()?;
    let code = r.u16()?;
    let rest = r.rest();
    let (sqlstate, message) = match rest.split_first() {
        Some((b'#', tail)) if tail.len() >= 5 => {
            (String::from_utf8_lossy(&tail[..5]).into_owned(), &tail[5..])
        }
        _ => ("HY000".to_owned(), rest),
    };
    Ok(ServerError {
        code,
        sqlstate,
        message: String::from_utf8_lossy(message).into_owned(),
    })
}

/// What an OK (or EOF) packet says that the journal wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Completion {
    pub affected_rows: u64,
    pub status: u16,
    pub warnings: u16,
}

/// Reads an OK payload (protocol 4.1).
pub fn parse_ok(body: &[u8]) -> Result<Completion, FrameError> {
    let mut r = Reader::new(body, "OK packet");
    r.u8()?;
    let affected_rows = r.lenenc()?;
    r.lenenc()?; // last insert id
    let status = r.u16()?;
    let warnings = r.u16()?;
    Ok(Completion {
        affected_rows,
        status,
        warnings,
    })
}

/// Reads an EOF payload (protocol 4.1): warnings, then status.
pub fn parse_eof(body: &[u8]) -> Result<Completion, FrameError> {
    let mut r = Reader::new(body, "EOF packet");
    r.u8()?;
    let warnings = r.u16()?;
    let status = r.u16()?;
    Ok(Completion {
        affected_rows: 0,
        status,
        warnings,
    })
}

/// Appends a length-encoded integer.
pub fn put_lenenc(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_lenenc(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A bounds-checked cursor over a payload.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, what }
    }

    fn short(&self) -> FrameError {
        FrameError::Malformed {
            what: self.what,
            why: "too short",
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.short())?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(|| self.short())?;
        self.pos = end;
        Ok(bytes)
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-encoded integer (0xFB, NULL in rows, is an error here).
    pub fn lenenc(&mut self) -> Result<u64, FrameError> {
        match self.u8()? {
            n @ 0..=250 => Ok(u64::from(n)),
            0xFC => Ok(u64::from(self.u16()?)),
            0xFD => {
                let b = self.take(3)?;
                Ok(u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16)
            }
            0xFE => {
                let b = self.take(8)?;
                let mut le = [0u8; 8];
                le.copy_from_slice(b);
                Ok(u64::from_le_bytes(le))
            }
            _ => Err(FrameError::Malformed {
                what: self.what,
                why: "bad length-encoded integer",
            }),
        }
    }

    /// A length-encoded string.
    pub fn lenenc_bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.lenenc()?;
        let n = usize::try_from(n).map_err(|_| self.short())?;
        self.take(n)
    }

    /// A length-encoded string, or `None` for the NULL marker (0xFB) of a text row.
    pub fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, FrameError> {
        if self.buf.get(self.pos) == Some(&0xFB) {
            self.pos += 1;
            return Ok(None);
        }
        self.lenenc_bytes().map(Some)
    }

    /// A NUL-terminated string (the NUL is consumed).
    pub fn nul_bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FrameError::Malformed {
                what: self.what,
                why: "unterminated string",
            })?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        rest
    }
}

#[cfg(test)]
mod tests;
