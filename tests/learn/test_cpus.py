"""CPUs available to the trainer: cgroup v2 / v1 quotas and the affinity mask."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamcast.config import ModelSpec, TrainingSettings
from streamcast.learn import job
from streamcast.learn.cpus import available_cpus, cgroup_cpus


def write(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpu.max").write_text(text + "\n")


def write_v1(path: Path, quota: int, period: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (path / "cpu.cfs_period_us").write_text(f"{period}\n")


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("1000 100000", 1)],
)
def test_v2_quota_rounds_up(tmp_path: Path, cpu_max: str, expected: int) -> None:
    write(tmp_path, cpu_max)
    assert cgroup_cpus(tmp_path, proc_cgroup="0::/\n") == expected
    assert available_cpus(tmp_path, proc_cgroup="0::/\n", affinity=64) == expected


def test_unlimited_falls_back_to_affinity(tmp_path: Path) -> None:
    write(tmp_path, "max 100000")
    assert cgroup_cpus(tmp_path, proc_cgroup="") is None
    assert available_cpus(tmp_path, proc_cgroup="", affinity=6) == 6
    assert available_cpus(tmp_path / "nothing-here", proc_cgroup="", affinity=3) == 3


def test_affinity_smaller_than_quota_wins(tmp_path: Path) -> None:
    write(tmp_path, "800000 100000")
    assert available_cpus(tmp_path, proc_cgroup="", affinity=3) == 3


def test_v2_limit_on_an_ancestor_applies(tmp_path: Path) -> None:
    write(tmp_path, "max 100000")
    write(tmp_path / "kubepods.slice", "300000 100000")
    write(tmp_path / "kubepods.slice" / "pod1", "max 100000")
    own = "0::/kubepods.slice/pod1\n"
    assert available_cpus(tmp_path, proc_cgroup=own, affinity=32) == 3


def test_v1_cfs_quota(tmp_path: Path) -> None:
    write_v1(tmp_path / "cpu,cpuacct", 250_000, 100_000)
    assert available_cpus(tmp_path, proc_cgroup="", affinity=16) == 3
    write_v1(tmp_path / "cpu,cpuacct", -1, 100_000)
    assert available_cpus(tmp_path, proc_cgroup="", affinity=16) == 16
    own = "4:cpu,cpuacct:/docker/abc\n1:memory:/docker/abc\n"
    write_v1(tmp_path / "cpu,cpuacct" / "docker" / "abc", 100_000, 100_000)
    assert available_cpus(tmp_path, proc_cgroup=own, affinity=16) == 1


def test_unreadable_files_are_ignored_and_the_answer_is_at_least_one(tmp_path: Path) -> None:
    write(tmp_path, "garbage")
    assert available_cpus(tmp_path, proc_cgroup="", affinity=4) == 4
    write(tmp_path, "0 100000")
    assert available_cpus(tmp_path, proc_cgroup="", affinity=0) == 1


def test_this_machine() -> None:
    cpus = available_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))


def test_training_job_threads_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job, "available_cpus", lambda: 3)
    capped = job.TrainingJob(ModelSpec(), TrainingSettings(threads=16), tmp_path, [])
    assert capped.settings.threads == 3
    kept = job.TrainingJob(ModelSpec(), TrainingSettings(threads=2), tmp_path, [])
    assert kept.settings.threads == 2
