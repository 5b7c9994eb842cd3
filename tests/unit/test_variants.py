"""read_variant(): the model a slug names and what its OpenRouter variant suffixes ask for."""

from __future__ import annotations

import pytest

from openfusion.variants import Variant, read_variant


@pytest.mark.parametrize(
    ("slug", "expected"),
    [
        ("openai/gpt-4o", Variant("openai/gpt-4o")),
        ("openai/gpt-4o:free", Variant("openai/gpt-4o:free")),  # a catalog variant: a model of its own
        ("ollama/qwen3:8b", Variant("ollama/qwen3:8b")),  # a tag, part of the name
        ("openai/gpt-4o:online", Variant("openai/gpt-4o", web_search=True)),
        ("openai/gpt-4o:Online ", Variant("openai/gpt-4o", web_search=True)),
        ("openai/gpt-4o:nitro", Variant("openai/gpt-4o", routing=("nitro",))),
        ("openai/gpt-4o:free:floor:online", Variant("openai/gpt-4o:free", routing=("floor",), web_search=True)),
        ("meta/llama:online:free", Variant("meta/llama:free", web_search=True)),
        ("gpt-4o:exacto", Variant("gpt-4o", routing=("exacto",))),
        ("vendor/a:b/c:online", Variant("vendor/a:b/c", web_search=True)),  # suffixes follow the last slash
    ],
)
def test_the_variant_of_a_slug(slug: str, expected: Variant) -> None:
    assert read_variant(slug) == expected


def test_a_plain_slug_is_its_own_model() -> None:
    assert read_variant("openai/gpt-4o:free").plain and not read_variant("openai/gpt-4o:nitro").plain
