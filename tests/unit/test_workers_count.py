"""How many workers: `--workers`, OPENFUSION_WORKERS, "auto" within a container's CPU quota, and the limits."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from openfusion.access.config import AccessConfig
from openfusion.cli import main
from openfusion.errors import ConfigError
from openfusion.settings import Settings, load_settings
from openfusion.workers.count import cgroup_cpu_quota, resolve_workers, usable_cpus


def _cgroup(root: Path, own: str, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return proc


def test_a_cgroup_v2_quota_caps_auto(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _cgroup(root, "/", {"cpu.max": "150000 100000\n"})  # a container limited to 1.5 CPUs
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == min(2, len(os.sched_getaffinity(0)))


def test_the_tightest_quota_up_the_cgroup_tree_counts(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    files = {"system.slice/cpu.max": "100000 100000\n", "system.slice/openfusion.service/cpu.max": "max 100000\n"}
    proc = _cgroup(root, "/system.slice/openfusion.service", files)
    assert cgroup_cpu_quota(root, proc) == 1.0
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == 1


def test_cgroup_v1_quota_and_no_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _cgroup(root, "/", {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_quota(root, proc) == 0.5
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == 1  # half a CPU still runs one worker
    (root / "cpu/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == len(os.sched_getaffinity(0))


LIMITED = AccessConfig(keys=[{"name": "team", "key_env": "TEAM_KEY", "max_concurrent_fusion": 2}], limits={})
DAILY = AccessConfig(limits={"daily_spend_usd": 5})


def test_several_workers_need_redis_for_per_key_limits() -> None:
    with pytest.raises(ConfigError, match=r"workers = 4 needs Redis .*key 'team' max_concurrent_fusion"):
        resolve_workers(4, access=LIMITED, environ={})
    with pytest.raises(ConfigError, match=r"\[limits\] daily_spend_usd"):
        resolve_workers(2, access=DAILY, environ={})
    assert resolve_workers(4, access=LIMITED, environ={"REDIS_URL": "redis://127.0.0.1:6379/0"}) == 4
    assert resolve_workers(4, access=AccessConfig(), environ={}) == 4
    assert resolve_workers(1, access=LIMITED, environ={}) == 1


def test_auto_runs_one_worker_where_limits_are_counted_in_process(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert resolve_workers("auto", access=LIMITED, environ={}, cpus=8) == 1
    assert "running 1 worker instead of 8" in caplog.text and "redis_url" in caplog.text
    assert resolve_workers("auto", access=LIMITED, environ={"REDIS_URL": "redis://x:6379"}, cpus=8) == 8
    assert resolve_workers("auto", access=AccessConfig(), environ={}, cpus=3) == 3


def test_workers_from_the_environment_and_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings().workers == 1
    monkeypatch.setenv("OPENFUSION_WORKERS", "auto")
    assert Settings().workers == "auto"
    monkeypatch.setenv("OPENFUSION_WORKERS", "3")
    assert Settings().workers == 3
    config = tmp_path / "openfusion.toml"
    config.write_text("workers = 0\n")
    with pytest.raises(ConfigError, match="workers"):
        load_settings(config)


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_a_bad_workers_flag_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", value])
    assert exited.value.code == 2
    assert "number of workers" in capsys.readouterr().err
