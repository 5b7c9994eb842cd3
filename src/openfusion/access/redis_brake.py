"""The authentication brake counted in Redis, so every worker and replica brakes an address as one.

Per address, `{<prefix>}:brake:<address>` holds the times of its wrong keys within the window (a sorted set,
expiring with the window) and `{<prefix>}:braked:<address>` its block (expiring with it). The addresses seen
within the window or a block are listed in `{<prefix>}:brake:addresses` by their last wrong key, and past
`max_addresses` the quietest are forgotten with their keys, as in the process's own brake: a flood of
addresses cannot grow Redis without bound. Each count is one atomic Lua script on the Redis server's clock; every
key hashes on the prefix alone (`key_start`), so the keys it forgets are in its slot too, under Redis Cluster.

When Redis cannot be reached, the brake is the process's own (`AuthBrake`, which counts every wrong key
all along): it fails open-but-local, never refusing everyone, and asks Redis again after a few seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from openfusion.access.brake import MAX_ADDRESSES, AuthBrake, counted_as
from openfusion.access.redis_epoch import NOW_MS, key_start

log = logging.getLogger("openfusion.access")

# KEYS[1] the address's wrong keys, KEYS[2] its block, KEYS[3] the addresses tracked. ARGV: max failures, window
# (ms), block (ms), unique member, the address as keyed, max addresses, the keys' start. Returns 1 when this wrong
# key blocks the address, else 0.
_COUNT = (
    NOW_MS
    + """
if redis.call('PTTL', KEYS[2]) > 0 then return 0 end
local window, block = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[4])
local blocked = 0
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', block)
  blocked = 1
else
  redis.call('PEXPIRE', KEYS[1], window)
end
local keep = math.max(window, block)
redis.call('ZADD', KEYS[3], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - keep)
local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[3], over)
  for i = 1, #oldest, 2 do
    redis.call('DEL', ARGV[7] .. ':brake:' .. oldest[i], ARGV[7] .. ':braked:' .. oldest[i])
  end
end
redis.call('PEXPIRE', KEYS[3], keep)
return blocked
"""
)

# Every request with a key asks Redis: one that does not answer (a partition drops packets) must not hold it for the
# client's socket timeout. Past this, the process's own brake answers.
ANSWER_S = 0.5
# After Redis failed to answer, the brake stays the process's own this long before Redis is asked again: an outage
# costs a request a short wait now and then, not every request.
RETRY_S = 5.0
# An address Redis has just said is not braked is taken as still not braked this long, in this process, without
# asking again: a client's every request would otherwise wait for a round trip. A wrong key from it forgets that at
# once, so an address braked by other processes is refused here from its next wrong key on, and what a braked
# guesser can get past this process is a right key within this time of its last request here that had one.
CLEARED_S = 1.0
CLEARED_KEPT = 4096  # addresses remembered as cleared at most (the oldest are forgotten first)
_PLAIN_ADDRESS = re.compile(r"^[0-9A-Fa-f.:/]{1,49}$")


class SharedBrake:
    """Counts wrong keys per address in Redis; the process's own `local` brake while Redis is away."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        local: AuthBrake,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._start = key_start(prefix)
        self._local = local
        self._max_addresses = max_addresses
        self._clock = clock
        self._count = client.register_script(_COUNT)
        self._away_until: float | None = None  # set while Redis is taken as away
        # Counted as (an IPv6 address as its /64, as the brake counts it): until when Redis's "not braked" is taken as
        # said again. Kept per address of a /64, a subscriber would have each of its addresses cleared beforehand and
        # get one wrong key past here from each once braked elsewhere.
        self._cleared: dict[str, float] = {}
        self.max_failures = local.max_failures
        self.window_s = local.window_s
        self.block_s = local.block_s

    @property
    def enabled(self) -> bool:
        """Whether the brake is on (`max_failures` 0 turns it off)."""
        return self._local.enabled

    async def remaining_block(self, address: str | None) -> float:
        """Seconds this address stays refused, in Redis or in this process (a block Redis lost on a restart holds)."""
        local = self._local.blocked_for(address)
        if not self.enabled or address is None or self._away():
            return local
        counted = counted_as(address)
        if not local and self._clock() < self._cleared.get(counted, 0.0):
            return 0.0
        try:
            async with asyncio.timeout(ANSWER_S):
                left_ms = int(await self._client.pttl(self._key("braked", address)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_away(exc)
            return local
        self._came_back()
        if left_ms > 0:
            return max(local, left_ms / 1000)
        if not local:
            self._clear(counted)
        return local

    async def count_wrong_key(self, address: str | None) -> bool:
        """Count one wrong key from this address in Redis (and in this process, for when Redis is away)."""
        if address is not None:
            self._cleared.pop(counted_as(address), None)  # the next request from it (its /64) asks Redis again
        blocked_here = self._local.failed(address)
        if not self.enabled or address is None or self._away():
            return blocked_here
        keyed = _keyed(counted_as(address))
        args = [self.max_failures, _ms(self.window_s), _ms(self.block_s), secrets.token_hex(8), keyed]
        try:
            async with asyncio.timeout(ANSWER_S):
                blocked = await self._count(
                    keys=[self._key("brake", address), self._key("braked", address), f"{self._start}:brake:addresses"],
                    args=[*args, self._max_addresses, self._start],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_away(exc)
            return blocked_here
        self._came_back()
        return bool(int(blocked))

    def _clear(self, counted: str) -> None:
        """Remember that Redis has just said this address (as counted) is not braked."""
        cleared = self._cleared
        cleared.pop(counted, None)  # to the end: the oldest first out
        if len(cleared) >= CLEARED_KEPT:
            del cleared[next(iter(cleared))]
        cleared[counted] = self._clock() + CLEARED_S

    def _key(self, kind: str, address: str) -> str:
        return f"{self._start}:{kind}:{_keyed(counted_as(address))}"

    def _away(self) -> bool:
        return self._away_until is not None and self._clock() < self._away_until

    def _went_away(self, exc: BaseException) -> None:
        if self._away_until is None:
            log.warning(
                "authentication brake: Redis unreachable (%s); counting wrong keys in this process until it answers",
                type(exc).__name__,
            )
        self._away_until = self._clock() + RETRY_S

    def _came_back(self) -> None:
        if self._away_until is not None:
            self._away_until = None
            log.info("authentication brake: Redis answers again; wrong keys are counted there")


def _keyed(address: str) -> str:
    """The address as it appears in a key: itself when it reads as an address, else a digest of a bounded length."""
    if _PLAIN_ADDRESS.match(address):
        return address
    return "h-" + hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
