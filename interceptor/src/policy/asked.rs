//! A command described by a person rather than read off the wire: `policy explain --http
//! 'DELETE https://127.0.0.2/v1/items/7'`, a `kube = "delete pods/web-1 -n default"` case in a
//! `policy test` file.
//!
//! Why this exists: policy authors must be able to ask about every kind of command before the
//! traffic exists, in a notation they already know (an HTTP request line, an MCP method,
//! kubectl, a shell line). Each notation is read into the same structured command the protocol
//! will produce, so `explain` and `test` judge exactly what the gateway would.

use hyper::http::Uri;

use crate::command::{
    shell, Family, HttpRequest, KubeRequest, McpCall, Operation, SshChannel, SshRequest,
    ToolAnnotations,
};

/// A command of any family, owned.
#[derive(Debug, Clone)]
pub enum Asked {
    Connect(String),
    Sql(String),
    Http(HttpRequest),
    Mcp(McpCall),
    Kubernetes(KubeRequest),
    Ssh(SshRequest),
    /// A new login inside a session: the user, and the database asked for.
    Login(String, Option<String>),
}

impl Asked {
    pub fn operation(&self) -> Operation<'_> {
        match self {
            Asked::Connect(destination) => Operation::Connect { destination },
            Asked::Sql(text) => Operation::Sql { text },
            Asked::Http(r) => Operation::Http(r),
            Asked::Mcp(c) => Operation::Mcp(c),
            Asked::Kubernetes(k) => Operation::Kubernetes(k),
            Asked::Ssh(s) => Operation::Ssh(s),
            Asked::Login(user, database) => Operation::Login {
                user,
                database: database.as_deref(),
            },
        }
    }

    /// Reads `text` in the notation of `family`.
    pub fn parse(family: Family, text: &str) -> Result<Asked, String> {
        match family {
            Family::Connect => Ok(Asked::Connect(text.trim().to_owned())),
            Family::Sql => Ok(Asked::Sql(text.to_owned())),
            Family::Http => http(text).map(Asked::Http),
            Family::Mcp => mcp(text).map(Asked::Mcp),
            Family::Kubernetes => kube(text).map(Asked::Kubernetes),
            Family::Ssh => Ok(Asked::Ssh(ssh(text))),
            Family::Login => login(text),
        }
    }

    /// The protocol a target of unknown protocol is taken to speak for this family.
    pub fn default_protocol(&self) -> &'static str {
        match self {
            Asked::Connect(_) => "tcp",
            Asked::Sql(_) => "postgres",
            Asked::Http(r) if r.scheme == "http" => "http",
            Asked::Http(_) => "https",
            Asked::Mcp(_) => "mcp",
            Asked::Kubernetes(_) => "kubernetes",
            Asked::Ssh(_) => "ssh",
            Asked::Login(..) => "mysql",
        }
    }
}

/// `USER [database DB]`, as the canonical text reads after `change user`.
fn login(text: &str) -> Result<Asked, String> {
    let usage = "expected `USER [database DB]`, e.g. `reporting database appdb`";
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [user] => Ok(Asked::Login((*user).to_owned(), None)),
        [user, kw, db] if kw.eq_ignore_ascii_case("database") => {
            Ok(Asked::Login((*user).to_owned(), Some((*db).to_owned())))
        }
        _ => Err(usage.to_owned()),
    }
}

/// `METHOD URL`: `DELETE https://127.0.0.2:8443/v1/items/7?force=true`; a request asking to
/// switch protocols ends as its canonical text does: `GET http://127.0.0.2/ws [upgrade websocket]`.
fn http(text: &str) -> Result<HttpRequest, String> {
    let usage =
        "expected `METHOD URL [upgrade PROTOCOL]`, e.g. `DELETE https://127.0.0.2/v1/items/7`";
    let text = text.trim();
    let (text, upgrade) = match text
        .strip_suffix(']')
        .and_then(|t| t.rsplit_once(" [upgrade "))
    {
        Some((request, protocol)) => {
            let protocol = HttpRequest::upgrade_protocol(protocol)
                .ok_or_else(|| format!("{protocol:?} is not an upgrade protocol; {usage}"))?;
            (request, Some(protocol))
        }
        None => (text, None),
    };
    let (method, url) = text.trim().split_once(char::is_whitespace).ok_or(usage)?;
    if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!("{method:?} is not an HTTP method; {usage}"));
    }
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e}); {usage}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| format!("{url:?} has no scheme; {usage}"))?
        .to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme {scheme:?} is not http or https"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host; {usage}"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?} carries user information: give the host alone (credentials are the gateway's)"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{url:?} has no host; {usage}"));
    }
    let written_port = authority
        .as_str()
        .strip_prefix(authority.host())
        .and_then(|rest| rest.strip_prefix(':'));
    if written_port.is_some() && authority.port_u16().is_none() {
        return Err(format!("{url:?} has a port that is not a number"));
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    let mut host = authority.host().to_ascii_lowercase();
    if let Some(port) = authority.port_u16().filter(|p| *p != default_port) {
        host = format!("{host}:{port}");
    }
    Ok(HttpRequest {
        method: method.to_ascii_uppercase(),
        scheme,
        host,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        upgrade,
    })
}

/// `tools/call NAME [JSON arguments]`, `resources/read URI`, or any other method alone.
fn mcp(text: &str) -> Result<McpCall, String> {
    let text = text.trim();
    let (method, rest) = text
        .split_once(char::is_whitespace)
        .map_or((text, ""), |(m, r)| (m, r.trim()));
    if method.is_empty() {
        return Err("expected an MCP method, e.g. `tools/call delete_customer {\"id\":1}`".into());
    }
    let mut call = McpCall {
        method: method.to_owned(),
        tool: None,
        uri: None,
        arguments: None,
        request_id: None,
        annotations: Default::default(),
    };
    match method {
        "tools/call" => {
            let rest = match rest.strip_prefix('[') {
                Some(hints) => {
                    let (hints, after) = hints
                        .split_once(']')
                        .ok_or("an unclosed `[` before the tool name")?;
                    call.annotations = annotations(hints)?;
                    after.trim_start()
                }
                None => rest,
            };
            let (tool, args) = rest
                .split_once(char::is_whitespace)
                .map_or((rest, ""), |(t, a)| (t, a.trim()));
            if tool.is_empty() {
                return Err("tools/call needs a tool name".to_owned());
            }
            // MCP's tool names: 1 to 128 of A-Z, a-z, 0-9, `_`, `-`, `.` (so a name can
            // never be read as the `[annotations]` before it).
            if tool.len() > 128
                || !tool
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(format!(
                    "{tool:?} is not an MCP tool name (1 to 128 of A-Z, a-z, 0-9, _, -, .)"
                ));
            }
            call.tool = Some(tool.to_owned());
            if !args.is_empty() {
                call.arguments = Some(
                    serde_json::from_str(args)
                        .map_err(|e| format!("the arguments are not JSON: {e}"))?,
                );
            }
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            if rest.is_empty() {
                return Err(format!("{method} needs a resource URI"));
            }
            call.uri = Some(rest.to_owned());
        }
        _ => {}
    }
    Ok(call)
}

/// `readOnlyHint, destructiveHint=false`: the annotations a server would have listed for the
/// tool, as `policy explain` and `policy test` take them (`tools/call [readOnlyHint] NAME`).
fn annotations(text: &str) -> Result<ToolAnnotations, String> {
    let mut hints = ToolAnnotations::default();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => match v.trim() {
                "true" => (n.trim(), true),
                "false" => (n.trim(), false),
                other => return Err(format!("{n}={other}: a hint is true or false")),
            },
            None => (item, true),
        };
        let slot = match name {
            "readOnlyHint" => &mut hints.read_only,
            "destructiveHint" => &mut hints.destructive,
            "idempotentHint" => &mut hints.idempotent,
            "openWorldHint" => &mut hints.open_world,
            other => {
                return Err(format!(
                    "unknown tool annotation {other:?} (readOnlyHint, destructiveHint, \
                     idempotentHint, openWorldHint)"
                ))
            }
        };
        *slot = Some(value);
    }
    Ok(hints)
}

/// Resources that belong to no namespace (the common built-in ones).
const CLUSTER_SCOPED: &[&str] = &[
    "namespaces",
    "nodes",
    "persistentvolumes",
    "clusterroles",
    "clusterrolebindings",
    "customresourcedefinitions",
    "storageclasses",
    "priorityclasses",
    "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations",
    "apiservices",
    "certificatesigningrequests",
];

/// Subresources that are verbs of their own in the command model.
const VERB_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// kubectl-like: `VERB RESOURCE[.GROUP][/NAME][/SUBRESOURCE] [NAME] [-n NS|-A]
/// [--subresource SUB]`, or `VERB /path` for non-resource requests. `get` without a name is
/// `list`, `delete` without one `deletecollection`; `exec pods/web-1` is the `exec` verb on the
/// `pods/exec` subresource. Without `-n`, a namespaced resource is in `default` (kubectl's
/// default context namespace), and `-A` means every namespace.
fn kube(text: &str) -> Result<KubeRequest, String> {
    let usage = "expected kubectl-like `VERB RESOURCE[/NAME] [-n NAMESPACE]`, e.g. `delete pods/web-1 -n default`";
    // What follows ` -- ` is an exec's command, word by word (no shell quoting is read back).
    let (text, command) = match text.split_once(" -- ") {
        Some((head, tail)) => (head, tail.split_whitespace().map(str::to_owned).collect()),
        None => (text, Vec::new()),
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let (verb, rest) = words.split_first().ok_or(usage)?;
    let mut verb = verb.to_ascii_lowercase();
    let mut positional = Vec::new();
    let mut namespace = None;
    let mut all_namespaces = false;
    let mut subresource = None;
    let mut iter = rest.iter();
    while let Some(w) = iter.next() {
        match *w {
            "-n" | "--namespace" => {
                namespace = Some(iter.next().ok_or("-n needs a namespace")?.to_string())
            }
            "-A" | "--all-namespaces" => all_namespaces = true,
            "--subresource" => {
                subresource = Some(iter.next().ok_or("--subresource needs a name")?.to_string())
            }
            w if w.starts_with("--namespace=") => {
                namespace = Some(w["--namespace=".len()..].to_owned())
            }
            w if w.starts_with("--subresource=") => {
                subresource = Some(w["--subresource=".len()..].to_owned())
            }
            w if w.starts_with('-') => return Err(format!("unknown option {w:?}; {usage}")),
            w => positional.push(w),
        }
    }
    let (first, more) = positional.split_first().ok_or(usage)?;
    if first.starts_with('/') {
        return Ok(KubeRequest {
            verb,
            api_group: String::new(),
            api_version: String::new(),
            resource: None,
            subresource: None,
            namespace: None,
            name: None,
            path: Some((*first).to_owned()),
            ..KubeRequest::default()
        });
    }
    let mut parts = first.split('/');
    let kind = parts.next().unwrap_or_default();
    let mut name = parts.next().map(str::to_owned);
    if let Some(sub) = parts.next() {
        subresource = Some(sub.to_owned());
    }
    if parts.next().is_some() {
        return Err(format!("{first:?}: too many `/`; {usage}"));
    }
    if name.is_none() {
        name = more.first().map(|n| (*n).to_owned());
    }
    let (resource, api_group) = kind.split_once('.').map_or((kind, ""), |(r, g)| (r, g));
    if resource.is_empty() {
        return Err(usage.to_owned());
    }
    if VERB_SUBRESOURCES.contains(&verb.as_str()) {
        subresource.get_or_insert_with(|| verb.clone());
    }
    if name.is_none() {
        match verb.as_str() {
            "get" => verb = "list".to_owned(),
            "delete" => verb = "deletecollection".to_owned(),
            _ => {}
        }
    }
    let namespace = if CLUSTER_SCOPED.contains(&resource) || all_namespaces {
        None
    } else {
        Some(namespace.unwrap_or_else(|| "default".to_owned()))
    };
    Ok(KubeRequest {
        verb,
        api_group: api_group.to_ascii_lowercase(),
        api_version: if api_group.is_empty() { "v1" } else { "" }.to_owned(),
        resource: Some(resource.to_ascii_lowercase()),
        subresource,
        namespace,
        name,
        path: None,
        kind: None,
        command,
    })
}

/// A command line (`exec`), or `@shell`, `@subsystem NAME`, `@forward HOST:PORT` for the
/// other channel requests, `@sftp OPERATION ARGS…` for an operation inside sftp
/// (`@sftp write /srv/x`; arguments quoted as in a shell).
fn ssh(text: &str) -> SshRequest {
    let trimmed = text.trim();
    let channel = |channel: SshChannel| SshRequest {
        channel,
        command: None,
        line: None,
        subsystem: None,
        forward: None,
    };
    if trimmed == "@shell" {
        return channel(SshChannel::Shell);
    }
    if let Some(name) = trimmed.strip_prefix("@subsystem ") {
        return SshRequest {
            subsystem: Some(name.trim().to_owned()),
            ..channel(SshChannel::Subsystem)
        };
    }
    if let Some(operation) = trimmed.strip_prefix("@sftp ") {
        let mut words = vec!["sftp".to_owned()];
        words.extend(
            shell::parse(operation)
                .commands
                .into_iter()
                .next()
                .unwrap_or_default(),
        );
        return SshRequest::subsystem_operation("sftp", words);
    }
    if let Some(to) = trimmed.strip_prefix("@forward ") {
        return SshRequest {
            forward: Some(to.trim().to_owned()),
            ..channel(SshChannel::Forward)
        };
    }
    SshRequest {
        command: Some(text.to_owned()),
        line: Some(shell::parse(text)),
        ..channel(SshChannel::Exec)
    }
}

#[cfg(test)]
mod tests;
