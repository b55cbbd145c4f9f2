"""A stream longer than the writer keeps in memory, end to end: the real OpenAI SDK through a
real llmtap server to the simulator. Its pieces go to a file in the writer process, the proxy
lets go of them, and the stored exchange and trace are the whole stream."""

from __future__ import annotations

from pathlib import Path

import orjson
from openai import OpenAI

from llmtap.recorder import spool
from llmtap.recorder.body_codec import unpack_body
from llmtap.recorder.schema import RESPONSE_BODY
from tests.conftest import TEST_KEY, Proxy

CHUNKS = 50_000  # ~9.5 MB of SSE: past KEEP_IN_MEMORY (8 MB)


def test_a_long_stream_is_recorded_whole_through_its_file(proxy: Proxy) -> None:
    assert spool.KEEP_IN_MEMORY < 10 << 20
    with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0, timeout=120) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Tell me a very long story."}],
            stream=True,
            extra_headers={"x-simulator-chunks": str(CHUNKS)},
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert len(text) > 100_000

    (row,) = proxy.query(
        f"SELECT {RESPONSE_BODY} AS body, long_response_body, chunks, outputs, attributes "
        "FROM exchanges JOIN spans USING (exchange_id)"
    )
    body = unpack_body(bytes(row["body"]))
    assert len(body) > spool.KEEP_IN_MEMORY
    assert row["long_response_body"] is None  # packed (~50 to 1), it fits in its row at once
    assert len(row["body"]) * 20 < len(body)
    assert body.rstrip().endswith(b"data: [DONE]")
    pieces = orjson.loads(row["chunks"])
    assert sum(size for size, _ in pieces) == len(body)
    assert all(a[1] <= b[1] for a, b in zip(pieces, pieces[1:], strict=False))  # in time order
    outputs = orjson.loads(row["outputs"])
    assert outputs["choices"][0]["message"]["content"] == text
    assert orjson.loads(row["attributes"])["usage"]["output_tokens"] > 0  # asked for by llmtap

    spool_dir = proxy.app.writer.config.spool_dir  # type: ignore[union-attr]
    assert spool_dir is not None and Path(spool_dir).parent.name.endswith("-spool")
    assert not Path(spool_dir).exists() or not any(Path(spool_dir).iterdir())  # dropped
