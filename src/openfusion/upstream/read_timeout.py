"""aiohttp's response protocol with its read timeout kept by one timer, moved lazily.

aiohttp bounds every wait for an upstream's next bytes by `sock_read` (`http.read_timeout_s`): each read
that brings bytes cancels the connection's timer and schedules a new one (~2 µs here; a streamed answer
pays it for every token). Here a read only moves the deadline forward; the one timer, when it fires,
re-arms itself for what is left until the deadline, or times the read out. The deadline is aiohttp's own
(the last read plus the limit, from the same clock); only the timer's bookkeeping is lazy. A limit
shorter than the armed timer's (a request with a shorter `sock_read` on a reused connection) re-arms it
at once.

aiohttp has no public hook for its protocol class: `use_lazy_read_timeout` sets the connector's factory,
and reports whether it could (`tests/component/test_read_timeout.py` fails if a new aiohttp moves it).
"""

from __future__ import annotations

import asyncio
import functools
import logging

import aiohttp
from aiohttp.client_proto import ResponseHandler

log = logging.getLogger("openfusion.upstream")


class LazyReadTimeout(ResponseHandler):
    """aiohttp's `ResponseHandler`, its read timer re-armed when it fires instead of at every read."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._read_deadline = 0.0  # the last read (or the request's end) plus the limit: the loop's clock
        self._timer_at = 0.0  # when the armed timer fires (meaningful while `_read_timeout_handle` is set)

    def _reschedule_timeout(self) -> None:  # aiohttp's: on each read with bytes, and once the request is out
        timeout = self._read_timeout
        if not timeout:
            self._drop_timeout()
            return
        deadline = self._read_deadline = self._loop.time() + timeout
        handle = self._read_timeout_handle
        if handle is not None:
            if self._timer_at <= deadline:  # fires no later than the deadline: it moves itself on then
                return
            handle.cancel()  # a shorter limit than the one it was armed for
        self._arm(deadline)

    def _arm(self, when: float) -> None:
        self._timer_at = when
        self._read_timeout_handle = self._loop.call_at(when, self._read_timer_fired)

    def _read_timer_fired(self) -> None:
        self._read_timeout_handle = None
        if self._loop.time() < self._read_deadline:  # bytes came since it was armed
            self._arm(self._read_deadline)
        else:
            self._on_read_timeout()


def use_lazy_read_timeout(connector: aiohttp.TCPConnector) -> bool:
    """Have the connector's new connections use `LazyReadTimeout`; False (aiohttp's own kept) if it cannot."""
    factory = getattr(connector, "_factory", None)
    if not (isinstance(factory, functools.partial) and factory.func is ResponseHandler):
        log.debug("aiohttp's connector has no protocol factory to replace: its own read timer is kept")
        return False
    connector._factory = functools.partial(LazyReadTimeout, *factory.args, **factory.keywords)
    return True
