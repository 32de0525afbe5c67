"""The DATA stream, without I/O: SMTP transparency and end of data (RFC 5321 4.5.2).

`DataDecoder.feed()` takes octets as they arrive (any split: whole chunks of
many lines, partial lines, byte by byte) and returns message octets with
dot-stuffing removed. It ends at <CRLF>.<CRLF> and nothing else, and hands
back whatever followed the end (pipelined commands).

SMTP smuggling (the 2023 attacks) relies on servers that disagree about where
data ends: `<LF>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR>`... RFC 5321 2.3.8 forbids a
bare CR or LF anywhere in SMTP, so the decoder records any, the server refuses
the message, and what a smuggler hid inside is never taken as commands. Only
a CRLF starts a line: after a bare LF, a "." is content, not an end.

The work is done per chunk with bytes.find/count, not per line in Python: a
20 KB message costs a handful of calls, which matters on a Pi.
"""

from __future__ import annotations

DOT = 0x2E
END = b".\r\n"


class DataDecoder:
    def __init__(self) -> None:
        self._bol = True  # at the start of a line (after a CRLF)
        self._head = b""  # a line start we cannot judge yet: "." or ".\r"
        self._cr_open = False  # the last octet passed on was a CR awaiting its LF
        self.done = False
        self.bare_line_end = False  # a bare CR or LF was seen

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Decode `data`. Returns (message octets, octets after the end of data).
        The second part is non-empty only once `done` is set."""
        if self.done:
            return b"", data
        buf = self._head + data if self._head else data
        self._head = b""
        out: list[bytes] = []
        pos, n = 0, len(buf)
        while pos < n:
            if self._bol:
                if buf[pos] == DOT:
                    rest = buf[pos : pos + 3]
                    if rest == END:
                        self.done = True
                        return b"".join(out), buf[pos + 3 :]
                    if END.startswith(rest):  # "." or ".\r": wait for more
                        self._head = rest
                        break
                    pos += 1  # RFC 5321 4.5.2: drop the stuffed dot
                    if pos >= n:
                        self._bol = False
                        break
                self._bol = False
            # Up to and including the next LF that is followed by a dot (a line
            # that may need unstuffing), or to the end of the buffer.
            k = buf.find(b"\n.", pos)
            end = n if k < 0 else k + 1
            segment = buf[pos:end]
            ends_crlf = self._check(segment)
            out.append(segment)
            if segment.endswith(b"\n"):
                self._bol = ends_crlf
            pos = end
        return b"".join(out), b""

    def _check(self, segment: bytes) -> bool:
        """Record bare CR/LF in `segment`, continuing across chunk boundaries.
        True if the segment ends with a CRLF."""
        crlf = segment.count(b"\r\n")
        joined = self._cr_open and segment.startswith(b"\n")  # a CRLF split across chunks
        if self._cr_open and not joined:
            self.bare_line_end = True
        trailing_cr = segment.endswith(b"\r")
        if segment.count(b"\n") != crlf + joined or segment.count(b"\r") - trailing_cr != crlf:
            self.bare_line_end = True
        self._cr_open = trailing_cr
        return segment.endswith(b"\r\n") or (joined and segment == b"\n")
