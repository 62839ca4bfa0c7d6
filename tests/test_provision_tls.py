"""The boot server over HTTPS with client certificates (`provision.tls_port` with
`provision.tls_client_ca`), against the running `spitguard serve`.

A CA made in the test signs device certificates naming a MAC (subject CN); phones on
127.0.1.x present them with httpx. Loopback only.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_server import EdgeServer, free_port, running_edge
from peers import phone_ip
from test_provision_server import MAC, OTHER_MAC, POLYCOM_UA, add_device

SECRET = "reg.1.auth.password"  # a credential the hardened file carries


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> Path:
    data = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    path.write_bytes(data)
    return path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = _key()
    ca = _cert("spitguard test device CA", ca_key, None, ca_key, ca=True)
    rogue_key = _key()
    rogue_ca = _cert("someone else's CA", rogue_key, None, rogue_key, ca=True)
    out = {"ca": _write(tmp_path / "ca.pem", ca, None)}
    for label, subject, issuer, issuer_key in (
        ("device", "00:04:F2:A1:B2:C3", ca, ca_key),
        ("other", OTHER_MAC, ca, ca_key),
        ("rogue", MAC, rogue_ca, rogue_key),
    ):
        key = _key()
        out[label] = _write(tmp_path / f"{label}.pem", _cert(subject, key, issuer, issuer_key), key)
    return out


@pytest.fixture
def edge(tmp_path: Path, pki: dict[str, Path]) -> Iterator[EdgeServer]:
    port = free_port()
    extra = f'[provision]\ntls_port = {port}\ntls_client_ca = "{pki["ca"]}"\n'
    with running_edge(tmp_path, extra=extra) as e:
        e.tls_boot_port = port  # type: ignore[attr-defined]
        yield e


def https(edge: EdgeServer, cert: Path | None) -> httpx.Client:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the edge's self-signed certificate
    if cert is not None:
        ctx.load_cert_chain(cert)
    transport = httpx.HTTPTransport(local_address=phone_ip(70), verify=ctx)
    return httpx.Client(
        transport=transport,
        base_url=f"https://127.0.0.1:{edge.tls_boot_port}/provision",  # type: ignore[attr-defined]
        timeout=5.0,
        headers={"User-Agent": POLYCOM_UA},
    )


def test_a_device_certificate_fetches_its_own_file_without_digest(
    edge: EdgeServer, pki: dict[str, Path]
) -> None:
    add_device(edge, MAC, "alice")
    add_device(edge, OTHER_MAC, "bob")
    assert f"boot TLS:  https://127.0.0.1:{edge.tls_boot_port}/provision/" in edge.banner  # type: ignore[attr-defined]
    with https(edge, pki["device"]) as http:
        own = http.get(f"/spitguard-{MAC}.cfg")
        assert own.status_code == 200 and SECRET in own.text
        # The certificate names one MAC: another device's file still needs its digest.
        other = http.get(f"/spitguard-{OTHER_MAC}.cfg")
        assert other.status_code == 401 and SECRET not in other.text
        assert other.headers["WWW-Authenticate"].startswith("Digest ")
        # Keep-alive: several requests on one connection, master file included.
        assert http.get("/000000000000.cfg").status_code == 200
        assert http.get("/firmware.sip.ld").status_code == 404


def test_without_a_certificate_digest_still_works_on_the_tls_port(
    edge: EdgeServer, pki: dict[str, Path]
) -> None:
    password = add_device(edge, MAC, "alice")
    with https(edge, None) as http:
        bare = http.get(f"/spitguard-{MAC}.cfg")
        assert bare.status_code == 401 and SECRET not in bare.text
        ok = http.get(f"/spitguard-{MAC}.cfg", auth=httpx.DigestAuth(MAC, password))
        assert ok.status_code == 200 and SECRET in ok.text
        # An escaped traversal survives the client and must still name no file.
        assert http.get("/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(
    edge: EdgeServer, pki: dict[str, Path]
) -> None:
    add_device(edge, MAC, "alice")
    with https(edge, pki["rogue"]) as http, pytest.raises(httpx.TransportError):
        http.get(f"/spitguard-{MAC}.cfg")
    # The server keeps serving others.
    with https(edge, pki["device"]) as http:
        assert http.get(f"/spitguard-{MAC}.cfg").status_code == 200
