"""Build the searchable index of a corpus: embed its rows' search documents, build the FAISS index the
corpus size calls for, save it with its metadata and BM25 lexical index, measure recall@10 against exact
search and the search latency, and write metrics.json and config.json.

What semcode.stages.build_index runs (its module docstring describes the outputs and every choice) and
what semcode.stages.index reuses for an index-only bundle: ``index_corpus`` (one corpus, embedded here
with any EmbedFn) and ``finish_index`` (from embedded rows on; the sharded way ends there too).
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semcode import config as cfg
from semcode import index as faiss_index
from semcode import storage
from semcode.config import ConfigError
from semcode.contract import IVFDATA_FILE, LEXICAL_DIR
from semcode.corpus import (
    CHUNK_BATCHES,
    DOCUMENT_VIEWS,
    META_FILE,
    BuildIndexConfig,
    EmbeddedCorpus,
    RowSelection,
    check_embeddings,
    corpus_shards,
    embed_selection,
    open_embeddings,
    search_documents,
    select_rows,
)
from semcode.data.pairs import read_split
from semcode.embed import EmbedFn
from semcode.progress import log
from semcode.retrieval import BM25Index

if TYPE_CHECKING:
    import faiss

TAG = "build-index"
INDEX_FILE = "index.faiss"
RECALL_K = 10


# ---------------------------------------------------------------------------------------------
# Inputs, checked before anything expensive (the corpus' own: semcode.corpus.corpus_shards)


def sample_test_queries(pairs_dir: str | Path, count: int, seed: int) -> list[str]:
    """A seeded sample of the non-empty queries of pairs/test."""
    if not sorted((Path(pairs_dir) / "test").glob("part-*.parquet")):
        raise FileNotFoundError(f"pairs directory {pairs_dir} has no test/part-*.parquet shards")
    queries = [q for q in read_split(pairs_dir, "test", columns=["query"]).column("query").to_pylist() if q]
    if len(queries) > count:
        queries = random.Random(seed).sample(queries, count)
    return queries


# ---------------------------------------------------------------------------------------------
# Embed, build, save, measure


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux /proc), or None elsewhere."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def write_lexical_index(meta_path: Path, out_dir: Path, document: str = DOCUMENT_VIEWS[0]) -> dict:
    """BM25 over the search document (``document``: the view) of every indexed row, read back from ``meta_path`` (so row i = FAISS id i), saved
    in bm25s' own format in ``out_dir/bm25`` (semcode.contract.LEXICAL_DIR); returns what bundle.json
    ``lexical`` says of it, with its size and build time."""
    started = time.perf_counter()
    columns = ["code", "doc", "path", "func_name"]
    batches = pq.ParquetFile(meta_path).iter_batches(batch_size=8192, columns=columns)
    index = BM25Index(
        text for batch in batches for text in search_documents(pa.Table.from_batches([batch]), document)
    )
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
    encoder_id: str = "",
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
            corpus = embed_selection(
                shards,
                selection,
                embed,
                embedding_file,
                meta_partial,
                chunk_rows,
                config.recall_queries,
                config.seed,
                config.document,
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
            encoder_id=encoder_id,
        )
        del embedding_file  # release the memmap before its directory goes
    return metrics


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
    encoder_id: str = "",
) -> dict:
    """Build the index over ``parts`` (the embedded rows of ``out``/index_meta.parquet, in its order; one
    array, or the shards'), save it, load it back as search does, measure recall@10 and latency, write
    the lexical index, metrics.json and config.json; returns the metrics. Both ways of building (one pod,
    or shards) end here."""
    on_gpu = faiss_index.resolve_use_gpu(config.use_gpu)
    index_path = out / INDEX_FILE
    # 2. Build the index, set its search knobs (they are saved with it) and save it.
    search_params, index_seconds, index_type = build_and_save(config, parts, factory, index_path)

    # 3. Load it back as a search service would, measuring its memory.
    rss_before = rss_bytes()
    index = faiss_index.load_index(index_path)
    rss_after = rss_bytes()

    # 4. Recall@10 against exact search and the search latency, on real queries (query tower).
    recall_metrics, recall, latency = measure_search(
        config, embed, dim, parts, index, corpus, queries, pairs_dir
    )
    ivfdata = out / IVFDATA_FILE

    metrics = {
        "factory": factory,
        "index_type": index_type,
        "metric": "inner_product",
        "ntotal": int(index.ntotal),
        "dim": dim,
        "search_params": search_params,
        **recall_metrics,
        "embed_seconds": round(corpus.seconds, 3),
        "embed_per_s": round(corpus.count / corpus.seconds, 1) if corpus.seconds > 0 else 0.0,
        "index_seconds": round(index_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "index_file_bytes": index_path.stat().st_size,
        "ivf_on_disk": config.ivf_on_disk,
        "ivfdata_file_bytes": ivfdata.stat().st_size if ivfdata.is_file() else 0,
        "meta_file_bytes": (out / META_FILE).stat().st_size,
        "lexical": write_lexical_index(out / META_FILE, out, config.document),
        "index_memory_mb": None if rss_before is None else round((rss_after - rss_before) / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "faiss_gpu": on_gpu,
        "corpus_rows": selection.corpus_rows,
        "coverage": coverage(corpus, selection),
        "rows_read": corpus.rows_read,
        "rows_skipped_empty_code": corpus.rows_read - corpus.count,
        "encoder": encoder,
        # semcode.corpus.encoder_identity of it: evaluate takes the index's vectors only from the same weights
        "encoder_id": encoder_id,
        "embedded_in_shards": shards,  # None: embedded here, in one pod
        # how each row became the text its vector is of (semcode.corpus.search_document)
        "document": config.document,
        "document_max_length": config.max_length,  # 0: the encoder's own max_length
    }
    with storage.atomic_output(out / "metrics.json") as metrics_partial:
        metrics_partial.write_text(json.dumps(metrics, indent=2) + "\n")
    with storage.atomic_output(out / cfg.RESOLVED_CONFIG_NAME) as config_partial:
        cfg.save_resolved(config, out, config_partial.name)
    log(
        TAG,
        f"{index_type} over {corpus.count} vectors: recall@{recall_metrics['recall_k']} {recall:.3f}, search "
        f"p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms -> {out}",
    )
    return metrics


def build_and_save(
    config: BuildIndexConfig, parts: list[np.ndarray], factory: str, index_path: Path
) -> tuple[dict, float, str]:
    """Build the ``factory`` index over ``parts``, set its search knobs (they are saved with it) and save it
    at ``index_path``; returns (its search params, the build seconds, its type)."""
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
    return search_params, index_seconds, index_type


def measure_search(
    config: BuildIndexConfig,
    embed: EmbedFn,
    dim: int,
    parts: list[np.ndarray],
    index: faiss.Index,
    corpus: EmbeddedCorpus,
    queries: list[str] | None,
    pairs_dir: str | Path | None,
) -> tuple[dict, float, dict]:
    """Recall@10 of ``index`` against exact search over ``parts`` and its search latency, on ``queries``
    (pairs/test's), else the corpus' own sampled queries, else sampled code vectors; returns (the
    metrics' recall and latency entries, the recall, the latency)."""
    if queries is None:
        queries = corpus.queries
        query_source = f"corpus query column ({corpus.queries_seen} indexed rows have one)"
    else:
        query_source = f"{pairs_dir}/test query column"
    if queries:
        query_vectors = check_embeddings(embed(queries, "query"), len(queries), dim, "query")
    else:  # no natural language anywhere: the code vectors of sampled corpus rows stand in
        rows = np.sort(np.random.default_rng(config.seed).permutation(corpus.count)[: config.recall_queries])
        query_vectors = faiss_index.take_rows(parts, rows)
        query_source = "corpus code vectors (no queries found)"
    k = min(RECALL_K, corpus.count)
    _, exact_ids = faiss_index.exact_search(parts, query_vectors, k)
    _, approx_ids = faiss_index.search(index, query_vectors, k)
    recall = faiss_index.recall_at_k(approx_ids, exact_ids, k)
    latency = faiss_index.measure_latency(index, query_vectors, k)
    recall_metrics = {
        f"recall@{RECALL_K}": round(recall, 4),
        "recall_k": k,
        "recall_queries": len(query_vectors),
        "recall_query_source": query_source,
        "search_latency": {
            name: round(value, 4) if isinstance(value, float) else value for name, value in latency.items()
        },
    }
    return recall_metrics, recall, latency
