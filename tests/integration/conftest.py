"""Fixtures of the money tests: a server with the sandbox channel, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.money_support import money_server
from tests.support import RunningServer


@pytest.fixture
async def srv(redis_url: str, database_url: str) -> AsyncIterator[RunningServer]:
    s = money_server(redis_url, database_url)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def http(srv: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.base, timeout=10) as c:
        yield c
