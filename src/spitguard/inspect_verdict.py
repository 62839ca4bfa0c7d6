"""`spitguard inspect --source`: what the configured guard would do with one message.

There is no registration state outside the running edge, so a source counts as trusted
only through configuration (`upstream.trusted_sources`, `guard.peers`), exactly as a
stranger would be treated by a freshly started edge.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path

from .config import load_settings
from .guard.build import build_guard
from .guard.core import Verdict
from .guard.trusted import TrustedSources
from .proxy.directory import Directory
from .proxy.location import Location
from .sip.message import Request, Response
from .transport.flow import Flow


def parse_source(text: str) -> tuple[str, int]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT`; ValueError with a clear message otherwise."""
    text = text.strip()
    host, port = text, 5060
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest.lstrip(":"))
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--source {text!r}: expected IP, IP:PORT or [IPv6]:PORT") from None
    if not 0 < port < 65536:
        raise ValueError(f"--source {text!r}: port must be 1-65535")
    return host, port


async def _domains(settings_path: Path | None) -> list[tuple[str, int]]:
    """Local domains from the store, if it exists; the policy needs them."""
    settings = load_settings(settings_path)
    db = settings.data_dir / "spitguard.db"
    if settings.database_url is None and not db.exists():
        return []
    from .store.db import open_store

    store = await open_store(settings)
    try:
        return [(d, t.id) for t in await store.tenants.list() for d in t.domains]
    finally:
        await store.close()


def evaluate(
    msg: Request | Response, raw: bytes, source: str, config: Path | None
) -> tuple[Verdict, str | None]:
    """The verdict, and the trusted group the source fell in (if any)."""
    settings = load_settings(config)
    host, port = parse_source(source)

    async def run() -> tuple[Verdict, str | None]:
        trusted = TrustedSources(
            {"upstream": settings.upstream.trusted_sources, "peers": settings.guard.peers},
            nameservers=settings.guard.nameservers,
            timeout=settings.guard.dns_timeout,
        )
        await trusted.refresh_all()
        directory = Directory()
        directory.replace(await _domains(config), [], 0)
        guard = build_guard(
            settings, trusted=trusted.contains, location=Location(), directory=directory
        )
        flow = Flow("udp", "0.0.0.0", 5060, host, port)  # noqa: S104 - a label, not a bind
        return guard.decide(msg, flow, raw, time.time()), trusted.contains(host)

    return asyncio.run(run())
