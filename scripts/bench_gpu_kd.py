r"""Throughput benchmark of KD training, resnet32x4 -> resnet8x4 on CIFAR-100-shaped random data.

Three training loops over the same models and loss ($\mathcal{L} = 0.1\,\mathrm{CE} + 0.9\,T^2\,\mathrm{KL}$, $T = 4$):

1. `baseline`: fp32, batch 64, a `torch.utils.data.DataLoader` over a CPU `TensorDataset`, each batch copied to the
   device, teacher forward pass at every step (the usual mdistiller-style loop);
2. `optimized`: the data set resident on the device, a large batch, bf16 autocast, channels-last, optional
   `torch.compile`, teacher forward pass at every step;
3. `optimized+cache`: as 2, but the teacher logits are computed once for the whole data set and indexed per batch
   (valid only without random augmentation, since the teacher must see the same input as the student).

Reports images/s (timed after warm-up steps, with CUDA synchronisation) and the speed-up over the baseline; the
one-off teacher-caching time is reported separately. No download is needed. Examples:

    python scripts/bench_gpu_kd.py                       # GPU, default sizes
    python scripts/bench_gpu_kd.py --compile --out bench.json
    python scripts/bench_gpu_kd.py --device cpu --steps 3   # quick functional check
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from implementations._models import build_model  # noqa: E402
from implementations.distillation.kd_hinton2015 import KD, kd_loss  # noqa: E402

NUM_CLASSES, SHAPE = 100, (3, 32, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; sizes default smaller on CPU so that `--device cpu --steps 3` takes seconds."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument("--steps", type=int, default=50, help="timed steps per loop")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on GPU, 1 on CPU)")
    p.add_argument("--n-samples", type=int, default=None, help="data set size (default 50000 GPU, 256 CPU)")
    p.add_argument("--baseline-batch", type=int, default=64, help="batch size of the baseline loop")
    p.add_argument("--batch", type=int, default=None, help="batch size of the optimized loops (default 1024/64)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the baseline")
    p.add_argument("--compile", action="store_true", help="torch.compile the student in the optimized loops")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--out", default="bench_gpu_kd.json", help="JSON file to write")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = args.device == "cpu"
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 10)
    args.n_samples = args.n_samples or (256 if cpu else 50000)
    args.batch = args.batch or (64 if cpu else 1024)
    return args


def sync(device: str) -> None:
    """Wait for queued GPU work so wall-clock timings are real."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def models(args: argparse.Namespace, channels_last: bool) -> tuple[nn.Module, nn.Module]:
    """Fresh seeded teacher (eval, frozen) and student on the device."""
    torch.manual_seed(0)
    teacher = build_model(args.teacher, NUM_CLASSES, SHAPE).to(args.device).eval().requires_grad_(False)
    student = build_model(args.student, NUM_CLASSES, SHAPE).to(args.device)
    if channels_last:
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    return teacher, student


def timed(step: Callable[..., None], batches: Iterator[tuple], args: argparse.Namespace, batch_size: int) -> float:
    """Run `warmup` then `steps` calls of `step(x, y)` and return the images/s of the timed part."""
    for _ in range(args.warmup):
        step(*next(batches))
    sync(args.device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step(*next(batches))
    sync(args.device)
    return args.steps * batch_size / (time.perf_counter() - started)


def baseline(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> float:
    """fp32, small batch, CPU DataLoader, teacher forward every step."""
    teacher, student = models(args, channels_last=False)
    task = KD(student, teacher).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=args.baseline_batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
    )

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        _, losses = task.forward_train(xb.to(args.device), yb.to(args.device))
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    return timed(step, batches, args, args.baseline_batch)


def optimized(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, cache: bool) -> tuple[float, float]:
    """Device-resident data, large batch, bf16, channels-last, optional compile; returns (images/s, cache seconds)."""
    teacher, student = models(args, channels_last=True)
    x_dev = x.to(args.device).contiguous(memory_format=torch.channels_last)
    y_dev = y.to(args.device)
    device_type = torch.device(args.device).type
    cache_s, cached = 0.0, None
    if cache:
        sync(args.device)
        started = time.perf_counter()
        with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16):
            cached = torch.cat([teacher(chunk).float() for chunk in x_dev.split(args.batch * 2)])  # (N, K)
        sync(args.device)
        cache_s = time.perf_counter() - started
    forward = torch.compile(student) if args.compile else student
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=args.device).manual_seed(0)

    def batches() -> Iterator[tuple[torch.Tensor, None]]:
        while True:
            order = torch.randperm(len(y_dev), device=args.device, generator=gen)
            for start in range(0, len(order) - args.batch + 1, args.batch):
                yield order[start : start + args.batch], None

    def step(idx: torch.Tensor, _: None) -> None:
        xb, yb = x_dev[idx], y_dev[idx]
        with torch.autocast(device_type, dtype=torch.bfloat16):
            logits_s = forward(xb)
            if cached is not None:
                logits_t = cached[idx]
            else:
                with torch.no_grad():
                    logits_t = teacher(xb)
            loss = 0.1 * F.cross_entropy(logits_s.float(), yb) + 0.9 * kd_loss(logits_s.float(), logits_t.float(), 4.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, batches(), args, args.batch), cache_s


def main(argv: list[str] | None = None) -> int:
    """Run the three loops, print a table, write the JSON file."""
    args = parse_args(argv)
    if args.batch > args.n_samples:
        raise SystemExit(f"--batch {args.batch} is larger than --n-samples {args.n_samples}")
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.n_samples, *SHAPE, generator=gen)  # (N, 3, 32, 32), CIFAR-100-shaped
    y = torch.randint(0, NUM_CLASSES, (args.n_samples,), generator=gen)  # (N,)
    base = baseline(args, x, y)
    fast, _ = optimized(args, x, y, cache=False)
    cached, cache_s = optimized(args, x, y, cache=True)
    rows = [
        {"mode": "baseline", "batch_size": args.baseline_batch, "images_per_s": base},
        {"mode": "optimized", "batch_size": args.batch, "images_per_s": fast},
        {"mode": "optimized+cache", "batch_size": args.batch, "images_per_s": cached},
    ]
    for row in rows:
        row["speedup"] = row["images_per_s"] / base
    device = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else (platform.processor() or platform.machine())
    )
    print(f"KD {args.teacher} -> {args.student}, {args.n_samples} samples, {args.steps} timed steps on {device}")
    print(f"{'mode':<18}{'batch':>7}{'images/s':>12}{'speedup':>9}")
    for row in rows:
        print(f"{row['mode']:<18}{row['batch_size']:>7}{row['images_per_s']:>12.1f}{row['speedup']:>8.2f}x")
    print(f"teacher-logit cache: {cache_s:.2f} s once for {args.n_samples} images")
    report = {
        "device": f"{args.device} ({device})",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "args": vars(args),
        "results": rows,
        "teacher_cache_s": cache_s,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
