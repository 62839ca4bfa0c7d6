"""The location service: which contacts (and flows) each address-of-record has now."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..sip.uri import SipUri
from ..transport.flow import Flow
from .nat import NatInfo


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact. `key` identifies it within the AOR: the RFC 5626 instance
    and reg-id when the phone supports outbound, else the Contact URI."""

    aor: str
    key: str
    contact: SipUri
    tenant_id: int
    call_id: str
    cseq: int
    expires_at: float
    flow: Flow
    received_at: float
    nat: NatInfo
    instance: str | None = None
    reg_id: int | None = None
    q: float | None = None
    path: tuple[str, ...] = ()
    user_agent: str | None = None

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))


class Location:
    """AOR -> bindings, in memory; the app persists changes and reloads them at start."""

    def __init__(self) -> None:
        self._aors: dict[str, dict[str, Binding]] = {}
        self._by_flow: dict[tuple[str, str, int], int] = {}  # (transport, host, port) -> count
        self._by_host: dict[str, int] = {}  # source host -> count

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of an AOR, highest q first."""
        bindings = self._aors.get(aor)
        if not bindings:
            return []
        live = [b for b in bindings.values() if b.expires_at > now]
        if len(live) > 1:
            live.sort(key=lambda b: -(b.q if b.q is not None else 1.0))
        return live

    def get(self, aor: str, key: str) -> Binding | None:
        bindings = self._aors.get(aor)
        return None if bindings is None else bindings.get(key)

    def put(self, binding: Binding) -> Binding | None:
        """Insert or replace; returns the binding it replaced."""
        bindings = self._aors.setdefault(binding.aor, {})
        old = bindings.get(binding.key)
        if old is not None:
            self._unindex(old)
        bindings[binding.key] = binding
        self._index(binding)
        return old

    def remove(self, aor: str, key: str) -> Binding | None:
        bindings = self._aors.get(aor)
        if bindings is None:
            return None
        old = bindings.pop(key, None)
        if old is not None:
            self._unindex(old)
        if not bindings:
            del self._aors[aor]
        return old

    def expire(self, now: float) -> list[Binding]:
        gone: list[Binding] = []
        for aor in list(self._aors):
            for key, b in list(self._aors[aor].items()):
                if b.expires_at <= now:
                    gone.append(b)
                    self.remove(aor, key)
        return gone

    def has_flow_from(self, transport: str, host: str, port: int) -> bool:
        """Is there a live registration whose traffic comes from this address?"""
        return (transport, host, port) in self._by_flow

    def has_source_host(self, host: str) -> bool:
        return host in self._by_host

    def __iter__(self) -> Iterator[Binding]:
        for bindings in self._aors.values():
            yield from bindings.values()

    def __len__(self) -> int:
        return sum(len(b) for b in self._aors.values())

    def _index(self, b: Binding) -> None:
        k = (b.flow.transport, b.flow.remote_host, b.flow.remote_port)
        self._by_flow[k] = self._by_flow.get(k, 0) + 1
        h = b.flow.remote_host
        self._by_host[h] = self._by_host.get(h, 0) + 1

    def _unindex(self, b: Binding) -> None:
        k = (b.flow.transport, b.flow.remote_host, b.flow.remote_port)
        n = self._by_flow.get(k, 0) - 1
        if n > 0:
            self._by_flow[k] = n
        else:
            self._by_flow.pop(k, None)
        h = b.flow.remote_host
        m = self._by_host.get(h, 0) - 1
        if m > 0:
            self._by_host[h] = m
        else:
            self._by_host.pop(h, None)
