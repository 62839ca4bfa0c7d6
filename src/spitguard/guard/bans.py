"""The ban list: source addresses dropped outright until their ban expires.

Bans escalate: a source banned again within `memory` seconds of its last ban gets a
longer one (x `factor`, capped), so a scanner that comes back after five minutes stays
away for an hour, then a day. Manual bans (CLI, API) last as long as they were given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Ban:
    source: str
    until: float
    level: int  # 1 for a first ban; +1 for each repeat within the memory window
    reason: str
    created_at: float
    manual: bool = False

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)


@dataclass(frozen=True, slots=True)
class BanPolicy:
    first: float = 300.0  # Kamailio's stock ipban autoexpire
    factor: float = 12.0  # 5 min -> 1 h -> 12 h -> ...
    maximum: float = 7 * 86_400.0
    memory: float = 86_400.0  # repeat offences within a day escalate


class BanList:
    def __init__(self, policy: BanPolicy | None = None) -> None:
        self.policy = policy or BanPolicy()
        self._bans: dict[str, Ban] = {}
        self._history: dict[str, Ban] = {}  # last ban per source, kept for `memory`

    def get(self, source: str, now: float) -> Ban | None:
        ban = self._bans.get(source)
        if ban is None:
            return None
        if ban.until <= now:
            del self._bans[source]
            return None
        return ban

    def is_banned(self, source: str, now: float) -> bool:
        ban = self._bans.get(source)
        return ban is not None and ban.until > now

    def ban(self, source: str, reason: str, now: float) -> Ban:
        """An automatic ban, escalating when the source was banned recently."""
        p = self.policy
        last = self._history.get(source)
        level = 1
        if last is not None and now - last.until <= p.memory:
            level = last.level + 1
        # Exponent capped: a source failing forever must not overflow the float.
        duration = min(p.first * p.factor ** min(level - 1, 64), p.maximum)
        ban = Ban(source, now + duration, level, reason, now)
        self._bans[source] = ban
        self._history[source] = ban
        return ban

    def add(self, ban: Ban) -> None:
        """Insert as given (manual bans, and bans restored from the store)."""
        self._bans[ban.source] = ban
        prev = self._history.get(ban.source)
        if prev is None or prev.created_at <= ban.created_at:
            self._history[ban.source] = ban

    def remove(self, source: str) -> Ban | None:
        """Lift a ban; the history is forgiven too, so a mistaken ban does not escalate."""
        self._history.pop(source, None)
        return self._bans.pop(source, None)

    def expire(self, now: float) -> list[Ban]:
        gone = [b for b in self._bans.values() if b.until <= now]
        for b in gone:
            del self._bans[b.source]
        horizon = now - self.policy.memory
        for source in [s for s, b in self._history.items() if b.until < horizon]:
            del self._history[source]
        return gone

    def active(self, now: float) -> Iterator[Ban]:
        return (b for b in self._bans.values() if b.until > now)

    def __len__(self) -> int:
        return len(self._bans)

    def extend(self, source: str, until: float) -> Ban | None:
        ban = self._bans.get(source)
        if ban is None:
            return None
        ban = replace(ban, until=until)
        self._bans[source] = ban
        return ban
