"""The registry: schema, both-way consistency with the files, and coverage of the reading notes."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from kb.registry import (
    RegistryError,
    check_repository,
    full_setting,
    load_raw,
    load_registry,
    module_constant,
    parse_registry_text,
    write_raw,
)
from kb.schema import Registry

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT.parent / "shared" / "notes"


def test_registry_is_valid_and_consistent_with_files() -> None:
    registry = load_registry(ROOT)
    assert len(registry.papers) >= 85
    report = check_repository(ROOT, registry)
    assert report.ok, "\n".join(report.errors)


def test_json_schema_file_is_current() -> None:
    committed = json.loads((ROOT / "registry.schema.json").read_text(encoding="utf-8"))
    assert committed == Registry.model_json_schema(), "run `kb schema -o registry.schema.json`"


@pytest.mark.skipif(not NOTES.is_dir(), reason="shared/notes is not beside this checkout")
def test_every_arxiv_paper_in_the_notes_is_registered() -> None:
    registry = load_registry(ROOT)
    known = {p.arxiv.split("v")[0] for p in registry.papers if p.arxiv}
    cited = set()
    for path in NOTES.glob("*.txt"):
        cited |= set(re.findall(r"arxiv\.org/abs/(\d{4}\.\d{4,5})", path.read_text(encoding="utf-8")))
    assert cited, "the notes cite arXiv papers; the regex found none"
    assert sorted(cited - known) == []


@pytest.mark.skipif(not NOTES.is_dir(), reason="shared/notes is not beside this checkout")
def test_every_notes_file_is_used_and_every_mention_exists() -> None:
    registry = load_registry(ROOT)
    files = {p.name for p in NOTES.glob("*.txt")}
    mentioned = {m for p in registry.papers for m in p.mentioned_in}
    assert mentioned <= files, f"unknown notes files: {sorted(mentioned - files)}"
    assert files <= mentioned, f"notes files no entry cites: {sorted(files - mentioned)}"


# ---------------------------------------------------------------------------
# Bad input: one clear message naming the file and the entry
# ---------------------------------------------------------------------------

GOOD = {
    "id": "kd_hinton2015",
    "title": "Distilling the Knowledge in a Neural Network",
    "authors": ["Geoffrey Hinton"],
    "year": 2015,
    "venue": "NIPS 2014 Deep Learning Workshop",
    "arxiv": "1503.02531",
    "bibtex_key": "hinton2015distilling",
    "category": "distillation",
    "summary": "Soft targets.",
    "reported": [{"dataset": "MNIST", "model": "distilled 2x800 net", "metric": "test errors", "value": 74,
                  "source": "Sec. 3"}],
    "notes": "papers/kd_hinton2015.md",
}


def _parse(*entries: dict) -> Registry:
    return parse_registry_text({"papers": list(entries)}, Path("registry.yaml"))


def test_good_entry_parses() -> None:
    assert _parse(GOOD).papers[0].id == "kd_hinton2015"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"colour": "red"}, "field 'colour': unknown field"),
        ({"id": "Hinton-KD"}, "field 'id': String should match pattern"),
        ({"arxiv": "eb2bcaee1bc611eb9a2ea5e66e1a0e5e"}, "field 'arxiv': String should match pattern"),
        ({"year": 15}, "field 'year'"),
        ({"category": "magic"}, "field 'category'"),
        ({"notes": "/etc/passwd"}, "must be relative"),
        ({"notes": "../outside.md"}, "points outside the repository"),
        ({"notes": "papers/other.md"}, "one id names every file"),
        ({"arxiv": None}, "give at least one link"),
        ({"status": "implemented"}, "needs an `implementation` block"),
    ],
)
def test_bad_entry_names_file_entry_and_field(change: dict, needle: str) -> None:
    with pytest.raises(RegistryError) as info:
        _parse({**GOOD, **change})
    message = str(info.value)
    assert message.startswith("registry.yaml: ")
    assert needle in message
    if "id" not in change:
        assert "entry 'kd_hinton2015' (papers[0])" in message


def test_duplicate_and_unsorted_ids_are_rejected() -> None:
    with pytest.raises(RegistryError, match="duplicate id 'kd_hinton2015'"):
        _parse(GOOD, {**GOOD, "bibtex_key": "other2015"})
    later = {**GOOD, "id": "zz_hinton2015", "bibtex_key": "zz2015", "notes": "papers/zz_hinton2015.md"}
    with pytest.raises(RegistryError, match="sorted by id"):
        _parse(later, GOOD)


def test_duplicate_yaml_key_and_malformed_yaml_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "registry.yaml").write_text("papers:\n- id: a_b2020\n  id: c_d2020\n", encoding="utf-8")
    with pytest.raises(RegistryError, match=r"registry\.yaml: malformed YAML: .*duplicate key"):
        load_registry(tmp_path)
    (tmp_path / "registry.yaml").write_text("papers: [\n  - {id: \n", encoding="utf-8")
    with pytest.raises(RegistryError, match=r"registry\.yaml: malformed YAML"):
        load_registry(tmp_path)


def test_check_finds_missing_and_stray_files(tmp_path: Path) -> None:
    registry = _parse(GOOD)
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "stray_nobody2020.md").write_text("x", encoding="utf-8")
    (tmp_path / "implementations" / "pruning").mkdir(parents=True)
    (tmp_path / "implementations" / "pruning" / "orphan_nobody2020.py").write_text("", encoding="utf-8")
    report = check_repository(tmp_path, registry)
    text = "\n".join(report.errors)
    assert "entry 'kd_hinton2015': missing file papers/kd_hinton2015.md" in text
    assert "notes pages without a registry entry (run `kb add`): papers/stray_nobody2020.md" in text
    assert "implementation modules without a registry entry" in text and "orphan_nobody2020.py" in text


def test_check_finds_entrypoint_missing_from_all(tmp_path: Path) -> None:
    entry = {**GOOD, "status": "implemented", "implementation": {
        "path": "implementations/distillation/kd_hinton2015.py", "entrypoint": "KD", "fidelity": "faithful",
        "test": "tests/implementations/test_kd_hinton2015.py"}}
    for rel, text in {"papers/kd_hinton2015.md": "notes", "tests/implementations/test_kd_hinton2015.py": "",
                      "implementations/distillation/kd_hinton2015.py": '__all__ = ["kd_loss"]\n'}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    report = check_repository(tmp_path, _parse(entry))
    assert report.errors == [
        f"{tmp_path / 'registry.yaml'}: entry 'kd_hinton2015': entrypoint 'KD' is not in "
        "implementations/distillation/kd_hinton2015.py's __all__"
    ]


def test_an_implemented_paper_has_reported_numbers_or_says_why_not() -> None:
    impl = {"path": "implementations/distillation/kd_hinton2015.py", "entrypoint": "KD", "fidelity": "faithful",
            "test": "tests/implementations/test_kd_hinton2015.py"}
    bare = {**GOOD, "reported": [], "status": "implemented", "implementation": impl}
    with pytest.raises(RegistryError, match="entry 'kd_hinton2015'.*needs its headline numbers"):
        _parse(bare)
    reason = "a talk: no tables"
    assert _parse({**bare, "reported_missing": reason}).papers[0].reported_missing == reason
    assert _parse({**GOOD, "reported": []}).papers[0].status == "noted"  # a noted entry may wait for its numbers
    with pytest.raises(RegistryError, match="explains an empty `reported` list"):
        _parse({**GOOD, "reported_missing": reason})


def test_a_large_module_may_be_a_package() -> None:
    impl = {"entrypoint": "KD", "fidelity": "faithful", "test": "tests/implementations/test_kd_hinton2015.py"}
    paper = _parse({**GOOD, "status": "implemented", "implementation": {
        **impl, "path": "implementations/distillation/kd_hinton2015/__init__.py"}}).papers[0]
    assert paper.module == "implementations.distillation.kd_hinton2015"
    with pytest.raises(RegistryError, match="implementation.path must be"):
        _parse({**GOOD, "status": "implemented", "implementation": {
            **impl, "path": "implementations/distillation/other/__init__.py"}})


def test_fast_reader_gives_the_round_trip_document() -> None:
    """libyaml's plain read of the real registry equals ruamel's round-trip read, and refuses duplicate keys."""
    from kb.registry import _load_fast, _plain, load_raw

    path = ROOT / "registry.yaml"
    assert _load_fast(path) == _plain(load_raw(path))


def test_fast_reader_refuses_duplicate_keys(tmp_path: Path) -> None:
    from kb.registry import _load_fast

    (tmp_path / "registry.yaml").write_text("papers:\n- id: a_b2020\n  id: c_d2020\n", encoding="utf-8")
    assert _load_fast(tmp_path / "registry.yaml") is None
    (tmp_path / "registry.yaml").write_text("papers:\n- id: a_b2020\n  title: t\n", encoding="utf-8")
    assert _load_fast(tmp_path / "registry.yaml") == {"papers": [{"id": "a_b2020", "title": "t"}]}


# ---------------------------------------------------------------------------
# The fast reader and the writer agree (YAML 1.2); unreadable files; FULL; file modes
# ---------------------------------------------------------------------------

SCALARS = ["off", "on", "yes", "No", "y", "true", "False", "4:1", "1:30:00", "012", "1_000", "0o17", "0x1F",
           "2015-01-01", ".inf", ".NaN", "1e3", "1.5", "-2", "+1", "~", "null", "", "1503.02531", "<<", "=", "tRue"]


@pytest.mark.parametrize("scalar", SCALARS)
def test_fast_reader_resolves_plain_scalars_like_the_yaml_1_2_writer(tmp_path: Path, scalar: str) -> None:
    """libyaml reads YAML 1.1 (`off` is False, `4:1` is 241); the registry is YAML 1.2 as ruamel writes it."""
    from kb.registry import _load_fast, _plain, load_raw

    path = tmp_path / "doc.yaml"
    path.write_text(f"value: {scalar}\nlist: [{scalar or 'x'}]\n", encoding="utf-8")
    fast = _load_fast(path)
    assert fast is None or fast == _plain(load_raw(path))  # the same value, or ruamel decides
    if scalar in ("off", "on", "yes", "No", "4:1", "1:30:00", "012", "1.5", "true", "~"):
        assert fast is not None  # common scalars stay on the fast path


def test_tags_off_and_ratio_are_strings_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kb.cli import main

    text = (
        "papers:\n- id: kd_hinton2015\n  title: T\n  authors: [G H]\n  year: 2015\n  venue: 4:1\n"
        "  arxiv: '1503.02531'\n  bibtex_key: hinton2015distilling\n  category: distillation\n  summary: S.\n"
        "  notes: papers/kd_hinton2015.md\n  tags: [off]\n"
    )
    (tmp_path / "registry.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "kd_hinton2015.md").write_text("x", encoding="utf-8")
    paper = load_registry(tmp_path).papers[0]
    assert paper.tags == ["off"] and paper.venue == "4:1"
    monkeypatch.setenv("KB_ROOT", str(tmp_path))
    assert main(["check"]) == 0 and main(["fmt"]) == 0  # the writer accepted it, so the checker must too


def test_unreadable_registry_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "registry.yaml").write_bytes("papers:\n- id: caf\xe9_b2020\n".encode("latin-1"))
    with pytest.raises(RegistryError, match=r"registry\.yaml: not UTF-8 text \(byte 0xe9 at offset 17\)"):
        load_registry(tmp_path)
    (tmp_path / "registry.yaml").unlink()
    (tmp_path / "registry.yaml").mkdir()
    with pytest.raises(RegistryError, match=r"registry\.yaml: cannot read"):
        load_raw(tmp_path / "registry.yaml")


def test_full_declarations_are_read_without_importing(tmp_path: Path) -> None:
    registry = load_registry(ROOT)
    declared = {p.id: full_setting(ROOT, p) for p in registry.papers if full_setting(ROOT, p)}
    assert sorted(declared) == ["dml_zhang2018", "kd_hinton2015"]
    assert all("CIFAR-100" in text for text in declared.values())
    module = tmp_path / "m.py"
    module.write_text('FULL = "ImageNet, 90 epochs"\n__all__: list[str] = ["X"]\n', encoding="utf-8")
    assert module_constant(module, "FULL") == "ImageNet, 90 epochs" and module_constant(module, "__all__") == ["X"]
    assert module_constant(module, "OTHER", 7) == 7


@pytest.mark.parametrize(("line", "needle"), [
    ("FULL = SETTINGS", "`FULL` must be a string literal"),
    ("FULL = ''", "`FULL` must describe the paper-scale setting"),
])
def test_check_rejects_a_bad_full_declaration(tmp_path: Path, line: str, needle: str) -> None:
    entry = {**GOOD, "status": "implemented", "implementation": {
        "path": "implementations/distillation/kd_hinton2015.py", "entrypoint": "KD", "fidelity": "faithful",
        "test": "tests/implementations/test_kd_hinton2015.py"}}
    for rel, text in {"papers/kd_hinton2015.md": "notes", "tests/implementations/test_kd_hinton2015.py": "",
                      "implementations/distillation/kd_hinton2015.py": f'__all__ = ["KD"]\n{line}\n'}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    errors = check_repository(tmp_path, _parse(entry)).errors
    assert len(errors) == 1 and needle in errors[0]


def test_registry_rewrite_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("papers: []\n", encoding="utf-8")
    path.chmod(0o640)
    write_raw(path, load_raw(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    new = tmp_path / "sub" / "registry.yaml"
    new.parent.mkdir()
    old_umask = os.umask(0o027)
    try:
        write_raw(new, load_raw(path))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o640  # 0o666 minus the umask, not mkstemp's 0o600
