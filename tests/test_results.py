"""The results schema (`kb.results`) and the runner that writes `results/<id>.json`."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kb.results import Result, ResultError, load_result, write_result

VALID: dict[str, Any] = {
    "id": "kd_hinton2015",
    "schema_version": 1,
    "profile": "quick",
    "command": "kb run kd_hinton2015 --quick",
    "protocol": {"dataset": "mnist1d", "n_train": 500, "n_test": 1000, "seeds": [0], "epochs": 3, "selection": "last"},
    "rows": [
        {"name": "student", "label": "Student", "role": "baseline", "accuracy": {"mean": 60, "std": 0, "values": [60]}},
        {
            "name": "student_kd",
            "label": "Student + KD",
            "role": "method",
            "params": 7434,
            "flops": 14592,
            "accuracy": {"mean": 65.0, "std": 1.0, "values": [64.0, 66.0]},
            "extra": {"temperature": 4.0},
        },
    ],
    "claim": {"text": "KD helps", "reproduced": True, "evidence": "65 > 60"},
    "answers": [{"question": "Good teacher?", "answer": "Yes", "evidence": "numbers"}],
    "figures": ["results/figures/kd_hinton2015_accuracy.png"],
    "environment": {"torch": "2.14.1", "python": "3.11", "device": "cpu", "git_commit": None, "platform": "linux"},
    "wall_time_s": 3.2,
    "created": "2025-01-01T00:00:00+00:00",
}


def mutated(path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def test_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "results" / "kd_hinton2015.json"
    write_result(VALID, out)
    result = load_result(out)
    assert isinstance(result, Result) and result.row("student_kd").accuracy.values == [64.0, 66.0]
    assert json.loads(out.read_text())["rows"][1]["extra"] == {"temperature": 4.0}
    assert [p.name for p in out.parent.iterdir()] == ["kd_hinton2015.json"]  # no temporary file left


@pytest.mark.parametrize(
    "path,value",
    [
        (["surprise"], 1),  # extra keys are forbidden
        (["id"], "KD-Hinton"),  # id pattern
        (["profile"], "slow"),
        (["rows", 0, "role"], "student"),
        (["rows", 0, "accuracy", "mean"], 61.0),  # mean must be the mean of values
        (["rows", 0, "accuracy", "values"], [101.0]),  # percent
        (["rows", 1, "name"], "student"),  # duplicate row names
        (["figures"], ["/tmp/abs.png"]),
        (["figures"], ["results/../../x.png"]),
        (["created"], "yesterday"),
        (["rows"], []),
    ],
)
def test_invalid_results_are_rejected_and_not_written(tmp_path: Path, path: list[Any], value: Any) -> None:
    out = tmp_path / "x.json"
    with pytest.raises(ValueError):
        write_result(mutated(path, value), out)
    assert not out.exists()


def test_load_result_errors_name_the_file(tmp_path: Path) -> None:
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{not json")
    with pytest.raises(ResultError, match="broken.json.*not valid JSON"):
        load_result(bad_json)
    bad_schema = tmp_path / "schema.json"
    bad_schema.write_text(json.dumps(mutated(["profile"], "slow")))
    with pytest.raises(ResultError, match="schema.json.*does not match"):
        load_result(bad_schema)
    with pytest.raises(ResultError, match="missing.json"):
        load_result(tmp_path / "missing.json")


def test_results_module_does_not_import_torch() -> None:
    code = "import sys, kb.results; assert 'torch' not in sys.modules, 'kb.results imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------------------------------

FAKE_PAPER = """
def reproduce(ctx):
    import json
    data = json.loads(DATA)
    data["protocol"]["seeds"] = list(ctx.seeds)
    if BREAK:
        data["rows"][0]["role"] = "nonsense"
    return {k: v for k, v in data.items() if k not in ("environment", "wall_time_s", "created", "profile", "command")}
"""


def fake_paper(tmp_path: Path, broken: bool) -> Path:
    path = tmp_path / f"fake_{int(broken)}.py"
    path.write_text(f"DATA = {json.dumps(json.dumps(VALID))}\nBREAK = {broken}\n{FAKE_PAPER}")
    return path


def test_run_paper_writes_validated_file(tmp_path: Path) -> None:
    from implementations._runner import run_paper

    out = run_paper("kd_hinton2015", str(fake_paper(tmp_path, False)), "default", tmp_path / "results", device="cpu")
    assert out == tmp_path / "results" / "kd_hinton2015.json"
    result = load_result(out)
    assert result.profile == "default" and result.protocol.seeds == [0, 1, 2]
    assert result.command == "kb run kd_hinton2015" and result.environment.device.startswith("cpu")
    assert result.wall_time_s >= 0


def test_run_paper_writes_nothing_on_invalid_result(tmp_path: Path) -> None:
    from implementations._runner import run_paper

    results = tmp_path / "results"
    results.mkdir()
    old = results / "kd_hinton2015.json"
    write_result(VALID, old)
    before = old.read_text()
    with pytest.raises(ResultError, match="invalid result"):
        run_paper("kd_hinton2015", str(fake_paper(tmp_path, True)), "quick", results, device="cpu")
    assert old.read_text() == before and [p.name for p in results.iterdir()] == ["kd_hinton2015.json"]


def test_run_paper_rejects_wrong_id_and_profile(tmp_path: Path) -> None:
    from implementations._runner import run_paper

    with pytest.raises(ResultError, match="expected 'dkd_zhao2022'"):
        run_paper("dkd_zhao2022", str(fake_paper(tmp_path, False)), "quick", tmp_path, device="cpu")
    with pytest.raises(ValueError, match="unknown profile"):
        run_paper("kd_hinton2015", str(fake_paper(tmp_path, False)), "huge", tmp_path, device="cpu")


def test_environment_records_the_thread_count_of_the_run(tmp_path: Path) -> None:
    import torch

    from implementations._runner import run_paper

    torch.set_num_threads(2)
    try:
        out = run_paper("kd_hinton2015", str(fake_paper(tmp_path, False)), "default", tmp_path, device="cpu")
        assert torch.get_num_threads() == 2  # restored after the run
    finally:
        torch.set_num_threads(1)
    assert load_result(out).environment.device.startswith("cpu (1 thread,")  # what the run used, not 2


def test_full_profile_needs_a_full_declaration(tmp_path: Path) -> None:
    from implementations._runner import ProfileError, run_paper

    plain = fake_paper(tmp_path, False)
    with pytest.raises(ProfileError, match="kd_hinton2015 has no paper-scale setting"):
        run_paper("kd_hinton2015", str(plain), "full", tmp_path / "results", device="cpu")
    assert not (tmp_path / "results").exists()  # nothing ran, nothing written
    declared = tmp_path / "declared.py"
    declared.write_text('FULL = "CIFAR-100, 240 epochs"\n' + plain.read_text())
    out = run_paper("kd_hinton2015", str(declared), "full", tmp_path / "results", device="cpu")
    assert load_result(out).profile == "full"


def test_only_rank_0_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import implementations._runner as runner

    monkeypatch.setattr(runner, "is_main_process", lambda: False)  # what a rank > 0 of a torchrun job sees
    assert runner.run_paper("kd_hinton2015", str(fake_paper(tmp_path, False)), "default", tmp_path / "r") is None
    assert not (tmp_path / "r").exists()


RESUMABLE = """
import os


def reproduce(ctx):
    import json

    import torch

    from implementations._data import TensorData
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._models import build_model

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    data = TensorData(x[:64], y[:64], x[64:], y[64:], num_classes=2, input_shape=(8,))
    seed_everything(0)
    task = Supervised(build_model("mlp", 2, (8,), width=0.125))

    def stop(epoch, entry):
        if epoch == int(os.environ.get("KB_TEST_STOP_AT", "0")):
            raise KeyboardInterrupt  # Ctrl-C in the middle of training

    run = fit(task, task.parameters(), data, epochs=4, lr=0.1, batch_size=16, progress=False,
              checkpoint=ctx.checkpoint("net"), on_epoch_end=stop)
    acc = evaluate(task, data)
    result = json.loads(DATA)
    result["rows"] = [{"name": "net", "label": "Net", "role": "method",
                       "accuracy": {"mean": acc, "std": 0.0, "values": [acc]},
                       "extra": {"final_loss": run.history[-1]["loss"], "resumed_from": float(run.resumed_from)}}]
    drop = ("environment", "wall_time_s", "created", "command", "profile")
    return {k: v for k, v in result.items() if k not in drop}
"""


def test_interrupted_run_resumes_from_its_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import CheckpointsExistError, run_paper

    module = tmp_path / "resumable.py"
    module.write_text(f"DATA = {json.dumps(json.dumps(VALID))}\n{RESUMABLE}")
    ckpt = tmp_path / "checkpoints" / "kd_hinton2015"

    def go(out: str, **kw: Any) -> Any:
        path = run_paper("kd_hinton2015", str(module), "default", tmp_path / out, device="cpu", checkpoint_dir=ckpt,
                         **kw)
        return load_result(path).row("net")

    straight = go("straight")
    assert straight.extra["resumed_from"] == 0 and not ckpt.exists()  # a finished run removes its checkpoints
    monkeypatch.setenv("KB_TEST_STOP_AT", "2")
    with pytest.raises(KeyboardInterrupt):
        go("interrupted")
    assert [p.name for p in ckpt.iterdir()] == ["net.pt"] and not (tmp_path / "interrupted").exists()
    monkeypatch.delenv("KB_TEST_STOP_AT")
    with pytest.raises(CheckpointsExistError, match="--resume"):
        go("refused")  # neither resume nor fresh: an old run's checkpoints are never picked up silently
    resumed = go("resumed", resume=True)
    assert resumed.extra["resumed_from"] == 2  # epochs 1-2 came from the checkpoint
    assert resumed.extra["final_loss"] == straight.extra["final_loss"] and resumed.accuracy == straight.accuracy
    assert not ckpt.exists()
    monkeypatch.setenv("KB_TEST_STOP_AT", "3")
    with pytest.raises(KeyboardInterrupt):
        go("interrupted")
    monkeypatch.delenv("KB_TEST_STOP_AT")
    assert go("fresh", fresh=True).extra["resumed_from"] == 0  # --fresh discards them and starts over


def test_progress_bar_counts_the_trainings_of_a_paper(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from implementations._runner import run_paper

    module = tmp_path / "resumable.py"
    module.write_text(f"DATA = {json.dumps(json.dumps(VALID))}\n{RESUMABLE}")
    run_paper("kd_hinton2015", str(module), "default", tmp_path, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "kd_hinton2015: trainings: " in err and "1fit" in err.replace(" ", "")
    run_paper("kd_hinton2015", str(module), "default", tmp_path, device="cpu", progress=False)
    assert "trainings" not in capsys.readouterr().err
