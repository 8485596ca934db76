"""CTVLM: shapes on a grid of tiny configs, the <image> merge, gradients, LoRA, the local-model route."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_setups import TINY_MODEL

from ctsurv.config import load_config
from ctsurv.errors import ConfigError, CtsurvError
from ctsurv.models.vlm import IGNORE_INDEX, CTVLM, build_vlm, format_prompt

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
