//! PostgreSQL's own grammar (libpg_query, through the `pg_query` crate) as the second,
//! independent opinion on every SQL text the gateway judges.
//!
//! Why this exists: the analysis in [`super::sql`] runs on sqlparser, a grammar written for
//! many dialects. Wherever it reads a text differently from the server (where a string ends,
//! how many statements there are, which table a statement writes), policy judges something
//! other than what runs. libpg_query *is* the server's parser (scanner and grammar compiled
//! from PostgreSQL's source), so it reads text exactly as a server in the gateway's pinned
//! session state does (`standard_conforming_strings = on`, UTF-8; see docs/postgres.md).
//!
//! [`check`] compares the two readings of a text and reports the first disagreement on what
//! policy depends on: the number of statements, whether a statement is consequential (a write,
//! DDL, …) at all, the tables written, and the functions called. Any disagreement, and any
//! text libpg_query rejects, is a refusal: the server would either run something the analysis
//! did not see, or reject the text anyway.
//!
//! It also finds what no policy may allow: changes to the settings that decide how the server
//! tokenizes the *next* text ([`PINNED_SETTINGS`]), by `SET`, `SET LOCAL`, `RESET` or
//! `set_config` (with the setting's name decoded the way the server decodes it, so `U&"…"`
//! spellings are caught), and [`fingerprint`] gives the normalized key that approvals and
//! verdict caches compare texts by.

use std::collections::BTreeSet;

use pg_query::protobuf::{self, a_const::Val};
use pg_query::{NodeEnum, NodeRef};

use super::sql::{Analysis, StatementClass};

/// Settings that change how the server reads text: the gateway keeps them at the values its
/// parsers assume, and refuses every statement that would change them.
pub const PINNED_SETTINGS: &[&str] = &[
    "client_encoding",
    "standard_conforming_strings",
    "backslash_quote",
    "escape_string_warning",
];

/// What the second opinion found wrong with a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Objection {
    /// libpg_query could not parse the text (the server would reject it too, or read it in a
    /// way the analysis cannot follow).
    Unparsable(String),
    /// The two parsers read the text differently.
    Disagreement(String),
    /// The text changes a pinned setting (or might: `set_config` with a computed name).
    PinnedSetting(String),
}

impl std::fmt::Display for Objection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Objection::Unparsable(e) => write!(f, "PostgreSQL's parser rejects the text: {e}"),
            Objection::Disagreement(e) => {
                write!(f, "the gateway's parsers read the text differently: {e}")
            }
            Objection::PinnedSetting(name) => write!(
                f,
                "{name} is pinned by the gateway (it decides how the server reads statements)"
            ),
        }
    }
}

/// The fingerprint options for keys that stand for "the same statement but for its literal
/// values": relation names in full (digits included), schemas included, aliases ignored.
fn fingerprint_options() -> pg_query::FingerprintOptions {
    pg_query::FingerprintOptions::RANGEVAR_PG17_COMPAT | pg_query::FingerprintOptions::FULL_RELNAME
}

/// PostgreSQL's normalized fingerprint of `sql` (literal values, whitespace and comments do
/// not count; every name does), or `None` when the server's grammar rejects the text.
pub fn fingerprint(sql: &str) -> Option<String> {
    let run = || pg_query::fingerprint(sql, 0, fingerprint_options());
    match std::panic::catch_unwind(run) {
        Ok(Ok(f)) => Some(f.hex),
        _ => None,
    }
}

/// A key shared by texts that PostgreSQL's own scanner reads as the same tokens but for the
/// values of their constants: `SELECT abalance FROM pgbench_accounts WHERE aid = 42` and
/// `… = 7`. Clients that inline their parameters send a new text for every row they touch;
/// the analysis of one such text stands for the others (see `policy::Engine::analyze`).
///
/// Why the scanner and not a fingerprint or our own tokens: the server's grammar sees only
/// tokens, so texts with one key parse to one tree but for constant values, which is what
/// sharing an analysis needs; and scan.l decides where strings, comments and identifiers
/// end exactly as the server does (the session is pinned to UTF-8 and
/// standard_conforming_strings). Scanning costs less than half of a fingerprint, which
/// parses. Every token counts with its kind and, except for plainly written constants
/// ([`plain_constant`]), its text as written (case and quotes included); comments do not
/// count. `None` when the scanner rejects the text, or it has no token.
pub fn shape_key(sql: &str) -> Option<String> {
    use protobuf::Token as T;
    // A text of whitespace alone has no tokens, and for no tokens libpg_query hands back a
    // null array that `scan_tokens` makes a slice of: undefined behaviour, which a debug
    // build stops with an abort (of the whole gateway, from an empty Query). Such a text has
    // no statement to share an analysis with anyway. Comments are tokens; the server's
    // whitespace is exactly these bytes (scan.l, `space`).
    if sql
        .bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b'))
    {
        return None;
    }
    let run = || pg_query::scan_tokens(sql);
    let Ok(Ok(tokens)) = std::panic::catch_unwind(run) else {
        return None;
    };
    // Each number is written as one char (token kinds are below 1,000; a text with a token
    // longer than 55,295 bytes gets no key), not with `fmt`, which cost as much as the scan.
    let code = |n: usize| u32::try_from(n).ok().and_then(char::from_u32);
    let mut key = String::with_capacity(sql.len() + tokens.len());
    for t in &tokens {
        let kind = t.token;
        if kind == T::SqlComment as i32 || kind == T::CComment as i32 {
            continue;
        }
        key.push(code(usize::try_from(kind).ok()?)?);
        let text = sql.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?)?;
        if !plain_constant(kind, text) {
            // The text with its length first: no two token streams write the same key.
            key.push(code(text.len())?);
            key.push_str(text);
        }
    }
    Some(key)
}

/// Whether a token is a constant whose value [`shape_key`] leaves out: a number or string
/// written so that no value can make either parser reject it or read it differently, so
/// that texts differing only in such values really parse alike. Decimal numbers, and strings
/// in plain quotes (standard_conforming_strings is pinned on: only `''` is special). Other
/// spellings keep their text in the key: an escape that one parser rejects (`U&'\004'`), a
/// dollar quote or a continued string (`'a'` newline `'b'`) the two split differently, a
/// hexadecimal or underscored number (PostgreSQL 16+) would otherwise borrow the analysis of
/// a text that parsed. The sql_policy fuzz target found `SELECT U&'\004'` allowed that way.
fn plain_constant(kind: i32, text: &str) -> bool {
    use protobuf::Token as T;
    if kind == T::Iconst as i32 {
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
    } else if kind == T::Fconst as i32 {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    } else if kind == T::Sconst as i32 {
        let inner = text
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or("'");
        inner.split("''").all(|part| !part.contains('\''))
    } else {
        false
    }
}

/// Compares libpg_query's reading of `sql` with `statements`, the analysis of the same text.
pub fn check(sql: &str, statements: &[Analysis]) -> Result<(), Objection> {
    let parsed = match std::panic::catch_unwind(|| pg_query::parse(sql, 0)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(Objection::Unparsable(e.to_string())),
        Err(_) => return Err(Objection::Unparsable("the parser panicked".to_owned())),
    };
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() != statements.len() {
        return Err(Objection::Disagreement(format!(
            "PostgreSQL reads {} statement(s), the analysis {}",
            stmts.len(),
            statements.len()
        )));
    }
    for (i, (raw, ours)) in stmts.iter().zip(statements).enumerate() {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let seen = std::panic::catch_unwind(|| Reading::of(node))
            .map_err(|_| Objection::Unparsable("the parse tree walk panicked".to_owned()))?;
        seen.compare(i + 1, ours)?;
    }
    Ok(())
}

/// What libpg_query's tree of one statement says policy must see.
#[derive(Default)]
struct Reading {
    /// Classes the statement must show (any one of each group).
    requires: Vec<(&'static str, &'static [StatementClass])>,
    written: BTreeSet<String>,
    functions: BTreeSet<String>,
    pinned: Option<String>,
}

/// Classes that do nothing lasting on their own.
const HARMLESS: &[StatementClass] = &[
    StatementClass::Read,
    StatementClass::Transaction,
    StatementClass::SetReset,
    StatementClass::Explain,
];

/// Everything but the harmless classes.
const CONSEQUENTIAL: &[StatementClass] = &[
    StatementClass::Insert,
    StatementClass::Update,
    StatementClass::Delete,
    StatementClass::Merge,
    StatementClass::Ddl,
    StatementClass::Dcl,
    StatementClass::CopyFrom,
    StatementClass::CopyTo,
    StatementClass::CopyProgram,
    StatementClass::Call,
    StatementClass::VolatileFunction,
    StatementClass::Unknown,
];

impl Reading {
    fn of(top: &NodeEnum) -> Reading {
        let mut r = Reading::default();
        // Statements whose top-level node does nothing lasting by itself; anything else must
        // be consequential in the analysis too. What they contain is checked node by node.
        let harmless_top = matches!(
            top,
            NodeEnum::SelectStmt(_)
                | NodeEnum::ExplainStmt(_)
                | NodeEnum::VariableShowStmt(_)
                | NodeEnum::VariableSetStmt(_)
                | NodeEnum::TransactionStmt(_)
                | NodeEnum::DeclareCursorStmt(_)
                | NodeEnum::FetchStmt(_)
                | NodeEnum::ClosePortalStmt(_)
                | NodeEnum::ListenStmt(_)
                | NodeEnum::UnlistenStmt(_)
                | NodeEnum::PrepareStmt(_)
                | NodeEnum::DeallocateStmt(_)
                | NodeEnum::LockStmt(_)
                | NodeEnum::DiscardStmt(_)
                | NodeEnum::InsertStmt(_)
                | NodeEnum::UpdateStmt(_)
                | NodeEnum::DeleteStmt(_)
                | NodeEnum::MergeStmt(_)
                | NodeEnum::CopyStmt(_)
        );
        if !harmless_top {
            r.requires
                .push(("a consequential statement", CONSEQUENTIAL));
        }
        // EXPLAIN without ANALYZE plans its statement without running it: the writes inside
        // do not happen (functions and settings are still looked at).
        let plans_only = match top {
            NodeEnum::ExplainStmt(e) => !e.options.iter().any(|o| match o.node.as_ref() {
                Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
                    // `ANALYZE`, `ANALYZE true|on|1`: runs; `false|off|0`: plans only.
                    match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
                        None => true,
                        Some(NodeEnum::Boolean(b)) => b.boolval,
                        Some(NodeEnum::Integer(i)) => i.ival != 0,
                        Some(NodeEnum::String(s)) => !matches!(
                            s.sval.to_ascii_lowercase().as_str(),
                            "false" | "off" | "0" | "no"
                        ),
                        Some(_) => true,
                    }
                }
                _ => false,
            }),
            _ => false,
        };
        for (node, _, _, _) in top.nodes() {
            match node {
                NodeRef::InsertStmt(s) if !plans_only => {
                    r.requires.push(("an INSERT", &[StatementClass::Insert]));
                    r.write(s.relation.as_ref());
                }
                NodeRef::UpdateStmt(s) if !plans_only => {
                    r.requires.push(("an UPDATE", &[StatementClass::Update]));
                    r.write(s.relation.as_ref());
                }
                NodeRef::DeleteStmt(s) if !plans_only => {
                    r.requires.push(("a DELETE", &[StatementClass::Delete]));
                    r.write(s.relation.as_ref());
                }
                NodeRef::MergeStmt(s) if !plans_only => {
                    r.requires.push(("a MERGE", &[StatementClass::Merge]));
                    r.write(s.relation.as_ref());
                }
                NodeRef::SelectStmt(s) if s.into_clause.is_some() && !plans_only => {
                    r.requires.push(("SELECT INTO", &[StatementClass::Ddl]));
                }
                NodeRef::CopyStmt(s) => {
                    let dir: &'static [StatementClass] = if s.is_from {
                        &[StatementClass::CopyFrom]
                    } else {
                        &[StatementClass::CopyTo]
                    };
                    r.requires.push(("a COPY", dir));
                    if s.is_program {
                        r.requires
                            .push(("COPY PROGRAM", &[StatementClass::CopyProgram]));
                    }
                }
                NodeRef::FuncCall(f) => r.function(f),
                NodeRef::VariableSetStmt(s) => r.setting(s),
                _ => {}
            }
        }
        r
    }

    fn write(&mut self, relation: Option<&protobuf::RangeVar>) {
        if let Some(rel) = relation {
            self.written.insert(rel.relname.clone());
        }
    }

    fn function(&mut self, f: &protobuf::FuncCall) {
        let names: Vec<&str> = f
            .funcname
            .iter()
            .filter_map(|n| match n.node.as_ref() {
                Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                _ => None,
            })
            .collect();
        let Some(base) = names.last() else { return };
        // SQL-standard syntax the grammar turns into a call of a fixed built-in
        // (`EXTRACT(…)` is `pg_catalog.extract`, `TRIM(…)` is `pg_catalog.btrim`): always the
        // pg_catalog function, whatever the search path, and not spelled as a call in the text.
        let sql_syntax = f.funcformat == protobuf::CoercionForm::CoerceSqlSyntax as i32
            && names.first() == Some(&"pg_catalog");
        if !sql_syntax {
            self.functions.insert((*base).to_owned());
        }
        if base.eq_ignore_ascii_case("set_config") {
            match f.args.first().and_then(|a| a.node.as_ref()) {
                Some(NodeEnum::AConst(c)) => {
                    if let Some(Val::Sval(s)) = &c.val {
                        let name = s.sval.trim().to_ascii_lowercase();
                        if PINNED_SETTINGS.contains(&name.as_str()) {
                            self.pinned = Some(name);
                        }
                    }
                }
                // A name computed at run time may be any setting.
                _ => self.pinned = Some("set_config with a computed setting name".to_owned()),
            }
        }
    }

    fn setting(&mut self, s: &protobuf::VariableSetStmt) {
        // RESET ALL returns every setting to the session's start-up value, which the gateway
        // checked (see protocol/postgres): nothing to pin there.
        let name = s.name.to_ascii_lowercase();
        // `SET NAMES x` is `client_encoding`; `SET SESSION CHARACTERISTICS` and friends have
        // names of their own.
        if PINNED_SETTINGS.contains(&name.as_str()) {
            self.pinned = Some(name);
        }
    }

    fn compare(&self, n: usize, ours: &Analysis) -> Result<(), Objection> {
        if let Some(name) = &self.pinned {
            return Err(Objection::PinnedSetting(name.clone()));
        }
        if ours.classes.contains(&StatementClass::Unknown) {
            // The analysis already refuses it.
            return Ok(());
        }
        for (what, any_of) in &self.requires {
            if !any_of.iter().any(|c| ours.classes.contains(c)) {
                return Err(Objection::Disagreement(format!(
                    "statement {n}: PostgreSQL reads {what}, the analysis {:?}",
                    ours.classes
                )));
            }
        }
        if self.requires.is_empty()
            && ours.classes.iter().all(|c| HARMLESS.contains(c))
            && !self.written.is_empty()
        {
            return Err(Objection::Disagreement(format!(
                "statement {n}: PostgreSQL reads a write"
            )));
        }
        let ours_written: BTreeSet<String> =
            ours.tables_written.iter().map(|t| last_part(t)).collect();
        if let Some(t) = self.written.iter().find(|t| !ours_written.contains(*t)) {
            return Err(Objection::Disagreement(format!(
                "statement {n}: PostgreSQL reads a write to {t:?}, the analysis writes {:?}",
                ours.tables_written
            )));
        }
        let ours_functions: BTreeSet<String> =
            ours.functions.iter().map(|f| last_part(f)).collect();
        if let Some(f) = self.functions.iter().find(|f| !ours_functions.contains(*f)) {
            return Err(Objection::Disagreement(format!(
                "statement {n}: PostgreSQL reads a call of {f:?}, the analysis {:?}",
                ours.functions
            )));
        }
        Ok(())
    }
}

/// The last part of a name as the analysis writes it (`public.t`, `"Mixed"`, `"a.b"`), with
/// its quotes removed: what PostgreSQL's tree holds as the relation or function name.
pub fn last_part(name: &str) -> String {
    if let Some(inner) = name.strip_suffix('"') {
        // A quoted last part: find its opening quote (a doubled quote is an escaped one).
        let bytes = inner.as_bytes();
        let mut i = bytes.len();
        while i > 0 {
            i -= 1;
            if bytes[i] == b'"' {
                if i > 0 && bytes[i - 1] == b'"' {
                    i -= 1;
                    continue;
                }
                return inner[i + 1..].replace("\"\"", "\"");
            }
        }
        return inner.to_owned();
    }
    match name.rfind('.') {
        Some(dot) => name[dot + 1..].to_owned(),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::sql;

    fn objection(text: &str) -> Option<Objection> {
        let parsed = sql::analyze_unchecked(text);
        check(text, &parsed.statements).err()
    }

    #[test]
    fn agreeing_texts_pass() {
        for text in [
            "SELECT 1",
            "select * from t where name = 'it''s'; update t set a = 1 where id = 2",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "EXPLAIN DELETE FROM t",
            "EXPLAIN ANALYZE DELETE FROM t",
            "SELECT extract(year from now()), trim(' x ')",
            "SET search_path = public",
            "INSERT INTO \"Mixed\" VALUES (1)",
            "SELECT set_config('search_path', 'public', false)",
        ] {
            assert_eq!(objection(text), None, "{text}");
        }
    }

    #[test]
    fn pinned_settings_are_found_however_spelled() {
        for text in [
            "SET standard_conforming_strings = off",
            "SET LOCAL standard_conforming_strings TO off",
            "set client_encoding = 'SJIS'",
            "SET NAMES 'SJIS'",
            "RESET client_encoding",
            "SET U&\"client\\005fencoding\" = 'BIG5'",
            "select set_config('standard_conforming_strings', 'off', false)",
            "select set_config(lower('CLIENT_ENCODING'), 'GBK', false)",
            "SET backslash_quote = on",
        ] {
            assert!(
                matches!(objection(text), Some(Objection::PinnedSetting(_))),
                "{text}: {:?}",
                objection(text)
            );
        }
        assert_eq!(objection("RESET ALL"), None);
    }

    #[test]
    fn last_parts() {
        assert_eq!(last_part("public.t"), "t");
        assert_eq!(last_part("\"Mixed\""), "Mixed");
        assert_eq!(last_part("s.\"a.b\""), "a.b");
        assert_eq!(last_part("\"a\"\"b\""), "a\"b");
    }

    #[test]
    fn fingerprints_ignore_literals_not_names() {
        let f = |s: &str| fingerprint(s).expect("parses");
        assert_eq!(
            f("DELETE FROM t WHERE id = 999 -- don't touch anything else"),
            f("delete from t where id = 5")
        );
        assert_ne!(
            f("DELETE FROM t WHERE id = 999 -- don't\nOR true; DELETE FROM customers"),
            f("DELETE FROM t WHERE id = 999")
        );
        assert_ne!(
            f("DELETE FROM orders_2024_01"),
            f("DELETE FROM orders_2024_02")
        );
        assert_ne!(f("DELETE FROM a.t x"), f("DELETE FROM b.t x"));
        assert_ne!(f("DELETE FROM t x"), f("DELETE FROM u x"));
        assert_eq!(fingerprint("SELEC 1"), None);
    }
}
