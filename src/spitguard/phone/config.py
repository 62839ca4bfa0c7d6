"""What a Polycom makes of its configuration files, sans-I/O.

* :func:`parse_master` reads ``CONFIG_FILES`` from a master file and substitutes the
  ``[PHONE_MAC_ADDRESS]`` macro (phones.md §1.3).
* :func:`parse_config` reads one configuration file: every XML attribute is a parameter,
  element names do not matter (phones.md §1 "File format").
* :func:`merge` applies the precedence rule: CONFIG_FILES are processed left to right and
  **the first file that contains a parameter wins** (phones.md §1.3, vendor-sourced).
* :func:`apply` turns the flat parameters into :class:`PhoneSettings`, reading exactly the
  names ``spitguard.provision.polycom`` renders: ``reg.x.*``,
  ``voIpProt.SIP.outboundProxy.*``, ``voIpProt.SIP.requestValidation.*``, ``httpd.*`` and
  ``device.auth.localAdminPassword`` (honoured only with ``device.set="1"`` and its own
  ``.set="1"``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from spitguard.provision.driver import UnsafeXMLError, parse_untrusted_xml

__all__ = [
    "FACTORY_ADMIN_PASSWORD",
    "Check",
    "ConfigError",
    "LineSettings",
    "PhoneSettings",
    "ServerSettings",
    "ValidationRule",
    "apply",
    "merge",
    "parse_config",
    "parse_master",
    "resolve_host",
]

MAX_CONFIG_BYTES: Final = 1024 * 1024
MAX_CONFIG_FILES_CHARS: Final = 2047  # phones.md §1.3: "CONFIG_FILES list max 2047 chars"
FACTORY_ADMIN_PASSWORD: Final = "456"  # noqa: S105 - phones.md §1.2 factory default [U]
DEFAULT_DIGEST_REALM: Final = "PolycomSPIP"  # phones.md §1.1
DEFAULT_SIP_PORT: Final = 5060
DEFAULT_EXPIRES: Final = 3600
DEFAULT_OVERLAP: Final = 60

Check: TypeAlias = Literal["source", "digest"]
Transport: TypeAlias = Literal["udp", "tcp", "tls"]

# phones.md §1.1: Null (default) | source | digest | both or all. Anything else is read as
# Null, as a phone ignores a value it does not know: a typo switches validation off.
_CHECKS: Final[Mapping[str, frozenset[Check]]] = {
    "source": frozenset({"source"}),
    "digest": frozenset({"digest"}),
    "both": frozenset({"source", "digest"}),
    "all": frozenset({"source", "digest"}),
}
# UCS 4.1.6 addendum p. 48 transport tokens. TCPpreferred and DNSnaptr may end up on UDP.
_TRANSPORTS: Final[Mapping[str, Transport]] = {
    "": "udp",
    "dnsnaptr": "udp",
    "udponly": "udp",
    "tcppreferred": "udp",
    "tcponly": "tcp",
    "tls": "tls",
}
_EVENT_METHODS: Final = frozenset({"SUBSCRIBE", "NOTIFY"})
_RULE = re.compile(r"^voIpProt\.SIP\.requestValidation\.(\d+)\.(request|method)$")
_RULE_EVENT = re.compile(r"^voIpProt\.SIP\.requestValidation\.(\d+)\.request\.(\d+)\.event$")
_LINE = re.compile(r"^reg\.(\d+)\.address$")
_SERVER = re.compile(r"^reg\.(\d+)\.server\.(\d+)\.address$")
_GLOBAL_SERVER = re.compile(r"^voIpProt\.server\.(\d+)\.address$")


class ConfigError(ValueError):
    """A configuration file the phone cannot use (unsafe or malformed XML, no CONFIG_FILES)."""


def parse_config(body: bytes) -> dict[str, str]:
    """Every attribute of every element, in document order; the first occurrence wins."""
    try:
        root = parse_untrusted_xml(body, max_bytes=MAX_CONFIG_BYTES)
    except UnsafeXMLError as exc:
        raise ConfigError(str(exc)) from exc
    params: dict[str, str] = {}
    for element in root.iter():
        for name, value in element.attrib.items():
            params.setdefault(name, value)
    return params


def parse_master(body: bytes, mac: str) -> list[str]:
    """The CONFIG_FILES entries of a master file, macros substituted, in order."""
    params = parse_config(body)
    if "CONFIG_FILES" not in params:
        raise ConfigError("master file has no CONFIG_FILES attribute")
    listed = params["CONFIG_FILES"]
    if len(listed) > MAX_CONFIG_FILES_CHARS:
        raise ConfigError(f"CONFIG_FILES is longer than {MAX_CONFIG_FILES_CHARS} characters")
    listed = listed.replace("[PHONE_MAC_ADDRESS]", mac.lower())
    return [name.strip() for name in listed.split(",") if name.strip()]


def merge(files: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Parameters of several files in CONFIG_FILES order: the first file to set one wins."""
    merged: dict[str, str] = {}
    for params in files:
        for name, value in params.items():
            merged.setdefault(name, value)
    return merged


def resolve_host(host: str, hosts: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """IP addresses for a configured host without DNS: an IP literal, ``localhost``, or an
    entry of ``hosts`` (an /etc/hosts-like map). Anything else resolves to nothing."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return (str(ipaddress.ip_address(name)),)
    except ValueError:
        pass
    if name in hosts:
        return tuple(str(ipaddress.ip_address(a)) for a in hosts[name])
    if name == "localhost":
        return ("127.0.0.1", "::1")
    return ()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    address: str
    port: int
    transport: Transport
    expires: int
    overlap: int


@dataclass(frozen=True, slots=True)
class LineSettings:
    """One registration (``reg.x.*``)."""

    index: int
    user: str
    domain: str
    auth_user: str
    password: str = field(repr=False)
    display_name: str
    servers: tuple[ServerSettings, ...]

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"


@dataclass(frozen=True, slots=True)
class ValidationRule:
    """``voIpProt.SIP.requestValidation.x.*``: which request, which checks, which events."""

    index: int
    request: str
    checks: frozenset[Check]
    events: tuple[str, ...] = ()

    def covers(self, method: str, event: str | None) -> bool:
        if method.upper() != self.request:
            return False
        if self.events and method.upper() in _EVENT_METHODS:
            return event is not None and event.lower() in self.events
        return True


@dataclass(frozen=True, slots=True)
class PhoneSettings:
    lines: tuple[LineSettings, ...]
    outbound_proxy: ServerSettings | None
    rules: tuple[ValidationRule, ...]
    digest_realm: str
    registration_servers: tuple[str, ...]  # as configured, for the source check
    web_server_enabled: bool
    web_config_enabled: bool
    web_config_port: int
    admin_password: str = field(repr=False)
    admin_password_set: bool = False

    @property
    def web_ui_enabled(self) -> bool:
        return self.web_server_enabled and self.web_config_enabled

    def checks_for(self, method: str, event: str | None = None) -> frozenset[Check]:
        """Every check the rules covering this request ask for (empty: accept it)."""
        out: frozenset[Check] = frozenset()
        for rule in self.rules:
            if rule.covers(method, event):
                out |= rule.checks
        return out

    def trusted_sources(self, hosts: Mapping[str, Sequence[str]]) -> frozenset[str]:
        """IP addresses of the registration servers: the senders ``source`` accepts."""
        return frozenset(a for host in self.registration_servers for a in resolve_host(host, hosts))

    def line_for(self, user: str | None) -> LineSettings | None:
        for line in self.lines:
            if user is not None and line.user == user:
                return line
        return self.lines[0] if self.lines else None


def _int(params: Mapping[str, str], name: str, default: int) -> int:
    value = params.get(name, "").strip()
    return int(value) if value.isdigit() else default


def _server(params: Mapping[str, str], prefix: str, expires_prefix: str) -> ServerSettings | None:
    address = params.get(f"{prefix}.address", "").strip()
    if not address:
        return None
    return ServerSettings(
        address=address,
        port=_int(params, f"{prefix}.port", DEFAULT_SIP_PORT) or DEFAULT_SIP_PORT,
        transport=_TRANSPORTS.get(params.get(f"{prefix}.transport", "").strip().lower(), "udp"),
        expires=_int(params, f"{expires_prefix}.expires", DEFAULT_EXPIRES),
        overlap=_int(params, f"{expires_prefix}.expires.overlap", DEFAULT_OVERLAP),
    )


def _lines(params: Mapping[str, str]) -> tuple[LineSettings, ...]:
    lines: list[LineSettings] = []
    for index in sorted({int(m.group(1)) for n in params if (m := _LINE.match(n))}):
        address = params[f"reg.{index}.address"].strip().removeprefix("sip:")
        if not address:
            continue
        servers: list[ServerSettings] = []
        for y in sorted(
            {
                int(m.group(2))
                for n in params
                if (m := _SERVER.match(n)) and int(m.group(1)) == index
            }
        ):
            prefix = f"reg.{index}.server.{y}"
            server = _server(params, prefix, prefix)
            if server is not None:
                servers.append(server)
        if not servers:  # a line without its own servers uses voIpProt.server.1
            fallback = _server(params, "voIpProt.server.1", "voIpProt.server.1")
            servers.extend([fallback] if fallback is not None else [])
        user, at, domain = address.partition("@")
        if not at:  # no domain in reg.x.address: the phone uses the server's
            domain = servers[0].address if servers else ""
        lines.append(
            LineSettings(
                index=index,
                user=user,
                domain=domain,
                auth_user=params.get(f"reg.{index}.auth.userId", "").strip() or user,
                password=params.get(f"reg.{index}.auth.password", ""),
                display_name=params.get(f"reg.{index}.displayName", ""),
                servers=tuple(servers),
            )
        )
    return tuple(lines)


def _rules(params: Mapping[str, str]) -> tuple[ValidationRule, ...]:
    parts: dict[int, dict[str, str]] = {}
    events: dict[int, list[tuple[int, str]]] = {}
    for name, value in params.items():
        if match := _RULE.match(name):
            parts.setdefault(int(match.group(1)), {})[match.group(2)] = value.strip()
        elif (match := _RULE_EVENT.match(name)) and value.strip():
            rule_events = events.setdefault(int(match.group(1)), [])
            rule_events.append((int(match.group(2)), value.strip().lower()))
    rules: list[ValidationRule] = []
    for index in sorted(parts):
        request = parts[index].get("request", "").upper()
        checks = _CHECKS.get(parts[index].get("method", "").lower())
        if not request or checks is None:  # Null (or unknown): no validation
            continue
        listed = tuple(event for _, event in sorted(events.get(index, [])))
        rules.append(ValidationRule(index, request, checks, listed))
    return tuple(rules)


def apply(params: Mapping[str, str]) -> PhoneSettings:
    """What the phone does with these parameters (defaults as documented in phones.md)."""
    lines = _lines(params)
    servers: list[str] = []
    for name, value in params.items():
        host = value.strip()
        if (_SERVER.match(name) or _GLOBAL_SERVER.match(name)) and host and host not in servers:
            servers.append(host)
    proxy = _server(params, "voIpProt.SIP.outboundProxy", "voIpProt.SIP.outboundProxy")
    # phones.md §1 "Device parameters": device.* needs its ….set="1" (and device.set="1").
    device_on = params.get("device.set", "").strip() == "1"
    admin_set = device_on and params.get("device.auth.localAdminPassword.set", "") == "1"
    admin = params.get("device.auth.localAdminPassword", "")
    admin_set = admin_set and bool(admin)
    realm = params.get("voIpProt.SIP.requestValidation.digest.realm", "").strip()
    return PhoneSettings(
        lines=lines,
        outbound_proxy=proxy,
        rules=_rules(params),
        digest_realm=realm or DEFAULT_DIGEST_REALM,
        registration_servers=tuple(servers),
        # phones.md §1.2: both default to 1.
        web_server_enabled=params.get("httpd.enabled", "1").strip() != "0",
        web_config_enabled=params.get("httpd.cfg.enabled", "1").strip() != "0",
        web_config_port=_int(params, "httpd.cfg.port", 80) or 80,
        admin_password=admin if admin_set else FACTORY_ADMIN_PASSWORD,
        admin_password_set=admin_set,
    )
