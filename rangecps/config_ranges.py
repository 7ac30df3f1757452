"""The allowed range of every configuration value, checked after the types (:func:`rangecps.config.check_config`
turns what this finds into one :class:`~rangecps.config.ConfigError` naming every refused key)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config.py imports this module to check what it loads
    from rangecps.config import Config


def range_problems(cfg: Config) -> list[tuple[str, str]]:
    """``(key, what is wrong)`` for every value of ``cfg`` outside its allowed range (types are checked on load)."""
    out: list[tuple[str, str]] = []

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:  # written as "not ok" so that NaN, which fails every comparison, is refused too
            owner, _, name = key.rpartition(".")
            value = getattr(_section(cfg, owner), name)
            out.append((key, f"{value!r} is not allowed; {allowed}"))

    d, a, lo, se, o, t, e = cfg.data, cfg.data.augment, cfg.loss, cfg.semi, cfg.optim, cfg.train, cfg.eval
    need(d.batch_size >= 1, "data.batch_size", "must be >= 1")
    need(d.unlabeled_batch_size >= 1, "data.unlabeled_batch_size", "must be >= 1")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    for key in ("height", "width"):
        v = getattr(d, key)
        need(v is None or v >= 1, f"data.{key}", "must be >= 1, or null for the dataset's native size")
    need(a.min_distance >= 0, "data.augment.min_distance", "must be >= 0 (metres)")
    need(0 <= a.dropout < 1, "data.augment.dropout", "must lie in [0, 1)")
    low, high = a.scale
    need(0 < low <= high, "data.augment.scale", "needs 0 < low <= high")
    if a.scale_mode != "uniform":  # these draw U(1, high)
        need(high >= 1, "data.augment.scale", f"needs high >= 1 with scale_mode {a.scale_mode}")
    need(a.translate >= 0, "data.augment.translate", "must be >= 0 (metres)")
    need(a.point_noise >= 0, "data.augment.point_noise", "must be >= 0 (metres)")
    for key in ("frustum_mix", "instance_copy"):
        need(0 <= getattr(a, key) <= 1, f"data.augment.{key}", "a probability must lie in [0, 1]")
    areas, classes, fov = a.frustum_mix_areas, a.instance_classes, a.frustum_fov
    need(bool(areas) and min(areas) >= 1, "data.augment.frustum_mix_areas", "needs one or more numbers >= 1")
    need(
        all(c >= 1 for c in classes) and len(set(classes)) == len(classes),
        "data.augment.instance_classes",
        "needs distinct train ids >= 1 (0 is ignore), or [] for the release's list",
    )
    need(
        fov is None or (-90 <= fov[1] <= 0 <= fov[0] <= 90 and fov[1] < fov[0]),
        "data.augment.frustum_fov",
        "needs [fov_up, fov_down] (deg) with -90 <= fov_down <= 0 <= fov_up <= 90 and fov_down < fov_up, or null",
    )
    need(cfg.model.width > 0, "model.width", "must be > 0")
    for key in ("ce", "dice", "lovasz", "boundary", "aux", "cps"):
        need(getattr(lo, key) >= 0, f"loss.{key}", "a loss weight must be >= 0")
    need(0 <= lo.cps_threshold <= 1, "loss.cps_threshold", "a confidence threshold must lie in [0, 1]")
    need(0 <= se.ema_momentum <= 1, "semi.ema_momentum", "must lie in [0, 1]")
    need(se.consistency >= 0, "semi.consistency", "a loss weight must be >= 0")
    need(se.consistency_rampup >= 0, "semi.consistency_rampup", "must be >= 0 (steps)")
    need(0 <= se.pseudo_threshold <= 1, "semi.pseudo_threshold", "a confidence threshold must lie in [0, 1]")
    need(se.mix >= 0, "semi.mix", "a loss weight must be >= 0")
    need(bool(se.mix_bands) and min(se.mix_bands) >= 1, "semi.mix_bands", "needs one or more numbers >= 1")
    need(se.mix_pitch is None or se.mix_pitch[0] < se.mix_pitch[1], "semi.mix_pitch", "needs low < high")
    need(o.lr > 0, "optim.lr", "must be > 0")
    need(all(0 <= b < 1 for b in o.betas), "optim.betas", "each must lie in [0, 1)")
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(o.eps > 0, "optim.eps", "must be > 0")
    need(0 < o.pct_start < 1, "optim.pct_start", "must lie in (0, 1)")
    need(o.div_factor > 0, "optim.div_factor", "must be > 0")
    need(o.final_div_factor > 0, "optim.final_div_factor", "must be > 0")
    need(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables clipping)")
    need(t.epochs >= 1, "train.epochs", "must be >= 1")
    need(all(v >= 1 for v in t.epochs_by_labels.values()), "train.epochs_by_labels", "epochs must be >= 1")
    need(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1, or null for the full run")
    need(t.steps is None or t.steps >= 1, "train.steps", "must be >= 1, or null for epochs x steps per epoch")
    need(t.accumulate >= 1, "train.accumulate", "must be >= 1 (micro-batches per optimiser step)")
    for key in ("val_every", "log_every", "ckpt_every"):
        need(getattr(t, key) >= 1, f"train.{key}", "must be >= 1 (steps)")
    need(e.knn_search >= 1 and e.knn_search % 2 == 1, "eval.knn_search", "must be an odd number >= 1")
    need(1 <= e.knn_k <= e.knn_search**2, "eval.knn_k", "must lie in 1..knn_search^2")
    need(e.knn_sigma > 0, "eval.knn_sigma", "must be > 0")
    need(e.knn_cutoff == e.knn_cutoff, "eval.knn_cutoff", "must be a number (<= 0 disables it)")
    need(e.tta >= 0, "eval.tta", "must be >= 0 (views; 0 turns test-time augmentation off)")
    need(e.tta_seed >= 0, "eval.tta_seed", "must be >= 0")
    return out


def _section(cfg: Config, dotted: str) -> Any:
    """The sub-config at ``dotted`` (``"data.augment"``), ``cfg`` itself for ``""``."""
    obj: Any = cfg
    for part in dotted.split(".") if dotted else ():
        obj = getattr(obj, part)
    return obj
