"""The phantom's anatomy and findings, checked with numbers in world (RAS+) millimetres."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ctsurv.synthetic.geometry import affine_for
from ctsurv.synthetic.phantom import Phantom, render_phantom, render_phantom_full
from ctsurv.text.findings import Findings, LymphNode, Nodule, PleuralEffusion

SHAPE, SPACING = (48, 64, 64), (6.0, 5.0, 5.0)  # the default: Z Y X voxels, mm


def render(findings: Findings | None = None, seed: int = 0) -> Phantom:
    return render_phantom_full(findings or Findings(), SHAPE, SPACING, np.random.default_rng(seed))


def world(ph: Phantom, mask: np.ndarray) -> np.ndarray:
    """World mm (N, 3) of the voxels of a mask."""
    ijk = np.argwhere(mask)
    return ijk @ ph.affine[:3, :3].T + ph.affine[:3, 3]


def voxel(ph: Phantom, p: np.ndarray) -> tuple[int, int, int]:
    inv = np.linalg.inv(ph.affine)
    return tuple(np.rint(inv[:3, :3] @ p + inv[:3, 3]).astype(int))  # type: ignore[return-value]


def test_affine_is_ras_centred_with_the_spacing() -> None:
    a = affine_for((10, 20, 30), (3.0, 2.0, 1.0))
    assert nib.aff2axcodes(a) == ("R", "A", "S")
    assert np.allclose(np.diag(a)[:3], [1.0, 2.0, 3.0])  # x y z spacing: the array is (X, Y, Z)
    assert np.allclose(a[:3, :3] @ ([29, 19, 9]) / 2 + a[:3, 3], 0)  # the centre of the array is the origin


def test_volume_type_shape_determinism_and_air() -> None:
    hu = render_phantom(Findings(), SHAPE, SPACING, np.random.default_rng(7))
    assert hu.dtype == np.int16 and hu.shape == SHAPE[::-1]
    assert np.array_equal(hu, render_phantom(Findings(), SHAPE, SPACING, np.random.default_rng(7)))
    assert not np.array_equal(hu, render_phantom(Findings(), SHAPE, SPACING, np.random.default_rng(8)))
    corners = hu[[0, 0, -1, -1], [-1, -1, -1, -1], :]  # anterior corners: air
    assert abs(corners.mean() + 1000) < 30


def test_normal_lungs_hounsfield_units() -> None:
    for seed in range(3):
        ph = render(seed=seed)
        core = ndimage.binary_erosion(ph.masks["lung"])
        assert core.sum() > 0.05 * core.size
        assert -900 <= ph.hu[core].mean() <= -750


def test_heart_on_the_patients_left_and_liver_dome_on_the_right() -> None:
    ph = render()
    assert world(ph, ph.masks["heart"])[:, 0].mean() < -5  # RAS: +x is the patient's right
    # from the image alone: soft tissue (0..100 HU) in front of the spine between the lungs, at heart level
    xyz = world(ph, (ph.hu > 0) & (ph.hu < 100))
    mid = xyz[(np.abs(xyz[:, 0]) < 80) & (xyz[:, 1] > -30) & (np.abs(xyz[:, 2] + 40) < 25)]
    assert mid[:, 0].mean() < -5
    # the right hemidiaphragm (over the liver) is higher: the right lung ends higher in the middle coronal band
    def lowest(mask: np.ndarray) -> float:
        p = world(ph, mask)
        return float(p[np.abs(p[:, 1]) < 20, 2].min())

    assert lowest(ph.masks["lung_right"]) > lowest(ph.masks["lung_left"]) + 6
    assert world(ph, ph.masks["lung_right"])[:, 0].min() > -20  # the right lung is at +x


@pytest.mark.parametrize(("lobe", "diameter"), [("RUL", 12.0), ("LLL", 20.0), ("RLL", 40.0)])
def test_nodule_is_a_blob_of_its_size_in_its_lobe(lobe: str, diameter: float) -> None:
    ph = render(Findings(nodules=(Nodule(lobe, diameter),)), seed=3)  # type: ignore[arg-type]
    (kind, centre, d), = ph.lesions
    assert kind == ("mass" if diameter >= 30 else "nodule") and d == diameter
    i = voxel(ph, centre)
    assert ph.masks[f"lobe_{lobe}"][i]
    near = np.linalg.norm(world(ph, np.ones(ph.hu.shape, bool)) - centre, axis=1).reshape(ph.hu.shape) < diameter
    blob, _ = ndimage.label((ph.hu > -400) & near)  # half-way between lung and solid tissue, near the centre
    component = blob == blob[i]
    size = (6 * component.sum() * np.prod(SPACING) / np.pi) ** (1 / 3)  # diameter of a ball of that volume
    assert abs(size - diameter) < 0.3 * diameter, size
    assert ph.hu[i] > -100  # dense at its centre


@pytest.mark.parametrize("side", ["right", "left", "bilateral"])
def test_pleural_effusion_is_posterior_fluid_on_its_side(side: str) -> None:
    ph = render(Findings(pleural_effusion=PleuralEffusion(side, "moderate")), seed=1)  # type: ignore[arg-type]
    fluid = (ph.hu > -60) & (ph.hu < 60)
    counts = {}
    for s in ("right", "left"):
        xyz = world(ph, fluid & ph.masks[f"lung_{s}"])
        counts[s] = len(xyz)
        if side in (s, "bilateral"):
            assert np.median(xyz[:, 1]) < -30  # dependent: posterior in a supine patient
    normal = render(Findings(), seed=1)
    baseline = {s: ((normal.hu > -60) & (normal.hu < 60) & normal.masks[f"lung_{s}"]).sum() for s in ("right", "left")}
    for s in ("right", "left"):
        if side in (s, "bilateral"):
            assert counts[s] > baseline[s] + 150, (counts, baseline)
        else:
            assert counts[s] < baseline[s] + 50, (counts, baseline)


def test_effusion_depth_grows_with_its_size() -> None:
    fluid = []
    for size in ("small", "moderate", "large"):
        ph = render(Findings(pleural_effusion=PleuralEffusion("right", size)), seed=2)  # type: ignore[arg-type]
        fluid.append(((ph.hu > -60) & (ph.hu < 60) & ph.masks["lung_right"]).sum())
    assert fluid[0] < fluid[1] < fluid[2]


def test_emphysema_lowers_lung_attenuation() -> None:
    means = {}
    for severity in (None, "mild", "severe"):
        ph = render(Findings(emphysema=severity), seed=4)  # type: ignore[arg-type]
        means[severity] = ph.hu[ndimage.binary_erosion(ph.masks["lung"])].mean()
    assert means["mild"] < means[None] - 10
    assert means["severe"] < means["mild"] - 25


def test_cardiomegaly_raises_the_cardiothoracic_ratio() -> None:
    def ctr(ph: Phantom) -> float:
        heart = world(ph, ph.masks["heart"])[:, 0]
        chest = world(ph, ph.masks["lung"] | ph.masks["heart"])
        widths = [np.ptp(chest[chest[:, 2] == z, 0]) for z in np.unique(chest[:, 2])]
        return float(np.ptp(heart) / max(widths))

    assert 0.38 < ctr(render()) < 0.52
    assert ctr(render(Findings(cardiomegaly=True))) > 0.55


def test_pericardial_effusion_is_a_fluid_rim_around_the_heart() -> None:
    def rim_fluid(ph: Phantom) -> int:
        shell = ndimage.binary_dilation(ph.masks["heart"], iterations=3) & ~ph.masks["heart"]
        return int(((ph.hu > -40) & (ph.hu < 30) & shell).sum())

    assert rim_fluid(render(Findings(pericardial_effusion=True), seed=5)) > 2 * rim_fluid(render(seed=5)) + 50


def test_lymph_nodes_and_lytic_lesions_and_calcification() -> None:
    nodes = (LymphNode("subcarinal", 24.0), LymphNode("right paratracheal", 18.0))
    f = Findings(lymph_nodes=nodes, lytic_bone_lesions=3)
    ph = render(f, seed=6)
    for kind, centre, d in ph.lesions:
        i = voxel(ph, centre)
        if kind == "node":
            assert ph.hu[i] > -20, (centre, ph.hu[i])  # soft tissue where fat or lung would be
        elif kind == "lytic" and abs(centre[0]) < 8:  # in a vertebral body: a soft-tissue hole in bone
            assert ph.hu[i] < 150 and d >= 12, (centre, ph.hu[i])
    assert sum(k == "lytic" for k, _, _ in ph.lesions) == 3


def test_arterial_calcification_is_bright_outside_the_bones() -> None:
    def bright(ph: Phantom) -> int:
        return int(((ph.hu > 400) & ~ndimage.binary_dilation(ph.masks["bone"], iterations=2)).sum())

    assert bright(render(seed=6)) == 0
    assert bright(render(Findings(arterial_calcification=True), seed=6)) >= 5


def test_other_shapes_and_spacings_render() -> None:
    for shape, spacing in (((24, 32, 32), (12.0, 10.0, 10.0)), ((16, 40, 24), (8.0, 6.0, 9.0))):
        f = Findings(nodules=(Nodule("RML", 15.0),), pleural_effusion=PleuralEffusion("left", "large"))
        ph = render_phantom_full(f, shape, spacing, np.random.default_rng(0))
        assert ph.hu.shape == shape[::-1] and ph.masks["lung"].any()
