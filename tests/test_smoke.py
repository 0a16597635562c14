"""One smoke test per implemented paper: one forward_train on a seeded synthetic batch, then backward."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from kb.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
IMPLEMENTED = [p for p in load_registry(ROOT).papers if p.status == "implemented"]


@pytest.mark.parametrize("paper", IMPLEMENTED, ids=lambda p: p.id)
def test_smoke(paper) -> None:
    torch = pytest.importorskip("torch")
    module = importlib.import_module(paper.module)
    assert paper.implementation.entrypoint in module.__all__
    assert callable(getattr(module, "reproduce", None)), f"{paper.module} has no reproduce(ctx)"
    base = importlib.import_module(f"implementations.{paper.family}._base")
    task, x, y = base.smoke_task(getattr(module, paper.implementation.entrypoint))
    logits, losses = task.forward_train(x, y)
    assert logits.shape[0] == x.shape[0]
    assert losses, "forward_train returned no loss terms"
    loss = sum(losses.values())
    assert torch.isfinite(loss), {k: float(v) for k, v in losses.items()}
    loss.backward()
    trainable = [p for p in task.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
