"""MessageAccumulator: a whole message from streamed deltas, kept compact while it grows."""

from __future__ import annotations

import tracemalloc

from openfusion.pipeline.synthesize import MessageAccumulator


def _delta(**delta: object) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def test_a_long_answer_is_whole_and_in_order() -> None:
    accumulator = MessageAccumulator()
    tokens = [f"t{n} " for n in range(1000)]
    for n, token in enumerate(tokens):
        accumulator.feed(_delta(content=token, **({"reasoning": "r"} if n % 2 else {})))
    accumulator.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})

    message = accumulator.message()
    assert message["content"] == "".join(tokens)
    assert message["reasoning"] == "r" * 500
    assert "refusal" not in message
    assert accumulator.finish_reason == "stop"


def test_an_empty_piece_still_counts_as_present() -> None:
    accumulator = MessageAccumulator()
    accumulator.feed(_delta(content="hi", refusal=""))
    assert accumulator.message()["refusal"] == ""


def test_a_streamed_answer_costs_about_its_text_not_an_object_per_token() -> None:
    expected = "".join(f"w{n:04d} " for n in range(1200))  # 7,200 characters
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        accumulator = MessageAccumulator()
        for n in range(1200):
            accumulator.feed(_delta(content=f"w{n:04d} "))  # a fresh str per token, as decoded from the wire
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert str(accumulator.content) == expected
    assert held < 20_000  # 1,200 str objects in a list would hold ~80,000 bytes
