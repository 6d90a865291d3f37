//! The journal → OCSF mapping, in one place: `journal export --format ocsf` and every sink
//! write what [`record_line`] returns, so a SIEM sees the same record whichever way it came.
//!
//! Targets OCSF 1.3. Each protocol's commands map to the class made for that kind of
//! activity:
//!
//! | journal event | class | activity | protocol objects |
//! |---|---|---|---|
//! | `statement`, `execute`, `function_call` (SQL) | Datastore Activity (6005) | Delete / Update / Write by the statement's classes, else Query | `database`, `query_info` |
//! | `cancel` | 6005 | Other | |
//! | `http_request` | HTTP Activity (4002) | by method: Connect / Delete / Get / Head / Options / Post / Put / Trace / Patch, else Other | `http_request` (`http_method`, `url`) |
//! | `mcp_call` | API Activity (6003) | Read for `*/list`, `*/read`, `prompts/get`; else Other (a tool call can do anything) | `api` (`operation` = the JSON-RPC method, `service.name` = the target, `request.uid`), `resources` (the tool, resource or prompt) |
//! | `kube_request` | API Activity (6003) | Create / Read (get, list, watch) / Update (update, patch) / Delete (delete, deletecollection), else Other (exec, attach, portforward, proxy) | `api` (`operation` = the verb, `service.name` = `kubernetes`, `version`), `resources` (`type` = `resource[.group][/subresource]`, `name`, `namespace`) |
//! | `ssh_channel` | SSH Activity (4007) | Open, Refuse when denied, Other while held | `connection_info` |
//! | `terminal` | 4007 in an SSH session (Traffic, with its size in `traffic`), else 6003 (Other) | | the text itself is not shipped |
//! | `approval` (`approval_request`), `approval_decision` | the class of the session's protocol (6005 for SQL) | Query for SQL, else Other | |
//! | `result` | the class of the command it reports on | the command's (an SSH channel's is Close), with `duration` and `status_*` | 4002 `http_response.code`, 6003 `api.response.code` |
//! | `auth` | 6005 | Connect | |
//! | `connect`, `session_open` | Network Activity (4001) | Open, or Refuse when denied | `connection_info` |
//! | `session_close` | 4001 | Close / Refuse / Fail / Reset by outcome | `traffic` |
//! | anything else (`error`, `anomaly`, kinds added later) | 6005 | Other, `activity_name` = the kind | |
//!
//! Every record has the same `metadata`, `actor` (the agent's user and process),
//! `src_endpoint`/`dst_endpoint` (the agent and the destination it dialled), policy
//! `action`/`disposition`, and `unmapped` (the journal's own detail). Outside the Datastore
//! class, where `query_info` has no place, a command's canonical text (what a human approves)
//! is `unmapped.text`. A result's `status_code` is its SQLSTATE, else its `status` (an HTTP
//! status, or an SSH exec's exit status); it failed on an error, an HTTP status of 400 or more,
//! or a non-zero exit status.
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

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{json, Value};

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

type Class = (i64, &'static str);

const DATASTORE: Class = (6005, "Datastore Activity");
const NETWORK: Class = (4001, "Network Activity");
const HTTP: Class = (4002, "HTTP Activity");
const SSH: Class = (4007, "SSH Activity");
const API: Class = (6003, "API Activity");

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
            4002 => "HTTPActivity",
            4007 => "SSHActivity",
            6003 => "APIActivity",
            _ => "DatastoreActivity",
        }
    }
}

/// The OCSF record of `event` in a journal whose id is `journal_id`, as JSON text (what sinks
/// and the export write).
pub fn record_line(journal_id: &str, event: &JournalEvent) -> (String, Summary) {
    let (record, summary) = build(journal_id, event);
    // Serializing plain structs with string keys cannot fail; the fallback keeps the event
    // visible (with its uid) rather than dropping it.
    let line = serde_json::to_string(&record).unwrap_or_else(|e| {
        json!({ "metadata": { "uid": record.metadata.uid, "sequence": event.seq },
                "unmapped": { "encoding_error": e.to_string() } })
        .to_string()
    });
    (line, summary)
}

/// The same record as a JSON value (for tests and tools).
pub fn record(journal_id: &str, event: &JournalEvent) -> (Value, Summary) {
    let (line, summary) = record_line(journal_id, event);
    (serde_json::from_str(&line).unwrap_or(Value::Null), summary)
}

// The record's parts. Plain structs rather than `serde_json::Value` maps: shipping serializes
// every event once, and building maps was most of its cost. Field order is the output's.

#[derive(Serialize)]
struct OcsfRecord<'a> {
    class_uid: i64,
    class_name: &'static str,
    category_uid: i64,
    category_name: &'static str,
    activity_id: i64,
    activity_name: &'a str,
    type_uid: i64,
    type_name: String,
    time: i64,
    severity_id: u8,
    severity: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    action_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disposition_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disposition: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<Named<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_endpoint: Option<Endpoint>,
    /// Datastore type: 1 Database.
    #[serde(skip_serializing_if = "Option::is_none")]
    type_id: Option<i64>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    datastore_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<Database<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_info: Option<ConnectionInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_info: Option<QueryInfo<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_request: Option<HttpRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_response: Option<HttpResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<Api<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<Vec<Resource<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traffic: Option<Traffic>,
    metadata: Metadata<'a>,
    unmapped: Unmapped<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    uid: String,
    sequence: i64,
    original_time: &'a str,
    event_code: &'a str,
    log_name: &'static str,
    product: Product,
    #[serde(skip_serializing_if = "Option::is_none")]
    profiles: Option<[&'static str; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_uid: Option<&'a str>,
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Actor<'a> {
    user: User<'a>,
    process: Process<'a>,
    session: SessionRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_name: Option<&'a str>,
}

#[derive(Serialize)]
struct User<'a> {
    uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct Process<'a> {
    pid: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<ProcessFile<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd_line: Option<&'a str>,
}

#[derive(Serialize)]
struct ProcessFile<'a> {
    path: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct SessionRef {
    uid: String,
}

#[derive(Serialize)]
struct Endpoint {
    ip: String,
    port: u16,
}

#[derive(Serialize)]
struct Database<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a str,
    type_id: i64,
}

#[derive(Serialize)]
struct ConnectionInfo {
    protocol_name: &'static str,
    protocol_num: u8,
    direction: &'static str,
    direction_id: u8,
}

#[derive(Serialize)]
struct QueryInfo<'a> {
    query_string: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct HttpRequest {
    http_method: String,
    url: Url,
}

#[derive(Serialize)]
struct Url {
    url_string: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_string: Option<String>,
}

#[derive(Serialize)]
struct HttpResponse {
    code: i64,
}

#[derive(Serialize)]
struct Api<'a> {
    operation: &'a str,
    service: Named<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<ApiRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<HttpResponse>,
}

#[derive(Serialize)]
struct ApiRequest {
    uid: String,
}

/// An OCSF `resource_details`: what an API call acted on.
#[derive(Serialize)]
struct Resource<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
}

#[derive(Serialize)]
struct Traffic {
    bytes_out: i64,
    bytes_in: i64,
    bytes: i64,
}

#[derive(Serialize)]
struct Unmapped<'a> {
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    identity_stale: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_uid: Option<String>,
    /// A command's canonical text, where the class has no field for it (not Datastore).
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Cow<'a, Value>>,
}

fn build<'a>(journal_id: &str, event: &'a JournalEvent) -> (OcsfRecord<'a>, Summary) {
    let time_ms = epoch_ms(&event.at).unwrap_or(0);
    let shape = shape(event);
    let (class_uid, class_name) = shape.class;
    // Classes 4xxx are Network Activity, 6xxx Application Activity.
    let network = class_uid / 1000 == 4;
    let (category_uid, category_name) = if network {
        (4, "Network Activity")
    } else {
        (6, "Application Activity")
    };
    let session = event.session.as_ref();
    let datastore = class_uid == DATASTORE.0;
    let (status_id, status, status_code, status_detail) = match shape.status {
        Some((id, name, code, detail)) => (Some(id), Some(name), code, detail),
        None => (None, None, None, None),
    };
    let record = OcsfRecord {
        class_uid,
        class_name,
        category_uid,
        category_name,
        activity_id: shape.activity.0,
        activity_name: shape.activity.1,
        type_uid: class_uid * 100 + shape.activity.0,
        type_name: format!("{class_name}: {}", shape.activity.1),
        time: time_ms,
        severity_id: shape.severity.0,
        severity: shape.severity.1,
        message: shape.message,
        action_id: shape.action.map(|a| a.0),
        action: shape.action.map(|a| a.1),
        disposition_id: shape.action.map(|a| a.2),
        disposition: shape.action.map(|a| a.3),
        policy: rule_of(event).map(|name| Named { name }),
        status_id,
        status,
        status_code,
        status_detail,
        duration: shape.duration_ms,
        actor: session.map(actor),
        src_endpoint: session.and_then(|s| endpoint(&s.client_addr)),
        dst_endpoint: session.and_then(|s| endpoint(&s.original_dst)),
        type_id: (datastore && session.is_some()).then_some(1),
        datastore_type: (datastore && session.is_some()).then_some("Database"),
        database: session.filter(|_| datastore).map(|s| Database {
            name: s.target.as_deref(),
            kind: &s.protocol,
            // Database type 1: Relational.
            type_id: if matches!(s.protocol.as_str(), "postgres" | "mysql") {
                1
            } else {
                99
            },
        }),
        connection_info: session.filter(|_| network).map(|_| ConnectionInfo {
            protocol_name: "tcp",
            protocol_num: 6,
            direction: "Outbound",
            direction_id: 2,
        }),
        query_info: shape.query,
        http_request: shape.http_request,
        http_response: shape.http_response,
        api: shape.api,
        resources: shape.resources,
        traffic: shape.traffic,
        metadata: Metadata {
            version: OCSF_VERSION,
            uid: format!("{journal_id}:{}", event.seq),
            sequence: event.seq,
            original_time: &event.at,
            event_code: &event.kind,
            log_name: "journal",
            product: Product {
                name: "interceptor",
                vendor_name: "interceptor",
                version: env!("CARGO_PKG_VERSION"),
            },
            profiles: shape.action.map(|_| ["security_control"]),
            correlation_uid: session.and_then(|s| s.run_id.as_deref()),
        },
        unmapped: Unmapped {
            kind: &event.kind,
            session_id: session.map(|s| s.id),
            protocol: session.map(|s| s.protocol.as_str()),
            // The Datastore record names the target as its database.
            target: session
                .filter(|_| !datastore)
                .and_then(|s| s.target.as_deref()),
            upstream: session.and_then(|s| s.upstream.as_deref()),
            unit: session.and_then(|s| s.unit.as_deref()),
            cgroup: session.and_then(|s| s.cgroup_path.as_deref()),
            identity_stale: session.is_some_and(|s| s.identity_stale),
            command_seq: event.command.as_ref().map(|c| c.seq),
            command_uid: event
                .command
                .as_ref()
                .map(|c| format!("{journal_id}:{}", c.seq)),
            text: shape.text.filter(|_| !datastore),
            // A `session_open`'s detail repeats the session's identity, mapped above.
            detail: (!event.detail.is_null() && event.kind != "session_open")
                .then(|| strip_contents(&event.detail)),
        },
    };
    let summary = Summary {
        class_uid,
        severity_id: shape.severity.0,
        time_ms,
    };
    (record, summary)
}

/// Everything that differs between kinds, decided before the record is assembled.
struct Shape<'a> {
    class: Class,
    activity: (i64, &'a str),
    severity: (u8, &'static str),
    /// (action_id, action, disposition_id, disposition)
    action: Option<(i64, &'static str, i64, &'static str)>,
    /// (status_id, status, status_code, status_detail)
    status: Option<(i64, &'static str, Option<String>, Option<String>)>,
    duration_ms: Option<i64>,
    query: Option<QueryInfo<'a>>,
    http_request: Option<HttpRequest>,
    http_response: Option<HttpResponse>,
    api: Option<Api<'a>>,
    resources: Option<Vec<Resource<'a>>>,
    traffic: Option<Traffic>,
    /// A command's canonical text (shown as `unmapped.text` outside Datastore records).
    text: Option<&'a str>,
    message: String,
}

/// What a command contributes to its records (the command's own, its approvals', its
/// result's): class, activity and the class's objects.
struct CommandParts<'a> {
    class: Class,
    activity: (i64, &'a str),
    query: Option<QueryInfo<'a>>,
    http_request: Option<HttpRequest>,
    api: Option<Api<'a>>,
    resources: Option<Vec<Resource<'a>>>,
}

impl<'a> CommandParts<'a> {
    fn new(class: Class, activity: (i64, &'a str)) -> CommandParts<'a> {
        CommandParts {
            class,
            activity,
            query: None,
            http_request: None,
            api: None,
            resources: None,
        }
    }

    /// Into a record's shape, keeping `base`'s severity, decision and message.
    fn shape(self, text: Option<&'a str>, base: Shape<'a>) -> Shape<'a> {
        Shape {
            class: self.class,
            activity: self.activity,
            query: self.query,
            http_request: self.http_request,
            api: self.api,
            resources: self.resources,
            text,
            ..base
        }
    }
}

/// The parts of a command of `kind` (a SQL statement, an HTTP request, an MCP call, a
/// Kubernetes request, an SSH channel); `None` for kinds that are not commands.
fn command_parts<'a>(
    kind: &str,
    statement: Option<&'a str>,
    detail: &'a Value,
    session: Option<&'a SessionFacts>,
) -> Option<CommandParts<'a>> {
    let protocol = session.map_or("", |s| s.protocol.as_str());
    // The action when the protocol's own object lacks it (see reader::neutral).
    let action = || {
        crate::journal::reader::neutral(kind, detail, protocol)
            .map(|n| n.action)
            .unwrap_or_default()
    };
    let str_at = |object: &str, key: &str| {
        detail
            .get(object)
            .and_then(|o| o.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    Some(match kind {
        "statement" | "execute" | "function_call" | "cancel" => CommandParts {
            query: query_info(statement, detail),
            ..CommandParts::new(DATASTORE, sql_activity(kind, detail))
        },
        "http_request" => {
            let method = str_at("http", "method").map_or_else(action, str::to_owned);
            let activity = http_activity(&method);
            CommandParts {
                http_request: Some(HttpRequest {
                    http_method: method,
                    url: url(detail.get("http").unwrap_or(&Value::Null)),
                }),
                ..CommandParts::new(HTTP, activity)
            }
        }
        "mcp_call" => {
            let method = str_at("mcp", "method").unwrap_or_default();
            let activity = mcp_activity(method);
            let request_id = detail
                .get("mcp")
                .and_then(|m| m.get("request_id"))
                .filter(|id| !id.is_null())
                .map(|id| id.as_str().map_or_else(|| id.to_string(), str::to_owned));
            // The tool, resource or prompt acted on: its type from the method's family.
            let kind = match method.split('/').next() {
                Some("tools") => "tool",
                Some("resources") => "resource",
                Some("prompts") => "prompt",
                _ => "object",
            };
            let resources = objects(detail)
                .map(|name| Resource {
                    kind: kind.to_owned(),
                    name: Some(name),
                    namespace: None,
                })
                .collect::<Vec<_>>();
            CommandParts {
                api: Some(Api {
                    operation: str_at("mcp", "method").unwrap_or("unknown"),
                    service: Named {
                        name: session.and_then(|s| s.target.as_deref()).unwrap_or("mcp"),
                    },
                    version: None,
                    request: request_id.map(|uid| ApiRequest { uid }),
                    response: None,
                }),
                resources: (!resources.is_empty()).then_some(resources),
                ..CommandParts::new(API, activity)
            }
        }
        "kube_request" => {
            let verb = str_at("kube", "verb").unwrap_or_default();
            let group = str_at("kube", "api_group");
            let version = str_at("kube", "api_version");
            // kubectl's spelling: `deployments.apps/scale`.
            let kind = str_at("kube", "resource").map(|resource| {
                let mut kind = resource.to_owned();
                if let Some(group) = group {
                    kind.push('.');
                    kind.push_str(group);
                }
                if let Some(sub) = str_at("kube", "subresource") {
                    kind.push('/');
                    kind.push_str(sub);
                }
                kind
            });
            CommandParts {
                api: Some(Api {
                    operation: str_at("kube", "verb").unwrap_or("unknown"),
                    service: Named { name: "kubernetes" },
                    version: version.map(|v| match group {
                        Some(g) => format!("{g}/{v}"),
                        None => v.to_owned(),
                    }),
                    request: None,
                    response: None,
                }),
                resources: kind.map(|kind| {
                    vec![Resource {
                        kind,
                        name: str_at("kube", "name"),
                        namespace: str_at("kube", "namespace"),
                    }]
                }),
                ..CommandParts::new(API, kube_activity(verb))
            }
        }
        "ssh_channel" => CommandParts::new(SSH, (1, "Open")),
        _ => return None,
    })
}

/// The class of the session's protocol: for approvals, which do not carry their command's
/// kind. SQL and unknown protocols keep the Datastore class.
fn protocol_class(session: Option<&SessionFacts>) -> Class {
    match session.map(|s| s.protocol.as_str()) {
        Some("http" | "https") => HTTP,
        Some("kubernetes") => API,
        Some("ssh") => SSH,
        _ => DATASTORE,
    }
}

/// The strings of `detail.objects`.
fn objects(detail: &Value) -> impl Iterator<Item = &str> {
    detail
        .get("objects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// HTTP Activity's activity for a method (OCSF 1.3 `activity_id`: 1 Connect … 9 Patch).
fn http_activity(method: &str) -> (i64, &'static str) {
    match method.to_ascii_uppercase().as_str() {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        "PATCH" => (9, "Patch"),
        _ => (99, "Other"),
    }
}

/// API Activity's activity for a Kubernetes verb (1 Create, 2 Read, 3 Update, 4 Delete).
fn kube_activity(verb: &str) -> (i64, &'static str) {
    match verb {
        "create" => (1, "Create"),
        "get" | "list" | "watch" => (2, "Read"),
        "update" | "patch" => (3, "Update"),
        "delete" | "deletecollection" => (4, "Delete"),
        _ => (99, "Other"),
    }
}

/// API Activity's activity for an MCP method: listing and reading are reads; a tool call may
/// do anything, so it is Other (the policy's decision says what was allowed).
fn mcp_activity(method: &str) -> (i64, &'static str) {
    if method.ends_with("/list") || method == "resources/read" || method == "prompts/get" {
        (2, "Read")
    } else {
        (99, "Other")
    }
}

/// An OCSF `url` from the journal's `http` object (`scheme`, `host` with an optional port,
/// `path`, `query`).
fn url(http: &Value) -> Url {
    let text = |key: &str| {
        http.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (scheme, host, path, query) = (text("scheme"), text("host"), text("path"), text("query"));
    // `127.0.0.1:8080` and `[::1]:8080` have a port; `::1` alone is all host.
    let (hostname, port) = match host.and_then(|h| h.rsplit_once(':')) {
        Some((name, port)) if !name.is_empty() && (!name.contains(':') || name.ends_with(']')) => {
            (Some(name), port.parse::<u16>().ok())
        }
        _ => (host, None),
    };
    let mut url_string = String::new();
    if let Some(scheme) = scheme {
        url_string.push_str(scheme);
        url_string.push_str("://");
    }
    url_string.push_str(host.unwrap_or_default());
    url_string.push_str(path.unwrap_or_default());
    if let Some(query) = query {
        url_string.push('?');
        url_string.push_str(query);
    }
    Url {
        url_string,
        scheme: scheme.map(str::to_owned),
        hostname: hostname.map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned()),
        port,
        path: path.map(str::to_owned),
        query_string: query.map(str::to_owned),
    }
}

const INFORMATIONAL: (u8, &str) = (1, "Informational");
const LOW: (u8, &str) = (2, "Low");
const MEDIUM: (u8, &str) = (3, "Medium");

fn shape(e: &JournalEvent) -> Shape<'_> {
    let detail_str = |key: &str| e.detail.get(key).and_then(Value::as_str).map(str::to_owned);
    let base = Shape {
        class: DATASTORE,
        activity: (99, "Other"),
        severity: INFORMATIONAL,
        action: None,
        status: None,
        duration_ms: None,
        query: None,
        http_request: None,
        http_response: None,
        api: None,
        resources: None,
        traffic: None,
        text: None,
        message: e.kind.clone(),
    };
    let session = e.session.as_ref();
    let statement = e.statement.as_deref();
    // A command of any protocol: its class's objects, and the policy's decision.
    if let Some(mut parts) = command_parts(&e.kind, statement, &e.detail, session) {
        let (action, severity) = decision(e.decision.as_deref());
        if parts.class == SSH {
            parts.activity = match e.decision.as_deref() {
                Some("allow") | None => (1, "Open"),
                Some("review") => (99, "Other"),
                Some(_) => (5, "Refuse"),
            };
        }
        return parts.shape(
            statement,
            Shape {
                severity,
                action,
                message: decided_message(&e.kind, e.decision.as_deref(), e.rule.as_deref()),
                ..base
            },
        );
    }
    // Approvals name their command by seq only: their class is the session protocol's.
    let approval_parts = || match protocol_class(session) {
        DATASTORE => CommandParts {
            query: query_info(statement, &Value::Null),
            ..CommandParts::new(DATASTORE, sql_activity("statement", &Value::Null))
        },
        class => CommandParts::new(class, (99, "Other")),
    };
    match e.kind.as_str() {
        "approval" | "approval_request" => approval_parts().shape(
            statement,
            Shape {
                severity: LOW,
                action: Some((99, "Other", 14, "Delayed")),
                message: "held for approval".to_owned(),
                ..base
            },
        ),
        "approval_decision" => {
            let status = detail_str("status").unwrap_or_default();
            let approved = status == "approved";
            let by = detail_str("approver");
            approval_parts().shape(
                statement,
                Shape {
                    severity: if approved { LOW } else { MEDIUM },
                    action: Some(if approved {
                        (1, "Allowed", 8, "Approved")
                    } else {
                        (2, "Denied", 2, "Blocked")
                    }),
                    message: match (approved, by) {
                        (true, Some(by)) => format!("approved by {by}"),
                        (false, Some(by)) => format!("denied by {by}"),
                        _ => format!("approval {status}"),
                    },
                    ..base
                },
            )
        }
        "result" => {
            let result = e.detail.get("result").unwrap_or(&Value::Null);
            let text = |key: &str| result.get(key).and_then(Value::as_str).map(str::to_owned);
            let (sqlstate, error) = (text("sqlstate"), text("error"));
            let command = e.command.as_ref();
            let mut parts = command
                .and_then(|c| command_parts(&c.kind, c.statement.as_deref(), &c.detail, session))
                .unwrap_or_else(|| CommandParts {
                    query: command.and_then(|c| query_info(c.statement.as_deref(), &c.detail)),
                    ..CommandParts::new(DATASTORE, (4, "Query"))
                });
            // An HTTP status (HTTP, MCP, Kubernetes) or an SSH exec's exit status.
            let status = result.get("status").and_then(Value::as_i64);
            let failed = sqlstate.is_some()
                || error.is_some()
                || status.is_some_and(|s| if parts.class == SSH { s != 0 } else { s >= 400 });
            if parts.class == SSH {
                parts.activity = (2, "Close");
            }
            if let Some(api) = parts.api.as_mut() {
                api.response = status.map(|code| HttpResponse { code });
            }
            let code = sqlstate.or_else(|| status.map(|s| s.to_string()));
            parts.shape(
                command.and_then(|c| c.statement.as_deref()),
                Shape {
                    severity: INFORMATIONAL,
                    status: Some(if failed {
                        (2, "Failure", code, error)
                    } else {
                        (1, "Success", code, text("tag"))
                    }),
                    duration_ms: result
                        .get("duration_ms")
                        .and_then(Value::as_f64)
                        .map(|ms| ms.round() as i64),
                    http_response: status
                        .filter(|_| command.is_some_and(|c| c.kind == "http_request"))
                        .map(|code| HttpResponse { code }),
                    message: if failed {
                        "command failed"
                    } else {
                        "command completed"
                    }
                    .to_owned(),
                    ..base
                },
            )
        }
        "terminal" => {
            let bytes = e
                .detail
                .get("data")
                .and_then(Value::as_str)
                .map_or(0, |d| i64::try_from(d.len()).unwrap_or(i64::MAX));
            let input = detail_str("stream").as_deref() == Some("input");
            // A Kubernetes exec's terminal belongs with its API activity; anything else is an
            // SSH channel's.
            let (class, activity) = match protocol_class(session) {
                API => (API, (99, "Other")),
                _ => (SSH, (6, "Traffic")),
            };
            Shape {
                class,
                activity,
                traffic: Some(Traffic {
                    bytes_out: if input { bytes } else { 0 },
                    bytes_in: if input { 0 } else { bytes },
                    bytes,
                }),
                // A window size (`stream: "window"`) carries no text: zero bytes.
                message: format!(
                    "terminal {}",
                    match detail_str("stream").as_deref() {
                        Some("input") => "input",
                        Some("window") => "window",
                        _ => "output",
                    }
                ),
                ..base
            }
        }
        "auth" => {
            let ok = e.detail.get("ok").and_then(Value::as_bool);
            Shape {
                activity: (3, "Connect"),
                severity: if ok == Some(false) {
                    MEDIUM
                } else {
                    INFORMATIONAL
                },
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
            // A `session_open` carries the connection's decision in its detail.
            let decided = e.decision.clone().or_else(|| detail_str("decision"));
            let (action, severity) = decision(decided.as_deref());
            let refused = decided.as_deref().is_some_and(|d| d != "allow");
            Shape {
                class: NETWORK,
                activity: if refused { (5, "Refuse") } else { (1, "Open") },
                severity,
                action,
                message: decided_message("connection", decided.as_deref(), rule_of(e)),
                ..base
            }
        }
        "session_close" => {
            let outcome = detail_str("outcome").unwrap_or_default();
            let (activity, severity) = match outcome.as_str() {
                "closed" => ((2, "Close"), INFORMATIONAL),
                "refused" | "anomaly" => ((5, "Refuse"), MEDIUM),
                "upstream_failed" => ((4, "Fail"), LOW),
                // Closed by the gateway: a start-up never finished, or a session left idle.
                "timeout" => ((2, "Close"), LOW),
                "error" => ((3, "Reset"), LOW),
                _ => ((2, "Close"), INFORMATIONAL),
            };
            let number = |key: &str| e.detail.get(key).and_then(Value::as_i64);
            let traffic = match (number("bytes_up"), number("bytes_down")) {
                (None, None) => None,
                (up, down) => Some(Traffic {
                    bytes_out: up.unwrap_or(0),
                    bytes_in: down.unwrap_or(0),
                    bytes: up.unwrap_or(0) + down.unwrap_or(0),
                }),
            };
            // The session's start is immutable, so the duration is as stable as the record.
            let duration_ms = number("duration_ms").or_else(|| {
                let started = epoch_ms(&e.session.as_ref()?.started_at)?;
                Some((epoch_ms(&e.at)? - started).max(0))
            });
            Shape {
                class: NETWORK,
                activity,
                severity,
                duration_ms,
                traffic,
                message: format!(
                    "connection {}",
                    if outcome.is_empty() {
                        "closed"
                    } else {
                        &outcome
                    }
                ),
                ..base
            }
        }
        other => {
            let (action, _) = decision(e.decision.as_deref());
            let failure =
                other.contains("error") || other == "anomaly" || other.ends_with("_failed");
            Shape {
                activity: (99, other),
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

/// The rule that decided: the event's own, or (`session_open`) the one in its detail.
fn rule_of(e: &JournalEvent) -> Option<&str> {
    e.rule.as_deref().or_else(|| {
        (e.kind == "session_open")
            .then(|| e.detail.get("rule").and_then(Value::as_str))
            .flatten()
    })
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
fn sql_activity(kind: &str, detail: &Value) -> (i64, &'static str) {
    if kind == "cancel" {
        return (99, "Other");
    }
    let classes: Vec<&str> = detail
        .get("classes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let has = |names: &[&str]| classes.iter().any(|c| names.contains(c));
    if has(&["delete"]) {
        (7, "Delete")
    } else if has(&["update", "merge"]) {
        (2, "Update")
    } else if has(&["insert", "copy_from"]) {
        (5, "Write")
    } else {
        (4, "Query")
    }
}

fn query_info<'a>(statement: Option<&'a str>, detail: &'a Value) -> Option<QueryInfo<'a>> {
    Some(QueryInfo {
        query_string: statement?,
        name: detail
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty()),
    })
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

fn actor(s: &SessionFacts) -> Actor<'_> {
    Actor {
        user: User {
            uid: s.uid.to_string(),
            name: s.user.as_deref(),
        },
        process: Process {
            pid: s.pid,
            name: Some(s.comm.as_str()).filter(|c| !c.is_empty()),
            file: s.exe.as_deref().map(|path| ProcessFile {
                path,
                name: path.rsplit('/').next().unwrap_or(path),
            }),
            cmd_line: s.cmdline.as_deref(),
        },
        session: SessionRef {
            uid: s.id.to_string(),
        },
        app_name: s.unit.as_deref(),
    }
}

/// An `ip:port` (or `[v6]:port`) as an OCSF network endpoint; `None` for anything else.
fn endpoint(addr: &str) -> Option<Endpoint> {
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    Some(Endpoint {
        ip: addr.ip().to_string(),
        port: addr.port(),
    })
}

/// Result samples are rows the client received, and a terminal's `data` is what the agent
/// saw or typed (masked, but data all the same): a SIEM gets the shape of a result or a
/// terminal stream, not its contents.
fn strip_contents(detail: &Value) -> Cow<'_, Value> {
    let has_sample = |v: &Value| v.get("sample").is_some();
    let terminal_data = detail.get("channel_event").is_some() && detail.get("data").is_some();
    if !has_sample(detail) && !detail.get("result").is_some_and(has_sample) && !terminal_data {
        return Cow::Borrowed(detail);
    }
    let mut detail = detail.clone();
    if let Some(map) = detail.as_object_mut() {
        map.remove("sample");
        if terminal_data {
            map.remove("data");
        }
        if let Some(Value::Object(result)) = map.get_mut("result") {
            result.remove("sample");
        }
    }
    Cow::Owned(detail)
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn epoch_ms(at: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(at).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests;
