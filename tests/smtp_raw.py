"""A raw SMTP client for tests that must send what smtplib refuses to."""

from __future__ import annotations

import socket


class RawSMTP:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.banner = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (all lines of a multi-line one), CRLFs kept."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed: " + repr(b"".join(lines)))
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def greet(self) -> None:
        assert self.cmd(b"EHLO client.test").startswith(b"250")

    def envelope(self, rcpt: bytes = b"alice@example.org") -> None:
        assert self.cmd(b"MAIL FROM:<a@remote.test>").startswith(b"250")
        assert self.cmd(b"RCPT TO:<" + rcpt + b">").startswith(b"250")
        assert self.cmd(b"DATA").startswith(b"354")

    def closed(self) -> bool:
        """True if the server has closed the connection (reads EOF)."""
        try:
            return self.file.readline() == b""
        except (ConnectionResetError, TimeoutError):
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()
