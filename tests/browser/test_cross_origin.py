"""A page on another origin in real headless Chromium, sending what needs no preflight."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from llmtap.proxy.server import ServerThread
from tests.browser import chromium
from tests.conftest import Proxy

if (reason := chromium.missing()) is not None:
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

PAGE = """<script>
fetch('%s/v1/chat/completions', {method: 'POST', mode: 'no-cors',
  headers: {'content-type': 'text/plain'},
  body: JSON.stringify({model: 'gpt-4o-mini', messages: [{role: 'user', content: 'hi'}]})})
  .finally(() => document.title = 'done')
</script>"""


def test_a_page_on_another_site_cannot_drive_the_proxy(
    start_proxy: Callable[..., Proxy], simulator: Any
) -> None:
    """The page is on http://evil.localhost:OTHER (Chromium resolves every *.localhost to
    loopback, as a rebound name would): another site, whose requests llmtap refuses."""
    proxy = start_proxy()
    page = HTMLResponse(PAGE % proxy.url)
    site = Starlette(routes=[Route("/", lambda request: page)])
    httpx.delete(f"{simulator.url}/_simulator/requests")
    with ServerThread(site) as server, sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        tab = browser.new_page()
        tab.goto(server.url.replace("127.0.0.1", "evil.localhost") + "/")
        tab.wait_for_function("document.title == 'done'", timeout=15000)
        browser.close()
    assert httpx.get(f"{simulator.url}/_simulator/requests").json() == []
    assert proxy.query("SELECT count(*) FROM exchanges")[0][0] == 0
