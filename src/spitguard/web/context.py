"""What the HTTP side may use of the running system.

Routers get this, never the `Edge` itself, so `web` depends on the store and on small
interfaces rather than on `app.py` (dependencies point inward, ARCHITECTURE.md).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..audit import AuditService
from ..config import Settings
from ..provision.runtime import ProvisionServer
from ..store import Store


class ResyncFn(Protocol):
    """MACs in, outcome per MAC out (see `Edge.resync`: "ok", "ok-challenged",
    "not-registered", "timeout", "rejected:<code>", "unknown-device"), waiting at most
    `timeout` seconds (None: the configured `provision.resync_timeout`) for the phones."""

    def __call__(
        self, macs: Sequence[str], *, timeout: float | None = None
    ) -> Awaitable[dict[str, str]]: ...


@dataclass(slots=True)
class WebContext:
    settings: Settings
    store: Store
    wall_clock: Callable[[], float] = field(default=time.time)
    # The boot server under /provision/ (None: not served, every request gets 404).
    provision: ProvisionServer | None = None
    # Push a check-sync NOTIFY to registered phones now (the running edge does it).
    resync: ResyncFn | None = None
    # Audits of the registered phones started from the API or the portal (None: not
    # offered, the endpoints answer 503).
    audits: AuditService | None = None
