"""`spitguard inspect` and the CLI entry point, run as the real console script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corpus import CORPORA, manifest, read
from spitguard import __version__
from spitguard.cli import DEFECT_HELP, explain_defect, main
from spitguard.sip import SipParseError, parse

LEGIT = CORPORA / "legit"
SCANNERS = CORPORA / "scanners"

CORPUS_FILES = [
    (folder, row["name"]) for folder in ("legit", "scanners", "rfc4475") for row in manifest(folder)
]
CREDENTIAL_FILES = [
    LEGIT / "cisco_csco4_register_proxy_authorization.sip",
    SCANNERS / "svcrack_v03_register_auth.sip",
    LEGIT / "polycom_vvx350_register_digest.sip",
]
SECRET_PARAMS = ("response", "nonce", "cnonce", "opaque")


def cli_command() -> list[str]:
    # Prefer the script next to this interpreter (the venv under test) over one on PATH.
    script = Path(sys.executable).with_name("spitguard")
    if script.exists():
        return [str(script)]
    found = shutil.which("spitguard")
    if found:
        return [found]
    return [sys.executable, "-m", "spitguard"]


def run(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    return subprocess.run(
        [*cli_command(), *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def run_json(*args: str, stdin: bytes | None = None) -> tuple[int, dict[str, Any]]:
    proc = run("inspect", "--json", *args, stdin=stdin)
    return proc.returncode, json.loads(proc.stdout)


def message(*headers: str, body: bytes = b"") -> bytes:
    lines = [
        "OPTIONS sip:bob@example.com SIP/2.0",
        "Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK776asdhds",
        "From: <sip:alice@example.com>;tag=1928301774",
        "To: <sip:bob@example.com>",
        "Call-ID: a84b4c76e66710",
        "CSeq: 1 OPTIONS",
        "Max-Forwards: 70",
        *headers,
        f"Content-Length: {len(body)}",
    ]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


def assert_clean_text(out: bytes) -> None:
    text = out.decode("utf-8")  # strict: undecodable bytes were escaped
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e]", text)
    assert "Traceback" not in text


# --- entry point ----------------------------------------------------------------------------


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode().strip() == f"spitguard {__version__}"


def test_python_dash_m() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "spitguard", "--version"], capture_output=True, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.decode().strip() == f"spitguard {__version__}"


@pytest.mark.parametrize("args", [["--help"], ["inspect", "--help"]])
def test_help_documents_exit_codes(args: list[str]) -> None:
    proc = run(*args)
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert "exit codes:" in out
    assert re.search(r"^\s+0\s+success", out, re.M)
    assert re.search(r"^\s+2\s+malformed input", out, re.M)


def test_usage_errors_exit_2() -> None:
    assert run().returncode == 2
    assert run("inspect").returncode == 2
    assert run("no-such-command").returncode == 2


def test_main_returns_int_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 2
    path = str(LEGIT / "patton_sn4634_200ok_record_route.sip")
    assert main(["inspect", path]) == 0
    assert capsys.readouterr().out.startswith("Response")


# --- corpora --------------------------------------------------------------------------------


def _oracle(folder: str, name: str) -> tuple[Any, SipParseError | None]:
    try:
        return parse(read(folder, name)), None
    except SipParseError as exc:
        return None, exc


@pytest.mark.parametrize(("folder", "name"), CORPUS_FILES)
def test_corpus_json(folder: str, name: str) -> None:
    msg, error = _oracle(folder, name)
    code, out = run_json(str(CORPORA / folder / name))
    if error is not None:
        assert code == 2
        assert out == {"error": "malformed", "reason": error.reason, "detail": out["detail"]}
        return
    assert code == 0
    assert out["kind"] == msg.kind
    if msg.kind == "request":
        assert out["method"] == msg.method
    else:
        assert out["status"] == msg.status
    assert len(out["via"]) == len(msg.vias)
    assert out["body_length"] == len(msg.body)
    assert out["max_forwards"] == msg.max_forwards
    assert {d["code"] for d in out["defects"]} == set(msg.defects)
    assert all(d["explanation"] for d in out["defects"])


@pytest.mark.parametrize(("folder", "name"), CORPUS_FILES)
def test_corpus_text_in_process(
    folder: str, name: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    _, error = _oracle(folder, name)
    code = main(["inspect", str(CORPORA / folder / name)])
    out, err = capsysbinary.readouterr()
    assert_clean_text(out)
    assert_clean_text(err)
    if error is not None:
        assert code == 2
        assert out == b""
        assert err.decode().startswith(f"malformed: {error.reason} (")
    else:
        assert code == 0
        assert out.startswith((b"Request ", b"Response "))
        assert err == b""


def test_rfc4475_invalid_messages_exit_2() -> None:
    invalid = [r["name"] for r in manifest("rfc4475") if r["expected"] == "invalid"]
    assert len(invalid) >= 19
    for name in invalid[:5]:
        proc = run("inspect", str(CORPORA / "rfc4475" / name))
        assert proc.returncode == 2, name
        assert proc.stdout == b""
        assert proc.stderr.startswith(b"malformed: ")


def test_response_summary() -> None:
    code, out = run_json(str(LEGIT / "patton_sn4634_200ok_record_route.sip"))
    assert code == 0
    assert out["status"] == 200 and out["reason"] == "OK"
    assert [v["branch"] for v in out["via"]] == [
        "z9hG4bK5feb18267ce40fb05969b4ba843681dbfc9ffcff",
        "z9hG4bK52b6a8b7",
    ]
    assert out["via"][0] == {
        "transport": "UDP",
        "sent_by": "194.213.29.100:5060",
        "branch": "z9hG4bK5feb18267ce40fb05969b4ba843681dbfc9ffcff",
        "received": None,
        "rport": None,
    }
    assert out["record_routes"] == ["<sip:194.213.29.100:5060;lr>"]
    assert out["to"] == {
        "display": None,
        "uri": "sip:designersink01@10.10.49.155:5060",
        "tag": "1144090013",
    }
    assert out["content_type"] == "application/sdp"
    assert out["body_length"] == 298
    assert out["server"].startswith("Patton SN4634")
    assert out["cseq"] == {"number": 102, "method": "INVITE"}


def test_request_text_summary() -> None:
    proc = run("inspect", str(LEGIT / "polycom_vvx350_register_digest.sip"))
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert text.startswith("Request ")
    assert "REGISTER sip:pierrefouquet.babblevoice.com;transport=udp" in text
    assert re.search(
        r"^Via\[0\] +UDP 82\.71\.31\.12:52917 branch=z9hG4bKd1d3d5e6E480CDD$", text, re.M
    )
    assert re.search(r'^From +"Pierre Test" <sip:1013@.*> tag=F87D2248-BCC05E87$', text, re.M)
    assert re.search(r"^Call-ID +c7f6bc72e0778e72f7055172226c01d1$", text, re.M)
    assert re.search(r"^CSeq +3 REGISTER$", text, re.M)
    assert re.search(r"^User-Agent +PolycomVVX-VVX_350-UA/5\.9\.5\.0614$", text, re.M)


def test_contact_details_and_rport() -> None:
    data = message(
        'Contact: "Desk" <sip:alice@192.0.2.1:5060;transport=tcp>;expires=600;'
        '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>";reg-id=1',
    ).replace(b"branch=z9hG4bK776asdhds", b"branch=z9hG4bK776asdhds;rport;received=198.51.100.7")
    code, out = run_json("-", stdin=data)
    assert code == 0
    assert out["contacts"] == [
        {
            "display": "Desk",
            "uri": "sip:alice@192.0.2.1:5060;transport=tcp",
            "expires": 600,
            "q": None,
            "sip_instance": "urn:uuid:00000000-0000-1000-8000-000a95a0e128",
            "reg_id": 1,
        }
    ]
    assert out["via"][0]["rport"] is True
    assert out["via"][0]["received"] == "198.51.100.7"
    text = run("inspect", "-", stdin=data).stdout.decode()
    assert (
        "expires=600 +sip.instance=urn:uuid:00000000-0000-1000-8000-000a95a0e128 reg-id=1" in text
    )
    assert "rport received" not in text and "received=198.51.100.7 rport" in text


def test_contact_star() -> None:
    data = message("Contact: *", "Expires: 0").replace(b"OPTIONS", b"REGISTER")
    code, out = run_json("-", stdin=data)
    assert code == 0
    assert out["contacts"] == "*"
    assert out["expires"] == 0


def test_defects_are_explained() -> None:
    code, out = run_json(str(CORPORA / "rfc4475" / "insuf.dat"))
    assert code == 0
    codes = {d["code"] for d in out["defects"]}
    assert codes == {"missing:from", "missing:to", "missing:call-id", "missing:max-forwards"}
    assert out["from"] is None and out["call_id"] is None
    text = run("inspect", str(CORPORA / "rfc4475" / "insuf.dat")).stdout.decode()
    assert "Defects:" in text
    assert "missing:call-id: the mandatory Call-ID header is missing" in text


@pytest.mark.parametrize(
    "code",
    [
        *DEFECT_HELP,
        "missing:via",
        "missing:from",
        "missing:cseq",
        "multiple:to",
        "multiple:content-type",
    ],
)
def test_every_defect_code_has_an_explanation(code: str) -> None:
    text = explain_defect(code)
    assert text and "no explanation" not in text
    assert "\n" not in text


def test_unknown_defect_code() -> None:
    assert "no explanation" in explain_defect("future:thing")


# --- input handling -------------------------------------------------------------------------


def test_stdin_matches_file() -> None:
    path = LEGIT / "polycom_spip650_invite.sip"
    from_file = run("inspect", str(path))
    from_stdin = run("inspect", "-", stdin=path.read_bytes())
    assert from_file.returncode == from_stdin.returncode == 0
    assert from_file.stdout == from_stdin.stdout


def test_empty_stdin() -> None:
    proc = run("inspect", "-", stdin=b"")
    assert proc.returncode == 2
    assert proc.stderr.startswith(b"malformed: ")


@pytest.mark.parametrize("as_json", [False, True])
def test_missing_file(tmp_path: Path, as_json: bool) -> None:
    missing = tmp_path / "nope.sip"
    proc = run("inspect", *(["--json"] if as_json else []), str(missing))
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert str(missing) in err and "No such file" in err
    assert "Traceback" not in err
    assert run("inspect", str(tmp_path)).returncode == 2  # a directory


def test_bare_lf_file_is_converted(tmp_path: Path) -> None:
    lf = read("legit", "polycom_vvx350_register_digest.sip").replace(b"\r\n", b"\n")
    path = tmp_path / "hand.sip"
    path.write_bytes(lf)
    code, out = run_json(str(path))
    assert code == 0
    assert out["line_ends_converted"] is True
    assert out["call_id"] == "c7f6bc72e0778e72f7055172226c01d1"
    assert "converted to CRLF" in run("inspect", str(path)).stdout.decode()


def test_file_with_a_cr_is_not_converted(tmp_path: Path) -> None:
    mixed = message(body=b"x\ry").replace(b"\r\n", b"\n")
    path = tmp_path / "mixed.sip"
    path.write_bytes(mixed)
    code, out = run_json(str(path))
    assert code == 0  # the parser takes bare-LF headers itself
    assert out["line_ends_converted"] is False
    assert out["body_length"] == 3


def test_trailing_bytes_reported() -> None:
    code, out = run_json(str(CORPORA / "rfc4475" / "dblreq.dat"))
    assert code == 0
    assert out["trailing_bytes"] > 0
    assert out["size"] + out["trailing_bytes"] == len(read("rfc4475", "dblreq.dat"))


# --- malformed input ------------------------------------------------------------------------


def test_malformed_text() -> None:
    proc = run("inspect", str(CORPORA / "rfc4475" / "ncl.dat"))
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode() == "malformed: bad_content_length (-999)\n"


def test_malformed_json() -> None:
    code, out = run_json(str(CORPORA / "rfc4475" / "ncl.dat"))
    assert code == 2
    assert out == {"error": "malformed", "reason": "bad_content_length", "detail": "-999"}


def test_malformed_detail_with_control_characters() -> None:
    proc = run("inspect", "-", stdin=b"INV\x07ITE sip:a@b SIP/2.0\r\nl: 0\r\n\r\n")
    assert proc.returncode == 2
    assert b"\x07" not in proc.stderr
    assert b"INV\\x07ITE" in proc.stderr


# --- never print secrets or raw control characters ------------------------------------------


def secrets_in(data: bytes) -> list[str]:
    found: list[str] = []
    for param in SECRET_PARAMS:
        for m in re.finditer(rb'[\s,]%s="?([^",\r\n]+)' % param.encode(), data):
            found.append(m.group(1).decode())
    return found


@pytest.mark.parametrize("path", CREDENTIAL_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("as_json", [False, True])
def test_credentials_never_printed(path: Path, as_json: bool) -> None:
    data = path.read_bytes()
    secrets = secrets_in(data)
    assert any(s for s in secrets if len(s) >= 8)  # the file does carry secrets
    proc = run("inspect", *(["--json"] if as_json else []), str(path))
    assert proc.returncode == 0
    output = (proc.stdout + proc.stderr).decode()
    for secret in secrets:
        assert secret not in output, secret
    assert "Digest" in output and "MD5" in output
    msg = parse(data)
    cred = (msg.authorization or msg.proxy_authorization)[0]
    assert cred.username is not None and cred.username in output
    assert cred.realm is not None and cred.realm in output


def test_credentials_json_fields() -> None:
    code, out = run_json(str(LEGIT / "polycom_vvx350_register_digest.sip"))
    assert code == 0
    assert out["credentials"] == [
        {
            "header": "Authorization",
            "scheme": "Digest",
            "username": "1013",
            "realm": "pierrefouquet.babblevoice.com",
            "algorithm": "MD5",
        }
    ]


@pytest.mark.parametrize(
    ("header", "secret"),
    [
        ("Authorization: Basic dXNlcjpzM2NyM3RwYXNz", "dXNlcjpzM2NyM3RwYXNz"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0", "eyJhbGciOiJIUzI1NiJ9"),
        (
            'Authorization: Digest username="a", response="deadbeefcafe", response="x"',
            "deadbeefcafe",
        ),
        ('Proxy-Authorization: Digest nonce="n0nc3n0nc3", "broken', "n0nc3n0nc3"),
        ("From: <sip:alice:hunter2pw@example.com>;tag=1", "hunter2pw"),
    ],
)
def test_other_secrets_never_printed(header: str, secret: str) -> None:
    data = message(header)
    if header.startswith("From:"):
        data = data.replace(b"From: <sip:alice@example.com>;tag=1928301774\r\n", b"")
    for args in (["inspect", "-"], ["inspect", "--json", "-"]):
        proc = run(*args, stdin=data)
        assert proc.returncode == 0, proc.stderr
        assert secret not in (proc.stdout + proc.stderr).decode()


def test_control_characters_escaped() -> None:
    path = CORPORA / "rfc4475" / "intmeth.dat"
    assert b"\x00" in path.read_bytes()
    proc = run("inspect", str(path))
    assert proc.returncode == 0
    assert_clean_text(proc.stdout)
    assert "NUL:\\x00" in proc.stdout.decode() and "BEL:\\x07" in proc.stdout.decode()
    code, out = run_json(str(path))
    assert code == 0
    assert out["to"]["display"] == "BEL:\\x07 NUL:\\x00 DEL:\\x7f"


def test_undecodable_and_bidi_characters_escaped() -> None:
    data = message("User-Agent: evil\u202ephone", "Subject: x").replace(
        b"<sip:bob@example.com>\r\n", b'"B\xffob" <sip:bob@example.com>\r\n', 1
    )
    proc = run("inspect", "-", stdin=data)
    assert proc.returncode == 0
    assert_clean_text(proc.stdout)
    text = proc.stdout.decode()
    assert "evil\\u202ephone" in text
    assert '"B\\xffob"' in text


def test_non_utf8_terminal() -> None:
    path = CORPORA / "rfc4475" / "unreason.dat"
    proc = run("inspect", str(path), env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0
    proc.stdout.decode("ascii")


# --- inspect --source: the guard's verdict ------------------------------------------------


def _config(tmp_path: Path, trusted: str = "127.0.2.1/32") -> Path:
    path = tmp_path / "guard.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "var"}"\n[upstream]\ntrusted_sources = ["{trusted}"]\n'
    )
    return path


@pytest.mark.parametrize("row", manifest("scanners"), ids=lambda r: r["name"])
def test_source_verdict_for_scanners_is_exit_1(tmp_path: Path, row: dict[str, str]) -> None:
    path = CORPORA / "scanners" / row["name"]
    code, out = run_json(
        str(path), "--source", "127.0.66.9:5060", "--config", str(_config(tmp_path))
    )
    assert code == 1, out
    assert out["verdict"]["action"] in ("drop", "ban")
    assert out["verdict"]["trusted_group"] is None


def test_source_verdict_for_a_trusted_peer_is_exit_0(tmp_path: Path) -> None:
    path = CORPORA / "legit" / "kamailio534_dispatcher_options_ping.sip"
    config = str(_config(tmp_path))
    code, out = run_json(str(path), "--source", "127.0.2.1", "--config", config)
    assert code == 0 and out["verdict"]["action"] == "pass", out
    assert out["verdict"]["trusted_group"] == "upstream"
    # The same keep-alive from a stranger is an svmap-style probe: silence, exit 1.
    code, out = run_json(str(path), "--source", "127.0.66.4", "--config", config)
    assert code == 1 and out["verdict"]["reason"] == "policy:options", out


def test_source_verdict_text_and_bad_source(tmp_path: Path) -> None:
    path = CORPORA / "scanners" / "svwar_v03_register.sip"
    proc = run("inspect", str(path), "--source", "127.0.66.9", "--config", str(_config(tmp_path)))
    assert proc.returncode == 1
    assert "Verdict: ban (scanner)" in proc.stdout.decode()
    proc = run("inspect", str(path), "--source", "not-an-ip", "--config", str(_config(tmp_path)))
    assert proc.returncode == 2 and "expected IP" in proc.stderr.decode()
    assert b"Traceback" not in proc.stderr


def test_malformed_with_source_is_still_exit_2(tmp_path: Path) -> None:
    path = CORPORA / "rfc4475" / "badvers.dat"
    proc = run("inspect", str(path), "--source", "127.0.66.9", "--config", str(_config(tmp_path)))
    assert proc.returncode == 2
