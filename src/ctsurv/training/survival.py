"""`ctsurv survival`: stage 3 — survival from the pretrained model's reading of a scan plus clinical
data, evaluated by patient-level cross-validation against honest baselines in the same folds.

Methods (all share the folds; all but clinical_cox and oracle share the survival head of :func:`head_method`
and, with clinical data, the same clinical block; everything fitted — clinical standardisation and
imputation, PCA, the head, the Breslow baseline — is fitted on the training fold only):

=======================  ==================================================================
model                    answers to the predefined questions (P(yes) per presence question + the first
                         ``survival.hidden_components`` principal components of the answer-position
                         hidden states) + clinical data; with ``survival.finetune`` the answers of a model
                         tuned per fold (stage 3)
model_frozen             (only with ``survival.finetune``) the same without fine-tuning
model_image_only         the same image features, no clinical data
model_risk_query         the alternative representation: a learned risk query attending over the
                         LM's hidden states at the visual tokens (RiskQueryHead) + clinical data
model_align              the stage-1 (align, captioning only) checkpoint read like ``model`` + clinical
findings_classifier      the model's own findings classifier (``projector.findings``, fitted on the
                         pretraining cohort before stage 1; no language model): P(finding) per presence
                         finding + clinical. Absent without ``projector.findings_token``
encoder_no_instruction   what the projector receives from the encoder before instruction tuning (the
                         stage-0 checkpoint's, else stage 1's): the token grid pooled by
                         ``projector.pool`` (max token included), flattened, and the volumes' cells where
                         the findings classifier reads them; reduced to the model's image-feature budget
                         (:func:`image_budget`; fewer only past n_train - 1 or the training rows' rank)
                         by a PCA of unit-variance blocks (:class:`BlockPCA`) + clinical. With
                         ``--encoder i3resnet152``: its mean-pooled grid, same budget
encoder_region           with ``--encoder i3resnet152`` and masks: its grid pooled over the whole volume,
                         inside the mask and in a ring around it (three blocks), same budget + clinical
encoder_finetuned        with ``--encoder i3resnet152`` and ``survival.finetune: last_block``: the same pools
                         (whole, and inside / around where masks are given) of the encoder with its last
                         residual block tuned per training fold (:mod:`ctsurv.training.encoder_finetune`)
clinical_cox             Cox model on the clinical columns alone (lifelines)
radiomics_cox            Cox model on the clinical columns and the masked region's shape and intensity
                         features (:mod:`ctsurv.features.radiomics`), ridge penalty ``survival.l2``, or
                         with ``survival.nested`` chosen by inner cross-validation on the training fold (as
                         every method's is then). Absent when no study has a mask
oracle                   the true log-hazard from ``truth.csv`` (synthetic cohorts only; no fitting)
=======================  ==================================================================

The ablation ladder (``LADDER``, bottom rung first) adds one thing per rung: clinical data, hand-crafted
features of the tumour (where masks are given), the encoder's features, pooled where the mask says, its last block
tuned for survival, a supervised reading of them (the findings classifier), a language model taught to caption
(align), then instruction tuning (model). Each rung is compared with the one below it in the same folds.

Without ``survival.finetune`` the VLM is frozen in this stage: its features are functions of the
image alone, computed once for all studies, so no outcome information can leak between folds through
them. With it, each fold tunes its own copy on its training patients only.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning
from sklearn.decomposition import PCA

from ctsurv.config import ExperimentConfig
from ctsurv.errors import CtsurvError
from ctsurv.evaluation.crossval import Fold, FoldPrediction, make_folds
from ctsurv.evaluation.metrics import harrell_c
from ctsurv.features import Volumes
from ctsurv.features.extract import RowBuffer, region_pool, region_weights
from ctsurv.features.store import VolumeStore
from ctsurv.io.clinical import ClinicalSchema, level_text
from ctsurv.io.cohort import Cohort
from ctsurv.models.projector import Projector
from ctsurv.models.representation import answer_features, visual_states
from ctsurv.models.survival import BreslowBaseline, RiskQueryHead, SurvivalHead, fit_survival_head
from ctsurv.models.vlm import CTVLM
from ctsurv.text.questions import PRESENCE_QUESTIONS
from ctsurv.training.encoder_finetune import BlockTuning, tuned_pools
from ctsurv.training.survival_finetune import Tuning, tuned_model

LADDER = (  # bottom rung first
    "clinical_cox", "radiomics_cox", "encoder_no_instruction", "encoder_region", "encoder_finetuned", "findings_classifier",
    "model_align", "model",
)
COX_PENALTIES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # lifelines' ridge penalties searched by inner cross-validation
# with survival.nested: the survival head's ridge penalties (the same scale as lifelines': the mean negative log
# partial likelihood + l2/2 |w|^2) and the shares of a principal-component budget searched by inner cross-validation
HEAD_PENALTIES = (0.01, 0.05, 0.2, 1.0, 5.0)
BUDGET_SHARES = (0.25, 0.5, 1.0)
INNER_FOLDS = 3
RANK_TOLERANCE = 1e-10  # a principal component explaining less of the variance is numerically zero
SLICE_BYTES = 32 * 2**20  # BlockPCA reads the scaled features in float64 slices of about this size


def image_budget(cfg: ExperimentConfig) -> int:
    """The number of image features ``model`` reads: P(yes) per presence question + the hidden states' components."""
    return len(PRESENCE_QUESTIONS) + cfg.survival.hidden_components


@dataclass(frozen=True)
class ImageFeatures:
    """Per-study image features, computed once with a frozen model (no outcome information)."""

    p_yes: np.ndarray | None  # (n, Q) probability of "Yes" per presence question
    hidden: np.ndarray | None  # (n, Q*D) answer-position hidden states
    visual: np.ndarray | None = None  # (n, N, D) LM hidden states at the visual tokens (the risk query's input)

    def rows(self, order: np.ndarray) -> ImageFeatures:
        """The features of studies ``order`` (indices), every field alike."""
        return ImageFeatures(*(None if a is None else a[order] for a in (self.p_yes, self.hidden, self.visual)))


@torch.no_grad()
def vlm_features(
    vlm: CTVLM, inputs: Volumes, batch_size: int = 16, kind: str = "images", cells: torch.Tensor | None = None,
    visual_tokens: bool = True,
) -> ImageFeatures:
    """Answers (P(yes), hidden states) of the model for every volume (N, C, X, Y, Z), or for cached, pooled
    encoder features (N, Dv, tokens) with ``kind="features"`` (and the volumes' ``cells`` (N, K) for a
    findings head that reads them), and (``visual_tokens``) the LM's states at the visual tokens."""
    n = len(inputs)
    probs, states, visual = RowBuffer(n), RowBuffer(n), RowBuffer(n)
    for i in range(0, n, batch_size):
        x = inputs[i : i + batch_size].float()
        if kind == "images":
            tokens = vlm.encode_image(x)
        else:
            tokens = vlm.project_features(x, cells=None if cells is None else cells[i : i + batch_size])
        p, h = answer_features(vlm, tokens, PRESENCE_QUESTIONS)
        probs.put(i, p)
        states.put(i, h.flatten(1))
        if visual_tokens:
            visual.put(i, visual_states(vlm, tokens))
    q, d = len(PRESENCE_QUESTIONS), vlm.language_model.get_input_embeddings().embedding_dim
    return ImageFeatures(
        probs.numpy((q,)), states.numpy((q * d,)), visual.numpy((vlm.num_image_tokens, d)) if visual_tokens else None
    )


@torch.no_grad()
def findings_probabilities(projector: Projector, grids: torch.Tensor, cells: torch.Tensor | None) -> np.ndarray:
    """P(finding) (n, P) of the projector's findings classifier on pooled encoder features (n, Dv, N) and,
    for a classifier that reads them, the volumes' cells (n, K): what it puts in the findings token."""
    if projector.findings is None:
        raise ValueError("this projector has no findings classifier (projector.findings_token: false)")
    return torch.sigmoid(projector.findings(grids.float(), cells)).double().numpy()


def projector_input_blocks(projector: Projector, grids: torch.Tensor, cells: torch.Tensor | None) -> tuple[np.ndarray, ...]:
    """What ``projector`` receives from a frozen encoder, per study: the pooled grid (n, Dv, N) flattened to
    (n, Dv*N), then the volumes' cells (n, K) when its findings classifier reads them for some finding."""
    findings = projector.findings
    reads = findings is not None and cells is not None and bool(findings.reads_cells.any())
    return (grids.flatten(1).numpy(), *((cells.numpy(),) if reads else ()))


@torch.no_grad()
def encoder_region_features(
    encoder: torch.nn.Module, volumes: VolumeStore, spacing_xyz: tuple[float, float, float], batch_size: int = 16,
    masks: bool = True, block_inputs: RowBuffer | None = None, weights: list[torch.Tensor | None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pretrained encoder's grid pooled three ways, three (N, Dv) blocks: over the whole volume (its mean),
    inside the study's mask, and in the ring of ``RING_MM`` around it
    (:func:`~ctsurv.features.extract.region_weights`). A study without a mask (or every study, with ``masks``
    false) gets its whole-volume pool in all three. With ``block_inputs`` (an I3ResNet-152) what its last block
    receives from each study is kept there too, from the same pass; with ``weights`` each study's region
    weights ((2, cells), None without a mask) are appended to that list, for tuning the block later."""
    encoder.eval()
    out = RowBuffer(len(volumes))  # (N, 3, Dv)
    for start in range(0, len(volumes), batch_size):
        x = volumes[start : start + batch_size].float()
        if block_inputs is None:
            grids = encoder.features(x)  # (B, Dv, gx, gy, gz)
        else:
            inputs = encoder.last_block_inputs(x)
            block_inputs.put(start, inputs)
            grids = encoder.last_block(inputs)
        rows = []
        for j, grid in enumerate(grids):
            whole = grid.flatten(1).mean(1)
            mask = volumes.mask(start + j) if masks else None
            regions = None if mask is None else region_weights(mask, spacing_xyz, tuple(grid.shape[1:]))
            if weights is not None:
                weights.append(None if regions is None else regions.flatten(1))
            if regions is None:
                rows.append(whole.expand(3, -1))
            else:
                rows.append(torch.cat([whole[None], region_pool(grid, regions)]))
        out.put(start, torch.stack(rows))
    pooled = out.numpy()
    return pooled[:, 0], pooled[:, 1], pooled[:, 2]


# ----------------------------------------------------------------------------- per-fold methods

FitPredict = Callable[[np.ndarray, np.ndarray], FoldPrediction]


@dataclass(frozen=True)
class FoldData:
    cohort: Cohort
    time: np.ndarray
    event: np.ndarray

    @property
    def groups(self) -> np.ndarray:
        """The patient of each row (inner folds keep a patient's studies together)."""
        return np.asarray(self.cohort.patient_ids, dtype=object)

    def clinical(self, idx: np.ndarray, schema: ClinicalSchema) -> np.ndarray:
        """The design matrix of rows ``idx`` under a training fold's ``schema``. A categorical level the
        training fold lacks (a rare level whose patients all fell in one test fold) reads as missing: the
        fold's model knows nothing of it, and the schema refuses unseen levels (right for `ctsurv predict`)."""
        frame = self.cohort.clinical().iloc[idx]
        for col, levels in zip(schema.categorical, schema.levels, strict=True):
            text = frame[col].map(level_text)
            unseen = text.notna() & ~text.isin([level_text(level) for level in levels])
            if unseen.any():
                frame = frame.assign(**{col: frame[col].mask(unseen)})
        return schema.transform(frame)

    def schema(self, idx: np.ndarray) -> ClinicalSchema:
        c = self.cohort.config
        return ClinicalSchema.fit(self.cohort.clinical().iloc[idx], c.numeric_columns, c.categorical_columns)


def _prediction(data: FoldData, train: np.ndarray, risk_train: np.ndarray, risk_test: np.ndarray) -> FoldPrediction:
    """Test risks and their survival curves from the training fold's Breslow baseline."""
    baseline = BreslowBaseline().fit(data.time[train], data.event[train], risk_train)
    return FoldPrediction(risk_test, survival=lambda times: baseline.survival_function(risk_test, times))


ImageBuilder = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class HeadChoice:
    """What the survival head of one training fold uses: its ridge penalty and how many image columns."""

    l2: float
    width: int | None = None  # the leading image columns kept (None: all)


def head_method(
    data: FoldData, cfg: ExperimentConfig, image: ImageBuilder | None, use_clinical: bool, seed: int,
    risk_query: bool = False, kept: int | None = None,
) -> FitPredict:
    """A survival head on image features (built per fold by ``image``) and/or clinical data; with
    ``risk_query`` the image features are visual-token states (n, N, D) read by a :class:`RiskQueryHead`.

    With ``survival.nested`` the head's ridge penalty (:data:`HEAD_PENALTIES`) and, for features whose columns
    past the first ``kept`` are principal components (leading first), how many of them it reads
    (:data:`BUDGET_SHARES` of the budget), are chosen by inner cross-validation on the training fold
    (:func:`choose_head`); otherwise ``survival.l2`` and every column."""
    s = cfg.survival

    def fit_predict(train: np.ndarray, test: np.ndarray) -> FoldPrediction:
        img_tr, img_te = image(train, test) if image is not None else (None, None)
        choice = HeadChoice(s.l2)
        if s.nested:
            budget = None if kept is None or img_tr is None else img_tr.shape[1] - kept
            choice = choose_head(data, cfg, image, use_clinical, seed, train, kept, budget, risk_query)
        if choice.width is not None:
            img_tr, img_te = img_tr[:, : choice.width], img_te[:, : choice.width]  # type: ignore[index]
        risk_tr, risk_te = _fit_head(data, cfg, img_tr, img_te, use_clinical, train, test, seed, risk_query, choice.l2)
        pred = _prediction(data, train, risk_tr, risk_te)
        if not s.nested:
            return pred
        width = choice.width if choice.width is not None or img_tr is None else img_tr.shape[1]
        chosen = {"l2": choice.l2, **({} if width is None else {"image_columns": width})}
        return dataclasses.replace(pred, chosen=chosen)

    return fit_predict


def _fit_head(
    data: FoldData, cfg: ExperimentConfig, img_tr: np.ndarray | None, img_te: np.ndarray | None, use_clinical: bool,
    train: np.ndarray, test: np.ndarray, seed: int, risk_query: bool, l2: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The risks (train, test) of a survival head fitted on rows ``train`` with ridge penalty ``l2``."""
    s = cfg.survival
    clin_tr = clin_te = None
    if use_clinical:
        schema = data.schema(train)
        clin_tr, clin_te = data.clinical(train, schema), data.clinical(test, schema)
    n_clinical = 0 if clin_tr is None else clin_tr.shape[1]
    head: SurvivalHead | RiskQueryHead
    if risk_query and img_tr is not None:
        head = RiskQueryHead(img_tr.shape[2], n_clinical, kind=s.head)
    else:
        head = SurvivalHead(image_dim=0 if img_tr is None else img_tr.shape[1], n_clinical=n_clinical, kind=s.head)
    as_t = lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float32)
    fit_survival_head(
        head, as_t(img_tr), as_t(clin_tr), torch.as_tensor(data.time[train]), torch.as_tensor(data.event[train]),
        epochs=s.epochs, lr=s.lr, seed=seed, l2=l2,
    )
    risk_tr = head.predict_risk(as_t(img_tr), as_t(clin_tr)).numpy().astype(np.float64)
    risk_te = head.predict_risk(as_t(img_te), as_t(clin_te)).numpy().astype(np.float64)
    return risk_tr, risk_te


def choose_head(
    data: FoldData, cfg: ExperimentConfig, image: ImageBuilder | None, use_clinical: bool, seed: int, train: np.ndarray,
    kept: int | None = None, budget: int | None = None, risk_query: bool = False,
) -> HeadChoice:
    """The head's ridge penalty of :data:`HEAD_PENALTIES` and image width (``kept`` + a share of :data:`BUDGET_SHARES`
    of ``budget`` principal components; all columns without a budget) with the best mean Harrell's C over
    :data:`INNER_FOLDS` inner folds of the rows ``train``: the image features (their PCA) and the clinical
    standardisation are refitted on each inner training part, and the test fold never enters. Ties go to the
    simpler head (fewer columns, then a larger penalty); too few events for inner folds give ``survival.l2``
    and every column.

    A linear head is the ridge Cox model on standardised columns, so the inner fits use lifelines'
    Newton-Raphson (:func:`fit_cox`) with the penalty moved to its per-patient scale (``l2 * events / n``); they
    differ from the head's own fit only in that lifelines also standardises 0/1 clinical columns. Other heads
    (``mlp``, the risk query) are trained in the inner folds as they are in the outer one."""
    try:
        inner = make_folds(data.time[train], data.event[train], groups=data.groups[train], n_splits=INNER_FOLDS, seed=seed)
    except CtsurvError:
        return HeadChoice(cfg.survival.l2)
    widths: list[int | None] = [None]
    if budget is not None and kept is not None and budget > 0:
        widths = sorted({kept + max(1, round(share * budget)) for share in BUDGET_SHARES})
    newton = cfg.survival.head == "linear" and not risk_query
    scores: dict[tuple[int | None, float], list[float]] = {}
    for fold in inner:
        tr, te = train[fold.train_idx], train[fold.test_idx]
        img_tr, img_te = image(tr, te) if image is not None else (None, None)
        if newton and use_clinical:
            schema = data.schema(tr)
            clin_tr, clin_te = data.clinical(tr, schema), data.clinical(te, schema)
        for width in widths:
            parts = (img_tr, img_te) if width is None else (img_tr[:, :width], img_te[:, :width])  # type: ignore[index]
            if newton:  # the same linear Cox model by lifelines' Newton-Raphson, ~20x faster than the head's epochs
                x_tr, x_te = (np.hstack([a for a in pair if a is not None]).astype(np.float64) for pair in (
                    (parts[0], clin_tr if use_clinical else None), (parts[1], clin_te if use_clinical else None)))
                mean, sd = x_tr.mean(0), x_tr.std(0)
                sd = np.where(sd > 0, sd, 1.0)
                x_tr, x_te = (x_tr - mean) / sd, (x_te - mean) / sd
                events = max(int(data.event[tr].sum()), 1)
            for l2 in HEAD_PENALTIES:
                if newton:  # the head's loss is per event, lifelines' per patient: the same penalty, rescaled
                    risk = x_te @ fit_cox(x_tr, data.time[tr], data.event[tr], l2 * events / len(tr))
                else:
                    _, risk = _fit_head(data, cfg, *parts, use_clinical, tr, te, seed, risk_query, l2)
                scores.setdefault((width, l2), []).append(harrell_c(data.time[te], data.event[te], risk))
    mean = {key: float(np.mean(c)) for key, c in scores.items()}
    best = max(mean.values())
    simplest_first = sorted(mean, key=lambda key: (key[0] or 0, -key[1]))
    width, l2 = next(key for key in simplest_first if mean[key] >= best - 1e-12)
    return HeadChoice(l2, width)


def fit_answer_pca(features: ImageFeatures, rows: np.ndarray, components: int) -> PCA | None:
    """PCA of the answer-position hidden states of ``rows`` (None when no components are kept).

    Fitted in float64, as `ctsurv predict` projects with the saved components: a float32 PCA differs
    from it by ~1e-6, which the head's standardisation of low-variance components turns into ~1e-4 in risk.
    """
    if components <= 0:
        return None
    return PCA(n_components=min(components, len(rows) - 1), random_state=0).fit(features.hidden[rows].astype(np.float64))


def answer_matrix(features: ImageFeatures, rows: np.ndarray, pca: PCA | None) -> np.ndarray:
    """The image features of ``rows``: P(yes) per presence question, then the hidden states' components."""
    if pca is None:
        return features.p_yes[rows]
    return np.concatenate([features.p_yes[rows], pca.transform(features.hidden[rows].astype(np.float64))], 1)


def answer_image(features: ImageFeatures, components: int) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """P(yes) plus the first ``components`` principal components of the hidden states (PCA fit on train)."""

    def build(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pca = fit_answer_pca(features, train, components)
        return answer_matrix(features, train, pca), answer_matrix(features, test, pca)

    return build


@dataclass(frozen=True)
class BlockPCA:
    """PCA of column blocks (the encoder's pooled grid, the volumes' cells) that each enter with unit total
    variance: a block is centred and divided by the square root of the sum of its columns' variances on the
    fitting rows, so neither its units (encoder activations vs windowed HU) nor its width decide its weight;
    within a block the columns keep their relative scales, as the projector sees them.

    Components without variance on the fitting rows (beyond the rank of their centred blocks, e.g. when a
    patient's two studies are the same scan) are dropped: the head would standardise them by a zero SD.

    The scaled matrix (rows × all blocks' columns, thousands of columns a study) is never built: it is read a
    slice at a time (:data:`SLICE_BYTES`) into the smaller of its Gram matrix (rows × rows) and its covariance
    (columns × columns), whose leading eigenvectors give the principal axes. Memory is bounded by the width
    of the features, not the size of the cohort, and only the kept components are solved for, exactly
    (scikit-learn's ``PCA`` needs the whole centred float64 matrix, and at this width its ``auto`` solver is a
    randomized SVD). The axes carry scikit-learn's sign convention (each axis's largest loading is positive).
    """

    means: tuple[np.ndarray, ...]
    scales: tuple[float, ...]
    axes: np.ndarray  # (columns of all blocks, kept): the unit principal axes, in the blocks' column order
    explained_variance_ratio: np.ndarray  # (kept,) on the fitting rows

    @property
    def kept(self) -> int:
        """The number of leading components kept."""
        return self.axes.shape[1]

    @classmethod
    def fit(cls, blocks: Sequence[np.ndarray], rows: np.ndarray, components: int) -> BlockPCA:
        """Fitted on ``rows`` of ``blocks``, keeping min(components, len(rows) - 1, columns, rank) components."""
        rows = np.asarray(rows)
        n, width = len(rows), sum(b.shape[1] for b in blocks)
        means, scales = [], []
        for block in blocks:  # each block's mean and total variance, a slice of its columns at a time
            mean, squares = np.empty(block.shape[1]), 0.0
            for cols in _column_slices(block.shape[1], n):
                part = block[rows, cols].astype(np.float64)
                mean[cols] = part.mean(0)
                squares += float(((part - mean[cols]) ** 2).sum())
            means.append(mean)
            scales.append(float(np.sqrt(squares / n)) or 1.0)
        pca = cls(tuple(means), tuple(scales), np.empty((width, 0)), np.empty(0))
        k = min(components, n - 1, width)
        if k <= 0:
            return pca
        if n <= width:  # the Gram matrix X X^T: its eigenvectors u give the axes X^T u / sqrt(eigenvalue)
            gram = np.zeros((n, n))
            for _, x in pca._slices(blocks, rows):
                gram += x @ x.T
            values, vectors, ratio = _leading_eigen(gram, k)
            axes = np.empty((width, len(values)))
            for cols, x in pca._slices(blocks, rows):
                axes[cols] = x.T @ (vectors / np.sqrt(values))
        else:  # the covariance X^T X, a slice of rows at a time
            cov = np.zeros((width, width))
            step = max(1, SLICE_BYTES // (8 * width))
            for start in range(0, n, step):
                x = pca.scaled(blocks, rows[start : start + step])
                cov += x.T @ x
            values, axes, ratio = _leading_eigen(cov, k)
        axes = axes * np.sign(axes[np.abs(axes).argmax(0), np.arange(axes.shape[1])])  # largest loading positive
        return cls(pca.means, pca.scales, axes, ratio)

    def _slices(self, blocks: Sequence[np.ndarray], rows: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        """The centred, scaled columns of ``rows``, a slice of columns at a time: (which columns of the
        concatenated blocks, float64 (len(rows), columns))."""
        offset = 0
        for block, mean, scale in zip(blocks, self.means, self.scales, strict=True):
            for cols in _column_slices(block.shape[1], len(rows)):
                part = (block[rows, cols].astype(np.float64) - mean[cols]) / scale
                yield slice(offset + cols.start, offset + cols.stop), part
            offset += block.shape[1]

    def scaled(self, blocks: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of the blocks, each centred and scaled, side by side (float64)."""
        return np.concatenate(
            [(b[rows].astype(np.float64) - m) / sd for b, m, sd in zip(blocks, self.means, self.scales, strict=True)], 1
        )

    def transform(self, blocks: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
        """The kept principal components (len(rows), kept) of rows ``rows``."""
        out = np.zeros((len(rows), self.kept))
        for cols, x in self._slices(blocks, np.asarray(rows)):
            out += x @ self.axes[cols]
        return out


def _leading_eigen(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues of a symmetric positive semi-definite ``matrix`` (a Gram matrix or a
    covariance), largest first, with their eigenvectors and their share of the trace; those with a share
    under :data:`RANK_TOLERANCE` (numerically zero) are dropped."""
    size = len(matrix)
    values, vectors = scipy.linalg.eigh(matrix, subset_by_index=[size - k, size - 1])
    values, vectors = values[::-1], vectors[:, ::-1]
    ratio = values / (float(np.trace(matrix)) or 1.0)  # all rows alike: nothing is kept
    keep = ratio > RANK_TOLERANCE
    return values[keep], vectors[:, keep], ratio[keep]


def _column_slices(columns: int, rows: int) -> list[slice]:
    """Slices of ``columns`` whose float64 copy of ``rows`` rows takes about :data:`SLICE_BYTES`."""
    step = max(1, SLICE_BYTES // (8 * max(rows, 1)))
    return [slice(start, min(start + step, columns)) for start in range(0, columns, step)]


def encoder_image(
    blocks: Sequence[np.ndarray], components: int
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The first ``components`` principal components of the encoder's feature blocks (:class:`BlockPCA` fit on train)."""

    def build(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pca = BlockPCA.fit(blocks, train, components)
        return pca.transform(blocks, train), pca.transform(blocks, test)

    return build


def fixed_image(features: np.ndarray) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Per-study features (n, F) used as they are (nothing is fitted here): the findings classifier's probabilities."""
    return lambda train, test: (features[train], features[test])


def visual_image(features: ImageFeatures) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The visual-token states of the training and test rows (nothing is fitted here)."""
    return lambda train, test: (features.visual[train], features.visual[test])


def clinical_cox(data: FoldData, penalizer: float = 0.01, seed: int = 0, nested: bool = False) -> FitPredict:
    """lifelines' Cox model (Efron ties) on the fold's standardised, imputed clinical design matrix, with the ridge
    ``penalizer``, or (``nested``) the penalty chosen by inner cross-validation on the training fold."""

    def fit_predict(train: np.ndarray, test: np.ndarray) -> FoldPrediction:
        schema = data.schema(train)
        x_tr = data.clinical(train, schema).astype(np.float64)
        penalty = penalizer
        if nested:
            penalty = choose_cox_penalty(x_tr, data.time[train], data.event[train], data.groups[train], seed)
        beta = fit_cox(x_tr, data.time[train], data.event[train], penalty)
        pred = _prediction(data, train, x_tr @ beta, data.clinical(test, schema).astype(np.float64) @ beta)
        return dataclasses.replace(pred, chosen={"penalizer": penalty}) if nested else pred

    return fit_predict


def radiomics_cox(data: FoldData, radiomics: np.ndarray, seed: int, penalizer: float | None = None) -> FitPredict:
    """lifelines' Cox model on the clinical design matrix and the masked region's radiomics
    (:mod:`ctsurv.features.radiomics`), standardised on the training fold (a study without a mask reads as the
    training mean), with the ridge ``penalizer``, or (None) the penalty chosen by inner cross-validation on the
    training fold alone (:func:`choose_cox_penalty`)."""

    def fit_predict(train: np.ndarray, test: np.ndarray) -> FoldPrediction:
        schema = data.schema(train)
        mean = np.nanmean(radiomics[train], axis=0)
        sd = np.nanstd(radiomics[train], axis=0)
        sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)

        def design(rows: np.ndarray) -> np.ndarray:
            scaled = np.nan_to_num((radiomics[rows] - np.nan_to_num(mean)) / sd)  # missing -> the training mean
            return np.hstack([data.clinical(rows, schema).astype(np.float64), scaled])

        x_tr = design(train)
        penalty = penalizer
        if penalty is None:
            penalty = choose_cox_penalty(x_tr, data.time[train], data.event[train], data.groups[train], seed)
        beta = fit_cox(x_tr, data.time[train], data.event[train], penalty)
        pred = _prediction(data, train, x_tr @ beta, design(test) @ beta)
        return dataclasses.replace(pred, chosen={"penalizer": penalty}) if penalizer is None else pred

    return fit_predict


def fit_cox(x: np.ndarray, time: np.ndarray, event: np.ndarray, penalizer: float) -> np.ndarray:
    """Coefficients of lifelines' ridge-penalised Cox model (Efron ties) on the design matrix ``x`` (n, p).

    A column constant on these rows (a rare level absent from an inner training fold) gets coefficient 0:
    lifelines would divide it by its zero standard deviation. Should Newton-Raphson still diverge (columns
    nearly collinear in a small fold), the fit is repeated with half the step size, then with ten times the
    penalty."""
    beta = np.zeros(x.shape[1])
    varies = np.ptp(x, axis=0) > 0
    if not varies.any():
        return beta
    frame = pd.DataFrame(x[:, varies], columns=[f"x{i}" for i in range(int(varies.sum()))])
    frame["T"], frame["E"] = time, event.astype(int)
    tries = [(penalizer, 0.95), (penalizer, 0.5), (penalizer * 10, 0.5)]
    for i, (pen, step) in enumerate(tries):
        try:
            with warnings.catch_warnings():  # near-separated columns in small folds; the penalizer keeps it finite
                warnings.simplefilter("ignore", ConvergenceWarning)
                cph = CoxPHFitter(penalizer=pen).fit(frame, duration_col="T", event_col="E", fit_options={"step_size": step})
            beta[varies] = cph.params_.to_numpy()
            return beta
        except ConvergenceError:
            if i == len(tries) - 1:
                raise
    return beta


def choose_cox_penalty(
    x: np.ndarray, time: np.ndarray, event: np.ndarray, groups: np.ndarray, seed: int,
    penalties: Sequence[float] = COX_PENALTIES, folds: int = INNER_FOLDS,
) -> float:
    """The ridge penalty of :data:`COX_PENALTIES` with the best mean Harrell's C over ``folds`` inner folds of
    the rows given (a training fold: the test fold never enters). Ties go to the larger penalty; too few
    events for the inner folds give the middle of the grid."""
    try:
        inner = make_folds(time, event, groups=groups, n_splits=folds, seed=seed)
    except CtsurvError:
        return float(penalties[len(penalties) // 2])
    scores = []
    for penalty in penalties:
        c = []
        for fold in inner:
            beta = fit_cox(x[fold.train_idx], time[fold.train_idx], event[fold.train_idx], penalty)
            c.append(harrell_c(time[fold.test_idx], event[fold.test_idx], x[fold.test_idx] @ beta))
        scores.append(float(np.mean(c)))
    best = max(scores)
    return float(max(p for p, sc in zip(penalties, scores) if sc >= best - 1e-12))


def fixed_risk(data: FoldData, risk: np.ndarray) -> FitPredict:
    """A known risk (the oracle's true log-hazard): nothing is fitted but the Breslow baseline."""

    def fit_predict(train: np.ndarray, test: np.ndarray) -> FoldPrediction:
        return _prediction(data, train, risk[train], risk[test])

    return fit_predict


# ----------------------------------------------------------------------------- the protocol


def finetuned_method(data: FoldData, cfg: ExperimentConfig, tuning: Tuning, frozen: ImageFeatures) -> FitPredict:
    """``model`` with stage-3 fine-tuning: per fold, a fresh copy of the pretrained model is tuned on the
    training patients (:mod:`ctsurv.training.survival_finetune`), then reads every study; the head is
    fitted on its answers as in ``model``."""
    k, seed, q = cfg.survival.hidden_components, cfg.seed, len(PRESENCE_QUESTIONS)

    def fit_predict(train: np.ndarray, test: np.ndarray) -> FoldPrediction:
        schema = data.schema(train)
        vlm, _ = tuned_model(
            tuning.checkpoint, tuning.grids[train], data.clinical(train, schema), data.time[train], data.event[train],
            frozen.p_yes[train], PRESENCE_QUESTIONS, cfg, seed, cells=tuning.cells_of(train),
        )
        tuned = vlm_features(vlm, tuning.grids, kind="features", cells=tuning.cells)
        return head_method(data, cfg, answer_image(tuned, k), use_clinical=True, seed=seed, kept=q)(train, test)

    return fit_predict


def finetuned_encoder_method(data: FoldData, cfg: ExperimentConfig, tuning: BlockTuning) -> FitPredict:
    """``encoder_finetuned``: per fold, a copy of the encoder's last block tuned on the training patients
    (:func:`~ctsurv.training.encoder_finetune.tuned_pools`), then the head of ``encoder_region`` on its pools."""
    budget, seed = image_budget(cfg), cfg.seed

    def fit_predict(train: np.ndarray, test: np.ndarray) -> FoldPrediction:
        clinical = data.clinical(train, data.schema(train))
        pools, epoch = tuned_pools(tuning, cfg, clinical, data.time, data.event, data.groups, train, budget, seed)
        blocks = tuple(pools[:, r].numpy() for r in range(pools.shape[1]))
        pred = head_method(data, cfg, encoder_image(blocks, budget), use_clinical=True, seed=seed, kept=0)(train, test)
        return dataclasses.replace(pred, chosen={**(pred.chosen or {}), "tuned_epochs": epoch})

    return fit_predict


def survival_methods(
    data: FoldData, cfg: ExperimentConfig, answers: ImageFeatures | None, encoder: Sequence[np.ndarray] | None,
    truth_risk: np.ndarray | None, tuning: Tuning | None = None, findings: np.ndarray | None = None,
    align: ImageFeatures | None = None, radiomics: np.ndarray | None = None,
    encoder_region: Sequence[np.ndarray] | None = None, block_tuning: BlockTuning | None = None,
) -> dict[str, FitPredict]:
    """The methods compared in the same folds (see the module docstring); absent inputs drop methods.

    ``answers``: the instruction-tuned model's; ``align``: the stage-1 checkpoint's; ``findings``: the findings
    classifier's probabilities (n, P); ``encoder``: the feature blocks of the encoder before instruction tuning;
    ``radiomics``: the masked regions' radiomics (n, F), NaN rows for studies without a mask; ``encoder_region``:
    a pretrained encoder's whole, inside-the-mask and around-the-mask pools (:func:`encoder_region_features`);
    ``block_tuning``: what ``encoder_finetuned`` tunes (its last block, cached inputs, pooling weights).
    ``tuning`` (the pretrained checkpoint and the cached encoder grids of the cohort) makes ``model``
    the fine-tuned variant when ``survival.finetune`` asks for one; ``model_frozen`` then keeps the
    frozen model's answers for comparison."""
    k, seed, q = cfg.survival.hidden_components, cfg.seed, len(PRESENCE_QUESTIONS)
    methods: dict[str, FitPredict] = {}
    if answers is not None:
        methods["model"] = head_method(data, cfg, answer_image(answers, k), use_clinical=True, seed=seed, kept=q)
        if cfg.survival.finetune != "none" and tuning is not None:
            methods["model_frozen"] = methods["model"]
            methods["model"] = finetuned_method(data, cfg, tuning, answers)
        methods["model_image_only"] = head_method(
            data, cfg, answer_image(answers, k), use_clinical=False, seed=seed, kept=q
        )
        if answers.visual is not None:
            methods["model_risk_query"] = head_method(
                data, cfg, visual_image(answers), use_clinical=True, seed=seed, risk_query=True
            )
    if align is not None:
        methods["model_align"] = head_method(data, cfg, answer_image(align, k), use_clinical=True, seed=seed, kept=q)
    if findings is not None:
        methods["findings_classifier"] = head_method(data, cfg, fixed_image(findings), use_clinical=True, seed=seed)
    if encoder is not None:
        methods["encoder_no_instruction"] = head_method(
            data, cfg, encoder_image(encoder, image_budget(cfg)), use_clinical=True, seed=seed, kept=0
        )
    if encoder_region is not None:
        methods["encoder_region"] = head_method(
            data, cfg, encoder_image(encoder_region, image_budget(cfg)), use_clinical=True, seed=seed, kept=0
        )
    if block_tuning is not None:
        methods["encoder_finetuned"] = finetuned_encoder_method(data, cfg, block_tuning)
    methods["clinical_cox"] = clinical_cox(data, seed=seed, nested=cfg.survival.nested)
    if radiomics is not None:
        methods["radiomics_cox"] = radiomics_cox(data, radiomics, seed, penalizer=None if cfg.survival.nested else cfg.survival.l2)
    if truth_risk is not None:
        methods["oracle"] = fixed_risk(data, truth_risk)
    ladder_first = [name for name in LADDER if name in methods] + [name for name in methods if name not in LADDER]
    return {name: methods[name] for name in ladder_first}  # the tables list the ladder bottom rung first


def at_horizon(fit_predict: FitPredict, horizon: float, folds: Sequence[Fold], n: int) -> tuple[FitPredict, np.ndarray]:
    """Wrap ``fit_predict`` to also record each test patient's predicted survival at ``horizon`` per repeat
    (n_repeats, n). ``cross_validate`` calls it once per fold in the order of ``folds``, which says the repeat."""
    surv = np.full((max(f.repeat for f in folds) + 1, n), np.nan)
    calls = iter(folds)

    def wrapped(train: np.ndarray, test: np.ndarray) -> FoldPrediction:
        fold = next(calls, None)
        if fold is None or not np.array_equal(fold.test_idx, test):
            raise ValueError("at_horizon: called on other folds, or in another order, than those it was given")
        pred = fit_predict(train, test)
        surv[fold.repeat, test] = pred.survival(np.array([horizon]))[:, 0]
        return pred

    return wrapped, surv
