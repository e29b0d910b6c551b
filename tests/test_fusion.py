"""The fusion rules of hybrid retrieval (semcode.retrieval.fuse) on hand-made score arrays, and the choice
of a rule on a tiny real valid split (a hand-made embedding function, real BM25)."""

from __future__ import annotations

import numpy as np
import pytest

from semcode.evaluation import choose_fusion
from semcode.retrieval import RRF_K, competition_ranks, convex_fusion, fuse, fusion_name, rrf_fusion
from semcode.suites import pairs_suite

# Two queries, four candidates. Query 0: the cosine prefers candidate 0, BM25 candidate 2 strongly.
DENSE = np.array([[0.50, 0.40, 0.45, 0.10], [0.30, 0.20, 0.10, 0.00]], dtype=np.float32)
LEXICAL = np.array([[1.0, 0.0, 8.0, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)


def test_convex_adds_the_max_normalised_bm25_times_the_weight() -> None:
    fused = convex_fusion(DENSE, LEXICAL, 0.1)
    expected_0 = DENSE[0] + 0.1 * np.array([1 / 8, 0.0, 1.0, 2 / 8])
    np.testing.assert_allclose(fused[0], expected_0, rtol=1e-6)
    assert int(fused[0].argmax()) == 2  # 0.45 + 0.1 beats 0.50 + 0.0125
    np.testing.assert_array_equal(fused[1], DENSE[1])  # no word of query 1 anywhere: its cosine stays
    np.testing.assert_array_equal(convex_fusion(DENSE, LEXICAL, 0.0), DENSE)  # weight 0 is dense
    assert int(convex_fusion(DENSE, LEXICAL, 0.04)[0].argmax()) == 0  # too little to overtake


def test_the_normalisation_is_per_query() -> None:
    """Scaling one query's BM25 scores changes nothing: only the ratio to that query's best counts."""
    scaled = LEXICAL.copy()
    scaled[0] *= 100
    np.testing.assert_allclose(convex_fusion(DENSE, scaled, 0.3), convex_fusion(DENSE, LEXICAL, 0.3))


def test_competition_ranks_share_the_best_rank_of_a_tie() -> None:
    ranks = competition_ranks(np.array([[3.0, 1.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(ranks, [[1, 3, 1, 4], [1, 1, 1, 1]])


def test_rrf_sums_reciprocal_ranks_with_k_60() -> None:
    fused = rrf_fusion(DENSE, LEXICAL)
    # query 0: dense ranks 1, 3, 2, 4; BM25 ranks 3, 4, 1, 2
    expected = [1 / 61 + 1 / 63, 1 / 63 + 1 / 64, 1 / 62 + 1 / 61, 1 / 64 + 1 / 62]
    np.testing.assert_allclose(fused[0], expected, rtol=1e-6)
    assert RRF_K == 60 and int(fused[0].argmax()) == 2
    # query 1: every BM25 score is 0, one shared rank: the dense order decides
    assert list(np.argsort(-fused[1])) == [0, 1, 2, 3]
    np.testing.assert_array_equal(fuse(DENSE, LEXICAL, "rrf", 0.7), fused)  # rrf takes no weight


def test_bad_fusion_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"'mean' is not one of \['convex', 'rrf'\]"):
        fuse(DENSE, LEXICAL, "mean", 0.1)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        fuse(DENSE, LEXICAL, "convex", -0.1)
    with pytest.raises(ValueError, match="of one shape"):
        fuse(DENSE, LEXICAL[:, :3], "convex", 0.1)
    with pytest.raises(ValueError, match="NaN"):
        fuse(np.full((1, 2), np.nan), np.zeros((1, 2)), "rrf")
    assert fusion_name("convex", 0.05) == "convex@0.05" and fusion_name("rrf", 0.0) == "rrf"


# A valid split where words decide: the hand-made "encoder" below sees only each text's length, so it
# ranks poorly, and BM25 (the words) finds every gold.
VALID_PAIRS = [
    ("parse a json document", "def parse_json(document):\n    return json.loads(document)"),
    ("reverse the words of a sentence", "def reverse_words(sentence):\n    return sentence.split()[::-1]"),
    ("download a web page", "def download_page(url):\n    return urlopen(url).read()"),
    (
        "compress a file with gzip",
        "def gzip_file(path):\n    shutil.copyfileobj(open(path), gzip.open(path + '.gz', 'w'))",
    ),
    (
        "count the vowels in a string",
        "def count_vowels(string):\n    return sum(c in 'aeiou' for c in string)",
    ),
    ("sort records by date", "def sort_by_date(records):\n    return sorted(records, key=lambda r: r.date)"),
]


def length_embed(texts: list[str], kind: str) -> np.ndarray:
    """A deliberately weak encoder: a unit vector from each text's length (same kind of signal for both)."""
    angles = np.array([len(text) % 17 for text in texts], dtype=np.float32) / 17 * np.pi
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def test_choose_fusion_picks_the_best_valid_mrr_and_hybrid_when_it_beats_dense() -> None:
    suite = pairs_suite("valid", [q for q, _ in VALID_PAIRS], [c for _, c in VALID_PAIRS], source="hand")
    chosen = choose_fusion(suite, length_embed, weights=(0.0, 0.1, 0.5, 2.0))
    assert set(chosen["valid_mrr"]) == {"convex@0", "convex@0.1", "convex@0.5", "convex@2", "rrf"}
    assert chosen["valid_mrr"]["convex@0"] == chosen["valid_dense_mrr"] < 1.0
    assert chosen["valid_bm25_mrr"] == 1.0
    best = max(chosen["valid_mrr"].values())
    assert chosen["valid_mrr"][fusion_name(chosen["rule"], chosen["weight"])] == best
    assert chosen["beats_dense"] and chosen["default_mode"] == "hybrid"
    assert chosen["n_queries"] == 6 and chosen["n_candidates"] == 6

    # An encoder that already finds every gold: no fusion beats it, the first of the ties (weight 0) wins.
    def perfect(texts: list[str], kind: str) -> np.ndarray:
        rows = [i for text in texts for i, pair in enumerate(VALID_PAIRS) if text in pair]
        return np.eye(len(VALID_PAIRS), dtype=np.float32)[rows]

    chosen = choose_fusion(suite, perfect, weights=(0.0, 0.1))
    assert (chosen["rule"], chosen["weight"]) == ("convex", 0.0)
    assert not chosen["beats_dense"] and chosen["default_mode"] == "dense"
    with pytest.raises(ValueError, match="at least one candidate"):
        choose_fusion(suite, perfect, weights=(), rrf=False)
