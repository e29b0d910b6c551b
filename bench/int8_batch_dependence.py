"""Does an encoder's embedding of a text depend on the other texts in its batch? (int8 dynamic quantisation)

    .venv/bin/python bench/int8_batch_dependence.py                       # MiniLM on CoSQA dev
    .venv/bin/python bench/int8_batch_dependence.py --encoder runs/<run>/.../encoder --pairs P
    .venv/bin/python bench/int8_batch_dependence.py --max-length 128

ONNX Runtime's dynamic quantisation picks each activation's int8 scale from the whole input tensor, so
in a batch the same text can get a different vector beside different neighbours. semcode's OnnxEncoder
therefore runs a dynamically quantised graph one text per call. This exports the encoder as the
export_onnx stage does, then embeds the suite twice per setting, batched two ways (one encode call, and
the 1,024-text calls the stages make when they show progress; each call sorts its texts by length), and
prints each way's full-corpus MRR, the lowest cosine between the two vectors of one code and the
encoding speed. fp32 in batches is the control. One text per call runs two ways: one caller on every
intra-op thread, and one caller per thread on one intra-op thread each (what OnnxEncoder does): the
same vectors, the speeds side by side. bench/RESULTS.md has the figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    import numpy as np
    import torch

    from semcode.embed import PROGRESS_CHUNK, OnnxEncoder
    from semcode.evaluation import full_corpus_ranks, retrieval_metrics
    from semcode.export import export_tower, quantize_int8
    from semcode.models.encoder import load_hf_tokenizer, load_pretrained
    from semcode.suites import cosqa_suite, test_split_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="minilm", help="encoder directory or minilm (default)")
    parser.add_argument("--pairs", default=None, help="ingest pairs/: its test split instead of CoSQA dev")
    parser.add_argument("--max-length", type=int, default=0, help="tokens per text (0 = the encoder's own)")
    args = parser.parse_args()

    suite = test_split_suite(args.pairs) if args.pairs else cosqa_suite()
    model = load_pretrained(args.encoder).eval()
    if model.towers != "shared":
        raise SystemExit(f"{args.encoder}: this bench takes a shared-tower encoder, not {model.towers!r}")
    tmp = Path(tempfile.mkdtemp(prefix="semcode-int8-batching-"))
    load_hf_tokenizer(args.encoder).save_pretrained(tmp)
    fp32_path = export_tower(model.tower_for("code"), tmp / "encoder.onnx")
    int8_path = tmp / "encoder.int8.onnx"
    quantize_int8(fp32_path, int8_path)
    threads = torch.get_num_threads()
    settings = {
        "onnx-fp32, batches of 64": (fp32_path, False, None),
        "onnx-int8, batches of 64": (int8_path, False, None),
        f"onnx-int8, one text per call, 1 caller x {threads} threads": (int8_path, True, 1),
        f"onnx-int8, one text per call, {threads} callers x 1 thread": (int8_path, True, threads),
    }
    print(f"| {suite.name} | one call | {PROGRESS_CHUNK:,}-text calls | lowest cosine | codes/s |")
    print("|---|---|---|---|---|")
    for name, (path, one_text_per_call, callers) in settings.items():
        encoders = {
            kind: OnnxEncoder(
                path,
                tmp / "tokenizer.json",
                args.max_length or model.max_length,
                model.prefix_for(kind),
                threads=threads,
                one_text_per_call=one_text_per_call,
                callers=callers,
            )
            for kind in ("query", "code")
        }
        queries = encoders["query"].encode(suite.queries)
        mrr, codes, seconds = {}, {}, 0.0
        for chunked in (False, True):
            started = time.perf_counter()
            step = PROGRESS_CHUNK if chunked else max(len(suite.codes), 1)
            codes[chunked] = np.concatenate(
                [encoders["code"].encode(suite.codes[i : i + step]) for i in range(0, len(suite.codes), step)]
            )
            seconds += time.perf_counter() - started
            ranks = full_corpus_ranks(queries, codes[chunked], suite.gold, suite.exclude)
            mrr[chunked] = retrieval_metrics(ranks)["mrr"]
        lowest = float((codes[False] * codes[True]).sum(axis=1).min())
        speed = 2 * len(suite.codes) / seconds
        print(f"| {name} | {mrr[False]:.4f} | {mrr[True]:.4f} | {lowest:.6f} | {speed:.0f} |", flush=True)


if __name__ == "__main__":
    main()
