"""What the first fusion of a process would otherwise do once, done at start-up instead."""

from __future__ import annotations

from openfusion.pipeline.budget import server_text
from openfusion.pipeline.prompts import read_prompts


def warm_pipeline() -> None:
    """Read the prompt files and measure the server's own text in them (the spend cap's allowance) before serving.

    Both are kept for the process's life: done at the first request, they were the server's own work inside its
    first panelists' time limit.
    """
    read_prompts()
    server_text()
