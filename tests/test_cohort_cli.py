"""`ctsurv cohort ct-rate` and `ctsurv cohort inspect` on fake downloads laid out like the real releases.

CT-RATE (Hugging Face ibrahimhamamci/CT-RATE) under its ``dataset/`` folder::

    radiology_text_reports/train_reports.csv, validation_reports.csv
    metadata/train_metadata.csv, validation_metadata.csv
    train_fixed/train_1/train_1_a/train_1_a_1.nii.gz, valid_fixed/valid_1/valid_1_a/valid_1_a_1.nii.gz
    (older release: train/, valid/)

INSPECT (Stanford AIMI) in its release folder ``full/``: ``impressions_20250611.tsv``, ``labels_20250611.tsv``,
``study_mapping_20250611.tsv``, ``splits_20250611.tsv``, ``CTPA/<image_id>.nii.gz`` (``inspect_files``).
The round trip: the cohort `ctsurv cohort ct-rate` writes is accepted and trained on by `ctsurv pretrain`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_adapters import inspect_files
from tiny_setups import (
    REPORTS,
    TINY_PIPELINE,
    assert_user_error,
    cli,
    one_torch_thread,  # noqa: F401 (autouse)
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# the header of the release's metadata/*_metadata.csv, in its order
METADATA_HEADER = (
    "VolumeName,Manufacturer,SeriesDescription,ManufacturerModelName,PatientSex,PatientAge,ReconstructionDiameter,"
    "DistanceSourceToDetector,DistanceSourceToPatient,GantryDetectorTilt,TableHeight,RotationDirection,ExposureTime,"
    "XRayTubeCurrent,Exposure,FilterType,GeneratorPower,FocalSpots,ConvolutionKernel,PatientPosition,RevolutionTime,"
    "SingleCollimationWidth,TotalCollimationWidth,TableSpeed,TableFeedPerRotation,SpiralPitchFactor,"
    "DataCollectionCenterPatient,ReconstructionTargetCenterPatient,ExposureModulationType,CTDIvol,"
    "ImagePositionPatient,ImageOrientationPatient,SliceLocation,SamplesPerPixel,PhotometricInterpretation,Rows,"
    "Columns,XYSpacing,RescaleIntercept,RescaleSlope,RescaleType,NumberofSlices,ZSpacing,StudyDate"
)
TABLE_SPLIT = {"train": "train", "valid": "validation"}
SHAPE_XYZ = (32, 32, 16)  # TINY_PIPELINE's 16×32×32 (Z Y X) voxels


def ctrate_tree(root: Path, names: dict[str, list[str]], *, spacing: tuple[str, float] = ("[10.0, 10.0]", 18.0),
                intercepts: list[float] | None = None, folder: str = "{split}_fixed") -> Path:
    """A CT-RATE download: ``root/dataset/`` with the split tables and one small NIfTI per volume name.

    The volumes' headers say 0.75 × 0.75 × 1.5 mm like any CT-RATE header; the metadata's XYSpacing / ZSpacing
    (``spacing``) is what the cohort must carry. Voxels are random HU values in [-1000, 1000].
    """
    dataset = root / "dataset"
    rng = np.random.default_rng(0)
    for split, split_names in names.items():
        n = len(split_names)
        reports = pd.DataFrame({
            "VolumeName": split_names,
            "ClinicalInformation_EN": ["Not given."] * n,
            "Technique_EN": ["Non-contrast chest CT."] * n,
            "Findings_EN": [REPORTS[i % 2][0] for i in range(n)],
            "Impressions_EN": [REPORTS[i % 2][1] for i in range(n)],
        })
        meta = pd.DataFrame({column: [""] * n for column in METADATA_HEADER.split(",")})
        meta["VolumeName"] = split_names
        meta["Manufacturer"] = "Philips"
        meta["XYSpacing"] = spacing[0]
        meta["ZSpacing"] = spacing[1]
        meta["RescaleSlope"] = 1
        meta["RescaleIntercept"] = intercepts[:n] if intercepts else -1024
        for table, sub, stem in ((reports, "radiology_text_reports", "reports"), (meta, "metadata", "metadata")):
            (dataset / sub).mkdir(parents=True, exist_ok=True)
            table.to_csv(dataset / sub / f"{TABLE_SPLIT[split]}_{stem}.csv", index=False)
        for name in split_names:
            _, patient, scan, _ = name.split("_")
            where = dataset / folder.format(split=split) / f"{split}_{patient}" / f"{split}_{patient}_{scan}"
            where.mkdir(parents=True, exist_ok=True)
            hu = rng.integers(-1000, 1000, SHAPE_XYZ).astype(np.int16)
            nib.save(nib.Nifti1Image(hu, np.diag([0.75, 0.75, 1.5, 1.0])), where / name)
    return dataset


TRAIN = ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_a_1.nii.gz", "train_3_b_1.nii.gz"]
VALID = ["valid_1_a_1.nii.gz", "valid_7_a_2.nii.gz"]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return ctrate_tree(tmp_path / "CT-RATE", {"train": TRAIN, "valid": VALID}, spacing=("[0.7, 0.8]", 1.5),
                       intercepts=[-1024.0, -1024.0, -8192.0, -1000.0])


def test_ct_rate_writes_the_cohort_of_the_tree(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cohorts" / "ct_rate.csv"
    result = cli("cohort", "ct-rate", dataset, "--out", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert table["id"].tolist() == ["train_1_a_1", "train_1_a_2", "train_2_a_1", "train_3_b_1"]
    assert table["patient_id"].tolist() == ["train_1", "train_1", "train_2", "train_3"]
    assert table["volume"][3] == str(dataset.resolve() / "train_fixed/train_3/train_3_b/train_3_b_1.nii.gz")
    assert all(Path(p).is_file() for p in table["volume"])
    np.testing.assert_array_equal(table[["spacing_z", "spacing_y", "spacing_x"]].to_numpy(), [[1.5, 0.7, 0.8]] * 4)
    assert table["rescale_slope"].tolist() == [1.0] * 4
    assert table["rescale_intercept"].tolist() == [-1024.0, -1024.0, -8192.0, -1000.0]
    assert table["findings"][1] == REPORTS[1][0] and table["impression"][0] == REPORTS[0][1]
    for fragment in ("CT-RATE train: 4 volumes of 3 patients", f"cohort: {out} (4 rows)",
                     f"next: ctsurv pretrain --config FILE --cohort {out} --out RUN"):
        assert fragment in result.stdout, result.stdout

    again = tmp_path / "from_parent.csv"  # the folder holding dataset/ (where `hf download` puts it) works too
    assert cli("cohort", "ct-rate", dataset.parent, "--out", again).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(again), table)


def test_ct_rate_valid_split_older_layout_and_wrong_split(dataset: Path, tmp_path: Path) -> None:
    result = cli("cohort", "ct-rate", dataset, "--split", "valid", "--out", tmp_path / "valid.parquet")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "valid.parquet")
    assert table["id"].tolist() == ["valid_1_a_1", "valid_7_a_2"]
    assert table["volume"][1] == str(dataset.resolve() / "valid_fixed/valid_7/valid_7_a/valid_7_a_2.nii.gz")

    (dataset / "valid_fixed").rename(dataset / "valid")  # the first release's folder name
    assert cli("cohort", "ct-rate", dataset, "--split", "valid", "--out", tmp_path / "old.csv").exit_code == 0
    assert pd.read_csv(tmp_path / "old.csv")["volume"][0] == str(dataset.resolve() / "valid/valid_1/valid_1_a/"
                                                                                     "valid_1_a_1.nii.gz")
    explicit = ["--volumes", dataset / "valid", "--reports", dataset / "radiology_text_reports/train_reports.csv",
                "--metadata", dataset / "metadata/train_metadata.csv"]
    result = cli("cohort", "ct-rate", dataset, "--split", "valid", *explicit, "--out", tmp_path / "mixed.csv")
    assert_user_error(result, "train_reports.csv lists volumes of another split than 'valid'", "pass --split train")
    assert_user_error(cli("cohort", "ct-rate", dataset, "--split", "test", "--out", tmp_path / "t.csv"),
                      "--split 'test' is not one of ['train', 'valid']")
    assert not (tmp_path / "mixed.csv").exists() and not (tmp_path / "t.csv").exists()


def test_ct_rate_missing_files_name_the_path_and_the_option(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.csv"
    reports = dataset / "radiology_text_reports" / "validation_reports.csv"
    reports.unlink()
    assert_user_error(cli("cohort", "ct-rate", dataset, "--split", "valid", "--out", out),
                      f"{reports} does not exist; pass --reports")
    (dataset / "metadata" / "train_metadata.csv").unlink()
    assert_user_error(cli("cohort", "ct-rate", dataset, "--out", out),
                      f"{dataset / 'metadata' / 'train_metadata.csv'} does not exist; pass --metadata")
    assert_user_error(cli("cohort", "ct-rate", dataset, "--metadata", tmp_path / "meta.csv", "--out", out),
                      f"--metadata {tmp_path / 'meta.csv'} does not exist")
    (dataset / "train_fixed").rename(tmp_path / "elsewhere")
    assert_user_error(cli("cohort", "ct-rate", dataset, "--metadata", dataset / "metadata/validation_metadata.csv",
                          "--out", out), f"neither {dataset / 'train_fixed'} nor {dataset / 'train'}", "--volumes")
    assert_user_error(cli("cohort", "ct-rate", tmp_path / "nowhere", "--out", out), "is not a folder")
    assert not out.exists()


def test_ct_rate_missing_volumes_fail_or_are_skipped(dataset: Path, tmp_path: Path) -> None:
    gone = dataset / "train_fixed/train_2/train_2_a/train_2_a_1.nii.gz"
    gone.unlink()
    out = tmp_path / "partial.csv"
    result = cli("cohort", "ct-rate", dataset, "--out", out)
    assert_user_error(result, "1 of the 4 volumes", str(gone), "--skip-missing-volumes")
    assert not out.exists()
    result = cli("cohort", "ct-rate", dataset, "--out", out, "--skip-missing-volumes")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["id"].tolist() == ["train_1_a_1", "train_1_a_2", "train_3_b_1"]
    assert "skipped 1 of 4 studies" in result.stdout and str(gone) in result.stdout
    result = cli("cohort", "ct-rate", dataset, "--out", tmp_path / "x.csv", "--volumes", tmp_path)
    assert_user_error(result, "none of the 4 volumes", "pass --volumes")


def test_ct_rate_out_is_never_overwritten_silently(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cohort.csv"
    out.write_text("id,volume\nmine,scan.nii.gz\n")
    assert_user_error(cli("cohort", "ct-rate", dataset, "--out", out), f"--out {out} already exists", "--overwrite")
    assert out.read_text() == "id,volume\nmine,scan.nii.gz\n"
    result = cli("cohort", "ct-rate", dataset, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CT-RATE", "cohort.csv"]  # no temporary file left

    assert_user_error(cli("cohort", "ct-rate", dataset, "--out", tmp_path / "cohort.txt"),
                      "must end in .csv, .tsv, .parquet")
    reports = dataset / "radiology_text_reports" / "train_reports.csv"
    assert_user_error(cli("cohort", "ct-rate", dataset, "--out", reports, "--overwrite"), "is the input")
    assert_user_error(cli("cohort", "ct-rate", dataset, "--out", tmp_path), "must end in")


def test_ct_rate_study_without_report_is_refused(dataset: Path, tmp_path: Path) -> None:
    reports = dataset / "radiology_text_reports" / "train_reports.csv"
    table = pd.read_csv(reports)
    table.loc[2, ["Findings_EN", "Impressions_EN"]] = np.nan
    table.to_csv(reports, index=False)
    out = tmp_path / "cohort.csv"
    result = cli("cohort", "ct-rate", dataset, "--out", out)
    assert_user_error(result, f"cohort table {out}", "'train_2_a_1'", "pretraining needs a report", "nothing was written")
    assert not out.exists()


@pytest.mark.slow
def test_ct_rate_cohort_round_trips_through_pretrain(tmp_path: Path) -> None:
    """14 volumes of 7 patients (two reconstructions each): the cohort `ctsurv cohort ct-rate` writes trains."""
    names = [f"train_{p}_a_{r}.nii.gz" for p in range(1, 8) for r in (1, 2)]
    dataset = ctrate_tree(tmp_path / "CT-RATE", {"train": names})  # spacing 18 × 10 × 10 mm: TINY_PIPELINE's
    cohort = tmp_path / "ct_rate.csv"
    result = cli("cohort", "ct-rate", dataset, "--out", cohort)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    # demo.yaml declares the simulator's clinical columns, which a CT-RATE table has not: pretraining never reads them
    result = cli("pretrain", "--config", CONFIG, "--cohort", cohort, "--out", run, *TINY_PIPELINE)
    assert result.exit_code == 0, result.output
    assert "test split (2 studies; 2 validation studies chose settings)" in result.stdout
    assert (run / "instruct" / "eval.md").is_file() and (run / "align").is_dir()


# --------------------------------------------------------------------------- INSPECT


def test_inspect_discovers_the_release_files(tmp_path: Path) -> None:
    files = inspect_files(tmp_path / "inspect" / "full")
    out = tmp_path / "inspect.csv"
    result = cli("cohort", "inspect", tmp_path / "inspect", "--out", out)  # the folder holding full/
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, dtype={"id": str, "patient_id": str})
    assert table["id"].tolist() == ["101", "102", "103", "104"]
    assert table["patient_id"].tolist() == ["9001", "9002", "9002", "9003"]
    assert table["volume"][1] == str(files["volumes"].resolve() / "PE4d5e6f.nii.gz")
    assert table["time"].tolist() == [800.0, 10.0, 45.0, 300.0] and table["event"].tolist() == [0, 1, 0, 1]
    assert table["split"].tolist() == ["train", "train", "train", "test"]
    assert "INSPECT: 4 studies of 3 patients, outcome mortality: 2 events, time in days" in result.stdout

    result = cli("cohort", "inspect", files["volumes"].parent, "--outcome", "none", "--out", tmp_path / "pre.csv")
    assert result.exit_code == 0, result.output
    assert {"time", "event"}.isdisjoint(pd.read_csv(tmp_path / "pre.csv").columns)
    result = cli("cohort", "inspect", files["volumes"].parent, "--outcome", "readmission", "--out", tmp_path / "r.csv")
    assert result.exit_code == 0 and pd.read_csv(tmp_path / "r.csv")["time"].tolist() == [20.0, 5.0, 45.0, 100.0]


def test_inspect_errors_name_the_options(tmp_path: Path) -> None:
    files = inspect_files(tmp_path / "full")
    root, out = tmp_path / "full", tmp_path / "cohort.csv"
    labels = pd.read_csv(files["labels"], sep="\t").astype({"tte_mortality": float})
    labels.loc[1, "tte_mortality"] = -30.0  # a death dated at midnight of the scan day
    labels.to_csv(files["labels"], sep="\t", index=False)
    assert_user_error(cli("cohort", "inspect", root, "--out", out),
                      "'102' = -0.021 days", "pass --drop-invalid-outcomes", "or --min-time-days 0.5")
    result = cli("cohort", "inspect", root, "--out", out, "--drop-invalid-outcomes")
    assert result.exit_code == 0, result.output
    assert "note: dropped 1 of 4 INSPECT studies" in result.stdout and len(pd.read_csv(out)) == 3
    result = cli("cohort", "inspect", root, "--out", tmp_path / "floor.csv", "--min-time-days", "0.5")
    assert result.exit_code == 0 and pd.read_csv(tmp_path / "floor.csv")["time"][1] == 0.5

    (root / "impressions_20240101.tsv").write_text("impression_id\timpressions\n")
    assert_user_error(cli("cohort", "inspect", root, "--out", tmp_path / "x.csv"),
                      "2 files match", "impressions_20240101.tsv, impressions_20250611.tsv", "pass --impressions")
    result = cli("cohort", "inspect", root, "--impressions", files["impressions"], "--time-unit", "weeks",
                 "--out", tmp_path / "x.csv")
    assert_user_error(result, "--time-unit 'weeks' is not one of")
    files["labels"].unlink()
    result = cli("cohort", "inspect", root, "--impressions", files["impressions"], "--out", tmp_path / "x.csv")
    assert_user_error(result, f"no {root / 'labels_*.tsv'} found; pass --labels")
    assert not (tmp_path / "x.csv").exists()
