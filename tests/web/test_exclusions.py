"""Excluded research domains compared with hosts as the fetcher connects to them."""

from __future__ import annotations

import asyncio
import ipaddress

import httpx
import pytest

from openfusion.upstream.web.config import FetchConfig
from openfusion.upstream.web.exclusions import FetchExcluded, excludes, hides_result, is_blocked
from openfusion.upstream.web.fetch import Fetcher
from openfusion.upstream.web.ssrf import AddressPolicy, Target, resolve_target
from web.local_site import FakeResolver, RecordingTransport


def _target(url: str, *addresses: str) -> Target:
    """The target as the fetcher checks it (resolve_target), `addresses` what its host name resolves to."""

    async def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    anywhere = AddressPolicy(allow_private=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")))
    return asyncio.run(resolve_target(url, policy=anywhere, resolver=resolver))


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/", "http://0x7f.1/", "http://127.0.0.1./", "http://017700000001/", "http://[::ffff:7f00:1]/"],
)
def test_every_spelling_of_an_excluded_address_is_excluded(url: str) -> None:
    assert excludes(_target(url), ["127.0.0.1"])
    assert is_blocked(url, ["127.0.0.1"])


def test_an_address_entry_excludes_the_names_that_resolve_to_it_and_a_name_entry_only_its_names() -> None:
    assert excludes(_target("http://intranet.example/page", "10.0.0.7"), ["10.0.0.7"])
    assert not excludes(_target("http://intranet.example/page", "10.0.0.8"), ["10.0.0.7"])
    assert not excludes(_target("http://10.0.0.7/page"), ["intranet.example"])


@pytest.mark.parametrize(
    ("entry", "url", "excluded"),
    [
        ("Example.COM.", "http://EXAMPLE.com./a", True),
        ("example.com", "http://docs.example.com/a", True),
        ("example.com", "http://notexample.com/a", False),
        ("example.com/private", "http://example.com/Private/x", True),
        ("example.com/private", "http://example.com/public", False),
        ("bücher.example", "http://xn--bcher-kva.example/", True),
        ("0.1", "http://10.0.0.1/", False),  # an address entry is not a suffix of another address
    ],
)
def test_hosts_are_compared_in_one_form(entry: str, url: str, excluded: bool) -> None:
    host = httpx.URL(url).host
    addresses = () if host[0].isdigit() else ("93.184.216.34",)
    assert excludes(_target(url, *addresses), [entry]) is excluded
    assert is_blocked(url, [entry]) is excluded


@pytest.mark.parametrize(
    ("entry", "url", "addresses", "excluded"),
    [
        ("10.0.0.0/8", "http://10.20.30.40/a", (), True),  # an address in the range
        ("10.0.0.0/8", "http://0xa141e28/a", (), True),  # another spelling of it
        ("10.0.0.0/8", "http://intranet.example/a", ("10.9.9.9",), True),  # a name resolving into it
        ("10.0.0.0/8", "http://intranet.example/a", ("93.184.216.34", "10.9.9.9"), True),  # any answer in it
        ("10.0.0.0/8", "http://intranet.example/a", ("11.0.0.1",), False),
        ("10.0.0.0/8", "http://11.0.0.1/8", (), False),  # not a host 10.0.0.0 with a path prefix "8"
        ("10.1.2.3/8", "http://10.200.0.1/", (), True),  # host bits set: the range it is in, as allow_private
        ("192.0.2.0/24", "http://[::ffff:192.0.2.7]/", (), True),  # an IPv4-mapped address is its IPv4 address
        ("2001:db8::/32", "http://[2001:db8:1::5]/a", (), True),
        ("2001:db8::/32", "http://docs.example/a", ("2001:db8::80",), True),
        ("2001:db8::/32", "http://[2001:db9::1]/a", (), False),
        ("[2001:db8::]/32", "http://[2001:db8:1::5]/a", (), True),  # the address as a URL spells it
        ("10.0.0.7/private", "http://10.0.0.7/private/a", (), True),  # an address with a path is no range
        # One family: an IPv4 range written IPv4-mapped holds IPv4 addresses, and an IPv4 range mapped ones.
        ("::ffff:10.0.0.0/104", "http://10.20.30.40/a", (), True),
        ("::ffff:10.0.0.0/104", "http://intranet.example/a", ("10.9.9.9",), True),
        ("::ffff:10.0.0.0/104", "http://[::ffff:10.1.2.3]/a", (), True),
        ("::ffff:10.0.0.0/104", "http://11.0.0.1/a", (), False),
        ("[::ffff:10.0.0.0]/104", "http://10.20.30.40/a", (), True),
        ("::ffff:0:0/96", "http://93.184.216.34/a", (), True),  # every IPv4 address
        ("10.0.0.0/8", "http://intranet.example/a", ("::ffff:10.9.9.9",), True),
        ("::ffff:10.0.0.7", "http://10.0.0.7/a", (), True),  # one address, written IPv4-mapped
        ("2001:db8::/32", "http://10.0.0.1/a", (), False),
    ],
)
def test_an_address_range_excludes_every_address_in_it(
    entry: str, url: str, addresses: tuple[str, ...], excluded: bool
) -> None:
    assert excludes(_target(url, *addresses), [entry]) is excluded
    # Before any lookup: a URL's own address is judged; a name's addresses are not known yet.
    assert is_blocked(url, [entry]) is (excluded and not addresses)


@pytest.mark.parametrize(
    ("location", "excluded"),
    [
        ("http://docs.excluded.test/page", "excluded.test"),  # a subdomain of an excluded name
        ("http://public.test/private/page", "public.test/private"),  # an excluded path of the same host
        ("http://10.1.2.3/page", "10.0.0.0/8"),  # an address in an excluded range
    ],
)
async def test_a_redirect_to_an_excluded_url_is_refused_before_its_name_is_looked_up(
    location: str, excluded: str
) -> None:
    transport = RecordingTransport(lambda _: httpx.Response(302, headers={"location": location}))
    resolver = FakeResolver({"public.test": ["93.184.216.34"], "docs.excluded.test": ["93.184.216.35"]})
    http = httpx.AsyncClient(transport=transport, trust_env=False)
    fetcher = Fetcher(FetchConfig(allow_private=["10.0.0.0/8"]), http=http, resolver=resolver)
    with pytest.raises(FetchExcluded):
        await fetcher.fetch("http://public.test/start", excluded=[excluded])
    assert resolver.calls == [("public.test", 80)]  # the first hop's lookup only
    assert [str(request.url) for request in transport.requests] == ["http://93.184.216.34/start"]


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        ("https://kept.example/excluded.example", False),
        ("https://notexcluded.example/", False),
        ("https://excluded.example.kept.example/", False),
        ("https://kept.example/?u=https://excluded.example/", False),
        ("https://kept.example/docs", False),  # the entry's host with a path prefix is another host's
        ("https://excluded.example/docs/page", True),
        ("https://excluded.example/blog", False),  # outside the entry's path prefix
        ("https://excluded%2Eexample/docs", True),
        ("https://excluded.example%5Cdocs/", False),  # %5C is no slash: the host is not excluded.example
        ("https://[::ffff:10.1.2.3]/", True),  # an address in the excluded range, written IPv4-mapped
        ("https://:80/", True),  # no host to judge: kept from the model
    ],
)
def test_a_search_result_is_hidden_by_what_its_url_says_as_a_browser_reads_it(url: str, hidden: bool) -> None:
    assert hides_result(url, ["excluded.example/docs", "10.0.0.0/8"]) is hidden
    assert hides_result(url, []) is False
