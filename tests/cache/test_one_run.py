"""Identical requests on two replicas make one run, however a look and a lease interleave (a real Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from openfusion.cache.config import CacheSettings
from openfusion.cache.entry import encode_run
from openfusion.cache.service import ResultCache
from openfusion.cache.stores import RedisStore
from openfusion.observability.metrics import Metrics
from openfusion.pipeline.plan import CachePolicy

REDIS_URL = "redis://127.0.0.1:6379/0"
POLICY = CachePolicy(ttl_s=60)
SETTINGS = CacheSettings(wait_s=5)


class LateStore(RedisStore):
    """A replica's store whose next empty look comes back only once `meanwhile` has happened elsewhere."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def get(self, key: str) -> bytes | None:
        raw = await super().get(key)
        if raw is None and self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return raw


async def test_a_run_kept_between_a_look_and_a_lease_is_not_made_again(redis_prefix: str) -> None:
    one_store = RedisStore.from_url(REDIS_URL, prefix=redis_prefix, max_bytes=1 << 20)
    two_store = LateStore.from_url(REDIS_URL, prefix=redis_prefix, max_bytes=1 << 20)
    one = ResultCache(one_store, SETTINGS, Metrics())
    two = ResultCache(two_store, SETTINGS, Metrics())
    try:
        running = await one.consult("question", POLICY, mode="use")
        assert running.status == "miss" and await one_store.locked("question")  # replica one makes the run

        async def kept_and_let_go() -> None:  # replica one's run ends while replica two looks
            run = encode_run(generation_id="gen-1", created_at=0.0, cost=0.5, streamed=False, flags=[], events=[])
            await one_store.put("question", run, ttl_s=60)
            running.release()
            await asyncio.gather(*one._unlocking)
            assert not await one_store.locked("question")

        two_store.meanwhile = kept_and_let_go
        answer = await two.consult("question", POLICY, mode="use")

        assert two_store.meanwhile is None  # the run was kept and its lease given back between look and lease
        assert answer.status == "hit" and answer.entry is not None and answer.entry.generation_id == "gen-1"
        await asyncio.gather(*two._unlocking)
        assert not await two_store.locked("question")  # the lease taken on the kept run is given back
    finally:
        await one.aclose()
        await two.aclose()
