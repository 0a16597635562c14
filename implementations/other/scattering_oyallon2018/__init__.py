r"""Compressing the Input for CNNs with the First-Order Scattering Transform (Oyallon et al., 2018).

Paper: [arXiv:1809.10200](https://arxiv.org/abs/1809.10200) · notes: `papers/scattering_oyallon2018.md`

A fixed, non-learned front end replaces the first stages of a CNN. For a 1-D signal $x$, Morlet wavelets
$\psi_\lambda$ with centre frequencies $\xi_\lambda = \xi_0\, 2^{-\lambda / Q}$, $\lambda = 0, \dots, JQ - 1$
($Q$ wavelets per octave over $J$ octaves) and a Gaussian low-pass $\phi_J$ of width $\propto 2^J$ give the
first-order scattering transform

$$
S_J x = \Big\{\, x \star \phi_J,\ \ \big|x \star \psi_\lambda\big| \star \phi_J \ :\ 0 \le \lambda < JQ \Big\}
        \ \text{subsampled by } 2^J ,
$$

so each input channel of length $N$ becomes $1 + JQ$ channels of length $N / 2^J$, a size factor
$(1 + JQ) / 2^J$ (the paper's 2-D version with $L$ orientations has $(1 + JL) / 4^J$). The modulus and the
averaging make the coefficients locally invariant to shifts up to $2^J$ samples. A CNN with its early,
resolution-reducing stages removed is trained on $S_J x$.

The Morlet wavelet at scale $s_\lambda$ is $\psi_\lambda(t) = g_{s_\lambda}(t)\,(e^{i \xi_\lambda t} - \beta_\lambda)$,
$g_s$ a Gaussian of standard deviation $s$ and $\beta_\lambda$ chosen so that $\sum_t \psi_\lambda(t) = 0$ (no DC
response). Adjacent wavelets cross at half power: the frequency width is $\sigma_\lambda = \xi_\lambda
(1 - 2^{-1/Q}) / (2\sqrt{\ln 2})$, so $s_\lambda = 1 / \sigma_\lambda$.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "HybridCNN", "Scattering1D", "lowpass_filter", "morlet_filter_bank", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Scattering hyperparameters (1-D analogue of the paper's $J$ and $L$)."""

    J: int = 2  # $J$: number of octaves; averaging and subsampling by $2^J$ (the paper uses J = 2..4 on images)
    Q: int = 2  # $Q$: wavelets per octave (plays the role of the paper's L orientations)
    xi0: float = 3 * math.pi / 4  # $\xi_0$: centre frequency of the finest wavelet, rad/sample
    lowpass_width: float = 0.8  # std of $\phi_J$ in units of $2^J$ samples
    truncate: float = 3.0  # filters are cut at +- truncate x their std


def _gaussian(length: int, std: float) -> Tensor:
    t = torch.arange(length, dtype=torch.float64) - (length - 1) / 2  # centred support
    return torch.exp(-0.5 * (t / std) ** 2)


def morlet_filter_bank(cfg: Config) -> Tensor:
    r"""Zero-mean Morlet wavelets $\psi_\lambda$, as real and imaginary parts.

    Returns:
        Filters of shape `(2 JQ, 1, W)` (odd width $W$): rows $2\lambda$ and $2\lambda + 1$ are
        $\mathrm{Re}\,\psi_\lambda$ and $\mathrm{Im}\,\psi_\lambda$, each with unit $\ell_1$ norm of its modulus.
    """
    n = cfg.J * cfg.Q
    xis = [cfg.xi0 * 2 ** (-lam / cfg.Q) for lam in range(n)]
    sigmas = [xi * (1 - 2 ** (-1 / cfg.Q)) / (2 * math.sqrt(math.log(2))) for xi in xis]  # half-power crossing
    stds = [1 / s for s in sigmas]  # spatial std s_lambda
    width = 2 * math.ceil(cfg.truncate * max(stds)) + 1
    t = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    rows = []
    for xi, std in zip(xis, stds, strict=True):
        g = _gaussian(width, std)
        wave = torch.exp(1j * xi * t)  # (W,) complex
        beta = (g * wave).sum() / g.sum()  # makes sum_t psi(t) = 0
        psi = g * (wave - beta)
        psi = psi / psi.abs().sum()
        rows += [psi.real, psi.imag]
    return torch.stack(rows).unsqueeze(1).float()  # (2JQ, 1, W)


def lowpass_filter(cfg: Config) -> Tensor:
    r"""Gaussian low-pass $\phi_J$ with std `lowpass_width` $\cdot 2^J$ and unit sum, shape `(1, 1, W)`."""
    std = cfg.lowpass_width * 2**cfg.J
    width = 2 * math.ceil(cfg.truncate * std) + 1
    phi = _gaussian(width, std)
    return (phi / phi.sum()).float().view(1, 1, -1)


class Scattering1D(nn.Module):
    r"""First-order 1-D scattering $S_J$: fixed filters, modulus, low-pass averaging, subsampling by $2^J$."""

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.register_buffer("psi", morlet_filter_bank(self.cfg))  # (2JQ, 1, W_psi); buffers: nothing is learned
        self.register_buffer("phi", lowpass_filter(self.cfg))  # (1, 1, W_phi)

    @property
    def out_channels_per_input(self) -> int:
        """$1 + JQ$ maps per input channel."""
        return 1 + self.cfg.J * self.cfg.Q

    def forward(self, x: Tensor) -> Tensor:
        """Coefficients `(B, C (1 + JQ), ceil(L / 2^J))` of a signal `(B, C, L)`."""
        b, c, length = x.shape
        x = x.reshape(b * c, 1, length)  # each input channel separately
        pad_psi = self.psi.shape[-1] // 2
        # |x * psi_lambda|: complex modulus from the real and imaginary responses (Sec. 3, first order)
        resp = F.conv1d(_pad(x, pad_psi), self.psi)  # (BC, 2JQ, L)
        modulus = resp.view(b * c, -1, 2, length).pow(2).sum(2).add(1e-12).sqrt()  # (BC, JQ, L)
        maps = torch.cat([x, modulus], dim=1)  # (BC, 1 + JQ, L): order 0 and order 1
        # averaging by phi_J, then subsampling by 2^J
        pad_phi = self.phi.shape[-1] // 2
        k = maps.shape[1]
        pooled = F.conv1d(_pad(maps, pad_phi), self.phi.expand(k, 1, -1), stride=2**self.cfg.J, groups=k)
        return pooled.reshape(b, c * k, -1)  # (B, C (1 + JQ), L / 2^J)

    @classmethod
    def smoke_task(cls) -> tuple[nn.Module, Tensor, Tensor]:
        """A hybrid (scattering + one conv stage) CE task on a seeded `(8, 1, 40)` batch."""
        from implementations._harness import Supervised

        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = HybridCNN(cls(), (1, 40), num_classes=10, channels=(8,))
        x = torch.randn(8, 1, 40, generator=gen)  # (B, 1, 40)
        return Supervised(model), x, torch.randint(0, 10, (8,), generator=gen)


def _pad(x: Tensor, pad: int) -> Tensor:
    """Reflect padding where the signal is long enough, otherwise replicate (short signals, wide filters)."""
    return F.pad(x, (pad, pad), mode="reflect" if pad < x.shape[-1] else "replicate")


class HybridCNN(nn.Module):
    """An optional fixed or learned front end, then conv-BN-ReLU stages (kernel 5), flatten, linear head."""

    def __init__(
        self,
        front: nn.Module | None,
        in_shape: tuple[int, int],
        num_classes: int,
        channels: tuple[int, ...],
        strides: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.front = front if front is not None else nn.Identity()
        with torch.no_grad():
            c_in, length = self.front(torch.zeros(1, *in_shape)).shape[1:]
        self.input_norm = nn.BatchNorm1d(c_in)  # scattering moduli are not standardised like the raw input
        stages = []
        for c_out, stride in zip(channels, strides or (2,) * len(channels), strict=True):
            stages += [nn.Conv1d(c_in, c_out, 5, stride, 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]
            c_in, length = c_out, (length - 1) // stride + 1
        self.body = nn.Sequential(*stages)
        self.head = nn.Linear(c_in * length, num_classes)  # position matters in MNIST-1D: no global pooling

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of a signal `(B, C, L)`."""
        return self.head(self.body(self.input_norm(self.front(x))).flatten(1))


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Full CNN on raw MNIST-1D vs scattering + the CNN's later stages, vs same-budget raw/pooled/strided inputs.

    The run is in `experiment.py`.
    """
    from implementations.other.scattering_oyallon2018.experiment import reproduce as run

    return run(ctx)
