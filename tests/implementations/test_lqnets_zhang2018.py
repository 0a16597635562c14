"""Paper properties of the LQ-Nets learned quantizer (Zhang et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations.quantization.lqnets_zhang2018 import Config, LQQuantizer, all_codes, fit_basis, nearest_codes


def test_levels_are_inner_products_of_basis_and_codes() -> None:
    signed, unsigned = all_codes(2, signed=True), all_codes(2, signed=False)
    assert {tuple(r) for r in signed.tolist()} == {(-1, -1), (-1, 1), (1, -1), (1, 1)}
    assert {tuple(r) for r in unsigned.tolist()} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    basis = torch.tensor([[1.0, 2.0]])  # v = [1, 2]
    assert sorted((basis @ signed.T).flatten().tolist()) == [-3.0, -1.0, 1.0, 3.0]  # uniform grid
    assert sorted((basis @ unsigned.T).flatten().tolist()) == [0.0, 1.0, 2.0, 3.0]
    x = torch.tensor([[-2.9, -0.2, 0.1, 1.9, 2.1, 10.0]])
    levels = (basis @ signed.T)[0]
    assert levels[nearest_codes(x, basis, signed)][0].tolist() == [-3.0, -1.0, 1.0, 1.0, 3.0, 3.0]


def test_basis_step_is_the_least_squares_solution() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, generator=gen, dtype=torch.float64)  # (C, N)
    basis = torch.tensor([[0.3, 0.6], [0.2, 0.9], [0.5, 0.7]], dtype=torch.float64)
    codes = all_codes(2, signed=True).double()
    new = fit_basis(x, basis, codes, iterations=1)
    for c in range(3):
        b = codes[nearest_codes(x[c : c + 1], basis[c : c + 1], codes)[0]].T  # (K, N): B
        expected = torch.linalg.solve(b @ b.T, b @ x[c])  # (B B^T)^{-1} B x
        assert torch.allclose(new[c], expected, atol=1e-6)

    # block coordinate descent never increases ||B^T v - x||^2
    def error(v: torch.Tensor) -> torch.Tensor:
        return ((v @ codes.T).gather(1, nearest_codes(x, v, codes)) - x).pow(2).sum()

    errors = [error(fit_basis(x, basis, codes, iterations=t)) for t in range(0, 5)]
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:], strict=False)) and errors[-1] < errors[0]


def test_quantizer_outputs_levels_with_straight_through_gradients() -> None:
    weights = LQQuantizer(Config(bits=2, signed=True, channels=4))
    w = torch.randn(4, 16, requires_grad=True)
    weights(w)  # training mode: initialise and refit the basis
    weights.eval()
    q = weights(w)
    levels = weights.levels()  # (4, 4)
    distance = (q.detach()[:, :, None] - levels[:, None, :]).abs().amin(-1)  # (4, 16)
    assert distance.max() < 1e-6 and len(set(q[0].detach().round(decimals=5).tolist())) <= 4
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # STE
    acts = LQQuantizer(Config(bits=2, signed=False))
    a = torch.tensor([0.0, 0.5, 1.0, 50.0], requires_grad=True)
    acts(a.detach())  # initialise the basis on a batch without the outlier
    acts.eval()
    before = acts.basis.clone()
    acts(a).sum().backward()
    assert torch.equal(acts.basis, before)  # eval mode: no refit
    top = float(acts.levels().max())
    assert torch.equal(a.grad, (a.detach() <= top).float()) and a.grad[-1] == 0  # clipped above the top level


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.lqnets_zhang2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run lqnets_zhang2018 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    names = {row.name for row in result.rows}
    assert {"fp", "lq_w1a1", "lq_w2a2", "lq_w3a3", "uniform_w2a2"} <= names and result.protocol.n_train == 500
    assert result.row("lq_w2a2").bits == 2.0 and result.row("lq_w2a2").bytes < result.row("fp").bytes
    assert result.claim.reproduced == all(
        result.row(f"lq_w{b}a{b}").accuracy.mean > result.row(f"uniform_w{b}a{b}").accuracy.mean for b in (1, 2, 3)
    )
    assert (tmp_path / "results" / "figures" / "lqnets_zhang2018_bits.png").stat().st_size > 1000


@pytest.mark.parametrize("bits", [1, 3])
def test_bit_width_gives_two_to_the_k_levels(bits: int) -> None:
    quantizer = LQQuantizer(Config(bits=bits, signed=True, channels=1))
    out = quantizer(torch.linspace(-1, 1, 101)[None, :])
    assert len(set(out.flatten().tolist())) == 2**bits
