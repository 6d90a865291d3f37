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
        Command, CommandResult, Decision, EventId, HookError, Hooks, Masker, ResultColumn, Verdict,
    },
    journal::{Event, Journal},
    mask::Masking,
    policy::{self, DecisionKind, Engine, Request, Subject},
};

/// What a `run`-scoped approval of a reviewed statement extends to: the same rule, and a
/// statement PostgreSQL's own parser fingerprints the same (only literal values may differ).
/// `None` when the server's grammar rejects the text: then the approval covers only itself.
fn approval_key(verdict: &policy::Verdict, text: &str) -> Option<String> {
    let fingerprint = policy::pg_grammar::fingerprint(text)?;
    Some(format!(
        "{}\u{1}{fingerprint}",
        verdict.rule.as_deref().unwrap_or_default()
    ))
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
            statement: self.for_journal(command.text).0.into_owned(),
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
        let notice = format!(
            "interceptor: statement held for approval {id} ({}); approve: sudo interceptor approvals approve {id}   deny: sudo interceptor approvals deny {id} --reason TEXT",
            verdict.message
        );
        Ok(Verdict::Hold { id, notice })
    }

    fn judge(&self, command: &Command<'_>) -> policy::Verdict {
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
                    .then(|| approval_key(&v, c.text))
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
                let classes: Vec<_> = v
                    .statements
                    .iter()
                    .flat_map(|s| s.analysis.classes.iter().copied())
                    .collect();
                // The statement is forwarded as written; the journal keeps it masked, and
                // only a prefix of a long one (never copied whole).
                let (statement, masked) = self.for_journal(c.text);
                let (statement, clipped) =
                    crate::journal::clip_text(&statement, self.journal.statement_max_bytes());
                // Parameter values are never journaled here, only how many there are.
                let mut detail = serde_json::json!({
                    "command": c.kind,
                    "params": c.params,
                    "name": c.name,
                    "classes": classes,
                    "reason": (v.decision != DecisionKind::Allow).then(|| v.message.clone()),
                    "parse_error": v.parse_error.as_deref().map(|e| self.for_journal(e).0.into_owned()),
                    "masked": (!masked.is_empty()).then_some(masked),
                });
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
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let resolution = self.approvals.wait(id, held.decision, held.timeout).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
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
            Ok(value) => self.journal.record_result(event.0, value),
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

    fn note(&self, kind: &'static str, detail: serde_json::Value) {
        self.journal
            .record_event(Event::note(Some(self.session_id), kind, detail));
    }
}
