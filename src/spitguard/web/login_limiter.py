"""Slows, then refuses, password guessing per (account, source address).

After `free` wrong passwords each further try must wait (2, 4, 8 … up to 60 s; tries in
between are refused unchecked); after `max_failures` the pair is refused outright, right
password included, for `lockout` seconds. Keyed by account *and* source, so an attacker
cannot lock the real user out from elsewhere. In memory: one process serves the portal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MAX_DELAY = 60.0
MAX_ENTRIES = 100_000


@dataclass(slots=True)
class _Record:
    failures: int = 0
    not_before: float = 0.0
    locked_until: float = 0.0


class LoginLimiter:
    def __init__(
        self, clock: Callable[[], float], *, free: int, max_failures: int, lockout: float
    ) -> None:
        self._clock = clock
        self._free = free
        self._max = max(max_failures, free + 1)
        self._lockout = lockout
        self._records: dict[tuple[str, str], _Record] = {}

    def retry_after(self, account: str, source: str) -> float | None:
        """Seconds to wait when a try now would be refused unchecked; None: go ahead."""
        record = self._records.get((account, source))
        if record is None:
            return None
        now = self._clock()
        if record.locked_until > now:
            return record.locked_until - now
        if record.locked_until:  # the lockout is over: start afresh
            del self._records[(account, source)]
            return None
        if record.not_before > now:
            return record.not_before - now
        return None

    def locked(self, account: str, source: str) -> bool:
        record = self._records.get((account, source))
        return record is not None and record.locked_until > self._clock()

    def failed(self, account: str, source: str) -> None:
        now = self._clock()
        if len(self._records) >= MAX_ENTRIES:
            self._prune(now)
        record = self._records.setdefault((account, source), _Record())
        record.failures += 1
        if record.failures >= self._max:
            record.locked_until = now + self._lockout
        elif record.failures >= self._free:
            record.not_before = now + min(MAX_DELAY, 2.0 ** (record.failures - self._free + 1))

    def succeeded(self, account: str, source: str) -> None:
        self._records.pop((account, source), None)

    def _prune(self, now: float) -> None:
        idle = [k for k, r in self._records.items() if max(r.not_before, r.locked_until) <= now]
        for key in idle:
            del self._records[key]
        if len(self._records) >= MAX_ENTRIES:  # a flood of live lockouts: keep the newest half
            for key in list(self._records)[: MAX_ENTRIES // 2]:
                del self._records[key]
