"""Run SIPp scenarios (tests/sipp/) as bounded subprocesses and read back what happened.

    bob = Sipp("uas_register_answer.xml", workdir=tmp, remote=edge.address,
               local_ip=phone_ip(2), user="bob", password="pw")
    with bob.start():
        bob.wait_registered(5)
        Sipp("uac_bench.xml", workdir=tmp, remote=edge.address, local_ip=phone_ip(1),
             user="alice", service="bob").run().assert_ok()
        bob.wait().assert_ok()

Each run writes its files under `workdir` with fixed names (`<name>.messages.log`, ...),
so nothing depends on SIPp's pid-based names. The result holds SIPp's exit code, the
final cumulative statistics (`-trace_stat`) and every SIP message sent or received,
byte for byte (`-trace_msg`), to assert on headers.

SIPp 3.6 exit codes: 0 every call succeeded; 1 at least one call failed; 97 stopped by
an internal command; 99 ended without processing a call; 255 fatal error, which
includes reaching `-timeout` (we always pass `-timeout_error`); 254 could not bind.
A SIPp killed with SIGTERM or SIGINT exits 0: `stop()` marks such results `stopped`.

Digest: SIPp 3.6 puts `uri="sip:<remote ip:port>"` in its credentials (and hashes that),
not the Request-URI; `auth_uri="x"` makes it "sip:x" for every request of the run. An
edge that insists on uri == Request-URI needs auth_uri set to match.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Literal, Self

from spitguard.sip.headers import COMPACT

from . import SIP_DOMAIN, BoundedProcess, Transport, free_port, require_tool, wait_until

__all__ = [
    "OUT_OF_CALL",
    "SCENARIO_DIR",
    "SipMessage",
    "Sipp",
    "SippResult",
    "SippStats",
    "parse_message_log",
    "wait_until",
]

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "sipp"

# A registering UAS cannot receive its calls in its own SIPp call (they carry new
# Call-IDs), so these scenarios need their call half as the out-of-call scenario.
OUT_OF_CALL: Mapping[str, str] = {
    "uas_register_answer.xml": "uas_answer.xml",
    "uas_register_ring_cancel.xml": "uas_ring_cancel.xml",
}

_TRANSPORT_MODE = {"udp": "u1", "tcp": "t1"}

EXIT_CODES: Mapping[int, str] = {
    0: "all calls succeeded",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    254: "fatal error binding a socket",
    255: "fatal error (or global -timeout reached)",
}


@dataclass(frozen=True)
class SipMessage:
    """One SIP message as SIPp sent or received it (bytes exactly as on the wire)."""

    direction: Literal["sent", "received"]
    transport: str
    timestamp: str
    raw: bytes

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    @cached_property
    def _parts(self) -> tuple[str, list[tuple[str, str]], bytes]:
        head, _, body = self.raw.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:  # folded continuation line
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}")
            elif ":" in line:
                name, value = line.split(":", 1)
                headers.append((name.strip(), value.strip()))
        return lines[0], headers, body

    @property
    def start_line(self) -> str:
        return self._parts[0]

    @property
    def status(self) -> int | None:
        """Status code of a response, None for a request."""
        if not self.start_line.startswith("SIP/2.0 "):
            return None
        return int(self.start_line.split()[1])

    @property
    def method(self) -> str | None:
        """Method of a request, None for a response (see `cseq_method`)."""
        return None if self.status is not None else self.start_line.split(" ", 1)[0]

    @property
    def cseq_method(self) -> str | None:
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None

    @property
    def header_names(self) -> list[str]:
        """Header names in order, as written (compact forms not expanded)."""
        return [name for name, _ in self._parts[1]]

    def headers(self, name: str) -> list[str]:
        """Values of every header line called `name` (case-insensitive, compact forms
        included). A line listing several values ("Via: a, b") is one entry."""
        wanted = _canonical(name)
        return [value for n, value in self._parts[1] if _canonical(n) == wanted]

    def header(self, name: str) -> str | None:
        """Value of the first header line called `name`, or None."""
        values = self.headers(name)
        return values[0] if values else None

    @property
    def body(self) -> bytes:
        return self._parts[2]

    def __str__(self) -> str:
        return f"{self.direction} {self.transport} {self.start_line}"


def _canonical(name: str) -> str:
    low = name.strip().lower()
    return COMPACT.get(low, low)


_ENTRY = re.compile(
    rb"^-{20,} (?P<ts>[^\n]*)\n"
    rb"(?P<transport>[A-Z]+) message (?P<dir>sent|received) "
    rb"(?:\((?P<sent>\d+) bytes\)|\[(?P<received>\d+)\] bytes ?):\n\n",
    re.MULTILINE,
)


def parse_message_log(data: bytes) -> list[SipMessage]:
    """Messages of a SIPp `-trace_msg` file. Each entry announces its byte count, which
    we trust over any separator (a body may contain anything). A partial last entry
    (SIPp still writing) is left out."""
    messages: list[SipMessage] = []
    pos = 0
    while match := _ENTRY.search(data, pos):
        size = int(match["sent"] or match["received"])
        start = match.end()
        raw = data[start : start + size]
        if len(raw) < size:
            break
        messages.append(
            SipMessage(
                direction="sent" if match["dir"] == b"sent" else "received",
                transport=match["transport"].decode(),
                timestamp=match["ts"].decode().strip(),
                raw=raw,
            )
        )
        pos = start + size
    return messages


@dataclass(frozen=True)
class SippStats:
    """Cumulative counters from the last row of SIPp's `-trace_stat` file."""

    created: int
    successful: int
    failed: int
    retransmissions: int
    out_of_call: int
    counters: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_file(cls, path: Path) -> SippStats | None:
        try:
            rows = [r for r in path.read_text("utf-8", "replace").splitlines() if r.strip()]
        except FileNotFoundError:
            return None
        if len(rows) < 2:
            return None
        counters = dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))

        def count(name: str) -> int:
            return int(counters.get(name) or 0)

        return cls(
            created=count("TotalCallCreated"),
            successful=count("SuccessfulCall(C)"),
            failed=count("FailedCall(C)"),
            retransmissions=count("Retransmissions(C)"),
            out_of_call=count("OutOfCallMsgs(C)"),
            counters=counters,
        )


@dataclass(frozen=True)
class SippResult:
    """How a SIPp run ended, with everything it logged."""

    name: str
    argv: tuple[str, ...]
    returncode: int
    stopped: bool
    stats: SippStats | None
    messages: tuple[SipMessage, ...]
    errors: str
    screen: str

    @property
    def ok(self) -> bool:
        """Every call succeeded and SIPp ended on its own."""
        return self.returncode == 0 and not self.stopped

    def received(self, method: str | None = None, status: int | None = None) -> list[SipMessage]:
        """Received requests of `method` and responses to `method` (by CSeq), optionally
        only responses with `status`; all received messages when both are None."""
        return _select(self.messages, "received", method, status)

    def sent(self, method: str | None = None, status: int | None = None) -> list[SipMessage]:
        """Like `received`, for what SIPp sent."""
        return _select(self.messages, "sent", method, status)

    def describe(self) -> str:
        """A report for assertion messages: exit code, counters, errors, message flow."""
        meaning = EXIT_CODES.get(self.returncode, "unknown exit code")
        lines = [
            f"sipp {self.name}: exit {self.returncode} ({meaning})"
            + (", stopped by the harness" if self.stopped else ""),
            f"  stats: {self.stats}",
            "  argv: " + " ".join(self.argv),
            "  flow: " + (" | ".join(str(m) for m in self.messages) or "(no messages)"),
        ]
        if self.errors.strip():
            lines.append("  errors (last 2000 chars):\n" + self.errors[-2000:])
        return "\n".join(lines)

    def assert_ok(self) -> Self:
        assert self.ok, self.describe()
        return self


def _select(
    messages: Sequence[SipMessage],
    direction: str,
    method: str | None,
    status: int | None,
) -> list[SipMessage]:
    return [
        m
        for m in messages
        if m.direction == direction
        and (method is None or m.method == method or (m.status and m.cseq_method == method))
        and (status is None or m.status == status)
    ]


class Sipp:
    """One SIPp process running one scenario, bounded by its own `-timeout`.

    `scenario` is a file name in tests/sipp/ or a path. `remote` is "host:port" of the
    edge (None for a pure UAS, which answers whoever calls). `rsa` defaults to `remote`
    for client scenarios, so requests go to the edge whatever their Request-URI names.
    `user`/`password` become `-key user`, `-au` and `-ap`. `keys` are `-key` keywords
    (defaults: domain=SIP_DOMAIN, expires=60), `variables` are `-set` globals (e.g.
    {"calls": "2"} for uas_register_*.xml, whose out-of-call half is added by itself).
    `call_duration_ms` is `-d` (every `<pause/>` without a length). The local port is
    chosen free on `local_ip` unless given.
    """

    def __init__(
        self,
        scenario: str | Path,
        *,
        workdir: Path,
        local_ip: str,
        remote: str | None = None,
        local_port: int | None = None,
        transport: Transport = "udp",
        rsa: str | None = None,
        service: str | None = None,
        user: str | None = None,
        password: str | None = None,
        auth_user: str | None = None,
        auth_uri: str | None = None,
        calls: int = 1,
        rate: float | None = None,
        rate_period_ms: int | None = None,
        limit: int | None = None,
        call_duration_ms: int = 0,
        timeout: float = 20.0,
        keys: Mapping[str, str] | None = None,
        variables: Mapping[str, str] | None = None,
        inf: Path | None = None,
        ooc_scenario: str | Path | None = None,
        name: str | None = None,
        extra_args: Sequence[str] = (),
        wrap: Sequence[str] = (),
    ) -> None:
        self.scenario = _scenario_path(scenario)
        self.wrap = tuple(wrap)  # a command prefix, e.g. `ip netns exec NS`
        ooc = ooc_scenario if ooc_scenario is not None else OUT_OF_CALL.get(self.scenario.name)
        self.ooc_scenario = _scenario_path(ooc) if ooc is not None else None
        self.workdir = workdir
        self.name = self._claim_name(workdir, name or self.scenario.stem)
        self.local_ip = local_ip
        self.local_port = local_port or free_port(local_ip, transport)
        self.transport: Transport = transport
        self.timeout = timeout
        self._process: BoundedProcess | None = None
        self._result: SippResult | None = None

        # Every scenario names the domain; the registering ones also need an expiry.
        keyword_values = {"domain": SIP_DOMAIN, "expires": "60", **(keys or {})}
        globals_ = dict(variables or {})
        if user is not None:
            keyword_values.setdefault("user", user)
        if self.ooc_scenario is not None:
            globals_.setdefault("calls", "1")
        # A client scenario needs somewhere to send; `remote` is that edge.
        if rsa is None and remote is not None:
            rsa = remote

        argv: list[str] = ["sipp"]
        if remote is not None:
            argv.append(remote)
        argv += ["-sf", str(self.scenario)]
        if self.ooc_scenario is not None:
            argv += ["-oocsf", str(self.ooc_scenario)]
        argv += [
            "-t", _TRANSPORT_MODE[transport],
            "-i", local_ip,
            "-p", str(self.local_port),
            "-bind_local",
            # SIPp's UDP control socket (8888+) would otherwise listen on every address.
            "-ci", local_ip,
            "-nostdin",
            "-m", str(calls),
            "-d", str(call_duration_ms),
            "-timeout", f"{math.ceil(timeout * 1000)}ms",
            "-timeout_error",
            "-trace_msg", "-message_file", str(self._file("messages.log")),
            "-trace_err", "-error_file", str(self._file("errors.log")),
            "-trace_stat", "-stf", str(self._file("stat.csv")),
            "-trace_screen", "-screen_file", str(self._file("screen.log")),
        ]  # fmt: skip
        if rsa is not None:
            argv += ["-rsa", rsa]
        if service is not None:
            argv += ["-s", service]
        if auth_user or user:
            argv += ["-au", auth_user or user or ""]
        if password is not None:
            argv += ["-ap", password]
        if auth_uri is not None:
            argv += ["-auth_uri", auth_uri]
        if rate is not None:
            argv += ["-r", f"{rate:g}"]
        if rate_period_ms is not None:
            argv += ["-rp", str(rate_period_ms)]
        if limit is not None:
            argv += ["-l", str(limit)]
        if inf is not None:
            argv += ["-inf", str(inf)]
        for key, value in keyword_values.items():
            argv += ["-key", key, value]
        for var, value in globals_.items():
            argv += ["-set", var, value]
        argv += list(extra_args)
        self.argv: tuple[str, ...] = tuple(argv)

    # Names taken by runs of this process, per workdir: two runs of one scenario in a
    # test get distinct files ("uac_bench", "uac_bench-2") even before either starts.
    _claimed: ClassVar[set[Path]] = set()

    @classmethod
    def _claim_name(cls, workdir: Path, base: str) -> str:
        for n in itertools.count(1):
            name = base if n == 1 else f"{base}-{n}"
            if (workdir / name) not in cls._claimed and not any(workdir.glob(f"{name}.*")):
                cls._claimed.add(workdir / name)
                return name
        raise AssertionError("unreachable")

    def _file(self, suffix: str) -> Path:
        return self.workdir / f"{self.name}.{suffix}"

    @property
    def address(self) -> str:
        return f"{self.local_ip}:{self.local_port}"

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError(f"sipp {self.name} already started")
        binary = require_tool("sipp", "sip-tester")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for suffix in ("messages.log", "errors.log", "stat.csv", "screen.log"):
            self._file(suffix).unlink(missing_ok=True)
        self._process = BoundedProcess(
            (*self.wrap, binary, *self.argv[1:]),
            cwd=self.workdir,
            stdout=self._file("stdout"),
            stderr=self._file("stderr"),
        )
        return self

    def run(self) -> SippResult:
        """Start, wait for the end, return the result (assert on it with `assert_ok`)."""
        return self.start().wait()

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def messages(self) -> list[SipMessage]:
        """Messages logged so far (SIPp flushes each one as it goes)."""
        try:
            return parse_message_log(self._file("messages.log").read_bytes())
        except FileNotFoundError:
            return []

    def received(self, method: str | None = None, status: int | None = None) -> list[SipMessage]:
        return _select(self.messages(), "received", method, status)

    def registered(self) -> bool:
        """Whether a REGISTER of this run got a 2xx (the edge took the binding)."""
        return any(
            m.status is not None and 200 <= m.status < 300 for m in self.received("REGISTER")
        )

    def wait_registered(self, timeout: float = 5.0) -> None:
        """Wait for `registered()`; fail at once, with SIPp's report, if SIPp ends first."""

        def check() -> bool:
            if self.registered():
                return True
            if not self.running:
                raise AssertionError(f"sipp ended before registering\n{self.stop().describe()}")
            return False

        try:
            wait_until(check, timeout, what=f"sipp {self.name} at {self.address} to register")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.stop().describe()}") from None

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to end by itself; its -timeout bounds this, plus a grace period.

        Raises TimeoutError (after stopping it) if it overruns that bound.
        """
        process = self._require_process()
        try:
            code = process.wait(self.timeout + 10.0 if timeout is None else timeout)
        except TimeoutError:
            result = self.stop()
            raise TimeoutError(f"sipp overran its -timeout\n{result.describe()}") from None
        return self._collect(code, stopped=False)

    def stop(self) -> SippResult:
        """End SIPp now (SIGTERM: it writes its statistics and exits) and collect."""
        if self._result is not None:
            return self._result
        process = self._require_process()
        was_running = process.poll() is None
        code = process.stop(grace=5.0)
        return self._collect(code, stopped=was_running)

    def _require_process(self) -> BoundedProcess:
        if self._process is None:
            raise RuntimeError(f"sipp {self.name} was never started")
        return self._process

    def _collect(self, code: int, *, stopped: bool) -> SippResult:
        if self._result is None:
            self._result = SippResult(
                name=self.name,
                argv=self.argv,
                returncode=code,
                stopped=stopped,
                stats=SippStats.from_file(self._file("stat.csv")),
                messages=tuple(self.messages()),
                errors=_read(self._file("errors.log")) + _read(self._file("stderr")),
                screen=_read(self._file("screen.log")),
            )
        return self._result

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self.stop()


def _scenario_path(scenario: str | Path) -> Path:
    """A bare file name is one of tests/sipp/; anything else is a path."""
    path = Path(scenario)
    if path.name == str(scenario):
        path = SCENARIO_DIR / path
    if not path.is_file():
        raise FileNotFoundError(f"SIPp scenario not found: {path}")
    return path.resolve()


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
