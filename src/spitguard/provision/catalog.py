"""The boot server's in-memory view of the inventory: one entry per device, ready to serve.

Built from the store and replaced as a whole when the inventory revision changes, so a
request costs no database round trip. Each entry renders its files on first request and
keeps them: the cache key is (device, desired version) by construction, because any
change that alters the rendered bytes (profile, lines, edge addresses, passwords) gives
the device new inputs and so a new entry.

A reload is incremental: the inventory is read with passwords still sealed
(``DeviceRepo.snapshot``), and only devices whose inputs differ from the previous
catalog's (the device row, its lines with their sealed passwords, its tenant's profile,
the edge) are decrypted and rendered again; the others keep their entry. The work runs
on the event loop in slices of at most ``SLICE`` seconds, and the new catalog is handed
back whole: nothing ever sees a half-built one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..sip.digest import compute_ha1
from .driver import RenderedFile, VendorDriver
from .inventory import Edge, desired_config, driver_for
from .profile import DeviceConfig, InvalidDeviceConfig

if TYPE_CHECKING:
    from ..store import Store
    from ..store.repos import DeviceInfo, DeviceSecrets, ProfileInfo, SealedDevice

__all__ = ["Catalog", "CatalogEntry", "load_catalog"]

DEFAULT_DRIVER = "polycom"  # answers for devices whose vendor has no driver (all 404)
# Longest stretch (seconds) a reload keeps the event loop before letting others run: the
# SIP edge shares the loop. One device costs about 0.1-0.2 ms to decrypt and render.
SLICE = 0.005


@dataclass(slots=True, eq=False)
class CatalogEntry:
    """One device as the boot server serves it. ``config`` is None (and ``problem`` says
    why) when the device cannot be rendered; it still authenticates, and gets 404s."""

    device: DeviceInfo
    driver: VendorDriver
    config: DeviceConfig | None
    problem: str | None
    prov_password: str = field(repr=False)
    _files: dict[str, RenderedFile | None] = field(default_factory=dict, repr=False)
    _ha1: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    @property
    def mac(self) -> str:
        return self.device.mac

    def render(self, name: str) -> RenderedFile | None:
        key = name.lower()
        if key not in self._files:
            self._files[key] = (
                None if self.config is None else self.driver.render(name, self.config)
            )
        return self._files[key]

    def desired(self) -> RenderedFile | None:
        """The hardened file; its ``version`` is the version this phone should run."""
        if self.config is None:
            return None
        for path in reversed(self.driver.files_for(self.mac)):
            rendered = self.render(path)
            if rendered is not None and rendered.sensitive:
                return rendered
        return None

    def ha1(self, algorithm: str, realm: str) -> str:
        """H(MAC:realm:password), cached: digest verification then costs two hashes."""
        key = (algorithm, realm)
        value = self._ha1.get(key)
        if value is None:
            value = self._ha1[key] = compute_ha1(algorithm, self.mac, realm, self.prov_password)
        return value


@dataclass(frozen=True, slots=True)
class Catalog:
    """``inputs`` holds, per MAC, what the entry was built from (compared on the next
    reload); ``edge`` the edge it was rendered for; ``rendered`` how many entries this
    load built afresh (the rest came from the previous catalog)."""

    revision: int
    entries: Mapping[str, CatalogEntry]
    _desired: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False, compare=False)
    edge: Edge | None = None
    inputs: Mapping[str, tuple[SealedDevice, ProfileInfo]] = field(
        default_factory=dict, repr=False, compare=False
    )
    rendered: int = 0

    def get(self, mac: str) -> CatalogEntry | None:
        return self.entries.get(mac)

    def desired_files(self) -> Mapping[str, tuple[str, str]]:
        """MAC → (file name, version) of the hardened file each device should run now;
        devices that cannot be rendered are absent. Built once per catalog (the entries
        keep their rendered files), so whole-fleet views cost a dictionary lookup each."""
        if not self._desired and self.entries:
            for mac, entry in self.entries.items():
                rendered = entry.desired()
                if rendered is not None:
                    self._desired[mac] = (rendered.path, rendered.version)
        return self._desired

    def __len__(self) -> int:
        return len(self.entries)


EMPTY = Catalog(-1, {})


async def load_catalog(store: Store, edge: Edge, previous: Catalog | None = None) -> Catalog:
    """Every device with its profile and secrets, as of the current inventory revision.

    With ``previous``, entries whose inputs are unchanged are taken over from it instead
    of being decrypted and rendered again; the result is the same as without."""
    snapshot = await store.devices.snapshot()
    reuse = previous if previous is not None and previous.edge == edge else None
    entries: dict[str, CatalogEntry] = {}
    inputs: dict[str, tuple[SealedDevice, ProfileInfo]] = {}
    desired: dict[str, tuple[str, str]] = {}
    rendered = 0
    pause_at = time.perf_counter() + SLICE
    for sealed in snapshot.devices:
        mac = sealed.info.mac
        key = (sealed, snapshot.profiles[sealed.info.tenant])
        entry = None if reuse is None else reuse.entries.get(mac)
        if entry is not None and reuse is not None and reuse.inputs.get(mac) == key:
            key = reuse.inputs[mac]  # equal; keeping the old one frees the snapshot's copy
            kept = reuse._desired.get(mac)  # complete: built by this function
            if kept is not None:
                desired[mac] = kept
        else:
            entry = _build_entry(sealed.info, key[1], store.devices.unseal(sealed), edge)
            rendered += 1
            file = entry.desired()
            if file is not None:
                desired[mac] = (file.path, file.version)
        entries[mac] = entry
        inputs[mac] = key
        if time.perf_counter() >= pause_at:
            await asyncio.sleep(0)  # let the SIP edge and requests run
            pause_at = time.perf_counter() + SLICE
    return Catalog(snapshot.revision, entries, desired, edge, inputs, rendered)


def _build_entry(
    device: DeviceInfo, profile: ProfileInfo, secret: DeviceSecrets, edge: Edge
) -> CatalogEntry:
    """Decrypted, configured and its hardened file rendered (or the reason it cannot be)."""
    config: DeviceConfig | None = None
    problem = None
    driver = driver_for(DEFAULT_DRIVER)
    try:
        driver = driver_for(device.vendor)
        config = desired_config(device, profile, secret, edge)
    except InvalidDeviceConfig as exc:
        problem = str(exc)
    entry = CatalogEntry(device, driver, config, problem, secret.provisioning_password)
    try:
        if entry.desired() is None and entry.config is not None:
            raise InvalidDeviceConfig(f"the {driver.vendor} driver renders no configuration")
    except InvalidDeviceConfig as exc:  # fails here, once, rather than per request
        entry.config, entry.problem = None, str(exc)
    return entry
