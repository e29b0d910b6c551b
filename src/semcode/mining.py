"""Hard-negative mining: pick, for each query, codes the encoder ranks high that are not its answer.

Free functions over numpy arrays. The search itself is semcode.index (exact inner product over unit
vectors); this module decides which of the retrieved candidates become hard negatives.

For query i with gold code ``gold_ids[i]`` and its candidates ``candidate_ids[i]`` (the top k of the
code pool, best first), the filters run in this order, and each candidate is counted under the first
one that removes it::

    gold             the gold code itself
    duplicate        an exact duplicate of the gold (the same ``duplicate_keys`` value, e.g. the hash
                     of the normalised code): a copy of the answer is an answer, never a negative
    rank             outside [range_min, range_max), ranks counted from 0 over the candidates left after
                     removing the gold and its duplicates (range_min > 0 skips the very top, where
                     unlabelled true answers concentrate)
    relative_margin  too close to the positive: score >= positive_score * relative_margin
                     (NV-Retriever's "TopK-PercPos", 0.95 in the paper; 0 = off)
    absolute_margin  too close to the positive: score >= positive_score - absolute_margin (0 = off)
    surplus          survived every filter but ``count`` negatives were already taken

``count`` survivors are kept per query: the best ranked ("top") or a seeded uniform sample
("random"), in rank order either way; rows with fewer survivors are padded with id -1.

NV-Retriever: Moreira et al. 2024, "NV-Retriever: Improving text embedding models with effective
hard-negative mining". Note that sentence-transformers' ``mine_hard_negatives(relative_margin=0.05)``
is this module's ``relative_margin=0.95``: there the margin is the fraction below the positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semcode.data.clean import code_hash

REMOVAL_REASONS = ("gold", "duplicate", "rank", "relative_margin", "absolute_margin", "surplus")
SAMPLING_STRATEGIES = ("top", "random")
SORTED_TOLERANCE = 1e-5  # FAISS may return near-ties a rounding error out of order
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class MinedNegatives:
    """What ``select_hard_negatives`` chose, for n queries.

    ids [n, count] int64: pool rows of the hard negatives, best ranked first, -1 = none.
    scores [n, count] float32: their scores, NaN where the id is -1.
    removed: candidates removed per reason (REMOVAL_REASONS), over all queries.
    too_close_scores [m] float32: the scores of the candidates the two margins removed.
    """

    ids: np.ndarray
    scores: np.ndarray
    removed: dict[str, int]
    too_close_scores: np.ndarray

    def per_row(self) -> np.ndarray:
        """[n] int64: hard negatives found for each query."""
        return (self.ids >= 0).sum(axis=1)


def duplicate_keys(codes: Sequence[str]) -> np.ndarray:
    """[N] int64: a key per code, equal for codes that are the same once layout is normalised.

    The ingest deduplication's own rule (semcode.data.clean.code_hash), so "duplicate" means the same
    here as there.
    """
    return np.array(
        [int.from_bytes(code_hash(code)[:8], "little", signed=True) for code in codes], dtype=np.int64
    )


def search_depth(range_max: int, keys: np.ndarray) -> int:
    """Candidates to retrieve per query so the whole rank range survives removing the gold and its copies.

    The gold and up to (largest number of codes sharing one key - 1) duplicates of it may sit above the
    range; never more than the pool holds.
    """
    if keys.ndim != 1 or len(keys) == 0:
        raise ValueError(f"keys must be a non-empty 1-D array [N], got shape {keys.shape}")
    if range_max < 1:
        raise ValueError(f"range_max must be >= 1, got {range_max}")
    _, copies = np.unique(keys, return_counts=True)
    return int(min(len(keys), range_max + int(copies.max())))


def positive_scores(query_vectors: np.ndarray, code_vectors: np.ndarray, gold_ids: np.ndarray) -> np.ndarray:
    """[n] float32: the inner product of query i [n, D] with its gold code, row gold_ids[i] of [N, D]."""
    if query_vectors.ndim != 2 or code_vectors.ndim != 2 or query_vectors.shape[1] != code_vectors.shape[1]:
        raise ValueError(
            f"need query_vectors [n, D] and code_vectors [N, D], got {query_vectors.shape} and {code_vectors.shape}"
        )
    if gold_ids.shape != (len(query_vectors),):
        raise ValueError(f"gold_ids must have shape [{len(query_vectors)}], got {gold_ids.shape}")
    gold = code_vectors[gold_ids]  # [n, D]
    return np.einsum("nd,nd->n", query_vectors, gold).astype(np.float32)


def select_hard_negatives(
    candidate_ids: np.ndarray,
    candidate_scores: np.ndarray,
    positive_scores: np.ndarray,
    gold_ids: np.ndarray,
    duplicate_keys: np.ndarray,
    count: int,
    range_min: int = 0,
    range_max: int = 50,
    relative_margin: float = 0.95,
    absolute_margin: float = 0.0,
    sampling: str = "top",
    seed: int = 0,
) -> MinedNegatives:
    """Filter each query's retrieved candidates down to ``count`` hard negatives (see the module doc).

    candidate_ids [n, k] int (-1 = no candidate, FAISS' padding), candidate_scores [n, k] float, sorted
    best first per row; positive_scores [n]: each query's score with its gold; gold_ids [n]: the gold's
    pool row; duplicate_keys [N]: one key per pool row (``duplicate_keys(codes)``).
    """
    _check_arguments(
        candidate_ids,
        candidate_scores,
        positive_scores,
        gold_ids,
        duplicate_keys,
        count,
        range_min,
        range_max,
        relative_margin,
        absolute_margin,
        sampling,
    )
    n, k = candidate_ids.shape
    scores = candidate_scores.astype(np.float32, copy=False)
    present = candidate_ids >= 0  # [n, k]
    safe_ids = np.where(present, candidate_ids, 0)  # [n, k], valid rows to index with
    gold = gold_ids[:, None]  # [n, 1]

    is_gold = present & (candidate_ids == gold)  # [n, k]
    is_duplicate = present & ~is_gold & (duplicate_keys[safe_ids] == duplicate_keys[gold])  # [n, k]
    others = present & ~is_gold & ~is_duplicate  # [n, k]
    rank = np.cumsum(others, axis=1) - 1  # [n, k]: rank among the others (meaningful where `others`)
    in_range = others & (rank >= range_min) & (rank < range_max)  # [n, k]

    positive = positive_scores.astype(np.float32)[:, None]  # [n, 1]
    # positive * relative_margin, written so that a negative positive score gets a bound below it too.
    relative_bound = positive - (1.0 - relative_margin) * np.abs(positive)  # [n, 1]
    too_close_relative = in_range & (relative_margin > 0) & (scores >= relative_bound)  # [n, k]
    too_close_absolute = (
        in_range & ~too_close_relative & (absolute_margin > 0) & (scores >= positive - absolute_margin)
    )  # [n, k]
    survivors = in_range & ~too_close_relative & ~too_close_absolute  # [n, k]

    # Take `count` survivors per row: the lowest priority first (rank order for "top", random otherwise).
    if sampling == "top":
        priority = np.broadcast_to(np.arange(k, dtype=np.float64), (n, k))  # [n, k]
    else:
        priority = np.random.default_rng(seed).random((n, k))  # [n, k]
    priority = np.where(survivors, priority, np.inf)
    width = min(count, k)
    picked = np.argsort(priority, axis=1, kind="stable")[:, :width]  # [n, width] column numbers
    picked_ok = np.take_along_axis(survivors, picked, axis=1)  # [n, width]
    columns = np.sort(np.where(picked_ok, picked, k), axis=1)  # [n, width] in rank order, k = none
    found = columns < k
    safe_columns = np.minimum(columns, k - 1)
    ids = np.full((n, count), -1, dtype=np.int64)
    out_scores = np.full((n, count), np.nan, dtype=np.float32)
    ids[:, :width] = np.where(found, np.take_along_axis(candidate_ids, safe_columns, axis=1), -1)
    out_scores[:, :width] = np.where(found, np.take_along_axis(scores, safe_columns, axis=1), np.nan)

    kept = int(found.sum())
    removed = {
        "gold": int(is_gold.sum()),
        "duplicate": int(is_duplicate.sum()),
        "rank": int((others & ~in_range).sum()),
        "relative_margin": int(too_close_relative.sum()),
        "absolute_margin": int(too_close_absolute.sum()),
        "surplus": int(survivors.sum()) - kept,
    }
    too_close_scores = scores[too_close_relative | too_close_absolute].astype(np.float32)
    return MinedNegatives(ids, out_scores, removed, too_close_scores)


def score_summary(values: np.ndarray) -> dict[str, float | int]:
    """count, mean, min, p5..p95, max of a 1-D array of scores (NaN ignored); only count when empty."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {"count": 0}
    summary: dict[str, float | int] = {"count": len(values), "mean": round(float(values.mean()), 4)}
    summary["min"] = round(float(values.min()), 4)
    for q, value in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        summary[f"p{q}"] = round(float(value), 4)
    summary["max"] = round(float(values.max()), 4)
    return summary


def _check_arguments(
    candidate_ids: np.ndarray,
    candidate_scores: np.ndarray,
    positive_scores: np.ndarray,
    gold_ids: np.ndarray,
    duplicate_keys: np.ndarray,
    count: int,
    range_min: int,
    range_max: int,
    relative_margin: float,
    absolute_margin: float,
    sampling: str,
) -> None:
    arrays = {
        "candidate_ids": candidate_ids,
        "candidate_scores": candidate_scores,
        "positive_scores": positive_scores,
        "gold_ids": gold_ids,
        "duplicate_keys": duplicate_keys,
    }
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(array).__name__}")
    if candidate_ids.ndim != 2 or not np.issubdtype(candidate_ids.dtype, np.integer):
        raise ValueError(
            f"candidate_ids must be a 2-D integer array [n, k], got {candidate_ids.dtype} of shape "
            f"{candidate_ids.shape}"
        )
    n, k = candidate_ids.shape
    if k == 0:
        raise ValueError("candidate_ids has no columns: retrieve at least one candidate per query")
    if candidate_scores.shape != (n, k) or not np.issubdtype(candidate_scores.dtype, np.floating):
        raise ValueError(
            f"candidate_scores must be a float array of the candidates' shape {(n, k)}, got "
            f"{candidate_scores.dtype} of shape {candidate_scores.shape}"
        )
    if positive_scores.shape != (n,):
        raise ValueError(
            f"positive_scores must have shape [{n}] (one per query), got {positive_scores.shape}"
        )
    if gold_ids.shape != (n,) or not np.issubdtype(gold_ids.dtype, np.integer):
        raise ValueError(
            f"gold_ids must be an integer array of shape [{n}], got {gold_ids.dtype} of shape {gold_ids.shape}"
        )
    if duplicate_keys.ndim != 1:
        raise ValueError(
            f"duplicate_keys must be 1-D [N] (one per pool row), got shape {duplicate_keys.shape}"
        )
    pool = len(duplicate_keys)
    if n and (gold_ids.min() < 0 or gold_ids.max() >= pool):
        raise ValueError(
            f"gold_ids must be pool rows in [0, {pool}), got values in [{gold_ids.min()}, {gold_ids.max()}]"
        )
    if n and candidate_ids.max() >= pool:
        raise ValueError(f"candidate_ids holds {candidate_ids.max()}, outside the pool of {pool} rows")
    floor = np.finfo(np.float64).min  # padding compares as the lowest score
    padded = np.where(candidate_ids >= 0, candidate_scores.astype(np.float64), floor)
    if n and k > 1 and np.any(np.diff(padded, axis=1) > SORTED_TOLERANCE):
        raise ValueError("candidate_scores must be sorted best first in every row (as FAISS returns them)")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 0 <= range_min < range_max:
        raise ValueError(f"need 0 <= range_min < range_max, got range_min={range_min}, range_max={range_max}")
    if relative_margin < 0 or absolute_margin < 0:
        raise ValueError(
            f"relative_margin and absolute_margin must be >= 0 (0 = off), got {relative_margin} and {absolute_margin}"
        )
    if sampling not in SAMPLING_STRATEGIES:
        raise ValueError(f"sampling must be one of {SAMPLING_STRATEGIES}, got {sampling!r}")
