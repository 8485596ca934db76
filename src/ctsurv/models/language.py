"""The causal language model and its tokenizer, and LoRA adapters on it (PEFT).

Two sources, chosen by ``LanguageConfig.model``:

* ``"tiny"``: a small LLaMA-architecture decoder built from the config, with a byte-level BPE
  tokenizer trained on the pretraining reports. Runs offline on a laptop CPU.
* a path: any local Hugging Face causal-LM folder (Mistral-7B, Llama-2/3, Qwen, ...), loaded with
  ``local_files_only=True``. Nothing is ever fetched from a model hub.

Both get the special ``<image>`` token, the placeholder that :class:`ctsurv.models.vlm.CTVLM`
replaces with visual tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from ctsurv.config import LanguageConfig, LoRAConfig
from ctsurv.errors import ConfigError, CtsurvError

IMAGE_TOKEN = "<image>"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style: no unknown tokens) trained on ``texts``."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD, additional_special_tokens=[IMAGE_TOKEN]
    )


def build_tiny_lm(cfg: LanguageConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised LLaMA-architecture decoder sized by ``cfg``."""
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(llama)


def load_local_lm(cfg: LanguageConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A causal LM and its tokenizer from a local folder saved with ``save_pretrained``."""
    path = Path(cfg.model).expanduser()
    if not (path / "config.json").is_file():
        raise CtsurvError(
            f"language.model {cfg.model!r} is not a local Hugging Face model folder (no config.json there). "
            "Give the path of a causal LM saved with save_pretrained (e.g. a local Mistral-7B copy), "
            "or language.model=tiny; ctsurv never downloads models from a hub."
        )
    dtype = getattr(torch, cfg.dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def build_language_model(
    cfg: LanguageConfig, texts: Iterable[str] | None = None, tokenizer: PreTrainedTokenizerFast | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The LM named by ``cfg.model`` and its tokenizer.

    For ``"tiny"`` the tokenizer is ``tokenizer`` when given (a checkpoint's), else trained on ``texts``.
    """
    if cfg.model == "tiny":
        if tokenizer is None:
            if texts is None:
                raise ValueError("the tiny language model needs report texts to train its tokenizer")
            tokenizer = train_tokenizer(texts, cfg.vocab_size)
        model = build_tiny_lm(cfg, tokenizer)
    else:
        model, loaded = load_local_lm(cfg)
        tokenizer = tokenizer or loaded
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer


def apply_lora(model: PreTrainedModel, cfg: LoRAConfig) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; only the adapters are trainable afterwards."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in present]
    if missing:
        raise ConfigError(
            f"lora.target_modules {missing} are not modules of this language model; "
            f"linear layers it has include {sorted(n for n in present if n.endswith('proj'))}"
        )
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules), bias="none"
    )
    return get_peft_model(model, peft_cfg)
