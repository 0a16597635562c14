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
