"""What the HTTP side may use of the running system.

Routers get this, never the `Edge` itself, so `web` depends on the store and on small
interfaces rather than on `app.py` (dependencies point inward, ARCHITECTURE.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Settings
from ..store import Store


@dataclass(slots=True)
class WebContext:
    settings: Settings
    store: Store
    wall_clock: Callable[[], float] = field(default=time.time)
