"""Predict's inputs and the input example, sans-io: the rows pyfunc would see, the request
bodies they become, and the stored example run back into the request it came from."""

from __future__ import annotations

from typing import Any

import pytest

from llmtap.proxy.predict import PredictError, input_rows, request_bodies
from llmtap.recorder.models import model_record

SYSTEM = {"role": "system", "content": "You are terse."}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def version(task: str, body: dict[str, Any]) -> dict[str, Any]:
    """The version a request body makes, as the store hands it to predict."""
    record = model_record(task, body, "E", input_examples=True)
    assert record is not None
    return {
        "task": task,
        "model": record.model,
        "params": dict(record.params),
        "prompt_template": record.prompt_template,
        "input_example": record.input_example,
    }


CHAT = version(
    "chat.completions", {"model": "m", "temperature": 0.2, "messages": [SYSTEM, user("q1")]}
)


@pytest.mark.parametrize(
    ("inputs", "rows"),
    [
        ("hey", ["hey"]),
        (["a", "b"], ["a", "b"]),
        ([SYSTEM, user("x")], [[SYSTEM, user("x")]]),  # one conversation
        ([[user("a")], [user("b")]], [[user("a")], [user("b")]]),
        ({"content": "a"}, [{"content": "a"}]),
        (
            {"content": ["a", "b"], "lang": "fr"},
            [{"content": "a", "lang": "fr"}, {"content": "b", "lang": "fr"}],
        ),
        ([{"content": "a"}, {"content": "b"}], [{"content": "a"}, {"content": "b"}]),
        ({"messages": [user("a")]}, [{"messages": [user("a")]}]),  # a conversation is one cell
        (
            {"messages": [[user("a")], [user("b")]]},
            [{"messages": [user("a")]}, {"messages": [user("b")]}],
        ),
        ({"columns": ["content"], "data": [["a"], ["b"]]}, [{"content": "a"}, {"content": "b"}]),
        ({"data": [["a"]]}, [{0: "a"}]),  # MLflow writes no columns for an unnamed one
    ],
)
def test_inputs_become_pyfunc_rows(inputs: Any, rows: list[Any]) -> None:
    assert input_rows("chat.completions", inputs) == rows


@pytest.mark.parametrize(
    "inputs",
    [
        "hey",
        {"content": "hey"},
        {"question": "hey"},  # no prompt variable: the first string column
        [{"content": "hey"}],
        {"columns": ["content"], "data": [["hey"]]},
        {"messages": [user("hey")]},
        [user("hey")],
    ],
)
def test_every_shape_of_one_chat_input_asks_the_same(inputs: Any) -> None:
    [body] = request_bodies(CHAT, inputs)
    assert body == {"model": "m", "temperature": 0.2, "messages": [SYSTEM, user("hey")]}


def test_rows_keep_their_order_and_embeddings_go_in_one_request() -> None:
    bodies = request_bodies(CHAT, {"content": ["one", "two", "three"]})
    assert [b["messages"][-1]["content"] for b in bodies] == ["one", "two", "three"]
    embed = version("embeddings", {"model": "e", "input": "x"})
    assert request_bodies(embed, ["a", "b"]) == [{"model": "e", "input": ["a", "b"]}]
    assert request_bodies(embed, "a") == [{"model": "e", "input": "a"}]
    completion = version("completions", {"model": "c", "prompt": "x", "max_tokens": 5})
    assert request_bodies(completion, [{"prompt": "p"}, {"prompt": "q"}]) == [
        {"model": "c", "max_tokens": 5, "prompt": "p"},
        {"model": "c", "max_tokens": 5, "prompt": "q"},
    ]


@pytest.mark.parametrize(
    ("task", "body", "example"),
    [
        (
            "chat.completions",
            {"model": "m", "temperature": 0.2, "messages": [SYSTEM, user("q1")]},
            {"messages": [SYSTEM, user("q1")]},
        ),
        (
            "chat.completions",
            {
                "model": "m",
                "messages": [user("a"), {"role": "assistant", "content": "b"}, user("c")],
            },
            {"messages": [user("a"), {"role": "assistant", "content": "b"}, user("c")]},
        ),
        ("completions", {"model": "c", "prompt": "say", "max_tokens": 5}, {"prompt": "say"}),
        ("embeddings", {"model": "e", "input": "vector me"}, {"input": "vector me"}),
        (
            "responses",
            {"model": "r", "instructions": "Be kind.", "input": [SYSTEM, user("x")]},
            {"input": [SYSTEM, user("x")]},
        ),
        ("responses", {"model": "r", "input": "plain"}, {"input": "plain"}),
    ],
)
def test_the_input_example_is_the_requests_input_and_predicts_that_request(
    task: str, body: dict[str, Any], example: dict[str, Any]
) -> None:
    found = version(task, body)
    assert found["input_example"] == example  # the inputs, not model or parameters
    assert request_bodies(found, example) == [body]  # the template is not sent twice


def test_embeddings_example_of_a_list_predicts_each_text() -> None:
    found = version("embeddings", {"model": "e", "input": ["a", "b"]})
    assert found["input_example"] == {"input": ["a", "b"]}
    assert request_bodies(found, found["input_example"]) == [{"model": "e", "input": ["a", "b"]}]


def test_no_example_for_an_empty_input_and_none_without_the_switch() -> None:
    record = model_record("completions", {"model": "c", "prompt": ""}, "E", input_examples=True)
    assert record is not None and record.input_example is None
    record = model_record("chat.completions", {"model": "m", "messages": [user("x")]}, "E")
    assert record is not None and record.input_example is None


@pytest.mark.parametrize(
    ("task", "inputs", "says"),
    [
        ("chat.completions", [], "inputs must be"),
        ("chat.completions", 3, "inputs must be"),
        ("chat.completions", {"n": 1}, "must be a string, a list of messages"),
        ("chat.completions", {"content": ["a", "b"], "x": ["c"]}, "non-empty and alike"),
        ("embeddings", [user("x")], "must be a string or"),
        ("embeddings", {"role": "user", "content": "x"}, "must be a string or"),
        ("completions", [[user("x")]], "must be a string or"),
    ],
)
def test_bad_inputs_say_what_is_wanted(task: str, inputs: Any, says: str) -> None:
    found = {"task": task, "model": "m", "params": {}, "prompt_template": None}
    with pytest.raises(PredictError, match=says) as raised:
        request_bodies(found, inputs)
    assert raised.value.status == 400


def test_a_stored_prompt_is_configuration_and_its_variables_are_input() -> None:
    """A Responses `prompt` is the reusable prompt at OpenAI: its id and version name the
    configuration, its variables are what each call fills in (as a completion's `prompt` is
    its input). The example holds the variables as columns, and predicts that request."""
    prompt = {"id": "pmpt_support", "version": "2"}
    body = {"model": "r", "prompt": {**prompt, "variables": {"city": "Paris"}}, "input": "hi"}
    found = version("responses", body)
    assert found["params"] == {"prompt": prompt}
    assert found["input_example"] == {"city": "Paris", "input": "hi"}
    assert request_bodies(found, found["input_example"]) == [body]
    assert request_bodies(found, "hello") == [{"model": "r", "prompt": prompt, "input": "hello"}]
    assert request_bodies(found, {"city": "Rome"}) == [
        {"model": "r", "prompt": {**prompt, "variables": {"city": "Rome"}}}
    ]
    other_city = model_record("responses", {**body, "prompt": {**prompt, "variables": {}}}, "E")
    other_prompt = model_record("responses", {**body, "prompt": {"id": "pmpt_sales"}}, "E")
    first = model_record("responses", body, "E")
    assert first is not None and other_city is not None and other_prompt is not None
    assert first.config_hash == other_city.config_hash != other_prompt.config_hash
    # a completion's `prompt` stays its input
    completion = model_record("completions", {"model": "c", "prompt": "say"}, "E")
    assert completion is not None and completion.params == {}


@pytest.mark.parametrize(
    ("task", "body", "config_hash"),
    [
        (
            "chat.completions",
            {"model": "m", "temperature": 0.2, "messages": [SYSTEM, user("q")], "stream": True},
            "d2be472c020d2c2d9c6edcca54dca5c32283a13fb2fcf6d0a86211d73e101eaa",
        ),
        (
            "completions",
            {"model": "c", "prompt": "say", "max_tokens": 5},
            "53208f202ca1c2e401ae8dbd92aaf0be3ac6f6923a0f2d309a9f436d9f5eb997",
        ),
        (
            "embeddings",
            {"model": "e", "input": "x", "dimensions": 8},
            "ccd807bf727d982d3bbf0f0599b8791199d6b1263fbc163ccc2e60325d3bf1e1",
        ),
        (
            "responses",
            {"model": "r", "instructions": "Be kind.", "input": "hi", "tools": [{"type": "x"}]},
            "be87f2edd7165e90d814b2d201f715c0c25909f5f0af5f23de3ad914b31877f2",
        ),
    ],
)
def test_a_configuration_without_a_stored_prompt_hashes_as_before(
    task: str, body: dict[str, Any], config_hash: str
) -> None:
    """Existing databases keep their versions: these hashes were computed before input fields
    became per endpoint."""
    record = model_record(task, body, "E")
    assert record is not None and record.config_hash == config_hash


def test_embeddings_rows_go_in_requests_of_at_most_2048_inputs() -> None:
    """OpenAI takes at most 2,048 inputs in one embeddings request: 3,000 rows were one."""
    embed = version("embeddings", {"model": "e", "input": "x", "dimensions": 8})
    rows = [f"row {i}" for i in range(3000)]
    bodies = request_bodies(embed, rows)
    assert [len(b["input"]) for b in bodies] == [2048, 952]
    assert [text for b in bodies for text in b["input"]] == rows  # in order
    assert all(b["model"] == "e" and b["dimensions"] == 8 for b in bodies)
    assert request_bodies(embed, rows[:2049])[1] == {
        "model": "e",
        "dimensions": 8,
        "input": ["row 2048"],
    }
