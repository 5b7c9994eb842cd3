"""Thinking blocks carry a signature, and go back to where they can be read, through the anthropic SDK.

Claude Code keeps a thinking block only when its stream signs it (a `signature_delta` before the block
stops), and sends it back with the conversation. A fused or translated answer's thinking is signed by
openfusion; sent back, it is skipped on the way to a chat model (as every thinking block is), and left out
on the way to a provider that speaks Messages, which accepts only the thinking blocks it signed itself.
"""

from __future__ import annotations

from typing import Any

from fakes.anthropic_api import FakeAnthropic
from fakes.upstream import FakeUpstream, Script
from openfusion.api.messages.writer import thinking_signature

from .test_messages_native import gateway, sdk
from .test_messages_protocol import reasoning_stream

__all__ = ["gateway"]  # fixtures
THINKING = {"type": "enabled", "budget_tokens": 1024}
QUESTION = {"role": "user", "content": "Why is the sky blue?"}


def test_a_streamed_thinking_block_is_signed_and_can_be_sent_back(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    upstream.script("thinker", Script(raw_body=reasoning_stream(["Light ", "scatters."], ["Blue."])))
    fake, _ = anthropic_native
    anthropic_signed = {"type": "thinking", "thinking": "Earlier.", "signature": "EqQBCgIYAhIMsignedbyanthropic"}
    with sdk(gateway) as client:
        with client.messages.stream(model="fake/thinker", max_tokens=2048, thinking=THINKING,  # type: ignore[arg-type]
                                    messages=[QUESTION]) as stream:  # fmt: skip
            answer = stream.get_final_message()
        thinking: Any = answer.content[0]
        history: list[Any] = [
            QUESTION,
            {"role": "assistant", "content": [block.model_dump() for block in answer.content]},
            {"role": "user", "content": "And at sunset?"},
        ]
        # Back to a chat model: accepted, the thinking skipped.
        upstream.script("thinker", Script(content="Red."))
        translated = client.messages.create(model="fake/thinker", max_tokens=100, messages=history)
        # Back to the provider that speaks Messages: its own signed block kept as sent, openfusion's left out.
        mixed = [QUESTION, {"role": "assistant", "content": [anthropic_signed, *history[1]["content"]]}, history[2]]
        native_answer = client.messages.create(model="claude/opus", max_tokens=2048, messages=mixed,
                                               thinking=THINKING)  # type: ignore[arg-type]  # fmt: skip

    assert [block.type for block in answer.content] == ["thinking", "text"]
    assert thinking.thinking == "Light scatters." and thinking.signature == thinking_signature("Light scatters.")
    assert translated.content[0].text == "Red."  # type: ignore[union-attr]
    sent_back = upstream.calls_for("thinker")[1].body["messages"]
    assert sent_back[1] == {"role": "assistant", "content": "Blue."}
    assert native_answer.content[0].text == "Native answer."  # type: ignore[union-attr]
    forwarded = fake.calls[0].body["messages"]
    assert forwarded[1]["content"] == [anthropic_signed, history[1]["content"][1]]  # the text block as sent
    assert history[1]["content"][1]["text"] == "Blue."
    assert forwarded[0] == QUESTION and forwarded[2] == history[2]


def test_a_whole_message_signs_its_thinking(upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str],
                                            gateway: str) -> None:  # fmt: skip
    upstream.script("thinker", Script(content="Blue.", reasoning=["Hm."]))
    with sdk(gateway) as client:
        message = client.messages.create(model="fake/thinker", max_tokens=2048, thinking=THINKING,  # type: ignore[arg-type]
                                         messages=[QUESTION], stream=False)  # fmt: skip
    block: Any = message.content[0]
    assert block.type == "thinking" and block.signature == thinking_signature("Hm.")


def test_an_unsigned_thinking_block_is_not_forwarded(anthropic_native: tuple[FakeAnthropic, str], gateway: str) -> None:
    fake, _ = anthropic_native
    unsigned = {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": ""},
                                                 {"type": "text", "text": "Blue."}]}  # fmt: skip
    with sdk(gateway) as client:
        client.messages.create(model="claude/opus", max_tokens=10, messages=[QUESTION, unsigned, QUESTION])
        client.messages.create(model="claude/opus", max_tokens=10, messages=[QUESTION])
    assert fake.calls[0].body["messages"][1]["content"] == [{"type": "text", "text": "Blue."}]
    assert fake.calls[1].body["messages"] == [QUESTION]
