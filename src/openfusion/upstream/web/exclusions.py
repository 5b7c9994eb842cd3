"""Domains a request excludes from research, compared with hosts in the one form the fetcher connects to.

An exclusion is kept, not just the excluded page's text: the fetcher asks `excludes` about every hop
(the URL the model gave and each redirect) before it sends anything, so an excluded site never gets a
request. Hosts are compared as the SSRF guard parses them, so `2130706433`, `0x7f.1` and `127.0.0.1.`
are all `127.0.0.1`, and `Example.COM.` is `example.com`; an entry that names an IP address also
excludes every host name that resolves to it, and one that is an address range (`10.0.0.0/8`,
`2001:db8::/32`) every address in it and every host name resolving into it. Ranges and addresses are
compared in one family, IPv6, an IPv4 one as its IPv4-mapped form: `::ffff:10.0.0.0/104` is
`10.0.0.0/8`, whichever way the range or the address is written. What a hop's URL says
of itself (its host name, or the address it names) is checked before the name is looked up
(`is_blocked`): an excluded name costs no DNS lookup. The addresses a name resolves to, after (`excludes`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx

from openfusion.upstream.web.addresses import IPAddress, IPNetwork, connect_address, in_range, mapped_network
from openfusion.upstream.web.errors import FetchRefused
from openfusion.upstream.web.ssrf import Target, parse_host

EXCLUDED = "that site is excluded from research for this request."
# What the WHATWG URL parser removes from anywhere in a URL before reading it.
_DROPPED_BY_BROWSERS = dict.fromkeys(map(ord, "\t\n\r"))


class FetchExcluded(FetchRefused):
    """The URL, or a redirect it made, is on a domain the request excludes; nothing was sent to it."""

    def __init__(self) -> None:
        super().__init__(EXCLUDED)


def canonical_host(host: str) -> str:
    """A host as the fetcher names it: an IP address in its one spelling, else a lower-case ASCII name."""
    text = host.strip().lower().rstrip(".")
    try:
        parsed = parse_host(text)
    except FetchRefused:
        try:
            return text.encode("idna").decode("ascii")  # a name the guard would refuse anyway
        except UnicodeError:
            return text
    return parsed if isinstance(parsed, str) else str(connect_address(parsed))


@dataclass(frozen=True)
class _Exclusion:
    """One entry: an address range (`10.0.0.0/8`, `2001:db8::/32`), or a host with a path prefix ("": all of it)."""

    network: ipaddress.IPv6Network | None = None  # in one family with the addresses it is compared with
    host: str = ""
    prefix: str = ""

    @classmethod
    def parse(cls, entry: str) -> _Exclusion:
        network = address_range(entry)
        if network is not None:
            return cls(network=mapped_network(network))
        domain, _, prefix = entry.strip().partition("/")
        return cls(host=canonical_host(domain.strip(".")), prefix=prefix.lower())

    def covers_host(self, host: str, path: str) -> bool:
        """Whether a host (canonical) and path are excluded by name, or, an IP address, by its range."""
        if self.network is not None:
            address = _address(host)
            return address is not None and in_range(address, self.network)
        return path.startswith("/" + self.prefix) and (
            host == self.host or (_address(self.host) is None and host.endswith("." + self.host))
        )

    def covers_address(self, address: IPAddress, path: str) -> bool:
        """Whether an address a host resolved to is excluded: it is in the range, or is the entry's address."""
        if self.network is not None:
            return in_range(address, self.network)
        return path.startswith("/" + self.prefix) and self.host == str(address)


def address_range(entry: str) -> IPNetwork | None:
    """The address range an entry is written as (`10.0.0.0/8`, `[2001:db8::]/32`, a lone address), else None.

    Raises ValueError for an address with a prefix length that makes no range (`10.0.0.0/33`): read as a
    host with a path, it would exclude nothing of what was meant.
    """
    text = entry.strip()
    address, slash, bits = text.partition("/")
    if _address(address.strip("[]")) is None or (slash and not bits.isdigit()):
        return None  # a name, or an address with a path
    try:
        # strict=False: "10.1.2.3/8" means 10.0.0.0/8, as in allow_private.
        return ipaddress.ip_network(address.strip("[]") + slash + bits, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid address range") from None


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_blocked(url: str, domains: Collection[str]) -> bool:
    """Whether a URL is excluded by what it says: its host is one of `domains` (or a subdomain; an entry may carry
    a path prefix, `host/path`), or an IP address in an excluded range. Needs no DNS lookup."""
    if not domains:
        return False
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False  # not a URL fetch would accept either
    host, path = canonical_host(parsed.host), parsed.path.lower()
    return any(_Exclusion.parse(entry).covers_host(host, path) for entry in domains)


def hides_result(url: str, domains: Collection[str]) -> bool:
    """Whether a search result is kept from the model: its URL is excluded by what it says, as `is_blocked` reads
    it or as a browser would (tabs and newlines dropped, a backslash a slash, the host percent-decoded and
    IDNA-mapped: `https://exa%6Dple.com/` is a page of example.com), or it names no host that can be read.
    Needs no DNS lookup."""
    if not domains:
        return False
    if is_blocked(url, domains):
        return True
    text = url.translate(_DROPPED_BY_BROWSERS).strip().replace("\\", "/")
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        return True
    if not host:
        return True
    host, path = canonical_host(unquote(host)), unquote(parts.path).lower()
    return any(_Exclusion.parse(entry).covers_host(host, path) for entry in domains)


def excludes(target: Target, domains: Collection[str]) -> bool:
    """Whether a checked fetch target is excluded: by its host, or by an address it resolved to."""
    if not domains:
        return False
    path = target.url.path.lower()
    for exclusion in map(_Exclusion.parse, domains):
        if exclusion.covers_host(target.host, path):
            return True
        if any(exclusion.covers_address(address, path) for address in target.addresses):
            return True
    return False
