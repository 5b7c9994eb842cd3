"""Retry policy decisions and usage accounting."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest
from tenacity import RetryCallState

from openfusion.errors import (
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from openfusion.protocol import Usage, parse_usage, sum_usage
from openfusion.settings import RetrySettings
from openfusion.upstream.retry import is_retryable, parse_retry_after, retrying

# --- Retry-After -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("5", 5.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("Wed, 99 Foo 2015 xx:yy:zz GMT", None),
        ("12 seconds", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    header = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = parse_retry_after(header)
    assert seconds is not None
    assert 27 <= seconds <= 31


def test_parse_retry_after_http_date_in_the_past() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e999", "nan"])
def test_parse_retry_after_rejects_non_finite_numbers(value: str) -> None:
    """An odd header is None, not infinity: `round(inf)` in the Retry-After we send back raises OverflowError."""
    assert parse_retry_after(value) is None


# --- is_retryable ------------------------------------------------------------------------------------

SETTINGS = RetrySettings(max_retry_after_s=20.0)


def status(code: int, retry_after: float | None = None) -> UpstreamStatusError:
    return UpstreamStatusError("x", model="m/x", provider="p", upstream_status=code, retry_after=retry_after)


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (UpstreamTimeout("x", model="m/x", provider="p"), True),
        (UpstreamConnectionError("x", model="m/x", provider="p"), True),
        (status(429), True),
        (status(429, retry_after=0.0), True),
        (status(429, retry_after=5.0), True),
        (status(429, retry_after=20.0), True),  # the cap itself is still waited for
        (status(429, retry_after=20.5), False),
        (status(429, retry_after=3600.0), False),
        (status(500), True),
        (status(502), True),
        (status(503), True),
        (status(503, retry_after=1.0), True),
        (status(504), True),
        (status(400), False),
        (status(401), False),
        (status(402), False),
        (status(404), False),
        (status(408), False),
        (status(422), False),
        (UpstreamStatusError("x", model="m/x", provider="p"), False),  # no status known
        (UpstreamProtocolError("x", model="m/x", provider="p", upstream_status=200), False),
        (UpstreamError("x", model="m/x", provider="p", upstream_status=500), False),
        (ValueError("not an upstream error"), False),
    ],
)
def test_is_retryable(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc, SETTINGS) is retry


def test_retry_after_cap_comes_from_settings() -> None:
    exc = status(429, retry_after=30.0)
    assert is_retryable(exc, RetrySettings(max_retry_after_s=60.0)) is True
    assert is_retryable(exc, RetrySettings(max_retry_after_s=10.0)) is False
    assert is_retryable(status(429, retry_after=1.0), RetrySettings(max_retry_after_s=0.0)) is False


def wait_before_retry(exc: BaseException, settings: RetrySettings) -> float:
    """The wait the retry controller picks after a first attempt failed with `exc`."""
    controller = retrying(settings)
    state = RetryCallState(retry_object=controller, fn=None, args=(), kwargs={})
    state.set_exception((type(exc), exc, None))
    return float(controller.wait(state))


def test_wait_honours_a_short_retry_after() -> None:
    assert wait_before_retry(status(429, retry_after=3.0), SETTINGS) == 3.0
    assert wait_before_retry(status(503, retry_after=0.0), SETTINGS) == 0.0


def test_wait_without_retry_after_backs_off_within_bounds() -> None:
    settings = RetrySettings(initial_backoff_s=0.5, max_backoff_s=8.0)
    for exc in (status(500), UpstreamTimeout("x", model="m/x", provider="p")):
        assert 0.0 <= wait_before_retry(exc, settings) <= settings.max_backoff_s


@pytest.mark.parametrize("code", [429, 503])
@pytest.mark.parametrize("retry_after", [3600.0, float("inf")])
def test_never_waits_longer_than_the_retry_after_cap(code: int, retry_after: float) -> None:
    """A Retry-After over `max_retry_after_s` is never slept on, whatever the status: the error goes back."""
    exc = status(code, retry_after=retry_after)
    if is_retryable(exc, SETTINGS):
        assert wait_before_retry(exc, SETTINGS) <= SETTINGS.max_retry_after_s


async def test_no_retry_starts_past_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    settings = RetrySettings(max_attempts=10, initial_backoff_s=0, max_backoff_s=0)
    for deadline, wait, stops in (
        (loop.time() + 60, 0.0, False),
        (loop.time() + 60, 61.0, True),
        (loop.time(), 0.0, True),
    ):
        controller = retrying(settings, deadline=deadline)
        state = RetryCallState(retry_object=controller, fn=None, args=(), kwargs={})
        state.upcoming_sleep = wait
        assert controller.stop(state) is stops


# --- usage -------------------------------------------------------------------------------------------


def test_usage_addition_without_cost() -> None:
    total = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15) + Usage(
        prompt_tokens=1, completion_tokens=2, total_tokens=3
    )
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (11, 7, 18)
    assert total.cost is None
    assert total.render() == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


@pytest.mark.parametrize(
    ("left", "right", "cost"),
    [
        (0.25, 0.5, 0.75),
        (0.25, None, 0.25),
        (None, 0.5, 0.5),
        (0.0, None, 0.0),
        (None, None, None),
    ],
)
def test_usage_addition_cost(left: float | None, right: float | None, cost: float | None) -> None:
    total = Usage(prompt_tokens=1, cost=left) + Usage(completion_tokens=1, cost=right)
    if cost is None:
        assert total.cost is None
    else:
        assert total.cost == pytest.approx(cost)
    assert ("cost" in total.render()) is (cost is not None)


def test_usage_addition_does_not_mutate() -> None:
    left = Usage(prompt_tokens=1, cost=0.1)
    _ = left + Usage(prompt_tokens=2, cost=0.2)
    assert left.prompt_tokens == 1
    assert left.cost == 0.1


def test_sum_usage() -> None:
    assert sum_usage([]) == Usage()
    total = sum_usage([Usage(prompt_tokens=i, completion_tokens=i, total_tokens=2 * i) for i in range(1, 4)])
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens, total.cost) == (6, 6, 12, None)
    assert sum_usage([Usage(), Usage(cost=0.01), Usage(cost=0.02)]).cost == pytest.approx(0.03)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, (0, 0, 0, None)),
        ("usage", (0, 0, 0, None)),
        ([1, 2], (0, 0, 0, None)),
        ({}, (0, 0, 0, None)),
        ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, (3, 4, 7, None)),
        ({"prompt_tokens": 3, "completion_tokens": 4}, (3, 4, 7, None)),  # total is derived
        ({"prompt_tokens": 3}, (3, 0, 3, None)),
        ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 0}, (3, 4, 7, None)),
        ({"prompt_tokens": -5, "completion_tokens": 4}, (0, 4, 4, None)),
        ({"prompt_tokens": "3", "completion_tokens": 4.0}, (0, 0, 0, None)),
        ({"prompt_tokens": None, "completion_tokens": 2}, (0, 2, 2, None)),
        ({"prompt_tokens": 1, "cost": 0.002}, (1, 0, 1, 0.002)),
        ({"prompt_tokens": 1, "cost": 0}, (1, 0, 1, 0.0)),
        ({"prompt_tokens": 1, "cost": True}, (1, 0, 1, None)),
        ({"prompt_tokens": 1, "cost": "0.01"}, (1, 0, 1, None)),
        ({"prompt_tokens": 1, "cost": None}, (1, 0, 1, None)),
    ],
)
def test_parse_usage_leniency(raw: Any, expected: tuple[int, int, int, float | None]) -> None:
    usage = parse_usage(raw)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cost) == expected


def test_parse_usage_cost_is_a_float() -> None:
    cost = parse_usage({"cost": 1}).cost
    assert isinstance(cost, float)
    assert cost == 1.0


def test_parse_usage_bool_token_counts_are_odd_values() -> None:
    """`true` is not a token count: like a bool cost, it must count as unknown (zero), not as 1."""
    usage = parse_usage({"prompt_tokens": True, "completion_tokens": False, "total_tokens": True})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (0, 0, 0)
