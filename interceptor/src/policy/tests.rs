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
fn a_login_inside_a_session_is_allowed_only_by_a_rule_about_logins() {
    let who = subject("agent");
    let asked = Request::Login {
        user: "reporting",
        database: Some("appdb"),
    };
    let shipped = Policy::embedded_default().expect("the shipped default policy compiles");
    assert_eq!(
        shipped
            .evaluate_operation(&who, None, "mysql", &asked)
            .decision,
        DecisionKind::Deny,
        "no rule of the shipped default allows a change of user"
    );
    let p = policy(
        r#"
[[rule]]
name = "reads"
decision = "allow"
[rule.match]
kinds = ["sql"]
classes = ["read"]

[[rule]]
name = "pool-resets"
decision = "allow"
[rule.match]
kinds = ["login"]
"#,
    );
    let v = p.evaluate_operation(&who, None, "mysql", &asked);
    assert_eq!(v.decision, DecisionKind::Allow);
    assert_eq!(asked.canonical(), "change user reporting database appdb");
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
    let allowed = p.evaluate_operation(
        &who,
        None,
        "tcp",
        &Request::Connect {
            destination: "127.0.0.2:443",
        },
    );
    assert_eq!(allowed.decision, DecisionKind::Allow);
    let denied = p.evaluate_operation(
        &who,
        None,
        "tcp",
        &Request::Connect {
            destination: "127.0.0.3:443",
        },
    );
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
        p.evaluate_operation(
            &who,
            None,
            "tcp",
            &Request::Connect {
                destination: "127.0.0.2:80"
            }
        )
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

fn judge(p: &Policy, family: crate::command::Family, text: &str) -> (DecisionKind, Option<String>) {
    let asked = asked::Asked::parse(family, text).expect("a command");
    let v = p.evaluate_operation(&subject("agent"), Some("t"), "x", &asked.operation());
    (v.decision, v.rule)
}

const EVERY_KIND: &str = r#"
[[rule]]
name = "api-reads"
decision = "allow"
[rule.match]
methods = ["GET", "HEAD"]
hosts = ["127.0.0.2*"]
paths = ["/v1/**"]

[[rule]]
name = "api-deletes"
decision = "review"
[rule.match]
kinds = ["http"]
methods = ["DELETE"]
paths = ["/v1/items/*"]

[[rule]]
name = "tools"
decision = "allow"
[rule.match]
kinds = ["mcp"]
mcp_methods = ["tools/list"]

[[rule]]
name = "search-tool"
decision = "allow"
[rule.match]
tools = ["search"]

[[rule]]
name = "read-only-tools"
decision = "allow"
[rule.match]
read_only = true

[[rule]]
name = "unknown-tools"
decision = "review"
[rule.match]
tools = ["lookup"]
read_only = false

[[rule]]
name = "destructive-tools"
decision = "review"
[rule.match]
tools = ["delete_*", "drop_*"]

[[rule]]
name = "kube-reads"
decision = "allow"
[rule.match]
verbs = ["get", "list", "watch"]
namespaces = ["default", "staging"]

[[rule]]
name = "kube-deletes"
decision = "review"
[rule.match]
verbs = ["delete", "deletecollection"]
resources = ["pods", "deployments.apps"]

[[rule]]
name = "no-secrets"
decision = "deny"
[rule.match]
resources = ["secrets"]

[[rule]]
name = "no-exec"
decision = "deny"
[rule.match]
verbs = ["exec", "attach"]

[[rule]]
name = "shell-reads"
decision = "allow"
[rule.match]
channels = ["exec"]
programs = ["ls", "cat", "grep", "head", "tail"]

[[rule]]
name = "no-rm"
decision = "deny"
[rule.match]
programs = ["rm", "shred", "dd"]

[[rule]]
name = "ssh-unreadable"
decision = "deny"
[rule.match]
opaque = true

[[rule]]
name = "sftp-review"
decision = "review"
[rule.match]
subsystems = ["sftp"]
"#;

#[test]
fn every_kind_of_command_is_judged_by_its_own_keys_with_one_precedence() {
    use crate::command::Family::{Connect, Http, Kubernetes, Mcp, Ssh};
    let p = policy(EVERY_KIND);
    let cases = [
        (
            Http,
            "GET https://127.0.0.2/v1/items",
            DecisionKind::Allow,
            Some("api-reads"),
        ),
        (
            Http,
            "GET https://127.0.0.3/v1/items",
            DecisionKind::Deny,
            None,
        ),
        (
            Http,
            "GET https://127.0.0.2/admin",
            DecisionKind::Deny,
            None,
        ),
        (
            Http,
            "DELETE https://127.0.0.2/v1/items/7",
            DecisionKind::Review,
            Some("api-deletes"),
        ),
        // `*` stops at `/` in paths: a deeper path is not `/v1/items/*`.
        (
            Http,
            "DELETE https://127.0.0.2/v1/items/7/notes",
            DecisionKind::Deny,
            None,
        ),
        (Mcp, "tools/list", DecisionKind::Allow, Some("tools")),
        (
            Mcp,
            r#"tools/call search {"q":"x"}"#,
            DecisionKind::Allow,
            Some("search-tool"),
        ),
        (
            Mcp,
            r#"tools/call delete_customer {"id":1}"#,
            DecisionKind::Review,
            Some("destructive-tools"),
        ),
        // `read_only = true` holds for tools annotated read-only only; an annotation does not
        // lift a review rule by name.
        (
            Mcp,
            r#"tools/call [readOnlyHint] lookup {}"#,
            DecisionKind::Allow,
            Some("read-only-tools"),
        ),
        (
            Mcp,
            r#"tools/call [readOnlyHint] delete_customer {"id":1}"#,
            DecisionKind::Review,
            Some("destructive-tools"),
        ),
        (
            Mcp,
            r#"tools/call [readOnlyHint=false] lookup {}"#,
            DecisionKind::Review,
            Some("unknown-tools"),
        ),
        (
            Mcp,
            r#"tools/call lookup {}"#,
            DecisionKind::Review,
            Some("unknown-tools"),
        ),
        (
            Kubernetes,
            "get pods -n default",
            DecisionKind::Allow,
            Some("kube-reads"),
        ),
        (Kubernetes, "get pods -n prod", DecisionKind::Deny, None),
        (
            Kubernetes,
            "delete pods/web-1 -n prod",
            DecisionKind::Review,
            Some("kube-deletes"),
        ),
        (
            Kubernetes,
            "delete deployments.apps/web -n prod",
            DecisionKind::Review,
            Some("kube-deletes"),
        ),
        // Deny beats allow: secrets are refused even where reads are allowed.
        (
            Kubernetes,
            "get secrets/db -n default",
            DecisionKind::Deny,
            Some("no-secrets"),
        ),
        (
            Kubernetes,
            "exec pods/web-1 -n default",
            DecisionKind::Deny,
            Some("no-exec"),
        ),
        (
            Ssh,
            "ls -l /srv | grep x",
            DecisionKind::Allow,
            Some("shell-reads"),
        ),
        // An allow must cover every program of the line.
        (Ssh, "ls /srv; whoami", DecisionKind::Deny, None),
        (
            Ssh,
            "cat x | sudo rm -rf /srv",
            DecisionKind::Deny,
            Some("no-rm"),
        ),
        (Ssh, "/bin/rm -rf /srv", DecisionKind::Deny, Some("no-rm")),
        (Ssh, "cat $(ls)", DecisionKind::Deny, Some("ssh-unreadable")),
        // `programs` is about command lines: an allow for them never admits a shell.
        (Ssh, "@shell", DecisionKind::Deny, None),
        (
            Ssh,
            "@subsystem sftp",
            DecisionKind::Review,
            Some("sftp-review"),
        ),
        // Rules about other kinds never hold for a connection.
        (Connect, "127.0.0.1:443", DecisionKind::Deny, None),
    ];
    for (family, text, decision, rule) in cases {
        assert_eq!(
            judge(&p, family, text),
            (decision, rule.map(str::to_owned)),
            "{} {text}",
            family.as_str()
        );
    }
}

#[test]
fn identity_keys_and_kinds_alone_hold_for_every_kind_they_name() {
    use crate::command::Family::{Connect, Http, Kubernetes, Mcp, Ssh};
    let p = policy(
        r#"
[[rule]]
name = "agents-everything"
decision = "allow"
[rule.match]
users = ["agent"]

[[rule]]
name = "no-kube-for-anyone"
decision = "deny"
[rule.match]
kinds = ["kubernetes"]
"#,
    );
    for (family, text) in [
        (Http, "GET http://127.0.0.2/"),
        (Mcp, "tools/list"),
        (Ssh, "ls"),
        (Connect, "127.0.0.1:80"),
    ] {
        assert_eq!(judge(&p, family, text).0, DecisionKind::Allow, "{text}");
    }
    assert_eq!(
        judge(&p, Kubernetes, "get pods"),
        (DecisionKind::Deny, Some("no-kube-for-anyone".to_owned()))
    );
    assert_eq!(
        decide(&p, &subject("agent"), "db", "DROP TABLE t").0,
        DecisionKind::Allow
    );
}

#[test]
fn keys_given_to_the_wrong_kind_are_errors_with_their_position() {
    for (text, expected) in [
        (
            "[[rule]]\nname = \"x\"\ndecision = \"deny\"\n[rule.match]\nkinds = [\"sql\"]\nmethods = [\"DELETE\"]\n",
            ("test.toml:4:", "methods is for http commands, but kinds names \"sql\""),
        ),
        (
            "[[rule]]\nname = \"x\"\ndecision = \"deny\"\n[rule.match]\nclasses = [\"read\"]\nverbs = [\"get\"]\n",
            ("test.toml:4:", "keys for different kinds of command in one rule: classes (sql) and verbs (kubernetes)"),
        ),
        (
            "[[rule]]\nname = \"x\"\ndecision = \"deny\"\n[rule.match]\nkinds = [\"ssh\", \"http\"]\nprograms = [\"rm\"]\n",
            ("test.toml:4:", "programs is for ssh commands, but kinds names \"http\""),
        ),
        (
            "[[rule]]\nname = \"x\"\ndecision = \"deny\"\n[rule.match]\nkinds = [\"ftp\"]\n",
            ("test.toml:5:", "unknown variant `ftp`"),
        ),
        (
            "[[rule]]\nname = \"x\"\ndecision = \"deny\"\n[rule.match]\nchannels = [\"telnet\"]\n",
            ("test.toml:5:", "unknown variant `telnet`"),
        ),
        (
            "[[rule]]\nname = \"x\"\ndecision = \"deny\"\n[rule.match]\nverb = [\"get\"]\n",
            ("test.toml:5:", "unknown field `verb`"),
        ),
    ] {
        let error = match file::parse(text, Path::new("test.toml")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{text} should not load"),
        };
        assert!(
            error.starts_with(expected.0) && error.contains(expected.1),
            "{error}"
        );
    }
}

#[test]
fn mask_matches_take_no_command_keys_of_any_kind() {
    for key in [
        "kinds = [\"http\"]",
        "tools = [\"x\"]",
        "programs = [\"rm\"]",
    ] {
        let text = format!("[[mask]]\nname = \"m\"\ncolumns = [\"ssn\"]\n[mask.match]\n{key}\n");
        let source = file::parse(&text, Path::new("test.toml")).expect("parses");
        let error = Policy::compile(vec![source]).expect_err(key).to_string();
        assert!(error.contains("identity and target keys only"), "{error}");
    }
}

#[test]
fn the_default_policy_judges_every_kind() {
    use crate::command::Family::{Http, Kubernetes, Mcp, Ssh};
    let p = Policy::embedded_default().expect("the shipped default policy compiles");
    for (family, text, expected) in [
        (Http, "GET https://127.0.0.2/v1/items", DecisionKind::Allow),
        (
            Http,
            "DELETE https://127.0.0.2/v1/items/7",
            DecisionKind::Review,
        ),
        (Mcp, "tools/list", DecisionKind::Allow),
        (
            Mcp,
            r#"tools/call delete_customer {"id":1}"#,
            DecisionKind::Review,
        ),
        (Mcp, "ping", DecisionKind::Allow),
        (Mcp, "notifications/initialized", DecisionKind::Allow),
        (
            Mcp,
            r#"tools/call [readOnlyHint] search {"q":"x"}"#,
            DecisionKind::Allow,
        ),
        // Only `readOnlyHint: true` counts: false, or a destructive-only hint, is reviewed.
        (
            Mcp,
            r#"tools/call [readOnlyHint=false] search {"q":"x"}"#,
            DecisionKind::Review,
        ),
        (
            Mcp,
            r#"tools/call [destructiveHint=false, idempotentHint] search {}"#,
            DecisionKind::Review,
        ),
        (Kubernetes, "get pods -n default", DecisionKind::Allow),
        (
            Kubernetes,
            "delete pods/web-1 -n default",
            DecisionKind::Review,
        ),
        (Kubernetes, "get secrets/db -n default", DecisionKind::Allow),
        (
            Kubernetes,
            "exec pods/web-1 -n default",
            DecisionKind::Review,
        ),
        (
            Kubernetes,
            "create clusterrolebindings/x",
            DecisionKind::Deny,
        ),
        (Ssh, "ls -l /srv", DecisionKind::Allow),
        (Ssh, "rm -rf /srv", DecisionKind::Deny),
        (Ssh, "rm -f /srv/old.log", DecisionKind::Review),
        (Ssh, "@shell", DecisionKind::Review),
        (Ssh, "cat $(ls)", DecisionKind::Deny),
        (Ssh, "@forward 127.0.0.1:5432", DecisionKind::Deny),
        (Ssh, "@subsystem sftp", DecisionKind::Allow),
        (Ssh, "@sftp read /srv/x", DecisionKind::Allow),
        (Ssh, "@sftp rename /srv/x /srv/y", DecisionKind::Review),
    ] {
        assert_eq!(judge(&p, family, text).0, expected, "{text}");
    }
}

#[test]
fn the_default_policy_passes_its_cases_for_every_kind() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/tests/default-kinds.toml");
    let file = tooling::load_cases(&path).expect("the cases load");
    let results = tooling::run_cases(
        tooling::single(&path.parent().expect("dir").join("../default.toml")).expect("policy"),
        &file.cases,
    );
    assert!(results.len() >= 19);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.name, r.detail))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn an_upgrade_is_allowed_only_by_a_rule_naming_it_and_held_by_any_review() {
    use crate::command::Family::Http;
    let p = policy(
        r#"
[[rule]]
name = "reads"
decision = "allow"
[rule.match]
methods = ["GET"]

[[rule]]
name = "events-ws"
decision = "allow"
[rule.match]
paths = ["/events"]
upgrades = ["websocket"]

[[rule]]
name = "admin-review"
decision = "review"
[rule.match]
paths = ["/admin/**"]
"#,
    );
    let cases = [
        // A read rule is not about upgrades: it does not allow one.
        (
            "GET http://127.0.0.2/chat [upgrade websocket]",
            DecisionKind::Deny,
            None,
        ),
        (
            "GET http://127.0.0.2/chat",
            DecisionKind::Allow,
            Some("reads"),
        ),
        (
            "GET http://127.0.0.2/events [upgrade websocket]",
            DecisionKind::Allow,
            Some("events-ws"),
        ),
        // Another protocol than the one named.
        (
            "GET http://127.0.0.2/events [upgrade h3-demo]",
            DecisionKind::Deny,
            None,
        ),
        // `upgrades` holds only for requests asking one: a plain GET is the read rule's.
        (
            "GET http://127.0.0.2/events",
            DecisionKind::Allow,
            Some("reads"),
        ),
        // A review rule without `upgrades` still holds for an upgrade.
        (
            "GET http://127.0.0.2/admin/x [upgrade websocket]",
            DecisionKind::Review,
            Some("admin-review"),
        ),
    ];
    for (text, decision, rule) in cases {
        let (got, by) = judge(&p, Http, text);
        assert_eq!((got, by.as_deref()), (decision, rule), "{text}");
    }
    let asked = asked::Asked::parse(Http, "GET http://127.0.0.2/ws [upgrade WebSocket]")
        .expect("an upgrade request");
    assert_eq!(
        asked.operation().canonical(),
        "GET http://127.0.0.2/ws [upgrade websocket]"
    );
    assert!(asked::Asked::parse(Http, "GET http://127.0.0.2/ws [upgrade a b]").is_err());
}
