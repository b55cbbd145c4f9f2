"""RequestContext from paths and headers: experiments, W3C traceparent, trace ids, tags."""

from __future__ import annotations

from llmtap.proxy.app import split_api_path
from llmtap.proxy.context import build_context, normalise_trace_id, parse_traceparent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_split_api_path() -> None:
    """(experiment, path below /v1 decoded, the same as sent), from the path as sent."""
    assert split_api_path("/v1/chat/completions") == (
        None,
        "/chat/completions",
        "/chat/completions",
    )
    assert split_api_path("/v1") == (None, "", "")
    assert split_api_path("/experiments/nightly/v1/embeddings") == (
        "nightly",
        "/embeddings",
        "/embeddings",
    )
    assert split_api_path("/experiments/x/v2/embeddings") is None
    assert split_api_path("/v10/x") is None
    assert split_api_path("/api/traces") is None
    assert split_api_path("/experiments//v1/x") is None


def test_split_api_path_reads_each_part_once_from_the_path_as_sent() -> None:
    """An encoded slash belongs to the name it is in; the path below /v1 is forwarded as sent
    (before, the name and the forwarded path were read from two different forms of the path:
    `/experiments/a%2Fv1/x/v1/models` went upstream as `/v1v1/models`, recorded as
    `/x/v1/models`)."""
    assert split_api_path("/experiments/team%2Frun-1/v1/models") == (
        "team/run-1",
        "/models",
        "/models",
    )
    assert split_api_path("/experiments/a%2Fv1/x/v1/models") is None
    assert split_api_path("/experiments/a/%76%31/models") is None  # v1 spelt in escapes
    assert split_api_path("/experiments/caf%C3%A9/v1/files/a%20b") == (
        "café",
        "/files/a b",
        "/files/a%20b",
    )


def test_traceparent_validation() -> None:
    assert parse_traceparent(VALID) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert parse_traceparent(VALID.upper()) is None  # uppercase hex: invalid (W3C, OpenTelemetry)
    for bad in (
        "",
        "00-xyz",
        VALID.replace("00-", "ff-", 1),
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        VALID + "-extra",
    ):
        assert parse_traceparent(bad) is None, bad


def test_trace_id_normalisation() -> None:
    uuid = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
    assert normalise_trace_id(uuid) == "4bf92f3577b34da6a3ce929d0e0e4736"
    named = normalise_trace_id("nightly run 7")
    assert len(named) == 32 and named == normalise_trace_id("nightly run 7")
    assert normalise_trace_id("0" * 32) != "0" * 32  # W3C's invalid id: a name like any other


def test_context_from_controls() -> None:
    ctx = build_context(
        None,
        {
            "traceparent": VALID,
            "session": "s",
            "tag-team": "core",
            "tag-": "ignored",
            "experiment": "hdr",
        },
    )
    assert (
        ctx.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and ctx.parent_id == "00f067aa0ba902b7"
    )
    assert ctx.session == "s" and ctx.tags == {"team": "core"} and ctx.experiment == "hdr"
    assert build_context("path", {"experiment": "hdr"}).experiment == "path"
    assert build_context(None, {}).experiment == "Default"


def test_a_later_traceparent_version_is_read_by_its_first_fields() -> None:
    """W3C: a reader that knows version 00 reads the four fields of a later version and
    ignores what follows; version 00 itself has exactly four."""
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert parse_traceparent(f"01-{trace}-{span}-01-what-comes-later") == (trace, span)
    assert parse_traceparent(f"00-{trace}-{span}-01-extra") is None


def test_a_traceparent_of_another_trace_gives_no_parent_to_a_named_trace() -> None:
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    header = f"00-{trace}-{span}-01"
    elsewhere = build_context(None, {"traceparent": header, "trace-id": "my-run"})
    assert elsewhere.trace_id == normalise_trace_id("my-run") and elsewhere.parent_id is None
    same = build_context(None, {"traceparent": header, "trace-id": trace.upper()})
    assert same.trace_id == trace and same.parent_id == span


def test_the_model_version_control_is_read_strictly_and_is_no_tag() -> None:
    """`predict` marks its calls with `llmtap-model-version`; a user's own `llmtap-tag-model_uri`
    is a tag like any other (before, that tag was the mark: a user's value switched off model
    logging, and `models:/x/²` broke the trace's build)."""
    ctx = build_context(None, {"model-version": "models:/team/bot/12", "tag-model_uri": "x"})
    assert ctx.predicted == ("team/bot", 12) and ctx.tags == {"model_uri": "x"}
    for odd in ("models:/x/²", "models:/x/latest", "x/1", "models:/x/"):
        assert build_context(None, {"model-version": odd}).predicted is None, odd
    assert build_context(None, {"tag-model_uri": "models:/x/1"}).predicted is None
