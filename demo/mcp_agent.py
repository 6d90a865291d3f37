"""A real AutoGen agent using an MCP tool server over streamable HTTP, knowing nothing about
interceptor: the MCP step of `make demo` and of tests/tests/mcp.rs.

An `AssistantAgent` (autogen-agentchat 0.7.5) works through autogen-ext's `McpWorkbench`, which
lists the server's tools and calls them with the official MCP SDK client. The model is
`ReplayChatCompletionClient`, replaying a fixed script, so the run is offline and the same every
time; everything below the model is real. The script:
  1. get_customer (read-only: the gateway lets it run and masks the email and card number);
  2. delete_customer (destructive: the gateway holds it for a human).

Usage: mcp_agent.py URL [--json]
With --json, the transcript goes to stderr and one JSON document (each tool call and what it
returned) to stdout.
"""

import argparse
import asyncio
import json
import logging
import sys

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import ToolCallExecutionEvent, ToolCallRequestEvent
from autogen_core import EVENT_LOGGER_NAME
from autogen_ext.tools.mcp import McpWorkbench, StreamableHttpServerParams

from replay_model import scripted_model

SCRIPT = [("get_customer", {"id": 1}), ("delete_customer", {"id": 1})]


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the MCP endpoint, e.g. http://127.0.0.6:8000/mcp")
    parser.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    args = parser.parse_args()
    logging.getLogger(EVENT_LOGGER_NAME).setLevel(logging.ERROR)
    out = sys.stderr if args.json else sys.stdout

    model = scripted_model(SCRIPT, "Done.")
    # A held call waits for a human: the client's timeouts must outlast the review timeout.
    params = StreamableHttpServerParams(
        url=args.url, timeout=600, sse_read_timeout=600, terminate_on_close=False
    )
    calls, report = {}, []
    async with McpWorkbench(params) as workbench:
        agent = AssistantAgent(
            name="crm_agent",
            model_client=model,
            workbench=workbench,
            system_message="You look after customers with the crm tools.",
            max_tool_iterations=len(SCRIPT) + 1,
        )
        task = "Show me customer 1, then delete customer 1."
        print(f"task: {task}", file=out, flush=True)
        async for event in agent.run_stream(task=task):
            if isinstance(event, ToolCallRequestEvent):
                for call in event.content:
                    calls[call.id] = call.name
                    print(f"\nagent -> {call.name} {call.arguments}", file=out, flush=True)
            elif isinstance(event, ToolCallExecutionEvent):
                for result in event.content:
                    print(f"agent <- {result.content}", file=out, flush=True)
                    report.append(
                        {"tool": calls.get(result.call_id, "?"), "result": result.content, "is_error": result.is_error}
                    )
    if args.json:
        json.dump({"calls": report}, sys.stdout)
        print()


if __name__ == "__main__":
    asyncio.run(main())
