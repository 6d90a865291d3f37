use super::*;
use crate::journal::{event_hash, GENESIS_HASH};

fn genesis() -> Result<Head, String> {
    Ok(Head {
        next_seq: 1,
        last_hash: GENESIS_HASH.to_owned(),
    })
}

fn note(n: i64) -> NewEvent<'static> {
    NewEvent {
        session_id: None,
        kind: "note",
        statement: Some("SELECT 'é'"),
        decision: None,
        rule: None,
        detail: format!("{{\"n\":{n}}}"),
        hint: IndexHint::None,
    }
}

fn events(dir: &Path) -> Vec<LoggedEvent> {
    let mut out = Vec::new();
    for number in list(dir).expect("list") {
        let scan = read_segment(&segment_path(dir, number)).expect("read");
        assert_eq!(scan.problem, None, "segment {number}");
        for (record, _) in scan.records {
            if let Record::Event(e) = record {
                out.push(*e);
            }
        }
    }
    out
}

/// Every event links to the one before, with contiguous sequence numbers, and its hash is
/// `event_hash` of its content.
fn assert_chain(events: &[LoggedEvent]) {
    let mut prev = GENESIS_HASH.to_owned();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as i64 + 1);
        assert_eq!(e.prev_hash, prev, "seq {}", e.seq);
        assert_eq!(event_hash(&e.prev_hash, &e.content()), e.hash);
        prev = e.hash.clone();
    }
}

#[test]
fn records_round_trip_through_frames() {
    let records = [
        Record::Start(Head {
            next_seq: 7,
            last_hash: "ab".to_owned(),
        }),
        Record::Event(Box::new(LoggedEvent {
            seq: 7,
            session_id: Some(3),
            at: "2026-01-01T00:00:00.000Z".to_owned(),
            kind: "statement".to_owned(),
            statement: Some("SELECT 1".to_owned()),
            decision: None,
            rule: Some("r".to_owned()),
            detail: "{}".to_owned(),
            prev_hash: "ab".to_owned(),
            hash: "cd".to_owned(),
            hint: IndexHint::SessionOpen {
                cgroup_id: 9,
                process_start_ns: None,
                stale: true,
            },
        })),
        Record::Run(RunChange::Start {
            id: "run".to_owned(),
            mode: "exec".to_owned(),
            command: None,
            uid: Some(1000),
            user: None,
            cgroup_path: "/x".to_owned(),
            at: "t".to_owned(),
        }),
        Record::Run(RunChange::End {
            id: "run".to_owned(),
            exit_code: Some(-1),
            at: "t".to_owned(),
        }),
        Record::Seal(Head {
            next_seq: 8,
            last_hash: "cd".to_owned(),
        }),
    ];
    let mut bytes = Vec::new();
    for r in &records {
        r.frame(&mut bytes);
    }
    let scan = scan(&bytes, 0);
    assert_eq!(scan.problem, None);
    let decoded: Vec<Record> = scan.records.into_iter().map(|(r, _)| r).collect();
    assert_eq!(decoded, records);
    // Any cut or flipped byte is a clear error at that frame, never a panic.
    for cut in 0..bytes.len() {
        let s = super::scan(&bytes[..cut], 0);
        assert!(s.records.len() < records.len());
        let mut flipped = bytes.clone();
        flipped[cut] ^= 0x5a;
        let s = super::scan(&flipped, 0);
        assert!(s.problem.is_some(), "byte {cut}");
    }
}

#[test]
fn a_torn_tail_is_cut_off_by_the_next_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = SegmentLog::open(dir.path(), JournalSync::Normal, genesis).expect("open");
    for n in 0..3 {
        log.append(|g| g.event(note(n))).expect("append");
    }
    // A process died in the middle of its write: half a frame at the end.
    let path = segment_path(dir.path(), 1);
    let mut frame = Vec::new();
    Record::Seal(Head {
        next_seq: 99,
        last_hash: "x".to_owned(),
    })
    .frame(&mut frame);
    let mut file = OpenOptions::new().append(true).open(&path).expect("open");
    std::io::Write::write_all(&mut file, &frame[..frame.len() / 2]).expect("torn");
    // Another writer (a second open) appends: it cuts the tail and continues the chain.
    let mut other = SegmentLog::open(dir.path(), JournalSync::Normal, genesis).expect("reopen");
    let (seq, _) = other.append(|g| g.event(note(3))).expect("append");
    assert_eq!(seq, 4);
    // And the first writer, whose view is stale, follows.
    let (seq, _) = log.append(|g| g.event(note(4))).expect("append");
    assert_eq!(seq, 5);
    assert_chain(&events(dir.path()));
}

#[test]
fn writers_sharing_a_log_keep_one_chain_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = SegmentLog::open(dir.path(), JournalSync::Normal, genesis).expect("a");
    let mut b = SegmentLog::open(dir.path(), JournalSync::Full, genesis).expect("b");
    a.set_segment_bytes(2_000);
    b.set_segment_bytes(3_000);
    for n in 0..100 {
        let log = if n % 3 == 0 { &mut a } else { &mut b };
        log.append(|g| {
            g.event(note(n));
            g.event(note(n));
        })
        .expect("append");
    }
    let numbers = list(dir.path()).expect("list");
    assert!(numbers.len() > 5, "{numbers:?}");
    let all = events(dir.path());
    assert_eq!(all.len(), 200);
    assert_chain(&all);
}

#[test]
fn a_corrupt_segment_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(segment_path(dir.path(), 1), b"not a journal segment at all").expect("write");
    match SegmentLog::open(dir.path(), JournalSync::Normal, genesis) {
        Err(SegmentError::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
}
