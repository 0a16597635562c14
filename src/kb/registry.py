"""Read, check and write `registry.yaml`.

Reading rejects duplicate YAML keys (ruamel.yaml does) and turns pydantic's errors into one
line per problem that names the file and the entry. Writing goes through ruamel's round-trip
mode, so comments and key order survive, and always through a temporary file that is
validated before it replaces the real one: a failed write leaves nothing half-written.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import functools
import io
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.resolver import VersionedResolver

from kb.schema import Paper, Registry

__all__ = [
    "CheckReport",
    "registry_lock",
    "RegistryError",
    "check_repository",
    "defines_function",
    "describe_validation_error",
    "find_root",
    "full_setting",
    "load_raw",
    "load_registry",
    "module_constant",
    "new_file_mode",
    "parse_registry_text",
    "read_text",
    "write_raw",
]

REGISTRY_FILE = "registry.yaml"


class RegistryError(Exception):
    """A problem with the registry, already phrased for the user (file, entry, field)."""


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder at or above `start` holding `registry.yaml`.

    `KB_ROOT` in the environment wins, so the tool also works from outside the checkout.
    """
    env = os.environ.get("KB_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / REGISTRY_FILE).is_file():
            return folder
    raise RegistryError(f"no {REGISTRY_FILE} in {here} or any parent folder (or set KB_ROOT)")


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=2, offset=0)
    return yaml


def read_text(path: Path, error: type[Exception] | None = None) -> str:
    """The UTF-8 text of `path`; a missing, unreadable or non-UTF-8 file raises `error` (default `RegistryError`)
    with one line that names the file."""
    error = error or RegistryError
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise error(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from exc
    except OSError as exc:  # a folder, no permission, ...
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from exc


def new_file_mode(path: Path) -> int:
    """The permission bits a rewrite of `path` should get: the old file's, or 0o666 minus the umask for a new one.

    `tempfile.mkstemp` creates files with mode 0o600; without this, every atomically rewritten file would lose
    its group/other read bits.
    """
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def load_raw(path: Path) -> Any:
    """The round-trip YAML document (comments kept), or a RegistryError naming the file."""
    text = read_text(path)
    try:
        return _yaml().load(text)
    except YAMLError as exc:
        raise RegistryError(f"{path}: malformed YAML: {' '.join(str(exc).split())}") from exc


def _plain(node: Any) -> Any:
    """ruamel's commented containers as plain dicts, lists and scalars."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def _error_line(err: Any, loc: list[Any]) -> str:
    """One pydantic error as `field 'a.b': message` (no input dump, no documentation URL)."""
    fld = ".".join(str(part) for part in loc if not str(part).startswith("function-"))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{'field ' + repr(fld) + ': ' if fld else ''}{msg}"


def describe_validation_error(exc: ValidationError, where: str) -> list[str]:
    """One line per problem of a single model's validation, each prefixed with `where` (file and entry)."""
    return [f"{where}: {_error_line(err, list(err['loc']))}" for err in exc.errors()]


def _describe_errors(path: Path, raw: Any, exc: ValidationError) -> list[str]:
    papers = raw.get("papers") if isinstance(raw, dict) else None
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = "registry"
        if len(loc) >= 2 and loc[0] == "papers" and isinstance(loc[1], int):
            index = loc[1]
            entry = papers[index] if isinstance(papers, list) and index < len(papers) else None
            entry_id = entry.get("id") if isinstance(entry, dict) else None
            where = f"entry {entry_id!r} (papers[{index}])" if entry_id else f"papers[{index}]"
            loc = loc[2:]
        lines.append(f"{path}: {where}: {_error_line(err, loc)}")
    return lines


def parse_registry_text(raw: Any, path: Path) -> Registry:
    """Validate an already loaded YAML document; errors name the file and the entry."""
    if not isinstance(raw, dict) or "papers" not in raw:
        raise RegistryError(f"{path}: expected a mapping with a top-level `papers:` list")
    try:
        return Registry.model_validate(_plain(raw))
    except ValidationError as exc:
        raise RegistryError("\n".join(_describe_errors(path, raw, exc))) from exc


#: Plain scalars the fast reader converts itself; ruamel (YAML 1.2) gives the same value for these.
_PLAIN_INT = re.compile(r"[-+]?[0-9]+")
_PLAIN_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_FALLBACK_TAG = "tag:kb,2025:ask-ruamel"  # any other non-string scalar: let ruamel read the whole file
_INT_TAG, _FLOAT_TAG = "tag:kb,2025:decimal-int", "tag:kb,2025:decimal-float"


@functools.cache
def _resolver12() -> VersionedResolver:
    return VersionedResolver(version=(1, 2))


def _yaml12_tag(value: str) -> str:
    """The YAML 1.2 tag of a plain scalar, as ruamel (the writer) resolves it, or a tag that makes the fast
    reader give up.

    libyaml's SafeLoader follows YAML 1.1, where `off`/`yes` are booleans and `4:1` is the base-60 integer 241;
    ruamel follows YAML 1.2, where both are strings. Using ruamel's resolver table here keeps the two readers in
    agreement: strings, `true`/`false`, nulls and plain decimal numbers are converted here, anything else (octal,
    hex, `1_000`, dates, `.inf`, ...) sends the file to ruamel.
    """
    tag = str(_resolver12().resolve(ScalarNode, value, (True, False)))
    if tag in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"):
        return tag
    if tag == "tag:yaml.org,2002:int" and _PLAIN_INT.fullmatch(value):
        return _INT_TAG
    if tag == "tag:yaml.org,2002:float" and _PLAIN_FLOAT.fullmatch(value):
        return _FLOAT_TAG
    return _FALLBACK_TAG


def _load_fast(path: Path) -> Any | None:
    """The plain document through libyaml (C), or None when anything is off (ruamel then reads or reports it).

    Reading the registry is on every site build and `kb` call; ruamel's pure-Python round-trip parser keeps the
    comments that edits need but takes about 0.5 s on 90 entries, libyaml about 0.04 s. Duplicate keys are refused
    here too, and plain scalars resolve as in YAML 1.2 (see `_yaml12_tag`), so the fast path returns exactly what
    the round-trip path would, or nothing.
    """
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with mkdocs
        return None
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:  # pragma: no cover - a PyYAML built without libyaml
        return None

    class _Yaml12(loader):  # type: ignore[misc, valid-type]
        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is yaml.nodes.ScalarNode and implicit[0]:
                return _yaml12_tag(value)
            return super().resolve(kind, value, implicit)

    def mapping(self: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        if len(keys) != len(set(map(str, keys))):
            raise yaml.constructor.ConstructorError(None, None, "duplicate key", node.start_mark)
        return loader.construct_mapping(self, node, deep=deep)

    def give_up(self: Any, node: Any) -> Any:
        raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} needs ruamel", node.start_mark)

    _Yaml12.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    _Yaml12.add_constructor(_INT_TAG, lambda self, node: int(node.value, 10))
    _Yaml12.add_constructor(_FLOAT_TAG, lambda self, node: float(node.value))
    _Yaml12.add_constructor(_FALLBACK_TAG, give_up)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12)  # noqa: S506 - a safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def load_registry(root: Path | None = None) -> Registry:
    """Load and validate `registry.yaml` under `root` (found from the working directory by default)."""
    root = root or find_root()
    path = root / REGISTRY_FILE
    raw = _load_fast(path)
    return parse_registry_text(load_raw(path) if raw is None else raw, path)


@contextlib.contextmanager
def registry_lock(root: Path):  # noqa: ANN201 - a context manager
    """Hold an exclusive lock on the registry for a whole read-modify-write (parallel `kb add`s)."""
    fd = os.open(root, os.O_RDONLY)  # lock the folder itself: no lock file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_raw(path: Path, doc: Any) -> None:
    """Validate `doc` and atomically replace `path` with it; on any error the old file stays."""
    buffer = io.StringIO()
    _yaml().dump(doc, buffer)
    text = buffer.getvalue()
    parse_registry_text(_yaml().load(text), path)  # never write an invalid registry
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=".registry.", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)  # mkstemp's 0o600 would make the registry private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Consistency between the registry and the files on disk
# ---------------------------------------------------------------------------


@dataclass
class CheckReport:
    """What `kb check` found: errors fail the check, notes are printed for information."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _inside(root: Path, rel: str) -> bool:
    return (root / rel).resolve().is_relative_to(root.resolve())


_NOT_LITERAL = object()  # a constant assigned something `ast.literal_eval` cannot read


def _module_constants(path: Path, names: Iterable[str]) -> dict[str, Any]:
    """The module-level `name = <literal>` assignments of `path` for `names`, from one parse and no import.

    Names the module does not assign are absent; a value that is not a literal maps to `_NOT_LITERAL`. Raises
    `SyntaxError` when the file does not parse and `RegistryError` when it cannot be read.
    """
    wanted, found = set(names), {}
    for node in ast.parse(read_text(path), filename=str(path)).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for name in {t.id for t in targets if isinstance(t, ast.Name)} & wanted:
            try:
                found[name] = ast.literal_eval(value)
            except ValueError:
                found[name] = _NOT_LITERAL
    return found


def module_constant(path: Path, name: str, default: Any = None) -> Any:
    """The literal value of a module-level `name = <literal>` in `path`, read without importing it (no torch).

    Returns `default` when the module does not assign `name`; raises `ValueError` when the value is not a literal
    and `SyntaxError` when the file does not parse.
    """
    value = _module_constants(path, [name]).get(name, default)
    if value is _NOT_LITERAL:
        raise ValueError(f"{path}: `{name}` is not a literal")
    return value


def defines_function(path: Path, name: str) -> bool:
    """Whether the module in `path` defines a top-level function `name`, or imports one under that name (a package's
    `__init__.py` may re-export it); read without importing the module."""
    for node in ast.parse(read_text(path), filename=str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def full_setting(root: Path, paper: Paper) -> str | None:
    """The paper-scale (`kb run --full`) setting its module declares as `FULL = "<description>"`, or None.

    A module that handles `ctx.profile == "full"` declares it with a one-line module constant, e.g.
    `FULL = "CIFAR-100, resnet32x4 -> resnet8x4, 240 epochs"`; `kb run --full` refuses every other module, so a
    paper without a paper-scale setting never writes a "full" result that is really the small protocol.
    """
    if paper.implementation is None or not (root / paper.implementation.path).is_file():
        return None
    try:
        value = module_constant(root / paper.implementation.path, "FULL")
    except (SyntaxError, ValueError, RegistryError):
        return None
    return value if isinstance(value, str) and value.strip() else None


def _listing(root: Path, pattern: str) -> Iterable[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def check_repository(root: Path, registry: Registry) -> CheckReport:
    """Both-way consistency between the registry and the notes, code, tests and results on disk."""
    report = CheckReport()
    reg = root / REGISTRY_FILE
    by_id = {p.id: p for p in registry.papers}
    for paper in registry.papers:
        where = f"{reg}: entry {paper.id!r}"
        rels = [paper.notes] + ([paper.implementation.path, paper.implementation.test] if paper.implementation else [])
        for rel in rels:
            if not _inside(root, rel):
                report.errors.append(f"{where}: path {rel!r} points outside the repository")
            elif not (root / rel).is_file():
                report.errors.append(f"{where}: missing file {rel} (run `kb add`/`kb implement` or create it)")
        impl = paper.implementation
        if impl and (root / impl.path).is_file() and _inside(root, impl.path):
            try:
                constants = _module_constants(root / impl.path, ["__all__", "FULL"])
            except SyntaxError as exc:
                report.errors.append(f"{where}: {impl.path} does not parse: {exc}")
                constants = {"__all__": []}
            except RegistryError as exc:
                report.errors.append(f"{where}: {exc}")
                constants = {"__all__": []}
            exported, full = constants.get("__all__", _NOT_LITERAL), constants.get("FULL")
            if exported is _NOT_LITERAL:
                report.errors.append(f"{where}: {impl.path} has no literal `__all__`")
            elif exported and impl.entrypoint not in [str(name) for name in exported]:
                report.errors.append(f"{where}: entrypoint {impl.entrypoint!r} is not in {impl.path}'s __all__")
            if full is _NOT_LITERAL:
                report.errors.append(f"{where}: {impl.path}: `FULL` must be a string literal")
            elif full is not None and not (isinstance(full, str) and full.strip()):
                report.errors.append(f"{where}: {impl.path}: `FULL` must describe the paper-scale setting in a "
                                     f"non-empty string (or be absent), got {full!r}")
        if paper.status == "scaffolded":
            report.notes.append(f"{paper.id}: scaffolded, not yet implemented (its test fails until written)")

    # The other direction: every file that names a paper id must have an entry.
    strays: dict[str, list[str]] = {"notes pages": [], "implementation modules": [], "tests": [], "results": []}
    for path in _listing(root, "papers/*.md"):
        if path.stem not in by_id:
            strays["notes pages"].append(str(path.relative_to(root)))
    registered_modules = {p.implementation.path for p in registry.papers if p.implementation}
    modules = [(p, p.name) for p in _listing(root, "implementations/*/*.py")]
    modules += [(p, p.parent.name) for p in _listing(root, "implementations/*/*/__init__.py")]  # packages
    for path, name in modules:
        if not name.startswith("_") and str(path.relative_to(root)) not in registered_modules:
            strays["implementation modules"].append(str(path.relative_to(root)))
    for path in _listing(root, "tests/implementations/test_*.py"):
        paper_id = path.stem.removeprefix("test_")
        if paper_id not in by_id or by_id[paper_id].implementation is None:
            strays["tests"].append(str(path.relative_to(root)))
    for path in _listing(root, "results/*.json"):
        if path.stem not in by_id:
            strays["results"].append(str(path.relative_to(root)))
        else:
            report.errors.extend(_check_result(path, by_id[path.stem]))
    for path in _listing(root, "results/benchmarks/*.json"):
        try:
            from kb.results import load_benchmark

            bench = load_benchmark(path)
        except ImportError:
            continue
        except Exception as exc:  # noqa: BLE001 - load_benchmark phrases its own errors
            report.errors.append(str(exc))
            continue
        unknown = [row.paper for row in bench.rows if row.paper not in by_id]
        if bench.family != path.stem or unknown:
            report.errors.append(f"{path}: family {bench.family!r} or papers {unknown} do not match the registry")
    for kind, paths in strays.items():
        if paths:
            report.errors.append(f"{kind} without a registry entry (run `kb add`): {', '.join(paths)}")
    return report


def _check_result(path: Path, paper: Paper) -> list[str]:
    try:
        from kb.results import load_result
    except ImportError:  # the results schema is optional until the harness lands
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            return [f"{path}: not valid JSON: {exc}"]
        return []
    try:
        result = load_result(path)
    except Exception as exc:  # noqa: BLE001 - load_result phrases its own errors
        return [str(exc)]
    if result.id != paper.id:
        return [f"{path}: id {result.id!r} does not match the file name"]
    if paper.implementation is None:
        return [f"{path}: results exist but entry {paper.id!r} has no implementation"]
    questions = {q.question for q in paper.open_questions}
    return [f"{path}: answer to {a.question!r} matches no open question of entry {paper.id!r} in the registry"
            for a in result.answers if a.question not in questions]
