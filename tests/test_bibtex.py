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


SCHOLAR = r"""@article{hinton2015distilling,
  title={Distilling the knowledge in a neural network},
  author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal={arXiv preprint arXiv:1503.02531},
  year={2015}
}

@inproceedings{muller2020subclass,
  title={Subclass distillation: {\"U}ber {\'e}tudes and 100\% of $\ell_1$},
  author={M{\"u}ller, Rafael and Fran{\c{c}}ois, Jean and Kornblith, Simon and others},
  booktitle={Advances in Neural Information Processing Systems},
  eprint={arXiv:2002.03936},
  year={2020}
}

@article{dblp2018,
  title={A {DBLP} entry}, author={O'Brien, Pat}, journal={CoRR}, volume={abs/1802.05668}, year={2018}
}
"""


def test_google_scholar_entries(tmp_path: Path) -> None:
    path = tmp_path / "scholar.bib"
    path.write_text(SCHOLAR, encoding="utf-8")
    kd = read_bib_entry(path, "hinton2015distilling")
    assert (kd.arxiv, kd.venue, kd.authors) == ("1503.02531", "arXiv preprint", ["Geoffrey Hinton", "Oriol Vinyals",
                                                                                 "Jeff Dean"])
    sub = read_bib_entry(path, "muller2020subclass")
    assert sub.title == r"Subclass distillation: Über études and 100% of $\ell_1$"  # accents decoded, math kept
    assert sub.authors == ["Rafael Müller", "Jean François", "Simon Kornblith"]  # "and others" dropped
    assert sub.arxiv == "2002.03936" and sub.venue == "Advances in Neural Information Processing Systems"
    assert suggest_id("subclass", sub.authors[0], sub.year) == "subclass_muller2020"
    dblp = read_bib_entry(path, "dblp2018")
    assert (dblp.arxiv, dblp.venue, dblp.title) == ("1802.05668", "arXiv preprint", "A DBLP entry")


def test_unreadable_bib_files_raise_bib_error(tmp_path: Path) -> None:
    with pytest.raises(BibError, match=r"refs: cannot read"):
        (tmp_path / "refs").mkdir()
        read_bib_entry(tmp_path / "refs", "k")
    (tmp_path / "latin1.bib").write_bytes("@misc{k, title={Caf\xe9}, author={A B}, year={2020}}\n".encode("latin-1"))
    with pytest.raises(BibError, match=r"latin1\.bib: not UTF-8 text \(byte 0xe9"):
        read_bib_entry(tmp_path / "latin1.bib", "k")
    with pytest.raises(BibError, match="file not found"):
        read_bib_entry(tmp_path / "missing.bib", "k")
