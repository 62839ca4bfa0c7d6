"""What the API and the portal do when someone acts: shared, so both check the same way."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..store.repos import normalize_mac_or_none
from .auth import Principal
from .compliance import desired_files
from .context import WebContext
from .errors import ApiError, not_found

RESYNC_UNAVAILABLE = (
    "re-sync is not available on this server: the edge has not provided push re-sync "
    "(SIP NOTIFY check-sync) to the web layer"
)
MAX_RESYNC_MACS = 1000
# Phones answer check-sync within milliseconds; one that has not answered within this is
# reported "timeout" (it may still fetch), so a request never hangs on a silent phone.
RESYNC_WAIT = 5.0
# The portal's words for the edge's outcomes (`Edge.resync`); others are shown as they are.
OUTCOME_TEXT = {
    "ok": "accepted",
    "ok-challenged": "accepted",
    "not-registered": "not registered",
    "timeout": "no answer",
    "unknown-device": "unknown to the boot server",
    "no-credentials": "no line credentials to answer the phone's challenge",
    "busy": "a re-sync is already under way",
}


@dataclass(frozen=True, slots=True)
class ResyncResult:
    devices: list[str]
    outcomes: dict[str, str]

    @property
    def summary(self) -> str:
        """ "2 ok, 1 not-registered": how many devices got each outcome."""
        if not self.devices:
            return "nothing to re-sync"
        return ", ".join(f"{n} {o}" for o, n in Counter(self.outcomes.values()).most_common())

    @property
    def text(self) -> str:
        """The summary in words, for a person."""
        if not self.devices:
            return "Nothing to re-sync: every selected device runs its current configuration."
        words = Counter(
            OUTCOME_TEXT.get(o, o.replace("rejected:", "rejected by the phone with "))
            for o in self.outcomes.values()
        )
        counted = ", ".join(f"{n} {w}" for w, n in words.most_common())
        one = len(self.devices) == 1
        return f"Re-sync of {len(self.devices)} device{'' if one else 's'}: {counted}."


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
        keys = [normalize_mac_or_none(mac) for mac in macs]
        named = list(dict.fromkeys(k for k in keys if k is not None))
        if None in keys or len(await views.device_macs(principal.scope, macs=named)) < len(named):
            raise not_found("device")
        selected = named
    elif stale:
        selected = await views.stale_macs(principal.scope, await desired_files(ctx), tenant_id)
    elif tenant_id is not None:
        selected = await views.device_macs(principal.scope, tenant_id=tenant_id)
    else:
        raise ApiError(422, "say what to re-sync: macs, a tenant, or stale=true")
    if len(selected) > MAX_RESYNC_MACS:
        raise ApiError(
            422,
            f"{len(selected)} devices selected; re-sync at most {MAX_RESYNC_MACS} at once "
            "(name the MACs, or repeat stale=true: re-synced devices leave the stale set)",
        )
    return selected


async def resync(ctx: WebContext, macs: Sequence[str]) -> ResyncResult:
    """Push check-sync to each device's phone and wait (at most RESYNC_WAIT seconds) for
    its answer: the outcome per MAC, as `Edge.resync` reports it."""
    if ctx.resync is None:
        raise ApiError(503, RESYNC_UNAVAILABLE)
    if not macs:
        return ResyncResult([], {})
    outcomes = await ctx.resync(list(macs), timeout=RESYNC_WAIT)
    return ResyncResult(list(macs), {mac: outcomes.get(mac, "failed") for mac in macs})
