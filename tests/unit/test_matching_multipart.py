"""Replay matching of multipart/form-data bodies: the parts matter, the random boundary not."""

from __future__ import annotations

import httpx
import orjson
from hypothesis import given
from hypothesis import strategies as st

from llmtap.recorder.matching import canonical_body, json_diff, match_key, multipart_parts

AUDIO = bytes(range(256)) * 4  # not UTF-8, as a real file is not
Part = tuple[str, bytes]  # (header lines, content)


def form(*parts: Part, boundary: str = "b0undary", end: bytes = b"\r\n") -> bytes:
    """A multipart body as an HTTP client writes it."""
    out = b""
    for head, content in parts:
        out += f"--{boundary}\r\n{head}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--".encode() + end


def field(name: str, value: str) -> Part:
    return f'Content-Disposition: form-data; name="{name}"', value.encode()


def upload(filename: str, content: bytes = AUDIO) -> Part:
    head = (
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: audio/wav"
    )
    return head, content


TRANSCRIPTION = (field("model", "whisper-1"), upload("speech.wav"))


def key(body: bytes) -> str:
    return match_key("POST", "/audio/transcriptions", body)


def test_the_same_parts_under_two_boundaries_match() -> None:
    one = form(*TRANSCRIPTION, boundary="a1b2c3")
    two = form(*TRANSCRIPTION, boundary="9f8e7d6c5b4a39281706d5c4b3a29180")
    assert one != two
    assert canonical_body(one) == canonical_body(two) and key(one) == key(two)


def test_the_closing_line_break_is_optional() -> None:
    assert key(form(*TRANSCRIPTION, end=b"")) == key(form(*TRANSCRIPTION, boundary="other"))


def test_bodies_the_sdk_sends_twice_match() -> None:
    """httpx (the openai SDK's transport) draws a new boundary for every request."""

    def body() -> bytes:
        files = {"file": ("speech.wav", AUDIO, "audio/wav")}
        return httpx.Request("POST", "http://x/", data={"model": "w"}, files=files).read()

    first, second = body(), body()
    assert first != second and key(first) == key(second)


@given(st.text(alphabet="0123456789abcXYZ'()+_,-./:=? ", min_size=1, max_size=70))
def test_every_rfc_2046_boundary_is_recognised(boundary: str) -> None:
    boundary = boundary.rstrip(" ") or "x"  # a boundary may not end in a space
    assert canonical_body(form(*TRANSCRIPTION, boundary=boundary)) == canonical_body(
        form(*TRANSCRIPTION)
    )


def test_a_changed_part_filename_or_field_does_not_match() -> None:
    original = key(form(*TRANSCRIPTION))
    changed = (
        form(field("model", "whisper-2"), upload("speech.wav")),
        form(field("model", "whisper-1"), upload("speech.wav", AUDIO[:-1] + b"!")),
        form(field("model", "whisper-1"), upload("other.wav")),
        form(field("model", "whisper-1")),
        form(*TRANSCRIPTION, field("language", "en")),
        form(field("modelx", "whisper-1"), upload("speech.wav")),
        form(field("model", "whisper-1"), field("model", "whisper-2"), upload("speech.wav")),
        form(field("model", "whisper-2"), field("model", "whisper-1"), upload("speech.wav")),
    )
    keys = {key(body) for body in changed}
    assert len(keys) == len(changed) and original not in keys


def test_the_same_upload_from_another_sdk_matches() -> None:
    """httpx sends the fields before the file, Node's fetch the file first; one names the
    file's type `audio/wav`, another `application/octet-stream`: the same request to the API,
    so one recording answers both (before: a miss from a client of the other language)."""
    node_like = form(
        (
            'content-disposition: form-data; name=file; filename="speech.wav"\r\n'
            "content-type: application/octet-stream",
            AUDIO,
        ),
        field("model", "whisper-1"),
        boundary="----formdata-undici-0123456789",
    )
    assert key(node_like) == key(form(*TRANSCRIPTION))


def test_part_boundaries_cannot_be_shifted_between_parts() -> None:
    """Content that looks like a part break under another boundary stays one part."""
    two_parts = form(field("a", "x"), field("b", "y"), boundary="B")
    inner = two_parts[len(b"--B\r\n") : -len(b"\r\n--B--\r\n")]
    smuggled = form(("", inner), boundary="C")
    assert multipart_parts(smuggled) is not None and key(smuggled) != key(two_parts)


def test_bodies_that_only_start_like_multipart_match_byte_for_byte() -> None:
    valid = form(*TRANSCRIPTION, boundary="abc")
    not_multipart = (
        b"--",
        b"-- just a dash line\n",
        b"--abc",
        b"--abc\r\n",
        b"--\r\nempty boundary\r\n----\r\n",
        valid[:-2] + b"\r\ntrailing words",  # something after the close
        valid.replace(b"--abc--", b"--abc-x"),  # never closed
        valid.replace(b"\r\n--abc\r\n", b"\r\n--abcd\r\n"),  # a delimiter not followed by CRLF
        form(*TRANSCRIPTION, boundary="x" * 71),  # longer than RFC 2046 allows
        form(*TRANSCRIPTION, boundary="ends in space "),
        form(*TRANSCRIPTION, boundary="semi;colon"),
    )
    for body in not_multipart:
        assert multipart_parts(body) is None, body[:40]
        assert canonical_body(body) == body
    # so two of them with different "boundaries" are different requests
    assert key(not_multipart[-1]) != key(form(*TRANSCRIPTION, boundary="semi:colon"))


def test_json_bodies_are_unaffected() -> None:
    body = b'{"model": "m", "input": "--abc\\r\\n"}'
    assert canonical_body(body) == orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    assert canonical_body(b"[1, 2]") == b"[1,2]"
    assert multipart_parts(body) is None


def test_a_miss_names_the_part_that_differs_and_never_the_boundary() -> None:
    recorded = form(*TRANSCRIPTION, boundary="first")
    assert json_diff(recorded, form(*TRANSCRIPTION, boundary="second")) == []
    sent = form(field("model", "whisper-2"), upload("other.wav"), boundary="second")
    assert json_diff(recorded, sent) == [
        "parts[0].content: 'whisper-1' -> 'whisper-2'",
        'parts[1].headers[0]: \'Content-Disposition: form-data; name="file"; '
        'filename="speech.wav"\' -> \'Content-Disposition: form-data; name="file"; '
        'filename="other.wav"\'',
    ]
    (line,) = json_diff(recorded, form(field("model", "whisper-1"), upload("speech.wav", b"\xff")))
    assert line.startswith("parts[1].content: '<1024 bytes, sha256 ") and "'<1 bytes" in line


def test_a_miss_between_other_bodies_still_shows_the_bytes() -> None:
    assert json_diff(b"plain one", b"plain two") == ["(body): 'plain one' -> 'plain two'"]
    assert json_diff(b"same", b"same") == []
