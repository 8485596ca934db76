"""The phantom's normal chest: patient-specific geometry and the structures every scan has.

:class:`Anatomy` scales and shifts a standard chest (numbers in the code, mm, RAS+, carina at z=25) per
patient. The shape functions give signed distances or surfaces of the chest wall, diaphragm, lung apices
and heart, and the centre lines of the great vessels and airways; :func:`paint_body` and :func:`bones`
paint the body and the skeleton, and :func:`lung_occupancy`, :func:`lobe_masks` and :func:`vessel_trees`
give the lungs, their lobes and their vessels. :mod:`ctsurv.synthetic.phantom` puts them together and
paints the findings over them.

Anatomy (HU as on unenhanced CT): air -1000, subcutaneous and mediastinal fat -100, muscle 45,
lungs about -850 (denser posteriorly) with vessel trees from the hila, trachea and main
bronchi, heart 45 with pericardial fat, aorta and pulmonary arteries 40, spine, ribs, sternum,
clavicles and scapulae, liver dome on the right and stomach/spleen on the left below the
diaphragm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctsurv.synthetic.geometry import Grid, ellipsoid_sd, paint, smoothstep, soft, tube, union

HU: dict[str, float] = {  # typical values; lung and liver vary per patient (Anatomy)
    "air": -1000, "fat": -100, "muscle": 45, "lung": -850, "emphysema": -960, "bulla": -995, "vessel": 40,
    "heart": 45, "pericardial_fluid": 8, "pleural_fluid": 12, "nodule": 35, "node": 40, "consolidation": 25,
    "cancellous": 260, "cortex": 1100, "rib": 700, "sternum": 450, "vertebral_arch": 550, "clavicle": 600,
    "scapula": 500, "cartilage": 130, "disc": 80, "canal": 20, "plaque": 1300, "lytic": 30, "liver": 58,
    "spleen": 48, "stomach": 25, "abdomen": 20, "table": 120,
}
CARDIOMEGALY_SCALE = (1.3, 1.2, 1.1)  # heart semi-axes (long, short, z) x this: CTR ~0.45 -> ~0.58
Vessels = dict[str, tuple[np.ndarray, np.ndarray]]  # name: (centre line (P, 3) mm, radii (P,) mm)


# ----------------------------------------------------------------------------- the patient's anatomy


@dataclass(frozen=True)
class Anatomy:
    """Patient-specific geometry: a standard chest (numbers in the code, mm) scaled and shifted."""

    scale: np.ndarray  # (3,) float32 x, y, z scale of the standard chest
    dz: float  # craniocaudal shift of the thorax (mm)
    fat_mm: float  # subcutaneous fat thickness
    lung_hu: float
    noise_sd: float
    liver_hu: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Anatomy:
        return cls(scale=rng.uniform([0.93, 0.9, 0.93], [1.05, 1.08, 1.04]).astype(np.float32),
                   dz=float(rng.uniform(-10, 10)), fat_mm=float(rng.uniform(6, 24)),
                   lung_hu=HU["lung"] + float(rng.uniform(-35, 0)), noise_sd=float(rng.uniform(15, 25)),
                   liver_hu=HU["liver"] + float(rng.uniform(-6, 6)))

    def at(self, x: float, y: float, z: float) -> np.ndarray:
        """World mm (3,) of the standard chest's point (x, y, z)."""
        return np.array([x, y, z], np.float32) * self.scale + np.array([0, 0, self.dz], np.float32)

    def path(self, *points: tuple[float, float, float]) -> np.ndarray:
        return np.stack([self.at(*p) for p in points])  # (P, 3)

    def zc(self, g: Grid) -> np.ndarray:
        """Standard-chest z of each slice (1, 1, Z)."""
        return (g.z - np.float32(self.dz)) / self.scale[2]


def chest_wall(g: Grid, a: Anatomy) -> dict[str, np.ndarray]:
    """Signed distances (mm) of the outer muscle surface and of the thoracic cavity (elliptic per slice,
    narrowing toward the thoracic inlet), and the 'anteriorness' (0 at the back .. 1 at the front) of each voxel."""
    top = smoothstep((a.zc(g) - 40) / 100)  # (1, 1, Z): 0 in the lower chest, 1 at the top
    sx, sy = a.scale[0], a.scale[1]
    ym = g.y > 0
    b_front = 88 * sy * (1 - 0.1 * top)
    muscle = ellipsoid_sd(g.x, g.y, None, 135 * sx * (1 - 0.15 * top), np.where(ym, b_front, 112 * sy))
    b_ant = 72 * sy * (1 - 0.15 * top)
    cavity = ellipsoid_sd(g.x, g.y, None, 117 * sx * (1 - 0.22 * top), np.where(ym, b_ant, 82 * sy * (1 - 0.1 * top)))
    anterior = np.arctan2(g.y, np.abs(g.x) + 1e-3) / np.float32(np.pi) + 0.5
    return {"muscle": muscle, "cavity": cavity, "anterior": anterior, "b_ant": b_ant}


def diaphragm_z(g: Grid, a: Anatomy) -> np.ndarray:
    """World z (X, Y, 1) of the diaphragm: two paraboloid domes, the right one higher (liver)."""
    domes = []
    for x0, y0, z0 in ((55, 5, -56), (-55, 0, -74)):
        c = a.at(x0, y0, z0)
        domes.append(c[2] - (g.x - c[0]) ** 2 / (2 * 90) - (g.y - c[1]) ** 2 / (2 * 50))
    return np.maximum(*domes)


def lung_apex_z(g: Grid, a: Anatomy) -> np.ndarray:
    """World z (X, Y, 1) of the lung apices: a dome over each lung."""
    c = a.at(48, -10, 120)
    return c[2] - (np.abs(g.x) - c[0]) ** 2 / (2 * 40) - (g.y - c[1]) ** 2 / (2 * 45)


def heart_sd(g: Grid, a: Anatomy, enlarged: bool) -> np.ndarray:
    """Signed distance (mm) to the heart: an ellipsoid whose long axis points left-anterior (35 deg)."""
    k = CARDIOMEGALY_SCALE if enlarged else (1.0, 1.0, 1.0)
    c = a.at(-18 - 25 * (k[0] - 1), 16, -40)
    cos, sin = np.float32(np.cos(np.deg2rad(35))), np.float32(np.sin(np.deg2rad(35)))
    dx, dy = g.x - c[0], g.y - c[1]
    return ellipsoid_sd(-cos * dx + sin * dy, sin * dx + cos * dy, g.z - c[2],
                        60 * k[0] * a.scale[0], 44 * k[1] * a.scale[1], 44 * k[2] * a.scale[2])


def great_vessels(a: Anatomy) -> Vessels:
    """Centre lines (P, 3) mm and radii (P,) mm of the aorta, pulmonary arteries, SVC, arch branches,
    brachiocephalic vein, trachea and main bronchi, and oesophagus (standard chest, carina at z=25)."""
    t = np.linspace(0, np.pi, 9)
    arch = [(8 - 35 * (1 - np.cos(s)) / 2, 20 - 60 * (1 - np.cos(s)) / 2, 45 + 22 * np.sin(s)) for s in t]
    r = lambda *v: np.array(v, np.float32)
    return {
        "aorta": (a.path((5, 14, -12), *arch, (-28, -40, 10), (-26, -44, -60), (-10, -42, -150)),
                  r(15, *[14 - 2 * s / np.pi for s in t], 12, 12, 11)),
        "pulmonary": (a.path((-40, 12, 18), (-12, 15, 22), (-18, 38, -5)), r(10, 13, 14)),
        "right_pa": (a.path((-12, 15, 22), (12, 0, 18), (42, -10, 12)), r(11, 10, 8)),
        "left_pa": (a.path((-40, 12, 18), (-48, -10, 16)), r(10, 8)),
        "svc": (a.path((30, 12, 100), (28, 12, 40), (26, 10, -10)), r(9, 10, 11)),
        "arch_branches": (a.path((2, 8, 66), (14, 8, 150)), r(7, 7)),
        "carotid": (a.path((-12, -2, 68), (-22, 0, 150)), r(5, 5)),
        "subclavian": (a.path((-24, -22, 62), (-40, -20, 120), (-60, -10, 150)), r(6, 6, 6)),
        "bc_vein": (a.path((-60, 30, 112), (-10, 22, 104), (30, 12, 100)), r(6, 7, 8)),
        "trachea": (a.path((0, -22, 150), (0, -22, 60), (0, -20, 25)), r(9.5, 9.5, 9)),
        "right_bronchus": (a.path((0, -20, 25), (26, -24, 12), (48, -22, 4)), r(7, 6.5, 5)),
        "left_bronchus": (a.path((0, -20, 25), (-28, -22, 16), (-50, -22, 8)), r(6.5, 6, 5)),
        "oesophagus": (a.path((-4, -38, 150), (-6, -38, 0), (-20, -30, -70), (-45, 0, -95)), r(7, 7, 7, 9)),
    }


# ----------------------------------------------------------------------------- painting the normal chest


def paint_body(hu: np.ndarray, g: Grid, a: Anatomy, wall: dict[str, np.ndarray], dia: np.ndarray,
               cavity: np.ndarray) -> np.ndarray:
    """Table, subcutaneous fat, muscle, upper abdomen (liver right, spleen and stomach left), thoracic fat;
    returns the body occupancy."""
    h = g.h
    body = soft(wall["muscle"] - a.fat_mm, h)
    back = float(a.at(0, -112, 0)[1]) - a.fat_mm * 0.4 - 14
    paint(hu, soft(np.abs(g.y - back - (g.x / 300) ** 2 * 40) - 3, h) * (np.abs(g.x) < 170) * (1 - body), HU["table"])
    paint(hu, body, HU["fat"])
    paint(hu, soft(wall["muscle"], h), HU["muscle"])
    abdomen = cavity * soft(g.z - dia - 4, g.spacing[2]) * (a.zc(g) < -20)
    paint(hu, abdomen, HU["abdomen"])
    below = abdomen * soft(g.z - dia, g.spacing[2])
    paint(hu, below * soft(-(g.x + 10 + 0.8 * np.maximum(g.y, 0)) * 0.7, h), a.liver_hu)
    organs = {}
    for name, c, semi in (("spleen", (-80, -45, -100), (24, 40, 45)), ("stomach", (-58, 15, -100), (36, 40, 34))):
        cc = a.at(*c)
        organs[name] = below * soft(ellipsoid_sd(g.x - cc[0], g.y - cc[1], g.z - cc[2], *semi), h)
        paint(hu, organs[name], HU[name])
    paint(hu, organs["stomach"] * soft(cc[1] + 14 - g.y, h), HU["air"])  # gas rises anteriorly (supine)
    paint(hu, cavity * soft(dia + 4 - g.z, g.spacing[2]), HU["fat"])  # thoracic contents start as fat
    return body


def lung_occupancy(g: Grid, a: Anatomy, wall: dict[str, np.ndarray], dia: np.ndarray, cavity: np.ndarray,
                   heart: np.ndarray, peri_mm: float, vessels: Vessels) -> tuple[np.ndarray, np.ndarray]:
    """Soft lung occupancy (X, Y, Z): the cavity below the apices and above the diaphragm, minus the
    mediastinum (a central band, the heart with its fat and fluid, the great vessels) and the spine;
    and the right-side mask (X, 1, Z) split at the mediastinum."""
    h, zc = g.h, a.zc(g)
    mx = float(a.at(-4, 0, 0)[0]) - 8 * smoothstep((40 - zc) / 60)  # band centre drifts left toward the heart
    half = 16 + 16 * np.exp(-(((zc - 62) / 34) ** 2))  # wider around the great vessels
    half = half * (1 - 0.45 * smoothstep((g.y - 10) / 50) - 0.2 * smoothstep((-20 - g.y) / 30))  # narrower front, back
    band = soft(np.abs(g.x - mx - 0.2 * (half - 16)) - half * a.scale[0], h) * soft(float(a.at(0, -46, 0)[1]) - g.y, h)
    c = a.at(0, -66, 0)
    spine = soft(ellipsoid_sd(g.x - c[0], g.y - c[1], None, 28, 32), h)
    mediastinum = union(band, soft(heart - 6 - peri_mm, h),
                        *[tube(g, *vessels[n], grow=4) for n in ("aorta", "pulmonary", "right_pa", "left_pa", "svc",
                                                                  "trachea", "oesophagus", "arch_branches")])
    below_apex, above_diaphragm = soft(g.z - lung_apex_z(g, a), g.spacing[2]), soft(dia + 6 - g.z, g.spacing[2])
    lung = cavity * below_apex * above_diaphragm * (1 - mediastinum) * (1 - spine)
    return lung, g.x > mx


def lobe_masks(g: Grid, a: Anatomy, lung: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (X, Y, Z) masks of the five lobes: oblique fissures (posterior-superior to anterior-inferior)
    split off the lower lobes, and a horizontal fissure the right middle lobe."""
    lower = g.z < float(a.at(0, 0, 45)[2]) - 0.95 * (g.y - float(a.at(0, -80, 0)[1]))
    middle = ~lower & right & (g.z < a.at(0, 0, 2)[2]) & (g.y > a.at(0, -40, 0)[1])
    lobes = {"RUL": ~lower & right & ~middle, "RML": middle, "RLL": lower & right,
             "LUL": ~lower & ~right, "LLL": lower & ~right}
    return {k: np.broadcast_to(v, g.shape) & lung for k, v in lobes.items()}


def vessel_trees(g: Grid, a: Anatomy, lung: np.ndarray, right: np.ndarray, rng: np.random.Generator,
                 generations: int = 5) -> tuple[np.ndarray, np.ndarray, float]:
    """Points (N, 3) mm every ``step`` mm, radii (N,) mm, and step, along pulmonary vessel trees: 7 trunks from
    each hilum (arteries) and from each side of the left atrium (veins) aimed at random lung points, each
    bifurcating ``generations`` times (radius x0.72, length x0.7-0.85); branches stop when they leave the lung."""
    starts, dirs, lens, rads = [], [], [], []
    for side in (1, -1):
        idx = np.flatnonzero(lung & (right if side == 1 else ~right))
        for root, r0 in ((a.at(side * 44, -12, 10), 6.0), (a.at(side * 34, -16, -25), 5.0)):
            if len(idx) == 0:
                continue
            target = g.origin + np.stack(np.unravel_index(rng.choice(idx, 7), g.shape), 1) * g.spacing  # (7, 3)
            dist = np.linalg.norm(target - root, axis=1, keepdims=True) + 1e-6
            starts.append(np.repeat(root[None], 7, 0)), dirs.append((target - root) / dist)
            lens.append(np.maximum(20.0, 0.3 * dist[:, 0])), rads.append(np.full(7, r0))
    if not starts:
        return np.zeros((0, 3)), np.zeros(0), 1.0
    p, d, ln, r = (np.concatenate(v).astype(np.float64) for v in (starts, dirs, lens, rads))
    segments = []
    for _ in range(generations):
        end = p + d * ln[:, None]
        segments.append((p, end, r))
        keep = lung[tuple(g.index(end).T)]
        p, d, ln, r = end[keep], d[keep], ln[keep], r[keep]
        if len(p) == 0:
            break
        perp = np.cross(d, rng.normal(size=d.shape))
        perp /= np.linalg.norm(perp, axis=1, keepdims=True) + 1e-9
        ang = rng.uniform(0.3, 0.65, size=(2, len(d), 1))
        d = np.concatenate([np.cos(ang[0]) * d + np.sin(ang[0]) * perp, np.cos(ang[1]) * d - np.sin(ang[1]) * perp])
        p, r = np.concatenate([p, p]), np.concatenate([r, r]) * 0.72
        ln = np.concatenate([ln, ln]) * rng.uniform(0.7, 0.85, size=2 * len(ln))
    p0, p1, r = (np.concatenate([s[i] for s in segments]) for i in range(3))  # (S, 3), (S, 3), (S,)
    step = 0.4 * g.h
    n = np.ceil(np.linalg.norm(p1 - p0, axis=1) / step).astype(int) + 1
    seg = np.repeat(np.arange(len(p0)), n)
    t = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(np.maximum(n - 1, 1), n)
    return p0[seg] + t[:, None] * (p1 - p0)[seg], r[seg] * (1 - 0.15 * t), step


def bones(hu: np.ndarray, g: Grid, a: Anatomy, wall: dict[str, np.ndarray]) -> np.ndarray:
    """Paint spine, ribs, costal cartilage, sternum, clavicles and scapulae; return the bone occupancy."""
    h, zc, s = g.h, a.zc(g), a.scale
    period = 26 * s[2]
    phase = np.mod(g.z - a.dz, period) - period / 2  # (1, 1, Z): 0 mid-vertebra, +-period/2 at the discs
    grow = 0.85 + 0.15 * smoothstep((60 - zc) / 160)  # vertebrae grow caudally
    c = a.at(0, -58, 0)
    vb_xy = ellipsoid_sd(g.x - c[0], g.y - c[1], None, 19 * grow, 16 * grow)
    vb_z = np.abs(phase) - (period - 6) / 2
    paint(hu, soft(vb_xy, h) * (1 - soft(vb_z, g.spacing[2])), HU["disc"])
    body = soft(np.maximum(vb_xy, vb_z), h)
    paint(hu, body, HU["cortex"])
    paint(hu, soft(np.maximum(vb_xy + 3, vb_z + 3), h), HU["cancellous"])
    cc = a.at(0, -88, 0)
    dx, dy = g.x - cc[0], g.y - cc[1]
    level = soft(np.abs(phase) - 9, g.spacing[2])  # spinous/transverse processes: one per level
    post = union(soft(ellipsoid_sd(dx, dy, None, 14 * grow, 12 * grow), h),  # laminae around the canal
                 soft(ellipsoid_sd(dx, dy + 20, None, 4, 13), h) * level,  # spinous process
                 soft(ellipsoid_sd(np.abs(dx) - 22, dy - 3, None, 13, 5), h) * level,  # transverse processes
                 soft(ellipsoid_sd(np.abs(dx) - 11, dy - 13, None, 4, 8), h))  # pedicles
    paint(hu, post, HU["vertebral_arch"])
    paint(hu, soft(ellipsoid_sd(dx, dy, None, 7.5, 7.5), h), HU["canal"])
    # ribs: a band just outside the cavity, repeating along z, sloping down anteriorly
    zr = g.z + 100 * s[2] * wall["anterior"] ** 1.2 - a.dz
    rphase = np.mod(zr, period) - period / 2
    rib = soft(np.maximum(np.abs(wall["cavity"] - 6) - 4.5, np.abs(rphase) - 5), h)
    rib *= (np.abs(g.x) > 14 * s[0]) * (zr > -125 * s[2]) * (zr < 112 * s[2])
    cartilage = wall["anterior"] > 0.78
    paint(hu, rib, np.where(cartilage, HU["cartilage"], HU["rib"]))
    # sternum (manubrium wider at the top), clavicles, scapulae
    width = np.where(zc > 50, 24, 14) * s[0]
    box_sd = np.maximum(np.maximum(np.abs(g.x) - width, np.abs(g.y - wall["b_ant"] - 8) - 6), np.abs(zc + 8) - 76)
    sternum = soft(box_sd, h)
    paint(hu, sternum, HU["sternum"])
    clav = union(*[tube(g, a.path((k * 20, 86, 96), (k * 70, 80, 104), (k * 128, 42, 114)), 7) for k in (1, -1)])
    paint(hu, clav, HU["clavicle"])
    scap = soft(np.abs(wall["cavity"] - 24) - 3, h) * (wall["anterior"] < 0.25) * (np.abs(g.x) > 55 * s[0])
    scap = scap * (zc > 10) * (zc < 115)
    paint(hu, scap, HU["scapula"])
    return union(body, post, rib * ~cartilage, sternum, clav, scap)
