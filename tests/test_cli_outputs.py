"""Outputs appear whole or not at all, and every user error is one line with exit status 2.

``ctsurv.outputs`` (staging folders and files renamed into place, inputs guarded) on its own and through the
commands: a refused, failed, crashed or killed command leaves no ``--out`` and no staging folder (pretrain keeps
its partial run for ``--resume``), a diverging survival head is one line and a rerun into the same ``--out``
works, and a file that cannot be written is one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from tiny_setups import assert_user_error, build, cli, one_torch_thread, tiny_config  # noqa: F401 (autouse)

import ctsurv.demo
import ctsurv.synthetic.simulate
import ctsurv.training.pretrain
from ctsurv.errors import CtsurvError
from ctsurv.outputs import staged_file, staged_output
from ctsurv.synthetic.simulate import simulate
from ctsurv.training.checkpoint import save_checkpoint

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
SIM = {"shape_zyx": (16, 32, 32), "spacing_zyx": (18, 10, 10), "workers": 1}
SURVIVAL = ["--folds", "2", "survival.bootstrap=100", "survival.epochs=20"]
CLINICAL = """name: outputs
data:
  numeric_columns: [age, pack_years, ecog, hemoglobin, albumin, ldh, crp]
  categorical_columns: [sex, smoking_status, stage]
"""


def leftovers(parent: Path, name: str) -> list[str]:
    """``name`` and its staging folders or files in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.partial"))


def refused(context: contextlib.AbstractContextManager, match: str) -> None:
    """``context`` refuses on entry with a CtsurvError matching ``match``: its body never runs."""
    with pytest.raises(CtsurvError, match=match), context:
        pytest.fail("the body ran")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cohort.csv of 30 simulated patients (16×32×32 voxels) with reports and outcomes."""
    folder = tmp_path_factory.mktemp("outputs") / "sim"
    simulate(folder, n=30, seed=3, progress=False, **SIM)
    return folder / "cohort.csv"


# ------------------------------------------------------------------------------------- ctsurv.outputs


def test_staged_output_appears_whole_on_success_and_not_at_all_on_an_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_output(out) as folder:
        assert folder.parent == tmp_path and folder.name == f".run.partial-{os.getpid()}" and folder.is_dir()
        assert not out.exists()
        (folder / "a.txt").write_text("done")
    assert leftovers(tmp_path, "run") == ["run"] and (out / "a.txt").read_text() == "done"

    (tmp_path / "empty").mkdir()  # an empty --out folder is replaced
    with staged_output(tmp_path / "empty") as folder:
        (folder / "b.txt").write_text("b")
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["b.txt"]

    with pytest.raises(KeyError), staged_output(tmp_path / "crash") as folder:
        (folder / "half.csv").write_text("id,risk\n")
        raise KeyError("a bug")
    assert leftovers(tmp_path, "crash") == []


def test_staged_output_refuses_its_inputs_and_non_empty_folders_before_writing(tmp_path: Path) -> None:
    (tmp_path / "cohort").mkdir()
    table = tmp_path / "cohort" / "cohort.csv"
    table.write_text("id\n")
    cases = [
        (tmp_path / "cohort" / "cohort.csv", "is the input"),
        (tmp_path / "cohort" / ".." / "cohort", "holds the input"),
        (tmp_path / "cohort", "holds the input"),
    ]
    for out, message in cases:
        refused(staged_output(out, [table]), message)
    refused(staged_output(tmp_path / "cohort"), "already exists and is not empty; choose a new --out folder$")
    refused(staged_output(table), "exists and is not a folder")
    with staged_output(tmp_path / "cohort" / "runs", [table, None]) as folder:  # beside its cohort: fine
        (folder / "x").write_text("x")
    assert sorted(p.name for p in (tmp_path / "cohort").iterdir()) == ["cohort.csv", "runs"]


def test_a_resumable_partial_run_is_kept_and_continued(tmp_path: Path) -> None:
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    with pytest.raises(CtsurvError) as exc, staged_output(out, resumable=True):
        raise CtsurvError("refused before writing")
    assert not hasattr(exc.value, "__notes__") and leftovers(tmp_path, "run") == []  # nothing written: removed

    with pytest.raises(RuntimeError) as exc, staged_output(out, resumable=True) as folder:
        assert folder == partial
        (folder / "stage1").write_text("trained")
        raise RuntimeError("killed in stage 2")
    assert exc.value.__notes__ == [f"partial run kept in {partial}; rerun with --resume to continue"]
    assert leftovers(tmp_path, "run") == [".run.partial"]

    refused(staged_output(out, resumable=True), "holds an interrupted run .* pass --resume")
    with staged_output(out, resumable=True, resume=True) as folder:
        assert (folder / "stage1").read_text() == "trained"
        (folder / "stage2").write_text("trained")
    assert leftovers(tmp_path, "run") == ["run"] and sorted(p.name for p in out.iterdir()) == ["stage1", "stage2"]

    refused(staged_output(out, resumable=True), "already exists and is not empty; choose a new --out folder or pass --resume")
    with staged_output(out, resumable=True, resume=True) as folder:  # a finished run resumes in place
        assert folder == out
    partial.mkdir()
    (partial / "x").write_text("x")
    refused(staged_output(out, resumable=True, resume=True), "both .* exist")


def test_staged_file_replaces_whole_and_refuses_folders_and_inputs(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "labels.csv"
    with staged_file(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".labels.csv.partial")
        tmp.write_text("new")
    assert out.read_text() == "new"
    with pytest.raises(RuntimeError), staged_file(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert out.read_text() == "new" and [p.name for p in out.parent.iterdir()] == ["labels.csv"]
    refused(staged_file(tmp_path, option="--png"), "--png .* is a folder")
    refused(staged_file(out, [tmp_path / "sub" / ".." / "sub" / "labels.csv"]), "is the input")


# ------------------------------------------------------------------------------------- labels, inspect


def test_labels_onto_its_own_input_is_refused_and_the_input_is_unchanged(tmp_path: Path) -> None:
    reports = tmp_path / "R.csv"
    reports.write_text("t\nNo pleural effusion.\n")
    before = reports.read_bytes()
    assert_user_error(cli("labels", reports, "--text-column", "t", "--out", reports), str(reports), "is the input")
    assert reports.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["R.csv"]


def test_labels_into_a_folder_or_an_unwritable_path_is_one_line(tmp_path: Path) -> None:
    reports = tmp_path / "R.csv"
    reports.write_text("t\nCardiomegaly.\n")
    (tmp_path / "out").mkdir()
    assert_user_error(cli("labels", reports, "--text-column", "t", "--out", tmp_path / "out"), "is a folder")
    assert list((tmp_path / "out").iterdir()) == []
    blocked = tmp_path / "R.csv" / "labels.csv"  # a file where a folder should be
    assert_user_error(cli("labels", reports, "--text-column", "t", "--out", blocked), "cannot read or write", str(reports))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.csv", "out"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_labels_into_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    reports = tmp_path / "R.csv"
    reports.write_text("t\nCardiomegaly.\n")
    (tmp_path / "ro").mkdir(mode=0o555)
    assert_user_error(cli("labels", reports, "--text-column", "t", "--out", tmp_path / "ro" / "l.csv"), "permission denied")


def test_inspect_png_into_a_folder_or_onto_the_volume_is_refused_before_printing(cohort: Path, tmp_path: Path) -> None:
    volume = cohort.parent / "volumes" / "P0000.nii.gz"
    result = cli("inspect", volume, "--png", tmp_path)
    assert_user_error(result, f"--png {tmp_path} is a folder")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
    before = volume.read_bytes()
    assert_user_error(cli("inspect", volume, "--png", volume), "is the input")
    assert volume.read_bytes() == before


# ------------------------------------------------------------------------------------- staged commands


def test_simulate_prints_the_final_paths_and_a_crash_leaves_no_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sim"
    result = cli("simulate", "--out", out, "--n", 10, "--shape", 8, 16, 16, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert f"cohort: {out / 'cohort.csv'}" in result.stdout and ".partial" not in result.stdout
    assert leftovers(tmp_path, "sim") == ["sim"] and len(pd.read_csv(out / "cohort.csv")) == 10

    def crash(out_dir: Path, **kwargs: object) -> None:
        (Path(out_dir) / "volumes").mkdir(parents=True)
        (Path(out_dir) / "volumes" / "P0000.nii.gz").write_bytes(b"half a volume")
        raise error

    monkeypatch.setattr(ctsurv.synthetic.simulate, "simulate", crash)
    for error in (RuntimeError("a bug"), CtsurvError("a user error")):
        result = cli("simulate", "--out", tmp_path / "again", "--n", 10)
        if isinstance(error, CtsurvError):
            assert_user_error(result, "a user error")
        else:  # a bug keeps its traceback
            assert result.exception is error
        assert leftovers(tmp_path, "again") == []


def test_demo_crash_leaves_no_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(out_dir: Path, *args: object, **kwargs: object) -> None:
        (Path(out_dir) / "pretrain_cohort").mkdir()
        raise CtsurvError("a broken volume")

    monkeypatch.setattr(ctsurv.demo, "run_demo", crash)
    assert_user_error(cli("demo", "--out", tmp_path / "demo"), "a broken volume")
    assert leftovers(tmp_path, "demo") == []


@pytest.mark.parametrize("command", ["survival", "pretrain", "predict"])
def test_an_out_that_is_or_holds_an_input_is_refused(cohort: Path, tmp_path: Path, command: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CLINICAL)
    args = {
        "survival": ["survival", "--config", config, "--cohort", cohort, "--out", cohort.parent, "--pretrained", tmp_path],
        "pretrain": ["pretrain", "--config", config, "--cohort", cohort, "--out", config],
        "predict": ["predict", tmp_path, cohort, "--out", tmp_path],
    }[command]
    assert_user_error(cli(*args), "the input")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_failed_pretrain_keeps_its_partial_run_for_resume(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    calls: list[tuple[Path, bool]] = []

    def stage_then_fail(cfg: object, cohort_path: Path, out_dir: Path, resume: bool = False) -> SimpleNamespace:
        calls.append((out_dir, resume))
        (out_dir / "align").mkdir(exist_ok=True)
        if len(calls) == 1:
            raise CtsurvError("a broken volume in stage 2")
        (out_dir / "instruct").mkdir()
        macro = {"accuracy": 0.5, "f1": 0.5, "labels_in_macro": ["lung_nodule"]}
        return SimpleNamespace(n_val=1, n_test=1, metrics={"presence": {"macro": macro}}, seconds={"align": 1.0})

    monkeypatch.setattr(ctsurv.training.pretrain, "pretrain", stage_then_fail)
    pretrain = ["pretrain", "--config", CONFIG, "--cohort", cohort, "--out", out]
    assert_user_error(cli(*pretrain), "a broken volume in stage 2",
                      f"partial run kept in {partial}; rerun with --resume to continue")
    assert leftovers(tmp_path, "run") == [".run.partial"]
    assert_user_error(cli(*pretrain), f"{partial} holds an interrupted run", "--resume")
    result = cli(*pretrain, "--resume")
    assert result.exit_code == 0, result.output
    assert calls == [(partial, False), (partial, True)]
    assert f"checkpoints: {out / 'align'}" in result.stdout and ".partial" not in result.stdout
    assert leftovers(tmp_path, "run") == ["run"] and sorted(p.name for p in out.iterdir()) == ["align", "instruct"]


def test_a_diverging_survival_head_is_one_line_and_the_rerun_works(cohort: Path, tmp_path: Path) -> None:
    cfg = tiny_config("data.target_spacing_zyx=[18,10,10]")
    checkpoint = save_checkpoint(tmp_path / "model", build(cfg), cfg, stage="instruct")  # untrained: fast
    config = tmp_path / "c.yaml"
    config.write_text(CLINICAL)
    out = tmp_path / "survival"
    survival = ["survival", "--config", config, "--cohort", cohort, "--out", out, "--pretrained", checkpoint, *SURVIVAL]
    assert_user_error(cli(*survival, "survival.lr=1e30"),
                      "the survival head diverged (loss is not finite) at survival.lr=1e+30; lower survival.lr")
    assert leftovers(tmp_path, "survival") == []
    result = cli(*survival, "survival.lr=5e-2")
    assert result.exit_code == 0, result.output
    assert leftovers(tmp_path, "survival") == ["survival"] and (out / "model" / "model.json").is_file()


def test_a_config_syntax_error_is_one_line_with_its_line(cohort: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CLINICAL + "survival:\n  lr: [0.1\n")
    result = cli("survival", "--config", config, "--cohort", cohort, "--out", tmp_path / "out", "--pretrained", tmp_path)
    assert_user_error(result, f"config file {config} line 7, column 1:", "not valid YAML")
    assert leftovers(tmp_path, "out") == []


def test_kill_9_leaves_no_out(tmp_path: Path) -> None:
    """``ctsurv simulate`` killed while it writes volumes: only its hidden staging folder is left."""
    out = tmp_path / "cohort"
    command = [sys.executable, "-m", "ctsurv", "simulate", "--out", str(out), "--n", "400", "--workers", "1",
               "--shape", "8", "16", "16"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / f".cohort.partial-{proc.pid}"
    try:
        deadline = time.monotonic() + 60
        while not (staging / "volumes").is_dir() or not any((staging / "volumes").iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, "simulate ended before it could be killed"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists() and leftovers(tmp_path, "cohort") == [staging.name]
