//! The gateway's side of the [`Hooks`] seam: what happens around each command a protocol
//! reports. Each command is judged by policy and recorded with its decision and rule, all the
//! commands of a batch in one commit, before anything is forwarded. Approvals and masking plug
//! in here too, never in the protocols.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{
    command::{Command, CommandResult, Decision, EventId, HookError, Hooks, Verdict},
    journal::{Event, Journal},
    policy::{self, DecisionKind, Engine, Request, Subject},
};

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
}

impl SessionHooks {
    pub fn new(
        journal: Journal,
        session_id: i64,
        policy: Arc<Engine>,
        subject: Subject,
        target: Option<String>,
        protocol: &'static str,
    ) -> SessionHooks {
        SessionHooks {
            journal,
            session_id,
            policy,
            subject,
            target,
            protocol,
            prepared: Mutex::new(HashMap::new()),
        }
    }

    fn judge(&self, command: &Command<'_>) -> policy::Verdict {
        let verdict = self.policy.evaluate(
            &self.subject,
            self.target.as_deref(),
            self.protocol,
            Request::Sql { text: command.text },
        );
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
        let verdicts: Vec<policy::Verdict> = commands.iter().map(|c| self.judge(c)).collect();
        let events = commands
            .iter()
            .zip(&verdicts)
            .map(|(c, v)| {
                // Holding a command for a human arrives with approvals; until then a review
                // decision refuses, and the journal says so.
                let held_unavailable = v.decision == DecisionKind::Review;
                let decision = if held_unavailable {
                    DecisionKind::Deny
                } else {
                    v.decision
                };
                let classes: Vec<_> = v
                    .statements
                    .iter()
                    .flat_map(|s| s.analysis.classes.iter().copied())
                    .collect();
                Event {
                    session_id: Some(self.session_id),
                    kind: c.kind.journal_kind(),
                    statement: Some(c.text.to_owned()),
                    decision: Some(decision.as_str().to_owned()),
                    rule: v.rule.clone(),
                    // Parameter values are never journaled here, only how many there are.
                    detail: serde_json::json!({
                        "command": c.kind,
                        "params": c.params,
                        "name": c.name,
                        "classes": classes,
                        "policy": v.decision,
                        "reason": (v.decision != DecisionKind::Allow).then(|| v.message.clone()),
                        "parse_error": v.parse_error,
                        "review_unavailable": held_unavailable,
                    }),
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
        Ok(ids
            .into_iter()
            .zip(verdicts)
            .map(|(id, v)| {
                let rule = v.rule.clone().unwrap_or_else(|| "(no matching rule)".to_owned());
                let verdict = match v.decision {
                    DecisionKind::Allow => Verdict::Allow,
                    DecisionKind::Deny => Verdict::Deny {
                        message: format!("{} [rule {rule}, journal event {id}]", v.message),
                    },
                    DecisionKind::Review => Verdict::Deny {
                        message: format!(
                            "{} [rule {rule}, journal event {id}]; approvals are not available yet, so it is refused",
                            v.message
                        ),
                    },
                };
                Decision {
                    verdict,
                    rule: v.rule,
                    event: EventId(id),
                }
            })
            .collect())
    }

    fn result(&self, event: EventId, result: &CommandResult) {
        match serde_json::to_value(result) {
            Ok(value) => self.journal.record_result(event.0, value),
            Err(e) => tracing::error!(error = %e, "could not encode a command result"),
        }
    }

    fn note(&self, kind: &'static str, detail: serde_json::Value) {
        self.journal
            .record_event(Event::note(Some(self.session_id), kind, detail));
    }
}
