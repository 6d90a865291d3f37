"""A customers tool server for `make demo` and tests/tests/mcp.rs, built with the official MCP
Python SDK (FastMCP, `mcp<2`) over streamable HTTP, knowing nothing about interceptor.

Two tools, annotated as an honest server would:
  - get_customer (readOnlyHint: true): a record with an email and a card number, as JSON text;
  - delete_customer (destructiveHint: true): appends each run to RUNS_FILE, so a test can tell
    whether (and how often) it really ran.

Stateless by default (every POST stands alone, no session id, so no session-ending DELETE);
with `stateful`, FastMCP's default: the server assigns a session id at `initialize` and the
client ends the session with an HTTP DELETE. Answers in server-sent events, as MCP servers
usually do.

Usage: mcp_server.py HOST PORT RUNS_FILE [stateful]
"""

import json
import sys

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

host, port, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stateless = sys.argv[4:] != ["stateful"]
app = FastMCP(
    "crm", host=host, port=port, stateless_http=stateless, json_response=False, log_level="WARNING"
)


@app.tool(annotations=ToolAnnotations(readOnlyHint=True), structured_output=False)
def get_customer(id: int) -> str:
    """Reads one customer."""
    return json.dumps(
        {"id": id, "name": "Ada Lovelace", "email": "ada.lovelace@example.com", "card": "4111 1111 1111 1111"}
    )


@app.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True), structured_output=False)
def delete_customer(id: int) -> str:
    """Deletes one customer."""
    with open(runs, "a") as f:
        f.write(json.dumps({"deleted": id}) + "\n")
    return f"deleted customer {id}"


app.run(transport="streamable-http")
