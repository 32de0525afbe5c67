"""The static rules (filter/rules.py, filter/body_rules.py), each on a message that
must fire it and on near misses that must not; then GTUBE over real SMTP for
every account, with and without rspamd."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import PimailServer
from filter.engines import RspamdServer
from filter.samples import GTUBE
from pimail.filter import malware, rules

NOW = 1796644800.0  # Mon, 07 Dec 2026 12:00:00 +0000
DATE = "Mon, 07 Dec 2026 11:00:00 +0000"


def mail(
    *,
    date: str | None = DATE,
    msgid: str | None = "<a1@sender.test>",
    from_: list[str] | None = None,
    subject: str = "hello",
    content_type: str = "text/plain; charset=utf-8",
    body: str = "Hello, lunch tomorrow?\r\n",
    extra: str = "",
) -> bytes:
    head = f"Received: from x by mx.test; {DATE}\r\n" if date else ""
    for value in ["Someone <someone@sender.test>"] if from_ is None else from_:
        head += f"From: {value}\r\n"
    head += f"To: alice@example.org\r\nSubject: {subject}\r\n"
    if date is not None:
        head += f"Date: {date}\r\n"
    if msgid is not None:
        head += f"Message-ID: {msgid}\r\n"
    head += f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n{extra}\r\n"
    return (head + body).encode("utf-8")


def symbols(message: bytes) -> dict[str, float]:
    texts = malware.screen(message).texts
    found = rules.header_rules(message, ["example.org"], now=NOW)
    found.update(rules.text_rules(texts, ["example.org"]))
    if rules.gtube(message, texts):
        found["GTUBE"] = rules.GTUBE_SCORE
    return found


def html(body: str) -> bytes:
    return mail(content_type="text/html; charset=utf-8", body=body)


def test_a_plain_message_fires_nothing() -> None:
    assert symbols(mail()) == {}


FIRES = {
    "GTUBE": mail(body=GTUBE.decode() + "\r\n"),
    "MISSING_DATE": mail(date=None),
    "INVALID_DATE": mail(date="yesterday at noon"),
    "DATE_IN_FUTURE": mail(date="Tue, 08 Dec 2026 11:00:00 +0000"),
    "DATE_IN_PAST": mail(date="Thu, 01 Jan 1970 00:00:00 +0000"),
    "MISSING_MESSAGE_ID": mail(msgid=None),
    "INVALID_MSGID": mail(msgid="12345"),
    "MISSING_FROM": mail(from_=[]),
    "MULTIPLE_FROM": mail(from_=["a@sender.test", "b@sender.test"]),
    "INVALID_FROM": mail(from_=["Someone"]),
    "FROM_NAME_OWN_DOMAIN": mail(from_=['"boss@example.org" <boss@elsewhere.test>']),
    "FROM_NAME_MIXED_SCRIPT": mail(from_=["P\u0430yPal <service@sender.test>"]),
    "SUBJECT_EXCESS_BASE64": mail(subject="=?utf-8?B?WW91ciBpbnZvaWNl?="),  # "Your invoice"
    "FROM_EXCESS_BASE64": mail(from_=["=?windows-1251?B?U2VydmljZQ==?= <s@sender.test>"]),
    "ENCODED_WORD_BAD_CHARSET": mail(
        subject="=?utf-8?B?" + base64.b64encode(b"\xff\xfe").decode() + "?="
    ),
    "HTML_ONLY": html("<p>Hello</p>"),
    "HTML_HIDDEN_TEXT": html('<p>Hi</p><div style="display: none">cheap pills cheap pills</div>'),
    "HTML_TINY_FONT": html(
        '<p>Hi</p><span style="font-size:1px">random words to fool filters</span>'
    ),
    "HTML_INVISIBLE_COLOR": html('<p>Hi</p><font color="#FFF">random words to fool filters</font>'),
    "URI_TEXT_MISMATCH": html('<a href="http://evil.test/login">www.paypal.com</a>'),
    "URI_IP": html('<a href="http://192.0.2.7/x">click</a>'),
    "URI_SHORTENER": mail(body="See https://bit.ly/3abcdef now\r\n"),
    "URI_USERINFO": html('<a href="http://www.paypal.com@evil.test/">PayPal</a>'),
    "URI_PUNYCODE_OWN": html('<a href="http://xn--exmple-4nf.org/">log in</a>'),  # exаmple.org
    "URI_HOMOGRAPH": html('<a href="https://xn--pypal-4ve.com/">PayPal</a>'),  # pаypal.com
}


@pytest.mark.parametrize("symbol", sorted(FIRES))
def test_rule_fires(symbol: str) -> None:
    found = symbols(FIRES[symbol])
    assert symbol in found
    # Modest alone (GTUBE aside, and HTML_ONLY comes with every HTML sample).
    if symbol != "GTUBE":
        assert sum(v for k, v in found.items() if k != "HTML_ONLY") < 5.0


QUIET = {
    "date-with-comment": mail(date="Mon, 7 Dec 2026 11:00:00 +0000 (UTC)"),
    "date-obsolete-zone": mail(date="Mon, 07 Dec 2026 06:00:00 EST"),
    "date-a-day-late": mail(date="Sun, 06 Dec 2026 11:00:00 +0000"),
    "msgid-with-literal": mail(msgid="<a1@[192.0.2.1]>"),
    "from-group-of-one": mail(from_=['"Doe, Jane" <jane@sender.test>']),
    "own-domain-from-own-address": mail(from_=['"alice@example.org" <alice@example.org>']),
    "foreign-address-in-name": mail(from_=['"bob@other.test" <bob@sender.test>']),
    "greek-name": mail(from_=["\u039d\u03af\u03ba\u03bf\u03c2 <n@sender.test>"]),
    "cyrillic-name": mail(from_=["=?utf-8?B?0JjQstCw0L0=?= <ivan@sender.test>"]),  # Иван
    "encoded-non-ascii-subject": mail(subject="=?utf-8?B?R3LDvMOfZQ==?="),  # Grüße
    "qp-ascii-subject": mail(subject="=?utf-8?Q?Your_invoice?="),
    "html-with-text-part": mail(
        content_type='multipart/alternative; boundary="b"',
        body="--b\r\nContent-Type: text/plain\r\n\r\nHi\r\n--b\r\nContent-Type: text/html\r\n\r\n"
        '<div style="display:none">preview text of the newsletter</div>\r\n--b--\r\n',
    ),
    "small-but-readable-font": html(
        '<p>Hi</p><span style="font-size:10px">the small print here</span>'
    ),
    "white-on-black": html(
        '<body bgcolor="#000000"><font color="#ffffff">white text on a black page</font></body>'
    ),
    "link-text-same-domain": html('<a href="https://www.paypal.com/signin">paypal.com</a>'),
    "link-text-words": html('<a href="http://tracker.test/x">Read more</a>'),
    "link-text-subdomain": html('<a href="http://click.news.example.com/x">www.example.com</a>'),
    "own-domain-plain": html('<a href="https://example.org/">example.org</a>'),
    "idn-genuine": html('<a href="https://xn--mnchen-3ya.de/">München</a>'),  # münchen.de
    "mailto": html('<a href="mailto:a@b.test">write</a>'),
}


@pytest.mark.parametrize("case", sorted(QUIET))
def test_near_misses_stay_quiet(case: str) -> None:
    found = symbols(QUIET[case])
    found.pop("HTML_ONLY", None)
    assert found == {}


def test_gtube_hidden_in_base64_is_found() -> None:
    encoded = base64.encodebytes(GTUBE).decode().replace("\n", "\r\n")
    message = mail(body=encoded, extra="Content-Transfer-Encoding: base64\r\n")
    assert GTUBE not in message
    assert "GTUBE" in symbols(message)


def test_combinations_reach_junk() -> None:
    phish = mail(
        date=None,
        from_=['"security@example.org" <security@evil.test>'],
        content_type="text/html; charset=utf-8",
        body='<a href="http://evil.test/login">www.example.org</a>'
        '<div style="display:none">ignore these words entirely please</div>',
    )
    found = symbols(phish)
    assert {"FROM_NAME_OWN_DOMAIN", "URI_TEXT_MISMATCH", "HTML_HIDDEN_TEXT"} <= set(found)
    assert sum(found.values()) >= 5.0


def test_auth_rules_dmarc_by_policy_and_the_lists() -> None:
    outcome = rules.AuthOutcome(dmarc="fail", dmarc_policy="quarantine", uribl=2, rhsbl=1)
    assert rules.auth_rules(outcome) == {
        "DMARC_POLICY_QUARANTINE": 1.5,
        "URIBL_LISTED": 5.0,
        "RHSBL_SENDER": 2.0,
    }
    assert rules.auth_rules(rules.AuthOutcome(dmarc="fail", dmarc_policy="reject")) == {
        "DMARC_POLICY_REJECT": 2.0
    }
    refused = rules.AuthOutcome(dmarc="fail", dmarc_policy="reject", dmarc_refused=True)
    assert rules.auth_rules(refused) == {}
    assert rules.auth_rules(rules.AuthOutcome(new_domain=True)) == {"NEW_DOMAIN_NOAUTH": 1.0}


def test_seen_domains_are_bounded() -> None:
    seen = rules.SeenDomains(capacity=3)
    for domain in ("a.test", "b.test", "c.test", "d.test"):
        seen.add(domain)
    assert "a.test" not in seen and "D.TEST." in seen and "b.test" in seen
    seen.add("b.test")  # refreshed: c.test is now the oldest
    seen.add("e.test")
    assert "c.test" not in seen and "b.test" in seen


def newsletter(
    *,
    from_: str = "Shop News <news@shop.test>",
    msgid: str = "<n1.20261207@mail.shop.test>",
    unsubscribe: str | None = "<mailto:leave@lists.shop.test>, <https://shop.test/u?id=7>",
    links: tuple[str, ...] = ("https://www.shop.test/sale", "https://click.shop.test/a"),
    extra: str = "",
) -> bytes:
    """An HTML newsletter that names its sender the same way throughout."""
    head = extra + (f"List-Unsubscribe: {unsubscribe}\r\n" if unsubscribe is not None else "")
    body = "".join(f'<p><a href="{url}">Our winter sale</a></p>' for url in links)
    return mail(
        from_=[from_], msgid=msgid, content_type="text/html; charset=utf-8",
        body=f"<html><body>{body}</body></html>\r\n", extra=head,
    )  # fmt: skip


def bulk(message: bytes, fired: tuple[str, ...] = ()) -> bool:
    found = symbols(message)
    texts = malware.screen(message).texts
    return "BULK_SENDER_CONSISTENT" in rules.bulk_rules(message, texts, {*found, *fired})


def test_bulk_sender_consistent_fires_on_a_consistent_newsletter() -> None:
    message = newsletter()
    assert bulk(message)
    found = rules.score(message, texts=malware.screen(message).texts, own_domains=["example.org"])
    assert found["BULK_SENDER_CONSISTENT"] == -1.5 < 0
    # Through a mailing service: Message-ID, unsubscribe and links at the service's domain.
    assert bulk(
        newsletter(
            msgid="<x7.q@mta.esp.test>",
            unsubscribe="<https://esp.test/unsub/93>",
            links=("https://esp.test/c/1", "https://esp.test/c/2", "https://shop.test/"),
        )
    )
    assert bulk(newsletter(links=()))  # no links: nothing to contradict
    folded = newsletter(unsubscribe="<mailto:leave@shop.test>,\r\n\t<https://shop.test/u>")
    assert bulk(folded)  # RFC 5322 2.2.3 folding inside the field


BULK_MISSES = {
    "no-unsubscribe": newsletter(unsubscribe=None),
    "unsubscribe-without-brackets": newsletter(unsubscribe="mailto:leave@shop.test"),
    "unsubscribe-other-scheme": newsletter(unsubscribe="<ftp://shop.test/leave>"),
    "unsubscribe-garbage": newsletter(unsubscribe="<>,<"),
    "two-unsubscribe-fields": newsletter(extra="List-Unsubscribe: <mailto:x@other.test>\r\n"),
    "msgid-elsewhere": newsletter(msgid="<n1@random-host.test>"),
    "from-unrelated": newsletter(from_="Bank <service@bank.test>"),
    "links-elsewhere": newsletter(links=("http://pills.test/a", "http://pills.test/b")),
    "trick-ip-link": newsletter(links=("http://192.0.2.7/x",)),
    "trick-bad-date": mail(
        date="yesterday",
        from_=["News <news@shop.test>"],
        msgid="<n1@shop.test>",
        extra="List-Unsubscribe: <mailto:leave@shop.test>\r\n",
    ),
    "two-addresses-in-from": newsletter(from_='"news@shop.test" <news@other.test>'),
}


@pytest.mark.parametrize("case", sorted(BULK_MISSES))
def test_bulk_sender_consistent_near_misses(case: str) -> None:
    assert not bulk(BULK_MISSES[case])


@pytest.mark.parametrize("failure", ["SPF_FAIL", "DKIM_FAIL", "DMARC_POLICY_NONE", "URIBL_LISTED"])
def test_bulk_sender_consistent_never_with_failed_authentication(failure: str) -> None:
    assert failure in rules.TRICKS
    assert not bulk(newsletter(), (failure,))


# -- over SMTP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rspamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RspamdServer]:
    with RspamdServer(tmp_path_factory.mktemp("rspamd")).start() as server:
        yield server


ACCOUNTS = ["alice@example.org", "bob@example.org", "carol@example.org"]


@pytest.mark.parametrize("mode", ["", "add", "replace"], ids=["no-rspamd", "add", "replace"])
def test_gtube_is_refused_for_every_account(
    make_server: Any, rspamd_server: RspamdServer, mode: str
) -> None:
    engines = {"rspamd": rspamd_server.address, "rspamd_mode": mode} if mode else {}
    server: PimailServer = make_server("g", sections={
        "filter": {"skip_networks": [], "greylist": False, **engines},
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": 1.0},
    })  # fmt: skip
    server.cli("domain", "add", "example.org")
    for account in ACCOUNTS:
        server.add_user(account)
    server.start()
    # bob allows the sender: GTUBE is refused all the same.
    server.cli("spam", "allow", "bob@example.org", "someone@sender.test")
    plain = mail(body=GTUBE.decode() + "\r\n")
    encoded = mail(
        body=base64.encodebytes(GTUBE).decode().replace("\n", "\r\n"),
        extra="Content-Transfer-Encoding: base64\r\n",
    )
    for recipients in [[a] for a in ACCOUNTS] + [ACCOUNTS]:
        for message in (plain, encoded):
            with (
                smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s,
                pytest.raises(smtplib.SMTPDataError) as refused,
            ):
                s.sendmail("someone@sender.test", recipients, message)
            assert refused.value.smtp_code == 550
            assert (
                refused.value.smtp_error.startswith(b"5.7.1 ")
                and b"GTUBE" in refused.value.smtp_error
            )
    assert [m for a in ACCOUNTS for f in ("", ".Junk") for m in server.messages(a, f)] == []


def test_bulk_sender_consistent_over_smtp(make_server: Any) -> None:
    """Through the whole pipeline, sender authentication included (its DNS
    unreachable: nothing fails, nothing passes): a consistent newsletter gets
    the symbol in its stored X-Spam-Status, the same newsletter with an IP
    link or its Message-ID at another domain does not."""
    server: PimailServer = make_server("b", sections={
        "filter": {"skip_networks": [], "greylist": False, "starter_model": "off"},
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": 1.0},
    })  # fmt: skip
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    sent = {
        "consistent": newsletter(),
        "ip-link": newsletter(links=("https://www.shop.test/", "http://192.0.2.7/x")),
        "msgid-elsewhere": BULK_MISSES["msgid-elsewhere"],
    }
    for name, message in sent.items():
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
            s.sendmail("news@shop.test", ["alice@example.org"], message.replace(
                b"Subject: hello", f"Subject: {name}".encode()
            ))  # fmt: skip
    stored = {}
    for path in server.messages("alice@example.org"):
        data = path.read_bytes()
        subject = data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        stored[subject] = data.split(b"\r\n\r\n", 1)[0]
    assert sorted(stored) == sorted(sent)
    assert b"BULK_SENDER_CONSISTENT" in stored["consistent"]
    assert b"BULK_SENDER_CONSISTENT" not in stored["ip-link"]
    assert b"URI_IP" in stored["ip-link"]
    assert b"BULK_SENDER_CONSISTENT" not in stored["msgid-elsewhere"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_rules_never_raise_on_garbage(tail: bytes) -> None:
    rules.score(b"From: =?x?B?" + tail + b"\r\nDate: " + tail + b"\r\n\r\n" + tail)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.text(max_size=60))
def test_body_rules_never_raise_on_any_html(body: str, host: str) -> None:
    page = f'<a href="http://{host}/">{body}</a><a href="https://xn--{host}">x</a>{body}'
    rules.text_rules([malware.TextPart("text/html", page)], ["example.org"])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80), st.text(max_size=120), st.text(max_size=60))
def test_bulk_rules_never_raise(author: str, msgid: str, unsubscribe: str, host: str) -> None:
    """Any From, Message-ID and List-Unsubscribe (also with bracketed URIs
    around the garbage) and any link host: an answer, never an exception."""
    for listed in (unsubscribe, f"<mailto:{unsubscribe}>, <https://{host}/{unsubscribe}>"):
        head = f"From: {author} <n@{host}>\r\nMessage-ID: <{msgid}@{host}>\r\n"
        head += f"List-Unsubscribe: {listed}\r\n\r\n"
        message = head.encode("utf-8", "surrogateescape")
        page = f'<a href="http://{host}/">x</a><a href="https://{host}.test/">y</a>'
        found = rules.bulk_rules(message, [malware.TextPart("text/html", page)], ())
        assert found in ({}, {"BULK_SENDER_CONSISTENT": rules.BULK_SENDER_CONSISTENT})
