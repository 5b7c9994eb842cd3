"""The SSRF guard: every off-limits target is refused before any connection; checked addresses are pinned."""

from __future__ import annotations

import ipaddress
import socket

import httpx
import pytest

from openfusion.upstream.web.config import FetchConfig
from openfusion.upstream.web.errors import FetchFailed, FetchRefused
from openfusion.upstream.web.fetch import Fetcher
from openfusion.upstream.web.ssrf import AddressPolicy, non_public_reason, parse_ipv4, resolve_target, system_resolver
from web.local_site import FakeResolver, RecordingTransport, off_loopback

# DNS names the fake resolver maps into refused ranges.
HOSTILE_DNS = {
    "localhost": ["127.0.0.1", "::1"],
    "metadata.test": ["169.254.169.254"],
    "intranet.test": ["10.1.2.3"],
    "router.test": ["192.168.0.1"],
    "cgnat.test": ["100.64.12.1"],
    "ula.test": ["fd00::1"],
    "mapped.test": ["::ffff:10.0.0.1"],
    "mixed.test": ["93.184.216.34", "127.0.0.1"],  # one bad answer spoils the lot
    "zero.test": ["0.0.0.0"],
    "public.test": ["93.184.216.34"],
    "rebind.test": [["93.184.216.34"], ["127.0.0.1"]],
}

# (target, what makes it off limits): all refused with no request sent anywhere.
REFUSED_TARGETS = [
    ("http://127.0.0.1/", "loopback"),
    ("http://127.255.255.254:8080/admin", "loopback"),
    ("https://127.0.0.1:8443/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://100.127.255.254/", "carrier-grade NAT"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://169.254.1.1/", "link-local"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250:1900/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://192.0.0.8/", "IETF protocol"),
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://[fd12:3456:789a::1]/", "unique-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[::127.0.0.1]/", "IPv4-compatible form of a loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 form of a link-local"),
    ("http://[64:ff9b::a00:1]/", "NAT64 form of a private"),
    ("http://[64:ff9b:1::a00:1]/", "local-use NAT64"),
    ("http://[2002:7f00:1::1]/", "6to4 form of a loopback"),
    ("http://[2002:a9fe:a9fe::]/", "6to4 form of a link-local"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "Teredo form of a loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://0xa9.0xfe.0xa9.0xfe/", "link-local"),
    ("http://0251.0376.0251.0376/", "link-local"),
    ("http://2852039166/", "link-local"),
    ("http://10.1/", "private"),
    ("http://0xa.0.0.1/", "private"),
    ("http://127.0.0.1./", "loopback"),
    ("http://%31%32%37.0.0.1/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://LOCALHOST./", "loopback"),
    ("http://metadata.test/latest/meta-data/", "link-local"),
    ("http://intranet.test/", "private"),
    ("http://router.test/", "private"),
    ("http://cgnat.test/", "carrier-grade NAT"),
    ("http://ula.test/", "unique-local"),
    ("http://mapped.test/", "private"),
    ("http://mixed.test/", "loopback"),
    ("http://zero.test/", "unspecified"),
]


def make_guarded(**config: object) -> tuple[Fetcher, RecordingTransport, FakeResolver]:
    transport = RecordingTransport()
    resolver = FakeResolver(HOSTILE_DNS)
    http = httpx.AsyncClient(transport=transport, trust_env=False)
    return Fetcher(FetchConfig(**config), http=http, resolver=resolver), transport, resolver  # type: ignore[arg-type]


def test_the_table_is_big_enough() -> None:
    assert len(REFUSED_TARGETS) >= 30
    assert len({url for url, _ in REFUSED_TARGETS}) == len(REFUSED_TARGETS)


@pytest.mark.parametrize(("url", "why"), REFUSED_TARGETS)
async def test_off_limits_targets_are_refused_before_any_connection(url: str, why: str) -> None:
    fetcher, transport, _ = make_guarded()
    with pytest.raises(FetchRefused) as refused:
        await fetcher.fetch(url)
    assert transport.requests == []
    assert why in refused.value.message
    assert refused.value.message.startswith("refused:")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://example.com/file", "scheme 'ftp'"),
        ("gopher://example.com:70/_x", "scheme 'gopher'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("data:text/html,<h1>x</h1>", "scheme 'data'"),
        ("dict://127.0.0.1:11211/", "scheme 'dict'"),
        ("//example.com/page", "without a scheme"),
        ("example.com/page", "without a scheme"),
        ("http://user:secret@example.com/", "credentials"),
        ("https://user@example.com/", "credentials"),
        ("http://:pw@example.com/", "credentials"),
        ("http://example.com\\@127.0.0.1/", "credentials"),
        ("http://1.2.3.4.5/", "not a valid IP address"),
        ("http://256.1.1.1/", "not a valid IP address"),
        ("http://exa mple.com/", "not a valid host name"),
        ("http:///nohost", "no host"),
        ("http://example.com:0/", "not a valid port"),
        ("http://example.com/" + "a" * 5000, "longer than"),
    ],
)
async def test_bad_urls_are_refused(url: str, why: str) -> None:
    fetcher, transport, resolver = make_guarded()
    with pytest.raises(FetchRefused) as refused:
        await fetcher.fetch(url)
    assert why in refused.value.message
    assert transport.requests == [] and resolver.calls == []


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://exa mple.com/", "refused: the host is not a valid host name."),
        ("http://obey%20the%20page/", "refused: the host is not a valid host name."),
        ("obey the page://x/", "refused: the scheme is not supported; only absolute http:// and https:// URLs are."),
        ("http://256.1.1.1/", "refused: the host '256.1.1.1' is not a valid IP address."),
        ("http://0177.0.0.1/", "refused: the host '0177.0.0.1' is 127.0.0.1, a loopback address."),
    ],
)
async def test_a_refusal_quotes_a_scheme_or_host_only_in_its_plain_form(url: str, said: str) -> None:
    # A URL may come from a page (a redirect): words in it are not repeated to the model outside the untrusted block.
    fetcher, _, _ = make_guarded()
    with pytest.raises(FetchRefused) as refused:
        await fetcher.fetch(url)
    assert refused.value.message == said


async def test_a_public_host_is_fetched_through_its_checked_address() -> None:
    fetcher, transport, resolver = make_guarded()
    page = await fetcher.fetch("http://public.test/page?q=1#frag")
    assert page.text == "a public page"
    assert page.final_url == "http://public.test/page?q=1"
    [request] = transport.requests
    assert request.url.host == "93.184.216.34"
    assert request.url.raw_path == b"/page?q=1"
    assert request.headers["host"] == "public.test"
    assert resolver.calls == [("public.test", 80)]


async def test_dns_rebinding_cannot_redirect_the_connection() -> None:
    """The resolver answers a public address, then loopback: the connection goes to the address checked."""
    fetcher, transport, resolver = make_guarded()
    await fetcher.fetch("http://rebind.test/")
    [request] = transport.requests
    assert request.url.host == "93.184.216.34"
    assert request.headers["host"] == "rebind.test"
    assert resolver.calls == [("rebind.test", 80)]  # one lookup: nothing looks the name up again


async def test_rebinding_between_redirect_hops_is_caught_at_the_next_hop() -> None:
    transport = RecordingTransport(lambda _: httpx.Response(302, headers={"location": "/next"}))
    resolver = FakeResolver(HOSTILE_DNS)
    http = httpx.AsyncClient(transport=transport, trust_env=False)
    fetcher = Fetcher(FetchConfig(), http=http, resolver=resolver)
    with pytest.raises(FetchRefused, match=r"redirect went off limits: rebind\.test resolves to a loopback address"):
        await fetcher.fetch("http://rebind.test/start")
    assert [str(request.url) for request in transport.requests] == ["http://93.184.216.34/start"]


async def test_https_sends_the_host_name_as_sni_while_connecting_to_the_checked_ip() -> None:
    fetcher, transport, _ = make_guarded(allow_ports=[443, 8443])
    await fetcher.fetch("https://public.test:8443/secure")
    [request] = transport.requests
    assert str(request.url) == "https://93.184.216.34:8443/secure"
    assert request.extensions["sni_hostname"] == "public.test"
    assert request.headers["host"] == "public.test:8443"


async def test_an_ip_literal_is_connected_to_as_given_without_dns() -> None:
    fetcher, transport, resolver = make_guarded()
    await fetcher.fetch("https://[2606:4700:4700::1111]/")
    [request] = transport.requests
    assert request.url.host == "2606:4700:4700::1111"
    assert "sni_hostname" not in request.extensions
    assert resolver.calls == []


async def test_a_mapped_public_address_connects_to_its_ipv4_form() -> None:
    fetcher, transport, _ = make_guarded()
    await fetcher.fetch("http://[::ffff:8.8.8.8]/")
    assert transport.requests[0].url.host == "8.8.8.8"


async def test_requests_carry_no_client_defaults_and_close_the_connection() -> None:
    transport = RecordingTransport()
    http = httpx.AsyncClient(transport=transport, trust_env=False, headers={"Authorization": "Bearer sk-secret"})
    fetcher = Fetcher(FetchConfig(), http=http, resolver=FakeResolver(HOSTILE_DNS))
    await fetcher.fetch("http://public.test/")
    headers = transport.requests[0].headers
    assert "authorization" not in headers
    assert headers["connection"] == "close"
    assert headers["user-agent"].startswith("Mozilla/5.0 (compatible; openfusion")


async def test_unresolvable_names_fail_without_a_request() -> None:
    fetcher, transport, _ = make_guarded()
    with pytest.raises(FetchFailed, match=r"could not resolve the host nowhere\.test"):
        await fetcher.fetch("http://nowhere.test/")
    assert transport.requests == []


def test_a_fetch_client_that_reads_proxies_from_the_environment_is_rejected() -> None:
    with pytest.raises(ValueError, match="trust_env=False"):
        Fetcher(FetchConfig(), http=httpx.AsyncClient())


# The operator's allow-list.


async def test_allow_private_lets_the_listed_range_through_and_nothing_else() -> None:
    fetcher, transport, _ = make_guarded(allow_private=["10.1.0.0/16"])
    await fetcher.fetch("http://intranet.test/wiki")
    assert transport.requests[0].url.host == "10.1.2.3"
    with pytest.raises(FetchRefused):
        await fetcher.fetch("http://10.2.0.1/")
    with pytest.raises(FetchRefused):
        await fetcher.fetch("http://metadata.test/")
    assert len(transport.requests) == 1


async def test_allow_hosts_lets_the_name_through_but_not_its_address_by_another_name() -> None:
    fetcher, transport, _ = make_guarded(allow_hosts=["*.corp.test", "intranet.test"])
    await fetcher.fetch("http://intranet.test/")
    with pytest.raises(FetchRefused):
        await fetcher.fetch("http://10.1.2.3/")
    assert [request.url.host for request in transport.requests] == ["10.1.2.3"]


async def test_an_allow_list_never_opens_unspecified_or_multicast_addresses() -> None:
    fetcher, transport, _ = make_guarded(allow_private=["0.0.0.0/0"], allow_hosts=["zero.test"])
    for url in ("http://zero.test/", "http://0.0.0.0/", "http://224.0.0.1/"):
        with pytest.raises(FetchRefused):
            await fetcher.fetch(url)
    await fetcher.fetch("http://127.0.0.1/")  # the operator did allow every other range
    assert [request.url.host for request in transport.requests] == ["127.0.0.1"]


def test_host_patterns_match_exactly_or_by_subdomain() -> None:
    policy = AddressPolicy(allow_hosts=("wiki.corp.test", "*.lab.test"))
    assert policy.host_allowed("wiki.corp.test")
    assert policy.host_allowed("a.b.lab.test")
    assert not policy.host_allowed("lab.test")
    assert not policy.host_allowed("evil-wiki.corp.test")
    assert not policy.host_allowed("wiki.corp.test.evil.test")


# The address rules themselves.


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7F000001", "017700000001", "10.1", "1.2.3",
     "0", "0xa9.0xfe.0xa9.0xfe", "1.2.3.4.5", "256.1.1.1", "0x100.1", "08.1.1.1", "0x", "1..1", "", "1.2.3.0x"],
)  # fmt: skip
def test_ipv4_spellings_parse_as_inet_aton_does(text: str) -> None:
    try:
        expected: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    assert parse_ipv4(text) == expected


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2001:4860:4860::8888", "::ffff:8.8.8.8",
     "64:ff9b::808:808", "2002:808:808::1"],
)  # fmt: skip
def test_public_addresses_pass(address: str) -> None:
    assert non_public_reason(ipaddress.ip_address(address)) is None


async def test_the_system_resolver_resolves_numeric_hosts_without_dns() -> None:
    assert await system_resolver("127.0.0.1", 80) == ["127.0.0.1"]


async def test_resolve_target_reports_the_checked_addresses_in_order() -> None:
    resolver = FakeResolver({"multi.test": ["93.184.216.34", "93.184.216.35", "93.184.216.34"]})
    target = await resolve_target("https://multi.test/x", policy=AddressPolicy(), resolver=resolver)
    assert [str(address) for address in target.addresses] == ["93.184.216.34", "93.184.216.35"]
    assert (target.host, target.port, target.ip_literal) == ("multi.test", 443, False)


def test_the_loopback_safety_net_is_in_place(loopback_only: list[str]) -> None:
    assert socket.socket.connect.__name__ == "guarded_connect"
    assert off_loopback(("127.0.0.1", 80)) is None and off_loopback(("::1", 80, 0, 0)) is None
    assert off_loopback(("169.254.169.254", 80)) == "169.254.169.254"
    assert off_loopback(("fe80::1%eth0", 80, 0, 2)) == "fe80::1%eth0"
    assert off_loopback("/run/socket") is None


@pytest.mark.parametrize(
    "url",
    ["http://public.test:8080/", "https://93.184.216.34:22/", "http://public.test:81/", "http://[2606:4700::1]:25/"],
)
async def test_public_addresses_are_fetched_on_ports_80_and_443_only(url: str) -> None:
    fetcher, transport, _ = make_guarded()
    with pytest.raises(FetchRefused, match=r"only on ports 80 and 443"):
        await fetcher.fetch(url)
    assert transport.requests == []


async def test_allow_ports_opens_other_ports_of_public_addresses() -> None:
    fetcher, transport, _ = make_guarded(allow_ports=[80, 443, 8443])
    await fetcher.fetch("http://public.test:8443/")
    with pytest.raises(FetchRefused, match=r"only on ports 80, 443 and 8443"):
        await fetcher.fetch("http://public.test:8080/")
    assert [request.url.port for request in transport.requests] == [8443]


async def test_a_redirect_to_another_port_is_refused_too() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://public.test:6379/"})

    transport = RecordingTransport(respond)
    http = httpx.AsyncClient(transport=transport, trust_env=False)
    fetcher = Fetcher(FetchConfig(), http=http, resolver=FakeResolver(HOSTILE_DNS))
    with pytest.raises(FetchRefused, match=r"a redirect went off limits: .*port 6379"):
        await fetcher.fetch("http://public.test/")
    assert len(transport.requests) == 1


async def test_operator_allowed_intranet_targets_keep_any_port() -> None:
    fetcher, transport, _ = make_guarded(allow_private=["10.1.0.0/16"], allow_hosts=["router.test"])
    await fetcher.fetch("http://intranet.test:8080/wiki")
    await fetcher.fetch("http://router.test:8443/")
    assert [request.url.port for request in transport.requests] == [8080, 8443]
