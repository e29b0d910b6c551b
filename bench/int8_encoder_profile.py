"""Where the int8 encoder's time goes, and what the corpus-embedding settings buy (issue 30).

Two measurements on an export-onnx output (``encoder.int8.onnx`` and its ``tokenizer.json``):

1. ONNX Runtime's own profile of the int8 graph, one text of ``--tokens`` tokens per call on one thread
   (``SessionOptions.enable_profiling``): microseconds per text by operator type, and the same at a batch of
   ``--batch`` texts (per text), which shows whether batching would pay.
2. Texts/s of real corpus code, medians of ``--repeats`` passes, one text per call on a caller per core:
   each text tokenised on its own (one tokenizer call per text, as before ``TOKENIZE_BLOCK``), and
   ``semcode.embed.OnnxEncoder`` (tokenised ``TOKENIZE_BLOCK`` at a time) at each of ``--lengths``.

Usage:
    .venv/bin/python bench/int8_encoder_profile.py --onnx RUN/export-onnx/onnx --corpus RUN/ingest/corpus
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq

from semcode.config import available_cores
from semcode.embed import DISABLED_OPTIMIZERS, OnnxEncoder


def profile(model: Path, batch: int, tokens: int, calls: int) -> dict[str, float]:
    """Microseconds per text by operator type: ``calls`` runs of ``batch`` random texts of ``tokens``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(
            str(model),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
        )
        ids = np.random.default_rng(0).integers(1000, 5000, size=(batch, tokens), dtype=np.int64)
        for _ in range(calls):
            session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / calls / batch
    return dict(per_op.most_common())


def texts_per_second(encode, texts: list[str], repeats: int) -> float:
    encode(texts[:50])  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode(texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def one_tokenizer_call_per_text(encoder: OnnxEncoder):
    """One text per call on ``encoder.callers`` threads, each text tokenised on its own."""

    def encode(texts: list[str]) -> np.ndarray:
        with ThreadPoolExecutor(encoder.callers) as pool:
            return np.stack(list(pool.map(lambda text: encoder.run(*encoder.tokenize([text]))[0], texts)))

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True, help="export-onnx output folder")
    parser.add_argument("--corpus", type=Path, required=True, help="ingest corpus/ folder (part-*.parquet)")
    parser.add_argument("--texts", type=int, default=1200)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 56])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = args.onnx / "encoder.int8.onnx", args.onnx / "tokenizer.json"

    for batch in (1, args.batch):
        per_op = profile(model, batch, args.tokens, max(2, 200 // batch))
        total = sum(per_op.values())
        print(f"\nint8 graph, {batch} x {args.tokens} tokens, 1 thread: {total:.0f} us per text")
        for op, us in list(per_op.items())[:8]:
            print(f"  {op:28s} {us:8.0f} us  {us / total:5.1%}")

    shard = sorted(args.corpus.glob("part-*.parquet"))[0]
    texts = pq.read_table(shard, columns=["code"]).column("code").to_pylist()[: args.texts]
    cores = available_cores()
    print(
        f"\n{len(texts)} functions of {shard.name}, one text per call, {cores} callers, medians of {args.repeats}:"
    )
    first = OnnxEncoder(model, tokenizer, args.lengths[0], threads=cores, callers=cores)
    rate = texts_per_second(one_tokenizer_call_per_text(first), texts, args.repeats)
    print(f"  {args.lengths[0]} tokens, one tokenizer call per text: {rate:.0f} texts/s")
    for length in args.lengths:
        encoder = OnnxEncoder(model, tokenizer, length, threads=cores, callers=cores)
        rate = texts_per_second(encoder.encode, texts, args.repeats)
        print(f"  {length} tokens, OnnxEncoder (TOKENIZE_BLOCK at a time): {rate:.0f} texts/s")


if __name__ == "__main__":
    main()
