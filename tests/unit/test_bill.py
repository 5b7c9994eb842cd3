"""RequestTrace.bill(): what a request's calls used, and whether all of it is known."""

from __future__ import annotations

from openfusion.protocol import Usage
from openfusion.upstream.trace import CallTrace, RequestTrace, end_call, known_usage


def call(
    status: str, *, usage: Usage | None = None, sent: bool = True, upstream_status: int | None = None
) -> CallTrace:
    trace = CallTrace(role="panel", model="up/a", provider="up", started=0.0, sent=sent)
    end_call(trace, status=status, usage=usage, upstream_status=upstream_status)
    return trace


USED = Usage(prompt_tokens=900, completion_tokens=10, total_tokens=910, cost=0.5)


def test_what_each_kind_of_call_is_known_to_have_used() -> None:
    assert known_usage(call("ok", usage=USED)) == USED
    assert known_usage(call("ok")) is None  # answered without reporting usage
    assert known_usage(call("error", upstream_status=429)) == Usage()  # refused: nothing billed
    assert known_usage(call("error", sent=False)) == Usage()  # never left: nothing billed
    assert known_usage(call("cancelled", sent=False)) == Usage()
    assert known_usage(call("error")) is None  # broken off after it was sent: maybe billed
    assert known_usage(call("cancelled")) is None
    assert known_usage(call("error", usage=USED)) == USED  # a stream that reported usage, then broke


def test_the_bill_sums_known_calls_and_says_when_one_is_unknown() -> None:
    trace = RequestTrace(calls=[call("ok", usage=USED), call("error", upstream_status=500)])
    bill = trace.bill()
    assert bill.complete and bill.usage.total_tokens == 910 and bill.usage.cost == 0.5

    trace.calls.append(call("cancelled"))
    bill = trace.bill()
    assert not bill.complete and bill.usage.total_tokens == 910 and bill.usage.cost is None


def test_the_price_table_fills_in_an_unreported_cost() -> None:
    unpriced = call("ok", usage=USED.model_copy(update={"cost": None}))
    trace = RequestTrace(calls=[unpriced], pricing=lambda model, usage, reported, **_: usage.prompt_tokens * 1e-3)
    assert trace.bill().usage.cost == 0.9
    assert RequestTrace(calls=[unpriced]).bill().usage.cost is None  # without prices: unknown, never guessed


def test_no_calls_cost_nothing_known() -> None:
    bill = RequestTrace().bill()
    assert bill.complete and bill.usage.total_tokens == 0 and bill.usage.cost is None


def test_asked_again_with_nothing_changed_it_is_the_same_bill_priced_once() -> None:
    priced: list[str] = []

    def pricing(model: str, usage: Usage, reported: float | None, /, *, long_writes: bool = False) -> float | None:
        priced.append(model)
        return 0.25

    running = CallTrace(role="synthesizer", model="up/s", provider="up", started=0.0, sent=True)
    trace = RequestTrace(calls=[call("ok", usage=USED.model_copy(update={"cost": None}))], pricing=pricing)
    first = trace.bill()
    assert trace.bill() is first and priced == ["up/a"]  # the response's summary, then the record: one pricing
    assert first.costs == (0.25,)

    trace.calls.append(running)  # a new call: billed anew
    assert trace.bill().costs == (0.25, None) and not trace.bill().complete
    end_call(running, status="ok", usage=USED)  # it ended and reported: billed anew, the new call now priced
    ended = trace.bill()
    assert ended.complete and ended.usage.total_tokens == 2 * 910 and ended.costs == (0.25, 0.25)
    assert priced == ["up/a", "up/a", "up/a", "up/s"]
