"""The fusion rules of hybrid retrieval (semcode.retrieval: fuse, per-query weights by query form) on hand-made
score arrays, and the choice of a fusion on a mix of docstring- and question-style suites (hand-made embedding
functions, real BM25)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from semcode import retrieval
from semcode.evaluation import (
    MixSuite,
    best_relevant_ranks,
    choose_fusion,
    mix_suite,
    ranks_from_scores,
)
from semcode.everyday import EverydayQuery, everyday_mix_suite
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
    mix = [mix_suite(suite, "docstring")]
    chosen = choose_fusion(mix, length_embed, weights=(0.0, 0.1, 0.5, 2.0), per_form=False, penalties=())
    assert set(chosen["candidates"]) == {"convex@0", "convex@0.1", "convex@0.5", "convex@2", "rrf"}
    mrr = {name: row["mrr"]["valid"] for name, row in chosen["candidates"].items()}
    assert mrr["convex@0"] == chosen["suites"]["valid"]["dense_mrr"] < 1.0
    assert chosen["suites"]["valid"]["bm25_mrr"] == 1.0
    assert mrr[chosen["name"]] == max(mrr.values()) and chosen["name"] == fusion_name(
        chosen["rule"], chosen["weight"]
    )
    assert chosen["default_mode"] == "hybrid" and chosen["chosen_on"] == ["valid"]
    assert chosen["suites"]["valid"]["n_queries"] == 6 and chosen["suites"]["valid"]["n_candidates"] == 6
    assert chosen["chosen_vs_dense"]["valid"]["mrr_difference"] > 0

    # An encoder that already finds every gold: no fusion beats it, the first of the ties (dense) wins.
    def perfect(texts: list[str], kind: str) -> np.ndarray:
        rows = [i for text in texts for i, pair in enumerate(VALID_PAIRS) if text in pair]
        return np.eye(len(VALID_PAIRS), dtype=np.float32)[rows]

    chosen = choose_fusion(mix, perfect, weights=(0.0, 0.1))
    assert (chosen["rule"], chosen["weight"], chosen["name"]) == ("convex", 0.0, "convex@0")
    assert chosen["default_mode"] == "dense"
    # Dense is always a candidate, so there is always one to fall back to.
    assert list(choose_fusion(mix, perfect, weights=(), rrf=False, penalties=())["candidates"]) == [
        "convex@0"
    ]
    with pytest.raises(ValueError, match="at least one suite"):
        choose_fusion([], perfect)


# ---------------------------------------------------------------- query forms and per-query weights


@pytest.mark.parametrize(
    ("query", "form"),
    [
        ("How do I check if a file exists?", "question"),
        ("how to copy a file in python", "question"),
        ("what's the current time", "question"),
        ("Is there a way to flatten a list", "question"),
        ("json to dict?", "question"),
        ("Parse a date string in ISO format.", "docstring"),
        ("Returns the mean of the numbers", "docstring"),
        ("Get the user's home directory", "docstring"),
        ("Matches a glob pattern", "docstring"),
        ("create temp directory", "keyword"),
        ("python check if a variable is iterable", "keyword"),
        ("HTTPResponse read body", "keyword"),
        ("", "keyword"),
    ],
)
def test_query_form(query: str, form: str) -> None:
    assert retrieval.query_form(query) == form and form in retrieval.QUERY_FORMS


PER_FORM = {"rule": "convex", "weight": 0.5, "question_weight": 0.05}


def test_convex_fusion_takes_one_weight_per_query() -> None:
    fused = convex_fusion(DENSE, LEXICAL, np.array([0.1, 0.7], dtype=np.float32))
    np.testing.assert_array_equal(fused[0], convex_fusion(DENSE, LEXICAL, 0.1)[0])
    np.testing.assert_array_equal(fused[1], DENSE[1])  # query 1 has no BM25 score: any weight keeps it
    with pytest.raises(ValueError, match=r"per-query weights must be \[queries\] = \[2\], got \(3,\)"):
        convex_fusion(DENSE, LEXICAL, np.zeros(3))
    with pytest.raises(ValueError, match="one number or one per query"):
        convex_fusion(DENSE, LEXICAL, np.zeros((2, 1)))
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        convex_fusion(DENSE, LEXICAL, np.array([0.1, -0.2]))

    queries = ["How do I parse json?", "parse json"]  # a question, then keywords
    np.testing.assert_array_equal(retrieval.query_weights(queries, PER_FORM), np.float32([0.05, 0.5]))
    both = np.concatenate([DENSE[:1], DENSE[:1]])  # the same scores for both queries
    lexical = np.concatenate([LEXICAL[:1], LEXICAL[:1]])
    fused = retrieval.fuse_queries(both, lexical, queries, PER_FORM)
    np.testing.assert_array_equal(fused[0], convex_fusion(DENSE[:1], LEXICAL[:1], 0.05)[0])
    np.testing.assert_array_equal(fused[1], convex_fusion(DENSE[:1], LEXICAL[:1], 0.5)[0])
    assert int(fused[0].argmax()) == 0 and int(fused[1].argmax()) == 2  # the question keeps its cosine's pick
    with pytest.raises(ValueError, match="2 queries for 1 rows"):
        retrieval.fuse_queries(DENSE[:1], LEXICAL[:1], queries, PER_FORM)


def test_an_old_fusion_spec_works_unchanged() -> None:
    """bundle.json "fusion" of bundles made before per-form weights: rule and weight (and what evaluate
    recorded beside them); every query, question or not, gets the one weight, as before."""
    old = {"rule": "convex", "weight": 0.3, "chosen_on": "valid (runs/pairs/valid), full-corpus MRR"}
    assert retrieval.fusion_spec(old) == {"rule": "convex", "weight": 0.3} and not retrieval.is_dense(old)
    queries = ["How do I parse json?", "parse json"]
    both, lexical = np.concatenate([DENSE[:1]] * 2), np.concatenate([LEXICAL[:1]] * 2)
    np.testing.assert_array_equal(
        retrieval.fuse_queries(both, lexical, queries, old), fuse(both, lexical, "convex", 0.3)
    )
    rrf = {"rule": "rrf"}
    np.testing.assert_array_equal(
        retrieval.fuse_queries(DENSE, LEXICAL, ["a", "b"], rrf), rrf_fusion(DENSE, LEXICAL)
    )
    assert (
        retrieval.fusion_spec(PER_FORM) == PER_FORM
        and fusion_name("convex", 0.5, 0.05) == "convex@0.5,question@0.05"
    )
    assert retrieval.is_dense({"rule": "convex", "weight": 0.0, "question_weight": 0.0})
    assert not retrieval.is_dense({"rule": "convex", "weight": 0.0, "question_weight": 0.1})
    with pytest.raises(ValueError, match="question_weight applies to the convex rule only"):
        retrieval.fusion_spec({"rule": "rrf", "weight": 0.0, "question_weight": 0.1})
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        retrieval.fusion_spec({"rule": "convex", "weight": 0.3, "question_weight": -1})
    with pytest.raises(ValueError, match="fusion weight must be a number, got '0.3'"):
        retrieval.fusion_spec({"rule": "convex", "weight": "0.3"})
    with pytest.raises(ValueError, match="is not one of"):
        retrieval.fusion_spec({"weight": 0.3})


# ---------------------------------------------------------------- the choice on a mix: questions never pay

# Hand-made vectors, one dimension per code: a docstring suite where the cosine prefers the wrong code
# (0.8 against the gold's 0.6) and BM25 finds the gold; a question suite where the cosine finds the gold
# (0.9) and BM25 a trap that merely shares the question's words.
DOC_QUERIES = ["Parse a json document.", "Reverse the words of a sentence.", "Download a web page."]
DOC_CODES = [code for _, code in VALID_PAIRS[:3]]
QUESTIONS = ["How do I open a url?", "What is the size of a file?"]
QUESTION_CODES = [
    "def fetch(address):\n    return urlopen(address).read()",  # gold of question 0: no word in common
    "def open_url_dialog():\n    show_url_dialog()",  # the trap: open, url
    "def byte_count(path):\n    return os.stat(path).st_bytes",  # gold of question 1
    "def file_size_label():\n    return 'the size of a file'",  # the trap
]
CODES = DOC_CODES + QUESTION_CODES


def hand_embed(texts: list[str], kind: str) -> np.ndarray:
    vectors = []
    for text in texts:
        vector = np.zeros(len(CODES), dtype=np.float32)
        if text in CODES:
            vector[CODES.index(text)] = 1.0
        elif text in DOC_QUERIES:  # the next query's code first, its own second
            i = DOC_QUERIES.index(text)
            vector[(i + 1) % 3], vector[i] = 0.8, 0.6
        else:  # a question: its gold, then its trap
            gold = 3 + 2 * QUESTIONS.index(text)
            vector[gold], vector[gold + 1] = 0.9, np.sqrt(1 - 0.81)
        vectors.append(vector)
    return np.stack(vectors)


def hand_mix() -> list[MixSuite]:
    docs = pairs_suite("valid", DOC_QUERIES, DOC_CODES, source="hand")
    # Rows without a query are candidates only: the traps.
    questions = pairs_suite("questions", [QUESTIONS[0], "", QUESTIONS[1], ""], QUESTION_CODES, source="hand")
    return [mix_suite(docs, "docstring"), mix_suite(questions, "question")]


def test_a_fusion_that_wins_on_docstrings_but_costs_questions_is_refused() -> None:
    mix = hand_mix()
    chosen = choose_fusion(mix, hand_embed, weights=(0.0, 0.1, 0.5))
    table = chosen["candidates"]
    assert table["convex@0"]["mrr"] == {"valid": pytest.approx(0.5), "questions": 1.0}  # dense
    assert table["convex@0.5"]["mrr"] == {"valid": 1.0, "questions": 0.5}  # BM25's help and its trap
    assert table["convex@0.5"]["loses_on"] == ["questions"] and table["rrf"]["loses_on"] == ["questions"]
    assert table["convex@0.5"]["gain"] == pytest.approx(0.0)  # +0.5 on docstrings, -0.5 on questions
    # Questions at their own (zero) weight: docstrings keep BM25's help, questions their cosine.
    assert chosen["name"] == "convex@0.5,question@0" and chosen["default_mode"] == "hybrid"
    assert retrieval.fusion_spec(chosen) == {"rule": "convex", "weight": 0.5, "question_weight": 0.0}
    assert table[chosen["name"]]["mrr"] == {"valid": 1.0, "questions": 1.0}
    assert chosen["chosen_on"] == ["valid", "questions"]
    assert chosen["suites"]["questions"]["forms"] == {"question": 2}
    assert chosen["suites"]["valid"]["forms"] == {"docstring": 3}
    assert chosen["chosen_vs_dense"]["questions"]["mrr_difference"] == 0.0

    # Without per-form weights every fusion that helps docstrings costs questions: dense it is.
    plain = choose_fusion(mix, hand_embed, weights=(0.0, 0.1, 0.5), per_form=False)
    assert plain["name"] == "convex@0" and plain["default_mode"] == "dense"
    # On docstrings alone (the old choice) the same weight wins.
    assert choose_fusion(mix[:1], hand_embed, weights=(0.0, 0.1, 0.5), per_form=False)["name"] == "convex@0.5"


def test_mix_suites_rank_by_the_best_relevant_candidate() -> None:
    scores = np.array([[0.9, 0.5, 0.7, 0.7], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    relevant = np.array([[False, True, True, False], [True, False, False, False]])
    exclude = np.array([[False, False, False, True], [False, False, False, False]])
    np.testing.assert_array_equal(best_relevant_ranks(scores, relevant), [3, 4])  # ties count against
    np.testing.assert_array_equal(best_relevant_ranks(scores, relevant, exclude), [2, 4])
    gold = np.array([2, 0])
    one = np.zeros_like(relevant)
    one[[0, 1], gold] = True
    np.testing.assert_array_equal(best_relevant_ranks(scores, one), ranks_from_scores(scores, gold))

    queries = [
        EverydayQuery("a", "make a temp dir", "keyword", "files", (("tempfile.py", "mkdtemp"),)),
        EverydayQuery("b", "How do I fly?", "question", "misc", (("antigravity.py", "fly"),)),
        EverydayQuery(
            "c", "join paths", "keyword", "paths", (("posixpath.py", "join"), ("ntpath.py", "join"))
        ),
    ]
    rows = [("/usr/lib/python3.12/tempfile.py", "mkdtemp"), ("posixpath.py", "join"), ("ntpath.py", "join")]
    suite = everyday_mix_suite(queries, rows, ["doc 0", "doc 1", "doc 2"], source="hand")
    assert suite.style == "question" and suite.queries == ["make a temp dir", "join paths"]  # b: no row
    assert suite.relevant.tolist() == [[0, 0], [1, 1], [1, 2]]
    with pytest.raises(ValueError, match="one document per row"):
        everyday_mix_suite(queries, rows, ["doc 0"])
    with pytest.raises(ValueError, match="style 'prose' is not one of"):
        replace(suite, style="prose")
    with pytest.raises(ValueError, match="every query needs at least one relevant candidate"):
        replace(suite, relevant=np.array([[0, 0]]))


# ---------------------------------------------------------------- internal definitions ranked lower


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("def _splithost(url):\n    ...", "_splithost"),
        ("@cache\nasync def fetch(url):\n    ...", "fetch"),
        ("class _Closer:\n    pass", "_Closer"),
        ("func (c *Client) _retry() error {", "_retry"),
        ("export function _debounce(fn) {}", "_debounce"),
        ("pub fn parse(s: &str) {}", "parse"),
        ("public static void main(String[] args) {}", ""),  # no keyword: no name, never internal
    ],
)
def test_defined_name_reads_the_first_definition(code: str, name: str) -> None:
    assert retrieval.defined_name(code) == name


def test_internal_names_and_the_penalty_in_fusion() -> None:
    names = ["mkdtemp", "_TemporaryFileCloser.__init__", "Path.__init__", "Path._parse", "__init__", ""]
    assert retrieval.internal_definitions(names).tolist() == [False, True, False, True, False, False]
    dense = np.array([[0.70, 0.72, 0.30]], dtype=np.float32)  # the helper (1) above the public function (0)
    lexical = np.zeros((1, 3), dtype=np.float32)
    internal = np.array([False, True, False])
    spec = {"rule": "convex", "weight": 0.1, "internal_penalty": 0.05}
    fused = retrieval.fuse_queries(dense, lexical, ["create temp directory"], spec, internal)
    assert np.argmax(fused[0]) == 0 and fused[0, 1] == pytest.approx(0.67)
    # Without a penalty the flags change nothing; with one they are required, one per candidate.
    plain = {"rule": "convex", "weight": 0.1}
    assert np.array_equal(retrieval.fuse_queries(dense, lexical, ["q"], plain, internal), dense)
    with pytest.raises(ValueError, match="internal flag of each of the 3 candidates"):
        retrieval.fuse_queries(dense, lexical, ["q"], spec)
    assert retrieval.fusion_spec(spec) == spec and not retrieval.is_dense(
        {**plain, "weight": 0, "internal_penalty": 0.05}
    )
    assert fusion_name("convex", 0.1, None, 0.05) == "convex@0.1,internal@0.05"
    with pytest.raises(ValueError, match="internal_penalty must be a finite number >= 0"):
        retrieval.fusion_spec({**spec, "internal_penalty": -1})
    with pytest.raises(ValueError, match="convex rule only"):
        retrieval.fusion_spec({"rule": "rrf", "weight": 0, "internal_penalty": 0.05})


def test_choose_fusion_takes_a_penalty_only_where_it_helps_the_mix() -> None:
    # Questions whose answers are public functions, each below a private helper that shares the words.
    queries = ["make a temporary folder", "remove a folder tree"]
    codes = [
        "def mkdtemp():\n    ...",
        "def _make_temporary_folder_name():\n    ...",
        "def rmtree(path):\n    ...",
        "def _remove_folder_tree_entry(path):\n    ...",
    ]
    vectors = {  # the helper scores 0.9, the answer 0.8, the other pair's texts 0
        queries[0]: [1.0, 0.0],
        queries[1]: [0.0, 1.0],
        codes[0]: [0.8, 0.0],
        codes[1]: [0.9, 0.0],
        codes[2]: [0.0, 0.8],
        codes[3]: [0.0, 0.9],
    }

    def embed(texts: list[str], kind: str) -> np.ndarray:
        return np.array([vectors[text] for text in texts], dtype=np.float32)

    relevant = np.array([[0, 0], [1, 2]])
    mix = [MixSuite("everyday", "question", queries, codes, relevant, np.zeros((0, 2), np.int64))]
    assert mix[0].internal.tolist() == [False, True, False, True]  # read off each code's def
    chosen = choose_fusion(mix, embed, weights=(0.0,), rrf=False, per_form=False, penalties=(0.05, 0.2))
    assert chosen["name"] == "convex@0,internal@0.2" and chosen["internal_penalty"] == 0.2
    assert chosen["default_mode"] == "hybrid"  # the penalty is part of hybrid; dense ranks as it did
    assert chosen["candidates"]["convex@0,internal@0.05"]["mrr"]["everyday"] == 0.5
