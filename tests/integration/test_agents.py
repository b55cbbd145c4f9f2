"""Agent runs from the wire: tool calls and their results become one trace with TOOL spans."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import InternalServerError, OpenAI

from llmtap.proxy.server import ServerThread
from llmtap.recorder.agents import CALLING_CONVERSATION_BYTES
from tests.asgi_upstream import answer_json, request_json
from tests.conftest import TEST_KEY, Proxy
from tests.integration.test_proxy_sdk import WEATHER


def traces(proxy: Proxy, **params: str) -> list[dict[str, Any]]:
    proxy.flush()
    return httpx.get(f"{proxy.url}/api/traces", params=params).json()["traces"]


def trace(proxy: Proxy, trace_id: str) -> dict[str, Any]:
    return httpx.get(f"{proxy.url}/api/traces/{trace_id}").json()


def run_chat_agent(client: OpenAI, question: str) -> str:
    """The loop every agent framework runs: call, execute the tools, send results, repeat."""
    messages: list[Any] = [{"role": "user", "content": question}]
    for _ in range(4):
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=[WEATHER]
        )
        message = answer.choices[0].message
        if not message.tool_calls:
            return message.content or ""
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            city = json.loads(call.function.arguments)["city"]
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": f"sunny, 21 C in {city}"}
            )
    raise AssertionError("the agent did not finish")


def test_a_chat_agent_loop_is_one_trace_with_an_agent_root_and_tool_spans(
    proxy: Proxy, client: OpenAI
) -> None:
    final = run_chat_agent(client, "weather in Paris")
    assert "sunny" in final
    (info,) = traces(proxy)
    spans = trace(proxy, info["trace_id"])["spans"]
    kinds = [s["span_type"] for s in spans]
    assert kinds == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"], kinds
    root, first, tool, second = spans
    assert root["parent_id"] is None
    assert first["parent_id"] == tool["parent_id"] == second["parent_id"] == root["span_id"]
    assert tool["name"] == "get_weather"
    assert json.loads(tool["inputs"]["arguments"])["city"]
    assert tool["outputs"].startswith("sunny, 21 C")
    assert tool["attributes"]["client_time_ms"] >= 0
    assert (
        tool["start_time_ns"]
        == first["end_time_ns"]
        <= tool["end_time_ns"]
        <= second["start_time_ns"]
    )
    assert (
        root["start_time_ns"] == first["start_time_ns"]
        and root["end_time_ns"] >= second["end_time_ns"]
    )
    assert info["span_count"] == 4
    assert info["usage"]["total_tokens"] == sum(
        s["attributes"].get("usage", {}).get("total_tokens", 0) for s in spans
    )


def test_two_clients_with_the_same_call_ids_never_merge(start_proxy: Any) -> None:
    proxy = start_proxy()
    for key in ("sk-client-one-000000000000000000", "sk-client-two-000000000000000000"):
        with OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0) as c:
            run_chat_agent(c, "weather in Rome")
    assert [t["span_count"] for t in traces(proxy)] == [4, 4]


def test_session_header_groups_and_scopes(proxy: Proxy) -> None:
    with OpenAI(
        base_url=proxy.base_url,
        api_key=TEST_KEY,
        max_retries=0,
        default_headers={"llmtap-session": "conv-7"},
    ) as c:
        run_chat_agent(c, "weather in Lima")
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "thanks"}]
        )
    session = traces(proxy, session="conv-7")
    assert len(session) == 2 and {t["session"] for t in session} == {"conv-7"}
    spans = trace(proxy, session[-1]["trace_id"])["spans"]
    assert spans[1]["attributes"]["session.id"] == "conv-7"


@pytest.mark.parametrize("named_on", ["first", "answer"])
def test_a_run_whose_session_is_named_on_some_calls_only_is_still_one_trace(
    proxy: Proxy, named_on: str
) -> None:
    """SPEC 3 joins a call answering tool calls "even when the client sends no header": also
    when it sent one on the call that asked (or only on the answer), as a client setting the
    session per call may. Two sessions still never merge (the test above)."""
    tools = [WEATHER]
    first_headers = {"llmtap-session": "s-1"} if named_on == "first" else {}
    answer_headers = {"llmtap-session": "s-1"} if named_on == "answer" else {}
    with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": "weather in Quito"}]
        asked = client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=tools, extra_headers=first_headers
        )
        (call,) = asked.choices[0].message.tool_calls or []
        messages += [
            asked.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "rain"},
        ]
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=tools, extra_headers=answer_headers
        )
    (info,) = traces(proxy)
    kinds = [s["span_type"] for s in trace(proxy, info["trace_id"])["spans"]]
    assert kinds == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"], kinds


RESPONSES_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": WEATHER["function"]["parameters"],
}


def test_responses_api_function_calls_and_previous_response_chains(
    proxy: Proxy, client: OpenAI
) -> None:
    tool = RESPONSES_WEATHER
    first = client.responses.create(model="gpt-4o-mini", input="weather in Oslo", tools=[tool])
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(
        model="gpt-4o-mini",
        tools=[tool],
        input=[
            {"type": "message", "role": "user", "content": "weather in Oslo"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "snow"},
        ],
    )
    # a new question continuing the conversation: a run of its own (SPEC 3: only a call that
    # answers tool calls joins their trace), however it names the response before
    client.responses.create(
        model="gpt-4o-mini", input="and tomorrow?", previous_response_id=second.id
    )
    run, turn = sorted(traces(proxy), key=lambda t: -t["span_count"])
    spans = trace(proxy, run["trace_id"])["spans"]
    assert [s["span_type"] for s in spans] == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    assert spans[2]["name"] == "get_weather" and spans[2]["outputs"] == "snow"
    assert turn["span_count"] == 1


def test_results_sent_with_previous_response_id_join_the_run_that_called(
    proxy: Proxy, client: OpenAI
) -> None:
    """The Responses API's other way to continue: only the results, and the response that asked
    for them by id. That response decides, also when another run got the same call ids."""
    tool = RESPONSES_WEATHER
    first = client.responses.create(model="gpt-4o-mini", input="weather in Bern", tools=[tool])
    call = next(item for item in first.output if item.type == "function_call")
    client.responses.create(
        model="gpt-4o-mini",
        tools=[tool],
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sun"}],
    )
    (info,) = traces(proxy)
    spans = trace(proxy, info["trace_id"])["spans"]
    assert [s["span_type"] for s in spans] == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    assert spans[0]["outputs"]["output"] and spans[0]["status"]["code"] == "OK"


@pytest.mark.parametrize("question", ["and in Rome?", "and in Rome? " + "x" * 20_000])
def test_a_run_chained_by_previous_response_id_shows_the_question_it_began_with(
    proxy: Proxy, client: OpenAI, question: str
) -> None:
    """@openai/agents' `run(agent, q, {previousResponseId})`, and any app chaining responses:
    the results go out with only `previous_response_id` and the outputs, no question. The
    AGENT root's inputs are the calling request's conversation (they were null), kept for a
    conversation of up to 16 KB (the memory is bounded: a longer one is not kept)."""
    tool = RESPONSES_WEATHER
    before = client.responses.create(model="gpt-4o-mini", input="weather in Paris?")
    asked = client.responses.create(
        model="gpt-4o-mini",
        tools=[tool],
        previous_response_id=before.id,
        input=[{"role": "user", "content": question}],
    )
    call = next(item for item in asked.output if item.type == "function_call")
    client.responses.create(
        model="gpt-4o-mini",
        tools=[tool],
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
    )
    run = next(t for t in traces(proxy) if t["span_count"] > 1)
    spans = trace(proxy, run["trace_id"])["spans"]
    assert [s["span_type"] for s in spans] == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    kept = len(question) < CALLING_CONVERSATION_BYTES
    expected = {"input": [{"role": "user", "content": question}]} if kept else None
    assert spans[0]["inputs"] == expected


def test_genai_attributes_usage_provenance_and_cost(proxy: Proxy, client: OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    client.chat.completions.create(
        model="my-own-finetune", messages=[{"role": "user", "content": "x"}]
    )
    newest, oldest = traces(proxy)
    priced = trace(proxy, oldest["trace_id"])["spans"][0]["attributes"]
    assert priced["gen_ai.operation.name"] == "chat" and priced["gen_ai.provider.name"] == "openai"
    assert priced["gen_ai.request.model"] == "gpt-4o-mini"
    assert priced["gen_ai.response.model"].startswith("gpt-4o-mini")
    assert priced["gen_ai.response.finish_reasons"] == ["stop"]
    assert priced["gen_ai.usage.input_tokens"] == priced["usage"]["input_tokens"]
    assert priced["llmtap.usage_source"] == "provider"
    usage = priced["usage"]
    expected = usage["input_tokens"] * 0.15 / 1e6 + usage["output_tokens"] * 0.60 / 1e6
    assert abs(priced["cost"]["total_cost"] - expected) < 1e-12
    assert oldest["cost"]["total_cost"] == priced["cost"]["total_cost"]
    unknown = trace(proxy, newest["trace_id"])["spans"][0]["attributes"]
    assert "cost" not in unknown and newest["cost"] is None  # never a guessed price


def test_prices_file_overrides(start_proxy: Any, tmp_path: Any) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text("[my-own-finetune]\ninput = 1.0\noutput = 2.0\n")
    proxy = start_proxy(prices_file=str(prices))
    with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
        done = c.chat.completions.create(
            model="my-own-finetune", messages=[{"role": "user", "content": "x"}]
        )
    (info,) = traces(proxy)
    usage = done.usage
    assert info["cost"]["total_cost"] == round(
        usage.prompt_tokens * 1e-6 + usage.completion_tokens * 2e-6, 10
    )


async def same_ids_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An OpenAI-compatible server that gives every run the same tool call id (`call_1`), as
    canned mocks and some local servers do: a call for the weather, then the answer."""
    messages = (await request_json(receive))["messages"]
    results = [m for m in messages if m["role"] == "tool"]
    rounds = int(dict(scope["headers"]).get(b"x-test-rounds", b"1"))  # of tool calls per run
    if len(results) >= rounds:
        message = {"role": "assistant", "content": f"It is {results[-1]['content']}."}
        finish = "stop"
    else:
        call = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": call}],
        }
        finish = "tool_calls"
    answer = {
        "id": "chatcmpl-fixed",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }
    await answer_json(send, answer)


def two_rounds_client(proxy: Proxy) -> OpenAI:
    """A client of `same_ids_upstream` asking for two rounds of tool calls a run."""
    rounds = {"x-test-rounds": "2"}
    return OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0, default_headers=rounds)


def test_every_run_gets_its_tool_spans_though_the_upstream_reuses_call_ids(
    start_proxy: Any,
) -> None:
    with ServerThread(same_ids_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
            assert run_chat_agent(c, "weather in Oslo") == run_chat_agent(c, "and again")
        runs = traces(proxy)
        assert len(runs) == 2
        for run in runs:
            kinds = [s["span_type"] for s in trace(proxy, run["trace_id"])["spans"]]
            assert kinds == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"], kinds


def test_the_same_run_twice_with_ids_numbered_per_answer_is_two_runs(start_proxy: Any) -> None:
    """An upstream that calls every answer's first call `call_1`, a two-round loop run twice
    with the same question and the same results: the second run's answer to its first call
    carries exactly the conversation the first run's second call was asked with, so it was
    taken for the answer to that call (the first run got 9 spans, the second 1)."""
    with ServerThread(same_ids_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        with two_rounds_client(proxy) as c:
            assert run_chat_agent(c, "weather in Oslo") == run_chat_agent(c, "weather in Oslo")
        runs = traces(proxy)
    assert len(runs) == 2
    for run in runs:
        kinds = [s["span_type"] for s in trace(proxy, run["trace_id"])["spans"]]
        assert kinds == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL", "TOOL", "CHAT_MODEL"], kinds


@pytest.mark.parametrize("prompts", [("weather", "weather"), ("weather", "other")])
@pytest.mark.parametrize("system_added", [False, True])
def test_a_run_in_a_session_and_one_in_none_with_the_same_call_ids_stay_apart(
    start_proxy: Any, prompts: tuple[str, str], system_added: bool
) -> None:
    """One key, two runs at once, an upstream that gives every run `call_1`: run C names no
    session, run S names one. C's answer joins C's run, even when it carries a system
    message its asking call did not (before: S's, the latest call of that id)."""
    with ServerThread(same_ids_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as client:

            def ask(prompt: str, headers: dict[str, str]) -> list[Any]:
                messages: list[Any] = [{"role": "user", "content": prompt}]
                asked = client.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, tools=[WEATHER], extra_headers=headers
                )
                return [*messages, asked.choices[0].message.model_dump(exclude_none=True)]

            def answer(conversation: list[Any], result: str, headers: dict[str, str]) -> None:
                tool = {"role": "tool", "tool_call_id": "call_1", "content": result}
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[*conversation, tool],
                    tools=[WEATHER],
                    extra_headers=headers,
                )

            in_session = {"llmtap-session": "S", "llmtap-tag-run": "S"}
            c = ask(prompts[0], {"llmtap-tag-run": "C"})
            s = ask(prompts[1], in_session)
            system = [{"role": "system", "content": "added later"}] if system_added else []
            answer([*system, *c], "result of C", {"llmtap-tag-run": "C"})
            answer(s, "result of S", in_session)
    for run in traces(proxy):
        spans = trace(proxy, run["trace_id"])["spans"]
        tools = [sp["outputs"] for sp in spans if sp["span_type"] == "TOOL"]
        assert tools == [f"result of {run['tags']['run']}"], (run["tags"], tools)


def test_a_new_user_turn_after_a_tool_run_is_a_trace_of_its_own(
    proxy: Proxy, client: OpenAI
) -> None:
    """SPEC 3: only a call answering tool calls joins their trace; the next question, though
    its history holds the tool results, is a run of its own."""
    messages: list[Any] = [{"role": "user", "content": "weather in Quito"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "rain, 14 C"},
    ]
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    messages += [
        answer.choices[0].message.model_dump(exclude_none=True),
        {"role": "user", "content": "and tomorrow?"},
    ]
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    runs = traces(proxy)
    assert sorted(t["span_count"] for t in runs) == [1, 4]


def test_a_linked_call_with_a_traceparent_stays_under_that_parent(
    proxy: Proxy, client: OpenAI
) -> None:
    """SPEC 3: a traceparent puts the span under that parent, also when the call answers
    tool calls (llmtap's agent root does not take it over)."""
    trace_hex, first_parent, second_parent = "ab" * 16, "1" * 16, "2" * 16
    messages: list[Any] = [{"role": "user", "content": "weather in Lyon"}]
    first = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=[WEATHER],
        extra_headers={"traceparent": f"00-{trace_hex}-{first_parent}-01"},
    )
    call = first.choices[0].message.tool_calls[0]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "fog, 9 C"},
    ]
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        extra_headers={"traceparent": f"00-{trace_hex}-{second_parent}-01"},
    )
    spans = trace(proxy, trace_hex)["spans"]
    models = [s for s in spans if s["span_type"] == "CHAT_MODEL"]
    assert [s["parent_id"] for s in models][-1] == second_parent
    assert any(s["span_type"] == "TOOL" for s in spans)


def test_responses_results_interleaved_with_their_calls_each_get_a_tool_span(
    proxy: Proxy, client: OpenAI
) -> None:
    """OpenAI's function-calling guide appends each call and then its result: every result
    of the turn is read, not only the last pair."""
    tools = [
        {"type": "function", "name": name, "parameters": WEATHER["function"]["parameters"]}
        for name in ("get_weather", "get_forecast")
    ]
    first = client.responses.create(
        model="gpt-4o-mini", input="Oslo", tools=tools, parallel_tool_calls=True
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 2
    history: list[Any] = [{"type": "message", "role": "user", "content": "Oslo"}]
    for call in calls:
        history += [
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": call.name},
        ]
    client.responses.create(model="gpt-4o-mini", tools=tools, input=history)
    (info,) = traces(proxy)
    spans = trace(proxy, info["trace_id"])["spans"]
    tool_spans = sorted((s["name"], s["outputs"]) for s in spans if s["span_type"] == "TOOL")
    assert tool_spans == [("get_forecast", "get_forecast"), ("get_weather", "get_weather")]


def test_runs_going_at_once_with_the_same_call_ids_stay_apart(start_proxy: Any) -> None:
    """Two runs, one key, no headers, interleaved; the upstream names both calls `call_1`.
    Each follow-up carries the conversation its calling request sent: that decides (before,
    run A's follow-up joined run B's trace and run B's result had no TOOL span)."""
    with ServerThread(same_ids_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
            runs: dict[str, list[Any]] = {}
            for city in ("Oslo", "Lima"):
                messages: list[Any] = [{"role": "user", "content": f"weather in {city}"}]
                first = c.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, tools=[WEATHER]
                )
                runs[city] = [*messages, first.choices[0].message.model_dump(exclude_none=True)]
            for city, messages in runs.items():
                messages.append({"role": "tool", "tool_call_id": "call_1", "content": city})
                c.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER])
        found = traces(proxy)
        assert len(found) == 2
        for info in found:
            spans = trace(proxy, info["trace_id"])["spans"]
            assert [s["span_type"] for s in spans] == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"]
            models = [s for s in spans if s["span_type"] == "CHAT_MODEL"]
            (question,) = {s["inputs"]["messages"][0]["content"] for s in models}
            assert spans[2]["outputs"] == question.removeprefix("weather in ")
            assert spans[0]["inputs"] == {"messages": [{"role": "user", "content": question}]}


def test_a_traceparent_keeps_the_clients_structure(proxy: Proxy, client: OpenAI) -> None:
    """A client that sends its own parents gets them: no AGENT root is made and no span moved;
    the TOOL span sits beside the call that asked for it (before: the first call was moved
    under a new root, away from the parent it had named)."""
    trace_hex, parent = "cd" * 16, "3" * 16
    headers = {"traceparent": f"00-{trace_hex}-{parent}-01"}
    messages: list[Any] = [{"role": "user", "content": "weather in Nice"}]
    first = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[WEATHER], extra_headers=headers
    )
    call = first.choices[0].message.tool_calls[0]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "mild"},
    ]
    client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers=headers)
    spans = trace(proxy, trace_hex)["spans"]
    assert sorted(s["span_type"] for s in spans) == ["CHAT_MODEL", "CHAT_MODEL", "TOOL"]
    assert {s["parent_id"] for s in spans} == {parent}


def test_a_runs_root_says_how_the_run_ended(start_proxy: Any) -> None:
    """The AGENT root has the run's input and its latest call's status and output, and the
    trace's status is the root's (as MLflow's): a run whose last call failed is an ERROR; one
    that recovered by the SDK's retry is OK, its failed attempt kept as an ERROR span."""
    proxy = start_proxy()
    with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
        for city, fault in (("Riga", "status-500"), ("Faro", None)):
            messages: list[Any] = [{"role": "user", "content": f"weather in {city}"}]
            first = c.chat.completions.create(
                model="gpt-4o-mini", messages=messages, tools=[WEATHER]
            )
            call = first.choices[0].message.tool_calls[0]
            messages += [
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "windy"},
            ]
            failing = {"x-simulator-fault": "status-500"}
            with pytest.raises(InternalServerError):
                c.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, extra_headers=failing
                )
            if fault is None:  # the retry the SDK would make
                c.chat.completions.create(model="gpt-4o-mini", messages=messages)
    failed, recovered = sorted(traces(proxy), key=lambda t: t["span_count"])
    assert failed["status"] == "ERROR" and recovered["status"] == "OK"
    for info, code in ((failed, "ERROR"), (recovered, "OK")):
        spans = trace(proxy, info["trace_id"])["spans"]
        root, latest = spans[0], spans[-1]
        assert root["span_type"] == "AGENT" and root["status"]["code"] == code
        assert root["outputs"] == latest["outputs"]
        assert root["inputs"]["messages"][0]["content"].startswith("weather in")
    statuses = [s["status"]["code"] for s in trace(proxy, recovered["trace_id"])["spans"]]
    assert statuses.count("ERROR") == 1


def test_a_legacy_function_calling_loop_is_one_run(proxy: Proxy, client: OpenAI) -> None:
    """The `functions` / `function_call` API, answered with a `function` message: no call ids,
    the function's name stands for one (before: two traces and no TOOL span)."""
    functions = [WEATHER["function"]]
    messages: list[Any] = [{"role": "user", "content": "weather in Cork"}]
    first = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, functions=functions
    )
    asked = first.choices[0].message.function_call
    assert asked is not None
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "function", "name": asked.name, "content": "drizzle"},
    ]
    client.chat.completions.create(model="gpt-4o-mini", messages=messages, functions=functions)
    (info,) = traces(proxy)
    spans = trace(proxy, info["trace_id"])["spans"]
    assert [s["span_type"] for s in spans] == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    assert spans[2]["name"] == asked.name and spans[2]["outputs"] == "drizzle"


def test_runs_going_at_once_stay_apart_over_several_rounds_of_the_same_call_ids(
    start_proxy: Any,
) -> None:
    """Two rounds of tool calls per run, every call named `call_1`. From the second round on,
    the calling request itself ended with results, and its conversation was hashed without
    them: the runs merged and a TOOL span was lost (a review with pydantic-ai, every attempt)."""
    with ServerThread(same_ids_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        with two_rounds_client(proxy) as c:
            runs = {
                city: [{"role": "user", "content": f"weather in {city}"}]
                for city in ("Oslo", "Lima")
            }
            for round_ in range(3):  # interleaved: Oslo, Lima, Oslo, Lima...
                for city, messages in runs.items():
                    answer = c.chat.completions.create(
                        model="gpt-4o-mini", messages=messages, tools=[WEATHER]
                    )
                    message = answer.choices[0].message
                    if message.tool_calls:
                        messages.append(message.model_dump(exclude_none=True))
                        result = f"{city} {round_}"
                        messages.append(
                            {"role": "tool", "tool_call_id": "call_1", "content": result}
                        )
        found = traces(proxy)
        assert len(found) == 2
        for info in found:
            spans = trace(proxy, info["trace_id"])["spans"]
            kinds = sorted(s["span_type"] for s in spans)
            assert kinds == ["AGENT", "CHAT_MODEL", "CHAT_MODEL", "CHAT_MODEL", "TOOL", "TOOL"]
            models = [s for s in spans if s["span_type"] == "CHAT_MODEL"]
            (question,) = {s["inputs"]["messages"][0]["content"] for s in models}
            city = question.removeprefix("weather in ")
            tools = sorted(s["outputs"] for s in spans if s["span_type"] == "TOOL")
            assert tools == [f"{city} 0", f"{city} 1"]


def test_results_sent_with_content_of_their_own_still_answer_the_calls(
    start_proxy: Any,
) -> None:
    """pydantic-ai's `ToolReturn(content=...)` sends a user message right after the result, in
    the same request: no assistant has answered the results, so it is the run going on, not
    a new user turn (before: a trace of its own, and no TOOL span)."""
    with ServerThread(same_ids_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
            messages: list[Any] = [{"role": "user", "content": "weather in Oslo"}]
            first = c.chat.completions.create(
                model="gpt-4o-mini", messages=messages, tools=[WEATHER]
            )
            messages += [
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": "Here is the map of it, too."},
            ]
            c.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER])
        (info,) = traces(proxy)
        spans = trace(proxy, info["trace_id"])["spans"]
        assert [s["span_type"] for s in spans] == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"]
        assert spans[2]["outputs"] == "sunny"
        assert spans[0]["inputs"] == {"messages": [{"role": "user", "content": "weather in Oslo"}]}


def test_the_extras_rule_for_responses_items_and_new_turns() -> None:
    """The same rule for Responses input, and where it stops: a user turn after an assistant's
    answer is a new turn (SPEC 3), and so is a request holding no result at all."""
    from llmtap.recorder.agents import conversation_of, tool_results

    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "42"}
    extra = {"role": "user", "content": "and this image"}
    assert tool_results({"input": ["hi", call, output, extra]}) == [("c1", "42")]
    assert conversation_of({"input": [{"role": "user", "content": "hi"}, call, output, extra]}) == [
        {"role": "user", "content": "hi"}
    ]
    answered = {"role": "assistant", "content": "It is 42."}
    assert (
        tool_results({"messages": [{"role": "tool", "tool_call_id": "c1"}, answered, extra]}) == []
    )
    assert tool_results({"messages": [extra]}) == []


def test_smolagents_text_form_of_a_tool_turn() -> None:
    """smolagents' calls as assistant text and results as a user message answer the calls
    (tests/agents/smolagents_tools.py runs the real framework); text that merely looks like
    it, or a new task after it, does not."""
    from llmtap.recorder.agents import conversation_of, tool_results

    def text(role: str, value: str) -> dict[str, Any]:
        return {"role": role, "content": [{"type": "text", "text": value}]}

    task = text("user", "New task:\nWeather in Oslo and Rome?")
    calls = text(
        "assistant",
        "Calling tools:\n[{'id': 'call_a', 'type': 'function', 'function': {'name': 'w', "
        "'arguments': {'city': 'Oslo'}}}, {'id': 'call_b', 'type': 'function', "
        "'function': {'name': 'w', 'arguments': {'city': 'Rome'}}}]",
    )
    seen = text("user", "Observation:\nsunny\nrainy")
    conversation = [{"role": "system", "content": "s"}, task]
    both = [("call_a", "sunny\nrainy"), ("call_b", "sunny\nrainy")]
    assert tool_results({"messages": [*conversation, calls, seen]}) == both
    assert conversation_of({"messages": [*conversation, calls, seen]}) == conversation
    failed = {"role": "user", "content": "Call id: call_a\nError:\nno such city"}
    assert tool_results({"messages": [*conversation, calls, failed]})[0] == (
        "call_a",
        "Call id: call_a\nError:\nno such city",
    )
    assert tool_results({"messages": [*conversation, calls, seen, text("user", "New task")]}) == []
    with_an_id_argument = text(
        "assistant",
        "Calling tools:\n[{'id': 'call_c', 'type': 'function', 'function': {'name': 'ship', "
        "'arguments': {'id': 'ord_77'}}}]",
    )
    shipped = {"messages": [*conversation, with_an_id_argument, text("user", "Observation:\nok")]}
    assert tool_results(shipped) == [("call_c", "ok")]  # not the argument's `id`
    assert tool_results({"messages": [*conversation, text("assistant", "Observation:\nx")]}) == []
    assert tool_results({"messages": [text("assistant", "Calling tools: none"), seen]}) == []


RESPONSES_CALLS = {
    "function_call": {"type": "function_call", "call_id": "call_f", "name": "get_weather",
                      "arguments": '{"city": "Paris"}'},
    "custom_tool_call": {"type": "custom_tool_call", "call_id": "call_c", "name": "apply_patch",
                         "input": "*** Begin Patch"},
    "computer_call": {"type": "computer_call", "call_id": "call_u", "status": "completed",
                      "action": {"type": "screenshot"}, "pending_safety_checks": []},
    "local_shell_call": {"type": "local_shell_call", "id": "ls_1", "call_id": "call_l",
                         "status": "completed", "action": {"type": "exec", "command": ["ls"]}},
    "mcp_approval_request": {"type": "mcp_approval_request", "id": "mcpr_1", "name": "deploy",
                             "server_label": "ops", "arguments": '{"env": "prod"}'},
}  # fmt: skip
RESPONSES_RESULTS = {
    "function_call": {"type": "function_call_output", "call_id": "call_f", "output": "sunny"},
    "custom_tool_call": {"type": "custom_tool_call_output", "call_id": "call_c", "output": "ok"},
    "computer_call": {"type": "computer_call_output", "call_id": "call_u",
                      "output": {"type": "computer_screenshot", "image_url": "data:,"}},
    "local_shell_call": {"type": "local_shell_call_output", "id": "call_l", "output": "a b"},
    "mcp_approval_request": {"type": "mcp_approval_response", "approval_request_id": "mcpr_1",
                             "approve": True},
}  # fmt: skip
TOOL_NAMES = {
    "function_call": "get_weather",
    "custom_tool_call": "apply_patch",
    "computer_call": "computer",
    "local_shell_call": "local_shell",
    "mcp_approval_request": "deploy",
}


async def tool_kinds_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A Responses server whose first answer holds the calls that `metadata.kinds` names (each a
    kind the client answers), and whose answer to their results is a message."""
    request = await request_json(receive)
    items = request.get("input")
    if isinstance(items, list) and any(isinstance(i, dict) and "type" in i for i in items):
        output: list[Any] = [
            {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "done", "annotations": []}]}
        ]  # fmt: skip
        response_id = "resp_second"
    else:
        output = [RESPONSES_CALLS[k] for k in request["metadata"]["kinds"].split(",")]
        response_id = "resp_first"
    answer = {
        "id": response_id, "object": "response", "created_at": 1_700_000_000,
        "status": "completed", "model": "gpt-5", "output": output,
        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
    }  # fmt: skip
    await answer_json(send, answer)


@pytest.mark.parametrize(
    "kinds", [*RESPONSES_CALLS, "function_call,custom_tool_call", "custom_tool_call,function_call"]
)
def test_every_kind_of_call_a_client_answers_joins_its_run(start_proxy: Any, kinds: str) -> None:
    """SPEC 3: a Responses request answering custom tool, computer use, shell or MCP approval
    items joins the run that asked, with a TOOL span each, as function results do; mixed with
    function results, in any order (a custom result first hid the function's)."""
    with ServerThread(tool_kinds_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
            first = c.responses.create(model="gpt-5", input="go", metadata={"kinds": kinds})
            results = [RESPONSES_RESULTS[k] for k in kinds.split(",")]
            c.responses.create(model="gpt-5", previous_response_id=first.id, input=results)
        (run,) = traces(proxy)
        spans = trace(proxy, run["trace_id"])["spans"]
    tools = sorted((s["name"], json.dumps(s["outputs"])) for s in spans if s["span_type"] == "TOOL")
    expected = sorted(
        (TOOL_NAMES[k], json.dumps(next(iter(v for f, v in RESPONSES_RESULTS[k].items()
                                              if f in ("output", "approve")))))
        for k in kinds.split(",")
    )  # fmt: skip
    assert tools == expected


async def custom_tool_chat_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Chat with a GPT-5 custom (freeform) tool: a `type: "custom"` call, then an answer."""
    if (await request_json(receive))["messages"][-1]["role"] == "tool":
        message = {"role": "assistant", "content": "done"}
        finish = "stop"
    else:
        call = {"id": "call_c", "type": "custom",
                "custom": {"name": "apply_patch", "input": "*** Begin Patch"}}  # fmt: skip
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish = "tool_calls"
    answer = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-5", "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }  # fmt: skip
    await answer_json(send, answer)


def test_a_chat_custom_tool_call_answered_joins_its_run(start_proxy: Any) -> None:
    with ServerThread(custom_tool_chat_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
            messages: list[Any] = [{"role": "user", "content": "patch it"}]
            first = c.chat.completions.create(model="gpt-5", messages=messages)
            messages += [
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": "call_c", "content": "applied"},
            ]
            c.chat.completions.create(model="gpt-5", messages=messages)
        (run,) = traces(proxy)
        spans = trace(proxy, run["trace_id"])["spans"]
    (tool,) = [s for s in spans if s["span_type"] == "TOOL"]
    assert (tool["name"], tool["inputs"]["arguments"], tool["outputs"]) == (
        "apply_patch",
        "*** Begin Patch",
        "applied",
    )


def test_odd_types_in_input_never_break_linking() -> None:
    from llmtap.recorder.agents import conversation_of, tool_results

    odd = {"input": [{"type": ["function_call_output"]}, {"role": ["user"], "content": "x"}]}
    assert tool_results(odd) == []
    assert conversation_of(odd) is not None
