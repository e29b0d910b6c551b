"""semcode.mining on hand-made candidate lists: each filter, the padding, the removal counts, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from semcode import index as faiss_index
from semcode import mining

POOL = 10
KEYS = np.arange(POOL, dtype=np.int64)  # every pool row distinct unless a test says otherwise


def one_query(
    ids: list[int], scores: list[float], positive: float, gold: int, keys: np.ndarray = KEYS, **options
):
    """select_hard_negatives for a single query; options override the filters (all off by default)."""
    arguments = {"count": 3, "range_min": 0, "range_max": 100, "relative_margin": 0.0, "absolute_margin": 0.0}
    arguments.update(options)
    return mining.select_hard_negatives(
        np.array([ids], dtype=np.int64),
        np.array([scores], dtype=np.float32),
        np.array([positive], dtype=np.float32),
        np.array([gold], dtype=np.int64),
        keys,
        **arguments,
    )


def test_without_filters_the_best_candidates_but_the_gold_are_kept():
    mined = one_query([4, 7, 1, 2, 9], [0.9, 0.8, 0.7, 0.6, 0.5], positive=0.8, gold=7)
    assert mined.ids.tolist() == [[4, 1, 2]]
    np.testing.assert_allclose(mined.scores, [[0.9, 0.7, 0.6]])
    assert mined.removed == {
        "gold": 1,
        "duplicate": 0,
        "rank": 0,
        "relative_margin": 0,
        "absolute_margin": 0,
        "surplus": 1,
    }
    assert mined.per_row().tolist() == [3]


def test_exact_duplicates_of_the_gold_are_never_negatives():
    keys = KEYS.copy()
    keys[3] = keys[7]  # row 3 is a copy of row 7
    mined = one_query([3, 7, 1, 2], [0.95, 0.9, 0.7, 0.6], positive=0.9, gold=7, keys=keys)
    assert mined.ids.tolist() == [[1, 2, -1]]
    assert mined.removed["gold"] == 1 and mined.removed["duplicate"] == 1


def test_rank_range_counts_ranks_after_removing_the_gold():
    ids, scores = [5, 6, 7, 8, 9, 1], [0.9, 0.85, 0.8, 0.7, 0.6, 0.5]
    # without the gold (6), the ranks are 5:0, 7:1, 8:2, 9:3, 1:4; [1, 3) keeps 7 and 8
    mined = one_query(ids, scores, positive=0.85, gold=6, range_min=1, range_max=3)
    assert mined.ids.tolist() == [[7, 8, -1]]
    assert mined.removed["rank"] == 3 and mined.removed["gold"] == 1 and mined.removed["surplus"] == 0


def test_relative_margin_drops_candidates_at_or_above_the_fraction_of_the_positive():
    ids, scores = [1, 2, 3, 4, 5], [0.99, 0.8, 0.77, 0.75, 0.5]
    # positive 0.8 * 0.95 = 0.76: 0.99, 0.8 and 0.77 are too close
    mined = one_query(ids, scores, positive=0.8, gold=0, relative_margin=0.95)
    assert mined.ids.tolist() == [[4, 5, -1]]
    assert mined.removed["relative_margin"] == 3
    np.testing.assert_allclose(np.sort(mined.too_close_scores), [0.77, 0.8, 0.99])


def test_relative_margin_keeps_a_bound_below_a_negative_positive_score():
    mined = one_query([1, 2, 3], [-0.1, -0.104, -0.2], positive=-0.1, gold=0, relative_margin=0.95)
    assert mined.ids.tolist() == [[3, -1, -1]]  # bound -0.105: -0.1 and -0.104 are too close


def test_absolute_margin_drops_candidates_within_the_margin_and_zero_turns_it_off():
    ids, scores = [1, 2, 3, 4], [0.75, 0.71, 0.69, 0.4]
    mined = one_query(ids, scores, positive=0.8, gold=0, absolute_margin=0.1)  # bound 0.7
    assert mined.ids.tolist() == [[3, 4, -1]]
    assert mined.removed["absolute_margin"] == 2 and mined.removed["relative_margin"] == 0
    assert one_query(ids, scores, positive=0.8, gold=0).ids.tolist() == [[1, 2, 3]]


def test_a_candidate_both_margins_remove_counts_once_under_the_relative_margin():
    mined = one_query([1, 2], [0.79, 0.3], positive=0.8, gold=0, relative_margin=0.95, absolute_margin=0.1)
    assert mined.removed["relative_margin"] == 1 and mined.removed["absolute_margin"] == 0
    assert mined.ids.tolist() == [[2, -1, -1]]


def test_count_and_minus_one_padding_with_faiss_padding_in_the_candidates():
    mined = one_query([1, 2, -1, -1], [0.5, 0.4, -3e38, -3e38], positive=0.9, gold=0, count=5)
    assert mined.ids.shape == (1, 5) and mined.ids.tolist() == [[1, 2, -1, -1, -1]]
    assert np.isnan(mined.scores[0, 2:]).all()
    assert sum(mined.removed.values()) == 0  # FAISS padding is no candidate, nothing was removed


def test_random_sampling_is_seeded_keeps_rank_order_and_only_survivors():
    ids = np.array([list(range(1, 10))], dtype=np.int64)
    scores = np.linspace(0.9, 0.1, 9, dtype=np.float32)[None, :]
    arguments = (ids, scores, np.array([0.8], np.float32), np.array([0]), KEYS)
    top = mining.select_hard_negatives(*arguments, count=3, relative_margin=0.95, sampling="top")
    a = mining.select_hard_negatives(*arguments, count=3, relative_margin=0.95, sampling="random", seed=1)
    b = mining.select_hard_negatives(*arguments, count=3, relative_margin=0.95, sampling="random", seed=1)
    assert top.ids.tolist() == [[3, 4, 5]]  # 0.9 and 0.8 are too close to 0.8
    assert a.ids.tolist() == b.ids.tolist()
    assert set(a.ids[0]) <= set(range(3, 10)) and list(a.ids[0]) == sorted(a.ids[0])
    seeds = {
        tuple(mining.select_hard_negatives(*arguments, count=3, sampling="random", seed=s).ids[0])
        for s in range(8)
    }
    assert len(seeds) > 1


def test_removal_counts_add_up_over_several_queries():
    keys = KEYS.copy()
    keys[9] = keys[0]
    ids = np.array([[0, 9, 1, 2, 3], [5, 1, 2, 3, 4]], dtype=np.int64)
    scores = np.array([[0.9, 0.9, 0.89, 0.5, 0.4], [0.7, 0.6, 0.5, 0.4, 0.3]], dtype=np.float32)
    mined = mining.select_hard_negatives(
        ids,
        scores,
        np.array([0.9, 0.8], np.float32),
        np.array([0, 1]),
        keys,
        count=2,
        range_min=0,
        range_max=3,
        relative_margin=0.95,
    )
    assert mined.ids.tolist() == [[2, 3], [5, 2]]
    assert mined.removed == {
        "gold": 2,
        "duplicate": 1,
        "rank": 1,
        "relative_margin": 1,
        "absolute_margin": 0,
        "surplus": 1,
    }
    assert sum(mined.removed.values()) + int(mined.per_row().sum()) == ids.size


def test_on_real_search_results_negatives_are_never_the_gold_and_lie_below_the_margin():
    codes = faiss_index.clustered_unit_vectors(400, 16, n_clusters=10, seed=0)
    queries = codes[:100] + 0.05 * faiss_index.clustered_unit_vectors(100, 16, seed=1)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gold = np.arange(100)
    keys = mining.duplicate_keys([f"def f{i}(): return {i}" for i in range(400)])
    depth = mining.search_depth(20, keys)
    scores, ids = faiss_index.exact_search(codes, queries, depth)
    positive = mining.positive_scores(queries, codes, gold)
    mined = mining.select_hard_negatives(ids, scores, positive, gold, keys, count=4, range_max=20)
    assert depth == 21 and mined.ids.shape == (100, 4)
    assert not (mined.ids == gold[:, None]).any()
    kept = mined.ids >= 0
    assert (mined.scores[kept] < np.repeat(positive, 4).reshape(100, 4)[kept] * 0.95 + 1e-6).all()


def test_duplicate_keys_follow_the_ingest_normalisation_and_search_depth_makes_room_for_copies():
    keys = mining.duplicate_keys(["def f(a, b):\n    return a", "def f( a,b ):\n  return a", "def g(): pass"])
    assert keys.dtype == np.int64 and keys[0] == keys[1] != keys[2]
    assert mining.search_depth(50, keys) == 3  # never more than the pool
    assert mining.search_depth(1, keys) == 3  # range_max + the gold + its one copy


def test_score_summary_percentiles_and_empty():
    summary = mining.score_summary(np.array([0.0, 0.5, 1.0, np.nan]))
    assert summary["count"] == 3 and summary["p50"] == 0.5 and summary["min"] == 0.0 and summary["max"] == 1.0
    assert mining.score_summary(np.array([])) == {"count": 0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"candidate_ids": np.array([1, 2])}, "candidate_ids must be a 2-D integer array"),
        ({"candidate_ids": np.array([[1.0, 2.0]])}, "candidate_ids must be a 2-D integer array"),
        ({"candidate_scores": np.array([[0.5]], np.float32)}, "candidate_scores must be a float array"),
        ({"candidate_scores": np.array([[0.4, 0.5]], np.float32)}, "sorted best first"),
        ({"positive_scores": np.array([0.9, 0.8], np.float32)}, "positive_scores must have shape"),
        ({"gold_ids": np.array([0.0])}, "gold_ids must be an integer array"),
        ({"gold_ids": np.array([POOL])}, "gold_ids must be pool rows"),
        ({"candidate_ids": np.array([[1, POOL]])}, "outside the pool"),
        ({"duplicate_keys": KEYS[None, :]}, "duplicate_keys must be 1-D"),
        ({"count": 0}, "count must be >= 1"),
        ({"range_min": 5, "range_max": 5}, "range_min < range_max"),
        ({"relative_margin": -0.1}, "must be >= 0"),
        ({"absolute_margin": -1.0}, "must be >= 0"),
        ({"sampling": "hardest"}, "sampling must be one of"),
        ({"positive_scores": [0.9]}, "must be a numpy array"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(change: dict, message: str):
    arguments = {
        "candidate_ids": np.array([[1, 2]], dtype=np.int64),
        "candidate_scores": np.array([[0.5, 0.4]], dtype=np.float32),
        "positive_scores": np.array([0.9], dtype=np.float32),
        "gold_ids": np.array([0], dtype=np.int64),
        "duplicate_keys": KEYS,
        "count": 2,
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        mining.select_hard_negatives(**arguments)


def test_positive_scores_and_search_depth_check_shapes():
    with pytest.raises(ValueError, match="gold_ids must have shape"):
        mining.positive_scores(np.zeros((2, 4), np.float32), np.zeros((5, 4), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="need query_vectors"):
        mining.positive_scores(np.zeros((2, 4), np.float32), np.zeros((5, 3), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mining.search_depth(10, np.array([], dtype=np.int64))
