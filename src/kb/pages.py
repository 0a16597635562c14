"""Markdown for the generated site pages: one per paper, one per category, home, questions, bibliography.

Pure functions from the registry, the notes pages and the results files to Markdown strings,
so they can be tested without building the site. Reported numbers come from the registry,
reproduced ones from `results/<id>.json`; nothing here retypes a number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kb.schema import CATEGORIES, Paper, Registry

__all__ = ["CATEGORY_TITLES", "GPU_MARKER", "SiteData", "bench_points", "bibliography_page", "category_page",
           "gpu_results", "home_page",
           "leaderboard", "load_site_data", "nav_label", "paper_page", "pareto_points", "questions_page",
           "shared_leaderboard"]

CATEGORY_TITLES = {
    "distillation": "Knowledge distillation",
    "mutual-learning": "Mutual and online learning",
    "self-distillation": "Self-distillation",
    "pruning": "Pruning",
    "quantization": "Quantization",
    "low-rank": "Low-rank and weight sharing",
    "automl": "AutoML for compression",
    "architecture": "Efficient architectures",
    "other": "Theory, surveys and other",
}
assert set(CATEGORY_TITLES) == set(CATEGORIES)

BADGES = {
    True: '<span class="kb-badge reproduced">reproduced</span>',
    False: '<span class="kb-badge not-reproduced">not reproduced</span>',
    None: '<span class="kb-badge not-run">not yet run</span>',
}


@dataclass(frozen=True)
class SiteData:
    """Everything the pages are made from."""

    root: Path
    registry: Registry
    notes: dict[str, str]  # id -> notes page Markdown
    results: dict[str, dict[str, Any]]  # id -> results JSON (validated when kb.results exists)
    benchmarks: dict[str, dict[str, Any]]  # family -> shared-protocol leaderboard (results/benchmarks/<family>.json)


def load_site_data(root: Path) -> SiteData:
    """Read the registry, notes pages and results files under `root`."""
    from kb.registry import load_registry

    registry = load_registry(root)
    notes = {p.id: (root / p.notes).read_text(encoding="utf-8") for p in registry.papers if (root / p.notes).is_file()}
    results = {}
    for paper in registry.papers:
        path = root / "results" / f"{paper.id}.json"
        if path.is_file():
            try:
                from kb.results import load_result

                results[paper.id] = load_result(path).model_dump(mode="json")
            except ImportError:
                results[paper.id] = json.loads(path.read_text(encoding="utf-8"))
    benchmarks = {}
    for path in sorted((root / "results" / "benchmarks").glob("*.json")):
        from kb.results import load_benchmark

        benchmarks[path.stem] = load_benchmark(path).model_dump(mode="json")
    return SiteData(root, registry, notes, results, benchmarks)


def verdict(data: SiteData, paper_id: str) -> bool | None:
    """True/False when a reproduction ran and did/did not reproduce the claim; None when not run."""
    result = data.results.get(paper_id)
    return None if result is None else bool(result["claim"]["reproduced"])


def nav_label(paper: Paper) -> str:
    """A short sidebar label: the title up to its colon, shortened."""
    head, _, tail = paper.title.partition(":")
    head = head.strip()
    if tail.strip() and len(head.split()) >= 3:  # a generic lead ("Deep Model Compression: ...") says less
        head = tail.strip()
    return head if len(head) <= 48 else head[:45].rstrip() + "..."


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _cell(value)


def _links(paper: Paper) -> str:
    links = []
    if paper.arxiv:
        links.append(f"[arXiv:{paper.arxiv}](https://arxiv.org/abs/{paper.arxiv})")
    if paper.url and (not paper.arxiv or paper.arxiv not in paper.url):
        links.append(f"[paper]({paper.url})")
    return " · ".join(links)


def _status(data: SiteData, paper: Paper) -> str:
    return f"{paper.status} · {BADGES[verdict(data, paper.id)]}"


def _results_section(data: SiteData, paper: Paper) -> list[str]:
    out = ["## Results", ""]
    out += ["### Reported by the paper", "", '<span class="kb-badge reported">reported</span> '
            "Numbers as printed in the paper, with where it prints them.", ""]
    if paper.reported:
        out += ["| Dataset | Model | Metric | Value | Setting | Where | Provenance |", "|---|---|---|---|---|---|---|"]
        for r in paper.reported:
            provenance = (f'<span class="kb-badge copied">copied</span> from {_cell(r.quoted_from)}' if r.quoted_from
                          else '<span class="kb-badge reported">reported</span> by the paper')
            out.append(f"| {_cell(r.dataset)} | {_cell(r.model)} | {_cell(r.metric)} | {_fmt(r.value)} | "
                       f"{_cell(r.setting or '')} | {_cell(r.source)} | {provenance} |")
    elif paper.reported_missing:
        out.append(f"No headline numbers recorded. {paper.reported_missing}")
    else:
        out.append("No headline numbers recorded from the paper yet.")
    out += ["", "### Reproduced here", "", '<span class="kb-badge ours">our run</span> '
            "Numbers from our own runs, written by `kb run` into `results/" + paper.id + ".json`.", ""]
    result = data.results.get(paper.id)
    if result is None:
        how = f"`kb run {paper.id}`" if paper.status == "implemented" else "an implementation (none yet)"
        out += [f"{BADGES[None]} This needs {how}.", ""]
        return out
    claim = result["claim"]
    out += [f"{BADGES[bool(claim['reproduced'])]} **Claim:** {claim['text']}", "",
            f"**Evidence:** {claim['evidence']}", ""]
    proto = result["protocol"]
    seeds = proto.get("seeds") or []
    out += [f"Protocol: dataset `{proto.get('dataset')}`, {len(seeds)} seed(s) {seeds}, "
            f"{proto.get('epochs')} epoch(s), {proto.get('selection')} epoch reported; profile `{result['profile']}`. "
            f"{proto.get('notes') or ''}", ""]
    out += ["| Variant | Role | Accuracy % (mean ± std) | Params | Nonzero | Bytes | FLOPs | Latency (ms) | Bits |",
            "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        acc = row.get("accuracy") or {}
        acc_text = f"{acc['mean']:.2f} ± {acc.get('std') or 0:.2f}" if acc.get("mean") is not None else "–"
        out.append(f"| {_cell(row.get('label') or row['name'])} | {row.get('role', '')} | {acc_text} | "
                   f"{_fmt(row.get('params'))} | {_fmt(row.get('nonzero_params'))} | {_fmt(row.get('bytes'))} | "
                   f"{_fmt(row.get('flops'))} | {_fmt(row.get('latency_ms'))} | {_fmt(row.get('bits'))} |")
    out.append("")
    for fig in result.get("figures") or []:
        name = Path(fig).name
        out += ['<figure class="kb-figure" markdown>', f"![{name}](../figures/{name})", "</figure>", ""]
    env = result.get("environment") or {}
    out += [f"Command: `{result.get('command') or 'kb run ' + paper.id}` · torch {env.get('torch', '?')} on "
            f"{env.get('device', '?')} · commit `{(env.get('git_commit') or 'unknown')[:10]}` · "
            f"{result.get('wall_time_s', 0):.1f} s · {result.get('created', '')}", ""]
    from kb.registry import full_setting

    full = full_setting(data.root, paper)
    if full:
        out += [f"**Paper-scale run** (not part of the small reproduction above): {_cell(full)}. On a GPU with the "
                f"data set in `DIR`: `kb run {paper.id} --full --data-dir DIR` (add `--download` where there is "
                "internet; several GPUs: launch through `torchrun`, see the README).", ""]
    return out


def _questions_section(data: SiteData, paper: Paper) -> list[str]:
    if not paper.open_questions:
        return []
    answers = {a["question"]: a for a in (data.results.get(paper.id) or {}).get("answers") or []}
    out = ["## Questions from the reading notes", ""]
    for q in paper.open_questions:
        out.append(f"**{_cell(q.question)}**")
        out.append("")
        if q.notes_answer:
            out += [f"- *The notes' answer:* {q.notes_answer}"]
        if q.experiment_answer:
            out += [f"- *Our experiment:* {q.experiment_answer}"]
        if q.question in answers:
            a = answers[q.question]
            out += [f"- *Our experiment ({data.results[paper.id]['profile']} profile):* {a['answer']} "
                    f"({a.get('evidence', '')})"]
        if not (q.notes_answer or q.experiment_answer or q.question in answers):
            out += ["- Open: no answer yet."]
        out.append("")
    return out


def paper_page(data: SiteData, paper: Paper) -> str:
    """The whole page of one paper."""
    from kb.bibtex import paper_bibtex

    cat = paper.category
    meta = [
        ("Authors", ", ".join(paper.authors)),
        ("Published", f"{paper.venue}, {paper.year}"),
        ("Links", _links(paper)),
        ("Category", f"[{CATEGORY_TITLES[cat]}](../categories/{cat}.md)"
         + (" · " + ", ".join(f"`{t}`" for t in paper.tags) if paper.tags else "")),
        ("In the notes", ", ".join(f"`{m}`" for m in paper.mentioned_in) or "–"),
        ("Status", _status(data, paper)),
    ]
    out = [f"# {paper.title}", "", '<div class="kb-meta" markdown>', "", "| | |", "|---|---|"]
    out += [f"| {k} | {_cell(v)} |" for k, v in meta]
    out += ["", "</div>", "", '!!! abstract "Summary"', "", "    " + paper.summary, ""]
    if paper.notes_corrections:
        out += ['!!! note "Corrections to the reading notes"', ""]
        out += [f"    - {c}" for c in paper.notes_corrections] + [""]
    out += [data.notes.get(paper.id, "*Notes page missing.*").strip(), ""]
    out += _questions_section(data, paper)
    out += _results_section(data, paper)
    if paper.implementation is not None:
        impl = paper.implementation
        out += ["## Implementation", "",
                f"`{impl.path}` · entry point `{impl.entrypoint}` · fidelity **{impl.fidelity}** · "
                f"tests `{impl.test}`", ""]
        if paper.status == "implemented":
            out += [f"::: {paper.module}", ""]
            experiment = PurePosixPath(impl.path).parent / "experiment.py"
            if impl.path.endswith("/__init__.py") and (data.root / experiment).is_file():
                out += ["### The reproduction", "", f"`{experiment}` runs the small-scale experiment.", "",
                        f"::: {paper.module}.experiment", "    options:", "      heading_level: 4", ""]
        else:
            out += ["The module is still a scaffold.", ""]
    out += ["## BibTeX", "", "```bibtex", paper_bibtex(paper).strip(), "```", ""]
    return "\n".join(out)


def _best(rows: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    candidates = [r for r in rows if r.get("role") == role]
    return max(candidates, key=lambda r: r["accuracy"]["mean"]) if candidates else None


def pareto_points(data: SiteData, category: str) -> tuple[list[Any], str]:
    """Points (paper, variant, size, accuracy) of a category's results; size is bytes, else parameters."""
    from kb.plots import Point

    rows = [(pid, row) for pid, result in data.results.items()
            if data.registry.get(pid) is not None and data.registry.get(pid).category == category
            for row in result["rows"]]
    for key, label in (("bytes", "model size (bytes)"), ("params", "parameters")):
        points = [Point(pid, row.get("label") or row["name"], float(row[key]), row["accuracy"]["mean"])
                  for pid, row in rows if row.get(key)]
        if len(points) >= 2:
            return points, label
    return [], ""


def shared_leaderboard(data: SiteData, category: str) -> list[str]:
    """The family leaderboard under one protocol, from `kb bench <family>`."""
    bench = data.benchmarks.get(category)
    if bench is None:
        return []
    if bench.get("kind") in ("compression", "architecture"):
        return _compression_leaderboard(data, category, bench)
    if bench.get("kind") == "cohort":
        return _cohort_leaderboard(data, category, bench)
    proto, base = bench["protocol"], bench["baseline"]
    out = ["## Leaderboard under one protocol", "",
           f"Every method trains the same student (`{proto['student']}`) from the same initialisation against the "
           f"same teacher (`{proto['teacher']}`, {bench['teacher']['mean']:.2f}%) on `{proto['dataset']}` "
           f"({proto['n_train']} train / {proto['n_test']} test), {proto['epochs']} epochs, seeds "
           f"{proto['seeds']}. {proto['notes']} Written by `kb bench {category}` ({bench['wall_time_s']:.0f} s, "
           f"{bench['created']}).", "",
           "| # | Paper | Method | Student accuracy % | Δ vs student alone |", "|---|---|---|---|---|",
           f"| – | student alone (baseline) | cross-entropy | {base['mean']:.2f} ± {base['std']:.2f} | – |"]
    for rank, row in enumerate(bench["rows"], 1):
        paper = data.registry.get(row["paper"])
        title = nav_label(paper) if paper else row["paper"]
        acc = row["accuracy"]
        flag = " (near chance: protocol mismatch, see below)" if acc["mean"] < 0.25 * base["mean"] else ""
        out.append(f"| {rank} | [{_cell(title)}](../papers/{row['paper']}.md) | `{row['method']}` | "
                   f"{acc['mean']:.2f} ± {acc['std']:.2f}{flag} | {acc['mean'] - base['mean']:+.2f} |")
    out.append("")
    if bench["rows"]:
        out += [f"![Leaderboard of {category}](../figures/bench_{category}.png)", ""]
    for paper_id, why in bench.get("failures", {}).items():
        out.append(f"- `{paper_id}` could not run under this protocol: {_cell(why)}")
    out += ["", "Multi-stage schedules that a paper runs outside its `forward_train` (hint stages, generations, "
            "teacher-assistant chains) are not part of this protocol, so a method whose `forward_train` is one stage "
            "of a longer recipe (a hint-only stage with no label loss, say) can land near chance here: read such a "
            "row as a protocol mismatch, not as the paper's result. Each paper page has its own reproduction.", ""]
    return out


def _compression_leaderboard(data: SiteData, category: str, bench: dict[str, Any]) -> list[str]:
    """Pruning / quantization: one table per track, rows grouped by matched budget, Δ against that budget's baseline."""
    proto, ref = bench["protocol"], bench.get("reference", {})
    dense = bench.get("teacher")
    epochs = (f"then {proto['epochs']} fine-tuning epochs" if proto["epochs"] else "no retraining")
    written = f"Written by `kb bench {category}` ({bench['wall_time_s']:.0f} s, {bench['created']})."
    if dense is None:  # architectures: no reference network, every row trained from scratch with one recipe
        intro = [f"Every network is trained from scratch with the same recipe on `{proto['dataset']}` "
                 f"({proto['n_train']} train / {proto['n_test']} test), {proto['teacher_epochs']} epochs, seeds "
                 f"{proto['seeds']}. {proto['notes']} {written}", "",
                 "Δ compares each row with the baseline (in italics).", ""]
    else:
        intro = [f"Every method starts from the same trained dense network (`{proto['teacher']}`, "
                 f"{dense['mean']:.2f} ± {dense['std']:.2f}% on `{proto['dataset']}`, {proto['n_train']} train / "
                 f"{proto['n_test']} test, {proto['teacher_epochs']} epochs) and meets the same budget on "
                 f"{proto['student']}, {epochs}; seeds {proto['seeds']}. {proto['notes']} {written}", "",
                 f"Dense reference: {_fmt(ref.get('params'))} parameters, {_fmt(ref.get('bytes'))} bytes, "
                 f"{_fmt(ref.get('flops'))} FLOPs per example. Δ compares each row with the baseline of the same "
                 "budget (in italics).", ""]
    out = ["## Leaderboard under one protocol", "", *intro]
    for track in dict.fromkeys(r["track"] for r in bench["rows"]):
        rows = [r for r in bench["rows"] if r["track"] == track]
        out += [f"### {str(track).capitalize()}", "",
                "| Budget | Paper | Method | Accuracy % | Δ vs baseline | Nonzero params | Bytes | FLOPs |",
                "|---|---|---|---|---|---|---|---|"]
        for budget in dict.fromkeys(r["budget"] for r in rows):
            group = [r for r in rows if r["budget"] == budget]
            base = next((r for r in group if r["baseline"]), None)
            for row in group:
                paper = data.registry.get(row["paper"])
                title = nav_label(paper) if paper else row["paper"]
                acc = row["accuracy"]
                method = f"*{_cell(row['method'])} (baseline)*" if row["baseline"] else _cell(row["method"])
                delta = "–" if row["baseline"] or base is None else f"{acc['mean'] - base['accuracy']['mean']:+.2f}"
                out.append(f"| {_cell(budget)} | [{_cell(title)}](../papers/{row['paper']}.md) | {method} | "
                           f"{acc['mean']:.2f} ± {acc['std']:.2f} | {delta} | {_fmt(row.get('nonzero_params'))} | "
                           f"{_fmt(row.get('bytes'))} | {_fmt(row.get('flops'))} |")
        out.append("")
    if bench["rows"]:
        out += [f"![Accuracy against size under one protocol: {category}](../figures/bench_{category}.png)", "",
                "Each colour is one method across the budgets; the black step line is the Pareto front (no other "
                "row is both smaller and more accurate).", ""]
    excluded = bench.get("excluded", {})
    if excluded:
        out += ["Not part of this protocol (each runs its own protocol on its page):", ""]
        out += [f"- [`{pid}`](../papers/{pid}.md): {_cell(why)}" for pid, why in excluded.items()]
        out.append("")
    for paper_id, why in bench.get("failures", {}).items():
        out.append(f"- `{paper_id}` failed under this protocol: {_cell(why)}")
    out.append("")
    return out


def _cohort_leaderboard(data: SiteData, category: str, bench: dict[str, Any]) -> list[str]:
    """Mutual learning / self-distillation: the deployed network of each method against the network alone."""
    proto, base = bench["protocol"], bench["baseline"]
    peers = any(r.get("peer_accuracy") for r in bench["rows"])
    out = ["## Leaderboard under one protocol", "",
           f"No pretrained teacher: every method trains {proto['student']} from the same initialisation on "
           f"`{proto['dataset']}` ({proto['n_train']} train / {proto['n_test']} test), {proto['epochs']} epochs, seeds "
           f"{proto['seeds']}. {proto['notes']} Written by `kb bench {category}` ({bench['wall_time_s']:.0f} s, "
           f"{bench['created']}).", "",
           "| # | Paper | Method | Deployed accuracy % | Δ vs network alone |"
           + (" First peer alone % | Δ |" if peers else ""),
           "|---|---|---|---|---|" + ("---|---|" if peers else ""),
           f"| – | network alone (baseline) | cross-entropy | {base['mean']:.2f} ± {base['std']:.2f} | – |"
           + (" – | – |" if peers else "")]
    for rank, row in enumerate(bench["rows"], 1):
        paper = data.registry.get(row["paper"])
        title = nav_label(paper) if paper else row["paper"]
        acc, peer = row["accuracy"], row.get("peer_accuracy")
        line = (f"| {rank} | [{_cell(title)}](../papers/{row['paper']}.md) | `{row['method']}` | "
                f"{acc['mean']:.2f} ± {acc['std']:.2f} | {acc['mean'] - base['mean']:+.2f} |")
        if peers:
            line += (f" {peer['mean']:.2f} ± {peer['std']:.2f} | {peer['mean'] - base['mean']:+.2f} |" if peer
                     else " – | – |")
        out.append(line)
    out.append("")
    if bench["rows"]:
        out += [f"![Leaderboard of {category}](../figures/bench_{category}.png)", ""]
    if peers:
        out += ["The deployed network is what the method ships: the first peer, or a fused/ensemble classifier where "
                "the paper deploys that (it then costs more than the baseline); the first peer alone has exactly the "
                "baseline's cost.", ""]
    for pid, why in bench.get("excluded", {}).items():
        out.append(f"- [`{pid}`](../papers/{pid}.md) is not part of this protocol: {_cell(why)}")
    for paper_id, why in bench.get("failures", {}).items():
        out.append(f"- `{paper_id}` could not run under this protocol: {_cell(why)}")
    out.append("")
    return out


def bench_points(bench: dict[str, Any]) -> list[Any]:
    """Points (method, budget, bytes, accuracy) of a compression benchmark, plus the dense reference."""
    from kb.plots import Point

    points = [Point(r["method"], str(r["budget"]), float(r["bytes"]), r["accuracy"]["mean"])
              for r in bench["rows"] if r.get("bytes")]
    if bench.get("reference", {}).get("bytes") and bench.get("teacher"):
        points.append(Point("dense fp32", "reference", float(bench["reference"]["bytes"]), bench["teacher"]["mean"]))
    return points


def leaderboard(data: SiteData, category: str) -> list[str]:
    """Per paper with results: the best method row against the best baseline row, with sizes and verdict."""
    papers = [p for p in data.registry.papers if p.category == category and p.id in data.results]
    if not papers:
        return []
    out = ["## Each paper's own reproduction", "",
           "Each row is one paper's own small-scale protocol: compare accuracies only between rows with the same "
           "dataset and protocol. Method = the paper's best variant; baseline = the best variant it is compared "
           "with (same seeds and epochs).", "",
           "| Paper | Dataset | Epochs × seeds | Method acc % | Baseline acc % | Δ | Params | Bytes | FLOPs | "
           "Latency ms | Verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in papers:
        result = data.results[p.id]
        method, base = _best(result["rows"], "method"), _best(result["rows"], "baseline")
        proto = result["protocol"]
        m_acc = method["accuracy"]["mean"] if method else None
        b_acc = base["accuracy"]["mean"] if base else None
        delta = f"{m_acc - b_acc:+.2f}" if m_acc is not None and b_acc is not None else "–"
        out.append(f"| [{_cell(nav_label(p))}](../papers/{p.id}.md) | `{proto['dataset']}` | "
                   f"{proto['epochs']} × {len(proto['seeds'])} | {_fmt(m_acc)} | {_fmt(b_acc)} | {delta} | "
                   f"{_fmt((method or {}).get('params'))} | {_fmt((method or {}).get('bytes'))} | "
                   f"{_fmt((method or {}).get('flops'))} | {_fmt((method or {}).get('latency_ms'))} | "
                   f"{BADGES[verdict(data, p.id)]} |")
    out.append("")
    if pareto_points(data, category)[0]:
        out += ["### Accuracy against size", "", f"![Pareto plot of {category}](../figures/pareto_{category}.png)",
                "", "Every trained variant of every paper in this category; the black step line is the Pareto "
                "front (no other variant is both smaller and more accurate).", ""]
    return out


def category_page(data: SiteData, category: str) -> str:
    """The index page of one category: its papers with status and verdict, then the leaderboard and plot."""
    papers = [p for p in data.registry.papers if p.category == category]
    out = [f"# {CATEGORY_TITLES[category]}", "", f"{len(papers)} paper(s) from the reading notes.", "",
           "| Paper | Year | Venue | Status | Headline claim |", "|---|---|---|---|---|"]
    for p in sorted(papers, key=lambda p: (p.year, p.id)):
        out.append(f"| [{_cell(p.title)}](../papers/{p.id}.md) | {p.year} | {_cell(p.venue)} | {p.status} | "
                   f"{BADGES[verdict(data, p.id)]} |")
    out.append("")
    out += shared_leaderboard(data, category)
    out += leaderboard(data, category)
    return "\n".join(out) + "\n"


def _tested(data: SiteData, paper: Any) -> bool:
    """Whether the paper's implementation has its test file (`tests/implementations/test_<id>.py`) on disk."""
    return paper.implementation is not None and (data.root / paper.implementation.test).is_file()


def home_page(data: SiteData) -> str:
    """The home page: what this is, and counts across the registry."""
    papers = data.registry.papers
    out = ["# Model compression knowledge base", "",
           "Reading notes on model-compression papers (distillation, mutual and self-distillation, pruning, "
           "quantization, low-rank, AutoML and efficient architectures), each with its equations, open "
           "questions and, where written, a runnable PyTorch implementation whose small-scale reproduction "
           "checks the paper's headline claim. Numbers are tagged: "
           '<span class="kb-badge reported">reported</span> by the paper, '
           '<span class="kb-badge ours">our run</span> measured by our own reproductions.', "",
           '<div class="kb-compact" markdown>', "",
           "| Category | Papers | Implemented | Tested | Reproduced | Not reproduced | Not run |",
           "|---|---|---|---|---|---|---|"]
    totals = [0] * 6
    for cat in CATEGORIES:
        group = [p for p in papers if p.category == cat]
        if not group:
            continue
        row = [len(group), sum(p.status == "implemented" for p in group), sum(_tested(data, p) for p in group),
               sum(verdict(data, p.id) is True for p in group), sum(verdict(data, p.id) is False for p in group),
               sum(verdict(data, p.id) is None for p in group)]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        out.append(f"| [{CATEGORY_TITLES[cat]}](categories/{cat}.md) | " + " | ".join(map(str, row)) + " |")
    out += ["| **All** | " + " | ".join(f"**{t}**" for t in totals) + " |", "", "</div>"]
    out += ["", "*Tested*: the paper's math tests exist (`tests/implementations/test_<id>.py`); *Reproduced*: its "
            "reproduction ran and the paper's headline claim held at our scale (a win counts only beyond seed noise: "
            "the mean gain must exceed one standard error of the per-seed paired difference).", "",
            "See also: [open questions from the notes](open-questions.md) · [bibliography](bibliography.md) "
            "([download all papers as BibTeX](registry.bib)).", "",
            "## Run it yourself", "",
            "From a checkout: `make test` (install and run the tests), `make serve` (build and serve this site), "
            "then `.venv/bin/kb run <paper id>` reproduces one paper (about a minute on 2 CPU cores) and "
            "`.venv/bin/kb bench <family>` (distillation, mutual-learning, self-distillation, pruning, quantization, "
            "low-rank, architecture, automl) re-runs that family's shared-protocol leaderboard. Each paper page names "
            "its command and the results file it writes.", ""]
    return "\n".join(out)


def questions_page(data: SiteData) -> str:
    """Every open question the notes raise, with the notes' answers and our experiments'."""
    out = ["# Open questions from the notes", "",
           "Questions the reading notes raise, with the notes' own answer where they give one and the "
           "answer of our small-scale experiments where one has run.", ""]
    for p in data.registry.papers:
        section = _questions_section(data, p)
        if section:
            out += [f"## [{_cell(p.title)}](papers/{p.id}.md)", ""] + section[2:]
    return "\n".join(out) + "\n"


def bibliography_page(data: SiteData) -> str:
    """The bibliography page, linking the BibTeX export of the whole registry."""
    return ("# Bibliography\n\n"
            f"All {len(data.registry.papers)} papers as BibTeX: [download registry.bib](registry.bib) "
            "(the same file `kb bib` prints).\n")


#: Where `docs/benchmarks/gpu.md` wants the measured table; the site hook replaces it with `gpu_results(root)`.
GPU_MARKER = "<!-- kb:gpu-results -->"


def gpu_results(root: Path) -> str:
    """The results table of the GPU benchmark, from the reports `scripts/bench_gpu_kd.py` wrote to `results/gpu/`.

    Only reports measured on CUDA count (a CPU run is a functional check); with none, a warning says so.
    """
    reports = []
    for path in sorted((root / "results" / "gpu").glob("*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        if str(report.get("device", "")).startswith("cuda"):
            reports.append((path.name, report))
    if not reports:
        return ('!!! warning "No GPU numbers have been measured yet"\n'
                "    The script has only been checked on a CPU (`--device cpu --steps 3`, a functional check whose "
                "timings say nothing about a GPU). A run on a GPU with `--out results/gpu/<gpu>.json` fills this "
                "table.\n")
    out = ['<span class="kb-badge ours">our run</span> Measured by `scripts/bench_gpu_kd.py`, one row per report in '
           "`results/gpu/`.", "",
           "| GPU | torch | compile | baseline (img/s) | optimized (img/s) | optimized+cache (img/s) | speed-up "
           "(optimized / baseline) | speed-up with cache | report |", "|---|---|---|---|---|---|---|---|---|"]
    for name, report in reports:
        by_mode = {row["mode"]: row for row in report["results"]}
        base, fast, cached = (by_mode.get(m, {}) for m in ("baseline", "optimized", "optimized+cache"))
        out.append(f"| {_cell(report['device'])} | {report.get('torch', '?')} | "
                   f"{'yes' if report.get('args', {}).get('compile') else 'no'} | "
                   f"{base.get('images_per_s', 0):,.0f} | {fast.get('images_per_s', 0):,.0f} | "
                   f"{cached.get('images_per_s', 0):,.0f} | {fast.get('speedup', 0):.1f}x | "
                   f"{cached.get('speedup', 0):.1f}x | `{name}` |")
    return "\n".join(out) + "\n"

