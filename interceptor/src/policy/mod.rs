//! Command-level policy: who (identity) × where (target) × what (the command, SQL-aware).
//!
//! Why this exists: credentials cannot say "this agent may read reporting tables but never drop
//! anything". Every command is judged here, from the caller's identity and what the command
//! really does ([`sql::analyze`] sees through CTEs, EXPLAIN ANALYZE, PREPARE, comments…).
//!
//! **Precedence, defined once:** for each statement, every rule whose `match` holds is a
//! candidate; any `deny` wins, then `review`, then `allow`; no matching rule means deny. A
//! message with several statements gets the strictest statement's decision (all must pass).
//!
//! **Match semantics:** identity and target keys hold if any listed pattern matches. Command
//! keys over sets (classes, tables, columns, functions) hold for an `allow` rule only if they
//! cover *every* element the statement has (so an allow for reads cannot let a hidden delete
//! through), and for `deny`/`review` rules if *any* element matches.
//!
//! [`Engine`] adds what makes this cheap at run time: the parsed analysis of each statement
//! text is cached, and policies are swapped atomically on reload.

pub mod asked;
pub mod file;
mod masks;
pub mod mysql;
pub mod pg_grammar;
pub mod sql;
pub mod tooling;
mod words;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::command::{
    Family, HttpRequest, KubeRequest, McpCall, Operation, SshChannel, SshRequest,
};
use crate::mask::{
    detect::{Detector, Scanner},
    DetectorRule, HashKey, Masking,
};
pub use file::{DecisionKind, PolicyError};
use file::{MatchFile, RuleFile, Source};
use masks::MaskRule;
use sql::{Analysis, Parsed, StatementClass};

/// The policy applied when the configuration names none.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");

/// Who is asking, as policy sees it.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub uid: u32,
    pub user: Option<String>,
    /// Group names and numeric ids (as text) the caller belongs to.
    pub groups: Vec<String>,
    pub exe: Option<String>,
    pub unit: Option<String>,
    pub cgroup: Option<String>,
    pub run_id: Option<String>,
}

/// What is asked: any kind of command, in the protocol-neutral model.
pub type Request<'a> = Operation<'a>;

/// The decision about one statement.
#[derive(Debug, Clone, Serialize)]
pub struct StatementVerdict {
    pub analysis: Analysis,
    pub decision: DecisionKind,
    pub rule: Option<String>,
}

/// The decision about a whole request.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub decision: DecisionKind,
    /// The rule that decided; `None` when no rule matched (which denies).
    pub rule: Option<String>,
    pub message: String,
    #[serde(skip)]
    pub review_timeout: Option<Duration>,
    pub parse_error: Option<String>,
    pub statements: Vec<StatementVerdict>,
}

/// A compiled list of glob patterns. A pattern starting with `!` excludes: the list holds for
/// a value if it matches some positive pattern (or there are none) and no negative one.
#[derive(Debug)]
struct Patterns {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Patterns {
    fn compile(list: &[String], case_insensitive: bool) -> Result<Option<Patterns>, String> {
        Patterns::compile_with(list, case_insensitive, false)
    }

    /// `separated`: `*` and `?` stop at `/` (`**` crosses it), for paths.
    fn compile_with(
        list: &[String],
        case_insensitive: bool,
        separated: bool,
    ) -> Result<Option<Patterns>, String> {
        if list.is_empty() {
            return Ok(None);
        }
        let build = |patterns: Vec<&str>| -> Result<Option<GlobSet>, String> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut set = GlobSetBuilder::new();
            for p in patterns {
                let glob = GlobBuilder::new(p)
                    .case_insensitive(case_insensitive)
                    .literal_separator(separated)
                    .build()
                    .map_err(|e| format!("pattern {p:?}: {e}"))?;
                set.add(glob);
            }
            set.build().map(Some).map_err(|e| e.to_string())
        };
        let (negative, positive): (Vec<&str>, Vec<&str>) = list
            .iter()
            .map(String::as_str)
            .partition(|p| p.starts_with('!'));
        Ok(Some(Patterns {
            include: build(positive)?,
            exclude: build(negative.iter().map(|p| &p[1..]).collect())?,
        }))
    }

    fn matches(&self, value: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(value))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(value))
    }

    /// For a value that may be absent (no unit, no exe): absent only passes pure exclusions.
    fn any(&self, value: Option<&str>) -> bool {
        match value {
            Some(v) => self.matches(v),
            None => self.include.is_none(),
        }
    }
}

#[derive(Debug, Default)]
struct Matcher {
    targets: Option<Patterns>,
    protocols: Option<Patterns>,
    users: Option<Patterns>,
    groups: Option<Patterns>,
    exes: Option<Patterns>,
    units: Option<Patterns>,
    cgroups: Option<Patterns>,
    runs: Option<Patterns>,
    destinations: Option<Patterns>,
    /// The families the rule is about; empty: every family.
    kinds: Vec<Family>,
    classes: Option<BTreeSet<StatementClass>>,
    tables: Option<Patterns>,
    tables_read: Option<Patterns>,
    tables_written: Option<Patterns>,
    columns: Option<Patterns>,
    functions: Option<Patterns>,
    dangerous: Option<bool>,
    methods: Option<Patterns>,
    hosts: Option<Patterns>,
    paths: Option<Patterns>,
    upgrades: Option<Patterns>,
    mcp_methods: Option<Patterns>,
    tools: Option<Patterns>,
    read_only: Option<bool>,
    verbs: Option<Patterns>,
    api_groups: Option<Patterns>,
    resources: Option<Patterns>,
    namespaces: Option<Patterns>,
    names: Option<Patterns>,
    channels: Vec<SshChannel>,
    programs: Option<Patterns>,
    commands: Option<words::CommandPatterns>,
    writes: Option<bool>,
    subsystems: Option<Patterns>,
    forwards: Option<Patterns>,
    opaque: Option<bool>,
    /// The table named a key about commands (a `[mask.match]` may not).
    about_commands: bool,
}

impl Matcher {
    fn compile(m: &MatchFile) -> Result<Matcher, String> {
        let p = |list: &Vec<String>, ci| Patterns::compile(list, ci);
        Ok(Matcher {
            targets: p(&m.targets, false)?,
            protocols: p(&m.protocols, true)?,
            users: p(&m.users, false)?,
            groups: p(&m.groups, false)?,
            exes: p(&m.exes, false)?,
            units: p(&m.units, false)?,
            cgroups: p(&m.cgroups, false)?,
            runs: p(&m.runs, false)?,
            destinations: p(&m.destinations, false)?,
            kinds: m.kinds.clone(),
            classes: (!m.classes.is_empty()).then(|| m.classes.iter().copied().collect()),
            tables: p(&m.tables, true)?,
            tables_read: p(&m.tables_read, true)?,
            tables_written: p(&m.tables_written, true)?,
            columns: p(&m.columns, true)?,
            functions: p(&m.functions, true)?,
            dangerous: m.dangerous,
            methods: p(&m.methods, true)?,
            hosts: p(&m.hosts, true)?,
            paths: Patterns::compile_with(&m.paths, false, true)?,
            upgrades: p(&m.upgrades, true)?,
            mcp_methods: p(&m.mcp_methods, false)?,
            tools: p(&m.tools, false)?,
            read_only: m.read_only,
            verbs: p(&m.verbs, true)?,
            api_groups: p(&m.api_groups, true)?,
            resources: p(&m.resources, true)?,
            namespaces: p(&m.namespaces, false)?,
            names: p(&m.names, false)?,
            channels: m.channels.clone(),
            programs: p(&m.programs, false)?,
            commands: words::CommandPatterns::compile(&m.commands)?,
            writes: m.writes,
            subsystems: p(&m.subsystems, false)?,
            forwards: p(&m.forwards, false)?,
            opaque: m.opaque,
            about_commands: m.has_command_keys(),
        })
    }

    /// Whether the rule is about commands of this family.
    fn admits(&self, family: Family) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&family)
    }

    fn who_and_where(&self, subject: &Subject, target: Option<&str>, protocol: &str) -> bool {
        let uid = subject.uid.to_string();
        // A user is named by name or by uid; an exclusion of either excludes.
        let user_ok = self.users.as_ref().is_none_or(|p| {
            let names = [subject.user.as_deref(), Some(uid.as_str())];
            names
                .iter()
                .flatten()
                .any(|n| p.include.as_ref().is_none_or(|s| s.is_match(n)))
                && !names
                    .iter()
                    .flatten()
                    .any(|n| p.exclude.as_ref().is_some_and(|s| s.is_match(n)))
        });
        user_ok
            && self.targets.as_ref().is_none_or(|p| p.any(target))
            && self
                .protocols
                .as_ref()
                .is_none_or(|p| p.any(Some(protocol)))
            && self.groups.as_ref().is_none_or(|p| {
                subject
                    .groups
                    .iter()
                    .any(|g| p.include.as_ref().is_none_or(|s| s.is_match(g)))
                    && !subject
                        .groups
                        .iter()
                        .any(|g| p.exclude.as_ref().is_some_and(|s| s.is_match(g)))
            })
            && self
                .exes
                .as_ref()
                .is_none_or(|p| p.any(subject.exe.as_deref()))
            && self
                .units
                .as_ref()
                .is_none_or(|p| p.any(subject.unit.as_deref()))
            && self
                .cgroups
                .as_ref()
                .is_none_or(|p| p.any(subject.cgroup.as_deref()))
            && self
                .runs
                .as_ref()
                .is_none_or(|p| p.any(subject.run_id.as_deref()))
    }

    /// `every`: an allow rule must cover every element; deny/review need just one.
    fn set_holds(patterns: &Option<Patterns>, values: &BTreeSet<String>, every: bool) -> bool {
        match patterns {
            None => true,
            Some(p) if every => values.iter().all(|v| p.matches(v)),
            Some(p) => values.iter().any(|v| p.matches(v)),
        }
    }

    fn statement(&self, a: &Analysis, every: bool) -> bool {
        if !self.admits(Family::Sql) {
            return false;
        }
        let classes_ok = match &self.classes {
            None => true,
            Some(wanted) if every => a.classes.is_subset(wanted),
            Some(wanted) => !a.classes.is_disjoint(wanted),
        };
        let all_tables: BTreeSet<String> =
            a.tables_read.union(&a.tables_written).cloned().collect();
        classes_ok
            && Self::set_holds(&self.tables, &all_tables, every)
            && Self::set_holds(&self.tables_read, &a.tables_read, every)
            && Self::set_holds(&self.tables_written, &a.tables_written, every)
            && Self::set_holds(&self.columns, &a.columns, every)
            && Self::set_holds(&self.functions, &a.functions, every)
            && self.dangerous.is_none_or(|d| d != a.dangerous.is_empty())
    }

    fn connection(&self, destination: &str) -> bool {
        self.admits(Family::Connect)
            && self
                .destinations
                .as_ref()
                .is_none_or(|p| p.any(Some(destination)))
    }

    /// A single-valued key: absent, or the value matches.
    fn one(patterns: &Option<Patterns>, value: Option<&str>) -> bool {
        patterns.as_ref().is_none_or(|p| p.any(value))
    }

    /// `every` (an allow rule): an upgrade is part of what the request does, so only a rule
    /// naming it in `upgrades` allows it; a deny or review rule without `upgrades` still holds.
    /// `upgrades` given holds only for requests asking one of them.
    fn http(&self, r: &HttpRequest, every: bool) -> bool {
        let upgrade_ok = match (&self.upgrades, r.upgrade.as_deref()) {
            (None, None) => true,
            (None, Some(_)) => !every,
            (Some(_), None) => false,
            (Some(p), Some(u)) => p.matches(u),
        };
        self.admits(Family::Http)
            && upgrade_ok
            && Self::one(&self.methods, Some(&r.method))
            && Self::one(&self.hosts, Some(&r.host))
            && Self::one(&self.paths, Some(&r.path))
    }

    fn mcp(&self, c: &McpCall) -> bool {
        self.admits(Family::Mcp)
            && Self::one(&self.mcp_methods, Some(&c.method))
            && Self::one(&self.tools, c.tool.as_deref())
            && self
                .read_only
                .is_none_or(|want| (c.annotations.read_only == Some(true)) == want)
    }

    fn kubernetes(&self, k: &KubeRequest) -> bool {
        // The core group is "" on the wire; rules may call it "core".
        let group_ok = self.api_groups.as_ref().is_none_or(|p| {
            p.matches(&k.api_group) || (k.api_group.is_empty() && p.matches("core"))
        });
        // `deployments` names deployments in any group, `deployments.apps` in apps only;
        // a subresource is part of the name (`pods/exec`).
        let resource_ok = self.resources.as_ref().is_none_or(|p| {
            let Some(resource) = &k.resource else {
                return p.any(k.path.as_deref());
            };
            let short = match &k.subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            p.matches(&short) || p.matches(&k.resource_name())
        });
        self.admits(Family::Kubernetes)
            && Self::one(&self.verbs, Some(&k.verb))
            && group_ok
            && resource_ok
            && Self::one(&self.namespaces, k.namespace.as_deref())
            && Self::one(&self.names, k.name.as_deref())
    }

    /// `every`: an allow rule's `programs` and `commands` must cover every program and simple
    /// command of the line.
    fn ssh(&self, s: &SshRequest, every: bool) -> bool {
        if !self.admits(Family::Ssh)
            || (!self.channels.is_empty() && !self.channels.contains(&s.channel))
        {
            return false;
        }
        let line = s.line.as_ref();
        // Keys about command lines hold only for commands (not shells or forwards).
        let programs_ok = match (&self.programs, line) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(p), Some(line)) => {
                let holds = |program: &String| {
                    let base = program.rsplit('/').next().unwrap_or(program);
                    p.matches(program) || p.matches(base)
                };
                if every {
                    line.programs.iter().all(holds)
                } else {
                    line.programs.iter().any(holds)
                }
            }
        };
        let commands_ok = match (&self.commands, line) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(c), Some(line)) if every => line.commands.iter().all(|w| c.matches(w)),
            (Some(c), Some(line)) => line.commands.iter().any(|w| c.matches(w)),
        };
        let opaque_ok = self
            .opaque
            .is_none_or(|o| line.is_some_and(|l| l.opaque.is_some() == o));
        let writes_ok = self
            .writes
            .is_none_or(|w| line.is_some_and(|l| l.writes.is_empty() != w));
        programs_ok
            && commands_ok
            && writes_ok
            && opaque_ok
            && Self::one(&self.subsystems, s.subsystem.as_deref())
            && Self::one(&self.forwards, s.forward.as_deref())
    }

    /// Whether the rule holds for a command that is not SQL (SQL goes through
    /// [`Matcher::statement`], once per statement of its analysis).
    fn operation(&self, op: &Operation<'_>, every: bool) -> bool {
        match op {
            Operation::Connect { destination } => self.connection(destination),
            // Judged per statement by `Matcher::statement`.
            Operation::Sql { .. } => false,
            Operation::Http(r) => self.http(r, every),
            Operation::Mcp(c) => self.mcp(c),
            Operation::Kubernetes(k) => self.kubernetes(k),
            Operation::Ssh(s) => self.ssh(s, every),
            Operation::Login { .. } => self.admits(Family::Login),
        }
    }
}

#[derive(Debug)]
struct Rule {
    name: String,
    decision: DecisionKind,
    message: Option<String>,
    review_timeout: Option<Duration>,
    matcher: Matcher,
}

/// A compiled policy: rules in file order.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    masks: Vec<MaskRule>,
    /// Compiled detector sets, shared by every session that uses the same set (compiling one
    /// takes milliseconds, far too long for each connection).
    scanners: Mutex<HashMap<Vec<Detector>, Arc<Scanner>>>,
    /// Where it came from (files), for messages; empty for the embedded default.
    pub sources: Vec<PathBuf>,
}

/// What decided a statement.
#[derive(Clone, Copy)]
enum Decider<'p> {
    Rule(&'p Rule),
    /// A mask with `deny_transformed`, and the column reference that tripped it.
    Mask(&'p MaskRule),
}

impl Policy {
    pub fn compile(sources: Vec<Source>) -> Result<Policy, PolicyError> {
        let mut rules = Vec::new();
        let mut masks = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut paths = Vec::new();
        for source in sources {
            for m in source.file.masks {
                let invalid = |message: String| PolicyError::Invalid {
                    path: source.path.clone(),
                    rule: format!("mask {}", m.name),
                    message,
                };
                if !names.insert(format!("mask:{}", m.name)) {
                    return Err(invalid("the name is used twice".to_owned()));
                }
                masks.push(MaskRule::compile(m.clone()).map_err(invalid)?);
            }
            for r in source.file.rules {
                let invalid = |message: String| PolicyError::Invalid {
                    path: source.path.clone(),
                    rule: r.name.clone(),
                    message,
                };
                if r.name.trim().is_empty() {
                    return Err(invalid("a rule needs a name".to_owned()));
                }
                if !names.insert(r.name.clone()) {
                    return Err(invalid("the name is used twice".to_owned()));
                }
                let matcher = Matcher::compile(&r.matches).map_err(invalid)?;
                rules.push(compile_rule(r, matcher));
            }
            paths.push(source.path);
        }
        Ok(Policy {
            rules,
            masks,
            scanners: Mutex::new(HashMap::new()),
            sources: paths,
        })
    }

    /// The masking that applies to `subject` at `target`: every `[[mask]]` whose match holds,
    /// in file order (the first mask naming a detector sets its strategy). `None` when no
    /// mask applies and no sample is kept.
    pub fn masking(
        &self,
        subject: &Subject,
        target: Option<&str>,
        protocol: &str,
        key: Option<Arc<HashKey>>,
        sample_rows: usize,
    ) -> Option<Masking> {
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        let mut detectors = Vec::new();
        for m in self
            .masks
            .iter()
            .filter(|m| m.matcher.who_and_where(subject, target, protocol))
        {
            columns.extend(m.columns.clone());
            fields.extend(m.fields.clone());
            for d in &m.detectors {
                detectors.push(DetectorRule {
                    detector: *d,
                    strategy: m.strategy,
                    rule: m.name.clone(),
                });
            }
        }
        if columns.is_empty() && fields.is_empty() && detectors.is_empty() && sample_rows == 0 {
            return None;
        }
        let mut set: Vec<Detector> = detectors.iter().map(|d| d.detector).collect();
        set.sort();
        set.dedup();
        let scanner = (!set.is_empty()).then(|| {
            self.scanners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(set.clone())
                .or_insert_with(|| Arc::new(Scanner::new(&set)))
                .clone()
        });
        Some(Masking::new(columns, &detectors, scanner, key, sample_rows).with_fields(fields))
    }

    /// A mask with `deny_transformed` whose columns the statement passes through a function,
    /// cast or operator.
    fn transformed_violation(
        &self,
        subject: &Subject,
        target: Option<&str>,
        protocol: &str,
        a: &Analysis,
    ) -> Option<(&MaskRule, String)> {
        if a.transformed.is_empty() {
            return None;
        }
        self.masks
            .iter()
            .filter(|m| m.deny_transformed)
            .filter(|m| m.matcher.who_and_where(subject, target, protocol))
            .find_map(|m| {
                let columns = m.columns.as_ref()?;
                a.transformed
                    .iter()
                    .find(|r| columns.may_name(r))
                    .map(|r| (m, r.clone()))
            })
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Policy::compile(file::load(path)?)
    }

    /// `policies/default.toml`, built into the binary.
    pub fn embedded_default() -> Result<Policy, PolicyError> {
        let source = file::parse(
            DEFAULT_POLICY,
            Path::new("<embedded>/policies/default.toml"),
        )?;
        let mut policy = Policy::compile(vec![source])?;
        policy.sources.clear();
        Ok(policy)
    }

    /// The strictest rule that holds (any deny, then review, then allow), if any. Earlier
    /// rules win ties, so the journal names the first rule of the deciding kind.
    fn strictest(&self, holds: impl Fn(&Rule) -> bool) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|r| holds(r))
            .fold(None, |best: Option<&Rule>, r| match best {
                Some(b) if b.decision >= r.decision => Some(b),
                _ => Some(r),
            })
    }

    /// Judges one statement's analysis: strictest matching rule, or deny.
    fn judge(
        &self,
        subject: &Subject,
        target: Option<&str>,
        protocol: &str,
        a: &Analysis,
    ) -> (DecisionKind, Option<&Rule>) {
        let best = self.strictest(|rule| {
            let every = rule.decision == DecisionKind::Allow;
            rule.matcher.who_and_where(subject, target, protocol)
                && rule.matcher.statement(a, every)
        });
        match best {
            Some(rule) => (rule.decision, Some(rule)),
            None => (DecisionKind::Deny, None),
        }
    }

    /// Judges a request with an already parsed SQL text (see [`Engine`] for the cached path).
    pub fn evaluate_parsed(
        &self,
        subject: &Subject,
        target: Option<&str>,
        protocol: &str,
        parsed: &Parsed,
    ) -> Verdict {
        self.evaluate_parsed_with(subject, target, protocol, parsed, &|_| false)
    }

    /// [`Policy::evaluate_parsed`], where `vouched(name)` is true for functions the server's
    /// catalog says are IMMUTABLE or STABLE: a statement whose every possibly-volatile call is
    /// vouched for loses [`sql::StatementClass::VolatileFunction`].
    pub fn evaluate_parsed_with(
        &self,
        subject: &Subject,
        target: Option<&str>,
        protocol: &str,
        parsed: &Parsed,
        vouched: &dyn Fn(&str) -> bool,
    ) -> Verdict {
        let mut statements = Vec::with_capacity(parsed.statements.len());
        let mut worst: Option<(DecisionKind, Option<Decider<'_>>)> = None;
        let mut mask_message = None;
        for a in &parsed.statements {
            let lifted;
            let a = if a.classes.contains(&sql::StatementClass::VolatileFunction)
                && !a.volatile_functions.is_empty()
                && a.volatile_functions.iter().all(|f| vouched(f))
            {
                let mut copy = a.clone();
                copy.classes.remove(&sql::StatementClass::VolatileFunction);
                lifted = copy;
                &lifted
            } else {
                a
            };
            let (decision, decider) = match self.transformed_violation(subject, target, protocol, a)
            {
                Some((mask, column)) => {
                    mask_message.get_or_insert_with(|| {
                            format!(
                                "{column} is masked (mask {:?}) and may not be passed through functions, casts or operators",
                                mask.name
                            )
                        });
                    (DecisionKind::Deny, Some(Decider::Mask(mask)))
                }
                None => {
                    let (d, rule) = self.judge(subject, target, protocol, a);
                    (d, rule.map(Decider::Rule))
                }
            };
            if worst.is_none_or(|(d, _)| decision > d) {
                worst = Some((decision, decider));
            }
            statements.push(StatementVerdict {
                analysis: a.clone(),
                decision,
                rule: decider.map(|d| match d {
                    Decider::Rule(r) => r.name.clone(),
                    Decider::Mask(m) => format!("mask:{}", m.name),
                }),
            });
        }
        // What the gateway cannot be sure of is refused, whatever the rules say.
        if let Some(refusal) = &parsed.refusal {
            return Verdict {
                decision: DecisionKind::Deny,
                rule: Some(refusal.rule.to_owned()),
                message: refusal.message.clone(),
                review_timeout: None,
                parse_error: parsed.error.clone(),
                statements,
            };
        }
        // An empty text asks for nothing; it still has to be allowed by something.
        match worst.unwrap_or((DecisionKind::Deny, None)) {
            (decision, Some(Decider::Mask(m))) => Verdict {
                decision,
                rule: Some(format!("mask:{}", m.name)),
                message: mask_message.unwrap_or_default(),
                review_timeout: None,
                parse_error: parsed.error.clone(),
                statements,
            },
            (decision, Some(Decider::Rule(rule))) => {
                verdict(decision, Some(rule), parsed.error.clone(), statements)
            }
            (decision, None) => verdict(decision, None, parsed.error.clone(), statements),
        }
    }

    /// Judges a command of any kind: a connection, an HTTP request, an MCP call, a Kubernetes
    /// request, an SSH channel, with the same precedence as statements; SQL through its
    /// analysis (uncached: [`Engine`] caches).
    pub fn evaluate_operation(
        &self,
        subject: &Subject,
        target: Option<&str>,
        protocol: &str,
        op: &Operation<'_>,
    ) -> Verdict {
        if let Operation::Sql { text } = op {
            // SQL is judged statement by statement, from its analysis in the server's dialect.
            let parsed = if protocol == MYSQL_PROTOCOL {
                mysql::analyze(text)
            } else {
                sql::analyze(text)
            };
            return self.evaluate_parsed(subject, target, protocol, &parsed);
        }
        let best = self.strictest(|rule| {
            let every = rule.decision == DecisionKind::Allow;
            rule.matcher.who_and_where(subject, target, protocol)
                && rule.matcher.operation(op, every)
        });
        match best {
            Some(rule) => verdict(rule.decision, Some(rule), None, Vec::new()),
            None => verdict(DecisionKind::Deny, None, None, Vec::new()),
        }
    }
}

fn compile_rule(r: RuleFile, matcher: Matcher) -> Rule {
    Rule {
        name: r.name,
        decision: r.decision,
        message: r.message,
        review_timeout: r.review_timeout_secs.map(Duration::from_secs),
        matcher,
    }
}

fn verdict(
    decision: DecisionKind,
    rule: Option<&Rule>,
    parse_error: Option<String>,
    statements: Vec<StatementVerdict>,
) -> Verdict {
    let message = match (rule, decision) {
        (Some(r), _) if r.message.is_some() => r.message.clone().unwrap_or_default(),
        (Some(r), DecisionKind::Deny) => format!("denied by policy rule {:?}", r.name),
        (Some(r), DecisionKind::Review) => format!("needs approval under policy rule {:?}", r.name),
        (Some(r), DecisionKind::Allow) => format!("allowed by policy rule {:?}", r.name),
        (None, _) => "no policy rule allows this".to_owned(),
    };
    Verdict {
        decision,
        rule: rule.map(|r| r.name.clone()),
        message,
        review_timeout: rule.and_then(|r| r.review_timeout),
        parse_error,
        statements,
    }
}

/// Loads the policies a configuration names: each target's own, and the global one (or the
/// embedded default) for everything else. Any error refuses the whole set, so a reload that
/// fails keeps the policies in force.
pub fn load_policies(config: &crate::config::Config) -> Result<Policies, PolicyError> {
    let fallback = match &config.policy.path {
        Some(path) => Policy::load(path)?,
        None => Policy::embedded_default()?,
    };
    let mut by_target = HashMap::new();
    for t in &config.targets {
        if let Some(path) = &t.policy {
            by_target.insert(t.name.clone(), Arc::new(Policy::load(path)?));
        }
    }
    Ok(Policies {
        by_target,
        fallback: Arc::new(fallback),
    })
}

/// Bound on cached analyses; the cache is emptied when it is full (a re-parse is the only cost).
const ANALYSIS_CACHE: usize = 10_000;
/// Statements longer than this are analysed every time rather than cached.
const CACHEABLE_TEXT: usize = 16 * 1024;

/// The protocol whose SQL is read in MySQL's dialect ([`mysql::analyze`]); every other SQL
/// protocol is PostgreSQL's.
pub const MYSQL_PROTOCOL: &str = "mysql";

/// Policies by target, swapped atomically on reload, with a cache of statement analyses.
pub struct Engine {
    policies: RwLock<Arc<Policies>>,
    analyses: Mutex<HashMap<String, Arc<Parsed>>>,
    /// Analyses of MySQL texts ([`mysql::analyze`]), by text: never shared by shape, since
    /// the shape key is PostgreSQL's scanner's.
    mysql_analyses: Mutex<HashMap<String, Arc<Parsed>>>,
    /// Analyses shared by texts that differ only in constant values, by
    /// [`pg_grammar::shape_key`]; only those [`shareable`] are kept.
    shapes: Mutex<HashMap<String, Arc<Parsed>>>,
}

/// Whether an analysis may stand for every text with the same shape key: one plain
/// read or write that looked at no literal's value and raised nothing to look closer at.
/// Everything else (SET, EXPLAIN, COPY, DDL, PREPARE, dangerous functions, parse failures) is
/// analysed per text, so a literal can never change a decision behind the cache's back.
fn shareable(parsed: &Parsed) -> bool {
    use sql::StatementClass as C;
    let [a] = parsed.statements.as_slice() else {
        return false;
    };
    !parsed.reads_literals
        && parsed.error.is_none()
        && parsed.refusal.is_none()
        && a.dangerous.is_empty()
        && a.prepared.is_none()
        && a.executes.is_none()
        && !a.classes.is_empty()
        && a.classes
            .iter()
            .all(|c| matches!(c, C::Read | C::Insert | C::Update | C::Delete | C::Merge))
}

/// Inserts into a bounded cache, emptying it when full (a re-parse is the only cost).
fn remember<V>(cache: &Mutex<HashMap<String, V>>, key: String, value: V) {
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= ANALYSIS_CACHE {
        cache.clear();
    }
    cache.insert(key, value);
}

/// The policy of each target, and the one for everything else.
pub struct Policies {
    pub by_target: HashMap<String, Arc<Policy>>,
    pub fallback: Arc<Policy>,
}

impl Policies {
    pub fn for_target(&self, target: Option<&str>) -> &Arc<Policy> {
        target
            .and_then(|t| self.by_target.get(t))
            .unwrap_or(&self.fallback)
    }
}

impl Engine {
    pub fn new(policies: Policies) -> Engine {
        Engine {
            policies: RwLock::new(Arc::new(policies)),
            analyses: Mutex::new(HashMap::new()),
            mysql_analyses: Mutex::new(HashMap::new()),
            shapes: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces every policy at once; sessions see either the old set or the new one.
    pub fn replace(&self, policies: Policies) {
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
    }

    pub fn current(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The analysis of `text`: parsed once per distinct text, and once per literal
    /// fingerprint for plain reads and writes (see [`shareable`]).
    pub fn analyze(&self, text: &str) -> Arc<Parsed> {
        if let Some(p) = self
            .analyses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(text)
        {
            return p.clone();
        }
        // PostgreSQL's scanner decides which texts share an analysis (see
        // `pg_grammar::shape_key`); sqlparser runs only when no shared analysis answers.
        let shape = (text.len() <= CACHEABLE_TEXT)
            .then(|| pg_grammar::shape_key(text))
            .flatten();
        if let Some(key) = &shape {
            let shared = self
                .shapes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .cloned();
            if let Some(shared) = shared {
                // Everything but the text is the same; the text is this one, as written.
                let statements = shared
                    .statements
                    .iter()
                    .map(|a| sql::Analysis {
                        text: text.trim().to_owned(),
                        ..a.clone()
                    })
                    .collect();
                return Arc::new(Parsed {
                    statements,
                    error: None,
                    reads_literals: false,
                    refusal: None,
                });
            }
        }
        let parsed = Arc::new(sql::analyze(text));
        if text.len() <= CACHEABLE_TEXT {
            remember(&self.analyses, text.to_owned(), parsed.clone());
        }
        if let Some(key) = shape.filter(|_| shareable(&parsed)) {
            remember(&self.shapes, key, parsed.clone());
        }
        parsed
    }

    /// The analysis of a MySQL text, parsed once per distinct text.
    pub fn analyze_mysql(&self, text: &str) -> Arc<Parsed> {
        if let Some(p) = self
            .mysql_analyses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(text)
        {
            return p.clone();
        }
        let parsed = Arc::new(mysql::analyze(text));
        if text.len() <= CACHEABLE_TEXT {
            remember(&self.mysql_analyses, text.to_owned(), parsed.clone());
        }
        parsed
    }

    /// The masking for a new session, from the policies in force now.
    pub fn masking(
        &self,
        subject: &Subject,
        target: Option<&str>,
        protocol: &str,
        key: Option<Arc<HashKey>>,
        sample_rows: usize,
    ) -> Option<Arc<Masking>> {
        self.current()
            .for_target(target)
            .masking(subject, target, protocol, key, sample_rows)
            .map(Arc::new)
    }

    pub fn evaluate(
        &self,
        subject: &Subject,
        target: Option<&str>,
        protocol: &str,
        request: Request<'_>,
    ) -> Verdict {
        self.evaluate_with(subject, target, protocol, request, &|_| false)
    }

    /// [`Engine::evaluate`] with what the server's catalog vouches for (see
    /// [`Policy::evaluate_parsed_with`]).
    pub fn evaluate_with(
        &self,
        subject: &Subject,
        target: Option<&str>,
        protocol: &str,
        request: Request<'_>,
        vouched: &dyn Fn(&str) -> bool,
    ) -> Verdict {
        let policies = self.current();
        let policy = policies.for_target(target);
        match request {
            Operation::Sql { text } => {
                let parsed = if protocol == MYSQL_PROTOCOL {
                    self.analyze_mysql(text)
                } else {
                    self.analyze(text)
                };
                policy.evaluate_parsed_with(subject, target, protocol, &parsed, vouched)
            }
            other => policy.evaluate_operation(subject, target, protocol, &other),
        }
    }
}

#[cfg(test)]
mod tests;
