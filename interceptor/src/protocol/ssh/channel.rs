//! One session channel: the request that starts it (`exec`, `shell`, `subsystem`) judged as a
//! command, then relayed between the agent and a channel of its own on the server, with the
//! output masked and, for terminals, recorded.
//!
//! Why the upstream channel is opened only after the verdict: the server must not hear of a
//! command before it is journaled and allowed. A `pty-req` is answered at once and replayed
//! upstream before the command; `env` and `x11-req` are refused (an environment variable can
//! change what a command does, e.g. `LD_PRELOAD`, and X11 would open channels back into the
//! agent's host); agent forwarding is refused by the handler. Each is journaled as a note.
//!
//! A refusal leaves the connection usable: the request is answered, the reason (the rule and
//! the journal event) is written on the channel's stderr, and the channel ends with exit
//! status 126, which `ssh` returns as its own.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use russh::{server::Msg, Channel, ChannelId, ChannelMsg, Pty};

use super::{
    recording::{self, Recorder},
    sftp,
    upstream::Upstream,
};
use crate::{
    command::{
        shell, BodyMasking, Command, CommandKind, CommandResult, EventId, Hooks, Operation,
        SshChannel, SshRequest, Verdict,
    },
    protocol::{
        masked_output::{self, MaskedOutput},
        Counters,
    },
};

/// Exit status of a refused command: what a shell returns for "found but cannot run".
pub const REFUSED_STATUS: u32 = 126;

/// Bytes the agent may send on a channel before its command is allowed (its stdin, which
/// `ssh` may send before the answer). More refuses the channel.
const MAX_EARLY_BYTES: usize = 1 << 20;

/// What every channel of the session shares.
pub struct Cx<'a, H: Hooks> {
    pub hooks: &'a H,
    pub counters: &'a Counters,
    /// Answers the agent's channel requests.
    pub agent: russh::server::Handle,
    pub upstream: &'a Upstream,
    pub masking: Option<Arc<dyn BodyMasking>>,
}

/// A pseudo-terminal as the agent asked for it; replayed upstream before the command.
struct PtyAsked {
    term: String,
    cols: u32,
    rows: u32,
    pix_width: u32,
    pix_height: u32,
    modes: Vec<(Pty, u32)>,
}

/// The request that starts the channel.
enum Start {
    Exec(Vec<u8>),
    Shell,
    Subsystem(String),
}

/// The command an SSH request is judged as.
pub fn command<'a>(text: &'a str, request: &'a SshRequest) -> Command<'a> {
    Command {
        kind: CommandKind::SshChannel,
        text,
        params: 0,
        name: None,
        operation: Operation::Ssh(request),
    }
}

/// Judges a command: `Ok` with its journal event once allowed (after an approval, for a held
/// one); `Err` with the event, if it was journaled, and the message the agent gets. Held
/// commands tell the agent so on `notify`'s stderr while they wait.
pub async fn judge<H: Hooks>(
    cx: &Cx<'_, H>,
    command: &Command<'_>,
    notify: Option<ChannelId>,
) -> Result<EventId, (Option<EventId>, String)> {
    let decision = cx.hooks.request(command).await.map_err(|e| {
        (
            None,
            format!("interceptor: the journal cannot record this ({e}); nothing was run"),
        )
    })?;
    let event = decision.event;
    let rule = decision.rule.as_deref().unwrap_or("(no rule matched)");
    let verdict = match decision.verdict {
        Verdict::Hold { id, notice } => {
            if let Some(channel) = notify {
                let _ = cx
                    .agent
                    .extended_data(channel, 1, format!("interceptor: {notice}\r\n"))
                    .await;
            }
            match cx.hooks.wait_for_approval(&id).await {
                Verdict::Deny { message } => {
                    return Err((
                        Some(event),
                        format!(
                            "interceptor: {message} (rule {rule}, journal event {})",
                            event.0
                        ),
                    ))
                }
                verdict => verdict,
            }
        }
        verdict => verdict,
    };
    match verdict {
        Verdict::Allow => Ok(event),
        Verdict::Deny { message } => Err((
            Some(event),
            format!(
                "interceptor: refused by policy: {message} (rule {rule}, journal event {})",
                event.0
            ),
        )),
        Verdict::Hold { .. } => Err((
            Some(event),
            format!(
                "interceptor: still held after the approval wait (journal event {})",
                event.0
            ),
        )),
    }
}

/// Records a refused command's outcome.
pub fn refused<H: Hooks>(
    cx: &Cx<'_, H>,
    event: Option<EventId>,
    status: Option<i64>,
    message: &str,
) {
    if let Some(event) = event {
        let result = CommandResult {
            status,
            error: Some(message.to_owned()),
            ..CommandResult::default()
        };
        cx.hooks.result(event, &result);
    }
}

/// Ends a channel whose request is refused: answered (so the client reads on), the message on
/// stderr, exit status 126, closed.
async fn refuse<H: Hooks>(cx: &Cx<'_, H>, id: ChannelId, event: Option<EventId>, message: &str) {
    refused(cx, event, Some(REFUSED_STATUS.into()), message);
    let _ = cx.agent.channel_success(id).await;
    let _ = cx
        .agent
        .extended_data(id, 1, format!("{message}\r\n"))
        .await;
    let _ = cx.agent.exit_status_request(id, REFUSED_STATUS).await;
    let _ = cx.agent.eof(id).await;
    let _ = cx.agent.close(id).await;
}

/// Notes a channel request that is refused without being a command (env, x11, agent); the
/// handler has answered it ([`super::agent`]).
fn refuse_request<H: Hooks>(cx: &Cx<'_, H>, request: &str, name: Option<&str>) {
    cx.hooks.note(
        "ssh_refused",
        serde_json::json!({ "request": request, "name": name }),
    );
}

/// The SSH request an `exec`/`shell`/`subsystem` describes.
fn describe(start: &Start) -> SshRequest {
    let mut request = SshRequest {
        channel: SshChannel::Exec,
        command: None,
        line: None,
        subsystem: None,
        forward: None,
    };
    match start {
        Start::Exec(bytes) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            let mut line = shell::parse(&text);
            if std::str::from_utf8(bytes).is_err() {
                line.opaque = Some("the command line is not UTF-8".to_owned());
            }
            request.command = Some(text);
            request.line = Some(line);
        }
        Start::Shell => request.channel = SshChannel::Shell,
        Start::Subsystem(name) => {
            request.channel = SshChannel::Subsystem;
            request.subsystem = Some(name.clone());
        }
    }
    request
}

/// Serves one session channel to its end.
pub async fn run<H: Hooks>(cx: &Cx<'_, H>, mut chan: Channel<Msg>) {
    let id = chan.id();
    let mut pty: Option<PtyAsked> = None;
    let mut early: Vec<Bytes> = Vec::new();
    let mut early_bytes = 0usize;
    let mut early_eof = false;
    let start = loop {
        let Some(msg) = chan.wait().await else { return };
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                pty = Some(PtyAsked {
                    term,
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: terminal_modes,
                });
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(p) = &mut pty {
                    (p.cols, p.rows) = (col_width, row_height);
                }
            }
            ChannelMsg::SetEnv { variable_name, .. } => {
                // The name only: values may be secrets.
                refuse_request(cx, "env", Some(&variable_name));
            }
            ChannelMsg::RequestX11 { .. } => refuse_request(cx, "x11", None),
            ChannelMsg::AgentForward { .. } => refuse_request(cx, "auth-agent", None),
            ChannelMsg::Exec { command, .. } => break Start::Exec(command),
            ChannelMsg::RequestShell { .. } => break Start::Shell,
            ChannelMsg::RequestSubsystem { name, .. } => break Start::Subsystem(name),
            ChannelMsg::Data { data } => {
                early_bytes += data.len();
                if early_bytes > MAX_EARLY_BYTES {
                    let _ = cx.agent.close(id).await;
                    return;
                }
                early.push(data);
            }
            ChannelMsg::Eof => early_eof = true,
            ChannelMsg::Close => return,
            _ => {}
        }
    };
    let request = describe(&start);
    let text = request.canonical();
    let command = command(&text, &request);
    // While the command is judged (and held), the channel is still read: what the agent sends
    // meanwhile is kept for the command, and russh's queue for this channel never fills up
    // (which would stall every channel of the connection).
    let judged = judge(cx, &command, Some(id));
    tokio::pin!(judged);
    let mut agent_gone = false;
    let verdict = loop {
        tokio::select! {
            verdict = &mut judged => break verdict,
            msg = chan.wait(), if !agent_gone => match msg {
                Some(ChannelMsg::Data { data }) => {
                    early_bytes += data.len();
                    early.push(data);
                }
                Some(ChannelMsg::Eof) => early_eof = true,
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let Some(p) = &mut pty {
                        (p.cols, p.rows) = (col_width, row_height);
                    }
                }
                // The approval is still waited for (it is journaled either way), then dropped.
                Some(ChannelMsg::Close) | None => agent_gone = true,
                // Not answered: an answer now would be taken for the one the command awaits
                // (russh keeps one "wants a reply" per channel).
                Some(_) => {}
            },
        }
    };
    let event = match verdict {
        Ok(event) if agent_gone || early_bytes > MAX_EARLY_BYTES => {
            let message = if agent_gone {
                "the agent closed the channel before the command was allowed; nothing was run"
            } else {
                "the agent sent more input than is kept while a command waits; nothing was run"
            };
            return refuse(cx, id, Some(event), &format!("interceptor: {message}")).await;
        }
        Ok(event) => event,
        Err((event, message)) => return refuse(cx, id, event, &message).await,
    };
    let began = Instant::now();
    let up = match open_upstream(cx, &start, pty.as_ref()).await {
        Ok(up) => up,
        Err(message) => {
            let message = format!("interceptor: {message} (journal event {})", event.0);
            refused(cx, Some(event), None, &message);
            let _ = cx.agent.channel_failure(id).await;
            let _ = cx
                .agent
                .extended_data(id, 1, format!("{message}\r\n"))
                .await;
            let _ = cx.agent.close(id).await;
            return;
        }
    };
    let _ = cx.agent.channel_success(id).await;
    for data in early {
        cx.counters
            .up
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if up.data_bytes(data).await.is_err() {
            break;
        }
    }
    if early_eof {
        let _ = up.eof().await;
    }
    // Shells and commands on a terminal are recorded; plain commands are journaled with
    // their exit status and byte counts only (their output may be large, and is the data).
    let mode = match &start {
        Start::Subsystem(name) if name == "sftp" => Mode::Sftp,
        Start::Subsystem(_) => Mode::Raw,
        Start::Shell => Mode::Terminal,
        _ if pty.is_some() => Mode::Terminal,
        _ => Mode::Plain,
    };
    if let (Mode::Terminal, Some(p)) = (mode, &pty) {
        recording::window(cx.hooks, event, began, p.cols, p.rows);
    }
    relay(cx, id, chan, up, event, mode, began).await;
}

/// Opens the server's channel and asks it for what the agent asked: the pty (not waited on),
/// then the command, whose answer is waited for.
async fn open_upstream<H: Hooks>(
    cx: &Cx<'_, H>,
    start: &Start,
    pty: Option<&PtyAsked>,
) -> Result<Channel<russh::client::Msg>, String> {
    let mut up = cx
        .upstream
        .handle
        .channel_open_session()
        .await
        .map_err(|e| format!("the server did not open a channel: {e}"))?;
    let fail = |e: russh::Error| format!("the server's channel failed: {e}");
    if let Some(p) = pty {
        up.request_pty(
            false,
            &p.term,
            p.cols,
            p.rows,
            p.pix_width,
            p.pix_height,
            &p.modes,
        )
        .await
        .map_err(fail)?;
    }
    match start {
        Start::Exec(command) => up.exec(true, command.clone()).await.map_err(fail)?,
        Start::Shell => up.request_shell(true).await.map_err(fail)?,
        Start::Subsystem(name) => up
            .request_subsystem(true, name.as_str())
            .await
            .map_err(fail)?,
    }
    loop {
        match up.wait().await {
            Some(ChannelMsg::Success) => return Ok(up),
            Some(ChannelMsg::Failure) => return Err("the server refused the request".to_owned()),
            Some(ChannelMsg::Close) | None => {
                return Err("the server closed the channel".to_owned());
            }
            Some(_) => {}
        }
    }
}

/// How a channel's bytes are relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A command: output masked.
    Plain,
    /// A shell, or a command on a pty: output masked, both directions recorded.
    Terminal,
    /// Another subsystem: bytes relayed as they are (a subsystem speaks its own protocol,
    /// which masking would break).
    Raw,
    /// The sftp subsystem: packets, each operation judged ([`sftp`]); not masked (file
    /// contents are binary, and a rewritten packet would break the protocol).
    Sftp,
}

/// Why a relay stopped early.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Ssh(#[from] russh::Error),
    #[error(transparent)]
    Sftp(#[from] sftp::SftpError),
}

/// What one output stream goes through on its way to the agent.
enum Filter {
    Pass,
    /// Line by line, held bytes sent once the channel is idle ([`masked_output`]).
    Mask(MaskedOutput),
    /// Only whole packets are sent, so the gateway's own answers fit between them; the
    /// server's handles are mirrored from them.
    Packets(sftp::Framer, Arc<Mutex<sftp::Handles>>),
}

/// The output of one stream (stdout or stderr): masked when the session masks, recorded when
/// asked.
struct Output<'a, H: Hooks> {
    filter: Filter,
    recorder: Option<Recorder<'a, H>>,
}

impl<H: Hooks> Output<'_, H> {
    fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, sftp::SftpError> {
        let out = match &mut self.filter {
            Filter::Mask(mask) => mask.push(data),
            Filter::Packets(framer, handles) => {
                framer.push(data);
                let mut out = Vec::new();
                while let Some(packet) = framer.next_packet()? {
                    lock(handles).answered(&packet);
                    out.extend_from_slice(&packet);
                }
                out
            }
            Filter::Pass => data.to_vec(),
        };
        self.record(&out);
        Ok(out)
    }

    /// The mask holds bytes not yet sent.
    fn holds(&self) -> bool {
        matches!(&self.filter, Filter::Mask(mask) if mask.holds())
    }

    fn flush(&mut self) -> Vec<u8> {
        let out = match &mut self.filter {
            Filter::Mask(mask) => mask.flush(),
            Filter::Pass | Filter::Packets(..) => Vec::new(),
        };
        self.record(&out);
        out
    }

    fn record(&mut self, out: &[u8]) {
        if let Some(r) = &mut self.recorder {
            if !out.is_empty() {
                r.chunk(out);
            }
        }
    }

    fn counts(&mut self) -> std::collections::BTreeMap<String, u64> {
        if let Some(r) = &mut self.recorder {
            r.finish();
        }
        match &mut self.filter {
            Filter::Mask(mask) => mask.take_counts(),
            Filter::Pass | Filter::Packets(..) => Default::default(),
        }
    }
}

/// Judges one of the agent's SFTP packets: `Some(packet)` to forward, or `None` when it was
/// refused (the refusal, an SFTP status, is queued for the agent on `answers`).
async fn sftp_packet<H: Hooks>(
    cx: &Cx<'_, H>,
    packet: Bytes,
    answers: &tokio::sync::mpsc::UnboundedSender<Bytes>,
    handles: &Mutex<sftp::Handles>,
) -> Result<Option<Bytes>, sftp::SftpError> {
    let verdict = sftp::classify(&packet, &lock(handles));
    let (id, words) = match verdict {
        sftp::Verdict::Pass => {
            lock(handles).forwarded(&packet, None);
            return Ok(Some(packet));
        }
        sftp::Verdict::Judge { id, words } => (id, words),
        sftp::Verdict::Unreadable { id, reason } => {
            cx.hooks.note(
                "ssh_refused",
                serde_json::json!({ "request": "sftp", "reason": reason }),
            );
            let message = format!("interceptor: an SFTP request it cannot read ({reason})");
            let _ = answers.send(sftp::refusal(id, &message)?);
            return Ok(None);
        }
    };
    let request = sftp::request(&words);
    let text = request.canonical();
    let command = command(&text, &request);
    match judge(cx, &command, None).await {
        Ok(event) => {
            let result = CommandResult {
                tag: Some("forwarded".to_owned()),
                ..CommandResult::default()
            };
            cx.hooks.result(event, &result);
            lock(handles).forwarded(&packet, Some(&words));
            Ok(Some(packet))
        }
        Err((event, message)) => {
            refused(cx, event, None, &message);
            let _ = answers.send(sftp::refusal(id, &message)?);
            Ok(None)
        }
    }
}

/// Relays the channel both ways until either side closes, and records the command's result.
async fn relay<H: Hooks>(
    cx: &Cx<'_, H>,
    id: ChannelId,
    agent: Channel<Msg>,
    up: Channel<russh::client::Msg>,
    event: EventId,
    mode: Mode,
    began: Instant,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut agent_rx, agent_tx) = agent.split();
    let (mut up_rx, up_tx) = up.split();
    let record = mode == Mode::Terminal;
    // The server's sftp handles, seen given (downward) and used (upward).
    let handles = Arc::new(Mutex::new(sftp::Handles::default()));
    let output = |stream: &'static str| Output {
        filter: match (mode, &cx.masking) {
            (Mode::Sftp, _) => Filter::Packets(sftp::Framer::default(), handles.clone()),
            (Mode::Raw, _) => Filter::Pass,
            (_, Some(masking)) => Filter::Mask(MaskedOutput::new(masking.stream())),
            (_, None) => Filter::Pass,
        },
        recorder: record.then(|| Recorder::new(cx.hooks, event, stream, began)),
    };
    let mut stdout = output("output");
    let mut stderr = output("output");
    let mut input = record.then(|| Recorder::new(cx.hooks, event, "input", began));
    // The agent's SFTP packets, and the gateway's answers to the refused ones.
    let mut requests = sftp::Framer::default();
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let mut status: Option<u32> = None;
    let mut signal: Option<String> = None;
    let mut bytes_down = 0u64;
    // The server's EOF, held until its exit status (or the channel's end) is relayed. An
    // OpenSSH client whose own input is done closes the channel as soon as it sees EOF, and
    // then drops an exit status that comes after; sshd often sends EOF first, in the same
    // breath as the status, but on the gateway's two legs the two arrive apart, so a
    // multiplexed `ssh host cmd` would end without its status (exit 255).
    let mut eof_held = false;

    let upward = async {
        while let Some(msg) = agent_rx.wait().await {
            match msg {
                ChannelMsg::Data { data } if mode == Mode::Sftp => {
                    cx.counters.up.fetch_add(data.len() as u64, Relaxed);
                    requests.push(&data);
                    while let Some(packet) = requests.next_packet()? {
                        if let Some(packet) = sftp_packet(cx, packet, &answers, &handles).await? {
                            up_tx.data_bytes(packet).await?;
                        }
                    }
                }
                ChannelMsg::Data { data } => {
                    cx.counters.up.fetch_add(data.len() as u64, Relaxed);
                    if let Some(r) = &mut input {
                        r.chunk(&data);
                    }
                    up_tx.data_bytes(data).await?;
                }
                ChannelMsg::Eof => up_tx.eof().await?,
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    if record {
                        recording::window(cx.hooks, event, began, col_width, row_height);
                    }
                    up_tx
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await?
                }
                ChannelMsg::Signal { signal } => up_tx.signal(signal).await?,
                ChannelMsg::Close => break,
                // A second command on a channel that has one: refused (the handler answers
                // pty, env and x11 requests itself).
                ChannelMsg::Exec { .. }
                | ChannelMsg::RequestShell { .. }
                | ChannelMsg::RequestSubsystem { .. } => {
                    let _ = cx.agent.channel_failure(id).await;
                }
                _ => {}
            }
        }
        if let Some(r) = &mut input {
            r.finish();
        }
        let _ = up_tx.close().await;
        Ok::<(), RelayError>(())
    };

    // The result is recorded before the agent's channel is closed, so a client that has seen
    // its command end finds the outcome in the journal.
    let downward = async {
        let relayed: Result<(), RelayError> = async {
            loop {
                let held = stdout.holds() || stderr.holds();
                let msg = tokio::select! {
                    msg = up_rx.wait() => msg,
                    Some(answer) = answered.recv() => {
                        send(&agent_tx, None, answer.to_vec(), &mut bytes_down, cx.counters).await?;
                        continue;
                    }
                    () = masked_output::idle(held) => {
                        send_flushed(&agent_tx, &mut stdout, &mut stderr, &mut bytes_down, cx.counters).await?;
                        continue;
                    }
                };
                match msg {
                    Some(ChannelMsg::Data { data }) => {
                        let out = stdout.push(&data)?;
                        send(&agent_tx, None, out, &mut bytes_down, cx.counters).await?;
                    }
                    Some(ChannelMsg::ExtendedData { data, ext }) => {
                        let out = stderr.push(&data)?;
                        send(&agent_tx, Some(ext), out, &mut bytes_down, cx.counters).await?;
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        send_flushed(&agent_tx, &mut stdout, &mut stderr, &mut bytes_down, cx.counters).await?;
                        status = Some(exit_status);
                        agent_tx.exit_status(exit_status).await?;
                        if std::mem::take(&mut eof_held) {
                            agent_tx.eof().await?;
                        }
                    }
                    Some(ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    }) => {
                        send_flushed(&agent_tx, &mut stdout, &mut stderr, &mut bytes_down, cx.counters).await?;
                        signal = Some(format!("{signal_name:?}"));
                        let _ = cx
                            .agent
                            .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                            .await;
                        if std::mem::take(&mut eof_held) {
                            agent_tx.eof().await?;
                        }
                    }
                    Some(ChannelMsg::Eof) => {
                        send_flushed(&agent_tx, &mut stdout, &mut stderr, &mut bytes_down, cx.counters).await?;
                        if status.is_some() || signal.is_some() {
                            agent_tx.eof().await?;
                        } else {
                            eof_held = true;
                        }
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
            send_flushed(&agent_tx, &mut stdout, &mut stderr, &mut bytes_down, cx.counters).await?;
            if eof_held {
                agent_tx.eof().await?;
            }
            Ok(())
        }
        .await;
        let mut masked = stdout.counts();
        for (k, n) in stderr.counts() {
            *masked.entry(k).or_default() += n;
        }
        let result = CommandResult {
            status: status.map(i64::from),
            bytes: Some(bytes_down),
            duration_ms: began.elapsed().as_secs_f64() * 1000.0,
            error: match (&relayed, &signal) {
                (Err(e), _) => Some(format!("relay: {e}")),
                (Ok(()), Some(signal)) => Some(format!("ended by signal {signal}")),
                (Ok(()), None) => None,
            },
            masked,
            ..CommandResult::default()
        };
        cx.hooks.result(event, &result);
        let _ = agent_tx.close().await;
        relayed
    };

    // Either side's failure ends the channel; its result is already recorded.
    let _ = crate::protocol::both_directions(upward, downward).await;
}

/// The handles, whoever panicked while holding them (nothing here does).
fn lock(handles: &Mutex<sftp::Handles>) -> std::sync::MutexGuard<'_, sftp::Handles> {
    handles.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends output to the agent (stdout, or the extended stream `ext`), counting it.
async fn send(
    agent: &russh::ChannelWriteHalf<Msg>,
    ext: Option<u32>,
    out: Vec<u8>,
    bytes_down: &mut u64,
    counters: &Counters,
) -> Result<(), russh::Error> {
    if out.is_empty() {
        return Ok(());
    }
    *bytes_down += out.len() as u64;
    counters
        .down
        .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
    match ext {
        None => agent.data_bytes(out).await,
        Some(ext) => agent.extended_data_bytes(ext, out).await,
    }
}

/// Sends what the maskers still hold.
async fn send_flushed<H: Hooks>(
    agent: &russh::ChannelWriteHalf<Msg>,
    stdout: &mut Output<'_, H>,
    stderr: &mut Output<'_, H>,
    bytes_down: &mut u64,
    counters: &Counters,
) -> Result<(), russh::Error> {
    let out = stdout.flush();
    send(agent, None, out, bytes_down, counters).await?;
    let err = stderr.flush();
    send(agent, Some(1), err, bytes_down, counters).await
}
