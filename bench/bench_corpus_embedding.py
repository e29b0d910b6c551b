"""Corpus embedding throughput: semcode's int8 path against the two baselines, measured in one run.

Embeds the same search documents (semcode.corpus.search_document, the default view) of a seeded sample of
this machine's stdlib and site-packages definitions (ingest's extraction, every definition) with:

- ``sentence-transformers fp32``: all-MiniLM-L6-v2 off the shelf (SentenceTransformer.encode, batch 32,
  max_seq_length = the max length asked for) on every core;
- ``onnxruntime int8, plain``: the same int8 export semcode ships, one ``InferenceSession`` with default
  options, one text per call in one thread (what a user of ONNX Runtime writes first);
- ``semcode int8``: semcode.embed.OnnxEncoder as build_index runs it (one text per call, a caller per core,
  graph rewrites tuned), at each max length asked for;
- ``semcode int8 + cache, second pass``: the same documents again through semcode.embedding_cache (every
  vector known: what a second run of an unchanged corpus costs), and with 10% of the documents changed.

The int8 export is made here from the same MiniLM weights (semcode.export), so nothing but the runner differs.
Usage:  .venv/bin/python bench/bench_corpus_embedding.py [--rows 2000] [--max-lengths 128 64]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from semcode.config import available_cores
from semcode.corpus import DOCUMENT_VIEWS, search_document
from semcode.data.sources import read_source
from semcode.data.sources.rows import ExtractOptions
from semcode.data.sources.spec import parse_spec
from semcode.embed import OnnxEncoder
from semcode.embedding_cache import EmbeddingCache, cached_embed_fn
from semcode.models.encoder import load_pretrained, resolve_checkpoint


def sample_documents(rows: int, seed: int) -> list[str]:
    documents = []
    for spec in ("python:stdlib", "python:site-packages"):
        corpus = read_source(parse_spec(spec), ExtractOptions(workers=1)).corpus
        documents += [
            search_document(DOCUMENT_VIEWS[0], row["code"], row["query"], row["path"], row["func_name"])
            for row in corpus
            if row["code"]
        ]
    random.Random(seed).shuffle(documents)
    return documents[:rows]


def export_int8(out: Path) -> tuple[Path, Path]:
    from semcode import export

    encoder = load_pretrained("minilm")
    export.export_tower(encoder.tower, out / "encoder.onnx")
    export.quantize_int8(out / "encoder.onnx", out / "encoder.int8.onnx")
    return out / "encoder.int8.onnx", resolve_checkpoint("minilm") / "tokenizer.json"


def timed(name: str, embed, documents: list[str], table: list) -> np.ndarray:
    started = time.perf_counter()
    vectors = embed(documents)
    seconds = time.perf_counter() - started
    table.append((name, len(documents) / seconds, seconds))
    print(f"{name:48s} {len(documents) / seconds:8.1f} functions/s ({seconds:.1f} s)", flush=True)
    return vectors


def measure(
    model: Path, tokenizer: Path, max_length: int, documents: list[str], cache_dir: Path, table: list
) -> None:
    """The four runners at one max length (the module docstring)."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(resolve_checkpoint("minilm")), device="cpu")
    st.max_seq_length = max_length
    timed(
        f"sentence-transformers fp32, L{max_length}", lambda d: st.encode(d, batch_size=32), documents, table
    )
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    encoder = OnnxEncoder(model, tokenizer, max_length, threads=0)

    def plain_int8(texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            ids, mask = encoder.tokenize([text])
            rows.append(plain.run(None, {"input_ids": ids, "attention_mask": mask})[0][0])
        return np.stack(rows)

    timed(f"onnxruntime int8 plain, L{max_length}", plain_int8, documents, table)
    first = timed(f"semcode int8, L{max_length}", encoder.encode, documents, table)
    cache = EmbeddingCache(cache_dir, {"max_length": max_length}, encoder.dim)
    embed = cached_embed_fn(lambda texts, kind: encoder.encode(texts), cache)
    embed(documents, "code")
    again = timed(
        f"semcode int8 + cache (all known), L{max_length}", lambda d: embed(d, "code"), documents, table
    )
    assert np.array_equal(first, again)
    changed = [d + "\n# changed" if i % 10 == 0 else d for i, d in enumerate(documents)]
    timed(f"semcode int8 + cache (10% changed), L{max_length}", lambda d: embed(d, "code"), changed, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--max-lengths", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    documents = sample_documents(args.rows, args.seed)
    print(f"{len(documents)} documents, {available_cores()} cores", flush=True)
    table: list = []
    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer = export_int8(Path(scratch))
        for max_length in args.max_lengths:
            measure(model, tokenizer, max_length, documents, Path(scratch) / f"cache-{max_length}", table)
    print("\n| runner | functions/s | seconds |\n|---|---|---|")
    for name, rate, seconds in table:
        print(f"| {name} | {rate:.1f} | {seconds:.1f} |")
    print(f"\n{sys.argv}")


if __name__ == "__main__":
    main()
