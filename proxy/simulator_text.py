"""Shared helpers of the offline OpenAI simulator: ids, tokens, text pieces, usage, logprobs,
JSON-schema example values and OpenAI-style error bodies.

Everything here is deterministic: the same input gives the same output (ids come from a
per-app request counter, never from a random source; ``hash()`` is never used on strings
because it is salted per process).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Any

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

MAGIC_WORDS = (
    "EMPTY_CHOICES",
    "EMPTY_STREAM",
    "ERROR_MID_STREAM",
    "AZURE_ANNOTATIONS",
    "LIST_CONTENT",
    "REFUSAL",
    "USAGE_ALWAYS",
)

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")

# request alias -> dated snapshot echoed in responses, like the real API does
MODEL_SNAPSHOTS = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "o3-mini": "o3-mini-2025-01-31",
}

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_PIECE_RE = re.compile(r"\s*\S+")
_JSON_PIECE_RE = re.compile(r"\w+|\s+|[^\w\s]+")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_ALTERNATES = (
    " the",
    " a",
    ",",
    ".",
    " and",
    " I",
    " to",
    " of",
    "!",
    " is",
    " you",
    " it",
    " that",
    " in",
    " for",
    " on",
    " with",
    " this",
    " be",
    " are",
    " we",
)


def make_id(kind: str, n: int, length: int) -> str:
    digest = hashlib.blake2b(f"{kind}:{n}".encode(), digest_size=64).digest()
    return "".join(ALNUM[b % 62] for b in digest[:length])


def request_id(n: int) -> str:
    return "req_" + hashlib.blake2b(b"req:%d" % n, digest_size=16).hexdigest()


def fingerprint(model: str) -> str:
    return "fp_" + hashlib.blake2b(model.encode(), digest_size=5).hexdigest()


def resolve_model(model: str) -> str:
    return MODEL_SNAPSHOTS.get(model, model)


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text)) if text else 0


def content_text(content: Any) -> str:
    """The text of a message content: a string, or a list of parts (text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                for key in ("text", "refusal", "output"):
                    value = part.get(key)
                    if isinstance(value, str):
                        out.append(value)
                        break
        return " ".join(out)
    return str(content)


def find_magic(text: str) -> str | None:
    if text:
        for word in MAGIC_WORDS:
            if word in text:
                return word
    return None


def word_pieces(text: str) -> list[str]:
    """Word-sized pieces whose concatenation is exactly ``text``."""
    pieces = _PIECE_RE.findall(text)
    if not pieces:
        return [text] if text else []
    rest = len(text) - sum(map(len, pieces))
    if rest:
        pieces[-1] += text[len(text) - rest :]
    return pieces


def json_pieces(text: str) -> list[str]:
    """Token-like fragments of a JSON string (`{"`, `location`, `":"`, ...)."""
    return _JSON_PIECE_RE.findall(text) or ([text] if text else [])


def split_even(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text)))
    if not text:
        return []
    size, extra = divmod(len(text), n)
    out, pos = [], 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        out.append(text[pos : pos + step])
        pos += step
    return out


def regroup(pieces: list[str], n: int) -> list[str]:
    """Join contiguous pieces into exactly ``n`` groups (n <= len(pieces))."""
    size, extra = divmod(len(pieces), n)
    out, pos = [], 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        out.append("".join(pieces[pos : pos + step]))
        pos += step
    return out


def text_pieces(text: str, forced: int | None) -> list[str]:
    """Pieces of a plain-text answer; ``forced`` (x-simulator-chunks) pads with filler words or
    merges pieces so that there are exactly that many."""
    pieces = word_pieces(text)
    if forced is None or forced <= 0:
        return pieces
    if forced > len(pieces):
        pieces = pieces + [
            (" " if pieces or i else "") + FILLER[i % len(FILLER)]
            for i in range(forced - len(pieces))
        ]
        return pieces
    if forced < len(pieces):
        return regroup(pieces, forced)
    return pieces


def fragment_pieces(text: str, forced: int | None) -> list[str]:
    """Pieces of a JSON string (content or tool arguments): never padded, so it stays valid."""
    if forced is not None and forced > 0:
        return split_even(text, forced)
    return json_pieces(text)


def token_logprob(token: str) -> float:
    return -round((zlib.crc32(token.encode()) % 2000) / 1000.0 + 0.0001, 4)


def chat_logprob(token: str, top: int) -> dict:
    lp = token_logprob(token)
    entry = {"token": token, "logprob": lp, "bytes": list(token.encode()), "top_logprobs": []}
    if top:
        tops = [{"token": token, "logprob": lp, "bytes": list(token.encode())}]
        for alt in _ALTERNATES:
            if len(tops) >= top:
                break
            if alt != token:
                tops.append(
                    {
                        "token": alt,
                        "logprob": round(lp - 1.25 * len(tops), 4),
                        "bytes": list(alt.encode()),
                    }
                )
        entry["top_logprobs"] = tops
    return entry


def legacy_top(token: str, top: int) -> dict:
    lp = token_logprob(token)
    out = {token: lp}
    for alt in _ALTERNATES:
        if len(out) >= top:
            break
        if alt != token:
            out[alt] = round(lp - 1.25 * len(out), 4)
    return out


def chat_usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def responses_usage(prompt: int, completion: int) -> dict:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


# ---------------------------------------------------------------------------------- errors


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request (simulated).", "invalid_request_error", None),
    401: (
        "Incorrect API key provided: sk-simu***********. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: (
        "You are not allowed to access this resource (simulated).",
        "invalid_request_error",
        "unsupported_country_region_territory",
    ),
    404: ("The requested resource does not exist (simulated).", "invalid_request_error", None),
    409: ("Conflict (simulated).", "invalid_request_error", None),
    422: ("Unprocessable entity (simulated).", "invalid_request_error", None),
    429: (
        "Rate limit reached for gpt-4o-mini in organization org-simulator on requests per min "
        "(RPM): Limit 3, Used 3, Requested 1. Please try again in 1s.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


def status_error(status: int) -> dict:
    message, type_, code = STATUS_ERRORS.get(
        status,
        (
            f"Simulated error with HTTP status {status}.",
            "server_error" if status >= 500 else "invalid_request_error",
            None,
        ),
    )
    return error_body(message, type_, None, code)


STREAM_ERROR = error_body(
    "The server had an error while processing your request. Sorry about that!", "server_error"
)


class BadRequest(Exception):
    """Raised by endpoint builders: becomes a 4xx OpenAI-style error response."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type_, param, code)


# ----------------------------------------------------------------------- schema examples


class ArgFiller:
    """Builds a value valid against a JSON schema, filling strings with the user text and
    numbers with the numbers found in it (in order)."""

    def __init__(self, root: dict, user_text: str) -> None:
        self.root = root if isinstance(root, dict) else {}
        self.text = (user_text or "example")[:200]
        self.numbers = _NUMBER_RE.findall(user_text or "")

    def _resolve(self, ref: str) -> dict:
        node: Any = self.root
        for part in ref.lstrip("#/").split("/"):
            if not part:
                continue
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}

    def _number(self, schema: dict, integer: bool) -> int | float:
        if self.numbers:
            raw = self.numbers.pop(0)
            value: int | float = int(float(raw)) if integer else float(raw)
        else:
            value = 1 if integer else 1.5
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if isinstance(lo, int | float) and value < lo:
            value = int(lo) if integer else lo
        if isinstance(hi, int | float) and value > hi:
            value = int(hi) if integer else hi
        return value

    def value(self, schema: Any, depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > 12:
            return self.text
        if "$ref" in schema:
            return self.value(self._resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        if isinstance(schema.get("examples"), list) and schema["examples"]:
            return schema["examples"][0]  # what a schema's author expects a value to look like
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                chosen = next(
                    (o for o in options if not (isinstance(o, dict) and o.get("type") == "null")),
                    options[0],
                )
                return self.value(chosen, depth + 1)
        if isinstance(schema.get("allOf"), list) and schema["allOf"]:
            merged: dict = {}
            for part in schema["allOf"]:
                if isinstance(part, dict):
                    merged.update(part)
            return self.value(merged, depth + 1)
        type_ = schema.get("type")
        if isinstance(type_, list):
            type_ = next((t for t in type_ if t != "null"), "null")
        if type_ is None:
            type_ = "object" if "properties" in schema else "string"
        if type_ == "object":
            props = schema.get("properties") or {}
            return {name: self.value(sub, depth + 1) for name, sub in props.items()}
        if type_ == "array":
            count = max(1, int(schema.get("minItems") or 1))
            return [self.value(schema.get("items") or {}, depth + 1) for _ in range(count)]
        if type_ == "integer":
            return self._number(schema, True)
        if type_ == "number":
            return self._number(schema, False)
        if type_ == "boolean":
            return True
        if type_ == "null":
            return None
        fmt = schema.get("format")
        if fmt == "date":
            return "2024-01-01"
        if fmt == "date-time":
            return "2024-01-01T00:00:00Z"
        if fmt == "email":
            return "user@example.com"
        if fmt in ("uri", "url"):
            return "https://example.com/"
        text = self.text
        max_len = schema.get("maxLength")
        if isinstance(max_len, int):
            text = text[:max_len]
        min_len = schema.get("minLength")
        if isinstance(min_len, int) and len(text) < min_len:
            text = text + "x" * (min_len - len(text))
        return text


# ------------------------------------------------------------------------- shared shapes


class SSEStream:
    """A streamed answer: its SSE events (bytes, in order) and how to fault-inject into it."""

    __slots__ = ("events", "terminal", "error_event", "malformed_event")

    def __init__(
        self, events: list[bytes], *, terminal: bool, error_event: bytes, malformed_event: bytes
    ) -> None:
        self.events = events
        # the last event is the end marker (``data: [DONE]`` / ``response.completed``)
        self.terminal = terminal
        self.error_event = error_event
        self.malformed_event = malformed_event


def pick_tools(
    tools: list[tuple[str, dict]],
    tool_choice: Any,
    parallel: Any,
    user_text: str,
    answering_tools: bool,
) -> list[tuple[str, dict]]:
    """Which (name, parameters) tools the scripted agent calls; [] means answer with text.

    ``tool_choice="none"`` -> none; a named choice -> that tool; after tool results (last
    message is a tool message / function_call_output) -> none unless ``"required"``;
    ``parallel_tool_calls: true`` -> every offered tool; otherwise one tool: the first one
    whose name the user text mentions, else the first offered."""
    if not tools or tool_choice == "none":
        return []
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else tool_choice.get("name")
        if name:
            return [t for t in tools if t[0] == name][:1]
    if answering_tools and tool_choice != "required":
        return []
    if parallel is True:
        return list(tools)
    lowered = (user_text or "").lower()
    for tool in tools:
        name = tool[0].lower()
        if name and (name in lowered or name.replace("_", " ") in lowered):
            return [tool]
    return [tools[0]]


def tool_answer(results: list[str]) -> str:
    if len(results) == 1:
        return f"The tool returned: {results[0]}"
    return "The tools returned: " + "; ".join(results)
