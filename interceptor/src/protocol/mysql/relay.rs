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
//! `COM_STMT_*` housekeeping of a known statement), or refused (`COM_CHANGE_USER`, whose new
//! login would bypass the gateway's; `COM_FIELD_LIST`, `COM_STMT_FETCH`, replication and
//! debugging commands). The answers are followed packet by packet: result sets (several for
//! multi-statements), with text and binary rows masked.

use std::sync::atomic::Ordering;

use tokio::{
    io::{AsyncWriteExt as _, BufStream},
    time::Instant,
};

use super::{
    codec::{self, put_packet, read_packet, Packet, ReadError},
    results::{self, ColumnDef},
    startup::Legs,
    statements::{Prepared, Statements},
    Context, MyError,
};
use crate::{
    command::{Command, CommandKind, CommandResult, EventId, Hooks, Verdict},
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
const COM_RESET_CONNECTION: u8 = 0x1F;

/// The server status flag that says `NO_BACKSLASH_ESCAPES` is on.
const SERVER_STATUS_NO_BACKSLASH_ESCAPES: u16 = 0x0200;

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
    };
    loop {
        let next = tokio::select! {
            next = read_packet(&mut relay.client, relay.max) => next,
            () = ctx.idle.expired() => return Err(Ending::IdleTimeout(ctx.idle.after).into()),
        };
        let packet = match next {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(ReadError::Frame(e)) => {
                let text = format!("interceptor: {e}");
                relay
                    .tell(0, codec::ER_NET_PACKET_TOO_LARGE, "08S01", &text)
                    .await;
                return Err(MyError::Client(e));
            }
            Err(ReadError::Io(e)) => return Err(e.into()),
        };
        ctx.counters
            .up
            .fetch_add(packet.body.len() as u64 + 4, Ordering::Relaxed);
        // Every command opens an exchange, so its sequence id is 0. The server ends a session
        // whose client sends another (1156, packets out of order) without running it; the
        // gateway does the same before judging or journaling a statement that would not run.
        if packet.seq != 0 {
            let text = "interceptor: got packets out of order (a command's sequence id is 0)";
            relay
                .tell(
                    packet.seq.wrapping_add(1),
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
                Some(id) if self.statements.contains(id) => self.simple(&packet).await?,
                _ => self.unknown_statement(&packet).await?,
            },
            COM_INIT_DB => {
                let db = String::from_utf8_lossy(packet.body.get(1..).unwrap_or_default());
                self.ctx
                    .hooks
                    .note("init_db", serde_json::json!({ "database": db }));
                self.simple(&packet).await?;
            }
            COM_PING | COM_STATISTICS => self.simple(&packet).await?,
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
            COM_CHANGE_USER => {
                self.refuse_command(
                    &packet,
                    "COM_CHANGE_USER is refused: the gateway logs in for the agent",
                )
                .await?
            }
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
        let started = Instant::now();
        let command = Command::sql(CommandKind::Statement, &text, 0, None);
        let Some(event) = self.decide(&packet, &command, started).await? else {
            return Ok(());
        };
        self.forward(&packet).await?;
        self.answer(event, started, Rows::Text).await
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
        if packet.body.get(5).is_some_and(|flags| *flags != 0) {
            return self
                .refuse_command(
                    &packet,
                    "server-side cursors (COM_STMT_EXECUTE with a cursor flag) are not supported \
                     by the gateway",
                )
                .await;
        }
        let Some(prepared) = self.statements.get_mut(id) else {
            return self.unknown_statement(&packet).await;
        };
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
        self.answer(event, started, Rows::Binary).await
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
                    packet.seq.wrapping_add(1),
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
            packet.seq.wrapping_add(1),
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
        self.tell(packet.seq.wrapping_add(1), code, sqlstate, text)
            .await;
        Ok(())
    }

    /// Relays a command whose answer is one packet (OK, ERR, EOF or a status string).
    async fn simple(&mut self, packet: &Packet) -> Result<(), MyError> {
        self.forward(packet).await?;
        self.ctx.counters.owed.store(1, Ordering::Relaxed);
        let answer = self.server_packet().await?;
        if answer.is_err() {
            self.relay_error(&answer).await?;
        } else {
            self.check_status(&answer)?;
            self.send_client(&answer).await?;
            self.flush_client().await?;
        }
        self.ctx.counters.owed.store(0, Ordering::Relaxed);
        Ok(())
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
        header.push(eof);
        let mut masker = self
            .ctx
            .hooks
            .masker(defs.iter().map(ColumnDef::column).collect());
        for p in &header {
            self.send_client(p).await?;
        }
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
                tags.push(format!("SELECT {returned}"));
                return Ok(end.status & codec::SERVER_MORE_RESULTS_EXISTS != 0);
            }
            if row.is_err() {
                let failed = self.relay_error(&row).await?;
                result.sqlstate = failed.sqlstate;
                result.error = failed.error;
                result.rows += returned;
                return Ok(false);
            }
            returned += 1;
            let rewritten = match (rows, masker.as_mut()) {
                (Rows::Text, Some(m)) => {
                    results::mask_text_row(m.as_mut(), &row.body, count).map_err(MyError::Server)?
                }
                (Rows::Binary, Some(m)) => results::mask_binary_row(m.as_mut(), &row.body, &defs)
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
        if self.send_client(&Packet { seq, body }).await.is_ok() {
            let _ = self.flush_client().await;
        }
    }

    async fn server_packet(&mut self) -> Result<Packet, MyError> {
        match read_packet(&mut self.server, self.max).await {
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

    async fn send_server(&mut self, packet: &Packet) -> Result<(), MyError> {
        let mut out = Vec::with_capacity(packet.body.len() + 4);
        put_packet(&mut out, packet.seq, &packet.body);
        self.server.write_all(&out).await?;
        self.server.flush().await?;
        Ok(())
    }

    async fn send_client(&mut self, packet: &Packet) -> Result<(), MyError> {
        let len = packet.body.len();
        self.client
            .write_all(&codec::header(len, packet.seq))
            .await?;
        self.client.write_all(&packet.body).await?;
        self.ctx
            .counters
            .down
            .fetch_add(len as u64 + 4, Ordering::Relaxed);
        Ok(())
    }

    async fn flush_client(&mut self) -> Result<(), MyError> {
        self.client.flush().await?;
        Ok(())
    }
}

/// The statement id of a `COM_STMT_*` command.
fn statement_id(packet: &Packet) -> Option<u32> {
    let b = packet.body.get(1..5)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}
