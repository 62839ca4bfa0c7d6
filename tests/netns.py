"""Throwaway network namespaces for tests that touch nftables.

Nothing here changes the host: each namespace has only its own loopback (all of 127/8 is
local there once `lo` is up). `socket_in` creates a socket inside a namespace from a
short-lived thread (a socket stays in the namespace it was created in, whichever thread
uses it later), so a test can talk to a server in the namespace with ordinary sockets.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
NFT = shutil.which("nft", path=PATH)
IP = shutil.which("ip", path=PATH)
_CLONE_NEWNET = 0x40000000


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=check)


@contextmanager
def netns() -> Iterator[str]:
    """A new namespace with `lo` up; removed afterwards. Fails loudly without root/tools."""
    if IP is None or NFT is None:
        pytest.fail("nft and ip (iproute2) are required: apt-get install -y nftables iproute2")
    name = f"sg-{secrets.token_hex(4)}"
    added = sh(IP, "netns", "add", name, check=False)
    if added.returncode != 0:
        pytest.fail(f"cannot create a network namespace (root needed): {added.stderr.strip()}")
    try:
        sh(IP, "netns", "exec", name, IP, "link", "set", "lo", "up")
        yield name
    finally:
        sh(IP, "netns", "del", name, check=False)


def exec_prefix(ns: str) -> list[str]:
    assert IP is not None
    return [IP, "netns", "exec", ns]


def enter(ns: str) -> None:
    """Move the calling thread into namespace `ns` (a fresh thread or process only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def http_get_in(ns: str, host: str, port: int, path: str) -> bytes:
    """The body of a plain HTTP/1.1 GET to a server inside `ns`."""
    s = socket_in(ns, kind=socket.SOCK_STREAM)
    with s:
        s.settimeout(5)
        s.connect((host, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


def socket_in(
    ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM
) -> socket.socket:
    """A socket created inside namespace `ns`."""
    result: list[socket.socket | BaseException] = []

    def enter_and_create() -> None:
        try:
            enter(ns)
            result.append(socket.socket(family, kind))
        except BaseException as exc:
            result.append(exc)

    # The thread ends right after, taking its namespace switch with it.
    t = threading.Thread(target=enter_and_create)
    t.start()
    t.join()
    (out,) = result
    if isinstance(out, BaseException):
        raise out
    return out
