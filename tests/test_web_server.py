"""The HTTP server runs inside `spitguard serve`: it answers, serves the OpenAPI document,
says nothing about itself, and a taken port stops the edge with a clear error."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import pytest

from edge_server import EDGE_HOST, free_port, running_edge


def web_url(banner: str) -> str:
    m = re.search(r"portal:\s+(http://\S+)/", banner)
    assert m, banner
    return m.group(1)


def test_serve_runs_the_web_server(tmp_path: Path) -> None:
    with running_edge(tmp_path) as edge:
        base = web_url(edge.banner)
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
            assert json.loads(r.read()) == {"status": "ok"}
            assert r.headers.get("Server") is None  # no product banner for scanners
        with urllib.request.urlopen(f"{base}/api/v1/openapi.json", timeout=5) as r:
            doc = json.loads(r.read())
        assert doc["info"]["title"] == "spitguard"


def test_taken_web_port_stops_the_edge_with_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    blocker = socket.socket()
    blocker.bind((EDGE_HOST, port))
    blocker.listen()
    try:
        with (
            pytest.raises(RuntimeError, match=f"cannot listen for HTTP on {EDGE_HOST}:{port}"),
            running_edge(tmp_path, extra=f"[web]\nport = {port}\n"),
        ):
            pass
    finally:
        blocker.close()
