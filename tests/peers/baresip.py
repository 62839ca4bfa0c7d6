"""A headless baresip softphone: registers through the edge and auto-answers calls.

    phone = Baresip(tmp / "carol", user="carol", password="pw", edge=edge.address,
                    local_ip=phone_ip(5))
    with phone.start():
        phone.wait_registered(5)
        ... call carol ...
        phone.wait_for(ESTABLISHED, 5)

What baresip 1.0 does, and how we read it back:
- config dir (-f) written per run: `config` (SIP socket on `local_ip`, codecs, fake
  audio devices) and `accounts` (one account with `outbound=` the edge, `regint`,
  `answermode=auto`);
- no sound card: `ausine` feeds a 440 Hz tone (it only runs at 48 kHz stereo, hence the
  ausrc/auplay settings; baresip resamples for PCMU) and `aubridge` swallows playback;
- state comes from its console output (flushed line by line): a register reply line
  `{0/TCP/v4} 200 OK`, "Call established", "session closed"; `-s` adds a SIP trace;
- `-t lifetime` makes it quit by itself; stop() sends SIGTERM (it unregisters first).

Gotcha: libre 1.1 does not bind outgoing TCP connections to `sip_listen`, so over TCP
the edge sees the phone's connection come from 127.0.0.1 (the kernel's choice for a
loopback destination), while Via/Contact say `local_ip`. Over UDP it sends from
`local_ip:sip_port`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

from . import SIP_DOMAIN, BoundedProcess, Transport, free_port, require_tool, wait_until

__all__ = ["ANSWERED", "CLOSED", "ESTABLISHED", "REGISTERED", "REGISTER_FAILED", "Baresip"]

# Console lines of baresip 1.0 (ANSI colours removed).
REGISTERED = re.compile(r"\{\d+/(?:UDP|TCP|TLS)/v[46]\} 2\d\d ")
REGISTER_FAILED = re.compile(r"\{\d+/(?:UDP|TCP|TLS)/v[46]\} [3-6]\d\d |Register: ")
ANSWERED = re.compile(r"call: answering call on line \d+ from ")
ESTABLISHED = re.compile(r": Call established: ")
# Printed whenever a call ends (a BYE from the peer reads "Connection reset by peer").
# baresip's "Call with ... terminated" line is skipped for calls shorter than 1 s.
CLOSED = re.compile(r": session closed\b")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Baresip:
    """One baresip process with one account, auto-answering."""

    def __init__(
        self,
        workdir: Path,
        *,
        user: str,
        password: str,
        edge: str,
        local_ip: str,
        domain: str = SIP_DOMAIN,
        sip_port: int | None = None,
        transport: Transport = "tcp",
        regint: int = 60,
        answermode: str = "auto",
        lifetime: float = 60.0,
        sip_trace: bool = True,
    ) -> None:
        self.workdir = workdir
        self.user = user
        self.password = password
        self.edge = edge
        self.local_ip = local_ip
        self.domain = domain
        self.sip_port = sip_port or free_port(local_ip, "both")
        self.transport: Transport = transport
        self.regint = regint
        self.answermode = answermode
        self.lifetime = lifetime
        self.sip_trace = sip_trace
        self._process: BoundedProcess | None = None

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "poll_method": "epoll",
            "sip_listen": f"{self.local_ip}:{self.sip_port}",
            # Media address too; without it baresip picks the first non-loopback one.
            "net_interface": self.local_ip,
            # Every peer is an IP; should anything need DNS, it stays on this phone.
            "dns_server": f"{self.local_ip}:53",
            "audio_player": "aubridge,nowhere",
            "audio_alert": "aubridge,nowhere",
            "audio_source": "ausine,440",
            "ausrc_srate": "48000",
            "ausrc_channels": "2",
            "auplay_srate": "48000",
            "auplay_channels": "2",
            "module_path": "/usr/lib/baresip/modules",
        }
        lines = [f"{key}\t\t{value}" for key, value in config.items()]
        lines += [f"module\t\t{m}.so" for m in ("g711", "ausine", "aubridge")]
        # account: the account line; menu: prints call progress (and "terminated").
        lines += [f"module_app\t\t{m}.so" for m in ("account", "menu")]
        (self.workdir / "config").write_text("\n".join(lines) + "\n", encoding="utf-8")
        account = (
            f"<sip:{self.user}@{self.domain};transport={self.transport}>"
            f";auth_pass={self.password}"
            f';outbound="sip:{self.edge};transport={self.transport}"'
            f";regint={self.regint}"
            f";answermode={self.answermode}"
        )
        (self.workdir / "accounts").write_text(account + "\n", encoding="utf-8")

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("baresip already started")
        binary = require_tool("baresip", "baresip")
        self._write_config()
        argv = [binary, "-f", str(self.workdir), "-t", str(max(1, round(self.lifetime)))]
        if self.sip_trace:
            argv.append("-s")
        self._process = BoundedProcess(
            argv,
            cwd=self.workdir,
            stdout=self.workdir / "baresip.out",
            stderr=self.workdir / "baresip.err",
        )
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        """Console output so far, colours removed."""
        if self._process is None:
            return ""
        return _ANSI.sub("", self._process.stdout_text() + self._process.stderr_text())

    def count(self, pattern: re.Pattern[str]) -> int:
        return len(pattern.findall(self.output()))

    def registered(self) -> bool:
        return self.count(REGISTERED) > 0

    def wait_registered(self, timeout: float = 5.0) -> None:
        """Wait for a 2xx to REGISTER; fail at once on a rejected one or an early exit."""

        def check() -> bool:
            out = self.output()
            if REGISTERED.search(out):
                return True
            if REGISTER_FAILED.search(out) or not self.running:
                raise AssertionError(f"baresip did not register:\n{out[-3000:]}")
            return False

        wait_until(check, timeout, what=f"baresip {self.aor} to register")

    def wait_for(self, pattern: re.Pattern[str], timeout: float, count: int = 1) -> None:
        """Wait until `pattern` has appeared `count` times in the output."""
        try:
            wait_until(
                lambda: self.count(pattern) >= count,
                timeout,
                what=f"baresip {self.aor}: {count} x {pattern.pattern!r}",
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.output()[-3000:]}") from None

    def stop(self) -> int | None:
        """SIGTERM (baresip unregisters, then exits), SIGKILL after 5 s."""
        if self._process is None:
            return None
        return self._process.stop(grace=5.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
