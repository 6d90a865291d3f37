//! What the gateway has done since it started: sessions, decisions and anomalies, counted for
//! `interceptor status` and the metrics endpoint.
//!
//! Why this exists apart from the journal: the journal answers "what happened", with a query;
//! these answer "what is happening", at no cost per scrape. They count what the gateway
//! decided, never what the statements said, so nothing here needs masking.

use crate::metrics::LabeledCounts;

/// The gateway's counters. Shared by every session task.
#[derive(Default)]
pub struct Stats {
    /// Sessions opened, by (target, protocol); a connection with no target is `""`.
    pub sessions_opened: LabeledCounts<2>,
    /// Sessions open now, by (target, protocol).
    pub sessions_open: LabeledCounts<2>,
    /// Policy decisions on connections and commands, by (target, rule, decision). A decision
    /// no rule made (the policy's default) has rule `""`.
    pub decisions: LabeledCounts<3>,
    /// Connections the gateway could not attribute, by reason.
    pub anomalies: LabeledCounts<1>,
    /// Sessions refused by a limit on open sessions, by the limit's key (`max_sessions`,
    /// `max_sessions_per_uid`, `max_sessions_per_run`).
    pub refused: LabeledCounts<1>,
    /// Sessions the gateway closed on a timeout, by phase (`startup`, `idle`).
    pub timeouts: LabeledCounts<1>,
}

impl Stats {
    /// Counts a session as open until the guard is dropped.
    pub fn session_opened<'s>(&'s self, target: &str, protocol: &str) -> OpenSession<'s> {
        self.sessions_opened.add([target, protocol], 1);
        self.sessions_open.add([target, protocol], 1);
        OpenSession {
            stats: self,
            target: target.to_owned(),
            protocol: protocol.to_owned(),
        }
    }

    pub fn decided(&self, target: Option<&str>, rule: Option<&str>, decision: &str) {
        self.decisions
            .add([target.unwrap_or(""), rule.unwrap_or(""), decision], 1);
    }
}

/// A session counted as open; counted as closed when dropped, however the session ended.
pub struct OpenSession<'s> {
    stats: &'s Stats,
    target: String,
    protocol: String,
}

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.stats
            .sessions_open
            .add([self.target.as_str(), self.protocol.as_str()], -1);
    }
}
