//! An approved exec, attach or port-forward stream: WebSocket frames relayed one by one;
//! exec and attach are recorded as `terminal` events, so `sessions replay` plays them back.
//!
//! Why this exists: after the 101 the connection carries no more HTTP requests, only the
//! channel protocol (`v4`/`v5.channel.k8s.io`: binary frames whose first byte is the channel,
//! 0 stdin, 1 stdout, 2 stderr, 3 the exit status, 4 terminal resizes, 255 a v5 close). What
//! runs in the container is exactly what an approver wants to see afterwards, with its timing.
//!
//! Each side is framed by tungstenite over the already-switched connection (the handshake was
//! hyper's, judged as the request). Control frames are answered on their own leg.
//!
//! exec and attach ([`Channels::Terminal`]): stdout and stderr are each masked as one
//! continuous byte stream (the session's detectors, whole lines, through
//! [`MaskedOutput`] as the SSH gateway masks its channels), not frame by frame: the API
//! server cuts output into frames wherever its reads ended, so a value split across two
//! frames must still be seen whole. An unfinished line is held until its newline or until the
//! stream has been quiet for [`masked_output::FLUSH_AFTER`] (a prompt must show), and always
//! before a frame of another channel (the exit status) and the close, so order is kept. What
//! the agent receives is what is recorded. stdin is recorded the same way, masked, and relayed
//! as the agent sent it.
//!
//! port-forward ([`Channels::PortForward`]): per port a data channel (2k) and an error channel
//! (2k+1), each opened by a frame naming the port. A forwarded port speaks any protocol,
//! binary ones included, which rewriting would break: its frames are relayed as they are and
//! only counted (frames and payload bytes each way), never masked nor recorded in content.
//! That is why it is reviewed by default (docs/kubernetes.md).

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    tungstenite::{protocol::Role, Message},
    WebSocketStream,
};

use crate::{
    command::{BodyMasking, EventId, Hooks},
    protocol::masked_output::{self, MaskedOutput},
};

/// Largest frame read from either side: 16 MiB, as the API server's own limit is near it.
const MAX_FRAME: usize = 16 << 20;

/// Channels of the channel protocols.
const STDIN: u8 = 0;
pub(super) const STDOUT: u8 = 1;
pub(super) const STDERR: u8 = 2;
const STATUS: u8 = 3;

/// What a stream's channels carry, from the request's verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// exec and attach: stdin, stdout, stderr, status, resize; masked and recorded.
    Terminal,
    /// portforward: data and error channels per port; relayed as they are and counted.
    PortForward,
}

impl Channels {
    /// The channels of a streaming verb (`exec`, `attach`, `portforward`).
    pub fn of_verb(verb: &str) -> Channels {
        if verb == "portforward" {
            Channels::PortForward
        } else {
            Channels::Terminal
        }
    }
}

/// Why a stream ended other than by a close from either side.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the agent's WebSocket: {0}")]
    Agent(tokio_tungstenite::tungstenite::Error),
    #[error("the API server's WebSocket: {0}")]
    Upstream(tokio_tungstenite::tungstenite::Error),
    #[error(transparent)]
    Spdy(#[from] super::spdy::SpdyError),
}

/// How the stream went, for the request's result.
#[derive(Debug, Default)]
pub struct Summary {
    pub frames_in: u64,
    pub frames_out: u64,
    /// Channel payload bytes from the agent (the channel byte not counted).
    pub bytes_in: u64,
    /// Channel payload bytes to the agent, as it received them (masked).
    pub bytes_out: u64,
    /// The process's exit code, from the status channel (`Success` is 0).
    pub exit: Option<i64>,
    /// What the detectors masked in stdout and stderr, per detector.
    pub masked: BTreeMap<String, u64>,
    /// The ports a SPDY port-forward opened streams to (over WebSocket they are the
    /// request's `ports`, already in its command).
    pub ports: std::collections::BTreeSet<u16>,
}

/// Records one channel event's stream.
pub struct Recorder<'a, H: Hooks> {
    pub hooks: &'a H,
    pub event: EventId,
    pub started: Instant,
    pub masking: Option<Arc<dyn BodyMasking>>,
    pub channels: Channels,
}

impl<H: Hooks> Recorder<'_, H> {
    pub(super) fn note(&self, stream: &str, data: &[u8]) {
        if data.is_empty() || self.channels != Channels::Terminal {
            return;
        }
        self.hooks.note(
            "terminal",
            json!({
                "channel_event": self.event.0,
                "stream": stream,
                "offset_ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "data": String::from_utf8_lossy(data),
            }),
        );
    }
}

/// The maskers of a terminal stream: stdout and stderr apart, and stdin for its record.
/// Empty for port-forward, and when the session does not mask (bytes then pass as they came).
pub(super) struct Maskers {
    stdout: Option<MaskedOutput>,
    stderr: Option<MaskedOutput>,
    pub(super) stdin: Option<MaskedOutput>,
}

impl Maskers {
    pub(super) fn new(masking: Option<&Arc<dyn BodyMasking>>, channels: Channels) -> Maskers {
        let new = || match (masking, channels) {
            (Some(m), Channels::Terminal) => Some(MaskedOutput::new(m.stream())),
            _ => None,
        };
        Maskers {
            stdout: new(),
            stderr: new(),
            stdin: new(),
        }
    }

    pub(super) fn holds(&self) -> bool {
        [&self.stdout, &self.stderr, &self.stdin]
            .iter()
            .any(|m| m.as_ref().is_some_and(MaskedOutput::holds))
    }

    /// The output masker of a channel (stdout or stderr); `None` for other channels.
    pub(super) fn output(&mut self, channel: u8) -> Option<&mut Option<MaskedOutput>> {
        match channel {
            STDOUT => Some(&mut self.stdout),
            STDERR => Some(&mut self.stderr),
            _ => None,
        }
    }

    pub(super) fn take_counts(&mut self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for m in [&mut self.stdout, &mut self.stderr].into_iter().flatten() {
            for (k, n) in m.take_counts() {
                *counts.entry(k).or_default() += n;
            }
        }
        counts
    }
}

/// Bytes through a masker when there is one; as they are otherwise.
pub(super) fn through(mask: &mut Option<MaskedOutput>, data: &[u8]) -> Vec<u8> {
    match mask {
        Some(m) => m.push(data),
        None => data.to_vec(),
    }
}

/// Sends one output channel's masked bytes to the agent (none: nothing sent) and records them.
async fn send_output<S, H>(
    agent: &mut WebSocketStream<S>,
    channel: u8,
    out: Vec<u8>,
    recorder: &Recorder<'_, H>,
    summary: &mut Summary,
) -> Result<(), StreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Hooks,
{
    if out.is_empty() {
        return Ok(());
    }
    recorder.note("output", &out);
    summary.bytes_out += out.len() as u64;
    let mut frame = Vec::with_capacity(out.len() + 1);
    frame.push(channel);
    frame.extend(out);
    agent
        .send(Message::Binary(frame.into()))
        .await
        .map_err(StreamError::Agent)
}

/// Sends (and records) what the maskers hold: the stream went quiet, or another channel's
/// frame, or the end, comes next.
async fn flush<S, H>(
    agent: &mut WebSocketStream<S>,
    maskers: &mut Maskers,
    recorder: &Recorder<'_, H>,
    summary: &mut Summary,
) -> Result<(), StreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Hooks,
{
    if let Some(m) = &mut maskers.stdin {
        recorder.note("input", &m.flush());
    }
    for channel in [STDOUT, STDERR] {
        let out = match maskers.output(channel) {
            Some(Some(m)) => m.flush(),
            _ => continue,
        };
        send_output(agent, channel, out, recorder, summary).await?;
    }
    Ok(())
}

/// Both legs of a switched stream as WebSockets: the agent's (we are its server; `early` is
/// what it sent past its upgrade request) and the API server's, with frames up to
/// [`MAX_FRAME`].
pub(super) async fn websockets<A, U>(
    agent: A,
    early: Vec<u8>,
    upstream: U,
) -> (WebSocketStream<A>, WebSocketStream<U>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_frame_size(Some(MAX_FRAME))
        .max_message_size(Some(MAX_FRAME));
    let agent =
        WebSocketStream::from_partially_read(agent, early, Role::Server, Some(config)).await;
    let upstream = WebSocketStream::from_raw_socket(upstream, Role::Client, Some(config)).await;
    (agent, upstream)
}

/// A read error that only says the peer is gone without the closing handshake (a client
/// stopped, a socket reset, a TLS peer without close_notify): the stream ends there as at a
/// close, and its result keeps its counts, instead of losing them to an error.
pub(super) fn peer_gone(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    use tokio_tungstenite::tungstenite::{error::ProtocolError, Error};
    match e {
        Error::ConnectionClosed
        | Error::AlreadyClosed
        | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        Error::Io(io) => super::spdy::gone(io),
        _ => false,
    }
}

/// Relays until both sides have closed (or one breaks off). `early` is what the agent sent
/// past its upgrade request, already the stream's first bytes.
pub async fn relay<H: Hooks>(
    agent: impl AsyncRead + AsyncWrite + Unpin,
    early: Vec<u8>,
    upstream: impl AsyncRead + AsyncWrite + Unpin,
    recorder: &Recorder<'_, H>,
) -> Result<Summary, StreamError> {
    let (mut agent, mut upstream) = websockets(agent, early, upstream).await;
    let mut maskers = Maskers::new(recorder.masking.as_ref(), recorder.channels);
    let terminal = recorder.channels == Channels::Terminal;
    let mut summary = Summary::default();
    let (mut agent_open, mut upstream_open) = (true, true);
    let relayed: Result<(), StreamError> = async {
        while agent_open && upstream_open {
            let holding = maskers.holds();
            tokio::select! {
                () = masked_output::idle(holding) => {
                    flush(&mut agent, &mut maskers, recorder, &mut summary).await?;
                }
                from_agent = agent.next() => match from_agent {
                    None => agent_open = false,
                    Some(Err(e)) if peer_gone(&e) => agent_open = false,
                    Some(Err(e)) => return Err(StreamError::Agent(e)),
                    Some(Ok(Message::Binary(data))) => {
                        summary.frames_in += 1;
                        summary.bytes_in += data.len().saturating_sub(1) as u64;
                        if let (true, Some((&STDIN, input))) = (terminal, data.split_first()) {
                            let seen = through(&mut maskers.stdin, input);
                            recorder.note("input", &seen);
                        }
                        upstream.send(Message::Binary(data)).await.map_err(StreamError::Upstream)?;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let _ = upstream.send(Message::Close(frame)).await;
                        agent_open = false;
                    }
                    Some(Ok(Message::Text(text))) => {
                        summary.frames_in += 1;
                        upstream.send(Message::Text(text)).await.map_err(StreamError::Upstream)?;
                    }
                    // Pings are answered by tungstenite on the leg they came on.
                    Some(Ok(_)) => {}
                },
                from_upstream = upstream.next() => match from_upstream {
                    None => upstream_open = false,
                    Some(Err(e)) if peer_gone(&e) => upstream_open = false,
                    Some(Err(e)) => return Err(StreamError::Upstream(e)),
                    Some(Ok(Message::Binary(data))) => {
                        summary.frames_out += 1;
                        match data.split_first() {
                            Some((&channel, payload)) if terminal && matches!(channel, STDOUT | STDERR) => {
                                let out = match maskers.output(channel) {
                                    Some(mask) => through(mask, payload),
                                    None => payload.to_vec(),
                                };
                                send_output(&mut agent, channel, out, recorder, &mut summary).await?;
                            }
                            other => {
                                // Another channel's frame (the exit status, a v5 close): what
                                // the output streams hold goes first, so the agent sees the
                                // output before the process's end.
                                flush(&mut agent, &mut maskers, recorder, &mut summary).await?;
                                if let (true, Some((&STATUS, payload))) = (terminal, other) {
                                    summary.exit = exit_code(payload).or(summary.exit);
                                }
                                summary.bytes_out += data.len().saturating_sub(1) as u64;
                                agent.send(Message::Binary(data)).await.map_err(StreamError::Agent)?;
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        flush(&mut agent, &mut maskers, recorder, &mut summary).await?;
                        let _ = agent.send(Message::Close(frame)).await;
                        upstream_open = false;
                    }
                    Some(Ok(Message::Text(text))) => {
                        summary.frames_out += 1;
                        flush(&mut agent, &mut maskers, recorder, &mut summary).await?;
                        agent.send(Message::Text(text)).await.map_err(StreamError::Agent)?;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
        // What is still held goes out (the agent may already be gone: then it is only
        // recorded, which the send's failure does not undo).
        let _ = flush(&mut agent, &mut maskers, recorder, &mut summary).await;
        Ok(())
    }
    .await;
    summary.masked = maskers.take_counts();
    relayed?;
    let _ = agent.close(None).await;
    let _ = upstream.close(None).await;
    Ok(summary)
}

/// The exit code in a status-channel message: a `metav1.Status`, `Success` (0) or a
/// `NonZeroExitCode` failure naming it in its causes.
pub(super) fn exit_code(payload: &[u8]) -> Option<i64> {
    let status: Value = serde_json::from_slice(payload).ok()?;
    if status.get("status").and_then(Value::as_str) == Some("Success") {
        return Some(0);
    }
    status
        .get("details")?
        .get("causes")?
        .as_array()?
        .iter()
        .find(|c| c.get("reason").and_then(Value::as_str) == Some("ExitCode"))?
        .get("message")?
        .as_str()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fuzzing::MaskingHooks, mask::Strategy};

    /// What the agent received: each binary frame, as (channel, payload).
    type Frames = Vec<(u8, Vec<u8>)>;

    /// Runs the relay between an in-memory agent and API server: the server sends `frames`
    /// back to back (then a close), the agent sends `input` frames; returns what the agent
    /// received and the relay's summary.
    async fn relayed(channels: Channels, frames: Frames, input: Frames) -> (Frames, Summary) {
        let hooks = MaskingHooks::detecting(Strategy::Redact);
        let (agent_end, relay_agent) = tokio::io::duplex(1 << 16);
        let (relay_upstream, server_end) = tokio::io::duplex(1 << 16);
        let recorder = Recorder {
            hooks: &hooks,
            event: EventId(1),
            started: Instant::now(),
            masking: Some(Arc::new(hooks.0.clone()) as Arc<dyn BodyMasking>),
            channels,
        };
        let relay = relay(relay_agent, Vec::new(), relay_upstream, &recorder);
        let server = async {
            let mut ws = WebSocketStream::from_raw_socket(server_end, Role::Server, None).await;
            let mut got = 0;
            for (channel, payload) in frames {
                let mut frame = vec![channel];
                frame.extend(payload);
                ws.send(Message::Binary(frame.into()))
                    .await
                    .expect("server send");
            }
            // The agent's frames, before the end.
            while got < input.len() {
                match ws.next().await {
                    Some(Ok(Message::Binary(_))) => got += 1,
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            ws.close(None).await.expect("server close");
            while ws.next().await.is_some() {}
        };
        let agent = async {
            let mut ws = WebSocketStream::from_raw_socket(agent_end, Role::Client, None).await;
            for (channel, payload) in &input {
                let mut frame = vec![*channel];
                frame.extend(payload);
                ws.send(Message::Binary(frame.into()))
                    .await
                    .expect("agent send");
            }
            let mut received = Vec::new();
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Binary(data) = message {
                    if let Some((&channel, payload)) = data.split_first() {
                        received.push((channel, payload.to_vec()));
                    }
                }
            }
            received
        };
        let (summary, (), received) = tokio::join!(relay, server, agent);
        (received, summary.expect("relayed"))
    }

    /// One channel's bytes as the agent received them.
    fn channel(frames: &Frames, channel: u8) -> String {
        let bytes: Vec<u8> = frames
            .iter()
            .filter(|(c, _)| *c == channel)
            .flat_map(|(_, p)| p.clone())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_value_split_across_frames_is_masked_on_each_stream_and_output_keeps_its_order() {
        let frames = vec![
            (STDOUT, b"contact: ada.lovelace".to_vec()),
            (STDERR, b"card 4111 1111".to_vec()),
            (STDOUT, b"@example.com\nprompt$ ".to_vec()),
            (STDERR, b" 1111 1111\n".to_vec()),
            (STATUS, br#"{"metadata":{},"status":"Success"}"#.to_vec()),
        ];
        let (got, summary) = relayed(Channels::Terminal, frames, Vec::new()).await;
        let (out, err) = (channel(&got, STDOUT), channel(&got, STDERR));
        assert!(
            out.starts_with("contact: ") && out.ends_with("\nprompt$ "),
            "{out}"
        );
        assert!(!out.contains("lovelace"), "{out}");
        assert!(err.starts_with("card ") && err.ends_with('\n'), "{err}");
        assert!(!err.contains("4111 1111"), "{err}");
        // The held prompt went out before the exit status.
        assert_eq!(got.last().map(|(c, _)| *c), Some(STATUS), "{got:?}");
        assert_eq!(summary.exit, Some(0));
        assert_eq!(
            summary.masked.values().sum::<u64>(),
            2,
            "{:?}",
            summary.masked
        );
    }

    #[tokio::test]
    async fn port_forward_frames_pass_as_they_are_and_are_counted() {
        let port = 8080u16.to_le_bytes().to_vec();
        let data = b"alice@example.com 4111 1111 1111 1111\n".to_vec();
        let frames = vec![(0, port.clone()), (1, port.clone()), (0, data.clone())];
        let input = vec![(0, b"ping".to_vec())];
        let (got, summary) = relayed(Channels::PortForward, frames.clone(), input).await;
        assert_eq!(got, frames);
        assert_eq!((summary.frames_in, summary.bytes_in), (1, 4));
        assert_eq!(
            (summary.frames_out, summary.bytes_out),
            (3, 4 + data.len() as u64)
        );
        assert!(summary.masked.is_empty());
    }

    #[test]
    fn the_exit_code_is_read_from_the_status_channel() {
        assert_eq!(exit_code(br#"{"metadata":{},"status":"Success"}"#), Some(0));
        let failed = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code(failed), Some(3));
        assert_eq!(exit_code(b"not json"), None);
    }
}
