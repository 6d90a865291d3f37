//! The gateway's side of the [`Hooks`] seam: what happens around each command a protocol
//! reports. Each command is judged by policy and recorded with its decision and rule, all the
//! commands of a batch in one commit, before anything is forwarded. Approvals and masking plug
//! in here too, never in the protocols.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use crate::{
    approval::{self, Approvals, Resolution},
    command::{
        Command, CommandResult, Decision, EventId, Family, HookError, Hooks, Masker, Operation,
        ResultColumn, Verdict,
    },
    journal::{Event, Journal},
    mask::Masking,
    policy::{self, DecisionKind, Engine, Request, Subject},
};

/// What a `run`-scoped approval of a reviewed command extends to: the same rule, and the
/// command's canonical key. For SQL that is PostgreSQL's own parser's fingerprint (only
/// literal values may differ), and `None` when the server's grammar rejects the text: then the
/// approval covers only itself. For the other families it is the canonical text: the same
/// request, exactly. MySQL's SQL is keyed by its exact text too: PostgreSQL's fingerprint
/// reads strings and comments differently from MySQL, so two texts it calls alike may run
/// different statements on a MySQL server.
fn approval_key(
    verdict: &policy::Verdict,
    command: &Command<'_>,
    protocol: &str,
) -> Option<String> {
    let key = match command.operation {
        Operation::Sql { text } if protocol != policy::MYSQL_PROTOCOL => {
            policy::pg_grammar::fingerprint(text)?
        }
        _ => format!(
            "{}\u{1}{}",
            command.operation.family().as_str(),
            command.text
        ),
    };
    Some(format!(
        "{}\u{1}{key}",
        verdict.rule.as_deref().unwrap_or_default()
    ))
}

/// A JSON value as the journal may keep it: every string in it masked like text, the
/// document still valid JSON.
fn mask_strings(value: &serde_json::Value, mask: &dyn Fn(&str) -> String) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(mask(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| mask_strings(v, mask)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), mask_strings(v, mask)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Counts one wait for an approver for as long as it lasts, however it ends: a held request's
/// future is dropped when its client goes away (an HTTP client disconnecting), and a count left
/// up would keep the session from ever being idle again.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A held command waiting for its decision.
struct Held {
    decision: tokio::sync::oneshot::Receiver<Resolution>,
    timeout: std::time::Duration,
}

/// Hooks for one session.
pub struct SessionHooks {
    pub journal: Journal,
    pub session_id: i64,
    pub policy: Arc<Engine>,
    pub subject: Subject,
    pub target: Option<String>,
    pub protocol: &'static str,
    /// Verdicts of SQL-level `PREPARE name AS …` in this session, so that `EXECUTE name`
    /// (opaque on its own) is judged as the statement it runs.
    pub prepared: Mutex<HashMap<String, policy::Verdict>>,
    pub approvals: Arc<Approvals>,
    /// The caller's pid, for approvers.
    pub pid: u32,
    pub default_review_timeout: std::time::Duration,
    held: Mutex<HashMap<String, Held>>,
    /// What this session's results (and journaled texts) are masked with.
    masking: Option<Arc<Masking>>,
    /// What the server's catalog said about functions (see [`Hooks::vouch_functions`]).
    functions: Mutex<HashMap<String, bool>>,
    /// Where decisions are counted.
    stats: Arc<super::stats::Stats>,
    /// Commands of this session waiting for an approver now: the session is not idle.
    waiting: AtomicUsize,
}

/// Who a session belongs to, for the hooks.
pub struct SessionInfo {
    pub session_id: i64,
    pub subject: Subject,
    pub pid: u32,
    pub target: Option<String>,
    pub protocol: &'static str,
    pub masking: Option<Arc<Masking>>,
}

impl SessionHooks {
    pub fn new(
        journal: Journal,
        policy: Arc<Engine>,
        approvals: Arc<Approvals>,
        default_review_timeout: std::time::Duration,
        stats: Arc<super::stats::Stats>,
        info: SessionInfo,
    ) -> SessionHooks {
        SessionHooks {
            journal,
            session_id: info.session_id,
            policy,
            subject: info.subject,
            target: info.target,
            protocol: info.protocol,
            prepared: Mutex::new(HashMap::new()),
            approvals,
            pid: info.pid,
            default_review_timeout,
            held: Mutex::new(HashMap::new()),
            masking: info.masking,
            functions: Mutex::new(HashMap::new()),
            stats,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Whether a command of this session is held for approval right now. However long a
    /// human takes, the session is not idle meanwhile.
    pub fn awaiting_approval(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// A text as the journal (and approvers) may see it: detector matches masked.
    fn for_journal<'t>(&self, text: &'t str) -> (Cow<'t, str>, BTreeMap<String, u64>) {
        match &self.masking {
            Some(m) => m.mask_text(text),
            None => (Cow::Borrowed(text), BTreeMap::new()),
        }
    }

    /// A command's canonical text as the journal and approvers see it. An MCP call's text
    /// holds its arguments, a JSON document: field rules (`json_paths`) apply to it before
    /// detectors do, so a `$..password` rule hides the password in the text too.
    fn journal_text<'t>(&self, command: &Command<'t>) -> (Cow<'t, str>, BTreeMap<String, u64>) {
        if let (Operation::Mcp(call), Some(masking)) = (&command.operation, &self.masking) {
            if let Some(arguments) = &call.arguments {
                let mut masked_arguments = arguments.clone();
                let mut counts = masking.mask_json(&mut masked_arguments);
                let masked_call = crate::command::McpCall {
                    arguments: Some(masked_arguments),
                    ..(*call).clone()
                };
                let canonical = Operation::Mcp(&masked_call).canonical();
                let (text, more) = self.for_journal(&canonical);
                let text = text.into_owned();
                for (k, n) in more {
                    *counts.entry(k).or_default() += n;
                }
                return (Cow::Owned(text), counts);
            }
        }
        if let Operation::Http(request) = &command.operation {
            // Credentials in query strings (`?api_key=…`) never reach the journal.
            if request.query.is_some() {
                let canonical = Operation::Http(&request.redacted()).canonical();
                let (text, counts) = self.for_journal(&canonical);
                return (Cow::Owned(text.into_owned()), counts);
            }
        }
        self.for_journal(command.text)
    }

    /// Holds a reviewed command: registers it for approvers and tells the protocol what to say.
    async fn hold(
        &self,
        command: &Command<'_>,
        verdict: &policy::Verdict,
        event: i64,
        key: Option<String>,
    ) -> Result<Verdict, HookError> {
        let id = approval::new_id();
        let request = approval::Request {
            id: id.clone(),
            status: approval::Status::Pending,
            // Approvers see what the journal keeps: detector matches masked.
            statement: self.journal_text(command).0.into_owned(),
            target: self.target.clone(),
            run_id: self.subject.run_id.clone(),
            pid: self.pid,
            uid: self.subject.uid,
            user: self.subject.user.clone(),
            exe: self.subject.exe.clone(),
            unit: self.subject.unit.clone(),
            rule: verdict.rule.clone(),
            requested_at: crate::journal::now_rfc3339(),
            session_id: self.session_id,
            event,
        };
        let decision = self
            .approvals
            .hold(request, key)
            .await
            .map_err(|e| HookError(e.to_string()))?;
        let timeout = verdict
            .review_timeout
            .unwrap_or(self.default_review_timeout);
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Held { decision, timeout });
        let what = match command.operation.family() {
            Family::Sql => "statement",
            _ => "command",
        };
        let notice = format!(
            "interceptor: {what} held for approval {id} ({}); approve: sudo interceptor approvals approve {id}   deny: sudo interceptor approvals deny {id} --reason TEXT",
            verdict.message
        );
        Ok(Verdict::Hold { id, notice })
    }

    fn judge(&self, command: &Command<'_>) -> policy::Verdict {
        if command.operation.family() != Family::Sql {
            return self.policy.evaluate(
                &self.subject,
                self.target.as_deref(),
                self.protocol_of(command),
                command.operation,
            );
        }
        let functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let verdict = self.policy.evaluate_with(
            &self.subject,
            self.target.as_deref(),
            self.protocol,
            Request::Sql { text: command.text },
            &|f| functions.get(f) == Some(&true),
        );
        drop(functions);
        let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        if let [only] = verdict.statements.as_slice() {
            if let Some(name) = &only.analysis.executes {
                // EXECUTE of a statement this session prepared: its verdict travels with it.
                // An unknown name keeps the verdict about EXECUTE itself.
                if let Some(earlier) = prepared.get(name) {
                    return earlier.clone();
                }
            }
            if let Some(name) = &only.analysis.prepared {
                prepared.insert(name.clone(), verdict.clone());
            }
        }
        verdict
    }
}

impl SessionHooks {
    /// The protocol a command belongs to: the session's, except MCP calls, which ride on an
    /// HTTP session but are judged and journaled as MCP.
    fn protocol_of(&self, command: &Command<'_>) -> &'static str {
        match command.operation.family() {
            Family::Mcp => "mcp",
            _ => self.protocol,
        }
    }

    /// The journal's `detail` of a command event: the protocol-neutral keys (`protocol`,
    /// `action`, `objects`), the protocol's own detail, and for SQL what it always had.
    fn event_detail(
        &self,
        command: &Command<'_>,
        v: &policy::Verdict,
        masked: BTreeMap<String, u64>,
    ) -> serde_json::Value {
        let reason = (v.decision != DecisionKind::Allow).then(|| v.message.clone());
        let masked = (!masked.is_empty()).then_some(masked);
        let protocol = self.protocol_of(command);
        if command.operation.family() != Family::Sql {
            let mask = |s: &str| self.for_journal(s).0.into_owned();
            let objects: Vec<String> = command
                .operation
                .objects()
                .iter()
                .map(|o| mask(o))
                .collect();
            let mut detail = serde_json::json!({
                "protocol": protocol,
                "action": command.operation.action(),
                "objects": objects,
                "reason": reason,
                "masked": masked,
            });
            if let (Some((key, mut value)), serde_json::Value::Object(map)) =
                (command.operation.detail(), &mut detail)
            {
                // MCP arguments are a JSON document: field rules first, as in the text.
                if let (Some(arguments), Some(masking)) =
                    (value.get_mut("arguments"), &self.masking)
                {
                    masking.mask_json(arguments);
                }
                // Arguments, paths and command lines may carry values: masked like text.
                map.insert(key.to_owned(), mask_strings(&value, &mask));
            }
            return detail;
        }
        let classes: Vec<_> = v
            .statements
            .iter()
            .flat_map(|s| s.analysis.classes.iter().copied())
            .collect();
        let mut action: Vec<String> = classes
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        action.sort();
        action.dedup();
        let objects: std::collections::BTreeSet<&String> = v
            .statements
            .iter()
            .flat_map(|s| {
                s.analysis
                    .tables_read
                    .iter()
                    .chain(&s.analysis.tables_written)
            })
            .collect();
        // Parameter values are never journaled here, only how many there are.
        serde_json::json!({
            "protocol": protocol,
            "action": action.join(","),
            "objects": objects,
            "command": command.kind,
            "params": command.params,
            "name": command.name,
            "classes": classes,
            "reason": reason,
            "parse_error": v.parse_error.as_deref().map(|e| self.for_journal(e).0.into_owned()),
            "masked": masked,
        })
    }
}

impl Hooks for SessionHooks {
    async fn request(&self, command: &Command<'_>) -> Result<Decision, HookError> {
        let mut decisions = self.request_all(std::slice::from_ref(command)).await?;
        decisions
            .pop()
            .ok_or_else(|| HookError("the journal recorded nothing".to_owned()))
    }

    async fn request_all(&self, commands: &[Command<'_>]) -> Result<Vec<Decision>, HookError> {
        let mut keys: Vec<Option<String>> = Vec::with_capacity(commands.len());
        let verdicts: Vec<policy::Verdict> = commands
            .iter()
            .map(|c| {
                let mut v = self.judge(c);
                let key = (v.decision == DecisionKind::Review)
                    .then(|| approval_key(&v, c, self.protocol))
                    .flatten();
                // A human already approved this statement for the rest of the run.
                if v.decision == DecisionKind::Review
                    && self
                        .approvals
                        .granted_for_run(self.subject.run_id.as_deref(), key.as_deref())
                {
                    v.decision = DecisionKind::Allow;
                    v.message = "approved earlier in this run".to_owned();
                }
                keys.push(key);
                self.stats.decided(
                    self.target.as_deref(),
                    v.rule.as_deref(),
                    v.decision.as_str(),
                );
                v
            })
            .collect();
        let events = commands
            .iter()
            .zip(&verdicts)
            .map(|(c, v)| {
                // The command is forwarded as written; the journal keeps its canonical text
                // masked, and only a prefix of a long one (never copied whole).
                let (statement, masked) = self.journal_text(c);
                let (statement, clipped) =
                    crate::journal::clip_text(&statement, self.journal.statement_max_bytes());
                let mut detail = self.event_detail(c, v, masked);
                if let Some(clipped) = clipped {
                    clipped.describe(&mut detail);
                }
                Event {
                    session_id: Some(self.session_id),
                    kind: c.kind.journal_kind(),
                    statement: Some(statement.to_owned()),
                    decision: Some(v.decision.as_str().to_owned()),
                    rule: v.rule.clone(),
                    detail,
                }
            })
            .collect();
        let ids = self
            .journal
            .events(events)
            .await
            .map_err(|e| HookError(e.to_string()))?;
        if ids.len() != commands.len() {
            return Err(HookError(
                "the journal recorded fewer commands than sent".to_owned(),
            ));
        }
        let mut decisions = Vec::with_capacity(ids.len());
        for (((id, v), command), key) in ids.into_iter().zip(verdicts).zip(commands).zip(keys) {
            let rule = v
                .rule
                .clone()
                .unwrap_or_else(|| "(no matching rule)".to_owned());
            let verdict = match v.decision {
                DecisionKind::Allow => Verdict::Allow,
                DecisionKind::Deny => Verdict::Deny {
                    message: format!("{} [rule {rule}, journal event {id}]", v.message),
                },
                DecisionKind::Review => self.hold(command, &v, id, key).await?,
            };
            decisions.push(Decision {
                verdict,
                rule: v.rule,
                event: EventId(id),
            });
        }
        Ok(decisions)
    }

    fn functions_to_vouch(&self, commands: &[Command<'_>]) -> Vec<String> {
        let known = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = commands
            .iter()
            .filter(|c| c.operation.family() == Family::Sql)
            .flat_map(|c| {
                let parsed = self.policy.analyze(c.text);
                parsed
                    .statements
                    .iter()
                    .flat_map(|a| a.volatile_functions.iter().cloned())
                    .collect::<Vec<_>>()
            })
            .filter(|f| !known.contains_key(f))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn vouch_functions(&self, facts: Vec<(String, bool)>) {
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(facts);
    }

    async fn wait_for_approval(&self, id: &str) -> Verdict {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let Some(held) = held else {
            return Verdict::Deny {
                message: format!("approval {id} is unknown"),
            };
        };
        let waiting = Waiting::new(&self.waiting);
        let resolution = self.approvals.wait(id, held.decision, held.timeout).await;
        drop(waiting);
        match resolution {
            // The approval is on disk before the statement is forwarded, like every decision.
            Resolution::Approved { .. } => match self.journal.flush().await {
                Ok(()) => Verdict::Allow,
                Err(e) => Verdict::Deny {
                    message: format!("approval {id} could not be recorded ({e}); nothing was run"),
                },
            },
            Resolution::Denied { by, reason } => Verdict::Deny {
                message: format!("denied by {by}: {reason} [approval {id}]"),
            },
            Resolution::Expired => Verdict::Deny {
                message: format!(
                    "approval {id} timed out after {} s; nothing was run",
                    held.timeout.as_secs()
                ),
            },
        }
    }

    fn result(&self, event: EventId, result: &CommandResult) {
        // Server errors may quote values ("Key (email)=(…) already exists").
        let masked;
        let result = match &result.error {
            Some(e) if self.masking.is_some() => {
                masked = CommandResult {
                    error: Some(self.for_journal(e).0.into_owned()),
                    ..result.clone()
                };
                &masked
            }
            _ => result,
        };
        match serde_json::to_value(result) {
            Ok(value) => self
                .journal
                .record_result(Some(self.session_id), event.0, value),
            Err(e) => tracing::error!(error = %e, "could not encode a command result"),
        }
    }

    fn wants_sources(&self) -> bool {
        self.masking.as_ref().is_some_and(|m| m.wants_sources())
    }

    fn masker(&self, columns: Vec<ResultColumn>) -> Option<Box<dyn Masker>> {
        let masking = self.masking.as_ref().filter(|m| !m.is_inert())?;
        Some(Box::new(masking.masker(columns)))
    }

    fn mask_text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.for_journal(text).0
    }

    fn body_masking(&self) -> Option<Arc<dyn crate::command::BodyMasking>> {
        let masking = self.masking.as_ref().filter(|m| m.masks_documents())?;
        Some(Arc::new(masking.clone()))
    }

    fn note(&self, kind: &'static str, detail: serde_json::Value) {
        self.journal
            .record_event(Event::note(Some(self.session_id), kind, detail));
    }
}

#[cfg(test)]
mod tests;
