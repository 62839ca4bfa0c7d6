"""The boot server's asyncio side: keeps the catalog fresh, writes the fetch log in batches
and keeps uploads; the protocol decisions are :class:`~.service.ProvisionService`'s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..store.repos import FetchRecord
from .catalog import EMPTY, Catalog, load_catalog
from .inventory import DRIVERS, Edge
from .service import (
    Admitted,
    Decision,
    LogEntry,
    ProvisionPolicy,
    ProvisionRequest,
    ProvisionService,
    SecurityHooks,
)

if TYPE_CHECKING:
    from ..config import ProvisionSettings
    from ..store import Store

__all__ = ["ProvisionServer", "policy_from_settings"]

log = logging.getLogger(__name__)

MAX_PENDING_LOG = 100_000  # fetch-log rows held while the store is slow; oldest dropped

BodyReader = Callable[[int], Awaitable[bytes | None]]
"""Reads the request body, at most ``limit`` bytes; None when it is longer."""


def policy_from_settings(s: ProvisionSettings) -> ProvisionPolicy:
    return ProvisionPolicy(
        realm=s.realm,
        nonce_ttl=s.nonce_ttl,
        algorithms=tuple(s.digest_algorithms),
        max_upload_bytes=s.max_upload_bytes,
        sweep_unknown_macs=s.sweep_unknown_macs,
        sweep_window=s.sweep_window,
        auth_failures=s.auth_failures,
        auth_failures_window=s.auth_failures_window,
        rate_limit=s.rate_limit,
        rate_window=s.rate_window,
    )


class ProvisionServer:
    """``start()`` loads the catalog and starts the fetch-log writer; ``stop()`` flushes."""

    def __init__(
        self,
        store: Store,
        edge: Edge,
        hooks: SecurityHooks,
        *,
        secret: bytes,
        settings: ProvisionSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.edge = edge
        self.settings = settings
        self.clock = clock
        self._catalog: Catalog = EMPTY
        self._checked_at = float("-inf")
        self._reload_lock = asyncio.Lock()
        self._checks_started = 0  # revision checks begun / the last one that completed
        self._checks_done = 0
        self.service = ProvisionService(
            [factory() for factory in DRIVERS.values()],
            lambda: self._catalog,
            hooks,
            secret=secret,
            policy=policy_from_settings(settings),
        )
        self._pending: list[FetchRecord] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped_log = 0

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    async def start(self) -> None:
        await self.refresh(force=True)
        self._task = asyncio.get_running_loop().create_task(self._writer())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload when the inventory revision moved (checked at most every
        ``reload_interval`` unless forced); True when a new catalog is in place.

        One check at a time. A request (not forced) never waits for one: while a reload
        runs it is served from the current catalog. A forced caller (re-sync, the device
        views) waits until a check that began after its call has completed, so it sees
        every change committed before it asked; callers queued behind one reload share
        the next check instead of each running one."""
        interval = self.settings.reload_interval
        if not force and (
            self._reload_lock.locked() or time.monotonic() - self._checked_at < interval
        ):
            return False
        before, asked_after = self._catalog, self._checks_started
        async with self._reload_lock:
            if force and self._checks_done > asked_after:
                return self._catalog is not before  # a check that began after we asked
            # Checked again: requests that queued on the lock behind a check must not
            # each run one more.
            if not force and time.monotonic() - self._checked_at < interval:
                return False
            self._checks_started += 1
            check = self._checks_started
            self._checked_at = time.monotonic()
            revision = await self.store.get_revision()
            if revision != self._catalog.revision:
                started = time.perf_counter()
                catalog = await load_catalog(self.store, self.edge, self._catalog)
                self._catalog = catalog  # swapped whole: never half-built
                log.info(
                    "boot server: %d devices, revision %d (%d rendered afresh in %.2f s)",
                    len(catalog),
                    catalog.revision,
                    catalog.rendered,
                    time.perf_counter() - started,
                )
            self._checks_done = check
            return self._catalog is not before

    # --- requests ------------------------------------------------------------------------
    async def handle(self, req: ProvisionRequest, read_body: BodyReader) -> Decision:
        try:
            await self.refresh()
        except Exception:  # the store may be busy: serve from the snapshot we have
            log.exception("boot server: reloading the inventory failed")
        now = self.clock()
        outcome = self.service.check(req, now)
        if isinstance(outcome, Admitted):
            body = await read_body(outcome.limit)
            decision, finding = self.service.keep_upload(outcome, body)
            if finding is not None and body is not None:
                await self.store.uploads.add(
                    outcome.entry.mac,
                    kind=finding.kind.value,
                    path=outcome.name,
                    body=body,
                    weakening=finding.weakening,
                    size=finding.size,
                    at=now,
                )
        else:
            decision = outcome
        if decision.log is not None:
            self._log(decision.log, req, now)
        return decision

    def _log(self, entry: LogEntry, req: ProvisionRequest, now: float) -> None:
        if len(self._pending) >= MAX_PENDING_LOG:
            del self._pending[0]
            self.dropped_log += 1
        self._pending.append(
            FetchRecord(
                mac=entry.mac,
                path=entry.path,
                status=entry.status,
                source=req.source,
                at=now,
                version=entry.version,
                user_agent=req.user_agent,
                firmware=entry.firmware,
                model=entry.model,
                note=entry.note,
            )
        )

    async def flush(self) -> int:
        batch, self._pending = self._pending, []
        if batch:
            await self.store.fetches.add_batch(batch)
        return len(batch)

    async def _writer(self) -> None:
        while True:
            await asyncio.sleep(self.settings.fetch_log_flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("writing the fetch log failed; will retry")
