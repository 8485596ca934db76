"""Stage 3 fine-tuning: the CT-VLM's projector (and LoRA adapters) tuned with the Cox loss, jointly
with the language-model loss on its yes/no answers, on a training fold only.

With ``survival.finetune`` other than "none", each cross-validation fold (and the final model) starts
from the pretrained checkpoint, tunes it on the fold's training patients, and then reads the answers
of every study with the tuned model; the survival head is fitted on those answers as usual, so the
test fold never touches the weights that score it. What trains (the encoder stays frozen; its
features are cached once):

==================  ==============================================================
``projector``       the projector
``projector+lora``  the projector and the LoRA adapters of a pretrained LM
==================  ==============================================================

With ``survival.finetune_validation`` (default 0.2) that share of the training fold's patients is held out: the
temporary head is first fitted on the untuned model's answers, and after each epoch the Cox loss on the held-out
patients decides which weights are kept (those of the best epoch, the untuned ones included). Loss per minibatch
of the other training studies: the Cox partial likelihood (Efron, mean per event) of a
linear head on P(yes) of the presence questions plus the clinical features, plus
``answer_loss_weight`` times the cross-entropy of the model's yes/no answers (its likelihood of
"Yes." against "No.") against the answers the frozen model gave: survival cohorts usually have no
reports, and this keeps the model answering as it did while its reading is tuned for risk. The
temporary head is discarded afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctsurv.config import ExperimentConfig
from ctsurv.errors import CtsurvError
from ctsurv.evaluation.crossval import make_folds
from ctsurv.models.representation import answer_scores
from ctsurv.models.survival import SurvivalHead, cox_loss, fit_survival_head
from ctsurv.models.vlm import CTVLM
from ctsurv.training.checkpoint import load_checkpoint


@dataclass(frozen=True)
class Tuning:
    """What stage 3 tunes from: the pretrained checkpoint and its frozen encoder's cached features of the
    cohort, with the volumes' cells for a findings head that reads them (``projector.cells``)."""

    checkpoint: Path
    grids: torch.Tensor  # (n, Dv, N)
    cells: torch.Tensor | None = None  # (n, K)

    def cells_of(self, rows: np.ndarray) -> torch.Tensor | None:
        return None if self.cells is None else self.cells[rows]


def finetune_parameters(vlm: CTVLM, mode: str) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` for ``survival.finetune`` = ``mode`` and return the parameters that train."""
    vlm.requires_grad_(False)
    vlm.projector.requires_grad_(True)
    if mode == "projector+lora":
        lora = [p for name, p in vlm.language_model.named_parameters() if "lora_" in name]
        if not lora:
            raise CtsurvError(
                "survival.finetune=projector+lora needs a model pretrained with LoRA adapters (lora.enabled); "
                "use survival.finetune=projector"
            )
        for p in lora:
            p.requires_grad_(True)
    elif mode != "projector":
        raise ValueError(f"survival.finetune must be 'projector' or 'projector+lora' here, not {mode!r}")
    return [p for p in vlm.parameters() if p.requires_grad]


def finetune_vlm(
    vlm: CTVLM, grids: torch.Tensor, clinical: np.ndarray, time: np.ndarray, event: np.ndarray,
    frozen_p_yes: np.ndarray, questions: list[str], cfg: ExperimentConfig, seed: int, cells: torch.Tensor | None = None,
) -> CTVLM:
    """Tune ``vlm`` in place on one training set and return it frozen, in eval mode.

    ``grids`` (n, Dv, N) are the cached, pooled encoder features of the training studies (``cells`` (n, K)
    their volumes' cells, for a findings head that reads them),
    ``clinical`` (n, p) their design matrix, ``frozen_p_yes`` (n, Q) the frozen model's P(yes) for
    ``questions`` (standardises the head's inputs; thresholded at 0.5 they are the answer targets).
    Deterministic for a seed; torch's global RNG state is left as it was.
    """
    s = cfg.survival
    params = finetune_parameters(vlm, s.finetune)
    vlm.eval()  # no dropout; the frozen parts keep their statistics
    clinical_t = torch.as_tensor(clinical, dtype=torch.float32)
    time_t, event_t = torch.as_tensor(time), torch.as_tensor(event, dtype=torch.bool)
    targets = torch.as_tensor(frozen_p_yes >= 0.5, dtype=torch.float32)  # (n, Q)
    fit, val = validation_split(time, event, s.finetune_validation, seed)

    def p_yes_of(rows: np.ndarray) -> torch.Tensor:
        tokens = vlm.project_features(grids[rows].float(), cells=None if cells is None else cells[rows])
        return answer_scores(vlm, tokens, questions)[0]  # (b, Q)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = SurvivalHead(len(questions), clinical_t.shape[1], kind="linear")
        head.set_image_standardisation(torch.as_tensor(frozen_p_yes, dtype=torch.float32))
        optimizer = torch.optim.AdamW(
            [{"params": params, "lr": s.finetune_lr}, {"params": list(head.parameters()), "lr": s.lr}], weight_decay=0.0
        )

        def val_loss() -> float:
            with torch.no_grad():
                return float(cox_loss(head(p_yes_of(val), clinical_t[val]), event_t[val], time_t[val]))

        best = None
        if val is not None:  # epoch 0: the untuned model, its head fitted on its own answers as the tuning's starts
            fit_survival_head(head, torch.as_tensor(frozen_p_yes[fit], dtype=torch.float32), clinical_t[fit], time_t[fit],
                              event_t[fit], epochs=s.epochs, lr=s.lr, seed=seed, l2=s.l2)
            head.train()
            best = (val_loss(), [p.detach().clone() for p in params])
        rng = np.random.default_rng(seed)
        n_batches = max(1, len(fit) // s.finetune_batch_size)
        for _ in range(s.finetune_epochs):
            for batch in np.array_split(fit[rng.permutation(len(fit))], n_batches):
                p_yes = p_yes_of(batch)
                loss = cox_loss(head(p_yes, clinical_t[batch]), event_t[batch], time_t[batch])
                if s.answer_loss_weight > 0:
                    answers = F.binary_cross_entropy(p_yes.clamp(1e-6, 1 - 1e-6), targets[batch])
                    loss = loss + s.answer_loss_weight * answers
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if best is not None and (current := val_loss()) < best[0]:
                best = (current, [p.detach().clone() for p in params])
    if best is not None:  # the epoch with the lowest validation loss, the untuned model included
        with torch.no_grad():
            for p, kept in zip(params, best[1], strict=True):
                p.copy_(kept)
    vlm.requires_grad_(False)
    return vlm.eval()


def validation_split(
    time: np.ndarray, event: np.ndarray, share: float, seed: int, groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows to tune on, rows that stop the tuning) of a training set: ``share`` of it held out, stratified by event,
    a patient's studies (``groups``) together (:func:`~ctsurv.evaluation.crossval.make_folds`); all rows and None
    when ``share`` is 0 or there are too few events to hold some out."""
    rows = np.arange(len(time))
    if share <= 0:
        return rows, None
    try:
        split = make_folds(time, event, groups=groups, n_splits=max(2, round(1 / share)), seed=seed)[0]
    except CtsurvError:
        return rows, None
    return split.train_idx, split.test_idx


def tuned_model(
    checkpoint: Path, grids: torch.Tensor, clinical: np.ndarray, time: np.ndarray, event: np.ndarray,
    frozen_p_yes: np.ndarray, questions: list[str], cfg: ExperimentConfig, seed: int, cells: torch.Tensor | None = None,
) -> tuple[CTVLM, ExperimentConfig]:
    """A fresh copy of the pretrained model from ``checkpoint``, tuned on the given training studies."""
    vlm, model_cfg = load_checkpoint(checkpoint)
    finetune_vlm(vlm, grids, clinical, time, event, frozen_p_yes, questions, cfg, seed, cells=cells)
    return vlm, model_cfg
