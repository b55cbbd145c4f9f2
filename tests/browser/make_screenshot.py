"""Regenerate docs/screenshot-trace.png: the trace page of an agent run, in headless Chromium.

    /work/venv/bin/python tests/browser/make_screenshot.py [OUTPUT.png]

Starts the simulator and a real llmtap on a temporary database, records the UI tests'
scenario through the openai SDK, and photographs the trace with the tool call. Not a test:
the test suite never writes into docs/.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `tests.browser` when run as a script

from openai import OpenAI  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from llmtap.proxy.app import create_app, uvicorn_kwargs  # noqa: E402
from llmtap.proxy.config import Settings  # noqa: E402
from llmtap.proxy.server import ServerThread  # noqa: E402
from llmtap.proxy.simulator import create_simulator  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.browser.scenario import run_scenario  # noqa: E402


def agent_trace(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT trace_id FROM spans WHERE span_type = 'TOOL'").fetchone()
    return str(row[0])


def photograph(url: str, output: Path) -> None:
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
        page.goto(url)
        page.screenshot(path=str(output), full_page=True)
        browser.close()


def main(output: Path) -> None:
    if (reason := chromium.missing()) is not None:
        sys.exit(reason)
    with tempfile.TemporaryDirectory() as folder, ServerThread(create_simulator()) as simulator:
        db = Path(folder) / "llmtap.db"
        app = create_app(Settings(upstream=f"{simulator.url}/v1", db=str(db), port=0))
        with ServerThread(app, **uvicorn_kwargs()) as proxy:
            with OpenAI(
                base_url=f"{proxy.url}/v1", api_key="sk-screenshot", max_retries=0
            ) as client:
                run_scenario(client)
            assert app.writer is not None
            app.writer.flush()
            photograph(f"{proxy.url}/traces/{agent_trace(db)}", output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshot-trace.png")
