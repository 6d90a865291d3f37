//! Journal schema and its migrations, applied in order and tracked by `PRAGMA user_version`.
//! A migration is only ever appended; an old binary refuses a newer journal instead of
//! misreading it.

use std::path::Path;

use rusqlite::Connection;

use super::JournalError;

/// Each entry moves the schema from version N to N+1.
const MIGRATIONS: &[&str] = &[
    // 1: runs, sessions, and a general events table.
    "CREATE TABLE runs (
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
    // 2: command events carry their statement, the rule that decided, and the result.
    "ALTER TABLE events ADD COLUMN statement TEXT;
    ALTER TABLE events ADD COLUMN rule TEXT;
    ALTER TABLE events ADD COLUMN result TEXT;",
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
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(open_err)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(open_err)?;
    }
    tx.commit().map_err(open_err)
}
