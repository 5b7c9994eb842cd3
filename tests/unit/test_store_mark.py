"""The `store` a relayed Responses stream says when openfusion keeps the response: every event carrying it, marked."""

from __future__ import annotations

import json

import orjson
from hypothesis import given
from hypothesis import strategies as st

from openfusion.api.responses.store_mark import mark_stored, marked_events
from openfusion.sse_events import WholeEvents


def event(kind: str, **fields: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "store": False, "output": []}
STREAM = b"".join([
    event("response.created", sequence_number=0, response=RESPONSE),
    event("response.output_text.delta", sequence_number=1, delta='say "response": {'),
    b": keep-alive\n\n",
    event("response.completed", sequence_number=2, response={**RESPONSE, "status": "completed"}),
])  # fmt: skip


def marked(stream: bytes, cuts: list[int]) -> bytes:
    """The stream as a relay that keeps the response passes it on, read in pieces cut at `cuts`: its whole events
    marked, what it leaves unfinished at its end as it came."""
    events, out, start = WholeEvents(), [], 0
    for end in [*sorted({min(cut, len(stream)) for cut in cuts}), len(stream)]:
        out.append(marked_events(events.cut(stream[start:end])))
        start = end
    return b"".join(out) + events.rest()


def test_each_event_carrying_the_response_says_it_is_stored_and_the_rest_is_relayed_as_it_came() -> None:
    out = marked(STREAM, [])

    events = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert [e["response"]["store"] for e in events if "response" in e] == [True, True]
    assert [e["response"]["status"] for e in events if "response" in e] == ["in_progress", "completed"]
    assert out.replace(b'"store":true', b'"store":false') == STREAM  # nothing else changed, nor reordered


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_the_stream_comes_out_the_same_however_it_is_cut(cuts: list[int]) -> None:
    assert marked(STREAM, cuts) == marked(STREAM, [])


def test_crlf_lines_keep_their_ends_and_an_unended_last_line_comes_out_as_it_is() -> None:
    stream = STREAM.replace(b"\n", b"\r\n") + b"data: {"

    out = marked(stream, [7, 100])

    assert out.count(b"\r\n") == stream.count(b"\r\n") and out.endswith(b"\r\n\r\ndata: {")
    assert out.count(b'"store":true') == 2


def test_an_event_whose_data_spans_lines_is_marked_on_one_line_where_they_were() -> None:
    data = orjson.dumps({"type": "response.created", "sequence_number": 0, "response": RESPONSE})
    stream = b"event: response.created\r\ndata: " + data.replace(b',"', b',\r\ndata: "', 2) + b"\r\nid: 1\r\n\r\n"

    out = marked(stream, [40])

    lines = out.split(b"\r\n")
    assert lines[0] == b"event: response.created" and lines[2:] == [b"id: 1", b"", b""]
    assert orjson.loads(lines[1][6:])["response"] == {**RESPONSE, "store": True}


def test_json_spelt_with_spaces_is_read_too() -> None:
    spaced = json.dumps({"type": "response.created", "response": RESPONSE}).encode()  # `"response": {`, as Python's
    stream = b"event: response.created\ndata: " + spaced + b"\n\n"

    assert orjson.loads(marked(stream, [30]).split(b"\n")[1][6:])["response"]["store"] is True


def test_a_response_that_already_says_stored_is_left_as_it_came() -> None:
    stream = b"data: " + json.dumps({"type": "response.created", "response": {**RESPONSE, "store": True}}).encode()

    assert marked(stream + b"\n\n", []) == stream + b"\n\n"
    response = {"id": "resp_1"}
    assert mark_stored(response) and response == {"id": "resp_1", "store": True}
    assert not mark_stored(response)


def test_a_response_without_an_id_is_not_marked_openfusion_keeps_none() -> None:
    stream = event("response.completed", response={"object": "response", "status": "completed", "output": []})

    assert marked(stream, []) == stream
