"""The internal CA and the certificates pimail issues itself.

At first start there is no certificate a client could trust, and a Let's Encrypt
one may never come (no public name, port 80 closed). So pimail keeps a small CA
of its own: an EC P-256 root, valid ten years, that may sign only end-entity
certificates (pathlen 0). Users import it once on their devices (`pimail cert
ca` prints it); the server certificate it signs is re-issued on its own when the
set of names changes or a third of its lifetime is left.

On disk (all under the data directory; nothing else is touched):

    <data>/tls/.lock                         flock(2) serialising writers (server, CLI)
    <data>/tls/ca/                           0700
        ca.key                               0600  PKCS#8 PEM, the CA's private key
        ca.pem                               0644  the CA certificate
    <data>/tls/archive/<name>/<version>/     0755  one directory per issued pair
        fullchain.pem                        0644  leaf first, then intermediates
        privkey.pem                          0600  PKCS#8 PEM
    <data>/tls/live/<name>                   symlink -> ../archive/<name>/<version>

`live/<name>/fullchain.pem` and `live/<name>/privkey.pem` therefore always name a
matching pair: a new pair is written (and fsynced) into a fresh version directory
that nobody reads yet, then the `live/<name>` symlink is replaced with one
rename(2). A reader that resolves `live/<name>` once (see `resolve_live`) and
opens both files from the resolved directory can never see half of a pair. The
current and the previous version are kept (a reader may have just resolved the
previous one); older versions are deleted.

Secrets are created with os.open(..., 0o600) and fchmod'ed before a byte is
written, so no key is ever readable by others, whatever the umask.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .names import normalize_name, server_names

log = logging.getLogger(__name__)

# The name of the pair ensure_certificates() maintains under live/.
INTERNAL = "internal"
FULLCHAIN = "fullchain.pem"
PRIVKEY = "privkey.pem"
CA_KEY = "ca.key"
CA_CERT = "ca.pem"

CA_LIFETIME = dt.timedelta(days=3650)
# CA/Browser Forum BR 6.3.2 caps public server certificates at 398 days; Apple
# platforms enforce the same for any CA. Stay a day under.
SERVER_LIFETIME = dt.timedelta(days=397)
# Backdate notBefore a day, for clients whose clocks run behind and for a box
# whose own clock was set a little late (issue 16: time before trust).
CLOCK_SKEW = dt.timedelta(days=1)
# tls/<name>.unsynced: the certificate (or "ca") was made before the clock was
# synchronized; it is made again once it is (clock.py).
UNSYNCED_SUFFIX = ".unsynced"
# Renew the CA certificate (same key, so issued certificates stay valid) when
# less than this is left.
CA_RENEW_BEFORE = dt.timedelta(days=365)
# RFC 5280 appendix A.1: ub-common-name is 64 characters.
_CN_MAX = 64
_KEEP_VERSIONS = 2
_PAIR_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class CertificateError(Exception):
    """A certificate or key on disk is missing or unusable."""


# -- what a certificate says ---------------------------------------------------


@dataclass(frozen=True)
class CertInfo:
    """What `pimail cert status` shows about one certificate."""

    subject: str  # RFC 4514 string
    issuer: str
    serial: int
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    sha256: str  # fingerprint of the DER, lowercase hex

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"

    @property
    def names(self) -> frozenset[str]:
        """Every subjectAltName, DNS and IP alike, as compared for re-issue."""
        return frozenset(self.dns_names) | frozenset(self.ip_addresses)

    def remaining(self, now: dt.datetime | None = None) -> dt.timedelta:
        return self.not_after - (now or _utcnow())


def certificate_info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns_names, ips = (), ()
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns_names,
        ip_addresses=ips,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def read_certificate(path: Path) -> CertInfo:
    """The first (leaf) certificate of a PEM file."""
    return certificate_info(_load_chain(path)[0])


def ca_pem(data_dir: Path) -> str:
    """The internal CA certificate in PEM, for users to import (`pimail cert ca`)."""
    path = ca_dir(data_dir) / CA_CERT
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise CertificateError(f"no internal CA yet at {path}; start pimail once") from None


def live_certificates(data_dir: Path) -> dict[str, CertInfo]:
    """Every pair under live/, by name, for `pimail cert status`."""
    result: dict[str, CertInfo] = {}
    directory = live_dir(data_dir)
    if not directory.is_dir():
        return result
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        try:
            result[entry.name] = read_certificate(resolve_live(entry)[0])
        except (OSError, ValueError, CertificateError) as e:
            log.warning("unreadable certificate name=%s error=%s", entry.name, e)
    return result


# -- paths ------------------------------------------------------------------------


def tls_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "tls"


def ca_dir(data_dir: Path) -> Path:
    return tls_dir(data_dir) / "ca"


def live_dir(data_dir: Path) -> Path:
    return tls_dir(data_dir) / "live"


def archive_dir(data_dir: Path) -> Path:
    return tls_dir(data_dir) / "archive"


def resolve_live(live_path: Path) -> tuple[Path, Path]:
    """(fullchain, privkey) inside the version directory `live/<name>` points to now.

    Resolve once, then open both: that is what makes the pair consistent.
    Raises FileNotFoundError when there is no such pair.
    """
    directory = Path(live_path).resolve(strict=True)
    return directory / FULLCHAIN, directory / PRIVKEY


# -- the CA ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    certfile: Path


def ensure_ca(
    data_dir: Path,
    hostname: str,
    *,
    now: dt.datetime | None = None,
    clock_synced: bool | None = True,
) -> CertificateAuthority:
    """Load the internal CA, creating it (or renewing its certificate) when needed."""
    with _locked(data_dir):
        return _ensure_ca(data_dir, hostname, now or _utcnow(), clock_synced)


def _unsynced_marker(data_dir: Path, name: str) -> Path:
    return tls_dir(data_dir) / f"{name}{UNSYNCED_SUFFIX}"


def _clock_reason(
    data_dir: Path, name: str, not_before: dt.datetime, now: dt.datetime, clock_synced: bool | None
) -> str | None:
    """Why a certificate's dates cannot stand: the clock is now before its start
    (it was made with a clock ahead), or it was made before the clock was
    synchronized and the clock is synchronized now (a Pi's first boot)."""
    if now < not_before:
        return "not yet valid"
    if clock_synced and _unsynced_marker(data_dir, name).exists():
        return "made before the clock was set"
    return None


def _note_clock(data_dir: Path, name: str, clock_synced: bool | None) -> None:
    """Remember whether `name` was made with a synchronized clock (None: cannot
    tell, taken as synchronized: nothing would ever clear the mark)."""
    marker = _unsynced_marker(data_dir, name)
    if clock_synced is False:
        _write_atomic(marker, b"", 0o644)
    else:
        marker.unlink(missing_ok=True)


def _ensure_ca(
    data_dir: Path, hostname: str, now: dt.datetime, clock_synced: bool | None = True
) -> CertificateAuthority:
    directory = ca_dir(data_dir)
    _mkdir(directory, 0o700)
    keyfile, certfile = directory / CA_KEY, directory / CA_CERT
    new_key = not keyfile.exists()
    if new_key:
        log.info("creating internal CA dir=%s", directory)
        key = ec.generate_private_key(ec.SECP256R1())
        _write_atomic(keyfile, _key_pem(key), 0o600)
    else:
        key = _load_key(keyfile)
    cert: x509.Certificate | None = None
    if certfile.exists() and not new_key:
        cert = _load_chain(certfile)[0]
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise CertificateError(f"{certfile} does not belong to {keyfile}")
        clock = _clock_reason(data_dir, "ca", cert.not_valid_before_utc, now, clock_synced)
        if cert.not_valid_after_utc - now < CA_RENEW_BEFORE:
            log.warning("renewing internal CA certificate (same key); devices must re-import it")
            cert = None
        elif clock is not None:
            # Same key and subject: devices that trust the old one keep working.
            log.warning("renewing internal CA certificate (same key) reason=%s", clock)
            cert = None
    if cert is None:
        # Same key and subject: certificates the old one signed still chain to it.
        cert = _build_ca_certificate(key, _ca_subject(hostname), now)
        _write_atomic(certfile, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _note_clock(data_dir, "ca", clock_synced)
        log.info(
            "internal CA certificate written subject=%s serial=%x",
            cert.subject.rfc4514_string(),
            cert.serial_number,
        )
    return CertificateAuthority(key=key, certificate=cert, certfile=certfile)


def _ca_subject(hostname: str) -> x509.Name:
    common_name = f"pimail internal CA {hostname}"[:_CN_MAX]
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pimail"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _build_ca_certificate(
    key: ec.EllipticCurvePrivateKey, subject: x509.Name, now: dt.datetime
) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        # CA/B BR 7.1: at least 64 bits of randomness; this gives 159.
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        # RFC 5280 4.2.1.9: a CA, and it may sign only end-entity certificates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        # RFC 5280 4.2.1.3: keyCertSign and cRLSign, nothing else.
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # RFC 5280 4.2.1.2: CA certificates carry a subjectKeyIdentifier.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


# -- server certificates -------------------------------------------------------------


def issue_server_certificate(
    ca: CertificateAuthority,
    names: Sequence[str],
    *,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = SERVER_LIFETIME,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh P-256 key and a serverAuth certificate for `names`, signed by `ca`."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    now = now or _utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in (normalize_name(n) for n in names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    first = normalize_name(names[0])
    # The subject's CN is for humans; clients match the SAN (RFC 6125 6.4.4).
    # RFC 5280 4.2.1.6: with an empty subject the SAN must be critical.
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, first)] if len(first) <= _CN_MAX else []
    )
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    not_after = min(now + lifetime, ca.certificate.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # RFC 5480 3 / RFC 8446 4.4.3: an ECDSA TLS key only signs.
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # RFC 5280 4.2.1.12: id-kp-serverAuth only.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # RFC 5280 4.2.1.1: points at the CA's key, for chain building.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return key, cert


@dataclass(frozen=True)
class EnsureResult:
    name: str
    certfile: Path  # live/<name>/fullchain.pem
    keyfile: Path  # live/<name>/privkey.pem
    info: CertInfo
    issued: bool  # a new certificate was written by this call
    reason: str | None  # why it was (re-)issued


def ensure_certificates(
    data_dir: Path,
    hostname: str,
    domains: Iterable[str] = (),
    extra_names: Iterable[str] = (),
    *,
    name: str = INTERNAL,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = SERVER_LIFETIME,
    clock_synced: bool | None = True,
) -> EnsureResult:
    """Make sure the internal CA and a current server certificate exist.

    Creates the CA when missing; issues the server certificate when it is
    missing, unreadable, not from this CA, for another set of names, or within
    a third of its lifetime of expiry; and both when the clock is before their
    start, or when they were made with a clock not yet synchronized
    (`clock_synced` False then) and it is synchronized now. Safe to call at
    every start and daily.
    """
    now = now or _utcnow()
    names = server_names(hostname, domains, extra_names)
    with _locked(data_dir):
        ca = _ensure_ca(data_dir, hostname, now, clock_synced)
        live = live_dir(data_dir) / name
        reason = _reissue_reason(live, ca, frozenset(names), now)
        if reason is None:
            info = read_certificate(resolve_live(live)[0])
            reason = _clock_reason(data_dir, name, info.not_before, now, clock_synced)
        if reason is not None:
            key, cert = issue_server_certificate(ca, names, now=now, lifetime=lifetime)
            _write_pair(
                data_dir, name, _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)
            )
            _note_clock(data_dir, name, clock_synced)
            log.info(
                "server certificate issued name=%s serial=%x reason=%s names=%s",
                name,
                cert.serial_number,
                reason,
                ",".join(names),
            )
        info = read_certificate(resolve_live(live)[0])
    return EnsureResult(
        name=name,
        certfile=live / FULLCHAIN,
        keyfile=live / PRIVKEY,
        info=info,
        issued=reason is not None,
        reason=reason,
    )


def unsynced(data_dir: Path) -> list[str]:
    """The internal certificates made before the clock was synchronized."""
    try:
        return sorted(p.name[: -len(UNSYNCED_SUFFIX)] for p in tls_dir(data_dir).glob("*.unsynced"))
    except OSError:
        return []


def _reissue_reason(
    live: Path, ca: CertificateAuthority, names: frozenset[str], now: dt.datetime
) -> str | None:
    try:
        certfile, keyfile = resolve_live(live)
        cert = _load_chain(certfile)[0]
        key = _load_key(keyfile)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, CertificateError) as e:
        log.warning("server certificate unreadable path=%s error=%s", live, e)
        return "unreadable"
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        return "key mismatch"
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return "other issuer"
    info = certificate_info(cert)
    if info.names != names:
        return "names changed"
    # Renew when a third of the lifetime is left (the rule Let's Encrypt advises);
    # the lifetime from issue, not from the backdated notBefore.
    lifetime = info.not_after - info.not_before - CLOCK_SKEW
    if info.not_after - now < max(lifetime, dt.timedelta(0)) / 3:
        return "expiring"
    return None


def write_certificate_pair(data_dir: Path, name: str, key_pem: bytes, chain_pem: bytes) -> Path:
    """Install a key and its chain (leaf first) as live/<name>, atomically.

    For every issuer (internal CA, ACME). Returns the version directory.
    """
    with _locked(data_dir):
        return _write_pair(data_dir, name, key_pem, chain_pem)


def _write_pair(data_dir: Path, name: str, key_pem: bytes, chain_pem: bytes) -> Path:
    if not _PAIR_NAME.match(name):
        raise ValueError(f"bad certificate name: {name!r}")
    archive = archive_dir(data_dir) / name
    live = live_dir(data_dir)
    _mkdir(archive, 0o755)
    _mkdir(live, 0o755)
    # Version names sort in creation order (_prune relies on it).
    stamp = _utcnow().strftime("%Y%m%dT%H%M%S.%f")
    version = archive / f"{stamp}-{secrets.token_hex(4)}"
    os.mkdir(version, 0o755)
    os.chmod(version, 0o755)
    _write_new(version / PRIVKEY, key_pem, 0o600)
    _write_new(version / FULLCHAIN, chain_pem, 0o644)
    _fsync_dir(version)
    _fsync_dir(archive)
    target = live / name
    if target.is_dir() and not target.is_symlink():
        # A directory put there by hand: keep it as a version, then replace it.
        target.rename(archive / f"{stamp}-manual-{secrets.token_hex(4)}")
    link = live / f".{name}.{secrets.token_hex(8)}.tmp"
    os.symlink(os.path.relpath(version, live), link)
    os.replace(link, target)  # the one atomic step
    _fsync_dir(live)
    _prune(archive, keep=version)
    return version


def _prune(archive: Path, keep: Path) -> None:
    """Delete all versions but `keep` and the newest before it."""
    others = sorted(p for p in archive.iterdir() if p.is_dir() and p != keep)
    for path in others[: max(0, len(others) - (_KEEP_VERSIONS - 1))]:
        shutil.rmtree(path, ignore_errors=True)


# -- files ---------------------------------------------------------------------------


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_der(public: CertificatePublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_chain(path: Path) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    if not certs:
        raise CertificateError(f"no certificate in {path}")
    return certs


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: not an EC key")
    return key


def _mkdir(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chmod(path, mode)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (which must not exist) with exactly `mode`, write, fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)  # never more open than 0600, even for a moment
    try:
        os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`: temporary file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_new(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serialise writers across threads and processes (`pimail cert renew` vs. serve)."""
    directory = tls_dir(data_dir)
    _mkdir(directory, 0o755)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
