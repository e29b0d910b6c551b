"""The retrieval library's BM25 index (its identifier splitter, scores, bm25s' format), on hand-made data;
the fusion rules are tests/test_fusion.py's."""

from __future__ import annotations

import numpy as np
import pytest

from semcode.evaluation import ranks_from_scores
from semcode.retrieval import BM25Index, bm25_scores, split_identifiers


def test_identifier_splitter() -> None:
    assert split_identifiers("def getHTTPResponse_code2(self, XMLParser):") == [
        "def",
        "get",
        "http",
        "response",
        "code",
        "2",
        "self",
        "xml",
        "parser",
    ]
    assert split_identifiers("__init__ snake_case_name iPhone") == [
        "init",
        "snake",
        "case",
        "name",
        "i",
        "phone",
    ]
    assert split_identifiers("Parse the café menu.") == ["parse", "the", "café", "menu"]


def test_bm25_finds_the_obvious_match() -> None:
    codes = [
        "def read_json_file(path):\n    with open(path) as f:\n        return json.load(f)",
        "def sortByLength(words):\n    return sorted(words, key=len)",
        "def http_get(url):\n    return requests.get(url).text",
        "def add(a, b):\n    return a + b",
    ]
    queries = [
        "read a json file",
        "sort words by length",
        "HTTP GET request for a url",
        "quantum chromodynamics",
    ]
    scores = bm25_scores(queries, codes)
    assert scores.shape == (4, 4) and scores.dtype == np.float32
    ranks = ranks_from_scores(scores, np.array([0, 1, 2, 3]))
    assert ranks[:3].tolist() == [1, 1, 1]
    assert np.all(scores[3] == 0) and ranks[3] == 4  # no known word: all tied, counted against the gold
    with_stopwords = BM25Index(codes, stopwords=True)
    assert with_stopwords.tokens("sort the words by length") == ["sort", "words", "length"]


def test_bm25_index_saves_in_bm25s_format_and_loads_back(tmp_path) -> None:
    import bm25s

    codes = ["def read_json_file(path): ...", "def sortByLength(words): ...", "def http_get(url): ..."]
    index = BM25Index(code for code in codes)  # any iterable, read once
    folder = index.save(tmp_path / "bm25")
    assert bm25s.BM25.load(str(folder)).scores["num_docs"] == 3  # bm25s reads its own format
    loaded = BM25Index.load(folder)
    assert loaded.n_codes == 3
    np.testing.assert_array_equal(
        loaded.scores(["sort by length", "json"]), index.scores(["sort by length", "json"])
    )
    assert int(loaded.query_scores("HTTP get")[:].argmax()) == 2
    with pytest.raises(FileNotFoundError, match="no bm25s index"):
        BM25Index.load(tmp_path)
