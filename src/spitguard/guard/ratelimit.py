"""Per-source request budgets, pike-style: fixed windows, counted in memory, clock injected.

Users of pike and FreePBX's firewall complain most about legitimate sites banned after an
outage (every phone behind one NAT re-registers at once) and about chatty trunks banned.
So budgets are per class of traffic (REGISTER, keep-alives, everything else) and per
group of source (untrusted, registered, upstream/peers), each configurable; a group can be
unlimited.
"""

from __future__ import annotations

from dataclasses import dataclass

REGISTER = "register"
KEEPALIVE = "keepalive"
OTHER = "other"
CLASSES = (REGISTER, KEEPALIVE, OTHER)


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `limit` requests per `window` seconds; None means unlimited."""

    limit: int | None
    window: float = 2.0


@dataclass(frozen=True, slots=True)
class GroupBudgets:
    register: Budget
    keepalive: Budget
    other: Budget

    def for_class(self, klass: str) -> Budget:
        if klass == REGISTER:
            return self.register
        if klass == KEEPALIVE:
            return self.keepalive
        return self.other


# Kamailio's stock anti-flood is 16 requests per 2 s; FreePBX allows 10 packets per 60 s
# before a short block. Registered sites get room for a whole office re-registering.
DEFAULT_BUDGETS: dict[str, GroupBudgets] = {
    # Untrusted REGISTERs: room for an office of ~50 phones booting at once behind one
    # address (each sends an unauthenticated REGISTER and then the authenticated one).
    "untrusted": GroupBudgets(Budget(120, 2.0), Budget(10, 2.0), Budget(16, 2.0)),
    "registered": GroupBudgets(Budget(400, 2.0), Budget(400, 2.0), Budget(400, 2.0)),
    "upstream": GroupBudgets(Budget(None), Budget(None), Budget(None)),
    "peers": GroupBudgets(Budget(2000, 2.0), Budget(2000, 2.0), Budget(2000, 2.0)),
}


class RateLimiter:
    """Counts requests per (source, class) in fixed windows; bounded memory."""

    def __init__(
        self, budgets: dict[str, GroupBudgets] | None = None, *, max_sources: int = 200_000
    ) -> None:
        self.budgets = dict(DEFAULT_BUDGETS if budgets is None else budgets)
        self.max_sources = max_sources
        self._windows: dict[tuple[str, str], list[float]] = {}  # -> [window_start, count]
        self.evictions = 0

    def hit(self, source: str, klass: str, group: str, now: float) -> bool:
        """Count one request; True while the source is within its budget."""
        budgets = self.budgets.get(group) or self.budgets["untrusted"]
        budget = budgets.for_class(klass)
        if budget.limit is None:
            return True
        key = (source, klass)
        w = self._windows.get(key)
        if w is None or now - w[0] >= budget.window:
            if w is None and len(self._windows) >= self.max_sources:
                self._evict(now)
            self._windows[key] = [now, 1.0]
            return budget.limit >= 1
        w[1] += 1
        return w[1] <= budget.limit

    def _evict(self, now: float) -> None:
        # Drop finished windows first; under a spoofed-source flood drop the oldest half.
        longest = max(
            (b.window for g in self.budgets.values() for b in (g.register, g.keepalive, g.other)),
            default=2.0,
        )
        stale = [k for k, w in self._windows.items() if now - w[0] >= longest]
        for k in stale:
            del self._windows[k]
        if len(self._windows) >= self.max_sources:
            for k in list(self._windows)[: len(self._windows) // 2]:
                del self._windows[k]
            self.evictions += 1

    def forget(self, source: str) -> None:
        for klass in CLASSES:
            self._windows.pop((source, klass), None)

    def __len__(self) -> int:
        return len(self._windows)
