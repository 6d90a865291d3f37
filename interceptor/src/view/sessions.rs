//! `sessions list` and `sessions show` as text, and the per-event summaries that `replay`
//! shares with them (so an event reads the same in a timeline and in a playback).
//!
//! Every protocol's commands read the same way: decision, rule, action (a verb: SQL's
//! statement classes, an HTTP method, a Kubernetes verb…), objects (tables, `host/path`, a
//! tool, a resource) and the canonical text last, from the reader's protocol-neutral keys
//! ([`crate::journal::reader::Neutral`]). Terminal output (`terminal` events) is not dumped
//! here: it is summarised under the channel it belongs to, and `replay` plays it.
//!
//! Event kinds are open-ended: the journal gains kinds over time, and an old binary may read a
//! newer journal. Known kinds get a sentence; any other kind is shown generically (its
//! statement, or its detail as `key=value` pairs). `result` events duplicate the `result` of
//! the command they name, so they are folded into that command and never shown as lines.

use std::collections::HashMap;

use serde_json::Value;

use super::{one_line, Cell, Column, Paint, Table, Term};
use crate::journal::reader::{CommandCounts, EventRow, SessionRow, COMMAND_KINDS, TERMINAL_KIND};

// ---------------------------------------------------------------------------------------------
// sessions list
// ---------------------------------------------------------------------------------------------

/// The `sessions list` table. `counts` summarises each session's commands (sessions without
/// commands, such as plain TCP, show `-`). Long run ids, executables and addresses are cut
/// with `…`; `--json` has them whole.
pub fn sessions_table(
    rows: &[SessionRow],
    counts: &HashMap<i64, CommandCounts>,
    term: &Term,
) -> String {
    let mut table = Table::new(vec![
        Column::new("ID"),
        Column::new("STARTED"),
        Column::new("RUN").max(24).shrink(10),
        Column::new("USER").max(16).shrink(6),
        Column::new("PID"),
        Column::new("EXE").max(32).shrink(10).keep_end(),
        Column::new("DESTINATION").max(47).shrink(15),
        Column::new("TARGET").max(20).shrink(6),
        Column::new("PROTO"),
        Column::new("COMMANDS").max(28).shrink(8),
        Column::new("UP"),
        Column::new("DOWN"),
        Column::new("OUTCOME"),
    ]);
    for r in rows {
        let outcome = r.outcome.as_deref().unwrap_or("open");
        table.push(vec![
            r.id.to_string().into(),
            Cell::new(&r.started_at),
            Cell::new(r.run_id.as_deref().unwrap_or("-")),
            Cell::new(r.user.clone().unwrap_or_else(|| r.uid.to_string())),
            r.pid.to_string().into(),
            Cell::new(r.exe.clone().unwrap_or_else(|| format!("({})", r.comm))),
            Cell::new(&r.original_dst),
            Cell::new(r.target.as_deref().unwrap_or("-")),
            Cell::new(&r.protocol),
            counts_cell(counts.get(&r.id)),
            r.bytes_up.to_string().into(),
            r.bytes_down.to_string().into(),
            Cell::new(outcome).paint(outcome_paint(outcome)),
        ]);
    }
    let mut out = table.render(term);
    if rows.is_empty() {
        out.push_str("(no sessions)\n");
    }
    out
}

/// `6`, `6 (1 deny)`, `6 (1 deny, 2 review)`: red when something was denied, yellow when
/// something waited for a human.
fn counts_cell(counts: Option<&CommandCounts>) -> Cell {
    let Some(c) = counts.filter(|c| c.commands > 0) else {
        return Cell::new("-");
    };
    let mut flagged = Vec::new();
    if c.deny > 0 {
        flagged.push(format!("{} deny", c.deny));
    }
    if c.review > 0 {
        flagged.push(format!("{} review", c.review));
    }
    let paint = if c.deny > 0 {
        Paint::Red
    } else if c.review > 0 {
        Paint::Yellow
    } else {
        Paint::Plain
    };
    if flagged.is_empty() {
        Cell::new(c.commands.to_string())
    } else {
        Cell::new(format!("{} ({})", c.commands, flagged.join(", "))).paint(paint)
    }
}

fn outcome_paint(outcome: &str) -> Paint {
    match outcome {
        "closed" | "open" => Paint::Plain,
        // Closed by the gateway's clock: worth a look, not an alarm.
        "timeout" => Paint::Yellow,
        _ => Paint::Red,
    }
}

// ---------------------------------------------------------------------------------------------
// Events, as the timeline and the replay see them
// ---------------------------------------------------------------------------------------------

/// One event to show, with what other events add to it.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub event: &'a EventRow,
    /// The command's result: its own `result` column, or a `result` event naming it.
    pub result: Option<&'a Value>,
    /// For approval events, the command they hold or decide (its `seq`), when known.
    pub command: Option<i64>,
    /// For a channel (an `ssh_channel`, a Kubernetes exec), what its terminal carried.
    pub terminal: Option<TerminalTotals>,
}

/// How much a channel's terminal carried, in `terminal` events (their `data` is masked text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TerminalTotals {
    pub output_chunks: u64,
    pub output_bytes: u64,
    pub input_chunks: u64,
    pub input_bytes: u64,
    /// The last window size recorded (columns, rows), when the terminal had one.
    pub window: Option<(u32, u32)>,
}

impl TerminalTotals {
    /// `terminal: 42 output chunks, 3.1 KiB; 3 input chunks, 12 B`.
    pub fn describe(&self) -> String {
        let part = |n: u64, what: &str, bytes: u64| {
            format!(
                "{n} {what} chunk{}, {}",
                if n == 1 { "" } else { "s" },
                human_bytes(bytes)
            )
        };
        let mut text = format!(
            "terminal: {}",
            part(self.output_chunks, "output", self.output_bytes)
        );
        if self.input_chunks > 0 {
            text.push_str(&format!(
                "; {}",
                part(self.input_chunks, "input", self.input_bytes)
            ));
        }
        if let Some((cols, rows)) = self.window {
            text.push_str(&format!("; window {cols}x{rows}"));
        }
        text
    }
}

/// `12 B`, `3.1 KiB`, `2.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let x = n as f64;
    if n < 1024 {
        format!("{n} B")
    } else if x < KIB * KIB {
        format!("{:.1} KiB", x / KIB)
    } else {
        format!("{:.1} MiB", x / (KIB * KIB))
    }
}

/// A `terminal` event's parts: the channel event it belongs to, whether it is input, its
/// offset from the channel's start, and its text. `None` when it has no text.
pub fn terminal_chunk(e: &EventRow) -> Option<TerminalChunk<'_>> {
    if e.kind != TERMINAL_KIND {
        return None;
    }
    let d = &e.detail;
    Some(TerminalChunk {
        channel: d.get("channel_event").and_then(Value::as_i64),
        input: d.get("stream").and_then(Value::as_str) == Some("input"),
        offset_ms: d.get("offset_ms").and_then(Value::as_u64),
        data: d.get("data").and_then(Value::as_str)?,
    })
}

/// A `terminal` event that records a window size (`stream: "window"`, `cols`, `rows`): the
/// channel event it belongs to, its offset from the channel's start, and the size.
pub fn terminal_window(e: &EventRow) -> Option<TerminalWindow> {
    let d = &e.detail;
    if e.kind != TERMINAL_KIND || d.get("stream").and_then(Value::as_str) != Some("window") {
        return None;
    }
    let size = |key: &str| {
        d.get(key)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    Some(TerminalWindow {
        channel: d.get("channel_event").and_then(Value::as_i64),
        offset_ms: d.get("offset_ms").and_then(Value::as_u64),
        cols: size("cols")?,
        rows: size("rows")?,
    })
}

/// A terminal's window size at one moment (see [`terminal_window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalWindow {
    pub channel: Option<i64>,
    pub offset_ms: Option<u64>,
    pub cols: u32,
    pub rows: u32,
}

/// One piece of a terminal stream (see [`terminal_chunk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalChunk<'a> {
    pub channel: Option<i64>,
    pub input: bool,
    pub offset_ms: Option<u64>,
    pub data: &'a str,
}

/// The events worth a line, in journal order: `result` events are folded into the command
/// they name, approval decisions are linked to the command they decide (through the
/// approval id of the matching hold), and `terminal` events are counted into their channel's
/// [`TerminalTotals`] (chunks of a channel not in `events` are left out).
pub fn entries(events: &[EventRow]) -> Vec<Entry<'_>> {
    let mut chained: HashMap<i64, &Value> = HashMap::new();
    let mut held: HashMap<&str, i64> = HashMap::new();
    let mut terminals: HashMap<i64, TerminalTotals> = HashMap::new();
    for e in events {
        if let Some(w) = terminal_window(e) {
            if let Some(channel) = w.channel {
                terminals.entry(channel).or_default().window = Some((w.cols, w.rows));
            }
            continue;
        }
        if let Some(chunk) = terminal_chunk(e) {
            if let Some(channel) = chunk.channel {
                let t = terminals.entry(channel).or_default();
                let bytes = chunk.data.len() as u64;
                if chunk.input {
                    t.input_chunks += 1;
                    t.input_bytes += bytes;
                } else {
                    t.output_chunks += 1;
                    t.output_bytes += bytes;
                }
            }
            continue;
        }
        match e.kind.as_str() {
            "result" => {
                if let (Some(seq), Some(result)) =
                    (e.detail["event"].as_i64(), e.detail.get("result"))
                {
                    chained.insert(seq, result);
                }
            }
            "approval" | "approval_request" => {
                if let (Some(id), Some(seq)) = (e.detail["id"].as_str(), e.detail["event"].as_i64())
                {
                    held.insert(id, seq);
                }
            }
            _ => {}
        }
    }
    events
        .iter()
        .filter(|e| e.kind != "result" && e.kind != TERMINAL_KIND)
        .map(|e| {
            let command = match e.kind.as_str() {
                "approval" | "approval_request" => e.detail["event"].as_i64(),
                "approval_decision" => e.detail["id"].as_str().and_then(|id| held.get(id).copied()),
                _ => None,
            };
            Entry {
                event: e,
                result: e
                    .result
                    .as_ref()
                    .filter(|r| !r.is_null())
                    .or_else(|| chained.get(&e.seq).copied()),
                command,
                terminal: terminals.get(&e.seq).copied(),
            }
        })
        .collect()
}

/// Is this a command (SQL's statement, execute and function call, an HTTP request, an MCP
/// call, a Kubernetes request, an SSH channel)?
pub fn is_command(kind: &str) -> bool {
    COMMAND_KINDS.contains(&kind)
}

impl Entry<'_> {
    /// The event in one line: a command's statement, or a sentence for other kinds.
    pub fn what(&self) -> Cell {
        let e = self.event;
        let d = &e.detail;
        let text = |key: &str| d.get(key).and_then(Value::as_str);
        let on_command = self
            .command
            .map(|seq| format!(" (#{seq})"))
            .unwrap_or_default();
        match e.kind.as_str() {
            k if is_command(k) => match &e.statement {
                Some(s) => Cell::new(s),
                None => Cell::new(compact(d)),
            },
            "approval" | "approval_request" => Cell::new(format!(
                "held for approval {}{on_command}",
                text("id").unwrap_or("?")
            ))
            .paint(Paint::Yellow),
            "approval_decision" => approval_decision(d, &on_command),
            "auth" => match d.get("ok").and_then(Value::as_bool) {
                Some(true) => Cell::new(format!(
                    "logged in upstream as {} ({})",
                    text("user").unwrap_or("?"),
                    text("mode").unwrap_or("?")
                )),
                _ => Cell::new(format!(
                    "login failed: {}",
                    text("error").unwrap_or("no reason recorded")
                ))
                .paint(Paint::Red),
            },
            "cancel" => match d.get("ok").and_then(Value::as_bool) {
                Some(true) => Cell::new(format!(
                    "cancel request for backend {}",
                    d.get("backend_pid")
                        .map(Value::to_string)
                        .unwrap_or_default()
                )),
                _ => Cell::new(format!(
                    "cancel request refused: {}",
                    text("reason").unwrap_or("?")
                ))
                .paint(Paint::Red),
            },
            "connect" => Cell::new(format!("connect to {}", text("destination").unwrap_or("?"))),
            "error" | "anomaly" => Cell::new(compact(d)).paint(Paint::Red),
            // The header already shows the identity this event snapshots for the hash chain.
            "session_open" => Cell::new("session opened").paint(Paint::Dim),
            "session_close" => session_closed(d),
            // A kind this binary does not know: what it says, unformatted.
            _ => match &e.statement {
                Some(s) => Cell::new(s),
                None => Cell::new(compact(d)),
            },
        }
    }

    /// Lines under the event: why a command was not allowed, what masking did, how it ended,
    /// an approver's reason. `with_result` leaves the result out (replay prints it later for
    /// held commands).
    pub fn notes(&self, with_result: bool) -> Vec<Cell> {
        let e = self.event;
        let d = &e.detail;
        let mut notes = Vec::new();
        let decision = e.decision.as_deref().unwrap_or("");
        if is_command(&e.kind) {
            if decision != "allow" {
                if let Some(reason) = d.get("reason").and_then(Value::as_str) {
                    notes.push(
                        Cell::new(format!("reason: {reason}")).paint(Paint::decision(decision)),
                    );
                }
            }
            if let Some(err) = d.get("parse_error").and_then(Value::as_str) {
                notes.push(
                    Cell::new(format!("not understood by the SQL parser: {err}")).paint(Paint::Dim),
                );
            }
            if let Some(m) = counts_text(d.get("masked")) {
                notes.push(Cell::new(format!("masked in the statement: {m}")).paint(Paint::Cyan));
            }
        }
        if e.kind == "approval_decision" {
            if let Some(reason) = d.get("reason").and_then(Value::as_str) {
                notes.push(Cell::new(format!("reason: {reason}")));
            }
        }
        if with_result {
            notes.extend(self.result_notes());
        }
        notes
    }

    /// `=> SELECT 2 (2 rows, 0.6 ms)`, `=> status 404 (3.0 ms)` or `=> ERROR 42501 …` in red,
    /// then the masking counts.
    pub fn result_notes(&self) -> Vec<Cell> {
        let Some(r) = self.result else {
            return Vec::new();
        };
        let protocol = self.event.neutral.as_ref().map(|n| n.protocol.as_str());
        let mut notes = vec![result_summary(r, protocol)];
        if let Some(m) = counts_text(r.get("masked")) {
            notes.push(Cell::new(format!("masked: {m}")).paint(Paint::Cyan));
        }
        notes
    }
}

/// An approver's decision: who, how far it reaches, or that nobody decided in time.
fn approval_decision(d: &Value, on_command: &str) -> Cell {
    let text = |key: &str| d.get(key).and_then(Value::as_str);
    let id = text("id").unwrap_or("?");
    // `approver` is the name the control socket resolved; `by` is accepted for older entries.
    let who = match (
        text("approver").or(text("by")),
        d.get("approver_uid").and_then(Value::as_u64),
    ) {
        (Some(name), Some(uid)) => format!("{name} (uid {uid})"),
        (Some(name), None) => name.to_owned(),
        (None, Some(uid)) => format!("uid {uid}"),
        (None, None) => "?".to_owned(),
    };
    match text("status") {
        Some("approved") => Cell::new(format!(
            "approved {id}{on_command} by {who}, scope {}",
            text("scope").unwrap_or("once")
        ))
        .paint(Paint::Green),
        Some("denied") => Cell::new(format!("denied {id}{on_command} by {who}")).paint(Paint::Red),
        Some("expired") => Cell::new(format!(
            "{id}{on_command} expired: nobody decided, nothing ran"
        ))
        .paint(Paint::Red),
        other => Cell::new(format!("{id}{on_command}: {}", other.unwrap_or("?"))),
    }
}

/// `session closed: closed, up 111 B, down 432 B` (and its detail, if any).
fn session_closed(d: &Value) -> Cell {
    let bytes = |key: &str| d.get(key).and_then(Value::as_u64);
    let text = match (
        d.get("outcome").and_then(Value::as_str),
        bytes("bytes_up"),
        bytes("bytes_down"),
    ) {
        (Some(outcome), Some(up), Some(down)) => {
            let mut text = format!("session closed: {outcome}, up {up} B, down {down} B");
            if let Some(detail) = d.get("detail").and_then(Value::as_str) {
                text.push_str(&format!(" ({detail})"));
            }
            text
        }
        _ => joined("session closed", d),
    };
    Cell::new(text).paint(Paint::Dim)
}

/// A result in a few words. SQL results name their tag and rows; the others their `status`
/// (an SSH exec's exit status, else an HTTP status), red when it says the command failed.
pub fn result_summary(r: &Value, protocol: Option<&str>) -> Cell {
    let text = |key: &str| r.get(key).and_then(Value::as_str);
    let duration = r.get("duration_ms").and_then(Value::as_f64).map(format_ms);
    let status = r.get("status").and_then(Value::as_i64);
    match (text("sqlstate"), text("error")) {
        (None, None) if text("tag").is_none() && status.is_some() => {
            let status = status.unwrap_or_default();
            let (word, failed) = if protocol == Some("ssh") {
                ("exit", status != 0)
            } else {
                ("status", status >= 400)
            };
            let mut line = format!("=> {word} {status}");
            let mut parts: Vec<String> = r
                .get("rows")
                .and_then(Value::as_u64)
                .map(|n| format!("{n} row{}", if n == 1 { "" } else { "s" }))
                .into_iter()
                .collect();
            parts.extend(duration);
            if !parts.is_empty() {
                line.push_str(&format!(" ({})", parts.join(", ")));
            }
            Cell::new(line).paint(if failed { Paint::Red } else { Paint::Plain })
        }
        (None, None) => {
            let rows = r.get("rows").and_then(Value::as_u64).unwrap_or(0);
            let mut parts = vec![format!("{rows} row{}", if rows == 1 { "" } else { "s" })];
            parts.extend(duration);
            Cell::new(format!(
                "=> {} ({})",
                text("tag").unwrap_or("done"),
                parts.join(", ")
            ))
        }
        (code, error) => {
            let mut line = String::from("=> ERROR");
            let status = status.map(|s| s.to_string());
            for part in [code, status.as_deref(), error].into_iter().flatten() {
                line.push(' ');
                line.push_str(part);
            }
            if let Some(d) = duration {
                line.push_str(&format!(" ({d})"));
            }
            Cell::new(line).paint(Paint::Red)
        }
    }
}

/// `0.4 ms`, `1.25 s`.
pub fn format_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// `detector:email 2, rule:notes 3` from a `{"rule:notes": 3, …}` object; `None` when empty.
fn counts_text(counts: Option<&Value>) -> Option<String> {
    let obj = counts?.as_object().filter(|o| !o.is_empty())?;
    Some(
        obj.iter()
            .map(|(k, n)| {
                format!(
                    "{k} {}",
                    n.as_u64().map_or_else(|| n.to_string(), |n| n.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// A detail object as `key=value` pairs (nulls left out; strings bare unless they need
/// quotes); anything else as compact JSON.
pub fn compact(detail: &Value) -> String {
    match detail {
        Value::Null => String::new(),
        Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) if !s.is_empty() && !s.contains([' ', '"', '=']) => {
                    format!("{k}={s}")
                }
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn joined(head: &str, detail: &Value) -> String {
    let rest = compact(detail);
    if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}: {rest}")
    }
}

// ---------------------------------------------------------------------------------------------
// sessions show
// ---------------------------------------------------------------------------------------------

/// Who, where, when and how it ended; shared by `show` and `replay`.
pub fn session_header(s: &SessionRow, counts: Option<&CommandCounts>, term: &Term) -> String {
    let mut out = format!(
        "{}  run {}  {} (pid {}, uid {}){}  {}\n",
        term.paint(Paint::Bold, &format!("session {}", s.id)),
        one_line(s.run_id.as_deref().unwrap_or("-")),
        one_line(s.user.as_deref().unwrap_or("?")),
        s.pid,
        s.uid,
        if s.identity_stale {
            " (identity stale)"
        } else {
            ""
        },
        one_line(s.exe.as_deref().unwrap_or(&s.comm)),
    );
    let outcome = s.outcome.as_deref().unwrap_or("open");
    out.push_str(&format!(
        "  {} -> {} ({}{})  up {} B, down {} B  {}\n",
        one_line(&s.client_addr),
        one_line(&s.original_dst),
        one_line(&s.protocol),
        s.target
            .as_deref()
            .map(|t| format!(", target {}", one_line(t)))
            .unwrap_or_default(),
        s.bytes_up,
        s.bytes_down,
        term.paint(outcome_paint(outcome), outcome),
    ));
    let span = match (&s.ended_at, span_ms(&s.started_at, s.ended_at.as_deref())) {
        (Some(end), Some(ms)) => format!("{} .. {end} ({})", s.started_at, format_ms(ms)),
        (Some(end), None) => format!("{} .. {end}", s.started_at),
        (None, _) => format!("{} .. (still open)", s.started_at),
    };
    out.push_str(&format!("  {}\n", one_line(&span)));
    if let Some(c) = counts.filter(|c| c.commands > 0) {
        let mut parts = Vec::new();
        for (n, word) in [(c.allow, "allow"), (c.deny, "deny"), (c.review, "review")] {
            if n > 0 {
                parts.push(term.paint(Paint::decision(word), &format!("{n} {word}")));
            }
        }
        out.push_str(&format!(
            "  commands: {} ({})\n",
            c.commands,
            parts.join(", ")
        ));
    }
    if let Some(cmdline) = &s.cmdline {
        out.push_str(&format!("  cmdline: {}\n", one_line(cmdline)));
    }
    if let Some(detail) = &s.detail {
        out.push_str(&format!("  detail: {}\n", one_line(detail)));
    }
    out
}

/// Milliseconds from `start` to `end`, when both parse.
fn span_ms(start: &str, end: Option<&str>) -> Option<f64> {
    let start = crate::journal::reader::parse_timestamp(start)?;
    let end = crate::journal::reader::parse_timestamp(end?)?;
    Some(end.duration_since(start).ok()?.as_secs_f64() * 1000.0)
}

/// `sessions show`: the header, then one row per event (commands with their decision and rule,
/// approvals, logins, cancels…), each followed by its notes (reason, masking, result).
pub fn timeline(
    s: &SessionRow,
    events: &[EventRow],
    counts: Option<&CommandCounts>,
    term: &Term,
) -> String {
    let mut out = session_header(s, counts, term);
    out.push('\n');
    let mut table = Table::new(vec![
        Column::new("SEQ"),
        Column::new("TIME"),
        Column::new("KIND").max(18).shrink(9),
        Column::new("DECISION"),
        Column::new("RULE").max(28).shrink(8),
        Column::new("ACTION").max(20).shrink(6),
        Column::new("OBJECTS").max(40).shrink(7),
        Column::new("WHAT").shrink(20),
    ]);
    for entry in entries(events) {
        let e = entry.event;
        let decision = e.decision.as_deref().unwrap_or("");
        let (action, objects) = match &e.neutral {
            Some(n) => (n.action.as_str(), n.objects.join(" ")),
            None => ("", String::new()),
        };
        table.push(vec![
            Cell::new(format!("#{}", e.seq)),
            Cell::new(short_time(&e.ts, &s.started_at)),
            Cell::new(&e.kind),
            Cell::new(decision).paint(Paint::decision(decision)),
            Cell::new(e.rule.as_deref().unwrap_or("")),
            Cell::new(action),
            Cell::new(objects),
            entry.what(),
        ]);
        for note in entry.notes(true) {
            table.note(note);
        }
        if let Some(t) = entry.terminal {
            table.note(
                Cell::new(format!(
                    "{}; replay with `interceptor sessions replay {}`",
                    t.describe(),
                    s.id
                ))
                .paint(Paint::Dim),
            );
        }
    }
    if table.is_empty() {
        out.push_str("(no events)\n");
    } else {
        out.push_str(&table.render(term));
    }
    out
}

/// `09:14:03.521` when `ts` is on the day the session started (the header has the date),
/// else the whole timestamp.
pub fn short_time(ts: &str, session_start: &str) -> String {
    match (ts.get(..10), session_start.get(..10), ts.get(11..23)) {
        (Some(day), Some(start_day), Some(time)) if day == start_day => time.to_owned(),
        _ => ts.to_owned(),
    }
}
