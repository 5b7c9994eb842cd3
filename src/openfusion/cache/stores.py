"""Where cached runs are kept: Redis (shared by replicas), the activity database, or process memory.

Every store keeps bytes under a key until they expire, and keeps its total under a size limit by
dropping the least recently read first. A store that fails raises; the cache treats that as a miss.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis

from openfusion.cache.config import CacheSettings
from openfusion.cache.run_ends import RunEnds
from openfusion.errors import ConfigError


class ResultStore(Protocol):
    """Bytes by key, with expiry and a size limit."""

    async def get(self, key: str) -> bytes | None:
        """The bytes unless absent or expired; a read is a use (it moves the key to the back of the eviction order)."""
        ...

    async def put(self, key: str, value: bytes, *, ttl_s: float) -> None:
        """Keep the bytes for `ttl_s` seconds, evicting the least recently used past the size limit."""
        ...

    async def usage(self) -> tuple[int, int]:
        """How many entries are kept, and their bytes."""
        ...

    async def aclose(self) -> None:
        """Release connections (a store it does not own is left open)."""
        ...


class CacheDatabase(Protocol):
    """The activity store's side of the cache (SQLite or PostgreSQL: the `result_cache` table)."""

    async def cache_get(self, key: str, *, now: float, touch_every_s: float) -> bytes | None: ...

    async def cache_put(self, key: str, entry: bytes, *, now: float, ttl_s: float, max_bytes: int) -> None: ...

    async def cache_usage(self) -> tuple[int, int]: ...


# A database read marks its row used only when the mark is older than this: most hits are then a plain
# SELECT (no write, no fsync), and the eviction order is right to within this many seconds.
TOUCH_EVERY_S = 60.0


class DatabaseStore:
    """Cached runs in the activity database's `result_cache` table."""

    def __init__(self, database: CacheDatabase, *, max_bytes: int, touch_every_s: float = TOUCH_EVERY_S) -> None:
        self.database = database
        self.max_bytes = max_bytes
        self.touch_every_s = touch_every_s

    async def get(self, key: str) -> bytes | None:
        return await self.database.cache_get(key, now=time.time(), touch_every_s=self.touch_every_s)

    async def put(self, key: str, value: bytes, *, ttl_s: float) -> None:
        await self.database.cache_put(key, value, now=time.time(), ttl_s=ttl_s, max_bytes=self.max_bytes)

    async def usage(self) -> tuple[int, int]:
        return await self.database.cache_usage()

    async def aclose(self) -> None:
        return None  # the activity store closes itself


class MemoryStore:
    """Cached runs in this process (no activity database, no Redis): lost on restart, not shared."""

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # least recently used first
        self._bytes = 0

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def put(self, key: str, value: bytes, *, ttl_s: float) -> None:
        self._drop(key)
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self._bytes += len(value)
        now = time.monotonic()
        for old in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            self._drop(old)
        while self._bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._bytes -= len(found[1])

    async def usage(self) -> tuple[int, int]:
        return len(self._entries), self._bytes

    async def aclose(self) -> None:
        self._entries.clear()


# KEYS: entry, uses (zset key -> last read µs), expiries (zset key -> expiry µs), sizes (hash key -> bytes),
# the entries' prefix. ARGV: key, value, ttl ms, max bytes. Times come from the Redis server, the same for
# every replica, in microseconds (uses a millisecond apart must still be told apart).
_PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function drop(key)
  redis.call('DEL', KEYS[5] .. key)
  redis.call('ZREM', KEYS[2], key)
  redis.call('ZREM', KEYS[3], key)
  local size = redis.call('HGET', KEYS[4], key)
  if size then
    redis.call('HDEL', KEYS[4], key)
    redis.call('HINCRBY', KEYS[4], '', -tonumber(size))
  end
end
drop(ARGV[1])
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do drop(key) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]) * 1000, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], string.len(ARGV[2]))
local total = redis.call('HINCRBY', KEYS[4], '', string.len(ARGV[2]))
while total > tonumber(ARGV[4]) do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest then break end
  drop(oldest)
  total = tonumber(redis.call('HGET', KEYS[4], '') or '0')
end
return total
"""

# KEYS: entry, uses. ARGV: key. The bytes, after marking them used.
_GET = """
local value = redis.call('GET', KEYS[1])
if value then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], 'XX', tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
end
return value
"""

# KEYS: lock. ARGV: token, ttl ms. The holder's token once the lock is taken (this one's when it was free).
_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""

# KEYS: lock. ARGV: token, ttl ms. 1 when this holder still had the lock (it now expires ttl ms from now), else 0:
# a lock that lapsed is not taken again here (another request may have taken it, or it was just given back).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lock, this run's not-kept mark. ARGV: token, the mark's ttl ms (0: the run was kept, no mark), key, the
# channel of runs' ends. Deletes the lock only while this holder still has it; the mark tells the requests that waited
# for this run that it kept nothing; the key, published, wakes them (`RunEnds`) to look again (a user whose ACL has
# no channels gets no announcement, and its waiters look every 50 ms: the unlock itself must not fail for it).
_UNLOCK = """
if ARGV[2] ~= '0' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
local deleted = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then deleted = redis.call('DEL', KEYS[1]) end
redis.pcall('PUBLISH', ARGV[4], ARGV[3])
return deleted
"""


class RedisStore:
    """Cached runs in Redis, shared by every replica; one atomic script per write keeps the size limit."""

    def __init__(self, client: Redis, *, prefix: str, max_bytes: int) -> None:
        self.client = client
        self.max_bytes = max_bytes
        base = f"{prefix}:cache:{{result}}"  # one hash slot: the scripts touch several keys
        self._entry = f"{base}:entry:"
        self._lock = f"{base}:lock:"
        self._unkept = f"{base}:unkept:"  # by the token of a run that ended without keeping its result
        self._index = (f"{base}:uses", f"{base}:expiries", f"{base}:sizes")
        self._ends_channel = f"{base}:ends"
        self.ends = RunEnds(client, self._ends_channel)  # runs given back, on any replica: their waiters woken
        self._put = client.register_script(_PUT)
        self._get = client.register_script(_GET)
        self._lock_script = client.register_script(_LOCK)
        self._renew = client.register_script(_RENEW)
        self._unlock = client.register_script(_UNLOCK)

    @classmethod
    def from_url(cls, url: str, *, prefix: str, max_bytes: int) -> RedisStore:
        return cls(Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5), prefix=prefix, max_bytes=max_bytes)

    async def get(self, key: str) -> bytes | None:
        value = await self._get(keys=[self._entry + key, self._index[0]], args=[key])
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes, *, ttl_s: float) -> None:
        keys = [self._entry + key, *self._index, self._entry]
        await self._put(keys=keys, args=[key, value, max(1, round(ttl_s * 1000)), self.max_bytes])

    async def usage(self) -> tuple[int, int]:
        count = await self.client.zcard(self._index[0])
        total = await self.client.hget(self._index[2], "")
        return int(count), int(total or 0)

    async def lock(self, key: str, token: str, *, ttl_s: float) -> str:
        """Take the run of `key` for this request, across replicas, for at most `ttl_s`: the holder's token (this
        one's when taken, another request's when it has the run)."""
        holder = await self._lock_script(keys=[self._lock + key], args=[token, max(1, round(ttl_s * 1000))])
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    async def renew(self, key: str, token: str, *, ttl_s: float) -> bool:
        """Have the lock `token` took on `key` expire `ttl_s` from now; False when it no longer holds it."""
        return bool(await self._renew(keys=[self._lock + key], args=[token, max(1, round(ttl_s * 1000))]))

    async def locked(self, key: str) -> bool:
        """Whether some request (on any replica) is running `key` now."""
        return bool(await self.client.exists(self._lock + key))

    async def unlock(self, key: str, token: str, *, kept: bool, unkept_ttl_s: float) -> None:
        """Give the run back; one that kept nothing is marked so for `unkept_ttl_s` (see `unkept`)."""
        mark_ms = 0 if kept else max(1, round(unkept_ttl_s * 1000))
        keys = [self._lock + key, self._unkept + token]
        await self._unlock(keys=keys, args=[token, mark_ms, key, self._ends_channel])

    async def unkept(self, token: str) -> bool:
        """Whether the run of `token` ended without keeping its result (lately): the requests that waited for it,
        on any replica, run now."""
        return bool(await self.client.exists(self._unkept + token))

    async def aclose(self) -> None:
        await self.ends.aclose()
        await self.client.aclose()


def check_backend(settings: CacheSettings, *, redis_url: str, activity: bool) -> None:
    """Refuse at start-up a backend that cannot work: Redis without a URL, the database without activity."""
    if settings.backend == "redis" and not redis_url:
        raise ConfigError('[cache] backend = "redis" needs redis_url or REDIS_URL')
    if settings.backend == "database" and not activity:
        raise ConfigError('[cache] backend = "database" needs the activity store ([activity] enabled = true)')


def build_store(settings: CacheSettings, *, redis_url: str, prefix: str, database: object | None) -> ResultStore:
    """The configured store: "auto" is Redis when a URL is set, else the activity database, else memory."""
    backend = settings.backend
    if backend == "auto":
        backend = "redis" if redis_url else "database" if _is_cache_database(database) else "memory"
    if backend == "redis":
        if not redis_url:
            raise ConfigError('[cache] backend = "redis" needs redis_url or REDIS_URL')
        return RedisStore.from_url(redis_url, prefix=prefix, max_bytes=settings.max_bytes)
    if backend == "database":
        if not _is_cache_database(database):
            raise ConfigError('[cache] backend = "database" needs the activity store ([activity] enabled)')
        return DatabaseStore(database, max_bytes=settings.max_bytes)  # type: ignore[arg-type]
    return MemoryStore(max_bytes=settings.max_bytes)


def _is_cache_database(database: object | None) -> bool:
    return database is not None and hasattr(database, "cache_put")
