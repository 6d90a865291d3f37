use super::*;
use crate::journal::{
    reader::{list_sessions, open_read_only, SessionFilter},
    verify::{verify_file, Problem, VerifyReport},
};

fn temp_journal() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    (dir, path)
}

fn session(run: &str, dst: &str) -> NewSession {
    NewSession {
        run_id: Some(run.to_owned()),
        identity: Identity {
            pid: 42,
            uid: 1000,
            gid: 1000,
            user: Some("agent".to_owned()),
            comm: "python3".to_owned(),
            exe: Some("/usr/bin/python3".to_owned()),
            ..Identity::default()
        },
        client_addr: "127.0.0.1:40000".to_owned(),
        original_dst: dst.to_owned(),
        target: None,
        protocol: "tcp".to_owned(),
        upstream: Some(dst.to_owned()),
        decision: None,
        rule: None,
    }
}

#[tokio::test]
async fn a_session_is_readable_once_indexed() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path).expect("open");
    let id = journal
        .open_session(session("r1", "127.0.0.2:7"))
        .await
        .expect("open session");
    // In the log once `open_session` returns; in the index (what readers see) once flushed,
    // or a moment later anyway.
    journal.flush().await.expect("flush");
    let conn = open_read_only(&path).expect("reader");
    let rows = list_sessions(&conn, &SessionFilter::default()).expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, id);
    assert_eq!(rows[0].ended_at, None);

    journal
        .close_session(id, 10, 20, Outcome::Closed, None)
        .await
        .expect("close");
    let rows = wait_for(&conn, |rows| rows[0].outcome.is_some());
    assert_eq!((rows[0].bytes_up, rows[0].bytes_down), (10, 20));
    assert_eq!(rows[0].outcome.as_deref(), Some("closed"));
}

#[tokio::test]
async fn concurrent_writers_share_commits_and_lose_nothing() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path).expect("open");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            journal
                .open_session(session(
                    if i % 2 == 0 { "even" } else { "odd" },
                    "127.0.0.2:7",
                ))
                .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("open session");
    }
    journal.flush().await.expect("flush");
    let conn = open_read_only(&path).expect("reader");
    let all = list_sessions(&conn, &SessionFilter::default()).expect("list");
    assert_eq!(all.len(), 200);
    let even = list_sessions(
        &conn,
        &SessionFilter {
            run: Some("even".to_owned()),
            ..SessionFilter::default()
        },
    )
    .expect("list");
    assert_eq!(even.len(), 100);
}

#[test]
fn reopening_keeps_data_and_refuses_newer_schema() {
    let (_dir, path) = temp_journal();
    drop(open_connection(&path).expect("first open"));
    let conn = open_connection(&path).expect("second open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, schema::CURRENT_VERSION);
    conn.pragma_update(None, "user_version", 999).expect("bump");
    drop(conn);
    match open_connection(&path) {
        Err(JournalError::TooNew { found: 999, .. }) => {}
        other => panic!("expected TooNew, got {:?}", other.err()),
    }
}

/// The sessions a reader sees once `done` holds (within 5 s).
fn wait_for(
    conn: &Connection,
    done: impl Fn(&[reader::SessionRow]) -> bool,
) -> Vec<reader::SessionRow> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let rows = list_sessions(conn, &SessionFilter::default()).expect("list");
        if done(&rows) || std::time::Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[tokio::test]
async fn an_unwritable_journal_reports_errors_instead_of_pretending() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path).expect("open");
    journal
        .event(Event::note(None, "note", serde_json::json!({})))
        .await
        .expect("first");
    // Another writer seals the segment, and the next one is a device where every write fails
    // with ENOSPC: the next group cannot be written, and its callers are told.
    let dir = segments_dir(&path);
    let scan = segment::read_segment(&segment::segment_path(&dir, 1)).expect("scan");
    let head = match scan.records.last() {
        Some((segment::Record::Event(e), _)) => segment::Head {
            next_seq: e.seq + 1,
            last_hash: e.hash.clone(),
        },
        other => panic!("not an event: {other:?}"),
    };
    let mut seal = Vec::new();
    segment::Record::Seal(head).frame(&mut seal);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(segment::segment_path(&dir, 1))
        .expect("segment");
    std::io::Write::write_all(&mut file, &seal).expect("seal");
    std::os::unix::fs::symlink("/dev/full", segment::segment_path(&dir, 2)).expect("symlink");
    let refused = journal.open_session(session("r", "127.0.0.2:7")).await;
    assert!(
        matches!(&refused, Err(JournalError::Write(m)) if m.contains("No space")),
        "{refused:?}"
    );
    assert!(journal
        .event(Event::note(None, "note", serde_json::json!({})))
        .await
        .is_err());
}

#[tokio::test]
async fn queued_closes_are_committed_by_flush_or_in_the_background() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path).expect("open");
    let conn = open_read_only(&path).expect("reader");
    let a = journal
        .open_session(session("r", "127.0.0.2:7"))
        .await
        .expect("a");
    journal.record_close(a, 1, 2, Outcome::Closed, None);
    journal.flush().await.expect("flush");
    let rows = list_sessions(&conn, &SessionFilter::default()).expect("list");
    assert_eq!(rows[0].outcome.as_deref(), Some("closed"));

    // Nobody commits after this close: the background thread must.
    let b = journal
        .open_session(session("r", "127.0.0.2:7"))
        .await
        .expect("b");
    journal.record_close(b, 3, 4, Outcome::Error, Some("reset".to_owned()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let rows = list_sessions(&conn, &SessionFilter::default()).expect("list");
        if rows.get(1).and_then(|r| r.outcome.as_deref()) == Some("error") {
            assert_eq!((rows[1].bytes_up, rows[1].bytes_down), (3, 4));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queued close never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The hash chain, verify and prune
// ---------------------------------------------------------------------------------------------

fn command(session_id: i64, sql: &str) -> Event {
    Event {
        session_id: Some(session_id),
        kind: "statement",
        statement: Some(sql.to_owned()),
        decision: Some("allow".to_owned()),
        rule: Some("reads".to_owned()),
        detail: serde_json::json!({"command": "query", "params": 0}),
    }
}

/// A journal with one finished session: open (with a connect decision), three statements with
/// results, a note, and the close. Returns the journal and the statements' ids.
async fn recorded_session(path: &Path) -> (Journal, Vec<i64>) {
    let journal = Journal::open(path).expect("open");
    let mut new = session("r1", "127.0.0.2:5432");
    new.decision = Some("allow".to_owned());
    new.rule = Some("connect".to_owned());
    let sid = journal.open_session(new).await.expect("open session");
    let ids = journal
        .events(vec![
            command(sid, "SELECT 1"),
            command(sid, "SELECT 2"),
            command(sid, "SELECT 'é\n\"quoted\"'"),
        ])
        .await
        .expect("events");
    for (n, id) in ids.iter().enumerate() {
        journal.record_result(
            Some(sid),
            *id,
            serde_json::json!({"tag": "SELECT 1", "rows": n}),
        );
    }
    journal.record_event(Event::note(
        Some(sid),
        "auth",
        serde_json::json!({"user": "agent"}),
    ));
    journal.record_close(sid, 10, 20, Outcome::Closed, None);
    journal.flush().await.expect("flush");
    (journal, ids)
}

fn side_connection(path: &Path) -> Connection {
    let conn = open_connection(path).expect("side connection");
    // As in the sqlite3 shell.
    conn.pragma_update(None, "foreign_keys", "OFF")
        .expect("foreign keys off");
    conn
}

fn verify(path: &Path) -> VerifyReport {
    verify_file(path).expect("verify")
}

fn kinds(path: &Path) -> Vec<String> {
    let conn = side_connection(path);
    let mut stmt = conn
        .prepare("SELECT kind FROM events ORDER BY id")
        .expect("prepare");
    let rows = stmt.query_map([], |r| r.get(0)).expect("query");
    rows.collect::<Result<_, _>>().expect("kinds")
}

fn first_finding(report: &VerifyReport) -> (Option<i64>, Problem, String) {
    let f = report
        .findings
        .first()
        .unwrap_or_else(|| panic!("no finding: {report}"));
    (f.seq, f.problem, f.to_string())
}

#[tokio::test]
async fn every_event_links_to_the_one_before_in_the_documented_format() {
    let (_dir, path) = temp_journal();
    let (_journal, _) = recorded_session(&path).await;
    assert_eq!(
        kinds(&path),
        [
            "session_open",
            "connect",
            "statement",
            "statement",
            "statement",
            "result",
            "result",
            "result",
            "auth",
            "session_close"
        ]
    );
    let report = verify(&path);
    assert!(report.ok, "{report}");
    assert_eq!((report.events, report.last_seq), (10, Some(10)));
    assert_eq!(report.first_seq, Some(1));

    // Recomputed here without the writer's code, as docs/journal.md tells an auditor to.
    let conn = side_connection(&path);
    let mut stmt = conn
        .prepare(
            "SELECT id, session_id, at, kind, statement, decision, rule, detail, prev_hash, hash
               FROM events ORDER BY id",
        )
        .expect("prepare");
    let mut rows = stmt.query([]).expect("query");
    let mut prev = GENESIS_HASH.to_owned();
    while let Some(row) = rows.next().expect("row") {
        let canonical = serde_json::json!([
            row.get::<_, i64>(0).expect("id"),
            row.get::<_, Option<i64>>(1).expect("session"),
            row.get::<_, String>(2).expect("at"),
            row.get::<_, String>(3).expect("kind"),
            row.get::<_, Option<String>>(4).expect("statement"),
            row.get::<_, Option<String>>(5).expect("decision"),
            row.get::<_, Option<String>>(6).expect("rule"),
            row.get::<_, String>(7).expect("detail"),
        ])
        .to_string();
        let stored_prev: String = row.get(8).expect("prev");
        let stored: String = row.get(9).expect("hash");
        assert_eq!(stored_prev, prev);
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{prev}{canonical}").as_bytes(),
        );
        assert_eq!(stored, hex(digest.as_ref()));
        prev = stored;
    }
    assert_eq!(report.last_hash.as_deref(), Some(prev.as_str()));
}

#[tokio::test]
async fn verify_names_an_edited_event() {
    let (_dir, path) = temp_journal();
    let (_journal, ids) = recorded_session(&path).await;
    side_connection(&path)
        .execute(
            "UPDATE events SET statement = 'SELECT 42' WHERE id = ?1",
            [ids[1]],
        )
        .expect("edit");
    let report = verify(&path);
    assert!(!report.ok);
    let (seq, problem, line) = first_finding(&report);
    assert_eq!((seq, problem), (Some(ids[1]), Problem::Edited), "{report}");
    assert!(
        line.starts_with(&format!("seq {} (statement): content edited", ids[1])),
        "{line}"
    );
    // Only that event: the next one still links to its stored hash.
    assert_eq!(report.findings.len(), 1, "{report}");
}

#[tokio::test]
async fn verify_names_deleted_events_at_the_start_middle_and_end() {
    for (what, victim) in [("first", 1), ("middle", 4), ("last", 10)] {
        let (_dir, path) = temp_journal();
        let _ = recorded_session(&path).await;
        side_connection(&path)
            .execute("DELETE FROM events WHERE id = ?1", [victim])
            .expect("delete");
        let report = verify(&path);
        let (seq, problem, line) = first_finding(&report);
        assert_eq!(problem, Problem::Deleted, "{what}: {report}");
        assert!(
            line.contains(&format!("event {victim} is missing")),
            "{what}: {line}"
        );
        assert_eq!(
            seq,
            Some(if victim == 10 { 10 } else { victim + 1 }),
            "{what}"
        );
    }
}

#[tokio::test]
async fn verify_names_reordered_events() {
    let (_dir, path) = temp_journal();
    let (_journal, ids) = recorded_session(&path).await;
    let (a, b) = (ids[0], ids[2]);
    side_connection(&path)
        .execute_batch(&format!(
            "UPDATE events SET id = -1 WHERE id = {a};
             UPDATE events SET id = {a} WHERE id = {b};
             UPDATE events SET id = {b} WHERE id = -1;"
        ))
        .expect("swap");
    let report = verify(&path);
    let (seq, problem, line) = first_finding(&report);
    assert_eq!((seq, problem), (Some(a), Problem::Reordered), "{report}");
    assert!(line.contains("moved"), "{line}");
}

#[tokio::test]
async fn verify_catches_a_result_column_changed_around_the_chain() {
    let (_dir, path) = temp_journal();
    let (_journal, ids) = recorded_session(&path).await;
    let conn = side_connection(&path);
    conn.execute(
        "UPDATE events SET result = '{\"tag\":\"SELECT 0\",\"rows\":0}' WHERE id = ?1",
        [ids[0]],
    )
    .expect("edit result");
    conn.execute("UPDATE events SET result = NULL WHERE id = ?1", [ids[2]])
        .expect("clear result");
    let report = verify(&path);
    let found: Vec<_> = report.findings.iter().map(|f| (f.seq, f.problem)).collect();
    assert_eq!(
        found,
        [
            (Some(ids[0]), Problem::ResultChanged),
            (Some(ids[2]), Problem::ResultChanged)
        ],
        "{report}"
    );
    // The chain itself is intact: the column is outside it.
    assert_eq!(report.events, 10);
}

#[tokio::test]
async fn verify_catches_session_rows_changed_around_the_chain() {
    let (_dir, path) = temp_journal();
    let _ = recorded_session(&path).await;
    let conn = side_connection(&path);
    conn.execute("UPDATE sessions SET user = 'root', bytes_up = 1", [])
        .expect("edit session");
    let report = verify(&path);
    let lines: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(lines.len(), 2, "{report}");
    assert!(
        lines[0].starts_with("session 1: session changed"),
        "{lines:?}"
    );
    assert!(
        lines[0].contains("user: \"root\" in the row, \"agent\" in the chain"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("bytes_up: 1 in the row, 10 in the chain"),
        "{lines:?}"
    );

    conn.execute("DELETE FROM sessions", [])
        .expect("delete session");
    let report = verify(&path);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.problem == Problem::SessionChanged && f.message.contains("was deleted")),
        "{report}"
    );
}

#[tokio::test]
async fn two_handles_on_one_file_keep_one_chain() {
    // Several `exec` runs may share a journal: each reads the head inside its transaction.
    let (_dir, path) = temp_journal();
    let a = Journal::open(&path).expect("a");
    let b = Journal::open(&path).expect("b");
    assert_eq!(a.id(), b.id());
    for round in 0..20 {
        let (one, other) = if round % 3 == 0 { (&a, &b) } else { (&b, &a) };
        let (x, y) = tokio::join!(
            one.event(Event::note(
                None,
                "note",
                serde_json::json!({"round": round})
            )),
            other.events(vec![
                Event::note(None, "note", serde_json::json!({"n": 1})),
                Event::note(None, "note", serde_json::json!({"n": 2})),
            ]),
        );
        x.expect("x");
        y.expect("y");
    }
    a.flush().await.expect("flush");
    b.flush().await.expect("flush");
    let report = verify(&path);
    assert!(report.ok, "{report}");
    assert_eq!(report.events, 60);
}

#[tokio::test]
async fn what_the_index_cannot_take_is_kept_by_the_log_and_named_by_verify() {
    // The log cannot check references when it appends (it has no tables): a record naming a
    // session that does not exist is recorded and chained like any other, and the index
    // takes it too (without the foreign key). The gateway never writes one.
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path).expect("open");
    journal
        .event(Event::note(Some(12345), "note", serde_json::json!({})))
        .await
        .expect("recorded");
    journal.record_result(None, 999, serde_json::json!({"tag": "SELECT 1"}));
    journal
        .event(Event::note(None, "note", serde_json::json!({})))
        .await
        .expect("after");
    journal.flush().await.expect("flush");
    let report = verify(&path);
    assert_eq!((report.events, report.last_seq), (3, Some(3)), "{report}");
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.problem == Problem::SessionChanged),
        "{report}"
    );
    // Another process's table edit that makes the index refuse a record (here: a unique
    // index the events cannot satisfy) does not stop the indexer: the record is skipped,
    // the rest indexed, and verify says what the index lacks.
    side_connection(&path)
        .execute_batch("CREATE UNIQUE INDEX one_boom ON events(kind) WHERE kind = 'boom'")
        .expect("index");
    for _ in 0..2 {
        journal
            .event(Event::note(None, "boom", serde_json::json!({})))
            .await
            .expect("in the log");
    }
    journal
        .event(Event::note(None, "other", serde_json::json!({})))
        .await
        .expect("in the log");
    journal.flush().await.expect("flush");
    let report = verify(&path);
    assert_eq!(report.last_seq, Some(6), "{report}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.problem == Problem::Log && f.seq == Some(5)),
        "{report}"
    );
}

#[tokio::test]
async fn an_old_journal_is_chained_by_the_migration() {
    let (_dir, path) = temp_journal();
    {
        let conn = Connection::open(&path).expect("create");
        schema::create_version(&conn, 2).expect("version 2");
        conn.execute_batch(
            "INSERT INTO sessions (id, run_id, pid, uid, gid, user, comm, cgroup_id, client_addr,
               original_dst, protocol, started_at, ended_at, outcome, bytes_up, bytes_down)
             VALUES (1, 'r', 7, 1000, 1000, 'agent', 'psql', 9, '127.0.0.1:1', '127.0.0.2:5432',
               'postgres', '2025-01-01T00:00:00.000Z', '2025-01-01T00:01:00.000Z', 'closed', 5, 6),
                    (2, 'r', 8, 1000, 1000, 'agent', 'psql', 9, '127.0.0.1:2', '127.0.0.2:5432',
               'postgres', '2025-01-01T00:02:00.000Z', NULL, NULL, 0, 0);
             INSERT INTO events (session_id, at, kind, decision, rule, detail)
               VALUES (1, '2025-01-01T00:00:00.000Z', 'connect', 'allow', 'c', '{}');
             INSERT INTO events (session_id, at, kind, statement, decision, detail, result)
               VALUES (1, '2025-01-01T00:00:01.000Z', 'statement', 'SELECT 1', 'allow', '{}',
                       '{\"tag\":\"SELECT 1\"}');",
        )
        .expect("legacy rows");
    }
    let journal = Journal::open(&path).expect("migrate");
    let report = verify(&path);
    assert!(report.ok, "{report}");
    assert_eq!(report.chain_migrated_seq, Some(2));
    assert_eq!(
        kinds(&path),
        [
            "connect",
            "statement",
            "session_open",
            "session_close",
            "session_open",
            "result"
        ]
    );
    // The open session's end, recorded later, is chained like any other.
    journal
        .close_session(2, 1, 2, Outcome::Closed, None)
        .await
        .expect("close");
    let report = verify(&path);
    assert!(report.ok, "{report}");
    let id = journal.id().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    drop(journal);
    assert_eq!(Journal::open(&path).expect("reopen").id(), id);
}

#[test]
fn the_sync_setting_reaches_sqlite() {
    let (_dir, path) = temp_journal();
    for (sync, expected) in [(JournalSync::Normal, 1), (JournalSync::Full, 2)] {
        let conn = open_connection_with(&path, sync).expect("open");
        let level: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(level, expected);
    }
}

/// Prunes the journal at `path` as `journal prune` does, with a cutoff.
fn prune_at(path: &Path, cutoff: &str, sinks: &[String]) -> Result<PruneReport, JournalError> {
    let mut conn = open_connection(path)?;
    let mut log = open_log(path, JournalSync::Normal, &conn)?;
    prune_before(&mut log, &mut conn, cutoff, sinks)
}

/// A cutoff between what was written so far and what comes next.
async fn cutoff_now() -> String {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff = now_rfc3339();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    cutoff
}

#[tokio::test]
async fn prune_deletes_a_prefix_and_the_rest_still_verifies() {
    let (_dir, path) = temp_journal();
    let (journal, _) = recorded_session(&path).await;
    // A session still open across the cutoff keeps its row; its old events may go.
    let open = journal
        .open_session(session("r2", "127.0.0.2:7"))
        .await
        .expect("open");
    let cutoff = cutoff_now().await;
    journal
        .event(Event::note(
            Some(open),
            "note",
            serde_json::json!({"late": true}),
        ))
        .await
        .expect("late");

    let report = prune_at(&path, &cutoff, &[]).expect("prune");
    assert_eq!(
        (
            report.last_seq,
            report.events,
            report.sessions,
            report.broken.clone()
        ),
        (Some(11), 11, 1, None),
        "{report}"
    );
    let verified = verify(&path);
    assert!(verified.ok, "{verified}");
    assert_eq!(verified.first_seq, Some(12));
    assert_eq!(verified.checkpoint.as_ref().map(|c| c.last_seq), Some(11));
    assert_eq!(kinds(&path), ["note", "prune"]);

    // Writing goes on from the checkpoint, and a second prune of everything leaves only
    // its own record.
    journal.record_close(open, 1, 1, Outcome::Closed, None);
    journal.flush().await.expect("flush");
    assert!(verify(&path).ok);
    let cutoff = cutoff_now().await;
    let report = prune_at(&path, &cutoff, &[]).expect("prune again");
    assert_eq!((report.events, report.sessions), (3, 1), "{report}");
    let verified = verify(&path);
    assert!(verified.ok, "{verified}");
    assert_eq!(kinds(&path), ["prune"]);
    journal
        .event(Event::note(None, "note", serde_json::json!({})))
        .await
        .expect("after");
    assert!(verify(&path).ok);

    // Nothing older than a cutoff before everything: nothing happens.
    let report = prune_at(&path, "2000-01-01", &[]).expect("nothing");
    assert_eq!(report.last_seq, None);
}

#[tokio::test]
async fn a_forged_checkpoint_or_a_pruned_broken_part_is_reported() {
    let (_dir, path) = temp_journal();
    let (_journal, ids) = recorded_session(&path).await;
    let conn = side_connection(&path);
    // Someone deletes the first events and writes a checkpoint to cover it.
    conn.execute_batch(
        "INSERT INTO journal_checkpoints (at, cutoff, last_seq, last_hash, events_deleted,
           sessions_deleted, runs_deleted)
         SELECT '2026-01-01', '2026-01-01', id, hash, 3, 0, 0 FROM events WHERE id = 3;
         DELETE FROM events WHERE id <= 3;",
    )
    .expect("forge");
    let report = verify(&path);
    let (seq, problem, _) = first_finding(&report);
    assert_eq!((seq, problem), (Some(3), Problem::Checkpoint), "{report}");
    conn.execute("DELETE FROM journal_checkpoints", [])
        .expect("undo");

    // A real prune over an edited event keeps saying so once the event is gone.
    let (_dir, path) = temp_journal();
    let _ = recorded_session(&path).await;
    side_connection(&path)
        .execute(
            "UPDATE events SET statement = 'DROP TABLE x' WHERE id = ?1",
            [ids[0]],
        )
        .expect("edit");
    let report = prune_at(&path, &cutoff_now().await, &[]).expect("prune");
    assert!(
        report
            .broken
            .as_deref()
            .is_some_and(|b| b.contains("content edited")),
        "{report}"
    );
    let verified = verify(&path);
    assert!(!verified.ok);
    let (_, problem, line) = first_finding(&verified);
    assert_eq!(problem, Problem::Checkpoint, "{verified}");
    assert!(line.contains("did not verify"), "{line}");
}

#[tokio::test]
async fn prune_keeps_what_a_sink_has_not_acknowledged() {
    let (_dir, path) = temp_journal();
    let _ = recorded_session(&path).await;
    let cutoff = cutoff_now().await;
    let conn = open_connection(&path).expect("conn");
    conn.execute(
        "INSERT INTO sink_cursors (name, acked_seq) VALUES ('siem', 4)",
        [],
    )
    .expect("cursor");
    let sinks = ["siem".to_owned(), "never-shipped".to_owned()];
    let report = prune_at(&path, &cutoff, &sinks).expect("prune");
    assert_eq!(report.last_seq, None, "{report}");
    assert_eq!(report.held_back_by.as_deref(), Some("never-shipped"));

    let report = prune_at(&path, &cutoff, &sinks[..1]).expect("prune");
    assert_eq!((report.last_seq, report.events), (Some(4), 4), "{report}");
    assert_eq!(report.held_back_by.as_deref(), Some("siem"));
    assert!(verify(&path).ok);
}

#[test]
fn long_statements_are_kept_as_a_prefix_with_length_and_hash() {
    let long = format!("SELECT '{}é'", "x".repeat(300));
    let mut event = Event {
        statement: Some(long.clone()),
        ..Event::note(None, "statement", serde_json::json!({"command": "query"}))
    };
    // 309 bytes: a cut at 309 would split the two-byte 'é' (bytes 308..310).
    clip_statement(&mut event, 309);
    let kept = event.statement.as_deref().unwrap_or_default();
    assert_eq!(kept.len(), 308);
    assert!(long.starts_with(kept));
    assert_eq!(event.detail["command"], "query");
    assert_eq!(event.detail["statement_truncated"], true);
    assert_eq!(event.detail["statement_bytes"], long.len());
    let digest = ring::digest::digest(&ring::digest::SHA256, long.as_bytes());
    assert_eq!(event.detail["statement_sha256"], hex(digest.as_ref()));
    // Short ones are untouched.
    let mut short = Event {
        statement: Some("SELECT 1".to_owned()),
        ..Event::note(None, "statement", serde_json::json!({}))
    };
    clip_statement(&mut short, 309);
    assert_eq!(short.statement.as_deref(), Some("SELECT 1"));
    assert!(short.detail.get("statement_truncated").is_none());
}

// ---------------------------------------------------------------------------------------------
// The segment log and its index
// ---------------------------------------------------------------------------------------------

/// Appends `n` notes straight to the log at `path`, as a process that died before its indexer
/// ran would leave them.
fn append_unindexed(path: &Path, n: usize) {
    let conn = open_connection(path).expect("conn");
    let mut log = open_log(path, JournalSync::Normal, &conn).expect("log");
    for i in 0..n {
        log.append(|g| {
            g.event(segment::NewEvent {
                session_id: None,
                kind: "note",
                statement: None,
                decision: None,
                rule: None,
                detail: format!("{{\"i\":{i}}}"),
                hint: segment::IndexHint::None,
            })
        })
        .expect("append");
    }
}

fn count_events(path: &Path) -> i64 {
    side_connection(path)
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count")
}

#[tokio::test]
async fn what_was_appended_but_not_indexed_is_indexed_at_open() {
    let (_dir, path) = temp_journal();
    let (journal, _) = recorded_session(&path).await;
    drop(journal);
    append_unindexed(&path, 25);
    assert_eq!(count_events(&path), 10);
    let journal = Journal::open(&path).expect("reopen");
    // Before any write or flush: opening indexed everything.
    assert_eq!(count_events(&path), 35);
    let report = verify(&path);
    assert!(report.ok, "{report}");
    assert_eq!(report.log.as_ref().map(|l| l.indexed_seq), Some(35));
    let id = journal
        .event(Event::note(None, "note", serde_json::json!({})))
        .await
        .expect("continues");
    assert_eq!(id, 36);
}

#[tokio::test]
async fn verify_compares_the_index_with_the_log() {
    let (_dir, path) = temp_journal();
    let (_journal, ids) = recorded_session(&path).await;
    // A rewrite of the index's tail with every hash recomputed chains perfectly in the
    // database alone; the log still has what was recorded.
    let conn = side_connection(&path);
    let scan = segment::read_segment(&segment::segment_path(&segments_dir(&path), 1))
        .expect("read the log");
    let mut prev: Option<String> = None;
    for (record, _) in scan.records {
        let segment::Record::Event(mut e) = record else {
            continue;
        };
        if e.seq < ids[0] {
            continue;
        }
        if e.seq == ids[0] {
            e.statement = Some("SELECT harmless".to_owned());
        }
        let prev_hash = prev.take().unwrap_or(e.prev_hash.clone());
        let hash = event_hash(&prev_hash, &e.content());
        conn.execute(
            "UPDATE events SET statement = ?2, prev_hash = ?3, hash = ?4 WHERE id = ?1",
            rusqlite::params![e.seq, e.statement, prev_hash, hash],
        )
        .expect("rewrite");
        prev = Some(hash);
    }
    let report = verify(&path);
    let (seq, problem, line) = first_finding(&report);
    assert_eq!((seq, problem), (Some(ids[0]), Problem::Log), "{report}");
    assert!(line.contains("another event"), "{line}");
}

#[tokio::test]
async fn reindex_rebuilds_the_index_from_the_log() {
    let (_dir, path) = temp_journal();
    let (journal, _) = recorded_session(&path).await;
    drop(journal);
    let before = kinds(&path);
    side_connection(&path)
        .execute_batch("DELETE FROM events WHERE id > 4; DELETE FROM sessions; UPDATE events SET result = NULL")
        .expect("damage");
    assert!(!verify(&path).ok);
    let report = reindex_file(&JournalConfig {
        path: path.clone(),
        ..JournalConfig::default()
    })
    .expect("reindex");
    assert_eq!(
        (report.events, report.sessions, report.indexed_seq),
        (10, 1, 10),
        "{report}"
    );
    assert_eq!(kinds(&path), before);
    let verified = verify(&path);
    assert!(verified.ok, "{verified}");
}

#[tokio::test]
async fn prune_deletes_segments_wholly_before_the_checkpoint() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path).expect("open");
    lock(&journal.inner.log).set_segment_bytes(1_000);
    for n in 0..40 {
        journal
            .event(Event::note(None, "note", serde_json::json!({"n": n})))
            .await
            .expect("event");
    }
    let cutoff = cutoff_now().await;
    journal
        .event(Event::note(None, "late", serde_json::json!({})))
        .await
        .expect("late");
    let dir = segments_dir(&path);
    let before = segment::list(&dir).expect("list");
    assert!(before.len() > 4, "{before:?}");
    let report = prune_at(&path, &cutoff, &[]).expect("prune");
    assert_eq!(report.last_seq, Some(40), "{report}");
    let after = segment::list(&dir).expect("list");
    assert!(after.len() <= 2, "{after:?}");
    assert_eq!(after.last(), before.last());
    journal
        .event(Event::note(None, "after", serde_json::json!({})))
        .await
        .expect("after");
    journal.flush().await.expect("flush");
    let verified = verify(&path);
    assert!(verified.ok, "{verified}");
    assert_eq!(kinds(&path), ["late", "prune", "after"]);
    // Rebuilt from what is left of the log, the index is the same.
    reindex_file(&JournalConfig {
        path: path.clone(),
        ..JournalConfig::default()
    })
    .expect("reindex");
    assert_eq!(kinds(&path), ["late", "prune", "after"]);
    assert!(verify(&path).ok);
}
