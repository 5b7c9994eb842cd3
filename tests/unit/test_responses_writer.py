"""The Responses event writer on its own: exact event order and shapes for the cases e2e tests reach less easily."""

from __future__ import annotations

from typing import Any

from openfusion.api.responses.request import ResponsesRequest
from openfusion.api.responses.writer import ResponseWriter
from openfusion.errors import FusionFailed
from openfusion.pipeline.events import (
    PanelAnswer,
    PanelDelta,
    PanelFailure,
    PanelistDone,
    PanelStarted,
    RunFinished,
    SynthesisChunk,
    SynthesisStarted,
)
from openfusion.protocol import Usage


def writer() -> ResponseWriter:
    return ResponseWriter(request=ResponsesRequest(model="fusion/x", input="Hi"), model="fusion/x")


def chunk(**delta: Any) -> SynthesisChunk:
    finish = delta.pop("finish", None)
    return SynthesisChunk({"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def finished(**extra: Any) -> RunFinished:
    return RunFinished(model="m", usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5), fusion={}, **extra)


def render(w: ResponseWriter, *events: Any) -> list[dict[str, Any]]:
    out = w.start()
    for event in events:
        out += w.render(event)
    return out


def test_tool_mode_text_then_fusion_then_text() -> None:
    w = writer()
    events = render(
        w,
        chunk(content="Let me ask the panel."),
        PanelStarted(["a/x"]),
        PanelDelta("a/x", "Shard."),
        PanelistDone(PanelAnswer("a/x", "Shard.", 10, Usage(), label="a/x")),
        SynthesisStarted("m"),
        chunk(content="Shard by tenant.", finish="stop"),
        finished(),
    )

    assert [(e["type"], e.get("output_index")) for e in events] == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.content_part.added", 0),
        ("response.output_text.delta", 0),
        ("response.output_text.done", 0),  # the outer model's text closes before the fusion item opens
        ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.fusion_call.in_progress", 1),
        ("response.fusion_call.panel.added", 1),
        ("response.fusion_call.panel.delta", 1),
        ("response.fusion_call.panel.completed", 1),
        ("response.fusion_call.completed", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2),
        ("response.content_part.added", 2),
        ("response.output_text.delta", 2),
        ("response.output_text.done", 2),
        ("response.content_part.done", 2),
        ("response.output_item.done", 2),
        ("response.completed", None),
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "openrouter:fusion", "message"]
    assert final["usage"]["input_tokens"] == 3 and final["usage"]["total_tokens"] == 5


def test_citations_become_annotations_before_the_text_is_done() -> None:
    citation = {"type": "url_citation", "url_citation": {"url": "https://a.example/", "title": "A",
                                                          "start_index": 4, "end_index": 22}}  # fmt: skip
    events = render(writer(), chunk(content="See https://a.example/", finish="stop"), finished(annotations=[citation]))

    kinds = [e["type"] for e in events]
    added = events[kinds.index("response.output_text.annotation.added")]
    assert kinds.index("response.output_text.annotation.added") < kinds.index("response.output_text.done")
    flat = {"type": "url_citation", "url": "https://a.example/", "title": "A", "start_index": 4, "end_index": 22}
    assert added["annotation"] == flat and added["annotation_index"] == 0
    assert events[-1]["response"]["output"][0]["content"][0]["annotations"] == [flat]


def test_a_failure_closes_every_open_item_then_fails() -> None:
    w = writer()
    events = render(w, PanelStarted(["a/x", "b/y"]), PanelistDone(PanelFailure("a/x", "down", 5, status_code=503)))
    error = FusionFailed("Fusion failed: all panel models failed.", code="all_panels_failed")
    events += w.fail(error)

    assert [e["type"] for e in events[-3:]] == [
        "response.fusion_call.completed",
        "response.output_item.done",
        "response.failed",
    ]
    item = events[-2]["item"]
    assert item["status"] == "incomplete" and item["failure_reason"] == "all_panels_failed"
    assert item["failed_models"] == [{"model": "a/x", "error": "down", "status_code": 503}]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "all_panels_failed", "message": error.message}
    assert failed["output"][0]["id"] == item["id"]


def test_a_failure_mid_answer_leaves_the_message_incomplete() -> None:
    w = writer()
    events = render(w, chunk(content="Half an ans"))
    events += w.fail(FusionFailed("cut", code="upstream_error"))

    done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert done["status"] == "incomplete" and done["content"][0]["text"] == "Half an ans"
    assert events[-1]["type"] == "response.failed"


def test_parallel_function_calls_are_items_of_their_own() -> None:
    calls = [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a":'}},
             {"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]  # fmt: skip
    events = render(writer(), chunk(tool_calls=calls), chunk(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}],
                                                                 finish="tool_calls"), finished())  # fmt: skip

    output = events[-1]["response"]["output"]
    assert [(i["type"], i["call_id"], i["name"], i["arguments"]) for i in output] == [
        ("function_call", "c1", "f", '{"a":1}'),
        ("function_call", "c2", "g", "{}"),
    ]
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert added == done == [0, 1]  # each added once, each done once
