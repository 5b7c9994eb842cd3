"""IP addresses and ranges compared in one family: IPv6, an IPv4 address as its IPv4-mapped form (::ffff:a.b.c.d).

`ipaddress` says an address of one family is in no range of the other: `10.1.2.3` is not in
`::ffff:10.0.0.0/104`, which is `10.0.0.0/8` written IPv4-mapped, nor `::ffff:10.1.2.3` in `10.0.0.0/8`. Whatever
compares an address the fetcher reaches with a range an operator or a request wrote (`allow_private`, an excluded
range) compares them with `in_range`, so it holds whichever family either is written in.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The IPv4-mapped block (::ffff:0:0/96): an IPv4 address a.b.c.d is ::ffff:a.b.c.d there.
_MAPPED_BLOCK = int(ipaddress.IPv6Address("::ffff:0:0"))


def connect_address(address: IPAddress) -> IPAddress:
    """The address actually reached: an IPv4-mapped IPv6 address is its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def mapped(address: IPAddress) -> ipaddress.IPv6Address:
    """An address in IPv6's family: an IPv4 one as its IPv4-mapped IPv6 address, an IPv6 one as it is."""
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(_MAPPED_BLOCK | int(address))
    return address


def mapped_network(network: IPNetwork) -> ipaddress.IPv6Network:
    """A range in IPv6's family: 10.0.0.0/8 as ::ffff:10.0.0.0/104, an IPv6 one as it is."""
    if isinstance(network, ipaddress.IPv4Network):
        return ipaddress.IPv6Network((_MAPPED_BLOCK | int(network.network_address), 96 + network.prefixlen))
    return network


def in_range(address: IPAddress, network: IPNetwork) -> bool:
    """Whether the address is in the range, whichever family either is written in."""
    return mapped(address) in mapped_network(network)
