"""Hypothesis strategies over the Responses and the Anthropic Messages request schemas.

As for chat (e2e.strategies): each field is drawn from what a client may rightly send, odd text
included (NUL, lone surrogates, bidi controls, emoji); then none, one or two places anywhere in the
request are replaced by junk of any JSON type, deep nesting and huge numbers among it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from e2e.strategies import body, fusion_plugin, mutated, name, nested, reasoning, research_tool, scalars, slug

# Text a careless or hostile client sends: control characters, lone surrogates (escaped in the JSON), bidi
# overrides, a byte-order mark, astral characters.
ODD = ["\x00", "a\x00b", "\ud800", "x\udfffy", "\u202e", "\ufeff", "🙂", "\u0301", "\x1b[31m", "\r\n"]
odd_text = st.one_of(
    st.text(max_size=24), st.sampled_from(ODD), st.lists(st.sampled_from(ODD), max_size=4).map("".join)
)
huge = st.sampled_from([2**63, 2**64 + 1, 10**30, -(2**63) - 1, 1e308, -1e308, 5e-324])
odd_scalars = st.one_of(scalars, odd_text, huge)
# Any JSON value: a few levels deep, or now and then hundreds.
junk = st.one_of(
    st.recursive(
        odd_scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)),
        max_leaves=4,
    ),
    st.integers(min_value=100, max_value=900).map(nested),
)
unknown_fields = st.dictionaries(st.sampled_from(["foo", "x_extra", "cache_control", "\x00"]), junk, max_size=2)


def with_extras(strategy: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects from `strategy`, now and then with fields no schema has."""
    return st.tuples(strategy, unknown_fields).map(lambda pair: {**pair[1], **pair[0]})


SCHEMA = st.just({"type": "object", "properties": {"q": {"type": "string"}}})
TOOL_NAMES = st.sampled_from(["lookup", "get_weather", "bad name!", ""])
CALL_IDS = st.sampled_from(["call_1", "toolu_01", "bad id!", ""])

# ---------------------------------------------------------------------------------------------- Responses
input_part = st.one_of(
    body({"type": st.sampled_from(["input_text", "output_text", "text"]), "text": odd_text}, {}),
    body({"type": st.just("input_image")},
         {"image_url": st.sampled_from(["https://example.com/a.png", "data:image/png;base64,iVBO", ""]),
          "detail": st.sampled_from(["auto", "low", "high"]), "file_id": st.just("file-1")}),
    body({"type": st.just("input_file")}, {"file_data": st.just("data:application/pdf;base64,JVBE"),
                                           "filename": odd_text, "file_id": st.just("file-1")}),
    body({"type": st.sampled_from(["input_audio", "refusal", "summary_text"])}, {"text": odd_text}),
)  # fmt: skip
message_item = with_extras(body(
    {"role": st.sampled_from(["user", "user", "assistant", "system", "developer", "tool"]),
     "content": st.one_of(odd_text, st.lists(input_part, max_size=3))},
    {"type": st.just("message"), "id": name, "status": st.sampled_from(["completed", "in_progress"])},
))  # fmt: skip
function_call_item = body(
    {"type": st.just("function_call"), "call_id": CALL_IDS, "name": TOOL_NAMES},
    {"arguments": st.sampled_from(['{"q": "x"}', "", "not json"]), "id": name, "status": st.just("completed")},
)
function_output_item = body(
    {"type": st.just("function_call_output"), "call_id": CALL_IDS},
    {"output": st.one_of(odd_text, st.lists(input_part, max_size=2))},
)
other_item = st.one_of(
    body({"type": st.just("reasoning")}, {"id": name, "summary": st.just([]), "encrypted_content": odd_text}),
    body({"type": st.just("openrouter:fusion")}, {"status": st.just("completed"), "content": st.just([])}),
    body({"type": st.sampled_from(["web_search_call", "item_reference", "custom_tool_call", "nope"])}, {}),
)
input_item = st.one_of(message_item, message_item, function_call_item, function_output_item, other_item)
responses_tool = st.one_of(
    with_extras(body({"type": st.just("function"), "name": TOOL_NAMES},
                     {"description": odd_text, "parameters": SCHEMA, "strict": st.booleans()})),
    body({"type": st.sampled_from(["openrouter:fusion", "fusion"])}, {"parameters": fusion_plugin}),
    body({"type": st.sampled_from(["web_search", "file_search", "namespace", "custom"])}, {"name": name}),
    research_tool,
)  # fmt: skip
responses_tool_choice = st.one_of(
    st.sampled_from(["auto", "none", "required", "any"]),
    body({"type": st.sampled_from(["function", "openrouter:fusion", "allowed_tools", "web_search"])},
         {"name": TOOL_NAMES, "mode": st.sampled_from(["auto", "required"])}),
)  # fmt: skip
text_format = st.one_of(
    body({"type": st.sampled_from(["text", "json_object", "yaml"])}, {}),
    body({"type": st.just("json_schema")}, {"name": st.just("answer"), "schema": SCHEMA, "strict": st.booleans()}),
)
valid_responses_request = with_extras(body(
    {"model": slug, "input": st.one_of(odd_text, st.lists(input_item, min_size=1, max_size=4))},
    {
        "stream": st.booleans(),
        "instructions": odd_text,
        "tools": st.lists(responses_tool, max_size=2),
        "tool_choice": responses_tool_choice,
        "parallel_tool_calls": st.booleans(),
        "max_output_tokens": st.integers(min_value=-1, max_value=100_000),
        "temperature": st.floats(min_value=-1, max_value=3),
        "top_p": st.floats(min_value=-1, max_value=2),
        "reasoning": st.one_of(reasoning, body({}, {"effort": st.sampled_from(["low", "high"]),
                                                    "summary": st.sampled_from(["auto", "detailed"])})),
        "text": body({}, {"format": text_format, "verbosity": st.sampled_from(["low", "high"])}),
        "metadata": st.dictionaries(odd_text, odd_text, max_size=2),
        "plugins": st.lists(fusion_plugin, max_size=1),
        "store": st.booleans(),
        "previous_response_id": st.sampled_from(["resp_unknown", "bad id!"]),
        "user": name,
        "background": st.booleans(),
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
    body({"type": st.sampled_from(["file", "text", "content"])}, {"file_id": st.just("file_1"), "data": odd_text,
                                                                  "content": st.just([{"type": "text", "text": "x"}])}),
)  # fmt: skip
cache_control = body({"type": st.just("ephemeral")}, {"ttl": st.sampled_from(["5m", "1h"])})
text_block = body({"type": st.just("text"), "text": odd_text}, {"cache_control": cache_control})
media_block = body({"type": st.sampled_from(["image", "document"]), "source": source},
                   {"title": odd_text, "cache_control": cache_control})  # fmt: skip
tool_use_block = body(
    {"type": st.just("tool_use"), "id": CALL_IDS, "name": TOOL_NAMES},
    {"input": st.one_of(st.just({"q": "x"}), junk)},
)
tool_result_block = body(
    {"type": st.just("tool_result"), "tool_use_id": CALL_IDS},
    {"content": st.one_of(odd_text, st.lists(st.one_of(text_block, media_block), max_size=2)),
     "is_error": st.booleans()},
)  # fmt: skip
thinking_block = st.one_of(
    body({"type": st.just("thinking"), "thinking": odd_text}, {"signature": odd_text}),
    body({"type": st.just("redacted_thinking"), "data": odd_text}, {}),
)
odd_block = body({"type": st.sampled_from(["video", "server_tool_use", "web_search_tool_result", "search_result",
                                           "container_upload", "nope"])},
                 {"content": st.just([{"type": "text", "text": "x"}]), "title": odd_text})  # fmt: skip
block = st.one_of(text_block, text_block, media_block, tool_use_block, tool_result_block, thinking_block, odd_block)
anthropic_message = with_extras(body(
    {"role": st.sampled_from(["user", "user", "assistant", "system", "tool"]),
     "content": st.one_of(odd_text, st.lists(block, max_size=3))},
    {},
))  # fmt: skip
anthropic_tool = st.one_of(
    with_extras(body({"name": TOOL_NAMES, "input_schema": SCHEMA},
                     {"description": odd_text, "type": st.just("custom"), "cache_control": cache_control})),
    body({"type": st.sampled_from(["bash_20250124", "web_search_20250305", "text_editor_20250728"]),
          "name": st.sampled_from(["bash", "web_search"])}, {}),
    body({"type": st.sampled_from(["openrouter:fusion", "fusion"])}, {"parameters": fusion_plugin}),
    body({"name": TOOL_NAMES, "input_schema": SCHEMA, "defer_loading": st.just(True)}, {}),
)  # fmt: skip
anthropic_tool_choice = body(
    {"type": st.sampled_from(["auto", "any", "tool", "none", "openrouter:fusion", "required"])},
    {"name": TOOL_NAMES, "disable_parallel_tool_use": st.booleans()},
)
thinking = st.one_of(
    body({"type": st.just("enabled"), "budget_tokens": st.integers(min_value=-1, max_value=64_000)},
         {"display": st.sampled_from(["summarized", "omitted"])}),
    body({"type": st.sampled_from(["disabled", "adaptive", "auto"])}, {}),
)  # fmt: skip
anthropic_fields: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(),
    "system": st.one_of(odd_text, st.lists(text_block, max_size=2)),
    "stop_sequences": st.lists(odd_text, max_size=5),
    "temperature": st.floats(min_value=-1, max_value=2),
    "top_p": st.floats(min_value=-1, max_value=2),
    "top_k": st.integers(min_value=-1, max_value=500),
    "tools": st.lists(anthropic_tool, max_size=2),
    "tool_choice": anthropic_tool_choice,
    "thinking": thinking,
    "metadata": body({}, {"user_id": st.one_of(name, odd_text)}),
    "plugins": st.lists(st.one_of(fusion_plugin, body({"id": st.just("web")}, {})), max_size=1),
    "models": st.lists(slug, max_size=2),
    "service_tier": st.sampled_from(["auto", "standard_only"]),
    "output_config": body({}, {"effort": st.sampled_from(["low", "high"])}),
    "context_management": st.just({"edits": []}),
}
messages_list = st.lists(anthropic_message, min_size=1, max_size=4)
valid_messages_request = with_extras(body(
    {"model": slug, "max_tokens": st.integers(min_value=-1, max_value=200_000), "messages": messages_list},
    anthropic_fields,
))  # fmt: skip
messages_request = mutated(valid_messages_request, junk)
# count_tokens: the same request without max_tokens (nothing is generated).
count_tokens_request = mutated(with_extras(body({"model": slug, "messages": messages_list}, anthropic_fields)), junk)
