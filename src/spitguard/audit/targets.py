"""What to probe: targets given as host[:port] or a small CIDR range, capped.

A target is one address and one SIP port. A range expands to its host addresses, and the
whole list is capped (`DEFAULT_MAX_TARGETS`) so that a typo such as /8 instead of /28
cannot turn an audit into an Internet scan: beyond the cap the error says how to raise it.
Host names are kept as given and resolved only when the audit runs (a dry run sends
nothing, not even a DNS query).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_TARGETS",
    "DEFAULT_SIP_PORT",
    "Target",
    "TargetError",
    "cap_targets",
    "expand_targets",
    "parse_target",
    "uri_host",
]

DEFAULT_SIP_PORT: Final = 5060
DEFAULT_MAX_TARGETS: Final = 256
_MAX_NAME: Final = 253


class TargetError(ValueError):
    """A target the auditor cannot use; the message says what to give instead."""


@dataclass(frozen=True, slots=True)
class Target:
    """One address (or host name) and SIP port, with what the store knows about it."""

    host: str
    port: int = DEFAULT_SIP_PORT
    aor: str | None = None  # set for registered phones (--registrations)
    device: str | None = None  # the device's MAC, when a device carries that line
    tenant: str | None = None

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def label(self) -> str:
        """host:port as a person writes it ([v6]:port for IPv6)."""
        return f"{uri_host(self.host)}:{self.port}"


def uri_host(host: str) -> str:
    """The host as it goes into a URI or host:port: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise TargetError(f"bad port in {spec!r}: give a number from 1 to 65535, e.g. host:5060")
    return int(text)


def _check_name(name: str, spec: str) -> str:
    labels = name.rstrip(".").split(".")
    ok = 0 < len(name) <= _MAX_NAME and all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )
    if not ok:
        raise TargetError(
            f"cannot read target {spec!r}: give an IP address, a host name, host:port "
            "or a CIDR range such as 192.0.2.0/28"
        )
    return name.rstrip(".").lower()


def parse_target(spec: str, *, max_targets: int = DEFAULT_MAX_TARGETS) -> list[Target]:
    """One command-line target: host, host:port, [v6]:port, v6, or a CIDR range."""
    text = spec.strip()
    if not text:
        raise TargetError("empty target: give an IP address, host[:port] or a CIDR range")
    if "/" in text:
        return _range(text, spec, max_targets)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise TargetError(f"cannot read target {spec!r}: write IPv6 with a port as [v6]:port")
        port = _port(rest[1:], spec) if rest else DEFAULT_SIP_PORT
        return [Target(_ip(host, spec), port)]
    if text.count(":") > 1:  # a bare IPv6 address
        return [Target(_ip(text, spec), DEFAULT_SIP_PORT)]
    host, sep, port_text = text.partition(":")
    port = _port(port_text, spec) if sep else DEFAULT_SIP_PORT
    try:
        return [Target(str(ipaddress.ip_address(host)), port)]
    except ValueError:
        return [Target(_check_name(host, spec), port)]


def _ip(text: str, spec: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise TargetError(f"{text!r} in {spec!r} is not an IP address") from None


def _range(text: str, spec: str, max_targets: int) -> list[Target]:
    net_text, sep, port_text = text.partition("]:") if text.startswith("[") else ("", "", "")
    if sep:  # [2001:db8::/120]:5062
        net_text = net_text[1:]
        port = _port(port_text, spec)
    else:
        net_text, port = text, DEFAULT_SIP_PORT
        prefix, _, maybe_port = text.rpartition(":")
        if "/" in prefix and maybe_port.isdigit() and "/" not in maybe_port and "." in prefix:
            net_text, port = prefix, _port(maybe_port, spec)  # 192.0.2.0/28:5062
    try:
        net = ipaddress.ip_network(net_text, strict=False)
    except ValueError:
        raise TargetError(
            f"cannot read range {spec!r}: write it as ADDRESS/PREFIX, e.g. 192.0.2.0/28"
        ) from None
    # islice: never materialise a /8 just to learn that it is too large.
    hosts = list(itertools.islice(net.hosts(), max_targets + 1))
    if len(hosts) > max_targets:
        count = net.num_addresses
        raise TargetError(
            f"range {spec} holds {count} addresses, more than the cap of {max_targets}: "
            f"audit a smaller range, or raise the cap with --max-targets {count}"
        )
    return [Target(str(a), port) for a in hosts] or [Target(str(net.network_address), port)]


def expand_targets(specs: Iterable[str], *, max_targets: int = DEFAULT_MAX_TARGETS) -> list[Target]:
    """Every target of every spec, first occurrence kept, the total capped."""
    if max_targets < 1:
        raise TargetError("--max-targets must be at least 1")
    out: dict[tuple[str, int], Target] = {}
    for spec in specs:
        for target in parse_target(spec, max_targets=max_targets):
            out.setdefault((target.host, target.port), target)
        if len(out) > max_targets:
            raise TargetError(
                f"{len(out)} targets or more, more than the cap of {max_targets}: "
                f"audit fewer, or raise the cap with --max-targets N"
            )
    return list(out.values())


def cap_targets(targets: list[Target], max_targets: int) -> list[Target]:
    """The registered-phone list checked against the same cap as ranges."""
    if len(targets) > max_targets:
        raise TargetError(
            f"{len(targets)} registered addresses, more than the cap of {max_targets}: "
            f"narrow with --tenant T, or raise the cap with --max-targets {len(targets)}"
        )
    return targets
