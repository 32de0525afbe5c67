"""Every IMAP read path over a whole mailbox, batched, collecting problems.

`walk_mailbox()` asks a selected mailbox for everything a client may ask
about a message: ENVELOPE, BODYSTRUCTURE, RFC822.SIZE, INTERNALDATE,
BODY[HEADER.FIELDS (FROM SUBJECT)] for all messages in one command; BODY[]
in UID ranges; then per message BODY[n.MIME] and BODY[n] of every part and
BINARY[n] of every leaf part. It returns the problems it saw (with the
corpus name of the message), never stopping at the first.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imap.imap_raw import RawIMAP

from .deliver import stored_name
from .imapwire import Answer, Pipeline

KNOWN_CTE = {b"7bit", b"8bit", b"binary", b"base64", b"quoted-printable"}  # RFC 2045 6.1
MAX_ITEMS_PER_COMMAND = 400  # BODY[n.MIME] items in one FETCH (a 10,000-part message)


@dataclass
class Message:
    seq: int
    uid: int
    name: str
    size: int
    body: bytes
    structure: list
    envelope: list
    parts: list[tuple[str, list]] = field(default_factory=list)  # (part number, structure)
    raw_parts: dict[str, bytes] = field(default_factory=dict)  # BODY[n] as the server sent it


@dataclass
class Walk:
    messages: dict[int, Message] = field(default_factory=dict)  # by UID
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


def status_problem(answer: Answer) -> str | None:
    """A tagged reply that no well-formed command may get: BAD, NO [SERVERBUG],
    or anything but OK/NO/BAD."""
    status = answer.status
    if status == b"OK":
        return None
    if status == b"NO" and b"[SERVERBUG]" not in answer.tagged:
        return None
    return f"{answer.command[:120]!r} -> {answer.tagged.strip()[:200]!r}"


def part_numbers(structure: list, prefix: str = "") -> list[tuple[str, list]]:
    """(part number, body structure) of every part (RFC 9051 6.4.5 part
    numbering), containers included, and the parts inside message/rfc822."""
    out: list[tuple[str, list]] = []
    if structure and isinstance(structure[0], list):  # multipart: its parts lead
        children = []
        for item in structure:
            if not isinstance(item, list):
                break  # the subtype, then extension data
            children.append(item)
        for i, child in enumerate(children):
            number = f"{prefix}{i + 1}"
            out.append((number, child))
            out += _inside(child, number)
        return out
    if not prefix:  # a single-part message: its body is part 1
        out.append(("1", structure))
        out += _inside(structure, "1")
    return out


def _inside(structure: list, number: str) -> list[tuple[str, list]]:
    if structure and isinstance(structure[0], list):
        return part_numbers(structure, number + ".")
    if is_message_rfc822(structure) and len(structure) > 8 and isinstance(structure[8], list):
        inner = structure[8]
        if inner and isinstance(inner[0], list):  # its multipart body: number.1, number.2...
            return part_numbers(inner, number + ".")
        return [(number + ".1", inner), *_inside(inner, number + ".1")]
    return []


def is_message_rfc822(structure: list) -> bool:
    return (
        len(structure) > 1
        and isinstance(structure[0], bytes)
        and structure[0].upper() == b"MESSAGE"
        and isinstance(structure[1], bytes)
        and structure[1].upper() in (b"RFC822", b"GLOBAL")
    )


def is_leaf(structure: list) -> bool:
    return not (structure and isinstance(structure[0], list))


def encoding(structure: list) -> bytes:
    value = structure[5] if len(structure) > 5 else None
    return value.lower() if isinstance(value, bytes) else b"7bit"


def walk_mailbox(
    connect: Callable[[], RawIMAP], files: dict[int, Path], label: str, body_range: int = 200
) -> Walk:
    """`connect()` gives a logged-in session with the mailbox selected (again
    whenever the server drops one)."""
    walk = Walk()
    pipe = Pipeline(connect(), window=40, reconnect=connect)
    answer = pipe.run(
        [
            b"FETCH 1:* (UID ENVELOPE BODYSTRUCTURE RFC822.SIZE INTERNALDATE FLAGS"
            b" BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])"
        ]
    )[0]
    if problem := status_problem(answer):
        walk.problems.append(f"{label}: {problem}")
    stored = {uid: path.read_bytes() for uid, path in files.items()}
    for seq, items in answer.fetches():
        uid = int(items.get(b"UID") or 0)
        data = stored.get(uid, b"")
        name = f"{label}/{stored_name(data)} uid={uid}"
        missing = {b"UID", b"ENVELOPE", b"BODYSTRUCTURE", b"RFC822.SIZE", b"INTERNALDATE",
                   b"BODY[HEADER.FIELDS (FROM SUBJECT)]"} - items.keys()  # fmt: skip
        if missing:
            walk.problems.append(f"{name}: FETCH lacks {sorted(missing)}")
            continue
        size = int(items[b"RFC822.SIZE"])  # type: ignore[arg-type]
        structure = items[b"BODYSTRUCTURE"]
        envelope = items[b"ENVELOPE"]
        if not isinstance(structure, list) or not isinstance(envelope, list):
            walk.problems.append(f"{name}: BODYSTRUCTURE/ENVELOPE not lists")
            continue
        if len(envelope) != 10:
            walk.problems.append(f"{name}: ENVELOPE has {len(envelope)} fields, not 10")
        header = items[b"BODY[HEADER.FIELDS (FROM SUBJECT)]"]
        if not isinstance(header, bytes) or not header.endswith(b"\r\n"):
            walk.problems.append(f"{name}: HEADER.FIELDS is {str(header)[:80]}")
        elif (
            b"\r\n\r\n" in data
            and header != (want := header_fields(data, {b"from", b"subject"}))
            and not _same_but_nul(header, want)  # NUL sent as 0x80 in a {n} literal
        ):
            walk.problems.append(
                f"{name}: BODY[HEADER.FIELDS (FROM SUBJECT)] is not the message's fields:"
                f" {first_difference(header, want)}"
            )
        subject = raw_field(data, b"subject")
        if subject is not None and subject.isascii() and b"\0" not in subject:
            got = envelope[1] if len(envelope) > 1 else None
            if (got or b"").strip() != subject.strip():
                walk.problems.append(
                    f"{name}: ENVELOPE subject {str(got)[:60]} is not the Subject field"
                    f" {str(subject)[:60]} (RFC 9051 7.5.2)"
                )
        walk.messages[uid] = Message(seq, uid, name, size, b"", structure, envelope)
        walk.messages[uid].parts = part_numbers(structure)
    if set(walk.messages) != set(files):
        walk.problems.append(
            f"{label}: FETCH 1:* saw UIDs {sorted(set(walk.messages) - set(files))[:10]} that have"
            f" no file, files {sorted(set(files) - set(walk.messages))[:10]} not seen"
        )
    _bodies(pipe, walk, stored, body_range)
    _parts(pipe, walk)
    pipe.client.close()
    return walk


def _bodies(pipe: Pipeline, walk: Walk, stored: dict[int, bytes], step: int) -> None:
    """BODY[] in UID ranges: exactly the stored octets; RFC822.SIZE their length."""
    uids = sorted(walk.messages)
    commands = [
        b"UID FETCH %d:%d (BODY.PEEK[])" % (uids[i], uids[min(i + step, len(uids)) - 1])
        for i in range(0, len(uids), step)
    ]
    for answer in pipe.run(commands):
        if problem := status_problem(answer):
            walk.problems.append(problem)
        for _, items in answer.fetches():
            uid = int(items.get(b"UID") or 0)
            message = walk.messages.get(uid)
            body = items.get(b"BODY[]")
            if message is None or not isinstance(body, bytes):
                walk.problems.append(f"uid={uid}: BODY[] missing or unexpected")
                continue
            message.body = body
            want = stored.get(uid, b"")
            if b"\x00" in body:
                walk.problems.append(
                    f"{message.name}: BODY[] sends NUL in a literal (RFC 9051 9: literal is"
                    " *CHAR8, no NUL; literal8 is for BINARY only)"
                )
            elif b"\x00" in want and _same_but_nul(body, want):
                pass  # NUL octets stood in for by another octet: the rest exactly stored
            elif body != want:
                walk.problems.append(
                    f"{message.name}: BODY[] ({len(body)} octets) is not the Maildir file "
                    f"({len(stored.get(uid, b''))} octets)"
                )
            if len(body) != message.size:
                walk.problems.append(
                    f"{message.name}: RFC822.SIZE {message.size} != BODY[] length {len(body)}"
                )


def header_lines(data: bytes) -> list[bytes]:
    """The header fields of a message, each with its folded lines and CRLFs."""
    end = data.find(b"\r\n\r\n")
    head = data[: end + 2] if end >= 0 else data
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def header_fields(data: bytes, names: set[bytes]) -> bytes:
    """BODY[HEADER.FIELDS (names)] as RFC 9051 6.4.5 defines it: the named
    fields as they are, in the message's order, and the blank line."""
    picked = [f for f in header_lines(data) if f.split(b":", 1)[0].strip().lower() in names]
    return b"".join(picked) + b"\r\n"


def raw_field(data: bytes, name: bytes) -> bytes | None:
    """The first `name:` field's value, unfolded (RFC 5322 2.2.3)."""
    for line in header_lines(data):
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.replace(b"\r\n", b"")
    return None


def _same_but_nul(sent: bytes, stored: bytes) -> bool:
    """The same octets but where the stored message has NUL (which no IMAP
    literal may carry, RFC 9051 9 CHAR8)."""
    if len(sent) != len(stored):
        return False
    return all(a == b or b == 0 for a, b in zip(sent, stored, strict=True))


def _parts(pipe: Pipeline, walk: Walk) -> None:
    """BODY[n.MIME] and BODY[n] of every part, BINARY[n] of every leaf."""
    commands: list[bytes] = []
    owners: list[tuple[Message, list[tuple[str, list]], str]] = []
    for message in walk.messages.values():
        parts = message.parts
        for start in range(0, len(parts), MAX_ITEMS_PER_COMMAND // 2):
            chunk = parts[start : start + MAX_ITEMS_PER_COMMAND // 2]
            items = b" ".join(b"BODY.PEEK[%s.MIME] BODY.PEEK[%s]" % (n.encode(), n.encode())
                              for n, _ in chunk)  # fmt: skip
            commands.append(b"UID FETCH %d (%s)" % (message.uid, items))
            owners.append((message, chunk, "body"))
        leaves = [(n, st) for n, st in parts if is_leaf(st)]
        known = [(n, st) for n, st in leaves if encoding(st) in KNOWN_CTE]
        for start in range(0, len(known), MAX_ITEMS_PER_COMMAND):
            chunk = known[start : start + MAX_ITEMS_PER_COMMAND]
            items = b" ".join(b"BINARY.PEEK[%s]" % n.encode() for n, _ in chunk)
            commands.append(b"UID FETCH %d (%s)" % (message.uid, items))
            owners.append((message, chunk, "binary"))
        for number, structure in leaves:  # alone: NO [UNKNOWN-CTE] concerns one part
            if encoding(structure) not in KNOWN_CTE:
                commands.append(b"UID FETCH %d (BINARY.PEEK[%s])" % (message.uid, number.encode()))
                owners.append((message, [(number, structure)], "binary"))
    for answer, (message, chunk, kind) in zip(pipe.run(commands), owners, strict=True):
        if problem := status_problem(answer):
            walk.problems.append(f"{message.name}: {problem}")
            continue
        if answer.status == b"NO":
            if kind == "binary" and b"[UNKNOWN-CTE]" in answer.tagged:
                walk.count("binary unknown-cte")
                _check_unknown_cte(walk, message, chunk[0])
            else:
                walk.problems.append(
                    f"{message.name}: {answer.command[:80]!r} -> {answer.tagged!r}"
                )
            continue
        fetched = dict(kv for f in answer.fetches() for kv in f[1].items())
        for number, structure in chunk:
            if kind == "body":
                for key in (b"BODY[%s.MIME]" % number.encode(), b"BODY[%s]" % number.encode()):
                    if not isinstance(fetched.get(key), bytes):
                        walk.problems.append(f"{message.name}: no {key.decode()} in the answer")
                raw = fetched.get(b"BODY[%s]" % number.encode())
                if isinstance(raw, bytes) and is_leaf(structure):
                    message.raw_parts[number] = raw
                mime = fetched.get(b"BODY[%s.MIME]" % number.encode())
                crlf = b"\r\n\r\n" in message.body  # else a header cannot end in one
                if isinstance(mime, bytes) and mime and crlf and not mime.endswith(b"\r\n"):
                    walk.problems.append(f"{message.name}: BODY[{number}.MIME] lacks its CRLF")
            else:
                walk.count("binary")
                _check_binary(walk, message, number, structure, fetched)


def _check_unknown_cte(walk: Walk, message: Message, part: tuple[str, list]) -> None:
    """RFC 3516 4.3: NO [UNKNOWN-CTE] is for an encoding the server does not know."""
    number, structure = part
    if encoding(structure) in KNOWN_CTE:
        walk.problems.append(
            f"{message.name}: BINARY[{number}] NO [UNKNOWN-CTE] for {encoding(structure)!r}"
        )


def _check_binary(
    walk: Walk, message: Message, number: str, structure: list, fetched: dict
) -> None:
    """BINARY[n] is the part with its transfer encoding undone (RFC 3516 4.2):
    compared with our own decoding of BODY[n] where that is unambiguous."""
    binary = fetched.get(b"BINARY[%s]" % number.encode())
    if not isinstance(binary, bytes):
        walk.problems.append(f"{message.name}: no BINARY[{number}] in the answer")
        return
    raw = message.raw_parts.get(number)
    if raw is None:
        return
    cte = encoding(structure)
    expected: bytes | None
    if cte in (b"7bit", b"8bit", b"binary"):
        expected = raw
    elif cte == b"base64":
        expected = strict_base64(raw)
    elif cte == b"quoted-printable":
        expected = qp_decode(raw)
    else:
        expected = None
    # BODY[n] stood 0x80 in for NUL (no NUL in a {n} literal, RFC 9051 4.3);
    # BINARY sends the octets themselves in ~{n} (RFC 3516 4.2).
    if expected is not None and binary != expected and not _same_but_nul(expected, binary):
        walk.problems.append(
            f"{message.name}: BINARY[{number}] ({cte.decode()}, {len(binary)} octets) differs"
            f" from the decoded part ({len(expected)} octets): "
            f"{first_difference(binary, expected)}"
        )


def first_difference(a: bytes, b: bytes) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at {i}: got {a[max(0, i - 10) : i + 20]!r}, want {b[max(0, i - 10) : i + 20]!r}"


_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/=]")


def strict_base64(raw: bytes) -> bytes | None:
    """RFC 2045 6.8: characters outside the alphabet are ignored (line ends).
    None when what is left is not valid base64 (then any decoding is a guess)."""
    text = _B64_JUNK.sub(b"", raw)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None


_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")


def qp_decode(raw: bytes) -> bytes:
    """RFC 2045 6.7: transport padding (trailing space) dropped, '=' at the end
    of a line a soft break, =XX an octet, line breaks kept as CRLF."""
    lines = raw.split(b"\r\n")
    out = []
    for i, line in enumerate(lines):
        line = line.rstrip(b" \t")
        last = i == len(lines) - 1
        if line.endswith(b"="):
            out.append(_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), line[:-1]))
        else:
            out.append(_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), line))
            if not last:
                out.append(b"\r\n")
    return b"".join(out)
