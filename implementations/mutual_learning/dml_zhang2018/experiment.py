r"""The small-scale reproduction of Deep Mutual Learning (Zhang et al., 2018): two peers trained alone, with DML, with
the entropy-matched label-smoothing control, and a peer distilled from a larger teacher."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from implementations.mutual_learning._base import Ensemble
from implementations.mutual_learning.dml_zhang2018 import DML, Config

if TYPE_CHECKING:
    from implementations._harness import RunContext


SETTINGS = {
    "small": dict(
        dataset="mnist1d", n_train=2000, peer=("cnn1d", 0.5), teacher=("cnn1d", 1.0), epochs=6, lr=0.1, batch_size=128
    ),
    "full": dict(
        dataset="cifar100",
        n_train=None,
        peer=("resnet32", 1.0),
        teacher=("resnet32x4", 1.0),
        epochs=200,
        lr=0.1,
        batch_size=64,
    ),
}
Q_PENALTY = "Is the KL term just a penalty that stops the peer networks from drifting too far apart?"
Q_TEACHER = "Does DML mean a large pretrained model is unnecessary, or only that some reasonably good peer is needed?"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Two peers alone, with DML, with the entropy-matched control, and a peer distilled from a larger teacher."""
    from implementations._data import augment_crop_flip, load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row, versus
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot
    from implementations.distillation.kd_hinton2015 import KD

    s = SETTINGS["full" if ctx.profile == "full" else "small"]
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train or s["n_train"])
    epochs = ctx.epochs(s["epochs"])
    full = ctx.profile == "full"
    train = dict(
        epochs=epochs,
        lr=s["lr"],
        batch_size=s["batch_size"],
        device=ctx.device,
        progress=ctx.progress,
        augment=augment_crop_flip if full else None,
    )

    def new(spec: tuple[str, float]) -> nn.Module:
        return build_model(spec[0], data.num_classes, data.input_shape, width=spec[1])

    acc: dict[str, list[float]] = {}
    per_peer: dict[str, list[list[float]]] = {}

    def record(name: str, models: Sequence[nn.Module]) -> None:
        scores = [evaluate(m, data) for m in models]
        acc.setdefault(name, []).append(sum(scores) / len(scores))
        per_peer.setdefault(name, []).append(scores)

    for seed in ctx.seeds:
        seed_everything(seed)
        init = [new(s["peer"]), new(s["peer"])]  # both peers start from these weights in every variant
        alone = copy.deepcopy(init)
        for i, peer in enumerate(alone):
            checkpoint = ctx.checkpoint(f"seed{seed}_peer{i}")
            fit(Supervised(peer), peer.parameters(), data, seed=seed, checkpoint=checkpoint, **train)
        record("independent", alone)
        record("ensemble_independent", [Ensemble(alone)])
        for name, cfg in (("dml", Config()), ("dml_smoothed", Config(target="smoothed"))):
            task = DML(copy.deepcopy(init), cfg)
            fit(task, task.parameters(), data, seed=seed, checkpoint=ctx.checkpoint(f"seed{seed}_{name}"), **train)
            record(name, list(task.peers))
            if name == "dml":
                record("dml_ensemble", [Ensemble(task.peers)])
        teacher = new(s["teacher"])
        checkpoint = ctx.checkpoint(f"seed{seed}_teacher")
        fit(Supervised(teacher), teacher.parameters(), data, seed=seed, checkpoint=checkpoint, **train)
        record("teacher", [teacher])
        student = copy.deepcopy(init[0])
        checkpoint = ctx.checkpoint(f"seed{seed}_kd")
        fit(KD(student, teacher), student.parameters(), data, seed=seed, checkpoint=checkpoint, **train)
        record("kd_teacher", [student])

    peer_cols = model_row(new(s["peer"]), data.input_shape)
    pair_cols = model_row(Ensemble([new(s["peer"]), new(s["peer"])]), data.input_shape)
    p_name, t_name = f"{s['peer'][0]} w={s['peer'][1]:g}", f"{s['teacher'][0]} w={s['teacher'][1]:g}"
    rows = [
        dict(
            name="teacher",
            label=f"Teacher alone ({t_name})",
            role="teacher",
            **model_row(new(s["teacher"]), data.input_shape),
        ),
        dict(name="independent", label=f"Peer alone ({p_name})", role="baseline", **peer_cols),
        dict(name="kd_teacher", label="Peer + KD from teacher", role="baseline", **peer_cols),
        dict(name="dml", label="Peer with DML (K=2)", role="method", **peer_cols),
        dict(name="dml_smoothed", label="Entropy-matched smoothing", role="ablation", **peer_cols),
        dict(name="ensemble_independent", label="Ensemble of 2 alone", role="ablation", **pair_cols),
        dict(name="dml_ensemble", label="Ensemble of 2 DML peers", role="ablation", **pair_cols),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
        peers = per_peer[row["name"]]
        if len(peers[0]) > 1:  # accuracy of each peer, mean over seeds
            row["extra"] = {f"peer{k + 1}_acc": sum(p[k] for p in peers) / len(peers) for k in range(len(peers[0]))}
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "dml_zhang2018", title=f"DML on {data.name} ({len(ctx.seeds)} seeds)")

    reproduced = all(
        beats([p[k] for p in per_peer["dml"]], [p[k] for p in per_peer["independent"]]) for k in range(2)
    )  # each peer beats itself trained alone, paired by seed

    def cmp(a: str, b: str) -> str:
        """`a` against `b` by the paired-seed `beats` rule, with the mean difference."""
        return versus(acc[a], acc[b], digits=2)

    if beats(acc["dml"], acc["dml_smoothed"]):
        penalty = (
            f"No: DML {cmp('dml', 'dml_smoothed')} a label-smoothing target of the same entropy with no peer "
            "knowledge, so the peer's posterior carries more than a penalty."
        )
    elif beats(acc["dml_smoothed"], acc["dml"]):
        penalty = (
            f"At this scale the peer's posterior is worth no more than a penalty: entropy-matched smoothing "
            f"{cmp('dml_smoothed', 'dml')} DML, and DML {cmp('dml', 'independent')} independent training."
        )
    else:
        penalty = (
            f"Inconclusive at this scale: DML {cmp('dml', 'dml_smoothed')} entropy-matched smoothing, so the "
            f"peer's posterior is not shown to carry more than softening; DML {cmp('dml', 'independent')} "
            "independent training."
        )
    if beats(acc["dml"], acc["kd_teacher"]):
        teacher_answer = f"At this scale a same-size peer was enough: DML {cmp('dml', 'kd_teacher')} KD from a larger "
        teacher_answer += "pretrained teacher."
    elif beats(acc["kd_teacher"], acc["dml"]):
        teacher_answer = f"At this scale the larger pretrained teacher did better: KD {cmp('kd_teacher', 'dml')} DML."
    else:
        teacher_answer = (
            f"Inconclusive at this scale: DML {cmp('dml', 'kd_teacher')} KD from a larger pretrained teacher, and "
            f"against independent training DML {cmp('dml', 'independent')}, KD {cmp('kd_teacher', 'independent')}."
        )
    return {
        "id": "dml_zhang2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{epochs * -(-data.n_train // s['batch_size'])} SGD steps per network; "
            f"K=2 peers {p_name} from the same initialisation in every variant; teacher {t_name}; SGD "
            f"momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd 5e-4, same epochs and batch order for "
            "all; peers updated simultaneously with detached targets; KD baseline T=4, alpha=0.9; accuracy of a "
            "cohort row = mean of its two peers.",
        },
        "rows": rows,
        "claim": {
            "text": "Every network trained in a DML cohort is more accurate than the same network trained alone.",
            "reproduced": reproduced,
            "evidence": f"peer 1: DML {rows[3]['extra']['peer1_acc']:.2f}% vs alone "
            f"{rows[1]['extra']['peer1_acc']:.2f}%; peer 2: DML {rows[3]['extra']['peer2_acc']:.2f}% vs alone "
            f"{rows[1]['extra']['peer2_acc']:.2f}% (mean over {len(ctx.seeds)} seed(s), {data.name}).",
        },
        "answers": [
            {
                "question": Q_PENALTY,
                "answer": penalty,
                "evidence": f"alone {mean['independent']:.2f}%, DML {mean['dml']:.2f}%, entropy-matched smoothing "
                f"{mean['dml_smoothed']:.2f}%.",
            },
            {
                "question": Q_TEACHER,
                "answer": teacher_answer,
                "evidence": f"teacher {mean['teacher']:.2f}%; peer + KD from teacher {mean['kd_teacher']:.2f}%; "
                f"DML peer "
                f"{mean['dml']:.2f}%; alone {mean['independent']:.2f}%; ensemble of two independent peers "
                f"{mean['ensemble_independent']:.2f}% (two networks at inference).",
            },
        ],
        "figures": [figure],
    }
