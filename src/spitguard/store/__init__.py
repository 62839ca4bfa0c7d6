"""The store: SQLAlchemy (async) models and repositories, Alembic migrations, secret sealing.

store = await open_store(settings)      # creates data_dir, migrates to head
await store.tenants.add("acme", ["acme.example.com"])
await store.lines.add("1001@acme.example.com", tenant="acme", password=...)
await store.close()
"""

from .crypto import SecretBox, generate_password, load_or_create_key
from .db import Store, open_store
from .errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    SecretKeyError,
    StoreError,
    UnknownLineError,
    UnknownTenantError,
)
from .repos import (
    BindingRecord,
    BindingRepo,
    DirectoryEntry,
    LineInfo,
    LineRepo,
    ParsedAor,
    TenantInfo,
    TenantRepo,
    check_password,
    normalize_domain,
    normalize_tenant_name,
    parse_aor,
)

__all__ = [
    "AlreadyExistsError",
    "BindingRecord",
    "BindingRepo",
    "DirectoryEntry",
    "InvalidInputError",
    "LineInfo",
    "LineRepo",
    "NotFoundError",
    "ParsedAor",
    "SecretBox",
    "SecretKeyError",
    "Store",
    "StoreError",
    "TenantInfo",
    "TenantRepo",
    "UnknownLineError",
    "UnknownTenantError",
    "check_password",
    "generate_password",
    "load_or_create_key",
    "normalize_domain",
    "normalize_tenant_name",
    "open_store",
    "parse_aor",
]
