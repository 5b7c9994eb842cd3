"""Hypothesis strategies over the whole chat request schema: valid and invalid values of every field.

Each field is drawn from what a client may rightly send (including out-of-range numbers, unknown models
and presets); then none, one or two places anywhere in the request are replaced by junk of any JSON type.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Models the test server knows (fake/* is its only provider, trio its default preset) and some it does not.
FUSION_MODELS = ["fusion/trio", "fusion", "openrouter/fusion", "fusion/nope", "openrouter/fusion:free"]
PLAIN_MODELS = ["fake/plain", "fake/other", "acme/unknown"]
MODELS = FUSION_MODELS + PLAIN_MODELS
ROLES = ["system", "developer", "user", "user", "assistant", "tool", "function"]

text = st.text(max_size=24)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)


def nested(depth: int) -> Any:
    """Arrays `depth` levels deep."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# Any JSON value, a few levels deep, or now and then hundreds: what a careless or hostile client puts anywhere.
junk = st.one_of(
    st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
        max_leaves=4,
    ),
    st.integers(min_value=100, max_value=900).map(nested),
)


def mostly(valid: st.SearchStrategy[Any], *odd: st.SearchStrategy[Any], odds: int = 9) -> st.SearchStrategy[Any]:
    """`valid` `odds` times out of `odds + 1`, else one of `odd`.

    (`st.one_of(valid, valid, …)` would not do: Hypothesis draws each distinct branch alike.)
    """
    rare = st.one_of(*odd)
    return st.sampled_from([False] * odds + [True]).flatmap(lambda odd_one: rare if odd_one else valid)


def body(required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]) -> Any:
    """An object with the required keys and any subset of the optional ones."""
    return st.fixed_dictionaries(required, optional=optional)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position inside a JSON value (not the value itself)."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found = []
    for key, child in children:
        found.append((*path, key))
        found.extend(_paths(child, (*path, key)))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    return [_replaced(item, rest, new) if i == head else item for i, item in enumerate(value)]


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any] = junk) -> Any:
    """A valid value with none, one or two of its parts (anywhere inside) replaced by junk of any type."""
    value = draw(valid)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2]))):
        paths = _paths(value)
        if not paths:
            break
        value = _replaced(value, draw(st.sampled_from(paths)), draw(junk))
    return value


name = st.one_of(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.from_regex(r"[a-z_]{1,12}", fullmatch=True), text)
slug = st.one_of(
    st.sampled_from(MODELS), st.sampled_from(MODELS), st.sampled_from(["fake/a", "fake/b", "fake/judge"]), name
)
function = body({"name": st.sampled_from(["lookup", "get_weather"])}, {"arguments": st.just('{"q": "x"}')})
tool_call = body({"id": st.just("call_1"), "type": st.just("function"), "function": function}, {"index": st.integers()})
# OpenAI's chat image details, and values it refuses (a 400 naming `…image_url.detail` for fusion).
detail = mostly(st.sampled_from(["auto", "low", "high", "original"]), st.sampled_from(["bogus", "HIGH", ""]), junk)
content_part = st.one_of(
    body({"type": st.just("text"), "text": text}, {}),
    body(
        {
            "type": st.just("image_url"),
            "image_url": body({"url": st.just("https://example.com/a.png")}, {"detail": detail}),
        },
        {},
    ),
    body({"type": st.just("input_audio")}, {"input_audio": junk}),
)
content = st.one_of(text, st.none(), st.lists(content_part, max_size=3))
message = body(
    {"role": st.sampled_from(ROLES), "content": content},
    {"name": name, "tool_calls": st.lists(tool_call, max_size=1), "tool_call_id": name, "refusal": text},
)
# An agent loop's turn: the assistant's tool calls, their result (now and then none: a call left unanswered, a 400
# for a fusion), and a question or not.
agent_turn = st.tuples(
    body(
        {"role": st.just("assistant"), "tool_calls": st.lists(tool_call, min_size=1, max_size=2)}, {"content": content}
    ),
    mostly(st.lists(body({"role": st.just("tool"), "tool_call_id": st.just("call_1"), "content": text}, {}),
                    min_size=1, max_size=1), st.just([])),
    st.lists(body({"role": st.just("user"), "content": text}, {}), max_size=1),
).map(lambda turn: [turn[0], *turn[1], *turn[2]])  # fmt: skip
messages = st.one_of(
    st.lists(message, min_size=1, max_size=3),
    st.tuples(st.lists(message, min_size=1, max_size=2), agent_turn).map(lambda parts: parts[0] + parts[1]),
)

domains = st.lists(st.sampled_from(["example.com", "example.org/path", "sub.example.net"]), max_size=2)
research_tool = body(
    {"type": st.sampled_from(["web_search", "openrouter:web_search", "web_fetch", "openrouter:web_fetch", "x"])},
    {"parameters": body({"excluded_domains": domains}, {"blocked_domains": domains, "max_results": st.integers()})},
)
reasoning = body(
    {},
    {
        "effort": st.sampled_from(["max", "xhigh", "high", "medium", "low", "minimal", "none", "extreme"]),
        "max_tokens": st.integers(min_value=-5, max_value=10_000),
        "exclude": st.booleans(),
        "enabled": st.booleans(),
    },
)
# Time limits are drawn generous or invalid, never tiny: a tiny valid limit is a real upstream timeout (502/504).
seconds = st.sampled_from([60, 300.0, 0, -1, 5000])
fusion_fields: dict[str, st.SearchStrategy[Any]] = {
    "preset": st.sampled_from(["trio", "general-high", "quality", "nope"]),
    "analysis_models": st.one_of(st.lists(slug, max_size=3), st.lists(slug, min_size=9, max_size=9)),
    "model": slug,
    "synthesis_model": slug,
    "max_tool_calls": st.integers(min_value=-1, max_value=20),
    "max_completion_tokens": st.integers(min_value=-1, max_value=2_000_000),
    "reasoning": reasoning,
    "temperature": st.floats(min_value=-1, max_value=3),
    "expose": st.booleans(),
    "enabled": st.booleans(),
    "tools": st.lists(research_tool, min_size=1, max_size=2),
    "judge_tools": st.booleans(),
    "panel_timeout_s": seconds,
    "panel_deadline_s": seconds,
    "min_successful": st.integers(min_value=0, max_value=9),
    "judge_timeout_s": seconds,
    "synth_timeout_s": seconds,
    "judge_fallbacks": st.lists(slug, max_size=2),
    "synthesis_fallbacks": st.lists(slug, max_size=2),
    "max_cost": st.floats(min_value=-1, max_value=1e6),
    "refire": st.sampled_from(["auto", "always", "never"]),
}
fusion_plugin = body({"id": st.just("fusion")}, fusion_fields)
plugin = st.one_of(fusion_plugin, body({"id": st.sampled_from(["web", "file-parser", "response-healing"])}, {}))
function_tool = body(
    {"type": st.just("function"), "function": body({"name": st.sampled_from(["lookup", "get_weather"])}, {
        "description": text, "parameters": st.just({"type": "object", "properties": {"q": {"type": "string"}}}),
    })},
    {},
)  # fmt: skip
fusion_tool = body({"type": st.sampled_from(["openrouter:fusion", "fusion"])}, {"parameters": body({}, fusion_fields)})
tool_choice = st.one_of(
    st.sampled_from(["auto", "none", "required"]),
    body({"type": st.sampled_from(["function", "openrouter:fusion"])}, {"function": body({"name": text}, {})}),
)
response_format = st.one_of(
    body({"type": st.sampled_from(["text", "json_object"])}, {}),
    body({"type": st.just("json_schema"), "json_schema": body({"name": st.just("answer")}, {
        "schema": st.just({"type": "object", "properties": {"a": {"type": "string"}}}), "strict": st.booleans(),
    })}, {}),
)  # fmt: skip
stop = st.one_of(text, st.lists(text, max_size=4), st.lists(text, min_size=5, max_size=6))

valid_chat_request = body(
    {"model": slug, "messages": messages, "stream": st.booleans()},
    {
        "models": st.one_of(st.lists(slug, max_size=2), st.lists(slug, min_size=9, max_size=9)),
        "temperature": st.floats(min_value=-1, max_value=3),
        "top_p": st.floats(min_value=-1, max_value=2),
        "max_tokens": st.integers(min_value=-1, max_value=100_000),
        "max_completion_tokens": st.integers(min_value=-1, max_value=100_000),
        "n": st.integers(min_value=0, max_value=3),
        "seed": st.integers(),
        "stop": stop,
        "response_format": response_format,
        "reasoning": reasoning,
        "plugins": st.lists(plugin, max_size=2),
        "tools": st.lists(st.one_of(function_tool, fusion_tool, research_tool), max_size=2),
        "tool_choice": tool_choice,
        "parallel_tool_calls": st.booleans(),
        "user": name,
        "metadata": st.dictionaries(text, text, max_size=2),
    },
)
# Requests valid as drawn, and the same broken in one or two places at any depth.
chat_request = mutated(valid_chat_request)
