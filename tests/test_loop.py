"""The Accelerate training loop: learning, exact resume, and 2-process DDP (gloo) equals 1 process."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctsurv.config import TrainConfig
from ctsurv.errors import ConfigError
from ctsurv.training.loop import parameter_groups, resolve_precision, train

sys.path.insert(0, str(Path(__file__).parent))
from loop_worker import Regression, collate, data

CFG = TrainConfig(epochs=4, batch_size=8, lr=0.05, warmup_fraction=0.1, weight_decay=0.0)


def test_loss_decreases_and_frozen_parameters_stay() -> None:
    model = Regression()
    model.net[0].bias.requires_grad_(False)
    frozen = model.net[0].bias.detach().clone()
    history = train(model, data(), collate, CFG, seed=0, progress=False)
    assert len(history) == CFG.epochs * 8
    first, last = history[0]["loss"], sum(h["loss"] for h in history[-8:]) / 8
    assert last < 0.3 * first
    torch.testing.assert_close(model.net[0].bias, frozen, rtol=0, atol=0)
    assert history[-1]["lr"] < CFG.lr * 0.1  # cosine schedule decays to ~0


class WithProjector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.projector = torch.nn.Linear(4, 16)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.head(torch.tanh(self.projector(x))).squeeze(-1), y)


def test_the_projector_learns_at_its_own_rate() -> None:
    model = WithProjector()
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, projector_lr=1e-6, warmup_fraction=0.0, weight_decay=0.1)
    groups = parameter_groups(model, cfg)
    assert [(len(g["params"]), g["lr"], g["weight_decay"]) for g in groups] == [
        (1, 0.05, 0.0), (1, 0.05, 0.1), (1, 1e-6, 0.0), (1, 1e-6, 0.1)  # head bias, head weight, projector ...
    ]
    assert [len(g["params"]) for g in parameter_groups(model, CFG)] == [1, 1, 1, 1]  # same groups, so resumable
    assert {g["lr"] for g in parameter_groups(model, CFG)} == {CFG.lr}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, data(), collate, cfg, seed=0, progress=False)
    moved = {n: float((p - before[n]).abs().max()) for n, p in model.named_parameters()}
    assert moved["projector.weight"] < 1e-4 and moved["projector.bias"] < 1e-4  # 8 Adam steps of at most ~1e-6
    assert moved["head.weight"] > 1e-2
    with pytest.raises(ConfigError, match="projector_lr must be positive"):
        TrainConfig(projector_lr=0.0)


class Crash(Exception):
    pass


class CrashingData(torch.utils.data.Dataset):
    """The toy data, raising once after ``after`` items (an interrupted run)."""

    def __init__(self, after: int) -> None:
        self.inner, self.left = data(), after

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        self.left -= 1
        if self.left == 0:
            raise Crash
        return self.inner[i]


def test_resume_continues_to_the_same_result(tmp_path: Path) -> None:
    straight = Regression()
    h_straight = train(straight, data(), collate, CFG, seed=3, out_dir=tmp_path / "a", progress=False)

    interrupted = Regression()
    with pytest.raises(Crash):  # dies in epoch 3, after two saved epochs
        train(interrupted, CrashingData(after=64 * 2 + 20), collate, CFG, seed=3, out_dir=tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b/train_state/progress.json").read_text())["epoch"] == 2
    resumed = Regression()
    h_resumed = train(resumed, data(), collate, CFG, seed=3, out_dir=tmp_path / "b", resume=True, progress=False)

    assert [h["loss"] for h in h_resumed] == pytest.approx([h["loss"] for h in h_straight], rel=1e-6)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q)


def test_resume_refuses_a_different_stage(tmp_path: Path) -> None:
    train(Regression(), data(), collate, TrainConfig(epochs=1, batch_size=8), seed=0, out_dir=tmp_path, progress=False)
    other = Regression()
    other.net[2].requires_grad_(False)
    with pytest.raises(Exception, match="cannot resume"):
        train(other, data(), collate, TrainConfig(epochs=2, batch_size=8), seed=0, out_dir=tmp_path, resume=True, progress=False)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    # On CPUs, Accelerate goes multi-process (gloo) under torchrun with ACCELERATE_USE_CPU; `accelerate launch`
    # with --cpu starts a single process.
    launcher = shutil.which("torchrun")
    if launcher is None:
        pytest.skip("torchrun is not on PATH")
    worker = Path(__file__).parent / "loop_worker.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    subprocess.run([sys.executable, str(worker), str(tmp_path / "one.json"), "8"], check=True, env=env, timeout=300)
    subprocess.run(
        [launcher, "--nproc_per_node", "2", "--master_port", "29517", str(worker), str(tmp_path / "two.json"), "4"],
        check=True, env=env, timeout=300,
    )
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert len(one["history"]) == len(two["history"]) == 5 * 8
    assert [h["loss"] for h in two["history"]] == pytest.approx([h["loss"] for h in one["history"]], rel=1e-4, abs=1e-6)
    for p, q in zip(one["weights"], two["weights"]):
        torch.testing.assert_close(torch.tensor(q), torch.tensor(p), rtol=1e-4, atol=1e-5)


class WithBatchNorm(Regression):
    """The toy regression with a BatchNorm layer: its running statistics must survive a resume."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def test_resume_restores_batchnorm_statistics(tmp_path: Path) -> None:
    straight = WithBatchNorm()
    train(straight, data(), collate, CFG, seed=3, out_dir=tmp_path / "a", progress=False)
    interrupted = WithBatchNorm()
    with pytest.raises(Crash):
        train(interrupted, CrashingData(after=64 * 2 + 20), collate, CFG, seed=3, out_dir=tmp_path / "b", progress=False)
    resumed = WithBatchNorm()
    train(resumed, data(), collate, CFG, seed=3, out_dir=tmp_path / "b", resume=True, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_stages_may_differ_in_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 stage then a float32 one in the same process (Accelerate keeps its first precision unless reset):
    the second computes in float32 again, as a fresh process would."""
    from accelerate.state import AcceleratorState

    seen: list[torch.dtype] = []

    class Probe(Regression):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = self.net(x)
            seen.append(out.dtype)
            return torch.nn.functional.mse_loss(out.float().squeeze(-1), y)

    one = TrainConfig(epochs=1, batch_size=32)
    train(Probe(), data(), collate, dataclasses.replace(one, mixed_precision="bf16"), seed=0, progress=False)
    assert set(seen) == {torch.bfloat16} and AcceleratorState().mixed_precision == "bf16"
    seen.clear()
    train(Probe(), data(), collate, one, seed=0, progress=False)
    assert set(seen) == {torch.float32} and AcceleratorState().mixed_precision == "no"


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("no") == "no" and resolve_precision("fp16") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert resolve_precision("auto") == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto") == "no"
