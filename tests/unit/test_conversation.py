"""`ChatRequest.conversation()`: the messages as sent, the same as a dump of the validated messages would be."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from e2e.strategies import chat_request, messages
from openfusion.api.body import parse_chat_request
from openfusion.errors import InvalidRequest
from openfusion.protocol import ChatRequest


def dumped(request: ChatRequest) -> list[dict[str, Any]]:
    return [message.model_dump(exclude_unset=True) for message in request.messages]


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(chat_request, st.fixed_dictionaries({"model": st.just("fusion"), "messages": messages})))
def test_the_messages_as_sent_are_what_a_dump_of_the_validated_ones_gives(body: Any) -> None:
    """The run, its worst case and its turn key read the messages as the client sent them instead of a dump (which
    costs about what validating them did): for every body that validates, the two are the same."""
    try:
        raw = orjson.dumps(body)
    except orjson.JSONEncodeError:  # a lone surrogate: no client can send it as JSON
        assume(False)
    try:
        request, _ = parse_chat_request(raw)
    except InvalidRequest:
        return
    assert request.conversation() == dumped(request)
    assert orjson.dumps(request.conversation(), option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        dumped(request), option=orjson.OPT_SORT_KEYS
    )  # the same JSON too (the turn key hashes it): no value differs in type


def test_messages_given_as_models_are_dumped_once() -> None:
    sent = ChatRequest.of({"model": "m", "messages": [{"role": "user", "content": "Hi", "extra": [1]}]})
    request = ChatRequest(model="m", messages=list(sent.messages))
    conversation = request.conversation()
    assert conversation == [{"role": "user", "content": "Hi", "extra": [1]}]
    assert request.conversation() is conversation  # made once
    request.forget_conversation()
    assert request.conversation() == conversation and request.conversation() is not conversation
    # Kept beside the fields: the request dumps, compares and prints as before.
    assert sent.conversation() is not None and sent == ChatRequest.model_validate(sent.model_dump())
    assert "_conversation" not in sent.model_dump_json() and "_conversation" not in repr(sent)
