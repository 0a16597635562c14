"""Data loading: offline generators, the real on-disk formats of CIFAR / MNIST, errors, batching."""

from __future__ import annotations

import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from implementations._data import DataMissingError, augment_crop_flip, iterate_batches, load_dataset


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_mnist1d_is_generated_offline_and_cached(cache: Path) -> None:
    data = load_dataset("mnist1d")
    assert data.x_train.shape == (4000, 1, 40) and data.x_test.shape == (1000, 1, 40)
    assert data.num_classes == 10 and data.input_shape == (1, 40)
    assert set(data.y_train.tolist()) == set(range(10))
    assert abs(float(data.x_train.mean())) < 1e-4 and abs(float(data.x_train.std()) - 1) < 1e-3
    assert (cache / "mnist1d_default.npz").is_file()
    started = time.perf_counter()
    again = load_dataset("mnist1d")
    assert time.perf_counter() - started < 0.5  # read from the cache, not regenerated
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)


def test_n_train_subset_is_seeded(cache: Path) -> None:
    a = load_dataset("mnist1d", n_train=100, seed=1)
    b = load_dataset("mnist1d", n_train=100, seed=1)
    c = load_dataset("mnist1d", n_train=100, seed=2)
    assert a.n_train == 100 and a.n_test == 1000
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)


def test_digits_split_is_fixed_per_seed() -> None:
    a, b, c = load_dataset("digits"), load_dataset("digits"), load_dataset("digits", seed=1)
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.y_test, b.y_test) and not torch.equal(a.y_test, c.y_test)


def _cifar_batch(path: Path, values: list[int], labels: list[int], key: str) -> None:
    # Each image is constant: pixel value v, so order and content can be checked after standardisation.
    data = np.repeat(np.asarray(values, dtype=np.uint8)[:, None], 3 * 32 * 32, axis=1)  # (n, 3072), CHW rows
    with open(path, "wb") as f:
        pickle.dump({"data": data, key: labels, "batch_label": b"x"}, f)


def test_cifar10_reads_python_pickle_batches(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for i in range(1, 6):
        _cifar_batch(base / f"data_batch_{i}", [10 * i, 10 * i + 5], [i, i + 1], "labels")
    _cifar_batch(base / "test_batch", [7, 200, 3], [9, 0, 4], "labels")
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.x_train.shape == (10, 3, 32, 32) and data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.y_train.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6] and data.y_test.tolist() == [9, 0, 4]
    # Standardisation is increasing and per channel: the image order by brightness is preserved.
    raw = torch.tensor([10, 15, 20, 25, 30, 35, 40, 45, 50, 55], dtype=torch.float32)
    assert torch.equal(data.x_train[:, 0, 0, 0].argsort(), raw.argsort())
    assert data.x_test[1, 2, 5, 5] > data.x_test[0, 2, 5, 5] > data.x_test[2, 2, 5, 5]
    assert abs(float(data.x_train.mean())) < 1e-5


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    _cifar_batch(base / "train", [1, 2, 3], [99, 0, 42], "fine_labels")
    _cifar_batch(base / "test", [4], [17], "fine_labels")
    data = load_dataset("cifar100", data_dir=tmp_path)
    assert data.num_classes == 100 and data.y_train.tolist() == [99, 0, 42] and data.y_test.tolist() == [17]


def _idx(path: Path, array: np.ndarray) -> None:
    # IDX: magic = 0x00 0x00 <type 0x08 = ubyte> <ndim>, then big-endian int32 dims, then the raw bytes.
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_reads_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    images[np.arange(5), np.arange(5), 3] = 255  # image i has one bright pixel at row i, column 3
    _idx(raw / "train-images-idx3-ubyte", images)
    _idx(raw / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5]))
    _idx(raw / "t10k-images-idx3-ubyte", images[:2])
    _idx(raw / "t10k-labels-idx1-ubyte", np.array([9, 2]))
    data = load_dataset(name, data_dir=tmp_path)
    assert data.x_train.shape == (5, 1, 28, 28) and data.input_shape == (1, 28, 28)
    assert data.y_train.tolist() == [3, 1, 4, 1, 5] and data.y_test.tolist() == [9, 2]
    assert all(int(data.x_train[i, 0].argmax()) == i * 28 + 3 for i in range(5))


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("mnist", "MNIST")])
def test_missing_files_name_folder_and_flags(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataMissingError) as err:
        load_dataset(name, data_dir=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / folder) in message and "--data-dir" in message and "--download" in message


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet")


def test_iterate_batches_covers_every_example_once() -> None:
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    batches = list(iterate_batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    assert all(torch.equal(bx[:, 0].long(), by) for bx, by in batches)  # x and y stay aligned
    again = torch.cat([b[1] for b in iterate_batches(x, y, 4, True, torch.Generator().manual_seed(0))])
    assert torch.equal(seen, again)


def test_augment_crop_flip_shifts_and_flips() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    flipped = augment_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    out = augment_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output is some 5x5 window of the padded image, possibly mirrored
        windows = [padded[i, :, r : r + 5, c : c + 5] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_augment_crop_flip_takes_the_generator_second() -> None:
    """`fit()` calls `augment(x, generator)` positionally; the generator must not land in `padding`."""
    x = torch.randn(4, 3, 8, 8)
    a = augment_crop_flip(x, torch.Generator().manual_seed(5))
    b = augment_crop_flip(x, torch.Generator().manual_seed(5))
    c = augment_crop_flip(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))  # the default padding is still 4
    windows = [padded[0, :, r : r + 8, s : s + 8] for r in range(9) for s in range(9)]
    assert any(torch.equal(a[0], w) or torch.equal(a[0], w.flip(-1)) for w in windows)
