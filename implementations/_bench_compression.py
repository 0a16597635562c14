r"""Pruning and quantization leaderboards under ONE protocol: matched sparsity, matched channels, matched bits.

Every method starts from the same trained dense network (a full-width 1-D CNN on MNIST-1D, one per seed) and is held
to the same budget, so only the paper's criterion or schedule differs:

* **Unstructured weights** (pruning): every conv and linear weight tensor at the same sparsity $s$ (per layer), then
  the same number of fine-tuning epochs, masks fixed by `torch.nn.utils.prune`. The baseline removes random weights.
* **Channels removed** (pruning): the same fraction $f$ of every conv stage's output channels is *physically*
  removed (smaller tensors, fewer FLOPs), then the same fine-tuning. The baseline removes random channels.
* **Conv FLOPs budget** (low-rank): every spatial conv with at least two input channels of a 2-D CNN on 8x8 digits
  is factorised to at most a fraction $f$ of its multiply-adds, then fine-tuned the same epochs. The baseline is
  the channel-wise truncated SVD (filter group approximation with one group).
* **Weight-only post-training quantization** (quantization): every conv and linear weight tensor coded with $b$
  bits (one codebook or scale per tensor), no retraining. The baseline rounds to the nearest step of a uniform
  absmax grid.

Methods whose schedule changes training (soft filter pruning, network slimming, the gradual schedule, iterative
magnitude pruning) spend the same fine-tuning epochs inside their own schedule. Papers whose mechanism does not fit a
budget (DSD ends dense; OBS needs an $N \times N$ inverse Hessian; quantization-aware training methods train
through the quantizer) are listed with the reason instead of being forced into a protocol that is not theirs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CompressionConfig", "bench_architecture", "bench_automl", "bench_low_rank", "bench_pruning",
           "bench_quantization"]


@dataclass(frozen=True)
class CompressionConfig:
    """The shared protocol; `quick` shrinks it to a smoke run."""

    dataset: str = "mnist1d"
    model: tuple[str, float] = ("cnn1d", 1.0)  # channels 32-64-64, 34,410 parameters
    seeds: tuple[int, ...] = (0, 1)  # one dense network per seed
    dense_epochs: int = 10
    finetune_epochs: int = 3  # the same for every pruning method and budget
    lr: float = 0.05  # dense training (SGD momentum 0.9, cosine, weight decay 5e-4: the harness defaults)
    finetune_lr: float = 0.01
    batch_size: int = 64
    sparsities: tuple[float, ...] = (0.8, 0.95)  # unstructured: fraction of every weight tensor removed
    channel_fractions: tuple[float, ...] = (0.5, 0.75)  # structured: fraction of every stage's channels removed
    bits: tuple[int, ...] = (2, 3, 4)  # weight-only post-training quantization
    calibration: int = 1000  # training examples for data-driven criteria (APoZ, Taylor, ThiNet, Fisher)


QUICK = CompressionConfig(seeds=(0,), dense_epochs=1, finetune_epochs=1, sparsities=(0.8,), channel_fractions=(0.5,),
                          bits=(2,), calibration=200)

NOT_IN_PROTOCOL_PRUNING = {
    "dsd_han2017": "dense-sparse-dense ends with a dense network: there is no sparsity budget to match",
    "obs_hassibi1993": "OBS needs the inverse Hessian over all weights (34,410^2 entries here); its own page runs "
                       "it on a small MLP",
    "dns_guo2016": "surgery is driven by magnitude thresholds, not by a target sparsity",
}
NOT_IN_PROTOCOL_QUANT = {
    "lab_hou2017": "quantization-aware training (binarization inside the loss), not post-training",
    "hwgq_cai2017": "quantization-aware training of activations, not post-training weight coding",
    "wage_wu2018": "integer training of weights, activations, gradients and errors",
    "qmimic_wei2018": "trains a quantized student against a full-precision teacher",
    "softweightsharing_ullrich2017": "learns the codebook during (re)training with a mixture prior",
}


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    cfg: CompressionConfig
    data: Any
    seed: int
    dense: nn.Module
    progress: bool

    def calibration(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        index = torch.randperm(self.data.n_train, generator=gen)[: self.cfg.calibration]
        return self.data.x_train[index], self.data.y_train[index]

    def finetune(self, task: nn.Module, epochs: int | None = None, **kwargs: Any) -> None:
        from implementations._harness import fit

        epochs = self.cfg.finetune_epochs if epochs is None else epochs
        if epochs > 0:
            fit(task, task.parameters(), self.data, epochs=epochs, lr=self.cfg.finetune_lr,
                batch_size=self.cfg.batch_size, seed=self.seed, progress=self.progress, **kwargs)


def _size(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Parameters, nonzero parameters, sparse bytes (fp32 values + int32 indices of the nonzeros), FLOPs."""
    from implementations._measure import count_flops, count_nonzero, count_params, dense_bytes

    model = copy.deepcopy(model)
    from implementations.pruning._base import remove_masks

    remove_masks(model)
    nonzero = count_nonzero(model)
    params = count_params(model)
    # the cheaper of dense storage and a COO-style list of (value, index) pairs
    size = min(dense_bytes(model), 8 * nonzero)
    return {"params": params, "nonzero_params": nonzero, "bytes": size,
            "flops": count_flops(model, torch.zeros(1, *input_shape))}


def _dense_model(cfg: CompressionConfig, data: Any, seed: int, progress: bool) -> nn.Module:
    from implementations._harness import Supervised, fit, seed_everything
    from implementations._models import build_model

    seed_everything(seed)
    model = build_model(cfg.model[0], data.num_classes, data.input_shape, width=cfg.model[1])
    fit(Supervised(model), model.parameters(), data, epochs=cfg.dense_epochs, lr=cfg.lr,
        batch_size=cfg.batch_size, seed=seed, progress=progress)
    return model


def _collect(rows: dict[tuple, dict[str, Any]], key: tuple, accuracy: float, size: dict[str, Any]) -> None:
    row = rows.setdefault(key, {"values": [], **size})
    row["values"].append(accuracy)


def _run(fn: Callable[[], tuple[nn.Module, Any]], failures: dict[str, str], paper: str):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one method's failure must not hide the others
        failures[paper] = f"{type(exc).__name__}: {exc}"
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Pruning: unstructured weights at matched sparsity
# ---------------------------------------------------------------------------------------------------------------------


def _masked(model: nn.Module, score: Callable[[Tensor], Tensor], sparsity: float) -> nn.Module:
    """A copy of `model` with every prunable weight masked to `sparsity` by `score` (higher = keep)."""
    from implementations.pruning._base import apply_masks, layer_masks, prunable_layers

    model = copy.deepcopy(model)
    apply_masks(model, layer_masks(prunable_layers(model), lambda w, g=None: score(w), sparsity))
    return model


def _unstructured_methods(s: _Setup, sparsity: float) -> list[tuple[str, str, bool, Callable[[], nn.Module]]]:
    """(paper, method label, is baseline, run) of every unstructured method at `sparsity`."""
    from implementations._harness import Supervised
    from implementations.pruning import gradual_zhu2017, magnitude_han2015
    from implementations.pruning._base import apply_masks, layer_masks, prunable_layers

    def random_prune() -> nn.Module:
        gen = torch.Generator().manual_seed(s.seed)
        model = _masked(s.dense, lambda w: torch.rand(w.shape, generator=gen), sparsity)
        s.finetune(Supervised(model))
        return model

    def one_shot() -> nn.Module:
        model = _masked(s.dense, magnitude_han2015.magnitude_scores, sparsity)
        s.finetune(Supervised(model))
        return model

    def iterative() -> nn.Module:  # Han et al.: prune and retrain in steps, one fine-tuning epoch per step
        model = copy.deepcopy(s.dense)
        steps = max(1, s.cfg.finetune_epochs)
        for target in magnitude_han2015.iterative_sparsities(sparsity, steps):
            apply_masks(model, layer_masks(prunable_layers(model), magnitude_han2015.magnitude_scores, target))
            s.finetune(Supervised(model), epochs=1 if s.cfg.finetune_epochs else 0)
        return model

    def gradual() -> nn.Module:  # Zhu & Gupta: the cubic ramp over the first two thirds of fine-tuning
        model = copy.deepcopy(s.dense)
        steps = s.cfg.finetune_epochs * math.ceil(s.data.n_train / s.cfg.batch_size)
        n = 10
        cfg = gradual_zhu2017.Config(final_sparsity=sparsity, pruning_steps=n, frequency=max(1, (2 * steps) // (3 * n)),
                                     skip_first=False)
        task = gradual_zhu2017.GradualPruning(model, cfg)
        if steps == 0:
            task.update_masks(sparsity)
        s.finetune(task)
        task.update_masks(sparsity)  # the schedule ends exactly at the budget (no-op when it already has)
        return model

    return [
        ("magnitude_han2015", "random weights", True, random_prune),
        ("magnitude_han2015", "magnitude, one-shot", False, one_shot),
        ("magnitude_han2015", "magnitude, iterative", False, iterative),
        ("gradual_zhu2017", "gradual cubic schedule", False, gradual),
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Pruning: channels physically removed at a matched fraction
# ---------------------------------------------------------------------------------------------------------------------


def _keep(scores: list[Tensor], fraction: float) -> list[Tensor]:
    from implementations.pruning._base import keep_top

    return [keep_top(sc, sc.numel() - math.floor(fraction * sc.numel())) for sc in scores]


def _structured_methods(s: _Setup, fraction: float) -> list[tuple[str, str, bool, Callable[[], nn.Module]]]:
    """(paper, method label, is baseline, run) of every channel-pruning method at `fraction`."""
    from implementations._harness import Supervised
    from implementations.pruning import (
        apoz_hu2016,
        l1filter_li2017,
        sfp_he2018,
        slimming_liu2017,
        taylor_molchanov2017,
        thinet_luo2017,
    )
    from implementations.pruning._base import channel_units, prune_channels

    def by_scores(score_fn: Callable[[nn.Module], list[Tensor]]) -> Callable[[], nn.Module]:
        def run() -> nn.Module:
            model = prune_channels(s.dense, _keep(score_fn(copy.deepcopy(s.dense)), fraction))
            s.finetune(Supervised(model))
            return model

        return run

    def random_scores(model: nn.Module) -> list[Tensor]:
        gen = torch.Generator().manual_seed(s.seed)
        return [torch.rand(p.weight.shape[0], generator=gen) for p, _ in channel_units(model)[0]]

    def l1(model: nn.Module) -> list[Tensor]:
        return [l1filter_li2017.l1_filter_scores(p.weight) for p, _ in channel_units(model)[0]]

    def apoz(model: nn.Module) -> list[Tensor]:
        return [-a for a in apoz_hu2016.layer_apoz(model, s.calibration()[0])]

    def taylor(model: nn.Module) -> list[Tensor]:
        x, y = s.calibration()
        batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, len(y), 100)]
        return taylor_molchanov2017.TaylorPruning(model).scores(batches)

    def thinet() -> nn.Module:
        task = thinet_luo2017.ThiNet(copy.deepcopy(s.dense), thinet_luo2017.Config(keep_ratio=1.0 - fraction))
        task.prune(s.calibration()[0], seed=s.seed)
        s.finetune(task)
        return task.model

    def soft_filter() -> nn.Module:  # He et al.: zero the smallest-L2 filters after every epoch, keep training them
        task = sfp_he2018.SoftFilterPruning(copy.deepcopy(s.dense), sfp_he2018.Config(rate=fraction))
        task.prune_epoch()
        s.finetune(task, on_epoch_end=lambda epoch, logs: task.prune_epoch())
        return task.pruned()

    def slimming() -> nn.Module:  # Liu et al.: L1 on BN scales for a third of the budget, prune, fine-tune the rest
        task = slimming_liu2017.NetworkSlimming(copy.deepcopy(s.dense))
        sparse_epochs = s.cfg.finetune_epochs // 3
        s.finetune(task, epochs=sparse_epochs)
        gammas = [g.detach().abs() for g in task.gammas()]
        model = prune_channels(task.model, _keep(gammas, fraction))  # per stage, to match the budget
        s.finetune(Supervised(model), epochs=s.cfg.finetune_epochs - sparse_epochs)
        return model

    return [
        ("l1filter_li2017", "random channels", True, by_scores(random_scores)),
        ("l1filter_li2017", "L1 filter norm", False, by_scores(l1)),
        ("apoz_hu2016", "APoZ (network trimming)", False, by_scores(apoz)),
        ("taylor_molchanov2017", "Taylor (activation x gradient)", False, by_scores(taylor)),
        ("thinet_luo2017", "ThiNet (next-layer reconstruction)", False, thinet),
        ("sfp_he2018", "soft filter pruning", False, soft_filter),
        ("slimming_liu2017", "network slimming (L1 on BN scales)", False, slimming),
    ]


def bench_pruning(registry: Any, quick: bool = False, progress: bool = False) -> dict[str, Any]:
    """Every pruning criterion at matched unstructured sparsity and at matched channel fraction."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate

    cfg = QUICK if quick else CompressionConfig()
    data = load_dataset(cfg.dataset)
    started = time.perf_counter()
    rows: dict[tuple, dict[str, Any]] = {}
    dense_acc: list[float] = []
    failures: dict[str, str] = {}
    reference: dict[str, int] = {}
    for seed in cfg.seeds:
        dense = _dense_model(cfg, data, seed, progress)
        dense_acc.append(evaluate(dense, data))
        reference = _size(dense, data.input_shape)
        setup = _Setup(cfg, data, seed, dense, progress)
        tracks = [("unstructured weights", f"{s:.0%} sparsity", _unstructured_methods(setup, s))
                  for s in cfg.sparsities]
        tracks += [("channels removed", f"{f:.0%} of channels", _structured_methods(setup, f))
                   for f in cfg.channel_fractions]
        for track, budget, methods in tracks:
            for paper, label, is_base, run in methods:
                if paper in failures:
                    continue
                model = _run(run, failures, paper)
                if model is not None:
                    _collect(rows, (track, budget, paper, label, is_base), evaluate(model, data),
                             _size(model, data.input_shape))
    return _result("pruning", cfg, quick, data, dense_acc, reference, rows, failures, started,
                   budget_applied="every conv and linear weight tensor (unstructured) / every conv stage (channels)",
                   notes=f"Dense training: SGD momentum 0.9, cosine lr {cfg.lr}, batch {cfg.batch_size}, weight decay "
                   f"5e-4. Then prune to the budget and fine-tune {cfg.finetune_epochs} epochs at lr "
                   f"{cfg.finetune_lr} (methods with their own schedule spend the same epochs inside it). "
                   "Unstructured bytes count fp32 values plus int32 indices of the nonzeros; channel pruning "
                   "removes the tensors physically. Last epoch reported.",
                   not_in_protocol=NOT_IN_PROTOCOL_PRUNING, registry=registry)


# ---------------------------------------------------------------------------------------------------------------------
# Quantization: weight-only post-training coding at matched bits
# ---------------------------------------------------------------------------------------------------------------------


def _quantize_weights(model: nn.Module, bits: int, code: Callable[[str, Tensor], tuple[Tensor, int]]) -> tuple:
    """A copy with every prunable weight replaced by `code(name, w) -> (w_hat, n_side_values)`; returns the size."""
    from implementations._measure import count_flops, count_params
    from implementations.pruning._base import prunable_layers

    model = copy.deepcopy(model)
    coded = side = 0
    with torch.no_grad():
        for name, module in prunable_layers(model):
            w_hat, n_side = code(name, module.weight.detach())
            module.weight.copy_(w_hat)
            coded += module.weight.numel()
            side += n_side
    params = count_params(model)
    size = math.ceil(bits * coded / 8) + 4 * side + 4 * (params - coded)  # codes + fp32 codebooks + fp32 rest
    return model, {"params": params, "nonzero_params": None, "bytes": size, "bits": float(bits),
                   "flops": count_flops(model, torch.zeros(1, *model_input_shape(model)))}


def model_input_shape(model: nn.Module) -> tuple[int, ...]:
    """The (C, L) input shape of a `_models` CNN1d (its first conv's input channels, MNIST-1D length 40)."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear))
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    return (first.in_channels, 40) if isinstance(first, nn.Conv1d) else (first.in_channels, 8, 8)


def _quant_methods(s: _Setup, bits: int) -> list[tuple[str, str, bool, Callable[[], tuple]]]:
    """(paper, method label, is baseline, run) of every post-training weight quantizer at `bits`."""
    from implementations.pruning.deepcompression_han2016 import kmeans_1d
    from implementations.quantization import hessianquant_choi2017, limiteddata_he2018, lqnets_zhang2018, vaq_park2018

    def rtn(name: str, w: Tensor) -> tuple[Tensor, int]:  # absmax grid, round to nearest (torch's fake quantizer)
        qmax = 2 ** (bits - 1) - 1
        scale = max(float(w.abs().max()) / qmax, 1e-12)
        return torch.fake_quantize_per_tensor_affine(w, scale, 0, -qmax, qmax), 1

    def kmeans(name: str, w: Tensor) -> tuple[Tensor, int]:
        centroids, assignment = kmeans_1d(w.flatten(), 2**bits)
        return centroids[assignment].view_as(w), 2**bits

    fisher: dict[str, Tensor] = {}

    def hessian(name: str, w: Tensor) -> tuple[Tensor, int]:
        if not fisher:
            x, y = s.calibration()
            fisher.update(hessianquant_choi2017.fisher_diagonal(copy.deepcopy(s.dense), x, y))
        h = fisher[f"{name}.weight"] + 1e-12  # an all-zero Fisher entry still counts a little
        w_hat, _, _ = hessianquant_choi2017.hessian_weighted_kmeans(w, h, clusters=2**bits)
        return w_hat, 2**bits

    def least_squares(name: str, w: Tensor) -> tuple[Tensor, int]:
        codes, alpha, _ = limiteddata_he2018.ls_quantize(w, bits)
        return codes * alpha, 1

    def lq(name: str, w: Tensor) -> tuple[Tensor, int]:  # one learned basis per tensor, 10 rounds of BCD
        rows = w.reshape(1, -1)
        codes = lqnets_zhang2018.all_codes(bits, signed=True)  # (2^K, K)
        powers = 2.0 ** torch.arange(bits)
        basis = (rows.abs().amax() / (2**bits - 1)).clamp_min(1e-8) * powers[None, :]  # (1, K)
        basis = lqnets_zhang2018.fit_basis(rows, basis, codes, iterations=10)
        index = lqnets_zhang2018.nearest_codes(rows, basis, codes)
        return (basis @ codes.T).gather(1, index).view_as(w), bits

    def value_aware(name: str, w: Tensor) -> tuple[Tensor, int]:
        w_hat, large, _ = vaq_park2018.value_aware_quantize(w, bits, ratio=0.01, signed=True)
        return w_hat, 1 + 2 * int(large.sum())  # the kept outliers cost an fp32 value and an int32 index each

    def wrap(code: Callable[[str, Tensor], tuple[Tensor, int]]) -> Callable[[], tuple]:
        return lambda: _quantize_weights(s.dense, bits, code)

    return [
        ("limiteddata_he2018", "round to nearest (absmax grid)", True, wrap(rtn)),
        ("limiteddata_he2018", "least-squares scale", False, wrap(least_squares)),
        ("deepcompression_han2016", "k-means codebook", False, wrap(kmeans)),
        ("hessianquant_choi2017", "Hessian-weighted k-means", False, wrap(hessian)),
        ("lqnets_zhang2018", "LQ learned basis (BCD)", False, wrap(lq)),
        ("vaq_park2018", "value-aware (1% outliers in fp32)", False, wrap(value_aware)),
    ]


def bench_quantization(registry: Any, quick: bool = False, progress: bool = False) -> dict[str, Any]:
    """Every post-training weight quantizer of the registry at matched bits on the same trained network."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate

    cfg = QUICK if quick else CompressionConfig()
    data = load_dataset(cfg.dataset)
    started = time.perf_counter()
    rows: dict[tuple, dict[str, Any]] = {}
    dense_acc: list[float] = []
    failures: dict[str, str] = {}
    reference: dict[str, int] = {}
    for seed in cfg.seeds:
        dense = _dense_model(cfg, data, seed, progress)
        dense_acc.append(evaluate(dense, data))
        reference = _size(dense, data.input_shape)
        setup = _Setup(cfg, data, seed, dense, progress)
        for bits in cfg.bits:
            for paper, label, is_base, run in _quant_methods(setup, bits):
                if paper in failures and not is_base:
                    continue
                out = _run(run, failures, paper)
                if out is not None:
                    model, size = out
                    _collect(rows, ("weight-only post-training", f"{bits} bits", paper, label, is_base),
                             evaluate(model, data), size)
    return _result("quantization", cfg, quick, data, dense_acc, reference, rows, failures, started,
                   budget_applied="every conv and linear weight tensor, one codebook or scale per tensor",
                   notes=f"Dense training: SGD momentum 0.9, cosine lr {cfg.lr}, batch {cfg.batch_size}, weight "
                   "decay 5e-4. Weights coded after training with no retraining; BN parameters and biases stay "
                   "fp32. Bytes = codes at b bits + fp32 codebooks/scales (and VAQ's fp32 outliers with int32 "
                   f"indices) + the fp32 remainder. Data-driven methods use {cfg.calibration} training examples. The "
                   "round-to-nearest baseline uses the symmetric grid of 2^b - 1 levels (ternary at 2 bits), as "
                   "torch's fake quantizer does for a signed range.",
                   not_in_protocol=NOT_IN_PROTOCOL_QUANT, registry=registry, epochs=0)


# ---------------------------------------------------------------------------------------------------------------------
# Low-rank: factorised convolutions at a matched FLOPs budget
# ---------------------------------------------------------------------------------------------------------------------

LOW_RANK = CompressionConfig(dataset="digits", model=("cnn2d", 1.0), dense_epochs=8, finetune_epochs=2,
                             channel_fractions=(0.25, 0.1, 0.04))  # here: the FLOPs fraction f kept by every conv
LOW_RANK_QUICK = CompressionConfig(dataset="digits", model=("cnn2d", 0.5), seeds=(0,), dense_epochs=1,
                                   finetune_epochs=1, channel_fractions=(0.25,), calibration=200)
NOT_IN_PROTOCOL_LOW_RANK = {
    "kernelcluster_son2018": "shares clustered kernels to cut storage; the convolutions' FLOPs do not drop",
}


def _tucker_ranks(conv: nn.Conv2d, fraction: float) -> tuple[int, int]:
    r"""The largest equal-ratio Tucker-2 ranks whose cost $C R_1 + R_1 R_2 k^2 + R_2 N$ fits $f\,N C k^2$."""
    n, c, kh, kw = conv.weight.shape
    best = (1, 1)
    for step in range(1, 65):
        r_in, r_out = max(1, round(step / 64 * c)), max(1, round(step / 64 * n))
        if c * r_in + r_in * r_out * kh * kw + r_out * n <= fraction * n * c * kh * kw:
            best = (r_in, r_out)
    return best


def _low_rank_methods(s: _Setup, fraction: float) -> list[tuple[str, str, bool, Callable[[], nn.Module]]]:
    from implementations._harness import Supervised
    from implementations.low_rank._base import conv_layers, replace_module, tucker2_conv
    from implementations.low_rank.fga_peng2018 import fga_decompose

    def tuned(build: Callable[[nn.Module], nn.Module]) -> Callable[[], nn.Module]:
        def run() -> nn.Module:
            with torch.no_grad():
                model = build(copy.deepcopy(s.dense))
            s.finetune(Supervised(model))
            return model

        return run

    def tucker(model: nn.Module) -> nn.Module:
        for name, conv in conv_layers(model):
            replace_module(model, name, tucker2_conv(conv, _tucker_ranks(conv, fraction)))
        return model

    return [
        ("fga_peng2018", "channel-wise SVD (g = 1)", True, tuned(lambda m: fga_decompose(m, 1, fraction))),
        ("fga_peng2018", "filter group approximation (g = 4)", False, tuned(lambda m: fga_decompose(m, 4, fraction))),
        ("lowrank_kth2018", "Tucker-2 (HOSVD)", False, tuned(tucker)),
    ]


def bench_low_rank(registry: Any, quick: bool = False, progress: bool = False) -> dict[str, Any]:
    """Every conv factorisation at the same FLOPs budget on the same trained 2-D CNN."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate

    cfg = LOW_RANK_QUICK if quick else LOW_RANK
    data = load_dataset(cfg.dataset)
    started = time.perf_counter()
    rows: dict[tuple, dict[str, Any]] = {}
    dense_acc: list[float] = []
    failures: dict[str, str] = {}
    reference: dict[str, int] = {}
    for seed in cfg.seeds:
        dense = _dense_model(cfg, data, seed, progress)
        dense_acc.append(evaluate(dense, data))
        reference = _size(dense, data.input_shape)
        setup = _Setup(cfg, data, seed, dense, progress)
        for fraction in cfg.channel_fractions:
            for paper, label, is_base, run in _low_rank_methods(setup, fraction):
                model = _run(run, failures, paper)
                if model is not None:
                    _collect(rows, ("factorised convolutions", f"≤ {fraction:.0%} of conv FLOPs", paper, label,
                                    is_base), evaluate(model, data), _size(model, data.input_shape))
    return _result("low-rank", cfg, quick, data, dense_acc, reference, rows, failures, started,
                   budget_applied="every spatial conv with two or more input channels (each to the same FLOPs "
                   "fraction)",
                   notes=f"Dense training: SGD momentum 0.9, cosine lr {cfg.lr}, batch {cfg.batch_size}, weight decay "
                   f"5e-4. Each conv is replaced by its factorisation fitted to the trained weights (no data), then "
                   f"the whole network is fine-tuned {cfg.finetune_epochs} epochs at lr {cfg.finetune_lr}. Ranks are "
                   "the largest that fit the budget, so FLOPs differ slightly between methods (see the column).",
                   not_in_protocol=NOT_IN_PROTOCOL_LOW_RANK, registry=registry)


# ---------------------------------------------------------------------------------------------------------------------
# Efficient architectures: every block design trained the same way on the same images
# ---------------------------------------------------------------------------------------------------------------------

ARCHITECTURE = CompressionConfig(dataset="digits", dense_epochs=15, finetune_epochs=0)
ARCHITECTURE_QUICK = CompressionConfig(dataset="digits", seeds=(0,), dense_epochs=1, finetune_epochs=0)


def _architectures() -> list[tuple[str, str, bool, Callable[[], nn.Module]]]:
    """(paper, label, is baseline, build) of each architecture at its default configuration and its plain twin."""
    from implementations.architecture import (
        mobilenet_howard2017 as mobilenet,
    )
    from implementations.architecture import (
        mobilenetv2_sandler2018 as mobilenetv2,
    )
    from implementations.architecture import (
        squeezenet_iandola2016 as squeezenet,
    )
    from implementations.architecture import (
        xception_chollet2017 as xception,
    )

    return [
        ("mobilenet_howard2017", "Conv MobileNet (standard 3x3 convs)", True,
         lambda: mobilenet.MobileNet(mobilenet.Config(full_conv=True))),
        ("mobilenet_howard2017", "MobileNet (depthwise separable)", False, lambda: mobilenet.MobileNet()),
        ("mobilenet_howard2017", "MobileNet, width 0.5", False,
         lambda: mobilenet.MobileNet(mobilenet.Config(width_multiplier=0.5))),
        ("mobilenetv2_sandler2018", "MobileNetV2 (inverted residuals)", False, lambda: mobilenetv2.MobileNetV2()),
        ("squeezenet_iandola2016", "SqueezeNet (fire modules)", False, lambda: squeezenet.SqueezeNet()),
        ("squeezenet_iandola2016", "SqueezeNet layout, plain 3x3 convs", False,
         lambda: squeezenet.SqueezeNet(squeezenet.Config(plain=True))),
        ("xception_chollet2017", "Xception (separable, residual)", False, lambda: xception.Xception()),
        ("xception_chollet2017", "Xception layout, regular convs", False,
         lambda: xception.Xception(xception.Config(separable=False))),
    ]


def bench_architecture(registry: Any, quick: bool = False, progress: bool = False) -> dict[str, Any]:
    """Every architecture of the registry trained from scratch with one recipe; accuracy against size and FLOPs."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything

    cfg = ARCHITECTURE_QUICK if quick else ARCHITECTURE
    data = load_dataset(cfg.dataset)
    started = time.perf_counter()
    rows: dict[tuple, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for seed in cfg.seeds:
        for paper, label, is_base, build in _architectures():
            def run(build: Callable[[], nn.Module] = build, seed: int = seed) -> nn.Module:
                seed_everything(seed)
                model = build()
                fit(Supervised(model), model.parameters(), data, epochs=cfg.dense_epochs, lr=cfg.lr,
                    batch_size=cfg.batch_size, seed=seed, progress=progress)
                return model

            model = _run(run, failures, paper)
            if model is not None:
                _collect(rows, ("trained from scratch", "default configuration", paper, label, is_base),
                         evaluate(model, data), _size(model, data.input_shape))
    result = _result("architecture", cfg, quick, data, [], {}, rows, failures, started,
                     budget_applied="the architecture itself (each paper's default configuration for 8x8 digits)",
                     notes=f"Every network trained from scratch: SGD momentum 0.9, cosine lr {cfg.lr}, batch "
                     f"{cfg.batch_size}, weight decay 5e-4, {cfg.dense_epochs} epochs, no augmentation; last epoch "
                     "reported. The plain twins keep each layout but use regular convolutions, the comparison each "
                     "paper makes. Bytes are fp32 parameters; FLOPs per example.",
                     not_in_protocol={}, registry=registry, epochs=0)
    result["kind"] = "architecture"
    result["protocol"]["teacher"] = "none (each network is trained from scratch)"
    result.pop("teacher")
    return result


# ---------------------------------------------------------------------------------------------------------------------
# AutoML: per-layer channel budgets searched under one FLOPs target
# ---------------------------------------------------------------------------------------------------------------------

AUTOML = CompressionConfig(dense_epochs=10, finetune_epochs=2, channel_fractions=(0.3,))  # here: FLOPs kept
AUTOML_QUICK = CompressionConfig(seeds=(0,), dense_epochs=1, finetune_epochs=1, channel_fractions=(0.3,))
NOT_IN_PROTOCOL_AUTOML = {
    "autoslim_yu2019": "searches the widths of a one-shot slimmable network trained for that purpose and retrains "
                       "the result from scratch; it does not prune a given trained network",
}


def bench_automl(registry: Any, quick: bool = False, progress: bool = False) -> dict[str, Any]:
    """AMC (DDPG) and constraint-aware Bayesian optimisation against the uniform policy at one FLOPs target."""
    from dataclasses import replace as dc_replace

    import numpy as np

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._models import CNN1d
    from implementations.automl import amc_he2018, constraintaware_chen2018
    from implementations.automl._base import finetune

    cfg = AUTOML_QUICK if quick else AUTOML
    data = load_dataset(cfg.dataset)
    started = time.perf_counter()
    rows: dict[tuple, dict[str, Any]] = {}
    dense_acc: list[float] = []
    failures: dict[str, str] = {}
    reference: dict[str, int] = {}
    for seed in cfg.seeds:
        order = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(seed))
        n_val = data.n_train // 4
        val, train = order[:n_val], order[n_val:]
        part = dc_replace(data, x_train=data.x_train[train], y_train=data.y_train[train])
        seed_everything(seed)
        base = CNN1d(1, data.input_shape[-1], data.num_classes, channels=amc_he2018.CHANNELS)
        fit(Supervised(base), base.parameters(), part, epochs=cfg.dense_epochs, lr=0.1, seed=seed,
            progress=progress)
        dense_acc.append(evaluate(base, data))
        reference = _size(base, data.input_shape)
        args = (base, data.x_train[val], data.y_train[val], part.x_train[:512])
        for target in cfg.channel_fractions:
            amc_cfg = amc_he2018.Config(flops_ratio=target, lbound=0.1)
            ca_cfg = constraintaware_chen2018.Config(flops_ratio=target, lbound=0.1)
            if quick:
                amc_cfg = dc_replace(amc_cfg, episodes=12, warmup=6, batch_size=16)
                ca_cfg = dc_replace(ca_cfg, iterations=8, n_init=4, cooling_steps=4)

            def uniform(c: Any = amc_cfg, args: tuple = args) -> list[int]:
                return amc_he2018._uniform(amc_he2018.AMC(*args, c))

            def amc(c: Any = amc_cfg, seed: int = seed, args: tuple = args) -> list[int]:
                return amc_he2018.AMC(*args, c).search_ddpg(torch.Generator().manual_seed(seed))["keep"]

            def bayes(c: Any = ca_cfg, seed: int = seed, args: tuple = args) -> list[int]:
                found = constraintaware_chen2018.ConstraintAwareCompression(*args, c).search(
                    np.random.default_rng(seed))
                if found is None:
                    raise RuntimeError("no feasible configuration found")
                return found["keep"]

            methods = [("amc_he2018", "uniform preserve ratio", True, uniform),
                       ("amc_he2018", "AMC (DDPG agent)", False, amc),
                       ("constraintaware_chen2018", "constrained BO with cooling", False, bayes)]
            for paper, label, is_base, search in methods:
                def run(search: Callable[[], list[int]] = search, args: tuple = args, c: Any = amc_cfg,
                        part: Any = part, seed: int = seed) -> nn.Module:
                    keep = search()
                    pruned = amc_he2018.AMC(*args, c).pruner(keep)
                    seed_everything(seed)
                    finetune(pruned, part, cfg.finetune_epochs, lr=0.02, seed=seed)
                    return pruned

                model = _run(run, failures, paper)
                if model is not None:
                    _collect(rows, ("searched channel counts", f"≤ {target:.0%} of FLOPs", paper, label,
                                    is_base), evaluate(model, data), _size(model, data.input_shape))
    return _result("automl", cfg, quick, data, dense_acc, reference, rows, failures, started,
                   budget_applied="the channel count of every conv stage, chosen by each search",
                   notes=f"Per seed: CNN1d {list(amc_he2018.CHANNELS)} trained {cfg.dense_epochs} epochs (SGD lr 0.1 "
                   "cosine) on 3/4 of the training set; the other 1/4 scores candidate policies (accuracy without "
                   "fine-tuning, next layer refitted by least squares on 512 inputs); preserve ratios in [0.1, 1]. "
                   f"AMC: {amc_cfg.episodes} DDPG episodes ({amc_cfg.warmup} random warm-up) through its action "
                   f"wall; constrained BO: {ca_cfg.iterations} evaluations with the {ca_cfg.cooling} cooling "
                   "schedule. The best policy is fine-tuned "
                   f"{cfg.finetune_epochs} epochs (SGD lr 0.02).",
                   not_in_protocol=NOT_IN_PROTOCOL_AUTOML, registry=registry)


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark file
# ---------------------------------------------------------------------------------------------------------------------


def _result(family: str, cfg: CompressionConfig, quick: bool, data: Any, dense_acc: list[float],
            reference: dict[str, int], rows: dict[tuple, dict[str, Any]], failures: dict[str, str], started: float,
            *, budget_applied: str, notes: str, not_in_protocol: dict[str, str], registry: Any,
            epochs: int | None = None) -> dict[str, Any]:
    from implementations._measure import accuracy_stats

    known = {p.id for p in registry.papers}
    out_rows = []
    for (track, budget, paper, label, is_base), row in rows.items():
        values = row.pop("values")
        out_rows.append({"paper": paper, "method": label, "track": track, "budget": budget, "baseline": is_base,
                         "accuracy": accuracy_stats(values), **{k: v for k, v in row.items() if v is not None}})
    # within a budget: baseline first, then by accuracy
    order = {key[:2]: i for i, key in enumerate(dict.fromkeys(rows))}
    out_rows.sort(key=lambda r: (order[(r["track"], r["budget"])], not r["baseline"], -r["accuracy"]["mean"]))
    excluded = {pid: why for pid, why in not_in_protocol.items() if pid in known}
    return {
        "family": family,
        "kind": "compression",
        "profile": "quick" if quick else "default",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "teacher": f"{cfg.model[0]} w={cfg.model[1]:g} ({reference.get('params', 0):,} parameters, fp32)",
            "student": budget_applied,
            "seeds": list(cfg.seeds),
            "teacher_epochs": cfg.dense_epochs,
            "epochs": cfg.finetune_epochs if epochs is None else epochs,
            "notes": notes,
        },
        "teacher": accuracy_stats(dense_acc) if dense_acc else None,
        "reference": reference,
        "rows": out_rows,
        "failures": failures,
        "excluded": excluded,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
