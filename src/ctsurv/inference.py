"""Using a trained model on new scans (`ctsurv ask`): its answers to the predefined questions (or free ones)
and its probability of "Yes" for every finding, for one volume or every study of a cohort table.

The model is loaded once; each study's volume is preprocessed and encoded once, and its short answers are
generated together. ``--json`` prints :meth:`StudyAnswers.to_dict` for every study: a list of
``{"id": ..., "answers": {question: answer}, "p_yes": {finding: probability}}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ctsurv.config import ExperimentConfig, load_config
from ctsurv.errors import CtsurvError
from ctsurv.evaluation.vlm_eval import SHORT_ANSWER_TOKENS
from ctsurv.features import Preprocessor
from ctsurv.io.cohort import TABLE_SUFFIXES, load_cohort
from ctsurv.models.representation import answer_features
from ctsurv.text.questions import PRESENCE_LABELS, PRESENCE_QUESTIONS, QUESTIONS
from ctsurv.training.checkpoint import load_checkpoint, refuse_untrained_language

LONG_ANSWERS = frozenset(q.text for q in QUESTIONS if q.kind in ("impression", "report"))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a `ctsurv pretrain` run folder (its ``instruct`` checkpoint)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if (path / "instruct" / "model.safetensors").is_file():
        return path / "instruct"
    raise CtsurvError(f"{path} is neither a checkpoint nor a `ctsurv pretrain` output folder (no model.safetensors)")


@dataclass(frozen=True)
class Study:
    id: str
    volume: Path
    spacing_zyx: tuple[float, float, float] | None


@dataclass(frozen=True)
class StudyAnswers:
    """One study's answers (question text -> generated answer) and P(yes) per presence finding."""

    id: str
    answers: dict[str, str]
    p_yes: dict[str, float]

    def to_dict(self) -> dict:
        return {"id": self.id, "answers": self.answers, "p_yes": self.p_yes}


def studies(target: str | Path, cfg: ExperimentConfig, spacing_zyx: tuple[float, float, float] | None = None) -> list[Study]:
    """The studies of a cohort table (its id and volume columns; clinical and outcome columns are not needed),
    or the one volume ``target`` names (its id: the file name without extensions)."""
    target = Path(target)
    if target.suffix.lower() in TABLE_SUFFIXES:
        data = dataclasses.replace(cfg.data, numeric_columns=(), categorical_columns=())
        cohort = load_cohort(target, data)
        return [Study(sid, path, cohort.spacing_zyx(i)) for i, (sid, path) in enumerate(zip(cohort.ids, cohort.volume_paths))]
    if not target.exists():
        raise CtsurvError(f"{target} does not exist; pass a volume file, a DICOM folder or a cohort table (.csv/.tsv/.parquet)")
    return [Study(target.name.split(".")[0], target, spacing_zyx)]


@torch.no_grad()
def ask(
    checkpoint: str | Path,
    target: str | Path,
    questions: list[str] | None = None,
    spacing_zyx: tuple[float, float, float] | None = None,
    max_new_tokens: int | None = None,
) -> Iterator[StudyAnswers]:
    """Answers for every study of ``target`` (a volume or a cohort table), the model loaded once.

    The predefined questions unless ``questions`` are given. ``max_new_tokens`` caps the impression, the
    report and free questions (default: the checkpoint's ``pretrain.max_new_tokens``, the limit its evaluation
    used); predefined short answers get ``SHORT_ANSWER_TOKENS``, as in the held-out evaluation. A stage-0
    (vision) checkpoint, whose language model never trained, is refused. The table is checked before the model
    is loaded.
    """
    path = resolve_checkpoint(checkpoint)
    refuse_untrained_language(path)
    items = studies(target, load_config(path / "config.yaml"), spacing_zyx)
    model, cfg = load_checkpoint(path)
    budget = cfg.pretrain.max_new_tokens if max_new_tokens is None else max_new_tokens
    texts = questions or [q.text for q in QUESTIONS]
    short = [] if questions else [t for t in texts if t not in LONG_ANSWERS]  # free questions get the long budget
    preprocessor = Preprocessor(cfg.data)
    for study in items:
        image = preprocessor.load(study.volume, spacing_zyx=study.spacing_zyx).unsqueeze(0)  # (1, C, X, Y, Z)
        tokens = model.encode_image(image)  # (1, N, D)
        answers = {}
        if short:
            generated = model.generate(tokens.expand(len(short), -1, -1), short, max_new_tokens=SHORT_ANSWER_TOKENS)
            answers = dict(zip(short, generated))
        for text in texts:
            if text not in answers:
                answers[text] = model.generate(tokens, [text], max_new_tokens=budget)[0]
        p_yes, _ = answer_features(model, tokens, PRESENCE_QUESTIONS)
        yield StudyAnswers(
            study.id, {t: answers[t] for t in texts}, {label: float(p) for label, p in zip(PRESENCE_LABELS, p_yes[0])}
        )


def answer_volume(
    checkpoint: str | Path,
    volume: str | Path,
    questions: list[str] | None = None,
    spacing_zyx: tuple[float, float, float] | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, str]:
    """``{question: answer}`` for one volume (see :func:`ask`)."""
    (study,) = ask(checkpoint, volume, questions, spacing_zyx, max_new_tokens)
    return study.answers
