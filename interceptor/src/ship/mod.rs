//! Shipping journal events to SIEMs and log pipelines, at least once.
//!
//! Why this exists: the journal is the host's source of truth, but a security team watches a
//! SIEM. Every event becomes one OCSF record ([`ocsf`]), the same for `journal export --format
//! ocsf` and for every sink, so a record carries the same `metadata.uid` (`{journal id}:{seq}`)
//! however it travels and however often.
//!
//! How: each `[[sink]]` ([`config`]) gets a thread with its own SQLite connection. It reads
//! events after the sink's cursor ([`source`]) in batches, hands them to the sink ([`file`],
//! [`syslog`], [`hec`]), and moves the cursor in `sink_cursors` only after the sink
//! acknowledged them (after Vector's checkpoints: never "probably sent"). A failure leaves the
//! cursor where it was, records the error for `ship status`, and retries the same events after
//! an exponential back-off (0.5 s doubling to 30 s). A crash or a stop between delivery and
//! acknowledgement re-delivers, with the same uid: duplicates, never gaps. With nothing new,
//! the thread polls every [`POLL`]: simple, and robust to every way events get written.
//!
//! What it does not do: it never writes events, and it never holds up the gateway; a sink
//! that is down only grows its lag. It talks to the journal's tables, not to the
//! [`crate::journal::Journal`] writer. The daemon (`exec`, `run`) starts a [`Shipper`] next to
//! its gateway and gives it a bounded time to drain when it stops; the cursor makes the next
//! start resume.

pub mod config;
mod file;
mod hec;
pub mod ocsf;
mod source;
mod syslog;

use std::{
    io::Write,
    path::Path,
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use rusqlite::Connection;
use serde::Serialize;

pub use config::{SinkConfig, SinkKind};

use crate::journal::JournalError;

/// How often a caught-up sink looks for new events.
pub const POLL: Duration = Duration::from_millis(200);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a stopping daemon lets its sinks catch up (see [`Shipper::stop`]).
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Events per read of `journal export`.
const EXPORT_BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    /// The `[[sink]]` entries do not make sense together, or a sink cannot be set up.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("journal query failed: {0}")]
    Query(#[from] rusqlite::Error),
    /// A sink refused or failed a delivery.
    #[error("sink {name:?}: {source}")]
    Sink { name: String, source: SinkError },
    /// The export's output (stdout) failed.
    #[error("writing the export: {0}")]
    Output(std::io::Error),
    /// The journal predates the hash chain and has no id for `metadata.uid` yet.
    #[error("journal {0} has no id yet (it predates the hash chain): it gets one when `interceptor doctor`, `exec` or `run` next opens it")]
    NoJournalId(std::path::PathBuf),
    #[error("starting the shipper for sink {name:?}: {source}")]
    Thread {
        name: String,
        source: std::io::Error,
    },
}

/// Why a delivery failed. Messages never include secrets (the HEC token).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The output file could not be written or rotated.
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The receiver could not be reached.
    #[error("connecting to {address}: {message}")]
    Connect { address: String, message: String },
    /// The connection broke while sending.
    #[error("sending to {address}: {source}")]
    Send {
        address: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    /// The secret file is missing, unreadable or malformed.
    #[error("token: {0}")]
    Token(String),
    /// The HTTP request failed before an answer.
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    /// The receiver answered, but not with success.
    #[error("{url} answered HTTP {status}: {body}")]
    Rejected {
        url: String,
        status: u16,
        body: String,
    },
}

/// One event, encoded once for whichever sink sends it.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub seq: i64,
    /// The event's RFC 3339 time, as journaled.
    pub at: String,
    /// The OCSF record as one line of JSON.
    pub line: String,
    pub summary: ocsf::Summary,
}

fn encode(journal_id: &str, event: &ocsf::JournalEvent) -> Record {
    let (line, summary) = ocsf::record_line(journal_id, event);
    Record {
        seq: event.seq,
        at: event.at.clone(),
        line,
        summary,
    }
}

/// A destination. Implementations block; each runs on its sink's own thread.
pub(crate) trait Sink: Send {
    /// Delivers a prefix of `records` (at least one record when there are any) and returns
    /// its length once the receiver has it. An error means nothing of this call counts as
    /// delivered.
    fn send(&mut self, records: &[Record]) -> Result<usize, SinkError>;
}

fn open_sink(config: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match &config.kind {
        SinkKind::File(c) => Box::new(file::FileOut::open(c)?),
        SinkKind::Syslog(c) => Box::new(syslog::SyslogOut::new(c)?),
        SinkKind::SplunkHec(c) => Box::new(hec::HecOut::new(c)?),
    })
}

/// A read-write connection for the shipper and the journal's id. Opening migrates the journal,
/// which creates `journal_meta` (with the id) and `sink_cursors`.
fn open_journal(path: &Path) -> Result<(Connection, String), ShipError> {
    let conn = crate::journal::open_connection(path)?;
    let id = crate::journal::journal_id(&conn)?
        .ok_or_else(|| ShipError::NoJournalId(path.to_owned()))?;
    Ok((conn, id))
}

/// One sink's delivery loop state.
struct Worker {
    name: String,
    conn: Connection,
    journal_id: String,
    sink: Box<dyn Sink>,
    batch_size: usize,
    /// The last acknowledged sequence number, as committed in `sink_cursors`.
    cursor: i64,
}

impl Worker {
    fn new(journal: &Path, config: &SinkConfig) -> Result<Worker, ShipError> {
        let sink = open_sink(config).map_err(|source| ShipError::Sink {
            name: config.name.clone(),
            source,
        })?;
        let (conn, journal_id) = open_journal(journal)?;
        let cursor = source::cursor(&conn, &config.name)?.acked_seq;
        Ok(Worker {
            name: config.name.clone(),
            conn,
            journal_id,
            sink,
            batch_size: config.batch_size,
            cursor,
        })
    }

    /// Reads one batch after the cursor and delivers it. Returns how many events were
    /// delivered (0: caught up). Whatever the sink acknowledged before an error is committed.
    fn step(&mut self) -> Result<usize, ShipError> {
        let events = source::events_after(&self.conn, self.cursor, self.batch_size)?;
        let records: Vec<Record> = events.iter().map(|e| encode(&self.journal_id, e)).collect();
        let mut sent = 0;
        while sent < records.len() {
            let n = match self.sink.send(&records[sent..]) {
                Ok(n) => n.clamp(1, records.len() - sent),
                Err(source) => {
                    let error = source.to_string();
                    if let Err(e) = source::record_error(&self.conn, &self.name, &error) {
                        tracing::debug!(sink = %self.name, error = %e, "could not record the sink's error");
                    }
                    return Err(ShipError::Sink {
                        name: self.name.clone(),
                        source,
                    });
                }
            };
            sent += n;
            let seq = records[sent - 1].seq;
            source::acknowledge(&self.conn, &self.name, seq)?;
            self.cursor = seq;
        }
        Ok(sent)
    }

    /// The thread's loop: deliver, poll when caught up, back off on failure, until told to
    /// stop (or, when draining, until caught up).
    fn run(mut self, control: &Control) {
        let mut backoff = BACKOFF_FIRST;
        let mut failing: Option<String> = None;
        while control.phase() != Phase::Stop {
            match self.step() {
                Ok(0) => {
                    if control.phase() == Phase::Drain {
                        return;
                    }
                    control.sleep(POLL);
                }
                Ok(_) => {
                    if failing.take().is_some() {
                        tracing::info!(sink = %self.name, cursor = self.cursor, "sink delivering again");
                    }
                    backoff = BACKOFF_FIRST;
                }
                Err(e) => {
                    let message = e.to_string();
                    // Once per distinct error, not once per retry.
                    if failing.as_deref() != Some(message.as_str()) {
                        tracing::warn!(sink = %self.name, error = %message, retry_in = ?backoff, "shipping failed; will retry");
                    }
                    failing = Some(message);
                    control.sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
enum Phase {
    #[default]
    Run,
    /// Deliver what is there, then end.
    Drain,
    Stop,
}

/// The phase all sink threads follow, with a wake-up for their sleeps.
#[derive(Default)]
struct Control {
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Control {
    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves forward only (Run → Drain → Stop) and wakes every sleeper.
    fn advance(&self, to: Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if to > *phase {
            *phase = to;
            self.changed.notify_all();
        }
    }

    /// Sleeps up to `d`, or until the phase changes.
    fn sleep(&self, d: Duration) {
        let phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let start = *phase;
        drop(
            self.changed
                .wait_timeout_while(phase, d, |p| *p == start)
                .unwrap_or_else(|p| p.into_inner()),
        );
    }
}

/// The running sinks of a daemon. Dropping it stops them at once; [`Shipper::stop`] lets them
/// catch up first.
pub struct Shipper {
    control: Arc<Control>,
    /// Each resolves when its thread has ended (the sender is dropped with the thread).
    done: Vec<(String, tokio::sync::oneshot::Receiver<()>)>,
}

impl Shipper {
    /// Validates the sinks, sets each one up (files opened, TLS and tokens read; network
    /// receivers are only contacted when there is something to send) and starts one thread
    /// per sink. Call after the journal is opened, so its schema is current.
    pub fn start(journal: &Path, sinks: &[SinkConfig]) -> Result<Shipper, ShipError> {
        config::validate_all(sinks).map_err(ShipError::Config)?;
        let control = Arc::new(Control::default());
        let mut workers = Vec::new();
        for sink in sinks {
            workers.push(Worker::new(journal, sink)?);
        }
        let mut done = Vec::new();
        for worker in workers {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let control = control.clone();
            let name = worker.name.clone();
            std::thread::Builder::new()
                .name(format!("ship-{name}"))
                .spawn(move || {
                    let _done = tx;
                    worker.run(&control);
                })
                .map_err(|source| ShipError::Thread {
                    name: name.clone(),
                    source,
                })?;
            done.push((name, rx));
        }
        if !sinks.is_empty() {
            tracing::info!(sinks = sinks.len(), "shipping journal events");
        }
        Ok(Shipper { control, done })
    }

    /// Lets every sink deliver what the journal holds, for at most `grace`, then stops them.
    /// A sink that could not catch up resumes from its cursor at the next start.
    pub async fn stop(mut self, grace: Duration) {
        self.control.advance(Phase::Drain);
        let deadline = tokio::time::Instant::now() + grace;
        for (name, done) in self.done.drain(..) {
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                tracing::warn!(sink = %name, "sink did not catch up before stopping; it resumes from its cursor next time");
            }
        }
        self.control.advance(Phase::Stop);
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.control.advance(Phase::Stop);
    }
}

/// Delivers everything after `sink`'s cursor, on this thread, and returns how many events
/// it delivered; the first failure is returned instead of retried. For benchmarks and tools.
pub fn ship_pending(journal: &Path, sink: &SinkConfig) -> Result<u64, ShipError> {
    let mut worker = Worker::new(journal, sink)?;
    let mut total = 0u64;
    loop {
        match worker.step()? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// `journal export --format ocsf`: every event after `since`, one OCSF record per line, in
/// sequence order. Returns how many were written.
pub fn export(journal: &Path, since: i64, out: &mut dyn Write) -> Result<u64, ShipError> {
    let conn = crate::journal::reader::open_read_only(journal)?;
    // Exporting never writes: a journal from before the hash chain (no id yet) gets its id
    // when the daemon or `doctor` migrates it, and only then do records have their uids.
    let journal_id = crate::journal::journal_id(&conn)?
        .ok_or_else(|| ShipError::NoJournalId(journal.to_owned()))?;
    let mut after = since;
    let mut written = 0u64;
    loop {
        let events = source::events_after(&conn, after, EXPORT_BATCH)?;
        let Some(last) = events.last() else {
            break;
        };
        after = last.seq;
        for e in &events {
            let record = encode(&journal_id, e);
            out.write_all(record.line.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .map_err(ShipError::Output)?;
            written += 1;
        }
    }
    out.flush().map_err(ShipError::Output)?;
    Ok(written)
}

/// One line of `ship status`. Field names are the JSON contract of `--json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SinkStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The last sequence number the sink acknowledged.
    pub cursor: i64,
    /// The newest sequence number in the journal.
    pub last_seq: i64,
    /// Events not yet acknowledged.
    pub lag: i64,
    pub last_error: Option<String>,
    pub updated_at: Option<String>,
}

/// The cursor, lag and last error of each configured sink, read-only.
pub fn status(journal: &Path, sinks: &[SinkConfig]) -> Result<Vec<SinkStatus>, ShipError> {
    config::validate_all(sinks).map_err(ShipError::Config)?;
    let conn = crate::journal::reader::open_read_only(journal)?;
    let last_seq = source::last_seq(&conn)?;
    sinks
        .iter()
        .map(|s| {
            let row = source::cursor(&conn, &s.name)?;
            Ok(SinkStatus {
                name: s.name.clone(),
                kind: s.kind.type_name(),
                cursor: row.acked_seq,
                last_seq,
                lag: (last_seq - row.acked_seq).max(0),
                last_error: row.last_error,
                updated_at: row.updated_at,
            })
        })
        .collect()
}

/// `ship status` as aligned text.
pub fn status_table(rows: &[SinkStatus]) -> String {
    if rows.is_empty() {
        return "(no [[sink]] configured)\n".to_owned();
    }
    let header = [
        "SINK",
        "TYPE",
        "CURSOR",
        "LAST",
        "LAG",
        "UPDATED",
        "LAST ERROR",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.kind.to_owned(),
                r.cursor.to_string(),
                r.last_seq.to_string(),
                r.lag.to_string(),
                r.updated_at.clone().unwrap_or_else(|| "-".to_owned()),
                r.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut s = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned();
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests;
