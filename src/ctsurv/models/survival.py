"""Survival on top of the CT-VLM: Cox loss (torchsurv), clinical encoder, survival head, Breslow curves.

* :func:`cox_loss` / :func:`cox_partial_log_likelihood`: the Cox partial likelihood with Efron's handling of
  tied event times, computed by ``torchsurv.loss.cox.neg_partial_log_likelihood``. Two facts about
  torchsurv 0.2.0 shape the wrapper (both checked in tests/test_survival_model.py):

  - dtype: its input validators cast ``log_hz`` and ``time`` to float32, and its tie code allocates
    accumulators with ``torch.zeros(K)`` (the *default* dtype). So float64 inputs are silently computed in
    float32, and whenever the default dtype is float64 (``torch.set_default_dtype``) or the validators are
    skipped (``torch.jit`` tracing) the tie path crashes with "scatter(): Expected self.dtype to be equal to
    src.dtype". We cast to float32 explicitly and run the call under a float32 default dtype. Float32 is
    ample: on rossi the sum log-likelihood agrees with lifelines to ~3e-8 relative.
  - its tie path computes ``exp(log_hz)`` without a max shift (NaN once log_hz > ~88); the partial
    likelihood is invariant to a common shift, so we subtract the (detached) maximum first. Times are
    replaced by their dense ranks (only the order matters), so float32 cannot merge distinct times.
  - reduction: its "sum" is the total negative log-likelihood; its "mean" divides by the number of
    *distinct event times* when times are tied but by the number of *events* otherwise. We always ask for
    "sum" and divide by the number of events ourselves, so the training loss has one meaning.

* :class:`ClinicalEncoder` and :class:`SurvivalHead`: (image representation, clinical design matrix) ->
  log-hazard. ``linear`` is a Cox model on [standardised image features, clinical]; ``mlp`` a small MLP.
* :class:`RiskQueryHead`: the alternative representation, a learned query attending over the LM's
  visual-token states (compared against the answers in the same folds: ``model_risk_query``).
* :func:`fit_survival_head`: full-batch AdamW on precomputed features, deterministic for a seed.
* :class:`BreslowBaseline`: Breslow's baseline cumulative hazard, as lifelines' ``CoxPHFitter`` computes it,
  and survival curves S(t | risk) = exp(-H0(t) exp(risk)).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torchsurv.loss.cox import neg_partial_log_likelihood

from ctsurv.errors import CtsurvError

HeadKind = Literal["linear", "mlp"]
ArrayLike = np.ndarray | torch.Tensor | list[float]


# ----------------------------------------------------------------------------------------------- Cox loss


def cox_partial_log_likelihood(log_hz: torch.Tensor, event: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """Sum Cox partial log-likelihood (Efron ties), a float32 scalar <= 0; differentiable in ``log_hz``.

    ``log_hz`` (n,) log relative hazards, ``event`` (n,) bool, ``time`` (n,) event/censoring times.
    With no event (or fewer than two subjects) the likelihood is 1: returns 0, still attached to the graph.
    """
    if log_hz.dim() != 1 or event.shape != log_hz.shape or time.shape != log_hz.shape:
        raise ValueError(f"log_hz, event and time must all have shape (n,); got {tuple(log_hz.shape)}, "
                         f"{tuple(event.shape)}, {tuple(time.shape)}")
    event = event.bool()
    log_hz = log_hz.float()
    if log_hz.numel() < 2 or not bool(event.any()):
        return log_hz.sum() * 0.0
    log_hz = log_hz - log_hz.detach().max()  # shift-invariant; keeps exp() finite in torchsurv's tie path
    rank = torch.unique(time, return_inverse=True)[1].float()  # (n,) exact ties kept, float32-safe
    with _float32_default(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Ties in `time` detected")
        nll = neg_partial_log_likelihood(log_hz, event, rank, ties_method="efron", reduction="sum")
    return -nll


def cox_loss(
    log_hz: torch.Tensor, event: torch.Tensor, time: torch.Tensor, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Efron ties); ``mean`` divides by the number of events.

    The mean keeps learning rates independent of the cohort size and of the share of censored patients.
    """
    nll = -cox_partial_log_likelihood(log_hz, event, time)
    if reduction == "sum":
        return nll
    if reduction == "mean":
        return nll / max(int(event.bool().sum()), 1)
    raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")


@contextlib.contextmanager
def _float32_default() -> Iterator[None]:
    """Run a block with float32 as torch's default dtype (torchsurv's tie path allocates with it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run a block with one intra-op thread (for full-batch fits on small tensors)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------- modules


class ClinicalEncoder(nn.Module):
    """Clinical design matrix (B, p) -> features (B, out_dim).

    ``dim=0``: identity (out_dim = p), so a linear head on top is exactly a Cox model on the clinical
    columns. ``dim>0``: Linear(p, dim) + GELU + dropout. ``p=0``: no parameters, out_dim = 0.
    """

    def __init__(self, n_features: int, dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        if n_features < 0 or dim < 0:
            raise ValueError(f"n_features and dim must be >= 0; got {n_features}, {dim}")
        self.n_features = n_features
        self.out_dim = dim if (dim > 0 and n_features > 0) else n_features
        self.net: nn.Module = (
            nn.Sequential(nn.Linear(n_features, dim), nn.GELU(), nn.Dropout(dropout))
            if dim > 0 and n_features > 0 else nn.Identity()
        )

    def forward(self, clinical: torch.Tensor) -> torch.Tensor:
        return self.net(clinical)  # (B, out_dim)


class SurvivalHead(nn.Module):
    """Fuses an image representation (B, Dr) and clinical features (B, p) into a log-hazard (B,).

    Either input may be absent (``image_dim=0`` or ``n_clinical=0``; pass None), for the clinical-only and
    image-only variants. Image features are standardised with training statistics held in buffers
    (:meth:`set_image_standardisation`); clinical features come already standardised from ClinicalSchema.

    - ``linear``: log-hazard = w . [z(image), encoder(clinical)], no bias (a Cox model has no intercept).
      Zero-initialised, so training starts at beta = 0 like lifelines.
    - ``mlp``: Linear(in, hidden) + GELU + Dropout + Linear(hidden, 1, no bias).
    """

    def __init__(self, image_dim: int, n_clinical: int, kind: HeadKind = "linear", clinical_dim: int = 0,
                 hidden: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"survival head kind must be 'linear' or 'mlp', not {kind!r}")
        if image_dim < 0 or n_clinical < 0 or image_dim + n_clinical == 0:
            raise ValueError(f"a survival head needs image or clinical inputs; got image_dim={image_dim}, "
                             f"n_clinical={n_clinical}")
        self.config: dict[str, Any] = {"image_dim": image_dim, "n_clinical": n_clinical, "kind": kind,
                                      "clinical_dim": clinical_dim, "hidden": hidden, "dropout": dropout}
        self.image_dim, self.n_clinical, self.kind = image_dim, n_clinical, kind
        self.clinical_encoder = ClinicalEncoder(n_clinical, clinical_dim, dropout if kind == "mlp" else 0.0)
        self.register_buffer("image_mean", torch.zeros(image_dim))  # (Dr,)
        self.register_buffer("image_std", torch.ones(image_dim))  # (Dr,)
        in_dim = image_dim + self.clinical_encoder.out_dim
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, 1, bias=False)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, 1, bias=False))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh initialisation (from torch's global RNG); the linear head starts at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        if self.kind == "linear":
            nn.init.zeros_(self.net.weight)

    @torch.no_grad()
    def set_image_standardisation(self, image_repr: torch.Tensor) -> None:
        """Store the mean and (population) std of training image features (B, Dr); std 0 -> 1."""
        if self.image_dim == 0:
            return
        x = self._check(image_repr, self.image_dim, "image_repr").double()
        std = x.std(0, unbiased=False)
        self.image_mean.copy_(x.mean(0))
        self.image_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, image_repr: torch.Tensor | None, clinical: torch.Tensor | None) -> torch.Tensor:
        """Log-hazard (B,), differentiable in the parameters and in ``image_repr``."""
        for name, value, width in (("image_repr", image_repr, self.image_dim), ("clinical", clinical,
                                                                                self.n_clinical)):
            if width == 0 and value is not None and value.shape[-1] != 0:
                raise ValueError(f"this survival head takes no {name} but got shape {tuple(value.shape)}")
        parts = []
        if self.image_dim:
            x = self._check(image_repr, self.image_dim, "image_repr").to(self.image_mean.dtype)
            parts.append((x - self.image_mean) / self.image_std)  # (B, Dr)
        if self.n_clinical:
            c = self._check(clinical, self.n_clinical, "clinical").to(self.image_mean.dtype)
            parts.append(self.clinical_encoder(c))  # (B, d)
        if len(parts) == 2 and len(parts[0]) != len(parts[1]):
            raise ValueError(f"image_repr has {len(parts[0])} rows but clinical has {len(parts[1])}")
        return self.net(torch.cat(parts, dim=1)).squeeze(1)  # (B,)

    @torch.no_grad()
    def predict_risk(self, image_repr: torch.Tensor | None, clinical: torch.Tensor | None) -> torch.Tensor:
        """Risk (= log-hazard) (B,) for evaluation: dropout off, no gradients; the module's mode is restored."""
        was_training = self.training
        self.eval()
        try:
            return self(image_repr, clinical)
        finally:
            self.train(was_training)

    @staticmethod
    def _check(x: torch.Tensor | None, width: int, name: str) -> torch.Tensor:
        if x is None or x.dim() != 2 or x.shape[1] != width:
            got = "None" if x is None else tuple(x.shape)
            raise ValueError(f"{name} must have shape (B, {width}); got {got}")
        return x


class RiskQueryHead(nn.Module):
    """A learned risk query over the language model's visual-token states (B, N, D), fused with clinical data.

    The alternative to reading the answers: one learned query vector attends over the N visual-token
    hidden states of the CT-VLM (standardised per feature with training statistics), and the attended
    state goes with the clinical features into a :class:`SurvivalHead` (``linear`` or ``mlp``). The query
    starts at zero, i.e. at mean pooling. ``tokens_dim`` is D; the inner head's image standardisation is
    left at the identity because the tokens are standardised here.
    """

    def __init__(self, tokens_dim: int, n_clinical: int, kind: HeadKind = "linear") -> None:
        super().__init__()
        self.config: dict[str, Any] = {"tokens_dim": tokens_dim, "n_clinical": n_clinical, "kind": kind}
        self.query = nn.Parameter(torch.zeros(tokens_dim))  # (D,)
        self.register_buffer("token_mean", torch.zeros(tokens_dim))
        self.register_buffer("token_std", torch.ones(tokens_dim))
        self.head = SurvivalHead(tokens_dim, n_clinical, kind)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.query)
        self.head.reset_parameters()

    @torch.no_grad()
    def set_image_standardisation(self, tokens: torch.Tensor) -> None:
        """Mean and std of every feature over the training studies and their N tokens; std 0 -> 1."""
        x = self._check(tokens).flatten(0, 1)  # (B*N, D); float64 a slice of rows at a time, not all at once
        step = max(1, 2**21 // x.shape[1])
        mean = sum(part.double().sum(0) for part in x.split(step)) / len(x)
        std = (sum(((part.double() - mean) ** 2).sum(0) for part in x.split(step)) / len(x)).sqrt()
        self.token_mean.copy_(mean)
        self.token_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Weights (B, N) of the query over each study's visual tokens."""
        return self._weights(self._standardise(tokens))

    def forward(self, tokens: torch.Tensor | None, clinical: torch.Tensor | None) -> torch.Tensor:
        return self.forward_standardised(self._standardise(tokens), clinical)

    def forward_standardised(self, z: torch.Tensor, clinical: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward` on tokens already standardised (B, N, D): a fit standardises its training tokens once,
        not every epoch (at 3,000 studies that was a fifth of `ctsurv survival`)."""
        pooled = torch.bmm(self._weights(z).unsqueeze(1), z).squeeze(1)  # (B, D), no (B, N, D) product in memory
        return self.head(pooled, clinical)

    def _standardise(self, tokens: torch.Tensor | None) -> torch.Tensor:
        z = self._check(tokens).to(self.token_mean.dtype) - self.token_mean
        return z.div_(self.token_std)  # in place: one (B, N, D) copy of the tokens, not two

    def _weights(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(z @ self.query / math.sqrt(z.shape[-1]), dim=1)

    predict_risk = SurvivalHead.predict_risk

    def _check(self, tokens: torch.Tensor | None) -> torch.Tensor:
        width = self.config["tokens_dim"]
        if tokens is None or tokens.dim() != 3 or tokens.shape[2] != width:
            got = "None" if tokens is None else tuple(tokens.shape)
            raise ValueError(f"tokens must have shape (B, N, {width}); got {got}")
        return tokens


def fit_survival_head(
    head: SurvivalHead | RiskQueryHead,
    image_repr: torch.Tensor | None,
    clinical: torch.Tensor | None,
    time: torch.Tensor,
    event: torch.Tensor,
    epochs: int = 500,
    lr: float = 0.05,
    weight_decay: float = 0.0,
    seed: int = 0,
    *,
    l2: float = 0.0,
) -> SurvivalHead:
    """Train ``head`` from a fresh seeded initialisation, full batch, AdamW on :func:`cox_loss` (mean).

    For one CV fold on precomputed features. ``l2`` adds ``l2/2 * sum(w**2)`` over weight matrices to the
    loss (a ridge penalty, unlike AdamW's decoupled ``weight_decay``). Image standardisation statistics
    are taken from ``image_repr``. The same inputs and seed give the same head; torch's global RNG state
    is left as it was. Returns ``head`` in eval mode. Raises CtsurvError when the loss or the weights stop being
    finite (``lr`` too high).

    Runs with one intra-op thread (restored afterwards): the tensors are tiny, and torch's thread pool
    only adds synchronisation; on a busy 2-core machine a 500-epoch fit at n=500 took 15 s with 2
    threads (torchsurv's ``searchsorted`` alone ~16 ms a call) and 1.8 s with one.
    """
    image_repr = None if image_repr is None else image_repr.detach().float()
    clinical = None if clinical is None else clinical.detach().float()
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(seed)
        head.reset_parameters()
        if image_repr is not None:
            head.set_image_standardisation(image_repr)
        head.train()
        params = [p for p in head.parameters() if p.requires_grad]
        # the ridge penalty: weight matrices, and a risk query (whose length sharpens its attention)
        weights = [p for name, p in head.named_parameters() if p.requires_grad and (p.dim() > 1 or name == "query")]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        if isinstance(head, RiskQueryHead):  # its standardised tokens do not change while it trains
            tokens = head._standardise(image_repr)
            forward = lambda: head.forward_standardised(tokens, clinical)
        else:
            forward = lambda: head(image_repr, clinical)
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            log_hz = forward()
            if not torch.isfinite(log_hz).all():  # torchsurv would refuse it with a pydantic ValidationError
                raise _diverged(lr)
            loss = cox_loss(log_hz, event, time)
            if l2 > 0:
                loss = loss + 0.5 * l2 * sum((w**2).sum() for w in weights)
            if not torch.isfinite(loss):
                raise _diverged(lr)
            loss.backward()
            optimizer.step()
        if not all(torch.isfinite(p).all() for p in params):
            raise _diverged(lr)
    return head.eval()


def _diverged(lr: float) -> CtsurvError:
    """The error of a head fit whose loss or weights stopped being finite (a learning rate too high)."""
    return CtsurvError(f"the survival head diverged (loss is not finite) at survival.lr={lr:g}; lower survival.lr")


# -------------------------------------------------------------------------------------- Breslow baseline


class BreslowBaseline:
    """Breslow's baseline cumulative hazard H0(t), fitted on a training fold's time, event and risk.

    H0(t) = sum over distinct event times s <= t of d(s) / sum_{j: T_j >= s} exp(risk_j), the estimator
    lifelines' CoxPHFitter uses (also after an Efron fit). It is the baseline of a subject with risk 0 in
    the convention of the risks it was fitted on; curves for new risks in the same convention do not depend
    on that convention. S(t | risk) = exp(-H0(t) exp(risk)) is a right-continuous step function, 1 before
    the first event time and flat after the last one. Computed in float64 numpy.
    """

    def __init__(self) -> None:
        self.times = np.zeros(0)  # (K,) distinct event times, increasing
        self.cumhaz = np.zeros(0)  # (K,) H0 at those times

    def fit(self, time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> BreslowBaseline:
        t, e, r = _vector(time), _vector(event).astype(bool), _vector(risk)
        if not (len(t) == len(e) == len(r)) or not np.isfinite(t).all() or not np.isfinite(r).all():
            raise ValueError(f"time, event and risk must be finite vectors of one length; got lengths "
                             f"{len(t)}, {len(e)}, {len(r)}")
        if not e.any():
            raise ValueError("the Breslow baseline needs at least one event in the training rows")
        shift = r.max()
        order = np.argsort(t, kind="stable")
        t, e, w = t[order], e[order], np.exp(r[order] - shift)
        distinct, first = np.unique(t, return_index=True)
        at_risk = np.cumsum(w[::-1])[::-1][first]  # (U,) sum of exp(risk - shift) over T_j >= s
        deaths = np.bincount(np.searchsorted(distinct, t[e]), minlength=len(distinct))  # (U,)
        keep = deaths > 0
        self.times = distinct[keep]
        self.cumhaz = np.cumsum(deaths[keep] / at_risk[keep]) * math.exp(-shift)
        return self

    def cumulative_hazard(self, times: ArrayLike) -> np.ndarray:
        """H0 at ``times`` (T,), a right-continuous step function."""
        idx = np.searchsorted(self.times, _vector(times), side="right")  # number of event times <= t
        return np.concatenate([[0.0], self.cumhaz])[idx]

    def survival_function(self, risk: ArrayLike, times: ArrayLike) -> np.ndarray:
        """S(t | risk) (n, T) = exp(-H0(t) exp(risk)), for risks in the convention the baseline was fitted on."""
        h0 = self.cumulative_hazard(times)  # (T,)
        with np.errstate(divide="ignore"):
            log_h0 = np.log(h0)  # -inf before the first event time -> S = 1
        return np.exp(-np.exp(log_h0[None, :] + _vector(risk)[:, None]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (floats round-trip exactly through json)."""
        return {"times": self.times.tolist(), "cumulative_hazard": self.cumhaz.tolist()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BreslowBaseline:
        if not isinstance(raw, dict) or set(raw) != {"times", "cumulative_hazard"}:
            raise ValueError(f"malformed Breslow baseline: expected keys ['cumulative_hazard', 'times'], got "
                             f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
        times, cumhaz = np.asarray(raw["times"], float), np.asarray(raw["cumulative_hazard"], float)
        if times.ndim != 1 or times.shape != cumhaz.shape or np.any(np.diff(times) <= 0) or np.any(
                np.diff(cumhaz) < 0):
            raise ValueError("malformed Breslow baseline: times must increase strictly and the cumulative "
                             "hazard must be non-decreasing, with one value per time")
        baseline = cls()
        baseline.times, baseline.cumhaz = times, cumhaz
        return baseline


def _vector(x: ArrayLike) -> np.ndarray:
    """A 1-D float64 numpy copy of a tensor, array or list."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    out = np.asarray(x, dtype=float)
    if out.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {out.shape}")
    return out
