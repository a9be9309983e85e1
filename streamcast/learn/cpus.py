"""How many CPUs this process may really use: the cgroup CPU quota and the affinity mask.

``os.cpu_count()`` counts the host's cores. In a container limited to two CPUs on a
64-core node, a trainer sized by it runs 64 threads that the kernel throttles to two
CPUs' worth of time, and the inference loop stalls with it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def available_cpus(
    cgroup_root: str | os.PathLike[str] = CGROUP_ROOT,
    *,
    proc_cgroup: str | None = None,
    affinity: int | None = None,
) -> int:
    """The fewest of: the cgroup quota (v2 ``cpu.max``, v1 CFS quota), the CPUs in this
    process's affinity mask; rounded up, at least 1.

    ``proc_cgroup`` is the text of ``/proc/self/cgroup`` (read when None) and
    ``affinity`` the mask's size (asked when None): tests pass both.
    """
    limits = [_affinity() if affinity is None else affinity]
    quota = cgroup_cpus(cgroup_root, proc_cgroup)
    if quota is not None:
        limits.append(quota)
    return max(1, min(limits))


def cgroup_cpus(
    cgroup_root: str | os.PathLike[str] = CGROUP_ROOT, proc_cgroup: str | None = None
) -> int | None:
    """CPUs the cgroup quota allows (quota / period, rounded up); None when unlimited.

    A limit on any cgroup from this process's own up to the root applies, so the
    smallest one found along that path counts. The root alone is what a container with
    its own cgroup namespace sees.
    """
    root = Path(cgroup_root)
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    own_v2, own_v1 = _own_paths(proc_cgroup)
    found: list[int] = []
    for directory in _up_from(root, own_v2):
        text = _read(directory / "cpu.max")
        if text is not None:
            quota, _, period = text.partition(" ")
            found += _cpus(quota, period, unlimited="max")
    for name in _V1_CPU_DIRS:
        for directory in _up_from(root / name, own_v1):
            quota_text = _read(directory / "cpu.cfs_quota_us")
            period_text = _read(directory / "cpu.cfs_period_us")
            if quota_text is not None and period_text is not None:
                found += _cpus(quota_text, period_text, unlimited="-1")
    return min(found) if found else None


def _cpus(quota: str, period: str, *, unlimited: str) -> list[int]:
    """[ceil(quota / period)], or [] when unlimited or unreadable."""
    quota = quota.strip()
    if quota == unlimited:
        return []
    try:
        q, p = int(quota), int(period)
    except ValueError:
        logger.debug("unreadable cgroup cpu quota quota=%r period=%r", quota, period)
        return []
    if q <= 0 or p <= 0:
        return []
    return [-(-q // p)]


def _own_paths(proc_cgroup: str) -> tuple[str, str]:
    """(cgroup v2 path, cgroup v1 cpu controller path) from ``/proc/self/cgroup``."""
    v2 = v1 = "/"
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _up_from(base: Path, own: str) -> list[Path]:
    """``base`` / own path, then each parent up to ``base``; only those that exist."""
    parts = [p for p in PurePosixPath(own).parts if p not in ("/", "..", ".")]
    dirs = [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1
