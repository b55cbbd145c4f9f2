"""Model records (issue 6): the real openai SDK through a real llmtap in front of the simulator.

Each capture switch with its default (off), versions per configuration, the registry under
registered_model_name, lineage both ways, and predict from the HTTP API and from the CLI with
no server running.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner
from openai import OpenAI

from llmtap.proxy.cli_models import models as models_command
from llmtap.proxy.cli_models import predict as predict_command
from llmtap.recorder.models import model_record
from tests.conftest import TEST_KEY, Proxy

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
SYSTEM = {"role": "system", "content": "You are terse."}
ANSWER = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "score": {"type": "number"}},
            "required": ["city"],
        },
    },
}


def sdk(proxy: Proxy, experiment: str | None = None) -> OpenAI:
    base = f"{proxy.url}/experiments/{experiment}/v1" if experiment else proxy.base_url
    return OpenAI(base_url=base, api_key=TEST_KEY, max_retries=0)


def chat(client: OpenAI, text: str, *, system: bool = True, **params: Any) -> Any:
    messages = (
        [SYSTEM, {"role": "user", "content": text}]
        if system
        else [{"role": "user", "content": text}]
    )
    return client.chat.completions.create(model="gpt-4o-mini", messages=messages, **params)


def api(proxy: Proxy, path: str) -> Any:
    proxy.flush()
    response = httpx.get(f"{proxy.url}{path}")
    assert response.status_code == 200, response.text
    return response.json()


def versions(proxy: Proxy, name: str) -> list[dict[str, Any]]:
    return sorted(api(proxy, f"/api/models/{name}")["versions"], key=lambda v: v["version"])


def run(command: Any, *args: str, **env: str) -> Any:
    return CliRunner().invoke(command, list(args), env=env or None)


# --- the switches and their defaults ---------------------------------------------------------


def test_models_are_off_by_default(proxy: Proxy, client: OpenAI) -> None:
    chat(client, "hello")
    assert api(proxy, "/api/models") == {"models": []}
    assert proxy.query("SELECT count(*) FROM model_versions")[0][0] == 0
    assert len(api(proxy, "/api/traces")["traces"]) == 1  # traced all the same


def test_signatures_and_examples_do_nothing_without_log_models(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(
        log_model_signatures=True, log_input_examples=True, registered_model_name="x"
    )
    with sdk(proxy) as client:
        chat(client, "hello")
    assert api(proxy, "/api/models") == {"models": []}
    assert proxy.query("SELECT count(*) FROM models")[0][0] == 0


def test_log_models_alone_records_configuration_without_signature_or_example(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(log_models=True)
    with sdk(proxy) as client:
        chat(client, "hello", temperature=0.2, max_tokens=20)
    [model] = api(proxy, "/api/models")["models"]
    assert model["name"] == "Default/gpt-4o-mini"  # logged under the experiment
    assert model["registered"] is False and model["experiment"] == "Default"
    [v] = model["versions"]
    assert v["version"] == 1 and v["task"] == "chat.completions" and v["model"] == "gpt-4o-mini"
    assert v["params"] == {"temperature": 0.2, "max_tokens": 20}
    assert v["prompt_template"] == {"messages": [SYSTEM]}
    assert v["signature"] is None and v["input_example"] is None
    assert v["model_id"].startswith("m-") and len(v["model_id"]) == 34
    assert v["model_uri"] == "models:/Default/gpt-4o-mini/1"


def test_models_are_logged_with_traces_off(start_proxy: Callable[..., Proxy]) -> None:
    """The switches are apart, as in MLflow's `autolog(log_traces=False, log_models=True)`:
    versions are recorded, and predict runs them, with no trace kept."""
    proxy = start_proxy(log_traces=False, log_models=True, log_input_examples=True)
    with sdk(proxy) as client:
        chat(client, "hello", temperature=0.2)
        chat(client, "again", temperature=0.2)
    assert api(proxy, "/api/traces")["traces"] == []
    [model] = api(proxy, "/api/models")["models"]
    [v] = model["versions"]
    assert v["model_uri"] == "models:/Default/gpt-4o-mini/1" and v["params"] == {"temperature": 0.2}
    assert v["input_example"]["messages"][-1]["content"] == "hello"
    answer = httpx.post(
        f"{proxy.url}/api/models/Default/gpt-4o-mini/versions/1/predict", json={"inputs": "hi"}
    )
    assert answer.status_code == 200 and "hi" in answer.json()["predictions"][0]


def test_signatures_mlflow_defaults_and_json_schema(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True, log_model_signatures=True)
    with sdk(proxy) as client:
        chat(client, "plain", temperature=0.5)
        chat(client, "structured", response_format=ANSWER)
        client.embeddings.create(model="text-embedding-3-small", input="vector me")
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say", max_tokens=5)
    plain, structured = versions(proxy, "Default/gpt-4o-mini")
    # as `ModelSignature.to_dict()` and an MLmodel file have it: each part a JSON text, which
    # `ModelSignature.from_dict` reads as it is (before: lists, which it refused)
    assert plain["signature"]["inputs"] == '[{"type": "string", "required": true}]'
    plain_sig, structured_sig = (parts(v["signature"]) for v in (plain, structured))
    string = [{"type": "string", "required": True}]
    assert plain_sig["inputs"] == string and plain_sig["outputs"] == string
    assert plain_sig["params"] == [
        {"name": "temperature", "type": "double", "default": 0.5, "shape": None}
    ]
    assert plain["input_example"] is None  # log_input_examples is off
    assert structured_sig["outputs"] == [
        {
            "type": "object",
            "properties": {
                "city": {"type": "string", "required": True},
                "score": {"type": "double", "required": False},
            },
            "required": True,
        }
    ]
    assert structured["signature"]["output_json_schema"] == ANSWER["json_schema"]["schema"]
    [embedding] = versions(proxy, "Default/text-embedding-3-small")
    assert parts(embedding["signature"])["inputs"] == string
    assert parts(embedding["signature"])["outputs"] == [
        {"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1]}}
    ]
    assert embedding["params"] == {}  # the SDK's own encoding_format is not the model's
    assert embedding["signature"]["params"] is None
    [completion] = versions(proxy, "Default/gpt-3.5-turbo-instruct")
    assert parts(completion["signature"])["outputs"] == string


def parts(signature: dict[str, Any]) -> dict[str, Any]:
    """A signature's JSON texts read, as MLflow's `Schema.from_json` reads them."""
    return {k: json.loads(v) if isinstance(v, str) else v for k, v in signature.items()}


def test_input_example_is_the_first_requests_inputs_scrubbed(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(log_models=True, log_input_examples=True)
    secret = "sk-proj-" + "a1b2c3d4" * 5
    conversation = [{"role": "user", "content": "bonjour"}, {"role": "user", "content": "encore"}]
    with sdk(proxy) as client:
        chat(client, f"my key is {secret}, keep it", temperature=0.3)
        chat(client, "second question", temperature=0.3)  # same version: the first example stays
        client.responses.create(
            model="gpt-4o-mini", instructions="Answer in French.", input=conversation
        )
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say", max_tokens=5)
        client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    [v] = versions(proxy, "Default/gpt-4o-mini")[:1]
    # MLflow's autolog keeps the request's `messages` as they were sent (the system one too),
    # not the model or its parameters: those are the version's configuration
    user = {"role": "user", "content": "my key is [REDACTED], keep it"}
    assert v["input_example"] == {"messages": [SYSTEM, user]}
    assert v["params"] == {"temperature": 0.3} and v["signature"] is None  # signatures off
    stored = proxy.query("SELECT * FROM model_versions")
    assert not [row for row in stored if secret in orjson.dumps(tuple(row)).decode()]
    responses = [x for x in versions(proxy, "Default/gpt-4o-mini") if x["task"] == "responses"]
    assert responses[0]["prompt_template"] == {"instructions": "Answer in French."}
    assert responses[0]["input_example"] == {"input": conversation}
    [completion] = versions(proxy, "Default/gpt-3.5-turbo-instruct")
    assert completion["input_example"] == {"prompt": "say"}
    [embedding] = versions(proxy, "Default/text-embedding-3-small")
    assert embedding["input_example"] == {"input": ["a", "b"]}


def test_the_input_example_is_a_valid_predict_input(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True, log_input_examples=True, log_model_signatures=True)
    with sdk(proxy) as client:
        direct = chat(client, "q1", temperature=0.2).choices[0].message.content
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say", max_tokens=30)
        embedded = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        client.responses.create(model="gpt-4.1-mini", instructions="Be kind.", input="r")
    proxy.flush()
    [v] = versions(proxy, "Default/gpt-4o-mini")
    assert parts(v["signature"])["inputs"] == [{"type": "string", "required": True}]  # MLflow's
    answer = post_predict(proxy, "Default/gpt-4o-mini", 1, v["input_example"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [direct]
    # the example holds the system message, and the template is not sent a second time
    span = api(proxy, f"/api/traces/{answer.json()['trace_ids'][0]}")["spans"][0]
    assert span["inputs"]["messages"] == [SYSTEM, {"role": "user", "content": "q1"}]
    for name, count in [("gpt-3.5-turbo-instruct", 1), ("text-embedding-3-small", 2)]:
        [found] = versions(proxy, f"Default/{name}")
        again = post_predict(proxy, f"Default/{name}", 1, found["input_example"])
        assert again.status_code == 200, again.text
        assert len(again.json()["predictions"]) == count
    vectors = post_predict(proxy, "Default/text-embedding-3-small", 1, {"input": ["a", "b"]})
    assert vectors.json()["predictions"] == [d.embedding for d in embedded.data]
    [r] = versions(proxy, "Default/gpt-4.1-mini")
    said = post_predict(proxy, "Default/gpt-4.1-mini", 1, r["input_example"]).json()
    assert said["predictions"] == ["Hello! You said: r"]


# --- versions and the registry ------------------------------------------------------------


def test_registered_versions_one_per_configuration(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True, registered_model_name="openai-auto")
    with sdk(proxy) as client, sdk(proxy, "nightly") as nightly:
        chat(client, "one", temperature=0.1)  # v1
        chat(client, "two", temperature=0.1, user="someone", metadata={"k": "v"})  # v1 again
        list(chat(client, "three", temperature=0.1, stream=True))  # streamed: still v1
        chat(client, "four", temperature=0.9)  # v2: another parameter value
        chat(client, "five", temperature=0.1, system=False)  # v3: another prompt template
        chat(nightly, "six", temperature=0.9)  # a registry is global: v2 from any experiment
    [model] = api(proxy, "/api/models")["models"]
    assert model["name"] == "openai-auto" and model["registered"] is True
    assert model["experiment"] is None and model["latest_version"] == 3
    v1, v2, v3 = versions(proxy, "openai-auto")
    assert [v1["version"], v2["version"], v3["version"]] == [1, 2, 3]
    assert (v1["trace_count"], v2["trace_count"], v3["trace_count"]) == (3, 2, 1)
    assert v1["params"] == {"temperature": 0.1} and v2["params"] == {"temperature": 0.9}
    assert v3["prompt_template"] is None
    assert len({v1["config_hash"], v2["config_hash"], v3["config_hash"]}) == 3
    one = api(proxy, "/api/models/openai-auto/versions/2")
    assert one["model_uri"] == "models:/openai-auto/2" and len(one["traces"]) == 2
    assert api(proxy, "/api/models/openai-auto/versions/latest")["version"] == 3
    assert api(proxy, f"/api/models/{v2['model_id']}")["version"] == 2  # a logged model by id


def test_unregistered_models_are_per_experiment(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True)
    with sdk(proxy) as client, sdk(proxy, "nightly") as nightly:
        chat(client, "a")
        chat(nightly, "b")
    names = sorted(m["name"] for m in api(proxy, "/api/models")["models"])
    assert names == ["Default/gpt-4o-mini", "nightly/gpt-4o-mini"]
    assert api(proxy, "/api/models/nightly/gpt-4o-mini")["experiment"] == "nightly"


def test_concurrent_new_configurations_get_distinct_version_numbers(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(log_models=True, registered_model_name="busy")
    with sdk(proxy) as client, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: chat(client, "x", temperature=i / 10), range(12)))
    found = versions(proxy, "busy")
    assert [v["version"] for v in found] == list(range(1, 13))
    assert sorted(v["params"]["temperature"] for v in found) == [i / 10 for i in range(12)]


def test_failed_calls_make_no_version(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True)
    with sdk(proxy) as client, pytest.raises(Exception):  # noqa: B017 - any SDK error
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert api(proxy, "/api/models") == {"models": []}


def test_configuration_hash_ignores_key_order_and_transport_fields() -> None:
    body = {"model": "m", "temperature": 1, "top_p": 0.5, "messages": [SYSTEM]}
    same = {"messages": [SYSTEM], "top_p": 0.5, "temperature": 1, "model": "m", "stream": True}
    a = model_record("chat.completions", body, "E")
    b = model_record("chat.completions", {**same, "stream_options": {"include_usage": True}}, "E")
    c = model_record("chat.completions", {**body, "top_p": 0.6}, "E")
    assert a is not None and b is not None and c is not None
    assert a.config_hash == b.config_hash != c.config_hash
    assert model_record("chat.completions", {"messages": []}, "E") is None  # no model named


# --- lineage ----------------------------------------------------------------------------------


def test_lineage_version_to_traces_and_trace_to_version(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(log_models=True, registered_model_name="lineage")
    with sdk(proxy) as client:
        first = chat(client, "one")
        chat(client, "two", temperature=0.3)
        chat(client, "three")
    traces = api(proxy, "/api/traces")["traces"]
    by_id = {t["trace_id"]: t for t in traces}
    linked = api(proxy, "/api/models/lineage/versions/1")["traces"]
    assert len(linked) == 2 and all(t["trace_id"] in by_id for t in linked)
    for t in traces:
        [link] = api(proxy, f"/api/traces/{t['trace_id']}/models")["model_versions"]
        assert link["name"] == "lineage" and link["model_uri"].startswith("models:/lineage/")
        assert (link["version"] == 1) == (t["trace_id"] in {x["trace_id"] for x in linked})
    span = api(proxy, f"/api/traces/{linked[-1]['trace_id']}")["spans"][0]
    assert span["outputs"]["id"] == first.id  # the oldest linked trace is the first call
    assert span["model_version"]["model_uri"] == "models:/lineage/1"  # in GET /api/traces/{id}


# --- predict ----------------------------------------------------------------------------------


def post_predict(proxy: Proxy, name: str, version: Any, inputs: Any) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/api/models/{name}/versions/{version}/predict",
        json={"inputs": inputs},
        headers=AUTH,
        timeout=30,
    )


def test_predict_over_the_api_for_each_task(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True)
    with sdk(proxy) as client:
        direct = chat(client, "what is up", temperature=0.2).choices[0].message.content
        client.embeddings.create(model="text-embedding-3-small", input="e")
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="p", max_tokens=30)
        client.responses.create(model="gpt-4.1-mini", instructions="Be kind.", input="r")
    proxy.flush()
    one = post_predict(proxy, "Default/gpt-4o-mini", 1, "what is up")
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["predictions"] == [direct]  # the recorded configuration, run again: one row
    assert body["model_uri"] == "models:/Default/gpt-4o-mini/1" and len(body["trace_ids"]) == 1
    many = post_predict(proxy, "Default/gpt-4o-mini", "latest", ["a", "b", "c"]).json()
    assert many["predictions"] == [f"Hello! You said: {x}" for x in "abc"]
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    conversation.append({"role": "user", "content": "again"})
    again = post_predict(proxy, "Default/gpt-4o-mini", 1, conversation).json()
    assert again["predictions"] == ["Hello! You said: again"]  # a list of messages is one input
    [vector] = post_predict(proxy, "Default/text-embedding-3-small", 1, "v").json()["predictions"]
    assert isinstance(vector, list) and all(isinstance(x, float) for x in vector)
    vectors = post_predict(proxy, "Default/text-embedding-3-small", 1, ["v", "w"]).json()
    assert len(vectors["predictions"]) == 2 and vectors["predictions"][0] == vector
    assert len(vectors["trace_ids"]) == 1  # one request embeds them all
    [text] = post_predict(proxy, "Default/gpt-3.5-turbo-instruct", 1, "q").json()["predictions"]
    assert isinstance(text, str) and "q" in text
    said = post_predict(proxy, "Default/gpt-4.1-mini", 1, "resp").json()["predictions"]
    assert said == ["Hello! You said: resp"]
    # each call was forwarded, traced with the template, tagged, and linked to its version
    trace = api(proxy, f"/api/traces/{body['trace_ids'][0]}")
    assert trace["info"]["tags"] == {"model_uri": "models:/Default/gpt-4o-mini/1"}
    assert trace["spans"][0]["inputs"]["messages"][0] == SYSTEM
    assert trace["spans"][0]["inputs"]["temperature"] == 0.2
    assert api(proxy, "/api/models/Default/gpt-4o-mini/versions/1")["trace_count"] == 6
    assert len(versions(proxy, "Default/gpt-4o-mini")) == 1  # predict made no new version


def test_predict_answers_a_list_one_prediction_per_input_in_order(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(log_models=True)
    with sdk(proxy) as client:
        chat(client, "x")
        client.embeddings.create(model="text-embedding-3-small", input="e")
    proxy.flush()
    single = post_predict(proxy, "Default/gpt-4o-mini", 1, "hey").json()
    assert single["predictions"] == ["Hello! You said: hey"]  # predictions[0] is the answer
    two = post_predict(proxy, "Default/gpt-4o-mini", 1, ["first", "second"]).json()
    assert two["predictions"] == ["Hello! You said: first", "Hello! You said: second"]
    assert len(two["trace_ids"]) == 2
    # MLflow's other shapes: a record with the prompt variable, records, a dict of columns,
    # pandas' split orient, MLflow's chat request
    for inputs, said in [
        ({"content": "a"}, ["a"]),
        ([{"content": "a"}, {"content": "b"}], ["a", "b"]),
        ({"content": ["a", "b"]}, ["a", "b"]),
        ({"columns": ["content"], "data": [["a"], ["b"]]}, ["a", "b"]),
        ({"messages": [{"role": "user", "content": "a"}]}, ["a"]),
    ]:
        answer = post_predict(proxy, "Default/gpt-4o-mini", 1, inputs)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == [f"Hello! You said: {x}" for x in said]
    [one] = post_predict(proxy, "Default/text-embedding-3-small", 1, "v").json()["predictions"]
    both = post_predict(proxy, "Default/text-embedding-3-small", 1, ["w", "v"]).json()
    assert len(both["predictions"]) == 2 and both["predictions"][1] == one
    assert both["predictions"][0] != one


def test_predict_errors(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True)
    with sdk(proxy) as client:
        chat(client, "x")
        client.embeddings.create(model="text-embedding-3-small", input="e")
    proxy.flush()
    assert post_predict(proxy, "Default/gpt-4o-mini", 9, "x").status_code == 404
    assert post_predict(proxy, "nothing", 1, "x").status_code == 404
    assert post_predict(proxy, "Default/gpt-4o-mini", "v1", "x").status_code == 400
    bad = post_predict(proxy, "Default/text-embedding-3-small", 1, [{"role": "user"}])
    assert bad.status_code == 400 and "must be a string" in bad.json()["error"]["message"]
    predict_url = f"{proxy.url}/api/models/Default/gpt-4o-mini/versions/1/predict"
    json_type = {"content-type": "application/json"}
    assert httpx.post(predict_url, headers=json_type).status_code == 400  # no inputs
    assert (
        httpx.post(
            predict_url, json={"inputs": "x"}, headers={"content-type": "text/plain"}
        ).status_code
        == 415
    )
    assert httpx.get(f"{proxy.url}/api/models/nothing").status_code == 404
    # the predict path with another method: a 405 (it was get_model's "no model named ...")
    got = httpx.get(f"{proxy.url}/api/models/Default/gpt-4o-mini/versions/1/predict")
    assert got.status_code == 405 and got.headers["allow"] == "POST"
    assert got.json()["error"]["message"].startswith("predict takes POST")


def test_cli_models_and_predict_with_no_server_running(
    start_proxy: Callable[..., Proxy], upstream: str
) -> None:
    proxy = start_proxy(log_models=True, registered_model_name="cli-model")
    with sdk(proxy) as client:
        chat(client, "first", temperature=0.4)
        client.embeddings.create(model="text-embedding-3-small", input="e")  # v2, another task
    proxy.flush()
    proxy.server.stop()  # from here on no server runs: the CLI starts llmtap in process
    db = str(proxy.db)

    listed = run(models_command, "--db", db)
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[1].startswith("cli-model\t2\t2\t")
    detail = run(models_command, "cli-model", "--db", db)
    assert "cli-model (registered model)" in detail.output and "temperature" in detail.output
    one = orjson.loads(run(models_command, "models:/cli-model/1", "--db", db).output)
    assert one["version"] == 1 and one["task"] == "chat.completions" and len(one["traces"]) == 1

    said = run(predict_command, "models:/cli-model/1", "hello", "--db", db, "--upstream", upstream)
    assert said.exit_code == 0, said.output
    assert said.output == "Hello! You said: hello\n"  # one text prediction prints as itself
    example = orjson.dumps({"messages": [SYSTEM, {"role": "user", "content": "again"}]}).decode()
    given = ["models:/cli-model/1", example, "--json-input", "--db", db, "--upstream", upstream]
    assert run(predict_command, *given).output == "Hello! You said: again\n"
    result = run(
        predict_command,
        "models:/cli-model/1",
        '["a", "b"]',
        "--json-input",
        "--json",
        "--db",
        db,
        "--upstream",
        upstream,
        OPENAI_API_KEY=TEST_KEY,
    )
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.output)
    assert out["predictions"] == ["Hello! You said: a", "Hello! You said: b"]
    vector = run(predict_command, "cli-model/2", "v", "--db", db, "--upstream", upstream)
    assert vector.exit_code == 0, vector.output
    [floats] = orjson.loads(vector.output)  # the predictions: one vector per input
    assert all(isinstance(x, float) for x in floats)
    texts = run(predict_command, "cli-model/1", '["a", "b"]', "--json-input", *given[3:])
    assert orjson.loads(texts.output) == ["Hello! You said: a", "Hello! You said: b"]

    # recorded into --db: traced, replayable, linked to the version they ran
    for trace_id in out["trace_ids"]:
        links = orjson.loads(run(models_command, "--trace", trace_id, "--db", db).output)
        assert [v["model_uri"] for v in links["model_versions"]] == ["models:/cli-model/1"]
    with closing(sqlite3.connect(db)) as conn:  # not proxy.query: its writer is gone
        sql = "SELECT count(*) FROM exchanges WHERE trace_id IN (?, ?)"
        assert conn.execute(sql, out["trace_ids"]).fetchone()[0] == 2
    as_json = orjson.loads(run(models_command, "--db", db, "--json").output)["models"]
    assert {v["version"]: v["trace_count"] for v in as_json[0]["versions"]} == {1: 7, 2: 2}


def test_cli_explains_what_is_missing(tmp_path: Any, proxy: Proxy, client: OpenAI) -> None:
    missing = run(models_command, "--db", str(tmp_path / "none.db"))
    assert missing.exit_code == 1 and "no llmtap database" in missing.output
    chat(client, "x")
    proxy.flush()
    empty = run(models_command, "--db", str(proxy.db))
    assert empty.exit_code == 0 and "no models recorded yet" in empty.output
    unknown = run(predict_command, "models:/nope/1", "x", "--db", str(proxy.db))
    assert unknown.exit_code == 1 and "no model version models:/nope/1" in unknown.output


def test_predict_params_are_laid_over_the_versions(start_proxy: Callable[..., Proxy]) -> None:
    """MLflow's scoring server takes {"inputs", "params"} and its openai flavor sends
    {**model_params, **params}: llmtap dropped params. A name that is not one of the version's
    params is refused, OpenAI-shaped, rather than sent or dropped."""
    proxy = start_proxy(log_models=True, log_model_signatures=True, registered_model_name="bot")
    with sdk(proxy) as client:
        chat(client, "x", temperature=0.2, max_tokens=40)
    proxy.flush()
    url = f"{proxy.url}/api/models/bot/versions/1/predict"
    given = {"inputs": "hi", "params": {"temperature": 0.9}}
    answer = httpx.post(url, json=given, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    sent = api(proxy, f"/api/traces/{answer.json()['trace_ids'][0]}")["spans"][0]["inputs"]
    assert (sent["temperature"], sent["max_tokens"]) == (0.9, 40)  # the rest as recorded
    # predict runs the version again and makes none, whatever params or conversation it is
    # given (MLflow's predict leaves the registry as it is; before, each made a version 2, 3...)
    with_system = {"inputs": [SYSTEM, {"role": "user", "content": "hi"}]}
    assert httpx.post(url, json=with_system, headers=AUTH, timeout=30).status_code == 200
    proxy.flush()
    assert [v["version"] for v in versions(proxy, "bot")] == [1]
    assert api(proxy, "/api/models/bot/versions/1")["trace_count"] == 3  # its own and 2 runs
    for params, said in [
        ({"temprature": 0.9}, "unknown param(s) temprature for models:/bot/1"),
        ([0.9], "params must be an object"),
    ]:
        refused = httpx.post(url, json={"inputs": "hi", "params": params}, headers=AUTH)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert said in error["message"] and error["type"] == "invalid_request_error"


def test_cli_predict_takes_params(start_proxy: Callable[..., Proxy], upstream: str) -> None:
    proxy = start_proxy(log_models=True, registered_model_name="cli-params")
    with sdk(proxy) as client:
        chat(client, "x", temperature=0.2)
    proxy.flush()
    proxy.server.stop()
    given = ["models:/cli-params/1", "hi", "--db", str(proxy.db), "--upstream", upstream, "--json"]
    result = run(predict_command, *given, "--params", '{"temperature": 0.9}')
    assert result.exit_code == 0, result.output
    [trace_id] = orjson.loads(result.output)["trace_ids"]
    with closing(sqlite3.connect(proxy.db)) as conn:
        inputs = conn.execute("SELECT inputs FROM spans WHERE trace_id = ?", [trace_id]).fetchone()
    assert orjson.loads(inputs[0])["temperature"] == 0.9
    unknown = run(predict_command, *given, "--params", '{"top_k": 3}')
    assert unknown.exit_code == 1 and "unknown param(s) top_k" in unknown.output
    not_json = run(predict_command, *given, "--params", "{temperature: 1}")
    assert not_json.exit_code == 2 and "--params" in not_json.output
    # `echo hi | llmtap predict ... -`: the input is "hi", not "hi" and the shell's line end
    piped = CliRunner().invoke(predict_command, [*given[:1], "-", *given[2:]], input="hi there\n")
    assert piped.exit_code == 0, piped.output
    [piped_trace] = orjson.loads(piped.output)["trace_ids"]
    with closing(sqlite3.connect(proxy.db)) as conn:
        sent = conn.execute("SELECT inputs FROM spans WHERE trace_id = ?", [piped_trace]).fetchone()
    assert orjson.loads(sent[0])["messages"][-1]["content"] == "hi there"


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": {"columns": ["content"], "data": [["a"], ["b"]]}},
        {"dataframe_records": [{"content": "a"}, {"content": "b"}]},
        {"instances": ["a", "b"]},
    ],
    ids=["dataframe_split", "dataframe_records", "instances"],
)
def test_predict_takes_what_mlflows_scoring_server_takes(
    start_proxy: Callable[..., Proxy], body: dict[str, Any]
) -> None:
    """`mlflow models serve` takes these besides `inputs` at /invocations: a client of it
    works here unchanged (before: a 400 asking for `inputs`)."""
    proxy = start_proxy(log_models=True, registered_model_name="scored")
    with sdk(proxy) as client:
        chat(client, "x", system=False)
    proxy.flush()
    url = f"{proxy.url}/api/models/scored/versions/1/predict"
    answer = httpx.post(url, json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 2 and "a" in predictions[0] and "b" in predictions[1]


@pytest.mark.parametrize(
    "spellings",
    [
        ({"temperature": 1}, {"temperature": 1.0}),  # Node and curl write 1; Python 1.0
        ({}, {"temperature": None}),  # null is the API's default, as leaving it out
        ({}, {"n": 1}),  # LangChain sends n: 1, the Node SDK leaves it out
    ],
)
def test_one_configuration_spelt_two_ways_is_one_version(
    start_proxy: Callable[..., Proxy], spellings: tuple[dict[str, Any], ...]
) -> None:
    proxy = start_proxy(log_models=True, registered_model_name="bot")
    body = {"model": "gpt-4o-mini", "messages": [SYSTEM, {"role": "user", "content": "q"}]}
    for extra in spellings:
        sent = httpx.post(
            f"{proxy.base_url}/chat/completions", json={**body, **extra}, headers=AUTH
        )
        assert sent.status_code == 200
    assert len(api(proxy, "/api/models/bot")["versions"]) == 1


def test_an_empty_registered_model_name_is_none(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True, registered_model_name="")
    with sdk(proxy) as client:
        chat(client, "x")
    (model,) = api(proxy, "/api/models")["models"]
    assert model["name"] == "Default/gpt-4o-mini" and model["registered"] is False


def test_predict_for_names_and_sessions_beyond_ascii(
    start_proxy: Callable[..., Proxy], upstream: str
) -> None:
    """The names go in llmtap-* headers of predict's calls: httpx encodes a str as ASCII."""
    proxy = start_proxy(log_models=True)
    with sdk(proxy, experiment="%C3%A9quipe") as client:
        chat(client, "x")
    proxy.flush()
    answer = httpx.post(
        f"{proxy.url}/api/models/%C3%A9quipe/gpt-4o-mini/versions/1/predict",
        json={"inputs": "hello"},
        headers={**AUTH, "llmtap-session": "séance".encode()},  # UTF-8, as curl sends it
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert "hello" in answer.json()["predictions"][0]
    assert len(api(proxy, "/api/traces?session=s%C3%A9ance")["traces"]) == 1
    proxy.server.stop()
    registered = start_proxy(log_models=True, registered_model_name="assistant-é")
    with sdk(registered) as client:
        chat(client, "x")
    registered.flush()
    registered.server.stop()
    given = ["models:/assistant-é/1", "hello", "--db", str(registered.db), "--upstream", upstream]
    said = run(predict_command, *given, OPENAI_API_KEY=TEST_KEY)
    assert said.exit_code == 0, said.output
    assert "hello" in said.output


def test_a_stored_prompt_makes_versions_and_predict_sends_it_back(
    start_proxy: Callable[..., Proxy],
) -> None:
    """`prompt: {id, version, variables}` on /v1/responses: the id and version are the
    configuration (two prompts were one version with `params: {}`), the variables its input."""
    proxy = start_proxy(log_models=True, log_input_examples=True)
    with sdk(proxy) as client:
        for prompt_id in ("pmpt_support_agent", "pmpt_sales_agent"):
            for city in ("Paris", "Rome"):
                client.responses.create(
                    model="gpt-4.1",
                    input="hello",
                    prompt={"id": prompt_id, "version": "2", "variables": {"city": city}},
                )
    found = versions(proxy, "Default/gpt-4.1")
    assert sorted(v["params"]["prompt"]["id"] for v in found) == [
        "pmpt_sales_agent",
        "pmpt_support_agent",
    ]
    span = api(proxy, f"/api/traces/{api(proxy, '/api/traces')['traces'][-1]['trace_id']}")
    attributes = span["spans"][0]["attributes"]
    assert attributes["prompt"] == {"id": "pmpt_support_agent", "version": "2"}
    support = next(v for v in found if v["params"]["prompt"]["id"] == "pmpt_support_agent")
    answer = post_predict(proxy, "Default/gpt-4.1", support["version"], {"city": "Oslo"})
    assert answer.status_code == 200, answer.text
    sent = api(proxy, f"/api/traces/{answer.json()['trace_ids'][0]}")["spans"][0]["inputs"]
    assert sent["prompt"] == {
        "id": "pmpt_support_agent",
        "version": "2",
        "variables": {"city": "Oslo"},
    }
    again = post_predict(proxy, "Default/gpt-4.1", support["version"], support["input_example"])
    assert again.status_code == 200, again.text


def test_models_trace_takes_a_prefix_and_refuses_an_unknown_id(
    start_proxy: Callable[..., Proxy],
) -> None:
    """As `GET /api/traces/{id}/models` and `llmtap trace` find a trace; before, a prefix or an
    unknown id printed a hashed id with no versions, and exit code 0."""
    proxy = start_proxy(log_models=True, registered_model_name="bot")
    with sdk(proxy) as client:
        chat(client, "x")
    [trace] = api(proxy, "/api/traces")["traces"]
    trace_id, db = trace["trace_id"], str(proxy.db)
    by_prefix = run(models_command, "--trace", trace_id[:8], "--db", db)
    assert by_prefix.exit_code == 0, by_prefix.output
    found = orjson.loads(by_prefix.output)
    assert found == api(proxy, f"/api/traces/{trace_id[:8]}/models")
    assert found["trace_id"] == trace_id
    assert [v["model_uri"] for v in found["model_versions"]] == ["models:/bot/1"]
    unknown = run(models_command, "--trace", "nope", "--db", db)
    assert unknown.exit_code == 1
    assert "no trace with id nope" in unknown.output
    said = httpx.get(f"{proxy.url}/api/traces/nope/models").json()["error"]["message"]
    assert said == "no trace with id nope"  # as the API says it
    near = run(models_command, "--trace", trace_id[:6] + "zz", "--db", db)
    assert near.exit_code == 1 and f"did you mean {trace_id}" in near.output
