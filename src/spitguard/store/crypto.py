"""Encryption of phone SIP passwords at rest (Fernet: AES-128-CBC + HMAC-SHA256).

The registrar needs the plaintext password to verify digests, so passwords are encrypted
rather than hashed. The key comes from `secret_key` in the settings or is generated at first
start into `data_dir/secret.key` (mode 0600) and reused afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import string
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from ..config import Settings
from .errors import SecretKeyError


class SecretBox:
    """Seals and opens short secrets. Neither the key nor any plaintext shows in its repr."""

    __slots__ = ("_fernet",)

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise SecretKeyError(
                "the secret key is not a valid Fernet key (32 bytes, url-safe base64)"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except (InvalidToken, UnicodeDecodeError):
            # `from None`: the cause would carry nothing useful and must not carry the token.
            raise SecretKeyError(
                "cannot decrypt a stored password: the secret key is not the one the "
                "passwords were encrypted with (check secret_key or data_dir/secret.key)"
            ) from None


def load_or_create_key(settings: Settings) -> bytes:
    """`settings.secret_key`, else the key file in data_dir, created (0600) when absent."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode("ascii")
    path = settings.secret_key_file
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _publish_new_key(path)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretKeyError(
                f"{path} is accessible by other users; restrict it with: chmod 600 {path}"
            )
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecretKeyError(f"cannot read the secret key {path}: {exc.strerror}") from None
    SecretBox(key)  # validate now, with a clear message, rather than at first decrypt
    return key


def _publish_new_key(path: Path) -> None:
    """Write a fresh key to a private temp file, then link it into place.

    link() fails if the name exists, so when two processes start together exactly one key
    wins and both read that one; nobody ever sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left over by a crashed process that had our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 20) -> str:
    """A random SIP password: letters and digits only (~119 bits at 20 characters), since
    they survive every phone's keypad, web form and XML/INI config without escaping."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))
