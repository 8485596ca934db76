"""The phrasebook of the synthetic report writer: every template and word :mod:`ctsurv.synthetic.reports`
draws from.

Pure data, in its own module so that the writer reads top-down as logic, and so that the wording can be
checked against the CT-RATE reports it imitates (``shared/reports/ctrate_reports_labeled.csv``) without
reading code. Templates are ``str.format`` strings; the writer fills their fields (``{d}`` a diameter in
mm, ``{lobe}`` a lobe phrase, ``{a}`` an article; a capitalised field name takes a capitalised word).
"""

from __future__ import annotations

from ctsurv.text.findings import LOBE_NAMES

# Every way a lobe is named ("right upper lobe", "upper lobe of the right lung", "right lung upper lobe").
LOBE_PHRASES: dict[str, tuple[str, ...]] = {
    lobe: (name, f"{level} lobe of the {side} lung", f"{side} lung {level} lobe")
    for lobe, name in LOBE_NAMES.items()
    for side, level in [name.split()[:2]]
}
# Thickness (mm) written for an effusion of each size class (the schema holds only the class): ranges
# around the depth the phantom renders (phantom.EFFUSION_MM: 10, 25, 45 mm), so text and image agree.
EFFUSION_THICKNESS_MM: dict[str, tuple[float, float]] = {"small": (7, 14), "moderate": (18, 32), "large": (36, 60)}
EFFUSION_SIZE_WORDS = {"small": ("small", "minimal", "mild"), "moderate": ("moderate",), "large": ("large", "marked")}
EMPHYSEMA_WORDS = {"mild": ("mild", "minimal"), "moderate": ("moderate",), "severe": ("severe", "marked", "advanced")}

# The phrasebook: several templates per statement, one of them drawn per report.
PHRASES: dict[str, tuple[str, ...]] = {
    "airways": (
        "Trachea, both main bronchi are open.",
        "Trachea and both main bronchi are open.",
        "Trachea and main bronchi are open.",
        "No occlusive pathology was detected in the trachea and both main bronchi.",
        "No occlusive pathology was detected in the trachea and lumen of both main bronchi.",
        "Trachea and both main bronchi were in the midline and no obstructive pathology was observed in the lumen.",
    ),
    "unenhanced": (
        "Mediastinal structures cannot be evaluated optimally because contrast material is not given.",
        "Mediastinal structures were evaluated as suboptimal since the examination was unenhanced.",
    ),
    "cardiomegaly": (
        "Heart size increased.",
        "Cardiothoracic index increased in favor of the heart (cardiomegaly).",
        "There is cardiomegaly.",
        "Heart size has increased (cardiomegaly).",
        "An increase in heart size is observed (cardiomegaly).",
    ),
    "heart_normal": (
        "Heart contour and size are normal.",
        "Heart contour size is natural.",
        "Heart dimensions and compartments appear natural.",
        "Heart size and contours are normal.",
    ),
    "vessels_normal": (
        "Thoracic aorta diameter is normal.",
        "The widths of the mediastinal main vascular structures are normal.",
        "Calibration of thoracic main vascular structures is natural.",
        "No dilatation was detected in the thoracic aorta.",
    ),
    "calcification": (
        "Calcific atheroma plaques are observed in the aorta.",
        "There are wall calcifications in the thoracic aorta.",
        "Calcified atheroma plaques are observed in the aortic arch and descending aorta.",
        "Atherosclerotic calcifications are observed in the wall of the thoracic aorta.",
        "There are calcific atherosclerotic plaques in the walls of the ascending aorta, arch and descending aorta.",
    ),
    "pericardial": (
        "There is pericardial effusion.",
        "Pericardial effusion surrounding the heart was observed.",
        "Pericardial effusion is observed between the pericardial leaves.",
        "Fluid density consistent with pericardial effusion is observed around the heart.",
    ),
    "pericardial_negative": (
        "Pericardial effusion-thickening was not observed.",
        "Pericardial thickening-effusion was not detected.",
        "Pericardial effusion was not detected.",
        "No pericardial effusion or thickening was detected.",
    ),
    "nodes_negative": (
        (
            "No enlarged lymph nodes in prevascular, pre-paratracheal, subcarinal or bilateral hilar-axillary "
            "pathological dimensions were detected."
        ),
        (
            "No enlarged lymph nodes in prevascular, pre-paratracheal, subcarinal or bilateral hilar-axillary "
            "pathological size were detected."
        ),
        "No pathologically enlarged lymph nodes were detected in the mediastinum and hilar regions.",
        "No lymph node was detected in mediastinal and bilateral hilar pathological size and appearance.",
        "No pathological LAP was detected in the mediastinum.",
        "There are no pathologically enlarged lymph nodes in the mediastinum and hilar regions.",
    ),
    "node": (
        "An enlarged lymph node with a short axis of {s} mm is observed in the {where}.",
        "There is a {l}x{s} mm lymph node in pathological size in the {where}.",
        "Lymphadenopathy measuring {l}x{s} mm was observed in the {where}.",
        "A pathologically enlarged lymph node measuring {s} mm in short axis is observed in the {where}.",
    ),
    "nodes": (
        "Enlarged lymph nodes with pathological short axis are observed in the {parts}.",
        "There are lymphadenopathies in the {parts}, measured in the short axis.",
        "Multiple pathologically enlarged lymph nodes are observed, with short axes of {axes}.",
    ),
    "esophagus": (
        "Thoracic esophageal calibration was normal and no significant tumoral wall thickening was detected.",
        "Thoracic esophagus calibration was normal and no significant pathological wall thickening was detected.",
        "No pathological wall thickness increase was observed in the esophagus within the sections.",
        "Esophagus is within normal limits.",
    ),
    "effusions_negative": (
        "No pleural or pericardial effusion was detected.",
        "No pleural or pericardial effusion or thickening was detected.",
    ),
    "pleural_negative": (
        "Pleural effusion-thickening was not detected.",
        "Pleural effusion-thickening was not detected in both hemithorax.",
        "No pleural effusion was detected.",
        "Bilateral pleural thickening-effusion was not detected.",
        "No pleural effusion or thickening was detected in either hemithorax.",
    ),
    "pleural_one_side": (
        "There is a {size} pleural effusion in the {side} hemithorax.",
        "{Size} pleural effusion is observed on the {side}.",
        "A {size} pleural effusion measuring {t} mm at its thickest point is observed in the {side} hemithorax.",
        "There is {size} pleural effusion on the {side}, measuring {t} mm at its widest point.",
        "{Size} {side}-sided pleural effusion is present.",
    ),
    "pleural_bilateral": (
        "There is bilateral {size} pleural effusion.",
        "{Size} pleural effusion is observed in both hemithorax.",
        (
            "Bilateral {size} pleural effusion is observed, measuring {right} mm on the right and {left} mm on the "
            "left at its thickest point."
        ),
        "Pleural effusion is observed in both pleural spaces, {size} in amount.",
        "{Size} bilateral pleural effusion was observed, {right} mm thick on the right and {left} mm on the left.",
    ),
    "lung_window": ("When examined in the lung parenchyma window;", "In the evaluation of both lung parenchyma;"),
    "emphysema": (
        "There are {sev} emphysematous changes in both lungs.",
        "{Sev} centrilobular and paraseptal emphysema is observed in both lungs.",
        "{Sev} emphysematous changes are observed in both lungs, more prominent in the upper lobes.",
        "Both lung parenchyma show {sev} emphysematous changes.",
    ),
    "emphysema_severe": ("Diffuse {sev} emphysema with bullous changes is observed in both lungs.",),
    "mass": (
        "A mass lesion measuring {d}x{d2} mm with irregular borders is observed in the {lobe}.",
        "There is {a} {d} mm soft tissue mass with spiculated contours in the {lobe}.",
        "In the {lobe}, a mass with lobulated contours, {d}x{d2} mm in size, is observed.",
        "A solid mass lesion with a diameter of {d} mm was detected in the {lobe}.",
    ),
    "nodule": (
        "A nodule measuring {d} mm is observed in the {lobe}.",
        "There is {a} {d} mm diameter solid nodule in the {lobe}.",
        "A solid nodule with a diameter of {d} mm was observed in the {lobe}.",
        "In the {lobe}, a well-circumscribed nodule measuring {d} mm is observed.",
        "{A} {d} mm parenchymal nodule is observed in the {lobe}.",
    ),
    "nodules": (
        (
            "Multiple solid nodules are observed in {where}, the largest of which measures {d} mm in the {lobe}; "
            "the others measure {others}."
        ),
        "There are nodules in {where}: the largest is {d} mm in diameter in the {lobe}, the others are {others}.",
        "Several nodules are observed in {where}, the largest {d} mm in the {lobe}, the others {others}.",
    ),
    "consolidation": (
        "Consolidation areas with air bronchograms are observed in the {lobes}.",
        "There is consolidation in the {lobes}.",
        "In the {lobes}, an increase in density compatible with consolidation containing air bronchograms is observed.",
        "Patchy consolidation areas were observed in the {lobes}.",
    ),
    "lungs_clear": (  # no nodule, no mass, no consolidation
        "No mass or infiltrative lesion was detected in both lungs.",
        "No mass nodule-infiltration was detected in both lung parenchyma.",
        "No nodular or infiltrative lesion was detected in the lung parenchyma.",
    ),
    "lungs_clear_aerated": (  # ... and no emphysema either
        (
            "Aeration of both lung parenchyma is normal and no nodular or infiltrative lesion is detected in the "
            "lung parenchyma."
        ),
    ),
    "no_consolidation": (
        "No infiltrative lesion or consolidation was detected in both lungs.",
        "No active infiltration was detected in both lungs.",
        "No consolidation was detected in the lungs.",
    ),
    "no_other_mass": ("Apart from this, no mass lesion with distinguishable borders was detected in both lungs.",),
    "no_nodule": ("No mass or nodular lesion was detected in both lungs.", "No pulmonary nodule or mass was detected."),
    "no_emphysema": ("No emphysematous changes were observed.",),
    "lung_extra_negative": (
        "No bronchiectasis was detected.",
        "No signs of atelectasis or bronchiectasis were observed.",
        "No interlobular septal thickening was observed.",
    ),
    "abdomen": (
        "Upper abdominal organs included in the sections are normal.",
        "No significant pathology was detected in the abdominal sections.",
        "Upper abdominal sections entering the examination area are natural.",
    ),
    "abdomen_detail": (
        "No space-occupying lesion was detected in the liver that entered the cross-sectional area.",
        "Bilateral adrenal glands were normal and no space-occupying lesion was detected.",
        "No upper abdominal free fluid-collection was detected in the sections.",
    ),
    "bones_negative": (
        "No lytic-destructive lesions were detected in the bone structures within the sections.",
        "Bone structures in the study area are natural.",
        "No lytic-destructive lesion was detected in bone structures.",
        "No obvious pathology was detected in bone structures.",
    ),
    "vertebrae_normal": (
        "Vertebral corpus heights are preserved.",
        "Vertebral corpus heights, alignments and densities are normal.",
    ),
    "lytic_one": (
        "A lytic lesion is observed in the {where}.",
        "There is a lytic-destructive lesion in the {where}, suspicious for metastasis.",
        "A lytic lesion with cortical destruction was observed in the {where} (metastasis?).",
    ),
    "lytic_many": (
        "Lytic-destructive lesions are observed in the {where}, suspicious for metastasis.",
        "There are lytic lesions in the {where}.",
        "Lytic lesions consistent with metastasis were observed in the {where}.",
    ),
    # impression lines
    "imp_normal": (
        "Thoracic CT examination within normal limits.",
        "No significant pathology was detected in the thorax.",
        "Thorax CT examination within normal limits.",
        "No significant pathology was detected in the examination area.",
    ),
    "imp_mass": (
        "Mass lesion in the {lobe} ({d} mm); primary malignancy should be excluded.",
        "{A} {d} mm mass in the {lobe}, suspicious for malignancy.",
        "Mass in the {lobe} measuring {d} mm; histopathological verification is recommended.",
    ),
    "imp_nodule": (
        "Solid nodule of {d} mm in the {lobe}; follow-up is recommended.",
        "Lung nodule in the {lobe} ({d} mm).",
        "{A} {d} mm pulmonary nodule in the {lobe}.",
    ),
    "imp_nodules": (
        "Pulmonary nodules, the largest {d} mm in the {lobe}; follow-up is recommended.",
        "Multiple lung nodules, the largest measuring {d} mm in the {lobe}.",
    ),
    "imp_nodes": (
        "{Kind} lymphadenopathy ({stations}).",
        "Enlarged lymph {nodes} in the {stations} {station_word} (lymphadenopathy).",
        "Pathologically enlarged {stations} lymph {nodes}.",
    ),
    "imp_pleural_one_side": ("{Size} {side} pleural effusion.", "{Size} pleural effusion in the {side} hemithorax."),
    "imp_pleural_bilateral": ("Bilateral {size} pleural effusion.", "{Size} pleural effusion in both hemithorax."),
    "imp_consolidation": (
        "Consolidation in the {lobes} (infectious process?); clinical and laboratory correlation is recommended.",
        "Areas of consolidation in the {lobes}, compatible with pneumonia in the appropriate clinical setting.",
        "Consolidation in the {lobes}.",
    ),
    "imp_emphysema": ("{Sev} emphysematous changes in both lungs.", "{Sev} emphysema in both lungs."),
    "imp_cardiomegaly": ("Cardiomegaly", "Increased cardiothoracic index (cardiomegaly)"),
    "imp_calcification": (
        "Atherosclerotic calcification of the aorta",
        "Calcific atheroma plaques in the aorta",
        "Arterial wall calcification in the thoracic aorta",
    ),
    "imp_lytic": (
        "Lytic bone lesion{s} in the {where}, suspicious for metastasis.",
        "Lytic-destructive lesion{s} in the {where} (metastasis?).",
    ),
}
