//! The seam between protocols and everything that judges or records what agents do.
//!
//! Why this exists: a protocol module (PostgreSQL today; Kubernetes, SSH, MySQL later) turns
//! bytes into [`Command`]s (whose protocol-neutral shape is in [`operation`]) and asks a [`Hooks`] implementation two things: before forwarding,
//! "may this run?" ([`Hooks::request`]); after, "here is how it went" ([`Hooks::result`]), and
//! while results stream back, "rewrite these values" (a [`Masker`] from [`Hooks::masker`]).
//! Protocols never import the journal, policy, approvals or masking; the gateway implements
//! `Hooks` with them.

use serde::Serialize;

mod operation;
pub mod shell;
pub use operation::{
    CommandLine, Family, HttpRequest, KubeRequest, McpCall, Operation, SshChannel, SshRequest,
    ToolAnnotations,
};

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
    /// An HTTP request.
    HttpRequest,
    /// An MCP JSON-RPC call.
    McpCall,
    /// A Kubernetes API request.
    KubeRequest,
    /// An SSH channel request (exec, shell, subsystem, forward).
    SshChannel,
    /// A new login inside an open session (MySQL `COM_CHANGE_USER`).
    Login,
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
            CommandKind::HttpRequest => "http_request",
            CommandKind::McpCall => "mcp_call",
            CommandKind::KubeRequest => "kube_request",
            CommandKind::SshChannel => "ssh_channel",
            CommandKind::Login => "login",
        }
    }
}

/// One command, as protocols describe it to the hooks.
#[derive(Debug, Clone)]
pub struct Command<'a> {
    pub kind: CommandKind,
    /// The canonical text a human approves and the journal records: the statement as written
    /// for SQL, [`Operation::canonical`] for the others.
    pub text: &'a str,
    /// Number of parameters the client supplies separately. Their values are not here on
    /// purpose: nothing upstream of masking may keep them.
    pub params: usize,
    /// Protocol-specific name (prepared statement or portal), if any.
    pub name: Option<&'a str>,
    /// What the command does, structured for policy. SQL commands carry
    /// `Operation::Sql { text }` (policy analyses the text itself).
    pub operation: Operation<'a>,
}

impl<'a> Command<'a> {
    /// A SQL command: its text is both what policy analyses and what the journal keeps.
    pub fn sql(kind: CommandKind, text: &'a str, params: usize, name: Option<&'a str>) -> Self {
        Command {
            kind,
            text,
            params,
            name,
            operation: Operation::Sql { text },
        }
    }
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
    /// The HTTP status (HTTP, MCP, Kubernetes) or the exit status (SSH exec), when the
    /// protocol has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    /// Bytes of the response body relayed to the client (HTTP), when the protocol counts them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    pub error: Option<String>,
    /// How many values were masked, per rule (`rule:NAME`) and detector (`detector:email`).
    /// Never the values themselves.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub masked: std::collections::BTreeMap<String, u64>,
    /// The first rows as the client received them (already masked), when the journal keeps
    /// samples. Binary values are described, not copied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<Vec<Vec<Option<String>>>>,
}

impl CommandResult {
    /// Adds what a masker saw for one result set.
    pub fn absorb(&mut self, seen: MaskReport) {
        for (k, n) in seen.counts {
            *self.masked.entry(k).or_default() += n;
        }
        if let Some(rows) = seen.sample {
            self.sample.get_or_insert_with(Vec::new).extend(rows);
        }
    }
}

/// One column of a result set, as the protocol describes it to masking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultColumn {
    /// The name the client sees (an alias, or `?column?`).
    pub name: String,
    /// Where the values come from, `schema.table.column`, when the protocol knows: a plain
    /// column reference. `None` for computed values (`concat(ssn)`), or when unresolved.
    pub source: Option<String>,
    /// True when the values come from a table column the protocol could not resolve (the
    /// catalog was unreachable): masking then matches rules by column name alone.
    pub unresolved: bool,
    pub kind: ValueKind,
}

/// What a value's bytes are, which decides how it can be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Text the client takes as it is: any replacement text is valid.
    Text,
    /// JSON text: replacements must keep it valid JSON.
    Json,
    /// JSON text after a one-byte version header (PostgreSQL binary jsonb).
    JsonWithHeader,
    /// Bytes that cannot hold a replacement (binary values, arrays; text forms of numbers
    /// and dates): a value that needs masking becomes NULL. A protocol may hand the decimal
    /// text of a number it decoded instead of its bytes, so that detectors can read it.
    Opaque,
}

/// What to send instead of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    Keep,
    Replace(Vec<u8>),
    Null,
}

/// What a masker saw over one result set.
#[derive(Debug, Default)]
pub struct MaskReport {
    pub counts: std::collections::BTreeMap<String, u64>,
    pub sample: Option<Vec<Vec<Option<String>>>>,
}

/// Rewrites the values of one result set, in order, row by row.
pub trait Masker: Send {
    /// The value of column `column` of the current row (`None` is SQL NULL).
    fn value(&mut self, column: usize, value: Option<&[u8]>) -> Rewrite;
    /// The current row is complete.
    fn end_row(&mut self) {}
    /// Counts (and the sample, when kept) so far; resets them.
    fn report(&mut self) -> MaskReport;
}

/// Masking of whole documents and byte streams (HTTP and MCP bodies), as a protocol sees it.
/// Implemented by the masking engine; a protocol gets one from [`Hooks::body_masking`].
pub trait BodyMasking: Send + Sync {
    /// Masks a JSON document in place (field rules, then detectors); returns the counts per
    /// rule and detector, never the values.
    fn mask_json(&self, doc: &mut serde_json::Value) -> std::collections::BTreeMap<String, u64>;
    /// Masks a JSON text in one pass, byte for byte where nothing matches: the masked text
    /// (`None` when nothing was masked) and the counts. `None` when the text must be parsed
    /// and masked as a document instead ([`crate::mask::Masking::mask_json_text`] says when).
    #[allow(clippy::type_complexity)]
    fn mask_json_text(
        &self,
        text: &[u8],
    ) -> Option<(Option<Vec<u8>>, std::collections::BTreeMap<String, u64>)>;
    /// A masker for one byte stream (text bodies): detectors over whole lines.
    fn stream(&self) -> Box<dyn StreamMask>;
}

/// Masks one byte stream chunk by chunk, holding back an unfinished line.
pub trait StreamMask: Send {
    /// Takes a chunk; returns the masked bytes that can be sent now.
    fn push(&mut self, chunk: &[u8]) -> Vec<u8>;
    /// Sends everything held, masked (the stream ended or went idle).
    fn flush(&mut self) -> Vec<u8>;
    /// The counts so far, taken.
    fn take_counts(&mut self) -> std::collections::BTreeMap<String, u64>;
    /// Bytes held back now (an unfinished line), for the protocol's idle flush.
    fn held(&self) -> usize;
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

    /// Functions the commands call whose side effects only the server's catalog can tell
    /// (user-defined ones, or a look-alike of a built-in in another schema), and that this
    /// session has not asked about yet. A protocol that can ask its server (over the
    /// gateway's own login) does, and answers with [`Hooks::vouch_functions`]; unanswered,
    /// such calls stay "may have side effects" (fail closed).
    fn functions_to_vouch(&self, _commands: &[Command<'_>]) -> Vec<String> {
        Vec::new()
    }

    /// The server's catalog on [`Hooks::functions_to_vouch`]: for each name, whether every
    /// function of that name is IMMUTABLE or STABLE.
    fn vouch_functions(&self, _facts: Vec<(String, bool)>) {}

    /// Waits for the decision on a held command; returns Allow or Deny (a timeout denies).
    fn wait_for_approval(&self, id: &str) -> impl std::future::Future<Output = Verdict> + Send;

    /// Called once the outcome of a recorded command is known. Never blocks the relay.
    fn result(&self, event: EventId, result: &CommandResult);

    /// True when masking needs to know where result columns come from (table-qualified
    /// rules): the protocol then resolves them, which may cost a catalog lookup.
    fn wants_sources(&self) -> bool {
        false
    }

    /// A masker for one result set with these columns; `None` when nothing needs rewriting
    /// or sampling. Values of columns beyond `columns` (a result the protocol could not
    /// describe) are treated as opaque, and NULLed when column rules are in force.
    fn masker(&self, _columns: Vec<ResultColumn>) -> Option<Box<dyn Masker>> {
        None
    }

    /// Text the client will see outside result rows (server error details): masked by
    /// content, like values.
    fn mask_text<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        std::borrow::Cow::Borrowed(text)
    }

    /// The masking of HTTP and MCP bodies in this session; `None` when nothing in a document
    /// or a text would be masked (no field rule, no detector), so bodies can pass untouched.
    fn body_masking(&self) -> Option<std::sync::Arc<dyn BodyMasking>> {
        None
    }

    /// Records something about the session that is not a command (authentication failures,
    /// protocol errors). Never blocks the relay.
    fn note(&self, kind: &'static str, detail: serde_json::Value);
}
