//! SQL classification for policy: what a statement *does*, seen through the usual evasions.
//!
//! A policy cannot be written against the relations that `sqlparser`'s visitor happens to
//! report: `DROP TABLE t`, `GRANT … ON t` and `COPY t TO PROGRAM …` report none, a write can hide
//! in a data-modifying CTE, in `EXPLAIN ANALYZE`, in `SELECT … INTO` or `CREATE TABLE … AS`,
//! and the most dangerous operations (`pg_read_file`, `lo_export`, `dblink_exec`,
//! `set_config('role', …)`) look like ordinary function calls (design notes §4). This module
//! therefore classifies every statement by its `Statement` variant and walks the whole tree
//! (CTEs, subqueries, function arguments, defaults, `RETURNING`, …) to collect every class the
//! statement exercises, the tables it reads and writes, the functions it calls and the
//! dangerous operations it contains.
//!
//! It fails closed: text that cannot be parsed, or is too large or too deeply nested to parse
//! safely, or where `sqlparser` and PostgreSQL might disagree about where statements start
//! and end (inline `COPY … FROM STDIN` data), is [`StatementClass::Unknown`]. A caller should
//! deny any text in which one statement is `Unknown`, because the statement boundaries of such
//! text are only a best effort.
//!
//! Decisions worth knowing (the unit tests in `sql/tests.rs` pin each of them):
//!
//! | statement | classes |
//! | --- | --- |
//! | `SELECT`, `VALUES`, `SHOW`, `TABLE t`, `DECLARE … CURSOR`, `FETCH`, `CLOSE` | `Read` |
//! | `INSERT` (`+Update` with `ON CONFLICT DO UPDATE`) | `Insert` (`+Read` when a source reads a table) |
//! | `UPDATE` / `DELETE` | `Update` / `Delete` (`+Read` for `FROM`/`USING`/subqueries) |
//! | `MERGE` | `Merge` plus `Insert`/`Update`/`Delete` for each action it contains, `+Read` |
//! | `TRUNCATE` | `Ddl` and `Delete` (it removes rows) |
//! | `CREATE`/`ALTER`/`DROP`/`COMMENT`/`REINDEX`/`CLUSTER`/`VACUUM`/`ANALYZE`/`REFRESH`/`LOAD` | `Ddl` (`+Read` for a query inside: `CREATE TABLE AS`, views) |
//! | `SELECT … INTO new` | `Ddl` and `Read` |
//! | `GRANT`/`REVOKE`/roles/users/`ALTER DEFAULT PRIVILEGES` | `Dcl` |
//! | `SET ROLE`, `SET SESSION AUTHORIZATION`, `RESET ROLE`, `SET role = …`, `DISCARD ALL` | `Dcl` (+ dangerous "role change: …") |
//! | other `SET`/`RESET`, `DEALLOCATE`, `DISCARD PLANS/TEMP/SEQUENCES` | `SetReset` |
//! | `BEGIN`/`START TRANSACTION`/`COMMIT`/`END`/`ROLLBACK`/`ABORT`/`SAVEPOINT`/`RELEASE`/`SET TRANSACTION`/`LOCK` | `Transaction` |
//! | `COPY t FROM …` / `COPY t TO …` / `COPY (query) TO …` | `CopyFrom` / `CopyTo` / `CopyTo`+`Read` |
//! | `COPY … PROGRAM …` | `CopyProgram` plus the direction (`CopyFrom`/`CopyTo`) |
//! | `CALL`, `DO`, `EXECUTE name`, `NOTIFY` | `Call` |
//! | `LISTEN`, `UNLISTEN` | `Read` |
//! | `EXPLAIN stmt` | `Explain` only: the inner statement is planned, not run; its tables count as read |
//! | `EXPLAIN ANALYZE stmt` (any spelling, `(ANALYZE)`, `(ANALYZE on)`, …) | `Explain` plus the inner classes |
//! | `PREPARE p AS stmt` | the inner statement's classes; [`Analysis::prepared`] names `p` |
//! | anything else, unparseable text | `Unknown` (+ dangerous "unparsed") |
//!
//! Other choices: the bodies of objects being defined (views, rules, SQL function bodies that
//! parse) contribute their classes, tables and functions, conservatively; a function body in
//! a string is flagged "function body (opaque)" in any case. Dangerous functions are flagged
//! even under `EXPLAIN` without `ANALYZE`. `pg_sleep` is not dangerous (statement timeouts are
//! the right tool). Names are folded like PostgreSQL does: unquoted identifiers are lower-cased
//! (ASCII only), quoted ones keep their case and lose their quotes, except that a quoted
//! identifier containing `.` or `"` keeps its quotes so that `"a.b"` never reads as `a.b`.
//!
//! Dangerous reasons read `category` or `category: detail`: `server file access: pg_read_file`
//! (also `…: COPY` for COPY to or from a server file), `large object: lo_export`,
//! `dblink: dblink_exec`, `config change: set_config` (and `config change: <setting>` for
//! settings that undo a gate's session setup, `config change: READ WRITE`),
//! `role change: SET ROLE` (`set_config('role', …)`, `RESET ROLE`, `DISCARD ALL`, …),
//! `backend control: pg_terminate_backend`, `dynamic SQL: query_to_xml` (functions that run a
//! string as SQL), `hidden read: table_to_xml`, `sequence change: setval`, `notify: pg_notify`,
//! `copy program`, `ALTER SYSTEM`, `extension: dblink`, `load library: …`, `foreign data`,
//! `security definer function`, `function body (opaque)`, `DO block (opaque)`, `unparsed`.
//!
//! Text that sqlparser cannot parse as a whole is split at top-level `;` and each statement is
//! parsed alone, so that one statement it does not know hides nothing about the others.
//! `DO`, `TABLE name`, `REINDEX`, `CLUSTER`, `VACUUM`, `ANALYZE` and `ALTER SYSTEM`, which it
//! does not parse (fully), are recognised by their keywords when only names (or, for
//! `ALTER SYSTEM`, literals) follow; anything else is `Unknown`, with the classes its leading
//! keywords suggest (`CREATE USER … PASSWORD …` is `{Dcl, Unknown}`).
//!
//! Robustness: texts over [`MAX_SQL_BYTES`], nested deeper than [`MAX_NESTING_DEPTH`] brackets
//! or with more than [`MAX_OPERATOR_CHAIN`] chained operators are refused before parsing. Texts
//! nested more than a few brackets deep are parsed on a short-lived thread with a large stack
//! (sqlparser grows its stack on demand, but some constructs take over 100 KiB per level in a
//! debug build, more than its margin). A panic inside sqlparser becomes `Unknown`.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, CopySource, CopyTarget, CreateFunctionBody, DiscardObject,
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, FunctionSecurity, GrantObjects, Ident,
    MergeAction, ObjectName, ObjectNamePart, ObjectType, OnConflictAction, OnInsert, Query, Reset,
    Select, Set, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    TransactionAccessMode, TransactionMode, Value, Visit, Visitor,
};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

/// Texts longer than this are not parsed (`Unknown`).
pub const MAX_SQL_BYTES: usize = 1024 * 1024;
/// Texts whose parentheses or brackets nest deeper than this are not parsed (`Unknown`).
pub const MAX_NESTING_DEPTH: usize = 200;
/// Bound on the operators (`+`, `AND`, `UNION`, `::`, …) along one nesting path of a
/// statement. `sqlparser` builds operator chains iteratively, so `1+1+…+1` gives an AST as
/// deep as the chain, and dropping such a tree recurses once per level: this keeps it well
/// within a 2 MiB thread stack.
pub const MAX_OPERATOR_CHAIN: usize = 4096;
/// Texts nested deeper than this are parsed on a thread with a [`BIG_STACK_BYTES`] stack.
/// Optimized code stays within sqlparser's stack-growth margin at any depth (measured up to
/// [`MAX_NESTING_DEPTH`] on a 256 KiB stack); unoptimized code needs over 100 KiB per level
/// of some constructs, more than that margin.
const INLINE_NESTING_DEPTH: usize = if cfg!(debug_assertions) { 4 } else { 64 };
const BIG_STACK_BYTES: usize = 64 * 1024 * 1024;
/// Parser recursion budget (sqlparser's default, 50, rejects ordinary nesting long before
/// [`MAX_NESTING_DEPTH`]; its recursive functions grow the stack on demand).
const PARSER_RECURSION_LIMIT: usize = 1024;
/// How deep SQL-language function bodies inside function definitions are analysed.
const MAX_BODY_DEPTH: u8 = 2;
/// Raw text kept in an `Unknown` analysis of an oversized input.
const MAX_RAW_TEXT: usize = 4096;

/// What a statement does. A statement usually exercises several (see [`Analysis::classes`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum StatementClass {
    Read,
    Insert,
    Update,
    Delete,
    Merge,
    Ddl,
    Dcl,
    CopyFrom,
    CopyTo,
    CopyProgram,
    /// `CALL`, `DO`, `EXECUTE name` (SQL level), `NOTIFY`.
    Call,
    /// A call of a function that may have side effects: neither known IMMUTABLE or STABLE
    /// (built-in, or by the server's catalog) nor on the short list of harmless volatile
    /// built-ins. A `SELECT purge()` is as much a write as the DELETE inside it.
    VolatileFunction,
    SetReset,
    Transaction,
    Explain,
    Unknown,
}

/// What one SQL statement of a text does.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Analysis {
    /// The statement as `sqlparser` prints it, or its raw text when it was not parsed.
    pub text: String,
    /// Every class the statement exercises; never empty (`Unknown` when nothing else).
    pub classes: BTreeSet<StatementClass>,
    /// Relations read or referenced (CTE names excluded), e.g. `public.t`, `t`, `Mixed`.
    pub tables_read: BTreeSet<String>,
    /// Targets of `INSERT`/`UPDATE`/`DELETE`/`MERGE`/`COPY FROM`/`SELECT INTO`/`TRUNCATE`,
    /// objects created, altered or dropped by DDL, objects of `GRANT`/`REVOKE`, locked tables.
    pub tables_written: BTreeSet<String>,
    /// Column identifiers referenced (best effort); qualified (`t.c`) when written so.
    pub columns: BTreeSet<String>,
    /// Columns whose values reach the result, or a condition, only after being transformed:
    /// arguments of function calls (`concat(ssn)`, `upper(email)`, `substring(ssn, 1, 1)`),
    /// operands of `||`, casts (`ssn::text`, `CAST(ssn AS text)`), anywhere in the statement
    /// (projection, WHERE, ORDER BY, subqueries, CTEs, views' definitions are not visible).
    /// Written as in `columns` (qualified `t.c` when written so). Whole-row references passed
    /// to a function (`row_to_json(t)`, `json_agg(t)`, `to_jsonb(t.*)`, `array_agg(c)` where the
    /// bare identifier may be a table alias) are recorded as written too, and additionally as
    /// `t.*` when the identifier names a relation or alias of the statement's FROM clauses (best effort).
    ///
    /// Precisely, a column counts when it appears anywhere inside:
    /// - a function call, including its `FILTER`, aggregate `ORDER BY`, `WITHIN GROUP` and
    ///   `OVER` clauses, a subquery argument (`ARRAY(SELECT ssn …)`), the SQL-syntax functions
    ///   (`SUBSTRING`, `TRIM`, `POSITION`, `OVERLAY`, `EXTRACT`, `CEIL`, `FLOOR`, `CONVERT`,
    ///   `AT TIME ZONE`), `ROW(…)` and `ARRAY[…]` constructors, and set-returning functions in
    ///   `FROM` (`LATERAL upper(c.ssn) u`, `unnest(…)`); `count(*)` names no column;
    /// - a cast (`::`, `CAST`, `TRY_CAST`);
    /// - a `||` operation (also `OPERATOR(pg_catalog.||)`);
    /// - a pattern match, which lets a caller test a masked value character by character:
    ///   `LIKE`, `ILIKE`, `SIMILAR TO` (negated or not, `ANY`/`ALL` forms too), `~`, `~*`,
    ///   `!~`, `!~*`, `~~`, `~~*`, `!~~`, `!~~*`, `^@`; both operands are recorded.
    ///
    /// Everything below such a node counts, subqueries included (`upper((SELECT ssn …))`),
    /// so a column only compared inside such a subquery is recorded too (conservative).
    /// A bare identifier naming a relation or alias of the statement's `FROM` clauses is a
    /// whole-row reference wherever it appears (`SELECT c FROM customers c` returns each row as
    /// one record value, hiding its column names): it is recorded as written and as `c.*`.
    ///
    /// Not transformations: plain projection (`SELECT ssn`), renaming (`SELECT x FROM (SELECT
    /// ssn AS x …) s` records nothing: only aliased), comparison (`ssn = '1'`, `IN`, `BETWEEN`,
    /// which remain an equality oracle), `CASE`, `COLLATE`, tuples, subscripts and JSON
    /// operators, arithmetic and other operators (`ssn + 0`, `-n`), whole-row attribute
    /// notation (`c.func`), and procedure arguments of `CALL`.
    pub transformed: BTreeSet<String>,
    /// Every function called, schema-qualified when written so (`pg_catalog.pg_read_file`).
    pub functions: BTreeSet<String>,
    /// Reasons for a policy to look closer, `category` or `category: detail`, e.g.
    /// `server file access: pg_read_file`, `copy program`, `role change: SET ROLE`, `unparsed`.
    pub dangerous: BTreeSet<String>,
    /// The functions behind [`StatementClass::VolatileFunction`], as the server's catalog
    /// names them (`proname`): a catalog that vouches for every one of them (IMMUTABLE or
    /// STABLE) lifts the class (see `policy::Engine::evaluate`).
    pub volatile_functions: BTreeSet<String>,
    /// For `PREPARE name AS …`: the statement name (the classes are those of the inner statement).
    pub prepared: Option<String>,
    /// For `EXECUTE name`: the prepared statement it runs (opaque here: look up its analysis).
    pub executes: Option<String>,
}

/// The analysis of a whole text (a simple-protocol `Query` may carry several statements).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Parsed {
    /// One analysis per statement, in order. Empty for a text with no statement.
    pub statements: Vec<Analysis>,
    /// Why (part of) the text could not be analysed; `None` when every statement was.
    pub error: Option<String>,
    /// The analysis looked at the value of some literal (an `EXPLAIN` option, a setting's name
    /// in `set_config`, …), so a text differing only in literals may be analysed differently.
    /// Such an analysis is never shared through [`Tokenized::fingerprint`].
    #[serde(skip)]
    pub reads_literals: bool,
    /// Set when the gateway must refuse the text whatever the policy says: PostgreSQL's own
    /// grammar reads it differently, or it changes a setting the gateway pins (see
    /// [`super::pg_grammar`]).
    pub refusal: Option<GateRefusal>,
}

/// A refusal no policy can override.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GateRefusal {
    /// The built-in rule journaled as the decider (`gate:…`).
    pub rule: &'static str,
    pub message: String,
}

impl Parsed {
    /// True when some statement is `Unknown` (callers should then deny the whole text).
    pub fn has_unknown(&self) -> bool {
        self.statements
            .iter()
            .any(|a| a.classes.contains(&StatementClass::Unknown))
    }
}

/// Whose SQL a text is: the server's lexer decides where strings, comments and statements
/// end, so the tokenizer and parser must be that server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    /// MySQL and MariaDB with the `sql_mode` the MySQL gateway pins (no `ANSI_QUOTES`, no
    /// `NO_BACKSLASH_ESCAPES`; see [`super::mysql`]).
    MySql,
}

impl Dialect {
    fn sqlparser(self) -> &'static dyn sqlparser::dialect::Dialect {
        match self {
            Dialect::Postgres => &PostgreSqlDialect {},
            Dialect::MySql => &MySqlDialect {},
        }
    }
}

/// Analyse `sql` (PostgreSQL dialect), checked against PostgreSQL's own grammar. Never
/// panics; see the module documentation.
pub fn analyze(sql: &str) -> Parsed {
    let parsed = analyze_unchecked(sql);
    if sql.len() > MAX_SQL_BYTES {
        // Refused as too large already; PostgreSQL's parser would copy a text this size
        // several times over (into C, into its tree, back as protobuf) to say nothing new.
        return parsed;
    }
    second_opinion(sql, parsed)
}

/// The analysis alone, without PostgreSQL's second opinion (for tests of either side). Never
/// panics.
pub fn analyze_unchecked(sql: &str) -> Parsed {
    analyze_unchecked_in(sql, Dialect::Postgres)
}

/// [`analyze_unchecked`] in `dialect`: the same classes, read with that server's lexer and
/// grammar. Never panics.
pub fn analyze_unchecked_in(sql: &str, dialect: Dialect) -> Parsed {
    let outer = READ_LITERAL.with(|r| r.replace(false));
    let mut parsed = match tokenize(sql, dialect) {
        Err(e) => unknown_text(sql, e),
        Ok(tokens) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            analyze_tokens(sql, tokens, 0, dialect)
        })) {
            Ok(parsed) => parsed,
            Err(_) => unknown_text(sql, "internal error: the SQL parser panicked".to_string()),
        },
    };
    parsed.reads_literals = READ_LITERAL.with(|r| r.replace(outer));
    parsed
}

/// Adds PostgreSQL's own reading of `sql` to its analysis (see [`super::pg_grammar`]).
fn second_opinion(sql: &str, mut parsed: Parsed) -> Parsed {
    use super::pg_grammar::{self, Objection};
    match pg_grammar::check(sql, &parsed.statements) {
        Ok(()) => {}
        Err(o @ Objection::PinnedSetting(_)) => {
            parsed.refusal = Some(GateRefusal {
                rule: "gate:pinned-setting",
                message: o.to_string(),
            });
        }
        // A text the analysis already refuses keeps its own reason (and the policy's rule).
        Err(_) if parsed.has_unknown() => {}
        Err(o) => {
            parsed.refusal = Some(GateRefusal {
                rule: "gate:parser-disagreement",
                message: o.to_string(),
            });
        }
    }
    parsed
}

/// sqlparser's tokens of `sql` (PostgreSQL dialect), or why there are none (the reason an
/// `Unknown` analysis gives). Never panics.
pub(super) fn tokenize(sql: &str, dialect: Dialect) -> Result<Vec<TokenWithSpan>, String> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(format!(
            "input too large: {} bytes (limit {MAX_SQL_BYTES})",
            sql.len()
        ));
    }
    let run = || Tokenizer::new(dialect.sqlparser(), sql).tokenize_with_location();
    match std::panic::catch_unwind(run) {
        Ok(Ok(tokens)) => Ok(tokens),
        Ok(Err(e)) => Err(format!("cannot tokenize: {e}")),
        Err(_) => Err("internal error: the SQL tokenizer panicked".to_string()),
    }
}

fn unknown_text(sql: &str, error: String) -> Parsed {
    Parsed {
        statements: vec![unknown_analysis(truncate_raw(sql))],
        error: Some(error),
        reads_literals: false,
        refusal: None,
    }
}

fn unknown_analysis(text: String) -> Analysis {
    Analysis {
        text,
        classes: [StatementClass::Unknown].into(),
        dangerous: ["unparsed".to_string()].into(),
        ..Analysis::default()
    }
}

fn truncate_raw(sql: &str) -> String {
    if sql.len() <= MAX_RAW_TEXT {
        return sql.to_string();
    }
    let mut end = MAX_RAW_TEXT;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} more bytes]", &sql[..end], sql.len() - end)
}

fn analyze_text(sql: &str, body_depth: u8) -> Parsed {
    let dialect = PostgreSqlDialect {};
    match Tokenizer::new(&dialect, sql).tokenize_with_location() {
        Ok(tokens) => analyze_tokens(sql, tokens, body_depth, Dialect::Postgres),
        Err(e) => unknown_text(sql, format!("cannot tokenize: {e}")),
    }
}

fn analyze_tokens(
    sql: &str,
    tokens: Vec<TokenWithSpan>,
    body_depth: u8,
    dialect: Dialect,
) -> Parsed {
    let depth = match check_limits(&tokens) {
        Ok(depth) => depth,
        Err(e) => return unknown_text(sql, e),
    };
    if depth <= INLINE_NESTING_DEPTH || ON_BIG_STACK.with(Cell::get) {
        return parse_tokens(sql, tokens, body_depth, dialect);
    }
    // Some nested constructs take more stack per level than sqlparser's stack growth allows
    // for (over 100 KiB per parenthesized join in a debug build): parse them on a thread of
    // their own, whose stack is only committed as it is used.
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("sql-analyze".into())
            .stack_size(BIG_STACK_BYTES)
            .spawn_scoped(scope, || {
                ON_BIG_STACK.with(|b| b.set(true));
                let parsed = parse_tokens(sql, tokens, body_depth, dialect);
                (parsed, READ_LITERAL.with(Cell::get))
            });
        match spawned {
            Ok(handle) => match handle.join() {
                Ok((parsed, read_literal)) => {
                    if read_literal {
                        note_literal_read();
                    }
                    parsed
                }
                Err(_) => unknown_text(sql, "internal error: the SQL parser panicked".to_string()),
            },
            Err(e) => unknown_text(sql, format!("cannot analyse nested SQL: {e}")),
        }
    })
}

thread_local! {
    static ON_BIG_STACK: Cell<bool> = const { Cell::new(false) };
    /// Set while analysing when a literal's value is inspected (see [`Parsed::reads_literals`]).
    static READ_LITERAL: Cell<bool> = const { Cell::new(false) };
}

/// Every place that decides something from a literal's value calls this.
fn note_literal_read() {
    READ_LITERAL.with(|r| r.set(true));
}

fn parse_tokens(sql: &str, tokens: Vec<TokenWithSpan>, body_depth: u8, dialect: Dialect) -> Parsed {
    let dialect = dialect.sqlparser();
    // The whole text first: it keeps `BEGIN ATOMIC … ; … END` bodies in one piece.
    let whole = Parser::new(dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements();
    if let Ok(statements) = whole {
        return Parsed {
            statements: statements
                .iter()
                .map(|s| analyze_statement(s, body_depth))
                .collect(),
            error: None,
            reads_literals: false,
            refusal: None,
        };
    }
    // What follows classifies pieces by their tokens, literals included: never shared.
    note_literal_read();
    // Rare path: tokenize again rather than clone the tokens on the common one.
    let tokens = match Tokenizer::new(dialect, sql).tokenize_with_location() {
        Ok(tokens) => tokens,
        Err(e) => return unknown_text(sql, format!("cannot tokenize: {e}")),
    };
    // Statement by statement, split at top-level `;`, so that one statement sqlparser does not
    // know (`DO`, `REINDEX`, …) does not hide what the others do.
    let lines = LineIndex::new(sql);
    let mut parsed = Parsed {
        statements: Vec::new(),
        error: None,
        reads_literals: false,
        refusal: None,
    };
    for piece in split_statements(&tokens) {
        let significant: Vec<&TokenWithSpan> = piece
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .collect();
        let (Some(first), Some(last)) = (significant.first(), significant.last()) else {
            continue;
        };
        let raw = lines
            .slice(sql, first.span.start, last.span.end)
            .to_string();
        let result = Parser::new(dialect)
            .with_recursion_limit(PARSER_RECURSION_LIMIT)
            .with_tokens_with_locations(piece.to_vec())
            .parse_statements();
        match result {
            Ok(statements) => parsed
                .statements
                .extend(statements.iter().map(|s| analyze_statement(s, body_depth))),
            Err(e) => {
                if let Some(analysis) = keyword_fallback(&significant, &raw) {
                    parsed.statements.push(analysis);
                } else {
                    parsed.error.get_or_insert_with(|| e.to_string());
                    let mut analysis = unknown_analysis(raw);
                    add_hints(&significant, &mut analysis);
                    parsed.statements.push(analysis);
                }
            }
        }
    }
    parsed
}

/// Reject token streams that sqlparser and PostgreSQL could read differently, or that would
/// build trees too deep to handle safely. Returns the deepest nesting of brackets.
fn check_limits(tokens: &[TokenWithSpan]) -> Result<usize, String> {
    // Per open group: (operators directly inside, deepest operator path of its closed
    // sub-groups); `path` is the sum of `operators + 1` over the open groups.
    let mut groups: Vec<(usize, usize)> = vec![(0, 0)];
    let mut path = 1usize;
    let mut max_depth = 0;
    for t in tokens {
        match &t.token {
            Token::CopyData { .. } => {
                return Err(
                    "inline data after COPY … FROM STDIN: PostgreSQL would run it as SQL \
                            (send COPY data with the COPY sub-protocol)"
                        .to_string(),
                )
            }
            Token::LParen | Token::LBracket | Token::LBrace => {
                if groups.len() > MAX_NESTING_DEPTH {
                    return Err(format!("nesting deeper than {MAX_NESTING_DEPTH} levels"));
                }
                if t.token == Token::LBracket {
                    // `a[1][2]…` chains like an operator.
                    groups.last_mut().expect("root group").0 += 1;
                    path += 1;
                }
                groups.push((0, 0));
                path += 1;
                max_depth = max_depth.max(groups.len() - 1);
            }
            Token::RParen | Token::RBracket | Token::RBrace if groups.len() > 1 => {
                let (ops, deepest) = groups.pop().expect("group");
                path -= ops + 1;
                let top = groups.last_mut().expect("root group");
                top.1 = top.1.max(ops + deepest + 1);
            }
            Token::SemiColon if groups.len() == 1 => {
                groups[0] = (0, 0);
                path = 1;
            }
            token if is_chain_token(token) => {
                groups.last_mut().expect("root group").0 += 1;
                path += 1;
            }
            _ => {}
        }
        if path + groups.last().map_or(0, |g| g.1) > MAX_OPERATOR_CHAIN {
            return Err(format!(
                "more than {MAX_OPERATOR_CHAIN} chained or nested operators in one statement"
            ));
        }
    }
    Ok(max_depth)
}

/// Tokens that can extend an expression or set-operation chain (so the depth of the AST).
fn is_chain_token(token: &Token) -> bool {
    match token {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::IN
                | Keyword::BETWEEN
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::REGEXP
                | Keyword::RLIKE
                | Keyword::MATCH
                | Keyword::MEMBER
                | Keyword::GLOB
                | Keyword::OPERATOR
                | Keyword::DIV
                | Keyword::OVERLAPS
                | Keyword::AT
                | Keyword::COLLATE
                | Keyword::NOTNULL
                | Keyword::UNION
                | Keyword::EXCEPT
                | Keyword::INTERSECT
                | Keyword::MINUS
                | Keyword::ESCAPE
        ),
        Token::EOF
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Comma
        | Token::Whitespace(_)
        | Token::LParen
        | Token::RParen
        | Token::RBracket
        | Token::LBrace
        | Token::RBrace
        | Token::Period
        | Token::SemiColon
        | Token::Placeholder(_)
        | Token::CopyData { .. } => false,
        _ => true,
    }
}

/// Split at `;` outside parentheses.
fn split_statements(tokens: &[TokenWithSpan]) -> Vec<&[TokenWithSpan]> {
    let mut pieces = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::SemiColon if depth == 0 => {
                pieces.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&tokens[start..]);
    pieces
}

/// Maps sqlparser locations (1-based line and character column) to byte offsets.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(sql: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn offset(&self, sql: &str, loc: Location) -> usize {
        let Some(&line_start) = (loc.line as usize)
            .checked_sub(1)
            .and_then(|l| self.starts.get(l))
        else {
            return sql.len();
        };
        let col = (loc.column as usize).saturating_sub(1);
        sql[line_start..]
            .char_indices()
            .nth(col)
            .map_or(sql.len(), |(i, _)| line_start + i)
    }

    fn slice<'s>(&self, sql: &'s str, start: Location, end: Location) -> &'s str {
        let (a, b) = (self.offset(sql, start), self.offset(sql, end));
        if a <= b {
            &sql[a..b]
        } else {
            &sql[a..]
        }
    }
}

fn word(t: &TokenWithSpan) -> Option<&str> {
    match &t.token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.as_str()),
        _ => None,
    }
}

fn is_word(t: Option<&&TokenWithSpan>, kw: &str) -> bool {
    t.and_then(|t| word(t))
        .is_some_and(|w| w.eq_ignore_ascii_case(kw))
}

/// Statements sqlparser cannot parse but whose grammar is simple enough to classify by their
/// keywords: `DO`, `TABLE name`, `REINDEX`, `CLUSTER`, `VACUUM`, `ANALYZE`, `ALTER SYSTEM`.
fn keyword_fallback(tokens: &[&TokenWithSpan], raw: &str) -> Option<Analysis> {
    // ALTER SYSTEM's settings are literals; classifying by raw tokens is never shared.
    note_literal_read();
    let first = word(tokens.first()?)?.to_ascii_uppercase();
    let mut a = Analysis {
        text: raw.to_string(),
        ..Analysis::default()
    };
    // Only names and punctuation (plus literals for ALTER SYSTEM): no expression can hide.
    let names_only = |rest: &[&TokenWithSpan]| {
        rest.iter().all(|t| {
            matches!(
                t.token,
                Token::Word(_) | Token::Period | Token::Comma | Token::LParen | Token::RParen
            )
        })
    };
    let setting = |rest: &[&TokenWithSpan]| {
        rest.iter().all(|t| {
            matches!(
                t.token,
                Token::Word(_)
                    | Token::Period
                    | Token::Comma
                    | Token::Eq
                    | Token::Minus
                    | Token::Number(..)
                    | Token::SingleQuotedString(_)
            )
        })
    };
    match first.as_str() {
        "DO" => {
            // DO [LANGUAGE lang] code [LANGUAGE lang]
            let mut rest = &tokens[1..];
            if is_word(rest.first(), "LANGUAGE") && rest.len() >= 2 {
                rest = &rest[2..];
            }
            let code = rest.first()?;
            if !matches!(
                code.token,
                Token::SingleQuotedString(_)
                    | Token::DollarQuotedString(_)
                    | Token::EscapedStringLiteral(_)
                    | Token::UnicodeStringLiteral(_)
            ) {
                return None;
            }
            rest = &rest[1..];
            if is_word(rest.first(), "LANGUAGE") && rest.len() == 2 && word(rest[1]).is_some() {
                rest = &[];
            }
            if !rest.is_empty() {
                return None;
            }
            a.classes.insert(StatementClass::Call);
            a.dangerous.insert("DO block (opaque)".into());
        }
        "TABLE" => {
            // TABLE [ONLY] name [*]
            let mut rest = &tokens[1..];
            if is_word(rest.first(), "ONLY") {
                rest = &rest[1..];
            }
            if matches!(rest.last().map(|t| &t.token), Some(Token::Mul)) {
                rest = &rest[..rest.len() - 1];
            }
            let name = dotted_name(rest)?;
            a.classes.insert(StatementClass::Read);
            a.tables_read.insert(name);
        }
        "REINDEX" | "CLUSTER" | "VACUUM" | "ANALYZE" | "ANALYSE" if names_only(&tokens[1..]) => {
            a.classes.insert(StatementClass::Ddl);
        }
        "ALTER" if is_word(tokens.get(1), "SYSTEM") && setting(&tokens[2..]) => {
            a.classes.insert(StatementClass::Ddl);
            a.dangerous.insert("ALTER SYSTEM".into());
        }
        _ => return None,
    }
    Some(a)
}

/// `a`, `a.b`, `"A"."b"` as a normalized name, or `None` for anything else.
fn dotted_name(tokens: &[&TokenWithSpan]) -> Option<String> {
    let mut parts = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match (&t.token, i % 2) {
            (Token::Word(w), 0) => {
                parts.push(norm_ident_parts(&w.value, w.quote_style.is_some()));
            }
            (Token::Period, 1) => {}
            _ => return None,
        }
    }
    (!parts.is_empty() && tokens.len() % 2 == 1).then(|| parts.join("."))
}

/// Classes and reasons that an unparsed statement's leading keywords suggest (it stays
/// `Unknown`).
fn add_hints(tokens: &[&TokenWithSpan], a: &mut Analysis) {
    let words: Vec<String> = tokens
        .iter()
        .take(4)
        .filter_map(|t| word(t))
        .map(str::to_ascii_uppercase)
        .collect();
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let class = match w(0) {
        "GRANT" | "REVOKE" => Some(StatementClass::Dcl),
        "CREATE" | "ALTER" | "DROP" if matches!(w(1), "ROLE" | "USER" | "GROUP") => {
            Some(StatementClass::Dcl)
        }
        "CREATE" | "ALTER" | "DROP" | "COMMENT" | "SECURITY" | "IMPORT" | "TRUNCATE" => {
            Some(StatementClass::Ddl)
        }
        "INSERT" => Some(StatementClass::Insert),
        "UPDATE" => Some(StatementClass::Update),
        "DELETE" => Some(StatementClass::Delete),
        "MERGE" => Some(StatementClass::Merge),
        "COPY" => None,
        _ => None,
    };
    a.classes.extend(class);
    if w(0) == "ALTER" && w(1) == "SYSTEM" {
        a.dangerous.insert("ALTER SYSTEM".into());
    }
    if w(0) == "DO" {
        a.classes.insert(StatementClass::Call);
        a.dangerous.insert("DO block (opaque)".into());
    }
    let role_words =
        |i: usize| w(i) == "ROLE" || (w(i) == "SESSION" && w(i + 1) == "AUTHORIZATION");
    if matches!(w(0), "SET" | "RESET")
        && (role_words(1) || (matches!(w(1), "LOCAL" | "SESSION") && role_words(2)))
    {
        a.classes.insert(StatementClass::Dcl);
        a.dangerous.insert(format!("role change: {} ROLE", w(0)));
    }
    if w(0) == "CHECKPOINT" {
        a.dangerous.insert("backend control: CHECKPOINT".into());
    }
}

// ---------------------------------------------------------------------------------------------
// Names

fn norm_ident_parts(value: &str, quoted: bool) -> String {
    if !quoted {
        value.to_ascii_lowercase()
    } else if value.contains('.') || value.contains('"') {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn norm_ident(ident: &Ident) -> String {
    norm_ident_parts(&ident.value, ident.quote_style.is_some())
}

fn norm_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part {
            ObjectNamePart::Identifier(ident) => out.push_str(&norm_ident(ident)),
            other => out.push_str(&other.to_string().to_ascii_lowercase()),
        }
    }
    out
}

/// The last part of a name, lower-cased: what dangerous-function matching compares.
fn base_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => ident.value.to_ascii_lowercase(),
        Some(other) => other.to_string().to_ascii_lowercase(),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Dangerous functions

const FILE_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir",
    "pg_ls_replslotdir",
];
const LARGE_OBJECT_FUNCTIONS: &[&str] = &[
    "lo_import",
    "lo_export",
    "lo_from_bytea",
    "lo_put",
    "lo_get",
    "lo_open",
    "lo_close",
    "lo_unlink",
    "lo_create",
    "lo_creat",
    "lo_truncate",
    "lo_truncate64",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_tell64",
    "loread",
    "lowrite",
];
const BACKEND_FUNCTIONS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_logical_emit_message",
];
/// Functions that run a string as SQL.
const DYNAMIC_SQL_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "query_to_json",
    "ts_stat",
    "ts_rewrite",
];
/// Functions that read relations named by a value, invisible as relations.
const HIDDEN_READ_FUNCTIONS: &[&str] = &[
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
];
/// Settings whose change undoes the gate's own session setup.
const SENSITIVE_SETTINGS: &[&str] = &[
    "session_replication_role",
    "default_transaction_read_only",
    "transaction_read_only",
    "row_security",
];
const ROLE_SETTINGS: &[&str] = &["role", "session_authorization"];

fn dangerous_function(base: &str) -> Option<String> {
    let category = if FILE_FUNCTIONS.contains(&base) {
        "server file access"
    } else if LARGE_OBJECT_FUNCTIONS.contains(&base) {
        "large object"
    } else if base.starts_with("dblink") {
        "dblink"
    } else if base == "set_config" {
        "config change"
    } else if BACKEND_FUNCTIONS.contains(&base) {
        "backend control"
    } else if DYNAMIC_SQL_FUNCTIONS.contains(&base) {
        "dynamic SQL"
    } else if HIDDEN_READ_FUNCTIONS.contains(&base) {
        "hidden read"
    } else if base == "setval" {
        "sequence change"
    } else if base == "pg_notify" {
        "notify"
    } else {
        return None;
    };
    Some(format!("{category}: {base}"))
}

// ---------------------------------------------------------------------------------------------
// Side effects of functions

/// Built-in functions whose every overload is IMMUTABLE or STABLE (PostgreSQL 15's pg_proc).
static SIDE_EFFECT_FREE: std::sync::LazyLock<std::collections::HashSet<&'static str>> =
    std::sync::LazyLock::new(|| {
        include_str!("pg_side_effect_free.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .chain(SQL_SYNTAX_FUNCTIONS.iter().copied())
            .collect()
    });

/// Names sqlparser reports as function calls that PostgreSQL's grammar treats as syntax
/// (`COALESCE`, `CURRENT_DATE`, `TRIM(…)`, …): expressions without side effects.
const SQL_SYNTAX_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "trim",
    "row",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "xmlelement",
    "xmlforest",
    "xmlconcat",
    "xmlparse",
    "xmlserialize",
    "xmlexists",
    "xmlpi",
    "xmlroot",
    "json_object",
    "json_array",
];

/// Volatile built-ins that change nothing another session could see: reading clocks,
/// sequences' last values and sizes, random numbers, sleeping (statement timeouts bound it).
pub const HARMLESS_VOLATILE: &[&str] = &[
    "random",
    "gen_random_uuid",
    "clock_timestamp",
    "timeofday",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "currval",
    "lastval",
    "pg_relation_size",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_indexes_size",
    "pg_database_size",
    "pg_is_in_recovery",
];

/// Built-ins that write: sequences advance, advisory locks are taken or released.
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
];

/// What calling a function may do, as far as the text tells.
enum Effects {
    None,
    Write,
    /// Only the server's catalog can tell (a user-defined or volatile function).
    Unknown,
}

fn side_effects(name: &ObjectName, base: &str) -> Effects {
    // A schema other than pg_catalog names something other than the built-in.
    let builtin_schema = match name.0.as_slice() {
        [_] => true,
        [schema, _] => schema.to_string().eq_ignore_ascii_case("pg_catalog"),
        _ => false,
    };
    if builtin_schema && WRITE_FUNCTIONS.contains(&base) {
        Effects::Write
    } else if builtin_schema
        && (SIDE_EFFECT_FREE.contains(base) || HARMLESS_VOLATILE.contains(&base))
    {
        Effects::None
    } else {
        Effects::Unknown
    }
}

// ---------------------------------------------------------------------------------------------
// The walk

/// Analyse one parsed statement.
fn analyze_statement(statement: &Statement, body_depth: u8) -> Analysis {
    let mut walker = Walker {
        body_depth,
        ..Walker::default()
    };
    let _ = statement.visit(&mut walker);
    let mut a = walker.a;
    // A bare identifier naming a relation of the statement is a whole-row reference (the
    // relations are only known once the whole statement, FROM clauses included, was seen).
    // Bare identifiers are the entries of `columns` that equal such a name: qualified names
    // contain a `.`, and quoted names containing one keep their quotes.
    for name in walker.relations {
        if a.columns.contains(&name) {
            a.transformed.insert(format!("{name}.*"));
            a.transformed.insert(name);
        }
    }
    if walker.locks_all {
        let read = a.tables_read.clone();
        a.tables_written.extend(read);
    }
    a.text = statement.to_string();
    if a.classes.is_empty() {
        a.classes.insert(StatementClass::Unknown);
    }
    a
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    /// Relations directly inside are sources (Read).
    Data,
    /// Relations directly inside are the objects being defined (written).
    Ddl,
    /// `SET`/`RESET`: identifiers inside are values, not columns.
    Setting,
    Other,
}

#[derive(Debug)]
struct Frame {
    statement: *const Statement,
    kind: FrameKind,
    /// `Walker::query_depth` when the statement was entered.
    query_depth: usize,
    /// This frame is an `EXPLAIN` without `ANALYZE` (suppresses the inner classes).
    suppresses: bool,
}

/// The CTE names a query defines, and how many are visible at this point of the walk.
#[derive(Debug)]
struct CteScope {
    query: *const Query,
    names: Vec<(String, *const Query)>,
    recursive: bool,
    visible: usize,
}

/// A `sqlparser` visitor collecting an [`Analysis`]. AST nodes are recognised by address
/// (never dereferenced) to tell write targets and table functions from read relations.
#[derive(Debug, Default)]
struct Walker {
    a: Analysis,
    claimed_names: Vec<*const ObjectName>,
    claimed_exprs: Vec<*const Expr>,
    frames: Vec<Frame>,
    query_depth: usize,
    suppress: usize,
    scopes: Vec<CteScope>,
    body_depth: u8,
    /// Transforming expressions being walked (see [`Analysis::transformed`]).
    transforming: Vec<*const Expr>,
    /// Table functions in `FROM` being walked (their arguments are transformed too).
    transforming_factors: Vec<*const TableFactor>,
    /// Names by which the statement's `FROM` relations can be referred to (aliases, else the
    /// last part of the table name).
    relations: Vec<String>,
    /// A `FOR UPDATE`/`FOR SHARE` without `OF` locks rows of every table read.
    locks_all: bool,
}

impl Walker {
    fn class(&mut self, class: StatementClass) {
        if self.suppress == 0 {
            self.a.classes.insert(class);
        }
    }

    fn danger(&mut self, reason: impl Into<String>) {
        self.a.dangerous.insert(reason.into());
    }

    /// A relation written by the statement (read only, under `EXPLAIN` without `ANALYZE`).
    fn write_target(&mut self, name: &ObjectName) {
        self.claimed_names.push(name as *const _);
        let n = norm_name(name);
        if self.suppress == 0 {
            self.a.tables_written.insert(n);
        } else {
            self.a.tables_read.insert(n);
        }
    }

    /// A relation read without the `Read` class (`COPY t TO`, `SHOW`-like statements).
    fn read_target(&mut self, name: &ObjectName) {
        self.claimed_names.push(name as *const _);
        self.a.tables_read.insert(norm_name(name));
    }

    fn table_target(&mut self, table: &TableWithJoins) {
        if let TableFactor::Table {
            name, args: None, ..
        } = &table.relation
        {
            self.write_target(name);
        }
    }

    fn function(&mut self, name: &ObjectName, args: Option<&FunctionArguments>) {
        let full = norm_name(name);
        let base = base_name(name);
        if let Some(reason) = dangerous_function(&base) {
            self.danger(reason);
        }
        match side_effects(name, &base) {
            Effects::None => {}
            Effects::Write => self.class(StatementClass::Update),
            Effects::Unknown => {
                self.class(StatementClass::VolatileFunction);
                self.a
                    .volatile_functions
                    .insert(super::pg_grammar::last_part(&full));
            }
        }
        self.a.functions.insert(full);
        if base == "set_config" {
            let first = args.and_then(first_string_arg);
            // GUC names are case-insensitive; a non-literal name may be anything.
            if first.is_none_or(|s| ROLE_SETTINGS.contains(&s.trim().to_ascii_lowercase().as_str()))
            {
                self.danger("role change: set_config");
            }
        }
    }

    /// A side-effect-free built-in written as SQL syntax.
    fn builtin(&mut self, name: &str) {
        self.a.functions.insert(name.to_owned());
    }

    fn in_transformation(&self) -> bool {
        !self.transforming.is_empty() || !self.transforming_factors.is_empty()
    }

    /// `f(t.*)`: a whole row passed to a function.
    fn whole_row_args(&mut self, args: &[FunctionArg]) {
        for arg in args {
            let (FunctionArg::Unnamed(arg)
            | FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }) = arg;
            if let FunctionArgExpr::QualifiedWildcard(name) = arg {
                self.a.transformed.insert(format!("{}.*", norm_name(name)));
            }
        }
    }

    /// A column reference (`ident` folded, or a compound name).
    fn column(&mut self, name: String) {
        if self.in_transformation() {
            self.a.transformed.insert(name.clone());
        }
        self.a.columns.insert(name);
    }

    fn setting(&mut self, name: &str, what: &str) {
        let lower = name.to_ascii_lowercase();
        if ROLE_SETTINGS.contains(&lower.as_str()) {
            self.class(StatementClass::Dcl);
            self.danger(format!("role change: {what} {lower}"));
        } else {
            self.class(StatementClass::SetReset);
            if SENSITIVE_SETTINGS.contains(&lower.as_str()) {
                self.danger(format!("config change: {lower}"));
            }
        }
    }

    fn transaction_modes(&mut self, modes: &[TransactionMode]) {
        if modes.iter().any(|m| {
            matches!(
                m,
                TransactionMode::AccessMode(TransactionAccessMode::ReadWrite)
            )
        }) {
            self.danger("config change: READ WRITE");
        }
    }

    fn is_cte_reference(&self, name: &ObjectName) -> bool {
        let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
            return false;
        };
        let n = norm_ident(ident);
        self.scopes
            .iter()
            .rev()
            .any(|s| s.names[..s.visible].iter().any(|(c, _)| *c == n))
    }

    /// Relations named by `SetExpr::Table` (`… UNION TABLE t`), which the visitor does not report.
    fn set_expr_tables(&mut self, body: &SetExpr) {
        let mut stack = vec![body];
        while let Some(e) = stack.pop() {
            match e {
                SetExpr::SetOperation { left, right, .. } => {
                    stack.push(left);
                    stack.push(right);
                }
                SetExpr::Table(t) => {
                    if let Some(table) = &t.table_name {
                        let name = match &t.schema_name {
                            Some(s) => ObjectName::from(vec![s.clone(), table.clone()]),
                            None => ObjectName::from(vec![table.clone()]),
                        };
                        if !self.is_cte_reference(&name) {
                            self.a.tables_read.insert(norm_name(&name));
                        }
                        self.class(StatementClass::Read);
                    }
                }
                _ => {}
            }
        }
    }

    fn statement(&mut self, s: &Statement) -> (FrameKind, bool) {
        use StatementClass as C;
        let mut kind = FrameKind::Other;
        let mut suppresses = false;
        match s {
            Statement::Query(q) => {
                // `WITH … DELETE …` is a query around a DML statement, which classifies itself.
                if !matches!(
                    *q.body,
                    SetExpr::Insert(_)
                        | SetExpr::Update(_)
                        | SetExpr::Delete(_)
                        | SetExpr::Merge(_)
                ) {
                    self.class(C::Read);
                }
                kind = FrameKind::Data;
            }
            Statement::Insert(insert) => {
                self.class(C::Insert);
                kind = FrameKind::Data;
                match &insert.table {
                    TableObject::TableName(name) => self.write_target(name),
                    TableObject::TableFunction(f) => self.function(&f.name, Some(&f.args)),
                    TableObject::TableQuery(_) => {}
                }
                for c in &insert.columns {
                    self.a.columns.insert(norm_name(c));
                }
                match &insert.on {
                    Some(OnInsert::OnConflict(c))
                        if matches!(c.action, OnConflictAction::DoUpdate(_)) =>
                    {
                        self.class(C::Update)
                    }
                    Some(OnInsert::DuplicateKeyUpdate(_)) => self.class(C::Update),
                    _ => {}
                }
            }
            Statement::Update(update) => {
                self.class(C::Update);
                kind = FrameKind::Data;
                self.table_target(&update.table);
                for assignment in &update.assignments {
                    match &assignment.target {
                        AssignmentTarget::ColumnName(c) => {
                            self.a.columns.insert(norm_name(c));
                        }
                        AssignmentTarget::Tuple(cs) => {
                            self.a.columns.extend(cs.iter().map(norm_name));
                        }
                    }
                }
            }
            Statement::Delete(delete) => {
                self.class(C::Delete);
                kind = FrameKind::Data;
                if delete.tables.is_empty() {
                    let from = match &delete.from {
                        sqlparser::ast::FromTable::WithFromKeyword(v)
                        | sqlparser::ast::FromTable::WithoutKeyword(v) => v,
                    };
                    for t in from {
                        self.table_target(t);
                    }
                } else {
                    for name in &delete.tables {
                        self.write_target(name);
                    }
                }
            }
            Statement::Merge(merge) => {
                self.class(C::Merge);
                kind = FrameKind::Data;
                if let TableFactor::Table { name, .. } = &merge.table {
                    self.write_target(name);
                }
                for clause in &merge.clauses {
                    match clause.action {
                        MergeAction::Insert(_) => self.class(C::Insert),
                        MergeAction::Update(_) => self.class(C::Update),
                        MergeAction::Delete { .. } => self.class(C::Delete),
                        MergeAction::DoNothing { .. } => {}
                    }
                }
            }
            Statement::Copy {
                source, to, target, ..
            } => {
                kind = FrameKind::Data;
                self.class(if *to { C::CopyTo } else { C::CopyFrom });
                match target {
                    CopyTarget::Program { .. } => {
                        self.class(C::CopyProgram);
                        self.danger("copy program");
                    }
                    CopyTarget::File { .. } => self.danger("server file access: COPY"),
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                }
                if let CopySource::Table {
                    table_name,
                    columns,
                } = source
                {
                    if *to {
                        self.read_target(table_name);
                    } else {
                        self.write_target(table_name);
                    }
                    self.a.columns.extend(columns.iter().map(norm_ident));
                }
            }
            Statement::Truncate(t) => {
                self.class(C::Ddl);
                self.class(C::Delete);
                kind = FrameKind::Ddl;
                for target in &t.table_names {
                    self.write_target(&target.name);
                }
            }
            Statement::CreateTable(t) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(&t.name);
            }
            Statement::CreateView(v) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(&v.name);
            }
            Statement::CreateIndex(i) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                if let Some(name) = &i.name {
                    self.write_target(name);
                }
                self.write_target(&i.table_name);
            }
            Statement::CreateFunction(f) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(&f.name);
                if matches!(f.security, Some(FunctionSecurity::Definer)) {
                    self.danger("security definer function");
                }
                let body = match &f.function_body {
                    Some(CreateFunctionBody::AsBeforeOptions { body, .. })
                    | Some(CreateFunctionBody::AsAfterOptions(body)) => string_value(body),
                    _ => None,
                };
                if let Some(body) = body {
                    self.danger("function body (opaque)");
                    let is_sql = f
                        .language
                        .as_ref()
                        .is_some_and(|l| l.value.eq_ignore_ascii_case("sql"));
                    if is_sql && self.body_depth < MAX_BODY_DEPTH {
                        self.merge_body(&body);
                    }
                }
            }
            Statement::CreateProcedure { name, .. } => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(name);
            }
            Statement::CreateTrigger(t) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(&t.name);
                self.write_target(&t.table_name);
                if let Some(body) = &t.exec_body {
                    self.function(&body.func_desc.name, None);
                }
            }
            Statement::CreateRule(r) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(&r.table_name);
            }
            Statement::CreateExtension(e) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.danger(format!("extension: {}", norm_ident(&e.name)));
            }
            Statement::Load { extension_name } => {
                self.class(C::Ddl);
                self.danger(format!("load library: {}", extension_name.value));
            }
            Statement::CreateServer(_)
            | Statement::CreateForeignDataWrapper(_)
            | Statement::CreateUserMapping(_) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.danger("foreign data");
            }
            Statement::CreateForeignTable(t) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(&t.name);
                self.danger("foreign data");
            }
            Statement::CreateSchema { schema_name, .. } => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                match schema_name {
                    sqlparser::ast::SchemaName::Simple(n)
                    | sqlparser::ast::SchemaName::NamedAuthorization(n, _) => self.write_target(n),
                    sqlparser::ast::SchemaName::UnnamedAuthorization(_) => {}
                }
            }
            Statement::CreateDatabase { db_name, .. } => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(db_name);
            }
            Statement::CreateSequence { name, .. } | Statement::CreateType { name, .. } => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(name);
            }
            Statement::AlterTable(t) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(&t.name);
            }
            Statement::AlterIndex { name, .. } => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(name);
            }
            Statement::AlterView(v) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(&v.name);
            }
            Statement::Drop {
                object_type, names, ..
            } => {
                if matches!(
                    object_type,
                    ObjectType::Role | ObjectType::User | ObjectType::Group
                ) {
                    self.class(C::Dcl);
                } else {
                    self.class(C::Ddl);
                    kind = FrameKind::Ddl;
                    for name in names {
                        self.write_target(name);
                    }
                }
            }
            Statement::DropFunction(d) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                for f in &d.func_desc {
                    self.write_target(&f.name);
                }
            }
            Statement::Comment { object_name, .. } => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(object_name);
            }
            Statement::RenameTable(renames) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                for r in renames {
                    self.write_target(&r.old_name);
                    self.write_target(&r.new_name);
                }
            }
            Statement::RefreshMaterializedView(r) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                self.write_target(&r.name);
            }
            Statement::Vacuum(v) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                if let Some(name) = &v.table_name {
                    self.write_target(name);
                }
            }
            Statement::Analyze(a) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
                if let Some(name) = &a.table_name {
                    self.write_target(name);
                }
            }
            Statement::CreateVirtualTable { .. }
            | Statement::CreatePolicy(_)
            | Statement::CreateOperator(_)
            | Statement::CreateOperatorFamily(_)
            | Statement::CreateOperatorClass(_)
            | Statement::CreateTextSearch(_)
            | Statement::CreateAggregate(_)
            | Statement::CreateCollation(_)
            | Statement::CreateDomain(_)
            | Statement::AlterSchema(_)
            | Statement::AlterFunction(_)
            | Statement::AlterType(_)
            | Statement::AlterCollation(_)
            | Statement::AlterOperator(_)
            | Statement::AlterOperatorFamily(_)
            | Statement::AlterOperatorClass(_)
            | Statement::AlterTextSearch(_)
            | Statement::AlterPolicy(_)
            | Statement::AlterTrigger(_)
            | Statement::DropDomain(_)
            | Statement::DropProcedure { .. }
            | Statement::DropPolicy(_)
            | Statement::DropRule(_)
            | Statement::DropTrigger(_)
            | Statement::DropExtension(_)
            | Statement::DropOperator(_)
            | Statement::DropOperatorFamily(_)
            | Statement::DropOperatorClass(_) => {
                self.class(C::Ddl);
                kind = FrameKind::Ddl;
            }
            Statement::Grant(g) => {
                self.class(C::Dcl);
                self.grant_objects(g.objects.as_ref());
            }
            Statement::Revoke(r) => {
                self.class(C::Dcl);
                self.grant_objects(r.objects.as_ref());
            }
            Statement::GrantRole(_)
            | Statement::RevokeRole(_)
            | Statement::Deny(_)
            | Statement::AlterDefaultPrivileges(_)
            | Statement::CreateRole(_)
            | Statement::AlterRole { .. }
            | Statement::CreateUser(_)
            | Statement::AlterUser(_) => self.class(C::Dcl),
            Statement::Set(set) => {
                kind = FrameKind::Setting;
                self.set(set);
            }
            Statement::Reset(r) => {
                kind = FrameKind::Setting;
                self.reset(&r.reset);
            }
            Statement::Discard { object_type } => {
                if matches!(object_type, DiscardObject::ALL) {
                    // DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT and RESET ALL.
                    self.class(C::Dcl);
                    self.danger("role change: DISCARD ALL");
                } else {
                    self.class(C::SetReset);
                }
            }
            Statement::Deallocate { .. } => self.class(C::SetReset),
            Statement::StartTransaction { modes, .. } => {
                self.class(C::Transaction);
                self.transaction_modes(modes);
            }
            Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. } => self.class(C::Transaction),
            Statement::Lock(lock) => {
                self.class(C::Transaction);
                for t in &lock.tables {
                    self.write_target(&t.name);
                }
            }
            Statement::Explain {
                analyze, options, ..
            } => {
                self.class(C::Explain);
                let analyzes = *analyze
                    || options.as_ref().is_some_and(|opts| {
                        opts.iter().any(|o| {
                            (o.name.value.eq_ignore_ascii_case("analyze")
                                || o.name.value.eq_ignore_ascii_case("analyse"))
                                && !o.arg.as_ref().is_some_and(is_false_option)
                        })
                    });
                suppresses = !analyzes;
            }
            Statement::ExplainTable { table_name, .. } => {
                self.class(C::Read);
                self.read_target(table_name);
            }
            Statement::Prepare { name, .. } => {
                self.a.prepared = Some(norm_ident(name));
            }
            Statement::Execute {
                name, immediate, ..
            } => {
                self.class(C::Call);
                match name {
                    Some(n) if !*immediate && !is_string_name(n) => {
                        if self.suppress == 0 {
                            self.a.executes = Some(norm_name(n));
                        }
                    }
                    _ => {
                        self.class(C::Unknown);
                        self.danger("dynamic SQL: EXECUTE string");
                    }
                }
            }
            Statement::Call(f) => {
                self.class(C::Call);
                self.function(&f.name, Some(&f.args));
            }
            Statement::NOTIFY { .. } => self.class(C::Call),
            Statement::LISTEN { .. } | Statement::UNLISTEN { .. } => self.class(C::Read),
            Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
                self.class(C::Read);
                kind = FrameKind::Data;
            }
            Statement::ShowFunctions { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowCreate { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowSchemas { .. }
            | Statement::ShowCharset(_)
            | Statement::ShowObjects(_)
            | Statement::ShowTables { .. }
            | Statement::ShowViews { .. }
            | Statement::ShowCollation { .. } => self.class(C::Read),
            _ => self.class(C::Unknown),
        }
        (kind, suppresses)
    }

    fn reset(&mut self, reset: &Reset) {
        match reset {
            Reset::ALL => self.class(StatementClass::SetReset),
            Reset::SessionAuthorization => {
                self.class(StatementClass::Dcl);
                self.danger("role change: RESET SESSION AUTHORIZATION");
            }
            Reset::ConfigurationParameter(name) => self.setting(&base_name(name), "RESET"),
        }
    }

    fn set(&mut self, set: &Set) {
        use StatementClass as C;
        match set {
            Set::SetRole { .. } => {
                self.class(C::Dcl);
                self.danger("role change: SET ROLE");
            }
            Set::SetSessionAuthorization(_) => {
                self.class(C::Dcl);
                self.danger("role change: SET SESSION AUTHORIZATION");
            }
            Set::SingleAssignment { variable, .. } => {
                self.setting(&base_name(variable), "SET");
            }
            Set::ParenthesizedAssignments { variables, .. } => {
                for v in variables {
                    self.setting(&base_name(v), "SET");
                }
            }
            Set::MultipleAssignments { assignments } => {
                for a in assignments {
                    self.setting(&base_name(&a.name), "SET");
                }
            }
            Set::SetTransaction { modes, session, .. } => {
                self.class(if *session {
                    C::SetReset
                } else {
                    C::Transaction
                });
                self.transaction_modes(modes);
            }
            Set::SetSessionParam(_)
            | Set::SetTimeZone { .. }
            | Set::SetNames { .. }
            | Set::SetNamesDefault {} => self.class(C::SetReset),
        }
    }

    fn grant_objects(&mut self, objects: Option<&GrantObjects>) {
        let Some(objects) = objects else { return };
        match objects {
            GrantObjects::Tables(names)
            | GrantObjects::Views(names)
            | GrantObjects::Sequences(names)
            | GrantObjects::Schemas(names)
            | GrantObjects::Databases(names)
            | GrantObjects::AllTablesInSchema { schemas: names }
            | GrantObjects::AllSequencesInSchema { schemas: names }
            | GrantObjects::AllViewsInSchema { schemas: names }
            | GrantObjects::AllFunctionsInSchema { schemas: names } => {
                for n in names {
                    self.write_target(n);
                }
            }
            GrantObjects::Functions(fs)
            | GrantObjects::Procedures(fs)
            | GrantObjects::Routines(fs) => {
                for f in fs {
                    self.write_target(&f.name);
                }
            }
            _ => {}
        }
    }

    /// Fold the analysis of an SQL-language function body into this one.
    fn merge_body(&mut self, body: &str) {
        let inner = analyze_text(body, self.body_depth + 1);
        if inner.error.is_some() {
            return;
        }
        for s in inner.statements {
            for class in s.classes {
                self.class(class);
            }
            self.a.tables_read.extend(s.tables_read);
            self.a.tables_written.extend(s.tables_written);
            self.a.columns.extend(s.columns);
            self.a.transformed.extend(s.transformed);
            self.a.functions.extend(s.functions);
            self.a.dangerous.extend(s.dangerous);
        }
    }
}

fn string_value(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(v) => {
            note_literal_read();
            match &v.value {
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::UnicodeStringLiteral(s) => Some(s.clone()),
                Value::DollarQuotedString(d) => Some(d.value.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

fn first_string_arg(args: &FunctionArguments) -> Option<String> {
    let FunctionArguments::List(list) = args else {
        return None;
    };
    match list.args.first()? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => string_value(e),
        _ => None,
    }
}

/// `EXPLAIN (ANALYZE false)`, `(ANALYZE off)`, `(ANALYZE 0)`, `(ANALYZE 'no')`.
fn is_false_option(arg: &Expr) -> bool {
    let text = match arg {
        Expr::Value(v) => {
            note_literal_read();
            match &v.value {
                Value::Boolean(b) => return !b,
                Value::Number(n, _) => n.to_string(),
                Value::SingleQuotedString(s) => s.clone(),
                _ => return false,
            }
        }
        Expr::Identifier(i) => i.value.clone(),
        _ => return false,
    };
    matches!(
        text.trim().to_ascii_lowercase().as_str(),
        "false" | "off" | "0" | "no" | "f" | "n"
    )
}

/// Expressions whose operands reach the result only transformed (see [`Analysis::transformed`]).
fn is_transformation(expr: &Expr) -> bool {
    match expr {
        Expr::Function(_)
        | Expr::Cast { .. }
        | Expr::Convert { .. }
        | Expr::Substring { .. }
        | Expr::Trim { .. }
        | Expr::Position { .. }
        | Expr::Overlay { .. }
        | Expr::Extract { .. }
        | Expr::Ceil { .. }
        | Expr::Floor { .. }
        | Expr::AtTimeZone { .. }
        | Expr::Array(_)
        | Expr::Like { .. }
        | Expr::ILike { .. }
        | Expr::SimilarTo { .. }
        | Expr::RLike { .. } => true,
        Expr::BinaryOp { op, .. }
        | Expr::AnyOp { compare_op: op, .. }
        | Expr::AllOp { compare_op: op, .. } => is_transforming_operator(op),
        _ => false,
    }
}

/// `||` and the pattern-matching operators.
fn is_transforming_operator(op: &BinaryOperator) -> bool {
    match op {
        BinaryOperator::StringConcat
        | BinaryOperator::PGRegexMatch
        | BinaryOperator::PGRegexIMatch
        | BinaryOperator::PGRegexNotMatch
        | BinaryOperator::PGRegexNotIMatch
        | BinaryOperator::PGLikeMatch
        | BinaryOperator::PGILikeMatch
        | BinaryOperator::PGNotLikeMatch
        | BinaryOperator::PGNotILikeMatch
        | BinaryOperator::PGStartsWith
        | BinaryOperator::Regexp => true,
        // `OPERATOR(pg_catalog.||)`
        BinaryOperator::PGCustomBinaryOperator(parts) => parts
            .last()
            .is_some_and(|op| TRANSFORMING_OPERATORS.contains(&op.as_str())),
        BinaryOperator::Custom(op) => TRANSFORMING_OPERATORS.contains(&op.as_str()),
        _ => false,
    }
}

const TRANSFORMING_OPERATORS: &[&str] = &[
    "||", "~", "~*", "!~", "!~*", "~~", "~~*", "!~~", "!~~*", "^@",
];

/// The name by which a `FROM` item can be referred to: its alias, or a table's last name part.
fn relation_name(factor: &TableFactor) -> Option<String> {
    let alias = match factor {
        TableFactor::Table {
            alias: None, name, ..
        } => {
            return match name.0.last() {
                Some(ObjectNamePart::Identifier(ident)) => Some(norm_ident(ident)),
                _ => None,
            }
        }
        TableFactor::Table { alias, .. }
        | TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. }
        | TableFactor::JsonTable { alias, .. }
        | TableFactor::OpenJsonTable { alias, .. }
        | TableFactor::NestedJoin { alias, .. }
        | TableFactor::XmlTable { alias, .. } => alias.as_ref(),
        _ => None,
    };
    alias.map(|a| norm_ident(&a.name))
}

fn is_string_name(name: &ObjectName) -> bool {
    matches!(name.0.as_slice(), [ObjectNamePart::Identifier(i)] if i.quote_style == Some('\''))
}

impl Visitor for Walker {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        let (kind, suppresses) = self.statement(s);
        if suppresses {
            self.suppress += 1;
        }
        self.frames.push(Frame {
            statement: s as *const _,
            kind,
            query_depth: self.query_depth,
            suppresses,
        });
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if let Some(frame) = self.frames.pop() {
            debug_assert_eq!(frame.statement, s as *const _);
            if frame.suppresses {
                self.suppress -= 1;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let ptr = q as *const Query;
        if let Some(scope) = self.scopes.last_mut() {
            if let Some(i) = scope.names.iter().position(|(_, p)| *p == ptr) {
                // A CTE body sees the CTEs before it (all of them under RECURSIVE).
                scope.visible = if scope.recursive {
                    scope.names.len()
                } else {
                    i
                };
            }
        }
        if let Some(with) = &q.with {
            let names: Vec<(String, *const Query)> = with
                .cte_tables
                .iter()
                .map(|c| (norm_ident(&c.alias.name), &*c.query as *const Query))
                .collect();
            let visible = if with.recursive { names.len() } else { 0 };
            self.scopes.push(CteScope {
                query: ptr,
                names,
                recursive: with.recursive,
                visible,
            });
        }
        self.query_depth += 1;
        self.set_expr_tables(&q.body);
        // `FOR UPDATE`/`FOR SHARE` lock rows: a write to the tables it names (or all of them).
        for lock in &q.locks {
            self.class(StatementClass::Update);
            match &lock.of {
                Some(name) => {
                    self.a.tables_written.insert(norm_name(name));
                }
                None => self.locks_all = true,
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let ptr = q as *const Query;
        self.query_depth -= 1;
        if self.scopes.last().is_some_and(|s| s.query == ptr) {
            self.scopes.pop();
        }
        if let Some(scope) = self.scopes.last_mut() {
            if let Some(i) = scope.names.iter().position(|(_, p)| *p == ptr) {
                scope.visible = scope.visible.max(i + 1);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            // SELECT … INTO new_table: creates and fills a table.
            self.class(StatementClass::Ddl);
            for target in &into.targets {
                self.claimed_exprs.push(target as *const _);
                let name = match target {
                    Expr::Identifier(i) => Some(norm_ident(i)),
                    Expr::CompoundIdentifier(parts) => {
                        Some(parts.iter().map(norm_ident).collect::<Vec<_>>().join("."))
                    }
                    _ => None,
                };
                if let Some(name) = name {
                    if self.suppress == 0 {
                        self.a.tables_written.insert(name);
                    } else {
                        self.a.tables_read.insert(name);
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        self.relations.extend(relation_name(factor));
        match factor {
            // `FROM f(args)`: a set-returning function, not a relation.
            TableFactor::Table {
                name,
                args: Some(args),
                ..
            } => {
                self.claimed_names.push(name as *const _);
                self.function(name, None);
                self.transforming_factors.push(factor as *const _);
                self.whole_row_args(&args.args);
            }
            TableFactor::Function { name, args, .. } => {
                self.claimed_names.push(name as *const _);
                self.function(name, None);
                self.transforming_factors.push(factor as *const _);
                self.whole_row_args(args);
            }
            TableFactor::UNNEST { .. } => {
                // sqlparser has syntax of its own for it; to the server it is a function call.
                self.a.functions.insert("unnest".to_owned());
                self.transforming_factors.push(factor as *const _);
            }
            TableFactor::TableFunction { .. }
            | TableFactor::JsonTable { .. }
            | TableFactor::OpenJsonTable { .. }
            | TableFactor::XmlTable { .. } => {
                self.transforming_factors.push(factor as *const _);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if self.transforming_factors.last() == Some(&(factor as *const _)) {
            self.transforming_factors.pop();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        let ptr = name as *const ObjectName;
        if self.claimed_names.contains(&ptr) || self.is_cte_reference(name) {
            return ControlFlow::Continue(());
        }
        let (kind, depth) = self
            .frames
            .last()
            .map_or((FrameKind::Other, 0), |f| (f.kind, f.query_depth));
        let direct = self.query_depth == depth;
        if kind == FrameKind::Ddl && direct {
            self.write_target(name);
        } else {
            self.a.tables_read.insert(norm_name(name));
            if !direct || kind == FrameKind::Data {
                self.class(StatementClass::Read);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if is_transformation(expr) {
            self.transforming.push(expr as *const _);
        }
        match expr {
            Expr::Function(f) => {
                self.function(&f.name, Some(&f.args));
                if let FunctionArguments::List(list) = &f.args {
                    self.whole_row_args(&list.args);
                }
            }
            // Syntax of sqlparser's own for what PostgreSQL calls built-in functions
            // (`substring(a, 1, 2)` is a plain call there): named as the server names them,
            // so the two parsers agree on what is called. None has side effects.
            Expr::Substring { .. } => self.builtin("substring"),
            Expr::Ceil { .. } => self.builtin("ceil"),
            Expr::Floor { .. } => self.builtin("floor"),
            Expr::Position { .. } => self.builtin("position"),
            Expr::Overlay { .. } => self.builtin("overlay"),
            Expr::Extract { .. } => self.builtin("extract"),
            Expr::AtTimeZone { .. } => self.builtin("timezone"),
            _ if self
                .frames
                .last()
                .is_some_and(|f| f.kind == FrameKind::Setting) => {}
            // `SET a = DEFAULT` parses DEFAULT as an identifier.
            Expr::Identifier(ident)
                if ident.quote_style.is_none() && ident.value.eq_ignore_ascii_case("default") => {}
            Expr::Identifier(ident) if !self.claimed_exprs.contains(&(expr as *const _)) => {
                self.column(norm_ident(ident));
            }
            Expr::CompoundIdentifier(parts)
                if !self.claimed_exprs.contains(&(expr as *const _)) =>
            {
                let name = parts.iter().map(norm_ident).collect::<Vec<_>>().join(".");
                self.column(name);
            }
            // `(t.*)::text`
            Expr::QualifiedWildcard(name, _) if self.in_transformation() => {
                self.a.transformed.insert(format!("{}.*", norm_name(name)));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.transforming.last() == Some(&(expr as *const _)) {
            self.transforming.pop();
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests;
