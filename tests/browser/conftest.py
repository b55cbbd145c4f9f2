"""Fixtures for the UI tests: one llmtap holding the scenario's traces, and an HTTP client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.browser.scenario import Recorded, run_grouped, run_scenario
from tests.conftest import TEST_KEY, Proxy


@dataclass
class Site:
    """A running llmtap with the scenario recorded in it."""

    proxy: Proxy
    recorded: Recorded

    @property
    def url(self) -> str:
        return self.proxy.url

    def trace_id(self, where: str, *params: object) -> str:
        """The trace whose span matches a SQL condition on `spans`."""
        rows = self.proxy.query(f"SELECT trace_id FROM spans WHERE {where} LIMIT 1", *params)
        assert rows, f"no span where {where} {params}"
        return str(rows[0]["trace_id"])


@pytest.fixture
def site(start_proxy: Callable[..., Proxy]) -> Site:
    from openai import OpenAI

    proxy = start_proxy()
    with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as client:
        recorded = run_scenario(client)
    grouped_url = f"{proxy.url}/experiments/evals/v1"
    with OpenAI(base_url=grouped_url, api_key=TEST_KEY, max_retries=0) as client:
        run_grouped(client)
    proxy.flush()
    return Site(proxy, recorded)


@pytest.fixture
def http(site: Site) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.url, timeout=10) as client:
        yield client
