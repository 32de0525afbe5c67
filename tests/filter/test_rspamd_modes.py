"""rspamd in the filter pipeline (filter/pipeline.py, step 6): "add" and "replace", real rspamd.

One rspamd for the module (tests/filter/engines.py: loopback, the packaged
rules, an offline DNS server), configured so that a message can ask for each
of rspamd's actions:

- "reject": rspamd's GTUBE string (always on); a pre-result whose score is the
  reject threshold, 15. pimail refuses GTUBE itself before asking rspamd
  (filter/rules.py), so rspamd's "reject" is asked for by a multimap rule
  too (below), and GTUBE's own tests check that pimail's refusal comes first.
- "add header", "rewrite subject", "no action": GTUBE's variants with the first
  letter Y, Z and A instead of X. rspamd 3.4 has them in its C code
  (`rspamd_check_gtube`), off unless `options { enable_test_patterns = true; }`.
  "add header" scores its threshold (6); "rewrite subject" has no threshold in
  the packaged actions.conf, so it scores 0; "no action" skips every rule: 0.
- "reject", "soft reject", "greylist", "quarantine", "discard": (besides GTUBE) a
  multimap rule per action on the Subject (`Subject: pimail-test-<action>`) in
  prefilter mode, whose `action` is rspamd's pre-result. rspamd 3.4 knows
  quarantine and discard only once actions.conf declares them ("unknown
  action quarantine" otherwise): here as actions without a threshold.
- an "add header" reached by score, not by a pre-result: an address outside
  rspamd's local networks, whose PTR, HELO and sender domain the offline DNS
  cannot resolve (HFILTER_*, RDNS_NONE: about 7).

Loopback and LAN addresses are local for rspamd as for pimail: an ordinary
message from them gets "no action", -0.1. The SMTP tests at the end run pimail
with `skip_networks = []` (as test_inbound_filter.py does), so that mail from
127.0.0.1 is filtered.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PimailServer, free_port
from dnsserver import DnsServer
from pimail.config import FilterSettings, Settings
from pimail.dns.resolver import Resolver
from pimail.filter import rspamd
from pimail.filter.pipeline import Envelope, Pipeline, Verdict

from .engines import GTUBE, RspamdServer, message, with_attachment

HOSTNAME = "mx.pimail.test"
OUTSIDE = "192.0.2.10"  # RFC 5737: outside pimail's and rspamd's local networks
LAN = "10.0.0.1"
SPAM_REPLY = "550 5.7.1 Message looks like spam"
LATER_REPLY = "451 4.7.1 Try again later"
FORCED_ACTIONS = ("reject", "soft reject", "greylist", "quarantine", "discard")
GTUBE_REPLY = "550 5.7.1 Message looks like spam (GTUBE test message)"


def _slug(action: str) -> str:
    return action.replace(" ", "-")


def _forcing_rule(action: str) -> str:
    slug = _slug(action)
    return (
        f"PIMAIL_TEST_{slug.upper().replace('-', '_')} {{\n"
        '  type = "header"; header = "Subject"; regexp = true;\n'
        f'  map = "file://$LOCAL_CONFDIR/local.d/{slug}.map";\n'
        f'  prefilter = true; action = "{action}";\n'
        "}\n"
    )


RSPAMD_LOCAL_D = {
    "options.inc": "enable_test_patterns = true;\n",  # GTUBE's Y, Z and A variants
    "actions.conf": (
        'quarantine { flags = ["no_threshold"]; }\ndiscard { flags = ["no_threshold"]; }\n'
    ),
    "multimap.conf": "".join(_forcing_rule(action) for action in FORCED_ACTIONS),
    **{f"{_slug(a)}.map": f"/^pimail-test-{_slug(a)}$/\n" for a in FORCED_ACTIONS},
}


@pytest.fixture(scope="module")
def rspamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RspamdServer]:
    base = tmp_path_factory.mktemp("rspamd")
    with RspamdServer(base, RSPAMD_LOCAL_D).start() as server:
        yield server


# -- messages and calls ------------------------------------------------------------


def gtube(letter: str = "X") -> bytes:
    """GTUBE (X: reject) or a variant (Y: add header, Z: rewrite subject, A: no action).

    Undated: pimail's own MISSING_DATE (+1.0) tells our score from rspamd's."""
    return message(body=letter + GTUBE[1:] + "\r\n").replace(b"Date: ", b"X-Date: ")


def forcing(action: str) -> bytes:
    """A message for which the multimap rule makes rspamd answer `action`."""
    return message(subject=f"pimail-test-{_slug(action)}")


def own_six() -> bytes:
    """A message worth 6.0 of pimail's own points, nothing for rspamd (GTUBE "no action")."""
    return (
        with_attachment("invoice.pdf.exe", b"MZ not really", text="A" + GTUBE[1:] + "\r\n")
        .replace(b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n", b"")
        .replace(b"Message-ID: <file-1@example.org>\r\n", b"")
    )


OWN_SIX = {"EXECUTABLE_ATTACH": 4.0, "MISSING_DATE": 1.0, "MISSING_MESSAGE_ID": 1.0}


def pipeline(resolver: Resolver, address: str, mode: str, **values: object) -> Pipeline:
    # These tests are about rspamd: the built-in malware screen (test_malware.py)
    # would refuse own_six()'s .exe before rspamd is asked.
    values.setdefault("malware", False)
    settings = Settings(
        hostname=HOSTNAME,
        filter=FilterSettings(rspamd=address, rspamd_mode=mode, **values),  # type: ignore[arg-type]
    )
    return Pipeline(settings, resolver, None)


def envelope(ip: str = OUTSIDE) -> Envelope:
    return Envelope(ip, "mx.example.test", "alice@example.org", ["bob@example.net"])


def check(
    pipe: Pipeline, mail: bytes, ip: str = OUTSIDE, accounts: tuple[int, ...] = (1, 2)
) -> Verdict:
    return asyncio.run(pipe.check(envelope(ip), mail, list(accounts)))


def ask_rspamd(server: RspamdServer, mail: bytes, ip: str = OUTSIDE) -> rspamd.RspamdResult:
    """rspamd's own answer for the envelope that the pipeline sends it."""
    env = envelope(ip)
    result = asyncio.run(
        rspamd.check(
            server.address,
            mail,
            ip=env.ip,
            helo=env.helo,
            mail_from=env.mail_from,
            rcpt_to=env.rcpt_to,
            mta_name=HOSTNAME,
        )
    )
    assert result.ok, result.error
    return result


def spam_fields(verdict: Verdict) -> str:
    return verdict.headers.decode().split("X-Spam-Status: ", 1)[1]


# -- the test rspamd does what this module says ----------------------------------


def test_rspamd_answers_each_action(rspamd_server: RspamdServer) -> None:
    answers = {
        "X": ("reject", 15.0),
        "Y": ("add header", 6.0),
        "Z": ("rewrite subject", 0.0),
        "A": ("no action", 0.0),
    }
    for letter, (action, score) in answers.items():
        result = ask_rspamd(rspamd_server, gtube(letter))
        assert (result.action, result.score) == (action, score), letter
    for action in FORCED_ACTIONS:
        assert ask_rspamd(rspamd_server, forcing(action)).action == action
    assert ask_rspamd(rspamd_server, message(), LAN).action == "no action"


# -- replace: rspamd's action and score decide --------------------------------------


def test_replace_reject_is_refused(rspamd_server: RspamdServer, resolver: Resolver) -> None:
    mail = forcing("reject")
    assert ask_rspamd(rspamd_server, mail).action == "reject"
    verdict = check(pipeline(resolver, rspamd_server.address, "replace"), mail)
    assert (verdict.action, verdict.reply) == ("reject", SPAM_REPLY)
    assert verdict.junk_accounts == set()


def test_gtube_is_refused_by_pimail_before_rspamd(
    rspamd_server: RspamdServer, resolver: Resolver
) -> None:
    for mode in ("replace", "add"):
        verdict = check(pipeline(resolver, rspamd_server.address, mode), gtube())
        assert (verdict.action, verdict.reply) == ("reject", GTUBE_REPLY)
        assert "RSPAMD" not in verdict.symbols and verdict.symbols["GTUBE"] == 1000.0


def test_replace_add_header_files_every_copy_in_junk_at_rspamds_score(
    rspamd_server: RspamdServer, resolver: Resolver
) -> None:
    verdict = check(pipeline(resolver, rspamd_server.address, "replace"), gtube("Y"))
    assert (verdict.action, verdict.reply) == ("accept", None)
    assert verdict.junk_accounts == {1, 2}
    # Our own symbols are reported, not counted: the sum would be 8.0.
    assert verdict.symbols == {"MISSING_DATE": 1.0, "NEW_DOMAIN_NOAUTH": 1.0, "RSPAMD": 6.0}
    assert verdict.score == 6.0 and verdict.account_scores == {1: 6.0, 2: 6.0}
    assert spam_fields(verdict).startswith(
        "Yes, score=6.0 required=5.0 tests=MISSING_DATE,\r\n\tNEW_DOMAIN_NOAUTH,RSPAMD"
    )
    assert verdict.headers.endswith(b"X-Spam-Score: 6.0\r\n")
    # rspamd's action, not our reject score, refuses: 6.0 at reject_score 6.0 is still Junk.
    strict = pipeline(resolver, rspamd_server.address, "replace", reject_score=6.0)
    verdict = check(strict, gtube("Y"))
    assert (verdict.action, verdict.junk_accounts, verdict.score) == ("accept", {1, 2}, 6.0)


def test_replace_add_header_by_rspamds_rules_not_a_pre_result(
    rspamd_server: RspamdServer, resolver: Resolver
) -> None:
    mail = message().replace(b"Date: ", b"X-Date: ")
    asked = ask_rspamd(rspamd_server, mail)
    assert asked.action == "add header" and "RDNS_NONE" in asked.symbols  # the premise
    verdict = check(pipeline(resolver, rspamd_server.address, "replace"), mail)
    assert verdict.action == "accept" and verdict.junk_accounts == {1, 2}
    assert verdict.score == round(asked.score, 2) == verdict.symbols["RSPAMD"]
    assert verdict.symbols["MISSING_DATE"] == 1.0  # reported, not added


@pytest.mark.parametrize("action", ["rewrite subject", "quarantine"])
def test_replace_rewrite_subject_and_quarantine_go_to_junk(
    action: str, rspamd_server: RspamdServer, resolver: Resolver
) -> None:
    mail = gtube("Z") if action == "rewrite subject" else forcing(action)
    assert ask_rspamd(rspamd_server, mail).action == action
    verdict = check(pipeline(resolver, rspamd_server.address, "replace"), mail)
    assert (verdict.action, verdict.reply) == ("accept", None)
    assert verdict.junk_accounts == {1, 2}  # the action, not the score (0.0), decides
    assert verdict.score == 0.0


@pytest.mark.parametrize("action", ["soft reject", "greylist"])
def test_replace_soft_reject_and_greylist_are_deferred(
    action: str, rspamd_server: RspamdServer, resolver: Resolver
) -> None:
    verdict = check(pipeline(resolver, rspamd_server.address, "replace"), forcing(action))
    assert (verdict.action, verdict.reply) == ("tempfail", LATER_REPLY)
    assert verdict.junk_accounts == set()


def test_replace_clean_message_is_accepted(rspamd_server: RspamdServer, resolver: Resolver) -> None:
    verdict = check(pipeline(resolver, rspamd_server.address, "replace"), message(), LAN)
    assert (verdict.action, verdict.reply, verdict.junk_accounts) == ("accept", None, set())
    assert set(verdict.symbols) == {"RSPAMD"}
    assert verdict.score == verdict.symbols["RSPAMD"] and abs(verdict.score) < 1.0
    assert spam_fields(verdict).startswith("No, ")


def test_replace_no_action_overrules_our_score(
    rspamd_server: RspamdServer, resolver: Resolver
) -> None:
    # Our rules give 6.0, the reject score here; rspamd says "no action" at 0.
    mail = own_six()
    assert ask_rspamd(rspamd_server, mail, LAN).action == "no action"
    replaced = check(
        pipeline(resolver, rspamd_server.address, "replace", reject_score=6.0), mail, LAN
    )
    assert (replaced.action, replaced.junk_accounts, replaced.score) == ("accept", set(), 0.0)
    assert replaced.symbols == {**OWN_SIX, "RSPAMD": 0.0}
    added = check(pipeline(resolver, rspamd_server.address, "add", reject_score=6.0), mail, LAN)
    assert (added.action, added.reply, added.score) == ("reject", SPAM_REPLY, 6.0)


def test_replace_discard_goes_to_junk_not_the_inbox_nor_nowhere(
    rspamd_server: RspamdServer, resolver: Resolver
) -> None:
    assert ask_rspamd(rspamd_server, forcing("discard")).action == "discard"
    verdict = check(pipeline(resolver, rspamd_server.address, "replace"), forcing("discard"))
    assert verdict.action == "accept" and verdict.junk_accounts == {1, 2}
    assert b"X-Spam-Status: Yes" in verdict.headers  # in Junk: flagged, whatever the score


def test_replace_rspamd_unreachable_our_score_decides(resolver: Resolver) -> None:
    gone = f"127.0.0.1:{free_port()}"  # nothing listens there: refused at once
    mail = own_six()
    verdict = check(pipeline(resolver, gone, "replace"), mail, LAN)
    assert verdict.symbols == {**OWN_SIX, "RSPAMD_ERROR": 0.0}
    assert (verdict.action, verdict.score, verdict.junk_accounts) == ("accept", 6.0, {1, 2})
    # Our reject score applies again, as without rspamd (cf. the "no action" test above).
    verdict = check(pipeline(resolver, gone, "replace", reject_score=6.0), mail, LAN)
    assert (verdict.action, verdict.reply) == ("reject", SPAM_REPLY)
    assert verdict.symbols["RSPAMD_ERROR"] == 0.0


# -- add: rspamd's score is one more symbol -----------------------------------------


def test_add_reject_is_one_symbol_and_the_total_decides(
    rspamd_server: RspamdServer, resolver: Resolver
) -> None:
    mail = forcing("reject").replace(b"Date: ", b"X-Date: ")  # our MISSING_DATE, +1.0
    asked = ask_rspamd(rspamd_server, mail)
    verdict = check(pipeline(resolver, rspamd_server.address, "add"), mail)
    total = round(2.0 + asked.score, 2)
    assert verdict.symbols == {
        "MISSING_DATE": 1.0,
        "NEW_DOMAIN_NOAUTH": 1.0,  # example.test: no SPF, no DKIM, never seen
        "RSPAMD": round(asked.score, 2),
    }
    assert verdict.score == total
    assert (verdict.action, verdict.reply) == (("reject", SPAM_REPLY) if total >= 15.0 else (
        "accept", None))  # fmt: skip
    # Under a higher reject score the same total is only Junk: rspamd's "reject" is not ours.
    lenient = pipeline(resolver, rspamd_server.address, "add", reject_score=total + 1)
    verdict = check(lenient, mail)
    assert (verdict.action, verdict.score) == ("accept", total)


def test_add_ignores_rspamds_actions(rspamd_server: RspamdServer, resolver: Resolver) -> None:
    add = pipeline(resolver, rspamd_server.address, "add")
    verdict = check(add, gtube("Y"))  # "add header", 6.0: the sum, 8.0, is over junk_score
    assert verdict.symbols == {"MISSING_DATE": 1.0, "NEW_DOMAIN_NOAUTH": 1.0, "RSPAMD": 6.0}
    assert (verdict.action, verdict.score, verdict.junk_accounts) == ("accept", 8.0, {1, 2})
    for action in ("soft reject", "greylist", "quarantine"):  # all at 0.0
        verdict = check(add, forcing(action), LAN)
        assert (verdict.action, verdict.junk_accounts) == ("accept", set()), action
        assert verdict.symbols == {"RSPAMD": 0.0} and verdict.score == 0.0, action


def test_add_clean_message_has_a_small_rspamd_symbol(
    rspamd_server: RspamdServer, resolver: Resolver
) -> None:
    mail = message().replace(b"Date: ", b"X-Date: ")
    asked = ask_rspamd(rspamd_server, mail, LAN)
    verdict = check(pipeline(resolver, rspamd_server.address, "add"), mail, LAN)
    assert (verdict.action, verdict.junk_accounts) == ("accept", set())
    assert verdict.symbols == {"MISSING_DATE": 1.0, "RSPAMD": round(asked.score, 2)}
    assert abs(verdict.symbols["RSPAMD"]) < 1.0
    assert verdict.score == round(1.0 + asked.score, 2)
    assert "RSPAMD" in spam_fields(verdict)


# -- over SMTP: a running pimail in replace mode ------------------------------------


@pytest.fixture
def replacing(make_server: Any, zone: DnsServer, rspamd_server: RspamdServer) -> PimailServer:
    server: PimailServer = make_server(sections={
        "dns": {"nameservers": [zone.address], "timeout": 3.0},
        "filter": {
            "rspamd": rspamd_server.address,
            "rspamd_mode": "replace",
            "skip_networks": [],  # 127.0.0.1 is filtered like the internet
            "greylist": False,
        },
    })  # fmt: skip
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    return server


def send(server: PimailServer, mail: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("someone@example.net", ["alice@example.org"], mail)


def stored(server: PimailServer) -> list[str]:
    return [
        f"{folder or 'INBOX'}/{path.name}"
        for folder in ("", ".Junk")
        for path in server.messages("alice@example.org", folder)
    ]


def head(path: Path) -> bytes:
    return path.read_bytes().split(b"\r\n\r\n", 1)[0]


def test_smtp_gtube_is_refused_at_data(replacing: PimailServer) -> None:
    for mail in (gtube(), forcing("reject")):  # pimail's GTUBE, rspamd's reject
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(replacing, mail)
        assert refused.value.smtp_code == 550
        assert refused.value.smtp_error.startswith(b"5.7.1 ")
    assert stored(replacing) == []
    # The same server delivers an ordinary message: the path to the store works.
    send(replacing, message())
    [inbox] = replacing.messages("alice@example.org")
    assert b"X-Spam-Status: No, " in head(inbox) and b"RSPAMD" in head(inbox)
    assert replacing.messages("alice@example.org", ".Junk") == []


def test_smtp_add_header_lands_in_junk(replacing: PimailServer) -> None:
    send(replacing, gtube("Y"))
    assert replacing.messages("alice@example.org") == []
    [junk] = replacing.messages("alice@example.org", ".Junk")
    fields = head(junk)
    assert b"X-Spam-Status: Yes, score=6.0 required=5.0 tests=" in fields
    assert b"RSPAMD" in fields and b"\r\nX-Spam-Score: 6.0" in fields
    assert junk.read_bytes().endswith(b"Y" + GTUBE[1:].encode() + b"\r\n")


def test_smtp_soft_reject_is_deferred_at_data(replacing: PimailServer) -> None:
    with pytest.raises(smtplib.SMTPDataError) as deferred:
        send(replacing, forcing("soft reject"))
    assert deferred.value.smtp_code == 451
    assert deferred.value.smtp_error.startswith(b"4.7.1 ")
    assert stored(replacing) == []
