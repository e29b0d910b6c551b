"""Stage ingest's config: the sources, the rules every source is read by, the split and the deduplication.

Its own module beside semcode.stages.ingest (which imports it) so the stage reads as its steps: the typed
frozen config, validated before any work (sources parsed, ratios, languages, the MinHash settings, the
licence lists), and the ExtractOptions every source reader gets from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from semcode.config import ConfigError, field
from semcode.data import clean
from semcode.data.languages import LANGUAGES, check_languages
from semcode.data.licenses import LicenseFilter, check_ids
from semcode.data.sources.rows import ExtractOptions
from semcode.data.sources.spec import SourceError, parse_spec
from semcode.data.split import SPLIT_UNITS


@dataclass(frozen=True)
class IngestConfig:
    sources: tuple[str, ...] = field(
        ("python:stdlib", "python:site-packages"),
        "sources as KIND:LOCATION: python:stdlib, python:site-packages, dir:PATH, csn:PATH, "
        "pairs:PATH (JSONL or a JSON array; #valid: one split, #query=title+abstract: field names), humaneval: "
        "(PATH local or s3://)",
    )
    train_ratio: float = field(0.8, "share of repositories in the train split")
    valid_ratio: float = field(0.1, "share of repositories in the valid split")
    test_ratio: float = field(0.1, "share of repositories in the test split")
    seed: int = field(0, "seed of the repository hash that assigns splits")
    split_unit: str = field(
        "auto",
        "split by 'repo', 'file' or 'function', or 'auto': repo, else file, else function, the coarsest with "
        "enough units (semcode.data.split); rows whose data gives a split (a split field, #valid) keep it",
    )
    min_docstring_tokens: int = field(3, "a pair needs at least this many word tokens in its query")
    min_code_lines: int = field(
        3, "no pair from a function with fewer non-blank lines (from def, docstring removed); still indexed"
    )
    index_all: bool = field(
        True,
        "every definition becomes a corpus (index) row, documented or not, one line or a thousand, dunders "
        "and test-named helpers too; only pairs keep the name and size rules (false: the corpus keeps them too)",
    )
    max_code_chars: int = field(8000, "skip functions longer than this many characters (0 = no limit)")
    max_file_bytes: int = field(1_000_000, "skip source files bigger than this (generated code)")
    max_line_chars: int = field(
        10_000, "skip source files with a longer line (minified or data): parsing one costs memory unbounded"
    )
    parse_memory_mb: int = field(
        1024,
        "memory each file-parsing worker process may take (MB); a file whose parse tree needs more is skipped "
        "as parse_crash, named in the manifest (a 1 MB file takes at most ~200 MB)",
    )
    languages: tuple[str, ...] = field(
        (),
        f"read only these languages from dir: and JSONL sources (empty = all: {', '.join(LANGUAGES)}); "
        "python: sources stay Python; on the command line also comma-separated: --languages go,java",
    )
    allow_licenses: tuple[str, ...] = field(
        (),
        "keep only rows whose licence (semcode.data.licenses: a dir:'s licence file, a package's metadata, a "
        "row's license field) can be met with these SPDX ids, e.g. MIT,Apache-2.0 ('unknown': rows without "
        "one); empty = all; the others are the reject 'license' in the manifest",
    )
    deny_licenses: tuple[str, ...] = field(
        (),
        "drop rows whose licence needs one of these SPDX ids, e.g. GPL-3.0-only,AGPL-3.0-only ('unknown': rows "
        "without one)",
    )
    near_dup_threshold: float = field(
        0.8, "Jaccard similarity (MinHash LSH) at which code is a near duplicate"
    )
    num_perm: int = field(128, "MinHash permutations for near-duplicate detection")
    corpus_near_dup: bool = field(True, "also remove near duplicates from the corpus (exact ones always)")
    max_reject_share: float = field(
        0.5, "fail a source whose share of bad input (files or lines) is above this"
    )
    max_files_per_source: int = field(
        0, "read at most this many files per source, sampled by path hash (0 = all)"
    )
    min_pairs: int = field(
        2,
        "fail when fewer pairs are left after deduplication (contrastive training needs other pairs); 0 = "
        "corpus only: sources without doc comments are fine (an index without training, semcode index)",
    )
    rows_per_shard: int = field(50_000, "rows per Parquet shard")
    shards: int = field(
        1,
        "split every source's files into this many shards by a stable hash of their path; each shard is read "
        "apart (the pipeline: side by side, a dsl.ParallelFor) and one merge deduplicates across all of them: "
        "the output is the same as with 1",
    )
    workers: int = field(
        1,
        "processes that read and parse files (each crash-isolated: a file that kills its worker is skipped, "
        "named); 2 or more also deduplicate the corpus beside the pairs",
    )

    @property
    def ratios(self) -> tuple[float, float, float]:
        return (self.train_ratio, self.valid_ratio, self.test_ratio)

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources is empty: give at least one, e.g. --source python:stdlib")
        for spec in self.sources:
            try:
                parse_spec(spec)
            except SourceError as error:
                raise ConfigError(str(error)) from None
        if any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1.0) > 1e-6 or self.train_ratio <= 0:
            raise ConfigError(
                f"train/valid/test ratios must be >= 0, sum to 1 and train > 0; got {self.ratios}"
            )
        if self.split_unit not in SPLIT_UNITS:
            raise ConfigError(f"split_unit must be one of {list(SPLIT_UNITS)}, got {self.split_unit!r}")
        for name in (
            "min_docstring_tokens",
            "min_code_lines",
            "max_code_chars",
            "max_files_per_source",
            "min_pairs",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "max_file_bytes",
            "max_line_chars",
            "rows_per_shard",
            "workers",
            "shards",
            "parse_memory_mb",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            check_languages(self.languages)
        except ValueError as error:
            raise ConfigError(f"languages: {error}") from None
        try:
            self.license_filter()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ConfigError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.num_perm < 16:
            raise ConfigError(f"num_perm must be >= 16, got {self.num_perm}")
        try:
            clean.make_lsh(self.near_dup_threshold, self.num_perm)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not 0.0 <= self.max_reject_share <= 1.0:
            raise ConfigError(f"max_reject_share must be in [0, 1], got {self.max_reject_share}")

    def extract_options(self) -> ExtractOptions:
        return ExtractOptions(
            min_docstring_tokens=self.min_docstring_tokens,
            min_code_lines=self.min_code_lines,
            max_code_chars=self.max_code_chars,
            index_all=self.index_all,
            max_file_bytes=self.max_file_bytes,
            max_line_chars=self.max_line_chars,
            max_files=self.max_files_per_source,
            languages=check_languages(self.languages),
            workers=self.workers,
            parse_memory_mb=self.parse_memory_mb,
            licenses=self.license_filter(),
        )

    def license_filter(self) -> LicenseFilter:
        """The allow and deny lists, their ids checked (ValueError naming a misspelt one)."""
        return LicenseFilter(
            check_ids(self.allow_licenses, "allow_licenses"), check_ids(self.deny_licenses, "deny_licenses")
        )
