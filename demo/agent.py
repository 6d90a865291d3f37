"""A real AutoGen agent that manages a customers database, knowing nothing about interceptor.

It is the agent of `make demo` and of tests/tests/autogen_demo.rs. An `AssistantAgent`
(autogen-agentchat 0.7.5) gets one tool, `run_sql`, backed by psycopg. The model is
`ReplayChatCompletionClient`, which replays a fixed script of tool calls, so the demo runs
offline and the same way every time; everything below the model is real: the agent loop, the
tool execution, the PostgreSQL driver and the network connection it makes.

The script asks for three things an operator cares about:
  1. a SELECT of customers (personal data in the result: the gateway masks it);
  2. an UPDATE (a write: the gateway holds it until a human approves);
  3. a DROP TABLE (destructive: the gateway denies it).

Usage: agent.py --dsn CONNINFO [--json]
The connection string has no password: under interceptor, the gateway logs in upstream with a
credential the agent never sees. With --json, the human-readable transcript goes to stderr and
one JSON document (the tool calls and what each returned) goes to stdout.
"""

import argparse
import asyncio
import json
import logging
import sys

import psycopg
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import ToolCallExecutionEvent, ToolCallRequestEvent
from autogen_core import EVENT_LOGGER_NAME

from replay_model import scripted_model

SCRIPT = [
    "SELECT id, name, email, card_number, tier FROM customers ORDER BY id LIMIT 3",
    "UPDATE customers SET tier = 'gold' WHERE id = 2",
    "DROP TABLE customers",
]


class Database:
    """One connection for the whole conversation: each tool call is a statement on it."""

    def __init__(self, dsn):
        self.dsn = dsn
        self.conn = None
        self.notices = []

    def connect(self):
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=15)
            self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary))
        return self.conn

    def run_sql(self, sql: str) -> str:
        """Run one SQL statement against the customers database and return its result."""
        seen = len(self.notices)
        try:
            with self.connect().cursor() as cur:
                cur.execute(sql)
                if cur.description is None:
                    result = cur.statusmessage or "OK"
                else:
                    header = " | ".join(c.name for c in cur.description)
                    rows = [" | ".join("" if v is None else str(v) for v in row) for row in cur.fetchall()]
                    result = "\n".join([header] + rows)
        except psycopg.Error as e:
            state = getattr(e, "sqlstate", None) or "?????"
            result = f"ERROR {state}: {(e.diag.message_primary or str(e)).strip()}"
        # Server notices (the gateway's "held for approval" among them) are part of what the
        # model would read, after the result.
        return "\n".join([result] + [f"NOTICE: {n}" for n in self.notices[seen:]])


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="libpq connection string, without a password")
    parser.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    args = parser.parse_args()
    # The replay client warns on every non-text message it counts tokens for: noise here.
    logging.getLogger(EVENT_LOGGER_NAME).setLevel(logging.ERROR)
    out = sys.stderr if args.json else sys.stdout

    db = Database(args.dsn)

    async def run_sql(sql: str) -> str:
        """Run one SQL statement against the customers database and return its result."""
        # psycopg is synchronous: a held statement blocks this thread, not the event loop.
        return await asyncio.to_thread(db.run_sql, sql)

    model = scripted_model(
        [("run_sql", {"sql": sql}) for sql in SCRIPT], "All three tasks are done."
    )
    agent = AssistantAgent(
        name="crm_agent",
        model_client=model,
        tools=[run_sql],
        system_message="You maintain the customers database. Use run_sql for every change.",
        max_tool_iterations=len(SCRIPT) + 1,
    )

    calls = {}
    report = []
    task = "Show me the first customers, upgrade customer 2 to gold, then drop the customers table."
    print(f"task: {task}", file=out, flush=True)
    async for event in agent.run_stream(task=task):
        if isinstance(event, ToolCallRequestEvent):
            for call in event.content:
                sql = json.loads(call.arguments)["sql"]
                calls[call.id] = sql
                print(f"\nagent -> run_sql: {sql}", file=out, flush=True)
        elif isinstance(event, ToolCallExecutionEvent):
            for result in event.content:
                sql = calls.get(result.call_id, "?")
                print("agent <- " + result.content.replace("\n", "\n         "), file=out, flush=True)
                report.append({"sql": sql, "result": result.content, "is_error": result.is_error})
    if db.conn is not None:
        db.conn.close()
    if args.json:
        json.dump({"calls": report, "notices": db.notices}, sys.stdout)
        print()


if __name__ == "__main__":
    asyncio.run(main())
