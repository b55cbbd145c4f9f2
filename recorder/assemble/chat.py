"""Reassemble a `chat.completion.chunk` stream into the `chat.completion` it stands for.

The result equals what the OpenAI SDK's own accumulator builds from the same chunks
(`ChatCompletionStreamState.handle_chunk()` then `get_final_completion()`, dumped without the
SDK-only `parsed` and `parsed_arguments` keys), as the SDK's stream feeds it: Azure's
asynchronous filter events (`"object": ""`: a `prompt_filter_results` chunk first, filter
results after the text) are skipped, as `client.chat.completions.stream()` skips them (and as
MLflow's fix for mlflow#23026 does). It follows the same rules: the first
chunk gives the envelope, each choice's first chunk gives its fields, deltas merge as the SDK's
`accumulate_delta` merges them (strings concatenate, dicts merge, lists of indexed entries merge
by `index`), and logprobs lists extend. Later chunks change only `usage`, `system_fingerprint`
and `moderation` around the choices: a field first sent after the first chunk is not kept, and
a choice's extra fields (Azure's `content_filter_results`) are those of its first chunk. A
choice sent in one chunk keeps the keys its delta had (and `tool_calls`): the SDK rebuilds a
message with every field, null when never sent, only when a later chunk adds to it; and
`usage` is there only when the first chunk had it or another chunk followed.

Where the SDK misbehaves on shapes real providers send, we differ on purpose:
- `id`, `name` and `role` repeated in later deltas are kept once (the SDK concatenates them,
  giving `"assistantassistant"`); numbers are replaced, not added.
- `id`, `model` or `created` missing from the first chunk (no key at all) take the first
  non-empty value a later chunk has (the SDK leaves them out). Present but empty, they stay
  empty, as in the SDK.
- `usage`, `system_fingerprint` and `moderation` take the last non-null value (the SDK takes the
  last chunk's, null or not, and loses a usage that came before the last chunk).
- list-typed `content` (Databricks) is joined into a string (the SDK drops it).
- choices and tool calls are keyed by their `index`, so gaps or out-of-order indexes do not
  crash or cross-wire them; a choice first seen after the first chunk keeps its logprobs once
  (the SDK appends them twice).
- junk never raises: it is skipped and noted in `problems`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson

_FIRST_WINS = frozenset({"id", "name", "role"})  # the SDK concatenates repeats of these
_REPLACED = frozenset({"index", "type"})  # the SDK replaces these, as do we
_LAST_NON_NULL = frozenset({"usage", "system_fingerprint", "moderation"})
_ENVELOPE_SKIPPED = frozenset({"choices", "obfuscation"})  # obfuscation is stream padding
_FILLED_LATER = frozenset({"id", "model", "created"})  # when the first chunk has no such key
_EMPTY = (None, "", 0)
# the SDK's final message carries every `ChatCompletionMessage` field, null when never sent
# (a message a second chunk added to: see the module doc)
_MESSAGE_FIELDS: dict[str, Any] = dict.fromkeys(
    ("content", "refusal", "annotations", "audio", "function_call", "tool_calls")
)


def copy_json(value: Any) -> Any:
    """A deep copy of parsed JSON, so that merging never mutates the caller's payloads."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def is_index(value: Any) -> TypeGuard[int]:
    return type(value) is int  # bool is an int subclass, and never an index


class Envelope:
    """The fields around `choices`: each the first non-empty value sent, but the last non-null
    usage and the like (legacy completions; chat follows the SDK: `ChatEnvelope`)."""

    def __init__(self, object_name: str) -> None:
        self.fields: dict[str, Any] = {}
        self._object = object_name
        # first-wins fields that hold a value already: later chunks repeat them, skip at once
        self._settled: set[str] = set(_ENVELOPE_SKIPPED)

    def feed(self, chunk: Mapping[str, Any]) -> None:
        fields, settled = self.fields, self._settled
        for key, value in chunk.items():
            if key in settled:
                continue
            if key in _LAST_NON_NULL:
                if value is not None or key not in fields:
                    fields[key] = copy_json(value)
            elif fields.get(key) in _EMPTY:
                fields[key] = copy_json(value)
                if value not in _EMPTY:
                    settled.add(key)

    def quiet_watch(self, chunk: dict[str, Any]) -> tuple[str, ...] | None:
        """After `chunk` was fed: whether a later chunk with the same keys changes nothing here
        so long as its keys named in the returned tuple are null or the same string as now
        (every other key is settled or skipped); None when it might change something."""
        fields, settled = self.fields, self._settled
        watch: list[str] = []
        for key in chunk:
            if key in settled:
                continue
            if key in _LAST_NON_NULL and key in fields:
                watch.append(key)
                continue
            return None
        return tuple(watch)

    def result(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = dict(self.fields)
        out["object"] = self._object
        out["choices"] = choices
        out.setdefault("system_fingerprint", None)
        out.setdefault("usage", None)
        return out


class ChatEnvelope(Envelope):
    """The SDK's envelope: every field of the first chunk as it is, then only the last
    non-null `usage`, `system_fingerprint` and `moderation`, and the identity fields the first
    chunk had no key for (module doc)."""

    def __init__(self) -> None:
        super().__init__("chat.completion")
        self._open: set[str] | None = None  # identity still to fill; None before the first chunk

    def feed(self, chunk: Mapping[str, Any]) -> None:
        fields, open_keys = self.fields, self._open
        if open_keys is None:
            self._open = set(_FILLED_LATER.difference(chunk))
            for key, value in chunk.items():
                if key not in _ENVELOPE_SKIPPED:
                    fields[key] = copy_json(value)
            return
        for key, value in chunk.items():
            if key in _LAST_NON_NULL:
                if value is not None or key not in fields:
                    fields[key] = copy_json(value)
            elif key in open_keys:
                if fields.get(key) in _EMPTY:
                    fields[key] = copy_json(value)
                if value not in _EMPTY:
                    open_keys.discard(key)

    def quiet_watch(self, chunk: dict[str, Any]) -> tuple[str, ...] | None:
        """As `Envelope.quiet_watch`: after the first chunk, only these keys can change."""
        open_keys = self._open or ()
        watch: list[str] = []
        for key in chunk:
            if key in _LAST_NON_NULL:
                if key not in self.fields:
                    return None
                watch.append(key)
            elif key in open_keys:
                return None
        return tuple(watch)


def merge_delta(acc: dict[str, Any], delta: Mapping[str, Any], problems: list[str]) -> None:
    """Merge one delta into `acc` in place, as the SDK's `accumulate_delta` does (module doc)."""
    for key, value in delta.items():
        current = acc.get(key)
        if current is None:
            if not _has_indexed_entries(value):
                acc[key] = copy_json(value)
                continue
            current = acc[key] = []
        if key in _REPLACED:
            acc[key] = copy_json(value)
        elif key in _FIRST_WINS and isinstance(current, str) and current:
            continue
        elif isinstance(current, str) and isinstance(value, str):
            current = None  # let go, so that `_concat` holds the only reference
            _concat(acc, key, value)
        elif isinstance(current, dict) and isinstance(value, dict):
            merge_delta(current, value, problems)
        elif isinstance(current, list) and isinstance(value, list):
            _merge_list(key, current, value, problems)
        elif isinstance(current, int | float) and isinstance(value, int | float):
            acc[key] = value
        elif value is not None:
            problems.append(
                f"delta field {key!r}: cannot merge {type(value).__name__} into "
                f"{type(current).__name__}; kept the first"
            )


def _concat(acc: dict[str, Any], key: str, value: str) -> None:
    text: str = acc.pop(key)
    text += value  # CPython grows a string in place when nothing else refers to it: not quadratic
    acc[key] = text


def _has_indexed_entries(value: Any) -> bool:
    return isinstance(value, list) and any(
        isinstance(entry, dict) and "index" in entry for entry in value
    )


def _merge_list(key: str, acc: list[Any], delta: list[Any], problems: list[str]) -> None:
    if not _has_indexed_entries(delta) and not _has_indexed_entries(acc):
        acc.extend(copy_json(delta))  # plain lists only ever grow
        return
    for entry in delta:
        index = entry.get("index") if isinstance(entry, dict) else None
        if not is_index(index):
            problems.append(f"{key} entry without an integer index: appended as is")
            acc.append(copy_json(entry))
            continue
        _merge_indexed(acc, index, entry, problems)


def _merge_indexed(
    acc: list[Any], index: int, entry: Mapping[str, Any], problems: list[str]
) -> None:
    position = len(acc)
    for i in range(len(acc) - 1, -1, -1):  # the last entry of that index: see below
        existing = acc[i]
        if isinstance(existing, dict) and existing.get("index") == index:
            if not _another_call(existing, entry):
                merge_delta(existing, entry, problems)
                return
            # some gateways number every call of a Gemini answer 0, each whole in its chunk:
            # merged, two calls would make one with both argument texts run together
            problems.append(f"calls with index {index} and different ids: kept apart")
            acc.insert(i + 1, copy_json(entry))
            return
    for i, existing in enumerate(acc):
        existing_index = existing.get("index") if isinstance(existing, dict) else None
        if is_index(existing_index) and existing_index > index:
            position = i
            break
    acc.insert(position, copy_json(entry))  # kept in index order, whatever the arrival order


def _another_call(existing: dict[str, Any], entry: Mapping[str, Any]) -> bool:
    """An entry that opens a new call under an index already taken: its own id, and a name
    (a fragment of the same call never names its function again)."""
    new_id, old_id = entry.get("id"), existing.get("id")
    if not (new_id and old_id and isinstance(new_id, str) and new_id != old_id):
        return False
    function = entry.get("function")
    return isinstance(function, dict) and bool(function.get("name"))


class ChatAssembler:
    """Feeds on parsed `chat.completion.chunk` payloads; `result()` is the `chat.completion`.

    Most chunks of a stream are alike: the envelope of the chunk before, one choice, one more
    piece of text. `feed` takes those in a few steps (`_feed_text`) and everything else by the
    general rules; both leave the same state (`fast=False` keeps to the general rules, for
    tests that compare the two).
    """

    def __init__(self, fast: bool = True) -> None:
        self.problems: list[str] = []
        self._envelope = ChatEnvelope()
        self._choices: dict[int, dict[str, Any]] = {}
        self._merged: set[int] = set()  # choices a chunk after their first one added to
        self._later = False  # a chunk came after the first
        self._began = False
        self._fed = False
        self._fast = fast
        # the keys of the last chunk fed by the general rules, when a chunk with the same keys
        # leaves the envelope as it is (see Envelope.quiet_watch), and the keys to watch
        self._quiet_keys: frozenset[str] | None = None
        self._watch: tuple[str, ...] = ()
        self._appended: dict[str, Any] | None = None  # the message the last feed added text to
        self._template: _TextTemplate | None = None
        self._learnt = 0

    def feed(self, chunk: Mapping[str, Any]) -> None:
        """Take one chunk. Never raises: what cannot be used is noted in `problems`."""
        self._appended = None
        if type(chunk) is dict and chunk.get("object") == "":  # an Azure filter event: skipped
            return
        self._later, self._began = self._began, True
        if self._quiet_keys is not None and self._feed_text(chunk):
            return
        self._template = None  # the general rules may change what a template stands for
        try:
            self._feed(chunk)
        except Exception as exc:  # a last resort: junk must never stop a recording
            self._quiet_keys = None
            self.problems.append(f"chunk not understood: {exc!r}")
            return
        if (
            self._fast
            and type(chunk) is dict
            and self._fed
            and (self._quiet_keys is None or chunk.keys() != self._quiet_keys)
        ):
            watch = self._envelope.quiet_watch(chunk)
            self._quiet_keys = None if watch is None else frozenset(chunk)
            self._watch = watch or ()

    def _feed_text(self, chunk: Any) -> bool:
        """The common chunk, taken as the general rules would take it: the envelope changes
        nothing, one choice seen before, no logprobs, a delta that is one more piece of text
        (or nothing). False, having changed nothing, for any other chunk."""
        if type(chunk) is not dict or chunk.keys() != self._quiet_keys:
            return False
        fields = self._envelope.fields
        for key in self._watch:
            value = chunk[key]
            if value is not None and not (type(value) is str and value == fields[key]):
                return False
        choices = chunk.get("choices")
        if type(choices) is not list or len(choices) != 1:
            return False
        choice = choices[0]
        if type(choice) is not dict:
            return False
        index = choice.get("index")
        snapshot = self._choices.get(index) if type(index) is int else None
        if snapshot is None or choice.get("logprobs") is not None:
            return False
        delta = choice.get("delta")
        if type(delta) is not dict:
            return False
        self._merged.add(index)
        if delta:
            if len(delta) != 1 or not _append_text(snapshot["message"], delta):
                return False
            self._appended = snapshot["message"]
        if choice.get("finish_reason"):
            snapshot["finish_reason"] = choice["finish_reason"]
        return True

    # The same chunks as JSON text: most of a stream's chunks are byte for byte alike but for
    # their text (and OpenAI's `obfuscation` padding), so the text is all there is to read.

    LEARN_AT_MOST = 4
    """Templates learnt per stream at the most (a stream whose chunks differ in more than
    their text would otherwise pay for learning on every chunk)."""

    def learn_json(self, raw: bytes, chunk: Mapping[str, Any]) -> None:
        """After `feed(chunk)`, with `raw` the JSON text `chunk` was parsed from: when that
        chunk was one more piece of text, keep `raw` as a template for `feed_json`."""
        message = self._appended
        if message is None or not self._fast or self._learnt >= self.LEARN_AT_MOST:
            return
        if chunk["choices"][0].get("finish_reason"):
            return  # its like would set the finish reason again, after another one maybe
        self._learnt += 1
        self._template = _TextTemplate.learn(raw, chunk, message)

    def feed_json(self, payloads: list[bytes], start: int) -> int:
        """Take chunks as JSON text, from `payloads[start]` on, as `feed(orjson.loads(raw))`
        would, for as long as each is the text of the template (see `learn_json`) but for its
        text and padding: their texts are appended. Returns the index of the first payload
        not taken (`start` when none was: nothing changed then)."""
        template = self._template
        if template is None:
            return start
        text_of = template.text_of
        texts: list[str] = []
        end = len(payloads)
        at = start
        while at < end:
            text = text_of(payloads[at])
            if text is None:
                break
            texts.append(text)
            at += 1
        if texts:
            _append_to(template.message, "".join(texts))
        return at

    def result(self) -> dict[str, Any] | None:
        """The `chat.completion`, or None if no chunk had a `choices` list."""
        if not self._fed:
            return None
        choices = [
            self._final_choice(self._choices[i], i in self._merged) for i in sorted(self._choices)
        ]
        out = self._envelope.result(choices)
        if not self._later and "usage" not in self._envelope.fields:
            del out["usage"]  # the SDK sets it from each chunk after the first, null or not
        return out

    def _feed(self, chunk: Mapping[str, Any]) -> None:
        if not isinstance(chunk, dict):
            self.problems.append(f"chunk is a {type(chunk).__name__}, not an object")
            return
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            self.problems.append(f"chunk without a choices list: {str(chunk)[:200]}")
            return
        self._fed = True
        self._envelope.feed(chunk)
        for choice in choices:
            self._feed_choice(choice)

    def _feed_choice(self, choice: Any) -> None:
        index = choice.get("index") if isinstance(choice, dict) else None
        if not is_index(index):
            self.problems.append(f"choice without an integer index: {str(choice)[:200]}")
            return
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            if delta is not None:
                self.problems.append(f"choice {index}: delta is not an object")
            delta = {}
        snapshot = self._choices.get(index)
        if snapshot is None:
            snapshot = {key: copy_json(value) for key, value in choice.items() if key != "delta"}
            snapshot["message"] = {}
            self._choices[index] = snapshot
        else:
            self._merged.add(index)
            logprobs = choice.get("logprobs")
            if logprobs is not None:
                self._feed_logprobs(snapshot, logprobs)
            elif len(delta) == 1 and _append_text(snapshot["message"], delta):
                # the common chunk: one more piece of text, and nothing else to merge
                if choice.get("finish_reason"):
                    snapshot["finish_reason"] = choice["finish_reason"]
                return
        merge_delta(snapshot["message"], _with_text_content(delta, self.problems), self.problems)
        if choice.get("finish_reason"):
            snapshot["finish_reason"] = choice["finish_reason"]

    def _feed_logprobs(self, snapshot: dict[str, Any], logprobs: Any) -> None:
        if logprobs is None:
            return
        if not isinstance(logprobs, dict):
            self.problems.append("logprobs is not an object")
            return
        current = snapshot.get("logprobs")
        if not isinstance(current, dict):
            snapshot["logprobs"] = {
                "content": copy_json(logprobs.get("content")),
                "refusal": copy_json(logprobs.get("refusal")),
            }
            return
        for key in ("content", "refusal"):
            tokens = logprobs.get(key)
            if not tokens:
                continue
            if not isinstance(tokens, list) or not isinstance(current.get(key) or [], list):
                self.problems.append(f"logprobs.{key} is not a list")
                continue
            current[key] = (current.get(key) or []) + copy_json(tokens)

    def _final_choice(self, snapshot: dict[str, Any], merged: bool) -> dict[str, Any]:
        """`merged`: a chunk after the choice's first one added to it. The SDK then rebuilds
        the message whole, every field null when never sent; a choice sent in one chunk
        (a whole answer at once, from a cache or a simple server) keeps the keys its delta had,
        and `tool_calls`."""
        choice = dict(snapshot)
        message = snapshot["message"]
        if merged:  # role first, for readers; null when no delta said it, as in the SDK's
            final = {"role": message.get("role"), **_MESSAGE_FIELDS, **message}
        else:
            final = {**message, "tool_calls": message.get("tool_calls")}
        choice["message"] = final
        calls = final["tool_calls"]
        if calls == []:  # Groq sends `"tool_calls": []` in every delta
            final["tool_calls"] = None  # and the SDK's final completion says None
        elif isinstance(calls, list):
            for call in calls:  # a server that never says `type` (the SDK: null)
                if isinstance(call, dict) and "type" not in call:
                    call["type"] = None
        return choice


def _append_text(message: dict[str, Any], delta: dict[str, Any]) -> bool:
    """`merge_delta` for a delta that is only more text to an existing text: True if it was."""
    value = delta.get("content")
    if type(value) is not str or type(message.get("content")) is not str:
        return False
    _append_to(message, value)
    return True


def _append_to(message: dict[str, Any], value: str) -> None:
    text: str = message.pop("content")
    text += value  # grown in place: the dict no longer refers to it (see _concat)
    message["content"] = text


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
"""Where a JSON string that starts here ends, if it is one (`orjson.loads` says whether)."""
_TEXT_KEY = re.compile(rb'"content"[ \t\n\r]*:[ \t\n\r]*')
_PAD_KEY = re.compile(rb'"obfuscation"[ \t\n\r]*:[ \t\n\r]*')
_PROBES = ("\x00llmtap text\x00", "\x00llmtap padding\x00")


class _TextTemplate:
    """A text chunk's JSON text cut around its variable strings: the delta's `content` and
    the skipped `obfuscation`, if any. A text made of the same bytes around other JSON strings
    in those places parses as the same chunk with those strings (JSON's grammar puts any
    string where a string was)."""

    __slots__ = ("head", "middle", "tail", "text_first", "message")

    def __init__(self, segments: list[bytes], text_first: bool, message: dict[str, Any]) -> None:
        self.head, self.tail = segments[0], segments[-1]
        self.middle = segments[1] if len(segments) == 3 else None  # between text and padding
        self.text_first = text_first
        self.message = message

    @classmethod
    def learn(
        cls, raw: bytes, chunk: Mapping[str, Any], message: dict[str, Any]
    ) -> _TextTemplate | None:
        """The template of `raw` (the text of `chunk`, whose delta is only text), or None
        when where its strings are cannot be told for sure."""
        slots: list[tuple[int, int, bool]] = []
        for key, is_text in ((_TEXT_KEY, True), (_PAD_KEY, False)):
            found = [_JSON_STRING.match(raw, m.end()) for m in key.finditer(raw)]
            if len(found) > 1 or None in found:
                return None
            slots += [(m.start(), m.end(), is_text) for m in found if m is not None]
        if not any(is_text for _, _, is_text in slots):
            return None
        slots.sort()
        starts = [0, *(end for _, end, _ in slots)]
        ends = [*(start for start, _, _ in slots), len(raw)]
        if any(a > b for a, b in zip(starts, ends, strict=True)):
            return None
        segments = [raw[a:b] for a, b in zip(starts, ends, strict=True)]
        # proof: with other strings in those places, the text parses as the chunk with those
        # strings as its text and padding (and nothing else changed)
        probes = [orjson.dumps(_PROBES[0] if t else _PROBES[1]) for _, _, t in slots]
        probe = segments[0] + b"".join(p + seg for p, seg in zip(probes, segments[1:], strict=True))
        expected = copy_json(chunk)
        expected["choices"][0]["delta"]["content"] = _PROBES[0]
        if len(slots) == 2:
            expected["obfuscation"] = _PROBES[1]
        try:
            if orjson.loads(probe) != expected:
                return None
        except orjson.JSONDecodeError:
            return None
        return cls(segments, slots[0][2], message)

    def text_of(self, raw: bytes) -> str | None:
        """The text of `raw` if it is this template's with other strings; else None."""
        head, tail = self.head, self.tail
        if not (raw.startswith(head) and raw.endswith(tail)):
            return None
        end = len(raw) - len(tail)
        middle = self.middle
        try:
            if middle is None:
                text = orjson.loads(raw[len(head) : end])
            else:
                # any cut will do: it is proof enough that both sides parse as strings
                cut = raw.find(middle, len(head), end)
                if cut < 0:
                    return None
                first, second = raw[len(head) : cut], raw[cut + len(middle) : end]
                text_piece, pad_piece = (first, second) if self.text_first else (second, first)
                if type(orjson.loads(pad_piece)) is not str:
                    return None
                text = orjson.loads(text_piece)
        except orjson.JSONDecodeError:
            return None
        return text if type(text) is str else None


def _with_text_content(delta: Mapping[str, Any], problems: list[str]) -> Mapping[str, Any]:
    """Databricks and others send `content` as a list of parts; the wire format is a string."""
    parts = delta.get("content")
    if not isinstance(parts, list):
        return delta
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            problems.append(f"content part without text dropped: {str(part)[:200]}")
    return {**delta, "content": "".join(texts)}
