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
