"""Paper properties of Optimal Brain Surgeon (Hassibi & Stork, 1993), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from implementations._models import MLP
from implementations.pruning._base import sparsity
from implementations.pruning.obs_hassibi1993 import (
    OBS,
    gauss_newton_hessian,
    inverse_hessian_recursive,
    obd_saliency,
    obs_saliency,
    obs_update,
)


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)


def test_obs_step_is_the_constrained_minimum_of_the_quadratic() -> None:
    # At a minimum w*, E(w* + d) - E(w*) = d^T H d / 2. Deleting q costs exactly L_q with the OBS correction
    # (Eq. 5), and any other correction with d_q = -w_q costs more; OBD's saliency is the cost with no correction.
    hessian = _spd(6)
    w = torch.tensor([0.3, -1.2, 0.8, 0.05, -0.4, 1.5], dtype=torch.float64)
    hinv = torch.linalg.inv(hessian)
    saliency = obs_saliency(w, hinv.diagonal())
    for q in range(6):
        new_w, _ = obs_update(w, hinv.clone(), q)
        delta = new_w - w
        assert new_w[q] == 0.0
        assert torch.isclose(0.5 * delta @ hessian @ delta, saliency[q])
        others = [i for i in range(6) if i != q]
        assert torch.allclose((hessian @ delta)[others], torch.zeros(5, dtype=torch.float64), atol=1e-10)  # optimal
        plain = torch.zeros(6, dtype=torch.float64)
        plain[q] = -w[q]
        assert torch.isclose(0.5 * plain @ hessian @ plain, obd_saliency(w, hessian.diagonal())[q])
        assert 0.5 * plain @ hessian @ plain > saliency[q]  # off-diagonal H: the correction helps


def test_conditioned_inverse_is_the_inverse_of_the_remaining_block_and_recursion_matches() -> None:
    hessian = _spd(5, seed=1)
    hinv = torch.linalg.inv(hessian)
    w = torch.randn(5, dtype=torch.float64)
    w, hinv = obs_update(w, hinv, 2)
    w, hinv = obs_update(w, hinv, 0)
    keep = [1, 3, 4]
    assert torch.allclose(hinv[keep][:, keep], torch.linalg.inv(hessian[keep][:, keep]), atol=1e-10)
    assert hinv[[0, 2]].abs().max() < 1e-12 and hinv[:, [0, 2]].abs().max() < 1e-12
    # Eq. 8: the recursion over the patterns' vectors gives the inverse of alpha I + (1/P) sum X X^T.
    vectors = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    direct = torch.linalg.inv(1e-2 * torch.eye(4, dtype=torch.float64) + vectors.T @ vectors / 7)
    assert torch.allclose(inverse_hessian_recursive(vectors, 7, 1e-2), direct, rtol=1e-8)


def test_gauss_newton_hessian_matches_autograd_jacobians() -> None:
    model = MLP(3, 4, hidden=(5,))
    x = torch.randn(6, 3)
    params = dict(model.named_parameters())
    hessian = gauss_newton_hessian(model, x)
    expected = torch.zeros_like(hessian)
    for xi in x:

        def logits(*flat: torch.Tensor, xi: torch.Tensor = xi) -> torch.Tensor:
            values = dict(zip(params, flat, strict=True))
            return torch.func.functional_call(model, values, (xi[None],))[0]

        jac = torch.autograd.functional.jacobian(logits, tuple(p.detach() for p in params.values()))
        jac = torch.cat([j.flatten(1) for j in jac], dim=1).double()  # (K, P)
        p = F.softmax(model(xi[None])[0].detach().double(), dim=-1)
        expected += jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac / len(x)
    assert torch.allclose(hessian, expected, atol=1e-5)


def test_prune_deletes_exactly_the_requested_fraction_and_keeps_it_masked() -> None:
    task, x, y = OBS.smoke_task()
    weights = sum(m.weight.numel() for m in (task.model.layers[0], task.model.head))
    assert sparsity(task.model) == int(0.5 * weights) / weights
    _, losses = task.forward_train(x, y)
    losses["ce"].backward()
    assert (task.model.head.weight_orig.grad[task.model.head.weight_mask == 0] == 0).all()


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.obs_hassibi1993 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run obs_hassibi1993 --quick",
            "environment": env,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    obs, obd = result.row("obs_s80"), result.row("obd_s80")
    assert obs.nonzero_params == obd.nonzero_params < result.row("dense").nonzero_params
    reach = {n: result.row(f"{n}_s80").extra["max_sparsity_within_tolerance"] for n in ("obs", "obd", "magnitude")}
    assert result.claim.reproduced == (reach["obs"] > max(reach["obd"], reach["magnitude"]))
    assert len(result.answers) == 2 and (tmp_path / "results" / "figures" / "obs_hassibi1993_sparsity.png").exists()
