"""The ends of cached runs on every replica, as Redis announces them: waiters woken, not looking again every 50 ms.

A request waiting for an identical run on another replica used to look again every 50 ms: the entry, the lock, the
run's "not kept" mark, three Redis calls a look, ~60 a second for every waiting request, whatever the load. A run
given back now announces its key on a channel (the unlock script publishes it); each process holds one subscription
and wakes the requests waiting for that key. A look every second still catches what no announcement reports (a lock
that expired with its holder, a message lost with a connection), and while the subscription is down (Redis
restarting) the waiters look every 50 ms as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("openfusion.cache")

RESUBSCRIBE_S = 1.0  # after the subscription fails, before it is made again
_READ_S = 1.0  # one read of the subscription waits at most this long (then reads again)


class RunEnds:
    """One subscription to the channel runs' ends are announced on; `watch(key)` is woken by the next end of `key`."""

    def __init__(self, client: Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.live = False  # subscribed: an announced end reaches the waiters
        self._told = False  # a failure to subscribe was logged (once: it is retried every second)

    def watch(self, key: str) -> asyncio.Future[None]:
        """A future done at the next announced end of a run of `key`; give it back with `unwatch`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="cache-run-ends")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(future)
        return future

    def unwatch(self, key: str, future: asyncio.Future[None]) -> None:
        waiting = self._waiters.get(key)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiters[key]

    def _ended(self, key: str) -> None:
        for future in self._waiters.pop(key, ()):
            if not future.done():
                future.set_result(None)

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=_READ_S)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self.live = True  # from here no end is missed; what ended before is unknown:
                        self._wake_all()  # whoever waits looks again
                    elif message["type"] == "message":
                        data = message["data"]
                        self._ended(data.decode() if isinstance(data, bytes) else str(data))
            except Exception as exc:  # Redis gone or restarting, or no channels in the user's ACL: again in a moment
                if self.live or not self._told:
                    self._told = True
                    log.warning("result cache: no subscription to runs' ends (waiters look every 50 ms): %s", exc)
            finally:
                self.live = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
                self._wake_all()  # whatever was announced meanwhile is unknown: every waiter looks again
            await asyncio.sleep(RESUBSCRIBE_S)

    def _wake_all(self) -> None:
        for key in list(self._waiters):
            self._ended(key)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake_all()
