"""Family leaderboards under one protocol (`kb bench`): matched budgets, sizes, schema, rendering."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from kb.registry import load_registry
from kb.results import ResultError, load_benchmark, write_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registry():
    return load_registry(ROOT)


@pytest.fixture(scope="module")
def pruning(registry) -> dict:
    from implementations._bench import bench_pruning

    return bench_pruning(registry, quick=True)


@pytest.fixture(scope="module")
def quantization(registry) -> dict:
    from implementations._bench import bench_quantization

    return bench_quantization(registry, quick=True)


def _budgets(bench: dict) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in bench["rows"]:
        groups.setdefault((row["track"], row["budget"]), []).append(row)
    return groups


def test_pruning_bench_matches_the_budget_of_every_method(pruning: dict, tmp_path: Path) -> None:
    assert pruning["failures"] == {}  # every method ran; a crash would show here
    write_benchmark(pruning, tmp_path / "pruning.json")  # valid against the schema
    ref = pruning["reference"]
    groups = _budgets(pruning)
    assert {track for track, _ in groups} == {"unstructured weights", "channels removed"}
    for (track, budget), rows in groups.items():
        assert sum(r["baseline"] for r in rows) == 1, budget  # exactly one baseline per budget
        assert len(rows) >= 4, budget
        # matched budget: every method ends with the same number of nonzero parameters and the same FLOPs
        assert len({r["nonzero_params"] for r in rows}) == 1, (budget, [r["nonzero_params"] for r in rows])
        assert len({r["flops"] for r in rows}) == 1, budget
        if track == "channels removed":  # physically smaller: fewer parameters and FLOPs than the dense net
            assert all(r["params"] < ref["params"] and r["flops"] < ref["flops"] for r in rows)
        else:  # masked: same shapes and FLOPs, 80% of the weights gone (biases and BN stay)
            assert all(r["params"] == ref["params"] and r["flops"] == ref["flops"] for r in rows)
            weights = 160 + 32 * 64 * 5 + 64 * 64 * 5 + 320 * 10  # conv and linear weights of cnn1d w=1
            others = ref["params"] - weights
            assert rows[0]["nonzero_params"] <= weights - math.floor(0.8 * weights) + others
            assert rows[0]["bytes"] == 8 * rows[0]["nonzero_params"]  # fp32 value + int32 index per nonzero


def test_channel_fraction_removes_exactly_that_share_of_each_stage(registry, pruning: dict) -> None:
    # 50% of (32, 64, 64) channels leaves (16, 32, 32): conv weights, BN, and the head on 32 x 5 inputs
    kept = 1 * 16 * 5 + 16 * 32 * 5 + 32 * 32 * 5 + 2 * (16 + 32 + 32) + 32 * 5 * 10 + 10
    rows = [r for r in pruning["rows"] if r["budget"] == "50% of channels"]
    assert {r["params"] for r in rows} == {kept}


def test_quantization_bench_sizes_follow_the_bit_width(quantization: dict, tmp_path: Path) -> None:
    assert quantization["failures"] == {}
    write_benchmark(quantization, tmp_path / "quantization.json")
    ref = quantization["reference"]
    weights = 160 + 32 * 64 * 5 + 64 * 64 * 5 + 320 * 10
    others = ref["params"] - weights
    for (_, budget), rows in _budgets(quantization).items():
        bits = int(budget.split()[0])
        assert sum(r["baseline"] for r in rows) == 1
        codes = math.ceil(bits * weights / 8) + 4 * others
        for row in rows:
            assert row["bits"] == bits
            assert row["bytes"] >= codes  # codes plus codebooks/scales: never below the b-bit payload
            assert row["bytes"] < ref["bytes"] / 4, row  # far below fp32
        base = next(r for r in rows if r["baseline"])
        assert base["bytes"] == codes + 4 * 4  # one fp32 scale per weight tensor (4 tensors)


def test_quantize_weights_counts_codes_and_codebooks() -> None:
    from implementations._bench_compression import _quantize_weights

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # weights 12 + 6, biases 3 + 2
    out, size = _quantize_weights(model, 2, lambda name, w: (torch.sign(w), 4))
    assert torch.equal(out[0].weight, torch.sign(model[0].weight))
    assert not torch.equal(out[0].weight, model[0].weight)  # the copy is coded, the original is untouched
    assert size["bytes"] == math.ceil(2 * 18 / 8) + 4 * (4 + 4) + 4 * 5
    assert size["params"] == 23 and size["bits"] == 2.0


def test_excluded_papers_are_named_with_a_reason(registry, pruning: dict, quantization: dict) -> None:
    ids = {p.id for p in registry.papers}
    for bench in (pruning, quantization):
        assert bench["excluded"], bench["family"]
        assert set(bench["excluded"]) <= ids
        assert not set(bench["excluded"]) & {r["paper"] for r in bench["rows"]}
        assert all(len(why) > 20 for why in bench["excluded"].values())


def test_committed_benchmarks_are_valid_and_cover_the_families() -> None:
    files = {p.stem: load_benchmark(p) for p in (ROOT / "results" / "benchmarks").glob("*.json")}
    families = {"distillation", "mutual-learning", "self-distillation", "pruning", "quantization", "low-rank",
                "architecture", "automl"}
    assert families <= set(files)
    for family, bench in files.items():
        assert bench.family == family and bench.profile == "default"
        assert bench.rows


def test_benchmark_schema_rejects_a_compression_bench_without_baseline(pruning: dict, tmp_path: Path) -> None:
    bad = {**pruning, "rows": [{**r, "baseline": False} for r in pruning["rows"]]}
    with pytest.raises(ValueError, match="baseline"):
        write_benchmark(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ResultError, match="broken.json"):
        load_benchmark(tmp_path / "broken.json")


def test_compression_leaderboard_renders_budgets_deltas_and_plot(pruning: dict) -> None:
    from kb.pages import bench_points, category_page, load_site_data

    data = load_site_data(ROOT)
    page = category_page(replace(data, benchmarks={"pruning": pruning}), "pruning")
    assert "## Leaderboard under one protocol" in page
    assert "### Unstructured weights" in page and "### Channels removed" in page
    assert "*random weights (baseline)*" in page
    base = next(r for r in pruning["rows"] if r["baseline"] and r["budget"] == "80% sparsity")
    row = next(r for r in pruning["rows"] if r["method"] == "magnitude, one-shot")
    delta = f"{row['accuracy']['mean'] - base['accuracy']['mean']:+.2f}"
    assert f"| magnitude, one-shot | {row['accuracy']['mean']:.2f} ± {row['accuracy']['std']:.2f} | {delta} |" in page
    assert "../figures/bench_pruning.png" in page
    assert "[`dsd_han2017`](../papers/dsd_han2017.md)" in page
    points = bench_points(pruning)
    assert len(points) == len(pruning["rows"]) + 1 and points[-1].paper == "dense fp32"


def test_kb_bench_rejects_an_unknown_family(capsys: pytest.CaptureFixture[str]) -> None:
    from kb.cli import main

    assert main(["bench", "other"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["mutual-learning", "self-distillation"])
def test_cohort_bench_scores_every_method_of_the_family(registry, family: str, tmp_path: Path) -> None:
    from implementations import _bench

    bench = getattr(_bench, _bench.BENCHES[family])(registry, quick=True)
    write_benchmark(bench, tmp_path / f"{family}.json")
    assert bench["kind"] == "cohort" and bench["failures"] == {}
    in_family = {p.id for p in registry.papers if p.category == family}
    ran = {r["paper"] for r in bench["rows"]}
    assert ran | set(bench["excluded"]) == in_family  # every paper is either ranked or excluded with a reason
    if family == "mutual-learning":  # the first peer alone is scored too
        assert all(r["peer_accuracy"] is not None for r in bench["rows"])


def test_cohort_leaderboard_renders_deltas_against_the_network_alone() -> None:
    from kb.pages import category_page, load_site_data

    data = load_site_data(ROOT)
    acc = {"mean": 80.0, "std": 1.0, "values": [79.0, 81.0]}
    bench = {
        "family": "mutual-learning", "kind": "cohort", "profile": "default",
        "protocol": {"dataset": "mnist1d", "n_train": 4000, "n_test": 1000, "teacher": "none",
                     "student": "2 peers", "seeds": [0, 1], "teacher_epochs": 8, "epochs": 8, "notes": ""},
        "baseline": {"mean": 78.5, "std": 0.5, "values": [78.0, 79.0]},
        "rows": [{"paper": "dml_zhang2018", "method": "DML", "accuracy": acc,
                  "peer_accuracy": {"mean": 77.5, "std": 0.5, "values": [77.0, 78.0]}}],
        "wall_time_s": 1.0, "created": "2026-01-01T00:00:00",
    }
    page = category_page(replace(data, benchmarks={"mutual-learning": bench}), "mutual-learning")
    assert "| `DML` | 80.00 ± 1.00 | +1.50 | 77.50 ± 0.50 | -1.00 |" in page
    assert "network alone (baseline)" in page


def test_tucker_ranks_are_the_largest_that_fit_the_budget() -> None:
    from implementations._bench_compression import _tucker_ranks

    conv = nn.Conv2d(32, 64, 3)
    r_in, r_out = _tucker_ranks(conv, 0.25)
    cost = lambda a, b: 32 * a + a * b * 9 + b * 64  # noqa: E731 - C R1 + R1 R2 k^2 + R2 N
    assert cost(r_in, r_out) <= 0.25 * 64 * 32 * 9 == 4608
    # the next step of the 1/64 grid no longer fits
    step = round(r_in / 32 * 64) + 1
    assert cost(round(step / 64 * 32), round(step / 64 * 64)) > 4608


def test_low_rank_bench_keeps_every_method_inside_the_flops_budget(registry, tmp_path: Path) -> None:
    from implementations._bench import bench_low_rank

    bench = bench_low_rank(registry, quick=True)
    write_benchmark(bench, tmp_path / "low-rank.json")
    assert bench["failures"] == {} and set(bench["excluded"]) == {"kernelcluster_son2018"}
    ref = bench["reference"]
    rows = bench["rows"]
    assert {r["paper"] for r in rows} == {"fga_peng2018", "lowrank_kth2018"}
    assert sum(r["baseline"] for r in rows) == 1
    flops = [r["flops"] for r in rows]
    assert max(flops) < 0.5 * ref["flops"]  # the first conv (1 input channel) and the head stay dense
    assert max(flops) <= 1.1 * min(flops)  # matched budget, up to rank rounding


def test_architecture_bench_trains_every_architecture_and_renders(registry, tmp_path: Path) -> None:
    from implementations._bench import bench_architecture
    from kb.pages import bench_points, category_page, load_site_data

    bench = bench_architecture(registry, quick=True)
    write_benchmark(bench, tmp_path / "architecture.json")
    assert bench["kind"] == "architecture" and bench["failures"] == {} and "teacher" not in bench
    papers = {p.id for p in registry.papers if p.category == "architecture"}
    assert {r["paper"] for r in bench["rows"]} == papers
    by = {r["method"]: r for r in bench["rows"]}
    # the separable designs are several times smaller than their plain twins (1/N + 1/D_K^2 per layer)
    assert by["MobileNet (depthwise separable)"]["params"] * 5 < by["Conv MobileNet (standard 3x3 convs)"]["params"]
    assert by["Xception (separable, residual)"]["flops"] * 4 < by["Xception layout, regular convs"]["flops"]
    data = load_site_data(ROOT)
    page = category_page(replace(data, benchmarks={"architecture": bench}), "architecture")
    assert "trained from scratch with the same recipe" in page
    assert "*Conv MobileNet (standard 3x3 convs) (baseline)*" in page
    assert len(bench_points(bench)) == len(bench["rows"])  # no dense reference point


def test_automl_bench_keeps_every_search_inside_the_flops_target(registry, tmp_path: Path) -> None:
    from implementations._bench import bench_automl

    bench = bench_automl(registry, quick=True)
    write_benchmark(bench, tmp_path / "automl.json")
    assert bench["failures"] == {} and set(bench["excluded"]) == {"autoslim_yu2019"}
    assert {r["paper"] for r in bench["rows"]} == {"amc_he2018", "constraintaware_chen2018"}
    for row in bench["rows"]:  # physically pruned and within 30% of the dense network's FLOPs
        assert row["flops"] <= 0.3 * bench["reference"]["flops"], row
        assert row["params"] < bench["reference"]["params"]


def test_run_bench_pins_one_thread_and_restores_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from implementations import _bench

    seen: list[int] = []
    monkeypatch.setitem(_bench.BENCHES, "probe", "bench_probe")
    monkeypatch.setattr(_bench, "bench_probe", lambda registry, quick, progress: seen.append(torch.get_num_threads()),
                        raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _bench.run_bench("probe", registry=None)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_distillation_leaderboard_leaves_out_what_its_protocol_cannot_host(registry) -> None:
    """Subclass distillation needs a C*s-logit teacher; the shared protocol's C-class teacher is refused by it."""
    from implementations import _bench

    assert "subclass_muller2020" not in {pid for pid, _ in _bench._distillers(registry)}
    bench = load_benchmark(ROOT / "results" / "benchmarks" / "distillation.json")
    assert "subclass_muller2020" in bench.excluded
    assert "subclass_muller2020" not in {row.paper for row in bench.rows}
    assert not bench.failures
