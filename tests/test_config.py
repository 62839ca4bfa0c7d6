"""Settings: embedded defaults, TOML, environment overrides, error messages, docs coverage."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from spitguard.config import (
    ConfigError,
    Listen,
    Settings,
    load_settings,
)
from spitguard.sip import SipUri

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
GOOD_FERNET_KEY = "q2Bz3mSg1n2y1TdvHnXl0h8v9mOZ2M8nqHk3Q1xJm0s="


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SPITGUARD_* variables from the developer's shell leak into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("SPITGUARD_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spitguard.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, toml: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, toml))
    return str(info.value)


# --- defaults -----------------------------------------------------------------------------


def test_defaults_are_the_embedded_default() -> None:
    s = load_settings(None)
    assert s.data_dir == Path("var")
    assert s.effective_database_url == "sqlite+aiosqlite:///var/spitguard.db"
    assert s.secret_key is None
    assert [str(listen) for listen in s.sip.listen] == [
        "udp:127.0.0.1:5060",
        "tcp:127.0.0.1:5060",
        "tls:127.0.0.1:5061",
    ]
    # Everything listens on loopback only.
    assert {listen.host for listen in s.sip.listen} == {"127.0.0.1"}
    assert s.web.host == "127.0.0.1" and s.web.port == 8080
    assert s.sip.effective_advertised_host == "127.0.0.1"
    assert s.sip.max_message_size == 65535 and s.sip.user_agent == "spitguard"
    assert (s.registrar.min_expires, s.registrar.default_expires, s.registrar.max_expires) == (
        60,
        3600,
        3600,
    )
    assert s.registrar.nonce_ttl == 300 and s.registrar.digest_algorithms == ["MD5"]
    assert s.upstream.targets == [] and s.upstream.trusted_sources == []
    assert s.keepalive.udp_interval == 25.0 and s.keepalive.udp_method == "options"
    assert s.keepalive.stream_interval == 90.0
    assert s.secret_key_file == Path("var/secret.key")
    assert s.tls_cert_file == Path("var/tls.crt") and s.tls_key_file == Path("var/tls.key")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == Settings()


# --- TOML ---------------------------------------------------------------------------------


def test_toml_file(tmp_path: Path) -> None:
    cert = tmp_path / "edge.crt"
    key = tmp_path / "edge.key"
    cert.write_text("cert")
    key.write_text("key")
    s = load_settings(
        write(
            tmp_path,
            f"""
            data_dir = "{tmp_path / "data"}"
            database_url = "postgresql+asyncpg://u:pw@db/spitguard"
            secret_key = "{GOOD_FERNET_KEY}"
            [sip]
            advertised_host = "Edge.Example.NET"
            tls_cert = "{cert}"
            tls_key = "{key}"
            listen = [{{transport = "udp", host = "127.0.0.1", port = 5070}}, "tls:[::1]:5071"]
            [registrar]
            min_expires = 30
            default_expires = 600
            max_expires = 1200
            digest_algorithms = ["SHA-256"]
            [upstream]
            targets = ["sip:127.0.2.1:5060;transport=udp"]
            trusted_sources = ["127.0.2.1", "10.1.2.3/24"]
            [keepalive]
            udp_method = "crlf"
            [web]
            port = 8443
            """,
        )
    )
    assert s.data_dir == tmp_path / "data"
    assert s.effective_database_url == "postgresql+asyncpg://u:pw@db/spitguard"
    assert s.secret_key is not None and s.secret_key.get_secret_value() == GOOD_FERNET_KEY
    assert s.sip.listen == [
        Listen(transport="udp", host="127.0.0.1", port=5070),
        Listen(transport="tls", host="::1", port=5071),
    ]
    assert s.sip.effective_advertised_host == "edge.example.net"
    assert s.tls_cert_file == cert and s.tls_key_file == key
    assert s.registrar.digest_algorithms == ["SHA-256"]
    assert (s.registrar.min_expires, s.registrar.default_expires) == (30, 600)
    assert s.upstream.trusted_sources == ["127.0.2.1/32", "10.1.2.0/24"]
    uri = s.upstream.target_uris[0]
    assert isinstance(uri, SipUri) and uri.host == "127.0.2.1" and uri.transport == "udp"
    assert s.keepalive.udp_method == "crlf" and s.web.port == 8443


def test_database_url_and_secret_key_are_not_in_repr(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            'database_url = "postgresql+asyncpg://u:hunter2@db/x"\n'
            f'secret_key = "{GOOD_FERNET_KEY}"',
        )
    )
    assert "hunter2" not in repr(s)
    assert GOOD_FERNET_KEY not in repr(s)


# --- environment --------------------------------------------------------------------------


def test_env_overrides_file_including_nested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        """
        data_dir = "from-file"
        [sip]
        advertised_host = "file.example.com"
        user_agent = "file-agent"
        [web]
        port = 9000
        """,
    )
    monkeypatch.setenv("SPITGUARD_DATA_DIR", "from-env")
    monkeypatch.setenv("SPITGUARD_SIP__ADVERTISED_HOST", "env.example.com")
    monkeypatch.setenv("SPITGUARD_WEB__PORT", "9001")
    s = load_settings(path)
    assert s.data_dir == Path("from-env")
    assert s.sip.advertised_host == "env.example.com"
    assert s.sip.user_agent == "file-agent"  # the rest of the section still comes from the file
    assert s.web.port == 9001
    assert s.effective_database_url == "sqlite+aiosqlite:///from-env/spitguard.db"


def test_env_lists_as_json_or_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPITGUARD_SIP__LISTEN", "udp:0.0.0.0:5060, tls:0.0.0.0:5061")
    monkeypatch.setenv("SPITGUARD_SIP__ADVERTISED_HOST", "edge.example.net")
    monkeypatch.setenv("SPITGUARD_UPSTREAM__TRUSTED_SOURCES", '["127.0.2.1/32", "::1"]')
    monkeypatch.setenv("SPITGUARD_UPSTREAM__TARGETS", "sip:127.0.2.1:5060;transport=tcp")
    s = load_settings(None)
    assert [str(x) for x in s.sip.listen] == ["udp:0.0.0.0:5060", "tls:0.0.0.0:5061"]
    assert s.upstream.trusted_sources == ["127.0.2.1/32", "::1/128"]
    assert s.upstream.targets == ["sip:127.0.2.1:5060;transport=tcp"]


def test_empty_env_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPITGUARD_DATABASE_URL", "")
    assert load_settings(None).database_url is None


def test_env_error_names_key_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPITGUARD_SIP__MAX_MESSAGE_SIZE", "lots")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    message = str(info.value)
    assert "sip.max_message_size" in message
    assert "SPITGUARD_SIP__MAX_MESSAGE_SIZE" in message
    assert "'lots'" in message


# --- validation messages ------------------------------------------------------------------

INVALID = [
    (
        "[[sip.listen]]\ntransport='udp'\nhost='127.0.0.1'\nport=0",
        "sip.listen[0].port",
        "1 and 65535",
    ),
    (
        "[[sip.listen]]\ntransport='udp'\nhost='127.0.0.1'\nport=70000",
        "sip.listen[0].port",
        "70000",
    ),
    (
        "[[sip.listen]]\ntransport='sctp'\nhost='127.0.0.1'\nport=5060",
        "sip.listen[0].transport",
        "sctp",
    ),
    ("[[sip.listen]]\ntransport='udp'\nhost=''\nport=5060", "sip.listen[0].host", "empty"),
    (
        "[[sip.listen]]\ntransport='udp'\nhost='bad host'\nport=5060",
        "sip.listen[0].host",
        "host name",
    ),
    ("[sip]\nlisten=['udp:127.0.0.1']", "sip.listen[0]", "transport:host:port"),
    ("[sip]\nlisten=[]", "sip.listen", "at least 1"),
    ("[sip]\nlisten=['udp:127.0.0.1:5060', 'udp:127.0.0.1:5060']", "sip.listen", "twice"),
    ("[sip]\nlisten=['udp:0.0.0.0:5060']", "sip.advertised_host", "wildcard"),
    ("[sip]\nadvertised_host=''", "sip.advertised_host", "empty"),
    ("[sip]\ntls_cert='/nonexistent/cert.pem'", "sip.tls_key", "together"),
    (
        "[sip]\ntls_cert='/nonexistent/c.pem'\ntls_key='/nonexistent/k.pem'",
        "sip.tls_cert",
        "not found",
    ),
    ("[sip]\nmax_message_size=10", "sip.max_message_size", "1024"),
    (
        "[registrar]\nmin_expires=600\ndefault_expires=300",
        "registrar.default_expires",
        "min_expires",
    ),
    ("[registrar]\ndefault_expires=7200", "registrar.default_expires", "max_expires"),
    ("[registrar]\nmin_expires=0", "registrar.min_expires", "greater than or equal to 1"),
    ("[registrar]\nnonce_ttl=0", "registrar.nonce_ttl", "greater than 0"),
    ("[upstream]\ntrusted_sources=['127.0.2.1/33']", "upstream.trusted_sources[0]", "CIDR"),
    ("[upstream]\ntrusted_sources=['10.0.0.300']", "upstream.trusted_sources[0]", "CIDR"),
    ("[guard]\npeers=['bad name!']", "guard.peers[0]", "DNS name"),
    ("[upstream]\ntargets=['http://127.0.2.1']", "upstream.targets[0]", "SIP URI"),
    ("[upstream]\ntargets=['tel:+15551234']", "upstream.targets[0]", "SIP URI"),
    ("[upstream]\ntargets=['sip:127.0.2.1;transport=ws']", "upstream.targets[0]", "transport"),
    ("[keepalive]\nudp_method='ping'", "keepalive.udp_method", "'options' or 'crlf'"),
    ("[keepalive]\nstream_interval=-1", "keepalive.stream_interval", "greater than 0"),
    ("[web]\nport=0", "web.port", "1 and 65535"),
    ("[web]\nhost=' '", "web.host", "empty"),
    ("data_dir=''", "data_dir", "empty"),
    ("database_url='not a url'", "database_url", "SQLAlchemy URL"),
    ("secret_key='too-short'", "secret_key", "Fernet key"),
    ("[sip]\nadverstised_host='x'", "sip.adverstised_host", "unknown key"),
    ("colour='blue'", "colour", "unknown key"),
    ("sip = 3", "sip", "dictionary"),
]


@pytest.mark.parametrize(("toml", "key", "hint"), INVALID)
def test_each_validation_error_names_the_key(
    tmp_path: Path, toml: str, key: str, hint: str
) -> None:
    message = error_of(tmp_path, toml)
    assert f"{key}:" in message, message
    assert hint in message, message
    assert "Traceback" not in message and "pydantic" not in message.lower()
    assert "\n" not in message  # a single problem is a single line


def test_several_problems_are_listed_one_per_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[web]\nport=0\nhost=''")
    lines = message.splitlines()
    assert lines[0].startswith("invalid configuration in")
    assert any(line.strip().startswith("web.port:") for line in lines[1:])
    assert any(line.strip().startswith("web.host:") for line in lines[1:])


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    message = error_of(tmp_path, "secret_key = 'SUPERSECRETVALUE'")
    assert "SUPERSECRETVALUE" not in message
    message = error_of(tmp_path, "database_url = 'postgres ql://u:SUPERSECRET@h/db'")
    assert "SUPERSECRET" not in message


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 1"):
        load_settings(write(tmp_path, "data_dir = \n"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"user_agent = '\xe9'")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(bad)


# --- documentation ------------------------------------------------------------------------


def _model_of(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, bool]]:
    """(dotted key, whether it has an environment variable of its own), recursively.

    A section (a nested model) is documented by its `[section]` heading."""
    out: list[tuple[str, bool]] = []
    in_list = "[]" in prefix
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        origin = typing.get_origin(annotation)
        nested = _model_of(annotation)
        if nested is not None:
            out.append((f"[{key}]", False))
            out.extend(_keys(nested, f"{key}."))
            continue
        out.append((key, not in_list))
        if origin is list and args and _model_of(args[0]) is not None:
            out.extend(_keys(args[0], f"{key}[]."))
        elif origin in (typing.Union, types.UnionType):
            for arg in args:
                if _model_of(arg) is not None:
                    out.extend(_keys(arg, f"{key}."))
    return out


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    keys = _keys(Settings)
    assert len(keys) > 25  # the walk really descended into the sections
    missing = [key for key, _ in keys if f"`{key}`" not in text]
    assert not missing, f"document these keys in {DOCS}: {missing}"
    env_missing = [
        key
        for key, has_env in keys
        if has_env and "SPITGUARD_" + key.upper().replace(".", "__") not in text
    ]
    assert not env_missing, f"document the environment variables of: {env_missing}"


def test_documented_example_is_valid(tmp_path: Path) -> None:
    text = DOCS.read_text()
    example = re.search(r"## Full example\s+```toml\n(.*?)```", text, re.S)
    assert example is not None
    toml = example.group(1)
    # The example points at real certificate paths; stand in files for them.
    for name in ("edge.crt", "edge.key"):
        (tmp_path / name).write_text("pem")
        toml = toml.replace(f"/etc/spitguard/{name}", str(tmp_path / name))
    s = load_settings(write(tmp_path, toml))
    assert s.sip.effective_advertised_host == "edge.example.net"
    assert s.effective_database_url.startswith("postgresql+asyncpg://")
