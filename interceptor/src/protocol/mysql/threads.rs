//! Connection ids: the ones the gateway gives agents, and the server threads they stand for.
//!
//! Why this exists: a MySQL client cancels a running statement by sending `KILL QUERY <id>`
//! on a second connection, where `<id>` is the connection id from the server's greeting
//! (the `mariadb` CLI does this on Ctrl-C). The gateway greets agents before it dials the
//! server, so it hands out ids of its own, random, and maps each to the server's thread once
//! logged in. A `KILL` naming one of these ids is run by the gateway as a `KILL` of the real
//! thread, on the second connection's own upstream login; as PostgreSQL cancel keys do, this
//! lets an agent cancel its own sessions only (of the same target), and it never learns the
//! server's thread ids through the greeting. Any other `KILL` is an ordinary statement, judged
//! by policy (the shipped default refuses it as opaque).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// What a session's id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    target: String,
    /// The server's thread id, once the gateway is logged in.
    thread: Option<u32>,
}

/// The ids of live sessions, shared by every MySQL session of a gateway.
#[derive(Default, Clone)]
pub struct Registry {
    map: Arc<Mutex<HashMap<u32, Entry>>>,
}

/// A session's id; removed from the registry when dropped (the session ended).
pub struct Registration {
    map: Arc<Mutex<HashMap<u32, Entry>>>,
    id: u32,
}

impl Registration {
    /// The id the agent is told in the greeting.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Records the server's thread id for this session.
    pub fn logged_in(&self, thread: u32) {
        if let Some(e) = lock(&self.map).get_mut(&self.id) {
            e.thread = Some(thread);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.id);
    }
}

fn lock(map: &Mutex<HashMap<u32, Entry>>) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
    // A panic elsewhere while holding the lock leaves a map that is still consistent (every
    // change is one insert or remove), so a poisoned lock is used as it is.
    map.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// A fresh id for a session of `target`: random in 1..2^31 (clients read it as a signed
    /// 32-bit number in places), never one in use.
    pub fn register(&self, target: &str) -> Registration {
        let mut map = lock(&self.map);
        let id = loop {
            let bytes = *uuid::Uuid::new_v4().as_bytes();
            let id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3] & 0x7f]);
            if id != 0 && !map.contains_key(&id) {
                break id;
            }
        };
        map.insert(
            id,
            Entry {
                target: target.to_owned(),
                thread: None,
            },
        );
        Registration {
            map: self.map.clone(),
            id,
        }
    }

    /// The server thread of a live session of `target` with this id.
    pub fn thread(&self, target: &str, id: u32) -> Option<u32> {
        lock(&self.map)
            .get(&id)
            .filter(|e| e.target == target)
            .and_then(|e| e.thread)
    }
}

/// What a `KILL` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Query,
    Connection,
}

/// A statement that is only `KILL [HARD|SOFT] [CONNECTION|QUERY] <id>` (an optional `;` and
/// white space around), with the id. Anything else (comments, `KILL USER`, `KILL QUERY ID`,
/// several statements) is `None`: it is not a cancel, and goes to policy as written.
pub fn parse_kill(text: &str) -> Option<(Scope, u32)> {
    let text = text.trim();
    let text = text.strip_suffix(';').unwrap_or(text);
    let mut words = text.split_ascii_whitespace().peekable();
    if !words.next()?.eq_ignore_ascii_case("KILL") {
        return None;
    }
    if words
        .peek()
        .is_some_and(|w| w.eq_ignore_ascii_case("HARD") || w.eq_ignore_ascii_case("SOFT"))
    {
        words.next();
    }
    let mut scope = Scope::Connection;
    match words.peek() {
        Some(w) if w.eq_ignore_ascii_case("QUERY") => {
            scope = Scope::Query;
            words.next();
        }
        Some(w) if w.eq_ignore_ascii_case("CONNECTION") => {
            words.next();
        }
        _ => {}
    }
    let id = words.next()?;
    if words.next().is_some() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((scope, id.parse().ok()?))
}

/// The statement the gateway runs for a cancel of `thread`.
pub fn kill_statement(scope: Scope, thread: u32) -> String {
    match scope {
        Scope::Query => format!("KILL QUERY {thread}"),
        Scope::Connection => format!("KILL CONNECTION {thread}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_threads_of_their_target_while_registered() {
        let registry = Registry::default();
        let a = registry.register("appdb");
        assert!(a.id() > 0 && a.id() < 1 << 31);
        assert_eq!(registry.thread("appdb", a.id()), None, "not logged in yet");
        a.logged_in(42);
        assert_eq!(registry.thread("appdb", a.id()), Some(42));
        assert_eq!(registry.thread("other", a.id()), None, "another target's");
        let id = a.id();
        drop(a);
        assert_eq!(registry.thread("appdb", id), None, "ended");
    }

    #[test]
    fn only_a_plain_kill_of_one_id_is_a_cancel() {
        assert_eq!(parse_kill("KILL QUERY 17"), Some((Scope::Query, 17)));
        assert_eq!(parse_kill(" kill  query 17 ;"), Some((Scope::Query, 17)));
        assert_eq!(parse_kill("KILL 17"), Some((Scope::Connection, 17)));
        assert_eq!(
            parse_kill("KILL HARD CONNECTION 17"),
            Some((Scope::Connection, 17))
        );
        assert_eq!(parse_kill("KILL SOFT QUERY 17"), Some((Scope::Query, 17)));
        for other in [
            "KILL QUERY ID 17",
            "KILL USER app",
            "KILL QUERY 17; DROP TABLE t",
            "KILL QUERY /* x */ 17",
            "KILL QUERY 17 18",
            "KILL QUERY -17",
            "KILL QUERY 99999999999",
            "SELECT 1",
            "KILL",
        ] {
            assert_eq!(parse_kill(other), None, "{other}");
        }
        assert_eq!(kill_statement(Scope::Query, 9), "KILL QUERY 9");
        assert_eq!(kill_statement(Scope::Connection, 9), "KILL CONNECTION 9");
    }
}
