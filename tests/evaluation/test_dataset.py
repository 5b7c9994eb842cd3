"""Loading DRACO-format data (a file, or the Hugging Face hub faked) and deterministic sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openfusion.evaluation.dataset import load_tasks, read_tasks, select_tasks
from openfusion.evaluation.errors import DataError

from .scenario import FIXTURE


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def record(task_id: str, domain: str, criteria: list[tuple[str, float]]) -> str:
    rubric = {
        "sections": [
            {"id": "s", "title": "S", "criteria": [{"id": c, "requirement": c, "weight": w} for c, w in criteria]}
        ]
    }
    return json.dumps({"id": task_id, "domain": domain, "problem": f"question {task_id}", "answer": json.dumps(rubric)})


def test_the_fixture_loads_with_flattened_rubrics() -> None:
    tasks = read_tasks(FIXTURE)

    assert [(t.id, t.domain) for t in tasks] == [
        ("fin-1", "Finance"),
        ("fin-2", "Finance"),
        ("med-1", "Medicine"),
        ("med-2", "Medicine"),
    ]
    fin1 = tasks[0]
    assert [(c.key, c.weight, c.negative) for c in fin1.criteria] == [
        ("factual-accuracy/c1", 10, False),
        ("factual-accuracy/c2", 5, False),
        ("factual-accuracy/c3", -10, True),
        ("presentation-quality/p1", 5, False),
    ]
    assert fin1.criteria[0].requirement == "States ACME's 2023 revenue as 12 million US dollars"
    assert all(c.negative for c in tasks[3].criteria)  # med-2 is all-negative


def test_the_rubric_may_also_be_an_object(tmp_path: Path) -> None:
    line = json.loads(record("t1", "Law", [("c1", 5)]))
    line["answer"] = json.loads(line["answer"])

    (task,) = read_tasks(write_lines(tmp_path / "d.jsonl", [json.dumps(line)]))

    assert task.criteria[0].key == "s/c1"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "t1", "domain": "Law", "problem": "q"}', "d.jsonl:2: not a DRACO record: answer: Field required"),
        (
            '{"id": "t1", "domain": "Law", "problem": "q", "answer": "{not json"}',
            "d.jsonl:2: not a DRACO record: answer",
        ),
        ("not json at all", "d.jsonl:2: not a DRACO record"),
        (record("t1", "Law", [("c1", 5), ("c1", 3)]), "duplicate criterion ids ['s/c1']"),
        (record("t0", "Law", [("c1", 5)]), "duplicate task ids ['t0']"),
    ],
)
def test_malformed_data_is_refused_with_its_line(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "d.jsonl", [record("t0", "Law", [("c1", 1)]), line])

    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_tasks(path)


def test_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot read .*nope\.jsonl"):
        load_tasks(str(tmp_path / "nope.jsonl"))


def test_sampling_is_deterministic_and_independent_of_line_order(tmp_path: Path) -> None:
    lines = [record(f"t{n:02d}", "Finance" if n % 2 else "Law", [("c1", 1)]) for n in range(20)]
    tasks = read_tasks(write_lines(tmp_path / "a.jsonl", lines))
    shuffled = read_tasks(write_lines(tmp_path / "b.jsonl", lines[::-1]))

    first = [t.id for t in select_tasks(tasks, limit=5, seed=7)]

    assert first == [t.id for t in select_tasks(tasks, limit=5, seed=7)]
    assert first == [t.id for t in select_tasks(shuffled, limit=5, seed=7)]
    assert first == sorted(first) and len(set(first)) == 5
    draws = {tuple(t.id for t in select_tasks(tasks, limit=5, seed=seed)) for seed in range(5)}
    assert len(draws) > 1  # the seed does choose the sample


def test_domains_filter_before_the_draw_case_insensitively() -> None:
    tasks = read_tasks(FIXTURE)

    assert [t.id for t in select_tasks(tasks, domains=["medicine"])] == ["med-1", "med-2"]
    (only,) = select_tasks(tasks, domains=["Finance"], limit=1, seed=3)
    assert only.domain == "Finance"
    assert len(select_tasks(tasks, limit=10)) == 4  # a limit above the pool takes everything
    with pytest.raises(DataError, match=r"unknown domain.*'Law'.*Finance, Medicine"):
        select_tasks(tasks, domains=["Law"])


def test_hf_source_downloads_test_jsonl_of_the_dataset_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    asked: list[tuple[str, str, dict[str, object]]] = []

    def fake_download(repo_id: str, filename: str, **kwargs: object) -> str:
        asked.append((repo_id, filename, kwargs))
        return str(FIXTURE)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)

    tasks = load_tasks("hf:perplexity-ai/draco@c341132")

    assert asked == [("perplexity-ai/draco", "test.jsonl", {"repo_type": "dataset", "revision": "c341132"})]
    assert len(tasks) == 4


def test_hub_failures_become_a_clear_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    def offline(*args: object, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)

    with pytest.raises(DataError, match=r"cannot download test.jsonl of the dataset perplexity-ai/draco .*--data FILE"):
        load_tasks("hf:perplexity-ai/draco")
    with pytest.raises(DataError, match="expected hf:OWNER/NAME"):
        load_tasks("hf:draco")


def test_offline_the_command_fails_clearly_without_touching_the_network(tmp_path: Path) -> None:
    # A fresh process, so huggingface_hub reads HF_HUB_OFFLINE and the empty cache at import.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "openfusion", "eval", "--models", "fusion/budget", "--grader", "g"]
    done = subprocess.run(
        [*command, "--data", "hf:perplexity-ai/draco", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert "cannot download test.jsonl of the dataset perplexity-ai/draco from Hugging Face" in done.stderr
    assert "Traceback" not in done.stderr
