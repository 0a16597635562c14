"""Models: shapes, per-stage features, BatchNorm, published parameter counts, the factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from implementations._models import build_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


CASES = [
    ("mlp", (1, 40), 2),
    ("cnn1d", (1, 40), 3),
    ("cnn2d", (1, 8, 8), 3),
    ("resnet8", (3, 16, 16), 4),
    ("resnet8x4", (3, 32, 32), 4),
]


@pytest.mark.parametrize("name,shape,stages", CASES, ids=[c[0] for c in CASES])
def test_logits_and_features(name: str, shape: tuple[int, ...], stages: int) -> None:
    model = build_model(name, 7, shape)
    x = torch.randn(2, *shape)
    logits, features = model(x, return_features=True)
    assert logits.shape == (2, 7) and len(features) == stages
    assert all(f.shape[0] == 2 for f in features)
    assert torch.allclose(model(x), logits)  # return_features=False gives the same logits
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert has_bn == (name != "mlp")


def test_cifar_resnets_match_published_sizes() -> None:
    # CRD / mdistiller tables: resnet8x4 1.23M and resnet32x4 7.43M parameters on CIFAR-100.
    assert round(n_params(build_model("resnet8x4", 100, (3, 32, 32))) / 1e4) == 123
    assert round(n_params(build_model("resnet32x4", 100, (3, 32, 32))) / 1e4) == 743
    assert round(n_params(build_model("resnet20", 100, (3, 32, 32))) / 1e4) == 28  # 0.28M in the same tables
    _, feats = build_model("resnet8x4", 100, (3, 32, 32))(torch.randn(1, 3, 32, 32), return_features=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]


def test_resnet32x4_has_five_blocks_per_stage() -> None:
    model = build_model("resnet32x4", 10, (3, 32, 32))
    assert [len(stage) for stage in model.stages] == [5, 5, 5]
    assert [len(stage) for stage in build_model("resnet8x4", 10, (3, 32, 32)).stages] == [1, 1, 1]


def test_width_multiplier_scales_channels() -> None:
    narrow = build_model("resnet8", 10, (3, 16, 16), width=0.5)
    wide = build_model("resnet8", 10, (3, 16, 16), width=2.0)
    assert narrow.stem[0].out_channels == 8 and wide.stem[0].out_channels == 32
    assert 10 < n_params(wide) / n_params(narrow) < 17  # conv weights scale ~ width^2 (16x here)
    assert build_model("mlp", 10, (1, 40), width=0.25).layers[0].out_features == 64


def test_factory_errors() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("resnet10", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="image inputs"):
        build_model("cnn2d", 10, (1, 40))
