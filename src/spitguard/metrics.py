"""Prometheus metrics, read from the edge's own counters at scrape time.

The hot path only bumps plain integers; turning them into metric families happens when
Prometheus asks, on the event loop (so no locks), through a tiny HTTP endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

Snapshot = Callable[[], dict[str, object]]


class EdgeCollector(Collector):
    """Builds metric families from a snapshot function of the running edge."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.snapshot()
        verdicts = CounterMetricFamily(
            "spitguard_packets",
            "SIP messages by guard verdict and reason",
            labels=["verdict", "reason"],
        )
        raw = s.get("verdicts", {})
        if isinstance(raw, dict):
            for (action, reason), n in sorted(raw.items()):
                verdicts.add_metric([action, reason], float(n))
        yield verdicts
        for name, help_text, kind in (
            ("bans_active", "Source addresses banned right now", "gauge"),
            ("kernel_drops", "Packets from banned sources dropped by nftables", "counter"),
            ("registrations", "Live registered contacts", "gauge"),
            ("transactions", "Live SIP transactions", "gauge"),
            ("connections", "Open TCP/TLS connections", "gauge"),
            ("events_pending", "Aggregated security events waiting to be written", "gauge"),
            ("events_dropped", "Security events lost to the pending bound (floods)", "counter"),
            ("events_written", "Aggregated security events written to the store", "counter"),
            ("malformed", "Unparseable messages dropped", "counter"),
            ("auth_challenges", "401/407 challenges sent", "counter"),
            ("forwarded", "Requests forwarded by the proxy", "counter"),
        ):
            value = s.get(name, 0)
            if not isinstance(value, int | float):
                continue
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "gauge":
                family = GaugeMetricFamily(f"spitguard_{name}", help_text)
            else:
                family = CounterMetricFamily(f"spitguard_{name}", help_text)
            family.add_metric([], float(value))
            yield family


async def serve_metrics(host: str, port: int, snapshot: Snapshot) -> asyncio.Server:
    registry = CollectorRegistry()
    registry.register(EdgeCollector(snapshot))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        line = request.split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
            body = generate_latest(registry)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
        else:
            body = b"not found: try /metrics\n"
            head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        try:
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
