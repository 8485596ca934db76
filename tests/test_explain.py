"""Evidence maps, the out-of-distribution score and the viewer's slices, on inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from ctsurv.errors import CtsurvError
from ctsurv.evaluation.explain import (
    OutOfDistribution,
    block_boxes,
    occlusion_maps,
    pointing_hit,
    pooled_features,
    to_voxels,
)
from ctsurv.evaluation.viewer import PLANES, pixel_mm, plane_slice, render
from ctsurv.synthetic.phantom import render_phantom_full
from ctsurv.text.findings import Findings, PleuralEffusion

# ----------------------------------------------------------------------------- occlusion


def test_occlusion_of_a_linear_score_is_its_weighted_deviation_from_the_mean_in_each_block() -> None:
    """score(x) = sum(w * x): hiding block b (filling it with the channel means m) drops the score by exactly
    sum over b of w * (x - m); blocks of unequal size (a 7-voxel axis cut in 3) included."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 7, 6, 5, generator=g)
    w = torch.randn(2, 7, 6, 5, generator=g)
    weights = torch.stack([w, -2 * w])  # two outputs

    def score(batch: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bcxyz,kcxyz->bk", batch, weights)

    full, blocks = occlusion_maps(score, image, (3, 2, 5), batch_size=4)
    assert blocks.shape == (2, 3, 2, 5)
    torch.testing.assert_close(full, score(image[None])[0])
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    for i, (sx, sy, sz) in enumerate(block_boxes((7, 6, 5), (3, 2, 5))):
        expected = (weights[:, :, sx, sy, sz] * (image - mean)[None, :, sx, sy, sz]).sum(dim=(1, 2, 3, 4))
        torch.testing.assert_close(blocks.reshape(2, -1)[:, i], expected, rtol=1e-5, atol=1e-5)


def test_to_voxels_puts_each_blocks_value_on_its_own_voxels_and_more_blocks_than_voxels_are_capped() -> None:
    blocks = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    voxels = to_voxels(blocks, (7, 6, 4))
    assert voxels.shape == (7, 6, 4)
    for i, box in enumerate(block_boxes((7, 6, 4), (3, 2, 4))):
        assert (voxels[box] == blocks.ravel()[i]).all()
    _, capped = occlusion_maps(lambda b: b.sum(dim=(1, 2, 3, 4))[:, None], torch.rand(1, 2, 3, 4), (8, 8, 8))
    assert capped.shape == (1, 2, 3, 4)  # one block per voxel at most


def test_pointing_game_hit_and_chance() -> None:
    truth = np.zeros((8, 8, 8), bool)
    truth[6:, 6:, 6:] = True  # the last block of a 2 x 2 x 2 grid
    blocks = np.zeros((2, 2, 2))
    blocks[1, 1, 1] = 1.0
    assert pointing_hit(blocks, truth) == (True, 1 / 8)
    blocks[0, 0, 0] = 2.0
    assert pointing_hit(blocks, truth) == (False, 1 / 8)


# ----------------------------------------------------------------------------- out of distribution


def test_ood_distance_is_scipys_mahalanobis_under_the_ledoit_wolf_covariance_of_standardised_features() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)) * np.array([1, 2, 3, 0.5, 1, 4]) + 10
    ood = OutOfDistribution.fit(x, seed=0)
    mean, sd = x.mean(0), x.std(0)
    cov = LedoitWolf(assume_centered=True).fit((x - mean) / sd).covariance_
    vi = np.linalg.inv(cov)
    new = rng.normal(size=(5, 6)) * 3 + 10
    expected = [mahalanobis((v - mean) / sd, np.zeros(6), vi) for v in new]
    np.testing.assert_allclose(ood.distance(new), expected, rtol=1e-9)


def test_ood_flags_about_its_quantile_of_fresh_training_like_scans_and_all_shifted_ones() -> None:
    """Calibrated on cross-fitted distances: fresh draws of the training distribution are flagged about 1% of the
    time even with 40 features for 300 scans (in-sample distances would flag far more); shifted ones always."""
    rng = np.random.default_rng(1)
    cov = np.diag(np.linspace(0.5, 3, 40))
    train = rng.multivariate_normal(np.zeros(40), cov, 300)
    ood = OutOfDistribution.fit(train, seed=0)
    fresh = ood.distance(rng.multivariate_normal(np.zeros(40), cov, 4000))
    assert 0.002 <= np.mean(fresh > ood.threshold) <= 0.04
    in_sample = ood.distance(train)
    assert np.median(in_sample) < np.median(ood.reference)  # why the reference is cross-fitted
    shifted = ood.distance(rng.multivariate_normal(np.full(40, 3.0), cov, 200))
    assert (shifted > ood.threshold).all()
    assert ood.percentile(np.array([0.0, np.inf])).tolist() == [0.0, 100.0]


def test_a_patients_repeat_scans_are_held_out_together_in_the_reference() -> None:
    """Each scan twice (a repeat study): split by scan, a scan's twin sits in the model that measures it and its
    reference distance is too small; split by patient it is not."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 30))
    twice, patients = np.repeat(x, 2, axis=0), np.repeat(np.arange(40), 2)
    by_scan = OutOfDistribution.fit(twice, seed=0).reference
    by_patient = OutOfDistribution.fit(twice, seed=0, groups=patients).reference
    alone = OutOfDistribution.fit(x, seed=0).reference
    assert np.median(by_scan) < np.median(by_patient)
    assert np.median(by_patient) >= 0.95 * np.median(alone)  # as far as scans measured by a model without them


def test_ood_reference_round_trips_and_too_few_scans_are_refused(tmp_path) -> None:
    rng = np.random.default_rng(2)
    ood = OutOfDistribution.fit(rng.normal(size=(30, 4)))
    ood.save(tmp_path / "ood.safetensors")
    back = OutOfDistribution.load(tmp_path / "ood.safetensors")
    for name in ("mean", "scale", "precision", "reference"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ood, name))
    assert back.quantile == ood.quantile and back.threshold == ood.threshold
    with pytest.raises(CtsurvError, match="at least 10 training scans"):
        OutOfDistribution.fit(rng.normal(size=(30, 4)), groups=np.arange(30) % 9)
    with pytest.raises(CtsurvError, match="at least 10 training scans"):
        OutOfDistribution.fit(rng.normal(size=(9, 4)))
    with pytest.raises(CtsurvError, match="NaN"):
        OutOfDistribution.fit(np.full((20, 3), np.nan))
    np.testing.assert_allclose(pooled_features(np.ones((2, 3, 5)) * np.arange(5)), np.full((2, 3), 2.0))


# ----------------------------------------------------------------------------- truth masks and the viewer


def test_phantom_truth_mask_of_a_right_pleural_effusion_is_dependent_fluid_in_the_right_hemithorax() -> None:
    shape, spacing = (24, 48, 48), (8.0, 6.0, 6.0)
    ph = render_phantom_full(Findings(pleural_effusion=PleuralEffusion("right", "large")), shape, spacing,
                             np.random.default_rng(3))
    mask = ph.masks["pleural_effusion"]
    assert mask.sum() > 50
    assert np.median(ph.hu[mask]) == pytest.approx(12, abs=40)  # fluid, not lung (-850) nor bone
    ijk = np.argwhere(mask)
    xyz = ijk @ ph.affine[:3, :3].T + ph.affine[:3, 3]
    assert (xyz[:, 0] > 0).mean() > 0.95  # RAS: +x is the patient's right
    body = np.argwhere(ph.masks["body"]) @ ph.affine[:3, :3].T + ph.affine[:3, 3]
    assert xyz[:, 1].mean() < body[:, 1].mean()  # posterior (dependent) half
    none = render_phantom_full(Findings(), shape, spacing, np.random.default_rng(3))
    assert "pleural_effusion" not in none.masks


def test_slices_follow_the_radiological_convention_and_the_voxel_spacing() -> None:
    """A marker at the patient's right, anterior, superior corner (largest x, y, z of a RAS array) shows at the
    viewer's top left in axial and coronal views (patient's right on the viewer's left) and at the top left of
    the sagittal view (anterior on the left)."""
    vol = np.zeros((10, 12, 8), np.float32)
    vol[-1, -1, -1] = 1
    assert plane_slice(vol, "axial", 7)[0, 0] == 1
    assert plane_slice(vol, "coronal", 11)[0, 0] == 1
    assert plane_slice(vol, "sagittal", 9)[0, 0] == 1
    assert plane_slice(vol, "axial", 0).shape == (12, 10)  # rows y, columns x
    spacing = (1.0, 1.0, 5.0)
    for plane in PLANES:
        image = render(vol * 1000 - 1000, spacing, plane, 0, "lung", overlay=vol)
        rows, cols = plane_slice(vol, plane, 0).shape
        row_mm, col_mm = pixel_mm(spacing, plane)
        assert image.dtype == np.uint8 and image.shape[2] == 3
        assert image.shape[0] / image.shape[1] == pytest.approx(rows * row_mm / (cols * col_mm), rel=0.06)
