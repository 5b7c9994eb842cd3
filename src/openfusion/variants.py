"""OpenRouter's model variants: the `:suffix` a slug may end with, and what it asks of the provider.

Routing variants (`:nitro`, `:floor`, `:exacto`) choose among the providers of the same model, as the `provider.sort`
field does: the model, its metadata and its price are the base model's. `:online` runs OpenRouter's web search on
every request (the `web` plugin), billed per request apart from tokens. Catalog variants (`:free`, `:thinking`,
`:extended`, `:batch`) are models of their own, with their own price, context length and providers (a `:free` one's
may keep prompts); they, and any other suffix (an Ollama tag such as `:8b`), stay part of the model's name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

ROUTING = frozenset({"nitro", "floor", "exacto"})
WEB_SEARCH = "online"


@dataclass(frozen=True)
class Variant:
    """A slug read for its variant suffixes."""

    model: str  # the slug less its routing and web-search suffixes (catalog ones kept): the model that answers
    routing: tuple[str, ...] = ()  # the routing variants asked for, as spelt
    web_search: bool = False  # `:online`: a web search on every request, billed apart from tokens

    @property
    def plain(self) -> bool:
        """Whether the slug asks for no routing variant and no web search: it is the model itself."""
        return not self.routing and not self.web_search


@functools.lru_cache(maxsize=1024)  # a fusion reads its few slugs ~15 times (pricing, the worst case, key scopes)
def read_variant(slug: str) -> Variant:
    """The model a slug names and what its suffixes ask for (`openai/gpt-4o:free:online` -> `openai/gpt-4o:free`, web
    search). Suffixes are read case-insensitively: the reading that sees more of what a provider may act on."""
    head, slash, tail = slug.rpartition("/")
    name, *suffixes = tail.split(":")
    if not suffixes:
        return Variant(slug)
    kept = [suffix for suffix in suffixes if _meaning(suffix) not in ROUTING and _meaning(suffix) != WEB_SEARCH]
    if len(kept) == len(suffixes):
        return Variant(slug)
    return Variant(
        model=head + slash + ":".join([name, *kept]),
        routing=tuple(suffix for suffix in suffixes if _meaning(suffix) in ROUTING),
        web_search=any(_meaning(suffix) == WEB_SEARCH for suffix in suffixes),
    )


def _meaning(suffix: str) -> str:
    return suffix.strip().lower()
