"""A small HTTP client for web tests that needs no browser: urllib with a
cookie jar, the server's internal CA trusted, redirects optional.

For what a real browser does (scripts, frames, CSP), the Playwright tests
drive Chromium; this one checks status codes, headers and forms quickly."""

from __future__ import annotations

import http.cookiejar
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Page:
    status: int
    url: str
    headers: Message
    body: bytes
    redirected_to: str | None = None
    text: str = field(init=False)

    def __post_init__(self) -> None:
        self.text = self.body.decode("utf-8", "replace")

    @property
    def csrf(self) -> str:
        found = _CSRF.search(self.text)
        assert found, f"no CSRF field on {self.url}"
        return found.group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Browser:
    def __init__(self, base: str, context: ssl.SSLContext | None = None) -> None:
        self.base = base.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.HTTPCookieProcessor(self.jar),
            urllib.request.HTTPSHandler(context=context),
        ]
        self._follow = urllib.request.build_opener(*handlers)
        self._stay = urllib.request.build_opener(*handlers, _NoRedirect())

    def request(
        self,
        method: str,
        path: str,
        data: dict[str, str] | bytes | None = None,
        headers: dict[str, str] | None = None,
        follow: bool = True,
        timeout: float = 30.0,
    ) -> Page:
        url = path if "://" in path else self.base + path
        body = urllib.parse.urlencode(data).encode() if isinstance(data, dict) else data
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        opener = self._follow if follow else self._stay
        try:
            with opener.open(request, timeout=timeout) as response:
                return Page(response.status, response.url, response.headers, response.read())
        except urllib.error.HTTPError as e:
            return Page(e.code, url, e.headers, e.read(), e.headers.get("Location"))

    def get(self, path: str, **kw: object) -> Page:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, data: dict[str, str] | bytes, **kw: object) -> Page:
        return self.request("POST", path, data, **kw)  # type: ignore[arg-type]

    def cookie(self, name: str) -> http.cookiejar.Cookie | None:
        return next((c for c in self.jar if c.name == name), None)

    def login(self, address: str, password: str) -> Page:
        form = self.get("/login")
        return self.post(
            "/login", {"csrf": form.csrf, "username": address, "password": password, "next": "/"}
        )


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """`check()`'s first true value, asked every 50 ms; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out waiting")
