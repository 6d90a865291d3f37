//! The journal → OCSF mapping, in one place: `journal export --format ocsf` and every sink
//! print what [`record`] returns, so a SIEM sees the same record whichever way it came.
//!
//! Targets OCSF 1.3. Classes used:
//!
//! | journal event | class | activity |
//! |---|---|---|
//! | `statement`, `execute`, `function_call` | Datastore Activity (6005) | Delete / Update / Write by the statement's classes, else Query |
//! | `cancel` | 6005 | Other |
//! | `approval` (`approval_request`), `approval_decision` | 6005 | as the held command |
//! | `result` | 6005 | as the command it reports on, with `duration` and `status_*` |
//! | `auth` | 6005 | Connect |
//! | `connect`, `session_open` | Network Activity (4001) | Open, or Refuse when denied |
//! | `session_close` | 4001 | Close / Refuse / Fail / Reset by outcome |
//! | anything else (`error`, `anomaly`, kinds added later) | 6005 | Other, `activity_name` = the kind |
//!
//! Decisions: `action_id`/`disposition_id` 1/1 allowed, 2/2 blocked, 1/8 approved (an
//! approver's `approval_decision`), 99/14 held for review.
//!
//! A record is a pure function of facts that never change once committed: the event row
//! (without the `result` column, which is filled in later), the identity columns of its
//! session (not its close), and the statement of the command a `result` reports on. So a
//! re-delivered record is byte-for-byte the one delivered before, under the same
//! `metadata.uid` (`{journal id}:{seq}`), and an export run later prints it identically.
//! The journal only ever holds masked text; nothing here unmasks or adds anything else.

use serde_json::{json, Map, Value};

/// OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// The identity columns of a session: fixed when it was recorded, before anything went
/// upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionFacts {
    pub id: i64,
    pub run_id: Option<String>,
    pub pid: i64,
    pub uid: i64,
    pub gid: i64,
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
    pub started_at: String,
}

/// The command a `result` event reports on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandFacts {
    pub seq: i64,
    pub kind: String,
    pub statement: Option<String>,
    pub detail: Value,
}

/// One journal event with what its record needs from around it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalEvent {
    pub seq: i64,
    /// RFC 3339, as the journal wrote it.
    pub at: String,
    pub kind: String,
    pub statement: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub detail: Value,
    pub session: Option<SessionFacts>,
    /// For `result` events.
    pub command: Option<CommandFacts>,
}

const DATASTORE: (i64, &str) = (6005, "Datastore Activity");
const NETWORK: (i64, &str) = (4001, "Network Activity");

/// What sinks need besides the JSON text: the class (syslog MSGID), the severity (syslog
/// PRI) and the time (HEC `time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub class_uid: i64,
    pub severity_id: u8,
    pub time_ms: i64,
}

impl Summary {
    /// The class name without spaces (an RFC 5424 MSGID allows none).
    pub fn msgid(&self) -> &'static str {
        match self.class_uid {
            4001 => "NetworkActivity",
            _ => "DatastoreActivity",
        }
    }
}

/// The OCSF record of `event` in a journal whose id is `journal_id`.
pub fn record(journal_id: &str, event: &JournalEvent) -> (Value, Summary) {
    let time_ms = epoch_ms(&event.at).unwrap_or(0);
    let shape = shape(event);
    let mut r = Map::new();
    let (class_uid, class_name) = shape.class;
    let (category_uid, category_name) = if class_uid == NETWORK.0 {
        (4, "Network Activity")
    } else {
        (6, "Application Activity")
    };
    r.insert("class_uid".into(), json!(class_uid));
    r.insert("class_name".into(), json!(class_name));
    r.insert("category_uid".into(), json!(category_uid));
    r.insert("category_name".into(), json!(category_name));
    r.insert("activity_id".into(), json!(shape.activity.0));
    r.insert("activity_name".into(), json!(shape.activity.1));
    r.insert("type_uid".into(), json!(class_uid * 100 + shape.activity.0));
    r.insert(
        "type_name".into(),
        json!(format!("{class_name}: {}", shape.activity.1)),
    );
    r.insert("time".into(), json!(time_ms));
    r.insert("severity_id".into(), json!(shape.severity.0));
    r.insert("severity".into(), json!(shape.severity.1));
    r.insert("message".into(), json!(shape.message));

    let mut metadata = json!({
        "version": OCSF_VERSION,
        "uid": format!("{journal_id}:{}", event.seq),
        "sequence": event.seq,
        "original_time": event.at,
        "event_code": event.kind,
        "log_name": "journal",
        "product": {
            "name": "interceptor",
            "vendor_name": "interceptor",
            "version": env!("CARGO_PKG_VERSION"),
        },
    });
    if shape.action.is_some() {
        metadata["profiles"] = json!(["security_control"]);
    }
    if let Some(run) = event.session.as_ref().and_then(|s| s.run_id.as_deref()) {
        metadata["correlation_uid"] = json!(run);
    }
    r.insert("metadata".into(), metadata);

    if let Some((action_id, action, disposition_id, disposition)) = shape.action {
        r.insert("action_id".into(), json!(action_id));
        r.insert("action".into(), json!(action));
        r.insert("disposition_id".into(), json!(disposition_id));
        r.insert("disposition".into(), json!(disposition));
    }
    if let Some(rule) = &event.rule {
        r.insert("policy".into(), json!({ "name": rule }));
    }
    if let Some((status_id, status, code, detail)) = shape.status {
        r.insert("status_id".into(), json!(status_id));
        r.insert("status".into(), json!(status));
        if let Some(code) = code {
            r.insert("status_code".into(), json!(code));
        }
        if let Some(detail) = detail {
            r.insert("status_detail".into(), json!(detail));
        }
    }
    if let Some(ms) = shape.duration_ms {
        r.insert("duration".into(), json!(ms));
    }

    let mut unmapped = Map::new();
    unmapped.insert("kind".into(), json!(event.kind));
    if let Some(s) = &event.session {
        r.insert("actor".into(), actor(s));
        if let Some(src) = endpoint(&s.client_addr) {
            r.insert("src_endpoint".into(), src);
        }
        if let Some(dst) = endpoint(&s.original_dst) {
            r.insert("dst_endpoint".into(), dst);
        }
        if class_uid == DATASTORE.0 {
            r.insert("type_id".into(), json!(1));
            r.insert("type".into(), json!("Database"));
            let mut database = json!({ "type": s.protocol });
            database["type_id"] = json!(if s.protocol == "postgres" { 1 } else { 99 });
            if let Some(target) = &s.target {
                database["name"] = json!(target);
            }
            r.insert("database".into(), database);
        } else {
            r.insert(
                "connection_info".into(),
                json!({ "protocol_name": "tcp", "protocol_num": 6, "direction": "Outbound", "direction_id": 2 }),
            );
            if let Some(target) = &s.target {
                unmapped.insert("target".into(), json!(target));
            }
        }
        unmapped.insert("session_id".into(), json!(s.id));
        unmapped.insert("protocol".into(), json!(s.protocol));
        if let Some(upstream) = &s.upstream {
            unmapped.insert("upstream".into(), json!(upstream));
        }
        if let Some(unit) = &s.unit {
            unmapped.insert("unit".into(), json!(unit));
        }
        if let Some(cgroup) = &s.cgroup_path {
            unmapped.insert("cgroup".into(), json!(cgroup));
        }
        if s.identity_stale {
            unmapped.insert("identity_stale".into(), json!(true));
        }
    }
    if let Some(query) = shape.query {
        r.insert("query_info".into(), query);
    }
    if let Some(traffic) = shape.traffic {
        r.insert("traffic".into(), traffic);
    }
    if let Some(c) = &event.command {
        unmapped.insert("command_seq".into(), json!(c.seq));
        unmapped.insert("command_uid".into(), json!(format!("{journal_id}:{}", c.seq)));
    }
    if !event.detail.is_null() {
        unmapped.insert("detail".into(), strip_samples(&event.detail));
    }
    r.insert("unmapped".into(), Value::Object(unmapped));

    let summary = Summary {
        class_uid,
        severity_id: shape.severity.0,
        time_ms,
    };
    (Value::Object(r), summary)
}

/// Everything that differs between kinds, decided before the record is assembled.
struct Shape {
    class: (i64, &'static str),
    activity: (i64, String),
    severity: (u8, &'static str),
    /// (action_id, action, disposition_id, disposition)
    action: Option<(i64, &'static str, i64, &'static str)>,
    /// (status_id, status, status_code, status_detail)
    status: Option<(i64, &'static str, Option<String>, Option<String>)>,
    duration_ms: Option<i64>,
    query: Option<Value>,
    traffic: Option<Value>,
    message: String,
}

const INFORMATIONAL: (u8, &str) = (1, "Informational");
const LOW: (u8, &str) = (2, "Low");
const MEDIUM: (u8, &str) = (3, "Medium");

fn shape(e: &JournalEvent) -> Shape {
    let detail_str = |key: &str| e.detail.get(key).and_then(Value::as_str).map(str::to_owned);
    let base = Shape {
        class: DATASTORE,
        activity: (99, "Other".to_owned()),
        severity: INFORMATIONAL,
        action: None,
        status: None,
        duration_ms: None,
        query: None,
        traffic: None,
        message: e.kind.clone(),
    };
    match e.kind.as_str() {
        "statement" | "execute" | "function_call" | "cancel" => {
            let (action, severity) = decision(e.decision.as_deref());
            Shape {
                activity: sql_activity(&e.kind, &e.detail),
                severity,
                action,
                query: query_info(e.statement.as_deref(), &e.detail),
                message: decided_message(&e.kind, e.decision.as_deref(), e.rule.as_deref()),
                ..base
            }
        }
        "approval" | "approval_request" => Shape {
            activity: sql_activity("statement", &Value::Null),
            severity: LOW,
            action: Some((99, "Other", 14, "Delayed")),
            query: query_info(e.statement.as_deref(), &Value::Null),
            message: "held for approval".to_owned(),
            ..base
        },
        "approval_decision" => {
            let status = detail_str("status").unwrap_or_default();
            let approved = status == "approved";
            let by = detail_str("approver");
            Shape {
                activity: sql_activity("statement", &Value::Null),
                severity: if approved { LOW } else { MEDIUM },
                action: Some(if approved {
                    (1, "Allowed", 8, "Approved")
                } else {
                    (2, "Denied", 2, "Blocked")
                }),
                query: query_info(e.statement.as_deref(), &Value::Null),
                message: match (approved, by) {
                    (true, Some(by)) => format!("approved by {by}"),
                    (false, Some(by)) => format!("denied by {by}"),
                    _ => format!("approval {status}"),
                },
                ..base
            }
        }
        "result" => {
            let result = e.detail.get("result").unwrap_or(&Value::Null);
            let text = |key: &str| result.get(key).and_then(Value::as_str).map(str::to_owned);
            let (sqlstate, error) = (text("sqlstate"), text("error"));
            let failed = sqlstate.is_some() || error.is_some();
            let command = e.command.as_ref();
            Shape {
                activity: command
                    .map(|c| sql_activity(&c.kind, &c.detail))
                    .unwrap_or((4, "Query".to_owned())),
                severity: INFORMATIONAL,
                status: Some(if failed {
                    (2, "Failure", sqlstate, error)
                } else {
                    (1, "Success", None, text("tag"))
                }),
                duration_ms: result
                    .get("duration_ms")
                    .and_then(Value::as_f64)
                    .map(|ms| ms.round() as i64),
                query: command.and_then(|c| query_info(c.statement.as_deref(), &c.detail)),
                message: if failed { "command failed" } else { "command completed" }.to_owned(),
                ..base
            }
        }
        "auth" => {
            let ok = e.detail.get("ok").and_then(Value::as_bool);
            Shape {
                activity: (3, "Connect".to_owned()),
                severity: if ok == Some(false) { MEDIUM } else { INFORMATIONAL },
                status: ok.map(|ok| {
                    if ok {
                        (1, "Success", None, None)
                    } else {
                        (
                            2,
                            "Failure",
                            None,
                            detail_str("error").or_else(|| detail_str("reason")),
                        )
                    }
                }),
                message: match ok {
                    Some(true) => "authenticated",
                    Some(false) => "authentication failed",
                    None => "authentication",
                }
                .to_owned(),
                ..base
            }
        }
        "connect" | "session_open" => {
            let (action, severity) = decision(e.decision.as_deref());
            let refused = e.decision.as_deref().is_some_and(|d| d != "allow");
            Shape {
                class: NETWORK,
                activity: if refused {
                    (5, "Refuse".to_owned())
                } else {
                    (1, "Open".to_owned())
                },
                severity,
                action,
                message: decided_message("connection", e.decision.as_deref(), e.rule.as_deref()),
                ..base
            }
        }
        "session_close" => {
            let outcome = detail_str("outcome").unwrap_or_default();
            let (activity, severity) = match outcome.as_str() {
                "closed" => ((2, "Close"), INFORMATIONAL),
                "refused" | "anomaly" => ((5, "Refuse"), MEDIUM),
                "upstream_failed" => ((4, "Fail"), LOW),
                "error" => ((3, "Reset"), LOW),
                _ => ((2, "Close"), INFORMATIONAL),
            };
            let number = |key: &str| e.detail.get(key).and_then(Value::as_i64);
            let traffic = match (number("bytes_up"), number("bytes_down")) {
                (None, None) => None,
                (up, down) => Some(json!({
                    "bytes_out": up.unwrap_or(0),
                    "bytes_in": down.unwrap_or(0),
                    "bytes": up.unwrap_or(0) + down.unwrap_or(0),
                })),
            };
            // The session's start is immutable, so the duration is as stable as the record.
            let duration_ms = number("duration_ms").or_else(|| {
                let started = epoch_ms(&e.session.as_ref()?.started_at)?;
                Some((epoch_ms(&e.at)? - started).max(0))
            });
            Shape {
                class: NETWORK,
                activity: (activity.0, activity.1.to_owned()),
                severity,
                duration_ms,
                traffic,
                message: format!("connection {}", if outcome.is_empty() { "closed" } else { &outcome }),
                ..base
            }
        }
        other => {
            let (action, _) = decision(e.decision.as_deref());
            let failure = other.contains("error") || other == "anomaly" || other.ends_with("_failed");
            Shape {
                activity: (99, other.to_owned()),
                severity: if failure { MEDIUM } else { INFORMATIONAL },
                action: e.decision.as_ref().and(action),
                status: failure.then(|| {
                    (
                        2,
                        "Failure",
                        None,
                        detail_str("error").or_else(|| detail_str("reason")),
                    )
                }),
                query: query_info(e.statement.as_deref(), &Value::Null),
                ..base
            }
        }
    }
}

type Action = Option<(i64, &'static str, i64, &'static str)>;

/// A policy decision as OCSF action and disposition, with the severity it warrants.
fn decision(decision: Option<&str>) -> (Action, (u8, &'static str)) {
    match decision {
        Some("allow") => (Some((1, "Allowed", 1, "Allowed")), INFORMATIONAL),
        Some("deny") => (Some((2, "Denied", 2, "Blocked")), MEDIUM),
        Some("review") => (Some((99, "Other", 14, "Delayed")), LOW),
        Some(_) => (Some((0, "Unknown", 0, "Unknown")), LOW),
        None => (None, INFORMATIONAL),
    }
}

/// The Datastore activity of a command, from the statement classes the policy found
/// (`detail.classes`). The most consequential class names it.
fn sql_activity(kind: &str, detail: &Value) -> (i64, String) {
    if kind == "cancel" {
        return (99, "Other".to_owned());
    }
    let classes: Vec<&str> = detail
        .get("classes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let has = |names: &[&str]| classes.iter().any(|c| names.contains(c));
    let (id, name) = if has(&["delete"]) {
        (7, "Delete")
    } else if has(&["update", "merge"]) {
        (2, "Update")
    } else if has(&["insert", "copy_from"]) {
        (5, "Write")
    } else {
        (4, "Query")
    };
    (id, name.to_owned())
}

fn query_info(statement: Option<&str>, detail: &Value) -> Option<Value> {
    let statement = statement?;
    let mut q = json!({ "query_string": statement });
    if let Some(name) = detail
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        q["name"] = json!(name);
    }
    Some(q)
}

fn decided_message(what: &str, decision: Option<&str>, rule: Option<&str>) -> String {
    let verb = match decision {
        Some("allow") => "allowed",
        Some("deny") => "denied",
        Some("review") => "sent to review",
        Some(other) => other,
        None => return what.to_owned(),
    };
    match rule {
        Some(rule) => format!("{what} {verb} by rule {rule}"),
        None => format!("{what} {verb}"),
    }
}

fn actor(s: &SessionFacts) -> Value {
    let mut user = json!({ "uid": s.uid.to_string() });
    if let Some(name) = &s.user {
        user["name"] = json!(name);
    }
    let mut process = json!({ "pid": s.pid });
    if !s.comm.is_empty() {
        process["name"] = json!(s.comm);
    }
    if let Some(exe) = &s.exe {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        process["file"] = json!({ "path": exe, "name": name });
    }
    if let Some(cmd) = &s.cmdline {
        process["cmd_line"] = json!(cmd);
    }
    let mut actor = json!({ "user": user, "process": process, "session": { "uid": s.id.to_string() } });
    if let Some(unit) = &s.unit {
        actor["app_name"] = json!(unit);
    }
    actor
}

/// An `ip:port` (or `[v6]:port`) as an OCSF network endpoint; `None` for anything else.
fn endpoint(addr: &str) -> Option<Value> {
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    Some(json!({ "ip": addr.ip().to_string(), "port": addr.port() }))
}

/// Result samples are rows the client received (masked, but data all the same): a SIEM gets
/// the shape of a result, not its contents.
fn strip_samples(detail: &Value) -> Value {
    match detail {
        Value::Object(map) if map.contains_key("sample") || map.contains_key("result") => {
            let mut map = map.clone();
            map.remove("sample");
            if let Some(Value::Object(result)) = map.get_mut("result") {
                result.remove("sample");
            }
            Value::Object(map)
        }
        other => other.clone(),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn epoch_ms(at: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(at).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests;
