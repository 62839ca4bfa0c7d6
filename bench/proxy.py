"""Calls per second through the edge, spitguard and Kamailio side by side in one run.

RFC 7501/7502 style: a SIPp UAC on the trunk address (127.0.2.1, trusted by both edges,
so no credentials) places calls INVITE -> 200 -> ACK -> (hold) -> BYE -> 200 through the
edge (127.0.0.1) to a SIPp UAS registered (digest) as a local user from 127.0.1.2, at a
fixed rate for a fixed number of calls per step, at rising rates. A step passes when
under 0.1% of its calls fail (a call that does not complete is a failed call) and SIPp
reached the offered rate. A system's ramp stops at the first step that does not pass,
then the gap between the last pass and that step is bisected; rounds alternate between
the systems. The highest rate that passed in every round is then held for 40 s (a soak)
on a fresh edge, long enough for transaction state kept 32 s (64*T1) to reach its steady
level; on a fail, 75% of it, and so on. The figure is the highest rate that passed the
soak (with --quick, no soak: the ramp's figure).

One core: the system under test (spitguard's process, every Kamailio process) is pinned
to one CPU; both SIPp processes (and this script) to another, so the load generator
does not take the system's core. They still share the machine (memory, caches, the
loopback network stack).

Usage: bench/proxy.py [--quick] [--rates 50,100,...] [--step-seconds S] [--rounds N]
                      [--bisect N] [--soak-seconds S] [--soak-tries N] [--hold-ms MS]
                      [--only spitguard|kamailio] [--edge-log-level LEVEL]
                      [--kamailio-shm-mb MB] [--budget-minutes M] [--keep]
       bench/proxy.py --profile RATE [--py-spy PATH]   (spitguard only, py-spy record)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from _common import (
    cpu_count,
    pin_tasks,
    process_cpu_seconds,
    result_line,
    session_pids,
)

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from edge_server import DOMAIN, USERS, EdgeServer, spitguard_cmd, write_config  # noqa: E402
from peers import (  # noqa: E402
    SIP_DOMAIN,
    UPSTREAM_IP,
    BoundedProcess,
    free_port,
    phone_ip,
    require_tool,
    wait_until,
)
from peers.kamailio import Kamailio  # noqa: E402
from peers.sipp import Sipp, SippResult  # noqa: E402

CALLEE = "bob"
PASSWORD = USERS[CALLEE]  # plain enough for Kamailio's db_text users table too
CALLEE_IP = phone_ip(2)
TRUNK_NUMBER = "+15550001111"
MAX_FAILED = 0.001  # a step passes with fewer than 0.1% failed calls
MIN_OFFERED = 0.95  # ... and when SIPp offered at least 95% of the rate asked
RECV_TIMEOUT_MS = 5000  # a call waiting longer than this for a message has failed
RATES = (50, 100, 200, 300, 400, 600, 800, 1000, 1300, 1600, 2000, 2500, 3000, 4000)
QUICK_RATES = (50, 100, 200)
SOCKET_BUFFER = 4 * 1024 * 1024  # SIPp's UDP buffers (capped by net.core.[rw]mem_max)


# --- processes ---------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM/SIGHUP: unwind through every `finally`, which stops what we started."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


class QuietSipp(Sipp):
    """A SIPp run without `-trace_msg`: logging every message would cost the load
    generator more CPU than the calls. Counters (-trace_stat, every second with -fd 1),
    errors and the final screen are still written."""

    def __init__(self, scenario: str, **kwargs: Any) -> None:
        super().__init__(scenario, **kwargs)
        argv = list(self.argv)
        i = argv.index("-trace_msg")
        del argv[i : i + 3]  # -trace_msg -message_file PATH
        self.argv = tuple(argv)

    @property
    def stat_file(self) -> Path:
        return self.workdir / f"{self.name}.stat.csv"


def udp_bound(ip: str, port: int) -> bool:
    """Whether some process has bound udp ip:port (we cannot bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return True
    return False


def tool_version(argv: Sequence[str], pattern: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, out.stdout + out.stderr)
    return match[0].strip() if match else "unknown"


# --- the systems under test ------------------------------------------------------------


class System:
    """One edge on 127.0.0.1: started, pinned, measured, stopped. Subclasses start it."""

    name = ""
    domain = ""

    def __init__(self, workdir: Path, lifetime: float) -> None:
        self.workdir = workdir
        self.lifetime = lifetime
        self.address = ""
        self.exit_note = ""

    def leader(self) -> int:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Every process of the system (its session)."""
        return session_pids(self.leader())

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pids())

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class Spitguard(System):
    """`spitguard serve` (the venv's entry point) with the TOML of tests/edge_server.py:
    udp/tcp/tls on 127.0.0.1, the trunk 127.0.2.1 trusted, one tenant, one line (bob).
    Run under timeout(1), in its own session, like the Kamailio of tests/peers."""

    name = "spitguard"
    domain = DOMAIN

    def __init__(self, workdir: Path, lifetime: float, log_level: str, extra: str = "") -> None:
        super().__init__(workdir, lifetime)
        self.log_level = log_level
        self.extra = extra  # more TOML for the edge's config (tables not written above)
        self.process: BoundedProcess | None = None
        self.edge: EdgeServer | None = None

    def leader(self) -> int:
        assert self.process is not None
        return self.process.pid

    def main_pid(self) -> int:
        """The Python process itself (the session leader is timeout(1))."""
        for pid in self.pids():
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if "python" in Path(exe).name:
                return pid
        raise RuntimeError("spitguard's Python process not found")

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        udp = free_port("127.0.0.1", "both")
        tls = free_port("127.0.0.1", "tcp")
        metrics = free_port("127.0.0.1", "tcp")
        trunk_port = free_port(UPSTREAM_IP, "udp")  # never used: calls only go to bob
        config = self.workdir / "edge.toml"
        write_config(
            config,
            self.workdir / "var",
            udp,
            udp,
            tls,
            upstream=[f"sip:{UPSTREAM_IP}:{trunk_port};transport=udp"],
            trusted=[f"{UPSTREAM_IP}/32"],
            extra=f"[metrics]\nport = {metrics}\n{self.extra}",
        )
        edge = EdgeServer(self.workdir / "var", config, udp, udp, tls)
        edge.stderr_path = self.workdir / "edge.log"
        self.edge = edge
        for args in (
            ("tenant", "add", "acme", "--domain", DOMAIN),
            ("line", "add", f"{CALLEE}@{DOMAIN}", "--tenant", "acme", "--password", PASSWORD),
        ):
            done = edge.cli(*args)
            if done.returncode != 0:
                raise RuntimeError(f"spitguard {' '.join(args)}: {done.stderr}")
        timeout_bin = require_tool("timeout", "coreutils")
        argv = [*spitguard_cmd(), "serve", "--config", str(config), "--log-level", self.log_level]
        self.process = BoundedProcess(
            [timeout_bin, "-k", "5", f"{self.lifetime:g}s", *argv],
            cwd=self.workdir,
            stdout=self.workdir / "edge.stdout",
            stderr=edge.stderr_path,
            env={"PYTHONUNBUFFERED": "1"},
        )
        process = self.process

        def banner() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"spitguard exited during start:\n{edge.log()}")
            return "stop with Ctrl-C" in process.stdout_text()

        wait_until(banner, 30, interval=0.05, what="spitguard to start")
        self.address = edge.addr

    def stop(self) -> None:
        if self.process is not None:
            code = self.process.stop(grace=10.0)
            self.exit_note = "clean exit" if code == 0 else f"exit code {code}"

    def log(self) -> str:
        try:
            return (self.workdir / "edge.log").read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio default loop"
        return (
            f"spitguard {importlib.metadata.version('spitguard')} `serve --log-level "
            f"{self.log_level}` (one Python process, {loop}), SQLite store, metrics on; "
            f"the trunk {UPSTREAM_IP}/32 trusted"
        )


class KamailioEdge(System):
    """tests/peers/kamailio.cfg through peers.kamailio.Kamailio, one UDP worker (-n 1)."""

    name = "kamailio"
    domain = SIP_DOMAIN

    def __init__(self, workdir: Path, lifetime: float, shm_mb: int) -> None:
        super().__init__(workdir, lifetime)
        self.shm_mb = shm_mb
        self.kamailio: Kamailio | None = None
        self.version = tool_version(["kamailio", "-v"], r"kamailio \S+")

    def leader(self) -> int:
        assert self.kamailio is not None
        # The harness keeps the process private; its session holds timeout(1), the
        # Kamailio main process and every worker it forked.
        process: BoundedProcess | None = self.kamailio._process
        assert process is not None
        return process.pid

    def start(self) -> None:
        trunk_port = free_port(UPSTREAM_IP, "udp")  # never used: calls only go to bob
        self.kamailio = Kamailio(
            self.workdir,
            users={CALLEE: PASSWORD},
            upstream=(UPSTREAM_IP, trunk_port),
            workers=1,
            shm_mb=self.shm_mb,
            lifetime=self.lifetime,
        )
        self.kamailio.start()
        self.address = self.kamailio.address

    def stop(self) -> None:
        if self.kamailio is not None:
            code = self.kamailio.stop()
            self.exit_note = "clean exit" if code == 0 else f"exit code {code}"

    def log(self) -> str:
        return self.kamailio.log() if self.kamailio is not None else ""

    def describe(self) -> str:
        return (
            f"{self.version} with tests/peers/kamailio.cfg (registrar + tm stateful proxy, "
            f"record-route, usrloc in memory), -n 1 (one UDP worker), shm {self.shm_mb} MB, "
            f"debug=2; the trunk {UPSTREAM_IP} trusted by source address"
        )


# --- one step: rate R for N calls ------------------------------------------------------


@dataclass
class Step:
    system: str
    round: int
    rate: int
    calls: int
    successful: int = 0
    failed: int = 0
    retrans_uac: int = 0
    retrans_uas: int = 0
    failed_uas: int = 0
    offered: float | None = None  # calls/s SIPp actually started, while starting them
    setup_ms: float | None = None  # mean INVITE -> 200 time seen by the UAC
    dut_cpu: float = 0.0  # CPU seconds of the system per second of the step
    sipp_cpu: float = 0.0  # CPU seconds of both SIPp processes per second of the step
    wall: float = 0.0
    sipp_exit: int = 0
    rcvbuf_drops: int = 0  # datagrams dropped at the edge's UDP socket (buffer full)
    log_problems: int = 0
    first_problem: str = ""
    tag: str = ""  # "bisect", "soak", "probe"

    @property
    def unfinished(self) -> int:
        return self.calls - self.successful

    @property
    def fail_ratio(self) -> float:
        return self.unfinished / self.calls if self.calls else 1.0

    @property
    def rate_reached(self) -> bool:
        return self.offered is None or self.offered >= MIN_OFFERED * self.rate

    @property
    def passed(self) -> bool:
        return self.fail_ratio < MAX_FAILED and self.rate_reached

    @property
    def verdict(self) -> str:
        if self.passed:
            return "pass"
        why = []
        if self.fail_ratio >= MAX_FAILED:
            why.append(f"{100 * self.fail_ratio:.2f}% failed")
        if not self.rate_reached:
            who = "SIPp's core saturated" if self.sipp_cpu >= 0.9 else "SIPp throttled"
            why.append(f"rate not reached ({who})")
        return "FAIL: " + ", ".join(why)


@dataclass
class Context:
    workdir: Path
    dut_cpu: int
    load_cpu: int | None
    hold_ms: int
    step_seconds: float
    uas_port: int = 0
    runs: Counter[str] = field(default_factory=Counter)

    def name(self, base: str) -> str:
        self.runs[base] += 1
        return f"{base}-{self.runs[base]}"


def _stat_rows(path: Path) -> list[dict[str, str]]:
    try:
        rows = [r for r in path.read_text("utf-8", "replace").splitlines() if r.strip()]
    except FileNotFoundError:
        return []
    head = rows[0].split(";") if rows else []
    return [dict(zip(head, r.split(";"), strict=False)) for r in rows[1:]]


def _epoch(stamp: str) -> float:
    """SIPp writes times as "date<TAB>time<TAB>epoch"."""
    return float(stamp.split("\t")[-1])


def offered_rate(path: Path, calls: int) -> float | None:
    """Calls per second SIPp started while it was still starting calls: the slope of its
    once-a-second counters over that phase (None when it lasted under two readings)."""
    points = [
        (_epoch(row["CurrentTime"]), int(row.get("TotalCallCreated") or 0))
        for row in _stat_rows(path)
    ]
    points = [(t, c) for t, c in points if 0 < c < calls]
    if len(points) < 2 or points[-1][0] - points[0][0] < 0.9:
        return None
    (t0, c0), (t1, c1) = points[0], points[-1]
    return (c1 - c0) / (t1 - t0)


def _duration_ms(text: str | None) -> float | None:
    """SIPp's "HH:MM:SS:micro" response times."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 4:
        return None
    h, m, s, us = (int(p) for p in parts)
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


def quiesce(system: System, limit: float = 10.0) -> None:
    """Wait (up to `limit` s) until the system is idle: leftovers of the previous step
    (retransmissions, timers, a backlog) must not be charged to the next one."""
    deadline = time.monotonic() + limit
    time.sleep(0.3)
    while time.monotonic() < deadline:
        before = system.cpu_seconds()
        time.sleep(0.3)
        if system.cpu_seconds() - before < 0.3 * 0.05:
            return


def udp_socket_drops(address: str) -> int:
    """Datagrams the kernel dropped at the UDP socket bound to `address` ("ip:port"),
    because its receive buffer was full (the `drops` column of /proc/net/udp)."""
    ip, port = address.rsplit(":", 1)
    local = f"{socket.htonl(int.from_bytes(socket.inet_aton(ip), 'big')):08X}:{int(port):04X}"
    drops = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 12 and fields[1] == local:
                drops += int(fields[-1])
    return drops


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _problems(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "ERROR" in ln or "WARNING" in ln]


def run_step(
    system: System, ctx: Context, rate: int, round_no: int, seconds: float, tag: str = ""
) -> Step:
    calls = max(1, round(rate * seconds))
    quiesce(system)
    pin_tasks(system.pids(), ctx.dut_cpu)  # again: nothing forked since may escape
    log_offset = len(system.log())
    label = f"{system.name}-r{round_no}-{rate}"
    sipp_dir = ctx.workdir / "sipp"
    bound = seconds + ctx.hold_ms / 1000 + RECV_TIMEOUT_MS / 1000 + 15
    buffers = ["-buff_size", str(SOCKET_BUFFER), "-recv_timeout", str(RECV_TIMEOUT_MS)]
    uas = QuietSipp(
        "uas_answer.xml",
        workdir=sipp_dir,
        local_ip=CALLEE_IP,
        local_port=ctx.uas_port,
        calls=10_000_000,  # stopped by us; edge keep-alive OPTIONS must not end it
        timeout=bound + 10,
        name=ctx.name(f"uas-{label}"),
        extra_args=[*buffers, "-fd", "1"],
    )
    uac = QuietSipp(
        "upstream_call.xml",
        workdir=sipp_dir,
        local_ip=UPSTREAM_IP,
        remote=system.address,
        user=TRUNK_NUMBER,
        service=CALLEE,
        keys={"domain": system.domain},
        calls=calls,
        rate=rate,
        limit=max(100, rate * 5),  # room for 5 s of open calls: no throttling before
        call_duration_ms=ctx.hold_ms,
        timeout=bound,
        name=ctx.name(f"uac-{label}"),
        extra_args=[*buffers, "-fd", "1"],
    )
    step = Step(system.name, round_no, rate, calls, tag=tag)
    sipp_cpu0 = _children_cpu()
    drops0 = udp_socket_drops(system.address)
    with uas, uac:
        uas.start()
        wait_until(lambda: udp_bound(CALLEE_IP, ctx.uas_port), 5, what="the UAS to bind")
        cpu0 = system.cpu_seconds()
        t0 = time.monotonic()
        result = uac.run()
        step.wall = time.monotonic() - t0
        cpu1 = system.cpu_seconds()
        answered = uas.stop()
    # Both SIPp processes were reaped in the step (and nothing else): their whole CPU.
    sipp_cpu = _children_cpu() - sipp_cpu0
    step.dut_cpu = (cpu1 - cpu0) / step.wall
    step.sipp_cpu = sipp_cpu / step.wall
    step.sipp_exit = result.returncode
    step.rcvbuf_drops = udp_socket_drops(system.address) - drops0
    _fill_counters(step, result, answered, uac.stat_file)
    problems = _problems(system.log()[log_offset:])
    step.log_problems = len(problems)
    step.first_problem = problems[0][:300] if problems else ""
    if not step.passed:
        _keep_evidence(step, result, answered)
    return step


def _fill_counters(step: Step, uac: SippResult, uas: SippResult, uac_stats: Path) -> None:
    if uac.stats is not None:
        step.successful = uac.stats.successful
        step.failed = uac.stats.failed
        step.retrans_uac = uac.stats.retransmissions
        step.setup_ms = _duration_ms(uac.stats.counters.get("ResponseTimesetup(C)"))
    if uas.stats is not None:
        step.retrans_uas = uas.stats.retransmissions
        step.failed_uas = uas.stats.failed
    step.offered = offered_rate(uac_stats, step.calls)


# Events follow each other without a line break: split on their timestamps.
_EVENT = re.compile(r"\d{4}-\d\d-\d\d\t[\d:.]+\t\d+\.\d+: ")


def sipp_events(errors: str) -> Counter[str]:
    """SIPp's error log (-trace_err), one line per kind of event: the call's fate and
    the message that decided it (first line and CSeq method), numbers left out."""
    kinds: Counter[str] = Counter()
    for event in _EVENT.split(errors)[1:]:
        received = re.search(r"received '([^\r\n]*)", event)
        cseq = re.search(r"^CSeq:\s*\d+\s+(\S+)", event, re.MULTILINE)
        what = received[1] if received else ""
        if cseq:
            what += f" ({cseq[1]})"
        if "receive timeout" in event:
            kind = "call timed out waiting for a message (recv_timeout)"
        elif "unexpected BYE" in event:
            kind = "unexpected BYE (while waiting for the ACK)"
        elif expecting := re.search(r"while expecting '([^']*)'", event):
            kind = f"unexpected {what} while expecting {expecting[1]}"
        elif event.startswith("Dead call"):
            kind = f"late {what} after the call had ended"
        else:
            kind = re.sub(r"\d+", "N", event.splitlines()[0])[:100]
        kinds[kind] += 1
    return kinds


EVIDENCE: list[str] = []


def _keep_evidence(step: Step, uac: SippResult, uas: SippResult) -> None:
    """What SIPp and the edge said about a failing step."""
    lines = [f"{step.system} round {step.round} @ {step.rate}/s {step.tag}: {step.verdict}"]
    for who, result in (("uac", uac), ("uas", uas)):
        kinds = sipp_events(result.errors)
        if who == "uas":  # the edge's keep-alive OPTIONS: harmless, not a call
            kinds = Counter({k: n for k, n in kinds.items() if "OPTIONS" not in k})
        lines += [f"    {who}: {n} x {kind}" for kind, n in kinds.most_common(4)]
    if step.rcvbuf_drops:
        lines.append(
            f"    kernel: {step.rcvbuf_drops} datagrams dropped at the edge's UDP socket "
            "(receive buffer full)"
        )
    if step.first_problem:
        lines.append(
            f"    edge log ({step.log_problems} warning/error lines): {step.first_problem}"
        )
    EVIDENCE.append("\n".join(lines))


# --- ramps, rounds ---------------------------------------------------------------------


def register_callee(system: System, ctx: Context) -> None:
    """bob registers (digest) from 127.0.1.2:PORT for an hour and leaves the binding; each
    step's UAS then answers on that same address (the flow the edge knows)."""
    reg = Sipp(
        "register_contact.xml",
        workdir=ctx.workdir / "sipp",
        local_ip=CALLEE_IP,
        local_port=ctx.uas_port,
        remote=system.address,
        user=CALLEE,
        password=PASSWORD,
        keys={"domain": system.domain, "contact_host": CALLEE_IP, "expires": "3600"},
        timeout=10,
        name=ctx.name(f"register-{system.name}"),
    )
    with reg:
        result = reg.run()
    if not result.ok:
        raise RuntimeError(f"{system.name}: bob did not register\n{result.describe()}")


def probe(system: System, ctx: Context, round_no: int) -> None:
    """A few calls at a low rate must all succeed before anything is measured."""
    for _ in range(3):
        step = run_step(system, ctx, 20, round_no, 1.0, tag="probe")
        if step.passed:
            return
    raise RuntimeError(
        f"{system.name}: probe calls at 20/s fail ({step.verdict})\n"
        + "\n".join(EVIDENCE[-1:])
        + f"\n--- log tail:\n{system.log()[-3000:]}"
    )


def ramp(
    system: System, ctx: Context, rates: Sequence[int], round_no: int, bisect: int
) -> tuple[list[Step], int, bool]:
    """Rising rates until a step does not pass, then bisection. Returns the steps, the
    highest rate that passed (0 if none) and whether the ladder ran out first."""
    steps: list[Step] = []
    best = 0
    first_fail: int | None = None
    for rate in rates:
        step = run_step(system, ctx, rate, round_no, ctx.step_seconds)
        steps.append(step)
        _print_step(step)
        if not step.passed:
            first_fail = rate
            break
        best = rate
    if first_fail is None:
        return steps, best, True
    for _ in range(bisect):
        if best == 0 or first_fail - best <= max(10, best // 20):
            break
        mid = int(round((best + first_fail) / 2, -1))
        if mid in (best, first_fail):
            break
        step = run_step(system, ctx, mid, round_no, ctx.step_seconds, tag="bisect")
        steps.append(step)
        _print_step(step)
        if step.passed:
            best = mid
        else:
            first_fail = mid
    return steps, best, False


def _print_step(step: Step) -> None:
    # Progress goes to stderr: stdout is the description and the result line.
    print(
        f"  [{step.system} r{step.round}] {step.rate:>5}/s: {step.successful}/{step.calls} "
        f"ok, dut cpu {100 * step.dut_cpu:.0f}% -> {step.verdict}",
        file=sys.stderr,
        flush=True,
    )


@dataclass
class Outcome:
    steps: list[Step] = field(default_factory=list)
    figures: list[int] = field(default_factory=list)  # per ramp round
    capped: list[bool] = field(default_factory=list)  # the ladder ran out in that round
    soak_steps: list[Step] = field(default_factory=list)
    soak_figure: int | None = None  # None: no soak was run
    notes: list[str] = field(default_factory=list)

    @property
    def ramp_figure(self) -> int:
        return min(self.figures) if self.figures else 0

    @property
    def figure(self) -> int:
        return self.ramp_figure if self.soak_figure is None else self.soak_figure


def make_system(kind: str, workdir: Path, lifetime: float, args: argparse.Namespace) -> System:
    if kind == "spitguard":
        return Spitguard(workdir, lifetime, args.edge_log_level)
    return KamailioEdge(workdir, lifetime, args.kamailio_shm_mb)


@contextlib.contextmanager
def running(
    kind: str, ctx: Context, args: argparse.Namespace, label: str, lifetime: float, outcome: Outcome
) -> Iterator[System]:
    """A freshly started system, pinned, bob registered, probe calls passed; stopped after."""
    system = make_system(kind, ctx.workdir / f"{kind}-{label}", lifetime, args)
    ctx.uas_port = free_port(CALLEE_IP, "udp")
    try:
        system.start()
        pids = system.pids()
        threads = pin_tasks(pids, ctx.dut_cpu)
        if not outcome.notes:
            outcome.notes.append(
                f"{system.describe()}; {len(pids)} process(es) in its session, "
                f"{threads} thread(s), all pinned to cpu {ctx.dut_cpu}"
            )
        register_callee(system, ctx)
        probe(system, ctx, 0)
        yield system
    finally:
        system.stop()
        if system.exit_note != "clean exit":
            outcome.notes.append(f"{label}: {kind} stopped with {system.exit_note}")


def one_round(
    kind: str, ctx: Context, args: argparse.Namespace, round_no: int, outcome: Outcome
) -> None:
    rates = list(args.rates)
    if outcome.figures:  # later rounds re-measure the top: from two rungs below round 1's
        below = [i for i, r in enumerate(rates) if r <= outcome.figures[0]]
        rates = rates[max(0, (below[-1] if below else 0) - 2) :]
    lifetime = 60 + (len(rates) + args.bisect) * (ctx.step_seconds + 30)
    with running(kind, ctx, args, f"r{round_no}", lifetime, outcome) as system:
        steps, best, capped = ramp(system, ctx, rates, round_no, args.bisect)
    outcome.steps += steps
    outcome.figures.append(best)
    outcome.capped.append(capped)


def soak(kind: str, ctx: Context, args: argparse.Namespace, outcome: Outcome) -> None:
    """The ramp's figure held for `--soak-seconds` on a freshly started system: long
    enough for state that lives 32 s (RFC 3261/6026 Timers J, L, M = 64*T1) to pile up to
    its steady level. On a fail, 75% of that rate on another fresh system, and so on, up
    to `--soak-tries` rates in all."""
    rate = outcome.ramp_figure
    outcome.soak_figure = 0
    seconds = args.soak_seconds
    lifetime = 90 + seconds
    for attempt in range(1, args.soak_tries + 1):
        if rate < 10:
            return
        with running(kind, ctx, args, f"soak{attempt}", lifetime, outcome) as system:
            step = run_step(system, ctx, rate, 0, seconds, tag="soak")
        outcome.soak_steps.append(step)
        _print_step(step)
        if step.passed:
            outcome.soak_figure = rate
            return
        rate = int(round(rate * 0.75, -1))


# --- profile mode ----------------------------------------------------------------------


def profile(args: argparse.Namespace, ctx: Context) -> int:
    """spitguard at one rate, sampled by py-spy (record --format raw --nonblocking)."""
    py_spy = args.py_spy or shutil.which("py-spy")
    if py_spy is None:
        sys.exit("py-spy not found: pip install --target DIR py-spy; pass --py-spy DIR/bin/py-spy")
    rate = args.profile
    system = Spitguard(ctx.workdir / "spitguard-profile", 300, args.edge_log_level)
    ctx.uas_port = free_port(CALLEE_IP, "udp")
    out = ctx.workdir / "py-spy.txt"
    try:
        system.start()
        pin_tasks(system.pids(), ctx.dut_cpu)
        register_callee(system, ctx)
        probe(system, ctx, 0)
        timeout_bin = require_tool("timeout", "coreutils")
        seconds = max(2, int(ctx.step_seconds) - 1)
        spy = BoundedProcess(
            [timeout_bin, "-k", "5", str(seconds + 20), py_spy, "record", "--pid",
             str(system.main_pid()), "--duration", str(seconds), "--rate", "200",
             "--format", "raw", "--nonblocking", "--output", str(out)],
            cwd=ctx.workdir,
            stdout=ctx.workdir / "py-spy.stdout",
            stderr=ctx.workdir / "py-spy.stderr",
        )  # fmt: skip
        try:
            step = run_step(system, ctx, rate, 0, ctx.step_seconds, tag="profile")
            spy.wait(seconds + 30)
        finally:
            spy.stop()
    finally:
        system.stop()
    print(f"spitguard at {rate} calls/s under py-spy ({seconds} s, 200 Hz, non-blocking):")
    print(
        f"  step: {step.successful}/{step.calls} ok, {step.verdict}, "
        f"spitguard cpu {100 * step.dut_cpu:.0f}% of one core"
    )
    print(_summarize_raw(out))
    return 0


def _summarize_raw(path: Path, top: int = 30) -> str:
    """Top functions by own samples and by samples anywhere on the stack (folded stacks)."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text("utf-8", "replace")
    except FileNotFoundError:
        return f"  (no py-spy output at {path}; see {path.parent / 'py-spy.stderr'})"
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples; own time:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  on the stack (inclusive):")
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in anywhere.most_common(top)]
    return "\n".join(lines)


# --- report ----------------------------------------------------------------------------


def table(steps: list[Step]) -> list[str]:
    head = (
        f"  {'rnd':>3} {'rate/s':>6} {'calls':>6} {'ok':>6} {'failed':>6} {'fail%':>6} "
        f"{'retr uac/uas':>12} {'drops':>5} {'offered/s':>9} {'setup ms':>8} {'cpu':>5} "
        f"{'sipp':>5}  verdict"
    )
    out = [head]
    for s in steps:
        offered = f"{s.offered:.0f}" if s.offered is not None else "-"
        setup = f"{s.setup_ms:.1f}" if s.setup_ms is not None else "-"
        rnd = "soak" if s.tag == "soak" else str(s.round)
        rate = f"{s.rate}{'*' if s.tag == 'bisect' else ''}"
        out.append(
            f"  {rnd:>3} {rate:>6} {s.calls:>6} {s.successful:>6} {s.unfinished:>6} "
            f"{100 * s.fail_ratio:>6.2f} {f'{s.retrans_uac}/{s.retrans_uas}':>12} "
            f"{s.rcvbuf_drops:>5} {offered:>9} {setup:>8} {100 * s.dut_cpu:>4.0f}% "
            f"{100 * s.sipp_cpu:>4.0f}%  {s.verdict}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~30 s smoke run: 3 low steps")
    ap.add_argument("--rates", help="comma-separated ladder (calls/s)")
    ap.add_argument("--step-seconds", type=float, help="seconds of calls per step")
    ap.add_argument("--rounds", type=int, help="rounds per system, alternating (default 2)")
    ap.add_argument("--bisect", type=int, help="bisection steps after the first fail")
    ap.add_argument("--hold-ms", type=int, default=100, help="call hold time (SIPp -d)")
    ap.add_argument("--only", choices=["spitguard", "kamailio"], help="one system only")
    ap.add_argument("--edge-log-level", default="info", help="spitguard serve --log-level")
    ap.add_argument("--kamailio-shm-mb", type=int, default=1024)
    ap.add_argument("--soak-seconds", type=float, help="hold the figure this long (default 40)")
    ap.add_argument("--soak-tries", type=int, default=3, help="rates tried in the soak")
    ap.add_argument("--budget-minutes", type=float, default=8.0, help="skip later rounds")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--profile", type=int, metavar="RATE", help="py-spy spitguard at RATE")
    ap.add_argument("--py-spy", help="path of the py-spy binary")
    args = ap.parse_args(argv)
    args.rates = (
        [int(r) for r in args.rates.split(",")]
        if args.rates
        else list(QUICK_RATES if args.quick else RATES)
    )
    step_seconds = args.step_seconds or (3.0 if args.quick else 5.0)
    rounds = args.rounds or (1 if args.quick else 2)
    if args.bisect is None:
        args.bisect = 0 if args.quick else 1
    if args.soak_seconds is None:
        args.soak_seconds = 0.0 if args.quick else 40.0
    for program, package in (("sipp", "sip-tester"), ("kamailio", "kamailio")):
        require_tool(program, package)

    cpus = sorted(os.sched_getaffinity(0))
    dut_cpu = cpus[-1]
    load_cpu = cpus[0] if len(cpus) > 1 else None
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # SIPp inherits it; the systems are re-pinned
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)

    workdir = Path(tempfile.mkdtemp(prefix="spitguard-bench-proxy-"))
    ctx = Context(workdir, dut_cpu, load_cpu, args.hold_ms, step_seconds)
    kinds = [args.only] if args.only else ["spitguard", "kamailio"]
    outcomes = {kind: Outcome() for kind in kinds}
    started = time.monotonic()
    try:
        if args.profile:
            return profile(args, ctx)
        for round_no in range(1, rounds + 1):
            spent = time.monotonic() - started
            if round_no > 1 and spent / (round_no - 1) * round_no > args.budget_minutes * 60:
                print(f"  round {round_no} skipped: over the time budget", file=sys.stderr)
                break
            for kind in kinds:
                one_round(kind, ctx, args, round_no, outcomes[kind])
        if args.soak_seconds > 0:
            for kind in kinds:
                soak(kind, ctx, args, outcomes[kind])
    except Interrupted as exc:
        print(f"interrupted by {exc}; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started

    report(args, ctx, outcomes, rounds, elapsed)
    ours = outcomes["spitguard"].figure if "spitguard" in outcomes else 0
    theirs = outcomes["kamailio"].figure if "kamailio" in outcomes else 0
    print(result_line("proxy", ours, "calls/s", "kamailio", theirs))
    return 0


def report(
    args: argparse.Namespace,
    ctx: Context,
    outcomes: dict[str, Outcome],
    rounds: int,
    elapsed: float,
) -> None:
    sipp_version = tool_version(["sipp", "-v"], r"SIPp v\S+")
    done_rounds = max(len(o.figures) for o in outcomes.values())
    print("Calls per second through the edge: spitguard vs Kamailio (SIPp UAC -> edge -> UAS)")
    print(
        f"call: the trunk ({UPSTREAM_IP}, trusted: no auth) sends INVITE sip:{CALLEE}@domain "
        f"through the edge (127.0.0.1, UDP) to {CALLEE} registered (digest, once per "
        f"system start) from {CALLEE_IP}; 100/180/200+SDP, ACK, {args.hold_ms} ms hold, BYE "
        "along the Record-Route, 200. Both edges are stateful, record-route, and look the "
        "callee up in their location table; spitguard also runs its guard on every request."
    )
    soak = (
        f" Soak: each system's figure is then held for {args.soak_seconds:g} s on a freshly "
        "started edge, long enough for transaction state that lives 32 s (64*T1: RFC 3261 "
        "Timer J, RFC 6026 Timers L/M) to reach its steady level; on a fail, 75% of that "
        f"rate on another fresh edge (up to {args.soak_tries} rates). Figure: the highest "
        "rate that passed the soak."
        if args.soak_seconds > 0
        else " No soak (--quick): the figure is the highest rate that passed in every "
        "round, in short steps only."
    )
    print(
        f"method: per step, SIPp offers a fixed rate (-r R) for {ctx.step_seconds:g} s of "
        f"calls (-m R*{ctx.step_seconds:g}, -l 5*R); a call fails unless it completes "
        f"(-recv_timeout {RECV_TIMEOUT_MS} ms per expected message; SIPp retransmits on "
        f"T1=500 ms); a step passes with < {100 * MAX_FAILED:g}% failed calls and at least "
        f"{100 * MIN_OFFERED:.0f}% of the rate offered (SIPp's once-a-second counters). "
        f"Ramp: rates {','.join(map(str, args.rates))}, stopped at the first step that "
        f"does not pass, then {args.bisect} bisection step(s) (rate marked *); rounds after "
        "the first start two rungs below the first round's figure. Systems "
        "alternate spitguard, kamailio, spitguard, ..., each round on a freshly started "
        "edge; 20 probe calls must pass first; the edge must be idle (CPU) before each "
        "step, but state from earlier steps (transactions kept 32 s) is not waited out." + soak
    )
    print(
        f"one core: the system under test is pinned to cpu {ctx.dut_cpu} (every thread of "
        "every process of its session); both SIPp processes and this script run on cpu "
        f"{ctx.load_cpu}. SIPp shares the machine (memory, caches, the loopback stack, "
        "softirqs), and the machine may carry other load. 'cpu' = CPU seconds the system "
        "used per second of the step (1 core = 100%); 'sipp' = the same for UAC + UAS; "
        "'drops' = datagrams the kernel dropped at the edge's UDP socket during the step "
        "(receive buffer full: the edge did not read fast enough)."
    )
    print(
        f"machine: {cpu_count()} cpu(s), {_cpu_model()}; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; {sipp_version} "
        "(-trace_msg off, UDP buffers 4 MB)"
    )
    print(f"ramp rounds: {done_rounds} of {rounds}; whole run {elapsed:.0f} s")
    for kind, outcome in outcomes.items():
        print(f"{kind}:")
        for note in outcome.notes:
            print(f"  {note}")
        print("\n".join(table(outcome.steps + outcome.soak_steps)))
        capped = any(outcome.capped)
        per_round = ", ".join(
            f"{f}{'+' if c else ''}" for f, c in zip(outcome.figures, outcome.capped, strict=True)
        )
        soaked = f"; soak: {outcome.soak_figure} calls/s" if outcome.soak_figure is not None else ""
        print(
            f"  => {outcome.figure} calls/s (ramp per round: {per_round}{soaked})"
            + ("; '+' = passed the top of the ladder, a lower bound" if capped else "")
        )
    if EVIDENCE:
        print("failing steps, what SIPp, the kernel and the edge reported:")
        for item in EVIDENCE:
            print(f"  {item}")
    if "spitguard" in outcomes and "kamailio" in outcomes:
        ours, theirs = outcomes["spitguard"].figure, outcomes["kamailio"].figure
        ratio = f"{ours / theirs:.2f}x" if theirs else "n/a"
        print(f"ratio: {ratio} (spitguard / kamailio)")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown processor"


if __name__ == "__main__":
    sys.exit(main())
