"""Start the real `spitguard serve` as a subprocess on loopback, for tests with real peers."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

EDGE_HOST = "127.0.0.1"
DOMAIN = "acme.test"
USERS = {"alice": "alice-secret-1", "bob": "bob-secret-22", "carol": "carol-secret-333"}


def spitguard_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("spitguard")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "spitguard"]


def free_port(host: str = EDGE_HOST) -> int:
    """A port free for both UDP and TCP on `host`."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@dataclass
class EdgeServer:
    data_dir: Path
    config: Path
    udp_port: int
    tcp_port: int
    tls_port: int
    proc: subprocess.Popen[bytes] | None = None
    banner: str = ""
    stderr_path: Path = field(default=Path())
    wrap: list[str] = field(default_factory=list)  # e.g. `ip netns exec NS`
    serve_args: list[str] = field(default_factory=list)  # e.g. --demo

    @property
    def addr(self) -> str:
        return f"{EDGE_HOST}:{self.udp_port}"

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*spitguard_cmd(), *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
            check=False,
        )

    def start(self, *, timeout: float = 30.0) -> None:
        self.stderr_path = self.data_dir.parent / f"edge-{time.monotonic_ns()}.log"
        err = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [
                *self.wrap,
                *spitguard_cmd(),
                *("serve", "--config", str(self.config), "--log-level", "debug"),
                *self.serve_args,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        err.close()
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        out = b""
        while b"stop with Ctrl-C" not in out:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"edge did not start: {out.decode(errors='replace')}\n{self.log()}"
                )
            if sel.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    continue
                out += chunk
        sel.close()
        self.banner = out.decode()

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code (0 on a clean shutdown)."""
        proc = self.proc
        if proc is None:
            return None
        self.proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
                return -9
        return proc.returncode

    def log(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


def write_config(
    path: Path,
    data_dir: Path,
    udp: int,
    tcp: int,
    tls: int,
    *,
    upstream: Sequence[str] = (),
    trusted: Sequence[str] = (),
    extra: str = "",
) -> None:
    ups = ", ".join(f'"{u}"' for u in upstream)
    trs = ", ".join(f'"{t}"' for t in trusted)
    path.write_text(
        f'data_dir = "{data_dir}"\n'
        "[sip]\n"
        f'listen = [{{transport = "udp", host = "{EDGE_HOST}", port = {udp}}}, '
        f'{{transport = "tcp", host = "{EDGE_HOST}", port = {tcp}}}, '
        f'{{transport = "tls", host = "{EDGE_HOST}", port = {tls}}}]\n'
        "[upstream]\n"
        f"targets = [{ups}]\n"
        f"trusted_sources = [{trs}]\n"
        "[keepalive]\n"
        "udp_interval = 5.0\n"
        "stream_interval = 10.0\n"
        # Free ports so edges of parallel runs never collide on the defaults.
        + ("" if "[metrics]" in extra else f"[metrics]\nport = {free_port()}\n")
        + ("" if "[web]" in extra else f"[web]\nport = {free_port()}\n")
        # The host's firewall is not ours to change: nftables only in a test's own netns.
        + ("" if "[firewall]" in extra else '[firewall]\nnftables = "off"\n')
        + extra
    )


@contextmanager
def running_edge(
    tmp: Path,
    *,
    upstream: Sequence[str] = (),
    trusted: Sequence[str] = (),
    users: dict[str, str] | None = None,
    extra: str = "",
    wrap: Sequence[str] = (),
    serve_args: Sequence[str] = (),
) -> Iterator[EdgeServer]:
    """A configured, populated, running edge; stopped (and checked for a clean exit) after.
    `wrap` prefixes the server's command line (e.g. `ip netns exec NS`)."""
    data_dir = tmp / "var"
    udp = free_port()
    tcp = udp
    tls = free_port()
    config = tmp / "edge.toml"
    write_config(config, data_dir, udp, tcp, tls, upstream=upstream, trusted=trusted, extra=extra)
    edge = EdgeServer(data_dir, config, udp, tcp, tls, wrap=list(wrap), serve_args=list(serve_args))
    r = edge.cli("tenant", "add", "acme", "--domain", DOMAIN)
    assert r.returncode == 0, r.stderr
    for user, password in (users or USERS).items():
        r = edge.cli("line", "add", f"{user}@{DOMAIN}", "--tenant", "acme", "--password", password)
        assert r.returncode == 0, r.stderr
    edge.start()
    try:
        yield edge
    finally:
        code = edge.stop()
        assert code in (0, None), f"edge exited with {code}\n{edge.log()}"
