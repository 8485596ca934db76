"""CT-RATE and INSPECT adapters on tiny tables with the datasets' published headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctsurv.config import DataConfig
from ctsurv.errors import CohortError
from ctsurv.io.adapters import ctrate_to_cohort, inspect_to_cohort
from ctsurv.io.cohort import load_cohort

# --------------------------------------------------------------------------- CT-RATE

NAMES = ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_b_1.nii.gz"]


def ctrate_files(root: Path, names: list[str] = NAMES, meta_names: list[str] | None = None) -> tuple[Path, Path, Path]:
    """reports.csv, metadata.csv and dummy volumes laid out as CT-RATE ships them."""
    reports = pd.DataFrame({
        "VolumeName": names,
        "ClinicalInformation_EN": [f"cough {i}" for i in range(len(names))],
        "Technique_EN": ["non-contrast"] * len(names),
        "Findings_EN": [f"Findings of {n}." for n in names],
        "Impressions_EN": [f"Impression of {n}." for n in names],
    })
    meta_names = names if meta_names is None else meta_names
    meta = pd.DataFrame({
        "VolumeName": meta_names,
        "Manufacturer": ["SIEMENS"] * len(meta_names),
        "RescaleSlope": [1.0] * len(meta_names),
        "RescaleIntercept": [-1024.0, -1024.0, -8192.0][: len(meta_names)],
        "XYSpacing": ["[0.75, 0.75]", "[0.7, 0.8]", "[0.5859375, 0.5859375]"][: len(meta_names)],
        "ZSpacing": [1.5, 1.0, 2.0][: len(meta_names)],
    })
    volumes = root / "dataset"
    for name in names:
        split, patient, scan, _ = name.split("_")
        folder = volumes / split / f"{split}_{patient}" / f"{split}_{patient}_{scan}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"nifti")
    reports.to_csv(root / "train_reports.csv", index=False)
    meta.to_csv(root / "train_metadata.csv", index=False)
    return root / "train_reports.csv", root / "train_metadata.csv", volumes


def test_ctrate_schema_paths_spacing_and_rescale(tmp_path: Path) -> None:
    reports, meta, volumes = ctrate_files(tmp_path)
    df = ctrate_to_cohort(reports, meta, volumes, out=tmp_path / "cohort" / "ctrate.csv")
    assert list(df.columns) == ["id", "patient_id", "volume", "findings", "impression", "clinical_information",
                                "technique", "spacing_z", "spacing_y", "spacing_x",
                                "rescale_slope", "rescale_intercept"]
    assert df["id"].tolist() == ["train_1_a_1", "train_1_a_2", "train_2_b_1"]
    assert df["patient_id"].tolist() == ["train_1", "train_1", "train_2"]
    assert df["volume"][2] == str(volumes.resolve() / "train" / "train_2" / "train_2_b" / "train_2_b_1.nii.gz")
    assert df["findings"][0] == "Findings of train_1_a_1.nii.gz."
    assert df["impression"][1] == "Impression of train_1_a_2.nii.gz."
    np.testing.assert_array_equal(df[["spacing_z", "spacing_y", "spacing_x"]].to_numpy(),
                                  [[1.5, 0.75, 0.75], [1.0, 0.7, 0.8], [2.0, 0.5859375, 0.5859375]])
    assert df["rescale_intercept"].tolist() == [-1024.0, -1024.0, -8192.0]

    cohort = load_cohort(tmp_path / "cohort" / "ctrate.csv", DataConfig(), require_reports=True)
    assert cohort.ids == df["id"].tolist() and all(p.is_file() for p in cohort.volume_paths)
    assert cohort.spacing_zyx(1) == (1.0, 0.7, 0.8) and cohort.rescale(2) == (1.0, -8192.0)
    assert cohort.patient_ids == ["train_1", "train_1", "train_2"]
    assert cohort.reports()[0] == "Findings of train_1_a_1.nii.gz.\n\nImpression of train_1_a_1.nii.gz."


def test_ctrate_split_folders_and_missing_volumes(tmp_path: Path) -> None:
    reports, meta, volumes = ctrate_files(tmp_path)
    (volumes / "train").rename(volumes / "train_fixed")
    df = ctrate_to_cohort(reports, meta, volumes, split_folders={"train": "train_fixed"})
    assert all(Path(p).is_file() for p in df["volume"]) and "train_fixed" in df["volume"][0]
    (volumes / "train_fixed" / "train_2" / "train_2_b" / "train_2_b_1.nii.gz").unlink()
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        kept = ctrate_to_cohort(reports, meta, volumes, split_folders={"train": "train_fixed"},
                                skip_missing_volumes=True)
    assert kept["id"].tolist() == ["train_1_a_1", "train_1_a_2"]


def test_ctrate_mismatched_names_are_listed(tmp_path: Path) -> None:
    other = ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_9_z_1.nii.gz"]
    reports, meta, volumes = ctrate_files(tmp_path, meta_names=other)
    with pytest.raises(CohortError) as info:
        ctrate_to_cohort(reports, meta, volumes, out=tmp_path / "never.csv")
    message = str(info.value)
    assert "1 ('train_2_b_1.nii.gz') only in the first" in message
    assert "1 ('train_9_z_1.nii.gz') only in the second" in message
    assert not (tmp_path / "never.csv").exists()


def test_ctrate_bad_names_spacing_and_headers(tmp_path: Path) -> None:
    reports, meta, volumes = ctrate_files(tmp_path)
    table = pd.read_csv(meta)
    table.loc[1, "XYSpacing"] = "unknown"
    table.to_csv(meta, index=False)
    with pytest.raises(CohortError, match=r"XYSpacing.*'train_1_a_2.nii.gz' = unknown"):
        ctrate_to_cohort(reports, meta, volumes)

    (tmp_path / "names").mkdir()
    reports, meta, volumes = ctrate_files(tmp_path / "names", names=["train_1_a_1.nii.gz"])
    pd.read_csv(reports).assign(VolumeName=["scan7.nii.gz"]).to_csv(reports, index=False)
    pd.read_csv(meta).assign(VolumeName=["scan7.nii.gz"]).to_csv(meta, index=False)
    with pytest.raises(CohortError, match=r"not of the form .*'scan7.nii.gz'"):
        ctrate_to_cohort(reports, meta, volumes)

    pd.read_csv(reports).rename(columns={"Findings_EN": "Finding_EN"}).to_csv(reports, index=False)
    with pytest.raises(CohortError, match=r"lacks column\(s\) \['Findings_EN'\].*did you mean 'Finding_EN'"):
        ctrate_to_cohort(reports, meta, volumes)


# --------------------------------------------------------------------------- INSPECT

DAY = 1440  # INSPECT's tte_* columns are minutes


def inspect_files(root: Path) -> dict[str, Path]:
    """impressions / labels / study_mapping / splits TSVs with the 20250611 release headers, and volumes."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [101, 102, 103, 104]
    images = ["PE1a2b3c", "PE4d5e6f", "PE7a8b9c", "PEaabbcc"]
    tables = {
        "impressions": pd.DataFrame({"impression_id": ids, "impressions": [
            "No pulmonary embolism.", "Acute bilateral PE.", "Small subsegmental PE.", "No PE. Small effusion."]}),
        "labels": pd.DataFrame({
            "impression_id": ids,
            "pe_positive_nlp": [False, True, True, False],
            "1_month_mortality": [False, True, "Censored", False],
            "6_month_mortality": [False, True, "Censored", False],
            "12_month_mortality": [False, True, "Censored", True],
            "tte_mortality": [800 * DAY, 10 * DAY, 45 * DAY, 300 * DAY],
            "is_censored_mortality": [True, False, True, False],
            "tte_readmission": [20 * DAY, 5 * DAY, 45 * DAY, 100 * DAY],
            "is_censored_readmission": [False, True, True, False],
            "tte_PH": [800 * DAY, 10 * DAY, 45 * DAY, 300 * DAY],
            "is_censored_PH": [True, True, True, True],
        }),
        "study_mapping": pd.DataFrame({"impression_id": ids, "person_id": [9001, 9002, 9002, 9003],
                                       "procedure_DATETIME": ["2010-01-01 10:00:00"] * 4, "note_id": [1, 2, 3, 4],
                                       "image_id": images}),
        "splits": pd.DataFrame({"impression_id": ids, "split": ["train", "train", "train", "test"]}),
    }
    paths = {}
    for name, table in tables.items():
        paths[name] = root / f"{name}_20250611.tsv"
        table.to_csv(paths[name], sep="\t", index=False)
    paths["volumes"] = root / "CTPA"
    paths["volumes"].mkdir(parents=True, exist_ok=True)
    for image in images:
        (paths["volumes"] / f"{image}.nii.gz").write_bytes(b"nifti")
    return paths


def call(p: dict[str, Path], **kwargs) -> pd.DataFrame:
    return inspect_to_cohort(p["impressions"], p["labels"], p["study_mapping"], p["volumes"], **kwargs)


def test_inspect_schema_and_mortality_outcome(tmp_path: Path) -> None:
    p = inspect_files(tmp_path)
    df = call(p, out=tmp_path / "inspect.parquet", splits_tsv=p["splits"])
    assert list(df.columns) == ["id", "patient_id", "volume", "impression", "image_id", "split", "time", "event"]
    assert df["id"].tolist() == ["101", "102", "103", "104"]
    assert df["patient_id"].tolist() == ["9001", "9002", "9002", "9003"]
    assert df["volume"][1] == str(p["volumes"].resolve() / "PE4d5e6f.nii.gz")
    assert df["time"].tolist() == [800.0, 10.0, 45.0, 300.0]  # days
    assert df["event"].tolist() == [0, 1, 0, 1]  # event = not censored
    assert df["split"].tolist() == ["train", "train", "train", "test"]

    cohort = load_cohort(tmp_path / "inspect.parquet", DataConfig(), require_outcomes=True, require_reports=True)
    assert cohort.events.tolist() == [False, True, False, True] and cohort.times.tolist() == [800.0, 10.0, 45.0, 300.0]
    assert cohort.patient_ids == ["9001", "9002", "9002", "9003"] and cohort.reports()[1] == "Acute bilateral PE."


def test_inspect_other_outcomes_units_and_pretraining_table(tmp_path: Path) -> None:
    p = inspect_files(tmp_path)
    readmission = call(p, outcome="readmission")
    assert readmission["time"].tolist() == [20.0, 5.0, 45.0, 100.0] and readmission["event"].tolist() == [1, 0, 0, 1]
    labels = pd.read_csv(p["labels"], sep="\t")
    labels["tte_mortality"] = labels["tte_mortality"] / DAY
    labels.to_csv(p["labels"], sep="\t", index=False)
    assert call(p, time_unit="days")["time"].tolist() == [800.0, 10.0, 45.0, 300.0]
    pretraining = call(p, outcome=None, out=tmp_path / "pre.csv")
    assert "time" not in pretraining.columns and "event" not in pretraining.columns
    assert not load_cohort(tmp_path / "pre.csv", DataConfig(), require_reports=True).has_outcomes


def test_inspect_invalid_outcomes_error_drop_or_floor(tmp_path: Path) -> None:
    p = inspect_files(tmp_path)
    labels = pd.read_csv(p["labels"], sep="\t").astype({"tte_mortality": float})
    labels.loc[1, "tte_mortality"] = -30.0  # death dated at midnight of the scan day
    labels.loc[2, "tte_mortality"] = np.nan
    labels.to_csv(p["labels"], sep="\t", index=False)
    with pytest.raises(CohortError) as info:
        call(p)
    for fragment in ("2 row(s): '102' = -0.021 days, event 1", "'103' = nan days", "drop_invalid_outcomes"):
        assert fragment in str(info.value)
    with pytest.warns(UserWarning, match="dropped 2 of 4"):
        assert call(p, drop_invalid_outcomes=True)["id"].tolist() == ["101", "104"]
    with pytest.warns(UserWarning, match="dropped 1 of 4"):
        floored = call(p, min_time_days=0.5, drop_invalid_outcomes=True)
    assert floored["id"].tolist() == ["101", "102", "104"] and floored["time"].tolist() == [800.0, 0.5, 300.0]


def test_inspect_mismatched_rows_and_unknown_outcome(tmp_path: Path) -> None:
    p = inspect_files(tmp_path)
    mapping = pd.read_csv(p["study_mapping"], sep="\t")
    mapping[mapping["impression_id"] != 103].to_csv(p["study_mapping"], sep="\t", index=False)
    with pytest.raises(CohortError, match=r"study_mapping_20250611.tsv has no row for impression_id 1 \('103'\)"):
        call(p)

    p = inspect_files(tmp_path / "labels")
    labels = pd.read_csv(p["labels"], sep="\t")
    labels[labels["impression_id"] < 103].to_csv(p["labels"], sep="\t", index=False)
    with pytest.raises(CohortError, match=r"labels_20250611.tsv has no row for impression_id 2 \('103', '104'\)"):
        call(p)
    typo = r"lacks column\(s\) \['tte_mortaliy', 'is_censored_mortaliy'\].*did you mean 'tte_mortality'"
    with pytest.raises(CohortError, match=typo):
        call(p, outcome="mortaliy")


def test_inspect_duplicate_ids_conflict(tmp_path: Path) -> None:
    p = inspect_files(tmp_path)
    imp = pd.read_csv(p["impressions"], sep="\t")
    pd.concat([imp, imp.iloc[[0]]]).to_csv(p["impressions"], sep="\t", index=False)  # identical repeat: fine
    assert len(call(p)) == 4
    pd.concat([imp, imp.iloc[[0]].assign(impressions="different")]).to_csv(p["impressions"], sep="\t", index=False)
    with pytest.raises(CohortError, match="same key on rows that differ"):
        call(p)
