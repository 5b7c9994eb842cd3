"""A request whose conversation was serialized ahead of time is the JSON it would have been."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from openfusion.upstream.encoded import EncodedJSON, encoded_list, request_bytes

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
MESSAGES = st.lists(st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls"]), JSON), max_size=6)


@given(
    others=st.dictionaries(st.text(max_size=12).filter(lambda k: k != "messages"), JSON, max_size=6), messages=MESSAGES
)
def test_a_request_with_encoded_messages_reads_as_the_same_json(others: dict[str, Any], messages: list[Any]) -> None:
    sent = request_bytes({**others, "messages": EncodedJSON(messages)})
    assert orjson.loads(sent) == {**others, "messages": messages}


def test_the_messages_go_in_as_the_encoded_bytes() -> None:
    encoded = EncodedJSON([{"role": "user", "content": "hi"}])
    sent = request_bytes({"model": "m", "messages": encoded, "stream": False})
    assert sent == b'{"model":"m","stream":false,"messages":[{"role":"user","content":"hi"}]}'
    assert request_bytes({"messages": encoded}) == b'{"messages":[{"role":"user","content":"hi"}]}'


def test_a_request_without_encoded_messages_is_serialized_as_it_is() -> None:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert request_bytes(payload) == orjson.dumps(payload)


@given(head=MESSAGES, tail=MESSAGES)
def test_a_list_whose_tail_was_serialized_ahead_reads_as_the_whole_list(head: list[Any], tail: list[Any]) -> None:
    sent = request_bytes({"model": "m", "messages": EncodedJSON.of_list(head, encoded_list(tail))})
    assert orjson.loads(sent) == {"model": "m", "messages": head + tail}


def test_a_list_whose_tail_was_serialized_ahead_keeps_those_bytes_uncopied_until_the_body() -> None:
    """The serialized tail (an agent's conversation, ~150 KB) is copied once, into the request's body: not cut out
    of its array, nor joined to the head first (each copy of 150 KB counts ~0.17 M instructions)."""
    rest = encoded_list([{"role": "user", "content": "x" * 100_000}])
    encoded = EncodedJSON.of_list([{"role": "system", "content": "s"}], rest)
    [tail] = [part for part in encoded.parts if isinstance(part, memoryview) and part.obj is rest]
    assert len(tail) == len(rest) - 1  # all of it but the opening bracket, as a view
    assert orjson.loads(request_bytes({"messages": encoded}))["messages"][1]["content"] == "x" * 100_000
