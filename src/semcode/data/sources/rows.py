"""What every source reader shares: the extraction options, the row, the stats and result of a read, shards.

Sharding (:class:`Shard`): every reader takes a shard and reads only the files whose stable path hash
(crc32) falls in it, after ``max_files`` sampling over the whole list; each row comes with its file's
position in the whole list (``SourceResult.*_files``) and stats count only the shard's files, so the
shards' rows sorted by (source, file) and their stats summed are one unsharded read's. The unit is the
file: a source of one big file is read by one shard.

Reject reasons counted per source. Errors (bad input, counted toward ``max_reject_share``):
``binary``, ``decode_error``, ``syntax_error``, ``unreadable`` (per file), ``malformed_json``,
``missing_field``, ``wrong_type`` (a required field that is not a string: ``"code": 42``; per JSONL line). Everything else is a rule doing its job (``test_path``,
``test_name``, ``dunder``, ``too_short``, ``too_long``, ``too_large``, ``long_line``, ``empty_body``,
``no_docstring``, ``short_docstring``, ``other_language``, ``vendored``, ``generated``, ``gitignored``,
``license``: a licence that ingest's allow/deny lists refuse, semcode.data.licenses) and is never an error:
a package can legitimately lose most functions to the rules.

Files refused before they are read or parsed are also named in ``rejected_files`` (``path: reason (why)``,
sorted, the first MAX_NAMED_REJECTS): ``bad_file_name`` (not UTF-8; shown with ``\\xNN`` escapes),
``outside_root`` (a link that leaves the source's root), ``not_regular`` (a FIFO, socket or device),
``too_deep`` (nesting past what the parser survives): rules, never errors; and ``parse_crash`` (the
worker parsing it died: a grammar's crash, or past its memory cap), an error like ``syntax_error``.
"""

from __future__ import annotations

import contextlib
import zlib
from collections import Counter
from dataclasses import dataclass, field

from semcode.data.licenses import LicenseFilter
from semcode.data.sources.spec import SourceSpec
from semcode.progress import Progress, log

ERROR_REASONS = (
    "binary",
    "decode_error",
    "syntax_error",
    "unreadable",
    "malformed_json",
    "missing_field",
    "wrong_type",
    "parse_crash",
)
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
# Decided by the path (or a header, or what the path names), not errors.
PATH_RULE_REASONS = (
    "test_path",
    "vendored",
    "generated",
    "bad_file_name",
    "outside_root",
    "not_regular",
    "license",
)
NAMED_REASONS = ("bad_file_name", "outside_root", "not_regular", "too_deep", "parse_crash")
MAX_NAMED_REJECTS = 100  # files named in the manifest per source; the counts are always complete


@dataclass(frozen=True)
class ExtractOptions:
    """The rules applied to every source (a subset of IngestConfig)."""

    min_docstring_tokens: int = 3
    min_code_lines: int = 3
    max_code_chars: int = 8000
    index_all: bool = True  # the corpus gets every definition; the name and size rules apply to pairs only
    max_file_bytes: int = 1_000_000
    max_line_chars: int = 10_000
    max_files: int = 0  # 0 = all
    languages: tuple[str, ...] = ()  # names from languages.LANGUAGES; empty = all
    workers: int = 1
    parse_memory_mb: int = 1024  # each parsing worker's cap (semcode.data.sources.workers)
    licenses: LicenseFilter = LicenseFilter()  # the licences kept (default: all)

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
    rejected_files: list[str] = field(default_factory=list)  # "path: reason (why)" of NAMED_REASONS

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
        self.rejected_files.extend(other.rejected_files)

    @classmethod
    def from_dict(cls, spec: str, data: dict) -> SourceStats:
        """The stats :meth:`to_dict` wrote (the derived shares and rates are computed again)."""
        stats = cls(spec, data["kind"], **{name: int(data[name]) for name in COUNT_FIELDS})
        stats.rejects = Counter(data["rejects"])
        stats.seconds = float(data["seconds"])
        stats.rejected_files = list(data.get("rejected_files", []))
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
            "rejected_files": sorted(self.rejected_files)[:MAX_NAMED_REJECTS],
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
        return self.count == 1 or stable_hash(key) % self.count == self.index


WHOLE = Shard()


def new_row(spec_text: str, **values: object) -> dict:
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
        "license": "",  # SPDX expression, "" when none was found (semcode.data.licenses)
    }
    row.update(values)
    return row


def stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def pick(row: dict, *names: str) -> object:
    for name in names:
        value = row.get(name)
        if value not in (None, "", []):
            return value
    return None


def as_text(value: object) -> str:
    return value if isinstance(value, str) else ""


def required_texts(record: dict, *fields: tuple[str, ...]) -> tuple[list[str], str | None]:
    """The text of each required field (each given by its accepted names), and the reject reason when one
    is absent or blank (``missing_field``) or holds something else than a string (``wrong_type``)."""
    texts = []
    for names in fields:
        value = pick(record, *names)
        if value is not None and not isinstance(value, str):
            return [], "wrong_type"
        if value is None or not value.strip():
            return [], "missing_field"
        texts.append(value)
    return texts, None


def progress_bar(tag: str | None, spec: SourceSpec, total: int) -> Progress | contextlib.nullcontext:
    if tag is None:
        return contextlib.nullcontext()
    log(tag, f"{spec.text}: {total} files")
    return Progress(tag, total=total, unit="files")
