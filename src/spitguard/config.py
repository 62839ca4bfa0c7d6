"""The one typed settings model: an optional TOML file plus `SPITGUARD_*` environment variables.

Environment variables override the file; nested keys use `__` (`SPITGUARD_SIP__ADVERTISED_HOST`).
With neither, the defaults are the embedded default: SQLite under `./var/`, listening on
127.0.0.1 only. Every key is documented in docs/configuration.md (a test enforces it).

Loading problems surface as `ConfigError` with one human-readable line per problem naming
the key (and its environment variable); pydantic's own exceptions never leave this module.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from .guard.trusted import parse_entry
from .sip import SipParseError, SipUri, parse_uri

ENV_PREFIX = "SPITGUARD_"
ENV_NESTED_DELIMITER = "__"
SECRET_KEY_FILE = "secret.key"  # noqa: S105 - a file name, not a secret
DATABASE_FILE = "spitguard.db"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"

# Keys whose values must never be echoed in an error (a Fernet key, a URL with a password).
_SENSITIVE_KEYS = frozenset({"secret_key", "database_url"})
_UPSTREAM_TRANSPORTS = frozenset({"udp", "tcp", "tls"})
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - recognised, never bound here
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and what to do."""


class _KeyProblem(ValueError):
    """A cross-field problem that belongs to one named key of the model raising it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


# --- reusable field types -----------------------------------------------------------------


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return value


def _check_host(value: str) -> str:
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # "[::1]" as written in URIs; sockets want the bare address
    if not host:
        raise ValueError("must not be empty")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _HOSTNAME_RE.fullmatch(host) is None:
        raise ValueError("must be an IP address or a host name")
    return host.lower()


def _split_list(value: Any) -> Any:
    """Environment variables hold lists as JSON or as comma-separated items."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not a valid JSON list ({exc.msg})") from None
    return [item.strip() for item in text.split(",") if item.strip()]


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("must be an IP address of this host, e.g. 192.0.2.7") from None


Port = Annotated[int, AfterValidator(_check_port)]
Host = Annotated[str, AfterValidator(_check_host)]
Positive = Annotated[float, Field(gt=0)]
EnvList = BeforeValidator(_split_list)


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections ---------------------------------------------------------------------------


class Listen(_Section):
    """One socket the edge listens on. Also accepted as "transport:host:port"."""

    transport: Literal["udp", "tcp", "tls"]
    host: Host
    port: Port

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        transport, sep, hostport = data.strip().partition(":")
        host, sep2, port = hostport.rpartition(":")
        if not sep or not sep2 or not host:
            raise ValueError(
                'must be a table {transport, host, port} or a string "transport:host:port" '
                'such as "udp:127.0.0.1:5060"'
            )
        return {"transport": transport.lower(), "host": host, "port": port}

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def _default_listen() -> list[Listen]:
    return [
        Listen(transport="udp", host="127.0.0.1", port=5060),
        Listen(transport="tcp", host="127.0.0.1", port=5060),
        Listen(transport="tls", host="127.0.0.1", port=5061),
    ]


class SipSettings(_Section):
    listen: Annotated[list[Listen], NoDecode, EnvList, Field(min_length=1)] = Field(
        default_factory=_default_listen
    )
    advertised_host: Host | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_size: Annotated[int, Field(ge=1024, le=1_048_576)] = 65535
    user_agent: Annotated[str, Field(min_length=1, max_length=256)] = "spitguard"
    # The kernel's default UDP buffers (~208 KiB) overflow during a burst or a GC pause;
    # the kernel caps what we ask at net.core.rmem_max / wmem_max.
    udp_buffer_size: Annotated[int, Field(ge=65_536, le=268_435_456)] = 4_194_304
    # Per side (server, client). UDP transactions linger 32 s (64*T1) after their final
    # response, so this bounds the sustainable call rate: about limit / 64 calls/s.
    max_transactions: Annotated[int, Field(ge=100, le=10_000_000)] = 200_000

    @model_validator(mode="after")
    def _check(self) -> SipSettings:
        seen: set[tuple[str, str, int]] = set()
        for entry in self.listen:
            key = (entry.transport, entry.host, entry.port)
            if key in seen:
                raise _KeyProblem("listen", f"{entry} is listed twice")
            seen.add(key)
        if self.advertised_host is None and self.listen[0].host in _WILDCARD_HOSTS:
            raise _KeyProblem(
                "advertised_host",
                f"required when the first listen host is the wildcard {self.listen[0].host}: "
                "set the address phones and trunks reach this edge at",
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise _KeyProblem(
                "tls_key" if self.tls_key is None else "tls_cert",
                "tls_cert and tls_key must be given together (or neither, for a generated "
                "self-signed certificate)",
            )
        for name, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if path is not None and not path.is_file():
                raise _KeyProblem(name, f"file not found: {path}")
        return self

    @property
    def effective_advertised_host(self) -> str:
        """The host written into Via and Record-Route."""
        return self.advertised_host or self.listen[0].host


DigestAlgorithm = Literal["MD5", "SHA-256"]
DEFAULT_DIGEST_ALGORITHMS: tuple[DigestAlgorithm, ...] = ("MD5",)


class RegistrarSettings(_Section):
    min_expires: Annotated[int, Field(ge=1)] = 60
    max_expires: Annotated[int, Field(ge=1)] = 3600
    default_expires: Annotated[int, Field(ge=1)] = 3600
    nonce_ttl: Positive = 300.0
    # MD5 only by default: some clients (libre/baresip 1.x) reject the whole 401 when any
    # challenge uses an algorithm they lack, and many desk phones know only MD5. Offer
    # SHA-256 (RFC 8760) when every phone of the installation supports it.
    digest_algorithms: Annotated[list[DigestAlgorithm], NoDecode, EnvList, Field(min_length=1)] = (
        Field(default_factory=lambda: list(DEFAULT_DIGEST_ALGORITHMS))
    )

    @model_validator(mode="after")
    def _check(self) -> RegistrarSettings:
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise _KeyProblem(
                "default_expires",
                f"must satisfy min_expires <= default_expires <= max_expires "
                f"(got {self.min_expires} <= {self.default_expires} <= {self.max_expires})",
            )
        return self


class UpstreamSettings(_Section):
    targets: Annotated[list[str], NoDecode, EnvList] = Field(default_factory=list)
    trusted_sources: Annotated[list[str], NoDecode, EnvList] = Field(default_factory=list)

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, targets: list[str]) -> list[str]:
        for i, text in enumerate(targets):
            _parse_target(i, text)
        return [t.strip() for t in targets]

    @field_validator("trusted_sources")
    @classmethod
    def _check_sources(cls, sources: list[str]) -> list[str]:
        return _check_trusted_entries("upstream", sources)

    @property
    def target_uris(self) -> list[SipUri]:
        return [_parse_target(i, t) for i, t in enumerate(self.targets)]


def _check_trusted_entries(group: str, entries: list[str]) -> list[str]:
    """CIDRs (host bits masked) and DNS names (`name`, `srv:name`, `naptr:name`)."""
    out = []
    for i, text in enumerate(entries):
        stripped = text.strip()
        try:
            out.append(str(ipaddress.ip_network(stripped, strict=False)))
            continue
        except ValueError:
            pass
        try:
            parse_entry(group, stripped)
        except ValueError:
            raise _KeyProblem(
                f"[{i}]",
                f"{text!r} is not an IP address, a CIDR such as 127.0.2.1/32, or a DNS name "
                "(optionally srv:NAME or naptr:NAME)",
            ) from None
        out.append(stripped)
    return out


def _parse_target(index: int, text: str) -> SipUri:
    hint = "must be a SIP URI such as sip:127.0.2.1:5060;transport=udp"
    try:
        uri = parse_uri(text.strip())
    except SipParseError:
        raise _KeyProblem(f"[{index}]", f"{text!r} {hint}") from None
    if not isinstance(uri, SipUri):
        raise _KeyProblem(f"[{index}]", f"{text!r} {hint}")
    if uri.transport is not None and uri.transport not in _UPSTREAM_TRANSPORTS:
        raise _KeyProblem(f"[{index}]", f"{text!r}: transport must be udp, tcp or tls")
    return uri


class KeepaliveSettings(_Section):
    udp_interval: Positive = 25.0
    udp_method: Literal["options", "crlf"] = "options"
    stream_interval: Positive = 90.0


class BudgetSettings(_Section):
    """At most `limit` requests per `window` seconds; no limit when `limit` is unset."""

    limit: Annotated[int, Field(ge=1)] | None
    window: Positive = 2.0


class GroupBudgetSettings(_Section):
    registrations: BudgetSettings
    keepalives: BudgetSettings
    other: BudgetSettings


RateGroup = Literal["untrusted", "registered", "upstream", "peers"]


def _default_rates() -> dict[RateGroup, GroupBudgetSettings]:
    def g(limit: int | None) -> GroupBudgetSettings:
        b = BudgetSettings(limit=limit)
        return GroupBudgetSettings(registrations=b, keepalives=b, other=b)

    untrusted = GroupBudgetSettings(
        registrations=BudgetSettings(limit=120),
        keepalives=BudgetSettings(limit=10),
        other=BudgetSettings(limit=16),
    )
    return {"untrusted": untrusted, "registered": g(400), "upstream": g(None), "peers": g(2000)}


class GuardSettings(_Section):
    invite_policy: Literal["allow", "trusted", "upstream"] = "trusted"
    peers: Annotated[list[str], NoDecode, EnvList] = Field(default_factory=list)
    dns_servers: Annotated[list[str], NoDecode, EnvList] = Field(default_factory=list)
    dns_timeout: Positive = 2.0
    max_message_size: Annotated[int, Field(ge=1024, le=65535)] = 16384
    max_ruri_length: Annotated[int, Field(ge=64, le=8192)] = 512
    reject_code: Annotated[int, Field(ge=400, le=699)] = 403
    reject_reasons: Annotated[list[str], NoDecode, EnvList] = Field(default_factory=list)
    rates: dict[RateGroup, GroupBudgetSettings] = Field(default_factory=_default_rates)
    ban_first: Positive = 300.0
    ban_factor: Annotated[float, Field(ge=1.0)] = 12.0
    ban_max: Positive = 7 * 86400.0
    ban_memory: Positive = 86400.0
    enum_distinct_users: Annotated[int, Field(ge=1)] = 20
    enum_users_window: Positive = 60.0
    enum_auth_failures: Annotated[int, Field(ge=1)] = 5
    enum_failures_window: Positive = 300.0
    events_retention_days: Positive = 30.0
    events_max_pending: Annotated[int, Field(ge=100)] = 20000
    events_flush_interval: Positive = 2.0

    @field_validator("peers")
    @classmethod
    def _check_peers(cls, peers: list[str]) -> list[str]:
        return _check_trusted_entries("peers", peers)

    @field_validator("dns_servers")
    @classmethod
    def _check_dns(cls, servers: list[str]) -> list[str]:
        for i, text in enumerate(servers):
            try:
                _dns_server(text)
            except ValueError:
                raise _KeyProblem(
                    f"[{i}]", f"{text!r} must be an IP address, optionally with :port"
                ) from None
        return [t.strip() for t in servers]

    @property
    def nameservers(self) -> list[tuple[str, int]] | None:
        return [_dns_server(t) for t in self.dns_servers] or None

    @field_validator("rates")
    @classmethod
    def _check_rates(
        cls, rates: dict[RateGroup, GroupBudgetSettings]
    ) -> dict[RateGroup, GroupBudgetSettings]:
        merged = _default_rates()
        merged.update(rates)  # a file may set one group and keep the others' defaults
        return merged


def _dns_server(text: str) -> tuple[str, int]:
    """`IP`, `IP:port` or `[IPv6]:port`."""
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    ipaddress.ip_address(host)
    return host, _check_port(int(port)) if port else 53


class MetricsSettings(_Section):
    enabled: bool = True
    host: Host = "127.0.0.1"
    port: Port = 9460


class FirewallSettings(_Section):
    nftables: Literal["auto", "on", "off"] = "auto"
    table: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")] = "spitguard"
    nft: str = "nft"
    flush_interval: Annotated[float, Field(gt=0, le=10)] = 0.2


class WebSettings(_Section):
    enabled: bool = True
    host: Host = "127.0.0.1"
    port: Port = 8080
    # Portal logins: how long a session lasts, and how wrong passwords are slowed down
    # (per account and source address) before that pair is refused for a while.
    session_lifetime: float = Field(default=12 * 3600.0, ge=60.0, le=30 * 86400.0)
    login_free_failures: int = Field(default=3, ge=1, le=100)
    login_max_failures: int = Field(default=10, ge=2, le=1000)
    login_lockout: float = Field(default=900.0, ge=1.0, le=86400.0)


class ProvisionSettings(_Section):
    """The boot server under /provision/ (served by the web server)."""

    realm: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e ]+$")] = (
        "spitguard-provision"
    )
    nonce_ttl: Positive = 300.0
    digest_algorithms: Annotated[list[DigestAlgorithm], NoDecode, EnvList, Field(min_length=1)] = (
        Field(default_factory=lambda: list(DEFAULT_DIGEST_ALGORITHMS))
    )
    max_upload_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    reload_interval: Positive = 1.0
    sweep_unknown_macs: Annotated[int, Field(ge=1)] = 10
    sweep_window: Positive = 300.0
    auth_failures: Annotated[int, Field(ge=1)] = 10
    auth_failures_window: Positive = 300.0
    rate_limit: Annotated[int, Field(ge=1)] | None = 300
    rate_window: Positive = 10.0
    fetch_log_flush_interval: Positive = 1.0
    resync_poll_interval: Positive = 1.0
    resync_timeout: Positive = 40.0
    tls_port: Port | None = None
    tls_client_ca: Path | None = None


class AuditSettings(_Section):
    """Audits the server starts through the API or the portal (registered phones only)."""

    # Send from this local address: phones trust the edge's own address, so an audit sent
    # from it would find validated phones ringing; give one the phones do not trust.
    source: Annotated[str, AfterValidator(_check_ip)] | None = None
    max_targets: Annotated[int, Field(ge=1, le=100_000)] = 256


# --- the settings ---------------------------------------------------------------------------


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_ignore_empty=True,  # `SPITGUARD_X=` means "not set", not "set to nothing"
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path("var")
    database_url: str | None = Field(default=None, repr=False)
    secret_key: SecretStr | None = None
    sip: SipSettings = Field(default_factory=SipSettings)
    registrar: RegistrarSettings = Field(default_factory=RegistrarSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    keepalive: KeepaliveSettings = Field(default_factory=KeepaliveSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    firewall: FirewallSettings = Field(default_factory=FirewallSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    provision: ProvisionSettings = Field(default_factory=ProvisionSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)

    @field_validator("data_dir", mode="before")
    @classmethod
    def _check_data_dir(cls, value: Any) -> Any:
        # Before conversion: Path("") would silently become Path(".").
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError:
            raise ValueError(
                "must be an SQLAlchemy URL such as postgresql+asyncpg://user:pass@host/db"
            ) from None
        return value

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(value.get_secret_value().strip().encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(
                "must be a Fernet key (32 bytes, url-safe base64); generate one with: "
                'python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"'
            )
        return SecretStr(value.get_secret_value().strip())

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / DATABASE_FILE}"

    @property
    def secret_key_file(self) -> Path:
        """Where the generated key lives when `secret_key` is not given."""
        return self.data_dir / SECRET_KEY_FILE

    @property
    def tls_cert_file(self) -> Path:
        return self.sip.tls_cert or self.data_dir / TLS_CERT_FILE

    @property
    def tls_key_file(self) -> Path:
        return self.sip.tls_key or self.data_dir / TLS_KEY_FILE


# --- loading ------------------------------------------------------------------------------


def load_settings(path: Path | None = None) -> Settings:
    """Settings from `path` (TOML, optional) overridden by `SPITGUARD_*` variables."""
    data = {} if path is None else _read_toml(path)
    where = f" in {path}" if path is not None else ""
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors(include_url=False)]
    except SettingsError as exc:
        # Raised by pydantic-settings before validation, e.g. a JSON env value that is not.
        problems = [f"{_strip_secrets(str(exc))} (check the SPITGUARD_* environment variables)"]
    if len(problems) == 1:
        raise ConfigError(f"invalid configuration{where}: {problems[0]}")
    listing = "".join(f"\n  {p}" for p in problems)
    raise ConfigError(f"invalid configuration{where}:{listing}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file is a directory: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _describe(err: Any) -> str:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    message: str = err["msg"]
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, _KeyProblem):
        loc = (*loc, cause.key)
        message = cause.message
    elif err["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against docs/configuration.md)"
    elif err["type"] == "missing":
        message = "is required"
    else:
        message = _plain(message)
    key = _key_text(loc)
    value = err.get("input")
    sensitive = bool(loc) and loc[0] in _SENSITIVE_KEYS
    if (
        not sensitive
        and not isinstance(cause, _KeyProblem)
        and err["type"] not in ("extra_forbidden", "missing")
        and isinstance(value, str | int | float | bool)
    ):
        message += f" (got {value!r})"
    env = _env_name(loc)
    return f"{key}: {message} [env {env}]" if env else f"{key}: {message}"


def _plain(message: str) -> str:
    """pydantic's "Value error, must be ..." → "must be ..."."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message[:1].lower() + message[1:]


def _key_text(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("["):
            out += part
        else:
            out += f".{part}" if out else part
    return out or "(configuration)"


def _env_name(loc: tuple[str | int, ...]) -> str | None:
    """The variable setting this key; lists are set as a whole, so stop at an index."""
    names: list[str] = []
    for part in loc:
        if isinstance(part, int) or part.startswith("["):
            break
        names.append(part.upper())
    if not names:
        return None
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(names)


def _strip_secrets(text: str) -> str:
    # SettingsError messages name the field only; cut anything after a colon to be safe.
    return text.split(":", 1)[0]
