use super::*;

fn classes(text: &str) -> Vec<StatementClass> {
    analyze(text)
        .statements
        .iter()
        .flat_map(|a| a.classes.iter().copied())
        .collect()
}

fn unknown(text: &str) -> bool {
    analyze(text).has_unknown()
}

fn refused(text: &str) -> Option<&'static str> {
    analyze(text).refusal.map(|r| r.rule)
}

#[test]
fn ordinary_statements_get_the_same_classes_as_postgresql() {
    use StatementClass as C;
    assert_eq!(
        classes("SELECT id, email FROM customers WHERE id = 1"),
        [C::Read]
    );
    assert_eq!(classes("select @@version_comment limit 1"), [C::Read]);
    assert_eq!(classes("SELECT DATABASE(), VERSION(), NOW()"), [C::Read]);
    assert_eq!(classes("INSERT INTO t (a) VALUES ('x')"), [C::Insert]);
    assert_eq!(classes("UPDATE t SET a = 1 WHERE b = 2"), [C::Update]);
    assert_eq!(classes("DROP TABLE t"), [C::Ddl]);
    assert_eq!(classes("SET autocommit = 0"), [C::SetReset]);
    assert_eq!(classes("SET @@session.autocommit = OFF"), [C::SetReset]);
    assert_eq!(classes("SET NAMES utf8mb4"), [C::SetReset]);
    assert_eq!(classes("USE appdb"), [C::SetReset]);
    assert_eq!(classes("SHOW TABLES"), [C::Read]);
    assert!(classes("CREATE USER x IDENTIFIED BY 'p'").contains(&C::Dcl));
    assert!(classes("GRANT ALL ON *.* TO x").contains(&C::Dcl));
    assert!(classes("CALL p()").contains(&C::Call));
}

#[test]
fn backslash_escapes_are_read_as_mysql_reads_them() {
    // Two statements in PostgreSQL's reading, one string in MySQL's.
    let parsed = analyze("SELECT 'a\\'; DROP TABLE t; -- '");
    assert_eq!(parsed.statements.len(), 1, "{parsed:?}");
    assert_eq!(
        classes("SELECT 'a\\'; DROP TABLE t; -- '"),
        [StatementClass::Read]
    );
    // And the other way round: a doubled backslash ends the string.
    let parsed = analyze("SELECT 'a\\\\'; DROP TABLE t");
    assert_eq!(parsed.statements.len(), 2, "{parsed:?}");
    assert!(parsed.statements[1].classes.contains(&StatementClass::Ddl));
}

#[test]
fn file_access_and_opaque_statements_are_unknown() {
    assert!(unknown("SELECT * FROM t INTO OUTFILE '/tmp/x'"));
    assert!(unknown("SELECT 'x' INTO DUMPFILE '/tmp/x'"));
    assert!(unknown("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t"));
    assert!(unknown("LOAD XML INFILE 'x' INTO TABLE t"));
    assert!(unknown("SELECT LOAD_FILE('/etc/passwd')"));
    assert!(unknown("SELECT sys_exec('id')"));
    assert!(unknown("SET GLOBAL general_log = 1"));
    assert!(unknown("SET @@global.max_connections = 1"));
    assert!(unknown("SET PERSIST max_connections = 1"));
    assert!(unknown("HANDLER t OPEN"));
    assert!(unknown("DO SLEEP(1)"));
    assert!(unknown("PREPARE s FROM @q"));
    assert!(unknown("PREPARE s FROM 'DROP TABLE t'"));
    assert!(unknown("EXECUTE s"));
    assert!(unknown("SET STATEMENT max_statement_time=1 FOR SELECT 1"));
    assert!(!unknown("SELECT 'LOAD_FILE is only text here'"));
}

#[test]
fn executable_comments_and_dashes_without_space_are_refused() {
    assert_eq!(
        refused("SELECT 1 /*!50000 , (SELECT 1) */"),
        Some("gate:parser-disagreement")
    );
    assert_eq!(
        refused("SELECT 1 /*M!100000 UNION SELECT 2 */"),
        Some("gate:parser-disagreement")
    );
    assert_eq!(refused("SELECT 1 /* plain */"), None);
    assert_eq!(refused("SELECT 1 -- fine"), None);
}

#[test]
fn reading_settings_are_pinned() {
    for text in [
        "SET sql_mode = 'ANSI_QUOTES'",
        "SET SESSION sql_mode = ''",
        "SET @@sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "SET @@session.sql_mode = 'ANSI'",
        "SET autocommit = 1, sql_mode = 'ANSI'",
        "SET NAMES gbk",
        "SET NAMES 'sjis'",
        "SET CHARACTER SET big5",
        "SET character_set_client = gbk",
        "SET @@session.character_set_client = 'cp932'",
        "SET NAMES DEFAULT",
    ] {
        assert_eq!(refused(text), Some("gate:pinned-setting"), "{text}");
    }
    for text in [
        "SET NAMES utf8mb4",
        "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
        "SET NAMES latin1",
        "SET character_set_client = utf8",
        "SET collation_connection = utf8mb4_unicode_ci",
    ] {
        assert_eq!(refused(text), None, "{text}");
    }
}

#[test]
fn charsets_the_gateway_reads_exactly() {
    assert!(readable_charset("utf8mb4"));
    assert!(readable_charset("UTF8MB4_general_ci"));
    assert!(readable_charset("latin1_swedish_ci"));
    assert!(!readable_charset("gbk"));
    assert!(!readable_charset("utf16"));
    assert!(!readable_charset("utf8mb4x"));
}

#[test]
fn role_and_password_changes_are_dcl() {
    assert!(classes("SET PASSWORD = PASSWORD('x')").contains(&StatementClass::Dcl));
    assert!(classes("SET ROLE admin").contains(&StatementClass::Dcl));
}
