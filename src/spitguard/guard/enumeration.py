"""Enumeration: one source trying many users, or failing authentication again and again.

svwar and Nmap's sip-enum-users walk extensions; svcrack walks passwords. Each looks
harmless packet by packet, so the guard counts distinct target users and failed
authentications per source over a sliding-ish window and bans past a threshold.
Successful authentication clears the failure count (Kazoo's antiflood does the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class EnumerationPolicy:
    # Distinct target users per source per window. Generous, because an office behind one
    # NAT coming up cold sends a burst of unauthenticated REGISTERs for different users;
    # a successful authentication from the address clears the count.
    distinct_users: int = 20
    users_window: float = 60.0
    auth_failures: int = 5  # failed digest attempts per source per window
    failures_window: float = 300.0


@dataclass(slots=True)
class _Track:
    start: float
    users: set[str] = field(default_factory=set)
    fail_start: float = 0.0
    failures: int = 0


class EnumerationDetector:
    def __init__(
        self, policy: EnumerationPolicy | None = None, *, max_sources: int = 100_000
    ) -> None:
        self.policy = policy or EnumerationPolicy()
        self.max_sources = max_sources
        self._tracks: dict[str, _Track] = {}

    def _track(self, source: str, now: float) -> _Track:
        t = self._tracks.get(source)
        if t is None:
            if len(self._tracks) >= self.max_sources:
                self._prune(now)
            t = _Track(now, fail_start=now)
            self._tracks[source] = t
        return t

    def note_user(self, source: str, user: str, now: float) -> bool:
        """Record a target user; True when the source has now tried too many."""
        t = self._track(source, now)
        if now - t.start >= self.policy.users_window:
            t.start = now
            t.users.clear()
        if len(t.users) <= self.policy.distinct_users:
            t.users.add(user)
        return len(t.users) > self.policy.distinct_users

    def note_auth_failure(self, source: str, now: float) -> bool:
        t = self._track(source, now)
        if now - t.fail_start >= self.policy.failures_window:
            t.fail_start = now
            t.failures = 0
        t.failures += 1
        return t.failures >= self.policy.auth_failures

    def note_auth_success(self, source: str) -> None:
        t = self._tracks.get(source)
        if t is not None:
            t.failures = 0
            t.users.clear()

    def forget(self, source: str) -> None:
        self._tracks.pop(source, None)

    def _prune(self, now: float) -> None:
        horizon = max(self.policy.users_window, self.policy.failures_window)
        stale = [
            s
            for s, t in self._tracks.items()
            if now - t.start >= horizon and now - t.fail_start >= horizon
        ]
        for s in stale:
            del self._tracks[s]
        if len(self._tracks) >= self.max_sources:
            for s in list(self._tracks)[: len(self._tracks) // 2]:
                del self._tracks[s]
