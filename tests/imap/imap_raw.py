"""A raw IMAP client for tests: send exact octets, read untagged and tagged lines."""

from __future__ import annotations

import os
import re
import socket
import ssl

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class RawIMAP:
    def __init__(
        self,
        port: int,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        self.sock = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()
        self.n = 0

    def line(self) -> bytes:
        """One response line, with any literals it carries inlined."""
        out = b""
        while True:
            part = self.file.readline()
            if not part:
                raise ConnectionError("closed by server: " + repr(out))
            out += part
            m = _LITERAL.search(part)
            if not m:
                return out
            out += self.file.read(int(m.group(1)))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, text: bytes | str) -> tuple[list[bytes], bytes]:
        """Send 'tag text' and read to the tagged reply: (untagged lines, tagged line)."""
        self.n += 1
        tag = b"t%d" % self.n
        if isinstance(text, str):
            text = text.encode()
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def until(self, tag: bytes) -> tuple[list[bytes], bytes]:
        untagged = []
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                return untagged, line
            untagged.append(line)

    def ok(self, text: bytes | str) -> list[bytes]:
        untagged, tagged = self.command(text)
        assert b" OK" in tagged[:12], tagged
        return untagged

    def starttls(self, ctx: ssl.SSLContext) -> None:
        self.ok("STARTTLS")
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


def tcp_eof(sock: socket.socket, wait: float = 10.0) -> bool:
    """True if the TCP connection under `sock` (TLS or not) ends within `wait`
    seconds while we send nothing: the raw socket reads EOF."""
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    raw.settimeout(wait)
    try:
        while raw.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    finally:
        raw.close()
