"""Real traffic for the UI tests: the openai SDK through a running llmtap to the simulator."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmtap.proxy.demo import WEATHER_TOOL

HOSTILE = '<script>alert(1)</script> & "quotes"'


@dataclass
class Recorded:
    """What the scenario sent and got back, for the tests to look for on the pages."""

    answer: str = ""
    tool_name: str = ""
    tool_arguments: str = ""
    follow_up_answer: str = ""
    error_status: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _stream_tool_call(client: Any) -> tuple[str, str, str]:
    """A streamed chat offered a tool: the simulator answers with a call."""
    messages = [
        {"role": "system", "content": "You are a weather assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    stream = client.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER_TOOL], stream=True
    )
    call_id, name, arguments = "", "", ""
    for chunk in stream:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call_id = delta_call.id or call_id
            if delta_call.function is not None:
                name = delta_call.function.name or name
                arguments += delta_call.function.arguments or ""
    return call_id, name, arguments


def _answer_tool_call(client: Any, call_id: str, name: str, arguments: str) -> str:
    messages = [
        {"role": "system", "content": "You are a weather assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                },
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temp_c": 21})},
    ]
    reply = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])
    return reply.choices[0].message.content or ""


def run_scenario(client: Any) -> Recorded:
    """A chat, a streamed tool call and its answer, an embedding, a hostile message, a 500."""
    import openai

    out = Recorded()
    chat = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello to the UI test."},
        ],
    )
    out.answer = chat.choices[0].message.content or ""
    call_id, out.tool_name, out.tool_arguments = _stream_tool_call(client)
    out.follow_up_answer = _answer_tool_call(client, call_id, out.tool_name, out.tool_arguments)
    client.embeddings.create(model="text-embedding-3-small", input="embed me")
    reply = client.responses.create(
        model="gpt-4o-mini", instructions="Answer in one line.", input="Name a colour."
    )
    out.extra["responses_answer"] = reply.output_text
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": HOSTILE}]
    )
    try:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "this one fails"}],
            extra_headers={"x-simulator-fault": "status-500"},
        )
    except openai.InternalServerError as exc:
        out.error_status = exc.status_code
    return out


def run_grouped(client: Any) -> None:
    """Calls grouped by session and tagged, under the experiment the client's base URL names."""
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "first turn of the session"}],
        extra_headers={"llmtap-session": "session-ui-1", "llmtap-tag-env": "staging"},
    )
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "second turn of the session"}],
        extra_headers={"llmtap-session": "session-ui-1", "llmtap-tag-env": "prod"},
    )
