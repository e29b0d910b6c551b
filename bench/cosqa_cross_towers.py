"""Which side of a fine-tuned encoder loses (or gains) a suite: queries and codes embedded by two encoders, crossed.

    .venv/bin/python bench/cosqa_cross_towers.py --encoder runs/<run>/.../encoder                # CoSQA dev
    .venv/bin/python bench/cosqa_cross_towers.py --encoder runs/<run>/.../encoder --pairs P      # the test split

Embeds the suite's queries and codes with the baseline (default all-MiniLM-L6-v2) and the fine-tuned
encoder, both at the same max length and runtime, and prints the full-corpus MRR of the four
(query encoder, code encoder) combinations, then of the output-space ensemble (score = alpha x
baseline cosine + (1 - alpha) x fine-tuned cosine) for a few alphas. Mixing makes sense because a
short fine-tune from the baseline keeps the two spaces close. bench/RESULTS.md has the figures.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from semcode.embed import load_embed_fn
    from semcode.evaluation import full_corpus_ranks, retrieval_metrics
    from semcode.suites import cosqa_suite, test_split_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True, help="the fine-tuned encoder directory")
    parser.add_argument("--baseline", default="minilm", help="the encoder it started from (default minilm)")
    parser.add_argument(
        "--pairs", default=None, help="ingest pairs/: evaluate its test split instead of CoSQA"
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--runtime", default="onnx-int8", choices=("torch", "onnx-int8", "onnx-fp32"))
    args = parser.parse_args()

    suite = test_split_suite(args.pairs) if args.pairs else cosqa_suite()
    embeddings = {}  # name -> (queries [Q, D], codes [C, D])
    for name, spec in (("baseline", args.baseline), ("fine-tuned", args.encoder)):
        embed = load_embed_fn(spec, max_length=args.max_length, runtime=args.runtime)[0]
        embeddings[name] = (embed(suite.queries, "query"), embed(suite.codes, "code"))

    def mrr(queries: np.ndarray, codes: np.ndarray) -> float:
        return retrieval_metrics(full_corpus_ranks(queries, codes, suite.gold, suite.exclude))["mrr"]

    print(f"{suite.name}: {len(suite.queries)} queries, {len(suite.codes)} codes, full-corpus MRR")
    for query_side in embeddings:
        for code_side in embeddings:
            score = mrr(embeddings[query_side][0], embeddings[code_side][1])
            print(f"  queries {query_side:10s} codes {code_side:10s} {score:.4f}")
    for alpha in (0.3, 0.5, 0.7):
        # Concatenating sqrt(alpha)- and sqrt(1 - alpha)-scaled unit vectors sums the weighted cosines.
        weights = {"baseline": np.sqrt(alpha), "fine-tuned": np.sqrt(1 - alpha)}
        queries = np.concatenate([w * embeddings[n][0] for n, w in weights.items()], axis=1)
        codes = np.concatenate([w * embeddings[n][1] for n, w in weights.items()], axis=1)
        print(f"  ensemble alpha {alpha} x baseline             {mrr(queries, codes):.4f}")


if __name__ == "__main__":
    main()
