"""The small-scale reproduction of Molchanov et al. (2017): a CNN1d on MNIST-1D pruned map by map, greedily, by
the Taylor criterion, raw Taylor, minimum weight and at random, each ranking compared with the oracle."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import build_model
from implementations.pruning._base import channel_units, size_rows
from implementations.pruning.taylor_molchanov2017 import Config, TaylorPruning

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

CRITERIA = ("taylor", "taylor_raw", "weight", "random")  # ranked against the oracle
GREEDY = ("taylor", "weight", "random")  # run through the full prune/fine-tune schedule


def _verdict(a: list[float], b: list[float], better: str, worse: str) -> str:
    """`better`/`worse` when the means of `a` and `b` differ by more than the larger seed std, else a tie."""
    from implementations._measure import accuracy_stats

    sa, sb = accuracy_stats(a), accuracy_stats(b)
    if abs(sa["mean"] - sb["mean"]) <= max(sa["std"], sb["std"]):
        return "No clear difference (within the seed spread)"
    return better if sa["mean"] > sb["mean"] else worse


def _spearman(a: Tensor, b: Tensor) -> float:
    ranks = [v.argsort().argsort().double() for v in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


@torch.no_grad()
def _oracle(model: nn.Module, data: TensorData, n: int = 1000) -> list[Tensor]:
    """$|C(z_l^{(k)} = 0) - C|$ for every map, on `n` training examples (the paper's oracle ranking)."""
    model.eval()
    device = next(model.parameters()).device
    x, y = data.x_train[:n].to(device), data.y_train[:n].to(device)
    base = F.cross_entropy(model(x), y)
    out = []
    for stage, (producer, _) in zip(model.stages, channel_units(model)[0], strict=True):
        deltas = []
        for c in range(producer.weight.shape[0]):
            index = torch.tensor([c], device=device)
            hook = stage.register_forward_hook(lambda _m, _i, o, index=index: o.index_fill(1, index, 0.0))
            deltas.append((F.cross_entropy(model(x), y) - base).abs())
            hook.remove()
        out.append(torch.stack(deltas))
    return out


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """CNN1d on MNIST-1D; greedy map pruning by Taylor, raw Taylor, weight and random; Spearman vs the oracle."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats
    from implementations._runner import save_accuracy_plot

    cfg = Config()
    data = load_dataset("mnist1d", n_train=ctx.n_train)
    epochs = ctx.epochs(cfg.epochs)
    train = dict(batch_size=128, device=ctx.device, progress=False)
    acc: dict[str, list[float]] = {}
    rho: dict[tuple[str, str], list[float]] = {}
    final: dict[str, nn.Module] = {}
    removed = cfg.iterations * cfg.maps_per_iteration
    for seed in ctx.seeds:
        seed_everything(seed)
        dense = build_model("cnn1d", data.num_classes, data.input_shape, width=cfg.width)
        fit(TaylorPruning(dense), dense.parameters(), data, epochs=epochs, lr=cfg.lr, seed=seed, **train)
        acc.setdefault("dense", []).append(evaluate(dense, data))
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(data.n_train, generator=gen)[: cfg.score_batches * 128]
        batches = [(data.x_train[i], data.y_train[i]) for i in idx.split(128)]
        # Table 1: rank correlation of each criterion with the oracle, within layers and across them.
        oracle = _oracle(dense, data)
        for criterion in CRITERIA:
            s = TaylorPruning(dense, cfg, criterion).scores(batches, gen)
            per_layer = sum(_spearman(a, b) for a, b in zip(s, oracle, strict=True)) / len(s)
            rho.setdefault((criterion, "layer"), []).append(per_layer)
            rho.setdefault((criterion, "global"), []).append(_spearman(torch.cat(s), torch.cat(oracle)))
        # Normalised vs raw Taylor: the same number of maps removed in one shot, no fine-tuning.
        for criterion in ("taylor", "taylor_raw"):
            model = TaylorPruning(copy.deepcopy(dense), cfg, criterion).prune(cfg.oneshot_maps, batches)
            acc.setdefault(f"{criterion}_oneshot", []).append(evaluate(model, data))
            final[f"{criterion}_oneshot"] = model
        for criterion in GREEDY:
            task = TaylorPruning(copy.deepcopy(dense), cfg, criterion)
            for step in range(cfg.iterations):
                model = task.prune(cfg.maps_per_iteration, batches, gen)
                n_ft = cfg.finetune_epochs if step < cfg.iterations - 1 else cfg.final_epochs
                fit(task, model.parameters(), data, epochs=ctx.epochs(n_ft), lr=cfg.finetune_lr, seed=seed, **train)
            acc.setdefault(criterion, []).append(evaluate(task.model, data))
            final[criterion] = task.model
        final["dense"] = dense

    cols = size_rows(final, data.input_shape, ctx.profile)  # all rows timed together (interleaved)
    labels = {
        "taylor": "Taylor (normalised), greedy",
        "weight": "Min. weight, greedy",
        "random": "Random, greedy",
        "taylor_oneshot": "Taylor (normalised), one shot, no FT",
        "taylor_raw_oneshot": "Taylor, no normalisation, one shot, no FT",
    }
    rows = [dict(name="dense", label="Dense CNN1d", role="baseline", **cols["dense"])]
    for name, label in labels.items():
        widths = [p.weight.shape[0] for p, _ in channel_units(final[name])[0]]
        cols[name]["extra"]["channels"] = "/".join(map(str, widths))
        criterion = name.removesuffix("_oneshot")
        for kind in ("layer", "global"):
            cols[name]["extra"][f"spearman_{kind}"] = sum(rho[(criterion, kind)]) / len(ctx.seeds)
        role = "method" if name == "taylor" else "ablation"
        n = cfg.oneshot_maps if name.endswith("_oneshot") else removed
        rows.append(dict(name=name, label=f"{label}: -{n} maps", role=role, **cols[name]))
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    std = {row["name"]: row["accuracy"]["std"] for row in rows}
    r = {key: sum(v) / len(v) for key, v in rho.items()}
    ch = {c: cols[c]["extra"]["channels"] for c in labels}
    figure = save_accuracy_plot(rows, ctx, "taylor_molchanov2017", title=f"Greedy map pruning on {data.name}")
    beats = [c for c in ("weight", "random") if mean["taylor"] > mean[c]]
    return {
        "id": "taylor_molchanov2017",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"CNN1d width {cfg.width} (16/32/32 maps, BN), trained from scratch {epochs} epochs (SGD momentum "
            f"0.9, cosine lr {cfg.lr}, batch 128, wd 5e-4). {cfg.iterations} rounds: score maps on "
            f"{cfg.score_batches} batches of 128 training examples, remove the {cfg.maps_per_iteration} globally "
            f"lowest (physically), fine-tune {cfg.finetune_epochs} epoch at lr {cfg.finetune_lr} ({cfg.final_epochs} "
            f"after the last round). Oracle = |loss change| when one map is zeroed, on 1000 training examples. "
            f"Raw vs normalised Taylor: {cfg.oneshot_maps} maps removed in one shot, no fine-tuning.",
        },
        "rows": rows,
        "claim": {
            "text": "Ranking feature maps by the layer-normalised first-order Taylor criterion and pruning greedily "
            "with fine-tuning keeps more accuracy than ranking by minimum weight or at random, at the same number "
            "of removed maps.",
            "reproduced": len(beats) == 2,
            "evidence": f"after removing {removed} of 80 maps: Taylor {mean['taylor']:.2f}% (std "
            f"{std['taylor']:.2f}) vs weight {mean['weight']:.2f}% (std {std['weight']:.2f}) vs random "
            f"{mean['random']:.2f}% (dense {mean['dense']:.2f}%); mean Spearman with the oracle within layers: "
            f"Taylor {r[('taylor', 'layer')]:.2f}, weight {r[('weight', 'layer')]:.2f}, random "
            f"{r[('random', 'layer')]:.2f}.",
        },
        "answers": [
            {
                "question": "Is the layer-wise L2 normalisation of the Taylor scores essential, or does the raw "
                "criterion prune the wrong layers?",
                "answer": _verdict(
                    acc["taylor_oneshot"], acc["taylor_raw_oneshot"], "It helped here", "It did not help here"
                )
                + f": removing {cfg.oneshot_maps} maps at once without fine-tuning left {mean['taylor_oneshot']:.1f}% "
                f"(normalised) vs {mean['taylor_raw_oneshot']:.1f}% (raw); the raw scores kept maps "
                f"{ch['taylor_raw_oneshot']} per layer against {ch['taylor_oneshot']} (last seed).",
                "evidence": f"Spearman with the oracle across layers: normalised {r[('taylor', 'global')]:.2f}, raw "
                f"{r[('taylor_raw', 'global')]:.2f} (within layers both {r[('taylor', 'layer')]:.2f}); one-shot "
                f"accuracy normalised {mean['taylor_oneshot']:.2f}%, raw {mean['taylor_raw_oneshot']:.2f}%.",
            },
            {
                "question": "Does the criterion keep its edge over weight-norm ranking when the network is trained "
                "from scratch rather than transferred?",
                "answer": _verdict(acc["taylor"], acc["weight"], "Yes", "No")
                + f": on a network trained from scratch, Taylor pruning reached {mean['taylor']:.1f}% vs "
                f"{mean['weight']:.1f}% for minimum weight, "
                f"with Spearman to the oracle {r[('taylor', 'layer')]:.2f} vs {r[('weight', 'layer')]:.2f}.",
                "evidence": f"per seed Taylor {[round(v, 1) for v in acc['taylor']]}, weight "
                f"{[round(v, 1) for v in acc['weight']]}, random {[round(v, 1) for v in acc['random']]}.",
            },
        ],
        "figures": [figure],
    }
