"""A request's record, built by the writer in its batch, is the request as it stood when its ledger closed."""

from __future__ import annotations

import asyncio
import contextvars
import time
from types import SimpleNamespace

from openfusion.activity import (
    ActivityEntry,
    ActivityWriter,
    CallRecord,
    EntryRows,
    GenerationRecord,
    PanelText,
    PriceTable,
    Tokens,
)
from openfusion.activity.sql import entry_rows
from openfusion.activity.sqlite_store import SqliteStore
from openfusion.api.ledger import Ledger
from openfusion.api.shutdown import Drain
from openfusion.observability.metrics import Metrics
from openfusion.pipeline.analysis import Analysis
from openfusion.pipeline.events import RunContent
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
    # Bounds far from the store's 30 s write timeout, and from a loaded machine's pauses.
    async with asyncio.timeout(10):  # not the store's 30 s write timeout: the answer is whole, the record queued
        await commit
    late = Ledger(state, requested_model="fusion/trio", streamed=False)  # type: ignore[arg-type]
    async with asyncio.timeout(10):  # once the grace period is over, no response waits for its record at all
        await late.commit()
    await writer.aclose(timeout_s=0.1)
    assert writer.stats.lost == 2


class NoStore:
    """A store the test never lets the writer reach: the records stay queued, to be built by the test."""

    async def write(self, batch: object) -> None:
        raise AssertionError("not written in this test")

    async def ping(self) -> None:
        raise AssertionError("not written in this test")


# Text PostgreSQL cannot keep as it is (a NUL), where a request's record may hold text from outside: the client's, the
# upstream's, the configuration's. (A validated record cannot hold a lone surrogate, the other text stores refuse.)
ODD = "\x00"
STORED_ODD = "\ufffd"


def _closed_fusion(*, store_content: bool) -> tuple[Ledger, EntryRows]:
    """A fusion's ledger, closed with a call of each kind (one refused, one still running), and the rows it queued."""
    writer = ActivityWriter(NoStore(), store_content=store_content)  # type: ignore[arg-type]
    state = _state(writer)
    ledger = Ledger(  # type: ignore[arg-type]
        state,
        requested_model="fusion/trio" + ODD,
        streamed=True,
        preset="trio" + ODD,
        key_name="team-a" + ODD,
        api_type="messages",
    )
    panel, refused = _call(ledger, "panel", "fake/a"), _call(ledger, "panel", "fake/b" + ODD)
    judge, synth = _call(ledger, "judge", "fake/judge"), _call(ledger, "synthesizer", "fake/synth")
    end_call(panel, status="ok", usage=Usage(prompt_tokens=30, completion_tokens=12, total_tokens=42, cost=0.25))
    refused.retries = 2
    end_call(refused, status="error", error="returned HTTP 429: rate limited" + ODD, upstream_status=429)
    end_call(judge, status="ok", usage=Usage(prompt_tokens=50, completion_tokens=20, total_tokens=70))
    analysis = Analysis(consensus=["blue"], contradictions=[], partial_coverage=[], unique_insights=[], blind_spots=[])
    ledger.model, ledger.finish_reason = "fake/synth-1" + ODD, "stop" + ODD
    ledger.status_code, ledger.cost_saved = 200, None
    ledger.content = RunContent(panel_answers=[("fake/a", "Blue.\x00")], analysis=analysis, final_answer="Blue.")
    ledger.failed(asyncio.CancelledError())  # the client left while the synthesizer answered
    ledger.close()
    (draft,) = writer._queue
    built = draft.build()
    assert isinstance(built, EntryRows) and synth.status == "running"
    return ledger, built


def test_a_requests_rows_are_its_validated_records_rows() -> None:
    # The rows a request's ledger makes without records hold what its records, validated, would make: every column.
    for store_content in (False, True):
        # In a context of its own: a ledger sets the current request's trace, which would outlive this test in the
        # thread's context and take in the calls of a later test's pipeline run.
        ledger, rows = contextvars.copy_context().run(_closed_fusion, store_content=store_content)
        latency_ms = rows.generation[8]
        content = {
            "panel_answers": [PanelText(model="fake/a", content="Blue.\x00")],
            "analysis": {
                "consensus": ["blue"],
                "contradictions": [],
                "partial_coverage": [],
                "unique_insights": [],
                "blind_spots": [],
            },
            "final_answer": "Blue.",
        }
        generation = GenerationRecord(
            id=ledger.generation_id,
            created_at=ledger.created_at,
            requested_model="fusion/trio" + ODD,
            model="fake/synth-1" + ODD,
            preset="trio" + ODD,
            status="cancelled",
            failure_reason="cancelled",
            finish_reason="stop" + ODD,
            latency_ms=latency_ms,
            usage=Tokens(prompt_tokens=80, completion_tokens=32, total_tokens=112),
            cost=None,  # the synthesizer's cost is unknown, so the whole is
            streamed=True,
            key_name="team-a" + ODD,
            api_type="messages",
            status_code=200,
            **(content if store_content else {}),
        )
        answered = {"prompt_tokens": 30, "completion_tokens": 12, "cost": 0.25}
        refused = {"error": "returned HTTP 429: rate limited" + ODD, "upstream_status": 429, "retries": 2}
        expected_calls = [
            {"role": "panel", "model": "fake/a", "status": "ok", **answered},
            {"role": "panel", "model": "fake/b" + ODD, "status": "error", "cost": 0.0, **refused},
            {"role": "judge", "model": "fake/judge", "status": "ok", "prompt_tokens": 50, "completion_tokens": 20},
            {"role": "synthesizer", "model": "fake/synth", "status": "cancelled"},
        ]
        calls = tuple(
            CallRecord(
                generation_id=ledger.generation_id,
                provider="fake",
                latency_ms=row[9],
                started_ms=row[10],
                **fields,
            )
            for fields, row in zip(expected_calls, rows.calls, strict=True)
        )
        assert rows == entry_rows(ActivityEntry(generation, calls))
        # The outside text is kept as the stores keep it, in the rows made either way.
        assert rows.generation[2:5] == ("fusion/trio" + STORED_ODD, "fake/synth-1" + STORED_ODD, "trio" + STORED_ODD)
        assert (rows.generation[7], rows.generation[14]) == ("stop" + STORED_ODD, "team-a" + STORED_ODD)
        assert rows.calls[1][3] == "fake/b" + STORED_ODD
        assert rows.calls[1][11] == "returned HTTP 429: rate limited" + STORED_ODD
        stored = [value is not None for value in rows.generation[-3:]]
        assert stored == [store_content] * 3
        assert rows.calls[0][9] == ledger.trace.calls[0].latency_ms  # the time measured, as it was
