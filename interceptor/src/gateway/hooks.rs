//! The gateway's side of the [`Hooks`] seam: what happens around each command a protocol
//! reports. Today: record it (committed before it is forwarded) and allow it. Policy,
//! approvals and masking plug in here, not in the protocols.

use crate::{
    command::{Command, CommandResult, Decision, EventId, HookError, Hooks, Verdict},
    journal::{Event, Journal},
};

/// Hooks for one session.
pub struct SessionHooks {
    pub journal: Journal,
    pub session_id: i64,
}

impl Hooks for SessionHooks {
    async fn request(&self, command: &Command<'_>) -> Result<Decision, HookError> {
        let mut decisions = self.request_all(std::slice::from_ref(command)).await?;
        decisions
            .pop()
            .ok_or_else(|| HookError("the journal recorded nothing".to_owned()))
    }

    async fn request_all(&self, commands: &[Command<'_>]) -> Result<Vec<Decision>, HookError> {
        let events = commands
            .iter()
            .map(|c| Event {
                session_id: Some(self.session_id),
                kind: c.kind.journal_kind(),
                statement: Some(c.text.to_owned()),
                decision: Some("allow".to_owned()),
                rule: None,
                // Parameter values are never journaled here, only how many there are.
                detail: serde_json::json!({ "command": c.kind, "params": c.params, "name": c.name }),
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
            .map(|id| Decision {
                verdict: Verdict::Allow,
                rule: None,
                event: EventId(id),
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
