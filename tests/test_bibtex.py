"""BibTeX export and import (bibtexparser 2.x): round-trip of the whole registry."""

from __future__ import annotations

from pathlib import Path

import bibtexparser
import pytest

from kb.bibtex import BibError, export_bibtex, read_bib_entry, suggest_id
from kb.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]


def test_export_round_trips_every_entry(tmp_path: Path) -> None:
    registry = load_registry(ROOT)
    text = export_bibtex(registry)
    library = bibtexparser.parse_string(text)
    assert library.failed_blocks == []
    assert [e.key for e in library.entries] == [p.bibtex_key for p in registry.papers]
    path = tmp_path / "all.bib"
    path.write_text(text, encoding="utf-8")
    for paper in registry.papers:
        record = read_bib_entry(path, paper.bibtex_key)
        assert record.title == paper.title.replace("{", "").replace("}", "")
        assert record.authors == paper.authors
        assert record.year == paper.year
        assert record.arxiv == paper.arxiv


def test_entry_type_follows_venue() -> None:
    registry = load_registry(ROOT)
    library = bibtexparser.parse_string(export_bibtex(registry))
    types = {e.key: e.entry_type for e in library.entries}
    for paper in registry.papers:
        if paper.venue.startswith("CVPR") or paper.venue.startswith("ICLR"):
            assert types[paper.bibtex_key] == "inproceedings", paper.id
        if "Transactions" in paper.venue:
            assert types[paper.bibtex_key] == "article", paper.id


def test_missing_key_and_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.bib"
    path.write_text("@misc{k1, title = {T}}\n", encoding="utf-8")
    with pytest.raises(BibError, match="no entry with key 'k2'"):
        read_bib_entry(path, "k2")
    with pytest.raises(BibError, match="entry 'k1': missing field"):
        read_bib_entry(path, "k1")


def test_suggest_id_folds_accents() -> None:
    assert suggest_id("SubClass", "Rafael Müller", 2020) == "subclass_muller2020"
    assert suggest_id("kd", "Geoffrey Hinton", 2015) == "kd_hinton2015"
