"""BibTeX export of the registry and import of entries from `.bib` files (bibtexparser 2.x)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import bibtexparser
from bibtexparser.model import Entry, Field

from kb.schema import Paper, Registry

__all__ = ["BibError", "BibRecord", "entry_for", "export_bibtex", "paper_bibtex", "read_bib_entry", "suggest_id"]


class BibError(Exception):
    """A problem with a `.bib` file, phrased for the user (file, block, line)."""


_JOURNAL = re.compile(r"transactions|journal|magazine|letters", re.IGNORECASE)
_MISC = re.compile(r"arxiv|preprint|talk|lecture|report|blog", re.IGNORECASE)


def entry_for(paper: Paper) -> Entry:
    """The BibTeX entry of one registry paper; the type follows the venue."""
    fields = [
        Field("title", "{" + paper.title + "}"),
        Field("author", " and ".join(paper.authors)),
        Field("year", str(paper.year)),
    ]
    if _MISC.search(paper.venue):
        entry_type = "misc"
        fields.append(Field("howpublished", paper.venue))
    elif _JOURNAL.search(paper.venue):
        entry_type = "article"
        fields.append(Field("journal", paper.venue))
    else:
        entry_type = "inproceedings"
        fields.append(Field("booktitle", paper.venue))
    if paper.arxiv:
        fields += [Field("eprint", paper.arxiv), Field("archiveprefix", "arXiv")]
    url = paper.url or (f"https://arxiv.org/abs/{paper.arxiv}" if paper.arxiv else None)
    if url:
        fields.append(Field("url", url))
    return Entry(entry_type, paper.bibtex_key, fields)


def paper_bibtex(paper: Paper) -> str:
    """One paper as a BibTeX string."""
    library = bibtexparser.Library([entry_for(paper)])
    return bibtexparser.write_string(library).strip() + "\n"


def export_bibtex(registry: Registry) -> str:
    """The whole registry as one BibTeX file, in registry order."""
    library = bibtexparser.Library([entry_for(p) for p in registry.papers])
    return bibtexparser.write_string(library)


@dataclass(frozen=True)
class BibRecord:
    """The registry-relevant fields of one imported BibTeX entry."""

    key: str
    title: str
    authors: list[str]
    year: int
    venue: str
    arxiv: str | None
    url: str | None


def _clean(value: str) -> str:
    return " ".join(value.replace("{", "").replace("}", "").split())


def _author_name(name: str) -> str:
    """`Last, First` -> `First Last`; other forms unchanged."""
    name = _clean(name)
    if "," in name:
        last, first = (part.strip() for part in name.split(",", 1))
        return f"{first} {last}".strip()
    return name


def read_bib_entry(path: Path, key: str) -> BibRecord:
    """Parse `path` and return the entry `key`.

    The whole file must parse: if any block fails (bad syntax, duplicate key), every failed
    block is reported with its line and nothing is returned, so the caller writes nothing.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BibError(f"{path}: file not found") from exc
    library = bibtexparser.parse_string(text)
    if library.failed_blocks:
        problems = []
        for block in library.failed_blocks:
            line = getattr(block, "start_line", None)
            kind = type(block).__name__
            head = block.raw.strip().splitlines()[0][:60] if block.raw.strip() else ""
            where = f"line {line + 1}" if isinstance(line, int) else "unknown line"
            problems.append(f"{path}: {where}: {kind}: {head!r}")
        raise BibError("\n".join(problems))
    entries = {entry.key: entry for entry in library.entries}
    if key not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise BibError(f"{path}: no entry with key {key!r} (keys in file: {known})")
    entry = entries[key]
    fields = {f.key.lower(): _clean(str(f.value)) for f in entry.fields}
    missing = [name for name in ("title", "author", "year") if not fields.get(name)]
    if missing:
        raise BibError(f"{path}: entry {key!r}: missing field(s) {', '.join(missing)}")
    year_match = re.search(r"\d{4}", fields["year"])
    if not year_match:
        raise BibError(f"{path}: entry {key!r}: year {fields['year']!r} is not a year")
    venue = fields.get("booktitle") or fields.get("journal") or fields.get("howpublished") or "arXiv preprint"
    arxiv = fields.get("eprint") if fields.get("archiveprefix", "arxiv").lower() == "arxiv" else None
    if not arxiv and "arxiv.org/abs/" in fields.get("url", ""):
        arxiv = fields["url"].rsplit("/abs/", 1)[1]
    return BibRecord(
        key=key,
        title=fields["title"],
        authors=[_author_name(a) for a in re.split(r"\s+and\s+", fields["author"]) if a.strip()],
        year=int(year_match.group()),
        venue=venue,
        arxiv=arxiv or None,
        url=fields.get("url") or None,
    )


def _ascii_lower(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", folded.lower())


def suggest_id(method: str, first_author: str, year: int) -> str:
    """`<method>_<firstauthor><year>` from a method name and the first author's full name."""
    last = first_author.split()[-1] if first_author.split() else first_author
    return f"{_ascii_lower(method)}_{re.sub(r'[0-9]', '', _ascii_lower(last))}{year}"
