//! The command phase: one command from the agent, one answer from the server, in turn.
//!
//! Why this exists: it is where statements are judged. Each `COM_QUERY` and
//! `COM_STMT_PREPARE` text becomes a [`Command`] the hooks decide and journal before a byte
//! of it is forwarded; a refusal is answered by the gateway with ERR 1227 (SQLSTATE 42000)
//! naming the rule and the journal event, and the connection stays usable. A held command
//! just waits (MySQL has no channel for notices) until a human decides or the hold times out.
//!
//! Commands the relay does not judge are either harmless and relayed (`COM_PING`,
//! `COM_INIT_DB`, `COM_STATISTICS`, `COM_RESET_CONNECTION`, `COM_SET_OPTION`, the
//! `COM_STMT_*` housekeeping of a known statement), or refused (`COM_FIELD_LIST`, replication
//! and debugging commands). `COM_STMT_FETCH` from a read-only cursor is judged as an execution
//! of its statement; `COM_CHANGE_USER` as a `login` command (refused unless a policy allows
//! it), run upstream as the reset it amounts to under the gateway's own login. The
//! answers are followed packet by packet: result sets (several for multi-statements), with
//! text and binary rows masked.

use std::sync::atomic::Ordering;

use tokio::{
    io::{AsyncWriteExt as _, BufStream},
    time::Instant,
};

use super::{
    codec::{self, read_reserved, Packet, ReadError},
    results::{self, ColumnDef},
    startup::Legs,
    statements::{Prepared, Statements},
    threads::{self, Registration},
    Context, MyError,
};
use crate::{
    command::{Command, CommandKind, CommandResult, EventId, Hooks, Operation, Verdict},
    protocol::buffers::Inflight,
    protocol::{postgres::BoxIo, Ending},
};

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_STATISTICS: u8 = 0x09;
const COM_PING: u8 = 0x0E;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1A;
const COM_SET_OPTION: u8 = 0x1B;
const COM_STMT_FETCH: u8 = 0x1C;
const COM_RESET_CONNECTION: u8 = 0x1F;

/// The server status flag that says `NO_BACKSLASH_ESCAPES` is on.
const SERVER_STATUS_NO_BACKSLASH_ESCAPES: u16 = 0x0200;
/// Status flags of a cursor: the execute opened one (no rows follow its column definitions);
/// a fetch sent the last row (the server closed it).
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;
const SERVER_STATUS_LAST_ROW_SENT: u16 = 0x0080;

/// `COM_STMT_EXECUTE` flags: the only cursor the gateway follows is the read-only one.
const CURSOR_TYPE_READ_ONLY: u8 = 0x01;

/// Which row encoding an answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    Text,
    Binary,
}

struct Relay<'c, 'a, H: Hooks> {
    ctx: &'c Context<'a, H>,
    client: BufStream<BoxIo>,
    server: BufStream<BoxIo>,
    statements: Statements,
    max: usize,
    /// Whether the agent turned multi-statements on (`COM_SET_OPTION`, or its capabilities).
    multi_statements: bool,
    /// The statement whose execution asked for a read-only cursor, while its answer is read.
    opening_cursor: Option<u32>,
    /// The agent's connection id, registered for as long as the session lasts.
    _thread: Registration,
    /// The sequence id of the next packet to the agent. The relay numbers what it sends the
    /// agent itself, from the id after the command's last packet: a masked payload may take
    /// another number of packets than the server's did (see [`codec`]).
    client_seq: u8,
    /// The budget reservation of the server's payload being relayed, if it is large.
    server_room: Inflight<'a>,
}

/// Runs the command phase until the agent quits or either side fails.
pub async fn run<H: Hooks>(ctx: &Context<'_, H>, legs: Legs) -> Result<(), MyError> {
    let mut relay = Relay {
        ctx,
        client: legs.client,
        server: legs.server,
        statements: Statements::default(),
        max: ctx.target.max_message_bytes,
        multi_statements: legs.capabilities & super::handshake::caps::MULTI_STATEMENTS != 0,
        opening_cursor: None,
        _thread: legs.thread,
        client_seq: 0,
        server_room: Inflight::new(ctx.buffers),
    };
    // The budget reservation of the agent's command being handled, if it is large.
    let mut client_room = Inflight::new(ctx.buffers);
    loop {
        client_room.release();
        let next = tokio::select! {
            next = read_reserved(&mut relay.client, relay.max, Some(&mut client_room)) => next,
            () = ctx.idle.expired() => return Err(Ending::IdleTimeout(ctx.idle.after).into()),
        };
        let packet = match next {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(ReadError::Io(e)) => return Err(e.into()),
            // A payload the gateway will not hold (too large, or no room in the memory
            // budget): the agent is told why, and its session ends.
            Err(e) => {
                let (code, sqlstate) = match e {
                    ReadError::Budget(_) => (codec::ER_OUT_OF_RESOURCES, "HY000"),
                    _ => (codec::ER_NET_PACKET_TOO_LARGE, "08S01"),
                };
                relay
                    .tell(0, code, sqlstate, &format!("interceptor: {e}"))
                    .await;
                return Err(MyError::from_client(e));
            }
        };
        ctx.counters.up.fetch_add(
            (packet.body.len() + 4 * packet.parts()) as u64,
            Ordering::Relaxed,
        );
        relay.client_seq = packet.next_seq();
        // Every command opens an exchange, so its sequence id is 0. The server ends a session
        // whose client sends another (1156, packets out of order) without running it; the
        // gateway does the same before judging or journaling a statement that would not run.
        if packet.seq != 0 {
            let text = "interceptor: got packets out of order (a command's sequence id is 0)";
            relay
                .tell(
                    packet.next_seq(),
                    codec::ER_NET_PACKETS_OUT_OF_ORDER,
                    "08S01",
                    text,
                )
                .await;
            return Err(MyError::Client(codec::FrameError::Malformed {
                what: "command packet",
                why: "its sequence id is not 0",
            }));
        }
        if !relay.command(packet).await? {
            return Ok(());
        }
    }
}

impl<H: Hooks> Relay<'_, '_, H> {
    /// Handles one command; `false` when the session is over (`COM_QUIT`).
    async fn command(&mut self, packet: Packet) -> Result<bool, MyError> {
        match packet.tag() {
            COM_QUIT => {
                self.forward(&packet).await?;
                return Ok(false);
            }
            COM_QUERY => self.query(packet).await?,
            COM_STMT_PREPARE => self.prepare(packet).await?,
            COM_STMT_EXECUTE => self.execute(packet).await?,
            COM_STMT_FETCH => self.fetch(packet).await?,
            COM_STMT_SEND_LONG_DATA | COM_STMT_CLOSE => {
                // No answer either way. Data for, or the close of, an id the gateway does
                // not know goes nowhere (the server might know it under another meaning).
                let id = statement_id(&packet);
                if id.is_some_and(|id| self.statements.contains(id)) {
                    if packet.tag() == COM_STMT_CLOSE {
                        if let Some(id) = id {
                            self.statements.remove(id);
                        }
                    }
                    self.forward(&packet).await?;
                }
            }
            COM_STMT_RESET => match statement_id(&packet) {
                Some(id) if self.statements.contains(id) => {
                    // A reset closes the statement's cursor on the server.
                    if let Some(prepared) = self.statements.get_mut(id) {
                        prepared.cursor = None;
                    }
                    self.simple(&packet).await?;
                }
                _ => self.unknown_statement(&packet).await?,
            },
            COM_INIT_DB => {
                let db = String::from_utf8_lossy(packet.body.get(1..).unwrap_or_default());
                self.ctx
                    .hooks
                    .note("init_db", serde_json::json!({ "database": db }));
                self.simple(&packet).await?;
            }
            COM_PING | COM_STATISTICS => {
                self.simple(&packet).await?;
            }
            COM_RESET_CONNECTION => {
                self.statements.clear();
                self.simple(&packet).await?;
            }
            COM_SET_OPTION => {
                // 0: multi-statements on, 1: off. Every statement of a text is judged either
                // way; this is tracked for the journal.
                let on = packet.body.get(1..3) == Some(&[0, 0]);
                self.multi_statements = on;
                self.ctx
                    .hooks
                    .note("set_option", serde_json::json!({ "multi_statements": on }));
                self.simple(&packet).await?;
            }
            COM_CHANGE_USER => self.change_user(packet).await?,
            other => {
                let why =
                    format!("command 0x{other:02x} is not supported by the gateway (refused)");
                self.refuse_command(&packet, &why).await?
            }
        }
        Ok(true)
    }

    /// A text statement (possibly several): judged, then forwarded or refused.
    async fn query(&mut self, packet: Packet) -> Result<(), MyError> {
        let Some(text) = self.text_of(&packet).await? else {
            return Ok(());
        };
        if let Some((scope, id)) = threads::parse_kill(&text) {
            if let Some(thread) = self.ctx.shared.threads.thread(&self.ctx.target.name, id) {
                return self.cancel(&packet, scope, id, thread).await;
            }
        }
        let started = Instant::now();
        let command = Command::sql(CommandKind::Statement, &text, 0, None);
        let Some(event) = self.decide(&packet, &command, started).await? else {
            return Ok(());
        };
        self.forward(&packet).await?;
        self.answer(event, started, Rows::Text).await
    }

    /// A `KILL` of a connection id the gateway gave one of this target's sessions: the gateway
    /// runs it as a `KILL` of that session's server thread, on this session's own login, and
    /// relays the answer. Like a PostgreSQL cancel request it is noted, not judged: it can only
    /// end the agent's own work (see [`threads`]).
    async fn cancel(
        &mut self,
        packet: &Packet,
        scope: threads::Scope,
        id: u32,
        thread: u32,
    ) -> Result<(), MyError> {
        let mut body = vec![COM_QUERY];
        body.extend_from_slice(threads::kill_statement(scope, thread).as_bytes());
        let ok = self
            .simple(&Packet {
                seq: packet.seq,
                body,
            })
            .await?;
        let scope = match scope {
            threads::Scope::Query => "query",
            threads::Scope::Connection => "connection",
        };
        self.ctx.hooks.note(
            "cancel",
            serde_json::json!({ "ok": ok, "scope": scope, "id": id, "thread": thread }),
        );
        Ok(())
    }

    /// `COM_CHANGE_USER`: a new login inside the session, judged as a `login` command (no rule
    /// of the shipped default allows one, so it is refused unless a policy says otherwise).
    ///
    /// The gateway logs in upstream with the target's credentials, whoever the agent names, so
    /// what an allowed change of user can do on the server is what a new login as the same
    /// account does: reset the session and use the database asked for. That is what the server
    /// is asked to run (`COM_RESET_CONNECTION`, then `COM_INIT_DB`), and the agent is told OK.
    async fn change_user(&mut self, packet: Packet) -> Result<(), MyError> {
        let Some(asked) = ChangeUser::parse(&packet.body) else {
            return self
                .refuse_command(&packet, "malformed COM_CHANGE_USER (refused)")
                .await;
        };
        let readable = |c: u16| {
            u8::try_from(c)
                .ok()
                .and_then(super::handshake::readable_collation)
                .is_some()
        };
        if asked.collation.is_some_and(|c| !readable(c)) {
            let why = format!(
                "COM_CHANGE_USER with collation {} is refused: the gateway reads statements only \
                 in utf8mb4, utf8mb3, latin1 or ascii",
                asked.collation.unwrap_or_default()
            );
            return self.refuse_command(&packet, &why).await;
        }
        let operation = Operation::Login {
            user: &asked.user,
            database: asked.database.as_deref(),
        };
        let text = operation.canonical();
        let command = Command {
            kind: CommandKind::Login,
            text: &text,
            params: 0,
            name: None,
            operation,
        };
        let started = Instant::now();
        let Some(event) = self.decide(&packet, &command, started).await? else {
            return Ok(());
        };
        self.statements.clear();
        let mut steps = vec![Packet {
            seq: packet.seq,
            body: vec![COM_RESET_CONNECTION],
        }];
        if let Some(db) = &asked.database {
            let mut body = vec![COM_INIT_DB];
            body.extend_from_slice(db.as_bytes());
            steps.push(Packet {
                seq: packet.seq,
                body,
            });
        }
        self.ctx.counters.owed.store(1, Ordering::Relaxed);
        let mut answer = None;
        for step in steps {
            self.forward(&step).await?;
            let reply = self.server_packet().await?;
            if reply.is_err() {
                let result = self.relay_error(&reply).await?;
                self.ctx.counters.owed.store(0, Ordering::Relaxed);
                self.finish(event, started, result);
                return Ok(());
            }
            self.check_status(&reply)?;
            answer = Some(reply);
        }
        if let Some(ok) = answer {
            self.send_client(&ok).await?;
            self.flush_client().await?;
        }
        self.ctx.counters.owed.store(0, Ordering::Relaxed);
        let result = CommandResult {
            tag: Some("CHANGE USER".to_owned()),
            ..CommandResult::default()
        };
        self.finish(event, started, result);
        Ok(())
    }

    /// `COM_STMT_PREPARE`: the text is judged here; the id is mirrored from the server's OK.
    async fn prepare(&mut self, packet: Packet) -> Result<(), MyError> {
        let Some(text) = self.text_of(&packet).await? else {
            return Ok(());
        };
        let started = Instant::now();
        let command = Command::sql(CommandKind::Prepare, &text, 0, None);
        let Some(event) = self.decide(&packet, &command, started).await? else {
            return Ok(());
        };
        self.forward(&packet).await?;
        self.ctx.counters.owed.store(1, Ordering::Relaxed);
        let first = self.server_packet().await?;
        if !first.is_ok() {
            let result = self.relay_error(&first).await?;
            self.finish(event, started, result);
            return Ok(());
        }
        let mut r = codec::Reader::new(&first.body, "COM_STMT_PREPARE_OK");
        let parsed = (|| -> Result<(u32, u16, u16), codec::FrameError> {
            r.u8()?;
            Ok((r.u32()?, r.u16()?, r.u16()?))
        })();
        let (id, columns, params) = parsed.map_err(MyError::Server)?;
        self.send_client(&first).await?;
        // Parameter definitions, then column definitions, each list closed by an EOF.
        for count in [params, columns] {
            if count > 0 {
                for _ in 0..=count {
                    let p = self.server_packet().await?;
                    self.send_client(&p).await?;
                }
            }
        }
        self.flush_client().await?;
        self.ctx.counters.owed.store(0, Ordering::Relaxed);
        let prepared = Prepared {
            text,
            params: usize::from(params),
            event,
            claimed: false,
            cursor: None,
        };
        if !self.statements.insert(id, prepared) {
            // Too many: the statement is closed on the server, and unknown to the gateway.
            let mut close = vec![COM_STMT_CLOSE];
            close.extend_from_slice(&id.to_le_bytes());
            self.send_server(&Packet {
                seq: 0,
                body: close,
            })
            .await?;
        }
        self.ctx.hooks.result(
            event,
            &CommandResult {
                tag: Some(format!("PREPARE {id}")),
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                ..CommandResult::default()
            },
        );
        Ok(())
    }

    /// `COM_STMT_EXECUTE` of a statement the gateway saw prepared: its first run goes under
    /// the prepare's decision; later runs are judged (and journaled) again.
    async fn execute(&mut self, packet: Packet) -> Result<(), MyError> {
        let Some(id) = statement_id(&packet).filter(|id| self.statements.contains(*id)) else {
            return self.unknown_statement(&packet).await;
        };
        let flags = packet.body.get(5).copied().unwrap_or(0);
        if flags != 0 && flags != CURSOR_TYPE_READ_ONLY {
            return self
                .refuse_command(
                    &packet,
                    "only read-only cursors are followed by the gateway (COM_STMT_EXECUTE flags \
                     other than CURSOR_TYPE_READ_ONLY are refused)",
                )
                .await;
        }
        let Some(prepared) = self.statements.get_mut(id) else {
            return self.unknown_statement(&packet).await;
        };
        // A new execution closes the statement's previous cursor on the server.
        prepared.cursor = None;
        let started = Instant::now();
        let event = if prepared.claimed {
            let (text, params) = (prepared.text.clone(), prepared.params);
            let name = id.to_string();
            let command = Command::sql(CommandKind::Execute, &text, params, Some(&name));
            match self.decide(&packet, &command, started).await? {
                Some(event) => event,
                None => return Ok(()),
            }
        } else {
            prepared.claimed = true;
            prepared.event
        };
        self.forward(&packet).await?;
        self.opening_cursor = (flags == CURSOR_TYPE_READ_ONLY).then_some(id);
        let answered = self.answer(event, started, Rows::Binary).await;
        self.opening_cursor = None;
        answered
    }

    /// `COM_STMT_FETCH` from the read-only cursor of a statement the gateway saw opened: each
    /// fetch is judged and journaled as an execution of the statement's text (as each
    /// PostgreSQL Execute of a portal is), and its rows are masked by the cursor's columns.
    async fn fetch(&mut self, packet: Packet) -> Result<(), MyError> {
        let Some((id, prepared)) =
            statement_id(&packet).and_then(|id| Some((id, self.statements.get(id)?)))
        else {
            return self.unknown_statement(&packet).await;
        };
        let Some(defs) = prepared.cursor.clone() else {
            let detail = serde_json::json!({
                "command": packet.tag(), "reason": "no open cursor", "id": id
            });
            let text = format!(
                "interceptor: the statement ({id}) has no open cursor that the gateway saw \
                 opened (refused)"
            );
            return self
                .refuse_with(
                    &packet,
                    (codec::ER_STMT_HAS_NO_OPEN_CURSOR, "HY000"),
                    detail,
                    &text,
                )
                .await;
        };
        let (text, params) = (prepared.text.clone(), prepared.params);
        let name = id.to_string();
        let started = Instant::now();
        let command = Command::sql(CommandKind::Execute, &text, params, Some(&name));
        let Some(event) = self.decide(&packet, &command, started).await? else {
            return Ok(());
        };
        self.forward(&packet).await?;
        self.ctx.counters.owed.store(1, Ordering::Relaxed);
        let mut result = CommandResult::default();
        let end = self.rows(&defs, Rows::Binary, &mut result).await?;
        self.flush_client().await?;
        self.ctx.counters.owed.store(0, Ordering::Relaxed);
        let open = end.is_some_and(|status| {
            status & SERVER_STATUS_CURSOR_EXISTS != 0 && status & SERVER_STATUS_LAST_ROW_SENT == 0
        });
        if !open {
            if let Some(prepared) = self.statements.get_mut(id) {
                prepared.cursor = None;
            }
        }
        if end.is_some() {
            result.tag = Some(format!("FETCH {}", result.rows));
        }
        self.finish(event, started, result);
        Ok(())
    }

    /// Asks the hooks; waits out a hold. `Some(event)` when the command may run; otherwise
    /// the agent has been told why.
    async fn decide(
        &mut self,
        packet: &Packet,
        command: &Command<'_>,
        started: Instant,
    ) -> Result<Option<EventId>, MyError> {
        let decision = match self.ctx.hooks.request(command).await {
            Ok(d) => d,
            Err(e) => {
                let text = "interceptor: the journal is unavailable; the statement was not run";
                self.tell(
                    packet.next_seq(),
                    codec::ER_SPECIFIC_ACCESS_DENIED,
                    "58000",
                    text,
                )
                .await;
                return Err(MyError::Journal(e));
            }
        };
        let verdict = match decision.verdict {
            Verdict::Hold { id, .. } => self.ctx.hooks.wait_for_approval(&id).await,
            other => other,
        };
        let message = match verdict {
            Verdict::Allow => return Ok(Some(decision.event)),
            Verdict::Deny { message } => message,
            Verdict::Hold { id, .. } => format!("approval {id} unresolved"),
        };
        let text = format!("interceptor: {message}");
        self.tell(
            packet.next_seq(),
            codec::ER_SPECIFIC_ACCESS_DENIED,
            "42000",
            &text,
        )
        .await;
        self.finish(
            decision.event,
            started,
            CommandResult {
                sqlstate: Some("42000".to_owned()),
                error: Some(message),
                ..CommandResult::default()
            },
        );
        Ok(None)
    }

    /// The statement text of a `COM_QUERY`/`COM_STMT_PREPARE`. Text that is not UTF-8 is
    /// refused: the charsets the gateway accepts (utf8mb4, utf8mb3, latin1, ascii) read the
    /// same as UTF-8 wherever it is valid, and nowhere else can the gateway be sure.
    async fn text_of(&mut self, packet: &Packet) -> Result<Option<String>, MyError> {
        match std::str::from_utf8(packet.body.get(1..).unwrap_or_default()) {
            Ok(text) => Ok(Some(text.to_owned())),
            Err(_) => {
                self.refuse_command(
                    packet,
                    "the statement is not valid UTF-8, so the gateway cannot read it (refused)",
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// Answers a command with ERR 1227 and journals why (a note: no statement ran).
    async fn refuse_command(&mut self, packet: &Packet, why: &str) -> Result<(), MyError> {
        let detail = serde_json::json!({ "command": packet.tag(), "reason": why });
        let text = format!("interceptor: {why}");
        self.refuse_with(
            packet,
            (codec::ER_SPECIFIC_ACCESS_DENIED, "42000"),
            detail,
            &text,
        )
        .await
    }

    async fn unknown_statement(&mut self, packet: &Packet) -> Result<(), MyError> {
        let id = statement_id(packet).unwrap_or_default();
        let detail = serde_json::json!({
            "command": packet.tag(), "reason": "unknown statement id", "id": id
        });
        let text = format!(
            "interceptor: unknown prepared statement handler ({id}): the gateway did not see it \
             prepared (refused)"
        );
        self.refuse_with(
            packet,
            (codec::ER_UNKNOWN_STMT_HANDLER, "HY000"),
            detail,
            &text,
        )
        .await
    }

    /// Notes a refusal and answers the command with an ERR `(code, sqlstate)`.
    async fn refuse_with(
        &mut self,
        packet: &Packet,
        (code, sqlstate): (u16, &str),
        detail: serde_json::Value,
        text: &str,
    ) -> Result<(), MyError> {
        self.ctx.hooks.note("refused", detail);
        self.tell(packet.next_seq(), code, sqlstate, text).await;
        Ok(())
    }

    /// Relays a command whose answer is one packet (OK, ERR, EOF or a status string).
    /// Returns whether the server answered with anything but an ERR.
    async fn simple(&mut self, packet: &Packet) -> Result<bool, MyError> {
        self.forward(packet).await?;
        self.ctx.counters.owed.store(1, Ordering::Relaxed);
        let answer = self.server_packet().await?;
        let ok = !answer.is_err();
        if ok {
            self.check_status(&answer)?;
            self.send_client(&answer).await?;
            self.flush_client().await?;
        } else {
            self.relay_error(&answer).await?;
        }
        self.ctx.counters.owed.store(0, Ordering::Relaxed);
        Ok(ok)
    }

    /// Follows the server's answer to a statement: OK, ERR, or result sets (as many as the
    /// server says follow), and records the outcome against `event`.
    async fn answer(
        &mut self,
        event: EventId,
        started: Instant,
        rows: Rows,
    ) -> Result<(), MyError> {
        self.ctx.counters.owed.store(1, Ordering::Relaxed);
        let mut result = CommandResult::default();
        let mut tags = Vec::new();
        loop {
            let first = self.server_packet().await?;
            let more = match first.tag() {
                0x00 => {
                    let ok = codec::parse_ok(&first.body).map_err(MyError::Server)?;
                    self.check_status(&first)?;
                    tags.push(format!("OK {}", ok.affected_rows));
                    result.rows += ok.affected_rows;
                    self.send_client(&first).await?;
                    ok.status & codec::SERVER_MORE_RESULTS_EXISTS != 0
                }
                0xFF => {
                    let failed = self.relay_error(&first).await?;
                    result.sqlstate = failed.sqlstate;
                    result.error = failed.error;
                    false
                }
                0xFB => {
                    // LOAD DATA LOCAL: the server asks for a file. CLIENT_LOCAL_FILES was never
                    // offered, so this is refused here: an empty packet says "no data", and the
                    // agent never sees the request.
                    self.send_server(&Packet {
                        seq: first.seq.wrapping_add(1),
                        body: Vec::new(),
                    })
                    .await?;
                    self.ctx.hooks.note(
                        "refused",
                        serde_json::json!({ "reason": "LOAD DATA LOCAL file request" }),
                    );
                    continue;
                }
                _ => self.result_set(first, rows, &mut result, &mut tags).await?,
            };
            if !more {
                break;
            }
        }
        self.flush_client().await?;
        self.ctx.counters.owed.store(0, Ordering::Relaxed);
        if result.tag.is_none() && !tags.is_empty() {
            result.tag = Some(tags.join("; "));
        }
        self.finish(event, started, result);
        Ok(())
    }

    /// One result set after its column count: definitions, EOF, rows, EOF. Returns whether
    /// more results follow.
    async fn result_set(
        &mut self,
        first: Packet,
        rows: Rows,
        result: &mut CommandResult,
        tags: &mut Vec<String>,
    ) -> Result<bool, MyError> {
        let count = codec::Reader::new(&first.body, "column count")
            .lenenc()
            .map_err(MyError::Server)?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > 4096 {
            return Err(MyError::Server(codec::FrameError::Malformed {
                what: "result set",
                why: "more than 4096 columns",
            }));
        }
        let mut header = vec![first];
        let mut defs = Vec::with_capacity(count);
        for _ in 0..count {
            let def = self.server_packet().await?;
            defs.push(ColumnDef::parse(&def.body).map_err(MyError::Server)?);
            header.push(def);
        }
        let eof = self.server_packet().await?;
        if !eof.is_eof() {
            return Err(MyError::Server(codec::FrameError::Malformed {
                what: "result set",
                why: "no EOF after the column definitions",
            }));
        }
        let status = codec::parse_eof(&eof.body).map_err(MyError::Server)?.status;
        header.push(eof);
        for p in &header {
            self.send_client(p).await?;
        }
        if let Some(id) = self.opening_cursor.take() {
            if rows == Rows::Binary && status & SERVER_STATUS_CURSOR_EXISTS != 0 {
                // The server opened a cursor: no rows follow; COM_STMT_FETCH asks for them.
                if let Some(prepared) = self.statements.get_mut(id) {
                    prepared.cursor = Some(defs);
                }
                tags.push("CURSOR OPEN".to_owned());
                return Ok(false);
            }
        }
        let before = result.rows;
        let Some(status) = self.rows(&defs, rows, result).await? else {
            return Ok(false);
        };
        tags.push(format!("SELECT {}", result.rows - before));
        Ok(status & codec::SERVER_MORE_RESULTS_EXISTS != 0)
    }

    /// Relays rows, masked by `defs`, up to the EOF that ends them (returning its status) or
    /// an ERR (`None`).
    async fn rows(
        &mut self,
        defs: &[ColumnDef],
        rows: Rows,
        result: &mut CommandResult,
    ) -> Result<Option<u16>, MyError> {
        let mut masker = self
            .ctx
            .hooks
            .masker(defs.iter().map(ColumnDef::column).collect());
        let mut returned = 0u64;
        loop {
            let row = self.server_packet().await?;
            if row.is_eof() {
                let end = codec::parse_eof(&row.body).map_err(MyError::Server)?;
                self.check_status(&row)?;
                self.send_client(&row).await?;
                if let Some(m) = masker.as_mut() {
                    result.absorb(m.report());
                }
                result.rows += returned;
                return Ok(Some(end.status));
            }
            if row.is_err() {
                let failed = self.relay_error(&row).await?;
                result.sqlstate = failed.sqlstate;
                result.error = failed.error;
                result.rows += returned;
                return Ok(None);
            }
            returned += 1;
            let rewritten = match (rows, masker.as_mut()) {
                (Rows::Text, Some(m)) => results::mask_text_row(m.as_mut(), &row.body, defs.len())
                    .map_err(MyError::Server)?,
                (Rows::Binary, Some(m)) => results::mask_binary_row(m.as_mut(), &row.body, defs)
                    .map_err(MyError::Server)?,
                (_, None) => None,
            };
            match rewritten {
                Some(body) => {
                    self.send_client(&Packet { seq: row.seq, body }).await?;
                }
                None => self.send_client(&row).await?,
            }
        }
    }

    /// Relays a server ERR with its message masked by content; returns it as a result.
    async fn relay_error(&mut self, packet: &Packet) -> Result<CommandResult, MyError> {
        let e = codec::parse_err(&packet.body).map_err(MyError::Server)?;
        let message = self.ctx.hooks.mask_text(&e.message).into_owned();
        let body = codec::err_body(e.code, &e.sqlstate, &message);
        self.send_client(&Packet {
            seq: packet.seq,
            body,
        })
        .await?;
        self.flush_client().await?;
        Ok(CommandResult {
            sqlstate: Some(e.sqlstate),
            error: Some(format!("{message} ({})", e.code)),
            ..CommandResult::default()
        })
    }

    /// The server's status must keep the gateway's reading exact.
    fn check_status(&self, packet: &Packet) -> Result<(), MyError> {
        let status = if packet.is_eof() {
            codec::parse_eof(&packet.body).map(|c| c.status)
        } else if packet.is_ok() && packet.body.len() >= 7 {
            codec::parse_ok(&packet.body).map(|c| c.status)
        } else {
            return Ok(());
        };
        match status {
            Ok(s) if s & SERVER_STATUS_NO_BACKSLASH_ESCAPES != 0 => Err(MyError::Unsupported(
                "the server turned NO_BACKSLASH_ESCAPES on; the gateway reads statements with \
                 backslash escapes, so the session ends"
                    .to_owned(),
            )),
            _ => Ok(()),
        }
    }

    fn finish(&self, event: EventId, started: Instant, mut result: CommandResult) {
        result.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.ctx.hooks.result(event, &result);
    }

    /// Sends an ERR to the agent and flushes (best effort: it may be gone).
    async fn tell(&mut self, seq: u8, code: u16, sqlstate: &str, text: &str) {
        let body = codec::err_body(code, sqlstate, text);
        self.client_seq = seq;
        if self.send_client(&Packet { seq, body }).await.is_ok() {
            let _ = self.flush_client().await;
        }
    }

    /// The server's next payload. The one before it has been relayed by now, so its budget
    /// reservation ends here.
    async fn server_packet(&mut self) -> Result<Packet, MyError> {
        self.server_room.release();
        match read_reserved(&mut self.server, self.max, Some(&mut self.server_room)).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(MyError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection mid-answer",
            ))),
            Err(e) => Err(MyError::from_server(e)),
        }
    }

    async fn forward(&mut self, packet: &Packet) -> Result<(), MyError> {
        self.send_server(packet).await
    }

    /// Sends a payload to the server as the packets it was read as (or, for the gateway's own,
    /// built as), numbered from its `seq`.
    async fn send_server(&mut self, packet: &Packet) -> Result<(), MyError> {
        let mut seq = packet.seq;
        for chunk in codec::chunks(&packet.body) {
            self.server
                .write_all(&codec::header(chunk.len(), seq))
                .await?;
            self.server.write_all(chunk).await?;
            seq = seq.wrapping_add(1);
        }
        self.server.flush().await?;
        Ok(())
    }

    /// Sends a payload to the agent, numbered by [`Relay::client_seq`] (not by the `seq` it
    /// came with), split as MySQL splits payloads of 16 MiB or more.
    async fn send_client(&mut self, packet: &Packet) -> Result<(), MyError> {
        for chunk in codec::chunks(&packet.body) {
            self.client
                .write_all(&codec::header(chunk.len(), self.client_seq))
                .await?;
            self.client.write_all(chunk).await?;
            self.client_seq = self.client_seq.wrapping_add(1);
        }
        self.ctx.counters.down.fetch_add(
            (packet.body.len() + 4 * packet.parts()) as u64,
            Ordering::Relaxed,
        );
        Ok(())
    }

    async fn flush_client(&mut self) -> Result<(), MyError> {
        self.client.flush().await?;
        Ok(())
    }
}

/// What a `COM_CHANGE_USER` asks for. The authentication data is skipped: the gateway never
/// uses an agent's credentials upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangeUser {
    user: String,
    database: Option<String>,
    collation: Option<u16>,
}

impl ChangeUser {
    /// `0x11, user NUL, auth length (1 byte) + auth, database NUL, [collation u16, plugin NUL,
    /// attributes]`. `None` for anything shorter or not UTF-8.
    pub(crate) fn parse(body: &[u8]) -> Option<ChangeUser> {
        let mut r = codec::Reader::new(body.get(1..)?, "COM_CHANGE_USER");
        let user = std::str::from_utf8(r.nul_bytes().ok()?).ok()?.to_owned();
        let auth_len = r.u8().ok()?;
        r.take(usize::from(auth_len)).ok()?;
        let database = std::str::from_utf8(r.nul_bytes().ok()?).ok()?;
        let database = (!database.is_empty()).then(|| database.to_owned());
        let collation = if r.is_empty() {
            None
        } else {
            Some(r.u16().ok()?)
        };
        Some(ChangeUser {
            user,
            database,
            collation,
        })
    }
}

/// The statement id of a `COM_STMT_*` command.
fn statement_id(packet: &Packet) -> Option<u32> {
    let b = packet.body.get(1..5)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_user_is_read_without_its_credentials() {
        let mut body = vec![COM_CHANGE_USER];
        body.extend_from_slice(b"reporting\0");
        body.push(20);
        body.extend_from_slice(&[7u8; 20]);
        body.extend_from_slice(b"appdb\0");
        body.extend_from_slice(&45u16.to_le_bytes());
        body.extend_from_slice(b"mysql_native_password\0");
        assert_eq!(
            ChangeUser::parse(&body),
            Some(ChangeUser {
                user: "reporting".to_owned(),
                database: Some("appdb".to_owned()),
                collation: Some(45),
            })
        );
        let short = [COM_CHANGE_USER, b'a', 0, 5, 1, 2];
        assert_eq!(ChangeUser::parse(&short), None, "auth cut short");
        let mut no_db = vec![COM_CHANGE_USER];
        no_db.extend_from_slice(b"u\0\0\0");
        assert_eq!(
            ChangeUser::parse(&no_db),
            Some(ChangeUser {
                user: "u".to_owned(),
                database: None,
                collation: None,
            })
        );
    }
}
