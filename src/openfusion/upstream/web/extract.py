"""Turn a fetched body into readable text by content type: HTML (trafilatura), plain text, JSON, PDF (pypdf)."""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson

from openfusion.upstream.web.errors import FetchFailed

logger = logging.getLogger(__name__)

ContentKind = Literal["html", "text", "json", "pdf"]

# Media types by what we do with them; `+json` / `+xml` suffixes and other `text/*` are matched in `content_kind`.
_KINDS: dict[str, ContentKind] = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/plain": "text",
    "text/markdown": "text",
    "text/csv": "text",
    "text/xml": "text",
    "application/xml": "text",
    "application/json": "json",
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
}
# Servers that do not say what they send: look at the bytes instead.
_UNLABELLED = {"", "application/octet-stream", "binary/octet-stream", "application/unknown"}
# The encodings of the WHATWG Encoding Standard (what browsers read pages in), by Python codec name. A page may
# name any codec Python has: some are not text (base64, zlib: decoding raises), and punycode decodes in quadratic
# time (a 1 MB page: minutes of CPU, in a thread nothing can stop).
_PAGE_ENCODINGS = frozenset(
    codecs.lookup(label).name
    for label in (
        "utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-16-le", "ascii", "latin-1", "cp866", "iso8859-2",
        "iso8859-3", "iso8859-4", "iso8859-5", "iso8859-6", "iso8859-7", "iso8859-8", "iso8859-10", "iso8859-13",
        "iso8859-14", "iso8859-15", "iso8859-16", "koi8-r", "koi8-u", "mac-roman", "mac-cyrillic", "cp874",
        "tis-620", "cp1250", "cp1251", "cp1252", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
        "gbk", "gb2312", "gb18030", "big5", "big5hkscs", "euc-jp", "iso2022-jp", "shift_jis", "cp932", "euc-kr",
        "cp949",
    )
)  # fmt: skip
# RFC 6838's restricted names, type/subtype: no spaces, quotes or angle brackets, at most 127 characters each.
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Extracted:
    """The readable text of a body and its title, if it has one."""

    title: str | None
    text: str
    # What was left unread, when something was (a PDF's pages past max_pages).
    cut: str | None = None


def parse_content_type(header: str | None) -> tuple[str, str | None]:
    """A Content-Type header as (media type in lower case, charset or None).

    A media type not of the form `type/subtype` (RFC 6838 names) is taken as none: the body is sniffed,
    as a browser would, and the page's header text never reaches the model outside its untrusted block.
    """
    if not header:
        return "", None
    media_type, *params = header.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip("\"'") or None
    media_type = media_type.strip().lower()
    return (media_type if _MEDIA_TYPE.match(media_type) else ""), charset


def content_kind(media_type: str) -> ContentKind | None:
    """What a media type is read as, or None for types web_fetch refuses."""
    if media_type in _KINDS:
        return _KINDS[media_type]
    if media_type.endswith("+json"):
        return "json"
    if media_type.endswith("+xml") or media_type.startswith("text/"):
        return "text"
    return None


def is_unlabelled(media_type: str) -> bool:
    """Whether the server gave no useful media type (the body is sniffed then)."""
    return media_type in _UNLABELLED


def sniff_kind(body: bytes) -> ContentKind | None:
    """Guess the kind of an unlabelled body from its first bytes; None when it is not text."""
    head = body[:1024].lstrip()
    if head.startswith(b"%PDF-"):
        return "pdf"
    lowered = head.lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "html"
    if lowered.startswith((b"{", b"[")):
        return "json"
    try:
        body[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the 4096-byte boundary is still text.
        if exc.start < 4092:
            return None
    return "text" if b"\x00" not in body[:4096] else None


def extract(
    kind: ContentKind, body: bytes, *, charset: str | None, url: str, max_chars: int, max_pages: int = 50
) -> Extracted:
    """The readable text of `body` (CPU-bound and unbounded on hostile input: see extract_pool)."""
    extracted = _EXTRACTORS[kind](body, charset, url, max_chars, max_pages)
    text = _BLANK_LINES.sub("\n\n", _CONTROL.sub("", extracted.text)).strip()
    title = " ".join(extracted.title.split()) if extracted.title else None
    return Extracted(title=title or None, text=text, cut=extracted.cut)


def decode_text(body: bytes, charset: str | None) -> str:
    """Decode with the declared charset when it is one web pages are written in, else UTF-8; bad bytes become
    U+FFFD."""
    encoding = "utf-8"
    if charset:
        with contextlib.suppress(LookupError):
            name = codecs.lookup(charset).name
            encoding = name if name in _PAGE_ENCODINGS else encoding
    return body.decode(encoding, errors="replace").lstrip("\ufeff")


def _html(body: bytes, charset: str | None, url: str, max_chars: int, max_pages: int) -> Extracted:
    import trafilatura  # imported lazily: it is heavy and only fetches need it

    # Without a declared charset trafilatura reads the bytes itself (it honours <meta charset>).
    html: str | bytes = decode_text(body, charset) if charset else body
    try:
        text = trafilatura.extract(
            html,
            url=url,
            # Plain text, not markdown: markdown output escapes `_` and `*`, garbling identifiers and quotes.
            output_format="txt",
            include_comments=False,
            include_tables=True,
            include_links=False,
            include_images=False,
        )
        metadata = trafilatura.extract_metadata(html, default_url=url)
        if not text:
            # No main content found (a tiny or script-built page): fall back to all visible text.
            text = trafilatura.html2txt(html)
    except MemoryError:  # the worker's memory limit: it says so itself
        raise
    except Exception as exc:  # a parser bug on hostile HTML must not take the panelist down
        logger.info("HTML extraction failed for %s: %s", url, type(exc).__name__)
        raise FetchFailed("the page's HTML could not be read.") from None
    return Extracted(title=metadata.title if metadata is not None else None, text=text or "")


def _text(body: bytes, charset: str | None, url: str, max_chars: int, max_pages: int) -> Extracted:
    return Extracted(title=None, text=decode_text(body, charset))


def _json(body: bytes, charset: str | None, url: str, max_chars: int, max_pages: int) -> Extracted:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Extracted(title=None, text=decode_text(body, charset))
    return Extracted(title=None, text=orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _pdf(body: bytes, charset: str | None, url: str, max_chars: int, max_pages: int) -> Extracted:
    from pypdf import PdfReader  # imported lazily, like trafilatura

    try:
        reader = PdfReader(io.BytesIO(body))
        if reader.is_encrypted and not reader.decrypt(""):
            raise FetchFailed("the PDF is encrypted.")
        pages: list[str] = []
        size = 0
        count = len(reader.pages)
        for page in reader.pages[:max_pages]:
            pages.append(page.extract_text() or "")
            size += len(pages[-1])
            if size > max_chars:  # the rest would be truncated anyway
                break
        # Stopped by the page limit (not by max_chars, whose truncation marker says so itself).
        cut = f"only the first {max_pages} of {count} pages were read" if len(pages) == max_pages < count else None
        title = reader.metadata.title if reader.metadata is not None else None
    except (FetchFailed, MemoryError):  # a MemoryError is the worker's memory limit: it says so itself
        raise
    except Exception as exc:  # pypdf raises many types on malformed files
        logger.info("PDF extraction failed for %s: %s", url, type(exc).__name__)
        raise FetchFailed("the PDF could not be read.") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise FetchFailed("the PDF has no extractable text (it may be scanned images).")
    return Extracted(title=str(title) if title else None, text=text, cut=cut)


_EXTRACTORS: dict[ContentKind, Callable[[bytes, str | None, str, int, int], Extracted]] = {
    "html": _html,
    "text": _text,
    "json": _json,
    "pdf": _pdf,
}
