"""torch's CPU threads: ``ctsurv --threads`` / ``CTSURV_THREADS``, and the cap from a container's CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny_setups import assert_user_error, cli

from ctsurv.cli import common


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch: pytest.MonkeyPatch):
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CTSURV_THREADS"):
        monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(before)


def cgroup(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, cap", [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs -> 2 threads
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, None),  # no quota
    ({"cpu__cpu.cfs_quota_us": "100000\n", "cpu__cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu__cpu.cfs_quota_us": "-1\n", "cpu__cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_usable_cpus_reads_the_affinity_and_the_cgroup_quota(tmp_path: Path, files: dict, cap: int | None) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert common.usable_cpus(cgroup(tmp_path, **files)) == (affinity if cap is None else min(affinity, cap))


def test_threads_option_sets_torch_and_openmp() -> None:
    result = cli("--threads", "1", "labels", "--help")
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"


def test_threads_from_the_environment_and_a_bad_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTSURV_THREADS", "1")
    assert cli("labels", "--help").exit_code == 0
    assert torch.get_num_threads() == 1
    assert_user_error(cli("--threads", "0", "labels", "--help"), "--threads must be at least 1")


def test_a_users_omp_setting_stays_and_a_quota_caps_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert common.pin_threads(None) is None and os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(common, "usable_cpus", lambda: 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert common.pin_threads(None) == 1 and torch.get_num_threads() == 1
    monkeypatch.setattr(common, "usable_cpus", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert common.pin_threads(None) is None  # every CPU usable: torch's own default stays
