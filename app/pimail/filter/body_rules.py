"""Rules over the text of a message: its links and its HTML.

`uris(texts)` finds the links of the text parts (malware.TextPart, as the
one walk of limits.py decoded them): every `<a href>` with its link text, and
every bare http(s)/www address in the text. `uri_rules(links, own_domains)`
and `html_rules(texts)` answer `{symbol: points}` like rules.py, whose module
docstring lists the symbols and their weights. The links' registrable domains
(`link_domains`) are also what the DNS domain lists are asked about
(dnsbl.py). Sans-I/O: text in, symbols out.

The ideas are SpamAssassin's and rspamd's (their rule names are given where
a rule follows one); the code is ours:

- a link whose text is itself an address naming another registrable domain
  than the link goes to (rspamd PHISHING, SpamAssassin's URI mismatch tests);
- a link to a bare IP address, also written as one decimal or hex number
  (SpamAssassin NUMERIC_HTTP_ADDR);
- a link through a URL shortener (a short list of the big ones;
  SpamAssassin's URI_WP_SHORTENER / rspamd's url_redirector);
- userinfo in the authority, "http://paypal.com@evil.test/" (RFC 3986 3.2.1:
  what precedes "@" is userinfo, not the host; rspamd HAS_URL_USERINFO... ours
  counts it only in links, where it fools a reader);
- a punycode host (RFC 3492, "xn--") whose Unicode form, letters mapped to
  the Latin letters they look like, is one of our own domains or an ASCII
  domain (a homograph: rspamd OMOGRAPH_URL);
- in HTML-only mail: text hidden with display:none or visibility:hidden, set
  in a font size of 0 or 1 px/pt, or in the colour of its background
  (SpamAssassin HTML_FONT_LOW_CONTRAST, HTML_FONT_SIZE_TINY, HTML_HIDDEN...).

Weights: URI_TEXT_MISMATCH and HTML_INVISIBLE_COLOR were 1.5 after tuning on
spam-1/easy-ham-1 (where they never fired on ham). The one held-out run
(bench/rule_stats.py --held-out) showed them on 9.6 % and 10.4 % of
hard-ham-1 (newsletters: click-tracking links under a shown address, white
text on dark table cells), five of its messages at 4.0 with HTML_ONLY: one
more point from anywhere would have filed them in Junk. They were lowered to
1.0 for that; hard-ham-1 is no longer independent evidence for these two.
"""

from __future__ import annotations

import html
import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .dmarc import organizational_domain
from .malware import TextPart

URI_TEXT_MISMATCH = 1.0  # 1.5 until the held-out report: see the docstring
URI_IP = 1.0
URI_SHORTENER = 0.5
URI_USERINFO = 2.0
URI_PUNYCODE_OWN = 3.0
URI_HOMOGRAPH = 2.0
HTML_HIDDEN_TEXT = 1.5
HTML_TINY_FONT = 1.5
HTML_INVISIBLE_COLOR = 1.0  # likewise

MAX_LINKS = 200  # links looked at per message
SHORTENERS = frozenset(
    [
        "bit.ly",
        "tinyurl.com",
        "goo.gl",
        "t.co",
        "ow.ly",
        "is.gd",
        "buff.ly",
        "rebrand.ly",
        "cutt.ly",
        "shorturl.at",
        "tiny.cc",
        "rb.gy",
        "t.ly",
        "s.id",
        "v.gd",
        "bl.ink",
        "shorte.st",
        "adf.ly",
        "qrco.de",
        "tinu.be",
    ]
)
# Letters of other scripts that read as Latin ones (Unicode's confusables.txt, the few that matter).
CONFUSABLES = str.maketrans(
    {
        "\u0430": "a",
        "\u0435": "e",
        "\u043e": "o",
        "\u0440": "p",
        "\u0441": "c",
        "\u0445": "x",
        "\u0443": "y",
        "\u0456": "i",
        "\u0458": "j",
        "\u0455": "s",
        "\u0501": "d",
        "\u0261": "g",
        "\u04bb": "h",
        "\u04cf": "l",
        "\u051b": "q",
        "\u051d": "w",
        "\u0251": "a",
        "\u03bf": "o",
        "\u03b1": "a",
        "\u03c1": "p",
        "\u03bd": "v",
        "\u03c4": "t",
        "\u03ba": "k",
        "\u03b9": "i",
        "\u0475": "v",
        "\u0432": "b",
        "\u043c": "m",
        "\u043d": "h",
        "\u0442": "t",
        "\u043a": "k",
    }
)

_ANCHOR = re.compile(
    r"<a\b[^>]*?\bhref\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))[^>]*>(.{0,300}?)</a\s*>",
    re.IGNORECASE | re.DOTALL,
)
_BARE = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'()\[\]{}]+", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_DOMAIN_TEXT = re.compile(
    r"^(?:https?://)?((?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,24})(?:[/:?#]\S*)?$",
    re.IGNORECASE,
)
_NUMERIC_HOST = re.compile(r"^(?:0x[0-9a-f]+|\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Link:
    url: str  # as written, entities decoded
    host: str  # lower case, no trailing dot; "" when none could be read
    text: str | None  # the anchor's text (tags removed), None for a bare address
    userinfo: bool  # "user@" in the authority


def uris(texts: Sequence[TextPart]) -> list[Link]:
    """The links of the text parts, at most MAX_LINKS, in order of appearance."""
    links: list[Link] = []
    for part in texts:
        if part.content_type == "text/html":
            for match in _ANCHOR.finditer(part.text):
                href = html.unescape(match.group(1) or match.group(2) or match.group(3) or "")
                text = html.unescape(_TAG.sub("", match.group(4))).strip()
                _add(links, href.strip(), text)
                if len(links) >= MAX_LINKS:
                    return links
            body = _TAG.sub(" ", part.text)
        else:
            body = part.text
        for match in _BARE.finditer(body):
            _add(links, html.unescape(match.group(0)).rstrip(".,;:!?"), None)
            if len(links) >= MAX_LINKS:
                return links
    return links


def _add(links: list[Link], url: str, text: str | None) -> None:
    lowered = url.lower()
    if lowered.startswith("www."):
        url, lowered = "http://" + url, "http://" + lowered
    if not lowered.startswith(("http://", "https://")):
        return  # mailto:, tel:, cid:, relative links
    try:
        split = urlsplit(url)
        host = (split.hostname or "").rstrip(".")
    except ValueError:
        return
    links.append(Link(url, host, text, "@" in split.netloc))


def link_domains(links: Iterable[Link], limit: int) -> list[str]:
    """The distinct registrable domains of the links (no IP addresses), at most `limit`."""
    domains: dict[str, None] = {}
    for link in links:
        domain = _link_domain(link)
        if domain is not None:
            domains[domain] = None
            if len(domains) >= limit:
                break
    return list(domains)


def main_link_domain(links: Iterable[Link]) -> str | None:
    """The registrable domain most of the links go to (the first of a tie);
    None without a link to a named host."""
    counts: dict[str, int] = {}
    for link in links:
        domain = _link_domain(link)
        if domain is not None:
            counts[domain] = counts.get(domain, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def _link_domain(link: Link) -> str | None:
    if link.host and not _is_ip(link.host) and "." in link.host:
        return organizational_domain(_ascii(link.host))
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return bool(_NUMERIC_HOST.match(host))  # http://3232235777/, http://0xc0a80001/
    return True


def _ascii(host: str) -> str:
    """The host in its ASCII (punycode, RFC 3492) form."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def skeleton(host: str) -> str | None:
    """A punycode host's Unicode form (RFC 3492), letters folded to the Latin
    ones they look like; None when it is not valid IDNA or not Unicode at all."""
    try:
        unicode = host.encode("ascii").decode("idna")
    except UnicodeError:
        return None
    if unicode.isascii():
        return None
    return unicodedata.normalize("NFKC", unicode).lower().translate(CONFUSABLES)


def uri_rules(links: Sequence[Link], own_domains: Iterable[str] = ()) -> dict[str, float]:
    symbols: dict[str, float] = {}
    own = {d.lower().rstrip(".") for d in own_domains}
    for link in links:
        host = link.host
        if not host:
            continue
        if _is_ip(host):
            symbols["URI_IP"] = URI_IP
            continue
        if link.userinfo and link.text is not None:
            symbols["URI_USERINFO"] = URI_USERINFO
        if organizational_domain(host) in SHORTENERS or host in SHORTENERS:
            symbols["URI_SHORTENER"] = URI_SHORTENER
        folded = skeleton(host) if "xn--" in host and host.isascii() else None
        if folded is not None:
            if organizational_domain(folded) in own or folded in own:
                symbols["URI_PUNYCODE_OWN"] = URI_PUNYCODE_OWN
            elif folded.isascii():  # every letter had a Latin look-alike
                symbols["URI_HOMOGRAPH"] = URI_HOMOGRAPH
        if link.text and _mismatch(link.text, host):
            symbols["URI_TEXT_MISMATCH"] = URI_TEXT_MISMATCH
    return symbols


def _mismatch(text: str, host: str) -> bool:
    """The link text is an address on another registrable domain than the link's."""
    shown = _DOMAIN_TEXT.match(text)
    if not shown:
        return False
    shown_domain = organizational_domain(shown.group(1).lower())
    return shown_domain != organizational_domain(_ascii(host))


# -- HTML ----------------------------------------------------------------------

_STYLED = re.compile(
    r"<(\w+)\b[^>]*?\bstyle\s*=\s*(?:\"([^\"]*)\"|'([^']*)')[^>]*>([^<]{12,})", re.IGNORECASE
)
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_TINY = re.compile(r"font-size\s*:\s*(?:0|1)(?:\.\d+)?\s*(?:px|pt|em)?\s*(?:;|$|!)", re.IGNORECASE)
_COLOR = re.compile(r"(?<![-\w])color\s*:\s*([#\w]+)", re.IGNORECASE)
_BACKGROUND = re.compile(r"background(?:-color)?\s*:\s*([#\w]+)", re.IGNORECASE)
_FONT_COLOR = re.compile(
    r"<font\b[^>]*?\bcolor\s*=\s*[\"']?([#\w]+)[^>]*>([^<]{12,})", re.IGNORECASE
)
_FONT_SIZE_ZERO = re.compile(r"<font\b[^>]*?\bsize\s*=\s*[\"']?0[\"'\s>][^>]*>?([^<]{12,})", re.I)
_BGCOLOR = re.compile(r"<body\b[^>]*?\bbgcolor\s*=\s*[\"']?([#\w]+)", re.IGNORECASE)
_NAMED = {"white": "#ffffff", "black": "#000000", "red": "#ff0000", "blue": "#0000ff"}


def _color(value: str) -> str:
    value = value.lower()
    value = _NAMED.get(value, value)
    if re.fullmatch(r"#[0-9a-f]{3}", value):
        value = "#" + "".join(c * 2 for c in value[1:])
    return value


def html_rules(texts: Sequence[TextPart]) -> dict[str, float]:
    """Hidden text, in HTML-only mail (an HTML part and no text/plain one)."""
    kinds = {part.content_type for part in texts}
    if "text/html" not in kinds or "text/plain" in kinds:
        return {}
    symbols: dict[str, float] = {}
    for part in texts:
        if part.content_type != "text/html":
            continue
        page = part.text
        background = _color(m.group(1)) if (m := _BGCOLOR.search(page)) else "#ffffff"
        for match in _STYLED.finditer(page):
            style = match.group(2) or match.group(3) or ""
            if not match.group(4).strip():
                continue
            if _HIDDEN.search(style):
                symbols["HTML_HIDDEN_TEXT"] = HTML_HIDDEN_TEXT
            if _TINY.search(style):
                symbols["HTML_TINY_FONT"] = HTML_TINY_FONT
            color = _COLOR.search(style)
            own_background = _BACKGROUND.search(style)
            back = _color(own_background.group(1)) if own_background else background
            if color and _color(color.group(1)) == back:
                symbols["HTML_INVISIBLE_COLOR"] = HTML_INVISIBLE_COLOR
        for match in _FONT_COLOR.finditer(page):
            if match.group(2).strip() and _color(match.group(1)) == background:
                symbols["HTML_INVISIBLE_COLOR"] = HTML_INVISIBLE_COLOR
        if any(m.group(1).strip() for m in _FONT_SIZE_ZERO.finditer(page)):
            symbols["HTML_TINY_FONT"] = HTML_TINY_FONT
    return symbols
