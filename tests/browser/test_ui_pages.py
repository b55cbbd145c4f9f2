"""The UI's pages fetched over HTTP from a real llmtap, without a browser: these run everywhere."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import httpx
import pytest
from markupsafe import escape

from llmtap.proxy.conversation import Message as UiMessage
from llmtap.proxy.conversation import conversation, split_history
from llmtap.proxy.ui import format_cost, span_tree
from llmtap.proxy.ui_queries import MODEL_INDEX, TraceFilter, iso_time, like_pattern
from tests.browser.conftest import Site
from tests.conftest import Proxy


def escaped(text: str) -> str:
    """Text as the templates write it (jinja2's autoescape, which also escapes quotes)."""
    return str(escape(text))


def rows_of(page: str) -> int:
    return page.count('class="row-link"')


def test_list_shows_every_trace_newest_first(site: Site, http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    traces = site.proxy.query("SELECT trace_id FROM traces ORDER BY start_time_ns DESC")
    assert rows_of(page.text) == len(traces) == 8
    positions = [page.text.index(f"/traces/{t['trace_id']}") for t in traces]
    assert positions == sorted(positions)


def test_pages_link_only_to_their_own_assets(http: httpx.Client) -> None:
    page = http.get("/").text
    assert 'href="/static/style.css"' in page and 'src="/static/ui.js"' in page
    assert 'src="http' not in page and 'href="http' not in page  # no CDN, nothing remote
    for name, kind in [("style.css", "text/css"), ("ui.js", "text/javascript")]:
        asset = http.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    assert http.get("/static/..%2Fui.py").status_code == 404
    assert "script-src 'self'" in http.get("/").headers["content-security-policy"]


def test_hostile_content_is_escaped_everywhere(site: Site, http: httpx.Client) -> None:
    trace_id = site.trace_id("inputs LIKE ?", "%alert(1)%")
    page = http.get(f"/traces/{trace_id}").text
    assert "<script>alert(1)</script>" not in page
    assert escaped("<script>alert(1)</script>") in page
    listing = http.get("/", params={"q": "<script>alert(1)"}).text
    assert rows_of(listing) == 1
    assert "<script>alert(1)" not in listing  # the search box echoes it escaped
    assert 'value="&lt;script&gt;alert(1)"' in listing


def test_filter_by_status_and_model(site: Site, http: httpx.Client) -> None:
    errors = http.get("/", params={"status": "ERROR"}).text
    assert rows_of(errors) == 1 and "ERROR" in errors
    embeddings = http.get("/", params={"model": "text-embedding-3-small"}).text
    assert rows_of(embeddings) == 1 and "embeddings" in embeddings
    assert rows_of(http.get("/", params={"model": "gpt-4o"}).text) == 1  # the agent run


def test_filter_by_experiment_session_tag_and_text(http: httpx.Client) -> None:
    assert rows_of(http.get("/", params={"experiment": "evals"}).text) == 2
    assert rows_of(http.get("/", params={"session": "session-ui-1"}).text) == 2
    assert rows_of(http.get("/", params={"tag": "env=prod"}).text) == 1
    assert rows_of(http.get("/", params={"tag": "env"}).text) == 2
    assert rows_of(http.get("/", params={"q": "Paris"}).text) == 1
    assert rows_of(http.get("/", params={"q": "no such words anywhere"}).text) == 0
    combined = {"experiment": "evals", "q": "second turn"}
    assert rows_of(http.get("/", params=combined).text) == 1


def test_time_range(http: httpx.Client) -> None:
    assert rows_of(http.get("/", params={"since": "2000-01-01T00:00"}).text) == 8
    assert rows_of(http.get("/", params={"until": "2000-01-01T00:00"}).text) == 0
    bad = http.get("/", params={"since": "yesterday"})
    assert bad.status_code == 400 and "not a time" in bad.text


def test_pagination_links(http: httpx.Client) -> None:
    first = http.get("/", params={"limit": 3}).text
    assert rows_of(first) == 3 and "offset=3" in first and "Newer" not in first
    last = http.get("/", params={"limit": 3, "offset": 6}).text
    assert rows_of(last) == 2 and "Older" not in last and "offset=3" in last
    filtered = http.get("/", params={"limit": 1, "experiment": "evals"}).text
    assert "experiment=evals" in filtered.split("Older")[0].rsplit("href=", 1)[1]


def test_trace_page_shows_the_agent_run(site: Site, http: httpx.Client) -> None:
    trace_id = site.trace_id("span_type = 'TOOL'")
    page = http.get(f"/traces/{trace_id}").text
    for expected in (
        "AGENT",
        "TOOL",
        "CHAT_MODEL",
        "get_weather",
        "You are a weather assistant.",
        "What is the weather in Paris?",
        "First token",
        "Request JSON",
        "Response JSON",
        "wf-bar",
        "earlier message",
    ):
        assert expected in page, expected
    assert escaped(site.recorded.follow_up_answer) in page
    assert escaped('"city"') in page  # the arguments, pretty-printed
    assert "result of call_" in page  # the tool message in the follow-up request
    assert "$0.000" in page  # the simulator's models have prices


def test_trace_page_of_a_simple_chat(site: Site, http: httpx.Client) -> None:
    trace_id = site.trace_id("inputs LIKE ?", "%Say hello%")
    page = http.get(f"/traces/{trace_id}").text
    assert "Be brief." in page and site.recorded.answer in page
    assert "response · stop" in page and "earlier message" not in page


def test_trace_page_of_responses_embeddings_and_errors(site: Site, http: httpx.Client) -> None:
    responses = http.get("/traces/" + site.trace_id("name = 'responses'")).text
    assert "Answer in one line." in responses and "Name a colour." in responses
    assert escaped(site.recorded.extra["responses_answer"]) in responses
    embedding = http.get("/traces/" + site.trace_id("name = 'embeddings'")).text
    assert "1 input embedded" in embedding and "dimensions" in embedding
    failed = http.get("/traces/" + site.trace_id("status_code = 'ERROR'")).text
    assert "The server had an error" in failed and "500" in failed


def test_unknown_trace_is_a_404_page(http: httpx.Client) -> None:
    page = http.get("/traces/0123456789abcdef0123456789abcdef")
    assert page.status_code == 404 and "No such trace" in page.text


def test_experiments_and_sessions(http: httpx.Client) -> None:
    experiments = http.get("/experiments").text
    assert 'href="/?experiment=evals"' in experiments
    assert 'href="/?experiment=Default"' in experiments
    sessions = http.get("/sessions").text
    assert 'href="/?session=session-ui-1"' in sessions and ">2<" in sessions


def test_models_placeholder_then_generic_rows(site: Site, http: httpx.Client) -> None:
    assert "No model records yet" in http.get("/models").text
    with sqlite3.connect(site.proxy.db) as conn:  # the tables of migration 0002_models
        conn.execute("INSERT INTO models VALUES ('triage', 1, 'Default', 1, 1)")
        conn.execute(
            "INSERT INTO model_versions (name, version, model_id, config_hash, task, "
            "model, experiment, created_ns, last_seen_ns) VALUES ('triage', 1, 'm-1', "
            "'h', 'chat.completions', '<b>gpt-4o</b>', 'Default', 1, 1)"
        )
    page = http.get("/models").text
    assert "No model records yet" not in page
    assert "triage" in page and "&lt;b&gt;gpt-4o&lt;/b&gt;" in page


def test_no_database_yet(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(mode="off")  # nothing writes, so no file appears
    for path in ("/", "/experiments", "/sessions", "/models"):
        page = httpx.get(proxy.url + path)
        assert page.status_code == 200 and "Nothing recorded yet" in page.text


# ------------------------------------------------------------------ the pieces, without a server


def test_like_pattern_matches_json_escaped_text() -> None:
    assert like_pattern('say "hi"') == '%say \\\\"hi\\\\"%'
    assert like_pattern("100%_done") == "%100\\%\\_done%"


@pytest.mark.parametrize(
    ("params", "problem"),
    [({"limit": "x"}, "limit must be a whole number"), ({"since": "nope"}, "not a time")],
)
def test_filter_rejects_bad_input(params: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TraceFilter.from_params(params)


def test_filter_keeps_only_what_is_set() -> None:
    flt = TraceFilter.from_params({"model": " gpt-4o ", "status": "", "limit": "9999"})
    assert flt.active() == {"model": "gpt-4o"} and flt.limit == 500


def test_span_tree_orders_children_and_keeps_orphans() -> None:
    def span(span_id: str, parent: str | None, start: int, end: int) -> dict[str, object]:
        return {"span_id": span_id, "parent_id": parent, "start_time_ns": start, "end_time_ns": end}

    spans = [
        span("b", "a", 50, 100),
        span("a", None, 0, 100),
        span("c", "a", 10, 20),
        span("d", "gone", 0, 10),
    ]
    rows = span_tree(spans, 0, 100)  # type: ignore[arg-type]
    assert [(r.span["span_id"], r.depth) for r in rows] == [("a", 0), ("c", 1), ("b", 1), ("d", 0)]
    assert rows[2].left == 50 and rows[2].width == 50


def test_history_split_keeps_the_last_assistant_turn() -> None:
    turns = [
        UiMessage("system"),
        UiMessage("user"),
        UiMessage("assistant"),
        UiMessage("tool"),
        UiMessage("assistant", output=True),
    ]
    history, new = split_history(turns)
    assert [m.role for m in history] == ["system", "user"]
    assert [m.role for m in new] == ["assistant", "tool", "assistant"]
    assert split_history(turns[:2]) == ([], turns[:2])


def test_cost_format() -> None:
    assert [format_cost(v) for v in (None, 0, 4e-08, 0.000355, 1.5)] == [
        "",
        "$0",
        "$0.00000004",
        "$0.000355",
        "$1.50",
    ]


def test_model_filter_is_served_by_the_model_index(site: Site, http: httpx.Client) -> None:
    """`spans_by_model` is part of the schema: a rare model is read from the index."""
    with sqlite3.connect(site.proxy.db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert MODEL_INDEX in names
    for model in ("gpt-4o", "gpt-4o-mini"):
        assert rows_of(http.get("/", params={"model": model}).text) > 0


def test_iso_time_matches_request_time() -> None:
    assert iso_time(1_735_689_600_123_456_789) == "2025-01-01T00:00:00.123Z"
    assert iso_time(None) is None


async def broken_upstream(scope: dict[str, object], receive: object, send: object) -> None:
    """A 200 whose JSON no SDK would accept: choices that are strings, a function that is."""
    odd = b'{"choices": ["oops", {"message": {"role": "assistant", "tool_calls": [{"id": "c", '
    odd += b'"function": "oops"}]}}], "output": "not a list"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(odd))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": odd})  # type: ignore[operator]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("chat/completions", {"model": "m", "messages": "not a list"}),
        ("chat/completions", {"model": "m", "messages": [{"role": "user", "content": "q"}]}),
        ("responses", {"model": "m", "input": {"an": "object"}}),
        ("completions", {"model": "m", "prompt": "p"}),
    ],
)
def test_a_trace_of_a_broken_answer_still_has_its_page(
    start_proxy: Callable[..., Proxy],
    path: str,
    body: dict[str, object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from llmtap.proxy.server import ServerThread

    with ServerThread(broken_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        httpx.post(f"{proxy.url}/v1/{path}", json=body)
        proxy.flush()
        (trace,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
        with caplog.at_level("ERROR", logger="llmtap.ui"):
            page = httpx.get(f"{proxy.url}/traces/{trace['trace_id']}")
        assert page.status_code == 200
        # each shape read as it is, not left to the page's last resort
        assert not [r for r in caplog.records if "could not be shown" in r.getMessage()]


def test_a_conversation_sent_whole_shows_every_turn(proxy: Proxy) -> None:
    """The first call of a trace has shown nothing yet: its earlier turns are on the page,
    not folded away as history (later calls of an agent run fold what the first showed)."""
    messages = [
        {"role": "system", "content": "You are the system voice."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "m", "messages": messages})
    proxy.flush()
    (trace,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    page = httpx.get(f"{proxy.url}/traces/{trace['trace_id']}").text
    assert 'class="history"' not in page
    for m in messages:
        assert escaped(m["content"]) in page


def test_a_responses_call_folds_the_turns_it_was_sent_back() -> None:
    """An agent's Responses calls send the whole run back as input (the Agents SDK's way): as
    for chat, what came before the last model turn folds into "earlier messages" instead of
    repeating in every span (before: each span showed the whole run again)."""
    span = {
        "span_type": "CHAT_MODEL",
        "name": "responses",
        "status": {"code": "OK", "message": ""},
        "attributes": {"endpoint": "responses"},
        "inputs": {
            "input": [
                {"role": "user", "content": "weather in Oslo?"},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "snow"},
            ]
        },
        "outputs": {
            "output": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "It snows."}],
                }
            ]
        },
    }
    view = conversation(span)
    assert [m.role for m in view.history] == ["user"]
    assert view.messages[-1].role == "assistant" and view.messages[-1].text == "It snows."
