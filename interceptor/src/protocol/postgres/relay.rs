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
    sync::{atomic::Ordering, Arc, Mutex},
    time::Instant,
};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};

use super::{
    catalog::{self, Catalog},
    codec::{self, backend, backend::Field, frontend, FrameError},
    results::{self, RowScratch, UnmaskableCopy},
    startup::Legs,
    BoxIo, Context, PgError,
};
use crate::command::{
    Command, CommandKind, CommandResult, EventId, Hooks, Masker, ResultColumn, ValueKind, Verdict,
};

/// Read at least this much spare room before each read, so large results need few syscalls.
const READ_CHUNK: usize = 64 * 1024;

/// What the server still owes an answer for, in order.
enum Pending {
    /// A simple Query (possibly several statements) or FunctionCall: ends at ReadyForQuery.
    UntilReady {
        event: EventId,
        started: Instant,
        result: CommandResult,
        /// Masks the result set being received (each RowDescription starts a new one).
        masker: Option<Box<dyn Masker>>,
    },
    /// An Execute: ends at CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Execute {
        event: EventId,
        started: Instant,
        rows: u64,
        shape: ExecShape,
        masker: Option<Box<dyn Masker>>,
        result: CommandResult,
    },
    /// A Describe: its RowDescription (or NoData) tells what a later Execute returns.
    Describe(Described),
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

/// What a Describe asked about.
#[derive(Debug, Clone)]
enum Described {
    /// A prepared statement, by its generation (see [`Prepared::generation`]).
    Statement(u64),
    Portal(String),
}

/// What an Execute's rows look like, as far as the client side knows when sending it.
#[derive(Debug, Clone, Default)]
struct ExecShape {
    portal: String,
    /// The generation of the statement the portal was bound to.
    statement: Option<u64>,
    /// The result formats the Bind asked for.
    formats: Vec<i16>,
    /// The portal's own description, when the client asked for it (carries real formats).
    described: Option<Arc<Vec<Field>>>,
    /// The masker was built (or found unnecessary) at the first row.
    ready: bool,
}

/// State shared by the two directions: the answers the server owes, and the descriptions of
/// prepared statements (by generation), which results of later Executes need.
#[derive(Default)]
struct Flow {
    queue: VecDeque<Pending>,
    shapes: HashMap<u64, Arc<Vec<Field>>>,
    /// See [`Statements::retired`]; purged when the queue is empty.
    retired: Vec<u64>,
    /// The COPY TO in progress sends binary rows.
    copy_binary: bool,
}

type ClientWriter = tokio::sync::Mutex<WriteHalf<BoxIo>>;

pub async fn run<H: Hooks>(ctx: &Context<'_, H>, legs: Legs) -> Result<(), PgError> {
    let (client_read, client_write) = tokio::io::split(legs.client);
    let (server_read, server_write) = tokio::io::split(legs.server);
    let client_write: ClientWriter = tokio::sync::Mutex::new(client_write);
    let pending = Mutex::new(Flow::default());
    // Column sources are resolved only when masking rules name tables, and only with the
    // gateway's own login (credentials) to open a catalog connection.
    let catalog = match (&legs.database, ctx.hooks.wants_sources()) {
        (Some(db), true) if ctx.target.credentials.is_some() => {
            Some(ctx.shared.catalogs.get(&ctx.target.name, db))
        }
        _ => None,
    };
    let database = legs.database.clone().unwrap_or_default();
    let up = client_to_server(
        ctx,
        client_read,
        server_write,
        legs.client_buf,
        &client_write,
        &pending,
    );
    let down = server_to_client(
        ctx,
        server_read,
        &client_write,
        legs.server_buf,
        &pending,
        catalog.as_deref().map(|c| (c, database.as_str())),
    );
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
    /// Unique per Parse in this session: a re-Parse of the same name (the unnamed statement
    /// is re-parsed all the time) must not inherit the old description.
    generation: u64,
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
    /// Portal → the statement it was bound to, and the result formats asked for.
    portals: HashMap<String, (String, Vec<i16>)>,
    generations: u64,
    /// Generations replaced or closed, whose descriptions can go once the server has
    /// answered everything sent before.
    retired: Vec<u64>,
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
    Execute(EventRef, ExecShape),
    Describe(Described),
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
                self.generations += 1;
                if let Some(old) = self.prepared.get(&name) {
                    self.retired.push(old.generation);
                }
                self.prepared.insert(
                    name.clone(),
                    Prepared {
                        text,
                        params,
                        event,
                        executed: false,
                        generation: self.generations,
                    },
                );
                step.parsed = Some(name);
            }
            b'B' => {
                let (portal, statement, _) = frontend::bind(body)?;
                let formats = frontend::bind_result_formats(body)?;
                self.portals.insert(portal, (statement, formats));
            }
            b'D' => {
                step.expect = match frontend::describe(body)? {
                    (b'S', name) => self
                        .prepared
                        .get(&name)
                        .map(|p| Expect::Describe(Described::Statement(p.generation))),
                    (_, portal) => Some(Expect::Describe(Described::Portal(portal))),
                };
            }
            b'E' => {
                let portal = frontend::execute(body)?;
                // An unknown portal gets an error from the server; nothing to record.
                let Some((statement, formats)) = self.portals.get(&portal) else {
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
                let shape = ExecShape {
                    portal,
                    statement: Some(prepared.generation),
                    formats: formats.clone(),
                    ..ExecShape::default()
                };
                step.expect = Some(Expect::Execute(event, shape));
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
                    if let Some(old) = self.prepared.remove(&name) {
                        self.retired.push(old.generation);
                    }
                }
                (_, name) => {
                    self.portals.remove(&name);
                }
            },
            b'S' => step.expect = Some(Expect::Sync),
            // Flush, COPY data/done/fail, Terminate: relayed as they are.
            b'H' | b'd' | b'c' | b'f' | b'X' => {}
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
    pending: &Mutex<Flow>,
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
            let mut flow = pending.lock().unwrap_or_else(|p| p.into_inner());
            flow.retired.append(&mut statements.retired);
            let queue = &mut flow.queue;
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
                                    masker: None,
                                });
                            }
                        }
                        Some(Expect::Execute(r, shape)) => {
                            if let Some(event) = r.resolve(&events) {
                                queue.push_back(Pending::Execute {
                                    event,
                                    started,
                                    rows: 0,
                                    shape,
                                    masker: None,
                                    result: CommandResult::default(),
                                });
                            }
                        }
                        Some(Expect::Describe(d)) => queue.push_back(Pending::Describe(d)),
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
    pending: &Mutex<Flow>,
    catalog: Option<(&Catalog, &str)>,
) -> Result<(), PgError> {
    let max = ctx.target.max_message_bytes;
    let mut scratch = RowScratch::default();
    let mut out = BytesMut::new();
    // Masked rows of the batch, encoded one after the other (no allocation per row).
    let mut rewritten = BytesMut::new();
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
        // Column sources, looked up before the results they describe are relayed.
        if let Some((catalog, database)) = catalog {
            resolve_sources(ctx, catalog, database, &buf, &found).await;
        }
        // Frames whose bytes are replaced (masked rows, a refusal's error), by position.
        let mut replaced: Vec<(usize, Replace)> = Vec::new();
        rewritten.clear();
        let observed = {
            let mut flow = pending.lock().unwrap_or_else(|p| p.into_inner());
            let mut results = Observer {
                hooks: ctx.hooks,
                flow: &mut flow,
                catalog: catalog.map(|c| c.0),
                scratch: &mut scratch,
                rewritten: &mut rewritten,
            };
            found.iter().enumerate().try_for_each(|(i, (tag, range))| {
                match results.observe(*tag, &buf[range.clone()])? {
                    Replace::Keep => {}
                    other => replaced.push((i, other)),
                }
                Ok::<_, Stop>(())
            })
        };
        if let Err(stop) = observed {
            let (sqlstate, text) = match &stop {
                Stop::Frame(e) => (
                    "08P01",
                    format!("interceptor: invalid message from the server: {e}"),
                ),
                Stop::Copy(e) => ("42501", format!("interceptor: {e}")),
            };
            tell_client(client, sqlstate, &text).await;
            return Err(match stop {
                Stop::Frame(e) => PgError::Server(e),
                Stop::Copy(e) => PgError::Denied(e.to_string()),
            });
        }
        let mut w = client.lock().await;
        if replaced.is_empty() {
            w.write_all(&buf[..consumed]).await?;
        } else {
            // One write for the whole batch: masking may replace every row.
            out.clear();
            let mut at = 0;
            for (i, with) in &replaced {
                let frame_start = found[*i].1.start - 5;
                out.extend_from_slice(&buf[at..frame_start]);
                match with {
                    Replace::Keep => out.extend_from_slice(&buf[frame_start..found[*i].1.end]),
                    Replace::With(bytes) => out.extend_from_slice(bytes),
                    Replace::Rewritten(r) => out.extend_from_slice(&rewritten[r.clone()]),
                }
                at = found[*i].1.end;
            }
            out.extend_from_slice(&buf[at..consumed]);
            w.write_all(&out).await?;
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

/// Asks the catalog about the table columns of every RowDescription in the batch.
async fn resolve_sources<H: Hooks>(
    ctx: &Context<'_, H>,
    catalog: &Catalog,
    database: &str,
    buf: &[u8],
    found: &[Frame],
) {
    let mut keys = Vec::new();
    for (tag, range) in found {
        if *tag == b'T' {
            if let Ok(fields) = backend::row_description(&buf[range.clone()]) {
                keys.extend(fields.iter().map(|f| (f.table, f.attnum)));
            }
        }
    }
    if keys.is_empty() {
        return;
    }
    let Some(tls) = ctx.shared.upstream_tls.get(&ctx.target.name) else {
        return;
    };
    let upstream = catalog::Upstream {
        target: ctx.target,
        addr: ctx.upstream_addr,
        tls,
        database,
    };
    if let Err(e) = catalog.resolve(&upstream, &keys).await {
        // Unresolved columns are matched by name: more masking, never less.
        tracing::warn!(error = %e, target = %ctx.target.name, "catalog lookup failed");
        ctx.hooks.note(
            "error",
            serde_json::json!({ "phase": "catalog", "error": e.to_string() }),
        );
    }
}

/// Why the server-to-client direction stops.
enum Stop {
    Frame(FrameError),
    Copy(UnmaskableCopy),
}

impl From<FrameError> for Stop {
    fn from(e: FrameError) -> Stop {
        Stop::Frame(e)
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

/// Follows the server's answers against what the client asked for, one message at a time.
struct Observer<'a, H: Hooks> {
    hooks: &'a H,
    flow: &'a mut Flow,
    catalog: Option<&'a Catalog>,
    scratch: &'a mut RowScratch,
    rewritten: &'a mut BytesMut,
}

/// What to send the client instead of a server message.
enum Replace {
    Keep,
    With(bytes::Bytes),
    /// Bytes at this range of the batch's rewritten rows.
    Rewritten(std::ops::Range<usize>),
}

/// A pending command's masker and result, whichever kind of command it is.
fn masker_of(
    entry: Option<&mut Pending>,
) -> Option<(&mut Option<Box<dyn Masker>>, &mut CommandResult)> {
    match entry? {
        Pending::UntilReady { masker, result, .. } | Pending::Execute { masker, result, .. } => {
            Some((masker, result))
        }
        _ => None,
    }
}

impl<H: Hooks> Observer<'_, H> {
    /// The masker for an Execute's rows, built at its first row from what is known of its
    /// shape: the portal's description, or the statement's with the Bind's formats. Without
    /// either, columns are undescribed (opaque, and NULLed under column rules).
    fn execute_masker(&self, shape: &ExecShape) -> Option<Box<dyn Masker>> {
        let (fields, formats): (&[Field], _) = match (&shape.described, shape.statement) {
            (Some(fields), _) => (fields, None),
            (None, Some(generation)) => match self.flow.shapes.get(&generation) {
                Some(fields) => (fields, Some(shape.formats.as_slice())),
                None => (&[], None),
            },
            (None, None) => (&[], None),
        };
        results::masker(self.hooks, fields, formats, self.catalog)
    }

    /// Updates the pending answers with one server message. Returns the bytes to send the
    /// client instead of this message: a masked row, or our error for a refused command.
    /// A DataRow through `masker`, encoded into the batch's rewritten rows when it changed.
    fn mask_row(
        masker: &mut dyn Masker,
        body: &[u8],
        scratch: &mut RowScratch,
        rewritten: &mut BytesMut,
    ) -> Result<Replace, Stop> {
        let start = rewritten.len();
        Ok(
            if results::mask_data_row(masker, body, scratch, rewritten)? {
                Replace::Rewritten(start..rewritten.len())
            } else {
                Replace::Keep
            },
        )
    }

    fn observe(&mut self, tag: u8, body: &[u8]) -> Result<Replace, Stop> {
        let hooks = self.hooks;
        let queue = &mut self.flow.queue;
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
                return Ok(Replace::With(error));
            }
        }
        match tag {
            b'T' => {
                let fields = backend::row_description(body)?;
                match queue.front_mut() {
                    Some(Pending::Describe(Described::Statement(generation))) => {
                        let generation = *generation;
                        queue.pop_front();
                        self.flow.shapes.insert(generation, Arc::new(fields));
                    }
                    Some(Pending::Describe(Described::Portal(portal))) => {
                        let portal = std::mem::take(portal);
                        queue.pop_front();
                        // The next Execute of this portal returns these columns.
                        let next = queue.iter_mut().find_map(|p| match p {
                            Pending::Execute { shape, .. } if shape.portal == portal => Some(shape),
                            _ => None,
                        });
                        if let Some(shape) = next {
                            shape.described = Some(Arc::new(fields));
                        }
                    }
                    Some(Pending::UntilReady { masker, .. }) => {
                        *masker = results::masker(hooks, &fields, None, self.catalog);
                    }
                    _ => {}
                }
            }
            b'n' => {
                if matches!(queue.front(), Some(Pending::Describe(_))) {
                    queue.pop_front();
                }
            }
            b'H' => {
                // COPY TO STDOUT: each row is one value, of unknown columns.
                self.flow.copy_binary = backend::copy_out_format(body) != 0;
                let kind = if self.flow.copy_binary {
                    ValueKind::Opaque
                } else {
                    ValueKind::Text
                };
                if let Some((masker, _)) = masker_of(queue.front_mut()) {
                    *masker = hooks.masker(vec![ResultColumn {
                        name: String::new(),
                        source: None,
                        unresolved: false,
                        kind,
                    }]);
                }
                if let Some(Pending::Execute { shape, .. }) = queue.front_mut() {
                    shape.ready = true;
                }
            }
            b'd' => {
                let binary = self.flow.copy_binary;
                if let Some((Some(masker), _)) = masker_of(queue.front_mut()) {
                    return results::mask_copy_data(hooks, masker.as_mut(), body, binary)
                        .map(|b| b.map_or(Replace::Keep, Replace::With))
                        .map_err(Stop::Copy);
                }
            }
            b'D' => {
                let unbuilt = match self.flow.queue.front() {
                    Some(Pending::Execute { shape, .. }) if !shape.ready => Some(shape.clone()),
                    _ => None,
                };
                let built = unbuilt.map(|shape| self.execute_masker(&shape));
                let queue = &mut self.flow.queue;
                match queue.front_mut() {
                    Some(Pending::UntilReady { result, masker, .. }) => {
                        result.rows += 1;
                        if let Some(m) = masker {
                            return Self::mask_row(m.as_mut(), body, self.scratch, self.rewritten);
                        }
                    }
                    Some(Pending::Execute {
                        rows,
                        masker,
                        shape,
                        ..
                    }) => {
                        *rows += 1;
                        if let Some(b) = built {
                            *masker = b;
                            shape.ready = true;
                        }
                        if let Some(m) = masker {
                            return Self::mask_row(m.as_mut(), body, self.scratch, self.rewritten);
                        }
                    }
                    _ => {}
                }
            }
            b'C' | b'I' | b's' => {
                let tag_text = match tag {
                    b'C' => backend::command_complete(body),
                    b'I' => "EMPTY".to_owned(),
                    _ => "SUSPENDED".to_owned(),
                };
                if tag == b'C' && is_ddl(&tag_text) {
                    // Table and column names may have changed under the cached OIDs.
                    if let Some(c) = self.catalog {
                        c.invalidate();
                    }
                }
                match queue.front_mut() {
                    Some(Pending::UntilReady { result, masker, .. }) if tag == b'C' => {
                        if let Some(mut m) = masker.take() {
                            result.absorb(m.report());
                        }
                        result.tag = Some(match result.tag.take() {
                            Some(prev) => format!("{prev}; {tag_text}"),
                            None => tag_text,
                        });
                    }
                    Some(Pending::Execute { .. }) => {
                        finish_execute(hooks, queue, |r| r.tag = Some(tag_text));
                    }
                    _ => {}
                }
            }
            b'A' => {
                return Ok(
                    results::mask_notification(hooks, body)?.map_or(Replace::Keep, Replace::With)
                )
            }
            b'E' | b'N' => {
                let replaced = results::mask_notice(hooks, tag, body);
                if tag == b'E' {
                    let (sqlstate, message) = backend::error_fields(body);
                    match queue.front_mut() {
                        Some(Pending::UntilReady { result, masker, .. }) => {
                            if let Some(mut m) = masker.take() {
                                result.absorb(m.report());
                            }
                            result.sqlstate = sqlstate;
                            result.error = message;
                        }
                        Some(Pending::Execute { .. }) => {
                            finish_execute(hooks, queue, |r| {
                                r.sqlstate = sqlstate;
                                r.error = message;
                            });
                        }
                        _ => {}
                    }
                }
                return Ok(replaced.map_or(Replace::Keep, Replace::With));
            }
            b'Z' => {
                // Everything up to the batch's Sync (or the Query) is answered now. Executes still
                // waiting were skipped by the server after an earlier error.
                while let Some(entry) = queue.pop_front() {
                    match entry {
                        Pending::UntilReady {
                            event,
                            started,
                            mut result,
                            masker,
                        } => {
                            if let Some(mut m) = masker {
                                result.absorb(m.report());
                            }
                            finish(hooks, event, started, result);
                            break;
                        }
                        Pending::Execute {
                            event,
                            started,
                            rows,
                            ..
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
                        Pending::Describe(_) => {}
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
                if queue.is_empty() {
                    for generation in self.flow.retired.drain(..) {
                        self.flow.shapes.remove(&generation);
                    }
                }
            }
            _ => {}
        }
        Ok(Replace::Keep)
    }
}

/// Ends the Execute at the front of the queue: its rows and masking counts, then what
/// `complete` adds (its tag, or its error).
fn finish_execute(
    hooks: &impl Hooks,
    queue: &mut VecDeque<Pending>,
    complete: impl FnOnce(&mut CommandResult),
) {
    if let Some(Pending::Execute {
        event,
        started,
        rows,
        masker,
        mut result,
        ..
    }) = queue.pop_front()
    {
        if let Some(mut m) = masker {
            result.absorb(m.report());
        }
        result.rows = rows;
        complete(&mut result);
        finish(hooks, event, started, result);
    }
}

/// Command tags of statements that may rename or renumber table columns.
fn is_ddl(tag: &str) -> bool {
    ["CREATE", "ALTER", "DROP", "IMPORT"]
        .iter()
        .any(|k| tag.starts_with(k))
}
