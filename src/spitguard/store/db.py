"""Opening the store: engine, SQLite pragmas, migrations to head, sessions and repositories."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from ..config import Settings
from .crypto import SecretBox, load_or_create_key
from .errors import AlreadyExistsError, StoreError
from .models import INVENTORY_REVISION_KEY, Revision
from .repos import (
    AdminRepo,
    AuditRepo,
    BanRepo,
    BindingRepo,
    DeviceRepo,
    EventRepo,
    FetchLogRepo,
    LineRepo,
    ProfileRepo,
    ResyncRepo,
    TenantRepo,
    UploadRepo,
    ViewRepo,
)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 5000

# Execution option marking a connection whose transaction will write (see _sqlite_begin).
_WRITE_OPTION = "spitguard_write"

Clock = Callable[[], float]


class Store:
    """The open store: sessions, repositories and the inventory revision."""

    def __init__(self, engine: AsyncEngine, box: SecretBox, clock: Clock = time.time) -> None:
        self.engine = engine
        self.box = box
        self.clock = clock
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.tenants = TenantRepo(self)
        self.lines = LineRepo(self)
        self.bindings = BindingRepo(self)
        self.bans = BanRepo(self)
        self.events = EventRepo(self)
        self.devices = DeviceRepo(self)
        self.profiles = ProfileRepo(self)
        self.fetches = FetchLogRepo(self)
        self.uploads = UploadRepo(self)
        self.admins = AdminRepo(self)
        self.views = ViewRepo(self)
        self.resyncs = ResyncRepo(self)
        self.audits = AuditRepo(self)

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"Store({url})"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session in a read-only transaction."""
        async with _translated_errors(), self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits on success and rolls back on error.

        On SQLite the transaction takes the write lock up front (BEGIN IMMEDIATE): a
        read-then-write transaction that upgraded its lock later would fail at once with
        "database is locked" whenever another process wrote in between, busy_timeout or not.
        """
        async with _translated_errors(), self.sessions() as session, session.begin():
            await session.connection(execution_options={_WRITE_OPTION: True})
            yield session

    async def get_revision(self, key: str = INVENTORY_REVISION_KEY) -> int:
        """A change counter ("inventory", "bans"): compare with a cached value to notice
        CLI edits."""
        async with self.read() as session:
            value = await session.scalar(select(Revision.value).where(Revision.key == key))
        return int(value or 0)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def open_store(settings: Settings, *, clock: Clock = time.time) -> Store:
    """Create the data dir, load (or create) the secret key, connect, migrate to head."""
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create data_dir {settings.data_dir}: {exc.strerror}") from None
    box = SecretBox(load_or_create_key(settings))
    engine = create_engine(settings.effective_database_url)
    _create_private_sqlite_file(engine)
    try:
        if engine.dialect.name == "sqlite":
            await _enable_wal(engine)
        await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    return Store(engine, box, clock)


def create_engine(url: str) -> AsyncEngine:
    try:
        # hide_parameters: bound values (sealed passwords, contacts) stay out of exceptions.
        engine = create_async_engine(url, hide_parameters=True)
    except (ArgumentError, ImportError, ValueError) as exc:
        shown = _safe_url(url)
        raise StoreError(f"cannot use database_url {shown}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


async def migrate(engine: AsyncEngine) -> None:
    """Run the Alembic migrations to head, in one transaction; a no-op when at head."""
    async with _translated_errors(), engine.connect() as conn:
        conn = await conn.execution_options(**{_WRITE_OPTION: True})
        async with conn.begin():
            await conn.run_sync(_upgrade_to_head)


def _upgrade_to_head(connection: Connection) -> None:
    config = Config()
    # Config values go through configparser interpolation, hence the doubled "%".
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _create_private_sqlite_file(engine: AsyncEngine) -> None:
    """Create a new SQLite file as 0600 (its -wal/-shm files inherit that) before SQLite
    creates it with the umask's permissions: it holds sealed passwords and registrations."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:"):
        return  # URI filename: leave it to SQLite
    try:
        fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create the database file {database}: {exc.strerror}") from None
    os.close(fd)  # an empty file is a valid empty SQLite database


async def _enable_wal(engine: AsyncEngine) -> None:
    """Switch the database file to WAL (persistent), so the server keeps reading while the
    CLI writes. Switching fails at once with "database is locked" (SQLite does not call the
    busy handler for it) while another process switches too, hence the retries."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    async with _translated_errors(), engine.connect() as conn:
        # The raw driver connection: the pragma must run outside any transaction.
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        while True:
            try:
                cursor = await raw.execute("PRAGMA journal_mode=WAL")
                await cursor.close()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"cannot switch the database to WAL mode: {exc}") from None
                await asyncio.sleep(0.02)


def _sqlite_connect(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    # The sqlite3 module's own implicit BEGIN skips DDL and cannot take the write lock
    # early; turn it off and let _sqlite_begin emit BEGIN itself.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough in WAL mode, much faster
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    writing = bool(conn.get_execution_options().get(_WRITE_OPTION))
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


@asynccontextmanager
async def _translated_errors() -> AsyncIterator[None]:
    """Database exceptions as StoreError: one readable line, no SQL, no parameters."""
    try:
        yield
    except IntegrityError as exc:
        raise AlreadyExistsError(
            f"the change conflicts with existing data ({_reason(exc)}); it may have been "
            "made concurrently, so list the current state and retry"
        ) from None
    except DBAPIError as exc:
        raise StoreError(f"database error: {_reason(exc)}") from None


def _reason(exc: DBAPIError) -> str:
    text = str(exc.orig).strip().splitlines()
    return text[0] if text else type(exc.orig).__name__


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"
