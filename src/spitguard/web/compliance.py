"""Device compliance as the boot server sees it: the portal, the API and the CLI share one
truth (``provision.inventory.compliance``: compliant, stale, never, invalid)."""

from __future__ import annotations

import logging

from ..store.repos import Compliance, DesiredFiles, Page, Scope
from .api.schemas import DeviceOut, device_out
from .context import WebContext
from .errors import ApiError

log = logging.getLogger(__name__)

NO_BOOT_SERVER = (
    "device compliance is not available on this server: it compares with what the boot "
    "server (/provision/) would serve, and this server runs none"
)


async def desired_files(ctx: WebContext) -> DesiredFiles:
    """What each device should run now, from the boot server's catalog (reloaded first
    when the inventory changed): the truth compliance is measured against."""
    if ctx.provision is None:
        raise ApiError(503, NO_BOOT_SERVER)
    try:
        await ctx.provision.refresh(force=True)
    except Exception:  # the store may be busy: answer from the snapshot we have
        log.exception("reloading the boot server's inventory failed")
    return ctx.provision.catalog.desired_files()


def problem_of(ctx: WebContext, mac: str) -> str | None:
    """Why the device's configuration cannot be rendered (None when it can)."""
    entry = None if ctx.provision is None else ctx.provision.catalog.get(mac)
    return None if entry is None else entry.problem


async def device_page(
    ctx: WebContext,
    scope: Scope,
    *,
    tenant_id: int | None,
    q: str | None,
    compliant: bool | None,
    state: Compliance | None = None,
    limit: int,
    offset: int,
) -> Page[DeviceOut]:
    """One page of devices with their compliance, as the API and the portal show it."""
    found = await ctx.store.views.devices(
        scope,
        await desired_files(ctx),
        tenant_id=tenant_id,
        q=q,
        compliant=compliant,
        state=state,
        limit=limit,
        offset=offset,
    )
    items = tuple(device_out(d, problem_of(ctx, d.device.mac)) for d in found.items)
    return Page(items, found.total, limit, offset)
