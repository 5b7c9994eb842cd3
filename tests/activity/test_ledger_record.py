"""A request's record, built by the writer in its batch, is the request as it stood when its ledger closed."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from openfusion.activity import ActivityWriter, PriceTable
from openfusion.activity.sqlite_store import SqliteStore
from openfusion.api.ledger import Ledger
from openfusion.api.shutdown import Drain
from openfusion.observability.metrics import Metrics
from openfusion.protocol import Usage
from openfusion.upstream.trace import CallTrace, end_call


def _state(writer: ActivityWriter) -> SimpleNamespace:
    """What a ledger uses of the app's state, made of the real parts."""
    return SimpleNamespace(activity=writer, metrics=Metrics(), drain=Drain(), prices=PriceTable({}))


def _call(ledger: Ledger, role: str, model: str) -> CallTrace:
    call = CallTrace(role=role, model=model, provider="fake", started=ledger.trace.started)
    ledger.trace.calls.append(call)
    return call


async def test_the_record_is_the_request_at_its_close_not_later(sqlite_store: SqliteStore) -> None:
    writer = ActivityWriter(sqlite_store, flush_interval_s=60.0)
    writer.start()
    ledger = Ledger(_state(writer), requested_model="fusion/trio", streamed=True)  # type: ignore[arg-type]
    done, running = _call(ledger, "panel", "fake/a"), _call(ledger, "synthesizer", "fake/synth")
    end_call(done, status="ok", usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5))
    await asyncio.sleep(0.05)
    ledger.failed(asyncio.CancelledError())  # the client left while the synthesizer was answering
    ledger.close()
    closed_ms = (time.perf_counter() - ledger.trace.started) * 1000
    assert writer.stats.queued == 1 and await sqlite_store.get(ledger.generation_id) is None  # not written yet
    # What happens after the close reaches neither the ledger's record nor its calls'.
    ledger.status, ledger.model = "ok", "fake/later"
    await asyncio.sleep(0.2)
    end_call(running, status="ok", usage=Usage(prompt_tokens=9, completion_tokens=9, total_tokens=18))
    ledger.trace.calls.append(CallTrace(role="judge", model="fake/judge", provider="fake", started=0.0))
    await writer.aclose()

    entry = await sqlite_store.get(ledger.generation_id)
    assert entry is not None
    assert (entry.generation.status, entry.generation.model) == ("cancelled", None)
    panel, synth = entry.calls
    assert (panel.status, panel.completion_tokens) == ("ok", 2)
    # Stopped where the close found it: no tokens, and the time until then, not until it later ended (0.2 s after the
    # close at least). Bounded by the close as read here, not by a fixed time a loaded machine may overrun.
    assert (synth.status, synth.completion_tokens) == ("cancelled", 0)
    assert 50 <= synth.latency_ms <= closed_ms + 1
    assert entry.generation.usage.completion_tokens == 2


class UnansweringStore:
    """A store whose writes never get an answer (a database behind a network partition)."""

    async def write(self, batch: object) -> None:
        await asyncio.Event().wait()

    async def ping(self) -> None:
        await asyncio.Event().wait()


async def test_a_response_waiting_for_its_record_stops_waiting_when_the_grace_period_ends() -> None:
    writer = ActivityWriter(UnansweringStore(), write_timeout_s=30.0, confirms=True)  # type: ignore[arg-type]
    writer.start()
    state = _state(writer)
    waiting = Ledger(state, requested_model="fusion/trio", streamed=False)  # type: ignore[arg-type]
    commit = asyncio.create_task(waiting.commit())
    await asyncio.sleep(0.05)
    assert not commit.done()  # record_before_end: the body waits for its record
    state.drain.stop()
    async with asyncio.timeout(1):  # not the store's 30 s write timeout: the answer is whole, the record queued
        await commit
    late = Ledger(state, requested_model="fusion/trio", streamed=False)  # type: ignore[arg-type]
    async with asyncio.timeout(1):  # once the grace period is over, no response waits for its record at all
        await late.commit()
    await writer.aclose(timeout_s=0.1)
    assert writer.stats.lost == 2
