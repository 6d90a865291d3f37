//! Large messages under a memory budget (`[proxy] buffer_budget_bytes`), against a real
//! PostgreSQL under `interceptor exec`: stalled and concurrent 60 MB statements keep the
//! gateway's memory under a bound, other sessions keep working meanwhile, memory returns after
//! the burst, and the journal stays small although every one of those statements is journaled.
//!
//! The client (Python, the exec'd command) measures the gateway itself: the exec process is
//! its parent, whose `VmHWM` (peak RSS) and `VmRSS` it reads from /proc.

use std::time::Duration;

use interceptor_tests::*;

const MIB: u64 = 1 << 20;
/// The budget the test configures: two 60 MB messages at once.
const BUDGET: u64 = 128 * MIB;
const WAIT_SECS: u64 = 15;

const CLIENT: &str = r#"
import psycopg, struct, threading, time
H, P = ARGS["host"], int(ARGS["port"])
GW = os.getppid()
def mem(field):
    for line in open("/proc/%d/status" % GW):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
def dsn():
    return conninfo(host=H, port=P, dbname="appdb", user="agent", sslmode="disable", connect_timeout=10)

def read_until_ready(s):
    buf = b""
    while True:
        while len(buf) >= 5:
            tag, n = buf[0:1], struct.unpack("!i", buf[1:5])[0]
            if len(buf) < 1 + n:
                break
            body, buf = buf[5:1 + n], buf[1 + n:]
            if tag == b"Z":
                return
            if tag == b"E":
                raise RuntimeError(body)
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed during start-up")
        buf += chunk

def start_raw():
    s = socket.create_connection((H, P), timeout=60)
    params = b"user\0agent\0database\0appdb\0\0"
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    read_until_ready(s)
    return s

SIZE = 60_000_000
res = {"baseline_rss": mem("VmRSS")}

# 1. Eight sessions each start a 60 MB Query and stall one MB short of its end.
stalled, outcomes = [], {}
def stall(i):
    s = start_raw()
    stalled.append(s)
    try:
        s.sendall(b"Q" + struct.pack("!i", SIZE + 4))
        chunk = b"x" * (1 << 20)
        for _ in range(SIZE // len(chunk) - 1):
            s.sendall(chunk)
        outcomes[i] = "stalled"
    except OSError as e:
        outcomes[i] = "refused"
threads = [threading.Thread(target=stall, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
time.sleep(2)
# A small query meanwhile: small messages never wait for the budget.
with psycopg.connect(dsn(), autocommit=True) as c:
    t0 = time.time()
    res["small_during_stall"] = c.execute("SELECT 41 + 1").fetchone()[0]
    res["small_seconds"] = time.time() - t0
for t in threads:
    t.join(timeout=60)
res["stall_outcomes"] = sorted(outcomes.values())
res["peak_with_stalled"] = mem("VmHWM")
for s in stalled:
    s.close()
time.sleep(1)

# 2. Four sessions send a whole 60 MB statement at once: too large to analyse, so refused
# (and journaled) by the default policy.
errors = {}
def whole(i):
    try:
        with psycopg.connect(dsn(), autocommit=True) as c:
            c.execute("SELECT '" + "y" * SIZE + "'")
            errors[i] = "ran"
    except psycopg.Error as e:
        errors[i] = e.sqlstate or "%s: %s" % (type(e).__name__, str(e)[:300])
threads = [threading.Thread(target=whole, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=120)
res["whole_sqlstates"] = sorted(errors.values())
res["peak_total"] = mem("VmHWM")
time.sleep(3)
res["after_rss"] = mem("VmRSS")
report(**res)
"#;

#[test]
fn large_messages_stay_within_the_memory_budget_and_the_journal_stays_small() {
    require_root!();
    let pg = PgServer::start();
    let cfg = TempConfig::new("");
    let policy = format!(
        "policy = \"{}\"\n",
        workspace_root().join("policies/default.toml").display()
    );
    cfg.write(&format!(
        "[proxy]\nbuffer_budget_bytes = {BUDGET}\nbuffer_wait_secs = {WAIT_SECS}\n\n{}",
        pg_config_text(&cfg, pg.port(), &policy)
    ));
    let args = json!({"host": pg_dial_host(), "port": pg.port()}).to_string();
    let out = run_venv_python_exec(&cfg, None, CLIENT, &[args], Duration::from_secs(240));
    assert!(out.success(), "{}", out.describe());
    let r = out.json();
    let mib = |k: &str| r[k].as_u64().unwrap_or(u64::MAX) / MIB;
    eprintln!(
        "baseline {} MiB, peak with stalled {} MiB, peak total {} MiB, after {} MiB",
        mib("baseline_rss"),
        mib("peak_with_stalled"),
        mib("peak_total"),
        mib("after_rss")
    );

    // Two stalled messages fit the budget; the other six waited, then were refused.
    assert_eq!(
        r["stall_outcomes"],
        json!([
            "refused", "refused", "refused", "refused", "refused", "refused", "stalled", "stalled"
        ]),
        "{}",
        pretty(&r)
    );
    assert_eq!(r["small_during_stall"], json!(42), "{}", pretty(&r));
    assert!(
        r["small_seconds"].as_f64().unwrap_or(f64::MAX) < 5.0,
        "{}",
        pretty(&r)
    );
    assert_eq!(
        r["whole_sqlstates"],
        json!(["42501", "42501", "42501", "42501"]),
        "{}",
        pretty(&r)
    );
    // The bound documented in docs/configuration.md: each message held in the budget costs
    // at most three times its size (the buffer, the statement's text, its masked copy).
    let bound = r["baseline_rss"].as_u64().unwrap_or(0) + 3 * BUDGET + 64 * MIB;
    let peak = r["peak_total"].as_u64().unwrap_or(u64::MAX);
    assert!(
        peak < bound,
        "peak RSS {} MiB over the bound {} MiB: {}",
        peak / MIB,
        bound / MIB,
        pretty(&r)
    );
    // Memory goes back after the burst.
    let after = r["after_rss"].as_u64().unwrap_or(u64::MAX);
    let baseline = r["baseline_rss"].as_u64().unwrap_or(0);
    assert!(
        after < baseline + 96 * MIB,
        "RSS after the burst {} MiB, baseline {} MiB",
        after / MIB,
        baseline / MIB
    );

    // Every refused 60 MB statement is journaled, as a prefix with its length and hash; the
    // journal stays small.
    let run_id = r["run_id"].as_str().expect("run id");
    let mut clipped = 0;
    for s in sessions_for_run(&cfg, run_id) {
        let show = session_show(&cfg, s["id"].as_i64().expect("id"));
        for e in show["events"].as_array().into_iter().flatten() {
            if e["detail"]["statement_truncated"] == json!(true) {
                assert_eq!(e["detail"]["statement_bytes"], json!(60_000_009));
                assert_eq!(e["rule"], json!("unanalysable"), "{}", pretty(e));
                assert!(e["statement"].as_str().unwrap_or("").len() <= 64 * 1024);
                clipped += 1;
            }
        }
    }
    assert_eq!(clipped, 4, "each refused statement is journaled");
    let journal = std::fs::metadata(&cfg.journal)
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(cfg.journal.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    assert!(journal < 16 * MIB, "journal is {} MiB", journal / MIB);
}
