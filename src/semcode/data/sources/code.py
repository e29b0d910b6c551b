"""Code files: ``python:stdlib``, ``python:site-packages`` and ``dir:PATH``, read file by file.

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
  and ``site-packages`` are skipped everywhere, and in a ``dir:`` what its ``.gitignore`` files exclude
  (semcode.data.gitignore; counted as the reject ``gitignored``, a folder once: it is not walked). A ``dir:`` without a single file of the selected
  languages is a SourceError naming the extensions it holds.

Test paths (``tests/``, ``test_*.py``, ``x_test.go``, Ruby/JS ``spec/``), vendored files
(``vendor/``, ``node_modules/``, ``third_party/``) and generated files by name (``*.min.js``,
``*_pb2.py``, ``*.pb.go``, ``*.generated.*``) are skipped by path before reading; files bigger
than ``max_file_bytes`` are skipped by size, files whose first lines say ``Code generated ...
DO NOT EDIT`` after reading, and files with a line longer than ``max_line_chars`` (minified code,
data) before parsing: their parse tree is the one thing whose memory a raised size limit leaves
unbounded.

Only regular files inside the source's root are read, at most ``max_file_bytes + 1`` bytes of each
(:mod:`semcode.data.files`: a link out of the root is ``outside_root``, a FIFO or device
``not_regular``, a name that is not UTF-8 ``bad_file_name``, each named in the manifest's
``rejected_files``). A Python file nested deeper than MAX_INDENT_LEVELS (CPython's own limit; tree-sitter's
scanner segfaults a few hundred levels further) is ``too_deep`` before parsing. Files are read and parsed
in worker processes (:mod:`semcode.data.sources.workers`, ``workers`` of them, each with its memory
capped at ``parse_memory_mb``): a file that crashes its worker is a ``parse_crash`` reject, named, and
the ingest goes on.

Code files (``python:`` and ``dir:``) go through :mod:`semcode.data.extract`; every extracted
function becomes a corpus row (``query`` empty without doc comment) and, when its doc comment's
first paragraph has enough tokens, a pair row with the same ``code``. Every row carries its
``language`` and ``signature`` (the header on one line); the stats count files, functions, pairs and
rejects per language too. ``url`` is where the function is, never the build machine's absolute path:
``python://stdlib/json/decoder.py``, ``python://site-packages/requests/api.py``, ``dir://<repo>/<path>``
for a local directory (its name, then the path inside it), or the file's ``s3://`` URI, with
``#L<start>-L<end>``; ``path`` is relative to the package or directory root (``json/decoder.py``).
Every row carries its file's ``license`` (semcode.data.licenses: ``PSF-2.0`` for the stdlib, the
package's metadata for site-packages, the nearest licence file for a ``dir:``); a file whose licence
``ExtractOptions.licenses`` refuses is skipped before it is read (the reject ``license``).
"""

from __future__ import annotations

import io
import os
import re
import site
import sysconfig
import tokenize
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from semcode import storage
from semcode.data import extract, languages, licenses
from semcode.data.files import FileRefused, is_utf8, read_source_file, shown_name
from semcode.data.gitignore import GitIgnore
from semcode.data.sources import listing
from semcode.data.sources.rows import (
    NAMED_REASONS,
    WHOLE,
    ExtractOptions,
    Shard,
    SourceResult,
    SourceStats,
    new_row,
    progress_bar,
    stable_hash,
)
from semcode.data.sources.spec import SourceError, SourceSpec
from semcode.data.sources.workers import Workers
from semcode.progress import Progress

STDLIB_SKIPPED = ("site-packages", "dist-packages", "lib-dynload", "__pycache__")
MAX_INDENT_LEVELS = 100  # CPython refuses deeper ("too many levels of indentation"); tree-sitter crashes ~500


@dataclass(frozen=True)
class FileTask:
    """One source file to read: where it is, its language, and how its rows are labelled."""

    location: str  # local path or s3:// URI
    repo: str
    path: str  # relative, with "/"
    url: str  # url-like location without the #L fragment
    language: str = "python"
    root: str = ""  # the source's root folder, resolved: nothing outside it is read ("" for S3)
    license: str = ""  # SPDX expression of the file's licence ("" = none found)


@dataclass
class FileOutcome:
    pairs: list[dict]
    corpus: list[dict]
    rejects: Counter[str]
    parsed: bool
    functions: int
    language: str = "python"
    rejected_files: list[str] = field(default_factory=list)  # "path: reason (why)", see rows.NAMED_REASONS

    def refuse(self, path: str, reason: str, detail: str = "") -> FileOutcome:
        """Count ``reason`` once, and name the file beside it."""
        self.rejects[reason] += 1
        self.rejected_files.append(f"{shown_name(path)}: {reason}" + (f" ({detail})" if detail else ""))
        return self


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
        data = read_source_file(task.location, task.root, options.max_file_bytes)
    except FileRefused as refused:
        if refused.reason == "too_large":
            outcome.rejects["too_large"] += 1
            return outcome
        return outcome.refuse(task.path, refused.reason, refused.detail)
    except OSError:
        outcome.rejects["unreadable"] += 1
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
    if task.language == "python" and indent_levels(text) > MAX_INDENT_LEVELS:
        return outcome.refuse(
            task.path or task.url, "too_deep", f"over {MAX_INDENT_LEVELS} levels of indentation"
        )
    try:
        with warnings.catch_warnings():  # invalid escapes etc. in other people's code are not our news
            warnings.simplefilter("ignore")
            functions, rejects = extract.extract_functions(
                text,
                language=task.language,
                path=task.path,
                min_code_lines=options.min_code_lines,
                max_code_chars=options.max_code_chars,
                index_all=options.index_all,
            )
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        outcome.rejects["syntax_error"] += 1
        return outcome
    outcome.parsed = True
    outcome.rejects.update(rejects)
    outcome.functions = len(functions)
    for function in functions:
        row = new_row(
            spec_text,
            query=function.query,
            code=function.code,
            language=function.language,
            repo=task.repo,
            path=task.path,
            func_name=function.func_name,
            url=_line_url(task.url, function.start_line, function.end_line),
            signature=function.signature,
            license=task.license,
        )
        outcome.corpus.append(row)
        if function.pair_reject:
            continue  # an index row only; its rule is counted in the rejects already
        if not function.query:
            outcome.rejects["no_docstring"] += 1
        elif extract.count_tokens(function.query) < options.min_docstring_tokens:
            outcome.rejects["short_docstring"] += 1
        else:
            outcome.pairs.append(dict(row))
    return outcome


def indent_levels(text: str) -> int:
    """How deep a Python file's indentation nests (as the tokenizer counts it: a stack of widths, blank and
    comment lines aside); a regex first finds out in C whether any line is indented far enough to matter."""
    if not re.search(rf"^[ \t]{{{MAX_INDENT_LEVELS},}}\S", text, re.MULTILINE):
        return 0  # every level takes a column at least
    widths = [0]
    for line in text.splitlines():
        body = line.lstrip(" \t")
        if not body or body.startswith("#"):
            continue
        width = len(line.expandtabs(8)) - len(body)
        while width < widths[-1]:
            widths.pop()
        if width > widths[-1]:
            widths.append(width)
    return len(widths) - 1


def crashed(job: tuple[FileTask, str, ExtractOptions], how: str) -> FileOutcome:
    """The outcome of a file whose worker died reading or parsing it (``on_crash`` of Workers.map)."""
    task, _, options = job
    return crashed_outcome(task.path, task.language, how, options)


def crashed_outcome(name: str, language: str, how: str, options: ExtractOptions) -> FileOutcome:
    """A ``parse_crash`` reject naming ``name`` (a file, a text: row) and how its worker died."""
    outcome = FileOutcome([], [], Counter(), parsed=False, functions=0, language=language)
    why = (
        f"its parsing worker died ({how}): a parser crash, or past parse_memory_mb={options.parse_memory_mb}"
    )
    return outcome.refuse(name, "parse_crash", why)


def _walk_py_files(root: str, on_error: Callable[[OSError], None]) -> list[str]:
    return [rel for rel in listing.walk_files(root, on_error) if rel.endswith(".py")]


def _stdlib_tasks(on_error: Callable[[OSError], None]) -> list[FileTask]:
    root = sysconfig.get_paths()["stdlib"]
    real_root = os.path.realpath(root)
    tasks = []
    for rel in _walk_py_files(root, on_error):
        top = rel.split("/")[0]
        if top in STDLIB_SKIPPED or top.startswith("config-"):
            continue
        if "/" in rel and not os.path.exists(os.path.join(root, top, "__init__.py")):
            continue  # a top-level directory that is not a package (data, scripts)
        repo = top.removesuffix(".py")
        url = f"python://stdlib/{rel}"
        tasks.append(
            FileTask(os.path.join(root, rel), repo, rel, url, root=real_root, license=licenses.STDLIB_LICENSE)
        )
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
    package_licenses = licenses.package_licenses()
    for root in site_packages_dirs():
        for rel in _walk_py_files(root, on_error):
            top = rel.split("/")[0]
            if top.endswith((".dist-info", ".egg-info", ".data")) or top.startswith("__editable__"):
                continue
            repo = top.removesuffix(".py")
            url = f"python://site-packages/{rel}"
            where, real_root = os.path.join(root, rel), os.path.realpath(root)
            licence = package_licenses.get(repo, "")
            tasks.append(FileTask(where, repo, rel, url, root=real_root, license=licence))
    return tasks


def _dir_tasks(
    spec: SourceSpec, options: ExtractOptions, on_error: Callable[[OSError], None], ignore: GitIgnore
) -> list[FileTask]:
    """The files of a dir: source in the selected languages, but what ``ignore`` (its .gitignore files)
    excludes; SourceError when there is none."""
    location = spec.location
    repo, listed = listing.dir_files(location, on_error, ignore)
    root = "" if storage.is_s3(location) else os.path.realpath(location)
    places = {rel: where for rel, where, _ in listed}
    licence_of = licenses.dir_licenses(places, lambda rel: _licence_file(places[rel], root))
    tasks, other_extensions = [], Counter()
    for rel, where, url in listed:
        language = languages.language_of_path(rel)
        if language is not None and options.wants(language):
            tasks.append(FileTask(where, repo, rel, url, language, root, licence_of(rel)))
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


def _licence_file(where: str, root: str) -> bytes:
    """A licence file's bytes, read as source files are: a FIFO, a link out of the root or a file over
    MAX_LICENSE_BYTES gives none."""
    try:
        return read_source_file(where, root, licenses.MAX_LICENSE_BYTES)
    except FileRefused:
        return b""


def path_reject(task: FileTask) -> str | None:
    """The path rule a file breaks before it is read (``bad_file_name``, ``test_path``, ``vendored``,
    ``generated``)."""
    if not is_utf8(task.path):
        return "bad_file_name"
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
    chosen = sorted(tasks, key=lambda t: stable_hash(_task_key(t)))[:limit]
    return sorted(chosen, key=lambda t: (t.repo, t.path))


def _task_key(task: FileTask) -> str:
    return shown_name(task.repo + "/" + task.path)


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
        ignore = GitIgnore()
        tasks = _dir_tasks(spec, options, on_walk_error, ignore)
        if ignore.skipped and shard.index == 0:  # every shard lists the tree: the first one counts it
            stats.rejects["gitignored"] += ignore.skipped
    kept = []
    for task in tasks:
        mine = shard.owns(_task_key(task))
        if mine:
            stats.files_seen += 1
            stats.language(task.language).files += 1
        reason = path_reject(task) or (None if options.licenses.permits(task.license) else "license")
        if not reason:
            kept.append(task)
        elif mine:
            stats.rejects[reason] += 1
            stats.language(task.language).rejects[reason] += 1
            if reason in NAMED_REASONS:
                stats.rejected_files.append(f"{shown_name(task.path)}: {reason}")
    sampled = _sample(kept, options.max_files)
    chosen = {id(task) for task in sampled}
    stats.files_skipped_by_limit = sum(
        1 for task in kept if id(task) not in chosen and shard.owns(_task_key(task))
    )
    mine = [(index, task) for index, task in enumerate(sampled) if shard.owns(_task_key(task))]

    jobs = [(task, spec.text, options) for _, task in mine]
    files = [index for index, _ in mine]
    with progress_bar(progress_tag, spec, len(jobs)) as progress:
        if jobs:
            with Workers(min(options.workers, len(jobs)), process_file, options.parse_memory_mb) as workers:
                _collect(workers.map(jobs, crashed), files, result, progress)
    return result


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
        stats.rejected_files.extend(outcome.rejected_files)
        result.add(file_index, outcome.pairs, outcome.corpus)
        if progress is not None:
            progress.update(1, postfix=f"{len(result.pairs)} pairs")
