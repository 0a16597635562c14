"""The `kb` command: check the registry, add papers, export BibTeX, run reproductions, build the site.

`main(argv) -> int` is a thin shell over plain functions that return exit codes. Nothing here
imports torch; `kb run` imports the harness only when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from kb.registry import (
    REGISTRY_FILE,
    RegistryError,
    check_repository,
    defines_function,
    describe_validation_error,
    find_root,
    full_setting,
    load_raw,
    load_registry,
    new_file_mode,
    read_text,
    registry_lock,
    write_raw,
)
from kb.schema import CATEGORIES, FIDELITIES, ID_PATTERN, STATUSES, Paper, Registry

__all__ = ["main"]

TEMPLATES = Path(__file__).with_name("templates")
#: Implementation folder of each category (Python packages cannot contain hyphens).
FAMILY_OF = {c: c.replace("-", "_") for c in CATEGORIES}


class UsageError(Exception):
    """Bad arguments or a refused action, phrased for the user."""


def _err(message: str) -> int:
    for line in message.splitlines():
        print(f"kb: error: {line}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------
# check, fmt, schema
# ---------------------------------------------------------------------------


def check(root: Path) -> int:
    """Schema plus both-way consistency between the registry and the files on disk."""
    registry = load_registry(root)
    report = check_repository(root, registry)
    for note in report.notes:
        print(f"note: {note}")
    if not report.ok:
        for error in report.errors:
            print(f"kb: error: {error}", file=sys.stderr)
        print(f"kb check: {len(report.errors)} problem(s) in {len(registry.papers)} entries", file=sys.stderr)
        return 2
    counts = {s: sum(p.status == s for p in registry.papers) for s in ("noted", "scaffolded", "implemented")}
    results = sum((root / "results" / f"{p.id}.json").is_file() for p in registry.papers)
    print(
        f"kb check: OK, {len(registry.papers)} papers "
        f"({counts['implemented']} implemented, {counts['scaffolded']} scaffolded, {counts['noted']} noted; "
        f"{results} with results)"
    )
    return 0


def fmt(root: Path) -> int:
    """Sort the registry by id, keeping comments and key order."""
    path = root / REGISTRY_FILE
    doc = load_raw(path)
    papers = doc.get("papers") if isinstance(doc, dict) else None
    if not isinstance(papers, list):
        raise RegistryError(f"{path}: expected a mapping with a top-level `papers:` list")
    order = sorted(range(len(papers)), key=lambda i: str(papers[i].get("id", "")))
    if order != list(range(len(papers))):
        items = [papers[i] for i in order]
        papers.clear()
        papers.extend(items)
        write_raw(path, doc)
        print(f"kb fmt: sorted {len(items)} entries in {path}")
    else:
        load_registry(root)
        print(f"kb fmt: {path} already sorted")
    return 0


def schema(output: Path | None) -> int:
    """Print (or write) the registry's JSON Schema, for editors that validate YAML."""
    text = json.dumps(Registry.model_json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        _atomic_write({output: text})
        print(f"kb schema: wrote {output}")
    return 0


# ---------------------------------------------------------------------------
# add, implement
# ---------------------------------------------------------------------------


def _render(name: str, values: dict[str, str]) -> str:
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _atomic_write(files: dict[Path, str]) -> None:
    """Write every file or none: all go to temporary files first, then are renamed into place."""
    staged: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = new_file_mode(path)  # the old file's mode, or 0o666 minus the umask (mkstemp would give 0o600)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            staged.append((Path(tmp), path))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, mode)
        for tmp, path in staged:
            os.replace(tmp, path)
            done.append(path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for path in done:
            path.unlink(missing_ok=True)
        raise


def _write_files_and_registry(root: Path, files: dict[Path, str], doc: object, verb: str) -> None:
    """Write the new files, then the registry; if the registry write fails, remove the new files again."""
    new = [p for p in files if not p.exists()]
    _atomic_write(files)
    try:
        write_raw(root / REGISTRY_FILE, doc)
    except BaseException:
        for created in new:
            created.unlink(missing_ok=True)
        raise
    for created in files:
        print(f"kb {verb}: wrote {created.relative_to(root)}")


def _implementation_block(paper_id: str, family: str, entrypoint: str, fidelity: str) -> dict[str, str]:
    return {
        "path": f"implementations/{family}/{paper_id}.py",
        "entrypoint": entrypoint,
        "fidelity": fidelity,
        "test": f"tests/implementations/test_{paper_id}.py",
    }


def _implementation_files(root: Path, paper: Paper, family: str, entrypoint: str) -> dict[Path, str]:
    link = f"[arXiv:{paper.arxiv}](https://arxiv.org/abs/{paper.arxiv})" if paper.arxiv else f"<{paper.url}>"
    authors = paper.authors[0].split()[-1] + (" et al." if len(paper.authors) > 1 else "")
    values = {
        "id": paper.id,
        "title": paper.title,
        "short_authors": authors,
        "year": str(paper.year),
        "link": link,
        "entrypoint": entrypoint,
    }
    init = root / "implementations" / family / "__init__.py"
    files = {
        root / "implementations" / family / f"{paper.id}.py": _render("module.py.tmpl", values),
        root / "tests" / "implementations" / f"test_{paper.id}.py": _render("test.py.tmpl", values),
    }
    if not init.exists():
        files[init] = ""
    return files


def _refuse_existing(root: Path, files: dict[Path, str]) -> None:
    existing = [str(p.relative_to(root)) for p in files if p.exists() and not p.name == "__init__.py"]
    if existing:
        raise UsageError(f"refusing to overwrite existing file(s): {', '.join(existing)}")


def add(root: Path, entry: dict, *, family: str | None, entrypoint: str | None, notes_only: bool) -> int:
    """Insert a new entry (sorted) and scaffold its notes page, and unless `notes_only`, its module and test."""
    path = root / REGISTRY_FILE
    doc = load_raw(path)
    registry = load_registry(root)
    paper_id = entry["id"]
    if registry.get(paper_id) is not None:
        raise UsageError(f"{path}: entry {paper_id!r} already exists (use `kb implement {paper_id}` to scaffold code)")
    family = family or FAMILY_OF[entry["category"]]
    entrypoint = entrypoint or paper_id.split("_")[0].upper()
    entry["notes"] = f"papers/{paper_id}.md"
    if not notes_only:
        entry["implementation"] = _implementation_block(paper_id, family, entrypoint, "partial")
        entry["status"] = "scaffolded"
    else:
        entry["status"] = "noted"
    try:
        paper = Paper.model_validate(entry)
    except ValidationError as exc:  # one line per problem, naming the entry (no pydantic dump, no URL)
        raise UsageError("\n".join(describe_validation_error(exc, f"{path}: new entry {paper_id!r}"))) from exc
    taken = next((p for p in registry.papers if p.bibtex_key == paper.bibtex_key), None)
    if taken is not None:
        raise UsageError(f"{path}: new entry {paper_id!r}: bibtex_key {paper.bibtex_key!r} is already used by entry "
                         f"{taken.id!r} (pass another one with --bibtex-key)")
    files = {root / paper.notes: _render("notes.md.tmpl", {})}
    if not notes_only:
        files.update(_implementation_files(root, paper, family, entrypoint))
    _refuse_existing(root, files)
    papers = doc["papers"]
    position = next((i for i, p in enumerate(papers) if str(p.get("id", "")) > paper_id), len(papers))
    papers.insert(position, paper.model_dump(mode="json", exclude_defaults=True, exclude_none=True))
    _write_files_and_registry(root, files, doc, "add")
    print(f"kb add: inserted {paper_id!r} into {REGISTRY_FILE} (status {paper.status})")
    return 0


def implement(root: Path, paper_id: str, *, family: str | None, entrypoint: str | None, fidelity: str) -> int:
    """Scaffold the module and test of an existing `noted` entry and mark it `scaffolded`."""
    path = root / REGISTRY_FILE
    doc = load_raw(path)
    registry = load_registry(root)
    paper = registry.get(paper_id)
    if paper is None:
        raise UsageError(f"{path}: no entry {paper_id!r} (add it first with `kb add`)")
    if paper.implementation is not None:
        raise UsageError(f"{path}: entry {paper_id!r} already has an implementation ({paper.implementation.path})")
    family = family or FAMILY_OF[paper.category]
    entrypoint = entrypoint or paper_id.split("_")[0].upper()
    files = _implementation_files(root, paper, family, entrypoint)
    _refuse_existing(root, files)
    raw = next(p for p in doc["papers"] if str(p.get("id")) == paper_id)
    raw["implementation"] = _implementation_block(paper_id, family, entrypoint, fidelity)
    raw["status"] = "scaffolded"
    _write_files_and_registry(root, files, doc, "implement")
    print(f"kb implement: {paper_id!r} is now 'scaffolded'; run `kb status {paper_id} implemented` when written")
    return 0


SCAFFOLD_MARK = "scaffold written by `kb implement`"


def _same_text(a: str, b: str) -> bool:
    return a.split() == b.split()


def set_status(root: Path, paper_id: str, status: str, fidelity: str | None) -> int:
    """Change an entry's status (and fidelity); `implemented` needs real code and tests, not the scaffold."""
    path = root / REGISTRY_FILE
    doc = load_raw(path)
    paper = load_registry(root).get(paper_id)
    if paper is None:
        raise UsageError(f"{path}: no entry {paper_id!r}")
    if status != "noted" and paper.implementation is None:
        raise UsageError(f"{path}: entry {paper_id!r} has no implementation block (run `kb implement {paper_id}`)")
    if status == "noted" and paper.implementation is not None:
        raise UsageError(f"{path}: entry {paper_id!r} has an implementation; remove its block by hand first")
    if status == "implemented":
        for rel in (paper.implementation.path, paper.implementation.test):
            file = root / rel
            if not file.is_file():
                raise UsageError(f"entry {paper_id!r}: missing file {rel}")
            if SCAFFOLD_MARK in read_text(file):
                raise UsageError(f"entry {paper_id!r}: {rel} is still the scaffold; write it before marking done")
        module = root / paper.implementation.path
        try:
            has_reproduce = defines_function(module, "reproduce")
        except SyntaxError as exc:
            raise UsageError(f"entry {paper_id!r}: {paper.implementation.path} does not parse: {exc}") from exc
        if not has_reproduce:
            raise UsageError(f"entry {paper_id!r}: {paper.implementation.path} defines no `reproduce(ctx)`; "
                             "`kb run` needs it (see the house style) before the entry counts as implemented")
        notes = root / paper.notes
        if not notes.is_file():
            raise UsageError(f"entry {paper_id!r}: missing file {paper.notes}")
        if _same_text(read_text(notes), _render("notes.md.tmpl", {})):
            raise UsageError(f"entry {paper_id!r}: {paper.notes} is still the TODO template; write the notes "
                             "before marking it implemented")
    raw = next(p for p in doc["papers"] if str(p.get("id")) == paper_id)
    raw["status"] = status
    if fidelity is not None:
        raw["implementation"]["fidelity"] = fidelity
    write_raw(path, doc)
    print(f"kb status: {paper_id!r} is now {status!r}")
    return 0


def _entry_from_args(args: argparse.Namespace) -> dict:
    from kb.bibtex import ascii_lower, read_bib_entry, suggest_id

    if args.from_bib:
        bib_path, key = args.from_bib
        record = read_bib_entry(Path(bib_path), key)
        method = args.method or (args.id.split("_")[0] if args.id else None)
        if not args.id and not method:
            raise UsageError("--from-bib needs the paper id or --method to build the id")
        paper_id = args.id or suggest_id(method, record.authors[0], record.year)
        entry = {
            "id": paper_id,
            "title": record.title,
            "authors": record.authors,
            "year": record.year,
            "venue": record.venue,
            "bibtex_key": record.key,
        }
        if record.arxiv:
            entry["arxiv"] = record.arxiv
        if record.url:
            entry["url"] = record.url
    else:
        missing = [f"--{n}" for n in ("title", "author", "year", "venue") if not getattr(args, n)]
        if not args.id:
            missing.insert(0, "<id>")
        if missing:
            raise UsageError(f"kb add without --from-bib needs {', '.join(missing)}")
        # Google-Scholar style key `<lastname><year><firstword>`, folded to ASCII letters and digits (O'Brien ->
        # obrien, Über -> uber) so that it matches the schema's key pattern.
        last_name = ascii_lower((args.author[0].split() or [""])[-1]) or "anon"
        first_word = next((w for w in map(ascii_lower, args.title.split()) if w), "")
        entry = {
            "id": args.id,
            "title": args.title,
            "authors": list(args.author),
            "year": args.year,
            "venue": args.venue,
            "bibtex_key": args.bibtex_key or f"{last_name}{args.year}{first_word}",
        }
        if args.arxiv:
            entry["arxiv"] = args.arxiv
        if args.url:
            entry["url"] = args.url
    entry["category"] = args.category
    entry["summary"] = args.summary or "Summary to be written (scaffolded by `kb add`)."
    return entry


# ---------------------------------------------------------------------------
# bib, run, site
# ---------------------------------------------------------------------------


def bib(root: Path, output: Path | None) -> int:
    """Export the registry as BibTeX (to stdout, or atomically to a file)."""
    from kb.bibtex import export_bibtex

    text = export_bibtex(load_registry(root))
    if output is None:
        sys.stdout.write(text)
    else:
        _atomic_write({output: text})
        print(f"kb bib: wrote {output}", file=sys.stderr)
    return 0


def _select_for_run(root: Path, ids: list[str], run_all: bool, profile: str) -> list[Paper]:
    """The implemented papers to run; `--full` keeps (with --all) or demands (with ids) a paper-scale setting."""
    registry = load_registry(root)
    if run_all:
        if ids:
            raise UsageError("give paper ids or --all, not both")
        papers = [p for p in registry.papers if p.status == "implemented"]
    else:
        if not ids:
            raise UsageError("give at least one paper id, or --all")
        papers = []
        for paper_id in ids:
            paper = registry.get(paper_id)
            if paper is None:
                raise UsageError(f"{root / REGISTRY_FILE}: no entry {paper_id!r}")
            if paper.status != "implemented":
                raise UsageError(f"entry {paper_id!r} has status {paper.status!r}: nothing to run yet")
            papers.append(paper)
    if profile != "full":
        return papers
    implemented = [p for p in registry.papers if p.status == "implemented"]
    with_full = [p.id for p in implemented if full_setting(root, p)]
    lacking = [p.id for p in papers if p.id not in with_full]
    if run_all:
        if lacking:
            print(f"kb run: --full runs the {len(papers) - len(lacking)} paper(s) whose module declares a "
                  f"paper-scale setting (`FULL`); {len(lacking)} other(s) have none", file=sys.stderr)
        return [p for p in papers if p.id in with_full]
    if lacking:
        raise UsageError(
            f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no paper-scale setting: --full would "
            f"only rerun the small protocol. Papers that define one (a `FULL` declaration in their module): "
            f"{', '.join(with_full) or 'none'}"
        )
    return papers


def run(root: Path, ids: list[str], *, run_all: bool, profile: str, data_dir: str | None, download: bool,
        device: str, resume: bool = False, fresh: bool = False, checkpoint_dir: str | None = None,
        results_dir: str | None = None, overrides: dict | None = None, progress: bool = False) -> int:
    """Run reproductions and write `results/<id>.json` for each.

    Full-profile runs (or any run given --checkpoint-dir/--resume/--fresh) keep training checkpoints in
    `<checkpoint_dir or checkpoints/>/<id>/`; under torchrun only rank 0 prints and writes.
    """
    papers = _select_for_run(root, ids, run_all, profile)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if overrides and results_dir is None:
        raise UsageError("--seeds/--epoch-scale/--n-train make a trial run: give --results-dir so that it does not "
                         "replace the tracked results/<id>.json")
    if resume and fresh:
        raise UsageError("give --resume or --fresh, not both")
    if not papers:
        print("kb run: no implemented papers to run")
        return 0
    sys.path.insert(0, str(root))
    from implementations._runner import CheckpointsExistError, run_paper  # torch is imported here, and only here

    # Smoke runs go to results/quick/ (not tracked, not on the site) so they never replace real results.
    default_out = root / "results" / "quick" if profile == "quick" else root / "results"
    out_dir = Path(results_dir) if results_dir is not None else default_out
    keep_checkpoints = profile == "full" or checkpoint_dir is not None or resume or fresh
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else root / "checkpoints"  # git-ignored
    main_rank = os.environ.get("RANK", "0") == "0"  # torchrun sets RANK; only rank 0 talks
    say = print if main_rank else (lambda *a, **k: None)
    bar = None
    if progress and main_rank and len(papers) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(papers), desc="papers", unit="paper", file=sys.stderr)
        say = bar.write
    failures = []
    try:
        for index, paper in enumerate(papers, 1):
            say(f"kb run [{index}/{len(papers)}] {paper.id} ({profile})", file=sys.stderr)
            ckpt = checkpoints / paper.id if keep_checkpoints else None
            try:
                out = run_paper(paper.id, paper.module, profile, out_dir, data_dir=data_dir, download=download,
                                device=device, progress=progress, checkpoint_dir=ckpt, resume=resume, fresh=fresh,
                                overrides=overrides)
            except KeyboardInterrupt:
                where = f"; rerun with --resume to continue from {ckpt}" if ckpt and any(ckpt.glob("*.pt")) else ""
                say(f"kb run: {paper.id} interrupted{where}", file=sys.stderr)
                return 130
            except CheckpointsExistError as exc:
                failures.append(f"{paper.id}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - keep going, report every failure at the end
                hint = ""
                if ckpt is not None and any(ckpt.glob("*.pt")):
                    hint = f" (checkpoints kept in {ckpt}: rerun with --resume to continue)"
                failures.append(f"{paper.id}: {type(exc).__name__}: {exc}{hint}")
                continue
            finally:
                if bar is not None:
                    bar.update(1)
            if out is not None:
                out = Path(out)
                say(f"kb run: wrote {out.relative_to(root) if out.is_relative_to(root) else out}")
    finally:
        if bar is not None:
            bar.close()
        if "WORLD_SIZE" in os.environ:
            from implementations._distributed import cleanup

            cleanup()
    for failure in failures:
        if main_rank:
            print(f"kb: error: {failure}", file=sys.stderr)
    return 2 if failures else 0


def bench(root: Path, family: str, *, quick: bool) -> int:
    """Run a family leaderboard under one shared protocol and write results/benchmarks/<family>.json."""
    registry = load_registry(root)
    sys.path.insert(0, str(root))
    from implementations import _bench  # torch is imported here, and only here
    from kb.results import write_benchmark

    if family not in _bench.BENCHES:
        raise UsageError(f"no shared-protocol benchmark for {family!r} yet (have: {', '.join(_bench.BENCHES)})")
    result = _bench.run_bench(family, registry, quick=quick, progress=sys.stderr.isatty())
    out = root / "results" / ("quick" if quick else "") / "benchmarks" / f"{family}.json"
    write_benchmark(result, out)
    print(f"kb bench: wrote {out.relative_to(root)} ({len(result['rows'])} rows, {result['wall_time_s']} s)")
    for paper_id, why in result.get("excluded", {}).items():
        print(f"kb bench: {paper_id} is not part of this protocol: {why}", file=sys.stderr)
    for paper_id, why in result["failures"].items():
        print(f"kb bench: {paper_id} could not run under the shared protocol: {why}", file=sys.stderr)
    return 0


def site(root: Path, action: str, *, port: int, strict: bool, build_first: bool) -> int:
    """`build`: render the site into `site/`; `serve`: build, then serve `site/` on 127.0.0.1."""
    from kb.site import build_site, serve_site

    try:
        if action == "build" or build_first:
            build_site(root, strict=strict)
        if action == "serve":
            serve_site(root / "site", port=port)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        return _err(str(exc))
    return 0


# ---------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("check", help="validate the registry and its files")
    sub.add_parser("fmt", help="sort registry.yaml by id (comments kept)")
    p = sub.add_parser("schema", help="export the registry's JSON Schema")
    p.add_argument("-o", "--output", type=Path)

    p = sub.add_parser("add", help="add a paper: registry entry, notes page, module and test scaffolds")
    p.add_argument("id", nargs="?", help=f"paper id, pattern {ID_PATTERN}")
    p.add_argument("--from-bib", nargs=2, metavar=("FILE", "KEY"), help="take the metadata from a .bib entry")
    p.add_argument("--method", help="method name for the id when --from-bib is used without an id")
    p.add_argument("--title")
    p.add_argument("--author", action="append", help="repeat once per author, in order")
    p.add_argument("--year", type=int)
    p.add_argument("--venue")
    p.add_argument("--arxiv")
    p.add_argument("--url")
    p.add_argument("--bibtex-key")
    p.add_argument("--summary")
    p.add_argument("--category", required=True, choices=CATEGORIES)
    p.add_argument("--family", help="implementation folder (default: from the category)")
    p.add_argument("--entrypoint", help="class or function the registry names (default: the method, upper-case)")
    p.add_argument("--notes-only", action="store_true", help="only the entry and notes page, no code scaffold")

    p = sub.add_parser("implement", help="scaffold module and test for an existing noted entry")
    p.add_argument("id")
    p.add_argument("--family")
    p.add_argument("--entrypoint")
    p.add_argument("--fidelity", choices=FIDELITIES, default="partial")

    p = sub.add_parser("status", help="set an entry's status (implemented needs real code and tests)")
    p.add_argument("id")
    p.add_argument("status", choices=STATUSES)
    p.add_argument("--fidelity", choices=FIDELITIES)

    p = sub.add_parser("bib", help="export the registry as BibTeX")
    p.add_argument("-o", "--output", type=Path)

    p = sub.add_parser("run", help="run reproductions and write results/<id>.json")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", dest="run_all", help="every implemented paper")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="profile", help="smoke run, seconds")
    group.add_argument("--full", action="store_const", const="full", dest="profile", help="real datasets, GPU")
    p.add_argument("--data-dir", help="folder holding CIFAR/MNIST files for --full")
    p.add_argument("--download", action="store_true", help="download missing datasets (needs internet)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (auto: cuda:LOCAL_RANK under "
                   "torchrun)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its checkpoints (checkpoints/<id>/)")
    group.add_argument("--fresh", action="store_true", help="delete an interrupted run's checkpoints, start over")
    p.add_argument("--checkpoint-dir", help="folder for the training checkpoints (default: checkpoints/, "
                   "git-ignored; always used by --full)")
    p.add_argument("--results-dir", help="write the results here instead of results/ (needed for trial runs)")
    p.add_argument("--seeds", type=_seed_list, help="trial run: comma-separated seeds instead of the profile's")
    p.add_argument("--epoch-scale", type=float, help="trial run: multiply every epoch count by this")
    p.add_argument("--n-train", type=int, help="trial run: train on this many examples")

    p = sub.add_parser("bench", help="a family leaderboard under one shared protocol")
    p.add_argument("family", choices=["distillation", "mutual-learning", "self-distillation", "pruning",
                                      "quantization", "low-rank", "architecture", "automl"])
    p.add_argument("--quick", action="store_true", help="smoke run (writes results/quick/benchmarks/)")

    p = sub.add_parser("site", help="build or serve the documentation site")
    p.add_argument("action", choices=["build", "serve"])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-strict", action="store_true", help="do not fail on warnings")
    p.add_argument("--no-build", action="store_true", help="serve the existing site/ without rebuilding")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kb` console script; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    try:
        root = find_root()
        if args.command == "check":
            return check(root)
        if args.command == "fmt":
            with registry_lock(root):
                return fmt(root)
        if args.command == "schema":
            return schema(args.output)
        if args.command == "add":
            entry = _entry_from_args(args)
            with registry_lock(root):
                return add(root, entry, family=args.family, entrypoint=args.entrypoint, notes_only=args.notes_only)
        if args.command == "implement":
            with registry_lock(root):
                return implement(root, args.id, family=args.family, entrypoint=args.entrypoint,
                                 fidelity=args.fidelity)
        if args.command == "status":
            with registry_lock(root):
                return set_status(root, args.id, args.status, args.fidelity)
        if args.command == "bib":
            return bib(root, args.output)
        if args.command == "run":
            overrides = {"seeds": args.seeds, "epoch_scale": args.epoch_scale, "n_train": args.n_train}
            return run(root, args.ids, run_all=args.run_all, profile=args.profile or "default",
                       data_dir=args.data_dir, download=args.download, device=args.device, resume=args.resume,
                       fresh=args.fresh, checkpoint_dir=args.checkpoint_dir, results_dir=args.results_dir,
                       overrides=overrides, progress=sys.stderr.isatty())
        if args.command == "bench":
            return bench(root, args.family, quick=args.quick)
        if args.command == "site":
            return site(root, args.action, port=args.port, strict=not args.no_strict,
                        build_first=not args.no_build)
    except (RegistryError, UsageError) as exc:
        return _err(str(exc))
    except Exception as exc:
        from kb.bibtex import BibError

        if isinstance(exc, BibError):
            return _err(str(exc))
        raise
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
