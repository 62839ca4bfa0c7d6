"""Login rate limiting: wrong passwords are slowed, then refused, per account and source;
the right password still works from another address. Plus sessions and the admin CLI."""

from __future__ import annotations

from pathlib import Path

from edge_server import free_port
from spitguard.web.login_limiter import LoginLimiter
from web_fixtures import PASSWORDS, login, portal_edge


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_passwords_are_slowed_then_refused_per_account_and_source() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(clock, free=3, max_failures=6, lockout=900)
    for _ in range(3):
        assert limiter.retry_after("op", "192.0.2.1") is None
        limiter.failed("op", "192.0.2.1")
    # Slowed: the next try must wait, and the wait doubles with every failure.
    assert limiter.retry_after("op", "192.0.2.1") == 2.0
    clock.now += 2
    assert limiter.retry_after("op", "192.0.2.1") is None
    limiter.failed("op", "192.0.2.1")
    assert limiter.retry_after("op", "192.0.2.1") == 4.0
    clock.now += 4
    limiter.failed("op", "192.0.2.1")
    assert limiter.retry_after("op", "192.0.2.1") == 8.0
    assert not limiter.locked("op", "192.0.2.1")
    clock.now += 8
    limiter.failed("op", "192.0.2.1")  # the 6th: refused outright for the lockout
    assert limiter.locked("op", "192.0.2.1")
    assert limiter.retry_after("op", "192.0.2.1") == 900.0
    # Not the account as a whole: the same user from elsewhere, and others, go ahead.
    assert limiter.retry_after("op", "192.0.2.2") is None
    assert limiter.retry_after("other", "192.0.2.1") is None
    clock.now += 900
    assert limiter.retry_after("op", "192.0.2.1") is None
    assert not limiter.locked("op", "192.0.2.1")


def test_a_success_forgets_earlier_failures() -> None:
    limiter = LoginLimiter(FakeClock(), free=2, max_failures=4, lockout=60)
    limiter.failed("op", "192.0.2.1")
    limiter.succeeded("op", "192.0.2.1")
    limiter.failed("op", "192.0.2.1")
    assert limiter.retry_after("op", "192.0.2.1") is None


def test_portal_login_is_refused_after_wrong_passwords_but_works_from_another_address(
    tmp_path: Path,
) -> None:
    extra = f"[web]\nport = {free_port()}\nlogin_free_failures = 2\nlogin_max_failures = 3\n"
    with portal_edge(tmp_path, extra=extra) as pe:
        with pe.client(local_ip="127.0.0.1") as attacker:
            for _ in range(2):
                r = login(attacker, "op", "wrong-password-1")
                assert r.status_code == 401 and "Wrong user name or password" in r.text
            # An unknown user gets the very same answer (nobody learns who exists).
            unknown = login(attacker, "nobody", "wrong-password-1")
            assert unknown.status_code == 401 and "Wrong user name or password" in unknown.text
            slowed = login(attacker, "op", PASSWORDS["op"])
            assert slowed.status_code == 429 and "slowed" in slowed.text
            assert int(slowed.headers["Retry-After"]) >= 1
            assert "spitguard_session" not in attacker.cookies
        with pe.client(local_ip="127.0.0.5") as user:
            ok = login(user, "op", PASSWORDS["op"])
            assert ok.status_code == 303, ok.text
            cookie = ok.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert "secure" not in cookie  # plain HTTP on loopback; Secure over HTTPS
            assert user.get("/api/v1/me").json()["username"] == "op"
            # Logging out ends the session on the server, not just in the browser.
            token = user.cookies["spitguard_session"]
            csrf = user.get("/").text.split('X-CSRF-Token": "')[1].split('"')[0]
            assert user.post("/logout", headers={"X-CSRF-Token": csrf}).status_code == 303
        with pe.client() as replay:
            replay.cookies.set("spitguard_session", token)
            assert replay.get("/api/v1/me").status_code == 401


def test_admin_cli_passwd_ends_sessions_and_tokens_can_be_revoked(tmp_path: Path) -> None:
    with portal_edge(tmp_path) as pe:
        with pe.client() as s:
            assert login(s, "acme-admin", PASSWORDS["acme-admin"]).status_code == 303
            r = pe.edge.cli(
                "admin", "passwd", "acme-admin", "--password-stdin", input="a-new-password-99\n"
            )
            assert r.returncode == 0, r.stderr
            assert s.get("/api/v1/me").status_code == 401
            assert login(s, "acme-admin", "a-new-password-99").status_code == 303
        short = pe.edge.cli("admin", "add", "x", "--password-stdin", input="short\n")
        assert short.returncode == 2 and "12-256 characters" in short.stderr
        dup = pe.edge.cli("admin", "add", "op", "--password-stdin", input="long-enough-pass\n")
        assert dup.returncode == 2 and "already exists" in dup.stderr
        foreign = pe.edge.cli(
            "admin",
            "add",
            "y",
            "--role",
            "tenant_admin",
            "--tenant",
            "nope",
            "--password-stdin",
            input="long-enough-pass\n",
        )
        assert foreign.returncode == 2 and 'tenant "nope" does not exist' in foreign.stderr
        listed = pe.edge.cli("admin", "list", "--json")
        assert '"acme-admin"' in listed.stdout and "hash" not in listed.stdout
        with pe.client(token_of="beta-admin") as t:
            assert t.get("/api/v1/me").status_code == 200
            r = pe.edge.cli("admin", "token", "revoke", "beta-admin", "--name", "t")
            assert r.returncode == 0, r.stderr
            assert t.get("/api/v1/me").status_code == 401
