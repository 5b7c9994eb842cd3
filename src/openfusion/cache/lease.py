"""A run's lock in Redis, held for as long as the run goes: renewed, so that it does not expire under a long run.

The lock tells every replica that a run of its key is under way, and its identical requests wait for that run. It
used to expire `wait_s` after it was taken, whether or not the run had ended: a run longer than that (a slow panel, a
loaded machine) lost its lock midway, and an identical request on another replica then took it and made the run a
second time, where one on the same replica waited. Now a lock expires `LEASE_S` after it was last renewed, and its
holder renews it every `RENEW_EVERY_S` until the run is given back: a replica that died with its run holds it no
longer than `LEASE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from openfusion.cache.stores import RedisStore
from openfusion.errors import OpenFusionError

log = logging.getLogger("openfusion.cache")

LEASE_S = 30.0  # a run's lock expires this long after its last renewal (its holder gone)
RENEW_EVERY_S = LEASE_S / 3  # two renewals may fail, or come late on a loaded machine, before it lapses
_STORE_ERRORS = (OpenFusionError, RedisError, OSError, TimeoutError)


class Leases:
    """The locks this process holds in Redis, each renewed until its run is given back."""

    def __init__(self, store: RedisStore, *, timeout_s: float) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._renewing: set[asyncio.Task[None]] = set()

    def hold(self, key: str, token: str) -> Callable[[], None]:
        """Renew the lock `token` took on `key` until the returned callback is called (the run given back)."""
        task = asyncio.get_running_loop().create_task(self._renew(key, token), name="cache-lease")
        self._renewing.add(task)
        task.add_done_callback(self._renewing.discard)
        return task.cancel

    async def _renew(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                async with asyncio.timeout(self.timeout_s):
                    held = await self.store.renew(key, token, ttl_s=LEASE_S)
            except _STORE_ERRORS as exc:  # tried again at the next renewal, while the lock still holds
                log.warning("result cache lock renewal failed: %s", exc)
                continue
            if not held:  # it lapsed (Redis restarted, or renewals failed for LEASE_S): another may run it now
                log.warning("result cache lock lapsed while its run was under way")
                return

    async def aclose(self) -> None:
        """Stop renewing (the locks expire by themselves)."""
        tasks, self._renewing = list(self._renewing), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
