"""The LaserMix release's supervised terms (the "released" loss recipe) against plain float64 implementations
written here from the formulas, values and gradients; their defining properties; and ``supervised_loss`` under
both recipes, auxiliary heads included."""

import pytest
import torch
from torch import nn

from rangecps.config import LossConfig
from rangecps.cps import cps_step, per_scan, supervised_loss
from rangecps.losses import (
    boundary_loss,
    boundary_loss_released,
    cross_entropy,
    cross_entropy_all_pixels,
    dice_loss,
    lovasz_softmax,
)

SEEDS = [0, 1, 2, 3]
VALUE_TOL = {"rtol": 1e-6, "atol": 1e-6}
GRAD_TOL = {"rtol": 1e-5, "atol": 1e-5}


def random_case(
    seed: int, b: int = 2, k: int = 5, h: int = 6, w: int = 9, labelled: float = 0.7
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (B, K, H, W), targets with about 1 - labelled of the pixels set to 0 (plus the random 0s of
    randint), and a (B, H, W) valid mask with about 15% False."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g) * 2
    target = torch.randint(1, k, (b, h, w), generator=g)
    target[torch.rand(b, h, w, generator=g) > labelled] = 0
    valid = torch.rand(b, h, w, generator=g) > 0.15
    return logits, target, valid


# ---------------------------------------------------------------- plain float64 references (no code under test)


def plain_softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.amax(1, keepdim=True).detach())
    return e / e.sum(1, keepdim=True)


def plain_ce_all(x: torch.Tensor, y: torch.Tensor, weight: list[float] | None = None) -> torch.Tensor:
    """sum over labelled pixels of w[y] * -log softmax(x)[y], divided by ALL B*H*W pixels; one pixel at a time."""
    b, _, h, w = x.shape
    total = x.new_zeros(())
    for i in range(b):
        for r in range(h):
            for c in range(w):
                label = int(y[i, r, c])
                if label == 0:
                    continue
                z = x[i, :, r, c]
                nll = torch.log(torch.exp(z).sum()) - z[label]
                total = total + (1.0 if weight is None else weight[label]) * nll
    return total / (b * h * w)


def plain_dice(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """One class at a time: 1 - 2 sum(p_c T_c) / (sum over labelled pixels of (p_c + T_c) + eps), mean over K."""
    p = plain_softmax(x)
    k = x.shape[1]
    labelled = (y != 0).double()
    losses, denominators = [], []
    for c in range(k):
        t = ((y == c) & (y != 0)).double()
        numerator = 2 * (p[:, c] * t).sum()
        denominator = ((p[:, c] + t) * labelled).sum()
        denominators.append(denominator)
        losses.append(1 - numerator / (denominator + eps))
    if float(sum(denominators).detach()) == 0:
        return sum(denominators)
    return sum(losses) / k


def plain_inner_boundary(m: torch.Tensor) -> torch.Tensor:
    """(H, W) map -> max over the 3x3 window (inside the image) of 1 - m, minus 1 - m."""
    comp = 1 - m
    h, w = m.shape
    padded = torch.full((h + 2, w + 2), float("-inf"), dtype=m.dtype)
    padded[1:-1, 1:-1] = comp
    windows = torch.stack([padded[dr : dr + h, dc : dc + w] for dr in range(3) for dc in range(3)])
    return windows.amax(0) - comp


def plain_boundary_released(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over (scan, class), all K classes and no ignore, of 1 - BF1 of the 3x3 inner boundaries."""
    p = plain_softmax(x)
    b, k = x.shape[:2]
    losses = []
    for i in range(b):
        for c in range(k):
            gt = plain_inner_boundary((y[i] == c).double())
            pred = plain_inner_boundary(p[i, c])
            precision = (pred * gt).sum() / (pred.sum() + 1e-7)
            recall = (pred * gt).sum() / (gt.sum() + 1e-7)
            losses.append(1 - 2 * precision * recall / (precision + recall + 1e-7))
    return sum(losses) / len(losses)


def plain_lovasz(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Lovasz extension by its definition over all labelled pixels pooled, mean over present classes:
    sum_i e_(i) (J(S_i) - J(S_{i-1})), S_i the i largest errors, J(S) = |S| / |F u S|."""
    p = plain_softmax(x).permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    labels = y.reshape(-1).tolist()
    rows = [i for i, label in enumerate(labels) if label != 0]
    losses = []
    for c in range(x.shape[1]):
        fg = {i for i in rows if labels[i] == c}
        if not fg:
            continue
        errors = {i: 1.0 - p[i, c] if i in fg else p[i, c] for i in rows}  # |1[y = c] - p_c|
        order = sorted(rows, key=lambda i: -float(errors[i].detach()))
        total, previous, chosen = x.new_zeros(()), 0.0, set()
        for i in order:
            chosen.add(i)
            jaccard = len(chosen) / len(fg | chosen)
            total = total + errors[i] * (jaccard - previous)
            previous = jaccard
        losses.append(total)
    return sum(losses) / len(losses)


def value_and_grad(fn, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.detach().clone().requires_grad_()
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def assert_matches(got_fn, plain_fn, logits: torch.Tensor) -> None:
    got, got_grad = value_and_grad(got_fn, logits.float())
    expected, expected_grad = value_and_grad(plain_fn, logits.double())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, **VALUE_TOL)
    torch.testing.assert_close(got_grad.double(), expected_grad, **GRAD_TOL)


# ---------------------------------------------------------------- cross-entropy over all pixels


@pytest.mark.parametrize("seed", SEEDS)
def test_ce_all_pixels_matches_plain(seed: int) -> None:
    logits, target, valid = random_case(seed)
    assert_matches(lambda x: cross_entropy_all_pixels(x, target), lambda x: plain_ce_all(x, target), logits)
    weight = [0.0, 1.0, 3.0, 0.5, 2.0]  # applied per pixel, not renormalised
    assert_matches(
        lambda x: cross_entropy_all_pixels(x, target, weight=torch.tensor(weight)),
        lambda x: plain_ce_all(x, target, weight),
        logits,
    )
    # Pixels outside ``valid`` count as label 0.
    assert_matches(
        lambda x: cross_entropy_all_pixels(x, target, valid=valid),
        lambda x: plain_ce_all(x, torch.where(valid, target, 0)),
        logits,
    )


@pytest.mark.parametrize("labelled", [0.1, 0.6, 1.0])
def test_ce_all_pixels_scales_labelled_ce_by_labelled_share(labelled: float) -> None:
    # The property that makes sparse labels (scribbles) scale the released CE down.
    logits, target, _ = random_case(7, b=3, k=6, h=8, w=16, labelled=labelled)
    n_labelled = int((target != 0).sum())
    assert 0 < n_labelled
    expected = cross_entropy(logits, target) * n_labelled / target.numel()
    torch.testing.assert_close(cross_entropy_all_pixels(logits, target), expected)


def test_ce_all_pixels_all_ignored_is_zero_and_attached() -> None:
    logits = torch.randn(2, 4, 3, 5, requires_grad=True)
    loss = cross_entropy_all_pixels(logits, torch.zeros(2, 3, 5, dtype=torch.int64))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---------------------------------------------------------------- Dice


@pytest.mark.parametrize("seed", SEEDS)
def test_dice_matches_plain(seed: int) -> None:
    logits, target, valid = random_case(seed)
    assert_matches(lambda x: dice_loss(x.softmax(1), target), lambda x: plain_dice(x, target), logits)
    assert_matches(
        lambda x: dice_loss(x.softmax(1), target, valid=valid),
        lambda x: plain_dice(x, torch.where(valid, target, 0)),
        logits,
    )


def test_dice_all_ignored_is_zero_and_attached() -> None:
    logits = torch.randn(2, 4, 3, 5, requires_grad=True)
    target = torch.randint(1, 4, (2, 3, 5))
    for loss in (
        dice_loss(logits.softmax(1), torch.zeros_like(target)),
        dice_loss(logits.softmax(1), target, valid=torch.zeros_like(target, dtype=torch.bool)),
    ):
        assert loss.item() == 0.0 and loss.requires_grad
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.equal(grad, torch.zeros_like(logits))


def test_dice_perfect_prediction_leaves_one_per_channel_without_target() -> None:
    # Class 0 (never a target) and absent classes each keep loss 1; present classes reach ~0.
    _, target, _ = random_case(5, k=6)
    target[target == 4] = 3  # class 4 absent
    probs = torch.nn.functional.one_hot(target, 6).permute(0, 3, 1, 2).float()
    probs[:, 0] = 0.0  # the ignored pixels predict nothing; they are not counted anyway
    assert dice_loss(probs, target).item() == pytest.approx(2 / 6, abs=1e-5)


# ---------------------------------------------------------------- boundary loss as released


@pytest.mark.parametrize("seed", SEEDS)
def test_boundary_released_matches_plain(seed: int) -> None:
    logits, target, valid = random_case(seed)
    assert_matches(
        lambda x: boundary_loss_released(x.softmax(1), target),
        lambda x: plain_boundary_released(x, target),
        logits,
    )
    assert_matches(
        lambda x: boundary_loss_released(x.softmax(1), target, valid=valid),
        lambda x: plain_boundary_released(x, torch.where(valid, target, 0)),
        logits,
    )


def test_boundary_released_perfect_prediction_counts_pairs_without_boundary() -> None:
    # Not zero: every (scan, class) pair whose target has no boundary adds 1 - BF1 = 1.
    target = torch.zeros(2, 6, 9, dtype=torch.int64)
    target[0, :, :4] = 1  # scan 0: classes 0 and 1 meet; classes 2, 3 absent
    target[1, :3] = 2  # scan 1: classes 0 and 2 meet; classes 1, 3 absent
    probs = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert boundary_loss_released(probs, target).item() == pytest.approx(4 / 8, abs=1e-5)
    # The rangecps recipe's boundary loss (classes 1.., pairs with a boundary only) scores it 0.
    assert boundary_loss(probs, target).item() == pytest.approx(0.0, abs=1e-5)


def test_boundary_released_rejects_even_window() -> None:
    logits, target, _ = random_case(0)
    with pytest.raises(ValueError, match="odd"):
        boundary_loss_released(logits.softmax(1), target, theta0=4)


# ---------------------------------------------------------------- Lovasz over the whole batch


def test_plain_lovasz_agrees_with_lovasz_softmax() -> None:
    logits, target, _ = random_case(1)
    assert_matches(lambda x: lovasz_softmax(x.softmax(1), target), lambda x: plain_lovasz(x, target), logits)


def test_released_lovasz_pools_the_batch_not_per_scan() -> None:
    # Scans that differ: scan 0 has most pixels labelled, scan 1 few, with a different class mix.
    logits, target, _ = random_case(3, k=5, labelled=0.9)
    target[1][torch.rand(6, 9, generator=torch.Generator().manual_seed(0)) > 0.2] = 0
    target[1][target[1] == 2] = 0
    valid = torch.ones_like(target, dtype=torch.bool)
    probs = logits.softmax(1)
    cfg = LossConfig(recipe="released", ce=0.0, dice=0.0, lovasz=1.0, boundary=0.0)
    terms = supervised_loss([logits], target, valid, cfg, None)
    pooled = lovasz_softmax(probs, target)
    assert torch.equal(terms["lovasz"], pooled)
    torch.testing.assert_close(terms["lovasz"].double(), plain_lovasz(logits.double(), target), **VALUE_TOL)
    per_scan_mean = per_scan(lovasz_softmax, probs=probs, target=target)
    assert abs(pooled.item() - per_scan_mean.item()) > 1e-3
    rangecps = supervised_loss(
        [logits], target, valid, LossConfig(recipe="rangecps", lovasz=1.0, ce=0.0), None
    )
    assert torch.equal(rangecps["lovasz"], per_scan_mean)


# ---------------------------------------------------------------- supervised_loss under both recipes


def test_supervised_loss_released_is_weighted_sum_of_plain_terms_with_aux() -> None:
    main, target, valid = random_case(11)
    aux1, _, _ = random_case(12)
    aux2, _, _ = random_case(13)
    cfg = LossConfig(recipe="released", ce=1.0, dice=0.7, lovasz=3.0, boundary=1.3, aux=0.4)
    masked = torch.where(valid, target, 0)  # projected pixels only; the others count as label 0

    def plain_terms(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "ce": plain_ce_all(x, masked),
            "dice": plain_dice(x, masked),
            "lovasz": plain_lovasz(x, masked),
            "boundary": plain_boundary_released(x, masked),
        }

    outputs = [o.clone().requires_grad_() for o in (main, aux1, aux2)]
    terms = supervised_loss(outputs, target, valid, cfg, None)
    grads = torch.autograd.grad(terms["sup"], outputs)

    plain_outputs = [o.double().requires_grad_() for o in (main, aux1, aux2)]
    heads = [plain_terms(x) for x in plain_outputs]
    expected = {k: heads[0][k] + cfg.aux * (heads[1][k] + heads[2][k]) for k in heads[0]}
    expected_sup = sum(getattr(cfg, k) * v for k, v in expected.items())
    expected_grads = torch.autograd.grad(expected_sup, plain_outputs)

    for k, v in expected.items():
        torch.testing.assert_close(terms[k].double(), v.detach(), **VALUE_TOL)
    torch.testing.assert_close(terms["sup"].double(), expected_sup.detach(), rtol=1e-6, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want, **GRAD_TOL)


def test_supervised_loss_rangecps_unchanged_and_aux_weighted() -> None:
    main, target, valid = random_case(21)
    aux, _, _ = random_case(22)
    weight = torch.tensor([0.0, 1.0, 3.0, 0.5, 2.0])
    cfg = LossConfig(ce=1.0, lovasz=3.0, boundary=1.0)
    assert cfg.recipe == "rangecps" and cfg.aux == 1.0 and cfg.dice == 0.0

    def head(x: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = x.float().softmax(1)
        return {
            "ce": per_scan(cross_entropy, logits=x, target=target, weight=weight, valid=valid),
            "lovasz": per_scan(lovasz_softmax, probs=probs, target=target, valid=valid),
            "boundary": per_scan(boundary_loss, probs=probs, target=target, valid=valid),
        }

    # Today's formula, term by term: the sum over heads of per-scan means.
    h0, h1 = head(main), head(aux)
    terms = supervised_loss([main, aux], target, valid, cfg, weight)
    for k in ("ce", "lovasz", "boundary"):
        assert torch.equal(terms[k], h0[k] + h1[k]), k
    assert terms["dice"].item() == 0.0
    expected_sup = (
        (h0["ce"] + h1["ce"]) + 3.0 * (h0["lovasz"] + h1["lovasz"]) + (h0["boundary"] + h1["boundary"])
    )
    torch.testing.assert_close(terms["sup"], expected_sup)

    half = supervised_loss(
        [main, aux], target, valid, LossConfig(ce=1.0, lovasz=3.0, boundary=1.0, aux=0.5), weight
    )
    for k in ("ce", "lovasz", "boundary"):
        torch.testing.assert_close(half[k], h0[k] + 0.5 * h1[k])
    no_aux = supervised_loss(
        [main, aux], target, valid, LossConfig(ce=1.0, lovasz=3.0, boundary=1.0, aux=0.0), weight
    )
    torch.testing.assert_close(no_aux["sup"], h0["ce"] + 3.0 * h0["lovasz"] + h0["boundary"])
    # aux 0 still keeps the auxiliary head in the graph (DDP needs a gradient for every parameter): zero, not None.
    aux_leaf = aux.clone().requires_grad_()
    no_aux = supervised_loss(
        [main, aux_leaf], target, valid, LossConfig(ce=1.0, lovasz=3.0, boundary=1.0, aux=0.0), weight
    )
    (aux_grad,) = torch.autograd.grad(no_aux["sup"], aux_leaf)
    assert torch.equal(aux_grad, torch.zeros_like(aux))

    # A Dice weight under the rangecps recipe gives the per-scan mean of the Dice term.
    with_dice = supervised_loss([main], target, valid, LossConfig(ce=0.0, lovasz=0.0, dice=1.0), weight)
    expected_dice = per_scan(dice_loss, probs=main.softmax(1), target=target, valid=valid)
    torch.testing.assert_close(with_dice["sup"], expected_dice)


def test_supervised_loss_rejects_unknown_recipe() -> None:
    logits, target, valid = random_case(0)
    with pytest.raises(ValueError, match="recipe"):
        supervised_loss([logits], target, valid, LossConfig(recipe="lasermix"), None)  # type: ignore[arg-type]


def test_released_terms_float32_under_bf16_autocast() -> None:
    logits, target, valid = random_case(4)
    x = logits.clone().requires_grad_()
    cfg = LossConfig(recipe="released", dice=1.0, boundary=1.0, aux=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = [x.bfloat16(), (x * 0.5).bfloat16()]
        terms = supervised_loss(outputs, target, valid, cfg, None)
    for name, value in terms.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
    terms["sup"].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


class TinyNet(nn.Module):
    """A 1x1-conv 'segmenter' with one auxiliary head, called like the real models: ``net(x, aux=True)``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.main, self.aux = nn.Conv2d(6, 5, 1), nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor, aux: bool = False) -> list[torch.Tensor]:
        return [self.main(x), self.aux(x)] if aux else [self.main(x)]


@pytest.mark.parametrize("recipe", ["released", "rangecps"])
def test_cps_step_logs_every_term(recipe: str) -> None:
    g = torch.Generator().manual_seed(0)
    labeled = {
        "input": torch.randn(2, 6, 8, 16, generator=g),
        "label": torch.randint(0, 5, (2, 8, 16), generator=g),
        "mask": torch.rand(2, 8, 16, generator=g) > 0.2,
    }
    unlabeled = {
        "input": torch.randn(2, 6, 8, 16, generator=g),
        "mask": torch.rand(2, 8, 16, generator=g) > 0.2,
    }
    cfg = LossConfig(recipe=recipe, dice=1.0, boundary=1.0)
    out = cps_step([TinyNet(0), TinyNet(1)], labeled, unlabeled, "cps_lasermix", cfg, generator=g)
    for k in ("loss", "sup_a", "sup_b", "cps", "ce", "dice", "lovasz", "boundary"):
        assert torch.isfinite(out[k]), k
    assert out["dice"] > 0 and out["loss"].requires_grad
    single = cps_step([TinyNet(0)], labeled, None, "sup_only", cfg)
    assert single["dice"] > 0 and torch.equal(single["loss"].detach(), single["sup"])
