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

The rest describes the one-pod way; from the index on, both are the same (finish_index). Which rows, their
metadata and their embedding are semcode.corpus's (the library both ways share, with this stage's config).

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
    out/bm25/                BM25 over the same rows' code (bm25s' own format; semcode.retrieval.BM25Index,
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
works with any ``EmbedFn`` (the tests use that). It and ``finish_index`` live in the library
(semcode.indexing), which semcode.stages.index also builds its index-only bundles with.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from semcode import config as cfg
from semcode import index as faiss_index
from semcode import storage
from semcode.contract import ONNX_HELP
from semcode.corpus import (
    META_FILE,
    BuildIndexConfig,
    concat_shard_meta,
    corpus_shards,
    encoder_identity,
    load_encoder,
    read_shards,
    shards_summary,
)
from semcode.embed import EmbedFn
from semcode.indexing import (  # the library both ways of building share (and semcode.stages.index)
    TAG,
    finish_index,
    index_corpus,
    plan_factory,
    prepare_out,
    sample_test_queries,
)
from semcode.progress import log

# ---------------------------------------------------------------------------------------------
# Index assembly from embedded shards (semcode.stages.embed_corpus writes them; semcode.corpus reads them)


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
    "query"); with ``encoder_id`` (semcode.corpus.encoder_identity) the shards must have been embedded by that encoder.
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
    selection, corpus = shards_summary(shards)
    if corpus.count == 0:
        raise ValueError(f"the {len(shards)} embedded shard(s) hold no vectors (every row had empty code)")
    factory = plan_factory(config, corpus.count, dim)
    queries = sample_test_queries(pairs_dir, config.recall_queries, config.seed) if pairs_dir else None
    log(
        TAG,
        f"{corpus.count} vectors of {len(shards)} embedded shard(s) ({selection.sampled_by}), dim {dim}: "
        f"index {factory!r}, FAISS on the {'GPU' if faiss_index.resolve_use_gpu(config.use_gpu) else 'CPU'}",
    )

    out = prepare_out(out_dir)
    # 1. The shards' metadata one after another (row i = FAISS id i), and the query sample single-pod
    #    build-index draws: the same reservoir over the same rows' queries in the same order.
    with storage.atomic_output(out / META_FILE) as meta_partial:
        concat_shard_meta(shards, meta_partial, corpus, config.recall_queries, config.seed)
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
        encoder_id=encoder_id or "",
    )


@storage.atomic_stage
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
    as they are. ``encoder_dir`` may be a train-encoder checkpoint."""
    config.validate()
    from semcode.embed import check_encoder_spec
    from semcode.train.checkpoints import encoder_from_checkpoint

    encoder_spec = str(encoder_dir)  # as given: recorded as the encoder
    encoder_dir = encoder_from_checkpoint(encoder_spec)

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
            encoder=encoder_spec,
            encoder_id=encoder_identity(encoder_dir),
        )
    return index_corpus(
        config,
        embed,
        dim,
        corpus_dir,
        out_dir,
        pairs_dir=pairs_dir,
        encoder=encoder_spec,
        encoder_id=encoder_identity(encoder_dir),
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
        "--encoder",
        required=True,
        metavar="DIR",
        help="encoder directory (train-encoder output), one of its checkpoints (checkpoints/step-NNNNNN) or minilm",
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
