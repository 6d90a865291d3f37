//! Masking against a real PostgreSQL seeded with personal data and secrets: the same SELECTs
//! through psql (text), psycopg (text) and asyncpg (binary) come back masked as the policy
//! says; invalid look-alikes are left alone; the usual bypasses (`concat(ssn)`, `ssn || ''`,
//! `upper(email)`, subqueries, views, `row_to_json`, `array_agg`, `json_agg`) are masked by
//! content; and neither the journal nor the daemon's logs hold a seeded value in the clear.
//! Card numbers stored as numbers come back NULL in text and binary formats, letters glued
//! to a value do not hide it, and NOTIFY payloads reach a LISTENing agent masked.

use std::time::Duration;

use interceptor_tests::*;

const RUN: Duration = Duration::from_secs(240);

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
const PEM_BODY: &str = "MIIEowIBAAKCAQEAtestOnlyNotARealKey0123456789abcdefGHIJ";
const AWS: &str = "AKIAIOSFODNN7EXAMPLE";

/// Values that must never reach the client or the journal in the clear.
const RAW: &[&str] = &[
    "alice@example.com",
    "bob.builder@example.org",
    "123-45-6789",
    "234-56-7890",
    "4111 1111 1111 1111",
    "5500000000000004",
    "ZK-7781",
    AWS,
    JWT,
    PEM_BODY,
    "GB82 WEST 1234 5698 7654 32",
];

/// Look-alikes that fail validation: they must come back unchanged.
const INVALID: &[&str] = &["4111 1111 1111 1112", "000-12-3456", "666-01-2345"];

fn seed(pg: &PgServer) {
    let pem = format!("-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----");
    pg.psql_db(
        "appdb",
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, \
               card text, card_bad text, ssn_bad text, notes text, secret text, doc jsonb, iban text);\n\
             INSERT INTO customers VALUES\n\
             (1, 'Alice Example', 'alice@example.com', '123-45-6789', '4111 1111 1111 1111', \
              '4111 1111 1111 1112', '000-12-3456', 'VIP; code ZK-7781', '{AWS}', \
              '{{\"card\": 5500000000000004, \"mail\": \"alice@example.com\"}}', 'GB82 WEST 1234 5698 7654 32'),\n\
             (2, 'Bob Builder', 'bob.builder@example.org', '234-56-7890', '5500000000000004', \
              '1234567812345678', '666-01-2345', 'call back ZK-7781', '{JWT}', '{{\"n\": 1}}', 'none'),\n\
             (3, 'Carol Same', 'carol@example.net', '123-45-6789', 'n/a', 'n/a', 'n/a', 'ZK-7781', \
              '{pem}', null, null);\n\
             CREATE VIEW customer_view AS SELECT id, name, email AS contact FROM customers;\n\
             GRANT SELECT ON customers, customer_view TO PUBLIC;"
        ),
    );
}

/// The policy of these tests: allow everything, mask `notes` by column (redact), `ssn` by
/// column (hash), personal data by content (partial) and secrets by content (redact).
fn policy(extra: &str) -> String {
    format!(
        r#"
[[rule]]
name = "everything"
decision = "allow"

[[mask]]
name = "notes"
columns = ["customers.notes"]
strategy = "redact"

[[mask]]
name = "ssn-column"
columns = ["*.ssn"]
strategy = "hash"
{extra}

[[mask]]
name = "pii"
detectors = ["credit_card", "ssn", "email", "iban"]
strategy = "partial"

[[mask]]
name = "secrets"
detectors = ["secrets"]
strategy = "redact"
"#
    )
}

/// A config whose target logs in with credentials (so the catalog resolves table columns)
/// and keeps 3 sample rows per result.
fn config(pg: &PgServer, policy_text: &str) -> TempConfig {
    let cfg = TempConfig::new("");
    let secret = write_secret(&cfg, "secret", SCRAM_PASSWORD);
    let policy_path = cfg.dir().join("policy.toml");
    std::fs::write(&policy_path, policy_text).expect("write policy");
    let text = pg_config_text(
        &cfg,
        pg.port(),
        &format!(
            "policy = \"{}\"\n[target.credentials]\nuser = \"scram_user\"\npassword_file = \"{}\"\n",
            policy_path.display(),
            secret.display()
        ),
    )
    .replacen("[state]", "result_sample_rows = 3\n\n[state]", 1);
    cfg.write(&text);
    cfg
}

const CLIENT: &str = r#"
import asyncio, asyncpg, psycopg, subprocess
H, P = ARGS["host"], int(ARGS["port"])
dsn = conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)
PLAIN = "SELECT id, name, email, ssn, card, card_bad, ssn_bad, notes, secret, doc::text AS doc, iban FROM customers ORDER BY id"
BYPASS = {
    "concat": "SELECT concat(ssn) FROM customers ORDER BY id",
    "concat_op": "SELECT ssn || '' FROM customers ORDER BY id",
    "upper": "SELECT upper(email) FROM customers ORDER BY id",
    "subquery": "SELECT x FROM (SELECT ssn AS x, email AS y FROM customers) s ORDER BY x",
    "alias": "SELECT notes AS harmless FROM customers ORDER BY id",
    "view": "SELECT contact FROM customer_view ORDER BY id",
    "row_to_json": "SELECT row_to_json(t) FROM customers t ORDER BY id",
    "array_agg": "SELECT array_agg(email) FROM customers",
    "json_agg": "SELECT json_agg(t) FROM customers t",
    "jsonb": "SELECT doc FROM customers ORDER BY id",
}
res = {"text": {}, "binary": {}}
with psycopg.connect(dsn, autocommit=True) as conn:
    res["plain"] = [list(r) for r in conn.execute(PLAIN).fetchall()]
    for k, q in BYPASS.items():
        res["text"][k] = [[str(v) for v in r] for r in conn.execute(q).fetchall()]
    # A literal in the statement: forwarded as written, masked in the journal.
    res["literal"] = conn.execute("SELECT 'dave@example.com' = 'x'").fetchone()[0]
    # The server quotes values in errors: masked on the way to the client.
    try:
        conn.execute("SELECT 'erin@example.com'::int")
    except psycopg.Error as e:
        res["error"] = str(e)
    # Pipeline mode: several statements' Parse/Bind/Describe/Execute before one Sync.
    with conn.pipeline():
        cur1 = conn.execute("SELECT email FROM customers WHERE id = %s", (1,))
        cur2 = conn.execute("SELECT ssn, card FROM customers WHERE id = %s", (2,), binary=True)
    res["pipeline"] = [str(v) for v in cur1.fetchone()] + [str(v) for v in cur2.fetchone()]
    # A named server-side cursor fetched in several rounds (FETCH through simple queries).
    with conn.transaction():
        with conn.cursor(name="c1") as named:
            named.execute("SELECT email FROM customers ORDER BY id")
            res["named_cursor"] = [str(r[0]) for r in named.fetchmany(2)] + [str(r[0]) for r in named.fetchall()]
    copy = []
    with conn.cursor().copy("COPY (SELECT email, card FROM customers ORDER BY id) TO STDOUT") as cp:
        for row in cp:
            copy.append(bytes(row).decode())
    res["copy"] = copy

async def binary():
    c = await asyncpg.connect(host=H, port=P, user="agent", database="appdb")
    out = {}
    out["plain"] = [[None if v is None else str(v) for v in r.values()] for r in await c.fetch(PLAIN)]
    for k, q in BYPASS.items():
        out[k] = [[None if v is None else str(v) for v in r.values()] for r in await c.fetch(q)]
    # A prepared statement executed again: its description came once, at prepare time.
    st = await c.prepare("SELECT email, ssn FROM customers WHERE id = $1")
    out["prepared"] = [[str(v) for v in (await st.fetchrow(i)).values()] for i in (1, 2, 1)]
    # A cursor fetching one row per Execute: PortalSuspended between them, no new description.
    async with c.transaction():
        out["cursor"] = [str(r[0]) async for r in c.cursor("SELECT email FROM customers ORDER BY id", prefetch=1)]
    await c.close()
    # Without a statement cache (the usual setting behind pgbouncer) asyncpg prepares the
    # unnamed statement and describes it in one Sync, then binds and executes it in the next.
    n = await asyncpg.connect(host=H, port=P, user="agent", database="appdb", statement_cache_size=0)
    out["nocache"] = [[None if v is None else str(v) for v in r.values()] for r in await n.fetch(PLAIN)]
    out["nocache_args"] = [[str(v) for v in (await n.fetchrow("SELECT email, ssn FROM customers WHERE id = $1", i)).values()] for i in (1, 2, 1)]
    await n.close()
    return out
res["binary"] = asyncio.run(binary())
psql = subprocess.run([ARGS["psql"], "-X", "-A", "-t", "-F", "|", "-c", PLAIN,
                       "host=%s port=%d dbname=appdb user=agent sslmode=disable" % (H, P)],
                      capture_output=True, text=True, timeout=60)
res["psql"] = {"rc": psql.returncode, "out": psql.stdout, "err": psql.stderr}
report(**res)
"#;

fn args(pg: &PgServer) -> Vec<String> {
    vec![json!({
        "host": pg_dial_host(),
        "port": pg.port(),
        "psql": psql_bin().display().to_string(),
    })
    .to_string()]
}

fn assert_clean(what: &str, text: &str) {
    for raw in RAW {
        assert!(
            !text.contains(raw),
            "{what} holds {raw:?} in the clear:\n{text}"
        );
    }
}

#[test]
fn personal_data_and_secrets_are_masked_for_every_client() {
    if !require_root() {
        return;
    }
    let pg = PgServer::start();
    seed(&pg);
    let cfg = config(&pg, &policy(""));
    let out = run_venv_python_exec(&cfg, None, CLIENT, &args(&pg), RUN);
    assert!(out.success(), "client failed\n{}", out.describe());
    let r = out.json();

    // Nothing seeded reaches any client in the clear: psycopg, asyncpg, psql, COPY, errors.
    assert_clean("the client's results", &r.to_string());
    assert_eq!(r["psql"]["rc"], json!(0), "{}", pretty(&r["psql"]));

    let plain = &r["plain"];
    let row = |i: usize, c: usize| plain[i][c].as_str().unwrap_or_default().to_owned();
    // Content detectors, partial strategy: last 4 kept, punctuation kept.
    assert_eq!(row(0, 2), "*****@******e.com");
    assert_eq!(row(0, 4), "**** **** **** 1111");
    // Column rule on notes: redacted whole, whatever it holds.
    assert_eq!(row(0, 7), "[REDACTED]");
    // Column rule on ssn: keyed hash, equal for equal values, different otherwise.
    let (h1, h2, h3) = (row(0, 3), row(1, 3), row(2, 3));
    assert!(h1.starts_with("hash:"), "{h1}");
    assert_eq!(h1, h3, "equal SSNs must hash equally");
    assert_ne!(h1, h2, "different SSNs must hash differently");
    // Secrets, redact strategy.
    assert_eq!(row(0, 8), "[REDACTED:aws_access_key]");
    assert_eq!(row(1, 8), "[REDACTED:jwt]");
    assert!(
        row(2, 8).contains("[REDACTED:private_key]"),
        "{}",
        row(2, 8)
    );
    // False-positive control: invalid look-alikes are untouched.
    assert_eq!(row(0, 5), "4111 1111 1111 1112");
    assert_eq!(row(0, 6), "000-12-3456");
    assert_eq!(row(1, 6), "666-01-2345");
    assert_eq!(row(1, 5), "1234567812345678");
    // NULL stays NULL and rows are all there.
    assert_eq!(plain.as_array().map(Vec::len), Some(3));
    assert!(plain[2][9].is_null(), "{}", pretty(plain));

    // psql (text) and asyncpg (binary) see the same masked values as psycopg.
    let psql = r["psql"]["out"].as_str().unwrap_or_default();
    assert!(
        psql.contains("*****@******e.com") && psql.contains("[REDACTED]"),
        "{psql}"
    );
    for invalid in INVALID {
        assert!(r.to_string().contains(invalid), "{invalid} was masked");
    }
    let binary = &r["binary"]["plain"];
    for c in [2, 3, 4, 7, 8] {
        assert_eq!(
            binary[0][c],
            plain[0][c],
            "asyncpg column {c}: {}",
            pretty(binary)
        );
    }
    // psycopg's pipeline mode and a named cursor see the same masked values.
    assert_eq!(
        r["pipeline"],
        json!([row(0, 2), row(1, 3), row(1, 4)]),
        "{}",
        pretty(&r)
    );
    assert_eq!(
        r["named_cursor"],
        json!([row(0, 2), row(1, 2), row(2, 2)]),
        "{}",
        pretty(&r)
    );
    assert_eq!(
        r["binary"]["nocache"], r["binary"]["plain"],
        "asyncpg without a statement cache gets the same masked values"
    );
    assert_eq!(r["binary"]["nocache_args"], r["binary"]["prepared"]);
    assert_eq!(r["binary"]["prepared"][0], r["binary"]["prepared"][2]);
    assert_eq!(
        r["binary"]["cursor"],
        json!([
            "*****@******e.com",
            "***.*******@******e.org",
            "*****@******e.net"
        ])
    );
    assert_eq!(r["binary"]["prepared"][0][0], json!("*****@******e.com"));

    // Bypasses: masked by content (or by resolved source, for aliases and subqueries).
    assert_eq!(
        r["text"]["alias"][0][0],
        json!("[REDACTED]"),
        "alias of a masked column"
    );
    assert!(r["text"]["subquery"][0][0]
        .as_str()
        .is_some_and(|s| s.starts_with("hash:")));
    assert_eq!(r["text"]["concat"][0][0], json!("***-**-6789"));
    // JSON stays valid JSON for the client's parser.
    // (psycopg parsed the text jsonb itself, so it was valid; asyncpg hands binary jsonb over
    // as text, checked here.)
    assert!(r["text"]["jsonb"][0][0]
        .as_str()
        .is_some_and(|d| d.contains("'************0004'")));
    let doc = r["binary"]["jsonb"][0][0].as_str().unwrap_or_default();
    assert!(serde_json::from_str::<Value>(doc).is_ok(), "{doc}");
    // Server errors quoting a value are masked too.
    // (The first line is the server's message; psycopg adds the query it sent below it.)
    let error = r["error"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default();
    assert!(
        error.contains("e.com") && !error.contains("erin@example.com"),
        "{error}"
    );
    assert_eq!(r["copy"].as_array().map(Vec::len), Some(3));

    // The journal: counts per rule and detector, masked samples, masked statement literals,
    // and no seeded value anywhere in its files or in the daemon's output.
    let journal = journal_bytes(&cfg);
    for raw in RAW.iter().chain(&["dave@example.com", "erin@example.com"]) {
        assert!(
            !bytes_contain(&journal, raw.as_bytes()),
            "the journal holds {raw:?}"
        );
    }
    assert_clean("the daemon's output", &out.stderr);
    let run_id = r["run_id"].as_str().unwrap_or_default();
    let sessions = wait_sessions(&cfg, Some(run_id), Duration::from_secs(15), |rows| {
        rows.iter().all(session_finished) && rows.len() >= 3
    });
    let mut counted = std::collections::BTreeMap::<String, u64>::new();
    let mut samples = 0;
    let mut statements = String::new();
    for s in &sessions {
        let show = session_show(&cfg, s["id"].as_i64().unwrap_or_default());
        for e in show["events"].as_array().into_iter().flatten() {
            statements.push_str(e["statement"].as_str().unwrap_or_default());
            if let Some(m) = e["result"]["masked"].as_object() {
                for (k, n) in m {
                    *counted.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
            }
            if e["result"]["sample"].is_array() {
                samples += 1;
            }
        }
    }
    for key in [
        "rule:notes",
        "rule:ssn-column",
        "detector:email",
        "detector:credit_card",
        "detector:jwt",
    ] {
        assert!(
            counted.get(key).is_some_and(|n| *n > 0),
            "no count for {key}: {counted:?}"
        );
    }
    assert!(samples > 0, "no result sample was kept");
    assert!(statements.contains("e.com' = 'x'"), "{statements}");
}

/// A card number stored as numbers (row 1), with a Luhn-invalid control (row 2).
fn seed_numbers(pg: &PgServer) {
    pg.psql_db(
        "appdb",
        "CREATE TABLE payments (id int PRIMARY KEY, n_bigint bigint, n_numeric numeric, \
           n_float float8, n_scaled numeric(20,2));\n\
         INSERT INTO payments VALUES\n\
         (1, 4111111111111111, 4111111111111111, 4111111111111111, 4111111111111111),\n\
         (2, 4111111111111112, 4111111111111112, 4111111111111112, 4111111111111112);\n\
         GRANT SELECT ON payments TO PUBLIC;",
    );
}

const NUMBERS_CLIENT: &str = r#"
import asyncio, asyncpg, psycopg
H, P = ARGS["host"], int(ARGS["port"])
dsn = conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)
NUMBERS = "SELECT n_bigint, n_numeric, n_float, n_scaled FROM payments ORDER BY id"
ARRAYS = "SELECT array_agg(n_bigint ORDER BY id), array_agg(n_float ORDER BY id) FROM payments"
GLUED = {
    "concat": "SELECT 'x' || n_bigint || 'x' FROM payments ORDER BY id",
    "format": "SELECT format('id%sz', n_bigint) FROM payments ORDER BY id",
    "ssn": "SELECT 'a' || ssn || 'b', 'a' || ssn_bad || 'b' FROM customers ORDER BY id",
    "card_text": "SELECT 'x' || card || 'x', 'x' || card_bad || 'x' FROM customers ORDER BY id",
    "email": "SELECT 'x' || email || '1' FROM customers ORDER BY id",
    "iban": "SELECT 'x' || iban || 'x' FROM customers WHERE id = 1",
}
PAYLOAD = "paid 4111111111111111 by alice@example.com; ref 4111111111111112"
def show(rows):
    return [[None if v is None else str(v) for v in r] for r in rows]
res = {}
with psycopg.connect(dsn, autocommit=True) as conn:
    res["psycopg_text"] = show(conn.execute(NUMBERS).fetchall())
    res["psycopg_binary"] = show(conn.execute(NUMBERS, binary=True).fetchall())
    res["psycopg_arrays"] = show(conn.execute(ARRAYS, binary=True).fetchall())
    res["glued"] = {k: show(conn.execute(q).fetchall()) for k, q in GLUED.items()}
# LISTEN/NOTIFY: the agent listens on one connection, a second one notifies; both go
# through the gateway.
with psycopg.connect(dsn, autocommit=True) as listener, \
        psycopg.connect(dsn, autocommit=True) as sender:
    listener.execute("LISTEN payments")
    sender.execute("NOTIFY payments, '%s'" % PAYLOAD)
    res["psycopg_notify"] = [[n.channel, n.payload]
                             for n in listener.notifies(timeout=15, stop_after=1)]

async def binary():
    c = await asyncpg.connect(host=H, port=P, user="agent", database="appdb")
    out = {"numbers": show(await c.fetch(NUMBERS)), "arrays": show(await c.fetch(ARRAYS))}
    got = asyncio.get_running_loop().create_future()
    await c.add_listener("payments", lambda conn, pid, channel, payload:
                         got.done() or got.set_result([channel, payload]))
    await c.execute("SELECT pg_notify('payments', $1)", PAYLOAD)
    out["notify"] = await asyncio.wait_for(got, 15)
    await c.close()
    return out
res["asyncpg"] = asyncio.run(binary())
report(**res)
"#;

#[test]
fn numbers_glued_values_and_notify_payloads_are_masked() {
    if !require_root() {
        return;
    }
    let pg = PgServer::start();
    seed(&pg);
    seed_numbers(&pg);
    let cfg = config(&pg, &policy(""));
    let out = run_venv_python_exec(&cfg, None, NUMBERS_CLIENT, &args(&pg), RUN);
    assert!(out.success(), "client failed\n{}", out.describe());
    let r = out.json();

    // A card stored as bigint, numeric, float8 or numeric(20,2) comes back NULL in text
    // (psycopg), binary (psycopg binary=True, asyncpg) and inside binary arrays; the
    // Luhn-invalid control comes back as stored.
    let control = json!([
        "4111111111111112",
        "4111111111111112",
        "4111111111111112.0",
        "4111111111111112.00"
    ]);
    for client in ["psycopg_text", "psycopg_binary"] {
        assert_eq!(
            r[client][0],
            json!([null, null, null, null]),
            "{client}: {}",
            pretty(&r)
        );
        assert_eq!(r[client][1], control, "{client}: {}", pretty(&r));
    }
    assert_eq!(
        r["asyncpg"]["numbers"][0],
        json!([null, null, null, null]),
        "{}",
        pretty(&r)
    );
    assert_eq!(r["asyncpg"]["numbers"][1], control, "{}", pretty(&r));
    for arrays in [&r["psycopg_arrays"][0], &r["asyncpg"]["arrays"][0]] {
        assert_eq!(arrays, &json!([null, null]), "{}", pretty(&r));
    }

    // Letters glued on either side: masked by content (partial keeps the last four and the
    // glue); the invalid look-alikes with the same glue are untouched.
    let glued = &r["glued"];
    assert_eq!(
        glued["concat"],
        json!([["x************1111x"], ["x4111111111111112x"]]),
        "{}",
        pretty(glued)
    );
    assert_eq!(
        glued["format"],
        json!([["id************1111z"], ["id4111111111111112z"]]),
        "{}",
        pretty(glued)
    );
    assert_eq!(
        glued["ssn"][0],
        json!(["a***-**-6789b", "a000-12-3456b"]),
        "{}",
        pretty(glued)
    );
    assert_eq!(
        glued["ssn"][1][1],
        json!("a666-01-2345b"),
        "{}",
        pretty(glued)
    );
    assert_eq!(
        glued["card_text"][0],
        json!(["x**** **** **** 1111x", "x4111 1111 1111 1112x"]),
        "{}",
        pretty(glued)
    );
    assert_eq!(
        glued["email"][0],
        json!(["******@******e.com1"]),
        "{}",
        pretty(glued)
    );
    let iban = glued["iban"][0][0].as_str().unwrap_or_default();
    assert!(iban.starts_with("x****") && iban.ends_with("32x"), "{iban}");

    // NOTIFY: the payload reaches the listening agent masked, the channel unchanged.
    let masked = "paid ************1111 by *****@******e.com; ref 4111111111111112";
    assert_eq!(
        r["psycopg_notify"],
        json!([["payments", masked]]),
        "{}",
        pretty(&r)
    );
    assert_eq!(
        r["asyncpg"]["notify"],
        json!(["payments", masked]),
        "{}",
        pretty(&r)
    );

    // Nothing of the valid values reached the client, the journal or the daemon's output.
    let seen = r.to_string();
    for raw in ["4111111111111111", "alice@example.com", "123-45-6789"] {
        assert!(
            !seen.contains(raw),
            "the client got {raw:?}:\n{}",
            pretty(&r)
        );
        assert!(!out.stderr.contains(raw), "the daemon logged {raw:?}");
        assert!(
            !bytes_contain(&journal_bytes(&cfg), raw.as_bytes()),
            "the journal holds {raw:?}"
        );
    }
}

#[test]
fn functions_on_masked_columns_can_be_denied() {
    if !require_root() {
        return;
    }
    let pg = PgServer::start();
    seed(&pg);
    let cfg = config(
        &pg,
        &policy("\n[[mask]]\nname = \"no-ssn-functions\"\ncolumns = [\"ssn\"]\ndeny_transformed = true\n"),
    );
    let code = r#"
import psycopg
H, P = ARGS["host"], int(ARGS["port"])
dsn = conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)
res = {}
with psycopg.connect(dsn, autocommit=True) as conn:
    for k, q in {"concat": "SELECT concat(ssn) FROM customers",
                 "substring": "SELECT id FROM customers WHERE substring(ssn, 1, 1) = '1'",
                 "plain": "SELECT ssn FROM customers ORDER BY id"}.items():
        try:
            res[k] = [list(r) for r in conn.execute(q).fetchall()]
        except psycopg.Error as e:
            res[k] = {"sqlstate": e.sqlstate, "message": str(e)}
report(**res)
"#;
    let out = run_venv_python_exec(&cfg, None, code, &args(&pg), RUN);
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    for k in ["concat", "substring"] {
        assert_eq!(r[k]["sqlstate"], json!("42501"), "{k}: {}", pretty(&r));
        assert!(
            r[k]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no-ssn-functions")),
            "{k}: {}",
            pretty(&r)
        );
    }
    assert_eq!(
        r["plain"].as_array().map(Vec::len),
        Some(3),
        "{}",
        pretty(&r)
    );
}

#[test]
fn a_million_rows_mask_end_to_end() {
    if !require_root() {
        return;
    }
    let pg = PgServer::start();
    let cfg = config(&pg, &policy(""));
    let code = r#"
import psycopg
H, P = ARGS["host"], int(ARGS["port"])
dsn = conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)
n = masked = nulls = 0
with psycopg.connect(dsn, autocommit=True) as conn:
    cur = conn.cursor()
    cur.execute("SELECT i, 'user' || i || '@example.com', CASE WHEN i % 2 = 0 THEN '4111 1111 1111 1111' END FROM generate_series(1, 1000000) i")
    for i, email, card in cur:
        n += 1
        if email.endswith("e.com") and "@example.com" not in email and "*" in email:
            masked += 1
        if card is None:
            nulls += 1
        elif card != "**** **** **** 1111":
            raise SystemExit("card not masked: %r" % card)
report(rows=n, masked=masked, nulls=nulls)
"#;
    let out = run_venv_python_exec(&cfg, None, code, &args(&pg), RUN);
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    assert_eq!(r["rows"], json!(1_000_000), "{}", pretty(&r));
    assert_eq!(r["masked"], json!(1_000_000), "{}", pretty(&r));
    assert_eq!(r["nulls"], json!(500_000), "{}", pretty(&r));
}

#[test]
fn column_sources_are_looked_up_again_after_ddl() {
    if !require_root() {
        return;
    }
    let pg = PgServer::start();
    seed(&pg);
    pg.psql_db("appdb", "ALTER TABLE customers OWNER TO scram_user");
    let cfg = config(&pg, &policy(""));
    // The gateway logs in as scram_user (the table's owner now), so the agent's DDL runs.
    let code = r#"
import psycopg
H, P = ARGS["host"], int(ARGS["port"])
dsn = conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)
res = {}
with psycopg.connect(dsn, autocommit=True) as conn:
    # Warms the cache: (customers, attnum of card_bad) -> customers.card_bad.
    res["before"] = conn.execute("SELECT card_bad FROM customers ORDER BY id").fetchone()[0]
    conn.execute("ALTER TABLE customers RENAME COLUMN notes TO old_notes")
    conn.execute("ALTER TABLE customers RENAME COLUMN card_bad TO notes")
    res["after"] = conn.execute("SELECT notes FROM customers ORDER BY id").fetchone()[0]
    res["old"] = conn.execute("SELECT old_notes AS notes_were FROM customers ORDER BY id").fetchone()[0]
report(**res)
"#;
    let out = run_venv_python_exec(&cfg, None, code, &args(&pg), RUN);
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    assert_eq!(r["before"], json!("4111 1111 1111 1112"), "{}", pretty(&r));
    // The same attribute now is customers.notes: masked by the notes rule.
    assert_eq!(r["after"], json!("[REDACTED]"), "{}", pretty(&r));
    // And the old notes column is no longer customers.notes.
    assert_eq!(r["old"], json!("VIP; code ZK-7781"), "{}", pretty(&r));
}
