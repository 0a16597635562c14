"""The registry: schema, both-way consistency with the files, and coverage of the reading notes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kb.registry import RegistryError, check_repository, load_registry, parse_registry_text
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
