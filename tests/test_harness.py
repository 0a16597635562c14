"""The training harness: the loss contract, determinism, checkpoint/resume, evaluation, CUDA-path flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._data import TensorData
from implementations._harness import (
    RunContext,
    Supervised,
    evaluate,
    fit,
    on_fit_end,
    resolve_device,
    seed_everything,
)
from implementations._models import build_model


def blobs(n: int = 256, d: int = 8, k: int = 3, seed: int = 0) -> TensorData:
    """Linearly separable Gaussian blobs: class c is centred at 3 * e_c."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=gen)
    x = torch.randn(n, d, generator=gen) * 0.5
    x[torch.arange(n), y] += 3.0
    return TensorData(x[: n // 2], y[: n // 2], x[n // 2 :], y[n // 2 :], num_classes=k, input_shape=(d,))


def mlp_task(seed: int = 0) -> Supervised:
    seed_everything(seed)
    return Supervised(build_model("mlp", 3, (8,), width=0.125))


def state(task: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in task.state_dict().items()}


def test_fit_learns_separable_data() -> None:
    data = blobs()
    task = mlp_task()
    before = evaluate(task, data)
    result = fit(task, task.parameters(), data, epochs=5, lr=0.1, batch_size=32, progress=False)
    assert evaluate(task, data) > 95.0 > before
    assert len(result.history) == 5 and result.history[-1]["loss"] < result.history[0]["loss"]


def test_same_seed_same_numbers_other_seed_different() -> None:
    data = blobs()
    runs = []
    for seed in (0, 0, 1):
        task = mlp_task(seed)
        history = fit(task, task.parameters(), data, epochs=2, lr=0.1, batch_size=32, seed=seed, progress=False)
        runs.append((state(task), [h["loss"] for h in history.history]))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    assert runs[0][1] != runs[2][1]


class TwoTerms(nn.Module):
    """A task with two weighted terms, to check that fit() minimises and logs their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.model = build_model("mlp", 3, (8,), width=0.125)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.model(x)
        return logits, {"ce": 0.5 * F.cross_entropy(logits, y), "l2": 0.01 * logits.pow(2).mean()}


def test_losses_are_summed_and_logged() -> None:
    seed_everything(0)
    task = TwoTerms()
    history = fit(task, task.parameters(), blobs(), epochs=1, lr=0.05, batch_size=32, progress=False).history
    entry = history[0]
    assert {"loss", "ce", "l2", "lr", "time_s"} <= entry.keys()
    assert entry["loss"] == pytest.approx(entry["ce"] + entry["l2"], rel=1e-5)


def test_only_given_params_are_trained() -> None:
    seed_everything(0)
    task = TwoTerms()
    frozen = state(task.model.head)
    body = [p for n, p in task.named_parameters() if "head" not in n]
    fit(task, body, blobs(), epochs=1, lr=0.1, batch_size=32, progress=False)
    assert all(torch.equal(frozen[k], v) for k, v in task.model.head.state_dict().items())


def test_resume_after_interruption_equals_straight_run(tmp_path: Path) -> None:
    data = blobs()
    kwargs = dict(epochs=4, lr=0.1, batch_size=32, seed=3, progress=False)
    straight = mlp_task()
    full = fit(straight, straight.parameters(), data, **kwargs)

    def interrupt(epoch: int, _entry: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "run" / "ckpt.pt"
    first = mlp_task()
    with pytest.raises(KeyboardInterrupt):
        fit(first, first.parameters(), data, checkpoint=ckpt, on_epoch_end=interrupt, **kwargs)
    assert ckpt.is_file() and [p.name for p in ckpt.parent.iterdir()] == ["ckpt.pt"]  # no temporary files left
    torch.manual_seed(123)  # a fresh process would not share the interrupted run's RNG state
    resumed_task = mlp_task(seed=7)  # different initial weights: everything must come from the checkpoint
    resumed = fit(resumed_task, resumed_task.parameters(), data, checkpoint=ckpt, **kwargs)
    assert resumed.resumed_from == 2
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    expected = state(straight)
    assert all(torch.equal(expected[k], v) for k, v in resumed_task.state_dict().items())


def test_checkpoint_of_another_run_is_rejected(tmp_path: Path) -> None:
    data, ckpt = blobs(), tmp_path / "ckpt.pt"
    task = mlp_task()
    fit(task, task.parameters(), data, epochs=1, lr=0.1, batch_size=32, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="different run"):
        fit(task, task.parameters(), data, epochs=1, lr=0.2, batch_size=32, checkpoint=ckpt, progress=False)


def test_evaluate_counts_correct_predictions_and_restores_mode() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(1))

        def forward(self, x: Tensor) -> Tensor:
            return F.one_hot(x[:, 0].long(), 4).float() + self.bias

    y = torch.tensor([0, 1, 2, 3, 0])
    x = torch.tensor([[0.0], [1.0], [2.0], [0.0], [3.0]])  # predictions 0, 1, 2, 0, 3: three of five right
    data = TensorData(x, y, x, y, num_classes=4, input_shape=(1,))
    model = Fixed().train()
    assert evaluate(model, data, batch_size=2) == pytest.approx(60.0)
    assert model.training


def test_supervised_task_is_cross_entropy() -> None:
    task = mlp_task()
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    logits, losses = task.forward_train(x, y)
    assert list(losses) == ["ce"] and torch.allclose(losses["ce"], F.cross_entropy(logits, y))


def test_cuda_path_flags_run_on_cpu() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    data = TensorData(x, y, x, y, num_classes=3, input_shape=(1, 8, 8))
    seed_everything(0)
    task = Supervised(build_model("cnn2d", 3, (1, 8, 8), width=0.25))
    history = fit(
        task,
        task.parameters(),
        data,
        epochs=1,
        lr=0.05,
        batch_size=8,
        progress=False,
        bf16=True,
        channels_last=True,
        eval_every_epoch=True,
        augment=lambda xb, g: xb.flip(-1),
    ).history
    assert torch.isfinite(torch.tensor(history[0]["loss"])) and 0.0 <= history[0]["test_acc"] <= 100.0


def test_extra_state_of_the_epoch_callback_survives_a_resume(tmp_path: Path) -> None:
    """Snapshots that `on_epoch_end` keeps (KD's weak teachers) come back from the checkpoint after an interruption."""
    data, ckpt = blobs(), tmp_path / "ckpt.pt"
    kwargs = dict(epochs=3, lr=0.1, batch_size=32, seed=1, progress=False, checkpoint=ckpt)

    def keeper(task: nn.Module, snapshots: dict, stop_at: int | None = None):
        def keep(epoch: int, _entry: dict) -> None:
            snapshots[epoch] = state(task)
            if epoch == stop_at:
                raise KeyboardInterrupt

        return keep

    first, snapshots = mlp_task(), {}
    with pytest.raises(KeyboardInterrupt):
        fit(first, first.parameters(), data, on_epoch_end=keeper(first, snapshots, stop_at=2), extra_state=snapshots,
            **kwargs)
    resumed, restored = mlp_task(seed=5), {"stale": 1}
    result = fit(resumed, resumed.parameters(), data, on_epoch_end=keeper(resumed, restored), extra_state=restored,
                 **kwargs)
    # The callback's state is saved with its epoch, so the interrupted epoch 2 (whose callback did not finish) runs
    # again: epoch 1's snapshot comes from the file, epochs 2-3 from this run, identical to the first run's.
    assert result.resumed_from == 1 and sorted(restored) == [1, 2, 3]
    for epoch in (1, 2):
        assert all(torch.equal(snapshots[epoch][k], restored[epoch][k]) for k in snapshots[epoch])
    assert all(torch.equal(restored[3][k], v) for k, v in resumed.state_dict().items())
    # A finished run's checkpoint skips training entirely and still hands back every snapshot.
    again, kept = mlp_task(seed=9), {}
    assert fit(again, again.parameters(), data, extra_state=kept, **kwargs).resumed_from == 3 and sorted(kept) == [
        1, 2, 3]


def test_run_context_checkpoint_paths(tmp_path: Path) -> None:
    assert RunContext().checkpoint("seed0_teacher") is None  # no folder: the run keeps no checkpoints
    ctx = RunContext(checkpoint_dir=tmp_path / "kd")
    assert ctx.checkpoint("seed0_teacher") == tmp_path / "kd" / "seed0_teacher.pt"
    with pytest.raises(ValueError, match="checkpoint name"):
        ctx.checkpoint("../escape")


def test_resolve_device_follows_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun's process 3 on this machine
    assert resolve_device("auto") == "cuda:3" and resolve_device("cuda") == "cuda:3"
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:0") == "cuda:0"  # explicit choices stand
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


def test_on_fit_end_sees_every_training() -> None:
    seen = []
    with on_fit_end(seen.append):
        for epochs in (1, 2):
            task = mlp_task()
            fit(task, task.parameters(), blobs(), epochs=epochs, lr=0.1, batch_size=64, progress=False)
    task = mlp_task()
    fit(task, task.parameters(), blobs(), epochs=1, lr=0.1, batch_size=64, progress=False)  # outside: not seen
    assert [len(r.history) for r in seen] == [1, 2]
