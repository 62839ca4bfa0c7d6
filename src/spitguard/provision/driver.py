"""The contract every vendor driver fulfils, and the value types it returns.

A driver is sans-I/O: the web layer hands it a request path (and the User-Agent, and an
uploaded body); the driver answers with bytes to serve, ``None`` for a clean 404, or a
finding about what the phone uploaded. It never touches HTTP, the store or a clock, so
the same inputs always give the same bytes and the same ``version``.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum

from .profile import DeviceConfig, HardeningProfile

__all__ = [
    "RenderedFile",
    "UAInfo",
    "UnsafeXMLError",
    "UploadFinding",
    "UploadKind",
    "VendorDriver",
    "Weakening",
    "parse_untrusted_xml",
]


@dataclass(frozen=True, slots=True)
class UAInfo:
    """What a provisioning request's User-Agent says about the phone.

    ``stage`` is the vendor's own label for the software making the request when it has
    one (Polycom: ``Application`` or ``Updater``; the Updater reports the boot loader's
    version, not the application's).
    """

    vendor: str
    model: str
    firmware: str
    mac: str | None = None
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedFile:
    """One file to serve. ``version`` is the SHA-256 of ``body``, so it is stable by design.

    ``sensitive`` marks files holding credentials: serve them only to an authenticated
    phone. ``body`` stays out of ``repr`` for the same reason.
    """

    path: str
    body: bytes = field(repr=False)
    content_type: str
    sensitive: bool
    version: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", hashlib.sha256(self.body).hexdigest())


class UploadKind(StrEnum):
    APP_LOG = "app-log"
    BOOT_LOG = "boot-log"
    PHONE_OVERRIDES = "phone-overrides"
    WEB_OVERRIDES = "web-overrides"
    DIRECTORY = "directory"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Weakening:
    """One setting in an uploaded file that undoes part of the hardening.

    ``value`` is ``None`` when the setting is a secret (an admin password).
    """

    parameter: str
    reason: str
    value: str | None


@dataclass(frozen=True, slots=True)
class UploadFinding:
    """What a phone's upload is and what it means for compliance.

    ``rejected`` is set when an override file could not be read safely (too large, not
    UTF-8, DOCTYPE/ENTITY, malformed); such a phone cannot be shown as compliant.
    """

    kind: UploadKind
    mac: str | None
    size: int
    weakening: tuple[Weakening, ...] = ()
    rejected: str | None = None

    @property
    def compliant(self) -> bool:
        return self.rejected is None and not self.weakening


class UnsafeXMLError(ValueError):
    """An uploaded XML document was refused before or while parsing it."""


def parse_untrusted_xml(body: bytes, *, max_bytes: int) -> ET.Element:
    """Parse XML a phone (or anyone holding its credentials) sent us.

    defusedxml is not available, so the dangerous part is removed up front: without a
    DOCTYPE there is no internal subset, hence no entity declarations to expand and no
    external entities to fetch. The document must be UTF-8 so that the check sees the
    same characters expat will (a UTF-16 body could hide ``<!DOCTYPE`` from a byte scan).
    """
    if len(body) > max_bytes:
        raise UnsafeXMLError(f"larger than {max_bytes} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeXMLError("not UTF-8") from exc
    text = text.removeprefix("\ufeff")
    folded = text.upper()
    if "<!DOCTYPE" in folded or "<!ENTITY" in folded:
        raise UnsafeXMLError("DOCTYPE or ENTITY declarations are not accepted")
    # Forcing UTF-8 overrides any encoding the XML declaration claims, so expat reads the
    # very characters checked above (a declared 8-bit codec could otherwise re-map them).
    parser = ET.XMLParser(encoding="utf-8")  # noqa: S314 - DOCTYPE refused above
    try:
        # Safe here: the document has no DTD, so expat has nothing to expand or fetch.
        parser.feed(text.encode("utf-8"))
        return parser.close()
    except ET.ParseError as exc:
        raise UnsafeXMLError(f"malformed XML: {exc}") from exc


class VendorDriver(ABC):
    """One phone vendor: its file names, User-Agents, parameters and uploads."""

    vendor: str

    @abstractmethod
    def matches_user_agent(self, user_agent: str) -> UAInfo | None:
        """Vendor, model and firmware when the User-Agent is this vendor's, else ``None``."""

    @abstractmethod
    def mac_in_path(self, path: str) -> str | None:
        """The (normalised) MAC a requested or uploaded path names, if any."""

    @abstractmethod
    def files_for(self, mac: str) -> list[str]:
        """The configuration files this phone requests, in the order it requests them."""

    @abstractmethod
    def validate(self, device: DeviceConfig) -> None:
        """Raise ``InvalidDeviceConfig`` when the device cannot be rendered (e.g. overrides)."""

    @abstractmethod
    def render(self, path: str, device: DeviceConfig) -> RenderedFile | None:
        """The file at ``path`` for ``device``; ``None`` when it is not ours (→ 404)."""

    def render_public(self, path: str) -> RenderedFile | None:
        """A file that is the same for every phone asking (no device, no secret), e.g. a
        master file; ``None`` when ``path`` is not one. Served to anyone, so answering it
        for an unknown MAC exactly as for a known one reveals nothing."""
        return None

    @abstractmethod
    def is_firmware_or_license(self, path: str) -> bool:
        """Firmware images and license files: requested routinely, answered with a clean 404."""

    @abstractmethod
    def parse_upload(
        self, path: str, body: bytes, profile: HardeningProfile | None = None
    ) -> UploadFinding:
        """Classify an upload; for override files, list the settings that weaken hardening.

        Without ``profile`` the strict default is assumed (web UI off, validation on).
        """
