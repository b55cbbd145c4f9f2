"""RequestContext from the request path and the `llmtap-*` / `traceparent` controls."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from llmtap.recorder.records import RequestContext

DEFAULT_EXPERIMENT = "Default"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """(trace_id, parent span id) of a valid W3C traceparent, else None.

    Version ff and all-zero ids are invalid by the W3C spec; such a header is ignored rather
    than trusted, so that a broken client cannot merge unrelated calls into one trace. A later
    version may carry more fields after the four of version 00: those are read, the rest
    ignored, as the spec asks of a reader that knows version 00 only. Its hex is lowercase:
    an uppercase one is invalid too, as OpenTelemetry's propagator finds it.
    """
    match = _TRACEPARENT.match(value.strip())
    if not match:
        return None
    version, trace_id, parent_id, _flags, more = match.groups()
    if version == "ff" or (version == "00" and more) or trace_id == "0" * 32:
        return None
    if parent_id == "0" * 16:
        return None
    return trace_id, parent_id


def normalise_trace_id(value: str) -> str:
    """A 32-hex trace id from what a client sent: hex or a UUID as is, anything else hashed.

    Hashing keeps a free-form run name usable: the same name always lands in the same trace.
    """
    compact = value.strip().lower().replace("-", "")
    if _HEX32.match(compact) and compact != "0" * 32:  # (all zeros: W3C's invalid id)
        return compact
    return hashlib.blake2b(value.encode(), digest_size=16).hexdigest()


def build_context(experiment: str | None, controls: Mapping[str, str]) -> RequestContext:
    """The context of one request; `controls` are its llmtap-* headers without the prefix."""
    if not controls:
        return RequestContext(experiment=experiment or DEFAULT_EXPERIMENT)
    trace_id = parent_id = None
    if "traceparent" in controls:
        parsed = parse_traceparent(controls["traceparent"])
        if parsed:
            trace_id, parent_id = parsed
    if "trace-id" in controls and controls["trace-id"].strip():
        named = normalise_trace_id(controls["trace-id"])
        if named != trace_id:  # a traceparent's span is in its own trace, not this one
            parent_id = None
        trace_id = named
    tags = {k[4:]: v for k, v in controls.items() if k.startswith("tag-") and len(k) > 4}
    user = controls.get("user", "").strip() or None
    if user is not None:
        tags.setdefault("user", user)  # (a trace's tags are what its list filters on)
    version = _MODEL_VERSION.fullmatch(controls.get("model-version", "").strip())
    return RequestContext(
        experiment=experiment or controls.get("experiment") or DEFAULT_EXPERIMENT,
        trace_id=trace_id,
        parent_id=parent_id,
        session=controls.get("session") or None,
        user=user,
        tags=tags,
        predicted=(version[1], int(version[2])) if version else None,
    )


# `llmtap-model-version: models:/NAME/VERSION`, which `predict` sends with each call it makes
_MODEL_VERSION = re.compile(r"models:/(.+)/([0-9]+)", re.ASCII)
