"""Paper properties of SqueezeNet (Iandola et al., 2016): Fire parameter count, metaparameters, compression."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.architecture.squeezenet_iandola2016 import (
    Config,
    Fire,
    SqueezeNet,
    fire_params,
    fire_widths,
    magnitude_prune,
    quantize_weights,
)


def _conv_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


def test_fire_parameter_count_matches_formula() -> None:
    m, s1, e1, e3 = 32, 4, 16, 16
    fire = Fire(m, s1, e1, e3)
    # M s + s e1 + 9 s e3 against 9 M (e1 + e3) for a plain 3x3 layer with the same outputs
    assert _conv_weights(fire) == fire_params(m, s1, e1, e3) == 32 * 4 + 4 * 16 + 9 * 4 * 16 == 768
    assert _conv_weights(nn.Conv2d(m, e1 + e3, 3)) == 9 * m * (e1 + e3) == 12 * 768
    x = torch.randn(2, m, 5, 5)
    out = fire.eval()(x)
    assert out.shape == (2, e1 + e3, 5, 5)
    squeezed = fire.squeeze(x)
    assert torch.equal(out[:, :e1], fire.expand1x1(squeezed)) and torch.equal(out[:, e1:], fire.expand3x3(squeezed))


def test_widths_follow_the_metaparameters() -> None:
    # e_i = base_e + incr_e * floor(i / freq); e3 = pct3x3 e_i; s1 = SR e_i
    assert fire_widths(Config()) == [(4, 16, 16), (4, 16, 16), (8, 32, 32), (8, 32, 32)]
    assert fire_widths(Config(squeeze_ratio=0.25, pct3x3=0.75)) == [(8, 8, 24), (8, 8, 24), (16, 16, 48), (16, 16, 48)]
    net, plain = SqueezeNet(Config()), SqueezeNet(Config(plain=True))
    stem_and_classifier = 9 * 32 + 64 * 10
    m, fire_total, plain_total = 32, 0, 0
    for s1, e1, e3 in fire_widths(Config()):
        fire_total, plain_total, m = fire_total + fire_params(m, s1, e1, e3), plain_total + 9 * m * (e1 + e3), e1 + e3
    assert _conv_weights(net) == stem_and_classifier + fire_total
    assert _conv_weights(plain) == stem_and_classifier + plain_total
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_prune_then_quantize_keeps_exact_sparsity_and_bounded_error() -> None:
    torch.manual_seed(0)
    model = SqueezeNet(Config())
    pruned = magnitude_prune(model, 0.5)
    before = {n: m.weight.detach().clone() for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    quantize_weights(pruned, bits=6)
    for name, module in pruned.named_modules():
        if isinstance(module, nn.Conv2d):
            w, ref = module.weight.detach(), before[name]
            step = ref.abs().max() / 31  # Delta = max|w| / (2^(b-1) - 1)
            assert int((ref == 0).sum()) == ref.numel() // 2  # exactly 50% per layer (rounded down)
            assert (w[ref == 0] == 0).all()  # pruned weights stay pruned
            assert (w - ref).abs().max() <= step / 2 + 1e-7
            assert torch.unique(w).numel() <= 2**6 - 1
            assert not hasattr(module, "weight_orig")  # masks folded in
    assert all(not hasattr(m, "weight_mask") for m in model.modules())  # the original model is untouched


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.architecture.squeezenet_iandola2016 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run squeezenet_iandola2016 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    plain, squeeze = result.row("plain_cnn"), result.row("squeezenet")
    assert plain.params > 5 * squeeze.params
    assert result.row("squeezenet_dc").nonzero_params < squeeze.params and result.row("squeezenet_dc").bits == 6
    assert len(result.answers) == 2 and result.figures == ["results/figures/squeezenet_iandola2016_tradeoff.png"]


def test_compressed_bytes_counts_codes_of_the_nonzeros_a_mask_and_fp32_batch_norm() -> None:
    from implementations.architecture.squeezenet_iandola2016 import compressed_bytes

    conv = nn.Conv2d(2, 3, 3, bias=False)  # 54 weights
    model = nn.Sequential(conv, nn.BatchNorm2d(3))  # + 6 BN parameters
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 55.0).view(3, 2, 3, 3))
        conv.weight.view(-1)[:27] = 0  # half pruned
    # mask 54 bits + 27 x 6-bit codes (216 < 324 dense) + a 32-bit scale + 6 x 32-bit BN = 440 bits = 55 bytes
    assert compressed_bytes(model, 6) == 55
    with torch.no_grad():
        conv.weight.view(-1)[:27] = 1.0  # dense again: 54 x 6 = 324 bits beats 54 + 324 for the mask format
    assert compressed_bytes(model, 6) == 69  # ceil((324 + 32 + 192) / 8)
