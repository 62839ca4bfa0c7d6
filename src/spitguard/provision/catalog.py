"""The boot server's in-memory view of the inventory: one entry per device, ready to serve.

Built from the store in a handful of queries and replaced as a whole when the inventory
revision changes, so a request costs no database round trip. Each entry renders its files
on first request and keeps them: the cache key is (device, desired version) by
construction, because any change that alters the rendered bytes (profile, lines, edge
addresses, passwords) bumps the revision and so builds a new entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..sip.digest import compute_ha1
from .driver import RenderedFile, VendorDriver
from .inventory import Edge, desired_config, driver_for
from .profile import DeviceConfig, InvalidDeviceConfig

if TYPE_CHECKING:
    from ..store import Store
    from ..store.repos import DeviceInfo

__all__ = ["Catalog", "CatalogEntry", "load_catalog"]

DEFAULT_DRIVER = "polycom"  # answers for devices whose vendor has no driver (all 404)


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
    revision: int
    entries: Mapping[str, CatalogEntry]
    _desired: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False, compare=False)

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


async def load_catalog(store: Store, edge: Edge) -> Catalog:
    """Every device with its profile and secrets, as of the current inventory revision."""
    revision = await store.get_revision()
    devices = await store.devices.list()
    secrets = await store.devices.all_credentials()
    profiles = {t: await store.profiles.get(t) for t in {d.tenant for d in devices}}
    entries: dict[str, CatalogEntry] = {}
    for device in devices:
        secret = secrets.get(device.mac)
        if secret is None:  # removed between the two queries; the next reload settles it
            continue
        config: DeviceConfig | None = None
        problem = None
        driver = driver_for(DEFAULT_DRIVER)
        try:
            driver = driver_for(device.vendor)
            config = desired_config(device, profiles[device.tenant], secret, edge)
        except InvalidDeviceConfig as exc:
            problem = str(exc)
        entry = CatalogEntry(device, driver, config, problem, secret.provisioning_password)
        try:
            if entry.desired() is None and entry.config is not None:
                raise InvalidDeviceConfig(f"the {driver.vendor} driver renders no configuration")
        except InvalidDeviceConfig as exc:  # fails here, once, rather than per request
            entry.config, entry.problem = None, str(exc)
        entries[device.mac] = entry
    return Catalog(revision, entries)
