"""Delivery status notifications without I/O: structure, fields, hostile input, charsets."""

from __future__ import annotations

import email
import email.message
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimail.queue.dsn import (
    CONNECTION_FAILED,
    DELIVERY_EXPIRED,
    DIAGNOSTIC_MAX,
    HEADERS_MAX,
    NO_SUCH_DOMAIN,
    NULL_MX,
    RecipientStatus,
    build_dsn,
    clean_diagnostic,
    expired_status,
    original_header_section,
    should_bounce,
    status_from_reply,
)

ARRIVAL = 1_735_900_000.0  # Fri, 03 Jan 2025 10:26:40 +0000
NOW = ARRIVAL + 5 * 86400
HEADERS = (
    b"Return-Path: <alice@example.org>\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: Lunch on Friday?\r\n"
    b"Message-ID: <lunch.1@example.org>\r\n"
    b"\r\n"
)
BODY = b"The secret plan: meet at noon.\r\n"


def failed(recipient: str = "bob@example.com", **kwargs: object) -> RecipientStatus:
    fields: dict[str, object] = {
        "remote_mta": "mx.example.com",
        "diagnostic": "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
        "last_attempt": ARRIVAL + 60,
    }
    fields.update(kwargs)
    return RecipientStatus(recipient, "failed", "5.1.1", **fields)  # type: ignore[arg-type]


def delayed(recipient: str = "carol@example.net") -> RecipientStatus:
    return RecipientStatus(
        recipient,
        "delayed",
        CONNECTION_FAILED,
        remote_mta="mx.example.net",
        last_attempt=NOW,
        will_retry_until=ARRIVAL + 7 * 86400,
    )


def dsn(recipients: list[RecipientStatus], **kwargs: object) -> bytes:
    args: dict[str, object] = {
        "reporting_mta": "mail.example.org",
        "original_sender": "alice@example.org",
        "original_headers": HEADERS + BODY,
        "recipients": recipients,
        "arrival": ARRIVAL,
        "now": NOW,
    }
    args.update(kwargs)
    return build_dsn(**args)  # type: ignore[arg-type]


def parse(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def assert_wire_clean(raw: bytes) -> None:
    """CRLF only, nothing but CRLF, and no line over 998 octets (RFC 5322 2.1.1)."""
    assert raw.endswith(b"\r\n")
    without_crlf = raw.replace(b"\r\n", b"")
    assert b"\r" not in without_crlf
    assert b"\n" not in without_crlf
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def raw_parts(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(header section, body) of each top-level part, exactly as on the wire."""
    boundary = parse(raw).get_boundary()
    assert boundary
    body = raw.split(b"\r\n\r\n", 1)[1]
    chunks = body.split(b"\r\n--" + boundary.encode())
    assert chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n")
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        parts.append((head, content))
    return parts


def status_blocks(content: bytes) -> list[dict[str, str]]:
    """RFC 3464 2.1: blocks of header fields separated by blank lines, unfolded."""
    text = content.decode("utf-8")
    assert text.endswith("\r\n")
    blocks = []
    for block in text[:-2].split("\r\n\r\n"):
        unfolded = re.sub(r"\r\n(?=[ \t])", "", block)
        fields: dict[str, str] = {}
        for line in unfolded.split("\r\n"):
            name, sep, value = line.partition(":")
            assert sep and re.fullmatch(r"[A-Za-z-]+", name), line
            assert name.lower() not in fields, f"duplicate {name}"
            fields[name.lower()] = value.strip()
        blocks.append(fields)
    return blocks


def assert_no_defects(message: email.message.EmailMessage) -> None:
    for part in message.walk():
        assert not part.defects, (part.get_content_type(), part.defects)


# -- Structure ----------------------------------------------------------------


def test_multipart_report_with_three_parts_in_order() -> None:
    raw = dsn([failed()])
    assert_wire_clean(raw)
    assert raw.isascii()
    message = parse(raw)
    assert_no_defects(message)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = list(message.iter_parts())
    types = [p.get_content_type() for p in parts]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]


def test_outer_headers() -> None:
    message = parse(dsn([failed()]))
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.org>"
    assert message["To"] == "alice@example.org"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime.timestamp() == NOW
    assert re.fullmatch(r"<[^@<>]+@mail\.example\.org>", message["Message-ID"])
    assert message["References"] == "<lunch.1@example.org>"
    assert message["Reply-To"] is None


def test_message_id_unique_and_in_chosen_domain() -> None:
    ids = {parse(dsn([failed()], message_id_domain="example.org"))["Message-ID"] for _ in range(50)}
    assert len(ids) == 50
    assert all(i.endswith("@example.org>") for i in ids)


def test_postmaster_is_named_and_gets_replies() -> None:
    message = parse(dsn([failed()], postmaster="postmaster@example.org"))
    assert message["Reply-To"] == "postmaster@example.org"
    text = next(message.iter_parts()).get_content()
    assert "postmaster@example.org" in text


def test_human_text_explains_failure() -> None:
    message = parse(dsn([failed()]))
    text = " ".join(next(message.iter_parts()).get_content().split())
    assert "bob@example.com" in text
    assert '"Lunch on Friday?"' in text
    assert "does not exist" in text
    assert "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown" in text
    assert "mx.example.com" in text


# -- message/delivery-status --------------------------------------------------


def test_delivery_status_fields() -> None:
    recipient = failed(original_recipient="rfc822;Bob@Example.com")
    raw = dsn([recipient, delayed()], envelope_id="QQ314159")
    (_, content) = raw_parts(raw)[1]
    assert content.isascii()
    per_message, first, second = status_blocks(content)
    assert per_message == {
        "original-envelope-id": "QQ314159",
        "reporting-mta": "dns; mail.example.org",
        "arrival-date": "Fri, 03 Jan 2025 10:26:40 +0000",
    }
    assert first == {
        "original-recipient": "rfc822; Bob@Example.com",
        "final-recipient": "rfc822; bob@example.com",
        "action": "failed",
        "status": "5.1.1",
        "remote-mta": "dns; mx.example.com",
        "diagnostic-code": (
            "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown"
        ),
        "last-attempt-date": "Fri, 03 Jan 2025 10:27:40 +0000",
    }
    assert second["action"] == "delayed"
    assert second["status"] == "4.4.1"
    assert second["will-retry-until"] == "Fri, 10 Jan 2025 10:26:40 +0000"
    assert "diagnostic-code" not in second


def test_per_message_fields_in_rfc_order() -> None:
    (_, content) = raw_parts(dsn([failed()], envelope_id="E1"))[1]
    names = [line.split(b":")[0] for line in content.split(b"\r\n\r\n")[0].split(b"\r\n")]
    assert names == [b"Original-Envelope-Id", b"Reporting-MTA", b"Arrival-Date"]


def test_optional_fields_left_out() -> None:
    bare = RecipientStatus("bob@example.com", "failed", NO_SUCH_DOMAIN)
    (_, content) = raw_parts(dsn([bare]))[1]
    per_message, recipient = status_blocks(content)
    assert "original-envelope-id" not in per_message
    assert recipient == {
        "final-recipient": "rfc822; bob@example.com",
        "action": "failed",
        "status": "5.1.2",
    }


def test_multiline_reply_becomes_one_line() -> None:
    reply = (
        "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
        "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
        "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser"
    )
    assert clean_diagnostic(reply) == (
        "550 5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. "
        "https://support.google.com/mail/?p=NoSuchUser"
    )
    (_, content) = raw_parts(dsn([failed(diagnostic=reply)]))[1]
    assert status_blocks(content)[1]["diagnostic-code"] == "smtp; " + clean_diagnostic(reply)


def test_hostile_diagnostic_is_sanitised() -> None:
    hostile = (
        "550 no\r\nX-Injected: yes\r\n\r\nFinal-Recipient: rfc822; evil@x\n"
        "\rAction: delivered\x00\x1b[31m\x7f\u0085\u2028\u202e\ufeff\x0c\ttail"
    )
    raw = dsn([failed(diagnostic=hostile)])
    assert_wire_clean(raw)
    assert_no_defects(parse(raw))
    (_, content) = raw_parts(raw)[1]
    blocks = status_blocks(content)
    assert len(blocks) == 2  # nothing smuggled in as a block or a field
    value = blocks[1]["diagnostic-code"]
    assert value == (
        "smtp; 550 no X-Injected: yes Final-Recipient: rfc822; evil@x Action: delivered [31m tail"
    )
    assert blocks[1]["action"] == "failed"
    assert all(0x20 <= b < 0x7F or b in b"\r\n" for b in raw)


def test_non_ascii_diagnostic_is_ascii_in_classic_report() -> None:
    raw = dsn([failed(diagnostic="550 5.1.1 Benutzer unbekannt: müller")])
    message = parse(raw)
    (_, content) = raw_parts(raw)[1]
    assert status_blocks(content)[1]["diagnostic-code"].endswith("m?ller")
    # The human text keeps the reply as it came, quoted-printable: the report stays 7-bit.
    assert raw.isascii()
    assert "müller" in next(message.iter_parts()).get_content()


def test_long_diagnostic_is_capped_and_folded() -> None:
    words = " ".join(f"word{i}" for i in range(400))  # about 3000 characters
    raw = dsn(
        [failed(diagnostic="550 5.7.1 " + words), failed("x@example.com", diagnostic="5" * 2000)]
    )
    assert_wire_clean(raw)
    (_, content) = raw_parts(raw)[1]
    _, spaced, unspaced = status_blocks(content)
    for block in (spaced, unspaced):
        text = block["diagnostic-code"].removeprefix("smtp; ")
        assert len(text.encode()) <= DIAGNOSTIC_MAX
        assert text.endswith("[...]")
    # Folded at spaces to 78 where there are spaces; one long line where there are none.
    fields = re.findall(rb"^Diagnostic-Code:.*\r\n(?: .*\r\n)*", content, re.MULTILINE)
    assert len(fields) == 2
    spaced_lines = fields[0].split(b"\r\n")[:-1]
    assert len(spaced_lines) > 10 and all(len(line) <= 78 for line in spaced_lines)
    assert fields[1].split(b"\r\n")[1].startswith(b" " + b"5" * 100)


def test_long_utf8_diagnostic_capped_in_octets() -> None:
    raw = dsn([failed("ünal@example.com", diagnostic="550 " + "é" * 2000)])
    assert_wire_clean(raw)
    (_, content) = raw_parts(raw)[1]
    text = status_blocks(content)[1]["diagnostic-code"].removeprefix("smtp; ")
    assert len(text.encode()) <= DIAGNOSTIC_MAX


# -- The original's headers -----------------------------------------------------


def test_only_the_header_section_is_returned() -> None:
    raw = dsn([failed()])
    assert b"secret plan" not in raw
    head, content = raw_parts(raw)[2]
    assert b"Content-Transfer-Encoding: 7bit" in head
    assert content == HEADERS[:-2]  # the header section, not the blank line after it


def test_truncated_headers_and_lf_line_ends() -> None:
    section = original_header_section(b"From: a@example.org\nSubject: cut off\nX-Partial: ab")
    assert section == b"From: a@example.org\r\nSubject: cut off\r\nX-Partial: ab\r\n"
    assert original_header_section(b"Subject: x\n\nbody\n") == b"Subject: x\r\n"
    assert original_header_section(b"\r\nbody") == b""


def test_header_section_capped_at_64k() -> None:
    huge = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"y" * 100) for i in range(2000))
    section = original_header_section(b"Subject: big\r\n" + huge + b"\r\nbody")
    assert len(section) <= HEADERS_MAX
    assert section.startswith(b"Subject: big\r\n")
    assert section.endswith(b"\r\n")
    raw = dsn([failed()], original_headers=huge)
    assert_wire_clean(raw)
    assert len(raw_parts(raw)[2][1]) <= HEADERS_MAX


def test_overlong_and_nul_header_lines_made_safe() -> None:
    raw = dsn([failed()], original_headers=b"X-Long: " + b"z" * 5000 + b"\r\nX-Nul: a\x00b\r\n\r\n")
    assert_wire_clean(raw)
    assert b"\x00" not in raw
    assert b"X-Nul: ab\r\n" in raw


def test_8bit_headers_carried_unchanged_in_classic_report() -> None:
    headers = "Subject: Grüße aus Köln\r\nFrom: alice@example.org\r\n\r\n".encode()
    raw = dsn([failed()], original_headers=headers)
    assert_wire_clean(raw)
    message = parse(raw)
    assert_no_defects(message)
    parts = list(message.iter_parts())
    assert parts[1].get_content_type() == "message/delivery-status"
    assert parts[2].get_content_type() == "text/rfc822-headers"
    head, content = raw_parts(raw)[2]
    assert b"Content-Transfer-Encoding: 8bit" in head
    assert b"charset=utf-8" in head
    assert content == headers[:-2]
    # Everything outside the returned headers stays 7-bit.
    assert raw.replace(content, b"").isascii()
    text = " ".join(parts[0].get_content().split())
    assert '"Grüße aus Köln"' in text


def test_no_headers_no_third_part() -> None:
    message = parse(dsn([failed()], original_headers=b""))
    assert len(list(message.iter_parts())) == 2


# -- Delays, mixed reports, successes ------------------------------------------------


def test_delayed_report() -> None:
    raw = dsn([delayed()])
    message = parse(raw)
    assert message["Subject"] == "Delayed Mail (still being retried)"
    text = " ".join(next(message.iter_parts()).get_content().split())
    assert "has not been delivered yet" in text
    assert "keep trying until 10 January 2025, 10:26 UTC" in text
    (_, content) = raw_parts(raw)[1]
    assert status_blocks(content)[1]["will-retry-until"] == "Fri, 10 Jan 2025 10:26:40 +0000"


def test_failure_wins_over_delay_in_subject() -> None:
    message = parse(dsn([delayed(), failed()]))
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    text = next(message.iter_parts()).get_content()
    assert text.index("could not be delivered") < text.index("has not been delivered yet")


def test_will_retry_until_only_for_delayed() -> None:
    recipient = failed(will_retry_until=NOW + 3600)
    (_, content) = raw_parts(dsn([recipient]))[1]
    assert "will-retry-until" not in status_blocks(content)[1]


def test_expired_recipient_reads_as_given_up() -> None:
    recipient = RecipientStatus(
        "dave@example.net", "failed", expired_status(CONNECTION_FAILED), last_attempt=NOW
    )
    message = parse(dsn([recipient]))
    text = " ".join(next(message.iter_parts()).get_content().split())
    assert "We kept trying for 5 days and have now given up." in text
    assert message["Subject"] == "Undelivered Mail Returned to Sender"


def test_success_report() -> None:
    delivered = RecipientStatus("bob@example.com", "delivered", "2.0.0")
    relayed = RecipientStatus("eve@example.net", "relayed", "2.0.0")
    raw = dsn([delivered, relayed])
    assert parse(raw)["Subject"] == "Successful Mail Delivery Report"
    (_, content) = raw_parts(raw)[1]
    assert [b["action"] for b in status_blocks(content)[1:]] == ["delivered", "relayed"]


# -- SMTPUTF8 (RFC 6533) --------------------------------------------------------


def test_utf8_recipient_gives_global_report() -> None:
    recipient = failed(
        "用户@例子.广告", diagnostic="550 5.1.1 用户 unknown", remote_mta="mx.例子.广告"
    )
    raw = dsn([recipient], original_headers="Subject: 你好\r\n\r\nbody".encode())
    assert_wire_clean(raw)
    message = parse(raw)
    types = [p.get_content_type() for p in message.iter_parts()]
    assert types == ["text/plain", "message/global-delivery-status", "message/global-headers"]
    (head, content) = raw_parts(raw)[1]
    assert b"Content-Transfer-Encoding: 8bit" in head
    block = status_blocks(content)[1]
    assert block["final-recipient"] == "utf-8; 用户@例子.广告"
    assert block["diagnostic-code"] == "smtp; 550 5.1.1 用户 unknown"
    assert block["remote-mta"] == "dns; " + "mx.例子.广告".encode("idna").decode()  # A-labels
    assert "用户@例子.广告" in next(message.iter_parts()).get_content()


def test_utf8_sender_gives_global_report() -> None:
    message = parse(dsn([failed()], original_sender="élodie@exemple.fr"))
    assert message["To"] == "élodie@exemple.fr"
    parts = list(message.iter_parts())
    assert parts[1].get_content_type() == "message/global-delivery-status"


def test_ascii_only_report_is_classic_even_with_utf8_text() -> None:
    raw = dsn([failed()], original_headers=b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n")
    message = parse(raw)
    assert raw.isascii()
    assert [p.get_content_type() for p in message.iter_parts()][1] == "message/delivery-status"
    assert '"café"' in next(message.iter_parts()).get_content()


# -- Input checks ---------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["", "<>", "MAILER-DAEMON@example.org"])
def test_no_report_to_null_sender_or_daemon(sender: str) -> None:
    with pytest.raises(ValueError):
        dsn([failed()], original_sender=sender)


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("bounced", "5.1.1"),
        ("failed", "5.1"),
        ("failed", "2.0.0"),
        ("delayed", "5.0.0"),
        ("delivered", "4.0.0"),
        ("failed", "5.01.1"),
    ],
)
def test_invalid_action_or_status(action: str, status: str) -> None:
    with pytest.raises(ValueError):
        dsn([RecipientStatus("bob@example.com", action, status)])


def test_no_recipients() -> None:
    with pytest.raises(ValueError):
        dsn([])


# -- should_bounce, status codes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("", False),
        ("<>", False),
        (" <> ", False),
        ("MAILER-DAEMON@example.org", False),
        ("mailer-daemon@example.org", False),
        ("<Mailer-Daemon@example.org>", False),
        ('"MAILER-DAEMON"@example.org', False),
        ("MAILER-DAEMON", False),
        ("alice@example.org", True),
        ("<alice@example.org>", True),
        ("postmaster@example.org", True),
        ("mailer-daemon-fan@example.org", True),
        ("élodie@exemple.fr", True),
    ],
)
def test_should_bounce(sender: str, expected: bool) -> None:
    assert should_bounce(sender) is expected


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 <bob@example.com>: user unknown", "5.1.1"),
        (550, "550 5.1.1 <bob@example.com>: user unknown", "5.1.1"),
        (550, "550-5.7.1 first line\r\n550 5.7.1 second", "5.7.1"),
        (556, "5.1.10 Recipient address has null MX", NULL_MX),
        (452, "4.2.2 Mailbox full", "4.2.2"),
        (550, "550 4.1.1 class does not match", "5.0.0"),
        (450, "5.1.1 class does not match", "4.0.0"),
        (550, "User unknown", "5.0.0"),
        (421, "Service not available", "4.0.0"),
        (550, "5.1.1", "5.1.1"),
        (550, "5.01.1 leading zero", "5.0.0"),
        (550, "5.1.1000 too many digits", "5.0.0"),
        (550, "5.1.1x not followed by space", "5.0.0"),
        (550, "", "5.0.0"),
        (250, "250 2.1.5 Ok", "2.1.5"),
        (250, "250 Ok", "2.0.0"),
        (354, "End data with <CR><LF>.<CR><LF>", "5.5.0"),
        (600, "6.0.0 out of range", "5.5.0"),
        (199, "1.0.0 out of range", "5.5.0"),
    ],
)
def test_status_from_reply(code: int, text: str, expected: str) -> None:
    assert status_from_reply(code, text) == expected


def test_expired_status_keeps_the_actual_problem() -> None:
    assert expired_status(None) == DELIVERY_EXPIRED == "4.4.7"
    assert expired_status("4.4.1") == "4.4.1"
    assert expired_status("4.7.5") == "4.7.5"
    assert expired_status("5.1.1") == DELIVERY_EXPIRED  # not a transient condition
    assert expired_status("junk") == DELIVERY_EXPIRED


# -- Property: any remote reply --------------------------------------------------------

replies = st.one_of(
    st.text(max_size=3000),
    st.binary(max_size=3000).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.lists(
        st.sampled_from(["550", "-", " ", "5.1.1", "\r\n", "\n", "\r", "x" * 120, "é", "\x00"]),
        max_size=60,
    ).map("".join),
)


@settings(max_examples=200, deadline=None)
@given(replies, st.booleans(), st.sampled_from(["failed", "delayed"]))
def test_any_diagnostic_gives_a_clean_report(reply: str, utf8: bool, action: str) -> None:
    recipient = "ünal@example.com" if utf8 else "bob@example.com"
    status = "5.0.0" if action == "failed" else "4.0.0"
    raw = dsn([RecipientStatus(recipient, action, status, diagnostic=reply, will_retry_until=NOW)])
    assert_wire_clean(raw)
    message = parse(raw)
    assert_no_defects(message)
    assert len(list(message.iter_parts())) == 3
    _, block = status_blocks(raw_parts(raw)[1][1])
    assert block["action"] == action
    allowed = {"final-recipient", "action", "status", "diagnostic-code", "will-retry-until"}
    assert set(block) <= allowed
    assert len(block.get("diagnostic-code", "").encode()) <= DIAGNOSTIC_MAX + len("smtp; ")
    if not utf8:
        assert raw.isascii()
