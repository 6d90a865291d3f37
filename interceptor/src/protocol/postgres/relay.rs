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
    names::{self, Change, EventRef, Forget, Lookup, Names, Portal, Statement},
    reading,
    results::{self, RowScratch, UnmaskableCopy},
    startup::Legs,
    BoxIo, Context, PgError,
};
use crate::protocol::buffers::Inflight;
use crate::{
    command::{
        Command, CommandKind, CommandResult, EventId, Hooks, Masker, ResultColumn, ValueKind,
        Verdict,
    },
    protocol::Ending,
};

use crate::protocol::buffers::READ_CHUNK;

/// What the server still owes an answer for, in order. Each entry knows the Sync segment of
/// the message it answers.
enum Pending {
    /// A simple Query (possibly several statements) or FunctionCall: ends at ReadyForQuery.
    UntilReady {
        event: EventId,
        started: Instant,
        result: CommandResult,
        /// Masks the result set being received (each RowDescription starts a new one).
        masker: Option<Box<dyn Masker>>,
        segment: u64,
        /// What it drops (names), applied when it is answered.
        change: Option<Change>,
    },
    /// An Execute: ends at CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Execute {
        event: EventId,
        started: Instant,
        rows: u64,
        shape: ExecShape,
        masker: Option<Box<dyn Masker>>,
        result: CommandResult,
        segment: u64,
        /// What running it drops (a prepared `DEALLOCATE`, …).
        change: Option<Change>,
    },
    /// A Describe: its RowDescription (or NoData) tells what a later Execute returns.
    Describe(Described, u64),
    /// A Parse, Bind or Close: answered by ParseComplete, BindComplete or CloseComplete (or an
    /// error), which decides whether its change to the names happened.
    Name {
        change: Option<Change>,
        segment: u64,
    },
    /// A Sync (or the implicit one of a simple Query): its ReadyForQuery closes the batch.
    Sync { segment: u64 },
    /// A refused message, replaced by one that fails: the server's ErrorResponse for it is
    /// swapped for `error`. `event` is `None` for refusals of the gateway's own (unknown names).
    Denied {
        event: Option<EventId>,
        started: Instant,
        error: bytes::Bytes,
        message: String,
        /// What the replacement still does on the server, applied as a rejected change.
        change: Option<Change>,
        segment: u64,
    },
}

impl Pending {
    fn segment(&self) -> Option<u64> {
        match self {
            Pending::UntilReady { segment, .. }
            | Pending::Execute { segment, .. }
            | Pending::Describe(_, segment)
            | Pending::Name { segment, .. }
            | Pending::Sync { segment }
            | Pending::Denied { segment, .. } => Some(*segment),
        }
    }

    /// The change to the names this entry waits to settle, if any.
    fn change(&self) -> Option<(u64, &Change)> {
        match self {
            Pending::UntilReady {
                segment, change, ..
            }
            | Pending::Execute {
                segment, change, ..
            }
            | Pending::Name { segment, change }
            | Pending::Denied {
                segment, change, ..
            } => change.as_ref().map(|c| (*segment, c)),
            Pending::Describe(..) | Pending::Sync { .. } => None,
        }
    }
}

/// What a Describe asked about.
#[derive(Debug, Clone)]
enum Described {
    /// A prepared statement, by its generation (see [`Statement::generation`]).
    Statement(u64),
    Portal(String),
    /// A portal the gateway itself asked the server to describe, because nothing else would
    /// tell what its Execute returns (see [`Statements::needs_description`]); the answer is
    /// for the gateway only and is not relayed.
    Hidden(String),
    /// A statement the gateway does not know (the server answers with an error).
    Unknown,
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

/// State shared by the two directions: the answers the server owes, the names the server
/// has confirmed, and the descriptions of prepared statements (by generation), which results
/// of later Executes need.
#[derive(Default)]
struct Flow {
    queue: VecDeque<Pending>,
    names: Names,
    shapes: HashMap<u64, Arc<Vec<Field>>>,
    /// Generations replaced or closed, whose descriptions can go once the server has
    /// answered everything sent before; purged when the queue is empty.
    retired: Vec<u64>,
    /// The COPY TO in progress sends binary rows.
    copy_binary: bool,
    /// Refusals answered since the last ReadyForQuery. An Execute of a refused Parse carries
    /// the Parse's event (its first run reports there); when the server skips that Execute,
    /// the refusal stays the event's result.
    refused: Vec<EventId>,
}

impl Flow {
    /// ReadyForQuery messages the server owes: one per Query, FunctionCall or Sync sent. The
    /// server answers those whatever else it does; a Parse or Bind waiting for a Sync that
    /// never comes is not counted, so it cannot keep an idle session open.
    fn readies_owed(&self) -> u64 {
        self.queue
            .iter()
            .filter(|p| matches!(p, Pending::UntilReady { .. } | Pending::Sync { .. }))
            .count() as u64
    }

    /// Queues what the server will answer for a forwarded message.
    fn expect(
        &mut self,
        expect: Option<Expect>,
        change: Option<Change>,
        segment: u64,
        started: Instant,
        events: &[EventId],
    ) {
        let entry = match expect {
            Some(Expect::Sync) => Pending::Sync { segment },
            Some(Expect::UntilReady(r)) => match r.resolve(events) {
                Some(event) => Pending::UntilReady {
                    event,
                    started,
                    result: CommandResult::default(),
                    masker: None,
                    segment,
                    change,
                },
                None => return,
            },
            Some(Expect::Execute(r, shape)) => match r.resolve(events) {
                Some(event) => Pending::Execute {
                    event,
                    started,
                    rows: 0,
                    shape,
                    masker: None,
                    result: CommandResult::default(),
                    segment,
                    change,
                },
                None => return,
            },
            Some(Expect::Describe(d)) => Pending::Describe(d, segment),
            Some(Expect::Answer) => Pending::Name { change, segment },
            None => return,
        };
        self.queue.push_back(entry);
    }

    fn confirm(&mut self, change: Change) {
        let retired = self.names.confirm(change);
        self.retired.extend(retired);
    }

    fn reject(&mut self, change: &Change) {
        let retired = self.names.reject(change);
        self.retired.extend(retired);
    }
}

type ClientWriter = tokio::sync::Mutex<WriteHalf<BoxIo>>;

/// What the two directions share.
struct Both {
    flow: Mutex<Flow>,
    /// Woken at every ReadyForQuery: a plan waiting on an earlier segment's answer tries again.
    answered: tokio::sync::Notify,
}

pub async fn run<H: Hooks>(ctx: &Context<'_, H>, legs: Legs) -> Result<(), PgError> {
    let (client_read, client_write) = tokio::io::split(legs.client);
    let (server_read, server_write) = tokio::io::split(legs.server);
    let client_write: ClientWriter = tokio::sync::Mutex::new(client_write);
    let both = Both {
        flow: Mutex::new(Flow::default()),
        answered: tokio::sync::Notify::new(),
    };
    // Column sources are resolved only when masking rules name tables, and only with the
    // gateway's own login (credentials) to open a catalog connection.
    let catalog = match (&legs.database, ctx.hooks.wants_sources()) {
        (Some(db), true) if ctx.target.credentials.is_some() => {
            Some(ctx.shared.catalogs.get(&ctx.target.name, db))
        }
        _ => None,
    };
    let database = legs.database.clone().unwrap_or_default();
    // Function side effects are asked of the catalog whenever the gateway has its own login.
    let functions = match &legs.database {
        Some(db) if ctx.target.credentials.is_some() => {
            Some(ctx.shared.catalogs.get(&ctx.target.name, db))
        }
        _ => None,
    };
    let up = client_to_server(
        ctx,
        client_read,
        server_write,
        legs.client_buf,
        &client_write,
        &both,
        functions.as_deref().map(|c| (c, database.as_str())),
    );
    let down = server_to_client(
        ctx,
        server_read,
        &client_write,
        legs.server_buf,
        &both,
        catalog.as_deref().map(|c| (c, database.as_str())),
    );
    tokio::select! {
        relayed = crate::protocol::both_directions(up, down) => relayed,
        () = ctx.idle.expired() => {
            // As PostgreSQL's own idle_session_timeout says it; the client reads it when it
            // next uses the connection. Bounded: a client that reads nothing is idle too.
            let text = format!(
                "interceptor: terminating connection due to idle-session timeout: no traffic \
                 for {} s ([limits] idle_timeout_secs)",
                ctx.idle.after.as_secs()
            );
            let told = tell_client(&client_write, "57P05", &text);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), told).await;
            Err(Ending::IdleTimeout(ctx.idle.after).into())
        }
    }
}

/// What a leg reads into when nothing is pending: enough for the small messages that are
/// most of them. An idle session waits in this read, so this, not [`READ_CHUNK`], is what it
/// holds per leg (issue 22: 2 × 64 KiB were most of an idle session's 169 KiB).
const IDLE_READ: usize = 4 * 1024;

/// Reads more bytes into `buf`; `Ok(false)` at end of stream. With nothing pending, a buffer
/// that grew well past [`IDLE_READ`] is given back before the wait (one at about that size is
/// kept, so a session of small messages does not allocate per read); with part of a message
/// in it, reads are [`READ_CHUNK`] at a time.
async fn fill(reader: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.is_empty() && buf.capacity() >= 2 * IDLE_READ {
        *buf = BytesMut::new();
    }
    let want = if buf.is_empty() {
        IDLE_READ
    } else {
        READ_CHUNK
    };
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    Ok(reader.read_buf(buf).await? > 0)
}

/// A complete message inside a read buffer: its tag and where its body is.
pub(crate) type Frame = (u8, std::ops::Range<usize>);

/// The complete messages at the front of `buf`, and how many bytes they span. Crate-visible
/// for the fuzz targets (`crate::fuzzing`).
pub(crate) fn frames(buf: &[u8], max: usize) -> Result<(Vec<Frame>, usize), FrameError> {
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

async fn tell_client_notice(writer: &ClientWriter, text: &str) {
    let mut out = BytesMut::new();
    backend::error(b'N', "NOTICE", "00000", text).encode(&mut out);
    let mut w = writer.lock().await;
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
}

/// A command to record, owned so the plan can be made before anything is recorded.
struct Planned {
    kind: CommandKind,
    text: String,
    params: usize,
    name: Option<String>,
}

/// Client-side protocol state that outlives a batch.
#[derive(Default)]
struct Statements {
    /// Sync segments sent so far: a Sync, a simple Query or a FunctionCall ends one.
    segment: u64,
    generations: u64,
    /// Statement name → the generation whose first execution reported to its Parse event.
    /// Later executions are recorded (and judged) as commands of their own.
    first_run: HashMap<String, u64>,
    /// The last segment sent with an execution in it (Query, Execute, FunctionCall): code it
    /// runs may change a pinned setting (see [`reading::depends_on_settings`]).
    executed: Option<u64>,
}

/// What one client message means for the batch.
#[derive(Default)]
struct Step {
    /// Index into the batch's commands to record, if this message carries one.
    record: Option<usize>,
    expect: Option<Expect>,
    /// A change to the names: answered by ParseComplete, BindComplete or CloseComplete, or
    /// (a simple Query's drops) applied when the Query is answered.
    change: Option<Change>,
    /// Refused by the gateway itself, before policy (an unknown name): why.
    refuse: Option<String>,
    /// An Execute whose rows nothing describes: the gateway sends a Describe of its portal
    /// just before it.
    describe_first: bool,
    /// The segment the message belongs to.
    segment: u64,
}

enum Expect {
    /// A simple Query or FunctionCall.
    UntilReady(EventRef),
    Execute(EventRef, ExecShape),
    Describe(Described),
    /// A message answered by ParseComplete, BindComplete or CloseComplete (or an error).
    Answer,
    Sync,
}

/// A batch worked out: a step per message and the commands to record.
struct Plan {
    steps: Vec<Step>,
    record: Vec<Planned>,
    /// First-run claims, applied only if the plan is used.
    first_run: Vec<(String, u64)>,
    generations: u64,
    segment: u64,
    /// [`Statements::executed`], with this batch's executions.
    executed: Option<u64>,
}

/// Why a batch cannot be planned (all of it) now.
enum PlanError {
    /// A name depends on the server's answer to this segment: wait for it, then plan again.
    Wait(u64),
    /// A name depends on an earlier segment of this very batch: send the messages before
    /// this index first.
    Cut(usize),
    Frame(FrameError),
}

impl From<FrameError> for PlanError {
    fn from(e: FrameError) -> PlanError {
        PlanError::Frame(e)
    }
}

/// The changes a lookup must look through: the queued ones (sent, not yet answered), then
/// those of the batch being planned.
fn changes<'a>(
    flow: &'a Flow,
    steps: &'a [Step],
) -> impl DoubleEndedIterator<Item = names::Planned<'a>> {
    let queued = flow.queue.iter().filter_map(Pending::change);
    let local = steps
        .iter()
        .filter_map(|s| s.change.as_ref().map(|c| (s.segment, c, true)));
    queued.map(|(s, c)| (s, c, false)).chain(local)
}

impl Statements {
    /// Works out what the messages `found` of `buf` ask for, against the names as the server
    /// will hold them (`flow`). Changes nothing here: [`Statements::adopt`] applies the plan.
    fn plan(&self, buf: &[u8], found: &[Frame], flow: &Flow) -> Result<Plan, PlanError> {
        let mut plan = Plan {
            steps: Vec::with_capacity(found.len()),
            record: Vec::new(),
            first_run: Vec::new(),
            generations: self.generations,
            segment: self.segment,
            executed: self.executed,
        };
        // Where each segment that starts inside this batch starts.
        let mut starts: Vec<(u64, usize)> = vec![(self.segment, 0)];
        for (index, (tag, range)) in found.iter().enumerate() {
            let step = match self.plan_one(*tag, &buf[range.clone()], flow, &mut plan) {
                Ok(step) => step,
                Err(PlanError::Cut(segment)) => {
                    // Send everything before the segment after the one the name came from.
                    let at = starts
                        .iter()
                        .find(|(s, _)| *s as usize > segment)
                        .map_or(index, |(_, i)| *i);
                    return Err(PlanError::Cut(at));
                }
                Err(e) => return Err(e),
            };
            plan.steps.push(step);
            if matches!(tag, b'S' | b'Q' | b'F') {
                plan.segment += 1;
                starts.push((plan.segment, index + 1));
            }
        }
        Ok(plan)
    }

    /// One message of a batch.
    fn plan_one(
        &self,
        tag: u8,
        body: &[u8],
        flow: &Flow,
        plan: &mut Plan,
    ) -> Result<Step, PlanError> {
        let mut step = Step {
            segment: plan.segment,
            ..Step::default()
        };
        let current = plan.segment;
        let record = |plan: &mut Plan, p: Planned, step: &mut Step| {
            plan.record.push(p);
            step.record = Some(plan.record.len() - 1);
            EventRef::Batch(plan.record.len() - 1)
        };
        match tag {
            b'Q' => {
                let text = frontend::query(body)?;
                if let Some(why) = self.after_execution(&text, flow, plan)? {
                    step.refuse = Some(why);
                }
                plan.executed = Some(current);
                let mut forget = names::sql_forget(&text);
                forget.statements.push(String::new());
                forget.portals.push(String::new());
                let event = record(
                    plan,
                    Planned {
                        kind: CommandKind::Statement,
                        text,
                        params: 0,
                        name: None,
                    },
                    &mut step,
                );
                step.change = Some(Change::Forget(forget));
                step.expect = Some(Expect::UntilReady(event));
            }
            b'P' => {
                let (name, text, params) = frontend::parse(body)?;
                if let Some(why) = self.after_execution(&text, flow, plan)? {
                    // Refused, and so never prepared: the name keeps what it had.
                    step.refuse = Some(why);
                    step.expect = Some(Expect::Answer);
                    return Ok(step);
                }
                // A named statement that exists makes the server reject the Parse: the name
                // keeps its statement. (The unnamed one is always replaced.)
                let taken = !name.is_empty()
                    && match names::statement(
                        &flow.names,
                        changes(flow, &plan.steps),
                        current,
                        &name,
                    )
                    .map_err(PlanError::Cut)?
                    {
                        Lookup::Known(_) => true,
                        Lookup::Unknown => false,
                        Lookup::Wait(s) => return Err(PlanError::Wait(s)),
                    };
                // What running it drops (a prepared DEALLOCATE, CLOSE or COMMIT).
                let forget = Some(names::sql_forget(&text)).filter(|f| *f != Forget::default());
                let event = record(
                    plan,
                    Planned {
                        kind: CommandKind::Prepare,
                        text: text.clone(),
                        params,
                        name: Some(name.clone()),
                    },
                    &mut step,
                );
                step.expect = Some(Expect::Answer);
                if !taken {
                    plan.generations += 1;
                    step.change = Some(Change::Parsed {
                        name,
                        statement: Statement {
                            text: text.into(),
                            params,
                            event,
                            generation: plan.generations,
                            forget,
                        },
                    });
                }
            }
            b'B' => {
                let (portal, statement_name, _) = frontend::bind(body)?;
                let formats = frontend::bind_result_formats(body)?;
                step.expect = Some(Expect::Answer);
                match names::statement(
                    &flow.names,
                    changes(flow, &plan.steps),
                    current,
                    &statement_name,
                )
                .map_err(PlanError::Cut)?
                {
                    Lookup::Known(statement) => {
                        let statement = statement.clone();
                        step.change = Some(Change::Bound {
                            name: portal,
                            portal: Portal {
                                statement_name,
                                statement,
                                formats,
                            },
                        });
                    }
                    Lookup::Unknown => {
                        step.refuse = Some(format!(
                            "Bind of prepared statement {statement_name:?}, which the gateway \
                             did not see prepared (SQL-level PREPARE names cannot be bound)"
                        ));
                    }
                    Lookup::Wait(s) => return Err(PlanError::Wait(s)),
                }
            }
            b'D' => {
                step.expect = Some(Expect::Describe(match frontend::describe(body)? {
                    (b'S', name) => match names::statement(
                        &flow.names,
                        changes(flow, &plan.steps),
                        current,
                        &name,
                    ) {
                        Ok(Lookup::Known(s)) => Described::Statement(s.generation),
                        _ => Described::Unknown,
                    },
                    (_, portal) => Described::Portal(portal),
                }));
            }
            b'E' => {
                let portal_name = frontend::execute(body)?;
                let portal = match names::portal(
                    &flow.names,
                    changes(flow, &plan.steps),
                    current,
                    &portal_name,
                )
                .map_err(PlanError::Cut)?
                {
                    Lookup::Known(p) => p.clone(),
                    Lookup::Unknown => {
                        step.refuse = Some(format!(
                            "Execute of portal {portal_name:?}, which the gateway did not see \
                             bound (SQL cursors are read with FETCH)"
                        ));
                        step.expect = Some(Expect::Answer);
                        return Ok(step);
                    }
                    Lookup::Wait(s) => return Err(PlanError::Wait(s)),
                };
                plan.executed = Some(current);
                let statement = &portal.statement;
                let claimed =
                    self.first_run.get(&portal.statement_name) == Some(&statement.generation)
                        || plan.first_run.iter().any(|(n, g)| {
                            *n == portal.statement_name && *g == statement.generation
                        });
                let event = if claimed {
                    record(
                        plan,
                        Planned {
                            kind: CommandKind::Execute,
                            text: statement.text.to_string(),
                            params: statement.params,
                            name: Some(portal.statement_name.clone()),
                        },
                        &mut step,
                    )
                } else {
                    plan.first_run
                        .push((portal.statement_name.clone(), statement.generation));
                    statement.event
                };
                step.change = statement.forget.clone().map(Change::Forget);
                step.describe_first =
                    Self::needs_description(flow, plan, &portal_name, statement.generation);
                let shape = ExecShape {
                    portal: portal_name,
                    statement: Some(statement.generation),
                    formats: portal.formats.clone(),
                    ..ExecShape::default()
                };
                step.expect = Some(Expect::Execute(event, shape));
            }
            b'F' => {
                let oid = frontend::function_call(body)?;
                plan.executed = Some(current);
                let event = record(
                    plan,
                    Planned {
                        kind: CommandKind::FunctionCall,
                        text: format!("function call (oid {oid})"),
                        params: 0,
                        name: None,
                    },
                    &mut step,
                );
                step.expect = Some(Expect::UntilReady(event));
            }
            b'C' => {
                let (which, name) = frontend::close(body)?;
                step.expect = Some(Expect::Answer);
                step.change = Some(Change::Closed {
                    statement: which == b'S',
                    name,
                });
            }
            b'S' => step.expect = Some(Expect::Sync),
            // Flush, COPY data/done/fail, Terminate: relayed as they are.
            b'H' | b'd' | b'c' | b'f' | b'X' => {}
            _ => {
                return Err(PlanError::Frame(FrameError::Malformed {
                    what: "client",
                    why: "unknown message type",
                }))
            }
        }
        Ok(step)
    }
}

impl Statements {
    /// The plan is committed: its first-run claims and counters become the state.
    fn adopt(&mut self, plan: &Plan) {
        for (name, generation) in &plan.first_run {
            self.first_run.insert(name.clone(), *generation);
        }
        self.generations = plan.generations;
        self.segment = plan.segment;
        self.executed = plan.executed;
    }

    /// Whether an Execute of `portal` (bound to statement `generation`) would return rows
    /// nothing describes. Rows are masked by their description: the portal's, when the
    /// client asked for it since the portal's last Execute, or the statement's, when the
    /// server described it (or will, for a Describe already sent or in this batch). A client
    /// may ask for neither, e.g. asyncpg without a statement cache, which describes an
    /// unnamed statement, then Parses it again without a Describe before each execution.
    /// Guessing that the old description still holds would be guessing what the server runs,
    /// so the gateway asks the server: it sends a Describe of the portal first.
    fn needs_description(flow: &Flow, plan: &Plan, portal: &str, generation: u64) -> bool {
        if flow.shapes.contains_key(&generation) {
            return false;
        }
        let planned = plan.steps.iter().rev().filter_map(|s| s.expect.as_ref());
        for expect in planned {
            match expect {
                Expect::Describe(Described::Portal(p)) if p == portal => return false,
                Expect::Describe(Described::Statement(g)) if *g == generation => return false,
                Expect::Execute(_, shape) if shape.portal == portal => return true,
                _ => {}
            }
        }
        for pending in flow.queue.iter().rev() {
            match pending {
                Pending::Describe(Described::Portal(p) | Described::Hidden(p), _)
                    if p == portal =>
                {
                    return false
                }
                Pending::Describe(Described::Statement(g), _) if *g == generation => return false,
                Pending::Execute { shape, .. } if shape.portal == portal => return true,
                _ => {}
            }
        }
        true
    }

    /// Whether `text` may be sent now, given the executions before it (see
    /// [`reading::depends_on_settings`]): `Ok(None)` yes; `Ok(Some(why))` never, refuse it;
    /// `Err(Cut)` after the earlier segments of this batch are sent; `Err(Wait)` after the
    /// server has answered them.
    fn after_execution(
        &self,
        text: &str,
        flow: &Flow,
        plan: &Plan,
    ) -> Result<Option<String>, PlanError> {
        let Some(executed) = plan.executed else {
            return Ok(None);
        };
        if !reading::depends_on_settings(text) {
            return Ok(None);
        }
        if executed == plan.segment {
            return Ok(Some(
                "a text with backslashes or non-ASCII characters after an executed statement \
                 in the same pipeline segment (code the server runs could change how it reads \
                 the text, and the server reports that only at Sync): send Sync first"
                    .to_owned(),
            ));
        }
        if executed >= self.segment {
            return Err(PlanError::Cut(executed as usize));
        }
        let unanswered = flow
            .queue
            .iter()
            .any(|p| p.segment().is_some_and(|s| s <= executed));
        if unanswered {
            return Err(PlanError::Wait(executed));
        }
        Ok(None)
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
        // A Bind of a statement that cannot exist (clients' names never start with \x01).
        b'B' => {
            let portal = frontend::bind(body).map(|(p, _, _)| p).unwrap_or_default();
            backend::message(b'B', |b| {
                b.put_slice(portal.as_bytes());
                b.put_u8(0);
                b.put_slice(b"\x01interceptor refused statement\0");
                b.put_i16(0);
                b.put_i16(0);
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

/// `Describe` of a portal, sent by the gateway for itself (see [`Described::Hidden`]).
fn describe_portal(portal: &str) -> codec::Message {
    use bytes::BufMut as _;
    backend::message(b'D', |b| {
        b.put_u8(b'P');
        b.put_slice(portal.as_bytes());
        b.put_u8(0);
    })
}

async fn client_to_server<H: Hooks>(
    ctx: &Context<'_, H>,
    mut reader: ReadHalf<BoxIo>,
    mut server: WriteHalf<BoxIo>,
    mut buf: BytesMut,
    client_write: &ClientWriter,
    both: &Both,
    functions: Option<(&Catalog, &str)>,
) -> Result<(), PgError> {
    let (pending, answered) = (&both.flow, &both.answered);
    let max = ctx.target.max_message_bytes;
    let mut statements = Statements::default();
    let mut inflight = Inflight::new(ctx.buffers);
    loop {
        let (mut found, mut consumed) = match frames(&buf, max) {
            Ok(f) => f,
            Err(e) => {
                tell_client(client_write, "08P01", &format!("interceptor: {e}")).await;
                return Err(PgError::Client(e));
            }
        };
        if found.is_empty() {
            let announced = codec::announced_len(&buf);
            if let Err(e) = inflight.before_read(&mut buf, announced).await {
                tell_client(client_write, "53200", &format!("interceptor: {e}")).await;
                return Err(e.into());
            }
            if !fill(&mut reader, &mut buf).await? {
                let _ = server.shutdown().await;
                return Ok(());
            }
            continue;
        }

        // 1. Work out what the messages ask for, against the names as the server will hold
        // them. A name that depends on an unanswered earlier segment waits for the answer.
        let plan = loop {
            let attempt = {
                let flow = pending.lock().unwrap_or_else(|p| p.into_inner());
                statements.plan(&buf, &found, &flow)
            };
            match attempt {
                Ok(plan) => break plan,
                Err(PlanError::Cut(at)) => {
                    found.truncate(at);
                    consumed = found.last().map_or(0, |(_, r)| r.end);
                }
                Err(PlanError::Wait(segment)) => {
                    // Flush what we sent, so the server answers it.
                    server.flush().await?;
                    let notified = answered.notified();
                    tokio::pin!(notified);
                    // Registered before the check, so an answer in between is not missed.
                    notified.as_mut().enable();
                    let still = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .queue
                        .iter()
                        .any(|p| p.segment().is_some_and(|s| s <= segment));
                    if still {
                        notified.await;
                    }
                }
                Err(PlanError::Frame(e)) => {
                    tell_client(client_write, "08P01", &format!("interceptor: {e}")).await;
                    return Err(PgError::Client(e));
                }
            }
        };
        let record = &plan.record;

        // 2. Decide and record every command of the batch with one commit, before anything
        // is forwarded.
        let mut decisions = if record.is_empty() {
            Vec::new()
        } else {
            let commands: Vec<Command<'_>> = record
                .iter()
                .map(|p| Command::sql(p.kind, &p.text, p.params, p.name.as_deref()))
                .collect();
            if let Some((catalog, database)) = functions {
                vouch_functions(ctx, catalog, database, &commands).await;
            }
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
        for step in &plan.steps {
            if let Some(why) = &step.refuse {
                ctx.hooks.note(
                    "refused",
                    serde_json::json!({ "phase": "names", "reason": why }),
                );
            }
        }

        // 3. Refused messages are replaced; the rest go as they came. Expect the answers first.
        let mut out = BytesMut::new();
        let mut substituted = false;
        statements.adopt(&plan);
        {
            let mut flow = pending.lock().unwrap_or_else(|p| p.into_inner());
            let started = Instant::now();
            for ((tag, range), step) in found.iter().zip(plan.steps) {
                let refusal = match (&step.refuse, step.record) {
                    (Some(why), _) => Some((None, format!("refused: {why}"))),
                    (None, Some(i)) => match &decisions[i].verdict {
                        Verdict::Deny { message } => {
                            Some((Some(decisions[i].event), message.clone()))
                        }
                        Verdict::Allow => None,
                        // Resolved above; an unresolved hold never runs.
                        Verdict::Hold { id, .. } => Some((
                            Some(decisions[i].event),
                            format!("approval {id} unresolved"),
                        )),
                    },
                    (None, None) => None,
                };
                let frame = range.start - 5..range.end;
                let segment = step.segment;
                let change = step.change.map(|c| c.resolved(&events));
                let Some((event, message)) = refusal else {
                    if step.describe_first {
                        let portal = frontend::execute(&buf[range.clone()]).unwrap_or_default();
                        describe_portal(&portal).encode(&mut out);
                        flow.queue
                            .push_back(Pending::Describe(Described::Hidden(portal), segment));
                        substituted = true;
                    }
                    out.extend_from_slice(&buf[frame]);
                    flow.expect(step.expect, change, segment, started, &events);
                    continue;
                };
                substituted = true;
                let mut error = BytesMut::new();
                backend::error(b'E', "ERROR", "42501", &format!("interceptor: {message}"))
                    .encode(&mut error);
                // What a refused message still does on the server is applied as a rejected
                // change (a Parse drops the old unnamed statement; a Query its names).
                flow.queue.push_back(Pending::Denied {
                    event,
                    started,
                    error: error.freeze(),
                    message,
                    change,
                    segment,
                });
                substitute(*tag, &buf[range.clone()]).encode(&mut out);
                if matches!(*tag, b'Q' | b'F') {
                    flow.queue.push_back(Pending::Sync { segment });
                }
            }
            ctx.counters
                .owed
                .store(flow.readies_owed(), Ordering::Relaxed);
        }
        if substituted {
            server.write_all(&out).await?;
        } else {
            server.write_all(&buf[..consumed]).await?;
        }
        ctx.counters
            .up
            .fetch_add(consumed as u64, Ordering::Relaxed);
        buf.advance(consumed);
        inflight.consumed(&mut buf);
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
    both: &Both,
    catalog: Option<(&Catalog, &str)>,
) -> Result<(), PgError> {
    let (pending, answered) = (&both.flow, &both.answered);
    let max = ctx.target.max_message_bytes;
    let mut scratch = RowScratch::default();
    let mut out = BytesMut::new();
    // Masked rows of the batch, encoded one after the other (no allocation per row).
    let mut rewritten = BytesMut::new();
    let mut inflight = Inflight::new(ctx.buffers);
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
            let announced = codec::announced_len(&buf);
            if let Err(e) = inflight.before_read(&mut buf, announced).await {
                tell_client(client, "53200", &format!("interceptor: {e}")).await;
                return Err(e.into());
            }
            let why = match fill(&mut reader, &mut buf).await {
                Ok(true) => continue,
                Ok(false) => "the server closed the connection".to_owned(),
                Err(e) => format!("the connection to the server failed: {e}"),
            };
            let unanswered = fail_unanswered(ctx.hooks, pending, &why);
            if unanswered > 0 {
                tell_client(client, "08006", &format!("interceptor: {why}")).await;
            }
            let _ = client.lock().await.shutdown().await;
            return match unanswered {
                0 if why.starts_with("the server closed") => Ok(()),
                _ => Err(PgError::UpstreamLost { unanswered, why }),
            };
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
            let observed = found.iter().enumerate().try_for_each(|(i, (tag, range))| {
                match results.observe(*tag, &buf[range.clone()])? {
                    Replace::Keep => {}
                    other => replaced.push((i, other)),
                }
                Ok::<_, Stop>(())
            });
            ctx.counters
                .owed
                .store(flow.readies_owed(), Ordering::Relaxed);
            observed
        };
        if let Err(stop) = observed {
            let (sqlstate, text) = match &stop {
                Stop::Frame(e) => (
                    "08P01",
                    format!("interceptor: invalid message from the server: {e}"),
                ),
                Stop::Copy(e) => ("42501", format!("interceptor: {e}")),
                Stop::Unpinned(e) => ("0A000", format!("interceptor: {e}")),
            };
            tell_client(client, sqlstate, &text).await;
            return Err(match stop {
                Stop::Frame(e) => PgError::Server(e),
                Stop::Copy(e) => PgError::Denied(e.to_string()),
                Stop::Unpinned(e) => PgError::Unpinned(e),
            });
        }
        if found.iter().any(|(tag, _)| *tag == b'Z') {
            answered.notify_waiters();
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
        inflight.consumed(&mut buf);
        // The rewritten rows and the output of a large batch go back to their usual size.
        for spare in [&mut out, &mut rewritten] {
            if spare.capacity() > 2 * crate::protocol::buffers::LARGE {
                *spare = BytesMut::new();
            }
        }
    }
}

/// Asks the catalog whether the functions the commands call may have side effects. A failed
/// lookup vouches for nothing: those calls stay "may have side effects".
async fn vouch_functions<H: Hooks>(
    ctx: &Context<'_, H>,
    catalog: &Catalog,
    database: &str,
    commands: &[Command<'_>],
) {
    let names = ctx.hooks.functions_to_vouch(commands);
    if names.is_empty() {
        return;
    }
    let Some(upstream) = catalog_upstream(ctx, database) else {
        return;
    };
    match catalog.side_effect_free(&upstream, &names).await {
        Ok(facts) => ctx.hooks.vouch_functions(facts),
        Err(e) => catalog_failed(ctx, &e),
    }
}

/// How the gateway's own catalog session reaches `database` of this session's target.
fn catalog_upstream<'a, H: Hooks>(
    ctx: &'a Context<'_, H>,
    database: &'a str,
) -> Option<catalog::Upstream<'a>> {
    let tls = ctx.shared.upstream_tls.get(&ctx.target.name)?;
    Some(catalog::Upstream {
        target: ctx.target,
        addr: ctx.upstream_addr,
        tls,
        database,
    })
}

/// A catalog lookup failed: logged and noted; callers fall back to the safe side.
fn catalog_failed<H: Hooks>(ctx: &Context<'_, H>, e: &PgError) {
    tracing::warn!(error = %e, target = %ctx.target.name, "catalog lookup failed");
    ctx.hooks.note(
        "error",
        serde_json::json!({ "phase": "catalog", "error": e.to_string() }),
    );
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
    let Some(upstream) = catalog_upstream(ctx, database) else {
        return;
    };
    if let Err(e) = catalog.resolve(&upstream, &keys).await {
        // Unresolved columns are matched by name: more masking, never less.
        catalog_failed(ctx, &e);
    }
}

/// Why the server-to-client direction stops.
enum Stop {
    Frame(FrameError),
    Copy(UnmaskableCopy),
    /// The server left a pinned setting (see `reading`): nothing it says can be trusted to
    /// match what the gateway judged.
    Unpinned(String),
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
                change,
                ..
            }) = queue.pop_front()
            {
                if let Some(change) = &change {
                    self.flow.reject(change);
                }
                if let Some(event) = event {
                    finish(hooks, event, started, refusal(message));
                    self.flow.refused.push(event);
                }
                return Ok(Replace::With(error));
            }
        }
        let queue = &mut self.flow.queue;
        match tag {
            b'1' | b'2' | b'3' => {
                if let Some(Pending::Name { .. }) = queue.front() {
                    if let Some(Pending::Name {
                        change: Some(change),
                        ..
                    }) = queue.pop_front()
                    {
                        self.flow.confirm(change);
                    }
                }
            }
            b'S' => reading::check_status(body).map_err(Stop::Unpinned)?,
            b'T' => {
                let fields = backend::row_description(body)?;
                match queue.front_mut() {
                    Some(Pending::Describe(Described::Statement(generation), _)) => {
                        let generation = *generation;
                        queue.pop_front();
                        self.flow.shapes.insert(generation, Arc::new(fields));
                    }
                    Some(Pending::Describe(
                        Described::Portal(portal) | Described::Hidden(portal),
                        _,
                    )) => {
                        let portal = std::mem::take(portal);
                        let hidden = matches!(
                            queue.pop_front(),
                            Some(Pending::Describe(Described::Hidden(_), _))
                        );
                        // The next Execute of this portal returns these columns.
                        let next = queue.iter_mut().find_map(|p| match p {
                            Pending::Execute { shape, .. } if shape.portal == portal => Some(shape),
                            _ => None,
                        });
                        if let Some(shape) = next {
                            shape.described = Some(Arc::new(fields));
                        }
                        if hidden {
                            return Ok(Replace::With(bytes::Bytes::new()));
                        }
                    }
                    Some(Pending::UntilReady { masker, .. }) => {
                        *masker = results::masker(hooks, &fields, None, self.catalog);
                    }
                    _ => {}
                }
            }
            b'n' => {
                if matches!(queue.front(), Some(Pending::Describe(..))) {
                    if let Some(Pending::Describe(Described::Hidden(_), _)) = queue.pop_front() {
                        return Ok(Replace::With(bytes::Bytes::new()));
                    }
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
                        let change = finish_execute(hooks, queue, |r| r.tag = Some(tag_text));
                        if let Some(change) = change {
                            self.flow.confirm(change);
                        }
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
                            let change = finish_execute(hooks, queue, |r| {
                                r.sqlstate = sqlstate;
                                r.error = message;
                            });
                            if let Some(change) = change {
                                self.flow.reject(&change);
                            }
                        }
                        // The Parse, Bind or Close failed: its change did not happen (but a
                        // failed unnamed Parse or Bind still dropped the old one).
                        Some(Pending::Name { .. }) => {
                            if let Some(Pending::Name {
                                change: Some(change),
                                ..
                            }) = queue.pop_front()
                            {
                                self.flow.reject(&change);
                            }
                        }
                        Some(Pending::Describe(..)) => {
                            queue.pop_front();
                        }
                        _ => {}
                    }
                }
                return Ok(replaced.map_or(Replace::Keep, Replace::With));
            }
            b'Z' => {
                // Everything up to the batch's Sync (or the Query) is answered now. What is
                // still waiting was skipped by the server after an earlier error: Executes did
                // not run, and name changes did not happen.
                let mut changes = Vec::new();
                while let Some(entry) = queue.pop_front() {
                    match entry {
                        Pending::UntilReady {
                            event,
                            started,
                            mut result,
                            masker,
                            change,
                            ..
                        } => {
                            if let Some(mut m) = masker {
                                result.absorb(m.report());
                            }
                            finish(hooks, event, started, result);
                            changes.extend(change);
                            break;
                        }
                        Pending::Execute { event, .. } if self.flow.refused.contains(&event) => {}
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
                        Pending::Describe(..) | Pending::Name { .. } => {}
                        Pending::Sync { .. } => break,
                        // The server skipped it after an earlier error: it was refused anyway.
                        Pending::Denied {
                            event,
                            started,
                            message,
                            ..
                        } => {
                            if let Some(event) = event {
                                finish(hooks, event, started, refusal(message));
                            }
                        }
                    }
                }
                self.flow.refused.clear();
                for change in changes {
                    self.flow.confirm(change);
                }
                // Outside a transaction block, the transaction that held the portals is over.
                if body.first() == Some(&b'I') {
                    self.flow.names.end_transaction();
                }
                if self.flow.queue.is_empty() {
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

/// The result of a command the gateway refused (what its client was told, SQLSTATE 42501).
fn refusal(message: String) -> CommandResult {
    CommandResult {
        sqlstate: Some("42501".to_owned()),
        error: Some(message),
        ..CommandResult::default()
    }
}

/// The server is gone: every command it has not answered gets that as its result, so the
/// journal never shows a statement that simply has none. Returns how many there were.
fn fail_unanswered(hooks: &impl Hooks, flow: &Mutex<Flow>, why: &str) -> usize {
    let mut flow = flow.lock().unwrap_or_else(|p| p.into_inner());
    let refused = std::mem::take(&mut flow.refused);
    let mut count = 0;
    let lost = |rows: u64| CommandResult {
        rows,
        sqlstate: Some("08006".to_owned()),
        error: Some(format!("no answer: {why}")),
        ..CommandResult::default()
    };
    while let Some(entry) = flow.queue.pop_front() {
        let (event, started, result) = match entry {
            Pending::UntilReady {
                event,
                started,
                result,
                ..
            } => (event, started, lost(result.rows)),
            Pending::Execute {
                event,
                started,
                rows,
                ..
            } if !refused.contains(&event) => (event, started, lost(rows)),
            Pending::Denied {
                event: Some(event),
                started,
                message,
                ..
            } => (event, started, refusal(message)),
            _ => continue,
        };
        finish(hooks, event, started, result);
        count += 1;
    }
    count
}

/// Ends the Execute at the front of the queue: its rows and masking counts, then what
/// `complete` adds (its tag, or its error). Returns what running it drops.
fn finish_execute(
    hooks: &impl Hooks,
    queue: &mut VecDeque<Pending>,
    complete: impl FnOnce(&mut CommandResult),
) -> Option<Change> {
    if let Some(Pending::Execute {
        event,
        started,
        rows,
        masker,
        mut result,
        change,
        ..
    }) = queue.pop_front()
    {
        if let Some(mut m) = masker {
            result.absorb(m.report());
        }
        result.rows = rows;
        complete(&mut result);
        finish(hooks, event, started, result);
        return change;
    }
    None
}

/// Command tags of statements that may rename or renumber table columns.
fn is_ddl(tag: &str) -> bool {
    ["CREATE", "ALTER", "DROP", "IMPORT"]
        .iter()
        .any(|k| tag.starts_with(k))
}
