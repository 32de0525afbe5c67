"""Password hashing with scrypt (RFC 7914), from the standard library.

Stored form: `$scrypt$ln=14,r=8,p=1$<salt>$<hash>` (base64, unpadded). The cost
parameters travel with each hash, so they can be raised later and old hashes
still verify. Hashing costs ~16 MiB and tens of milliseconds on purpose: call
it from a thread pool, never on the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

LOG2_N = 14
R = 8
P = 1
_DKLEN = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=1 << LOG2_N,
        r=R,
        p=P,
        dklen=_DKLEN,
        maxmem=64 * 1024 * 1024,
    )
    return f"$scrypt$ln={LOG2_N},r={R},p={P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check; False (never an exception) for malformed hashes."""
    try:
        _, scheme, params, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        values = dict(item.split("=", 1) for item in params.split(","))
        log2_n, r, p = int(values["ln"]), int(values["r"]), int(values["p"])
        if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=1 << log2_n,
            r=r,
            p=p,
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(actual, expected)
