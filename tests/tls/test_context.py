"""TLS policy, SNI and reload, over real sockets on 127.0.0.1.

A small threaded TLS echo server wraps each accepted socket with the context a
listener would use (the store's front context); clients are Python's ssl and
the openssl command line. Nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pimail.tls import ca
from pimail.tls.context import CertificateStore, make_client_context, make_server_context

HOST = "mx.test"
DOMAINS = ["example.org"]
LOCALHOST = "127.0.0.1"

# -- a TLS echo server --------------------------------------------------------------


class EchoServer:
    """Echoes whatever each client sends, one thread per connection.

    Each accepted socket is wrapped with `context()` as of that moment, the way
    a listener holds its context. Server-side handshake errors are collected.
    """

    def __init__(self, context: Callable[[], ssl.SSLContext]) -> None:
        self._context = context
        self.listener = socket.create_server((LOCALHOST, 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = self._context().wrap_socket(conn, server_side=True)
            while data := tls.recv(4096):
                tls.sendall(data)
        except (ssl.SSLError, OSError) as e:
            self.errors.append(e)
            conn.close()
            return
        try:
            # Answer the client's close_notify: a clean shutdown keeps the
            # session in OpenSSL's cache. (Clients that just close get none.)
            tls.unwrap()
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join()
        self.listener.close()
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[], ssl.SSLContext]], EchoServer]]:
    servers: list[EchoServer] = []

    def start(context: Callable[[], ssl.SSLContext]) -> EchoServer:
        server = EchoServer(context)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# -- clients -------------------------------------------------------------------------


def connect(
    port: int,
    context: ssl.SSLContext,
    server_name: str | None = HOST,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLSocket:
    raw = socket.create_connection((LOCALHOST, port), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=server_name, session=session)
    except BaseException:
        raw.close()
        raise


def echo(sock: ssl.SSLSocket, data: bytes = b"ping\r\n") -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def verifying_client(cafile: Path) -> ssl.SSLContext:
    """What a device that imported the internal CA does, strict X.509 checks included."""
    context = ssl.create_default_context(cafile=cafile)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def peeking_client(
    version: ssl.TLSVersion | None = None, ciphers: str | None = None
) -> ssl.SSLContext:
    """No verification: only to look at what the server offers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if version is not None:
        with warnings.catch_warnings():  # TLS 1.0/1.1 on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def legacy_server(result: ca.EnsureResult) -> ssl.SSLContext:
    """A server that accepts anything: proves the legacy clients below work at all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(result.certfile, result.keyfile)
    return context


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{LOCALHOST}:{port}", "-servername", HOST, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def internal(data_dir: Path) -> ca.EnsureResult:
    return ca.ensure_certificates(data_dir, HOST, DOMAINS, [LOCALHOST])


@pytest.fixture
def cafile(data_dir: Path, internal: ca.EnsureResult) -> Path:
    return data_dir / "tls" / "ca" / "ca.pem"


@pytest.fixture
def store(data_dir: Path, internal: ca.EnsureResult) -> CertificateStore:
    # Reloads only when a test says so.
    return CertificateStore(ca.live_dir(data_dir), check_interval=None)


@pytest.fixture
def server(
    store: CertificateStore, serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer]
) -> EchoServer:
    stable = store.context
    return serve(lambda: stable)


# -- policy -----------------------------------------------------------------------------


def test_policy(internal: ca.EnsureResult) -> None:
    context = make_server_context(internal.certfile, internal.keyfile)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    for option in (
        ssl.OP_NO_COMPRESSION,
        ssl.OP_NO_RENEGOTIATION,
        ssl.OP_CIPHER_SERVER_PREFERENCE,
    ):
        assert context.options & option
    ciphers = context.get_ciphers()
    tls12 = [c for c in ciphers if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)
    assert all(c["aead"] for c in ciphers)
    assert not [c for c in ciphers if c["protocol"] not in ("TLSv1.2", "TLSv1.3")]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_handshake(
    version: ssl.TLSVersion,
    server: EchoServer,
    store: CertificateStore,
    cafile: Path,
) -> None:
    client = verifying_client(cafile)
    client.minimum_version = client.maximum_version = version
    expected = store.info("internal")
    assert expected is not None
    for name in [HOST, "mail.example.org", "autoconfig.example.org", "pimail.local", LOCALHOST]:
        with connect(server.port, client, name) as sock:
            assert sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
            assert serial(sock) == expected.serial
            assert sock.compression() is None
            cipher = sock.cipher()
            assert cipher is not None
            assert "GCM" in cipher[0] or "CHACHA20" in cipher[0]
            if version == ssl.TLSVersion.TLSv1_2:
                assert cipher[0].startswith("ECDHE-ECDSA-")
            assert echo(sock) == b"ping\r\n"


def test_client_verifies_host_name(server: EchoServer, cafile: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(server.port, verifying_client(cafile), "evil.example")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_protocols_refused(
    version: ssl.TLSVersion,
    server: EchoServer,
    internal: ca.EnsureResult,
    serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer],
) -> None:
    client = peeking_client(version, "ALL:@SECLEVEL=0")
    # The client can speak it: a permissive server accepts it...
    legacy = legacy_server(internal)
    with connect(serve(lambda: legacy).port, client) as sock:
        assert sock.version() in ("TLSv1", "TLSv1.1")
    # ...ours does not.
    with pytest.raises(ssl.SSLError) as failure:
        connect(server.port, client)
    assert failure.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


def test_openssl_s_client_protocols(
    server: EchoServer,
    internal: ca.EnsureResult,
    serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer],
) -> None:
    legacy = serve(lambda: legacy_server(internal))
    for flag in ["-tls1", "-tls1_1"]:
        assert s_client(legacy.port, flag, "-cipher", "ALL@SECLEVEL=0").returncode == 0
        refused = s_client(server.port, flag, "-cipher", "ALL@SECLEVEL=0")
        assert refused.returncode != 0
        assert "Cipher is (NONE)" in refused.stdout
        assert "alert protocol version" in refused.stderr
    for flag, protocol in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")]:
        accepted = s_client(server.port, flag)
        assert accepted.returncode == 0, accepted.stderr
        assert f"New, {protocol}, Cipher is " in accepted.stdout


@pytest.mark.parametrize(
    "ciphers",
    [
        "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384",  # CBC, TLS 1.2 MACs
        "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA",  # CBC, SHA-1
        "AES128-GCM-SHA256:AES256-GCM-SHA384",  # no forward secrecy
    ],
)
def test_tls12_only_forward_secret_aead(
    ciphers: str,
    server: EchoServer,
    internal: ca.EnsureResult,
    serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer],
) -> None:
    client = peeking_client(ssl.TLSVersion.TLSv1_2, ciphers + ":@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as failure:
        connect(server.port, client)
    assert failure.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    refused = s_client(server.port, "-tls1_2", "-cipher", ciphers)
    assert refused.returncode != 0 and "Cipher is (NONE)" in refused.stdout
    if "ECDSA" in ciphers:  # (static RSA cannot work with an EC key anywhere)
        legacy = legacy_server(internal)
        with connect(serve(lambda: legacy).port, client) as sock:
            assert sock.cipher() is not None


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
)
def test_tls12_allowed_ciphers(cipher: str, server: EchoServer) -> None:
    with connect(server.port, peeking_client(ssl.TLSVersion.TLSv1_2, cipher)) as sock:
        assert sock.cipher() == (cipher, "TLSv1.2", 128 if "128" in cipher else 256)
        assert echo(sock) == b"ping\r\n"
    accepted = s_client(server.port, "-tls1_2", "-cipher", cipher)
    assert f"New, TLSv1.2, Cipher is {cipher}" in accepted.stdout


def test_server_prefers_its_own_order(server: EchoServer) -> None:
    # The client prefers AES-256; the server's list puts AES-128 first.
    client = peeking_client(
        ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
    )
    with connect(server.port, client) as sock:
        cipher = sock.cipher()
        assert cipher is not None and cipher[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"


# -- SNI -----------------------------------------------------------------------------------


def test_sni_chooses_among_certificates(
    data_dir: Path,
    internal: ca.EnsureResult,
    serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer],
) -> None:
    other = ca.ensure_certificates(data_dir, "other.test", name="other")
    authority = ca.ensure_ca(data_dir, HOST)
    key, cert = ca.issue_server_certificate(authority, ["*.wild.test"])
    ca.write_certificate_pair(
        data_dir,
        "wild",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )
    store = CertificateStore(ca.live_dir(data_dir), ["internal", "other", "wild"])
    server = serve(lambda: store.context)
    client = peeking_client()
    expected = {
        HOST: internal.info.serial,
        "MAIL.example.org.": internal.info.serial,  # case and trailing dot do not matter
        "other.test": other.info.serial,
        "pimail.local": internal.info.serial,  # both have it: the first name wins
        "a.wild.test": cert.serial_number,
        "a.b.wild.test": internal.info.serial,  # "*" is one label only
        "unknown.example": internal.info.serial,  # nobody has it: the default
        None: internal.info.serial,  # no SNI: the default
    }
    for name, wanted in expected.items():
        with connect(server.port, client, name) as sock:
            assert serial(sock) == wanted, name
            assert echo(sock) == b"ping\r\n"


def test_override(
    data_dir: Path,
    internal: ca.EnsureResult,
    server: EchoServer,
    store: CertificateStore,
) -> None:
    other = ca.ensure_certificates(data_dir, "other.test", name="other")
    store.set_override("Challenge.test", make_server_context(other.certfile, other.keyfile))
    with connect(server.port, peeking_client(), "challenge.test") as sock:
        assert serial(sock) == other.info.serial
    store.set_override("challenge.test", None)
    with connect(server.port, peeking_client(), "challenge.test") as sock:
        assert serial(sock) == internal.info.serial


# -- reload ---------------------------------------------------------------------------------


def test_reload_new_connections_get_the_new_certificate(
    data_dir: Path,
    internal: ca.EnsureResult,
    server: EchoServer,
    store: CertificateStore,
    cafile: Path,
) -> None:
    client = verifying_client(cafile)
    before = connect(server.port, client)
    try:
        assert serial(before) == internal.info.serial
        assert echo(before) == b"ping\r\n"

        renewed = ca.ensure_certificates(data_dir, HOST, [*DOMAINS, "example.com"], [LOCALHOST])
        assert renewed.issued and renewed.info.serial != internal.info.serial
        # Not yet reloaded: still the old one.
        with connect(server.port, client) as sock:
            assert serial(sock) == internal.info.serial

        assert store.reload() == ["internal"]
        assert store.reload() == []  # nothing changed since
        with connect(server.port, client, "mail.example.com") as sock:
            assert serial(sock) == renewed.info.serial
            assert echo(sock) == b"ping\r\n"

        # The connection opened before carries on, with its certificate.
        for i in range(3):
            assert echo(before, f"still here {i}\r\n".encode()) == f"still here {i}\r\n".encode()
        assert serial(before) == internal.info.serial
    finally:
        before.close()
    assert server.errors == []


def test_reload_from_the_handshake(
    data_dir: Path,
    internal: ca.EnsureResult,
    serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer],
) -> None:
    # check_interval=0: every handshake looks at the files (two stat calls).
    store = CertificateStore(ca.live_dir(data_dir), check_interval=0)
    server = serve(lambda: store.context)
    with connect(server.port, peeking_client()) as sock:
        assert serial(sock) == internal.info.serial
    renewed = ca.ensure_certificates(data_dir, HOST, ["example.net"])
    with connect(server.port, peeking_client()) as sock:
        assert serial(sock) == renewed.info.serial


def test_broken_pair_keeps_the_old_certificate(
    data_dir: Path,
    internal: ca.EnsureResult,
    server: EchoServer,
    store: CertificateStore,
) -> None:
    authority = ca.ensure_ca(data_dir, HOST)
    key_a, _ = ca.issue_server_certificate(authority, [HOST])
    _, cert_b = ca.issue_server_certificate(authority, [HOST])
    key_pem = key_a.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ca.write_certificate_pair(
        data_dir, "internal", key_pem, cert_b.public_bytes(serialization.Encoding.PEM)
    )
    assert store.reload() == []
    with connect(server.port, peeking_client()) as sock:
        assert serial(sock) == internal.info.serial
    # Once a good pair is there, it is taken.
    fixed = ca.ensure_certificates(data_dir, HOST, DOMAINS, [LOCALHOST])
    assert fixed.reason == "key mismatch"
    assert store.reload() == ["internal"]
    with connect(server.port, peeking_client()) as sock:
        assert serial(sock) == fixed.info.serial


def test_certificate_appearing_later(
    data_dir: Path,
    internal: ca.EnsureResult,
    serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer],
) -> None:
    # E.g. an ACME certificate preferred over the internal one once it exists.
    store = CertificateStore(ca.live_dir(data_dir), ["acme", "internal"], check_interval=None)
    assert store.loaded_names == ["internal"]
    server = serve(lambda: store.context)
    with connect(server.port, peeking_client(), "mail.example.org") as sock:
        assert serial(sock) == internal.info.serial
    acme = ca.ensure_certificates(data_dir, "mail.example.org", name="acme")
    assert store.reload() == ["acme"]
    assert store.loaded_names == ["acme", "internal"]
    for name, wanted in [
        ("mail.example.org", acme.info.serial),
        ("autoconfig.example.org", internal.info.serial),
        (None, acme.info.serial),
    ]:
        with connect(server.port, peeking_client(), name) as sock:
            assert serial(sock) == wanted, name


def test_no_certificate_at_all(
    data_dir: Path, serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer]
) -> None:
    store = CertificateStore(ca.live_dir(data_dir), check_interval=None)
    assert store.loaded_names == []
    server = serve(lambda: store.context)
    with pytest.raises(ssl.SSLError) as failure:
        connect(server.port, peeking_client())
    assert failure.value.reason == "TLSV1_ALERT_INTERNAL_ERROR"
    # The listener survives; a certificate arriving later is served.
    result = ca.ensure_certificates(data_dir, HOST)
    assert store.reload() == ["internal"]
    with connect(server.port, peeking_client()) as sock:
        assert serial(sock) == result.info.serial


# -- sessions ----------------------------------------------------------------------------------


def resume(
    port: int, client: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession, bool]:
    """One connection: echo, shut down cleanly; the session and whether it was resumed."""
    sock = connect(port, client, session=session)
    try:
        echo(sock)  # TLS 1.3 sends its tickets after the handshake
        result = sock.session
        reused = bool(sock.session_reused)
        sock.unwrap()
    finally:
        sock.close()
    assert result is not None
    return result, reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_ticket_keys_rotate(
    version: ssl.TLSVersion,
    data_dir: Path,
    internal: ca.EnsureResult,
    serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer],
) -> None:
    now = [0.0]
    store = CertificateStore(
        ca.live_dir(data_dir), check_interval=None, ticket_key_lifetime=100, clock=lambda: now[0]
    )
    server = serve(store.handshake_context)
    client = peeking_client(version)
    session, reused = resume(server.port, client, None)
    assert not reused
    assert session.has_ticket
    _, reused = resume(server.port, client, session)
    assert reused
    first = store.handshake_context()
    now[0] = 99.0
    assert store.handshake_context() is first
    now[0] = 100.0
    assert store.handshake_context() is not first  # new ticket keys
    _, reused = resume(server.port, client, session)
    assert not reused  # the old ticket no longer decrypts: a full handshake


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_stable_context_resumes_from_its_cache(
    version: ssl.TLSVersion, server: EchoServer, store: CertificateStore
) -> None:
    client = peeking_client(version)
    session, reused = resume(server.port, client, None)
    assert not reused
    _, reused = resume(server.port, client, session)
    assert reused
    assert store.context.options & ssl.OP_NO_TICKET  # no long-lived ticket key
    assert store.context.session_stats()["hits"] == 1


def test_reload_does_not_break_resumption(
    data_dir: Path, server: EchoServer, store: CertificateStore
) -> None:
    client = peeking_client(ssl.TLSVersion.TLSv1_3)
    session, _ = resume(server.port, client, None)
    ca.ensure_certificates(data_dir, HOST, ["example.net"])
    assert store.reload() == ["internal"]
    _, reused = resume(server.port, client, session)
    assert reused


# -- the client side --------------------------------------------------------------------------


def test_client_context(
    server: EchoServer,
    cafile: Path,
    internal: ca.EnsureResult,
    serve: Callable[[Callable[[], ssl.SSLContext]], EchoServer],
) -> None:
    # System trust anchors only: the internal CA is not among them.
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(server.port, make_client_context())
    with connect(server.port, make_client_context(cafile=cafile), "mail.example.org") as sock:
        assert sock.version() == "TLSv1.3" and echo(sock) == b"ping\r\n"
    cadata = ca.ca_pem(cafile.parent.parent.parent)
    with connect(server.port, make_client_context(cadata=cadata), "pimail.local") as sock:
        assert serial(sock) == internal.info.serial
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(server.port, make_client_context(cafile=cafile), "evil.example")
    with connect(server.port, make_client_context(verify=False), "evil.example") as sock:
        assert echo(sock) == b"ping\r\n"
    # A peer that stops at TLS 1.1 gets no connection.
    legacy_context = legacy_server(internal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy_context.maximum_version = ssl.TLSVersion.TLSv1_1
    legacy = serve(lambda: legacy_context)
    with pytest.raises(ssl.SSLError):
        connect(legacy.port, make_client_context(verify=False))


def test_certificate_lifetime_reported(store: CertificateStore, internal: ca.EnsureResult) -> None:
    info = store.info("internal")
    assert info == internal.info
    assert dt.timedelta(days=396) < info.remaining() <= dt.timedelta(days=397)
    assert store.info("acme") is None
