"""Store errors: each message is one human sentence, safe to show (never holds a secret)."""

from __future__ import annotations


class StoreError(Exception):
    """A store operation was refused or failed; `str(exc)` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AlreadyExistsError(StoreError):
    """A tenant, domain, line or auth user of that name is already there."""


class NotFoundError(StoreError):
    """The named tenant, domain or line does not exist."""


class UnknownTenantError(NotFoundError):
    def __init__(self, tenant: str) -> None:
        super().__init__(f'tenant "{tenant}" does not exist')
        self.tenant = tenant


class UnknownLineError(NotFoundError):
    def __init__(self, aor: str) -> None:
        super().__init__(f'line "{aor}" does not exist')
        self.aor = aor


class InvalidInputError(StoreError):
    """A name, domain, AOR or password does not have an acceptable form."""


class SecretKeyError(StoreError):
    """The secret key is missing, unreadable, malformed or not the one data was sealed with."""
