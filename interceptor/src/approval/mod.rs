//! Approval holds: a command policy sent to `review` waits here for a human.
//!
//! Why this exists: some commands are fine only if a person says so, now, for this run. The
//! protocol tells the client it is held (with the command to approve it), the request is
//! committed to the journal, and the session waits until an approver decides through the
//! control socket ([`control`]), or the rule's timeout passes (which denies). The requester's
//! uid can never approve its own request, root included. A `run`-scoped approval lets the same
//! statement (literals and whitespace aside) through for the rest of that run only.

mod config;
pub mod control;
pub mod notify;
pub mod watch;

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::journal::{Event, Journal, JournalError};
pub use config::{ApprovalsConfig, WebhookFormat};

/// What an approver sees about a held command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    pub id: String,
    pub status: Status,
    pub statement: String,
    pub target: Option<String>,
    pub run_id: Option<String>,
    pub pid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub exe: Option<String>,
    pub unit: Option<String>,
    pub rule: Option<String>,
    pub requested_at: String,
    pub session_id: i64,
    /// The journal event of the held command.
    pub event: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// This execution only.
    #[default]
    Once,
    /// The same statement, for the rest of this run.
    Run,
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Approved { by: String, scope: Scope },
    Denied { by: String, reason: String },
    Expired,
}

/// An approver, as the control socket identified them (SO_PEERCRED).
#[derive(Debug, Clone)]
pub struct Approver {
    pub uid: u32,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("no pending approval {0}")]
    Unknown(String),
    #[error("uid {0} asked for this command and cannot approve or deny it")]
    SelfApproval(u32),
    #[error("a reason is required to deny")]
    ReasonRequired,
}

struct Pending {
    request: Request,
    /// What a `run`-scoped approval of this request grants: the command's canonical key
    /// (for SQL, PostgreSQL's fingerprint of the raw statement). `None`: only this request.
    key: Option<String>,
    decide: oneshot::Sender<Resolution>,
}

/// All holds of one gateway.
pub struct Approvals {
    journal: Journal,
    webhook: Option<notify::Webhook>,
    pending: Mutex<HashMap<String, Pending>>,
    /// (run id, command key) approved for the rest of the run.
    run_grants: Mutex<HashSet<(String, String)>>,
}

impl Approvals {
    pub fn new(journal: Journal, webhook: Option<notify::Webhook>) -> Approvals {
        Approvals {
            journal,
            webhook,
            pending: Mutex::new(HashMap::new()),
            run_grants: Mutex::new(HashSet::new()),
        }
    }

    /// True when a human already approved a command with this key for the rest of `run_id`.
    pub fn granted_for_run(&self, run_id: Option<&str>, key: Option<&str>) -> bool {
        let (Some(run), Some(key)) = (run_id, key) else {
            return false;
        };
        self.run_grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(run.to_owned(), key.to_owned()))
    }

    /// Registers a held command (committed to the journal first) and returns how to wait for
    /// the decision.
    pub async fn hold(
        &self,
        mut request: Request,
        key: Option<String>,
    ) -> Result<oneshot::Receiver<Resolution>, JournalError> {
        request.status = Status::Pending;
        self.journal
            .event(Event {
                statement: Some(request.statement.clone()),
                decision: Some("review".to_owned()),
                rule: request.rule.clone(),
                ..Event::note(
                    Some(request.session_id),
                    "approval",
                    serde_json::json!({ "id": request.id, "status": "pending", "event": request.event }),
                )
            })
            .await?;
        if let Some(hook) = &self.webhook {
            hook.send(&request, self.journal.clone());
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                request.id.clone(),
                Pending {
                    request,
                    key,
                    decide: tx,
                },
            );
        Ok(rx)
    }

    /// Waits for the decision on `id`, or expires it after `timeout`.
    pub async fn wait(
        &self,
        id: &str,
        rx: oneshot::Receiver<Resolution>,
        timeout: Duration,
    ) -> Resolution {
        let resolution = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            // Timed out, or the gateway is going away: nobody approved it.
            _ => Resolution::Expired,
        };
        if resolution == Resolution::Expired {
            if let Some(p) = self.take(id) {
                self.journal_decision(&p.request, "expired", None, None, None);
            }
        }
        resolution
    }

    fn take(&self, id: &str) -> Option<Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }

    /// Expires every pending request (the run or the daemon is ending): each waiting session
    /// is told, and each expiry is journaled. Returns how many there were.
    pub fn expire_all(&self) -> usize {
        let all: Vec<Pending> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in &all {
            self.journal_decision(&p.request, "expired", None, None, None);
        }
        let n = all.len();
        for p in all {
            let _ = p.decide.send(Resolution::Expired);
        }
        n
    }

    /// Pending requests, oldest first.
    pub fn list(&self) -> Vec<Request> {
        let mut all: Vec<Request> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| p.request.clone())
            .collect();
        all.sort_by(|a, b| a.requested_at.cmp(&b.requested_at));
        all
    }

    pub fn approve(
        &self,
        id: &str,
        by: &Approver,
        scope: Scope,
        reason: Option<String>,
    ) -> Result<Request, ApprovalError> {
        let pending = self.claim(id, by)?;
        if scope == Scope::Run {
            if let (Some(run), Some(key)) = (&pending.request.run_id, &pending.key) {
                self.run_grants
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((run.clone(), key.clone()));
            }
        }
        self.journal_decision(&pending.request, "approved", Some(by), Some(scope), reason);
        Ok(settle(
            pending,
            Status::Approved,
            Resolution::Approved {
                by: by.name.clone(),
                scope,
            },
        ))
    }

    pub fn deny(&self, id: &str, by: &Approver, reason: String) -> Result<Request, ApprovalError> {
        if reason.trim().is_empty() {
            return Err(ApprovalError::ReasonRequired);
        }
        let pending = self.claim(id, by)?;
        self.journal_decision(
            &pending.request,
            "denied",
            Some(by),
            None,
            Some(reason.clone()),
        );
        Ok(settle(
            pending,
            Status::Denied,
            Resolution::Denied {
                by: by.name.clone(),
                reason,
            },
        ))
    }

    /// Removes a pending request for a decision, unless the approver is its requester.
    fn claim(&self, id: &str, by: &Approver) -> Result<Pending, ApprovalError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let request = &pending
            .get(id)
            .ok_or_else(|| ApprovalError::Unknown(id.to_owned()))?
            .request;
        if request.uid == by.uid {
            return Err(ApprovalError::SelfApproval(by.uid));
        }
        pending
            .remove(id)
            .ok_or_else(|| ApprovalError::Unknown(id.to_owned()))
    }

    fn journal_decision(
        &self,
        r: &Request,
        status: &str,
        by: Option<&Approver>,
        scope: Option<Scope>,
        reason: Option<String>,
    ) {
        self.journal.record_event(Event {
            statement: Some(r.statement.clone()),
            decision: Some(
                if status == "approved" {
                    "allow"
                } else {
                    "deny"
                }
                .to_owned(),
            ),
            rule: r.rule.clone(),
            ..Event::note(
                Some(r.session_id),
                "approval_decision",
                serde_json::json!({
                    "id": r.id,
                    "status": status,
                    "approver_uid": by.map(|a| a.uid),
                    "approver": by.map(|a| a.name.clone()),
                    "scope": scope,
                    "reason": reason,
                    "at": crate::journal::now_rfc3339(),
                }),
            )
        });
    }
}

/// Wakes the held session with `resolution` and returns the request as decided.
fn settle(pending: Pending, status: Status, resolution: Resolution) -> Request {
    let mut request = pending.request;
    request.status = status;
    // The session may be gone (client disconnected): the decision is journaled regardless.
    let _ = pending.decide.send(resolution);
    request
}

/// A short id an operator can type.
pub fn new_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("apr-{}", &uuid[..10])
}
