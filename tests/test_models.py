"""Range-view networks: published sizes, output shapes at awkward image sizes, the forward contract, seeding."""

import pytest
import torch

from rangecps.models import MODELS, CENet, FIDNet, build_model
from rangecps.models.blocks import upsample_to

SMALL = 0.25  # CPU-sized width used by every shape test


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_fidnet_has_published_6_05m_parameters() -> None:
    # The authors' ResNet_34_point takes 5 channels (range, x, y, z, remission); LaserMix's copy takes 6.
    n5 = n_params(FIDNet(5, 20))
    n6 = n_params(FIDNet(6, 20))
    assert round(n5 / 1e6, 2) == 6.05
    assert round(n6 / 1e6, 2) == 6.05
    assert n6 - n5 == 64  # one more input column of the first 1x1 conv (64 filters)


def test_cenet_matches_published_6_8m_parameters() -> None:
    model = CENet(5, 20)
    assert round(n_params(model) / 1e6, 1) == 6.8
    # The three auxiliary 1x1 heads are 128 -> 20 convs with bias.
    assert sum(p.numel() for p in model.aux_heads.parameters()) == 3 * (128 * 20 + 20)


def test_width_scales_every_layer() -> None:
    full, small = FIDNet(6, 20), FIDNet(6, 20, width=SMALL)
    assert full.backbone.out_channels == 1024
    assert small.backbone.out_channels == 256
    assert n_params(small) < n_params(full) / 10


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(2, 6, 32, 256), (1, 6, 64, 512), (1, 6, 32, 120), (1, 6, 31, 125)])
def test_output_shapes(name: str, shape: tuple[int, int, int, int]) -> None:
    model = build_model(name, 6, 17, width=SMALL, seed=0)
    x = torch.randn(shape)
    b, _, h, w = shape
    train_out = model(x, aux=True)
    assert isinstance(train_out, list)
    assert len(train_out) == 1 + model.num_aux
    assert all(o.shape == (b, 17, h, w) for o in train_out)
    assert model(x).shape == (b, 17, h, w)  # main logits in train mode too
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (b, 17, h, w)
    assert torch.isfinite(out).all()


def test_cenet_has_three_aux_heads_fidnet_none() -> None:
    assert CENet.num_aux == 3 and FIDNet.num_aux == 0


def test_cenet_aux_head_commutes_with_upsampling() -> None:
    # The reference applies the aux 1x1 conv after upsampling; ours before. Bilinear weights sum to 1, so equal.
    model = CENet(6, 5, width=SMALL).double().eval()
    x = torch.randn(1, 6, 24, 70, dtype=torch.float64)
    with torch.no_grad():
        outs = model(x, aux=True)
        stages = model.stages(model.stem(x))
        for head, feat, out in zip(model.aux_heads, stages[1:], outs[1:], strict=True):
            torch.testing.assert_close(out, head(upsample_to(feat, (24, 70))), rtol=1e-9, atol=1e-9)


def test_aux_heads_train_only_when_asked() -> None:
    model = CENet(6, 5, width=0.125)
    x = torch.randn(2, 6, 16, 40)
    model(x).sum().backward()
    assert all(p.grad is None for p in model.aux_heads.parameters())
    assert model.head[-1].weight.grad is not None
    model.zero_grad(set_to_none=True)
    sum(o.sum() for o in model(x, aux=True)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux_heads.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = build_model(name, 6, 5, width=0.125, seed=3)
    outs = model(torch.randn(2, 6, 17, 45), aux=True)
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_same_seed_same_weights_different_seed_different_weights() -> None:
    a = build_model("fidnet", 6, 20, width=SMALL, seed=7).state_dict()
    b = build_model("fidnet", 6, 20, width=SMALL, seed=7).state_dict()
    c = build_model("fidnet", 6, 20, width=SMALL, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    convs = [k for k in a if k.endswith("weight") and a[k].dim() == 4]
    assert len(convs) > 30
    assert all(not torch.equal(a[k], c[k]) for k in convs)


def test_seeded_build_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    build_model("cenet", 6, 20, width=SMALL, seed=1)
    assert torch.equal(torch.rand(5), expected)


def test_unseeded_build_follows_global_rng() -> None:
    torch.manual_seed(5)
    a = build_model("cenet", 6, 20, width=SMALL).state_dict()
    torch.manual_seed(5)
    b = build_model("cenet", 6, 20, width=SMALL).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_is_kaiming_and_bn_identity() -> None:
    model = build_model("fidnet", 6, 20, seed=0)
    bn = model.backbone.stem[0][1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    w = model.backbone.stages.stages[0][1].conv1.weight  # 128 -> 128 3x3: fan_out = 128 * 9
    assert abs(w.std().item() - (2.0 / (128 * 9)) ** 0.5) < 0.002


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("rangenet", 6, 20)
    with pytest.raises(ValueError, match="width"):
        build_model("fidnet", 6, 20, width=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cenet", 6, 1)
    model = build_model("fidnet", 6, 20, width=SMALL)
    with pytest.raises(ValueError, match=r"\(B, 6, H, W\)"):
        model(torch.randn(1, 5, 16, 32))
