"""HTML and URL tokens for the spam filter's tokenizer (`pimail.filter.tokens`).

Pure functions, no I/O, linear in their input; they never raise.

`html_tokens(markup, tokens)` reads an HTML part the way a spam filter must:
what a reader would see and what the sender hid.

- structure: "html:tag:NAME" for each element used (font, table, img, form,
  ...), "html:attr:NAME" for presentational attributes (bgcolor, face,
  size, ...), "html:style:" for CSS declarations that hide or shout
  (display:none, visibility:hidden, font-size 0/1, colours),
  counts of images and links as "html:img:N" / "html:a:N" buckets, and
  "html:text-ratio:N", the share of visible text in the markup, by tenths;
- the visible text: comments, scripts and styles removed, tags dropped,
  entities decoded (returned to the caller, which makes words of it);
- links: the URL of every href/src (entities and percent-encoding
  undone), as `url_tokens` below; "html:link-mismatch" when a link's text
  shows a host other than the one it goes to (a classic phishing trick).

`url_tokens(url, tokens)`: "proto:SCHEME", "url:" + each domain suffix of the
host (or "url:ip" for a numeric one, "url:port", "url:userinfo",
"url:encoded-host" for tricks), and "url-path:" + the words of the path.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from typing import Protocol

MAX_TAGS = 5_000  # tags examined per HTML part
MAX_URLS = 200  # URLs taken per message part

_TAG = re.compile(r"<\s*(/?)\s*([a-zA-Z][a-zA-Z0-9]{0,15})([^<>]{0,2000})>")
_ATTR = re.compile(
    r"([a-zA-Z][a-zA-Z0-9_-]{0,30})\s*=\s*(\"[^\"]{0,2000}\"|'[^']{0,2000}'|[^\s\"'>]{1,2000})"
)
_ANY_TAG = re.compile(r"<[^<>]*>")  # [^<>]: a run of "<" without ">" stays linear
_URL = re.compile(
    r"(?i)\b(https?|ftp)://([^\s/?#\"'<>\\]{1,255})([^\s\"'<>]{0,2000})"
    r"|\bwww\.([a-z0-9.-]{1,255})([^\s\"'<>]{0,2000})"
)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|0x[0-9a-f]+|\d{8,10}", re.I)
_PATH_WORD = re.compile(r"[a-z][a-z0-9]{2,19}")
_SHOWN_HOST = re.compile(r"(?i)(?:https?://)?((?:[a-z0-9-]{1,63}\.)+[a-z]{2,24})\b")

# Elements whose use says something about the sender's tool or intent.
_TAG_NAMES = (
    "a applet b base basefont big blink body br center div embed font form frame frameset "
    "h1 h2 h3 head hr html i iframe img input link map marquee meta object p script select "
    "small span strong style table td textarea th title tr u ul li"
)
TAGS = frozenset(_TAG_NAMES.split())
# Presentational attributes, mostly of 1990s mass-mail tools.
_ATTR_NAMES = (
    "align background bgcolor border cellpadding cellspacing color face height "
    "hspace leftmargin marginheight marginwidth size topmargin valign vspace width"
)
ATTRS = frozenset(_ATTR_NAMES.split())
_STYLE_TRICKS = (
    ("display:none", re.compile(r"display\s*:\s*none")),
    ("visibility:hidden", re.compile(r"visibility\s*:\s*hidden")),
    ("font-size:tiny", re.compile(r"font-size\s*:\s*[0-2](?:\.\d+)?(?:px|pt)?\b")),
    ("color:white", re.compile(r"(?<!-)color\s*:\s*(?:#fff\b|#ffffff|white)")),
    ("position:absolute", re.compile(r"position\s*:\s*absolute")),
)


class TokenSink(Protocol):
    def add(self, token: str) -> None: ...

    def host(self, prefix: str, host: str) -> None: ...


def bucket(count: int) -> str:
    """A count as a coarse token value: 0, 1, 2, 3-5, 6-10, 11-20, 21+."""
    for limit, name in ((0, "0"), (1, "1"), (2, "2"), (5, "3-5"), (10, "6-10"), (20, "11-20")):
        if count <= limit:
            return name
    return "21+"


def url_tokens(url: str, tokens: TokenSink) -> None:
    """Tokens of one URL (module docstring); `url` as found, entities undone."""
    match = _URL.match(url.strip())
    if match is None:
        return
    scheme, authority, rest, www, www_rest = match.groups()
    if www is not None:
        authority, rest = "www." + www, www_rest
        tokens.add("proto:none")
    else:
        tokens.add("proto:" + scheme.lower())
    if "@" in authority:
        tokens.add("url:userinfo")  # http://bank.example@evil.example/
        authority = authority.rpartition("@")[2]
    host, colon, port = authority.partition(":")
    if colon and port and port not in ("80", "443"):
        tokens.add("url:port")
    if "%" in host:
        tokens.add("url:encoded-host")
        host = urllib.parse.unquote(host)
    host = host.strip(".").lower()
    if _IPV4.fullmatch(host):
        tokens.add("url:ip")
    else:
        tokens.host("url:", host)
    path = urllib.parse.unquote(rest[:300]).lower()
    for word in _PATH_WORD.findall(path)[:12]:
        tokens.add("url-path:" + word)


def text_urls(text: str, tokens: TokenSink) -> str:
    """Tokens of the URLs in plain text; the text without them."""
    for count, match in enumerate(_URL.finditer(text)):
        if count >= MAX_URLS:
            break
        url_tokens(match.group(), tokens)
    return _URL.sub(" ", text)


def html_tokens(markup: str, tokens: TokenSink) -> str:
    """Structure and link tokens of an HTML part; returns its visible text."""
    markup = drop_between(markup, "<!--", "-->", "")
    lowered = markup.lower()
    if "<script" in lowered:
        tokens.add("html:tag:script")
    markup = drop_between(markup, "<script", "</script>", " ")
    markup = drop_between(markup, "<style", "</style>", " ")
    images = links = 0
    seen_tags = 0
    link_start: int | None = None
    link_host = ""
    for match in _TAG.finditer(markup):
        seen_tags += 1
        if seen_tags > MAX_TAGS:
            break
        closing, name, attrs = match.group(1), match.group(2).lower(), match.group(3)
        if name in TAGS:
            tokens.add("html:tag:" + name)
        if closing:
            if name == "a" and link_start is not None:
                _check_link_text(markup[link_start : match.start()], link_host, tokens)
                link_start = None
            continue
        for attr_match in _ATTR.finditer(attrs):
            attr = attr_match.group(1).lower()
            value = attr_match.group(2).strip("\"'")
            if attr in ATTRS:
                tokens.add("html:attr:" + attr)
                if attr in ("color", "bgcolor", "size", "face"):
                    tokens.add(f"html:{attr}={value.lower().strip()[:20]}")
            elif attr == "style":
                _style_tokens(value.lower(), tokens)
            elif attr in ("href", "src", "action", "background"):
                url = html.unescape(value).strip()
                if name == "img" and attr == "src":
                    images += 1
                if attr == "href":
                    links += 1
                if links + images <= MAX_URLS:
                    url_tokens(url, tokens)
                if name == "a" and attr == "href":
                    link_start = match.end()
                    link_host = _host_of(url)
    tokens.add("html:img:" + bucket(images))
    tokens.add("html:a:" + bucket(links))
    text = html.unescape(_ANY_TAG.sub(" ", markup))
    visible = len("".join(text.split()))
    total = max(len(markup), 1)
    tokens.add(f"html:text-ratio:{min(visible * 10 // total, 9)}")
    return text


def _style_tokens(style: str, tokens: TokenSink) -> None:
    compact = style.replace(" ", "")
    for name, pattern in _STYLE_TRICKS:
        if pattern.search(compact):
            tokens.add("html:style:" + name)


def _host_of(url: str) -> str:
    match = _URL.match(url)
    if match is None:
        return ""
    authority = match.group(2) or ("www." + (match.group(4) or ""))
    return authority.rpartition("@")[2].partition(":")[0].strip(".").lower()


def _registered(host: str) -> str:
    """The last two labels of a host name: close enough to compare sites."""
    return ".".join(host.split(".")[-2:])


def _check_link_text(inner: str, href_host: str, tokens: TokenSink) -> None:
    """A link whose visible text names another site than the one it goes to."""
    text = html.unescape(_ANY_TAG.sub(" ", inner[:500]))
    shown = _SHOWN_HOST.search(text)
    if shown is None or not href_host:
        return
    if _registered(shown.group(1).lower()) != _registered(href_host):
        tokens.add("html:link-mismatch")


def drop_between(text: str, start: str, end: str, replacement: str) -> str:
    """text without each span from start to end (case-insensitive); an
    unclosed span runs to the end. Linear, unlike a non-greedy regex
    "start.*?end", which rescans the rest of the text for every unclosed start."""
    opening = re.compile(re.escape(start), re.I)
    closing = re.compile(re.escape(end), re.I)
    kept: list[str] = []
    pos = 0
    while True:
        found = opening.search(text, pos)
        if found is None:
            kept.append(text[pos:])
            break
        kept.append(text[pos : found.start()])
        kept.append(replacement)
        close = closing.search(text, found.end())
        if close is None:
            break
        pos = close.end()
    return "".join(kept)
