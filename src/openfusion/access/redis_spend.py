"""Spend reservations in Redis, so every replica holds one cap. Each step is one atomic Lua script.

Per bucket and UTC day: the reservations of requests not yet in the store (a hash of amounts, a
sorted set of lease expiries, and their total), the costs written to the store lately (a sorted
set by the time they were written), and the kept costs. Each step touches only what changed, what
expired and what was written during the caller's reading of the store. A running reservation is a
lease renewed every third of its time, so a replica that crashed frees its reservations within one
lease time; a renewal that finds its reservation gone (Redis restarted empty) makes it again, as does, for every
reservation of this process at once, the next admission that finds Redis emptied (`redis_epoch`). Times
come from the Redis server (`TIME`); the time a reading of the store begins is told from this
process's clock and the offset the last script showed, set a little early (an earlier reading
counts more, never less), which saves a round trip per request.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from openfusion.access.errors import LimitsUnavailable
from openfusion.access.redis_epoch import NOW_MS, RedisEpoch, admission, key_start
from openfusion.access.spend import READ_WINDOW_S, Refusal, Reservation

log = logging.getLogger("openfusion.access")

# KEYS of a bucket's day: running (hash id -> amount), leases (zset id -> expiry ms), written (zset
# "id amount" -> written ms), totals (hash: running, kept).
_KEYS = ("running", "leases", "written", "totals")

# Frees the running reservations whose lease expired (their replica is gone).
_EXPIRE = """
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local amount = redis.call('HGET', KEYS[1], id)
  if amount then
    redis.call('HDEL', KEYS[1], id)
    redis.call('HINCRBYFLOAT', KEYS[4], 'running', -tonumber(amount))
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('HSET', KEYS[4], 'running', 0) end
"""

# ARGV: cap, estimate, spent, read_at (ms), id, lease (ms), read window (ms), expire-at (unix s).
# Returns {1|0|-1 (admitted, refused, reading too old), counted, in flight, now (ms)}.
_RESERVE = admission(
    """
local read_at = tonumber(ARGV[4])
if now - read_at > tonumber(ARGV[7]) then return {-1, '0', '0', now} end
"""
    + _EXPIRE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[7]))
-- costs written since this reading began are not in `spent`
local in_flight = tonumber(redis.call('HGET', KEYS[4], 'running') or '0')
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], read_at, '+inf')) do
  in_flight = in_flight + tonumber(string.sub(entry, string.find(entry, ' ', 1, true) + 1))
end
local counted = tonumber(ARGV[3]) + tonumber(redis.call('HGET', KEYS[4], 'kept') or '0') + in_flight
if counted + tonumber(ARGV[2]) > tonumber(ARGV[1]) + 1e-9 then
  return {0, tostring(counted), tostring(in_flight), now}
end
redis.call('HSET', KEYS[1], ARGV[5], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[5])
redis.call('HINCRBYFLOAT', KEYS[4], 'running', ARGV[2])
for i = 1, 4 do redis.call('EXPIREAT', KEYS[i], ARGV[8]) end
return {1, tostring(counted), tostring(in_flight), now}
"""
)

# ARGV: id, lease (ms), amount, expire-at. Extends a running reservation; one that is gone (Redis restarted empty, or
# this process could not renew it within the lease time) is made again, since its request still runs: 0 then.
_RENEW = (
    NOW_MS
    + """
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HINCRBYFLOAT', KEYS[4], 'running', ARGV[3])
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[4]}) do redis.call('EXPIREAT', key, ARGV[4]) end
return 0
"""
)

# ARGV: id, amount, 1 (written to the store) | 0 (kept all day) | -1 (given back: nothing spent), expire-at.
_FINISH = (
    NOW_MS
    + """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  if redis.call('HLEN', KEYS[1]) == 0 then
    redis.call('HSET', KEYS[4], 'running', 0)
  else
    redis.call('HINCRBYFLOAT', KEYS[4], 'running', -tonumber(held))
  end
end
-- KEYS[5], when given, marks this settlement made: one sent again (its first answer lost) is not counted twice.
local first = true
if KEYS[5] then first = redis.call('SET', KEYS[5], '1', 'NX', 'PX', 3600000) end
if first and ARGV[3] == '1' then
  redis.call('ZADD', KEYS[3], now, ARGV[1] .. ' ' .. ARGV[2])
elseif first and ARGV[3] == '0' then
  redis.call('HINCRBYFLOAT', KEYS[4], 'kept', ARGV[2])
end
for i = 3, 4 do redis.call('EXPIREAT', KEYS[i], ARGV[4]) end
return 1
"""
)

_TIMEOUT_S = 5.0
# Settlements Redis did not take are sent again after this long, doubling up to the most while it is away.
_FIRST_RETRY_S = 0.5
_MAX_RETRY_S = 10.0
# How much earlier than the Redis clock a reading is said to begin: covers the drift between scripts.
CLOCK_MARGIN_S = 0.5


class RedisSpendBook:
    """Reservations shared through Redis under `{<prefix>}:spend:<bucket>:<day>:…` (one hash slot: `key_start`).

    Leases are renewed, and settlements sent, in batches by one task each (one pipelined round
    trip for all of them), however many requests are in flight. A settlement Redis did not take is
    sent again until it does, marked made (`{<prefix>}:spend:settled:<id>`, for an hour) so that it
    counts once.
    """

    shared = True

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        lease_ttl_s: float = 60.0,
        read_window_s: float = READ_WINDOW_S,
        clock_margin_s: float = CLOCK_MARGIN_S,
        epoch: RedisEpoch | None = None,
    ) -> None:
        self._client = client
        self._margin = clock_margin_s
        self._start = key_start(prefix)
        self._lease_ms = max(1, round(lease_ttl_s * 1000))
        self._window_ms = max(1, round(read_window_s * 1000))
        self._reserve = client.register_script(_RESERVE)
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)
        self._offset: float | None = None  # Redis time minus this process's monotonic clock, at most
        # Running reservations, their leases to renew: id -> (keys, amount, expire-at), to make again if Redis lost it.
        self._live: dict[str, tuple[list[str], str, int]] = {}
        self._settlements: list[tuple[list[str], list[Any]]] = []  # (keys, args) of _FINISH, not sent yet
        self._renewer: asyncio.Task[None] | None = None
        self._settler: asyncio.Task[None] | None = None
        self._epoch = epoch or RedisEpoch(prefix=prefix)  # the limiter's, when they share a client
        self._epoch.on_reset(self._renew_live)

    async def clock(self) -> float:
        """The Redis server's time (seconds), a little early: asked for once, then told from the last script."""
        if self._offset is None:
            try:
                seconds, micros = await self._client.time()
            except (RedisError, OSError) as exc:
                raise _unavailable(exc) from None
            self._learn(seconds + micros / 1e6)
        assert self._offset is not None
        return time.monotonic() + self._offset - self._margin

    def _learn(self, redis_now: float) -> None:
        # Taken after the answer arrived, so never ahead of the true offset: readings are dated early, not late.
        self._offset = redis_now - time.monotonic()

    async def reserve(
        self, bucket: str, *, day: str, cap: float, estimate: float, spent: float, read_at: float
    ) -> Reservation | Refusal | None:
        """Check and reserve in one script."""
        keys = self._keys(bucket, day)
        hold = secrets.token_hex(8)
        args = [repr(cap), repr(estimate), repr(spent), round(read_at * 1000), hold, self._lease_ms, self._window_ms]
        try:
            answer = await self._epoch.admit(self._reserve, keys=keys, args=[*args, _expire_at(day)])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        status, counted, in_flight, now_ms = answer
        self._learn(int(now_ms) / 1000)
        if int(status) < 0:
            return None
        if not int(status):
            return Refusal(float(counted), float(in_flight))
        self._live[hold] = (keys, repr(estimate), _expire_at(day))
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases(), name="openfusion-spend-leases")
        return Reservation(estimate, _RedisHold(self, keys, hold, day))

    async def aclose(self) -> None:
        """Send what is pending (briefly), then stop renewing: the rest expires by itself."""
        if self._settler is not None and not self._settler.done():
            await asyncio.wait([self._settler], timeout=_TIMEOUT_S)
        for task in (self._renewer, self._settler):
            if task is not None:
                task.cancel()

    def settle_later(self, hold: str, keys: list[str], args: list[Any]) -> None:
        """Stop renewing a reservation and queue its settlement (sent with the others pending)."""
        self._live.pop(hold, None)
        self._queue_settlement([*keys, f"{self._start}:spend:settled:{hold}"], args)

    async def give_back(self, hold: str, keys: list[str], args: list[Any]) -> None:
        """Remove a reservation never used, now (or, when Redis does not take it, once it does)."""
        self._live.pop(hold, None)
        try:
            await self._finish(keys=keys, args=args)
        except (RedisError, OSError) as exc:  # else it would stay held until its lease ends
            log.warning("could not give back a spend reservation (%s); sent again until Redis answers", exc)
            self._queue_settlement(keys, args)

    def _queue_settlement(self, keys: list[str], args: list[Any]) -> None:
        self._settlements.append((keys, args))
        if self._settler is None or self._settler.done():
            self._settler = asyncio.get_running_loop().create_task(self._settle(), name="openfusion-spend-settle")

    async def _settle(self) -> None:
        retry_in = 0.0
        while self._settlements:
            batch, self._settlements = self._settlements, []
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for keys, args in batch:
                        await self._finish(keys=keys, args=args, client=pipe)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                # Sent again until Redis takes them, or a cost kept all day would go uncounted; each is counted once,
                # should Redis have taken it after all (`_FINISH` marks it made for an hour).
                self._settlements[:0] = batch
                if not retry_in:
                    log.warning("could not settle %d spend reservation(s), sent again when Redis answers: %s",
                                len(batch), exc)  # fmt: skip
                retry_in = min(max(retry_in * 2, _FIRST_RETRY_S), _MAX_RETRY_S)
                await asyncio.sleep(retry_in)
            else:
                retry_in = 0.0

    async def _renew_leases(self) -> None:
        while self._live:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self._renew_live()
            except (RedisError, OSError) as exc:
                log.warning("could not renew %d spend reservation lease(s): %s", len(self._live), exc)

    async def _renew_live(self) -> None:
        """Renew every running reservation in one round trip; make again those Redis lost (it restarted empty)."""
        live = list(self._live.items())
        if not live:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for hold, (keys, amount, expire_at) in live:
                await self._renew(keys=keys, args=[hold, self._lease_ms, amount, expire_at], client=pipe)
            renewed = await pipe.execute()
        remade = [(hold, keys, expire_at) for (hold, (keys, _, expire_at)), ok in zip(live, renewed, strict=True)
                  if not int(ok)]  # fmt: skip
        if remade:
            log.warning("%d spend reservation(s) gone before their request ended (Redis restarted?): made again",
                        len(remade))  # fmt: skip
        for hold, keys, expire_at in remade:
            if hold not in self._live:  # it ended while being made again: gone for good
                await self.give_back(hold, keys, [hold, "0", -1, expire_at])

    def _keys(self, bucket: str, day: str) -> list[str]:
        base = f"{self._start}:spend:{bucket}:{day}"
        return [f"{base}:{name}" for name in _KEYS]


class _RedisHold:
    def __init__(self, book: RedisSpendBook, keys: list[str], hold: str, day: str) -> None:
        self._book, self._keys, self._hold, self._expire_at = book, keys, hold, _expire_at(day)

    def finish(self, amount: float, *, written: bool) -> None:
        args = [self._hold, repr(amount), 1 if written else 0, self._expire_at]
        self._book.settle_later(self._hold, self._keys, args)

    async def cancel(self) -> None:
        await self._book.give_back(self._hold, self._keys, [self._hold, "0", -1, self._expire_at])


def _expire_at(day: str) -> int:
    """When a day's keys may go: a day after it ends (unix seconds), whatever the replicas' clock skew."""
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return int((start + timedelta(days=2)).timestamp())


def _unavailable(exc: BaseException) -> LimitsUnavailable:
    log.warning("spend reservations unreachable: %s", exc)
    return LimitsUnavailable(
        "Spend caps cannot be checked right now (the limit store is unreachable); try again shortly."
    )
