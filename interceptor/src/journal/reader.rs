//! Read side of the journal, for the CLI (`interceptor sessions …`). Opens the file read-only,
//! so looking never interferes with a running daemon beyond SQLite's WAL readers.
//!
//! It answers questions (which sessions, which events, how many commands were refused) and
//! leaves presentation to [`crate::view`]. The filters' time bounds are normalised here
//! ([`TimeBound`]) because their meaning depends on how the writer formats timestamps.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, SystemTime},
};

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
    /// Sessions started at or after this bound (see [`TimeBound::parse`]).
    pub since: Option<TimeBound>,
    /// Sessions started at or before this bound; a prefix bound covers the whole period it
    /// names (`2026-11-28` includes that whole day).
    pub until: Option<TimeBound>,
    pub target: Option<String>,
    /// A user name or a uid.
    pub user: Option<String>,
    pub run: Option<String>,
    pub outcome: Option<String>,
    /// Sessions with at least one event decided this way (`allow`, `deny`, `review`): see
    /// [`DECIDED_KINDS`].
    pub decision: Option<String>,
}

/// The kinds of command events, then `$extra` kinds: one list, so the three lists below
/// cannot drift apart when a protocol adds a kind.
macro_rules! command_kinds_and {
    ($($extra:literal),*) => {
        &[
            "statement",
            "execute",
            "function_call",
            "http_request",
            "mcp_call",
            "kube_request",
            "ssh_channel",
            $($extra),*
        ]
    };
}

/// Kinds of the events that are commands of a session (the gateway's `CommandKind`s): SQL's
/// three, then one per protocol (HTTP, MCP, Kubernetes, SSH).
pub const COMMAND_KINDS: &[&str] = command_kinds_and!();

/// Events that carry the protocol-neutral keys (`protocol`, `action`, `objects`): the
/// commands, a SQL cancel request and a plain TCP connection.
pub const NEUTRAL_KINDS: &[&str] = command_kinds_and!("cancel", "connect");

/// Output or input of a terminal (an SSH shell or exec, a Kubernetes exec or attach): a note
/// naming its channel's event (`detail.channel_event`), with `stream`, `offset_ms` and `data`.
pub const TERMINAL_KIND: &str = "terminal";

/// Kinds whose `decision` column counts for `--decision`: the commands, the connection itself
/// (`connect`), and an approver's final word (`approval_decision`), so a held statement a human
/// refused makes its session match `deny`. Kinds added later do not match until listed here:
/// an unknown kind could put anything in that column.
pub const DECIDED_KINDS: &[&str] = command_kinds_and!("connect", "approval_decision");

/// A `--since` / `--until` value, normalised to compare with the journal's timestamps, which
/// are always `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds), so text order is time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeBound(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a time: give an RFC 3339 time (2026-11-28T09:14:03Z, an offset such as \
     +01:00 works), a prefix of one (2026-11-28, 2026-11-28T09), or a duration ago (90s, 2h, 3days)"
)]
pub struct BadTime(pub String);

impl TimeBound {
    /// Accepts, in this order:
    /// - a full timestamp (`T` or a space between date and time, optional fraction, `Z`,
    ///   `+HH:MM` or `-HH:MM`; no zone means UTC): normalised to the journal's format;
    /// - a duration (`90s`, `15min`, `2h`, `3days`): that long before `now`;
    /// - a prefix of the journal's format (`2026`, `2026-11-28`, `2026-11-28T09:14`): kept
    ///   as text, so it names a whole period.
    pub fn parse(text: &str, now: SystemTime) -> Result<TimeBound, BadTime> {
        let bad = || BadTime(text.to_owned());
        let text = text.trim();
        if let Some(t) = parse_timestamp(text) {
            return Ok(TimeBound(format_time(t)));
        }
        if let Ok(ago) = humantime::parse_duration(text) {
            let t = now.checked_sub(ago).ok_or_else(bad)?;
            return Ok(TimeBound(format_time(t)));
        }
        // A prefix of the fixed-width format: digits where it has digits, its separators
        // elsewhere (a space for `T` is accepted, as in full timestamps).
        const TEMPLATE: &[u8] = b"0000-00-00T00:00:00.000Z";
        let prefix = text.replacen(' ', "T", 1);
        let shaped = !prefix.is_empty()
            && prefix.len() <= TEMPLATE.len()
            && prefix.bytes().zip(TEMPLATE).all(|(c, t)| match t {
                b'0' => c.is_ascii_digit(),
                _ => c == *t,
            });
        if shaped {
            Ok(TimeBound(prefix))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The journal's timestamp format (`journal::now_rfc3339`).
fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A full RFC 3339 timestamp, with an optional `±HH:MM` offset (humantime takes only UTC).
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let (base, offset_secs) = split_offset(text)?;
    let t = humantime::parse_rfc3339_weak(base).ok()?;
    // Local time = UTC + offset, so UTC = local time - offset.
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        t.checked_sub(shift)
    } else {
        t.checked_add(shift)
    }
}

/// `("2026-11-28T10:14:03", 3600)` for `2026-11-28T10:14:03+01:00`; the text and 0 when it
/// has no numeric offset; `None` for a malformed one.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    let Some(at) = text
        .len()
        .checked_sub(6)
        .filter(|&i| text.is_char_boundary(i))
    else {
        return Some((text, 0));
    };
    let (base, zone) = text.split_at(at);
    // Only after a full time (`YYYY-MM-DDTHH:MM:SS` is 19 bytes) can a sign start a zone:
    // before that, `-` is the date's own separator.
    let sign = match zone.as_bytes().first() {
        Some(b'+') if base.len() >= 19 => 1,
        Some(b'-') if base.len() >= 19 => -1,
        _ => return Some((text, 0)),
    };
    let (hours, minutes) = zone[1..].split_once(':')?;
    let number = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let (h, m) = (number(hours)?, number(minutes)?);
    (h < 24 && m < 60).then_some((base, sign * (h * 3600 + m * 60)))
}

/// A read-only connection to the journal at `path`, after indexing what its log holds beyond
/// the index if this process may write it ([`super::index::catch_up_file`]).
pub fn open_read_only(path: &Path) -> Result<Connection, JournalError> {
    let open_err = |source| JournalError::Open {
        path: path.to_owned(),
        source,
    };
    // `Path::exists` is false for a file behind a directory we may not search, which would
    // tell an operator outside the group that nothing was recorded. Opening the file first
    // also turns an unreadable file into a permission error instead of SQLite's "unable to
    // open database file".
    match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(JournalError::Missing(path.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(JournalError::PermissionDenied {
                path: path.to_owned(),
            })
        }
        // Anything else, SQLite reports in its own words below.
        _ => {}
    }
    super::index::catch_up_file(path);
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
    // `until` compares only as many characters as the bound has, so a prefix bound includes
    // the whole period it names; a full bound has the stored width and compares exactly.
    let condition = format!(
        "(?1 IS NULL OR started_at >= ?1)
            AND (?2 IS NULL OR substr(started_at, 1, length(?2)) <= ?2)
            AND (?3 IS NULL OR target = ?3)
            AND (?4 IS NULL OR user = ?4 OR CAST(uid AS TEXT) = ?4)
            AND (?5 IS NULL OR run_id = ?5)
            AND (?6 IS NULL OR outcome = ?6)
            AND (?7 IS NULL OR EXISTS (
                SELECT 1 FROM events e
                 WHERE e.session_id = sessions.id AND e.decision = ?7 AND e.kind IN ({})))",
        sql_list(DECIDED_KINDS)
    );
    list_sessions_where(
        conn,
        &condition,
        rusqlite::params![
            filter.since.as_ref().map(TimeBound::as_str),
            filter.until.as_ref().map(TimeBound::as_str),
            filter.target,
            filter.user,
            filter.run,
            filter.outcome,
            filter.decision
        ],
    )
}

/// `'a', 'b'` for a constant list of kinds (never user input).
fn sql_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a session's commands were decided by policy (the `sessions list` table's summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CommandCounts {
    pub commands: u64,
    pub allow: u64,
    pub deny: u64,
    pub review: u64,
}

/// [`CommandCounts`] for each of `sessions` that has commands; one query.
pub fn command_counts(
    conn: &Connection,
    sessions: &[i64],
) -> Result<HashMap<i64, CommandCounts>, JournalError> {
    let mut counts = HashMap::<i64, CommandCounts>::new();
    if sessions.is_empty() {
        return Ok(counts);
    }
    // The ids travel as one JSON array parameter: no SQL built from values, one statement
    // whatever the number of sessions, and each id still uses the events_session index.
    let ids = serde_json::to_string(sessions).unwrap_or_else(|_| "[]".to_owned());
    let mut stmt = conn.prepare(&format!(
        "SELECT session_id, decision, count(*) FROM events
          WHERE session_id IN (SELECT value FROM json_each(?1)) AND kind IN ({})
          GROUP BY session_id, decision",
        sql_list(COMMAND_KINDS)
    ))?;
    let rows = stmt.query_map([ids], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Option<String>>(1)?,
            row.get::<_, i64>(2)?.max(0) as u64,
        ))
    })?;
    for row in rows {
        let (session, decision, n) = row?;
        let c = counts.entry(session).or_default();
        c.commands += n;
        match decision.as_deref() {
            Some("allow") => c.allow += n,
            Some("deny") => c.deny += n,
            Some("review") => c.review += n,
            _ => {}
        }
    }
    Ok(counts)
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
    /// `protocol`, `action` and `objects` beside the other fields, on the kinds that have them
    /// ([`NEUTRAL_KINDS`]); absent on the others.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub neutral: Option<Neutral>,
}

/// What every protocol's command says the same way: which protocol, what it does (its verb)
/// and what it does it to. Views and shipping read these instead of each protocol's detail.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Neutral {
    /// `postgres`, `mysql`, `http`, `mcp`, `kubernetes`, `ssh`, `tcp`.
    pub protocol: String,
    /// SQL: the statement classes joined by `,`; HTTP: the method; MCP: the JSON-RPC method;
    /// Kubernetes: the verb; SSH: `exec`, `shell`, `subsystem` or `forward`; TCP: `connect`.
    /// Empty when an old event has nothing to say.
    pub action: String,
    /// Tables, `host/path`, a tool name, `group/version/resource` and `namespace/name`, the
    /// programs of a command line, `host:port`.
    pub objects: Vec<String>,
}

/// The neutral keys of an event of `kind` with `detail`, in a session of `session_protocol`;
/// `None` for kinds that are not commands ([`NEUTRAL_KINDS`]).
///
/// Events written before the keys existed fall back: the protocol is the session's, the
/// action is SQL's `classes` joined by `,` (a connect's is `connect`, a cancel's `cancel`), and
/// the objects are unknown (empty). A key of the wrong JSON type counts as missing.
pub fn neutral(kind: &str, detail: &serde_json::Value, session_protocol: &str) -> Option<Neutral> {
    use serde_json::Value;
    if !NEUTRAL_KINDS.contains(&kind) {
        return None;
    }
    let strings = |v: Option<&Value>| -> Option<Vec<String>> {
        v?.as_array().map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
    };
    let protocol = detail
        .get("protocol")
        .and_then(Value::as_str)
        .unwrap_or(session_protocol)
        .to_owned();
    let action = match detail.get("action").and_then(Value::as_str) {
        Some(action) => action.to_owned(),
        None => match kind {
            "connect" | "cancel" => kind.to_owned(),
            _ => strings(detail.get("classes")).unwrap_or_default().join(","),
        },
    };
    Some(Neutral {
        protocol,
        action,
        objects: strings(detail.get("objects")).unwrap_or_default(),
    })
}

pub fn get_session(conn: &Connection, id: i64) -> Result<Option<SessionRow>, JournalError> {
    let rows = list_sessions_where(conn, "id = ?1", rusqlite::params![id])?;
    Ok(rows.into_iter().next())
}

pub fn session_events(conn: &Connection, session_id: i64) -> Result<Vec<EventRow>, JournalError> {
    let mut stmt = conn.prepare(
        "SELECT e.id, e.at, e.kind, e.statement, e.decision, e.rule, e.result, e.detail,
                s.protocol
           FROM events e LEFT JOIN sessions s ON s.id = e.session_id
          WHERE e.session_id = ?1 ORDER BY e.id",
    )?;
    let parse = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
    let rows = stmt.query_map([session_id], |row| {
        let kind: String = row.get(2)?;
        let detail = parse(row.get(7)?).unwrap_or(serde_json::Value::Null);
        let protocol: Option<String> = row.get(8)?;
        Ok(EventRow {
            seq: row.get(0)?,
            ts: row.get(1)?,
            neutral: neutral(&kind, &detail, protocol.as_deref().unwrap_or("")),
            kind,
            statement: row.get(3)?,
            decision: row.get(4)?,
            rule: row.get(5)?,
            result: parse(row.get(6)?),
            detail,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// 2026-11-28T09:14:03.496Z
    fn instant() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_857_243_496)
    }

    #[test]
    fn time_bounds_normalise_to_the_journal_format() {
        let now = instant();
        let bound = |s: &str| TimeBound::parse(s, now).map(|b| b.as_str().to_owned());
        assert_eq!(format_time(now), "2026-11-28T09:14:03.496Z");
        assert_eq!(
            bound("2026-11-28T09:14:03Z").as_deref(),
            Ok("2026-11-28T09:14:03.000Z")
        );
        assert_eq!(
            bound("2026-11-28 09:14:03.5").as_deref(),
            Ok("2026-11-28T09:14:03.500Z")
        );
        assert_eq!(
            bound("2026-11-28T10:14:03+01:00").as_deref(),
            Ok("2026-11-28T09:14:03.000Z")
        );
        assert_eq!(
            bound("2026-11-28T04:14:03.496-05:00").as_deref(),
            Ok("2026-11-28T09:14:03.496Z")
        );
        assert_eq!(bound("90s").as_deref(), Ok("2026-11-28T09:12:33.496Z"));
        assert_eq!(bound("2h").as_deref(), Ok("2026-11-28T07:14:03.496Z"));
        // Prefixes stay prefixes (a space for the `T` is accepted).
        assert_eq!(bound("2026-11-28").as_deref(), Ok("2026-11-28"));
        assert_eq!(bound("2026-11-28 09").as_deref(), Ok("2026-11-28T09"));
        for bad in [
            "",
            "yesterday",
            "28/11/2026",
            "2026-11-28T25:00:00Z",
            "2026-11-28T09:14:03+1:00",
            "2026-11-28X",
        ] {
            assert!(bound(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A journal with three sessions, written through the writer (so it has whatever the
    /// current schema requires): `alice` (reads only), `bob` (a denied DROP), and `bob` again
    /// (no commands, its connection allowed). Returns their ids and start times too.
    async fn journal() -> (tempfile::TempDir, Connection, Vec<(i64, String)>) {
        use crate::{
            capture::identity::Identity,
            journal::{Event, Journal, NewSession},
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.db");
        let journal = Journal::open(&path).expect("journal");
        let session =
            |user: &str, uid: u32, run: &str, target: Option<&str>, decision: Option<&str>| {
                NewSession {
                    run_id: Some(run.to_owned()),
                    identity: Identity {
                        pid: 42,
                        uid,
                        gid: uid,
                        user: Some(user.to_owned()),
                        comm: "psql".to_owned(),
                        ..Identity::default()
                    },
                    client_addr: "127.0.0.1:40000".to_owned(),
                    original_dst: "127.0.0.2:5432".to_owned(),
                    target: target.map(str::to_owned),
                    protocol: "postgres".to_owned(),
                    upstream: None,
                    decision: decision.map(str::to_owned),
                    rule: decision.map(|_| "egress".to_owned()),
                }
            };
        let command = |id: i64, kind: &'static str, decision: &str| Event {
            session_id: Some(id),
            kind,
            statement: Some("SELECT 1".to_owned()),
            decision: Some(decision.to_owned()),
            rule: None,
            detail: serde_json::json!({}),
        };
        let mut ids = Vec::new();
        for (user, uid, run, target, decision) in [
            ("alice", 1000, "run-a", Some("appdb"), None),
            ("bob", 1001, "run-b", Some("appdb"), None),
            ("bob", 1001, "run-b", None, Some("allow")),
        ] {
            ids.push(
                journal
                    .open_session(session(user, uid, run, target, decision))
                    .await
                    .expect("session"),
            );
            // Distinct start times, a few milliseconds apart.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        journal
            .events(vec![
                Event::note(Some(ids[0]), "auth", serde_json::json!({"ok": true})),
                command(ids[0], "statement", "allow"),
                command(ids[0], "execute", "allow"),
                command(ids[1], "statement", "allow"),
                command(ids[1], "statement", "deny"),
                // Not a kind whose decision counts.
                Event {
                    decision: Some("review".to_owned()),
                    ..Event::note(Some(ids[1]), "anomaly", serde_json::json!({}))
                },
            ])
            .await
            .expect("events");
        journal.flush().await.expect("flush");
        let reader = open_read_only(&path).expect("reader");
        let started = ids
            .iter()
            .map(|&id| {
                let s = get_session(&reader, id).expect("get").expect("session");
                (id, s.started_at)
            })
            .collect();
        (dir, reader, started)
    }

    fn ids(conn: &Connection, filter: SessionFilter) -> Vec<i64> {
        list_sessions(conn, &filter)
            .expect("list")
            .into_iter()
            .map(|s| s.id)
            .collect()
    }

    #[tokio::test]
    async fn filters_select_the_right_sessions() {
        let (_dir, conn, sessions) = journal().await;
        let [(a, a_start), (b, b_start), (c, _)] = [0, 1, 2].map(|i| sessions[i].clone());
        let now = SystemTime::now();
        let at = |s: &str| Some(TimeBound::parse(s, now).expect("time"));
        let decision = |d: &str| SessionFilter {
            decision: Some(d.to_owned()),
            ..SessionFilter::default()
        };
        assert_eq!(ids(&conn, SessionFilter::default()), vec![a, b, c]);
        assert_eq!(ids(&conn, decision("deny")), vec![b]);
        // The connection's decision counts; a kind that is not a decision's does not.
        assert_eq!(ids(&conn, decision("allow")), vec![a, b, c]);
        assert_eq!(ids(&conn, decision("review")), Vec::<i64>::new());
        let user = |u: &str| SessionFilter {
            user: Some(u.to_owned()),
            ..SessionFilter::default()
        };
        assert_eq!(ids(&conn, user("bob")), vec![b, c]);
        assert_eq!(ids(&conn, user("1000")), vec![a]);
        // A full `until` is exact; a prefix one covers the whole period it names.
        let until = |s: &str| SessionFilter {
            until: at(s),
            ..SessionFilter::default()
        };
        assert_eq!(ids(&conn, until(&a_start)), vec![a]);
        assert_eq!(ids(&conn, until(&b_start)), vec![a, b]);
        assert_eq!(ids(&conn, until(&a_start[..10])), vec![a, b, c]);
        assert_eq!(ids(&conn, until("2000-01-01")), Vec::<i64>::new());
        let since = |s: &str| SessionFilter {
            since: at(s),
            ..SessionFilter::default()
        };
        assert_eq!(ids(&conn, since(&b_start)), vec![b, c]);
        assert_eq!(ids(&conn, since("1h")), vec![a, b, c]);
        assert_eq!(ids(&conn, since("2999")), Vec::<i64>::new());
        assert_eq!(
            ids(
                &conn,
                SessionFilter {
                    target: Some("appdb".into()),
                    run: Some("run-b".into()),
                    ..SessionFilter::default()
                }
            ),
            vec![b]
        );
    }

    #[tokio::test]
    async fn events_carry_the_neutral_keys_with_fallbacks_for_old_ones() {
        use crate::journal::Event;
        let (dir, _conn, sessions) = journal().await;
        let journal = crate::journal::Journal::open(&dir.path().join("journal.db")).expect("open");
        let id = sessions[0].0;
        let command = |kind: &'static str, decision: &str, detail: serde_json::Value| Event {
            session_id: Some(id),
            kind,
            statement: Some("DELETE http://127.0.0.1:8080/v1/items/7".to_owned()),
            decision: Some(decision.to_owned()),
            rule: None,
            detail,
        };
        journal
            .events(vec![
                command(
                    "http_request",
                    "deny",
                    serde_json::json!({"protocol": "http", "action": "DELETE",
                                       "objects": ["127.0.0.1:8080/v1/items/7"]}),
                ),
                command(
                    "statement",
                    "allow",
                    serde_json::json!({"classes": ["delete", "read"]}),
                ),
                Event::note(
                    Some(id),
                    TERMINAL_KIND,
                    serde_json::json!({"channel_event": 1, "stream": "output",
                                       "offset_ms": 5, "data": "ok"}),
                ),
            ])
            .await
            .expect("events");
        journal.flush().await.expect("flush");
        let conn = open_read_only(&dir.path().join("journal.db")).expect("reader");
        let events = session_events(&conn, id).expect("events");
        let neutral_of = |kind: &str| {
            events
                .iter()
                .find(|e| e.kind == kind)
                .and_then(|e| e.neutral.clone())
        };
        assert_eq!(
            neutral_of("http_request"),
            Some(Neutral {
                protocol: "http".into(),
                action: "DELETE".into(),
                objects: vec!["127.0.0.1:8080/v1/items/7".into()],
            })
        );
        // The second statement was written without the keys: the session's protocol, the
        // classes as the action, no objects.
        let old = events
            .iter()
            .rev()
            .find(|e| e.kind == "statement")
            .and_then(|e| e.neutral.clone());
        assert_eq!(
            old,
            Some(Neutral {
                protocol: "postgres".into(),
                action: "delete,read".into(),
                objects: vec![],
            })
        );
        assert_eq!(neutral_of("terminal"), None);
        assert_eq!(neutral_of("auth"), None);
        // `--json` has them beside the other fields, and only on commands.
        let json = serde_json::to_value(&events).expect("json");
        let by_kind = |kind: &str| {
            json.as_array()
                .and_then(|a| a.iter().find(|e| e["kind"] == kind))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(by_kind("http_request")["action"], "DELETE");
        assert_eq!(by_kind("http_request")["protocol"], "http");
        assert!(by_kind("auth").get("action").is_none());
        // A new kind's decision counts like SQL's.
        let counts = command_counts(&conn, &[id]).expect("counts");
        assert_eq!(counts.get(&id).map(|c| c.deny), Some(1));
    }

    #[tokio::test]
    async fn commands_are_counted_by_decision() {
        let (_dir, conn, sessions) = journal().await;
        let [a, b, c] = [0, 1, 2].map(|i| sessions[i].0);
        let counts = command_counts(&conn, &[a, b, c]).expect("counts");
        assert_eq!(
            counts.get(&a),
            Some(&CommandCounts {
                commands: 2,
                allow: 2,
                deny: 0,
                review: 0
            })
        );
        assert_eq!(
            counts.get(&b),
            Some(&CommandCounts {
                commands: 2,
                allow: 1,
                deny: 1,
                review: 0
            })
        );
        assert_eq!(counts.get(&c), None, "a connect event is not a command");
        assert!(command_counts(&conn, &[]).expect("none").is_empty());
    }
}
