"""Stages 0-2: gradients reach exactly the parameters a stage trains; frozen pretrained parts stay in
eval mode; stage 0's presence loss; the length-bucketed instruction loss equals the plain loss over the
whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_setups import (
    IMAGE_XYZ,
    LORA,
    build,
    needs_astra_weights,
    one_torch_thread,  # noqa: F401 (autouse)
    random_images,
    save_local_lm,
    stage_pairs,
    study_batch,
    tiny_config,
)

from ctsurv.models.vlm import CTVLM, format_prompt
from ctsurv.text.questions import PRESENCE_QUESTIONS
from ctsurv.training.datasets import finding_collate
from ctsurv.training.stages import (
    LENGTH_BUCKETS,
    FindingLoss,
    InstructionLoss,
    presence_loss,
    random_affine,
    set_trainable,
    vision_stage_runs,
    vision_trains,
)

NO_STAGE_0 = "pretrain.vision.epochs=0"
# setup -> (overrides, {stage: (vision encoder trains?, what of the LM trains: "all" / "lora" / "none")})
# With stage 0 (the default for a scratch encoder) the encoder is frozen afterwards, like a pretrained one.
SETUPS: dict[str, tuple[tuple[str, ...], dict[str, tuple[bool, str]]]] = {
    "scratch_vit+tiny_lm": ((), {"align": (False, "all"), "instruct": (False, "all")}),
    "scratch_vit+tiny_lm, finetune_vision": (
        ("pretrain.finetune_vision=true",), {"align": (False, "all"), "instruct": (True, "all")}
    ),
    "scratch_vit+tiny_lm, no stage 0": ((NO_STAGE_0,), {"align": (True, "all"), "instruct": (True, "all")}),
    "scratch_cnn+tiny_lm, no stage 0": (
        (NO_STAGE_0, "vision.encoder=cnn3d", "vision.cnn_widths=[4,4,8,8]"),
        {"align": (True, "all"), "instruct": (True, "all")},
    ),
    "scratch_vit+local_lm_lora": (
        ("language.model={lm}", *LORA),
        {"align": (False, "none"), "instruct": (False, "lora")},
    ),
    "scratch_vit+local_lm_lora, no stage 0": (
        ("language.model={lm}", *LORA, NO_STAGE_0),
        {"align": (True, "none"), "instruct": (True, "lora")},
    ),
    "scratch_vit+local_lm, no stage 0": (
        ("language.model={lm}", NO_STAGE_0), {"align": (True, "none"), "instruct": (True, "none")}
    ),
}


@pytest.fixture(scope="module")
def local_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_local_lm(tmp_path_factory.mktemp("local-lm") / "my-llm")


def expected_trainable(vlm: CTVLM, vision: bool, lm: str) -> set[str]:
    """Projector always; the vision encoder when it trains (less MONAI's unused cross-attention norm);
    the whole LM, its LoRA tensors only, or nothing of it."""
    trains = {
        "projector": lambda name: True,
        "vision_encoder": lambda name: vision and "norm_cross_attn" not in name,
        "language_model": lambda name: lm == "all" or (lm == "lora" and "lora_" in name),
    }
    return {name for name, _ in vlm.named_parameters() if trains[name.split(".", 1)[0]](name)}


def with_gradient(vlm: CTVLM) -> set[str]:
    return {n for n, p in vlm.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}


def give_lora_b_weights(vlm: CTVLM) -> None:
    """PEFT starts lora_B at zero, so lora_A gets an exactly zero gradient on the first step; give B
    small weights (as after some training) so that a missing gradient cannot hide behind a zero."""
    with torch.no_grad():
        for name, p in vlm.language_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)


@pytest.mark.parametrize("stage", ["align", "instruct"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_gradients_reach_exactly_the_trained_parameters(setup: str, stage: str, local_lm: Path) -> None:
    overrides, plan = SETUPS[setup]
    cfg = tiny_config(*(o.format(lm=local_lm) for o in overrides))
    vlm = build(cfg)
    give_lora_b_weights(vlm)
    set_trainable(vlm, cfg, stage)
    vision, lm = plan[stage]
    want = expected_trainable(vlm, vision, lm)
    lm_wanted = [n for n in want if n.startswith("language_model.")]
    n_lm = sum(1 for n, _ in vlm.language_model.named_parameters())
    assert len(lm_wanted) == {"all": n_lm, "lora": 2 * 2 * 1, "none": 0}[lm]  # lora: A and B, q and v, 1 layer
    assert {n for n, p in vlm.named_parameters() if p.requires_grad} == want

    frozen = not vision_trains(cfg, stage)
    loss = InstructionLoss(vlm, frozen_vision=frozen).train()(**study_batch(vlm, stage, "features" if frozen else "images"))
    assert torch.isfinite(loss)
    loss.backward()
    assert with_gradient(vlm) == want


# ------------------------------------------------------------------ stage 0: the encoder learns the presence labels


@pytest.mark.parametrize("encoder", ["vit3d", "cnn3d"])
def test_stage_0_trains_the_encoder_and_its_head_only(encoder: str) -> None:
    cfg = tiny_config(f"vision.encoder={encoder}", "vision.cnn_widths=[4,4,8,8]")
    assert vision_stage_runs(cfg) and vision_trains(cfg, "vision")
    vlm = build(cfg)
    set_trainable(vlm, cfg, "vision")
    assert {n for n, p in vlm.named_parameters() if p.requires_grad} == expected_trainable(vlm, True, "none") - {
        n for n, _ in vlm.projector.named_parameters(prefix="projector")
    }
    module = FindingLoss(vlm, len(PRESENCE_QUESTIONS)).train()
    batch = finding_collate([(image, pairs) for image, pairs in zip(random_images(2), stage_pairs("instruct"))])
    assert batch["finding_labels"].shape == (2, len(PRESENCE_QUESTIONS))
    module(**batch).backward()
    assert with_gradient(vlm) == {n for n, p in vlm.named_parameters() if p.requires_grad}
    assert module.head.weight.grad is not None and bool(module.head.weight.grad.abs().sum() > 0)


def test_random_affine_jitters_within_its_bounds_and_repeats_with_the_seed() -> None:
    images = torch.zeros(3, 2, 24, 24, 16)
    images[:, :, 10:14, 10:14, 6:10] = 1.0  # a cube in the middle of each volume, both channels
    torch.testing.assert_close(random_affine(images, 0.0, 0.0, 0.0), images, atol=1e-5, rtol=0)  # no range: identity
    torch.manual_seed(3)
    out = random_affine(images)
    torch.manual_seed(3)
    torch.testing.assert_close(random_affine(images), out, rtol=0, atol=0)
    assert not torch.allclose(out[0], out[1])  # each volume gets its own draw
    torch.testing.assert_close(out[:, 0], out[:, 1], rtol=0, atol=0)  # ... shared by its channels
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (24, 24, 16)], indexing="ij"))
    for volume in out[:, 0]:
        mass = volume.sum()
        assert abs(float(mass) / 64 - 1) < 0.25  # scaled by at most 6 % per axis
        centre = (grid * volume).flatten(1).sum(1) / mass
        shift = (centre - torch.tensor([11.5, 11.5, 7.5])).abs()
        assert bool((shift <= torch.tensor([24, 24, 16]) * 0.05 + 0.5).all())  # at most 5 % of the extent


def test_stage_0_augments_in_training_only() -> None:
    cfg = tiny_config("vision.encoder=cnn3d", "vision.cnn_widths=[4,4,8,8]")
    vlm = build(cfg)
    batch = finding_collate([(image, pairs) for image, pairs in zip(random_images(2), stage_pairs("instruct"))])
    plain, jittered = FindingLoss(vlm, len(PRESENCE_QUESTIONS)), FindingLoss(vlm, len(PRESENCE_QUESTIONS), augment=True)
    jittered.head.load_state_dict(plain.head.state_dict())
    vlm.vision_encoder.eval()
    torch.testing.assert_close(jittered.eval()(**batch), plain.eval()(**batch), rtol=0, atol=0)
    torch.manual_seed(0)
    assert not torch.allclose(jittered.train()(**batch), plain.train()(**batch))


def test_stage_0_is_skipped_for_a_pretrained_encoder_or_zero_epochs() -> None:
    assert not vision_stage_runs(tiny_config("vision.encoder=i3resnet152"))
    assert not vision_stage_runs(tiny_config(NO_STAGE_0))
    assert not vision_trains(tiny_config(NO_STAGE_0), "vision")


def test_presence_loss_is_bce_over_known_labels_only() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    grid = torch.randn(2, 3, 2, 2, 1)
    labels = torch.tensor([[1, 0, -1], [-1, 1, 0]])
    pooled = torch.cat([grid.flatten(2).mean(-1), grid.flatten(2).amax(-1)], 1)
    logits = head(pooled)
    known = labels >= 0
    want = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits[known]), labels[known].float())
    torch.testing.assert_close(presence_loss(head, grid, labels), want)
    nothing = presence_loss(head, grid, torch.full((2, 3), -1))
    assert nothing.item() == 0.0 and nothing.requires_grad  # a batch without labels still backpropagates


# ------------------------------------------------------------------ the pretrained I3ResNet-152 encoder


@pytest.fixture(scope="module")
def pretrained_vlm() -> tuple[CTVLM, torch.Tensor]:
    """One CTVLM on the real I3ResNet-152 (about 3 s to load) and the encoder features of the test volumes,
    shared by the cases below: set_trainable resets every requires_grad, and each case clears the gradients."""
    vlm = build(tiny_config("vision.encoder=i3resnet152"))
    with torch.no_grad():
        features = vlm.vision_encoder.eval().features(random_images(2))  # (2, 2048, 1, 1, 1)
    return vlm, features


@needs_astra_weights
@pytest.mark.parametrize(
    "stage, finetune, kind",
    [
        ("align", False, "images"),  # the volumes run through the frozen encoder: no grad, BN stats kept
        ("instruct", False, "features"),  # cached encoder features, as `ctsurv pretrain` does
        ("align", True, "features"),  # finetune_vision is for stage 2 only
        ("instruct", True, "images"),
    ],
)
def test_pretrained_encoder_trains_only_with_finetune_vision(
    pretrained_vlm: tuple[CTVLM, torch.Tensor], stage: str, finetune: bool, kind: str
) -> None:
    vlm, features = pretrained_vlm
    vlm.zero_grad(set_to_none=True)
    cfg = tiny_config("vision.encoder=i3resnet152", f"pretrain.finetune_vision={str(finetune).lower()}")
    set_trainable(vlm, cfg, stage)
    encoder_trains = stage == "instruct" and finetune
    assert vision_trains(cfg, stage) == encoder_trains
    want = expected_trainable(vlm, encoder_trains, "all")
    assert {n for n, p in vlm.named_parameters() if p.requires_grad} == want

    module = InstructionLoss(vlm, frozen_vision=not encoder_trains).train()
    encoder_modes = {m.training for m in vlm.vision_encoder.modules()}
    assert encoder_modes == {encoder_trains}  # frozen: every BatchNorm stays in eval mode
    assert vlm.projector.training and vlm.language_model.training

    batch = study_batch(vlm, stage, kind, features=features)
    if encoder_trains:
        assert batch["images"].shape == (2, 1, *IMAGE_XYZ)
    bn_before = vlm.vision_encoder.bn1.running_mean.clone()
    module(**batch).backward()
    assert with_gradient(vlm) == want
    if not encoder_trains:
        torch.testing.assert_close(vlm.vision_encoder.bn1.running_mean, bn_before, rtol=0, atol=0)


# ------------------------------------------------------------------ length buckets


def test_bucketed_loss_equals_the_loss_over_the_whole_batch() -> None:
    cfg = tiny_config("language.max_length=512")
    vlm = build(cfg)
    report = "Bilateral pleural effusion, larger on the right. A nodule measuring 12 mm in the right upper lobe."
    answers = ["Yes.", "No.", report, report * 2, report * 4, report * 8]  # short answers to long reports
    image_index = torch.tensor([0, 1, 1, 0, 1, 0])
    batch = vlm.tokenize([format_prompt("Write the full report.")] * len(answers), answers)
    lengths = batch["attention_mask"].sum(1)
    buckets = {sum(int(n > b) for b in LENGTH_BUCKETS) for n in lengths.tolist()}
    assert buckets == {0, 1, 2, 3}, f"the batch must fill every length bucket, lengths {lengths.tolist()}"
    images = random_images(2, seed=1)

    module = InstructionLoss(vlm, frozen_vision=False, weighting="token").eval()
    bucketed = module(image_index=image_index, images=images, **batch)
    bucketed.backward()
    grads = {n: p.grad.clone() for n, p in vlm.named_parameters() if p.grad is not None}
    vlm.zero_grad(set_to_none=True)

    tokens = vlm.encode_image(images)[image_index]  # (S, N, D)
    reference = vlm(batch["input_ids"], batch["attention_mask"], batch["labels"], image_tokens=tokens)
    reference.backward()
    torch.testing.assert_close(bucketed, reference, rtol=1e-5, atol=1e-5)
    assert grads.keys() == {n for n, p in vlm.named_parameters() if p.grad is not None}
    for name, p in vlm.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_sequence_weighting_averages_each_answer_first() -> None:
    """weighting="sequence": the mean over (question, answer) pairs of each pair's mean token loss."""
    cfg = tiny_config("language.max_length=512")
    vlm = build(cfg).eval()
    report = "Bilateral pleural effusion, larger on the right. A nodule measuring 12 mm in the right upper lobe."
    answers = ["Yes.", "No.", report, report * 4]
    image_index = torch.tensor([0, 1, 1, 0])
    batch = vlm.tokenize([format_prompt("Is there a pleural effusion?")] * len(answers), answers)
    images = random_images(2, seed=2)
    loss = InstructionLoss(vlm, frozen_vision=False, weighting="sequence").eval()(image_index=image_index, images=images, **batch)
    tokens = vlm.encode_image(images)[image_index]
    per_pair = [
        vlm(batch["input_ids"][i : i + 1], batch["attention_mask"][i : i + 1], batch["labels"][i : i + 1], image_tokens=tokens[i : i + 1])
        for i in range(len(answers))
    ]
    torch.testing.assert_close(loss, torch.stack(per_pair).mean(), rtol=1e-5, atol=1e-5)
    token_mean = vlm(batch["input_ids"], batch["attention_mask"], batch["labels"], image_tokens=tokens)
    assert abs(float(loss - token_mean)) > 1e-3  # the two weightings genuinely differ on this batch


def test_gradient_checkpointing_changes_memory_not_the_gradients() -> None:
    """language.gradient_checkpointing recomputes the LM's activations in the backward pass: same loss, same
    gradients as without it."""
    results = []
    for checkpointing in ("false", "true"):
        vlm = build(tiny_config(f"language.gradient_checkpointing={checkpointing}"))
        lm = vlm.language_model  # transformers 5 renamed the flag
        on = lm.is_activation_checkpointing if hasattr(lm, "activation_checkpointing_enable") else lm.is_gradient_checkpointing
        assert on is (checkpointing == "true")
        vlm.train()
        batch = study_batch(vlm, "instruct", kind="features")
        loss = InstructionLoss(vlm, frozen_vision=True)(**batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in vlm.language_model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed, plain)
    assert plain_grads.keys() == checkpointed_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
