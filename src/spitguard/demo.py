"""The demo tenant that `make run` (`spitguard serve --demo`) sets up on first start."""

from __future__ import annotations

from .store.crypto import generate_password
from .store.db import Store

DEMO_TENANT = "demo"
DEMO_DOMAIN = "demo.spitguard.test"  # .test is reserved (RFC 6761): never a real domain
DEMO_USERS = ("1001", "1002", "1003")
DEMO_ADMIN = "admin"


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


async def ensure_demo_admin(store: Store) -> tuple[str, str]:
    """The demo operator account with a fresh password, (user, password) to print.

    A new password at every demo start: the store keeps only its hash, and the person
    running the demo needs to read it on their terminal."""
    password = generate_password()
    if await store.admins.get(DEMO_ADMIN) is None:
        await store.admins.add(DEMO_ADMIN, password, role="operator")
    else:
        await store.admins.set_password(DEMO_ADMIN, password)
    return DEMO_ADMIN, password
