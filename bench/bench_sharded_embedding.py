"""Sharded vs single-pod corpus embedding of a run's corpus: the same vectors? how long each?

    .venv/bin/python bench/bench_sharded_embedding.py runs/<run-id>/artifacts/<pipeline-job> --shards 3

Takes a finished run's ingest corpus, encoder and export-onnx files and builds the index both ways with
the run's build_index settings (its config.json): ``semcode build-index --corpus`` (one process embeds
every selected row, as one pod would) and ``semcode embed-corpus --shard K`` for each of ``--shards``
shards, one after another (as kfp.local runs the ParallelFor; on a cluster they run side by side), then
``semcode build-index --embedded``. Prints a JSON object: each way's wall seconds (the shards' sum and
their largest, which is the fan-out's wall time when every shard has its own pod), whether the vectors
and the metadata rows are identical, and both indexes' recall@10 and search latency.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from semcode import config as cfg
from semcode.cluster.trainjob import config_flags
from semcode.corpus import BuildIndexConfig
from semcode.index import load_index

SEMCODE = str(Path(sys.executable).with_name("semcode"))


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("job", type=Path, help="runs/<run-id>/artifacts/<pipeline-job> of a finished run")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    job = args.job
    encoder = job / "train-encoder" / "encoder" / "encoder"
    corpus, pairs, onnx = job / "ingest" / "corpus", job / "ingest" / "pairs", job / "export-onnx" / "onnx"
    resolved = json.loads((job / "build-index" / "index" / "config.json").read_text())["config"]
    config = cfg.from_dict(BuildIndexConfig, resolved, source="the run's build-index config.json")
    common = ["--encoder", str(encoder), "--onnx", str(onnx), *config_flags(config)]
    scratch = args.out or Path(tempfile.mkdtemp(prefix="semcode-sharded-"))

    single = scratch / "single"
    single_seconds = timed(
        [
            SEMCODE,
            "build-index",
            *common,
            "--corpus",
            str(corpus),
            "--pairs",
            str(pairs),
            "--out",
            str(single),
        ]
    )

    shard_dirs, shard_seconds = [], []
    for shard in range(args.shards):
        out = scratch / f"shard-{shard}"
        shard_seconds.append(
            timed(
                [SEMCODE, "embed-corpus", *common, "--corpus", str(corpus), "--shards", str(args.shards)]
                + ["--shard", str(shard), "--out", str(out)]
            )
        )
        shard_dirs.append(out)
    assembled = scratch / "assembled"
    assembly_seconds = timed(
        [
            SEMCODE,
            "build-index",
            *common,
            "--shards",
            str(args.shards),
            "--pairs",
            str(pairs),
            "--out",
            str(assembled),
        ]
        + ["--embedded", *map(str, shard_dirs)]
    )

    vectors = np.concatenate([np.load(d / "embeddings.npy") for d in shard_dirs])
    single_index = load_index(single / "index.faiss")  # Flat at the local preset's size: the vectors as added
    single_vectors = single_index.reconstruct_n(0, single_index.ntotal)
    single_meta = pq.read_table(single / "index_meta.parquet")
    assembled_meta = pq.read_table(assembled / "index_meta.parquet")
    single_metrics = json.loads((single / "metrics.json").read_text())
    assembled_metrics = json.loads((assembled / "metrics.json").read_text())
    print(
        json.dumps(
            {
                "rows": len(vectors),
                "shards": args.shards,
                "single_pod_seconds": round(single_seconds, 1),
                "shard_seconds": [round(s, 1) for s in shard_seconds],
                "sharded_sum_seconds": round(sum(shard_seconds) + assembly_seconds, 1),
                "sharded_wall_one_pod_per_shard": round(max(shard_seconds) + assembly_seconds, 1),
                "assembly_seconds": round(assembly_seconds, 1),
                "same_vectors": bool(np.array_equal(vectors, single_vectors)),
                "max_abs_difference": float(np.abs(vectors - single_vectors).max())
                if len(vectors) == len(single_vectors)
                else None,
                "same_metadata_rows": single_meta.equals(assembled_meta),
                "recall@10": [single_metrics["recall@10"], assembled_metrics["recall@10"]],
                "search_p50_ms": [
                    single_metrics["search_latency"].get("p50_ms"),
                    assembled_metrics["search_latency"].get("p50_ms"),
                ],
                "scratch": str(scratch),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
