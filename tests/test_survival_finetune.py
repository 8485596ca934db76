"""Stage-3 fine-tuning: what trains, that nothing else changes, determinism, and the clear error for
projector+lora on a model without LoRA adapters."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_setups import (
    LORA,
    build,
    one_torch_thread,  # noqa: F401 (autouse)
    save_local_lm,
    tiny_config,
)

from ctsurv.errors import CtsurvError
from ctsurv.models.vlm import CTVLM
from ctsurv.text.questions import PRESENCE_QUESTIONS
from ctsurv.training.survival_finetune import finetune_parameters, finetune_vlm

QUESTIONS = PRESENCE_QUESTIONS[:3]


def names_of(vlm: CTVLM, params: list[torch.nn.Parameter]) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in vlm.named_parameters() if id(p) in ids}


def training_set(vlm: CTVLM, n: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        grids = vlm.projector.pool(vlm.vision_encoder.eval().features(torch.rand(n, 1, 32, 32, 16)))
    return {
        "grids": grids, "clinical": rng.normal(size=(n, 2)), "time": rng.exponential(100, n).round() + 1,
        "event": rng.random(n) < 0.7, "frozen_p_yes": rng.random((n, len(QUESTIONS))), "questions": QUESTIONS,
    }


def test_projector_mode_trains_the_projector_only() -> None:
    vlm = build(tiny_config())
    params = finetune_parameters(vlm, "projector")
    assert names_of(vlm, params) == {n for n, _ in vlm.named_parameters() if n.startswith("projector.")}
    with pytest.raises(CtsurvError, match="needs a model pretrained with LoRA adapters"):
        finetune_parameters(vlm, "projector+lora")


def test_lora_mode_adds_the_adapters(tmp_path: Path) -> None:
    vlm = build(tiny_config(f"language.model={save_local_lm(tmp_path / 'lm')}", *LORA))
    names = names_of(vlm, finetune_parameters(vlm, "projector+lora"))
    assert {n for n in names if not n.startswith("projector.")} == {
        n for n, _ in vlm.named_parameters() if "lora_" in n
    } != set()


def test_finetuning_changes_the_projector_alone_and_is_deterministic() -> None:
    cfg = tiny_config("survival.finetune=projector", "survival.finetune_epochs=2", "survival.finetune_batch_size=6",
                      "survival.finetune_lr=0.01", "survival.finetune_validation=0")
    models = [build(cfg) for _ in range(3)]
    before = {n: t.clone() for n, t in models[0].state_dict().items()}
    data = training_set(models[0])
    state = torch.get_rng_state()
    for vlm, seed in zip(models, (0, 0, 1)):
        finetune_vlm(vlm, **data, cfg=cfg, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)
    after = models[0].state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("projector.") for n in changed)
    assert not any(p.requires_grad for p in models[0].parameters()) and not models[0].training
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), name  # same seed, same result
    assert any(not torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[2].state_dict().values()))


def test_a_findings_head_that_reads_cells_gets_them_in_tuning() -> None:
    """Stage 3 reads cached features: the volumes' cells travel with them, and the fitted head stays as it is."""
    from ctsurv.training.findings import HeldOut, fit_findings_head

    cfg = tiny_config("projector.max_token=true", "projector.findings_token=true", "projector.findings_cells_channel=0",
                      "survival.finetune=projector", "survival.finetune_epochs=1", "survival.finetune_batch_size=6")
    vlm = build(cfg)
    images = torch.rand(12, 1, 32, 32, 16)
    images[:6, :, 12:20, 12:20, 6:10] += 1.0  # the first six carry a central blob, which finding 0 is labelled by
    with torch.no_grad():
        grids = vlm.projector.pool(vlm.vision_encoder.eval().features(images))
    cells = vlm.projector.cells(images)
    labels = torch.zeros(12, len(vlm.projector.findings.bias), dtype=torch.long)
    labels[:6, 0] = 1
    fit_findings_head(vlm.projector.findings, grids, labels, cells=cells, held_out=HeldOut(grids, cells, labels))
    assert bool(vlm.projector.findings.reads_cells[0])
    head = {n: t.clone() for n, t in vlm.projector.findings.state_dict().items()}
    data = {**training_set(vlm), "grids": grids}
    with pytest.raises(ValueError, match="also reads the volume's cells"):
        finetune_vlm(copy.deepcopy(vlm), **data, cfg=cfg, seed=0)  # cached features without their cells
    finetune_vlm(vlm, **data, cfg=cfg, seed=0, cells=cells)
    for name, tensor in vlm.projector.findings.state_dict().items():
        assert torch.equal(tensor, head[name]), name


def test_early_stopping_keeps_the_untuned_weights_when_tuning_only_hurts() -> None:
    """survival.finetune_validation: a learning rate that wrecks the projector is caught by the held-out patients
    and the untuned weights come back; without validation the wrecked ones stay."""
    wreck = ["survival.finetune=projector", "survival.finetune_epochs=2", "survival.finetune_batch_size=6",
             "survival.finetune_lr=50.0"]
    kept, wrecked = (tiny_config(*wreck, f"survival.finetune_validation={v}") for v in (0.25, 0))
    vlm = build(kept)
    data = training_set(vlm, n=24)
    before = {n: t.clone() for n, t in vlm.state_dict().items()}
    finetune_vlm(vlm, **data, cfg=kept, seed=0)
    assert all(torch.equal(before[n], t) for n, t in vlm.state_dict().items())
    finetune_vlm(vlm, **data, cfg=wrecked, seed=0)
    assert any(not torch.equal(before[n], t) for n, t in vlm.state_dict().items())


def test_validation_split_holds_out_a_share_by_event() -> None:
    from ctsurv.training.survival_finetune import validation_split

    rng = np.random.default_rng(0)
    time, event = rng.exponential(100, 50) + 1, rng.random(50) < 0.5
    fit, val = validation_split(time, event, 0.2, seed=0)
    assert sorted([*fit, *val]) == list(range(50)) and 8 <= len(val) <= 12 and event[val].any()
    assert validation_split(time, event, 0.0, seed=0)[1] is None
    assert validation_split(time, np.zeros(50, bool), 0.2, seed=0)[1] is None  # no events: nothing to stop on
