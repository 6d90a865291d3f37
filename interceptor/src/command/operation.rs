//! What a command does, in the protocol-neutral terms that policy matches on, approvers read
//! and the journal records: a family (the policy's `kinds`), an action (a verb), the objects
//! acted on, structured attributes, and one canonical text.
//!
//! Why this exists: every protocol describes its commands here, once, instead of bending the
//! SQL-shaped fields. SQL is the exception that proves the rule: its action and objects come
//! from the policy's own analysis of the text (PostgreSQL's parser), so a SQL operation carries
//! only its text. The other families arrive already structured by their protocol's parser.
//!
//! | Family | Action | Objects | Attributes |
//! |---|---|---|---|
//! | sql | statement classes | tables read and written | functions, columns |
//! | http | method | `host/path` | scheme, query |
//! | mcp | JSON-RPC method | tool (tools/call), uri (resources/read) | arguments |
//! | kubernetes | verb | `group/version/resource[/subresource]`, `namespace/name` | |
//! | ssh | exec, shell, subsystem, forward | programs of the command line | subsystem, forward |
//! | login | change_user | the user name asked for | database |

use serde::{Deserialize, Serialize};

/// The families of commands a policy rule can be about (`[rule.match] kinds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// The connection itself (plain TCP targets and untargeted destinations).
    Connect,
    /// A SQL statement (PostgreSQL, MySQL).
    Sql,
    /// An HTTP request.
    Http,
    /// An MCP JSON-RPC message (carried over HTTP).
    Mcp,
    /// A Kubernetes API request.
    Kubernetes,
    /// An SSH channel request: a command, a shell, a subsystem or a forward.
    Ssh,
    /// A new login inside an open session (MySQL's `COM_CHANGE_USER`).
    Login,
}

impl Family {
    pub const ALL: [Family; 7] = [
        Family::Connect,
        Family::Sql,
        Family::Http,
        Family::Mcp,
        Family::Kubernetes,
        Family::Ssh,
        Family::Login,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Connect => "connect",
            Family::Sql => "sql",
            Family::Http => "http",
            Family::Mcp => "mcp",
            Family::Kubernetes => "kubernetes",
            Family::Ssh => "ssh",
            Family::Login => "login",
        }
    }
}

/// An HTTP request, as the gateway will forward it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRequest {
    /// Upper case, as on the wire.
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// The authority the request is for (`Host`, or the URI's authority), lower case, with
    /// the port when it is not the scheme's default.
    pub host: String,
    /// The path, percent-decoded once and normalised (`.`/`..` resolved, `//` folded) the way
    /// the gateway forwards it.
    pub path: String,
    pub query: Option<String>,
    /// The protocol the request asks to switch to (`Upgrade`), lower case (`websocket`): a
    /// request that would stop being HTTP. Policy allows it only by a rule naming it, since
    /// what follows the switch is bytes no command describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
}

impl HttpRequest {
    /// `DELETE https://host/path?query`, and `GET http://host/ws [upgrade websocket]` for a
    /// request asking to switch protocols (the suffix cannot be part of a URL: no spaces).
    pub fn canonical(&self) -> String {
        let mut text = format!(
            "{} {}://{}{}",
            self.method, self.scheme, self.host, self.path
        );
        if let Some(q) = &self.query {
            text.push('?');
            text.push_str(q);
        }
        if let Some(upgrade) = &self.upgrade {
            text.push_str(" [upgrade ");
            text.push_str(upgrade);
            text.push(']');
        }
        text
    }

    /// An `Upgrade` protocol as policy names it: lower case, a token with an optional
    /// `/version` (RFC 9110 §7.8); `None` for anything else, which the gateway refuses.
    pub fn upgrade_protocol(value: &str) -> Option<String> {
        let value = value.trim().to_ascii_lowercase();
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        let ok = match value.split_once('/') {
            Some((name, version)) => token(name) && token(version),
            None => token(&value),
        };
        ok.then_some(value)
    }

    /// `host/path`, what `paths`/`hosts` rules and the journal's objects name.
    pub fn object(&self) -> String {
        format!("{}{}", self.host, self.path)
    }

    /// This request as the journal and approvers may see it: the values of query parameters
    /// whose names look like secrets (`api_key`, `token`, `sig`, `password`…) replaced by
    /// `[REDACTED]`. Names stay, so a reader still sees that a key was sent.
    pub fn redacted(&self) -> HttpRequest {
        let query = self.query.as_ref().map(|q| {
            q.split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, value)) if !value.is_empty() && secret_name(name) => {
                        format!("{name}=[REDACTED]")
                    }
                    _ => pair.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&")
        });
        HttpRequest {
            query,
            ..self.clone()
        }
    }
}

/// Whether a query parameter's name says its value is a credential. Matched on the name
/// lower-cased with `-` and `.` read as `_`, by whole words or common suffixes, so that
/// `X-Amz-Signature`, `access_token` and `apiKey` are caught and `tokens_used` is not.
fn secret_name(name: &str) -> bool {
    const EXACT: [&str; 12] = [
        "key",
        "token",
        "sig",
        "signature",
        "password",
        "passwd",
        "pwd",
        "secret",
        "auth",
        "code",
        "apikey",
        "session",
    ];
    const SUFFIXES: [&str; 9] = [
        "_key",
        "_token",
        "_secret",
        "_password",
        "_signature",
        "_sig",
        "apikey",
        "token",
        "_credential",
    ];
    let name: String = name
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    EXACT.contains(&name.as_str()) || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// What a tool server says about one of its tools (`tools/list`, `annotations`): hints, not
/// guarantees. `None` when the server did not say (or the gateway has not seen its list): an
/// unknown hint never counts as read-only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ToolAnnotations {
    /// `readOnlyHint`: the tool does not modify its environment.
    pub read_only: Option<bool>,
    /// `destructiveHint`: the tool may perform destructive updates.
    pub destructive: Option<bool>,
    /// `idempotentHint`: calling it again with the same arguments has no further effect.
    pub idempotent: Option<bool>,
    /// `openWorldHint`: the tool interacts with an open world of external entities.
    pub open_world: Option<bool>,
}

impl ToolAnnotations {
    /// True when nothing is known.
    pub fn is_unknown(&self) -> bool {
        *self == ToolAnnotations::default()
    }
}

/// An MCP message (JSON-RPC 2.0) from the agent to a tool server.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct McpCall {
    /// The JSON-RPC method: `tools/call`, `tools/list`, `resources/read`, `initialize`…
    pub method: String,
    /// For `tools/call`: the tool's name.
    pub tool: Option<String>,
    /// For `resources/read` and the like: the resource's URI.
    pub uri: Option<String>,
    /// For `tools/call`: the arguments, as sent.
    pub arguments: Option<serde_json::Value>,
    /// The JSON-RPC id, which pairs the server's response with this call.
    pub request_id: Option<serde_json::Value>,
    /// For `tools/call`: what the server's `tools/list` said about the tool (learned by the
    /// gateway; not part of the canonical text).
    #[serde(skip_serializing_if = "ToolAnnotations::is_unknown")]
    pub annotations: ToolAnnotations,
}

impl McpCall {
    /// `tools/call delete_customer {"id":1}`, `resources/read file:///x`, `tools/list`.
    pub fn canonical(&self) -> String {
        let mut text = self.method.clone();
        for part in [self.tool.as_deref(), self.uri.as_deref()]
            .into_iter()
            .flatten()
        {
            text.push(' ');
            text.push_str(part);
        }
        if let Some(args) = &self.arguments {
            text.push(' ');
            text.push_str(&args.to_string());
        }
        text
    }
}

/// A Kubernetes API request, read the way the API server reads its path (its `RequestInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KubeRequest {
    /// get, list, watch, create, update, patch, delete, deletecollection, or a subresource
    /// verb (exec, attach, portforward, proxy); for non-resource paths the HTTP method in
    /// lower case.
    pub verb: String,
    /// Empty for the core group.
    pub api_group: String,
    pub api_version: String,
    /// `None` for non-resource paths (`/healthz`, `/version`).
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The request path, for non-resource requests.
    pub path: Option<String>,
    /// The object kind the request body names (create, update, patch), when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// What an exec runs (its `command` query parameters, in order); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

impl KubeRequest {
    /// The resource as rules name it: `pods`, `deployments.apps`, `pods/exec`,
    /// `deployments.apps/scale`; or the path for non-resource requests.
    pub fn resource_name(&self) -> String {
        let Some(resource) = &self.resource else {
            return self.path.clone().unwrap_or_default();
        };
        let mut name = resource.clone();
        if !self.api_group.is_empty() {
            name.push('.');
            name.push_str(&self.api_group);
        }
        if let Some(sub) = &self.subresource {
            name.push('/');
            name.push_str(sub);
        }
        name
    }

    /// kubectl-like: `delete pods/web-1 -n default`, `get deployments.apps -A`… (`-A`: every
    /// namespace, for a namespaced list without one), `update deployments.apps/web/scale -n
    /// default`. A subresource that is the verb itself is not repeated, and an exec's command
    /// follows `--`, quoted for a shell: `exec pods/web-1 -n default -- sh -c 'ls /'`.
    pub fn canonical(&self) -> String {
        let Some(resource) = &self.resource else {
            return format!("{} {}", self.verb, self.path.as_deref().unwrap_or("/"));
        };
        let mut what = resource.clone();
        if !self.api_group.is_empty() {
            what.push('.');
            what.push_str(&self.api_group);
        }
        if let Some(name) = &self.name {
            what.push('/');
            what.push_str(name);
        }
        if let Some(sub) = self.subresource.as_ref().filter(|s| **s != self.verb) {
            what.push('/');
            what.push_str(sub);
        }
        let mut text = match &self.namespace {
            Some(ns) => format!("{} {what} -n {ns}", self.verb),
            None => format!("{} {what}", self.verb),
        };
        if !self.command.is_empty() {
            text.push_str(" --");
            for word in &self.command {
                text.push(' ');
                text.push_str(&shell_quote(word));
            }
        }
        text
    }

    /// `group/version/resource[/subresource]` and, when named, `namespace/name`.
    pub fn objects(&self) -> Vec<String> {
        let Some(resource) = &self.resource else {
            return self.path.iter().cloned().collect();
        };
        let mut kind = format!("{}/{}/{resource}", self.api_group, self.api_version);
        if let Some(sub) = &self.subresource {
            kind.push('/');
            kind.push_str(sub);
        }
        let mut objects = vec![kind];
        if let Some(name) = &self.name {
            objects.push(format!(
                "{}/{name}",
                self.namespace.as_deref().unwrap_or_default()
            ));
        }
        objects
    }
}

/// A word as a POSIX shell would read it back: bare when it holds only safe characters, else
/// in single quotes (a quote inside written `'\''`).
fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The kinds of SSH channel request the gateway judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SshChannel {
    /// A command (`ssh host CMD`).
    Exec,
    /// An interactive shell.
    Shell,
    /// A subsystem such as sftp.
    Subsystem,
    /// A TCP forward through the server (`ssh -L`).
    Forward,
}

impl SshChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            SshChannel::Exec => "exec",
            SshChannel::Shell => "shell",
            SshChannel::Subsystem => "subsystem",
            SshChannel::Forward => "forward",
        }
    }
}

/// A shell command line, read as far as the gateway can be sure of what it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommandLine {
    /// The program of every simple command, in order (`ls -l | grep x` → ls, grep); a
    /// wrapper such as `sudo` or `env` counts, and so does the program it wraps.
    pub programs: Vec<String>,
    /// Each simple command as its words after quote removal (`rm -rf /srv` → rm, -rf, /srv),
    /// the program as written; a wrapped command (`sudo rm …`) is listed both whole and
    /// unwrapped, like `programs`. What policy's `commands` patterns match.
    pub commands: Vec<Vec<String>>,
    /// Files the line redirects to or from (`> out.txt`, `< in`).
    pub redirections: Vec<String>,
    /// The files among `redirections` that are written (`>`, `>>`, `&>`, `<>`), except
    /// `/dev/null`: a line with any is a write, whatever its programs.
    pub writes: Vec<String>,
    /// Why the gateway cannot see what the line runs (command substitution, variables in
    /// command position, `eval`, `sh -c`, here-documents…); `None` when it can.
    pub opaque: Option<String>,
}

/// An SSH channel request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshRequest {
    pub channel: SshChannel,
    /// The command line, for `exec`.
    pub command: Option<String>,
    /// What `command` runs, for `exec` (the protocol parses it).
    pub line: Option<CommandLine>,
    pub subsystem: Option<String>,
    /// `host:port`, for `forward`.
    pub forward: Option<String>,
}

impl SshRequest {
    /// The command line itself for exec; `shell`, `subsystem sftp` (or the operation within
    /// it, `sftp write /srv/x`), `forward host:port`.
    pub fn canonical(&self) -> String {
        match self.channel {
            SshChannel::Exec => self.command.clone().unwrap_or_default(),
            SshChannel::Shell => "shell".to_owned(),
            // An operation inside a subsystem (`sftp write /srv/x`) is shown as itself.
            SshChannel::Subsystem => match &self.command {
                Some(operation) => operation.clone(),
                None => format!("subsystem {}", self.subsystem.as_deref().unwrap_or("")),
            },
            SshChannel::Forward => format!("forward {}", self.forward.as_deref().unwrap_or("")),
        }
    }

    /// An operation inside a subsystem (`sftp write /srv/x`): its words are the one simple
    /// command of its line, so `commands` patterns judge it (`sftp read **`); its text, the
    /// words quoted as a shell would need them, is what approvers see.
    pub fn subsystem_operation(subsystem: &str, words: Vec<String>) -> SshRequest {
        let text = words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ");
        SshRequest {
            channel: SshChannel::Subsystem,
            command: Some(text),
            line: Some(CommandLine {
                programs: words.first().cloned().into_iter().collect(),
                commands: vec![words],
                ..CommandLine::default()
            }),
            subsystem: Some(subsystem.to_owned()),
            forward: None,
        }
    }

    /// The programs of the command line; the forward's destination; the subsystem.
    pub fn objects(&self) -> Vec<String> {
        match self.channel {
            SshChannel::Exec => self
                .line
                .as_ref()
                .map(|l| l.programs.clone())
                .unwrap_or_default(),
            SshChannel::Shell => Vec::new(),
            SshChannel::Subsystem => self.subsystem.iter().cloned().collect(),
            SshChannel::Forward => self.forward.iter().cloned().collect(),
        }
    }
}

/// What a command does, as policy is asked about it.
#[derive(Debug, Clone, Copy)]
pub enum Operation<'a> {
    /// Opening a connection to `destination` ("ip:port").
    Connect {
        destination: &'a str,
    },
    /// SQL text (one or more statements); policy analyses it.
    Sql {
        text: &'a str,
    },
    Http(&'a HttpRequest),
    Mcp(&'a McpCall),
    Kubernetes(&'a KubeRequest),
    Ssh(&'a SshRequest),
    /// A new login inside an open session, as the user `user` (and default `database`). The
    /// gateway keeps logging in upstream with the target's credentials whatever user is named.
    Login {
        user: &'a str,
        database: Option<&'a str>,
    },
}

impl Operation<'_> {
    pub fn family(&self) -> Family {
        match self {
            Operation::Connect { .. } => Family::Connect,
            Operation::Sql { .. } => Family::Sql,
            Operation::Http(_) => Family::Http,
            Operation::Mcp(_) => Family::Mcp,
            Operation::Kubernetes(_) => Family::Kubernetes,
            Operation::Ssh(_) => Family::Ssh,
            Operation::Login { .. } => Family::Login,
        }
    }

    /// The text a human approves and the journal records.
    pub fn canonical(&self) -> String {
        match self {
            Operation::Connect { destination } => format!("connect {destination}"),
            Operation::Sql { text } => (*text).to_owned(),
            Operation::Http(r) => r.canonical(),
            Operation::Mcp(c) => c.canonical(),
            Operation::Kubernetes(k) => k.canonical(),
            Operation::Ssh(s) => s.canonical(),
            Operation::Login { user, database } => match database {
                Some(db) => format!("change user {user} database {db}"),
                None => format!("change user {user}"),
            },
        }
    }

    /// The action (verb), for families whose protocol knows it. SQL's is the policy's
    /// analysis (statement classes), so `None` here.
    pub fn action(&self) -> Option<String> {
        match self {
            Operation::Connect { .. } => Some("connect".to_owned()),
            Operation::Sql { .. } => None,
            Operation::Http(r) => Some(r.method.clone()),
            Operation::Mcp(c) => Some(c.method.clone()),
            Operation::Kubernetes(k) => Some(k.verb.clone()),
            Operation::Ssh(s) => Some(s.channel.as_str().to_owned()),
            Operation::Login { .. } => Some("change_user".to_owned()),
        }
    }

    /// The objects acted on (SQL's come from the policy's analysis: empty here).
    pub fn objects(&self) -> Vec<String> {
        match self {
            Operation::Connect { destination } => vec![(*destination).to_owned()],
            Operation::Sql { .. } => Vec::new(),
            Operation::Http(r) => vec![r.object()],
            Operation::Mcp(c) => c.tool.iter().chain(c.uri.iter()).cloned().collect(),
            Operation::Kubernetes(k) => k.objects(),
            Operation::Ssh(s) => s.objects(),
            Operation::Login { user, .. } => vec![(*user).to_owned()],
        }
    }

    /// The protocol's structured detail, under the key the journal files it by
    /// (`http`, `mcp`, `kube`, `ssh`); `None` for SQL and connections.
    pub fn detail(&self) -> Option<(&'static str, serde_json::Value)> {
        let value = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or_default();
        match self {
            Operation::Connect { .. } | Operation::Sql { .. } => None,
            Operation::Login { user, database } => Some((
                "login",
                serde_json::json!({ "user": user, "database": database }),
            )),
            Operation::Http(r) => Some(("http", value(serde_json::to_value(r.redacted())))),
            Operation::Mcp(c) => Some(("mcp", value(serde_json::to_value(c)))),
            Operation::Kubernetes(k) => Some(("kube", value(serde_json::to_value(k)))),
            Operation::Ssh(s) => Some((
                "ssh",
                serde_json::json!({
                    "channel": s.channel,
                    "command": s.command,
                    "programs": s.line.as_ref().map(|l| &l.programs),
                    "commands": s.line.as_ref().map(|l| {
                        l.commands.iter().map(|c| c.join(" ")).collect::<Vec<_>>()
                    }),
                    "redirections": s.line.as_ref().map(|l| &l.redirections),
                    "writes": s.line.as_ref().map(|l| &l.writes),
                    "opaque": s.line.as_ref().and_then(|l| l.opaque.as_deref()),
                    "subsystem": s.subsystem,
                    "forward": s.forward,
                }),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
