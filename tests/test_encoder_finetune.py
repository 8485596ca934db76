"""encoder_finetuned: the pretrained encoder's last block tuned per training fold on cached inputs; what it reads,
which parameters train, and that the test fold never reaches it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from torch import nn

from ctsurv.config import DataConfig, ExperimentConfig
from ctsurv.io.cohort import load_cohort
from ctsurv.models.i3resnet import I3ResNet152, LastBlock
from ctsurv.training.encoder_finetune import BlockTuning, region_weight_rows, tuned_pools
from ctsurv.training.survival import FoldData, finetuned_encoder_method


def test_last_block_split_gives_the_encoder_grid():
    torch.manual_seed(0)
    encoder = I3ResNet152().eval()
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        inputs = encoder.last_block_inputs(x)
        torch.testing.assert_close(LastBlock(encoder)(inputs), encoder.features(x))
    assert inputs.shape == (1, 2048, 1, 1, 1) and next(iter(LastBlock(encoder).parameters())) is encoder.layer4[-1].conv1.weight


def test_region_weight_rows_whole_then_inside_and_around():
    inside_around = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    rows = region_weight_rows([inside_around, None], cells=4)
    assert rows.shape == (2, 3, 4)
    torch.testing.assert_close(rows[0], torch.tensor([[0.25] * 4, [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]))
    torch.testing.assert_close(rows[1], torch.full((3, 4), 0.25))  # no mask: the whole volume thrice
    assert region_weight_rows([None, None], cells=4).shape == (2, 1, 4)


class Toy(nn.Module):
    """A stand-in last block: a 1x1x1 convolution and a ReLU on cached (n, 6, 2, 2, 2) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(6, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def toy_cohort(tmp_path, n: int = 80):
    rng = np.random.default_rng(0)
    inputs = torch.as_tensor(rng.normal(size=(n, 6, 2, 2, 2)), dtype=torch.float32)
    signal = inputs[:, 5].mean(dim=(1, 2, 3)).numpy()  # a direction the random block mixes with the others
    time = rng.exponential(1 / np.exp(2.0 * signal)) * 100 + 1
    censor = rng.uniform(50, 400, n)
    pd.DataFrame({"id": [f"s{i}" for i in range(n)], "volume": "x.nii.gz", "age": rng.normal(size=n),
                  "time": np.minimum(time, censor), "event": (time <= censor).astype(int)}).to_csv(tmp_path / "c.csv", index=False)
    data_cfg = DataConfig(numeric_columns=("age",))
    cohort = load_cohort(tmp_path / "c.csv", data_cfg, require_outcomes=True, check_files=False)
    cfg = ExperimentConfig(data=data_cfg)
    cfg = dataclasses.replace(cfg, survival=dataclasses.replace(cfg.survival, epochs=100, finetune_lr=0.05, hidden_components=0))
    torch.manual_seed(1)
    tuning = BlockTuning(Toy(), inputs.half(), region_weight_rows([None] * n, cells=8))
    return cohort, cfg, tuning


def test_tuning_moves_only_a_copy_of_the_block_and_never_sees_the_test_fold(tmp_path):
    cohort, cfg, tuning = toy_cohort(tmp_path)
    data = FoldData(cohort, cohort.times, cohort.events)
    train, test = np.arange(60), np.arange(60, 80)
    template = {k: v.clone() for k, v in tuning.block.state_dict().items()}
    clinical = data.clinical(train, data.schema(train))
    pools, epoch = tuned_pools(tuning, cfg, clinical, data.time, data.event, data.groups, train, budget=4, seed=0)
    assert pools.shape == (80, 1, 8) and epoch >= 1  # the block learned something the validation part confirmed
    assert all(torch.equal(template[k], v) for k, v in tuning.block.state_dict().items())  # the template is untouched
    frozen = tuning.pools(tuning.block)
    assert not torch.allclose(pools, frozen)
    # other outcomes in the test fold change nothing
    time, event = cohort.times.copy(), cohort.events.copy()
    time[test], event[test] = time[test][::-1] * 2.0, ~event[test]
    again, _ = tuned_pools(tuning, cfg, clinical, time, event, data.groups, train, budget=4, seed=0)
    torch.testing.assert_close(again, pools)
    pred = finetuned_encoder_method(data, cfg, tuning)(train, test)
    moved = finetuned_encoder_method(FoldData(cohort, time, event), cfg, tuning)(train, test)
    np.testing.assert_array_equal(moved.risk, pred.risk)
