//! The names the server keeps for a session (prepared statements and portals), mirrored from
//! what the server confirms.
//!
//! Why this exists: a Bind names a prepared statement and an Execute names a portal; what
//! runs is whatever the *server* holds under that name. If the gateway's idea of a name drifts
//! from the server's (a Parse the server rejected, a refused re-Parse, a SQL-level `DEALLOCATE`
//! or `DECLARE`), an Execute is judged, journaled and masked as one statement while the
//! server runs another. So:
//!
//! - a name takes a value only when the server confirms it (ParseComplete, BindComplete,
//!   CloseComplete), in the order the server answers; a message the server skipped after an
//!   earlier error changes nothing;
//! - the client side plans ahead with the *projection*: the confirmed names plus every change
//!   still waiting for its answer. A change from an earlier Sync segment may still fail, so a
//!   lookup that depends on one waits until the server has answered it ([`Lookup::Wait`]);
//!   within one segment it may not (the server skips the rest of a segment after an error);
//! - the unnamed statement and portal are dropped by every simple Query, a failed unnamed
//!   Parse or Bind drops the old one too, and portals die with their transaction;
//! - SQL-level statements that drop names (`DEALLOCATE`, `CLOSE`, `DISCARD ALL`, and every
//!   transaction-control statement for portals) make the gateway forget them at once; names
//!   SQL creates (`PREPARE`, `DECLARE`) are never learnt, so protocol-level use of them is
//!   refused as unknown. Forgetting too much only ever refuses; it never runs anything unseen.

use std::collections::HashMap;
use std::sync::Arc;

use crate::command::EventId;

/// The journal event of a command: known, or the index of a command in the batch being
/// recorded (resolved once the batch is committed).
#[derive(Debug, Clone, Copy)]
pub enum EventRef {
    Known(EventId),
    Batch(usize),
}

impl EventRef {
    pub fn resolve(self, batch: &[EventId]) -> Option<EventId> {
        match self {
            EventRef::Known(e) => Some(e),
            EventRef::Batch(i) => batch.get(i).copied(),
        }
    }
}

/// A prepared statement, as Parse made it.
#[derive(Debug, Clone)]
pub struct Statement {
    pub text: Arc<str>,
    pub params: usize,
    /// The Parse's journal event (its first execution reports there).
    pub event: EventRef,
    /// Unique per Parse in the session: a re-Parse of a name never inherits the old one's
    /// description or first run.
    pub generation: u64,
    /// What each execution drops, when the statement is a `DEALLOCATE`, `CLOSE`, … itself.
    pub forget: Option<Forget>,
}

/// A portal, as Bind made it.
#[derive(Debug, Clone)]
pub struct Portal {
    pub statement_name: String,
    pub statement: Statement,
    /// The result formats the Bind asked for.
    pub formats: Vec<i16>,
}

/// What SQL-level statements drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forget {
    pub all_statements: bool,
    pub all_portals: bool,
    pub statements: Vec<String>,
    pub portals: Vec<String>,
}

impl Forget {
    fn statement(&self, name: &str) -> bool {
        self.all_statements || self.statements.iter().any(|s| s == name)
    }

    fn portal(&self, name: &str) -> bool {
        self.all_portals || self.portals.iter().any(|s| s == name)
    }
}

/// A change to the names that a client message asks for.
#[derive(Debug, Clone)]
pub enum Change {
    /// Parse: answered by ParseComplete.
    Parsed { name: String, statement: Statement },
    /// Bind: answered by BindComplete.
    Bound { name: String, portal: Portal },
    /// Close: answered by CloseComplete.
    Closed { statement: bool, name: String },
    /// What a simple Query (or an Execute of a prepared `DEALLOCATE`, …) drops: applied when
    /// the server has answered it, and in the projection at once.
    Forget(Forget),
}

impl Change {
    /// The change with its statements' journal events resolved against a committed batch.
    pub fn resolved(mut self, batch: &[EventId]) -> Change {
        let fix = |s: &mut Statement| {
            if let Some(e) = s.event.resolve(batch) {
                s.event = EventRef::Known(e);
            }
        };
        match &mut self {
            Change::Parsed { statement, .. } => fix(statement),
            Change::Bound { portal, .. } => fix(&mut portal.statement),
            Change::Closed { .. } | Change::Forget(_) => {}
        }
        self
    }
}

/// The names as the server has confirmed them.
#[derive(Debug, Default)]
pub struct Names {
    pub statements: HashMap<String, Statement>,
    pub portals: HashMap<String, Portal>,
}

impl Names {
    /// The server confirmed `change`. Returns the generations no longer reachable.
    pub fn confirm(&mut self, change: Change) -> Vec<u64> {
        let mut retired = Vec::new();
        match change {
            Change::Parsed { name, statement } => {
                retired.extend(
                    self.statements
                        .insert(name, statement)
                        .map(|s| s.generation),
                );
            }
            Change::Bound { name, portal } => {
                self.portals.insert(name, portal);
            }
            Change::Closed {
                statement: true,
                name,
            } => {
                retired.extend(self.statements.remove(&name).map(|s| s.generation));
            }
            Change::Closed {
                statement: false,
                name,
            } => {
                self.portals.remove(&name);
            }
            Change::Forget(f) => self.forget(&f, &mut retired),
        }
        retired
    }

    /// The server rejected `change`: an unnamed statement or portal is gone even so (the
    /// server drops it before it tries to make the new one).
    pub fn reject(&mut self, change: &Change) -> Vec<u64> {
        match change {
            Change::Parsed { name, .. } if name.is_empty() => self
                .statements
                .remove("")
                .map(|s| s.generation)
                .into_iter()
                .collect(),
            Change::Bound { name, .. } if name.is_empty() => {
                self.portals.remove("");
                Vec::new()
            }
            // A failed Query still dropped its names (fail closed: at worst a later use is
            // refused).
            Change::Forget(f) => {
                let mut retired = Vec::new();
                self.forget(f, &mut retired);
                retired
            }
            _ => Vec::new(),
        }
    }

    /// The transaction ended: its portals are gone.
    pub fn end_transaction(&mut self) {
        self.portals.clear();
    }

    fn forget(&mut self, f: &Forget, retired: &mut Vec<u64>) {
        if f.all_statements {
            // DEALLOCATE ALL keeps the unnamed statement; forgetting it too is the safe side.
            retired.extend(self.statements.drain().map(|(_, s)| s.generation));
        } else {
            for name in &f.statements {
                retired.extend(self.statements.remove(name).map(|s| s.generation));
            }
        }
        if f.all_portals {
            self.portals.clear();
        } else {
            for name in &f.portals {
                self.portals.remove(name);
            }
        }
    }
}

/// What the projection says about a name.
#[derive(Debug)]
pub enum Lookup<T> {
    Known(T),
    Unknown,
    /// It depends on the answer to Sync segment `.0`, which the server has not given yet.
    Wait(u64),
}

/// A change, the Sync segment its message belongs to, and whether it is part of the batch
/// being planned (not yet sent).
pub type Planned<'a> = (u64, &'a Change, bool);

/// The statement `name` will be once the server has done what was sent before, followed by
/// `changes` (newest last). `current` is the segment being planned.
pub fn statement<'a>(
    names: &'a Names,
    changes: impl DoubleEndedIterator<Item = Planned<'a>>,
    current: u64,
    name: &str,
) -> Result<Lookup<&'a Statement>, usize> {
    for (segment, change, local) in changes.rev() {
        let found = match change {
            Change::Parsed { name: n, statement } if n == name => Lookup::Known(statement),
            Change::Closed {
                statement: true,
                name: n,
            } if n == name => Lookup::Unknown,
            Change::Forget(f) if f.statement(name) => Lookup::Unknown,
            _ => continue,
        };
        return settle(found, segment, current, local);
    }
    Ok(names
        .statements
        .get(name)
        .map_or(Lookup::Unknown, Lookup::Known))
}

/// The portal `name` will be; see [`statement`].
pub fn portal<'a>(
    names: &'a Names,
    changes: impl DoubleEndedIterator<Item = Planned<'a>>,
    current: u64,
    name: &str,
) -> Result<Lookup<&'a Portal>, usize> {
    for (segment, change, local) in changes.rev() {
        let found = match change {
            Change::Bound { name: n, portal } if n == name => Lookup::Known(portal),
            Change::Closed {
                statement: false,
                name: n,
            } if n == name => Lookup::Unknown,
            Change::Forget(f) if f.portal(name) => Lookup::Unknown,
            _ => continue,
        };
        return settle(found, segment, current, local);
    }
    Ok(names
        .portals
        .get(name)
        .map_or(Lookup::Unknown, Lookup::Known))
}

/// A name made in an earlier segment than the one being planned may not exist after all (its
/// segment may fail): wait for the server's answer. `Err(segment)`: the change is in the batch
/// being planned, so the batch must be cut before `segment` and the rest planned later.
fn settle<T>(
    found: Lookup<T>,
    segment: u64,
    current: u64,
    local: bool,
) -> Result<Lookup<T>, usize> {
    match found {
        Lookup::Known(_) if segment < current && local => Err(segment as usize),
        Lookup::Known(_) if segment < current => Ok(Lookup::Wait(segment)),
        other => Ok(other),
    }
}

/// Words whose statements drop names (a keyword cannot be quoted, escaped or split, so a text
/// without one of them as a whole word has no such statement).
const DROPPING_WORDS: &[&str] = &[
    "deallocate",
    "close",
    "discard",
    "commit",
    "rollback",
    "abort",
    "end",
    "prepare",
];

fn has_word(text: &str, words: &[&str]) -> bool {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    let mut start = None;
    for i in 0..=bytes.len() {
        let b = bytes.get(i).copied();
        match (b.is_some_and(is_ident), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                let word = &text[s..i];
                if words.iter().any(|w| word.eq_ignore_ascii_case(w)) {
                    return true;
                }
                start = None;
            }
            _ => {}
        }
    }
    false
}

/// What the SQL-level statements of `text` drop, as PostgreSQL's own parser reads them.
/// A text it cannot parse drops nothing (the server rejects it before running any of it).
pub fn sql_forget(text: &str) -> Forget {
    use pg_query::NodeEnum;
    let mut forget = Forget::default();
    if !has_word(text, DROPPING_WORDS) {
        return forget;
    }
    let Ok(Ok(parsed)) = std::panic::catch_unwind(|| pg_query::parse(text, 0)) else {
        return forget;
    };
    for raw in &parsed.protobuf.stmts {
        match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            Some(NodeEnum::DeallocateStmt(d)) => {
                if d.isall || d.name.is_empty() {
                    forget.all_statements = true;
                } else {
                    forget.statements.push(d.name.clone());
                }
            }
            Some(NodeEnum::ClosePortalStmt(c)) => {
                if c.portalname.is_empty() {
                    forget.all_portals = true;
                } else {
                    forget.portals.push(c.portalname.clone());
                }
            }
            Some(NodeEnum::DiscardStmt(_)) => {
                // DISCARD ALL drops everything; the others (PLANS, TEMP, SEQUENCES) keep the
                // names, but forgetting is always safe.
                forget.all_statements = true;
                forget.all_portals = true;
            }
            // COMMIT, ROLLBACK (TO SAVEPOINT), PREPARE TRANSACTION…: portals end with their
            // transaction or subtransaction.
            Some(NodeEnum::TransactionStmt(_)) => forget.all_portals = true,
            _ => {}
        }
    }
    forget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_level_drops_are_found() {
        let f = sql_forget("DEALLOCATE s1; CLOSE c2");
        assert_eq!(f.statements, vec!["s1".to_owned()]);
        assert_eq!(f.portals, vec!["c2".to_owned()]);
        assert!(sql_forget("deallocate all").all_statements);
        assert!(sql_forget("CLOSE ALL").all_portals);
        let d = sql_forget("DISCARD ALL");
        assert!(d.all_statements && d.all_portals);
        assert!(sql_forget("commit").all_portals);
        assert!(sql_forget("ROLLBACK TO SAVEPOINT a").all_portals);
        assert_eq!(sql_forget("SELECT 1"), Forget::default());
        assert_eq!(
            sql_forget("SELECT CASE WHEN true THEN 1 END"),
            Forget::default()
        );
        assert_eq!(sql_forget("SELECT 'close'"), Forget::default());
    }

    #[test]
    fn words() {
        assert!(has_word("x; CLOSE c", DROPPING_WORDS));
        assert!(!has_word("select closed, ending from t", DROPPING_WORDS));
        assert!(has_word("END", DROPPING_WORDS));
    }
}
