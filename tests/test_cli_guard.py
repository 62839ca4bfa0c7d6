"""`spitguard bans …` and `spitguard events …`, run as the real console script on SQLite."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TypeVar

import pytest

from spitguard.config import Settings
from spitguard.guard.bans import Ban
from spitguard.guard.events import EventRecord
from spitguard.store import Store, open_store
from spitguard.store.repos import BANS_REVISION_KEY

T = TypeVar("T")
SPITGUARD = Path(sys.executable).with_name("spitguard")
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
TZ = "XST-9"  # a POSIX TZ string (no tz database needed): local time is UTC+9
TRACE = (
    b"INVITE sip:100@127.0.1.10 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.66.1:5070;branch=z9hG4bK-1\r\n"
    b"User-Agent: friendly-scanner\x1b[2J\r\n"
    b"Subject: caf\xc3\xa9 \xff\r\n"
    b"\r\n"
)
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+09:00")


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "var"
        self.config = tmp_path / "spitguard.toml"
        self.config.write_text(f'data_dir = "{self.data_dir}"\n')
        self.cwd = tmp_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPITGUARD_")}
        self.env = {**env, "TZ": TZ, "PYTHONUNBUFFERED": "1"}

    def argv(self, *args: str) -> list[str]:
        return [str(SPITGUARD), *args, "--config", str(self.config)]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            input="",
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=self.env,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout

    def fails(self, *args: str) -> str:
        """Exit 2 with one `error:` line on stderr and no traceback; returns that line."""
        result = self(*args)
        assert result.returncode == 2, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]

    def store(self, body: Callable[[Store], Awaitable[T]]) -> T:
        """Run `body` on the same database, in this process (as the edge would write)."""

        async def run() -> T:
            store = await open_store(Settings(data_dir=self.data_dir))
            try:
                return await body(store)
            finally:
                await store.close()

        return asyncio.run(run())


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def event(
    source: str = "127.0.66.1",
    reason: str = "scanner",
    at: float = NOW + 10,
    count: int = 1,
    **more: str | None,
) -> EventRecord:
    return EventRecord(source, reason, int(at // 60), count, at, at, "drop", "udp", TRACE, **more)


# --- bans ---------------------------------------------------------------------------------


def test_bans_add_list_remove(cli: Cli) -> None:
    out = cli.ok("bans", "add", "127.0.66.5", "--duration", "30m", "--reason", "svwar scan")
    assert re.fullmatch(
        rf"banned 127\.0\.66\.5 for 30m \(until {LOCAL_TIME.pattern}, reason: svwar scan\)\n", out
    )
    assert cli.ok("bans", "add", "::0001").startswith("banned ::1 for 1d ")  # default 24h
    cli.ok("bans", "add", "127.0.66.6", "--duration", "90")

    lines = cli.ok("bans", "list").splitlines()
    assert lines[0].split() == ["SOURCE", "REASON", "LEVEL", "REMAINING", "MANUAL"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"127.0.66.5", "127.0.66.6", "::1"}
    assert re.search(r"svwar scan\s+1\s+(30m|29m\d+s)\s+yes$", rows["127.0.66.5"])
    assert re.search(r"\s(1m30s|1m[12]\ds)\s", rows["127.0.66.6"])
    assert re.search(r"\s(1d|23h59m)\s", rows["::1"])

    data = json.loads(cli.ok("bans", "list", "--json"))
    first = data[0]
    assert first["source"] == "127.0.66.5" and first["reason"] == "svwar scan"
    assert first["manual"] is True and first["active"] is True and first["level"] == 1
    assert 1700 <= first["remaining_seconds"] <= 1800
    assert first["until"].endswith("+00:00")
    # A running edge notices: every manual change bumped the "bans" revision.
    assert cli.store(lambda s: s.get_revision(BANS_REVISION_KEY)) == 3

    assert cli.ok("bans", "remove", "127.0.66.5") == "lifted the ban on 127.0.66.5\n"
    assert cli.ok("bans", "remove", "0:0::1") == "lifted the ban on ::1\n"
    assert [b["source"] for b in json.loads(cli.ok("bans", "list", "--json"))] == ["127.0.66.6"]
    assert cli.store(lambda s: s.get_revision(BANS_REVISION_KEY)) == 5


def test_bans_list_all_shows_expired_and_automatic_bans(cli: Cli) -> None:
    now = time.time()

    async def edge_bans(store: Store) -> None:
        await store.bans.upsert(Ban("127.0.66.7", now - 60, 2, "flood", now - 400))
        await store.bans.upsert(Ban("127.0.66.8", now + 300, 1, "scanner", now))

    cli.store(edge_bans)
    lines = cli.ok("bans", "list").splitlines()
    assert len(lines) == 2 and re.search(r"^127\.0\.66\.8\s+scanner\s+1\s+\S+\s+no$", lines[1])
    lines = cli.ok("bans", "list", "--all").splitlines()
    assert re.search(r"^127\.0\.66\.7\s+flood\s+2\s+expired\s+no$", lines[1])
    data = json.loads(cli.ok("bans", "list", "--all", "--json"))
    assert [(b["source"], b["active"]) for b in data] == [
        ("127.0.66.7", False),
        ("127.0.66.8", True),
    ]
    assert data[0]["remaining_seconds"] == 0


def test_empty_ban_list(cli: Cli) -> None:
    result = cli("bans", "list")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "no bans in force\n")
    assert cli.ok("bans", "list", "--json").strip() == "[]"


def test_bans_errors_exit_2_with_a_clear_message(cli: Cli) -> None:
    line = cli.fails("bans", "add", "127.0.66.300")
    assert line == (
        "error: invalid IP address '127.0.66.300': give one IPv4 or IPv6 address, "
        "e.g. 192.0.2.10 (no port, no prefix length)"
    )
    assert "invalid IP address '127.0.66.1:5060'" in cli.fails("bans", "add", "127.0.66.1:5060")
    assert not cli.data_dir.exists()  # refused before the store was touched
    line = cli.fails("bans", "add", "127.0.66.1", "--duration", "soon")
    assert "invalid duration 'soon'" in line and "30m" in line
    assert "invalid duration '0'" in cli.fails("bans", "add", "127.0.66.1", "--duration", "0")
    assert "reason" in cli.fails("bans", "add", "127.0.66.1", "--reason", "x" * 65)
    line = cli.fails("bans", "remove", "127.0.66.9")
    assert line == "error: 127.0.66.9 is not banned; see the bans with: spitguard bans list"
    assert "invalid IP address" in cli.fails("bans", "remove", "nope")


# --- events -------------------------------------------------------------------------------


@pytest.fixture
def populated(cli: Cli) -> Cli:
    async def body(store: Store) -> None:
        await store.events.add_batch([event(count=5, method="INVITE", target="100")])
        await store.events.add_batch(
            [
                event(
                    "127.0.66.2",
                    "sanity",
                    at=NOW + 70,
                    method="OPTIONS",
                    user_agent="evil\x1b[2J\x07",
                )
            ]
        )
        await store.events.add_batch([event("127.0.66.1", "flood", at=NOW + 130, count=40)])

    cli.store(body)
    return cli


def test_events_tail_table_and_filters(populated: Cli) -> None:
    lines = populated.ok("events", "tail").splitlines()
    assert lines[0].split() == [
        "ID", "TIME", "SOURCE", "REASON", "COUNT", "ACTION", "METHOD", "TARGET", "USER", "AGENT",
    ]  # fmt: skip
    assert [line.split()[:5] for line in lines[1:]] == [
        ["1", "2023-11-15T07:13:30+09:00", "127.0.66.1", "scanner", "5"],
        ["2", "2023-11-15T07:14:30+09:00", "127.0.66.2", "sanity", "1"],
        ["3", "2023-11-15T07:15:30+09:00", "127.0.66.1", "flood", "40"],
    ]
    assert lines[1].split()[5:] == ["drop", "INVITE", "100", "-"]
    # The scanner's User-Agent cannot reach the terminal raw.
    assert lines[2].endswith("evil\\x1b[2J\\x07") and "\x1b" not in "".join(lines)

    assert [r.split()[0] for r in populated.ok("events", "tail", "--limit", "2").splitlines()] == [
        "ID",
        "2",
        "3",
    ]
    out = populated.ok("events", "tail", "--reason", "scanner")
    assert [r.split()[0] for r in out.splitlines()[1:]] == ["1"]
    out = populated.ok("events", "tail", "--source", "127.0.66.1")
    assert [r.split()[0] for r in out.splitlines()[1:]] == ["1", "3"]


def test_events_tail_json(populated: Cli) -> None:
    data = json.loads(populated.ok("events", "tail", "--json"))
    assert [d["id"] for d in data] == [1, 2, 3]
    assert data[1] == {
        "id": 2,
        "source": "127.0.66.2",
        "reason": "sanity",
        "minute": int((NOW + 70) // 60),
        "count": 1,
        "first_seen": "2023-11-14T22:14:30+00:00",
        "last_seen": "2023-11-14T22:14:30+00:00",
        "action": "drop",
        "transport": "udp",
        "method": "OPTIONS",
        "user_agent": "evil\x1b[2J\x07",
        "target": None,
    }
    assert "sample" not in data[0]


def test_events_tail_empty_and_errors(cli: Cli) -> None:
    result = cli("events", "tail")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "no events\n")
    assert cli.ok("events", "tail", "--json").strip() == "[]"
    assert "invalid --limit 0" in cli.fails("events", "tail", "--limit", "0")
    assert "invalid IP address" in cli.fails("events", "tail", "--source", "scanner")


def test_events_show_prints_the_escaped_trace(populated: Cli) -> None:
    out = populated.ok("events", "show", "1")
    head, trace = out.split("\n\n", 1)
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in head.splitlines())
    assert fields["Event"] == "1" and fields["Source"] == "127.0.66.1"
    assert fields["Reason"] == "scanner" and fields["Count"] == "5"
    assert fields["Method"] == "INVITE" and fields["Target"] == "100"
    assert fields["User agent"] == "-"
    assert fields["Last seen"] == "2023-11-15T07:13:30+09:00"
    assert trace.splitlines() == [
        f"Sampled trace ({len(TRACE)} bytes, the first request of that minute; "
        "credentials redacted):",
        "  INVITE sip:100@127.0.1.10 SIP/2.0",
        "  Via: SIP/2.0/UDP 127.0.66.1:5070;branch=z9hG4bK-1",
        "  User-Agent: friendly-scanner\\x1b[2J",
        "  Subject: café \\xff",
        "  ",
    ]
    assert "\x1b" not in out


def test_events_show_errors(populated: Cli) -> None:
    line = populated.fails("events", "show", "42")
    assert line.startswith("error: event 42 does not exist")
    assert "spitguard events tail" in line
    assert "invalid event id 'x'" in populated.fails("events", "show", "x")


# --- events tail --follow -----------------------------------------------------------------


class Lines:
    """The lines a process prints, read on a thread so the test can wait with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if re.search(pattern, line):
                return line
            seen.append(line)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got {seen}")


def test_events_tail_follow_prints_new_and_grown_rows_until_sigint(cli: Cli) -> None:
    start = time.time()
    cli.store(lambda s: s.events.add_batch([event(at=start, count=2)]))
    proc = subprocess.Popen(
        cli.argv("events", "tail", "--follow"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=cli.cwd,
        env=cli.env,
    )
    try:
        assert proc.stdout is not None
        out = Lines(proc.stdout)
        out.wait_for(r"^ID\s+TIME\s+SOURCE")
        out.wait_for(r"^1\s.*127\.0\.66\.1\s+scanner\s+2\s")
        # The edge flushes a new key, then more of the first one's minute.
        cli.store(lambda s: s.events.add_batch([event("127.0.66.9", "flood", at=time.time())]))
        out.wait_for(r"^2\s+\S+\s+127\.0\.66\.9\s+flood\s+1\s")
        cli.store(lambda s: s.events.add_batch([event(at=start + 0.5, count=5)]))
        out.wait_for(r"^1\s.*127\.0\.66\.1\s+scanner\s+7\s")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_events_tail_follow_json_lines(cli: Cli) -> None:
    proc = subprocess.Popen(
        cli.argv("events", "tail", "--follow", "--json", "--reason", "flood"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=cli.cwd,
        env=cli.env,
    )
    try:
        assert proc.stdout is not None
        out = Lines(proc.stdout)
        time.sleep(2)  # let it start and poll an empty store at least once
        now = time.time()
        cli.store(
            lambda s: s.events.add_batch([event(at=now), event("127.0.66.4", "flood", at=now)])
        )
        row = json.loads(out.wait_for(r"^\{"))
        assert (row["source"], row["reason"], row["count"]) == ("127.0.66.4", "flood", 1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
