"""The demo tenant that `make run` (`spitguard serve --demo`) sets up on first start."""

from __future__ import annotations

from .store.crypto import generate_password
from .store.db import Store

DEMO_TENANT = "demo"
DEMO_DOMAIN = "demo.spitguard.test"  # .test is reserved (RFC 6761): never a real domain
DEMO_USERS = ("1001", "1002", "1003")


async def ensure_demo(store: Store) -> list[tuple[str, str]]:
    """Create the demo tenant and its lines unless present; return (AOR, password) pairs.

    The passwords are printed on the terminal of whoever runs the demo, on purpose: they
    are throwaway credentials for loopback-only phones."""
    if await store.tenants.get(DEMO_TENANT) is None:
        await store.tenants.add(DEMO_TENANT, [DEMO_DOMAIN])
    existing = {line.aor for line in await store.lines.list(DEMO_TENANT)}
    for user in DEMO_USERS:
        aor = f"sip:{user}@{DEMO_DOMAIN}"
        if aor not in existing:
            await store.lines.add(aor, tenant=DEMO_TENANT, password=generate_password())
    return [
        (e.aor, e.password) for e in await store.lines.load_directory() if e.tenant == DEMO_TENANT
    ]
