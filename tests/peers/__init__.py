"""Real SIP peers for tests and benchmarks: SIPp, baresip and a reference Kamailio edge.

Every peer is a subprocess started in its own session with a hard lifetime, read back
through the files it writes, and stopped (SIGTERM, then SIGKILL) by its own process id.
Roles take fixed loopback addresses (see `EDGE_IP` and friends); nothing here sends to
any other address.

- `peers.sipp`: run a scenario of tests/sipp/, get its exit code, final statistics and
  every message it sent or received.
- `peers.baresip`: a headless softphone that registers (TCP by default) and auto-answers.
- `peers.kamailio`: the reference registrar + stateful proxy (tests/peers/kamailio.cfg).

This module holds what they share: role addresses, `wait_until`, free ports, tool lookup
and the bounded subprocess.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal, TypeVar

__all__ = [
    "EDGE_IP",
    "SIP_DOMAIN",
    "UPSTREAM_IP",
    "BoundedProcess",
    "MissingPeerError",
    "Transport",
    "free_port",
    "phone_ip",
    "require_tool",
    "scanner_ip",
    "wait_until",
]

# Loopback roles (ARCHITECTURE.md): nothing in the harness may use other addresses.
EDGE_IP = "127.0.0.1"
UPSTREAM_IP = "127.0.2.1"
# Reserved TLD (RFC 2606): a typo can never resolve to a real host.
SIP_DOMAIN = "spitguard.test"

Transport = Literal["udp", "tcp"]

T = TypeVar("T")


def phone_ip(n: int) -> str:
    """Address of phone number `n` (1..254): 127.0.1.n."""
    if not 1 <= n <= 254:
        raise ValueError(f"phone number {n} out of range 1..254")
    return f"127.0.1.{n}"


def scanner_ip(n: int) -> str:
    """Address of scanner number `n` (1..254): 127.0.66.n."""
    if not 1 <= n <= 254:
        raise ValueError(f"scanner number {n} out of range 1..254")
    return f"127.0.66.{n}"


class MissingPeerError(RuntimeError):
    """A peer program is not installed; the message says which package provides it."""


def require_tool(program: str, package: str) -> str:
    """Absolute path of `program`, or MissingPeerError naming the Debian package."""
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        raise MissingPeerError(
            f"{program} not installed: run `make deps` (Debian package {package}, "
            "installed by scripts/install-deps.sh)"
        )
    return path


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.02,
    what: str | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy and return that value.

    Raises TimeoutError (naming `what`) when `timeout` seconds pass first. The predicate
    is always tried once more at the deadline, so a slow poll cannot lose a late success.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or predicate!r}")
        time.sleep(interval)


def free_port(ip: str, transport: Transport | Literal["both"] = "both") -> int:
    """A port on `ip` that is free right now for UDP, TCP or both.

    The kernel picks from its ephemeral range, which SIPp's media (6000+) and control
    (8888+) ports stay clear of. Another process may still take it before our peer binds;
    on loopback role addresses that race is remote enough for tests.
    """
    for _ in range(100):
        kinds = (
            [socket.SOCK_DGRAM, socket.SOCK_STREAM]
            if transport == "both"
            else [socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM]
        )
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket(socket.AF_INET, kinds[0]))
            first.bind((ip, 0))
            port: int = first.getsockname()[1]
            try:
                for kind in kinds[1:]:
                    other = stack.enter_context(socket.socket(socket.AF_INET, kind))
                    other.bind((ip, port))
            except OSError:
                continue
            return port
    raise OSError(f"no port free for {transport} on {ip}")


class BoundedProcess:
    """A child process in its own session, with output in files, always reaped.

    `stop()` sends SIGTERM to the child and, after `grace` seconds, SIGKILL to the
    session it leads (named by the child's own id), so workers it forked die with it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        stdout: Path,
        stderr: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.stdout_path = stdout
        self.stderr_path = stderr
        cwd.mkdir(parents=True, exist_ok=True)
        self._files: list[IO[bytes]] = [stdout.open("wb"), stderr.open("wb")]
        try:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._files[0],
                stderr=self._files[1],
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,
            )
        except BaseException:
            self._close_files()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None:
            self._close_files()
        return code

    def wait(self, timeout: float) -> int:
        """Exit code; TimeoutError if the process is still running after `timeout` s."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.argv[0]} still running after {timeout:g}s") from None
        self._close_files()
        return code

    def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> int:
        """Ask the process to end (`sig`), kill its session after `grace` s; exit code."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)
            if not self._exited(grace):
                self._kill_session()
                self._exited(grace)
            # Unreaped, the leader still owns its id, so this reaches only our session:
            # workers it forked (Kamailio's) that outlived it.
            self._kill_session()
        code = self.popen.wait(timeout=grace)
        self._close_files()
        return code

    def _exited(self, timeout: float) -> bool:
        """Whether the child has exited within `timeout` s, without reaping it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:
                return True
            if info is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _kill_session(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def stdout_text(self) -> str:
        return _read_text(self.stdout_path)

    def stderr_text(self) -> str:
        return _read_text(self.stderr_path)

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
