"""What the API and the portal do when someone acts: shared, so both check the same way."""

from __future__ import annotations

from collections.abc import Sequence

from ..store.repos import normalize_mac_or_none
from .auth import Principal
from .context import WebContext
from .errors import ApiError, not_found

RESYNC_UNAVAILABLE = (
    "re-sync is not available on this server: the edge has not provided push re-sync "
    "(SIP NOTIFY check-sync) to the web layer"
)
MAX_RESYNC_MACS = 1000


async def resync_targets(
    ctx: WebContext,
    principal: Principal,
    *,
    macs: Sequence[str] = (),
    tenant_id: int | None = None,
    stale: bool = False,
) -> list[str]:
    """The MACs to re-sync, all within the principal's scope (404 for any other)."""
    views = ctx.store.views
    if macs:
        found: list[str] = []
        for mac in macs:
            key = normalize_mac_or_none(mac)
            if key is None or await views.device(principal.scope, key) is None:
                raise not_found("device")
            found.append(key)
        return found
    if stale:
        return await views.stale_macs(principal.scope, tenant_id)
    if tenant_id is not None:
        return await views.device_macs(principal.scope, tenant_id)
    raise ApiError(422, "say what to re-sync: macs, a tenant, or stale=true")


async def resync(ctx: WebContext, macs: Sequence[str]) -> str:
    if ctx.resync is None:
        raise ApiError(503, RESYNC_UNAVAILABLE)
    if not macs:
        return "nothing to re-sync"
    result = await ctx.resync(list(macs))
    return "re-sync sent" if result is None else str(result)
