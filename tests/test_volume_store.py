"""The streamed volumes (features.store): the same values, batches, trained weights and features as the stacked
tensor they replace; parallel preprocessing writes the same cache; an interrupted pass resumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_setups import TINY_PIPELINE, build, one_torch_thread, tiny_config  # noqa: F401 (a fixture)

from ctsurv.config import ExperimentConfig, TrainConfig
from ctsurv.errors import CtsurvError
from ctsurv.features import Preprocessor, VolumeStore, cells_all, encode_all, extract, volume_store
from ctsurv.features import store as store_module
from ctsurv.io.cohort import Cohort, load_cohort
from ctsurv.io.volumes import HUWarning
from ctsurv.synthetic.simulate import simulate
from ctsurv.text.answers import instruction_pairs
from ctsurv.text.questions import PRESENCE_QUESTIONS
from ctsurv.training.datasets import StudyDataset, finding_collate
from ctsurv.training.loop import train
from ctsurv.training.stages import FindingLoss, set_trainable

N = 10
CHANNELS = ["data.extra_hu_windows=[[-160,240]]", "data.blob_sigmas_mm=[12]"]  # 3 channels: ITK runs in the workers


def config(cache: Path | None = None, *overrides: str) -> ExperimentConfig:
    cfg = tiny_config(*TINY_PIPELINE, *CHANNELS, "vision.encoder=cnn3d", "vision.cnn_widths=[4,4,8,8]", *overrides)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=None if cache is None else str(cache)))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    folder = tmp_path_factory.mktemp("cohort") / "sim"
    simulate(folder, n=N, seed=11, shape_zyx=(16, 32, 32), spacing_zyx=(18, 10, 10), workers=1, progress=False)
    return load_cohort(folder / "cohort.csv", config().data, require_reports=True)


@pytest.fixture(scope="module")
def stacked(cohort: Cohort) -> torch.Tensor:
    """The reference: what preprocess_all held before the store, every volume computed in this process and stacked."""
    pre = Preprocessor(config().data)
    return torch.stack(
        [pre.load(p, spacing_zyx=cohort.spacing_zyx(i)).to(torch.float16) for i, p in enumerate(cohort.volume_paths)]
    )


def cache_bytes(store: VolumeStore) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in store.files}


def test_the_store_holds_the_stacked_values_and_indexes_like_them(cohort: Cohort, stacked: torch.Tensor, tmp_path: Path) -> None:
    with volume_store(cohort, config(tmp_path).data, workers=1) as store:
        assert len(store) == N and store.shape == stacked.shape and stacked.shape[1] == 3
        assert torch.equal(store[:], stacked) and store[:].dtype == torch.float16
        assert torch.equal(store[4], stacked[4]) and torch.equal(store[np.int64(2)], stacked[2])
        assert torch.equal(store[2:7:2], stacked[2:7:2]) and store[5:5].shape == (0, *stacked.shape[1:])
        rows = np.array([7, 0, 3])
        sub = store[rows]
        assert isinstance(sub, VolumeStore) and len(sub) == 3 and torch.equal(sub[:], stacked[rows])
        mask = np.arange(N) % 2 == 0
        assert torch.equal(store[mask][1:3], stacked[mask][1:3]) and torch.equal(store[torch.tensor([1])][0], stacked[1])
        assert all(torch.equal(a, b) for a, b in zip(store, stacked))
        with pytest.raises(IndexError, match="boolean mask"):
            store[np.ones(3, dtype=bool)]
        with pytest.raises(IndexError, match="integer"):
            store[np.array([0.5])]


def test_a_damaged_entry_is_an_error_that_says_what_to_do(cohort: Cohort, tmp_path: Path) -> None:
    store = volume_store(cohort, config(tmp_path).data, workers=1)
    store.files[0].write_bytes(b"not an npy")
    with pytest.raises(CtsurvError, match="run the command again"):
        store[0]
    assert volume_store(cohort, config(tmp_path).data, workers=1)[0].shape == store.shape[1:]  # recomputed


def test_without_cache_dir_a_temporary_cache_is_removed_on_close(cohort: Cohort, stacked: torch.Tensor) -> None:
    store = volume_store(cohort, config().data, workers=1)
    folder = store.files[0].parent
    sub = store[[1, 2]]
    assert torch.equal(sub[:], stacked[1:3]) and folder.is_dir()
    store.close()
    assert not folder.exists()


def test_workers_write_the_same_cache_as_one_process(cohort: Cohort, tmp_path: Path) -> None:
    one = volume_store(cohort, config(tmp_path / "one").data, workers=1)
    two = volume_store(cohort, config(tmp_path / "two").data, workers=2)
    assert cache_bytes(one) == cache_bytes(two) and len(cache_bytes(one)) == N
    assert not list((tmp_path / "two").glob(".*.tmp"))


def test_an_interrupted_pass_resumes_with_only_the_missing_volumes(
    cohort: Cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = cache_bytes(volume_store(cohort, config(tmp_path / "clean").data, workers=1))
    computed, k = [], 4
    real_call = Preprocessor.__call__

    def interrupted(self: Preprocessor, volume: object) -> torch.Tensor:
        if len(computed) == k:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C while the (k+1)-th volume was computed
        computed.append(volume)
        return real_call(self, volume)

    monkeypatch.setattr(Preprocessor, "__call__", interrupted)
    cache = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        volume_store(cohort, config(cache).data, workers=1)
    assert len(list(cache.glob("*.npy"))) == k and not list(cache.glob(".*"))  # complete entries only
    computed.clear()
    k = N  # no more interruptions
    store = volume_store(cohort, config(cache).data, workers=1)
    assert len(computed) == N - 4
    assert cache_bytes(store) == reference
    computed.clear()
    volume_store(cohort, config(cache).data, workers=2)
    assert computed == []  # a complete cache computes nothing


def test_a_missing_volume_fails_before_any_work(cohort: Cohort, tmp_path: Path) -> None:
    missing = dataclasses.replace(cohort, table=cohort.table.assign(volume=cohort.table["volume"].astype(str) + ".gone"))
    with pytest.raises(CtsurvError):
        volume_store(missing, config(tmp_path).data, workers=1)
    assert not list(tmp_path.glob("*.npy"))


def test_stage_0_streams_the_same_batches_and_trains_the_same_weights(
    cohort: Cohort, stacked: torch.Tensor, tmp_path: Path
) -> None:
    """pretrain's stage 0 over a store (items read by the DataLoader) equals it over the stacked tensor, augmented."""
    cfg = config(tmp_path, "pretrain.vision_augment=true")
    train_idx = np.array([0, 2, 3, 5, 6, 8])
    table = cohort.table
    pairs = [[(q.text, a) for q, a in instruction_pairs(table.findings[i], table.impression[i])] for i in train_idx]
    store = volume_store(cohort, cfg.data, workers=1)
    results = []
    for inputs in (stacked, store):
        vlm = build(cfg, seed=3)
        set_trainable(vlm, cfg, "vision")
        torch.manual_seed(4)
        loss = FindingLoss(vlm, len(PRESENCE_QUESTIONS), augment=True)
        batches: list[dict[str, torch.Tensor]] = []

        def collate(rows: list, batches: list = batches) -> dict[str, torch.Tensor]:
            batches.append(finding_collate(rows))
            return batches[-1]

        train_cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_fraction=0.0)
        history = train(loss, StudyDataset(inputs[train_idx], pairs, "images"), collate, train_cfg, seed=cfg.seed, progress=False)
        results.append((batches, history, {k: v.clone() for k, v in loss.state_dict().items()}))
    (batches_a, history_a, weights_a), (batches_b, history_b, weights_b) = results
    assert len(batches_a) == len(batches_b) == 4
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert history_a == history_b
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    # the same with two DataLoader worker processes reading the volumes (what pretrain's stage 0 does)
    vlm = build(cfg, seed=3)
    set_trainable(vlm, cfg, "vision")
    torch.manual_seed(4)
    loss = FindingLoss(vlm, len(PRESENCE_QUESTIONS), augment=True)

    class InWorkers(StudyDataset):
        def __getitem__(self, i: int) -> tuple:
            assert torch.utils.data.get_worker_info() is not None, "read in the main process"
            return super().__getitem__(i)

    history = train(loss, InWorkers(store[train_idx], pairs, "images"), finding_collate, train_cfg, seed=cfg.seed,
                    progress=False, loader_workers=2)
    assert history == history_a and all(torch.equal(v, weights_a[k]) for k, v in loss.state_dict().items())


def test_encoding_and_cells_stream_the_same_features(cohort: Cohort, stacked: torch.Tensor, tmp_path: Path) -> None:
    cfg = config(tmp_path, "projector.findings_token=true", "projector.findings_cells_channel=1", "projector.max_token=true")
    vlm = build(cfg)
    store = volume_store(cohort, cfg.data, workers=1)
    assert torch.equal(encode_all(vlm, store, batch_size=4), encode_all(vlm, stacked, batch_size=4))
    cells = cells_all(vlm, store, batch_size=4)
    assert cells is not None and torch.equal(cells, vlm.projector.cells(stacked))
    assert cells_all(build(config(tmp_path)), store) is None


def test_features_are_cached_beside_the_volumes_per_encoder_and_resumed(
    cohort: Cohort, stacked: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A persistent cache keeps each volume's features under a key of the encoder's weights: a second pass encodes
    nothing, a pass after lost entries encodes only those, another encoder gets its own entries."""
    cfg = config(tmp_path, "projector.max_token=true")
    vlm = build(cfg)
    encoded: list[int] = []
    features = vlm.vision_encoder.features
    monkeypatch.setattr(vlm.vision_encoder, "features", lambda x: encoded.append(len(x)) or features(x))
    store = volume_store(cohort, cfg.data, workers=1)
    reference = encode_all(vlm, stacked, batch_size=4)  # a stacked tensor is never cached
    assert sum(encoded) == N
    first = encode_all(vlm, store, batch_size=4)
    files = extract.feature_files(vlm, store)
    assert torch.equal(first, reference) and sum(encoded) == 2 * N and all(f.is_file() for f in files)
    assert files[0].parent.parent == tmp_path / "features"
    assert torch.equal(encode_all(vlm, store, batch_size=4), reference) and sum(encoded) == 2 * N  # all cached
    for f in files[2:5]:
        f.unlink()
    torch.testing.assert_close(encode_all(vlm, store, batch_size=4), reference)  # the batch differs: float tolerance
    assert sum(encoded) == 2 * N + 3
    files[7].write_bytes(b"half a file")  # a damaged entry is computed again
    torch.testing.assert_close(encode_all(vlm, store, batch_size=4), reference)
    assert sum(encoded) == 2 * N + 4
    torch.testing.assert_close(encode_all(vlm, store[np.array([4, 1])], batch_size=4), reference[[4, 1]])
    assert sum(encoded) == 2 * N + 4  # a sub-store reads the same entries
    with torch.no_grad():
        next(vlm.vision_encoder.parameters()).add_(0.01)  # another encoder: its own entries
    assert extract.feature_files(vlm, store)[0].parent != files[0].parent
    encode_all(vlm, store, batch_size=4)
    assert sum(encoded) == 3 * N + 4
    with volume_store(cohort, config(None).data, workers=1) as temporary:
        assert extract.feature_files(vlm, temporary) is None  # a temporary cache keeps no features


def test_cells_are_cached_beside_the_volumes_and_resumed(
    cohort: Cohort, stacked: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The findings head's cells are cached per volume like the features: a second pass reads no volume, lost or
    damaged entries are computed again, and another cells channel gets its own entries."""
    cfg = config(tmp_path, "projector.findings_token=true", "projector.findings_cells_channel=1")
    vlm = build(cfg)
    computed: list[int] = []
    cells = vlm.projector.cells
    monkeypatch.setattr(vlm.projector, "cells", lambda x: computed.append(len(x)) or cells(x))
    store = volume_store(cohort, cfg.data, workers=1)
    reference = cells(stacked)
    assert torch.equal(cells_all(vlm, store, batch_size=4), reference) and sum(computed) == N
    files = extract.cell_files(vlm, store)
    assert all(f.is_file() for f in files) and files[0].parent.parent == tmp_path / "cells"
    assert torch.equal(cells_all(vlm, store, batch_size=4), reference) and sum(computed) == N  # all cached
    files[3].unlink()
    files[6].write_bytes(b"half a file")
    assert torch.equal(cells_all(vlm, store, batch_size=4), reference) and sum(computed) == N + 2
    assert torch.equal(cells_all(vlm, store[np.array([6, 0])], batch_size=4), reference[[6, 0]])
    assert sum(computed) == N + 2  # a sub-store reads the same entries
    other = build(config(tmp_path, "projector.findings_token=true", "projector.findings_cells_channel=0"))
    assert extract.cell_files(other, store)[0].parent != files[0].parent
    assert torch.equal(cells_all(other, store, batch_size=4), other.projector.cells(stacked))
    with volume_store(cohort, config(None).data, workers=1) as temporary:
        assert extract.cell_files(vlm, temporary) is None  # a temporary cache keeps no cells


def test_data_workers_default_and_override(cohort: Cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used = []
    monkeypatch.setattr(store_module, "preprocess_missing", lambda pre, jobs, files, workers, progress: used.append(workers))
    volume_store(cohort, config(tmp_path).data)
    volume_store(cohort, config(tmp_path, "data.workers=3").data)
    assert used == [store_module.default_workers(), 3] and 1 <= used[0] <= 4


def test_a_failing_volume_in_a_worker_names_the_file_and_keeps_the_finished_entries(
    cohort: Cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = cohort.volume_paths[5]
    real_call = Preprocessor.__call__

    def fails_on_one(self: Preprocessor, volume: object) -> torch.Tensor:
        if np.asarray(volume.array).sum() == bad_sum:  # type: ignore[attr-defined]
            raise ValueError("simulated failure")
        return real_call(self, volume)

    from ctsurv.io.volumes import read_volume

    bad_sum = np.asarray(read_volume(bad, cohort.spacing_zyx(5)).array).sum()
    monkeypatch.setattr(Preprocessor, "__call__", fails_on_one)
    with pytest.raises(CtsurvError, match=rf"{bad.name}: preprocessing failed \(ValueError: simulated failure\)"):
        volume_store(cohort, config(tmp_path).data, workers=2)
    assert len(list(tmp_path.glob("*.npy"))) < N and not list(tmp_path.glob(".*"))
    monkeypatch.undo()
    assert len(volume_store(cohort, config(tmp_path).data, workers=2)) == N


def test_a_table_with_rescale_columns_turns_raw_stored_values_into_hu(cohort: Cohort, stacked: torch.Tensor, tmp_path: Path) -> None:
    """CT-RATE-style rows: raw stored values (HU + 1024) with slope 1 and intercept -1024 preprocess to what the
    HU file gives; rows whose file holds HU already are left as they are (no second intercept)."""
    import nibabel as nib

    table = cohort.table.copy()
    for i in (0, 3):  # these two files hold raw stored values from now on
        image = nib.load(cohort.volume_paths[i])
        raw = np.asarray(image.dataobj, dtype=np.float32) + 1024.0
        path = tmp_path / f"raw_{i}.nii.gz"
        nib.save(nib.Nifti1Image(raw, image.affine), path)
        table.loc[i, cohort.config.volume_column] = str(path)
    table["rescale_slope"], table["rescale_intercept"] = 1.0, -1024.0  # every row: HU files must be left alone
    rescaled = dataclasses.replace(cohort, table=table)
    with volume_store(rescaled, config(tmp_path / "cache").data, workers=1) as store:
        torch.testing.assert_close(store[:], stacked, atol=2e-3, rtol=0)  # float16 rounding of the same values
    without = dataclasses.replace(cohort, table=table.drop(columns=["rescale_slope", "rescale_intercept"]))
    with pytest.warns(HUWarning, match="no voxel below 0 HU"), volume_store(without, config(tmp_path / "cache").data, workers=1) as store:
        assert (store[0].float() - stacked[0].float()).abs().max() > 0.1  # raw values windowed as HU: wrong
