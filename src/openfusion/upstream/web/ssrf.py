"""SSRF guard: parse a URL, resolve its host once, and refuse every address that is not on the public internet."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx

from openfusion.upstream.web.addresses import IPAddress, IPNetwork, allows, connect_address
from openfusion.upstream.web.config import FetchConfig
from openfusion.upstream.web.errors import FetchFailed, FetchRefused

# Resolves (host, port) to address strings. Injectable so tests never touch DNS and can script rebinding.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

MAX_URL_LENGTH = 4096
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
# What of a URL a refusal may quote. A redirect's URL is the page's text, and the model reads refusals
# outside the block that marks web text untrusted: a scheme or host that is not of this form is named, not
# quoted, so it cannot carry words (`http://new instructions from the operator/`) to the model.
_QUOTABLE = re.compile(r"^[a-z0-9._:\[\]-]{1,64}$")

_net = ipaddress.ip_network

# Never connectable, whatever the operator allows: they mean "this host" or reach many hosts at once.
_NEVER: tuple[tuple[IPNetwork, str], ...] = (
    (_net("0.0.0.0/8"), "an unspecified ('this network') address"),
    (_net("::/128"), "the unspecified address"),
    (_net("255.255.255.255/32"), "the broadcast address"),
    (_net("224.0.0.0/4"), "a multicast address"),
    (_net("ff00::/8"), "a multicast address"),
)

# Special-purpose ranges (IANA registries), each with the reason the model is told.
_SPECIAL: tuple[tuple[IPNetwork, str], ...] = (
    (_net("10.0.0.0/8"), "a private (RFC 1918) address"),
    (_net("100.64.0.0/10"), "a carrier-grade NAT (RFC 6598) address"),
    (_net("127.0.0.0/8"), "a loopback address"),
    (_net("169.254.0.0/16"), "a link-local address (cloud metadata services live here)"),
    (_net("172.16.0.0/12"), "a private (RFC 1918) address"),
    (_net("192.0.0.0/24"), "an IETF protocol assignment address"),
    (_net("192.0.2.0/24"), "a documentation address"),
    (_net("192.88.99.0/24"), "a 6to4 relay anycast address"),
    (_net("192.168.0.0/16"), "a private (RFC 1918) address"),
    (_net("198.18.0.0/15"), "a benchmarking address"),
    (_net("198.51.100.0/24"), "a documentation address"),
    (_net("203.0.113.0/24"), "a documentation address"),
    (_net("240.0.0.0/4"), "a reserved address"),
    (_net("::1/128"), "a loopback address"),
    (_net("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_net("100::/64"), "a discard-only address"),
    (_net("2001::/23"), "an IETF special-purpose address"),
    (_net("2001:db8::/32"), "a documentation address"),
    (_net("3fff::/20"), "a documentation address"),
    (_net("fc00::/7"), "a unique-local address"),
    (_net("fe80::/10"), "a link-local address"),
    (_net("fec0::/10"), "a site-local address"),
)

_MAPPED = _net("::ffff:0:0/96")
_COMPATIBLE = _net("::/96")
_NAT64 = _net("64:ff9b::/96")
_GLOBAL_UNICAST = _net("2000::/3")


@dataclass(frozen=True)
class Target:
    """A checked fetch target: the URL (host name form) and the only addresses that may be connected to."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...]
    ip_literal: bool


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-public addresses an operator allows explicitly (intranet use)."""

    allow_private: tuple[IPNetwork, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    allow_ports: tuple[int, ...] = (80, 443)

    @classmethod
    def from_config(cls, config: FetchConfig) -> AddressPolicy:
        """The policy of a `[research.fetch]` table."""
        return cls(
            allow_private=tuple(config.allow_private),
            allow_hosts=tuple(config.allow_hosts),
            allow_ports=tuple(config.allow_ports),
        )

    def port_refusal(self, port: int, addresses: Sequence[IPAddress], *, host_allowed: bool) -> str | None:
        """Why `port` may not be connected to on these (already allowed) addresses, or None when it may.

        Public addresses are reached on the web's ports only (a mail, database or admin service may
        listen elsewhere); a target the operator let through by name or range keeps any port.
        """
        if port in self.allow_ports or host_allowed:
            return None
        if all(non_public_reason(address) is not None for address in addresses):
            return None  # not public, yet allowed: an allow_private range
        allowed = _listed(self.allow_ports)
        return f"refused: port {port} is not fetched; public addresses are fetched only on ports {allowed}."

    def host_allowed(self, host: str) -> bool:
        """Whether the host name is on the operator's allow-list (exactly or by a `*.suffix` pattern)."""
        for pattern in self.allow_hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False

    def refusal(self, address: IPAddress, *, host_allowed: bool = False) -> str | None:
        """Why `address` may not be connected to, or None when it may."""
        address = connect_address(address)
        for network, never in _NEVER:
            if address in network:
                return never
        reason = non_public_reason(address)
        if reason is None or host_allowed or any(allows(address, network) for network in self.allow_private):
            return None
        return reason


def non_public_reason(address: IPAddress) -> str | None:
    """Why an address is not a public internet address (None when it is)."""
    address = connect_address(address)
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_reason(address)
        if embedded is not None:
            return embedded
    for network, reason in _NEVER + _SPECIAL:
        if address in network:
            return reason
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST and address not in _NAT64:
        return "not a global unicast address"
    if not address.is_global:
        return "not a public address"
    return None


def _embedded_reason(address: ipaddress.IPv6Address) -> str | None:
    """Refuse IPv6 forms that carry a non-public IPv4 address (IPv4-compatible, NAT64, 6to4, Teredo)."""
    if address in _COMPATIBLE and int(address) > 1:
        inner = non_public_reason(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return f"an IPv4-compatible form of {inner}" if inner else "a deprecated IPv4-compatible address"
    embedded: tuple[str, ipaddress.IPv4Address | None] = ("", None)
    if address in _NAT64:
        embedded = ("a NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    elif address.sixtofour is not None:
        embedded = ("a 6to4", address.sixtofour)
    elif address.teredo is not None:
        server, client = address.teredo
        embedded = ("a Teredo", client if non_public_reason(client) else server)
    form, inner_address = embedded
    inner = non_public_reason(inner_address) if inner_address is not None else None
    return f"{form} form of {inner}" if inner else None


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Parse an IPv4 address the way inet_aton does: 1 to 4 parts, each decimal, octal (0…) or hex (0x…)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        value = _inet_aton_part(part)
        if value is None:
            return None
        values.append(value)
    # The last part fills every remaining byte: a.b.c.d, a.b.(16 bits), a.(24 bits), (32 bits).
    *head, last = values
    if any(value > 0xFF for value in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _inet_aton_part(part: str) -> int | None:
    lowered = part.lower()
    try:
        if lowered.startswith("0x"):
            return int(lowered[2:], 16) if lowered[2:] else None
        if len(lowered) > 1 and lowered.startswith("0"):
            return int(lowered[1:], 8)
        return int(lowered, 10) if lowered.isdigit() else None
    except ValueError:
        return None


def parse_host(host: str) -> IPAddress | str:
    """A URL host as an IP address (any spelling inet_aton or IPv6 accepts) or a validated ASCII host name."""
    text = host.strip("[]").lower()
    if "%" in text:
        # A zone index (fe80::1%eth0) or a percent-encoded name: judge what it decodes to, never send it.
        decoded = unquote(text)
        address = _as_ip(decoded.split("%")[0] if ":" in decoded else decoded)
        reason = non_public_reason(address) if address is not None else None
        raise FetchRefused(f"refused: {_named('the host', host)} is {reason or 'not a valid host name'}.")
    text = text.rstrip(".")
    address = _as_ip(text)
    if address is not None:
        return address
    labels = text.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # A numeric last label makes the host an IPv4 address (WHATWG URL rules), never a name to look up.
        raise FetchRefused(f"refused: {_named('the host', host)} is not a valid IP address.")
    if not _HOST_NAME.match(text):
        raise FetchRefused(f"refused: {_named('the host', host)} is not a valid host name.")
    return text


def _as_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return parse_ipv4(text)


def parse_url(raw: str) -> tuple[httpx.URL, IPAddress | str, int]:
    """Check a URL's form (scheme, credentials, host, port) and return it with its parsed host and port."""
    if len(raw) > MAX_URL_LENGTH:
        raise FetchRefused(f"refused: the URL is longer than {MAX_URL_LENGTH} characters.")
    scheme = raw.split(":", 1)[0].strip().lower() if ":" in raw else ""
    if scheme not in _DEFAULT_PORTS:
        shown = _named("the scheme", scheme) if scheme else "a URL without a scheme"
        raise FetchRefused(f"refused: {shown} is not supported; only absolute http:// and https:// URLs are.")
    try:
        url = httpx.URL(raw.strip())
    except httpx.InvalidURL:
        raise _invalid_url(raw) from None
    if url.userinfo:
        raise FetchRefused("refused: URLs with credentials (user:password@) are not fetched.")
    if not url.raw_host:
        raise FetchRefused("refused: the URL has no host.")
    host = parse_host(url.raw_host.decode("ascii"))
    port = url.port if url.port is not None else _DEFAULT_PORTS[url.scheme]
    if not 0 < port < 65536:
        raise FetchRefused(f"refused: {port} is not a valid port.")
    # Drop the fragment (never sent) and spell the host canonically, so Host and SNI name what was checked.
    url = url.copy_with(fragment=None, host=str(host) if not isinstance(host, str) else host)
    return url, host, port


def _named(noun: str, text: str) -> str:
    """`noun` followed by `text` quoted when it has the plain form of a scheme or host ("the host 'x'"), else
    `noun` alone ("the host")."""
    return f"{noun} {text!r}" if _QUOTABLE.match(text) else noun


def _invalid_url(raw: str) -> FetchRefused:
    """A URL httpx cannot parse; when its host is an odd IP spelling, say what it really points to."""
    try:
        host = urlsplit(raw.strip()).hostname or ""
        parsed = parse_host(host) if host else None
    except FetchRefused as refused:
        return refused
    except ValueError:
        parsed = None
    reason = non_public_reason(parsed) if parsed is not None and not isinstance(parsed, str) else None
    if reason is not None:
        return FetchRefused(f"refused: {_named('the host', host)} is {parsed}, {reason}.")
    return FetchRefused("refused: the URL is not valid.")


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the operating system (getaddrinfo on the event loop's executor)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


async def resolve_target(raw: str, *, policy: AddressPolicy, resolver: Resolver) -> Target:
    """Check a URL and resolve its host exactly once; refuse it if any address is off limits."""
    url, host, port = parse_url(raw)
    if not isinstance(host, str):
        listed = policy.host_allowed(str(connect_address(host)))  # as allow_hosts spells an address
        reason = policy.refusal(host, host_allowed=listed)
        if reason is not None:
            raise FetchRefused(f"refused: {host} is {reason}; only public web addresses can be fetched.")
        _check_port(policy, port, [host], host_allowed=listed)
        return Target(url=url, host=str(host), port=port, addresses=(connect_address(host),), ip_literal=True)
    addresses = await _resolve(host, port, resolver)
    allowed_host = policy.host_allowed(host)
    for address in addresses:
        reason = policy.refusal(address, host_allowed=allowed_host)
        if reason is not None:
            # Name the category, not the address: internal DNS answers are not the model's business.
            raise FetchRefused(f"refused: {host} resolves to {reason}; only public web addresses can be fetched.")
    _check_port(policy, port, addresses, host_allowed=allowed_host)
    unique = tuple(dict.fromkeys(connect_address(address) for address in addresses))
    return Target(url=url, host=host, port=port, addresses=unique, ip_literal=False)


def _check_port(policy: AddressPolicy, port: int, addresses: Sequence[IPAddress], *, host_allowed: bool) -> None:
    reason = policy.port_refusal(port, addresses, host_allowed=host_allowed)
    if reason is not None:
        raise FetchRefused(reason)


def _listed(ports: Sequence[int]) -> str:
    """ "80 and 443", "80, 443 and 8443"."""
    words = [str(port) for port in ports]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


async def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        answers = await resolver(host, port)
    except (OSError, UnicodeError):
        raise FetchFailed(f"could not resolve the host {host}.") from None
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            addresses.append(ipaddress.ip_address(answer))
        except ValueError:
            raise FetchFailed(f"could not resolve the host {host}.") from None
    if not addresses:
        raise FetchFailed(f"could not resolve the host {host}.")
    return addresses
