"""The boot server under /provision/ of the running `spitguard serve`, with real clients.

Phones (the reference phone, or httpx with RFC 7616 digest) fetch from 127.0.1.x;
scanners from 127.0.66.x (the client socket is bound to that address). Every wait is a
deadline on a condition, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_server import DOMAIN, USERS, EdgeServer, running_edge
from peers import phone_ip, scanner_ip
from spitguard.phone import ReferencePhone

MAC = "0004f2a1b2c3"
OTHER_MAC = "0004f2a1b2c4"
POLYCOM_UA = "FileTransport PolycomVVX-VVX_450-UA/6.4.3.5018 Type/Application"
WRONG_MODEL_UA = "FileTransport PolycomVVX-VVX_410-UA/5.9.5.0614 Type/Application"


def web_base(edge: EdgeServer) -> str:
    line = next(ln for ln in edge.banner.splitlines() if "portal:" in ln)
    return line.split("portal:", 1)[1].strip().rstrip("/")


def cli_json(edge: EdgeServer, *args: str) -> Any:
    r = edge.cli(*args, "--json")
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def add_device(edge: EdgeServer, mac: str, user: str, model: str = "VVX_450") -> str:
    """Add a device; its provisioning password."""
    r = edge.cli(
        "device", "add", mac, "--tenant", "acme", "--line", f"1={user}@{DOMAIN}", "--model", model
    )
    assert r.returncode == 0, r.stderr
    return str(cli_json(edge, "device", "show", mac, "--secrets")["provisioning_password"])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeServer]:
    extra = "[provision]\nsweep_unknown_macs = 5\nauth_failures = 4\n"
    with running_edge(tmp_path, extra=extra) as server:
        try:
            yield server
        finally:
            print(f"--- edge log:\n{server.log()}")


def client(source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(transport=transport, timeout=5.0, headers={"User-Agent": POLYCOM_UA})


def test_the_phones_file_goes_only_to_the_device_itself(edge: EdgeServer) -> None:
    password = add_device(edge, MAC, "alice")
    other_password = add_device(edge, OTHER_MAC, "bob")
    base = web_base(edge) + "/provision"
    secret_file = f"{base}/spitguard-{MAC}.cfg"
    with client(phone_ip(60)) as http:
        # The master files: no secret, the same for a known MAC and an unknown one.
        known = http.get(f"{base}/{MAC}.cfg")
        unknown = http.get(f"{base}/0004f2ffff01.cfg")
        assert known.status_code == unknown.status_code == 200
        assert known.content.replace(MAC.encode(), b"X") == unknown.content.replace(
            b"0004f2ffff01", b"X"
        )
        assert http.get(f"{base}/000000000000.cfg").status_code == 200
        # Firmware and licences: a clean 404.
        assert http.get(f"{base}/3111-46135-002.sip.ld").status_code == 404
        assert http.get(f"{base}/{MAC}-license.cfg").status_code == 404

        attempts = {
            "none": http.get(secret_file),
            "wrong password": http.get(secret_file, auth=httpx.DigestAuth(MAC, "guess-1234")),
            "another device": http.get(
                secret_file, auth=httpx.DigestAuth(OTHER_MAC, other_password)
            ),
        }
        for what, response in attempts.items():
            assert response.status_code == 401, what
            assert USERS["alice"].encode() not in response.content, what
        guessed = http.get(
            f"{base}/spitguard-0004f2ffff02.cfg", auth=httpx.DigestAuth("0004f2ffff02", "x")
        )
        # Unknown MAC and wrong password look the same: the same challenge shape.
        assert guessed.status_code == 401
        shape = [
            sorted(p.split("=")[0].strip() for p in h.split(",") if "=" in p)
            for h in guessed.headers.get_list("www-authenticate")
        ]
        assert shape == [
            sorted(p.split("=")[0].strip() for p in h.split(",") if "=" in p)
            for h in attempts["wrong password"].headers.get_list("www-authenticate")
        ]

        ok = http.get(secret_file, auth=httpx.DigestAuth(MAC, password))
        assert ok.status_code == 200
        assert f'reg.1.auth.password="{USERS["alice"]}"'.encode() in ok.content
        assert 'voIpProt.SIP.requestValidation.1.method="source"' in ok.text

    # Every request is in the fetch log, the served one with its version.
    def fetched() -> Any:
        shown = cli_json(edge, "device", "show", MAC)
        return shown if shown["config"] == "compliant" else None

    shown = wait_until(fetched, 10, "the fetch log")
    statuses = [f["status"] for f in shown["recent_fetches"]]
    assert 200 in statuses and 401 in statuses
    assert shown["last_fetched_version"] == shown["desired_version"]
    assert {f["model"] for f in shown["recent_fetches"]} == {"VVX_450"}


def test_a_mac_sweep_from_one_source_is_banned(edge: EdgeServer) -> None:
    password = add_device(edge, MAC, "alice")
    base = web_base(edge) + "/provision"
    scanner = scanner_ip(31)
    with client(scanner) as http:
        statuses = [
            http.get(f"{base}/spitguard-0004f2ee00{n:02x}.cfg").status_code for n in range(8)
        ]
        assert statuses[0] == 401
        # Banned: even the right credentials for a real device get nothing now.
        after = http.get(f"{base}/spitguard-{MAC}.cfg", auth=httpx.DigestAuth(MAC, password))
        assert after.status_code == 404 and b"reg.1" not in after.content
        assert http.get(f"{base}/000000000000.cfg").status_code == 404
    assert 404 in statuses

    def banned() -> Any:
        bans = cli_json(edge, "bans", "list")
        return [b for b in bans if b["source"] == scanner]

    (ban,) = wait_until(banned, 10, "the ban in the store")
    assert ban["reason"] == "provision:mac_sweep"
    # A phone from another address is not affected.
    with client(phone_ip(61)) as http:
        ok = http.get(f"{base}/spitguard-{MAC}.cfg", auth=httpx.DigestAuth(MAC, password))
        assert ok.status_code == 200


def test_password_guessing_is_banned(edge: EdgeServer) -> None:
    add_device(edge, MAC, "alice")
    base = web_base(edge) + "/provision"
    with client(scanner_ip(32)) as http:
        statuses = [
            http.get(
                f"{base}/spitguard-{MAC}.cfg", auth=httpx.DigestAuth(MAC, f"guess-{n}")
            ).status_code
            for n in range(6)
        ]
    assert statuses[:3] == [401, 401, 401] and statuses[-1] == 404


def test_uploads_are_kept_and_a_weakening_override_is_flagged(edge: EdgeServer) -> None:
    password = add_device(edge, MAC, "alice")
    base = web_base(edge) + "/provision"
    auth = httpx.DigestAuth(MAC, password)
    weakening = b'<PHONE_CONFIG><x httpd.enabled="1" httpd.cfg.enabled="1"/></PHONE_CONFIG>'
    with client(phone_ip(62)) as http:
        assert http.put(f"{base}/{MAC}-phone.cfg", content=weakening).status_code == 401
        assert http.put(f"{base}/{MAC}-phone.cfg", content=weakening, auth=auth).status_code == 204
        assert http.put(f"{base}/{MAC}-app.log", content=b"boot ok\n", auth=auth).status_code == 204
        big = b"x" * (256 * 1024 + 1)
        assert http.put(f"{base}/{MAC}-app.log", content=big, auth=auth).status_code == 413
        # Another phone's upload name with this phone's credentials: refused.
        other = http.put(f"{base}/{OTHER_MAC}-phone.cfg", content=weakening, auth=auth)
        assert other.status_code == 401
    shown = cli_json(edge, "device", "show", MAC)
    kinds = [u["kind"] for u in shown["recent_uploads"]]
    assert sorted(kinds) == ["app-log", "phone-overrides"]
    (override,) = [u for u in shown["recent_uploads"] if u["kind"] == "phone-overrides"]
    assert {w["parameter"] for w in override["weakening"]} == {
        "httpd.enabled",
        "httpd.cfg.enabled",
    }


def test_a_user_agent_that_contradicts_the_inventory_is_flagged(edge: EdgeServer) -> None:
    password = add_device(edge, MAC, "alice")
    base = web_base(edge) + "/provision"
    with client(phone_ip(63)) as http:
        http.headers["User-Agent"] = WRONG_MODEL_UA
        ok = http.get(f"{base}/spitguard-{MAC}.cfg", auth=httpx.DigestAuth(MAC, password))
        assert ok.status_code == 200

    def flagged() -> Any:
        return cli_json(edge, "device", "show", MAC)["last_note"]

    note = wait_until(flagged, 10, "the flagged fetch")
    assert "VVX_410" in note["note"] and "VVX_450" in note["note"]
    text = edge.cli("device", "show", MAC).stdout
    assert "Flagged" in text and "VVX_410" in text


def test_resync_of_a_registered_phone_makes_it_compliant(edge: EdgeServer) -> None:
    password = add_device(edge, MAC, "alice")
    base = web_base(edge) + "/provision"

    async def scenario() -> None:
        phone = ReferencePhone(
            MAC,
            ip=phone_ip(64),
            provisioning_url=base,
            prov_user=MAC,
            prov_password=password,
            user_agent=POLYCOM_UA,
        )
        async with phone:
            await phone.boot()
            await phone.wait_registered(timeout=10)
            assert phone.fetches[-1].ok
            assert not phone.web_ui_enabled
            await asyncio.to_thread(
                wait_until,
                lambda: cli_json(edge, "device", "show", MAC)["config"] == "compliant",
                10,
                "compliance after boot",
            )
            r = await asyncio.to_thread(
                edge.cli, "device", "profile", "set", "--tenant", "acme", "--web-ui", "on"
            )
            assert r.returncode == 0, r.stderr
            assert cli_json(edge, "device", "show", MAC)["config"] == "stale"
            compliance = await asyncio.to_thread(edge.cli, "device", "compliance")
            assert compliance.returncode == 1
            assert "acme: 1 of 1 phone still runs an old configuration" in compliance.stdout

            r = await asyncio.to_thread(edge.cli, "device", "resync", "--stale", "--json")
            assert r.returncode == 0, r.stderr + r.stdout
            # check-sync is digest-validated by default: the edge answered the challenge.
            assert json.loads(r.stdout) == [{"mac": MAC, "outcome": "ok-challenged"}]
            await phone.wait_for(lambda: len(phone.fetches) >= 2, 10, "the re-fetch")
            assert phone.fetches[-1].ok and phone.fetches[-1].reason == "check-sync"
            assert phone.web_ui_enabled

            await asyncio.to_thread(
                wait_until,
                lambda: cli_json(edge, "device", "show", MAC)["config"] == "compliant",
                10,
                "compliance after the re-sync",
            )
            done = await asyncio.to_thread(edge.cli, "device", "compliance")
            assert done.returncode == 0
            assert "acme: 0 of 1 phones still run an old configuration" in done.stdout

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_resync_reports_a_phone_that_is_not_registered(edge: EdgeServer) -> None:
    add_device(edge, MAC, "alice")
    r = edge.cli("device", "resync", MAC, "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout) == [{"mac": MAC, "outcome": "not-registered"}]
    bad = edge.cli("device", "resync")
    assert bad.returncode == 2 and "MAC" in bad.stderr
