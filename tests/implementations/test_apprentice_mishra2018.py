"""Paper properties of Apprentice (Mishra & Marr, 2018): quantizers, the joint loss, the schemes, the reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from implementations._models import CNN1d
from implementations.distillation._base import smoke_task
from implementations.distillation.apprentice_mishra2018 import (
    Apprentice,
    Config,
    apprentice_loss,
    low_precision,
    quantize_activation,
)


def test_activation_quantizer_levels_and_straight_through_gradient() -> None:
    a = torch.tensor([-0.5, 0.1, 0.2, 0.45, 0.9, 1.4], requires_grad=True)
    out = quantize_activation(a, bits=2, clip=1.0)  # levels {0, 1/3, 2/3, 1}
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 1 / 3, 1 / 3, 1.0, 1.0]))
    out.sum().backward()
    # STE: gradient 1 inside [0, c], 0 where the clip is active
    assert torch.equal(a.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0]))
    codes = quantize_activation(torch.linspace(0, 4, 101), bits=4, clip=3.0) * 15 / 3
    assert torch.allclose(codes, codes.round(), atol=1e-5) and codes.max() == 15 and len(codes.unique()) == 16


def test_low_precision_ternarises_inner_weights_per_channel_and_quantizes_inputs() -> None:
    torch.manual_seed(0)
    model = CNN1d(1, 40, 10, (4, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    low_precision(model, weight_bits=2, act_bits=4, act_clip=1.0)
    first, inner, head = model.stages[0][0], [model.stages[1][0], model.stages[2][0]], model.head
    # first and last layers keep their full-precision weights
    assert torch.equal(first.weight, before["stages.0.0.weight"]) and torch.equal(head.weight, before["head.weight"])
    for i, layer in enumerate(inner, start=1):
        w = before[f"stages.{i}.0.weight"]  # (C_out, C_in, k)
        scale = w.abs().amax(dim=(1, 2), keepdim=True)  # absmax per output channel, 2^(2-1) - 1 = 1 level
        assert torch.allclose(layer.weight, scale * torch.round(w / scale))
        assert all(len(row.unique()) <= 3 for row in layer.weight.detach().flatten(1))
    seen = {}
    for name, layer in (("first", first), ("inner", inner[0]), ("head", head)):
        layer.register_forward_hook(lambda _m, args, _out, name=name: seen.__setitem__(name, args[0].detach()))
    x = torch.randn(16, 1, 40)
    model(x).sum().backward()
    assert torch.equal(seen["first"], x)  # the data enters at full precision
    for name in ("inner", "head"):
        codes = seen[name] * 15
        assert torch.allclose(codes, codes.round(), atol=1e-4) and 0 <= seen[name].min() and seen[name].max() <= 1
    assert inner[0].parametrizations.weight.original.grad.abs().sum() > 0  # STE reaches the latent FP weights


def test_joint_loss_gradients_match_the_paper_and_teacher_learns_from_labels_only() -> None:
    gen = torch.Generator().manual_seed(0)
    z_a = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1])
    cfg = Config(alpha=0.7, beta=0.5, gamma=0.3, temperature=1.0)
    losses = apprentice_loss(z_a, z_t, y, cfg, train_teacher=True)
    assert set(losses) == {"ce", "kd", "teacher_ce"}
    p_a, p_t, onehot = z_a.softmax(-1), z_t.softmax(-1), F.one_hot(y, 4).double()
    # value: alpha H(y, p_T) + beta H(y, p_A) + gamma [H(p_T, p_A) - H(p_T)]
    h_soft = -(p_t * p_a.log()).sum(-1).mean() - (-(p_t * p_t.log()).sum(-1).mean())
    expected = 0.7 * F.cross_entropy(z_t, y) + 0.5 * F.cross_entropy(z_a, y) + 0.3 * h_soft
    assert torch.allclose(sum(losses.values()), expected)
    sum(losses.values()).backward()
    p_a, p_t = p_a.detach(), p_t.detach()
    assert torch.allclose(z_a.grad, (0.5 * (p_a - onehot) + 0.3 * (p_a - p_t)) / 5)
    assert torch.allclose(z_t.grad, 0.7 * (p_t - onehot) / 5)  # the gamma term does not move the teacher
    assert "teacher_ce" not in apprentice_loss(z_a, z_t, y, cfg)


def test_scheme_b_freezes_the_teacher_and_scheme_a_trains_it() -> None:
    task, x, y = smoke_task(Apprentice)
    task.train()
    assert not task.teacher.training and not any(p.requires_grad for p in task.teacher.parameters())
    assert sum(1 for m in task.student.modules() if hasattr(m, "parametrizations")) > 0  # student is quantized
    assert not any(hasattr(m, "parametrizations") for m in task.teacher.modules())  # teacher stays FP
    _, losses = task.forward_train(x, y)
    assert set(losses) == {"ce", "kd"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in task.teacher.parameters())

    joint, x, y = smoke_task(lambda student, teacher: Apprentice(student, teacher, joint=True))
    joint.train()
    assert joint.teacher.training
    assert {id(p) for p in joint.teacher.parameters()} <= {id(p) for p in joint.trainable_parameters()}
    _, losses = joint.forward_train(x, y)
    assert set(losses) == {"ce", "kd", "teacher_ce"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in joint.teacher.parameters())


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.apprentice_mishra2018 import reproduce
    from implementations.distillation.apprentice_mishra2018.experiment import QUESTIONS
    from kb.registry import load_registry
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run apprentice_mishra2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"w2_scratch", "w2_a", "w2_b", "w2_c", "w2_c_nokd", "fp", "fp_kd"} <= {row.name for row in result.rows}
    assert result.row("w2_b").bits == 2 and result.row("w2_b").bytes < result.row("fp").bytes
    assert result.protocol.n_train == 500
    paper = next(
        p for p in load_registry(Path(__file__).resolve().parents[2]).papers if p.id == "apprentice_mishra2018"
    )
    assert [a.question for a in result.answers] == list(QUESTIONS)
    assert set(QUESTIONS) <= {q.question for q in paper.open_questions}  # verbatim registry wording
    assert (tmp_path / "results" / "figures" / "apprentice_mishra2018_bits.png").stat().st_size > 1000
