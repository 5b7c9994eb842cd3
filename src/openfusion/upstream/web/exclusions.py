"""Domains a request excludes from research, compared with hosts in the one form the fetcher connects to.

An exclusion is kept, not just the excluded page's text: the fetcher asks `excludes` about every hop
(the URL the model gave and each redirect) before it sends anything, so an excluded site never gets a
request. Hosts are compared as the SSRF guard parses them, so `2130706433`, `0x7f.1` and `127.0.0.1.`
are all `127.0.0.1`, and `Example.COM.` is `example.com`; an entry that names an IP address also
excludes every host name that resolves to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

import httpx

from openfusion.upstream.web.errors import FetchRefused
from openfusion.upstream.web.ssrf import IPAddress, Target, connect_address, parse_host

EXCLUDED = "that site is excluded from research for this request."


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


def _entry(entry: str) -> tuple[str, str]:
    """An exclusion's host (canonical) and path prefix ("" for the whole site)."""
    domain, _, prefix = entry.strip().partition("/")
    return canonical_host(domain.strip(".")), prefix.lower()


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _host_matches(host: str, domain: str) -> bool:
    return host == domain or (_address(domain) is None and host.endswith("." + domain))


def is_blocked(url: str, domains: Collection[str]) -> bool:
    """Whether a URL is on one of `domains` (or a subdomain); an entry may carry a path prefix (`host/path`)."""
    if not domains:
        return False
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False  # not a URL fetch would accept either
    host, path = canonical_host(parsed.host), parsed.path.lower()
    return any(_host_matches(host, domain) and path.startswith("/" + prefix) for domain, prefix in map(_entry, domains))


def excludes(target: Target, domains: Collection[str]) -> bool:
    """Whether a checked fetch target is excluded: by its host, or by an address it resolved to."""
    if not domains:
        return False
    path = target.url.path.lower()
    addresses = {str(address) for address in target.addresses}
    for domain, prefix in map(_entry, domains):
        if not path.startswith("/" + prefix):
            continue
        if _host_matches(target.host, domain) or (_address(domain) is not None and domain in addresses):
            return True
    return False
