"""Fetching from a real local web site on loopback, allowed explicitly, through both HTTP transports."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest

from openfusion.upstream.web.errors import FetchFailed, FetchRefused
from openfusion.upstream.web.fetch import Fetcher, truncate
from web.local_site import PDF_LINES, SECRET, Site
from web.pages import ARTICLE_PARAGRAPHS, ARTICLE_TITLE, BOILERPLATE

MakeFetcher = Callable[..., Fetcher]
SiteUrl = Callable[[str], str]


async def test_an_article_page_yields_its_main_text_without_boilerplate(
    make_fetcher: MakeFetcher, site_url: SiteUrl, site: Site
) -> None:
    page = await make_fetcher().fetch(site_url("/article"))
    assert page.title == ARTICLE_TITLE
    assert page.content_type == "text/html"
    assert page.final_url == page.url == site_url("/article")
    for paragraph in ARTICLE_PARAGRAPHS:
        assert paragraph in page.text
    for noise in [*BOILERPLATE, "Most read", "trackAds", "Privacy"]:
        assert noise not in page.text
    assert not page.truncated
    assert site.paths() == ["/article"]


async def test_the_host_header_names_the_site_not_the_address(
    make_fetcher: MakeFetcher, site_url: SiteUrl, site: Site, site_port: int
) -> None:
    page = await make_fetcher().fetch(site_url("/host"))
    assert page.text == f"host=site.test:{site_port}"
    assert site.hits[0].headers["connection"] == "close"


async def test_without_the_allow_list_the_loopback_site_is_refused(
    make_fetcher: MakeFetcher, site_url: SiteUrl, site: Site, site_port: int
) -> None:
    fetcher = make_fetcher(allow_hosts=[])
    with pytest.raises(FetchRefused, match=r"site\.test resolves to a loopback address"):
        await fetcher.fetch(site_url("/article"))
    with pytest.raises(FetchRefused, match="loopback"):
        await fetcher.fetch(f"http://127.0.0.1:{site_port}/article")
    assert site.hits == []


async def test_allow_private_lets_a_loopback_page_through(
    make_fetcher: MakeFetcher, site: Site, site_port: int
) -> None:
    page = await make_fetcher(allow_hosts=[], allow_private=["127.0.0.0/8"]).fetch(
        f"http://127.0.0.1:{site_port}/plain"
    )
    assert page.text == "Plain facts.\nLine two."
    assert site.paths() == ["/plain"]


@pytest.mark.parametrize(
    ("path", "refused_because"),
    [
        ("/redirect/metadata", "169.254.169.254 is a link-local address"),
        ("/redirect/loopback-ip", "127.0.0.1 is a loopback address"),
        ("/redirect/rebound", "rebound.test resolves to a loopback address"),
        ("/redirect/ftp", "scheme 'ftp'"),
    ],
)
async def test_a_redirect_into_a_refused_target_is_refused_and_nothing_leaks(
    make_fetcher: MakeFetcher, site_url: SiteUrl, site: Site, path: str, refused_because: str
) -> None:
    with pytest.raises(FetchRefused) as refused:
        await make_fetcher().fetch(site_url(path))
    assert refused_because in refused.value.message
    assert "redirect" in refused.value.message
    assert SECRET not in refused.value.message
    assert site.paths() == [path]  # the allowed hop only: /secret was never requested


async def test_redirects_on_the_allowed_site_are_followed(
    make_fetcher: MakeFetcher, site_url: SiteUrl, site: Site
) -> None:
    page = await make_fetcher().fetch(site_url("/redirect/ok"))
    assert page.url == site_url("/redirect/ok")
    assert page.final_url == site_url("/article")
    assert page.title == ARTICLE_TITLE
    assert site.paths() == ["/redirect/ok", "/article"]


async def test_at_most_five_redirects_are_followed(make_fetcher: MakeFetcher, site_url: SiteUrl, site: Site) -> None:
    with pytest.raises(FetchFailed, match="too many redirects"):
        await make_fetcher().fetch(site_url("/redirect/loop/0"))
    assert site.paths() == [f"/redirect/loop/{step}" for step in range(6)]


async def test_an_endless_body_stops_at_the_byte_cap(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    page = await make_fetcher(max_bytes=100_000, max_chars=500_000).fetch(site_url("/infinite"))
    assert page.truncated
    body, marker = page.text.split("\n\n[… truncated: ")
    assert 99_000 <= len(body) <= 100_000
    assert marker == "only the first 100000 bytes were downloaded]"


async def test_the_byte_cap_counts_decompressed_bytes(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    page = await make_fetcher(max_bytes=50_000).fetch(site_url("/gzip-bomb"))
    assert page.truncated
    assert len(page.text) <= 20_000


@pytest.mark.parametrize("framing", ["zlib", "raw"])
async def test_a_deflated_page_is_read_in_either_framing(
    make_fetcher: MakeFetcher, site_url: SiteUrl, framing: str
) -> None:
    page = await make_fetcher().fetch(site_url(f"/deflate/{framing}"))
    assert page.text == "Deflated facts."


@pytest.mark.parametrize("coding", ["gzip, gzip", "br", "zstd"])
async def test_a_content_coding_not_asked_for_is_refused(
    make_fetcher: MakeFetcher, site_url: SiteUrl, coding: str
) -> None:
    with pytest.raises(FetchFailed, match=rf"the content encoding '{coding}' is not supported"):
        await make_fetcher().fetch(site_url(f"/encoded/{coding}"))


async def test_a_gzip_page_labelled_identity_too_is_read(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    page = await make_fetcher().fetch(site_url("/encoded/identity, gzip"))
    assert page.text == "Encoded facts."


async def test_text_is_cut_to_max_chars_with_a_marker(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    page = await make_fetcher(max_chars=400).fetch(site_url("/article"))
    assert page.truncated
    assert len(page.text) <= 400
    assert page.text.startswith(ARTICLE_TITLE)
    assert page.text.endswith("[… truncated: the text continues beyond 400 characters]")


async def test_a_server_that_does_not_answer_times_out(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"timed out|in time"):
        await make_fetcher(timeout_s=0.3).fetch(site_url("/slow"))
    assert time.monotonic() - started < 2.0


async def test_a_trickling_body_hits_the_total_timeout(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    """Each byte arrives well within a read timeout; the total deadline still ends the fetch."""
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"timed out after 0\.5 s"):
        await make_fetcher(timeout_s=0.5).fetch(site_url("/drip"))
    assert time.monotonic() - started < 2.0


async def test_plain_text_json_and_pdf_are_read(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    fetcher = make_fetcher()
    plain = await fetcher.fetch(site_url("/plain"))
    assert (plain.content_type, plain.title, plain.text) == ("text/plain", None, "Plain facts.\nLine two.")
    data = await fetcher.fetch(site_url("/json"))
    assert data.content_type == "application/json"
    assert data.text == orjson.dumps({"b": [1, 2], "a": "x"}, option=orjson.OPT_INDENT_2).decode()
    pdf = await fetcher.fetch(site_url("/pdf"))
    assert (pdf.content_type, pdf.title) == ("application/pdf", "Grid report")
    assert pdf.text == "\n".join(PDF_LINES)


async def test_an_unlabelled_body_is_sniffed(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    page = await make_fetcher().fetch(site_url("/unlabelled-html"))
    assert (page.content_type, page.title) == ("text/html", ARTICLE_TITLE)
    with pytest.raises(FetchFailed, match="binary data"):
        await make_fetcher().fetch(site_url("/unlabelled-binary"))


async def test_unsupported_types_and_oversized_pdfs_are_refused_clearly(
    make_fetcher: MakeFetcher, site_url: SiteUrl
) -> None:
    fetcher = make_fetcher()
    with pytest.raises(FetchFailed, match="unsupported content type image/png"):
        await fetcher.fetch(site_url("/image"))
    with pytest.raises(FetchFailed, match="PDF is larger than"):
        await fetcher.fetch(site_url("/big-pdf"))


async def test_http_errors_fail_without_the_error_body(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    with pytest.raises(FetchFailed) as failed:
        await make_fetcher().fetch(site_url("/missing"))
    assert failed.value.message == "site.test answered HTTP 404."


async def test_a_closed_port_fails_cleanly(make_fetcher: MakeFetcher) -> None:
    with pytest.raises(FetchFailed, match=r"could not connect to site\.test"):
        await make_fetcher().fetch("http://site.test:1/")


async def test_cookies_from_one_fetch_are_not_sent_with_the_next(make_fetcher: MakeFetcher, site_url: SiteUrl) -> None:
    fetcher = make_fetcher()
    await fetcher.fetch(site_url("/cookie"))
    page = await fetcher.fetch(site_url("/echo-cookie"))
    assert page.text == "cookie=None"


def test_truncate_keeps_short_text_and_marks_cut_text() -> None:
    assert truncate("short", max_chars=100) == ("short", False)
    text, cut = truncate("x" * 1000, max_chars=200)
    assert cut and len(text) <= 200 and text.startswith("xxx") and "truncated" in text
