"""The corpus as an index sees it: which rows are indexed, their search documents, and their embedding.

Shared by the two stages that index a corpus, semcode.stages.build_index (embed and index in one pod) and
semcode.stages.embed_corpus (one shard of the embedding per pod, which build_index then indexes), so both
take the same config (``BuildIndexConfig``, the preset section ``build_index``) and choose the same rows.

Which rows (``select_rows``): every row of ``corpus/part-*.parquet`` (the ingest corpus), or with
``max_corpus`` a seeded sample of that many rows spread over the ``source`` column: the ``whole_sources``
whole, then each other source an even share of the rest (``even_shares``), a source smaller than its share
whole; never a prefix. The row numbers are chosen from the source column alone; only the row groups
holding them are read when they are embedded (``selected_batches``). ``split_selection`` cuts a selection
into contiguous runs in corpus order, one per embedded shard, so the shards one after another are the
selection, row for row.

Their metadata (``meta_table``): semcode.contract.META_COLUMNS cast to ``META_SCHEMA``: code,
language, repo, path, start_line (from the url's #L<start>, or the corpus' own start_line column),
func_name, url, signature ("" for a corpus without one), doc (the corpus' query).

Their search documents (``search_document``): what is embedded and what BM25 indexes is not the training
target (code with its docstring cut out) but what a reader sees on opening the definition, in the view
``BuildIndexConfig.document`` names (``DOCUMENT_VIEWS``): ``name+doc+code`` (the default) is the row's
dotted location (``tempfile.mkdtemp``, ``json.JSONEncoder.encode``), its doc comment's first paragraph and
its code, in that order, so a body cut at the encoder's max length never loses the name or the doc;
``doc+code`` leaves out the location, ``code`` is the code alone (the view before search documents). The
choice was measured on the everyday suite and CoSQA dev (bench/RESULTS.md, "search documents").

Their embedding (``embed_selection``): chunk by chunk, the search documents of the selected rows into a
float32 [N, D] memmap (``open_embeddings``: its disk space reserved up front, as a memmap that hits a full
disk dies of SIGBUS), the metadata into Parquet in the same order, so vector i = metadata row i; rows
whose code is empty are skipped.

An embedded shard (embed_corpus's output): ``embeddings.npy``, ``index_meta.parquet`` and
``manifest.json`` (``shard_manifest``); ``read_shards`` checks a set of them is every shard of one
embedding run, with one dimension, encoder, runtime and row selection, the one the config asks for.
"""

from __future__ import annotations

import errno
import json
import os
import random
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

from semcode import index as faiss_index
from semcode import storage
from semcode.config import ConfigError, field
from semcode.contract import META_COLUMNS, META_FILE, RUNTIME_HELP
from semcode.data.pairs import PAIR_SCHEMA
from semcode.embed import EmbedFn, check_runtime
from semcode.progress import Progress, log

TAG = "build-index"  # the log tag: embed-corpus is build-index's first half, cut into shards
# One embedded shard of the corpus (semcode.stages.embed_corpus writes it, read_shards reads it):
SHARD_VECTORS_FILE = "embeddings.npy"  # float32 [count, dim], row i = row i of the shard's META_FILE
SHARD_MANIFEST_FILE = "manifest.json"  # shard, shards, dim, count, encoder, the selection it belongs to
START_LINE = "start_line"  # not a corpus column (yet): parsed from the url's #L<start> fragment
SIGNATURE = "signature"  # a corpus column since signatures were extracted; "" for older corpora
DOC = "doc"  # the corpus' query column: the doc comment's first paragraph, on one line
SOURCE = "source"  # the source spec a row came from: what a max_corpus sample is spread over
LICENSE = "license"  # a corpus column since licences were found; "" for older corpora
META_SCHEMA = pa.schema(
    [
        pa.field(name, pa.int32() if name == START_LINE else pa.string())
        if name in (START_LINE, DOC)
        else PAIR_SCHEMA.field(name)
        for name in META_COLUMNS
    ]
)
# What a corpus shard must have; start_line, signature and source are read when a shard has them.
CORPUS_COLUMNS = tuple(name for name in META_COLUMNS if name not in (START_LINE, SIGNATURE, DOC, LICENSE))
URL_LINE = r"#L(?P<line>\d+)(?:-L\d+)?$"  # python://stdlib/json/decoder.py#L42, file:///src/a.go#L12-L30
DOCUMENT_VIEWS = ("name+doc+code", "doc+code", "code")  # search_document's views; the first is the default
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
    document: str = field(
        DOCUMENT_VIEWS[0], f"what each row is embedded and BM25-indexed as: {DOCUMENT_VIEWS}"
    )
    embedding_cache: str = field(
        "",
        "a local folder of vectors this encoder embedded before (keyed by its weights and each text's sha256): "
        "only new or changed texts are embedded ('' = no cache)",
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
        if self.document not in DOCUMENT_VIEWS:
            raise ConfigError(f"document must be one of {list(DOCUMENT_VIEWS)}, got {self.document!r}")
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
# The corpus and its rows' search documents


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


def start_lines(urls: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """int32 start lines from urls ending in ``#L<start>`` or ``#L<start>-L<end>``; null for the others."""
    return pc.struct_field(pc.extract_regex(urls, URL_LINE), "line").cast(pa.int32())


def meta_table(table: pa.Table) -> pa.Table:
    """A corpus chunk's META_COLUMNS, cast to META_SCHEMA: start_line from the url unless the corpus has it,
    signature and license "" where the corpus has none (older corpora), doc = the query column."""
    if START_LINE not in table.column_names:
        table = table.append_column(START_LINE, start_lines(table["url"]))
    for name in (SIGNATURE, LICENSE):
        if name not in table.column_names:
            table = table.append_column(name, pa.array([""] * table.num_rows, type=pa.string()))
    table = table.append_column(DOC, pc.fill_null(table["query"], ""))
    return table.select(list(META_COLUMNS)).cast(META_SCHEMA)


def dotted_location(path: str, func_name: str) -> str:
    """``json/__init__.py`` + ``JSONEncoder.encode`` -> ``json.JSONEncoder.encode``: a row's place as a
    reader names it (the file's extension and an ``__init__``/``index``/``mod`` file name dropped)."""
    parts = [part for part in path.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    if parts:
        stem = parts[-1].rsplit(".", 1)[0]
        parts[-1:] = [] if stem in ("__init__", "index", "mod") else [stem]
    return ".".join([*parts, func_name] if func_name else parts)


def search_document(view: str, code: str, doc: str, path: str, func_name: str) -> str:
    """The text a row is embedded and BM25-indexed as, in one of DOCUMENT_VIEWS (the module docstring)."""
    if view == "code":
        return code
    head = [dotted_location(path, func_name)] if view == "name+doc+code" else []
    return "\n".join([*head, *([doc] if doc else []), code])


def search_documents(table: pa.Table, view: str) -> list[str]:
    """search_document of every row of a table with code, path, func_name and doc (or query) columns."""
    docs = table[DOC if DOC in table.column_names else "query"].to_pylist()
    codes, paths, names = (table[name].to_pylist() for name in ("code", "path", "func_name"))
    columns = zip(codes, docs, paths, names, strict=True)
    return [
        search_document(view, code or "", doc or "", path or "", name or "")
        for code, doc, path, name in columns
    ]


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


# ---------------------------------------------------------------------------------------------
# Embedding the rows, chunk by chunk, into a memmap


def check_embeddings(vectors: np.ndarray, rows: int, dim: int, what: str) -> np.ndarray:
    """``vectors`` as float32 when the encoder returned an array [rows, dim]; else a ValueError naming both
    shapes (``what``: "code" or "query")."""
    if not isinstance(vectors, np.ndarray) or vectors.shape != (rows, dim):
        shape = getattr(vectors, "shape", None)
        raise ValueError(f"the encoder returned {what} embeddings of shape {shape}, expected ({rows}, {dim})")
    return vectors.astype(np.float32, copy=False)


@dataclass
class EmbeddedCorpus:
    """What embed_selection did: ``count`` vectors written (= FAISS ids 0..count-1), of ``rows_read`` rows."""

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


def embed_selection(
    shards: list[Path],
    selection: RowSelection,
    embed: EmbedFn,
    vectors_out: np.ndarray,
    meta_path: Path,
    chunk_rows: int,
    n_queries: int,
    seed: int,
    document: str = DOCUMENT_VIEWS[0],
) -> EmbeddedCorpus:
    """Embed the search documents (``document``: the view) of the ``selection``'s rows with non-empty code
    into ``vectors_out`` [N, D], in corpus order.

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
            optional = (START_LINE, SIGNATURE, SOURCE, LICENSE)
            columns = [*CORPUS_COLUMNS, "query", *(c for c in optional if c in names)]
            for table in selected_batches(shard, rows, columns, chunk_rows):
                done.rows_read += table.num_rows
                table = table.filter(pc.not_equal(pc.fill_null(table["code"], ""), ""))
                for query in table["query"].to_pylist():
                    done.sample_query(query, rng, n_queries)
                codes = search_documents(table, document)
                if codes:
                    vectors = check_embeddings(embed(codes, "code"), len(codes), dim, "code")
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


def open_embeddings(path: Path, rows: int, dim: int) -> np.memmap:
    """A float32 [rows, dim] .npy memmap at ``path`` with its disk space reserved (reserve_space)."""
    with storage.disk_space_errors(path):
        embedding_file = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        reserve_space(path)
    return embedding_file


def load_encoder(
    config: BuildIndexConfig, encoder_dir: str | Path, onnx_dir: str | Path | None = None
) -> tuple[EmbedFn, int]:
    """The encoder as ``config.runtime`` runs it: (embedding callable, dim); both indexing stages use it."""
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
    if config.embedding_cache:
        from semcode.embedding_cache import EmbeddingCache, cached_embed_fn

        setup = {
            "encoder": encoder_identity(encoder_dir),
            "runtime": config.runtime,
            "max_length": config.max_length,
        }
        cache = EmbeddingCache(config.embedding_cache, setup, dim)
        log(TAG, f"embedding cache {cache.folder}: {len(cache)} vectors of this encoder known")
        embed = cached_embed_fn(embed, cache)
    return embed, dim


# ---------------------------------------------------------------------------------------------
# Embedded shards (semcode.stages.embed_corpus writes them, semcode.stages.build_index indexes them)

SHARDS_MUST_AGREE = {  # manifest key -> what it is, for the error that names the shards disagreeing
    "shards": "shard count",
    "dim": "embedding dimension",
    "encoder_id": "encoder (the sha256 of its weights)",
    "runtime": "encoder runtime",
    "max_length": "tokens per text",
    "selection": "row selection (max_corpus, whole_sources, seed and the corpus they sampled)",
}


EmbeddedShard = tuple[Path, dict, np.ndarray]  # (directory, manifest, vectors memmap [count, dim])


def encoder_identity(encoder_dir: str | Path) -> str:
    """What tells two encoders apart: ``sha256:<digest of the weights>`` for a directory, else the alias."""
    from semcode.embed import encoder_digest

    path = Path(encoder_dir)
    return f"sha256:{encoder_digest(path)}" if path.is_dir() else str(encoder_dir)


def shard_manifest(
    config: BuildIndexConfig,
    selection: RowSelection,
    part: RowSelection,
    done: EmbeddedCorpus,
    shard: int,
    shards: int,
    dim: int,
    encoder: str = "",
    encoder_id: str = "",
) -> dict:
    """manifest.json of shard ``shard`` of ``shards``: ``part`` (split_selection) of the whole ``selection``,
    embedded as ``done`` says; read_shards checks a set of shards by it (SHARDS_MUST_AGREE)."""
    return {
        "shard": shard,
        "shards": shards,
        "dim": dim,
        "count": done.count,
        "rows_read": done.rows_read,
        "rows_selected": part.selected,
        "first_row": shard * selection.selected // shards,
        "encoder": encoder,
        "encoder_id": encoder_id or encoder,
        "runtime": config.runtime,
        "max_length": config.max_length,
        "per_source": dict(done.per_source),
        "embed_seconds": round(done.seconds, 3),
        "embed_per_s": round(done.count / done.seconds, 1) if done.seconds > 0 else 0.0,
        "selection": {
            "max_corpus": config.max_corpus,
            "whole_sources": list(config.whole_sources),
            "seed": config.seed,
            "selected": selection.selected,
            "corpus_rows": selection.corpus_rows,
            "sampled_by": selection.sampled_by,
            "source_rows": selection.source_rows,
        },
    }


def read_shards(shard_dirs: Sequence[str | Path], config: BuildIndexConfig) -> list[EmbeddedShard]:
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


def shards_summary(shards: list[EmbeddedShard]) -> tuple[RowSelection, EmbeddedCorpus]:
    """The whole row selection and what was embedded of it, from the manifests of ``shards`` (read_shards'
    output): the selection as every shard records it; the vectors, rows read, vectors per source and
    embedding seconds (pod-seconds, all shards) summed. The query sample is concat_shard_meta's."""
    chosen = shards[0][1]["selection"]
    selection = RowSelection(
        [], chosen["selected"], chosen["corpus_rows"], chosen["sampled_by"], chosen["source_rows"]
    )
    corpus = EmbeddedCorpus(
        count=sum(manifest["count"] for _, manifest, _ in shards),
        rows_read=sum(manifest["rows_read"] for _, manifest, _ in shards),
        seconds=sum(manifest["embed_seconds"] for _, manifest, _ in shards),
    )
    for _, manifest, _ in shards:
        corpus.per_source.update(manifest["per_source"])
    return selection, corpus


def concat_shard_meta(
    shards: list[EmbeddedShard], meta_path: Path, corpus: EmbeddedCorpus, n_queries: int, seed: int
) -> None:
    """The shards' metadata one after another into ``meta_path`` (Parquet, META_SCHEMA; row i = FAISS id i),
    and into ``corpus.queries`` the query sample a single pod's embed_selection draws: the same reservoir
    (up to ``n_queries``, seeded) over the same rows' queries in the same order."""
    rng = random.Random(seed)
    with pq.ParquetWriter(meta_path, META_SCHEMA, compression="zstd") as meta_writer:
        for shard_dir, _, _ in shards:
            for batch in pq.ParquetFile(shard_dir / META_FILE).iter_batches(batch_size=8192):
                meta_writer.write_table(pa.Table.from_batches([batch]).cast(META_SCHEMA))
                for query in batch.column(DOC).to_pylist():
                    corpus.sample_query(query, rng, n_queries)
