"""What the store tests share: the newest migration, a settable clock, the database
parameter (SQLite always, PostgreSQL when PG_TEST_URL is set), and helpers to run a store
or a raw connection."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

from spitguard.config import Settings
from spitguard.store import Store, open_store
from spitguard.store.db import MIGRATIONS_DIR, create_engine

T = TypeVar("T")
PG_URL = os.environ.get("PG_TEST_URL")
NOW = 1_700_000_000.0  # epoch minute 28_333_333, 22:13:20 UTC

# The newest migration: opening a store brings the schema to it.
HEAD = max(p.stem.split("_", 1)[0] for p in MIGRATIONS_DIR.joinpath("versions").glob("0*.py"))


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# PostgreSQL joins the parameters only when configured, so plain runs list no skips.
# Test modules import it as `settings_fixture` and ask for `settings`.
@pytest.fixture(params=["sqlite", *(["postgresql"] if PG_URL else [])], name="settings")
def settings_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path / "var")
    assert PG_URL is not None
    asyncio.run(_wipe_postgres(PG_URL))
    return Settings(data_dir=tmp_path / "var", database_url=PG_URL)


async def _wipe_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


def with_store(
    settings: Settings, body: Callable[[Store], Awaitable[T]], clock: FakeClock | None = None
) -> T:
    async def run() -> T:
        store = await open_store(settings, clock=clock or FakeClock())
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


async def on_connection(settings: Settings, work: Callable[[Connection], T]) -> T:
    """Run `work` on a plain (sync-facing) connection to the settings' database."""
    engine = create_engine(settings.effective_database_url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


class NoHooks:
    """Security hooks for a boot server built over a test store: nothing is banned,
    nothing is recorded."""

    def is_banned(self, source: str, now: float) -> bool:
        return False

    def ban(self, source: str, reason: str, now: float) -> None:
        pass

    def event(self, source: str, reason: str, now: float, **kw: object) -> None:
        pass
