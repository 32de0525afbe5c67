"""web/autoconfig.py: Thunderbird autoconfig, Outlook Autodiscover (POX), Apple
.mobileconfig. Pure functions, so no server: documents are parsed back with
the stdlib (xml.etree, plistlib) and checked for hosts, ports and TLS modes."""

from __future__ import annotations

import plistlib
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pimail.config import Pop3Settings, Settings, SubmissionSettings, device_defaults
from pimail.web import autoconfig
from pimail.web.autoconfig import (
    SSL,
    STARTTLS,
    Endpoint,
    ServiceEndpoints,
    autodiscover_error,
    autodiscover_response,
    endpoints,
    mobileconfig,
    normalize_address,
    parse_autodiscover_request,
    thunderbird_config,
)
from testca import TestCA

HOST = "mail.example.org"
AD = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
OL = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


def device(**changes: object) -> Settings:
    settings = device_defaults()
    settings.hostname = HOST
    for name, value in changes.items():
        setattr(settings, name, value)
    return settings


# -- endpoints ----------------------------------------------------------------------------


def test_endpoints_of_the_device_profile_are_the_standard_ports() -> None:
    services = endpoints(device())
    assert services == ServiceEndpoints(
        host=HOST,
        imap=(Endpoint(993, SSL), Endpoint(143, STARTTLS)),
        pop3=(Endpoint(995, SSL), Endpoint(110, STARTTLS)),
        submission=(Endpoint(465, SSL), Endpoint(587, STARTTLS)),
    )


def test_endpoints_take_the_ports_of_development_listeners() -> None:
    settings = Settings(hostname="pi.example.net")
    services = endpoints(settings)
    assert services.host == "pi.example.net"
    assert services.imap == (Endpoint(2993, SSL), Endpoint(2143, STARTTLS))
    assert services.submission == (Endpoint(2465, SSL), Endpoint(2587, STARTTLS))


def test_endpoints_public_host_wins_and_is_normalised() -> None:
    services = endpoints(device(), public_host="Mail.Bücher.example.")
    assert services.host == "mail.xn--bcher-kva.example"


def test_endpoints_omit_services_without_listeners() -> None:
    settings = device(
        pop3=Pop3Settings(listen=[], listen_tls=[]),
        submission=SubmissionSettings(listen_starttls=["[::]:587"], listen_tls=[]),
    )
    services = endpoints(settings)
    assert services.pop3 == ()
    assert services.submission == (Endpoint(587, STARTTLS),)


def test_endpoints_skip_ephemeral_ports_and_refuse_bad_host_names() -> None:
    settings = device(pop3=Pop3Settings(listen=["127.0.0.1:0"], listen_tls=[]))
    assert endpoints(settings).pop3 == ()
    with pytest.raises(ValueError):
        endpoints(device(), public_host="bad host<name>")


# -- addresses ----------------------------------------------------------------------------


def test_normalize_address() -> None:
    assert normalize_address(" Kim@Example.ORG ") == "kim@example.org"
    assert normalize_address("o'neil+tag@bücher.example") == "o'neil+tag@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "kim",
        "@example.org",
        "kim@",
        "kim@localhost",
        "kim@exa mple.org",
        "k<im>@example.org",
        'k"im@example.org',
        "k im@example.org",
        ".kim@example.org",
        "k..im@example.org",
        "kim\n@example.org",
        "a" * 65 + "@example.org",
        "kim@" + "a" * 250 + ".org",
    ],
)
def test_normalize_address_refuses_garbage(garbage: str) -> None:
    with pytest.raises(ValueError):
        normalize_address(garbage)


# -- Thunderbird ----------------------------------------------------------------------------


def servers(root: ET.Element, element: str, kind: str) -> list[tuple[str, int, str, str, str]]:
    return [
        (
            s.findtext("hostname", ""),
            int(s.findtext("port", "0")),
            s.findtext("socketType", ""),
            s.findtext("username", ""),
            s.findtext("authentication", ""),
        )
        for s in root.iter(element)
        if s.get("type") == kind
    ]


def test_thunderbird_config_names_hosts_ports_and_tls_modes() -> None:
    document = thunderbird_config(endpoints(device()), "Example.ORG", "Example mail")
    assert document.startswith(b"<?xml")
    root = ET.fromstring(document)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.org"
    assert provider.findtext("domain") == "example.org"
    assert provider.findtext("displayName") == "Example mail"
    user, auth = "%EMAILADDRESS%", "password-cleartext"
    assert servers(root, "incomingServer", "imap") == [
        (HOST, 993, "SSL", user, auth),
        (HOST, 143, "STARTTLS", user, auth),
    ]
    assert servers(root, "incomingServer", "pop3") == [
        (HOST, 995, "SSL", user, auth),
        (HOST, 110, "STARTTLS", user, auth),
    ]
    assert servers(root, "outgoingServer", "smtp") == [
        (HOST, 465, "SSL", user, auth),
        (HOST, 587, "STARTTLS", user, auth),
    ]


def test_thunderbird_config_with_development_ports_and_no_pop3() -> None:
    settings = Settings(hostname="pi.example.net", pop3=Pop3Settings(listen=[], listen_tls=[]))
    root = ET.fromstring(thunderbird_config(endpoints(settings), "example.net"))
    provider = root.find("emailProvider")
    assert provider is not None and provider.findtext("displayName") == "example.net"
    assert [s.findtext("port") for s in root.iter("incomingServer")] == ["2993", "2143"]
    assert servers(root, "incomingServer", "pop3") == []
    assert [port for _, port, *_ in servers(root, "outgoingServer", "smtp")] == [2465, 2587]


def test_thunderbird_config_escapes_the_display_name() -> None:
    name = 'Smith & Sons <"mail"> \x00\x1b</displayName><evil/>'
    document = thunderbird_config(endpoints(device()), "example.org", name)
    root = ET.fromstring(document)  # still well-formed
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.findtext("displayName") == 'Smith & Sons <"mail"> </displayName><evil/>'
    assert root.find(".//evil") is None
    assert b"&amp;" in document and b"&lt;" in document


def test_thunderbird_config_refuses_a_bad_domain() -> None:
    for domain in ("exa<mple>.org", "localhost", "", "a" * 64 + ".org"):
        with pytest.raises(ValueError):
            thunderbird_config(endpoints(device()), domain)


# -- Autodiscover requests ----------------------------------------------------------------------

# As Outlook sends it (Microsoft's POX Autodiscover reference), with CRLF.
OUTLOOK_REQUEST = (
    b'<?xml version="1.0" encoding="utf-8"?>\r\n'
    b'<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
    b'requestschema/2006">\r\n'
    b"  <Request>\r\n"
    b"    <EMailAddress>Kim.Akers@Example.ORG</EMailAddress>\r\n"
    b"    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/"
    b"outlook/responseschema/2006a</AcceptableResponseSchema>\r\n"
    b"  </Request>\r\n"
    b"</Autodiscover>\r\n"
)


def test_parse_a_real_outlook_request() -> None:
    assert parse_autodiscover_request(OUTLOOK_REQUEST) == "kim.akers@example.org"


def test_parse_accepts_a_utf8_bom_and_no_namespace() -> None:
    assert parse_autodiscover_request(b"\xef\xbb\xbf" + OUTLOOK_REQUEST) == "kim.akers@example.org"
    bare = (
        b"<Autodiscover><Request><EMailAddress> a@b.example </EMailAddress></Request>"
        b"</Autodiscover>"
    )
    assert parse_autodiscover_request(bare) == "a@b.example"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml at all",
        b"<Autodiscover><Request><EMailAddress>a@b.example</EMailAddress>",  # truncated
        b"<Autodiscover><Request><EMailAddress>a@b.example</Request></Autodiscover>",
        b"<Autodiscover><Request></Request></Autodiscover>",  # no address
        b"<Autodiscover><EMailAddress>a@b.example</EMailAddress></Autodiscover>",  # wrong place
        b"<Autodiscover><Request><EMailAddress>not an address</EMailAddress></Request>"
        b"</Autodiscover>",
        b"<Autodiscover><Request><EMailAddress>a@b.example<x/></EMailAddress></Request>"
        b"</Autodiscover><trailing/>",
        b"<Autodiscover><Request><EMailAddress>\xff\xfe@b.example</EMailAddress></Request>"
        b"</Autodiscover>",  # not UTF-8
        "<?xml version='1.0' encoding='utf-16'?><Autodiscover><Request><EMailAddress>"
        "a@b.example</EMailAddress></Request></Autodiscover>".encode("utf-16"),
    ],
)
def test_parse_malformed_requests_give_none(body: bytes) -> None:
    assert parse_autodiscover_request(body) is None


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n<Autodiscover><Request><EMailAddress>&lol9;@example.org</EMailAddress>"
    b"</Request></Autodiscover>"
)


def test_billion_laughs_gives_none_quickly() -> None:
    started = time.monotonic()
    assert parse_autodiscover_request(BILLION_LAUGHS) is None
    # The second line of defence alone (the DOCTYPE handler on expat), too.
    with pytest.raises(autoconfig._Refused):
        autoconfig._find_email_address(BILLION_LAUGHS)
    assert time.monotonic() - started < 1.0


_opened: list[str] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and args and isinstance(args[0], str | bytes | Path):
        _opened.append(str(args[0]))


def xxe(target: str) -> bytes:
    return (
        b'<?xml version="1.0"?>\n'
        b'<!DOCTYPE Autodiscover [ <!ENTITY xxe SYSTEM "' + target.encode() + b'"> ]>\n'
        b"<Autodiscover><Request><EMailAddress>&xxe;</EMailAddress></Request></Autodiscover>"
    )


def test_external_entities_give_none_and_nothing_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("leaked@example.org")
    sys.addaudithook(_audit)  # stays for the session; it only records file names
    _opened.clear()
    for body in (xxe("file:///etc/passwd"), xxe(secret.as_uri()), xxe(str(secret))):
        assert parse_autodiscover_request(body) is None
        with pytest.raises(autoconfig._Refused):
            autoconfig._find_email_address(body)
    # A parameter entity that would pull in an external DTD is refused as well.
    pe = (
        b'<!DOCTYPE a [ <!ENTITY % ext SYSTEM "' + secret.as_uri().encode() + b'"> %ext; ]>'
        b"<Autodiscover/>"
    )
    assert parse_autodiscover_request(pe) is None
    with pytest.raises(autoconfig._Refused):
        autoconfig._find_email_address(pe)
    assert not [name for name in _opened if "passwd" in name or str(secret) in name]


def test_doctype_in_utf16_is_refused_by_expat_too() -> None:
    """A UTF-16 body hides '<!DOCTYPE' from a byte search: its NULs get it
    refused first, and expat's DOCTYPE handler would refuse it anyway."""
    body = BILLION_LAUGHS.decode().replace('"1.0"?>', '"1.0" encoding="utf-16"?>')
    encoded = body.encode("utf-16")
    assert b"<!DOCTYPE" not in encoded
    assert parse_autodiscover_request(encoded) is None
    with pytest.raises(autoconfig._Refused):
        autoconfig._find_email_address(encoded)


def test_huge_bodies_give_none_without_parsing() -> None:
    padding = b" " * (2 * 1024 * 1024)
    body = OUTLOOK_REQUEST.replace(b"<Request>", b"<Request>" + padding)
    started = time.monotonic()
    assert parse_autodiscover_request(body) is None
    assert time.monotonic() - started < 0.1
    assert len(OUTLOOK_REQUEST) < autoconfig.MAX_AUTODISCOVER_REQUEST


# -- Autodiscover responses ---------------------------------------------------------------------


def protocols(document: bytes) -> dict[str, ET.Element]:
    root = ET.fromstring(document)
    assert root.tag == f"{AD}Autodiscover"
    account = root.find(f"{OL}Response/{OL}Account")
    assert account is not None
    assert account.findtext(f"{OL}AccountType") == "email"
    assert account.findtext(f"{OL}Action") == "settings"
    found = {}
    for protocol in account.findall(f"{OL}Protocol"):
        found[protocol.findtext(f"{OL}Type", "")] = protocol
    return found


def test_autodiscover_response_has_imap_smtp_and_pop3() -> None:
    document = autodiscover_response(endpoints(device()), "Kim@Example.org", "Kim & Co <x>")
    assert document.startswith(b"<?xml")
    found = protocols(document)
    assert list(found) == ["IMAP", "SMTP", "POP3"]
    for kind, port in (("IMAP", "993"), ("SMTP", "465"), ("POP3", "995")):
        protocol = found[kind]
        assert protocol.findtext(f"{OL}Server") == HOST
        assert protocol.findtext(f"{OL}Port") == port
        assert protocol.findtext(f"{OL}SSL") == "on"
        assert protocol.findtext(f"{OL}SPA") == "off"
        assert protocol.findtext(f"{OL}AuthRequired") == "on"
        assert protocol.findtext(f"{OL}LoginName") == "kim@example.org"
        assert protocol.find(f"{OL}Encryption") is None
    root = ET.fromstring(document)
    assert root.findtext(f"{OL}Response/{OL}User/{OL}DisplayName") == "Kim & Co <x>"


def test_autodiscover_response_with_development_ports_and_starttls_only_smtp() -> None:
    settings = Settings(
        hostname="pi.example.net",
        pop3=Pop3Settings(listen=[], listen_tls=[]),
        submission=SubmissionSettings(listen_starttls=["127.0.0.1:2587"], listen_tls=[]),
    )
    found = protocols(autodiscover_response(endpoints(settings), "kim@example.net"))
    assert list(found) == ["IMAP", "SMTP"]
    assert found["IMAP"].findtext(f"{OL}Port") == "2993"
    assert found["SMTP"].findtext(f"{OL}Port") == "2587"
    assert found["SMTP"].findtext(f"{OL}Encryption") == "TLS"  # STARTTLS, for Outlook


def test_autodiscover_response_refuses_a_bad_address_and_errors_parse() -> None:
    with pytest.raises(ValueError):
        autodiscover_response(endpoints(device()), "<kim>@example.org")
    root = ET.fromstring(autodiscover_error())
    assert root.findtext(f"{AD}Response/{AD}Error/{AD}ErrorCode") == "600"


# -- Apple configuration profile ----------------------------------------------------------------


def payloads(document: bytes) -> tuple[dict, list[dict]]:
    profile = plistlib.loads(document)
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    return profile, profile["PayloadContent"]


def test_mobileconfig_mail_payload() -> None:
    document = mobileconfig(endpoints(device()), "Kim@Example.org", "Example & <mail>")
    profile, content = payloads(document)
    assert profile["PayloadDisplayName"] == "Mail: Example & <mail>"
    assert profile["PayloadRemovalDisallowed"] is False
    assert [p["PayloadType"] for p in content] == ["com.apple.mail.managed"]
    mail = content[0]
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["EmailAddress"] == "kim@example.org"
    assert mail["EmailAccountDescription"] == "Example & <mail>"
    assert mail["IncomingMailServerHostName"] == HOST
    assert mail["IncomingMailServerPortNumber"] == 993
    assert mail["IncomingMailServerUseSSL"] is True
    assert mail["IncomingMailServerUsername"] == "kim@example.org"
    assert mail["IncomingMailServerAuthentication"] == "EmailAuthPassword"
    assert mail["OutgoingMailServerHostName"] == HOST
    assert mail["OutgoingMailServerPortNumber"] == 465
    assert mail["OutgoingMailServerUseSSL"] is True
    assert mail["OutgoingMailServerUsername"] == "kim@example.org"
    assert mail["OutgoingMailServerAuthentication"] == "EmailAuthPassword"
    # No password: the only key that mentions one says the two are the same.
    assert [key for key in mail if "Password" in key and "Auth" not in key] == [
        "OutgoingPasswordSameAsIncomingPassword"
    ]
    assert b"secret" not in document.lower()


def test_mobileconfig_uuids_are_stable_per_host_and_address() -> None:
    services = endpoints(device())
    first, first_content = payloads(mobileconfig(services, "kim@example.org"))
    again, again_content = payloads(mobileconfig(services, "KIM@example.org", "other name"))
    assert first["PayloadUUID"] == again["PayloadUUID"]
    assert first["PayloadIdentifier"] == again["PayloadIdentifier"]
    assert first_content[0]["PayloadUUID"] == again_content[0]["PayloadUUID"]
    assert first["PayloadIdentifier"].startswith("org.example.mail.pimail.")
    other_user, other_user_content = payloads(mobileconfig(services, "lee@example.org"))
    other_host, _ = payloads(mobileconfig(endpoints(device(), "pi.example.org"), "kim@example.org"))
    uuids = {first["PayloadUUID"], other_user["PayloadUUID"], other_host["PayloadUUID"]}
    assert len(uuids) == 3
    assert first_content[0]["PayloadUUID"] != first["PayloadUUID"]
    assert first_content[0]["PayloadUUID"] != other_user_content[0]["PayloadUUID"]


def test_mobileconfig_with_the_internal_ca(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    pem = ca.ca_file.read_text()
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    services = endpoints(device())
    for given in (pem, pem.encode(), der):
        _, content = payloads(mobileconfig(services, "kim@example.org", ca_certificate=given))
        assert [p["PayloadType"] for p in content] == [
            "com.apple.security.root",
            "com.apple.mail.managed",
        ]
        root = content[0]
        assert root["PayloadContent"] == der
        assert x509.load_der_x509_certificate(root["PayloadContent"]) == ca.cert
        assert root["PayloadUUID"] != content[1]["PayloadUUID"]
    with pytest.raises(ValueError):
        mobileconfig(services, "kim@example.org", ca_certificate=b"not a certificate")


def test_mobileconfig_pop_only_starttls_submission_and_refusals() -> None:
    services = ServiceEndpoints(
        host=HOST, pop3=(Endpoint(995, SSL),), submission=(Endpoint(587, STARTTLS),)
    )
    _, content = payloads(mobileconfig(services, "kim@example.org"))
    assert content[0]["EmailAccountType"] == "EmailTypePOP"
    assert content[0]["IncomingMailServerPortNumber"] == 995
    assert content[0]["OutgoingMailServerPortNumber"] == 587
    with pytest.raises(ValueError):
        mobileconfig(services, "kim@@example.org")
    with pytest.raises(ValueError):
        mobileconfig(ServiceEndpoints(host=HOST, imap=(Endpoint(993, SSL),)), "kim@example.org")
