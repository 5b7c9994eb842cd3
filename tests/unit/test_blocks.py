"""Chat chunks as output blocks (`api.blocks`): which delta belongs to which tool call."""

from __future__ import annotations

from typing import Any

from openfusion.api.blocks import BlockStream


def streamed(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"tool_calls": list(calls)}}]}


def calls(stream: BlockStream) -> list[tuple[str, str, str]]:
    stream.close()
    return [(b.call_id, b.name, b.value()) for b in stream.blocks if b.kind == "tool_call"]


def test_numbered_fragments_build_each_call_by_its_index() -> None:
    stream = BlockStream()
    stream.feed(streamed({"index": 0, "id": "c1", "function": {"name": "weather", "arguments": '{"ci'}}))
    stream.feed(streamed({"index": 1, "id": "c2", "function": {"name": "time", "arguments": '{"tz":'}}))
    stream.feed(
        streamed(
            {"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}, {"index": 1, "function": {"arguments": '"UTC"}'}}
        )
    )

    assert calls(stream) == [("c1", "weather", '{"city":"Oslo"}'), ("c2", "time", '{"tz":"UTC"}')]


def test_calls_without_an_index_are_told_apart_by_their_ids() -> None:
    """Gemini's OpenAI-compatible endpoint streams parallel calls whole, one per chunk, none with `index`: each
    used to land on index 0, so the second call's arguments were appended to the first's and the call was lost."""
    stream = BlockStream()
    stream.feed(streamed({"id": "c1", "function": {"name": "weather", "arguments": '{"city":"London"}'}}))
    stream.feed(streamed({"id": "c2", "function": {"name": "time", "arguments": '{"tz":"UTC"}'}}))

    assert calls(stream) == [("c1", "weather", '{"city":"London"}'), ("c2", "time", '{"tz":"UTC"}')]


def test_a_fragment_without_index_or_id_goes_on_with_the_call_before_it() -> None:
    stream = BlockStream()
    stream.feed(streamed({"id": "c1", "function": {"name": "weather", "arguments": '{"city":'}}))
    stream.feed(streamed({"function": {"arguments": '"Oslo"}'}}))
    stream.feed(streamed({"id": "c2", "function": {"name": "time", "arguments": "{}"}}))

    assert calls(stream) == [("c1", "weather", '{"city":"Oslo"}'), ("c2", "time", "{}")]


def test_a_whole_message_takes_its_calls_in_order() -> None:
    message = {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]}  # fmt: skip
    stream = BlockStream()
    stream.feed({"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})

    assert calls(stream) == [("c1", "weather", "{}"), ("c2", "time", "{}")]


def test_text_written_between_a_calls_arguments_comes_after_the_call_which_stays_whole() -> None:
    """A stream that writes text while a call's arguments are still coming: a stopped block takes no more, so the
    call stayed cut (its input `{}`) when the text closed it; the text now follows the calls."""
    stream = BlockStream()
    stream.feed(streamed({"index": 0, "id": "c1", "function": {"name": "weather", "arguments": '{"ci'}}))
    stream.feed({"choices": [{"index": 0, "delta": {"content": "Checking."}}]})
    stream.feed(streamed({"index": 0, "function": {"arguments": 'ty":"London"}'}}))
    stream.close()

    assert [(b.kind, b.value()) for b in stream.blocks] == [
        ("tool_call", '{"city":"London"}'),
        ("text", "Checking."),
    ]
    assert all(block.closed for block in stream.blocks)
