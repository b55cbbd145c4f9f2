"""The web UI in real headless Chromium against a real llmtap in front of the simulator.

Each test leaves a screenshot of every page it saw under its tmp_path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium
from tests.browser.conftest import Site

if (reason := chromium.missing()) is not None:
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as playwright:
        launched = chromium.launch(playwright)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Page]:
    """A fresh tab; any console error (a CSP violation, a script error) fails the test."""
    context = browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if _is_error(m) else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    assert errors == []


def _is_error(message: ConsoleMessage) -> bool:
    return message.type == "error"


def shot(page: Page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000


def rows(page: Page) -> Any:
    return page.locator("table.traces tbody tr")


def test_list_filter_and_open_the_agent_trace(page: Page, site: Site, tmp_path: Path) -> None:
    page.goto("/")
    expect(rows(page)).to_have_count(8)
    shot(page, tmp_path, "1-list")

    page.select_option("select[name=status]", "ERROR")
    page.click("form.filters button")
    expect(rows(page)).to_have_count(1)
    assert "status=ERROR" in page.url and "model=" not in page.url  # blank fields left out
    expect(rows(page).first).to_contain_text("ERROR")
    shot(page, tmp_path, "2-errors")

    page.goto("/")
    page.fill("input[name=model]", "gpt-4o")
    page.press("input[name=model]", "Enter")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("gpt-4o")
    shot(page, tmp_path, "3-model")

    rows(page).first.locator("td").first.click()  # the whole row opens the trace
    page.wait_for_url("**/traces/*")
    answer = page.locator(".msg.answer", has_text=site.recorded.follow_up_answer)
    expect(answer).to_be_visible()
    call = page.locator(".tool-call", has_text=site.recorded.tool_name).first
    expect(call).to_be_visible()
    expect(call.locator("pre.args")).to_contain_text('"city"')
    expect(page.locator(".wf-row")).to_have_count(4)
    shot(page, tmp_path, "4-trace")


def test_trace_page_raw_json_and_waterfall_links(page: Page, site: Site, tmp_path: Path) -> None:
    trace_id = site.trace_id("inputs LIKE ?", "%Say hello%")
    page.goto(f"/traces/{trace_id}")
    expect(page.locator(".msg.answer")).to_contain_text(site.recorded.answer)
    raw = page.locator("details.raw", has_text="Response JSON").first
    expect(raw.locator("pre")).to_be_hidden()
    raw.locator("summary").click()
    expect(raw.locator("pre")).to_be_visible()
    expect(raw.locator("pre")).to_contain_text('"finish_reason": "stop"')
    page.locator(".wf-row").first.click()
    assert "#span-" in page.url
    shot(page, tmp_path, "trace-raw")


def test_hostile_text_is_shown_not_run(page: Page, site: Site, tmp_path: Path) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"/traces/{site.trace_id('inputs LIKE ?', '%alert(1)%')}")
    expect(page.locator(".msg.role-user .text")).to_have_text(
        '<script>alert(1)</script> & "quotes"'
    )
    page.goto("/?q=" + "<script>alert(1)")
    expect(rows(page)).to_have_count(1)
    assert dialogs == []
    shot(page, tmp_path, "hostile")


def test_experiments_sessions_and_models(page: Page, tmp_path: Path) -> None:
    page.goto("/")
    page.click("header nav >> text=Experiments")
    shot(page, tmp_path, "experiments")
    page.click("main >> text=evals")
    expect(rows(page)).to_have_count(2)
    page.click("header nav >> text=Sessions")
    shot(page, tmp_path, "sessions")
    page.click("main >> text=session-ui-1")
    expect(rows(page)).to_have_count(2)
    page.click("header nav >> text=Models")
    expect(page.locator("main")).to_contain_text("No model records yet")
    shot(page, tmp_path, "models")
