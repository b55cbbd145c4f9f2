"""The reading side given odd values: recorded text holding Rich markup, malformed predict
inputs, versions `str.isdigit` takes and `int` does not, times and offsets past SQLite's
integers, a trace's models found by a prefix. Each answered a 500 or a traceback before
(found by a review of the UI and read API)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_KEY, Proxy
from tests.raw_upstream import raw_upstream

LLMTAP = str(Path(sys.executable).with_name("llmtap"))
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _llmtap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LLMTAP, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    ("where", "value"),
    [("session", "run [/x] 1"), ("model", "my[/model]"), ("session", "[bold]s-42[/bold]")],
)
def test_llmtap_trace_prints_recorded_text_as_it_is(
    start_proxy: Any, where: str, value: str
) -> None:
    proxy = start_proxy()
    headers = {**AUTH, "llmtap-trace-id": "markup-run"}
    body = dict(BODY)
    if where == "session":
        headers["llmtap-session"] = value
    else:
        body["model"] = value
    httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers=headers, timeout=20)
    proxy.flush()
    done = _llmtap("trace", "markup-run", "--db", str(proxy.db))
    assert "Traceback" not in done.stderr, done.stderr[-400:]
    assert done.returncode == 0
    assert value in done.stdout


def test_llmtap_trace_prints_an_error_message_holding_brackets(start_proxy: Any) -> None:
    def answer(_request: Any) -> bytes:
        body = b'{"error": {"message": "bad value [/tools]", "type": "invalid_request_error"}}'
        head = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        return head + b"content-length: %d\r\n\r\n" % len(body) + body

    with raw_upstream(answer) as up:
        proxy = start_proxy(upstream=up.url + "/v1")
        headers = {**AUTH, "llmtap-trace-id": "err-run"}
        r = httpx.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=headers)
        assert r.status_code == 400
        proxy.flush()
        done = _llmtap("trace", "err-run", "--db", str(proxy.db))
    assert "Traceback" not in done.stderr, done.stderr[-400:]
    assert "bad value [/tools]" in done.stdout


def test_llmtap_traces_in_a_terminal_shows_a_bracketed_session(start_proxy: Any) -> None:
    proxy = start_proxy()
    headers = {**AUTH, "llmtap-session": "s [/x]"}
    httpx.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=headers, timeout=20)
    proxy.flush()
    # FORCE_COLOR: Rich takes the pipe for a terminal and draws its table
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "250"}
    done = _llmtap("traces", "--db", str(proxy.db), env=env)
    assert "Traceback" not in done.stderr, done.stderr[-400:]
    assert "s [/x]" in done.stdout


@pytest.fixture
def bot(start_proxy: Any) -> Proxy:
    """bot/1 a chat version, bot/2 an embeddings version."""
    proxy = start_proxy(log_models=True, registered_model_name="bot")
    with httpx.Client(base_url=proxy.url, headers=AUTH, timeout=20) as c:
        assert c.post("/v1/chat/completions", json=BODY).status_code == 200
        emb = {"model": "text-embedding-3-small", "input": "hi"}
        assert c.post("/v1/embeddings", json=emb).status_code == 200
    proxy.flush()
    return proxy


def _json_error(response: httpx.Response, statuses: tuple[int, ...]) -> None:
    assert response.status_code in statuses, (response.status_code, response.text[:200])
    assert response.headers["content-type"].startswith("application/json")
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("version", "inputs"),
    [
        ("2", {"data": []}),
        ("2", {"columns": ["input"], "data": []}),
        ("1", {"columns": 5, "data": [["a"]]}),
        ("1", {"columns": [["k"]], "data": [["a"]]}),
    ],
)
def test_malformed_predict_inputs_are_a_json_400(bot: Proxy, version: str, inputs: Any) -> None:
    url = f"{bot.url}/api/models/bot/versions/{version}/predict"
    _json_error(httpx.post(url, json={"inputs": inputs}, headers=AUTH, timeout=20), (400,))


@pytest.mark.parametrize("version", ["²", "99999999999999999999999"])
@pytest.mark.parametrize("suffix", ["", "/predict"])
def test_an_odd_version_is_a_json_error(bot: Proxy, version: str, suffix: str) -> None:
    url = f"{bot.url}/api/models/bot/versions/{version}{suffix}"
    r = httpx.post(url, json={"inputs": "x"}) if suffix else httpx.get(url)
    _json_error(r, (400, 404))


@pytest.mark.parametrize("ref", ["models:/bot/²", "models:/bot/99999999999999999999999"])
def test_llmtap_models_with_an_odd_version_is_a_clean_error(bot: Proxy, ref: str) -> None:
    done = _llmtap("models", ref, "--db", str(bot.db))
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 1 and "Error:" in done.stderr


def test_the_models_of_a_trace_are_found_by_a_prefix_and_404_for_none(start_proxy: Any) -> None:
    proxy = start_proxy(log_models=True)
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=AUTH).is_success
    proxy.flush()
    trace_id = httpx.get(f"{proxy.url}/api/traces").json()["traces"][0]["trace_id"]
    full = httpx.get(f"{proxy.url}/api/traces/{trace_id}/models").json()
    assert len(full["model_versions"]) == 1
    assert httpx.get(f"{proxy.url}/api/traces/{trace_id[:8]}/models").json() == full
    unknown = httpx.get(f"{proxy.url}/api/traces/0123456789abcdef0123456789abcdef/models")
    _json_error(unknown, (404,))


@pytest.mark.parametrize(
    "path",
    [
        "/?since=2300-01-01",
        "/?until=9999-12-31T23:59",
        "/?since=0001-01-01",
        "/sessions?offset=99999999999999999999999",
    ],
)
def test_times_and_offsets_past_sqlite_integers_are_no_server_error(
    proxy: Proxy, path: str
) -> None:
    r = httpx.get(proxy.url + path, timeout=10)
    assert r.status_code in (200, 400), (r.status_code, r.text[:200])
    assert r.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("fault", "stream"), [("status-500", False), ("status-429", True), ("reset-mid-stream", True)]
)
def test_a_failed_span_has_every_attribute_spec_names(
    proxy: Proxy, fault: str, stream: bool
) -> None:
    headers = {**AUTH, "x-simulator-fault": fault}
    with contextlib.suppress(httpx.HTTPError):  # the reset stream breaks the client's read
        httpx.post(
            f"{proxy.base_url}/chat/completions",
            json={**BODY, "stream": stream},
            headers=headers,
            timeout=20,
        ).read()
    proxy.flush()
    trace = httpx.get(f"{proxy.url}/api/traces").json()["traces"][0]
    span = httpx.get(f"{proxy.url}/api/traces/{trace['trace_id']}").json()["spans"][0]
    assert span["status"]["code"] == "ERROR"
    for key in ("endpoint", "model", "stream", "http_status", "usage"):
        assert key in span["attributes"], (key, sorted(span["attributes"]))
    assert span["attributes"]["usage"] is None  # none was told


@pytest.mark.parametrize("value", ["abc", "1_0", "٣", "３", "2.5"])
@pytest.mark.parametrize("name", ["limit", "offset"])
def test_a_bad_page_parameter_is_a_400_that_names_it(proxy: Proxy, name: str, value: str) -> None:
    """Before: `invalid literal for int() with base 10: 'abc'` with `param: null`, and the
    spellings Python's `int` reads (`1_0`, Arabic-Indic and full-width digits) were numbers."""
    response = httpx.get(f"{proxy.url}/api/traces", params={name: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == name
    assert error["message"] == f"bad query parameter: {name} must be a whole number, not {value!r}"
    page = httpx.get(f"{proxy.url}/", params={name: value})
    assert page.status_code == 400 and f"{name} must be a whole number" in page.text


def test_a_page_says_where_the_next_begins(proxy: Proxy) -> None:
    """`next_offset`: a client asking for more than a page holds (1,000) learns that more
    exist, instead of taking 1,000 for all there is."""
    for _ in range(5):
        assert httpx.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=AUTH)
    proxy.flush()
    pages = [httpx.get(f"{proxy.url}/api/traces?limit=2&offset={at}").json() for at in (0, 2, 4)]
    assert [p["next_offset"] for p in pages] == [2, 4, None]
    assert [len(p["traces"]) for p in pages] == [2, 2, 1]
    assert httpx.get(f"{proxy.url}/api/traces?limit=5").json()["next_offset"] is None
    # limit=0 asks for none: no offset to follow (one that stayed put would loop a client)
    assert httpx.get(f"{proxy.url}/api/traces?limit=0").json() == {
        "traces": [],
        "next_offset": None,
        "next_page_token": None,
    }


def test_a_page_token_holds_its_place_while_new_traces_arrive(proxy: Proxy) -> None:
    """Offsets count from the newest trace: a trace recorded between two pages shifted the
    second by one, and a client paging through saw a trace twice. `next_page_token` names
    the last trace listed, and the next page begins after it."""
    for _ in range(5):
        httpx.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=AUTH).raise_for_status()
    proxy.flush()
    first = httpx.get(f"{proxy.url}/api/traces?limit=2").json()
    assert first["next_offset"] == 2 and first["next_page_token"]
    for _ in range(3):  # traffic between the pages
        httpx.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=AUTH).raise_for_status()
    proxy.flush()
    seen = [t["trace_id"] for t in first["traces"]]
    token = first["next_page_token"]
    while token is not None:
        page = httpx.get(f"{proxy.url}/api/traces", params={"limit": 2, "page_token": token})
        assert page.status_code == 200, page.text
        seen += [t["trace_id"] for t in page.json()["traces"]]
        token = page.json()["next_page_token"]
    assert len(seen) == len(set(seen)) == 5  # each of the five once, none of the three after
    everything = httpx.get(f"{proxy.url}/api/traces?limit=100").json()
    assert [t["trace_id"] for t in everything["traces"]][3:] == seen
    assert everything["next_page_token"] is None
    # by offset, the same paging repeats a trace
    shifted = httpx.get(f"{proxy.url}/api/traces?limit=2&offset=2").json()["traces"]
    assert shifted[0]["trace_id"] not in seen[2:]


def test_traces_that_began_in_the_same_nanosecond_are_each_on_one_page(
    start_proxy: Any,
) -> None:
    """Traces can begin in the same nanosecond (a coarse clock, an import): the token names
    a place among them too, so a page boundary between them neither repeats nor skips one.
    Here every trace is given one start time."""
    import sqlite3

    proxy = start_proxy()
    for _ in range(6):
        httpx.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=AUTH).raise_for_status()
    proxy.flush()
    with contextlib.closing(sqlite3.connect(proxy.db)) as conn, conn:
        conn.execute("UPDATE traces SET start_time_ns = 1700000000000000000")
    ids: list[str] = []
    by_offset: list[str] = []
    token = None
    for at in range(0, 6, 2):
        params: dict[str, Any] = {"limit": 2, **({"page_token": token} if token else {})}
        page = httpx.get(f"{proxy.url}/api/traces", params=params).json()
        ids += [t["trace_id"] for t in page["traces"]]
        token = page["next_page_token"]
        listed = httpx.get(f"{proxy.url}/api/traces?limit=2&offset={at}").json()["traces"]
        by_offset += [t["trace_id"] for t in listed]
    assert token is None
    assert len(set(ids)) == 6 and ids == by_offset


@pytest.mark.parametrize("token", ["abc", "12", "1.x", "-1.2", "1.2.3", "٣.1"])
def test_a_page_token_this_server_did_not_give_is_a_400(proxy: Proxy, token: str) -> None:
    response = httpx.get(f"{proxy.url}/api/traces", params={"page_token": token})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "page_token"
    assert "next_page_token" in error["message"]


def test_the_ui_lists_an_experiment_whose_name_has_spaces_around_it(proxy: Proxy) -> None:
    """An experiment's name is matched as recorded: the UI trimmed ` prod` to `prod` (nothing
    listed), and an experiment named ` ` to no filter at all (every trace listed)."""
    for experiment in (" prod", " "):
        base = f"{proxy.url}/experiments/{experiment.replace(' ', '%20')}/v1"
        assert httpx.post(f"{base}/chat/completions", json=BODY, headers=AUTH)
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=AUTH)
    proxy.flush()
    for experiment in (" prod", " "):
        page = httpx.get(f"{proxy.url}/", params={"experiment": experiment}).text
        assert page.count('class="row-link"') == 1, experiment
