"""Stage ingest: extract, clean and split (query, code) pairs and the code corpus from sources.

Sources are spec strings (see :mod:`semcode.data.sources`): ``python:stdlib`` and
``python:site-packages`` (the embedded default: this interpreter's own code), ``dir:PATH`` (local or
``s3://``; code in Python, Go, Java, JavaScript, TypeScript, Ruby, PHP, Rust, C and C++, or only
the ``languages`` asked for), ``csn:PATH`` (CodeSearchNet/CodeXGLUE JSONL), ``pairs:PATH`` (query/code JSONL
or a JSON array; ``#valid`` puts a file in one split, ``#query=title+abstract`` maps other field names) and
``text:PATH`` (raw JSONL/Parquet rows with a ``text`` or ``content`` column: The Stack, code-rag-bench) and
``humaneval:`` (evaluation only). Every spec and path, and the layout of every text: file, is checked
before any work starts.

Steps: read every source (counting rejects by reason) -> fail on a source that yields nothing
or whose error share exceeds ``max_reject_share`` -> remove exact and near-duplicate code from the
pairs (across all sources, before splitting, never removing evaluation rows) and from the corpus ->
split the pairs (semcode.data.split: rows whose data gives a split keep it; the rest by repository, file
or function, with a stable hash) -> write. Writes::

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
- Licences (semcode.data.licenses): every row carries its SPDX ``license``; ``allow_licenses`` /
  ``deny_licenses`` drop what they refuse as it is read (the reject ``license``: a rule, not bad input; a
  source whose every row is refused is a warning), and the manifest's ``licenses`` counts the training
  pairs and corpus rows per licence after deduplication (the model card's table).
- ``max_files_per_source`` picks files by a stable hash of their path, so a small sample still
  spreads over many packages (and the split by package still has units to split).

Sharded (``shards`` > 1; the pipeline's ``ingest_shards``): :func:`run_shard` reads shard I of N of every
source (files split by a stable hash of their path) and computes the MinHash signatures of its rows,
the costly half of near-duplicate detection; it writes ``{pairs,corpus,eval}.parquet`` (PAIR_SCHEMA +
``source_index``, ``file_index``, ``minhash``) and ``shard.json``. :func:`merge` takes shards 0..N-1
(refusing a missing one or one made with another config), puts the rows in the order one read gives,
sums the per-source stats (and only then fails a source that gave nothing), and runs steps 2-4 once
over everything with the shards' signatures: exact and near duplicates are found across shards, and the
output (pairs, corpus, eval, manifest but timings) is the same as one ``run`` on the same sources. The
manifest's ``fan_out`` holds each shard's seconds and rows; ``seconds`` is the slowest shard plus the
merge (the wall time when the shards run side by side). The merge holds every row in memory, as one
``run`` does: sharding spreads the reading, extraction and signing, not the final pass.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from dataclasses import field as field_factory
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semcode import config as cfg
from semcode import storage
from semcode.data import clean, licenses
from semcode.data.pairs import COLUMNS, PAIR_SCHEMA, SPLITS, normalise_row, write_shards
from semcode.data.sources import read_source
from semcode.data.sources.jsonl import check_fields
from semcode.data.sources.listing import walk_files
from semcode.data.sources.rows import WHOLE, Shard, SourceResult, SourceStats
from semcode.data.sources.spec import SourceError, SourceSpec, check_exists, parse_spec
from semcode.data.sources.text import check_layout
from semcode.data.split import SplitResult, assign_split, split_rows, unit_of
from semcode.progress import log
from semcode.stages.ingest_config import IngestConfig

TAG = "ingest"
MANIFEST_NAME = "manifest.json"
SHARD_MANIFEST_NAME = "shard.json"
MAX_REPO_NAMES = 1000  # repository names listed per split in the manifest; counts are always complete
PRECHECK_MAX_FILES = 5000  # local dir: sources this small are read once before a run to refuse it early


class IngestError(ValueError):
    """The sources gave nothing usable, or too much bad input; the message names the source."""


class TooFewPairs(IngestError):
    """The sources hold fewer doc-commented functions than min_pairs: searchable (semcode index), not trainable.
    ``sources``: the ones to index instead (evaluation suites left out)."""

    def __init__(self, message: str, sources: tuple[str, ...] | list[str]) -> None:
        super().__init__(message)
        self.sources = [spec for spec in sources if not parse_spec(spec).eval_only]


def check_sources(config: IngestConfig, shard: Shard = WHOLE) -> list[SourceSpec]:
    """Parse every spec, check every path exists and the layout of every text: file ``shard`` reads
    (its text column, see sources.text.check_layout), before any work; IngestError names the source."""
    specs = []
    for text in config.sources:
        try:
            spec = parse_spec(text)
            check_exists(spec)
            check_layout(spec, shard)
            check_fields(spec, shard)  # the fields a pairs: mapping names, in every file
        except SourceError as error:
            raise IngestError(str(error)) from None
        specs.append(spec)
    if all(spec.eval_only for spec in specs):
        raise IngestError(
            f"sources {list(config.sources)} are evaluation-only: add a training source, e.g. python:stdlib"
        )
    return specs


def check_trainable(config: IngestConfig) -> None:
    """Before any other work of a run: when every training source is a local dir: (PRECHECK_MAX_FILES files
    at most), read them as ingest will and raise IngestError, in one line, when they hold fewer functions
    with a doc comment than min_pairs, offering the index without training. Other or bigger sources are
    left to ingest, whose own check (after deduplication) says the same once they are read."""
    training = [spec for spec in map(parse_spec, config.sources) if not spec.eval_only]
    local_dirs = all(spec.kind == "dir" and not storage.is_s3(spec.location) for spec in training)
    if not config.min_pairs or not training or not local_dirs:
        return
    if sum(len(walk_files(spec.location, lambda error: None)) for spec in training) > PRECHECK_MAX_FILES:
        return
    try:
        pairs = sum(len(read_source(spec, config.extract_options()).pairs) for spec in training)
    except SourceError:  # e.g. no file of the selected languages: ingest says so, by name
        return
    if pairs < config.min_pairs:
        raise TooFewPairs(
            f"{' '.join(spec.text for spec in training)}: {pairs} function{'s' if pairs != 1 else ''} with a "
            f"doc comment, training needs at least min_pairs={config.min_pairs}; search this code without "
            f"training: {index_command(config.sources)}",
            config.sources,
        )


def check_result(stats: SourceStats, max_reject_share: float) -> list[str]:
    """Raise IngestError for a source that gave nothing or too much bad input; return warnings."""
    seen = f"{stats.files_seen} files" + (f", {stats.records_seen} records" if stats.records_seen else "")
    refused = stats.rejects["license"]
    if refused and not stats.pairs and not stats.corpus_rows and not stats.eval_rows:
        return [
            f"source '{stats.spec}': every row's licence is refused by allow/deny_licenses ({refused} rejects)"
        ]
    if not stats.pairs and not stats.corpus_rows and not stats.eval_rows:
        raise IngestError(
            f"source '{stats.spec}' yielded no pairs: {seen}, rejected ({stats.rejects_text()})"
        )
    if stats.error_share > max_reject_share:
        raise IngestError(
            f"source '{stats.spec}': {stats.errors} of {stats.error_units} inputs are bad "
            f"({stats.error_share:.0%} > max_reject_share {max_reject_share:.0%}); rejects: {stats.rejects_text()}"
        )
    if not stats.pairs and not stats.eval_rows:
        return [f"source '{stats.spec}' yielded corpus rows but no pairs ({stats.rejects_text()})"]
    return []


def _clear_shards(directory: Path) -> None:
    """Remove part-*.parquet left by an earlier run, so stale shards never mix with new ones."""
    for stale in directory.glob("part-*.parquet"):
        stale.unlink()


def _write(rows: list[dict], directory: Path, rows_per_shard: int) -> int:
    with storage.disk_space_errors(directory):  # a full disk names the folder it could not write
        _clear_shards(directory)
        return len(write_shards(rows, directory, rows_per_shard=rows_per_shard))


def _write_manifest(path: Path, manifest: dict) -> None:
    with storage.disk_space_errors(path):
        path.write_text(json.dumps(manifest, indent=2) + "\n")


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


@dataclass
class Gathered:
    """What reading the sources gave (all of them, or one shard's share), before deduplication.

    ``*_order`` is each row's (source position in ``config.sources``, file position in that source's
    whole file list): sorting the shards' rows by it, stably, gives the order one unsharded read gives,
    which is what makes the greedy deduplication (first occurrence kept) come out the same.
    """

    pairs: list[dict] = field_factory(default_factory=list)
    corpus: list[dict] = field_factory(default_factory=list)
    eval_rows: list[dict] = field_factory(default_factory=list)
    pair_order: list[tuple[int, int]] = field_factory(default_factory=list)
    corpus_order: list[tuple[int, int]] = field_factory(default_factory=list)
    eval_order: list[tuple[int, int]] = field_factory(default_factory=list)
    stats: dict[str, SourceStats] = field_factory(
        default_factory=dict
    )  # spec -> its stats, in config.sources order

    def add(self, source_index: int, result: SourceResult) -> None:
        for rows, order, new_rows, files in (
            (self.pairs, self.pair_order, result.pairs, result.pair_files),
            (self.corpus, self.corpus_order, result.corpus, result.corpus_files),
            (self.eval_rows, self.eval_order, result.eval_rows, result.eval_files),
        ):
            rows.extend(new_rows)
            order.extend((source_index, file_index) for file_index in files)


def read_sources(
    config: IngestConfig, specs: list[SourceSpec], shard: Shard = WHOLE, check: bool = True
) -> Gathered:
    """Read every source (``shard``'s share of each); with ``check`` fail on a source that yields nothing
    or too much bad input as soon as it is read (a shard's share can be empty: shards are checked merged)."""
    options = config.extract_options()
    gathered = Gathered()
    for source_index, spec in enumerate(specs):
        try:
            result = read_source(spec, options, progress_tag=TAG, shard=shard)
        except SourceError as error:  # a dir: without a file of the selected languages
            raise IngestError(str(error)) from None
        stats = result.stats
        log(
            TAG,
            f"{spec.text}{shard_label(shard)}: {stats.files_seen} files, {stats.functions_found} functions, "
            f"{stats.pairs + stats.eval_rows} pairs, {stats.corpus_rows} corpus rows in {stats.seconds:.1f}s",
        )
        if stats.rejected_files:  # links out, FIFOs, devices, bad names, crashes: named, not just counted
            named = sorted(stats.rejected_files)
            more = f"; {len(named) - 3} more in {MANIFEST_NAME}" if len(named) > 3 else ""
            log(TAG, f"{spec.text}: skipped {len(named)} files: {'; '.join(named[:3])}{more}")
        if check:
            check_result(stats, config.max_reject_share)
        gathered.stats[spec.text] = stats
        gathered.add(source_index, result)
    return gathered


def shard_label(shard: Shard) -> str:
    return f" (shard {shard.index} of {shard.count})" if shard.count > 1 else ""


@dataclass
class Signatures:
    """MinHash signatures computed beforehand (by the shards), row for row with Gathered's lists."""

    pairs: np.ndarray
    corpus: np.ndarray | None  # None when corpus_near_dup is off: the corpus needs exact dedup only
    eval_rows: np.ndarray


def _eval_suites(specs: list[SourceSpec], gathered: Gathered) -> dict[str, list[dict]]:
    """The evaluation rows by suite (the kind of the source that gave them: ``humaneval``)."""
    suites: dict[str, list[dict]] = {}
    for row, (source_index, _) in zip(gathered.eval_rows, gathered.eval_order, strict=True):
        suites.setdefault(specs[source_index].kind, []).append(row)
    return suites


def _deduplicate(
    config: IngestConfig, gathered: Gathered, signatures: Signatures | None
) -> tuple[list[dict], list[dict], dict]:
    """Step 2: the pairs and corpus rows left after deduplication, and the manifest's ``dedup`` block.

    Pairs are deduplicated across all sources (evaluation rows are the reference, never removed), and
    the corpus. With two or more workers the corpus (the larger; its MinHash sketches, about 0.07 ms a row
    when not given, are most of the cost) is deduplicated in a spawned process while this one does the
    pairs. Fewer than ``min_pairs`` pairs left is an IngestError.
    """
    pairs, corpus = gathered.pairs, gathered.corpus
    corpus_settings = dict(
        near=config.corpus_near_dup,
        threshold=config.near_dup_threshold,
        num_perm=config.num_perm,
        signatures=signatures.corpus if signatures is not None else None,
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
            reference=[row["code"] for row in gathered.eval_rows],
            signatures=signatures.pairs if signatures is not None else None,
            reference_signatures=signatures.eval_rows if signatures is not None else None,
        )
        if corpus_job is None:
            corpus_dedup = clean.deduplicate(corpus_codes, **corpus_settings)
        else:
            corpus_dedup = corpus_job.result()
    pairs = [row for row, keep in zip(pairs, pair_dedup.keep, strict=True) if keep]
    corpus = [row for row, keep in zip(corpus, corpus_dedup.keep, strict=True) if keep]
    if len(pairs) < config.min_pairs:
        removed = len(pair_dedup.keep) - len(pairs)
        raise TooFewPairs(
            f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''} left after deduplication of sources "
            f"{list(config.sources)} ({removed} of {len(pair_dedup.keep)} were duplicates); training needs at "
            f"least min_pairs={config.min_pairs} (functions with doc comments): give more or other code, or "
            f"search this code without training: {index_command(config.sources)}",
            config.sources,
        )
    return pairs, corpus, {"pairs": pair_dedup.summary(), "corpus": corpus_dedup.summary()}


def index_command(sources: tuple[str, ...] | list[str]) -> str:
    """The command that makes ``sources`` searchable without training (the zero-shot encoder, no pairs)."""
    given = " ".join(f"--source {shlex.quote(spec)}" for spec in sources if not spec.startswith("humaneval"))
    return f"semcode index --encoder minilm {given} --out ./code-index"


def _split(config: IngestConfig, pairs: list[dict], corpus: list[dict]) -> SplitResult:
    """Step 3: split the pairs (semcode.data.split); corpus rows carry their unit's split too."""
    try:
        split = split_rows(pairs, ratios=config.ratios, seed=config.seed, unit=config.split_unit)
    except ValueError as error:
        raise IngestError(str(error)) from None
    assigned = {unit_of(row, split.unit): row["split"] for row in pairs}
    for row in corpus:  # a row whose source gave its split (pairs:, csn:) has it already
        key = unit_of(row, split.unit)
        row["split"] = row.get("split") or assigned.get(key) or assign_split(key, config.seed, config.ratios)
    if any(split.given.values()):
        given = ", ".join(f"{name} {count}" for name, count in split.given.items() if count)
        log(TAG, f"pairs in the split their data gives (a split field, a #SPLIT source): {given}")
    return split


def _split_manifest(config: IngestConfig, split: SplitResult, corpus: list[dict]) -> dict:
    """The manifest's ``split`` block: unit, seed, ratios and each split's rows, units and repositories."""
    return {
        "unit": split.unit,
        "seed": config.seed,
        "ratios": dict(zip(SPLITS, config.ratios, strict=True)),
        "sizes": split.sizes,
        "units": split.units,
        "given": split.given,  # pairs whose split their data gave (a split field, a #SPLIT source)
        "by_rank": split.by_rank,  # the hash left a split empty: units split by the rank of their hash
        "repos": {name: len(names) for name, names in split.repos.items()},
        "repo_names": {name: names[:MAX_REPO_NAMES] for name, names in split.repos.items()},
        "corpus_sizes": {name: sum(1 for r in corpus if r["split"] == name) for name in SPLITS},
    }


def _write_rows(
    config: IngestConfig, out: Path, pairs: list[dict], corpus: list[dict], suites: dict[str, list[dict]]
) -> tuple[dict[str, int], dict]:
    """Step 4: write the pairs per split, the corpus and each evaluation suite; (shards written per
    folder, the manifest's ``eval`` block)."""
    shards: dict[str, int] = {}
    for name in SPLITS:
        shards[f"pairs/{name}"] = _write(
            [r for r in pairs if r["split"] == name], out / "pairs" / name, config.rows_per_shard
        )
    shards["corpus"] = _write(corpus, out / "corpus", config.rows_per_shard)
    eval_manifest = {}
    for stale_suite in (out / "eval").glob("*"):  # suites of an earlier run that this one lacks
        _clear_shards(stale_suite)
    for suite, rows in suites.items():
        shards[f"eval/{suite}"] = _write(rows, out / "eval" / suite, config.rows_per_shard)
        eval_manifest[suite] = {"rows": len(rows), "dir": f"eval/{suite}"}
    return shards, eval_manifest


def finish(
    config: IngestConfig,
    specs: list[SourceSpec],
    gathered: Gathered,
    out: Path,
    *,
    start: float,
    cpu_start: float,
    signatures: Signatures | None = None,
    extra: dict | None = None,
    seconds_before: float = 0.0,
    cpu_seconds_before: float = 0.0,
) -> dict:
    """Deduplicate, split and write what was read (steps 2-4 of the module docstring); the manifest."""
    source_stats = {text: stats.to_dict() for text, stats in gathered.stats.items()}
    warnings = [w for stats in gathered.stats.values() for w in check_result(stats, config.max_reject_share)]
    suites = _eval_suites(specs, gathered)
    pairs, corpus, dedup = _deduplicate(config, gathered, signatures)  # 2. deduplicate
    split = _split(config, pairs, corpus)  # 3. split
    warnings += split.warnings
    shards, eval_manifest = _write_rows(config, out, pairs, corpus, suites)  # 4. write

    seconds = seconds_before + time.perf_counter() - start
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
            "eval_rows": len(gathered.eval_rows),
        },
        "languages": _language_totals(source_stats),
        "licenses": {  # rows per licence after deduplication ("unknown": none found), what the model card lists
            "train_pairs": licenses.counts(row for row in pairs if row["split"] == "train"),
            "corpus": licenses.counts(corpus),
            "allow": list(config.allow_licenses),
            "deny": list(config.deny_licenses),
        },
        "dedup": dedup,
        "split": _split_manifest(config, split, corpus),
        "eval": eval_manifest,
        "shards": shards,
        "warnings": warnings,
        "seconds": round(seconds, 2),
        # CPU time of this process (parsing workers not included): wall time on a shared machine lies
        "cpu_seconds": round(cpu_seconds_before + time.process_time() - cpu_start, 2),
        "throughput": {
            "files_per_s": round(files_seen / seconds, 1) if seconds > 0 else 0.0,
            "pairs_per_s": round(len(pairs) / seconds, 1) if seconds > 0 else 0.0,
        },
        **(extra or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out / MANIFEST_NAME, manifest)
    cfg.save_resolved(config, out)
    for warning in warnings:
        log(TAG, f"warning: {warning}")
    log(
        TAG,
        f"{len(pairs)} pairs (train {split.sizes['train']}, valid {split.sizes['valid']}, "
        f"test {split.sizes['test']}), {len(corpus)} corpus rows in {seconds:.1f}s -> {out}",
    )
    return manifest


def _output_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IngestError(f"output {out} exists and is not a directory")
    return out


@storage.atomic_stage
def run(config: IngestConfig, out_dir: str | Path) -> dict:
    """Ingest ``config.sources`` into ``out_dir``; returns the manifest (also written as manifest.json).

    With ``config.shards`` > 1: every shard (:func:`run_shard`) one after another, then :func:`merge`:
    what the pipeline's fan-out does, in this process; the output is the same as with one shard.
    """
    config.validate()
    if config.shards > 1:
        check_sources(config)  # every path and layout before the first shard starts
        with tempfile.TemporaryDirectory(prefix="semcode-ingest-shards-") as scratch:
            dirs = [Path(scratch) / f"shard-{index:05d}" for index in range(config.shards)]
            for index, directory in enumerate(dirs):
                run_shard(config, index, directory)
            return merge(config, dirs, out_dir)
    specs = check_sources(config)
    out = _output_dir(out_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    gathered = read_sources(config, specs)  # 1. read every source, each checked as it is read
    return finish(config, specs, gathered, out, start=start, cpu_start=cpu_start)


# --------------------------------------------------------------------------------------------
# Sharded ingest: run_shard for each of config.shards shards (side by side), then one merge


def shard_indices(shards: int) -> list[int]:
    """``[0, ..., shards - 1]``: what the pipeline's ParallelFor iterates over."""
    if shards < 1:
        raise IngestError(f"shards must be >= 1, got {shards}")
    return list(range(shards))


def _shard_schema(num_perm: int) -> pa.Schema:
    return (
        PAIR_SCHEMA.append(pa.field("source_index", pa.int32()))
        .append(pa.field("file_index", pa.int32()))
        .append(pa.field("minhash", pa.list_(pa.uint32(), num_perm)))
    )


def _write_shard_rows(
    path: Path,
    rows: list[dict],
    order: list[tuple[int, int]],
    signatures: np.ndarray | None,
    num_perm: int,
    rows_per_chunk: int,
) -> None:
    """One shard's rows with their order keys and MinHash signatures (null when not computed)."""
    schema = _shard_schema(num_perm)
    with storage.disk_space_errors(path), pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for begin in range(0, max(len(rows), 1), rows_per_chunk):
            chunk = rows[begin : begin + rows_per_chunk]
            table = pa.Table.from_pylist([normalise_row(row) for row in chunk], schema=PAIR_SCHEMA)
            keys = order[begin : begin + rows_per_chunk]
            if signatures is None:
                minhash = pa.nulls(len(chunk), schema.field("minhash").type)
            else:
                values = pa.array(signatures[begin : begin + len(chunk)].reshape(-1), pa.uint32())
                minhash = pa.FixedSizeListArray.from_arrays(values, num_perm)
            table = (
                table.append_column(schema.field("source_index"), pa.array([k[0] for k in keys], pa.int32()))
                .append_column(schema.field("file_index"), pa.array([k[1] for k in keys], pa.int32()))
                .append_column(schema.field("minhash"), minhash)
            )
            writer.write_table(table)


@storage.atomic_stage
def run_shard(config: IngestConfig, shard: int, out_dir: str | Path) -> dict:
    """Read shard ``shard`` of ``config.shards`` of every source and compute its rows' MinHash signatures;
    writes ``out_dir/{pairs,corpus,eval}.parquet`` (rows + order keys + signatures) and ``shard.json``
    (the shard, the config, the per-source stats). Nothing is deduplicated or split: :func:`merge` does."""
    config.validate()
    try:
        part = Shard(shard, config.shards)
    except ValueError as error:
        raise IngestError(str(error)) from None
    specs = check_sources(config, part)
    out = _output_dir(out_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    gathered = read_sources(config, specs, part, check=False)

    # The costly half of near-duplicate detection, here where the work is spread: one sketch per distinct
    # code of the pairs and evaluation rows (always near-deduplicated) and of the corpus when asked.
    codes = [row["code"] for row in gathered.pairs + gathered.eval_rows]
    if config.corpus_near_dup:
        codes += [row["code"] for row in gathered.corpus]
    log(TAG, f"MinHash signatures of {len(codes)} rows{shard_label(part)}")
    computed = clean.signatures(codes, num_perm=config.num_perm)
    n_pairs, n_eval = len(gathered.pairs), len(gathered.eval_rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows, order, sketches in (
        ("pairs", gathered.pairs, gathered.pair_order, computed[:n_pairs]),
        ("eval", gathered.eval_rows, gathered.eval_order, computed[n_pairs : n_pairs + n_eval]),
        (
            "corpus",
            gathered.corpus,
            gathered.corpus_order,
            computed[n_pairs + n_eval :] if config.corpus_near_dup else None,
        ),
    ):
        _write_shard_rows(
            out / f"{name}.parquet", rows, order, sketches, config.num_perm, config.rows_per_shard
        )
    manifest = {
        "shard": part.index,
        "shards": part.count,
        "config": cfg.to_dict(config),
        "sources": {text: stats.to_dict() for text, stats in gathered.stats.items()},
        "rows": {"pairs": n_pairs, "corpus": len(gathered.corpus), "eval": n_eval},
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
    }
    _write_manifest(out / SHARD_MANIFEST_NAME, manifest)
    log(
        TAG,
        f"shard {part.index} of {part.count}: {n_pairs} pairs, {len(gathered.corpus)} corpus rows, "
        f"{n_eval} evaluation rows (before deduplication) in {manifest['seconds']:.1f}s -> {out}",
    )
    return manifest


def _read_shard_manifests(config: IngestConfig, shard_dirs: list[Path]) -> list[dict]:
    """The shards' shard.json, in shard order; IngestError unless they are shards 0..N-1 of one ingest
    with this config (``workers`` and ``rows_per_shard`` may differ: they do not change the rows)."""
    if not shard_dirs:
        raise IngestError("merge needs the output directories of the shards, got none")
    manifests = []
    for directory in shard_dirs:
        path = directory / SHARD_MANIFEST_NAME
        if not path.is_file():
            raise IngestError(f"{directory} is not an ingest shard: it has no {SHARD_MANIFEST_NAME}")
        manifests.append(json.loads(path.read_text()))
    counts = {m["shards"] for m in manifests}
    indices = sorted(m["shard"] for m in manifests)
    if counts != {config.shards} or indices != list(range(config.shards)):
        raise IngestError(
            f"merge needs shards 0..{config.shards - 1} of {config.shards} (config shards={config.shards}), "
            f"got shard(s) {indices} of {sorted(counts)}"
        )
    ignored = ("workers", "rows_per_shard")
    mine = {k: v for k, v in cfg.to_dict(config).items() if k not in ignored}
    for manifest, directory in zip(manifests, shard_dirs, strict=True):
        theirs = {k: v for k, v in manifest["config"].items() if k not in ignored}
        if theirs != mine:
            different = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise IngestError(f"shard {directory} was ingested with another config: {different} differ")
    return sorted(manifests, key=lambda m: m["shard"])


def _read_shard_rows(
    shard_dirs: list[Path], name: str, num_perm: int
) -> tuple[list[dict], list[tuple[int, int]], np.ndarray | None]:
    """Every shard's ``name`` rows, in the order one unsharded read gives, with their signatures."""
    table = pa.concat_tables([pq.read_table(directory / f"{name}.parquet") for directory in shard_dirs])
    source_index = table.column("source_index").to_numpy()
    file_index = table.column("file_index").to_numpy()
    order = np.lexsort((file_index, source_index))  # stable: a file's rows keep their order
    table = table.take(pa.array(order))
    minhash = table.column("minhash").combine_chunks()
    sketches = None
    if len(minhash) and minhash.null_count == 0:
        sketches = minhash.flatten().to_numpy().reshape(-1, num_perm)
    elif not len(minhash):
        sketches = np.empty((0, num_perm), dtype=np.uint32)
    keys = list(
        zip(table.column("source_index").to_pylist(), table.column("file_index").to_pylist(), strict=True)
    )
    return table.select(list(COLUMNS)).to_pylist(), keys, sketches


@storage.atomic_stage
def merge(config: IngestConfig, shard_dirs: list[str | Path], out_dir: str | Path) -> dict:
    """Merge the outputs of :func:`run_shard` for shards 0..N-1 into what :func:`run` writes for the same
    sources: the rows in one read's order, the per-source stats summed (and checked), one global exact +
    near-duplicate pass over the shards' signatures, the split, the manifest (with ``fan_out`` timing)."""
    config.validate()
    specs = [parse_spec(text) for text in config.sources]
    out = _output_dir(out_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    dirs = [Path(directory) for directory in shard_dirs]
    manifests = _read_shard_manifests(config, dirs)
    dirs = sorted(dirs, key=lambda d: json.loads((d / SHARD_MANIFEST_NAME).read_text())["shard"])

    gathered = Gathered()
    for spec in specs:
        total = SourceStats(spec.text, spec.kind)
        for manifest in manifests:
            total.add(SourceStats.from_dict(spec.text, manifest["sources"][spec.text]))
        gathered.stats[spec.text] = total
        check_result(total, config.max_reject_share)
    gathered.pairs, gathered.pair_order, pair_sketches = _read_shard_rows(dirs, "pairs", config.num_perm)
    gathered.eval_rows, gathered.eval_order, eval_sketches = _read_shard_rows(dirs, "eval", config.num_perm)
    gathered.corpus, gathered.corpus_order, corpus_sketches = _read_shard_rows(
        dirs, "corpus", config.num_perm
    )
    if pair_sketches is None or eval_sketches is None:
        raise IngestError(f"shards {[str(d) for d in dirs]} lack the MinHash signatures of their pairs")
    signatures = Signatures(pairs=pair_sketches, corpus=corpus_sketches, eval_rows=eval_sketches)
    log(TAG, f"merging {len(dirs)} shards: {len(gathered.pairs)} pairs, {len(gathered.corpus)} corpus rows")
    slowest = max(m["seconds"] for m in manifests)
    fan_out = {
        "shards": len(manifests),
        "shard_seconds": [m["seconds"] for m in manifests],
        "shard_cpu_seconds": [m["cpu_seconds"] for m in manifests],
        "shard_rows": [m["rows"] for m in manifests],
    }
    manifest = finish(
        config,
        specs,
        gathered,
        out,
        start=start,
        cpu_start=cpu_start,
        signatures=signatures,
        extra={"fan_out": fan_out},
        seconds_before=slowest,  # the shards ran side by side: the slowest one is on the critical path
        cpu_seconds_before=sum(m["cpu_seconds"] for m in manifests),
    )
    fan_out["merge_seconds"] = round(time.perf_counter() - start, 2)
    _write_manifest(out / MANIFEST_NAME, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode ingest",
        description="Extract, deduplicate and split (query, code) pairs and a code corpus from sources.",
        epilog=(
            "sources (repeat --source):\n"
            "  python:stdlib  python:site-packages  dir:PATH  csn:PATH  pairs:PATH  text:PATH  humaneval:\n"
            "  PATH may be local or s3://bucket/prefix; text: reads JSONL/Parquet rows with a text or content\n"
            "  column (The Stack, code-rag-bench); pairs: reads JSONL or a JSON array (a .json file named)\n\n"
            "your own files and splits (pairs: and csn:; a row's split field is honoured too):\n"
            "  --source pairs:train.jsonl --source pairs:val.jsonl#valid    # every row of val.jsonl in valid\n"
            "  --source 'pairs:papers.json#query=title+abstract,code=code'  # other field names; joined\n\n"
            "example:\n"
            "  semcode ingest --source python:stdlib --source python:site-packages --out runs/ingest\n"
            "  semcode ingest --source dir:~/src/myrepo --source humaneval: --out runs/ingest\n"
            "  semcode ingest --source dir:~/src/services --languages go,java --out runs/ingest\n"
            "  semcode ingest --source text:s3://data/the-stack-sample/ --out runs/ingest\n"
            "  semcode ingest --source python:site-packages --deny-licenses GPL-3.0-only,AGPL-3.0-only "
            "--out runs/ingest\n\n"
            "sharded (the pipeline's ingest_shards: shards side by side, then one merge):\n"
            "  semcode ingest --source python:stdlib --shards 3 --shard 0 --out runs/shard-0   # ... 1, 2\n"
            "  semcode ingest --source python:stdlib --shards 3 --merge runs/shard-0 runs/shard-1 runs/shard-2 "
            "--out runs/ingest"
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
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument(
        "--shard",
        type=int,
        metavar="I",
        help="read only shard I (0-based) of --shards N into --out: its rows and MinHash signatures, for --merge",
    )
    stage.add_argument(
        "--merge",
        nargs="+",
        metavar="SHARD_DIR",
        help="merge the --out directories of shards 0..N-1 (same sources and --shards N) into --out",
    )
    cfg.add_arguments(parser, IngestConfig)
    for action in parser._actions:  # the config field's own flag: still read, no longer shown
        if "--sources" in action.option_strings:
            action.help = argparse.SUPPRESS
    args = parser.parse_args(argv)
    if args.sources:
        print(
            "semcode ingest: warning: --sources is deprecated and will be removed; use --source KIND:LOCATION "
            "(repeatable), the spelling of every semcode command",
            file=sys.stderr,
        )
    if args.source:  # --source is the documented spelling of the config field `sources`
        args.sources = (args.sources or []) + args.source
    for name in ("languages", "allow_licenses", "deny_licenses"):  # --languages go,java or repeated
        if getattr(args, name):
            setattr(args, name, cfg.comma_list(getattr(args, name)))
    try:
        config = cfg.from_args(IngestConfig, args, section="ingest")
        if args.shard is not None:
            shard = run_shard(config, args.shard, args.out)
            rows = shard["rows"]
            print(
                f"{args.out}: shard {shard['shard']} of {shard['shards']}: {rows['pairs']} pairs, "
                f"{rows['corpus']} corpus rows, {rows['eval']} evaluation rows (before deduplication)"
            )
            return 0
        manifest = merge(config, args.merge, args.out) if args.merge else run(config, args.out)
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
