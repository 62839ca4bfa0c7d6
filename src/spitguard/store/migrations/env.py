"""Alembic environment for the spitguard store.

`spitguard.store.db.open_store` runs it programmatically, handing over its own connection
in `config.attributes["connection"]` (already inside a transaction, so the whole upgrade
commits or rolls back as one). Run standalone (the alembic command, e.g. to autogenerate a
revision), it connects to `sqlalchemy.url` from the Alembic config or, failing that, to the
database of the settings found in the `SPITGUARD_*` environment.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from spitguard.store.models import Base

target_metadata = Base.metadata


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from spitguard.config import load_settings

    return load_settings(None).effective_database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        transactional_ddl=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _main() -> None:
    if context.is_offline_mode():
        context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is None:
        asyncio.run(_run_standalone())
    else:
        _run(connection)


_main()
