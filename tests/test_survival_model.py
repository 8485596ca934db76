"""Survival head: Cox loss and Breslow curves against lifelines / scikit-survival, shapes, gradients, fitting."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from sksurv.datasets import load_veterans_lung_cancer
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.linear_model.coxph import CoxPHOptimizer
from sksurv.preprocessing import OneHotEncoder
from torchsurv.loss.cox import neg_partial_log_likelihood

from ctsurv.models.survival import (
    BreslowBaseline,
    ClinicalEncoder,
    RiskQueryHead,
    SurvivalHead,
    cox_loss,
    cox_partial_log_likelihood,
    fit_survival_head,
)


def rossi() -> tuple[np.ndarray, np.ndarray, np.ndarray, CoxPHFitter]:
    """Recidivism data (432 rows, 7 covariates, heavily tied weeks) and lifelines' Efron fit."""
    df = load_rossi()
    fitter = CoxPHFitter().fit(df, "week", "arrest")
    x = df.drop(columns=["week", "arrest"])
    return x.to_numpy(float), df["week"].to_numpy(float), df["arrest"].to_numpy(bool), fitter


def veterans() -> tuple[np.ndarray, np.ndarray, np.ndarray, CoxPHFitter]:
    """VA lung cancer trial (137 rows, 8 one-hot covariates, some tied days) and lifelines' Efron fit."""
    x, y = load_veterans_lung_cancer()
    x = OneHotEncoder().fit_transform(x).astype(float)
    time, event = np.array(y["Survival_in_days"], float), np.array(y["Status"], bool)
    fitter = CoxPHFitter().fit(x.assign(T=time, E=event), "T", "E")
    return x.to_numpy(float), time, event, fitter


def tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.as_tensor(a) for a in arrays]


# ------------------------------------------------------------------------------------------ Cox loss


@pytest.mark.parametrize("load", [rossi, veterans])
def test_partial_log_likelihood_matches_lifelines(load) -> None:
    x, time, event, fitter = load()
    assert len(np.unique(time[event])) < event.sum()  # tied event times: Efron and Breslow differ
    log_hz = x @ fitter.params_.to_numpy()  # (n,) uncentred; the partial likelihood ignores a shift
    ours = cox_partial_log_likelihood(*tensors(log_hz, event, time)).item()
    assert ours == pytest.approx(fitter.log_likelihood_, rel=1e-4)
    assert abs(ours / fitter.log_likelihood_ - 1) < 1e-6  # measured: 3e-8 (rossi), float32 arithmetic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        breslow = -neg_partial_log_likelihood(*tensors(log_hz, event, time), ties_method="breslow",
                                              reduction="sum").item()
    assert abs(breslow / fitter.log_likelihood_ - 1) > 1e-4  # so the check above does test Efron


def test_partial_log_likelihood_matches_scikit_survival() -> None:
    x, time, event, fitter = rossi()
    y = np.array(list(zip(event, time, strict=True)), dtype=[("event", bool), ("time", float)])
    coef = CoxPHSurvivalAnalysis(ties="efron").fit(x, y).coef_
    np.testing.assert_allclose(coef, fitter.params_.to_numpy(), atol=1e-6)
    # scikit-survival's own objective, the mean negative log-likelihood over all rows, at its coefficients
    reference = -CoxPHOptimizer(x, event, time, np.zeros(x.shape[1]), "efron").nlog_likelihood(coef) * len(x)
    ours = cox_partial_log_likelihood(*tensors(x @ coef, event, time)).item()
    assert ours == pytest.approx(reference, rel=1e-6)


def test_cox_loss_mean_is_per_event_with_and_without_ties() -> None:
    log_hz = torch.randn(8, generator=torch.Generator().manual_seed(0))
    event = torch.tensor([1, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    for time in (torch.tensor([1.0, 1, 1, 2, 3, 3, 4, 5]), torch.arange(8.0)):
        total = cox_loss(log_hz, event, time, reduction="sum")
        assert total.item() == pytest.approx(-cox_partial_log_likelihood(log_hz, event, time).item())
        assert cox_loss(log_hz, event, time).item() == pytest.approx(total.item() / 6)
    with warnings.catch_warnings():  # torchsurv's own "mean" divides by the 3 distinct event times here
        warnings.simplefilter("ignore")
        tied = torch.tensor([1.0, 1, 1, 2, 3, 3, 4, 5])
        total = cox_loss(log_hz, event, tied, reduction="sum")
        assert neg_partial_log_likelihood(log_hz, event, tied).item() == pytest.approx(total.item() / 3, rel=1e-5)


def test_cox_loss_float64_default_dtype_and_large_log_hazards() -> None:
    x, time, event, fitter = rossi()
    log_hz64 = torch.tensor(x @ fitter.params_.to_numpy(), requires_grad=True)  # float64 leaf
    loss = cox_loss(log_hz64, *tensors(event, time))
    assert loss.dtype == torch.float32
    loss.backward()
    assert log_hz64.grad is not None and log_hz64.grad.dtype == torch.float64
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:  # bare torchsurv crashes here in its tie path (a float64 accumulator, float32 values)
        with pytest.raises(RuntimeError, match="scatter"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            neg_partial_log_likelihood(log_hz64.detach(), *tensors(event, time))
        under_float64 = cox_loss(log_hz64.detach(), *tensors(event, time))
    finally:
        torch.set_default_dtype(previous)
    assert torch.get_default_dtype() == previous
    assert under_float64.item() == pytest.approx(loss.item(), rel=1e-6)
    shifted = cox_loss(log_hz64.detach() + 1000.0, *tensors(event, time))  # bare torchsurv: NaN
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-5)


def test_cox_loss_without_events_is_zero_and_attached() -> None:
    log_hz = torch.randn(5, requires_grad=True)
    loss = cox_loss(log_hz, torch.zeros(5, dtype=torch.bool), torch.arange(5.0))
    loss.backward()
    assert loss.item() == 0.0 and log_hz.grad is not None and torch.all(log_hz.grad == 0)
    with pytest.raises(ValueError, match="shape"):
        cox_loss(log_hz[:, None], torch.ones(5, dtype=torch.bool), torch.arange(5.0))


# -------------------------------------------------------------------------------------------- modules

GRID = [
    (image_dim, n_clinical, kind, clinical_dim)
    for image_dim in (0, 6)
    for n_clinical in (0, 3)
    for kind in ("linear", "mlp")
    for clinical_dim in (0, 4)
    if image_dim + n_clinical > 0
]


def inputs(image_dim: int, n_clinical: int, b: int = 7) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    g = torch.Generator().manual_seed(1)
    image = torch.randn(b, image_dim, generator=g) * 3 + 2 if image_dim else None
    clinical = torch.randn(b, n_clinical, generator=g) if n_clinical else None
    return image, clinical


@pytest.mark.parametrize("image_dim, n_clinical, kind, clinical_dim", GRID)
def test_head_shapes(image_dim: int, n_clinical: int, kind: str, clinical_dim: int) -> None:
    head = SurvivalHead(image_dim, n_clinical, kind, clinical_dim=clinical_dim, hidden=8)
    image, clinical = inputs(image_dim, n_clinical)
    assert head(image, clinical).shape == (7,)
    assert head.predict_risk(image, clinical).shape == (7,)
    empty = torch.zeros(7, 0)  # an absent input may also come as a (B, 0) matrix
    assert head(image if image_dim else empty, clinical if n_clinical else empty).shape == (7,)


def test_clinical_encoder_widths() -> None:
    assert ClinicalEncoder(0, 8).out_dim == 0 and not list(ClinicalEncoder(0, 8).parameters())
    assert ClinicalEncoder(0, 8)(torch.zeros(4, 0)).shape == (4, 0)
    assert ClinicalEncoder(5, 0)(torch.ones(4, 5)).shape == (4, 5)  # identity
    assert ClinicalEncoder(5, 3)(torch.ones(4, 5)).shape == (4, 3)


def test_head_rejects_wrong_inputs() -> None:
    with pytest.raises(ValueError, match="needs image or clinical"):
        SurvivalHead(0, 0)
    with pytest.raises(ValueError, match="kind"):
        SurvivalHead(4, 0, "transformer")  # type: ignore[arg-type]
    head = SurvivalHead(4, 0)
    with pytest.raises(ValueError, match="takes no clinical"):
        head(torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"image_repr must have shape \(B, 4\)"):
        head(torch.zeros(3, 5), None)
    with pytest.raises(ValueError, match="rows"):
        SurvivalHead(4, 2)(torch.zeros(3, 4), torch.zeros(2, 2))


@pytest.mark.parametrize("image_dim, n_clinical, kind, clinical_dim", GRID)
def test_gradients_reach_exactly_the_head(image_dim: int, n_clinical: int, kind: str, clinical_dim: int) -> None:
    torch.manual_seed(0)
    head = SurvivalHead(image_dim, n_clinical, kind, clinical_dim=clinical_dim, hidden=8, dropout=0.0)
    for p in head.parameters():  # off the zero start, so every weight gets a gradient
        torch.nn.init.normal_(p)
    image, clinical = inputs(image_dim, n_clinical)
    if image is not None:
        image.requires_grad_(True)  # joint training: the gradient flows on into the VLM
    event = torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    cox_loss(head(image, clinical), event, torch.arange(7.0)).backward()
    with_grad = {n for n, p in head.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {n for n, _ in head.named_parameters()}
    assert any(n.startswith("clinical_encoder.") for n in with_grad) == (n_clinical > 0 and clinical_dim > 0)
    assert {n for n, _ in head.named_buffers()} == {"image_mean", "image_std"}
    if image is not None:
        assert image.grad is not None and image.grad.abs().sum() > 0


def test_head_state_dict_round_trip_and_predict_risk_mode() -> None:
    head = SurvivalHead(6, 3, "mlp", clinical_dim=4, hidden=8, dropout=0.5)
    image, clinical = inputs(6, 3)
    head.set_image_standardisation(image)
    head.train()
    risk = head.predict_risk(image, clinical)
    assert head.training and not risk.requires_grad
    assert torch.equal(risk, head.predict_risk(image, clinical))  # dropout off
    rebuilt = SurvivalHead(**head.config)
    rebuilt.load_state_dict(head.state_dict(), strict=True)
    assert torch.equal(rebuilt.predict_risk(image, clinical), risk)


# ------------------------------------------------------------------------------------------- fitting


def ph_data(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Proportional-hazards data: 2 image features on an arbitrary scale, 2 standardised clinical columns."""
    rng = np.random.default_rng(seed)
    image = rng.normal([5.0, -2.0], [3.0, 0.5], size=(n, 2))
    clinical = rng.normal(size=(n, 2))
    lp = 0.25 * image[:, 0] - 1.0 * image[:, 1] + 0.7 * clinical[:, 0] - 0.4 * clinical[:, 1]
    event_time = rng.exponential(1.0 / (0.1 * np.exp(lp - lp.mean())))
    censor = rng.exponential(15.0, n)
    return image, clinical, np.minimum(event_time, censor).round(1), event_time <= censor


def test_fit_linear_head_recovers_lifelines_coefficients() -> None:
    image, clinical, time, event = ph_data()
    df = pd.DataFrame(np.hstack([image, clinical]), columns=["i0", "i1", "c0", "c1"]).assign(T=time, E=event)
    reference = CoxPHFitter().fit(df, "T", "E").params_.to_numpy()
    head = fit_survival_head(SurvivalHead(2, 2, "linear"), *tensors(image, clinical, time, event),
                             epochs=500, lr=0.05, weight_decay=0.0, seed=0)
    w = head.net.weight.detach().double().numpy()[0]
    coef = np.concatenate([w[:2] / head.image_std.double().numpy(), w[2:]])  # back to raw image units
    np.testing.assert_allclose(coef, reference, atol=0.05)  # measured max |diff| 1.2e-5
    # a clinical-only (p only) and an image-only head fit too
    only_clinical = fit_survival_head(SurvivalHead(0, 2), None, *tensors(clinical, time, event),
                                      epochs=100, seed=0)
    assert only_clinical.predict_risk(None, torch.as_tensor(clinical).float()).shape == (500,)


def test_fit_is_deterministic_for_a_seed_and_leaves_global_rng() -> None:
    image, clinical, time, event = ph_data(n=120)
    args = tensors(image, clinical, time, event)
    heads = [SurvivalHead(2, 2, "mlp", clinical_dim=4, hidden=8) for _ in range(3)]  # different initial draws
    state = torch.get_rng_state()
    a, b, c = (fit_survival_head(h, *args, epochs=30, seed=s) for h, s in zip(heads, (3, 3, 4), strict=True))
    assert torch.equal(torch.get_rng_state(), state)
    assert not a.training
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.net[0].weight, c.net[0].weight)
    untrained = SurvivalHead(2, 2, "mlp", clinical_dim=4, hidden=8)
    untrained.set_image_standardisation(args[0].float())
    x = (args[0].float(), args[1].float())
    assert cox_loss(a.predict_risk(*x), args[3], args[2]) < cox_loss(untrained.predict_risk(*x), args[3], args[2])


def test_l2_shrinks_the_coefficients() -> None:
    image, clinical, time, event = ph_data(n=200)
    args = tensors(image, clinical, time, event)
    free = fit_survival_head(SurvivalHead(2, 2), *args, epochs=300, seed=0)
    ridge = fit_survival_head(SurvivalHead(2, 2), *args, epochs=300, seed=0, l2=1.0)
    assert ridge.net.weight.norm() < 0.8 * free.net.weight.norm()


# ------------------------------------------------------------------------------------------- risk query


def test_risk_query_starts_as_mean_pooling_and_learns_where_the_signal_is() -> None:
    """At its zero start the query is the linear head on mean-pooled standardised tokens; trained on data whose
    risk lives in one token, its attention moves there and it beats mean pooling."""
    rng = np.random.default_rng(0)
    n, tokens, dim = 400, 6, 4
    x = rng.normal(size=(n, tokens, dim))
    x[:, 2, 0] += 3.0  # token 2 stands out on feature 0, so the query can find it
    risk = 1.5 * x[:, 2, 1]  # the true log-hazard is feature 1 of token 2 only
    time = rng.exponential(np.exp(-risk))
    event = rng.random(n) < 0.8
    clinical = rng.normal(size=(n, 2))
    x_t, c_t, t_t, e_t = tensors(x, clinical, time, event)

    head = RiskQueryHead(dim, 2)
    head.set_image_standardisation(x_t.float())
    torch.testing.assert_close(head.attention(x_t.float()), torch.full((n, tokens), 1 / tokens))
    z = (x_t.double() - head.token_mean) / head.token_std
    with torch.no_grad():
        head.head.net.weight.normal_()
    torch.testing.assert_close(head(x_t.float(), c_t.float()), head.head(z.mean(1), c_t.float()))

    fitted = fit_survival_head(RiskQueryHead(dim, 2), x_t.float(), c_t.float(), t_t, e_t, epochs=400, lr=0.05, seed=0)
    with torch.no_grad():
        attention = fitted.attention(x_t.float()).mean(0)
    assert int(attention.argmax()) == 2 and float(attention[2]) > 0.5
    mean_pooled = fit_survival_head(SurvivalHead(dim, 2), x_t.float().mean(1), c_t.float(), t_t, e_t, epochs=400, seed=0)
    assert cox_loss(fitted.predict_risk(x_t.float(), c_t.float()), e_t, t_t) < cox_loss(
        mean_pooled.predict_risk(x_t.float().mean(1), c_t.float()), e_t, t_t
    )


def test_risk_query_gradients_and_shape_errors() -> None:
    head = RiskQueryHead(4, 3)
    with torch.no_grad():
        head.query.normal_()
        head.head.net.weight.normal_()
    head(torch.randn(5, 6, 4), torch.randn(5, 3)).sum().backward()
    assert {n for n, p in head.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0} == {
        "query", "head.net.weight"
    }
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, N, 4\)"):
        head(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="clinical must have shape"):
        head(torch.randn(5, 6, 4), torch.randn(5, 2))


# ------------------------------------------------------------------------------------------- Breslow


def test_breslow_matches_lifelines_baseline_and_curves() -> None:
    x, time, event, fitter = rossi()
    df = load_rossi()
    lp_centred = fitter.predict_log_partial_hazard(df).to_numpy()  # lifelines' convention: (x - mean) beta
    baseline = BreslowBaseline().fit(time, event, lp_centred)
    timeline = fitter.baseline_cumulative_hazard_.index.to_numpy()  # every distinct duration
    np.testing.assert_allclose(baseline.cumulative_hazard(timeline),
                               fitter.baseline_cumulative_hazard_.iloc[:, 0].to_numpy(), rtol=1e-10, atol=0)
    reference = fitter.predict_survival_function(df).to_numpy().T  # (n, T)
    ours = baseline.survival_function(lp_centred, timeline)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)  # measured max |diff| ~1e-15
    # any other convention for the risk (here uncentred x beta) gives the same curves when used throughout
    lp_raw = x @ fitter.params_.to_numpy()
    raw = BreslowBaseline().fit(time, event, lp_raw).survival_function(lp_raw, timeline)
    np.testing.assert_allclose(raw, reference, rtol=0, atol=1e-6)


def test_breslow_matches_scikit_survival_curves() -> None:
    x, time, event, _ = veterans()
    y = np.array(list(zip(event, time, strict=True)), dtype=[("event", bool), ("time", float)])
    model = CoxPHSurvivalAnalysis(ties="efron").fit(x, y)
    times = np.unique(time[event])
    reference = np.stack([fn(times) for fn in model.predict_survival_function(x)])
    ours = BreslowBaseline().fit(time, event, x @ model.coef_).survival_function(x @ model.coef_, times)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_breslow_curves_are_monotone_and_ordered_by_risk() -> None:
    _, _, time, event = ph_data(n=150)
    risk = np.random.default_rng(0).normal(size=150)
    baseline = BreslowBaseline().fit(torch.as_tensor(time), torch.as_tensor(event), torch.as_tensor(risk))
    grid = np.linspace(0, time.max() * 1.2, 60)
    curves = baseline.survival_function(np.sort(risk), grid)  # (150, 60), rows by increasing risk
    assert curves.shape == (150, 60)
    assert np.all(np.diff(curves, axis=1) <= 0)  # non-increasing in t
    assert np.all(np.diff(curves, axis=0) <= 0)  # lower for higher risk
    assert np.all(curves[:, grid < time[event].min()] == 1.0)
    assert np.all((curves > 0) & (curves <= 1))


def test_breslow_dict_round_trip() -> None:
    _, _, time, event = ph_data(n=100)
    risk = np.linspace(-1, 1, 100)
    baseline = BreslowBaseline().fit(time, event, risk)
    restored = BreslowBaseline.from_dict(json.loads(json.dumps(baseline.to_dict())))
    grid = np.linspace(0, 40, 33)
    assert np.array_equal(restored.survival_function(risk, grid), baseline.survival_function(risk, grid))
    with pytest.raises(ValueError, match="malformed"):
        BreslowBaseline.from_dict({"times": [2.0, 1.0], "cumulative_hazard": [0.1, 0.2]})
    with pytest.raises(ValueError, match="malformed"):
        BreslowBaseline.from_dict({"times": [1.0]})
    with pytest.raises(ValueError, match="at least one event"):
        BreslowBaseline().fit(time, np.zeros(100, bool), risk)


def test_risk_query_standardisation_is_numpys_float64_mean_and_std_over_studies_and_tokens() -> None:
    """The token statistics are computed a slice of rows at a time (20,400 rows of 128 here: two slices); they
    equal numpy's float64 mean and population std over every study's tokens, and a constant feature gets std 1."""
    rng = np.random.default_rng(0)
    tokens = (rng.normal(size=(600, 34, 128)) * rng.uniform(0.1, 50, 128) + rng.normal(0, 100, 128)).astype(np.float32)
    tokens[:, :, 5] = 3.0
    head = RiskQueryHead(128, 2)
    head.set_image_standardisation(torch.from_numpy(tokens))
    flat = tokens.reshape(-1, 128).astype(np.float64)
    std = flat.std(0)
    std[5] = 1.0
    np.testing.assert_allclose(head.token_mean.numpy(), flat.mean(0).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(head.token_std.numpy(), std.astype(np.float32), rtol=1e-6)
    z = head._standardise(torch.from_numpy(tokens[:3])).numpy()
    np.testing.assert_allclose(z, (tokens[:3] - head.token_mean.numpy()) / head.token_std.numpy(), rtol=1e-6, atol=1e-6)
