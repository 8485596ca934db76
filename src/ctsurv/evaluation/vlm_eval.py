"""Evaluation of the pretrained CTVLM on held-out studies, written next to the checkpoint.

The references are the answers built from each held-out study's own report by
:func:`ctsurv.text.answers.answers_from_report` (what a user with CT + reports has). The
model's generated answers are parsed back with ``parse_answer`` and scored:

* presence questions: per finding the studies scored (``n``: every report answers every presence question,
  a silent one "No."), its ``positives``, accuracy / precision / recall / specificity / F1 of the generated
  answers, and the ROC AUC of the model's P(yes) (the likelihood of "Yes." against "No.", what the survival
  head reads; defined where the studies hold both answers); and their macro mean over the findings with at
  least one positive (``labels_in_macro``). A finding no scored report has
  would count with accuracy = specificity and F1 = 0 whatever the model says: it is listed, not averaged;
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
from sklearn.metrics import roc_auc_score

from ctsurv.evaluation.text_metrics import per_label_scores, text_report
from ctsurv.models.representation import answer_features
from ctsurv.models.vlm import CTVLM
from ctsurv.outputs import staged_file
from ctsurv.text.answers import answers_from_report, parse_answer
from ctsurv.text.questions import QUESTIONS, Question

SHORT_ANSWER_TOKENS = 16  # enough for "Right upper lobe and left lower lobe." and sizes; impressions get more


@torch.no_grad()
def answer_questions(
    vlm: CTVLM, inputs: torch.Tensor, kind: str, questions: list[str], max_new_tokens: int, batch_size: int = 32,
    cells: torch.Tensor | None = None,
) -> list[list[str]]:
    """Generated answers ``[study][question]`` for every input (volumes or cached encoder features; with
    features, ``cells`` are the volumes' cells for a findings head that reads them, ``projector.cells``).

    ``inputs`` are read ``batch_size`` rows at a time (``inputs[a:b]``), so a lazy ``VolumeStore`` streams here."""
    answers: list[list[str]] = [[] for _ in range(len(inputs))]
    for start in range(0, len(inputs), batch_size):
        tokens = _visual_tokens(vlm, inputs, kind, cells, slice(start, start + batch_size))
        for q in questions:
            out = vlm.generate(tokens, [q] * len(tokens), max_new_tokens=max_new_tokens)
            for i, a in enumerate(out):
                answers[start + i].append(a)
    return answers


@torch.no_grad()
def presence_probabilities(
    vlm: CTVLM, inputs: torch.Tensor, kind: str, questions: list[Question], batch_size: int = 8,
    cells: torch.Tensor | None = None,
) -> pd.DataFrame:
    """The model's P(yes) (studies × findings) for the presence ``questions``, one column per ``q.label``."""
    p_yes = np.empty((len(inputs), len(questions)), dtype=np.float32)  # filled in place (see features.RowBuffer)
    for start in range(0, len(inputs), batch_size):
        tokens = _visual_tokens(vlm, inputs, kind, cells, slice(start, start + batch_size))
        p_yes[start : start + batch_size] = answer_features(vlm, tokens, [q.text for q in questions])[0].cpu().numpy()
    return pd.DataFrame(p_yes, columns=[q.label for q in questions])


def _visual_tokens(vlm: CTVLM, inputs: torch.Tensor, kind: str, cells: torch.Tensor | None, rows: slice) -> torch.Tensor:
    """Visual tokens (b, N, D) of ``inputs[rows]``: volumes, or cached encoder features (with their ``cells``)."""
    device = next(vlm.parameters()).device  # where training left the model (a GPU under Accelerate)
    chunk = inputs[rows].to(device).float()
    if kind == "features":
        return vlm.project_features(chunk, cells=None if cells is None else cells[rows].to(device))
    return vlm.encode_image(chunk)


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
    table = presence_table(truth, pred, presence_probabilities(vlm, inputs, kind, presence, cells=cells))
    metrics["presence"] = json.loads(table.drop(columns="in_macro").to_json(orient="index"))
    metrics["presence"]["macro"]["labels_in_macro"] = table.index[table["in_macro"]].tolist()
    metrics["other"] = {q.key: _score_other(q, [r[q.key] for r in refs], generated[q.key]) for q in short if q.kind != "presence"}
    for q in long_questions:
        metrics[q.kind] = text_report(generated[q.key], [r[q.key] for r in refs])
    metrics["examples"] = [  # the written report, and the model's answers (its report under "report")
        {"reference_report": refs[i].get(long_questions[-1].key, ""), **{q.key: generated[q.key][i] for q in QUESTIONS}}
        for i in range(min(3, len(refs)))
    ]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in (("eval.json", json.dumps(metrics, indent=2)), ("eval.md", _markdown(metrics, table))):
            with staged_file(out_dir / name) as tmp:  # `pretrain --resume` of a finished run rewrites them in place
                tmp.write_text(text)
    return metrics


def presence_table(truth: pd.DataFrame, predicted: pd.DataFrame, p_yes: pd.DataFrame | None = None) -> pd.DataFrame:
    """``per_label_scores`` of the 0/1 answers (one column per finding), ``support`` named ``positives``, and
    the ``macro`` row the mean over the findings with at least one positive (``in_macro``; NaN if none has one).
    With ``p_yes`` (the model's P(yes), same columns and rows), an ``auc`` column: the ROC AUC where a finding
    has both positive and negative studies, else NaN (the macro mean skips those).
    """
    table = per_label_scores(truth, predicted).rename(columns={"support": "positives"})
    labels = table.index[:-1]
    table["in_macro"] = False
    table.loc[labels, "in_macro"] = table.loc[labels, "positives"] > 0
    ratios = ["accuracy", "precision", "recall", "specificity", "f1"]
    if p_yes is not None:
        table["auc"] = np.nan
        for label in labels:
            if 0 < truth[label].sum() < len(truth):
                table.loc[label, "auc"] = roc_auc_score(truth[label].to_numpy(), p_yes[label].to_numpy())
        ratios.append("auc")
    scored = table.loc[labels][table.loc[labels, "in_macro"]]
    table.loc["macro", ratios] = scored[ratios].mean() if len(scored) else None
    return table


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
    columns = [c for c in ("accuracy", "precision", "recall", "f1", "auc") if c in table]
    lines += ["| finding | n | positives | accuracy | precision | recall | F1 |" + (" AUC of P(yes) |" if "auc" in table else ""),
              "|---|---|---|---|---|---|---|" + ("---|" if "auc" in table else "")]
    for label, row in table.iterrows():
        scores = " | ".join("–" if pd.isna(row[c]) else f"{row[c]:.3f}" for c in columns)
        lines.append(f"| {label} | {int(row['n'])} | {int(row['positives'])} | {scores} |")
    used = table.index[table["in_macro"]].tolist()
    left = [label for label in table.index[:-1] if label not in used]
    lines += ["", f"The macro row is the mean over the {len(used)} findings with at least one positive report among these "
              "studies." + (f" Left out, as no report here has them (their accuracy is only the share of \"No.\" answers, "
                            f"their F1 0 whatever the model says): {', '.join(left)}." if left else "")]
    lines += ["", "## Impression and report", "", "| text | BLEU-4 | ROUGE-L | embedding similarity |", "|---|---|---|---|"]
    for kind in ("impression", "report"):
        if kind in metrics:
            m = metrics[kind]
            lines.append(f"| {kind} | {m['bleu_4']:.3f} | {m['rouge_l']:.3f} | {m['embedding_similarity']:.3f} |")
    return "\n".join(lines) + "\n"

