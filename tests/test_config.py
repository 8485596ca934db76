"""Config: YAML round trip, overrides, and clear errors for typos and wrong types."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ctsurv.config import DataConfig, ExperimentConfig, _parse_yaml, config_differences, load_config, save_config
from ctsurv.errors import ConfigError


def test_defaults_round_trip(tmp_path: Path) -> None:
    cfg = ExperimentConfig(name="x", seed=3, data=DataConfig(numeric_columns=("age",), categorical_columns=("sex",)))
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    cfg = load_config(None, ["seed=7", "data.target_shape_zyx=[32,48,48]", "data.hu_window=[-1000, 200]", "data.cache_dir=null"])
    assert cfg.seed == 7
    assert cfg.data.target_shape_zyx == (32, 48, 48)
    assert cfg.data.hu_window == (-1000.0, 200.0)
    assert isinstance(cfg.data.hu_window[0], float)
    assert cfg.data.cache_dir is None


def test_override_beats_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("seed: 1\ndata:\n  crop: foreground\n")
    cfg = load_config(tmp_path / "c.yaml", ["seed=2"])
    assert (cfg.seed, cfg.data.crop) == (2, "foreground")


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.target_shap=[1,2,3]", "did you mean 'target_shape_zyx'"),
        ("dta.crop=center", "did you mean 'data'"),
        ("data.crop=middle", "must be one of ['center', 'foreground', 'mask']"),
        ("pretrain.vision.mixed_precision=no", "YAML reads an unquoted no/yes/off/on as a boolean: quote it"),
        ("data.target_shape_zyx=[32,48]", "must have 3 entries"),
        ("data.target_shape_zyx=[32,48,0]", "three positive integers"),
        ("data.hu_window=[400,-1000]", "low < high"),
        ("data.extra_hu_windows=[[-160,240],[300,200]]", "data.extra_hu_windows must be [low, high] with low < high"),
        ("data.extra_hu_windows=[-160,240]", "must be a list"),
        ("data.blob_sigmas_mm=[4,0]", "data.blob_sigmas_mm must be positive scales in mm"),
        ("data.blob_windows=[0,1]", "data.blob_windows must be distinct window indices from 0 (hu_window) to 0"),
        ("data.blob_windows=[]", "data.blob_windows must be distinct"),
        ("pretrain.instruct.epochs=0", "pretrain.instruct.epochs must be at least 1"),
        ("pretrain.vision.epochs=-1", "train.epochs at least 0"),
        ("seed=abc", "must be an integer"),
        ("seed", "not of the form key=value"),
    ],
)
def test_bad_overrides_raise_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as exc:
        load_config(None, [override])
    assert message in str(exc.value)


def test_extra_windows_are_refused_for_the_pretrained_one_channel_encoder() -> None:
    with pytest.raises(ConfigError, match="i3resnet152 reads one window"):
        load_config(None, ["vision.encoder=i3resnet152", "data.extra_hu_windows=[[-160,240]]"])
    with pytest.raises(ConfigError, match=r"set data.blob_sigmas_mm=\[\]"):
        load_config(None, ["vision.encoder=i3resnet152", "data.blob_sigmas_mm=[4]"])
    cfg = load_config(None, ["data.extra_hu_windows=[[-160,240]]", "data.blob_sigmas_mm=[4]"])
    assert cfg.data.hu_windows == ((-1000.0, 400.0), (-160.0, 240.0)) and cfg.data.in_channels == 3


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_column_declared_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match="both numeric and categorical"):
        load_config(None, ["data.numeric_columns=[age]", "data.categorical_columns=[age]"])


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.name == path.stem


def test_config_differences_name_every_changed_setting_by_its_dotted_key() -> None:
    a = load_config(None)
    b = load_config(None, ["projector.layers=1", "pretrain.instruct.lr=0.002", "data.blob_sigmas_mm=[4.0]"])
    assert config_differences(a, b) == {
        "projector.layers": (a.projector.layers, 1),
        "pretrain.instruct.lr": (a.pretrain.instruct.lr, 0.002),
        "data.blob_sigmas_mm": ([], [4.0]),
    }
    assert config_differences(a, load_config(None)) == {}


def test_a_section_given_in_part_keeps_its_own_defaults_for_the_rest() -> None:
    """PretrainConfig's stages default to other epochs than TrainConfig's class default; setting one key of a
    stage (in a file or an override) must not reset the others to the class defaults."""
    defaults = load_config(None).pretrain
    assert (defaults.instruct.epochs, defaults.align.epochs) == (12, 4)
    cfg = load_config(None, ["pretrain.instruct.lr=0.002", "pretrain.align.batch_size=2"])
    assert cfg.pretrain.instruct == dataclasses.replace(defaults.instruct, lr=0.002)
    assert cfg.pretrain.align == dataclasses.replace(defaults.align, batch_size=2)
    assert cfg.pretrain.vision == defaults.vision


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("1E5", 1e5), (".5", 0.5), ("-.5", -0.5), ("-3e+2", -300.0),
                                         ("1.0e30", 1e30), ("2.5", 2.5), ("3", 3.0)])
def test_yaml_1_2_floats_are_numbers_in_files_and_overrides(tmp_path: Path, text: str, value: float) -> None:
    """PyYAML reads YAML 1.1, where 1e-4 (no dot, unsigned exponent) would be the string "1e-4"."""
    (tmp_path / "c.yaml").write_text(f"survival:\n  lr: {text}\n")
    from_file, from_override = load_config(tmp_path / "c.yaml").survival.lr, load_config(None, [f"survival.lr={text}"]).survival.lr
    assert from_file == from_override == value and type(from_file) is float


@pytest.mark.parametrize("text, value", [("08", "08"), ("1e", "1e"), ("e5", "e5"), ("1.2.3", "1.2.3"), ("0x1f", 31),
                                         ("1_000", 1000), ("yes", True), ("null", None)])
def test_other_scalars_parse_as_before(text: str, value: object) -> None:
    assert _parse_yaml(text, "x") == value and type(_parse_yaml(text, "x")) is type(value)


def test_yaml_syntax_errors_are_one_line_with_the_line_number(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\ndata:\n  crop: center\n  hu_window: [-1000, 400\nsurvival:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"config file {path} line 5, column 9: expected ',' or ']'"), message
    assert "(while parsing a flow sequence at line 4)" in message and message.endswith("it is not valid YAML")
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["data.hu_window=[-1000, 400"])
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith("override 'data.hu_window=[-1000, 400' line 1, column "), exc.value
