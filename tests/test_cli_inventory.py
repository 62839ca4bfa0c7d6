"""`spitguard tenant …` and `spitguard line …`, run as the real console script."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

SPITGUARD = Path(sys.executable).with_name("spitguard")
PASSWORD = "Cli-Passw0rd-4711"


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "var"
        self.config = tmp_path / "spitguard.toml"
        self.config.write_text(f'data_dir = "{self.data_dir}"\n')
        # Run from tmp_path with no SPITGUARD_* variables: only the TOML file counts.
        self.cwd = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPITGUARD_")}

    def __call__(
        self, *args: str, stdin: str | None = None, config: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(SPITGUARD), *args]
        if config:
            argv += ["--config", str(self.config)]
        return subprocess.run(
            argv,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=self.env,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout

    def fails(self, *args: str, stdin: str | None = None, config: bool = True) -> str:
        """Exit 2 with one `error:` line on stderr and no traceback; returns that line."""
        result = self(*args, stdin=stdin, config=config)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def acme(cli: Cli) -> Cli:
    out = cli.ok("tenant", "add", "acme", "--domain", "acme.example.com", "--domain", "Acme.ORG")
    assert out.strip() == 'added tenant "acme" with domains: acme.example.com, acme.org'
    return cli


def test_console_script_is_installed() -> None:
    assert SPITGUARD.exists(), "run: .venv/bin/pip install -e '.[dev]'"


def test_tenant_add_and_list(acme: Cli) -> None:
    acme.ok("tenant", "add", "globex", "--domain", "globex.example.com")
    text = acme.ok("tenant", "list")
    lines = text.splitlines()
    assert lines[0].split() == ["TENANT", "DOMAINS", "CREATED"]
    assert lines[1].startswith("acme") and "acme.example.com, acme.org" in lines[1]
    assert lines[2].startswith("globex")
    data = json.loads(acme.ok("tenant", "list", "--json"))
    assert [(t["name"], t["domains"]) for t in data] == [
        ("acme", ["acme.example.com", "acme.org"]),
        ("globex", ["globex.example.com"]),
    ]
    assert data[0]["created_at"].endswith("+00:00")
    # --config also works before the action.
    result = acme("tenant", "--config", str(acme.config), "list", "--json", config=False)
    assert result.returncode == 0 and json.loads(result.stdout) == data
    # The data went where the TOML file says, nowhere else.
    assert (acme.data_dir / "spitguard.db").exists()
    assert not (acme.cwd / "var" / "secret.key").exists() or acme.data_dir == acme.cwd / "var"


def test_empty_lists(cli: Cli) -> None:
    assert cli.ok("tenant", "list", "--json").strip() == "[]"
    result = cli("line", "list")
    assert result.returncode == 0 and result.stdout == ""
    assert "spitguard line add" in result.stderr


def test_line_add_list_passwd(acme: Cli) -> None:
    out = acme.ok(
        "line",
        "add",
        "1001@acme.example.com",
        "--tenant",
        "acme",
        "--password",
        PASSWORD,
        "--display-name",
        "Front desk",
    )
    assert out.strip() == 'added line sip:1001@acme.example.com to tenant "acme" (auth user 1001)'
    assert PASSWORD not in out

    out = acme.ok("line", "add", "sip:1002@acme.org", "--tenant", "acme", "--generate")
    generated = [line for line in out.splitlines() if line.startswith("password: ")]
    assert len(generated) == 1
    secret = generated[0].removeprefix("password: ")
    assert len(secret) >= 16 and secret.isalnum()

    out = acme.ok(
        "line", "add", "1003@acme.org", "--tenant", "acme", "--auth-user", "u1003",
        "--password-stdin", stdin="Stdin-Passw0rd\n",
    )  # fmt: skip
    assert "(auth user u1003)" in out

    listing = acme.ok("line", "list")
    assert listing.splitlines()[0].split()[:3] == ["AOR", "TENANT", "AUTH"]
    assert "Front desk" in listing and "u1003" in listing
    for secret_text in (PASSWORD, secret, "Stdin-Passw0rd"):
        assert secret_text not in listing

    data = json.loads(acme.ok("line", "list", "--tenant", "acme", "--json"))
    assert [d["aor"] for d in data] == [
        "sip:1001@acme.example.com",
        "sip:1002@acme.org",
        "sip:1003@acme.org",
    ]
    assert data[0]["display_name"] == "Front desk" and data[1]["display_name"] is None
    assert all("password" not in key for d in data for key in d)
    raw_json = json.dumps(data)
    assert PASSWORD not in raw_json and secret not in raw_json

    out = acme.ok("line", "passwd", "1001@acme.example.com", "--generate")
    new_secret = out.splitlines()[-1].removeprefix("password: ")
    assert "changed the password of line sip:1001@acme.example.com" in out
    assert new_secret != PASSWORD and len(new_secret) >= 16
    acme.ok("line", "passwd", "sip:1002@acme.org", "--password", "Replaced-Passw0rd")

    # Passwords are stored encrypted: not in the database file in any form.
    with sqlite3.connect(acme.data_dir / "spitguard.db") as conn:
        sealed = [row[0] for row in conn.execute("SELECT password_enc FROM lines")]
    for token in sealed:
        for plain in (PASSWORD, secret, new_secret, "Replaced-Passw0rd"):
            assert plain.encode() not in token


def test_errors_exit_2_with_a_hint(acme: Cli) -> None:
    line = acme.fails(
        "line", "add", "1001@acme.example.com", "--tenant", "nope", "--password", PASSWORD
    )
    assert line == (
        'error: tenant "nope" does not exist; '
        "create it with: spitguard tenant add nope --domain acme.example.com"
    )
    line = acme.fails("tenant", "add", "acme", "--domain", "other.example.com")
    assert line == 'error: tenant "acme" already exists'
    line = acme.fails("tenant", "add", "globex", "--domain", "acme.org")
    assert line == 'error: domain "acme.org" already belongs to tenant "acme"'
    line = acme.fails("tenant", "add", "bad name", "--domain", "x.example.com")
    assert "invalid tenant name" in line
    line = acme.fails(
        "line", "add", "1001@elsewhere.example.com", "--tenant", "acme", "--password", PASSWORD
    )
    assert 'is not a domain of tenant "acme"' in line
    line = acme.fails("line", "add", "not-an-aor", "--tenant", "acme", "--password", PASSWORD)
    assert "invalid AOR" in line and "user@domain" in line
    line = acme.fails("line", "add", "1001@acme.org", "--tenant", "acme", "--password", "short")
    assert "too short" in line and "short" not in line.split("too short", 1)[1]
    # No password option and stdin is not a terminal: refuse rather than hang.
    line = acme.fails("line", "add", "1001@acme.org", "--tenant", "acme")
    assert "--generate" in line
    acme.ok("line", "add", "1001@acme.org", "--tenant", "acme", "--password", PASSWORD)
    line = acme.fails("line", "add", "1001@acme.org", "--tenant", "acme", "--password", PASSWORD)
    assert line == 'error: line "sip:1001@acme.org" already exists'
    line = acme.fails("line", "passwd", "9999@acme.org", "--generate")
    assert 'line "sip:9999@acme.org" does not exist' in line
    assert "spitguard line list" in line
    line = acme.fails("line", "list", "--tenant", "nobody")
    assert "spitguard tenant add nobody" in line
    line = acme.fails("line", "passwd", "sip:1001:OldSecret@acme.org", "--generate")
    assert "OldSecret" not in line


def test_config_errors_exit_2(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    line = cli.fails("tenant", "list", "--config", str(missing), config=False)
    assert line == f"error: config file not found: {missing}"
    cli.config.write_text("[web]\nport = 0\n")
    line = cli.fails("tenant", "list")
    assert "web.port" in line and "between 1 and 65535" in line


def test_usage_errors_exit_2(cli: Cli) -> None:
    result = cli("line", "add", "1001@acme.org", "--password", "x", "--generate")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("tenant", "add", "acme")
    assert result.returncode == 2 and "--domain" in result.stderr
