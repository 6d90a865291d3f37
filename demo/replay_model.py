"""The scripted model both demo agents run with: ReplayChatCompletionClient replaying tool calls.

Why this exists: the demo must drive a real AutoGen AssistantAgent offline and the same way
every time, so its "model" answers with a fixed list of tool calls and then a closing text.
"""

import json

from autogen_core import FunctionCall
from autogen_core.models import CreateResult, ModelFamily, ModelInfo, RequestUsage
from autogen_ext.models.replay import ReplayChatCompletionClient


def tool_call(i, name, args):
    """The model's turn i: call tool `name` with `args` (a dict)."""
    return CreateResult(
        finish_reason="function_calls",
        content=[FunctionCall(id=f"call_{i}", name=name, arguments=json.dumps(args))],
        usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
        cached=False,
    )


def scripted_model(calls, closing):
    """A model that makes `calls` ((name, args) pairs) in order, then says `closing`."""
    return ReplayChatCompletionClient(
        [tool_call(i, name, args) for i, (name, args) in enumerate(calls)] + [closing],
        model_info=ModelInfo(
            vision=False,
            function_calling=True,
            json_output=False,
            family=ModelFamily.UNKNOWN,
            structured_output=False,
        ),
    )
