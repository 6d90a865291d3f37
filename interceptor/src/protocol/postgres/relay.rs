//! The query phase: both directions at once, every statement recorded before it is forwarded.
//!
//! Client → server: complete messages are taken from whatever arrived together (a pipeline may
//! hold many), the commands among them (Query, Parse, Execute of an already executed prepared
//! statement, FunctionCall) are recorded in one commit via [`Hooks::request_all`], and only
//! then are the original bytes forwarded, unchanged. Each command leaves a [`Pending`] entry.
//!
//! Server → client: results are matched to pending entries in order (CommandComplete,
//! ErrorResponse, ReadyForQuery…), rows are counted, and the bytes are forwarded unchanged.
//! A framing error on either side ends the session with an ErrorResponse to the client.
//!
//! **Refusals keep the session usable.** A refused message is not dropped: it is replaced by
//! one the server rejects at once (a syntax error, or an Execute of a portal that does not
//! exist). The server then does exactly what it does for any error: aborts the transaction
//! block or the implicit transaction of the pipeline, skips to the next Sync, and reports the
//! true transaction state in ReadyForQuery. On the way back, that server error is replaced by
//! ours (SQLSTATE 42501, naming the rule and the journal event). Nothing of a refused message
//! reaches the server, and no protocol state has to be faked.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering, Mutex},
    time::Instant,
};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};

use super::{
    codec::{self, backend, frontend, FrameError},
    startup::Legs,
    BoxIo, Context, PgError,
};
use crate::command::{Command, CommandKind, CommandResult, EventId, Hooks, Verdict};

/// Read at least this much spare room before each read, so large results need few syscalls.
const READ_CHUNK: usize = 64 * 1024;

/// What the server still owes an answer for, in order.
#[derive(Debug)]
enum Pending {
    /// A simple Query (possibly several statements) or FunctionCall: ends at ReadyForQuery.
    UntilReady {
        event: EventId,
        started: Instant,
        result: CommandResult,
    },
    /// An Execute: ends at CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Execute {
        event: EventId,
        started: Instant,
        rows: u64,
    },
    /// A Sync (or the implicit one of a simple Query): its ReadyForQuery closes the batch.
    Sync,
    /// A refused command, replaced by one that fails: the server's ErrorResponse for it is
    /// swapped for `error`.
    Denied {
        event: EventId,
        started: Instant,
        error: bytes::Bytes,
        message: String,
    },
}

type ClientWriter = tokio::sync::Mutex<WriteHalf<BoxIo>>;

pub async fn run<H: Hooks>(ctx: &Context<'_, H>, legs: Legs) -> Result<(), PgError> {
    let (client_read, client_write) = tokio::io::split(legs.client);
    let (server_read, server_write) = tokio::io::split(legs.server);
    let client_write: ClientWriter = tokio::sync::Mutex::new(client_write);
    let pending = Mutex::new(VecDeque::new());
    let up = client_to_server(
        ctx,
        client_read,
        server_write,
        legs.client_buf,
        &client_write,
        &pending,
    );
    let down = server_to_client(ctx, server_read, &client_write, legs.server_buf, &pending);
    crate::protocol::both_directions(up, down).await
}

/// Reads more bytes into `buf`; `Ok(false)` at end of stream.
async fn fill(reader: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < READ_CHUNK {
        buf.reserve(READ_CHUNK);
    }
    Ok(reader.read_buf(buf).await? > 0)
}

/// A complete message inside a read buffer: its tag and where its body is.
type Frame = (u8, std::ops::Range<usize>);

/// The complete messages at the front of `buf`, and how many bytes they span.
fn frames(buf: &[u8], max: usize) -> Result<(Vec<Frame>, usize), FrameError> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(len) = codec::frame_len(&buf[at..], max)? {
        out.push((buf[at], at + 5..at + len));
        at += len;
    }
    Ok((out, at))
}

async fn tell_client(writer: &ClientWriter, sqlstate: &str, text: &str) {
    let mut out = BytesMut::new();
    backend::error(b'E', "FATAL", sqlstate, text).encode(&mut out);
    let mut w = writer.lock().await;
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
}

/// The journal event of a command: known, or the index of a command in the batch being
/// recorded (resolved once the batch is committed).
#[derive(Debug, Clone, Copy)]
enum EventRef {
    Known(EventId),
    Batch(usize),
}

impl EventRef {
    fn resolve(self, batch: &[EventId]) -> Option<EventId> {
        match self {
            EventRef::Known(e) => Some(e),
            EventRef::Batch(i) => batch.get(i).copied(),
        }
    }
}

async fn tell_client_notice(writer: &ClientWriter, text: &str) {
    let mut out = BytesMut::new();
    backend::error(b'N', "NOTICE", "00000", text).encode(&mut out);
    let mut w = writer.lock().await;
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
}

/// A prepared statement the client created with Parse.
struct Prepared {
    text: String,
    params: usize,
    event: EventRef,
    /// The Parse event carries the first execution's result; later ones get their own event.
    executed: bool,
}

/// A command to record, owned so the statement table can change while the batch is planned.
struct Planned {
    kind: CommandKind,
    text: String,
    params: usize,
    name: Option<String>,
}

/// Per-connection protocol state the client side keeps.
#[derive(Default)]
struct Statements {
    prepared: HashMap<String, Prepared>,
    portals: HashMap<String, String>,
}

/// What one client message means for the batch.
#[derive(Default)]
struct Step {
    /// Index into the batch's commands to record, if this message carries one.
    record: Option<usize>,
    expect: Option<Expect>,
    /// The prepared statement this Parse created (undone if the Parse is refused).
    parsed: Option<String>,
}

enum Expect {
    UntilReady(EventRef),
    Execute(EventRef),
    Sync,
}

impl Statements {
    /// Reads one client message: updates statements and portals, and appends what must be
    /// recorded to `record`.
    fn plan(
        &mut self,
        tag: u8,
        body: &[u8],
        record: &mut Vec<Planned>,
    ) -> Result<Step, FrameError> {
        let mut step = Step::default();
        let mut push = |p: Planned| {
            record.push(p);
            step.record = Some(record.len() - 1);
            EventRef::Batch(record.len() - 1)
        };
        match tag {
            b'Q' => {
                let text = frontend::query(body)?;
                let event = push(Planned {
                    kind: CommandKind::Statement,
                    text,
                    params: 0,
                    name: None,
                });
                step.expect = Some(Expect::UntilReady(event));
            }
            b'P' => {
                let (name, text, params) = frontend::parse(body)?;
                let event = push(Planned {
                    kind: CommandKind::Prepare,
                    text: text.clone(),
                    params,
                    name: Some(name.clone()),
                });
                self.prepared.insert(
                    name.clone(),
                    Prepared {
                        text,
                        params,
                        event,
                        executed: false,
                    },
                );
                step.parsed = Some(name);
            }
            b'B' => {
                let (portal, statement, _) = frontend::bind(body)?;
                self.portals.insert(portal, statement);
            }
            b'E' => {
                let portal = frontend::execute(body)?;
                // An unknown portal gets an error from the server; nothing to record.
                let Some(statement) = self.portals.get(&portal) else {
                    return Ok(step);
                };
                let Some(prepared) = self.prepared.get_mut(statement) else {
                    return Ok(step);
                };
                let event = if prepared.executed {
                    let planned = Planned {
                        kind: CommandKind::Execute,
                        text: prepared.text.clone(),
                        params: prepared.params,
                        name: Some(statement.clone()),
                    };
                    push(planned)
                } else {
                    prepared.executed = true;
                    prepared.event
                };
                step.expect = Some(Expect::Execute(event));
            }
            b'F' => {
                let oid = frontend::function_call(body)?;
                let text = format!("function call (oid {oid})");
                let event = push(Planned {
                    kind: CommandKind::FunctionCall,
                    text,
                    params: 0,
                    name: None,
                });
                step.expect = Some(Expect::UntilReady(event));
            }
            b'C' => match frontend::close(body)? {
                (b'S', name) => {
                    self.prepared.remove(&name);
                }
                (_, name) => {
                    self.portals.remove(&name);
                }
            },
            b'S' => step.expect = Some(Expect::Sync),
            // Describe, Flush, COPY data/done/fail, Terminate: relayed as they are.
            b'D' | b'H' | b'd' | b'c' | b'f' | b'X' => {}
            _ => {
                return Err(FrameError::Malformed {
                    what: "client",
                    why: "unknown message type",
                })
            }
        }
        Ok(step)
    }

    /// Once a batch is committed, statements parsed in it point at their events.
    fn resolve(&mut self, batch: &[EventId]) {
        for p in self.prepared.values_mut() {
            if let Some(e) = p.event.resolve(batch) {
                p.event = EventRef::Known(e);
            }
        }
    }
}

/// The message sent upstream instead of a refused one: something the server rejects before
/// running anything, so it takes its own error path (see the module documentation).
fn substitute(tag: u8, body: &[u8]) -> codec::Message {
    use bytes::BufMut as _;
    match tag {
        b'P' => {
            let name = frontend::parse(body).map(|(n, _, _)| n).unwrap_or_default();
            backend::message(b'P', |b| {
                b.put_slice(name.as_bytes());
                b.put_u8(0);
                b.put_slice(b"interceptor_refused\0");
                b.put_i16(0);
            })
        }
        b'E' => backend::message(b'E', |b| {
            b.put_slice(b"\x01interceptor refused portal\0");
            b.put_i32(0);
        }),
        // Query and FunctionCall: a query that fails to parse, followed by ReadyForQuery.
        _ => backend::message(b'Q', |b| b.put_slice(b"interceptor_refused\0")),
    }
}

async fn client_to_server<H: Hooks>(
    ctx: &Context<'_, H>,
    mut reader: ReadHalf<BoxIo>,
    mut server: WriteHalf<BoxIo>,
    mut buf: BytesMut,
    client_write: &ClientWriter,
    pending: &Mutex<VecDeque<Pending>>,
) -> Result<(), PgError> {
    let max = ctx.target.max_message_bytes;
    let mut statements = Statements::default();
    loop {
        let (found, consumed) = match frames(&buf, max) {
            Ok(f) => f,
            Err(e) => {
                tell_client(client_write, "08P01", &format!("interceptor: {e}")).await;
                return Err(PgError::Client(e));
            }
        };
        if found.is_empty() {
            if !fill(&mut reader, &mut buf).await? {
                let _ = server.shutdown().await;
                return Ok(());
            }
            continue;
        }

        // 1. Work out what the messages ask for, in order.
        let mut record = Vec::new();
        let mut steps = Vec::with_capacity(found.len());
        for (tag, range) in &found {
            match statements.plan(*tag, &buf[range.clone()], &mut record) {
                Ok(step) => steps.push(step),
                Err(e) => {
                    tell_client(
                        client_write,
                        "08P01",
                        &format!("interceptor: {e} ({tag:#04x})"),
                    )
                    .await;
                    return Err(PgError::Client(e));
                }
            }
        }

        // 2. Decide and record every command of the batch with one commit, before anything
        // is forwarded.
        let mut decisions = if record.is_empty() {
            Vec::new()
        } else {
            let commands: Vec<Command<'_>> = record
                .iter()
                .map(|p| Command {
                    kind: p.kind,
                    text: &p.text,
                    params: p.params,
                    name: p.name.as_deref(),
                })
                .collect();
            match ctx.hooks.request_all(&commands).await {
                Ok(d) if d.len() == commands.len() => d,
                Ok(_) | Err(_) => {
                    tell_client(
                        client_write,
                        "58000",
                        "interceptor: the journal is unavailable; the statement was not run",
                    )
                    .await;
                    return Err(PgError::Journal(crate::command::HookError(
                        "commands could not be recorded".to_owned(),
                    )));
                }
            }
        };
        // Held commands: tell the client now, then wait for the human (or the timeout). The
        // rest of the batch waits too, so nothing behind a held command overtakes it.
        for d in decisions.iter_mut() {
            if let Verdict::Hold { id, notice } = &d.verdict {
                let id = id.clone();
                tell_client_notice(client_write, notice).await;
                d.verdict = ctx.hooks.wait_for_approval(&id).await;
            }
        }
        let events: Vec<EventId> = decisions.iter().map(|d| d.event).collect();

        // 3. Refused messages are replaced; the rest go as they came. Expect the answers first.
        let mut out = BytesMut::new();
        let mut substituted = false;
        {
            let mut queue = pending.lock().unwrap_or_else(|p| p.into_inner());
            let started = Instant::now();
            for ((tag, range), step) in found.iter().zip(steps) {
                let refusal = step.record.and_then(|i| match &decisions[i].verdict {
                    Verdict::Deny { message } => Some((decisions[i].event, message.clone())),
                    Verdict::Allow => None,
                    // Resolved above; an unresolved hold never runs.
                    Verdict::Hold { id, .. } => {
                        Some((decisions[i].event, format!("approval {id} unresolved")))
                    }
                });
                let frame = range.start - 5..range.end;
                let Some((event, message)) = refusal else {
                    out.extend_from_slice(&buf[frame]);
                    match step.expect {
                        Some(Expect::Sync) => queue.push_back(Pending::Sync),
                        Some(Expect::UntilReady(r)) => {
                            if let Some(event) = r.resolve(&events) {
                                queue.push_back(Pending::UntilReady {
                                    event,
                                    started,
                                    result: CommandResult::default(),
                                });
                            }
                        }
                        Some(Expect::Execute(r)) => {
                            if let Some(event) = r.resolve(&events) {
                                queue.push_back(Pending::Execute {
                                    event,
                                    started,
                                    rows: 0,
                                });
                            }
                        }
                        None => {}
                    }
                    continue;
                };
                substituted = true;
                if let Some(name) = &step.parsed {
                    // The statement was never prepared on the server; forget it here too.
                    statements.prepared.remove(name);
                }
                let mut error = BytesMut::new();
                backend::error(b'E', "ERROR", "42501", &format!("interceptor: {message}"))
                    .encode(&mut error);
                queue.push_back(Pending::Denied {
                    event,
                    started,
                    error: error.freeze(),
                    message,
                });
                substitute(*tag, &buf[range.clone()]).encode(&mut out);
                if matches!(*tag, b'Q' | b'F') {
                    queue.push_back(Pending::Sync);
                }
            }
        }
        statements.resolve(&events);
        if substituted {
            server.write_all(&out).await?;
        } else {
            server.write_all(&buf[..consumed]).await?;
        }
        ctx.counters
            .up
            .fetch_add(consumed as u64, Ordering::Relaxed);
        buf.advance(consumed);
        if buf.is_empty() {
            server.flush().await?;
        }
    }
}

async fn server_to_client<H: Hooks>(
    ctx: &Context<'_, H>,
    mut reader: ReadHalf<BoxIo>,
    client: &ClientWriter,
    mut buf: BytesMut,
    pending: &Mutex<VecDeque<Pending>>,
) -> Result<(), PgError> {
    let max = ctx.target.max_message_bytes;
    loop {
        let (found, consumed) = match frames(&buf, max) {
            Ok(f) => f,
            Err(e) => {
                tell_client(
                    client,
                    "08P01",
                    &format!("interceptor: invalid message from the server: {e}"),
                )
                .await;
                return Err(PgError::Server(e));
            }
        };
        if found.is_empty() {
            if !fill(&mut reader, &mut buf).await? {
                let _ = client.lock().await.shutdown().await;
                return Ok(());
            }
            continue;
        }
        // Frames whose bytes are replaced (a refusal's error), by position in `found`.
        let mut replaced: Vec<(usize, bytes::Bytes)> = Vec::new();
        {
            let mut queue = pending.lock().unwrap_or_else(|p| p.into_inner());
            for (i, (tag, range)) in found.iter().enumerate() {
                if let Some(bytes) = observe(ctx.hooks, &mut queue, *tag, &buf[range.clone()]) {
                    replaced.push((i, bytes));
                }
            }
        }
        let mut w = client.lock().await;
        if replaced.is_empty() {
            w.write_all(&buf[..consumed]).await?;
        } else {
            let mut at = 0;
            for (i, bytes) in &replaced {
                let frame_start = found[*i].1.start - 5;
                w.write_all(&buf[at..frame_start]).await?;
                w.write_all(bytes).await?;
                at = found[*i].1.end;
            }
            w.write_all(&buf[at..consumed]).await?;
        }
        if consumed == buf.len() {
            w.flush().await?;
        }
        drop(w);
        ctx.counters
            .down
            .fetch_add(consumed as u64, Ordering::Relaxed);
        buf.advance(consumed);
    }
}

/// Rows a completion tag reports ("INSERT 0 5" → 5, "UPDATE 3" → 3, "SELECT 2" → 2).
fn rows_in_tag(tag: &str) -> Option<u64> {
    let mut words = tag.split_whitespace();
    match words.next()? {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" => {
            words.last()?.parse().ok()
        }
        _ => None,
    }
}

fn finish(hooks: &impl Hooks, event: EventId, started: Instant, mut result: CommandResult) {
    result.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Rows written (or copied) count as well as rows returned.
    if result.rows == 0 {
        if let Some(n) = result
            .tag
            .as_deref()
            .and_then(|t| t.rsplit("; ").next())
            .and_then(rows_in_tag)
        {
            result.rows = n;
        }
    }
    hooks.result(event, &result);
}

/// Updates the pending answers with one server message. Returns the bytes to send the client
/// instead of this message, when it answers a refused command.
fn observe(
    hooks: &impl Hooks,
    queue: &mut VecDeque<Pending>,
    tag: u8,
    body: &[u8],
) -> Option<bytes::Bytes> {
    if tag == b'E' && matches!(queue.front(), Some(Pending::Denied { .. })) {
        if let Some(Pending::Denied {
            event,
            started,
            error,
            message,
        }) = queue.pop_front()
        {
            let result = CommandResult {
                sqlstate: Some("42501".to_owned()),
                error: Some(message),
                ..CommandResult::default()
            };
            finish(hooks, event, started, result);
            return Some(error);
        }
    }
    match tag {
        b'D' => match queue.front_mut() {
            Some(Pending::UntilReady { result, .. }) => result.rows += 1,
            Some(Pending::Execute { rows, .. }) => *rows += 1,
            _ => {}
        },
        b'C' | b'I' | b's' => {
            let tag_text = match tag {
                b'C' => backend::command_complete(body),
                b'I' => "EMPTY".to_owned(),
                _ => "SUSPENDED".to_owned(),
            };
            match queue.front_mut() {
                Some(Pending::UntilReady { result, .. }) if tag == b'C' => {
                    result.tag = Some(match result.tag.take() {
                        Some(prev) => format!("{prev}; {tag_text}"),
                        None => tag_text,
                    });
                }
                Some(Pending::Execute { .. }) => {
                    if let Some(Pending::Execute {
                        event,
                        started,
                        rows,
                    }) = queue.pop_front()
                    {
                        let result = CommandResult {
                            tag: Some(tag_text),
                            rows,
                            ..CommandResult::default()
                        };
                        finish(hooks, event, started, result);
                    }
                }
                _ => {}
            }
        }
        b'E' => {
            let (sqlstate, message) = backend::error_fields(body);
            match queue.front_mut() {
                Some(Pending::UntilReady { result, .. }) => {
                    result.sqlstate = sqlstate;
                    result.error = message;
                }
                Some(Pending::Execute { .. }) => {
                    if let Some(Pending::Execute {
                        event,
                        started,
                        rows,
                    }) = queue.pop_front()
                    {
                        let result = CommandResult {
                            rows,
                            sqlstate,
                            error: message,
                            ..CommandResult::default()
                        };
                        finish(hooks, event, started, result);
                    }
                }
                _ => {}
            }
        }
        b'Z' => {
            // Everything up to the batch's Sync (or the Query) is answered now. Executes still
            // waiting were skipped by the server after an earlier error.
            while let Some(entry) = queue.pop_front() {
                match entry {
                    Pending::UntilReady {
                        event,
                        started,
                        result,
                    } => {
                        finish(hooks, event, started, result);
                        break;
                    }
                    Pending::Execute {
                        event,
                        started,
                        rows,
                    } => {
                        let result = CommandResult {
                            rows,
                            error: Some(
                                "not executed: an earlier command in the same batch failed"
                                    .to_owned(),
                            ),
                            ..CommandResult::default()
                        };
                        finish(hooks, event, started, result);
                    }
                    Pending::Sync => break,
                    // The server skipped it after an earlier error: it was refused anyway.
                    Pending::Denied {
                        event,
                        started,
                        message,
                        ..
                    } => {
                        let result = CommandResult {
                            sqlstate: Some("42501".to_owned()),
                            error: Some(message),
                            ..CommandResult::default()
                        };
                        finish(hooks, event, started, result);
                    }
                }
            }
        }
        _ => {}
    }
    None
}
