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


@pytest.mark.parametrize("dataset", ["semantickitti", "scribblekitti", "nuscenes"])
def test_real_dataset_configs_use_the_released_recipe(dataset: str) -> None:
    folder = Path(__file__).resolve().parents[1] / "configs" / dataset
    for path in sorted(p for p in folder.glob("*_*.yaml") if "frnet" not in p.name):
        cfg = load_config(path)
        assert cfg.loss.recipe == "released" and cfg.data.input == "released", path
        assert (cfg.loss.ce, cfg.loss.dice, cfg.loss.lovasz) == (1.0, 1.0, 3.0), path
        assert cfg.loss.boundary == (0.0 if dataset == "scribblekitti" else 1.0), path
        assert not cfg.loss.class_weights and cfg.optim.eps == 1e-6 and cfg.data.batch_size == 32, path
        assert cfg.data.width == (None if dataset == "nuscenes" else 1920), path
        assert set(cfg.train.epochs_by_labels) == {"1%", "10%", "20%", "50%"}, path
        if cfg.model.name == "cenet":
            assert cfg.loss.aux == 1.0, path
            e = cfg.eval
            assert (e.knn_k, e.knn_search, e.knn_sigma, e.knn_cutoff) == (7, 7, 1.0, 2.0), path
        # The LaserMix release's semi_train_cfg, loss_mse and MeanTeacherHook (configs/lasermix/*_10.py).
        semi = cfg.semi
        assert semi.ema_momentum == 0.01 and semi.mix == 1.0 and semi.consistency_rampup == 0, path
        if dataset == "nuscenes":
            assert (semi.consistency, semi.pseudo_threshold, semi.mix_bands) == (500.0, 0.95, [3, 4, 5, 6]), (
                path
            )
            assert semi.mix_pitch == (-30.0, 10.0), path
        else:
            assert (semi.consistency, semi.pseudo_threshold, semi.mix_bands) == (
                250.0,
                0.9,
                [4, 5, 6, 7, 8],
            ), path
            assert semi.mix_pitch == (-25.0, 3.0), path
    methods = {load_config(p).train.method for p in folder.glob("*_fidnet.yaml")}
    assert methods == {"sup_only", "mean_teacher", "cps", "lasermix", "cps_lasermix"}


@pytest.mark.parametrize("dataset", ["semantickitti", "scribblekitti", "nuscenes"])
def test_frnet_configs_use_the_released_frnet_recipe(dataset: str) -> None:
    # Xiangxu-0103/FRNet: configs/frnet/frnet-*_seg.py, _base_/models/frnet.py, _base_/datasets/*_seg.py,
    # _base_/schedules/onecycle-{50,150}k.py.
    folder = Path(__file__).resolve().parents[1] / "configs" / dataset
    base = load_config(folder / "base_frnet.yaml")
    methods = set()
    for path in sorted(folder.glob("*_frnet.yaml")):
        cfg = load_config(path)
        methods.add(cfg.train.method)
        assert cfg.model == base.model and cfg.model.name == "frnet" and cfg.model.width == 1.0, path
        loss = cfg.loss
        assert (loss.recipe, loss.ce, loss.dice, loss.lovasz, loss.boundary, loss.aux) == (
            "released",
            1.0,
            0.0,
            1.5,
            1.0,
            1.0,
        ), path
        assert not loss.class_weights, path
        o = cfg.optim
        assert (o.lr, o.betas, o.weight_decay, o.eps) == (0.01, (0.9, 0.999), 0.01, 1e-6), path
        assert (o.pct_start, o.div_factor, o.final_div_factor) == (0.2, 25.0, 100.0), path
        grid = (32, 480) if dataset == "nuscenes" else (64, 512)
        assert (cfg.data.height, cfg.data.width) == grid, path
        assert cfg.train.steps == (150_000 if dataset == "nuscenes" else 50_000), path
        a = cfg.data.augment
        assert a.flip and a.rotate and a.scale == (0.95, 1.05) and a.scale_z and a.translate == 0.1, path
        assert not a.roll and a.dropout == 0.0, path
        # FrustumMix (num_areas 3-6, p 1), InstanceCopy (p 1, the released classes), RangeInterpolation.
        assert (a.frustum_mix, a.frustum_mix_areas, a.instance_copy, a.instance_classes) == (
            1.0,
            [3, 4, 5, 6],
            1.0,
            [],
        ), path
        assert a.range_interpolation, path
        assert a.frustum_fov == ((10.0, -30.0) if dataset == "nuscenes" else None), path
    assert methods == {"sup_only", "mean_teacher", "cps", "lasermix", "cps_lasermix"}


def test_mapping_values_are_type_checked() -> None:
    cfg = load_config(None, ["train.epochs_by_labels={'10%': 4}"])
    assert cfg.train.epochs_by_labels == {"10%": 4}
    with pytest.raises(ConfigError, match="epochs_by_labels"):
        load_config(None, ["train.epochs_by_labels={'10%': four}"])
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(None, ["train.epochs_by_labels=[4]"])
    with pytest.raises(ConfigError, match="scale_mode"):
        load_config(None, ["data.augment.scale_mode=sometimes"])


def test_yaml_booleans_read_back_as_the_words_a_literal_allows(tmp_path: Path) -> None:
    # YAML 1.1 reads `off` as False: `train.amp: off` and `--set train.amp=off` must still mean "off".
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  amp: off\n")
    assert load_config(p).train.amp == "off"
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match=r"train\.amp"):
        load_config(None, ["train.amp=yes"])  # "on" is no choice of train.amp, so True stays an error


# FRNet's release: 4 GPUs (its issue #2) x train_dataloader batch_size 4 (configs/_base_/datasets/*_seg.py), the
# schedules' base_batch_size 16 (configs/_base_/schedules/onecycle-{50,150}k.py, since commit d58e5a1).
FRNET_GPUS, FRNET_BATCH_PER_GPU = 4, 4


@pytest.mark.parametrize("dataset", ["semantickitti", "scribblekitti", "nuscenes"])
def test_frnet_configs_train_the_released_global_batch(dataset: str) -> None:
    folder = Path(__file__).resolve().parents[1] / "configs" / dataset
    paths = sorted(folder.glob("*_frnet.yaml"))
    assert len(paths) == 6, paths  # base_frnet.yaml and the five methods
    for path in paths:
        cfg = load_config(path)  # one process holds the global batch
        assert cfg.data.batch_size == FRNET_GPUS * FRNET_BATCH_PER_GPU, path
        assert cfg.data.unlabeled_batch_size == cfg.data.batch_size, path
        # The README's torchrun form: 4 processes of 4 scans, the release's own split.
        per_gpu = load_config(path, ["data.batch_size=4", "data.unlabeled_batch_size=4"])
        assert FRNET_GPUS * per_gpu.data.batch_size == cfg.data.batch_size, path
        assert not cfg.optim.cycle_momentum, path  # mmengine's OneCycleLR: lr only
        assert cfg.eval.tta == 4, path  # published under TTA: the release's four tta_pipeline views
