//! Telling approvers that something waits: an HTTP POST per new request (JSON, or a
//! Slack-compatible `{"text": …}`), retried with backoff. Delivery never blocks or loses the
//! request: approvers can always use the CLI, and a delivery that finally fails is journaled.

use std::time::Duration;

use super::WebhookFormat;
use crate::journal::{Event, Journal};

use super::Request;

/// Attempts and the pause before each retry.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub format: WebhookFormat,
}

impl Webhook {
    fn body(&self, r: &Request) -> String {
        let approve = format!("interceptor approvals approve {}", r.id);
        let deny = format!("interceptor approvals deny {} --reason TEXT", r.id);
        let value = match self.format {
            WebhookFormat::Json => serde_json::json!({
                "type": "approval_request",
                "request": r,
                "approve": approve,
                "deny": deny,
            }),
            WebhookFormat::Slack => serde_json::json!({
                "text": format!(
                    "Approval {} requested by {} (uid {}, pid {}) on target {} under rule {}:\n```{}```\nApprove: `{approve}`  Deny: `{deny}`",
                    r.id,
                    r.user.as_deref().unwrap_or("?"),
                    r.uid,
                    r.pid,
                    r.target.as_deref().unwrap_or("-"),
                    r.rule.as_deref().unwrap_or("-"),
                    r.statement
                ),
            }),
        };
        value.to_string()
    }

    /// Delivers in the background; the result (after retries) is journaled on the session.
    pub fn send(&self, request: &Request, journal: Journal) {
        let hook = self.clone();
        let body = self.body(request);
        let (id, session) = (request.id.clone(), request.session_id);
        tokio::spawn(async move {
            let mut last_error = String::new();
            for attempt in 0..=BACKOFF.len() {
                let (url, payload) = (hook.url.clone(), body.clone());
                let sent = tokio::task::spawn_blocking(move || {
                    ureq::post(&url)
                        .header("content-type", "application/json")
                        .config()
                        .timeout_global(Some(Duration::from_secs(5)))
                        .build()
                        .send(payload)
                        .map(drop)
                })
                .await;
                match sent {
                    Ok(Ok(())) => {
                        journal.record_event(Event::note(
                            Some(session),
                            "notification",
                            serde_json::json!({ "id": id, "ok": true, "attempts": attempt + 1 }),
                        ));
                        return;
                    }
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(e) => last_error = e.to_string(),
                }
                if let Some(pause) = BACKOFF.get(attempt) {
                    tokio::time::sleep(*pause).await;
                }
            }
            tracing::warn!(approval = %id, error = %last_error, "approval notification failed; the CLI still works");
            journal.record_event(Event::note(
                Some(session),
                "notification_failed",
                serde_json::json!({ "id": id, "error": last_error, "attempts": BACKOFF.len() + 1 }),
            ));
        });
    }
}
