use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::*;
use crate::{
    capture::identity::Identity,
    config::Config,
    journal::{Event, Journal, NewSession},
};

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
}

fn sinks(text: &str) -> Vec<SinkConfig> {
    parse(text).unwrap_or_else(|e| panic!("{e}")).sinks
}

#[test]
fn the_three_sink_types_parse_with_their_defaults() {
    let s = sinks(
        r#"
[[sink]]
name = "local"
type = "file"
path = "/var/log/interceptor/events.ndjson"

[[sink]]
name = "siem"
type = "syslog"
address = "127.0.0.1:6514"
tls = true
ca_file = "/etc/interceptor/siem-ca.pem"
facility = "authpriv"

[[sink]]
name = "splunk"
type = "splunk_hec"
url = "https://splunk.example:8088/"
token_file = "/etc/interceptor/hec.token"
batch_size = 100
"#,
    );
    assert_eq!(s.len(), 3);
    assert_eq!(
        s[0].kind,
        SinkKind::File(config::FileSink {
            path: "/var/log/interceptor/events.ndjson".into(),
            max_bytes: 100 << 20,
            keep: 5,
        })
    );
    assert_eq!(s[0].batch_size, config::DEFAULT_BATCH);
    match &s[1].kind {
        SinkKind::Syslog(c) => {
            assert_eq!(c.facility, 10);
            assert_eq!(
                c.tls.as_ref().and_then(|t| t.ca_file.clone()),
                Some(PathBuf::from("/etc/interceptor/siem-ca.pem"))
            );
        }
        other => panic!("{other:?}"),
    }
    match &s[2].kind {
        SinkKind::SplunkHec(c) => assert_eq!(c.url, "https://splunk.example:8088"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s[2].batch_size, 100);
}

#[test]
fn sink_errors_name_the_sink_and_the_line() {
    let cases = [
        // An unknown key anywhere: the parser's own error, with its position.
        (
            "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\nmax_size = 1\n",
            "unknown field `max_size`",
        ),
        (
            "[[sink]]\nname = \"a\"\ntype = \"syslog\"\naddress = \"h:514\"\nkeep = 3\n",
            "sink \"a\": keep does not apply to type \"syslog\"",
        ),
        (
            "[[sink]]\nname = \"hec\"\ntype = \"splunk_hec\"\nurl = \"http://h:8088\"\ntoken = \"abc\"\n",
            "sink \"hec\": secrets are not accepted inline",
        ),
        (
            "[[sink]]\nname = \"k\"\ntype = \"kafka\"\n",
            "sink \"k\": unknown type \"kafka\"",
        ),
        (
            "[[sink]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"nohost\"\n",
            "sink \"s\": address \"nohost\" is not \"host:port\"",
        ),
        (
            "[[sink]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"h:1\"\nca_file = \"/ca\"\n",
            "need tls = true",
        ),
        (
            "[[sink]]\nname = \"f\"\ntype = \"file\"\npath = \"/x\"\nmax_bytes = 10\n",
            "max_bytes must be at least",
        ),
        (
            "[[sink]]\nname = \"h\"\ntype = \"splunk_hec\"\nurl = \"h:8088\"\ntoken_file = \"/t\"\n",
            "must start with http:// or https://",
        ),
        (
            "[[sink]]\nname = \"h\"\ntype = \"splunk_hec\"\nurl = \"http://h:8088\"\n",
            "needs token_file",
        ),
        (
            "[[sink]]\nname = \"bad name\"\ntype = \"file\"\npath = \"/x\"\n",
            "sink name \"bad name\"",
        ),
    ];
    for (text, expected) in cases {
        let e = parse(text).expect_err(text);
        assert!(
            e.contains(expected),
            "{text}\n=> {e}\n(expected {expected:?})"
        );
        assert!(
            e.starts_with("test.toml:"),
            "errors carry the position: {e}"
        );
    }
}

#[test]
fn two_sinks_may_not_share_a_name() {
    let s = sinks(
        "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\n\
         [[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/y\"\n",
    );
    let e = config::validate_all(&s).expect_err("duplicate");
    assert!(e.contains("sink \"a\" is defined twice"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Against a real journal
// ---------------------------------------------------------------------------------------------

fn new_session(protocol: &str) -> NewSession {
    NewSession {
        run_id: Some("run-test".to_owned()),
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
        original_dst: "127.0.0.2:5432".to_owned(),
        target: Some("appdb".to_owned()),
        protocol: protocol.to_owned(),
        upstream: Some("127.0.0.1:5432".to_owned()),
        decision: Some("allow".to_owned()),
        rule: Some("any".to_owned()),
    }
}

/// A journal with one session (its `connect` event) and `n` statements.
async fn journal_with(dir: &Path, n: usize) -> (Journal, PathBuf, i64) {
    let path = dir.join("journal.db");
    let journal = Journal::open(&path).expect("open journal");
    let session = journal
        .open_session(new_session("postgres"))
        .await
        .expect("session");
    add_statements(&journal, session, n).await;
    (journal, path, session)
}

async fn add_statements(journal: &Journal, session: i64, n: usize) {
    let events = (0..n)
        .map(|i| Event {
            session_id: Some(session),
            kind: "statement",
            statement: Some(format!("SELECT {i}, 'line\none'")),
            decision: Some(if i % 5 == 4 { "deny" } else { "allow" }.to_owned()),
            rule: Some("reads".to_owned()),
            detail: serde_json::json!({ "command": "statement", "params": 0, "classes": ["read"] }),
        })
        .collect();
    journal.events(events).await.expect("events");
    // Shipping reads the index: what the log holds, once indexed.
    journal.flush().await.expect("flush");
}

fn file_sink(name: &str, path: &Path, max_bytes: u64, keep: u32) -> SinkConfig {
    SinkConfig {
        name: name.to_owned(),
        kind: SinkKind::File(config::FileSink {
            path: path.to_owned(),
            max_bytes,
            keep,
        }),
        batch_size: 7,
    }
}

fn exported(journal: &Path, since: i64) -> Vec<String> {
    let mut out = Vec::new();
    export(journal, since, &mut out).expect("export");
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every line of `path` and its rotations, oldest file first.
fn lines_of_rotations(path: &Path, keep: u32) -> (Vec<String>, Vec<u64>) {
    let mut files: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .filter(|p| p.exists())
        .collect();
    files.push(path.to_owned());
    let mut lines = Vec::new();
    let mut sizes = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read rotated file");
        sizes.push(text.len() as u64);
        lines.extend(text.lines().map(str::to_owned));
    }
    (lines, sizes)
}

#[tokio::test]
async fn a_file_sink_gets_every_event_once_in_order_across_rotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, path, session) = journal_with(dir.path(), 60).await;
    let out = dir.path().join("out/events.ndjson");
    let sink = file_sink("local", &out, 4096, 100);

    let shipped = ship_pending(&path, &sink).expect("ship");
    let expected = exported(&path, 0);
    assert_eq!(shipped as usize, expected.len());
    // The session's own events (its connect, and with a chained journal its open) and 60
    // statements.
    assert!(expected.len() > 60, "{}", expected.len());
    let (lines, sizes) = lines_of_rotations(&out, 100);
    assert_eq!(
        lines, expected,
        "the file holds exactly the export, in order"
    );
    assert!(sizes.len() > 3, "rotated several times: {sizes:?}");
    assert!(sizes.iter().all(|s| *s <= 4096), "{sizes:?}");

    // Nothing new: nothing shipped. New events: only those.
    assert_eq!(ship_pending(&path, &sink).expect("ship again"), 0);
    add_statements(&journal, session, 3).await;
    assert_eq!(ship_pending(&path, &sink).expect("ship new"), 3);
    let (lines, _) = lines_of_rotations(&out, 100);
    assert_eq!(lines, exported(&path, 0));

    let status = status(&path, &[sink.clone(), file_sink("idle", &out, 4096, 1)]).expect("status");
    assert_eq!(status[0].cursor, status[0].last_seq);
    assert_eq!(status[0].lag, 0);
    assert_eq!(status[0].last_error, None);
    assert_eq!(status[1].cursor, 0);
    assert_eq!(status[1].lag, status[1].last_seq);
    assert!(status_table(&status).contains("idle"));
}

#[tokio::test]
async fn rotation_keeps_only_the_newest_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, path, _) = journal_with(dir.path(), 80).await;
    let out = dir.path().join("events.ndjson");
    ship_pending(&path, &file_sink("local", &out, 4096, 2)).expect("ship");
    assert!(out.exists());
    assert!(PathBuf::from(format!("{}.2", out.display())).exists());
    assert!(!PathBuf::from(format!("{}.3", out.display())).exists());
    let (lines, _) = lines_of_rotations(&out, 2);
    let all = exported(&path, 0);
    assert!(lines.len() < all.len());
    assert_eq!(
        lines[..],
        all[all.len() - lines.len()..],
        "the newest events, in order"
    );
}

#[tokio::test]
async fn export_since_starts_after_that_sequence_and_uids_are_stable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, path, _) = journal_with(dir.path(), 5).await;
    let all = exported(&path, 0);
    let later = exported(&path, 3);
    assert_eq!(later[..], all[all.len() - later.len()..]);
    assert_eq!(all, exported(&path, 0), "exports are identical");
    let first: serde_json::Value = serde_json::from_str(&all[0]).expect("json");
    let uid = first["metadata"]["uid"].as_str().expect("uid");
    assert!(uid.ends_with(":1"), "{uid}");
    assert_eq!(first["class_uid"], 4001, "the session's connect event");
}

#[tokio::test]
async fn a_failing_sink_keeps_its_cursor_and_records_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, path, _) = journal_with(dir.path(), 3).await;
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let sink = SinkConfig {
        name: "siem".to_owned(),
        kind: SinkKind::Syslog(config::SyslogSink {
            address: format!("127.0.0.1:{port}"),
            tls: None,
            facility: 16,
        }),
        batch_size: 100,
    };
    let e = ship_pending(&path, &sink).expect_err("nothing listens");
    assert!(e.to_string().contains("sink \"siem\""), "{e}");
    let s = status(&path, &[sink]).expect("status");
    assert_eq!(s[0].cursor, 0);
    assert!(s[0].last_seq > 3);
    assert_eq!(s[0].lag, s[0].last_seq);
    assert!(
        s[0].last_error
            .as_deref()
            .unwrap_or_default()
            .contains("connecting to"),
        "{:?}",
        s[0].last_error
    );
}

/// (request head, body) of each request a test server saw.
type Seen = Vec<(String, Vec<u8>)>;

/// Answers one HTTP request with `status`, and returns what it saw.
fn one_shot_http(status: &str) -> (u16, std::thread::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let status = status.to_owned();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        if let Ok((stream, _)) = listener.accept() {
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Length: 26\r\nConnection: close\r\n\r\n{{\"text\":\"Nope\",\"code\":4}}"
            );
            let _ = reader.get_mut().write_all(reply.as_bytes());
            seen.push((head, body));
        }
        seen
    });
    (port, handle)
}

#[tokio::test]
async fn hec_sends_the_token_and_only_a_200_acknowledges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, path, _) = journal_with(dir.path(), 2).await;
    let token_file = dir.path().join("hec.token");
    std::fs::write(&token_file, "tok-123\n").expect("token");
    let sink = |port: u16| SinkConfig {
        name: "splunk".to_owned(),
        kind: SinkKind::SplunkHec(config::HecSink {
            url: format!("http://127.0.0.1:{port}"),
            token_file: token_file.clone(),
            ca_file: None,
        }),
        batch_size: 100,
    };

    let (port, server) = one_shot_http("403 Forbidden");
    let e = ship_pending(&path, &sink(port)).expect_err("refused");
    let seen = server.join().expect("server");
    assert!(e.to_string().contains("HTTP 403"), "{e}");
    assert!(
        !e.to_string().contains("tok-123"),
        "the token never shows: {e}"
    );
    let s = status(&path, &[sink(port)]).expect("status");
    assert_eq!(s[0].cursor, 0);
    assert!(!s[0]
        .last_error
        .clone()
        .unwrap_or_default()
        .contains("tok-123"));
    let (head, body) = &seen[0];
    assert!(
        head.starts_with("POST /services/collector/event HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.contains("Authorization: Splunk tok-123\r\n")
            || head.contains("authorization: Splunk tok-123\r\n"),
        "{head}"
    );

    // The body: one HEC event object per journal event, the OCSF record inside.
    let text = String::from_utf8(body.clone()).expect("utf-8");
    let objects: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("concatenated JSON objects");
    let export = exported(&path, 0);
    assert_eq!(objects.len(), export.len());
    for (o, line) in objects.iter().zip(&export) {
        assert_eq!(o["sourcetype"], "ocsf");
        assert_eq!(o["source"], "interceptor");
        assert!(o["time"].as_f64().unwrap_or_default() > 1.0e9);
        let record: serde_json::Value = serde_json::from_str(line).expect("record");
        assert_eq!(o["event"], record);
    }

    let (port, server) = one_shot_http("200 OK");
    assert_eq!(
        ship_pending(&path, &sink(port)).expect("accepted") as usize,
        export.len()
    );
    server.join().expect("server");
    assert_eq!(status(&path, &[sink(port)]).expect("status")[0].lag, 0);
}

#[test]
fn syslog_frames_are_octet_counted_rfc5424() {
    let record = Record {
        seq: 1,
        at: "2026-03-01T10:00:01.250Z".to_owned(),
        line: "{\"a\":\"é\\n\"}".to_owned(),
        summary: ocsf::Summary {
            class_uid: 6005,
            severity_id: 3,
            time_ms: 0,
        },
    };
    let frame = syslog::frame_for_test(16, &record);
    let text = String::from_utf8(frame).expect("utf-8");
    let (len, msg) = text.split_once(' ').expect("length prefix");
    assert_eq!(
        len.parse::<usize>().expect("number"),
        msg.len(),
        "octets, not chars"
    );
    // local0 (16) * 8 + warning (4) = 132
    assert_eq!(
        msg,
        "<132>1 2026-03-01T10:00:01.250Z host interceptor 42 DatastoreActivity - {\"a\":\"é\\n\"}"
    );
}

#[test]
fn hec_bodies_hold_the_event_time_in_seconds() {
    let record = Record {
        seq: 1,
        at: String::new(),
        line: "{}".to_owned(),
        summary: ocsf::Summary {
            class_uid: 4001,
            severity_id: 1,
            time_ms: 1_772_359_201_005,
        },
    };
    let body = String::from_utf8(hec::body_for_test(&[record])).expect("utf-8");
    assert_eq!(
        body,
        "{\"event\":{},\"time\":1772359201.005,\"sourcetype\":\"ocsf\",\"source\":\"interceptor\"}\n"
    );
}

#[tokio::test]
async fn a_shipper_drains_on_stop_and_resumes_from_its_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, path, session) = journal_with(dir.path(), 10).await;
    let out = dir.path().join("events.ndjson");
    let sink = file_sink("local", &out, 1 << 20, 1);
    let shipper = Shipper::start(&path, std::slice::from_ref(&sink)).expect("start");
    add_statements(&journal, session, 5).await;
    journal.flush().await.expect("flush");
    shipper.stop(Duration::from_secs(5)).await;
    let (lines, _) = lines_of_rotations(&out, 1);
    assert_eq!(
        lines,
        exported(&path, 0),
        "drained everything before stopping"
    );

    add_statements(&journal, session, 2).await;
    let shipper = Shipper::start(&path, std::slice::from_ref(&sink)).expect("restart");
    shipper.stop(Duration::from_secs(5)).await;
    let (lines, _) = lines_of_rotations(&out, 1);
    assert_eq!(
        lines,
        exported(&path, 0),
        "resumed after its cursor, no repeats"
    );
}

/// Accepts one TLS connection with `server` and returns every octet-counted message it read.
fn tls_syslog_receiver(
    server: Arc<rustls::ServerConfig>,
) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return Vec::new();
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(conn) = rustls::ServerConnection::new(server) else {
            return Vec::new();
        };
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let mut bytes = Vec::new();
        // Until the client goes away (a TLS close or a dropped connection).
        let _ = stream.read_to_end(&mut bytes);
        let mut messages = Vec::new();
        let mut rest = &bytes[..];
        while let Some(space) = rest.iter().position(|b| *b == b' ') {
            let Some(len) = std::str::from_utf8(&rest[..space])
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
            else {
                break;
            };
            let Some(msg) = rest.get(space + 1..space + 1 + len) else {
                break;
            };
            messages.push(String::from_utf8_lossy(msg).into_owned());
            rest = &rest[space + 1 + len..];
        }
        messages
    });
    (port, handle)
}

#[tokio::test]
async fn syslog_over_tls_verifies_the_receiver_and_delivers_octet_counted_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, path, _) = journal_with(dir.path(), 4).await;
    let ca = crate::tls::LocalCa::load_or_create(&dir.path().join("ca")).expect("ca");
    let server = ca
        .server_config(&["127.0.0.1".to_owned()])
        .expect("server cert");
    let sink = |port: u16, ca_file: PathBuf| SinkConfig {
        name: "siem".to_owned(),
        kind: SinkKind::Syslog(config::SyslogSink {
            address: format!("127.0.0.1:{port}"),
            tls: Some(config::SyslogTls {
                ca_file: Some(ca_file),
                server_name: None,
            }),
            facility: 16,
        }),
        batch_size: 3,
    };

    let (port, receiver) = tls_syslog_receiver(server.clone());
    let shipped = ship_pending(&path, &sink(port, ca.ca_path.clone())).expect("ship over TLS");
    let messages = receiver.join().expect("receiver");
    let export = exported(&path, 0);
    assert_eq!(shipped as usize, export.len());
    assert_eq!(messages.len(), export.len());
    for (m, line) in messages.iter().zip(&export) {
        assert!(m.starts_with("<1"), "{m}");
        assert!(m.contains(" interceptor "), "{m}");
        assert!(m.ends_with(line.as_str()), "the message is the record: {m}");
    }

    // A receiver whose certificate does not chain to ca_file gets nothing.
    let other = crate::tls::LocalCa::load_or_create(&dir.path().join("other")).expect("ca");
    let (port, receiver) = tls_syslog_receiver(server);
    let fresh = SinkConfig {
        name: "siem2".to_owned(),
        ..sink(port, other.ca_path.clone())
    };
    let e = ship_pending(&path, &fresh).expect_err("unknown issuer");
    assert!(e.to_string().contains("TLS"), "{e}");
    assert!(receiver.join().expect("receiver").is_empty());
    assert_eq!(status(&path, &[fresh]).expect("status")[0].cursor, 0);
}

#[tokio::test]
async fn a_malformed_row_is_shipped_rather_than_blocking_the_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, path, session) = journal_with(dir.path(), 1).await;
    // Bytes that are not UTF-8 and a detail that is not JSON, written behind the journal's back.
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute(
        "INSERT INTO events (session_id, at, kind, statement, detail)
         VALUES (?1, '2026-03-01T10:00:00.000Z', 'statement', CAST(x'53454c454354ff' AS TEXT), 'not json')",
        [session],
    )
    .expect("insert");
    let out = dir.path().join("events.ndjson");
    let sink = file_sink("local", &out, 1 << 20, 1);
    let shipped = ship_pending(&path, &sink).expect("ship");
    let lines = exported(&path, 0);
    assert_eq!(shipped as usize, lines.len());
    let last: serde_json::Value =
        serde_json::from_str(lines.last().expect("a line")).expect("json");
    assert_eq!(last["query_info"]["query_string"], "SELECT\u{fffd}");
    assert_eq!(last["unmapped"]["detail"], "not json");
}
