"""Portal and API accounts: admin users (argon2id), portal sessions and API tokens.

Session and token values are 256-bit random strings handed to the client once; the store
keeps only their SHA-256, looked up by equality (a preimage, not a guess, is needed to
match). Passwords are checked with argon2 in a worker thread: a hash takes tens of
milliseconds, which the edge's event loop must not spend.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Row, Select, delete, select, update

from ..errors import AlreadyExistsError, InvalidInputError, NotFoundError, UnknownTenantError
from ..models import AdminSession, AdminUser, ApiToken, Tenant
from ._sql import _now, _rowcount

if TYPE_CHECKING:
    from ..db import Store

Role = Literal["operator", "tenant_admin"]
ROLES: tuple[Role, ...] = ("operator", "tenant_admin")
MIN_ADMIN_PASSWORD = 12
MAX_ADMIN_PASSWORD = 256
_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TOKEN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Prefix of API tokens, so a leaked one is recognisable (secret scanners, logs review).
TOKEN_USE_RESOLUTION = 60.0
TOKEN_PREFIX = "sgt_"  # noqa: S105 - a prefix, not a secret

_hasher = PasswordHasher()
# Checked when the user does not exist, so unknown users cost the same as wrong passwords.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class AdminInfo:
    """A user without the password hash; `tenant` is set for tenant admins."""

    id: int
    username: str
    role: Role
    tenant_id: int | None
    tenant: str | None
    created_at: datetime

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    username: str
    name: str
    created_at: float
    last_used_at: float | None


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def normalize_username(username: str) -> str:
    value = username.strip().lower()
    if not _USERNAME_RE.fullmatch(value):
        raise InvalidInputError(
            "invalid user name: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_admin_password(password: str) -> None:
    if not MIN_ADMIN_PASSWORD <= len(password) <= MAX_ADMIN_PASSWORD:
        raise InvalidInputError(
            f"the password must be {MIN_ADMIN_PASSWORD}-{MAX_ADMIN_PASSWORD} characters long"
        )


def _role(value: str) -> Role:
    for role in ROLES:
        if value == role:
            return role
    raise InvalidInputError(f"role must be one of {', '.join(ROLES)}")


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


_USER_COLUMNS = (
    AdminUser.id,
    AdminUser.username,
    AdminUser.role,
    AdminUser.tenant_id,
    Tenant.name,
    AdminUser.created_at,
)


def _user_query() -> Select[int, str, str, int | None, str, datetime]:
    return select(*_USER_COLUMNS).outerjoin(Tenant, Tenant.id == AdminUser.tenant_id)


def _admin_info(row: Row[int, str, str, int | None, str, datetime] | tuple[Any, ...]) -> AdminInfo:
    uid, username, role, tenant_id, tenant, created = row[:6]
    return AdminInfo(uid, username, _role(role), tenant_id, tenant, created)


class AdminRepo:
    """Admin users, their portal sessions and their API tokens."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # --- users ---------------------------------------------------------------------------

    async def add(
        self, username: str, password: str, *, role: str = "operator", tenant: str | None = None
    ) -> AdminInfo:
        name = normalize_username(username)
        kind = _role(role)
        if (kind == "tenant_admin") != (tenant is not None):
            raise InvalidInputError("a tenant admin needs a tenant; an operator has none")
        check_admin_password(password)
        hashed = await asyncio.to_thread(_hasher.hash, password)
        now = _now(self._store)
        async with self._store.write() as session:
            tenant_id = None
            if tenant is not None:
                tenant_name = tenant.strip().lower()
                tenant_id = await session.scalar(
                    select(Tenant.id).where(Tenant.name == tenant_name)
                )
                if tenant_id is None:
                    raise UnknownTenantError(tenant_name)
            exists = await session.scalar(select(AdminUser.id).where(AdminUser.username == name))
            if exists is not None:
                raise AlreadyExistsError(f'admin user "{name}" already exists')
            session.add(
                AdminUser(
                    username=name,
                    password_hash=hashed,
                    role=kind,
                    tenant_id=tenant_id,
                    created_at=now,
                    updated_at=now,
                )
            )
        info = await self.get(name)
        assert info is not None
        return info

    async def set_password(self, username: str, password: str) -> AdminInfo:
        """Change the password and end the user's portal sessions (tokens stay)."""
        name = normalize_username(username)
        check_admin_password(password)
        hashed = await asyncio.to_thread(_hasher.hash, password)
        async with self._store.write() as session:
            uid = await session.scalar(select(AdminUser.id).where(AdminUser.username == name))
            if uid is None:
                raise NotFoundError(f'admin user "{name}" does not exist')
            await session.execute(
                update(AdminUser)
                .where(AdminUser.id == uid)
                .values(password_hash=hashed, updated_at=_now(self._store))
            )
            await session.execute(delete(AdminSession).where(AdminSession.user_id == uid))
        info = await self.get(name)
        assert info is not None
        return info

    async def get(self, username: str) -> AdminInfo | None:
        try:
            name = normalize_username(username)
        except InvalidInputError:
            return None
        async with self._store.read() as session:
            row = (await session.execute(_user_query().where(AdminUser.username == name))).first()
        return None if row is None else _admin_info(row)

    async def list(self) -> builtins.list[AdminInfo]:
        async with self._store.read() as session:
            rows = await session.execute(_user_query().order_by(AdminUser.username))
            return [_admin_info(r) for r in rows]

    async def delete(self, username: str) -> bool:
        name = normalize_username(username)
        async with self._store.write() as session:
            result = await session.execute(delete(AdminUser).where(AdminUser.username == name))
        return _rowcount(result) > 0

    async def authenticate(self, username: str, password: str) -> AdminInfo | None:
        """The user when the password is right; None otherwise, unknown users included,
        after the same argon2 work either way."""
        try:
            name = normalize_username(username)
        except InvalidInputError:
            name = None
        hashed: str | None = None
        if name is not None:
            async with self._store.read() as session:
                hashed = await session.scalar(
                    select(AdminUser.password_hash).where(AdminUser.username == name)
                )
        ok = await asyncio.to_thread(_verify, hashed or _DUMMY_HASH, password[:MAX_ADMIN_PASSWORD])
        if not ok or hashed is None or name is None:
            return None
        return await self.get(name)

    # --- portal sessions ------------------------------------------------------------------

    async def open_session(self, user_id: int, *, lifetime: float) -> str:
        """A new session for the user; returns the cookie value (shown only now)."""
        token = new_secret()
        now = self._store.clock()
        async with self._store.write() as session:
            # Housekeeping on the way: sessions past their end are of no use to anyone.
            await session.execute(delete(AdminSession).where(AdminSession.expires_at <= now))
            session.add(
                AdminSession(
                    token_hash=secret_digest(token),
                    user_id=user_id,
                    created_at=now,
                    expires_at=now + lifetime,
                )
            )
        return token

    async def session_user(self, token: str) -> AdminInfo | None:
        now = self._store.clock()
        async with self._store.read() as session:
            row = (
                await session.execute(
                    _user_query()
                    .join(AdminSession, AdminSession.user_id == AdminUser.id)
                    .where(
                        AdminSession.token_hash == secret_digest(token),
                        AdminSession.expires_at > now,
                    )
                )
            ).first()
        return None if row is None else _admin_info(row)

    async def close_session(self, token: str) -> None:
        async with self._store.write() as session:
            await session.execute(
                delete(AdminSession).where(AdminSession.token_hash == secret_digest(token))
            )

    # --- API tokens -----------------------------------------------------------------------

    async def create_token(self, username: str, name: str) -> str:
        """A new API token acting as the user; returns it (shown only now)."""
        user = normalize_username(username)
        label = name.strip()
        if not _TOKEN_NAME_RE.fullmatch(label):
            raise InvalidInputError("invalid token name: use 1-64 letters, digits, '.', '_' or '-'")
        token = TOKEN_PREFIX + new_secret()
        async with self._store.write() as session:
            uid = await session.scalar(select(AdminUser.id).where(AdminUser.username == user))
            if uid is None:
                raise NotFoundError(f'admin user "{user}" does not exist')
            clash = await session.scalar(
                select(ApiToken.id).where(ApiToken.user_id == uid, ApiToken.name == label)
            )
            if clash is not None:
                raise AlreadyExistsError(f'user "{user}" already has a token named "{label}"')
            session.add(
                ApiToken(
                    user_id=uid,
                    name=label,
                    token_hash=secret_digest(token),
                    created_at=self._store.clock(),
                    last_used_at=None,
                )
            )
        return token

    async def token_user(self, token: str) -> AdminInfo | None:
        digest = secret_digest(token)
        async with self._store.read() as session:
            row = (
                await session.execute(
                    _user_query()
                    .add_columns(ApiToken.last_used_at)
                    .join(ApiToken, ApiToken.user_id == AdminUser.id)
                    .where(ApiToken.token_hash == digest)
                )
            ).first()
        if row is None:
            return None
        now = self._store.clock()
        last_used = row[-1]
        # Noted at most once a minute: a script's every request must not take the write lock.
        if last_used is None or now - last_used >= TOKEN_USE_RESOLUTION:
            async with self._store.write() as session:
                await session.execute(
                    update(ApiToken).where(ApiToken.token_hash == digest).values(last_used_at=now)
                )
        return _admin_info(tuple(row))

    async def revoke_token(self, username: str, name: str) -> bool:
        user = normalize_username(username)
        async with self._store.write() as session:
            uid = await session.scalar(select(AdminUser.id).where(AdminUser.username == user))
            if uid is None:
                return False
            result = await session.execute(
                delete(ApiToken).where(ApiToken.user_id == uid, ApiToken.name == name.strip())
            )
        return _rowcount(result) > 0

    async def tokens(self, username: str | None = None) -> builtins.list[TokenInfo]:
        query = (
            select(ApiToken, AdminUser.username)
            .join(AdminUser, AdminUser.id == ApiToken.user_id)
            .order_by(AdminUser.username, ApiToken.name)
        )
        if username is not None:
            query = query.where(AdminUser.username == normalize_username(username))
        async with self._store.read() as session:
            rows = await session.execute(query)
            return [TokenInfo(t.id, user, t.name, t.created_at, t.last_used_at) for t, user in rows]
