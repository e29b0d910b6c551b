"""Does an encoder's embedding of a text depend on the other texts in its batch? (int8 dynamic quantisation)

    .venv/bin/python bench/int8_batch_dependence.py                       # MiniLM on CoSQA dev
    .venv/bin/python bench/int8_batch_dependence.py --encoder runs/<run>/.../encoder --pairs P

ONNX Runtime's dynamic quantisation picks each activation's int8 scale from the whole batch tensor,
so the same text can get a different vector beside different neighbours. This embeds the suite twice
per runtime, batched two ways (one call, and the 1,024-text calls the stages make when they show
progress; each call sorts its texts by length before batching), and prints each way's full-corpus MRR and the lowest cosine between the two vectors of one
code. fp32 is the control. bench/RESULTS.md has the figures.
"""

from __future__ import annotations

import argparse


def main() -> None:
    from semcode.evaluation import full_corpus_ranks, retrieval_metrics
    from semcode.models.encoder import load_embed_fn
    from semcode.suites import cosqa_suite, test_split_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="minilm", help="encoder directory or minilm (default)")
    parser.add_argument("--pairs", default=None, help="ingest pairs/: its test split instead of CoSQA dev")
    args = parser.parse_args()

    suite = test_split_suite(args.pairs) if args.pairs else cosqa_suite()
    for runtime in ("onnx-int8", "onnx-fp32"):
        codes = {}
        for chunked in (False, True):
            embed = load_embed_fn(args.encoder, runtime=runtime, show_progress=chunked)[0]
            queries, codes[chunked] = embed(suite.queries, "query"), embed(suite.codes, "code")
            mrr = retrieval_metrics(full_corpus_ranks(queries, codes[chunked], suite.gold, suite.exclude))[
                "mrr"
            ]
            print(f"{suite.name} {runtime} {'chunked' if chunked else 'in order'}: MRR {mrr:.4f}", flush=True)
        lowest = float((codes[False] * codes[True]).sum(axis=1).min())
        print(
            f"{suite.name} {runtime}: lowest cosine between one code's two vectors {lowest:.6f}", flush=True
        )


if __name__ == "__main__":
    main()
