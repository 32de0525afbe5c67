"""The webmail's HTML sanitiser: mail bodies made safe to show in a frame.

This room only turns strings into strings; it touches no files, sockets or
settings. The webmail shows the result inside a sandboxed iframe (no
allow-scripts, its own strict CSP); this module is the first wall, the frame
the second. Cleaning is done by nh3 (ammonia, on html5ever: it parses as a
browser does, so obfuscation does not get past it); this module only states
the policy and rewrites URLs through nh3's `attribute_filter` callback.

Decisions:

- Allow-lists only: tags, attributes per tag, URL schemes per attribute, CSS
  properties. Everything else is dropped. Scripts, `<style>`, `<title>`,
  `<noscript>`, `<template>`, SVG, MathML, frames, objects, embeds, media and
  form fields that carry text (`select`, `textarea`) go with their content;
  other unknown tags (form, button, input, label...) lose the tag but keep
  their text. Comments go too, with Outlook's `<!--[if mso]>` blocks.
- `<style>` elements are dropped, not sanitised: CSS fetches via url(),
  @import, image-set() and fonts, hides things with selectors, and would need
  a CSS sanitiser of its own. Mail is written for clients that ignore
  `<style>` anyway (Gmail long did), so layouts hold up on inline styles. The
  `style` attribute stays, limited to the properties in `CSS_PROPERTIES` (no
  position, z-index, behavior, -moz-binding, content, cursor), and a
  declaration goes if its value has a function other than rgb/rgba/hsl/hsla/
  calc (so no url(), expression(), image-set(), var()), a backslash (CSS
  escapes could hide a name), a comment or an `@`. CSS images are never shown,
  not even with `allow_remote`, so they are not counted in `blocked_remote`.
- Links keep `href` only for http, https and mailto, always get
  rel="noopener noreferrer" and target="_blank" (a target in the mail is
  overwritten). Relative links go: they would resolve against the webmail.
- Images: `cid:` sources are rewritten through `cid_url` (the Content-ID
  without `cid:`, percent-decoded, RFC 2392). Remote sources (http, https,
  `//host`) in img src and srcset and in the `background` attribute of
  tables and cells are kept only with `allow_remote`, otherwise removed and
  counted; alt, width and height stay, so the layout holds and the alt text
  shows. `data:` URLs are allowed in img src only, and only for base64 PNG,
  GIF, JPEG and WebP (no SVG: it is a document); some clients embed images so,
  and they fetch nothing. The frame's CSP must allow `img-src data:` for them.
- Work budget: html5ever has no nesting cap and some of its steps are
  quadratic or worse (servo/html5ever#788). Measured with nh3 0.3.8: 60,000
  nested `<div>` take 7 s, 1,700 crafted `<b x>`/`<i y>` tags 1.5 s and
  10,000 of them 30 s; each `&` or U+0080-U+00BF in text costs time in
  proportion to the distance to the next `<` (5 MB of text with 50,000 `&`
  and no tag: 2-3 s). So before parsing the input is cut at the `MAX_TAGS`-th
  tag, the `MAX_FORMATTING_WITH_ATTRIBUTES`-th formatting tag with
  attributes, the `MAX_SLOW_CHARACTERS`-th such character, and inside a long
  run of text where that run's work would pass `MAX_LONG_TEXT_WORK`. The
  regexes may count too many, never too few. A cut is never unsafe (nh3
  closes what was left open); `CleanResult.truncated` tells the UI to offer
  the original. Real mail stays far below these limits; the worst inputs
  found within them take about a second on x86-64 and several on a Pi, so
  the webmail must still clean off the event loop.
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from urllib.parse import unquote

import nh3

MAX_TAGS = 20_000
MAX_FORMATTING_WITH_ATTRIBUTES = 1_000
MAX_SLOW_CHARACTERS = 500_000
LONG_TEXT = 16 * 1024
MAX_LONG_TEXT_WORK = 40_000_000_000

LINK_REL = "noopener noreferrer"
LINK_TARGET = "_blank"

_HEADINGS = {f"h{n}" for n in range(1, 7)}
TAGS = frozenset(
    {
        "a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo",
        "big", "blockquote", "br", "caption", "center", "cite", "code", "col",
        "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt", "em",
        "figcaption", "figure", "font", "footer", "header", "hr", "i", "img",
        "ins", "kbd", "li", "main", "mark", "nav", "nobr", "ol", "p", "pre", "q",
        "rp", "rt", "ruby", "s", "samp", "section", "small", "span", "strike",
        "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
        "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
    }
    | _HEADINGS
)  # fmt: skip
# Dropped with everything inside them (disjoint from TAGS, as nh3 requires).
CLEAN_CONTENT_TAGS = frozenset(
    {
        "applet", "audio", "canvas", "datalist", "embed", "frame", "frameset",
        "iframe", "math", "noembed", "noframes", "noscript", "object", "script",
        "select", "style", "svg", "template", "textarea", "title", "video", "xmp",
    }
)  # fmt: skip

_CELL = {"align", "valign", "bgcolor", "width", "height", "background"}
_ALIGN = {"align"}
ATTRIBUTES: dict[str, set[str]] = {
    "*": {"style", "title", "dir", "lang"},
    "a": {"href"},
    "img": {"src", "srcset", "alt", "width", "height", "border", "align", "hspace", "vspace"},
    "font": {"color", "face", "size"},
    "table": {
        "width", "height", "align", "bgcolor", "border", "cellpadding",
        "cellspacing", "background", "summary", "frame", "rules",
    },
    "tr": {"align", "valign", "bgcolor", "height", "background"},
    "td": _CELL | {"colspan", "rowspan", "nowrap", "scope", "abbr"},
    "th": _CELL | {"colspan", "rowspan", "nowrap", "scope", "abbr"},
    "thead": {"align", "valign", "bgcolor"},
    "tbody": {"align", "valign", "bgcolor"},
    "tfoot": {"align", "valign", "bgcolor"},
    "col": {"span", "width", "align", "valign"},
    "colgroup": {"span", "width", "align", "valign"},
    "caption": _ALIGN,
    "div": _ALIGN,
    "p": _ALIGN,
    "center": set(),
    "hr": {"width", "size", "align", "noshade", "color"},
    "ul": {"type"},
    "ol": {"type", "start", "reversed"},
    "li": {"type", "value"},
    "time": {"datetime"},
    **{h: set(_ALIGN) for h in _HEADINGS},
}  # fmt: skip
# Attributes that hold an image URL, per tag (ammonia checks only src/href).
_IMAGE_URL_ATTRIBUTES = {
    ("img", "src"),
    *((tag, "background") for tag in ("table", "tr", "td", "th")),
}

CSS_PROPERTIES = frozenset(
    {
        "background", "background-color", "border", "border-bottom",
        "border-bottom-color", "border-bottom-style", "border-bottom-width",
        "border-collapse", "border-color", "border-left", "border-left-color",
        "border-left-style", "border-left-width", "border-radius", "border-right",
        "border-right-color", "border-right-style", "border-right-width",
        "border-spacing", "border-style", "border-top", "border-top-color",
        "border-top-style", "border-top-width", "border-width", "caption-side",
        "clear", "color", "direction", "display", "empty-cells", "float", "font",
        "font-family", "font-size", "font-style", "font-variant", "font-weight",
        "height", "letter-spacing", "line-height", "list-style-position",
        "list-style-type", "margin", "margin-bottom", "margin-left",
        "margin-right", "margin-top", "max-height", "max-width", "min-height",
        "min-width", "overflow", "overflow-wrap", "padding", "padding-bottom",
        "padding-left", "padding-right", "padding-top", "table-layout",
        "text-align", "text-decoration", "text-indent", "text-transform",
        "vertical-align", "visibility", "white-space", "width", "word-break",
        "word-spacing", "word-wrap",
    }
)  # fmt: skip
_CSS_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla", "calc"})
_CSS_FUNCTION = re.compile(r"(?<![-\w])([-\w]*)\(")  # anchored: linear time
_CSS_FORBIDDEN = re.compile(r"[\\@]|/\*")

# The schemes nh3 lets through to `_Policy`, which narrows them per attribute.
_URL_SCHEMES = frozenset({"http", "https", "mailto", "cid", "data"})
_LINK_SCHEMES = frozenset({"http", "https", "mailto"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_PROTOCOL_RELATIVE = re.compile(r"[\\/]{2}")
_URL_IGNORED = re.compile(r"[\t\n\r]")  # WHATWG URL: removed anywhere
_URL_TRIM = "".join(map(chr, range(0x21)))  # C0 controls and space, at the ends
_DATA_IMAGE = re.compile(
    r"data:image/(?:png|gif|jpeg|jpg|webp);base64,[A-Za-z0-9+/=\s]*", re.IGNORECASE
)
_SRCSET_DESCRIPTOR = re.compile(r"\d+(?:\.\d+)?[wx]")

# Cheap upper bounds on html5ever's work items (see "Work budget" above).
_TAG = re.compile(r"</?[A-Za-z]")
_FORMATTING_WITH_ATTRIBUTES = re.compile(
    r"<(?:a|b|big|code|em|font|i|nobr|s|small|strike|strong|tt|u)[\t\n\f\r /]",
    re.IGNORECASE,
)
# Measured: after each of these, work grows with the distance to the next '<'.
_SLOW_CHARACTER = re.compile(r"[&\x80-\xbf]")
_LONG_TEXT = re.compile(rf"(?<![^<])[^<]{{{LONG_TEXT},}}")  # anchored: linear time

# text/plain: URLs to linkify, and what to leave off their end.
_TEXT_URL = re.compile(r"(?:https?://|mailto:)[^\s<>\"'`\x00-\x1f\x7f]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\"*_"
_PAIRS = {")": "(", "]": "[", "}": "{"}
_NEWLINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class CleanResult:
    html: str  # safe to put into the sandboxed frame
    blocked_remote: int = 0  # remote images removed; `allow_remote` would show them
    truncated: bool = False  # over the work budget: only the first part is shown


def clean_html(
    html: str,
    *,
    allow_remote: bool,
    cid_url: Callable[[str], str | None] | None = None,
) -> CleanResult:
    """A mail's text/html body as HTML safe to show in the webmail's frame."""
    html = _valid_unicode(html)
    end = _budget_end(html)
    policy = _Policy(allow_remote=allow_remote, cid_url=cid_url)
    cleaned = nh3.clean(
        html[:end],
        tags=set(TAGS),
        clean_content_tags=set(CLEAN_CONTENT_TAGS),
        attributes=ATTRIBUTES,
        attribute_filter=policy,
        strip_comments=True,
        link_rel=LINK_REL,
        set_tag_attribute_values={"a": {"target": LINK_TARGET}},
        url_schemes=set(_URL_SCHEMES),
        filter_style_properties=set(CSS_PROPERTIES),
        # Runs after the filter: only the URLs cid_url made may stay relative.
        url_relative=policy.relative_url,
    )
    return CleanResult(cleaned, policy.blocked_remote, end < len(html))


def text_to_html(text: str) -> str:
    """A text/plain body as safe HTML: escaped, URLs linked, line breaks kept."""
    text = _valid_unicode(text).replace("\x00", "\ufffd")
    body = "<br>".join(_linkify(line) for line in _NEWLINE.split(text))
    return f'<div class="mail-text">{body}</div>'


def link_href(url: str) -> str | None:
    """The href a link may keep (http, https, mailto), normalised; or None."""
    url = _normalise_url(url)
    scheme = _scheme(url)
    return url if scheme in _LINK_SCHEMES else None


class _Policy:
    """nh3's attribute_filter for one clean_html call: it narrows URL schemes
    per attribute, rewrites cid: and counts the remote resources it removes."""

    def __init__(self, *, allow_remote: bool, cid_url: Callable[[str], str | None] | None):
        self.allow_remote = allow_remote
        self.cid_url = cid_url
        self.blocked_remote = 0
        self._made: set[str] = set()  # URLs cid_url returned

    def __call__(self, tag: str, attribute: str, value: str) -> str | None:
        if attribute.startswith("on"):
            return None
        if attribute == "style":
            return _clean_style(value) or None
        if tag == "a" and attribute == "href":
            return link_href(value)
        if (tag, attribute) in _IMAGE_URL_ATTRIBUTES:
            return self._image_url(value, data_allowed=tag == "img")
        if attribute == "srcset":
            return self._srcset(value) if tag == "img" else None
        if attribute in ("src", "href", "poster", "background", "action", "formaction"):
            return None  # a URL attribute this policy does not know
        return value

    def relative_url(self, url: str) -> str | None:
        return url if url in self._made else None

    def _image_url(self, value: str, *, data_allowed: bool) -> str | None:
        url = _normalise_url(value)
        scheme = _scheme(url)
        if scheme == "cid":
            return self._cid(url)
        if scheme in ("http", "https") or (scheme is None and _PROTOCOL_RELATIVE.match(url)):
            return self._remote("https://" + url[2:] if scheme is None else url)
        if scheme == "data" and data_allowed and _DATA_IMAGE.fullmatch(url):
            return url
        return None

    def _cid(self, url: str) -> str | None:
        if self.cid_url is None:
            return None
        # RFC 2392 2: cid:<addr-spec, %hh-encoded>, without the angle brackets
        target = self.cid_url(unquote(url[4:]).strip().strip("<>"))
        if target is None or not _is_own_url(target):
            return None
        self._made.add(target)
        return target

    def _remote(self, url: str) -> str | None:
        if self.allow_remote:
            return url
        self.blocked_remote += 1
        return None

    def _srcset(self, value: str) -> str | None:
        candidates = []
        for candidate in value.split(","):
            url, *descriptors = candidate.split() or [""]
            url = _normalise_url(url)
            plain = len(descriptors) <= 1 and all(map(_SRCSET_DESCRIPTOR.fullmatch, descriptors))
            if _scheme(url) not in ("http", "https") or not plain:
                return None  # anything unusual: drop it all, the src stays
            candidates.append(" ".join([url, *descriptors]))
        return self._remote(", ".join(candidates)) if candidates else None


def _clean_style(style: str) -> str:
    """The declarations of a style attribute that pass CSS_PROPERTIES and the
    value rules (module docstring). nh3 re-parses the result afterwards and
    applies CSS_PROPERTIES again with a real CSS parser; no piece kept here
    holds a function, escape or comment, and joining pieces with ';' cannot
    create one."""
    kept = []
    for declaration in style.split(";"):
        name, colon, value = declaration.partition(":")
        name = name.strip().lower()
        if not colon or name not in CSS_PROPERTIES or _CSS_FORBIDDEN.search(value):
            continue
        functions = {match.group(1).lower() for match in _CSS_FUNCTION.finditer(value)}
        if functions <= _CSS_FUNCTIONS:
            kept.append(f"{name}:{value.strip()}")
    return ";".join(kept)


def _normalise_url(url: str) -> str:
    """As a browser reads an attribute's URL: ends trimmed, tabs and newlines
    dropped (WHATWG URL, basic URL parser), so `jav&#x09;ascript:` shows."""
    return _URL_IGNORED.sub("", url.strip(_URL_TRIM))


def _scheme(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def _is_own_url(url: str) -> bool:
    """Whether a URL from cid_url looks like one of the webmail's: a path on
    the same host, or http(s). cid_url should quote the Content-ID it puts in
    (it comes from the mail); this catches a URL that went wrong anyway."""
    if _scheme(url) in ("http", "https"):
        return True
    return url.startswith("/") and not _PROTOCOL_RELATIVE.match(url)


def _budget_end(html: str) -> int:
    """Where to cut `html` so that html5ever's work stays within the budget."""
    end = len(html)
    for pattern, limit in (
        (_TAG, MAX_TAGS),
        (_FORMATTING_WITH_ATTRIBUTES, MAX_FORMATTING_WITH_ATTRIBUTES),
        # outside long runs of text each costs at most LONG_TEXT
        (_SLOW_CHARACTER, MAX_SLOW_CHARACTERS),
    ):
        over = next(islice(pattern.finditer(html, 0, end), limit, None), None)
        if over is not None:
            end = over.start()
    work = 0
    for run in _LONG_TEXT.finditer(html, 0, end):
        slow = len(_SLOW_CHARACTER.findall(html, run.start(), run.end()))
        cost = slow * (run.end() - run.start())
        if work + cost > MAX_LONG_TEXT_WORK:
            # a prefix of p characters holds at most `slow` of them: p * slow fits
            return run.start() + (MAX_LONG_TEXT_WORK - work) // slow
        work += cost
    return end


def _valid_unicode(text: str) -> str:
    """`text` without lone surrogates (from surrogateescape), which nh3 and
    the HTTP response could not encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _linkify(line: str) -> str:
    out = []
    position = 0
    for match in _TEXT_URL.finditer(line):
        url = _trim_url(match.group())
        href = link_href(url)
        if href is None:
            continue
        start = match.start()
        out.append(_html.escape(line[position:start]))
        out.append(
            f'<a href="{_html.escape(href)}" rel="{LINK_REL}" target="{LINK_TARGET}">'
            f"{_html.escape(url)}</a>"
        )
        position = start + len(url)
    out.append(_html.escape(line[position:]))
    return "".join(out)


def _trim_url(url: str) -> str:
    """A URL found in text without the punctuation that ends its sentence;
    a closing bracket stays if the URL opened one (Wikipedia links)."""
    unmatched = {close: url.count(close) - url.count(open_) for close, open_ in _PAIRS.items()}
    end = len(url)
    while end:
        last = url[end - 1]
        if last in _PAIRS and unmatched[last] > 0:
            unmatched[last] -= 1
        elif last not in _TRAILING:
            break
        end -= 1
    return url[:end]
