"""The reference edge: Kamailio as a minimal registrar + stateful proxy (kamailio.cfg).

    with Kamailio(tmp / "kamailio", users={"alice": "pw1", "bob": "pw2"}) as edge:
        edge.start()
        ... point SIPp/baresip at edge.address (127.0.0.1:<free port>) ...
        assert edge.contacts("bob")

Kamailio runs in the foreground (-DD -E) under timeout(1) (`lifetime`), logs to
`<workdir>/kamailio.log`, listens only on `ip:port` (UDP and TCP) and keeps every file it
makes in `workdir`. Users live in a
db_text table loaded into an htable at start; registrations live in memory only.
bench/proxy.py starts it the same way, with the worker count it measures (`workers`).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from . import (
    EDGE_IP,
    SIP_DOMAIN,
    UPSTREAM_IP,
    BoundedProcess,
    free_port,
    require_tool,
    wait_until,
)

__all__ = ["CFG", "Kamailio"]

CFG = Path(__file__).with_name("kamailio.cfg")

# db_text escapes ':' and '\\' and keeps one row per line, and a user name must fit a
# SIP URI user part: a plain alphabet for both sidesteps escaping altogether.
_PLAIN = re.compile(r"[A-Za-z0-9_.+!~*'()&=$-]+")
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux, with room for the NUL


class Kamailio:
    """One Kamailio process; start() returns once it answers SIP over UDP."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str],
        ip: str = EDGE_IP,
        port: int | None = None,
        domain: str = SIP_DOMAIN,
        upstream: tuple[str, int] = (UPSTREAM_IP, 5060),
        workers: int = 1,
        cfg: Path = CFG,
        shm_mb: int = 64,
        pkg_mb: int = 8,
        debug: int = 2,
        lifetime: float = 1800.0,
    ) -> None:
        for name, password in users.items():
            if not (_PLAIN.fullmatch(name) and _PLAIN.fullmatch(password)):
                raise ValueError(f"user {name!r}: names and passwords must match {_PLAIN.pattern}")
        self.workdir = workdir
        self.users = dict(users)
        self.ip = ip
        self.port = port or free_port(ip, "both")
        self.domain = domain
        self.upstream = upstream
        self.workers = workers
        self.cfg = cfg
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.debug = debug
        self.lifetime = lifetime
        self._process: BoundedProcess | None = None
        self._rundir: Path | None = None
        self._own_rundir = False

    @property
    def address(self) -> str:
        """The edge as "ip:port": the remote host (and -rsa) for SIPp."""
        return f"{self.ip}:{self.port}"

    @property
    def ctl_socket(self) -> str:
        if self._rundir is None:
            raise RuntimeError("kamailio not started")
        return f"unix:{self._rundir / 'ctl'}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    def argv(self, binary: str = "kamailio") -> list[str]:
        """The command line (also what bench/proxy.py reports it ran)."""
        if self._rundir is None:
            raise RuntimeError("kamailio not started")
        up_ip, up_port = self.upstream
        return [
            binary,
            "-DD",  # foreground, still forking its worker processes
            "-E",
            "-f", str(self.cfg),
            "-w", str(self.workdir),
            "-Y", str(self._rundir),
            "-n", str(self.workers),
            "-m", str(self.shm_mb),
            "-M", str(self.pkg_mb),
            "--debug", str(self.debug),
            "-l", f"udp:{self.ip}:{self.port}",
            "-l", f"tcp:{self.ip}:{self.port}",
            "-A", f'SIP_DOMAIN="{self.domain}"',
            "-A", f'UPSTREAM_URI="sip:{up_ip}:{up_port}"',
            "-A", f'UPSTREAM_IP="{up_ip}"',
            "-A", f'USERS_DB_URL="text://{self.workdir / "db"}"',
            "-A", f'CTL_SOCKET="{self.ctl_socket}"',
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> Self:
        if self._process is not None:
            raise RuntimeError("kamailio already started")
        binary = require_tool("kamailio", "kamailio")
        require_tool("kamcmd", "kamailio")
        # Kamailio has no lifetime of its own: timeout(1) bounds it even if our process
        # dies without cleaning up (it relays our SIGTERM to Kamailio meanwhile).
        timeout_bin = require_tool("timeout", "coreutils")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_users()
        self._rundir = self.workdir / "run"
        if len(str(self._rundir / "ctl")) > _UNIX_SOCKET_MAX:
            self._rundir = Path(tempfile.mkdtemp(prefix="kamailio-run-"))
            self._own_rundir = True
        self._rundir.mkdir(parents=True, exist_ok=True)
        self._process = BoundedProcess(
            [timeout_bin, "-k", "5", f"{self.lifetime:g}s", *self.argv(binary)],
            cwd=self.workdir,
            stdout=self.workdir / "kamailio.stdout",
            stderr=self.log_path,
        )
        try:
            wait_until(self._answers_options, timeout, interval=0.05, what="kamailio to answer")
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"kamailio did not come up on {self.address}:\n{self.log()[-4000:]}"
            ) from None
        return self

    def _write_users(self) -> None:
        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        # db_text layout of htable's table: key_type 0 = name, value_type 0 = string.
        rows = [
            "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) "
            "expires(int) "
        ]
        rows += [f"{i}:{name}:0:0:{pw}:0" for i, (name, pw) in enumerate(self.users.items(), 1)]
        (db / "users").write_text("\n".join(rows) + "\n", encoding="utf-8")

    def _answers_options(self) -> bool:
        """One OPTIONS probe from the edge's own address: True on any 200."""
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"kamailio exited during start:\n{self.log()[-4000:]}")
        call_id = uuid.uuid4().hex
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.ip, 0))
            sock.settimeout(0.2)
            local_port = sock.getsockname()[1]
            probe = (
                f"OPTIONS sip:{self.address} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.ip}:{local_port};branch=z9hG4bK{call_id};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:probe@{self.ip}>;tag={call_id[:8]}\r\n"
                f"To: <sip:{self.address}>\r\n"
                f"Call-ID: {call_id}\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            sock.sendto(probe.encode(), (self.ip, self.port))
            try:
                reply = sock.recv(65535)
            except TimeoutError:
                return False
        return reply.startswith(b"SIP/2.0 200")

    def rpc(self, *command: str, timeout: float = 5.0) -> str:
        """Run one RPC command through kamcmd (e.g. "ul.dump") and return its output."""
        kamcmd = require_tool("kamcmd", "kamailio")
        done = subprocess.run(
            [kamcmd, "-s", self.ctl_socket, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout + done.stderr

    def contacts(self, user: str) -> list[str]:
        """Contact URIs registered for `user` right now ([] if none)."""
        output = self.rpc("ul.lookup", "location", user)
        return re.findall(r"^\s*Address:\s*(\S+)", output, flags=re.MULTILINE)

    def received(self, user: str) -> list[str]:
        """Source addresses ("sip:ip:port;transport=...") the contacts of `user` were
        registered from, for those registered from a NAT or over TCP ([] otherwise)."""
        output = self.rpc("ul.lookup", "location", user)
        return re.findall(r"^\s*Received:\s*(sip:\S+)", output, flags=re.MULTILINE)

    def forget_registrations(self) -> None:
        """Remove every binding of every user: a clean location table between tests."""
        for user in self.users:
            self.rpc("ul.rm", "location", user)

    def log(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM (Kamailio stops its workers and exits), SIGKILL after 5 s."""
        code = None
        if self._process is not None:
            code = self._process.stop(grace=5.0)
        if self._own_rundir and self._rundir is not None:
            shutil.rmtree(self._rundir, ignore_errors=True)
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
