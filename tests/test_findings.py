"""The projector's findings token: the closed-form fit against scikit-learn, its out-of-fold logits (folds of
patients), the token itself, its checkpoint round trip, and the configurations that cannot have one; the cells it may also
read (their region, the per-finding choice on held-out studies, and the errors when they are missing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_pretrain_cli import cohort, pretrain  # noqa: F401 (the fixture)
from tiny_setups import (
    assert_user_error,
    build,
    one_torch_thread,  # noqa: F401 (autouse)
    tiny_config,
)

from ctsurv.errors import ConfigError
from ctsurv.models.projector import CELLS_XYZ, central_cells
from ctsurv.text.questions import PRESENCE_LABELS
from ctsurv.training import findings
from ctsurv.training.checkpoint import load_checkpoint, save_checkpoint
from ctsurv.training.findings import FOLDS, C, HeldOut, fit_findings_head, patient_folds

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
        reference = LogisticRegression(C=C, tol=1e-10, max_iter=100_000).fit(scaler.transform(x[known]), labels[known, j].numpy())
        np.testing.assert_allclose(ours[:, j], reference.decision_function(scaler.transform(x)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours[:, 2], np.log(40.5 / 0.5), rtol=1e-6)  # one class: the smoothed prior
    np.testing.assert_allclose(ours[:, 3], 0.0)  # never labelled: no information
    auc_like = ours[labels[:, 0] == 1, 0].mean() > ours[labels[:, 0] == 0, 0].mean()
    assert auc_like  # the planted signal is read


def test_no_report_mentions_any_finding(model) -> None:
    """Every label unknown: no information, logit 0 for every study and finding, in the head and out of fold."""
    pooled, labels = data(model)
    oof, choices = fit_findings_head(model.projector.findings, pooled, torch.full_like(labels, -1))
    assert choices == {} and torch.equal(oof, torch.zeros_like(oof))
    assert torch.equal(model.projector.findings(pooled), torch.zeros(N, len(PRESENCE_LABELS)))


def test_out_of_fold_logits_come_from_the_other_folds(model) -> None:
    pooled, labels = data(model, seed=1)
    oof, _ = fit_findings_head(model.projector.findings, pooled, labels, seed=3)
    oof = oof.double().numpy()
    assert oof.shape == (N, len(PRESENCE_LABELS))
    x, y = summary(pooled), labels[:, 0].numpy()
    expected = np.zeros(N)
    for fit_rows, out_rows in KFold(FOLDS, shuffle=True, random_state=3).split(x):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=100_000)).fit(x[fit_rows], y[fit_rows])
        expected[out_rows] = pipe.decision_function(x[out_rows])
    np.testing.assert_allclose(oof[:, 0], expected, rtol=1e-4, atol=1e-4)
    # not the in-sample logits of the head fitted on everything
    assert not np.allclose(oof[:, 0], model.projector.findings(pooled)[:, 0].double().numpy(), atol=1e-3)


def siblings(model, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``data`` of N // 2 patients, each twice (two identical studies, as reconstructions of one scan), and
    the patient of each study."""
    pooled, labels = data(model, seed)
    twice = torch.arange(N // 2).repeat_interleave(2)
    return pooled[twice], labels[twice], np.array([f"pt{i}" for i in twice.tolist()])


def test_out_of_fold_logits_never_see_a_sibling_study(model) -> None:
    pooled, labels, patients = siblings(model)
    oof, _ = fit_findings_head(model.projector.findings, pooled, labels, seed=3, groups=patients)
    oof = oof.double().numpy()
    x, y = summary(pooled), labels[:, 0].numpy()
    folds = list(patient_folds(patients, seed=3))
    assert len(folds) == FOLDS
    assert sorted(np.concatenate([out for _, out in folds]).tolist()) == list(range(N))  # each study out once
    expected = np.zeros(N)
    for fit_rows, out_rows in folds:
        assert not set(patients[fit_rows]) & set(patients[out_rows])  # no patient on both sides
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=100_000)).fit(x[fit_rows], y[fit_rows])
        expected[out_rows] = pipe.decision_function(x[out_rows])
    np.testing.assert_allclose(oof[:, 0], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(oof[0::2], oof[1::2])  # two siblings, one logit
    # each study's logit is that of a classifier fitted without any study of its patient
    for i in (0, 17, 38):
        others = patients != patients[i]
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=100_000))
        fold = next(fit for fit, out in folds if i in out)
        assert others[fold].all()
        pipe.fit(x[fold], y[fold])
        assert oof[i, 0] == pytest.approx(pipe.decision_function(x[i : i + 1])[0], abs=1e-4)
    # folds of studies (no groups) split siblings, whose twin then sits among the fitting rows
    leaky = fit_findings_head(model.projector.findings, pooled, labels, seed=3)[0].double().numpy()
    split_pairs = [
        k for k in range(N // 2)
        if any((2 * k in out) != (2 * k + 1 in out) for _, out in KFold(FOLDS, shuffle=True, random_state=3).split(x))
    ]
    assert split_pairs
    k = split_pairs[0]
    assert leaky[2 * k, 0] != pytest.approx(leaky[2 * k + 1, 0], abs=1e-3)


def test_patient_folds_are_group_k_fold_shuffled_and_the_same_without_its_shuffle(model, monkeypatch) -> None:
    patients = np.array([f"pt{i}" for i in [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9]])
    ours = [(f.tolist(), o.tolist()) for f, o in patient_folds(patients, seed=7)]
    reference = [(f.tolist(), o.tolist()) for f, o in GroupKFold(FOLDS, shuffle=True, random_state=7).split(patients, groups=patients)]
    assert ours == reference
    assert ours == [(f.tolist(), o.tolist()) for f, o in patient_folds(patients, seed=7)]  # deterministic for a seed
    assert ours != [(f.tolist(), o.tolist()) for f, o in patient_folds(patients, seed=8)]

    class GroupKFoldBefore16:  # scikit-learn < 1.6: no shuffle
        def __init__(self, n_splits: int = 5) -> None:
            raise AssertionError("the fallback permutes the patients itself")

    monkeypatch.setattr(findings, "GroupKFold", GroupKFoldBefore16)
    assert [(f.tolist(), o.tolist()) for f, o in patient_folds(patients, seed=7)] == reference
    # and without groups, each study its own patient: scikit-learn's KFold(shuffle=True) of the studies
    studies = np.arange(12)
    assert [o.tolist() for _, o in patient_folds(studies, seed=2)] == [
        o.tolist() for _, o in KFold(FOLDS, shuffle=True, random_state=2).split(studies)
    ]


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
    # without cells the head holds what it held before they existed, so older checkpoints still load
    assert set(model.projector.findings.state_dict()) == {"mean", "scale", "weight", "bias"}
    torch.testing.assert_close(loaded.projector.findings(pooled), model.projector.findings(pooled), rtol=0, atol=0)
    torch.testing.assert_close(loaded.project_features(pooled), model.eval().project_features(pooled), rtol=0, atol=0)


def model_cfg():
    return tiny_config("projector.max_token=true", "projector.findings_token=true")


def test_too_few_patients_to_cross_fit(model) -> None:
    pooled, labels = data(model)
    with pytest.raises(ValueError, match="at least 5 patients"):
        fit_findings_head(model.projector.findings, pooled[:4], labels[:4])
    with pytest.raises(ValueError, match=r"at least 5 patients .*, got 4 patients \(40 studies\)"):
        fit_findings_head(model.projector.findings, pooled, labels, groups=np.arange(N) % 4)
    with pytest.raises(ValueError, match="groups holds 39 patient ids for 40 studies"):
        fit_findings_head(model.projector.findings, pooled, labels, groups=np.arange(N - 1))


@pytest.mark.parametrize("setting", ["pretrain.vision.epochs=0", "pretrain.finetune_vision=true"])
def test_pretrain_refuses_a_findings_token_on_an_encoder_that_trains(cohort: Path, tmp_path: Path, setting: str) -> None:  # noqa: F811
    out = tmp_path / "run"
    result = pretrain(cohort, out, "projector.findings_token=true", setting)
    assert_user_error(result, "projector.findings_token", "frozen encoder")
    assert not out.exists()  # refused before anything is written


def test_pretrain_needs_one_training_patient_per_fold(cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    result = pretrain(cohort, out, "pretrain.val_fraction=0.5")  # of 7 patients 1 test, 4 val: 2 left, 4 studies
    assert_user_error(result, "only 2 training patients (4 studies)", "5 folds of patients", "projector.findings_token=false")
    assert not out.exists()  # refused before anything is written


# ----------------------------------------------------------------------------- the cells


CELLS = ("projector.max_token=true", "projector.findings_token=true", "projector.findings_cells_channel=0")
K = int(np.prod(CELLS_XYZ))


def test_central_cells_average_one_channel_over_the_central_field() -> None:
    images = torch.zeros(2, 3, 64, 64, 48)
    images[0, 1, 16:48, 16:48, 8:40] = 1.0  # exactly the central field (half of x and y, two thirds of z)
    images[1, 1, 30:32, 30:32, 22:26] = 1.0  # one cell of 2 x 2 x (32/12) voxels holds it
    images[:, 0] = 5.0  # another channel
    images[:, 1, :16] = 7.0  # outside the central field
    cells = central_cells(images, channel=1)
    assert cells.shape == (2, K)
    torch.testing.assert_close(cells[0], torch.ones(K))
    grid = cells[1].reshape(CELLS_XYZ)
    lit = grid.nonzero()
    assert set(lit[:, 0].tolist()) == {7} and set(lit[:, 1].tolist()) == {7}  # x 30-31 and y 30-31 of 16-48: cells 7
    # z 22-25 of 8-40 are voxels 14-17 of the 32; adaptive pooling to 12 averages voxels 13-15 into cell 5 and
    # 16-18 into cell 6: two of three lit in each
    assert len(lit) == 2
    torch.testing.assert_close(grid[7, 7, 5:7], torch.tensor([2 / 3, 2 / 3]))


def cell_data(model, seed: int, n: int = N) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled features that tell finding 0, cells (n, K) one of which tells finding 1 (and nothing else does)."""
    pooled, labels = data(model, seed)
    g = torch.Generator().manual_seed(100 + seed)
    pooled, labels = pooled[:n], labels[:n]
    cells = torch.randn(n, K, generator=g)
    cells[:, 7] += 3.0 * labels[:, 1].clamp(min=0)
    labels[:, 1] = torch.where(labels[:, 1] < 0, torch.randint(0, 2, (n,), generator=g), labels[:, 1])
    cells[:, 7] = torch.where(labels[:, 1] == 1, cells[:, 7].abs() + 3.0, -cells[:, 7].abs())
    return pooled, cells, labels


def test_each_finding_reads_the_cells_only_where_they_lower_the_held_out_loss() -> None:
    model = build(tiny_config(*CELLS))
    head = model.projector.findings
    pooled, cells, labels = cell_data(model, seed=0)
    val = HeldOut(*cell_data(model, seed=1, n=30))
    oof, choice = fit_findings_head(head, pooled, labels, seed=2, cells=cells, held_out=val)
    assert bool(head.reads_cells[1]) and not bool(head.reads_cells[0])
    assert choice[1]["reads_cells"] and choice[1]["pooled + cells"] < choice[1]["pooled"]
    assert not choice[0]["reads_cells"] and choice[0]["pooled"] <= choice[0]["pooled + cells"]
    assert set(choice) == set(range(len(PRESENCE_LABELS))) - {3}  # finding 3 is never labelled, so never chosen
    k = head.n_summary
    assert not head.weight[0, k:].any() and head.weight[1, k:].any()  # finding 0 ignores the cells
    # finding 1 is scikit-learn's logistic regression on the standardised summary and cells of all studies
    x = np.hstack([summary(pooled), cells.double().numpy()])
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=100_000).fit(scaler.transform(x), labels[:, 1].numpy())
    ours = head(pooled, cells).double().numpy()
    np.testing.assert_allclose(ours[:, 1], reference.decision_function(scaler.transform(x)), rtol=1e-3, atol=1e-3)
    # and so are its out-of-fold logits, fold by fold
    expected = np.zeros(N)
    for fit_rows, out_rows in KFold(FOLDS, shuffle=True, random_state=2).split(x):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=100_000)).fit(x[fit_rows], labels[fit_rows, 1])
        expected[out_rows] = pipe.decision_function(x[out_rows])
    np.testing.assert_allclose(oof[:, 1].double().numpy(), expected, rtol=1e-3, atol=1e-3)
    # the held-out log-losses that chose it, and the standard error of their per-study difference
    y_val = val.labels[:, 1].numpy()
    z_val = scaler.transform(np.hstack([summary(val.pooled), val.cells.double().numpy()]))
    p_cells = reference.predict_proba(z_val)[:, 1]
    z_pooled = StandardScaler().fit(summary(pooled)).transform(summary(val.pooled))
    pooled_only = LogisticRegression(C=C, tol=1e-10, max_iter=100_000).fit(
        StandardScaler().fit_transform(summary(pooled)), labels[:, 1].numpy()
    )
    p_pooled = pooled_only.predict_proba(z_pooled)[:, 1]
    assert choice[1]["pooled + cells"] == pytest.approx(log_loss(y_val, p_cells), rel=1e-3)
    assert choice[1]["pooled"] == pytest.approx(log_loss(y_val, p_pooled), rel=1e-3)
    per_study = [log_loss([y], [p], labels=[0, 1]) for y, p in zip(y_val, p_pooled)]
    per_study_cells = [log_loss([y], [p], labels=[0, 1]) for y, p in zip(y_val, p_cells)]
    gain = np.subtract(per_study, per_study_cells)
    assert choice[1]["standard_error"] == pytest.approx(gain.std(ddof=1) / np.sqrt(len(gain)), rel=1e-3)
    # the one-standard-error rule, for every finding: the cells only where they gain more than one standard error
    for j, c in choice.items():
        assert c["reads_cells"] == bool(head.reads_cells[j]) == (c["pooled"] - c["pooled + cells"] > c["standard_error"])


def test_one_held_out_study_cannot_choose_the_cells() -> None:
    model = build(tiny_config(*CELLS))
    pooled, cells, labels = cell_data(model, seed=0)
    _, choice = fit_findings_head(model.projector.findings, pooled, labels, cells=cells, held_out=HeldOut(*cell_data(model, 1, 1)))
    assert not model.projector.findings.reads_cells.any()
    assert choice[1]["standard_error"] is None and choice[1]["pooled + cells"] < choice[1]["pooled"]


def test_a_head_that_reads_cells_refuses_features_without_them_and_encode_image_computes_them(tmp_path: Path) -> None:
    cfg = tiny_config(*CELLS)
    model = build(cfg).eval()
    pooled, cells, labels = cell_data(model, seed=0)
    fit_findings_head(model.projector.findings, pooled, labels, cells=cells, held_out=HeldOut(*cell_data(model, 1, 30)))
    with pytest.raises(ValueError, match="also reads the volume's cells"):
        model.project_features(pooled)
    images = torch.rand(3, cfg.data.in_channels, 32, 32, 16)
    features = model.projector.pool(model.vision_encoder.features(images))
    expected = model.project_features(features, cells=central_cells(images, channel=0))
    torch.testing.assert_close(model.encode_image(images), expected)
    # the choice and the cells' weights survive a checkpoint
    loaded, loaded_cfg = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model, cfg))
    assert loaded_cfg.projector.findings_cells_channel == 0
    torch.testing.assert_close(loaded.projector.findings.reads_cells, model.projector.findings.reads_cells, rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), rtol=0, atol=0)


def test_the_cells_need_their_inputs() -> None:
    model = build(tiny_config(*CELLS))
    pooled, cells, labels = cell_data(model, seed=0)
    with pytest.raises(ValueError, match="held-out studies"):
        fit_findings_head(model.projector.findings, pooled, labels, cells=cells)
    with pytest.raises(ValueError, match="give cells exactly when"):
        fit_findings_head(model.projector.findings, pooled, labels)
    plain = build(model_cfg())
    with pytest.raises(ValueError, match="give cells exactly when"):
        fit_findings_head(plain.projector.findings, pooled, labels, cells=cells, held_out=HeldOut(pooled, cells, labels))


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (("projector.findings_cells_channel=1",), ("projector.findings_token=true",)),
        (("projector.findings_token=true", "projector.findings_cells_channel=5"), ("from 0 to 0", "got 5")),
    ],
)
def test_config_errors_for_the_cells(overrides: tuple[str, ...], needles: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        tiny_config(*overrides)
    assert all(needle in str(err.value) for needle in needles)
