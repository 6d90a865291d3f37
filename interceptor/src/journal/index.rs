//! The SQLite index of the segment log: what `sessions`, `approvals`, shipping and `verify`
//! query.
//!
//! Why this exists: the log ([`super::segment`]) is what commands wait for; SQLite is kept for
//! everything that reads the journal by session, run or sequence. A background thread per
//! `Journal` ([`Indexer`]) applies appended records in large transactions (up to
//! [`BATCH_RECORDS`] each), woken after every group and every [`IDLE_POLL`] (for records other
//! processes appended). Once woken it gathers records for [`GATHER`] before it applies them,
//! unless someone waits for the index (`Journal::flush`): under load a group is a few records,
//! and a transaction per group cost the gateway a third of its CPU (docs/performance.md). Each transaction also moves the index position (`index_position`:
//! segment, offset and last sequence number), so applying is idempotent and exactly once, even
//! with several processes' indexers on one file: each reads the position inside its IMMEDIATE
//! transaction. At open, everything appended but not indexed (after a crash) is indexed before
//! the journal is used; `journal reindex` rebuilds the index from the segments.
//!
//! A record the index cannot take (a constraint of a table edited by hand) is logged and
//! skipped, never retried forever: the log stays the record, and `verify` names the difference.
//! An I/O error (a full disk) rolls the batch back; it is tried again later, while commands
//! keep being recorded in the log.

use std::{
    fs::File,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    time::Duration,
};

use rusqlite::{params, types::Value as SqlValue, Connection, TransactionBehavior};
use tokio::sync::watch;

use super::lock;
use super::segment::{
    self, parse_frame, segment_path, IndexHint, LoggedEvent, Parsed, Position, Record, RunChange,
    SegmentError,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("journal index: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// Records applied per transaction at most: large enough that a commit's page writes are
/// shared by thousands of rows, small enough that readers and other writers wait little.
pub(crate) const BATCH_RECORDS: usize = 8192;

/// Bytes of segment read at a time.
const READ_BYTES: u64 = 8 << 20;

/// How often an idle indexer looks for records appended by other processes (and retries after
/// an error).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How long a woken indexer lets records gather before one transaction applies them all. The
/// index (what `sessions`, `approvals` and shipping read) then lags the log by about this much;
/// `Journal::flush` does not wait it out.
const GATHER: Duration = Duration::from_millis(25);

/// The indexed position, and the last sequence number indexed.
pub(crate) fn read_position(conn: &Connection) -> rusqlite::Result<(Position, i64)> {
    conn.prepare_cached("SELECT segment, offset, seq FROM index_position WHERE id = 1")?
        .query_row([], |row| {
            Ok((
                Position {
                    segment: row.get::<_, i64>(0)? as u64,
                    offset: row.get::<_, i64>(1)? as u64,
                },
                row.get(2)?,
            ))
        })
}

pub(crate) fn write_position(
    conn: &Connection,
    position: Position,
    seq: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE index_position SET segment = ?1, offset = ?2, seq = ?3 WHERE id = 1",
    )?
    .execute(params![
        position.segment as i64,
        position.offset as i64,
        seq
    ])?;
    Ok(())
}

/// An open segment kept between batches.
#[derive(Default)]
pub(crate) struct Cursor {
    open: Option<(u64, File)>,
}

impl Cursor {
    fn file(&mut self, dir: &Path, number: u64) -> Result<Option<&File>, SegmentError> {
        if self.open.as_ref().map(|(n, _)| *n) != Some(number) {
            let path = segment_path(dir, number);
            match File::open(&path) {
                Ok(file) => self.open = Some((number, file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(SegmentError::Io { path, source }),
            }
        }
        Ok(self.open.as_ref().map(|(_, f)| f))
    }
}

/// Reads the whole frames from `position` on (at most [`READ_BYTES`], or one frame), with the
/// position after each.
fn read_frames(
    dir: &Path,
    cursor: &mut Cursor,
    position: Position,
) -> Result<Vec<(Record, Position)>, SegmentError> {
    let path = segment_path(dir, position.segment);
    let Some(file) = cursor.file(dir, position.segment)? else {
        return Ok(Vec::new());
    };
    let io = |source| SegmentError::Io {
        path: path.clone(),
        source,
    };
    let len = file.metadata().map_err(io)?.len();
    if len <= position.offset {
        return Ok(Vec::new());
    }
    let mut want = (len - position.offset).min(READ_BYTES);
    loop {
        let mut bytes = vec![0u8; want as usize];
        file.read_exact_at(&mut bytes, position.offset)
            .map_err(io)?;
        let mut at = 0usize;
        let mut out = Vec::new();
        while at < bytes.len() {
            match parse_frame(&bytes[at..]) {
                Parsed::Frame(record, n) => {
                    at += n;
                    out.push((
                        record,
                        Position {
                            segment: position.segment,
                            offset: position.offset + at as u64,
                        },
                    ));
                }
                // Being written, or a torn tail a writer will cut: later.
                Parsed::Incomplete | Parsed::Invalid(_) => break,
            }
        }
        // One frame larger than what was read: read it whole.
        if out.is_empty() && want < len - position.offset {
            want = (len - position.offset).min(want * 4);
            continue;
        }
        return Ok(out);
    }
}

/// Applies what was appended after the stored position, at most [`BATCH_RECORDS`] records,
/// inside the caller's transaction. Returns the new position and whether anything moved.
pub(crate) fn apply_pending(
    tx: &Connection,
    dir: &Path,
    cursor: &mut Cursor,
) -> Result<(Position, bool), IndexError> {
    let (start, mut seq) = read_position(tx)?;
    let mut position = start;
    let mut applied = 0usize;
    'segments: while applied < BATCH_RECORDS {
        let frames = read_frames(dir, cursor, position)?;
        if frames.is_empty() {
            break;
        }
        for (record, after) in frames {
            match &record {
                Record::Seal(_) => {
                    position = Position {
                        segment: position.segment + 1,
                        offset: 0,
                    };
                    continue 'segments;
                }
                Record::Start(_) => {}
                Record::Event(e) => {
                    apply_event(tx, e)?;
                    seq = e.seq;
                }
                Record::Run(change) => apply_run(tx, change)?,
            }
            position = after;
            applied += 1;
            if applied >= BATCH_RECORDS {
                break 'segments;
            }
        }
    }
    if position != start {
        write_position(tx, position, seq)?;
    }
    Ok((position, position != start))
}

/// Indexes everything appended so far, one transaction per batch. Returns the position.
pub(crate) fn catch_up(conn: &mut Connection, dir: &Path) -> Result<Position, IndexError> {
    let mut cursor = Cursor::default();
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (position, moved) = apply_pending(&tx, dir, &mut cursor)?;
        tx.commit()?;
        if !moved {
            return Ok(position);
        }
    }
}

/// A statement failed: skipped if the transaction is still alive (a constraint), fatal for
/// the batch otherwise (I/O: SQLite rolled everything back).
fn tolerate(
    tx: &Connection,
    what: &str,
    seq: i64,
    r: rusqlite::Result<usize>,
) -> rusqlite::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if !tx.is_autocommit() => {
            tracing::error!(error = %e, seq, what, "the journal index could not take a record; the log keeps it");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn sql_value(v: Option<&serde_json::Value>) -> SqlValue {
    match v {
        None | Some(serde_json::Value::Null) => SqlValue::Null,
        Some(serde_json::Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or_default()),
        },
        Some(serde_json::Value::String(s)) => SqlValue::Text(s.clone()),
        Some(other) => SqlValue::Text(other.to_string()),
    }
}

fn apply_event(tx: &Connection, e: &LoggedEvent) -> rusqlite::Result<()> {
    if let IndexHint::SessionOpen {
        cgroup_id,
        process_start_ns,
        stale,
    } = &e.hint
    {
        // The row readers use, from the chained identity (its id is the event's sequence).
        let detail: serde_json::Value = serde_json::from_str(&e.detail).unwrap_or_default();
        let get = |key: &str| sql_value(detail.get(key));
        let r = tx
            .prepare_cached(
                "INSERT INTO sessions (id, run_id, pid, uid, gid, user, comm, exe, cmdline,
                   cgroup_id, cgroup_path, unit, process_start_ns, identity_stale, client_addr,
                   original_dst, target, protocol, upstream, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                   ?17, ?18, ?19, ?20)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    e.seq,
                    get("run_id"),
                    get("pid"),
                    get("uid"),
                    get("gid"),
                    get("user"),
                    get("comm"),
                    get("exe"),
                    get("cmdline"),
                    cgroup_id,
                    get("cgroup_path"),
                    get("unit"),
                    process_start_ns,
                    stale,
                    get("client_addr"),
                    get("original_dst"),
                    get("target"),
                    get("protocol"),
                    get("upstream"),
                    e.at
                ])
            });
        tolerate(tx, "session", e.seq, r)?;
    }
    let r = tx
        .prepare_cached(
            "INSERT INTO events (id, session_id, at, kind, statement, decision, rule, detail,
               prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .and_then(|mut s| {
            s.execute(params![
                e.seq,
                e.session_id,
                e.at,
                e.kind,
                e.statement,
                e.decision,
                e.rule,
                e.detail,
                e.prev_hash,
                e.hash
            ])
        });
    tolerate(tx, "event", e.seq, r)?;
    if let IndexHint::Result { event, result } = &e.hint {
        let r = tx
            .prepare_cached("UPDATE events SET result = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![event, result]));
        tolerate(tx, "result", e.seq, r)?;
    }
    if e.kind == "session_close" {
        if let Some(id) = e.session_id {
            let detail: serde_json::Value = serde_json::from_str(&e.detail).unwrap_or_default();
            let get = |key: &str| sql_value(detail.get(key));
            let r = tx
                .prepare_cached(
                    "UPDATE sessions SET bytes_up = ?2, bytes_down = ?3, outcome = ?4,
                       detail = ?5, ended_at = ?6 WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id,
                        get("bytes_up"),
                        get("bytes_down"),
                        get("outcome"),
                        get("detail"),
                        e.at
                    ])
                });
            tolerate(tx, "session close", e.seq, r)?;
        }
    }
    Ok(())
}

fn apply_run(tx: &Connection, change: &RunChange) -> rusqlite::Result<()> {
    let r = match change {
        RunChange::Start {
            id,
            mode,
            command,
            uid,
            user,
            cgroup_path,
            at,
        } => tx
            .prepare_cached(
                "INSERT INTO runs (id, mode, command, uid, user, cgroup_path, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id, mode, command, uid, user, cgroup_path, at])),
        RunChange::End { id, exit_code, at } => tx
            .prepare_cached("UPDATE runs SET ended_at = ?2, exit_code = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, at, exit_code])),
    };
    tolerate(tx, "run", 0, r)
}

/// How far the index is: what `Journal::flush` waits on.
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexState {
    pub position: Position,
    /// The last attempt failed (the index lags until it succeeds).
    pub error: Option<String>,
}

/// The background indexer of one `Journal`: a thread, woken after each appended group.
pub(crate) struct Indexer {
    conn: Mutex<Connection>,
    dir: PathBuf,
    woken: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
    /// Someone waits for the index: apply now, without gathering.
    hurry: AtomicBool,
    state: watch::Sender<IndexState>,
}

impl Indexer {
    /// Takes `conn` (foreign keys off: the log is the record, and the index must hold every
    /// event of it, even one naming a session it does not have).
    pub(crate) fn new(conn: Connection, dir: &Path) -> rusqlite::Result<Arc<Indexer>> {
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        Ok(Arc::new(Indexer {
            conn: Mutex::new(conn),
            dir: dir.to_owned(),
            woken: Mutex::new(false),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            hurry: AtomicBool::new(false),
            state: watch::Sender::new(IndexState::default()),
        }))
    }

    /// Indexes everything appended so far, now, on the caller's thread.
    pub(crate) fn catch_up(&self) -> Result<Position, IndexError> {
        let result = catch_up(&mut lock(&self.conn), &self.dir);
        self.publish(&result);
        result
    }

    fn publish(&self, result: &Result<Position, IndexError>) {
        match result {
            Ok(position) => self.state.send_modify(|s| {
                s.position = s.position.max(*position);
                s.error = None;
            }),
            Err(e) => {
                tracing::warn!(error = %e, "the journal index is behind the log; retrying");
                self.state.send_modify(|s| s.error = Some(e.to_string()));
            }
        }
    }

    /// Runs `f` on the index connection, with nothing else indexing meanwhile (in this process).
    pub(crate) fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut lock(&self.conn))
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<IndexState> {
        self.state.subscribe()
    }

    /// Wakes the thread: a group was appended.
    pub(crate) fn notify(&self) {
        let mut woken = lock(&self.woken);
        if !*woken {
            *woken = true;
            self.wake.notify_one();
        }
    }

    /// Wakes the thread to index now, without gathering: a caller waits for the index.
    pub(crate) fn hurry(&self) {
        let mut woken = lock(&self.woken);
        self.hurry.store(true, Ordering::Release);
        *woken = true;
        self.wake.notify_one();
    }

    fn hurried(&self) -> bool {
        self.hurry.load(Ordering::Acquire) || self.stop.load(Ordering::Acquire)
    }

    /// Asks the thread to index what is left and stop.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.hurry();
    }

    pub(crate) fn spawn(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let indexer = self.clone();
        std::thread::Builder::new()
            .name("journal-index".into())
            .spawn(move || loop {
                {
                    let woken = lock(&indexer.woken);
                    let (mut woken, _) = indexer
                        .wake
                        .wait_timeout_while(woken, IDLE_POLL, |w| !*w)
                        .unwrap_or_else(|p| p.into_inner());
                    *woken = false;
                    if !indexer.hurried() {
                        // Let the records of the next few groups gather (a hurry ends it).
                        let (mut woken, _) = indexer
                            .wake
                            .wait_timeout_while(woken, GATHER, |_| !indexer.hurried())
                            .unwrap_or_else(|p| p.into_inner());
                        *woken = false;
                    }
                }
                indexer.hurry.store(false, Ordering::Release);
                let stopping = indexer.stop.load(Ordering::Acquire);
                let _ = indexer.catch_up();
                if stopping {
                    return;
                }
            })
    }
}

/// The first sequence number of segment `number` (from its Start record), if it has one.
pub(crate) fn segment_start(dir: &Path, number: u64) -> Result<Option<i64>, SegmentError> {
    let mut cursor = Cursor::default();
    let frames = read_frames(
        dir,
        &mut cursor,
        Position {
            segment: number,
            offset: 0,
        },
    )?;
    Ok(match frames.first() {
        Some((Record::Start(head), _)) => Some(head.next_seq),
        _ => None,
    })
}

/// Deletes the segments whose every event has a sequence number up to `last_seq` (never the
/// newest, which writers append to). Returns how many went.
pub(crate) fn delete_segments_through(dir: &Path, last_seq: i64) -> Result<usize, SegmentError> {
    let numbers = segment::list(dir)?;
    let mut deleted = 0;
    for pair in numbers.windows(2) {
        let (this, next) = (pair[0], pair[1]);
        match segment_start(dir, next)? {
            Some(start) if start - 1 <= last_seq => {
                let path = segment_path(dir, this);
                std::fs::remove_file(&path).map_err(|source| SegmentError::Io { path, source })?;
                deleted += 1;
            }
            _ => break,
        }
    }
    Ok(deleted)
}

/// Rebuilds the index from the log: deletes every event (and session) the log holds, from its
/// first segment on, and indexes the log again from there; events a prune deleted stay
/// deleted (indexing resumes after the latest checkpoint). Runs with the log locked.
pub(crate) fn reindex(conn: &mut Connection, dir: &Path) -> Result<Position, IndexError> {
    let Some(&first) = segment::list(dir)?.first() else {
        return Ok(Position::default());
    };
    let start = segment_start(dir, first)?.ok_or_else(|| SegmentError::Corrupt {
        path: segment_path(dir, first),
        offset: 0,
        reason: "no start record".to_owned(),
    })?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let pruned: i64 = tx.query_row(
        "SELECT COALESCE(MAX(last_seq), 0) FROM journal_checkpoints",
        [],
        |row| row.get(0),
    )?;
    // Where indexing resumes: the segment's start, or right after the pruned prefix.
    let mut position = Position {
        segment: first,
        offset: 0,
    };
    let mut seq = start - 1;
    let mut cursor = Cursor::default();
    'walk: while seq < pruned {
        let frames = read_frames(dir, &mut cursor, position)?;
        if frames.is_empty() {
            break;
        }
        for (record, after) in frames {
            match record {
                Record::Event(e) if e.seq > pruned => break 'walk,
                Record::Event(e) => seq = e.seq,
                Record::Seal(_) => {
                    position = Position {
                        segment: position.segment + 1,
                        offset: 0,
                    };
                    continue 'walk;
                }
                Record::Start(_) | Record::Run(_) => {}
            }
            position = after;
        }
    }
    let from = seq + 1;
    tx.execute("DELETE FROM events WHERE id >= ?1", [from])?;
    tx.execute("DELETE FROM sessions WHERE id >= ?1", [from])?;
    write_position(&tx, position, seq)?;
    tx.commit()?;
    catch_up(conn, dir)
}

/// For readers (the CLI): if this process may write the journal at `db`, indexes what its log
/// holds beyond the index first, so what it reads includes every acknowledged record, even
/// right after a crash of the writer. Best effort: a reader that may only read (a member of
/// the service's group) sees the index as the writers' indexers left it, normally
/// milliseconds behind the log.
pub(crate) fn catch_up_file(db: &Path) {
    use rusqlite::OpenFlags;
    let Ok(mut conn) = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return;
    };
    let current = conn
        .busy_timeout(super::BUSY_TIMEOUT)
        .and_then(|()| super::schema::version(&conn))
        .is_ok_and(|v| v >= super::schema::LOG_VERSION);
    if !current {
        return;
    }
    if let Err(e) = catch_up(&mut conn, &segment::segments_dir(db)) {
        tracing::debug!(error = %e, "could not bring the journal index up to date before reading");
    }
}
