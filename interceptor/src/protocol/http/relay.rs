//! One request, from the agent's head to the end of the upstream's body.
//!
//! Why this exists: this is where a request becomes a command and the gate closes or opens.
//! The order is fixed: the body is read whole (within the target's `max_message_bytes`) so
//! that what is judged is complete; the request is read once ([`super::request`]); the hooks
//! judge and journal it; a held request waits for its approver; only then is the credential
//! header put in and the request sent. Every refusal is an HTTP answer with an
//! `application/problem+json` body naming the rule and the journal event, and the connection
//! stays usable, except when the agent sent more than the gateway reads (413: the rest of the
//! body is still on the wire) or the connection-level refusal.
//!
//! A POST whose body is JSON-RPC (MCP over streamable HTTP, [`super::mcp`]) is judged by its
//! messages instead: each request and notification is one `mcp_call` command (a batch is
//! judged call by call, with one journal commit), with the tool annotations the endpoint's
//! `tools/list` answers taught the gateway. The POST itself is then not an `http_request`
//! event: one event per call, so nothing is journaled twice. Refused calls are answered in
//! MCP's own form (a tool result with `isError: true`, or a JSON-RPC error); a body that claims
//! JSON-RPC but cannot be read unambiguously is refused (fail closed).
//!
//! Response bodies stream through ([`Reported`]): server-sent events and long downloads are
//! never buffered whole. When the session masks bodies ([`Hooks::body_masking`]) they pass
//! through a [`ResponseMasker`]: a JSON body is masked whole before its head is sent (its
//! `Content-Length` is the masked length, and one the gateway cannot mask is a 502); an event
//! stream or text is masked as it flows (a failure then cuts the stream). MCP answers are also
//! watched for `tools/list` results. Their byte count, status and masked counts are the
//! command's result.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _, Full, Limited};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::request::Parts,
    Method, Request, Response, StatusCode, Version,
};
use serde_json::json;
use tokio::sync::{mpsc, Notify};

use super::{
    body::{self as masking, BodyError, Framing, Limits, ResponseMasker},
    mcp::{self, ListWatch},
    request,
    upstream::Upstream,
};
use crate::{
    command::{
        Command, CommandKind, CommandResult, EventId, HookError, Hooks, HttpRequest, McpCall,
        Operation, Verdict,
    },
    protocol::{kubernetes, Counters, Dial, Refusal, RefusalKind},
    target::{Credentials, Target},
};

/// How long a session reuses the credential it read (see [`Relay::credential`]).
const CREDENTIAL_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// The header of streamable HTTP that names an MCP session (assigned by the server).
const MCP_SESSION_ID: &str = "mcp-session-id";

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What the agent receives: the upstream's streamed body, or one the gateway wrote.
pub type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// The result of a command whose response has ended (or was cut short), for the session's
/// task to hand to [`Hooks::result`] (response bodies outlive the request's future).
pub struct Report {
    pub event: EventId,
    pub result: CommandResult,
}

/// The per-session state every request of the connection shares.
pub struct Relay<'a, H: Hooks, D: Dial> {
    pub hooks: &'a H,
    pub target: &'a Target,
    /// The agent's leg: `http` or `https`.
    pub scheme: &'static str,
    /// A Kubernetes target: requests are read as the API server reads them
    /// ([`crate::protocol::kubernetes`]) and judged as `kube_request` commands.
    pub kube: bool,
    pub counters: &'a Counters,
    pub upstream: Upstream<'a, D>,
    /// Set when the session is refused: the first request hears why, then the connection ends.
    pub refusal: Option<Refusal>,
    /// The tool annotations learned per MCP endpoint (shared by all sessions).
    pub registries: &'a mcp::Registries,
    pub reports: mpsc::UnboundedSender<Report>,
    /// Asks the session to take no more requests (after a 413 or a malformed body).
    pub shutdown: &'a Notify,
    /// An upgrade the upstream accepted: once the 101 is written, the session relays bytes.
    pub tunnel: std::sync::Mutex<Option<Tunnel>>,
    /// The target's credential header value and when it was read: kept for the session's
    /// requests of the next [`CREDENTIAL_FRESH_FOR`], then read again, so a rotated secret is
    /// in use within a second on a kept-alive connection too. Reading it for every request
    /// cost 5% of the gateway's CPU at 9k requests/s (open, read, close). A failed read is
    /// not kept.
    pub credential: std::sync::Mutex<Option<(HeaderValue, Instant)>>,
}

/// A switched upstream connection waiting for the agent's side of the switch.
pub struct Tunnel {
    pub upstream: hyper::upgrade::OnUpgrade,
    /// The upgrade request's command.
    pub event: EventId,
    pub protocol: String,
    pub started: Instant,
    /// A Kubernetes exec, attach or port-forward, and how the API server framed it:
    /// relayed frame by frame (exec and attach masked and recorded); `None` for any other
    /// upgrade, spliced as bytes.
    pub stream: Option<(kubernetes::exec::Channels, kubernetes::headers::Framing)>,
}

impl<H: Hooks, D: Dial> Relay<'_, H, D> {
    pub fn record(&self, report: Report) {
        self.hooks.result(report.event, &report.result);
    }

    /// Answers one request. Never fails: every error is an HTTP answer.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<ResBody>, Infallible> {
        Ok(match self.answer(request).await {
            Ok(response) => response,
            Err(problem) if self.kube => problem.kube_status().response(),
            Err(problem) => problem.response(),
        })
    }

    async fn answer(&self, request: Request<Incoming>) -> Result<Response<ResBody>, Problem> {
        if let Some(refusal) = &self.refusal {
            self.shutdown.notify_one();
            return Err(match refusal.kind {
                RefusalKind::Policy => Problem::new(
                    StatusCode::FORBIDDEN,
                    "connection-refused",
                    "Connection refused by policy",
                    format!(
                        "interceptor: target {:?} is unavailable: {}",
                        self.target.name, refusal.message
                    ),
                ),
                RefusalKind::TooManySessions => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too-many-sessions",
                    "Too many sessions",
                    format!("interceptor: {}", refusal.message),
                ),
            }
            .closing());
        }
        let (parts, body) = request.into_parts();
        let body = self.read_body(&parts, body).await?;
        // A CONNECT tunnel carries bytes no command describes: always refused (an HTTP/2
        // extended CONNECT, HTTP/2's WebSocket, included). An upgrade is judged like any
        // request, with the protocol it asks for; an h2c offer is simply not taken (the
        // request is answered in HTTP/1.1).
        if parts.method == Method::CONNECT {
            self.refused("connect", &parts);
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "upgrade-refused",
                "Tunnels are refused",
                "interceptor: CONNECT tunnels are not relayed".to_owned(),
            ));
        }
        let upgrade = self.upgrade(&parts)?;
        let mut described = request::describe(&parts, self.scheme).map_err(|e| {
            self.refused("ambiguous", &parts);
            Problem::new(
                StatusCode::BAD_REQUEST,
                "ambiguous-request",
                "Request refused: it can be read more than one way",
                format!("interceptor: {e}"),
            )
        })?;
        described.request.upgrade.clone_from(&upgrade);
        if self.kube {
            return self.kube(parts, described, body, upgrade).await;
        }
        if parts.method == Method::POST && upgrade.is_none() {
            match self.read_mcp(&parts, &body) {
                Ok(Some(calls)) => return self.mcp(parts, described, body, calls).await,
                Ok(None) => {}
                Err(answer) => {
                    let body = Some(answer.to_string().into_bytes());
                    return Ok(rpc_answer(StatusCode::BAD_REQUEST, body));
                }
            }
        }
        let termination = self.mcp_termination(&parts, &described, &body, upgrade.is_some());
        let text = match &termination {
            Some(_) => mcp::TERMINATE_SESSION.to_owned(),
            None => described.request.canonical(),
        };
        let command = match &termination {
            // Judged as what it is to the server: the end of an MCP session it assigned.
            Some((call, _)) => Command {
                kind: CommandKind::McpCall,
                text: &text,
                params: 0,
                name: None,
                operation: Operation::Mcp(call),
            },
            None => Command {
                kind: CommandKind::HttpRequest,
                text: &text,
                params: 0,
                name: None,
                operation: Operation::Http(&described.request),
            },
        };
        let (event, rule) = self.judge(&command).await?;
        if upgrade.is_some() {
            if self.hooks.body_masking().is_some() {
                // Frames are not masked: under masking an allowed upgrade fails closed.
                let message = "interceptor: this session masks responses and an upgraded \
                               stream cannot be masked; upgrades are refused under masking";
                self.deny_result(event, message);
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "upgrade-refused",
                    "Upgrade refused under masking",
                    format!("{message} (journal event {})", event.0),
                )
                .with_decision(rule.as_deref(), event));
            }
            return self.switch(parts, described, event, None).await;
        }
        if let Some((_, (registry, id))) = &termination {
            registry.forget_session(id);
        }
        self.forward(parts, described, body, vec![event], None, false)
            .await
    }

    /// Judges and journals one command; waits for its approver when held. Returns its event
    /// and the deciding rule when it may go on; a refusal is the answer otherwise.
    async fn judge(&self, command: &Command<'_>) -> Result<(EventId, Option<String>), Problem> {
        let decision = self.hooks.request(command).await.map_err(journal_down)?;
        let event = decision.event;
        let verdict = match decision.verdict {
            Verdict::Hold { id, .. } => {
                let verdict = self.hooks.wait_for_approval(&id).await;
                if let Verdict::Deny { message } = &verdict {
                    self.deny_result(event, message);
                    return Err(Problem::new(
                        StatusCode::FORBIDDEN,
                        "approval-denied",
                        "Request denied by an approver",
                        format!("{message} (approval {id}, journal event {})", event.0),
                    )
                    .with("approval", json!(id))
                    .with_decision(decision.rule.as_deref(), event));
                }
                verdict
            }
            verdict => verdict,
        };
        if let Verdict::Deny { message } = verdict {
            self.deny_result(event, &message);
            let rule = decision.rule.as_deref().unwrap_or("(no rule matched)");
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "policy-denied",
                "Request denied by policy",
                format!("{message} (rule {rule}, journal event {})", event.0),
            )
            .with_decision(decision.rule.as_deref(), event));
        }
        Ok((event, decision.rule))
    }

    /// A Kubernetes API request: read as the API server reads it, judged as a
    /// `kube_request`, then forwarded asking for JSON (so masking can read every answer), or,
    /// for an approved exec, switched to a recorded stream. A watch's answer is masked event
    /// by event as it streams.
    async fn kube(
        &self,
        mut parts: Parts,
        described: request::Described,
        body: Bytes,
        upgrade: Option<String>,
    ) -> Result<Response<ResBody>, Problem> {
        let kube = kubernetes::describe(
            &described.method,
            &described.request.path,
            described.request.query.as_deref(),
            &mut parts.headers,
            &body,
            upgrade.as_deref(),
        )
        .map_err(|e| {
            self.hooks.note(
                "kube_refused",
                json!({ "reason": e.reason(), "method": parts.method.as_str(), "detail": e.to_string() }),
            );
            let status = match e {
                kubernetes::Refused::Impersonation(_) | kubernetes::Refused::Stream => {
                    StatusCode::FORBIDDEN
                }
                _ => StatusCode::BAD_REQUEST,
            };
            Problem::new(
                status,
                "kubernetes-refused",
                "Request refused by the gateway",
                format!("interceptor: {e}"),
            )
        })?;
        let text = kube.canonical();
        let command = Command {
            kind: CommandKind::KubeRequest,
            text: &text,
            params: 0,
            name: None,
            operation: Operation::Kubernetes(&kube),
        };
        let (event, _) = self.judge(&command).await?;
        if upgrade.is_some() {
            let channels = kubernetes::exec::Channels::of_verb(&kube.verb);
            return self.switch(parts, described, event, Some(channels)).await;
        }
        kubernetes::headers::force_json(&mut parts.headers);
        let watch = kube.verb == "watch";
        self.forward(parts, described, body, vec![event], None, watch)
            .await
    }

    /// A `DELETE` that ends an MCP session: no body, no query, exactly one `Mcp-Session-Id`,
    /// and that id one the server assigned at this endpoint (mirrored from its answers, see
    /// [`mcp::ToolRegistry::learn_session`]). Anything else is an ordinary HTTP `DELETE`.
    fn mcp_termination(
        &self,
        parts: &Parts,
        described: &request::Described,
        body: &Bytes,
        upgrade: bool,
    ) -> Option<(McpCall, (Arc<mcp::ToolRegistry>, String))> {
        if parts.method != Method::DELETE
            || upgrade
            || !body.is_empty()
            || described.request.query.is_some()
        {
            return None;
        }
        let mut ids = parts.headers.get_all(MCP_SESSION_ID).iter();
        let id = ids.next()?.to_str().ok()?;
        if ids.next().is_some() {
            return None;
        }
        let registry = self.registries.of(&self.endpoint(described));
        if !registry.knows_session(id) {
            return None;
        }
        let call = McpCall {
            method: mcp::TERMINATE_SESSION.to_owned(),
            tool: None,
            uri: None,
            arguments: None,
            request_id: None,
            annotations: Default::default(),
        };
        Some((call, (registry, id.to_owned())))
    }

    /// The name MCP state (tool annotations, session ids) is kept under: the target, the host
    /// and the path, so two endpoints of one server are told apart.
    fn endpoint(&self, described: &request::Described) -> String {
        format!(
            "{} {}{}",
            self.target.name, described.request.host, described.request.path
        )
    }

    /// The protocol an `Upgrade` request asks for (`None`: an ordinary request). Refused
    /// before judging: an upgrade on an HTTP/2 leg (no such thing), several protocols offered
    /// at once (which would be chosen is the upstream's say), a name that is not a token.
    fn upgrade(&self, parts: &Parts) -> Result<Option<String>, Problem> {
        if !upgrade_asked(&parts.headers) {
            return Ok(None);
        }
        let offered: Vec<&str> = parts
            .headers
            .get_all(header::UPGRADE)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.eq_ignore_ascii_case("h2c"))
            .collect();
        let refuse = |reason: &'static str, detail: &str| {
            self.refused(reason, parts);
            Problem::new(
                StatusCode::FORBIDDEN,
                "upgrade-refused",
                "Upgrade refused",
                format!("interceptor: {detail}"),
            )
        };
        if parts.version != Version::HTTP_11 {
            return Err(refuse(
                "upgrade_version",
                "upgrades are relayed on HTTP/1.1 connections only",
            ));
        }
        let [one] = offered.as_slice() else {
            return Err(refuse(
                "upgrade_ambiguous",
                "offer one upgrade protocol at a time",
            ));
        };
        let Some(protocol) = HttpRequest::upgrade_protocol(one) else {
            return Err(refuse(
                "upgrade_ambiguous",
                "the upgrade protocol is not a token",
            ));
        };
        Ok(Some(protocol))
    }

    /// An allowed upgrade: sent on an upstream connection of its own. A 101 is passed on and
    /// the session becomes the stream once hyper has written it ([`Relay::tunnel`] is taken
    /// by [`super::serve`]); any other answer is relayed as the request's response.
    async fn switch(
        &self,
        parts: Parts,
        described: request::Described,
        event: EventId,
        channels: Option<kubernetes::exec::Channels>,
    ) -> Result<Response<ResBody>, Problem> {
        let protocol = described.request.upgrade.clone().unwrap_or_default();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        for name in [header::HOST, header::CONTENT_LENGTH, header::EXPECT] {
            headers.remove(name);
        }
        self.inject_credential(&mut headers, event)?;
        let uri: hyper::Uri = described.path_and_query.parse().map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "ambiguous-request",
                "Request refused: its target cannot be rebuilt",
                "interceptor: the normalised request target is not a valid URI".to_owned(),
            )
        })?;
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = described.method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        let set = request.headers_mut();
        if let Ok(host) = HeaderValue::from_str(&described.request.host) {
            set.insert(header::HOST, host);
        }
        set.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        // The protocol was read without case; SPDY is sent as its peers spell it.
        let spelled = if protocol == "spdy/3.1" {
            "SPDY/3.1"
        } else {
            &protocol
        };
        if let Ok(value) = HeaderValue::from_str(spelled) {
            set.insert(header::UPGRADE, value);
        }
        let started = Instant::now();
        let owed = Owed::new(&self.counters.owed);
        let sent = self.upstream.send_upgrade(request).await;
        drop(owed);
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                let detail = format!("interceptor: the upstream did not answer: {e}");
                self.bad_gateway(&[event], started, &detail);
                return Err(Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream-unavailable",
                    "The upstream did not answer",
                    detail,
                ));
            }
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Declined: an ordinary answer, relayed (and reported) as any response is.
            let (mut head, body) = response.into_parts();
            strip_hop_by_hop(&mut head.headers);
            let body = Reported {
                inner: body,
                masker: None,
                done: false,
                bytes: 0,
                pending: Some((vec![event], started, head.status.as_u16())),
                reports: self.reports.clone(),
            };
            return Ok(Response::from_parts(head, body.boxed_unsync()));
        }
        let stream = match channels {
            None => None,
            Some(channels) => {
                let port_forward = channels == kubernetes::exec::Channels::PortForward;
                match kubernetes::headers::switched(&protocol, response.headers(), port_forward) {
                    Some(framing) => Some((channels, framing)),
                    None => {
                        // The server switched to something the gateway did not offer: it
                        // could not be read, so it is not relayed (fail closed).
                        let detail = "interceptor: the API server switched to a stream \
                                      protocol the gateway did not offer"
                            .to_owned();
                        self.bad_gateway(&[event], started, &detail);
                        return Err(Problem::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream-protocol",
                            "The upstream's stream protocol cannot be read",
                            detail,
                        ));
                    }
                }
            }
        };
        let switched = hyper::upgrade::on(&mut response);
        let (mut head, _) = response.into_parts();
        let chosen = head.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut head.headers);
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(chosen) = chosen {
            head.headers.insert(header::UPGRADE, chosen);
        }
        if let Ok(mut slot) = self.tunnel.lock() {
            *slot = Some(Tunnel {
                upstream: switched,
                event,
                protocol,
                started,
                stream,
            });
        }
        let empty = Full::new(Bytes::new()).map_err(|never| match never {});
        Ok(Response::from_parts(head, empty.boxed_unsync()))
    }

    /// The MCP messages of a POST body: `None` when it is not JSON-RPC (judged as plain
    /// HTTP). A body that claims JSON-RPC (a JSON content type or the `jsonrpc` member) but
    /// is malformed, ambiguous (a key twice) or not valid JSON-RPC is answered here with a
    /// JSON-RPC error (HTTP 400), never forwarded.
    fn read_mcp(
        &self,
        parts: &Parts,
        body: &Bytes,
    ) -> Result<Option<mcp::Body>, serde_json::Value> {
        let json_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| masking::kind_of(Some(ct)) == masking::Kind::Json);
        let claims = memchr::memmem::find(body, b"jsonrpc").is_some();
        if !json_type && !claims {
            return Ok(None);
        }
        match mcp::read_body(body, self.target.max_message_bytes) {
            Ok(mcp::Reading::NotMcp) => Ok(None),
            Ok(mcp::Reading::Mcp(calls)) => Ok(Some(calls)),
            Err(e) if claims || matches!(e, mcp::McpError::Invalid(_)) => {
                self.refused("mcp_unreadable", parts);
                let why = mcp::Refusal {
                    message: e.to_string(),
                    rule: None,
                    event: None,
                };
                let text = format!("refused by the interceptor gateway: {e}");
                Err(mcp::error_response(serde_json::Value::Null, &text, &why))
            }
            Err(_) => Ok(None),
        }
    }

    /// An MCP POST: each call judged (one commit), held ones waited for together, refused
    /// ones answered in MCP's form; the body forwarded when every message may go on.
    async fn mcp(
        &self,
        parts: Parts,
        described: request::Described,
        raw: Bytes,
        mut calls: mcp::Body,
    ) -> Result<Response<ResBody>, Problem> {
        let registry = self.registries.of(&self.endpoint(&described));
        calls.annotate(&registry);
        let texts: Vec<String> = calls
            .calls()
            .map(|c| Operation::Mcp(c).canonical())
            .collect();
        let commands: Vec<Command<'_>> = calls
            .calls()
            .zip(&texts)
            .map(|(call, text)| Command {
                kind: CommandKind::McpCall,
                text,
                params: 0,
                name: None,
                operation: Operation::Mcp(call),
            })
            .collect();
        if commands.is_empty() {
            // Only the agent's answers to the server's own requests (sampling, elicitation):
            // nothing to judge, but the journal knows they went.
            self.hooks.note(
                "mcp_responses",
                json!({ "count": calls.messages.len(), "path": described.request.path }),
            );
        }
        let decisions = if commands.is_empty() {
            Vec::new()
        } else {
            self.hooks
                .request_all(&commands)
                .await
                .map_err(journal_down)?
        };
        drop(commands);
        let verdicts = join_all(decisions.iter().map(|d| async move {
            match &d.verdict {
                Verdict::Hold { id, .. } => match self.hooks.wait_for_approval(id).await {
                    Verdict::Deny { message } => Verdict::Deny {
                        message: format!("held, then refused: {message}"),
                    },
                    verdict => verdict,
                },
                verdict => verdict.clone(),
            }
        }))
        .await;
        // Which message each decision is about: the calls, in order.
        let at: Vec<usize> = (0..calls.messages.len())
            .filter(|&i| calls.messages.get(i).is_some_and(|m| m.call().is_some()))
            .collect();
        let mut allowed = vec![true; calls.messages.len()];
        let mut answers = Vec::new();
        for ((decision, verdict), &i) in decisions.iter().zip(&verdicts).zip(&at) {
            if let Verdict::Deny { message } = verdict {
                if let Some(slot) = allowed.get_mut(i) {
                    *slot = false;
                }
                self.refuse_result(decision.event, None, message);
                let why = mcp::Refusal {
                    message: message.clone(),
                    rule: decision.rule.clone(),
                    event: Some(decision.event.0),
                };
                if let Some(answer) = calls.messages.get(i).and_then(|m| mcp::refusal(m, &why)) {
                    answers.push(answer);
                }
            }
        }
        let sent: Vec<EventId> = decisions
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| matches!(v, Verdict::Allow))
            .map(|(d, _)| d.event)
            .collect();
        match calls.forward(&allowed) {
            mcp::Forward::All => {
                let watch = ListWatch::new(registry, calls.tool_lists());
                self.forward(parts, described, raw, sent, Some(watch), false)
                    .await
            }
            // Part of a batch refused: the rest is not sent either (the answers of the
            // upstream and of the gateway would have to be merged into one response).
            mcp::Forward::Part(_) | mcp::Forward::Nothing => {
                let not_sent = "not sent: another message of its batch was refused";
                for ((decision, verdict), &i) in decisions.iter().zip(&verdicts).zip(&at) {
                    if !matches!(verdict, Verdict::Allow) {
                        continue;
                    }
                    self.refuse_result(decision.event, None, not_sent);
                    let why = mcp::Refusal {
                        message: not_sent.to_owned(),
                        rule: None,
                        event: Some(decision.event.0),
                    };
                    if let Some(answer) = calls.messages.get(i).and_then(|m| mcp::refusal(m, &why))
                    {
                        answers.push(answer);
                    }
                }
                Ok(rpc_answer(
                    StatusCode::OK,
                    mcp::answer_body(answers, calls.batch),
                ))
            }
        }
    }

    /// The whole request body, within the target's limit. Too large: 413 and the connection
    /// ends (the rest is still on the wire); a broken body ends the connection too.
    async fn read_body(&self, parts: &Parts, body: Incoming) -> Result<Bytes, Problem> {
        let limit = self.target.max_message_bytes;
        let too_large = || {
            self.refused("too_large", parts);
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Request body too large",
                format!(
                    "interceptor: request bodies are limited to {limit} bytes (max_message_bytes)"
                ),
            )
            .closing()
        };
        if body.size_hint().lower() > limit as u64 {
            self.shutdown.notify_one();
            return Err(too_large());
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                self.shutdown.notify_one();
                Err(too_large())
            }
            Err(e) => {
                self.shutdown.notify_one();
                self.refused("malformed_body", parts);
                Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "Malformed request body",
                    format!("interceptor: {e}"),
                )
                .closing())
            }
        }
    }

    async fn forward(
        &self,
        parts: Parts,
        described: request::Described,
        body: Bytes,
        events: Vec<EventId>,
        watch: Option<ListWatch>,
        json_lines: bool,
    ) -> Result<Response<ResBody>, Problem> {
        let event = events.first().copied().unwrap_or(EventId(0));
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        for name in [header::HOST, header::CONTENT_LENGTH, header::EXPECT] {
            headers.remove(name);
        }
        let body_masking = self.hooks.body_masking();
        if body_masking.is_some() || watch.is_some() {
            // Uncompressed and whole, so the gateway can read (and mask) the answer.
            masking::request_headers(&mut headers);
        }
        self.inject_credential(&mut headers, event)?;
        let host = described.request.host.clone();
        let unreadable = |_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "ambiguous-request",
                "Request refused: its target cannot be rebuilt",
                "interceptor: the normalised request target is not a valid URI".to_owned(),
            )
        };
        let origin: hyper::Uri = described.path_and_query.parse().map_err(unreadable)?;
        let absolute: hyper::Uri = format!("https://{host}{}", described.path_and_query)
            .parse()
            .map_err(unreadable)?;
        let method = described.method.clone();
        let head_only = method == Method::HEAD;
        let build = |h2: bool| {
            let mut request = Request::new(Full::new(body));
            *request.method_mut() = method;
            *request.headers_mut() = headers;
            if h2 {
                *request.version_mut() = Version::HTTP_2;
                *request.uri_mut() = absolute;
            } else {
                *request.version_mut() = Version::HTTP_11;
                *request.uri_mut() = origin;
                if let Ok(value) = HeaderValue::from_str(&host) {
                    request.headers_mut().insert(header::HOST, value);
                }
            }
            request
        };
        let started = Instant::now();
        let owed = Owed::new(&self.counters.owed);
        let sent = self.upstream.send(build).await;
        drop(owed);
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                let detail = format!("interceptor: the upstream did not answer: {e}");
                self.bad_gateway(&events, started, &detail);
                return Err(Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream-unavailable",
                    "The upstream did not answer",
                    detail,
                ));
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(watch) = &watch {
            // An MCP answer: the session it names is the server's, so its `DELETE` later is
            // that session's end.
            if let Some(id) = parts
                .headers
                .get(MCP_SESSION_ID)
                .and_then(|v| v.to_str().ok())
            {
                watch.registry().learn_session(id);
            }
        }
        let status = parts.status;
        let bodiless = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let masker = if bodiless || (body_masking.is_none() && watch.is_none()) {
            None
        } else {
            // A header that is not text cannot be trusted to describe the body: unreadable.
            let text = |name| {
                parts
                    .headers
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap_or("application/x-unreadable"))
            };
            // A Kubernetes watch is a stream of JSON objects, one a line, whatever its
            // content type says: masked object by object as it flows, never buffered whole.
            let content_type = if json_lines {
                Some(masking::JSON_LINES)
            } else {
                text(header::CONTENT_TYPE)
            };
            match ResponseMasker::new(
                body_masking,
                watch,
                content_type,
                text(header::CONTENT_ENCODING),
                Limits::default(),
            ) {
                Ok(masker) => Some(masker),
                Err(e) => return Err(self.unmaskable(&events, started, &e)),
            }
        };
        if let Some(masker) = &masker {
            masking::response_headers(&mut parts.headers, masker);
        }
        let framing = masker.as_ref().map(ResponseMasker::framing);
        let body = Reported {
            inner: body,
            masker,
            done: false,
            bytes: 0,
            pending: Some((events.clone(), started, status.as_u16())),
            reports: self.reports.clone(),
        };
        if framing != Some(Framing::Known) {
            return Ok(Response::from_parts(parts, body.boxed_unsync()));
        }
        // A masked JSON body: whole before its head, so its length is known and a body the
        // gateway cannot mask is a 502 rather than a cut stream. Its result is reported as
        // it ends.
        match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                masking::set_length(&mut parts.headers, bytes.len());
                let body = Full::new(bytes).map_err(|never| match never {});
                Ok(Response::from_parts(parts, body.boxed_unsync()))
            }
            Err(e) => Err(Problem::new(
                StatusCode::BAD_GATEWAY,
                "unmaskable-response",
                "The response cannot be masked",
                format!("interceptor: {e}; nothing of it was sent"),
            )),
        }
    }

    /// The target's credential header in place of whatever the agent sent under that name.
    fn inject_credential(&self, headers: &mut HeaderMap, event: EventId) -> Result<(), Problem> {
        if self.kube {
            // Whatever the agent sent as its own login never goes upstream.
            headers.remove(header::AUTHORIZATION);
            let value =
                kubernetes::authorization(self.target).map_err(|_| self.no_secret(event))?;
            if let Some(value) = value {
                headers.insert(header::AUTHORIZATION, value);
            }
            return Ok(());
        }
        if let Some(Credentials::Http { header, value }) = &self.target.credentials {
            // The agent's own value never goes upstream, whatever the secret read gives.
            let name =
                HeaderName::from_bytes(header.as_bytes()).map_err(|_| self.no_secret(event))?;
            headers.remove(&name);
            let mut kept = self
                .credential
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let secret = match &*kept {
                Some((secret, read)) if read.elapsed() < CREDENTIAL_FRESH_FOR => secret.clone(),
                _ => {
                    *kept = None;
                    let mut secret = value
                        .read()
                        .ok()
                        .and_then(|v| HeaderValue::from_str(&v).ok())
                        .ok_or_else(|| self.no_secret(event))?;
                    secret.set_sensitive(true);
                    kept.insert((secret, Instant::now())).0.clone()
                }
            };
            headers.insert(name, secret);
        }
        Ok(())
    }

    /// Records a 502 (nothing, or nothing readable, came back) for each event.
    fn bad_gateway(&self, events: &[EventId], started: Instant, detail: &str) {
        for &event in events {
            self.record(Report {
                event,
                result: CommandResult {
                    status: Some(502),
                    error: Some(detail.to_owned()),
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    ..CommandResult::default()
                },
            });
        }
    }

    /// A response the session's masking cannot read: refused (502), recorded for each event.
    fn unmaskable(&self, events: &[EventId], started: Instant, e: &BodyError) -> Problem {
        let detail = format!("interceptor: {e}; nothing of it was sent");
        self.bad_gateway(events, started, &detail);
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "unmaskable-response",
            "The response cannot be masked",
            detail,
        )
    }

    fn no_secret(&self, event: EventId) -> Problem {
        let detail = format!(
            "interceptor: the credential for target {:?} cannot be read; nothing was sent",
            self.target.name
        );
        self.record(Report {
            event,
            result: CommandResult {
                status: Some(503),
                error: Some(detail.clone()),
                ..CommandResult::default()
            },
        });
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "credential-unavailable",
            "Credential unavailable",
            detail,
        )
    }

    fn deny_result(&self, event: EventId, message: &str) {
        self.refuse_result(event, Some(403), message);
    }

    /// A refused command's result: the HTTP status when the agent got one for it alone (an
    /// MCP call's refusal is a JSON-RPC answer, without a status of its own).
    fn refuse_result(&self, event: EventId, status: Option<i64>, message: &str) {
        self.record(Report {
            event,
            result: CommandResult {
                status,
                error: Some(message.to_owned()),
                ..CommandResult::default()
            },
        });
    }

    /// Journals a request refused before it became a command (no event to answer against).
    fn refused(&self, reason: &'static str, parts: &Parts) {
        self.hooks.note(
            "http_refused",
            json!({ "reason": reason, "method": parts.method.as_str() }),
        );
    }
}

/// An answer in MCP's form: the JSON-RPC body, or 202 Accepted with none (only notifications
/// or the agent's own responses were refused).
fn rpc_answer(status: StatusCode, body: Option<Vec<u8>>) -> Response<ResBody> {
    let (status, bytes) = match body {
        Some(bytes) => (status, Bytes::from(bytes)),
        None => (StatusCode::ACCEPTED, Bytes::new()),
    };
    let json = !bytes.is_empty();
    let mut response = Response::new(
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    if json {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response
}

fn journal_down(e: HookError) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "journal-unavailable",
        "The gateway cannot record this request",
        format!("interceptor: recording failed, nothing was sent: {e}"),
    )
}

/// Whether the agent asks to switch protocols to anything but h2c (which is ignored).
fn upgrade_asked(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',').any(|p| !p.trim().eq_ignore_ascii_case("h2c"))
        })
    })
}

/// Removes the headers that belong to one connection (RFC 9110 §7.6.1): those the
/// `Connection` header names, and the well-known ones.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    ] {
        headers.remove(name);
    }
}

/// An answer owed by the upstream while it lasts, so the session is not idle meanwhile; also
/// when the agent leaves and the request's future is dropped mid-exchange.
struct Owed<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Owed<'a> {
    fn new(owed: &'a std::sync::atomic::AtomicU64) -> Owed<'a> {
        owed.fetch_add(1, Ordering::Relaxed);
        Owed(owed)
    }
}

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer the gateway writes itself (RFC 9457 problem details).
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    body: serde_json::Value,
    /// The connection ends after this answer.
    close: bool,
    /// A Kubernetes `Status` (`application/json`), not a problem document.
    kube: bool,
}

impl Problem {
    fn new(status: StatusCode, kind: &str, title: &str, detail: String) -> Problem {
        Problem {
            status,
            body: json!({
                "type": format!("urn:interceptor:problem:{kind}"),
                "title": title,
                "status": status.as_u16(),
                "detail": detail,
            }),
            close: false,
            kube: false,
        }
    }

    fn with(mut self, key: &str, value: serde_json::Value) -> Problem {
        if let Some(map) = self.body.as_object_mut() {
            map.insert(key.to_owned(), value);
        }
        self
    }

    fn with_decision(self, rule: Option<&str>, event: EventId) -> Problem {
        self.with("rule", json!(rule)).with("event", json!(event.0))
    }

    /// The problem as a Kubernetes `Status` too (the problem's members stay), so kubectl and
    /// the client libraries show its detail: `Error from server (Forbidden): …`.
    fn kube_status(mut self) -> Problem {
        let code = self.status.as_u16();
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            413 => "RequestEntityTooLarge",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        let message = self.body.get("detail").cloned().unwrap_or(json!(""));
        if let Some(map) = self.body.as_object_mut() {
            for (key, value) in [
                ("kind", json!("Status")),
                ("apiVersion", json!("v1")),
                ("metadata", json!({})),
                ("status", json!("Failure")),
                ("message", message),
                ("reason", json!(reason)),
                ("code", json!(code)),
            ] {
                map.insert(key.to_owned(), value);
            }
        }
        self.kube = true;
        self
    }

    fn closing(mut self) -> Problem {
        self.close = true;
        self
    }

    fn response(self) -> Response<ResBody> {
        let body = Full::new(Bytes::from(self.body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if self.kube {
                "application/json"
            } else {
                "application/problem+json"
            }),
        );
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The upstream's body on its way to the agent, counted and, when the session masks bodies
/// or watches MCP answers, through its [`ResponseMasker`]; its end (or its loss) is the result
/// of each command it answers.
struct Reported {
    inner: Incoming,
    masker: Option<ResponseMasker>,
    /// Everything was given out (the masker's rest included), or the body failed.
    done: bool,
    bytes: u64,
    /// Until reported: the events, when the exchange started, and the status.
    pending: Option<(Vec<EventId>, Instant, u16)>,
    reports: mpsc::UnboundedSender<Report>,
}

impl Reported {
    /// Reports once, with `status` in place of the upstream's when the gateway cut the body.
    fn report(&mut self, status: Option<u16>, error: Option<String>) {
        if let Some((events, started, upstream_status)) = self.pending.take() {
            let masked = self
                .masker
                .as_mut()
                .map(ResponseMasker::take_counts)
                .unwrap_or_default();
            for event in events {
                let result = CommandResult {
                    status: Some(i64::from(status.unwrap_or(upstream_status))),
                    bytes: Some(self.bytes),
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    error: error.clone(),
                    masked: masked.clone(),
                    ..CommandResult::default()
                };
                let _ = self.reports.send(Report { event, result });
            }
        }
    }

    /// The masker refused: the body ends here with an error (the agent's stream is cut).
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.report(
            Some(502),
            Some(format!("interceptor: {e}; the response was cut")),
        );
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl Body for Reported {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => Some(frame),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.report(None, Some(format!("the upstream's body broke off: {e}")));
                    return Poll::Ready(Some(Err(BoxError::from(e))));
                }
                Poll::Ready(None) => None,
            };
            let ended = frame.is_none() || this.inner.is_end_stream();
            let out = match frame.map(Frame::into_data) {
                // Trailers pass as they are.
                Some(Err(trailers)) => {
                    if ended {
                        this.done = true;
                        this.report(None, None);
                    }
                    return Poll::Ready(Some(Ok(trailers)));
                }
                Some(Ok(data)) => match &mut this.masker {
                    None => data,
                    Some(masker) => match masker.push(&data) {
                        Ok(out) => Bytes::from(out),
                        Err(e) => return this.fail(e),
                    },
                },
                None => Bytes::new(),
            };
            let out = if ended {
                this.done = true;
                match this.masker.as_mut().map(ResponseMasker::finish) {
                    Some(Ok(rest)) if !rest.is_empty() => {
                        let mut all = out.to_vec();
                        all.extend(rest);
                        Bytes::from(all)
                    }
                    Some(Err(e)) => return this.fail(e),
                    _ => out,
                }
            } else {
                out
            };
            this.bytes += out.len() as u64;
            if ended {
                this.report(None, None);
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.masker.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.masker.as_ref().map(ResponseMasker::framing) {
            None | Some(Framing::Unchanged) => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

impl Drop for Reported {
    fn drop(&mut self) {
        let error = (!self.done && !self.inner.is_end_stream())
            .then(|| "the agent left before the end of the response".to_owned());
        self.report(None, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stay_on_their_leg() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Trace"),
            ("x-trace", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("accept", "application/json"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn only_an_h2c_upgrade_offer_is_ignored() {
        assert!(!upgrade_asked(&headers(&[])));
        assert!(!upgrade_asked(&headers(&[("upgrade", "h2c")])));
        assert!(upgrade_asked(&headers(&[("upgrade", "websocket")])));
        assert!(upgrade_asked(&headers(&[("upgrade", "h2c, websocket")])));
    }

    #[test]
    fn a_problem_is_rfc_9457_json() {
        let response = Problem::new(
            StatusCode::FORBIDDEN,
            "policy-denied",
            "Request denied by policy",
            "no (rule r, journal event 7)".to_owned(),
        )
        .with_decision(Some("r"), EventId(7))
        .closing()
        .response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }
}
