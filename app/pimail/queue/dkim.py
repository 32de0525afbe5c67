"""DKIM keys for the local domains, and signing outgoing mail with them.

Storage: the `dkim_keys` table of `pimail.db` (migration 2). Each domain has
two keys in use at a time, signed with both (RFC 8463 3: a signer may add an
Ed25519 signature beside an RSA one, for verifiers that know only RSA):

- RSA-2048, `rsa-sha256`: the private key as PKCS#1 PEM ("BEGIN RSA PRIVATE
  KEY"), p= the base64 DER SubjectPublicKeyInfo (RFC 6376 3.6.1);
- Ed25519, `ed25519-sha256`: the private key as base64 of the 32-octet seed
  (what dkimpy takes), p= base64 of the raw 32-octet public key (RFC 8463 4.2).

A key is in one of three states:

    pending  --activate-->  active  --activate (of the next keys)-->  retired

`rotate` creates pending keys, to publish in DNS before they sign anything;
`activate` puts them in use and retires the ones before; retired keys stay
published a while (mail in flight still verifies) until `remove_retired`.
Selectors name the month they were made: `pm202611r`, `pm202611e`, then
`pm202611r2`, `pm202611e2` for a second generation in the same month.

Private keys never go to a log. `cryptography` and `dkim` are imported only
when a key is made or a message signed: the server does not pay for them at
start.
"""

from __future__ import annotations

import base64
import logging
import re
import sqlite3
import time
from dataclasses import dataclass, field

from ..auth.accounts import Directory, normalize_domain
from ..db import transaction

log = logging.getLogger(__name__)

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
ALGORITHMS = (RSA, ED25519)  # also the order of the signatures on a message
PENDING, ACTIVE, RETIRED = "pending", "active", "retired"
RSA_BITS = 2048  # RFC 8301 3.2: at least 1024, 2048 recommended

STATES = (PENDING, ACTIVE, RETIRED)
_SELECTOR_LETTER = {RSA: "r", ED25519: "e"}
_BARE_LF = re.compile(rb"(?<!\r)\n")


class DkimError(ValueError):
    """A key operation the current state does not allow, with a message for the user."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: str  # RSA or ED25519
    private_key: str = field(repr=False)  # a secret: kept out of repr() and so of logs
    public_key: str  # the p= value, base64
    state: str  # PENDING, ACTIVE or RETIRED
    created: int  # unix time

    @property
    def key_type(self) -> str:
        """The k= tag of the DNS record (RFC 6376 3.6.1, RFC 8463 4.2)."""
        return "rsa" if self.algorithm == RSA else "ed25519"


# -- keys -------------------------------------------------------------------


def generate_keys(
    con: sqlite3.Connection, domain: str, state: str = ACTIVE, now: float | None = None
) -> list[DkimKey]:
    """Make and store a new RSA and Ed25519 key for `domain`, in `state`."""
    if state not in STATES:
        raise ValueError(f"unknown DKIM key state {state!r}")
    domain = normalize_domain(domain)
    created = int(time.time() if now is None else now)
    _require_domain(con, domain)  # before the work, and again under the lock
    # Key generation takes a moment (RSA, on a Pi): do it outside the write lock.
    material = [(RSA, *_new_rsa_key()), (ED25519, *_new_ed25519_key())]
    with transaction(con):
        domain_id = _require_domain(con, domain)
        rows = con.execute("SELECT selector FROM dkim_keys WHERE domain_id = ?", (domain_id,))
        taken = {row[0] for row in rows}
        base = time.strftime("pm%Y%m", time.gmtime(created))
        suffix = _free_suffix(base, taken)
        out = []
        for algorithm, private_key, public_key in material:
            selector = f"{base}{_SELECTOR_LETTER[algorithm]}{suffix}"
            con.execute(
                "INSERT INTO dkim_keys (domain_id, selector, algorithm, private_key, public_key,"
                " state, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (domain_id, selector, algorithm, private_key, public_key, state, created),
            )
            key = DkimKey(domain, selector, algorithm, private_key, public_key, state, created)
            out.append(key)
    log.info(
        "dkim keys created domain=%s selectors=%s state=%s",
        domain,
        ",".join(k.selector for k in out),
        state,
    )
    return out


def _free_suffix(base: str, taken: set[str]) -> str:
    """'' or the smallest '2', '3', ... for which no selector of the generation is taken."""
    number = 1
    while True:
        suffix = "" if number == 1 else str(number)
        if not any(f"{base}{letter}{suffix}" in taken for letter in _SELECTOR_LETTER.values()):
            return suffix
        number += 1


def _new_rsa_key() -> tuple[str, str]:
    """(PKCS#1 PEM private key, base64 DER SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # "BEGIN RSA PRIVATE KEY"
        serialization.NoEncryption(),
    ).decode("ascii")
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, base64.b64encode(public_der).decode("ascii")


def _new_ed25519_key() -> tuple[str, str]:
    """(base64 32-octet seed, base64 raw 32-octet public key): RFC 8463 3 and 4.2."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(seed).decode("ascii"), base64.b64encode(public).decode("ascii")


def keys(con: sqlite3.Connection, domain: str) -> list[DkimKey]:
    """All of the domain's keys: active, then pending, then retired; newest
    generation first; in a generation, RSA first (it is stored first)."""
    domain = normalize_domain(domain)
    rows = con.execute(
        "SELECT k.selector, k.algorithm, k.private_key, k.public_key, k.state, k.created"
        " FROM dkim_keys k JOIN domains d ON d.id = k.domain_id WHERE d.name = ?"
        " ORDER BY CASE k.state WHEN 'active' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END,"
        " k.created DESC, k.id",
        (domain,),
    )
    return [DkimKey(domain, *row) for row in rows]


def signing_keys(con: sqlite3.Connection, domain: str) -> list[DkimKey]:
    """The keys that sign the domain's mail now (state active), RSA first."""
    return [k for k in keys(con, domain) if k.state == ACTIVE]


def ensure_keys(con: sqlite3.Connection, domain: str) -> list[DkimKey]:
    """Give a domain without keys (added before DKIM existed) active keys.
    Returns the keys made: none if the domain had some already."""
    if keys(con, domain):
        return []
    return generate_keys(con, domain, ACTIVE)


# -- rotation ---------------------------------------------------------------


def rotate(con: sqlite3.Connection, domain: str, now: float | None = None) -> list[DkimKey]:
    """Make the next keys, pending: they sign nothing until `activate`, so that
    they can be published and reach every resolver first."""
    current = keys(con, domain)
    if not current:
        raise DkimError(f"{domain} has no DKIM keys yet: nothing to rotate from")
    if any(k.state == PENDING for k in current):
        raise DkimError(f"{domain} has pending DKIM keys already: publish and activate them first")
    return generate_keys(con, domain, PENDING, now)


def activate(con: sqlite3.Connection, domain: str) -> tuple[list[DkimKey], list[DkimKey]]:
    """Put the pending keys in use and retire the active ones (they stay published
    for a while, so mail signed with them and still in flight verifies).
    Returns (activated, retired)."""
    domain = normalize_domain(domain)
    with transaction(con):
        domain_id = _require_domain(con, domain)
        before = keys(con, domain)
        pending = [k for k in before if k.state == PENDING]
        if not pending:
            raise DkimError(f"{domain} has no pending DKIM keys (pimail dkim rotate {domain})")
        con.execute(
            "UPDATE dkim_keys SET state = ? WHERE domain_id = ? AND state = ?",
            (RETIRED, domain_id, ACTIVE),
        )
        con.execute(
            "UPDATE dkim_keys SET state = ? WHERE domain_id = ? AND state = ?",
            (ACTIVE, domain_id, PENDING),
        )
    activated = [_with_state(k, ACTIVE) for k in pending]
    retired = [_with_state(k, RETIRED) for k in before if k.state == ACTIVE]
    log.info(
        "dkim keys activated domain=%s active=%s retired=%s",
        domain,
        ",".join(k.selector for k in activated),
        ",".join(k.selector for k in retired) or "-",
    )
    return activated, retired


def remove_retired(con: sqlite3.Connection, domain: str) -> list[DkimKey]:
    """Delete the retired keys (once their DNS records are gone). Returns them."""
    domain = normalize_domain(domain)
    with transaction(con):
        domain_id = _require_domain(con, domain)
        retired = [k for k in keys(con, domain) if k.state == RETIRED]
        con.execute("DELETE FROM dkim_keys WHERE domain_id = ? AND state = ?", (domain_id, RETIRED))
    if retired:
        log.info(
            "dkim keys removed domain=%s selectors=%s",
            domain,
            ",".join(k.selector for k in retired),
        )
    return retired


def _with_state(key: DkimKey, state: str) -> DkimKey:
    return DkimKey(
        key.domain, key.selector, key.algorithm, key.private_key, key.public_key, state, key.created
    )


def _require_domain(con: sqlite3.Connection, domain: str) -> int:
    return Directory(con).require_domain(domain)


# -- signing ----------------------------------------------------------------


def sign(message: bytes, domain: str, keys: list[DkimKey]) -> bytes:
    """The DKIM-Signature header fields to put at the top of `message`, one per
    key, RSA first, each ending in CRLF; b"" if there are no keys.

    Canonicalization relaxed/relaxed (RFC 6376 3.4.2, 3.4.4): it survives the
    re-folding and trailing-space changes of relays. No l= tag (RFC 6376 8.2:
    it lets anyone append to the body). The header fields signed are dkimpy's
    default, RFC 6376 5.4.1's list as far as the message has them, with From
    signed once more than it occurs (RFC 6376 8.15: no second From can be added
    without breaking the signature).

    A message with bare LF line ends is signed as it will travel, with CRLF.
    Pure computation on its arguments: safe to call from a worker thread.
    """
    import dkim  # dkimpy; imported here, not at server start

    _use_openssl_for_rsa(dkim)
    if not keys:
        return b""
    if _BARE_LF.search(message):
        message = re.sub(rb"\r?\n", b"\r\n", message)
    domain_octets = normalize_domain(domain).encode("ascii")
    ordered = sorted(keys, key=lambda k: ALGORITHMS.index(k.algorithm))
    fields = []
    for key in ordered:
        field_octets = dkim.sign(
            message,
            key.selector.encode("ascii"),
            domain_octets,
            key.private_key.encode("ascii"),
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=key.algorithm.encode("ascii"),
            include_headers=None,  # dkimpy's default: see the docstring
            length=False,
            linesep=b"\r\n",
        )
        if not field_octets.endswith(b"\r\n"):
            field_octets += b"\r\n"
        fields.append(field_octets)
    log.debug("dkim signed domain=%s selectors=%s", domain, ",".join(k.selector for k in ordered))
    return b"".join(fields)


_rsa_keys: dict[int, object] = {}


def _use_openssl_for_rsa(dkim_module: object) -> None:
    """dkimpy computes RSA signatures in pure Python: 8-12 ms of CPU for
    RSA-2048 here, several times that on a Pi, all of it holding the GIL
    (bench/outbound.py). OpenSSL, through `cryptography`, takes well under a
    millisecond. dkimpy has no hook for its RSA step, so its module-level
    `RSASSA_PKCS1_v1_5_sign(hash, key)` is replaced by one with the same
    inputs (the hash object, dkimpy's parsed key) and the same output (the
    signature octets, RFC 8017 8.2.1). `cryptography` then costs the server
    some megabytes, from its first signed message on."""
    original = dkim_module.RSASSA_PKCS1_v1_5_sign  # type: ignore[attr-defined]
    if getattr(original, "pimail_openssl", False):
        return
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    prehashed = {"sha256": hashes.SHA256()}  # pimail signs rsa-sha256 only (RFC 8301)

    def sign(hash_object: object, key: dict) -> bytes:
        algorithm = prehashed.get(getattr(hash_object, "name", ""))
        if algorithm is None:
            return original(hash_object, key)
        private = _rsa_keys.get(key["modulus"])
        if private is None:
            numbers = rsa.RSAPrivateNumbers(
                p=key["prime1"], q=key["prime2"], d=key["privateExponent"],
                dmp1=key["exponent1"], dmq1=key["exponent2"], iqmp=key["coefficient"],
                public_numbers=rsa.RSAPublicNumbers(key["publicExponent"], key["modulus"]),
            )  # fmt: skip
            private = numbers.private_key()
            if len(_rsa_keys) > 64:
                _rsa_keys.clear()
            _rsa_keys[key["modulus"]] = private
        digest = hash_object.digest()  # type: ignore[attr-defined]
        return private.sign(digest, padding.PKCS1v15(), utils.Prehashed(algorithm))  # type: ignore[attr-defined]

    sign.pimail_openssl = True  # type: ignore[attr-defined]
    dkim_module.RSASSA_PKCS1_v1_5_sign = sign  # type: ignore[attr-defined]
