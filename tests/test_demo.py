"""`spitguard serve --demo` (what `make run` starts) shows the whole system working: demo
phones boot from the boot server and register (one not behind NAT, flagged), the trunk's
calls are answered, and the scanner simulation's blocked traffic shows up as events and
bans. Checked through the JSON API with a token, as a script would."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_server import EdgeServer, running_edge
from spitguard.demo_world import DEMO_PHONES

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[EdgeServer]:
    with running_edge(tmp_path, users={}, serve_args=["--demo"]) as edge:
        yield edge


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_the_demo_shows_phones_calls_and_blocked_scanners(demo: EdgeServer) -> None:
    banner = demo.banner
    base = re.search(r"portal:\s+(http://\S+?)/?\n", banner)
    login = re.search(r"portal login: (\S+) / (\S+)", banner)
    assert base and login, banner
    token = demo.cli("admin", "token", "create", login.group(1), "--name", "test")
    assert token.returncode == 0, token.stderr
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}

    with httpx.Client(base_url=base.group(1) + "/api/v1", headers=headers, timeout=10) as api:

        def registrations() -> dict[str, dict[str, Any]]:
            items = api.get("/registrations", params={"limit": 100}).json()["items"]
            return {r["aor"].split("@")[0].removeprefix("sip:"): r for r in items}

        regs = wait_until(
            lambda: (r := registrations()) and len(r) >= len(DEMO_PHONES) and r,
            60,
            "the demo phones to register",
        )
        by_user = {p.user: p for p in DEMO_PHONES}
        for user, phone in by_user.items():
            assert regs[user]["exposed"] is (phone.lan is None), regs[user]
        assert regs["1002"]["verdict"] == "directly reachable from the Internet"
        assert regs["1001"]["verdict"] == "behind NAT"

        fetches = api.get("/fetches", params={"limit": 200}).json()["items"]
        fetched = {f["mac"] for f in fetches if f["status"] == 200}
        assert {p.mac for p in DEMO_PHONES} <= fetched

        def blocked() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = api.get("/events", params={"limit": 100}).json()["items"]
            return [e for e in items if e["source"].startswith("127.0.66.")]

        events = wait_until(blocked, 30, "blocked scanner traffic in the events")
        assert any(e["reason"] == "scanner" for e in events), events

    wait_until(
        lambda: "demo trunk call to 1001: answered" in demo.stderr_path.read_text(errors="replace"),
        60,
        "an answered trunk call",
    )
