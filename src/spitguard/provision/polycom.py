"""Polycom / Poly UC Software (SoundPoint IP, VVX, Trio): files, User-Agents, uploads.

Files served (all names lower-case; requests are matched case-insensitively because the
phone may ask for ``<MAC>.cfg`` in either case, phones.md §1.3):

* ``000000000000.cfg`` – the generic master file. Identical for every phone: it names
  ``spitguard-[PHONE_MAC_ADDRESS].cfg`` and lets the phone fill in its own MAC.
* ``<mac>.cfg`` – the per-device master file, naming ``spitguard-<mac>.cfg``. Phones ask
  for it before the generic one, so a known phone never needs the macro.
* ``spitguard-<mac>.cfg`` – the hardened configuration (credentials: ``sensitive``).

Parameter names come from /work/shared/reference/phones.md §0–§1. The few it lacks are
listed in :data:`VENDOR_GUIDE_PARAMETERS` with the Polycom guide that confirms each; none
of them is a hardening switch.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .driver import (
    RenderedFile,
    UAInfo,
    UnsafeXMLError,
    UploadFinding,
    UploadKind,
    VendorDriver,
    Weakening,
    parse_untrusted_xml,
)
from .profile import (
    DeviceConfig,
    HardeningProfile,
    InvalidDeviceConfig,
    normalize_host,
    normalize_mac,
)

__all__ = [
    "GENERIC_MASTER",
    "OVERRIDABLE_PARAMETERS",
    "VENDOR_GUIDE_PARAMETERS",
    "PolycomDriver",
]

GENERIC_MASTER: Final = "000000000000.cfg"
CONTENT_TYPE: Final = "application/xml"
MAX_UPLOAD_BYTES: Final = 256 * 1024

_UCS416 = "http://38.142.81.21:8001/manual/polycom/2200-46350-025/user-s-guide-english/"
_SIP222 = "http://phone.manualsonline.com/manuals/mfg/polycom/sip_222.html?p=195"

VENDOR_GUIDE_PARAMETERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "reg.x.address": f"Polycom SIP 2.2.2 admin guide p. A-83, {_SIP222}",
        "reg.x.displayName": f"Polycom SIP 2.2.2 admin guide p. A-83, {_SIP222}",
        "reg.x.label": f"Polycom SIP 2.2.2 admin guide p. A-83, {_SIP222}",
        "reg.x.auth.userId": f"UC Software 4.1.6 addendum p. 41, {_UCS416}page-41.html",
        "reg.x.auth.password": f"UC Software 4.1.6 addendum p. 41, {_UCS416}page-41.html",
        "reg.x.server.y.port": f"UC Software 4.1.6 addendum p. 48, {_UCS416}page-48.html",
        "reg.x.server.y.transport": f"UC Software 4.1.6 addendum p. 48, {_UCS416}page-48.html",
        "voIpProt.SIP.outboundProxy.address": f"UCS 4.1.6 addendum p. 55, {_UCS416}page-55.html",
        "voIpProt.SIP.outboundProxy.port": f"UCS 4.1.6 addendum p. 55, {_UCS416}page-55.html",
        "voIpProt.SIP.outboundProxy.transport": f"UCS 4.1.6 addendum p. 56, {_UCS416}page-56.html",
        "device.set": "CX5100 admin guide, https://www.easymanua.ls/polycom/cx5100/manual/172211?p=46",
    }
)

# UC Software transport tokens (UCS 4.1.6 addendum p. 48: DNSnaptr, TCPpreferred, UDPOnly,
# TLS, TCPOnly). The edge's transport is pinned so that no NAPTR answer can move it.
_TRANSPORT: Final[Mapping[str, str]] = MappingProxyType(
    {"udp": "UDPOnly", "tcp": "TCPOnly", "tls": "TLS"}
)

_MAC_CFG = re.compile(r"^([0-9a-f]{12})\.cfg$", re.IGNORECASE)
_DEVICE_CFG = re.compile(r"^spitguard-([0-9a-f]{12})\.cfg$", re.IGNORECASE)
_UPLOAD = re.compile(
    r"^([0-9a-f]{12})-(app\.log|boot\.log|phone\.cfg|web\.cfg|directory\.xml)$", re.IGNORECASE
)
_ANY_MAC_PREFIX = re.compile(r"^([0-9a-f]{12})(?:[-.]|$)", re.IGNORECASE)
# phones.md §1.3: ``^FileTransport Polycom\w+-(\w*?)-UA/([\d.]+)``, plus the optional
# ``Type/Application|Updater`` suffix. The prefix is optional so the SIP form
# (``PolycomSoundPointIP-SPIP_650-UA/3.1.3.0439``, optionally ``_<suffix>``) parses too.
_UA = re.compile(
    r"^(?:FileTransport\s+)?Polycom(\w+?)-(\w+?)-UA/(\d+(?:\.\d+)*)(?:_\w+)?(?:\s+Type/(\w+))?",
    re.ASCII,
)

_UPLOAD_KINDS: Final[Mapping[str, UploadKind]] = MappingProxyType(
    {
        "app.log": UploadKind.APP_LOG,
        "boot.log": UploadKind.BOOT_LOG,
        "phone.cfg": UploadKind.PHONE_OVERRIDES,
        "web.cfg": UploadKind.WEB_OVERRIDES,
        "directory.xml": UploadKind.DIRECTORY,
    }
)

_RV = "voIpProt.SIP.requestValidation"
_RV_METHOD = re.compile(r"^voIpProt\.SIP\.requestValidation\.(\d+)\.method$")
_RV_REQUEST = re.compile(r"^voIpProt\.SIP\.requestValidation\.(\d+)\.request$")
_RV_EVENT = re.compile(r"^voIpProt\.SIP\.requestValidation\.(\d+)\.request\.(\d+)\.event$")
_SERVER_ADDRESS = re.compile(r"^(?:reg\.\d+\.server\.\d+|voIpProt\.server\.\d+)\.address$")
# What each `…method` value checks (phones.md §1.1: `both` or `all` = both checks).
_COVERAGE: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "source": frozenset({"source"}),
        "digest": frozenset({"digest"}),
        "both": frozenset({"source", "digest"}),
        "all": frozenset({"source", "digest"}),
    }
)


def _int_in(low: int, high: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if not value.isdigit() or not low <= int(value) <= high:
            return f"must be an integer {low}..{high}"
        return None

    return check


def _boolean(value: str) -> str | None:
    return None if value in ("0", "1") else "must be 0 or 1"


def _any_text(value: str) -> str | None:
    return None if value else "must not be empty"


# Per-device overrides that cannot undo the hardening. Everything the profile renders
# (validation, httpd on/off, device.*, reg.*, polling, check-sync) is deliberately absent:
# the profile is the one switch for those, so a forgotten override cannot reopen a phone.
OVERRIDABLE_PARAMETERS: Final[Mapping[str, Callable[[str], str | None]]] = MappingProxyType(
    {
        "sec.pwd.length.admin": _int_in(0, 32),
        "sec.pwd.length.user": _int_in(0, 32),
        "call.enableOnNotRegistered": _boolean,
        f"{_RV}.digest.realm": _any_text,
        # Only meaningful, and only accepted, when the profile turns the web UI on.
        "httpd.cfg.port": _int_in(1, 65535),
    }
)


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    # Sandboxed and immutable: templates can neither reach Python internals nor mutate the
    # objects handed to them. Autoescape turns ", <, >, &, ' into entities, which is
    # exactly what XML attribute values need.
    return ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(Path(__file__).parent / "templates" / "polycom"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )


@lru_cache(maxsize=16384)
def _master_file(app_file_path: str, name: str, config_files: str) -> RenderedFile:
    # Master files depend on the MAC only: a fleet booting asks for each one again and again.
    text = (
        _environment()
        .get_template("master.cfg.j2")
        .render(app_file_path=app_file_path, config_files=config_files)
    )
    return RenderedFile(name, text.encode("utf-8"), CONTENT_TYPE, sensitive=False)


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class PolycomDriver(VendorDriver):
    """Polycom UC Software. ``app_file_path`` goes into the master files' APP_FILE_PATH.

    The default names the phone's own firmware image, which the boot server answers with a
    clean 404 (``is_firmware_or_license``): the phone keeps the software it runs.
    Distributing firmware is an operator decision; give a full URL to do it elsewhere.
    """

    vendor = "polycom"

    def __init__(self, *, app_file_path: str = "[PHONE_PART_NUMBER].sip.ld") -> None:
        self._app_file_path = app_file_path

    # -- identification -----------------------------------------------------------------

    def matches_user_agent(self, user_agent: str) -> UAInfo | None:
        match = _UA.match(user_agent.strip())
        if match is None:
            return None
        _family, model, firmware, stage = match.groups()
        # phones.md §1.3/§10: the Polycom UA never carries the MAC; it is in the path.
        return UAInfo(vendor=self.vendor, model=model, firmware=firmware, stage=stage)

    def mac_in_path(self, path: str) -> str | None:
        name = _basename(path)
        device = _DEVICE_CFG.match(name)
        if device is not None:
            return device.group(1).lower()
        match = _ANY_MAC_PREFIX.match(name)
        if match is None or match.group(1) == "000000000000":
            return None
        return match.group(1).lower()

    def files_for(self, mac: str) -> list[str]:
        mac = normalize_mac(mac)
        return [f"{mac}.cfg", f"spitguard-{mac}.cfg"]

    def is_firmware_or_license(self, path: str) -> bool:
        name = _basename(path).lower()
        # `.ld` covers `<part#>.sip.ld` and boot-ROM images; licenses are `-license.cfg`.
        return name.endswith((".ld", "-license.cfg"))

    # -- rendering ----------------------------------------------------------------------

    def validate(self, device: DeviceConfig) -> None:
        if device.vendor.lower() != self.vendor:
            raise InvalidDeviceConfig(f"device vendor is {device.vendor!r}, not {self.vendor!r}")
        for name, value in device.overrides.items():
            if name.startswith("httpd.") and name != "httpd.cfg.port":
                raise InvalidDeviceConfig(
                    f"override {name} is not accepted: the web UI is switched by the "
                    "profile's web_ui setting"
                )
            check = OVERRIDABLE_PARAMETERS.get(name)
            if check is None:
                raise InvalidDeviceConfig(
                    f"override {name} is not in the Polycom allow-list "
                    f"({', '.join(sorted(OVERRIDABLE_PARAMETERS))})"
                )
            problem = check(value)
            if problem is not None:
                raise InvalidDeviceConfig(f"override {name} {problem}")
            if name == "httpd.cfg.port" and not device.profile.web_ui:
                raise InvalidDeviceConfig("override httpd.cfg.port needs web_ui enabled")
            if name == "sec.pwd.length.admin" and int(value) > len(device.profile.admin_password):
                # Otherwise the phone would refuse the admin password we set.
                raise InvalidDeviceConfig(
                    "override sec.pwd.length.admin exceeds the admin password's length"
                )

    def render(self, path: str, device: DeviceConfig) -> RenderedFile | None:
        name = _basename(path)
        if name.lower() == GENERIC_MASTER:
            return self._master(GENERIC_MASTER, "spitguard-[PHONE_MAC_ADDRESS].cfg")
        device_file = _DEVICE_CFG.match(name)
        if device_file is not None:
            if device_file.group(1).lower() != device.mac:
                return None
            return self._device_file(device)
        master = _MAC_CFG.match(name)
        if master is not None and master.group(1).lower() == device.mac:
            return self._master(f"{device.mac}.cfg", f"spitguard-{device.mac}.cfg")
        # Never serve one phone's file under another phone's name: the caller gets a 404.
        return None

    def render_public(self, path: str) -> RenderedFile | None:
        name = _basename(path)
        if name.lower() == GENERIC_MASTER:
            return self._master(GENERIC_MASTER, "spitguard-[PHONE_MAC_ADDRESS].cfg")
        master = _MAC_CFG.match(name)
        if master is None:
            return None
        mac = master.group(1).lower()
        return self._master(f"{mac}.cfg", f"spitguard-{mac}.cfg")

    def _master(self, name: str, config_files: str) -> RenderedFile:
        return _master_file(self._app_file_path, name, config_files)

    def _device_file(self, device: DeviceConfig) -> RenderedFile:
        self.validate(device)
        profile = device.profile
        context: dict[str, Any] = {
            "invite_method": profile.invite_validation,
            "checksync_method": profile.checksync_validation,
            "web_ui": "1" if profile.web_ui else "0",
            "admin_password": profile.admin_password,
            "edge_host": profile.edge_host,
            "edge_port": profile.edge_port,
            "edge_transport": _TRANSPORT[profile.edge_transport],
            "servers": profile.origins,
            "lines": device.lines,
            "polling": profile.provisioning_polling,
            "resync_reboots": None
            if profile.resync_reboots is None
            else ("1" if profile.resync_reboots else "0"),
            "prov_server_type": None,
            "prov_server_name": None,
            "overrides": sorted(device.overrides.items()),
        }
        if profile.provisioning_url is not None:
            parts = urlsplit(profile.provisioning_url)
            context["prov_server_type"] = parts.scheme.upper()
            # phones.md §1.3 example: `device.prov.serverName` = `host/app/provision/`.
            context["prov_server_name"] = f"{parts.netloc}{parts.path}"
        text = _environment().get_template("device.cfg.j2").render(**context)
        return RenderedFile(
            f"spitguard-{device.mac}.cfg", text.encode("utf-8"), CONTENT_TYPE, sensitive=True
        )

    # -- uploads ------------------------------------------------------------------------

    def parse_upload(
        self, path: str, body: bytes, profile: HardeningProfile | None = None
    ) -> UploadFinding:
        match = _UPLOAD.match(_basename(path))
        if match is None:
            return UploadFinding(UploadKind.UNKNOWN, self.mac_in_path(path), len(body))
        mac = match.group(1).lower()
        kind = _UPLOAD_KINDS[match.group(2).lower()]
        if kind not in (UploadKind.PHONE_OVERRIDES, UploadKind.WEB_OVERRIDES):
            return UploadFinding(kind, mac, len(body))
        try:
            root = parse_untrusted_xml(body, max_bytes=MAX_UPLOAD_BYTES)
        except UnsafeXMLError as exc:
            return UploadFinding(kind, mac, len(body), rejected=str(exc))
        found: list[Weakening] = []
        for element in root.iter():
            for name, value in element.attrib.items():
                weakening = _judge(name, value, profile)
                if weakening is not None:
                    found.append(weakening)
        return UploadFinding(kind, mac, len(body), weakening=tuple(found))


def _expected_rules(profile: HardeningProfile | None) -> dict[int, tuple[str, str | None]]:
    """Rule number → (request, method) as rendered; method ``None``: any real check will do."""
    return {
        1: ("INVITE", profile.invite_validation if profile else None),
        2: ("NOTIFY", profile.checksync_validation if profile else None),
    }


def _judge(name: str, value: str, profile: HardeningProfile | None) -> Weakening | None:
    """Does this override-file setting undo something the rendered configuration set?"""
    shown = value[:200]
    if name in ("httpd.enabled", "httpd.cfg.enabled"):
        web_ui_allowed = profile is not None and profile.web_ui
        if value.strip() == "1" and not web_ui_allowed:
            return Weakening(name, "turns the phone's web server back on", shown)
        return None
    if name == "device.auth.localAdminPassword":
        if profile is not None and hmac.compare_digest(
            value.encode("utf-8"), profile.admin_password.encode("utf-8")
        ):
            return None
        return Weakening(name, "the admin password was changed on the phone", None)
    rules = _expected_rules(profile)
    method = _RV_METHOD.match(name)
    if method is not None:
        coverage = _COVERAGE.get(value.strip().lower())
        if coverage is None:
            return Weakening(name, "switches request validation off", shown)
        rule = int(method.group(1))
        expected = rules.get(rule, ("", None))[1]
        if expected is not None and not _COVERAGE[expected] <= coverage:
            return Weakening(name, f"validates less than the profile's {expected!r}", shown)
        return None
    request = _RV_REQUEST.match(name)
    if request is not None:
        rule = int(request.group(1))
        if rule in rules and value.strip().upper() != rules[rule][0]:
            return Weakening(name, f"moves validation rule {rule} off {rules[rule][0]}", shown)
        return None
    event = _RV_EVENT.match(name)
    if event is not None:
        if (int(event.group(1)), int(event.group(2))) == (2, 1) and value.strip() != "check-sync":
            return Weakening(name, "check-sync NOTIFYs are no longer validated", shown)
        return None
    if _SERVER_ADDRESS.match(name) and value.strip():
        # The source check trusts every registration server: a new one is a new trusted origin.
        try:
            host = normalize_host(value)
        except InvalidDeviceConfig:
            return Weakening(name, "adds an unreadable registration server", shown)
        if profile is None or host not in profile.origins:
            return Weakening(name, "adds a registration server outside the edge", shown)
    return None
