#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (interceptor/fuzz/corpus/<target>/) from real data.

    python3 interceptor/fuzz/seeds.py [--pg]      # as root; --pg also captures PostgreSQL traffic

- sql_policy: the statements of policies/tests/default-cases.toml and the SQL string literals of
  tests/tests/*.rs and the policy unit tests.
- policy_file: policies/*.toml and policies/examples/*.toml.
- masking: values with every kind of detected data, in each strategy and value kind (the first
  byte of an input picks them, see interceptor::fuzzing::masking).
- masking_json: JSON documents (bodies with cards and emails, Kubernetes Secrets as an object, a
  SecretList, a watch event and with a last-applied annotation), in each strategy.
- masking_stream: terminal output built from the masking values (lines, CRLF, a prompt, a
  private key), in each strategy and chunking.
- commands: HTTP request lines, MCP calls, kubectl-like requests and shell command lines.
- http_mcp: MCP POST bodies (a tool call, a batch, duplicate keys, a later listing page, not MCP).
- http_body: response bodies by kind (JSON, an event stream with CRLF/CR/BOM, text, a JSON-RPC
  tool result holding JSON), each with four chunk sizes.
- postgres_client / postgres_server (--pg): one file per connection and direction, recorded by
  a loopback relay between real clients (psql; psycopg and asyncpg from INTERCEPTOR_VENV) and a
  throw-away PostgreSQL started with initdb/pg_ctl as tests/src/pg.rs does; plus a few start-up
  packets built by hand (SSLRequest, GSSENCRequest, CancelRequest).

The committed corpus is what this wrote once; run it again only to refresh it. Files are named
by a hash of their content (sql, policy, masking) or by what they record (postgres).
"""

import argparse
import hashlib
import json
import os
import pathlib
import pwd
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "interceptor" / "fuzz" / "corpus"
PG_BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
VENV = pathlib.Path(os.environ.get("INTERCEPTOR_VENV", ROOT / ".venv"))


def write(target, data, name=None):
    """Writes one seed; `name` defaults to the content's SHA-1, as libFuzzer names inputs."""
    if isinstance(data, str):
        data = data.encode()
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / (name or hashlib.sha1(data).hexdigest())).write_bytes(data)


def reset(target):
    shutil.rmtree(CORPUS / target, ignore_errors=True)


# --- SQL -------------------------------------------------------------------------------------

SQL_START = re.compile(
    r"^\s*(select|insert|update|delete|with|create|drop|alter|copy|explain|prepare|execute|set|"
    r"reset|show|begin|commit|rollback|start|grant|revoke|truncate|merge|values|table|do|call|"
    r"listen|notify|unlisten|declare|fetch|close|discard|deallocate|lock|vacuum|analyze|"
    r"comment|refresh|savepoint|release|abort|end|load|reindex|cluster)\b",
    re.IGNORECASE,
)
# Rust string literals: "…" with escapes, and r"…" / r#"…"#.
RUST_STRING = re.compile(r'r(#*)"(.*?)"\1|"((?:[^"\\]|\\.)*)"', re.DOTALL)


def rust_unescape(text):
    text = re.sub(r"\\\n\s*", "", text)  # line continuations
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            n = text[i + 1]
            if n in simple:
                out.append(simple[n])
                i += 2
                continue
            if n == "u":
                m = re.match(r"\\u\{([0-9a-fA-F]+)\}", text[i:])
                if m:
                    out.append(chr(int(m.group(1), 16)))
                    i += len(m.group(0))
                    continue
            if n == "x":
                out.append(chr(int(text[i + 2 : i + 4], 16)))
                i += 4
                continue
        out.append(c)
        i += 1
    return "".join(out)


def sql_seeds():
    reset("sql_policy")
    statements = set()
    cases = tomllib.loads((ROOT / "policies/tests/default-cases.toml").read_text())
    statements.update(case["sql"] for case in cases["case"] if "sql" in case)
    sources = sorted((ROOT / "tests/tests").glob("*.rs")) + [
        ROOT / "interceptor/src/policy/tests.rs",
        ROOT / "interceptor/src/policy/sql/tests.rs",
    ]
    for path in sources:
        if not path.exists():
            continue
        for m in RUST_STRING.finditer(path.read_text()):
            text = m.group(2) if m.group(2) is not None else rust_unescape(m.group(3) or "")
            if SQL_START.match(text) and len(text) < 4096:
                statements.add(text)
    for s in sorted(statements):
        write("sql_policy", s)
    # Several texts in one input (NUL-separated, judged in order by one engine): texts that
    # share an analysis by their shape, and some that must not.
    pairs = [
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 42", "SELECT abalance FROM pgbench_accounts WHERE aid = 7"),
        ("SELECT name FROM customers WHERE email = 'a@b.co'", "SELECT name FROM customers WHERE email = 'x'"),
        ("SELECT set_config('application_name', 'a', false)", "SELECT set_config('role', 'admin', false)"),
        ("UPDATE t SET n = 1 WHERE id = 2", "UPDATE t SET n = 3 WHERE id = 4; DELETE FROM t"),
    ]
    for texts in pairs:
        write("sql_policy", "\0".join(texts))
    return len(statements) + len(pairs)


# --- policy files and masking ----------------------------------------------------------------


def policy_seeds():
    reset("policy_file")
    files = sorted((ROOT / "policies").glob("*.toml")) + sorted(
        (ROOT / "policies/examples").glob("*.toml")
    )
    for f in files:
        write("policy_file", f.read_bytes(), f.stem)
    return len(files)


MASKING_VALUES = [
    "card 4111 1111 1111 1111 exp 12/29",
    "4111-1111-1111-1111",
    "x4111111111111111x",
    "id4111111111111111z and 5500005555555559",
    "ssn 123-45-6789, not 000-12-3456 nor 123 45 6789",
    "alice@example.com, bob.smith+tag@mail.example.co.uk, jos\u00e9@exemple.fr",
    "call +1 415 555 0100 or (415) 555-0100 or 415.555.0100",
    "GB82 WEST 1234 5698 7654 32 and DE89370400440532013000",
    "from 127.0.10.1 via ::ffff:127.0.0.1 and ::1 at 10:42:44",
    "AKIAIOSFODNN7EXAMPLE ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "xoxb-1234567890-abcdefghij sk_live_0123456789abcdefghijKLMN",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA",
    '{"email":"alice@example.com","card":4111111111111111,"n":[1,2,"123-45-6789"]}',
    '{"k":"-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----","ssn":"123-45-6789"}',
    '["a\\"b", 4111111111111111, {"secret": "s3cr3t", "phone": "+44 20 7946 0958"}]',
    "nothing to see here: 2024-01-31 12:00:00, uuid 550e8400-e29b-41d4-a716-446655440000",
    "0.28571428571428571429 and 12345678901234567890123",
]


# One example per notation and per shell construct the command-line reader knows or refuses.
# The first byte picks the kind: 0 connect, 1 sql, 2 http, 3 mcp, 4 kubernetes, 5 ssh.
COMMAND_SEEDS = [
    (0, "127.0.0.1:5432"), (1, "SELECT 1"),
    (2, "DELETE https://127.0.0.2:8443/v1/items/7?force=true"), (2, "GET http://localhost/"),
    (2, "get HTTPS://127.0.0.2:443"),
    (3, 'tools/call delete_customer {"id":1,"notify":"x"}'), (3, "resources/read file:///srv/x"),
    (3, "tools/list"),
    (4, "delete pods/web-1 -n default"), (4, "get deployments.apps web --subresource=scale -n prod"),
    (4, "exec pods/web-1"), (4, "get pods -A"), (4, "get /healthz"),
    (5, "ls -l /srv | grep x && rm -rf /srv; echo done &"), (5, "sudo -u postgres psql -c 'select 1'"),
    (5, "sh -c 'cd /srv && rm -rf data'"), (5, "find /srv -name '*.log' -exec rm {} ;"),
    (5, 'echo $(id) `id` "$(id)"'), (5, "cat <<EOF"),
    (5, "echo x > /etc/passwd 2>&1; sort < in >> out 2> err"),
    (5, "@shell"), (5, "@forward 127.0.0.1:5432"), (5, "@subsystem sftp"),
    (5, "env -i A=1 timeout -s KILL 10 nice -n 5 xargs -n 1 rm"),
]


def command_seeds():
    reset("commands")
    for pick, text in COMMAND_SEEDS:
        write("commands", bytes([pick]) + text.encode())
    return len(COMMAND_SEEDS)


def masking_seeds():
    reset("masking")
    n = 0
    for value in MASKING_VALUES:
        data = value.encode()
        json_like = value.startswith(("{", "["))
        for strategy in range(4):
            # Bits 2-3: Text, Json, JsonWithHeader (with its version byte), Opaque.
            kinds = [0, 1, 2] if json_like else [0, 3]
            for kind in kinds:
                choice = bytes([strategy | kind << 2])
                body = b"\x01" + data if kind == 2 else data
                write("masking", choice + body)
                n += 1
    return n


def b64(text):
    import base64

    return base64.b64encode(text.encode()).decode()


def secret(name):
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"username": b64("admin"), "password": b64("hunter2")},
        "stringData": {"token": "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"},
    }


def json_documents():
    import json

    applied = secret("db")
    annotated = secret("db")
    annotated["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied)
    }
    items = [secret("a"), secret("b")]
    for item in items:
        del item["kind"]
    documents = [
        secret("db"),
        annotated,
        {"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": items},
        {"type": "ADDED", "object": secret("w")},
        {"kind": "List", "items": [{"kind": "ConfigMap", "data": {"mode": "fast"}}, secret("c")]},
        {
            "order": {"card": "4111 1111 1111 1111", "lines": [{"card": 5500005555555559}]},
            "cc": ["alice@example.com", "nobody"],
            "bob@example.com": {"plan": "pro"},
            "data": {"ssn": "123-45-6789", "n": 1234, "ok": True},
        },
        {"items": [{"spec": {"env": [{"name": "TOKEN", "value": "xoxb-1234567890-abcdefghij"}]}}]},
    ]
    return [json.dumps(d) for d in documents] + [
        v for v in MASKING_VALUES if v.startswith(("{", "["))
    ]


def masking_json_seeds():
    reset("masking_json")
    n = 0
    for document in json_documents():
        for strategy in range(4):
            write("masking_json", bytes([strategy]) + document.encode())
            n += 1
    return n


def masking_stream_seeds():
    reset("masking_stream")
    streams = [
        "\n".join(MASKING_VALUES) + "\n$ ",
        "$ env\r\n" + "\r\n".join(v for v in MASKING_VALUES if "{" not in v) + "\r\nroot@host:~# ",
        "$ cat id_rsa\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1\nbody\n"
        "-----END RSA PRIVATE KEY-----\n$ ",
        "x" * 5000 + " 4111 1111 1111 1111 " + "y" * 3000 + "\n",
    ]
    n = 0
    for stream in streams:
        for strategy in range(4):
            for start in range(5):
                write("masking_stream", bytes([strategy, start]) + stream.encode())
                n += 1
    return n


# --- PostgreSQL traffic ----------------------------------------------------------------------


class Relay:
    """Accepts on a loopback port and relays to PostgreSQL, keeping every connection's bytes."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.sessions = []  # (client bytes, server bytes), in accept order
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=30)
            record = [bytearray(), bytearray()]
            with self.lock:
                self.sessions.append(record)
            for src, dst, buf in ((client, server, record[0]), (server, client, record[1])):
                threading.Thread(target=self.pump, args=(src, dst, buf), daemon=True).start()

    @staticmethod
    def pump(src, dst, buf):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self):
        time.sleep(0.3)
        with self.lock:
            sessions, self.sessions = self.sessions, []
        return [(bytes(c), bytes(s)) for c, s in sessions]


def as_postgres(args, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, args)], check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SETUP = """
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, card bigint,
  balance numeric, score float8, doc jsonb, tags text[], scores int8[]);
INSERT INTO customers VALUES
  (1, 'Alice', 'alice@example.com', '123-45-6789', 4111111111111111, 1234.5600, 4.111111111111111e15,
   '{"email": "alice@example.com", "card": 4111111111111111}', '{a,b}', '{4111111111111111,2}'),
  (2, 'Bob', NULL, '078-05-1120', 5500005555555559, -0.001, 1e-300, '[]', NULL, NULL);
CREATE ROLE scram_user LOGIN PASSWORD 'scram-secret';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret';
GRANT SELECT ON customers TO scram_user, md5_user;
"""

PSQL_SCRIPT = r"""
SELECT * FROM customers ORDER BY id;
SELECT id, concat(ssn), row_to_json(c) FROM customers c;
SELECT 1/0;
DO $$ BEGIN RAISE NOTICE 'card 4111111111111111 of alice@example.com'; END $$;
LISTEN jobs;
NOTIFY jobs, 'paid 4111111111111111 by alice@example.com';
COPY customers TO STDOUT;
COPY customers (id, name) TO STDOUT (FORMAT binary);
BEGIN;
COPY customers (id, name) FROM STDIN;
3	Carol
\.
ROLLBACK;
SET application_name = 'seeds';
SHOW standard_conforming_strings;
"""

PYTHON_CLIENTS = r"""
import asyncio, sys, psycopg, asyncpg
port = int(sys.argv[1])
dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable"
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute("SELECT * FROM customers WHERE id = %s", (1,)).fetchall()
    conn.execute("SELECT * FROM customers WHERE id = %s", (1,), prepare=True).fetchall()
    conn.execute("SELECT * FROM customers WHERE id = %s", (2,), prepare=True).fetchall()
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT card, balance, score, scores, doc FROM customers WHERE id = %s", (1,))
        cur.fetchall()
    with conn.pipeline():
        conn.execute("SELECT name FROM customers WHERE id = %s", (1,))
        conn.execute("UPDATE customers SET name = %s WHERE id = %s", ("Al", 1))
    try:
        conn.execute("SELECT * FROM nowhere WHERE x = %s", (1,))
    except psycopg.Error:
        pass

async def main():
    c = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres", ssl=False)
    await c.fetch("SELECT * FROM customers WHERE id = $1", 1)
    stmt = await c.prepare("SELECT card, balance, score, scores, doc, tags FROM customers WHERE id > $1")
    await stmt.fetch(0)
    await c.execute("SELECT pg_notify('jobs', 'x')")
    await c.close()
    for user, password in (("scram_user", "scram-secret"), ("md5_user", "md5-secret")):
        c = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=password, database="postgres", ssl=False)
        await c.fetch("SELECT name FROM customers")
        await c.close()

asyncio.run(main())
"""


def pg_seeds():
    reset("postgres_client")
    reset("postgres_server")
    pw = pwd.getpwnam("postgres")
    root = pathlib.Path(tempfile.mkdtemp(prefix="interceptor-fuzz-pg-"))
    os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    port = free_port()
    as_postgres(
        [PG_BIN / "initdb", "-D", data, "--auth=trust", "--username=postgres", "--encoding=UTF8",
         "--no-locale", "--no-sync"],
        stdout=subprocess.DEVNULL,
    )
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\nfsync = off\n"
            "ssl = off\npassword_encryption = 'scram-sha-256'\n"
        )
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "host all scram_user 127.0.0.1/32 scram-sha-256\n"
        "host all md5_user 127.0.0.1/32 md5\n"
        "host all all 127.0.0.1/32 trust\n"
    )
    as_postgres([PG_BIN / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o", f"-p {port}", "start"],
                stdout=subprocess.DEVNULL)
    try:
        psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=0"]
        subprocess.run(psql + ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", SETUP],
                       check=True, stdout=subprocess.DEVNULL)
        relay = Relay(port)
        dsn = f"host=127.0.0.1 port={relay.port} user=postgres dbname=postgres sslmode=disable"
        subprocess.run(psql + [dsn], input=PSQL_SCRIPT.encode(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        sessions = [("psql", *s) for s in relay.take()]
        subprocess.run([VENV / "bin/python", "-c", PYTHON_CLIENTS, str(relay.port)], check=True)
        names = ["psycopg", "asyncpg", "asyncpg-scram", "asyncpg-md5"]
        sessions += [(n, *s) for n, s in zip(names, relay.take())]
    finally:
        as_postgres([PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
                    stdout=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
    for name, client, server in sessions:
        write("postgres_client", client, name)
        write("postgres_server", server, name)
    # Start-up packets psql does not send here: TLS and GSS requests answered "no" before the
    # StartupMessage, a CancelRequest, a minor protocol version, and a client-only encoding.
    def startup(params, version=196608):
        body = struct.pack("!i", version) + b"".join(k + b"\0" + v + b"\0" for k, v in params) + b"\0"
        return struct.pack("!i", len(body) + 4) + body
    ssl, gss = struct.pack("!ii", 8, 80877103), struct.pack("!ii", 8, 80877104)
    query = lambda text: b"Q" + struct.pack("!i", len(text) + 5) + text + b"\0"
    login = [(b"user", b"agent"), (b"database", b"appdb"), (b"options", b"-c search_path=x")]
    write("postgres_client", ssl + gss + startup(login) + query(b"SELECT 1"), "ssl-gss-refused")
    write("postgres_client", struct.pack("!iiii", 16, 80877102, 4242, -7), "cancel")
    write("postgres_client", startup(login, 196610) + query(b""), "protocol-3.2-empty-query")
    write("postgres_client", startup([(b"user", b"a"), (b"client_encoding", b"SJIS")]), "sjis")
    return len(sessions) + 4


def http_mcp_seeds():
    reset("http_mcp")
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "delete_customer", "arguments": {"id": 1}}}
    bodies = [
        json.dumps(call),
        json.dumps([call, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                    {"jsonrpc": "2.0", "id": "r", "method": "resources/read",
                     "params": {"uri": "file:///srv/x"}},
                    {"jsonrpc": "2.0", "id": 9, "result": {}}]),
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}',
        '{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"p2"}}',
        json.dumps({"tools": [{"name": "search", "annotations": {"readOnlyHint": True}}]}),
        '{"query": "not mcp"}',
    ]
    for i, b in enumerate(bodies):
        write("http_mcp", b.encode())
    return len(bodies)


def http_body_seeds():
    reset("http_body")
    values = " ".join(v for v in MASKING_VALUES if '"' not in v and "\\" not in v)
    inner = json.dumps({"email": "ada@example.com", "card": "4111 1111 1111 1111"})
    rpc = json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"content": [
        {"type": "text", "text": inner}, {"type": "text", "text": values}]}})
    bodies = {
        0: json.dumps({"note": values, "card": "4111111111111111"}),
        1: "\ufeff: ping\r\nid: 1\r\nevent: message\r\ndata: " + rpc
           + "\r\n\r\ndata: " + values + "\rdata: x\n\ndata: cut",
        2: values.replace(" ", "\n") + "\n$ ",
        3: rpc,
    }
    n = 0
    for kind, body in bodies.items():
        for size in (0, 1, 6, 63):
            write("http_body", bytes([kind | size << 2]) + body.encode())
            n += 1
    return n


def kube_spdy_seeds():
    """A SPDY exec (values split across stdout and stderr frames, the status, a ping, a window
    update) and a port-forward, in the target's pieces (see `interceptor::fuzzing::kube_spdy`:
    a kind byte and a 16-bit length; kind 2 is a SYN_STREAM whose header block the target
    compresses), and SYN_STREAMs the gateway refuses."""
    reset("kube_spdy")

    def block(pairs):
        out = struct.pack(">I", len(pairs))
        for name, value in pairs:
            out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
        return out

    def piece(kind, data):
        return bytes([kind]) + struct.pack(">H", len(data)) + data

    def syn(stream, pairs):
        return piece(2, struct.pack(">I", stream) + block(pairs))

    def data(stream, payload, fin=False):
        return (struct.pack(">I", stream) + bytes([1 if fin else 0])
                + struct.pack(">I", len(payload))[1:] + payload)

    def control(kind, payload):
        return b"\x80\x03" + struct.pack(">H", kind) + b"\0" + struct.pack(">I", len(payload))[1:] + payload

    exec_ = b"\0" + b"".join(syn(i, [(b"streamtype", t)]) for i, t in
                             [(1, b"error"), (3, b"stdout"), (5, b"stderr"), (7, b"stdin")])
    exec_ += piece(0, data(7, b"ls -l\n")) + piece(1, control(2, b"\0\0\0\x03\x78\x9c"))
    exec_ += piece(1, data(3, b"contact: ada.lovelace")) + piece(1, data(5, b"card 4111 1111"))
    exec_ += piece(3, b"") + piece(1, data(3, b"@example.com\nprompt$ "))
    exec_ += piece(1, data(5, b" 1111 1111\n", True))
    exec_ += piece(1, data(1, b'{"metadata":{},"status":"Success"}', True))
    exec_ += piece(0, control(6, b"\0\0\0\x01")) + piece(1, control(9, b"\0\0\0\x03\0\0\x10\0"))
    write("kube_spdy", exec_, "exec")
    port = [(b"port", b"8080"), (b"requestid", b"0")]
    forward = b"\x01" + syn(1, [(b"streamtype", b"error")] + port)
    forward += syn(3, [(b"streamtype", b"data")] + port)
    forward += piece(0, data(3, b"GET / HTTP/1.0\r\n\r\n"))
    forward += piece(1, data(3, b"HTTP/1.0 200 OK\r\n\r\nalice@example.com"))
    forward += piece(0, control(3, b"\0\0\0\x03\0\0\0\x05"))
    write("kube_spdy", forward, "port_forward")
    refused = b"\0" + syn(1, [(b"StreamType", b"stdout")])
    refused += syn(3, [(b"streamtype", b"stdout\0stdin")])
    write("kube_spdy", refused, "refused")
    return 3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", action="store_true", help="also capture PostgreSQL traffic")
    args = parser.parse_args()
    print("sql_policy:", sql_seeds())
    print("policy_file:", policy_seeds())
    print("masking:", masking_seeds())
    print("masking_json:", masking_json_seeds())
    print("masking_stream:", masking_stream_seeds())
    print("commands:", command_seeds())
    print("http_mcp:", http_mcp_seeds())
    print("http_body:", http_body_seeds())
    print("kube_spdy:", kube_spdy_seeds())
    if args.pg:
        print("postgres_client/server:", pg_seeds())


if __name__ == "__main__":
    sys.exit(main())
