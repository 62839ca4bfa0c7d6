"""What the HTTP side may use of the running system.

Routers get this, never the `Edge` itself, so `web` depends on the store and on small
interfaces rather than on `app.py` (dependencies point inward, ARCHITECTURE.md).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ..config import Settings
from ..store import Store

# Push a re-sync (SIP NOTIFY check-sync) to the devices with these MACs; the edge provides
# it. Whatever it returns is reported back as text.
ResyncFn = Callable[[Sequence[str]], Awaitable[object]]


@dataclass(slots=True)
class WebContext:
    settings: Settings
    store: Store
    wall_clock: Callable[[], float] = field(default=time.time)
    # None until the edge hands its re-sync over: the API then answers 503.
    resync: ResyncFn | None = None
