"""Cassettes: export, import, round trips, replay from them, and the secret check."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from openai import OpenAI

from llmtap.proxy.cli import main
from tests.conftest import TEST_KEY, Proxy

AUTH = {"authorization": f"Bearer {TEST_KEY}"}


def record_some(proxy: Proxy) -> dict[str, bytes]:
    """A few exchanges, compressed and not, streamed and not; what the client received."""
    got = {}
    with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "ünïcode ✓"}])
        for _ in c.chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "s"}]
        ):
            pass
        c.embeddings.create(model="text-embedding-3-small", input="e")
    for name, headers in (
        ("gzip", {"accept-encoding": "gzip", "x-simulator-compress": "gzip"}),
        ("plain", {}),
    ):
        body = {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": name}],
        }
        with httpx.stream(
            "POST", f"{proxy.base_url}/chat/completions", json=body, headers=headers
        ) as r:
            got[name] = r.read()  # decoded, as a client sees it
    proxy.flush()
    return got


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_export_import_export_is_unchanged_and_replays_the_same_bytes(
    proxy: Proxy, start_proxy: Any, tmp_path: Path
) -> None:
    live = record_some(proxy)
    first, second = tmp_path / "one.yaml", tmp_path / "two.yaml"
    result = cli("cassette", "export", "--db", str(proxy.db), "-o", str(first))
    assert result.exit_code == 0 and "5 exchanges" in result.output, result.output
    imported = tmp_path / "imported.db"
    assert cli("cassette", "import", "--db", str(imported), str(first)).exit_code == 0
    assert cli("cassette", "import", "--db", str(imported), str(first)).exit_code == 0  # no dupes
    assert cli("cassette", "export", "--db", str(imported), "-o", str(second)).exit_code == 0
    assert first.read_text() == second.read_text()
    text = first.read_text()
    assert "content-encoding" not in text and "ünïcode ✓" in text
    assert TEST_KEY not in text and "set-cookie" not in text
    replay = start_proxy(mode="replay", db=str(imported))
    for name in ("gzip", "plain"):
        body = {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": name}],
        }
        again = httpx.post(f"{replay.base_url}/chat/completions", json=body)
        assert again.content == live[name]


def test_check_fails_on_anything_that_looks_like_a_key(proxy: Proxy, tmp_path: Path) -> None:
    record_some(proxy)
    cassette = tmp_path / "c.yaml"
    cli("cassette", "export", "--db", str(proxy.db), "-o", str(cassette))
    clean = cli("cassette", "check", str(tmp_path))
    assert clean.exit_code == 0 and "1 cassette(s) clean" in clean.output
    text = cassette.read_text()
    leaked = tmp_path / "leaked.yaml"
    leaked.write_text(text.replace("ünïcode ✓", "my key is sk-proj-" + "a1B2" * 10, 1))
    header = tmp_path / "header.yaml"
    header.write_text(
        text.replace("- [content-type, application/json]", "- [authorization, Basic xyz]", 1)
    )
    odd = tmp_path / "odd.yaml"  # a gateway's own credential header, in a cassette from elsewhere
    odd.write_text(
        text.replace("- [content-type, application/json]", "- [x-auth-token, tok-1234]", 1)
    )
    for bad in (leaked, header, odd):
        result = cli("cassette", "check", str(bad))
        assert result.exit_code == 1, result.output
    assert "looks like a key" in cli("cassette", "check", str(leaked)).output
    assert "request header authorization" in cli("cassette", "check", str(header)).output
    assert "request header x-auth-token" in cli("cassette", "check", str(odd)).output
    imported = tmp_path / "imported.db"  # and import scrubs it, as export would have
    assert cli("cassette", "import", str(odd), "--db", str(imported)).exit_code == 0
    files = list(tmp_path.glob("imported.db*"))  # the database, and its WAL if one is left
    assert imported in files and not any(b"tok-1234" in f.read_bytes() for f in files)
    assert cli("cassette", "check", str(tmp_path)).exit_code == 1


def test_import_refuses_what_is_not_a_cassette(tmp_path: Path) -> None:
    bogus = tmp_path / "x.yaml"
    bogus.write_text("hello: world\n")
    result = cli("cassette", "import", "--db", str(tmp_path / "d.db"), str(bogus))
    assert result.exit_code == 1 and "not a valid llmtap cassette" in result.output


def test_a_cassette_keeps_the_response_headers_the_database_keeps() -> None:
    """One rule for both: the database keeps a response's headers by the request side's rules
    on names and values, and a cassette keeps what the database keeps of them."""
    from llmtap.proxy.headers import split_response_headers
    from llmtap.recorder.cassettes import _clean

    upstream = [
        ["x-ratelimit-remaining-tokens", "99"],  # a count, not a token
        ["x-session-id", "s-1"],
        ["set-cookie", "a=b"],
        ["anthropic-organization-id", "org-1"],
        ["x-key", "sk-" + "a1B2" * 6],
    ]
    _, stored = split_response_headers(tuple((k.encode(), v.encode()) for k, v in upstream))
    assert _clean(upstream) == [list(h) for h in stored] == [["x-ratelimit-remaining-tokens", "99"]]


def test_a_stream_compressed_against_llmtaps_wish_replays_from_a_cassette_as_it_was_received(
    proxy: Proxy, start_proxy: Any, tmp_path: Path
) -> None:
    """The client asked for no usage; llmtap asked for it and `identity`, the upstream gzipped
    anyway: llmtap decoded the stream on the way and took the usage out. The cassette decodes
    the body: replay from the database and from the cassette gives what the client received."""
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "gz"}]}
    headers = {"accept-encoding": "gzip", "x-simulator-compress": "gzip!"}
    with httpx.stream(
        "POST", f"{proxy.base_url}/chat/completions", json=body, headers=headers
    ) as r:
        received = r.read()
        assert "content-encoding" not in r.headers  # sent decoded
    assert b'"usage"' not in received  # the usage llmtap asked for did not reach the client
    proxy.flush()
    cassette, imported = tmp_path / "gz.yaml", tmp_path / "gz.db"
    assert cli("cassette", "export", "--db", str(proxy.db), "-o", str(cassette)).exit_code == 0
    assert cli("cassette", "import", "--db", str(imported), str(cassette)).exit_code == 0
    for db in (proxy.db, imported):
        replay = start_proxy(mode="replay", db=str(db))
        again = httpx.post(f"{replay.base_url}/chat/completions", json=body, headers=headers)
        assert again.content == received, db


def test_a_compressed_request_is_kept_decoded_and_replays_from_the_cassette(
    proxy: Proxy, start_proxy: Any, tmp_path: Path
) -> None:
    """A request sent gzipped reads in the cassette as its JSON, as a compressed answer does,
    and the same JSON gzipped again (at another time: another gzip header) replays from it.
    Before, the cassette held the compressed bytes as !!binary."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": "packed prompt"}]}'
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    url = "/chat/completions"
    recorded = httpx.post(
        proxy.base_url + url, content=gzip.compress(body, mtime=1), headers=headers
    )
    proxy.flush()
    cassette, imported = tmp_path / "req.yaml", tmp_path / "req.db"
    assert cli("cassette", "export", "--db", str(proxy.db), "-o", str(cassette)).exit_code == 0
    text = cassette.read_text()
    assert "packed prompt" in text and "content-encoding" not in text and "!!binary" not in text
    assert cli("cassette", "import", "--db", str(imported), str(cassette)).exit_code == 0
    replay = start_proxy(mode="replay", db=str(imported))
    again = httpx.post(replay.base_url + url, content=gzip.compress(body, mtime=2), headers=headers)
    assert (again.status_code, again.content) == (recorded.status_code, recorded.content)


def test_a_cassette_of_one_trace_or_one_session(proxy: Proxy, tmp_path: Path) -> None:
    """`--trace` (as `llmtap trace` takes it) and `--session` make a test fixture of one run."""
    with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
        for content, extra in (
            ("first", {"llmtap-trace-id": "run-one"}),
            ("second", {"llmtap-session": "s-7"}),
            ("third", {"llmtap-session": "s-7"}),
            ("fourth", {}),
        ):
            c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": content}], extra_headers=extra
            )
    proxy.flush()
    one, session = tmp_path / "one.yaml", tmp_path / "session.yaml"
    result = cli("cassette", "export", "--db", str(proxy.db), "--trace", "run-one", "-o", str(one))
    assert result.exit_code == 0 and "1 exchange written" in result.output, result.output
    assert "first" in one.read_text() and "second" not in one.read_text()
    result = cli(
        "cassette", "export", "--db", str(proxy.db), "--session", "s-7", "-o", str(session)
    )
    assert result.exit_code == 0 and "2 exchanges" in result.output, result.output
    text = session.read_text()
    assert "second" in text and "third" in text and "first" not in text and "fourth" not in text
    missing = cli("cassette", "export", "--db", str(proxy.db), "--trace", "nope", "-o", str(one))
    assert missing.exit_code != 0 and "no trace with id nope" in missing.output


def test_an_account_id_among_response_headers_is_found_and_scrubbed(
    proxy: Proxy, tmp_path: Path
) -> None:
    """Response headers are kept by the request side's rules now (anthropic-organization-id):
    a cassette from before, or from elsewhere, that holds one fails the check and loses it on
    import, as a request's credential does."""
    record_some(proxy)
    cassette = tmp_path / "c.yaml"
    cli("cassette", "export", "--db", str(proxy.db), "-o", str(cassette))
    text = cassette.read_text()
    assert "  response:" in text
    head, response = text.split("  response:", 1)
    odd = tmp_path / "odd.yaml"
    odd.write_text(
        head
        + "  response:"
        + response.replace("headers:\n", "headers:\n    - [anthropic-organization-id, org-9]\n", 1)
    )
    assert "org-9" in odd.read_text()
    result = cli("cassette", "check", str(odd))
    assert result.exit_code == 1 and "response header anthropic-organization-id" in result.output
    imported = tmp_path / "imported.db"
    assert cli("cassette", "import", str(odd), "--db", str(imported)).exit_code == 0
    assert b"org-9" not in b"".join(p.read_bytes() for p in tmp_path.glob("imported.db*"))


NEL_TEXT = "Price list\u0085 café\r\nline\u2028two\n".encode()
NEL_STREAM = 'data: {"x":"a\u0085b"}\n\ndata: [DONE]\n\n'.encode()


def _nel_upstream(request: Any) -> bytes:
    """Text holding what YAML also reads as line breaks (NEL, CR, U+2028): a file's content,
    and a stream."""
    stream = request.target.endswith("/chat/completions")
    body, kind = (NEL_STREAM, b"text/event-stream") if stream else (NEL_TEXT, b"text/plain")
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (kind, len(body))
    return head + body


def test_text_with_yamls_other_line_breaks_replays_from_a_cassette_byte_for_byte(
    start_proxy: Any, tmp_path: Path
) -> None:
    """A literal block turned NEL (U+0085: cp1252's ellipsis read as Latin-1) into a line
    feed: replayed from the cassette, a file's text lost a byte, and a stream's event broke
    in two."""
    from tests.raw_upstream import raw_upstream

    with raw_upstream(_nel_upstream) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        text = httpx.get(f"{proxy.base_url}/files/file-1/content", headers=AUTH)
        chat = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        stream = httpx.post(f"{proxy.base_url}/chat/completions", json=chat, headers=AUTH)
        assert (text.content, stream.content) == (NEL_TEXT, NEL_STREAM)
        proxy.flush()
    cassette, imported = tmp_path / "nel.yaml", tmp_path / "nel.db"
    assert cli("cassette", "export", "--db", str(proxy.db), "-o", str(cassette)).exit_code == 0
    assert "!!binary" not in cassette.read_text()  # still text a reviewer can read
    assert cli("cassette", "import", "--db", str(imported), str(cassette)).exit_code == 0
    replay = start_proxy(mode="replay", db=str(imported))
    again = httpx.get(f"{replay.base_url}/files/file-1/content")
    assert again.content == NEL_TEXT
    assert httpx.post(f"{replay.base_url}/chat/completions", json=chat).content == NEL_STREAM
