"""The outbound queue end to end: submission, MX routing, TLS, retries,
bounces, MTA-STS, the smarthost; checked at real receiving MTAs."""

from __future__ import annotations

import email
import email.policy
import smtplib
import subprocess
import time
from typing import Any

import pytest

from conftest import PASSWORD

from .queue_env import GarbageServer, Outbound, Sink, wait_for

MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: carol@remote.test\r\n"
    b"Subject: outbound\r\n\r\nHello from pimail.\r\n"
)


def report_of(path: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(path, policy=email.policy.default)  # type: ignore[return-value]


def test_delivers_over_starttls_with_completed_headers(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink("127.0.0.2", tls_context=outbound.ca.server_context("mx1.remote.test"))
    outbound.start_sender()
    reply = outbound.submit(["carol@remote.test"], MESSAGE)
    assert "queued as" in reply
    [received] = wait_for(lambda: sink.messages, what="delivery")
    assert received.mail_from == "alice@example.org"
    assert received.rcpt_tos == ["carol@remote.test"]
    assert received.tls  # STARTTLS was offered, so it was used
    head = received.content.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head  # RFC 6409 8.2/8.3
    assert not head.startswith(b"Return-Path")
    assert b"DKIM-Signature:" in head
    wait_for(lambda: outbound.queue_rows() == 0, what="an empty queue")


def test_temporary_failure_is_retried_then_delivered_once(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink(
        "127.0.0.2", data_reply=lambda n: "451 4.3.0 try again" if n <= 2 else None
    )
    sender = outbound.start_sender(retry_min=1.0, retry_max=1.0)
    outbound.submit(["carol@remote.test"], MESSAGE)
    wait_for(lambda: sink.state.attempts >= 1, what="the first attempt")
    listing = sender.cli("queue", "list").stdout
    assert "carol@remote.test" in listing and "451 4.3.0 try again" in listing
    wait_for(lambda: sink.messages, what="delivery after retries")
    assert sink.state.attempts == 3 and len(sink.messages) == 1
    wait_for(lambda: outbound.queue_rows() == 0, what="an empty queue")
    assert "-- 0 messages" in sender.cli("queue", "list").stdout


def test_permanent_failure_bounces_to_the_sender(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink(
        "127.0.0.2",
        rcpt_reply=lambda a: "550 5.1.1 <nobody@remote.test>: no such user"
        if a.startswith("nobody") else None,
    )  # fmt: skip
    sender = outbound.start_sender()
    outbound.submit(["carol@remote.test", "nobody@remote.test"], MESSAGE)
    [received] = wait_for(lambda: sink.messages, what="delivery to carol")
    assert received.rcpt_tos == ["carol@remote.test"]
    [bounce] = wait_for(lambda: sender.messages("alice@example.org"), what="the bounce")
    report = report_of(bounce.read_bytes())
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"].addresses[0].username == "MAILER-DAEMON"
    status = bounce.read_bytes().decode()
    assert "Final-Recipient: rfc822; nobody@remote.test" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Remote-MTA: dns; mx1.remote.test" in status
    assert "no such user" in status and "carol@remote.test\r\nAction" not in status
    assert "Hello from pimail" not in status  # headers only, never the body
    assert b"Return-Path: <>" in bounce.read_bytes()[:100]
    wait_for(lambda: outbound.queue_rows() == 0, what="an empty queue")


@pytest.mark.parametrize(
    ("domain", "status"), [("nullmx.test", "5.1.10"), ("nowhere.test", "5.1.2")]
)
def test_domains_that_take_no_mail_bounce_at_once(
    outbound: Outbound, domain: str, status: str
) -> None:
    outbound.zone.set("nullmx.test", "MX", "0 .")  # RFC 7505
    sender = outbound.start_sender()
    outbound.submit([f"someone@{domain}"], MESSAGE)
    [bounce] = wait_for(lambda: sender.messages("alice@example.org"), what="the bounce")
    text = bounce.read_bytes().decode()
    assert f"Status: {status}" in text and f"someone@{domain}" in text
    wait_for(lambda: outbound.queue_rows() == 0, what="an empty queue")


def test_mx_preference_fallback_and_implicit_mx(outbound: Outbound) -> None:
    # The preferred MX refuses connections (nothing listens on 127.0.0.3).
    outbound.mx("remote.test", (5, "mx0.remote.test", "127.0.0.3"),
                (10, "mx1.remote.test", "127.0.0.2"))  # fmt: skip
    sink = outbound.sink("127.0.0.2")
    # A domain without MX: its own A record is the host (RFC 5321 5.1).
    outbound.zone.set("bare.test", "A", "127.0.0.4")
    bare = outbound.sink("127.0.0.4")
    outbound.start_sender()
    outbound.submit(["carol@remote.test", "dave@bare.test"], MESSAGE)
    wait_for(lambda: sink.messages and bare.messages, what="both deliveries")
    assert sink.messages[0].rcpt_tos == ["carol@remote.test"]
    assert bare.messages[0].rcpt_tos == ["dave@bare.test"]


def test_no_starttls_is_fine_without_mta_sts(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink("127.0.0.2")  # no STARTTLS offered
    outbound.start_sender()
    outbound.submit(["carol@remote.test"], MESSAGE)
    [received] = wait_for(lambda: sink.messages, what="delivery")
    assert not received.tls


ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx1.secure.test\r\nmax_age: 86400\r\n"


def test_mta_sts_enforce_refuses_an_mx_without_tls(outbound: Outbound) -> None:
    outbound.mx("secure.test", (10, "mx1.secure.test", "127.0.0.2"))
    outbound.mta_sts("secure.test", "127.0.0.9", ENFORCE)
    plain = outbound.sink("127.0.0.2")  # no STARTTLS: enforce must not deliver
    sender = outbound.start_sender(retry_min=60.0)
    outbound.submit(["erin@secure.test"], MESSAGE)
    wait_for(lambda: "STARTTLS" in sender.cli("queue", "list").stdout, what="a deferral")
    assert plain.messages == [] and plain.state.attempts == 0
    assert "deferred" in sender.cli("queue", "list").stdout


def test_mta_sts_enforce_delivers_over_verified_tls(outbound: Outbound) -> None:
    outbound.mx("secure.test", (5, "evil.other.test", "127.0.0.3"),
                (10, "mx1.secure.test", "127.0.0.2"))  # fmt: skip
    policy = outbound.mta_sts("secure.test", "127.0.0.9", ENFORCE)
    # The MX outside the policy is never used, even though it is preferred.
    evil = outbound.sink("127.0.0.3", tls_context=outbound.ca.server_context("evil.other.test"))
    good = outbound.sink("127.0.0.2", tls_context=outbound.ca.server_context("mx1.secure.test"))
    outbound.start_sender()
    outbound.submit(["erin@secure.test"], MESSAGE)
    [received] = wait_for(lambda: good.messages, what="delivery")
    assert received.tls and evil.state.sessions == 0 and policy.requests == 1


def test_mta_sts_enforce_refuses_a_certificate_for_another_name(outbound: Outbound) -> None:
    outbound.mx("secure.test", (10, "mx1.secure.test", "127.0.0.2"))
    outbound.mta_sts("secure.test", "127.0.0.9", ENFORCE)
    wrong = outbound.sink("127.0.0.2", tls_context=outbound.ca.server_context("mx9.other.test"))
    sender = outbound.start_sender(retry_min=60.0)
    outbound.submit(["erin@secure.test"], MESSAGE)
    wait_for(lambda: "TLS" in sender.cli("queue", "list").stdout, what="a deferral")
    assert wrong.messages == []


def test_one_connection_carries_many_messages_within_limits(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink("127.0.0.2", delay=0.02)
    outbound.zone.servfail.add("remote.test")  # DNS fails: everything waits
    sender = outbound.start_sender(max_per_destination=2, retry_min=600.0)
    for i in range(20):
        outbound.submit(["carol@remote.test"], MESSAGE.replace(b"outbound", b"n%d" % i))
    wait_for(lambda: sender.cli("queue", "list").stdout.count("deferred") == 20, what="20 waiting")
    outbound.zone.servfail.clear()
    sender.cli("queue", "retry")
    wait_for(lambda: len(sink.messages) == 20, what="20 deliveries")
    assert sink.state.sessions <= 4  # 2 connections at most at a time, each reused
    assert sink.state.max_active <= 2
    subjects = sorted(m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages)
    assert subjects == sorted(b"n%d" % i for i in range(20))


def test_smarthost_with_implicit_tls_and_login(outbound: Outbound) -> None:
    relay = Sink(
        "127.0.0.5", outbound.port,
        implicit_tls=outbound.ca.server_context("relay.isp.test"),
        credentials=("customer", "s3cret relay pass"),
    )  # fmt: skip
    outbound.sinks.append(relay)
    outbound.zone.set("relay.isp.test", "A", "127.0.0.5")
    # No DNS at all for the recipient's domain: the relay does the routing.
    sender = outbound.start_sender(
        relay_host="relay.isp.test", relay_port=outbound.port, relay_security="tls",
        relay_username="customer", relay_password="s3cret relay pass",
    )  # fmt: skip
    outbound.submit(["frank@elsewhere.test"], MESSAGE)
    [received] = wait_for(lambda: relay.messages, what="delivery to the relay")
    assert received.tls and received.auth == "customer"
    assert received.rcpt_tos == ["frank@elsewhere.test"]
    assert "s3cret" not in sender.log.read_text()
    shown = sender.cli("config", "show").stdout
    assert "s3cret" not in shown and 'outbound.relay_password = "********"' in shown


def test_smarthost_refusing_our_login_defers(outbound: Outbound) -> None:
    relay = Sink(
        "127.0.0.5", outbound.port,
        implicit_tls=outbound.ca.server_context("relay.isp.test"),
        credentials=("customer", "right"),
    )  # fmt: skip
    outbound.sinks.append(relay)
    outbound.zone.set("relay.isp.test", "A", "127.0.0.5")
    sender = outbound.start_sender(
        relay_host="relay.isp.test", relay_port=outbound.port, relay_security="tls",
        relay_username="customer", relay_password="wrong", retry_min=600.0,
    )  # fmt: skip
    outbound.submit(["frank@elsewhere.test"], MESSAGE)
    wait_for(lambda: "relay refused our login" in sender.cli("queue", "list").stdout,
             what="a deferral")  # fmt: skip
    assert relay.messages == []
    assert "wrong" not in sender.log.read_text().replace("wrong-password", "")


def test_delay_notice_then_give_up(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    outbound.sink("127.0.0.2", data_reply=lambda n: "452 4.2.2 mailbox full")
    sender = outbound.start_sender(retry_min=0.5, retry_max=0.5, delay_notice=1.0, lifetime=4.0)
    outbound.submit(["carol@remote.test"], MESSAGE)
    notices = wait_for(
        lambda: len(sender.messages("alice@example.org")) >= 2
        and sender.messages("alice@example.org"),
        timeout=30, what="two notices",
    )  # fmt: skip
    delayed, failed = (p.read_bytes().decode() for p in notices)
    assert "Action: delayed" in delayed and "Will-Retry-Until:" in delayed
    assert "Action: failed" in failed and "Status: 4.2.2" in failed and "mailbox full" in failed
    wait_for(lambda: outbound.queue_rows() == 0, what="an empty queue")
    time.sleep(1.0)
    assert len(sender.messages("alice@example.org")) == 2  # one delay notice, one failure


def test_queue_show_and_delete(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    outbound.sink("127.0.0.2", data_reply=lambda n: "421 4.3.2 busy")
    sender = outbound.start_sender(retry_min=600.0)
    reply = outbound.submit(["carol@remote.test"], MESSAGE)
    queue_id = reply.rsplit(" ", 1)[1]
    wait_for(lambda: "421" in sender.cli("queue", "show", queue_id).stdout, what="an attempt")
    shown = sender.cli("queue", "show", queue_id).stdout
    assert "sender: <alice@example.org>" in shown and "Subject: outbound" in shown
    assert "dkim: signed" in shown
    assert sender.cli("queue", "delete", queue_id).returncode == 0
    assert outbound.queue_rows() == 0
    assert not (sender.data_dir / "queue" / "messages" / queue_id).exists()
    assert sender.cli("queue", "show", queue_id, check=False).returncode == 1
    # An id is looked up, never used as a path.
    assert sender.cli("queue", "delete", "../pimail.db", check=False).returncode == 1
    assert (sender.data_dir / "pimail.db").exists()
    assert sender.messages("alice@example.org") == []  # deleting sends no bounce


def test_submission_limits(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    outbound.sink("127.0.0.2")
    sender = outbound.start_sender()
    sender.stop()
    sender.cli("config", "set", "submission.max_messages_per_hour", "3")
    sender.cli("config", "set", "submission.max_recipients", "2")
    sender.start()
    with smtplib.SMTP("127.0.0.1", sender.submission_port, timeout=30) as s:
        s.starttls(context=sender.client_tls())
        s.login("alice@example.org", PASSWORD)
        s.mail("alice@example.org")
        assert s.rcpt("a@remote.test")[0] == 250 and s.rcpt("b@remote.test")[0] == 250
        code, text = s.rcpt("c@remote.test")
        assert code == 452 and text.startswith(b"4.5.3")
        s.rset()
        for _ in range(3):
            s.sendmail("alice@example.org", ["carol@remote.test"], MESSAGE)
        code, text = s.mail("alice@example.org")
        assert code == 450 and text.startswith(b"4.7.1")
    # The limit is the account's, not the connection's; bob is not limited by alice.
    outbound.submit(["carol@remote.test"], MESSAGE.replace(b"Alice <alice", b"Bob <bob"),
                    sender="bob@example.org")  # fmt: skip


def test_relay_without_auth_is_refused_on_587_and_25(outbound: Outbound) -> None:
    sender = outbound.start_sender()
    with smtplib.SMTP("127.0.0.1", sender.submission_port, timeout=30) as s:
        s.starttls(context=sender.client_tls())
        s.ehlo()
        code, text = s.mail("alice@example.org")
        assert code == 530 and text.startswith(b"5.7.0")
    with smtplib.SMTP("127.0.0.1", sender.smtp_port, timeout=30) as s:
        s.ehlo()
        s.mail("alice@example.org")
        code, _ = s.rcpt("carol@remote.test")
        assert code == 554
    assert outbound.queue_rows() == 0


def test_swaks_tls_auth_to_a_remote_recipient(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink("127.0.0.2")
    sender = outbound.start_sender()
    done = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{sender.submission_port}", "--tls",
         "--auth", "PLAIN", "--auth-user", "alice@example.org", "--auth-password", PASSWORD,
         "--from", "alice@example.org", "--to", "carol@remote.test",
         "--header", "From: alice@example.org", "--body", "sent by swaks"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [received] = wait_for(lambda: sink.messages, what="delivery")
    assert b"sent by swaks" in received.content


def publish(outbound: Outbound, zone_text: str) -> int:
    """Put `pimail dns` output into the DNS server, as an administrator would."""
    added = 0
    for line in zone_text.splitlines():
        if not line or line.startswith(";") or "<" in line:
            continue
        parts = line.split("\t")
        if len(parts) == 5 and parts[2] == "IN":
            outbound.zone.add(parts[0], parts[3], parts[4])
            added += 1
    return added


def test_a_second_pimail_receives_and_both_dkim_signatures_verify(
    outbound: Outbound, make_server: Any
) -> None:
    import dkim
    import dns.resolver

    receiver = make_server("receiver", also_listen=[f"127.0.0.6:{outbound.port}"])
    receiver.cli("domain", "add", "remote.test")
    receiver.add_user("carol@remote.test")
    receiver.start()
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.6"))
    sender = outbound.start_sender()
    assert publish(outbound, sender.cli("dns", "example.org").stdout) >= 8
    body = "Grüße aus dem Garten.\r\n".encode()
    outbound.submit(["carol@remote.test"], MESSAGE.replace(b"Hello from pimail.\r\n", body))
    [path] = wait_for(lambda: receiver.messages("carol@remote.test"), what="delivery")
    delivered = path.read_bytes()
    assert delivered.startswith(b"Return-Path: <alice@example.org>\r\nReceived: from mx.test")
    assert delivered.count(b"Return-Path:") == 1  # the sender's own was not sent

    resolver = dns.resolver.Resolver(configure=False)
    host, port = outbound.zone.address.split(":")
    resolver.nameservers, resolver.port = [host], int(port)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    # Verify what the receiver stored, against the DNS the records were published in.
    message = delivered[delivered.index(b"DKIM-Signature:") :]  # the receiver's trace off
    verifier = dkim.DKIM(message)
    signatures = [v for k, v in dkim.DKIM(message).headers if k.lower() == b"dkim-signature"]
    algorithms = sorted(b"ed25519" if b"a=ed25519" in s else b"rsa" for s in signatures)
    assert algorithms == [b"ed25519", b"rsa"]
    assert all(verifier.verify(idx=i, dnsfunc=dnsfunc) for i in range(len(signatures)))
    tampered = message.replace("Grüße".encode(), b"Hallo")
    try:
        tampered_ok = dkim.DKIM(tampered).verify(idx=0, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        tampered_ok = False
    assert not tampered_ok


def send_inbound(port: int, sender: str, recipient: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail(sender, [recipient], message)


FORWARDED = b"From: someone@outside.test\r\nSubject: for the alias\r\n\r\nforward me\r\n"


def test_alias_forwards_to_another_domain_with_the_original_sender(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink("127.0.0.2")
    sender = outbound.start_sender()
    sender.cli("alias", "add", "fwd@example.org", "carol@remote.test", "bob@example.org")
    send_inbound(sender.smtp_port, "someone@outside.test", "fwd@example.org", FORWARDED)
    [received] = wait_for(lambda: sink.messages, what="the forwarded copy")
    assert received.mail_from == "someone@outside.test"
    assert received.rcpt_tos == ["carol@remote.test"]
    assert b"forward me" in received.content
    assert len(sender.messages("bob@example.org")) == 1  # and the local target has its copy


def test_bounce_to_an_outside_sender_goes_with_a_null_sender_and_is_never_bounced(
    outbound: Outbound,
) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    outbound.sink("127.0.0.2", rcpt_reply=lambda a: "550 5.1.1 no such user")
    outbound.mx("outside.test", (10, "mx.outside.test", "127.0.0.3"))
    outside = outbound.sink("127.0.0.3")
    outbound.mx("gone.test", (10, "mx.gone.test", "127.0.0.4"))
    gone = outbound.sink("127.0.0.4", rcpt_reply=lambda a: "550 5.1.1 sender long gone")
    sender = outbound.start_sender()
    sender.cli("alias", "add", "fwd@example.org", "carol@remote.test")
    send_inbound(sender.smtp_port, "someone@outside.test", "fwd@example.org", FORWARDED)
    [dsn] = wait_for(lambda: outside.messages, what="the bounce at the outside sender's MX")
    assert dsn.mail_from in ("", "<>") and dsn.rcpt_tos == ["someone@outside.test"]
    assert b"multipart/report" in dsn.content and b"Status: 5.1.1" in dsn.content
    # A bounce that bounces is dropped: no bounce to a bounce (RFC 5321 6.1).
    send_inbound(sender.smtp_port, "ghost@gone.test", "fwd@example.org", FORWARDED)
    wait_for(lambda: "no notice" in sender.log.read_text(), what="the dropped bounce")
    wait_for(lambda: outbound.queue_rows() == 0, what="an empty queue")
    assert gone.messages == [] and len(outside.messages) == 1


def test_a_mail_loop_is_refused(outbound: Outbound) -> None:
    sender = outbound.start_sender()
    hops = b"".join(b"Received: from hop%d by hop%d\r\n" % (i, i) for i in range(60))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send_inbound(sender.smtp_port, "someone@outside.test", "bob@example.org",
                     hops + FORWARDED)  # fmt: skip
    assert refused.value.smtp_code == 554


def test_pimail_serves_its_mta_sts_policy_and_another_pimail_honours_it(
    outbound: Outbound, make_server: Any
) -> None:
    import sqlite3

    receiver = make_server(
        "receiver", {"web": {"listen_https": [f"127.0.0.7:{outbound.mta_sts_port}"]}},
        also_listen=[f"127.0.0.7:{outbound.port}"], hostname="mx.remote.test",
    )  # fmt: skip
    receiver.cli("domain", "add", "remote.test")
    receiver.add_user("carol@remote.test")
    receiver.start()
    assert publish(outbound, receiver.cli("dns", "remote.test").stdout) >= 8
    outbound.zone.set("mx.remote.test", "A", "127.0.0.7")
    ca_file = receiver.data_dir / "tls" / "ca" / "ca.pem"
    sender = outbound.start_sender(ca_file=str(ca_file))
    outbound.submit(["carol@remote.test"], MESSAGE)
    wait_for(lambda: receiver.messages("carol@remote.test"), what="delivery")
    con = sqlite3.connect(sender.data_dir / "queue" / "queue.db")
    [(mode, mx)] = con.execute("SELECT mode, mx FROM mta_sts WHERE domain = 'remote.test'")
    con.close()
    # The internal CA is not public: pimail announces testing, not enforce.
    assert mode == "testing" and "mx.remote.test" in mx


def test_a_receiver_hanging_up_after_data_means_a_retry(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink("127.0.0.2", data_reply=lambda n: "DROP" if n == 1 else None)
    outbound.start_sender(retry_min=0.5, retry_max=0.5)
    outbound.submit(["carol@remote.test"], MESSAGE)
    wait_for(lambda: sink.messages, what="delivery on the second attempt")
    assert sink.state.attempts == 2
    wait_for(lambda: outbound.queue_rows() == 0, what="an empty queue")


@pytest.mark.parametrize(
    "greeting",
    [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"554 5.7.1 go away\r\n", b"\x00" * 5000 + b"\r\n",
     b"220-" + b"x" * 100000 + b"\r\n"],
)  # fmt: skip
def test_a_hostile_or_broken_mx_is_skipped_for_the_next(
    outbound: Outbound, greeting: bytes
) -> None:
    outbound.mx("remote.test", (5, "mx0.remote.test", "127.0.0.3"),
                (10, "mx1.remote.test", "127.0.0.2"))  # fmt: skip
    garbage = GarbageServer("127.0.0.3", outbound.port, greeting)
    try:
        sink = outbound.sink("127.0.0.2")
        sender = outbound.start_sender()
        outbound.submit(["carol@remote.test"], MESSAGE)
        wait_for(lambda: sink.messages, what="delivery at the second MX")
        assert garbage.connections >= 1
        assert "Traceback" not in sender.log.read_text()
    finally:
        garbage.stop()


def test_a_message_soon_after_another_reuses_the_connection(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink("127.0.0.2")
    outbound.start_sender()
    outbound.submit(["carol@remote.test"], MESSAGE)
    wait_for(lambda: len(sink.messages) == 1, what="the first delivery")
    time.sleep(0.3)
    outbound.submit(["carol@remote.test"], MESSAGE)
    wait_for(lambda: len(sink.messages) == 2, what="the second delivery")
    assert sink.state.sessions == 1 and sink.messages[0].session == sink.messages[1].session
