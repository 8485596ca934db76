"""`ctsurv serve` and the per-patient outputs of `ctsurv predict` (OOD score, evidence maps) on the tiny survival run.

The page reads a patient as `ctsurv predict` does (same risk, P(yes), OOD score); bad input gives a message and the
server keeps serving; a headless Chromium (Debian's chromium + chromium-driver, driven by selenium) uploads a scan
and finds the answers, the risk and the curve that predict gives for it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from survival_setups import Cohorts, read_table
from tiny_setups import assert_user_error, cli, one_torch_thread  # noqa: F401 (autouse)

from ctsurv.evaluation.explain import OutOfDistribution, to_voxels
from ctsurv.reading import RISK, PatientReader
from ctsurv.serve import NONE, App, volume_path
from ctsurv.text.questions import PRESENCE_LABELS, PRESENCE_QUESTIONS

PRESENCE_QUESTION_OF = dict(zip(PRESENCE_LABELS, PRESENCE_QUESTIONS))

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
BROWSER_TEST_READY = None not in (CHROMIUM, CHROMEDRIVER, importlib.util.find_spec("gradio"), importlib.util.find_spec("selenium"))


@pytest.fixture(scope="module")
def subset(cohorts: Cohorts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three patients of the survival cohort (clinical data and all), as a cohort table of their own."""
    table = read_table(cohorts.cohort).iloc[[0, 5, 9]]
    path = tmp_path_factory.mktemp("serve_subset") / "three.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def predicted(run: Path, subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve_predict") / "pred"
    result = cli("predict", run, subset, "--out", out, "--evidence", "--evidence-blocks", 2, 2, 3)
    assert result.exit_code == 0, result.output
    assert str(out / "evidence") in result.stdout
    return out


@pytest.fixture(scope="module")
def app(run: Path) -> App:
    return App(run, blocks_zyx=(2, 2, 3))  # predict's --evidence-blocks below


def clinical_form(reader: PatientReader, row: pd.Series) -> list:
    """A table row as the page's form sends it: numeric fields as text, then the categorical levels."""
    numeric = ["" if pd.isna(row[c]) else str(row[c]) for c in reader.schema.numeric]
    return numeric + [None if pd.isna(row[c]) else str(row[c]) for c in reader.schema.categorical]


# ----------------------------------------------------------------------------- predict


def test_predict_writes_the_ood_score_of_the_saved_reference(run: Path, predicted: Path) -> None:
    model = run / "model"
    meta = json.loads((model / "model.json").read_text())
    ood = OutOfDistribution.load(model / "ood.safetensors")
    assert meta["ood"]["threshold"] == pytest.approx(ood.threshold) and meta["ood"]["quantile"] == 0.99
    assert len(ood.reference) == len(meta["training_risk"])  # one cross-fitted distance per training scan
    pred = pd.read_csv(predicted / "predictions.csv", dtype={"id": str})
    assert {"ood_score", "ood_percentile", "ood"} <= set(pred.columns)
    assert (pred["ood"] == (pred["ood_score"] > ood.threshold).astype(int)).all()
    np.testing.assert_allclose(pred["ood_percentile"], ood.percentile(pred["ood_score"].to_numpy()))


def test_the_saved_kaplan_meier_curve_is_scikit_survivals(run: Path, cohorts: Cohorts) -> None:
    from sksurv.nonparametric import kaplan_meier_estimator

    km = json.loads((run / "model" / "model.json").read_text())["km"]
    table = read_table(cohorts.cohort)
    times, survival = kaplan_meier_estimator(table["event"].to_numpy(bool), table["time"].to_numpy(float))
    np.testing.assert_allclose(km["times"], times)
    np.testing.assert_allclose(km["survival"], survival, atol=1e-12)


def test_predict_evidence_files_hold_every_map_as_blocks(predicted: Path, subset: Path) -> None:
    ids = read_table(subset)["id"].tolist()
    assert sorted(p.stem for p in (predicted / "evidence").glob("*.png")) == sorted(ids)
    with np.load(predicted / "evidence" / f"{ids[0]}.npz") as maps:
        assert maps["blocks_zyx"].tolist() == [2, 2, 3]
        assert set(maps.files) == {"blocks_zyx", RISK, *PRESENCE_LABELS}
        assert maps[RISK].shape == (3, 2, 2)  # (bx, by, bz)
        assert np.abs(maps[RISK]).max() > 0  # hiding part of the scan moves the risk


def test_the_page_reads_a_patient_as_predict_does(app: App, subset: Path, predicted: Path) -> None:
    table = read_table(subset)
    pred = pd.read_csv(predicted / "predictions.csv", dtype={"id": str})
    for i in range(len(table)):
        row = table.iloc[i]
        message, key, reading = app.read(None, row["volume"], "", *clinical_form(app.reader, row))
        assert key is not None, message
        # float32 rounding of a batch of one vs predict's batches, and of torch's thread count, moves the risk by
        # about 1e-4 after the PCA and the head; the page shows three decimals
        assert reading["risk"] == pytest.approx(pred["risk"][i], abs=1e-3)
        training = np.asarray(app.reader.fitted.meta["training_risk"])
        near = np.sum(np.abs(training - pred["risk"][i]) <= 1e-3)  # this study and its copies (repeats, twins)
        assert abs(reading["risk_percentile"] - pred["risk_percentile"][i]) <= 100 * near / len(training) + 1e-9
        assert reading["ood_score"] == pytest.approx(pred["ood_score"][i], rel=1e-4)
        assert reading["ood"] == pred["ood"][i]
        for label in PRESENCE_LABELS:
            assert reading["p_yes"][label] == pytest.approx(pred[f"p_yes: {label}"][i], abs=1e-4)
        entry = app.scans.get(key)
        for t, column in zip(app.reader.fitted.meta["horizon_times"], [c for c in pred if c.startswith("survival_at_")]):
            assert entry.reading.survival_at(t) == pytest.approx(pred[column][i], abs=1e-3)


def test_the_pages_evidence_is_predicts_evidence_on_the_scans_grid(app: App, subset: Path, predicted: Path) -> None:
    row = read_table(subset).iloc[0]
    _, key, _ = app.read(None, row["volume"], "", *clinical_form(app.reader, row))
    shape = app.scans.get(key).scan.hu.shape
    with np.load(predicted / "evidence" / f"{row['id']}.npz") as saved:
        for name in (RISK, *PRESENCE_LABELS):
            np.testing.assert_allclose(app.evidence(key, name), to_voxels(saved[name], shape), atol=1e-3)
    assert app.evidence(key, NONE) is None
    peak = app.peak(key, RISK)
    assert app.evidence(key, RISK)[peak] == app.evidence(key, RISK).max()
    view = app.view(key, "axial", 3, "mediastinum", RISK)
    assert view.dtype == np.uint8 and view.ndim == 3


# ----------------------------------------------------------------------------- bad input


def test_bad_input_gives_a_message_and_the_page_keeps_serving(app: App, subset: Path, tmp_path: Path) -> None:
    row = read_table(subset).iloc[0]
    form = clinical_form(app.reader, row)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a volume at all")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), flat)
    array = tmp_path / "array.npy"
    np.save(array, np.pad(np.full((8, 8, 4), 40, np.float32), ((4, 4), (4, 4), (2, 2)), constant_values=-1000))
    bad_zip = tmp_path / "series.zip"
    bad_zip.write_bytes(b"PK not really")
    level = app.reader.schema.categorical[0]
    wrong_level = [*form[: len(app.reader.schema.numeric)], "no such level", *form[len(app.reader.schema.numeric) + 1 :]]
    wrong_number = ["sixty", *form[1:]]
    cases = [
        ((str(broken), None, "", *form), "corrupt"),
        ((str(flat), None, "", *form), "not a 3D volume"),
        ((str(array), None, "", *form), "spacing"),
        ((str(array), None, "1 1", *form), "three positive numbers"),
        ((str(bad_zip), None, "", *form), "not a readable zip"),
        ((None, None, "", *form), "no volume"),
        ((None, str(tmp_path / "missing.nii.gz"), "", *form), "does not exist"),
        ((None, row["volume"], "", *wrong_level), level),
        ((None, row["volume"], "", *wrong_number), "must be a number"),
    ]
    for args, fragment in cases:
        message, key, reading = app.read(*args)
        assert key is None and reading == {}, fragment
        assert "ctsurv-error" in message and fragment in message, (fragment, message)
    message, key, reading = app.read(None, row["volume"], "", *form)  # still serving
    assert key is not None and "risk" in reading
    assert app.read(str(array), None, "10 10 20", *form)[1] is not None  # an array with its spacing
    assert app.ask(None, "Is there a nodule?") == "Read a scan first."
    assert app.ask(key, "   ").startswith("⚠")
    assert isinstance(app.ask(key, "Is there a pleural effusion?"), str)


def test_kept_scans_are_bounded(app: App, subset: Path) -> None:
    row = read_table(subset).iloc[0]
    form = clinical_form(app.reader, row)
    keys = [app.read(None, row["volume"], "", *form)[1] for _ in range(app.scans.size + 3)]
    assert len(app.scans) == app.scans.size
    assert app.scans.get(keys[0]) is None and app.scans.get(keys[-1]) is not None
    assert app.view(keys[0], "axial", 0, "lung", RISK) is None  # an expired scan shows nothing, no error


def test_a_zipped_dicom_series_reads_like_its_folder(app: App, realdata: Path, tmp_path: Path) -> None:
    series = realdata / "chest_ct_dicom_series"
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(series.rglob("*")):
            if f.is_file():
                z.write(f, Path("export") / f.relative_to(series))
    unpacked = volume_path(str(archive), None, tmp_path)
    assert unpacked.is_dir() and len(list(unpacked.iterdir())) == len([f for f in series.rglob("*") if f.is_file()])
    _, key_zip, from_zip = app.read(str(archive), None)
    assert list(app.workdir.iterdir()) == []  # what the zip held is removed once read
    _, key_dir, from_dir = app.read(None, str(series))
    assert key_zip and key_dir
    assert from_zip["risk"] == pytest.approx(from_dir["risk"], abs=1e-6)


# ----------------------------------------------------------------------------- the browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not BROWSER_TEST_READY and not os.environ.get("CI"),
    reason='headless browser test: apt-get install chromium chromium-driver; pip install -e ".[test,serve]" '
    "(CI installs them and never skips)",
)
def test_headless_chromium_uploads_a_scan_and_finds_predicts_answers_risk_and_curve(
    run: Path, subset: Path, predicted: Path, tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from ctsurv.evaluation.viewer import PLANES
    from ctsurv.serve import launch

    row = read_table(subset).iloc[1]
    pred = pd.read_csv(predicted / "predictions.csv", dtype={"id": str}).iloc[1]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x00" * 64)
    port = free_port()
    page = launch(run, port=port, block=False)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#volume input[type=file]"))

        def text(selector: str) -> str:
            return driver.find_element(By.CSS_SELECTOR, selector).text

        # a broken upload: a message on the page
        driver.find_element(By.CSS_SELECTOR, "#volume input[type=file]").send_keys(str(broken))
        wait.until(lambda d: "broken" in text("#volume"))
        driver.find_element(By.CSS_SELECTOR, "#read").click()
        wait.until(lambda d: "corrupt" in text("#banner"))

        # a good one, typed as a path on the server, with the patient's clinical data
        driver.find_element(By.CSS_SELECTOR, "#volume button[aria-label='Clear']").click()
        driver.find_element(By.CSS_SELECTOR, "#path textarea, #path input").send_keys(row["volume"])
        reader = PatientReader(run)
        for col in reader.schema.numeric:
            if not pd.isna(row[col]):
                driver.find_element(By.CSS_SELECTOR, f"#clinical-{col} input, #clinical-{col} textarea").send_keys(str(row[col]))
        for col in reader.schema.categorical:
            if not pd.isna(row[col]):
                field = driver.find_element(By.CSS_SELECTOR, f"#clinical-{col} input")
                field.send_keys(Keys.CONTROL, "a")
                field.send_keys(str(row[col]), Keys.ENTER)
        driver.find_element(By.CSS_SELECTOR, "#read").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#curve img"))
        wait.until(lambda d: "Risk score" in text("#risk"))
        shown = float(text("#risk").split("Risk score")[1].split()[0])
        assert shown == pytest.approx(pred["risk"], abs=1.5e-3)  # predict's risk, as the page rounds it
        labels = text("#p_yes").splitlines()
        for label in PRESENCE_LABELS:
            percent = labels[labels.index(label) + 1]
            assert float(percent.rstrip("%")) == pytest.approx(100 * pred[f"p_yes: {label}"], abs=0.51), label
        cells = [[td.text for td in tr.find_elements(By.CSS_SELECTOR, "td")] for tr in
                 driver.find_elements(By.CSS_SELECTOR, "#answers tr")]
        by_question = {c[0].strip(): c[1].strip() for c in cells if len(c) >= 2}
        for label in PRESENCE_LABELS:
            question = PRESENCE_QUESTION_OF[label]
            assert by_question[question] == pred[f"answer: {label}"], label
        assert ("unlike the training scans" in text("#banner")) == bool(pred["ood"])
        views = {p: driver.find_element(By.CSS_SELECTOR, f"#view-{p} img").get_attribute("src") for p in PLANES}

        # the evidence map of the risk: the views are drawn again, with the map over them
        target = driver.find_element(By.CSS_SELECTOR, "#target input")
        target.click()
        target.send_keys(Keys.CONTROL, "a")
        target.send_keys("risk")
        target.send_keys(Keys.ENTER)
        wait.until(lambda d: all(d.find_element(By.CSS_SELECTOR, f"#view-{p} img").get_attribute("src") != views[p]
                                 for p in PLANES))

        # a free question gets a generated answer
        driver.find_element(By.CSS_SELECTOR, "#question textarea, #question input").send_keys("Is there a pleural effusion?")
        driver.find_element(By.CSS_SELECTOR, "#ask").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#reply textarea, #reply input").get_attribute("value"))
        driver.save_screenshot(str(tmp_path / "serve.png"))
        if os.environ.get("CTSURV_SCREENSHOT"):
            shutil.copy(tmp_path / "serve.png", os.environ["CTSURV_SCREENSHOT"])
        assert (tmp_path / "serve.png").stat().st_size > 10_000
    finally:
        driver.quit()
        page.close()
        time.sleep(0.5)


def test_serve_and_predict_refuse_bad_options_in_one_line(run: Path, subset: Path, tmp_path: Path) -> None:
    assert_user_error(cli("serve", tmp_path, "--port", free_port()), "no fitted survival model")
    assert_user_error(cli("serve", run, "--evidence-blocks", 0, 8, 8), "--evidence-blocks")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert_user_error(cli("serve", run, "--port", busy.getsockname()[1]), "cannot listen on 127.0.0.1", "--port")
    assert_user_error(cli("serve", run, "--port", 70000), "--port must be between")
    assert_user_error(cli("predict", run, subset, "--out", tmp_path / "p", "--evidence-blocks", 2, 0, 2), "--evidence-blocks")
    assert not (tmp_path / "p").exists()


def test_the_same_scan_as_nrrd_mha_and_npz_reads_like_its_nifti(app: App, subset: Path, tmp_path: Path) -> None:
    """The upload formats the page names: the same voxels and geometry written by SimpleITK (NRRD, MHA, in LPS) and
    as an npz with its spacing give the NIfTI's reading."""
    import SimpleITK as sitk

    row = read_table(subset).iloc[0]
    form = clinical_form(app.reader, row)
    _, _, nifti = app.read(None, row["volume"], "", *form)
    image = sitk.ReadImage(row["volume"])
    for suffix in (".nrrd", ".mha"):
        sitk.WriteImage(image, str(tmp_path / f"scan{suffix}"))
        _, key, other = app.read(str(tmp_path / f"scan{suffix}"), None, "", *form)
        assert key is not None, suffix
        assert other["risk"] == pytest.approx(nifti["risk"], abs=1e-6), suffix
    array = nib.load(row["volume"])
    assert np.allclose(array.affine[:3, :3], np.diag(np.diag(array.affine[:3, :3])))  # axis-aligned RAS, as simulated
    spacing_xyz = np.abs(np.diag(array.affine[:3, :3]))
    # NumPy volumes are (Z, Y, X) growing towards superior, posterior, left (read_volume); the NIfTI is RAS
    zyx = np.asarray(array.dataobj).transpose(2, 1, 0)[:, ::-1, ::-1]
    np.savez(tmp_path / "scan.npz", volume=np.ascontiguousarray(zyx))
    _, key, from_npz = app.read(str(tmp_path / "scan.npz"), None, " ".join(map(str, spacing_xyz[::-1])), *form)
    assert key is not None
    assert from_npz["risk"] == pytest.approx(nifti["risk"], abs=1e-6)
