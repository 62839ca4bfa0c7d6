"""`spitguard device …`, run as the real console script against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from spitguard.config import load_settings
from spitguard.store import Store, generate_password, open_store

SPITGUARD = Path(sys.executable).with_name("spitguard")
MAC = "0004f2abcdef"


class Spitguard:
    """Runs the console script with one TOML file and no SPITGUARD_* variables."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "var"
        self.config = tmp_path / "spitguard.toml"
        self.write_config()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPITGUARD_")}

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(f'data_dir = "{self.data_dir}"\n{extra}')

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SPITGUARD), *args, "--config", str(self.config)],
            input="",
            capture_output=True,
            text=True,
            cwd=self.tmp_path,
            env=self.env,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def error(self, *args: str) -> list[str]:
        """Exit 2, only `error:` lines on stderr, no traceback; returns those lines."""
        result = self.run(*args)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines and all(line.startswith("error: ") for line in lines), result.stderr
        return lines

    def with_store(self, body: Callable[[Store], Awaitable[None]]) -> None:
        """Work the CLI does not cover (or a phone would do), in-process on the same store."""

        async def run() -> None:
            store = await open_store(load_settings(self.config))
            try:
                await body(store)
            finally:
                await store.close()

        asyncio.run(run())

    def record_fetch(self, **fetch: Any) -> None:
        """What the boot server does on a phone's request."""

        async def record(store: Store) -> None:
            await store.fetches.record(**fetch)

        self.with_store(record)


@pytest.fixture
def sg(tmp_path: Path) -> Spitguard:
    """Tenants acme (lines 1001-1005) and globex (line 2001); seeded in-process because
    every console-script run costs about a second and the tenant/line CLI has its tests."""
    sg = Spitguard(tmp_path)

    async def seed(store: Store) -> None:
        await store.tenants.add("acme", ["acme.test"])
        await store.tenants.add("globex", ["globex.test"])
        for user in ("1001", "1002", "1003", "1004", "1005"):
            await store.lines.add(f"{user}@acme.test", tenant="acme", password=generate_password())
        await store.lines.add("2001@globex.test", tenant="globex", password=generate_password())

    sg.with_store(seed)
    return sg


def add_front_desk(sg: Spitguard) -> None:
    out = sg.ok(
        "device", "add", "00:04:F2:AB:CD:EF", "--tenant", "acme", "--model", "VVX_400",
        "--label", "Front desk", "--line", "1=1001@acme.test", "--line", "2 = 1002@acme.test",
    )  # fmt: skip
    assert out.strip() == (
        'added device 0004f2abcdef (polycom) to tenant "acme": '
        "1=sip:1001@acme.test, 2=sip:1002@acme.test"
    )


def test_add_list_show_and_secrets(sg: Spitguard) -> None:
    add_front_desk(sg)
    table = sg.ok("device", "list").splitlines()
    assert table[0].split() == [
        "MAC", "TENANT", "MODEL", "LABEL", "LINES", "CONFIG", "DESIRED", "FETCHED", "LAST", "FETCH"
    ]  # fmt: skip
    assert table[1].startswith(MAC) and "Front desk" in table[1] and "never" in table[1]
    assert "1=1001@acme.test, 2=1002@acme.test" in table[1]

    [listed] = sg.json("device", "list", "--tenant", "acme")
    assert listed["mac"] == MAC and listed["lines"] == [
        {"key": 1, "aor": "sip:1001@acme.test"},
        {"key": 2, "aor": "sip:1002@acme.test"},
    ]
    assert listed["config"] == "never" and len(listed["desired_version"]) == 64
    assert sg.json("device", "list", "--tenant", "globex") == []

    shown = sg.json("device", "show", "00-04-f2-ab-cd-ef")
    assert "admin_password" not in shown and "provisioning_password" not in shown
    secret = sg.json("device", "show", MAC, "--secrets")
    admin, prov = secret["admin_password"], secret["provisioning_password"]
    assert len(admin) >= 16 and len(prov) >= 16 and admin != prov
    text_with = sg.ok("device", "show", MAC, "--secrets")
    assert f"Admin password         {admin}" in text_with
    assert f"Provisioning password  {prov}" in text_with

    # Nowhere else: not in listings, not in show without --secrets, not in the database.
    for out in (
        sg.ok("device", "list"),
        sg.ok("device", "list", "--json"),
        sg.ok("device", "show", MAC),
        sg.ok("device", "show", MAC, "--json"),
    ):
        assert admin not in out and prov not in out
    with sqlite3.connect(sg.data_dir / "spitguard.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert admin not in dump and prov not in dump


def test_add_errors_exit_2_with_one_line(sg: Spitguard) -> None:
    add_front_desk(sg)
    base = ["device", "add", "0004f2000001", "--tenant", "acme"]
    cases = [
        ([*base, "--line", "1=1003@acme.test", "--tenant", "nobody"], 'tenant "nobody" does not'),
        ([*base, "--line", "1001@acme.test"], "invalid --line '1001@acme.test': write KEY=AOR"),
        ([*base, "--line", "1=9999@acme.test"], "sip:9999@acme.test"),
        ([*base, "--line", "1=2001@globex.test"], 'belongs to tenant "globex", not to "acme"'),
        ([*base, "--line", "1=1003@acme.test", "--vendor", "acme-phone"], "unknown vendor"),
        (
            ["device", "add", "0004f2abcd", "--tenant", "acme", "--line", "1=1003@acme.test"],
            "not a MAC address",
        ),
        (
            ["device", "add", MAC, "--tenant", "acme", "--line", "1=1003@acme.test"],
            'device "0004f2abcdef" already exists',
        ),
        (["device", "show", "0004f2999999"], 'device "0004f2999999" does not exist'),
        (["device", "remove", "0004f2999999"], 'device "0004f2999999" does not exist'),
        (["device", "profile", "set", "--tenant", "acme"], "nothing to change"),
        (["device", "profile", "show", "--tenant", "nobody"], 'tenant "nobody" does not exist'),
        (["device", "list", "--tenant", "nobody"], 'tenant "nobody" does not exist'),
    ]
    for argv, message in cases:
        [line] = sg.error(*argv)
        assert message in line, (argv, line)
    assert [d["mac"] for d in sg.json("device", "list")] == [MAC]
    assert sg.ok("device", "remove", MAC).strip() == f"removed device {MAC}"
    assert sg.json("device", "list") == []


BAD_CSV = """\
mac,model,label,line1,line2
0004f2000001,VVX_400,Desk 1,1003@acme.test,
zz:zz:zz,VVX_400,Desk 2,1004@acme.test,

0004f2000003,,,9999@acme.test,
0004f2000004,,,2001@globex.test,
00:04:F2:00:00:01,,"Desk, again",1005@acme.test,
"""

GOOD_CSV = """\
\ufeffMAC,Model,Label,Line1,Line2
0004f2000001,VVX_400,Desk 1,1003@acme.test,
0004f2000002,VVX_300,"Desk, 2",1004@acme.test,1005@acme.test
0004f2000003,,,,1001@acme.test
"""


def test_import_reports_each_bad_row_and_imports_nothing(sg: Spitguard) -> None:
    csv_file = sg.tmp_path / "devices.csv"
    csv_file.write_text(BAD_CSV, encoding="utf-8")
    errors = sg.error("device", "import", str(csv_file), "--tenant", "acme")
    assert errors[:-1] == [
        f"error: {csv_file}, line 3: not a MAC address: 'zz:zz:zz'; give 12 hex digits, "
        "e.g. 0004f2abcdef or 00:04:F2:AB:CD:EF",
        f'error: {csv_file}, line 5: line "sip:9999@acme.test" does not exist',
        f'error: {csv_file}, line 6: line "sip:2001@globex.test" belongs to tenant "globex", '
        'not to "acme"',
        f'error: {csv_file}, line 7: MAC "0004f2000001" is given twice (first on line 2)',
    ]
    assert errors[-1] == "error: 4 of 5 rows are bad; nothing was imported"
    assert sg.json("device", "list") == []

    # A row with more cells than the header is bad too, and reported with the others.
    csv_file.write_text(BAD_CSV + "0004f2000009,,,1005@acme.test,,surplus\n")
    errors = sg.error("device", "import", str(csv_file), "--tenant", "acme")
    assert errors[-2] == f"error: {csv_file}, line 8: 6 cells, but the header has 5"
    assert errors[-1] == "error: 5 of 6 rows are bad; nothing was imported"
    assert sg.json("device", "list") == []


def test_import_file_level_errors(sg: Spitguard) -> None:
    csv_file = sg.tmp_path / "devices.csv"
    cases = [
        ("mac,vendor,line1\n0004f2000001,polycom,1001@acme.test\n", "unknown column 'vendor'"),
        ("mac,model\n0004f2000001,VVX\n", "needs a mac column and at least a line1"),
        ("mac,line1\n", "holds no devices"),
        ("", "holds no devices"),
    ]
    for content, message in cases:
        csv_file.write_text(content)
        [line] = sg.error("device", "import", str(csv_file), "--tenant", "acme")
        assert message in line, (content, line)
    csv_file.write_bytes(b"mac,line1\n0004f2000001,\xff\n")
    assert "is not UTF-8" in sg.error("device", "import", str(csv_file), "--tenant", "acme")[0]
    missing = sg.tmp_path / "missing.csv"
    assert "cannot read" in sg.error("device", "import", str(missing), "--tenant", "acme")[0]
    csv_file.write_text(GOOD_CSV)
    [line] = sg.error("device", "import", str(csv_file), "--tenant", "nobody")
    assert 'tenant "nobody" does not exist' in line


def test_import_good_file_imports_all(sg: Spitguard) -> None:
    csv_file = sg.tmp_path / "devices.csv"
    csv_file.write_text(GOOD_CSV, encoding="utf-8")
    out = sg.ok("device", "import", str(csv_file), "--tenant", "acme")
    assert out.strip() == 'imported 3 devices into tenant "acme"'
    devices = sg.json("device", "list")
    assert [(d["mac"], d["model"], d["label"]) for d in devices] == [
        ("0004f2000001", "VVX_400", "Desk 1"),
        ("0004f2000002", "VVX_300", "Desk, 2"),
        ("0004f2000003", None, None),
    ]
    assert [[line["key"] for line in d["lines"]] for d in devices] == [[1], [1, 2], [2]]
    # The same file again: every row names an existing device now.
    errors = sg.error("device", "import", str(csv_file), "--tenant", "acme")
    assert errors[-1] == "error: 3 of 3 rows are bad; nothing was imported"


def test_profile_show_and_set(sg: Spitguard) -> None:
    shown = sg.json("device", "profile", "show", "--tenant", "acme")
    assert shown == {
        "tenant": "acme",
        "web_ui": False,
        "invite_validation": "source",
        "checksync_validation": "digest",
        "polling": None,
        "resync_reboots": None,
        "updated_at": None,
    }
    out = sg.ok(
        "device", "profile", "set", "--tenant", "acme", "--web-ui", "on",
        "--invite-validation", "both", "--resync-reboots", "off",
    )  # fmt: skip
    assert "Web UI                 on" in out
    shown = sg.json("device", "profile", "show", "--tenant", "acme")
    assert (shown["web_ui"], shown["invite_validation"], shown["resync_reboots"]) == (
        True,
        "both",
        False,
    )
    assert shown["checksync_validation"] == "digest" and shown["updated_at"] is not None
    assert sg.json("device", "profile", "show", "--tenant", "globex")["web_ui"] is False
    result = sg.run("device", "profile", "set", "--tenant", "acme", "--web-ui", "maybe")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_desired_version_and_compliance(sg: Spitguard) -> None:
    add_front_desk(sg)

    def device() -> dict[str, Any]:
        [found] = sg.json("device", "list")
        assert isinstance(found, dict)
        return found

    first = device()
    assert (first["config"], first["last_fetched_version"]) == ("never", None)
    assert first["config_file"] == f"spitguard-{MAC}.cfg"

    # The phone fetches exactly what it should run: compliant.
    sg.record_fetch(
        mac=MAC,
        path=f"/provision/{first['config_file']}",
        status=200,
        source="127.0.1.10",
        version=first["desired_version"],
        user_agent="FileTransport PolycomVVX-VVX_400-UA/4.1.4.7430 Type/Application",
    )
    fetched = device()
    assert fetched["config"] == "compliant"
    assert fetched["last_fetched_version"] == first["desired_version"]
    assert "compliant" in sg.ok("device", "list")
    shown = sg.ok("device", "show", MAC)
    assert "Config           compliant" in shown
    assert "FileTransport PolycomVVX-VVX_400-UA/4.1.4.7430" in shown

    # Web UI on for the tenant: a new desired version, the phone is stale until it fetches.
    sg.ok("device", "profile", "set", "--tenant", "acme", "--web-ui", "on")
    web_ui = device()
    assert web_ui["desired_version"] != first["desired_version"]
    assert web_ui["config"] == "stale"

    # A new advertised host changes what phones must trust: another version.
    sg.write_config('[sip]\nadvertised_host = "edge.acme.test"\n')
    moved = device()
    assert moved["desired_version"] not in (first["desired_version"], web_ui["desired_version"])
    assert moved["config"] == "stale"
    sg.write_config()
    assert device()["desired_version"] == web_ui["desired_version"]

    # A line without credentials any more (its tenant's line is gone): invalid, not a crash.
    with sqlite3.connect(sg.data_dir / "spitguard.db") as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("DELETE FROM lines WHERE aor IN ('sip:1001@acme.test', 'sip:1002@acme.test')")
    broken = device()
    assert broken["config"] == "invalid" and "at least one line" in broken["config_problem"]
    assert "invalid" in sg.ok("device", "list")
