"""The fusion choice (semcode.evaluation.choose_fusion) with a real encoder on a stand-in mix: does the rule
pick a fusion that keeps hybrid's help on docstrings and never costs questions?

    nice .venv/bin/python bench/fusion_choice.py                          # the table, markdown, on stdout
    nice .venv/bin/python bench/fusion_choice.py --json /tmp/fusion.json  # + every number

The encoder: all-MiniLM-L6-v2 zero-shot, its int8 ONNX export (``--model``, ``--tokenizer``; default
/tmp/proto/minilm), semcode.embed.OnnxEncoder at ``--max-length`` 128 tokens, one thread, no prefix. The
stand-in mix, the three kinds of suite evaluate chooses on:

- ``docstrings`` (docstring-style, standing in for the valid split): the ``python:stdlib`` pairs
  (query = docstring, code without it), ``--docstring-queries`` of them (a seeded sample) among their own
  gold codes, as evaluate samples the valid split (``fusion_valid_queries``, golds only);
- ``cosqa`` (question-style): CoSQA dev, 500 web queries over its 6,267 functions (semcode.suites);
- ``everyday`` (question-style): the everyday suite (semcode/suite_data/everyday.jsonl) over every
  ``python:stdlib`` corpus row (index_all), each as its search document in the ``name+doc+code`` view
  (semcode.corpus.search_document), ranked by full-corpus MRR of the best accepted answer.

Candidates: dense, convex at each of FUSION_WEIGHTS, rrf, and each convex weight with a smaller one for
question-form queries (semcode.retrieval.query_form). Printed: each candidate's MRR per suite, its mean
gain over dense and the question-style suites it loses on; the rule's pick, with paired intervals against
dense; what the rule would pick without the per-form candidates and on docstrings alone (the old choice);
and the everyday suite's own scores (success@3, MRR@10 over the top 10) for dense, BM25, those picks.

Embeddings of the stdlib rows and CoSQA's functions are cached in ``--cache-dir`` as
``cache-<what>-<max length>-<rows>.npy`` (``name+doc+code`` for the stdlib rows in read order), checked
against nothing but the row count: delete them after changing the encoder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from semcode.corpus import search_document
from semcode.data.sources import read_source
from semcode.data.sources.rows import ExtractOptions
from semcode.data.sources.spec import parse_spec
from semcode.embed import OnnxEncoder
from semcode.evaluation import choose_fusion, mix_suite
from semcode.everyday import everyday_mix_suite, load_everyday, score_everyday
from semcode.retrieval import FUSION_WEIGHTS, BM25Index, fuse_queries, fusion_spec
from semcode.suites import cosqa_suite, pairs_suite

VIEW = "name+doc+code"


def digest(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


class CachedEmbed:
    """An EmbedFn over one OnnxEncoder; the text lists registered with a label are read from (or written
    to) ``cache-<label>-<max length>-<rows>.npy``, every other list is encoded afresh."""

    def __init__(self, encoder: OnnxEncoder, cache_dir: Path) -> None:
        self.encoder, self.cache_dir, self.labels = encoder, cache_dir, {}

    def register(self, label: str, texts: list[str]) -> None:
        self.labels[digest(texts)] = label

    def __call__(self, texts: list[str], kind: str) -> np.ndarray:
        label = self.labels.get(digest(list(texts)))
        if label is None:
            return self.encoder.encode(texts)
        path = self.cache_dir / f"cache-{label}-{self.encoder.max_length}-{len(texts)}.npy"
        if path.exists():
            vectors = np.load(path)
            if vectors.shape[0] == len(texts):
                return vectors
        started = time.perf_counter()
        vectors = self.encoder.encode(texts)
        np.save(path, vectors)
        print(f"embedded {len(texts)} {label} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        return vectors


def everyday_scores(queries, rows, documents, embed, specs: dict[str, dict | None]) -> dict:
    """The everyday suite's own scores (top 10) of dense, BM25 (spec None) and each fusion spec."""
    texts = [q.query for q in queries]
    dense = embed(texts, "query") @ embed(documents, "code").T  # [Q, C]
    lexical = BM25Index(documents).scores(texts)  # [Q, C]
    out = {}
    for name, spec in specs.items():
        scores = lexical if spec is None else fuse_queries(dense, lexical, texts, spec)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]  # [Q, 10]
        scored = score_everyday([[rows[j] for j in row] for row in top], queries)
        out[name] = {
            "success@3": scored["success@3"],
            "mrr@10": scored["mrr@10"],
            "question_success@3": scored["by_form"]["question"]["success@3"],
            "keyword_success@3": scored["by_form"]["keyword"]["success@3"],
        }
    return out


def markdown(chosen: dict, others: dict[str, dict]) -> str:
    suites = chosen["chosen_on"]
    head = ["candidate", *[f"{s} ({chosen['suites'][s]['style']})" for s in suites], "mean gain", "loses on"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    picks = {chosen["name"]: "**rule**", **{o["name"]: label for label, o in others.items()}}
    for name, row in chosen["candidates"].items():
        mark = f" {picks[name]}" if name in picks else ""
        cells = [f"{name}{mark}", *[f"{row['mrr'][s]:.4f}" for s in suites], f"{row['gain']:+.4f}"]
        lines.append("| " + " | ".join([*cells, ", ".join(row["loses_on"]) or "-"]) + " |")
    bm25 = [f"{chosen['suites'][s]['bm25_mrr']:.4f}" for s in suites]
    lines.append("| bm25 (alone) | " + " | ".join(bm25) + " | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/tmp/proto/minilm/encoder.int8.onnx")
    parser.add_argument("--tokenizer", default="/tmp/proto/minilm/tokenizer.json")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default="/tmp/proto")
    parser.add_argument("--benchmarks-dir", default=None, help="default: semcode.suites.find_benchmarks_dir")
    parser.add_argument("--docstring-queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write every number here")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    encoder = OnnxEncoder(args.model, args.tokenizer, args.max_length, threads=args.threads)
    embed = CachedEmbed(encoder, Path(args.cache_dir))

    read = read_source(parse_spec("python:stdlib"), ExtractOptions())
    rows = [(r["path"], r["func_name"]) for r in read.corpus]
    documents = [
        search_document(VIEW, r["code"], r["query"] or "", r["path"], r["func_name"]) for r in read.corpus
    ]
    embed.register(VIEW, documents)
    pairs = pairs_suite(
        "docstrings", [p["query"] for p in read.pairs], [p["code"] for p in read.pairs], "stdlib"
    )
    docstrings = pairs.subset(args.docstring_queries, seed=args.seed, golds_only=True)
    cosqa = cosqa_suite(args.benchmarks_dir)
    embed.register("cosqa-code", cosqa.codes)
    queries = load_everyday()
    mix = [
        mix_suite(docstrings, "docstring"),
        mix_suite(cosqa, "question"),
        everyday_mix_suite(queries, rows, documents, source=f"python:stdlib, {len(rows)} rows, {VIEW}"),
    ]
    print(
        f"{len(read.corpus)} stdlib rows, {len(read.pairs)} stdlib pairs; mix: "
        + ", ".join(f"{s.name} {len(s.queries)} queries x {len(s.codes)}" for s in mix),
        file=sys.stderr,
    )

    chosen = choose_fusion(mix, embed, FUSION_WEIGHTS, seed=args.seed)
    plain = choose_fusion(mix, embed, FUSION_WEIGHTS, per_form=False, seed=args.seed)
    valid_only = choose_fusion(mix[:1], embed, FUSION_WEIGHTS, per_form=False, seed=args.seed)
    others = {"(rule without per-form)": plain, "(old rule: docstrings only)": valid_only}

    specs = {"dense": {"rule": "convex", "weight": 0.0}, "bm25": None}
    for pick in [chosen, *others.values()]:
        specs.setdefault(pick["name"], fusion_spec(pick))
    daily = everyday_scores(queries, rows, documents, embed, specs)

    print(f"## Fusion choice, all-MiniLM-L6-v2 int8 zero-shot at {args.max_length} tokens\n")
    print(markdown(chosen, others), "\n")
    print(f"Rule: {chosen['criterion']}.\n")
    print(f"Chosen: **{chosen['name']}**, default mode {chosen['default_mode']}. Paired against dense (95%):")
    for suite, gap in chosen["chosen_vs_dense"].items():
        print(f"- {suite}: {gap['mrr_difference']:+.4f} ({gap['ci95_low']:+.4f} .. {gap['ci95_high']:+.4f})")
    for label, pick in others.items():
        gaps = ", ".join(
            f"{s} {g['mrr_difference']:+.4f} ({g['ci95_low']:+.4f}..{g['ci95_high']:+.4f})"
            for s, g in pick["chosen_vs_dense"].items()
        )
        print(f"- {label}: {pick['name']}: {gaps}")
    print(
        "\nForms (semcode.retrieval.query_form): "
        + "; ".join(f"{s} {info['forms']}" for s, info in chosen["suites"].items())
    )
    print("\nEveryday suite's own scores (top 10 over the stdlib rows):\n")
    print("| system | success@3 | MRR@10 | keyword success@3 | question success@3 |\n|---|---|---|---|---|")
    for name, s in daily.items():
        print(
            f"| {name} | {s['success@3']:.3f} | {s['mrr@10']:.3f} | {s['keyword_success@3']:.3f} | "
            f"{s['question_success@3']:.3f} |"
        )
    print(f"\n{time.perf_counter() - started:.0f}s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"chosen": chosen, **{k: v for k, v in others.items()}, "everyday": daily}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
