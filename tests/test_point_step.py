"""Every method on point batches (rangecps.point_step, FRNet): mixing points by rows, per-scan point losses, the
release's supervised loss, CPS per point, and every method's loss falling on tiny synthetic batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rangecps.config import LossConfig, SemiConfig
from rangecps.data.lasermix import mix_point_pairs
from rangecps.losses import cps_loss, cross_entropy
from rangecps.models import build_model
from rangecps.point_step import cat_points, per_scan_points, point_step, point_supervised_loss
from rangecps.teacher import ema_update, make_teacher

H, W, K = 16, 32, 5
FRNET_LOSS = LossConfig(ce=1.0, lovasz=1.5, boundary=1.0, aux=1.0)


def point_batch(sizes: list[int], seed: int, labeled: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coors = torch.cat(
        [
            torch.stack(
                [
                    torch.full((n,), i),
                    torch.randint(0, H, (n,), generator=g),
                    torch.randint(0, W, (n,), generator=g),
                ],
                1,
            )
            for i, n in enumerate(sizes)
        ]
    )
    p = coors.shape[0]
    return {
        "points": torch.randn(p, 4, generator=g),
        "coors": coors,
        "label": torch.randint(0, K, (p,), generator=g) if labeled else torch.zeros(p, dtype=torch.int64),
        "offsets": torch.tensor([0, *np.cumsum(sizes).tolist()]),
    }


def test_mix_point_pairs_takes_each_scans_points_in_its_own_bands() -> None:
    lab, unl = point_batch([40, 30], 0), point_batch([25, 50, 35], 1)
    il, iu = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2])
    g = torch.Generator().manual_seed(3)
    rows = torch.rand(3, H, generator=g) < 0.5
    gather, coors, offsets = mix_point_pairs(lab["coors"], unl["coors"], il, iu, rows)
    both = torch.cat([lab["coors"], unl["coors"]])
    assert torch.equal(both[gather][:, 1:], coors[:, 1:])
    assert offsets[0] == 0 and offsets[-1] == len(gather) and len(offsets) == 7
    n_l = lab["coors"].shape[0]
    for p in range(3):
        for half, from_l in enumerate((rows[p], ~rows[p])):
            m = 2 * p + half
            taken = gather[offsets[m] : offsets[m + 1]].tolist()
            assert (coors[offsets[m] : offsets[m + 1], 0] == m).all()
            # Expected, point by point: the labeled scan's points in its bands, then the unlabeled scan's others.
            want = [i for i in range(n_l) if lab["coors"][i, 0] == il[p] and from_l[lab["coors"][i, 1]]]
            want += [
                n_l + i
                for i in range(unl["coors"].shape[0])
                if unl["coors"][i, 0] == iu[p] and not from_l[unl["coors"][i, 1]]
            ]
            assert taken == want
        # The pair's two mixed scans hold each of its points exactly once.
        pair = gather[offsets[2 * p] : offsets[2 * p + 2]].sort().values
        in_pair = torch.cat(
            [
                torch.nonzero(lab["coors"][:, 0] == il[p]).squeeze(1),
                torch.nonzero(unl["coors"][:, 0] == iu[p]).squeeze(1) + n_l,
            ]
        )
        assert torch.equal(pair, in_pair.sort().values)


def test_cat_points_shifts_scans_and_offsets() -> None:
    a, b = point_batch([5, 7], 0), point_batch([3], 1)
    c = cat_points([a, b])
    assert c["offsets"].tolist() == [0, 5, 12, 15]
    assert c["coors"][12:, 0].tolist() == [2, 2, 2] and torch.equal(c["coors"][:12], a["coors"])
    assert torch.equal(c["points"][12:], b["points"])


def test_per_scan_point_ce_is_the_mean_of_each_scans_cross_entropy() -> None:
    batch = point_batch([30, 12, 50], 2)
    logits = torch.randn(92, K)
    weight = torch.rand(K) + 0.5
    got = per_scan_points(
        cross_entropy, batch["offsets"], {"logits": logits, "target": batch["label"]}, weight=weight
    )
    o = batch["offsets"].tolist()
    want = np.mean(
        [
            F.cross_entropy(logits[s:e], batch["label"][s:e], weight=weight, ignore_index=0).item()
            for s, e in itertools.pairwise(o)
        ]
    )
    assert got.item() == pytest.approx(want, rel=1e-5)


def majority(labels: np.ndarray, coors: np.ndarray, batch: int) -> np.ndarray:
    """Each pixel's most frequent point label, 0 counting as a label but losing ties, 0 without points."""
    out = np.zeros((batch, H, W), np.int64)
    for b in range(batch):
        for r in range(H):
            for c in range(W):
                here = labels[(coors[:, 0] == b) & (coors[:, 1] == r) & (coors[:, 2] == c)]
                if len(here):
                    counts = np.bincount(here, minlength=K)
                    real = counts[1:].max()
                    out[b, r, c] = 0 if counts[0] > real else 1 + int(counts[1:].argmax())
    return out


@pytest.mark.parametrize("recipe", ["rangecps", "released"])
def test_point_supervised_ce_is_the_point_ce_plus_each_frustum_heads(recipe: str) -> None:
    batch = point_batch([60, 40], 4)
    g = torch.Generator().manual_seed(5)
    point_logits = torch.randn(100, K, generator=g)
    maps = [torch.randn(2, K, H, W, generator=g) for _ in range(2)]
    cfg = LossConfig(recipe=recipe, ce=1.0, lovasz=0.0, boundary=0.0, aux=0.5)
    terms = point_supervised_loss([point_logits, *maps], batch, cfg, None)
    if recipe == "rangecps":
        o = batch["offsets"].tolist()
        point = np.mean(
            [
                F.cross_entropy(point_logits[s:e], batch["label"][s:e], ignore_index=0).item()
                for s, e in itertools.pairwise(o)
            ]
        )
    else:  # mmdet's CrossEntropyLoss: the mean over all points, ignored ones counting 0
        point = F.cross_entropy(point_logits, batch["label"], ignore_index=0, reduction="none").mean().item()
    target = torch.from_numpy(majority(batch["label"].numpy(), batch["coors"].numpy(), 2))
    frustum = 0.0
    for m in maps:
        if recipe == "rangecps":
            frustum += np.mean(
                [F.cross_entropy(m[b : b + 1], target[b : b + 1], ignore_index=0).item() for b in range(2)]
            )
        else:
            frustum += F.cross_entropy(m, target, ignore_index=0, reduction="none").mean().item()
    assert terms["ce"].item() == pytest.approx(point + 0.5 * frustum, rel=1e-5)
    assert terms["sup"].item() == pytest.approx(terms["ce"].item(), rel=1e-6)


def test_cps_term_is_each_nets_ce_on_the_others_point_argmax() -> None:
    batch = point_batch([20, 30], 6)
    a, b = torch.randn(50, K), torch.randn(50, K)
    valid = torch.ones(50, dtype=torch.bool)
    got = per_scan_points(cps_loss, batch["offsets"], {"logits_a": a, "logits_b": b, "valid": valid})
    want = []
    for s, e in ((0, 20), (20, 50)):
        la, lb = a[s:e, 1:].argmax(1) + 1, b[s:e, 1:].argmax(1) + 1
        want.append(F.cross_entropy(a[s:e], lb).item() + F.cross_entropy(b[s:e], la).item())
    assert got.item() == pytest.approx(np.mean(want), rel=1e-5)


@pytest.mark.parametrize("method", ["sup_only", "mean_teacher", "cps", "lasermix", "cps_lasermix"])
def test_every_methods_loss_falls_on_points(method: str) -> None:
    torch.manual_seed(0)
    lab, unl = point_batch([120, 90], 10), point_batch([100, 110], 11, labeled=False)
    nets = [build_model("frnet", 4, K, 0.125, seed=s) for s in range(2 if method.startswith("cps") else 1)]
    if method in ("mean_teacher", "lasermix"):
        nets.append(make_teacher(nets[0]))
    trained = nets[: 2 if method.startswith("cps") else 1]
    opt = torch.optim.AdamW([p for n in trained for p in n.parameters()], lr=0.01)
    semi = SemiConfig(pseudo_threshold=0.0, ema_momentum=0.05)
    losses = []
    for step in range(6):
        out = point_step(
            nets,
            lab,
            None if method == "sup_only" else unl,
            method,
            FRNET_LOSS,
            generator=torch.Generator().manual_seed(step),
            grid=(H, W),
            semi=semi,
            step=step,
        )
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        for teacher in nets[len(trained) :]:
            ema_update(teacher, nets[0], semi.ema_momentum)
        losses.append(out["loss"].item())
        assert np.isfinite(losses[-1])
    assert losses[-1] < losses[0]
    if method.startswith("cps"):
        assert out["cps"] > 0 and "sup_b" in out
    if "lasermix" in method:
        assert out["bands"] >= 4 and 0 < out["pseudo_share"] <= 1


def cps_point_losses_and_grads(
    method: str, forwards: str, train_mode: bool
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[int]]:
    """One cps / cps_lasermix point step of two fresh FRNets (batch norm) with ``semi.cps_forwards = forwards``:
    its losses, every parameter's gradient, and the scans of every forward call (a forward hook counts them)."""
    nets = [build_model("frnet", 4, K, 0.125, seed=s) for s in (3, 4)]
    calls: list[int] = []
    for net in nets:
        net.train(train_mode)
        net.register_forward_hook(lambda _m, args, _o: calls.append(int(args[2])))
    lab, unl = point_batch([120, 90], 12), point_batch([100, 110, 80], 13, labeled=False)
    semi = SemiConfig(pseudo_threshold=0.0, cps_forwards=forwards)
    g = torch.Generator().manual_seed(2)
    out = point_step(nets, lab, unl, method, FRNET_LOSS, generator=g, grid=(H, W), semi=semi)
    out["loss"].backward()
    return out, [p.grad for net in nets for p in net.parameters() if p.grad is not None], calls


@pytest.mark.parametrize("method", ["cps", "cps_lasermix"])
def test_cps_separate_forwards_equal_joint_without_batch_norm(method: str) -> None:
    """Point models in eval mode: one forward per batch gives the losses and gradients of one forward over the
    batches concatenated (cat_points)."""
    joint, grads_joint, calls_joint = cps_point_losses_and_grads(method, "joint", train_mode=False)
    separate, grads_separate, calls_separate = cps_point_losses_and_grads(
        method, "separate", train_mode=False
    )
    assert len(calls_separate) > len(calls_joint)  # the two runs did differ in their forward passes
    assert joint.keys() == separate.keys()
    for k in joint:
        torch.testing.assert_close(separate[k], joint[k], rtol=1e-4, atol=1e-5, msg=k)
    assert len(grads_joint) == len(grads_separate) > 0
    for a, b in zip(grads_joint, grads_separate, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method", ["cps", "cps_lasermix"])
def test_cps_separate_forwards_normalise_batches_apart(method: str) -> None:
    """Point models in train mode: "separate" calls each net on the labeled, the unlabeled and (cps_lasermix) the
    mixed scans apart, "joint" once on all of them; batch norm then gives other losses."""
    joint, _, calls_joint = cps_point_losses_and_grads(method, "joint", train_mode=True)
    separate, _, calls_separate = cps_point_losses_and_grads(method, "separate", train_mode=True)
    # 2 labeled, 3 unlabeled and (cps_lasermix) 6 mixed scans: 3 pairs, two mixed scans each
    parts = [2, 3, 6] if method == "cps_lasermix" else [2, 3]
    assert calls_joint == [sum(parts)] * 2
    assert calls_separate == parts * 2
    assert abs(float(separate["loss"].detach()) - float(joint["loss"].detach())) > 1e-3
    assert abs(float(separate["sup_a"]) - float(joint["sup_a"])) > 1e-4
