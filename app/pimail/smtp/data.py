"""The DATA stream, without I/O: SMTP transparency and end of data (RFC 5321 4.5.2).

`DataDecoder.feed()` takes octets as they arrive (any split: whole lines,
partial lines, byte by byte) and returns message octets with dot-stuffing
removed. It ends at <CRLF>.<CRLF> and nothing else.

SMTP smuggling (the 2023 attacks) relies on servers that disagree about where
data ends: `<LF>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR>`... RFC 5321 2.3.8 forbids a
bare CR or LF anywhere in SMTP, so the decoder records any, the server refuses
the message, and what a smuggler hid inside is never taken as commands.
"""

from __future__ import annotations

CR, LF, DOT = 0x0D, 0x0A, 0x2E
END = b".\r\n"


class DataDecoder:
    def __init__(self) -> None:
        self._bol = True  # at the start of a line
        self._head = b""  # a line start we cannot judge yet ("." or ".\r")
        self._last = LF  # last octet passed on (LF: as if after a CRLF)
        self._cr_open = False  # the last octet was a CR whose LF has not come yet
        self.done = False
        self.bare_line_end = False  # a bare CR or LF was seen
        self.max_line = 0  # longest line, in octets with its CRLF
        self._line = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Decode `data`. Returns (message octets, octets after the end of data).
        The second part is non-empty only once `done` is set."""
        if self.done:
            return b"", data
        buf = self._head + data if self._head else data
        self._head = b""
        out = bytearray()
        pos, n = 0, len(buf)
        while pos < n:
            if self._bol:
                if buf[pos] == DOT:
                    rest = buf[pos : pos + 3]
                    if rest == END:
                        self.done = True
                        self._track(3)
                        return bytes(out), buf[pos + 3 :]
                    if END.startswith(rest):  # "." or ".\r": wait for more
                        self._head = rest
                        break
                    pos += 1  # RFC 5321 4.5.2: drop the stuffed dot
                    self._line += 1
                self._bol = False
                if pos >= n:
                    break
            nl = buf.find(b"\n", pos)
            end = n if nl < 0 else nl + 1
            crlf = self._check(buf, pos, end)
            out += buf[pos:end]
            self._line += end - pos
            if nl >= 0:
                # Only a CRLF starts a line: after a bare LF, ".\r\n" is not the end.
                self._bol = crlf
                self._track(0)
            pos = end
        return bytes(out), b""

    def _check(self, buf: bytes, start: int, end: int) -> bool:
        """Look for bare CR / LF in buf[start:end] (which holds at most one LF, at the
        end). True if the segment ends in a proper CRLF."""
        if self._cr_open and buf[start] != LF:
            self.bare_line_end = True
        segment = buf[start:end]
        before = -1
        if segment.endswith(b"\n"):
            before = segment[-2] if len(segment) >= 2 else (CR if self._cr_open else self._last)
            if before != CR:
                self.bare_line_end = True
            crs = segment.count(b"\r", 0, len(segment) - 2 if before == CR else len(segment))
        else:
            crs = segment.count(b"\r", 0, len(segment) - 1 if segment.endswith(b"\r") else None)
        if crs:
            self.bare_line_end = True
        self._cr_open = segment.endswith(b"\r")
        self._last = segment[-1]
        return segment.endswith(b"\n") and before == CR

    def _track(self, extra: int) -> None:
        self.max_line = max(self.max_line, self._line + extra)
        self._line = 0
