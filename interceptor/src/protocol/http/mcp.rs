//! MCP over streamable HTTP: the JSON-RPC 2.0 messages an agent POSTs to a tool server, read
//! into [`McpCall`]s for policy; the tool annotations the server lists; the refusals the
//! gateway answers with.
//!
//! Why this exists: an MCP server is driven by JSON-RPC messages inside ordinary HTTP POSTs,
//! so judging the POST as "POST /mcp" says nothing about what runs. Each request and
//! notification of a body (a batch included) becomes one command, judged on its own.
//!
//! What the gateway judges must be what the server runs, so reading is strict:
//! - a body that is not JSON, or whose JSON-RPC shape is not valid, is refused (the relay
//!   answers it), not forwarded for the server to interpret in its own way;
//! - a JSON object with the same key twice is refused anywhere in the body: `serde_json`
//!   keeps the last value, a server's parser may keep the first, and the gateway would then
//!   judge another tool, or other arguments, than the server runs;
//! - JSON that does not look like JSON-RPC (no `jsonrpc` and no `method` member) is not MCP:
//!   the relay judges the request as plain HTTP.
//!
//! Tool annotations (`readOnlyHint`…) are what the server says about its tools in its
//! `tools/list` answers; [`ToolRegistry`] keeps them per upstream, bounded, replaced by each
//! new listing and forgotten on `notifications/tools/list_changed`. A tool not listed has no
//! annotations, and so is never read-only.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    sync::{Arc, Mutex},
};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{value::RawValue, Map, Value};

use crate::command::{McpCall, ToolAnnotations};

/// The JSON-RPC error code of a refusal: in the range JSON-RPC leaves to implementations
/// (-32000 to -32099).
pub const REFUSED_CODE: i64 = -32001;

/// How many tools one upstream's registry keeps; tools listed beyond it stay unknown.
pub const MAX_TOOLS: usize = 4096;

/// The longest tool name the registry keeps (longer names stay unknown).
pub const MAX_TOOL_NAME: usize = 512;

/// How many upstreams [`Registries`] keeps; past it, the least recently created is dropped.
pub const MAX_UPSTREAMS: usize = 256;

/// Why a body cannot be judged as MCP. The relay refuses the request (and keeps the
/// connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    #[error("the body has {size} bytes, more than the {max} an MCP message may have")]
    TooLarge { size: usize, max: usize },
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    #[error("the body is ambiguous: {0}")]
    Ambiguous(String),
    #[error("the body is not a valid JSON-RPC message: {0}")]
    Invalid(String),
}

/// What a POST body holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// JSON that is not JSON-RPC (or not JSON of a message's shape): judge as plain HTTP.
    NotMcp,
    Mcp(Body),
}

/// The JSON-RPC messages of one body, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// The body was an array (a batch): answers go back as an array too.
    pub batch: bool,
    pub messages: Vec<Message>,
    /// The text of each message as sent (for forwarding part of a batch unchanged).
    raw: Vec<String>,
}

/// One JSON-RPC message from the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request: it has an id and expects an answer.
    Request {
        call: McpCall,
        /// For `tools/list`: the request names a `cursor` (a later page of the listing).
        continuation: bool,
    },
    /// A notification: no id, no answer.
    Notification { call: McpCall },
    /// The agent answering a request of the server (sampling, elicitation, roots).
    Response { id: Value, error: bool },
}

impl Message {
    /// The call, for requests and notifications.
    pub fn call(&self) -> Option<&McpCall> {
        match self {
            Message::Request { call, .. } | Message::Notification { call } => Some(call),
            Message::Response { .. } => None,
        }
    }
}

/// What the relay forwards once each call of a body was judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Everything: the body as it came.
    All,
    /// Only these messages (a batch, rebuilt from the allowed messages' own text).
    Part(Vec<u8>),
    /// Nothing: every message was refused.
    Nothing,
}

/// Reads a POST body (`application/json`) of at most `max` bytes.
pub fn read_body(body: &[u8], max: usize) -> Result<Reading, McpError> {
    if body.len() > max {
        return Err(McpError::TooLarge {
            size: body.len(),
            max,
        });
    }
    let doc = parse_strict(body)?;
    let (batch, items): (bool, Vec<&Value>) = match &doc {
        Value::Object(_) => (false, vec![&doc]),
        Value::Array(items) if !items.is_empty() => (true, items.iter().collect()),
        _ => return Ok(Reading::NotMcp),
    };
    let rpc = items.iter().filter(|v| looks_like_rpc(v)).count();
    if rpc == 0 {
        return Ok(Reading::NotMcp);
    }
    if rpc != items.len() {
        return Err(McpError::Invalid(
            "a batch mixes JSON-RPC messages with other values".to_owned(),
        ));
    }
    let messages = items
        .into_iter()
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    let mut ids = HashSet::new();
    for m in &messages {
        if let Message::Request { call, .. } = m {
            let id = call.request_id.as_ref().map(Value::to_string);
            if !ids.insert(id) {
                return Err(McpError::Ambiguous(
                    "two requests of the batch have the same id".to_owned(),
                ));
            }
        }
    }
    let raw = if batch {
        serde_json::from_slice::<Vec<&RawValue>>(body)
            .map_err(|e| McpError::Malformed(e.to_string()))?
            .into_iter()
            .map(|r| r.get().to_owned())
            .collect()
    } else {
        Vec::new()
    };
    Ok(Reading::Mcp(Body {
        batch,
        messages,
        raw,
    }))
}

impl Body {
    /// The calls (requests and notifications), in order.
    pub fn calls(&self) -> impl Iterator<Item = &McpCall> {
        self.messages.iter().filter_map(Message::call)
    }

    /// Gives each `tools/call` what `registry` knows of its tool.
    pub fn annotate(&mut self, registry: &ToolRegistry) {
        for m in &mut self.messages {
            if let Message::Request { call, .. } | Message::Notification { call } = m {
                if let Some(tool) = call.tool.as_deref() {
                    call.annotations = registry.annotations(tool);
                }
            }
        }
    }

    /// The ids of the `tools/list` requests, each with whether it asks for the first page
    /// (which replaces what the registry knows) or a later one (which adds to it).
    pub fn tool_lists(&self) -> Vec<(Value, bool)> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                Message::Request { call, continuation } if call.method == "tools/list" => {
                    call.request_id.clone().map(|id| (id, !continuation))
                }
                _ => None,
            })
            .collect()
    }

    /// What to forward when `allowed[i]` says whether message `i` may go on (responses of
    /// the agent included: the relay decides them too). A single message goes as it came.
    pub fn forward(&self, allowed: &[bool]) -> Forward {
        let allowed = |i: usize| allowed.get(i).copied().unwrap_or(false);
        let kept: Vec<usize> = (0..self.messages.len()).filter(|&i| allowed(i)).collect();
        if kept.is_empty() {
            return Forward::Nothing;
        }
        if kept.len() == self.messages.len() {
            return Forward::All;
        }
        let mut out = b"[".to_vec();
        for (n, i) in kept.into_iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(self.raw.get(i).map_or("null", String::as_str).as_bytes());
        }
        out.push(b']');
        Forward::Part(out)
    }
}

/// Why a call is refused, for the answer the agent gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What the agent reads (the policy's message, or why the body could not be judged).
    pub message: String,
    /// The rule that refused, if any.
    pub rule: Option<String>,
    /// The journal event that records the refusal.
    pub event: Option<i64>,
}

impl Refusal {
    fn text(&self) -> String {
        let mut text = format!("refused by the interceptor gateway: {}", self.message);
        if let Some(rule) = &self.rule {
            text.push_str(&format!(" (rule {rule}"));
            if let Some(event) = self.event {
                text.push_str(&format!(", journal event {event}"));
            }
            text.push(')');
        } else if let Some(event) = self.event {
            text.push_str(&format!(" (journal event {event})"));
        }
        text
    }
}

/// The answer to a refused message, or `None` when it gets none (a notification, or the
/// agent's own response).
///
/// A refused `tools/call` is answered as a tool result with `isError: true`: MCP reports tool
/// failures that way so the model reads them and can change course, and clients hand it on
/// as the tool's output. Any other refused request is a JSON-RPC error (code
/// [`REFUSED_CODE`]) with the rule and event in `error.data`.
pub fn refusal(message: &Message, why: &Refusal) -> Option<Value> {
    let Message::Request { call, .. } = message else {
        return None;
    };
    let id = call.request_id.clone().unwrap_or(Value::Null);
    let text = why.text();
    Some(if call.method == "tools/call" {
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {"content": [{"type": "text", "text": text}], "isError": true},
        })
    } else {
        error_response(id, &text, why)
    })
}

/// A JSON-RPC error answering `id` (the id is `null` when the body could not be read).
pub fn error_response(id: Value, text: &str, why: &Refusal) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": REFUSED_CODE,
            "message": text,
            "data": {"rule": why.rule, "event": why.event},
        },
    })
}

/// The body answering a POST: the answers as an array for a batch, else the one answer.
/// `None` when there is nothing to answer (only notifications and responses were refused:
/// the relay then answers 202 Accepted with no body, as a server does).
pub fn answer_body(answers: Vec<Value>, batch: bool) -> Option<Vec<u8>> {
    if answers.is_empty() {
        return None;
    }
    let value = match (batch, answers.len()) {
        (false, 1) => answers.into_iter().next().unwrap_or(Value::Null),
        _ => Value::Array(answers),
    };
    Some(value.to_string().into_bytes())
}

/// Whether a value is meant as a JSON-RPC message (the server would read it as one).
fn looks_like_rpc(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|o| o.contains_key("jsonrpc") || o.contains_key("method"))
}

fn invalid(why: impl Into<String>) -> McpError {
    McpError::Invalid(why.into())
}

/// One message, checked against JSON-RPC 2.0 as MCP uses it.
fn message(value: &Value) -> Result<Message, McpError> {
    let Some(o) = value.as_object() else {
        return Err(invalid("a message must be an object"));
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("`jsonrpc` must be \"2.0\""));
    }
    let id = o.get("id");
    let Some(method) = o.get("method") else {
        let Some(id) = id.filter(|i| i.is_string() || i.is_number() || i.is_null()) else {
            return Err(invalid("a response needs an id"));
        };
        return match (o.get("result"), o.get("error")) {
            (Some(_), None) => Ok(Message::Response {
                id: id.clone(),
                error: false,
            }),
            (None, Some(_)) => Ok(Message::Response {
                id: id.clone(),
                error: true,
            }),
            _ => Err(invalid(
                "a response has exactly one of `result` and `error`",
            )),
        };
    };
    let Some(method) = method.as_str().filter(|m| !m.is_empty()) else {
        return Err(invalid("`method` must be a non-empty string"));
    };
    if o.contains_key("result") || o.contains_key("error") {
        return Err(invalid("a request cannot also be a response"));
    }
    let params = match o.get("params") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => return Err(invalid("MCP `params` must be an object")),
    };
    let mut call = McpCall {
        method: method.to_owned(),
        ..McpCall::default()
    };
    let text = |key: &str| -> Result<String, McpError> {
        params
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| invalid(format!("{method} needs `params.{key}`, a string")))
    };
    let mut continuation = false;
    match method {
        "tools/call" => {
            call.tool = Some(text("name")?);
            call.arguments = match params.and_then(|p| p.get("arguments")) {
                None => None,
                Some(a @ Value::Object(_)) => Some(a.clone()),
                Some(_) => return Err(invalid("tools/call `arguments` must be an object")),
            };
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            call.uri = Some(text("uri")?);
        }
        "tools/list" => {
            continuation = params.is_some_and(|p| p.get("cursor").is_some_and(|c| !c.is_null()));
        }
        _ => {}
    }
    match id {
        None => Ok(Message::Notification { call }),
        Some(id) if id.is_string() || id.is_number() => {
            call.request_id = Some(id.clone());
            Ok(Message::Request { call, continuation })
        }
        Some(_) => Err(invalid("a request id must be a string or a number")),
    }
}

/// Parses JSON, refusing objects that give a key twice (anywhere in the document).
pub fn parse_strict(bytes: &[u8]) -> Result<Value, McpError> {
    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => McpError::Ambiguous(e.to_string()),
            _ => McpError::Malformed(e.to_string()),
        })
}

/// A JSON value read with duplicate keys refused.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("the key {key:?} is given twice")));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// How many session ids one upstream's registry keeps; past it, the oldest is forgotten (its
/// session-ending `DELETE` is then judged as any HTTP `DELETE`: reviewed by default).
pub const MAX_SESSIONS: usize = 1024;

/// The longest session id kept (MCP's are UUIDs or the like, a few dozen characters).
pub const MAX_SESSION_ID: usize = 256;

/// The gateway's name for MCP's session termination, an HTTP `DELETE` of the endpoint with the
/// session's `Mcp-Session-Id` (streamable HTTP has no JSON-RPC method for it): what policy's
/// `mcp_methods` matches and approvers read.
pub const TERMINATE_SESSION: &str = "session/terminate";

/// One upstream's tools, as its latest `tools/list` described them, and the session ids its
/// answers assigned.
#[derive(Debug, Default)]
pub struct ToolRegistry {
    tools: Mutex<HashMap<String, ToolAnnotations>>,
    /// Mirrored from the server's `Mcp-Session-Id` response headers, oldest first: only a
    /// `DELETE` naming one of these is read as a session's end. An id the agent makes up is
    /// not the server's, so a `DELETE` carrying it stays a plain HTTP `DELETE`.
    sessions: Mutex<VecDeque<String>>,
}

impl ToolRegistry {
    /// What the server said about `tool`; all `None` when it has not been listed.
    pub fn annotations(&self, tool: &str) -> ToolAnnotations {
        self.lock().get(tool).copied().unwrap_or_default()
    }

    /// How many tools are known.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every tool (the server said its list changed).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Takes a `tools/list` result (`{"tools": [...], "nextCursor": …}`): the first page
    /// replaces what was known, later pages add to it. Entries without a string `name` are
    /// skipped; hints that are not booleans stay unknown. Returns how many tools were read.
    pub fn learn(&self, result: &Value, first_page: bool) -> usize {
        let Some(tools) = result.get("tools").and_then(Value::as_array) else {
            return 0;
        };
        let mut known = self.lock();
        if first_page {
            known.clear();
        }
        let mut read = 0;
        for tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            if name.len() > MAX_TOOL_NAME || (known.len() >= MAX_TOOLS && !known.contains_key(name))
            {
                continue;
            }
            let hints = tool.get("annotations");
            let hint = |key: &str| hints.and_then(|h| h.get(key)).and_then(Value::as_bool);
            known.insert(
                name.to_owned(),
                ToolAnnotations {
                    read_only: hint("readOnlyHint"),
                    destructive: hint("destructiveHint"),
                    idempotent: hint("idempotentHint"),
                    open_world: hint("openWorldHint"),
                },
            );
            read += 1;
        }
        read
    }

    /// The server assigned (or confirmed) session `id` in an answer. An id longer than
    /// [`MAX_SESSION_ID`] is not kept (its `DELETE` stays plain HTTP).
    pub fn learn_session(&self, id: &str) {
        if id.len() > MAX_SESSION_ID {
            return;
        }
        let mut sessions = self.sessions_lock();
        if sessions.iter().any(|known| known == id) {
            return;
        }
        if sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back(id.to_owned());
    }

    /// Whether the server assigned session `id`.
    pub fn knows_session(&self, id: &str) -> bool {
        self.sessions_lock().iter().any(|known| known == id)
    }

    /// Session `id` is ending: a second `DELETE` of it is a plain HTTP `DELETE` again.
    pub fn forget_session(&self, id: &str) {
        self.sessions_lock().retain(|known| known != id);
    }

    fn sessions_lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ToolAnnotations>> {
        self.tools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The registries by upstream, and the order they were created in.
type ByUpstream = (HashMap<String, Arc<ToolRegistry>>, Vec<String>);

/// The registries of every upstream (`host:port` of the MCP server), bounded.
#[derive(Debug, Default)]
pub struct Registries {
    upstreams: Mutex<ByUpstream>,
}

impl Registries {
    /// The registry of `upstream`, created empty when new.
    pub fn of(&self, upstream: &str) -> Arc<ToolRegistry> {
        let mut guard = self
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if let Some(r) = map.get(upstream) {
            return r.clone();
        }
        if map.len() >= MAX_UPSTREAMS && !order.is_empty() {
            let oldest = order.remove(0);
            map.remove(&oldest);
        }
        let registry = Arc::new(ToolRegistry::default());
        map.insert(upstream.to_owned(), registry.clone());
        order.push(upstream.to_owned());
        registry
    }
}

/// Watches what a server answers to one POST (a JSON body, or each `data:` of an event
/// stream) for `tools/list` results to learn and `notifications/tools/list_changed`.
#[derive(Debug, Clone)]
pub struct ListWatch {
    registry: Arc<ToolRegistry>,
    /// The ids of the `tools/list` requests of the POST, with "first page".
    lists: Vec<(Value, bool)>,
}

impl ListWatch {
    pub fn new(registry: Arc<ToolRegistry>, lists: Vec<(Value, bool)>) -> ListWatch {
        ListWatch { registry, lists }
    }

    /// The upstream's registry, for what the answer's headers say (its session id).
    pub fn registry(&self) -> &ToolRegistry {
        &self.registry
    }

    /// Looks at one JSON document the server sent (a message or a batch of them).
    pub fn observe(&self, doc: &Value) {
        let items = match doc {
            Value::Array(items) => items.as_slice(),
            other => std::slice::from_ref(other),
        };
        for item in items {
            if item.get("method").and_then(Value::as_str)
                == Some("notifications/tools/list_changed")
            {
                self.registry.clear();
                continue;
            }
            let (Some(id), Some(result)) = (item.get("id"), item.get("result")) else {
                continue;
            };
            if let Some((_, first)) = self.lists.iter().find(|(want, _)| want == id) {
                self.registry.learn(result, *first);
            }
        }
    }
}

#[cfg(test)]
mod tests;
