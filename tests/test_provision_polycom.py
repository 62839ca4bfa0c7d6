"""Polycom driver: rendered files, parameter provenance, escaping, versions, uploads, UAs."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from spitguard.provision import polycom
from spitguard.provision.driver import (
    UploadKind,
    VendorDriver,
    Weakening,
    parse_untrusted_xml,
)
from spitguard.provision.polycom import VENDOR_GUIDE_PARAMETERS, PolycomDriver
from spitguard.provision.profile import (
    DeviceConfig,
    HardeningProfile,
    InvalidDeviceConfig,
    Line,
    ProvisioningPolling,
    generate_admin_password,
)

PHONES_MD = Path("/work/shared/reference/phones.md")
MAC = "0004f2abcdef"
OTHER_MAC = "0004f2000001"
ADMIN_PASSWORD = "Adm1nPassw0rdXyz"
RV = "voIpProt.SIP.requestValidation"


# -- the allow-list, read from the reference at test time -------------------------------

_FILE_SUFFIXES = (".cfg", ".log", ".xml", ".ld", ".py", ".php", ".tpl", ".md", ".com", ".org")


def _polycom_reference() -> str:
    """§0's Polycom row plus all of §1."""
    text = PHONES_MD.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| Polycom"))
    start = text.index("\n## 1. Polycom")
    end = text.index("\n## 2.", start)
    return row + "\n" + text[start:end]


def _reference_names() -> set[str]:
    text = _polycom_reference()
    names: set[str] = set()
    for span in re.findall(r"`([^`]+)`", text):
        # Dotted parameter names not preceded by an ellipsis, dot, slash, colon or macro
        # bracket, so "…1.method" fragments and "repo:dir/file.py" paths are not names.
        for name in re.findall(r"(?<![\w.…/:\]$])([A-Za-z]\w*(?:\.\w+)+)", span):
            if not name.lower().endswith(_FILE_SUFFIXES):
                names.add(name)
        # Attribute names in quoted XML snippets (APPLICATION's CONFIG_FILES etc.); a
        # lower-case word alone ("method=") is a fragment of a longer name, not a name.
        for name in re.findall(r"(?<![\w.])([A-Za-z_][\w.]*)=\"", span):
            if name.isupper() or "." in name:
                names.add(name)
    # The reference also names parameters to say they do not exist ("No `…` parameter
    # was found"); those are the opposite of confirmed.
    names -= set(re.findall(r"\bNo `([^`]+)` parameter", text))
    # phones.md §1: every `device.*` parameter takes effect through its `.set` companion.
    names.update(f"{name}.set" for name in list(names) if name.startswith("device."))
    return names


def _pattern(names: set[str]) -> re.Pattern[str]:
    def one(name: str) -> str:
        return r"\.".join(
            r"\d+" if seg in ("x", "y") else re.escape(seg) for seg in name.split(".")
        )

    return re.compile("^(?:" + "|".join(sorted(one(name) for name in names)) + ")$")


REFERENCE_NAMES = _reference_names()
REFERENCE = _pattern(REFERENCE_NAMES)
ALLOWED = _pattern(REFERENCE_NAMES | set(VENDOR_GUIDE_PARAMETERS))


def test_reference_extraction_finds_the_hardening_names() -> None:
    for name in (
        f"{RV}.1.request",
        f"{RV}.7.method",
        f"{RV}.2.request.1.event",
        "httpd.enabled",
        "httpd.cfg.enabled",
        "device.auth.localAdminPassword",
        "device.auth.localAdminPassword.set",
        "device.prov.serverName.set",
        "prov.polling.timeRandomEnd",
        "voIpProt.SIP.specialEvent.checkSync.alwaysReboot",
        "reg.3.server.2.address",
        "CONFIG_FILES",
        "APP_FILE_PATH",
    ):
        assert REFERENCE.match(name), name
    for name in ("voIpProt.SIP.acceptOnlyFromProxy", "reg.1.address", "common.py", "a.cfg"):
        assert not REFERENCE.match(name), name
    # Template-only ([T] in FusionPBX, in no guide found): deliberately not rendered.
    assert not ALLOWED.match("reg.1.outboundProxy.transport")


def test_names_outside_the_reference_are_cited_and_never_hardening_switches() -> None:
    hardening = (RV, "httpd.", "device.auth.", "device.prov.", "prov.", "voIpProt.SIP.special")
    for name, citation in VENDOR_GUIDE_PARAMETERS.items():
        assert re.search(r"https?://\S+", citation), name
        assert not name.startswith(hardening), name
        assert not REFERENCE.match(name.replace(".x.", ".1.").replace(".y.", ".1.")), (
            f"{name} is in phones.md now; drop it from VENDOR_GUIDE_PARAMETERS"
        )


# -- fixtures ---------------------------------------------------------------------------


def make_profile(**changes: object) -> HardeningProfile:
    base: dict[str, object] = {
        "edge_host": "edge.example.net",
        "admin_password": ADMIN_PASSWORD,
        "trusted_origins": ("127.0.0.1",),
    }
    base.update(changes)
    return HardeningProfile(**base)  # type: ignore[arg-type]


def make_device(profile: HardeningProfile | None = None, **changes: object) -> DeviceConfig:
    base: dict[str, object] = {
        "mac": "00:04:F2:AB:CD:EF",
        "vendor": "polycom",
        "model": "VVX_400",
        "profile": profile or make_profile(),
        "lines": (
            Line(key=1, aor="1001@example.net", auth_user="u1001", password="sip-secret-1"),
            Line(
                key=2,
                aor="1002",
                auth_user="u1002",
                password="sip-secret-2",
                display_name="Front desk",
                label="Desk",
            ),
        ),
    }
    base.update(changes)
    return DeviceConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def driver() -> PolycomDriver:
    return PolycomDriver()


def config_file(driver: PolycomDriver, device: DeviceConfig) -> bytes:
    rendered = driver.render(f"spitguard-{device.mac}.cfg", device)
    assert rendered is not None
    return rendered.body


def attributes(body: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    for element in ET.fromstring(body).iter():
        for name, value in element.attrib.items():
            assert name not in found, f"{name} set twice"
            found[name] = value
    return found


def all_files(driver: PolycomDriver, device: DeviceConfig) -> list[bytes]:
    names = ["000000000000.cfg", *driver.files_for(device.mac)]
    rendered = [driver.render(name, device) for name in names]
    assert all(r is not None for r in rendered)
    return [r.body for r in rendered if r is not None]


# -- rendering --------------------------------------------------------------------------


def test_driver_is_a_vendor_driver(driver: PolycomDriver) -> None:
    assert isinstance(driver, VendorDriver)
    assert driver.vendor == "polycom"


def test_templates_use_a_sandboxed_autoescaping_environment() -> None:
    env = polycom._environment()
    assert isinstance(env, ImmutableSandboxedEnvironment)
    assert env.autoescape is True


@pytest.mark.parametrize(
    "profile",
    [
        make_profile(),
        make_profile(
            web_ui=True,
            edge_transport="tls",
            edge_port=5061,
            invite_validation="both",
            checksync_validation="digest",
            provisioning_polling=ProvisioningPolling(
                mode="random", time="01:00", time_random_end="05:00"
            ),
            resync_reboots=True,
            provisioning_url="https://prov.example.net/provision/",
        ),
    ],
)
def test_every_attribute_name_is_confirmed(
    driver: PolycomDriver, profile: HardeningProfile
) -> None:
    overrides = {"sec.pwd.length.admin": "8", f"{RV}.digest.realm": "spitguard"}
    device = make_device(profile, overrides=overrides)
    for body in all_files(driver, device):
        for name in attributes(body):
            assert ALLOWED.match(name), f"{name} is neither in phones.md nor cited"


def test_hardening_names_come_from_phones_md_alone(driver: PolycomDriver) -> None:
    for name in attributes(config_file(driver, make_device())):
        if name.startswith((RV, "httpd.", "device.auth.", "prov.")):
            assert REFERENCE.match(name), name


def test_files_for_lists_master_then_config(driver: PolycomDriver) -> None:
    assert driver.files_for("00:04:F2:AB:CD:EF") == [f"{MAC}.cfg", f"spitguard-{MAC}.cfg"]


def _config_files(body: bytes) -> list[str]:
    root = ET.fromstring(body)
    assert root.tag == "APPLICATION"
    return [name.strip() for name in root.attrib["CONFIG_FILES"].split(",")]


def test_device_master_names_exactly_what_render_serves(driver: PolycomDriver) -> None:
    device = make_device()
    master = driver.render(f"{MAC}.cfg", device)
    assert master is not None and not master.sensitive
    named = _config_files(master.body)
    assert driver.files_for(MAC) == [f"{MAC}.cfg", *named]
    for name in named:
        served = driver.render(name, device)
        assert served is not None and served.sensitive


def test_generic_master_uses_the_mac_macro_and_serves_either_case(driver: PolycomDriver) -> None:
    device = make_device()
    master = driver.render("000000000000.cfg", device)
    assert master is not None
    # Identical for every phone: nothing device-specific leaks into the generic file.
    other = driver.render("000000000000.cfg", make_device(mac=OTHER_MAC))
    assert other is not None and other.body == master.body
    for name in _config_files(master.body):
        assert "[PHONE_MAC_ADDRESS]" in name
        for mac in (MAC, MAC.upper()):
            assert driver.render(name.replace("[PHONE_MAC_ADDRESS]", mac), device) is not None


def test_render_refuses_other_phones_and_foreign_paths(driver: PolycomDriver) -> None:
    device = make_device()
    assert driver.render(f"{MAC.upper()}.cfg", device) is not None
    for path in (
        f"{OTHER_MAC}.cfg",
        f"spitguard-{OTHER_MAC}.cfg",
        f"{MAC}-phone.cfg",
        f"{MAC}-license.cfg",
        "000000000000-directory.xml",
        "3111-46135-002.sip.ld",
        "sip.cfg",
    ):
        assert driver.render(path, device) is None, path


def test_hardening_values(driver: PolycomDriver) -> None:
    attrs = attributes(config_file(driver, make_device()))
    assert attrs[f"{RV}.1.request"] == "INVITE"
    assert attrs[f"{RV}.1.method"] == "source"
    assert attrs[f"{RV}.2.request"] == "NOTIFY"
    assert attrs[f"{RV}.2.method"] == "source"
    assert attrs[f"{RV}.2.request.1.event"] == "check-sync"
    assert attrs["httpd.enabled"] == "0"
    assert attrs["httpd.cfg.enabled"] == "0"
    assert attrs["device.set"] == "1"
    assert attrs["device.auth.localAdminPassword.set"] == "1"
    assert attrs["device.auth.localAdminPassword"] == ADMIN_PASSWORD
    # Left to the phone unless the profile asks.
    for name in attrs:
        assert not name.startswith(("prov.", "device.prov.", "voIpProt.SIP.specialEvent"))


def test_profile_switches_change_the_values(driver: PolycomDriver) -> None:
    profile = make_profile(
        web_ui=True,
        invite_validation="both",
        checksync_validation="digest",
        provisioning_polling=ProvisioningPolling(mode="rel", period=7200),
        resync_reboots=False,
        provisioning_url="https://prov.example.net:8443/provision/",
    )
    attrs = attributes(config_file(driver, make_device(profile)))
    assert attrs["httpd.enabled"] == attrs["httpd.cfg.enabled"] == "1"
    assert attrs[f"{RV}.1.method"] == "both"
    assert attrs[f"{RV}.2.method"] == "digest"
    assert attrs["prov.polling.enabled"] == "1"
    assert attrs["prov.polling.mode"] == "rel"
    assert attrs["prov.polling.period"] == "7200"
    assert "prov.polling.time" not in attrs
    assert attrs["voIpProt.SIP.specialEvent.checkSync.alwaysReboot"] == "0"
    assert attrs["device.prov.serverType"] == "HTTPS"
    assert attrs["device.prov.serverName"] == "prov.example.net:8443/provision/"
    assert attrs["device.prov.serverName.set"] == attrs["device.prov.serverType.set"] == "1"


def test_lines_point_at_the_edge(driver: PolycomDriver) -> None:
    profile = make_profile(
        edge_transport="tls", edge_port=5061, trusted_origins=("127.0.0.3", "127.0.0.1")
    )
    attrs = attributes(config_file(driver, make_device(profile)))
    assert attrs["reg.1.address"] == "1001@example.net"
    assert attrs["reg.1.auth.userId"] == "u1001"
    assert attrs["reg.1.auth.password"] == "sip-secret-1"
    assert "reg.1.displayName" not in attrs
    assert attrs["reg.2.displayName"] == "Front desk"
    assert attrs["reg.2.label"] == "Desk"
    for key in (1, 2):
        servers = [attrs[f"reg.{key}.server.{y}.address"] for y in (1, 2, 3)]
        assert servers == ["edge.example.net", "127.0.0.1", "127.0.0.3"]
        assert f"reg.{key}.server.4.address" not in attrs
        for y in (1, 2, 3):
            assert attrs[f"reg.{key}.server.{y}.port"] == "5061"
            assert attrs[f"reg.{key}.server.{y}.transport"] == "TLS"
    assert attrs["voIpProt.SIP.outboundProxy.address"] == "edge.example.net"
    assert attrs["voIpProt.SIP.outboundProxy.port"] == "5061"
    assert attrs["voIpProt.SIP.outboundProxy.transport"] == "TLS"


def test_hostile_values_are_escaped(driver: PolycomDriver) -> None:
    hostile = "Bob \"<b>\" & 'co'"
    injection = 'x" httpd.enabled="1'
    line = Line(
        key=1,
        aor="1001",
        auth_user="u&<1>",
        password="p\"<&>'",
        display_name=hostile,
        label=injection,
    )
    body = config_file(driver, make_device(lines=(line,)))
    assert b'"<b>"' not in body
    assert b"&lt;b&gt;" in body and b"&#34;" in body and b"&amp;" in body
    attrs = attributes(body)
    assert attrs["reg.1.displayName"] == hostile
    assert attrs["reg.1.label"] == injection
    assert attrs["reg.1.auth.userId"] == "u&<1>"
    assert attrs["reg.1.auth.password"] == "p\"<&>'"
    assert attrs["httpd.enabled"] == "0"


@settings(max_examples=60, deadline=None)
@given(
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"
        ),
        min_size=1,
        max_size=60,
    )
)
def test_any_display_name_round_trips(name: str) -> None:
    line = Line(key=1, aor="1001", auth_user="u", password="p", display_name=name)
    attrs = attributes(config_file(PolycomDriver(), make_device(lines=(line,))))
    assert attrs["reg.1.displayName"] == name


def test_control_characters_are_refused_before_rendering() -> None:
    with pytest.raises(InvalidDeviceConfig, match="control"):
        Line(key=1, aor="1001", auth_user="u", password="p", display_name="a\nb")
    with pytest.raises(InvalidDeviceConfig, match="control"):
        make_profile(admin_password="abcdefgh\x00")


# -- versions ---------------------------------------------------------------------------


def version(driver: PolycomDriver, device: DeviceConfig) -> str:
    rendered = driver.render(f"spitguard-{device.mac}.cfg", device)
    assert rendered is not None
    return rendered.version


def test_version_is_the_sha256_and_stable(driver: PolycomDriver) -> None:
    import hashlib

    first = driver.render(f"spitguard-{MAC}.cfg", make_device())
    second = PolycomDriver().render(f"spitguard-{MAC}.cfg", make_device())
    assert first is not None and second is not None
    assert first.body == second.body
    assert first.version == second.version == hashlib.sha256(first.body).hexdigest()


def test_version_ignores_dns_answer_order(driver: PolycomDriver) -> None:
    one = make_device(make_profile(trusted_origins=("127.0.0.1", "127.0.0.2", "EDGE.example.net")))
    two = make_device(make_profile(trusted_origins=["127.0.0.2", "127.0.0.1"]))
    assert version(driver, one) == version(driver, two)


@pytest.mark.parametrize(
    "changes",
    [
        {"edge_host": "edge2.example.net"},
        {"trusted_origins": ("127.0.0.1", "127.0.0.9")},
        {"trusted_origins": ()},
        {"edge_port": 5080},
        {"edge_transport": "tcp"},
        {"web_ui": True},
        {"invite_validation": "both"},
        {"checksync_validation": "digest"},
        {"admin_password": "AnotherPassw0rd"},
        {"resync_reboots": True},
        {"provisioning_polling": ProvisioningPolling()},
    ],
)
def test_version_changes_with_profile_and_edge(
    driver: PolycomDriver, changes: dict[str, object]
) -> None:
    assert version(driver, make_device()) != version(driver, make_device(make_profile(**changes)))


# -- overrides --------------------------------------------------------------------------


def test_another_vendors_device_is_refused(driver: PolycomDriver) -> None:
    with pytest.raises(InvalidDeviceConfig, match="vendor"):
        driver.validate(make_device(vendor="yealink"))


def test_allowed_overrides_are_rendered(driver: PolycomDriver) -> None:
    device = make_device(overrides={"call.enableOnNotRegistered": "0"})
    assert attributes(config_file(driver, device))["call.enableOnNotRegistered"] == "0"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"httpd.enabled": "1"}, "web_ui"),
        ({"httpd.cfg.enabled": "1"}, "web_ui"),
        ({f"{RV}.1.method": "Null"}, "allow-list"),
        ({"device.auth.localAdminPassword": "456"}, "allow-list"),
        ({"reg.1.server.1.address": "203.0.113.9"}, "allow-list"),
        ({"httpd.cfg.port": "8080"}, "web_ui"),
        ({"sec.pwd.length.admin": "33"}, "0..32"),
        ({"sec.pwd.length.admin": "30"}, "admin password"),
        ({"call.enableOnNotRegistered": "yes"}, "0 or 1"),
    ],
)
def test_weakening_or_unknown_overrides_are_refused(
    driver: PolycomDriver, overrides: dict[str, str], message: str
) -> None:
    device = make_device(overrides=overrides)
    with pytest.raises(InvalidDeviceConfig, match=message):
        driver.validate(device)
    with pytest.raises(InvalidDeviceConfig):
        driver.render(f"spitguard-{MAC}.cfg", device)


def test_web_port_override_needs_the_web_ui_switch(driver: PolycomDriver) -> None:
    device = make_device(make_profile(web_ui=True), overrides={"httpd.cfg.port": "8080"})
    attrs = attributes(config_file(driver, device))
    assert attrs["httpd.cfg.port"] == "8080"
    assert attrs["httpd.enabled"] == "1"


# -- secrets ----------------------------------------------------------------------------


def test_secrets_stay_out_of_repr(driver: PolycomDriver) -> None:
    device = make_device()
    rendered = driver.render(f"spitguard-{MAC}.cfg", device)
    for text in (repr(device), repr(device.profile), repr(device.lines), repr(rendered)):
        assert ADMIN_PASSWORD not in text
        assert "sip-secret" not in text


def test_generated_admin_passwords() -> None:
    password = generate_admin_password()
    assert len(password) == 20 and password.isalnum()
    assert password != generate_admin_password()
    make_profile(admin_password=password)


# -- profile validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"edge_host": "not a host"},
        {"edge_port": 0},
        {"edge_transport": "sctp"},
        {"invite_validation": "Null"},
        {"admin_password": "short"},
        {"provisioning_url": "ftp://prov.example.net/"},
        {"provisioning_url": "https://user:pw@prov.example.net/"},
    ],
)
def test_invalid_profiles_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidDeviceConfig):
        make_profile(**changes)


def test_invalid_polling_is_refused() -> None:
    with pytest.raises(InvalidDeviceConfig, match="3600"):
        ProvisioningPolling(mode="rel", period=3600)
    with pytest.raises(InvalidDeviceConfig, match="HH:MM"):
        ProvisioningPolling(time="25:00")
    with pytest.raises(InvalidDeviceConfig, match="random"):
        ProvisioningPolling(mode="abs", time_random_end="05:00")


def test_invalid_devices_are_refused() -> None:
    with pytest.raises(InvalidDeviceConfig, match="reserved"):
        make_device(mac="000000000000")
    with pytest.raises(InvalidDeviceConfig, match="MAC"):
        make_device(mac="0004f2abcde")
    with pytest.raises(InvalidDeviceConfig, match="unique"):
        line = Line(key=1, aor="1", auth_user="u", password="p")
        make_device(lines=(line, dataclasses.replace(line, aor="2")))
    with pytest.raises(InvalidDeviceConfig, match="at least one line"):
        make_device(lines=())


# -- uploads ----------------------------------------------------------------------------


def overrides_file(**attrs: str) -> bytes:
    body = " ".join(f'{name}="{value}"' for name, value in attrs.items())
    xml = f"<PHONE_CONFIG><OVERRIDES {body}/></PHONE_CONFIG>"
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{xml}'.encode()


def weak(found: tuple[Weakening, ...]) -> list[str]:
    return [w.parameter for w in found]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (f"{MAC}-app.log", UploadKind.APP_LOG),
        (f"{MAC.upper()}-boot.log", UploadKind.BOOT_LOG),
        (f"{MAC}-phone.cfg", UploadKind.PHONE_OVERRIDES),
        (f"{MAC}-web.cfg", UploadKind.WEB_OVERRIDES),
        (f"{MAC}-directory.xml", UploadKind.DIRECTORY),
        ("something.bin", UploadKind.UNKNOWN),
    ],
)
def test_upload_kinds(driver: PolycomDriver, name: str, kind: UploadKind) -> None:
    finding = driver.parse_upload(f"/provision/{name}", b"log line\n")
    assert finding.kind is kind
    if kind is not UploadKind.UNKNOWN:
        assert finding.mac == MAC


def test_web_server_turned_back_on_is_flagged(driver: PolycomDriver) -> None:
    finding = driver.parse_upload(f"{MAC}-phone.cfg", overrides_file(**{"httpd.enabled": "1"}))
    assert finding.rejected is None
    assert weak(finding.weakening) == ["httpd.enabled"]
    assert not finding.compliant
    web = driver.parse_upload(f"{MAC}-web.cfg", overrides_file(**{"httpd.cfg.enabled": "1"}))
    assert weak(web.weakening) == ["httpd.cfg.enabled"]


def test_web_server_on_is_fine_when_the_profile_allows_it(driver: PolycomDriver) -> None:
    body = overrides_file(**{"httpd.enabled": "1"})
    assert driver.parse_upload(f"{MAC}-phone.cfg", body, make_profile(web_ui=True)).compliant


def test_harmless_overrides_pass(driver: PolycomDriver) -> None:
    body = overrides_file(
        **{
            "httpd.enabled": "0",
            "reg.1.displayName": "Reception",
            "up.backlight.idleIntensity": "1",
            f"{RV}.1.method": "both",
            "reg.1.server.1.address": "edge.example.net",
            "device.auth.localAdminPassword": ADMIN_PASSWORD,
        }
    )
    finding = driver.parse_upload(f"{MAC}-phone.cfg", body, make_profile())
    assert finding.compliant, finding.weakening


def test_validation_and_password_changes_are_flagged(driver: PolycomDriver) -> None:
    body = overrides_file(
        **{
            f"{RV}.1.method": "Null",
            f"{RV}.2.method": "digest",
            f"{RV}.1.request": "OPTIONS",
            f"{RV}.2.request.1.event": "",
            "device.auth.localAdminPassword": "456",
            "reg.1.server.2.address": "203.0.113.66",
        }
    )
    finding = driver.parse_upload(f"{MAC}-phone.cfg", body, make_profile())
    assert sorted(weak(finding.weakening)) == sorted(
        [
            f"{RV}.1.method",
            f"{RV}.2.method",
            f"{RV}.1.request",
            f"{RV}.2.request.1.event",
            "device.auth.localAdminPassword",
            "reg.1.server.2.address",
        ]
    )
    password = next(w for w in finding.weakening if w.parameter.startswith("device.auth"))
    assert password.value is None
    assert "456" not in repr(finding)


def test_our_own_configuration_uploaded_back_is_compliant(driver: PolycomDriver) -> None:
    profile = make_profile(web_ui=True, invite_validation="both", trusted_origins=("127.0.0.2",))
    body = config_file(driver, make_device(profile))
    finding = driver.parse_upload(f"{MAC}-phone.cfg", body, profile)
    assert finding.compliant, finding.weakening
    # The same file judged against the strict default: only the web UI stands out.
    strict = driver.parse_upload(f"{MAC}-phone.cfg", body)
    assert "httpd.enabled" in weak(strict.weakening)


def test_empty_validation_method_is_flagged_without_a_profile(driver: PolycomDriver) -> None:
    finding = driver.parse_upload(f"{MAC}-phone.cfg", overrides_file(**{f"{RV}.1.method": ""}))
    assert weak(finding.weakening) == [f"{RV}.1.method"]


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<PHONE_CONFIG><OVERRIDES reg.1.label="&lol9;"/></PHONE_CONFIG>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<PHONE_CONFIG><OVERRIDES reg.1.label="&xxe;"/></PHONE_CONFIG>"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (BILLION_LAUGHS, "DOCTYPE"),
        (EXTERNAL_ENTITY, "DOCTYPE"),
        (b'<!doctype x><PHONE_CONFIG httpd.enabled="0"/>', "DOCTYPE"),
        (BILLION_LAUGHS.decode().encode("utf-16"), "UTF-8"),
        (b"<PHONE_CONFIG><OVERRIDES", "malformed"),
        (b"<a>" + b" " * (polycom.MAX_UPLOAD_BYTES + 1) + b"</a>", "larger"),
    ],
)
def test_unsafe_uploads_are_refused(driver: PolycomDriver, body: bytes, reason: str) -> None:
    finding = driver.parse_upload(f"{MAC}-phone.cfg", body)
    assert finding.rejected is not None and reason in finding.rejected
    assert not finding.compliant


def test_declared_encoding_cannot_change_what_is_parsed() -> None:
    body = '<?xml version="1.0" encoding="ISO-8859-1"?><a b="é"/>'.encode()
    assert parse_untrusted_xml(body, max_bytes=1024).attrib == {"b": "é"}


# -- identification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ua", "model", "firmware", "stage"),
    [
        (
            "FileTransport PolycomVVX-VVX_400-UA/4.1.4.7430 Type/Application",
            "VVX_400",
            "4.1.4.7430",
            "Application",
        ),
        ("PolycomSoundPointIP-SPIP_650-UA/3.1.3.0439", "SPIP_650", "3.1.3.0439", None),
        ("PolycomVVX-VVX_350-UA/5.9.5.0614", "VVX_350", "5.9.5.0614", None),
        (
            "FileTransport PolycomSoundPointIP-SPIP_335-UA/3.2.1.0078",
            "SPIP_335",
            "3.2.1.0078",
            None,
        ),
        (
            "FileTransport PolycomSoundStationIP-SSIP_6000-UA/5.0.3.1667 Type/Updater",
            "SSIP_6000",
            "5.0.3.1667",
            "Updater",
        ),
        ("PolycomSoundPointIP-SPIP_650-UA/3.1.3.0439_0004f2abcdef", "SPIP_650", "3.1.3.0439", None),
    ],
)
def test_polycom_user_agents(
    driver: PolycomDriver, ua: str, model: str, firmware: str, stage: str | None
) -> None:
    info = driver.matches_user_agent(ua)
    assert info is not None
    assert (info.vendor, info.model, info.firmware, info.stage) == (
        "polycom",
        model,
        firmware,
        stage,
    )
    assert info.mac is None


@pytest.mark.parametrize(
    "ua",
    [
        "Yealink SIP-T46G 28.72.0.1 00:15:65:4a:a9:37",
        "Mozilla/5.0 (X11; Linux x86_64)",
        "friendly-scanner",
        "",
    ],
)
def test_other_user_agents_are_not_ours(driver: PolycomDriver, ua: str) -> None:
    assert driver.matches_user_agent(ua) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("3111-46135-002.sip.ld", True),
        ("sip.ld", True),
        ("/provision/bootrom.ld", True),
        (f"{MAC}-license.cfg", True),
        ("000000000000-license.cfg", True),
        (f"{MAC}.cfg", False),
        (f"spitguard-{MAC}.cfg", False),
        ("000000000000-directory.xml", False),
    ],
)
def test_firmware_and_license_paths(driver: PolycomDriver, path: str, expected: bool) -> None:
    assert driver.is_firmware_or_license(path) is expected


@pytest.mark.parametrize(
    ("path", "mac"),
    [
        (f"/provision/{MAC.upper()}.cfg", MAC),
        (f"spitguard-{MAC}.cfg", MAC),
        (f"{MAC}-app.log", MAC),
        ("000000000000.cfg", None),
        ("sip.ld", None),
    ],
)
def test_mac_in_path(driver: PolycomDriver, path: str, mac: str | None) -> None:
    assert driver.mac_in_path(path) == mac
