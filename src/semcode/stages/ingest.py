"""Stage ingest: extract, clean and split (query, code) pairs and the code corpus from sources.

Sources are spec strings (see :mod:`semcode.data.sources`): ``python:stdlib`` and
``python:site-packages`` (the embedded default: this interpreter's own code), ``dir:PATH`` (local or
``s3://``; code in Python, Go, Java, JavaScript, TypeScript, Ruby, PHP, Rust, C and C++, or only
the ``languages`` asked for), ``csn:PATH`` (CodeSearchNet/CodeXGLUE JSONL), ``pairs:PATH`` (query/code JSONL) and
``humaneval:`` (evaluation only). Every spec and path is checked before any work starts.

Steps: read every source (counting rejects by reason) -> fail on a source that yields nothing
or whose error share exceeds ``max_reject_share`` -> remove exact and near-duplicate code from the
pairs (across all sources, before splitting, never removing evaluation rows) and from the corpus ->
split the pairs by repository with a stable hash -> write. Writes::

    out/pairs/{train,valid,test}/part-*.parquet   PAIR_SCHEMA rows (semcode.data.pairs)
    out/corpus/part-*.parquet                     every extracted function, same columns
    out/eval/humaneval/part-*.parquet             evaluation-only suites (only when given)
    out/manifest.json                             per-source counts, rejects, dedup, split, timing
    out/config.json                               the resolved config

Choices:

- Corpus: every function that passes the code rules, with or without docstring; its ``code`` is the
  same text as in the pairs (docstring removed), so the index returns code in the form the encoder
  was trained on; ``query`` is the docstring's first paragraph, or empty. Corpus rows carry the
  split their repository (or file) was assigned, so a consumer can leave test code out. HumanEval is
  not in the corpus.
- Evaluation suites (HumanEval) go to ``eval/<suite>/``, not ``pairs/test``: they are never trained
  on, the pairs' own test split stays a held-out split of the user's data, and evaluate reports
  them as a separate suite. They are never removed as duplicates; instead pair rows that duplicate
  one are removed (``eval_overlap`` in the manifest) so the suite stays unseen.
- The error share that fails a source counts input errors only (unparsable files, bad JSON lines),
  over non-test files for code sources and over lines for JSONL: the CodeSearchNet rules reject
  most functions of a package on purpose, and that is not a sign of bad input.
- ``max_files_per_source`` picks files by a stable hash of their path, so a small sample still
  spreads over many packages (and the split by package still has units to split).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from semcode import config as cfg
from semcode.config import ConfigError, field
from semcode.data import clean
from semcode.data.languages import LANGUAGES, check_languages
from semcode.data.pairs import SPLITS, write_shards
from semcode.data.sources import (
    ExtractOptions,
    SourceError,
    SourceResult,
    SourceSpec,
    check_exists,
    parse_spec,
    read_source,
)
from semcode.data.split import SPLIT_UNITS, assign_split, split_rows, unit_of
from semcode.progress import log

TAG = "ingest"
MANIFEST_NAME = "manifest.json"
MAX_REPO_NAMES = 1000  # repository names listed per split in the manifest; counts are always complete


class IngestError(ValueError):
    """The sources gave nothing usable, or too much bad input; the message names the source."""


@dataclass(frozen=True)
class IngestConfig:
    sources: tuple[str, ...] = field(
        ("python:stdlib", "python:site-packages"),
        "sources as KIND:LOCATION: python:stdlib, python:site-packages, dir:PATH, csn:PATH, "
        "pairs:PATH, humaneval: (PATH local or s3://)",
    )
    train_ratio: float = field(0.8, "share of repositories in the train split")
    valid_ratio: float = field(0.1, "share of repositories in the valid split")
    test_ratio: float = field(0.1, "share of repositories in the test split")
    seed: int = field(0, "seed of the repository hash that assigns splits")
    split_unit: str = field(
        "auto", "split by 'repo', by 'file', or 'auto' (repo; file if a split would be empty)"
    )
    min_docstring_tokens: int = field(3, "a pair needs at least this many word tokens in its query")
    min_code_lines: int = field(3, "skip functions with fewer non-blank lines (from def, docstring removed)")
    max_code_chars: int = field(8000, "skip functions longer than this many characters (0 = no limit)")
    max_file_bytes: int = field(1_000_000, "skip source files bigger than this (generated code)")
    max_line_chars: int = field(
        10_000, "skip source files with a longer line (minified or data): parsing one costs memory unbounded"
    )
    languages: tuple[str, ...] = field(
        (),
        f"read only these languages from dir: and JSONL sources (empty = all: {', '.join(LANGUAGES)}); "
        "python: sources stay Python; on the command line also comma-separated: --languages go,java",
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
        2, "fail when fewer pairs are left after deduplication (contrastive training needs other pairs)"
    )
    rows_per_shard: int = field(50_000, "rows per Parquet shard")
    workers: int = field(
        1,
        "processes that parse files; 2 or more also deduplicate the corpus beside the pairs (spawned; 1 = in this process)",
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
        for name in ("min_docstring_tokens", "min_code_lines", "max_code_chars", "max_files_per_source"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_file_bytes", "max_line_chars", "rows_per_shard", "workers", "min_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            check_languages(self.languages)
        except ValueError as error:
            raise ConfigError(f"languages: {error}") from None
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
            max_file_bytes=self.max_file_bytes,
            max_line_chars=self.max_line_chars,
            max_files=self.max_files_per_source,
            languages=check_languages(self.languages),
            workers=self.workers,
        )


def check_sources(config: IngestConfig) -> list[SourceSpec]:
    """Parse every spec and check every path exists, before any work; IngestError names the source."""
    specs = []
    for text in config.sources:
        try:
            spec = parse_spec(text)
            check_exists(spec)
        except SourceError as error:
            raise IngestError(str(error)) from None
        specs.append(spec)
    if all(spec.eval_only for spec in specs):
        raise IngestError(
            f"sources {list(config.sources)} are evaluation-only: add a training source, e.g. python:stdlib"
        )
    return specs


def check_result(result: SourceResult, max_reject_share: float) -> list[str]:
    """Raise IngestError for a source that gave nothing or too much bad input; return warnings."""
    stats = result.stats
    seen = f"{stats.files_seen} files" + (f", {stats.records_seen} records" if stats.records_seen else "")
    if not result.pairs and not result.corpus and not result.eval_rows:
        raise IngestError(
            f"source '{stats.spec}' yielded no pairs: {seen}, rejected ({stats.rejects_text()})"
        )
    if stats.error_share > max_reject_share:
        raise IngestError(
            f"source '{stats.spec}': {stats.errors} of {stats.error_units} inputs are bad "
            f"({stats.error_share:.0%} > max_reject_share {max_reject_share:.0%}); rejects: {stats.rejects_text()}"
        )
    if not result.pairs and not result.eval_rows:
        return [f"source '{stats.spec}' yielded corpus rows but no pairs ({stats.rejects_text()})"]
    return []


def _clear_shards(directory: Path) -> None:
    """Remove part-*.parquet left by an earlier run, so stale shards never mix with new ones."""
    for stale in directory.glob("part-*.parquet"):
        stale.unlink()


def _write(rows: list[dict], directory: Path, rows_per_shard: int) -> int:
    _clear_shards(directory)
    return len(write_shards(rows, directory, rows_per_shard=rows_per_shard))


def _language_totals(source_stats: dict[str, dict]) -> dict[str, dict]:
    """Files, functions, pairs (before deduplication) and rejects per language, over all sources."""
    totals: dict[str, dict] = {}
    for stats in source_stats.values():
        for language, counts in stats["languages"].items():
            total = totals.setdefault(language, {"files": 0, "functions": 0, "pairs": 0, "rejects": {}})
            for key in ("files", "functions", "pairs"):
                total[key] += counts[key]
            for reason, count in counts["rejects"].items():
                total["rejects"][reason] = total["rejects"].get(reason, 0) + count
    return {language: totals[language] for language in sorted(totals)}


def run(config: IngestConfig, out_dir: str | Path) -> dict:
    """Ingest ``config.sources`` into ``out_dir``; returns the manifest (also written as manifest.json)."""
    config.validate()
    specs = check_sources(config)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IngestError(f"output {out} exists and is not a directory")
    start = time.perf_counter()
    cpu_start = time.process_time()
    options = config.extract_options()

    # 1. Read every source.
    pairs: list[dict] = []
    corpus: list[dict] = []
    eval_rows: dict[str, list[dict]] = {}
    source_stats: dict[str, dict] = {}
    warnings: list[str] = []
    for spec in specs:
        try:
            result = read_source(spec, options, progress_tag=TAG)
        except SourceError as error:  # a dir: without a file of the selected languages
            raise IngestError(str(error)) from None
        stats = result.stats
        log(
            TAG,
            f"{spec.text}: {stats.files_seen} files, {stats.functions_found} functions, "
            f"{stats.pairs + stats.eval_rows} pairs, {stats.corpus_rows} corpus rows in {stats.seconds:.1f}s",
        )
        warnings += check_result(result, config.max_reject_share)
        source_stats[spec.text] = stats.to_dict()
        pairs += result.pairs
        corpus += result.corpus
        if result.eval_rows:
            eval_rows.setdefault(spec.kind, []).extend(result.eval_rows)

    # 2. Deduplicate: pairs across all sources (evaluation rows are the reference, never removed),
    #    and the corpus. With two or more workers the corpus (the larger, about 0.4 ms a row) is
    #    deduplicated in a spawned process while this one does the pairs.
    all_eval = [row for rows in eval_rows.values() for row in rows]
    corpus_settings = dict(
        near=config.corpus_near_dup, threshold=config.near_dup_threshold, num_perm=config.num_perm
    )
    corpus_codes = [row["code"] for row in corpus]
    log(TAG, f"deduplicating {len(corpus)} corpus rows (exact{' + near' if config.corpus_near_dup else ''})")
    with contextlib.ExitStack() as stack:
        corpus_job = None
        if config.workers > 1:
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=1, mp_context=context))
            corpus_job = pool.submit(clean.deduplicate, corpus_codes, **corpus_settings)
        log(TAG, f"deduplicating {len(pairs)} pairs (exact + near, Jaccard >= {config.near_dup_threshold})")
        pair_dedup = clean.deduplicate(
            [row["code"] for row in pairs],
            near=True,
            threshold=config.near_dup_threshold,
            num_perm=config.num_perm,
            reference=[row["code"] for row in all_eval],
        )
        if corpus_job is None:
            corpus_dedup = clean.deduplicate(corpus_codes, **corpus_settings)
        else:
            corpus_dedup = corpus_job.result()
    pairs = [row for row, keep in zip(pairs, pair_dedup.keep, strict=True) if keep]
    corpus = [row for row, keep in zip(corpus, corpus_dedup.keep, strict=True) if keep]
    if len(pairs) < config.min_pairs:
        removed = len(pair_dedup.keep) - len(pairs)
        raise IngestError(
            f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''} left after deduplication of sources "
            f"{list(config.sources)} ({removed} of {len(pair_dedup.keep)} were duplicates); training needs at "
            f"least min_pairs={config.min_pairs}: give more or other code"
        )

    # 3. Split by repository (or file); corpus rows carry their unit's split too.
    try:
        split = split_rows(pairs, ratios=config.ratios, seed=config.seed, unit=config.split_unit)
    except ValueError as error:
        raise IngestError(str(error)) from None
    warnings += split.warnings
    assigned = {unit_of(row, split.unit): row["split"] for row in pairs}
    for row in corpus:
        key = unit_of(row, split.unit)
        row["split"] = assigned.get(key) or assign_split(key, config.seed, config.ratios)

    # 4. Write.
    shards: dict[str, int] = {}
    for name in SPLITS:
        shards[f"pairs/{name}"] = _write(
            [r for r in pairs if r["split"] == name], out / "pairs" / name, config.rows_per_shard
        )
    shards["corpus"] = _write(corpus, out / "corpus", config.rows_per_shard)
    eval_manifest = {}
    for stale_suite in (out / "eval").glob("*"):  # suites of an earlier run that this one lacks
        _clear_shards(stale_suite)
    for suite, rows in eval_rows.items():
        shards[f"eval/{suite}"] = _write(rows, out / "eval" / suite, config.rows_per_shard)
        eval_manifest[suite] = {"rows": len(rows), "dir": f"eval/{suite}"}

    seconds = time.perf_counter() - start
    files_seen = sum(s["files_seen"] for s in source_stats.values())
    manifest = {
        "sources": source_stats,
        "totals": {
            "files_seen": files_seen,
            "files_parsed": sum(s["files_parsed"] for s in source_stats.values()),
            "records_seen": sum(s["records_seen"] for s in source_stats.values()),
            "functions_found": sum(s["functions_found"] for s in source_stats.values()),
            "pairs": len(pairs),
            "corpus_rows": len(corpus),
            "eval_rows": len(all_eval),
        },
        "languages": _language_totals(source_stats),
        "dedup": {"pairs": pair_dedup.summary(), "corpus": corpus_dedup.summary()},
        "split": {
            "unit": split.unit,
            "seed": config.seed,
            "ratios": dict(zip(SPLITS, config.ratios, strict=True)),
            "sizes": split.sizes,
            "units": split.units,
            "repos": {name: len(names) for name, names in split.repos.items()},
            "repo_names": {name: names[:MAX_REPO_NAMES] for name, names in split.repos.items()},
            "corpus_sizes": {name: sum(1 for r in corpus if r["split"] == name) for name in SPLITS},
        },
        "eval": eval_manifest,
        "shards": shards,
        "warnings": warnings,
        "seconds": round(seconds, 2),
        # CPU time of this process (parsing workers not included): wall time on a shared machine lies
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "throughput": {
            "files_per_s": round(files_seen / seconds, 1) if seconds > 0 else 0.0,
            "pairs_per_s": round(len(pairs) / seconds, 1) if seconds > 0 else 0.0,
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    cfg.save_resolved(config, out)
    for warning in warnings:
        log(TAG, f"warning: {warning}")
    log(
        TAG,
        f"{len(pairs)} pairs (train {split.sizes['train']}, valid {split.sizes['valid']}, "
        f"test {split.sizes['test']}), {len(corpus)} corpus rows in {seconds:.1f}s -> {out}",
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode ingest",
        description="Extract, deduplicate and split (query, code) pairs and a code corpus from sources.",
        epilog=(
            "sources (repeat --source):\n"
            "  python:stdlib  python:site-packages  dir:PATH  csn:PATH  pairs:PATH  humaneval:\n"
            "  PATH may be local or s3://bucket/prefix\n\n"
            "example:\n"
            "  semcode ingest --source python:stdlib --source python:site-packages --out runs/ingest\n"
            "  semcode ingest --source dir:~/src/myrepo --source humaneval: --out runs/ingest\n"
            "  semcode ingest --source dir:~/src/services --languages go,java --out runs/ingest"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="SPEC",
        help="a source KIND:LOCATION (repeatable; replaces the default sources)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    cfg.add_arguments(parser, IngestConfig)
    args = parser.parse_args(argv)
    if args.source:  # --source is the documented spelling of the config field `sources`
        args.sources = (args.sources or []) + args.source
    if args.languages:  # --languages go,java as well as --languages go --languages java
        args.languages = cfg.comma_list(args.languages)
    try:
        config = cfg.from_args(IngestConfig, args, section="ingest")
        manifest = run(config, args.out)
    except (*cfg.BAD_INPUT_ERRORS, OSError) as error:  # ConfigError and IngestError are ValueErrors
        return cfg.bad_input("ingest", error)
    sizes = manifest["split"]["sizes"]
    print(
        f"{args.out}: {manifest['totals']['pairs']} pairs (train {sizes['train']}, valid {sizes['valid']}, "
        f"test {sizes['test']}), {manifest['totals']['corpus_rows']} corpus rows"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
