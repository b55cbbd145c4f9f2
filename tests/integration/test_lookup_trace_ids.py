"""A trace is found by the `llmtap-trace-id` a client sent, over HTTP and in the CLI (SPEC 3).

The proxy stores a normalised id (32 lowercase hex); these tests look the trace up by the
id exactly as sent, against a real llmtap in front of the simulator.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import orjson
import pytest
from click.testing import CliRunner
from openai import NotFoundError, OpenAI

from llmtap.proxy.cli import main
from tests.conftest import Proxy

AS_SENT = {
    "uuid with dashes": "550e8400-e29b-41d4-a716-446655440000",
    "upper case hex": "4BF92F3577B34DA6A3CE929D0E0E4736",
    "run name": "my-run-7",
    "run name with a space": "nightly run 7",
    # (before, no route took a slash: a 404 "llmtap has no API at GET /api/traces/eval/run-1")
    "run name with slashes": "eval/run-1",
}


def ask_in_trace(client: OpenAI, trace_id: str, prompt: str) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        extra_headers={"llmtap-trace-id": trace_id},
    )


def prompts_of(trace: dict[str, object]) -> list[str]:
    spans = trace["spans"]
    assert isinstance(spans, list)
    return [span["inputs"]["messages"][0]["content"] for span in spans]


@pytest.fixture
def recorded(proxy: Proxy, client: OpenAI) -> Proxy:
    """One trace per kind of id, two calls in each, so that grouping shows too."""
    for kind, trace_id in AS_SENT.items():
        ask_in_trace(client, trace_id, f"{kind} first")
        ask_in_trace(client, trace_id, f"{kind} second")
    proxy.flush()
    return proxy


@pytest.mark.parametrize("kind", AS_SENT)
def test_the_api_finds_a_trace_by_the_id_as_sent(recorded: Proxy, kind: str) -> None:
    response = httpx.get(f"{recorded.url}/api/traces/{quote(AS_SENT[kind])}")
    assert response.status_code == 200, response.text
    trace = response.json()
    assert prompts_of(trace) == [f"{kind} first", f"{kind} second"]
    stored = trace["info"]["trace_id"]
    assert len(stored) == 32 and stored == stored.lower()
    again = httpx.get(f"{recorded.url}/api/traces/{stored}")  # the stored id works as before
    assert again.status_code == 200 and again.json()["info"]["trace_id"] == stored


def test_the_stored_forms_of_uuid_and_hex_are_those_ids_in_lower_case(recorded: Proxy) -> None:
    for sent in (AS_SENT["uuid with dashes"], AS_SENT["upper case hex"]):
        trace = httpx.get(f"{recorded.url}/api/traces/{sent}").json()
        assert trace["info"]["trace_id"] == sent.replace("-", "").lower()


@pytest.mark.parametrize("kind", AS_SENT)
def test_the_cli_finds_a_trace_by_the_id_as_sent(recorded: Proxy, kind: str) -> None:
    db = str(recorded.db)
    shown = CliRunner().invoke(main, ["trace", AS_SENT[kind], "--db", db, "--json"])
    assert shown.exit_code == 0, shown.output
    trace = orjson.loads(shown.output)
    assert prompts_of(trace) == [f"{kind} first", f"{kind} second"]
    plain = CliRunner().invoke(main, ["trace", AS_SENT[kind], "--db", db])
    assert plain.exit_code == 0 and trace["info"]["trace_id"] in plain.output


def test_an_id_never_sent_is_still_not_found(recorded: Proxy) -> None:
    response = httpx.get(f"{recorded.url}/api/traces/never-sent")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no trace with id never-sent"
    shown = CliRunner().invoke(main, ["trace", "never-sent", "--db", str(recorded.db)])
    assert shown.exit_code == 1 and "no trace with id never-sent" in shown.output


def test_a_unique_prefix_finds_a_trace_in_the_api_and_the_ui_as_in_the_cli(
    recorded: Proxy,
) -> None:
    """`llmtap trace 2768` found a trace by its first characters; the API and the UI page
    answered 404 to the same prefix."""
    stored = httpx.get(f"{recorded.url}/api/traces").json()["traces"][0]["trace_id"]
    others = {t["trace_id"][:6] for t in httpx.get(f"{recorded.url}/api/traces").json()["traces"]}
    assert len(others) == len(AS_SENT)  # (six characters tell these apart)
    found = httpx.get(f"{recorded.url}/api/traces/{stored[:6]}")
    assert found.status_code == 200 and found.json()["info"]["trace_id"] == stored
    page = httpx.get(f"{recorded.url}/traces/{stored[:6].upper()}")
    assert page.status_code == 200 and stored in page.text
    assert httpx.get(f"{recorded.url}/api/traces/{stored[:3]}").status_code == 404  # too short


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/nope"), ("POST", "/api/nope/x"), ("GET", "/api"), ("DELETE", "/api/")],
)
def test_an_unknown_api_path_is_a_json_404(proxy: Proxy, method: str, path: str) -> None:
    response = httpx.request(method, f"{proxy.url}{path}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"llmtap has no API at {method} {path}"


def test_known_api_paths_are_not_shadowed_by_the_404(proxy: Proxy) -> None:
    assert httpx.get(f"{proxy.url}/api/models").json() == {"models": []}
    assert httpx.get(f"{proxy.url}/api/health").json()["status"] == "ok"
    for path in ("/api/health", "/api/models/m/versions/1"):  # from api.py and models_api.py
        wrong_method = httpx.delete(f"{proxy.url}{path}")
        assert wrong_method.status_code == 405
        assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "HEAD"}
        assert wrong_method.json()["error"]["type"] == "invalid_request_error"
    # a path below a trace is the name of one (names may hold slashes): a JSON 404 as well
    nameless = httpx.get(f"{proxy.url}/api/traces/x/nope")
    assert nameless.status_code == 404
    assert nameless.json()["error"]["message"] == "no trace with id x/nope"
    for path in ("/api/traces/abcd1234/", "/traces/abcd1234/", "/api/traces/abcd1234/models/"):
        trailing = httpx.get(f"{proxy.url}{path}")  # redirected without the slash, as before
        assert trailing.status_code == 307, path
        assert trailing.headers["location"].endswith(path.rstrip("/"))
    slash = httpx.get(f"{proxy.url}/api/traces/")  # redirected to /api/traces, as before
    assert slash.status_code == 307 and slash.headers["location"].endswith("/api/traces")


@pytest.mark.parametrize("kind", AS_SENT)
def test_the_ui_page_and_the_models_api_take_the_id_as_sent(recorded: Proxy, kind: str) -> None:
    stored = httpx.get(f"{recorded.url}/api/traces/{quote(AS_SENT[kind])}").json()["info"]
    page = httpx.get(f"{recorded.url}/traces/{quote(AS_SENT[kind])}")
    assert page.status_code == 200 and f"{kind} second" in page.text
    models = httpx.get(f"{recorded.url}/api/traces/{quote(AS_SENT[kind])}/models")
    assert models.status_code == 200 and models.json()["trace_id"] == stored["trace_id"]


@pytest.mark.parametrize("kind", AS_SENT)
def test_models_trace_takes_the_id_as_sent(recorded: Proxy, kind: str) -> None:
    from llmtap.proxy.cli_models import models

    stored = httpx.get(f"{recorded.url}/api/traces/{quote(AS_SENT[kind])}").json()["info"]
    result = CliRunner().invoke(
        models, ["--db", str(recorded.db), "--trace", AS_SENT[kind], "--json"]
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["trace_id"] == stored["trace_id"]


def test_a_trace_named_like_the_models_path_is_found_when_no_trace_has_the_shorter_name(
    proxy: Proxy, client: OpenAI
) -> None:
    """`/api/traces/{id}/models` is the model versions of trace `id`; a trace a client named
    `eval/models` was shadowed by it (a 404: "no trace with id eval")."""
    ask_in_trace(client, "eval/models", "named like the path")
    ask_in_trace(client, "both", "the shorter name")
    ask_in_trace(client, "both/models", "the longer name")
    proxy.flush()
    named = httpx.get(f"{proxy.url}/api/traces/eval/models")
    assert named.status_code == 200, named.text
    assert prompts_of(named.json()) == ["named like the path"]
    # where trace `both` exists, the path is its model versions, as before
    versions = httpx.get(f"{proxy.url}/api/traces/both/models").json()
    both = httpx.get(f"{proxy.url}/api/traces/both").json()["info"]["trace_id"]
    assert versions == {"trace_id": both, "model_versions": []}
    missing = httpx.get(f"{proxy.url}/api/traces/nothing/models")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "no trace with id nothing"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/chat/completions"), ("POST", "/openai/deployments/gpt-4o/chat/completions")],
)
def test_a_path_outside_the_api_is_a_404_that_says_where_the_api_is(
    proxy: Proxy, method: str, path: str
) -> None:
    """A base URL without /v1, or an AzureOpenAI client given llmtap as its azure_endpoint:
    Starlette's plain `Not Found` left the SDK saying only "Error code: 404"."""
    response = httpx.request(method, f"{proxy.url}{path}", json={"model": "m"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "not_found"
    assert f"OPENAI_BASE_URL={proxy.url}/v1" in error["message"]
    with (
        OpenAI(base_url=proxy.url, api_key="sk-x", max_retries=0) as client,
        pytest.raises(NotFoundError, match="the OpenAI API is under /v1"),
    ):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert httpx.get(f"{proxy.url}/").status_code == 200  # the UI is where it was
