//! Read side of the journal, for the CLI (`interceptor sessions …`). Opens the file read-only,
//! so looking never interferes with a running daemon beyond SQLite's WAL readers.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::JournalError;

/// One row of `sessions list`. Field names are the JSON contract of `--json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionRow {
    pub id: i64,
    pub run_id: Option<String>,
    pub pid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup_path: Option<String>,
    pub unit: Option<String>,
    pub identity_stale: bool,
    pub client_addr: String,
    pub original_dst: String,
    pub target: Option<String>,
    pub protocol: String,
    pub upstream: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

/// Filters of `sessions list`; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// RFC 3339 timestamps (prefixes work: "2026-11-28").
    pub since: Option<String>,
    pub until: Option<String>,
    pub target: Option<String>,
    pub user: Option<String>,
    pub run: Option<String>,
    pub outcome: Option<String>,
}

pub fn open_read_only(path: &Path) -> Result<Connection, JournalError> {
    let open_err = |source| JournalError::Open {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        return Err(JournalError::Missing(path.to_owned()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    Ok(conn)
}

const SESSION_COLUMNS: &str = "id, run_id, pid, uid, user, comm, exe, cmdline, cgroup_path, unit,
    identity_stale, client_addr, original_dst, target, protocol, upstream, bytes_up, bytes_down,
    started_at, ended_at, outcome, detail";

fn session_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: row.get(0)?,
        run_id: row.get(1)?,
        pid: row.get(2)?,
        uid: row.get(3)?,
        user: row.get(4)?,
        comm: row.get(5)?,
        exe: row.get(6)?,
        cmdline: row.get(7)?,
        cgroup_path: row.get(8)?,
        unit: row.get(9)?,
        identity_stale: row.get(10)?,
        client_addr: row.get(11)?,
        original_dst: row.get(12)?,
        target: row.get(13)?,
        protocol: row.get(14)?,
        upstream: row.get(15)?,
        bytes_up: row.get::<_, i64>(16)?.max(0) as u64,
        bytes_down: row.get::<_, i64>(17)?.max(0) as u64,
        started_at: row.get(18)?,
        ended_at: row.get(19)?,
        outcome: row.get(20)?,
        detail: row.get(21)?,
    })
}

fn list_sessions_where(
    conn: &Connection,
    condition: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<SessionRow>, JournalError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE {condition} ORDER BY id"
    ))?;
    let rows = stmt.query_map(params, session_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub fn list_sessions(
    conn: &Connection,
    filter: &SessionFilter,
) -> Result<Vec<SessionRow>, JournalError> {
    list_sessions_where(
        conn,
        "(?1 IS NULL OR started_at >= ?1)
            AND (?2 IS NULL OR started_at <= ?2)
            AND (?3 IS NULL OR target = ?3)
            AND (?4 IS NULL OR user = ?4 OR CAST(uid AS TEXT) = ?4)
            AND (?5 IS NULL OR run_id = ?5)
            AND (?6 IS NULL OR outcome = ?6)",
        rusqlite::params![
            filter.since,
            filter.until,
            filter.target,
            filter.user,
            filter.run,
            filter.outcome
        ],
    )
}

/// One event of `sessions show`. Field names are the JSON contract of `--json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub ts: String,
    pub kind: String,
    pub statement: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub result: Option<serde_json::Value>,
    pub detail: serde_json::Value,
}

pub fn get_session(conn: &Connection, id: i64) -> Result<Option<SessionRow>, JournalError> {
    let rows = list_sessions_where(conn, "id = ?1", rusqlite::params![id])?;
    Ok(rows.into_iter().next())
}

pub fn session_events(conn: &Connection, session_id: i64) -> Result<Vec<EventRow>, JournalError> {
    let mut stmt = conn.prepare(
        "SELECT id, at, kind, statement, decision, rule, result, detail
           FROM events WHERE session_id = ?1 ORDER BY id",
    )?;
    let parse = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
    let rows = stmt.query_map([session_id], |row| {
        Ok(EventRow {
            seq: row.get(0)?,
            ts: row.get(1)?,
            kind: row.get(2)?,
            statement: row.get(3)?,
            decision: row.get(4)?,
            rule: row.get(5)?,
            result: parse(row.get(6)?),
            detail: parse(row.get(7)?).unwrap_or(serde_json::Value::Null),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
