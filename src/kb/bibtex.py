r"""BibTeX export of the registry and import of entries from `.bib` files (bibtexparser 2.x).

Imported entries may come straight from Google Scholar or DBLP: LaTeX accents are decoded (`M{\"u}ller` ->
`Müller`, through pylatexenc), a trailing `and others` is dropped, and the arXiv id is read from `eprint`, from a
`journal = {arXiv preprint arXiv:1503.02531}` field, from DBLP's `volume = {abs/1503.02531}` or from an arxiv.org
URL.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import bibtexparser
from bibtexparser.model import Entry, Field

from kb.schema import Paper, Registry

__all__ = [
    "BibError",
    "BibRecord",
    "ascii_lower",
    "entry_for",
    "export_bibtex",
    "paper_bibtex",
    "read_bib_entry",
    "suggest_id",
]


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


#: An arXiv id (new style `1503.02531v2` or old style `cs.LG/0601001`), as the registry's pattern accepts it.
_ARXIV_ID = r"(\d{4}\.\d{4,5}(?:v\d+)?|[a-z\-]+(?:\.[A-Z]{2})?/\d{7}(?:v\d+)?)"
_ARXIV_IN_TEXT = re.compile(r"arxiv(?:\s+preprint)?\s*(?:arxiv)?\s*[:\s]\s*" + _ARXIV_ID, re.IGNORECASE)
_OTHERS = {"others", "et al.", "et al", "et. al."}


def _clean(value: str) -> str:
    return " ".join(value.replace("{", "").replace("}", "").split())


def _latex_text(value: str) -> str:
    r"""LaTeX markup as plain Unicode: accents (`{\'e}` -> `é`), `\&`, protective braces; math kept verbatim."""
    from pylatexenc.latex2text import LatexNodes2Text

    value = re.sub(r"(?<!\\)%", r"\\%", value)  # a bare % would start a LaTeX comment and eat the rest
    try:
        text = LatexNodes2Text(math_mode="verbatim").latex_to_text(value)
    except Exception:  # noqa: BLE001 - malformed markup: fall back to dropping the braces
        text = value
    return _clean(text)


def _author_name(name: str) -> str:
    """`Last, First` -> `First Last`; other forms unchanged."""
    name = _latex_text(name)
    if "," in name:
        last, first = (part.strip() for part in name.split(",", 1))
        return f"{first} {last}".strip()
    return name


def _arxiv_id(fields: dict[str, str]) -> str | None:
    """The arXiv id of an entry, from the first field that carries one."""
    eprint = fields.get("eprint", "")
    if eprint and fields.get("archiveprefix", "arxiv").lower() == "arxiv":
        match = re.fullmatch(r"(?:arxiv:)?\s*" + _ARXIV_ID, eprint, re.IGNORECASE)
        if match:
            return match.group(1)
    for name in ("journal", "howpublished", "booktitle", "note"):
        match = _ARXIV_IN_TEXT.search(fields.get(name, ""))
        if match:
            return match.group(1)
    if fields.get("journal", "").lower() == "corr":  # DBLP: journal = {CoRR}, volume = {abs/1503.02531}
        match = re.fullmatch(r"abs/" + _ARXIV_ID, fields.get("volume", ""))
        if match:
            return match.group(1)
    match = re.search(r"arxiv\.org/(?:abs|pdf)/" + _ARXIV_ID, fields.get("url", ""))
    return match.group(1) if match else None


def read_bib_entry(path: Path, key: str) -> BibRecord:
    """Parse `path` and return the entry `key`.

    The whole file must parse: if any block fails (bad syntax, duplicate key), every failed
    block is reported with its line and nothing is returned, so the caller writes nothing.
    """
    from kb.registry import read_text

    text = read_text(path, BibError)  # a missing file, a folder or non-UTF-8 bytes: one line naming the file
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
    raw = {f.key.lower(): str(f.value) for f in entry.fields}  # LaTeX as written, for the decoded fields
    fields = {name: _clean(value) for name, value in raw.items()}
    missing = [name for name in ("title", "author", "year") if not fields.get(name)]
    if missing:
        raise BibError(f"{path}: entry {key!r}: missing field(s) {', '.join(missing)}")
    year_match = re.search(r"\d{4}", fields["year"])
    if not year_match:
        raise BibError(f"{path}: entry {key!r}: year {fields['year']!r} is not a year")
    arxiv = _arxiv_id(fields)
    venue = raw.get("booktitle") or raw.get("journal") or raw.get("howpublished") or ""
    # Scholar's `journal = {arXiv preprint arXiv:1503.02531}` names a venue and an id: keep the venue part.
    venue = _latex_text(_ARXIV_IN_TEXT.sub("arXiv", venue)).replace("arXiv preprint arXiv", "arXiv preprint")
    if not venue or venue.lower() in ("arxiv", "corr"):
        venue = "arXiv preprint"
    authors = [_author_name(a) for a in re.split(r"\s+and\s+", raw["author"].strip()) if a.strip()]
    authors = [a for a in authors if a.lower() not in _OTHERS]
    if not authors:
        raise BibError(f"{path}: entry {key!r}: no author names (only 'others')")
    return BibRecord(
        key=key,
        title=_latex_text(raw["title"]),
        authors=authors,
        year=int(year_match.group()),
        venue=venue,
        arxiv=arxiv,
        url=fields.get("url") or None,
    )


def ascii_lower(text: str) -> str:
    """`text` folded to lower-case ASCII letters and digits: accents dropped (`Über` -> `uber`), the rest removed
    (`O'Brien` -> `obrien`)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", folded.lower())


def suggest_id(method: str, first_author: str, year: int) -> str:
    """`<method>_<firstauthor><year>` from a method name and the first author's full name."""
    last = first_author.split()[-1] if first_author.split() else first_author
    return f"{ascii_lower(method)}_{re.sub(r'[0-9]', '', ascii_lower(last))}{year}"
