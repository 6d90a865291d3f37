//! `interceptor status` and the metrics endpoint: what the service is doing, for operators and
//! for their monitoring.
//!
//! Why this exists: "is the gate up, and is it keeping up?" has several answers in several
//! places: systemd knows the unit, bpffs holds the pins that refuse connections while the
//! daemon is down, the daemon knows its sessions and held commands, and the journal knows its
//! head, its chain and how far each sink has shipped. `status` gathers them into one report
//! and still says what it can when the daemon is down (then the pins matter most). The daemon
//! side ([`Observed`]) answers the control socket's `status` call and renders the metrics
//! endpoint from the same numbers.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    approval::Approvals,
    config::Config,
    gateway::stats::Stats,
    journal::Journal,
    limits::Limits,
    metrics::{Exposition, HistogramSnapshot},
    ship::{SinkConfig, SinkStatus},
};

/// What the daemon reports about itself over the control socket. Field names are the JSON
/// contract of `status --json` (under `daemon`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub started_at: String,
    /// `all` (every outbound connection of the captured cgroups) or `listed`.
    pub capture_mode: String,
    /// The captured cgroups, as paths below the cgroup2 mount.
    pub cgroups: Vec<String>,
    pub pin_dir: PathBuf,
    /// The proxy's listeners.
    pub listeners: Vec<String>,
    /// The metrics endpoint, when one is configured.
    pub metrics: Option<String>,
    pub sessions: Vec<SessionCount>,
    pub decisions: Vec<DecisionCount>,
    pub anomalies: Vec<AnomalyCount>,
    /// The limits in force (`[limits]`; `max_sessions` perhaps lowered to the open-file limit).
    #[serde(default)]
    pub limits: Option<LimitsStatus>,
    /// Sessions refused by a limit, by the limit's key.
    #[serde(default)]
    pub refused: Vec<LimitCount>,
    /// Sessions closed on a timeout, by phase (`startup`, `idle`).
    #[serde(default)]
    pub timeouts: Vec<TimeoutCount>,
    pub approvals: Vec<PendingApproval>,
    /// How long commands waited for their journal commit.
    pub journal_commit: HistogramSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionCount {
    /// `""` for connections that match no target (relayed as plain TCP).
    pub target: String,
    pub protocol: String,
    pub open: i64,
    pub total: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecisionCount {
    pub target: String,
    /// `""`: the policy's default decided, no rule matched.
    pub rule: String,
    pub decision: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnomalyCount {
    pub reason: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitsStatus {
    pub startup_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub max_sessions: u32,
    pub max_sessions_per_uid: u32,
    pub max_sessions_per_run: u32,
}

impl From<&Limits> for LimitsStatus {
    fn from(l: &Limits) -> LimitsStatus {
        LimitsStatus {
            startup_timeout_secs: l.startup_timeout.as_secs(),
            idle_timeout_secs: l.idle_timeout.as_secs(),
            max_sessions: l.max_sessions,
            max_sessions_per_uid: l.max_sessions_per_uid,
            max_sessions_per_run: l.max_sessions_per_run,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitCount {
    pub limit: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimeoutCount {
    pub phase: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingApproval {
    pub id: String,
    pub target: Option<String>,
    pub rule: Option<String>,
    pub user: Option<String>,
    pub unit: Option<String>,
    pub requested_at: String,
    pub waiting_seconds: f64,
}

/// What the daemon knows that `status` and the metrics endpoint report.
pub struct Observed {
    pub stats: Arc<Stats>,
    pub journal: Journal,
    pub approvals: Arc<Approvals>,
    pub started: SystemTime,
    pub capture_mode: String,
    pub cgroups: Vec<String>,
    pub pin_dir: PathBuf,
    pub listeners: Vec<String>,
    pub metrics: Option<String>,
    /// The limits in force.
    pub limits: Limits,
    /// For the sinks' lag at scrape time.
    pub journal_path: PathBuf,
    pub sinks: Vec<SinkConfig>,
}

impl Observed {
    pub fn status(&self) -> DaemonStatus {
        let sessions = self.sessions();
        DaemonStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: humantime::format_rfc3339_seconds(self.started).to_string(),
            capture_mode: self.capture_mode.clone(),
            cgroups: self.cgroups.clone(),
            pin_dir: self.pin_dir.clone(),
            listeners: self.listeners.clone(),
            metrics: self.metrics.clone(),
            sessions,
            decisions: self
                .stats
                .decisions
                .snapshot()
                .into_iter()
                .map(|([target, rule, decision], count)| DecisionCount {
                    target,
                    rule,
                    decision,
                    count,
                })
                .collect(),
            anomalies: self
                .stats
                .anomalies
                .snapshot()
                .into_iter()
                .map(|([reason], count)| AnomalyCount { reason, count })
                .collect(),
            limits: Some(LimitsStatus::from(&self.limits)),
            refused: self
                .stats
                .refused
                .snapshot()
                .into_iter()
                .map(|([limit], count)| LimitCount { limit, count })
                .collect(),
            timeouts: self
                .stats
                .timeouts
                .snapshot()
                .into_iter()
                .map(|([phase], count)| TimeoutCount { phase, count })
                .collect(),
            approvals: self.pending(),
            journal_commit: self.journal.commit_latency(),
        }
    }

    fn sessions(&self) -> Vec<SessionCount> {
        let open = self.stats.sessions_open.snapshot();
        self.stats
            .sessions_opened
            .snapshot()
            .into_iter()
            .map(|(labels, total)| SessionCount {
                open: open
                    .iter()
                    .find(|(l, _)| *l == labels)
                    .map_or(0, |(_, n)| *n),
                target: labels[0].clone(),
                protocol: labels[1].clone(),
                total,
            })
            .collect()
    }

    fn pending(&self) -> Vec<PendingApproval> {
        let now = SystemTime::now();
        self.approvals
            .list()
            .into_iter()
            .map(|r| PendingApproval {
                waiting_seconds: crate::journal::reader::parse_timestamp(&r.requested_at)
                    .and_then(|at| now.duration_since(at).ok())
                    .map_or(0.0, |d| d.as_secs_f64()),
                id: r.id,
                target: r.target,
                rule: r.rule,
                user: r.user,
                unit: r.unit,
                requested_at: r.requested_at,
            })
            .collect()
    }

    /// The metrics in the Prometheus text format. Reads the journal file for the sinks' lag:
    /// call it off the runtime's workers.
    pub fn exposition(&self) -> String {
        let status = self.status();
        let mut out = Exposition::default();
        out.family(
            "interceptor_info",
            "gauge",
            "The running gateway (value 1).",
        );
        out.sample(
            "interceptor_info",
            &[
                ("version", &status.version),
                ("capture_mode", &status.capture_mode),
            ],
            1.0,
        );
        out.family(
            "interceptor_start_time_seconds",
            "gauge",
            "When the daemon started, in seconds since the epoch.",
        );
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs() as f64);
        out.sample("interceptor_start_time_seconds", &[], started);

        out.family(
            "interceptor_sessions_total",
            "counter",
            "Sessions opened, by target (\"\" for none) and protocol.",
        );
        for s in &status.sessions {
            let labels = [
                ("target", s.target.as_str()),
                ("protocol", s.protocol.as_str()),
            ];
            out.sample("interceptor_sessions_total", &labels, s.total as f64);
        }
        out.family(
            "interceptor_sessions_open",
            "gauge",
            "Sessions open now, by target and protocol.",
        );
        for s in &status.sessions {
            let labels = [
                ("target", s.target.as_str()),
                ("protocol", s.protocol.as_str()),
            ];
            out.sample("interceptor_sessions_open", &labels, s.open as f64);
        }
        out.family(
            "interceptor_decisions_total",
            "counter",
            "Policy decisions on connections and commands, by target, rule (\"\" for the \
             default) and decision (allow, review, deny).",
        );
        for d in &status.decisions {
            let labels = [
                ("target", d.target.as_str()),
                ("rule", d.rule.as_str()),
                ("decision", d.decision.as_str()),
            ];
            out.sample("interceptor_decisions_total", &labels, d.count as f64);
        }
        out.family(
            "interceptor_anomalies_total",
            "counter",
            "Connections the gateway could not attribute to a captured process, by reason.",
        );
        for a in &status.anomalies {
            out.sample(
                "interceptor_anomalies_total",
                &[("reason", a.reason.as_str())],
                a.count as f64,
            );
        }
        if let Some(limits) = &status.limits {
            out.family(
                "interceptor_session_limit",
                "gauge",
                "The limits on open sessions in force ([limits]), by key.",
            );
            for (key, value) in [
                ("max_sessions", limits.max_sessions),
                ("max_sessions_per_uid", limits.max_sessions_per_uid),
                ("max_sessions_per_run", limits.max_sessions_per_run),
            ] {
                out.sample(
                    "interceptor_session_limit",
                    &[("limit", key)],
                    f64::from(value),
                );
            }
        }
        let refused = status.refused.iter().map(|r| (r.limit.as_str(), r.count));
        out.counter_by(
            "interceptor_sessions_refused_total",
            "Sessions refused by a limit on open sessions, by the limit's key.",
            "limit",
            refused,
        );
        let timeouts = status.timeouts.iter().map(|t| (t.phase.as_str(), t.count));
        out.counter_by(
            "interceptor_session_timeouts_total",
            "Sessions the gateway closed on a timeout, by phase (startup, idle).",
            "phase",
            timeouts,
        );
        out.family(
            "interceptor_approvals_pending",
            "gauge",
            "Commands held for a human decision.",
        );
        out.sample(
            "interceptor_approvals_pending",
            &[],
            status.approvals.len() as f64,
        );
        out.family(
            "interceptor_approval_wait_seconds",
            "gauge",
            "How long each pending approval has waited, by request id, target and rule.",
        );
        for a in &status.approvals {
            let labels = [
                ("id", a.id.as_str()),
                ("target", a.target.as_deref().unwrap_or("")),
                ("rule", a.rule.as_deref().unwrap_or("")),
            ];
            out.sample(
                "interceptor_approval_wait_seconds",
                &labels,
                a.waiting_seconds,
            );
        }
        out.family(
            "interceptor_journal_commit_seconds",
            "histogram",
            "How long each journal write waited for its commit (what a command pays before \
             it is forwarded).",
        );
        out.histogram(
            "interceptor_journal_commit_seconds",
            &[],
            &status.journal_commit,
        );

        // Without sinks there is nothing to read there: the head alone opens the journal.
        let sinks = if self.sinks.is_empty() {
            Ok(Vec::new())
        } else {
            crate::ship::status(&self.journal_path, &self.sinks)
        };
        match sinks {
            Ok(sinks) => {
                out.family(
                    "interceptor_journal_head_seq",
                    "gauge",
                    "The newest event's sequence number.",
                );
                let head = sinks.first().map_or_else(
                    || journal_head(&self.journal_path).map_or(0, |h| h.seq),
                    |s| s.last_seq,
                );
                out.sample("interceptor_journal_head_seq", &[], head as f64);
                out.family(
                    "interceptor_sink_lag_events",
                    "gauge",
                    "Journal events a sink has not acknowledged yet.",
                );
                for s in &sinks {
                    out.sample(
                        "interceptor_sink_lag_events",
                        &[("sink", &s.name)],
                        s.lag as f64,
                    );
                }
                out.family(
                    "interceptor_sink_failing",
                    "gauge",
                    "1 when the sink's last delivery failed.",
                );
                for s in &sinks {
                    let failing = if s.last_error.is_some() { 1.0 } else { 0.0 };
                    out.sample("interceptor_sink_failing", &[("sink", &s.name)], failing);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the sinks' positions");
            }
        }
        out.finish()
    }
}

/// The newest event of the journal.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JournalHead {
    pub seq: i64,
    pub at: Option<String>,
}

fn journal_head(path: &Path) -> Result<JournalHead, crate::journal::JournalError> {
    let conn = crate::journal::reader::open_read_only(path)?;
    let head = conn
        .query_row(
            "SELECT id, at FROM events ORDER BY id DESC LIMIT 1",
            [],
            |row| {
                Ok(JournalHead {
                    seq: row.get(0)?,
                    at: row.get(1)?,
                })
            },
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(JournalHead { seq: 0, at: None }),
            e => Err(e),
        })?;
    Ok(head)
}

/// The unit, as systemd reports it (`systemctl show`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnitStatus {
    pub name: String,
    pub active_state: String,
    pub sub_state: String,
    pub main_pid: u32,
    pub restarts: Option<u32>,
}

/// The unit's state, when this host runs systemd and knows the unit.
pub fn unit_status(unit: &str) -> Option<UnitStatus> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    let out = std::process::Command::new("systemctl")
        .args([
            "show",
            unit,
            "--property=LoadState,ActiveState,SubState,MainPID,NRestarts",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
            .to_owned()
    };
    if field("LoadState") == "not-found" {
        return None;
    }
    Some(UnitStatus {
        name: unit.to_owned(),
        active_state: field("ActiveState"),
        sub_state: field("SubState"),
        main_pid: field("MainPID").parse().unwrap_or(0),
        restarts: field("NRestarts").parse().ok(),
    })
}

/// The pinned capture: what refuses captured connections while the daemon is down.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PinStatus {
    pub pin_dir: PathBuf,
    /// The programs' maps are pinned.
    pub pinned: bool,
    /// Cgroups with pinned links (by cgroup id).
    pub cgroups: usize,
}

fn pin_status(pin_dir: &Path) -> PinStatus {
    let cgroups = std::fs::read_dir(pin_dir.join("links"))
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0);
    PinStatus {
        pin_dir: pin_dir.to_owned(),
        pinned: pin_dir.join("maps").is_dir(),
        cgroups,
    }
}

/// The journal as `status` sees it: head, and whether the chain verifies.
#[derive(Debug, Clone, Serialize)]
pub struct JournalStatus {
    pub path: PathBuf,
    pub head: Option<JournalHead>,
    /// `None` when the journal could not be read (see `error`).
    pub verified: Option<bool>,
    /// The verify summary line (or its first findings).
    pub verify: Option<String>,
    pub error: Option<String>,
}

fn journal_status(path: &Path) -> JournalStatus {
    let failed = |e: String| JournalStatus {
        path: path.to_owned(),
        head: None,
        verified: None,
        verify: None,
        error: Some(e),
    };
    let head = match journal_head(path) {
        Ok(head) => head,
        Err(e) => return failed(e.to_string()),
    };
    match crate::journal::verify::verify_file(path) {
        Ok(report) => JournalStatus {
            path: path.to_owned(),
            head: Some(head),
            verified: Some(report.ok),
            verify: Some(report.to_string().lines().last().unwrap_or("").to_owned()),
            error: None,
        },
        Err(e) => JournalStatus {
            head: Some(head),
            ..failed(e.to_string())
        },
    }
}

/// How the daemon answered (or did not).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    Running(Box<DaemonStatus>),
    /// No daemon answers: not running, or a stale socket.
    NotRunning(String),
    /// The caller may not ask (not root or an approver).
    PermissionDenied(String),
    Error(String),
}

/// Everything `interceptor status` reports. Field names are the JSON contract of `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub unit: Option<UnitStatus>,
    pub daemon: DaemonState,
    pub capture: PinStatus,
    pub journal: JournalStatus,
    pub sinks: Vec<SinkStatus>,
    pub sinks_error: Option<String>,
}

/// The systemd unit `install` and the package put the service in.
pub const UNIT: &str = "interceptor.service";

/// Gathers the report; `daemon` is the control socket's answer, asked by the caller (the CLI
/// owns the async runtime).
pub fn gather(config: &Config, daemon: DaemonState) -> Report {
    let (sinks, sinks_error) = if config.sinks.is_empty() {
        (Vec::new(), None)
    } else {
        match crate::ship::status(&config.journal.path, &config.sinks) {
            Ok(s) => (s, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        }
    };
    Report {
        unit: unit_status(UNIT),
        daemon,
        capture: pin_status(&config.capture.pin_dir),
        journal: journal_status(&config.journal.path),
        sinks,
        sinks_error,
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.unit {
            Some(u) => {
                let restarts = u
                    .restarts
                    .map(|n| format!(", {n} restarts"))
                    .unwrap_or_default();
                writeln!(
                    f,
                    "unit:      {} {} ({}), main pid {}{restarts}",
                    u.name, u.active_state, u.sub_state, u.main_pid
                )?;
            }
            None => writeln!(f, "unit:      (no systemd unit {UNIT} on this host)")?,
        }
        match &self.daemon {
            DaemonState::Running(d) => {
                writeln!(
                    f,
                    "daemon:    running, pid {}, version {}, since {}",
                    d.pid, d.version, d.started_at
                )?;
                writeln!(
                    f,
                    "capture:   mode {}, {} cgroup(s): {}",
                    d.capture_mode,
                    d.cgroups.len(),
                    d.cgroups.join(", ")
                )?;
                writeln!(f, "listening: {}", d.listeners.join(", "))?;
                if let Some(m) = &d.metrics {
                    writeln!(f, "metrics:   {m}")?;
                }
            }
            DaemonState::NotRunning(why) | DaemonState::PermissionDenied(why) => {
                writeln!(f, "daemon:    {why}")?
            }
            DaemonState::Error(why) => writeln!(f, "daemon:    no answer: {why}")?,
        }
        let pins = &self.capture;
        if pins.pinned {
            let while_down = if matches!(self.daemon, DaemonState::Running(_)) {
                ""
            } else {
                "; captured connections are REFUSED until the daemon is back"
            };
            writeln!(
                f,
                "pins:      {} ({} cgroup(s) attached){while_down}",
                pins.pin_dir.display(),
                pins.cgroups
            )?;
        } else {
            writeln!(
                f,
                "pins:      none at {} (nothing is captured by the service)",
                pins.pin_dir.display()
            )?;
        }
        if let DaemonState::Running(d) = &self.daemon {
            let open: i64 = d.sessions.iter().map(|s| s.open).sum();
            let total: i64 = d.sessions.iter().map(|s| s.total).sum();
            writeln!(f, "sessions:  {open} open, {total} since start")?;
            for s in &d.sessions {
                let target = if s.target.is_empty() {
                    "(no target)"
                } else {
                    &s.target
                };
                writeln!(
                    f,
                    "           {target} [{}]: {} open, {} total",
                    s.protocol, s.open, s.total
                )?;
            }
            let count = |kind: &str| -> i64 {
                d.decisions
                    .iter()
                    .filter(|x| x.decision == kind)
                    .map(|x| x.count)
                    .sum()
            };
            writeln!(
                f,
                "decisions: {} allowed, {} held for review, {} denied",
                count("allow"),
                count("review"),
                count("deny")
            )?;
            let anomalies: i64 = d.anomalies.iter().map(|a| a.count).sum();
            if anomalies > 0 {
                writeln!(
                    f,
                    "anomalies: {anomalies} unattributed connection(s) closed"
                )?;
            }
            if let Some(l) = &d.limits {
                writeln!(
                    f,
                    "limits:    {} sessions, {} per uid, {} per run; start-up {} s, idle {} s",
                    l.max_sessions,
                    l.max_sessions_per_uid,
                    l.max_sessions_per_run,
                    l.startup_timeout_secs,
                    l.idle_timeout_secs
                )?;
            }
            let refused = breakdown(d.refused.iter().map(|r| (r.limit.as_str(), r.count)));
            if let Some((total, by)) = refused {
                writeln!(f, "refused:   {total} session(s) over a limit ({by})")?;
            }
            let timeouts = breakdown(d.timeouts.iter().map(|t| (t.phase.as_str(), t.count)));
            if let Some((total, by)) = timeouts {
                writeln!(f, "timeouts:  {total} session(s) closed ({by})")?;
            }
            writeln!(f, "approvals: {} pending", d.approvals.len())?;
            for a in &d.approvals {
                writeln!(
                    f,
                    "           {}  waiting {:.0}s  target {}  rule {}  user {}",
                    a.id,
                    a.waiting_seconds,
                    a.target.as_deref().unwrap_or("-"),
                    a.rule.as_deref().unwrap_or("-"),
                    a.user.as_deref().unwrap_or("-")
                )?;
            }
            let c = &d.journal_commit;
            let bound = |q: f64| {
                c.quantile_bound(q)
                    .map_or_else(|| "-".to_owned(), |s| format!("≤{:.2}ms", s * 1e3))
            };
            writeln!(
                f,
                "commits:   {} journal writes, p50 {}, p99 {}",
                c.count,
                bound(0.5),
                bound(0.99)
            )?;
        }
        let j = &self.journal;
        match (&j.head, &j.error) {
            (_, Some(e)) => writeln!(f, "journal:   {}: {e}", j.path.display())?,
            (Some(h), None) => writeln!(
                f,
                "journal:   {}, head seq {} at {}",
                j.path.display(),
                h.seq,
                h.at.as_deref().unwrap_or("-")
            )?,
            (None, None) => writeln!(f, "journal:   {}", j.path.display())?,
        }
        if let Some(v) = &j.verify {
            let mark = if j.verified == Some(true) {
                ""
            } else {
                "BROKEN "
            };
            writeln!(f, "verify:    {mark}{v}")?;
        }
        if let Some(e) = &self.sinks_error {
            writeln!(f, "sinks:     {e}")?;
        }
        for s in &self.sinks {
            let error = s
                .last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default();
            writeln!(
                f,
                "sink:      {} ({}): {} event(s) behind{error}",
                s.name, s.kind, s.lag
            )?;
        }
        Ok(())
    }
}
/// A total and its parts as "a 1, b 2", or `None` when there is nothing to count.
fn breakdown<'a>(parts: impl Iterator<Item = (&'a str, i64)>) -> Option<(i64, String)> {
    let parts: Vec<(&str, i64)> = parts.filter(|(_, n)| *n > 0).collect();
    let total: i64 = parts.iter().map(|(_, n)| n).sum();
    let by: Vec<String> = parts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    (total > 0).then(|| (total, by.join(", ")))
}
