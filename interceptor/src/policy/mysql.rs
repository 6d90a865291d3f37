//! MySQL and MariaDB statements, read the way those servers read them.
//!
//! Why this exists: [`super::sql`] classifies statements with sqlparser, but what a MySQL
//! server runs also depends on things no generic SQL grammar sees: comments it executes
//! (`/*! … */`, `/*M! … */`), a `--` that is not a comment without a space after it, session
//! settings that change the lexer (`sql_mode` with `ANSI_QUOTES` or `NO_BACKSLASH_ESCAPES`,
//! `character_set_client` with a multi-byte charset whose trailing bytes can be `\`), and
//! statements that look harmless to a PostgreSQL-minded classifier (`SELECT … INTO OUTFILE`,
//! `LOAD DATA`, `LOAD_FILE()`, `HANDLER`, `DO`, `PREPARE … FROM @var`, `SET GLOBAL`).
//!
//! [`analyze`] runs the shared classification with sqlparser's MySQL dialect and then applies
//! these rules:
//!
//! | the text contains | result |
//! |---|---|
//! | an executable comment, or `--` not followed by white space | refused (`gate:parser-disagreement`) |
//! | an assignment of `sql_mode` (any scope or spelling) | refused (`gate:pinned-setting`): the gateway pins it |
//! | `SET NAMES`/`CHARACTER SET`/`character_set_client` to anything but utf8mb4, utf8mb3, utf8, latin1, ascii | refused (`gate:pinned-setting`) |
//! | `INTO OUTFILE`/`DUMPFILE`, `LOAD DATA`/`LOAD XML`, `load_file()` | `Unknown`, dangerous "server file access: …" |
//! | `SET GLOBAL`/`PERSIST`, `@@global.` in a `SET` | `Unknown`, dangerous "config change: SET GLOBAL" |
//! | a statement starting with `HANDLER`, `DO`, `PREPARE`, `EXECUTE`, `DEALLOCATE`, `INSTALL`, `UNINSTALL`, `FLUSH`, `KILL`, `SHUTDOWN`, `BINLOG`, `XA` | `Unknown`, dangerous "opaque: …" |
//! | `sys_exec`/`sys_eval` and other known command-running UDFs | `Unknown`, dangerous "UDF: …" |
//! | `SET PASSWORD`, `SET ROLE`, `SET DEFAULT ROLE` | `Dcl` |
//! | `USE db` | `SetReset` |
//!
//! Calls of MySQL built-ins without side effects (`database()`, `version()`, `concat()`, …)
//! do not count as volatile functions. SQL-level `PREPARE`/`EXECUTE` are dynamic SQL, so an
//! analysis here never names a prepared statement (the gateway's own prepared statements are
//! the protocol's `COM_STMT_*`, judged by their text).

use sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace};

use super::sql::{self, Analysis, Dialect, GateRefusal, Parsed, StatementClass};

/// The character sets whose bytes the gateway reads exactly as the server does: ASCII
/// supersets where no byte of a multi-byte character can be a quote or a backslash.
pub const READABLE_CHARSETS: [&str; 5] = ["utf8mb4", "utf8mb3", "utf8", "latin1", "ascii"];

/// Statements the gateway cannot see through, by their first word.
const OPAQUE_STATEMENTS: [&str; 12] = [
    "HANDLER",
    "DO",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "INSTALL",
    "UNINSTALL",
    "FLUSH",
    "KILL",
    "SHUTDOWN",
    "BINLOG",
    "XA",
];

/// User-defined functions known to run commands on the server (lib_mysqludf_sys and kin).
const COMMAND_UDFS: [&str; 4] = ["sys_exec", "sys_eval", "sys_get", "sys_set"];

/// MySQL/MariaDB built-ins that change nothing (beyond the statement's own result).
const HARMLESS_BUILTINS: &[&str] = &[
    "abs",
    "acos",
    "any_value",
    "ascii",
    "asin",
    "atan",
    "atan2",
    "avg",
    "benchmark",
    "bin",
    "bit_and",
    "bit_count",
    "bit_length",
    "bit_or",
    "bit_xor",
    "cast",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character_length",
    "charset",
    "coalesce",
    "coercibility",
    "collation",
    "concat",
    "concat_ws",
    "connection_id",
    "conv",
    "convert",
    "convert_tz",
    "cos",
    "cot",
    "count",
    "crc32",
    "curdate",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "curtime",
    "database",
    "date",
    "date_add",
    "date_format",
    "date_sub",
    "datediff",
    "day",
    "dayname",
    "dayofmonth",
    "dayofweek",
    "dayofyear",
    "degrees",
    "elt",
    "exp",
    "extract",
    "field",
    "find_in_set",
    "floor",
    "format",
    "found_rows",
    "from_base64",
    "from_days",
    "from_unixtime",
    "greatest",
    "group_concat",
    "hex",
    "hour",
    "if",
    "ifnull",
    "inet6_aton",
    "inet6_ntoa",
    "inet_aton",
    "inet_ntoa",
    "insert",
    "instr",
    "is_ipv4",
    "is_ipv6",
    "isnull",
    "json_array",
    "json_arrayagg",
    "json_contains",
    "json_extract",
    "json_keys",
    "json_length",
    "json_object",
    "json_objectagg",
    "json_quote",
    "json_type",
    "json_unquote",
    "json_valid",
    "last_day",
    "last_insert_id",
    "lcase",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "locate",
    "log",
    "log10",
    "log2",
    "lower",
    "lpad",
    "ltrim",
    "makedate",
    "maketime",
    "max",
    "md5",
    "microsecond",
    "mid",
    "min",
    "minute",
    "mod",
    "month",
    "monthname",
    "now",
    "nullif",
    "oct",
    "octet_length",
    "ord",
    "period_add",
    "period_diff",
    "pi",
    "position",
    "pow",
    "power",
    "quarter",
    "quote",
    "radians",
    "rand",
    "regexp_instr",
    "regexp_like",
    "regexp_replace",
    "regexp_substr",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_count",
    "rpad",
    "rtrim",
    "schema",
    "sec_to_time",
    "second",
    "session_user",
    "sha",
    "sha1",
    "sha2",
    "sign",
    "sin",
    "sleep",
    "soundex",
    "space",
    "sqrt",
    "std",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "str_to_date",
    "strcmp",
    "subdate",
    "substr",
    "substring",
    "substring_index",
    "sum",
    "sysdate",
    "system_user",
    "tan",
    "time",
    "time_format",
    "time_to_sec",
    "timediff",
    "timestamp",
    "timestampadd",
    "timestampdiff",
    "to_base64",
    "to_days",
    "to_seconds",
    "trim",
    "truncate",
    "ucase",
    "unhex",
    "unix_timestamp",
    "upper",
    "user",
    "utc_date",
    "utc_time",
    "utc_timestamp",
    "uuid",
    "var_pop",
    "var_samp",
    "variance",
    "version",
    "week",
    "weekday",
    "weekofyear",
    "year",
    "yearweek",
];

/// Analyses a MySQL/MariaDB text (see the module documentation). Never panics.
pub fn analyze(text: &str) -> Parsed {
    let mut parsed = sql::analyze_unchecked_in(text, Dialect::MySql);
    let tokens = match sql::tokenize(text, Dialect::MySql) {
        Ok(tokens) => tokens,
        // Already `Unknown`, with the tokenizer's reason.
        Err(_) => return parsed,
    };
    let mut findings = Findings::default();
    // sqlparser expands `/*! … */` as code whatever its version number says, where the
    // server runs it only from that version on: refused outright (a string holding the
    // three characters is refused too, which errs on the safe side).
    if text.contains("/*!") {
        findings.refuse("gate:parser-disagreement", EXECUTABLE_COMMENT.to_owned());
    }
    lexer_traps(&tokens, &mut findings);
    for statement in split(&tokens) {
        statement_traps(&statement, &mut findings);
    }
    for a in &mut parsed.statements {
        adjust(a, &findings);
    }
    if parsed.refusal.is_none() {
        parsed.refusal = findings.refusal;
    }
    parsed
}

/// What the MySQL-specific reading found in a text.
#[derive(Default)]
struct Findings {
    refusal: Option<GateRefusal>,
    /// Reasons that make the statements `Unknown` (denied whatever the rules say).
    unknown: Vec<String>,
    /// Classes the generic analysis could not know (`SET PASSWORD` is `Dcl`).
    classes: Vec<StatementClass>,
    /// `USE db` statements, which the generic analysis does not know.
    uses: bool,
}

impl Findings {
    fn refuse(&mut self, rule: &'static str, message: String) {
        self.refusal.get_or_insert(GateRefusal { rule, message });
    }
}

const EXECUTABLE_COMMENT: &str =
    "executable comments (/*! … */, /*M! … */) run as SQL on a MySQL server; the gateway refuses them";

/// Lexer-level disagreements: comments the server executes or does not treat as comments.
fn lexer_traps(tokens: &[TokenWithSpan], findings: &mut Findings) {
    for t in tokens {
        match &t.token {
            Token::Whitespace(Whitespace::MultiLineComment(body))
                if body.starts_with('!') || body.starts_with("M!") =>
            {
                findings.refuse("gate:parser-disagreement", EXECUTABLE_COMMENT.to_owned());
            }
            Token::Whitespace(Whitespace::SingleLineComment { prefix, comment })
                if prefix == "--"
                    && !comment.is_empty()
                    && !comment.starts_with([' ', '\t', '\n', '\r']) =>
            {
                findings.refuse(
                    "gate:parser-disagreement",
                    "`--` without a space after it is not a comment on a MySQL server; the \
                     gateway refuses such text"
                        .to_owned(),
                );
            }
            _ => {}
        }
    }
}

/// The significant tokens of each statement, split at top-level `;`.
fn split(tokens: &[TokenWithSpan]) -> Vec<Vec<&Token>> {
    let mut statements = vec![Vec::new()];
    let mut depth = 0usize;
    for t in tokens {
        match &t.token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::SemiColon if depth == 0 => {
                statements.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = statements.last_mut() {
            last.push(&t.token);
        }
    }
    statements.retain(|s| !s.is_empty());
    statements
}

/// The upper-case text of an unquoted word.
fn word(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn statement_traps(tokens: &[&Token], findings: &mut Findings) {
    let words: Vec<Option<String>> = tokens.iter().map(|t| word(t)).collect();
    let first = words.first().cloned().flatten().unwrap_or_default();
    if OPAQUE_STATEMENTS.contains(&first.as_str()) {
        findings.unknown.push(format!("opaque: {first}"));
    }
    if first == "USE" {
        findings.uses = true;
    }
    for (i, w) in words.iter().enumerate() {
        let Some(w) = w else { continue };
        let next = words.get(i + 1).cloned().flatten().unwrap_or_default();
        match w.as_str() {
            "OUTFILE" | "DUMPFILE" => findings
                .unknown
                .push(format!("server file access: INTO {w}")),
            "LOAD" if next == "DATA" || next == "XML" => findings
                .unknown
                .push(format!("server file access: LOAD {next}")),
            "LOAD_FILE" => findings
                .unknown
                .push("server file access: load_file".to_owned()),
            other if COMMAND_UDFS.contains(&other.to_ascii_lowercase().as_str()) => findings
                .unknown
                .push(format!("UDF: {}", other.to_ascii_lowercase())),
            _ => {}
        }
    }
    if first == "SET" {
        set_traps(tokens, findings);
    }
}

/// The assignments of a `SET` statement: `SET [scope] name = value, …` and its special forms.
fn set_traps(tokens: &[&Token], findings: &mut Findings) {
    let second = tokens.get(1).and_then(|t| word(t)).unwrap_or_default();
    match second.as_str() {
        "NAMES" | "CHARSET" => {
            return charset(tokens.get(2).copied(), "SET NAMES", findings);
        }
        "CHARACTER" => {
            return charset(tokens.get(3).copied(), "SET CHARACTER SET", findings);
        }
        "PASSWORD" | "ROLE" | "DEFAULT" => {
            findings.classes.push(StatementClass::Dcl);
            return;
        }
        "STATEMENT" => {
            // MariaDB's `SET STATEMENT var = … FOR stmt` changes settings for one statement.
            findings.unknown.push("opaque: SET STATEMENT".to_owned());
            return;
        }
        _ => {}
    }
    // One assignment per top-level comma.
    let mut depth = 0usize;
    let mut start = 1;
    for i in 1..=tokens.len() {
        let token = tokens.get(i).copied();
        match token {
            Some(Token::LParen) => depth += 1,
            Some(Token::RParen) => depth = depth.saturating_sub(1),
            Some(Token::Comma) | None if depth == 0 => {
                assignment(tokens.get(start..i).unwrap_or_default(), findings);
                start = i + 1;
            }
            _ => {}
        }
    }
}

/// One `[scope] name {=|:=} value` of a `SET`.
fn assignment(tokens: &[&Token], findings: &mut Findings) {
    let Some(eq) = tokens
        .iter()
        .position(|t| matches!(t, Token::Eq | Token::Assignment))
    else {
        findings
            .unknown
            .push("unparsed: SET without an assignment".to_owned());
        return;
    };
    let mut name = String::new();
    for t in tokens.get(..eq).unwrap_or_default() {
        match t {
            Token::Word(w) => name.push_str(&w.value),
            Token::Period => name.push('.'),
            Token::AtSign => name.push('@'),
            other => name.push_str(&other.to_string()),
        }
        name.push(' ');
    }
    let name = name.trim().to_ascii_lowercase();
    let mut words: Vec<&str> = name.split(' ').collect();
    let global = words
        .first()
        .is_some_and(|w| matches!(*w, "global" | "persist" | "persist_only"))
        || name.contains("@@global")
        || name.contains("@@persist");
    if global {
        findings
            .unknown
            .push("config change: SET GLOBAL".to_owned());
        return;
    }
    if words
        .first()
        .is_some_and(|w| matches!(*w, "session" | "local"))
    {
        words.remove(0);
    }
    let variable: String = words.concat();
    let variable = variable
        .trim_start_matches("@@session.")
        .trim_start_matches("@@local.")
        .trim_start_matches("@@");
    match variable {
        "sql_mode" => findings.refuse(
            "gate:pinned-setting",
            "sql_mode is pinned by the gateway (ANSI_QUOTES and NO_BACKSLASH_ESCAPES change how \
             statements are read)"
                .to_owned(),
        ),
        "character_set_client" | "character_set_connection" | "collation_connection" => {
            charset(tokens.get(eq + 1).copied(), variable, findings)
        }
        _ => {}
    }
}

/// A charset (or collation) named by a `SET`: only [`READABLE_CHARSETS`] keep the gateway's
/// reading exact. A collation counts by its charset (`utf8mb4_general_ci`).
fn charset(value: Option<&Token>, what: &str, findings: &mut Findings) {
    let name = match value {
        Some(Token::Word(w)) => Some(w.value.to_ascii_lowercase()),
        Some(Token::SingleQuotedString(s)) | Some(Token::DoubleQuotedString(s)) => {
            Some(s.to_ascii_lowercase())
        }
        _ => None,
    };
    if name.as_deref().is_some_and(readable_charset) {
        return;
    }
    findings.refuse(
        "gate:pinned-setting",
        format!(
            "{what} {}: the gateway reads statements only in {} (multi-byte charsets such as \
             gbk, sjis or big5 can hide a quote from it)",
            name.as_deref().unwrap_or("(not a literal name)"),
            READABLE_CHARSETS.join(", ")
        ),
    );
}

/// True for a charset of [`READABLE_CHARSETS`], or a collation of one.
pub fn readable_charset(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    READABLE_CHARSETS
        .iter()
        .any(|c| name == *c || name.strip_prefix(c).is_some_and(|r| r.starts_with('_')))
}

fn adjust(a: &mut Analysis, findings: &Findings) {
    // SQL-level PREPARE/EXECUTE are dynamic SQL here: no verdict travels by name.
    a.prepared = None;
    a.executes = None;
    if findings.uses && a.classes.contains(&StatementClass::Unknown) && is_use(a) {
        a.classes = [StatementClass::SetReset].into();
        a.dangerous.remove("unparsed");
    }
    for reason in &findings.unknown {
        a.classes.insert(StatementClass::Unknown);
        a.dangerous.insert(reason.clone());
    }
    a.classes.extend(findings.classes.iter().copied());
    if a.classes.contains(&StatementClass::VolatileFunction)
        && a.volatile_functions
            .iter()
            .all(|f| HARMLESS_BUILTINS.contains(&f.to_ascii_lowercase().as_str()))
    {
        a.classes.remove(&StatementClass::VolatileFunction);
        a.volatile_functions.clear();
    }
    if a.classes.is_empty() {
        a.classes.insert(StatementClass::Unknown);
    }
}

/// `USE name`, as sqlparser prints it or as written.
fn is_use(a: &Analysis) -> bool {
    let mut words = a.text.split_whitespace();
    words.next().is_some_and(|w| w.eq_ignore_ascii_case("use"))
        && words.next().is_some()
        && words.next().is_none()
}

#[cfg(test)]
mod tests;
