r"""Transferring and Compressing Convolutional Neural Networks for Face Representations (Grundström et al., 2016).

Paper: [ICIAR 2016](https://doi.org/10.1007/978-3-319-41501-7_3) · notes: `papers/transfercompress_grundstrom2016.md`

Three stages on little target data. (1) *Transfer*: a network pretrained on a large source task is fine-tuned to
classify the target identities; a hidden activation is the descriptor $\phi(x)$. (2) *Compression*: here by
removing filters (the paper's exact technique was not confirmed); every conv layer keeps the fraction $\rho$ of its
filters with the largest L1 norm $\lVert \mathcal{F}_j \rVert_1$, so a conv layer between two pruned layers keeps
$\rho^2$ of its weights (with $\rho = 1/3$ about $9\times$ fewer). (3) *Siamese training* of the compressed
descriptor on same/different pairs with the contrastive loss

$$
L = s\, d^2 + (1 - s) \max(0, m - d)^2, \qquad d = \lVert \phi(x_a) - \phi(x_b) \rVert_2 ,
$$

with $s = 1$ for a pair of the same identity. Verification thresholds $d$.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.pruning._base import channel_units, keep_top, prune_channels
from implementations.pruning.l1filter_li2017 import l1_filter_scores

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "TransferCompress", "contrastive_loss", "descriptor", "reproduce", "verification_accuracy"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the MNIST-1D analogue (digits 0-4 = "objects", digits 5-9 = "identities")."""

    keep: float = 1 / 3  # $\rho$, fraction of filters kept per conv layer (about 9x fewer conv weights)
    margin: float = 1.0  # $m$ of the contrastive loss, on unit-norm descriptors ($d \in [0, 2]$)
    width: float = 1.0  # CNN1d width of the large network: channels (32, 64, 64)
    target_train: int = 400  # labelled target examples
    source_epochs: int = 12  # pretraining on the source task
    finetune_epochs: int = 15  # fine-tuning on the target set (classification)
    siamese_epochs: int = 10  # Siamese (contrastive) training on target pairs
    lr: float = 0.05  # $\eta_0$ of pretraining and training from scratch
    finetune_lr: float = 0.01  # $\eta_0$ of fine-tuning and Siamese training


def descriptor(model: nn.Module, x: Tensor) -> Tensor:
    r"""$\phi(x)$: the flattened last conv stage, L2-normalised, shape `(B, C L)`."""
    return F.normalize(model(x, return_features=True)[1][-1].flatten(1), dim=-1)


def contrastive_loss(a: Tensor, b: Tensor, same: Tensor, margin: float) -> Tensor:
    r"""$s\, d^2 + (1 - s) \max(0, m - d)^2$ averaged over pairs, $d = \lVert a - b \rVert_2$.

    Args:
        a: Descriptors of the first items, shape `(P, D)`.
        b: Descriptors of the second items, shape `(P, D)`.
        same: $s$, 1.0 for a same-identity pair, shape `(P,)`.
        margin: $m$.
    """
    d = (a - b).norm(dim=-1)  # (P,)
    return (same * d**2 + (1 - same) * F.relu(margin - d) ** 2).mean()


def balanced_pairs(y: Tensor, n_pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """`(i, j, same)`: `n_pairs` index pairs, half from the same class and half from different classes."""
    same_class = y[:, None] == y[None, :]
    same_class.fill_diagonal_(False)
    first = torch.randint(0, len(y), (n_pairs,), generator=generator)
    want_same = torch.arange(n_pairs) % 2 == 0
    allowed = torch.where(want_same[:, None], same_class[first], ~(y[first][:, None] == y[None, :]))  # (P, N)
    ok = allowed.any(1)
    second = torch.multinomial(allowed[ok].float(), 1, generator=generator).squeeze(1)
    return first[ok], second, want_same[ok].float()


@torch.no_grad()
def verification_accuracy(
    model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], seed: int, n_pairs: int = 2000
) -> float:
    """Accuracy (%) on balanced test pairs of thresholding $d$, the threshold chosen on balanced training pairs."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)

    def distances(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        phi = descriptor(model, x)
        i, j, same = balanced_pairs(y, n_pairs, gen)
        return (phi[i] - phi[j]).norm(dim=-1), same

    d_train, s_train = distances(*train)
    candidates = d_train.sort().values  # (P,)
    correct = ((d_train[None, :] <= candidates[:, None]).float() == s_train[None, :]).float().mean(1)
    threshold = candidates[correct.argmax()]
    d_test, s_test = distances(*test)
    return 100 * float(((d_test <= threshold).float() == s_test).float().mean())


class TransferCompress(nn.Module):
    """A CNN1d task: classification (CE) or Siamese (contrastive on in-batch pairs); `compress()` removes filters."""

    def __init__(self, model: nn.Module, cfg: Config | None = None, siamese: bool = False) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()
        self.siamese = siamese

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def compress(self, keep: float | None = None) -> nn.Module:
        """A physically thinner copy keeping the top-L1 fraction `keep` of every conv layer's filters."""
        units, _ = channel_units(self.model)
        ratio = self.cfg.keep if keep is None else keep
        kept = [keep_top(l1_filter_scores(conv.weight), max(1, round(ratio * conv.out_channels))) for conv, _ in units]
        return prune_channels(self.model, kept)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` and either `{"ce"}` or `{"contrastive"}` over one balanced pair per example."""
        logits, features = self.model(x, return_features=True)
        if not self.siamese:
            return logits, {"ce": F.cross_entropy(logits, y)}
        phi = F.normalize(features[-1].flatten(1), dim=-1)  # (B, D)
        gen = torch.Generator().manual_seed(int(y.sum()) + len(y))  # pairs vary with the batch, reproducibly
        i, j, same = balanced_pairs(y.cpu(), len(y), gen)
        if len(i) == 0:
            return logits, {"contrastive": phi.sum() * 0}
        loss = contrastive_loss(phi[i.to(x.device)], phi[j.to(x.device)], same.to(x.device), self.cfg.margin)
        return logits, {"contrastive": loss}

    @classmethod
    def smoke_task(cls) -> tuple[TransferCompress, Tensor, Tensor]:
        """A tiny CNN1d compressed to a third of its filters, in Siamese mode."""
        from implementations._models import build_model

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        small = cls(build_model("cnn1d", 5, (1, 40), width=0.25)).compress()
        return cls(small, siamese=True), torch.randn(8, 1, 40, generator=gen), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run transfercompress_grundstrom2016`
# ---------------------------------------------------------------------------------------------------------------------


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """MNIST-1D analogue: pretrain on digits 0-4, fine-tune on few 5-9, remove 2/3 of the filters, Siamese stage. The
    run is in `experiment.py`."""
    from implementations.pruning.transfercompress_grundstrom2016.experiment import reproduce as run

    return run(ctx)
