"""Stage embed_corpus: embed one shard of the corpus with the encoder's code tower, for build_index to index.

The first half of build_index, cut into shards so that the pipeline embeds a big corpus on many GPU pods at
once (a dsl.ParallelFor over the shard numbers ``plan`` returns), after which build_index trains the index
once and adds every shard (``semcode build-index --embedded ...``, semcode.stages.build_index.index_shards).

It takes build_index's own config (semcode.corpus.BuildIndexConfig, the same preset section,
``build_index``): the rows are build_index's selection (semcode.corpus.select_rows: every row of
``corpus/part-*.parquet``, or with ``max_corpus`` the seeded sample spread over the sources,
``whole_sources`` whole), and the encoder runs as build_index runs it (``runtime``, ``encode_batch_size``,
``max_length``, ``device``; with an onnx runtime, export_onnx's files). The selected rows are split into
``shards`` contiguous runs in corpus order (semcode.corpus.split_selection): of S selected rows, shard k
embeds ranks [k*S//N, (k+1)*S//N). The shards one after another are therefore, row for row and vector for
vector, what one build_index pod embeds, and the index built from them has the same FAISS ids. Rows whose
code is empty are skipped, as there.

``plan`` picks the shard count: ``shards`` when set, else one shard per ``shard_rows`` selected rows
(from the Parquet metadata alone: nothing is read), never more shards than rows; it returns the
ParallelFor's items, ``{"shard": k, "shards": N}`` each. Writes::

    out/embeddings.npy       float32 [count, dim], L2-normalised; row i = row i of index_meta.parquet
    out/index_meta.parquet   semcode.contract.META_COLUMNS of the shard's rows (semcode.corpus.META_SCHEMA)
    out/manifest.json        semcode.corpus.shard_manifest: shard, shards, dim, count, rows_read,
                             rows_selected, first_row (the shard's first rank in the selection), encoder, encoder_id (sha256 of the weights, or
                             the alias), runtime, max_length, per_source {source: vectors}, embed_seconds,
                             embed_per_s and ``selection``: {max_corpus, whole_sources, seed, selected,
                             corpus_rows, sampled_by, source_rows}, which build_index checks every shard
                             agrees on
    out/config.json          the resolved config (build_index's)

The vectors go through a memory-mapped file (disk space reserved first), the files through temporary
names renamed when complete (semcode.storage.atomic_output).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from semcode import config as cfg
from semcode import storage
from semcode.config import ConfigError
from semcode.contract import ONNX_HELP
from semcode.corpus import (
    CHUNK_BATCHES,
    META_FILE,
    SHARD_MANIFEST_FILE,
    SHARD_VECTORS_FILE,
    BuildIndexConfig,
    check_shard,
    corpus_shards,
    embed_selection,
    encoder_identity,
    load_encoder,
    open_embeddings,
    select_rows,
    selected_rows,
    shard_manifest,
    split_selection,
)
from semcode.embed import EmbedFn
from semcode.progress import log

TAG = "embed-corpus"
COPY_ROWS = 65_536  # rows per block when a shard's vectors are trimmed to the rows with code


def plan(config: BuildIndexConfig, corpus_dir: str | Path) -> list[dict[str, int]]:
    """The shards to embed, ``{"shard": k, "shards": N}`` for k in 0..N-1: N = ``config.shards``, or one
    per ``config.shard_rows`` selected rows when it is 0, at most one per selected row. Each item carries
    N itself: an iteration of a ParallelFor sees its own item, not the list."""
    config.validate()
    selected = selected_rows(corpus_dir, config.max_corpus)
    shards = config.shards or math.ceil(selected / config.shard_rows)
    shards = max(1, min(shards, selected))
    log(TAG, f"{selected} selected corpus rows: {shards} shard(s)")
    return [{"shard": shard, "shards": shards} for shard in range(shards)]


def trimmed(path: Path, rows: int) -> None:
    """Cut the .npy file ``path`` to its first ``rows`` rows (rows with empty code were skipped), copying
    in blocks so memory stays flat."""
    full = np.load(path, mmap_mode="r")
    if len(full) == rows:
        return
    short_path = path.with_name(path.name + ".short")
    short = open_embeddings(short_path, rows, full.shape[1])
    for start in range(0, rows, COPY_ROWS):
        end = min(start + COPY_ROWS, rows)
        short[start:end] = full[start:end]
    short.flush()
    del short, full
    short_path.replace(path)


def embed_shard(
    config: BuildIndexConfig,
    embed: EmbedFn,
    dim: int,
    corpus_dir: str | Path,
    out_dir: str | Path,
    shard: int,
    shards: int,
    encoder: str = "",
    encoder_id: str = "",
) -> dict:
    """Embed shard ``shard`` of ``shards`` of the corpus' selected rows with ``embed`` (kind "code") into
    ``out_dir``; returns the manifest. ``embed`` returns ``dim``-dimensional vectors."""
    config.validate()
    check_shard(shard, shards)
    files = corpus_shards(corpus_dir)
    selection = select_rows(files, config.max_corpus, config.seed, config.whole_sources)
    part = split_selection(selection, files, shard, shards)
    log(
        TAG,
        f"shard {shard} of {shards}: {part.selected} of the {selection.selected} selected rows "
        f"({selection.sampled_by}) of {selection.corpus_rows}, dim {dim}",
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / SHARD_MANIFEST_FILE, out / SHARD_VECTORS_FILE, out / META_FILE):
        stale.unlink(missing_ok=True)
    with (
        storage.atomic_output(out / SHARD_VECTORS_FILE) as vectors_partial,
        storage.atomic_output(out / META_FILE) as meta_partial,
    ):
        vectors = open_embeddings(vectors_partial, part.selected, dim)
        done = embed_selection(
            files,
            part,
            embed,
            vectors,
            meta_partial,
            config.encode_batch_size * CHUNK_BATCHES,
            0,  # no query sample: build_index draws it from the shards' metadata
            config.seed,
            config.document,
        )
        vectors.flush()
        del vectors
        trimmed(vectors_partial, done.count)
    manifest = shard_manifest(config, selection, part, done, shard, shards, dim, encoder, encoder_id)
    with storage.atomic_output(out / SHARD_MANIFEST_FILE) as manifest_partial:
        manifest_partial.write_text(json.dumps(manifest, indent=2) + "\n")
    with storage.atomic_output(out / cfg.RESOLVED_CONFIG_NAME) as config_partial:
        cfg.save_resolved(config, out, config_partial.name)
    log(
        TAG,
        f"shard {shard} of {shards}: {done.count} vectors ({manifest['embed_per_s']}/s) -> {out}",
    )
    return manifest


@storage.atomic_stage
def run(
    config: BuildIndexConfig,
    encoder_dir: str | Path,
    corpus_dir: str | Path,
    out_dir: str | Path,
    shard: int,
    shards: int,
    onnx_dir: str | Path | None = None,
) -> dict:
    """Embed shard ``shard`` of ``shards`` of ``corpus_dir`` with the code tower of ``encoder_dir`` (or
    ``minilm``) into ``out_dir``; ``onnx_dir``: export_onnx's output of that encoder (onnx runtimes)."""
    config.validate()
    from semcode.embed import check_encoder_spec

    # 1. Every input checked before the model loads.
    check_shard(shard, shards)
    check_encoder_spec(str(encoder_dir))
    corpus_shards(corpus_dir)
    # 2. The encoder, as build_index runs it; 3. the shard embedded.
    embed, dim = load_encoder(config, encoder_dir, onnx_dir)
    return embed_shard(
        config,
        embed,
        dim,
        corpus_dir,
        out_dir,
        shard,
        shards,
        encoder=str(encoder_dir),
        encoder_id=encoder_identity(encoder_dir),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode embed-corpus",
        description="Embed one shard of the corpus (build_index's row selection, split into contiguous "
        "shards) with the encoder's code tower; semcode build-index --embedded indexes the shards.",
        epilog=(
            "example:\n"
            "  for k in 0 1 2; do semcode embed-corpus --encoder runs/encoder \\\n"
            "      --corpus runs/ingest/corpus --shard $k --shards 3 --out runs/embed-$k; done\n"
            "  semcode build-index --encoder runs/encoder --embedded runs/embed-* --out runs/index"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--encoder", required=True, metavar="DIR", help="encoder directory (train-encoder output) or minilm"
    )
    parser.add_argument(
        "--corpus", required=True, metavar="DIR", help="corpus directory of part-*.parquet shards"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for the shard")
    parser.add_argument("--shard", required=True, type=int, metavar="K", help="this shard's number, 0..N-1")
    parser.add_argument("--onnx", default=None, metavar="DIR", help=ONNX_HELP)
    cfg.add_arguments(parser, BuildIndexConfig)  # --shards N among them: the shard count
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(BuildIndexConfig, args, section="build_index")
        if config.shards < 1:
            raise ConfigError("--shards (the shard count) must be >= 1 for one shard's embedding")
        run(config, args.encoder, args.corpus, args.out, args.shard, config.shards, onnx_dir=args.onnx)
    except (*cfg.BAD_INPUT_ERRORS, OSError) as error:  # OSError: a full disk, named by its path
        return cfg.bad_input("embed-corpus", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
