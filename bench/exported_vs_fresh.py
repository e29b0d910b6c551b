"""The export-onnx stage's int8 file against a fresh export of the same encoder: the vectors evaluate,
build-index and train-decoder now embed with (``exported=``) against those they embedded with before.

    .venv/bin/python bench/exported_vs_fresh.py runs/<run-id>/artifacts/<pipeline-job>   # a semcode run's
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from semcode.embed import load_embed_fn


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("job", type=Path, help="a pipeline job folder: train-encoder/, export-onnx/, ingest/")
    parser.add_argument("--texts", type=int, default=200, help="test codes to embed both ways")
    args = parser.parse_args()
    encoder = args.job / "train-encoder" / "encoder" / "encoder"
    shard = sorted((args.job / "ingest" / "pairs" / "test").glob("*.parquet"))[0]
    codes = pq.read_table(shard, columns=["code"]).column("code").to_pylist()[: args.texts]
    fresh, _ = load_embed_fn(str(encoder), runtime="onnx-int8")
    shipped, _ = load_embed_fn(str(encoder), runtime="onnx-int8", exported=args.job / "export-onnx" / "onnx")
    a, b = fresh(codes, "code"), shipped(codes, "code")
    print(
        json.dumps(
            {
                "texts": len(codes),
                "max_abs_diff": float(np.abs(a - b).max()),
                "min_cosine": float((a * b).sum(1).min()),
            }
        )
    )


if __name__ == "__main__":
    main()
