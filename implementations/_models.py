r"""Small reference networks shared by the reproductions.

Every model has `forward(x, return_features=False)`: it returns the logits $z \in \mathbb{R}^{B \times K}$, or
`(logits, features)` where `features` holds one tensor per stage (the hidden activations of an MLP, the feature
map after each conv stage), which feature-distillation methods (FitNets, AT, CRD, ...) hook into. Conv nets use
BatchNorm after every convolution, so network-slimming pruning can read the BN scales $\gamma$.

The CIFAR ResNets follow the CRD / mdistiller definitions: a 3x3 stem with `channels[0]` filters, then three
stages of $n = (\text{depth} - 2) / 6$ basic blocks with `channels[1:]` filters (stride 1, 2, 2), global average
pooling and a linear head. `resnet8x4` ($n=1$) and `resnet32x4` ($n=5$) use channels $[32, 64, 128, 256]$.
"""

from __future__ import annotations

import re

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CNN1d", "CNN2d", "MLP", "MODELS", "BasicBlock", "CifarResNet", "build_model"]

MODELS = ("mlp", "cnn1d", "cnn2d", "resnet<depth>", "resnet8x4", "resnet32x4")


def _scaled(channels: list[int] | tuple[int, ...], width: float) -> list[int]:
    return [max(1, round(c * width)) for c in channels]


def _output(logits: Tensor, features: list[Tensor], return_features: bool) -> Tensor | tuple[Tensor, list[Tensor]]:
    return (logits, features) if return_features else logits


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits `(B, K)`; features are the hidden activations `(B, H_l)`."""
        h = x.flatten(1)  # (B, D)
        features = []
        for layer in self.layers:
            h = F.relu(layer(h))  # (B, H_l)
            features.append(h)
        return _output(self.head(h), features, return_features)


class CNN1d(nn.Module):
    """1-D conv net for MNIST-1D: three stride-2 conv-BN-ReLU stages, flatten, linear."""

    def __init__(self, in_channels: int, length: int, num_classes: int, channels: tuple[int, ...] = (32, 64, 64)):
        super().__init__()
        self.in_channels = in_channels  # C
        stages, c_in = [], in_channels
        for c_out in channels:
            stages.append(
                nn.Sequential(
                    nn.Conv1d(c_in, c_out, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()
                )
            )
            c_in, length = c_out, (length - 1) // 2 + 1
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c_in * length, num_classes)  # position matters in MNIST-1D: no global pooling

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits `(B, K)` from inputs `(B, C, L)` (or `(B, L)`); features are `(B, C_s, L_s)` per stage."""
        # (B, L) -> (B, 1, L), (B, C, L) unchanged, with no branch on x.dim() so torch.fx can trace it (a view that
        # only inserts a size-1 dim works on any strides; torch.ao quantizes through `view`, not through `reshape`)
        h = x.view(x.size(0), self.in_channels, x.size(-1))  # (B, C, L)
        features = []
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        return _output(self.head(h.flatten(1)), features, return_features)


class CNN2d(nn.Module):
    """2-D conv net: conv-BN-ReLU stages (max-pool between them), global average pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, channels: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        stages, c_in = [], in_channels
        for i, c_out in enumerate(channels):
            layers = [] if i == 0 else [nn.MaxPool2d(2, ceil_mode=True)]
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits `(B, K)` from images `(B, C, H, W)`; features are `(B, C_s, H_s, W_s)` per stage."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return _output(self.head(x.mean(dim=(2, 3))), features, return_features)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut (He et al., 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        r"""$\mathrm{ReLU}(\mathrm{BN}(W_2 * \mathrm{ReLU}(\mathrm{BN}(W_1 * x))) + \mathrm{shortcut}(x))$."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth $6n + 2$: stem, three stages of $n$ basic blocks, global average pool, linear."""

    def __init__(self, depth: int, channels: list[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU()
        )
        stages, c_in = [], channels[0]
        for i, c_out in enumerate(channels[1:]):
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits `(B, K)`; features are the stem output and each stage output, `(B, C_s, H_s, W_s)`."""
        x = self.stem(x)
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return _output(self.head(x.mean(dim=(2, 3))), features, return_features)


def build_model(name: str, num_classes: int, in_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """Build a model by name.

    Args:
        name: `mlp`, `cnn1d`, `cnn2d`, `resnet<depth>` (channels $[16, 16, 32, 64]$ times `width`, e.g.
            `resnet20`), `resnet8x4` or `resnet32x4` (channels $[32, 64, 128, 256]$ times `width`).
        num_classes: Number of classes $K$.
        in_shape: Shape of one input without the batch dimension, e.g. `(1, 40)` or `(3, 32, 32)`.
        width: Width multiplier applied to every hidden size / channel count.

    Raises:
        ValueError: Unknown name, or an input shape the model cannot take.
    """
    numel = 1
    for s in in_shape:
        numel *= s
    if name == "mlp":
        return MLP(numel, num_classes, tuple(_scaled([256, 256], width)))
    if name == "cnn1d":
        if len(in_shape) not in (1, 2):
            raise ValueError(f"cnn1d needs (C, L) or (L,) inputs, got {in_shape}")
        c, length = (1, in_shape[0]) if len(in_shape) == 1 else in_shape
        return CNN1d(c, length, num_classes, tuple(_scaled([32, 64, 64], width)))
    if len(in_shape) != 3 and name != "mlp":
        raise ValueError(f"{name} needs (C, H, W) image inputs, got {in_shape}")
    if name == "cnn2d":
        return CNN2d(in_shape[0], num_classes, tuple(_scaled([32, 64, 128], width)))
    match = re.fullmatch(r"resnet(\d+)(x4)?", name)
    if match:
        base = [32, 64, 128, 256] if match.group(2) else [16, 16, 32, 64]
        return CifarResNet(int(match.group(1)), _scaled(base, width), num_classes, in_channels=in_shape[0])
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
