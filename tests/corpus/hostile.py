"""A hostile MIME set, made in code: messages that break MIME, RFC 5322 and
RFC 2047 in the ways real mail (and attackers) do. Every path of the server
must take each of them without a crash, a traceback or a wrong answer.

`messages()` returns (name, octets) pairs, CRLF line ends unless the case is
about line ends. Each message carries a `Subject:` with a searchable word
(`hostileNN`) where it has headers at all, so tests can find it again.
"""

from __future__ import annotations

import base64

CRLF = b"\r\n"


def _msg(
    word: str, headers: bytes = b"", body: bytes = b"Hello.\r\n", subject: bytes = b""
) -> bytes:
    subj = subject or word.encode()
    return (
        b"From: Hostile Sender <hostile@remote.test>\r\n"
        b"To: someone@example.org\r\n"
        b"Subject: " + subj + b"\r\n"
        b"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\n"
        b"Message-ID: <" + word.encode() + b"@remote.test>\r\n" + headers + CRLF + body
    )


def _multipart(
    word: str,
    boundary: bytes,
    parts: list[bytes],
    subtype: bytes = b"mixed",
    headers: bytes = b"",
    close: bool = True,
) -> bytes:
    body = b"preamble\r\n"
    for part in parts:
        body += b"--" + boundary + CRLF + part + CRLF
    if close:
        body += b"--" + boundary + b"--\r\nepilogue\r\n"
    ct = b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\r\n'
    return _msg(word, b"MIME-Version: 1.0\r\n" + ct + headers, body)


def _text(text: bytes, ctype: bytes = b"text/plain; charset=us-ascii", cte: bytes = b"") -> bytes:
    head = b"Content-Type: " + ctype + CRLF
    if cte:
        head += b"Content-Transfer-Encoding: " + cte + CRLF
    return head + CRLF + text


def _nested_multipart(depth: int) -> bytes:
    inner = _text(b"the innermost part\r\n")
    for level in range(depth, 0, -1):
        b = b"b%d" % level
        inner = (
            b'Content-Type: multipart/mixed; boundary="'
            + b
            + b'"\r\n\r\n--'
            + b
            + CRLF
            + inner
            + b"\r\n--"
            + b
            + b"--\r\n"
        )
    return inner


def _nested_rfc822(depth: int) -> bytes:
    inner = b"Subject: level 0\r\nFrom: a@remote.test\r\n\r\nthe innermost message\r\n"
    for level in range(1, depth + 1):
        inner = (
            b"Subject: level %d\r\nFrom: a@remote.test\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: message/rfc822\r\n\r\n" % level + inner
        )
    return inner


def messages() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []

    def add(name: str, data: bytes) -> None:
        out.append((f"hostile{len(out):02d}-{name}", data))

    def word() -> str:
        return f"hostile{len(out):02d}"

    # -- boundaries -------------------------------------------------------------------
    add(
        "no-boundary-param",
        _msg(
            word(),
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n",
            b"--x\r\nContent-Type: text/plain\r\n\r\nlost\r\n--x--\r\n",
        ),
    )
    add(
        "boundary-never-used",
        _msg(
            word(),
            b'Content-Type: multipart/mixed; boundary="zzz"\r\n',
            b"no delimiter here at all\r\n",
        ),
    )
    add(
        "no-close-delimiter",
        _multipart(word(), b"open", [_text(b"one\r\n"), _text(b"two")], close=False),
    )
    add(
        "duplicate-boundary-param",
        _msg(
            word(),
            b'Content-Type: multipart/mixed; boundary="a"; boundary="b"\r\n',
            b"--a\r\n\r\nA\r\n--b\r\n\r\nB\r\n--b--\r\n--a--\r\n",
        ),
    )
    add(
        "nested-same-boundary",
        _multipart(
            word(),
            b"same",
            [
                b'Content-Type: multipart/alternative; boundary="same"\r\n\r\n'
                b"--same\r\n\r\ninner\r\n--same--\r\n",
                _text(b"after"),
            ],
        ),
    )
    add(
        "empty-boundary",
        _msg(word(), b'Content-Type: multipart/mixed; boundary=""\r\n', b"--\r\n\r\nx\r\n----\r\n"),
    )
    add("boundary-71-chars", _multipart(word(), b"B" * 71, [_text(b"long boundary")]))
    add(
        "boundary-with-spaces-and-quotes",
        _msg(
            word(),
            b'Content-Type: multipart/mixed; boundary="a b \\"c\\" "\r\n',
            b'--a b "c" \r\n\r\nx\r\n--a b "c" --\r\n',
        ),
    )
    add(
        "zero-parts", _msg(word(), b'Content-Type: multipart/mixed; boundary="n"\r\n', b"--n--\r\n")
    )
    add(
        "multipart-in-single-header-line",
        _msg(word(), b"Content-Type: multipart/mixed; boundary=x\r\n", b"--x--"),
    )

    # -- 8-bit raw octets in every header field ------------------------------------------
    latin = "Grüße, Ærø".encode("latin-1")
    utf8 = "Grüße, 日本語 ✉".encode()
    for label, raw in (("latin1", latin), ("utf8", utf8), ("invalid", b"\xff\xfe\xc3(\xa0\xa1")):
        add(f"8bit-subject-{label}", _msg(word(), subject=word().encode() + b" " + raw))
        add(
            f"8bit-from-to-{label}",
            (
                b"From: " + raw + b" <" + raw + b"@remote.test>\r\n"
                b"To: " + raw + b" <someone@example.org>, " + raw + b"@ex\xe4mple.org\r\n"
                b'Cc: "' + raw + b'" <cc@remote.test>\r\n'
                b"Subject: " + word().encode() + b"\r\nMessage-ID: <" + raw + b"@remote.test>\r\n"
                b"In-Reply-To: <"
                + raw
                + b">\r\nDate: Mon, 07 Dec 2026 "
                + raw
                + b"\r\n\r\nbody\r\n"
            ),
        )
        add(
            f"8bit-params-{label}",
            _multipart(
                word(),
                b"p8",
                [
                    b'Content-Type: text/plain; charset="' + raw + b'"; name="' + raw + b'.txt"\r\n'
                    b'Content-Disposition: attachment; filename="' + raw + b'.txt"\r\n'
                    b"Content-Description: " + raw + b"\r\nContent-ID: <" + raw + b">\r\n"
                    b"Content-Language: " + raw + b"\r\n\r\ncontent\r\n",
                    b"Content-Type: application/octet-stream; name=" + raw + b"\r\n"
                    b"Content-Disposition: attachment; filename*=UTF-8''" + raw + b"\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n",
                ],
            ),
        )

    # -- charsets -------------------------------------------------------------------------
    add(
        "unknown-charset",
        _msg(word(), b"Content-Type: text/plain; charset=x-no-such-charset\r\n", b"caf\xe9\r\n"),
    )
    add(
        "wrong-charset",
        _msg(
            word(),
            b"Content-Type: text/plain; charset=us-ascii\r\n",
            "日本語のテキスト\r\n".encode(),
        ),
    )
    add(
        "utf7-and-utf16-charset",
        _multipart(
            word(),
            b"cs",
            [
                _text("hé".encode("utf-16"), b"text/plain; charset=utf-16", b"binary"),
                _text(b"+AOk-", b"text/html; charset=utf-7"),
                _text(b"x", b'text/plain; charset=""'),
            ],
        ),
    )
    add(
        "charset-in-2047-unknown",
        _msg(word(), subject=word().encode() + b" =?x-bogus?Q?caf=E9?= =?utf-8?B?w6k=?="),
    )

    # -- NUL octets -----------------------------------------------------------------------
    add(
        "nul-in-headers",
        _msg(
            word(),
            b"X-Nul: a\x00b\r\nComments: \x00\r\n",
            subject=word().encode() + b" nul\x00here",
        ),
    )
    add(
        "nul-in-body", _msg(word(), b"Content-Type: text/plain\r\n", b"before\x00after\r\n\x00\r\n")
    )
    add(
        "nul-in-binary-part",
        _multipart(
            word(),
            b"nb",
            [
                _text(b"a\x00b\x00c\r\n", b"application/octet-stream", b"binary"),
                _text(b"x\x00y", b"text/plain", b"8bit"),
            ],
        ),
    )

    # -- many parts, deep nesting -----------------------------------------------------------
    add(
        "10000-parts",
        _multipart(
            word(), b"many", [b"Content-Type: text/plain\r\n\r\npart %d" % i for i in range(10_000)]
        ),
    )
    add(
        "nesting-200-multipart",
        _msg(
            word(),
            b"MIME-Version: 1.0\r\n" + _nested_multipart(200).split(b"\r\n\r\n", 1)[0] + CRLF,
            _nested_multipart(200).split(b"\r\n\r\n", 1)[1],
        ),
    )
    rfc822 = _nested_rfc822(60)
    add(
        "rfc822-60-deep",
        _msg(word(), b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n", rfc822),
    )
    add(
        "rfc822-in-multipart-deep",
        _multipart(
            word(),
            b"r",
            [b"Content-Type: message/rfc822\r\n\r\n" + _nested_rfc822(20), _text(b"after")],
        ),
    )
    add("rfc822-empty", _multipart(word(), b"re", [b"Content-Type: message/rfc822\r\n\r\n"]))
    add(
        "rfc822-base64-encoded",
        _multipart(
            word(),
            b"rb",
            [
                b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + base64.encodebytes(b"Subject: inner\r\n\r\nhi\r\n").replace(b"\n", b"\r\n")
            ],
        ),
    )

    # -- transfer encodings -------------------------------------------------------------------
    add(
        "bad-base64",
        _multipart(
            word(),
            b"b64",
            [
                _text(b"!!!not base64 at all***\r\n", b"application/octet-stream", b"base64"),
                _text(b"QUJD\r\nRA\r\n", b"application/octet-stream", b"base64"),  # bad padding
                _text(b"QUJD====\r\nQUJD\r\n", b"application/octet-stream", b"base64"),
                _text(b"QU\x00JD\xff\r\n", b"application/octet-stream", b"base64"),
            ],
        ),
    )
    add(
        "bad-qp",
        _multipart(
            word(),
            b"qp",
            [
                _text(b"a=ZZb=\r\nc=4\r\n= \r\n=3d=3D=\r\n", b"text/plain", b"quoted-printable"),
                _text(b"trailing   \r\nsoft=\r\nbreak=", b"text/plain", b"quoted-printable"),
                _text(b"caf=C3=A9 =E9t=E9\r\n", b"text/plain; charset=utf-8", b"quoted-printable"),
            ],
        ),
    )
    add(
        "unknown-cte",
        _multipart(
            word(),
            b"uc",
            [
                _text(b"begin 644 x\r\n", b"application/octet-stream", b"x-uuencode"),
                _text(b"zzz", b"text/plain", b"no-such-encoding"),
            ],
        ),
    )
    add(
        "cte-on-multipart",
        _msg(
            word(),
            b'Content-Type: multipart/mixed; boundary="c"\r\nContent-Transfer-Encoding: base64\r\n',
            b"--c\r\n\r\nx\r\n--c--\r\n",
        ),
    )

    # -- lines and shapes -----------------------------------------------------------------------
    add("1mb-single-line", _msg(word(), body=b"x" * (1024 * 1024)))
    add("1mb-line-in-part", _multipart(word(), b"long", [_text(b"y" * (1024 * 1024))]))
    add("headers-without-body", _msg(word()).split(b"\r\n\r\n")[0] + CRLF)
    add("headers-without-body-no-crlf", _msg(word()).split(b"\r\n\r\n")[0])
    add("body-without-headers", b"\r\njust a body, no header at all " + word().encode() + b"\r\n")
    add(
        "no-header-separator", b"this is not a header line " + word().encode() + b"\r\nnor this\r\n"
    )
    add("cr-only", _msg(word(), body=b"line one\r\nline two\r\n").replace(CRLF, b"\r"))
    add("lf-only", _msg(word(), body=b"line one\r\nline two\r\n").replace(CRLF, b"\n"))
    add("mixed-line-ends", _msg(word(), body=b"a\rb\nc\r\nd\n\re"))
    add("empty-message", b"")
    add("only-crlf", CRLF)

    # -- headers ---------------------------------------------------------------------------------
    add(
        "malformed-2047",
        _msg(
            word(),
            b"From: =?utf-8?B?!!!?= <a@remote.test>\r\n",
            subject=word().encode() + b" =?utf-8?q?unterminated =?utf-8?B?w6k?= =?utf-8?X?x?="
            b" =?=?= =??= =?utf-8*en?Q?a?= =?utf-8?Q?" + b"a" * 200 + b"?=",
        ),
    )
    add(
        "2047-in-params",
        _multipart(
            word(),
            b"pp",
            [
                b'Content-Type: text/plain; name="=?utf-8?B?w6kuZG9j?="\r\n'
                b'Content-Disposition: attachment; filename="=?utf-8?Q?bad=ZZ?="\r\n\r\nx'
            ],
        ),
    )
    add(
        "2231-broken",
        _multipart(
            word(),
            b"rf",
            [
                b"Content-Type: text/plain\r\nContent-Disposition: attachment;"
                b" filename*0*=utf-8''a%ZZ; filename*2=c; filename*1*=%E9\r\n\r\nx",
                b"Content-Type: text/plain\r\nContent-Disposition: attachment;"
                b" filename*=x-bad'en'%FF%FE\r\n\r\ny",
            ],
        ),
    )
    add(
        "overlong-header-line",
        _msg(
            word(),
            b"X-Long: " + b"h" * 200_000 + CRLF,
            subject=word().encode() + b" " + b"s" * 20_000,
        ),
    )
    add(
        "10000-header-fields",
        _msg(word(), b"".join(b"X-Field-%d: value %d\r\n" % (i, i) for i in range(10_000))),
    )
    add("header-without-colon", _msg(word(), b"This line has no colon\r\n: empty name\r\n"))
    add("folded-first-line", b" folded: first\r\n" + _msg(word()))
    add(
        "duplicate-fields",
        _msg(
            word(),
            b"Subject: second subject\r\nFrom: Other <o@remote.test>\r\n"
            b"Content-Type: text/plain\r\nContent-Type: text/html\r\nMIME-Version: 1.0\r\n",
        ),
    )
    add(
        "bad-addresses",
        _msg(
            word(),
            b'Reply-To: <<<@@>>>, "unterminated <x@y\r\n'
            b"Sender: ,,,\r\nBcc: group: a@b, c@d;, (comment only)\r\n",
        ),
    )
    add("bad-content-type", _msg(word(), b"Content-Type: ;;;===\r\n"))
    add("content-type-no-subtype", _msg(word(), b"Content-Type: text\r\n"))
    add(
        "huge-parameter-count",
        _msg(
            word(),
            b"Content-Type: text/plain" + b"".join(b"; p%d=v" % i for i in range(2000)) + CRLF,
        ),
    )
    return out


def total_size() -> int:
    return sum(len(data) for _, data in messages())
