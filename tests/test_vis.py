"""rangecps-vis: real off-screen Open3D renders, range-image strips, run plots, and clear errors for bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from rangecps.data.index import KITTI_GEOMETRY, NUSCENES_GEOMETRY
from rangecps.io import read_kitti_labels, read_lidarseg, write_kitti_labels, write_lidarseg
from rangecps.labels import load_label_map
from rangecps.projection import pixel_labels, project_rings, project_spherical
from rangecps.vis import (
    RenderSettings,
    Stepper,
    build_viewer,
    load_scan,
    open_dataset,
    plot_run,
    range_strip,
    read_confusion,
    vis_main,
)
from rangecps.vis.images import ERROR_COLORS, STRIP_BAND_HEIGHT, STRIP_GAP

KITTI_LM = load_label_map("semantickitti")
NUSC_LM = load_label_map("nuscenes")
ROAD = tuple(int(c) for c in KITTI_LM.colors[KITTI_LM.names.index("road")])
DRIVEABLE = tuple(int(c) for c in NUSC_LM.colors[NUSC_LM.names.index("driveable_surface")])


def needs_open3d() -> None:
    """Skip (with the reason) only when Open3D is not installed; an installed Open3D that cannot render fails."""
    pytest.importorskip("open3d", reason="the 3D views need the vis extra: pip install 'rangecps[vis]'")


def read_png(path: Path) -> np.ndarray:
    from PIL import Image  # Pillow comes with matplotlib (the vis extra)

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def color_pixels(image: np.ndarray, rgb: tuple[int, ...], tol: int = 2) -> int:
    return int((np.abs(image.astype(np.int16) - np.array(rgb)).max(axis=-1) <= tol).sum())


def kitti_files(root: Path, frame: int = 0) -> tuple[Path, Path]:
    seq = root / "sequences" / "08"
    return seq / "velodyne" / f"{frame:06d}.bin", seq / "labels" / f"{frame:06d}.label"


def nuscenes_files(root: Path) -> tuple[Path, Path]:
    """The first keyframe's point file and its lidarseg file, matched through the written tables."""
    sample_data = json.loads((root / "v1.0-mini" / "sample_data.json").read_text())
    lidarseg = json.loads((root / "v1.0-mini" / "lidarseg.json").read_text())
    points = {s["token"]: s["filename"] for s in sample_data}
    first = lidarseg[0]
    return root / points[first["sample_data_token"]], root / first["filename"]


def noisy_predictions(train: np.ndarray, seed: int = 0, share: float = 0.2) -> np.ndarray:
    """Ground truth with ignore replaced by class 1 and ``share`` of the points moved to a random class 1..16."""
    rng = np.random.default_rng(seed)
    pred = np.where(train == 0, 1, train)
    flip = rng.random(len(pred)) < share
    pred[flip] = rng.integers(1, 17, int(flip.sum()))
    return pred


# ------------------------------------------------------------------------------------------------ 3D renders


def test_scan_render_kitti_labels(synthetic_kitti: Path, tmp_path: Path) -> None:
    needs_open3d()
    scan, labels = kitti_files(synthetic_kitti)
    out = tmp_path / "labels.png"
    args = [
        "scan",
        str(scan),
        "--labels",
        str(labels),
        "--save",
        str(out),
        "--width",
        "480",
        "--height",
        "320",
    ]
    assert vis_main(args) == 0
    image = read_png(out)
    assert image.shape == (320, 480, 3)
    assert color_pixels(image, ROAD) > 200  # SemanticKITTI's official road colour
    assert (image.max(axis=-1) > 0).mean() > 0.05  # black background, points cover a good share


def test_scan_render_nuscenes_errors_and_range(synthetic_nuscenes: Path, tmp_path: Path) -> None:
    needs_open3d()
    points, lidarseg = nuscenes_files(synthetic_nuscenes)
    gt = NUSC_LM.to_train(read_lidarseg(lidarseg))
    pred_file = tmp_path / "pred_lidarseg.bin"
    write_lidarseg(pred_file, noisy_predictions(gt))  # challenge classes 1..16, as submissions hold them
    size = ["--width", "400", "--height", "300"]
    base = ["scan", str(points), "--labels", str(lidarseg), "--pred", str(pred_file), *size]

    assert vis_main([*base, "--save", str(tmp_path / "labels.png")]) == 0
    assert color_pixels(read_png(tmp_path / "labels.png"), DRIVEABLE) > 100

    assert vis_main([*base, "--color", "errors", "--save", str(tmp_path / "errors.png")]) == 0
    errors = read_png(tmp_path / "errors.png")
    drawn = errors.max(axis=-1) > 0
    assert drawn.mean() > 0.03
    assert color_pixels(errors, ERROR_COLORS["correct"]) > 100
    assert color_pixels(errors, ERROR_COLORS["wrong"]) > 20
    known = sum(color_pixels(errors, c) for c in ERROR_COLORS.values())
    assert known > 0.98 * drawn.sum()  # nothing but the three error colours
    assert color_pixels(errors, DRIVEABLE) == 0

    out = tmp_path / "range_bev.png"
    assert (
        vis_main(["scan", str(points), "--color", "range", "--view", "bev", "--save", str(out), *size]) == 0
    )
    image = read_png(out)
    colours = np.unique(image[image.max(axis=-1) > 0], axis=0)
    assert len(colours) > 30  # a colour ramp, not one flat colour


def test_headless_scan_renders_to_default_file(
    synthetic_kitti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_open3d()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.chdir(tmp_path)
    scan, _ = kitti_files(synthetic_kitti, 1)
    assert vis_main(["scan", str(scan), "--color", "intensity", "--width", "200", "--height", "100"]) == 0
    assert read_png(tmp_path / "000001_intensity.png").shape == (100, 200, 3)


def test_window_keys_step_and_recolour(synthetic_kitti: Path, tmp_path: Path) -> None:
    """The key callbacks of the interactive viewer, driven on an off-screen window and read back from it."""
    needs_open3d()
    scans = []
    for frame in range(3):
        points, labels = kitti_files(synthetic_kitti, frame)
        pred = None
        if frame < 2:  # the last scan has no prediction file
            pred = tmp_path / f"{frame:06d}.label"
            gt = KITTI_LM.to_train(read_kitti_labels(labels)[0])
            write_kitti_labels(pred, KITTI_LM.to_raw(noisy_predictions(gt, frame)))
        scans.append(load_scan(points, labels, pred))
    stepper = Stepper(3, lambda i: scans[i], "labels")
    settings = RenderSettings(width=320, height=240)
    vis, keys = build_viewer(stepper, settings, visible=False)

    def screen() -> np.ndarray:
        vis.poll_events()
        vis.update_renderer()
        return np.round(np.asarray(vis.capture_screen_float_buffer(True)) * 255).astype(np.uint8)

    try:
        assert screen().shape == (240, 320, 3)
        assert color_pixels(screen(), ROAD) > 50
        assert keys["E"](vis) and stepper.mode == "errors"
        errors = screen()
        assert color_pixels(errors, ERROR_COLORS["wrong"]) > 20 and color_pixels(errors, ROAD) == 0
        assert keys["G"](vis) and color_pixels(screen(), ROAD) > 50
        assert not keys["P"](vis) and stepper.index == 0  # already at the first scan
        assert keys["R"](vis) and keys["N"](vis) and stepper.index == 1 and stepper.mode == "pred"
        assert keys["N"](vis) and stepper.index == 2
        assert stepper.mode == "labels"  # scan 2 has no predictions: back to ground truth
        assert not keys["R"](vis) and stepper.mode == "labels"
        assert not keys["N"](vis) and stepper.index == 2
        assert keys["D"](vis) and stepper.mode == "range"
        assert color_pixels(screen(), ROAD) == 0
    finally:
        vis.destroy_window()


def test_dataset_with_predictions_written_by_eval(synthetic_kitti: Path, tmp_path: Path) -> None:
    """rangecps-eval's prediction files and metrics.json are what rangecps-vis dataset / run read."""
    needs_open3d()
    from rangecps.checkpoint import save_checkpoint
    from rangecps.config import load_config, to_dict
    from rangecps.data.build import build_data
    from rangecps.data.sample import CHANNELS
    from rangecps.eval.evaluate import evaluate
    from rangecps.models import build_model

    run = tmp_path / "run"
    overrides = [f"data.root={synthetic_kitti}", "data.dataset=synthetic_kitti", "train.method=sup_only"]
    overrides += ["data.height=32", "data.width=64", "model.width=0.125", "data.num_workers=0"]
    cfg = load_config(None, overrides)
    data = build_data(cfg, progress=False)
    net = build_model(cfg.model.name, len(CHANNELS), data.num_classes, cfg.model.width, seed=0)
    derived = {"num_classes": data.num_classes, "in_channels": len(CHANNELS), "revision": "test"}
    state = {"nets": [net.state_dict()], "config": to_dict(cfg), "derived": derived, "step": 3, "best": 0.0}
    save_checkpoint(run / "best.pt", {**state, "revision": "test", "label_names": list(data.label_map.names)})
    evaluate(run, "val", knn=False, write_predictions=True, progress=False, num_workers=0, device="cpu")

    records, load = open_dataset(synthetic_kitti, "val", run=run)
    assert [r.scan_id for r in records] == ["08/000000", "08/000001", "08/000002"]
    scan = load(1)
    written = run / "eval_val_a" / "sequences" / "08" / "predictions" / "000001.label"
    assert np.array_equal(scan.pred, KITTI_LM.to_train(read_kitti_labels(written)[0]))
    assert scan.labels is not None and scan.pred.min() >= 1

    out = tmp_path / "errors.png"
    size = ["--width", "240", "--height", "160"]
    args = ["dataset", str(synthetic_kitti), "--run", str(run), "--color", "errors", "--start", "1"]
    assert vis_main([*args, "--save", str(out), *size]) == 0
    assert read_png(out).shape == (160, 240, 3)

    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 2.0, "train/lr": 0.01}) + "\n")
    assert vis_main(["run", str(run)]) == 0
    matrix, names, title = read_confusion(run / "eval_val_a" / "metrics.json")
    assert names == KITTI_LM.names and matrix.shape == (20, 20) and matrix.sum() > 0
    assert "no kNN" in title
    assert read_png(run / "plots" / "confusion.png").shape[0] > 400


# ---------------------------------------------------------------------------------------------- range strips


def test_range_strip_kitti_layout_and_colours(synthetic_kitti: Path, tmp_path: Path) -> None:
    points_file, labels_file = kitti_files(synthetic_kitti)
    scan = load_scan(points_file, labels_file)
    strip = range_strip(scan.points, None, KITTI_GEOMETRY, scan.labels, label_map=KITTI_LM)
    band = 64 * 4
    assert STRIP_BAND_HEIGHT // 64 == 4
    assert strip.shape == (7 * band + 6 * STRIP_GAP, 2048, 3) and strip.dtype == np.uint8

    proj = project_spherical(scan.points, 64, 2048, 3.0, -25.0)
    bands = [strip[i * (band + STRIP_GAP) : i * (band + STRIP_GAP) + band] for i in range(7)]
    for b in bands:
        assert np.array_equal(b[0::4], b[3::4])  # each image row repeated 4 times
    assert np.array_equal(bands[5][::4].max(axis=-1) == 255, proj.mask)  # mask band: white where filled
    assert np.array_equal(bands[0][::4].max(axis=-1) > 0, proj.mask)  # viridis never reaches black
    expected = KITTI_LM.colors[pixel_labels(scan.labels, proj)]
    expected[~proj.mask] = 0
    assert np.array_equal(bands[6][::4], expected)
    assert color_pixels(bands[6], ROAD, tol=0) > 1000

    out = tmp_path / "strip.png"
    assert vis_main(["scan", str(points_file), "--labels", str(labels_file), "--strip", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (2048, 7 * band + 6 * STRIP_GAP)
    assert np.array_equal(read_png(out), strip)  # the PNG holds exactly the strip


def test_range_strip_nuscenes_rings_with_errors(synthetic_nuscenes: Path) -> None:
    points_file, lidarseg = nuscenes_files(synthetic_nuscenes)
    scan = load_scan(points_file, lidarseg)
    pred = noisy_predictions(scan.labels, share=0.3)
    strip = range_strip(scan.points, scan.ring, NUSCENES_GEOMETRY, scan.labels, pred, NUSC_LM)
    band = 32 * 8
    assert strip.shape == (9 * band + 8 * STRIP_GAP, 1920, 3)
    errors = strip[8 * (band + STRIP_GAP) :: 8]
    proj = project_rings(scan.points, scan.ring, 32, 1920)
    gt_px, pred_px = pixel_labels(scan.labels, proj), pixel_labels(pred, proj)
    wrong = proj.mask & (gt_px != pred_px) & (gt_px != 0)
    assert wrong.sum() > 100
    assert np.array_equal(np.all(errors == ERROR_COLORS["wrong"], axis=-1), wrong)
    assert color_pixels(strip[6 * (band + STRIP_GAP) :][:band], DRIVEABLE, tol=0) > 1000
    with pytest.raises(ValueError, match="ring"):
        range_strip(scan.points, None, NUSCENES_GEOMETRY)
    with pytest.raises(ValueError, match="label_map"):
        range_strip(scan.points, scan.ring, NUSCENES_GEOMETRY, scan.labels)


# ------------------------------------------------------------------------------------------------- run plots


def write_run(run: Path) -> None:
    lines = []
    for step in range(10, 110, 10):
        lines.append({"step": step, "train/loss": 3.0 / step**0.3, "train/sup": 2.0 / step**0.3})
        lines[-1] |= {"train/cps": 0.1 + step / 1000, "train/lr": 0.01 * (1 - step / 120), "train/epoch": 0}
        if step % 50 == 0:
            lines.append({"step": step, "val/miou_a": step / 200, "val/miou_b": step / 220})
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_run_plots_curves_and_confusion(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="run plots need the vis extra: pip install 'rangecps[vis]'")
    run = tmp_path / "run"
    write_run(run)
    written, notes = plot_run(run)
    assert written == [run / "plots" / "curves.png"] and "curves only" in notes[0]
    curves = read_png(written[0])
    assert curves.shape == (420, 1650, 3)  # three panels of 5.5 x 4.2 inches at 100 dpi
    assert color_pixels(curves, (31, 119, 180), tol=8) > 200  # matplotlib's first line colour: lines drawn

    names = ["unlabeled", "car", "road", "building"]
    matrix = [[0, 0, 0, 0], [0, 90, 10, 0], [0, 0, 100, 0], [0, 5, 0, 95]]
    level = {"description": "point-level mIoU (kNN)", "confusion_matrix": matrix, "miou": 0.9}
    metrics = {"class_names": names, "headline": "point_knn", "split": "val", "net": "ensemble"}
    (run / "eval_val_ensemble").mkdir()
    (run / "eval_val_ensemble" / "metrics.json").write_text(
        json.dumps({**metrics, "levels": {"point_knn": level}})
    )
    out = tmp_path / "figures"
    assert vis_main(["run", str(run), "--out", str(out)]) == 0
    confusion = read_png(out / "confusion.png")
    assert color_pixels(confusion, (8, 48, 107), tol=6) > 200  # "Blues" at 1.0: the road diagonal cell
    assert (out / "curves.png").is_file()


# ------------------------------------------------------------------------------------------------ bad inputs


def test_bad_inputs_name_the_file(
    synthetic_kitti: Path, synthetic_nuscenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(args: list[str]) -> str:
        assert vis_main(args) == 2
        return capsys.readouterr().err

    points, labels = kitti_files(synthetic_kitti)
    missing = tmp_path / "nope.bin"
    assert str(missing) in error(["scan", str(missing), "--save", str(tmp_path / "x.png")])
    assert "cannot tell the format" in error(["scan", str(tmp_path / "scan.txt")])

    short = tmp_path / "short.label"
    write_kitti_labels(short, read_kitti_labels(labels)[0][:-5])
    message = error(["scan", str(points), "--labels", str(short), "--save", str(tmp_path / "x.png")])
    assert str(short) in message and "labels but the scan has" in message

    assert "needs predictions" in error(["scan", str(points), "--color", "pred", "--save", "x.png"])

    nusc_points, lidarseg = nuscenes_files(
        synthetic_nuscenes
    )  # fine ids (up to 31) read as challenge classes
    message = error(["scan", str(nusc_points), "--pred", str(lidarseg), "--save", str(tmp_path / "x.png")])
    assert str(lidarseg) in message and "--pred-ids raw" in message

    run = tmp_path / "run"
    assert str(run / "metrics.jsonl") in error(["run", str(run)])
    write_run(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{broken\n" + json.dumps({"step": 200, "train/loss": 0.1}) + "\n")
    assert f"{run / 'metrics.jsonl'}: line 13" in error(["run", str(run)])
    assert "--write-predictions" in error(["dataset", str(synthetic_kitti), "--run", str(run)])
