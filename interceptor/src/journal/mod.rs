//! The journal: the host's source of truth for what agents did, in SQLite.
//!
//! Why this exists: auditors must be able to reconstruct every session, and the gateway must
//! never forward something it failed to record. Writes are committed in groups ([`Journal`]):
//! every caller waits for its own commit, but callers that arrive while a commit is running
//! share the next transaction, so "record before forward" stays cheap under load. Readers
//! (the CLI) open the file separately ([`reader`]); WAL lets them read while the daemon writes.
//!
//! Schema changes are migrations keyed by `PRAGMA user_version` ([`schema`]).

pub mod reader;
pub mod schema;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, TryLockError,
    },
    time::SystemTime,
};

use rusqlite::{params, Connection};
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
    /// The journal handle is gone (the daemon is shutting down).
    #[error("the journal writer has stopped")]
    Stopped,
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
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Refused => "refused",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::Error => "error",
            Outcome::Anomaly => "anomaly",
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
    /// A command's outcome, added to its event once known.
    EventResult {
        id: i64,
        result: serde_json::Value,
    },
    /// Does nothing; answered once everything queued before it is committed.
    Flush,
    /// Marks every pending approval of the service's runs as expired (see
    /// [`Journal::expire_service_approvals`]); answers with how many.
    ExpireServiceApprovals,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Vec<i64>, String>>,
}

/// Handle to the journal. Cheap to clone; the async methods return after the commit.
///
/// Group commit without a writer thread: a caller queues its request, then tries to become the
/// committer by taking the connection lock. The committer drains the queue in transactions
/// until it is empty; callers that find the lock taken just wait for their reply, because the
/// committer re-checks the queue after releasing the lock. With no contention a write costs
/// no thread hand-off, which is most of the cost of a short connection.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    queue: Mutex<Vec<Request>>,
    /// A caller is about to commit the queue (see [`Journal::enqueue`]).
    gathering: AtomicBool,
}

/// Upper bound on operations per transaction, so one commit never holds the lock for long.
const MAX_GROUP: usize = 512;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Journal {
    /// Opens (creating and migrating) the journal at `path`.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let conn = open_connection(path)?;
        let inner = Arc::new(Inner {
            conn: Mutex::new(conn),
            queue: Mutex::new(Vec::new()),
            gathering: AtomicBool::new(false),
        });
        start_checkpointer(path, Arc::downgrade(&inner))?;
        Ok(Journal { inner })
    }

    /// Queues `op` and makes sure someone commits it. The first caller of a group yields once
    /// before committing, so sessions that are ready to run add their records to the same
    /// transaction; later callers of the group just wait for their reply.
    async fn enqueue(&self, op: Op) -> Result<Result<Vec<i64>, String>, oneshot::error::RecvError> {
        let rx = self.inner.queue_only(op);
        if !self.inner.gathering.swap(true, Ordering::AcqRel) {
            tokio::task::yield_now().await;
            // Cleared before draining: a request queued after the drain sees `false` and
            // commits itself; one queued before it is in this drain.
            self.inner.gathering.store(false, Ordering::Release);
            self.inner.commit_queued();
        }
        rx.await
    }
}

impl Inner {
    fn queue_only(&self, op: Op) -> oneshot::Receiver<Result<Vec<i64>, String>> {
        let (reply, rx) = oneshot::channel();
        lock(&self.queue).push(Request { op, reply });
        rx
    }

    /// Commits everything queued, unless another caller is already doing so.
    fn commit_queued(&self) {
        loop {
            let mut conn = match self.conn.try_lock() {
                Ok(conn) => conn,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // The current committer re-checks the queue after unlocking: it will see ours.
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let batch: Vec<Request> = {
                    let mut queue = lock(&self.queue);
                    let n = queue.len().min(MAX_GROUP);
                    queue.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let results = apply_batch(&mut conn, &batch);
                for (req, result) in batch.into_iter().zip(results) {
                    if let Err(e) = &result {
                        if req.reply.is_closed() {
                            // Nobody waits for this one (a queued close): the log is its trace.
                            tracing::error!(error = %e, "journal write failed");
                        }
                    }
                    let _ = req.reply.send(result);
                }
            }
            drop(conn);
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

    /// Records a session and returns its id once committed.
    pub async fn open_session(&self, session: NewSession) -> Result<i64, JournalError> {
        self.submit(Op::OpenSession(Box::new(session))).await
    }

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

    /// Returns once everything queued so far is committed (or has failed).
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.submit(Op::Flush).await.map(drop)
    }

    pub async fn event(&self, event: Event) -> Result<i64, JournalError> {
        self.submit(Op::Event(event)).await
    }

    /// A restarted service lost every held client connection: their requests are expired, so
    /// nothing is ever forwarded for them later. Only the service's own runs (`cg-…`) are
    /// touched; `exec` runs sharing the journal keep theirs.
    pub async fn expire_service_approvals(&self) -> Result<i64, JournalError> {
        self.submit(Op::ExpireServiceApprovals).await
    }

    /// Records several events with one commit and returns their ids, in order.
    pub async fn events(&self, events: Vec<Event>) -> Result<Vec<i64>, JournalError> {
        self.submit_all(Op::Events(events)).await
    }

    /// Queues an event nobody waits for (see [`Journal::record_close`]).
    pub fn record_event(&self, event: Event) {
        drop(self.inner.queue_only(Op::Event(event)));
    }

    /// Queues a command's result for its event.
    pub fn record_result(&self, id: i64, result: serde_json::Value) {
        drop(self.inner.queue_only(Op::EventResult { id, result }));
    }
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection, JournalError> {
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
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
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

/// How often the background thread commits queued closes.
const COMMIT_QUEUED_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// How often it folds the WAL back into the database.
const CHECKPOINT_EVERY: u32 = 10;

/// Checkpoints (and their fsync) run here, off the commit path that connections wait on. The
/// committing connection only checkpoints itself as a fallback, when the WAL grows past
/// [`FALLBACK_CHECKPOINT_PAGES`], e.g. if this thread could not keep up. It also commits
/// records nobody waits for (session closes) when no other commit has taken them along.
fn start_checkpointer(path: &Path, journal: std::sync::Weak<Inner>) -> Result<(), JournalError> {
    let conn = open_connection(path)?;
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

const FALLBACK_CHECKPOINT_PAGES: i64 = 20_000;

/// The journal holds who did what: readable by root (and the file's group) only.
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640));
    }
}

/// Applies a group in one transaction. If the commit fails, every caller in the group gets the
/// error: nothing is reported as recorded unless it is on disk.
fn apply_batch(conn: &mut Connection, batch: &[Request]) -> Vec<Result<Vec<i64>, String>> {
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return batch.iter().map(|_| Err(e.to_string())).collect(),
    };
    let mut results: Vec<Result<Vec<i64>, String>> = batch
        .iter()
        .map(|req| apply(&tx, &req.op).map_err(|e| e.to_string()))
        .collect();
    if let Err(e) = tx.commit() {
        tracing::error!(error = %e, "journal commit failed; the affected commands are refused");
        results = batch.iter().map(|_| Err(e.to_string())).collect();
    }
    results
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn apply(tx: &rusqlite::Transaction<'_>, op: &Op) -> rusqlite::Result<Vec<i64>> {
    let now = now_rfc3339();
    match op {
        Op::Events(events) => events.iter().map(|e| insert_event(tx, e, &now)).collect(),
        Op::EventResult { id, result } => {
            tx.execute(
                "UPDATE events SET result = ?2 WHERE id = ?1",
                params![id, result.to_string()],
            )?;
            Ok(vec![*id])
        }
        other => apply_one(tx, other, &now).map(|id| vec![id]),
    }
}

fn apply_one(tx: &rusqlite::Transaction<'_>, op: &Op, now: &str) -> rusqlite::Result<i64> {
    match op {
        Op::StartRun(run) => {
            tx.execute(
                "INSERT INTO runs (id, mode, command, uid, user, cgroup_path, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO NOTHING",
                params![
                    run.id,
                    run.mode,
                    run.command,
                    run.uid,
                    run.user,
                    run.cgroup_path,
                    now
                ],
            )?;
            Ok(0)
        }
        Op::EndRun { id, exit_code } => {
            tx.execute(
                "UPDATE runs SET ended_at = ?2, exit_code = ?3 WHERE id = ?1",
                params![id, now, exit_code],
            )?;
            Ok(0)
        }
        Op::OpenSession(s) => {
            let i = &s.identity;
            tx.execute(
                "INSERT INTO sessions (run_id, pid, uid, gid, user, comm, exe, cmdline, cgroup_id,
                   cgroup_path, unit, process_start_ns, identity_stale, client_addr, original_dst,
                   target, protocol, upstream, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                   ?17, ?18, ?19)",
                params![
                    s.run_id,
                    i.pid,
                    i.uid,
                    i.gid,
                    i.user,
                    i.comm,
                    i.exe,
                    i.cmdline,
                    i.cgroup_id as i64,
                    i.cgroup_path,
                    i.unit,
                    i.start_boot_ns.map(|n| n as i64),
                    i.stale,
                    s.client_addr,
                    s.original_dst,
                    s.target,
                    s.protocol,
                    s.upstream,
                    now
                ],
            )?;
            let id = tx.last_insert_rowid();
            if s.decision.is_some() {
                insert_event(
                    tx,
                    &Event {
                        session_id: Some(id),
                        kind: "connect",
                        statement: None,
                        decision: s.decision.clone(),
                        rule: s.rule.clone(),
                        detail: serde_json::json!({ "destination": s.original_dst }),
                    },
                    now,
                )?;
            }
            Ok(id)
        }
        Op::CloseSession {
            id,
            bytes_up,
            bytes_down,
            outcome,
            detail,
        } => {
            tx.execute(
                "UPDATE sessions SET bytes_up = ?2, bytes_down = ?3, outcome = ?4, detail = ?5,
                   ended_at = ?6 WHERE id = ?1",
                params![
                    id,
                    *bytes_up as i64,
                    *bytes_down as i64,
                    outcome.as_str(),
                    detail,
                    now
                ],
            )?;
            Ok(*id)
        }
        Op::Event(event) => insert_event(tx, event, now),
        Op::Flush => Ok(0),
        Op::ExpireServiceApprovals => {
            let expired = tx.execute(
                "INSERT INTO events (session_id, at, kind, statement, decision, rule, detail)
                 SELECT e.session_id, ?1, 'approval_decision', e.statement, 'deny', e.rule,
                        json_object('id', json_extract(e.detail, '$.id'), 'status', 'expired',
                                    'reason', 'the daemon restarted while it was pending')
                   FROM events e JOIN sessions s ON s.id = e.session_id
                  WHERE e.kind = 'approval' AND s.run_id LIKE 'cg-%'
                    AND NOT EXISTS (
                        SELECT 1 FROM events d
                         WHERE d.kind = 'approval_decision'
                           AND json_extract(d.detail, '$.id') = json_extract(e.detail, '$.id'))",
                params![now],
            )?;
            Ok(expired as i64)
        }
        // Handled in `apply`.
        Op::Events(_) | Op::EventResult { .. } => Ok(0),
    }
}

fn insert_event(tx: &rusqlite::Transaction<'_>, event: &Event, now: &str) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO events (session_id, at, kind, statement, decision, rule, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            event.session_id,
            now,
            event.kind,
            event.statement,
            event.decision,
            event.rule,
            event.detail.to_string()
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

#[cfg(test)]
mod tests;
