"""The evaluation library (ranks, metrics, protocols) and the evaluation suites, on hand-made data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from semcode import suites as suites_lib  # not `from ... import test_split_suite`: pytest would collect it
from semcode.data.pairs import write_shards
from semcode.evaluation import (
    csn_candidates,
    csn_ranks,
    dot_score_blocks,
    evaluate_suite,
    full_corpus_metrics,
    full_corpus_ranks,
    language_breakdown,
    paired_mrr_difference,
    protocol_ranks,
    ranks_from_scores,
    retrieval_metrics,
)
from semcode.retrieval import split_identifiers
from semcode.suites import (
    Suite,
    cosqa_suite,
    find_benchmarks_dir,
    humaneval_function,
    humaneval_query,
    humaneval_suite,
    pairs_suite,
)


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def hashed_bag_of_words(texts: list[str], kind: str, dim: int = 256) -> np.ndarray:
    """A real (if simple) EmbedFn: hashed identifier parts, L2-normalised; deterministic across runs."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for token in split_identifiers(text):
            out[row, sum(map(ord, token)) * 2654435761 % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


# ---------------------------------------------------------------- ranks and metrics


def test_ranks_count_ties_against_the_gold() -> None:
    scores = np.array(
        [
            [0.9, 0.5, 0.1],  # gold 0 strictly best -> 1
            [0.2, 0.8, 0.8],  # gold 1 tied with candidate 2 -> 2
            [0.3, 0.3, 0.3],  # everything tied -> last
            [0.7, 0.1, 0.6],  # gold 2 below candidate 0 -> 2
        ]
    )
    ranks = ranks_from_scores(scores, np.array([0, 1, 2, 2]))
    assert ranks.tolist() == [1, 2, 3, 2]
    assert ranks.dtype == np.int64


def test_exclusion_mask_removes_candidates_but_never_the_gold() -> None:
    scores = np.array([[0.2, 0.8, 0.8], [0.3, 0.3, 0.3]])
    mask = np.array([[False, False, True], [True, True, True]])  # the gold (1 and 2) is masked too: ignored
    assert ranks_from_scores(scores, np.array([1, 2]), mask).tolist() == [1, 1]


def test_bad_scores_and_gold_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores(np.array([[0.1, np.nan]]), np.array([0]))
    with pytest.raises(ValueError, match="gold indices"):
        ranks_from_scores(np.zeros((1, 3)), np.array([3]))
    with pytest.raises(ValueError, match="shape"):
        ranks_from_scores(np.zeros((2, 3)), np.array([0, 1]), np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="non-empty"):
        retrieval_metrics(np.array([], dtype=np.int64))


def test_metrics_by_hand() -> None:
    metrics = retrieval_metrics(np.array([1, 2, 4, 11]))
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 11) / 4)
    assert metrics["recall@1"] == 0.25
    assert metrics["recall@5"] == 0.75
    assert metrics["recall@10"] == 0.75
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5) + 0) / 4)
    assert metrics["median_rank"] == 3.0
    assert metrics["n_queries"] == 4
    assert retrieval_metrics(np.array([10, 10]))["ndcg@10"] == pytest.approx(1 / math.log2(11))
    assert retrieval_metrics(np.array([3]))["median_rank"] == 3.0


# ---------------------------------------------------------------- protocols


def test_full_corpus_ranks_match_the_dense_computation_for_any_block_size() -> None:
    queries, codes = unit_rows(37, 16, seed=1), unit_rows(50, 16, seed=2)
    gold = np.random.default_rng(3).integers(0, 50, size=37)
    exclude = np.array(
        [[0, 5], [0, 6], [10, 7], [36, 49], [4, gold[4]]]
    )  # the last one names a gold: dropped
    mask = np.zeros((37, 50), dtype=bool)
    mask[exclude[:4, 0], exclude[:4, 1]] = True
    expected = ranks_from_scores(queries @ codes.T, gold, mask)
    for block_size in (1, 7, 1000):
        assert np.array_equal(
            full_corpus_ranks(queries, codes, gold, exclude, block_size=block_size), expected
        )
    result = protocol_ranks(dot_score_blocks(queries, codes), 37, 50, gold, ("full",), exclude)
    assert result["full"].n_candidates[0] == 48 and result["full"].n_candidates[10] == 49
    assert result["full"].n_candidates[4] == 50


def test_full_corpus_metrics_of_aligned_pairs() -> None:
    codes = unit_rows(20, 8, seed=4)
    assert full_corpus_metrics(codes, codes)["mrr"] == 1.0
    reversed_queries = codes[::-1]
    metrics = full_corpus_metrics(reversed_queries, codes)
    assert metrics["n_queries"] == 20 and metrics["mrr"] < 1.0


def test_csn_candidates_are_reproducible_distinct_and_hold_the_gold() -> None:
    gold = np.array([0, 3, 3, 99])
    exclude = np.array([[1, 4], [1, 5], [2, 0]])
    first = csn_candidates(gold, 100, n_distractors=10, seed=7, exclude=exclude)
    assert first.shape == (4, 11)
    assert np.array_equal(first, csn_candidates(gold, 100, n_distractors=10, seed=7, exclude=exclude))
    assert not np.array_equal(first, csn_candidates(gold, 100, n_distractors=10, seed=8, exclude=exclude))
    assert np.array_equal(first[:, 0], gold)
    for row, gold_i in zip(first, gold, strict=True):
        assert len(set(row.tolist())) == 11 and row.min() >= 0
        assert gold_i not in row[1:].tolist()
    assert not {4, 5} & set(first[1].tolist())
    assert 0 not in first[2].tolist()


def test_csn_takes_every_candidate_when_there_are_fewer_than_asked() -> None:
    gold = np.array([0, 1, 2])
    exclude = np.array([[0, 1]])
    candidates = csn_candidates(gold, 4, n_distractors=999, exclude=exclude)
    assert candidates.shape == (3, 4)
    assert sorted(candidates[0].tolist()) == [-1, 0, 2, 3]  # 1 is excluded: padded
    assert sorted(candidates[1].tolist()) == [0, 1, 2, 3]
    queries, codes = unit_rows(3, 8, seed=5), unit_rows(4, 8, seed=6)
    result = protocol_ranks(dot_score_blocks(queries, codes), 3, 4, gold, ("csn", "full"), exclude)
    assert result["csn"].n_candidates.tolist() == [3, 4, 4]
    assert np.array_equal(result["csn"].ranks, result["full"].ranks)  # same candidates, same ranks


def test_csn_ranks_are_at_most_the_full_corpus_ranks() -> None:
    queries, codes = unit_rows(40, 8, seed=8), unit_rows(300, 8, seed=9)
    gold = np.arange(40)
    csn = csn_ranks(queries, codes, gold, n_distractors=50, seed=0)
    full = full_corpus_ranks(queries, codes, gold)
    assert np.all(csn <= full) and np.all(csn <= 51) and np.any(csn < full)
    assert np.array_equal(csn, csn_ranks(queries, codes, gold, n_distractors=50, seed=0, block_size=3))


# ---------------------------------------------------------------- suites


def test_pairs_suite_dedupes_code_and_excludes_other_answers_to_the_same_query() -> None:
    queries = ["add numbers", "add numbers", "sort a list", "sort a list", "", "parse json"]
    codes = [
        "def add(a, b): ...",
        "def plus(x, y): ...",
        "def sort(l): ...",
        "def sort(l): ...",
        "def helper(): ...",
        "def add(a, b): ...",
    ]
    suite = pairs_suite("toy", queries, codes, source="hand")
    assert suite.codes == [
        "def add(a, b): ...",
        "def plus(x, y): ...",
        "def sort(l): ...",
        "def helper(): ...",
    ]
    assert suite.queries == ["add numbers", "add numbers", "sort a list", "parse json"]
    assert suite.gold.tolist() == [0, 1, 2, 0]
    assert sorted(map(tuple, suite.exclude.tolist())) == [(0, 1), (1, 0)]

    subset = suite.subset(2, seed=0)
    assert len(subset.queries) == 2 and subset.codes == suite.codes
    for query_index, candidate in subset.exclude.tolist():  # remapped onto the kept queries
        assert subset.queries[query_index] == "add numbers" and candidate != subset.gold[query_index]
    assert suite.subset(0) is suite

    # golds_only: the candidates shrink to the kept queries' golds, indices and exclusions remapped.
    for seed in range(6):
        small = suite.subset(2, seed=seed, golds_only=True)
        full = suite.subset(2, seed=seed)
        assert small.queries == full.queries
        assert small.codes == sorted({full.codes[g] for g in full.gold}, key=suite.codes.index)
        assert [small.codes[g] for g in small.gold] == [full.codes[g] for g in full.gold]
        assert {(small.queries[q], small.codes[c]) for q, c in small.exclude.tolist()} == {
            (full.queries[q], full.codes[c]) for q, c in full.exclude.tolist() if full.codes[c] in small.codes
        }


def test_evaluate_suite_ranks_every_system_on_the_same_candidates() -> None:
    suite = pairs_suite(
        "toy",
        [
            "read a json file",
            "sort words by length",
            "http get request",
            "add two numbers",
            "add two numbers",
        ],
        [
            "def read_json(path): return json.load(open(path))",
            "def sort_by_length(words): return sorted(words)",
            "def http_get(url): return requests.get(url)",
            "def add(a, b): return a + b",
            "def add_numbers(x, y): return x + y",
        ],
        source="hand",
    )
    result = evaluate_suite(suite, {"model": hashed_bag_of_words}, bm25=True, n_distractors=2, seed=0)
    assert set(result["full"]) == {"model", "bm25"} and set(result["csn"]) == {"model", "bm25"}
    assert result["n_queries"] == 5 and result["n_candidates"] == 5 and result["n_excluded_pairs"] == 2
    assert result["candidates_per_query"]["full"] == {"min": 4, "max": 5, "mean": 4.6}  # 2 queries lose 1
    assert result["candidates_per_query"]["csn"]["max"] == 3
    assert result["full"]["bm25"]["mrr"] == 1.0
    assert 0 < result["full"]["model"]["mrr"] <= 1.0
    gap = result["model_vs"]["full"]["bm25"]
    assert gap["mrr_difference"] == pytest.approx(result["full"]["model"]["mrr"] - 1.0)
    assert gap["ci95_low"] <= gap["mrr_difference"] <= gap["ci95_high"] <= 0.0  # BM25 is perfect here
    assert set(result["model_vs"]) == {"full", "csn"}
    json.dumps(result)  # plain JSON types only


def test_pairs_suite_gives_each_query_its_rows_language_and_subset_keeps_it() -> None:
    queries = ["add numbers", "add numbers", "", "greet someone"]
    codes = ["func Add(a, b int) int", "func Add(a, b int) int", "def helper", "def greet(name)"]
    suite = pairs_suite("toy", queries, codes, source="hand", languages=["go", "go", "ruby", "ruby"])
    assert suite.queries == ["add numbers", "greet someone"] and suite.languages == ["go", "ruby"]
    assert pairs_suite("toy", queries, codes, source="hand").languages is None
    for seed in range(4):
        small = suite.subset(1, seed=seed)
        assert small.languages == [suite.languages[suite.queries.index(small.queries[0])]]
    with pytest.raises(ValueError, match="4 codes but 3 languages"):
        pairs_suite("toy", queries, codes, source="hand", languages=["go", "go", "ruby"])
    with pytest.raises(ValueError, match="2 queries but 1 languages"):
        Suite("bad", ["a", "b"], ["x"], np.zeros(2, np.int64), np.zeros((0, 2), np.int64), "hand", ["go"])


def test_language_breakdown_by_hand() -> None:
    ranks_of = {("full", "model"): np.array([1, 2, 4, 1]), ("full", "bm25"): np.array([2, 2, 1, 1])}
    candidates_of = {"full": np.array([10, 10, 9, 10])}
    breakdown = language_breakdown(ranks_of, candidates_of, ["go", "ruby", "go", ""], seed=0)
    assert list(breakdown) == ["go", "ruby", "unknown"]
    go = breakdown["go"]
    assert go["n_queries"] == 2 and go["candidates_per_query"]["full"] == {"min": 9, "max": 10, "mean": 9.5}
    assert go["full"]["model"]["mrr"] == pytest.approx((1 + 1 / 4) / 2)
    assert go["full"]["bm25"]["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert go["model_vs"]["full"]["bm25"]["mrr_difference"] == pytest.approx(-0.125)
    assert breakdown["ruby"]["full"]["model"]["recall@1"] == 0.0
    with pytest.raises(ValueError, match="cover 4 queries but there are 3 languages"):
        language_breakdown(ranks_of, candidates_of, ["go", "go", "go"])


def test_evaluate_suite_breaks_a_two_language_suite_down_by_language() -> None:
    rows = [
        ("read a json file", "def read_json(path): return json.load(open(path))", "python"),
        ("sort words by length", "def sort_by_length(words): return sorted(words)", "python"),
        ("http get request", "func HttpGet(url string) { http.Get(url) }", "go"),
        ("add two numbers", "func Add(a, b int) int { return a + b }", "go"),
        ("", "func helper() {}", "go"),
    ]
    queries, codes, languages = (list(column) for column in zip(*rows, strict=True))
    suite = pairs_suite("toy", queries, codes, source="hand", languages=languages)
    result = evaluate_suite(suite, {"model": hashed_bag_of_words}, bm25=True, n_distractors=2, seed=0)
    by_language = result["by_language"]
    assert list(by_language) == ["go", "python"]
    assert [by_language[lang]["n_queries"] for lang in by_language] == [2, 2]
    for protocol in ("full", "csn"):
        for system in ("model", "bm25"):
            # Each language's queries are ranked among all 5 candidates: the suite's MRR is their mean.
            per_language = [by_language[lang][protocol][system]["mrr"] for lang in by_language]
            assert np.mean(per_language) == pytest.approx(result[protocol][system]["mrr"])
    assert by_language["go"]["candidates_per_query"]["full"] == {"min": 5, "max": 5, "mean": 5.0}
    assert set(by_language["go"]["model_vs"]["full"]) == {"bm25"}
    json.dumps(result)  # plain JSON types only

    one_language = pairs_suite("toy", queries, codes, source="hand", languages=["go"] * 5)
    assert "by_language" not in evaluate_suite(one_language, {"model": hashed_bag_of_words}, bm25=False)


def test_paired_mrr_difference_by_hand_and_its_interval() -> None:
    model, baseline = np.array([1, 1, 2, 4]), np.array([2, 1, 1, 4])
    # Per query 1/r differences: +0.5, 0, -0.5, 0 -> mean 0; the interval straddles 0.
    gap = paired_mrr_difference(model, baseline, resamples=500)
    assert gap["mrr_difference"] == 0.0 and gap["ci95_low"] < 0.0 < gap["ci95_high"]
    assert paired_mrr_difference(model, model) == {"mrr_difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0}
    # Better on every query: the whole interval is above 0 (each resample's mean is a mean of positives).
    better = paired_mrr_difference(np.ones(50, dtype=int), np.full(50, 2), resamples=200)
    assert better["mrr_difference"] == 0.5 and better["ci95_low"] == better["ci95_high"] == 0.5
    rng = np.random.default_rng(1)
    noisy = rng.integers(1, 20, size=300)
    slightly_better = np.maximum(noisy - rng.integers(0, 2, size=300), 1)
    gap = paired_mrr_difference(slightly_better, noisy, seed=3)
    assert 0.0 < gap["ci95_low"] < gap["mrr_difference"] < gap["ci95_high"]
    assert paired_mrr_difference(slightly_better, noisy, seed=3) == gap  # seeded
    with pytest.raises(ValueError, match="same queries"):
        paired_mrr_difference(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        paired_mrr_difference(np.ones(3), np.ones(3), resamples=0)


def test_test_split_suite_reads_the_pairs(tmp_path: Path) -> None:
    rows = [{"query": f"query {i}", "code": f"def f{i}(): pass", "split": "test"} for i in range(5)]
    rows.append({"query": "", "code": "def corpus_only(): pass", "split": "test"})
    write_shards(rows, tmp_path / "pairs" / "test")
    suite = suites_lib.test_split_suite(tmp_path / "pairs")
    assert suite.name == "test" and len(suite.queries) == 5 and len(suite.codes) == 6
    assert [suite.codes[g] for g in suite.gold] == [f"def f{i}(): pass" for i in range(5)]
    assert suite.languages == [""] * 5  # rows written without a language
    with pytest.raises(FileNotFoundError, match="test/part"):
        suites_lib.test_split_suite(tmp_path / "missing")


def test_humaneval_function_drops_the_docstring_and_cuts_examples() -> None:
    source = (
        "import math\n\n\ndef helper(x):\n    return x\n\n\n@cache\ndef area(r):\n    import math\n"
        '    """ Area of a circle of radius r.\n    >>> area(1)\n    3.14\n    """\n    return math.pi * r * r\n'
    )
    docstring, code = humaneval_function(source, "area")
    assert docstring == "Area of a circle of radius r.\n>>> area(1)\n3.14"
    assert code == "@cache\ndef area(r):\n    import math\n    return math.pi * r * r"
    assert humaneval_query(docstring, "area") == "Area of a circle of radius r."
    assert humaneval_query("Sum it.\nFor example:\nsum_it([1]) == 1", "sum_it") == "Sum it."
    assert humaneval_query("Check it.\ncheck(1) => True", "check") == "Check it."


def test_humaneval_suite_has_164_problems() -> None:
    suite = humaneval_suite()
    assert len(suite.queries) == len(suite.codes) == 164
    assert suite.gold.tolist() == list(range(164))
    assert all(code.lstrip().startswith("def ") for code in suite.codes)
    assert all(
        query and '"""' not in code and ">>>" not in query
        for query, code in zip(suite.queries, suite.codes, strict=True)
    )
    assert suite.queries[0].startswith("Check if in given list of numbers")


def test_find_benchmarks_dir_prefers_the_explicit_path_then_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SEMCODE_BENCHMARKS_DIR", str(tmp_path / "env"))
    assert find_benchmarks_dir(tmp_path / "given") == tmp_path / "given"
    assert find_benchmarks_dir() == tmp_path / "env"
    monkeypatch.delenv("SEMCODE_BENCHMARKS_DIR")
    assert find_benchmarks_dir().parts[-2:] == ("shared", "benchmarks")
    with pytest.raises(FileNotFoundError, match="CoSQA"):
        cosqa_suite(tmp_path / "nothing")


def test_cosqa_suite_from_the_shared_benchmarks(monkeypatch) -> None:
    monkeypatch.delenv("SEMCODE_BENCHMARKS_DIR", raising=False)
    root = find_benchmarks_dir()
    if not (root / "cosqa").is_dir():
        pytest.skip(f"CoSQA not present under {root}")
    suite = cosqa_suite()
    assert isinstance(suite, Suite)
    assert len(suite.queries) == 500 and len(suite.codes) == 6267 and len(suite.exclude) == 0
    records = json.loads((root / "cosqa" / "cosqa-retrieval-dev-500.json").read_text())
    index_of_code = json.loads((root / "cosqa" / "code_idx_map.txt").read_text())
    for record, query, gold in zip(records, suite.queries, suite.gold, strict=True):
        assert query == record["doc"]
        assert suite.codes[gold] == record["code"] and index_of_code[record["code"]] == gold
    assert '"""' in suite.codes[suite.gold[0]]  # raw source, docstring kept, as the protocol has it
