"""Evaluation of the pretrained CTVLM on held-out studies, written next to the checkpoint.

The references are the answers built from each held-out study's own report by
:func:`ctsurv.data.instructions.answers_from_report` (what a user with CT + reports has). The
model's generated answers are parsed back with ``parse_answer`` and scored:

* presence questions: accuracy / precision / recall / F1 per finding, and the macro mean;
* size questions: mean absolute error in mm where both the model and the report give a size;
* location / side / grade questions: exact-match accuracy where the report states one;
* impression and full report: BLEU, ROUGE-L and an offline sentence-embedding similarity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import track

from ctsurv.data.instructions import QUESTIONS, Question, answers_from_report, parse_answer
from ctsurv.evaluation.text_metrics import per_label_scores, text_report
from ctsurv.models.vlm import CTVLM

SHORT_ANSWER_TOKENS = 16  # enough for "Right upper lobe and left lower lobe." and sizes; impressions get more


@torch.no_grad()
def answer_questions(
    vlm: CTVLM, inputs: torch.Tensor, kind: str, questions: list[str], max_new_tokens: int, batch_size: int = 32,
    cells: torch.Tensor | None = None,
) -> list[list[str]]:
    """Generated answers ``[study][question]`` for every input (volumes or cached encoder features; with
    features, ``cells`` are the volumes' cells for a findings head that reads them, ``projector.cells``)."""
    answers: list[list[str]] = [[] for _ in range(len(inputs))]
    device = next(vlm.parameters()).device  # where training left the model (a GPU under Accelerate)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size].to(device).float()
        if kind == "features":
            part = None if cells is None else cells[start : start + batch_size].to(device)
            tokens = vlm.project_features(chunk, cells=part)
        else:
            tokens = vlm.encode_image(chunk)  # (b, N, D)
        for q in questions:
            out = vlm.generate(tokens, [q] * len(chunk), max_new_tokens=max_new_tokens)
            for i, a in enumerate(out):
                answers[start + i].append(a)
    return answers


def evaluate_vlm(
    vlm: CTVLM,
    inputs: torch.Tensor,
    kind: str,
    findings: list[str],
    impressions: list[str],
    max_new_tokens: int,
    out_dir: Path | None = None,
    progress: bool = True,
    cells: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Score the model's answers on held-out studies; write ``eval.json`` and ``eval.md`` to ``out_dir``.

    ``inputs`` are volumes (``kind="images"``) or cached encoder features (``"features"``, with the volumes'
    ``cells`` for a findings head that reads them)."""
    refs = [answers_from_report(f, i or None) for f, i in zip(findings, impressions)]
    short = [q for q in QUESTIONS if q.kind not in ("impression", "report")]
    generated: dict[str, list[str]] = {}
    for q in track(short, description="answering held-out questions", disable=not progress):
        generated[q.key] = [a[0] for a in answer_questions(vlm, inputs, kind, [q.text], max_new_tokens=SHORT_ANSWER_TOKENS, cells=cells)]
    long_questions = [q for q in QUESTIONS if q.kind in ("impression", "report")]
    for q in long_questions:
        generated[q.key] = [a[0] for a in answer_questions(vlm, inputs, kind, [q.text], max_new_tokens, cells=cells)]

    metrics: dict[str, Any] = {"n_studies": len(refs)}
    presence = [q for q in short if q.kind == "presence"]
    truth = pd.DataFrame({q.label: [_as_bool(parse_answer(q, r[q.key])) for r in refs] for q in presence})
    pred = pd.DataFrame({q.label: [_as_bool(parse_answer(q, a)) for a in generated[q.key]] for q in presence})
    table = per_label_scores(truth, pred)
    metrics["presence"] = json.loads(table.to_json(orient="index"))
    metrics["other"] = {q.key: _score_other(q, [r[q.key] for r in refs], generated[q.key]) for q in short if q.kind != "presence"}
    for q in long_questions:
        metrics[q.kind] = text_report(generated[q.key], [r[q.key] for r in refs])
    metrics["examples"] = [
        {"report": refs[i].get(long_questions[-1].key, ""), **{q.key: generated[q.key][i] for q in QUESTIONS}}
        for i in range(min(3, len(refs)))
    ]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
        (out_dir / "eval.md").write_text(_markdown(metrics, table))
    return metrics


def _as_bool(value: object) -> int:
    return int(bool(value))


def _score_other(q: Question, refs: list[str], generated: list[str]) -> dict[str, float | int | None]:
    """Size: MAE (mm) where both give a number; location/side/grade: exact match where the report states one."""
    pairs = [(parse_answer(q, r), parse_answer(q, g)) for r, g in zip(refs, generated)]
    stated = [(r, g) for r, g in pairs if r not in (None, frozenset(), "")]
    if q.kind == "size":
        both = [(r, g) for r, g in stated if isinstance(g, (int, float))]
        mae = float(np.mean([abs(r - g) for r, g in both])) if both else None
        return {"n_stated": len(stated), "n_answered": len(both), "mae_mm": mae}
    correct = sum(r == g for r, g in stated)
    return {"n_stated": len(stated), "accuracy": correct / len(stated) if stated else None}


def _markdown(metrics: dict[str, Any], table: pd.DataFrame) -> str:
    lines = [f"# Held-out evaluation ({metrics['n_studies']} studies)", "", "## Presence of findings", ""]
    lines += ["| finding | accuracy | precision | recall | F1 | positives |", "|---|---|---|---|---|---|"]
    for label, row in table.iterrows():
        lines.append(
            f"| {label} | {row['accuracy']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} "
            f"| {int(row['support'])} |"
        )
    lines += ["", "## Impression and report", "", "| text | BLEU-4 | ROUGE-L | embedding similarity |", "|---|---|---|---|"]
    for kind in ("impression", "report"):
        if kind in metrics:
            m = metrics[kind]
            lines.append(f"| {kind} | {m['bleu_4']:.3f} | {m['rouge_l']:.3f} | {m['embedding_similarity']:.3f} |")
    return "\n".join(lines) + "\n"

