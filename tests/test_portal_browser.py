"""The portal in a real browser (Debian's Chromium, headless, driven by Playwright):
log in, see the exposed phone flagged, open a blocked request's SIP trace, allow the
phones' web UI (the phone's configuration goes stale), press re-sync: the reference phone,
booted from the running server's boot server, gets the NOTIFY, fetches the new version,
and the portal shows it running its current configuration.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from edge_client import wait_for
from edge_server import DOMAIN
from peers import phone_ip
from spitguard.phone import ReferencePhone
from web_fixtures import (
    ACME_MAC,
    PASSWORDS,
    SCANNER_IP,
    PortalEdge,
    cli_ok,
    portal_edge,
    send_scanner_packet,
)

T = TypeVar("T")
POLYCOM_UA = "FileTransport PolycomVVX-VVX_450-UA/6.4.3.5018 Type/Application"

CHROMIUM = "/usr/bin/chromium"
# As the machine notes require: no sandbox as root, and no background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: run `make deps` (Debian package chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class PhoneThread:
    """The reference phone on an event loop of its own: Playwright's sync API owns this one."""

    def __init__(self, pe: PortalEdge) -> None:
        secrets = json.loads(cli_ok(pe.edge, "device", "show", ACME_MAC, "--secrets", "--json"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> ReferencePhone:
            return ReferencePhone(
                ACME_MAC,
                ip=phone_ip(20),
                provisioning_url=f"{pe.base}/provision",
                prov_user=ACME_MAC,
                prov_password=secrets["provisioning_password"],
                user_agent=POLYCOM_UA,
            )

        self.phone = self.run(make())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.run(self.phone.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def compliance(pe: PortalEdge) -> str:
    with pe.client(token_of="op") as op:
        return str(op.get(f"/api/v1/devices/{ACME_MAC}").json()["compliance"])


@pytest.fixture
def pe(tmp_path: Path) -> Iterator[PortalEdge]:
    with portal_edge(tmp_path) as pe:
        yield pe


@pytest.fixture
def booted(pe: PortalEdge) -> Iterator[PhoneThread]:
    """alice's phone (the acme device) boots from /provision/ and registers."""
    phone = PhoneThread(pe)
    try:
        phone.run(phone.phone.boot())
        phone.run(phone.phone.wait_registered(timeout=10))
        assert phone.phone.fetches[-1].ok
        send_scanner_packet(pe.edge)
        with pe.client(token_of="op") as op:
            wait_for(lambda: op.get("/api/v1/registrations").json()["total"] == 1)
            wait_for(
                lambda: op.get("/api/v1/events", params={"source": SCANNER_IP}).json()["items"]
            )
        wait_for(lambda: compliance(pe) == "compliant")
        yield phone
    finally:
        phone.close()


def log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/")
    page.fill("input[name=username]", "op")
    page.fill("input[name=password]", PASSWORDS["op"])
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Dashboard")


def test_operator_logs_in_sees_the_exposed_phone_opens_a_trace_and_presses_resync(
    pe: PortalEdge, booted: PhoneThread, browser: Browser
) -> None:
    phone = booted.phone
    page = browser.new_page()
    log_in(page, pe.base)
    expect(page.locator("#registered")).to_have_text("1")
    expect(page.locator("#exposed")).to_have_text("1")
    expect(page.locator("#top-sources")).to_contain_text(SCANNER_IP)

    # Registrations: alice registered from a public address without NAT: flagged.
    page.click("text=Registrations")
    row = page.locator(f'tr[data-aor="sip:alice@{DOMAIN}"]')
    expect(row.locator(".flag")).to_have_text("exposed")
    expect(row).to_contain_text("directly reachable from the Internet")
    row.locator("text=show details").click()
    expect(page.locator("#verdict")).to_contain_text("scanners can reach it")

    # Blocked traffic: the scanner's request with its SIP trace.
    page.click("text=Blocked traffic")
    event = page.locator(f'tr[data-source="{SCANNER_IP}"]').first
    event.locator("text=SIP trace").click()
    expect(page.locator("#trace")).to_contain_text("OPTIONS sip:")

    # Devices: the phone runs what the boot server serves it now.
    page.click("text=Devices")
    device = page.locator(f'tr[data-mac="{ACME_MAC}"]')
    expect(device).to_contain_text("runs its current configuration")

    # Allow acme's phones their web UI: the file the phone should run changes, so the
    # phone's configuration is stale until it fetches again. htmx posts with the CSRF token.
    page.goto(f"{pe.base}/devices?tenant=acme")
    page.locator("#web-ui button", has_text="Allow it").click()
    expect(page.locator("#web-ui-result")).to_contain_text("phone web UI allowed for acme")
    page.reload()
    expect(device).to_contain_text("runs an old configuration")
    hardened = f"spitguard-{ACME_MAC}.cfg"  # the file carrying the hardening
    boot_version = phone.fetches[-1].versions[hardened]

    # Re-sync: the phone gets check-sync, answers, and fetches the new version at once.
    device.locator("button", has_text="Re-sync").click()
    expect(page.locator(f"#resync-{ACME_MAC}")).to_contain_text("Re-sync of 1 device: 1 accepted")
    booted.run(phone.wait_for(lambda: len(phone.fetches) >= 2, 10, "the re-fetch"))
    refetch = phone.fetches[-1]
    assert refetch.ok and refetch.reason == "check-sync"
    assert phone.web_ui_enabled
    new_version = refetch.versions[hardened]
    assert new_version != boot_version

    # The fetch log has the new version, and the portal shows the device compliant.
    def logged() -> bool:
        with pe.client(token_of="op") as op:
            rows = op.get("/api/v1/fetches", params={"mac": ACME_MAC}).json()["items"]
        return any(r["version"] == new_version and r["path"] == hardened for r in rows)

    wait_for(logged)
    page.reload()
    expect(device).to_contain_text("runs its current configuration")
    page.click("text=Dashboard")
    expect(page.locator("#non-compliant")).to_have_text("1")  # beta's device never fetched


def test_a_wrong_password_shows_the_login_form_again(pe: PortalEdge, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(f"{pe.base}/devices")
    page.fill("input[name=username]", "op")
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    expect(page.locator("[role=alert]")).to_have_text("Wrong user name or password.")
