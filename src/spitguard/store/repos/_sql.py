"""Helpers shared by the repositories: revisions, clocks, paging, upserts."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CursorResult,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import (
    InvalidInputError,
    StoreError,
)
from ..models import (
    INVENTORY_REVISION_KEY,
    Revision,
)

if TYPE_CHECKING:
    from ..db import Store


async def _bump_revision(session: AsyncSession) -> None:
    # One atomic UPDATE: concurrent writers each add one, nobody reads-modifies-writes.
    await session.execute(
        update(Revision)
        .where(Revision.key == INVENTORY_REVISION_KEY)
        .values(value=Revision.value + 1)
    )


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _now(store: Store) -> datetime:
    return datetime.fromtimestamp(store.clock(), UTC)


def normalize_ip(text: str) -> str:
    """The canonical text of one IPv4 or IPv6 address (as the edge writes ban sources)."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidInputError(
            f"invalid IP address {text!r}: give one IPv4 or IPv6 address, e.g. 192.0.2.10 "
            "(no port, no prefix length)"
        ) from None


def _clip(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


async def _bump_revision_key(session: AsyncSession, key: str) -> None:
    await session.execute(
        update(Revision).where(Revision.key == key).values(value=Revision.value + 1)
    )


def _upsert_insert(store: Store, model: type[Any]) -> sqlite.Insert | postgresql.Insert:
    dialect = store.engine.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(model)
    if dialect == "postgresql":
        return postgresql.insert(model)
    raise StoreError(
        f"bans and security events need SQLite or PostgreSQL; database_url uses {dialect}"
    )


def _check_page(limit: int, offset: int = 0) -> None:
    if limit < 1 or offset < 0:
        raise InvalidInputError("limit must be at least 1 and offset at least 0")
