"""Stage build_index: embed the corpus with the encoder's code tower (or take it embedded in shards) and
build a FAISS index over it.

Two ways in, one index out. ``--corpus``: this stage embeds the corpus itself, in one pod (below).
``--embedded``: the corpus was embedded in shards by semcode.stages.embed_corpus (the pipeline runs one
pod per shard on the GPU pool, a dsl.ParallelFor); this stage checks the shards are every shard of one
embedding run (numbers 0..N-1 once each, one dimension, encoder, runtime and row selection, the one this
config asks for; any other set is an error naming the shard), concatenates their metadata in shard order,
trains the index once on a seeded sample of all their vectors (the same rows a single array's sample
takes) and adds every shard in batches (index_shards). The shards are contiguous runs of the very rows
the one-pod way embeds, so both give the same ids, metadata, coverage and recall queries; only the
vectors' batching differs. With ``ivf_on_disk`` an IVF index keeps its inverted lists in
``out/index.ivfdata`` (faiss.contrib.ondisk: each shard added to a copy of the trained index, the copies
merged into one OnDiskInvertedLists file), which search maps rather than reads; for indexes beyond the
pod's memory.

The rest describes the one-pod way; from the index on, both are the same (finish_index).

Reads ``corpus/part-*.parquet`` (the ingest corpus) shard by shard in chunks: every row, or with
``max_corpus`` a seeded sample of that many rows spread over the ``source`` column (the ``whole_sources``
whole, then each other source an even share of the rest, a source smaller than its share whole; never a prefix; the row numbers are chosen from the source
column first, then only the row groups holding them are read). Embeds each chunk's
``code`` and appends the vectors to a memory-mapped file in a temporary directory (under $TMPDIR: N x dim
x 4 bytes, 1.5 GB per million vectors at dim 384), so memory does not grow with the corpus. Then builds the index the corpus size calls for (semcode.index.choose_factory:
exact "Flat" up to ``flat_max`` vectors, "HNSW{m},Flat" up to ``hnsw_max``, IVF-PQ re-ranked with the
exact vectors up to ``exact_refine_max``, then OPQ + IVF-PQ with an HNSW coarse quantizer re-ranked with
8-bit vectors (docs/capacity.md); ``factory`` overrides), on the GPU when FAISS has one. Writes::

    out/index.faiss          faiss.write_index; FAISS id i = row i of index_meta.parquet
    out/index.ivfdata        with ivf_on_disk only: the inverted lists (semcode.index.load_index maps them)
    out/index_meta.parquet   semcode.contract.META_COLUMNS of every indexed function, in id order: code,
                             language, repo, path, start_line (from the url's #L<start>, or the
                             corpus' own start_line column when it has one), func_name, url,
                             signature ("" for a corpus without one), doc (the corpus' query)
    out/bm25/                BM25 over the same rows' code (bm25s' own format; semcode.evaluation.BM25Index,
                             identifiers split): the lexical side of hybrid search
    out/metrics.json         factory, index type, ntotal, dim, recall@10 against exact search, search
                             latency p50/p99 and queries/s (one query per call and batched), embedding and
                             index seconds, index size on disk and in memory, and ``coverage``:
                             {"indexed", "corpus_rows", "sampled_by", "per_source": {source:
                             [indexed, total]}} ("all", or "seeded sample (seed S), even share per source"; with
                             ``whole_sources``: "...: python:stdlib whole, an even share per other source"),
                             ``embedded_in_shards`` (N, or null when embedded here) and ``ivf_on_disk``
    out/config.json          the resolved config

Every output is written through a temporary name (``out/.index.faiss.partial``, ...) and renamed when
complete (semcode.storage.atomic_output), so a full disk or a kill leaves no truncated index.faiss or
index_meta.parquet behind; a full disk is an error naming the path that ran out of space. The
embedding memmap's space is reserved up front (a memmap that hits a full disk dies of SIGBUS instead).

Recall and latency use real queries, embedded with the query tower: the ``query`` column of
``pairs/test`` when ``--pairs`` is given, else a seeded sample of the corpus rows' own queries (their
docstrings). Recall@10 = |ANN top 10 ∩ exact top 10| / 10, averaged; the latency is the FAISS search
alone (the query encoder's time is measured by export_onnx). Rows whose code is empty are skipped.

``run`` loads the encoder and hands an embedding callable to ``index_corpus``, which does the rest and
works with any ``EmbedFn`` (the tests use that).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semcode import config as cfg
from semcode import index as faiss_index
from semcode import storage
from semcode.config import ConfigError, field
from semcode.contract import IVFDATA_FILE, LEXICAL_DIR, META_COLUMNS, ONNX_HELP, RUNTIME_HELP
from semcode.data.pairs import PAIR_SCHEMA, read_split
from semcode.embed import EmbedFn, check_runtime
from semcode.progress import Progress, log

TAG = "build-index"
INDEX_FILE = "index.faiss"
META_FILE = "index_meta.parquet"
# One embedded shard of the corpus (semcode.stages.embed_corpus writes it, index_shards reads it):
SHARD_VECTORS_FILE = "embeddings.npy"  # float32 [count, dim], row i = row i of the shard's META_FILE
SHARD_MANIFEST_FILE = "manifest.json"  # shard, shards, dim, count, encoder, the selection it belongs to
START_LINE = "start_line"  # not a corpus column (yet): parsed from the url's #L<start> fragment
SIGNATURE = "signature"  # a corpus column since signatures were extracted; "" for older corpora
DOC = "doc"  # the corpus' query column: the doc comment's first paragraph, on one line
SOURCE = "source"  # the source spec a row came from: what a max_corpus sample is spread over
META_SCHEMA = pa.schema(
    [
        pa.field(name, pa.int32() if name == START_LINE else pa.string())
        if name in (START_LINE, DOC)
        else PAIR_SCHEMA.field(name)
        for name in META_COLUMNS
    ]
)
# What a corpus shard must have; start_line, signature and source are read when a shard has them.
CORPUS_COLUMNS = tuple(name for name in META_COLUMNS if name not in (START_LINE, SIGNATURE, DOC))
URL_LINE = r"#L(?P<line>\d+)(?:-L\d+)?$"  # python://stdlib/json/decoder.py#L42, file:///src/a.go#L12-L30
RECALL_K = 10
CHUNK_BATCHES = 32  # rows per embedding call = encode_batch_size * CHUNK_BATCHES (sorted by length inside)


@dataclass(frozen=True)
class BuildIndexConfig:
    factory: str = field("", "FAISS index factory string, e.g. 'HNSW32,Flat' ('' = chosen by corpus size)")
    flat_max: int = field(50_000, "up to this many vectors: exact search (Flat)")
    hnsw_max: int = field(1_000_000, "up to this many vectors: HNSW; beyond: IVF-PQ with exact re-ranking")
    hnsw_m: int = field(32, "HNSW graph neighbours per node (M)")
    ef_construction: int = field(80, "HNSW build-time beam width (efConstruction)")
    ef_search: int = field(64, "HNSW search-time beam width (efSearch), saved with the index")
    ivf_nlist: int = field(0, "IVF inverted lists (0 = about 4 * sqrt(N), a power of two)")
    pq_m: int = field(0, "PQ sub-quantizers, must divide the dimension (0 = largest divisor <= dim / 8)")
    nprobe: int = field(32, "IVF lists visited per query, saved with the index")
    exact_refine_max: int = field(
        20_000_000,
        "up to this many vectors IVF-PQ re-ranks with the exact vectors (RFlat, 1.6 GB per million at dim "
        "384); beyond: OPQ, an HNSW coarse quantizer and 8-bit re-ranking vectors (Refine(SQ8), 0.45 GB)",
    )
    # bench_index, 100k x 384: recall@10 0.53 / 0.94 / 0.998 with 1 / 4 / 8; bench_index_scale, 1M: 0.987
    # at 8, 0.999 at 16 for +0.06 ms per query (bench/RESULTS.md).
    refine_k_factor: float = field(16.0, "IVF-PQ re-ranks k * this many PQ candidates with the exact vectors")
    train_sample: int = field(0, "vectors to train IVF/PQ on (0 = max(40 * nlist, 10000), at most 1M)")
    add_batch_size: int = field(65_536, "vectors added to the index per call")
    encode_batch_size: int = field(64, "texts per encoder forward pass")
    max_length: int = field(0, "tokens per text at most (0 = the encoder's own limit)")
    max_corpus: int = field(
        0, "index at most this many corpus rows (0 = all; else a seeded sample, an even share per source)"
    )
    whole_sources: tuple[str, ...] = field(
        (), "sources indexed whole under max_corpus (e.g. python:stdlib); the others share what is left"
    )
    recall_queries: int = field(1000, "queries for recall@10 and latency (sampled, seeded)")
    shards: int = field(
        0, "corpus shards the pipeline embeds in parallel (0 = one per shard_rows selected rows)"
    )
    shard_rows: int = field(1_000_000, "selected corpus rows per shard when shards is 0")
    ivf_on_disk: bool = field(
        False, "IVF inverted lists in index.ivfdata beside index.faiss, mapped, not read (IVF without RFlat)"
    )
    use_gpu: str = field("auto", "FAISS on the GPU: auto (when faiss-gpu sees one), yes, no")
    device: str = field("auto", "torch device for the encoder: auto (cuda when available), cpu, cuda")
    runtime: str = field("torch", RUNTIME_HELP)
    seed: int = field(0, "seed for the training sample, k-means and the query sample")

    def validate(self) -> None:
        check_runtime(self.runtime)
        for name in (
            "flat_max",
            "hnsw_max",
            "ivf_nlist",
            "pq_m",
            "train_sample",
            "max_length",
            "max_corpus",
            "shards",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.whole_sources, tuple) or not all(
            isinstance(name, str) and name for name in self.whole_sources
        ):
            raise ConfigError(f"whole_sources must be a list of source names, got {self.whole_sources!r}")
        for name in (
            "hnsw_m",
            "ef_construction",
            "ef_search",
            "nprobe",
            "add_batch_size",
            "encode_batch_size",
            "recall_queries",
            "shard_rows",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hnsw_max < self.flat_max:
            raise ConfigError(f"hnsw_max ({self.hnsw_max}) must be >= flat_max ({self.flat_max})")
        if self.exact_refine_max < self.hnsw_max:
            raise ConfigError(
                f"exact_refine_max ({self.exact_refine_max}) must be >= hnsw_max ({self.hnsw_max})"
            )
        if self.refine_k_factor < 1:
            raise ConfigError(f"refine_k_factor must be >= 1, got {self.refine_k_factor}")
        if self.use_gpu not in faiss_index.USE_GPU_CHOICES:
            raise ConfigError(
                f"use_gpu must be one of {list(faiss_index.USE_GPU_CHOICES)}, got {self.use_gpu!r}"
            )


# ---------------------------------------------------------------------------------------------
# Inputs, checked before anything expensive


def corpus_shards(corpus_dir: str | Path) -> list[Path]:
    """The corpus shards, checked: a local directory of part-*.parquet shards with the columns read here."""
    if str(corpus_dir).startswith("s3://"):
        raise ValueError(f"corpus {corpus_dir}: build-index reads a local directory; copy it locally first")
    path = Path(corpus_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"corpus directory {path} does not exist")
    shards = sorted(path.glob("part-*.parquet"))
    if not shards:
        hint = f"; did you mean {path / 'corpus'}?" if (path / "corpus").is_dir() else ""
        raise FileNotFoundError(
            f"corpus directory {path} has no part-*.parquet shards (expected the ingest corpus/){hint}"
        )
    for shard in shards:
        names = pq.read_schema(shard).names
        missing = [c for c in (*CORPUS_COLUMNS, "query") if c not in names]
        if missing:
            raise ValueError(f"corpus shard {shard} has no column(s) {missing}; it has {names}")
    return shards


def sample_test_queries(pairs_dir: str | Path, count: int, seed: int) -> list[str]:
    """A seeded sample of the non-empty queries of pairs/test."""
    if not sorted((Path(pairs_dir) / "test").glob("part-*.parquet")):
        raise FileNotFoundError(f"pairs directory {pairs_dir} has no test/part-*.parquet shards")
    queries = [q for q in read_split(pairs_dir, "test", columns=["query"]).column("query").to_pylist() if q]
    if len(queries) > count:
        queries = random.Random(seed).sample(queries, count)
    return queries


# ---------------------------------------------------------------------------------------------
# The encoder as an embedding callable


# ---------------------------------------------------------------------------------------------
# The stage


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux /proc), or None elsewhere."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def start_lines(urls: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """int32 start lines from urls ending in ``#L<start>`` or ``#L<start>-L<end>``; null for the others."""
    return pc.struct_field(pc.extract_regex(urls, URL_LINE), "line").cast(pa.int32())


def meta_table(table: pa.Table) -> pa.Table:
    """A corpus chunk's META_COLUMNS, cast to META_SCHEMA: start_line from the url unless the corpus has it,
    signature "" where the corpus has none (older corpora), doc = the query column."""
    if START_LINE not in table.column_names:
        table = table.append_column(START_LINE, start_lines(table["url"]))
    if SIGNATURE not in table.column_names:
        table = table.append_column(SIGNATURE, pa.array([""] * table.num_rows, type=pa.string()))
    table = table.append_column(DOC, pc.fill_null(table["query"], ""))
    return table.select(list(META_COLUMNS)).cast(META_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Which rows: all of them, or a seeded sample spread over the sources


UNKNOWN_SOURCE = "(unknown)"  # rows of a shard without a source column, or with an empty one


@dataclass(frozen=True)
class RowSelection:
    """The corpus rows to embed: per shard, its sorted row numbers to read (None: every row)."""

    shard_rows: list[np.ndarray | None]
    selected: int  # rows chosen (those with empty code are skipped when read)
    corpus_rows: int
    sampled_by: str  # "all", or how the sample was drawn
    source_rows: dict[str, int]  # {source: its rows in the corpus}, in the order first seen


def even_shares(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` rows among groups of ``sizes`` rows: each group an even share, a group smaller than
    its share whole, and what it leaves shared evenly by the others (max-min fair). The last few rows that
    do not divide evenly go one each to the groups with the most rows left (ties: the first group)."""
    shares = [0] * len(sizes)
    left = min(total, sum(sizes))
    while left > 0:
        open_groups = [i for i, size in enumerate(sizes) if shares[i] < size]
        share = left // len(open_groups)
        if share == 0:
            for i in sorted(open_groups, key=lambda i: shares[i] - sizes[i])[:left]:
                shares[i] += 1
            break
        for i in open_groups:
            extra = min(share, sizes[i] - shares[i])
            shares[i] += extra
            left -= extra
    return shares


def shard_source_codes(shard: Path, names: dict[str, int]) -> np.ndarray:
    """One int32 per row of ``shard``: its source's number in ``names`` (new names are added to it)."""
    parquet = pq.ParquetFile(shard)
    rows = parquet.metadata.num_rows
    if SOURCE not in parquet.schema_arrow.names:
        return np.full(rows, names.setdefault(UNKNOWN_SOURCE, len(names)), dtype=np.int32)
    column = parquet.read(columns=[SOURCE])[SOURCE]
    encoded = pc.dictionary_encode(pc.fill_null(column, "").combine_chunks())
    numbers = [
        names.setdefault(name or UNKNOWN_SOURCE, len(names)) for name in encoded.dictionary.to_pylist()
    ]
    return np.array(numbers, dtype=np.int32)[encoded.indices.to_numpy(zero_copy_only=False)]


def select_rows(
    shards: list[Path], max_corpus: int, seed: int, whole_sources: Sequence[str] = ()
) -> RowSelection:
    """Every row when ``max_corpus`` is 0 or at least the corpus; else a seeded sample of ``max_corpus`` rows
    spread over the ``source`` column: the ``whole_sources`` first, every row of each (they must fit in
    ``max_corpus`` together), then each other source an even share of what is left (even_shares: a source
    smaller than its share is taken whole), within a source a seeded uniform sample. Never a prefix of the
    corpus. A name in ``whole_sources`` that the corpus lacks is an error listing the sources it has.

    Only the source column is read here (one int per row stays in memory); the rows themselves are read
    when they are embedded.
    """
    names: dict[str, int] = {}
    codes = np.concatenate([shard_source_codes(shard, names) for shard in shards])
    totals = np.bincount(codes, minlength=len(names))
    source_rows = {name: int(totals[number]) for name, number in names.items()}
    corpus_rows = len(codes)
    if not max_corpus or max_corpus >= corpus_rows:
        return RowSelection([None] * len(shards), corpus_rows, corpus_rows, "all", source_rows)
    unknown = sorted(set(whole_sources) - set(names))
    if unknown:
        raise ValueError(f"whole_sources {unknown} are not in the corpus; its sources: {sorted(names)}")
    whole = [names[name] for name in whole_sources]
    whole_rows = int(sum(totals[number] for number in whole))
    if whole_rows > max_corpus:
        raise ValueError(
            f"whole_sources {list(whole_sources)} hold {whole_rows} rows, more than max_corpus {max_corpus}"
        )
    others = [number for number in range(len(names)) if number not in whole]
    shares = [int(t) for t in totals]  # the whole sources' shares; the others' are set next
    other_shares = even_shares([int(totals[number]) for number in others], max_corpus - whole_rows)
    for number, share in zip(others, other_shares, strict=True):
        shares[number] = share
    rng = np.random.default_rng(seed)
    chosen = []
    for number, share in enumerate(shares):
        rows = np.flatnonzero(codes == number)
        chosen.append(rows if share == len(rows) else rng.choice(rows, size=share, replace=False))
    selected = np.sort(np.concatenate(chosen))
    starts = np.cumsum([0] + [pq.ParquetFile(shard).metadata.num_rows for shard in shards])
    shard_rows = [
        selected[np.searchsorted(selected, start) : np.searchsorted(selected, end)] - start
        for start, end in zip(starts[:-1], starts[1:], strict=True)
    ]
    sampled_by = f"seeded sample (seed {seed}), even share per source"
    if whole_sources:
        whole_names = ", ".join(whole_sources)
        sampled_by = f"seeded sample (seed {seed}): {whole_names} whole, an even share per other source"
    return RowSelection(shard_rows, len(selected), corpus_rows, sampled_by, source_rows)


def selected_rows(corpus_dir: str | Path, max_corpus: int) -> int:
    """How many rows select_rows chooses (every row, or ``max_corpus`` of them), from the shards' Parquet
    metadata alone: what the pipeline sizes its embedding fan-out by before reading any row."""
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in corpus_shards(corpus_dir))
    if rows == 0:
        raise ValueError(f"corpus {corpus_dir} is empty: no rows")
    return min(max_corpus, rows) if max_corpus else rows


def check_shard(shard: int, shards: int) -> None:
    """Raise ConfigError unless ``shard`` is one of 0..shards-1 and ``shards`` >= 1."""
    if shards < 1 or not 0 <= shard < shards:
        raise ConfigError(f"shard must be in 0..shards-1 with shards >= 1, got shard {shard} of {shards}")


def split_selection(selection: RowSelection, files: list[Path], shard: int, shards: int) -> RowSelection:
    """Shard ``shard`` of ``shards`` of ``selection``: its selected rows split into contiguous runs in corpus
    order, as even as can be (of S selected rows, shard k holds ranks [k*S//shards, (k+1)*S//shards)), so
    the shards one after another are the selection, row for row, and FAISS ids stay those of one pod.
    ``corpus_rows``, ``sampled_by`` and ``source_rows`` stay the whole selection's."""
    check_shard(shard, shards)
    counts = [pq.ParquetFile(path).metadata.num_rows for path in files]
    per_file = [
        count if rows is None else len(rows) for rows, count in zip(selection.shard_rows, counts, strict=True)
    ]
    first, last = shard * selection.selected // shards, (shard + 1) * selection.selected // shards
    shard_rows: list[np.ndarray | None] = []
    file_start = 0
    for rows, count, chosen in zip(selection.shard_rows, counts, per_file, strict=True):
        lo, hi = max(first, file_start) - file_start, min(last, file_start + chosen) - file_start
        file_start += chosen
        if hi <= lo:
            shard_rows.append(np.empty(0, dtype=np.int64))
        elif rows is None:
            shard_rows.append(None if (lo, hi) == (0, count) else np.arange(lo, hi, dtype=np.int64))
        else:
            shard_rows.append(rows[lo:hi])
    return RowSelection(
        shard_rows, last - first, selection.corpus_rows, selection.sampled_by, selection.source_rows
    )


def _check_embeddings(vectors: np.ndarray, rows: int, dim: int, what: str) -> np.ndarray:
    if not isinstance(vectors, np.ndarray) or vectors.shape != (rows, dim):
        shape = getattr(vectors, "shape", None)
        raise ValueError(f"the encoder returned {what} embeddings of shape {shape}, expected ({rows}, {dim})")
    return vectors.astype(np.float32, copy=False)


@dataclass
class EmbeddedCorpus:
    """What embed_corpus did: ``count`` vectors written (= FAISS ids 0..count-1), of ``rows_read`` rows."""

    count: int = 0
    rows_read: int = 0
    seconds: float = 0.0
    queries: list[str] = dataclass_field(default_factory=list)  # a reservoir sample of the corpus' queries
    queries_seen: int = 0
    per_source: Counter[str] = dataclass_field(default_factory=Counter)  # vectors written per source

    def sample_query(self, query: str, rng: random.Random, size: int) -> None:
        """Reservoir-sample the non-empty ``query`` (up to ``size`` kept), in the order rows are indexed."""
        if not query:
            return
        self.queries_seen += 1
        if len(self.queries) < size:
            self.queries.append(query)
        elif (slot := rng.randrange(self.queries_seen)) < size:
            self.queries[slot] = query


def selected_batches(
    shard: Path, rows: np.ndarray | None, columns: list[str], chunk_rows: int
) -> Iterator[pa.Table]:
    """The ``rows`` of one shard (sorted row numbers; None: all), ``chunk_rows`` rows read at a time;
    row groups holding none of them are not read."""
    shard_file = pq.ParquetFile(shard)
    group_start = 0
    for group in range(shard_file.num_row_groups):
        group_rows = shard_file.metadata.row_group(group).num_rows
        offset, group_start = group_start, group_start + group_rows
        if rows is not None and np.searchsorted(rows, offset) == np.searchsorted(rows, group_start):
            continue
        for batch in shard_file.iter_batches(batch_size=chunk_rows, row_groups=[group], columns=columns):
            table = pa.Table.from_batches([batch])
            if rows is not None:
                wanted = rows[np.searchsorted(rows, offset) : np.searchsorted(rows, offset + batch.num_rows)]
                table = table.take(pa.array(wanted - offset, type=pa.int64()))
            offset += batch.num_rows
            if table.num_rows:
                yield table


def embed_corpus(
    shards: list[Path],
    selection: RowSelection,
    embed: EmbedFn,
    vectors_out: np.ndarray,
    meta_path: Path,
    chunk_rows: int,
    n_queries: int,
    seed: int,
) -> EmbeddedCorpus:
    """Embed the non-empty ``code`` of the ``selection``'s rows into ``vectors_out`` [N, D], in corpus order.

    Row i of ``meta_path`` (Parquet, META_SCHEMA) describes vector i. Reads ``chunk_rows`` rows at a
    time, so only one chunk of text is in memory; ``vectors_out`` is a memmap. Also samples up to
    ``n_queries`` of the rows' non-empty queries (reservoir sampling, seeded).
    """
    n_rows, dim = vectors_out.shape
    done = EmbeddedCorpus()
    rng = random.Random(seed)
    start = time.perf_counter()
    with (
        pq.ParquetWriter(meta_path, META_SCHEMA, compression="zstd") as meta_writer,
        Progress(TAG, total=n_rows, unit="functions") as progress,
    ):
        for shard, rows in zip(shards, selection.shard_rows, strict=True):
            names = pq.read_schema(shard).names
            columns = [*CORPUS_COLUMNS, "query", *(c for c in (START_LINE, SIGNATURE, SOURCE) if c in names)]
            for table in selected_batches(shard, rows, columns, chunk_rows):
                done.rows_read += table.num_rows
                table = table.filter(pc.not_equal(pc.fill_null(table["code"], ""), ""))
                for query in table["query"].to_pylist():
                    done.sample_query(query, rng, n_queries)
                codes = table["code"].to_pylist()
                if codes:
                    vectors = _check_embeddings(embed(codes, "code"), len(codes), dim, "code")
                    vectors_out[done.count : done.count + len(codes)] = vectors
                    meta_writer.write_table(meta_table(table))
                    done.count += len(codes)
                    if SOURCE in table.column_names:
                        done.per_source.update(name or UNKNOWN_SOURCE for name in table[SOURCE].to_pylist())
                    else:
                        done.per_source[UNKNOWN_SOURCE] += len(codes)
                progress.update(table.num_rows, postfix=f"{done.count} embedded")
    done.seconds = time.perf_counter() - start
    return done


def reserve_space(path: Path) -> None:
    """Allocate the blocks of the (sparse) file ``path`` now, so a disk too small for it is an OSError here
    (ENOSPC) rather than a SIGBUS when a memmap write later hits the full disk; a no-op where the file
    system cannot (EOPNOTSUPP/EINVAL)."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def write_lexical_index(meta_path: Path, out_dir: Path) -> dict:
    """BM25 over the code of every indexed row, read back from ``meta_path`` (so row i = FAISS id i), saved
    in bm25s' own format in ``out_dir/bm25`` (semcode.contract.LEXICAL_DIR); returns what bundle.json
    ``lexical`` says of it, with its size and build time."""
    from semcode.evaluation import BM25Index

    started = time.perf_counter()
    batches = pq.ParquetFile(meta_path).iter_batches(batch_size=8192, columns=["code"])
    index = BM25Index(code or "" for batch in batches for code in batch.column("code").to_pylist())
    with storage.atomic_output(out_dir / LEXICAL_DIR) as partial:
        index.save(partial)
    folder = out_dir / LEXICAL_DIR
    lexical = {
        "dir": LEXICAL_DIR,
        "tokenizer": BM25Index.TOKENIZER,
        "stopwords": False,
        "ntotal": index.n_codes,
        "vocab": len(index.retriever.vocab_dict),
        "bytes": sum(path.stat().st_size for path in folder.iterdir()),
        "seconds": round(time.perf_counter() - started, 3),
    }
    log(TAG, f"BM25 over {index.n_codes} functions ({lexical['vocab']} words) in {lexical['seconds']:.1f}s")
    return lexical


def coverage(corpus: EmbeddedCorpus, selection: RowSelection) -> dict:
    """What the index covers: ``{"indexed", "corpus_rows", "sampled_by", "per_source": {source: [indexed,
    total]}}``; bundle.json, the model card, ``semcode search`` and ``/stats`` show it."""
    return {
        "indexed": corpus.count,
        "corpus_rows": selection.corpus_rows,
        "sampled_by": selection.sampled_by,
        "per_source": {
            source: [corpus.per_source.get(source, 0), total]
            for source, total in selection.source_rows.items()
        },
    }


def prepare_out(out_dir: str | Path) -> Path:
    """The output directory, emptied of an earlier run's outputs: a run that fails never leaves old and
    new files mixed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (
        out / "metrics.json",
        out / INDEX_FILE,
        out / IVFDATA_FILE,
        out / META_FILE,
        out / cfg.RESOLVED_CONFIG_NAME,
    ):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out / LEXICAL_DIR, ignore_errors=True)
    return out


def plan_factory(config: BuildIndexConfig, n_vectors: int, dim: int) -> str:
    """The factory string for ``n_vectors`` (config.factory, or by size), checked before any work."""
    factory = faiss_index.choose_factory(n_vectors, dim, config)
    faiss_index.validate_factory(factory, dim, n_vectors)
    if config.ivf_on_disk and not faiss_index.on_disk_capable(factory, dim):
        raise ConfigError(
            f"ivf_on_disk needs an IVF index without a refine stage, got factory {factory!r} for "
            f"{n_vectors} vectors; set factory, e.g. 'IVF4096,PQ48x8' or 'OPQ48,IVF4096,PQ48x8'"
        )
    return factory


def index_corpus(
    config: BuildIndexConfig,
    embed: EmbedFn,
    dim: int,
    corpus_dir: str | Path,
    out_dir: str | Path,
    pairs_dir: str | Path | None = None,
    encoder: str = "",
) -> dict:
    """Embed the corpus with ``embed`` (kind "code"), build, save and measure the index; returns the metrics.

    ``dim`` is the embedding dimension ``embed`` returns; knowing it up front lets the factory string
    be checked before any embedding.
    """
    config.validate()
    started = time.perf_counter()
    shards = corpus_shards(corpus_dir)
    rows_total = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    if rows_total == 0:
        raise ValueError(f"corpus {corpus_dir} is empty: {len(shards)} shard(s), no rows")
    selection = select_rows(shards, config.max_corpus, config.seed, config.whole_sources)
    n_rows = selection.selected
    factory = plan_factory(config, n_rows, dim)
    on_gpu = faiss_index.resolve_use_gpu(config.use_gpu)
    queries = sample_test_queries(pairs_dir, config.recall_queries, config.seed) if pairs_dir else None
    where = "GPU" if on_gpu else "CPU"
    log(
        TAG,
        f"{n_rows} of {rows_total} corpus rows ({selection.sampled_by}), dim {dim}: index {factory!r}, "
        f"FAISS on the {where}",
    )

    out = prepare_out(out_dir)
    with tempfile.TemporaryDirectory(prefix="semcode-embeddings-") as tmp:
        # 1. Embed the code into a memmap (bounded memory); the metadata goes to Parquet in the same order.
        embedding_file = open_embeddings(Path(tmp) / "embeddings.npy", n_rows, dim)
        chunk_rows = config.encode_batch_size * CHUNK_BATCHES
        with storage.atomic_output(out / META_FILE) as meta_partial:
            corpus = embed_corpus(
                shards,
                selection,
                embed,
                embedding_file,
                meta_partial,
                chunk_rows,
                config.recall_queries,
                config.seed,
            )
        if corpus.count == 0:
            raise ValueError(
                f"corpus {corpus_dir}: all {corpus.rows_read} rows read have empty code; nothing to index"
            )
        embedding_file.flush()
        # 2-4. Build, save, load back and measure the index.
        metrics = finish_index(
            config,
            embed,
            dim,
            [embedding_file[: corpus.count]],
            out,
            factory,
            corpus,
            selection,
            queries,
            pairs_dir,
            started,
            encoder,
        )
        del embedding_file  # release the memmap before its directory goes
    return metrics


def open_embeddings(path: Path, rows: int, dim: int) -> np.memmap:
    """A float32 [rows, dim] .npy memmap at ``path`` with its disk space reserved (reserve_space)."""
    with storage.disk_space_errors(path):
        embedding_file = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        reserve_space(path)
    return embedding_file


def finish_index(
    config: BuildIndexConfig,
    embed: EmbedFn,
    dim: int,
    parts: list[np.ndarray],
    out: Path,
    factory: str,
    corpus: EmbeddedCorpus,
    selection: RowSelection,
    queries: list[str] | None,
    pairs_dir: str | Path | None,
    started: float,
    encoder: str,
    shards: int | None = None,
) -> dict:
    """Build the index over ``parts`` (the embedded rows of ``out``/index_meta.parquet, in its order; one
    array, or the shards'), save it, load it back as search does, measure recall@10 and latency, write
    the lexical index, metrics.json and config.json; returns the metrics. Both ways of building (one pod,
    or shards) end here."""
    on_gpu = faiss_index.resolve_use_gpu(config.use_gpu)
    index_path = out / INDEX_FILE
    # 2. Build the index, set its search knobs (they are saved with it) and save it.
    start = time.perf_counter()
    if config.ivf_on_disk:  # inverted lists in out/index.ivfdata (merged per shard), mapped by search
        index = faiss_index.build_ivf_on_disk(
            parts,
            factory,
            index_path,
            metric="ip",
            train_sample=config.train_sample,
            add_batch=config.add_batch_size,
            use_gpu=config.use_gpu,
            seed=config.seed,
        )
    else:
        index = faiss_index.build_index(
            parts,
            factory,
            metric="ip",
            train_sample=config.train_sample,
            add_batch=config.add_batch_size,
            use_gpu=config.use_gpu,
            seed=config.seed,
            ef_construction=config.ef_construction,
        )
    search_params = faiss_index.set_search_params(
        index, ef_search=config.ef_search, nprobe=config.nprobe, refine_k_factor=config.refine_k_factor
    )
    index_seconds = time.perf_counter() - start
    index_type = faiss_index.describe(index)
    with storage.atomic_output(index_path) as index_partial:
        faiss_index.save_index(index, index_partial)
    del index

    # 3. Load it back as a search service would, measuring its memory.
    rss_before = rss_bytes()
    index = faiss_index.load_index(index_path)
    rss_after = rss_bytes()

    # 4. Recall@10 against exact search and the search latency, on real queries (query tower).
    if queries is None:
        queries = corpus.queries
        query_source = f"corpus query column ({corpus.queries_seen} indexed rows have one)"
    else:
        query_source = f"{pairs_dir}/test query column"
    if queries:
        query_vectors = _check_embeddings(embed(queries, "query"), len(queries), dim, "query")
    else:  # no natural language anywhere: the code vectors of sampled corpus rows stand in
        rows = np.sort(np.random.default_rng(config.seed).permutation(corpus.count)[: config.recall_queries])
        query_vectors = faiss_index.take_rows(parts, rows)
        query_source = "corpus code vectors (no queries found)"
    k = min(RECALL_K, corpus.count)
    _, exact_ids = faiss_index.exact_search(parts, query_vectors, k)
    _, approx_ids = faiss_index.search(index, query_vectors, k)
    recall = faiss_index.recall_at_k(approx_ids, exact_ids, k)
    latency = faiss_index.measure_latency(index, query_vectors, k)
    ivfdata = out / IVFDATA_FILE

    metrics = {
        "factory": factory,
        "index_type": index_type,
        "metric": "inner_product",
        "ntotal": int(index.ntotal),
        "dim": dim,
        "search_params": search_params,
        f"recall@{RECALL_K}": round(recall, 4),
        "recall_k": k,
        "recall_queries": len(query_vectors),
        "recall_query_source": query_source,
        "search_latency": {
            name: round(value, 4) if isinstance(value, float) else value for name, value in latency.items()
        },
        "embed_seconds": round(corpus.seconds, 3),
        "embed_per_s": round(corpus.count / corpus.seconds, 1) if corpus.seconds > 0 else 0.0,
        "index_seconds": round(index_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "index_file_bytes": index_path.stat().st_size,
        "ivf_on_disk": config.ivf_on_disk,
        "ivfdata_file_bytes": ivfdata.stat().st_size if ivfdata.is_file() else 0,
        "meta_file_bytes": (out / META_FILE).stat().st_size,
        "lexical": write_lexical_index(out / META_FILE, out),
        "index_memory_mb": None if rss_before is None else round((rss_after - rss_before) / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "faiss_gpu": on_gpu,
        "corpus_rows": selection.corpus_rows,
        "coverage": coverage(corpus, selection),
        "rows_read": corpus.rows_read,
        "rows_skipped_empty_code": corpus.rows_read - corpus.count,
        "encoder": encoder,
        "embedded_in_shards": shards,  # None: embedded here, in one pod
    }
    with storage.atomic_output(out / "metrics.json") as metrics_partial:
        metrics_partial.write_text(json.dumps(metrics, indent=2) + "\n")
    with storage.atomic_output(out / cfg.RESOLVED_CONFIG_NAME) as config_partial:
        cfg.save_resolved(config, out, config_partial.name)
    log(
        TAG,
        f"{index_type} over {corpus.count} vectors: recall@{k} {recall:.3f}, search p50 "
        f"{latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms -> {out}",
    )
    return metrics


# ---------------------------------------------------------------------------------------------
# Index assembly from embedded shards (semcode.stages.embed_corpus writes them)

SHARDS_MUST_AGREE = {  # manifest key -> what it is, for the error that names the shards disagreeing
    "shards": "shard count",
    "dim": "embedding dimension",
    "encoder_id": "encoder (the sha256 of its weights)",
    "runtime": "encoder runtime",
    "max_length": "tokens per text",
    "selection": "row selection (max_corpus, whole_sources, seed and the corpus they sampled)",
}


def encoder_identity(encoder_dir: str | Path) -> str:
    """What tells two encoders apart: ``sha256:<digest of the weights>`` for a directory, else the alias."""
    from semcode.embed import encoder_digest

    path = Path(encoder_dir)
    return f"sha256:{encoder_digest(path)}" if path.is_dir() else str(encoder_dir)


def read_shards(
    shard_dirs: Sequence[str | Path], config: BuildIndexConfig
) -> list[tuple[Path, dict, np.ndarray]]:
    """The embedded shards as (directory, manifest, vectors memmap), in shard order, checked before any
    work: each has its files; together they are shards 0..N-1 of one embedding run, each once, with one
    dimension, encoder, runtime and row selection, and that selection is the one ``config`` asks for;
    each shard's vectors are float32 [count, dim] with one metadata row per vector. A failed check is an
    error naming the shard directories."""
    if not shard_dirs:
        raise ValueError("no embedded shards given (expected embed-corpus outputs)")
    found = []
    for shard_dir in map(Path, shard_dirs):
        if not shard_dir.is_dir():
            raise FileNotFoundError(f"embedded shard {shard_dir} does not exist")
        missing = [
            n for n in (SHARD_MANIFEST_FILE, SHARD_VECTORS_FILE, META_FILE) if not (shard_dir / n).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"embedded shard {shard_dir} lacks {', '.join(missing)} (expected an embed-corpus output)"
            )
        found.append((shard_dir, json.loads((shard_dir / SHARD_MANIFEST_FILE).read_text())))
    for key, what in SHARDS_MUST_AGREE.items():
        values = {str(d): m.get(key) for d, m in found}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            listed = "; ".join(f"{d}: {json.dumps(v, sort_keys=True)}" for d, v in values.items())
            raise ValueError(f"the embedded shards have different {what} ({key}): {listed}")
    shards = found[0][1]["shards"]
    numbers = Counter(m["shard"] for _, m in found)
    twice = sorted(number for number, times in numbers.items() if times > 1)
    absent = sorted(set(range(shards)) - set(numbers))
    if twice or absent:
        given = ", ".join(f"{d} (shard {m['shard']})" for d, m in found)
        problem = f"shard(s) {absent} missing" if absent else f"shard(s) {twice} given more than once"
        raise ValueError(f"embedded shards of a {shards}-shard run: {problem}; given {given}")
    settings = {
        **found[0][1]["selection"],
        "runtime": found[0][1]["runtime"],
        "max_length": found[0][1]["max_length"],
    }
    for name in ("max_corpus", "whole_sources", "seed", "runtime", "max_length"):
        wanted = list(getattr(config, name)) if name == "whole_sources" else getattr(config, name)
        if settings[name] != wanted:
            raise ValueError(
                f"the embedded shards ({found[0][0]}, ...) were embedded with {name}={settings[name]!r}, "
                f"this build-index config has {name}={wanted!r}: embed the corpus again with the same {name}"
            )
    checked = []
    for shard_dir, manifest in sorted(found, key=lambda item: item[1]["shard"]):
        vectors = np.load(shard_dir / SHARD_VECTORS_FILE, mmap_mode="r")
        expected = (manifest["count"], manifest["dim"])
        if vectors.dtype != np.float32 or vectors.shape != expected:
            raise ValueError(
                f"embedded shard {shard_dir}: {SHARD_VECTORS_FILE} is {vectors.dtype} {vectors.shape}, its "
                f"manifest says float32 {expected}"
            )
        meta_rows = pq.ParquetFile(shard_dir / META_FILE).metadata.num_rows
        if meta_rows != manifest["count"]:
            raise ValueError(
                f"embedded shard {shard_dir}: {META_FILE} has {meta_rows} rows for {manifest['count']} vectors"
            )
        checked.append((shard_dir, manifest, vectors))
    return checked


def index_shards(
    config: BuildIndexConfig,
    embed: EmbedFn,
    dim: int,
    shard_dirs: Sequence[str | Path],
    out_dir: str | Path,
    pairs_dir: str | Path | None = None,
    encoder: str = "",
    encoder_id: str | None = None,
) -> dict:
    """Build, save and measure the index over embedded shards (embed-corpus outputs); returns the metrics.

    The index is trained once on a seeded sample of all the shards' vectors and every shard is added in
    batches, in shard order (semcode.index.build_index over the list of shard memmaps; with
    ``ivf_on_disk`` each shard is added to a copy of the trained index and the copies merged on disk,
    semcode.index.build_ivf_on_disk), so FAISS id i = row i of the shards' metadata one after another,
    which is what one pod embedding the same selection gives. ``embed`` embeds the recall queries (kind
    "query"); with ``encoder_id`` (encoder_identity) the shards must have been embedded by that encoder.
    """
    config.validate()
    started = time.perf_counter()
    shards = read_shards(shard_dirs, config)
    first = shards[0][1]
    if first["dim"] != dim:
        raise ValueError(
            f"the embedded shards ({shards[0][0]}, ...) hold dim {first['dim']} vectors, the query encoder "
            f"returns dim {dim} (dimension mismatch)"
        )
    if encoder_id is not None and first["encoder_id"] != encoder_id:
        raise ValueError(
            f"the embedded shards ({shards[0][0]}, ...) were embedded by encoder {first['encoder_id']} "
            f"({first['encoder']}), this index's queries by {encoder_id} ({encoder}): embed the corpus with it"
        )
    total = sum(manifest["count"] for _, manifest, _ in shards)
    if total == 0:
        raise ValueError(f"the {len(shards)} embedded shard(s) hold no vectors (every row had empty code)")
    factory = plan_factory(config, total, dim)
    queries = sample_test_queries(pairs_dir, config.recall_queries, config.seed) if pairs_dir else None
    chosen = first["selection"]
    selection = RowSelection(
        [], chosen["selected"], chosen["corpus_rows"], chosen["sampled_by"], chosen["source_rows"]
    )
    corpus = EmbeddedCorpus(
        count=total,
        rows_read=sum(manifest["rows_read"] for _, manifest, _ in shards),
        seconds=sum(manifest["embed_seconds"] for _, manifest, _ in shards),  # pod-seconds, all shards
    )
    for _, manifest, _ in shards:
        corpus.per_source.update(manifest["per_source"])
    log(
        TAG,
        f"{total} vectors of {len(shards)} embedded shard(s) ({selection.sampled_by}), dim {dim}: index "
        f"{factory!r}, FAISS on the {'GPU' if faiss_index.resolve_use_gpu(config.use_gpu) else 'CPU'}",
    )

    out = prepare_out(out_dir)
    # 1. The shards' metadata one after another (row i = FAISS id i), and the query sample single-pod
    #    build-index draws: the same reservoir over the same rows' queries in the same order.
    rng = random.Random(config.seed)
    with (
        storage.atomic_output(out / META_FILE) as meta_partial,
        pq.ParquetWriter(meta_partial, META_SCHEMA, compression="zstd") as meta_writer,
    ):
        for shard_dir, _, _ in shards:
            for batch in pq.ParquetFile(shard_dir / META_FILE).iter_batches(batch_size=8192):
                meta_writer.write_table(pa.Table.from_batches([batch]).cast(META_SCHEMA))
                for query in batch.column(DOC).to_pylist():
                    corpus.sample_query(query, rng, config.recall_queries)
    # 2-4. Build (trained once, every shard added), save, load back and measure the index.
    return finish_index(
        config,
        embed,
        dim,
        [vectors for _, _, vectors in shards],
        out,
        factory,
        corpus,
        selection,
        queries,
        pairs_dir,
        started,
        encoder,
        shards=len(shards),
    )


def load_encoder(
    config: BuildIndexConfig, encoder_dir: str | Path, onnx_dir: str | Path | None = None
) -> tuple[EmbedFn, int]:
    """The encoder as ``config.runtime`` runs it: (embedding callable, dim); embed-corpus uses it too."""
    from semcode.embed import load_embed_fn

    embed, dim = load_embed_fn(
        str(encoder_dir),
        config.encode_batch_size,
        config.max_length or None,
        config.device,
        runtime=config.runtime,
        exported=onnx_dir,
    )
    log(TAG, f"encoder {encoder_dir}: dim {dim}")
    return embed, dim


def run(
    config: BuildIndexConfig,
    encoder_dir: str | Path,
    corpus_dir: str | Path | None,
    out_dir: str | Path,
    pairs_dir: str | Path | None = None,
    onnx_dir: str | Path | None = None,
    shard_dirs: Sequence[str | Path] | None = None,
) -> dict:
    """Index ``corpus_dir`` with the code tower of ``encoder_dir`` (or ``minilm``) into ``out_dir``, or with
    ``shard_dirs`` instead (embed-corpus outputs of that encoder) index their vectors, embedding only the
    recall queries; ``onnx_dir``: export_onnx's output of that encoder, whose files an onnx runtime runs
    as they are."""
    config.validate()
    from semcode.embed import check_encoder_spec

    # 1. Every input checked before the model loads.
    if (corpus_dir is None) == (shard_dirs is None):
        raise ValueError("give either a corpus directory or embedded shards (embed-corpus outputs), not both")
    check_encoder_spec(str(encoder_dir))
    if shard_dirs is not None:
        read_shards(shard_dirs, config)
    else:
        corpus_shards(corpus_dir)
    if pairs_dir is not None:
        sample_test_queries(pairs_dir, 1, config.seed)
    # 2. The encoder, as the configured runtime runs it.
    embed, dim = load_encoder(config, encoder_dir, onnx_dir)
    # 3. Embed the corpus (or take the shards' vectors), build and measure the index, write it with its
    #    metadata and lexical index.
    if shard_dirs is not None:
        return index_shards(
            config,
            embed,
            dim,
            shard_dirs,
            out_dir,
            pairs_dir=pairs_dir,
            encoder=str(encoder_dir),
            encoder_id=encoder_identity(encoder_dir),
        )
    return index_corpus(
        config, embed, dim, corpus_dir, out_dir, pairs_dir=pairs_dir, encoder=str(encoder_dir)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode build-index",
        description="Embed a corpus with the encoder's code tower and build a FAISS index with its metadata, "
        "recall@10 against exact search and search latency.",
        epilog=(
            "example:\n"
            "  semcode build-index --encoder runs/encoder --corpus runs/ingest/corpus \\\n"
            "      --pairs runs/ingest/pairs --out runs/index\n"
            "  semcode build-index --encoder minilm --corpus runs/ingest/corpus --out runs/index \\\n"
            "      --factory 'HNSW32,Flat' --ef-search 128\n"
            "  semcode build-index --encoder runs/encoder --embedded runs/embed-0 runs/embed-1 \\\n      --out runs/index"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--encoder", required=True, metavar="DIR", help="encoder directory (train-encoder output) or minilm"
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--corpus", metavar="DIR", help="corpus directory of part-*.parquet shards")
    inputs.add_argument(
        "--embedded",
        nargs="+",
        metavar="DIR",
        help="embed-corpus outputs, every shard of one run: index their vectors instead of embedding",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for the index")
    parser.add_argument(
        "--pairs",
        default=None,
        metavar="DIR",
        help="ingest pairs/ directory: recall queries from its test split",
    )
    parser.add_argument("--onnx", default=None, metavar="DIR", help=ONNX_HELP)
    cfg.add_arguments(parser, BuildIndexConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(BuildIndexConfig, args, section="build_index")
        run(
            config,
            args.encoder,
            args.corpus,
            args.out,
            pairs_dir=args.pairs,
            onnx_dir=args.onnx,
            shard_dirs=args.embedded,
        )
    except (*cfg.BAD_INPUT_ERRORS, OSError) as error:  # OSError: a full disk, named by its path
        return cfg.bad_input("build-index", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
