"""The projector's findings token: the closed-form fit against scikit-learn, its out-of-fold logits, the
token itself, its checkpoint round trip, and the configurations that cannot have one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_pretrain_cli import cohort, pretrain  # noqa: F401 (the fixture)
from tiny_setups import (
    assert_user_error,
    build,
    one_torch_thread,  # noqa: F401 (autouse)
    tiny_config,
)

from ctsurv.models.vlm import PRESENCE_LABELS
from ctsurv.training.checkpoint import load_checkpoint, save_checkpoint
from ctsurv.training.findings import FOLDS, C, fit_findings_head

N = 40


@pytest.fixture
def model():
    return build(tiny_config("projector.max_token=true", "projector.findings_token=true"))


def data(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, Dv, 5) whose channel 3 maximum tells finding 0, and labels with gaps."""
    g = torch.Generator().manual_seed(seed)
    dv, p = model.vision_encoder.out_dim, len(PRESENCE_LABELS)
    pooled = torch.randn(N, dv, model.projector.num_pooled, generator=g)
    labels = torch.randint(0, 2, (N, p), generator=g)
    pooled[:, 3, -1] += 2.0 * labels[:, 0]
    labels[:5, 1] = -1  # the report is silent on finding 1 for five studies
    labels[:, 2] = 1  # every training study has finding 2
    labels[:, 3] = -1  # no report mentions finding 3
    return pooled, labels


def summary(pooled: torch.Tensor) -> np.ndarray:
    return torch.cat([pooled[:, :, :-1].mean(-1), pooled[:, :, -1]], 1).double().numpy()


def test_the_fitted_head_is_scikit_learns_logistic_regression(model) -> None:
    pooled, labels = data(model)
    fit_findings_head(model.projector.findings, pooled, labels)
    ours = model.projector.findings(pooled).double().numpy()
    x = summary(pooled)
    for j in (0, 1):
        known = labels[:, j].numpy() >= 0
        # one standardisation from all studies, as the head stores it; the fit on the studies with a label
        scaler = StandardScaler().fit(x)
        reference = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(x[known]), labels[known, j].numpy())
        np.testing.assert_allclose(ours[:, j], reference.decision_function(scaler.transform(x)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours[:, 2], np.log(40.5 / 0.5), rtol=1e-6)  # one class: the smoothed prior
    np.testing.assert_allclose(ours[:, 3], 0.0)  # never labelled: no information
    auc_like = ours[labels[:, 0] == 1, 0].mean() > ours[labels[:, 0] == 0, 0].mean()
    assert auc_like  # the planted signal is read


def test_out_of_fold_logits_come_from_the_other_folds(model) -> None:
    pooled, labels = data(model, seed=1)
    oof = fit_findings_head(model.projector.findings, pooled, labels, seed=3).double().numpy()
    assert oof.shape == (N, len(PRESENCE_LABELS))
    x, y = summary(pooled), labels[:, 0].numpy()
    expected = np.zeros(N)
    for fit_rows, out_rows in KFold(FOLDS, shuffle=True, random_state=3).split(x):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)).fit(x[fit_rows], y[fit_rows])
        expected[out_rows] = pipe.decision_function(x[out_rows])
    np.testing.assert_allclose(oof[:, 0], expected, rtol=1e-4, atol=1e-4)
    # not the in-sample logits of the head fitted on everything
    assert not np.allclose(oof[:, 0], model.projector.findings(pooled)[:, 0].double().numpy(), atol=1e-3)


def test_the_findings_token_is_the_last_visual_token(model) -> None:
    pooled, labels = data(model)
    fit_findings_head(model.projector.findings, pooled, labels)
    assert model.num_image_tokens == model.projector.num_pooled + 1 == 6
    tokens = model.project_features(pooled)
    assert tokens.shape == (N, 6, model.language_model.config.hidden_size)
    given = torch.zeros(N, len(PRESENCE_LABELS))  # p = 0.5 everywhere: the embedding's bias alone
    overridden = model.project_features(pooled, given)
    torch.testing.assert_close(overridden[:, :5], tokens[:, :5])
    torch.testing.assert_close(overridden[:, 5], model.projector.findings_embed.bias.expand(N, -1))
    assert not torch.allclose(overridden[:, 5], tokens[:, 5])
    # the head's tensors are buffers: fitted, saved, never trained
    names = {n for n, _ in model.projector.named_parameters()}
    assert {"findings_embed.weight", "findings_embed.bias"} <= names and not any("findings." in n for n in names)
    model.project_features(pooled).sum().backward()
    assert model.projector.findings_embed.weight.grad is not None


def test_the_fitted_head_survives_a_checkpoint(model, tmp_path: Path) -> None:
    pooled, labels = data(model)
    fit_findings_head(model.projector.findings, pooled, labels)
    loaded, cfg = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model, model_cfg()))
    assert cfg.projector.findings_token
    torch.testing.assert_close(loaded.projector.findings(pooled), model.projector.findings(pooled), rtol=0, atol=0)
    torch.testing.assert_close(loaded.project_features(pooled), model.eval().project_features(pooled), rtol=0, atol=0)


def model_cfg():
    return tiny_config("projector.max_token=true", "projector.findings_token=true")


def test_too_few_studies_to_cross_fit(model) -> None:
    pooled, labels = data(model)
    with pytest.raises(ValueError, match="at least 5 training studies"):
        fit_findings_head(model.projector.findings, pooled[:4], labels[:4])


@pytest.mark.parametrize("setting", ["pretrain.vision.epochs=0", "pretrain.finetune_vision=true"])
def test_pretrain_refuses_a_findings_token_on_an_encoder_that_trains(cohort: Path, tmp_path: Path, setting: str) -> None:  # noqa: F811
    out = tmp_path / "run"
    result = pretrain(cohort, out, "projector.findings_token=true", setting)
    assert_user_error(result, "projector.findings_token", "frozen encoder")
    assert not out.exists()  # refused before anything is written


def test_pretrain_needs_one_training_study_per_fold(cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    result = pretrain(cohort, tmp_path / "run", "pretrain.val_fraction=0.7")  # 2 of 6 patients: 4 studies
    assert_user_error(result, "only 4 training studies", "5 folds", "projector.findings_token=false")
