"""Re-sync requests queued by one process (CLI, API) for the running edge to carry out."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from ..models import ResyncRequest
from .devices import _normalize_device_mac

if TYPE_CHECKING:
    from ..db import Store

QUEUED = "queued"
SENT = "sent"
DONE = "done"


@dataclass(frozen=True, slots=True)
class ResyncInfo:
    id: int
    mac: str
    state: str
    outcome: str | None
    requested_at: float
    finished_at: float | None

    @property
    def finished(self) -> bool:
        return self.state == DONE


def _info(row: ResyncRequest) -> ResyncInfo:
    return ResyncInfo(row.id, row.mac, row.state, row.outcome, row.requested_at, row.finished_at)


class ResyncRepo:
    """`queued` → `sent` → `done` with an outcome; the edge polls `take_queued`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def enqueue(self, macs: Iterable[str]) -> builtins.list[ResyncInfo]:
        keys = [_normalize_device_mac(mac) for mac in macs]
        now = self._store.clock()
        async with self._store.write() as session:
            rows = [ResyncRequest(mac=k, state=QUEUED, requested_at=now) for k in keys]
            session.add_all(rows)
            await session.flush()
            return [_info(row) for row in rows]

    async def take_queued(self, limit: int = 1000) -> builtins.list[ResyncInfo]:
        """The queued requests, oldest first, now marked `sent` (so no poll takes them twice)."""
        # Polled every second: look first without taking the write lock.
        async with self._store.read() as session:
            waiting = await session.scalar(
                select(ResyncRequest.id).where(ResyncRequest.state == QUEUED).limit(1)
            )
        if waiting is None:
            return []
        async with self._store.write() as session:
            rows = list(
                await session.scalars(
                    select(ResyncRequest)
                    .where(ResyncRequest.state == QUEUED)
                    .order_by(ResyncRequest.id)
                    .limit(limit)
                )
            )
            if rows:
                await session.execute(
                    update(ResyncRequest)
                    .where(ResyncRequest.id.in_([row.id for row in rows]))
                    .values(state=SENT)
                )
            return [_info(row) for row in rows]

    async def finish(self, request_id: int, outcome: str) -> None:
        async with self._store.write() as session:
            await session.execute(
                update(ResyncRequest)
                .where(ResyncRequest.id == request_id)
                .values(state=DONE, outcome=outcome[:32], finished_at=self._store.clock())
            )

    async def get(self, ids: Iterable[int]) -> builtins.list[ResyncInfo]:
        wanted = sorted(set(ids))
        async with self._store.read() as session:
            rows = await session.scalars(
                select(ResyncRequest).where(ResyncRequest.id.in_(wanted)).order_by(ResyncRequest.id)
            )
            return [_info(row) for row in rows]
