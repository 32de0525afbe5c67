"""Client autoconfiguration documents: what a mail client needs to set itself up.

Pure functions, no I/O and no web framework: the HTTP handlers call these and
send the bytes. Three formats, one source of truth (`ServiceEndpoints`, built
from the listeners in `config.Settings`):

- Thunderbird autoconfig, `config-v1.1.xml` (Mozilla wiki,
  "Thunderbird:Autoconfiguration:ConfigFileFormat"), served at
  https://autoconfig.<domain>/mail/config-v1.1.xml?emailaddress=... and
  /.well-known/autoconfig/mail/config-v1.1.xml. Also read by K-9/Thunderbird
  for Android, Evolution, KMail, FairEmail.
- Microsoft Autodiscover, the "plain old XML" (POX) protocol: Outlook POSTs a
  small XML request naming the address to /autodiscover/autodiscover.xml and
  gets an Account with one Protocol per service (responseschema 2006a).
- An Apple configuration profile (`.mobileconfig`, a property list): one
  com.apple.mail.managed payload and, while the server's certificate comes from
  pimail's internal CA, a com.apple.security.root payload with that CA. The
  profile is unsigned: iOS and macOS show it as "Unverified", which is expected.
  Since iOS 10.3 a root installed from a profile must still be switched on under
  Settings > General > About > Certificate Trust Settings before TLS trusts it.

RFC 8314 3.3 and 4.1 prefer implicit TLS to STARTTLS, so implicit-TLS endpoints
come first in every list; STARTTLS ones follow as fallbacks. No document
carries a password. Every value reaches the XML through ElementTree or
plistlib, never through string formatting, so `&`, `<`, `>` and quotes in a
display name are escaped; characters XML 1.0 cannot carry are dropped.

Whether a domain is ours (and so whether to answer at all) is the handler's
question, asked of the directory; these functions only check that the address
or domain is well-formed and raise ValueError otherwise.
"""

from __future__ import annotations

import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal
from xml.parsers import expat

from ..auth.accounts import DirectoryError, split_address
from ..auth.accounts import normalize_domain as _directory_normalize_domain
from ..config import Settings, parse_listen
from ..tls.names import normalize_name

THUNDERBIRD_PATH = "/mail/config-v1.1.xml"
THUNDERBIRD_WELL_KNOWN_PATH = "/.well-known/autoconfig/mail/config-v1.1.xml"
AUTODISCOVER_PATH = "/autodiscover/autodiscover.xml"
XML_CONTENT_TYPE = "application/xml; charset=utf-8"
MOBILECONFIG_CONTENT_TYPE = "application/x-apple-aspen-config"

# A real Outlook request is about 400 octets; anything much larger is not one.
MAX_AUTODISCOVER_REQUEST = 16 * 1024
MAX_DISPLAY_NAME = 200

AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)

# Thunderbird's socketType vocabulary: implicit TLS, or STARTTLS on a plain port.
Security = Literal["SSL", "STARTTLS"]
SSL: Security = "SSL"
STARTTLS: Security = "STARTTLS"


@dataclass(frozen=True)
class Endpoint:
    port: int
    security: Security


@dataclass(frozen=True)
class ServiceEndpoints:
    """Where clients reach each service: one public host name, ports per service.

    Each tuple lists implicit TLS first (RFC 8314), then STARTTLS; an empty
    tuple means the service has no listener and is left out of every document.
    """

    host: str
    imap: tuple[Endpoint, ...] = ()
    pop3: tuple[Endpoint, ...] = ()
    submission: tuple[Endpoint, ...] = ()


def endpoints(settings: Settings, public_host: str | None = None) -> ServiceEndpoints:
    """The endpoints of `settings`' listeners, under `public_host` (default: the
    host name, the name clients must use; never the bind address).

    Only the port of each listen address counts: 0.0.0.0:993 and [::]:993 are
    one endpoint. Port 0 (an ephemeral port, in tests) cannot be published and
    is skipped. ValueError if the host name is not one.
    """
    host = normalize_name(public_host if public_host is not None else settings.hostname)

    def collect(tls: list[str], starttls: list[str]) -> tuple[Endpoint, ...]:
        found: list[Endpoint] = []
        for addresses, security in ((tls, SSL), (starttls, STARTTLS)):
            for address in addresses:
                _, port = parse_listen(address)
                if port and all(e.port != port for e in found):
                    found.append(Endpoint(port, security))
        return tuple(found)

    return ServiceEndpoints(
        host=host,
        imap=collect(settings.imap.listen_tls, settings.imap.listen),
        pop3=collect(settings.pop3.listen_tls, settings.pop3.listen),
        submission=collect(settings.submission.listen_tls, settings.submission.listen_starttls),
    )


# -- validation -------------------------------------------------------------------

# RFC 5322 3.2.3 atext (and RFC 6531 3.3 UTF-8, via \w) in dot-atom form: no
# quoted local parts, no leading, trailing or double dot.
_LOCALPART = re.compile(r"^(?!\.)(?!.*\.\.)[\w!#$%&'*+/=?^`{|}~.-]{1,64}(?<!\.)\Z")
# Everything XML 1.0 (2.2 Char) cannot carry, and lone surrogates.
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def normalize_address(address: str) -> str:
    """'User@Example.ORG' -> 'user@example.org'; ValueError for anything else
    than a plain local@domain address (RFC 5322 dot-atom, at most 254 characters)."""
    if not isinstance(address, str) or len(address) > 254:
        raise ValueError("not an address")
    try:
        localpart, domain = split_address(address.strip())
    except DirectoryError as e:
        raise ValueError(str(e)) from None
    if not _LOCALPART.match(localpart):
        raise ValueError(f"not an address: {address!r}")
    return f"{localpart}@{domain}"


def normalize_domain(domain: str) -> str:
    """Lower-case IDNA A-label; ValueError if `domain` is not a host name."""
    try:
        return _directory_normalize_domain(domain)
    except DirectoryError as e:
        raise ValueError(str(e)) from None


def _text(value: str) -> str:
    """Display text safe for XML and plists: no control characters, bounded."""
    return _NOT_XML_CHAR.sub("", value).strip()[:MAX_DISPLAY_NAME]


# -- Thunderbird ----------------------------------------------------------------------


def thunderbird_config(
    services: ServiceEndpoints, domain: str, display_name: str | None = None
) -> bytes:
    """config-v1.1.xml for `domain`: every endpoint, implicit TLS first.

    The user name is the whole address (%EMAILADDRESS%, which the client
    substitutes), the mechanism password-cleartext (PLAIN/LOGIN inside TLS).
    """
    domain = normalize_domain(domain)
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = _text(display_name or "") or domain
    ET.SubElement(provider, "displayShortName").text = domain
    servers = [
        ("incomingServer", "imap", services.imap),
        ("incomingServer", "pop3", services.pop3),
        ("outgoingServer", "smtp", services.submission),
    ]
    for element, kind, found in servers:
        for endpoint in found:
            server = ET.SubElement(provider, element, type=kind)
            ET.SubElement(server, "hostname").text = services.host
            ET.SubElement(server, "port").text = str(endpoint.port)
            ET.SubElement(server, "socketType").text = endpoint.security
            ET.SubElement(server, "authentication").text = "password-cleartext"
            ET.SubElement(server, "username").text = "%EMAILADDRESS%"
    return _xml(root)


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# -- Microsoft Autodiscover (POX) -------------------------------------------------------


class _Refused(Exception):
    """A construct the request parser does not accept (DTDs, entities)."""


def _refuse(*_args: object) -> None:
    raise _Refused


def parse_autodiscover_request(body: bytes) -> str | None:
    """The normalised address of an Autodiscover request's
    Autodiscover/Request/EMailAddress, or None for anything else.

    Hostile input gets None, quickly and without side effects: bodies over
    MAX_AUTODISCOVER_REQUEST, malformed XML, anything but UTF-8, and any
    DOCTYPE, so no entity is ever declared, expanded (billion laughs) or
    fetched (file:///etc/passwd). defusedxml is not a dependency; the same
    defences are set on expat here directly.
    """
    if len(body) > MAX_AUTODISCOVER_REQUEST:
        return None
    # XML 1.0 (2.2) has no U+0000, so UTF-8 XML has no 0x00 octet while UTF-16
    # and UTF-32 markup is full of them: refusing NUL leaves UTF-8 only, where a
    # DOCTYPE (needed for any entity declaration) cannot hide from a byte search.
    if b"\x00" in body or b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        return None
    try:
        address = _find_email_address(body)
    except (expat.ExpatError, _Refused):
        return None
    if address is None:
        return None
    try:
        return normalize_address(address)
    except ValueError:
        return None


def _find_email_address(body: bytes) -> str | None:
    """The text of the first EMailAddress inside Autodiscover/Request (any
    namespace). Raises ExpatError or _Refused on malformed or refused input."""
    # Defence in depth behind the byte checks in parse_autodiscover_request: a
    # DOCTYPE, an entity declaration or an external reference that got past
    # them still stops the parse before anything is declared, expanded or read
    # (defusedxml's approach). The encoding defaults to UTF-8 whatever the
    # declaration says (expat still honours a byte order mark).
    parser = expat.ParserCreate(encoding="utf-8", namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    finder = _AddressFinder()
    parser.StartElementHandler = finder.start
    parser.EndElementHandler = finder.end
    parser.CharacterDataHandler = finder.data
    parser.Parse(body, True)
    return finder.address


class _AddressFinder:
    """expat handlers that keep the text of Autodiscover/Request/EMailAddress."""

    WANTED = ("Autodiscover", "Request", "EMailAddress")

    def __init__(self) -> None:
        self.path: list[str] = []  # local names, namespaces dropped
        self.text: list[str] | None = None  # collecting while not None
        self.address: str | None = None

    def start(self, name: str, _attributes: dict[str, str]) -> None:
        self.path.append(name.rpartition(" ")[2])
        if self.address is None and tuple(self.path) == self.WANTED:
            self.text = []

    def end(self, _name: str) -> None:
        if self.text is not None and len(self.path) == len(self.WANTED):
            self.address = "".join(self.text).strip()
            self.text = None
        self.path.pop()

    def data(self, chunk: str) -> None:
        text = self.text  # bounded: an address has at most 254 octets
        if text is not None and len(self.path) == len(self.WANTED) and sum(map(len, text)) < 1024:
            text.append(chunk)


def autodiscover_response(
    services: ServiceEndpoints, address: str, display_name: str | None = None
) -> bytes:
    """The POX Autodiscover answer for `address`: one Protocol each for IMAP,
    SMTP and POP3 (those that have a listener), using each one's first endpoint.

    Implicit TLS is `<SSL>on</SSL>`. A service reachable only with STARTTLS also
    gets `<Encryption>TLS</Encryption>`, which Outlook 2010 and later read as
    STARTTLS (the Encryption element overrides SSL where it is understood).
    """
    address = normalize_address(address)
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_RESPONSE_NS)
    user = ET.SubElement(response, "User")
    ET.SubElement(user, "DisplayName").text = _text(display_name or "") or address
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    for kind, found in (
        ("IMAP", services.imap),
        ("SMTP", services.submission),
        ("POP3", services.pop3),
    ):
        if not found:
            continue
        endpoint = found[0]
        protocol = ET.SubElement(account, "Protocol")
        ET.SubElement(protocol, "Type").text = kind
        ET.SubElement(protocol, "Server").text = services.host
        ET.SubElement(protocol, "Port").text = str(endpoint.port)
        ET.SubElement(protocol, "DomainRequired").text = "off"
        ET.SubElement(protocol, "LoginName").text = address
        ET.SubElement(protocol, "SPA").text = "off"
        ET.SubElement(protocol, "SSL").text = "on"
        if endpoint.security == STARTTLS:
            ET.SubElement(protocol, "Encryption").text = "TLS"
        ET.SubElement(protocol, "AuthRequired").text = "on"
        if kind == "SMTP":
            ET.SubElement(protocol, "UsePOPAuth").text = "off"
            ET.SubElement(protocol, "SMTPLast").text = "off"
    return _xml(root)


def autodiscover_error(message: str = "Invalid Request") -> bytes:
    """A POX error answer (ErrorCode 600, the code Exchange gives a request it
    cannot use), for a request without a usable address or for a stranger."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE_NS)
    response = ET.SubElement(root, "Response")
    error = ET.SubElement(response, "Error")
    ET.SubElement(error, "ErrorCode").text = "600"
    ET.SubElement(error, "Message").text = _text(message) or "Invalid Request"
    ET.SubElement(error, "DebugData")
    return _xml(root)


# -- Apple configuration profile ---------------------------------------------------------

_PROFILE_NAMESPACE = uuid.UUID("6f0b1c2e-9a52-5d63-8e1f-7a3c5b0d4e21")  # pimail's, fixed


def mobileconfig(
    services: ServiceEndpoints,
    address: str,
    display_name: str | None = None,
    ca_certificate: bytes | str | None = None,
) -> bytes:
    """An unsigned .mobileconfig (XML plist) that sets up `address`.

    One com.apple.mail.managed payload (IMAP if there is an IMAP listener, else
    POP; the user name is the address; no password: the device asks for it).
    With `ca_certificate` (PEM or DER, e.g. tls.ca.ca_pem()), pass it only while
    the server certificate comes from the internal CA, a com.apple.security.root
    payload is added so the device trusts the server.

    PayloadUUIDs and PayloadIdentifiers are uuid5 of (host, address): the same
    profile downloaded again replaces the installed one instead of adding a
    second account. ValueError for a bad address, a bad certificate, or a
    server with no incoming or no outgoing listener.
    """
    address = normalize_address(address)
    incoming = services.imap or services.pop3
    if not incoming or not services.submission:
        raise ValueError("no IMAP/POP3 or no submission listener to configure")
    outgoing = services.submission[0]
    description = _text(display_name or "") or address
    profile_uuid = uuid.uuid5(_PROFILE_NAMESPACE, f"{services.host}\n{address}")
    identifier = f"{_reverse_dns(services.host)}.pimail.{profile_uuid}"

    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.mail",
        "PayloadUUID": _uuid_text(uuid.uuid5(profile_uuid, "mail")),
        "PayloadDisplayName": description,
        "EmailAccountDescription": description,
        "EmailAccountType": "EmailTypeIMAP" if services.imap else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": services.host,
        "IncomingMailServerPortNumber": incoming[0].port,
        # With UseSSL on a STARTTLS port (143, 587) iOS negotiates STARTTLS.
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": services.host,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    content: list[dict[str, object]] = []
    if ca_certificate is not None:
        content.append(
            {
                "PayloadType": "com.apple.security.root",
                "PayloadVersion": 1,
                "PayloadIdentifier": f"{identifier}.ca",
                "PayloadUUID": _uuid_text(uuid.uuid5(profile_uuid, "ca")),
                "PayloadDisplayName": f"pimail CA ({services.host})",
                "PayloadCertificateFileName": "pimail-ca.cer",
                "PayloadContent": _certificate_der(ca_certificate),
            }
        )
    content.append(mail)
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": _uuid_text(profile_uuid),
        "PayloadDisplayName": f"Mail: {description}",
        "PayloadDescription": f"Mail account {address} on {services.host}",
        "PayloadOrganization": services.host,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": content,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def _uuid_text(value: uuid.UUID) -> str:
    return str(value).upper()


def _reverse_dns(host: str) -> str:
    """'mail.example.org' -> 'org.example.mail'; an IP literal -> 'local'."""
    if not re.fullmatch(r"[a-z0-9.-]+", host) or host.replace(".", "").isdigit():
        return "local"
    return ".".join(reversed(host.split(".")))


def _certificate_der(certificate: bytes | str) -> bytes:
    """DER of one X.509 certificate given in PEM or DER; ValueError otherwise."""
    # Imported here: `cryptography` is 10 MiB of a process that otherwise never
    # needs it (only a profile with the internal CA does).
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = certificate.encode("ascii") if isinstance(certificate, str) else certificate
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ValueError(f"not an X.509 certificate: {e}") from None
    return cert.public_bytes(serialization.Encoding.DER)
