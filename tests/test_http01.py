"""Port 443's answers before the web interface (sans I/O): MTA-STS policies."""

from __future__ import annotations

from pimail.web.http01 import respond_https


def policy(domain: str) -> str | None:
    return "version: STSv1\r\nmode: testing\r\n" if domain == "example.org" else None


def test_policy_for_a_local_domain() -> None:
    head = b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: MTA-STS.example.org.\r\n\r\n"
    out = respond_https(head, policy)
    assert out.startswith(b"HTTP/1.1 200 ") and b"Content-Type: text/plain" in out
    assert out.endswith(b"mode: testing\r\n")


def test_head_has_no_body_and_unknown_domains_get_404() -> None:
    head = b"HEAD /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.org\r\n\r\n"
    assert respond_https(head, policy).endswith(b"\r\n\r\n")
    other = b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.other.test\r\n\r\n"
    assert respond_https(other, policy).startswith(b"HTTP/1.1 404 ")


def test_garbage_and_other_paths() -> None:
    assert respond_https(b"\xff\xfe garbage\r\n\r\n", policy).startswith(b"HTTP/1.1 400 ")
    assert respond_https(b"GET\r\n\r\n", policy).startswith(b"HTTP/1.1 400 ")
    head = b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: example.org\r\n\r\n"
    assert respond_https(head, policy).startswith(b"HTTP/1.1 503 ")
