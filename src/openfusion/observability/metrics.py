"""Prometheus metrics, one registry per app (so several apps in one process never collide).

Under `--workers N` each worker counts in prometheus_client's multiprocess mode (files in the server's
private directory, see `observability.metrics_dir`), and /metrics, whichever worker answers it, adds up
every worker's files: counters and histograms over all workers, dead ones included; a gauge by its
`multiprocess_mode`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from openfusion.activity import ActivityWriter
from openfusion.observability.series import Update, incrementer, observer
from openfusion.upstream.trace import CallTrace

# Seconds: from a fast local call to a long reasoning run.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
# How often a worker publishes its activity writer's counters (a gauge function cannot cross processes).
_PUBLISH_EVERY_S = 1.0


class Metrics:
    """The counters, histograms and gauges openfusion exports at /metrics."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        # Set only in a worker of several, whose prometheus_client was imported with PROMETHEUS_MULTIPROC_DIR.
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "openfusion_requests",
            "Requests by route (fusion/<preset>, tool/<preset>, passthrough/<provider>) and outcome.",
            ["route", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "openfusion_requests_in_flight", "Requests being served now.", registry=r, multiprocess_mode="livesum"
        )
        self.stage_seconds = Histogram(
            "openfusion_upstream_call_seconds",
            "Upstream call latency by role (panel member, judge, synthesizer, passthrough).",
            ["role"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token_seconds = Histogram(
            "openfusion_synthesizer_first_token_seconds",
            "Time from the synthesizer call to its first streamed chunk.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "openfusion_upstream_errors", "Failed upstream calls by provider and status.", ["provider", "status"],
            registry=r,
        )  # fmt: skip
        self.tokens = Counter("openfusion_tokens", "Tokens used upstream.", ["kind"], registry=r)
        self.auth_refusals = Counter(
            "openfusion_auth_refusals",
            "Requests refused by the key check, by reason (missing, malformed, unknown, braked).",
            ["reason"],
            registry=r,
        )
        self.cost = Counter("openfusion_cost_usd", "Known upstream cost in USD.", registry=r)
        self.overhead_seconds = Histogram(
            "openfusion_overhead_seconds",
            "Time spent in openfusion itself (request time not covered by an upstream call).",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        # A worker's drops stay counted after it exits ("sum"); its backlog goes with it ("livesum").
        self.activity_dropped = Gauge(
            "openfusion_activity_dropped",
            "Activity records dropped (queue full or store outage).",
            registry=r,
            multiprocess_mode="sum",
        )
        self.activity_set_aside = Gauge(
            "openfusion_activity_set_aside",
            "Activity records set aside: their writes kept failing while the store wrote others (in dropped too).",
            registry=r,
            multiprocess_mode="sum",
        )
        self.activity_queued = Gauge(
            "openfusion_activity_queued",
            "Activity records waiting for the store (the writer's backlog).",
            registry=r,
            multiprocess_mode="livesum",
        )
        # A request's updates, bound once (`observability.series`); a labelled series only once it is first counted,
        # so that /metrics shows no series before it has a value, as `labels()` would make it.
        self._series: dict[tuple[Any, ...], Update] = {}
        self._in_flight = incrementer(self.in_flight)
        self._first_token = observer(self.first_token_seconds)
        self._overhead = observer(self.overhead_seconds)
        self._cost = incrementer(self.cost)

        self.cache_lookups = Counter(
            "openfusion_cache_lookups",
            "Result cache lookups of cacheable fusion requests by result (hit, miss, bypass, refresh).",
            ["result"],
            registry=r,
        )
        self.cache_bytes = Counter(
            "openfusion_cache_stored_bytes", "Bytes of fusion runs written to the result cache.", registry=r
        )
        self.cache_cost_saved = Counter(
            "openfusion_cache_cost_saved_usd", "Known upstream cost in USD that result cache hits did not spend.",
            registry=r,
        )  # fmt: skip
        self.cache_skipped = Counter(
            "openfusion_cache_skipped",
            "Finished runs of cacheable requests not kept, by reason (degraded, research, truncated, filtered, empty, "
            "too_large).",
            ["reason"],
            registry=r,
        )

    def watch_activity(self, writer: ActivityWriter) -> asyncio.Task[None] | None:
        """Read the writer's counters when scraped: a value set per request would go stale once the backlog drains.

        A worker of several cannot be read by the worker that answers the scrape: it publishes them every
        second instead, from the task returned (cancel it at shutdown).
        """
        if self.multiprocess_dir is None:
            self.activity_dropped.set_function(lambda: writer.stats.lost)
            self.activity_set_aside.set_function(lambda: writer.stats.set_aside)
            self.activity_queued.set_function(lambda: writer.stats.queued)
            return None
        return asyncio.get_running_loop().create_task(self._publish(writer), name="openfusion-metrics-activity")

    async def _publish(self, writer: ActivityWriter) -> None:
        while True:
            stats = writer.stats
            self.activity_dropped.set(stats.lost)
            self.activity_set_aside.set(stats.set_aside)
            self.activity_queued.set(stats.queued)
            await asyncio.sleep(_PUBLISH_EVERY_S)

    def request_started(self) -> None:
        """One request more in flight."""
        self._in_flight(1)

    def request_ended(self) -> None:
        """One request fewer in flight."""
        self._in_flight(-1)

    def observe_request(
        self, calls: Iterable[CallTrace], *, route: str, status: str, overhead_s: float, cost: float | None
    ) -> None:
        """Count a finished request: its upstream calls, its outcome, the time spent in openfusion, its known cost."""
        self.observe_calls(calls)
        self.count_request(route, status)
        self._overhead(overhead_s)
        if cost:
            self._cost(cost)

    def observe_calls(self, calls: Iterable[CallTrace]) -> None:
        """Count a request's finished upstream calls (their tokens added up first: one increment per kind)."""
        series = self._series
        prompt = completion = 0
        reported = False
        for call in calls:
            role = call.role
            stage = series.get((self.stage_seconds, role)) or self._bind(observer, self.stage_seconds, role)
            stage(call.latency_ms / 1000)
            if role == "synthesizer" and call.first_token is not None:
                self._first_token(call.first_token - call.started)
            if call.status == "error":
                self._count(self.upstream_errors, call.provider, _status_label(call.upstream_status))
            if call.usage is not None:
                reported = True
                prompt += call.usage.prompt_tokens
                completion += call.usage.completion_tokens
        if reported:
            self._count(self.tokens, "prompt", amount=prompt)
            self._count(self.tokens, "completion", amount=completion)

    def count_request(self, route: str, status: str) -> None:
        """Count one finished request."""
        self._count(self.requests, route, status)

    def count_auth_refusal(self, reason: str) -> None:
        """Count one request refused by the key check."""
        self._count(self.auth_refusals, reason)

    def _count(self, counter: Counter, *values: str, amount: float = 1) -> None:
        """Add `amount` (never negative) to a labelled counter's series."""
        inc = self._series.get((counter, *values)) or self._bind(incrementer, counter, *values)
        inc(amount)

    def _bind(self, bind: Any, metric: Any, *values: str) -> Update:
        """A labelled series' update, kept: its label values are the server's own (presets, providers, roles,
        statuses, reasons), never a client's, so the series are as few as the metric's own."""
        update: Update = bind(metric.labels(*values))
        self._series[(metric, *values)] = update
        return update

    def render(self) -> bytes:
        """The text exposition format (of every worker, under several)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        return generate_latest(registry)


def _status_label(status: int | None) -> str:
    """An upstream error's `status` label: its HTTP status, else `transport`; `other` for a code outside HTTP's.

    A provider chooses the code of an error event in a stream freely: taken as it came, each code would be a new
    series in /metrics (and, under several workers, in every worker's files) for as long as the server runs.
    """
    if not status:
        return "transport"
    return str(status) if 100 <= status <= 599 else "other"
