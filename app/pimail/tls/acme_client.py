"""Let's Encrypt (or any ACME CA, RFC 8555) through the `acme` library.

Runs as a short-lived child of the server (`python -m pimail.tls.acme_client
JSON`), like tls/ensure.py, so that acme, josepy, requests and cryptography
never load into the long-running process. The HTTP-01 challenge (RFC 8555
8.3) is answered by the server's own HTTP listener (web/http01.py), which
serves the files this module writes under `<data>/tls/acme-challenge/`.

On disk, under `<data>/tls/acme/`:
    account.key    the ACME account key (EC P-256), 0600
    account.json   the registration (its URL), for later orders
    state.json     last attempt, last error, failures in a row, next attempt
The certificate itself goes to `live/acme/` through ca.write_certificate_pair,
where the server's CertificateStore picks it up for new connections.

Renewal: due when there is no certificate, the names changed, or less than a
third of its lifetime is left. A failure leaves the old certificate in place
and schedules the next attempt with exponential backoff (1 h, 2 h, 4 h, ...,
at most 1 day), later still if the CA said Retry-After (rate limits).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ca

log = logging.getLogger(__name__)
NAME = "acme"
BACKOFF_FIRST = dt.timedelta(hours=1)
BACKOFF_MAX = dt.timedelta(days=1)
ALPN_PICKUP = 1.0  # seconds: the server checks for TLS-ALPN-01 certificates this often


def acme_dir(data_dir: Path) -> Path:
    return ca.tls_dir(data_dir) / "acme"


def challenge_dir(data_dir: Path) -> Path:
    return ca.tls_dir(data_dir) / "acme-challenge"


def alpn_dir(data_dir: Path) -> Path:
    """TLS-ALPN-01 validation certificates, <name>.pem (key and certificate), for
    the server to present to ALPN "acme-tls/1" clients asking for that name."""
    return ca.tls_dir(data_dir) / "acme-alpn"


def alpn_certificate(name: str, key_authorization: str) -> bytes:
    """RFC 8737 3: a self-signed certificate for `name` with the critical
    acmeIdentifier extension holding SHA-256(key authorization)."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))  # issue 16: a day before issue
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            # id-pe-acmeIdentifier; the value is the DER OCTET STRING of the digest.
            x509.UnrecognizedExtension(
                ObjectIdentifier("1.3.6.1.5.5.7.1.31"), b"\x04\x20" + digest
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Request:
    data_dir: Path
    directory_url: str
    email: str
    names: list[str]
    ca_bundle: str = ""  # trust for the ACME server's own HTTPS (tests: pebble)
    force: bool = False
    challenge: str = "http-01"  # or "tls-alpn-01" (RFC 8737) where port 80 is closed


def read_state(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((acme_dir(data_dir) / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_state(data_dir: Path, state: dict[str, Any]) -> None:
    path = acme_dir(data_dir) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def due(data_dir: Path, names: list[str], now: dt.datetime) -> str | None:
    """Why a new certificate is needed now, or None."""
    live = ca.live_dir(data_dir) / NAME
    try:
        info = ca.read_certificate(ca.resolve_live(live)[0])
    except (OSError, ValueError, ca.CertificateError):
        return "missing"
    if set(info.dns_names) != {n.lower() for n in names}:
        return "names changed"
    lifetime = info.not_after - info.not_before
    if info.not_after - now < lifetime / 3:
        return "expiring"
    return None


def run(request: Request, now: dt.datetime | None = None) -> dict[str, Any]:
    """Renew if due and allowed by the backoff; returns what happened."""
    now = now or dt.datetime.now(dt.UTC)
    acme_dir(request.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    state = read_state(request.data_dir)
    reason = "forced" if request.force else due(request.data_dir, request.names, now)
    if reason is None:
        return {"status": "not-due"}
    next_attempt = state.get("next_attempt")
    if not request.force and next_attempt and dt.datetime.fromisoformat(next_attempt) > now:
        return {"status": "backing-off", "next_attempt": next_attempt}
    state["last_attempt"] = now.isoformat()
    try:
        serial = obtain(request)
    except Exception as e:  # any failure: keep the old certificate, try later
        failures = int(state.get("failures", 0)) + 1
        delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
        retry_after = _retry_after(e, now)
        if retry_after is not None and retry_after > now + delay:
            delay = retry_after - now
        state.update(
            failures=failures,
            last_error=f"{type(e).__name__}: {e}"[:500],
            next_attempt=(now + delay).isoformat(),
        )
        _write_state(request.data_dir, state)
        log.error("acme failed reason=%s error=%s next=%s", reason, e, state["next_attempt"])
        return {
            "status": "failed",
            "error": state["last_error"],
            "next_attempt": state["next_attempt"],
        }
    state.update(failures=0, last_error=None, next_attempt=None, last_success=now.isoformat())
    _write_state(request.data_dir, state)
    return {"status": "issued", "reason": reason, "serial": serial}


def _retry_after(error: Exception, now: dt.datetime) -> dt.datetime | None:
    """When the CA lets us try again after a rate limit (RFC 8555 6.6). The
    acme library does not hand over the Retry-After header with the problem,
    so a rate limit waits 3 hours at least (Let's Encrypt's limits are per hour
    or per week)."""
    from acme import messages

    if isinstance(error, messages.Error) and error.typ.endswith(":rateLimited"):
        return now + dt.timedelta(hours=3)
    return None


def obtain(request: Request) -> str:
    """Register (once), order a certificate for the names, answer HTTP-01,
    finalise, and install the chain as live/acme. Returns the serial (hex)."""
    import josepy as jose
    from acme import challenges, client, crypto_util, messages
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if request.ca_bundle:
        os.environ["REQUESTS_CA_BUNDLE"] = request.ca_bundle
    data_dir = request.data_dir
    key_path = acme_dir(data_dir) / "account.key"
    if key_path.exists():
        account_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    else:
        account_key = ec.generate_private_key(ec.SECP256R1())
        pem = account_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    assert isinstance(account_key, ec.EllipticCurvePrivateKey)
    jwk = jose.JWKEC(key=account_key)
    net = client.ClientNetwork(jwk, alg=jose.ES256, user_agent="pimail")
    directory = client.ClientV2.get_directory(request.directory_url, net)
    acme = client.ClientV2(directory, net=net)
    account_file = acme_dir(data_dir) / "account.json"
    registration = messages.NewRegistration.from_data(
        email=request.email or None, terms_of_service_agreed=True
    )
    try:
        regr = acme.new_account(registration)
    except Exception as e:
        # An account exists for this key already (RFC 8555 7.3.1): use it.
        from acme import errors

        if not isinstance(e, errors.ConflictError):
            raise
        regr = acme.query_registration(
            messages.RegistrationResource(uri=e.location, body=messages.Registration())
        )
    net.account = regr
    account_file.write_text(json.dumps({"uri": regr.uri}))

    cert_key = ec.generate_private_key(ec.SECP256R1())
    cert_key_pem = cert_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    csr = crypto_util.make_csr(cert_key_pem, request.names)
    order = acme.new_order(csr)
    challenge_files: list[Path] = []
    challenge_dir(data_dir).mkdir(parents=True, exist_ok=True)
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # the CA remembers a recent validation (RFC 8555 7.1.4)
            name = authz.body.identifier.value
            if request.challenge == "tls-alpn-01":
                # acme 5 has no class for TLS-ALPN-01 (RFC 8737): it arrives as
                # an unrecognised challenge, and the key authorization is the
                # token and the account key's thumbprint (RFC 8555 8.1).
                body = next(
                    (c for c in authz.body.challenges
                     if isinstance(c.chall, challenges.UnrecognizedChallenge)
                     and c.chall.jobj.get("type") == "tls-alpn-01"),
                    None,
                )  # fmt: skip
                if body is None:
                    raise RuntimeError(f"no tls-alpn-01 challenge for {name}")
                token = body.chall.jobj["token"]
                key_authorization = f"{token}.{jose.b64encode(jwk.thumbprint()).decode()}"
                # The answer is the empty object (RFC 8555 7.5.1). A fieldless
                # josepy object is falsy and would go out as a POST-as-GET, which
                # asks nothing; this response object serialises to {} and is not.
                response: Any = challenges.HTTP01Response(key_authorization=key_authorization)
                alpn_dir(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
                path = alpn_dir(data_dir) / f"{name}.pem"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(alpn_certificate(name, key_authorization))
                time.sleep(ALPN_PICKUP)  # the server looks for new files this often
            else:
                body = next(
                    (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                    None,
                )
                if body is None:
                    raise RuntimeError(f"no http-01 challenge for {name}")
                response, validation = body.response_and_validation(jwk)
                path = challenge_dir(data_dir) / body.chall.encode("token")
                path.write_text(validation)
            challenge_files.append(path)
            acme.answer_challenge(body, response)
        deadline = dt.datetime.now() + dt.timedelta(seconds=120)
        order = acme.poll_and_finalize(order, deadline=deadline)
    finally:
        for token_file in challenge_files:
            token_file.unlink(missing_ok=True)
    chain = order.fullchain_pem.encode()
    ca.write_certificate_pair(data_dir, NAME, cert_key_pem, chain)
    info = ca.read_certificate(ca.resolve_live(ca.live_dir(data_dir) / NAME)[0])
    log.info("acme certificate installed serial=%s names=%s", info.serial_hex, request.names)
    return info.serial_hex


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    raw = json.loads(argv[0])
    request = Request(
        data_dir=Path(raw["data_dir"]),
        directory_url=raw["directory_url"],
        email=raw.get("email", ""),
        names=list(raw["names"]),
        ca_bundle=raw.get("ca_bundle", ""),
        force=bool(raw.get("force", False)),
        challenge=raw.get("challenge", "http-01"),
    )
    print(json.dumps(run(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
