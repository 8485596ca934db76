"""Checkpoints: save/load round trips, what model.safetensors holds, corrupted folders, crash safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from tiny_setups import (
    LORA,
    build,
    one_torch_thread,  # noqa: F401 (autouse)
    random_images,
    save_local_lm,
    study_batch,
    tiny_config,
)

from ctsurv.config import ExperimentConfig
from ctsurv.errors import CtsurvError
from ctsurv.inference import resolve_checkpoint
from ctsurv.models.vlm import CTVLM
from ctsurv.training import checkpoint
from ctsurv.training.checkpoint import (
    STAGE_FILE,
    WEIGHTS,
    checkpoint_stage,
    load_checkpoint,
    refuse_untrained_language,
    save_checkpoint,
)
from ctsurv.training.stages import InstructionLoss

QUESTIONS = ["Is there a lung nodule?", "Write the full report."]


@pytest.fixture(scope="module")
def local_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_local_lm(tmp_path_factory.mktemp("local-lm") / "my-llm")


def trained_like(cfg: ExperimentConfig) -> CTVLM:
    """A model whose every part differs from a fresh build: as after training (LoRA B is zero at init)."""
    vlm = build(cfg, seed=7)
    with torch.no_grad():
        for name, p in vlm.named_parameters():
            if "lora_B" in name or name.startswith("projector."):
                p.add_(torch.randn_like(p) * 0.05)
    return vlm.eval()


def weights_keys(folder: Path) -> tuple[set[str], dict[str, str]]:
    with safe_open(folder / WEIGHTS, framework="pt") as f:
        return set(f.keys()), json.loads(f.metadata()["aliases"])


def loss_and_answers(vlm: CTVLM) -> tuple[torch.Tensor, list[str]]:
    with torch.no_grad():
        loss = InstructionLoss(vlm, frozen_vision=False).eval()(**study_batch(vlm, "instruct"))
    tokens = vlm.encode_image(random_images(2, seed=3))
    return loss, vlm.generate(tokens, QUESTIONS, max_new_tokens=8)


@pytest.mark.parametrize("setup", ["scratch_vit+tiny_lm", "scratch_vit+local_lm_lora"])
def test_round_trip(setup: str, local_lm: Path, tmp_path: Path) -> None:
    lora = setup.endswith("lora")
    cfg = tiny_config(*((f"language.model={local_lm}", *LORA) if lora else ()))
    model = trained_like(cfg)
    folder = save_checkpoint(tmp_path / "ckpt", model, cfg, metrics={"loss": 1.5})
    loaded, loaded_cfg = load_checkpoint(folder)

    assert loaded_cfg == cfg
    assert json.loads((folder / "metrics.json").read_text()) == {"loss": 1.5}
    assert not loaded.training
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    loss, answers = loss_and_answers(model)
    loaded_loss, loaded_answers = loss_and_answers(loaded)
    torch.testing.assert_close(loaded_loss, loss, rtol=0, atol=0)
    assert loaded_answers == answers

    stored, aliases = weights_keys(folder)
    lm_stored = {k for k in stored if k.startswith("language_model.")}
    assert {k.split(".", 1)[0] for k in stored} == {"vision_encoder", "projector", "language_model"}
    if lora:  # the base LM comes from its folder again; only the adapters are stored
        assert lm_stored == {n for n in before if "lora_" in n} and len(lm_stored) == 4
        assert aliases == {}
    else:  # the tiny LM: stored whole, its tied embedding / output head once
        embed, head = "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"
        assert len(lm_stored) == sum(1 for _ in model.language_model.parameters())
        assert (embed in stored) != (head in stored) and aliases in ({head: embed}, {embed: head})
        lm = loaded.language_model
        assert lm.get_input_embeddings().weight.data_ptr() == lm.get_output_embeddings().weight.data_ptr()
        torch.testing.assert_close(after[embed], after[head], rtol=0, atol=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CTVLM]:
    cfg = tiny_config()
    model = trained_like(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("saved") / "ckpt", model, cfg), model


@pytest.mark.parametrize("missing", [WEIGHTS, "config.yaml", "tokenizer"])
def test_incomplete_checkpoint_names_what_is_missing(saved: tuple[Path, CTVLM], tmp_path: Path, missing: str) -> None:
    folder = Path(shutil.copytree(saved[0], tmp_path / "ckpt"))
    target = folder / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CtsurvError, match=f"not a ctsurv checkpoint \\(no {missing}\\)"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    "section, key, value, detail",
    [
        ("vision", "dim", 64, r"other shapes .*vision_encoder"),  # same tensors, other shapes
        ("projector", "layers", 1, r"0 tensors missing.*2 unexpected .*projector\.mlp\.2"),  # other tensors
    ],
)
def test_edited_config_is_a_clear_error(
    saved: tuple[Path, CTVLM], tmp_path: Path, section: str, key: str, value: int, detail: str
) -> None:
    folder = Path(shutil.copytree(saved[0], tmp_path / "ckpt"))
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw[section][key] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(CtsurvError, match=r"does not match the model its config\.yaml describes.*" + detail):
        load_checkpoint(folder)


def test_not_a_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(CtsurvError, match="neither a checkpoint nor a `ctsurv pretrain` output folder"):
        resolve_checkpoint(tmp_path)


def test_crash_mid_save_keeps_the_previous_checkpoint(
    saved: tuple[Path, CTVLM], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Path(shutil.copytree(saved[0], tmp_path / "ckpt"))
    old = saved[1].state_dict()
    cfg = tiny_config()
    newer = trained_like(cfg)
    with torch.no_grad():
        newer.projector.mlp[0].weight.add_(1.0)

    def disk_full(*args: object, **kwargs: object) -> None:
        assert (tmp_path / "ckpt.tmp").is_dir()  # the crash happens inside the temporary folder
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(folder, newer, cfg)
    loaded, _ = load_checkpoint(folder)
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, old[name], rtol=0, atol=0, msg=name)

    monkeypatch.undo()  # the next save replaces the folder and cleans up the leftovers
    save_checkpoint(folder, newer, cfg)
    loaded, _ = load_checkpoint(folder)
    torch.testing.assert_close(loaded.projector.mlp[0].weight, newer.projector.mlp[0].weight, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_the_stage_is_recorded_and_a_vision_checkpoint_refused(saved: tuple[Path, CTVLM], tmp_path: Path) -> None:
    """checkpoint.json records the stage whatever the folder is called; older checkpoints (no stage recorded)
    fall back to the folder's name. Stage 0's is refused with the sibling instruct folder named when there is one."""
    cfg, model = tiny_config(), saved[1]
    folder = save_checkpoint(tmp_path / "run" / "first", model, cfg, stage="vision")
    assert json.loads((folder / STAGE_FILE).read_text()) == {"stage": "vision"} and checkpoint_stage(folder) == "vision"
    with pytest.raises(CtsurvError, match="never trained.*use the instruct checkpoint of its `ctsurv pretrain` run") as err:
        refuse_untrained_language(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)
    save_checkpoint(tmp_path / "run" / "instruct", model, cfg, stage="instruct")
    with pytest.raises(CtsurvError, match=f"use {tmp_path / 'run' / 'instruct'}$"):
        refuse_untrained_language(folder)
    refuse_untrained_language(tmp_path / "run" / "instruct")  # a trained language model passes

    tuned = save_checkpoint(tmp_path / "vision", model, cfg, stage="survival")
    assert checkpoint_stage(tuned) == "survival"  # the record wins over the folder's name
    refuse_untrained_language(tuned)
    for name, stage in (("vision", "vision"), ("align", "align"), ("ckpt", None)):  # written before stages were recorded
        old = Path(shutil.copytree(saved[0], tmp_path / "old" / name))
        (old / STAGE_FILE).unlink()
        assert checkpoint_stage(old) == stage, name
    with pytest.raises(ValueError, match="stage must be one of"):
        save_checkpoint(tmp_path / "bad", model, cfg, stage="stage0")
