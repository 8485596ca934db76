"""Experiment configuration: frozen dataclasses, YAML in and out, ``key=value`` overrides.

Every run and checkpoint saves its ``config.yaml`` so that the model and data pipeline can
be rebuilt from the folder alone. Unknown keys are errors (with a "did you mean" hint),
never silently ignored: a typo in a config must not quietly train a different model.

Spatial tuples follow the command line and are ordered (Z, Y, X): slice axis first, then
anterior-posterior, then left-right. Arrays inside the package are (X, Y, Z) in RAS, as
MONAI and nibabel index them; :mod:`ctsurv.features.preprocess` does the conversion.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from ctsurv.errors import ConfigError

T = TypeVar("T")


PREPROCESSING_FIELDS = (
    "target_spacing_zyx", "target_shape_zyx", "hu_window", "extra_hu_windows", "blob_sigmas_mm", "blob_windows", "crop",
    "resize_to_shape",
)


@dataclass(frozen=True)
class DataConfig:
    """How to read the cohort table and preprocess its volumes."""

    # cohort table columns
    id_column: str = "id"
    volume_column: str = "volume"
    time_column: str = "time"
    event_column: str = "event"
    findings_column: str = "findings"
    impression_column: str = "impression"
    numeric_columns: tuple[str, ...] = ()
    categorical_columns: tuple[str, ...] = ()
    # spacing of .npy/.npz volumes, which carry none: per-row columns, else this default
    spacing_columns: tuple[str, str, str] = ("spacing_z", "spacing_y", "spacing_x")
    array_spacing_zyx: tuple[float, float, float] | None = None
    # the array of an .npz that holds several (e.g. "scan" beside "mask"); None: the only one, else the first of
    # volume / scan / image / ct / arr_0
    array_key: str | None = None
    # optional column: a region mask per study (tumour, organ; NIfTI, NRRD, MHA, DICOM, DICOM SEG, .npy/.npz), resampled and
    # cropped with its volume. Without the column, an .npz volume holding a mask array (below) brings its own
    mask_column: str = "mask"
    # the array of an .npz that is the mask; None: its only array, else the first of mask / seg / segmentation / label
    mask_key: str | None = None
    # preprocessing (MONAI): orient RAS, resample, HU window -> [0, 1], crop/pad
    target_spacing_zyx: tuple[float, float, float] = (6.0, 5.0, 5.0)
    target_shape_zyx: tuple[int, int, int] = (48, 64, 64)
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    # more input channels, one per window (e.g. mediastinum [-160, 240], bone [-200, 1300]); scratch encoders only
    extra_hu_windows: tuple[tuple[float, float], ...] = ()
    # more input channels, one per Gaussian scale (mm): the blobness of the hu_window image (ITK's Hessian
    # objectness for bright round objects), which sets round nodules apart from tubular vessels; scratch encoders only
    blob_sigmas_mm: tuple[float, ...] = ()
    # the windows whose images get blob channels: 0 is hu_window, 1.. the extra_hu_windows in order (e.g. [0, 2]:
    # lung window for nodules, bone window for calcified plaques); one channel per window and scale, window-major
    blob_windows: tuple[int, ...] = (0,)
    # center: the field centred on the scan; foreground: on the body's bounding box; mask: on the study's mask (a tumour
    # in a whole scan; studies without a mask are centred), at true scale in every case
    crop: Literal["center", "foreground", "mask"] = "center"
    # true: after the crop, resize (trilinear; masks nearest) what is left to target_shape_zyx instead of padding or
    # cropping it: Astra's "foreground box resized to 224 x 224 x 160" (a study's scale then follows its box)
    resize_to_shape: bool = False
    # on-disk cache of preprocessed volumes (one .npy per volume), reused by later runs; None: a temporary folder
    # removed at the end of the command (set it for big cohorts: the volumes are read from there, never stacked)
    cache_dir: str | None = None
    workers: int | None = None  # preprocessing processes; None: min(4, CPU count); 1: in the command's process

    @property
    def hu_windows(self) -> tuple[tuple[float, float], ...]:
        """The window of each input channel: ``hu_window`` first."""
        return (self.hu_window, *self.extra_hu_windows)

    def preprocessing(self) -> dict[str, Any]:
        """The fields that decide what a preprocessed volume holds (``PREPROCESSING_FIELDS``): a model
        trained on them must be fed the same, and the on-disk cache is keyed on them."""
        return {name: getattr(self, name) for name in PREPROCESSING_FIELDS}

    @property
    def n_blob_channels(self) -> int:
        """Blob channels: one per (window in ``blob_windows``, scale in ``blob_sigmas_mm``)."""
        return len(self.blob_windows) * len(self.blob_sigmas_mm)

    @property
    def in_channels(self) -> int:
        """Channels of a preprocessed volume: one per HU window, then the blob channels."""
        return len(self.hu_windows) + self.n_blob_channels

    def __post_init__(self) -> None:
        if len(self.target_shape_zyx) != 3 or min(self.target_shape_zyx) < 1:
            raise ConfigError(f"data.target_shape_zyx must be three positive integers (Z Y X), got {self.target_shape_zyx}")
        if len(self.target_spacing_zyx) != 3 or min(self.target_spacing_zyx) <= 0:
            raise ConfigError(f"data.target_spacing_zyx must be three positive numbers in mm (Z Y X), got {self.target_spacing_zyx}")
        for name, (lo, hi) in [("hu_window", self.hu_window), *(("extra_hu_windows", w) for w in self.extra_hu_windows)]:
            if not lo < hi:
                raise ConfigError(f"data.{name} must be [low, high] with low < high, got {[lo, hi]}")
        if any(not s > 0 for s in self.blob_sigmas_mm):
            raise ConfigError(f"data.blob_sigmas_mm must be positive scales in mm (e.g. [4.0]), got {list(self.blob_sigmas_mm)}")
        n = len(self.hu_windows)
        if not self.blob_windows or len(set(self.blob_windows)) != len(self.blob_windows) or any(
            not 0 <= w < n for w in self.blob_windows
        ):
            raise ConfigError(
                f"data.blob_windows must be distinct window indices from 0 (hu_window) to {n - 1} "
                f"(the extra_hu_windows), got {list(self.blob_windows)}"
            )
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"data.workers must be a positive number of processes (or null for min(4, CPUs)), got {self.workers!r}")
        overlap = set(self.numeric_columns) & set(self.categorical_columns)
        if overlap:
            raise ConfigError(f"columns {sorted(overlap)} are declared both numeric and categorical; pick one")


@dataclass(frozen=True)
class VisionConfig:
    """The 3D vision encoder: a small ViT trained from scratch, or the pretrained I3ResNet-152."""

    encoder: Literal["vit3d", "cnn3d", "i3resnet152"] = "vit3d"
    cnn_widths: tuple[int, int, int, int] = (16, 32, 64, 128)  # cnn3d only: channels of its four stages
    # vit3d only (the I3ResNet-152 architecture is fixed by its weights)
    patch_size_zyx: tuple[int, int, int] = (8, 8, 8)
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.encoder == "vit3d" and self.dim % self.heads:
            raise ConfigError(f"vision.dim ({self.dim}) must be divisible by vision.heads ({self.heads})")


@dataclass(frozen=True)
class ProjectorConfig:
    """Visual feature grid -> N tokens in the language model's embedding space (LLaVA-1.5's MLP)."""

    tokens_zyx: tuple[int, int, int] = (2, 4, 4)  # adaptive average pooling of the feature grid; N = product
    layers: int = 2  # 1 = linear, 2 = Linear-GELU-Linear
    # one more token: the grid's channel-wise maximum over all cells (what stage 0's presence head reads)
    max_token: bool = False
    # one more token: the presence findings as a linear classifier reads them in the pooled grid, fitted
    # on the training studies' report labels before stage 1 (needs the vision encoder frozen in stages 1-2)
    findings_token: bool = False
    # the findings classifier may also read where tissue lies: this input channel (e.g. 1, the mediastinal window)
    # averaged to 16 x 16 x 12 cells of the central field; a finding keeps the cells only where they lower its
    # log-loss on the validation studies by more than one standard error (lymph nodes; ctsurv.training.findings).
    # None: pooled features only
    findings_cells_channel: int | None = None

    def __post_init__(self) -> None:
        if self.findings_cells_channel is not None and not self.findings_token:
            raise ConfigError(
                "projector.findings_cells_channel feeds the findings token's classifier; set projector.findings_token=true "
                "or projector.findings_cells_channel=null"
            )

    @property
    def num_tokens(self) -> int:
        z, y, x = self.tokens_zyx
        return z * y * x + int(self.max_token) + int(self.findings_token)


@dataclass(frozen=True)
class LanguageConfig:
    """The causal language model: a tiny LLaMA built from this config, a packaged pretrained one, or a local model."""

    model: str = "tiny"  # "tiny", "smollm2-135m" (pip extra smol), a local Hugging Face folder or .gguf file
    # tiny model and its BPE tokenizer (trained on the pretraining reports)
    vocab_size: int = 2000
    hidden_size: int = 128
    intermediate_size: int = 344
    layers: int = 2
    heads: int = 4
    max_length: int = 384
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA adapters (PEFT) on the language model; used for pretrained models in the instruct stage."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainConfig:
    """One training stage's optimisation (Accelerate handles devices, precision and processes)."""

    epochs: int = 10
    batch_size: int = 8  # per process; global batch = batch_size × processes × grad_accum
    grad_accum: int = 1
    lr: float = 1e-3
    projector_lr: float | None = None  # the projector's own lr (LLaVA's mm_projector_lr); null: lr
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05  # of all optimiser steps; then cosine decay to zero
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"  # auto: bf16 where the hardware has it
    log_every: int = 10  # batches between lines of <run>/log.jsonl

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError(
                "train.batch_size and train.grad_accum must be at least 1 and train.epochs at least 0 (0 skips the stage)"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.lr <= 0 or (self.projector_lr is not None and self.projector_lr <= 0):
            raise ConfigError(f"train.lr and train.projector_lr must be positive (projector_lr may be null), "
                              f"got {self.lr} and {self.projector_lr}")


@dataclass(frozen=True)
class PretrainConfig:
    """Stages 0 (vision: a scratch encoder learns the findings named in the reports), 1 (align:
    captioning with the report) and 2 (instruct: predefined questions + report)."""

    # patients held out of training, each part at least one: validation (what the run chooses, e.g. where the
    # findings head reads the cells) and test (scored in instruct/eval.json, chosen on by nothing)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # stage 0, for a vision encoder trained from scratch: it learns the report-derived presence labels
    # (no language model) and is then frozen like a pretrained encoder; 0 epochs skips it
    vision: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=12, batch_size=8, lr=1e-3))
    # stage 0 jitters each training volume (small random rotation, scaling, shift) against learning it by heart
    vision_augment: bool = False
    align: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, batch_size=8, lr=1e-3))
    instruct: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=12, batch_size=8, lr=1e-3))
    finetune_vision: bool = False  # also train a pretrained (or stage-0-trained) vision encoder in stage 2
    loss_weighting: Literal["sequence", "token"] = "sequence"  # see training.stages.InstructionLoss
    # stage 2 with a chat LM: a study's questions as the turns of one conversation (image read once per study)
    pack_questions: bool = False
    finding_loss_weight: float = 1.0  # auxiliary presence loss on a vision encoder that trains in stage 2 (0 = off)
    max_new_tokens: int = 160  # for generating impressions/reports at evaluation

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.9:
                raise ConfigError(f"pretrain.{name} must be in (0, 0.9), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                f"pretrain.val_fraction + pretrain.test_fraction must be below 0.9 to leave patients to train on, "
                f"got {self.val_fraction} + {self.test_fraction}; lower one of them"
            )
        if self.instruct.epochs < 1:
            raise ConfigError("pretrain.instruct.epochs must be at least 1: stage 2 teaches the model to answer")


@dataclass(frozen=True)
class SurvivalConfig:
    """Stage 3: the survival head on the pretrained model's reading of a scan, fused with clinical data."""

    head: Literal["linear", "mlp"] = "linear"
    hidden_components: int = 8  # principal components of the answer-position hidden states kept (0 = P(yes) only)
    epochs: int = 500  # full-batch epochs of the head per fold
    lr: float = 0.05
    l2: float = 0.05  # ridge penalty on the head's weights (l2/2 · Σw²), against overfitting ~30 image features
    # choose every method's ridge penalty, and the number of principal components its image features keep, by
    # inner cross-validation on each training fold (slower: ~45 head fits per fold and method; for small cohorts);
    # false: survival.l2 and the whole budget for the heads, lifelines' 0.01 for clinical_cox, l2 for radiomics_cox
    nested: bool = False
    bootstrap: int = 1000  # resamples for confidence intervals and paired comparisons
    horizon_quantile: float = 0.5  # Uno's C horizon and calibration time: this quantile of the event times
    # what of the CT-VLM stage 3 tunes per training fold before reading the answers (the encoder stays frozen):
    # "none" (the default: features of the frozen model), "projector", or "projector+lora" (LoRA models)
    # or, for a bare pretrained encoder (--encoder i3resnet152), "last_block": its last residual block tuned per fold
    # (the encoder_finetuned rung; training/encoder_finetune.py)
    finetune: Literal["none", "projector", "projector+lora", "last_block"] = "none"
    finetune_epochs: int = 2
    finetune_lr: float = 1e-4
    finetune_batch_size: int = 32
    # the share of a training fold's patients held out to stop fine-tuning early (the weights of the epoch with the
    # lowest validation Cox loss are kept, the untuned ones included); 0: tune on all of it for finetune_epochs
    finetune_validation: float = 0.2
    answer_loss_weight: float = 1.0  # joint LM loss: the yes/no answers the frozen model gave, so it keeps answering

    def __post_init__(self) -> None:
        if not 0 < self.horizon_quantile < 1:
            raise ConfigError(f"survival.horizon_quantile must be in (0, 1), got {self.horizon_quantile}")
        if self.finetune_epochs < 1 or self.finetune_batch_size < 2 or self.finetune_lr <= 0 or self.answer_loss_weight < 0:
            raise ConfigError(
                "survival.finetune_epochs must be >= 1, finetune_batch_size >= 2 (a Cox loss compares patients), "
                "finetune_lr > 0 and answer_loss_weight >= 0"
            )
        if not 0 <= self.finetune_validation < 0.5:
            raise ConfigError(f"survival.finetune_validation must be in [0, 0.5), got {self.finetune_validation}")
        if self.bootstrap < 100:
            raise ConfigError(f"survival.bootstrap must be at least 100 resamples, got {self.bootstrap}")


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment. Later stages add their sections here."""

    name: str = "ctsurv"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    survival: SurvivalConfig = field(default_factory=SurvivalConfig)

    def __post_init__(self) -> None:
        if self.lora.enabled and self.language.model == "tiny":
            raise ConfigError(
                "lora.enabled is for pretrained language models; the tiny model starts from random weights "
                "and trains fully. Set lora.enabled=false or language.model=<path of a local HF model>"
            )
        channel = self.projector.findings_cells_channel
        if channel is not None and not 0 <= channel < self.data.in_channels:
            raise ConfigError(
                f"projector.findings_cells_channel must be an input channel from 0 to {self.data.in_channels - 1} "
                f"(one per HU window: data.hu_window, then data.extra_hu_windows; then the blob channels), got {channel}"
            )
        extra = [k for k in ("extra_hu_windows", "blob_sigmas_mm") if getattr(self.data, k)]
        if extra and self.vision.encoder == "i3resnet152":
            raise ConfigError(
                f"data.{' and data.'.join(extra)} add input channels, but the pretrained i3resnet152 reads one window; "
                f"set {' and '.join(f'data.{k}=[]' for k in extra)} or use a scratch encoder (cnn3d, vit3d)"
            )


# --------------------------------------------------------------------------- YAML in/out


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2 floats (``1e-4``, ``1E5``, ``-.5``, ``1.0e30``) as numbers.

    PyYAML resolves plain scalars by YAML 1.1, whose floats need a dot and a signed exponent, so ``1e-4``
    would be the string "1e-4". The resolver is tried after PyYAML's own: every scalar they resolve keeps its type.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str, where: str) -> Any:
    """``text`` parsed by :class:`_Loader`; a syntax error is one ConfigError line, ``WHERE line N, column M: PROBLEM``."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: plain data only
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        place = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
        problem = " ".join(str(e.problem or e.context).split())
        raise ConfigError(f"{where}{place}: {problem}{context}; it is not valid YAML") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: {' '.join(str(e).split())}; it is not valid YAML") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (tuples as lists) that ``yaml.safe_dump`` can write."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def config_differences(a: ExperimentConfig, b: ExperimentConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (value in ``a``, value in ``b``)} for every setting where the two configs differ."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically (a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides.

    Overrides use dotted keys and YAML values: ``data.target_shape_zyx=[32,48,48]``, ``seed=3``.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file (see configs/)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text; pass a YAML file") from None
        raw = _parse_yaml(text, f"config file {path}") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. data.target_shape_zyx=[32,48,48])")
        parsed = _parse_yaml(value, f"override {item!r}")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = parsed
    return from_dict(ExperimentConfig, raw, where="config")


def from_dict(cls: type[T], raw: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``raw``, checking keys and coercing lists to tuples.

    A section given in part keeps the field's own defaults for the rest: ``pretrain.instruct.lr=0.002`` leaves
    ``pretrain.instruct.epochs`` at PretrainConfig's 12, not at TrainConfig's class default.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key {where}.{key}{hint}")
        field_default = fields[key].default_factory
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and field_default is not dataclasses.MISSING:
            value = {**to_dict(field_default()), **value}
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            hint = ""
            if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on unquoted as booleans
                hint = f" (YAML reads an unquoted no/yes/off/on as a boolean: quote it, e.g. {where.split('.', 1)[-1]}=\"'no'\")"
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}{hint}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries, got {len(value)}: {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value
