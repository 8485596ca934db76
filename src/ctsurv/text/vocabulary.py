"""The vocabulary of the report-to-labels extractor (:mod:`ctsurv.text.labels`), as regular expressions.

Each label's terms (``LABEL_TERMS``, ``EXTRA_LABEL_TERMS``), the context rules that veto or require
them (``TERM_VETOES``, ``LABEL_EXCLUSIONS``, ``CLAUSE_REQUIREMENTS``, ``LUNG_ONLY_LABELS``, the organ and
vessel words), and the cues of negation, uncertainty and clause boundaries. Data only: it is kept apart
from the extractor's logic so that either can be read, reviewed and tuned without the other, and its
growth with each newly seen phrasing does not bury the algorithm.
"""

from __future__ import annotations

import re

# ============================================================================================
# Vocabulary (regular expressions, matched case-insensitively within one clause)
# ============================================================================================

# A nodule/density/effusion clause that names another organ and none of these lung words is not a lung finding.
LUNG = (
    r"lung|pulmon|fissur|pleur|lingul|(?:upper|middle|lower)[- ]lobes?\b|hemithora|apex|apices|apical|bronch|"
    r"subsegment|posterobasal|laterobasal|mediobasal|apicoposterior"
)
OTHER_ORGAN = (
    r"liver|hepat|kidney|renal|adrenal|thyroid|spleen|splen|pancrea|breast|mammar|bone|vertebra|\bribs?\b|sternum|"
    r"skin|subcutan|cutaneous|gallbladder|stomach|gastric|esophag|bowel|colon|uter|ovar|prostat|bladder|muscle|"
    r"axilla|peritone|mesenter|abdominal wall|omentum|choledoch|bile|perinephr|perirenal|pericardi|pelvi|joint|mediastin|"
    r"coronar|aort|valv"
)

LABEL_TERMS: dict[str, tuple[str, ...]] = {
    "Medical material": (
        r"catheter", r"\bports?\b", r"pacemaker", r"defibrillator", r"\bA?ICD\b", r"electrode", r"\bstent(?:s|ing)?\b",
        r"prosthe(?:sis|ses|tic)", r"valve replacement", r"sternotomy", r"sternal (?:wire|suture)",
        r"sutur(?:e|al) (?:material|line)", r"(?:metallic|surgical) sutur", r"\bclips?\b", r"staple",
        r"(?:nasogastric|orogastric|endotracheal|tracheostomy|chest|thorax|thoracostomy|drainage|feeding|gastrostomy) tube",
        r"\b(?:ET|NG|OG) tube", r"tracheostomy", r"\bcannula", r"\bdrain\b", r"\bcoils?\b", r"embolization material",
        r"(?:metallic|surgical|fixation) (?:material|plate)", r"(?:breast|silicone) implant", r"fixator", r"\bscrews?\b",
        r"\bPEG\b", r"\bCVC\b", r"\bPICC\b", r"central (?:venous )?line", r"hardware", r"\bwires?\b", r"foreign body",
        r"metallic (?:density|densities|artifact)",
    ),
    "Arterial wall calcification": (
        r"atheroma", r"atherosclero", r"atheromatous", r"calcific plaque", r"calcified plaque", r"\bplaques?\b",
        r"(?:aort\w*|arter\w*|vascular) (?:wall )?calcification", r"wall calcification", r"calcifications?\b",
    ),
    "Cardiomegaly": (
        r"cardiome[a-z]*",
        (
            r"heart (?:size|sizes|dimensions?|volume)?\s*(?:(?:is|are|was|were|has|have)\s+)?(?:been\s+)?"
            r"(?:slightly |mildly |minimally |significantly |markedly )?(?:increased|enlarged|larger|large)"
        ),
        r"(?:increase|enlargement) (?:in|of) (?:the )?(?:heart|cardiac) (?:size|dimension)", r"enlarged heart",
        r"cardiac enlargement", r"enlarge\w* (?:of )?(?:the )?cardiac silhouette", r"cardiac silhouette is enlarged",
        r"cardiothora\w* (?:index|ratio)[^.]{0,40}increas", r"increas\w* (?:in )?(?:the )?cardiothora\w*",
        r"\bCTR\b[^.]{0,30}increas", r"increas\w* (?:in )?(?:the )?CTR\b",
    ),
    "Pericardial effusion": (
        r"pericardi\w*(?: [\w-]+){0,2} (?:effusion|fluid)", r"(?:effusion|fluid)[^.;]{0,70}pericardi", r"hemopericardium",
    ),
    # counts only in a clause that also has a calcification/atherosclerosis word (CLAUSE_REQUIREMENTS)
    "Coronary artery wall calcification": (r"coronar", r"\bLAD\b", r"circumflex", r"anterior descending"),
    "Hiatal hernia": (
        r"hiat\w* hernia", r"hernia[^.;]{0,30}hiatus", r"paraesophageal hernia", r"herniated stomach",
        r"(?:diaphragmatic|sliding) hernia[^.;]{0,90}(?:esophag|gastric|hiat)", r"hernia[^.;]{0,40}esophagogastric",
        r"sliding(?:[- ]type)? (?:\w+ )?hernia",
    ),
    "Lymphadenopathy": (r"lymph ?nodes?(?! stations?)", r"lymphadenopath", r"\bLAPs?\b", r"\badenopath", r"lymph nodular"),
    "Emphysema": (r"emphysem", r"\bbullae?\b", r"\bbullous", r"\bblebs?\b"),
    "Atelectasis": (r"(?<!fibro)(?<!fibro-)(?<!fibro )atelecta", r"\bcollaps"),
    "Lung nodule": (
        r"nodul", r"micronod", r"granuloma", r"(?:intrapulmonary|intraparenchymal|subpleural|fissural|perifissural) lymph node",
    ),
    "Lung opacity": (
        r"(?:ground|frosted)[- ]?glass", r"opacit", r"density increase", r"increases? (?:in )?(?:the )?density",
        r"increased density", r"\bdensities\b", r"infiltrat",
    ),
    "Pulmonary fibrotic sequela": (
        r"sequel", r"fibro(?!id|adenom|ma\b|lipom|cystic)", r"fibrous", r"parenchymal band", r"pleuro-?parenchymal",
        r"\bscar", r"cicatri",
    ),
    "Pleural effusion": (
        r"pleural\W+(?:\w+\W+){0,2}effusion", r"(?<!pericardial )(?<!pericardial, )effusion[^.;]{0,70}(?:pleura|hemithora)",
        r"hydro-?p?n?\w*thorax", r"hemothorax", r"empyema", r"pleural fluid", r"fluid[^.;]{0,30}pleural (?:space|cavity)",
        r"(?:bilateral|right|left|minimal|mild|small) effusion",
    ),
    "Mosaic attenuation pattern": (r"mosaic",),
    "Peribronchial thickening": (
        r"peribronch\w*(?: \w+){0,4} thick", r"thicken\w* of the peribronch", r"peribronch\w* (?:sheath|cuffing)",
        r"peribronch\w* (?:\w+ )?(?:thickness|wall)", r"bronchial wall thicken", r"thickening of the bronchial wall",
    ),
    "Consolidation": (r"consolidat",),
    "Bronchiectasis": (r"bronchiect", r"bronchiolect", r"bronch\w* ectasi", r"ectasi\w*(?: \w+){0,4} bronch"),
    "Interlobular septal thickening": (
        r"septal (?:\w+ )?thicken", r"septal (?:\w+ )?thickness", r"interlob\w* sept\w*(?: \w+){0,3} (?:thick|clarif|prominen)",
        r"(?:thicken|prominen)\w*(?: [\w-]+){0,5} interlob\w* sept",
    ),
}

# Findings outside the 18 CT-RATE labels that our synthetic cohort also has; available through
# ``find_mentions`` / ``text_has_label`` but not part of ``extract_labels``.
EXTRA_LABEL_TERMS: dict[str, tuple[str, ...]] = {
    "Lung mass": (r"\bmass(?:es)?\b",),
    "Lytic bone lesion": (r"\blytic", r"osteoly"),
}
LABEL_TERMS.update(EXTRA_LABEL_TERMS)

# A term that does not count when its clause matches the veto: label -> {term: veto}.
# A "sequela density increase" is a fibrotic sequela, not an opacity; a "ground-glass nodule" is a nodule;
# "nodular consolidation" is a consolidation, not a nodule.
_QUALIFIED_DENSITY = (
    r"fibro|pleur\w*-?parenchymal|pleural parenchymal|\bband|consolidat|\bbud|tree|soft tissue|thym|gynecomast|"
    r"suture|calcif|scar|emphysem|bulla|free air|fatty|fat\b"
)
TERM_VETOES: dict[str, dict[str, str]] = {
    "Lung mass": {r"\bmass(?:es)?\b": r"mass effect|mass configuration|mass-like|mass lesion-active|space-occupying"},
    "Lymphadenopathy": {r"lymph ?nodes?(?! stations?)": r"normal[- ](?:size|sized)|normal in size|within normal"},
    "Consolidation": {r"consolidat": r"(?:ground|frosted)[- ]glass (?:\w+ )?consolidat"},
    "Atelectasis": {r"\bcollaps": r"^(?!.*(?:lung|lobe|lobar|segment|lingul))|vertebra|fracture"},
    "Lung nodule": {
        r"nodul": r"nodul\w* (?:ground|frosted|consolidat|infiltrat|densit|opacit|thicken|calcif|goiter|formation)"
        r"|nodular (?:\w+ )?(?:density|ground|consolidat|pleural)|multinodular|reticulonodul|hypodense|\bpleural nodul"
        r"|nodul\w* (?:\w+ ){0,3}in the pleura|patchy-nodular",
    },
    "Arterial wall calcification": {r"calcifications?\b": r"^(?!.*(?:aort|arter|arch\b|carotid))"},
    "Lung opacity": {
        r"(?:ground|frosted)[- ]?glass": r"(?:ground|frosted)[- ]?glass(?:[- ]density)? nodul",
        r"density increase": _QUALIFIED_DENSITY,
        r"increases? (?:in )?(?:the )?density": _QUALIFIED_DENSITY,
        r"increased density": _QUALIFIED_DENSITY,
        r"\bdensities\b": _QUALIFIED_DENSITY + r"|parenchyma densities|ground|frosted",
        r"infiltrat": r"pneumoni|leukemic|metasta|\bactive infiltrat|nodular infiltrat|mass|tumou?r|kidney|invasion",
    },
}

# A label's mentions do not count when the clause matches one of these.
LABEL_EXCLUSIONS: dict[str, tuple[str, ...]] = {
    # an intrapulmonary lymph node is a lung nodule, not lymphadenopathy
    "Lymphadenopathy": (r"(?:intrapulmonary|intraparenchymal|subpleural|fissur\w*|perifissural) lymph node", r"lymph node[^.;]{0,20}fissur"),
}

# A label's mentions count only when the clause also matches this.
CLAUSE_REQUIREMENTS: dict[str, str] = {
    "Coronary artery wall calcification": r"calcif|atheroma|atherosclero|atheromatous|plaque",
}

# Labels whose mentions count only in a lung context (dropped when the clause names another organ only).
LUNG_ONLY_LABELS: frozenset[str] = frozenset(
    {"Lung nodule", "Lung mass", "Lung opacity", "Pulmonary fibrotic sequela", "Consolidation", "Pleural effusion"}
)

# Vessels for "Arterial wall calcification" (thoracic aorta and branches; not coronary, not abdominal).
CORONARY_VESSEL = (
    r"(?:coronary|left anterior descending|circumflex|\bLAD\b)(?: arter(?:y|ies)| vascular structures?| vessels?)?(?: walls?)?"
    r"|(?:aortic|mitral|cardiac|heart|prosthetic) valves?|valvular|annul\w*"  # valves are not arterial walls either
)
ABDOMINAL_VESSEL = r"(?<!thoraco)(?:abdominal|infrarenal) aort\w*|iliac arter\w*|iliac\b|renal arter\w*|celiac|mesenteric arter\w*"
THORACIC_VESSEL = r"aort|arch|carotid|subclavian|brachiocephalic|innominate|vascular (?:structures|walls?)|arter|vessel"
OTHER_PLAQUE_SITE = r"coronar|\bLAD\b|circumflex|anterior descending|valv|annul|" + ABDOMINAL_VESSEL + r"|pleura"

# ============================================================================================
# Negation, uncertainty and clause cues
# ============================================================================================

_NEG_VERB = (
    r"(?:detected|observed|seen|found|identified|present|visuali[sz]ed|visible|noted|determined|encountered|distinguished|"
    r"appreciated|demonstrated|evident|apparent|monitored|considered|selected|described|reported|recognized|followed)"
)
# A cue before the mention negates everything after it in the clause ("no change/difference" is not a negation).
PRE_NEGATION = re.compile(
    r"\bno\b(?!\s+(?:significant\s+|marked\s+|obvious\s+|interval\s+|appreciable\s+)?"
    r"(?:changes?|differences?|progression|regression|growth|increase in (?:size|number))\b)"
    r"|\bnot? any\b|\bwithout\b|\bresolution of\b|\bnon-?enlarged\b|\bfree of\b|\babsence of\b|\bnegative for\b"
    r"|\bneither\b|\bnor\b|\bthere is not\b",
    re.IGNORECASE,
)
# A negated verb after the mention negates the mention ("was not detected", "has resolved", ": none").
POST_NEGATION = re.compile(
    rf"\b(?:not|nor)\s+(?:been\s+|be\s+)?(?:clearly\s+|significantly\s+|obviously\s+)?{_NEG_VERB}\b"
    r"(?!\s+(?:in|on)\s+the\s+(?:previous|prior|former|old|last)\b)"  # "not seen on the prior study": new, not absent
    r"|\b(?:is|are|was|were)\s+not\s+(?:pathologically\s+|significantly\s+)?enlarged\b"
    r"|:\s*(?:none|absent|negative|no|nil)\b|\bruled out\b|\bexcluded\b|\bno longer\b|\bdisappeared\b|\bresolved\b"
    r"|\b(?:completely|totally|fully) regressed\b|\b(?:full|complete|total) regression\b|\babsent\b"
    r"|\b(?:was|were|has been|have been) removed\b",
    re.IGNORECASE,
)
# "cannot be excluded" raises a finding rather than denying it.
NOT_EXCLUDED = re.compile(r"(?:cannot|can not|could not|can't) be (?:excluded|ruled out)", re.IGNORECASE)
UNCERTAINTY = re.compile(
    r"\?|\bpossib|\bprobab|\bsuspicio|\blikely\b|\bmay (?:be|belong|represent)|\bcannot be (?:excluded|ruled out)"
    r"|\bdifferential\b|\bquestionable\b|\bconsistent with\b|\bin favou?r of\b",
    re.IGNORECASE,
)

VERB = re.compile(
    r"\b(?:is|are|was|were|has|have|had|been|be|there|observed|detected|seen|noted|found|present|extends?|ends?"
    r"|terminates?|contains?|shows?|measur(?:es|ed))\b",
    re.IGNORECASE,
)
# A piece starting with these continues the clause before it ("A nodule, which was seen before, ...").
CONTINUATION = re.compile(
    r"^\s*(?:is|are|was|were|has|have|had|which|that|who|where|in which|measuring|reaching|respectively|the largest|largest)\b",
    re.IGNORECASE,
)
HARD_BREAK = re.compile(
    r";|\bbut\b|\bhowever\b|\bwhereas\b|\bwhile\b|\balthough\b|\bapart from (?:this|these|that)\b"
    r"|\bother than (?:this|these)\b|\bexcept for\b|\bin addition\b|\bbesides\b",
    re.IGNORECASE,
)
SOFT_BREAK = re.compile(
    r"(:\s*|,\s*and\s+|,\s*|\s+and\s+(?=there|no\b|[a-z ]{0,40}\b(?:is|are|was|were)\b))", re.IGNORECASE
)
# sentence ends: ". " before a non-lowercase character (not "2.3 mm"), bullets, quotes, line breaks
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[^a-z])|(?<=[.])(?=[A-Z][a-z])|\s*[\"“”•·\n]+\s*")
