"""The semi-supervised methods (Mean Teacher, LaserMix, CPS + LaserMix): the EMA teacher, the pseudo-label masks
and mixed targets, exact resume of teacher runs, and that a few steps of every method lower its loss (the bands
themselves: test_lasermix_bands.py)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lasermix_reference import expected_bands
from tiny_runs import tiny
from torch import nn

from rangecps.checkpoint import load_checkpoint
from rangecps.config import ConfigError, LossConfig, SemiConfig, from_dict, load_config, to_dict
from rangecps.cps import cps_step
from rangecps.data.lasermix import LaserMix
from rangecps.methods import METHODS
from rangecps.models import build_model
from rangecps.supervision import pseudo_labels, supervised_loss
from rangecps.teacher import ema_update, make_teacher, rampup
from rangecps.train import train

# Tiny tensors: one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------- independent references


def np_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


class PixelNet(nn.Module):
    """A 1x1-conv segmenter without batch norm (each pixel's logits depend on that pixel only, so a net's output on
    a sub-batch equals its output on the whole batch), called like the real models: ``net(x)`` gives the logits,
    ``net(x, aux=True)`` a list of them. ``bias`` adds ``bias_value`` to the logit of class ``bias``."""

    def __init__(
        self, seed: int, classes: int = 5, bias: int | None = None, bias_value: float = 10.0
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(6, classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(classes, 6, 1, 1, generator=g) * 0.5)
            self.conv.bias.copy_(torch.randn(classes, generator=g) * 0.1)
            if bias is not None:
                self.conv.bias[bias] += bias_value

    def forward(self, x: torch.Tensor, aux: bool = False) -> torch.Tensor | list[torch.Tensor]:
        out = self.conv(x)
        return [out] if aux else out


def batches(
    seed: int, b_l: int = 2, b_u: int = 2, h: int = 8, w: int = 16, classes: int = 5
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random labeled and unlabeled batches; labels follow the input (class 1 + argmax of the first K - 1
    channels), about 10% of the pixels unlabeled (0) and 15% not projected."""
    g = torch.Generator().manual_seed(seed)
    x_l = torch.randn(b_l, 6, h, w, generator=g)
    label = x_l[:, : classes - 1].argmax(1) + 1
    label[torch.rand(b_l, h, w, generator=g) < 0.1] = 0
    labeled = {"input": x_l, "label": label, "mask": torch.rand(b_l, h, w, generator=g) > 0.15}
    unlabeled = {
        "input": torch.randn(b_u, 6, h, w, generator=g),
        "mask": torch.rand(b_u, h, w, generator=g) > 0.15,
    }
    return labeled, unlabeled


# ------------------------------------------------------------------------------------------ 1. the EMA teacher


def test_ema_update_is_the_parameter_lerp_and_leaves_buffers() -> None:
    """ema_update sets every teacher parameter to (1 - m) teacher + m student and touches no buffer."""
    student = build_model("fidnet", 6, 4, 0.125, seed=0)
    teacher = make_teacher(student)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        for p in teacher.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    student.train()
    student(torch.randn(2, 6, 8, 16, generator=g))  # the student's batch-norm statistics move away
    old_t = [p.detach().double().clone() for p in teacher.parameters()]
    new_s = [p.detach().double().clone() for p in student.parameters()]
    old_buffers = {k: v.clone() for k, v in teacher.named_buffers()}
    assert any(not torch.equal(v, dict(student.named_buffers())[k]) for k, v in old_buffers.items())
    m = 0.3
    ema_update(teacher, student, m)
    for p, t, s in zip(teacher.parameters(), old_t, new_s, strict=True):
        torch.testing.assert_close(p.double(), (1 - m) * t + m * s, rtol=1e-6, atol=1e-6)
    for k, v in teacher.named_buffers():
        assert torch.equal(v, old_buffers[k]), k
    # the student is not changed
    for p, s in zip(student.parameters(), new_s, strict=True):
        assert torch.equal(p.double(), s)


def test_make_teacher_is_a_frozen_copy() -> None:
    """make_teacher: the same parameters and buffers, a separate copy, no parameter requiring a gradient."""
    student = build_model("fidnet", 6, 4, 0.125, seed=3)
    teacher = make_teacher(student)
    s_state, t_state = student.state_dict(), teacher.state_dict()
    assert s_state.keys() == t_state.keys()
    for k in s_state:
        assert torch.equal(s_state[k], t_state[k]), k
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
    assert not torch.equal(next(student.parameters()), next(teacher.parameters()))


@pytest.mark.parametrize("method", ["mean_teacher", "lasermix"])
def test_teacher_gets_no_gradient(method: str) -> None:
    """After backward of a teacher method's loss the teacher has no gradients and every student parameter has."""
    student = build_model("fidnet", 6, 4, 0.125, seed=0)
    teacher = make_teacher(student)
    labeled, unlabeled = batches(0, classes=4)
    out = cps_step(
        [student, teacher],
        labeled,
        unlabeled,
        method,
        LossConfig(),
        generator=torch.Generator().manual_seed(0),
    )
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert any(p.grad.abs().sum() > 0 for p in student.parameters())


def test_train_loop_keeps_the_teacher_out_of_the_optimiser(synthetic_kitti: Path, tmp_path: Path) -> None:
    """A Mean Teacher run has one optimiser holding exactly the student's parameters, and after one step its
    teacher is (1 - m) initial weights + m student (EMA after the optimiser step)."""
    cfg = tiny(synthetic_kitti, "train.method=mean_teacher", "train.epochs=2", "train.max_steps=1")
    train(cfg, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["net_names"] == ["student", "teacher"] and len(state["nets"]) == 2
    assert len(state["optimizers"]) == 1
    student_sd, teacher_sd = state["nets"]
    net = build_model("fidnet", 6, state["derived"]["num_classes"], 0.125, seed=cfg.train.seed * 1000)
    n_params = len(list(net.parameters()))
    assert sum(len(g["params"]) for g in state["optimizers"][0]["param_groups"]) == n_params
    assert len(state["optimizers"][0]["state"]) == n_params
    m = cfg.semi.ema_momentum
    moved = 0
    for name, p0 in net.named_parameters():
        expected = (1 - m) * p0.detach().double() + m * student_sd[name].double()
        torch.testing.assert_close(teacher_sd[name].double(), expected, rtol=1e-6, atol=1e-6, msg=name)
        moved += int(not torch.equal(student_sd[name], p0.detach()))
    assert moved > 0  # the step changed the student, so the check above is not trivial


# ------------------------------------------------------------------------------------------ 4. pseudo-labels


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.6, 0.9])
def test_pseudo_labels_threshold_and_no_class_zero(threshold: float) -> None:
    """pseudo_labels: argmax over classes 1..K-1 (+1) where valid and that class's softmax (over all K classes)
    reaches the threshold, else 0; class 0 is never given, even where it has the largest logit."""
    g = torch.Generator().manual_seed(int(threshold * 10))
    b, k, h, w = 3, 5, 16, 24
    logits = torch.randn(b, k, h, w, generator=g) * 3
    logits[:, 0][torch.rand(b, h, w, generator=g) < 0.2] += 20.0  # class 0 dominates here
    valid = torch.rand(b, h, w, generator=g) > 0.2
    got = pseudo_labels(logits, valid, threshold).numpy()
    probs = np_softmax(logits.double().numpy(), 1)
    conf, label = probs[:, 1:].max(1), probs[:, 1:].argmax(1) + 1
    expected = np.where(valid.numpy() & (conf >= threshold), label, 0)
    # float32 vs float64 rounding could flip a confidence lying at the threshold (none can lie below 0)
    clear = np.abs(conf - threshold) > 1e-5 if threshold > 0 else np.ones_like(valid.numpy())
    assert clear.mean() > 0.99
    assert np.array_equal(got[clear], expected[clear])
    assert got.dtype == np.int64 and got.min() >= 0 and got.max() <= k - 1
    assert np.all(got[~valid.numpy()] == 0)
    if threshold == 0.0:
        assert np.all(got[valid.numpy()] > 0)  # class 0 never, not even where its logit is largest
    assert 0 < (got > 0).sum() < valid.sum() or threshold == 0.0


def test_lasermix_targets_ignore_unconfident_unlabeled_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mixed scans of lasermix learn ground truth in the labeled bands and the teacher's pseudo-labels of the
    unmixed unlabeled scans in the others: 0 exactly where the teacher is unsure or the pixel is not projected.
    The target the step uses is read from its call of supervised_loss and rebuilt here row by row."""
    import rangecps.teacher as teacher_module

    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real = teacher_module.supervised_loss

    def recording(outputs, target, valid, cfg, weight):
        calls.append((outputs[0].detach(), target, valid))
        return real(outputs, target, valid, cfg, weight)

    monkeypatch.setattr(teacher_module, "supervised_loss", recording)
    classes, threshold = 5, 0.6
    student, teacher = PixelNet(0, classes), PixelNet(1, classes)
    labeled, unlabeled = batches(3, b_l=2, b_u=3, h=16, w=12, classes=classes)
    mixer = LaserMix.even_rows(16, (3, 4, 5))
    semi = SemiConfig(pseudo_threshold=threshold)
    cps_step(
        [student, teacher],
        labeled,
        unlabeled,
        "lasermix",
        LossConfig(),
        semi=semi,
        mixer=mixer,
        generator=torch.Generator().manual_seed(5),
    )
    assert len(calls) == 2  # the labeled batch, then the mixed scans
    logits_mix, target, valid = calls[1]
    _, counts = mixer.draw(3, torch.Generator().manual_seed(5))
    with torch.no_grad():
        probs = np_softmax(teacher(unlabeled["input"]).double().numpy(), 1)
    conf, label = probs[:, 1:].max(1), probs[:, 1:].argmax(1) + 1
    v_u = unlabeled["mask"].numpy()
    assert np.abs(conf - threshold).min() > 1e-5
    pseudo = np.where(v_u & (conf >= threshold), label, 0)
    assert 0 < (pseudo > 0).sum() < v_u.sum()
    y_l, v_l, x_l, x_u = (
        labeled["label"].numpy(),
        labeled["mask"].numpy(),
        labeled["input"],
        unlabeled["input"],
    )
    pitch = np.asarray(mixer.row_pitch)
    for p in range(3):
        i_l, i_u = p % 2, p
        from_l = expected_bands(pitch, 0.0, 1.0, int(counts[p])) % 2 == 0
        for j, take_l in enumerate((from_l, ~from_l)):
            s = 2 * p + j
            want = np.where(take_l[:, None], y_l[i_l], pseudo[i_u])
            want_valid = np.where(take_l[:, None], v_l[i_l], v_u[i_u])
            assert np.array_equal(target[s].numpy(), want), s
            assert np.array_equal(valid[s].numpy(), want_valid), s
            # 0 in the unlabeled rows exactly where the teacher is unsure or the pixel is empty
            unl = ~take_l
            assert np.array_equal(target[s].numpy()[unl] == 0, ~(v_u[i_u] & (conf[i_u] >= threshold))[unl])
            x_mix = torch.where(torch.from_numpy(take_l)[None, :, None], x_l[i_l], x_u[i_u])
            torch.testing.assert_close(logits_mix[s], student(x_mix[None])[0].detach())


# ----------------------------------------------------------------------------------------------- 5. resume


@pytest.mark.parametrize("method", ["mean_teacher", "lasermix"])
def test_teacher_run_resume_is_exact(synthetic_kitti: Path, tmp_path: Path, method: str) -> None:
    """A teacher run stopped at half and resumed ends with the student and the teacher (parameters and batch-norm
    buffers) bitwise equal to the run made in one go."""
    base = (f"train.method={method}", "train.epochs=2")
    train(tiny(synthetic_kitti, *base, "train.max_steps=4"), tmp_path / "straight", progress=False)
    train(tiny(synthetic_kitti, *base, "train.max_steps=2"), tmp_path / "split", progress=False)
    first = load_checkpoint(tmp_path / "split" / "last.pt")
    assert first["step"] == 2 and len(first["optimizers"]) == 1 and len(first["nets"]) == 2
    train(
        tiny(synthetic_kitti, *base, "train.max_steps=4"), tmp_path / "split", resume="auto", progress=False
    )
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "last.pt")
    assert straight["step"] == split["step"] == 4
    assert len(straight["nets"]) == len(split["nets"]) == 2
    for name, sa, sb in zip(("student", "teacher"), straight["nets"], split["nets"], strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{name}.{k}"
    # the teacher differs from the student (it is an average, not a copy), so comparing both means something
    s, t = straight["nets"]
    assert any(not torch.equal(s[k], t[k]) for k in s if s[k].is_floating_point())


# ---------------------------------------------------------------------------------- 6. every method learns


@pytest.mark.parametrize("method", list(METHODS))
def test_few_steps_lower_each_methods_loss(method: str) -> None:
    """20 AdamW steps on a fixed labeled/unlabeled batch (EMA after each for teacher methods) lower the method's
    loss, recomputed on the same batch with the same LaserMix draw. The teacher follows faster than the release's
    m = 0.01: with the release's consistency weight 250, a teacher that stays at the initial weights makes the
    consistency term grow from 0 faster than 20 steps lower the supervised one on such a small net."""
    spec = METHODS[method]
    classes = 4
    nets = [build_model("fidnet", 6, classes, 0.125, seed=10 + k) for k in range(spec.trained)]
    nets += [make_teacher(nets[0]) for _ in range(len(spec.nets) - spec.trained)]
    for net in nets:
        net.train()
    labeled, unlabeled = batches(11, b_l=2, b_u=2, h=8, w=16, classes=classes)
    unl = None if method == "sup_only" else unlabeled
    cfg, semi = LossConfig(), SemiConfig(pseudo_threshold=0.5, ema_momentum=0.3)
    opts = [torch.optim.AdamW(n.parameters(), lr=3e-3) for n in nets[: spec.trained]]

    def loss() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return cps_step(nets, labeled, unl, method, cfg, generator=g, semi=semi)["loss"]

    with torch.no_grad():
        initial = float(loss())
    for _ in range(20):
        value = loss()
        for o in opts:
            o.zero_grad(set_to_none=True)
        value.backward()
        for o in opts:
            o.step()
        for teacher in nets[spec.trained :]:
            ema_update(teacher, nets[0], semi.ema_momentum)
    with torch.no_grad():
        final = float(loss())
    assert math.isfinite(initial) and math.isfinite(final)
    assert final < 0.8 * initial, (initial, final)


# ----------------------------------------------------------------------------------------------- 7. ramp-up


def test_rampup() -> None:
    """rampup: exp(-5 (1 - s/L)^2) from exp(-5) at 0 to 1 at L, monotone, 1 past L and whenever L is 0."""
    length = 50
    assert rampup(0, length) == pytest.approx(math.exp(-5.0), rel=1e-12)
    assert rampup(length, length) == 1.0
    assert rampup(3 * length, length) == 1.0
    assert rampup(-5, length) == pytest.approx(math.exp(-5.0), rel=1e-12)
    values = [rampup(s, length) for s in range(length + 1)]
    assert all(b > a for a, b in itertools.pairwise(values))
    for s in (1, 17, 33):
        assert rampup(s, length) == pytest.approx(math.exp(-5.0 * (1 - s / length) ** 2), rel=1e-12)
    assert rampup(0, 0) == 1.0 and rampup(123, 0) == 1.0


@pytest.mark.parametrize("recipe", ["rangecps", "released"])
def test_mean_teacher_loss_is_sup_plus_ramped_consistency(recipe: str) -> None:
    """mean_teacher: loss = sup + consistency x ramp x MSE of the softmaxes over the labeled and unlabeled scans
    (under "rangecps" the mean over scans of each scan's MSE over its valid pixels, under "released" the MSE over
    every pixel of the batch), recomputed here in float64."""
    student, teacher = PixelNet(0), PixelNet(1)
    labeled, unlabeled = batches(4, b_l=2, b_u=3)
    cfg, semi = LossConfig(recipe=recipe), SemiConfig(consistency=7.0, consistency_rampup=10)
    out = cps_step([student, teacher], labeled, unlabeled, "mean_teacher", cfg, semi=semi, step=4)
    with torch.no_grad():
        x = torch.cat([labeled["input"], unlabeled["input"]])
        sq = (np_softmax(student(x).double().numpy(), 1) - np_softmax(teacher(x).double().numpy(), 1)) ** 2
    valid = torch.cat([labeled["mask"], unlabeled["mask"]]).numpy()
    if recipe == "rangecps":
        mse = np.mean([sq[i].transpose(1, 2, 0)[valid[i]].mean() for i in range(len(sq))])
    else:
        mse = sq.mean()
    assert float(out["consistency"]) == pytest.approx(mse, rel=1e-5)
    ramp = math.exp(-5.0 * (1 - 4 / 10) ** 2)
    assert float(out["ramp"]) == pytest.approx(ramp, rel=1e-6)
    with torch.no_grad():
        sup = supervised_loss([student(labeled["input"])], labeled["label"], labeled["mask"], cfg, None)[
            "sup"
        ]
    assert float(out["sup_a"]) == pytest.approx(float(sup), rel=1e-6)
    assert float(out["loss"].detach()) == pytest.approx(float(sup) + 7.0 * ramp * mse, rel=1e-5)


# ------------------------------------------------------------------------- 8. CPS + LaserMix: the other net


def test_cps_lasermix_learns_the_other_nets_pseudo_labels() -> None:
    """cps_lasermix: net a's mixed scans learn ground truth in the labeled bands and net b's confident
    pseudo-labels (class 3 here) in the others, and net b's those of net a (class 1)."""
    classes = 5
    net_a, net_b = PixelNet(0, classes, bias=1, bias_value=6.0), PixelNet(1, classes, bias=3, bias_value=6.0)
    threshold = 0.9
    labeled, unlabeled = batches(6, b_l=2, b_u=2, h=16, w=12, classes=classes)
    mixer = LaserMix.even_rows(16, (2, 3, 4, 5, 6))
    cfg = LossConfig()
    out = cps_step(
        [net_a, net_b],
        labeled,
        unlabeled,
        "cps_lasermix",
        cfg,
        semi=SemiConfig(pseudo_threshold=threshold),
        mixer=mixer,
        generator=torch.Generator().manual_seed(9),
    )
    _, counts = mixer.draw(2, torch.Generator().manual_seed(9))
    pitch = np.asarray(mixer.row_pitch)
    from_l = torch.from_numpy(
        np.stack([expected_bands(pitch, 0.0, 1.0, int(n)) % 2 == 0 for n in counts])
    )  # (pairs, H)
    take = torch.stack([from_l, ~from_l], 1).flatten(0, 1)[
        :, :, None
    ]  # (2P, H, 1): row from the labeled scan

    def expand(t: torch.Tensor) -> torch.Tensor:  # (P, ...) -> (2P, ...), each pair twice
        return t.repeat_interleave(2, 0)

    x_l, x_u = expand(labeled["input"]), expand(unlabeled["input"])
    x_mix = torch.where(take[:, None], x_l, x_u)
    v_u = expand(unlabeled["mask"])
    v_mix = torch.where(take, expand(labeled["mask"]), v_u)
    y_l = expand(labeled["label"])

    def pseudo(net: nn.Module, c: int) -> torch.Tensor:
        """The net's pseudo-labels of the unmixed unlabeled scans, in numpy: mostly its bias class c."""
        with torch.no_grad():
            probs = np_softmax(net(unlabeled["input"]).double().numpy(), 1)
        conf, label = probs[:, 1:].max(1), probs[:, 1:].argmax(1) + 1
        assert np.abs(conf - threshold).min() > 1e-5
        keep = unlabeled["mask"].numpy() & (conf >= threshold)
        assert np.all(label[keep] == c) and keep.sum() > 0.7 * unlabeled["mask"].numpy().sum()
        assert not keep[
            unlabeled["mask"].numpy()
        ].all()  # some valid pixels are unsure: the threshold matters
        return expand(torch.from_numpy(np.where(keep, label, 0)))

    def mix_loss(net: nn.Module, other: torch.Tensor) -> float:
        target = torch.where(take, y_l, other)
        with torch.no_grad():
            return float(supervised_loss(net(x_mix, aux=True), target, v_mix, cfg, None)["sup"])

    pseudo_a, pseudo_b = pseudo(net_a, 1), pseudo(net_b, 3)
    assert float(out["mix_a"]) == pytest.approx(mix_loss(net_a, pseudo_b), rel=1e-5)
    assert float(out["mix_b"]) == pytest.approx(mix_loss(net_b, pseudo_a), rel=1e-5)
    # the own-label targets would give clearly different values: the check above can tell them apart
    assert abs(mix_loss(net_a, pseudo_a) - float(out["mix_a"])) > 0.1
    assert abs(mix_loss(net_b, pseudo_b) - float(out["mix_b"])) > 0.1


# ------------------------------------------------------------------ 9. CPS forward passes: joint or separate


def cps_losses_and_grads(
    method: str, forwards: str, train_mode: bool
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[int]]:
    """One cps / cps_lasermix step of two fresh FIDNets (batch norm) with ``semi.cps_forwards = forwards``: its
    losses, every parameter's gradient, and the batch size of every forward call (a forward hook counts them)."""
    nets = [build_model("fidnet", 6, 4, 0.125, seed=20 + k) for k in range(2)]
    calls: list[int] = []
    for net in nets:
        net.train(train_mode)
        net.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    labeled, unlabeled = batches(12, b_l=2, b_u=3, h=16, w=16, classes=4)
    semi = SemiConfig(pseudo_threshold=0.5, cps_forwards=forwards)
    g = torch.Generator().manual_seed(4)
    out = cps_step(nets, labeled, unlabeled, method, LossConfig(), generator=g, semi=semi)
    out["loss"].backward()
    return out, [p.grad for net in nets for p in net.parameters()], calls


@pytest.mark.parametrize("method", ["cps", "cps_lasermix"])
def test_cps_separate_forwards_equal_joint_without_batch_norm(method: str) -> None:
    """In eval mode (batch norm on its running statistics, so no scan's output depends on the others) one
    forward per batch gives the losses and gradients of one forward over the batches concatenated."""
    joint, grads_joint, calls_joint = cps_losses_and_grads(method, "joint", train_mode=False)
    separate, grads_separate, calls_separate = cps_losses_and_grads(method, "separate", train_mode=False)
    assert len(calls_separate) > len(calls_joint)  # the two runs did differ in their forward passes
    assert joint.keys() == separate.keys()
    for k in joint:
        torch.testing.assert_close(separate[k], joint[k], rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(grads_joint, grads_separate, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method", ["cps", "cps_lasermix"])
def test_cps_separate_forwards_normalise_batches_apart(method: str) -> None:
    """In train mode "separate" calls each net once on the labeled, once on the unlabeled and (cps_lasermix)
    once on the mixed scans, where "joint" calls it once on all of them; batch norm then gives other losses."""
    joint, _, calls_joint = cps_losses_and_grads(method, "joint", train_mode=True)
    separate, _, calls_separate = cps_losses_and_grads(method, "separate", train_mode=True)
    # 2 labeled, 3 unlabeled and (cps_lasermix) 6 mixed scans: 3 pairs, two mixed scans each
    parts = [2, 3, 6] if method == "cps_lasermix" else [2, 3]
    assert calls_joint == [sum(parts)] * 2
    assert calls_separate == parts * 2
    assert abs(float(separate["loss"].detach()) - float(joint["loss"].detach())) > 1e-3
    assert abs(float(separate["sup_a"]) - float(joint["sup_a"])) > 1e-4


def test_cps_forwards_config(tmp_path: Path) -> None:
    """The real-dataset range-view configs run CPS as TorchSemiSeg does ("separate"), the synthetic ones (the
    study's regime) and old checkpoints' configs keep "joint"; any other value is refused."""
    root = Path(__file__).resolve().parents[1] / "configs"
    for dataset in ("semantickitti", "scribblekitti", "nuscenes"):
        for name in ("base", "cps_fidnet", "cps_lasermix_fidnet"):
            assert load_config(root / dataset / f"{name}.yaml").semi.cps_forwards == "separate", dataset
    synthetic = sorted((root / "synthetic").glob("*.yaml"))
    assert len(synthetic) > 5
    for path in synthetic:
        assert load_config(path).semi.cps_forwards == "joint", path.name
    old = to_dict(load_config(root / "semantickitti" / "cps_fidnet.yaml"))
    del old["semi"]["cps_forwards"]
    assert from_dict(old).semi.cps_forwards == "joint"
    bad = tmp_path / "bad.yaml"
    bad.write_text("semi:\n  cps_forwards: apart\n")
    with pytest.raises(ConfigError, match="'apart' is not one of"):
        load_config(bad)
