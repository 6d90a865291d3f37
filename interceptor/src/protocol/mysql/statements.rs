//! The prepared statements the server confirmed, by the id it gave them.
//!
//! Why this exists: `COM_STMT_EXECUTE` names a statement only by its id, so the gateway must
//! know which judged text each id stands for. Ids are recorded only from the server's own
//! `COM_STMT_PREPARE_OK`, for a text the hooks allowed; an execute of any other id is refused
//! (the agent cannot make the gateway and the server disagree about what an id runs).

use std::collections::HashMap;

use super::results::ColumnDef;
use crate::command::EventId;

/// Bound on the statements one session may keep prepared (MySQL's own default
/// `max_prepared_stmt_count` is 16382 for the whole server).
pub const MAX_PREPARED: usize = 4096;

/// One prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub text: String,
    pub params: usize,
    /// The prepare's journal event; its first execution is recorded there.
    pub event: EventId,
    /// Set once an execution used the prepare's decision: later ones are judged again.
    pub claimed: bool,
    /// The columns of the read-only cursor the server opened for the last execution, if it
    /// did: `COM_STMT_FETCH` answers with rows only, masked by these definitions.
    pub cursor: Option<Vec<ColumnDef>>,
}

/// The session's prepared statements.
#[derive(Debug, Default)]
pub struct Statements {
    by_id: HashMap<u32, Prepared>,
}

impl Statements {
    /// Records a statement the server confirmed; `false` when the session holds too many
    /// (the caller closes it on the server and refuses).
    pub fn insert(&mut self, id: u32, prepared: Prepared) -> bool {
        if self.by_id.len() >= MAX_PREPARED && !self.by_id.contains_key(&id) {
            return false;
        }
        self.by_id.insert(id, prepared);
        true
    }

    pub fn get(&self, id: u32) -> Option<&Prepared> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Prepared> {
        self.by_id.get_mut(&id)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn remove(&mut self, id: u32) {
        self.by_id.remove(&id);
    }

    /// `COM_RESET_CONNECTION` and `COM_CHANGE_USER` drop every statement on the server.
    pub fn clear(&mut self) {
        self.by_id.clear();
    }
}
