"""The internal CA and server certificates: files, modes, contents, re-issue.

Handshakes against these certificates are in test_context.py.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pimail.tls import ca

HOST = "mx.test"
DOMAINS = ["example.org", "example.net"]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def test_server_names() -> None:
    assert ca.server_names("MX.Test.", ["example.org"], ["127.0.0.1", "[::1]", "mx.test"]) == [
        "mx.test",
        "mail.example.org",
        "autoconfig.example.org",
        "mta-sts.example.org",
        "pimail.local",
        "127.0.0.1",
        "::1",
    ]
    assert ca.normalize_name("Bücher.example") == "xn--bcher-kva.example"
    assert ca.normalize_name("*.example.org") == "*.example.org"
    for bad in ["", "a..b", "-a.example", "a_b.example", "*.org", "a.*.example", "x" * 64]:
        with pytest.raises(ValueError):
            ca.normalize_name(bad)


def test_first_start_creates_ca_and_server_certificate(data_dir: Path, umask_zero: None) -> None:
    # umask 0: the modes must come from pimail, not from the environment.
    result = ca.ensure_certificates(data_dir, HOST, DOMAINS, ["127.0.0.1"])
    assert result.issued and result.reason == "missing"
    tls = data_dir / "tls"
    assert mode(tls / "ca") == 0o700
    assert mode(tls / "ca" / "ca.key") == 0o600
    assert mode(tls / "ca" / "ca.pem") == 0o644
    live = tls / "live" / "internal"
    assert live.is_symlink()
    assert result.certfile == live / "fullchain.pem"
    assert result.keyfile == live / "privkey.pem"
    assert mode(result.keyfile) == 0o600
    assert mode(result.certfile) == 0o644
    # No temporary files left behind.
    assert not [p for p in tls.rglob("*.tmp")]


def test_modes_hold_under_a_strict_umask(data_dir: Path) -> None:
    old = os.umask(0o077)
    try:
        result = ca.ensure_certificates(data_dir, HOST)
    finally:
        os.umask(old)
    assert mode(data_dir / "tls" / "ca" / "ca.pem") == 0o644
    assert mode(result.certfile) == 0o644
    assert mode(result.keyfile) == 0o600


def test_ca_certificate(data_dir: Path) -> None:
    authority = ca.ensure_ca(data_dir, HOST)
    cert = authority.certificate
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == (
        "pimail internal CA mx.test"
    )
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3651)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    assert public == authority.key.public_key()
    # ca_pem() is what users import, byte for byte the file.
    assert ca.ca_pem(data_dir) == (data_dir / "tls" / "ca" / "ca.pem").read_text()
    # A very long host name still fits RFC 5280's 64-character CN.
    long_dir = data_dir.parent / "long"
    ca.ensure_ca(long_dir, "h" * 60 + ".example.org")


def test_ca_pem_without_ca(data_dir: Path) -> None:
    with pytest.raises(ca.CertificateError):
        ca.ca_pem(data_dir)


def test_server_certificate_contents(data_dir: Path) -> None:
    result = ca.ensure_certificates(data_dir, HOST, DOMAINS, ["127.0.0.1", "::1"])
    cert = leaf(result.certfile)
    authority = ca.ensure_ca(data_dir, HOST)
    assert result.info.dns_names == (
        "mx.test",
        "mail.example.org",
        "autoconfig.example.org",
        "mta-sts.example.org",
        "mail.example.net",
        "autoconfig.example.net",
        "mta-sts.example.net",
        "pimail.local",
    )
    assert result.info.ip_addresses == ("127.0.0.1", "::1")
    assert cert.issuer == authority.certificate.subject
    assert result.info.issuer == authority.certificate.subject.rfc4514_string()
    assert result.info.subject == "CN=mx.test"
    assert result.info.serial == cert.serial_number and cert.serial_number.bit_length() > 64
    cert.verify_directly_issued_by(authority.certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = result.info.not_after - result.info.not_before
    assert lifetime <= dt.timedelta(days=398)
    key = serialization.load_pem_private_key(result.keyfile.read_bytes(), None)
    assert key.public_key() == cert.public_key()
    # The leaf only: the root is the client's trust anchor (RFC 8446 4.4.2).
    assert len(x509.load_pem_x509_certificates(result.certfile.read_bytes())) == 1


def test_openssl_verifies_the_chain(data_dir: Path) -> None:
    result = ca.ensure_certificates(data_dir, HOST, DOMAINS, ["127.0.0.1"])
    cafile = data_dir / "tls" / "ca" / "ca.pem"
    for name in ["mail.example.org", "pimail.local", HOST]:
        out = subprocess.run(
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-purpose",
                "sslserver",
                "-verify_hostname",
                name,
                "-CAfile",
                str(cafile),
                str(result.certfile),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0 and out.stdout.strip().endswith(": OK"), out
    out = subprocess.run(
        ["openssl", "verify", "-verify_ip", "127.0.0.1", "-CAfile", str(cafile), result.certfile],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out
    # And it fails for a name the certificate does not carry.
    out = subprocess.run(
        [
            "openssl",
            "verify",
            "-verify_hostname",
            "evil.example",
            "-CAfile",
            cafile,
            result.certfile,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0


def test_ensure_is_idempotent(data_dir: Path) -> None:
    first = ca.ensure_certificates(data_dir, HOST, DOMAINS)
    ca_before = (data_dir / "tls" / "ca" / "ca.pem").read_bytes()
    second = ca.ensure_certificates(data_dir, HOST, list(reversed(DOMAINS)))
    assert not second.issued and second.reason is None
    assert second.info == first.info
    assert (data_dir / "tls" / "ca" / "ca.pem").read_bytes() == ca_before


def test_reissue_when_names_change(data_dir: Path) -> None:
    first = ca.ensure_certificates(data_dir, HOST, ["example.org"])
    ca_before = (data_dir / "tls" / "ca" / "ca.pem").read_bytes()
    second = ca.ensure_certificates(data_dir, HOST, ["example.org", "example.com"])
    assert second.issued and second.reason == "names changed"
    assert second.info.serial != first.info.serial
    assert "mail.example.com" in second.info.dns_names
    # The CA stays: users imported it once.
    assert (data_dir / "tls" / "ca" / "ca.pem").read_bytes() == ca_before
    third = ca.ensure_certificates(data_dir, HOST, ["example.org", "example.com"], ["10.0.0.7"])
    assert third.reason == "names changed" and third.info.ip_addresses == ("10.0.0.7",)


def test_reissue_near_expiry(data_dir: Path) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    first = ca.ensure_certificates(data_dir, HOST, DOMAINS, now=start)
    # 397 days: renewal is due with less than 132.3 days left.
    later = ca.ensure_certificates(data_dir, HOST, DOMAINS, now=start + dt.timedelta(days=260))
    assert not later.issued
    due = ca.ensure_certificates(data_dir, HOST, DOMAINS, now=start + dt.timedelta(days=270))
    assert due.issued and due.reason == "expiring"
    assert due.info.serial != first.info.serial
    assert due.info.not_after > first.info.not_after


def test_reissue_short_lifetime(data_dir: Path) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    hour = dt.timedelta(hours=1)
    first = ca.ensure_certificates(data_dir, HOST, now=start, lifetime=3 * hour)
    # notBefore is backdated a day (issue 16); renewal counts the 3 h from issue:
    # renew with < 1 h left.
    assert first.info.not_after - first.info.not_before == 3 * hour + dt.timedelta(days=1)
    assert not ca.ensure_certificates(data_dir, HOST, now=start + 1.5 * hour).issued
    assert ca.ensure_certificates(data_dir, HOST, now=start + 2.1 * hour).reason == "expiring"


def test_reissue_when_files_are_damaged(data_dir: Path) -> None:
    first = ca.ensure_certificates(data_dir, HOST)
    version = first.certfile.resolve().parent
    other = ca.issue_server_certificate(ca.ensure_ca(data_dir, HOST), [HOST])[0]
    # Replace the key behind the pair's back: the pair no longer matches.
    (version / "privkey.pem").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert ca.ensure_certificates(data_dir, HOST).reason == "key mismatch"
    current = ca.ensure_certificates(data_dir, HOST).certfile.resolve()
    current.write_text("garbage")
    assert ca.ensure_certificates(data_dir, HOST).reason == "unreadable"


def test_new_ca_means_new_server_certificate(data_dir: Path) -> None:
    first = ca.ensure_certificates(data_dir, HOST)
    for path in (data_dir / "tls" / "ca").iterdir():
        path.unlink()
    second = ca.ensure_certificates(data_dir, HOST)
    assert second.reason == "other issuer"
    assert second.info.serial != first.info.serial


def test_lost_ca_certificate_is_rebuilt_from_its_key(data_dir: Path) -> None:
    first = ca.ensure_certificates(data_dir, HOST)
    (data_dir / "tls" / "ca" / "ca.pem").unlink()
    second = ca.ensure_certificates(data_dir, HOST)
    # Same key, same subject: the server certificate still chains, nothing re-issued.
    assert not second.issued and second.info == first.info
    leaf(second.certfile).verify_directly_issued_by(ca.ensure_ca(data_dir, HOST).certificate)


def test_ca_renewed_before_it_expires(data_dir: Path) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    old = ca.ensure_ca(data_dir, HOST, now=start).certificate
    renewed = ca.ensure_ca(data_dir, HOST, now=start + dt.timedelta(days=3400)).certificate
    assert renewed.serial_number != old.serial_number
    assert renewed.public_key() == old.public_key() and renewed.subject == old.subject


def test_versions_are_pruned(data_dir: Path) -> None:
    versions = []
    for i in range(4):
        result = ca.ensure_certificates(data_dir, HOST, [f"d{i}.example"])
        versions.append(result.certfile.resolve().parent)
    archive = data_dir / "tls" / "archive" / "internal"
    # The current version and the one before it (a reader may still be opening it).
    assert sorted(archive.iterdir()) == versions[-2:]


def test_hand_placed_directory_is_replaced(data_dir: Path) -> None:
    live = data_dir / "tls" / "live" / "internal"
    live.mkdir(parents=True)
    (live / "fullchain.pem").write_text("old")
    result = ca.ensure_certificates(data_dir, HOST)
    assert result.reason == "unreadable" and live.is_symlink()


def test_readers_never_see_half_a_pair(data_dir: Path) -> None:
    """A reader that resolves live/<name> once always gets a matching pair."""
    ca.ensure_certificates(data_dir, HOST)
    live = data_dir / "tls" / "live" / "internal"
    stop = threading.Event()
    mismatches: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                certfile, keyfile = ca.resolve_live(live)
                cert = leaf(certfile)
                key = serialization.load_pem_private_key(keyfile.read_bytes(), None)
            except FileNotFoundError:
                continue  # a version pruned between resolve and open: resolve again
            reads += 1
            if key.public_key() != cert.public_key():
                mismatches.append(certfile.parent.name)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            ca.ensure_certificates(data_dir, HOST, [f"d{i}.example"])
    finally:
        stop.set()
        thread.join()
    assert reads > 0 and mismatches == []


def test_write_certificate_pair_rejects_bad_names(data_dir: Path) -> None:
    for bad in ["../x", "", ".hidden", "a/b"]:
        with pytest.raises(ValueError):
            ca.write_certificate_pair(data_dir, bad, b"", b"")


def test_live_certificates(data_dir: Path) -> None:
    assert ca.live_certificates(data_dir) == {}
    internal = ca.ensure_certificates(data_dir, HOST)
    other = ca.ensure_certificates(data_dir, HOST, ["example.org"], name="other")
    found = ca.live_certificates(data_dir)
    assert found == {"internal": internal.info, "other": other.info}
    assert ca.read_certificate(internal.certfile).not_after == internal.info.not_after
