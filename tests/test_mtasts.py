"""MTA-STS (queue/mtasts.py): the parsers directly, then policy discovery end to
end against a real DNS server and a real HTTPS server on loopback, whose
certificates come from a test CA made here."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import socketserver
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsserver import DnsServer
from pimail.dns.resolver import Resolver
from pimail.queue.mtasts import (
    MtaSts,
    Policy,
    PolicyError,
    check_response,
    mx_allowed,
    parse_policy,
    parse_response_head,
    parse_txt,
    requires_tls,
)

DOMAIN = "example.test"
Maker = Callable[..., MtaSts]  # the `make` fixture: MtaSts(con=None, timeout=2.0)
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmx: *.mx.example.test\r\nmax_age: 86400\r\n"  # noqa: E501


# -- parse_policy --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode", "mx", "max_age"),
    [
        (POLICY, "enforce", ["mail.example.test", "*.mx.example.test"], 86400),
        (POLICY.replace("\r\n", "\n"), "enforce", ["mail.example.test", "*.mx.example.test"],
         86400),
        ("version: STSv1\nmode: testing\nmx: MX.Example.NET.\nmax_age: 0", "testing",
         ["mx.example.net"], 0),
        ("version: STSv1\r\nmode: none\r\nmax_age: 31557600\r\n", "none", [], 31557600),
        ("mode: enforce\nfoo: bar baz\nmx: a.example\nversion:STSv1\nmax_age:   60  \n"
         "x-ext.1: ;= anything\n", "enforce", ["a.example"], 60),
        ("version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 5\n",
         "testing", ["a.example"], 5),  # RFC 8461 3.2: the first of a repeated field
    ],
)  # fmt: skip
def test_parse_policy_valid(text: str, mode: str, mx: list[str], max_age: int) -> None:
    policy = parse_policy(text)
    assert (policy.mode, policy.mx, policy.max_age) == (mode, mx, max_age)


@pytest.mark.parametrize(
    "text",
    [
        "mode: enforce\nmx: a.example\nmax_age: 60\n",  # no version
        "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 60\n",
        "version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 60\n",
        "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 60\n",
        "version: STSv1\nmx: a.example\nmax_age: 60\n",  # no mode
        "version: STSv1\nmode: enforce\nmx: a.example\n",  # no max_age
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1h\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 00000000001\n",  # 11 digits
        "version: STSv1\nmode: enforce\nmax_age: 60\n",  # enforce without mx
        "version: STSv1\nmode: testing\nmax_age: 60\n",
        "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 60\n",
        "version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 60\n",
        "version: STSv1\nmode: enforce\nmx: a b.example\nmax_age: 60\n",
        "version: STSv1\nmode: enforce\n\nmx: a.example\nmax_age: 60\n",  # blank line
        "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 60\n",
        "",
        "version: STSv1\nmode: none\nmax_age: 60\n" + "x: " + "y" * 70000 + "\n",  # > 64 KiB
    ],
)
def test_parse_policy_invalid(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


# -- parse_txt -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20240101T000000"], "20240101T000000"),
        (["v=STSv1;id=abc;"], "abc"),
        (["v=STSv1 ; id=abc ; ext=x.y/z "], "abc"),  # extension fields ignored
        (["v=spf1 -all", "v=STSv1; id=1", "other"], "1"),
        (["v=STSv1; id=1", "v=STSv1; id=2"], None),  # two STS records: no policy
        ([], None),
        (["v=STSv1"], None),
        (["v=STSv1; foo=bar"], None),  # no id
        (["v=STSv1; id="], None),
        (["v=STSv1; id=a-b"], None),
        (["v=STSv1; id=" + "a" * 33], None),
        (["v=STSv1; id=abc; bad field"], None),
        (["v=STSv1; id=abc;; x=y"], None),
        (["V=STSv1; id=abc"], None),
        (["v=STSv10; id=abc"], None),
    ],
)
def test_parse_txt(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


# -- the parsers, fuzzed ---------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_hosts = st.lists(_label, min_size=1, max_size=4).map(".".join)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parse_policy_only_policy_errors(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError:
        return
    assert policy.mode in ("enforce", "testing", "none")
    assert 0 <= policy.max_age <= 31557600


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["enforce", "testing"]),
    st.lists(st.tuples(st.booleans(), _hosts), min_size=1, max_size=4),
    st.integers(min_value=0, max_value=31557600),
    st.sampled_from(["\n", "\r\n"]),
)
def test_parse_policy_round_trip(
    mode: str, patterns: list[tuple[bool, str]], max_age: int, eol: str
) -> None:
    mx = [("*." if wild else "") + host for wild, host in patterns]
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    policy = parse_policy(eol.join(lines) + eol)
    assert (policy.mode, policy.mx, policy.max_age) == (mode, mx, max_age)
    for wild, host in patterns:
        assert policy.matches(("x." if wild else "") + host.upper() + ".")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=3))
def test_parse_txt_never_raises(records: list[str]) -> None:
    policy_id = parse_txt(records)
    assert policy_id is None or (policy_id.isalnum() and len(policy_id) <= 32)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_response_head_only_policy_errors(data: bytes) -> None:
    try:
        check_response(*parse_response_head(data + b"\r\n\r\n"))
    except PolicyError:
        pass


# -- matching ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("mail.example.com", True),
        ("MAIL.Example.COM.", True),
        ("mail.example.com.", True),
        ("other.example.com", False),
        ("a.example.net", True),
        ("A.EXAMPLE.NET", True),
        ("a.example.net.", True),
        ("example.net", False),  # the wildcard needs one label
        ("a.b.example.net", False),  # ... and only one
        (".example.net", False),
        ("xexample.net", False),
        ("a.example.org", True),  # pattern written with a trailing dot, upper case
    ],
)
def test_matches(host: str, expected: bool) -> None:
    policy = Policy("1", "enforce", ["mail.example.com", "*.example.net", "*.Example.ORG."], 60, 0)
    assert policy.matches(host) is expected


def test_mx_allowed_and_requires_tls() -> None:
    enforce = Policy("1", "enforce", ["mail.example.com"], 60, 0)
    testing = Policy("1", "testing", ["mail.example.com"], 60, 0)
    none = Policy("1", "none", [], 60, 0)
    assert mx_allowed(None, "x.example") and not requires_tls(None)
    assert mx_allowed(enforce, "mail.example.com") and not mx_allowed(enforce, "x.example")
    assert mx_allowed(testing, "x.example") and mx_allowed(none, "x.example")
    assert requires_tls(enforce) and not requires_tls(testing) and not requires_tls(none)


# -- a test CA and an HTTPS server ---------------------------------------------


@dataclass
class Pki:
    directory: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    cafile: str

    def server_context(self, name: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        certfile = self.directory / f"{name}.pem"
        keyfile = self.directory / f"{name}.key"
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keyfile.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pimail test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    cafile = directory / "ca.pem"
    cafile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(directory, key, cert, str(cafile))


class PolicyServer:
    """An HTTPS server on 127.0.0.1 that answers every request with `response`
    (after `delay` seconds; never, when `silent`) and records what it got."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.response = http_response(POLICY)
        self.delay = 0.0
        self.silent = False
        self.requests: list[bytes] = []
        self.done = threading.Event()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(5)
                try:
                    tls = server.context.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # the client refused our certificate
                with tls:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = tls.recv(4096)
                        if not chunk:
                            return
                        request += chunk
                    server.requests.append(request)
                    if server.silent:
                        server.done.wait(5)
                        return
                    time.sleep(server.delay)
                    try:
                        tls.sendall(server.response)
                        tls.unwrap()
                    except (ssl.SSLError, OSError):
                        pass  # the client stopped reading: it refused the response

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.done.set()
        self._server.shutdown()
        self._server.server_close()


def http_response(
    body: str | bytes,
    status: str = "200 OK",
    content_type: str = "text/plain",
    length: bool = True,
    extra: str = "",
) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}"
    if length:
        head += f"Content-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


@pytest.fixture
def zone(dns_server: DnsServer) -> DnsServer:
    dns_server.reset()
    dns_server.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=1"')
    dns_server.add(f"mta-sts.{DOMAIN}", "A", "127.0.0.1")
    return dns_server


@pytest.fixture
def https(pki: Pki) -> Iterator[PolicyServer]:
    server = PolicyServer(pki.server_context(f"mta-sts.{DOMAIN}"))
    yield server
    server.stop()


@pytest.fixture
def make(zone: DnsServer, https: PolicyServer, pki: Pki) -> Maker:
    def make(con: sqlite3.Connection | None = None, timeout: float = 2.0) -> MtaSts:
        resolver = Resolver([zone.address], timeout=1.0)
        return MtaSts(resolver, con, port=https.port, cafile=pki.cafile, timeout=timeout)

    return make


def connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.row_factory = sqlite3.Row
    return con


def set_txt(zone: DnsServer, value: str | None) -> None:
    name = f"_mta-sts.{DOMAIN}"
    if value is None:
        zone.set(name, "TXT")
    else:
        zone.set(name, "TXT", f'"{value}"')


def get(sts: MtaSts, domain: str = DOMAIN) -> Policy | None:
    return asyncio.run(sts.policy(domain))


# -- discovery end to end ------------------------------------------------------


def test_fetch(make: Maker, https: PolicyServer) -> None:
    https.response = http_response(POLICY, content_type="Text/Plain; charset=utf-8")
    policy = get(make(), "Example.TEST.")
    assert policy is not None
    assert (policy.id, policy.mode, policy.max_age) == ("1", "enforce", 86400)
    assert policy.mx == ["mail.example.test", "*.mx.example.test"]
    assert abs(policy.fetched - time.time()) < 5
    assert len(https.requests) == 1
    request = https.requests[0].decode()
    assert request.startswith("GET /.well-known/mta-sts.txt HTTP/1.0\r\n")
    assert f"\r\nHost: mta-sts.{DOMAIN}\r\n" in request


def test_body_until_close(make: Maker, https: PolicyServer) -> None:
    https.response = http_response(POLICY.replace("\r\n", "\n"), length=False)
    policy = get(make())
    assert policy is not None and policy.mode == "enforce"


def test_no_txt_no_policy(make: Maker, zone: DnsServer, https: PolicyServer) -> None:
    set_txt(zone, None)
    assert get(make()) is None
    assert get(make(), "nonexistent.test") is None
    assert https.requests == []


def test_cached_policy_used_while_id_unchanged(
    make: Maker, zone: DnsServer, https: PolicyServer
) -> None:
    sts = make()
    first = get(sts)
    assert get(sts) == first and get(sts) == first
    assert len(https.requests) == 1
    # a new id: fetched again
    set_txt(zone, "v=STSv1; id=2")
    https.response = http_response(POLICY.replace("enforce", "testing"))
    second = get(sts)
    assert second is not None and (second.id, second.mode) == ("2", "testing")
    assert len(https.requests) == 2
    assert get(sts) == second and len(https.requests) == 2


def test_concurrent_callers_share_one_fetch(make: Maker, https: PolicyServer) -> None:
    https.delay = 0.3
    sts = make()

    async def many() -> list[Policy | None]:
        return await asyncio.gather(*(sts.policy(DOMAIN) for _ in range(5)))

    policies = asyncio.run(many())
    assert all(p is not None and p.id == "1" for p in policies)
    assert len(https.requests) == 1


@pytest.mark.parametrize(
    "response",
    [
        http_response("", status="301 Moved Permanently", extra="Location: /elsewhere\r\n"),
        http_response(POLICY, status="404 Not Found"),
        http_response(POLICY, content_type="text/html"),
        http_response(POLICY, content_type="application/octet-stream"),
        http_response("version: STSv1\nmode: none\nmax_age: 60\n" + "x: y\n" * 14000),
        http_response("version: STSv1\nmode: none\nmax_age: 60\n" + "x: y\n" * 14000, length=False),
        http_response("5\r\nhello\r\n0\r\n\r\n", length=False,
                      extra="Transfer-Encoding: chunked\r\n"),
        http_response(POLICY)[:-10],  # cut short
        http_response("mode: enforce\n"),  # not a policy
        http_response(POLICY.encode() + b"x: \xff\n"),  # not UTF-8
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n folded\r\n\r\n" + POLICY.encode(),
        b"ICY 200 OK\r\nContent-Type: text/plain\r\n\r\n" + POLICY.encode(),
    ],
    ids=["301", "404", "html", "octets", "large", "large-unsized", "chunked", "short", "invalid",
         "not-utf8", "obs-fold", "not-http"],
)  # fmt: skip
def test_bad_response_no_policy(make: Maker, https: PolicyServer, response: bytes) -> None:
    https.response = response
    assert get(make()) is None
    # RFC 8461 3.3: a redirect is not followed
    assert len(https.requests) == 1


def test_certificate_for_another_name_refused(make: Maker, https: PolicyServer, pki: Pki) -> None:
    https.context = pki.server_context("www.example.test")
    assert get(make()) is None
    assert https.requests == []


def test_untrusted_certificate_refused(zone: DnsServer, https: PolicyServer) -> None:
    sts = MtaSts(Resolver([zone.address], timeout=1.0), None, port=https.port, timeout=2.0)
    assert get(sts) is None
    assert https.requests == []


def test_no_server_no_policy(make: Maker, https: PolicyServer) -> None:
    https.stop()
    assert get(make()) is None


def test_timeout_keeps_cached_policy(make: Maker, zone: DnsServer, https: PolicyServer) -> None:
    sts = make(timeout=0.5)
    first = get(sts)
    assert first is not None
    set_txt(zone, "v=STSv1; id=2")
    https.silent = True
    started = time.monotonic()
    assert get(sts) == first  # RFC 8461 5.1: the fetch failed, the cached policy holds
    assert time.monotonic() - started < 2
    assert len(https.requests) == 2


def test_dns_failure_keeps_cached_policy(make: Maker, zone: DnsServer, https: PolicyServer) -> None:
    sts = make()
    zone.servfail.add(f"_mta-sts.{DOMAIN}")
    assert get(sts) is None
    zone.servfail.clear()
    first = get(sts)
    assert first is not None
    zone.servfail.add(f"_mta-sts.{DOMAIN}")
    assert get(sts) == first
    assert len(https.requests) == 1


def test_txt_removed_keeps_cached_policy_until_max_age(
    make: Maker, zone: DnsServer, https: PolicyServer, tmp_path: Path
) -> None:
    con = connect(tmp_path / "pimail.db")
    first = get(make(con))
    assert first is not None
    set_txt(zone, None)
    assert get(make(con)) == first  # RFC 8461 5.1: a missing record keeps the policy
    set_txt(zone, "v=STSv1; id=1; id2=x; bad")  # invalid: likewise
    assert get(make(con)) == first
    # max_age passed: discarded
    con.execute("UPDATE mta_sts SET fetched = ?", (time.time() - 86401,))
    set_txt(zone, None)
    assert get(make(con)) is None
    assert con.execute("SELECT count(*) FROM mta_sts").fetchone()[0] == 0
    assert len(https.requests) == 1


def test_cache_survives_restart(make: Maker, https: PolicyServer, tmp_path: Path) -> None:
    path = tmp_path / "pimail.db"
    first = get(make(connect(path)))
    assert first is not None
    https.stop()
    second = get(make(connect(path)))
    assert second == first
    assert len(https.requests) == 1


def test_expired_policy_not_used(
    make: Maker, zone: DnsServer, https: PolicyServer, tmp_path: Path
) -> None:
    con = connect(tmp_path / "pimail.db")
    assert get(make(con)) is not None
    con.execute("UPDATE mta_sts SET fetched = ?", (time.time() - 86401,))
    # same id, but expired: fetched again
    refreshed = get(make(con))
    assert refreshed is not None and refreshed.fetched > time.time() - 5
    assert len(https.requests) == 2
    # expired, and the fetch fails: no policy
    con.execute("UPDATE mta_sts SET fetched = ?", (time.time() - 86401,))
    https.response = http_response("", status="500 Internal Server Error")
    assert get(make(con)) is None
    set_txt(zone, "v=STSv1; id=9")
    assert get(make(con)) is None


def test_new_id_failed_fetch_keeps_cached_policy(
    make: Maker, zone: DnsServer, https: PolicyServer
) -> None:
    sts = make()
    first = get(sts)
    set_txt(zone, "v=STSv1; id=2")
    https.response = http_response("", status="302 Found", extra="Location: https://x.test/\r\n")
    assert get(sts) == first
    assert first is not None and first.id == "1"


def test_max_age_zero_not_cached(make: Maker, https: PolicyServer) -> None:
    https.response = http_response(POLICY.replace("86400", "0"))
    sts = make()
    assert get(sts) is not None
    assert get(sts) is not None
    assert len(https.requests) == 2
