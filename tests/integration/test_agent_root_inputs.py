"""The AGENT root's inputs are what the run began with: the first call's conversation, even
when a later call of the run sends another (a Swarm handoff swaps the system message)."""

from __future__ import annotations

from typing import Any

import httpx
from openai import OpenAI

from tests.conftest import Proxy

TRANSFER = {
    "type": "function",
    "function": {
        "name": "transfer_to_billing",
        "parameters": {"type": "object", "properties": {}},
    },
}
QUESTION = {"role": "user", "content": "I need billing help"}


def agent_root(proxy: Proxy) -> dict[str, Any]:
    proxy.flush()
    (info,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    spans = httpx.get(f"{proxy.url}/api/traces/{info['trace_id']}").json()["spans"]
    assert [s["span_type"] for s in spans] == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    return spans[0]


def handoff(client: OpenAI, stream: bool) -> list[dict[str, Any]]:
    """Swarm's loop: the router asks for a transfer; the next call has the billing agent's
    system message, the user's question, the call and its result. Returns the first call's
    messages."""
    first = [{"role": "system", "content": "Route users."}, QUESTION]
    if stream:
        with client.chat.completions.stream(
            model="gpt-4o", messages=first, tools=[TRANSFER]
        ) as events:
            message = events.get_final_completion().choices[0].message
    else:
        answer = client.chat.completions.create(model="gpt-4o", messages=first, tools=[TRANSFER])
        message = answer.choices[0].message
    assert message.tool_calls
    second: list[Any] = [{"role": "system", "content": "Answer billing questions."}, QUESTION]
    second.append(message.model_dump(exclude_none=True, exclude={"parsed"}))
    second += [
        {"role": "tool", "tool_call_id": call.id, "content": '{"assistant": "Billing"}'}
        for call in message.tool_calls
    ]
    client.chat.completions.create(model="gpt-4o", messages=second)
    return first


def test_a_handoff_keeps_the_conversation_the_run_began_with(proxy: Proxy, client: OpenAI) -> None:
    first = handoff(client, stream=False)
    root = agent_root(proxy)
    assert root["inputs"] == {"messages": first}
    assert root["outputs"]["choices"][0]["message"]["content"]  # the latest call's answer


def test_a_streamed_handoff_keeps_the_conversation_the_run_began_with(
    proxy: Proxy, client: OpenAI
) -> None:
    first = handoff(client, stream=True)
    assert agent_root(proxy)["inputs"] == {"messages": first}


def test_a_responses_run_answered_in_chat_shows_its_input_as_sent(
    proxy: Proxy, client: OpenAI
) -> None:
    """The root's field is the calling request's: a Responses call's `input`, even when its
    results come back through chat (a client changing API mid-run)."""
    tool = {"type": "function", "name": "transfer_to_billing", "parameters": {"type": "object"}}
    asked = client.responses.create(model="gpt-4o", input="I need billing help", tools=[tool])
    call = next(item for item in asked.output if item.type == "function_call")
    client.chat.completions.create(
        model="gpt-4o",
        messages=[
            QUESTION,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": "Billing"},
        ],
    )
    proxy.flush()
    (info,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    spans = httpx.get(f"{proxy.url}/api/traces/{info['trace_id']}").json()["spans"]
    assert spans[0]["span_type"] == "AGENT"
    assert spans[0]["inputs"] == {"input": [QUESTION]}
