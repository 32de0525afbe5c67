"""DKIM keys, signing, rotation, and the DNS records of `pimail dns`.

Real keys and real signatures: what queue/dkim.py signs is verified with
dkimpy against the TXT records that dns/records.py tells the admin to publish.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim as dkimpy
import pytest

from pimail import config, db
from pimail.auth.accounts import Directory, DirectoryError
from pimail.cli import main
from pimail.dns import records
from pimail.queue import dkim

DOMAIN = "example.test"

PLAIN = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <lunch-1@example.test>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
)
EIGHT_BIT = (
    "From: Zoë <zoe@example.test>\r\n"
    "To: Jürgen <juergen@example.org>\r\n"
    "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Grüße aus Köln — 東京にも。\r\n"
).encode()
BARE_LF = PLAIN.replace(b"\r\n", b"\n")


@pytest.fixture
def con(tmp_path: Path) -> sqlite3.Connection:
    con = db.open_main(tmp_path / "pimail.db")
    Directory(con).add_domain(DOMAIN)
    return con


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    return config.Settings(data_dir=tmp_path, hostname="mx.test")


def dnsfunc_for(settings: config.Settings, keys: list[dkim.DkimKey]) -> Callable[..., bytes]:
    """A resolver answering with the TXT records `pimail dns` prints, as the DNS
    would after the admin published them: the chunks joined (RFC 6376 3.6.2.2)."""
    published = {
        f"{r.name}.".encode(): r.value.encode()
        for r in records.records(settings, DOMAIN, keys)
        if r.type == "TXT"
    }

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return published.get(name)

    return dnsfunc


def verifies(message: bytes, idx: int, dnsfunc: Callable[..., bytes]) -> bool:
    try:
        return bool(dkimpy.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc))
    except dkimpy.DKIMException:
        return False


def signature_tags(signed: bytes) -> list[dict[bytes, bytes]]:
    d = dkimpy.DKIM(signed)
    return [
        dkimpy.util.parse_tag_value(value)
        for name, value in d.headers
        if name.lower() == b"dkim-signature"
    ]


# -- keys -------------------------------------------------------------------


def test_schema_and_key_formats(con: sqlite3.Connection) -> None:
    assert con.execute("PRAGMA user_version").fetchone()[0] >= 2
    made = dkim.generate_keys(con, DOMAIN, now=1795780800)  # 2026-11-27
    assert [(k.selector, k.algorithm, k.state) for k in made] == [
        ("pm202611r", "rsa-sha256", "active"),
        ("pm202611e", "ed25519-sha256", "active"),
    ]
    rsa, ed = made
    assert rsa.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1
    assert len(base64.b64decode(rsa.public_key)) > 256  # 2048-bit SubjectPublicKeyInfo
    assert len(base64.b64decode(ed.private_key)) == 32  # the seed
    assert len(base64.b64decode(ed.public_key)) == 32  # RFC 8463 4.2: the raw key
    assert dkim.keys(con, DOMAIN) == made
    assert dkim.signing_keys(con, "EXAMPLE.test") == made
    # The private key stays out of repr(), so out of any log line that shows a key.
    assert rsa.private_key not in repr(rsa) and ed.private_key not in repr(ed)


def test_selectors_of_one_month_get_a_suffix(con: sqlite3.Connection) -> None:
    now = 1795780800
    dkim.generate_keys(con, DOMAIN, now=now)
    second = dkim.generate_keys(con, DOMAIN, state="pending", now=now + 60)
    third = dkim.generate_keys(con, DOMAIN, state="pending", now=now + 120)
    assert [k.selector for k in second] == ["pm202611r2", "pm202611e2"]
    assert [k.selector for k in third] == ["pm202611r3", "pm202611e3"]


def test_ensure_keys_only_for_a_domain_without(con: sqlite3.Connection) -> None:
    assert dkim.keys(con, DOMAIN) == []
    made = dkim.ensure_keys(con, DOMAIN)
    assert [k.state for k in made] == ["active", "active"]
    assert dkim.ensure_keys(con, DOMAIN) == []
    assert dkim.signing_keys(con, DOMAIN) == made


def test_unknown_domain_and_cascade(con: sqlite3.Connection) -> None:
    with pytest.raises(DirectoryError, match="not a local domain"):
        dkim.generate_keys(con, "elsewhere.test")
    dkim.generate_keys(con, DOMAIN)
    Directory(con).remove_domain(DOMAIN)
    assert con.execute("SELECT count(*) FROM dkim_keys").fetchone()[0] == 0


def test_module_imports_no_crypto_at_start() -> None:
    code = (
        "import sys, pimail.queue.dkim, pimail.dns.records\n"
        "heavy = ('dkim', 'cryptography', 'nacl')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- signing ----------------------------------------------------------------


@pytest.mark.parametrize("message", [PLAIN, EIGHT_BIT, BARE_LF], ids=["ascii", "8bit", "lf"])
def test_both_signatures_verify(
    con: sqlite3.Connection, settings: config.Settings, message: bytes
) -> None:
    keys = dkim.generate_keys(con, DOMAIN)
    fields = dkim.sign(message, DOMAIN, keys)
    # Header fields only, every line ending in CRLF, ready to prepend.
    assert fields.startswith(b"DKIM-Signature: ") and fields.endswith(b"\r\n")
    assert not re.search(rb"(?<!\r)\n", fields)
    assert fields.count(b"DKIM-Signature:") == 2

    dnsfunc = dnsfunc_for(settings, keys)
    as_sent = fields + message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for signed in (as_sent, fields + message):
        assert verifies(signed, 0, dnsfunc)
        assert verifies(signed, 1, dnsfunc)

    rsa_tags, ed_tags = signature_tags(as_sent)
    assert rsa_tags[b"a"] == b"rsa-sha256" and rsa_tags[b"s"] == keys[0].selector.encode()
    assert ed_tags[b"a"] == b"ed25519-sha256" and ed_tags[b"s"] == keys[1].selector.encode()
    for tags in (rsa_tags, ed_tags):
        assert tags[b"d"] == DOMAIN.encode()
        assert tags[b"c"] == b"relaxed/relaxed"
        assert b"l" not in tags  # RFC 6376 8.2
        signed_fields = [h.strip().lower() for h in tags[b"h"].split(b":")]
        assert signed_fields.count(b"from") == 2  # RFC 6376 8.15: From oversigned
        assert b"subject" in signed_fields


def test_tampering_breaks_both_signatures(
    con: sqlite3.Connection, settings: config.Settings
) -> None:
    keys = dkim.generate_keys(con, DOMAIN)
    signed = dkim.sign(PLAIN, DOMAIN, keys) + PLAIN
    dnsfunc = dnsfunc_for(settings, keys)
    body_changed = signed.replace(b"noon", b"one")
    subject_changed = signed.replace(b"Subject: Lunch", b"Subject: Dinner")
    # RFC 6376 8.15: a second From added above breaks the signature, too.
    from_added = b"From: Mallory <m@example.test>\r\n" + signed
    for bad in (body_changed, subject_changed, from_added):
        assert not verifies(bad, 0, dnsfunc)
        assert not verifies(bad, 1, dnsfunc)
    # Relaxed canonicalization: re-folding and trailing spaces are harmless.
    refolded = signed.replace(b"Subject: Lunch", b"Subject:\r\n  Lunch ")
    assert verifies(refolded, 0, dnsfunc) and verifies(refolded, 1, dnsfunc)


def test_no_keys_no_signature() -> None:
    assert dkim.sign(PLAIN, DOMAIN, []) == b""


def test_signing_from_worker_threads(con: sqlite3.Connection, settings: config.Settings) -> None:
    keys = dkim.generate_keys(con, DOMAIN)
    messages = [PLAIN.replace(b"noon", f"{n} o'clock".encode()) for n in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        signed = list(pool.map(lambda m: dkim.sign(m, DOMAIN, keys) + m, messages))
    dnsfunc = dnsfunc_for(settings, keys)
    assert all(verifies(s, 0, dnsfunc) and verifies(s, 1, dnsfunc) for s in signed)


# -- rotation ---------------------------------------------------------------


def test_rotate_activate_remove(con: sqlite3.Connection, settings: config.Settings) -> None:
    old = dkim.generate_keys(con, DOMAIN, now=1795780800)
    new = dkim.rotate(con, DOMAIN, now=1795780900)
    assert [k.state for k in new] == ["pending", "pending"]
    # Pending keys are published but sign nothing yet.
    assert dkim.signing_keys(con, DOMAIN) == old
    published = {r.name: r for r in records.records(settings, DOMAIN, dkim.keys(con, DOMAIN))}
    assert f"{new[0].selector}._domainkey.{DOMAIN}" in published
    assert "activate" in published[f"{new[1].selector}._domainkey.{DOMAIN}"].purpose
    with pytest.raises(dkim.DkimError, match="pending"):
        dkim.rotate(con, DOMAIN)

    activated, retired = dkim.activate(con, DOMAIN)
    assert [k.selector for k in activated] == [k.selector for k in new]
    assert [k.selector for k in retired] == [k.selector for k in old]
    signing = dkim.signing_keys(con, DOMAIN)
    assert [k.selector for k in signing] == [k.selector for k in new]
    signed = dkim.sign(PLAIN, DOMAIN, signing) + PLAIN
    tags = signature_tags(signed)
    assert [t[b"s"].decode() for t in tags] == [k.selector for k in new]

    # Retired keys stay published (mail in flight verifies) with a note to remove them.
    every = dkim.keys(con, DOMAIN)
    published = {r.name: r for r in records.records(settings, DOMAIN, every)}
    assert "remove after a week" in published[f"{old[0].selector}._domainkey.{DOMAIN}"].purpose
    in_flight = dkim.sign(PLAIN, DOMAIN, old) + PLAIN
    assert verifies(in_flight, 0, dnsfunc_for(settings, every))
    with pytest.raises(dkim.DkimError, match="no pending"):
        dkim.activate(con, DOMAIN)

    assert [k.selector for k in dkim.remove_retired(con, DOMAIN)] == [k.selector for k in old]
    assert [k.state for k in dkim.keys(con, DOMAIN)] == ["active", "active"]
    assert dkim.remove_retired(con, DOMAIN) == []


def test_rotate_needs_keys(con: sqlite3.Connection) -> None:
    with pytest.raises(dkim.DkimError, match="no DKIM keys"):
        dkim.rotate(con, DOMAIN)


# -- DNS records ------------------------------------------------------------


def test_records(con: sqlite3.Connection, settings: config.Settings) -> None:
    keys = dkim.generate_keys(con, DOMAIN)
    by_name: dict[tuple[str, str], list[str]] = {}
    for r in records.records(settings, DOMAIN, keys):
        by_name.setdefault((r.name, r.type), []).append(r.value)
    d = DOMAIN
    assert by_name[(d, "MX")] == ["10 mx.test."]
    assert by_name[(d, "TXT")] == ["v=spf1 mx -all"]
    assert by_name[(f"{keys[0].selector}._domainkey.{d}", "TXT")] == [
        f"v=DKIM1; k=rsa; p={keys[0].public_key}"
    ]
    assert by_name[(f"{keys[1].selector}._domainkey.{d}", "TXT")] == [
        f"v=DKIM1; k=ed25519; p={keys[1].public_key}"
    ]
    (dmarc,) = by_name[(f"_dmarc.{d}", "TXT")]
    assert dmarc.startswith("v=DMARC1; p=quarantine") and f"rua=mailto:postmaster@{d}" in dmarc
    (sts,) = by_name[(f"_mta-sts.{d}", "TXT")]
    assert re.fullmatch(r"v=STSv1; id=[A-Za-z0-9]{1,32}", sts)  # RFC 8461 3.1
    assert by_name[(f"mta-sts.{d}", "CNAME")] == ["mx.test."]
    assert by_name[(f"_smtp._tls.{d}", "TXT")] == [f"v=TLSRPTv1; rua=mailto:postmaster@{d}"]
    assert by_name[(f"_submissions._tcp.{d}", "SRV")] == ["0 1 465 mx.test."]
    assert by_name[(f"_submission._tcp.{d}", "SRV")] == ["10 1 587 mx.test."]
    assert by_name[(f"_imaps._tcp.{d}", "SRV")] == ["0 1 993 mx.test."]
    assert by_name[(f"_imap._tcp.{d}", "SRV")] == ["10 1 143 mx.test."]
    assert by_name[(f"_pop3s._tcp.{d}", "SRV")] == ["20 1 995 mx.test."]
    assert by_name[(f"autoconfig.{d}", "CNAME")] == ["mx.test."]
    assert by_name[(f"autodiscover.{d}", "CNAME")] == ["mx.test."]
    assert ("mx.test", "A") in by_name


def test_mta_sts_policy(settings: config.Settings) -> None:
    policy = records.mta_sts_policy(settings, DOMAIN)
    assert policy == "version: STSv1\r\nmode: testing\r\nmx: mx.test\r\nmax_age: 604800\r\n"
    testing_id = records.mta_sts_id(settings, DOMAIN)
    assert records.mta_sts_id(settings, DOMAIN) == testing_id  # stable
    settings.tls.acme = True
    assert "mode: enforce\r\n" in records.mta_sts_policy(settings, DOMAIN)
    assert records.mta_sts_id(settings, DOMAIN) != testing_id  # a new policy, a new id


@pytest.mark.parametrize(
    "value",
    [
        "v=DKIM1; k=rsa; p=" + "A" * 600,
        'say "hi" \\ ' * 60,
        "ü" * 300,  # 2-octet characters across the 255-octet boundary
        "x" * 255,
        "",
    ],
)
def test_txt_chunks(value: str) -> None:
    chunks = records.txt_chunks(value)
    assert all(len(chunk.encode()) <= 255 for chunk in chunks)
    assert "".join(chunks) == value
    quoted = records.quote_txt(value)
    unquoted = [re.sub(r"\\(.)", r"\1", s) for s in re.findall(r'"((?:[^"\\]|\\.)*)"', quoted)]
    assert unquoted == chunks


def test_zone_lines_chunk_the_rsa_key(con: sqlite3.Connection, settings: config.Settings) -> None:
    keys = dkim.generate_keys(con, DOMAIN)
    lines = records.zone_lines(records.records(settings, DOMAIN, keys))
    (rsa_line,) = [line for line in lines if line.startswith(f"{keys[0].selector}._domainkey.")]
    strings = re.findall(r'"([^"]*)"', rsa_line)
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == f"v=DKIM1; k=rsa; p={keys[0].public_key}"
    assert f"{DOMAIN}.\t3600\tIN\tMX\t10 mx.test." in lines
    assert lines[0].startswith("; MX")


# -- the CLI ----------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    toml = tmp_path / "pimail.toml"
    toml.write_text(f'data_dir = "{tmp_path / "data"}"\nhostname = "mx.test"\n')

    def run(*args: str) -> tuple[int, str]:
        code = main(["--config", str(toml), *args])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def test_cli_domain_add_and_dns(cli: Callable[..., tuple[int, str]]) -> None:
    code, out = cli("domain", "add", DOMAIN)
    assert code == 0 and f"added domain {DOMAIN}" in out and f"pimail dns {DOMAIN}" in out

    code, out = cli("dns", DOMAIN)
    assert code == 0
    lines = out.splitlines()
    assert f"{DOMAIN}.\t3600\tIN\tMX\t10 mx.test." in lines
    assert f'{DOMAIN}.\t3600\tIN\tTXT\t"v=spf1 mx -all"' in lines
    assert any("._domainkey." in line and '"v=DKIM1; k=rsa; p=' in line for line in lines)
    assert any("._domainkey." in line and '"v=DKIM1; k=ed25519; p=' in line for line in lines)
    assert any(line.startswith(f"_dmarc.{DOMAIN}.") and "v=DMARC1" in line for line in lines)
    assert any(line.startswith(f"_mta-sts.{DOMAIN}.") and "v=STSv1" in line for line in lines)
    assert f"mta-sts.{DOMAIN}.\t3600\tIN\tCNAME\tmx.test." in lines
    assert any(line.startswith(f"_smtp._tls.{DOMAIN}.") and "TLSRPTv1" in line for line in lines)
    assert f"_submissions._tcp.{DOMAIN}.\t3600\tIN\tSRV\t0 1 465 mx.test." in lines
    assert f"_imaps._tcp.{DOMAIN}.\t3600\tIN\tSRV\t0 1 993 mx.test." in lines
    assert any(line.startswith("; DKIM") for line in lines)  # a comment per purpose
    assert lines[-4:] == ["version: STSv1", "mode: testing", "mx: mx.test", "max_age: 604800"]

    code, out = cli("dkim", "list")
    assert code == 0 and len(out.splitlines()) == 2 and out.count("active") == 2


def test_cli_rotation(cli: Callable[..., tuple[int, str]]) -> None:
    cli("domain", "add", DOMAIN)
    code, out = cli("dkim", "rotate", DOMAIN)
    assert code == 0 and "pending" in out and f"pimail dkim activate {DOMAIN}" in out
    code, out = cli("dkim", "rotate", DOMAIN)
    assert code == 1 and "pending DKIM keys already" in out
    code, out = cli("dkim", "activate", DOMAIN)
    assert code == 0 and "retired" in out
    code, out = cli("dkim", "list", DOMAIN)
    assert out.count("active") == 2 and out.count("retired") == 2
    code, out = cli("dns", DOMAIN)
    assert "remove after a week" in out
    code, out = cli("dkim", "remove-retired", DOMAIN)
    assert code == 0 and "removed" in out
    code, out = cli("dkim", "list", DOMAIN)
    assert "retired" not in out
    code, out = cli("dkim", "list", "nowhere.test")
    assert code == 1 and "not a local domain" in out


def test_cli_domain_from_before_dkim(tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    # A domain added before DKIM existed: in the database, without keys.
    Directory(db.open_main(tmp_path / "data" / "pimail.db")).add_domain(DOMAIN)
    code, out = cli("dns", DOMAIN)
    assert code == 0 and "no DKIM keys" in out and "v=DKIM1" not in out
    code, out = cli("dkim", "list")
    assert "no DKIM keys" in out
    code, out = cli("dkim", "rotate", DOMAIN)
    assert code == 0 and "active" in out
    code, out = cli("dns", DOMAIN)
    assert "k=ed25519" in out and "no DKIM keys" not in out


def test_openssl_rsa_gives_dkimpys_own_signature(con: sqlite3.Connection) -> None:
    """RSASSA-PKCS1-v1_5 is deterministic: the OpenSSL step that replaces
    dkimpy's pure-Python one must produce the very same octets."""
    import hashlib

    [rsa_key] = [k for k in dkim.generate_keys(con, DOMAIN, "pending") if k.algorithm == dkim.RSA]
    dkim.sign(b"From: a@example.org\r\n\r\nx\r\n", DOMAIN, [rsa_key])  # installs it
    assert getattr(dkimpy.RSASSA_PKCS1_v1_5_sign, "pimail_openssl", False)
    parsed = dkimpy.crypto.parse_pem_private_key(rsa_key.private_key.encode())
    for data in (b"", b"hello", bytes(range(256)) * 10):
        ours = dkimpy.RSASSA_PKCS1_v1_5_sign(hashlib.sha256(data), parsed)
        pure = dkimpy.crypto.RSASSA_PKCS1_v1_5_sign(hashlib.sha256(data), parsed)
        assert ours == pure and len(ours) == 256
