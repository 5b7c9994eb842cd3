"""Limit counters in Redis, so every replica enforces one limit. Each check is one atomic Lua script.

Times come from the Redis server (`TIME`), so replicas with skewed clocks still agree. Concurrency
slots are leases in a sorted set scored by their expiry: a live run renews its lease every third
of the lease time, and a replica that crashes mid-run cannot hold its slots for longer than one
lease time. A renewal that finds its lease gone (Redis restarted empty) takes it again: the run still
counts against its limit. So does the next admission that finds Redis emptied (`redis_epoch`), for every slot
of this process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from openfusion.access.errors import LimitsUnavailable
from openfusion.access.limiter import Slot
from openfusion.access.redis_epoch import NOW_MS, RedisEpoch, admission, key_start
from openfusion.errors import ConfigError

log = logging.getLogger("openfusion.access")

# KEYS[1] request log; ARGV: limit, window (ms), unique member. Returns 0 (admitted) or ms to wait.
_HIT = admission(
    """
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""
)

# KEYS[1] leases; ARGV: limit, lease time (ms), lease id. Returns 1 (taken) or 0 (all held).
_ACQUIRE = admission(
    """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
)

# KEYS[1] leases; ARGV: lease time (ms), lease id. Returns 1 (renewed) or 0 (the lease was gone: taken again, since
# its run still lives; Redis restarted empty, or this process could not renew it within the lease time).
_RENEW = (
    NOW_MS
    + """
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if held then return 1 end
return 0
"""
)

_TIMEOUT_S = 2.0
# A slot Redis could not take back is given back again after this long, doubling up to the most, within its lease.
_FIRST_RETRY_S = 0.5
_MAX_RETRY_S = 10.0


class RedisLimiter:
    """Counters shared through Redis under `{<prefix>}:rpm:<bucket>`, `{<prefix>}:fusion:<bucket>` and
    `{<prefix>}:requests:<bucket>` (one hash slot: see `key_start`)."""

    shared = True

    def __init__(self, client: Redis, *, prefix: str, lease_ttl_s: float = 60.0) -> None:
        self._client = client
        self._start = key_start(prefix)
        self._lease_ms = max(1, round(lease_ttl_s * 1000))
        self._hit = client.register_script(_HIT)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._slots: set[_RedisSlot] = set()
        self._giving_back: set[asyncio.Task[None]] = set()  # slots Redis could not take back yet, sent again
        self.epoch = RedisEpoch(prefix=prefix)  # spend reservations share it
        self.epoch.on_reset(self._retake)

    @property
    def client(self) -> Redis:
        """The Redis client (spend reservations share it; this limiter closes it)."""
        return self._client

    @classmethod
    def from_url(cls, url: str, *, prefix: str, lease_ttl_s: float = 60.0) -> RedisLimiter:
        """A limiter on a new client for `url` (nothing connects until the first check)."""
        try:
            client = Redis.from_url(url, socket_connect_timeout=_TIMEOUT_S, socket_timeout=_TIMEOUT_S)
        except ValueError:
            # The message could echo the URL, and with it a password.
            raise ConfigError("redis_url is not a valid Redis URL (redis://, rediss:// or unix://)") from None
        return cls(client, prefix=prefix, lease_ttl_s=lease_ttl_s)

    async def hit(self, bucket: str, *, limit: int, window_s: float) -> float:
        """Count one request in the sliding window (atomically, on the Redis server's clock)."""
        window_ms = max(1, round(window_s * 1000))
        member = secrets.token_hex(8)
        async with _unavailable_on_error():
            key = self._key("rpm", bucket)
            wait_ms = await self.epoch.admit(self._hit, keys=[key], args=[limit, window_ms, member])
        return int(wait_ms) / 1000

    async def acquire(self, bucket: str, *, limit: int, kind: str = "fusion") -> Slot | None:
        """Take a lease if fewer than `limit` live leases of the `kind` limit are held."""
        key, lease = self._key(kind, bucket), secrets.token_hex(8)
        async with _unavailable_on_error():
            taken = await self.epoch.admit(self._acquire, keys=[key], args=[limit, self._lease_ms, lease])
        if not int(taken):
            return None
        slot = _RedisSlot(self, key, lease)
        self._slots.add(slot)
        return slot

    async def ping(self) -> None:
        """Raise when Redis does not answer."""
        await self._client.ping()

    async def aclose(self) -> None:
        """Stop renewing leases and close the connections."""
        for slot in list(self._slots):
            slot.stop_renewing()
        for task in list(self._giving_back):
            task.cancel()
        await self._client.aclose()

    async def _retake(self) -> None:
        """Take every slot of this process's running requests again, in one round trip: Redis lost them."""
        slots = list(self._slots)
        if not slots:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for slot in slots:
                await self._renew(keys=[slot.key], args=[self._lease_ms, slot.lease], client=pipe)
            await pipe.execute()
        for slot in slots:
            if slot.released:  # given back while it was being taken again: taken for nothing, given back again
                await slot.give_back()

    def give_back_later(self, key: str, lease: str) -> None:
        """Remove a lease Redis could not take back now: again every 0.5 s to 10 s, until it does or the lease ends."""
        task = asyncio.get_running_loop().create_task(self._give_back(key, lease), name="openfusion-slot-give-back")
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, key: str, lease: str) -> None:
        loop = asyncio.get_running_loop()
        expires = loop.time() + self._lease_ms / 1000
        wait = _FIRST_RETRY_S
        while (remaining := expires - loop.time()) > 0:
            await asyncio.sleep(min(wait, remaining))
            try:
                await self._client.zrem(key, lease)
                return
            except (RedisError, OSError):
                wait = min(wait * 2, _MAX_RETRY_S)

    def _key(self, kind: str, bucket: str) -> str:
        return f"{self._start}:{kind}:{bucket}"


class _RedisSlot:
    def __init__(self, limiter: RedisLimiter, key: str, lease: str) -> None:
        self._limiter = limiter
        self.key = key
        self.lease = lease
        self.released = False
        self._renewal = asyncio.create_task(self._renew_until_released(), name="openfusion-slot-lease")

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.stop_renewing()
        await self.give_back()

    async def give_back(self) -> None:
        try:
            await self._limiter._client.zrem(self.key, self.lease)
        except (RedisError, OSError) as exc:
            log.warning("could not give back a concurrency slot (%s); sent again until Redis answers", exc)
            self._limiter.give_back_later(self.key, self.lease)  # else it would stay held until its lease ends

    def stop_renewing(self) -> None:
        self._limiter._slots.discard(self)
        self._renewal.cancel()

    async def _renew_until_released(self) -> None:
        limiter = self._limiter
        while True:
            await asyncio.sleep(limiter._lease_ms / 3000)
            try:
                renewed = await limiter._renew(keys=[self.key], args=[limiter._lease_ms, self.lease])
            except (RedisError, OSError) as exc:
                log.warning("could not renew a fusion slot lease: %s", exc)
                continue
            if not int(renewed):
                log.warning("a concurrency slot's lease was gone before its run ended (Redis restarted?): taken again")


@contextlib.asynccontextmanager
async def _unavailable_on_error() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("limit store unreachable: %s", exc)
        raise LimitsUnavailable(
            "Rate limits cannot be checked right now (the limit store is unreachable); try again shortly."
        ) from None
