"""Sources the panel read, and `url_citation` annotations for those the final answer cites."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from openfusion.upstream.web import Source


def merge_sources(groups: Iterable[Iterable[Source]]) -> list[Source]:
    """Every source once (by URL), in the order they were first read."""
    seen: dict[str, Source] = {}
    for group in groups:
        for source in group:
            seen.setdefault(source.url, source)
    return list(seen.values())


def url_citations(content: str, sources: list[Source]) -> list[dict[str, Any]]:
    """OpenAI/OpenRouter `url_citation` annotations for each source whose URL the answer contains."""
    annotations = []
    for source in sources:
        start = content.find(source.url)
        if start < 0:
            continue
        annotations.append(
            {
                "type": "url_citation",
                "url_citation": {
                    "url": source.url,
                    "title": source.title,
                    "start_index": start,
                    "end_index": start + len(source.url),
                },
            }
        )
    return annotations
