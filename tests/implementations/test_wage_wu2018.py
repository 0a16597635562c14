"""Paper properties of WAGE integer training (Wu et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch

from implementations.quantization.wage_wu2018 import (
    WAGE,
    Config,
    quantize,
    quantize_error,
    quantize_gradient,
    shift,
    sigma,
)


def test_fixed_point_grids_and_shift() -> None:
    x = torch.tensor([-0.9, -0.3, -0.2, 0.1, 0.26, 0.8])
    assert quantize(x, 2).tolist() == [-0.5, -0.5, -0.0, 0.0, 0.5, 0.5]  # 2 bits: ternary {-0.5, 0, 0.5}
    q8 = quantize(torch.linspace(-1.5, 1.5, 301), 8)
    assert sigma(8) == 2.0**-7 and q8.max() == 1 - 2.0**-7 and q8.min() == -1 + 2.0**-7  # clipped to C(x, k)
    assert torch.allclose(q8 / sigma(8), (q8 / sigma(8)).round())  # on the k-bit grid
    assert shift(torch.tensor([3.0, 0.3, 5.0, 1.0])).tolist() == [4.0, 0.25, 4.0, 1.0]


def test_error_and_gradient_quantizers() -> None:
    e = torch.tensor([0.003, -0.0004, 0.0011, 0.0])
    q = quantize_error(e, 8)  # divided by Shift(max |e|) = 2^-8, then 8-bit grid
    assert torch.allclose(q, quantize(e / 2.0**-8, 8)) and torch.equal(q.sign(), e.sign())
    g = torch.tensor([0.3, -0.1, 0.05])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([quantize_gradient(g, 8, lr=8, generator=gen) for _ in range(4000)])
    steps = draws / sigma(8)
    assert torch.allclose(steps, steps.round())  # integer number of grid steps
    exact = 8 * g / 0.25  # lr * g / Shift(0.3), in steps
    assert torch.all((steps - exact.floor()).abs() <= 1.0 + 1e-6)  # floor or ceil of the exact value
    assert torch.allclose(steps.mean(0), exact, atol=0.05)  # stochastic rounding is unbiased


def test_integer_update_keeps_weights_on_the_grid() -> None:
    torch.manual_seed(0)
    model = WAGE(96, 3, (24,))
    x, y = torch.randn(16, 96), torch.randint(0, 3, (16,))
    assert all(torch.equal(w / sigma(8), (w / sigma(8)).round()) for w in model.weights)
    # alpha = Shift(L_min / sqrt(6 / n_in)) with L_min = 1.5 * 0.5: Shift(3) = 4 for n_in = 96, Shift(1.5) = 2 for 24
    assert model.alphas.tolist() == [4.0, 2.0]
    for _ in range(3):
        _, losses = model.forward_train(x, y)
        sum(losses.values()).backward()
        assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in model.weights)
        before = [w.detach().clone() for w in model.weights]
        model.update(8, torch.Generator().manual_seed(1))
        for w, old in zip(model.weights, before, strict=True):
            assert torch.equal(w / sigma(8), (w / sigma(8)).round()) and w.abs().max() <= 1 - sigma(8)
            assert not torch.equal(w, old)
    logits = model.eval()(x)
    first = quantize(model.weights[0], 2)
    assert set(first.unique().tolist()) <= {-0.5, 0.0, 0.5} and logits.shape == (16, 3)
    float_model = WAGE(96, 3, (24,), Config(bits_w=None, bits_a=None, bits_g=None, bits_e=None))
    assert not torch.equal(float_model.weights[0] / sigma(8), (float_model.weights[0] / sigma(8)).round())


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.wage_wu2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run wage_wu2018 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"float", "wage_2888", "wage_a4", "wage_g4", "wage_e4"} <= {r.name for r in result.rows}
    wage = result.row("wage_2888").accuracy.mean
    gap = result.row("float").accuracy.mean - wage
    gap_conventional = result.row("float_bn_ce").accuracy.mean - wage
    # "comparable to float" must hold against the conventional float network, not only the constrained one
    assert result.claim.reproduced == (gap < 2.0 and gap_conventional < 2.0)
    assert result.row("wage_2888").extra["config"] == "2-8-8-8" and result.row("wage_2888").bits == 2.0
    assert len(result.answers) == 2
