"""The one retry policy for upstream calls: connect errors, timeouts, 429 and 5xx, honouring Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Mapping
from contextvars import ContextVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_random_exponential

from openfusion.errors import UpstreamConnectionError, UpstreamStatusError, UpstreamTimeout
from openfusion.settings import RetrySettings

# The header the openai and anthropic SDKs send with every attempt: 0 on the first, n on their n-th retry.
CLIENT_RETRY_HEADER = "x-stainless-retry-count"

# Whether the current request is a client's own retry: its upstream calls then get one attempt each, so the
# client's retries and ours do not multiply (set per request, inherited by every task it starts).
_client_retrying: ContextVar[bool] = ContextVar("openfusion_client_retrying", default=False)


def note_client_retry(headers: Mapping[str, str]) -> bool:
    """Remember for the current request whether its client is retrying it (retry count above 0); that flag."""
    value = headers.get(CLIENT_RETRY_HEADER, "").strip()
    retrying_already = value.isdigit() and int(value) > 0
    _client_retrying.set(retrying_already)
    return retrying_already


def client_is_retrying() -> bool:
    """Whether the current request is a client's retry: no upstream call of it is retried again."""
    return _client_retrying.get()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or odd."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_retryable(exc: BaseException, settings: RetrySettings) -> bool:
    """Whether an upstream failure is worth another attempt."""
    if isinstance(exc, UpstreamTimeout | UpstreamConnectionError):
        return True
    if isinstance(exc, UpstreamStatusError) and exc.upstream_status is not None:
        if exc.retry_after is not None and exc.retry_after > settings.max_retry_after_s:
            return False  # a wait longer than the cap is the caller's decision, not ours
        return exc.upstream_status == 429 or exc.upstream_status >= 500
    return False


class _WaitRetryAfter(wait_base):
    """Wait what the upstream asked for, else back off exponentially with full jitter."""

    def __init__(self, settings: RetrySettings) -> None:
        self._fallback = wait_random_exponential(multiplier=settings.initial_backoff_s, max=settings.max_backoff_s)

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, float | int):
            return float(retry_after)
        return float(self._fallback(retry_state))


class _StopAtDeadline(stop_base):
    """Stop when the next attempt would begin past the call's deadline (event-loop time)."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return asyncio.get_running_loop().time() + retry_state.upcoming_sleep >= self._deadline


def retrying(settings: RetrySettings, *, deadline: float | None = None) -> AsyncRetrying:
    """A fresh tenacity controller for one upstream call; no attempt starts past `deadline` (loop time)."""
    stop = stop_after_attempt(settings.max_attempts)
    return AsyncRetrying(
        stop=stop if deadline is None else stop | _StopAtDeadline(deadline),
        wait=_WaitRetryAfter(settings),
        retry=retry_if_exception(lambda exc: is_retryable(exc, settings)),
        reraise=True,
    )
