"""Ground-truth findings of a synthetic patient, shared by the phantom renderer and the report writer.

The names of the abnormalities follow the 18 manually labelled CT-RATE abnormalities wherever
they overlap (``LABELS``); the generator also renders lung masses and lytic bone lesions,
which CT-RATE does not label. Only :mod:`ctsurv.synthetic.patients` draws findings; everything
downstream of the cohort table sees them only through the rendered volume and the report text
(and evaluation through ``truth.csv``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The 18 abnormality labels of CT-RATE, spelled exactly as in its label files.
CTRATE_LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

Lobe = Literal["RUL", "RML", "RLL", "LUL", "LLL"]
Side = Literal["right", "left"]
Severity = Literal["mild", "moderate", "severe"]
EffusionSize = Literal["small", "moderate", "large"]
NodeStation = Literal["right paratracheal", "left paratracheal", "subcarinal", "aortopulmonary window", "right hilar", "left hilar"]

LOBE_NAMES: dict[str, str] = {
    "RUL": "right upper lobe",
    "RML": "right middle lobe",
    "RLL": "right lower lobe",
    "LUL": "left upper lobe",
    "LLL": "left lower lobe",
}

MASS_DIAMETER_MM = 30.0  # a lung lesion of 30 mm or more is a mass, below it a nodule (Fleischner)


@dataclass(frozen=True)
class Nodule:
    """A solid lung nodule (< 30 mm) or mass (>= 30 mm)."""

    lobe: Lobe
    diameter_mm: float

    @property
    def is_mass(self) -> bool:
        return self.diameter_mm >= MASS_DIAMETER_MM


@dataclass(frozen=True)
class PleuralEffusion:
    side: Literal["right", "left", "bilateral"]
    size: EffusionSize


@dataclass(frozen=True)
class LymphNode:
    """An enlarged mediastinal/hilar lymph node (short axis > 10 mm)."""

    station: NodeStation
    short_axis_mm: float


@dataclass(frozen=True)
class Findings:
    """Everything abnormal about one synthetic chest CT. Empty tuples / None mean absent."""

    nodules: tuple[Nodule, ...] = ()
    pleural_effusion: PleuralEffusion | None = None
    emphysema: Severity | None = None
    consolidation: tuple[Lobe, ...] = ()
    lymph_nodes: tuple[LymphNode, ...] = ()
    pericardial_effusion: bool = False
    cardiomegaly: bool = False
    arterial_calcification: bool = False
    lytic_bone_lesions: int = 0  # count of lytic lesions in vertebral bodies and ribs

    def labels(self) -> dict[str, int]:
        """0/1 labels: the CT-RATE names where they overlap, plus 'Lung mass' and 'Lytic bone lesion'."""
        return {
            # a mass is its own label: the CT-RATE annotators marked "Lung nodule" for only 16 of 29 masses
            "Lung nodule": int(any(not n.is_mass for n in self.nodules)),
            "Lung mass": int(any(n.is_mass for n in self.nodules)),
            "Pleural effusion": int(self.pleural_effusion is not None),
            "Emphysema": int(self.emphysema is not None),
            "Consolidation": int(bool(self.consolidation)),
            "Lymphadenopathy": int(bool(self.lymph_nodes)),
            "Pericardial effusion": int(self.pericardial_effusion),
            "Cardiomegaly": int(self.cardiomegaly),
            "Arterial wall calcification": int(self.arterial_calcification),
            "Lytic bone lesion": int(self.lytic_bone_lesions > 0),
        }

    @property
    def largest_nodule_mm(self) -> float:
        return max((n.diameter_mm for n in self.nodules), default=0.0)


FINDING_LABELS: tuple[str, ...] = tuple(Findings().labels())
