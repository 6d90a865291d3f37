//! The journal: the host's source of truth for what agents did: a segment log, indexed in
//! SQLite.
//!
//! Why this exists: auditors must be able to reconstruct every session, and the gateway must
//! never forward something it failed to record. Writes are appended in groups ([`Journal`]) to
//! a hash-chained segment log ([`segment`]): every caller waits for its own group's `write(2)`
//! (and `fdatasync` with `sync = "full"`), but callers that arrive while a group is being
//! written share the next one, so "record before forward" stays cheap under load. A background
//! indexer ([`index`]) applies the log to SQLite in large transactions; readers (the CLI) open
//! the SQLite file separately ([`reader`]) and see what is indexed, normally milliseconds
//! behind the log; WAL lets them read while the daemon writes.
//!
//! Schema changes are migrations keyed by `PRAGMA user_version` ([`schema`]).
//!
//! Every event is a link of a hash chain: it stores the hash of the event before it and its own
//! hash over that and its content ([`event_hash`]), computed when the log appends it. Whatever the gateway later learns about a row it already wrote (a command's result, a
//! session's end) is appended as a chained event too, besides updating the row readers use, so
//! an edit, a deletion or a reordering after the fact shows up in [`verify`]. Retention
//! ([`prune_file`], [`Journal::prune`]) deletes a prefix of the chain and leaves a checkpoint
//! the rest verifies from. The chain holds no secret: it proves nothing against someone who
//! rewrites the whole tail, unless its head is also kept elsewhere (shipped; see
//! docs/journal.md).

mod config;
pub mod index;
pub mod reader;
pub mod schema;
pub mod segment;
pub mod verify;

pub use config::{JournalConfig, JournalSync};
pub use segment::segments_dir;

/// The service's user and group (`interceptor install` creates them): the journal and the
/// state directory belong to it, and its members may read the journal.
pub const SERVICE_USER: &str = "interceptor";

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, TryLockError,
    },
    time::{Duration, SystemTime},
};

use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::capture::identity::Identity;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("journal directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal write failed: {0}")]
    Write(String),
    #[error("journal query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("journal {path} has schema version {found}, newer than this binary understands ({supported})")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("no journal at {0}: nothing recorded yet, or another --config / [journal] path")]
    Missing(PathBuf),
    /// The caller may not read the journal (or a directory on its way). Said apart from
    /// `Missing`: a journal that cannot be seen is not a journal with nothing in it.
    #[error(
        "permission denied on {path}: join the `{}` group to read the journal (or run as root)",
        SERVICE_USER
    )]
    PermissionDenied { path: PathBuf },
    /// The journal handle is gone (the daemon is shutting down).
    #[error("the journal writer has stopped")]
    Stopped,
    #[error(transparent)]
    Segment(#[from] segment::SegmentError),
    #[error(transparent)]
    Index(#[from] index::IndexError),
    /// The journal's schema predates the hash chain: it has never been opened for writing by a
    /// binary that chains events (which would have migrated it).
    #[error("journal {path} has schema version {found}, older than the hash chain (3): it is chained when the gateway or `interceptor doctor` next opens it")]
    NotChained { path: PathBuf, found: i64 },
}

/// A run: one `exec` invocation, or one incarnation of a captured cgroup under the service.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub mode: &'static str,
    pub command: Option<String>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub cgroup_path: String,
}

/// A new session, written (and committed) before the gateway connects upstream.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub run_id: Option<String>,
    pub identity: Identity,
    pub client_addr: String,
    pub original_dst: String,
    pub target: Option<String>,
    pub protocol: String,
    pub upstream: Option<String>,
    /// The policy decision about the connection itself, and the rule that made it.
    pub decision: Option<String>,
    pub rule: Option<String>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Relayed and closed normally.
    Closed,
    /// The gateway refused it (policy, loop guard, journal failure).
    Refused,
    /// The upstream could not be reached.
    UpstreamFailed,
    /// The relay ended with an I/O error.
    Error,
    /// No capture record: the connection did not come through our hooks.
    Anomaly,
    /// The gateway closed it: the client did not finish its start-up in time, or the session
    /// was idle too long (`[limits]`; the detail says which).
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Refused => "refused",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::Error => "error",
            Outcome::Anomaly => "anomaly",
            Outcome::Timeout => "timeout",
        }
    }
}

/// One entry in the events table: general enough for connections now and statements,
/// decisions, approvals and masking counts later. `detail` is JSON and must never hold secrets.
#[derive(Debug, Clone)]
pub struct Event {
    pub session_id: Option<i64>,
    pub kind: &'static str,
    /// The command's text, for command events.
    pub statement: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub detail: serde_json::Value,
}

impl Event {
    /// An event that is not a command (no statement, decision or rule).
    pub fn note(session_id: Option<i64>, kind: &'static str, detail: serde_json::Value) -> Event {
        Event {
            session_id,
            kind,
            statement: None,
            decision: None,
            rule: None,
            detail,
        }
    }
}

enum Op {
    StartRun(RunRecord),
    EndRun {
        id: String,
        exit_code: Option<i32>,
    },
    OpenSession(Box<NewSession>),
    CloseSession {
        id: i64,
        bytes_up: u64,
        bytes_down: u64,
        outcome: Outcome,
        detail: Option<String>,
    },
    Event(Event),
    /// Several events in one commit (a pipeline's commands); answered with all their ids.
    Events(Vec<Event>),
    /// A command's outcome, added to its event once known (and appended as a `result` event).
    EventResult {
        session_id: Option<i64>,
        id: i64,
        result: serde_json::Value,
    },
    /// Does nothing; answered once everything queued before it is appended.
    Flush,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Vec<i64>, String>>,
}

impl Op {
    /// Records that describe what already happened (a close, a result, a note), which nobody
    /// waits for: worth writing late rather than never. Anything a caller waits on is refused
    /// instead, and the caller fails closed.
    fn retryable(&self) -> bool {
        matches!(
            self,
            Op::CloseSession { .. } | Op::EventResult { .. } | Op::Event(_) | Op::EndRun { .. }
        )
    }
}

/// Handle to the journal. Cheap to clone; the async methods return once their records are in
/// the log (written, and synced with `sync = "full"`).
///
/// Group commit without a writer thread: a caller queues its request, then tries to become the
/// committer by taking the log lock. The committer drains the queue in groups (one `write(2)`
/// each) until it is empty; callers that find the lock taken just wait for their reply,
/// because the committer re-checks the queue after releasing the lock. With no contention a
/// write costs no thread hand-off, which is most of the cost of a short connection.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    /// This process's writer on the log; its lock is the committer's.
    log: Mutex<segment::SegmentLog>,
    /// Where the last group this process appended ended (what [`Journal::flush`] waits for
    /// the index to pass).
    appended: Mutex<segment::Position>,
    index: Arc<index::Indexer>,
    index_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    queue: Mutex<Vec<Request>>,
    /// A caller is about to commit the queue (see [`Journal::enqueue`]).
    gathering: AtomicBool,
    /// `journal_meta.journal_id`, fixed for the life of the file.
    id: String,
    /// How long callers wait for their records to be committed: what every journaled command
    /// pays before it is forwarded.
    commit_latency: crate::metrics::Histogram,
    /// See [`clip_statement`].
    statement_max_bytes: usize,
    /// Records nobody waits for (session closes, results) whose transaction failed as a whole
    /// (a full disk, an I/O error): tried again, first, at the next commit. So every session
    /// still gets its outcome once the journal can be written again.
    retry: Mutex<VecDeque<Request>>,
}

/// Bound on records kept for a retry; past it the oldest are dropped (and logged): a journal
/// that stays unwritable must not take the daemon's memory too.
const MAX_RETRY: usize = 100_000;

/// The default `[journal] statement_max_bytes`: far above any statement a person reads, far
/// below the 64 MiB a message may carry.
pub const DEFAULT_STATEMENT_MAX_BYTES: usize = 64 * 1024;

/// Keeps at most `max` bytes of an event's statement (cut at a character boundary), and
/// records in its detail that it did: `statement_bytes` (the whole length) and
/// `statement_sha256` (of the whole text as it would have been journaled, i.e. masked, so the
/// hash is never derived from a raw value). Without this a few refused 60 MB statements
/// would make a gigabyte of journal, and a full disk refuses every agent.
pub fn clip_statement(event: &mut Event, max: usize) {
    let Some(text) = event.statement.as_mut().filter(|t| t.len() > max) else {
        return;
    };
    let (kept, clipped) = clip_text(text, max);
    *text = kept.to_owned();
    if let Some(clipped) = clipped {
        clipped.describe(&mut event.detail);
    }
}

/// The prefix of `text` the journal keeps (at most `max` bytes, cut at a character boundary),
/// and, when that is not all of it, what [`clip_statement`] records about the whole. For
/// callers that hold a long text by reference, so it is never copied whole.
pub fn clip_text(text: &str, max: usize) -> (&str, Option<Clipped>) {
    if text.len() <= max {
        return (text, None);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let clipped = Clipped {
        bytes: text.len(),
        sha256: hex(digest.as_ref()),
    };
    (&text[..cut], Some(clipped))
}

/// A statement the journal keeps only a prefix of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clipped {
    pub bytes: usize,
    pub sha256: String,
}

impl Clipped {
    /// Adds `statement_truncated`, `statement_bytes` and `statement_sha256` to `detail`.
    pub fn describe(&self, detail: &mut serde_json::Value) {
        if !detail.is_object() {
            *detail = serde_json::json!({});
        }
        if let Some(detail) = detail.as_object_mut() {
            detail.insert("statement_truncated".into(), true.into());
            detail.insert("statement_bytes".into(), self.bytes.into());
            detail.insert("statement_sha256".into(), self.sha256.clone().into());
        }
    }
}

/// Upper bound on operations per group, so one write never holds the lock for long.
const MAX_GROUP: usize = 512;

impl Drop for Inner {
    /// The indexer indexes what is left and stops (what it cannot index now is indexed at
    /// the next open).
    fn drop(&mut self) {
        self.index.stop();
        if let Some(thread) = lock(&self.index_thread).take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Journal {
    /// Opens (creating and migrating) the journal at `path` with the default settings
    /// (`sync = "normal"`).
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        Journal::open_with(&JournalConfig {
            path: path.to_owned(),
            ..JournalConfig::default()
        })
    }

    /// Opens (creating and migrating) the journal at `config.path` with its `sync` setting.
    /// Whatever the log holds that the index does not (after a crash) is indexed first.
    pub fn open_with(config: &JournalConfig) -> Result<Journal, JournalError> {
        let conn = open_connection_with(&config.path, config.sync)?;
        // The migration creates it; only a journal edited by hand can lack it.
        let id = journal_id(&conn)?.ok_or_else(|| {
            JournalError::Write(format!(
                "journal {} has no journal_id in journal_meta",
                config.path.display()
            ))
        })?;
        let log = open_log(&config.path, config.sync, &conn)?;
        let index = index::Indexer::new(conn, log.dir())?;
        let appended = index.catch_up()?;
        let thread = index.spawn().map_err(|source| JournalError::Directory {
            path: log.dir().to_owned(),
            source,
        })?;
        let inner = Arc::new(Inner {
            log: Mutex::new(log),
            appended: Mutex::new(appended),
            index,
            index_thread: Mutex::new(Some(thread)),
            queue: Mutex::new(Vec::new()),
            gathering: AtomicBool::new(false),
            id,
            commit_latency: crate::metrics::Histogram::default(),
            statement_max_bytes: config.statement_max_bytes,
            retry: Mutex::new(VecDeque::new()),
        });
        start_checkpointer(&config.path, config.sync, Arc::downgrade(&inner))?;
        Ok(Journal { inner })
    }

    /// The journal's id, a random UUID made with its chain. With an event's sequence number
    /// (`events.id`) it names the event uniquely across hosts and journals: `"{id}:{seq}"`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Queues `op` and makes sure someone commits it. The first caller of a group yields once
    /// before committing, so sessions that are ready to run add their records to the same
    /// transaction; later callers of the group just wait for their reply.
    async fn enqueue(&self, op: Op) -> Result<Result<Vec<i64>, String>, oneshot::error::RecvError> {
        let queued = std::time::Instant::now();
        let rx = self.inner.queue_only(op);
        if !self.inner.gathering.swap(true, Ordering::AcqRel) {
            tokio::task::yield_now().await;
            // Cleared before draining: a request queued after the drain sees `false` and
            // commits itself; one queued before it is in this drain.
            self.inner.gathering.store(false, Ordering::Release);
            self.inner.commit_queued();
        }
        let reply = rx.await;
        self.inner.commit_latency.observe(queued.elapsed());
        reply
    }

    /// Bytes of a statement this journal keeps (see [`clip_statement`]).
    pub fn statement_max_bytes(&self) -> usize {
        self.inner.statement_max_bytes
    }

    /// How long callers have waited for their commits so far.
    pub fn commit_latency(&self) -> crate::metrics::HistogramSnapshot {
        self.inner.commit_latency.snapshot()
    }
}

impl Inner {
    fn keep_for_retry(&self, req: Request) {
        let mut retry = lock(&self.retry);
        if retry.len() >= MAX_RETRY {
            retry.pop_front();
            tracing::error!(
                kept = MAX_RETRY,
                "the journal stays unwritable: the oldest record kept for a retry is dropped"
            );
        }
        retry.push_back(req);
    }

    fn queue_only(&self, op: Op) -> oneshot::Receiver<Result<Vec<i64>, String>> {
        let (reply, rx) = oneshot::channel();
        lock(&self.queue).push(Request { op, reply });
        rx
    }

    /// Commits everything queued, unless another caller is already doing so.
    fn commit_queued(&self) {
        loop {
            let mut log = match self.log.try_lock() {
                Ok(log) => log,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // The current committer re-checks the queue after unlocking: it will see ours.
                Err(TryLockError::WouldBlock) => return,
            };
            // Records a failed commit left behind go first, once per commit attempt (not in
            // the loop below, which would spin while the disk is still full).
            let mut retried: Vec<Request> = lock(&self.retry).drain(..).collect();
            loop {
                let batch: Vec<Request> = {
                    let mut queue = lock(&self.queue);
                    let n = queue.len().min(MAX_GROUP.saturating_sub(retried.len()));
                    let mut batch = std::mem::take(&mut retried);
                    batch.extend(queue.drain(..n));
                    batch
                };
                if batch.is_empty() {
                    break;
                }
                let (results, all_failed) = apply_batch(&mut log, &batch);
                if !all_failed {
                    *lock(&self.appended) = log.position();
                    self.index.notify();
                }
                for (req, result) in batch.into_iter().zip(results) {
                    if all_failed && req.reply.is_closed() && req.op.retryable() {
                        self.keep_for_retry(req);
                    } else {
                        let _ = req.reply.send(result);
                    }
                }
                if all_failed {
                    // The next commit (or the background thread's) tries again.
                    break;
                }
            }
            drop(log);
            // A request queued between our last drain and the unlock found the lock taken.
            if lock(&self.queue).is_empty() {
                return;
            }
        }
    }
}

impl Journal {
    async fn submit_all(&self, op: Op) -> Result<Vec<i64>, JournalError> {
        match self.enqueue(op).await {
            Ok(Ok(ids)) => Ok(ids),
            Ok(Err(message)) => Err(JournalError::Write(message)),
            Err(_) => Err(JournalError::Stopped),
        }
    }

    async fn submit(&self, op: Op) -> Result<i64, JournalError> {
        match self.enqueue(op).await {
            Ok(Ok(ids)) => Ok(ids.first().copied().unwrap_or(0)),
            Ok(Err(message)) => Err(JournalError::Write(message)),
            Err(_) => Err(JournalError::Stopped),
        }
    }

    pub async fn start_run(&self, run: RunRecord) -> Result<(), JournalError> {
        self.submit(Op::StartRun(run)).await.map(drop)
    }

    pub async fn end_run(&self, id: &str, exit_code: Option<i32>) -> Result<(), JournalError> {
        self.submit(Op::EndRun {
            id: id.to_owned(),
            exit_code,
        })
        .await
        .map(drop)
    }

    /// Records a session (its row, a chained `session_open` event with its identity, and a
    /// `connect` event when the connection was judged) and returns its id once committed.
    pub async fn open_session(&self, session: NewSession) -> Result<i64, JournalError> {
        self.submit(Op::OpenSession(Box::new(session))).await
    }

    /// Records how a session ended: on its row, and as a chained `session_close` event.
    pub async fn close_session(
        &self,
        id: i64,
        bytes_up: u64,
        bytes_down: u64,
        outcome: Outcome,
        detail: Option<String>,
    ) -> Result<(), JournalError> {
        self.submit(Op::CloseSession {
            id,
            bytes_up,
            bytes_down,
            outcome,
            detail,
        })
        .await
        .map(drop)
    }

    /// Queues a session close without waiting for its commit. Only for records that nothing
    /// waits on (the session has already stopped forwarding); failures are logged by the
    /// writer. Call [`Journal::flush`] before exiting.
    pub fn record_close(
        &self,
        id: i64,
        bytes_up: u64,
        bytes_down: u64,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        // Not committed here: it rides along with the next commit (usually the next session's
        // open), or the background thread's within CHECKPOINT_EVERY. One commit per session.
        drop(self.inner.queue_only(Op::CloseSession {
            id,
            bytes_up,
            bytes_down,
            outcome,
            detail,
        }));
    }

    /// Returns once everything queued so far is in the log (or has failed) and indexed, so
    /// readers of the database see it (`exec` calls it before exiting). If the index cannot be
    /// written now, it returns anyway: the records are in the log and indexed later.
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.submit(Op::Flush).await?;
        let target = *lock(&self.inner.appended);
        let mut state = self.inner.index.subscribe();
        self.inner.index.hurry();
        let _ = state
            .wait_for(|s| s.position >= target || s.error.is_some())
            .await;
        Ok(())
    }

    pub async fn event(&self, mut event: Event) -> Result<i64, JournalError> {
        clip_statement(&mut event, self.inner.statement_max_bytes);
        self.submit(Op::Event(event)).await
    }

    /// A restarted service lost every held client connection: their requests are expired, so
    /// nothing is ever forwarded for them later. Only the service's own runs (`cg-…`) are
    /// touched; `exec` runs sharing the journal keep theirs. Reads the index once it has
    /// caught up with the log, then appends the decisions.
    pub async fn expire_service_approvals(&self) -> Result<i64, JournalError> {
        self.flush().await?;
        let index = self.inner.index.clone();
        let expired = tokio::task::spawn_blocking(move || {
            index.catch_up()?;
            index.with_conn(|conn| pending_service_approvals(conn))
        })
        .await
        .map_err(|_| JournalError::Stopped)??;
        let count = expired.len() as i64;
        if !expired.is_empty() {
            self.events(expired).await?;
        }
        Ok(count)
    }

    /// Records several events with one commit and returns their ids, in order.
    pub async fn events(&self, mut events: Vec<Event>) -> Result<Vec<i64>, JournalError> {
        for event in &mut events {
            clip_statement(event, self.inner.statement_max_bytes);
        }
        self.submit_all(Op::Events(events)).await
    }

    /// Queues an event nobody waits for (see [`Journal::record_close`]).
    pub fn record_event(&self, mut event: Event) {
        clip_statement(&mut event, self.inner.statement_max_bytes);
        drop(self.inner.queue_only(Op::Event(event)));
    }

    /// Queues a command's result: set on its event's `result` column (what readers show) and
    /// appended as a chained `result` event of session `session_id` (what makes it
    /// tamper-evident and shippable).
    pub fn record_result(&self, session_id: Option<i64>, id: i64, result: serde_json::Value) {
        drop(self.inner.queue_only(Op::EventResult {
            session_id,
            id,
            result,
        }));
    }

    /// Deletes what `options` lets go, like [`prune_file`], on this handle's log and index:
    /// for a daemon that prunes on a timer. Appends wait while it runs (one transaction).
    pub async fn prune(&self, options: PruneOptions) -> Result<PruneReport, JournalError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let report = inner.index.with_conn(|conn| {
                prune_log(&mut lock(&inner.log), conn, &options, SystemTime::now())
            });
            inner.index.notify();
            // Callers that found the connection taken left their requests for us.
            inner.commit_queued();
            report
        })
        .await
        .map_err(|_| JournalError::Stopped)?
    }
}

/// `journal_meta.journal_id`, or `None` for a journal older than the chain. Works on a
/// read-only connection (for readers such as the shipper).
pub fn journal_id(conn: &Connection) -> Result<Option<String>, JournalError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version < schema::CHAIN_VERSION {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT value FROM journal_meta WHERE key = 'journal_id'",
            [],
            |row| row.get(0),
        )
        .optional()?)
}

/// A read-write connection to the journal at `path` (created and migrated), `sync = "normal"`.
pub(crate) fn open_connection(path: &Path) -> Result<Connection, JournalError> {
    open_connection_with(path, JournalSync::Normal)
}

pub(crate) fn open_connection_with(
    path: &Path,
    sync: JournalSync,
) -> Result<Connection, JournalError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Directory {
            path: dir.to_owned(),
            source,
        })?;
    }
    let open_err = |source| JournalError::Open {
        path: path.to_owned(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    // Several `exec` runs may share one journal file: wait for each other's commits.
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    // NORMAL: a commit survives the daemon crashing (it is in the WAL) but not necessarily a
    // power loss; FULL also fsyncs the WAL at every commit. Neither can corrupt the file.
    let synchronous = match sync {
        JournalSync::Normal => "NORMAL",
        JournalSync::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    conn.pragma_update(None, "wal_autocheckpoint", FALLBACK_CHECKPOINT_PAGES)
        .map_err(open_err)?;
    // Reads of b-tree pages through mmap instead of a pread per page per transaction.
    conn.pragma_update(None, "mmap_size", 256i64 << 20)
        .map_err(open_err)?;
    schema::migrate(&mut conn, path)?;
    restrict_permissions(path);
    Ok(conn)
}

/// How long a writer waits for another process's transaction on the same file.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the background thread commits queued closes.
const COMMIT_QUEUED_EVERY: Duration = Duration::from_millis(100);
/// How often it folds the WAL back into the database.
const CHECKPOINT_EVERY: u32 = 10;

/// Checkpoints (and their fsync) run here, off the commit path that connections wait on,
/// whenever the gateway is idle enough for them to catch up. The committing connection
/// checkpoints itself when the WAL grows past [`FALLBACK_CHECKPOINT_PAGES`], which under a
/// steady load is what bounds the WAL (see there). This thread also commits records nobody
/// waits for (session closes) when no other commit has taken them along.
fn start_checkpointer(
    path: &Path,
    sync: JournalSync,
    journal: std::sync::Weak<Inner>,
) -> Result<(), JournalError> {
    let conn = open_connection_with(path, sync)?;
    std::thread::Builder::new()
        .name("journal-checkpoint".into())
        .spawn(move || {
            for tick in 1u32.. {
                std::thread::sleep(COMMIT_QUEUED_EVERY);
                let Some(inner) = journal.upgrade() else {
                    return;
                };
                inner.commit_queued();
                drop(inner);
                if tick % CHECKPOINT_EVERY == 0 {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "journal checkpoint failed");
                    }
                }
            }
        })
        .map(drop)
        .map_err(|source| JournalError::Directory {
            path: path.to_owned(),
            source,
        })
}

/// SQLite starts the WAL over only when a new write finds every frame already checkpointed.
/// Under a steady load this thread's checkpoints never catch up with the writes, so the WAL
/// grows until the committing connection checkpoints it at this size. A small WAL stays in the
/// page cache and its frames are overwritten in place; at 20,000 pages (80 MB) every commit
/// paid for writing into a large, growing file: with 1,000 pages (4 MiB) connection setup
/// through the gateway went from ~1,490 to ~2,150 connections/s and pgbench -S through it
/// gained 23% (8 clients) and 33% (1 client) in A/B runs; 250 pages was no better. The cost is
/// a more frequent, smaller checkpoint on the commit path: p99 up, p99.9 down (see
/// docs/performance.md).
const FALLBACK_CHECKPOINT_PAGES: i64 = 1_000;

/// The journal holds who did what: readable by root (and the file's group) only.
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640));
    }
}

/// Appends a group to the log with one write. If the write fails, every caller in the group
/// gets the error: nothing is reported as recorded unless it is in the log.
///
/// The flag says the group failed as a whole (nothing of it is in).
fn apply_batch(
    log: &mut segment::SegmentLog,
    batch: &[Request],
) -> (Vec<Result<Vec<i64>, String>>, bool) {
    let appended = log.append(|group| {
        batch
            .iter()
            .map(|req| Ok(append_op(group, &req.op)))
            .collect::<Vec<_>>()
    });
    match appended {
        Ok((results, _)) => (results, false),
        Err(e) => {
            let message = e.to_string();
            tracing::error!(
                error = %message,
                operations = batch.len(),
                "journal write failed; the affected commands are refused"
            );
            (batch.iter().map(|_| Err(message.clone())).collect(), true)
        }
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn new_event(event: &Event, hint: segment::IndexHint) -> segment::NewEvent<'_> {
    segment::NewEvent {
        session_id: event.session_id,
        kind: event.kind,
        statement: event.statement.as_deref(),
        decision: event.decision.as_deref(),
        rule: event.rule.as_deref(),
        detail: event.detail.to_string(),
        hint,
    }
}

/// Frames `op`'s records into the group; returns the ids its caller gets.
fn append_op(group: &mut segment::Group<'_>, op: &Op) -> Vec<i64> {
    use segment::{IndexHint, RunChange};
    match op {
        Op::Event(event) => vec![group.event(new_event(event, IndexHint::None))],
        Op::Events(events) => events
            .iter()
            .map(|e| group.event(new_event(e, IndexHint::None)))
            .collect(),
        Op::EventResult {
            session_id,
            id,
            result,
        } => {
            let event = Event::note(
                *session_id,
                "result",
                serde_json::json!({ "event": id, "result": result }),
            );
            group.event(new_event(
                &event,
                IndexHint::Result {
                    event: *id,
                    result: result.to_string(),
                },
            ));
            vec![*id]
        }
        Op::StartRun(run) => {
            let at = group.at.clone();
            group.run(RunChange::Start {
                id: run.id.clone(),
                mode: run.mode.to_owned(),
                command: run.command.clone(),
                uid: run.uid,
                user: run.user.clone(),
                cgroup_path: run.cgroup_path.clone(),
                at,
            });
            vec![0]
        }
        Op::EndRun { id, exit_code } => {
            let at = group.at.clone();
            group.run(RunChange::End {
                id: id.clone(),
                exit_code: *exit_code,
                at,
            });
            vec![0]
        }
        Op::OpenSession(s) => {
            // The session's id is its `session_open` event's sequence number: known here,
            // under the log's lock, in every process sharing the journal.
            let id = group.next_seq();
            let i = &s.identity;
            group.event(new_event(
                &session_open_event(id, s),
                IndexHint::SessionOpen {
                    cgroup_id: i.cgroup_id as i64,
                    process_start_ns: i.start_boot_ns.map(|n| n as i64),
                    stale: i.stale,
                },
            ));
            if s.decision.is_some() {
                let connect = Event {
                    session_id: Some(id),
                    kind: "connect",
                    statement: None,
                    decision: s.decision.clone(),
                    rule: s.rule.clone(),
                    // The protocol-neutral keys every command event has (the connection
                    // is the command of its session).
                    detail: serde_json::json!({
                        "destination": s.original_dst,
                        "protocol": s.protocol,
                        "action": "connect",
                        "objects": [s.original_dst],
                    }),
                };
                group.event(new_event(&connect, IndexHint::None));
            }
            vec![id]
        }
        Op::CloseSession {
            id,
            bytes_up,
            bytes_down,
            outcome,
            detail,
        } => {
            let close = Event::note(
                Some(*id),
                "session_close",
                serde_json::json!({
                    "outcome": outcome.as_str(),
                    "bytes_up": *bytes_up as i64,
                    "bytes_down": *bytes_down as i64,
                    "detail": detail,
                }),
            );
            group.event(new_event(&close, IndexHint::None));
            vec![*id]
        }
        Op::Flush => vec![0],
    }
}

/// The `approval_decision` events that expire every pending approval of the service's runs.
fn pending_service_approvals(conn: &Connection) -> Result<Vec<Event>, JournalError> {
    let pending = {
        let mut stmt = conn.prepare_cached(
            "SELECT e.session_id, e.statement, e.rule, json_quote(json_extract(e.detail, '$.id'))
               FROM events e JOIN sessions s ON s.id = e.session_id
              WHERE e.kind = 'approval' AND s.run_id LIKE 'cg-%'
                AND NOT EXISTS (
                    SELECT 1 FROM events d
                     WHERE d.kind = 'approval_decision'
                       AND json_extract(d.detail, '$.id') = json_extract(e.detail, '$.id'))
              ORDER BY e.id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, Option<i64>>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    Ok(pending
        .into_iter()
        .map(|(session_id, statement, rule, approval_id)| {
            // The id as it was written (a JSON value); anything unreadable stays null.
            let approval_id: serde_json::Value = approval_id
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or(serde_json::Value::Null);
            Event {
                session_id,
                kind: "approval_decision",
                statement,
                decision: Some("deny".to_owned()),
                rule,
                detail: serde_json::json!({
                    "id": approval_id,
                    "status": "expired",
                    "reason": "the daemon restarted while it was pending",
                }),
            }
        })
        .collect())
}

/// Opens the log next to the database at `path`; a new log continues the chain the database
/// holds (a journal from before the log, or a new one from the genesis).
fn open_log(
    path: &Path,
    sync: JournalSync,
    conn: &Connection,
) -> Result<segment::SegmentLog, JournalError> {
    let log = segment::SegmentLog::open(&segments_dir(path), sync, || {
        ChainHead::read(conn)
            .map(|head| segment::Head {
                next_seq: head.next_id,
                last_hash: head.last_hash,
            })
            .map_err(|e| e.to_string())
    })?;
    restrict_permissions(path);
    Ok(log)
}

/// The chained record of a session's identity, next to its row in `sessions` (which readers
/// use). Its keys are the `sessions` columns [`verify`] compares, plus the connection's
/// decision and rule.
fn session_open_event(id: i64, s: &NewSession) -> Event {
    let i = &s.identity;
    Event::note(
        Some(id),
        "session_open",
        serde_json::json!({
            "run_id": s.run_id,
            "pid": i.pid,
            "uid": i.uid,
            "gid": i.gid,
            "user": i.user,
            "comm": i.comm,
            "exe": i.exe,
            "cmdline": i.cmdline,
            "cgroup_path": i.cgroup_path,
            "unit": i.unit,
            "client_addr": s.client_addr,
            "original_dst": s.original_dst,
            "target": s.target,
            "protocol": s.protocol,
            "upstream": s.upstream,
            "decision": s.decision,
            "rule": s.rule,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// The hash chain
// ---------------------------------------------------------------------------------------------

/// `prev_hash` of the first event of a journal: nothing came before it.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The columns of an event that its hash covers, as stored. `result` is not among them: it
/// is set later, and covered by the `result` event appended at the same time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainedContent<'a> {
    pub id: i64,
    pub session_id: Option<i64>,
    pub at: &'a str,
    pub kind: &'a str,
    pub statement: Option<&'a str>,
    pub decision: Option<&'a str>,
    pub rule: Option<&'a str>,
    /// The stored JSON text, hashed as is (never re-serialised, so nothing depends on how a
    /// JSON library orders keys or prints numbers).
    pub detail: &'a str,
}

/// `hex(SHA-256(prev_hash || canonical))`, where `prev_hash` is the previous event's hash in
/// hex and `canonical` the compact JSON array
/// `[id, session_id, at, kind, statement, decision, rule, detail]` (docs/journal.md shows how
/// to recompute it with other tools).
pub(crate) fn event_hash(prev_hash: &str, content: &ChainedContent<'_>) -> String {
    String::from_utf8_lossy(&event_hash_hex(prev_hash, content)).into_owned()
}

/// [`event_hash`] as 64 ASCII hex digits, without allocating them (the append path).
pub(crate) fn event_hash_hex(prev_hash: &str, content: &ChainedContent<'_>) -> [u8; 64] {
    // Sized for the canonical array at once: its texts plus quotes, commas and numbers.
    let estimate = 96
        + content.at.len()
        + content.kind.len()
        + content.statement.map_or(0, str::len)
        + content.decision.map_or(0, str::len)
        + content.rule.map_or(0, str::len)
        + content.detail.len();
    let mut canonical = Vec::with_capacity(estimate + estimate / 8);
    // Integers, strings and nulls: serde_json cannot fail on them.
    let _ = serde_json::to_writer(
        &mut canonical,
        &(
            content.id,
            content.session_id,
            content.at,
            content.kind,
            content.statement,
            content.decision,
            content.rule,
            content.detail,
        ),
    );
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(prev_hash.as_bytes());
    digest.update(&canonical);
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in digest.finish().as_ref().iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Where the next event goes: its id and the hash it links to. Read inside each write
/// transaction, never cached across them: other processes may append to the same file.
#[derive(Debug, Clone)]
pub(crate) struct ChainHead {
    pub next_id: i64,
    pub last_hash: String,
}

impl ChainHead {
    pub(crate) fn read(conn: &Connection) -> rusqlite::Result<ChainHead> {
        // AUTOINCREMENT semantics: never reuse an id, even one deleted from the end (so such a
        // deletion leaves a gap that `verify` sees).
        let (seq, last_id, last_hash) = conn
            .prepare_cached(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
                        (SELECT id FROM events ORDER BY id DESC LIMIT 1),
                        (SELECT hash FROM events ORDER BY id DESC LIMIT 1)",
            )?
            .query_row([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            })?;
        if let Some(last_id) = last_id {
            return Ok(ChainHead {
                next_id: seq.max(last_id) + 1,
                // A row without a hash (written around the gateway) links as "": verify names it.
                last_hash: last_hash.unwrap_or_default(),
            });
        }
        // Everything was pruned (or nothing written yet): continue from the latest checkpoint.
        let checkpoint: Option<(i64, String)> = conn
            .prepare_cached(
                "SELECT last_seq, last_hash FROM journal_checkpoints ORDER BY id DESC LIMIT 1",
            )?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        Ok(match checkpoint {
            Some((last_seq, hash)) => ChainHead {
                next_id: seq.max(last_seq) + 1,
                last_hash: hash,
            },
            None => ChainHead {
                next_id: seq + 1,
                last_hash: GENESIS_HASH.to_owned(),
            },
        })
    }
}

/// Inserts `event` as the next link of the chain; `head` moves only once the row is in.
pub(crate) fn insert_event(
    tx: &Connection,
    head: &mut ChainHead,
    event: &Event,
    now: &str,
) -> rusqlite::Result<i64> {
    let detail = event.detail.to_string();
    let id = head.next_id;
    let hash = event_hash(
        &head.last_hash,
        &ChainedContent {
            id,
            session_id: event.session_id,
            at: now,
            kind: event.kind,
            statement: event.statement.as_deref(),
            decision: event.decision.as_deref(),
            rule: event.rule.as_deref(),
            detail: &detail,
        },
    );
    tx.prepare_cached(
        "INSERT INTO events (id, session_id, at, kind, statement, decision, rule, detail,
           prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        id,
        event.session_id,
        now,
        event.kind,
        event.statement,
        event.decision,
        event.rule,
        detail,
        head.last_hash,
        hash
    ])?;
    head.next_id = id + 1;
    head.last_hash = hash;
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------------

/// What a prune may delete.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Events older than this many days go (0: everything recorded before now).
    pub retention_days: u32,
    /// Sinks whose acknowledged position (`sink_cursors.acked_seq`) bounds the prune: an event
    /// a sink has not delivered yet stays, whatever its age. A sink with no cursor yet holds
    /// everything back.
    pub sinks: Vec<String>,
}

/// What a prune did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PruneReport {
    /// Events recorded before this time could go.
    pub cutoff: String,
    /// The last deleted event, now the checkpoint the rest verifies from; `None` when nothing
    /// was deleted.
    pub last_seq: Option<i64>,
    pub events: u64,
    pub sessions: u64,
    pub runs: u64,
    /// The sink whose cursor kept events older than the cutoff.
    pub held_back_by: Option<String>,
    /// The first problem of the deleted part of the chain, if it did not verify. It stays in
    /// the checkpoint, so `journal verify` keeps reporting it after the evidence is gone.
    pub broken: Option<String>,
}

impl std::fmt::Display for PruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.last_seq {
            None => write!(f, "nothing recorded before {} to prune", self.cutoff)?,
            Some(seq) => write!(
                f,
                "pruned {} events (seq <= {seq}), {} sessions and {} runs recorded before {}; \
                 the rest verifies from the checkpoint at seq {seq}",
                self.events, self.sessions, self.runs, self.cutoff
            )?,
        }
        if let Some(sink) = &self.held_back_by {
            write!(
                f,
                "\nheld back by sink {sink:?}, which has not acknowledged older events"
            )?;
        }
        if let Some(broken) = &self.broken {
            write!(
                f,
                "\nWARNING: the pruned part of the chain was broken ({broken}); \
                 `journal verify` will keep reporting it"
            )?;
        }
        Ok(())
    }
}

/// `interceptor journal prune`: deletes, in one transaction, the events recorded more than
/// `retention_days` ago (a prefix of the chain), the finished sessions and runs no remaining
/// event refers to, and records a checkpoint (the last deleted event's id and hash) plus a
/// chained `prune` event, so what remains still verifies.
///
/// The log's segments wholly before the checkpoint are deleted too; the newest always stays.
pub fn prune_file(
    config: &JournalConfig,
    options: &PruneOptions,
) -> Result<PruneReport, JournalError> {
    let mut conn = open_connection_with(&config.path, config.sync)?;
    let mut log = open_log(&config.path, config.sync, &conn)?;
    prune_log(&mut log, &mut conn, options, SystemTime::now())
}

pub(crate) fn prune_log(
    log: &mut segment::SegmentLog,
    conn: &mut Connection,
    options: &PruneOptions,
    now: SystemTime,
) -> Result<PruneReport, JournalError> {
    let age = Duration::from_secs(u64::from(options.retention_days) * 86_400);
    let cutoff = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
    prune_before(
        log,
        conn,
        &humantime::format_rfc3339_millis(cutoff).to_string(),
        &options.sinks,
    )
}

/// Prunes what was recorded before `cutoff` (an RFC 3339 time as the journal writes them).
///
/// With the log locked (nothing is appended meanwhile, by any process), the index first
/// catches up with it, so the prefix is decided on everything recorded; the `prune` event is
/// appended to the log and indexed in the prune's transaction.
pub(crate) fn prune_before(
    log: &mut segment::SegmentLog,
    conn: &mut Connection,
    cutoff: &str,
    sinks: &[String],
) -> Result<PruneReport, JournalError> {
    let report = log.with_lock(|held| {
        index::catch_up(conn, held.dir())?;
        prune_index(held, conn, cutoff, sinks)
    })??;
    if let Some(last_seq) = report.last_seq {
        index::delete_segments_through(log.dir(), last_seq)?;
    }
    Ok(report)
}

fn prune_index(
    held: &mut segment::Held<'_>,
    conn: &mut Connection,
    cutoff: &str,
    sinks: &[String],
) -> Result<PruneReport, JournalError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut report = PruneReport {
        cutoff: cutoff.to_owned(),
        last_seq: None,
        events: 0,
        sessions: 0,
        runs: 0,
        held_back_by: None,
        broken: None,
    };
    // Only a prefix of the chain can go: everything up to the newest event older than the
    // cutoff (times follow ids, see `apply_batch`).
    let newest_old: Option<i64> = tx.query_row(
        "SELECT MAX(id) FROM events WHERE at < ?1",
        [cutoff],
        |row| row.get(0),
    )?;
    let Some(mut bound) = newest_old else {
        return Ok(report);
    };
    for sink in sinks {
        let acked: i64 = tx
            .query_row(
                "SELECT acked_seq FROM sink_cursors WHERE name = ?1",
                [sink],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
        if acked < bound {
            bound = acked;
            report.held_back_by = Some(sink.clone());
        }
    }
    let last: Option<(i64, Option<String>)> = tx
        .query_row(
            "SELECT id, hash FROM events WHERE id <= ?1 ORDER BY id DESC LIMIT 1",
            [bound],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some((last_seq, last_hash)) = last else {
        return Ok(report);
    };
    // The evidence is about to go: whatever is wrong with it is kept in the checkpoint.
    let start = verify::chain_start(&tx)?;
    let walk = verify::walk_chain(&tx, &start, Some(last_seq), 1)?;
    report.broken = walk.findings.first().map(|f| f.to_string());
    let last_hash = last_hash.unwrap_or_default();

    report.events = tx.execute("DELETE FROM events WHERE id <= ?1", [last_seq])? as u64;
    // Rows that events still point to stay (and foreign keys would refuse anyway).
    report.sessions = tx.execute(
        "DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?1
           AND NOT EXISTS (SELECT 1 FROM events e WHERE e.session_id = sessions.id)",
        [cutoff],
    )? as u64;
    report.runs = tx.execute(
        "DELETE FROM runs WHERE ended_at IS NOT NULL AND ended_at < ?1
           AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.run_id = runs.id)",
        [cutoff],
    )? as u64;
    let now = now_rfc3339();
    tx.execute(
        "INSERT INTO journal_checkpoints (at, cutoff, last_seq, last_hash, events_deleted,
           sessions_deleted, runs_deleted, broken)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            now,
            cutoff,
            last_seq,
            last_hash,
            report.events as i64,
            report.sessions as i64,
            report.runs as i64,
            report.broken
        ],
    )?;
    // The prune itself is part of the record, so a shipped copy of the chain shows it too.
    let prune = Event::note(
        None,
        "prune",
        serde_json::json!({
            "cutoff": cutoff,
            "last_seq": last_seq,
            "last_hash": last_hash,
            "events": report.events,
            "sessions": report.sessions,
            "runs": report.runs,
            "broken": report.broken,
        }),
    );
    held.append(|group| group.event(new_event(&prune, segment::IndexHint::None)))?;
    index::apply_pending(&tx, held.dir(), &mut index::Cursor::default())?;
    tx.commit()?;
    report.last_seq = Some(last_seq);
    Ok(report)
}

/// What `journal reindex` did.
#[derive(Debug, Clone, Serialize)]
pub struct ReindexReport {
    /// The last event now indexed.
    pub indexed_seq: i64,
    pub events: i64,
    pub sessions: i64,
}

impl std::fmt::Display for ReindexReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reindexed the log: the index holds {} events and {} sessions, through seq {}",
            self.events, self.sessions, self.indexed_seq
        )
    }
}

/// `interceptor journal reindex`: rebuilds the index from the segment log, with the log locked
/// (appends wait while it runs).
pub fn reindex_file(config: &JournalConfig) -> Result<ReindexReport, JournalError> {
    let mut conn = open_connection_with(&config.path, config.sync)?;
    let mut log = open_log(&config.path, config.sync, &conn)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let dir = log.dir().to_owned();
    log.with_lock(|_| index::reindex(&mut conn, &dir))??;
    let (_, indexed_seq) = index::read_position(&conn)?;
    let count = |table: &str| -> rusqlite::Result<i64> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
    };
    Ok(ReindexReport {
        indexed_seq,
        events: count("events")?,
        sessions: count("sessions")?,
    })
}

#[cfg(test)]
mod tests;
