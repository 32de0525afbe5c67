"""Let's Encrypt's protocol against a real ACME server: Debian's pebble on loopback.

pebble-challtestsrv answers pebble's DNS questions (every name is 127.0.0.1);
pebble's HTTP-01 validation fetches the token from pimail's own HTTP listener.
"""

from __future__ import annotations

import datetime as dt
import imaplib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import PASSWORD, PimailServer, free_port

NAME = "mail.example.org"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for pebble's own HTTPS listener (127.0.0.1)."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "pebble.pem", directory / "pebble.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _wait(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


class Pebble:
    def __init__(self, tmp: Path, http_port: int, tls_port: int | None = None) -> None:
        self.port, self.management, dns = free_port(), free_port(), free_port()
        self.cert, key = _self_signed(tmp)
        config = tmp / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{self.management}",
                        "certificate": str(self.cert),
                        "privateKey": str(key),
                        "httpPort": http_port,
                        "tlsPort": tls_port or free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        self.dns = subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-defaultIPv6", "",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management",
             f"127.0.0.1:{free_port()}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        self.log = tmp / "pebble.log"
        self.proc = subprocess.Popen(
            ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"],
            env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        _wait(self.port)
        _wait(self.management)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def roots(self) -> str:
        """pebble's issuing roots (new every run), to verify what it issued."""
        ctx = ssl.create_default_context(cafile=self.cert)
        pems = []
        for i in range(3):
            url = f"https://127.0.0.1:{self.management}/roots/{i}"
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
                    pems.append(r.read().decode())
            except OSError:
                break
        return "".join(pems)

    def stop(self) -> None:
        for p in (self.proc, self.dns):
            p.terminate()
            p.wait(10)


@pytest.fixture
def acme_setup(make_server, tmp_path: Path) -> Iterator[tuple[PimailServer, Pebble]]:
    http_port = free_port()
    pebble = Pebble(tmp_path, http_port)
    server: PimailServer = make_server(
        sections={
            "web": {"listen_http": [f"127.0.0.1:{http_port}"]},
            "tls": {
                "acme": True,
                "acme_directory": pebble.directory,
                "acme_ca_bundle": str(pebble.cert),
                "acme_names": [NAME],
                "acme_email": "admin@example.org",
            },
        }
    )
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.http_port = http_port
    yield server, pebble
    server.stop()
    pebble.stop()


def leaf(port: int, roots: str, server_name: str = NAME) -> x509.Certificate:
    ctx = ssl.create_default_context(cadata=roots)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_issued_by_pebble_then_renewed_while_a_session_carries_on(acme_setup) -> None:
    server, pebble = acme_setup
    server.start()
    # The internal certificate serves at once; an IMAP session opens with it.
    early = imaplib.IMAP4_SSL("localhost", server.imaps_port, ssl_context=server.client_tls())
    early.login("alice@example.org", PASSWORD)
    early.select("INBOX")
    # The server's renewal loop runs at start: pebble validates HTTP-01 against it.
    live = server.data_dir / "tls" / "live" / "acme"
    wait_for(live.exists)
    roots = pebble.roots()
    first = None

    def served() -> bool:
        nonlocal first
        try:
            first = leaf(server.imaps_port, roots)
        except ssl.SSLError:
            return False  # still the internal certificate for this name
        return True

    wait_for(served, 15)  # the store reloads within seconds, no restart
    assert first is not None
    sans = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [NAME]
    # Every TLS port serves it, implicit TLS and STARTTLS alike, verified against
    # pebble's roots for the name (the stdlib clients send their host as SNI).
    import poplib
    import smtplib

    for port in (server.imaps_port, server.pop3s_port, server.submissions_port):
        leaf(port, roots)
    pebble_tls = ssl.create_default_context(cadata=roots)
    for port in (server.smtp_port, server.submission_port):
        with smtplib.SMTP("127.0.0.1", port) as s:
            s._host = NAME
            s.starttls(context=pebble_tls)
            assert s.ehlo()[0] == 250
    imap = imaplib.IMAP4("127.0.0.1", server.imap_port)
    imap.host = NAME
    assert imap.starttls(ssl_context=pebble_tls)[0] == "OK"
    imap.logout()
    pop = poplib.POP3("127.0.0.1", server.pop3_port)
    pop.host = NAME
    assert pop.stls(context=pebble_tls).startswith(b"+OK")
    pop.quit()
    # Renewal (forced here): a new serial for new connections...
    out = server.cli("cert", "renew")
    assert "status=issued" in out.stdout
    wait_for(lambda: leaf(server.imaps_port, roots).serial_number != first.serial_number, 15)
    # ...while the session opened before keeps working.
    assert early.noop()[0] == "OK"
    assert early.select("INBOX")[0] == "OK"
    early.logout()
    status = server.cli("cert", "status").stdout
    assert "acme: serial" in status and "last success" in status


def test_acme_failure_keeps_the_old_certificate_and_backs_off(acme_setup) -> None:
    server, pebble = acme_setup
    pebble.stop()  # the CA is down
    server.start()
    state = server.data_dir / "tls" / "acme" / "state.json"
    wait_for(state.exists, 30)
    recorded = json.loads(state.read_text())
    assert recorded["failures"] == 1 and recorded["last_error"]
    next_attempt = dt.datetime.fromisoformat(recorded["next_attempt"])
    assert dt.timedelta(minutes=50) < next_attempt - dt.datetime.now(dt.UTC) < dt.timedelta(hours=2)
    # Nothing issued; the internal certificate is still served, for every name.
    assert not (server.data_dir / "tls" / "live" / "acme").exists()
    ctx = server.client_tls()
    with (
        socket.create_connection(("127.0.0.1", server.imaps_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # A second failure doubles the wait.
    failed = server.cli("cert", "renew", check=False)
    assert failed.returncode == 1 and "status=failed" in failed.stdout
    recorded = json.loads(state.read_text())
    assert recorded["failures"] == 2
    assert "next attempt" in server.cli("cert", "status").stdout


def test_http_listener_serves_only_challenges(acme_setup) -> None:
    server, _ = acme_setup
    server.start()
    port = server.http_port
    challenges = server.data_dir / "tls" / "acme-challenge"
    challenges.mkdir(parents=True, exist_ok=True)
    (challenges / "tok-en_1").write_text("tok-en_1.thumbprint")

    def get(path: str, raw: bytes | None = None) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            request = f"GET {path} HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n"
            s.sendall(raw or request.encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data

    assert get("/.well-known/acme-challenge/tok-en_1").endswith(b"\r\n\r\ntok-en_1.thumbprint")
    assert get("/.well-known/acme-challenge/missing").startswith(b"HTTP/1.1 404")
    escape = get("/.well-known/acme-challenge/../../pimail.db")  # normalised: /pimail.db
    assert escape.startswith((b"HTTP/1.1 404", b"HTTP/1.1 301")) and b"SQLite" not in escape
    redirect = get("/webmail")
    location = f"Location: https://{NAME}:{server.https_port}/webmail".encode()
    assert redirect.startswith(b"HTTP/1.1 301") and location in redirect
    assert get("", b"garbage\r\n\r\n")[:12] in (b"HTTP/1.1 400", b"HTTP/1.0 400")
    huge_header = b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n"
    assert get("", huge_header)[:12] in (b"HTTP/1.1 400", b"HTTP/1.0 400", b"HTTP/1.1 431")
    shutil.rmtree(challenges)


def test_failing_challenge_keeps_the_old_certificate(make_server, tmp_path: Path) -> None:
    """pebble validates against a port where nobody answers: the order fails."""
    pebble = Pebble(tmp_path, free_port())  # HTTP-01 goes to a closed port
    server: PimailServer = make_server(
        sections={
            "tls": {
                "acme": True,
                "acme_directory": pebble.directory,
                "acme_ca_bundle": str(pebble.cert),
                "acme_names": [NAME],
            }
        }
    )
    server.cli("domain", "add", "example.org")
    try:
        result = server.cli("cert", "renew", check=False)
        assert result.returncode == 1 and "status=failed" in result.stdout
        state = json.loads((server.data_dir / "tls" / "acme" / "state.json").read_text())
        assert state["failures"] == 1 and "next_attempt" in state
        assert not (server.data_dir / "tls" / "live" / "acme").exists()
        assert not any((server.data_dir / "tls" / "acme-challenge").iterdir())  # cleaned up
    finally:
        pebble.stop()


def test_rate_limit_waits_for_the_ca(tmp_path: Path) -> None:
    """A rateLimited problem (RFC 8555 6.6) pushes the next attempt past the backoff.
    pebble cannot rate-limit, so here the order fails with the CA's problem
    document as the acme library raises it (a stand-in for the network part)."""
    from acme import messages

    from pimail.tls import acme_client

    request = acme_client.Request(tmp_path, "https://127.0.0.1:1/dir", "", ["a.example"])
    now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    original = acme_client.obtain

    def limited(_: acme_client.Request) -> str:
        raise messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="too many")

    acme_client.obtain = limited
    try:
        result = acme_client.run(request, now=now)
    finally:
        acme_client.obtain = original
    assert result["status"] == "failed"
    next_attempt = dt.datetime.fromisoformat(result["next_attempt"])
    assert next_attempt - now >= dt.timedelta(hours=3)
    # Before that time, nothing is even tried.
    assert acme_client.run(request, now=now + dt.timedelta(hours=1))["status"] == "backing-off"


def test_tls_alpn_01_certificate_served_to_acme_tls_clients(make_server, tmp_path: Path) -> None:
    """RFC 8737 3: while the ACME client has a validation certificate on disk, the
    TLS port presents it, with ALPN "acme-tls/1", to clients asking for that name.
    The whole TLS-ALPN-01 order against pebble is the next test."""
    from pimail.tls import acme_client

    https_port = free_port()
    server: PimailServer = make_server(
        sections={
            "web": {"listen_https": [f"127.0.0.1:{https_port}"]},
            "tls": {"acme": True, "acme_directory": "https://127.0.0.1:1/dir"},
        }
    )
    server.cli("domain", "add", "example.org")
    server.start()
    alpn = server.data_dir / "tls" / "acme-alpn"
    alpn.mkdir(parents=True, exist_ok=True)
    (alpn / f"{NAME}.pem").write_bytes(acme_client.alpn_certificate(NAME, "token.thumbprint"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the validation certificate is self-signed by design
    ctx.set_alpn_protocols(["acme-tls/1"])

    def handshake() -> tuple[str | None, x509.Certificate]:
        with (
            socket.create_connection(("127.0.0.1", https_port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=NAME) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return tls.selected_alpn_protocol(), x509.load_der_x509_certificate(der)

    def served() -> bool:
        return handshake()[0] == "acme-tls/1"

    wait_for(served, 10)
    _, cert = handshake()
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"))
    import hashlib

    assert (
        ext.critical
        and ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest()
    )
    # Gone from disk, gone from the port: the internal certificate again.
    (alpn / f"{NAME}.pem").unlink()
    wait_for(lambda: not served(), 10)
    assert handshake()[1].issuer.rfc4514_string().startswith("CN=pimail internal CA")


def test_tls_alpn_01_where_port_80_is_closed(make_server, tmp_path: Path) -> None:
    """RFC 8737: pebble validates on pimail's TLS port with ALPN acme-tls/1; the
    HTTP-01 port leads nowhere."""
    https_port = free_port()
    pebble = Pebble(tmp_path, free_port(), tls_port=https_port)
    server: PimailServer = make_server(
        sections={
            "web": {"listen_https": [f"127.0.0.1:{https_port}"]},
            "tls": {
                "acme": True,
                "acme_challenge": "tls-alpn-01",
                "acme_directory": pebble.directory,
                "acme_ca_bundle": str(pebble.cert),
                "acme_names": [NAME],
            },
        }
    )
    server.cli("domain", "add", "example.org")
    try:
        server.start()
        wait_for((server.data_dir / "tls" / "live" / "acme").exists, 60)
        roots = pebble.roots()

        def served() -> bool:
            try:
                leaf(server.imaps_port, roots)
            except ssl.SSLError:
                return False
            return True

        wait_for(served, 15)
        # The validation certificate is gone once the order is done.
        assert not any((server.data_dir / "tls" / "acme-alpn").glob("*.pem"))
    finally:
        pebble.stop()
