"""Using a trained model on new scans: answers to the predefined questions for one volume."""

from __future__ import annotations

from pathlib import Path

import torch

from ctsurv.errors import CtsurvError
from ctsurv.evaluation.vlm_eval import SHORT_ANSWER_TOKENS
from ctsurv.features import Preprocessor
from ctsurv.text.questions import QUESTIONS
from ctsurv.training.checkpoint import load_checkpoint, refuse_untrained_language


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a `ctsurv pretrain` run folder (its ``instruct`` checkpoint)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if (path / "instruct" / "model.safetensors").is_file():
        return path / "instruct"
    raise CtsurvError(f"{path} is neither a checkpoint nor a `ctsurv pretrain` output folder (no model.safetensors)")


@torch.no_grad()
def answer_volume(
    checkpoint: str | Path,
    volume: str | Path,
    questions: list[str] | None = None,
    spacing_zyx: tuple[float, float, float] | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, str]:
    """``{question: answer}`` for one volume; the predefined questions unless ``questions`` are given.

    ``max_new_tokens`` caps the impression, the report and free questions (default: the checkpoint's
    ``pretrain.max_new_tokens``, the limit its evaluation used); predefined short answers get
    ``SHORT_ANSWER_TOKENS``, as in the held-out evaluation. A stage-0 (vision) checkpoint, whose language
    model never trained, is refused.
    """
    path = resolve_checkpoint(checkpoint)
    refuse_untrained_language(path)
    model, cfg = load_checkpoint(path)
    if max_new_tokens is None:
        max_new_tokens = cfg.pretrain.max_new_tokens
    image = Preprocessor(cfg.data).load(volume, spacing_zyx=spacing_zyx).unsqueeze(0)  # (1, C, X, Y, Z)
    tokens = model.encode_image(image)  # (1, N, D)
    texts = questions or [q.text for q in QUESTIONS]
    long = {q.text for q in QUESTIONS if q.kind in ("impression", "report")}
    answers = {}
    for text in texts:  # free questions and the impression/report get the long budget
        budget = max_new_tokens if (questions or text in long) else SHORT_ANSWER_TOKENS
        answers[text] = model.generate(tokens, [text], max_new_tokens=budget)[0]
    return answers
