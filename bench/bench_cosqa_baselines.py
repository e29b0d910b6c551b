"""Baselines on CoSQA dev (500 queries x 6,267 functions): BM25 and all-MiniLM-L6-v2 zero-shot, with timings.

    .venv/bin/python bench/bench_cosqa_baselines.py                     # BM25 + MiniLM, both protocols
    .venv/bin/python bench/bench_cosqa_baselines.py --no-minilm         # BM25 only (seconds)
    .venv/bin/python bench/bench_cosqa_baselines.py --benchmarks-dir ../shared/benchmarks --device cuda

Reference points (benchmarks README, CoSQA *test* split): BM25 MRR 0.33, MiniLM zero-shot 0.54.
It also times the two ways of getting BM25 scores for every (query, code) with bm25s: ``get_scores``
per query (what semcode.evaluation uses) and ``retrieve(k=all)``, on CoSQA and on 3,000 x 3,000.
Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from semcode.evaluation import dot_score_blocks, protocol_ranks, retrieval_metrics
from semcode.retrieval import BM25Index
from semcode.suites import cosqa_suite


def seconds_since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def rank_all(score_block, suite, n_distractors: int, seed: int) -> tuple[dict, float]:
    start = time.perf_counter()
    ranked = protocol_ranks(
        score_block, len(suite.queries), len(suite.codes), suite.gold, n_distractors=n_distractors, seed=seed
    )
    return {protocol: retrieval_metrics(r.ranks) for protocol, r in ranked.items()}, seconds_since(start)


def bm25_speed(queries: list[str], codes: list[str]) -> dict:
    """Seconds to score every query against every code: get_scores per query vs retrieve(k=all)."""
    start = time.perf_counter()
    index = BM25Index(codes)
    result = {"queries": len(queries), "codes": len(codes), "index_s": seconds_since(start)}
    start = time.perf_counter()
    per_query = index.scores(queries)
    result["get_scores_s"] = seconds_since(start)
    start = time.perf_counter()
    tokens = [index.tokens(q) or [""] for q in queries]  # "" is bm25s' empty token: an all-zero query
    docs, scores = index.retriever.retrieve(tokens, k=len(codes), show_progress=False)
    result["retrieve_k_all_s"] = seconds_since(start)
    dense = np.zeros_like(per_query)
    np.put_along_axis(dense, docs, scores, axis=1)
    result["same_scores"] = bool(np.allclose(dense, per_query, atol=1e-5))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--benchmarks-dir", default=None, help="folder with cosqa/ (default: ../shared/benchmarks)"
    )
    parser.add_argument("--no-minilm", action="store_true", help="BM25 only")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=0, help="tokens per text (0 = MiniLM's own, 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-distractors", type=int, default=999)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    suite = cosqa_suite(args.benchmarks_dir)
    report: dict = {
        "suite": {
            "name": suite.name,
            "source": suite.source,
            "queries": len(suite.queries),
            "candidates": len(suite.codes),
        },
        "cpu_count": os.cpu_count(),
        "reference_test_split_mrr": {"bm25": 0.33, "minilm": 0.54},
    }

    start = time.perf_counter()
    index = BM25Index(suite.codes)
    index_s = seconds_since(start)
    metrics, rank_s = rank_all(
        lambda s, e: index.scores(suite.queries[s:e]), suite, args.n_distractors, args.seed
    )
    report["bm25"] = {"metrics": metrics, "index_s": index_s, "score_and_rank_s": rank_s}
    print(f"bm25: full MRR {metrics['full']['mrr']:.4f} ({rank_s}s)", file=sys.stderr)

    report["bm25_speed"] = {
        "cosqa_500x6267": bm25_speed(suite.queries, suite.codes),
        "synthetic_3000x3000": bm25_speed((suite.queries * 6)[:3000], suite.codes[:3000]),
    }

    if not args.no_minilm:
        import torch

        from semcode.models.encoder import encode_texts, load_hf_tokenizer, load_pretrained

        start = time.perf_counter()
        model = load_pretrained("minilm").to(args.device).eval()
        tokenizer = load_hf_tokenizer("minilm")
        load_s = seconds_since(start)
        max_length = args.max_length or None
        timings = {
            "load_s": load_s,
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "max_length": max_length or model.max_length,
        }
        embeddings = {}
        for kind, texts in (("query", suite.queries), ("code", suite.codes)):
            start = time.perf_counter()
            embeddings[kind] = encode_texts(
                model,
                tokenizer,
                texts,
                kind,
                batch_size=args.batch_size,
                max_length=max_length,
                device=args.device,
                show_progress=True,
            )
            timings[f"encode_{kind}_s"] = seconds_since(start)
            timings[f"{kind}_texts_per_s"] = round(len(texts) / max(timings[f"encode_{kind}_s"], 1e-9), 1)
        metrics, rank_s = rank_all(
            dot_score_blocks(embeddings["query"], embeddings["code"]), suite, args.n_distractors, args.seed
        )
        timings["rank_s"] = rank_s
        report["minilm_zero_shot"] = {"metrics": metrics, **timings}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
