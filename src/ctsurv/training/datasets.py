"""Torch datasets for pretraining: one item per study, holding its volume (or cached encoder
features) and its (prompt, answer) pairs.

Stage 0 (vision) pairs each volume with the presence answers only (``finding_collate``); stage 1
(align) pairs each volume with its report; stage 2 (instruct) with the answers to the
predefined questions (built from the report text by :mod:`ctsurv.text.answers`), the
impression and the report. Batching by study lets the loss encode each volume once per batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from ctsurv.features import Volumes
from ctsurv.models.vlm import CTVLM
from ctsurv.text.questions import PRESENCE_QUESTIONS, REPORT_QUESTION

Pairs = list[tuple[str, str]]  # (question, answer)


def presence_labels(pairs: Pairs) -> list[int]:
    """1/0 per presence question from a study's answers ("Yes."/"No."), -1 where it was not asked."""
    answers = dict(pairs)
    return [{"Yes.": 1, "No.": 0}.get(answers.get(q, ""), -1) for q in PRESENCE_QUESTIONS]


def align_pairs(findings: str, impression: str | None) -> Pairs:
    """Stage 1: caption the volume with its report."""
    report = "\n".join(part for part in (findings, f"Impression: {impression}" if impression else "") if part)
    return [(REPORT_QUESTION, report)]


class StudyDataset(Dataset):
    """``inputs[i]`` (a preprocessed volume (C, X, Y, Z) or encoder features (Dv, gx, gy, gz)) and its pairs;
    with ``finding_logits`` (n, P) also study i's findings-token logits (out-of-fold, see training.findings).

    Volumes may come from a :class:`~ctsurv.features.VolumeStore`: each item is then read from disk when the
    DataLoader asks for it, so an epoch holds one batch of volumes at a time."""

    def __init__(self, inputs: Volumes, pairs: list[Pairs], kind: str, finding_logits: torch.Tensor | None = None) -> None:
        if len(inputs) != len(pairs):
            raise ValueError(f"{len(inputs)} inputs but {len(pairs)} lists of pairs")
        if kind not in ("images", "features"):
            raise ValueError(f"kind must be 'images' or 'features', got {kind!r}")
        if finding_logits is not None and len(finding_logits) != len(pairs):
            raise ValueError(f"{len(finding_logits)} rows of finding logits but {len(pairs)} studies")
        self.inputs, self.pairs, self.kind, self.finding_logits = inputs, pairs, kind, finding_logits

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Pairs] | tuple[torch.Tensor, Pairs, torch.Tensor]:
        if self.finding_logits is None:
            return self.inputs[i], self.pairs[i]
        return self.inputs[i], self.pairs[i], self.finding_logits[i]


def finding_collate(rows: list[tuple[torch.Tensor, Pairs]]) -> dict[str, torch.Tensor]:
    """Stage 0's batch: stacked volumes and their presence labels (no text)."""
    return {
        "images": torch.stack([r[0] for r in rows]).float(),
        "finding_labels": torch.tensor([presence_labels(pairs) for _, pairs in rows], dtype=torch.long),
    }


def study_collate(
    vlm: CTVLM, kind: str, packed: bool = False
) -> Callable[[list[tuple[torch.Tensor, Pairs]]], dict[str, torch.Tensor]]:
    """Collate studies into one batch: stacked inputs, all their sequences, and ``image_index``; with ``packed``
    one conversation per study (``CTVLM.tokenize_conversations``) in place of one sequence per pair, its questions
    in a random order (torch's generator) so that each is asked next to the image as often as the others, the
    long last answer (the report) kept last."""

    def collate(rows: list[tuple]) -> dict[str, torch.Tensor]:
        if packed:
            shuffled = [[pairs[j] for j in torch.randperm(len(pairs) - 1).tolist()] + [pairs[-1]] for _, pairs, *_ in rows]
            batch = vlm.tokenize_conversations(shuffled)
            batch["image_index"] = torch.arange(len(rows))
        else:
            questions, answers, index = [], [], []
            for i, (_, pairs, *_) in enumerate(rows):
                for q, a in pairs:
                    questions.append(vlm.prompt(q))
                    answers.append(a)
                    index.append(i)
            batch = vlm.tokenize(questions, answers)
            batch["image_index"] = torch.tensor(index, dtype=torch.long)
        batch["finding_labels"] = torch.tensor([presence_labels(r[1]) for r in rows], dtype=torch.long)
        batch[kind] = torch.stack([r[0] for r in rows]).float()
        if len(rows[0]) == 3:  # the findings token's out-of-fold logits
            batch["finding_logits"] = torch.stack([r[2] for r in rows]).float()
        return batch

    return collate
