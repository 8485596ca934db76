"""Cohort table: each validation error names the problem and its rows; good tables load typed; ClinicalSchema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctsurv.config import DataConfig
from ctsurv.errors import CohortError
from ctsurv.io.clinical import ClinicalSchema
from ctsurv.io.cohort import Cohort, load_cohort, save_cohort

CFG = DataConfig(numeric_columns=("age",), categorical_columns=("sex",))


def base_rows(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"p{i}" for i in range(1, n + 1)],
        "volume": [f"vols/p{i}.nii.gz" for i in range(1, n + 1)],
        "time": [10.0 * i for i in range(1, n + 1)],
        "event": [i % 2 for i in range(1, n + 1)],
        "age": [40.0 + 10 * i for i in range(n)],
        "sex": ["F", "M"] * (n // 2) + ["F"] * (n % 2),
        "findings": [f"finding {i}" for i in range(1, n + 1)],
        "impression": [f"impression {i}" for i in range(1, n + 1)],
    })


def write(folder: Path, df: pd.DataFrame, name: str = "cohort.csv", volumes: bool = True) -> Path:
    """Write ``df`` as a table in ``folder`` and create a dummy file for every volume path it names."""
    if volumes:
        for v in df["volume"].dropna():
            target = folder / v
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"not really a volume")
    path = folder / name
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, sep="\t" if name.endswith(".tsv") else ",", index=False)
    return path


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def load_fails(path: Path, *fragments: str, config: DataConfig = CFG, **kwargs) -> str:
    """load_cohort must raise a CohortError containing every fragment and leave the folder untouched."""
    before = snapshot(path.parent)
    with pytest.raises(CohortError) as info:
        load_cohort(path, config, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert snapshot(path.parent) == before
    return message


# --------------------------------------------------------------------------- good tables


def test_csv_and_parquet_give_identical_typed_tables(tmp_path: Path) -> None:
    df = base_rows()
    df.loc[1, "age"] = np.nan
    df.loc[2, "sex"] = None
    csv = load_cohort(write(tmp_path, df, "cohort.csv"), CFG, require_outcomes=True, require_reports=True)
    pq = load_cohort(write(tmp_path, df, "cohort.parquet"), CFG, require_outcomes=True, require_reports=True)
    pd.testing.assert_frame_equal(csv.table, pq.table)
    assert csv.ids == ["p1", "p2", "p3", "p4"]
    assert csv.times.dtype == np.float64 and csv.times.tolist() == [10.0, 20.0, 30.0, 40.0]
    assert csv.events.dtype == bool and csv.events.tolist() == [True, False, True, False]
    assert str(csv.table["sex"].dtype) == "string" and csv.table["age"].dtype == np.float64
    assert csv.has_outcomes and csv.has_reports and len(csv) == 4
    assert csv.root == tmp_path.resolve()


def test_tsv_and_ids_kept_as_text(tmp_path: Path) -> None:
    df = base_rows(2)
    df["id"] = ["007", "010"]
    cohort = load_cohort(write(tmp_path, df, "cohort.tsv"), CFG)
    assert cohort.ids == ["007", "010"]


def test_relative_paths_resolve_against_the_table_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tables").mkdir()
    df = base_rows(2)
    df["volume"] = ["../vols/p1.nii.gz", str(tmp_path / "abs" / "p2.nii.gz")]
    for p in (tmp_path / "vols" / "p1.nii.gz", tmp_path / "abs" / "p2.nii.gz"):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    path = write(tmp_path / "tables", df, volumes=False)
    monkeypatch.chdir(tmp_path / "abs")  # the working folder must not matter
    cohort = load_cohort(path, CFG)
    assert cohort.volume_paths == [tmp_path.resolve() / "vols" / "p1.nii.gz", tmp_path / "abs" / "p2.nii.gz"]
    assert cohort.table["volume"][0] == "../vols/p1.nii.gz"  # the table keeps what was written


def test_dicom_series_folder_counts_as_existing(tmp_path: Path) -> None:
    df = base_rows(1)
    df["volume"] = ["series1"]
    (tmp_path / "series1").mkdir()
    assert load_cohort(write(tmp_path, df, volumes=False), CFG).volume_paths == [tmp_path.resolve() / "series1"]


def test_missing_clinical_values_stay_missing(tmp_path: Path) -> None:
    df = base_rows()
    df["age"] = [50.0, None, 70.0, None]
    df["sex"] = ["F", None, "M", ""]
    clinical = load_cohort(write(tmp_path, df), CFG).clinical()
    assert list(clinical.index) == ["p1", "p2", "p3", "p4"] and list(clinical.columns) == ["age", "sex"]
    assert clinical["age"].isna().tolist() == [False, True, False, True]
    assert clinical["sex"].isna().tolist() == [False, True, False, True]
    assert clinical.loc["p3", "sex"] == "M" and clinical.loc["p1", "age"] == 50.0


def test_reports_join_findings_and_impression(tmp_path: Path) -> None:
    df = base_rows(3)
    df["findings"] = ["F1", None, "F3"]
    df["impression"] = ["I1", "I2", None]
    cohort = load_cohort(write(tmp_path, df), CFG)
    assert cohort.reports() == ["F1\n\nI1", "I2", "F3"]
    only_impression = load_cohort(write(tmp_path, df.drop(columns="findings")), CFG)
    assert only_impression.reports() == ["I1", "I2", ""]


def test_spacing_rescale_patients_and_subset(tmp_path: Path) -> None:
    df = base_rows(3)
    df["volume"] = ["vols/a.npy", "vols/b.npz", "vols/c.nii.gz"]
    df["spacing_z"], df["spacing_y"], df["spacing_x"] = [2.5, None, None], [0.7, None, None], [0.8, None, None]
    df["rescale_slope"], df["rescale_intercept"] = [1.0, None, 2.0], [-1024.0, None, 0.0]
    df["patient_id"] = ["A", "A", "B"]
    cfg = DataConfig(numeric_columns=("age",), categorical_columns=("sex",), array_spacing_zyx=(3.0, 1.0, 1.0))
    cohort = load_cohort(write(tmp_path, df), cfg)
    assert [cohort.spacing_zyx(i) for i in range(3)] == [(2.5, 0.7, 0.8), (3.0, 1.0, 1.0), None]
    assert [cohort.rescale(i) for i in range(3)] == [(1.0, -1024.0), None, (2.0, 0.0)]
    assert cohort.patient_ids == ["A", "A", "B"]
    sub = cohort.subset([2, 0])
    assert isinstance(sub, Cohort) and sub.ids == ["p3", "p1"] and list(sub.table.index) == [0, 1]
    assert sub.spacing_zyx(1) == (2.5, 0.7, 0.8) and len(cohort) == 3
    assert cohort.subset(np.array([True, False, True])).ids == ["p1", "p3"]


def test_without_patient_column_each_study_is_its_own_patient(tmp_path: Path) -> None:
    cohort = load_cohort(write(tmp_path, base_rows(2).drop(columns=["time", "event", "findings", "impression"])), CFG)
    assert cohort.patient_ids == ["p1", "p2"] and not cohort.has_outcomes and not cohort.has_reports
    with pytest.raises(CohortError, match="no outcome"):
        _ = cohort.times
    with pytest.raises(CohortError, match="no report text"):
        cohort.reports()


@pytest.mark.parametrize("value, expected", [(1, True), (0, False), (1.0, True), (0.0, False), (True, True),
                                             (False, False), ("1", True), ("0", False)])
def test_event_accepts_zero_one_spellings(tmp_path: Path, value: object, expected: bool) -> None:
    df = base_rows(2).astype({"event": object})
    df["event"] = [value, value]
    for name in ("c.csv", "c.parquet"):
        assert load_cohort(write(tmp_path, df, name), CFG, require_outcomes=True).events.tolist() == [expected] * 2


def test_save_cohort_is_atomic_and_round_trips(tmp_path: Path) -> None:
    df = base_rows(2)
    for name in ("out/c.csv", "out/c.tsv", "out/c.parquet"):
        path = save_cohort(df, tmp_path / name)
        assert path.is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c.csv", "c.parquet", "c.tsv"]  # no temp files
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "c.tsv", sep="\t"), df)
    with pytest.raises(CohortError, match=r"\.csv, \.tsv or \.parquet"):
        save_cohort(df, tmp_path / "c.xlsx")


# --------------------------------------------------------------------------- file-level errors


def test_missing_file_folder_extension_unreadable_and_empty(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="does not exist"):
        load_cohort(tmp_path / "nope.csv", CFG)
    with pytest.raises(CohortError, match="is a folder"):
        load_cohort(tmp_path, CFG)
    (tmp_path / "c.xlsx").write_bytes(b"PK")
    load_fails(tmp_path / "c.xlsx", "unsupported extension '.xlsx'", ".csv, .tsv or .parquet")
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    load_fails(tmp_path / "bad.parquet", "cannot read cohort table", "bad.parquet")
    (tmp_path / "empty.csv").write_text("")
    load_fails(tmp_path / "empty.csv", "empty.csv", "is empty")
    (tmp_path / "header.csv").write_text("id,volume,age,sex\n")
    load_fails(tmp_path / "header.csv", "header but no rows")


def test_missing_columns_are_listed_with_hints(tmp_path: Path) -> None:
    df = base_rows(2).rename(columns={"id": "ID", "time": "survival_time"}).drop(columns=["sex"])
    message = load_fails(write(tmp_path, df), "'id' (study id)", "'time' (survival time)",
                         "'sex' (declared in data.categorical_columns)", "It has columns: ID, volume, survival_time",
                         "Did you mean 'ID' for 'id', 'survival_time' for 'time'?", require_outcomes=True)
    assert "'event'" not in message.split("It has")[0]  # only what is missing is listed


def test_report_columns_required_for_pretraining(tmp_path: Path) -> None:
    df = base_rows(2).drop(columns=["findings", "impression"])
    load_fails(write(tmp_path, df), "'findings' or 'impression'", require_reports=True)
    df = base_rows(3)
    df.loc[1, ["findings", "impression"]] = None
    load_fails(write(tmp_path, df), "all empty in 1 row: row 2 (id 'p2')", require_reports=True)


def test_partial_spacing_columns(tmp_path: Path) -> None:
    df = base_rows(2)
    df["spacing_z"], df["spacing_y"] = 1.0, 1.0
    message = load_fails(write(tmp_path, df), "'spacing_x'", "come together")
    assert "Did you mean" not in message  # 'spacing_z' is a column in its own right, not a typo of 'spacing_x'


# --------------------------------------------------------------------------- row-level errors


def test_duplicate_and_empty_ids_and_volumes(tmp_path: Path) -> None:
    df = base_rows(4)
    df["id"] = ["p1", "p2", "p1", None]
    df.loc[1, "volume"] = None
    path = write(tmp_path, df)
    load_fails(path, "3 problems", "duplicate ids in 2 rows: row 1 (id 'p1'), row 3 (id 'p1')",
               "column 'id' is empty in 1 row: row 4", "column 'volume' is empty in 1 row: row 2 (id 'p2')")


def test_missing_volume_files_name_rows_and_resolved_paths(tmp_path: Path) -> None:
    path = write(tmp_path, base_rows(3))
    (tmp_path / "vols" / "p2.nii.gz").unlink()
    load_fails(path, "volumes do not exist for 1 row: row 2 (id 'p2')", str(tmp_path.resolve() / "vols" / "p2.nii.gz"))
    assert load_cohort(path, CFG, check_files=False).ids == ["p1", "p2", "p3"]


@pytest.mark.parametrize("bad, what", [("soon", "non-numeric values"), (None, "missing values"),
                                       (-5.0, "values <= 0"), (0.0, "values <= 0")])
def test_bad_times(tmp_path: Path, bad: object, what: str) -> None:
    df = base_rows(3).astype({"time": object})
    df.loc[1, "time"] = bad
    load_fails(write(tmp_path, df), "column 'time'", what, "row 2 (id 'p2')", "number > 0")


@pytest.mark.parametrize("bad", [2, -1, "yes", None])
def test_bad_events(tmp_path: Path, bad: object) -> None:
    df = base_rows(3).astype({"event": object})
    df.loc[2, "event"] = bad
    load_fails(write(tmp_path, df), "column 'event'", "other than 0/1", "row 3 (id 'p3')", "1 = event observed")


def test_outcomes_checked_even_when_not_required(tmp_path: Path) -> None:
    df = base_rows(2)
    df.loc[0, "time"] = -1.0
    load_fails(write(tmp_path, df), "column 'time'", "row 1 (id 'p1') = -1.0")


def test_non_numeric_clinical_values_suggest_categorical(tmp_path: Path) -> None:
    df = base_rows(4).astype({"age": object})
    df.loc[[1, 3], "age"] = ["unknown", "7O"]
    load_fails(write(tmp_path, df), "column 'age'", "row 2 (id 'p2') = 'unknown'", "row 4 (id 'p4') = '7O'",
               "data.categorical_columns")


def test_spacing_must_be_positive_and_complete(tmp_path: Path) -> None:
    df = base_rows(3)
    df["spacing_z"], df["spacing_y"], df["spacing_x"] = [1.0, -2.0, 1.0], [1.0, 1.0, None], [1.0, 1.0, 1.0]
    load_fails(write(tmp_path, df), "not positive numbers", "row 2 (id 'p2')",
               "partly filled in 1 row: row 3 (id 'p3')")


def test_arrays_need_spacing(tmp_path: Path) -> None:
    df = base_rows(2)
    df["volume"] = ["vols/p1.npy", "vols/p2.nii.gz"]
    path = write(tmp_path, df)
    load_fails(path, "row 1 (id 'p1') = 'vols/p1.npy'", "'spacing_z', 'spacing_y', 'spacing_x'",
               "data.array_spacing_zyx")
    with_default = DataConfig(numeric_columns=("age",), categorical_columns=("sex",), array_spacing_zyx=(2.0, 1.0, 1.0))
    assert load_cohort(path, with_default).spacing_zyx(0) == (2.0, 1.0, 1.0)


def test_long_listings_are_capped(tmp_path: Path) -> None:
    df = base_rows(9)
    df["time"] = -1.0
    message = load_fails(write(tmp_path, df), "9 rows:", "row 5 (id 'p5')", "and 4 more")
    assert "row 6 " not in message


# --------------------------------------------------------------------------- clinical schema

TRAIN = pd.DataFrame({
    "age": [40.0, 50.0, 60.0, np.nan],
    "sex": ["F", "M", "F", None],
    "smoker": ["no", "yes", "no", "no"],
})


def test_design_matrix_by_hand() -> None:
    schema = ClinicalSchema.fit(TRAIN, ["age"], ["sex", "smoker"])
    assert schema.feature_names == ["age", "age__missing", "sex=M", "sex=<missing>", "smoker=yes"]
    sd = np.sqrt(200.0 / 3.0)  # population std of 40, 50, 60
    assert schema.means == (50.0,) and schema.stds == pytest.approx((sd,))
    expected = np.array([
        [-10 / sd, 0, 0, 0, 0],
        [0, 0, 1, 0, 1],
        [10 / sd, 0, 0, 0, 0],
        [0, 1, 0, 1, 0],  # missing age -> mean (0) + indicator; missing sex -> its own column
    ], np.float32)
    x = schema.transform(TRAIN)
    assert x.dtype == np.float32 and x.shape == (4, 5)
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_transform_uses_training_statistics_only() -> None:
    schema = ClinicalSchema.fit(TRAIN, ["age"], ["sex", "smoker"])
    test = pd.DataFrame({"age": [70.0, np.nan], "sex": ["M", None], "smoker": [None, "yes"]}, index=["t1", "t2"])
    sd = np.sqrt(200.0 / 3.0)
    np.testing.assert_allclose(schema.transform(test), [[20 / sd, 0, 1, 0, 0], [0, 1, 0, 1, 1]], rtol=1e-6)
    # smoker had no missing values in training: a missing one falls on the reference level 'no'
    refit = ClinicalSchema.fit(test, ["age"], ["sex", "smoker"])
    assert refit.means == (70.0,) and refit.stds == (1.0,)  # std 0 -> 1


def test_unseen_level_names_column_level_rows_and_known_levels() -> None:
    schema = ClinicalSchema.fit(TRAIN, ["age"], ["sex", "smoker"])
    test = pd.DataFrame({"age": [1.0, 2.0], "sex": ["F", "X"], "smoker": ["no", "no"]}, index=["p7", "p8"])
    with pytest.raises(CohortError) as info:
        schema.transform(test)
    for fragment in ("'sex'", "'X' at row 'p8'", "known levels: 'F', 'M'"):
        assert fragment in str(info.value)


def test_levels_differing_in_case_or_spacing_are_one_level() -> None:
    train = pd.DataFrame({"histology": ["Adenocarcinoma", "adenocarcinoma", "Adenocarcinoma", " squamous", "Squamous",
                                        "large  cell", "Large cell", None]})
    schema = ClinicalSchema.fit(train, [], ["histology"])
    assert schema.levels == (("Adenocarcinoma", "Large cell", "Squamous"),)  # by count, named by the commonest spelling
    x = schema.transform(pd.DataFrame({"histology": ["ADENOCARCINOMA", "squamous ", "large cell", None]}))
    np.testing.assert_array_equal(x, [[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])


def test_schema_json_round_trip_and_column_errors() -> None:
    schema = ClinicalSchema.fit(TRAIN, ["age"], ["sex", "smoker"])
    again = ClinicalSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again == schema
    np.testing.assert_array_equal(again.transform(TRAIN), schema.transform(TRAIN))
    with pytest.raises(CohortError, match="malformed"):
        ClinicalSchema.from_dict({"numeric": ["age"]})
    with pytest.raises(CohortError, match=r"\['sex'\] are missing"):
        schema.transform(TRAIN.drop(columns="sex"))
    with pytest.raises(CohortError, match="no values in the training rows"):
        ClinicalSchema.fit(pd.DataFrame({"age": [np.nan, np.nan]}), ["age"], [])
    assert ClinicalSchema.fit(TRAIN).transform(TRAIN).shape == (4, 0)


def test_schema_fits_on_a_loaded_cohort(tmp_path: Path) -> None:
    cohort = load_cohort(write(tmp_path, base_rows(4)), CFG)
    train = cohort.subset([0, 1, 2])
    schema = ClinicalSchema.fit(train.clinical(), CFG.numeric_columns, CFG.categorical_columns)
    assert schema.means == (50.0,) and schema.levels == (("F", "M"),)
    assert schema.transform(cohort.subset([3]).clinical()).shape == (1, 2)
