"""From inventory to configuration: which vendor drivers exist, what each phone should get,
and whether the phone has fetched it.

:func:`desired_config` is pure: it turns a stored device, its tenant's profile, its
secrets and the edge's addresses into the :class:`DeviceConfig` a driver renders. The
*desired version* is the SHA-256 of the rendered hardened file (:func:`hardened_file`),
so it changes exactly when the bytes the phone would get change: a profile switch, a new
edge address, a rotated password. :func:`compliance` compares it with the version the
phone last fetched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from .driver import RenderedFile, VendorDriver
from .polycom import PolycomDriver
from .profile import (
    DeviceConfig,
    EdgeTransport,
    HardeningProfile,
    InvalidDeviceConfig,
    Line,
)

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import Store
    from ..store.repos import DeviceInfo, ProfileInfo

__all__ = [
    "DRIVERS",
    "Assessment",
    "Compliance",
    "Edge",
    "assess",
    "compliance",
    "desired_config",
    "driver_for",
    "edge_from_settings",
    "hardened_file",
]

Compliance: TypeAlias = Literal["compliant", "stale", "never"]

# One factory per vendor name as stored in `devices.vendor`.
DRIVERS: Mapping[str, Callable[[], VendorDriver]] = MappingProxyType({"polycom": PolycomDriver})


@cache
def driver_for(vendor: str) -> VendorDriver:
    """The driver of a vendor; ``InvalidDeviceConfig`` naming the known ones otherwise."""
    factory = DRIVERS.get(vendor.strip().lower())
    if factory is None:
        known = ", ".join(sorted(DRIVERS))
        raise InvalidDeviceConfig(f"unknown vendor {vendor!r}: spitguard supports {known}")
    return factory()


@dataclass(frozen=True, slots=True)
class Edge:
    """Where phones reach the edge, and every address they must accept requests from."""

    host: str
    port: int = 5060
    transport: EdgeTransport = "udp"
    trusted_origins: tuple[str, ...] = ()


def edge_from_settings(settings: Settings) -> Edge:
    """The edge as configured: the advertised host on the first UDP listen port (the first
    listen entry when there is no UDP one); every listen host is a trusted origin too."""
    sip = settings.sip
    entry = next((e for e in sip.listen if e.transport == "udp"), sip.listen[0])
    host = sip.effective_advertised_host
    # A wildcard listen address is no address a phone could check a sender against.
    origins = [h for h in (host, *(e.host for e in sip.listen)) if not _unspecified(h)]
    return Edge(
        host=host,
        port=entry.port,
        transport=entry.transport,
        trusted_origins=tuple(dict.fromkeys(origins)),
    )


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class LineCredentials(Protocol):
    """One line of a device with what the phone needs to register it."""

    @property
    def key(self) -> int: ...
    @property
    def aor(self) -> str: ...
    @property
    def auth_user(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def display_name(self) -> str | None: ...


class RenderSecrets(Protocol):
    """The secrets rendered into a phone's file (``store.repos.DeviceSecrets`` fits)."""

    @property
    def admin_password(self) -> str: ...
    @property
    def lines(self) -> Sequence[LineCredentials]: ...


def desired_config(
    device: DeviceInfo, profile: ProfileInfo, secrets: RenderSecrets, edge: Edge
) -> DeviceConfig:
    """The configuration `device` should run. Pure; raises ``InvalidDeviceConfig``.

    ``secrets`` carries the lines with their passwords and the device's admin password (the
    hardening sets it, so it is part of the rendered file).
    """
    by_key = {line.key: line for line in secrets.lines}
    lines: list[Line] = []
    for wanted in device.lines:
        found = by_key.get(wanted.key)
        if found is None or found.aor != wanted.aor:
            raise InvalidDeviceConfig(f"line key {wanted.key} ({wanted.aor}) has no credentials")
        lines.append(
            Line(
                key=wanted.key,
                # Phones take the address without the scheme (Polycom reg.x.address is
                # "user" or "user@host"); the store keeps the canonical "sip:" form.
                aor=wanted.aor.removeprefix("sip:"),
                auth_user=found.auth_user,
                password=found.password,
                display_name=found.display_name or "",
            )
        )
    hardening = HardeningProfile(
        edge_host=edge.host,
        edge_port=edge.port,
        edge_transport=edge.transport,
        trusted_origins=edge.trusted_origins,
        admin_password=secrets.admin_password,
        invite_validation=profile.invite_validation,
        checksync_validation=profile.checksync_validation,
        web_ui=profile.web_ui,
        provisioning_polling=profile.polling,
        resync_reboots=profile.resync_reboots,
    )
    return DeviceConfig(
        mac=device.mac,
        vendor=device.vendor,
        model=device.model,
        lines=tuple(lines),
        profile=hardening,
        overrides=device.overrides,
    )


def hardened_file(driver: VendorDriver, config: DeviceConfig) -> RenderedFile:
    """The file carrying the device's hardening and credentials: the last sensitive one of
    the files it requests. Its ``version`` is the device's desired version."""
    for path in reversed(driver.files_for(config.mac)):
        rendered = driver.render(path, config)
        if rendered is not None and rendered.sensitive:
            return rendered
    raise InvalidDeviceConfig(f"the {driver.vendor} driver renders no configuration file")


def compliance(desired_version: str, last_fetched_version: str | None) -> Compliance:
    """``never``: the phone has not fetched its configuration; ``stale``: it fetched an
    older one; ``compliant``: it fetched exactly what it should run now."""
    if last_fetched_version is None:
        return "never"
    return "compliant" if last_fetched_version == desired_version else "stale"


@dataclass(frozen=True, slots=True)
class Assessment:
    """Where one device stands. ``problem`` is set (and ``state`` is ``invalid``) when its
    configuration cannot be rendered, e.g. a line lost its credentials."""

    mac: str
    state: Compliance | Literal["invalid"]
    desired_version: str | None
    path: str | None
    last_version: str | None
    last_at: float | None
    problem: str | None = None


async def assess(
    store: Store, device: DeviceInfo, edge: Edge, profile: ProfileInfo | None = None
) -> Assessment:
    """Render `device` as it should be now and compare with its last successful fetch."""
    if profile is None:
        profile = await store.profiles.get(device.tenant)
    secrets = await store.devices.credentials(device.mac)
    try:
        if secrets is None:
            raise InvalidDeviceConfig("the device was removed")
        driver = driver_for(device.vendor)
        rendered = hardened_file(driver, desired_config(device, profile, secrets, edge))
    except InvalidDeviceConfig as exc:
        last = await store.fetches.last_success(device.mac)
        return Assessment(
            device.mac,
            "invalid",
            None,
            None,
            None if last is None else last[0],
            None if last is None else last[1],
            problem=str(exc),
        )
    last = await store.fetches.last_success(device.mac, path=rendered.path)
    last_version = None if last is None else last[0]
    return Assessment(
        mac=device.mac,
        state=compliance(rendered.version, last_version),
        desired_version=rendered.version,
        path=rendered.path,
        last_version=last_version,
        last_at=None if last is None else last[1],
    )
