"""Typed configs: strict keys, type-checked overrides, one level of base."""

from pathlib import Path

import pytest

from rangecps.config import Config, ConfigError, from_dict, load_config, to_dict


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_roundtrip() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert from_dict(to_dict(cfg)) == cfg
    assert cfg.optim.betas == (0.9, 0.999)


def test_unknown_key_names_file_and_suggests(tmp_path: Path) -> None:
    f = write(tmp_path / "a.yaml", "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: unknown key 'optim\.lrr' \(did you mean 'lr'\?\)"):
        load_config(f)


def test_unknown_section(tmp_path: Path) -> None:
    f = write(tmp_path / "a.yaml", "trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*'train'"):
        load_config(f)


def test_wrong_type_and_literal(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"b\.yaml: train\.epochs: expected int, got str"):
        load_config(write(tmp_path / "b.yaml", "train:\n  epochs: ten\n"))
    with pytest.raises(ConfigError, match="'resnet' is not one of"):
        load_config(write(tmp_path / "c.yaml", "model:\n  name: resnet\n"))
    with pytest.raises(ConfigError, match="expected int, got bool"):
        load_config(write(tmp_path / "d.yaml", "train:\n  seed: true\n"))


def test_int_widens_to_float_and_lists_to_tuples(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "e.yaml", "optim:\n  lr: 1\n  betas: [0.8, 0.9]\n"))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)


def test_overrides_are_type_checked(tmp_path: Path) -> None:
    cfg = load_config(None, ["optim.lr=0.002", "data.augment.flip=false", "train.max_steps=7"])
    assert cfg.optim.lr == 0.002 and cfg.data.augment.flip is False and cfg.train.max_steps == 7
    with pytest.raises(ConfigError, match=r"--set: train\.epochs: expected int"):
        load_config(None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match=r"--set: unknown key 'train\.epoch'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(None, ["train.epochs"])


def test_one_level_of_base(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "optim:\n  lr: 0.5\n  weight_decay: 0.1\ntrain:\n  epochs: 9\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\noptim:\n  lr: 0.25\n")
    cfg = load_config(child)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.epochs) == (0.25, 0.1, 9)
    grandchild = write(tmp_path / "gc.yaml", "base: child.yaml\n")
    with pytest.raises(ConfigError, match="one level only"):
        load_config(grandchild)


def test_bad_key_in_base_names_base(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "optim:\n  lrate: 0.5\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown key 'optim\.lrate'"):
        load_config(child)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere\.yaml: config file not found"):
        load_config(tmp_path / "nothere.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "train: [1,\n"))
