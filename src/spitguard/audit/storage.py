"""The auditor and the store: registered phones as targets, results recorded per target.

Shared by `spitguard audit` and the API, so both read registrations and record results
the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..store.repos import AuditResultInput, AuditRunInfo
from .results import TargetResult
from .runner import AuditOptions
from .targets import Target

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["record_results", "registered_targets", "run_options"]


def run_options(options: AuditOptions, tenant: str | None, state: str) -> dict[str, Any]:
    """What a run stores of its options: the probe settings, the tenant audited (None: all
    tenants or other targets) and its state ("running", "done" or "failed")."""
    return {**options.to_json(), "tenant": tenant, "state": state}


async def registered_targets(
    store: Store, *, tenant: str | None = None, now: float | None = None
) -> list[Target]:
    """The public address of every live registration (one target per address), carrying
    its AOR, tenant and the MAC of the device with that line. Raises UnknownTenantError."""
    found = await store.audits.registered_addresses(time.time() if now is None else now, tenant)
    return [Target(r.host, r.port, r.aor, r.device, r.tenant) for r in found]


async def record_results(
    store: Store,
    results: Sequence[TargetResult],
    options: AuditOptions,
    *,
    started_at: float,
    finished_at: float | None = None,
    tenant: str | None = None,
    run_id: int | None = None,
) -> AuditRunInfo:
    """One audit run with one result per target (linked to the device when known).

    `tenant`: the run audited that tenant's registered phones (its admins see the run);
    `run_id`: complete the run `run_options` began (`store.audits.begin`) instead of
    storing a new one."""
    return await store.audits.record(
        started_at=started_at,
        finished_at=time.time() if finished_at is None else finished_at,
        options=run_options(options, tenant, "done"),
        run_id=run_id,
        results=[
            AuditResultInput(
                host=r.target.host,
                port=r.target.port,
                verdict=r.verdict,
                exposed=r.exposed,
                web_ui=r.web_ui,
                config=r.config,
                details=r.to_json(),
                address=r.address,
                aor=r.target.aor,
                device=r.target.device,
            )
            for r in results
        ],
    )
