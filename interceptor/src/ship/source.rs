//! The shipper's view of the journal: events after a sequence number, each with the session
//! and command facts its OCSF record needs; the journal's id; and each sink's cursor.
//!
//! It reads and writes through its own SQLite connection, never the [`crate::journal::Journal`]
//! writer: WAL lets it read while the gateway commits, and its only writes are to
//! `sink_cursors` (and, once, `journal_meta`), small rows that wait for the writer's lock like
//! any other commit. Sequence numbers are the `events` rowids (AUTOINCREMENT): SQLite has one
//! writer, so once a reader sees seq N committed, no lower seq can commit after it, and "after
//! the cursor" never skips an event.

use rusqlite::{params, Connection, OptionalExtension as _};
use serde_json::Value;

use super::ocsf::{CommandFacts, JournalEvent, SessionFacts};

/// `ship status` reads journals read-only, including ones older than the table.
fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |row| row.get(0),
    )
}

/// The highest sequence number in the journal (0 when empty).
pub fn last_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(id), 0) FROM events", [], |row| {
        row.get(0)
    })
}

const EVENT_QUERY: &str = "SELECT e.id, e.at, e.kind, e.statement, e.decision, e.rule, e.detail,
        s.id, s.run_id, s.pid, s.uid, s.gid, s.user, s.comm, s.exe, s.cmdline, s.cgroup_path,
        s.unit, s.identity_stale, s.client_addr, s.original_dst, s.target, s.protocol,
        s.upstream, s.started_at,
        c.id, c.kind, c.statement, c.detail
   FROM events e
   LEFT JOIN sessions s ON s.id = e.session_id
   LEFT JOIN events c ON c.id = (CASE WHEN e.kind = 'result' AND json_valid(e.detail)
                                      THEN json_extract(e.detail, '$.event') END)
  WHERE e.id > ?1
  ORDER BY e.id
  LIMIT ?2";

/// Up to `limit` events with a sequence number above `after`, in order.
pub fn events_after(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<JournalEvent>> {
    let mut stmt = conn.prepare_cached(EVENT_QUERY)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![after, limit], |row| {
        let session = match row.get::<_, Option<i64>>(7)? {
            None => None,
            Some(id) => Some(SessionFacts {
                id,
                run_id: text(row, 8)?,
                pid: row.get(9)?,
                uid: row.get(10)?,
                gid: row.get(11)?,
                user: text(row, 12)?,
                comm: text(row, 13)?.unwrap_or_default(),
                exe: text(row, 14)?,
                cmdline: text(row, 15)?,
                cgroup_path: text(row, 16)?,
                unit: text(row, 17)?,
                identity_stale: row.get(18)?,
                client_addr: text(row, 19)?.unwrap_or_default(),
                original_dst: text(row, 20)?.unwrap_or_default(),
                target: text(row, 21)?,
                protocol: text(row, 22)?.unwrap_or_default(),
                upstream: text(row, 23)?,
                started_at: text(row, 24)?.unwrap_or_default(),
            }),
        };
        let command = match row.get::<_, Option<i64>>(25)? {
            None => None,
            Some(seq) => Some(CommandFacts {
                seq,
                kind: text(row, 26)?.unwrap_or_default(),
                statement: text(row, 27)?,
                detail: parse_detail(text(row, 28)?),
            }),
        };
        Ok(JournalEvent {
            seq: row.get(0)?,
            at: text(row, 1)?.unwrap_or_default(),
            kind: text(row, 2)?.unwrap_or_default(),
            statement: text(row, 3)?,
            decision: text(row, 4)?,
            rule: text(row, 5)?,
            detail: parse_detail(text(row, 6)?),
            session,
            command,
        })
    })?;
    rows.collect()
}

/// A text column, read leniently: a byte that is not UTF-8 must not stop a sink for good
/// (the batch would fail on every retry), so it is replaced, not refused.
fn text(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(index)? {
        ValueRef::Null => None,
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(x) => Some(x.to_string()),
    })
}

/// `detail` is JSON written by the daemon; anything else is kept as text rather than lost.
fn parse_detail(text: Option<String>) -> Value {
    match text {
        None => Value::Null,
        Some(t) => serde_json::from_str(&t).unwrap_or(Value::String(t)),
    }
}

/// One row of `sink_cursors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorRow {
    pub acked_seq: i64,
    pub last_error: Option<String>,
    pub updated_at: Option<String>,
}

/// The cursor of sink `name` (all zero when it never shipped).
pub fn cursor(conn: &Connection, name: &str) -> rusqlite::Result<CursorRow> {
    if !table_exists(conn, "sink_cursors")? {
        return Ok(CursorRow::default());
    }
    Ok(conn
        .query_row(
            "SELECT acked_seq, last_error, updated_at FROM sink_cursors WHERE name = ?1",
            [name],
            |row| {
                Ok(CursorRow {
                    acked_seq: row.get(0)?,
                    last_error: row.get(1)?,
                    updated_at: row.get(2)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// The sink acknowledged everything up to `seq`. The cursor never moves back (two runs
/// shipping the same sink may acknowledge out of order), and a delivery clears the error.
pub fn acknowledge(conn: &Connection, name: &str, seq: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO sink_cursors (name, acked_seq, last_error, updated_at)
         VALUES (?1, ?2, NULL, ?3)
         ON CONFLICT(name) DO UPDATE SET acked_seq = max(acked_seq, excluded.acked_seq),
           last_error = NULL, updated_at = excluded.updated_at",
    )?
    .execute(params![name, seq, crate::journal::now_rfc3339()])
    .map(drop)
}

/// Records why the last delivery attempt failed (shown by `ship status`).
pub fn record_error(conn: &Connection, name: &str, error: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO sink_cursors (name, acked_seq, last_error, updated_at)
         VALUES (?1, 0, ?2, ?3)
         ON CONFLICT(name) DO UPDATE SET last_error = excluded.last_error,
           updated_at = excluded.updated_at",
    )?
    .execute(params![name, error, crate::journal::now_rfc3339()])
    .map(drop)
}
