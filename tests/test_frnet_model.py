"""FRNet on points: released parameter count, output shapes, empty frustum pixels, batching without padding,
gradients, seeding, the scatter/gather helpers against loop references, and the frustum-head targets."""

import pytest
import torch

from rangecps.models.frnet import AUX_MAPS, FRNet, frustum_labels
from rangecps.models.frnet_blocks import pixels_to_points, points_to_pixels, scatter_max, scatter_mean

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = 0.125  # channels 8 / 16 / 32; every test below runs in well under a second at this width
K = 5

# The released FRNet (github.com/Xiangxu-0103/FRNet, configs/frnet/frnet-semantickitti_seg.py: 4 input
# channels, 20 outputs with the ignore class as index 19) has 10,029,572 parameters; with
# frnet-nuscenes_seg.py (17 outputs) 10,027,829. Established by instantiating the released classes themselves
# (mmengine 0.10.7 + mmcv-lite 2.2.0 + mmdet3d 1.4.0's Base3DDecodeHead / EncoderDecoder3D, the release's
# FrustumFeatureEncoder, FRNetBackbone, FRHead and FrustumHead built by MODELS.build from its config files,
# with only type-hint modules, torch_scatter and the parameter-free losses stubbed) and summing
# p.numel() over model.parameters(). The README's table gives "10.0 M". Loading those released modules' weights
# into this FRNet reproduced their point and frustum logits and all parameter gradients exactly (float64).
RELEASED_PARAMS_SEMANTICKITTI = 10_029_572
RELEASED_PARAMS_NUSCENES = 10_027_829


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_batch(counts, grid, in_channels=4, seed=0):
    """Random points for len(counts) scans, concatenated without padding, in random (unsorted) order."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    batch = torch.cat([torch.full((n,), b, dtype=torch.int64) for b, n in enumerate(counts)])
    p = batch.numel()
    coors = torch.stack(
        [batch, torch.randint(0, h, (p,), generator=g), torch.randint(0, w, (p,), generator=g)], 1
    )
    points = torch.randn(p, in_channels, generator=g) * 3
    perm = torch.randperm(p, generator=g)
    return points[perm], coors[perm]


def build(width=TINY, num_classes=K, in_channels=4, seed=0):
    model = FRNet(in_channels, num_classes, width=width)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


def test_parameter_count_equals_released_model() -> None:
    with torch.device("meta"):
        kitti, nusc = FRNet(4, 20), FRNet(4, 17)
    assert n_params(kitti) == RELEASED_PARAMS_SEMANTICKITTI
    assert n_params(nusc) == RELEASED_PARAMS_NUSCENES
    # Per part, as the released modules count them.
    parts = {name: n_params(m) for name, m in kitti.named_children()}
    assert parts == {"encoder": 112_288, "backbone": 9_814_400, "head": 92_564, "aux_heads": 10_320}
    # One more input column (e.g. x, y, z, intensity, range) adds one row to the first encoder layer and its BN.
    with torch.device("meta"):
        assert n_params(FRNet(5, 20)) - n_params(kitti) == 64 + 2


def test_width_scales_channels() -> None:
    with torch.device("meta"):
        small = FRNet(4, 20, width=0.25)
    assert small.backbone.stem[-1][0].out_channels == 32
    assert small.encoder.compress[0].out_features == 4
    assert n_params(small) < RELEASED_PARAMS_SEMANTICKITTI / 12


@pytest.mark.parametrize("grid", [(16, 48), (13, 30)])  # divisible by 8 as released, and not
def test_output_shapes_two_scans_of_different_sizes(grid) -> None:
    model = build()
    points, coors = make_batch([300, 170], grid)
    out = model(points, coors, 2, grid, aux=True)
    assert out["point_logits"].shape == (470, K)
    assert len(out["frustum_logits"]) == FRNet.num_aux == len(AUX_MAPS) == 4
    assert all(f.shape == (2, K, *grid) for f in out["frustum_logits"])
    assert set(model(points, coors, 2, grid)) == {"point_logits"}  # aux heads only when asked for
    model.eval()
    with torch.no_grad():
        out = model(points, coors, 2, grid, aux=True)
    assert out["point_logits"].shape == (470, K)
    assert all(f.shape == (2, K, *grid) for f in out["frustum_logits"])
    assert all(torch.isfinite(t).all() for t in [out["point_logits"], *out["frustum_logits"]])


def test_empty_frustum_pixels_and_an_empty_scan() -> None:
    model = build()
    grid = (8, 24)
    # Scan 0: 40 points in the left half of the image only; scan 1 has no points; scan 2: 25 points.
    points, coors = make_batch([40, 0, 25], grid, seed=1)
    coors[coors[:, 0] == 0, 2] %= 12
    points -= 10.0  # all features negative: max-pooling must not be clipped by the zero fill
    pixels, _ = model.encoder(points, coors, 3, grid)
    occupied = torch.zeros(3, *grid, dtype=torch.bool)
    occupied[coors[:, 0], coors[:, 1], coors[:, 2]] = True
    assert (~occupied).sum() > 0 and pixels.shape == (3, model.encoder.compress[0].out_features, *grid)
    assert (pixels.permute(0, 2, 3, 1)[~occupied] == 0).all()
    assert (pixels[1] == 0).all()
    out = model(points, coors, 3, grid, aux=True)
    assert out["point_logits"].shape == (65, K)
    assert all(torch.isfinite(f).all() for f in out["frustum_logits"])


def test_every_parameter_gets_a_gradient() -> None:
    model = build(seed=3)
    grid = (16, 40)
    points, coors = make_batch([200, 150], grid, seed=2)
    out = model(points, coors, 2, grid, aux=True)
    loss = out["point_logits"].square().mean() + sum(f.square().mean() for f in out["frustum_logits"])
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert bad == []
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert zero == []


def test_seeded_init_is_deterministic() -> None:
    grid = (16, 40)
    points, coors = make_batch([120, 90], grid, seed=4)
    runs = []
    for seed in (7, 7, 8):
        model = build(seed=seed)
        out = model(points, coors, 2, grid, aux=True)
        (out["point_logits"].sum() + out["frustum_logits"][1].sum()).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert len(grads) == len(list(model.parameters())) - 6  # 3 of the 4 aux heads (weight, bias) unused
        runs.append((model.state_dict(), out["point_logits"], grads))
    (sa, la, ga), (sb, lb, gb), (sc, _, _) = runs
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(la, lb)
    assert all(torch.equal(a, b) for a, b in zip(ga, gb, strict=True))
    weights = [k for k in sa if k.endswith("weight") and sa[k].dim() >= 2]  # every Linear and Conv2d
    assert len(weights) == 74
    assert all(not torch.equal(sa[k], sc[k]) for k in weights)


def test_unseeded_build_follows_global_rng() -> None:
    torch.manual_seed(11)
    a = FRNet(4, K, width=TINY).state_dict()
    torch.manual_seed(11)
    b = FRNet(4, K, width=TINY).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_released_initialisation() -> None:
    model = FRNet(4, 20, width=0.25)
    for clf in [model.head.classifier, *model.aux_heads]:
        assert abs(clf.weight.std().item() - 0.01) < 0.003
        assert (clf.bias == 0).all()
    bn = model.backbone.stem[0][1]
    assert bn.eps == 1e-3 and bn.momentum == 0.01
    assert (bn.weight == 1).all() and (bn.bias == 0).all()
    lin = model.encoder.layers[1][0]  # PyTorch's default: U(+-1/sqrt(fan_in))
    assert lin.weight.abs().max() <= 1 / lin.in_features**0.5


def test_point_order_and_batch_composition_do_not_matter() -> None:
    model = build(seed=5).eval()
    grid = (16, 48)
    points, coors = make_batch([150, 110], grid, seed=6)
    with torch.no_grad():
        full = model(points, coors, 2, grid, aux=True)
        perm = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))
        shuffled = model(points[perm], coors[perm], 2, grid)["point_logits"]
        torch.testing.assert_close(shuffled, full["point_logits"][perm], rtol=1e-5, atol=1e-6)
        # Scan 1 alone (renumbered to batch index 0) gives the same point and frustum logits as in the batch.
        one = coors[:, 0] == 1
        alone_coors = coors[one].clone()
        alone_coors[:, 0] = 0
        alone = model(points[one], alone_coors, 1, grid, aux=True)
    torch.testing.assert_close(alone["point_logits"], full["point_logits"][one], rtol=1e-5, atol=1e-6)
    for a, f in zip(alone["frustum_logits"], full["frustum_logits"], strict=True):
        torch.testing.assert_close(a[0], f[1], rtol=1e-5, atol=1e-6)


def test_scatter_max_and_mean_match_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.randn(23, 3, generator=g) - 1.0  # mostly negative values
    index = torch.randint(0, 9, (23,), generator=g)
    index[index == 4] = 5  # segment 4 stays empty
    n = 10  # and so does segment 9
    got_max, got_mean = scatter_max(src, index, n), scatter_mean(src, index, n)
    for s in range(n):
        rows = src[index == s]
        exp_max = rows.max(0).values if len(rows) else torch.zeros(3)
        exp_mean = rows.mean(0) if len(rows) else torch.zeros(3)
        assert torch.equal(got_max[s], exp_max)
        torch.testing.assert_close(got_mean[s], exp_mean)


def test_points_to_pixels_and_back_match_a_loop() -> None:
    g = torch.Generator().manual_seed(1)
    stride = 2  # a (7, 11) grid
    coors = torch.stack(
        [torch.randint(0, 2, (30,), generator=g), torch.randint(0, 7, (30,), generator=g),
         torch.randint(0, 11, (30,), generator=g)], 1
    )  # fmt: skip
    feats = torch.randn(30, 4, generator=g)
    size = (4, 6)  # ceil(7 / 2), ceil(11 / 2), as a stride-2 conv makes them
    maps = points_to_pixels(feats, coors, 2, size, stride)
    expected = torch.zeros(2, 4, *size)
    seen = torch.zeros(2, *size, dtype=torch.bool)
    for (b, r, c), f in zip(coors.tolist(), feats, strict=True):
        r, c = r // stride, c // stride
        expected[b, :, r, c] = f if not seen[b, r, c] else torch.maximum(expected[b, :, r, c], f)
        seen[b, r, c] = True
    assert torch.equal(maps, expected)
    back = pixels_to_points(maps, coors, stride)
    for i, (b, r, c) in enumerate(coors.tolist()):
        assert torch.equal(back[i], maps[b, :, r // stride, c // stride])


def test_frustum_labels_are_majority_votes() -> None:
    coors = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 1, 0], [1, 1, 1],
                          [1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 0, 1]])  # fmt: skip
    labels = torch.tensor([2, 3, 2, 4, 3, 0, 1, 0, 0, 1, 0, 0])
    got = frustum_labels(labels, coors, 2, (2, 2), K)
    expected = torch.tensor([[[2, 3], [1, 0]], [[0, 0], [0, 0]]])
    # (0,0,0): 2 beats 3; (0,0,1): tie 3/4 -> lower class 3; (0,1,0): tie ignore/1 -> 1 (ignore loses ties);
    # (0,1,1) and (1,0,0): no points -> 0; (1,1,1): ignore has the strict majority; (1,0,1): only ignore.
    assert torch.equal(got, expected)


def test_bad_inputs_raise() -> None:
    model = build()
    points, coors = make_batch([10, 10], (8, 8))
    with pytest.raises(ValueError, match="points"):
        model(points[:, :3], coors, 2, (8, 8))
    with pytest.raises(ValueError, match="coors"):
        model(points, coors.int(), 2, (8, 8))
    with pytest.raises(ValueError, match="out of range"):
        model(points, coors, 1, (8, 8))
    with pytest.raises(ValueError, match="out of range"):
        model(points, coors, 2, (8, 4))
    with pytest.raises(ValueError, match="in_channels"):
        FRNet(2, K)
    with pytest.raises(ValueError, match="num_classes"):
        FRNet(4, 1)
