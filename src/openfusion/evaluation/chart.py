"""The score-vs-cost chart (PNG), drawn with matplotlib's Agg canvas: no display, no pyplot state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from openfusion.evaluation.errors import MissingDependency
from openfusion.evaluation.summary import Lift, ModelSummary
from openfusion.presets import is_fusion_slug

_FUSION_COLOR = "#d62728"
_SOLO_COLOR = "#1f77b4"


def draw_chart(path: Path, summaries: Sequence[ModelSummary], lifts: Sequence[Lift]) -> Path:
    """Plot each model's score against its total answer cost; models of unknown cost get their own column."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise MissingDependency("matplotlib", "the score-vs-cost chart") from None

    known = [s for s in summaries if s.cost is not None]
    unknown = [s for s in summaries if s.cost is None]
    top = max((s.cost or 0.0 for s in known), default=0.0) or 1.0
    # Models without a cost stand in a shaded band right of the priced ones, never at a made-up $0.
    divider = top * 1.15 if known else 0.0
    band = top * 0.5 if known else 1.0
    positions = {s.model: (s.cost or 0.0, s.score * 100) for s in known}
    for index, s in enumerate(unknown, start=1):
        positions[s.model] = (divider + band * index / (len(unknown) + 1), s.score * 100)

    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for s in summaries:
        x, y = positions[s.model]
        fusion = is_fusion_slug(s.model)
        color = _FUSION_COLOR if fusion else _SOLO_COLOR
        axes.scatter(
            [x],
            [y],
            s=160 if fusion else 70,
            marker="*" if fusion else "o",
            edgecolors=color,
            facecolors=color if s.cost_known else "none",  # hollow: cost unknown or partly reported
            zorder=3,
        )
        axes.annotate(f"{s.model}\n{y:.1f}%", (x, y), textcoords="offset points", xytext=(8, 6), fontsize=8)
    for lift in lifts:
        if lift.best is not None and lift.best in positions and lift.model in positions:
            axes.annotate(
                "",
                xy=positions[lift.model],
                xytext=positions[lift.best],
                arrowprops={"arrowstyle": "->", "color": _FUSION_COLOR, "linestyle": ":", "alpha": 0.7},
            )
    right = divider + band if unknown else top * 1.3
    axes.set_xlim(0, right)
    if unknown:
        axes.axvspan(divider, right, color="0.94", zorder=0)
        axes.text((divider + right) / 2, 103, "cost unknown", ha="center", fontsize=8, color="grey")
        axes.set_xticks([tick for tick in axes.get_xticks() if tick <= divider] if known else [])
    legend = [
        Line2D([], [], marker="*", linestyle="", color=_FUSION_COLOR, markersize=12, label="fusion"),
        Line2D([], [], marker="o", linestyle="", color=_SOLO_COLOR, markersize=8, label="single model"),
        Line2D([], [], marker="o", linestyle="", color="grey", fillstyle="none", label="cost not fully reported"),
    ]
    axes.legend(handles=legend, loc="best", fontsize=8)
    axes.set_ylim(-5, 108)  # room for markers at 0%
    axes.set_xlabel(
        "total answer cost (USD, from usage.cost)" if known else "cost unknown: no model reported usage.cost"
    )
    axes.set_ylabel("mean rubric score (%)")
    axes.set_title("Score vs cost (arrows: fusion's lift over its best evaluated panel member)", fontsize=10)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
