"""One patient read by a fitted model: what `ctsurv serve` shows and `ctsurv predict` writes per patient.

:class:`PatientReader` loads a `ctsurv survival` run's final model once (survival head, clinical schema, Breslow
baseline, the VLM it reads, and the OOD reference when the run saved one) and reads one scan at a time, the way
`ctsurv predict` reads a cohort: preprocessed as in training, encoder features pooled by the projector, the
model's P(yes) for every finding, its answer-position states reduced by the run's PCA, and the head's risk with
the patient's clinical data (missing values imputed as in training). On top of that it gives the scan's HU on the
model's grid (for a viewer), the survival curve against the training cohort's Kaplan-Meier curve, the risk's
percentile in the training cohort, the OOD score, evidence maps (:mod:`ctsurv.evaluation.explain`) and free questions.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from ctsurv.config import load_config
from ctsurv.errors import CtsurvError
from ctsurv.evaluation.explain import OutOfDistribution, occlusion_maps, pooled_features
from ctsurv.evaluation.vlm_eval import SHORT_ANSWER_TOKENS
from ctsurv.features.preprocess import Preprocessor
from ctsurv.features.store import STORE_DTYPE
from ctsurv.io.clinical import ClinicalSchema
from ctsurv.io.volumes import read_volume
from ctsurv.models.representation import answer_features
from ctsurv.models.survival import BreslowBaseline, SurvivalHead
from ctsurv.text.questions import PRESENCE_LABELS, PRESENCE_QUESTIONS, QUESTIONS
from ctsurv.training.checkpoint import load_checkpoint, refuse_untrained_language

DEFAULT_BLOCKS_ZYX = (6, 8, 8)  # evidence-map blocks (slice axis first): 384 occluded reads of a scan
RISK = "risk"  # the evidence-map target that is the survival risk (the others are presence labels)
DETAIL_QUESTIONS = tuple(q.text for q in QUESTIONS if q.kind not in ("presence", "report"))  # generated, as in predict


@dataclass(frozen=True)
class FittedModel:
    """Everything `ctsurv survival` saved in ``<run>/model``."""

    meta: dict
    head: SurvivalHead
    schema: ClinicalSchema
    baseline: BreslowBaseline
    model_dir: Path

    @classmethod
    def load(cls, run_dir: Path) -> FittedModel:
        model_dir = run_dir / "model" if (run_dir / "model" / "model.json").is_file() else run_dir
        if not (model_dir / "model.json").is_file():
            raise CtsurvError(f"{run_dir} holds no fitted survival model (model/model.json); pass a `ctsurv survival` --out folder")
        meta = json.loads((model_dir / "model.json").read_text())
        head = SurvivalHead(**meta["head"])
        head.load_state_dict(load_file(model_dir / "head.safetensors"), strict=True)
        return cls(
            meta, head.eval(), ClinicalSchema.from_dict(meta["clinical_schema"]), BreslowBaseline.from_dict(meta["breslow"]),
            model_dir,
        )

    def checkpoint(self) -> Path:
        """The VLM checkpoint the head reads: model.json's path relative to the model folder, else (the run folder
        moved without it) its absolute path when that still holds a checkpoint; a stage-0 (vision) checkpoint is refused."""
        path = self.model_dir / self.meta["checkpoint"]  # an absolute path (older runs) stays as it is
        fallback = self.meta.get("checkpoint_absolute")
        if not (path / "config.yaml").is_file() and fallback and (Path(fallback) / "config.yaml").is_file():
            path = Path(fallback)
        refuse_untrained_language(path)
        return path

    def image_features(self, p_yes: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        pca = self.meta["pca"]
        if pca is None:
            return p_yes
        projected = (hidden - np.asarray(pca["mean"])) @ np.asarray(pca["components"]).T
        return np.concatenate([p_yes, projected], 1)


@dataclass(frozen=True)
class Scan:
    """One scan as the model reads it."""

    id: str
    image: torch.Tensor  # (C, X, Y, Z) float32: the model's input
    hu: np.ndarray  # (X, Y, Z) float32 HU on the same grid (RAS), for display
    spacing_xyz: tuple[float, float, float]  # mm, of that grid


@dataclass(frozen=True)
class Reading:
    """What the model says of one patient."""

    id: str
    p_yes: dict[str, float]  # presence label -> P(yes)
    answers: dict[str, str]  # question -> answer (presence: "Yes." when P(yes) >= 0.5, as in predict)
    risk: float
    risk_percentile: float  # share of the training cohort's risks at or below it, %
    times: np.ndarray  # the training cohort's event times (the Breslow grid)
    survival: np.ndarray  # the patient's survival curve on ``times``
    km_times: np.ndarray | None  # the training cohort's Kaplan-Meier curve (None for runs saved before it)
    km_survival: np.ndarray | None
    ood_score: float | None  # Mahalanobis distance (None: the run saved no OOD reference)
    ood_percentile: float | None
    ood: bool | None

    def survival_at(self, t: float) -> float:
        """S(t) of the patient's step curve (1 before the first event time)."""
        i = int(np.searchsorted(self.times, t, side="right"))
        return 1.0 if i == 0 else float(self.survival[i - 1])


class PatientReader:
    """A survival run's final model, loaded once, reading one patient at a time."""

    def __init__(self, run_dir: str | Path, fitted: FittedModel | None = None) -> None:
        """``fitted``: the run's :class:`FittedModel` when the caller has loaded it already."""
        self.run_dir = Path(run_dir)
        self.fitted = fitted or FittedModel.load(self.run_dir)
        self.cfg = load_config(self.run_dir / "config.yaml")
        self.vlm, self.model_cfg = load_checkpoint(self.fitted.checkpoint())
        self.vlm.eval()
        self.preprocessor = Preprocessor(dataclasses.replace(self.cfg.data, cache_dir=None))
        ood_file = self.fitted.model_dir / "ood.safetensors"
        self.ood = OutOfDistribution.load(ood_file) if ood_file.is_file() else None
        km = self.fitted.meta.get("km")
        self.km = None if km is None else (np.asarray(km["times"]), np.asarray(km["survival"]))
        self.training_risk = np.asarray(self.fitted.meta["training_risk"])
        self.grid = np.asarray(self.fitted.baseline.to_dict()["times"])

    @property
    def schema(self):
        return self.fitted.schema

    # ------------------------------------------------------------------ inputs

    def scan(self, path: str | Path, spacing_zyx: tuple[float, float, float] | None = None, study_id: str | None = None) -> Scan:
        """Read and preprocess a volume (any format of :func:`~ctsurv.io.volumes.read_volume`)."""
        volume = read_volume(path, spacing_zyx, None, self.cfg.data.array_key)
        image, hu = self.preprocessor.with_hu(volume)
        image = image.to(STORE_DTYPE).float()  # the values training and predict read
        return Scan(study_id or Path(path).name.split(".")[0], image, hu, self.preprocessor.spacing_xyz)

    def clinical(self, values: dict[str, object] | None = None) -> torch.Tensor:
        """The design row (1, F) of the patient's clinical ``values`` (column -> value; absent or None = missing,
        imputed as in training). An unknown column, a non-number or an unseen level is a CtsurvError."""
        values = dict(values or {})
        known = (*self.schema.numeric, *self.schema.categorical)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise CtsurvError(f"unknown clinical field(s) {unknown}; this model uses {list(known)}")
        row = {}
        for col in self.schema.numeric:
            v = values.get(col)
            if v is None or (isinstance(v, str) and not v.strip()):
                row[col] = np.nan
                continue
            try:
                row[col] = float(v)
            except (TypeError, ValueError):
                raise CtsurvError(f"clinical field {col!r} must be a number, got {v!r}") from None
            if not math.isfinite(row[col]):
                raise CtsurvError(f"clinical field {col!r} must be a finite number, got {v!r}")
        for col in self.schema.categorical:
            v = values.get(col)
            row[col] = None if v is None or (isinstance(v, str) and not v.strip()) else str(v)
        frame = pd.DataFrame([row], columns=list(known))
        self.schema.check(frame)
        return torch.as_tensor(self.schema.transform(frame))

    # ------------------------------------------------------------------ the model

    @torch.no_grad()
    def scores(self, images: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """(B, Q + 1) per image (B, C, X, Y, Z): P(yes) for every presence question, then the risk (with the one
        patient's clinical row (1, F)), read as `ctsurv predict` reads them (pooled encoder features)."""
        p_yes, risk, _, _ = self._read(images, clinical)
        return torch.cat([torch.as_tensor(p_yes, dtype=torch.float32), risk.float()[:, None]], 1)

    def _read(self, images: torch.Tensor, clinical: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
        """P(yes) (B, Q), the risk (B,), the pooled encoder grids and the visual tokens of images (B, C, X, Y, Z)."""
        images = images.float()
        grids = self.vlm.projector.pool(self.vlm.vision_encoder.features(images))
        tokens = self.vlm.project_features(grids, cells=self.vlm.projector.cells(images))  # = vlm.encode_image
        p, h = answer_features(self.vlm, tokens, PRESENCE_QUESTIONS)
        p_yes, hidden = p.numpy().astype(np.float64), h.flatten(1).numpy().astype(np.float64)
        image = torch.as_tensor(self.fitted.image_features(p_yes, hidden), dtype=torch.float32)
        return p_yes, self.fitted.head.predict_risk(image, clinical.expand(len(images), -1)), grids, tokens

    @torch.no_grad()
    def read(self, scan: Scan, clinical: dict[str, object] | None = None, generate: bool = True) -> Reading:
        """The patient's answers, risk, survival curve and OOD score; ``generate``: also the generated answers to
        the detail questions (size, side, ...; slower)."""
        p_yes, risks, grids, tokens = self._read(scan.image[None], self.clinical(clinical))
        risk = float(risks[0])
        answers = {q: "Yes." if p >= 0.5 else "No." for q, p in zip(PRESENCE_QUESTIONS, p_yes[0])}
        if generate:  # the visual tokens just computed: the encoder runs once per read
            generated = self.vlm.generate(tokens.expand(len(DETAIL_QUESTIONS), -1, -1), list(DETAIL_QUESTIONS),
                                          max_new_tokens=SHORT_ANSWER_TOKENS)
            answers.update(zip(DETAIL_QUESTIONS, generated))
        ood_score = ood_pct = flagged = None
        if self.ood is not None:
            d = self.ood.distance(pooled_features(grids))
            ood_score, ood_pct, flagged = float(d[0]), float(self.ood.percentile(d)[0]), bool(d[0] > self.ood.threshold)
        km_t, km_s = (None, None) if self.km is None else self.km
        return Reading(
            scan.id, {label: float(p) for label, p in zip(PRESENCE_LABELS, p_yes[0])}, answers, risk,
            100 * float(np.mean(self.training_risk <= risk)), self.grid,
            self.fitted.baseline.survival_function(np.array([risk]), self.grid)[0], km_t, km_s, ood_score, ood_pct, flagged,
        )

    @torch.no_grad()
    def ask(self, scan: Scan, question: str, max_new_tokens: int | None = None) -> str:
        """The model's generated answer to a free ``question`` about the scan."""
        if not question.strip():
            raise CtsurvError("the question is empty; type a question about the scan")
        budget = self.model_cfg.pretrain.max_new_tokens if max_new_tokens is None else max_new_tokens
        return self.vlm.generate(self.vlm.encode_image(scan.image[None].float()), [question.strip()], max_new_tokens=budget)[0]

    def evidence(
        self, scan: Scan, clinical: dict[str, object] | None = None, blocks_zyx: tuple[int, int, int] = DEFAULT_BLOCKS_ZYX,
        batch_size: int = 16,
    ) -> dict[str, np.ndarray]:
        """Evidence maps (:func:`~ctsurv.evaluation.explain.occlusion_maps`) of every presence label and of the risk
        (:data:`RISK`), each a block map (bx, by, bz): how much hiding each block of the scan lowers the output
        (:func:`~ctsurv.evaluation.explain.to_voxels` puts it on the scan's grid)."""
        row = self.clinical(clinical)
        _, blocks = occlusion_maps(lambda x: self.scores(x, row), scan.image, tuple(reversed(blocks_zyx)), batch_size)
        return {t: blocks[k].numpy() for k, t in enumerate([*PRESENCE_LABELS, RISK])}
