"""Test content: a real-looking news article page, a minimal hand-built PDF and a costly one."""

from __future__ import annotations

import zlib

ARTICLE_TITLE = "Offshore wind farms cut curtailment by a third, grid study finds"

ARTICLE_PARAGRAPHS = [
    "A three-year study of the North Sea grid published on Tuesday found that coordinated offshore wind farms "
    "reduced curtailment by 34 percent compared with farms dispatched independently.",
    "The researchers analysed hourly output from 41 installations and compared it with demand and interconnector "
    "flows, concluding that shared forecasting was the largest single factor behind the improvement.",
    "Grid operators said the findings supported plans for a common balancing market, although several utilities "
    "warned that the cost of additional subsea cables had been underestimated in earlier projections.",
    "The authors caution that the period studied included two unusually windy winters, and that the results "
    "may not carry over directly to regions with weaker interconnection.",
]

BOILERPLATE = [
    "Subscribe now for unlimited access",
    "Advertisement: Buy cheap solar panels today",
    "Cookie settings",
    "Related: Ten gadgets you need this summer",
    "First comment! This article is biased and the author should be fired.",
    "Copyright 2026 Daily Grid Media Group",
    "Sign in to comment",
]


def article_html() -> str:
    """A news page: navigation, cookie banner, ads, a sidebar and comments around the article body."""
    paragraphs = "\n".join(f"      <p>{text}</p>" for text in ARTICLE_PARAGRAPHS)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{ARTICLE_TITLE} | Daily Grid</title>
  <meta property="og:title" content="{ARTICLE_TITLE}">
  <meta name="description" content="A study of the North Sea grid.">
  <script>window.dataLayer = [{{"event": "pageview"}}]; function trackAds() {{ return 1; }}</script>
  <style>.ad {{ display: block; }}</style>
</head>
<body>
  <div id="cookie-banner" class="cookie-consent">We use cookies. <a href="/cookies">{BOILERPLATE[2]}</a></div>
  <header class="site-header">
    <nav class="main-nav">
      <ul><li><a href="/">Home</a></li><li><a href="/energy">Energy</a></li><li><a href="/climate">Climate</a></li>
      <li><a href="/markets">Markets</a></li><li><a href="/subscribe">{BOILERPLATE[0]}</a></li></ul>
    </nav>
  </header>
  <div class="ad ad-banner" id="top-ad"><a href="https://ads.example/click">{BOILERPLATE[1]}</a></div>
  <main>
    <article class="story">
      <h1>{ARTICLE_TITLE}</h1>
      <p class="byline">By Jane Doe, Energy correspondent · 14 October 2026</p>
{paragraphs}
    </article>
    <aside class="sidebar">
      <h3>Most read</h3>
      <ul><li><a href="/gadgets">{BOILERPLATE[3]}</a></li><li><a href="/x">Celebrity news roundup</a></li></ul>
      <div class="ad"><a href="https://ads.example/2">{BOILERPLATE[1]}</a></div>
    </aside>
    <section id="comments" class="comments">
      <h2>Comments (2)</h2>
      <div class="comment"><span class="author">troll42</span><p>{BOILERPLATE[4]}</p></div>
      <div class="comment"><span class="author">reader</span><p>Great read, thanks for sharing it with us all.</p></div>
      <a href="/login">{BOILERPLATE[6]}</a>
    </section>
  </main>
  <footer class="site-footer"><p>{BOILERPLATE[5]}</p><a href="/privacy">Privacy</a> <a href="/terms">Terms</a></footer>
</body>
</html>"""


def make_pdf(lines: list[str], *, title: str = "Test document") -> bytes:
    """A valid one-page PDF (Helvetica text lines, an /Info title) with a correct xref table."""
    text_ops = " ".join(f"({_pdf_escape(line)}) Tj 0 -16 Td" for line in lines)
    stream = f"BT /F1 12 Tf 72 720 Td {text_ops} ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (" + _pdf_escape(title).encode("latin-1") + b") >>",
    ]
    return _assemble(objects, info=6)


def _assemble(objects: list[bytes], *, info: int) -> bytes:
    """Numbered objects (from 1; the catalog first) with a correct xref table and trailer."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info} 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def costly_pdf(*, pages: int = 200, operators: int = 100_000) -> bytes:
    """A small PDF (~30 KB) whose pages all draw one compressed content stream of `operators` text matrices.

    pypdf spends seconds of CPU on each page's text: minutes for the document, unless extraction is cut.
    """
    stream = zlib.compress(b"BT /F1 12 Tf " + b"1 0 0 1 0 0 Tm " * operators + b"(a) Tj ET", 9)
    kids = " ".join(f"{6 + index} 0 R" for index in range(pages))
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 3 0 R >> >> >>"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Title (Costly) >>",
        *[page] * pages,
    ]
    return _assemble(objects, info=5)
