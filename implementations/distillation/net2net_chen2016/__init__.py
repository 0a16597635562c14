r"""Net2Net: Accelerating Learning via Knowledge Transfer (Chen, Goodfellow & Shlens, 2016).

Paper: [arXiv:1511.05641](https://arxiv.org/abs/1511.05641) · notes: `papers/net2net_chen2016.md`

Function-preserving transformations turn a trained network into a wider or deeper one that computes the same
function, so the larger network starts from the smaller one's solution.

**Net2WiderNet** widens hidden layer $i$ from $n$ to $q$ units with a mapping $g(j) = j$ for $j \le n$ and $g(j)$
drawn uniformly from $\{1, \dots, n\}$ for $j > n$:

$$
U^{(i)}_{k, j} = W^{(i)}_{k, g(j)}, \qquad
U^{(i+1)}_{j, h} = \frac{W^{(i+1)}_{g(j), h}}{\lvert \{x : g(x) = g(j)\} \rvert} .
$$

**Net2DeeperNet** inserts a layer initialised to the identity, $h = \phi(I\, \phi(W^\top v))$, which equals
$\phi(W^\top v)$ because $\phi(\phi(v)) = \phi(v)$ for $\phi = \mathrm{ReLU}$.

Here the transforms act on the shared `MLP` (`layers` + `head`; in PyTorch's layout $W^{(i)}$ is
`layers[i].weight.T`). The entrypoint `Net2Net` is the training task of the grown network: plain cross-entropy on
the student, which `Net2Net.grow` builds from the teacher (it is a `Distiller` only so that it plugs into the
family's smoke test; the teacher is not used in the loss).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import MLP
from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "Net2Net", "net2deeper", "net2wider", "reproduce"]


@dataclass(frozen=True)
class Config:
    """How the student is grown from the teacher."""

    width_factor: int = 2  # $q / n$ for every hidden layer
    extra_layers: int = 0  # identity layers appended by Net2DeeperNet
    noise: float = 1e-2  # std of the symmetry-breaking noise on copied units' incoming weights, relative to W's std


def net2wider(
    model: MLP, layer: int, new_width: int, noise: float = 0.0, generator: torch.Generator | None = None
) -> MLP:
    r"""Net2WiderNet on hidden layer `layer` of an `MLP`: a copy with `new_width` units computing the same function.

    Args:
        model: The network to widen (left unchanged).
        layer: Index $i$ into `model.layers`.
        new_width: $q \ge n$.
        noise: Relative std of Gaussian noise added to the copied units' incoming weights (0 = exact).
        generator: Draws $g(j)$ for $j > n$ and the noise.

    Returns:
        The widened copy.
    """
    wide = copy.deepcopy(model)
    incoming = wide.layers[layer]
    outgoing = wide.layers[layer + 1] if layer + 1 < len(wide.layers) else wide.head
    n = incoming.out_features
    if new_width < n:
        raise ValueError(f"new_width {new_width} is smaller than the current width {n}")
    # $g$: identity on the old units, a uniform draw for each new one.
    extra = torch.randint(0, n, (new_width - n,), generator=generator)
    mapping = torch.cat([torch.arange(n), extra])  # (q,)
    copies = torch.bincount(mapping, minlength=n).to(incoming.weight.dtype)  # |{x : g(x) = g(j)}| per old unit
    with torch.no_grad():
        w_in = incoming.weight[mapping].clone()  # (q, d_in): $U^{(i)}_{k,j} = W^{(i)}_{k,g(j)}$
        if noise > 0 and new_width > n:
            scale = noise * incoming.weight.std()
            w_in[n:] += scale * torch.randn(w_in[n:].shape, generator=generator)
        w_out = outgoing.weight[:, mapping] / copies[mapping]  # (d_out, q): divide by the number of copies
        new_in = nn.Linear(incoming.in_features, new_width, bias=incoming.bias is not None)
        new_out = nn.Linear(new_width, outgoing.out_features, bias=outgoing.bias is not None)
        new_in.weight.copy_(w_in)
        new_out.weight.copy_(w_out)
        if incoming.bias is not None:
            new_in.bias.copy_(incoming.bias[mapping])
        if outgoing.bias is not None:
            new_out.bias.copy_(outgoing.bias)
    wide.layers[layer] = new_in
    if layer + 1 < len(wide.layers):
        wide.layers[layer + 1] = new_out
    else:
        wide.head = new_out
    return wide


def net2deeper(model: MLP, layer: int) -> MLP:
    r"""Net2DeeperNet: a copy of `model` with an identity layer inserted after hidden layer `layer`.

    Args:
        model: The network to deepen (left unchanged); its hidden activation must be ReLU.
        layer: Index into `model.layers` after which the new layer goes.

    Returns:
        The deeper copy, computing the same function.
    """
    deep = copy.deepcopy(model)
    width = deep.layers[layer].out_features
    identity = nn.Linear(width, width)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(width))  # $U = I$
        identity.bias.zero_()
    deep.layers.insert(layer + 1, identity)
    return deep


class Net2Net(Distiller):
    """Training task of a network grown from `teacher`: cross-entropy on the student, nothing else."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    @classmethod
    def grow(cls, teacher: MLP, cfg: Config | None = None, generator: torch.Generator | None = None) -> Net2Net:
        """Widen every hidden layer by `width_factor`, append `extra_layers` identity layers, and wrap the result."""
        cfg = cfg or Config()
        student = copy.deepcopy(teacher).requires_grad_(True)
        for i, layer in enumerate(list(student.layers)):
            student = net2wider(student, i, layer.out_features * cfg.width_factor, cfg.noise, generator)
        for _ in range(cfg.extra_layers):
            student = net2deeper(student, len(student.layers) - 1)
        return cls(student, teacher, cfg)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"ce": CE(y, softmax(logits))}`."""
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits, y)}


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Grow a trained small MLP (wider; wider + deeper) and compare learning curves with random initialisation.

    The run is in `experiment.py`.
    """
    from implementations.distillation.net2net_chen2016.experiment import reproduce as run

    return run(ctx)
