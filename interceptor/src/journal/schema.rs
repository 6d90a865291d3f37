//! Journal schema and its migrations, applied in order and tracked by `PRAGMA user_version`.
//! A migration is only ever appended; an old binary refuses a newer journal instead of
//! misreading it.
//!
//! Version 3 adds the hash chain. Rows written before it are chained by the migration itself,
//! in id order from the genesis, and what was already known about them but is now recorded as
//! chained events (each session's identity and end, each command's result) is appended right
//! after them. So a journal has one chain from its first row, with no unverifiable part: edits
//! made *before* the upgrade cannot be detected (they become the chained content), edits made
//! after it can. `journal_meta` keeps where this happened (`chain_migrated_seq`,
//! `chain_migrated_at`).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension as _, Transaction};

use super::{ChainHead, ChainedContent, Event, JournalError, GENESIS_HASH};

/// One step from version N to N+1: SQL, then optionally Rust on the same transaction.
struct Migration {
    sql: &'static str,
    then: Option<fn(&Transaction<'_>) -> rusqlite::Result<()>>,
}

/// The first version with the hash chain, `journal_meta` and `sink_cursors`.
pub const CHAIN_VERSION: i64 = 3;

/// The first version that is the index of a segment log (`index_position`).
pub const LOG_VERSION: i64 = 4;

const MIGRATIONS: &[Migration] = &[
    // 1: runs, sessions, and a general events table.
    Migration {
        sql: "CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        mode TEXT NOT NULL,
        command TEXT,
        uid INTEGER,
        user TEXT,
        cgroup_path TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        exit_code INTEGER
    );
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT,
        pid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        user TEXT,
        comm TEXT NOT NULL,
        exe TEXT,
        cmdline TEXT,
        cgroup_id INTEGER NOT NULL,
        cgroup_path TEXT,
        unit TEXT,
        process_start_ns INTEGER,
        identity_stale INTEGER NOT NULL DEFAULT 0,
        client_addr TEXT NOT NULL,
        original_dst TEXT NOT NULL,
        target TEXT,
        protocol TEXT NOT NULL,
        upstream TEXT,
        bytes_up INTEGER NOT NULL DEFAULT 0,
        bytes_down INTEGER NOT NULL DEFAULT 0,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        outcome TEXT,
        detail TEXT
    );
    CREATE INDEX sessions_run ON sessions(run_id);
    CREATE INDEX sessions_started ON sessions(started_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id INTEGER REFERENCES sessions(id),
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        decision TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX events_session ON events(session_id);",
        then: None,
    },
    // 2: command events carry their statement, the rule that decided, and the result.
    Migration {
        sql: "ALTER TABLE events ADD COLUMN statement TEXT;
    ALTER TABLE events ADD COLUMN rule TEXT;
    ALTER TABLE events ADD COLUMN result TEXT;",
        then: None,
    },
    // 3: the hash chain (see the module doc), the journal's identity, the shippers' cursors
    // (one per sink: the last sequence number it acknowledged) and the prune checkpoints.
    // The shipper creates the same two tables with the same statements if they are missing
    // (ship/source.rs), hence IF NOT EXISTS.
    Migration {
        sql: "ALTER TABLE events ADD COLUMN prev_hash TEXT;
    ALTER TABLE events ADD COLUMN hash TEXT;
    CREATE TABLE IF NOT EXISTS journal_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS sink_cursors (
        name TEXT PRIMARY KEY,
        acked_seq INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        updated_at TEXT
    );
    CREATE TABLE journal_checkpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        cutoff TEXT NOT NULL,
        last_seq INTEGER NOT NULL,
        last_hash TEXT NOT NULL,
        events_deleted INTEGER NOT NULL,
        sessions_deleted INTEGER NOT NULL,
        runs_deleted INTEGER NOT NULL,
        broken TEXT
    );",
        then: Some(chain_existing_rows),
    },
    // 4: the database becomes the index of the segment log (journal/segment.rs): how far the
    // indexer got. A binary older than this would write events to the database directly,
    // forking the chain from the log's, so it must refuse the file, which the version does.
    Migration {
        sql: "CREATE TABLE index_position (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        segment INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        seq INTEGER NOT NULL
    );
    INSERT INTO index_position (id, segment, offset, seq) VALUES (1, 1, 0, 0);",
        then: None,
    },
];

pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), JournalError> {
    let open_err = |source| JournalError::Open {
        path: path.to_owned(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(open_err)?;
    if version > CURRENT_VERSION {
        return Err(JournalError::TooNew {
            path: path.to_owned(),
            found: version,
            supported: CURRENT_VERSION,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(migration.sql).map_err(open_err)?;
        if let Some(then) = migration.then {
            then(&tx).map_err(open_err)?;
        }
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(open_err)?;
    }
    // Created once, by whichever process migrates (or first opens) the file.
    tx.execute(
        "INSERT OR IGNORE INTO journal_meta (key, value) VALUES ('journal_id', ?1)",
        [uuid::Uuid::new_v4().to_string()],
    )
    .map_err(open_err)?;
    tx.commit().map_err(open_err)
}

/// Rows read at a time while chaining an existing journal.
const CHUNK: i64 = 10_000;

/// Migration 3, after its SQL: chains the rows already there, then appends what is known about
/// them as chained events, as the gateway now records it for new ones.
fn chain_existing_rows(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let now = super::now_rfc3339();
    let mut prev = GENESIS_HASH.to_owned();
    let mut after = 0i64;
    loop {
        let rows = {
            let mut stmt = tx.prepare(
                "SELECT id, session_id, at, kind, statement, decision, rule, detail
                   FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, CHUNK], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, Option<String>>(6)?,
                    row.get::<_, String>(7)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let Some(last) = rows.last() else {
            break;
        };
        after = last.0;
        let mut update = tx.prepare("UPDATE events SET prev_hash = ?2, hash = ?3 WHERE id = ?1")?;
        for (id, session_id, at, kind, statement, decision, rule, detail) in &rows {
            let hash = super::event_hash(
                &prev,
                &ChainedContent {
                    id: *id,
                    session_id: *session_id,
                    at,
                    kind,
                    statement: statement.as_deref(),
                    decision: decision.as_deref(),
                    rule: rule.as_deref(),
                    detail,
                },
            );
            update.execute(params![id, prev, hash])?;
            prev = hash;
        }
    }
    tx.execute(
        "INSERT INTO journal_meta (key, value) VALUES ('chain_migrated_seq', ?1),
           ('chain_migrated_at', ?2)",
        params![after.to_string(), now],
    )?;

    let mut head = ChainHead::read(tx)?;
    // Each session's identity and, if it ended, how; with the decision of its connect event.
    let sessions = {
        let mut stmt = tx.prepare(&format!(
            "SELECT s.id, s.ended_at IS NOT NULL, {open}, {close},
                    (SELECT json_object('decision', c.decision, 'rule', c.rule) FROM events c
                      WHERE c.session_id = s.id AND c.kind = 'connect' ORDER BY c.id LIMIT 1)
               FROM sessions s ORDER BY s.id",
            open = SESSION_OPEN_JSON,
            close = SESSION_CLOSE_JSON
        ))?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, bool>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<String>>(4)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    for (id, ended, open, close, connect) in sessions {
        let mut open = parse_object(&open);
        let connect = connect.as_deref().map(parse_object).unwrap_or_default();
        for key in ["decision", "rule"] {
            open.insert(
                key.to_owned(),
                connect.get(key).cloned().unwrap_or(serde_json::Value::Null),
            );
        }
        let event = Event::note(Some(id), "session_open", open.into());
        super::insert_event(tx, &mut head, &event, &now)?;
        if ended {
            let event = Event::note(Some(id), "session_close", parse_object(&close).into());
            super::insert_event(tx, &mut head, &event, &now)?;
        }
    }
    // Each command's result.
    let mut after = 0i64;
    loop {
        let results = {
            let mut stmt = tx.prepare(
                "SELECT id, session_id, result FROM events
                  WHERE result IS NOT NULL AND kind != 'result' AND id > ?1
                  ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, CHUNK], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let Some(last) = results.last() else {
            break;
        };
        after = last.0;
        for (id, session_id, result) in results {
            // Kept as it was, even if it is not JSON: `verify` compares values, and a text
            // that does not parse is recorded as a string.
            let result: serde_json::Value =
                serde_json::from_str(&result).unwrap_or(serde_json::Value::String(result));
            let event = Event::note(
                session_id,
                "result",
                serde_json::json!({ "event": id, "result": result }),
            );
            super::insert_event(tx, &mut head, &event, &now)?;
        }
    }
    Ok(())
}

fn parse_object(text: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// A `sessions` row (alias `s`) as the JSON its `session_open` event holds, less the decision
/// and rule: what `verify` compares the row with.
pub(crate) const SESSION_OPEN_JSON: &str = "json_object('run_id', s.run_id, 'pid', s.pid,
    'uid', s.uid, 'gid', s.gid, 'user', s.user, 'comm', s.comm, 'exe', s.exe,
    'cmdline', s.cmdline, 'cgroup_path', s.cgroup_path, 'unit', s.unit,
    'client_addr', s.client_addr, 'original_dst', s.original_dst, 'target', s.target,
    'protocol', s.protocol, 'upstream', s.upstream)";

/// A `sessions` row (alias `s`) as the JSON its `session_close` event holds.
pub(crate) const SESSION_CLOSE_JSON: &str = "json_object('outcome', s.outcome,
    'bytes_up', s.bytes_up, 'bytes_down', s.bytes_down, 'detail', s.detail)";

/// Creates the schema of an older `version` (for tests of the migrations).
#[cfg(test)]
pub(super) fn create_version(conn: &Connection, version: usize) -> rusqlite::Result<()> {
    for migration in &MIGRATIONS[..version] {
        conn.execute_batch(migration.sql)?;
    }
    conn.pragma_update(None, "user_version", version as i64)
}

/// The schema version of a journal, without changing it (for read-only callers).
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// `journal_meta` value for `key`.
pub(crate) fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM journal_meta WHERE key = ?1",
        [key],
        |row| row.get(0),
    )
    .optional()
}
