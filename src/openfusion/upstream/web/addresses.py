"""IP addresses and ranges compared in one family: IPv6, an IPv4 address as its IPv4-mapped form (::ffff:a.b.c.d).

`ipaddress` says an address of one family is in no range of the other: `10.1.2.3` is not in
`::ffff:10.0.0.0/104`, which is `10.0.0.0/8` written IPv4-mapped, nor `::ffff:10.1.2.3` in `10.0.0.0/8`. Whatever
compares an address the fetcher reaches with a range an operator or a request wrote (`allow_private`, an excluded
range) compares them with `in_range`, so it holds whichever family either is written in. An allow-list
(`allow_private`) compares them with `allows`, stricter: an IPv6 range spanning the IPv4-mapped block (`::/0`)
allows IPv6 addresses, not every IPv4 one with them; an exclusion may be wider than meant, an allowance may not.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The IPv4-mapped block (::ffff:0:0/96): an IPv4 address a.b.c.d is ::ffff:a.b.c.d there.
_MAPPED_BLOCK = int(ipaddress.IPv6Address("::ffff:0:0"))
_MAPPED_NETWORK = ipaddress.IPv6Network("::ffff:0:0/96")


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


def allows(address: IPAddress, network: IPNetwork) -> bool:
    """Whether an allowed range holds the address: as `in_range`, but an IPv4 address (however written) only by an
    IPv4 range or one inside the IPv4-mapped block; `::/0` and `::/64` hold the IPv4-mapped addresses as bits, and
    an operator allowing them opens IPv6, not IPv4's loopback, private and link-local (metadata) addresses."""
    ranged = mapped_network(network)
    if connect_address(address).version == 4 and not ranged.subnet_of(_MAPPED_NETWORK):
        return False
    return mapped(connect_address(address)) in ranged
