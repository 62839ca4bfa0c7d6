"""Access control of the API and the portal against the running edge: 401 without
credentials, tenants isolated (a foreign id answers exactly like a missing one), operators
only for guard data, CSRF on every state change with a session, and what operators see."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_client import wait_for
from edge_server import DOMAIN, USERS
from web_fixtures import (
    ACME_MAC,
    BETA_MAC,
    OTHER_DOMAIN,
    OTHER_PASSWORD,
    OTHER_USER,
    PASSWORDS,
    SCANNER_IP,
    PortalEdge,
    cli_ok,
    login,
    portal_edge,
    register,
    send_scanner_packet,
    session_csrf,
)

MISSING_MAC = "0004f2ffffff"
MISSING_ID = 987654321
PORTAL_PAGES = [
    "/",
    "/registrations",
    "/registrations/1",
    "/devices",
    "/events",
    "/events/1",
    "/bans",
    "/audits",
    "/audits/1",
]
PORTAL_POSTS = [
    "/devices/resync",
    "/bans/unban",
    "/tenants/acme/web-ui",
    "/audits/start",
    "/logout",
]


@pytest.fixture(scope="module")
def pe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortalEdge]:
    tmp: Path = tmp_path_factory.mktemp("portal")
    with portal_edge(tmp) as pe:
        phones: list[socket.socket] = [
            # Public source, no sign of NAT: the phone a scanner could hit directly.
            register(pe.edge, "127.0.1.10", "alice", USERS["alice"], DOMAIN),
            register(
                pe.edge,
                "127.0.1.11",
                OTHER_USER,
                OTHER_PASSWORD,
                OTHER_DOMAIN,
                contact_host="192.168.1.20",
            ),
        ]
        send_scanner_packet(pe.edge)
        with pe.client(token_of="op") as op:
            wait_for(lambda: op.get("/api/v1/registrations").json()["total"] == 2)
            wait_for(
                lambda: op.get("/api/v1/events", params={"source": SCANNER_IP}).json()["items"]
            )
        yield pe
        for sock in phones:
            sock.close()


def finished_audit(client: httpx.Client, run_id: int) -> dict[str, Any]:
    """Poll the run until it is no longer running (the probes' own timeouts bound it)."""
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(client.get(f"/api/v1/audits/{run_id}").json())
        return found["state"] != "running"

    wait_for(done, timeout=60)
    return found


@pytest.fixture(scope="module")
def beta_audit(pe: PortalEdge) -> dict[str, Any]:
    """A finished audit of tenant beta's registered phones, started by an operator."""
    with pe.client(token_of="op") as op:
        started = op.post("/api/v1/audits", json={"tenant": "beta", "invite": False})
        assert started.status_code == 202, started.text
        return finished_audit(op, started.json()["id"])


def registration_ids(pe: PortalEdge) -> dict[str, int]:
    with pe.client(token_of="op") as op:
        return {r["aor"]: r["id"] for r in op.get("/api/v1/registrations").json()["items"]}


def api_routes(pe: PortalEdge) -> list[tuple[str, str]]:
    with pe.client() as anon:
        spec = anon.get("/api/v1/openapi.json").json()
    return [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]


def fill(path: str) -> str:
    return (
        path.replace("{name}", "acme")
        .replace("{mac}", ACME_MAC)
        .replace("{registration_id}", "1")
        .replace("{event_id}", "1")
        .replace("{audit_id}", "1")
        .replace("{source}", "127.0.66.1")
    )


# --- unauthenticated --------------------------------------------------------------------


def test_every_api_endpoint_and_portal_page_answers_401_without_credentials(
    pe: PortalEdge,
) -> None:
    routes = api_routes(pe)
    assert len(routes) >= 15, routes
    with pe.client() as anon:
        for method, path in routes:
            r = anon.request(method, fill(path), json={})
            assert r.status_code == 401, (method, path, r.text)
            assert "not logged in" in r.json()["error"]
        bad = anon.get("/api/v1/tenants", headers={"Authorization": "Bearer sgt_wrong"})
        assert bad.status_code == 401
        for path in PORTAL_PAGES:
            r = anon.get(path)
            assert r.status_code == 401, path
            assert 'action="/login"' in r.text  # the login form, not data
        for path in PORTAL_POSTS:
            assert anon.post(path, data={"mac": ACME_MAC}).status_code == 401, path


# --- tenants see nothing of each other ------------------------------------------------------


def same_404(client: httpx.Client, method: str, foreign: str, missing: str, **kw: Any) -> None:
    a = client.request(method, foreign, **kw)
    b = client.request(method, missing, **kw)
    assert a.status_code == b.status_code == 404, (foreign, a.text, b.text)
    assert a.text == b.text, (a.text, b.text)


def test_tenant_admin_gets_nothing_of_another_tenant_through_the_api(
    pe: PortalEdge, beta_audit: dict[str, Any]
) -> None:
    beta_reg = registration_ids(pe)[f"sip:{OTHER_USER}@{OTHER_DOMAIN}"]
    covered: set[tuple[str, str]] = set()

    def hit(method: str, path: str) -> str:
        covered.add((method, path))
        return path

    with pe.client(token_of="acme-admin") as a:
        get = "GET"
        tenants = a.get(hit(get, "/api/v1/tenants")).json()
        assert [t["name"] for t in tenants["items"]] == ["acme"], tenants
        same_404(a, get, "/api/v1/tenants/beta", "/api/v1/tenants/nope")
        hit(get, "/api/v1/tenants/{name}")
        lines = a.get(hit(get, "/api/v1/lines"), params={"limit": 500}).json()
        assert lines["items"] and all(x["tenant"] == "acme" for x in lines["items"])
        same_404(a, get, "/api/v1/lines?tenant=beta", "/api/v1/lines?tenant=nope")
        devices = a.get(hit(get, "/api/v1/devices")).json()
        assert [d["mac"] for d in devices["items"]] == [ACME_MAC]
        same_404(a, get, "/api/v1/devices?tenant=beta", "/api/v1/devices?tenant=nope")
        same_404(a, get, f"/api/v1/devices/{BETA_MAC}", f"/api/v1/devices/{MISSING_MAC}")
        hit(get, "/api/v1/devices/{mac}")
        assert a.get(hit(get, "/api/v1/compliance")).json() == {
            "compliant": 0,
            "stale": 0,
            "never": 1,
            "invalid": 0,
        }
        regs = a.get(hit(get, "/api/v1/registrations")).json()
        assert [r["aor"] for r in regs["items"]] == [f"sip:alice@{DOMAIN}"]
        same_404(a, get, "/api/v1/registrations?tenant=beta", "/api/v1/registrations?tenant=nope")
        same_404(a, get, f"/api/v1/registrations/{beta_reg}", f"/api/v1/registrations/{MISSING_ID}")
        hit(get, "/api/v1/registrations/{registration_id}")
        assert a.get(hit(get, "/api/v1/fetches")).status_code == 200
        same_404(a, get, "/api/v1/fetches?tenant=beta", "/api/v1/fetches?tenant=nope")
        me = a.get(hit(get, "/api/v1/me")).json()
        assert me == {"username": "acme-admin", "role": "tenant_admin", "tenant": "acme"}
        # Actions on another tenant's things: the same 404 as for things that do not exist.
        post = "POST"
        same_404(
            a,
            post,
            hit(post, "/api/v1/actions/resync"),
            "/api/v1/actions/resync",
            json={"macs": [BETA_MAC]},
        )
        assert a.post("/api/v1/actions/resync", json={"macs": [MISSING_MAC]}).status_code == 404
        same_404(
            a, post, "/api/v1/actions/resync", "/api/v1/actions/resync", json={"tenant": "beta"}
        )
        same_404(
            a,
            post,
            "/api/v1/tenants/beta/web-ui",
            "/api/v1/tenants/nope/web-ui",
            json={"allowed": True},
        )
        hit(post, "/api/v1/tenants/{name}/web-ui")
        # Audits: another tenant's run answers like a missing one; its phones are not probed.
        same_404(a, get, f"/api/v1/audits/{beta_audit['id']}", f"/api/v1/audits/{MISSING_ID}")
        hit(get, "/api/v1/audits/{audit_id}")
        assert beta_audit["id"] not in [
            r["id"] for r in a.get(hit(get, "/api/v1/audits")).json()["items"]
        ]
        hit(post, "/api/v1/audits")
        foreign = a.post("/api/v1/audits", json={"tenant": "beta"})
        missing = a.post("/api/v1/audits", json={"tenant": "nope"})
        assert foreign.status_code == missing.status_code == 404, foreign.text
        assert foreign.text == missing.text
        own = a.post("/api/v1/audits", json={"invite": False})
        assert own.status_code == 202, own.text
        assert own.json()["tenant"] == "acme" and own.json()["state"] == "running"
        mine = finished_audit(a, own.json()["id"])
        assert mine["state"] == "done", mine
        assert [r["aor"] for r in mine["results"]] == [f"sip:alice@{DOMAIN}"]
        assert [r["id"] for r in a.get("/api/v1/audits").json()["items"]] == [own.json()["id"]]
        # Blocked traffic and bans belong to no tenant: operators only.
        for method, path in [
            (get, "/api/v1/events"),
            (get, "/api/v1/events/aggregates"),
            (get, "/api/v1/events/{event_id}"),
            (get, "/api/v1/events/{event_id}/trace"),
            (get, "/api/v1/bans"),
            (post, "/api/v1/bans"),
            ("DELETE", "/api/v1/bans/{source}"),
            (post, "/api/v1/actions/unban"),
        ]:
            hit(method, path)
            r = a.request(method, fill(path), json={"source": "127.0.66.1"})
            assert r.status_code == 403, (path, r.text)
        hit(post, "/api/v1/logout")
    # Every API operation was checked here (logout has nothing of anyone's to show).
    assert set(api_routes(pe)) <= covered, set(api_routes(pe)) - covered


def test_tenant_admin_gets_nothing_of_another_tenant_in_the_portal(
    pe: PortalEdge, beta_audit: dict[str, Any]
) -> None:
    beta_reg = registration_ids(pe)[f"sip:{OTHER_USER}@{OTHER_DOMAIN}"]
    with pe.client() as a:
        assert login(a, "acme-admin", PASSWORDS["acme-admin"]).status_code == 303
        csrf = session_csrf(a)
        assert OTHER_DOMAIN not in a.get("/").text
        regs = a.get("/registrations").text
        assert f"alice@{DOMAIN}" in regs and OTHER_DOMAIN not in regs
        devices = a.get("/devices").text
        assert ACME_MAC in devices and BETA_MAC not in devices
        same_404(a, "GET", f"/registrations/{beta_reg}", f"/registrations/{MISSING_ID}")
        same_404(a, "GET", "/registrations?tenant=beta", "/registrations?tenant=nope")
        same_404(a, "GET", "/devices?tenant=beta", "/devices?tenant=nope")
        headers = {"X-CSRF-Token": csrf}
        same_404(
            a,
            "POST",
            "/devices/resync",
            "/devices/resync",
            data={"mac": BETA_MAC},
            headers=headers,
        )
        assert (
            a.post("/devices/resync", data={"mac": MISSING_MAC}, headers=headers).status_code == 404
        )
        same_404(
            a,
            "POST",
            "/tenants/beta/web-ui",
            "/tenants/nope/web-ui",
            data={"allowed": "true"},
            headers=headers,
        )
        assert "forbidden" in a.get("/devices").text  # acme's own switch is shown
        allowed = a.post("/tenants/acme/web-ui", data={"allowed": "true"}, headers=headers)
        assert allowed.status_code == 200 and "allowed for acme" in allowed.text
        a.post("/tenants/acme/web-ui", data={"allowed": "false"}, headers=headers)
        for path in ("/events", "/events/1", "/bans"):
            assert a.get(path).status_code == 403, path
        same_404(a, "GET", f"/audits/{beta_audit['id']}", f"/audits/{MISSING_ID}")
        assert f'data-run="{beta_audit["id"]}"' not in a.get("/audits").text
        foreign = a.post("/audits/start", data={"tenant": "beta"}, headers=headers)
        missing = a.post("/audits/start", data={"tenant": "nope"}, headers=headers)
        assert foreign.status_code == missing.status_code == 404, foreign.text
        assert foreign.text == missing.text
        assert (
            a.post("/bans/unban", data={"source": "127.0.66.1"}, headers=headers).status_code == 403
        )


# --- CSRF ---------------------------------------------------------------------------------


def test_state_changing_requests_with_a_session_need_the_csrf_token(pe: PortalEdge) -> None:
    with pe.client(token_of="op") as op:
        assert op.post("/api/v1/bans", json={"source": "127.0.66.200"}).status_code == 201
    with pe.client() as s:
        assert login(s, "op", PASSWORDS["op"]).status_code == 303
        csrf = session_csrf(s)
        changes = [
            (m, fill(p).replace("127.0.66.1", "127.0.66.200"))
            for m, p in api_routes(pe)
            if m != "GET"
        ]
        assert len(changes) >= 6, changes
        bodies = {"source": "127.0.66.200", "macs": [ACME_MAC], "allowed": True}
        for method, path in changes:
            for token in (None, "0" * 64):
                headers = {} if token is None else {"X-CSRF-Token": token}
                r = s.request(method, path, json=bodies, headers=headers)
                assert r.status_code == 403, (method, path, r.text)
                assert "CSRF" in r.json()["error"]
        for path in PORTAL_POSTS:
            r = s.post(path, data={"source": "127.0.66.200", "mac": ACME_MAC, "allowed": "true"})
            assert r.status_code == 403, path
        # Nothing changed: the ban is there, the session still works, web UI still off.
        assert "127.0.66.200" in s.get("/bans").text
        assert "<strong>forbidden</strong>" in s.get("/devices?tenant=acme").text
        # With the token the same requests go through.
        ok = s.delete("/api/v1/bans/127.0.66.200", headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 204, ok.text
        # Login itself is CSRF-protected too (double-submit token).
    with pe.client() as fresh:
        r = fresh.post("/login", data={"username": "op", "password": PASSWORDS["op"]})
        assert r.status_code == 403


# --- what operators see ---------------------------------------------------------------------


def test_operator_sees_registrations_with_nat_verdicts_and_no_secrets(pe: PortalEdge) -> None:
    with pe.client(token_of="op") as op:
        regs = {r["aor"]: r for r in op.get("/api/v1/registrations").json()["items"]}
        alice = regs[f"sip:alice@{DOMAIN}"]
        bert = regs[f"sip:{OTHER_USER}@{OTHER_DOMAIN}"]
        assert alice["verdict"] == "directly reachable from the Internet" and alice["exposed"]
        assert bert["verdict"] == "behind NAT" and not bert["exposed"]
        assert "Contact address is private" in bert["explanation"]
        exposed = op.get("/api/v1/registrations", params={"exposed": "true"}).json()
        assert [r["aor"] for r in exposed["items"]] == [f"sip:alice@{DOMAIN}"]
        lines = op.get("/api/v1/lines", params={"limit": 500}).text
        assert "alice@" in lines
        for secret in (*USERS.values(), OTHER_PASSWORD, *PASSWORDS.values()):
            assert secret not in lines
        page = op.get("/api/v1/lines", params={"limit": 1, "offset": 1}).json()
        assert page["total"] == 4 and len(page["items"]) == 1
        bad = op.get("/api/v1/lines", params={"limit": 0})
        assert bad.status_code == 422 and "limit" in bad.json()["error"]


def test_operator_sees_blocked_traffic_with_its_trace_and_manages_bans(pe: PortalEdge) -> None:
    with pe.client(token_of="op") as op:
        events = op.get("/api/v1/events", params={"source": SCANNER_IP}).json()["items"]
        event = events[0]
        assert event["has_trace"]
        trace = op.get(f"/api/v1/events/{event['id']}/trace").json()["trace"]
        assert trace.startswith("OPTIONS ")
        by_reason = op.get("/api/v1/events", params={"reason": event["reason"]}).json()
        assert event["id"] in [e["id"] for e in by_reason["items"]]
        aggregates = op.get("/api/v1/events/aggregates").json()
        assert SCANNER_IP in [s["key"] for s in aggregates["by_source"]]
        assert event["reason"] in [s["key"] for s in aggregates["by_reason"]]
        assert sum(h["requests"] for h in aggregates["by_hour"]) >= 1
        assert op.get(f"/api/v1/events/{MISSING_ID}").status_code == 404
        # Bans: add, list, remove (the edge picks them up through the bans revision).
        r = op.post("/api/v1/bans", json={"source": "127.0.66.99", "duration": 600})
        assert r.status_code == 201 and r.json()["manual"]
        assert "127.0.66.99" in [b["source"] for b in op.get("/api/v1/bans").json()["items"]]
        bad = op.post("/api/v1/bans", json={"source": "not-an-ip"})
        assert bad.status_code == 422 and "invalid IP address" in bad.json()["error"]
        assert op.post("/api/v1/actions/unban", json={"source": "127.0.66.99"}).status_code == 204
        assert op.delete("/api/v1/bans/127.0.66.99").status_code == 404
        # The tenant's web UI switch.
        on = op.post("/api/v1/tenants/beta/web-ui", json={"allowed": True}).json()
        assert on == {"tenant": "beta", "web_ui": True}
        off = op.post("/api/v1/tenants/beta/web-ui", json={"allowed": False}).json()
        assert off == {"tenant": "beta", "web_ui": False}


def test_resync_answers_each_devices_outcome_within_the_callers_tenant(pe: PortalEdge) -> None:
    spare = "0004f2000a02"  # acme's, with bob's line: bob never registers
    cli_ok(pe.edge, "device", "add", spare, "--tenant", "acme", "--line", f"1=bob@{DOMAIN}")
    try:
        with pe.client(token_of="acme-admin") as a:
            r = a.post("/api/v1/actions/resync", json={"macs": [spare]})
            assert r.status_code == 200, r.text
            assert r.json() == {
                "devices": [spare],
                "outcomes": {spare: "not-registered"},
                "summary": "1 not-registered",
            }
            flash = a.post("/devices/resync", data={"mac": spare})
            assert "Re-sync of 1 device: 1 not registered." in flash.text
            # Another tenant's device is not found, even next to one's own.
            same_404(
                a,
                "POST",
                "/api/v1/actions/resync",
                "/api/v1/actions/resync",
                json={"macs": [spare, BETA_MAC]},
            )
            same_404(
                a,
                "POST",
                "/api/v1/actions/resync",
                "/api/v1/actions/resync",
                json={"stale": True, "tenant": "beta"},
            )
            # Every stale device of the caller's tenant, and of no other: alice's phone is
            # registered but does not answer, so the answer comes after the wait, capped.
            start = time.monotonic()
            stale = a.post("/api/v1/actions/resync", json={"stale": True})
            assert time.monotonic() - start < 15
            assert stale.json()["outcomes"] == {ACME_MAC: "timeout", spare: "not-registered"}
            assert stale.json()["summary"] == "1 timeout, 1 not-registered"
        with pe.client(token_of="op") as op:
            assert op.post("/api/v1/actions/resync", json={}).status_code == 422
            devices = op.get("/api/v1/devices", params={"compliant": "false"}).json()
            assert {d["mac"] for d in devices["items"]} == {ACME_MAC, BETA_MAC, spare}
            assert {d["compliance"] for d in devices["items"]} == {"never"}
    finally:
        cli_ok(pe.edge, "device", "remove", spare)


# --- audits of the registered phones ----------------------------------------------------------


def row_of(html: str, marker: str) -> str:
    """The table row holding `marker` (a data- attribute)."""
    start = html.index(marker)
    return html[html.rindex("<tr", 0, start) : html.index("</tr>", start)]


def test_audits_run_one_at_a_time_and_show_next_to_registrations_and_devices(
    pe: PortalEdge, beta_audit: dict[str, Any]
) -> None:
    alice, bert = f"sip:alice@{DOMAIN}", f"sip:{OTHER_USER}@{OTHER_DOMAIN}"
    (result,) = beta_audit["results"]
    assert (result["aor"], result["device"], result["host"]) == (bert, BETA_MAC, "127.0.1.11")
    # The test phones never answer: silent, no web UI, no configuration.
    assert result["verdict"] == "silent" and not result["exposed"], result
    assert not result["web_ui"] and not result["config"] and result["at"] > 0
    assert beta_audit["state"] == "done" and beta_audit["finished_at"] is not None
    assert beta_audit["tenant"] == "beta" and beta_audit["invite"] is False
    with pe.client(token_of="op") as op:
        assert op.post("/api/v1/audits", json={"invite": "maybe"}).status_code == 422
        first = op.post("/api/v1/audits", json={"invite": False})
        assert first.status_code == 202, first.text
        busy = op.post("/api/v1/audits", json={})
        assert busy.status_code == 409 and "already running" in busy.json()["error"], busy.text
        run = finished_audit(op, first.json()["id"])
        assert run["state"] == "done" and run["tenant"] is None and run["targets"] == 2, run
        assert {r["aor"] for r in run["results"]} == {alice, bert}
        assert {r["verdict"] for r in run["results"]} == {"silent"}
        runs = op.get("/api/v1/audits").json()["items"]
        assert runs[0]["id"] == run["id"] and beta_audit["id"] in [r["id"] for r in runs]
    with pe.client() as s:
        assert login(s, "op", PASSWORDS["op"]).status_code == 303
        csrf = session_csrf(s)
        regs = s.get("/registrations").text
        for aor in (alice, bert):
            assert 'data-audit="silent"' in row_of(regs, f'data-aor="{aor}"'), aor
        devices = s.get("/devices").text
        for mac in (ACME_MAC, BETA_MAC):
            assert 'data-audit="silent"' in row_of(devices, f'data-mac="{mac}"'), mac
        detail = s.get(f"/registrations/{registration_ids(pe)[bert]}").text
        assert 'data-audit="silent"' in detail
        assert f'data-run="{run["id"]}"' in s.get("/audits").text
        page = s.get(f"/audits/{run['id']}").text
        assert f'data-aor="{alice}"' in page and 'data-verdict="silent"' in page
        # The portal's button: CSRF-protected like every other action.
        started = s.post("/audits/start", data={"invite": "false"}, headers={"X-CSRF-Token": csrf})
        assert started.status_code == 200 and "started" in started.text, started.text
        with pe.client(token_of="op") as op:
            latest = op.get("/api/v1/audits").json()["items"][0]
            assert finished_audit(op, latest["id"])["state"] == "done"
