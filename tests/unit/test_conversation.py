"""`ChatRequest.conversation()`: the messages as sent, the same as what validating them gives."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from e2e.strategies import chat_request, messages
from openfusion.api.body import parse_chat_request
from openfusion.errors import InvalidRequest
from openfusion.protocol import ChatRequest


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(chat_request, st.fixed_dictionaries({"model": st.just("fusion"), "messages": messages})))
def test_the_messages_as_sent_are_what_validating_them_gives(body: Any) -> None:
    """The run, its worst case and its turn key read the messages as the client sent them, and the validated copies
    are let go: for every body that validates, the two are the same, as values and as JSON."""
    try:
        raw = orjson.dumps(body)
    except orjson.JSONEncodeError:  # a lone surrogate: no client can send it as JSON
        assume(False)
    try:
        request, _ = parse_chat_request(raw)
    except InvalidRequest:
        return
    validated = ChatRequest.model_validate(orjson.loads(raw)).messages
    assert request.conversation() == validated
    assert orjson.dumps(request.conversation(), option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        validated, option=orjson.OPT_SORT_KEYS
    )  # the same JSON too (the turn key hashes it): no value differs in type


def test_the_conversation_is_the_messages_sent_and_the_request_holds_it_once() -> None:
    sent_messages = [{"role": "user", "content": "Hi", "extra": [1]}]
    sent = ChatRequest.of({"model": "m", "messages": sent_messages})
    assert sent.conversation() is sent_messages and sent.messages is sent_messages  # no copy kept beside them
    # Built from dicts another way, the validated dicts are the conversation.
    built = ChatRequest(model="m", messages=[{"role": "user", "content": "Hi", "extra": [1]}])
    assert built.conversation() == sent_messages and built.conversation() is built.messages
    # The request dumps, compares and prints as before.
    assert sent == built == ChatRequest.model_validate(sent.model_dump())
    assert orjson.loads(sent.model_dump_json())["messages"] == sent_messages
