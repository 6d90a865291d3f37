//! What policy authors run: `policy check`, `policy explain` and `policy test`. Kept in the
//! library so the same code paths as the gateway judge the examples.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{asked::Asked, DecisionKind, Engine, Policies, Policy, PolicyError, Subject, Verdict};
use crate::command::Family;

/// A subject described on the command line or in a test case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectSpec {
    pub user: Option<String>,
    pub uid: Option<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub exe: Option<String>,
    pub unit: Option<String>,
    pub cgroup: Option<String>,
    pub run: Option<String>,
}

impl SubjectSpec {
    /// Fills in the uid from the user name (or the name from the uid) via the user database.
    pub fn subject(&self) -> Subject {
        let (mut uid, mut user) = (self.uid, self.user.clone());
        if uid.is_none() {
            if let Some(name) = &user {
                uid = nix::unistd::User::from_name(name)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw());
            }
        }
        if user.is_none() {
            if let Some(id) = uid {
                user = crate::capture::identity::user_name(id);
            }
        }
        Subject {
            uid: uid.unwrap_or(u32::MAX),
            user,
            groups: self.groups.clone(),
            exe: self.exe.clone(),
            unit: self.unit.clone(),
            cgroup: self.cgroup.clone(),
            run_id: self.run.clone(),
        }
    }
}

/// Human-readable explanation of a verdict: the decision, the rule, and what the command
/// was found to do (for SQL, each statement).
pub fn explain_text(asked: &Asked, v: &Verdict) -> String {
    let mut out = format!(
        "decision: {}\nrule:     {}\nmessage:  {}\n",
        v.decision.as_str(),
        v.rule.as_deref().unwrap_or("(none matched: deny)"),
        v.message
    );
    let op = asked.operation();
    if op.family() != Family::Sql {
        let objects = op.objects();
        out.push_str(&format!(
            "command:  {}\n  kind:    {}\n  action:  {}\n  objects: {}\n",
            op.canonical(),
            op.family().as_str(),
            op.action().unwrap_or_default(),
            if objects.is_empty() {
                "-".to_owned()
            } else {
                objects.join(", ")
            }
        ));
        if let Some(opaque) = op_opaque(asked) {
            out.push_str(&format!("  opaque:  {opaque}\n"));
        }
    }
    if let Some(e) = &v.parse_error {
        out.push_str(&format!("parse error: {e}\n"));
    }
    for (i, s) in v.statements.iter().enumerate() {
        let a = &s.analysis;
        let list = |set: &std::collections::BTreeSet<String>| {
            if set.is_empty() {
                "-".to_owned()
            } else {
                set.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        let classes: Vec<String> = a
            .classes
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        out.push_str(&format!(
            "statement {}: {}\n  decision:       {} ({})\n  classes:        {}\n  tables read:    {}\n  tables written: {}\n  columns:        {}\n  functions:      {}\n  dangerous:      {}\n",
            i + 1,
            a.text,
            s.decision.as_str(),
            s.rule.as_deref().unwrap_or("no rule"),
            classes.join(", "),
            list(&a.tables_read),
            list(&a.tables_written),
            list(&a.columns),
            list(&a.functions),
            list(&a.dangerous),
        ));
    }
    out
}

/// Why a command line cannot be seen through, for `explain`.
fn op_opaque(asked: &Asked) -> Option<&str> {
    match asked {
        Asked::Ssh(s) => s.line.as_ref()?.opaque.as_deref(),
        _ => None,
    }
}

/// A file of cases for `policy test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Policy to test (relative to the case file); default: the configuration's.
    pub policy: Option<PathBuf>,
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: Option<String>,
    pub target: Option<String>,
    /// The target's protocol; default: the one the command's kind implies (postgres for SQL,
    /// tcp for connections, http/https, mcp, kubernetes, ssh).
    pub protocol: Option<String>,
    /// The command, exactly one of: SQL; a connection ("ip:port"); an HTTP request line
    /// (`DELETE https://127.0.0.2/v1/items/7`); an MCP call (`tools/call NAME {json}`); a
    /// kubectl-like request (`delete pods/web-1 -n default`); an SSH command line.
    pub sql: Option<String>,
    pub connect: Option<String>,
    pub http: Option<String>,
    pub mcp: Option<String>,
    pub kube: Option<String>,
    pub ssh: Option<String>,
    /// A login inside a session (`USER [database DB]`, MySQL's `COM_CHANGE_USER`).
    pub login: Option<String>,
    pub expect: DecisionKind,
    /// The rule expected to decide (optional).
    pub rule: Option<String>,
    #[serde(flatten)]
    pub subject: SubjectSpec,
}

impl Case {
    /// The case's command, read in its notation.
    pub fn asked(&self) -> Result<Asked, String> {
        let given: Vec<(Family, &String)> = [
            (Family::Sql, &self.sql),
            (Family::Connect, &self.connect),
            (Family::Http, &self.http),
            (Family::Mcp, &self.mcp),
            (Family::Kubernetes, &self.kube),
            (Family::Ssh, &self.ssh),
            (Family::Login, &self.login),
        ]
        .into_iter()
        .filter_map(|(f, text)| text.as_ref().map(|t| (f, t)))
        .collect();
        match given.as_slice() {
            [(family, text)] => Asked::parse(*family, text),
            _ => Err(
                "a case needs exactly one of `sql`, `connect`, `http`, `mcp`, `kube`, `ssh` or \
                 `login`"
                    .to_owned(),
            ),
        }
    }

    fn text(&self) -> &str {
        [
            &self.sql,
            &self.connect,
            &self.http,
            &self.mcp,
            &self.kube,
            &self.ssh,
            &self.login,
        ]
        .into_iter()
        .find_map(|t| t.as_deref())
        .unwrap_or("")
    }
}

/// The outcome of one case.
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

pub fn load_cases(path: &Path) -> Result<CaseFile, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    crate::toml_file::parse_toml(&text).map_err(|(line, column, message)| PolicyError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    })
}

/// Runs every case against `policies`.
pub fn run_cases(policies: Policies, cases: &[Case]) -> Vec<CaseResult> {
    let engine = Engine::new(policies);
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let name = case
                .name
                .clone()
                .unwrap_or_else(|| format!("case {}: {}", i + 1, case.text()));
            let subject = case.subject.subject();
            let asked = match case.asked() {
                Ok(asked) => asked,
                Err(detail) => {
                    return CaseResult {
                        name,
                        passed: false,
                        detail,
                    }
                }
            };
            let protocol = case.protocol.as_deref().unwrap_or(asked.default_protocol());
            let v = engine.evaluate(
                &subject,
                case.target.as_deref(),
                protocol,
                asked.operation(),
            );
            let rule_ok = case.rule.is_none() || case.rule == v.rule;
            let passed = v.decision == case.expect && rule_ok;
            let detail = format!(
                "expected {}{}, got {} (rule {})",
                case.expect.as_str(),
                case.rule
                    .as_deref()
                    .map(|r| format!(" by {r}"))
                    .unwrap_or_default(),
                v.decision.as_str(),
                v.rule.as_deref().unwrap_or("none")
            );
            CaseResult {
                name,
                passed,
                detail,
            }
        })
        .collect()
}

/// Policies for `check`/`test` given an explicit file or directory: it applies to everything.
pub fn single(path: &Path) -> Result<Policies, PolicyError> {
    Ok(Policies {
        by_target: Default::default(),
        fallback: std::sync::Arc::new(Policy::load(path)?),
    })
}

/// Counts rules, for `check`'s report.
pub fn rule_count(p: &Policy) -> usize {
    p.rules.len()
}
