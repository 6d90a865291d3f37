//! `interceptor journal verify`: is the journal still what the gateway wrote?
//!
//! The writer ([`super::insert_event`]) links every event to the one before it by hash. This
//! module walks the chain in id order and recomputes it, which finds a row whose content was
//! edited, rows deleted from the middle, the start or the end, and rows moved to other ids.
//! Then it checks what readers see but the chain does not cover directly: a command's
//! `result` column must equal its latest chained `result` event, and a session row must equal
//! its chained `session_open` and `session_close` events. Retention is allowed to delete a
//! prefix of the chain ([`super::prune_file`]): the walk then starts from the latest
//! checkpoint, which must itself be recorded in the chain by a `prune` event.
//!
//! The database is the index of the segment log ([`super::segment`]), which is what the gateway
//! writes first: the log's own chain is walked too (every frame's checksum, every link and
//! hash, the seams between segments), and every indexed event must be in the index with the
//! hash the log has for it, and nothing else. So a rewrite of the database's tail, hashes
//! recomputed, shows up as long as the log is intact; events appended but not indexed yet are
//! counted, not reported.
//!
//! It only reads, in one read transaction (a consistent snapshot while a daemon writes), and
//! never repairs: a broken chain is evidence. It cannot see a rewrite of the whole tail by
//! someone who recomputes every later hash; shipping the hashes off the host is what catches
//! that (docs/journal.md).

use std::{fmt, path::Path};

use rusqlite::{types::ValueRef, Connection, OptionalExtension as _};
use serde::Serialize;

use super::{
    event_hash, schema,
    segment::{self, Head, Record},
    ChainedContent, JournalError, GENESIS_HASH,
};

/// Findings kept in one report: past this many the journal is plainly broken, and the first
/// ones say where to look.
const MAX_FINDINGS: usize = 100;

/// What is wrong, by the kind of tampering it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// An event's content no longer matches its hash, or the hash the next event links to.
    Edited,
    /// Events are missing: an id gap, a link to an event that is gone, or a deleted tail.
    Deleted,
    /// An event links to another event than the one before it, which is still there: events
    /// were moved to other ids.
    Reordered,
    /// An event has no hash: it was written around the gateway.
    Unchained,
    /// A command's `result` column differs from its latest chained `result` event.
    ResultChanged,
    /// A session row differs from its chained `session_open`/`session_close` events, or has
    /// none, or is gone while its events remain.
    SessionChanged,
    /// The checkpoint the chain starts from is not recorded by a chained `prune` event, or the
    /// part a prune deleted did not verify.
    Checkpoint,
    /// The segment log is broken (a frame, a link, a hash, a seam between segments), or the
    /// index differs from it.
    Log,
}

impl Problem {
    fn label(self) -> &'static str {
        match self {
            Problem::Edited => "content edited",
            Problem::Deleted => "deleted",
            Problem::Reordered => "reordered",
            Problem::Unchained => "unchained",
            Problem::ResultChanged => "result changed",
            Problem::SessionChanged => "session changed",
            Problem::Checkpoint => "checkpoint",
            Problem::Log => "log",
        }
    }
}

/// One problem, naming the row it was found at.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// The event (its sequence number, `events.id`) the problem was found at.
    pub seq: Option<i64>,
    /// That event's kind.
    pub kind: Option<String>,
    /// The session row, for session findings.
    pub session: Option<i64>,
    pub problem: Problem,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.seq, &self.kind, self.session) {
            (Some(seq), Some(kind), _) => write!(f, "seq {seq} ({kind}): ")?,
            (Some(seq), None, _) => write!(f, "seq {seq}: ")?,
            (None, _, Some(session)) => write!(f, "session {session}: ")?,
            (None, _, None) => {}
        }
        write!(f, "{}: {}", self.problem.label(), self.message)
    }
}

/// A prune checkpoint: the last deleted event and its hash, which the rest links to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub at: String,
    pub cutoff: String,
    pub last_seq: i64,
    pub last_hash: String,
    pub events_deleted: i64,
    /// The first problem of the deleted part, if it did not verify when it was pruned.
    pub broken: Option<String>,
}

/// The answer of `journal verify`. Field names are the JSON contract of `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// No finding.
    pub ok: bool,
    pub journal_id: Option<String>,
    /// Events walked.
    pub events: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The hash of the last event: the chain's head, worth keeping elsewhere.
    pub last_hash: Option<String>,
    /// The latest prune checkpoint, where the walk started (`null`: from the genesis).
    pub checkpoint: Option<Checkpoint>,
    /// Events up to this one were written before the chain existed and chained by the
    /// upgrade: edits made to them before it cannot be detected.
    pub chain_migrated_seq: Option<i64>,
    /// In the order found; the first chain finding is the first broken link.
    pub findings: Vec<Finding>,
    /// More problems were found than [`MAX_FINDINGS`].
    pub truncated: bool,
    /// The segment log (`null`: the journal has none yet).
    pub log: Option<LogSummary>,
}

/// What `verify` found in the segment log.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LogSummary {
    pub segments: u64,
    /// Events in the log.
    pub events: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The index holds the log up to this event; later ones are appended, not indexed yet.
    pub indexed_seq: i64,
}

impl fmt::Display for VerifyReport {
    /// One line per finding, then one summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "BROKEN {finding}")?;
        }
        if self.truncated {
            writeln!(
                f,
                "BROKEN … and more (only the first {MAX_FINDINGS} are listed)"
            )?;
        }
        let id = self.journal_id.as_deref().unwrap_or("(no id)");
        let range = match (self.first_seq, self.last_seq) {
            (Some(first), Some(last)) => format!("seq {first}..{last}"),
            _ => "no events".to_owned(),
        };
        let head = self
            .last_hash
            .as_deref()
            .map(|h| format!(", head {}", h.get(..16).unwrap_or(h)))
            .unwrap_or_default();
        let from = match &self.checkpoint {
            Some(c) => format!(
                ", verified from the checkpoint at seq {} (pruned at {})",
                c.last_seq, c.at
            ),
            None => String::new(),
        };
        let log = match &self.log {
            Some(log) => {
                let range = match (log.first_seq, log.last_seq) {
                    (Some(first), Some(last)) => format!("seq {first}..{last}"),
                    _ => "no events".to_owned(),
                };
                format!(
                    "; log: {} segment(s), {range}, indexed through seq {}",
                    log.segments, log.indexed_seq
                )
            }
            None => String::new(),
        };
        if self.ok {
            write!(
                f,
                "ok: journal {id}: {} events intact ({range}{head}){from}{log}",
                self.events
            )
        } else {
            write!(
                f,
                "journal {id}: {} problem(s) in {} events ({range}{head}){from}{log}",
                self.findings.len(),
                self.events
            )
        }
    }
}

/// Verifies the journal at `path`, read-only.
pub fn verify_file(path: &Path) -> Result<VerifyReport, JournalError> {
    let conn = super::reader::open_read_only(path)?;
    let version = schema::version(&conn)?;
    if version < schema::CHAIN_VERSION {
        return Err(JournalError::NotChained {
            path: path.to_owned(),
            found: version,
        });
    }
    if version > schema::CURRENT_VERSION {
        return Err(JournalError::TooNew {
            path: path.to_owned(),
            found: version,
            supported: schema::CURRENT_VERSION,
        });
    }
    let tx = conn.unchecked_transaction()?;
    let mut report = verify_in(&tx)?;
    if version >= schema::LOG_VERSION {
        let dir = super::segments_dir(path);
        let mut findings = Findings {
            list: std::mem::take(&mut report.findings),
            truncated: report.truncated,
        };
        let checkpoint_seq = report.checkpoint.as_ref().map_or(0, |c| c.last_seq);
        report.log = check_log(&tx, &dir, checkpoint_seq, &mut findings)?;
        report.ok = findings.list.is_empty();
        report.findings = findings.list;
        report.truncated = findings.truncated;
    }
    tx.finish()?;
    Ok(report)
}

/// Verifies the journal behind `conn` (migrated to the chain), in one read transaction; the
/// database only (see [`verify_file`] for the log too).
pub fn verify_connection(conn: &Connection) -> Result<VerifyReport, JournalError> {
    let tx = conn.unchecked_transaction()?;
    let report = verify_in(&tx)?;
    tx.finish()?;
    Ok(report)
}

fn log_finding(seq: Option<i64>, message: String) -> Finding {
    Finding {
        seq,
        kind: None,
        session: None,
        problem: Problem::Log,
        message,
    }
}

/// Walks the segment log's chain and compares the index with it (see the module doc).
fn check_log(
    conn: &Connection,
    dir: &Path,
    checkpoint_seq: i64,
    findings: &mut Findings,
) -> Result<Option<LogSummary>, JournalError> {
    let numbers = segment::list(dir)?;
    let Some(&last_number) = numbers.last() else {
        return Ok(None);
    };
    let (_, indexed_seq) = super::index::read_position(conn)?;
    let mut summary = LogSummary {
        segments: numbers.len() as u64,
        indexed_seq,
        ..LogSummary::default()
    };
    let first_start = super::index::segment_start(dir, numbers[0])?.unwrap_or(1);
    // The index's rows from the log's first event through the indexed one, merged with the log.
    let mut stmt = conn.prepare(
        "SELECT id, hash FROM events WHERE id >= ?1 AND id > ?2 AND id <= ?3 ORDER BY id",
    )?;
    let mut rows = stmt.query(rusqlite::params![first_start, checkpoint_seq, indexed_seq])?;
    let mut row: Option<(i64, Option<String>)> = match rows.next()? {
        Some(r) => Some((r.get(0)?, r.get(1)?)),
        None => None,
    };
    let mut expected: Option<Head> = None;
    let mut previous_number: Option<u64> = None;
    for &number in &numbers {
        let path = segment::segment_path(dir, number);
        if let Some(previous) = previous_number.filter(|&p| p + 1 != number) {
            findings.push(log_finding(
                None,
                format!("segments {}..{} are missing", previous + 1, number - 1),
            ));
        }
        previous_number = Some(number);
        let scan = segment::read_segment(&path)?;
        // The newest segment may end in a write still under way.
        if let Some(problem) = scan.problem.as_ref().filter(|_| number != last_number) {
            findings.push(log_finding(
                None,
                format!(
                    "segment {} is corrupt at byte {}: {problem}",
                    path.display(),
                    scan.end
                ),
            ));
        }
        for (record, _) in scan.records {
            match record {
                Record::Start(head) => {
                    match &expected {
                        Some(exp) if *exp != head => findings.push(log_finding(
                            Some(head.next_seq),
                            format!(
                                "segment {number} starts at seq {} after {}, but the one before                                  ended at seq {} after {}",
                                head.next_seq,
                                short(&head.last_hash),
                                exp.next_seq,
                                short(&exp.last_hash)
                            ),
                        )),
                        Some(_) => {}
                        None => {
                            // The first segment continues what the index held before it (or
                            // what a prune deleted).
                            let before: Option<Option<String>> = conn
                                .query_row(
                                    "SELECT hash FROM events WHERE id = ?1",
                                    [head.next_seq - 1],
                                    |r| r.get(0),
                                )
                                .optional()?;
                            if let Some(hash) = before {
                                if hash.as_deref() != Some(head.last_hash.as_str()) {
                                    findings.push(log_finding(
                                        Some(head.next_seq),
                                        format!(
                                            "the log starts after a hash ({}) that is not the                                              index's seq {}",
                                            short(&head.last_hash),
                                            head.next_seq - 1
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                    expected = Some(head);
                }
                Record::Seal(head) => {
                    if expected.as_ref() != Some(&head) {
                        findings.push(log_finding(
                            Some(head.next_seq),
                            format!("segment {number} is sealed at a head it does not end with"),
                        ));
                    }
                }
                Record::Run(_) => {}
                Record::Event(e) => {
                    let exp = expected.take().unwrap_or(Head {
                        next_seq: e.seq,
                        last_hash: e.prev_hash.clone(),
                    });
                    if e.seq != exp.next_seq {
                        findings.push(log_finding(
                            Some(e.seq),
                            format!("the log jumps from seq {} to {}", exp.next_seq - 1, e.seq),
                        ));
                    } else if e.prev_hash != exp.last_hash {
                        findings.push(log_finding(
                            Some(e.seq),
                            "it does not link to the event before it in the log".to_owned(),
                        ));
                    } else if event_hash(&e.prev_hash, &e.content()) != e.hash {
                        findings.push(log_finding(
                            Some(e.seq),
                            "its content in the log no longer matches its hash".to_owned(),
                        ));
                    }
                    summary.events += 1;
                    summary.first_seq.get_or_insert(e.seq);
                    summary.last_seq = Some(e.seq);
                    if e.seq > checkpoint_seq && e.seq <= indexed_seq && e.seq >= first_start {
                        // Index rows the log does not have.
                        while let Some((id, _)) = row.as_ref().filter(|(id, _)| *id < e.seq) {
                            findings.push(log_finding(
                                Some(*id),
                                "in the index but not in the log".to_owned(),
                            ));
                            row = match rows.next()? {
                                Some(r) => Some((r.get(0)?, r.get(1)?)),
                                None => None,
                            };
                        }
                        match &row {
                            Some((id, hash)) if *id == e.seq => {
                                if hash.as_deref() != Some(e.hash.as_str()) {
                                    findings.push(log_finding(
                                        Some(e.seq),
                                        format!(
                                            "the index has another event here than the log                                              (hash {} in the log)",
                                            short(&e.hash)
                                        ),
                                    ));
                                }
                                row = match rows.next()? {
                                    Some(r) => Some((r.get(0)?, r.get(1)?)),
                                    None => None,
                                };
                            }
                            _ => findings.push(log_finding(
                                Some(e.seq),
                                "in the log but not in the index".to_owned(),
                            )),
                        }
                    }
                    expected = Some(Head {
                        next_seq: e.seq + 1,
                        last_hash: e.hash,
                    });
                }
            }
        }
    }
    while let Some((id, _)) = row {
        findings.push(log_finding(
            Some(id),
            "in the index but not in the log".to_owned(),
        ));
        row = match rows.next()? {
            Some(r) => Some((r.get(0)?, r.get(1)?)),
            None => None,
        };
    }
    Ok(Some(summary))
}

fn verify_in(conn: &Connection) -> Result<VerifyReport, JournalError> {
    let start = chain_start(conn)?;
    let mut walk = walk_chain(conn, &start, None, MAX_FINDINGS)?;
    let mut findings = Findings {
        list: std::mem::take(&mut walk.findings),
        truncated: walk.truncated,
    };
    check_tail(conn, &start, &walk, &mut findings)?;
    check_checkpoints(conn, &start, &mut findings)?;
    check_results(conn, &mut findings)?;
    check_sessions(conn, &start, &mut findings)?;
    let chain_migrated_seq = schema::meta(conn, "chain_migrated_seq")?
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|&seq| seq > 0);
    Ok(VerifyReport {
        ok: findings.list.is_empty(),
        journal_id: schema::meta(conn, "journal_id")?,
        events: walk.events,
        first_seq: walk.first_seq,
        last_seq: walk.last_seq,
        last_hash: walk.last_hash,
        checkpoint: start.checkpoint,
        chain_migrated_seq,
        findings: findings.list,
        truncated: findings.truncated,
        log: None,
    })
}

struct Findings {
    list: Vec<Finding>,
    truncated: bool,
}

impl Findings {
    fn push(&mut self, finding: Finding) {
        if self.list.len() < MAX_FINDINGS {
            self.list.push(finding);
        } else {
            self.truncated = true;
        }
    }
}

/// Where the walk starts: after the latest checkpoint, or at the genesis.
#[derive(Debug, Clone)]
pub(crate) struct ChainStart {
    pub checkpoint: Option<Checkpoint>,
    /// The hash the first remaining event must link to.
    pub prev_hash: String,
    /// The id the first remaining event must have.
    pub next_seq: i64,
}

pub(crate) fn chain_start(conn: &Connection) -> rusqlite::Result<ChainStart> {
    let checkpoint = conn
        .query_row(
            "SELECT at, cutoff, last_seq, last_hash, events_deleted, broken
               FROM journal_checkpoints ORDER BY id DESC LIMIT 1",
            [],
            |row| {
                Ok(Checkpoint {
                    at: row.get(0)?,
                    cutoff: row.get(1)?,
                    last_seq: row.get(2)?,
                    last_hash: row.get(3)?,
                    events_deleted: row.get(4)?,
                    broken: row.get(5)?,
                })
            },
        )
        .optional()?;
    Ok(match &checkpoint {
        Some(c) => ChainStart {
            prev_hash: c.last_hash.clone(),
            next_seq: c.last_seq + 1,
            checkpoint,
        },
        None => ChainStart {
            checkpoint: None,
            prev_hash: GENESIS_HASH.to_owned(),
            next_seq: 1,
        },
    })
}

/// The result of walking the chain.
#[derive(Debug, Default)]
pub(crate) struct ChainWalk {
    pub events: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub last_hash: Option<String>,
    pub findings: Vec<Finding>,
    pub truncated: bool,
}

/// One stored event, read leniently: a column whose type was changed by hand is kept in a
/// textual form, which then fails its hash instead of failing the walk.
struct Stored {
    id: i64,
    session_id: Option<i64>,
    /// Set when `session_id` holds something other than an integer or null.
    session_id_text: Option<String>,
    at: String,
    kind: String,
    statement: Option<String>,
    decision: Option<String>,
    rule: Option<String>,
    detail: String,
    prev_hash: Option<String>,
    hash: Option<String>,
}

fn text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(r) => Some(r.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

impl Stored {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
        let (session_id, session_id_text) = match row.get_ref(1)? {
            ValueRef::Null => (None, None),
            ValueRef::Integer(i) => (Some(i), None),
            other => (None, Some(text(other).unwrap_or_default())),
        };
        Ok(Stored {
            id: row.get(0)?,
            session_id,
            session_id_text,
            at: text(row.get_ref(2)?).unwrap_or_default(),
            kind: text(row.get_ref(3)?).unwrap_or_default(),
            statement: text(row.get_ref(4)?),
            decision: text(row.get_ref(5)?),
            rule: text(row.get_ref(6)?),
            detail: text(row.get_ref(7)?).unwrap_or_default(),
            prev_hash: text(row.get_ref(8)?),
            hash: text(row.get_ref(9)?),
        })
    }

    fn computed_hash(&self) -> String {
        let content = ChainedContent {
            id: self.id,
            session_id: self.session_id,
            at: &self.at,
            kind: &self.kind,
            statement: self.statement.as_deref(),
            decision: self.decision.as_deref(),
            rule: self.rule.as_deref(),
            detail: &self.detail,
        };
        let hash = event_hash(self.prev_hash.as_deref().unwrap_or_default(), &content);
        match &self.session_id_text {
            // Not what the gateway writes: it cannot match.
            Some(_) => format!("{hash}!"),
            None => hash,
        }
    }

    fn finding(&self, problem: Problem, message: String) -> Finding {
        Finding {
            seq: Some(self.id),
            kind: Some(self.kind.clone()),
            session: None,
            problem,
            message,
        }
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Walks the chain from `start` in id order (up to `upto`), recomputing each hash, and names
/// each broken link: the first finding is the first place the chain breaks. After a finding
/// the walk continues from the stored hash, so independent problems further on show up too.
pub(crate) fn walk_chain(
    conn: &Connection,
    start: &ChainStart,
    upto: Option<i64>,
    max_findings: usize,
) -> rusqlite::Result<ChainWalk> {
    let mut walk = ChainWalk::default();
    let mut stmt = conn.prepare(
        "SELECT id, session_id, at, kind, statement, decision, rule, detail, prev_hash, hash
           FROM events WHERE id <= ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([upto.unwrap_or(i64::MAX)])?;
    let mut expected_prev = start.prev_hash.clone();
    let mut expected_seq = start.next_seq;
    let mut previous_seq: Option<i64> = start.checkpoint.as_ref().map(|c| c.last_seq);
    while let Some(row) = rows.next()? {
        let event = Stored::read(row)?;
        walk.events += 1;
        walk.first_seq.get_or_insert(event.id);
        let finding = match (&event.prev_hash, &event.hash) {
            (None, _) | (_, None) => Some(
                event.finding(
                    Problem::Unchained,
                    "no hash: written around the gateway (by hand, or by a binary older than the \
                 chain while this one was running)"
                        .to_owned(),
                ),
            ),
            (Some(prev), Some(hash)) => {
                let linked = *prev == expected_prev;
                let intact = *hash == event.computed_hash();
                if !linked {
                    Some(diagnose_link(
                        conn,
                        &event,
                        prev,
                        expected_seq,
                        previous_seq,
                    )?)
                } else if !intact {
                    Some(event.finding(
                        Problem::Edited,
                        format!(
                            "its content no longer matches its hash (stored {}, computed {})",
                            short(hash),
                            short(&event.computed_hash())
                        ),
                    ))
                } else if event.id != expected_seq {
                    Some(event.finding(
                        Problem::Deleted,
                        missing_range(expected_seq, event.id - 1, "the chain links over them"),
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(finding) = finding {
            if walk.findings.len() < max_findings {
                walk.findings.push(finding);
            } else {
                walk.truncated = true;
            }
        }
        expected_prev = event.hash.clone().unwrap_or_default();
        expected_seq = event.id + 1;
        previous_seq = Some(event.id);
        walk.last_seq = Some(event.id);
        walk.last_hash = event.hash;
    }
    Ok(walk)
}

fn missing_range(first: i64, last: i64, why: &str) -> String {
    if first == last {
        format!("event {first} is missing ({why})")
    } else {
        format!("events {first}..{last} are missing ({why})")
    }
}

/// An event does not link to the one before it: was something deleted, moved or edited?
fn diagnose_link(
    conn: &Connection,
    event: &Stored,
    prev: &str,
    expected_seq: i64,
    previous_seq: Option<i64>,
) -> rusqlite::Result<Finding> {
    if event.id > expected_seq {
        return Ok(event.finding(
            Problem::Deleted,
            missing_range(
                expected_seq,
                event.id - 1,
                "an id gap, and this event links to a hash no remaining event has",
            ),
        ));
    }
    // The event it links to still exists elsewhere: rows were moved.
    let linked_to: Option<i64> = conn
        .query_row(
            "SELECT id FROM events WHERE hash = ?1 AND id != ?2 LIMIT 1",
            rusqlite::params![prev, event.id],
            |row| row.get(0),
        )
        .optional()?;
    let before = previous_seq
        .map(|s| format!("seq {s}"))
        .unwrap_or_else(|| "the start of the chain".to_owned());
    Ok(match linked_to {
        Some(other) => event.finding(
            Problem::Reordered,
            format!(
                "it links to the event now at seq {other}, not to {before}: events were moved \
                 to other ids"
            ),
        ),
        None if previous_seq.is_none() && event.id == expected_seq => event.finding(
            Problem::Deleted,
            format!(
                "the first event does not link to the start of the chain ({}): the events \
                 before it were deleted and ids renumbered, or the checkpoint was changed",
                short(prev)
            ),
        ),
        None => event.finding(
            Problem::Edited,
            format!(
                "it links to {}, which is not the hash of {before}: that event was edited \
                 (hash included) or replaced",
                short(prev)
            ),
        ),
    })
}

/// Events deleted from the end leave no broken link, but SQLite remembers the largest id it
/// ever gave out.
fn check_tail(
    conn: &Connection,
    start: &ChainStart,
    walk: &ChainWalk,
    findings: &mut Findings,
) -> rusqlite::Result<()> {
    let handed_out: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let last = walk.last_seq.unwrap_or(start.next_seq - 1);
    if let Some(seq) = handed_out.filter(|&seq| seq > last) {
        findings.push(Finding {
            seq: Some(last + 1),
            kind: None,
            session: None,
            problem: Problem::Deleted,
            message: missing_range(
                last + 1,
                seq,
                "deleted from the end: ids up to there were handed out",
            ),
        });
    }
    Ok(())
}

/// Every prune is recorded in the chain; a checkpoint without its `prune` event means the
/// prefix was not deleted by a prune. A prune of a broken part is reported forever.
fn check_checkpoints(
    conn: &Connection,
    start: &ChainStart,
    findings: &mut Findings,
) -> rusqlite::Result<()> {
    if let Some(c) = &start.checkpoint {
        let recorded: Option<i64> = conn
            .query_row(
                "SELECT id FROM events WHERE kind = 'prune' AND json_valid(detail)
                    AND json_extract(detail, '$.last_seq') = ?1
                    AND json_extract(detail, '$.last_hash') = ?2
                  LIMIT 1",
                rusqlite::params![c.last_seq, c.last_hash],
                |row| row.get(0),
            )
            .optional()?;
        if recorded.is_none() {
            findings.push(Finding {
                seq: Some(c.last_seq),
                kind: None,
                session: None,
                problem: Problem::Checkpoint,
                message: format!(
                    "the checkpoint at seq {} (made at {}) has no chained prune event: the \
                     events before it were not deleted by `journal prune`",
                    c.last_seq, c.at
                ),
            });
        }
    }
    let mut stmt = conn.prepare(
        "SELECT last_seq, at, broken FROM journal_checkpoints WHERE broken IS NOT NULL ORDER BY id",
    )?;
    let broken = stmt.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    for row in broken {
        let (last_seq, at, first) = row?;
        findings.push(Finding {
            seq: Some(last_seq),
            kind: None,
            session: None,
            problem: Problem::Checkpoint,
            message: format!(
                "the events pruned up to seq {last_seq} at {at} did not verify: {first}"
            ),
        });
    }
    Ok(())
}

fn parse(text: Option<&str>) -> Option<serde_json::Value> {
    text.map(|t| serde_json::from_str(t).unwrap_or(serde_json::Value::String(t.to_owned())))
}

/// A command's `result` column is set by an UPDATE, outside the chain; the same value is
/// appended as a chained `result` event at the same time, so the two must agree.
fn check_results(conn: &Connection, findings: &mut Findings) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT c.id, c.kind, c.result, r.id, r.detail
           FROM events c
           LEFT JOIN (SELECT json_extract(detail, '$.event') AS event, MAX(id) AS id
                        FROM events WHERE kind = 'result' AND json_valid(detail)
                       GROUP BY 1) latest ON latest.event = c.id
           LEFT JOIN events r ON r.id = latest.id
          WHERE c.kind != 'result' AND (c.result IS NOT NULL OR latest.id IS NOT NULL)
          ORDER BY c.id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            text(row.get_ref(1)?).unwrap_or_default(),
            text(row.get_ref(2)?),
            row.get::<_, Option<i64>>(3)?,
            text(row.get_ref(4)?),
        ))
    })?;
    for row in rows {
        let (id, kind, column, result_event, detail) = row?;
        let column = parse(column.as_deref());
        let chained = parse(detail.as_deref()).and_then(|d| d.get("result").cloned());
        let message = match (&column, result_event, &chained) {
            (Some(_), None, _) => Some(
                "its result column is set, but no chained result event records it: written \
                 around the gateway"
                    .to_owned(),
            ),
            (None, Some(r), _) => Some(format!(
                "its result column was cleared; the chained result event at seq {r} has one"
            )),
            (Some(column), Some(r), chained) if Some(column) != chained.as_ref() => Some(format!(
                "its result column differs from the chained result event at seq {r}: \
                 column {column}, chain {}",
                chained.as_ref().map(|c| c.to_string()).unwrap_or_default()
            )),
            _ => None,
        };
        if let Some(message) = message {
            findings.push(Finding {
                seq: Some(id),
                kind: Some(kind),
                session: None,
                problem: Problem::ResultChanged,
                message,
            });
        }
    }
    Ok(())
}

/// The fields in which two JSON objects differ, for a message.
fn differences(row: &serde_json::Value, chained: &serde_json::Value) -> String {
    let (Some(row), Some(chained)) = (row.as_object(), chained.as_object()) else {
        return "not an object".to_owned();
    };
    let mut keys: Vec<&String> = row.keys().chain(chained.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| row.get(*k) != chained.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| {
                v.map(|v| v.to_string())
                    .unwrap_or_else(|| "absent".to_owned())
            };
            format!(
                "{k}: {} in the row, {} in the chain",
                show(row.get(k)),
                show(chained.get(k))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Session rows are updated in place (they are what `sessions list` reads); their identity
/// and their end are also chained events, so the row must match them.
fn check_sessions(
    conn: &Connection,
    start: &ChainStart,
    findings: &mut Findings,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT s.id, s.started_at, s.ended_at IS NOT NULL, {open}, {close},
                (SELECT e.detail FROM events e WHERE e.session_id = s.id
                    AND e.kind = 'session_open' ORDER BY e.id DESC LIMIT 1),
                (SELECT e.detail FROM events e WHERE e.session_id = s.id
                    AND e.kind = 'session_close' ORDER BY e.id DESC LIMIT 1)
           FROM sessions s ORDER BY s.id",
        open = schema::SESSION_OPEN_JSON,
        close = schema::SESSION_CLOSE_JSON,
    ))?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            text(row.get_ref(1)?).unwrap_or_default(),
            row.get::<_, bool>(2)?,
            text(row.get_ref(3)?),
            text(row.get_ref(4)?),
            text(row.get_ref(5)?),
            text(row.get_ref(6)?),
        ))
    })?;
    // Sessions opened before the latest prune's cutoff may have lost their open event to it.
    let pruned_before = start.checkpoint.as_ref().map(|c| c.cutoff.as_str());
    for row in rows {
        let (id, started_at, ended, open_row, close_row, open_event, close_event) = row?;
        let mut problems = Vec::new();
        match parse(open_event.as_deref()) {
            Some(mut chained) => {
                if let Some(map) = chained.as_object_mut() {
                    map.remove("decision");
                    map.remove("rule");
                }
                let row = parse(open_row.as_deref()).unwrap_or_default();
                if row != chained {
                    problems.push(format!(
                        "differs from its session_open event ({})",
                        differences(&row, &chained)
                    ));
                }
                if ended && close_event.is_none() {
                    problems.push(
                        "marked ended, but no chained session_close event records it".to_owned(),
                    );
                }
            }
            None if pruned_before.is_none_or(|cutoff| started_at.as_str() >= cutoff) => {
                problems.push("no chained session_open event: added around the gateway".to_owned())
            }
            None => {}
        }
        if let Some(chained) = parse(close_event.as_deref()) {
            let row = parse(close_row.as_deref()).unwrap_or_default();
            if row != chained {
                problems.push(format!(
                    "differs from its session_close event ({})",
                    differences(&row, &chained)
                ));
            }
        }
        for message in problems {
            findings.push(Finding {
                seq: None,
                kind: None,
                session: Some(id),
                problem: Problem::SessionChanged,
                message,
            });
        }
    }
    // Foreign keys are off in other tools (the sqlite3 shell): a row can go with its events
    // still there.
    let mut orphans = conn.prepare(
        "SELECT e.id, e.session_id FROM events e
          WHERE e.kind = 'session_open'
            AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = e.session_id)
          ORDER BY e.id",
    )?;
    let rows = orphans.query_map([], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
    })?;
    for row in rows {
        let (seq, session) = row?;
        findings.push(Finding {
            seq: Some(seq),
            kind: Some("session_open".to_owned()),
            session,
            problem: Problem::SessionChanged,
            message: format!(
                "session {} was deleted while its events remain",
                session.map(|s| s.to_string()).unwrap_or_default()
            ),
        });
    }
    Ok(())
}
