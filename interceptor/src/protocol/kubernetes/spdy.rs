//! SPDY/3.1 exec, attach and port-forward streams, read as the API server reads them.
//!
//! Why this exists: kubectl still speaks SPDY. `kubectl port-forward` (1.31 and later) tunnels
//! SPDY inside a WebSocket (`SPDY/3.1+portforward.k8s.io`) and falls back to plain SPDY;
//! `kubectl exec` and `attach` before 1.30, or with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`,
//! speak plain SPDY. In SPDY a stream's purpose is not in its frames but in the headers of the
//! SYN_STREAM that opened it (`streamtype: stdout`, `port: 8080`), compressed with zlib and
//! the SPDY/3 dictionary in one context per direction. The API server (spdystream's framer,
//! then the kubelet's handlers) reads those headers to decide what a stream is, so the
//! gateway reads them the same way and refuses what it cannot read the same way: a name that
//! is not lowercase or is given twice, a value with several parts (NUL-separated), a header
//! block that inflates to more or less than one block, a second stream of one kind.
//!
//! - Agent → API server: frames pass as they came, but only once whole and read, so a stream
//!   the gateway cannot place never reaches the server. The gateway never rewrites a control
//!   frame, so both zlib contexts stay the peers' own. stdin is recorded, masked.
//! - API server → agent: data only on streams the agent opened (a stream the server opens is
//!   refused). exec and attach stdout and stderr are masked as one continuous stream each,
//!   as over WebSocket ([`super::exec`]), and sent in data frames of their new length. SPDY/3.1
//!   has flow-control windows, but the Kubernetes peers (spdystream) neither send nor honour
//!   WINDOW_UPDATE, so a frame whose length changed breaks no accounting; WINDOW_UPDATE frames
//!   pass as they are. The error stream's status gives the exit code.
//! - port-forward: the data streams are relayed as they are and counted, never masked nor
//!   recorded in content (a forwarded port speaks any protocol), as over WebSocket. The ports
//!   are the streams' `port` headers: the request's URL names none, so the result lists them.
//!
//! Tunnelled in a WebSocket, the SPDY byte stream is the concatenation of the binary
//! messages' payloads; the same reading applies to it ([`relay_tunneled`]).

use std::collections::HashMap;

use bytes::{Buf as _, Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};

use super::exec::{self, Channels, Maskers, Recorder, Summary, STDERR, STDOUT};
use crate::{command::Hooks, protocol::masked_output};

/// SPDY's version in every control frame.
const VERSION: u16 = 3;
/// Control frame types (SPDY/3 §2.6).
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
/// The FIN flag of data frames (and of SYN_STREAM, SYN_REPLY, HEADERS).
const FLAG_FIN: u8 = 0x01;
/// A frame's length field is 24 bits.
const MAX_LENGTH: usize = (1 << 24) - 1;
/// The most a header block may inflate to. kubectl's are a few dozen bytes; the bound keeps a
/// small compressed block from growing into megabytes.
const MAX_HEADER_BLOCK: usize = 64 << 10;
/// The most of an error stream kept to read the exit status from.
const MAX_STATUS: usize = 64 << 10;
/// How much is read from a raw leg at once.
const READ_CHUNK: usize = 64 << 10;

/// The zlib dictionary of SPDY/3 header blocks (the SPDY/3 draft, its header compression section).
const DICTIONARY: &[u8] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\
    \x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-char\
    set\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-\
    ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\
    \x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10c\
    ontent-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\x00\x00\
    \x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\x00\x00\
    \x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\
    \x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\
    \x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\x00\
    \x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\x00\
    \x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\
    \x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0br\
    etry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\
    \x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\x00\x00\x00\x04va\
    ry\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00\
    \x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\
    \x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\
    \x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin10010120120220520630030230\
    3304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative In\
    formation204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden\
    404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb \
    Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
    chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,te\
    xt/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-\
    8859-1,utf-,*,enq=0.";

/// SPDY the gateway cannot read as the API server would: the stream ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

fn malformed(what: impl Into<String>) -> Malformed {
    Malformed(what.into())
}

/// Why a SPDY stream ended other than by a close from either side.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("the agent's connection: {0}")]
    Agent(String),
    #[error("the API server's connection: {0}")]
    Upstream(String),
    #[error("the agent's SPDY is refused: {0}")]
    AgentFrames(Malformed),
    #[error("the API server's SPDY is refused: {0}")]
    UpstreamFrames(Malformed),
}

/// One whole frame's head, read from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Data { stream: u32, flags: u8, len: usize },
    Control { kind: u16, flags: u8, len: usize },
}

impl Head {
    /// The payload's length (the frame is 8 bytes longer).
    fn len(self) -> usize {
        match self {
            Head::Data { len, .. } | Head::Control { len, .. } => len,
        }
    }

    /// The head of the frame at the front of `buf`, once all of it is there.
    fn whole(buf: &[u8]) -> Result<Option<Head>, Malformed> {
        let Some(head) = buf.get(..8) else {
            return Ok(None);
        };
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        let frame = if first & 0x8000_0000 != 0 {
            let version = (first >> 16) as u16 & 0x7fff;
            if version != VERSION {
                return Err(malformed(format!(
                    "a control frame of SPDY version {version}"
                )));
            }
            Head::Control {
                kind: first as u16,
                flags,
                len,
            }
        } else {
            let stream = first & 0x7fff_ffff;
            if stream == 0 {
                return Err(malformed("a data frame on stream 0"));
            }
            Head::Data { stream, flags, len }
        };
        Ok((buf.len() >= 8 + len).then_some(frame))
    }
}

/// Calls `each` with every whole frame at the front of `buf` (its head, and its bytes head
/// included); returns how many bytes they span. The first error ends the walk.
fn each_frame(
    buf: &[u8],
    mut each: impl FnMut(Head, &[u8]) -> Result<(), Malformed>,
) -> Result<usize, Malformed> {
    let mut at = 0;
    while let Some(head) = Head::whole(&buf[at..])? {
        let end = at + 8 + head.len();
        each(head, &buf[at..end])?;
        at = end;
    }
    Ok(at)
}

/// The header blocks of one direction: one zlib stream with the SPDY/3 dictionary, each
/// block sync-flushed, as spdystream writes and reads them.
struct HeaderBlocks {
    zlib: Decompress,
}

impl HeaderBlocks {
    fn new() -> HeaderBlocks {
        HeaderBlocks {
            zlib: Decompress::new(true),
        }
    }

    /// The names and values of one block (its compressed bytes are the rest of its frame).
    fn read(&mut self, compressed: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Malformed> {
        let block = self.inflate(compressed)?;
        parse_block(&block)
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, Malformed> {
        let mut out = Vec::with_capacity((input.len() * 4).clamp(256, MAX_HEADER_BLOCK));
        loop {
            let before = self.zlib.total_in();
            let status = self
                .zlib
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.zlib.total_in() - before).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            match status {
                Ok(Status::StreamEnd) => {
                    return Err(malformed("a header block ended its zlib stream"));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(DICTIONARY)
                        .map_err(|_| malformed("a header block asks for another dictionary"))?;
                    continue;
                }
                Err(e) => return Err(malformed(format!("a header block does not inflate: {e}"))),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(malformed("a header block inflates to more than 64 KiB"));
            }
            if out.len() < out.capacity() {
                if input.is_empty() {
                    return Ok(out);
                }
                if used == 0 {
                    return Err(malformed("a header block does not inflate"));
                }
            } else {
                // Exactly: the output never has room for more than the bound and one byte.
                let room = (MAX_HEADER_BLOCK + 1 - out.len()).min(out.len().max(256));
                out.reserve_exact(room);
            }
        }
    }
}

/// A header block (SPDY/3 §2.6.10): a count, then length-prefixed names and values. Read
/// as spdystream reads it, except that what it would accept with an error, or read in a way
/// a reader could mistake, is refused: names not lowercase, a name twice, anything left over.
fn parse_block(mut block: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Malformed> {
    fn chunk<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], Malformed> {
        if block.remaining() < 4 {
            return Err(malformed("a header block is cut short"));
        }
        let len = block.get_u32() as usize;
        let Some(bytes) = block.get(..len) else {
            return Err(malformed("a header block is cut short"));
        };
        block.advance(len);
        Ok(bytes)
    }
    if block.remaining() < 4 {
        return Err(malformed("a header block is cut short"));
    }
    let count = block.get_u32();
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
    for _ in 0..count {
        let name = chunk(&mut block)?;
        let value = chunk(&mut block)?;
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|n| !n.is_empty() && !n.bytes().any(|b| b.is_ascii_uppercase()))
            .ok_or_else(|| malformed("a header name that is empty or not lowercase"))?;
        if pairs.iter().any(|(n, _)| n == name) {
            return Err(malformed(format!("the header {name:?} twice")));
        }
        pairs.push((name.to_owned(), value.to_vec()));
    }
    if !block.is_empty() {
        return Err(malformed("bytes after a header block"));
    }
    Ok(pairs)
}

/// One header's single value, as text: `None` when absent; refused when it has several
/// parts (spdystream splits at NUL and the server reads the first).
fn single<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Result<Option<&'a str>, Malformed> {
    let Some((_, value)) = headers.iter().find(|(n, _)| n == name) else {
        return Ok(None);
    };
    std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.contains('\0'))
        .map(Some)
        .ok_or_else(|| malformed(format!("the header {name:?} is not one text value")))
}

/// What a stream the agent opened carries, from its `streamtype` (and `port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
    PortData(u16),
    PortError(u16),
}

impl Carries {
    /// A SYN_STREAM's headers read as the kubelet's handlers read them.
    fn of(headers: &[(String, Vec<u8>)], channels: Channels) -> Result<Carries, Malformed> {
        let kind = single(headers, "streamtype")?
            .ok_or_else(|| malformed("a stream without a streamtype"))?;
        match channels {
            Channels::Terminal => match kind {
                "error" => Ok(Carries::Error),
                "stdin" => Ok(Carries::Stdin),
                "stdout" => Ok(Carries::Stdout),
                "stderr" => Ok(Carries::Stderr),
                "resize" => Ok(Carries::Resize),
                other => Err(malformed(format!("an exec stream of type {other:?}"))),
            },
            Channels::PortForward => {
                // strconv.ParseUint(port, 10, 16), as the kubelet reads it: digits only.
                let port = single(headers, "port")?
                    .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| malformed("a port-forward stream without a valid port"))?;
                match kind {
                    "data" => Ok(Carries::PortData(port)),
                    "error" => Ok(Carries::PortError(port)),
                    other => Err(malformed(format!(
                        "a port-forward stream of type {other:?}"
                    ))),
                }
            }
        }
    }

    /// The channel byte of the WebSocket protocol this stream stands for, for the maskers.
    fn channel(self) -> Option<u8> {
        match self {
            Carries::Stdout => Some(STDOUT),
            Carries::Stderr => Some(STDERR),
            _ => None,
        }
    }
}

/// The connection's state: what each stream carries, both framings, the maskers.
struct Session<'r, 'h, H: Hooks> {
    recorder: &'r Recorder<'h, H>,
    from_agent: BytesMut,
    from_upstream: BytesMut,
    agent_headers: HeaderBlocks,
    streams: HashMap<u32, Carries>,
    last_stream: u32,
    /// The stdout and stderr streams of an exec, for flushing what their maskers hold.
    outputs: Vec<(u32, u8)>,
    maskers: Maskers,
    status: Vec<u8>,
    summary: Summary,
}

impl<'r, 'h, H: Hooks> Session<'r, 'h, H> {
    fn new(recorder: &'r Recorder<'h, H>) -> Self {
        Session {
            recorder,
            from_agent: BytesMut::new(),
            from_upstream: BytesMut::new(),
            agent_headers: HeaderBlocks::new(),
            streams: HashMap::new(),
            last_stream: 0,
            outputs: Vec::new(),
            maskers: Maskers::new(recorder.masking.as_ref(), recorder.channels),
            status: Vec::new(),
            summary: Summary::default(),
        }
    }

    /// Takes the agent's bytes; returns the whole frames to send on, as they came.
    fn agent_sent(&mut self, data: &[u8]) -> Result<Bytes, Malformed> {
        self.from_agent.extend_from_slice(data);
        // The buffer is taken out while its frames are read, so none is copied to be read.
        let buf = std::mem::take(&mut self.from_agent);
        let read = each_frame(&buf, |head, frame| self.agent_frame(head, &frame[8..]));
        self.from_agent = buf;
        let at = read?;
        Ok(self.from_agent.split_to(at).freeze())
    }

    fn agent_frame(&mut self, head: Head, payload: &[u8]) -> Result<(), Malformed> {
        match head {
            Head::Data { stream, .. } => {
                let carries =
                    self.streams.get(&stream).copied().ok_or_else(|| {
                        malformed(format!("data on stream {stream}, never opened"))
                    })?;
                self.summary.frames_in += 1;
                self.summary.bytes_in += payload.len() as u64;
                if carries == Carries::Stdin {
                    let seen = exec::through(&mut self.maskers.stdin, payload);
                    self.recorder.note("input", &seen);
                }
                Ok(())
            }
            Head::Control { kind, len, .. } => {
                let at_least = |n: usize| {
                    if len < n {
                        Err(malformed(format!(
                            "a control frame of type {kind} cut short"
                        )))
                    } else {
                        Ok(())
                    }
                };
                match kind {
                    SYN_STREAM => {
                        at_least(10)?;
                        let stream =
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                                & 0x7fff_ffff;
                        // Every stream of these protocols is the client's: odd, increasing.
                        if stream.is_multiple_of(2) || stream <= self.last_stream {
                            return Err(malformed(format!("a stream opened as {stream}")));
                        }
                        let headers = self.agent_headers.read(&payload[10..])?;
                        let carries = Carries::of(&headers, self.recorder.channels)?;
                        if let Some(channel) = carries.channel() {
                            if self.outputs.iter().any(|(_, c)| *c == channel) {
                                return Err(malformed("a second stream of one output"));
                            }
                            self.outputs.push((stream, channel));
                        }
                        if let Carries::PortData(port) | Carries::PortError(port) = carries {
                            self.summary.ports.insert(port);
                        } else if self.streams.values().any(|c| *c == carries) {
                            return Err(malformed("a second stream of one kind"));
                        }
                        self.last_stream = stream;
                        self.streams.insert(stream, carries);
                        Ok(())
                    }
                    HEADERS => {
                        at_least(4)?;
                        // Read to keep the zlib context in step; a stream's purpose is fixed
                        // when it opens, so headers that would restate it are refused.
                        let headers = self.agent_headers.read(&payload[4..])?;
                        if headers
                            .iter()
                            .any(|(n, _)| n == "streamtype" || n == "port")
                        {
                            return Err(malformed("a HEADERS frame naming a stream's type"));
                        }
                        Ok(())
                    }
                    RST_STREAM | GOAWAY | WINDOW_UPDATE => at_least(8),
                    SETTINGS | PING => at_least(4),
                    SYN_REPLY => Err(malformed("a SYN_REPLY from the client")),
                    other => Err(malformed(format!("a control frame of type {other}"))),
                }
            }
        }
    }

    /// Takes the API server's bytes; returns what the agent is sent (masked output in
    /// frames of their new length, every other frame as it came).
    fn upstream_sent(&mut self, data: &[u8]) -> Result<Vec<u8>, Malformed> {
        self.from_upstream.extend_from_slice(data);
        let mut out = Vec::with_capacity(data.len());
        // Taken out while read, as the agent's (no frame copied to be read).
        let buf = std::mem::take(&mut self.from_upstream);
        let read = each_frame(&buf, |head, frame| {
            self.upstream_frame(head, frame, &mut out)
        });
        self.from_upstream = buf;
        let at = read?;
        self.from_upstream.advance(at);
        Ok(out)
    }

    fn upstream_frame(
        &mut self,
        head: Head,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Malformed> {
        let payload = &frame[8..];
        match head {
            Head::Data { stream, flags, .. } => {
                let carries = self.streams.get(&stream).copied().ok_or_else(|| {
                    malformed(format!(
                        "data on stream {stream}, which the agent never opened"
                    ))
                })?;
                self.summary.frames_out += 1;
                if let Some(channel) = carries.channel() {
                    if let Some(mask @ Some(_)) = self.maskers.output(channel) {
                        let mut masked = exec::through(mask, payload);
                        if flags & FLAG_FIN != 0 {
                            if let Some(m) = mask {
                                masked.extend(m.flush());
                            }
                        }
                        self.output(stream, masked, flags & FLAG_FIN != 0, out);
                        return Ok(());
                    }
                    self.recorder.note("output", payload);
                } else {
                    // Another stream's frame: what the outputs hold goes first, so the agent
                    // sees the output before the process's end.
                    self.flush_into(out);
                }
                if carries == Carries::Error && self.status.len() + payload.len() <= MAX_STATUS {
                    self.status.extend_from_slice(payload);
                    if flags & FLAG_FIN != 0 {
                        self.read_status();
                    }
                }
                self.summary.bytes_out += payload.len() as u64;
                out.extend_from_slice(frame);
                Ok(())
            }
            Head::Control { kind, .. } => {
                match kind {
                    SYN_STREAM => return Err(malformed("a stream opened by the server")),
                    SYN_REPLY | RST_STREAM | SETTINGS | PING | GOAWAY | HEADERS | WINDOW_UPDATE => {
                    }
                    other => return Err(malformed(format!("a control frame of type {other}"))),
                }
                self.flush_into(out);
                out.extend_from_slice(frame);
                Ok(())
            }
        }
    }

    /// Masked output for the agent: recorded, counted, framed (in pieces of at most a
    /// frame's length; nothing when there is nothing to send and no FIN).
    fn output(&mut self, stream: u32, data: Vec<u8>, fin: bool, out: &mut Vec<u8>) {
        if data.is_empty() && !fin {
            return;
        }
        self.recorder.note("output", &data);
        self.summary.bytes_out += data.len() as u64;
        let mut pieces = data.chunks(MAX_LENGTH).peekable();
        if pieces.peek().is_none() {
            data_frame(stream, &[], fin, out);
        }
        while let Some(piece) = pieces.next() {
            data_frame(stream, piece, fin && pieces.peek().is_none(), out);
        }
    }

    /// What the maskers hold, into data frames: the stream went quiet, or another frame comes.
    fn flush_into(&mut self, out: &mut Vec<u8>) {
        if let Some(m) = &mut self.maskers.stdin {
            self.recorder.note("input", &m.flush());
        }
        for (stream, channel) in self.outputs.clone() {
            let held = match self.maskers.output(channel) {
                Some(Some(m)) => m.flush(),
                _ => continue,
            };
            self.output(stream, held, false, out);
        }
    }

    fn read_status(&mut self) {
        let status = std::mem::take(&mut self.status);
        // v4: an empty error stream that ends is success, as kubectl reads it.
        self.summary.exit = if status.iter().all(u8::is_ascii_whitespace) {
            Some(0)
        } else {
            exec::exit_code(&status)
        }
        .or(self.summary.exit);
    }
}

/// A session driven by hand, one direction at a time: the `kube_spdy` fuzz target's view.
#[cfg(any(test, feature = "fuzzing"))]
pub struct Probe<'r, 'h, H: Hooks>(Session<'r, 'h, H>);

#[cfg(any(test, feature = "fuzzing"))]
impl<'r, 'h, H: Hooks> Probe<'r, 'h, H> {
    pub fn new(recorder: &'r Recorder<'h, H>) -> Self {
        Probe(Session::new(recorder))
    }

    /// What passes to the API server of the agent's `data`.
    pub fn agent_sent(&mut self, data: &[u8]) -> Result<Bytes, Malformed> {
        self.0.agent_sent(data)
    }

    /// What the agent is sent of the API server's `data`.
    pub fn upstream_sent(&mut self, data: &[u8]) -> Result<Vec<u8>, Malformed> {
        self.0.upstream_sent(data)
    }

    /// What the idle flush sends.
    pub fn flush(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.0.flush_into(&mut out);
        out
    }

    /// Whether `bytes` are whole frames, each of a length its field says.
    pub fn whole_frames(bytes: &[u8]) -> bool {
        matches!(each_frame(bytes, |_, _| Ok(())), Ok(n) if n == bytes.len())
    }

    /// A header block compressor as a client's: zlib with the SPDY/3 dictionary.
    pub fn compressor() -> flate2::Compress {
        let mut z = flate2::Compress::new(flate2::Compression::fast(), true);
        // zlib-rs accepts a dictionary before the first byte; a failure leaves the fuzz
        // target's blocks unreadable, which it would show as refusals, not as a panic.
        let _ = z.set_dictionary(DICTIONARY);
        z
    }
}

/// Appends one data frame.
fn data_frame(stream: u32, data: &[u8], fin: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.push(if fin { FLAG_FIN } else { 0 });
    let len = data.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(data);
}

/// One side of the stream, as bytes: the switched connection itself, or the binary
/// messages of a WebSocket tunnelling it.
trait Leg {
    async fn recv(&mut self) -> Result<Option<Bytes>, String>;
    async fn send(&mut self, data: Bytes) -> Result<(), String>;
    async fn close(&mut self);
}

/// A read error that only says the peer is gone: a TLS peer that closed without
/// close_notify, or a client stopped with unread data (reset). The stream ends there as at a
/// close, and its result keeps its counts: SPDY says itself where its streams end (FIN,
/// RST_STREAM, GOAWAY), so nothing is cut unseen.
pub(super) fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
    )
}

struct Raw<S>(S);

impl<S: AsyncRead + AsyncWrite + Unpin> Leg for Raw<S> {
    async fn recv(&mut self) -> Result<Option<Bytes>, String> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match self.0.read_buf(&mut buf).await {
            Ok(0) => Ok(None),
            Err(e) if gone(&e) => Ok(None),
            Ok(_) => Ok(Some(buf.freeze())),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn send(&mut self, data: Bytes) -> Result<(), String> {
        self.0.write_all(&data).await.map_err(|e| e.to_string())?;
        self.0.flush().await.map_err(|e| e.to_string())
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

struct Tunnel<S>(WebSocketStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Leg for Tunnel<S> {
    async fn recv(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            match self.0.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Binary(data))) => return Ok(Some(data)),
                Some(Ok(Message::Text(_))) => {
                    return Err("a text message in a SPDY tunnel".to_owned());
                }
                // Pings are answered by tungstenite on the leg they came on.
                Some(Ok(_)) => {}
                // A peer gone without the closing handshake ends the stream as a close does:
                // the SPDY inside says itself where its streams end.
                Some(Err(e)) if exec::peer_gone(&e) => return Ok(None),
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }

    async fn send(&mut self, data: Bytes) -> Result<(), String> {
        self.0
            .send(Message::Binary(data))
            .await
            .map_err(|e| e.to_string())
    }

    async fn close(&mut self) {
        let _ = self.0.close(None).await;
    }
}

/// Relays a plain SPDY stream until either side closes. `early` is what the agent sent past
/// its upgrade request, already the stream's first bytes.
pub async fn relay<H: Hooks>(
    agent: impl AsyncRead + AsyncWrite + Unpin,
    early: Vec<u8>,
    upstream: impl AsyncRead + AsyncWrite + Unpin,
    recorder: &Recorder<'_, H>,
) -> Result<Summary, SpdyError> {
    run(Raw(agent), early.into(), Raw(upstream), recorder).await
}

/// Relays SPDY tunnelled in a WebSocket (`SPDY/3.1+portforward.k8s.io`) until either side
/// closes.
pub async fn relay_tunneled<H: Hooks>(
    agent: impl AsyncRead + AsyncWrite + Unpin,
    early: Vec<u8>,
    upstream: impl AsyncRead + AsyncWrite + Unpin,
    recorder: &Recorder<'_, H>,
) -> Result<Summary, SpdyError> {
    let (agent, upstream) = exec::websockets(agent, early, upstream).await;
    run(Tunnel(agent), Bytes::new(), Tunnel(upstream), recorder).await
}

async fn run<A: Leg, U: Leg, H: Hooks>(
    mut agent: A,
    early: Bytes,
    mut upstream: U,
    recorder: &Recorder<'_, H>,
) -> Result<Summary, SpdyError> {
    let mut session = Session::new(recorder);
    let relayed: Result<(), SpdyError> = async {
        if !early.is_empty() {
            let pass = session.agent_sent(&early).map_err(SpdyError::AgentFrames)?;
            if !pass.is_empty() {
                upstream.send(pass).await.map_err(SpdyError::Upstream)?;
            }
        }
        loop {
            let holding = session.maskers.holds();
            tokio::select! {
                () = masked_output::idle(holding) => {
                    let mut out = Vec::new();
                    session.flush_into(&mut out);
                    if !out.is_empty() {
                        agent.send(out.into()).await.map_err(SpdyError::Agent)?;
                    }
                }
                got = agent.recv() => match got.map_err(SpdyError::Agent)? {
                    None => break,
                    Some(data) => {
                        let pass = session.agent_sent(&data).map_err(SpdyError::AgentFrames)?;
                        if !pass.is_empty() {
                            upstream.send(pass).await.map_err(SpdyError::Upstream)?;
                        }
                    }
                },
                got = upstream.recv() => match got.map_err(SpdyError::Upstream)? {
                    None => break,
                    Some(data) => {
                        let out = session.upstream_sent(&data).map_err(SpdyError::UpstreamFrames)?;
                        if !out.is_empty() {
                            agent.send(out.into()).await.map_err(SpdyError::Agent)?;
                        }
                    }
                },
            }
        }
        Ok(())
    }
    .await;
    // What is still held goes out (the agent may already be gone: then it is only recorded).
    let mut out = Vec::new();
    session.flush_into(&mut out);
    if !out.is_empty() {
        let _ = agent.send(out.into()).await;
    }
    if !session.status.is_empty() {
        session.read_status();
    }
    session.summary.masked = session.maskers.take_counts();
    agent.close().await;
    upstream.close().await;
    relayed.map(|()| session.summary)
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Instant};

    use flate2::{Compress, Compression, FlushCompress};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::{
        command::{BodyMasking, EventId},
        fuzzing::MaskingHooks,
        mask::Strategy,
    };

    /// A client's header compressor: one zlib stream with the dictionary, as spdystream's.
    struct Client(Compress);

    impl Client {
        fn new() -> Client {
            let mut z = Compress::new(Compression::default(), true);
            z.set_dictionary(DICTIONARY).expect("dictionary");
            Client(z)
        }

        fn block(&mut self, pairs: &[(&str, &[u8])]) -> Vec<u8> {
            let mut raw = (pairs.len() as u32).to_be_bytes().to_vec();
            for (name, value) in pairs {
                raw.extend((name.len() as u32).to_be_bytes());
                raw.extend(name.as_bytes());
                raw.extend((value.len() as u32).to_be_bytes());
                raw.extend(*value);
            }
            let mut out = Vec::with_capacity(raw.len() + 64);
            self.0
                .compress_vec(&raw, &mut out, FlushCompress::Sync)
                .expect("compress");
            out
        }

        fn syn_stream(&mut self, stream: u32, pairs: &[(&str, &[u8])]) -> Vec<u8> {
            let mut payload = stream.to_be_bytes().to_vec();
            payload.extend([0, 0, 0, 0, 0, 0]);
            payload.extend(self.block(pairs));
            control(SYN_STREAM, 0, &payload)
        }
    }

    fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80, 0x03];
        f.extend(kind.to_be_bytes());
        f.push(flags);
        f.extend(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend(payload);
        f
    }

    fn data(stream: u32, payload: &[u8], fin: bool) -> Vec<u8> {
        let mut f = Vec::new();
        data_frame(stream, payload, fin, &mut f);
        f
    }

    /// The data frames in `bytes`, per stream, payloads joined; and whether each ended.
    fn streams_in(mut bytes: &[u8]) -> HashMap<u32, (Vec<u8>, bool)> {
        let mut got: HashMap<u32, (Vec<u8>, bool)> = HashMap::new();
        while let Some(head) = Head::whole(bytes).expect("frames") {
            let len = match head {
                Head::Data { stream, flags, len } => {
                    let e = got.entry(stream).or_default();
                    e.0.extend(&bytes[8..8 + len]);
                    e.1 |= flags & FLAG_FIN != 0;
                    len
                }
                Head::Control { len, .. } => len,
            };
            bytes = &bytes[8 + len..];
        }
        got
    }

    fn hooks() -> MaskingHooks {
        MaskingHooks::detecting(Strategy::Redact)
    }

    fn recorder(hooks: &MaskingHooks, channels: Channels) -> Recorder<'_, MaskingHooks> {
        Recorder {
            hooks,
            event: EventId(1),
            started: Instant::now(),
            masking: Some(Arc::new(hooks.0.clone()) as Arc<dyn BodyMasking>),
            channels,
        }
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(crc32fast::hash(DICTIONARY), 0x04c8_490e);
    }

    #[test]
    fn exec_output_is_masked_per_stream_across_frames_and_the_status_read() {
        let hooks = hooks();
        let rec = recorder(&hooks, Channels::Terminal);
        let mut s = Session::new(&rec);
        let mut c = Client::new();
        let mut opened = Vec::new();
        for (id, kind) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
            opened.extend(c.syn_stream(id, &[("streamtype", kind.as_bytes())]));
        }
        // Cut mid-frame: only whole frames pass.
        let passed = s.agent_sent(&opened[..opened.len() - 3]).expect("read");
        let rest = s.agent_sent(&opened[opened.len() - 3..]).expect("read");
        assert_eq!([passed.as_ref(), rest.as_ref()].concat(), opened);
        let mut out = Vec::new();
        for frame in [
            control(SYN_REPLY, 0, &[0, 0, 0, 3, 0xde, 0xad]),
            data(3, b"contact: ada.lovelace", false),
            data(5, b"card 4111 1111", false),
            data(3, b"@example.com\nprompt$ ", false),
            data(5, b" 1111 1111\n", true),
            data(1, br#"{"metadata":{},"status":"Success"}"#, true),
        ] {
            out.extend(s.upstream_sent(&frame).expect("read"));
        }
        let got = streams_in(&out);
        let stdout = String::from_utf8_lossy(&got[&3].0).into_owned();
        let stderr = String::from_utf8_lossy(&got[&5].0).into_owned();
        assert!(
            stdout.starts_with("contact: ") && stdout.ends_with("\nprompt$ "),
            "{stdout}"
        );
        assert!(!stdout.contains("lovelace"), "{stdout}");
        assert!(
            stderr.starts_with("card ") && stderr.ends_with('\n'),
            "{stderr}"
        );
        assert!(!stderr.contains("4111"), "{stderr}");
        assert!(got[&5].1, "stderr's FIN is kept");
        assert_eq!(s.summary.exit, Some(0));
        // The control frame passed as it came, first.
        assert_eq!(
            out[..14],
            control(SYN_REPLY, 0, &[0, 0, 0, 3, 0xde, 0xad])[..]
        );
        assert_eq!(s.maskers.take_counts().values().sum::<u64>(), 2);
    }

    #[test]
    fn port_forward_data_passes_as_it_is_and_its_ports_are_listed() {
        let hooks = hooks();
        let rec = recorder(&hooks, Channels::PortForward);
        let mut s = Session::new(&rec);
        let mut c = Client::new();
        let mut opened = c.syn_stream(
            1,
            &[
                ("streamtype", b"error"),
                ("port", b"8080"),
                ("requestid", b"0"),
            ],
        );
        opened.extend(c.syn_stream(
            3,
            &[
                ("streamtype", b"data"),
                ("port", b"8080"),
                ("requestid", b"0"),
            ],
        ));
        opened.extend(data(3, b"ping", false));
        assert_eq!(s.agent_sent(&opened).expect("read").as_ref(), &opened[..]);
        let echo = data(3, b"alice@example.com 4111 1111 1111 1111\n", false);
        assert_eq!(s.upstream_sent(&echo).expect("read"), echo);
        assert_eq!(s.summary.ports.iter().copied().collect::<Vec<_>>(), [8080]);
        assert_eq!((s.summary.bytes_in, s.summary.bytes_out), (4, 38));
    }

    #[test]
    fn streams_the_server_would_read_otherwise_are_refused() {
        let refused = |channels: Channels, pairs: &[(&str, &[u8])]| {
            let hooks = hooks();
            let rec = recorder(&hooks, channels);
            let mut s = Session::new(&rec);
            s.agent_sent(&Client::new().syn_stream(1, pairs)).is_err()
        };
        let t = Channels::Terminal;
        assert!(!refused(t, &[("streamtype", b"stdout")]));
        assert!(refused(t, &[("StreamType", b"stdout")]));
        assert!(refused(t, &[("streamtype", b"stdin\0stdout")]));
        assert!(refused(
            t,
            &[("streamtype", b"stdout"), ("streamtype", b"stdin")]
        ));
        assert!(refused(t, &[("streamtype", b"data")]));
        assert!(refused(t, &[]));
        let p = Channels::PortForward;
        assert!(!refused(p, &[("streamtype", b"data"), ("port", b"80")]));
        for port in [&b"+80"[..], b"0", b"65536", b"80\x001", b""] {
            assert!(
                refused(p, &[("streamtype", b"data"), ("port", port)]),
                "{port:?}"
            );
        }
        assert!(refused(p, &[("streamtype", b"stdout"), ("port", b"80")]));

        let hooks = hooks();
        let rec = recorder(&hooks, t);
        let mut c = Client::new();
        let mut s = Session::new(&rec);
        // Data on a stream never opened; a second stdout; an even or reused id.
        assert!(s.agent_sent(&data(1, b"x", false)).is_err());
        let mut s = Session::new(&rec);
        let mut c2 = Client::new();
        s.agent_sent(&c2.syn_stream(1, &[("streamtype", b"stdout")]))
            .expect("first");
        assert!(s
            .agent_sent(&c2.syn_stream(3, &[("streamtype", b"stdout")]))
            .is_err());
        let mut s = Session::new(&rec);
        assert!(s
            .agent_sent(&c.syn_stream(2, &[("streamtype", b"stdout")]))
            .is_err());
        // A control frame of another version, a HEADERS frame restating a type.
        let mut s = Session::new(&rec);
        let mut other = control(PING, 0, &[0, 0, 0, 1]);
        other[1] = 2;
        assert!(s.agent_sent(&other).is_err());
        let mut s = Session::new(&rec);
        let mut c3 = Client::new();
        s.agent_sent(&c3.syn_stream(1, &[("streamtype", b"stdout")]))
            .expect("open");
        let mut headers = 1u32.to_be_bytes().to_vec();
        headers.extend(c3.block(&[("streamtype", b"stdin")]));
        assert!(s.agent_sent(&control(HEADERS, 0, &headers)).is_err());
        // The server may not open streams, nor send data on one the agent did not open.
        let mut s = Session::new(&rec);
        assert!(s
            .upstream_sent(&Client::new().syn_stream(2, &[("streamtype", b"stdout")]))
            .is_err());
        assert!(s.upstream_sent(&data(7, b"x", false)).is_err());
    }

    #[test]
    fn a_header_block_must_inflate_to_exactly_one_block() {
        let mut c = Client::new();
        let mut blocks = HeaderBlocks::new();
        let one = c.block(&[("streamtype", b"stdout")]);
        assert_eq!(blocks.read(&one).expect("one")[0].0, "streamtype");
        // Two blocks' bytes in one frame: bytes left over.
        let mut two = c.block(&[("streamtype", b"stdout")]);
        two.extend(c.block(&[("streamtype", b"stderr")]));
        assert!(blocks.read(&two).is_err());
        assert!(HeaderBlocks::new().read(b"not zlib").is_err());
        // A block that inflates past the bound.
        let mut c = Client::new();
        let big = vec![b'a'; MAX_HEADER_BLOCK];
        assert!(HeaderBlocks::new().read(&c.block(&[("x", &big)])).is_err());
    }

    #[tokio::test]
    async fn a_tunnelled_port_forward_round_trips_through_websockets() {
        let hooks = hooks();
        let rec = recorder(&hooks, Channels::PortForward);
        let (agent_end, relay_agent) = tokio::io::duplex(1 << 16);
        let (relay_upstream, server_end) = tokio::io::duplex(1 << 16);
        let relay = relay_tunneled(relay_agent, Vec::new(), relay_upstream, &rec);
        let mut c = Client::new();
        let mut opened = c.syn_stream(1, &[("streamtype", b"data"), ("port", b"5432")]);
        opened.extend(data(1, b"hello", false));
        let server = async {
            let mut ws = WebSocketStream::from_raw_socket(server_end, Role::Server, None).await;
            let mut got = Vec::new();
            while got.len() < opened.len() {
                match ws.next().await {
                    Some(Ok(Message::Binary(d))) => got.extend_from_slice(&d),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, opened);
            ws.send(Message::Binary(data(1, b"olleh", true).into()))
                .await
                .expect("send");
            ws.close(None).await.expect("close");
            while ws.next().await.is_some() {}
        };
        let agent = async {
            let mut ws = WebSocketStream::from_raw_socket(agent_end, Role::Client, None).await;
            // Cut anywhere: the tunnel is a byte stream.
            ws.send(Message::Binary(opened[..5].to_vec().into()))
                .await
                .expect("send");
            ws.send(Message::Binary(opened[5..].to_vec().into()))
                .await
                .expect("send");
            let mut got = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Binary(d) = m {
                    got.extend_from_slice(&d);
                }
            }
            got
        };
        let (summary, (), got) = tokio::join!(relay, server, agent);
        assert_eq!(got, data(1, b"olleh", true));
        let summary = summary.expect("relayed");
        assert_eq!(summary.ports.iter().copied().collect::<Vec<_>>(), [5432]);
    }
}
