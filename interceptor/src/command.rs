//! The seam between protocols and everything that judges or records what agents do.
//!
//! Why this exists: a protocol module (PostgreSQL today; Kubernetes, SSH, MySQL later) turns
//! bytes into [`Command`]s and asks a [`Hooks`] implementation two things: before forwarding,
//! "may this run?" ([`Hooks::request`]); after, "here is how it went" ([`Hooks::result`]), and
//! while results stream back, "does this value need rewriting?" ([`Hooks::rewrite_value`]).
//! Protocols never import the journal, policy, approvals or masking; the gateway implements
//! `Hooks` with them. Today the hooks journal everything and allow everything; the policy,
//! approval and masking issues fill in the decisions and rewrites without touching protocols.

use serde::Serialize;

/// What the client asked for, independent of the wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// A statement sent as text and run at once (PostgreSQL simple Query).
    Statement,
    /// A statement prepared for later execution (PostgreSQL Parse).
    Prepare,
    /// A later execution of a prepared statement (PostgreSQL Execute).
    Execute,
    /// A function invoked by id rather than by text (PostgreSQL FunctionCall).
    FunctionCall,
    /// A request to cancel a running command in another session.
    Cancel,
}

impl CommandKind {
    /// The journal's `kind` for events of this command.
    pub fn journal_kind(self) -> &'static str {
        match self {
            // Both carry the statement text as written by the client.
            CommandKind::Statement | CommandKind::Prepare => "statement",
            CommandKind::Execute => "execute",
            CommandKind::FunctionCall => "function_call",
            CommandKind::Cancel => "cancel",
        }
    }
}

/// One command, as protocols describe it to the hooks.
#[derive(Debug, Clone)]
pub struct Command<'a> {
    pub kind: CommandKind,
    /// The statement (or a description, for commands without text).
    pub text: &'a str,
    /// Number of parameters the client supplies separately. Their values are not here on
    /// purpose: nothing upstream of masking may keep them.
    pub params: usize,
    /// Protocol-specific name (prepared statement or portal), if any.
    pub name: Option<&'a str>,
}

/// What the hooks decided about a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse with a message the client will see.
    Deny {
        message: String,
    },
    /// Wait for a human: tell the client `notice` at once, then ask
    /// [`Hooks::wait_for_approval`] with `id` for the final Allow or Deny.
    Hold {
        id: String,
        notice: String,
    },
}

/// The decision, plus the handle the protocol uses to report the result.
#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided, if any (journaled, shown to approvers later).
    pub rule: Option<String>,
    /// Identifies the recorded command when reporting its result.
    pub event: EventId,
}

/// Handle of a recorded command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId(pub i64);

/// How a command ended, as far as the protocol can tell.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CommandResult {
    /// The server's completion tag ("SELECT 3", "INSERT 0 1"); several joined by "; ".
    pub tag: Option<String>,
    /// Rows returned to the client.
    pub rows: u64,
    pub duration_ms: f64,
    /// SQLSTATE (or the protocol's equivalent) when it failed.
    pub sqlstate: Option<String>,
    pub error: Option<String>,
}

/// Failure of the hooks themselves (the journal is down). Protocols must then refuse the
/// command: nothing runs unrecorded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HookError(pub String);

/// What a protocol calls around each command. Implemented by the gateway.
pub trait Hooks: Send + Sync {
    /// Called before a command is forwarded; returns after the command is durably recorded.
    fn request(
        &self,
        command: &Command<'_>,
    ) -> impl std::future::Future<Output = Result<Decision, HookError>> + Send;

    /// Records several commands that arrived together (a pipeline) with one commit. The
    /// default asks one by one.
    fn request_all(
        &self,
        commands: &[Command<'_>],
    ) -> impl std::future::Future<Output = Result<Vec<Decision>, HookError>> + Send {
        async move {
            let mut decisions = Vec::with_capacity(commands.len());
            for command in commands {
                decisions.push(self.request(command).await?);
            }
            Ok(decisions)
        }
    }

    /// Waits for the decision on a held command; returns Allow or Deny (a timeout denies).
    fn wait_for_approval(&self, id: &str) -> impl std::future::Future<Output = Verdict> + Send;

    /// Called once the outcome of a recorded command is known. Never blocks the relay.
    fn result(&self, event: EventId, result: &CommandResult);

    /// Called for each value returned to the client: `Some(new)` replaces it. `column` is the
    /// protocol's column name. Identity for now; masking fills it in.
    fn rewrite_value(&self, _event: EventId, _column: &str, _value: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// Records something about the session that is not a command (authentication failures,
    /// protocol errors). Never blocks the relay.
    fn note(&self, kind: &'static str, detail: serde_json::Value);
}
