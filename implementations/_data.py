r"""Datasets as in-memory tensors, and a batch iterator that works on any device.

Every loader returns a `TensorData`: float inputs $x \in \mathbb{R}^{N \times C \times \dots}$ standardised with the
training-set channel statistics, and integer labels $y \in \{0, \dots, K-1\}^N$. Keeping the whole data set as
tensors (instead of a `DataLoader` of PIL images) lets `fit()` move it to the GPU once and slice batches there.

Sources:

- `mnist1d`: generated offline by the `mnist1d` package with its defaults (4000 train / 1000 test, length 40,
  10 classes) and cached as `.npz` under `$KB_CACHE` (default `~/.cache/compression-kb`).
- `digits`: `sklearn.datasets.load_digits` (8x8 images), a fixed seeded 80/20 split.
- `cifar10`, `cifar100`: the CIFAR "python version" pickle batches under `data_dir`. torchvision is used to
  download them; they are read here because torchvision also verifies each batch's MD5, which would reject the tiny
  fixture files the tests write in the same format.
- `mnist`, `fashion-mnist`: the IDX files, read through `torchvision.datasets.MNIST` / `FashionMNIST`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "DataMissingError",
    "TensorData",
    "augment_crop_flip",
    "cache_dir",
    "iterate_batches",
    "load_dataset",
]

DATASETS = ("mnist1d", "digits", "cifar10", "cifar100", "mnist", "fashion-mnist")


class DataMissingError(FileNotFoundError):
    """The files of a data set are not on disk and downloading was not allowed."""


@dataclass(frozen=True)
class TensorData:
    """A classification data set held as tensors."""

    x_train: Tensor  # (N, *input_shape), float32
    y_train: Tensor  # (N,), int64
    x_test: Tensor  # (M, *input_shape), float32
    y_test: Tensor  # (M,), int64
    num_classes: int  # $K$
    input_shape: tuple[int, ...]  # e.g. (1, 40) for MNIST-1D, (3, 32, 32) for CIFAR
    name: str = ""  # data set name, for reports

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return len(self.y_test)

    def to(self, device: torch.device | str) -> TensorData:
        """Return a copy whose tensors live on `device` (no copy when they already do)."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> TensorData:
        """Return a seeded random subset of the training (and optionally test) examples."""
        gen = torch.Generator().manual_seed(seed)
        out = self
        if n_train is not None and n_train < self.n_train:
            idx = torch.randperm(self.n_train, generator=gen)[:n_train].to(self.x_train.device)
            out = replace(out, x_train=self.x_train[idx], y_train=self.y_train[idx])
        if n_test is not None and n_test < self.n_test:
            idx = torch.randperm(self.n_test, generator=gen)[:n_test].to(self.x_test.device)
            out = replace(out, x_test=self.x_test[idx], y_test=self.y_test[idx])
        return out


def cache_dir() -> Path:
    """The cache folder: `$KB_CACHE` if set, else `~/.cache/compression-kb`."""
    return Path(os.environ.get("KB_CACHE") or Path.home() / ".cache" / "compression-kb")


def iterate_batches(
    x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield `(x[i], y[i])` mini-batches; the permutation is drawn on the CPU, then indexes `x` where it lives.

    Args:
        x: Inputs, shape `(N, ...)`, on any device.
        y: Labels, shape `(N,)`, on the same device.
        batch_size: Batch size $B$; the last batch may be smaller.
        shuffle: Draw a random permutation first.
        generator: CPU generator for the permutation (seed it for reproducible order).
    """
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


def augment_crop_flip(x: Tensor, generator: torch.Generator | None = None, *, padding: int = 4) -> Tensor:
    """Random crop with zero padding plus random horizontal flip, on a batch of images on any device.

    The signature follows `fit()`'s `augment(x, generator)` contract, so the function can be passed as is.

    Args:
        x: Images, shape `(B, C, H, W)`.
        generator: CPU generator for the offsets and flips.
        padding: Pixels of zero padding on each side before cropping back to `(H, W)`.

    Returns:
        Augmented images, shape `(B, C, H, W)`.
    """
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]  # (B, 1, H, 1)
    cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


# ---------------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------------


def _standardise(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    """Subtract the per-channel training mean and divide by the per-channel training std (dim 1 is channels)."""
    dims = [d for d in range(x_train.dim()) if d != 1]
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (x_train - mean) / std, (x_test - mean) / std


def _load_mnist1d() -> tuple[np.ndarray, ...]:
    path = cache_dir() / "mnist1d_default.npz"
    if path.exists():
        with np.load(path) as f:
            return f["x"], f["y"], f["x_test"], f["y_test"]
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())  # seeded by the package (seed 42): identical on every machine
    arrays = {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"]


def _load_digits(seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    y = digits.target
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _missing(name: str, folder: Path, expected: str) -> DataMissingError:
    return DataMissingError(
        f"{name}: files not found in {folder} (expected {expected}). Pass --data-dir pointing to the folder that "
        f"holds them, or --download to fetch them (download=True)."
    )


def _read_cifar(name: str, root: Path, download: bool) -> tuple[np.ndarray, ...]:
    folder, train_files, test_files, label_key = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
    }[name]
    base = root / folder
    needed = [base / f for f in train_files + test_files]
    if not all(p.is_file() for p in needed) and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        cls(str(root), train=True, download=True)
    if not all(p.is_file() for p in needed):
        raise _missing(name, base, ", ".join(train_files + test_files))

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            with open(base / f, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(entry[label_key])
        return np.concatenate(xs), np.asarray(ys, dtype=np.int64)

    x_tr, y_tr = read(train_files)
    x_te, y_te = read(test_files)
    return x_tr.astype(np.float32) / 255.0, y_tr, x_te.astype(np.float32) / 255.0, y_te


def _read_mnist(name: str, root: Path, download: bool) -> tuple[np.ndarray, ...]:
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        raise _missing(
            name, root / cls.__name__ / "raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*"
        ) from err
    x_tr = train.data.numpy().astype(np.float32)[:, None] / 255.0  # (N, 1, 28, 28)
    x_te = test.data.numpy().astype(np.float32)[:, None] / 255.0
    return x_tr, train.targets.numpy(), x_te, test.targets.numpy()


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    n_train: int | None = None,
    seed: int = 0,
    n_test: int | None = None,
) -> TensorData:
    """Load a data set as standardised CPU tensors.

    Args:
        name: One of `DATASETS`.
        data_dir: Folder holding the torchvision-format files (CIFAR, MNIST); defaults to `cache_dir()/data`.
        download: Allow torchvision to download missing files.
        n_train: Keep a seeded random subset of this many training examples (statistics use the full set).
        seed: Seed of the `digits` split and of the subsets.
        n_test: Keep a seeded random subset of this many test examples.

    Raises:
        DataMissingError: The files are missing and `download` is False; the message names the folder.
        ValueError: Unknown data set name.
    """
    root = Path(data_dir) if data_dir is not None else cache_dir() / "data"
    if name == "mnist1d":
        x_tr, y_tr, x_te, y_te = _load_mnist1d()
        x_tr, x_te = x_tr[:, None], x_te[:, None]  # (N, 1, 40): one input channel
    elif name == "digits":
        x_tr, y_tr, x_te, y_te = _load_digits(seed)
    elif name in ("cifar10", "cifar100"):
        x_tr, y_tr, x_te, y_te = _read_cifar(name, root, download)
    elif name in ("mnist", "fashion-mnist"):
        x_tr, y_tr, x_te, y_te = _read_mnist(name, root, download)
    else:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    num_classes = {"cifar100": 100}.get(name, 10)
    x_train, x_test = _standardise(
        torch.as_tensor(np.asarray(x_tr, dtype=np.float32)), torch.as_tensor(np.asarray(x_te, dtype=np.float32))
    )
    data = TensorData(
        x_train=x_train.contiguous(),
        y_train=torch.as_tensor(np.asarray(y_tr), dtype=torch.long),
        x_test=x_test.contiguous(),
        y_test=torch.as_tensor(np.asarray(y_te), dtype=torch.long),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
        name=name,
    )
    return data.subset(n_train, n_test, seed=seed)
