"""Shared fixtures: real Valkey and Postgres on random ports, a fresh database per test.

Nothing is mocked. The servers are the same embedded ones `giftd serve` runs,
started once per test session in a temporary directory; each test gets an
empty Redis (FLUSHALL) and its own database cloned from a migrated template.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from server.embedded import EmbeddedPostgres, EmbeddedValkey

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

TEMPLATE_DB = "giftd_template"
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="giftd-test-") as d:
        os.chmod(d, 0o755)  # the unprivileged postgres user must traverse it
        yield Path(d)


@pytest.fixture(scope="session")
def valkey(tmp_root: Path) -> Iterator[EmbeddedValkey]:
    v = EmbeddedValkey(tmp_root / "valkey", appendfsync="everysec")
    v.start()
    yield v
    v.stop()


@pytest.fixture(scope="session")
def postgres(tmp_root: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_root / "postgres", fsync=False)
    pg.start()
    yield pg
    pg.stop()


def db_url(pg: EmbeddedPostgres, name: str) -> str:
    return f"postgresql://postgres@{pg.host}:{pg.port}/{name}"


@pytest.fixture(scope="session")
async def template_db(postgres: EmbeddedPostgres) -> str:
    from billing.migrate import migrate

    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(db_url(postgres, TEMPLATE_DB))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE_DB


@pytest.fixture
async def database_url(postgres: EmbeddedPostgres, template_db: str) -> AsyncIterator[str]:
    name = f"t{os.getpid()}_{next(_db_counter)}"
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    finally:
        await admin.close()
    yield db_url(postgres, name)
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def redis_url(valkey: EmbeddedValkey) -> AsyncIterator[str]:
    r = Redis.from_url(valkey.url)
    await r.flushall()
    await r.aclose()
    yield valkey.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
async def server(redis_url: str, database_url: str) -> AsyncIterator[object]:
    from tests.support import RunningServer

    srv = RunningServer(redis_url, database_url)
    await srv.start()
    yield srv
    await srv.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Long suites last, so a quick failure shows up first.
    order = {"unit": 0, "integration": 1, "chaos": 2, "e2e": 3}
    items.sort(key=lambda i: next((v for k, v in order.items() if f"/{k}/" in str(i.path)), 1))
