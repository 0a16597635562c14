"""Figures the site draws from the results files at build time (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Point", "leaderboard_png", "pareto_front", "pareto_png"]


@dataclass(frozen=True)
class Point:
    """One trained variant: its paper, label, size (x) and accuracy (y)."""

    paper: str
    label: str
    size: float
    accuracy: float


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes (smaller size and higher accuracy), by size."""
    front: list[Point] = []
    best = float("-inf")
    for p in sorted(points, key=lambda p: (p.size, -p.accuracy)):
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def pareto_png(points: Sequence[Point], xlabel: str, title: str) -> bytes:
    """Accuracy against size (log x axis), one colour per paper, the Pareto front as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5), dpi=110)
    colors, markers = plt.get_cmap("tab20").colors, "osD^vPX<>"
    series = sorted({p.paper for p in points})
    for i, paper in enumerate(series):
        mine = [p for p in points if p.paper == paper]
        # 20 colours x 9 markers: no two series look alike even on the biggest category
        ax.scatter([p.size for p in mine], [p.accuracy for p in mine], label=paper, s=30, alpha=0.85,
                   color=colors[i % len(colors)], marker=markers[(i // len(colors) + i) % len(markers)])
    front = pareto_front(points)
    if len(front) > 1:
        ax.step([p.size for p in front], [p.accuracy for p in front], where="post", color="black", lw=1,
                alpha=0.6, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # the legend sits right of the axes so it never hides a point; fixed margins (tight_layout costs a draw)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(series) // 18, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.64, bottom=0.11, top=0.93)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def leaderboard_png(labels: Sequence[str], means: Sequence[float], stds: Sequence[float], baseline: float,
                    teacher: float | None, title: str, baseline_label: str = "student alone") -> bytes:
    """Horizontal bars of mean accuracy (± std) per method, with the student-alone and teacher lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(labels) + 1.4), dpi=110)
    ypos = list(range(len(labels)))[::-1]
    colors = ["#2e7d32" if m > baseline else "#c62828" for m in means]
    ax.barh(ypos, means, xerr=stds, color=colors, alpha=0.8)
    ax.axvline(baseline, color="black", ls="--", lw=1, label=f"{baseline_label} {baseline:.1f}%")
    if teacher is not None:
        ax.axvline(teacher, color="#1565c0", ls=":", lw=1, label=f"teacher {teacher:.1f}%")
    ax.set_yticks(ypos, labels, fontsize=8)
    ax.set_xlabel("test accuracy of the deployed network (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
