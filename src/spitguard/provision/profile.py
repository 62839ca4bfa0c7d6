"""What a hardened phone must look like, independent of any vendor's parameter names.

:class:`HardeningProfile` is the policy (who may send INVITEs, web UI, admin password,
polling), :class:`Line` one registration, :class:`DeviceConfig` everything a driver needs to
render one phone. All three are immutable and validate on construction, so a driver never
has to re-check them and a bad inventory entry fails where a person can read the error.

Secrets (``admin_password``, ``Line.password``) are left out of ``repr`` so they cannot
reach a log line through an f-string or a traceback.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeAlias
from urllib.parse import urlsplit

__all__ = [
    "DeviceConfig",
    "EdgeTransport",
    "HardeningProfile",
    "InvalidDeviceConfig",
    "Line",
    "PollingMode",
    "ProvisioningPolling",
    "ValidationMethod",
    "generate_admin_password",
    "normalize_host",
    "normalize_mac",
]

ValidationMethod: TypeAlias = Literal["source", "digest", "both"]
EdgeTransport: TypeAlias = Literal["udp", "tcp", "tls"]
PollingMode: TypeAlias = Literal["abs", "rel", "random"]

_VALIDATION_METHODS: frozenset[str] = frozenset({"source", "digest", "both"})
_TRANSPORTS: frozenset[str] = frozenset({"udp", "tcp", "tls"})
_POLLING_MODES: frozenset[str] = frozenset({"abs", "rel", "random"})

# Characters XML 1.0 cannot carry even as character references (C0 controls, lone
# surrogates, U+FFFE/U+FFFF), plus TAB/CR/LF which attribute-value normalisation would
# silently turn into spaces. Rejecting them keeps every rendered file well-formed.
_XML_UNSAFE = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_HHMM = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$")
_MAC_SEPARATORS = re.compile(r"[:\-.]")
_HEX12 = re.compile(r"^[0-9a-f]{12}$")

# Bounds for a generated or supplied admin password. The phone's own minimum is
# `sec.pwd.length.admin` (default 1); 8 is ours, so a typo cannot set "1" as the password.
ADMIN_PASSWORD_MIN = 8
ADMIN_PASSWORD_MAX = 64


class InvalidDeviceConfig(ValueError):
    """A profile, line or device cannot be rendered; the message says which field and why."""


def _text(name: str, value: str, *, required: bool = True, max_len: int = 256) -> str:
    if not isinstance(value, str):
        raise InvalidDeviceConfig(f"{name} must be a string")
    if required and not value:
        raise InvalidDeviceConfig(f"{name} must not be empty")
    if len(value) > max_len:
        raise InvalidDeviceConfig(f"{name} is longer than {max_len} characters")
    if _XML_UNSAFE.search(value):
        raise InvalidDeviceConfig(f"{name} contains control characters")
    return value


def normalize_mac(mac: str) -> str:
    """``00:04:F2:AB:CD:EF`` / ``0004F2ABCDEF`` → ``0004f2abcdef`` (phones ask in lower case)."""
    candidate = _MAC_SEPARATORS.sub("", mac.strip()).lower()
    if not _HEX12.match(candidate):
        raise InvalidDeviceConfig(f"not a MAC address: {mac!r}")
    if candidate == "000000000000":
        # That name belongs to the generic master file every phone may fetch.
        raise InvalidDeviceConfig("MAC 000000000000 is reserved for the generic master file")
    return candidate


def normalize_host(host: str) -> str:
    """An IP literal in canonical form, or a lower-case DNS name without the trailing dot."""
    value = _text("host", host.strip(), max_len=253)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.lower().rstrip(".")
    labels = name.split(".")
    if not name or not all(_HOST_LABEL.match(label) for label in labels):
        raise InvalidDeviceConfig(f"not an IP address or host name: {host!r}")
    return name


def generate_admin_password(length: int = 20) -> str:
    """A fresh per-device admin password: letters and digits only, so no escaping surprises."""
    if not ADMIN_PASSWORD_MIN <= length <= ADMIN_PASSWORD_MAX:
        raise ValueError(f"length must be {ADMIN_PASSWORD_MIN}..{ADMIN_PASSWORD_MAX}")
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisioningPolling:
    """Periodic re-fetch of the configuration, so a missed check-sync heals by itself.

    ``mode``: ``abs`` polls daily at ``time``; ``rel`` every ``period`` seconds after boot;
    ``random`` between ``time`` and ``time_random_end`` (on a MAC-derived day when
    ``period`` exceeds one day). ``period`` must be greater than 3600 s.
    """

    mode: PollingMode = "abs"
    period: int = 86400
    time: str | None = "03:00"
    time_random_end: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in _POLLING_MODES:
            raise InvalidDeviceConfig(f"polling mode must be one of {sorted(_POLLING_MODES)}")
        if isinstance(self.period, bool) or not isinstance(self.period, int):
            raise InvalidDeviceConfig("polling period must be an integer number of seconds")
        if self.period <= 3600:
            raise InvalidDeviceConfig("polling period must be greater than 3600 seconds")
        for name, value in (("time", self.time), ("time_random_end", self.time_random_end)):
            if value is not None and not _HHMM.match(value):
                raise InvalidDeviceConfig(f"polling {name} must be HH:MM (24-hour clock)")
        if self.mode in ("abs", "random") and self.time is None:
            raise InvalidDeviceConfig(f"polling mode {self.mode!r} needs a start time")
        if self.time_random_end is not None and self.mode != "random":
            raise InvalidDeviceConfig("time_random_end applies to the random mode only")


@dataclass(frozen=True, slots=True, kw_only=True)
class HardeningProfile:
    """The hardening one phone gets. Built per device: it carries that device's admin password.

    ``trusted_origins`` are the edge's other addresses or names (e.g. every A record of the
    edge's DNS name); they are stored sorted and de-duplicated so that a DNS answer in a
    different order does not change the rendered bytes. ``edge_host`` is always trusted.
    ``provisioning_polling``, ``resync_reboots`` and ``provisioning_url`` are ``None`` to
    leave the phone's own setting alone.
    """

    edge_host: str
    admin_password: str = field(repr=False)
    edge_port: int = 5060
    edge_transport: EdgeTransport = "udp"
    trusted_origins: tuple[str, ...] = ()
    invite_validation: ValidationMethod = "source"
    checksync_validation: ValidationMethod = "source"
    web_ui: bool = False
    provisioning_polling: ProvisioningPolling | None = None
    resync_reboots: bool | None = None
    provisioning_url: str | None = None

    def __post_init__(self) -> None:
        edge = normalize_host(self.edge_host)
        object.__setattr__(self, "edge_host", edge)
        others = {normalize_host(origin) for origin in _as_iterable(self.trusted_origins)}
        others.discard(edge)
        object.__setattr__(self, "trusted_origins", tuple(sorted(others)))
        if isinstance(self.edge_port, bool) or not isinstance(self.edge_port, int):
            raise InvalidDeviceConfig("edge_port must be an integer")
        if not 1 <= self.edge_port <= 65535:
            raise InvalidDeviceConfig("edge_port must be 1..65535")
        if self.edge_transport not in _TRANSPORTS:
            raise InvalidDeviceConfig(f"edge_transport must be one of {sorted(_TRANSPORTS)}")
        for name in ("invite_validation", "checksync_validation"):
            if getattr(self, name) not in _VALIDATION_METHODS:
                raise InvalidDeviceConfig(f"{name} must be one of {sorted(_VALIDATION_METHODS)}")
        if not isinstance(self.web_ui, bool):
            raise InvalidDeviceConfig("web_ui must be a bool")
        if self.resync_reboots is not None and not isinstance(self.resync_reboots, bool):
            raise InvalidDeviceConfig("resync_reboots must be a bool or None")
        _text("admin_password", self.admin_password, max_len=ADMIN_PASSWORD_MAX)
        if len(self.admin_password) < ADMIN_PASSWORD_MIN:
            raise InvalidDeviceConfig(
                f"admin_password must have at least {ADMIN_PASSWORD_MIN} characters"
            )
        if self.provisioning_url is not None:
            _check_provisioning_url(self.provisioning_url)

    @property
    def origins(self) -> tuple[str, ...]:
        """Every address the phone must accept calls from: the edge first, then the rest."""
        return (self.edge_host, *self.trusted_origins)


def _as_iterable(value: Iterable[str] | str) -> Iterable[str]:
    # A bare string would otherwise be split into characters.
    return (value,) if isinstance(value, str) else value


def _check_provisioning_url(url: str) -> None:
    _text("provisioning_url", url, max_len=1024)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidDeviceConfig("provisioning_url must be an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidDeviceConfig("provisioning_url needs a host")
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would end up in every copy of the profile; keep them out.
        raise InvalidDeviceConfig("provisioning_url must not embed credentials")
    if parts.query or parts.fragment:
        raise InvalidDeviceConfig("provisioning_url must not have a query or fragment")


@dataclass(frozen=True, slots=True, kw_only=True)
class Line:
    """One registration on the phone; ``key`` is the line key it sits on (1..n)."""

    key: int
    aor: str
    auth_user: str
    password: str = field(repr=False)
    display_name: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.key, bool) or not isinstance(self.key, int) or not 1 <= self.key <= 255:
            raise InvalidDeviceConfig("line key must be an integer 1..255")
        _text("aor", self.aor)
        if any(ch.isspace() for ch in self.aor):
            raise InvalidDeviceConfig("aor must not contain whitespace")
        _text("auth_user", self.auth_user)
        _text("password", self.password)
        _text("display_name", self.display_name, required=False, max_len=128)
        _text("label", self.label, required=False, max_len=64)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    """Everything one driver needs to render one phone.

    ``overrides`` are per-device vendor parameters. They are checked against the driver's
    allow-list (``VendorDriver.validate``), never against the profile's own parameters: the
    profile is the only way to change hardening, so turning the web UI back on is
    ``HardeningProfile.web_ui=True``, not an ``httpd.enabled`` override.
    """

    mac: str
    vendor: str
    lines: tuple[Line, ...]
    profile: HardeningProfile
    model: str | None = None
    overrides: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        _text("vendor", self.vendor, max_len=64)
        lines = tuple(self.lines)
        if not lines:
            raise InvalidDeviceConfig("a device needs at least one line")
        keys = [line.key for line in lines]
        if len(set(keys)) != len(keys):
            raise InvalidDeviceConfig("line keys must be unique")
        object.__setattr__(self, "lines", tuple(sorted(lines, key=lambda line: line.key)))
        overrides: dict[str, str] = {}
        for name, value in sorted(dict(self.overrides).items()):
            _text("override name", name, max_len=128)
            overrides[name] = _text(f"override {name}", value, required=False, max_len=512)
        object.__setattr__(self, "overrides", MappingProxyType(overrides))
