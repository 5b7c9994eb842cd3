"""Hypothesis strategies over the Responses and the Anthropic Messages request schemas.

As for chat (e2e.strategies): each field is drawn from what a client may rightly send, odd text
included (NUL, lone surrogates, bidi controls, emoji); then none, one or two places anywhere in the
request are replaced by junk of any JSON type, deep nesting and huge numbers among it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from e2e.strategies import (
    body,
    fusion_plugin,
    mostly,
    mutated,
    name,
    nested,
    reasoning,
    research_tool,
    scalars,
    slug,
)

# Text valid in any content, odd all the same: control characters, bidi overrides, a byte-order mark, astral
# and combining characters.
ODD = ["\x00", "a\x00b", "\u202e", "\ufeff", "🙂", "\u0301", "\x1b[31m", "\r\n"]
text = mostly(st.text(max_size=24), st.sampled_from(ODD), st.lists(st.sampled_from(ODD), max_size=4).map("".join))
# Lone surrogates (escaped in the JSON, where no valid text can hold one): in junk only.
odd_text = mostly(text, st.sampled_from(["\ud800", "x\udfffy", "\udc00\ud800"]))
huge = st.sampled_from([2**63, 2**64 + 1, 10**30, -(2**63) - 1, 1e308, -1e308, 5e-324])
odd_scalars = st.one_of(scalars, odd_text, huge)
# Any JSON value: a few levels deep, or now and then hundreds.
junk = mostly(
    st.recursive(
        odd_scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)),
        max_leaves=4,
    ),
    st.integers(min_value=100, max_value=900).map(nested),
)
unknown_fields = st.dictionaries(st.sampled_from(["foo", "x_extra", "cache_control", "\x00"]), junk, min_size=1,
                                 max_size=2)  # fmt: skip


def with_extras(strategy: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects from `strategy`, now and then with fields no schema has."""
    return mostly(strategy, st.tuples(strategy, unknown_fields).map(lambda pair: {**pair[1], **pair[0]}))


# The request's model: mostly one the test server serves (fusion or pass-through), else any slug at all.
model = mostly(st.sampled_from(["fusion/trio", "fusion", "openrouter/fusion", "fake/plain", "fake/a"]), slug)
SCHEMA = st.just({"type": "object", "properties": {"q": {"type": "string"}}})
TOOL_NAMES = mostly(st.sampled_from(["lookup", "get_weather"]), st.sampled_from(["bad\x00name", ""]))
CALL_IDS = mostly(st.sampled_from(["call_1", "toolu_01"]), st.sampled_from(["bad\nid", ""]))

# ---------------------------------------------------------------------------------------------- Responses
input_part = mostly(
    body({"type": st.sampled_from(["input_text", "output_text", "text"]), "text": text}, {}),
    body({"type": st.just("input_image")},
         {"image_url": st.sampled_from(["https://example.com/a.png", "data:image/png;base64,iVBO", ""]),
          "detail": mostly(st.sampled_from(["auto", "low", "high", "original"]), st.sampled_from(["bogus", ""])),
          "file_id": st.just("file-1")}),
    body({"type": st.just("input_file")}, {"file_data": st.just("data:application/pdf;base64,JVBE"),
                                           "filename": text, "file_id": st.just("file-1")}),
    body({"type": st.sampled_from(["input_audio", "refusal", "summary_text"])}, {"text": text}),
)  # fmt: skip
message_item = with_extras(body(
    {"role": mostly(st.sampled_from(["user", "user", "assistant", "system", "developer"]), st.just("tool")),
     "content": st.one_of(text, st.lists(input_part, max_size=3))},
    {"type": st.just("message"), "id": name, "status": st.sampled_from(["completed", "in_progress"])},
))  # fmt: skip
function_call_item = body(
    {"type": st.just("function_call"), "call_id": CALL_IDS, "name": TOOL_NAMES},
    {"arguments": st.sampled_from(['{"q": "x"}', "", "not json"]), "id": name, "status": st.just("completed")},
)
function_output_item = body(
    {"type": st.just("function_call_output"), "call_id": CALL_IDS},
    {"output": st.one_of(text, st.lists(input_part, max_size=2))},
)
other_item = st.one_of(
    body({"type": st.just("reasoning")}, {"id": name, "summary": st.just([]), "encrypted_content": text}),
    body({"type": st.just("openrouter:fusion")}, {"status": st.just("completed"), "content": st.just([])}),
    body({"type": st.sampled_from(["web_search_call", "item_reference", "custom_tool_call", "nope"])}, {}),
)
input_item = mostly(st.one_of(message_item, message_item, function_call_item, function_output_item), other_item)
responses_tool = st.one_of(
    with_extras(body({"type": st.just("function"), "name": TOOL_NAMES},
                     {"description": text, "parameters": mostly(SCHEMA, st.none(), st.just('{"type": "object"}')),
                      "strict": st.booleans()})),
    body({"type": st.sampled_from(["openrouter:fusion", "fusion"])}, {"parameters": fusion_plugin}),
    body({"type": st.sampled_from(["web_search", "file_search", "namespace", "custom"])}, {"name": name}),
    research_tool,
)  # fmt: skip
responses_tool_choice = mostly(
    st.sampled_from(["auto", "none", "required", "any"]),
    body({"type": st.sampled_from(["function", "openrouter:fusion", "allowed_tools", "web_search"])},
         {"name": TOOL_NAMES, "mode": st.sampled_from(["auto", "required"])}),
)  # fmt: skip
text_format = mostly(
    st.one_of(
        body({"type": st.sampled_from(["text", "json_object"])}, {}),
        body({"type": st.just("json_schema"), "name": st.sampled_from(["answer", "an-answer_2"]), "schema": SCHEMA},
             {"strict": st.booleans(), "description": text}),
    ),
    body({"type": st.just("yaml")}, {}),
    st.just({}),
    body({"type": st.just("json_schema")}, {"name": st.sampled_from(["an answer", ""]), "schema": SCHEMA}),
)  # fmt: skip
valid_responses_request = with_extras(body(
    {"model": model, "input": st.one_of(text, st.lists(input_item, min_size=1, max_size=4))},
    {
        "stream": st.booleans(),
        "instructions": text,
        "tools": st.lists(responses_tool, max_size=2),
        "tool_choice": responses_tool_choice,
        "parallel_tool_calls": st.booleans(),
        "max_output_tokens": mostly(st.integers(min_value=16, max_value=8_000), st.sampled_from([-1, 0, 10**9])),
        "temperature": mostly(st.floats(min_value=0, max_value=2), st.floats(min_value=-1, max_value=3)),
        "top_p": mostly(st.floats(min_value=0, max_value=1), st.floats(min_value=-1, max_value=2)),
        "reasoning": st.one_of(reasoning, body({}, {"effort": st.sampled_from(["low", "high"]),
                                                    "summary": st.sampled_from(["auto", "detailed"])})),
        "text": body({}, {"format": text_format, "verbosity": st.sampled_from(["low", "high"])}),
        "metadata": st.dictionaries(text, text, max_size=2),
        "plugins": st.lists(fusion_plugin, max_size=1),
        "store": st.booleans(),
        "previous_response_id": mostly(st.none(), st.sampled_from(["resp_unknown", "bad\nid"])),
        "user": name,
        "background": mostly(st.just(False), st.just(True)),
        "include": st.just(["reasoning.encrypted_content"]),
        "truncation": st.sampled_from(["auto", "disabled"]),
        "models": st.lists(slug, max_size=2),
    },
))  # fmt: skip
responses_request = mutated(valid_responses_request, junk)

# ----------------------------------------------------------------------------------------------- Messages
source = st.one_of(
    body({"type": st.just("base64"), "media_type": st.sampled_from(["image/png", "application/pdf"]),
          "data": st.just("iVBORw0KGgo=")}, {}),
    body({"type": st.just("url"), "url": st.sampled_from(["https://example.com/a.png", ""])}, {}),
    body({"type": st.sampled_from(["file", "text", "content"])}, {"file_id": st.just("file_1"), "data": text,
                                                                  "content": st.just([{"type": "text", "text": "x"}])}),
)  # fmt: skip
cache_control = body({"type": st.just("ephemeral")}, {"ttl": st.sampled_from(["5m", "1h"])})
text_block = body({"type": st.just("text"), "text": text}, {"cache_control": cache_control})
media_block = body({"type": st.sampled_from(["image", "document"]), "source": source},
                   {"title": text, "cache_control": cache_control})  # fmt: skip
tool_use_block = body(
    {"type": st.just("tool_use"), "id": CALL_IDS, "name": TOOL_NAMES},
    {"input": mostly(st.just({"q": "x"}), junk)},
)
tool_result_block = body(
    {"type": st.just("tool_result"), "tool_use_id": CALL_IDS},
    {"content": st.one_of(text, st.lists(st.one_of(text_block, media_block), max_size=2)),
     "is_error": st.booleans()},
)  # fmt: skip
thinking_block = st.one_of(
    body({"type": st.just("thinking"), "thinking": text}, {"signature": text}),
    body({"type": st.just("redacted_thinking"), "data": text}, {}),
)
odd_block = body({"type": st.sampled_from(["video", "server_tool_use", "web_search_tool_result", "search_result",
                                           "container_upload", "nope"])},
                 {"content": st.just([{"type": "text", "text": "x"}]), "title": text})  # fmt: skip
block = mostly(st.one_of(text_block, text_block, media_block, tool_use_block, tool_result_block, thinking_block),
               odd_block)  # fmt: skip
anthropic_message = with_extras(body(
    {"role": mostly(st.sampled_from(["user", "assistant"]), st.sampled_from(["system", "tool", "developer"])),
     "content": st.one_of(text, st.lists(block, max_size=3))},
    {},
))  # fmt: skip
anthropic_tool = mostly(
    with_extras(body({"name": TOOL_NAMES, "input_schema": SCHEMA},
                     {"description": text, "type": st.just("custom"), "cache_control": cache_control})),
    body({"type": st.sampled_from(["bash_20250124", "web_search_20250305", "text_editor_20250728"]),
          "name": st.sampled_from(["bash", "web_search"])}, {}),
    body({"type": st.sampled_from(["openrouter:fusion", "fusion"])}, {"parameters": fusion_plugin}),
    body({"name": TOOL_NAMES, "input_schema": SCHEMA, "defer_loading": st.just(True)}, {}),
)  # fmt: skip
anthropic_tool_choice = body(
    {"type": mostly(st.sampled_from(["auto", "any", "tool", "none"]), st.sampled_from(["openrouter:fusion", "x"]))},
    {"name": TOOL_NAMES, "disable_parallel_tool_use": st.booleans()},
)
thinking = st.one_of(
    body({"type": st.just("enabled"),
          "budget_tokens": mostly(st.integers(min_value=1024, max_value=4_000),
                                  st.sampled_from([-1, 0, 10, 1023, 64_000]))},
         {"display": st.sampled_from(["summarized", "omitted"])}),
    body({"type": mostly(st.sampled_from(["disabled", "adaptive"]), st.just("auto"))}, {}),
)  # fmt: skip
anthropic_fields: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(),
    "system": st.one_of(text, st.lists(text_block, max_size=2)),
    "stop_sequences": mostly(st.lists(text, max_size=4), st.lists(text, min_size=5, max_size=6)),
    "temperature": mostly(st.floats(min_value=0, max_value=1), st.floats(min_value=-1, max_value=2)),
    "top_p": mostly(st.floats(min_value=0, max_value=1), st.floats(min_value=-1, max_value=2)),
    "top_k": mostly(st.integers(min_value=0, max_value=500), st.just(-1)),
    "tools": st.lists(anthropic_tool, max_size=2),
    "tool_choice": anthropic_tool_choice,
    "thinking": thinking,
    "metadata": body({}, {"user_id": mostly(st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True), text)}),
    "plugins": st.lists(st.one_of(fusion_plugin, body({"id": st.just("web")}, {})), max_size=1),
    "models": st.lists(slug, max_size=2),
    "service_tier": st.sampled_from(["auto", "standard_only"]),
    "output_config": body({}, {"effort": st.sampled_from(["low", "high"])}),
    "context_management": st.just({"edits": []}),
}
messages_list = st.lists(anthropic_message, min_size=1, max_size=4)
valid_messages_request = with_extras(body(
    {"model": model, "messages": messages_list,
     "max_tokens": mostly(st.integers(min_value=1, max_value=8_000), st.sampled_from([-1, 0, 10**9]))},
    anthropic_fields,
))  # fmt: skip
messages_request = mutated(valid_messages_request, junk)
# count_tokens: the same request without max_tokens (nothing is generated).
count_tokens_request = mutated(with_extras(body({"model": model, "messages": messages_list}, anthropic_fields)), junk)
