"""Is this phone behind NAT, or can anyone on the Internet reach it directly?

The tests follow Kamailio's `nat_uac_test` bits (contact private, Via differs from the
source address, Via private, source port differs from the Via port, private source,
Contact port differs from the source port). The case that matters most to spitguard is the
opposite of NAT: a public source with no sign of translation is a phone a scanner can hit
without passing the edge.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

# RFC 1918, RFC 6598 (carrier-grade NAT), link-local, IPv6 ULA and link-local. Loopback
# is not private here: on a test bed everything is loopback and must be classifiable.
DEFAULT_PRIVATE_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)

BEHIND_NAT = "behind NAT"
EXPOSED = "directly reachable from the Internet"
PRIVATE = "on a private network"

EVIDENCE_TEXT = {
    "contact_private": "Contact address is private",
    "via_differs": "top Via address differs from the source address",
    "via_private": "top Via address is private",
    "port_differs": "source port differs from the Via port",
    "source_private": "source address is private",
    "contact_port_differs": "Contact port differs from the source port",
}


@dataclass(frozen=True, slots=True)
class NatInfo:
    verdict: str  # BEHIND_NAT, EXPOSED or PRIVATE
    evidence: tuple[str, ...]  # keys of EVIDENCE_TEXT, in test order

    @property
    def exposed(self) -> bool:
        return self.verdict == EXPOSED

    def to_json(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "exposed": self.exposed,
            "evidence": list(self.evidence),
            "explanation": [EVIDENCE_TEXT[e] for e in self.evidence],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> NatInfo:
        verdict = str(data.get("verdict", BEHIND_NAT))
        raw = data.get("evidence", ())
        evidence = tuple(str(e) for e in raw) if isinstance(raw, list | tuple) else ()
        return cls(verdict, evidence)


class NatClassifier:
    def __init__(self, private_networks: Iterable[str] = DEFAULT_PRIVATE_NETWORKS) -> None:
        self._nets = [ipaddress.ip_network(n) for n in private_networks]

    def is_private(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False  # a host name: says nothing about NAT
        return any(addr in net for net in self._nets)

    def classify(
        self,
        *,
        source_host: str,
        source_port: int,
        via_host: str,
        via_port: int | None,
        contact_host: str,
        contact_port: int | None,
        secure: bool = False,
    ) -> NatInfo:
        default_port = 5061 if secure else 5060
        evidence: list[str] = []
        if self.is_private(contact_host):
            evidence.append("contact_private")
        if _host_differs(via_host, source_host):
            evidence.append("via_differs")
        if self.is_private(via_host):
            evidence.append("via_private")
        if (via_port or default_port) != source_port:
            evidence.append("port_differs")
        source_private = self.is_private(source_host)
        if source_private:
            evidence.append("source_private")
        if (contact_port or default_port) != source_port:
            evidence.append("contact_port_differs")
        if source_private:
            verdict = PRIVATE
        elif {"contact_private", "via_differs", "via_private", "port_differs"} & set(evidence):
            verdict = BEHIND_NAT
        else:
            # Contact port alone differing is legal without NAT (Kamailio's bit 128 note).
            verdict = EXPOSED
        return NatInfo(verdict, tuple(evidence))


def _host_differs(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) != ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a.lower() != b.lower()
