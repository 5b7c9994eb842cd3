"""The authentication brake: an address that keeps presenting wrong keys is refused for a while.

`AuthBrake` counts in this process; with Redis, `redis_brake.SharedBrake` counts for every worker and
replica at once and falls back on this one while Redis cannot be reached. Only wrong keys count; a
request without a key is no guess (a browser asks without credentials first), and successes count for
nothing. An IPv6 address is counted as its /64.
"""

from __future__ import annotations

import bisect
import ipaddress
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

# Addresses tracked at most: past it, the longest-quiet ones are forgotten (a flood of addresses cannot
# grow the table without bound).
MAX_ADDRESSES = 65_536


class Brake(Protocol):
    """What access control asks of a brake, in this process or shared."""

    max_failures: int
    window_s: float
    block_s: float

    async def remaining_block(self, address: str | None) -> float:
        """Seconds this address stays refused (0: it is not)."""
        ...

    async def count_wrong_key(self, address: str | None) -> bool:
        """Count one wrong key from this address; True when that blocks it (said once, whichever process counted)."""
        ...


class _Record:
    """One address: the times of its wrong keys within the window, oldest first, and when its block ends.

    Slots and an array of doubles: a full table is under 30 MB, where a dataclass holding a deque made it ~70 MB.
    """

    __slots__ = ("blocked_until", "failures")

    def __init__(self) -> None:
        self.failures = array("d")
        self.blocked_until = 0.0


class AuthBrake:
    """Counts wrong keys per address; past `max_failures` within `window_s` the address is refused for `block_s`."""

    def __init__(
        self,
        *,
        max_failures: int,
        window_s: float,
        block_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.block_s = block_s
        self._clock = clock
        self._max_addresses = max_addresses
        self._records: OrderedDict[str, _Record] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether the brake is on (`max_failures` 0 turns it off)."""
        return self.max_failures > 0

    async def remaining_block(self, address: str | None) -> float:
        """Seconds this address stays refused (0: it is not)."""
        return self.blocked_for(address)

    async def count_wrong_key(self, address: str | None) -> bool:
        """Count one wrong key from this address; True when that blocks it."""
        return self.failed(address)

    def blocked_for(self, address: str | None) -> float:
        """Seconds this address stays refused (0: it is not)."""
        record = self._records.get(counted_as(address)) if address is not None else None
        if record is None:
            return 0.0
        return max(0.0, record.blocked_until - self._clock())

    def failed(self, address: str | None) -> bool:
        """Count one wrong key from this address; block it when that makes too many within the window (True)."""
        if not self.enabled or address is None:
            return False
        address = counted_as(address)
        now = self._clock()
        record = self._records.pop(address, None) or _Record()
        self._records[address] = record  # the most recently failing last: the first forgotten are the quietest
        failures = record.failures
        del failures[: bisect.bisect_right(failures, now - self.window_s)]  # those that have left the window
        failures.append(now)
        blocked = len(failures) >= self.max_failures
        if blocked:
            record.blocked_until = now + self.block_s
            del failures[:]
        while len(self._records) > self._max_addresses:
            self._records.popitem(last=False)
        return blocked


def counted_as(address: str) -> str:
    """What an address is counted as: itself, or for IPv6 its /64. One subscriber (a home, a VM) gets a /64 and
    picks any address in it at will: counted one by one, it could guess without end."""
    if ":" not in address:  # IPv4: no parsing on the way of every request
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
