"""The training engine: losses fall, resume is exact, DDP equals one process on the combined batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import TINY, tiny

from rangecps import device as device_module
from rangecps.checkpoint import load_checkpoint
from rangecps.cli import train_main
from rangecps.config import load_config
from rangecps.device import release_host_memory
from rangecps.optim import make_optimisers
from rangecps.train import train


def params(path: Path) -> list[dict[str, torch.Tensor]]:
    return load_checkpoint(path)["nets"]


def assert_same(
    a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]], atol: float = 0.0
) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b, strict=True):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


def test_loss_decreases(synthetic_kitti: Path, tmp_path: Path) -> None:
    cfg = tiny(
        synthetic_kitti,
        "train.method=sup_only",
        "train.epochs=10",
        "train.max_steps=10",
        "data.labels=100%",
        "data.augment.rotate=false",
        "data.augment.flip=false",
    )
    train(cfg, tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    import json

    losses = [json.loads(line)["train/loss"] for line in lines if "train/loss" in line]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    for name in ("config.yaml", "last.pt", "best.pt", "summary.json", "splits/labeled.txt"):
        assert (tmp_path / "run" / name).is_file(), name


def test_resume_is_exact(synthetic_kitti: Path, tmp_path: Path) -> None:
    base = ("train.method=cps_lasermix", "train.epochs=2")
    train(tiny(synthetic_kitti, *base, "train.max_steps=4"), tmp_path / "straight", progress=False)
    train(tiny(synthetic_kitti, *base, "train.max_steps=2"), tmp_path / "split", progress=False)
    first = load_checkpoint(tmp_path / "split" / "last.pt")
    assert first["step"] == 2 and len(first["optimizers"]) == 2 and first["revision"]
    train(
        tiny(synthetic_kitti, *base, "train.max_steps=4"), tmp_path / "split", resume="auto", progress=False
    )
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 4
    assert_same(params(tmp_path / "straight" / "last.pt"), params(tmp_path / "split" / "last.pt"))


def test_resume_refuses_changed_config(synthetic_kitti: Path, tmp_path: Path) -> None:
    train(tiny(synthetic_kitti, "train.method=sup_only", "train.max_steps=1"), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match=r"cannot resume, the config differs in optim\.lr"):
        train(
            tiny(synthetic_kitti, "train.method=sup_only", "optim.lr=0.5"),
            tmp_path / "r",
            resume="auto",
            progress=False,
        )


def test_resume_fills_keys_added_since_with_their_defaults(synthetic_kitti: Path, tmp_path: Path) -> None:
    # A checkpoint saved before a config key existed (FRNet's augmentations were added mid-study) resumes when
    # the run leaves that key at its default, which is how the older code behaved; a key set otherwise is refused.
    base = ("train.method=sup_only", "train.epochs=2")
    train(tiny(synthetic_kitti, *base, "train.max_steps=1"), tmp_path / "r", progress=False)
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    for key in ("frustum_mix", "instance_copy", "range_interpolation"):
        del state["config"]["data"]["augment"][key]
    del state["config"]["optim"]["lr"]
    torch.save(state, tmp_path / "r" / "last.pt")
    with pytest.raises(ValueError, match=r"cannot resume, the config differs in optim\.lr$"):
        train(tiny(synthetic_kitti, *base, "optim.lr=0.5"), tmp_path / "r", resume="auto", progress=False)
    train(tiny(synthetic_kitti, *base, "train.max_steps=2"), tmp_path / "r", resume="auto", progress=False)
    assert load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 2


def test_bad_config_is_refused_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  methd: cps\n")
    assert train_main(["--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "bad.yaml: unknown key 'train.methd' (did you mean 'method'?)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert train_main(["--labels", "150%", "--out", str(tmp_path / "run")]) == 2
    assert "must lie in (0%, 100%]" in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize(
    ("method", "model", "forwards"),
    [("cps", "fidnet", "joint"), ("cps", "fidnet", "separate"), ("lasermix", "fidnet", "joint"),
     ("cps_lasermix", "frnet", "joint")],
)  # fmt: skip
def test_ddp_two_processes_equal_one_process(
    synthetic_kitti: Path, tmp_path: Path, method: str, model: str, forwards: str
) -> None:
    """Two processes with one scan each train as one process with both: nets, and for LaserMix the EMA teacher
    (its batch norm synchronised) and the partitions (drawn for the global batch). FRNet: its point batch norms
    are synchronised too, and every point loss is a mean over scans. CPS with separate forwards: several
    forwards before one backward under DDP, each batch norm synchronised over that forward's batch."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_kitti, root)  # its own prep folder: both runs read the same index
    common = [
        f"data.root={root}",
        *TINY,
        f"train.method={method}",
        f"model.name={model}",
        f"semi.cps_forwards={forwards}",
        "semi.pseudo_threshold=0.0",
        "train.epochs=1",
        "train.max_steps=2",
        "data.augment.rotate=false",
        "train.amp=off",  # bf16 rounding differs between a batch of 2 and two batches of 1; float32 agrees to 1e-5
    ]
    one = [*common, "data.batch_size=2", "data.unlabeled_batch_size=2"]
    train(load_config(None, one), tmp_path / "one", progress=False)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "rangecps.train",
        "--no-progress",
        "--out",
        str(tmp_path / "two"),
    ]
    for kv in common:
        cmd += ["--set", kv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(tmp_path / "two" / "last.pt")["derived"]["world_size"] == 2
    one, two = params(tmp_path / "one" / "last.pt"), params(tmp_path / "two" / "last.pt")
    if model == "frnet":
        # FRNet's first norm sees raw coordinates (variance ~200 m^2): torch's one-process CPU batch norm takes
        # that variance 3e-4 off the float64 value, the synchronised norm's two passes within 1e-7. Compare it at
        # the one-process side's own accuracy.
        for a, b in zip(one, two, strict=True):
            key = "encoder.pre_norm.running_var"
            torch.testing.assert_close(a.pop(key), b.pop(key), rtol=1e-3, atol=0)
    assert_same(one, two, atol=1e-5)


def test_best_checkpoint_keeps_each_nets_best(synthetic_kitti: Path, tmp_path: Path) -> None:
    import json

    cfg = tiny(
        synthetic_kitti, "train.method=cps", "train.epochs=2", "train.max_steps=5", "train.val_every=1"
    )
    summary = train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    history = [(x["step"], x["val/miou_a"], x["val/miou_b"]) for x in lines if "val/miou_a" in x]
    assert len(history) == summary["steps"] >= 3
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    for k in range(2):
        step, score = max(((s, v[k]) for s, *v in history), key=lambda t: (t[1], -t[0]))
        assert best["best_steps"][k] == step and best["best"][k] == pytest.approx(score)
    assert summary["best_steps"] == best["best_steps"]
    # Each net of best.pt is that net at its own best step: re-validating it gives its best score.
    from rangecps import dist
    from rangecps.data.build import build_data
    from rangecps.device import precision
    from rangecps.models import build_model
    from rangecps.train import validate

    data = build_data(cfg, progress=False)
    cpu = torch.device("cpu")
    prec = precision(cfg.train.amp, cfg.train.channels_last, cpu)  # as training validated, bf16 or not
    nets = []
    for weights in best["nets"]:
        net = build_model("fidnet", 6, data.num_classes, cfg.model.width)
        net.load_state_dict(weights)
        nets.append(
            net.to(memory_format=torch.channels_last if prec.channels_last else torch.preserve_format)
        )
    again = validate(nets, ("a", "b"), data, cpu, prec.amp, dist.DistInfo(), 1, 0)
    assert again["miou_a"] == pytest.approx(best["best"][0]) and again["miou_b"] == pytest.approx(
        best["best"][1]
    )


def test_released_recipe_trains_with_its_optimiser_and_epochs(synthetic_kitti: Path, tmp_path: Path) -> None:
    released = load_config(Path(__file__).resolve().parents[1] / "configs" / "semantickitti" / "base.yaml")
    aug = released.data.augment
    cfg = tiny(
        synthetic_kitti,
        "train.method=cps",
        "loss.recipe=released",
        "loss.dice=1.0",
        "loss.boundary=1.0",
        "loss.class_weights=false",
        "data.input=released",
        f"data.augment.dropout={aug.dropout}",
        f"data.augment.scale={list(aug.scale)}",
        f"data.augment.scale_mode={aug.scale_mode}",
        f"data.augment.scale_z={str(aug.scale_z).lower()}",
        f"data.augment.translate={aug.translate}",
        "data.augment.roll=true",
        "train.epochs=9",
        "train.epochs_by_labels={'50%': 2}",
        "train.max_steps=2",
    )
    summary = train(cfg, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["derived"]["epochs"] == 2  # the share's epochs, not train.epochs
    assert summary["total_steps"] == 2 * state["derived"]["steps_per_epoch"]
    assert all(g["eps"] == 1e-6 for o in state["optimizers"] for g in o["param_groups"])
    import json

    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(x for x in logged if "train/dice" in x)
    assert step["train/dice"] > 0 and step["train/boundary"] > 0 and step["train/cps"] > 0


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("config", "cycles"),
    [
        ("semantickitti/cps_fidnet.yaml", True),  # LaserMix trainer.py: torch's OneCycleLR cycles beta1
        ("nuscenes/lasermix_fidnet.yaml", True),
        ("semantickitti/cps_frnet.yaml", False),  # FRNet: mmengine's OneCycleLR schedules lr only
        ("nuscenes/sup_only_frnet.yaml", False),
        ("synthetic/cps_frnet.yaml", False),
    ],
)
def test_one_cycle_momentum_follows_each_recipe(config: str, cycles: bool) -> None:
    cfg = load_config(CONFIGS / config)
    net = torch.nn.Linear(2, 2)
    (opt,), (sched,) = make_optimisers(cfg.optim, [net], total_steps=100)
    beta1, lr = [], []
    for _ in range(100):
        beta1.append(opt.param_groups[0]["betas"][0])
        lr.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = lr.index(max(lr))
    assert peak == 19  # pct_start 0.2 of 100 steps, in both recipes
    if cycles:
        # beta1 runs against the learning rate: 0.95 at the start, 0.85 at the peak, back towards 0.95.
        assert beta1[0] == pytest.approx(0.95) and beta1[peak] == pytest.approx(0.85)
        assert beta1[-1] > 0.94
    else:
        assert set(beta1) == {cfg.optim.betas[0]} == {0.9}


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(
    device_module._malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)"
)
def test_release_host_memory_gives_freed_heap_blocks_back() -> None:
    # As a point model's steps do. A freed block of 4 MB (glibc maps it, and on its release raises its mmap
    # threshold to 4 MB, so that smaller blocks then come from the heap), then blocks of varying size allocated
    # and freed, a few kept among them.
    rng = np.random.default_rng(0)
    first = torch.ones(2**20)
    del first
    blocks = [torch.ones(int(rng.integers(50_000, 500_000))) for _ in range(320)]
    kept = blocks[7::8]  # the last one too: the freed blocks lie below it, where free() itself trims nothing
    size_mib = sum(t.numel() * 4 for i, t in enumerate(blocks) if i % 8 != 7) / 2**20
    del blocks
    before = rss_mib()
    release_host_memory()
    assert before - rss_mib() > size_mib / 2, (before, rss_mib(), size_mib)
    assert len(kept) == 40
