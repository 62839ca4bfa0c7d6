"""Audits the running server starts on request (the API and the portal): registered phones
only, one at a time, in the background, the run stored as the CLI stores it.

Only the public addresses of live registrations are ever probed, never a host named in a
request: the API must not become a way to make the server probe the Internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..store.repos import AuditRunInfo
from .runner import AuditOptions, run_audit
from .storage import record_results, registered_targets, run_options
from .targets import DEFAULT_MAX_TARGETS, Target, cap_targets

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["AuditBusyError", "AuditService"]

log = logging.getLogger(__name__)


class AuditBusyError(Exception):
    """An audit is already running on this server (one at a time)."""

    def __init__(self, run_id: int | None) -> None:
        where = f" (run {run_id})" if run_id is not None else ""
        super().__init__(
            f"an audit is already running{where}: wait until it is done, then start another"
        )
        self.run_id = run_id


class AuditService:
    """Starts audits of the registered phones in the background, one at a time."""

    def __init__(
        self,
        store: Store,
        options: AuditOptions | None = None,
        *,
        max_targets: int = DEFAULT_MAX_TARGETS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._options = options or AuditOptions()
        self._max_targets = max_targets
        self._clock = clock
        self._busy = False  # set before the first await, so two requests cannot both start
        self._running: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> int | None:
        """The id of the run under way, if any."""
        return self._running

    async def start(self, *, tenant: str | None = None, invite: bool = True) -> AuditRunInfo:
        """Begin an audit of the registered phones (of one tenant when given) and return its
        run at once; the probes go on in the background. Raises AuditBusyError while
        another runs, UnknownTenantError and TargetError (more phones than the cap)."""
        if self._busy:
            raise AuditBusyError(self._running)
        self._busy = True
        try:
            name = None if tenant is None else tenant.strip().lower()
            started = self._clock()
            targets = cap_targets(
                await registered_targets(self._store, tenant=name, now=started), self._max_targets
            )
            options = dataclasses.replace(self._options, invite=invite)
            run = await self._store.audits.begin(
                started_at=started, options=run_options(options, name, "running")
            )
        except BaseException:
            self._busy = False
            raise
        self._running = run.id
        self._task = asyncio.get_running_loop().create_task(
            self._run(run, targets, options, name), name=f"audit-{run.id}"
        )
        return run

    async def _run(
        self, run: AuditRunInfo, targets: list[Target], options: AuditOptions, tenant: str | None
    ) -> None:
        try:
            results = await run_audit(targets, options)
            await record_results(
                self._store,
                results,
                options,
                started_at=run.started_at,
                finished_at=self._clock(),
                tenant=tenant,
                run_id=run.id,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("audit run %d failed", run.id)
            with contextlib.suppress(Exception):
                await self._store.audits.record(
                    started_at=run.started_at,
                    finished_at=self._clock(),
                    options={**run_options(options, tenant, "failed"), "error": str(exc)},
                    results=[],
                    run_id=run.id,
                )
        finally:
            self._running = None
            self._busy = False

    async def wait(self) -> None:
        """Until the run under way (if any) is done: for tests and shutdown."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop the run under way (it stays stored as running: "interrupted")."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
