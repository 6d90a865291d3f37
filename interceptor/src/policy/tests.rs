use super::*;

fn policy(text: &str) -> Policy {
    Policy::compile(vec![
        file::parse(text, Path::new("test.toml")).expect("parse")
    ])
    .expect("compile")
}

fn subject(user: &str) -> Subject {
    Subject {
        uid: 1000,
        user: Some(user.to_owned()),
        groups: vec!["1000".to_owned(), "agents".to_owned()],
        exe: Some("/usr/bin/python3.11".to_owned()),
        unit: Some("agent.service".to_owned()),
        cgroup: Some("/interceptor/run-1".to_owned()),
        run_id: Some("run-1".to_owned()),
    }
}

fn decide(p: &Policy, who: &Subject, target: &str, sql: &str) -> (DecisionKind, Option<String>) {
    let v = p.evaluate_parsed(who, Some(target), "postgres", &sql::analyze(sql));
    (v.decision, v.rule)
}

const RULES: &str = r#"
[[rule]]
name = "reads"
decision = "allow"
[rule.match]
classes = ["read", "transaction"]

[[rule]]
name = "writes"
decision = "review"
[rule.match]
classes = ["insert", "update", "delete"]

[[rule]]
name = "drops"
decision = "deny"
[rule.match]
classes = ["ddl"]
"#;

#[test]
fn deny_beats_review_beats_allow_and_nothing_matching_denies() {
    let p = policy(RULES);
    let who = subject("agent");
    assert_eq!(decide(&p, &who, "db", "SELECT 1").0, DecisionKind::Allow);
    assert_eq!(
        decide(&p, &who, "db", "DELETE FROM t").0,
        DecisionKind::Review
    );
    assert_eq!(
        decide(&p, &who, "db", "DROP TABLE t"),
        (DecisionKind::Deny, Some("drops".to_owned()))
    );
    // Several statements: the strictest one decides.
    assert_eq!(
        decide(&p, &who, "db", "SELECT 1; DROP TABLE t").0,
        DecisionKind::Deny
    );
    // Nothing allows GRANT: no rule, deny.
    assert_eq!(
        decide(&p, &who, "db", "GRANT ALL ON t TO x"),
        (DecisionKind::Deny, None)
    );
}

#[test]
fn an_allow_must_cover_everything_the_statement_does() {
    let p = policy(RULES);
    let who = subject("agent");
    // A read hiding a delete is {read, delete}: "reads" does not cover it, "writes" catches it.
    let (d, rule) = decide(
        &p,
        &who,
        "db",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    );
    assert_eq!((d, rule.as_deref()), (DecisionKind::Review, Some("writes")));
    let scoped = policy(
        r#"
[[rule]]
name = "reporting"
decision = "allow"
[rule.match]
classes = ["read"]
tables = ["reporting.*"]
"#,
    );
    assert_eq!(
        decide(&scoped, &who, "db", "SELECT * FROM reporting.sales").0,
        DecisionKind::Allow
    );
    assert_eq!(
        decide(
            &scoped,
            &who,
            "db",
            "SELECT * FROM reporting.sales JOIN public.users u ON true"
        )
        .0,
        DecisionKind::Deny
    );
}

#[test]
fn identity_and_target_patterns_with_exclusions() {
    let p = policy(
        r#"
[[rule]]
name = "migrations"
decision = "allow"
[rule.match]
targets = ["app*"]
units = ["agent.service"]
exes = ["/usr/bin/python3*"]
groups = ["agents"]
classes = ["ddl"]

[[rule]]
name = "no-ddl-for-others"
decision = "deny"
[rule.match]
classes = ["ddl"]
units = ["!agent.service"]
"#,
    );
    let who = subject("agent");
    assert_eq!(
        decide(&p, &who, "appdb", "CREATE TABLE x (a int)").0,
        DecisionKind::Allow
    );
    assert_eq!(
        decide(&p, &who, "other", "CREATE TABLE x (a int)").0,
        DecisionKind::Deny
    );
    let mut stranger = subject("mallory");
    stranger.unit = Some("other.service".to_owned());
    assert_eq!(
        decide(&p, &stranger, "appdb", "CREATE TABLE x (a int)"),
        (DecisionKind::Deny, Some("no-ddl-for-others".to_owned()))
    );
    // Users match by name or uid.
    let by_uid =
        policy("[[rule]]\nname = \"u\"\ndecision = \"allow\"\n[rule.match]\nusers = [\"1000\"]\n");
    assert_eq!(
        decide(&by_uid, &who, "db", "SELECT 1").0,
        DecisionKind::Allow
    );
}

#[test]
fn connections_are_judged_by_connection_rules_only() {
    let p = policy(
        r#"
[[rule]]
name = "egress"
decision = "allow"
[rule.match]
kinds = ["connect"]
destinations = ["127.0.0.2:*"]

[[rule]]
name = "reads"
decision = "allow"
[rule.match]
classes = ["read"]
"#,
    );
    let who = subject("agent");
    let allowed = p.evaluate_connection(&who, None, "tcp", "127.0.0.2:443");
    assert_eq!(allowed.decision, DecisionKind::Allow);
    let denied = p.evaluate_connection(&who, None, "tcp", "127.0.0.3:443");
    assert_eq!((denied.decision, denied.rule), (DecisionKind::Deny, None));
}

#[test]
fn the_default_policy_reads_reviews_writes_and_denies_the_rest() {
    let p = Policy::embedded_default().expect("the shipped default policy compiles");
    let who = subject("agent");
    for (sql, expected) in [
        ("SELECT * FROM customers", DecisionKind::Allow),
        ("BEGIN", DecisionKind::Allow),
        ("UPDATE customers SET name = 'x'", DecisionKind::Review),
        ("INSERT INTO t VALUES (1)", DecisionKind::Review),
        ("DROP TABLE customers", DecisionKind::Deny),
        ("GRANT ALL ON customers TO public", DecisionKind::Deny),
        ("COPY t TO PROGRAM 'sh'", DecisionKind::Deny),
        ("SELECT pg_read_file('/etc/passwd')", DecisionKind::Deny),
        ("DO $$ BEGIN PERFORM 1; END $$", DecisionKind::Deny),
        ("this is not sql", DecisionKind::Deny),
    ] {
        assert_eq!(decide(&p, &who, "db", sql).0, expected, "{sql}");
    }
    assert_eq!(
        p.evaluate_connection(&who, None, "tcp", "127.0.0.2:80")
            .decision,
        DecisionKind::Allow
    );
}

#[test]
fn policy_errors_name_file_line_and_column() {
    let err = file::parse(
        "[[rule]]\nname = \"x\"\ndecision = \"maybe\"\n",
        Path::new("p.toml"),
    )
    .err()
    .expect("error");
    assert!(err.to_string().starts_with("p.toml:3:"), "{err}");
    let err = file::parse(
        "[[rule]]\nname = \"x\"\ndecision = \"allow\"\n[rule.match]\nclases = [\"read\"]\n",
        Path::new("p.toml"),
    )
    .err()
    .expect("error");
    assert!(err.to_string().starts_with("p.toml:5:"), "{err}");
    let dup = Policy::compile(vec![file::parse(
        "[[rule]]\nname = \"x\"\ndecision = \"allow\"\n[[rule]]\nname = \"x\"\ndecision = \"deny\"\n",
        Path::new("p.toml"),
    )
    .expect("parse")]);
    assert!(dup.expect_err("duplicate").to_string().contains("twice"));
}

#[test]
fn the_engine_caches_analyses_and_swaps_policies_atomically() {
    let engine = Engine::new(Policies {
        by_target: HashMap::new(),
        fallback: Arc::new(policy(RULES)),
    });
    let who = subject("agent");
    let first = engine.analyze("SELECT 1");
    assert!(
        Arc::ptr_eq(&first, &engine.analyze("SELECT 1")),
        "second analysis is cached"
    );
    assert_eq!(
        engine
            .evaluate(
                &who,
                Some("db"),
                "postgres",
                Request::Sql { text: "SELECT 1" }
            )
            .decision,
        DecisionKind::Allow
    );
    engine.replace(Policies {
        by_target: HashMap::new(),
        fallback: Arc::new(policy("[[rule]]\nname = \"none\"\ndecision = \"deny\"\n")),
    });
    assert_eq!(
        engine
            .evaluate(
                &who,
                Some("db"),
                "postgres",
                Request::Sql { text: "SELECT 1" }
            )
            .decision,
        DecisionKind::Deny
    );
}

/// The shipped evasion corpus (`policies/tests/default-cases.toml`).
fn corpus() -> Vec<tooling::Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/tests/default-cases.toml");
    tooling::load_cases(&path).expect("cases parse").cases
}

/// Runs `cases` through one engine with the shipped default policy and asserts that every case
/// passes, except those named `variant` (judged only for their effect on the engine's caches).
fn assert_default_policy_passes(cases: &[tooling::Case]) {
    let policies = Policies {
        by_target: HashMap::new(),
        fallback: Arc::new(Policy::embedded_default().expect("default")),
    };
    let failures: Vec<String> = tooling::run_cases(policies, cases)
        .into_iter()
        .filter(|r| r.name != "variant" && !r.passed)
        .map(|r| format!("{}: {}", r.name, r.detail))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_default_policy_sees_through_the_evasion_corpus() {
    let cases = corpus();
    assert!(cases.len() >= 60, "the corpus keeps at least 60 cases");
    assert_default_policy_passes(&cases);
}

const MASKS: &str = r#"
[[rule]]
name = "all"
decision = "allow"

[[mask]]
name = "ssn"
columns = ["customers.ssn"]
strategy = "hash"
deny_transformed = true
[mask.match]
users = ["alice"]

[[mask]]
name = "contact"
detectors = ["email", "secrets"]
strategy = "partial"
[mask.match]
targets = ["appdb"]
"#;

#[test]
fn masks_apply_by_identity_and_target() {
    let p = policy(MASKS);
    let key = Some(Arc::new(HashKey::from_bytes(&[1; 32])));
    let alice = p
        .masking(&subject("alice"), Some("appdb"), "postgres", key.clone(), 0)
        .expect("alice is masked");
    assert!(alice.wants_sources());
    // bob: only the target's detectors, no column rules.
    let bob = p
        .masking(&subject("bob"), Some("appdb"), "postgres", key.clone(), 0)
        .expect("bob is masked");
    assert!(!bob.wants_sources());
    assert_eq!(bob.mask_text("x bob@example.com").0, "x ***@******e.com");
    // Elsewhere, nothing applies to bob.
    assert!(p
        .masking(&subject("bob"), Some("other"), "postgres", key, 0)
        .is_none());
}

#[test]
fn deny_transformed_refuses_functions_on_masked_columns_only_for_its_subjects() {
    let p = policy(MASKS);
    let (d, rule) = decide(
        &p,
        &subject("alice"),
        "appdb",
        "SELECT concat(ssn) FROM customers",
    );
    assert_eq!((d, rule.as_deref()), (DecisionKind::Deny, Some("mask:ssn")));
    let (d, _) = decide(
        &p,
        &subject("alice"),
        "appdb",
        "SELECT id FROM customers WHERE ssn LIKE '1%'",
    );
    assert_eq!(d, DecisionKind::Deny);
    let (d, _) = decide(&p, &subject("alice"), "appdb", "SELECT ssn FROM customers");
    assert_eq!(d, DecisionKind::Allow);
    let (d, _) = decide(
        &p,
        &subject("bob"),
        "appdb",
        "SELECT concat(ssn) FROM customers",
    );
    assert_eq!(d, DecisionKind::Allow);
}

#[test]
fn mask_entries_are_validated() {
    for (text, needle) in [
        (
            "[[mask]]\nname = \"m\"\ndetectors = [\"nope\"]",
            "unknown detector",
        ),
        ("[[mask]]\nname = \"m\"", "needs `columns`"),
        (
            "[[mask]]\nname = \"m\"\ncolumns = [\"a\"]\n[mask.match]\nclasses = [\"read\"]",
            "identity and target keys only",
        ),
        (
            "[[mask]]\nname = \"m\"\ncolumns = [\"a\"]\n[[mask]]\nname = \"m\"\ncolumns = [\"b\"]",
            "used twice",
        ),
        (
            "[[mask]]\nname = \"m\"\ncolumns = [\"a\"]\nstrategy = \"shred\"",
            "shred",
        ),
    ] {
        let err = file::parse(text, Path::new("t.toml"))
            .map_err(|e| e.to_string())
            .and_then(|s| Policy::compile(vec![s]).map_err(|e| e.to_string()))
            .err()
            .unwrap_or_default();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn the_default_policy_masks_personal_data_and_secrets() {
    let p = Policy::embedded_default().expect("default");
    let m = p
        .masking(&subject("agent"), Some("appdb"), "postgres", None, 0)
        .expect("default masks");
    let (text, counts) = m.mask_text("card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE");
    assert_eq!(
        text,
        "card **** **** **** 1111, key [REDACTED:aws_access_key]"
    );
    assert_eq!(counts.len(), 2);
}

fn engine_with(text: &str) -> Engine {
    Engine::new(Policies {
        by_target: HashMap::new(),
        fallback: Arc::new(policy(text)),
    })
}

#[test]
fn texts_differing_only_in_literals_share_one_analysis() {
    let engine = engine_with(RULES);
    let first = engine.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 42");
    let second = engine.analyze("SELECT  abalance FROM pgbench_accounts WHERE aid = 7 -- note");
    assert_eq!(
        first.statements[0].tables_read,
        second.statements[0].tables_read
    );
    assert_eq!(first.statements[0].classes, second.statements[0].classes);
    assert_eq!(
        second.statements[0].text, "SELECT  abalance FROM pgbench_accounts WHERE aid = 7 -- note",
        "the shared analysis carries the text it stands for"
    );
    let update = "UPDATE t SET name = 'x' WHERE id = 1";
    engine.analyze(update);
    let other = engine.analyze("UPDATE t SET name = 'it''s' WHERE id = 99");
    assert!(other.statements[0]
        .classes
        .contains(&sql::StatementClass::Update));
    assert_eq!(other.statements[0].tables_written, ["t".to_owned()].into());
}

#[test]
fn names_and_quoting_are_part_of_the_shape_key() {
    let key = |s: &str| pg_grammar::shape_key(s).expect("scans");
    assert_eq!(
        key("SELECT a FROM t WHERE id = 1"),
        key("SELECT a FROM t WHERE id = 2")
    );
    assert_eq!(key("SELECT 'a'"), key("SELECT /* c */ 'b'"));
    assert_eq!(key("SELECT 'a' -- c\n"), key("SELECT  'b'"));
    assert_ne!(key("SELECT a FROM t"), key("SELECT ssn FROM t"));
    assert_ne!(key("SELECT \"a\" FROM t"), key("SELECT 'a' FROM t"));
    assert_ne!(key("SELECT a FROM t"), key("SELECT \"A\" FROM t"));
    assert_ne!(
        key("SELECT 1"),
        key("SELECT 1.5"),
        "the kind of a constant counts"
    );
    assert_ne!(
        key("SELECT 'x\\' , 'y'"),
        key("SELECT 'x'"),
        "strings end where the server's scanner ends them"
    );
    assert_ne!(
        key("SELECT a FROM t"),
        key("SELECT a FROM t; DELETE FROM t")
    );
    assert!(pg_grammar::shape_key("SELECT 'unterminated").is_none());
    // Only plainly written values are left out (see `plain_constant`).
    assert_eq!(key("SELECT 'it''s'"), key("SELECT ''"));
    for (a, b) in [
        ("SELECT U&'abcd'", "SELECT U&'\\004'"),
        ("SELECT E'a'", "SELECT E'b'"),
        ("SELECT $$a$$", "SELECT $$b$$"),
        ("SELECT 'a'", "SELECT 'a'\n'b'"),
        ("SELECT 16", "SELECT 0x10"),
        ("SELECT 1000", "SELECT 1_000"),
        ("SELECT B'1'", "SELECT B'2'"),
    ] {
        assert_ne!(key(a), key(b), "{a:?} and {b:?}");
    }
}

#[test]
fn texts_the_analysis_rejects_never_borrow_a_shared_analysis() {
    // Found by the sql_policy fuzz target: the invalid escape passed PostgreSQL's scanner
    // with the same shape as the valid one before, and was allowed with its analysis.
    let engine = engine_with(RULES);
    let who = subject("agent");
    for (text, expected) in [
        ("SELECT U&'abcd'", DecisionKind::Allow),
        ("SELECT U&'\\004'", DecisionKind::Deny),
    ] {
        let verdict = engine.evaluate(&who, Some("db"), "postgres", Request::Sql { text });
        assert_eq!(verdict.decision, expected, "{text}");
    }
}

#[test]
fn analyses_that_read_a_literal_are_never_shared() {
    let engine = engine_with(RULES);
    let who = subject("agent");
    let decide = |sql: &str| {
        engine
            .evaluate(&who, Some("db"), "postgres", Request::Sql { text: sql })
            .decision
    };
    // EXPLAIN without ANALYZE only plans; with it, the DELETE runs.
    assert!(!engine
        .analyze("EXPLAIN (ANALYZE 0) DELETE FROM t")
        .statements[0]
        .classes
        .contains(&sql::StatementClass::Delete));
    assert!(engine
        .analyze("EXPLAIN (ANALYZE 1) DELETE FROM t")
        .statements[0]
        .classes
        .contains(&sql::StatementClass::Delete));
    // The setting's name decides whether set_config changes the role.
    let harmless = engine.analyze("SELECT set_config('application_name', 'x', false)");
    assert!(harmless.reads_literals);
    assert!(!shareable(&harmless));
    let role = engine.analyze("SELECT set_config('role', 'x', false)");
    assert!(
        role.statements[0]
            .dangerous
            .iter()
            .any(|d| d.starts_with("role change")),
        "{:?}",
        role.statements[0]
    );
    assert_eq!(decide("SELECT 1"), DecisionKind::Allow);
}

/// Every case of the evasion corpus still gets its expected decision when a variant with
/// other literal values (digits and string contents changed) was judged just before it by the
/// same engine, so any analysis that depended on a literal would be served from the cache.
#[test]
fn the_evasion_corpus_holds_with_literal_variants_judged_first() {
    let strings = regex::Regex::new(r"'[^']*'").expect("regex");
    let mut primed = Vec::new();
    for case in corpus() {
        if let Some(sql) = &case.sql {
            let variant: String = sql
                .chars()
                .map(|c| match c {
                    '0' => '1',
                    '1'..='9' => '0',
                    c => c,
                })
                .collect();
            let variant = strings.replace_all(&variant, "'x'").into_owned();
            primed.push(tooling::Case {
                name: Some("variant".to_owned()),
                sql: Some(variant),
                ..case.clone()
            });
        }
        primed.push(case);
    }
    assert_default_policy_passes(&primed);
}

/// The differential test over the evasion corpus: PostgreSQL's own grammar and the analysis
/// agree on every case, or the case is refused.
#[test]
fn postgresql_and_the_analysis_agree_on_the_evasion_corpus() {
    for case in corpus() {
        let Some(text) = &case.sql else { continue };
        let unchecked = sql::analyze_unchecked(text);
        if let Err(objection) = pg_grammar::check(text, &unchecked.statements) {
            let checked = sql::analyze(text);
            assert!(
                checked.has_unknown() || checked.refusal.is_some(),
                "{text}: {objection} but the text is not refused"
            );
            assert_eq!(case.expect, DecisionKind::Deny, "{text}: {objection}");
        }
    }
}

#[test]
fn texts_without_tokens_have_no_shape_key() {
    // libpg_query hands back a null token array for them (found by the sql_policy fuzz target:
    // a debug build aborted on an empty Query).
    for text in ["", " ", "\n\t\r\x0c\x0b "] {
        assert_eq!(pg_grammar::shape_key(text), None, "{text:?}");
    }
    assert!(pg_grammar::shape_key("-- only a comment").is_some());
}
