"""CTVLM: shapes on a grid of tiny configs, the <image> merge, gradients, LoRA, the local-model route."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_setups import TINY_MODEL

from ctsurv.config import load_config
from ctsurv.errors import ConfigError, CtsurvError
from ctsurv.models import representation
from ctsurv.models import vlm as vlm_module
from ctsurv.models.vlm import CTVLM, IGNORE_INDEX, build_vlm, format_prompt

TEXTS = [
    "No pleural effusion. A nodule measuring 12 mm in the right upper lobe.",
    "Heart size is normal. Emphysema in both upper lobes. No lymphadenopathy.",
    "Bilateral pleural effusion, larger on the right. Cardiomegaly.",
] * 20


def tiny(*overrides: str) -> CTVLM:
    torch.manual_seed(0)
    return build_vlm(load_config(None, [*TINY_MODEL, *overrides]), texts=TEXTS)


@pytest.mark.parametrize(
    "overrides, n_tokens",
    [
        ((), 32),
        (("projector.tokens_zyx=[1,1,1]", "projector.layers=1"), 1),
        (("projector.tokens_zyx=[2,2,2]", "vision.patch_size_zyx=[4,8,8]", "language.hidden_size=48"), 8),
        (("projector.max_token=true",), 33),
    ],
)
def test_shapes_on_tiny_grid(overrides: tuple[str, ...], n_tokens: int) -> None:
    model = tiny(*overrides)
    images = torch.rand(3, 1, 32, 32, 16)  # (B, 1, X, Y, Z)
    tokens = model.encode_image(images)
    assert tokens.shape == (3, n_tokens, model.language_model.config.hidden_size)
    batch = model.tokenize([format_prompt("Is there a nodule?")] * 3, ["Yes.", "No.", "Yes, 12 mm."])
    assert int((batch["input_ids"] == model.image_token_id).sum()) == 3 * n_tokens
    # loss only on the answer: every labelled position is after the last image token
    for ids, lab in zip(batch["input_ids"], batch["labels"]):
        last_image = int((ids == model.image_token_id).nonzero().max())
        assert (lab[: last_image + 1] == IGNORE_INDEX).all() and (lab != IGNORE_INDEX).any()
    loss = model(**batch, image_tokens=tokens)
    # the answer-only output head gives exactly Hugging Face's loss over the full logits
    reference = model.language_model(
        inputs_embeds=model.embed(batch["input_ids"], tokens), attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], tokens)
    assert hidden.shape == (*batch["input_ids"].shape, model.language_model.config.hidden_size)


def test_the_max_token_is_the_grids_channel_maximum_and_pooled_features_pass_through() -> None:
    model = tiny("projector.max_token=true", "projector.tokens_zyx=[1,2,2]")
    dv = model.vision_encoder.out_dim
    grid = torch.randn(2, dv, 4, 4, 3)  # (B, Dv, gx, gy, gz)
    grid[0, 5, 3, 0, 2] = 9.0  # one hot cell: averaging dilutes it, the max keeps it
    pooled = model.projector.pool(grid)
    assert pooled.shape == (2, dv, 5)
    torch.testing.assert_close(pooled[:, :, :4], torch.nn.functional.adaptive_avg_pool3d(grid, (2, 2, 1)).flatten(2))
    torch.testing.assert_close(pooled[:, :, 4], grid.amax(dim=(2, 3, 4)))
    assert float(pooled[0, 5, 4]) == 9.0 and float(pooled[0, 5, :4].max()) < 9.0 / 4
    torch.testing.assert_close(model.projector(pooled), model.projector(grid), rtol=0, atol=0)  # cached features
    with pytest.raises(ValueError, match="pooled features hold 4 tokens, the projector makes 5"):
        model.projector(pooled[:, :, :4])


def test_visual_tokens_land_in_the_image_positions() -> None:
    model = tiny()
    tokens = torch.randn(2, model.num_image_tokens, model.language_model.config.hidden_size)
    batch = model.tokenize([format_prompt("q")] * 2)
    embeds = model.embed(batch["input_ids"], tokens)
    mask = batch["input_ids"] == model.image_token_id
    torch.testing.assert_close(embeds[mask], tokens.reshape(-1, tokens.shape[-1]))
    text_only = model.language_model.get_input_embeddings()(batch["input_ids"])
    torch.testing.assert_close(embeds[~mask], text_only[~mask])


def test_count_mismatch_raises_value_error() -> None:
    model = tiny()
    batch = model.tokenize([format_prompt("q")] * 2)
    too_few = torch.randn(1, model.num_image_tokens, model.language_model.config.hidden_size)
    with pytest.raises(ValueError, match="image-token positions"):
        model.embed(batch["input_ids"], too_few)
    with pytest.raises(ValueError, match="exactly one <image>"):
        model.tokenize(["no placeholder here"])


def test_gradients_reach_every_part() -> None:
    model = tiny()
    batch = model.tokenize([format_prompt("Is there an effusion?")] * 2, ["Yes, on the right.", "No."])
    model(**batch, image_tokens=model.encode_image(torch.rand(2, 1, 32, 32, 16))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def save_local_lm(tmp_path: Path) -> tuple[CTVLM, Path]:
    donor = tiny()
    lm_dir = tmp_path / "my-llm"
    donor.language_model.save_pretrained(lm_dir)
    donor.tokenizer.save_pretrained(lm_dir)
    return donor, lm_dir


def test_lora_trains_only_adapters(tmp_path: Path) -> None:
    _, lm_dir = save_local_lm(tmp_path)
    model = tiny(f"language.model={lm_dir}", "lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj,v_proj]")
    lm_trainable = [n for n, p in model.language_model.named_parameters() if p.requires_grad]
    assert lm_trainable and all("lora_" in n for n in lm_trainable)
    assert len(lm_trainable) == 2 * 2 * 1  # A and B, for q and v, in 1 layer
    with pytest.raises(ConfigError, match="not modules of this language model"):
        tiny(f"language.model={lm_dir}", "lora.enabled=true", "lora.target_modules=[query]")
    with pytest.raises(ConfigError, match="tiny model starts from random weights"):
        tiny("lora.enabled=true")


def test_generate_returns_text() -> None:
    model = tiny().eval()
    answers = model.generate(model.encode_image(torch.rand(2, 1, 32, 32, 16)), ["Is there a nodule?"] * 2, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_local_hf_model_route(tmp_path: Path) -> None:
    """A local causal LM saved with save_pretrained loads by path and gets the <image> token."""
    donor, lm_dir = save_local_lm(tmp_path)
    model = tiny(f"language.model={lm_dir}")
    for (n1, p1), (n2, p2) in zip(donor.language_model.state_dict().items(), model.language_model.state_dict().items()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2)
    assert model.image_token_id == donor.image_token_id
    with pytest.raises(CtsurvError, match="not a local Hugging Face model folder"):
        tiny("language.model=mistralai/Mistral-7B-v0.1")


def test_pooled_features_give_the_same_tokens() -> None:
    """Caching features pooled to the token grid (frozen encoders) is exact."""
    model = tiny()
    grid = model.vision_encoder.features(torch.rand(2, 1, 32, 32, 16))
    torch.testing.assert_close(model.projector(model.projector.pool(grid)), model.projector(grid))


def test_cnn_encoder_grid_and_gradients() -> None:
    """vision.encoder=cnn3d: a stride-16 grid in (X, Y, Z) order, every parameter trained."""
    model = tiny("vision.encoder=cnn3d", "vision.cnn_widths=[4,8,8,16]")
    grid = model.vision_encoder.features(torch.rand(2, 1, 32, 32, 16))
    assert grid.shape == (2, 16, 2, 2, 1)
    batch = model.tokenize([format_prompt("Is there cardiomegaly?")] * 2, ["Yes.", "No."])
    model(**batch, image_tokens=model.encode_image(torch.rand(2, 1, 32, 32, 16))).backward()
    assert all(p.grad is not None for p in model.vision_encoder.parameters())


@pytest.mark.parametrize("encoder", ["cnn3d", "vit3d"])
def test_blob_channels_also_reach_the_grid_max_pooled(encoder: str) -> None:
    """data.blob_sigmas_mm: the blob channels come last in the input and, max-pooled to the grid, last in
    the features; the encoder itself still trains."""
    model = tiny(f"vision.encoder={encoder}", "vision.cnn_widths=[4,8,8,16]", "data.extra_hu_windows=[[-160,240]]",
                 "data.blob_sigmas_mm=[4,6]")
    encoder_dim = model.vision_encoder.encoder.out_dim
    assert model.vision_encoder.out_dim == encoder_dim + 2
    x = torch.rand(2, 4, 32, 32, 16)  # two windows, two blob scales
    x[1, 3, 30, 1, 5] = 7.0  # one bright blob voxel
    grid = model.vision_encoder.eval().features(x)  # eval: the fresh batch norm is the identity (mean 0, var 1)
    assert grid.shape[1] == encoder_dim + 2
    gx, gy, gz = grid.shape[2:]
    expected = x[:, 2:].reshape(2, 2, gx, 32 // gx, gy, 32 // gy, gz, 16 // gz).amax(dim=(3, 5, 7))
    torch.testing.assert_close(grid[:, encoder_dim:], expected / (1 + 1e-5) ** 0.5)
    assert abs(float(grid[1, -1].max()) - 7.0) < 1e-3
    normed = model.vision_encoder.train().features(x)[:, encoder_dim:]  # training: batch statistics
    torch.testing.assert_close(normed.mean(dim=(0, 2, 3, 4)), torch.zeros(2), atol=1e-4, rtol=0)
    batch = model.tokenize([format_prompt("Is there a nodule?")] * 2, ["Yes.", "No."])
    model(**batch, image_tokens=model.encode_image(x)).backward()
    first = next(model.vision_encoder.encoder.parameters())  # the ViT's patch embedding, the CNN's first conv
    assert first.grad is not None and float(first.grad.abs().sum()) > 0


def test_cnn_with_more_than_three_channels_is_one_wide_first_convolution() -> None:
    """CNN3D splits its first convolution (3 channels + the rest) for speed; it is the same function."""
    from ctsurv.models.vision import CNN3D

    cfg = load_config(None, ["vision.encoder=cnn3d", "vision.cnn_widths=[4,8,8,16]"]).vision
    torch.manual_seed(0)
    cnn = CNN3D(cfg, in_channels=5)
    x = torch.randn(2, 5, 32, 32, 16)
    conv1, extra = cnn.resnet.conv1, cnn.conv1_extra
    assert conv1.in_channels == 3 and extra is not None and extra.in_channels == 2
    wide = torch.nn.functional.conv3d(x, torch.cat([conv1.weight, extra.weight], dim=1), stride=2, padding=3)
    torch.testing.assert_close(conv1(x[:, :3]) + extra(x[:, 3:]), wide, rtol=1e-4, atol=1e-5)
    assert CNN3D(cfg, in_channels=3).conv1_extra is None


@pytest.mark.parametrize("training", [False, True])
def test_scoring_from_the_shared_prefix_equals_whole_sequences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, training: bool
) -> None:
    """P(yes), the answer-position states and their gradients are the same whether the prompts' shared
    prefix (the image) is read once and cached or every question is one whole sequence; in training with
    gradient checkpointing the LM keeps no cache and the whole-sequence route is taken."""
    _, lm_dir = save_local_lm(tmp_path)
    lora = ("lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj,v_proj]")
    checkpointing = ("language.gradient_checkpointing=true",) if training else ()
    questions = ["Is there a nodule?", "Is there a pleural effusion?", "Is the heart enlarged?"]
    images = torch.rand(2, 1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    b = len(images)

    def scores(whole: bool) -> tuple[torch.Tensor, ...]:
        model = tiny(f"language.model={lm_dir}", *lora, *checkpointing).train(training)
        with monkeypatch.context() as mp:
            if whole:
                mp.setattr(vlm_module, "shared_prefix", lambda *_: 0)
            p, h = representation.answer_scores(model, model.encode_image(images), questions)
        (p.sum() + h.square().mean()).backward()
        lora_grad = next(p.grad for n, p in model.language_model.named_parameters() if "lora_A" in n)
        return p, h, model.projector.mlp[0].weight.grad, lora_grad

    cached, whole = scores(False), scores(True)
    assert cached[0].shape == (b, 3) and cached[1].shape == (b, 3, 32)
    for a, w in zip(cached, whole):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-5)
    assert cached[0].std() > 0  # the questions and scans do not all score alike


def test_training_losses_from_the_shared_prefix_equal_whole_sequences(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 2's answer-token losses and their gradients are the same whether each study's image and prompt
    opening go through the LM once (cached, ``image_index`` says whose each sequence is) or once per sequence."""
    questions = ["Is there a nodule?", "Is there a pleural effusion?", "Is the heart enlarged?", "Findings?"]
    answers = ["Yes.", "No.", "No.", "A nodule measuring 12 mm in the right upper lobe. No effusion."]
    images = torch.rand(3, 1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    image_index = torch.tensor([2, 0, 1, 0, 2, 2, 1])  # studies in any order, unequal counts

    def losses(whole: bool) -> tuple[torch.Tensor, ...]:
        model = tiny().train()
        batch = model.tokenize([model.prompt(questions[i % 4]) for i in range(7)], [answers[i % 4] for i in range(7)])
        with monkeypatch.context() as mp:
            if whole:
                mp.setattr(vlm_module, "shared_prefix", lambda *_: 0)
            else:  # the shared prefix is the BOS, the image and "\nQuestion:"
                n = vlm_module.shared_prefix(batch["input_ids"], batch["attention_mask"], batch["labels"])
                assert n > model.num_image_tokens
            loss, rows = model.answer_token_losses(
                batch["input_ids"], batch["attention_mask"], batch["labels"], model.encode_image(images), image_index
            )
        (loss * torch.linspace(0.5, 1.5, len(loss))).sum().backward()
        weights = (model.projector.mlp[0].weight, model.language_model.get_input_embeddings().weight,
                   next(model.vision_encoder.parameters()))
        return loss, rows, *(w.grad for w in weights)

    cached, whole = losses(False), losses(True)
    assert cached[0].shape == whole[0].shape and len(cached[0]) > 7
    torch.testing.assert_close(cached[1], whole[1], rtol=0, atol=0)  # the same tokens, in the same order
    for a, w in zip(cached, whole):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-5)


def test_the_shared_prefix_ends_before_every_answer() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 9, 0], [1, 2, 3, 5, 9, 9], [1, 2, 3, 4, 8, 0]])
    mask = (ids > 0).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 4], labels[1, 4:], labels[2, 4] = 9, 9, 8  # answers start at position 4
    assert vlm_module.shared_prefix(ids, mask, labels) == 3
    labels[:, 3] = ids[:, 3]  # an answer that starts at 3 must be predicted from position 2
    assert vlm_module.shared_prefix(ids, mask, labels) == 2


def test_token_ids_are_the_tokenizers_remembered_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """token_ids gives the tokenizer's ids (no special tokens), asks the tokenizer once per text, hands out copies
    (a caller extending the list does not change the next answer) and forgets everything when full."""
    vlm = tiny()
    texts = ["Is there a pleural effusion?", "Yes.", "No pleural effusion. The heart is enlarged."]
    expected = [vlm.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    calls: list[str] = []
    tokenizer = vlm.tokenizer
    monkeypatch.setattr(vlm, "tokenizer", lambda text, **kw: calls.append(text) or tokenizer(text, **kw))
    assert [vlm.token_ids(t) for t in texts] == expected and calls == texts
    vlm.token_ids(texts[1]).append(-1)
    assert [vlm.token_ids(t) for t in texts] == expected and calls == texts  # remembered, unchanged
    monkeypatch.setattr(vlm_module, "TOKEN_CACHE_SIZE", 3)
    assert vlm.token_ids("Is the heart enlarged?") == tokenizer("Is the heart enlarged?", add_special_tokens=False).input_ids
    assert len(vlm._token_ids) == 1  # full: cleared before the new text
