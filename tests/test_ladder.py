"""The ablation ladder's parts that need no model: the encoder rung's block-scaled PCA against a PCA written
out with numpy, survival at the horizon attributed to its repeat, and model.json's checkpoint reference."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from ctsurv.evaluation.crossval import FoldPrediction, cross_validate, make_folds
from ctsurv.training import survival
from ctsurv.training.survival import BlockPCA, at_horizon, encoder_image
from ctsurv.training.survival_run import checkpoint_reference


def blocks(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two blocks on very different scales and widths, with shared structure: a narrow block of large
    activations and a wide block of small values (as the encoder grid and the windowed cells)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    grid = 500.0 * (latent @ rng.normal(size=(3, 12)) + rng.normal(size=(n, 12)))
    cells = 0.01 * (latent @ rng.normal(size=(3, 60)) + 0.5 * rng.normal(size=(n, 60)))
    return grid.astype(np.float32), cells.astype(np.float32)


def by_hand(parts: tuple[np.ndarray, ...], train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """Each block centred on the training rows and divided by the root of its summed column variances, then the
    test rows projected on the training rows' first ``k`` right singular vectors."""
    scaled = []
    for b in parts:
        b = b.astype(np.float64)
        mean = b[train].mean(0)
        scale = np.sqrt(b[train].var(0).sum())
        scaled.append(((b[train] - mean) / scale, (b[test] - mean) / scale))
    x_train = np.hstack([tr for tr, _ in scaled])
    x_test = np.hstack([te for _, te in scaled])
    _, _, vt = np.linalg.svd(x_train - x_train.mean(0), full_matrices=False)
    return x_test @ vt[:k].T


def same_up_to_sign(got: np.ndarray, expected: np.ndarray, atol: float = 1e-8) -> None:
    """Equal up to each component's sign (a principal axis has no direction)."""
    signs = np.sign(np.sum(got * expected, axis=0))
    np.testing.assert_allclose(got * signs, expected, rtol=0, atol=atol)


def test_block_pca_is_the_pca_of_unit_variance_blocks() -> None:
    parts = blocks()
    train, test = np.arange(30), np.arange(30, 40)
    pca = BlockPCA.fit(parts, train, components=5)
    assert [float(np.sum(((p[train] - m) / s) ** 2) / len(train)) for p, m, s in zip(parts, pca.means, pca.scales)] == \
        pytest.approx([1.0, 1.0])  # each block's total variance on the training rows
    same_up_to_sign(pca.transform(parts, test), by_hand(parts, train, test, 5))
    _, x_test = encoder_image(parts, 5)(train, test)
    same_up_to_sign(x_test, by_hand(parts, train, test, 5))


def test_block_pca_ignores_units_and_caps_components() -> None:
    """A block's units do not change the components (the wide block of small values still counts), and a budget
    over n_train - 1 keeps n_train - 1."""
    grid, cells = blocks()
    train, test = np.arange(30), np.arange(30, 40)
    a = BlockPCA.fit((grid, cells), train, 4).transform((grid, cells), test)
    b = BlockPCA.fit((grid * 1e4, cells), train, 4).transform((grid * 1e4, cells), test)
    same_up_to_sign(a, b, atol=1e-6)
    unscaled = np.hstack([grid, cells]).astype(np.float64)
    _, _, vt = np.linalg.svd(unscaled[train] - unscaled[train].mean(0), full_matrices=False)
    assert np.abs(vt[0, 12:]).max() < 1e-4  # without the scaling the cells would not count at all
    few = np.arange(6)
    assert encoder_image((grid, cells), 28)(few, test)[1].shape == (len(test), 5)


def test_block_pca_drops_components_without_variance() -> None:
    """Repeated scans (a patient's two studies) lower the rank of the training rows: the components past it have
    no variance there, and are dropped rather than standardised by a zero SD in the head."""
    grid, cells = blocks()
    train = np.r_[np.arange(20), np.arange(10)]  # 30 rows, 20 distinct: the centred rows span 19 dimensions
    pca = BlockPCA.fit((grid, cells), train, components=28)
    assert pca.kept == 19
    x = pca.transform((grid, cells), np.arange(40))
    assert x.shape == (40, 19) and x[train].std(0).min() > 1e-3


@pytest.mark.parametrize("n_train", [30, 150])  # fewer rows than columns (the Gram route), more (the covariance)
@pytest.mark.parametrize("slice_bytes", [2**20, 800])  # the whole matrix in one slice, or a few columns/rows a slice
def test_block_pca_equals_the_full_svd_by_either_route(monkeypatch: pytest.MonkeyPatch, n_train: int,
                                                        slice_bytes: int) -> None:
    """Both eigen-routes, read in one slice or many, give scikit-learn's exact PCA (full SVD) of the scaled
    matrix: the same components with the same signs, and the same explained variance ratios."""
    monkeypatch.setattr(survival, "SLICE_BYTES", slice_bytes)
    parts = blocks(n=n_train + 10, seed=3)
    train, test = np.arange(n_train), np.arange(n_train, n_train + 10)
    pca = BlockPCA.fit(parts, train, components=6)
    reference = PCA(n_components=6, svd_solver="full").fit(pca.scaled(parts, train))
    np.testing.assert_allclose(pca.transform(parts, test), reference.transform(pca.scaled(parts, test)), atol=1e-9)
    np.testing.assert_allclose(pca.explained_variance_ratio, reference.explained_variance_ratio_, atol=1e-12)


def test_block_pca_never_holds_the_scaled_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fitting on 400 rows of 20,000 float32 columns (the scaled float64 matrix would be 64 MB) stays within the
    Gram matrix (1.3 MB) plus one slice: memory follows the slice size, not the cohort's size times its width."""
    monkeypatch.setattr(survival, "SLICE_BYTES", 2**20)
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(500, 12_000)).astype(np.float32)
    cells = rng.normal(size=(500, 8_000)).astype(np.float32)
    train = np.arange(400)
    tracemalloc.start()
    pca = BlockPCA.fit((grid, cells), train, components=8)
    pca.transform((grid, cells), np.arange(400, 500))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert pca.kept == 8
    assert peak < 10 * 2**20, f"{peak / 2**20:.1f} MiB"


def test_at_horizon_attributes_each_fold_to_its_repeat() -> None:
    """Survival at the horizon of every repeat, each from the fold that scored the study in that repeat."""
    rng = np.random.default_rng(1)
    n = 30
    time, event = rng.uniform(1, 10, n), np.arange(n) % 2 == 0
    folds = make_folds(time, event, n_splits=3, n_repeats=2, seed=0)

    def fit_predict(train: np.ndarray, test: np.ndarray) -> FoldPrediction:
        fold = next(f for f in folds if np.array_equal(f.test_idx, test) and np.array_equal(f.train_idx, train))
        tag = 10 * fold.repeat + fold.fold  # what each fold predicts: its own tag
        return FoldPrediction(np.full(len(test), float(tag)), survival=lambda t: np.full((len(test), len(t)), tag / 100))

    wrapped, surv = at_horizon(fit_predict, 5.0, folds, n)
    oof = cross_validate(folds, wrapped, time, event)
    assert surv.shape == (2, n)
    np.testing.assert_array_equal(surv, oof.risk / 100)
    with pytest.raises(ValueError, match="other folds"):
        wrapped(folds[0].train_idx, folds[0].test_idx)  # a seventh call: no fold left


def test_model_json_names_its_checkpoint_relative_to_the_model_folder(tmp_path: Path) -> None:
    model = tmp_path / "run" / "model"
    assert checkpoint_reference(model / "vlm", model) == "vlm"
    beside = tmp_path / "pretrain" / "instruct"  # the demo's layout: pretrain/ beside survival/
    assert checkpoint_reference(beside, model) == "../../pretrain/instruct"
    assert (model / checkpoint_reference(beside, model)).resolve() == beside.resolve()
