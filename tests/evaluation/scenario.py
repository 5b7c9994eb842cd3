"""The end-to-end scenario: what each fake model answers and how the fake grader judges each answer."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from fakes.upstream import Script
from openfusion.evaluation.dataset import Task, read_tasks

from .grading_fake import GradingUpstream, verdict

FIXTURE = Path(__file__).parent / "data" / "draco_mini.jsonl"

TRIO = """
description = "three fake panelists"
analysis_models = ["fake/a", "fake/b", "fake/c"]
model = "fake/judge"
synthesis_model = "fake/synth"
max_completion_tokens = 1000
"""
ANALYSIS = {
    "consensus": ["ACME's revenue was 12 million."],
    "contradictions": [],
    "partial_coverage": [],
    "unique_insights": [],
    "blind_spots": [],
}
# What each answering model writes; the grader fake tells the answers apart by these words.
ANSWERS = {"a": "A-ANSWER", "b": "B-ANSWER", "c": "C-ANSWER", "synth": "FUSED-ANSWER"}
# Answer costs (usage.cost): one fusion answer = a + b + c + judge + synth = 0.15.
COSTS = {"a": 0.01, "b": 0.02, "c": 0.03, "judge": 0.05, "synth": 0.04}
GRADER_COST = 0.001

# The criteria each answer meets, as "<task>/<section>/<criterion>" (see data/draco_mini.jsonl).
MET = {
    "FUSED-ANSWER": {
        "fin-1/factual-accuracy/c1",
        "fin-1/factual-accuracy/c2",
        "fin-1/presentation-quality/p1",
        "fin-2/factual-accuracy/c1",
        "med-1/factual-accuracy/c1",
        "med-2/factual-accuracy/c1",
    },
    "A-ANSWER": {
        "fin-1/factual-accuracy/c1",
        "fin-1/factual-accuracy/c3",
        "fin-2/factual-accuracy/c1",
        "fin-2/factual-accuracy/c2",
        "fin-2/factual-accuracy/c3",
        "med-1/factual-accuracy/c2",
    },
    "B-ANSWER": {
        "fin-1/factual-accuracy/c1",
        "fin-1/factual-accuracy/c2",
        "fin-2/factual-accuracy/c2",
        "med-1/factual-accuracy/c1",
        "med-1/factual-accuracy/c2",
        "med-1/factual-accuracy/c3",
        "med-2/factual-accuracy/c1",
        "med-2/factual-accuracy/c2",
    },
}
# B's grades on fin-2: c1 gets prose (a grader failure), c2 a fenced lower-case verdict (read leniently).
NOT_A_VERDICT = "I cannot decide whether this criterion is met."
FENCED_MET = '```json\n{"criterion_status": "met", "explanation": "fenced"}\n```'


def fixture_tasks() -> list[Task]:
    return read_tasks(FIXTURE)


@cache
def criterion_ids() -> dict[str, str]:
    """Requirement text -> "<task>/<criterion key>" over the fixture (requirements are unique there)."""
    return {c.requirement: f"{t.id}/{c.key}" for t in fixture_tasks() for c in t.criteria}


def scripted_verdict(requirement: str, response: str) -> Script:
    """The grader's reply for one criterion of one answer, from MET and the two special cases."""
    criterion = criterion_ids()[requirement]
    marker = next(m for m in MET if m in response)
    if (marker, criterion) == ("B-ANSWER", "fin-2/factual-accuracy/c1"):
        return Script(content=NOT_A_VERDICT, cost=GRADER_COST)
    if (marker, criterion) == ("B-ANSWER", "fin-2/factual-accuracy/c2"):
        return Script(content=FENCED_MET, cost=GRADER_COST)
    return verdict("MET" if criterion in MET[marker] else "UNMET", cost=GRADER_COST)


def script_models(fake: GradingUpstream) -> None:
    """Panelists, judge and synthesizer answer as ANSWERS and COSTS say."""
    fake.reset()
    for model, content in ANSWERS.items():
        fake.script(model, Script(content=content, cost=COSTS[model]))
    fake.script("judge", Script(content=json.dumps(ANALYSIS), cost=COSTS["judge"]))
