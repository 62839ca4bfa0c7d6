"""The audit's rate limit, sans-I/O: a token bucket over everything sent.

Every SIP message (retransmissions included), every TCP connection and every HTTP request
takes one token; tokens come back at `rate` per second up to `burst`. New work waits for
its token (`delay`). What ends something the target started (CANCEL, ACK, BYE) must not
wait behind other targets' OPTIONS, so it takes its token at once (`take_now`), running
the bucket into debt that later sends wait out: the average rate still holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEFAULT_BURST", "DEFAULT_RATE", "Pacer"]

DEFAULT_RATE: Final = 20.0  # sends per second, over the whole audit
DEFAULT_BURST: Final = 5
_EPSILON: Final = 1e-9


@dataclass(slots=True)
class Pacer:
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    sent: int = 0  # tokens taken so far (what went out)
    _tokens: float = field(default=-1.0, repr=False)
    _at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("the rate must be above 0 sends per second")
        if self.burst < 1:
            raise ValueError("the burst must be at least 1")
        self._tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now

    def delay(self, now: float) -> float:
        """Seconds to wait before the next send; 0 means take the token now (taken)."""
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:  # float refills land a hair short of 1.0
            self._tokens -= 1.0
            self.sent += 1
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def take_now(self, now: float) -> None:
        """Take a token without waiting (urgent sends): the bucket may go into debt."""
        self._refill(now)
        self._tokens -= 1.0
        self.sent += 1
