"""Losses: ignore handling, Lovasz against a brute-force reference, boundary behaviour, CPS symmetry, thresholds
and gradients, and float32 results under bf16 autocast."""

import pytest
import torch
import torch.nn.functional as F

from rangecps.losses import boundary_loss, class_weights, cps_loss, cross_entropy, lovasz_softmax
from rangecps.models import build_model


def one_hot_probs(target: torch.Tensor, k: int) -> torch.Tensor:
    """(B, H, W) int64 -> (B, K, H, W) float32 one-hot 'probabilities'."""
    return F.one_hot(target, k).permute(0, 3, 1, 2).float()


def random_case(
    seed: int, b: int = 2, k: int = 5, h: int = 6, w: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g) * 2
    target = torch.randint(0, k, (b, h, w), generator=g)
    return logits, target


# ---------------------------------------------------------------- class weights and cross-entropy


def test_class_weights_inverse_frequency() -> None:
    counts = torch.tensor([500.0, 900.0, 90.0, 10.0])  # class 0 (ignore) is excluded from the fractions
    w = class_weights(counts)
    fractions = torch.tensor([0.9, 0.09, 0.01])
    torch.testing.assert_close(w[1:], 1.0 / (fractions + 1e-3))
    assert w[0] == 0 and w.dtype == torch.float32
    torch.testing.assert_close(class_weights(counts / 7.0), w)  # counts or fractions: same weights
    with pytest.raises(ValueError, match="non-negative"):
        class_weights(torch.tensor([0.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match="sum to zero"):
        class_weights(torch.tensor([5.0, 0.0, 0.0]))


def test_cross_entropy_ignores_label_zero_and_invalid_pixels() -> None:
    logits, target = random_case(0)
    valid = torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) > 0.3
    keep = (target != 0) & valid
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    got = cross_entropy(logits, target, valid=valid)
    torch.testing.assert_close(got, expected)
    # Whatever the net says at ignored pixels does not matter.
    scrambled = torch.where(keep[:, None], logits, torch.randn_like(logits) * 50)
    torch.testing.assert_close(cross_entropy(scrambled, target, valid=valid), got)
    assert not torch.allclose(cross_entropy(logits, target), got)  # the valid mask does change the set


def test_cross_entropy_class_weights_weighted_mean() -> None:
    logits, target = random_case(2)
    weight = torch.tensor([0.0, 1.0, 3.0, 0.5, 2.0])
    keep = target != 0
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep], weight=weight)
    torch.testing.assert_close(cross_entropy(logits, target, weight=weight), expected)


def test_cross_entropy_all_ignored_is_zero_with_gradient() -> None:
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    loss = cross_entropy(logits, torch.zeros(1, 3, 3, dtype=torch.int64))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_shape_and_dtype_errors() -> None:
    logits, target = random_case(0)
    with pytest.raises(ValueError, match="does not match"):
        cross_entropy(logits, target[:, :-1])
    with pytest.raises(ValueError, match="int64"):
        lovasz_softmax(logits.softmax(1), target.int())
    with pytest.raises(ValueError, match="bool"):
        cps_loss(logits, logits, torch.ones(target.shape))


# ---------------------------------------------------------------- Lovasz-softmax


def brute_force_lovasz(probs: torch.Tensor, target: torch.Tensor, ignore: int = 0) -> float:
    """Lovasz extension of the Jaccard loss by its definition, one class and one pixel at a time:
    f(m) = sum_i m_(i) * (J(S_i) - J(S_{i-1})), with S_i the i largest errors and J(S) = |S| / |F u S|."""
    p = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1]).double()
    y = target.reshape(-1)
    keep = y != ignore
    p, y = p[keep], y[keep]
    losses = []
    for c in range(p.shape[1]):
        fg = {i for i in range(len(y)) if y[i] == c}
        if not fg:
            continue
        errors = [abs((1.0 if i in fg else 0.0) - p[i, c].item()) for i in range(len(y))]
        order = sorted(range(len(y)), key=lambda i: -errors[i])
        total, prev, chosen = 0.0, 0.0, set()
        for i in order:
            chosen.add(i)
            jac = len(chosen) / len(fg | chosen)
            total += errors[i] * (jac - prev)
            prev = jac
        losses.append(total)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lovasz_matches_brute_force(seed: int) -> None:
    logits, target = random_case(seed, b=2, k=4, h=3, w=5)
    probs = logits.softmax(1)
    got = lovasz_softmax(probs, target)
    assert got.item() == pytest.approx(brute_force_lovasz(probs, target), rel=1e-5, abs=1e-6)


def test_lovasz_zero_for_perfect_and_one_minus_iou_for_hard_predictions() -> None:
    _, target = random_case(4, k=5)
    assert lovasz_softmax(one_hot_probs(target, 5), target).item() == pytest.approx(0.0, abs=1e-7)
    # At a hard (one-hot) prediction the Lovasz extension equals the set function: mean over present classes
    # of 1 - IoU.
    pred = target.roll(1, dims=2)
    keep = target != 0
    ious = []
    for c in target[keep].unique().tolist():
        t, p = (target == c) & keep, (pred == c) & keep
        ious.append((t & p).sum().item() / (t | p).sum().item())
    expected = sum(1 - i for i in ious) / len(ious)
    got = lovasz_softmax(one_hot_probs(pred, 5), target).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got > 0.1


def test_lovasz_ignores_label_zero_and_all_ignored_is_zero() -> None:
    logits, target = random_case(5)
    probs = logits.softmax(1)
    keep = (target != 0)[:, None]
    other = torch.where(keep, probs, torch.rand_like(probs))
    torch.testing.assert_close(lovasz_softmax(other, target), lovasz_softmax(probs, target))
    empty = lovasz_softmax(probs, torch.zeros_like(target))
    assert empty.item() == 0.0


# ---------------------------------------------------------------- boundary loss


def halves(shift: int, h: int = 4, w: int = 10) -> torch.Tensor:
    """(1, h, w) labels: class 1 on columns < 5 + shift, class 2 on the rest."""
    t = torch.full((1, h, w), 2, dtype=torch.int64)
    t[..., : 5 + shift] = 1
    return t


def test_boundary_loss_zero_for_perfect_prediction() -> None:
    _, target = random_case(6, k=4, h=8, w=12)
    assert boundary_loss(one_hot_probs(target, 4), target).item() == pytest.approx(0.0, abs=1e-5)
    soft = (one_hot_probs(target, 4) * 12).softmax(1)
    assert boundary_loss(soft, target).item() < 0.01


def test_boundary_loss_tolerance_window() -> None:
    target = halves(0)
    near, far = one_hot_probs(halves(1), 3), one_hot_probs(halves(3), 3)
    # theta=5 tolerates a boundary one column off, not three; theta=1 (the CENet / LaserMix code) tolerates none.
    assert boundary_loss(near, target).item() == pytest.approx(0.0, abs=1e-5)
    assert boundary_loss(far, target).item() == pytest.approx(1.0, abs=1e-5)
    assert boundary_loss(near, target, theta=1).item() == pytest.approx(1.0, abs=1e-5)


def test_boundary_loss_grows_with_shift_on_random_scenes() -> None:
    _, target = random_case(7, b=2, k=4, h=16, w=24)
    target = F.max_pool2d(target[:, None].float(), 3, 1, 1)[:, 0].long()  # blobs, not salt-and-pepper
    perfect = boundary_loss(one_hot_probs(target, 4), target).item()
    shifted = boundary_loss(one_hot_probs(target.roll(4, dims=2), 4), target).item()
    assert perfect < 1e-5 < 0.2 < shifted


def test_boundary_loss_ignored_pixels_neither_are_nor_make_boundaries() -> None:
    target = halves(0)
    target[..., 7:] = 0  # columns 7.. unlabelled: no class-2 boundary appears at column 6
    probs = one_hot_probs(halves(0), 3)
    # theta=1 so that no tolerance window hides a spurious boundary next to the unlabelled block.
    assert boundary_loss(probs, target, theta=1).item() == pytest.approx(0.0, abs=1e-5)
    probs[..., 7:] = torch.rand(1, 3, 4, 3)  # arbitrary predictions where nothing is labelled
    assert boundary_loss(probs, target, theta=1).item() == pytest.approx(0.0, abs=1e-5)


def test_boundary_loss_ignored_block_equals_cropped_image() -> None:
    # An unlabelled block of columns must act exactly like the image border (max-pooling pads with -inf there).
    logits, target = random_case(12, b=2, k=4, h=10, w=16)
    target = F.max_pool2d(target[:, None].float(), 3, 1, 1)[:, 0].long()
    target[target == 0] = 1
    probs = logits.softmax(1)
    masked = target.clone()
    masked[..., 11:] = 0
    cropped = boundary_loss(probs[..., :11].contiguous(), target[..., :11].contiguous())
    assert cropped.item() > 0.05
    torch.testing.assert_close(boundary_loss(probs, masked), cropped)
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[..., 11:] = False
    torch.testing.assert_close(boundary_loss(probs, target, valid=valid), cropped)


# ---------------------------------------------------------------- CPS


def test_cps_symmetric_and_detached() -> None:
    la, _ = random_case(8)
    lb, _ = random_case(9)
    valid = torch.rand(la.shape[0], *la.shape[2:], generator=torch.Generator().manual_seed(0)) > 0.2
    for thr in (0.0, 0.5):
        assert cps_loss(la, lb, valid, thr).item() == cps_loss(lb, la, valid, thr).item()
    a, b = la.clone().requires_grad_(), lb.clone().requires_grad_()
    cps_loss(a, b, valid).backward()
    # Each net's gradient is that of CE against the other's frozen argmax, nothing more.
    a2 = la.clone().requires_grad_()
    pseudo_b = lb[:, 1:].argmax(1) + 1  # class 0 (ignore) is never a pseudo-label
    cross_entropy_masked = F.cross_entropy(a2, pseudo_b, reduction="none")[valid].mean()
    cross_entropy_masked.backward()
    torch.testing.assert_close(a.grad, a2.grad)


def test_cps_threshold_excludes_low_confidence_pixels() -> None:
    # One row of three pixels, classes 1 and 2 (class 0, the ignore class, has a negligible logit).
    # Confidences: a = (0.98, 0.52, 0.95), b = (0.99, 0.55, 0.88).
    low = [-30.0, -30.0, -30.0]
    la = torch.tensor([low, [4.0, 0.1, 0.0], [0.0, 0.0, 3.0]])[None, :, None, :]
    lb = torch.tensor([low, [0.0, 0.0, 2.0], [5.0, 0.2, 0.0]])[None, :, None, :]
    valid = torch.ones(1, 1, 3, dtype=torch.bool)

    def ce(logit: list[float], label: int) -> float:
        return -torch.log_softmax(torch.tensor([-30.0, *logit]), 0)[label].item()

    # threshold 0.9: b teaches a only at pixel 0 (label 2); a teaches b at pixels 0 (label 1) and 2 (label 2).
    expected = ce([4.0, 0.0], 2) + (ce([0.0, 5.0], 1) + ce([2.0, 0.0], 2)) / 2
    assert cps_loss(la, lb, valid, threshold=0.9).item() == pytest.approx(expected, rel=1e-5)
    # Marking pixel 0 invalid leaves b -> a empty (contributes 0) and a -> b with pixel 2 only.
    valid[..., 0] = False
    assert cps_loss(la, lb, valid, threshold=0.9).item() == pytest.approx(ce([2.0, 0.0], 2), rel=1e-5)
    assert cps_loss(la, lb, valid, threshold=1.0).item() == 0.0


def test_cps_never_teaches_the_ignore_class() -> None:
    # Net b is most confident in class 0 everywhere; its pseudo-label must still be a real class (here 2).
    lb = torch.tensor([9.0, 1.0, 3.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    la = torch.zeros(1, 3, 2, 2, requires_grad=True)
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    cps_loss(la, lb, valid).backward()
    # The gradient of CE w.r.t. logits is softmax - onehot: negative only at the taught class.
    assert (la.grad[0, 2] < 0).all() and (la.grad[0, 0] > 0).all()


def test_cps_gradients_reach_both_nets() -> None:
    net_a = build_model("fidnet", 6, 5, width=0.125, seed=0)
    net_b = build_model("fidnet", 6, 5, width=0.125, seed=1)
    x = torch.randn(2, 6, 16, 32)
    valid = torch.rand(2, 16, 32) > 0.3
    loss = cps_loss(net_a(x), net_b(x), valid)
    assert loss.item() > 0
    loss.backward()
    for net in (net_a, net_b):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None for g in grads)
        assert net.head[-1].weight.grad.abs().sum() > 0
        assert net.backbone.stem[0][0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- mixed precision


def test_losses_finite_float32_under_bf16_autocast() -> None:
    net_a = build_model("cenet", 6, 5, width=0.125, seed=0)
    net_b = build_model("cenet", 6, 5, width=0.125, seed=1)
    x = torch.randn(2, 6, 8, 24)
    target = torch.randint(0, 5, (2, 8, 24), generator=torch.Generator().manual_seed(0))
    valid = target != 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = net_a(x, aux=True)
        logits_b = net_b(x)
        assert outs[0].dtype == torch.bfloat16  # the autocast really is on
        probs = outs[0].float().softmax(1)
        losses = {
            "ce": sum(cross_entropy(o, target, class_weights(torch.arange(1.0, 6.0))) for o in outs),
            "lovasz": lovasz_softmax(probs, target),
            "boundary": boundary_loss(probs, target),
            "cps": cps_loss(outs[0], logits_b, valid, threshold=0.2),
        }
    for name, value in losses.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net_a.parameters() if p.grad is not None)


def test_lovasz_valid_mask_matches_brute_force_on_masked_target() -> None:
    logits, target = random_case(11, b=2, k=6, h=6, w=12)
    valid = torch.rand(target.shape, generator=torch.Generator().manual_seed(3)) > 0.25
    probs = logits.softmax(1)
    expected = brute_force_lovasz(probs, torch.where(valid, target, 0))
    assert lovasz_softmax(probs, target, valid=valid).item() == pytest.approx(expected, rel=1e-5)
