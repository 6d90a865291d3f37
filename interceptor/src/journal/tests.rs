use super::*;
use crate::journal::reader::{list_sessions, open_read_only, SessionFilter};

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
async fn a_session_is_readable_once_open_session_returns() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path).expect("open");
    let id = journal
        .open_session(session("r1", "127.0.0.2:7"))
        .await
        .expect("open session");
    // Committed: a separate read-only connection sees it before the session is closed.
    let conn = open_read_only(&path).expect("reader");
    let rows = list_sessions(&conn, &SessionFilter::default()).expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, id);
    assert_eq!(rows[0].ended_at, None);

    journal
        .close_session(id, 10, 20, Outcome::Closed, None)
        .await
        .expect("close");
    let rows = list_sessions(&conn, &SessionFilter::default()).expect("list");
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

#[tokio::test]
async fn an_unwritable_journal_reports_errors_instead_of_pretending() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path).expect("open");
    // Break the schema underneath the writer: every write must now fail loudly.
    let conn = open_connection(&path).expect("side connection");
    conn.execute_batch("DROP TABLE events; DROP TABLE sessions")
        .expect("drop");
    assert!(journal
        .open_session(session("r", "127.0.0.2:7"))
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
        if rows[1].outcome.as_deref() == Some("error") {
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
