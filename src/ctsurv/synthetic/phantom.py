"""A chest-CT phantom in Hounsfield units, rendered from a patient's ground-truth :class:`Findings`.

The phantom stands in for real scans so that the whole pipeline runs on a laptop and, because
the findings behind each image are known, so that "does the model see what matters?" has an
answer. It is built in world millimetres (RAS+: +x toward the patient's right, +y anterior,
+z superior; origin at the centre of the field of view), so the anatomy is the same at any
shape and spacing; only the sampling changes.

Every structure is painted over the previous ones with the soft-edged shapes of
:mod:`ctsurv.synthetic.geometry` (partial-volume edges without supersampling; thin vessels fade
as on a real thick-slice CT, nodules are round and dense). A mild blur and slightly correlated
Gaussian noise finish the image.

The normal chest (body, lungs and lobes, heart, great vessels and airways, bones, upper abdomen) comes from
:mod:`ctsurv.synthetic.anatomy`; this module renders it and paints the findings over it. The findings and
how they look are listed in :func:`render_phantom_full`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

from ctsurv.synthetic.anatomy import (
    HU,
    Anatomy,
    Vessels,
    bones,
    chest_wall,
    diaphragm_z,
    great_vessels,
    heart_sd,
    lobe_masks,
    lung_occupancy,
    paint_body,
    vessel_trees,
)
from ctsurv.synthetic.geometry import (
    Grid,
    affine_for,
    low_freq_noise,
    paint,
    place_with_clearance,
    random_direction,
    random_voxel,
    smoothstep,
    soft,
    sphere,
    splat,
    tube,
)
from ctsurv.text.findings import Findings

EFFUSION_MM = {"small": 10.0, "moderate": 25.0, "large": 45.0}  # depth of the dependent crescent
EMPHYSEMA_EXTENT = {"mild": 0.3, "moderate": 0.55, "severe": 0.85}  # fraction of (upper) lung involved
BULLAE = {"mild": 2, "moderate": 4, "severe": 8}
# Lymph node stations (x, y, z) mm for a standard patient (carina at z=25, trachea at y=-20).
STATIONS: dict[str, tuple[float, float, float]] = {
    "right paratracheal": (17, -14, 55), "left paratracheal": (-17, -12, 58), "subcarinal": (0, -32, 6),
    "aortopulmonary window": (-24, -6, 34), "right hilar": (44, -4, 0), "left hilar": (-44, -4, 4),
}


Lesion = tuple[str, np.ndarray, float]  # (kind, centre mm (3,), diameter mm)


@dataclass
class Phantom:
    """A rendered phantom and what is needed to check it: masks (bool, (X, Y, Z)) and lesion positions."""

    hu: np.ndarray  # (X, Y, Z) int16 HU, RAS
    affine: np.ndarray  # (4, 4)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    lesions: list[Lesion] = field(default_factory=list)


# ----------------------------------------------------------------------------- rendering


def render_phantom(findings: Findings, shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
                   rng: np.random.Generator) -> np.ndarray:
    """int16 HU array (X, Y, Z) in RAS (see :func:`affine_for`) of a chest CT showing ``findings``."""
    return render_phantom_full(findings, shape_zyx, spacing_zyx, rng).hu


def render_phantom_full(findings: Findings, shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
                        rng: np.random.Generator) -> Phantom:
    """Render the phantom and keep its masks and lesion centres (for tests and figures).

    How the findings look: nodules/masses are lobulated solid balls (35 HU) of their diameter in their
    lobe; a pleural effusion is a dependent (posterior) layer of fluid (12 HU) 10/25/45 mm deep;
    emphysema darkens (-960 HU, with holes) a patchy, upper-zone-predominant part of the lungs, with
    bullae; consolidation fills a segment or a lobe (25 HU) with air bronchograms; enlarged lymph nodes
    (40 HU) sit at their station; a pericardial effusion is a 15-25 mm fluid rim (8 HU) between heart
    and pericardial fat; cardiomegaly enlarges the heart (CTR ~0.58 vs ~0.45); arterial calcification is
    6-15 bright plaques on the aortic wall; lytic lesions are 12-22 mm soft-tissue (30 HU) holes in
    vertebral bodies (70%) or other bones.
    """
    g, f = Grid.of(shape_zyx, spacing_zyx), findings
    a = Anatomy.draw(rng)
    hu = np.full(g.shape, HU["air"], np.float32)
    wall, dia = chest_wall(g, a), diaphragm_z(g, a)
    cavity = soft(wall["cavity"], g.h)
    body = paint_body(hu, g, a, wall, dia, cavity)
    vessels, heart = great_vessels(a), heart_sd(g, a, f.cardiomegaly)
    peri_mm = float(rng.uniform(15, 25)) if f.pericardial_effusion else 0.0
    lung, right = lung_occupancy(g, a, wall, dia, cavity, heart, peri_mm, vessels)
    lobes = lobe_masks(g, a, lung > 0.5, right)
    findings_masks: dict[str, np.ndarray] = {}
    lesions = paint_lungs(hu, g, a, f, lung, right, lobes, wall, rng, findings_masks)
    lesions += paint_mediastinum(hu, g, a, f, heart, peri_mm, vessels, cavity, rng)
    bone = bones(hu, g, a, wall)
    lesions += paint_lytic(hu, g, a, f.lytic_bone_lesions, bone, rng)
    # scanner: point spread, slightly correlated noise
    hu = ndimage.gaussian_filter(hu, sigma=0.35)  # mild: the soft edges already carry the partial volume
    noise = ndimage.gaussian_filter(rng.standard_normal(g.shape, dtype=np.float32), 0.6)
    hu += noise * np.float32(a.noise_sd / noise.std())
    masks = {"lung": lung > 0.5, "lung_right": (lung > 0.5) & right, "lung_left": (lung > 0.5) & ~right,
             "heart": heart < 0, "body": body > 0.5, "bone": bone > 0.5, **{f"lobe_{k}": v for k, v in lobes.items()},
             **findings_masks}
    hu16 = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Phantom(hu16, affine_for(shape_zyx, spacing_zyx), masks, lesions)


def paint_lungs(hu: np.ndarray, g: Grid, a: Anatomy, f: Findings, lung: np.ndarray, right: np.ndarray,
                lobes: dict[str, np.ndarray], wall: dict[str, np.ndarray], rng: np.random.Generator,
                masks: dict[str, np.ndarray] | None = None) -> list[Lesion]:
    """Parenchyma (denser posteriorly), vessel trees, and the lung findings; returns nodule/mass centres. Where
    the painted weight of a consolidation or a pleural effusion is at least one half, ``masks`` (when given) gets
    it as "consolidation" / "pleural_effusion" (bool (X, Y, Z)): the truth that evidence maps are checked against."""
    masks = {} if masks is None else masks
    h, zc, hard, cavity = g.h, a.zc(g), lung > 0.5, soft(wall["cavity"], g.h)
    field = a.lung_hu + 35 * smoothstep((-10 - g.y) / 70) + 30 * (low_freq_noise(g.shape, 6, rng) - 0.5)
    if f.emphysema:
        upper = 0.35 + 0.65 * smoothstep((zc + 40) / 120)
        blobs = low_freq_noise(g.shape, 8, rng)
        patches = special.ndtr((blobs - blobs.mean()) / blobs.std()) < EMPHYSEMA_EXTENT[f.emphysema] * upper * 1.2
        holes = rng.random(g.shape, dtype=np.float32) < 0.35
        emph = np.where(holes, HU["bulla"], HU["emphysema"] + 15 * rng.standard_normal(g.shape, dtype=np.float32))
        field = np.where(patches, emph, field)
    paint(hu, lung, field)
    pts, radii, step = vessel_trees(g, a, hard, right, rng)
    paint(hu, splat(g, pts, radii, step) * lung, HU["vessel"])
    if f.emphysema:
        for _ in range(BULLAE[f.emphysema]):
            sphere(hu, g, random_voxel(g, hard & (zc > 30), rng), float(rng.uniform(8, 20)), HU["bulla"], within=lung)
    for lobe in f.consolidation:
        region = lobes[lobe].astype(np.float32)
        if rng.random() < 0.6:  # segmental: the part of the lobe near a random point
            c = random_voxel(g, lobes[lobe], rng)
            region *= soft(np.sqrt((g.x - c[0]) ** 2 + (g.y - c[1]) ** 2 + (g.z - c[2]) ** 2) - rng.uniform(35, 55), 12)
        region = ndimage.gaussian_filter(region, 0.6) * lung
        paint(hu, region, HU["consolidation"])
        masks["consolidation"] = masks.get("consolidation", np.zeros(g.shape, bool)) | (region >= 0.5)
        bronchi = splat(g, pts + rng.normal(0, 2, 3).astype(np.float32), radii * 0.7, step)
        paint(hu, bronchi * region, HU["air"] + 200)  # air bronchograms
    if f.pleural_effusion:
        for is_right in {"right": [True], "left": [False], "bilateral": [True, False]}[f.pleural_effusion.side]:
            depth = EFFUSION_MM[f.pleural_effusion.size] * rng.uniform(0.9, 1.1)
            side = right if is_right else ~right
            ys = np.where(hard & side, g.y, np.inf).min(axis=(0, 1))  # (Z,) most dependent lung y per slice
            ys = np.where(np.isfinite(ys), ys, 0).astype(np.float32)[None, None, :]
            depth = depth * (0.6 + 0.4 * smoothstep((float(a.at(0, 0, 60)[2]) - g.z) / 120))  # deeper at the bases
            # a crescent along the chest wall: depth thick at the most dependent point, thinning up to 2x depth
            thickness = depth * np.clip((ys + 2 * depth - g.y) / (2 * depth), 0, 1) ** 0.7
            pleural_space = np.minimum(ndimage.maximum_filter(lung, 3), cavity) * side  # lung + its rim
            fluid = pleural_space * soft(-wall["cavity"] - thickness, h)
            paint(hu, fluid, HU["pleural_fluid"])
            masks["pleural_effusion"] = masks.get("pleural_effusion", np.zeros(g.shape, bool)) | (fluid >= 0.5)
    lesions = []
    for nod in f.nodules:
        c = place_with_clearance(g, lobes[nod.lobe] if lobes[nod.lobe].any() else hard, hard, nod.diameter_mm / 2 + h, rng)
        lobulation = 0.25 if nod.is_mass else 0.08
        sphere(hu, g, c, nod.diameter_mm / 2, HU["nodule"], rng, lobulation=lobulation, within=cavity)
        lesions.append(("mass" if nod.is_mass else "nodule", c, nod.diameter_mm))
    return lesions


def paint_mediastinum(hu: np.ndarray, g: Grid, a: Anatomy, f: Findings, heart: np.ndarray, peri_mm: float,
                      vessels: Vessels, cavity: np.ndarray,
                      rng: np.random.Generator) -> list[Lesion]:
    """Heart (with pericardial fluid), great vessels, lymph nodes, airways, aortic plaques; returns node centres."""
    h = g.h
    if peri_mm:
        paint(hu, soft(heart - peri_mm - 3, h) * cavity, HU["pericardial_fluid"])
        paint(hu, soft(heart - 3, h), HU["fat"])  # epicardial fat inside the fluid
    paint(hu, soft(heart, h) * cavity, HU["heart"])
    for name in ("aorta", "pulmonary", "right_pa", "left_pa", "svc", "arch_branches", "carotid", "subclavian",
                 "bc_vein", "oesophagus"):
        paint(hu, tube(g, *vessels[name]), HU["vessel"])
    lesions = []
    for node in f.lymph_nodes:  # after the vessels: enlarged nodes engulf them
        c = a.at(*STATIONS[node.station]) + rng.normal(0, 2, 3).astype(np.float32)
        sphere(hu, g, c, node.short_axis_mm / 2, HU["node"], scale=(1.0, 1.1, float(rng.uniform(1.2, 1.5))))
        lesions.append(("node", c, node.short_axis_mm))
    airways = ("trachea", "right_bronchus", "left_bronchus")
    for name in airways:
        paint(hu, tube(g, *vessels[name]), HU["muscle"])
    for name in airways:
        paint(hu, tube(g, vessels[name][0], vessels[name][1] - 2.5), HU["air"])
    if f.arterial_calcification:
        line, rad = vessels["aorta"]
        for _ in range(int(rng.integers(6, 16))):
            i = int(rng.integers(3, len(line) - 1))
            p = line[i] + np.float32(rng.uniform(0, 1)) * (line[i + 1] - line[i])
            sphere(hu, g, p + random_direction(rng) * (rad[i] - 1.5), float(rng.uniform(2.5, 4)), HU["plaque"])
    return lesions


def paint_lytic(hu: np.ndarray, g: Grid, a: Anatomy, count: int, bone: np.ndarray,
                rng: np.random.Generator) -> list[Lesion]:
    """``count`` lytic lesions, 12-22 mm: 70% in a thoracic vertebral body inside the field of view, the
    others anywhere in bone (mostly ribs); each replaces the bone it covers (and a rim) with soft tissue."""
    lesions: list[Lesion] = []
    if count == 0:
        return lesions
    near_bone = ndimage.maximum_filter(bone, 3)
    z_lo = max(float(a.at(0, 0, -90)[2]), float(g.z.min()) + 10)
    z_hi = max(min(float(a.at(0, 0, 80)[2]), float(g.z.max()) - 10), z_lo)
    for _ in range(count):
        if rng.random() < 0.7:
            c = a.at(0, -58, 0) + np.array([*rng.normal(0, 3, 2), rng.uniform(z_lo, z_hi) - a.dz], np.float32)
        else:
            c = random_voxel(g, bone > 0.5, rng)
        d = float(rng.uniform(12, 22))
        sphere(hu, g, c, d / 2, HU["lytic"], within=near_bone)
        lesions.append(("lytic", c, d))
    return lesions
