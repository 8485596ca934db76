"""The command line end to end on a tiny simulated cohort: simulate, inspect, labels, pretrain (with
--resume), ask; and the one-line errors with exit status 2 on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tiny_setups import (
    TINY_PIPELINE,
    assert_user_error,
    cli,
    one_torch_thread,  # noqa: F401 (autouse)
)
from typer.testing import Result

from ctsurv.evaluation.vlm_eval import SHORT_ANSWER_TOKENS
from ctsurv.features import preprocess_all
from ctsurv.inference import answer_volume
from ctsurv.io.cohort import load_cohort
from ctsurv.models.representation import answer_features
from ctsurv.models.vlm import CTVLM
from ctsurv.synthetic.simulate import simulate
from ctsurv.text.answers import instruction_pairs
from ctsurv.text.findings import CTRATE_LABELS
from ctsurv.text.questions import PRESENCE_LABELS, PRESENCE_QUESTIONS, QUESTIONS
from ctsurv.training.checkpoint import load_checkpoint
from ctsurv.training.stages import InstructionLoss

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
TINY = TINY_PIPELINE
# 14 studies of 7 patients; val_fraction and test_fraction 0.15 hold out 1 patient (2 studies) each
N_TRAIN, N_VAL, N_TEST, BATCH = 10, 2, 2, 4


def pretrain(cohort: Path, out: Path, *extra: str) -> Result:
    """``ctsurv pretrain`` on the tiny configuration, with ``extra`` flags and overrides."""
    return cli("pretrain", "--config", CONFIG, "--cohort", cohort, "--out", out, *TINY, *extra)


def table_rows(stdout: str) -> list[tuple[str, str]]:
    """(question, answer) rows of the table `ctsurv ask` prints; a cell's wrapped lines joined by spaces."""
    rows: list[tuple[str, str]] = []
    for line in stdout.splitlines():
        if line.startswith("│"):
            question, answer = (cell.strip() for cell in line.split("│")[1:3])
            if question or not rows:
                rows.append((question, answer))
            else:  # a continuation line of a multi-line answer
                rows[-1] = (rows[-1][0], f"{rows[-1][1]} {answer}".strip())
    return rows


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 simulated studies (16×32×32 voxels) of 7 patients, two studies each (a ``patient_id`` column)."""
    folder = tmp_path_factory.mktemp("cohort") / "sim"
    simulate(folder, n=14, seed=5, shape_zyx=(16, 32, 32), spacing_zyx=(18, 10, 10), workers=1, progress=False)
    table = pd.read_csv(folder / "cohort.csv")
    table["patient_id"] = [f"pt{i // 2}" for i in range(len(table))]
    table.to_csv(folder / "cohort_patients.csv", index=False)
    return folder / "cohort_patients.csv"


@pytest.fixture(scope="module")
def run(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    result = pretrain(cohort, out)
    assert result.exit_code == 0, result.output
    assert f"checkpoints: {out / 'align'}, {out / 'instruct'}" in result.stdout
    return out


@pytest.fixture
def training_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the training forward passes of stages 1-2 (evaluation does not use InstructionLoss)."""
    calls: list[int] = []
    forward = InstructionLoss.forward

    def counted(self: InstructionLoss, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(InstructionLoss, "forward", counted)
    return calls


# ------------------------------------------------------------------ pretrain


def test_pretrain_writes_checkpoints_split_and_evaluation(run: Path, cohort: Path) -> None:
    for stage in ("vision", "align", "instruct"):
        for name in ("config.yaml", "model.safetensors", "tokenizer/tokenizer.json", "metrics.json"):
            assert (run / stage / name).is_file(), f"{stage}/{name}"
        metrics = json.loads((run / stage / "metrics.json").read_text())
        assert metrics["epochs"] == 1 and metrics["studies"] == N_TRAIN
        assert len(metrics["history"]) == -(-N_TRAIN // BATCH)

    table = pd.read_csv(cohort, dtype={"id": str})
    split = pd.read_csv(run / "split.csv", dtype=str).merge(table[["id", "patient_id"]], on="id", validate="1:1")
    assert len(split) == len(table) and split["split"].value_counts().to_dict() == {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}
    assert split.groupby("patient_id")["split"].nunique().max() == 1  # a patient's studies stay together
    test_ids = split.loc[split["split"] == "test", "id"].tolist()

    # eval.json scores the test studies, and only them: its examples are their reports, in cohort order
    evaluation = json.loads((run / "instruct" / "eval.json").read_text())
    assert evaluation["n_studies"] == N_TEST
    assert [e["reference_report"] for e in evaluation["examples"]] == table.set_index("id").loc[test_ids, "findings"].tolist()
    presence = [q.label for q in QUESTIONS if q.kind == "presence"]
    assert set(evaluation["presence"]) == {*presence, "macro"}
    for label in presence:
        scores = evaluation["presence"][label]
        assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["f1"] <= 1 and scores["n"] == N_TEST
        assert (scores["auc"] is None) == (scores["positives"] in (0, N_TEST))  # P(yes)'s AUC where it is defined
        assert scores["auc"] is None or 0 <= scores["auc"] <= 1
    macro = evaluation["presence"]["macro"]
    positive = [label for label in presence if evaluation["presence"][label]["positives"] > 0]
    assert macro["labels_in_macro"] == positive and positive  # the simulated test reports have findings
    assert macro["f1"] == pytest.approx(sum(evaluation["presence"][label]["f1"] for label in positive) / len(positive))
    for kind in ("impression", "report"):
        assert {"bleu_4", "rouge_l", "embedding_similarity"} <= set(evaluation[kind])
        assert evaluation[kind]["n"] == N_TEST
    assert (run / "instruct" / "eval.md").read_text().startswith(f"# Held-out evaluation ({N_TEST} studies)")


def test_stage_0_trains_the_encoder_that_stages_1_and_2_keep_frozen(run: Path) -> None:
    from ctsurv.models.vlm import build_vlm
    from ctsurv.training.checkpoint import load_checkpoint

    cfg = load_checkpoint(run / "vision")[1]
    torch.manual_seed(cfg.seed)  # as `pretrain` does before building the model: the encoder's initial weights
    untrained = build_vlm(cfg, texts=["a b c"]).vision_encoder.state_dict()
    encoders = {stage: load_checkpoint(run / stage)[0].vision_encoder.state_dict() for stage in ("vision", "align", "instruct")}
    for name, tensor in encoders["vision"].items():
        for stage in ("align", "instruct"):
            torch.testing.assert_close(encoders[stage][name], tensor, rtol=0, atol=0)
    changed = [n for n, t in encoders["vision"].items() if t.is_floating_point() and not torch.equal(t, untrained[n])]
    assert len(changed) > len(untrained) // 2  # stage 0 trained it


def test_the_findings_head_is_fitted_on_the_training_studies_before_stage_1(run: Path, cohort: Path) -> None:
    """configs/demo.yaml has projector.findings_token with the mediastinal cells: the head is zero after stage 0,
    fitted before stage 1 on the frozen encoder's features and the cells of the split's training studies, its
    cells chosen per finding on the validation studies (not the test studies), and kept as it is by stages 1-2."""
    from ctsurv.features import encode_all
    from ctsurv.io.cohort import load_cohort
    from ctsurv.training.checkpoint import load_checkpoint
    from ctsurv.training.datasets import presence_labels
    from ctsurv.training.findings import HeldOut, fit_findings_head

    heads = {stage: load_checkpoint(run / stage)[0].projector.findings for stage in ("vision", "align", "instruct")}
    assert not heads["vision"].weight.any()  # stage 0 does not fit it
    for name, tensor in heads["align"].state_dict().items():
        torch.testing.assert_close(heads["instruct"].state_dict()[name], tensor, rtol=0, atol=0)
    model, cfg = load_checkpoint(run / "vision")
    assert cfg.projector.findings_cells_channel == 1
    studies = load_cohort(cohort, cfg.data)
    split = pd.read_csv(run / "split.csv", dtype=str).set_index("id").loc[studies.ids, "split"].to_numpy()
    table = pd.read_csv(cohort, dtype={"id": str}).set_index("id").loc[studies.ids]
    labels = torch.tensor(
        [presence_labels([(q.text, a) for q, a in instruction_pairs(f, i)]) for f, i in zip(table.findings, table.impression)]
    )
    volumes = preprocess_all(studies, cfg, progress=False)
    features, cells = encode_all(model, volumes), model.projector.cells(volumes)
    train, val = split == "train", split == "val"
    _, choice = fit_findings_head(
        model.projector.findings, features[train], labels[train], seed=cfg.seed, cells=cells[train],
        held_out=HeldOut(features[val], cells[val], labels[val]), groups=table["patient_id"].to_numpy()[train],
    )
    for name, tensor in model.projector.findings.state_dict().items():
        torch.testing.assert_close(heads["align"].state_dict()[name], tensor)
    assert heads["align"].weight.any()
    # the choice and its held-out log-losses are in the stage's metrics
    recorded = json.loads((run / "align" / "metrics.json").read_text())["findings_head"]
    assert list(recorded) == [PRESENCE_LABELS[j] for j in choice]
    for j, refit in choice.items():
        assert recorded[PRESENCE_LABELS[j]] == pytest.approx(refit)
    reads = heads["align"].reads_cells
    assert [label for label, c in recorded.items() if c["reads_cells"]] == [PRESENCE_LABELS[j] for j in reads.nonzero()[:, 0]]


class Stop(Exception):
    """Ends a pretraining run where a spy has seen what it needed."""


def test_the_findings_head_chooses_on_the_validation_studies_and_folds_the_training_patients(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``pretrain`` hands ``fit_findings_head``: the training studies with their patients (its folds), and as
    held-out studies the validation rows of split.csv, never the test rows."""
    from ctsurv.config import load_config
    from ctsurv.models.projector import central_cells
    from ctsurv.training import pretrain as module
    from ctsurv.training.datasets import presence_labels

    given: dict = {}

    def spy(head: object, pooled: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> None:
        given.update(pooled=pooled, labels=labels, **kwargs)
        raise Stop

    monkeypatch.setattr(module, "fit_findings_head", spy)
    out, cfg = tmp_path / "run", load_config(CONFIG, TINY)
    with pytest.raises(Stop):
        module.pretrain(cfg, cohort, out, progress=False)
    studies = load_cohort(cohort, cfg.data)
    split = pd.read_csv(out / "split.csv", dtype=str)
    assert split["id"].tolist() == list(studies.ids)
    part = split["split"].to_numpy()
    patients = np.array(studies.patient_ids)
    assert given["groups"] == patients[part == "train"].tolist()
    assert len(given["pooled"]) == len(given["labels"]) == len(given["cells"]) == N_TRAIN
    table = pd.read_csv(cohort, dtype={"id": str}).set_index("id").loc[studies.ids]
    labels = torch.tensor(
        [presence_labels([(q.text, a) for q, a in instruction_pairs(f, i)]) for f, i in zip(table.findings, table.impression)]
    )
    cells = central_cells(preprocess_all(studies, cfg, progress=False), cfg.projector.findings_cells_channel)
    held_out = given["held_out"]
    torch.testing.assert_close(held_out.cells, cells[part == "val"], rtol=0, atol=0)
    torch.testing.assert_close(held_out.labels, labels[part == "val"], rtol=0, atol=0)
    torch.testing.assert_close(given["cells"], cells[part == "train"], rtol=0, atol=0)
    assert not torch.equal(cells[part == "val"], cells[part == "test"])  # so the test rows would have shown


def test_ask_answers_the_predefined_questions(run: Path, cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = cohort.parent / "volumes" / "P0000.nii.gz"
    limits: dict[str, int] = {}
    generate = CTVLM.generate

    def recorded(self: CTVLM, image_tokens: object, questions: list[str], max_new_tokens: int = 64) -> list[str]:
        limits.update(dict.fromkeys(questions, max_new_tokens))
        return generate(self, image_tokens, questions, max_new_tokens=max_new_tokens)

    monkeypatch.setattr(CTVLM, "generate", recorded)
    result = cli("ask", run / "instruct", volume)
    assert result.exit_code == 0, result.output
    expected = answer_volume(run / "instruct", volume)
    assert list(expected) == [q.text for q in QUESTIONS]
    assert table_rows(result.stdout) == [(q, " ".join(a.split())) for q, a in expected.items()]
    # impression and report are as long as the checkpoint's pretrain.max_new_tokens allows (8 here)
    assert limits == {q.text: 8 if q.kind in ("impression", "report") else SHORT_ANSWER_TOKENS for q in QUESTIONS}


def test_ask_a_cohort_as_json(run: Path, cohort: Path) -> None:
    """`ask COHORT --json`: one entry per study in table order, every question answered as if asked alone (the
    short ones are generated together), and P(yes) per finding as the survival stage reads it."""
    result = cli("ask", run, cohort, "--json")
    assert result.exit_code == 0, result.output
    studies = json.loads(result.stdout)
    assert [s["id"] for s in studies] == pd.read_csv(cohort, dtype={"id": str})["id"].tolist()
    model, cfg = load_checkpoint(run / "instruct")
    volumes = preprocess_all(load_cohort(cohort, cfg.data), cfg, progress=False)
    for i in (0, 5):
        s = studies[i]
        assert list(s["answers"]) == [q.text for q in QUESTIONS] and list(s["p_yes"]) == PRESENCE_LABELS
        tokens = model.encode_image(volumes[i : i + 1].float())
        alone = {q.text: model.generate(tokens, [q.text], max_new_tokens=8 if q.kind in ("impression", "report")
                                        else SHORT_ANSWER_TOKENS)[0] for q in QUESTIONS}
        assert s["answers"] == alone
        p_yes, _ = answer_features(model, tokens, PRESENCE_QUESTIONS)
        np.testing.assert_allclose(list(s["p_yes"].values()), p_yes[0].numpy(), rtol=1e-5)
    assert studies[0]["answers"] == answer_volume(run, cohort.parent / "volumes" / "P0000.nii.gz")


def test_ask_a_cohort_without_its_volume_column_says_so(run: Path, cohort: Path, tmp_path: Path) -> None:
    table = pd.read_csv(cohort).rename(columns={"volume": "volumes"})
    table.to_csv(tmp_path / "c.csv", index=False)
    assert_user_error(cli("ask", run, tmp_path / "c.csv", "--json"), "lacks column", "'volume'", "Did you mean 'volumes'")


@pytest.mark.parametrize("question", ["Is there a lung nodule?", "Is there a [/b] nodule or a [bold]mass[/bold]?"])
def test_ask_one_question_on_the_run_folder(run: Path, cohort: Path, question: str) -> None:
    """One free question, printed verbatim with the model's answer (neither is read as rich markup)."""
    volume = cohort.parent / "volumes" / "P0003.nii.gz"
    result = cli("ask", run, volume, "--question", question)  # a run folder means its instruct checkpoint
    assert result.exit_code == 0, result.output
    expected = answer_volume(run / "instruct", volume, [question])[question]
    assert table_rows(result.stdout) == [(question, " ".join(expected.split()))]


def test_resume_of_a_finished_run_trains_nothing(
    run: Path, cohort: Path, tmp_path: Path, training_steps: list[int]
) -> None:
    out = Path(shutil.copytree(run, tmp_path / "run"))
    weights = [out / stage / "model.safetensors" for stage in ("vision", "align", "instruct")]
    stamps = [p.stat().st_mtime_ns for p in weights]
    result = pretrain(cohort, out, "--resume")
    assert result.exit_code == 0, result.output
    assert training_steps == []
    assert [p.stat().st_mtime_ns for p in weights] == stamps
    assert json.loads((out / "instruct" / "eval.json").read_text())["presence"].keys() == (
        json.loads((run / "instruct" / "eval.json").read_text())["presence"].keys()
    )


def test_resume_continues_an_interrupted_stage(
    run: Path, cohort: Path, tmp_path: Path, training_steps: list[int]
) -> None:
    """An interrupted stage 2 (its checkpoint missing, its epoch-1 state kept) continues with epoch 2."""
    out = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(out / "instruct")
    align_stamp = (out / "align" / "model.safetensors").stat().st_mtime_ns
    result = pretrain(cohort, out, "--resume", "pretrain.instruct.epochs=2")
    assert result.exit_code == 0, result.output
    assert len(training_steps) == -(-N_TRAIN // BATCH)  # one epoch: the second
    assert (out / "align" / "model.safetensors").stat().st_mtime_ns == align_stamp
    before = json.loads((run / "instruct" / "metrics.json").read_text())["history"]
    after = json.loads((out / "instruct" / "metrics.json").read_text())["history"]
    assert len(after) == 2 * len(before) and after[: len(before)] == before
    assert {h["epoch"] for h in after[len(before) :]} == {2}
    assert (out / "instruct" / "eval.json").is_file()
    changed = load_file(out / "instruct" / "model.safetensors")
    original = load_file(run / "instruct" / "model.safetensors")
    assert changed.keys() == original.keys()
    assert any(not changed[k].equal(original[k]) for k in changed)  # epoch 2 did train


# ------------------------------------------------------------------ pretrain: bad input


def test_resume_refuses_a_changed_setting_of_a_finished_stage(run: Path, cohort: Path, tmp_path: Path) -> None:
    """A finished stage is kept as it is: a changed model setting would silently not apply, so it is refused
    before anything is written."""
    out = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(out / "instruct")
    written = {p: p.read_bytes() for p in (out / "config.yaml", out / "split.csv")}
    result = pretrain(cohort, out, "--resume", "projector.layers=1", "pretrain.align.lr=0.01")
    assert_user_error(
        result, f"the finished stage {out / 'vision'} was trained with other settings",
        "projector.layers: 2 in the checkpoint, 1 now", "remove",
    )
    assert "pretrain.align.lr" not in result.output  # stage 0 (checked first) does not depend on align's settings
    assert {p: p.read_bytes() for p in written} == written
    assert not (out / "instruct").exists()


@pytest.mark.parametrize("setting", ["pretrain.test_fraction=0.3", "pretrain.val_fraction=0.3"])
def test_resume_refuses_another_split_of_the_patients(run: Path, cohort: Path, tmp_path: Path, setting: str) -> None:
    """The fractions decide who trains: once a stage is finished they may not change."""
    out = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(out / "instruct")
    split = (out / "split.csv").read_bytes()
    result = pretrain(cohort, out, "--resume", setting)
    key = setting.split("=")[0]
    assert_user_error(result, f"the finished stage {out / 'vision'} was trained with other settings", f"{key}: 0.15 in the checkpoint, 0.3 now")
    assert (out / "split.csv").read_bytes() == split


def test_resume_refuses_a_split_csv_it_would_not_draw(run: Path, cohort: Path, tmp_path: Path) -> None:
    """A run folder whose split.csv is not this cohort's split under the seed (an older two-way split, another
    cohort) is not resumed: its finished stages trained on other studies."""
    out = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(out / "instruct")
    split = pd.read_csv(out / "split.csv", dtype=str)
    split["split"] = split["split"].replace({"test": "val"})  # the split before the test part existed
    split.to_csv(out / "split.csv", index=False)
    written = (out / "split.csv").read_bytes()
    result = pretrain(cohort, out, "--resume")
    assert_user_error(result, f"{out / 'split.csv'} differs from the split of {cohort}", "new --out folder")
    assert (out / "split.csv").read_bytes() == written and not (out / "instruct").exists()


def test_pretrain_refuses_a_non_empty_out_without_resume(run: Path, cohort: Path) -> None:
    result = pretrain(cohort, run)
    assert_user_error(result, str(run), "already exists and is not empty", "--resume")


def test_pretrain_config_typo_says_did_you_mean(cohort: Path, tmp_path: Path) -> None:
    result = pretrain(cohort, tmp_path / "out", "pretrain.instruct.epoch=1")
    assert_user_error(result, "pretrain.instruct.epoch", "did you mean 'epochs'")
    assert not (tmp_path / "out").exists()


def test_packing_questions_needs_a_chat_template(cohort: Path, tmp_path: Path) -> None:
    """The tiny LM has no chat template to extend turn by turn: refused before any training."""
    out = tmp_path / "run"
    assert_user_error(pretrain(cohort, out, "pretrain.pack_questions=true"), "pretrain.pack_questions", "chat template")
    assert not (out / "vision" / "model.safetensors").exists()


def test_pretrain_on_impressions_only(cohort: Path, tmp_path: Path) -> None:
    """A cohort may hold impressions and no findings column (load_cohort accepts either)."""
    impressions = cohort.with_name("impressions_only.csv")
    pd.read_csv(cohort).drop(columns=["findings"]).to_csv(impressions, index=False)
    out = tmp_path / "run"
    result = pretrain(impressions, out)
    assert result.exit_code == 0, result.output
    assert (out / "instruct" / "model.safetensors").is_file()
    assert json.loads((out / "instruct" / "eval.json").read_text())["n_studies"] == N_TEST


def test_pretrain_needs_report_columns(cohort: Path, tmp_path: Path) -> None:
    no_reports = cohort.with_name("no_reports.csv")
    pd.read_csv(cohort).drop(columns=["findings", "impression"]).to_csv(no_reports, index=False)
    result = pretrain(no_reports, tmp_path / "out")
    assert_user_error(result, str(no_reports), "'findings' or 'impression'", "needed for pretraining")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ simulate, inspect, labels


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("simulate") / "cohort"
    return out, cli("simulate", "--out", out, "--n", 12, "--shape", 16, 32, 32, "--spacing", 18, 10, 10)


def test_simulate_writes_a_cohort_and_never_overwrites_it(simulated: tuple[Path, Result]) -> None:
    out, result = simulated
    assert result.exit_code == 0, result.output
    assert str(out / "cohort.csv") in result.stdout
    table = pd.read_csv(out / "cohort.csv")
    assert len(table) == 12 and {"id", "volume", "findings", "impression", "time", "event"} <= set(table.columns)
    assert len(pd.read_csv(out / "truth.csv")) == 12
    assert sorted(p.name for p in (out / "volumes").iterdir()) == sorted(Path(v).name for v in table["volume"])
    again = cli("simulate", "--out", out, "--n", 12, "--shape", 16, 32, 32, "--spacing", 18, 10, 10)
    assert_user_error(again, str(out / "cohort.csv"), "already exists")


def test_inspect_prints_geometry_and_writes_a_png(simulated: tuple[Path, Result], tmp_path: Path) -> None:
    volume = simulated[0] / "volumes" / "P0000.nii.gz"
    png = tmp_path / "montage.png"
    result = cli("inspect", volume, "--png", png)
    assert result.exit_code == 0, result.output
    rows = {
        cells[1].strip(): cells[2].strip() for line in result.stdout.splitlines() if len(cells := line.split("│")) == 4
    }
    assert rows["shape"] == "32 × 32 × 16"  # (X, Y, Z) in RAS
    assert rows["spacing_mm"] == "10 × 10 × 18"
    assert rows["orientation"] == "RAS"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["notes.txt", "scan [bold] 2.txt"])
def test_inspect_of_a_text_file_names_it(tmp_path: Path, name: str) -> None:
    notes = tmp_path / name
    notes.write_text("not a CT volume\n")
    assert_user_error(cli("inspect", notes), str(notes))


def test_labels_writes_the_18_label_columns(simulated: tuple[Path, Result], tmp_path: Path) -> None:
    reports = simulated[0] / "cohort.csv"
    out = tmp_path / "labels.csv"
    result = cli("labels", reports, "--text-column", "findings", "--out", out)
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    table, labelled = pd.read_csv(reports), pd.read_csv(out)
    assert list(labelled.columns) == [*table.columns, *CTRATE_LABELS] and len(CTRATE_LABELS) == 18
    assert set(labelled[list(CTRATE_LABELS)].stack().unique()) <= {0, 1}
    truth = pd.read_csv(simulated[0] / "truth.csv")  # the simulated reports state their findings plainly
    for label in ("Lung nodule", "Pleural effusion", "Emphysema"):
        assert labelled[label].tolist() == truth[label].tolist(), label
