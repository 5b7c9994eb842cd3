"""How many worker processes: a number, or "auto" (the CPUs this process may use), checked against the limits."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from openfusion.access.config import AccessConfig, configured_limits, redis_url
from openfusion.errors import ConfigError

log = logging.getLogger("openfusion")

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may run on (its affinity), capped by a cgroup CPU quota (a container's CPU limit)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors; None when there is none."""
    quotas = [*_v2_quotas(root, proc_cgroup), *_v1_quotas(root)]
    return min(quotas) if quotas else None


def _v2_quotas(root: Path, proc_cgroup: Path) -> list[float]:
    """cgroup v2: `cpu.max` ("quota period" or "max period") from the process's own cgroup up to the root."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        return []
    found: list[float] = []
    directory = root / own.strip("/")
    while True:
        quota = _ratio(directory / "cpu.max", None)
        if quota is not None:
            found.append(quota)
        if directory == root:
            return found
        directory = directory.parent


def _v1_quotas(root: Path) -> list[float]:
    """cgroup v1: `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`, as a container sees them."""
    for controller in ("cpu", "cpu,cpuacct"):
        quota = _ratio(root / controller / "cpu.cfs_quota_us", root / controller / "cpu.cfs_period_us")
        if quota is not None:
            return [quota]
    return []


def _ratio(quota_file: Path, period_file: Path | None) -> float | None:
    try:
        if period_file is None:
            quota, period = quota_file.read_text().split()[:2]
        else:
            quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit() or int(period) <= 0:
        return None
    return int(quota) / int(period) if int(quota) > 0 else None


# The most `--workers` may ask for: the same bound as the `workers` setting (a typo must not start thousands).
MAX_WORKERS = 512


def workers_value(text: str) -> int | str:
    """`--workers`: a number of processes (1 to MAX_WORKERS), or "auto"."""
    if text == "auto":
        return text
    if text.isdigit() and 1 <= int(text) <= MAX_WORKERS:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a number of workers (1 to {MAX_WORKERS}) or 'auto', not {text!r}")


def resolve_workers(
    requested: int | Literal["auto"], *, access: AccessConfig, environ: Mapping[str, str], cpus: int | None = None
) -> int:
    """The number of workers to run; ConfigError when several would each count the per-client limits apart.

    Without Redis, limit counters and spend reservations live in the process: N workers would each admit
    a key's full limit. An explicit N > 1 is then refused; "auto" runs one worker and says why.
    """
    in_process = configured_limits(access) if not redis_url(access, environ) else []
    if requested == "auto":
        count = cpus if cpus is not None else usable_cpus()
        if count > 1 and in_process:
            log.warning(
                "workers = auto: running 1 worker instead of %d, because %s would be counted by each worker apart "
                "without Redis; set redis_url (or REDIS_URL) to run one worker per CPU",
                count,
                ", ".join(in_process),
            )
            return 1
        return count
    if requested > 1 and in_process:
        raise ConfigError(
            f"workers = {requested} needs Redis (redis_url or REDIS_URL) for the per-client limits "
            f"({', '.join(in_process)}): each worker would count them apart, so every limit would hold "
            f"{requested} times over. Configure Redis, or run one worker."
        )
    return requested
