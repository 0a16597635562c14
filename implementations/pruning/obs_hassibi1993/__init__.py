r"""Second Order Derivatives for Network Pruning: Optimal Brain Surgeon (Hassibi & Stork, 1993).

Paper: [NeurIPS 5](https://proceedings.neurips.cc/paper/1992/hash/303ed4c69846ab36c2904d3ba8573050-Abstract.html)
· notes: `papers/obs_hassibi1993.md`

Near a minimum the error grows as $\delta E \approx \tfrac12\, \delta w^\top H\, \delta w$. Deleting weight $q$
(the constraint $e_q^\top \delta w + w_q = 0$) with the least increase gives the correction of *all* weights and
the saliency of $q$ (Eq. 5 of the paper):

$$
\delta w = -\frac{w_q}{[H^{-1}]_{qq}}\, H^{-1} e_q, \qquad L_q = \frac{w_q^2}{2\,[H^{-1}]_{qq}} .
$$

Optimal Brain Damage (OBD) assumes a diagonal $H$ and makes no correction, $L_q^{\mathrm{OBD}} = \tfrac12 H_{qq}
w_q^2$; magnitude pruning uses $|w_q|$. $H$ is the outer-product (Gauss-Newton) approximation the paper builds
recursively from the $P$ training patterns, started from $H_0 = \alpha I$:

$$
H^{-1}_{m+1} = H^{-1}_m - \frac{H^{-1}_m X_{m+1} X_{m+1}^\top H^{-1}_m}{P + X_{m+1}^\top H^{-1}_m X_{m+1}} .
$$

A deleted weight must stay deleted in later steps, so after each deletion the inverse is conditioned on
$w_q = 0$: $H^{-1} \leftarrow H^{-1} - H^{-1} e_q e_q^\top H^{-1} / [H^{-1}]_{qq}$, which is exactly the inverse
Hessian of the remaining weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from implementations.pruning._base import apply_masks, prunable_layers

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "OBS",
    "Config",
    "gauss_newton_hessian",
    "inverse_hessian_recursive",
    "obd_saliency",
    "obs_prune",
    "obs_saliency",
    "obs_update",
    "reproduce",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the pruning run."""

    damping: float = 1e-4  # $\alpha$ of $H_0 = \alpha I$ (the paper uses $10^{-8} \le \alpha \le 10^{-4}$)
    hidden: int = 16  # width of the one-hidden-layer MLP (the paper's nets are this small)
    epochs: int = 60  # training epochs before pruning (close to a minimum, as OBS assumes)
    tolerance: float = 1.0  # training-error rise (points) that still counts as "the same error"


def obs_saliency(weights: Tensor, hinv_diag: Tensor) -> Tensor:
    r"""OBS saliency $L_q = w_q^2 / (2 [H^{-1}]_{qq})$, elementwise.

    Args:
        weights: $w$, shape `(P,)`.
        hinv_diag: Diagonal of $H^{-1}$, shape `(P,)`.
    """
    return weights**2 / (2 * hinv_diag)


def obd_saliency(weights: Tensor, hessian_diag: Tensor) -> Tensor:
    r"""OBD saliency $\tfrac12 H_{qq} w_q^2$, elementwise (LeCun et al., 1990)."""
    return 0.5 * hessian_diag * weights**2


def obs_update(weights: Tensor, hinv: Tensor, q: int, update: bool = True) -> tuple[Tensor, Tensor]:
    r"""Delete weight $q$: $w \leftarrow w - \frac{w_q}{[H^{-1}]_{qq}} H^{-1} e_q$ and condition $H^{-1}$ on $w_q=0$.

    Args:
        weights: $w$, shape `(P,)`.
        hinv: $H^{-1}$, shape `(P, P)`, symmetric.
        q: Index of the deleted weight.
        update: Apply the correction $\delta w$ to the other weights (False: only zero $w_q$).

    Returns:
        New weights `(P,)` with `w[q] == 0`, and the conditioned inverse `(P, P)` (row and column $q$ zero),
        updated in place.
    """
    column = hinv[:, q].clone()  # H^{-1} e_q, (P,)
    pivot = column[q]  # [H^{-1}]_{qq}
    weights = weights - (weights[q] / pivot) * column if update else weights.clone()
    weights[q] = 0.0  # exact zero (the correction gives 0 up to rounding)
    hinv.addr_(column, column, alpha=-1.0 / float(pivot))  # in place: inverse of H on the remaining weights
    return weights, hinv


def obs_prune(
    weights: Tensor, hessian: Tensor, prunable: Tensor, counts: list[int], selection: str = "obs", update: bool = True
) -> list[Tensor]:
    r"""Delete weights one at a time, returning the weight vector after each number of deletions in `counts`.

    Args:
        weights: $w$, shape `(P,)` (float64 recommended).
        hessian: $H$ at the trained weights, shape `(P, P)`, positive definite.
        prunable: Boolean mask `(P,)` of the entries that may be deleted (others, e.g. biases, only get corrected).
        counts: Increasing numbers of deletions at which to snapshot `w`.
        selection: `"obs"` (smallest $L_q$ with the current inverse) or `"obd"` (smallest $\tfrac12 H_{qq} w_q^2$).
        update: Apply the OBS correction after each deletion.
    """
    hinv = torch.linalg.inv(hessian)
    alive = prunable.clone()
    out, done = [], 0
    for target in counts:
        while done < target:
            if selection == "obs":
                scores = obs_saliency(weights, hinv.diagonal())
            else:
                scores = obd_saliency(weights, hessian.diagonal())
            q = int(torch.where(alive, scores, torch.full_like(scores, torch.inf)).argmin())
            weights, hinv = obs_update(weights, hinv, q, update)
            alive[q] = False
            done += 1
        deleted = prunable & ~alive
        out.append(weights.masked_fill(deleted, 0.0))  # rounding can leave ~1e-16 on deleted entries
    return out


def _jacobian(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example Jacobian of the logits w.r.t. all parameters of a network of `nn.Linear` layers.

    A linear layer's weight gradient for one example is the outer product of the gradient at its output and its
    input, so $K$ backward passes give the whole Jacobian.

    Returns:
        `(J, logits)`, shapes `(N, K, P)` and `(N, K)`.
    """
    owners = {id(p): m for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    if len(owners) != sum(1 for _ in model.parameters()):
        raise TypeError("gauss_newton_hessian supports networks whose parameters all belong to nn.Linear layers")
    inputs: dict[nn.Module, Tensor] = {}
    outputs: dict[nn.Module, Tensor] = {}

    def keep(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        inputs[module], outputs[module] = args[0].detach(), out

    hooks = [m.register_forward_hook(keep) for m in {id(m): m for m in owners.values()}.values()]
    try:
        with torch.enable_grad():
            logits = model(x)  # (N, K)
            layers = list(outputs)
            columns = []
            for k in range(logits.shape[1]):
                deltas = torch.autograd.grad(logits[:, k].sum(), [outputs[m] for m in layers], retain_graph=True)
                delta = dict(zip(layers, deltas, strict=True))  # per example: examples do not interact
                parts = []
                for p in model.parameters():
                    m = owners[id(p)]
                    if p is m.weight:
                        parts.append((delta[m][:, :, None] * inputs[m][:, None, :]).flatten(1))  # (N, out*in)
                    else:
                        parts.append(delta[m])  # bias, (N, out)
                columns.append(torch.cat(parts, dim=1))
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(columns, dim=1), logits.detach()


def gauss_newton_hessian(model: nn.Module, x: Tensor, damping: float = 0.0, chunk: int = 512) -> Tensor:
    r"""Outer-product Hessian of the mean cross-entropy at the model's current weights, plus damping:

    $$
    H = \frac1N \sum_n J_n^\top (\mathrm{diag}\,p_n - p_n p_n^\top) J_n + \alpha I
      = \frac1N \sum_{n,k} p_{nk}\, c_{nk} c_{nk}^\top + \alpha I,
      \qquad c_{nk} = J_{nk} - \textstyle\sum_j p_{nj} J_{nj},
    $$

    with $J_{nk} = \partial z_{nk} / \partial w$ (the paper's vectors $X$). Terms with $p_{nk} < 10^{-6}$ are
    skipped (their share is below $10^{-6} \lVert c_{nk} \rVert^2$); products in float32, sum in float64.

    Args:
        model: Network of `nn.Linear` layers with parameters $w$ (in `parameters()` order).
        x: Training inputs, shape `(N, ...)`.
        damping: $\alpha$.
        chunk: Examples per Jacobian batch.

    Returns:
        $H$ in float64, shape `(P, P)`.
    """
    num_params = sum(p.numel() for p in model.parameters())
    hessian = torch.zeros(num_params, num_params, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        jacobian, logits = _jacobian(model, x[start : start + chunk])  # (B, K, P), (B, K)
        probs = F.softmax(logits, dim=-1)  # (B, K)
        centred = jacobian - torch.einsum("bk,bkp->bp", probs, jacobian)[:, None, :]  # c_{nk}, (B, K, P)
        keep = probs > 1e-6
        rows = centred[keep] * probs[keep].sqrt()[:, None]  # (R, P)
        hessian += (rows.T @ rows).double()
    return hessian / len(x) + damping * torch.eye(num_params, dtype=torch.float64)


def inverse_hessian_recursive(vectors: Tensor, num_patterns: int, alpha: float) -> Tensor:
    r"""The paper's recursion (Eq. 8) for $H^{-1}$ with $H = \alpha I + \frac1P \sum_k X_k X_k^\top$.

    Args:
        vectors: The $X_k$, shape `(M, P_w)` (one row per pattern and output).
        num_patterns: $P$, the divisor of the outer products.
        alpha: $\alpha$ of $H_0 = \alpha I$.
    """
    hinv = torch.eye(vectors.shape[1], dtype=vectors.dtype) / alpha
    for x in vectors:
        hx = hinv @ x  # (P_w,)
        hinv = hinv - torch.outer(hx, hx) / (num_patterns + x @ hx)
    return hinv


class OBS(nn.Module):
    """A model pruned by Optimal Brain Surgeon; the zeros are kept by `torch.nn.utils.prune` masks."""

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the cross-entropy (the error $E$ whose Hessian OBS uses)."""
        logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y)}

    def prunable(self) -> Tensor:
        """Boolean mask `(P,)` over the flat parameters: True on the weights of linear/conv layers, not biases."""
        weight_ids = {id(m.weight) for _, m in prunable_layers(self.model)}
        return torch.cat([torch.full((p.numel(),), id(p) in weight_ids) for p in self.model.parameters()])

    @torch.no_grad()
    def prune(self, x: Tensor, sparsity: float, selection: str = "obs", update: bool = True) -> None:
        """Delete `sparsity` of the weights one by one (Hessian from inputs `x`) and fix the zeros with masks."""
        prunable = self.prunable()
        with torch.enable_grad():
            hessian = gauss_newton_hessian(self.model, x, self.cfg.damping)
        flat = parameters_to_vector(self.model.parameters()).double()
        (flat,) = obs_prune(flat, hessian, prunable, [int(sparsity * int(prunable.sum()))], selection, update)
        vector_to_parameters(flat.float(), self.model.parameters())
        apply_masks(self.model, {name: (m.weight != 0).float() for name, m in prunable_layers(self.model)})

    @classmethod
    def smoke_task(cls) -> tuple[OBS, Tensor, Tensor]:
        """A tiny MLP pruned to 50% by OBS, for the generic smoke test."""
        from implementations._models import MLP

        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        x, y = torch.randn(8, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        task = cls(MLP(40, 10, hidden=(8,)))
        task.prune(x, 0.5)
        return task, x, y


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Magnitude, OBD and OBS pruning without retraining of the same trained MLP on digits, over `ctx.seeds`.

    The run is in `experiment.py`.
    """
    from implementations.pruning.obs_hassibi1993.experiment import reproduce as run

    return run(ctx)
