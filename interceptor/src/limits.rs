//! Admission control: how long a client may take to start, how long a session may sit idle,
//! and how many sessions may be open at once, in all, per uid and per run.
//!
//! Why this exists: without it one agent can starve all the others. Every accepted connection
//! holds a descriptor (two once its upstream is dialed), so some ten thousand idle sockets
//! exhaust the gateway's descriptors, and when each one dialed its upstream at once, a few
//! hundred filled the database's connection slots for everyone. The session phases
//! (`gateway::session`) use what is here: [`Admission::admit`] in *admit* (a refused session is
//! journaled like any other, then told why in its own protocol), the start-up timeout around
//! the client's start-up, and the idle timeout around the relay (`protocol::Idle`).
//!
//! The limits count the sessions of one gateway: the service's, or one `exec` run's.
//! `docs/configuration.md#limits` is the operator's reference.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::toml_file::in_range;

/// Descriptors one session holds: the client's socket and the upstream's.
pub const FDS_PER_SESSION: u64 = 2;

/// Descriptors the process needs besides its sessions: listeners, the journal and its
/// checkpoint connection, eBPF maps, programs and links, control and metrics sockets, the
/// catalog's own upstream connections, sinks, and the refused connections being told why
/// ([`REFUSALS_IN_FLIGHT`]).
pub const FD_SLACK: u64 = 512;

/// Refused connections told why in their protocol at once. Telling means waiting for the
/// client's start-up (bounded by the start-up timeout), and each one holds a descriptor; beyond
/// this many, a refused connection is closed without a word (and journaled all the same), so a
/// flood of refused connects cannot take the descriptors the limits protect.
pub const REFUSALS_IN_FLIGHT: usize = 256;

/// The largest limit on sessions accepted: two descriptors each is already more than a
/// process may have open on a default kernel (`fs.nr_open` = 1,048,576).
const MAX_LIMIT: u32 = 1_000_000;

/// `[limits]`: every key has a default, and values that would make the gate refuse everything
/// (a zero timeout or limit) are refused when the file is read.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Seconds a client has to finish its start-up with the gateway (1 to 600).
    #[serde(
        default = "default_startup_timeout",
        deserialize_with = "startup_timeout"
    )]
    pub startup_timeout_secs: u64,
    /// Seconds without a byte in either direction (and nothing owed or held) after which a
    /// session is closed (1 to 604,800, a week).
    #[serde(default = "default_idle_timeout", deserialize_with = "idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Sessions open at once, in all. `None`: the default, [`DEFAULT_MAX_SESSIONS`], lowered
    /// to what the open-file limit holds.
    #[serde(default, deserialize_with = "max_sessions")]
    pub max_sessions: Option<u32>,
    /// Sessions open at once by one uid.
    #[serde(default = "default_per_uid", deserialize_with = "per_uid")]
    pub max_sessions_per_uid: u32,
    /// Sessions open at once by one run (an `exec`, or one incarnation of a captured unit).
    #[serde(default = "default_per_run", deserialize_with = "per_run")]
    pub max_sessions_per_run: u32,
}

pub const DEFAULT_STARTUP_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 3600;
pub const DEFAULT_MAX_SESSIONS: u32 = 4096;
pub const DEFAULT_MAX_SESSIONS_PER_UID: u32 = 512;
pub const DEFAULT_MAX_SESSIONS_PER_RUN: u32 = 256;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            startup_timeout_secs: DEFAULT_STARTUP_TIMEOUT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            max_sessions: None,
            max_sessions_per_uid: DEFAULT_MAX_SESSIONS_PER_UID,
            max_sessions_per_run: DEFAULT_MAX_SESSIONS_PER_RUN,
        }
    }
}

fn default_startup_timeout() -> u64 {
    DEFAULT_STARTUP_TIMEOUT_SECS
}
fn default_idle_timeout() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECS
}
fn default_per_uid() -> u32 {
    DEFAULT_MAX_SESSIONS_PER_UID
}
fn default_per_run() -> u32 {
    DEFAULT_MAX_SESSIONS_PER_RUN
}

fn startup_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(
        d,
        "startup_timeout_secs",
        1..=600,
        "0 closes every client before it can start; a start-up takes milliseconds",
    )
}
fn idle_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(
        d,
        "idle_timeout_secs",
        1..=604_800,
        "0 closes every session at once; more than a week is no timeout",
    )
}
fn max_sessions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    in_range(
        d,
        "max_sessions",
        1..=MAX_LIMIT,
        "0 refuses every session; two descriptors each must fit the open-file limit",
    )
    .map(Some)
}
fn per_uid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(
        d,
        "max_sessions_per_uid",
        1..=MAX_LIMIT,
        "0 refuses every session",
    )
}
fn per_run<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(
        d,
        "max_sessions_per_run",
        1..=MAX_LIMIT,
        "0 refuses every session",
    )
}

/// The limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub startup_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_sessions: u32,
    pub max_sessions_per_uid: u32,
    pub max_sessions_per_run: u32,
}

/// The open-file limit cannot hold the sessions the config asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the open-file limit (RLIMIT_NOFILE) is {open_files}, but [limits] max_sessions = \
     {max_sessions} needs {needed} descriptors ({FDS_PER_SESSION} per session + {FD_SLACK}): \
     raise the limit (LimitNOFILE= in the unit, `ulimit -n` before exec) or lower \
     max_sessions to {fits} or less"
)]
pub struct DescriptorBudget {
    pub open_files: u64,
    pub max_sessions: u32,
    pub needed: u64,
    pub fits: u64,
}

/// Descriptors `sessions` sessions need, with the process's own.
pub fn descriptors_needed(sessions: u32) -> u64 {
    FDS_PER_SESSION * u64::from(sessions) + FD_SLACK
}

/// How many sessions `open_files` descriptors hold.
pub fn sessions_within(open_files: u64) -> u64 {
    open_files.saturating_sub(FD_SLACK) / FDS_PER_SESSION
}

/// The soft RLIMIT_NOFILE, which `main` raises to the hard limit before `exec` and `run`.
pub fn open_file_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

impl LimitsConfig {
    /// The limits in force with `open_files` descriptors. A `max_sessions` the operator set
    /// that the limit cannot hold is an error: the gateway would fail sessions it promised to
    /// admit, with EMFILE, in ways nobody reads. The default is lowered to what fits instead,
    /// with a warning, so `exec` works unconfigured on a host with a small limit; a limit too
    /// small for a single session is an error either way.
    pub fn limits(&self, open_files: u64) -> Result<Limits, DescriptorBudget> {
        let fits = sessions_within(open_files);
        let wanted = self.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        let budget = DescriptorBudget {
            open_files,
            max_sessions: wanted,
            needed: descriptors_needed(wanted),
            fits,
        };
        let max_sessions = if budget.needed <= open_files {
            wanted
        } else if self.max_sessions.is_none() && fits > 0 {
            let lowered = u32::try_from(fits).unwrap_or(wanted).min(wanted);
            tracing::warn!(
                open_files,
                max_sessions = lowered,
                default = DEFAULT_MAX_SESSIONS,
                "the open-file limit holds only {lowered} sessions: [limits] max_sessions \
                 lowered from its default {DEFAULT_MAX_SESSIONS} (raise the limit, or set \
                 max_sessions to silence this)"
            );
            lowered
        } else {
            return Err(budget);
        };
        Ok(Limits {
            startup_timeout: Duration::from_secs(self.startup_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_sessions,
            max_sessions_per_uid: self.max_sessions_per_uid,
            max_sessions_per_run: self.max_sessions_per_run,
        })
    }
}

/// A session the limits refuse, and which limit it met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many sessions {whose}: [limits] {key} is {limit}")]
pub struct TooMany {
    /// The config key of the limit, also the label it is counted under.
    pub key: &'static str,
    pub limit: u32,
    /// "for uid 1000", "for run run-…", "in all".
    pub whose: String,
}

/// The open sessions, counted against the limits. Shared by every session of a gateway.
pub struct Admission {
    limits: Limits,
    open: Mutex<Open>,
    refusing: AtomicUsize,
    /// Refusals since the last warning about them, and when that was.
    unreported: Mutex<(u64, Option<Instant>)>,
}

/// How often refusals are warned about in the log (each is journaled).
const REPORT_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Open {
    total: u32,
    by_uid: HashMap<u32, u32>,
    by_run: HashMap<String, u32>,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            open: Mutex::new(Open::default()),
            refusing: AtomicUsize::new(0),
            unreported: Mutex::new((0, None)),
        }
    }

    /// Counts one refusal for the log; `Some(n)`: warn now about the `n` refused since the
    /// last warning (the first at once, then at most every ten seconds).
    pub fn refusals_to_report(&self) -> Option<u64> {
        let mut unreported = self.unreported.lock().unwrap_or_else(|p| p.into_inner());
        unreported.0 += 1;
        let due = unreported.1.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        due.then(|| {
            let n = unreported.0;
            *unreported = (0, Some(Instant::now()));
            n
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts a session of `uid` in `run` as open until the permit drops, or says which limit
    /// it would exceed. The most specific limit is named first: it is the one the agent can
    /// do something about.
    pub fn admit(&self, uid: u32, run: &str) -> Result<Permit<'_>, TooMany> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let of_uid = open.by_uid.get(&uid).copied().unwrap_or(0);
        let of_run = open.by_run.get(run).copied().unwrap_or(0);
        let l = &self.limits;
        let refused = if of_uid >= l.max_sessions_per_uid {
            Some((
                "max_sessions_per_uid",
                l.max_sessions_per_uid,
                format!("for uid {uid}"),
            ))
        } else if of_run >= l.max_sessions_per_run {
            Some((
                "max_sessions_per_run",
                l.max_sessions_per_run,
                format!("for run {run}"),
            ))
        } else if open.total >= l.max_sessions {
            Some(("max_sessions", l.max_sessions, "in all".to_owned()))
        } else {
            None
        };
        if let Some((key, limit, whose)) = refused {
            return Err(TooMany { key, limit, whose });
        }
        open.total += 1;
        *open.by_uid.entry(uid).or_default() += 1;
        *open.by_run.entry(run.to_owned()).or_default() += 1;
        Ok(Permit {
            admission: self,
            uid,
            run: run.to_owned(),
        })
    }

    /// Sessions open now.
    pub fn open(&self) -> u32 {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Room to tell one more refused client why ([`REFUSALS_IN_FLIGHT`]); `None`: close it
    /// at once.
    pub fn refusal_slot(&self) -> Option<RefusalSlot<'_>> {
        self.refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < REFUSALS_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| RefusalSlot { admission: self })
    }
}

/// One open session, counted until dropped.
pub struct Permit<'a> {
    admission: &'a Admission,
    uid: u32,
    run: String,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        decrement(&mut open.by_uid, &self.uid);
        decrement(&mut open.by_run, &self.run);
    }
}

/// Counts one fewer under `key`, forgetting keys that reach zero (uids and runs come and go).
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// A refused client being told why; counted until dropped.
pub struct RefusalSlot<'a> {
    admission: &'a Admission,
}

impl Drop for RefusalSlot<'_> {
    fn drop(&mut self) {
        self.admission.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
