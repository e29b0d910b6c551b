"""Decoding settings of a trained decoder: best-of-N candidates and their sampling temperature.

The stage's own test sample (the first ``--samples`` of the seeded shuffle of up to ``--max-eval-pairs``
distinct test functions, which are also the round-trip corpus), decoded from the code and from the
docstring embeddings, scored as train_decoder scores them (parse rate, round-trip R@1/R@10)::

    .venv/bin/python bench/decoder_decoding.py --decoder runs/<run>/.../train-decoder/decoder \\
        --encoder runs/<run>/.../train-encoder/encoder/encoder --pairs runs/<run>/.../ingest/pairs \\
        --settings 8:0.8 8:0.5 8:0.3 4:0.5

``C:T`` = C candidates (the greedy code + C-1 samples at temperature T, top-p 0.95), reranked by the
encoder (semcode.decoding.generate_reranked); ``1:0`` is plain greedy decoding.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from semcode.decoding import generate_reranked, generation_metrics
from semcode.embed import load_embed_fn
from semcode.models.decoder import load_decoder, load_decoder_tokenizer
from semcode.train.data import load_pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decoder", required=True)
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--settings", nargs="+", default=["1:0", "8:0.5"], metavar="C:T")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--max-eval-pairs", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    decoder, meta = load_decoder(args.decoder)
    tokenizer = load_decoder_tokenizer(args.decoder)
    penalty = float((meta.get("generation") or {}).get("repetition_penalty", 1.0))
    embed, _ = load_embed_fn(args.encoder, 64, device="cpu", runtime="onnx-int8")
    test = load_pairs(args.pairs, "test", args.max_eval_pairs, args.seed, unique_codes=True)
    test = test.subset(np.random.default_rng(args.seed).permutation(len(test)))  # as train_decoder does
    corpus = embed(test.codes, "code")
    count = min(args.samples, len(test))
    sources = {"code": corpus[:count], "docstring": embed(test.queries[:count], "query")}
    print("candidates:temperature | source | parse | R@1 | R@10 | seconds")
    for setting in args.settings:
        candidates, temperature = int(setting.split(":")[0]), float(setting.split(":")[1])
        for source, targets in sources.items():
            torch.manual_seed(args.seed)
            started = time.perf_counter()
            generated = generate_reranked(
                decoder,
                tokenizer,
                targets,
                lambda codes: embed(codes, "code"),
                candidates,
                args.max_tokens,
                temperature or 1.0,
                0.95,
                penalty,
            )
            seconds = time.perf_counter() - started
            values = generation_metrics(
                generated, test.codes[:count], embed([g.code for g in generated], "code"), corpus
            )
            print(
                f"{setting} | {source} | {values['parse_rate']:.2f} | {values['round_trip_recall@1']:.2f} | "
                f"{values['round_trip_recall@10']:.2f} | {seconds:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
