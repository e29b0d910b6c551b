"""Retrieval evaluation: ranks, metrics, the two protocols, the BM25 baseline and the choice of the hybrid
fusion; numpy in, numpy out.

Vocabulary: ``Q`` queries, ``C`` candidate codes, scores ``[Q, C]`` (higher = more relevant) and
``gold [Q]``, the index of each query's one relevant candidate.

Ties count against the gold: rank = 1 + the number of other candidates whose score is >= the gold's.
A model that scores everything the same gets the worst rank, never the best.

Exclusions: ``exclude`` is an int array ``[E, 2]`` of (query index, candidate index) pairs that are
removed from that query's candidates (e.g. another pair whose docstring is this very query: its code is
a second right answer, not a distractor). A query's gold is never excluded; such pairs are dropped.

Protocols (``PROTOCOLS``):
- ``full``: each query ranks its gold among all ``C`` candidates (minus its exclusions).
- ``csn``: the CodeSearchNet protocol: each query ranks its gold among ``n_distractors`` candidates
  drawn at random without replacement (from the non-excluded, non-gold ones); with fewer available,
  all of them. The draw for query ``i`` depends only on ``(seed, i)`` and its exclusions, so the model
  and every baseline are ranked on exactly the same candidates.

Scores are computed block by block over queries (``[block_size, C]`` at a time), and both protocols
are read off the same block, so memory stays bounded for large test corpora.

Per language: when a suite's queries carry two or more languages (``Suite.languages``), its results
are also broken down by language (``language_breakdown``): each language's queries, ranked as they
were among all of the suite's candidates (the other languages' code included), so the breakdown
costs no second ranking and the suite's MRR is the query-weighted mean of its languages'.

Systems are embedding callables (``EmbedFn``: texts and kind "query"/"code" -> L2-normalised
``[N, D]``), so this module never loads a model itself and is testable without one; BM25
(semcode.retrieval.BM25Index) is the lexical baseline beside them.

Hybrid (the system ``hybrid``): the model's cosine and BM25 of the same candidates fused by a fusion spec
of semcode.retrieval (``fuse_queries``: ``convex``, one weight or a weight per query form, or ``rrf``;
described there, the one home of the rule that `semcode search --mode hybrid` applies too). evaluate
chooses the spec on a mix of suites (``choose_fusion``): docstring-style (the valid split) and
question-style (CoSQA dev, the everyday suite; ``MixSuite``), never test or a held-out suite. The rule
(``CHOICE_RULE``): among the candidates (dense, the convex weights of ``FUSION_WEIGHTS``, ``rrf``, and
each convex pair of a weight and a smaller weight for questions), the best mean full-corpus MRR gain
over dense across the mix, but never one below dense (point estimate) on a question-style suite. Dense
is always a candidate, so the choice can always fall back to it; the default search mode is hybrid only
when the chosen spec is not dense itself.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from semcode.embed import EmbedFn
from semcode.progress import log
from semcode.retrieval import (
    FUSION_WEIGHTS,
    INTERNAL_PENALTIES,
    BM25Index,
    check_fusion,
    check_penalty,
    convex_fusion,
    defined_name,
    fuse_queries,
    fusion_name,
    fusion_spec,
    internal_definitions,
    is_dense,
    penalise_internal,
    query_form,
    query_weights,
    rrf_fusion,
)

if TYPE_CHECKING:
    from semcode.suites import Suite

ScoreBlockFn = Callable[[int, int], np.ndarray]  # (start, end) -> scores [end - start, C] of those queries

PROTOCOLS = ("csn", "full")
RECALL_AT = (1, 5, 10)
NDCG_AT = 10
DEFAULT_BLOCK_SIZE = 256
BOOTSTRAP_BLOCK = 128  # resamples drawn at once by paired_mrr_difference


# ---------------------------------------------------------------- ranks and metrics


def _check_gold(gold: np.ndarray, n_queries: int, n_codes: int) -> np.ndarray:
    gold = np.asarray(gold)
    if gold.shape != (n_queries,):
        raise ValueError(f"gold must have shape ({n_queries},), got {gold.shape}")
    if not np.issubdtype(gold.dtype, np.integer):
        raise ValueError(f"gold must hold integer candidate indices, got dtype {gold.dtype}")
    if n_queries and (gold.min() < 0 or gold.max() >= n_codes):
        raise ValueError(f"gold indices must lie in [0, {n_codes}), got [{gold.min()}, {gold.max()}]")
    return gold.astype(np.int64)


def ranks_from_scores(
    scores: np.ndarray, gold: np.ndarray, exclude_mask: np.ndarray | None = None
) -> np.ndarray:
    """The gold's 1-based rank per query: 1 + #other non-excluded candidates scoring >= the gold.

    scores [Q, C] float, gold [Q] int, exclude_mask [Q, C] bool (True = not a candidate; ignored at
    the gold) -> ranks [Q] int64.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [queries, candidates], got shape {scores.shape}")
    n_queries, n_codes = scores.shape
    gold = _check_gold(gold, n_queries, n_codes)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: a NaN would rank as a tie-free match; fix the embeddings")
    rows = np.arange(n_queries)
    at_least_gold = scores >= scores[rows, gold][:, None]  # [Q, C]
    at_least_gold[rows, gold] = False
    if exclude_mask is not None:
        exclude_mask = np.asarray(exclude_mask, dtype=bool)
        if exclude_mask.shape != scores.shape:
            raise ValueError(f"exclude_mask shape {exclude_mask.shape} != scores shape {scores.shape}")
        at_least_gold &= ~exclude_mask
    return 1 + at_least_gold.sum(axis=1, dtype=np.int64)


def retrieval_metrics(ranks: np.ndarray) -> dict[str, float]:
    """MRR, Recall@1/5/10, NDCG@10 (one relevant item: 1/log2(rank+1) within the top 10), median rank."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if ranks.min() < 1:
        raise ValueError(f"ranks are 1-based; got a rank of {ranks.min()}")
    ranks = ranks.astype(np.float64)
    metrics = {"mrr": float(np.mean(1.0 / ranks))}
    for k in RECALL_AT:
        metrics[f"recall@{k}"] = float(np.mean(ranks <= k))
    gains = np.where(ranks <= NDCG_AT, 1.0 / np.log2(ranks + 1.0), 0.0)
    metrics[f"ndcg@{NDCG_AT}"] = float(np.mean(gains))
    metrics["median_rank"] = float(np.median(ranks))
    metrics["n_queries"] = int(ranks.size)
    return metrics


def paired_mrr_difference(
    ranks: np.ndarray, baseline_ranks: np.ndarray, resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """MRR(ranks) - MRR(baseline_ranks) on the same queries, with a 95% paired bootstrap interval.

    Both ``[Q]`` ranks of the same queries in the same order. The queries are resampled with
    replacement ``resamples`` times, the same draw for both systems (paired), and the interval is the
    2.5th..97.5th percentile of the differences: on a suite of a few hundred queries an MRR gap of
    0.01 is often noise, and this says so.
    """
    ranks, baseline_ranks = paired_ranks(ranks, baseline_ranks, resamples)
    per_query = 1.0 / ranks.astype(np.float64) - 1.0 / baseline_ranks.astype(np.float64)  # [Q]
    return paired_bootstrap(per_query, resamples, seed)


def paired_ranks(
    ranks: np.ndarray, baseline_ranks: np.ndarray, resamples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two systems' ranks [Q] of the same queries as arrays; ValueError for other shapes or resamples < 1."""
    ranks, baseline_ranks = np.asarray(ranks), np.asarray(baseline_ranks)
    if ranks.shape != baseline_ranks.shape or ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(
            f"ranks must be two non-empty 1-D arrays of the same queries, got shapes {ranks.shape} and "
            f"{baseline_ranks.shape}"
        )
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return ranks, baseline_ranks


def paired_bootstrap(per_query: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """The mean of per-query differences [Q] with its 95% paired bootstrap interval: the queries resampled
    with replacement ``resamples`` times, the 2.5th..97.5th percentile of the means."""
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)  # [resamples]
    # A block of resamples at a time: memory stays [BOOTSTRAP_BLOCK, Q] on large suites (the draws are
    # the same as one [resamples, Q] draw).
    for start in range(0, resamples, BOOTSTRAP_BLOCK):
        count = min(BOOTSTRAP_BLOCK, resamples - start)
        draws = rng.integers(0, per_query.size, size=(count, per_query.size))  # [count, Q]
        differences[start : start + count] = per_query[draws].mean(axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"mrr_difference": float(per_query.mean()), "ci95_low": float(low), "ci95_high": float(high)}


# ---------------------------------------------------------------- exclusions and candidates


def check_exclude(exclude: np.ndarray | None, gold: np.ndarray, n_codes: int) -> np.ndarray:
    """Validated exclusion pairs [E, 2] int64, sorted by query, without (query, its gold) pairs."""
    if exclude is None:
        return np.zeros((0, 2), dtype=np.int64)
    exclude = np.asarray(exclude)
    if exclude.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if exclude.ndim != 2 or exclude.shape[1] != 2 or not np.issubdtype(exclude.dtype, np.integer):
        raise ValueError(
            f"exclude must be integer (query, candidate) pairs [E, 2], got {exclude.shape} {exclude.dtype}"
        )
    exclude = exclude.astype(np.int64)
    if exclude[:, 0].min() < 0 or exclude[:, 0].max() >= len(gold):
        raise ValueError(f"exclude query indices must lie in [0, {len(gold)})")
    if exclude[:, 1].min() < 0 or exclude[:, 1].max() >= n_codes:
        raise ValueError(f"exclude candidate indices must lie in [0, {n_codes})")
    exclude = exclude[exclude[:, 1] != gold[exclude[:, 0]]]
    exclude = np.unique(exclude, axis=0)  # sorted by query, then candidate
    return exclude


def exclusion_mask(exclude: np.ndarray, start: int, end: int, n_codes: int) -> np.ndarray:
    """Dense bool mask [end - start, C] of the checked exclusion pairs of queries start..end-1."""
    mask = np.zeros((end - start, n_codes), dtype=bool)
    lo, hi = np.searchsorted(exclude[:, 0], [start, end])
    block = exclude[lo:hi]
    mask[block[:, 0] - start, block[:, 1]] = True
    return mask


def csn_candidates(
    gold: np.ndarray,
    n_codes: int,
    n_distractors: int = 999,
    seed: int = 0,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Candidate indices [Q, 1 + n_distractors'] per query: the gold in column 0, then distractors.

    Distractors are drawn without replacement from the candidates that are neither the gold nor
    excluded, with a generator seeded by ``(seed, query index)``. When fewer are available, the query
    gets all of them and its row is padded with -1. ``n_distractors' = min(n_distractors, C - 1)``.
    """
    if n_distractors < 1:
        raise ValueError(f"n_distractors must be >= 1, got {n_distractors}")
    gold = _check_gold(gold, len(np.asarray(gold)), n_codes)
    exclude = check_exclude(exclude, gold, n_codes)
    width = 1 + min(n_distractors, n_codes - 1)
    candidates = np.full((len(gold), width), -1, dtype=np.int64)
    candidates[:, 0] = gold
    bounds = np.searchsorted(exclude[:, 0], np.arange(len(gold) + 1))
    for i, gold_i in enumerate(gold):
        not_allowed = np.append(exclude[bounds[i] : bounds[i + 1], 1], gold_i)
        n_allowed = n_codes - len(not_allowed)
        if n_allowed <= n_distractors:
            distractors = np.setdiff1d(np.arange(n_codes), not_allowed, assume_unique=True)
        else:
            # Draw enough distinct indices that, after dropping the not-allowed ones, n_distractors remain.
            rng = np.random.default_rng((seed, i))
            draw = rng.choice(n_codes, size=min(n_codes, n_distractors + len(not_allowed)), replace=False)
            distractors = draw[~np.isin(draw, not_allowed)][:n_distractors]
        candidates[i, 1 : 1 + len(distractors)] = distractors
    return candidates


# ---------------------------------------------------------------- protocols


class ProtocolRanks(NamedTuple):
    ranks: np.ndarray  # [Q] int64, 1 = the gold scored highest
    n_candidates: np.ndarray  # [Q] int64, how many candidates (the gold included) each query was ranked among


def protocol_ranks(
    score_block: ScoreBlockFn,
    n_queries: int,
    n_codes: int,
    gold: np.ndarray,
    protocols: Sequence[str] = PROTOCOLS,
    exclude: np.ndarray | None = None,
    n_distractors: int = 999,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, ProtocolRanks]:
    """Ranks under each protocol, from score blocks ``score_block(start, end) -> [end - start, C]``."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {list(protocols)}")
    if n_queries < 1 or n_codes < 1:
        raise ValueError(f"need at least one query and one candidate, got {n_queries} and {n_codes}")
    gold = _check_gold(gold, n_queries, n_codes)
    exclude = check_exclude(exclude, gold, n_codes)
    candidates = csn_candidates(gold, n_codes, n_distractors, seed, exclude) if "csn" in protocols else None
    out = {p: ProtocolRanks(np.zeros(n_queries, np.int64), np.zeros(n_queries, np.int64)) for p in protocols}
    for start in range(0, n_queries, block_size):
        end = min(start + block_size, n_queries)
        scores = np.asarray(score_block(start, end))
        if scores.shape != (end - start, n_codes):
            raise ValueError(
                f"score block {start}:{end} has shape {scores.shape}, expected {(end - start, n_codes)}"
            )
        if "full" in protocols:
            mask = exclusion_mask(exclude, start, end, n_codes)
            out["full"].ranks[start:end] = ranks_from_scores(scores, gold[start:end], mask)
            out["full"].n_candidates[start:end] = n_codes - mask.sum(axis=1)
        if candidates is not None:
            block = candidates[start:end]
            valid = block >= 0
            picked = np.take_along_axis(scores, np.where(valid, block, 0), axis=1)  # gold in column 0
            if np.isnan(picked).any():
                raise ValueError(
                    "scores contain NaN: a NaN would rank as a tie-free match; fix the embeddings"
                )
            at_least_gold = (picked[:, 1:] >= picked[:, :1]) & valid[:, 1:]
            out["csn"].ranks[start:end] = 1 + at_least_gold.sum(axis=1)
            out["csn"].n_candidates[start:end] = valid.sum(axis=1)
    return out


def dot_score_blocks(query_emb: np.ndarray, code_emb: np.ndarray) -> ScoreBlockFn:
    """Score blocks by inner product (cosine for L2-normalised embeddings): [b, D] @ [D, C]."""
    query_emb = np.asarray(query_emb, dtype=np.float32)
    code_emb = np.asarray(code_emb, dtype=np.float32)
    if query_emb.ndim != 2 or code_emb.ndim != 2 or query_emb.shape[1] != code_emb.shape[1]:
        raise ValueError(f"embeddings must be [Q, D] and [C, D], got {query_emb.shape} and {code_emb.shape}")
    code_t = np.ascontiguousarray(code_emb.T)
    return lambda start, end: query_emb[start:end] @ code_t


def full_corpus_ranks(
    query_emb: np.ndarray,
    code_emb: np.ndarray,
    gold: np.ndarray,
    exclude: np.ndarray | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> np.ndarray:
    """Full-corpus protocol: each query's gold ranked among all candidates; ranks [Q]."""
    result = protocol_ranks(
        dot_score_blocks(query_emb, code_emb),
        len(query_emb),
        len(code_emb),
        gold,
        protocols=("full",),
        exclude=exclude,
        block_size=block_size,
    )
    return result["full"].ranks


def csn_ranks(
    query_emb: np.ndarray,
    code_emb: np.ndarray,
    gold: np.ndarray,
    n_distractors: int = 999,
    seed: int = 0,
    exclude: np.ndarray | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> np.ndarray:
    """CodeSearchNet protocol: each query's gold ranked among n_distractors random candidates; ranks [Q]."""
    result = protocol_ranks(
        dot_score_blocks(query_emb, code_emb),
        len(query_emb),
        len(code_emb),
        gold,
        protocols=("csn",),
        exclude=exclude,
        n_distractors=n_distractors,
        seed=seed,
        block_size=block_size,
    )
    return result["csn"].ranks


def full_corpus_metrics(
    query_emb: np.ndarray, code_emb: np.ndarray, exclude: np.ndarray | None = None
) -> dict:
    """Metrics of aligned pairs (query i's gold is code i) under the full-corpus protocol: the validator."""
    if len(code_emb) < len(query_emb):
        raise ValueError(
            f"aligned pairs need at least as many codes as queries, got {len(code_emb)} < {len(query_emb)}"
        )
    gold = np.arange(len(query_emb))
    return retrieval_metrics(full_corpus_ranks(query_emb, code_emb, gold, exclude))


# ---------------------------------------------------------------- per language


def language_breakdown(
    ranks_of: Mapping[tuple[str, str], np.ndarray],
    candidates_of: Mapping[str, np.ndarray],
    languages: Sequence[str],
    seed: int = 0,
) -> dict:
    """Metrics of each language's queries alone, from ranks already computed on the whole suite.

    ranks_of: ``(protocol, system) -> [Q]`` ranks; candidates_of: ``protocol -> [Q]`` candidates per
    query; languages: ``[Q]`` each query's language ('' = unknown). Returns ``{language: {"n_queries",
    "candidates_per_query": {protocol: {min, max, mean}}, protocol: {system: metrics}, "model_vs":
    {protocol: {baseline: paired_mrr_difference}}, "hybrid_vs": {protocol: {"model": hybrid - model}}}}``
    (hybrid_vs empty without a "hybrid" system), languages sorted by name.
    """
    labels = np.array([language or "unknown" for language in languages], dtype=object)  # [Q]
    for key, ranks in ranks_of.items():
        if len(ranks) != len(labels):
            raise ValueError(
                f"ranks of {key} cover {len(ranks)} queries but there are {len(labels)} languages"
            )
    breakdown: dict = {}
    for language in sorted(set(labels)):
        rows = np.flatnonzero(labels == language)  # [q] this language's queries
        part: dict = {"n_queries": int(len(rows)), "candidates_per_query": {}}
        for protocol, n_candidates in candidates_of.items():
            picked = n_candidates[rows]
            part["candidates_per_query"][protocol] = {
                "min": int(picked.min()),
                "max": int(picked.max()),
                "mean": round(float(picked.mean()), 2),
            }
        for (protocol, system), ranks in ranks_of.items():
            part.setdefault(protocol, {})[system] = retrieval_metrics(ranks[rows])
        part["model_vs"] = {}
        for (protocol, system), ranks in ranks_of.items():
            if system != "model" and (protocol, "model") in ranks_of:
                model_ranks = ranks_of[protocol, "model"][rows]
                part["model_vs"].setdefault(protocol, {})[system] = paired_mrr_difference(
                    model_ranks, ranks[rows], seed=seed
                )
        part["hybrid_vs"] = {
            protocol: {
                "model": paired_mrr_difference(ranks[rows], ranks_of[protocol, "model"][rows], seed=seed)
            }
            for (protocol, system), ranks in ranks_of.items()
            if system == "hybrid" and (protocol, "model") in ranks_of
        }
        breakdown[language] = part
    return breakdown


# ---------------------------------------------------------------- one suite, several systems


def evaluate_suite(
    suite: Suite,
    systems: Mapping[str, EmbedFn],
    bm25: bool = True,
    bm25_stopwords: bool = False,
    protocols: Sequence[str] = PROTOCOLS,
    n_distractors: int = 999,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    fusion: Mapping | None = None,
) -> dict:
    """Metrics of each system (and BM25, and hybrid) on one suite under each protocol, on the same candidates.

    Returns ``{protocol: {system: metrics}, "n_queries", "n_candidates", "candidates_per_query":
    {protocol: {min, max, mean}}, "seconds": {system: s}, "model_vs": {protocol: {baseline:
    paired_mrr_difference}}}``; the BM25 system is named "bm25"; model_vs compares the system named
    "model" with each other one (empty without a "model"). With ``fusion`` (a fusion spec, see
    ``fuse_queries``), a "model" and BM25, the system "hybrid" fuses the two on every candidate (block by block,
    before a protocol picks its candidates), and ``"hybrid_vs": {protocol: {"model" / "zero_shot": paired
    interval of hybrid - that system}}``. A suite whose queries are in two or more languages also gets ``"by_language":
    language_breakdown(...)`` (each language's queries among all the suite's candidates).
    """
    n_queries, n_codes = len(suite.queries), len(suite.codes)
    result: dict = {p: {} for p in protocols}
    result.update(
        n_queries=n_queries,
        n_candidates=n_codes,
        n_excluded_pairs=int(len(suite.exclude)),
        candidates_per_query={},
        seconds={},
    )

    ranks_of: dict[tuple[str, str], np.ndarray] = {}  # (protocol, system) -> [Q] ranks
    candidates_of: dict[str, np.ndarray] = {}  # protocol -> [Q] candidates per query, every system's

    def record(system: str, score_block: ScoreBlockFn, started: float) -> None:
        ranked = protocol_ranks(
            score_block,
            n_queries,
            n_codes,
            suite.gold,
            protocols,
            suite.exclude,
            n_distractors,
            seed,
            block_size,
        )
        for protocol, (ranks, n_candidates) in ranked.items():
            ranks_of[protocol, system] = ranks
            candidates_of[protocol] = n_candidates
            result[protocol][system] = retrieval_metrics(ranks)
            result["candidates_per_query"][protocol] = {
                "min": int(n_candidates.min()),
                "max": int(n_candidates.max()),
                "mean": round(float(n_candidates.mean()), 2),
            }
        result["seconds"][system] = round(time.perf_counter() - started, 3)
        summary = ", ".join(f"{p} MRR {result[p][system]['mrr']:.4f}" for p in protocols)
        log("evaluate", f"{suite.name}: {system}: {summary} ({result['seconds'][system]:.1f}s)")

    score_blocks: dict[str, ScoreBlockFn] = {}
    for system, embed in systems.items():
        started = time.perf_counter()
        query_emb = embed(list(suite.queries), "query")
        code_emb = embed(list(suite.codes), "code")
        score_blocks[system] = dot_score_blocks(query_emb, code_emb)
        record(system, score_blocks[system], started)
    if bm25:
        started = time.perf_counter()
        index = BM25Index(suite.codes, stopwords=bm25_stopwords)
        score_blocks["bm25"] = lambda start, end: index.scores(suite.queries[start:end])
        record("bm25", score_blocks["bm25"], started)
    if fusion is not None and "model" in score_blocks and "bm25" in score_blocks:
        started = time.perf_counter()
        spec = fusion_spec(fusion)
        dense, lexical = score_blocks["model"], score_blocks["bm25"]

        internal = (
            internal_definitions(map(defined_name, suite.codes)) if "internal_penalty" in spec else None
        )

        def hybrid_block(start: int, end: int) -> np.ndarray:
            queries = suite.queries[start:end]
            return fuse_queries(dense(start, end), lexical(start, end), queries, spec, internal)

        record("hybrid", hybrid_block, started)
        result["fusion"] = spec
    # The model against each baseline on the same queries: is the gap more than this suite's noise?
    result["model_vs"] = {
        protocol: {
            system: paired_mrr_difference(ranks_of[protocol, "model"], ranks_of[protocol, system], seed=seed)
            for system in result[protocol]
            if system != "model"
        }
        for protocol in protocols
        if "model" in result[protocol]
    }
    # Hybrid against the model alone (does fusing BM25 in help beyond this suite's noise?) and against the
    # zero-shot start (the shipped default against what a user starts from), on the same queries.
    result["hybrid_vs"] = {
        protocol: {
            system: paired_mrr_difference(ranks_of[protocol, "hybrid"], ranks_of[protocol, system], seed=seed)
            for system in ("model", "zero_shot")
            if system in result[protocol]
        }
        for protocol in protocols
        if "hybrid" in result[protocol]
    }
    for which, gaps in (("model", result["model_vs"]), ("hybrid", result["hybrid_vs"])):
        for protocol, baselines in gaps.items():
            for system, gap in baselines.items():
                log(
                    "evaluate",
                    f"{suite.name} {protocol}: {which} - {system} MRR {gap['mrr_difference']:+.4f} "
                    f"(95% CI {gap['ci95_low']:+.4f} .. {gap['ci95_high']:+.4f}, paired bootstrap)",
                )
    if suite.languages is not None and len(set(suite.languages)) > 1 and ranks_of:
        result["by_language"] = language_breakdown(ranks_of, candidates_of, suite.languages, seed=seed)
        shown = "full" if "full" in protocols else protocols[0]
        for language, part in result["by_language"].items():
            summary = ", ".join(f"{system} {m['mrr']:.4f}" for system, m in part[shown].items())
            log("evaluate", f"{suite.name} {language}: {part['n_queries']} queries, {shown} MRR {summary}")
    return result


# ---------------------------------------------------------------- the fusion rule, chosen on a mix of suites

QUERY_STYLES = ("docstring", "question")  # how a suite's queries are written (MixSuite.style)
CHOICE_RULE = (
    "the candidate with the best mean full-corpus MRR gain over dense across the mix's suites (each suite "
    "counts once), among those whose MRR is not below dense's (point estimate) on any question-style suite; "
    "ties go to the earlier candidate (dense first, then smaller weights)"
)


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make field-wise == ambiguous
class MixSuite:
    """One suite of the mix the fusion is chosen on (choose_fusion).

    ``style``: "docstring" (its queries are docstrings: the valid split) or "question" (queries as people
    type them, keyword or question form: CoSQA dev, the everyday suite); the chosen fusion may never cost a
    question-style suite MRR. ``relevant`` [R, 2] int64: (query, candidate) pairs, every query at least
    one; a query's rank is its best-ranked relevant candidate's (``best_relevant_ranks``). ``exclude``
    [E, 2]: (query, candidate) pairs that are neither relevant nor a distractor (semcode.suites).
    """

    name: str
    style: str
    queries: list[str]
    codes: list[str]
    relevant: np.ndarray
    exclude: np.ndarray
    source: str = ""
    # What ranks this suite when not choose_fusion's own embedding: the everyday suite is embedded as the
    # index embeds its rows (build_index's max length), the other suites at evaluate's.
    embed: EmbedFn | None = None
    # [C] bool: the candidates that are internal definitions (semcode.retrieval.internal_definitions), for
    # a fusion's internal_penalty; None: read off each candidate's code (defined_name).
    internal: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.style not in QUERY_STYLES:
            raise ValueError(f"suite {self.name}: style {self.style!r} is not one of {list(QUERY_STYLES)}")
        if not self.queries or not self.codes:
            raise ValueError(f"suite {self.name}: choosing a fusion needs queries and candidates")
        for what, pairs in (("relevant", self.relevant), ("exclude", self.exclude)):
            if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
                raise ValueError(f"suite {self.name}: {what} must be integer pairs [N, 2], got {pairs.shape}")
            if len(pairs) and (
                pairs[:, 0].min() < 0
                or pairs[:, 0].max() >= len(self.queries)
                or pairs[:, 1].min() < 0
                or pairs[:, 1].max() >= len(self.codes)
            ):
                raise ValueError(f"suite {self.name}: a {what} pair lies outside its queries or candidates")
        # Sorted by query, as exclusion_mask reads them; a pair given twice counts once.
        object.__setattr__(self, "relevant", np.unique(self.relevant.astype(np.int64), axis=0))
        object.__setattr__(self, "exclude", np.unique(self.exclude.astype(np.int64), axis=0))
        if len(np.unique(self.relevant[:, 0])) != len(self.queries):
            raise ValueError(f"suite {self.name}: every query needs at least one relevant candidate")
        if self.internal is None:
            object.__setattr__(self, "internal", internal_definitions(map(defined_name, self.codes)))
        elif np.shape(self.internal) != (len(self.codes),):
            raise ValueError(
                f"suite {self.name}: internal must be [candidates] bool, got {np.shape(self.internal)}"
            )


def mix_suite(suite: Suite, style: str) -> MixSuite:
    """A one-gold suite (semcode.suites.Suite: the valid split, CoSQA dev) as a suite of the mix."""
    gold = _check_gold(suite.gold, len(suite.queries), len(suite.codes))
    relevant = np.stack([np.arange(len(gold)), gold], axis=1)  # [Q, 2]
    exclude = check_exclude(suite.exclude, gold, len(suite.codes))
    return MixSuite(
        suite.name, style, list(suite.queries), list(suite.codes), relevant, exclude, suite.source
    )


def best_relevant_ranks(
    scores: np.ndarray, relevant: np.ndarray, exclude_mask: np.ndarray | None = None
) -> np.ndarray:
    """1 + the number of other candidates, neither relevant nor excluded, scoring >= the query's best
    relevant candidate; scores [Q, C], relevant and exclude_mask [Q, C] bool -> ranks [Q] int64. With one
    relevant candidate per query, ranks_from_scores."""
    best = np.where(relevant, scores, -np.inf).max(axis=1)  # [Q] the best relevant candidate's score
    beaten_by = (scores >= best[:, None]) & ~relevant  # [Q, C]
    if exclude_mask is not None:
        beaten_by &= ~exclude_mask
    return 1 + beaten_by.sum(axis=1, dtype=np.int64)


def fusion_candidates(
    weights: Sequence[float],
    rrf: bool = True,
    per_form: bool = True,
    penalties: Sequence[float] = INTERNAL_PENALTIES,
) -> list[dict]:
    """The fusion specs choose_fusion tries, dense first: ``convex`` at each weight, and at each weight
    with each internal ``penalties`` (internal definitions ranked that much lower), ``rrf``, and with
    ``per_form`` each pair of weights (w, question w') with w' < w (questions take less lexical help)."""
    for weight in weights:
        check_fusion("convex", weight)
    for penalty in penalties:
        check_penalty(penalty)
    weights = sorted({0.0, *map(float, weights)})
    candidates = [{"rule": "convex", "weight": weight} for weight in weights]
    candidates += [
        {"rule": "convex", "weight": weight, "internal_penalty": float(penalty)}
        for weight in weights
        for penalty in sorted(set(penalties) - {0})
    ]
    candidates += [{"rule": "rrf", "weight": 0.0}] if rrf else []
    if per_form:
        candidates += [
            {"rule": "convex", "weight": weight, "question_weight": question}
            for weight in weights
            for question in weights
            if question < weight
        ]
    return candidates


def spec_name(spec: Mapping) -> str:
    """fusion_name of a fusion spec."""
    return fusion_name(
        spec["rule"], spec["weight"], spec.get("question_weight"), spec.get("internal_penalty", 0.0)
    )


def choose_fusion(
    mix: Sequence[MixSuite],
    embed: EmbedFn,
    weights: Sequence[float] = FUSION_WEIGHTS,
    rrf: bool = True,
    per_form: bool = True,
    penalties: Sequence[float] = INTERNAL_PENALTIES,
    bm25_stopwords: bool = False,
    block_size: int = DEFAULT_BLOCK_SIZE,
    seed: int = 0,
) -> dict:
    """The fusion spec chosen on ``mix`` (never test or a held-out suite) by CHOICE_RULE.

    Candidates: fusion_candidates(weights, rrf, per_form, penalties); each is ranked on every suite of the mix,
    full-corpus, the model's cosine fused with BM25 over that suite's candidates (fuse_queries). Returns
    the chosen spec (``rule``, ``weight``, ``question_weight`` for a per-form one) with ``"name"``,
    ``"default_mode"`` ("dense" when the chosen spec is dense itself, else "hybrid"), ``"chosen_on"``
    [suite names], ``"criterion"`` (CHOICE_RULE), ``"suites": {suite: {style, source, n_queries,
    n_candidates, forms (query_form counts), dense_mrr, bm25_mrr}}``, ``"candidates": {name: {"mrr":
    {suite: MRR}, "gain": mean MRR - dense's, "loses_on": [question-style suites below dense]}}`` and
    ``"chosen_vs_dense": {suite: paired_mrr_difference}``.
    """
    if not mix:
        raise ValueError("choose_fusion needs at least one suite to choose on")
    names = [suite.name for suite in mix]
    if len(set(names)) != len(names):
        raise ValueError(f"the suites of the mix must have distinct names, got {names}")
    candidates = fusion_candidates(weights, rrf, per_form, penalties)
    started = time.perf_counter()
    mrr: dict[str, dict[str, float]] = {}  # suite -> {candidate or "bm25": MRR}
    ranks_of: dict[str, dict[str, np.ndarray]] = {}  # suite -> {candidate: [Q] ranks}
    suites: dict = {}
    for suite in mix:
        n_queries, n_codes = len(suite.queries), len(suite.codes)
        suite_embed = suite.embed or embed
        dense_block = dot_score_blocks(suite_embed(suite.queries, "query"), suite_embed(suite.codes, "code"))
        index = BM25Index(suite.codes, stopwords=bm25_stopwords)
        query_weights_of = [  # [Q] each candidate's weight per query; None for rrf
            query_weights(suite.queries, spec) if spec["rule"] == "convex" else None for spec in candidates
        ]
        ranks = {name: np.zeros(n_queries, np.int64) for name in ["bm25", *map(spec_name, candidates)]}
        for start in range(0, n_queries, block_size):
            end = min(start + block_size, n_queries)
            dense = dense_block(start, end)  # [b, C]
            lexical = index.scores(suite.queries[start:end])  # [b, C]
            relevant = exclusion_mask(suite.relevant, start, end, n_codes)  # [b, C]
            excluded = exclusion_mask(suite.exclude, start, end, n_codes)  # [b, C]
            ranks["bm25"][start:end] = best_relevant_ranks(lexical, relevant, excluded)
            for spec, per_query in zip(candidates, query_weights_of, strict=True):
                if per_query is None:
                    fused = rrf_fusion(dense, lexical)
                else:
                    fused = convex_fusion(dense, lexical, per_query[start:end])
                    fused = penalise_internal(fused, suite.internal, spec.get("internal_penalty", 0.0))
                ranks[spec_name(spec)][start:end] = best_relevant_ranks(fused, relevant, excluded)
        ranks_of[suite.name] = ranks
        mrr[suite.name] = {name: float(np.mean(1.0 / r)) for name, r in ranks.items()}
        dense_name = spec_name(candidates[0])
        suites[suite.name] = {
            "style": suite.style,
            "source": suite.source,
            "n_queries": n_queries,
            "n_candidates": n_codes,
            "forms": dict(Counter(query_form(query) for query in suite.queries)),
            "dense_mrr": round(mrr[suite.name][dense_name], 6),
            "bm25_mrr": round(mrr[suite.name]["bm25"], 6),
        }

    dense_name = spec_name(candidates[0])  # convex@0: the dense ranking
    table: dict = {}
    for spec in candidates:
        name = spec_name(spec)
        gaps = {s.name: mrr[s.name][name] - mrr[s.name][dense_name] for s in mix}
        table[name] = {
            "mrr": {s.name: round(mrr[s.name][name], 6) for s in mix},
            "gain": float(np.mean(list(gaps.values()))),
            "loses_on": [s.name for s in mix if s.style == "question" and gaps[s.name] < 0],
        }
    allowed = [spec for spec in candidates if not table[spec_name(spec)]["loses_on"]]  # dense always is
    chosen = max(allowed, key=lambda spec: table[spec_name(spec)]["gain"])  # max: the first of ties
    name = spec_name(chosen)
    for row in table.values():
        row["gain"] = round(row["gain"], 6)
    result = {
        **chosen,
        "name": name,
        "default_mode": "dense" if is_dense(chosen) else "hybrid",
        "chosen_on": names,
        "criterion": CHOICE_RULE,
        "suites": suites,
        "candidates": table,
        "chosen_vs_dense": {
            s.name: paired_mrr_difference(ranks_of[s.name][name], ranks_of[s.name][dense_name], seed=seed)
            for s in mix
        },
        "seconds": round(time.perf_counter() - started, 3),
    }
    summary = ", ".join(f"{s.name} ({s.style}) dense {suites[s.name]['dense_mrr']:.4f}" for s in mix)
    chosen_mrr = ", ".join(f"{s} {v:.4f}" for s, v in table[name]["mrr"].items())
    log(
        "evaluate",
        f"fusion on {summary}: {len(candidates)} candidates -> {name} ({chosen_mrr}; "
        f"default mode {result['default_mode']})",
    )
    return result
