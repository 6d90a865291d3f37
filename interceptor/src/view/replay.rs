//! `sessions replay`: a session played back in the terminal, at its own pace or scaled,
//! showing what the agent sent, what the gateway decided, and what the agent got back (the
//! result's masked sample rows when the journal kept them, else its tag and row count).
//!
//! The pace comes from the journal's timestamps: each event is shown after the gap that
//! preceded it (from the session's start for the first one), divided by the speed and capped
//! per gap by `--max-wait`, so a session that idled for an hour still replays in moments.
//! Event times are commit times with millisecond precision; events committed together replay
//! together. Planning ([`plan`]) is separate from playing ([`play`]), and `play` sleeps through
//! a function it is given, so tests check timing without waiting.
//!
//! A held command's result is shown after the approver's decision, where the agent got it,
//! rather than with the statement.
//!
//! Terminal sessions (an SSH shell or exec, a Kubernetes exec or attach) are played as a
//! terminal recording is: the output stream (`terminal` events) is written as it came, each
//! chunk at its channel's time plus its recorded `offset_ms` (not its commit time, which
//! groups chunks), with the same speed and cap. What the agent typed is left out unless asked
//! for ([`Streams::input`]): a shell echoes it in the output anyway, and it may be a password
//! typed at a prompt. The text is made safe for the terminal ([`super::terminal_text`]) unless
//! [`Streams::raw`] asks for it as recorded. A recorded window size (the pty's, and each
//! resize) is shown as a line of its own, at its time: the output that follows was laid out
//! for it.

use std::{
    borrow::Cow,
    collections::HashMap,
    io::{self, Write},
    time::{Duration, SystemTime},
};

use serde_json::Value;

use super::{
    one_line,
    sessions::{entries, is_command, session_header, terminal_chunk, terminal_window, Entry},
    terminal_text, Cell, Column, Paint, Table, Term,
};
use crate::journal::reader::{parse_timestamp, CommandCounts, EventRow, SessionRow};

/// How fast to play: `speed` 1 is real time, 2 twice as fast, 0 no pauses at all; no single
/// pause is longer than `max_wait`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    speed: f64,
    max_wait: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BadPace {
    #[error("--speed must be a number >= 0 (1 = real time, 0 = no pauses), not {0}")]
    Speed(f64),
    #[error("--max-wait must be a number of seconds >= 0, not {0}")]
    MaxWait(f64),
}

impl Pace {
    pub fn new(speed: f64, max_wait_secs: f64) -> Result<Pace, BadPace> {
        if !speed.is_finite() || speed < 0.0 {
            return Err(BadPace::Speed(speed));
        }
        let max_wait = Duration::try_from_secs_f64(max_wait_secs)
            .map_err(|_| BadPace::MaxWait(max_wait_secs))?;
        Ok(Pace { speed, max_wait })
    }

    /// The pause standing for a `gap` of the original session.
    pub fn wait_for(&self, gap: Duration) -> Duration {
        if self.speed == 0.0 {
            return Duration::ZERO;
        }
        // A tiny speed overflows the division: that is "wait as long as allowed".
        Duration::try_from_secs_f64(gap.as_secs_f64() / self.speed)
            .unwrap_or(Duration::MAX)
            .min(self.max_wait)
    }
}

/// Which terminal streams to play, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streams {
    /// Also play what the agent sent (`stream: "input"`), highlighted.
    pub input: bool,
    /// Write the recorded text as it is, escape sequences included (colors, cursor moves).
    pub raw: bool,
}

/// One moment of the playback.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    /// Time since the session started, in the original session (shown as `[+1.234s]`).
    pub offset: Duration,
    /// The pause before showing it.
    pub wait: Duration,
    pub frame: Frame<'a>,
}

#[derive(Debug, Clone)]
pub enum Frame<'a> {
    Event {
        entry: Entry<'a>,
        /// Show the result here (false for a held command: its decision frame shows it).
        with_result: bool,
        /// The held command whose result arrives with this approval decision.
        releases: Option<Entry<'a>>,
    },
    /// A channel whose terminal stream was just played: its result (an exit status) comes
    /// here, after the output, where the agent got it.
    Finished { entry: Entry<'a> },
    /// A piece of a terminal stream, ready to write (made safe unless raw).
    Terminal {
        seq: i64,
        input: bool,
        text: Cow<'a, str>,
    },
    /// The terminal's window size from here on.
    Window { cols: u32, rows: u32 },
    /// The session's end (when it has ended and no `session_close` event shows it).
    End,
}

/// The playback, in journal order, with its pauses. Unparseable timestamps count as no gap.
pub fn plan<'a>(
    session: &SessionRow,
    events: &'a [EventRow],
    pace: &Pace,
    streams: Streams,
) -> Vec<Step<'a>> {
    let entries = entries(events);
    // Held commands and the decisions that released them: the result moves to the decision.
    let decided: HashMap<i64, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event.kind == "approval_decision")
        .filter_map(|(i, e)| e.command.map(|seq| (seq, i)))
        .collect();
    let by_seq: HashMap<i64, &Entry<'a>> = entries.iter().map(|e| (e.event.seq, e)).collect();
    let start = parse_timestamp(&session.started_at);
    let mut clock = Clock {
        start,
        last: start,
        pace,
    };
    // A chunk's time is its channel's plus its offset: the channels' times, by seq.
    let channel_times: HashMap<i64, SystemTime> = entries
        .iter()
        .filter(|e| e.terminal.is_some())
        .filter_map(|e| Some((e.event.seq, parse_timestamp(&e.event.ts)?)))
        .collect();
    // A terminal event's time: its channel's plus its offset, else its own commit time.
    let at = |channel: Option<i64>, offset_ms: Option<u64>, event: &EventRow| {
        channel
            .and_then(|seq| channel_times.get(&seq))
            .zip(offset_ms)
            .and_then(|(start, ms)| start.checked_add(Duration::from_millis(ms)))
            .or_else(|| parse_timestamp(&event.ts))
    };
    let played = |e: &'a EventRow| terminal_chunk(e).filter(|c| streams.input || !c.input);
    // The last chunk played of each channel, after which the channel's result is shown.
    let last_chunk: HashMap<i64, i64> = events
        .iter()
        .filter_map(|e| Some((played(e)?.channel?, e.seq)))
        .collect();
    let mut finishing: HashMap<i64, Entry<'a>> = HashMap::new();
    // Entries are a subsequence of the events, so one pass over the events, taking the next
    // entry when its event comes up, interleaves them with the terminal chunks in order.
    let mut next_entry = entries.iter().peekable();
    let mut steps: Vec<Step<'a>> = Vec::new();
    for event in events {
        if let Some(entry) = next_entry.next_if(|e| e.event.seq == event.seq) {
            let (offset, wait) = clock.advance(parse_timestamp(&entry.event.ts));
            let held = is_command(&entry.event.kind)
                && entry.event.decision.as_deref() == Some("review")
                && decided.contains_key(&entry.event.seq);
            let releases = (entry.event.kind == "approval_decision")
                .then_some(entry.command)
                .flatten()
                .and_then(|seq| by_seq.get(&seq).map(|e| (*e).clone()));
            let streamed =
                !held && entry.result.is_some() && last_chunk.contains_key(&entry.event.seq);
            if streamed {
                finishing.insert(entry.event.seq, entry.clone());
            }
            steps.push(Step {
                offset,
                wait,
                frame: Frame::Event {
                    entry: entry.clone(),
                    with_result: !held && !streamed,
                    releases,
                },
            });
            continue;
        }
        if let Some(w) = terminal_window(event) {
            let (offset, wait) = clock.advance(at(w.channel, w.offset_ms, event));
            steps.push(Step {
                offset,
                wait,
                frame: Frame::Window {
                    cols: w.cols,
                    rows: w.rows,
                },
            });
            continue;
        }
        let Some(chunk) = played(event) else {
            continue;
        };
        let (offset, wait) = clock.advance(at(chunk.channel, chunk.offset_ms, event));
        steps.push(Step {
            offset,
            wait,
            frame: Frame::Terminal {
                seq: event.seq,
                input: chunk.input,
                text: if streams.raw {
                    Cow::Borrowed(chunk.data)
                } else {
                    Cow::Owned(terminal_text(chunk.data))
                },
            },
        });
        let finished = chunk
            .channel
            .filter(|channel| last_chunk.get(channel) == Some(&event.seq))
            .and_then(|channel| finishing.remove(&channel));
        if let Some(entry) = finished {
            steps.push(Step {
                offset,
                wait: Duration::ZERO,
                frame: Frame::Finished { entry },
            });
        }
    }
    // The end, unless a `session_close` event already showed it.
    let closed = entries.iter().any(|e| e.event.kind == "session_close");
    if let Some(end) = session.ended_at.as_ref().filter(|_| !closed) {
        let (offset, wait) = clock.advance(parse_timestamp(end));
        steps.push(Step {
            offset,
            wait,
            frame: Frame::End,
        });
    }
    steps
}

/// Turns timestamps into offsets and pauses, in order.
struct Clock<'p> {
    start: Option<SystemTime>,
    last: Option<SystemTime>,
    pace: &'p Pace,
}

impl Clock<'_> {
    /// Moves to time `t` (`None`: a timestamp that did not parse).
    fn advance(&mut self, t: Option<SystemTime>) -> (Duration, Duration) {
        let Some(t) = t else {
            let offset = self.since_start(self.last);
            return (offset, Duration::ZERO);
        };
        self.start.get_or_insert(t);
        // Commit order and clock order can disagree by a millisecond: never a negative gap,
        // and the clock never runs backwards.
        let gap = self
            .last
            .and_then(|last| t.duration_since(last).ok())
            .unwrap_or(Duration::ZERO);
        if self.last.is_none_or(|last| t > last) {
            self.last = Some(t);
        }
        (self.since_start(Some(t)), self.pace.wait_for(gap))
    }

    fn since_start(&self, t: Option<SystemTime>) -> Duration {
        match (self.start, t) {
            (Some(start), Some(t)) => t.duration_since(start).unwrap_or(Duration::ZERO),
            _ => Duration::ZERO,
        }
    }
}

/// Plays the session to `out`: the header, then each step after its pause (`sleep` does the
/// waiting, so tests can record instead), flushing after each so a terminal shows it live.
#[allow(clippy::too_many_arguments)] // each is one independent choice of the caller's
pub fn play(
    session: &SessionRow,
    events: &[EventRow],
    counts: Option<&CommandCounts>,
    pace: &Pace,
    streams: Streams,
    term: &Term,
    out: &mut dyn Write,
    sleep: &mut dyn FnMut(Duration),
) -> io::Result<()> {
    let steps = plan(session, events, pace, streams);
    let shown = steps
        .iter()
        .filter(|s| matches!(s.frame, Frame::Event { .. }))
        .count();
    let chunks = steps
        .iter()
        .filter(|s| matches!(s.frame, Frame::Terminal { .. }))
        .count();
    let chunks = if chunks > 0 {
        format!(
            " and {chunks} terminal chunk{}",
            if chunks == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    let how = if pace.speed == 0.0 {
        "without pauses".to_owned()
    } else {
        format!(
            "at {}x, pauses capped at {}",
            pace.speed,
            humantime::format_duration(pace.max_wait)
        )
    };
    write!(
        out,
        "{}replaying {shown} event{}{chunks} {how}\n\n",
        session_header(session, counts, term),
        if shown == 1 { "" } else { "s" },
    )?;
    out.flush()?;
    // Terminal output need not end its lines; the next event starts on a line of its own.
    let mut mid_line = false;
    for step in &steps {
        if !step.wait.is_zero() {
            sleep(step.wait);
        }
        let text = render_step(session, step, term);
        let terminal = matches!(step.frame, Frame::Terminal { .. });
        if mid_line && !terminal {
            out.write_all(b"\n")?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if !text.is_empty() {
            mid_line = !text.ends_with('\n');
        }
    }
    Ok(())
}

/// One step as text.
pub fn render_step(session: &SessionRow, step: &Step<'_>, term: &Term) -> String {
    let at = term.paint(Paint::Dim, &format!("[{}]", format_offset(step.offset)));
    match &step.frame {
        // The stream as it came, without a prefix: it is the screen the agent saw.
        Frame::Terminal { input, text, .. } => {
            if *input {
                term.paint(Paint::Cyan, text)
            } else {
                text.to_string()
            }
        }
        Frame::Finished { entry } => {
            let mut out = format!(
                "{at} #{} {} finished\n",
                entry.event.seq,
                one_line(&entry.event.kind)
            );
            out.push_str(&result_block(entry, term));
            out
        }
        Frame::Window { cols, rows } => format!(
            "{at} {}\n",
            term.paint(Paint::Dim, &format!("window {cols}x{rows}"))
        ),
        Frame::End => format!(
            "{at} session ended: {}, up {} B, down {} B\n",
            one_line(session.outcome.as_deref().unwrap_or("?")),
            session.bytes_up,
            session.bytes_down
        ),
        Frame::Event {
            entry,
            with_result,
            releases,
        } => {
            let e = entry.event;
            let mut out = format!("{at} #{} {}", e.seq, one_line(&e.kind));
            if let Some(d) = &e.decision {
                out.push(' ');
                out.push_str(&term.paint(Paint::decision(d), &one_line(d)));
            }
            if let Some(rule) = &e.rule {
                out.push_str(&format!(" ({})", one_line(rule)));
            }
            let what = entry.what();
            if is_command(&e.kind) {
                // The statement on its own line, as the agent sent it (masked in the journal).
                out.push_str(&format!("\n  > {}", term.paint(what.paint, &what.text)));
            } else {
                out.push_str(&format!("  {}", term.paint(what.paint, &what.text)));
            }
            out.push('\n');
            for note in entry.notes(false) {
                out.push_str(&format!("  {}\n", term.paint(note.paint, &note.text)));
            }
            if *with_result {
                out.push_str(&result_block(entry, term));
            } else if is_command(&e.kind) && e.decision.as_deref() == Some("review") {
                out.push_str(&format!(
                    "  {}\n",
                    term.paint(Paint::Yellow, "(held: waiting for an approver)")
                ));
            }
            if let Some(command) = releases {
                out.push_str(&format!("  result of #{}:\n", command.event.seq));
                out.push_str(&result_block(command, term));
            }
            out
        }
    }
}

/// The result as the agent received it: summary, masking counts, then the sample rows.
fn result_block(entry: &Entry<'_>, term: &Term) -> String {
    let mut out = String::new();
    for note in entry.result_notes() {
        out.push_str(&format!("  {}\n", term.paint(note.paint, &note.text)));
    }
    if let Some(rows) = entry
        .result
        .and_then(|r| r.get("sample"))
        .and_then(Value::as_array)
    {
        out.push_str(&sample_rows(rows, term));
    }
    out
}

/// Sample rows (a JSON array of arrays of strings or nulls) as an aligned block prefixed with
/// `| `, NULL shown as `NULL`. Values are already masked: they are what the agent received.
pub fn sample_rows(rows: &[Value], term: &Term) -> String {
    let columns = rows
        .iter()
        .filter_map(Value::as_array)
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    if columns == 0 {
        return String::new();
    }
    let mut table = Table::new(
        (0..columns)
            .map(|_| Column::new("").max(40).shrink(4))
            .collect(),
    )
    .without_header();
    for row in rows.iter().filter_map(Value::as_array) {
        table.push(
            row.iter()
                .map(|v| match v {
                    Value::Null => Cell::new("NULL").paint(Paint::Dim),
                    Value::String(s) => Cell::new(s),
                    other => Cell::new(other.to_string()),
                })
                .collect(),
        );
    }
    // The prefix takes four columns of the terminal.
    let inner = Term {
        width: term.width.map(|w| w.saturating_sub(4)),
        ..*term
    };
    table
        .render(&inner)
        .lines()
        .map(|line| format!("  | {line}\n"))
        .collect()
}

/// `+0.025s`, `+12.500s`, `+3m07.250s`, `+1h02m03.000s`.
pub fn format_offset(d: Duration) -> String {
    let ms = d.as_millis();
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    match (h, m) {
        (0, 0) => format!("+{s}.{ms:03}s"),
        (0, m) => format!("+{m}m{s:02}.{ms:03}s"),
        (h, m) => format!("+{h}h{m:02}m{s:02}.{ms:03}s"),
    }
}
