"""The contamination guard: keep fusion's web research away from pages that publish DRACO's rubrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Hosts that publish the benchmark, its rubrics or graded answers. A panelist that finds a task's
# rubric there would be graded on copying it, not on research.
DEFAULT_LEAKY_HOSTS: tuple[str, ...] = (
    "huggingface.co",  # the dataset itself (perplexity-ai/draco)
    "hf.co",
    "arxiv.org",  # the DRACO paper, with example tasks and rubrics
    "alphaxiv.org",
    "perplexity.ai",  # the benchmark's announcement and research pages
    "github.com/valyuAI/valyu-benchmarks",  # a copy of the dataset and graded outputs
    "raw.githubusercontent.com/valyuAI/valyu-benchmarks",
)


def fusion_plugins(blocked_hosts: Sequence[str]) -> list[dict[str, Any]]:
    """The `plugins` value asking fusion's panel to search and fetch nothing from `blocked_hosts`."""
    hosts = list(dict.fromkeys(blocked_hosts))  # de-duplicated, order kept
    tools = [
        {"type": "openrouter:web_search", "parameters": {"excluded_domains": hosts}},
        {"type": "openrouter:web_fetch", "parameters": {"blocked_domains": hosts}},
    ]
    return [{"id": "fusion", "tools": tools}]
