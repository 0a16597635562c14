r"""The small-scale reproduction of AMC (He et al., 2018): the DDPG agent against uniform, greedy and random search at
50% FLOPs on a trained 1-D CNN on MNIST-1D, each policy then fine-tuned."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from implementations.automl.amc_he2018 import AMC, CHANNELS, Config, _uniform

OPEN_QUESTION = (
    "Is a reinforcement-learning agent needed, or would a simple search over per-layer ratios (random or greedy) "
    "find equally good policies at small scale?"
)


def _greedy(amc: AMC, step: float = 0.1) -> list[int]:
    """Greedy baseline: lower one layer's ratio by `step` at a time, keeping the move with the best accuracy."""
    ratios = [1.0] * len(amc.channels)

    def keep_of(r: list[float]) -> list[int]:
        return [max(1, round(x * c)) for x, c in zip(r, amc.channels, strict=True)]

    while amc.flops(keep_of(ratios)) > amc.target:
        trials = []
        for t in range(len(ratios)):
            if ratios[t] - step >= amc.cfg.lbound - 1e-9:
                trial = ratios[:t] + [ratios[t] - step] + ratios[t + 1 :]
                acc = amc.accuracy(keep_of(trial))
                amc.history.append({"keep": keep_of(trial), "accuracy": acc, "flops": amc.flops(keep_of(trial))})
                trials.append((acc, -t, trial))
        if not trials:
            break
        ratios = max(trials)[2]
    return keep_of(ratios)


def reproduce(ctx: Any) -> dict[str, Any]:
    """AMC (DDPG) vs uniform, greedy and random search at 50% FLOPs on a trained 1-D CNN, then fine-tuned."""
    from dataclasses import replace

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, interleaved_latency, model_row
    from implementations._models import CNN1d
    from implementations.automl._base import finetune

    cfg = Config()
    if ctx.profile == "quick":
        cfg = replace(cfg, episodes=12, warmup=6, batch_size=16)
    data = load_dataset("mnist1d", n_train=ctx.n_train)
    epochs, ft_epochs = ctx.epochs(10), ctx.epochs(2)
    n_val = data.n_train // 4
    acc: dict[str, list[float]] = {}
    before: dict[str, list[float]] = {}
    searched: dict[str, list[float]] = {}
    policies: dict[str, list[list[int]]] = {}
    evaluations: dict[str, list[int]] = {}
    best_episode: list[int] = []  # per seed, the DDPG episode whose policy AMC reports
    models: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        order = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = order[:n_val], order[n_val:]
        part = replace(data, x_train=data.x_train[train_idx], y_train=data.y_train[train_idx])
        seed_everything(seed)
        base = CNN1d(1, data.input_shape[-1], data.num_classes, channels=CHANNELS)
        fit(Supervised(base), base.parameters(), part, epochs, lr=0.1, seed=seed, progress=False)
        acc.setdefault("unpruned", []).append(evaluate(base, data))
        models.setdefault("unpruned", base)
        gen = torch.Generator().manual_seed(seed)
        found = {}
        for name in ("uniform", "greedy", "random", "amc"):
            amc = AMC(base, data.x_train[val_idx], data.y_train[val_idx], part.x_train[:512], cfg)
            if name == "uniform":
                keep = _uniform(amc)
            elif name == "greedy":
                keep = _greedy(amc)
            elif name == "random":
                for _ in range(cfg.episodes):
                    amc.episode(lambda t, s, g=gen: cfg.lbound + (1 - cfg.lbound) * float(torch.rand((), generator=g)))
                keep = max(amc.history, key=lambda h: h["accuracy"])["keep"]
            else:
                best = amc.search_ddpg(gen)
                keep = best["keep"]
                best_episode.append(best["episode"])
                warm = [h["accuracy"] for h in amc.history if h["phase"] == "warmup"]
            found[name] = keep
            evaluations.setdefault(name, []).append(max(1, len(amc.history)))
            searched.setdefault(name, []).append(amc.accuracy(keep))
            if name == "amc":
                searched.setdefault("amc_incl_warmup", []).append(max([searched["amc"][-1], *warm]))
            pruned = amc.pruner(keep)
            before.setdefault(name, []).append(evaluate(pruned, data))
            seed_everything(seed)
            finetune(pruned, part, ft_epochs, lr=0.02, seed=seed, device=ctx.device)
            acc.setdefault(name, []).append(evaluate(pruned, data))
            policies.setdefault(name, []).append(keep)
            models.setdefault(name, pruned)

    size = {k: model_row(m, data.input_shape) for k, m in models.items()}
    if ctx.profile != "quick":
        for k, ms in interleaved_latency(models, data.input_shape, rounds=3).items():
            size[k]["latency_ms"] = ms
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    mean_before = {k: sum(v) / len(v) for k, v in before.items()}
    mean_search = {k: sum(v) / len(v) for k, v in searched.items()}
    specs = {
        "unpruned": (f"Unpruned 1-D CNN {list(CHANNELS)}", "baseline"),
        "uniform": ("Uniform preserve ratio (hand-crafted)", "baseline"),
        "greedy": ("Greedy per-layer search", "ablation"),
        "random": (f"Random search ({cfg.episodes} policies)", "ablation"),
        "amc": (f"AMC, DDPG agent ({cfg.episodes} episodes)", "method"),
    }
    rows = []
    for name, (label, role) in specs.items():
        extra: dict[str, float | str] = {}
        if name != "unpruned":
            extra = {
                "accuracy_before_finetune": mean_before[name],
                "search_val_accuracy": mean_search[name],
                "evaluations": sum(evaluations[name]) / len(evaluations[name]),
                "channels_all_seeds": "; ".join(str(p) for p in policies[name]),
                "flops_ratio_seed0": size[name]["flops"] / size["unpruned"]["flops"],
            }
            if name == "amc":
                extra["best_episode_all_seeds"] = "; ".join(str(e) for e in best_episode)
                extra["search_val_accuracy_incl_warmup"] = mean_search["amc_incl_warmup"]
        rows.append(
            dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), **size[name], extra=extra)
        )
    from implementations.architecture._base import save_tradeoff_plot

    figure = save_tradeoff_plot(rows, ctx, "amc_he2018", title=f"AMC at {cfg.flops_ratio:g}x FLOPs on MNIST-1D")
    rl_vs = {k: mean_search["amc"] - mean_search[k] for k in ("random", "greedy")}
    best_other = max(("random", "greedy"), key=lambda k: mean_search[k])
    if beats(searched["amc"], searched[best_other]):
        verdict = "the DDPG agent found better policies than random and greedy search, beyond seed noise"
    elif beats(searched[best_other], searched["amc"]):
        verdict = f"no: {best_other} search found better policies than the DDPG agent, beyond seed noise"
    else:
        verdict = f"no: the DDPG agent's policies and {best_other} search's are within seed noise of each other"
    return {
        "id": "amc_he2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"Per seed: CNN1d {list(CHANNELS)} trained {epochs} epochs (SGD lr 0.1 cosine) on 3/4 of the "
            f"training set; the other 1/4 scores policies (accuracy without fine-tuning; channels by next-layer "
            f"weight magnitude, next layer refitted by ridge least squares on 512 training inputs). Budget "
            f"{cfg.flops_ratio:g}x FLOPs, preserve ratios in [{cfg.lbound}, 1], AMC's action wall for every search. "
            f"DDPG: {cfg.episodes} episodes ({cfg.warmup} random warm-up), hidden {cfg.hidden}, lr actor "
            f"{cfg.lr_actor} / critic {cfg.lr_critic}, tau {cfg.tau}, gamma {cfg.discount}, batch {cfg.batch_size}, "
            f"truncated-normal noise sigma {cfg.init_delta} x {cfg.delta_decay}^episode. Random search: "
            f"{cfg.episodes} uniform policies through the same wall. Greedy: -0.1 ratio steps on the best layer. "
            f"AMC reports the best of its {cfg.episodes - cfg.warmup} learned episodes (warm-up policies are random "
            f"search and not candidates; the winning episode index is in extra). "
            f"Each search's best policy is fine-tuned {ft_epochs} epochs (SGD lr 0.02 cosine); accuracy = test after "
            f"fine-tuning. Size columns: seed 0's pruned models; latency batch 1, fastest of 3 interleaved rounds.",
        },
        "rows": rows,
        "claim": {
            "text": "At the same FLOPs budget, the per-layer policy learned by the agent beats the hand-crafted "
            "uniform policy (after fine-tuning; paired over seeds, gain above one standard error).",
            "reproduced": beats(acc["amc"], acc["uniform"]),
            "evidence": f"after fine-tuning: AMC {mean['amc']:.2f}% vs uniform {mean['uniform']:.2f}% (unpruned "
            f"{mean['unpruned']:.2f}%); without fine-tuning: AMC {mean_before['amc']:.2f}% vs uniform "
            f"{mean_before['uniform']:.2f}%; FLOPs kept (seed 0): AMC {rows[-1]['extra']['flops_ratio_seed0']:.3f}, "
            f"uniform {rows[1]['extra']['flops_ratio_seed0']:.3f} ({len(ctx.seeds)} seeds).",
        },
        "answers": [
            {
                "question": OPEN_QUESTION,
                "answer": f"At this scale {verdict} (search objective: held-out accuracy without fine-tuning); "
                f"after fine-tuning the policies end within {max(abs(mean['amc'] - mean[k]) for k in rl_vs):.2f} "
                f"points of each other.",
                "evidence": "held-out accuracy of the best policy (no fine-tuning): "
                + ", ".join(f"{k} {mean_search[k]:.2f}" for k in ("uniform", "greedy", "random", "amc"))
                + f" (AMC if its random warm-up episodes were counted: {mean_search['amc_incl_warmup']:.2f}; "
                + f"winning DDPG episodes {best_episode})"
                + "; test after fine-tuning: "
                + ", ".join(f"{k} {mean[k]:.2f}" for k in ("uniform", "greedy", "random", "amc"))
                + "; evaluations per search: "
                + ", ".join(f"{k} {sum(v) / len(v):.0f}" for k, v in evaluations.items())
                + f" ({len(ctx.seeds)} seeds).",
            }
        ],
        "figures": [figure],
    }
