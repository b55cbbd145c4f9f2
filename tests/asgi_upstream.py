"""Small OpenAI-compatible upstreams written as ASGI apps (served by `ServerThread`): the two
steps every one of them takes, read the request's JSON and answer with JSON."""

from __future__ import annotations

import json
from typing import Any


async def request_json(receive: Any) -> Any:
    """The JSON body of the request, read whole."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return json.loads(body)


async def answer_json(send: Any, answer: Any) -> None:
    """A 200 with `answer` as its JSON body."""
    data = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})
