"""The any-language promise: recorded from Python, replayed by the Node openai package and curl."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from llmtap.proxy.app import create_app, uvicorn_kwargs
from llmtap.proxy.config import Settings
from llmtap.proxy.server import ServerThread
from llmtap.proxy.simulator import create_simulator
from tests.conftest import TEST_KEY

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "openai").exists(),
    reason="needs node and `npm install` in tests/node (make test does it)",
)
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello from any language"}],
}


def python_calls(base_url: str) -> dict[str, Any]:
    with OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0) as c:
        chat = c.chat.completions.create(**CHAT)
        stream_id, text = None, ""
        for chunk in c.chat.completions.create(
            model="gpt-4o-mini",
            stream=True,
            messages=[{"role": "user", "content": "stream from any language"}],
        ):
            stream_id = chunk.id
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        emb = c.embeddings.create(model="text-embedding-3-small", input="vectors from any language")
    return {
        "chat_id": chat.id,
        "chat": chat.choices[0].message.content,
        "stream_id": stream_id,
        "stream": text,
        "embedding_head": emb.data[0].embedding[:4],
    }


@pytest.fixture
def replay_server(tmp_path: Path) -> Iterator[tuple[ServerThread, dict[str, Any]]]:
    """Recorded from Python against a simulator that is then stopped; a replay-only llmtap."""
    db = str(tmp_path / "llmtap.db")
    with ServerThread(create_simulator()) as simulator:
        recorder = ServerThread(
            create_app(Settings(upstream=f"{simulator.url}/v1", db=db, port=0)), **uvicorn_kwargs()
        ).start()
        seen = python_calls(f"{recorder.url}/v1")
        recorder.stop()
    with ServerThread(
        create_app(Settings(mode="replay", db=db, port=0)), **uvicorn_kwargs()
    ) as replay:
        yield replay, seen


@needs_node
def test_node_openai_package_replays_what_python_recorded(
    replay_server: tuple[ServerThread, dict[str, Any]],
) -> None:
    replay, seen = replay_server
    env = {
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "OPENAI_BASE_URL": f"{replay.url}/v1",
        "OPENAI_API_KEY": "sk-node-dummy",
    }
    run = subprocess.run(
        ["node", "calls.mjs"], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    node_saw = json.loads(run.stdout.strip().splitlines()[-1])
    assert node_saw["chat"] == seen["chat"] and node_saw["chat_id"] == seen["chat_id"]
    assert node_saw["stream"] == seen["stream"] and node_saw["stream_id"] == seen["stream_id"]
    assert node_saw["embedding_head"] == pytest.approx(seen["embedding_head"], rel=1e-6)


@needs_curl
def test_curl_replays_the_same_recording(
    replay_server: tuple[ServerThread, dict[str, Any]],
) -> None:
    replay, seen = replay_server
    run = subprocess.run(
        [
            "curl",
            "-sS",
            f"{replay.url}/v1/chat/completions",
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps(CHAT, indent=1),
        ],  # other whitespace, same request
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert (
        answer["id"] == seen["chat_id"]
        and answer["choices"][0]["message"]["content"] == seen["chat"]
    )
